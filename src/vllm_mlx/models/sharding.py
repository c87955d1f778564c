"""Loading one shard of a model per rank, with mlx-lm's own sharding of each architecture.

* **Tensor parallel** when the mlx-lm model class has ``shard(group)`` (Qwen3, Llama, Qwen2, Mistral,
  DeepSeek, ... ): every layer's attention heads and MLP columns are split over the ranks, and the
  partial results are summed with ``all_sum`` inside the forward pass (two round trips per layer).
* **Pipeline parallel** with ``model.pipeline(group)`` (Qwen2, Qwen3-MoE, DeepSeek, GLM-4 MoE, ...):
  each rank holds a contiguous run of layers and hands the hidden state on (one hop per rank), the
  default only for a model that has no ``shard()``.
* Anything else cannot be split: :class:`UnsplittableModelError` at startup.

The weights are opened lazily and sharded before they are evaluated, so a rank reads (and keeps)
only its own slice.
"""

from __future__ import annotations

import logging
from typing import Any

import mlx.core as mx

from .loader import LoadedModel, cast_floating_weights, context_length, resolve_model_path, weight_bytes

logger = logging.getLogger(__name__)


class UnsplittableModelError(RuntimeError):
    """The architecture gives no way to split it across ranks (or not into this many parts)."""


def parallelism_of(model: Any, wanted: str = "auto") -> str | None:
    """``wanted``: "auto" (tensor when possible), "tensor" or "pipeline"; None when impossible."""
    can = [kind for kind, ok in (("tensor", hasattr(model, "shard")),
                                 ("pipeline", hasattr(getattr(model, "model", None), "pipeline"))) if ok]
    if wanted == "auto":
        return can[0] if can else None
    return wanted if wanted in can else None


def _check_divisible(config: dict, size: int) -> None:
    text = config.get("text_config") or config
    for key in ("num_attention_heads", "num_key_value_heads", "intermediate_size"):
        value = text.get(key)
        if isinstance(value, int) and value % size:
            raise UnsplittableModelError(
                f"tensor parallelism over {size} ranks needs {key} ({value}) to be a multiple of {size}; "
                f"run on a number of ranks that divides it")


def load_sharded(model: str, group: Any, *, compute_dtype: str = "model", trust_remote_code: bool = False,
                 parallelism: str = "auto", whole_output_head: bool = False) -> LoadedModel:
    """This rank's shard of ``model`` (on the engine thread: MLX streams are per thread).
    ``whole_output_head``: also keep the output layer whole, beside its shard (what an MTP head run on
    this rank alone reads; it costs the layer's full size here)."""
    from mlx_lm.utils import load_model as mlx_load_model
    from mlx_lm.utils import load_tokenizer

    path = resolve_model_path(model)
    net, config = mlx_load_model(path, lazy=True, strict=False, trust_remote_code=trust_remote_code)
    kind = parallelism_of(net, parallelism)
    size = group.size()
    if kind is None and parallelism != "auto":
        raise UnsplittableModelError(
            f"model type {config.get('model_type')!r} has no {parallelism} parallelism in mlx-lm; "
            f"use --distributed-parallelism auto")
    if kind is None:
        raise UnsplittableModelError(
            f"model type {config.get('model_type')!r} cannot be split across machines: its mlx-lm "
            f"implementation has neither shard() (tensor parallel) nor pipeline() (pipeline parallel). "
            f"Serve it on one machine, or pick an architecture mlx-lm can shard (e.g. Qwen3, Llama).")
    text_model = getattr(net, "language_model", net)
    output = getattr(text_model, "lm_head", None) if whole_output_head else None  # (before it is split)
    if kind == "tensor":
        _check_divisible(config, size)
        net.shard(group)
    else:
        layers = len(net.model.layers)
        if layers < size:
            raise UnsplittableModelError(f"{layers} layers cannot be pipelined over {size} ranks")
        net.model.pipeline(group)
    if output is getattr(text_model, "lm_head", None):
        output = None  # not split (tied to the embedding, or pipeline parallel): the model's own is whole
    if compute_dtype not in ("model", "auto"):
        cast_floating_weights(net, getattr(mx, compute_dtype))
        if output is not None:
            cast_floating_weights(output, getattr(mx, compute_dtype))
    # Layer by layer, so at most one layer's full tensors are read at a time before they are sliced;
    # then hand the buffers of the full tensors back (MLX keeps freed buffers for reuse).
    for layer in getattr(net, "layers", []):
        if layer is not None:
            mx.eval(layer.parameters())
            mx.clear_cache()
    mx.eval(net.parameters())
    mx.clear_cache()
    tokenizer = load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
    logger.info("rank %d of %d: loaded the %s-parallel shard of %s (%.1f MB of weights)", group.rank(), size,
                kind, path, weight_bytes(net) / 2**20)
    loaded = LoadedModel(model=net, tokenizer=tokenizer, config=config, path=path,
                         max_model_len=context_length(config))
    loaded.parallelism = kind
    if output is not None:
        mx.eval(output.parameters())
        loaded.whole_output_head = output
        logger.info("rank %d keeps the output layer whole as well (%.1f MB), for --speculative mtp", group.rank(),
                    weight_bytes(output) / 2**20)
    return loaded
