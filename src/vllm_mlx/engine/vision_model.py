"""A vision-language model (mlx-vlm) as a model of the one engine.

:class:`VisionLanguageModel` wraps an mlx-vlm model so the engine's runner drives it like a text
model: ``model(tokens, cache=...)`` returns logits, and the caches are mlx-lm's ``KVCache`` /
``BatchKVCache``, so text and vision rows share the decode batch, the batched prefill and the
prefix cache.

Positions. Qwen2-VL / Qwen2.5-VL / Qwen3-VL use multimodal rotary positions (mrope): a media run
advances the position by its grid size, not by its token count, so after an image a row's next
position is ``cache offset + rope_delta`` with a per-row delta. mlx-vlm keeps that delta as state
on the language model (one request at a time); here every forward passes explicit
``position_ids`` computed from each row's cache offset plus the row's own delta, so rows with
different images (and text rows, delta 0) decode in one batch and no state carries over between
requests.

Prefill of a prompt with media (:meth:`prefill_multimodal`) runs on the engine thread, in chunks
like a text prompt: the media items a chunk covers are encoded by the vision tower (or taken from
the vision-embedding cache, keyed by their content hash), scattered into the chunk's token
embeddings at the placeholder positions, and the chunk runs with its slice of the prompt's mrope
positions. Media inside a prefix-cache hit are not looked up at all.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from typing import Any

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import KVCache

from .multimodal import MediaItem, MultimodalPrompt

logger = logging.getLogger(__name__)

# Architectures whose vision inputs this engine drives (mrope positions, image/video placeholder
# tokens, the Qwen-VL processor), and whether their vision tower returns deepstack features.
SUPPORTED_ARCHITECTURES = {"qwen2_vl": False, "qwen2_5_vl": False, "qwen3_vl": True, "qwen3_vl_moe": True}


@dataclass
class VisionCacheStats:
    hits: int = 0
    misses: int = 0
    entries: int = 0
    bytes: int = 0
    budget_bytes: int = 0
    evictions: int = 0
    encoded_items: int = 0
    encode_seconds: float = 0.0  # vision-tower time of the misses

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0


class VisionEmbeddingCache:
    """Vision-tower outputs by media content hash, least recently used first out, within a byte budget."""

    def __init__(self, budget_bytes: int):
        self._items: OrderedDict[bytes, tuple[Any, int]] = OrderedDict()
        self.stats = VisionCacheStats(budget_bytes=budget_bytes)

    def get(self, digest: bytes) -> Any | None:
        entry = self._items.get(digest)
        if entry is None:
            self.stats.misses += 1
            return None
        self._items.move_to_end(digest)
        self.stats.hits += 1
        return entry[0]

    def put(self, digest: bytes, features: Any) -> None:
        nbytes = sum(a.nbytes for a in _arrays(features))
        if nbytes > self.stats.budget_bytes:
            return
        self._items[digest] = (features, nbytes)
        self.stats.bytes += nbytes
        while self.stats.bytes > self.stats.budget_bytes:
            _, (_, freed) = self._items.popitem(last=False)
            self.stats.bytes -= freed
            self.stats.evictions += 1
        self.stats.entries = len(self._items)

    def clear(self) -> None:
        self._items.clear()
        self.stats.bytes = self.stats.entries = 0


def _arrays(features: Any) -> list[mx.array]:
    main, deep = features
    return [main] + ([] if deep is None else list(deep))


class VisionLanguageModel:
    """The engine's view of an mlx-vlm model (see the module docstring)."""

    def __init__(self, vlm: Any, model_type: str, cache_bytes: int = 512 << 20):
        self.vlm = vlm
        self.model_type = model_type
        self.language = vlm.language_model
        self.layers = self.language.model.layers
        self.deepstack = SUPPORTED_ARCHITECTURES.get(model_type, False)
        cfg = vlm.config
        self.image_token_id = int(getattr(cfg, "image_token_id", None) or cfg.image_token_index)
        self.video_token_id = int(getattr(cfg, "video_token_id", None) or cfg.video_token_index)
        self.embeddings = VisionEmbeddingCache(cache_bytes)
        self.uses_rope_deltas = True

    def parameters(self) -> dict:
        """All weights (vision tower included), as an ``nn.Module`` reports them."""
        return self.vlm.parameters()

    # -- what the runner calls --------------------------------------------------
    def make_cache(self) -> list[KVCache]:
        return [KVCache() for _ in self.layers]

    def __call__(self, inputs: mx.array, cache: list | None = None, rope_deltas: mx.array | None = None) -> mx.array:
        """Logits for text tokens (prefill chunks, batched prefill, decode) at mrope positions
        ``cache offset + arange + rope delta`` per row."""
        positions = _positions(inputs.shape, cache, rope_deltas)
        return self.language(inputs, cache=cache, position_ids=positions).logits

    def prefill_multimodal(self, seq: Any, num_tokens: int) -> mx.array | None:
        """Write the next ``num_tokens`` prompt tokens of ``seq`` (media included) into ``seq.cache``.

        Returns the last logits once the whole prompt is in, else None (chunked like a text prompt).
        The prompt's positions and its media features are kept for the chunks of this prefill.
        """
        mm: MultimodalPrompt = seq.request.multimodal
        if seq.cache is None:
            seq.cache = self.make_cache()
        state = mm.prefill_state
        if state is None:
            ids = mx.array(seq.prompt_ids)[None]
            positions, delta = self.language.get_rope_index(ids, self._grid(mm.images), self._grid(mm.videos))
            mm.rope_delta = int(np.array(delta).reshape(-1)[0])
            state = mm.prefill_state = _PrefillState(positions, self._visual_layout(seq.prompt_ids, mm))
        start = seq.num_computed
        end = min(start + num_tokens, seq.num_prompt_tokens)
        embeds, deep, visual = self._window_embeddings(seq.prompt_ids, mm, state, start, end)
        kwargs = {} if deep is None else {"visual_pos_masks": visual, "deepstack_visual_embeds": deep}
        out = self.language(mx.array(seq.prompt_ids[start:end])[None], inputs_embeds=embeds, cache=seq.cache,
                            position_ids=state.positions[..., start:end], **kwargs)
        seq.num_computed = end
        if end < seq.num_prompt_tokens:
            mx.eval([c.state for c in seq.cache])
            return None
        mm.prefill_state = None  # the features stay in the vision-embedding cache only
        return out.logits[:, -1, :]

    def stats(self) -> dict:
        s = self.embeddings.stats
        return asdict(s) | {"hit_rate": s.hit_rate, "encode_seconds": round(s.encode_seconds, 4)}

    # -- media -------------------------------------------------------------------
    @staticmethod
    def _grid(items: list[MediaItem]) -> mx.array | None:
        return mx.array([it.grid_thw for it in items], dtype=mx.int32) if items else None

    def _features(self, item: MediaItem) -> tuple[mx.array, list[mx.array] | None]:
        """Vision-tower output for one item: from the cache, or encoded now (and cached)."""
        cached = self.embeddings.get(item.digest)
        if cached is not None:
            return cached
        start = time.perf_counter()
        tower = self.vlm.vision_tower
        pixels = mx.array(item.pixel_values).astype(tower.patch_embed.proj.weight.dtype)
        grid = mx.array([item.grid_thw], dtype=mx.int32)
        if self.deepstack:
            main, deep = tower(pixels, grid)
            features = (main, list(deep) if deep is not None else None)
        else:
            features = (tower(pixels, grid, output_hidden_states=False), None)
        mx.eval(_arrays(features))
        stats = self.embeddings.stats
        stats.encode_seconds += time.perf_counter() - start
        stats.encoded_items += 1
        if features[0].shape[0] != item.num_tokens:
            raise ValueError(f"the vision tower gave {features[0].shape[0]} features for {item.num_tokens} "
                             f"placeholder tokens")
        self.embeddings.put(item.digest, features)
        return features

    def _visual_layout(self, prompt_ids: list[int], mm: MultimodalPrompt) -> np.ndarray:
        """Prompt positions of the media placeholders, in order (item k fills the next num_tokens)."""
        flat = np.array(prompt_ids)
        where = np.nonzero((flat == self.image_token_id) | (flat == self.video_token_id))[0]
        need = sum(it.num_tokens for it in mm.items)
        if len(where) != need:
            raise ValueError(f"{len(where)} media placeholder tokens for media that need {need}")
        return where

    def _window_embeddings(self, prompt_ids: list[int], mm: MultimodalPrompt, state: _PrefillState,
                           start: int, end: int):
        """Embeddings of prompt[start:end] with the media features at their placeholder positions;
        media outside the window (e.g. inside a prefix-cache hit) are not looked up. Also the window's
        deepstack features and visual mask (Qwen3-VL)."""
        embeds = self.language.model.embed_tokens(mx.array(prompt_ids[start:end])[None])
        where = state.where
        inside = np.nonzero((where >= start) & (where < end))[0]  # indices into the visual sequence
        window_mask = np.zeros(end - start, dtype=bool)
        window_mask[where[inside] - start] = True
        if not inside.size:
            return embeds, None, mx.array(window_mask)[None]
        bounds = np.cumsum([0] + [it.num_tokens for it in mm.items])
        first = int(np.searchsorted(bounds, inside[0], side="right")) - 1
        last = int(np.searchsorted(bounds, inside[-1], side="right")) - 1
        features = [state.features(k, mm.items[k], self._features) for k in range(first, last + 1)]
        lo = int(inside[0] - bounds[first])
        rows = slice(lo, lo + inside.size)
        main = mx.concatenate([f[0] for f in features])[rows].astype(embeds.dtype)
        embeds[0, mx.array(where[inside] - start)] = main
        deep = None
        if self.deepstack and all(f[1] is not None for f in features):
            layers = len(features[0][1])
            deep = [mx.concatenate([f[1][k] for f in features])[rows].astype(embeds.dtype) for k in range(layers)]
        return embeds, deep, mx.array(window_mask)[None]


class _PrefillState:
    """One multimodal prompt's positions and media features while it is prefilled chunk by chunk."""

    def __init__(self, positions: mx.array, where: np.ndarray):
        self.positions = positions  # (3, 1, prompt length) mrope position ids
        self.where = where  # prompt positions of the media placeholders
        self._features: dict[int, Any] = {}

    def features(self, index: int, item: MediaItem, lookup) -> Any:
        if index not in self._features:  # looked up (and counted) once per prefill
            self._features[index] = lookup(item)
        return self._features[index]


def _positions(shape: tuple[int, int], cache: list | None, rope_deltas: mx.array | None) -> mx.array:
    """mrope position ids (3, B, L): each row's cache offset + arange(L) + its rope delta."""
    batch, length = shape
    offset = cache[0].offset if cache else 0
    steps = mx.arange(length)[None, :]
    if isinstance(offset, mx.array):
        base = offset.reshape(-1, 1).astype(mx.int32) + steps
    else:
        base = mx.broadcast_to(steps + int(offset), (batch, length))
    if rope_deltas is not None:
        base = base + rope_deltas.reshape(-1, 1).astype(mx.int32)
    return mx.broadcast_to(base[None], (3, batch, length))
