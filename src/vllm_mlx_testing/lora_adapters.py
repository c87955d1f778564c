"""LoRA adapters in mlx-lm's own format, for tests of the server's LoRA support.

The adapters are made with mlx-lm's LoRA layers (``mlx_lm.tuner``) and saved the
way mlx-lm's trainer saves them, so ``mlx_lm.load(base, adapter_path=folder)``
loads them as it would a trained adapter:

* ``adapters.safetensors`` -- ``dict(tree_flatten(model.trainable_parameters()))``
  of the frozen model with LoRA layers, i.e. only the LoRA leaves, named like
  ``model.layers.0.self_attn.q_proj.lora_a``.  For a ``LoRALinear`` over a
  linear layer ``in -> out`` at rank ``r``: ``lora_a`` is ``(in, r)``,
  ``lora_b`` is ``(r, out)`` and the layer adds ``scale * (x @ lora_a) @ lora_b``.
* ``adapter_config.json`` -- the fields ``mlx_lm.tuner.utils.load_adapters``
  reads (``fine_tune_type``, ``num_layers``, ``lora_parameters`` with ``rank``,
  ``scale``, ``dropout`` and, when given, ``keys``) plus a few of the ones
  ``mlx_lm.lora`` also writes (``model``, ``seed``, ``adapter_path``).

mlx-lm starts ``lora_b`` at zero (an untrained adapter changes nothing), so
``make_lora_adapter`` draws both matrices from a seeded normal distribution
(``lora_a`` with variance ``1 / fan_in``) and scales ``lora_b`` so that, in
every adapted layer, the root mean square of the weight change
``scale * (lora_a @ lora_b)^T`` is ``strength`` times the root mean square of
the layer's (dequantized) weight.

Also here: ``fused_model`` (an adapter fused into its base, as ``mlx_lm.fuse``
does), ``greedy_tokens`` (a plain argmax loop over mlx-lm's prompt cache) and
``build_quantized_tiny_model`` (a tiny random model quantized with mlx-lm).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path
from typing import Any, Iterable, Sequence

__all__ = [
    "adapter_modules",
    "build_quantized_tiny_model",
    "fused_model",
    "greedy_tokens",
    "make_lora_adapter",
    "peft_copy",
]

ADAPTER_WEIGHTS = "adapters.safetensors"
ADAPTER_CONFIG = "adapter_config.json"


def adapter_modules(model: Any) -> list[tuple[str, Any]]:
    """The ``(name, module)`` pairs of ``model``'s LoRA layers (those holding
    ``lora_a`` and ``lora_b``), in ``named_modules`` order."""
    return [(name, m) for name, m in model.named_modules() if "lora_a" in m and "lora_b" in m]


def _fused_weight(module: Any) -> Any:
    """The float weight ``module.fuse`` gives (the base weight plus the LoRA change)."""
    return module.fuse(dequantize=True).weight


def _rms(x: Any) -> float:
    import mlx.core as mx

    return math.sqrt(mx.mean(mx.square(x.astype(mx.float32))).item())


def _randomize(model: Any, seed: int, rank: int, strength: float) -> int:
    """Give every LoRA layer of ``model`` seeded random ``lora_a`` / ``lora_b``
    (see the module docstring); returns how many layers were set."""
    import mlx.core as mx

    modules = adapter_modules(model)
    if not modules:
        raise ValueError("the model has no LoRA layers (check num_layers and keys)")
    draws = mx.random.split(mx.random.key(seed), 2 * len(modules))
    for i, (name, module) in enumerate(modules):
        base = _fused_weight(module.update({"lora_b": mx.zeros_like(module.lora_b)}))
        # lora_a ~ N(0, 1/fan_in) (for LoRALinear fan_in = lora_a.shape[0]), like mlx-lm's init's spread.
        fan_in = module.lora_a.size // rank
        a = mx.random.normal(module.lora_a.shape, dtype=mx.float32, key=draws[2 * i]) / math.sqrt(fan_in)
        b = mx.random.normal(module.lora_b.shape, dtype=mx.float32, key=draws[2 * i + 1])
        module.update({"lora_a": a, "lora_b": b})
        change = _rms(_fused_weight(module) - base)
        if change == 0.0:
            raise ValueError(f"LoRA layer {name}: the random draw changes nothing")
        # The change is linear in lora_b: rescale it to the asked-for size.
        module.update({"lora_b": b * (strength * _rms(base) / change)})
        mx.eval(module.lora_a, module.lora_b)
    return len(modules)


def make_lora_adapter(
    base: str | Path,
    out: str | Path,
    seed: int = 0,
    rank: int = 4,
    scale: float = 10.0,
    num_layers: int = -1,
    keys: Sequence[str] | None = None,
    strength: float = 0.3,
) -> Path:
    """Write a random LoRA adapter for the model folder ``base`` into ``out``
    (created) and return ``out``.

    mlx-lm builds the LoRA layers (``linear_to_lora_layers``) for the last
    ``num_layers`` transformer blocks (``-1``: all of them), on the modules named
    by ``keys`` (relative to a block, e.g. ``"self_attn.q_proj"``; ``None``:
    mlx-lm's default, every linear layer of the blocks), at rank ``rank`` with
    the given ``scale``.  Their weights are seeded random (``seed``), sized so
    each adapted layer's weight changes by ``strength`` times its RMS.  On the
    tiny random qwen3 model the default (all layers) changes the greedy tokens
    of most prompts from the first one on, while the last-position logits keep
    a correlation of about 0.75 with the base model's (0.5 gives about 0.5).
    Loads with ``mlx_lm.load(str(base), adapter_path=str(out))``.
    """
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.tuner.utils import linear_to_lora_layers
    from mlx_lm.utils import load_model, save_config

    base, out = Path(base), Path(out)
    model, _ = load_model(base)
    if num_layers > len(model.layers):
        raise ValueError(f"num_layers={num_layers} but the model has {len(model.layers)} layers")
    lora_parameters: dict[str, Any] = {"rank": rank, "scale": scale, "dropout": 0.0}
    if keys is not None:
        lora_parameters["keys"] = list(keys)
    model.freeze()
    linear_to_lora_layers(model, num_layers, dict(lora_parameters))
    _randomize(model, seed, rank, strength)

    out.mkdir(parents=True, exist_ok=True)
    weights = dict(tree_flatten(model.trainable_parameters()))
    mx.save_safetensors(str(out / ADAPTER_WEIGHTS), weights)
    config = {
        "model": str(base),
        "fine_tune_type": "lora",
        "num_layers": num_layers,
        "lora_parameters": lora_parameters,
        "seed": seed,
        "adapter_path": str(out),
    }
    save_config(config, out / ADAPTER_CONFIG)
    return out


def fused_model(base: str | Path, adapter: str | Path, dequantize: bool = False) -> tuple[Any, Any]:
    """``(model, tokenizer)``: the model folder ``base`` loaded by mlx-lm with the
    adapter folder ``adapter`` applied, then fused as ``mlx_lm.fuse`` does (every
    module with a ``fuse()`` replaced by the layer it returns; a quantized base
    stays quantized unless ``dequantize``)."""
    from mlx.utils import tree_unflatten
    from mlx_lm import load

    model, tokenizer = load(str(base), adapter_path=str(adapter))
    fused = [(name, m.fuse(dequantize=dequantize)) for name, m in model.named_modules() if hasattr(m, "fuse")]
    if fused:
        model.update_modules(tree_unflatten(fused))
    return model, tokenizer


def greedy_tokens(
    model: Any,
    prompt_ids: Sequence[int],
    max_tokens: int,
    eos_ids: Iterable[int] | None = None,
) -> list[int]:
    """The ``max_tokens`` tokens ``model`` picks greedily (argmax) after
    ``prompt_ids``, with mlx-lm's ``make_prompt_cache``.  Stops early (the EOS
    token included) only at a token of ``eos_ids`` when given."""
    import mlx.core as mx
    from mlx_lm.models.cache import make_prompt_cache

    if not prompt_ids:
        raise ValueError("prompt_ids is empty")
    stop = set(eos_ids or ())
    cache = make_prompt_cache(model)
    inputs = mx.array([list(prompt_ids)])
    tokens: list[int] = []
    while len(tokens) < max_tokens:
        logits = model(inputs, cache=cache)
        token = int(mx.argmax(logits[0, -1], axis=-1).item())
        tokens.append(token)
        if token in stop:
            break
        inputs = mx.array([[token]])
    return tokens


def build_quantized_tiny_model(
    path: str | Path,
    family: str = "qwen3",
    bits: int = 4,
    group_size: int = 32,
    **kwargs: Any,
) -> Path:
    """Write a tiny random ``family`` model folder at ``path``, quantized by
    mlx-lm (``mlx_lm.utils.quantize_model``, affine, ``bits`` / ``group_size``),
    and return it.  ``kwargs`` go to ``build_tiny_model``.  The tokenizer files
    and chat template are the float model's; the weights and ``config.json``
    (with ``quantization`` / ``quantization_config``) are what ``mlx_lm.convert``
    would write, so ``mlx_lm.load`` gives ``nn.QuantizedLinear`` layers.
    ``group_size`` must divide the hidden and intermediate sizes (default 64 and
    128) or those layers would silently stay float."""
    import mlx.core as mx
    from mlx.utils import tree_flatten
    from mlx_lm.utils import load_model, quantize_model, save_config

    from .builders import build_tiny_model

    path = Path(build_tiny_model(path, family, **kwargs))
    config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    for field in ("hidden_size", "intermediate_size"):
        if field in config and config[field] % group_size:
            raise ValueError(f"group_size {group_size} does not divide {field} {config[field]}")
    model, _ = load_model(path)
    with contextlib.redirect_stdout(io.StringIO()):  # quantize_model prints the bits per weight
        model, config = quantize_model(model, config, group_size, bits)
    weights = dict(tree_flatten(model.parameters()))
    mx.save_safetensors(str(path / "model.safetensors"), weights, metadata={"format": "mlx"})
    save_config(config, path / "config.json")
    return path


def peft_copy(adapter: str | Path, out: str | Path, rslora: bool = False) -> Path:
    """The mlx-lm adapter at ``adapter`` written again as PEFT's ``save_pretrained`` lays a LoRA adapter
    out: ``adapter_model.safetensors`` with ``base_model.model.LAYER.lora_A.weight`` (r, in) and
    ``lora_B.weight`` (out, r), and an ``adapter_config.json`` whose ``lora_alpha`` gives the same scale
    (``lora_alpha / r``, or ``/ sqrt(r)`` with ``rslora``). Linear layers only."""
    import mlx.core as mx

    src, out = Path(adapter), Path(out)
    config = json.loads((src / ADAPTER_CONFIG).read_text())
    params = config["lora_parameters"]
    rank, scale = int(params["rank"]), float(params["scale"])
    weights = mx.load(str(src / ADAPTER_WEIGHTS))
    layers = sorted({key.rsplit(".", 1)[0] for key in weights})
    peft = {}
    for layer in layers:
        peft[f"base_model.model.{layer}.lora_A.weight"] = mx.contiguous(weights[f"{layer}.lora_a"].T)
        peft[f"base_model.model.{layer}.lora_B.weight"] = mx.contiguous(weights[f"{layer}.lora_b"].T)
    out.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out / "adapter_model.safetensors"), peft)
    alpha = scale * (math.sqrt(rank) if rslora else rank)
    (out / ADAPTER_CONFIG).write_text(json.dumps({
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": alpha, "use_rslora": rslora,
        "lora_dropout": 0.0, "bias": "none", "use_dora": False, "fan_in_fan_out": False, "modules_to_save": None,
        "rank_pattern": {}, "alpha_pattern": {}, "target_modules": sorted({layer.rsplit(".", 1)[1] for layer in layers}),
        "inference_mode": True,
    }, indent=2))
    return out
