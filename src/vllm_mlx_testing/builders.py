"""Builders of tiny, real, HF-style model folders for tests.

The folders load through mlx-lm's normal path (``mlx_lm.load(path)``, or
``mlx_lm.utils.load_model`` + ``load_tokenizer``).  The random-weight builder
is the demo model's (``vllm_mlx.models.demo.builder``); this module adds the
Llama family and the scripted models.

Families:

* ``"qwen3"`` -- ``model_type: qwen3`` (``Qwen3ForCausalLM``), ChatML
  template, EOS ``<|im_end|>`` (and ``<|endoftext|>``), no BOS.
* ``"llama"`` -- ``model_type: llama`` (``LlamaForCausalLM``, Llama 3.1
  style with ``llama3`` rope scaling and an untied ``lm_head``), EOS
  ``<|eot_id|>`` (and ``<|end_of_text|>``), BOS ``<|begin_of_text|>``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

from vllm_mlx.models.demo.builder import (
    QWEN3,
    ModelFamily,
    build_random_model,
    write_generation_config,
    write_tokenizer_files,
)

from .chat_templates import LLAMA3_CHAT_TEMPLATE
from .tokenizer import FAMILY_BOS, FAMILY_TOKENS


def _llama_architecture(common: dict[str, Any], num_hidden_layers: int, tie: bool | None) -> dict[str, Any]:
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        **common,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "rms_norm_eps": 1e-5,
        "rope_scaling": {
            "factor": 8.0,
            "high_freq_factor": 4.0,
            "low_freq_factor": 1.0,
            "original_max_position_embeddings": 1024,
            "rope_type": "llama3",
        },
        "rope_theta": 500000.0,
        "tie_word_embeddings": False if tie is None else tie,
    }


LLAMA = ModelFamily(
    name="llama",
    tokens=tuple(FAMILY_TOKENS["llama"]),
    chat_template=LLAMA3_CHAT_TEMPLATE,
    eos=("<|eot_id|>", "<|end_of_text|>"),
    bos=FAMILY_BOS["llama"],
    bos_id_token="<|begin_of_text|>",
    pad="<|end_of_text|>",
    assistant_marker="<|start_header_id|>assistant<|end_header_id|>",
    sampling={"temperature": 0.6, "top_p": 0.9},
    architecture=_llama_architecture,
)

FAMILIES: dict[str, ModelFamily] = {"qwen3": QWEN3, "llama": LLAMA}


def model_family(family: str) -> ModelFamily:
    """The ``ModelFamily`` named ``family`` (``"qwen3"`` or ``"llama"``)."""
    if family not in FAMILIES:
        raise ValueError(f"unknown family {family!r}; expected one of {sorted(FAMILIES)}")
    return FAMILIES[family]


def _write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def build_tiny_model(path: str | Path, family: str = "qwen3", **kwargs: Any) -> Path:
    """Write a tiny random ``family`` model folder at ``path`` and return it:
    ``vllm_mlx.models.demo.builder.build_random_model`` (see there for the
    arguments) for the family named ``family``."""
    return build_random_model(path, model_family(family), **kwargs)


def build_scripted_model(
    path: str | Path,
    rules: Sequence[dict[str, Any]] = (),
    default_reply: str = "Hello from the scripted model.",
    family: str = "qwen3",
    *,
    vocab_size: int = 2048,
    agent: bool = False,
    command: str | None = None,
    max_position_embeddings: int | None = None,
) -> Path:
    """Write a model folder whose replies are scripted (see ``scripted_model``).

    ``rules`` is a list of ``{"if_contains": text, "reply": text}`` checked in
    order against the conversation before the last assistant turn; the first
    match's ``reply`` is generated, else ``default_reply``.  Every reply is
    followed by the family's EOS.  Load with ``trust_remote_code=True``.
    A rule may add ``"quote": regex``: the regex's first group, found in the
    conversation, replaces ``{quote}`` in its reply (e.g. to repeat a tool result).

    ``agent=True`` makes it behave like a tool-using agent when no rule
    matches (``agent_script``): with tools offered it calls the shell tool
    with ``command`` (default ``echo MARKER_$((6*7))``) in the family's native
    format (qwen3: Hermes ``<tool_call>``; llama: Llama 3 JSON), and once the
    result is back it answers quoting it.  ``max_position_embeddings`` sets
    the context length (agent clients send long system prompts).
    """
    import mlx.core as mx

    from . import scripted_model

    fam = model_family(family)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    ids = write_tokenizer_files(path, fam, vocab_size)
    write_generation_config(path, fam, ids)
    tok = fam.tokenizer(vocab_size)
    config = scripted_model.scripted_config(
        tokenizer=tok,
        rules=list(rules),
        default_reply=default_reply,
        assistant_marker=fam.assistant_marker,
        eos_token_id=ids["eos_token_id"],
        bos_token_id=ids["bos_token_id"],
        vocab_size=vocab_size,
    )
    if agent:
        from .agent_script import DEFAULT_COMMAND, FAMILY_FORMATS

        config["agent"] = {"format": FAMILY_FORMATS[family], "command": command or DEFAULT_COMMAND}
    if max_position_embeddings:
        config["max_position_embeddings"] = max_position_embeddings
    _write_json(path / "config.json", config)
    (path / scripted_model.MODEL_FILE).write_text(scripted_model.MODEL_FILE_SOURCE)
    mx.save_safetensors(
        str(path / "model.safetensors"), scripted_model.dummy_weights(), metadata={"format": "mlx"}
    )
    return path


def first_layers_model(source: str | Path, path: str | Path, num_layers: int) -> Path:
    """Write at ``path`` the model at ``source`` cut down to its first ``num_layers`` layers (its
    embeddings, final norm and output head kept): an early-exit draft model with the same tokenizer,
    for ``--draft-model`` tests and benchmarks. Single-file safetensors models."""
    import shutil

    import mlx.core as mx

    source, path = Path(source), Path(path)
    path.mkdir(parents=True, exist_ok=True)
    for f in source.iterdir():
        if f.is_file() and f.suffix != ".safetensors":
            shutil.copy(f, path / f.name)
    config = json.loads((source / "config.json").read_text())
    config["num_hidden_layers"] = num_layers
    if "max_window_layers" in config:
        config["max_window_layers"] = min(config["max_window_layers"], num_layers)
    _write_json(path / "config.json", config)
    weights = mx.load(str(source / "model.safetensors"))
    kept = {k: v for k, v in weights.items()
            if ".layers." not in k or int(k.split(".layers.")[1].split(".")[0]) < num_layers}
    mx.save_safetensors(str(path / "model.safetensors"), kept)
    return path


def add_mtp_head(path: str | Path, seed: int = 1, exact: bool = False, hf_layout: bool = False,
                 attending: float = 0.0) -> Path:
    """Add multi-token-prediction weights to the model folder at ``path``, in a safetensors file of
    their own, in the layout its family publishes them in (``mtp.*`` for Qwen3-Next and Qwen3.5; for
    the ``MTP_ARCHITECTURES``, a layer outside the model's, :func:`_as_layer`);
    returns ``path``.

    Random ones, or with ``exact`` a head that predicts what the model does: the model's layers are
    silenced (their output projections zeroed, so it predicts from the last token alone) and the head
    passes the new token's normalized embedding through a silenced layer to the model's final norm --
    so every greedy proposal is the model's own next token; ``attending`` keeps that layer's attention
    output at this fraction of its random weights, so the proposals depend on the sequence before and
    only part of them are the model's. ``hf_layout`` writes the folder as a
    published checkpoint stores it: convolution weights in the Hugging Face order, norms zero-centred
    (mlx-lm adds the 1 back to the model's, the server to the head's), a mixture-of-experts head's
    experts one tensor each."""
    import mlx.core as mx
    from mlx.utils import tree_flatten

    from vllm_mlx.engine.mtp_head import LAYER_ZERO_CENTRED, ZERO_CENTRED, language_model, new_mtp_head
    from vllm_mlx.models.loader import load_model

    path = Path(path)
    silenced = (".o_proj.", ".out_proj.", ".down_proj.")
    if exact:
        weights = mx.load(str(path / "model.safetensors"))
        mx.save_safetensors(str(path / "model.safetensors"),
                            {k: mx.zeros_like(v) if any(s in k for s in silenced) else v for k, v in weights.items()})
    model = load_model(str(path), compute_dtype="float32").model
    mx.random.seed(seed)
    head = new_mtp_head(model)
    weights = dict(tree_flatten(head.parameters()))
    if exact:
        hidden = head.fc.weight.shape[0]
        weights["fc.weight"] = mx.concatenate([mx.eye(hidden), mx.zeros((hidden, hidden))], axis=1)
        weights["pre_fc_norm_embedding.weight"] = mx.ones((hidden,))
        weights["norm.weight"] = language_model(model).model.norm.weight
        weights = {k: v * attending if k.endswith(".o_proj.weight") else mx.zeros_like(v)
                   if any(s in f".{k}" for s in silenced) else v for k, v in weights.items()}
    if hf_layout:
        model_norms = (".input_layernorm.weight", ".post_attention_layernorm.weight", "model.norm.weight",
                       ".q_norm.weight", ".k_norm.weight")  # those mlx-lm's Qwen3.5 adds 1 to
        main = mx.load(str(path / "model.safetensors"))
        main = {k: v.moveaxis(2, 1) if k.endswith("conv1d.weight") else
                v - 1.0 if v.ndim == 1 and k.endswith(model_norms) else v for k, v in main.items()}
        mx.save_safetensors(str(path / "model.safetensors"), main)
        weights = {k: v - 1.0 if k in ZERO_CENTRED or k.endswith(LAYER_ZERO_CENTRED) else v
                   for k, v in weights.items()}
        _one_tensor_per_expert(weights, "layers.0.mlp")
    if not any(hasattr(layer, "is_linear") for layer in language_model(model).model.layers):
        weights = _as_layer(weights, model)
    else:
        weights = {f"mtp.{k}": v for k, v in weights.items()}
    mx.save_safetensors(str(path / "model-mtp.safetensors"), weights)
    return path


def _one_tensor_per_expert(weights: dict, mlp: str) -> None:
    """Unstack mlx-lm's ``switch_mlp`` experts under ``mlp`` into one tensor each, as checkpoints publish them."""
    for name in ("gate_proj", "up_proj", "down_proj"):
        stacked = weights.pop(f"{mlp}.switch_mlp.{name}.weight", None)
        for e in range(0 if stacked is None else stacked.shape[0]):
            weights[f"{mlp}.experts.{e}.{name}.weight"] = stacked[e]


def _as_layer(weights: dict, model: Any) -> dict:
    """An MTP head's weights (named as ``MTPHead`` names them) as its family publishes them, a layer
    outside the model's: DeepSeek-V3 and GLM-4.5's ``model.layers.{num_hidden_layers}.*`` with
    ``eh_proj``, ``enorm``, ``hnorm``, ``shared_head`` (and its copies of the model's embedding and
    output head), one tensor per expert, a latent attention's ``kv_b_proj`` whole (mlx-lm splits it
    into ``embed_q`` and ``unembed_out``); MiMo's ``model.mtp_layers.0.*``, its projection taking the
    hidden state first."""
    import mlx.core as mx

    from vllm_mlx.engine.mtp_head import LAYER_LAYOUTS, language_model, output_head

    lm = language_model(model)
    layout = LAYER_LAYOUTS[1 if lm.model_type == "mimo" else 0]
    renames = {new: old for old, new in layout.names.items()}
    out = {} if layout.hidden_first else {"embed_tokens.weight": lm.model.embed_tokens.weight,
                                          "shared_head.head.weight": output_head(model).weight}
    if layout.hidden_first:
        half = weights["fc.weight"].shape[1] // 2
        weights = {**weights, "fc.weight": mx.concatenate([weights["fc.weight"][:, half:],
                                                           weights["fc.weight"][:, :half]], axis=1)}
    for key, value in weights.items():
        name = next((renames[new] + key[len(new):] for new in renames if key.startswith(new)), None)
        out[name or key.removeprefix("layers.0.")] = value
    _one_tensor_per_expert(out, "mlp")
    if "self_attn.embed_q.weight" in out:
        wk, wv = out.pop("self_attn.embed_q.weight"), out.pop("self_attn.unembed_out.weight")
        heads = wk.shape[0]
        out["self_attn.kv_b_proj.weight"] = mx.concatenate([wk.swapaxes(-1, -2), wv], axis=1).reshape(
            heads * (wk.shape[-1] + wv.shape[1]), -1)
    return {layout.where(lm.args.__dict__) + k: v for k, v in out.items()}
