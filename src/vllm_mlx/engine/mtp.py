"""Multi-token prediction heads as the drafter (``--speculative mtp``), for checkpoints that carry them
(Qwen3-Next, Qwen3.5/3.6: ``mtp.*`` tensors; mlx-lm drops them when it loads the model).

The head takes the served model's final hidden state at a position and the embedding of the token
drawn there, and predicts the token after it: ``fc([norm(embedding), norm(hidden)])`` -> one decoder
layer of the model's own full-attention kind -> ``norm`` -> the model's output head. Its output hidden
state and its token feed it again for the next proposal, so one head proposes K tokens in K small
forwards. The served model's forwards keep their final hidden states (:meth:`ModelRunner.capture`),
and a verify step leaves the index of the position each row's next token was drawn at, so the
proposals of a step start from the row's newest token without another forward of the served model.

The head's layer attends to the positions of its own proposals, not to a cache of the whole sequence
(the model's hidden state carries the context); a cache of its keys and values along the sequence is
left for later.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.base import create_attention_mask, gather_last_axis
from mlx_lm.models.cache import KVCache

from ..models.safetensors_header import safetensors_shapes
from .sequence import Sequence


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

    def __call__(self, hidden: mx.array, embedded: mx.array, cache: list[Any]) -> mx.array:
        x = self.fc(mx.concatenate([self.pre_fc_norm_embedding(embedded), self.pre_fc_norm_hidden(hidden)], axis=-1))
        mask = create_attention_mask(x, cache[0])
        for layer, c in zip(self.layers, cache):
            x = layer(x, mask=mask, cache=c)
        return self.norm(x)


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


class MTPProposer:
    """Proposals of the checkpoint's MTP head, from the served model's last hidden states.
    ``whole_output``: the output head unsplit, where ``--distributed`` split the model's (the head runs
    on rank 0 alone, so it cannot gather the other ranks' parts)."""

    method = "mtp"

    def __init__(self, head: MTPHead, model: Any, runner: Any, vocab_limit: int, whole_output: Any = None):
        self.head = head
        self.embed = language_model(model).model.embed_tokens
        self.output = whole_output if whole_output is not None else output_head(model)
        self.runner = runner
        self.vocab_limit = vocab_limit
        if hasattr(model, "hidden"):  # a vision-language model: its forward places rows with media itself
            runner.capture(model.hidden, model.output)
        else:
            runner.capture(language_model(model).model, served_output(model))

    def may_propose(self, seqs: list[Sequence], wants: list[int]) -> bool:
        return any(wants)

    def forget(self, seqs: list[Sequence]) -> None:
        pass

    def propose(self, seqs: list[Sequence], wants: list[int]) -> list[list[int]]:
        """Up to ``wants[i]`` tokens for row i, for rows whose newest token was drawn in the served
        model's last decode or verify forward (rows that joined since propose from the next step)."""
        runner = self.runner
        where = {s: i for i, s in enumerate(runner.hidden_seqs)}
        rows = [i for i, (s, w) in enumerate(zip(seqs, wants)) if w and s in where]
        out: list[list[int]] = [[] for _ in seqs]
        if not rows or runner.last_hidden is None:
            return out
        picked = mx.array([where[seqs[i]] for i in rows])
        hidden = runner.last_hidden[picked]
        at = runner.hidden_index[picked] if runner.hidden_index is not None else mx.zeros(len(rows), dtype=mx.int32)
        h = mx.take_along_axis(hidden, at[:, None, None].astype(mx.int32), axis=1)  # (R, 1, H)
        token = mx.array([seqs[i].output_ids[-1] for i in rows])
        cache, drafts = [KVCache()], []
        for _ in range(max(wants[i] for i in rows)):
            h = self.head(h, self.embed(token[:, None]), cache)
            token = mx.argmax(self.output(h)[:, -1, :self.vocab_limit], axis=-1)
            drafts.append(token)
        for i, row in zip(rows, mx.stack(drafts, axis=1).tolist()):
            out[i] = row[:wants[i]]
        return out
