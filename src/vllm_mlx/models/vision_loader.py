"""Vision-language models: detected from their metadata and loaded through mlx-vlm.

A folder is a vision-language model when its ``config.json`` has a ``vision_config`` (or a
``vision_tower``/``visual`` sub-config), when it ships an image processor config
(``preprocessor_config.json`` / ``processor_config.json`` naming an image processor), or when its
weight names include a vision tower (``visual.*``, ``vision_tower.*``, ``vision_model.*``). No
guess is made from the repository name.

What a folder is served as (:func:`serving_mode`):

* ``--text-only``: text, through mlx-lm (the vision tower, if any, is not loaded; images get 400);
* ``--mllm``: vision-language, through mlx-vlm;
* otherwise vision-language when the metadata says so (above) -- except a folder whose weights
  are listed and hold no vision tower at all (a text-only export that kept the original
  ``config.json`` or the processor files): mlx-vlm could not load it, so it is text.

A vision-language folder whose architecture the engine does not drive fails at startup with a
message naming the architecture and suggesting ``--text-only`` (:func:`unsupported_architecture_message`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..options import DEFAULTS
from .loader import LoadedModel, cast_floating_weights, context_length
from .safetensors_header import safetensors_shapes

logger = logging.getLogger(__name__)

NO_VISION_METADATA = "no vision metadata"  # the reason a plain text folder is served as text
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
    for file in sorted(path.glob("*.safetensors")):  # every file's header (a head's tensors may come first)
        try:
            names += list(safetensors_shapes(file))
        except (OSError, ValueError):
            continue
    return names


def _has_vision_weights(names: list[str]) -> bool:
    return any(n.startswith(VISION_WEIGHT_PREFIXES) or "vision" in n or "visual" in n for n in names)


@dataclass(frozen=True)
class ServingMode:
    """How a folder is served: ``vision`` (through mlx-vlm) or not (text, mlx-lm), and why."""

    vision: bool
    reason: str
    forced: bool = False  # chosen by --mllm (the user asked for the vision path)


def serving_mode(path: Path, *, mllm: bool = False, text_only: bool = False) -> ServingMode:
    """The detection rule of the module docstring."""
    if mllm and text_only:
        raise ValueError("--mllm and --text-only contradict each other; pass one of them")
    if text_only:
        return ServingMode(False, "--text-only was passed")
    if mllm:
        return ServingMode(True, "--mllm was passed", forced=True)
    evidence = vision_evidence(path)
    if evidence is None:
        return ServingMode(False, NO_VISION_METADATA)
    names = _weight_names(path)
    if names and not _has_vision_weights(names):
        return ServingMode(False, f"{evidence}, but the weights hold no vision tower (a text-only conversion)")
    return ServingMode(True, evidence)


def unsupported_architecture_message(model_type: str, mode: ServingMode) -> str:
    """Why a vision-language folder of ``model_type`` cannot be served with images, and what to do
    (``--mllm`` is named only when the user passed it)."""
    from ..engine.vision_model import SUPPORTED_ARCHITECTURES

    advice = ("drop --mllm to serve it as text" if mode.forced
              else "to serve its language model as text (requests with images get a 400), pass --text-only")
    return (f"vision-language architecture {model_type!r} is not supported by this server's engine "
            f"(supported: {', '.join(sorted(SUPPORTED_ARCHITECTURES))}); it was taken for a vision-language "
            f"model because {mode.reason}; {advice}")


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
    image_token: str  # the token an image's features fill, once per feature
    video_token: str | None
    vision_start: str | None
    vision_end: str | None
    token_ids: dict[str, int]  # {"image": id, "video": id}: the placeholder tokens of the features
    merge_size: int
    supports_video: bool
    # Gemma: the chat template marks an image with ``image_marker`` (Gemma 3: ``<start_of_image>``,
    # Gemma 4: the soft token itself), which becomes ``image_wrap[0] + image_token * n +
    # image_wrap[1]``. None: the template writes ``image_token`` (Qwen), repeated by the image's grid.
    image_marker: str | None = None
    image_wrap: tuple[str, str] = ("", "")
    image_tokens: int = 0  # soft tokens per image (Gemma 3's mm_tokens_per_image); 0: per image (Gemma 4)


def load_vision_model(path: Path, *, compute_dtype: str = "model", cache_bytes: int = DEFAULTS.vision_cache_mb << 20,
                      trust_remote_code: bool = False, mode: ServingMode | None = None) -> LoadedModel:
    """Load with mlx-vlm on the calling (engine) thread; the model is wrapped for the engine.
    ``mode``: why the folder is served as vision-language (for the error of an unsupported one)."""
    import mlx.core as mx
    from mlx_lm.utils import load_tokenizer

    try:
        import mlx_vlm  # noqa: F401
    except ImportError:
        from ..extras import install_hint

        raise RuntimeError(
            f"{path.name} is a vision-language model ({mode.reason if mode else 'forced'}), which needs the "
            f"'vision' extra (mlx-vlm): {install_hint('vision')}; or pass --text-only to serve its language "
            f"model as text") from None
    from mlx_vlm.utils import get_model_type
    from mlx_vlm.utils import load as vlm_load

    from ..engine.vision_model import SUPPORTED_ARCHITECTURES, VisionLanguageModel

    config = _json(path / "config.json")
    model_type = get_model_type(config) or "?"
    if config.get("model_file") and not trust_remote_code:
        raise ValueError(f"{path} declares model_file={config['model_file']!r}: pass --trust-remote-code to run it")
    family = model_type
    if family not in SUPPORTED_ARCHITECTURES:
        mode = mode or ServingMode(True, vision_evidence(path) or "it was loaded as one")
        raise ValueError(unsupported_architecture_message(model_type, mode))
    vlm, processor = vlm_load(str(path), lazy=True)
    if compute_dtype not in ("model", "auto"):
        cast_floating_weights(vlm, getattr(mx, compute_dtype))
    mx.eval(vlm.parameters())
    tokenizer = load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
    template = getattr(processor, "chat_template", None)
    if template and not getattr(tokenizer, "chat_template", None):  # kept in chat_template.json only
        tokenizer.chat_template = template  # (the wrapper sets both on the Hugging Face tokenizer)
        tokenizer.has_chat_template = True
    model = VisionLanguageModel(vlm, family, cache_bytes=cache_bytes)
    info = vision_info(family, processor, model.image_token_id, model.video_token_id)
    max_len = context_length(config)
    loaded = LoadedModel(model=model, tokenizer=tokenizer, config=config, path=path, max_model_len=max_len)
    loaded.vision = info
    logger.info("vision-language model %s (%s) loaded through mlx-vlm", path.name, family)
    return loaded


def vision_info(family: str, processor: Any, image_token_id: int, video_token_id: int | None) -> VisionInfo:
    """What the API side needs of a vision-language model to prepare media for it."""
    from ..engine.vision_model import SUPPORTED_ARCHITECTURES

    hf_tok = processor.tokenizer
    image_token = getattr(processor, "image_token", "<|image_pad|>")
    video_token = getattr(processor, "video_token", None)
    token_ids = {"image": image_token_id}
    if video_token_id is not None:
        token_ids["video"] = video_token_id
    info = VisionInfo(
        model_type=family,
        processor=processor,
        image_token=image_token,
        video_token=video_token,
        vision_start=getattr(processor, "vision_start_token", None) or "<|vision_start|>",
        vision_end=getattr(processor, "vision_end_token", None) or "<|vision_end|>",
        token_ids=token_ids,
        merge_size=int(getattr(processor.image_processor, "merge_size", 1)),
        supports_video=(SUPPORTED_ARCHITECTURES[family].mrope and video_token is not None
                        and getattr(processor, "video_processor", None) is not None),
    )
    if family in ("gemma3", "gemma4"):  # mlx-vlm's processors: what an image becomes in the prompt
        full = processor.full_image_sequence
        first, last = full.index(image_token), full.rindex(image_token) + len(image_token)
        info.image_wrap = (full[:first], full[last:])
        if family == "gemma3":  # the template's "<start_of_image>": "\n\n<boi>" + soft tokens + "<eoi>\n\n"
            info.image_marker, info.image_tokens = processor.boi_token, full.count(image_token)
        else:  # Gemma 4: the template's "<|image|>": "<|image>" + the image's soft tokens + "<image|>"
            info.image_marker = image_token
    if hf_tok.convert_tokens_to_ids(image_token) != image_token_id:
        raise ValueError(f"the tokenizer's {image_token!r} id does not match the config's image_token_id")
    return info


def load_vision_metadata(path: Path, *, trust_remote_code: bool = False) -> LoadedModel:
    """A vision-language model's tokenizer, processor and config without its weights (``model`` is
    None): the API process of ``--engine-process`` prepares media with them."""
    from mlx_lm.utils import load_tokenizer
    from mlx_vlm.utils import get_model_and_args, get_model_type, load_image_processor, load_processor

    from ..engine.vision_model import SUPPORTED_ARCHITECTURES

    config = _json(path / "config.json")
    family = get_model_type(config) or "?"
    if family not in SUPPORTED_ARCHITECTURES:
        raise ValueError(unsupported_architecture_message(family, ServingMode(True, vision_evidence(path) or "?")))
    model_class, _ = get_model_and_args(config=dict(config))
    cfg = model_class.ModelConfig.from_dict({"text_config": {}, "vision_config": {}, "audio_config": {}, **config})
    image_token_id = int(getattr(cfg, "image_token_id", None) or cfg.image_token_index)
    video = getattr(cfg, "video_token_id", None) or getattr(cfg, "video_token_index", None)
    processor = load_processor(path, True, eos_token_ids=config.get("eos_token_id"))
    image_processor = load_image_processor(path)
    if image_processor is not None:
        processor.image_processor = image_processor
    tokenizer = load_tokenizer(path, eos_token_ids=config.get("eos_token_id"))
    template = getattr(processor, "chat_template", None)
    if template and not getattr(tokenizer, "chat_template", None):
        tokenizer.chat_template = template
        tokenizer.has_chat_template = True
    loaded = LoadedModel(model=None, tokenizer=tokenizer, config=config, path=path, max_model_len=context_length(config))
    loaded.vision = vision_info(family, processor, image_token_id, None if video is None else int(video))
    return loaded
