"""Helpers of the vision tests: mlx-vlm's own single-request greedy generation as the reference."""

from __future__ import annotations

import functools
import io
from pathlib import Path


@functools.lru_cache(maxsize=4)
def _load(path: str):
    from mlx_vlm.utils import load

    return load(path)


def reference_greedy(path: Path, content: list[dict], images: list[bytes], max_tokens: int,
                     template_kwargs: dict | None = None) -> str:
    """Greedy text of mlx-vlm's own generate loop (one request, its own stateful positions) for a
    user message with ``content`` parts ({"type": "text"/"image"}); special tokens dropped.
    ``template_kwargs``: extra chat-template variables (e.g. ``enable_thinking``)."""
    return greedy_text(*_load(str(path)), content, images, max_tokens, template_kwargs)


def greedy_text(model, processor, content: list[dict], images: list[bytes], max_tokens: int,
                template_kwargs: dict | None = None) -> str:
    """:func:`reference_greedy` with a model already loaded (e.g. one whose weights a test changed)."""
    from mlx_vlm.generate.ar import generate_step
    from PIL import Image

    prompt = processor.tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                                     add_generation_prompt=True, tokenize=False,
                                                     **(template_kwargs or {}))
    pil = [Image.open(io.BytesIO(b)).convert("RGB") for b in images]
    inputs = processor(text=[prompt], images=pil or None)
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "pixel_values", "attention_mask")}
    tokens = [int(tok) for tok, _ in generate_step(inputs["input_ids"], model, inputs.get("pixel_values"),
                                                   inputs.get("attention_mask"), max_tokens=max_tokens,
                                                   temperature=0.0, **extra)]
    return processor.tokenizer.decode(tokens, skip_special_tokens=True)


def openai_content(content: list[dict], urls: list[str]) -> list[dict]:
    """The same content as OpenAI chat parts: each {"type": "image"} takes the next URL."""
    it = iter(urls)
    return [{"type": "image_url", "image_url": {"url": next(it)}} if p["type"] == "image" else p for p in content]


def reference_greedy_video(path: Path, content: list[dict], frames: list, fps: float, max_tokens: int) -> str:
    """Like :func:`reference_greedy` for one video given as frames (sampled at ``fps``)."""
    from mlx_vlm.generate.ar import generate_step

    model, processor = _load(str(path))
    prompt = processor.tokenizer.apply_chat_template([{"role": "user", "content": content}],
                                                     add_generation_prompt=True, tokenize=False)
    kwargs = {"fps": fps} if "fps" in __import__("inspect").signature(processor.__call__).parameters else {}
    inputs = processor(text=[prompt], videos=[list(frames)], **kwargs)
    extra = {k: v for k, v in inputs.items() if k not in ("input_ids", "pixel_values", "attention_mask")}
    tokens = [int(tok) for tok, _ in generate_step(inputs["input_ids"], model, None, inputs.get("attention_mask"),
                                                   max_tokens=max_tokens, temperature=0.0, **extra)]
    return processor.tokenizer.decode(tokens, skip_special_tokens=True)
