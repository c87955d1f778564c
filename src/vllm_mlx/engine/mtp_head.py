"""The multi-token-prediction head of a checkpoint that carries one, built and loaded beside mlx-lm's
or mlx-vlm's model (mlx-lm drops its tensors when it loads the model), in its published layout:

- Qwen3-Next, Qwen3.5/3.6: ``mtp.*`` tensors, named as :class:`MTPHead` names them;
- one decoder layer outside the model's (:data:`LAYER_LAYOUTS`): DeepSeek-V3, GLM-4.5/4.6/4.7 and
  GLM-4.7-Flash put it after the model's, ``model.layers.{num_hidden_layers}.*``, with ``eh_proj``,
  ``enorm``, ``hnorm`` and ``shared_head``; MiMo as ``model.mtp_layers.0.*``, with ``input_proj``,
  ``token_layernorm``, ``hidden_layernorm``, ``final_layernorm`` (renamed here; the layer's own
  tensors go through the model's ``sanitize``, as its layers' do).

The head takes the served model's final hidden state at a position and the embedding of the token
drawn there, and predicts the token after it: ``fc([norm(embedding), norm(hidden)])`` (MiMo's: the
hidden state first) -> one decoder layer of the model's own full-attention kind -> ``norm`` -> the
model's output head. How it is fed and drafts is :mod:`.mtp`.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any, NamedTuple

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
    def __init__(self, layer: nn.Module, hidden_size: int, eps: float, hidden_first: bool = False):
        super().__init__()
        self.hidden_first = hidden_first  # the order of fc's inputs
        self.fc = nn.Linear(2 * hidden_size, hidden_size, bias=False)
        self.pre_fc_norm_embedding = nn.RMSNorm(hidden_size, eps=eps)
        self.pre_fc_norm_hidden = nn.RMSNorm(hidden_size, eps=eps)
        self.layers = [layer]
        self.norm = nn.RMSNorm(hidden_size, eps=eps)

    def project(self, hidden: mx.array, embedded: mx.array) -> mx.array:
        """The layer's input for (hidden state at a position, embedding of the token after it) pairs."""
        parts = [self.pre_fc_norm_embedding(embedded), self.pre_fc_norm_hidden(hidden)]
        return self.fc(mx.concatenate(parts[::-1] if self.hidden_first else parts, axis=-1))

    def write_keys(self, hidden: mx.array, embedded: mx.array, cache: Any) -> None:
        """Only what the layer's attention writes to ``cache`` for these pairs: the rest of the layer's
        graph is not even built, as every forward of the served model feeds every position it runs.
        Keys and values of mlx-lm's grouped-query attentions (Qwen3-Next's, which Qwen3.5's layers use
        too; GLM-4.5's), or the latent and the rotary key of DeepSeek-V3's latent attention."""
        layer = self.layers[0]
        attention, x = layer.self_attn, layer.input_layernorm(self.project(hidden, embedded))
        b, n, _ = x.shape
        if hasattr(attention, "kv_a_proj_with_mqa"):
            latent, rotary = mx.split(attention.kv_a_proj_with_mqa(x), [attention.kv_lora_rank], axis=-1)
            rotary = attention.rope(rotary.reshape(b, n, 1, -1).transpose(0, 2, 1, 3), cache.offset)
            cache.update_and_fetch(mx.expand_dims(attention.kv_a_layernorm(latent), axis=1), rotary)
            return
        heads = getattr(attention, "num_key_value_heads", None) or attention.n_kv_heads
        keys = attention.k_proj(x).reshape(b, n, heads, -1)
        if getattr(attention, "k_norm", None) is not None:
            keys = attention.k_norm(keys)
        values = attention.v_proj(x).reshape(b, n, heads, -1)
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


class LayerLayout(NamedTuple):
    """A published layout of an MTP head as one decoder layer outside the model's: where its tensors
    are (``{layers}``: the model's layer count), its own tensors' names -> :class:`MTPHead`'s, and
    whether its projection takes the hidden state first."""

    prefix: str
    names: dict[str, str]
    hidden_first: bool = False

    def where(self, config: dict) -> str:
        return self.prefix.format(layers=(config.get("text_config") or config).get("num_hidden_layers"))


LAYER_LAYOUTS = (
    LayerLayout("model.layers.{layers}.", {"eh_proj.": "fc.", "enorm.": "pre_fc_norm_embedding.",
                                           "hnorm.": "pre_fc_norm_hidden.", "shared_head.norm.": "norm."}),
    LayerLayout("model.mtp_layers.0.", {"input_proj.": "fc.", "token_layernorm.": "pre_fc_norm_embedding.",
                                        "hidden_layernorm.": "pre_fc_norm_hidden.", "final_layernorm.": "norm."},
                hidden_first=True),
)
LAYER_COPIES = ("embed_tokens.", "shared_head.head.")  # of the model's embedding and output head (not used)


def mtp_weights(path: Path, config: dict | None = None) -> tuple[dict[str, mx.array], bool, LayerLayout | None]:
    """The MTP tensors of a model folder (only the files that hold some are loaded): ``mtp.*`` named as
    in :class:`MTPHead`, or those of a :data:`LAYER_LAYOUTS` layer, under its own names (its prefix
    cut off); whether the folder is in the Hugging Face layout of the ``mtp.*`` families (convolution weights
    not yet in MLX's order: the layout whose norms are zero-centred); and the layer's layout."""
    weights, hf_layout, found = {}, False, None
    for file in sorted(Path(path).glob("*.safetensors")):
        shapes = safetensors_shapes(file)
        hf_layout = hf_layout or any(k.endswith("conv1d.weight") and s[-1] != 1 for k, s in shapes.items())
        if any("mtp." in k for k in shapes):
            weights.update({k.split("mtp.", 1)[1]: v for k, v in mx.load(str(file)).items() if "mtp." in k})
            continue
        for layout in LAYER_LAYOUTS:
            prefix = layout.where(config or {})
            if any(k.startswith(prefix) for k in shapes):
                weights.update({k[len(prefix):]: v for k, v in mx.load(str(file)).items() if k.startswith(prefix)})
                found = layout
    return weights, hf_layout, found


def layer_weights(weights: dict[str, mx.array], model: Any, layout: LayerLayout) -> dict[str, mx.array]:
    """An MTP layer's tensors (in ``layout``'s names) named as in :class:`MTPHead`: through the model's
    own ``sanitize`` as its first layer's (experts stacked, a latent attention's ``kv_b_proj`` split,
    FP8 blocks dequantized, as mlx-lm does for the model's layers), then renamed."""
    first = "model.layers.0."
    layer = {first + k: v for k, v in weights.items() if not k.startswith(LAYER_COPIES)}
    sanitize = getattr(language_model(model), "sanitize", None)
    named = {}
    for key, value in (sanitize(layer) if sanitize else layer).items():
        name = key[len(first):]
        head_name = next((new + name[len(old):] for old, new in layout.names.items() if name.startswith(old)), None)
        named[head_name or f"layers.0.{name}"] = value
    return named


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


def new_mtp_head(model: Any, config: dict | None = None, hidden_first: bool = False) -> MTPHead:
    """An MTP head shaped for ``model`` (its layer: one of the model's full-attention decoder layers;
    for a vision-language model, whose layers take mrope positions, mlx-lm's layer of its text family,
    shaped by the checkpoint's ``config``)."""
    if hasattr(model, "vlm"):
        return _vision_model_head(model, config or {})
    lm = language_model(model)
    args = getattr(lm, "args", None)
    layers = list(getattr(getattr(lm, "model", None), "layers", []))
    unsupported = ValueError(f"MTP heads of {type(model).__module__.rsplit('.', 1)[-1]} models are not supported "
                             "(Qwen3-Next, Qwen3.5/3.6, DeepSeek-V3, GLM-4.5 and MiMo's are)")
    if args is None or not layers:
        raise unsupported
    if any(hasattr(layer, "is_linear") for layer in layers):  # the head's layer: of the full-attention kind
        index = next((i for i, layer in enumerate(layers) if not layer.is_linear), None)
        if index is None:
            raise unsupported
    else:  # the layer after the model's, of its kind there (a mixture of experts where the model's are)
        index = args.num_hidden_layers
    kind = type(layers[min(index, len(layers) - 1)])
    numbered = len(inspect.signature(kind).parameters) > 1  # (MiMo's layers are all alike: not numbered)
    layer = kind(args, index) if numbered else kind(args)
    return MTPHead(layer, args.hidden_size, args.rms_norm_eps, hidden_first)


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
    weights, hf_layout, layout = mtp_weights(path, config)
    if not weights:
        raise ValueError(f"{path} has no MTP weights (mtp.* tensors, or an MTP layer outside the model's): "
                         "--speculative mtp needs a checkpoint that carries them (Qwen3-Next, Qwen3.5/3.6, "
                         "DeepSeek-V3, GLM-4.5, MiMo as published; conversions to MLX drop them)")
    if layout is not None:
        weights = layer_weights(weights, model, layout)
    weights = stacked_experts(weights)
    if hf_layout:
        weights = {k: v + 1.0 if k in ZERO_CENTRED or k.endswith(LAYER_ZERO_CENTRED) else v
                   for k, v in weights.items()}
    head = new_mtp_head(model, config, hidden_first=layout is not None and layout.hidden_first)
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
