"""Images and video in chat requests: content parts -> template parts, media -> processed inputs.

Every API (chat completions, Anthropic Messages, Responses) hands the chat pipeline OpenAI-style
content parts (``image_url``, ``video_url``); here they become the chat template's ``image`` /
``video`` parts and :class:`MediaRef` entries. After rendering, :meth:`VisionInputs.prepare` fetches
each URL through the guarded fetcher, decodes it (Pillow / PyAV), runs the model's image/video
processor (numpy), expands each placeholder to the number of tokens its grid needs and returns the
prompt ids with a :class:`MultimodalPrompt` for the engine. No MLX array is made here.

Gemma 3's template marks an image with ``<start_of_image>``; like mlx-vlm's ``Gemma3Processor`` it
becomes ``\n\n<start_of_image>`` + ``mm_tokens_per_image`` soft tokens + ``<end_of_image>\n\n``,
and each image is one view at the processor's size (pan-and-scan crops are not made). Gemma 4's
template writes the soft token ``<|image|>`` once; like ``Gemma4Processor`` it becomes ``<|image>``
+ as many soft tokens as the resized image needs + ``<image|>``.
"""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ..engine.multimodal import MediaItem, MultimodalPrompt
from ..media.decode import MediaDecodeError, MediaLimits, PixelBudget, decode_image, decode_video
from ..media.fetch import FetchPolicy, MediaFetchError, fetch_media
from .errors import APIError

IMAGE_PART_TYPES = ("image_url", "input_image", "image")
VIDEO_PART_TYPES = ("video_url", "input_video", "video")
TEXT_ONLY_MESSAGE = "this model is a text-only model and does not accept images or video"


@dataclass(frozen=True)
class MediaRef:
    kind: str  # "image" | "video"
    url: str
    where: str  # the request field it came from, for errors
    fps: float | None = None
    max_frames: int | None = None


def _url_of(part: dict, key: str, where: str) -> tuple[str, dict]:
    value = part.get(key)
    if isinstance(value, dict):
        url = value.get("url")
        options = value
    else:
        url, options = value, {}
    if not isinstance(url, str) or not url:
        raise APIError(400, f"{where}: a {part.get('type')} part needs a URL (a data: URL or http(s) URL)", param=where)
    return url, options


def media_ref(part: dict, where: str) -> MediaRef | None:
    """The media a content part names (None for a non-media part)."""
    kind = part.get("type")
    if kind in IMAGE_PART_TYPES:
        if kind == "input_image" and part.get("file_id") and not part.get("image_url"):
            raise APIError(400, f"{where}: input_image by file_id is not supported; send image_url", param=where)
        url, _ = _url_of(part, "image_url" if "image_url" in part else "url", where)
        return MediaRef("image", url, where)
    if kind in VIDEO_PART_TYPES:
        url, options = _url_of(part, "video_url" if "video_url" in part else "url", where)
        fps, frames = options.get("fps", part.get("fps")), options.get("max_frames", part.get("max_frames"))
        if fps is not None and (not isinstance(fps, (int, float)) or not 0 < fps <= 30):
            raise APIError(400, f"{where}: fps must be a number in (0, 30]", param=where)
        if frames is not None and (not isinstance(frames, int) or frames < 1):
            raise APIError(400, f"{where}: max_frames must be a positive integer", param=where)
        return MediaRef("video", url, where, fps, frames)
    return None


def template_parts(content: list, media: list[MediaRef] | None, where: str) -> list[dict] | str:
    """Chat-template parts of a content list; media parts are recorded in ``media``.

    ``media`` None means a text-only model: any media part is a 400 that says so.
    """
    parts: list[dict] = []
    texts_only = True
    for j, part in enumerate(content):
        part = part if isinstance(part, dict) else part.model_dump(exclude_none=True)
        kind = part.get("type")
        here = f"{where}.{j}"
        if kind in ("text", "input_text") and part.get("text") is not None:
            parts.append({"type": "text", "text": part["text"]})
            continue
        ref = media_ref(part, here)
        if ref is None:
            raise APIError(400, f"content part type '{kind}' is not supported", param=here)
        if media is None:
            raise APIError(400, f"{here}: {TEXT_ONLY_MESSAGE}", param=here)
        media.append(ref)
        parts.append({"type": ref.kind})
        texts_only = False
    if texts_only:
        return "".join(p["text"] for p in parts)
    return parts


class VisionInputs:
    """Media preparation for one vision-language model (see the module docstring)."""

    def __init__(self, info: Any, tokenizer: Any, fetch_policy: FetchPolicy, limits: MediaLimits):
        self.info = info
        self.tokenizer = tokenizer
        self.fetch_policy = fetch_policy
        self.limits = limits
        self._lock = threading.Lock()  # processors are not guaranteed thread-safe

    async def prepare(self, prompt_text: str, refs: list[MediaRef],
                      encode: Callable[[str], list[int]] | None = None) -> tuple[list[int], MultimodalPrompt]:
        if len(refs) > self.limits.max_images:
            raise APIError(400, f"{len(refs)} images/videos in one request; at most {self.limits.max_images} "
                           f"are accepted", param="messages")
        for ref in refs:
            if ref.kind == "video" and not self.info.supports_video:
                raise APIError(400, f"{ref.where}: this model does not accept video", param=ref.where)
        blobs = await asyncio.gather(*(self._fetch(ref) for ref in refs))
        return await asyncio.to_thread(self._process, prompt_text, refs, blobs, encode)

    async def _fetch(self, ref: MediaRef) -> bytes:
        try:
            return (await fetch_media(ref.url, self.fetch_policy)).data
        except MediaFetchError as exc:
            raise APIError(exc.status, f"{ref.where}: {exc.message}", param=ref.where) from None

    # -- on a worker thread ------------------------------------------------------
    def _process(self, text: str, refs: list[MediaRef], blobs: list[bytes],
                 encode: Callable[[str], list[int]] | None = None) -> tuple[list[int], MultimodalPrompt]:
        info = self.info
        items_by_kind: dict[str, list] = {"image": [], "video": []}
        budget = PixelBudget(self.limits)  # all images and frames of this request together
        with self._lock:
            for ref, data in zip(refs, blobs):
                try:
                    if ref.kind == "image":
                        items_by_kind["image"].append(self._image(decode_image(data, self.limits, budget)))
                    else:
                        video = decode_video(data, self.limits, ref.fps, ref.max_frames, budget)
                        items_by_kind["video"].append(self._video(video))
                except MediaDecodeError as exc:
                    raise APIError(400, f"{ref.where}: {exc}", param=ref.where) from None
        expanded, ordered = self._expand(text, items_by_kind)
        ids = encode(expanded) if encode is not None else self.tokenizer.encode(expanded, add_special_tokens=False)
        try:
            mm = MultimodalPrompt.build([item for item, _ in ordered], ids, info.token_ids)
        except ValueError as exc:
            raise APIError(400, f"the chat template did not place the media as expected: {exc}",
                           param="messages") from None
        return ids, mm

    def _image(self, image) -> MediaItem:
        if self.info.image_marker:  # Gemma: one resized view (1, 3, H, W)
            proc = self.info.processor.image_processor
            if self.info.image_tokens:  # Gemma 3: a fixed number of soft tokens
                out, tokens = proc(images=[image], do_pan_and_scan=False), self.info.image_tokens
            else:  # Gemma 4: the aspect ratio kept, the soft tokens counted by the processor
                out, counts = proc([image])
                tokens = int(counts[0])
            pixels = np.stack([np.asarray(p) for p in out["pixel_values"]])
            return MediaItem.make("image", pixels, (1, *pixels.shape[-2:]), 1, num_tokens=tokens)
        out = self.info.processor.image_processor(images=[image])
        return MediaItem.make("image", out["pixel_values"], out["image_grid_thw"][0], self.info.merge_size)

    def _video(self, video) -> tuple[MediaItem, float]:
        proc = self.info.processor.video_processor
        frames = list(video.frames)
        tps = int(getattr(proc, "temporal_patch_size", 2))
        frames += frames[-1:] * (-len(frames) % tps)  # whole temporal patches
        out = proc(videos=[frames])
        item = MediaItem.make("video", out["pixel_values_videos"], out["video_grid_thw"][0], self.info.merge_size)
        return item, video.sample_fps

    def _expand(self, text: str, items: dict[str, list]) -> tuple[str, list]:
        """Replace each placeholder with as many tokens as its item fills (prompt order kept)."""
        info = self.info
        tokens = {"image": info.image_marker or info.image_token, "video": info.video_token}
        pieces, ordered, at, used = [], [], 0, {"image": 0, "video": 0}
        while True:
            hits = [(text.find(tok, at), kind) for kind, tok in tokens.items() if tok]
            hits = [(pos, kind) for pos, kind in hits if pos >= 0]
            if not hits:
                break
            pos, kind = min(hits)
            if used[kind] >= len(items[kind]):
                raise APIError(400, f"the prompt has more {kind} placeholders than {kind}s given", param="messages")
            entry = items[kind][used[kind]]
            used[kind] += 1
            item = entry if kind == "image" else entry[0]
            pieces.append(text[at:pos])
            pieces.append(self._placeholder(kind, entry, text, pos, pieces))
            ordered.append((item, kind))
            at = pos + len(tokens[kind])
        pieces.append(text[at:])
        for kind in ("image", "video"):
            if used[kind] != len(items[kind]):
                raise APIError(400, f"the chat template placed {used[kind]} of {len(items[kind])} {kind}s",
                               param="messages")
        return "".join(pieces), ordered

    def _placeholder(self, kind: str, entry, text: str, pos: int, pieces: list[str]) -> str:
        info = self.info
        if kind == "image":
            return info.image_wrap[0] + info.image_token * entry.num_tokens + info.image_wrap[1]
        item, sample_fps = entry
        t, h, w = item.grid_thw
        per_frame = h * w // info.merge_size**2
        if info.model_type.startswith("qwen3"):
            # Qwen3-VL: one "<t seconds>" marker and vision block per temporal group. The template's
            # surrounding vision_start/vision_end belong to the first/last block.
            start, end = info.vision_start, info.vision_end
            if not pieces[-1].endswith(start) or not text.startswith(end, pos + len(info.video_token)):
                raise APIError(400, "the chat template did not wrap the video in vision markers", param="messages")
            pieces[-1] = pieces[-1][: -len(start)]
            tps = int(getattr(info.processor.video_processor, "temporal_patch_size", 2))
            blocks = [f"<{(g * tps + (tps - 1) / 2) / sample_fps:.1f} seconds>{start}"
                      f"{info.video_token * per_frame}{end}" for g in range(t)]
            return "".join(blocks)[: -len(end)]
        return info.video_token * (t * per_frame)
