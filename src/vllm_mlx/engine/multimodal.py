"""What a vision request carries into the engine: processed media and a cache key for its prompt.

Everything here is numpy and plain Python, made on the API side; the engine thread turns the pixel
arrays into MLX arrays when it prefills the request (MLX streams are per thread).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class MediaItem:
    """One image or video of a prompt, processed for the vision tower."""

    kind: str  # "image" | "video"
    pixel_values: np.ndarray  # Qwen: (patches, channels * temporal_patch * patch * patch); Gemma 3: (1, 3, H, W)
    grid_thw: tuple[int, int, int]  # patch grid (time, height, width); Gemma 3: (1, H, W) pixels
    num_tokens: int  # placeholder tokens it fills in the prompt
    digest: bytes  # content hash of the processed pixels and grid: the vision-embedding cache key

    @staticmethod
    def make(kind: str, pixel_values: np.ndarray, grid_thw, merge_size: int,
             num_tokens: int | None = None) -> MediaItem:
        """``num_tokens``: the placeholder tokens, when the family's count is fixed (Gemma 3's soft
        tokens per image) rather than the grid's patches divided by ``merge_size**2``."""
        pixels = np.ascontiguousarray(pixel_values, dtype=np.float32)
        grid = tuple(int(x) for x in grid_thw)
        h = hashlib.blake2b(digest_size=16)
        h.update(kind.encode() + np.asarray(grid, dtype=np.int64).tobytes())
        h.update(pixels.tobytes())
        if num_tokens is None:
            num_tokens = grid[0] * grid[1] * grid[2] // merge_size**2
        return MediaItem(kind, pixels, grid, num_tokens, h.digest())


@dataclass
class MultimodalPrompt:
    """The media of one request in prompt order, and the prompt's prefix-cache key.

    ``key_ids`` equals the prompt's token ids except inside each media item's placeholder run,
    where the ids are replaced by values derived from the item's content hash. Placeholder tokens
    are identical for every image, so keys/values cached under the plain token ids would be reused
    for a different image; with these keys only the same picture (and the same text) hits.
    """

    items: list[MediaItem]
    key_ids: list[int]
    rope_delta: int = 0  # set by the engine at prefill: decode positions are cache offset + delta
    prefill_state: Any = None  # engine-thread state while the prompt is prefilled in chunks

    @staticmethod
    def build(items: list[MediaItem], prompt_ids: list[int], media_token_ids: dict[str, int]) -> MultimodalPrompt:
        """Check that the prompt's placeholder runs match the items, and derive the cache key."""
        placeholder = set(media_token_ids.values())
        key = list(prompt_ids)
        runs = _placeholder_runs(prompt_ids, placeholder)
        # A video may render as several runs (one per frame group, e.g. Qwen3-VL timestamps).
        expected = sum(it.num_tokens for it in items)
        found = sum(end - start for start, end in runs)
        if found != expected:
            raise ValueError(f"the prompt has {found} media placeholder tokens for media that need {expected}")
        positions = [p for start, end in runs for p in range(start, end)]
        at = 0
        for item in items:
            words = [int.from_bytes(item.digest[i:i + 4], "little") & 0x7FFFFFFF for i in range(0, 16, 4)]
            for j in range(item.num_tokens):
                key[positions[at + j]] = -1 - words[j % 4]  # negative: never a real token id
            at += item.num_tokens
        return MultimodalPrompt(items, key)

    @property
    def images(self) -> list[MediaItem]:
        return [it for it in self.items if it.kind == "image"]

    @property
    def videos(self) -> list[MediaItem]:
        return [it for it in self.items if it.kind == "video"]


def _placeholder_runs(ids: list[int], placeholder: set[int]) -> list[tuple[int, int]]:
    runs, start = [], None
    for i, t in enumerate(ids):
        if t in placeholder and start is None:
            start = i
        elif t not in placeholder and start is not None:
            runs.append((start, i))
            start = None
    if start is not None:
        runs.append((start, len(ids)))
    return runs
