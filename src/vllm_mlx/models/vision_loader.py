"""Vision-language models: detected from their metadata and loaded through mlx-vlm.

A folder is a vision-language model when its ``config.json`` has a ``vision_config`` (or a
``vision_tower``/``visual`` sub-config), when it ships an image processor config
(``preprocessor_config.json`` / ``processor_config.json`` naming an image processor), or when its
weight names include a vision tower (``visual.*``, ``vision_tower.*``, ``vision_model.*``). No
guess is made from the repository name. ``--mllm`` forces the vision path.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .loader import LoadedModel, _cast_floating_weights, context_length

logger = logging.getLogger(__name__)

VISION_WEIGHT_PREFIXES = ("visual.", "vision_tower.", "vision_model.", "model.visual.", "model.vision_tower.")


def _json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _weight_names(path: Path) -> list[str]:
    index = _json(path / "model.safetensors.index.json").get("weight_map")
    if index:
        return list(index)
    names: list[str] = []
    for file in sorted(path.glob("*.safetensors"))[:1]:
        try:
            with open(file, "rb") as f:
                size = int.from_bytes(f.read(8), "little")
                if size > 100 << 20:
                    continue
                names = [k for k in json.loads(f.read(size)) if k != "__metadata__"]
        except (OSError, ValueError):
            continue
    return names


def vision_evidence(path: Path) -> str | None:
    """Why ``path`` looks like a vision-language model (None if it does not)."""
    config = _json(path / "config.json")
    for key in ("vision_config", "vision_tower_config", "visual"):
        if isinstance(config.get(key), dict):
            return f"config.json has {key!r}"
    for name in ("preprocessor_config.json", "processor_config.json"):
        proc = _json(path / name)
        if proc.get("image_processor_type") or isinstance(proc.get("image_processor"), dict):
            return f"{name} names an image processor"
    for weight in _weight_names(path):
        if weight.startswith(VISION_WEIGHT_PREFIXES):
            return f"weights include a vision tower ({weight})"
    return None


@dataclass
class VisionInfo:
    """What the API side needs to prepare media for this model (no MLX inside)."""

    model_type: str
    processor: Any  # the mlx-vlm/HF processor: image_processor, video_processor, tokenizer
    image_token: str
    video_token: str | None
    vision_start: str | None
    vision_end: str | None
    token_ids: dict[str, int]  # {"image": id, "video": id}
    merge_size: int
    supports_video: bool


def load_vision_model(path: Path, *, compute_dtype: str = "model", cache_bytes: int = 512 << 20,
                      trust_remote_code: bool = False) -> LoadedModel:
    """Load with mlx-vlm on the calling (engine) thread; the model is wrapped for the engine."""
    import mlx.core as mx
    from mlx_lm.utils import load_tokenizer
    from mlx_vlm.utils import get_model_type
    from mlx_vlm.utils import load as vlm_load

    from ..engine.vision_model import SUPPORTED_ARCHITECTURES, VisionLanguageModel

    config = _json(path / "config.json")
    model_type = get_model_type(config) or "?"
    if config.get("model_file") and not trust_remote_code:
        raise ValueError(f"{path} declares model_file={config['model_file']!r}: pass --trust-remote-code to run it")
    family = model_type
    if family not in SUPPORTED_ARCHITECTURES:
        raise ValueError(
            f"vision-language architecture {model_type!r} is not supported by this server's engine yet "
            f"(supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}); serve it without --mllm only if it "
            f"is a text model")
    vlm, processor = vlm_load(str(path), lazy=True)
    if compute_dtype not in ("model", "auto"):
        _cast_floating_weights(vlm, getattr(mx, compute_dtype))
    mx.eval(vlm.parameters())
    tokenizer = load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
    template = getattr(processor, "chat_template", None)
    if template and not getattr(tokenizer, "chat_template", None):  # kept in chat_template.json only
        tokenizer.chat_template = template  # (the wrapper sets both on the Hugging Face tokenizer)
        tokenizer.has_chat_template = True
    model = VisionLanguageModel(vlm, family, cache_bytes=cache_bytes)
    hf_tok = processor.tokenizer
    image_token = getattr(processor, "image_token", "<|image_pad|>")
    video_token = getattr(processor, "video_token", None)
    info = VisionInfo(
        model_type=family,
        processor=processor,
        image_token=image_token,
        video_token=video_token,
        vision_start=getattr(processor, "vision_start_token", None) or "<|vision_start|>",
        vision_end=getattr(processor, "vision_end_token", None) or "<|vision_end|>",
        token_ids={"image": model.image_token_id, "video": model.video_token_id},
        merge_size=int(processor.image_processor.merge_size),
        supports_video=video_token is not None and getattr(processor, "video_processor", None) is not None,
    )
    if hf_tok.convert_tokens_to_ids(image_token) != model.image_token_id:
        raise ValueError(f"the tokenizer's {image_token!r} id does not match the config's image_token_id")
    max_len = context_length(config)
    loaded = LoadedModel(model=model, tokenizer=tokenizer, config=config, path=path, max_model_len=max_len)
    loaded.vision = info
    logger.info("vision-language model %s (%s) loaded through mlx-vlm", path.name, family)
    return loaded

