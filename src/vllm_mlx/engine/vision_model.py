"""A vision-language model (mlx-vlm) as a model of the one engine: :class:`VisionLanguageModel` is
driven like a text model (``model(tokens, cache=...)`` returns logits; mlx-lm's caches), so text and
vision rows share the decode batch, the batched prefill and the prefix cache.

Qwen3.5 (``qwen3_5``, ``qwen3_5_moe``) mixes Gated DeltaNet layers (a recurrent state per row)
with full-attention layers. Its cache follows the language model's own layout (mlx-vlm's
``make_cache``): a :class:`GatedDeltaStateCache` for every Gated DeltaNet layer, a ``KVCache`` for
every attention layer. The decoder is run layer by layer here (:meth:`_gated_delta_hidden`), with
the masks mlx-lm's batch caches make, so a decode batch of rows with different lengths runs as one
forward (mlx-vlm's own forward splits such batches row by row).

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

Gemma 3 and Gemma 4 (``gemma3``, ``gemma4``) have plain positions and sliding-window cache layouts;
what differs is in :mod:`.vision_gemma` (an adapter per family), the chunked prefill, the
vision-embedding cache and the prefix-cache keys here are shared.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from types import MappingProxyType
from typing import Any

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import ArraysCache, KVCache

from ..options import DEFAULTS
from .multimodal import MediaItem, MultimodalPrompt
from .vision_gemma import Gemma3Adapter, Gemma4Adapter

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class VisionFamily:
    """How the engine drives one mlx-vlm architecture (Qwen: mrope positions, image/video
    placeholder tokens, the Qwen-VL processor; ``mrope=False``: a family with its own adapter)."""

    mrope: bool = True  # multimodal rotary positions (Qwen); False: plain positions (Gemma 3)
    tower_returns_pair: bool = False  # the vision tower returns (features, deepstack features)
    deepstack: bool = False  # the deepstack features feed the language model (Qwen3-VL)
    gated_delta: bool = False  # Gated DeltaNet layers (a recurrent state) beside attention (Qwen3.5)


# Architectures (mlx-vlm model types) whose vision inputs this engine drives.
SUPPORTED_ARCHITECTURES: Mapping[str, VisionFamily] = MappingProxyType({
    "qwen2_vl": VisionFamily(),
    "qwen2_5_vl": VisionFamily(),
    "qwen3_vl": VisionFamily(tower_returns_pair=True, deepstack=True),
    "qwen3_vl_moe": VisionFamily(tower_returns_pair=True, deepstack=True),
    "qwen3_5": VisionFamily(tower_returns_pair=True, gated_delta=True),
    "qwen3_5_moe": VisionFamily(tower_returns_pair=True, gated_delta=True),
    "gemma3": VisionFamily(mrope=False),
    "gemma4": VisionFamily(mrope=False),
})
ADAPTERS = MappingProxyType({"gemma3": Gemma3Adapter, "gemma4": Gemma4Adapter})


class GatedDeltaStateCache(ArraysCache):
    """The state of one Gated DeltaNet layer (convolution window, recurrent state).

    It is mlx-lm's ``ArraysCache`` -- what the engine merges into a batch, filters, extracts and
    snapshots into the prefix cache (``from_state(state)``) -- plus the two update methods that
    mlx-vlm's Qwen3.5 layers call on their cache (without speculative-decoding history).
    """

    def update_window(self, index: int, source: mx.array, width: int, *, lengths: mx.array | None = None) -> mx.array:
        """Keep the last ``width`` steps of ``source`` (the convolution's input window)."""
        length = source.shape[1] - width
        if lengths is None:
            state = mx.contiguous(source[:, length:])
        else:  # right-padded rows: each row's window ends at its own length
            positions = mx.clip(lengths, 0, length)[:, None] + mx.arange(width)
            positions = positions.reshape(*positions.shape, *([1] * (source.ndim - 2)))
            state = mx.take_along_axis(source, positions, axis=1)
        self.cache[index] = state
        return state

    def update_recurrent(self, index: int, length: int, update) -> tuple[mx.array, mx.array]:
        """Run ``update(state, None) -> (output, new state, ...)`` and keep the new state."""
        output, state = update(self.cache[index], None)[:2]
        self.cache[index] = state
        return output, state

    def extract(self, idx: int) -> GatedDeltaStateCache:
        cache = type(self)(len(self.cache))
        cache.cache = [None if c is None else c[idx : idx + 1] for c in self.cache]
        return cache


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

    def __init__(self, vlm: Any, model_type: str, cache_bytes: int = DEFAULTS.vision_cache_mb << 20):
        if model_type not in SUPPORTED_ARCHITECTURES:  # the loader says why, with what to do
            raise ValueError(f"vision-language architecture {model_type!r} is not driven by this engine")
        self.vlm = vlm
        self.model_type = model_type
        self.family = SUPPORTED_ARCHITECTURES[model_type]
        self.language = vlm.language_model
        self.layers = self.language.model.layers
        self.deepstack = self.family.deepstack
        # the layer whose cache offset counts the row's tokens (the first attention layer), and for
        # Qwen3.5 the first Gated DeltaNet layer (whose cache gives the recurrent layers' mask)
        linear = [bool(getattr(layer, "is_linear", False)) for layer in self.layers]
        self._offset_layer = linear.index(False) if False in linear else 0
        self._state_layer = linear.index(True) if True in linear else None
        cfg = vlm.config
        self.adapter = ADAPTERS[model_type](vlm) if model_type in ADAPTERS else None
        self.image_token_id = int(getattr(cfg, "image_token_id", None) or cfg.image_token_index)
        video = getattr(cfg, "video_token_id", None) or getattr(cfg, "video_token_index", None)
        self.video_token_id = None if video is None else int(video)
        self.embeddings = VisionEmbeddingCache(cache_bytes)
        self.uses_rope_deltas = self.family.mrope
        self.head_feed: Any = None  # --speculative mtp: feeds the MTP head's cache entries (mtp.HeadFeed)

    def parameters(self) -> dict:
        """All weights (vision tower included), as an ``nn.Module`` reports them."""
        return self.vlm.parameters()

    # -- what the runner calls --------------------------------------------------
    def make_cache(self) -> list[Any]:
        """The language model's cache layout: KVCache per attention layer, and for Qwen3.5 a
        GatedDeltaStateCache per Gated DeltaNet layer (as mlx-vlm's ``make_cache`` lays it out);
        for an adapter's family (Gemma) its own layout."""
        if self.adapter is not None:
            return self.adapter.make_cache()
        if self.family.gated_delta:
            return ([GatedDeltaStateCache(2) if layer.is_linear else KVCache() for layer in self.layers]
                    + ([] if self.head_feed is None else self.head_feed.make_cache()))  # the MTP head's two
        return [KVCache() for _ in self.layers]

    def __call__(self, inputs: mx.array, cache: list | None = None, rope_deltas: mx.array | None = None) -> mx.array:
        """Logits for text tokens (prefill chunks, batched prefill, decode) at mrope positions
        ``cache offset + arange + rope delta`` per row (plain positions for an adapter's family)."""
        if self.adapter is not None:
            return self.adapter.logits(inputs, cache)
        positions = _positions(inputs.shape, cache[self._offset_layer] if cache else None, rope_deltas)
        return self._logits(inputs, cache, positions)

    def _logits(self, inputs: mx.array, cache: list | None, positions: mx.array, **kwargs) -> mx.array:
        if self.family.gated_delta:
            return self.output(self._gated_delta_hidden(inputs, cache, positions, **kwargs))
        return self.language(inputs, cache=cache, position_ids=positions, **kwargs).logits

    def hidden(self, inputs: mx.array, cache: list | None = None, rope_deltas: mx.array | None = None) -> mx.array:
        """Qwen3.5's final hidden states (what :meth:`output` turns into logits) for text tokens, as
        :meth:`__call__` places them: what an MTP head drafts from."""
        if not self.family.gated_delta:
            raise ValueError(f"{self.model_type} has no MTP head")
        positions = _positions(inputs.shape, cache[self._offset_layer] if cache else None, rope_deltas)
        return self._gated_delta_hidden(inputs, cache, positions)

    def output(self, hidden: mx.array) -> mx.array:
        """The language model's output head: final hidden states to logits."""
        if self.language.args.tie_word_embeddings:
            return self.language.model.embed_tokens.as_linear(hidden)
        return self.language.lm_head(hidden)

    def _gated_delta_hidden(self, inputs: mx.array, cache: list | None, positions: mx.array,
                            inputs_embeds: mx.array | None = None) -> mx.array:
        """Qwen3.5's decoder layer by layer (the plain path of mlx-vlm's forward): one attention
        mask from the attention layers' cache (causal, plus left padding in a batch) and one for
        the Gated DeltaNet layers (None unless their cache holds padding)."""
        from mlx_vlm.models.base import create_attention_mask, create_ssm_mask

        text = self.language.model
        h = text.embed_tokens(inputs) if inputs_embeds is None else inputs_embeds
        cache = cache or [None] * len(self.layers)
        attention_mask = create_attention_mask(h, cache[self._offset_layer])
        state_mask = create_ssm_mask(h, cache[self._state_layer])
        rotary = self.layers[self._offset_layer].self_attn.rotary_emb
        position_embeddings = None if rotary.fused_apply else rotary(h, positions)
        for layer, layer_cache in zip(self.layers, cache):
            h = layer(h, mask=state_mask if layer.is_linear else attention_mask, cache=layer_cache,
                      position_ids=positions, position_embeddings=position_embeddings)
        h = text.norm(h)
        if len(cache) > len(self.layers):  # the MTP head's entries (their own positions: a text token's)
            self.head_feed(h, inputs, cache[len(self.layers):])
        return h

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
            positions = None
            if self.family.mrope:
                ids = mx.array(seq.prompt_ids)[None]
                positions, delta = self.language.get_rope_index(ids, self._grid(mm.images), self._grid(mm.videos))
                mm.rope_delta = int(np.array(delta).reshape(-1)[0])
            state = mm.prefill_state = _PrefillState(positions, self._visual_layout(seq.prompt_ids, mm))
        start = seq.num_computed
        end = min(start + num_tokens, seq.num_prompt_tokens)
        if self.adapter is not None and self.adapter.whole_images:
            end = _whole_runs(state.where, start, end)
        embeds, deep, visual = self._window_embeddings(seq.prompt_ids, mm, state, start, end)
        ids = mx.array(seq.prompt_ids[start:end])[None]
        if self.adapter is not None:
            logits = self.adapter.prefill_logits(ids, seq.cache, embeds, _run_ids(state.where, start, end))
        else:
            kwargs = {} if deep is None else {"visual_pos_masks": visual, "deepstack_visual_embeds": deep}
            logits = self._logits(ids, seq.cache, state.positions[..., start:end], inputs_embeds=embeds, **kwargs)
        seq.num_computed = end
        if end < seq.num_prompt_tokens:
            mx.eval([c.state for c in seq.cache])
            return None
        mm.prefill_state = None  # the features stay in the vision-embedding cache only
        return logits[:, -1, :]

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
        if self.adapter is not None:
            features = (self.adapter.encode(item.pixel_values), None)
        elif self.family.tower_returns_pair:  # Qwen3-VL's tower (Qwen3.5 has no deepstack layers)
            main, deep = tower(*self._tower_inputs(item))
            features = (main, list(deep) if self.deepstack and deep is not None else None)
        else:
            features = (tower(*self._tower_inputs(item), output_hidden_states=False), None)
        mx.eval(_arrays(features))
        stats = self.embeddings.stats
        stats.encode_seconds += time.perf_counter() - start
        stats.encoded_items += 1
        if features[0].shape[0] != item.num_tokens:
            raise ValueError(f"the vision tower gave {features[0].shape[0]} features for {item.num_tokens} "
                             f"placeholder tokens")
        self.embeddings.put(item.digest, features)
        return features

    def _tower_inputs(self, item: MediaItem) -> tuple[mx.array, mx.array]:
        """A Qwen vision tower's inputs: the patches (in the tower's dtype) and their grid."""
        pixels = mx.array(item.pixel_values).astype(self.vlm.vision_tower.patch_embed.proj.weight.dtype)
        return pixels, mx.array([item.grid_thw], dtype=mx.int32)

    def _visual_layout(self, prompt_ids: list[int], mm: MultimodalPrompt) -> np.ndarray:
        """Prompt positions of the media placeholders, in order (item k fills the next num_tokens)."""
        flat = np.array(prompt_ids)
        where = np.nonzero((flat == self.image_token_id) | (flat == (self.video_token_id or -1)))[0]
        need = sum(it.num_tokens for it in mm.items)
        if len(where) != need:
            raise ValueError(f"{len(where)} media placeholder tokens for media that need {need}")
        return where

    def _window_embeddings(self, prompt_ids: list[int], mm: MultimodalPrompt, state: _PrefillState,
                           start: int, end: int):
        """Embeddings of prompt[start:end] with the media features at their placeholder positions;
        media outside the window (e.g. inside a prefix-cache hit) are not looked up. Also the window's
        deepstack features and visual mask (Qwen3-VL)."""
        ids = mx.array(prompt_ids[start:end])[None]
        embeds = self.adapter.embed(ids) if self.adapter is not None else self.language.model.embed_tokens(ids)
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

    def __init__(self, positions: mx.array | None, where: np.ndarray):
        self.positions = positions  # (3, 1, prompt length) mrope position ids (None: plain positions)
        self.where = where  # prompt positions of the media placeholders
        self._features: dict[int, Any] = {}

    def features(self, index: int, item: MediaItem, lookup) -> Any:
        if index not in self._features:  # looked up (and counted) once per prefill
            self._features[index] = lookup(item)
        return self._features[index]


def _runs(where: np.ndarray) -> list[tuple[int, int]]:
    """The placeholder runs [start, end) of sorted placeholder positions."""
    if not where.size:
        return []
    breaks = np.nonzero(np.diff(where) != 1)[0]
    starts = np.concatenate([where[:1], where[breaks + 1]])
    ends = np.concatenate([where[breaks], where[-1:]]) + 1
    return list(zip(starts.tolist(), ends.tolist()))


def _whole_runs(where: np.ndarray, start: int, end: int) -> int:
    """``end`` moved so that no placeholder run is split: back to the start of a run it would cut,
    or, when the window starts at (or in) that run, on to its end."""
    for lo, hi in _runs(where):
        if lo < end < hi:
            return lo if start < lo else hi
    return end


def _run_ids(where: np.ndarray, start: int, end: int) -> np.ndarray:
    """Per position of prompt[start:end]: the index of its placeholder run, or -1 for text."""
    ids = np.full(end - start, -1, dtype=np.int32)
    for k, (lo, hi) in enumerate(_runs(where)):
        if lo < end and hi > start:
            ids[max(lo, start) - start:min(hi, end) - start] = k
    return ids


def _positions(shape: tuple[int, int], offset_cache: Any, rope_deltas: mx.array | None) -> mx.array:
    """mrope position ids (3, B, L): each row's cache offset (of ``offset_cache``, an attention
    layer's cache) + arange(L) + its rope delta."""
    batch, length = shape
    offset = offset_cache.offset if offset_cache is not None else 0
    steps = mx.arange(length)[None, :]
    if isinstance(offset, mx.array):
        base = offset.reshape(-1, 1).astype(mx.int32) + steps
    else:
        base = mx.broadcast_to(steps + int(offset), (batch, length))
    if rope_deltas is not None:
        base = base + rope_deltas.reshape(-1, 1).astype(mx.int32)
    return mx.broadcast_to(base[None], (3, batch, length))
