"""The multi-token-prediction head of a checkpoint that carries one (Qwen3-Next, Qwen3.5/3.6: ``mtp.*``
tensors; mlx-lm drops them when it loads the model), built and loaded beside mlx-lm's or mlx-vlm's model.

The head takes the served model's final hidden state at a position and the embedding of the token
drawn there, and predicts the token after it: ``fc([norm(embedding), norm(hidden)])`` -> one decoder
layer of the model's own full-attention kind -> ``norm`` -> the model's output head. How it is fed
and drafts is :mod:`.mtp`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import gather_last_axis

from ..models.safetensors_header import safetensors_shapes


def language_model(model: Any) -> Any:
    """The text model inside (Qwen3.5's ``language_model``; a vision-language model's, mlx-vlm's, in the
    engine's :class:`~.vision_model.VisionLanguageModel`), or the model itself."""
    language = getattr(model, "language", None)
    return language if language is not None else getattr(model, "language_model", model)


def output_head(model: Any) -> Any:
    """The function from final hidden states to logits of an mlx-lm language model."""
    lm = language_model(model)
    if getattr(lm, "lm_head", None) is not None:
        return lm.lm_head
    return lm.model.embed_tokens.as_linear


class MTPHead(nn.Module):
    def __init__(self, layer: nn.Module, hidden_size: int, eps: float):
        super().__init__()
        self.fc = nn.Linear(2 * hidden_size, hidden_size, bias=False)
        self.pre_fc_norm_embedding = nn.RMSNorm(hidden_size, eps=eps)
        self.pre_fc_norm_hidden = nn.RMSNorm(hidden_size, eps=eps)
        self.layers = [layer]
        self.norm = nn.RMSNorm(hidden_size, eps=eps)

    def project(self, hidden: mx.array, embedded: mx.array) -> mx.array:
        """The layer's input for (hidden state at a position, embedding of the token after it) pairs."""
        return self.fc(mx.concatenate([self.pre_fc_norm_embedding(embedded), self.pre_fc_norm_hidden(hidden)],
                                      axis=-1))

    def write_keys(self, hidden: mx.array, embedded: mx.array, cache: Any) -> None:
        """Only what the layer's attention (mlx-lm's Qwen3-Next attention, which Qwen3.5's layers use
        too) writes to ``cache`` for these pairs, their keys and values: the rest of the layer's graph
        is not even built, as every forward of the served model feeds every position it runs."""
        layer = self.layers[0]
        attention, x = layer.self_attn, layer.input_layernorm(self.project(hidden, embedded))
        b, n, _ = x.shape
        keys = attention.k_norm(attention.k_proj(x).reshape(b, n, attention.num_key_value_heads, -1))
        values = attention.v_proj(x).reshape(b, n, attention.num_key_value_heads, -1)
        cache.update_and_fetch(attention.rope(keys.transpose(0, 2, 1, 3), offset=cache.offset),
                               values.transpose(0, 2, 1, 3))

    def __call__(self, hidden: mx.array, embedded: mx.array, cache: Any, mask: mx.array) -> mx.array:
        """The head's output hidden states (what the output head turns into the next token's logits)."""
        return self.norm(self.layers[0](self.project(hidden, embedded), mask=mask, cache=cache))


# Norms a Hugging Face checkpoint stores zero-centred (the layer scales by 1 + w; mlx-lm adds the 1 when
# it loads the model's own, as it drops the MTP head): those of the head and of its decoder layer.
ZERO_CENTRED = ("pre_fc_norm_embedding.weight", "pre_fc_norm_hidden.weight", "norm.weight")
LAYER_ZERO_CENTRED = (".input_layernorm.weight", ".post_attention_layernorm.weight", ".q_norm.weight",
                      ".k_norm.weight")


def mtp_weights(path: Path) -> tuple[dict[str, mx.array], bool]:
    """The ``mtp.*`` tensors of a model folder, named as in :class:`MTPHead` (only the files that hold
    some are loaded), and whether the folder is in the Hugging Face layout (convolution weights not yet
    in MLX's order: the layout whose norms are zero-centred)."""
    weights, hf_layout = {}, False
    for file in sorted(Path(path).glob("*.safetensors")):
        shapes = safetensors_shapes(file)
        hf_layout = hf_layout or any(k.endswith("conv1d.weight") and s[-1] != 1 for k, s in shapes.items())
        if any("mtp." in k for k in shapes):
            weights.update({k.split("mtp.", 1)[1]: v for k, v in mx.load(str(file)).items() if "mtp." in k})
    return weights, hf_layout


def stacked_experts(weights: dict[str, mx.array]) -> dict[str, mx.array]:
    """A mixture-of-experts head's experts as mlx-lm's ``switch_mlp`` holds them: from one tensor per
    expert, or from the fused ``gate_up_proj`` / ``down_proj`` of newer checkpoints."""
    prefix = "layers.0.mlp"
    if f"{prefix}.experts.gate_up_proj" in weights:
        gate_up = weights.pop(f"{prefix}.experts.gate_up_proj")
        middle = gate_up.shape[-2] // 2
        weights[f"{prefix}.switch_mlp.gate_proj.weight"] = gate_up[..., :middle, :]
        weights[f"{prefix}.switch_mlp.up_proj.weight"] = gate_up[..., middle:, :]
        weights[f"{prefix}.switch_mlp.down_proj.weight"] = weights.pop(f"{prefix}.experts.down_proj")
    for name in ("gate_proj", "up_proj", "down_proj"):
        experts = sorted((k for k in weights if k.startswith(f"{prefix}.experts.") and k.endswith(f".{name}.weight")),
                         key=lambda k: int(k.split(".")[4]))
        if experts:
            weights[f"{prefix}.switch_mlp.{name}.weight"] = mx.stack([weights.pop(k) for k in experts])
    return weights


def new_mtp_head(model: Any, config: dict | None = None) -> MTPHead:
    """An MTP head shaped for ``model`` (its layer: one of the model's full-attention decoder layers;
    for a vision-language model, whose layers take mrope positions, mlx-lm's layer of its text family,
    shaped by the checkpoint's ``config``)."""
    if hasattr(model, "vlm"):
        return _vision_model_head(model, config or {})
    lm = language_model(model)
    args = getattr(lm, "args", None)
    layers = list(getattr(getattr(lm, "model", None), "layers", []))
    attention = next((i for i, layer in enumerate(layers) if not getattr(layer, "is_linear", True)), None)
    if args is None or attention is None:
        raise ValueError(f"MTP heads of {type(model).__module__.rsplit('.', 1)[-1]} models are not supported "
                         "(Qwen3-Next and Qwen3.5/3.6 are)")
    return MTPHead(type(layers[attention])(args, attention), args.hidden_size, args.rms_norm_eps)


def _vision_model_head(model: Any, config: dict) -> MTPHead:
    """Qwen3.5/3.6 (the vision families with Gated DeltaNet layers, the ones with MTP heads): the head
    of mlx-lm's Qwen3.5 text model, whose arguments cover the mixture-of-experts variants too. Its
    layer places the head's own positions as plain RoPE, as a text token's equal mrope positions are."""
    if not model.family.gated_delta or "text_config" not in config:
        raise ValueError(f"MTP heads of {model.model_type} vision-language models are not supported "
                         "(Qwen3.5/3.6 are)")
    from mlx_lm.models import qwen3_5

    args = qwen3_5.TextModelArgs.from_dict(config["text_config"])
    attention = args.full_attention_interval - 1
    return MTPHead(qwen3_5.DecoderLayer(args, attention), args.hidden_size, args.rms_norm_eps)


def load_mtp_head(model: Any, path: Path, config: dict) -> MTPHead:
    """The MTP head of the checkpoint at ``path`` for ``model`` (mlx-lm's), in the model's dtype;
    a ValueError saying what is missing when it cannot be built."""
    weights, hf_layout = mtp_weights(path)
    if not weights:
        raise ValueError(f"{path} has no MTP weights (mtp.* tensors): --speculative mtp needs a checkpoint "
                         "that carries them (Qwen3-Next, Qwen3.5/3.6 as published)")
    weights = stacked_experts(weights)
    if hf_layout:
        weights = {k: v + 1.0 if k in ZERO_CENTRED or k.endswith(LAYER_ZERO_CENTRED) else v
                   for k, v in weights.items()}
    head = new_mtp_head(model, config)
    lm = language_model(model)
    quantization = config.get("quantization") or (config.get("text_config") or {}).get("quantization")
    if quantization and any(k.endswith(".scales") for k in weights):
        nn.quantize(head, group_size=quantization["group_size"], bits=quantization["bits"],
                    class_predicate=lambda p, m: f"{p}.scales" in weights)
    embed = lm.model.embed_tokens
    dtype = getattr(embed, "scales", getattr(embed, "weight", None)).dtype
    weights = {k: v.astype(dtype) if mx.issubdtype(v.dtype, mx.floating) else v for k, v in weights.items()}
    try:
        head.load_weights(list(weights.items()), strict=True)
    except ValueError as exc:
        raise ValueError(f"the MTP weights of {path} do not fit its MTP head: {exc}") from exc
    mx.eval(head.parameters())
    return head


def served_output(model: Any) -> Any:
    """The served forward's function from final hidden states to logits: the output head, and where
    ``--distributed`` split it over the ranks, the gather of every rank's part (a collective)."""
    lm, head = language_model(model), output_head(model)
    group = getattr(lm, "sharding_group", None)
    if group is None or getattr(lm, "lm_head", None) is None:
        return head
    return lambda hidden: gather_last_axis(head(hidden), group)
