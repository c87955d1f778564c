"""The attention cache of the decode batch and of a draft model's batch: mlx-lm's ``BatchKVCache``
that drops a row's newest positions in place.

After a verify step the rows keep different numbers of their positions (each accepts its own number
of proposals). Every row's positions share the batch cache's columns, so a row that drops more than
the others cannot simply end earlier: mlx-lm's mask sees a row as its columns from its left padding
to the batch's newest. Moving that row right by the difference (what mlx-lm does to right-padded
prompts) copies the row's whole cache -- at long contexts more memory traffic than the verify step's
forward. Here the dropped positions stay where they are and become *holes*: masked out of every later
step's attention, not counted in the row's position (``offset``, which RoPE reads), cut out when a row
is copied out (:meth:`DecodeKVCache.extract`), and squeezed out of the whole batch once they would
cost more attention than a copy (:meth:`DecodeKVCache.compact`).
"""

from __future__ import annotations

import mlx.core as mx
import numpy as np
from mlx_lm.models.cache import BatchKVCache, KVCache

from .cache_layout import leaf_caches

COMPACT_HOLES = 64  # holes a row may gather before the batch is compacted (or an eighth of its columns)


def as_decode_caches(caches: list) -> list:
    """A batch's per-layer caches (the decode batch's, a draft model's), mlx-lm's ``BatchKVCache`` ones
    made :class:`DecodeKVCache` (the same objects and state), a layer's ``CacheList`` (Falcon-H1) in its
    parts."""
    for c in leaf_caches(caches):
        if type(c) is BatchKVCache:
            c.__class__ = DecodeKVCache
    return caches


class DecodeKVCache(BatchKVCache):
    """mlx-lm's batch KV cache with holes (module docstring), and without the mask of a one-row
    batch's one-token step: a lone row without holes has no left padding (it is merged alone, or
    filtered down to itself, which drops its padding), so that step attends to every cached position,
    and the attention takes the unmasked path as mlx-lm's single-stream cache does."""

    holes = None  # (B, W <= _idx) bool, True where a row's position was dropped in place; None: none
    hole_counts: list[int] | None = None  # per row, how many (host ints, kept with ``holes``)

    def make_mask(self, N: int, return_array: bool = False, **kwargs):
        if self.holes is None:
            if N == 1 and not return_array and self.keys is not None and self.keys.shape[0] == 1:
                return None
            return super().make_mask(N, return_array=return_array, **kwargs)
        mask = super().make_mask(N, return_array=True, **kwargs)  # (B, 1, N, _idx + N)
        return mask & ~self.hole_mask(mask.shape[-1])[:, None, None, :]

    def hole_mask(self, width: int) -> mx.array:
        """The holes over the first ``width`` columns (B, width)."""
        have = self.holes.shape[1]
        return self.holes[:, :width] if have >= width else mx.pad(self.holes, [(0, 0), (0, width - have)])

    def drop_in_place(self, rest: list[int], counts: mx.array) -> None:
        """Row i drops its newest ``rest[i]`` positions (``counts``: the same as an array, made once for
        every layer's cache): they become holes."""
        r, end = max(rest), self._idx
        if r == 0:
            return
        holes = self.hole_mask(end) if self.holes is not None else mx.zeros((len(rest), end), dtype=mx.bool_)
        new = mx.arange(end - r, end)[None] >= (end - counts)[:, None]
        self.holes = mx.concatenate([holes[:, :end - r], holes[:, end - r:] | new], axis=1)
        self.hole_counts = [h + x for h, x in zip(self.hole_counts or [0] * len(rest), rest)]
        self.offset = self.offset - counts
        if max(self.hole_counts) >= max(COMPACT_HOLES, end // 8):
            self.compact()

    def compact(self) -> None:
        """Squeeze the holes out: each row's kept positions, in order, right-aligned at the newest column."""
        if self.holes is None:
            return
        end = self._idx
        kept = ~np.array(self.hole_mask(end))
        kept &= np.arange(end)[None] >= np.array(self.left_padding)[:, None]
        counts = kept.sum(axis=1)
        width = int(counts.max())
        order = np.argsort(~kept, axis=1, kind="stable")[:, :width]  # each row's kept columns first, in order
        # right-align: row i's kept columns land in its last counts[i] places; its left padding repeats one
        shift = width - counts
        index = np.take_along_axis(order, np.maximum(np.arange(width)[None] - shift[:, None], 0), axis=1)
        index = mx.array(index.astype(np.int32))[:, None, :, None]
        self.keys = mx.take_along_axis(self.keys[..., :end, :], index, axis=2)
        self.values = mx.take_along_axis(self.values[..., :end, :], index, axis=2)
        self.left_padding = mx.array(shift.astype(np.int32))
        self._idx = width
        self.holes, self.hole_counts = None, None

    def trim(self, n: int) -> int:
        """Each row drops its newest ``n`` positions. The engine trims only columns of its newest steps,
        which hold no holes; trimming further first squeezes the holes out (each row's newest positions
        are its last columns again)."""
        if self.holes is not None and self._idx - n < self.holes.shape[1]:
            self.compact()
        return super().trim(n)

    def filter(self, batch_indices) -> None:
        holes, counts, end = self.holes, self.hole_counts, self._idx
        if holes is not None:
            holes, counts = holes[batch_indices], [counts[i] for i in np.array(batch_indices).tolist()]
        super().filter(batch_indices)  # cuts the left padding every row has: the first end - _idx columns
        self.holes, self.hole_counts = (holes[:, end - self._idx:], counts) if holes is not None and any(counts) \
            else (None, None)
        if self.holes is not None and len(counts) == 1:
            self.compact()  # a lone row attends unmasked again

    def extend(self, other) -> None:
        mine, theirs = self.holes, getattr(other, "holes", None)
        rows = [(mine, self.hole_counts, self._idx, self.offset.shape[0]),
                (theirs, getattr(other, "hole_counts", None), other._idx, other.offset.shape[0])]
        super().extend(other)
        if mine is None and theirs is None:
            return
        end, parts, counts = self._idx, [], []
        for holes, n, idx, b in rows:  # each side's columns moved right by end - idx
            if holes is None:
                parts.append(mx.zeros((b, end), dtype=mx.bool_))
                counts += [0] * b
            else:
                parts.append(mx.pad(holes, [(0, 0), (end - idx, idx - holes.shape[1])]))
                counts += n
        self.holes, self.hole_counts = mx.concatenate(parts), counts

    def extract(self, idx: int) -> KVCache:
        if self.holes is None or not self.hole_counts[idx]:
            return super().extract(idx)
        start, end = int(self.left_padding[idx].item()), self._idx
        columns = mx.array(start + np.flatnonzero(~np.array(self.hole_mask(end)[idx, start:])).astype(np.int32))
        cache = KVCache()
        cache.keys = mx.contiguous(self.keys[idx:idx + 1, :, columns])
        cache.values = mx.contiguous(self.values[idx:idx + 1, :, columns])
        cache.offset = cache.keys.shape[2]
        return cache
