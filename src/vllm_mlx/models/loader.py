"""Model loading through mlx-lm's normal path, with clear errors when a model is missing."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from .context import context_length  # the one context-length reader (also used by vision_loader, sharding)

logger = logging.getLogger(__name__)

# Files a text model needs: weights, configs, tokenizer, chat templates, custom code.
MODEL_FILE_PATTERNS = [
    "*.json", "*.safetensors", "*.py", "tokenizer.model", "*.tiktoken", "tiktoken.model",
    "*.txt", "*.jsonl", "*.jinja",
]


class ModelNotFoundError(RuntimeError):
    """The model is neither a local folder nor available (offline) from the Hugging Face cache."""


@dataclass
class LoadedModel:
    model: nn.Module
    tokenizer: Any  # mlx_lm TokenizerWrapper
    config: dict
    path: Path
    max_model_len: int
    backend: Any = None  # vllm_mlx.platform.BackendInfo, set by the server
    vision: Any = None  # vision_loader.VisionInfo for a vision-language model
    whole_output_head: Any = None  # a split model's output layer unsplit (sharding.load_sharded), or None


def resolve_model_path(model: str) -> Path:
    """A local folder as is, else a Hugging Face repo id from the cache (or downloaded when online)."""
    local = Path(model).expanduser()
    if local.exists():
        if not (local / "config.json").exists():
            raise ModelNotFoundError(f"{local} exists but has no config.json; it is not a model folder")
        return local
    if model.startswith((".", "/", "~")) or model.count("/") > 1:
        raise ModelNotFoundError(f"model folder {model} does not exist")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")
    try:
        if offline:
            return Path(snapshot_download(model, allow_patterns=MODEL_FILE_PATTERNS, local_files_only=True))
        try:  # cached: no progress to report (the call below only checks for a newer revision)
            snapshot_download(model, allow_patterns=MODEL_FILE_PATTERNS, local_files_only=True)
            cached = True
        except LocalEntryNotFoundError:
            cached = False
            logger.info("fetching %s into the Hugging Face cache (first use; progress below)", model)
        started = time.monotonic()
        folder = Path(snapshot_download(model, allow_patterns=MODEL_FILE_PATTERNS))
        if not cached:
            files, size = weight_files(folder)
            logger.info("fetched %s: %d weight file(s), %s, in %.1f s", model, files, human_bytes(size),
                        time.monotonic() - started)
        return folder
    except LocalEntryNotFoundError as exc:
        from huggingface_hub.constants import HF_HUB_CACHE

        raise ModelNotFoundError(
            f"model {model!r} is not a local folder and is not in the Hugging Face cache "
            f"({HF_HUB_CACHE}){' and HF_HUB_OFFLINE=1 forbids downloading it' if offline else ''}. "
            f"Fetch it on a machine with network access with `hf download {model}` "
            f"(or `huggingface-cli download {model}`) and copy the cache, or pass a local model folder."
        ) from exc
    except Exception as exc:  # network errors, unknown or gated repos
        raise ModelNotFoundError(f"could not fetch model {model!r}: {exc}") from exc


def load_model(model: str, *, compute_dtype: str = "model", trust_remote_code: bool = False) -> LoadedModel:
    """Load weights and tokenizer with mlx-lm; must run on the engine thread (MLX streams are per thread)."""
    from mlx_lm.utils import load_model as mlx_load_model
    from mlx_lm.utils import load_tokenizer

    path = resolve_model_path(model)
    started = time.monotonic()
    files, size = weight_files(path)
    logger.info("loading %s: %d weight file(s), %s", path.name, files, human_bytes(size))
    net, config = mlx_load_model(path, lazy=True, trust_remote_code=trust_remote_code)
    if compute_dtype not in ("model", "auto"):
        cast_floating_weights(net, getattr(mx, compute_dtype))
    mx.eval(net.parameters())
    weights_s = time.monotonic() - started
    tokenizer = load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
    logger.info("loaded %s: weights in memory in %.1f s (%.0f MB/s), tokenizer in %.1f s", path.name, weights_s,
                size / 1e6 / max(weights_s, 1e-3), time.monotonic() - started - weights_s)
    return LoadedModel(
        model=net, tokenizer=tokenizer, config=config, path=path, max_model_len=context_length(config)
    )


def load_metadata(model: str) -> LoadedModel:
    """The tokenizer and config of a model without its weights (``model`` is None): what the API
    process of ``--engine-process`` needs; the engine process loads the weights."""
    from mlx_lm.utils import load_config, load_tokenizer

    path = resolve_model_path(model)
    config = load_config(path)
    tokenizer = load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
    return LoadedModel(model=None, tokenizer=tokenizer, config=config, path=path, max_model_len=context_length(config))


def weight_files(path: Path) -> tuple[int, int]:
    """(number, total bytes) of a model folder's safetensors files."""
    files = list(Path(path).glob("*.safetensors"))
    return len(files), sum(f.stat().st_size for f in files)


def weight_bytes(module: Any) -> int:
    """The bytes of a model's (or a module's) weights as they are held in memory."""
    from mlx.utils import tree_flatten

    return sum(a.nbytes for _, a in tree_flatten(module.parameters()) if isinstance(a, mx.array))


def human_bytes(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n:.1f} GB"


def cast_floating_weights(model: nn.Module, dtype: mx.Dtype) -> None:
    """Cast unquantized floating-point weights (quantized weights and scales keep their types)."""
    from mlx.utils import tree_map

    def cast(x):
        if isinstance(x, mx.array) and mx.issubdtype(x.dtype, mx.floating) and x.dtype != dtype:
            return x.astype(dtype)
        return x

    quantized = any(isinstance(m, nn.QuantizedLinear) for _, m in model.named_modules())
    if quantized:
        logger.info("quantized model: keeping its weights as stored")
        return
    model.update(tree_map(cast, model.parameters()))


