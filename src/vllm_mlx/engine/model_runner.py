"""Runs the model: per-sequence prefill chunks, batched prefill of whole prompts, batched decode.

Each sequence is prefilled into a cache of its own (from ``make_prompt_cache``),
chunk by chunk, or several whole prompts of similar length share one
left-padded forward. Finished prompts join the running decode batch through
mlx-lm's public batch-cache operations (``merge``/``extend``; rows leave with
``filter``), so every cache type that implements them works.

Decoding is pipelined: the per-row *pending* arrays (next input token, PRNG
key, the sampled token's logprobs, penalty statistics) stay on the device,
aligned with the rows. A step feeds the pending tokens to the model and
replaces them with the next sample before the previous ones are read back, so
Python work on step t overlaps the computation of step t+1.

In deterministic mode every row keeps its own cache and is run at batch size 1,
so a request's numbers never depend on which other requests share the step.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import (ArraysCache, BatchKVCache, BatchRotatingKVCache, KVCache, dynamic_roll,
                                 make_prompt_cache)

from .cache_layout import leaf_caches
from .decode_cache import DecodeKVCache, as_decode_caches
from .rows import RowArrays
from .sequence import Sequence


class ModelRunner:
    # verify forwards may ask recurrent layers for each position's state (rollback.take_kept)
    keeps_positions = True

    def __init__(self, model: nn.Module, deterministic: bool = False):
        self.model = model
        self.deterministic = deterministic
        self.batch_cache: list[Any] | None = None  # per-layer batch caches of the running rows
        self.batch_seqs: list[Sequence] = []  # row order of batch_cache and rows
        self.rows = RowArrays(0)
        layer_caches = make_prompt_cache(model)
        self.num_layers = len(layer_caches)
        self.recurrent = recurrent_layers(layer_caches)
        # Whole prompts can share one left-padded forward when every layer is a plain KV cache.
        self.can_prefill_together = not deterministic and all(type(c) is KVCache for c in layer_caches)
        # --speculative mtp: decode and verify forwards keep their final hidden states (see capture)
        self._split: tuple[Any, Any] | None = None
        self._beside: Any = None
        self.last_hidden: mx.array | None = None  # (B, L, H) of the last decode or verify forward
        self.hidden_seqs: list[Sequence] = []  # its rows
        self.hidden_index: mx.array | None = None  # per row, the position its next token was drawn at (None: 0)
        self.adapters: Any = None  # lora.AdapterBank with --lora: each row's forward applies its adapter

    # -- prefill ---------------------------------------------------------
    def prefill(self, seq: Sequence, num_tokens: int) -> mx.array | None:
        """Write the next ``num_tokens`` prompt tokens of ``seq`` into its own cache.

        Returns the logits (1, vocab) of the last prompt position once the whole
        prompt is in the cache, else None.
        """
        if seq.request.multimodal is not None:
            with self.selecting([seq]):
                return self.model.prefill_multimodal(seq, num_tokens)  # media embedded at their placeholders
        if seq.cache is None:
            seq.cache = make_prompt_cache(self.model)
        start = seq.num_computed
        end = min(start + num_tokens, seq.num_prompt_tokens)
        logits = self.run_rows([seq], mx.array(seq.prompt_ids[start:end])[None], seq.cache)
        seq.num_computed = end
        if end < seq.num_prompt_tokens:
            # Materialize the chunk's keys/values so the graph does not grow across chunks.
            mx.eval([c.state for c in seq.cache])
            return None
        return logits[:, -1, :]

    def prefill_together(self, seqs: list[Sequence]) -> tuple[list[Any], mx.array]:
        """Prefill several whole prompts in one left-padded forward.

        Returns the per-layer batch caches of these rows and their last logits (k, vocab).
        """
        lengths = [s.num_remaining_prompt for s in seqs]
        width = max(lengths)
        padding = [width - n for n in lengths]
        rows = [[0] * pad + s.prompt_ids[s.num_computed :] for pad, s in zip(padding, seqs)]
        cache = [BatchKVCache(padding) for _ in range(self.num_layers)]
        logits = self.run_rows(seqs, mx.array(rows), cache)
        for s in seqs:
            s.num_computed = s.num_prompt_tokens
        return cache, logits[:, -1, :]

    # -- the decode batch -------------------------------------------------
    def add_to_batch(self, seqs: list[Sequence], rows: RowArrays, merged: list[Any] | None = None) -> None:
        """Move freshly prefilled rows, with their pending arrays, into the decode batch.

        ``merged`` holds their batch caches when they were prefilled together;
        otherwise each sequence's own cache is merged here (kept apart in
        deterministic mode).
        """
        if not seqs:
            return
        self.settle()
        if self.deterministic:
            if merged is not None:
                raise ValueError("deterministic mode prefills each prompt alone")
        else:
            if merged is None:
                merged = [layer[0].merge(list(layer)) for layer in zip(*(s.cache for s in seqs))]
            for s in seqs:
                s.cache = None
            if self.batch_cache is None:
                self.batch_cache = as_decode_caches(merged)
            else:
                for running, new in zip(self.batch_cache, merged):
                    running.extend(new)
        self.rows = rows if not self.batch_seqs else self.rows.join(rows)
        self.batch_seqs.extend(seqs)

    def remove_from_batch(self, seqs: set[Sequence]) -> bool:
        """Drop rows from the decode batch; returns whether any row was removed."""
        keep = [i for i, s in enumerate(self.batch_seqs) if s not in seqs]
        if len(keep) == len(self.batch_seqs):
            return False
        self.settle()
        if not keep:
            self.batch_cache, self.batch_seqs, self.rows = None, [], RowArrays(0)
            return True
        self.batch_seqs = [self.batch_seqs[i] for i in keep]
        if self.batch_cache is not None:
            indices = mx.array(keep)
            for c in self.batch_cache:
                c.filter(indices)
        self.rows = self.rows.take(keep)
        return True

    def decode(self, tokens: mx.array | None = None) -> mx.array:
        """One decode step for every row from its pending token (or ``tokens``) -> logits (B, vocab)."""
        tokens = self.rows["tokens"] if tokens is None else tokens
        if self.deterministic:
            deltas = self._rope_deltas()
            return mx.concatenate([
                self.run_rows([s], tokens[i : i + 1, None], s.cache,
                              **({} if deltas is None else {"rope_deltas": deltas[i : i + 1]}))[:, -1, :]
                for i, s in enumerate(self.batch_seqs)
            ])
        return self._forward(tokens[:, None])[:, -1, :]

    def verify(self, tokens: mx.array) -> mx.array:
        """Several positions per row (its pending token, then proposed ones) -> logits (B, L, vocab)."""
        in_temporal_order(self.batch_cache or [])
        return self._forward(tokens)

    def capture(self, body: Any, head: Any, beside: Any = None) -> None:
        """Run decode and verify forwards as ``head(body(tokens))`` and keep ``body``'s output (the final
        hidden states) with its rows, for an MTP head to draft from. ``beside``: what the forwards also
        feed (the head's cache entries, :class:`~.mtp.HeadFeed`): its ``written`` arrays (nothing reads
        them before the head drafts) and its ``settle()`` (deferred writes, due before the batch
        changes or its caches are copied out)."""
        self._split, self._beside = (body, head), beside

    def written(self) -> list[mx.array]:
        """What the forwards wrote beside their logits, to evaluate with the step (else it would stay
        a growing graph until something reads it)."""
        return [] if self._beside is None else self._beside.written

    def launched(self) -> list[mx.array]:
        """What a step evaluates: the rows' pending arrays and what the forwards wrote beside them."""
        return self.rows.all() + self.written()

    def settle(self) -> None:
        """Finish the writes a forward deferred, before the decode batch's caches change or are read."""
        if self._beside is not None:
            self._beside.settle()

    def _forward(self, tokens: mx.array) -> mx.array:
        if self._split is None:
            return self.batch_model(tokens, self.batch_cache)
        body, head = self._split
        deltas = self._rope_deltas()  # (a vision-language model's rows with media)
        with self.selecting(self.batch_seqs):
            hidden = body(tokens, cache=self.batch_cache, **({} if deltas is None else {"rope_deltas": deltas}))
        self.last_hidden, self.hidden_seqs, self.hidden_index = hidden, list(self.batch_seqs), None
        return head(hidden)

    def batch_model(self, tokens: mx.array, cache: list[Any]) -> mx.array:
        """The model over the decode batch's rows (each with its adapter, and a vision-language model's
        rows with media at their own position offsets): decode, verify and rollback forwards."""
        deltas = self._rope_deltas()
        return self.run_rows(self.batch_seqs, tokens, cache, **({} if deltas is None else {"rope_deltas": deltas}))

    def run_rows(self, seqs: list[Sequence], tokens: mx.array, cache: list[Any], **kwargs: Any) -> mx.array:
        """The model over ``tokens``, row i being ``seqs[i]``'s (its LoRA adapter applied, if it has one)."""
        with self.selecting(seqs):
            return self.model(tokens, cache=cache, **kwargs)

    def selecting(self, seqs: list[Sequence]) -> Any:
        """Where the forward being built gives each row its adapter's update (nothing without --lora)."""
        return nullcontext() if self.adapters is None else self.adapters.selecting([s.sampling.adapter for s in seqs])

    def _rope_deltas(self) -> mx.array | None:
        """Per-row position offsets of a vision-language model's rows (None when all are 0)."""
        if not getattr(self.model, "uses_rope_deltas", False):
            return None
        deltas = [s.rope_delta for s in self.batch_seqs]
        return mx.array(deltas) if any(deltas) else None


def recurrent_layers(caches: list[Any]) -> list[int]:
    """Where in :func:`leaf_caches` the caches holding a recurrent state (mlx-lm's ``ArraysCache``) are,
    which cannot drop positions."""
    return [i for i, c in enumerate(leaf_caches(caches)) if isinstance(c, ArraysCache)]


def probe_vocab_size(model: Any) -> int:
    """The logits width (may exceed the tokenizer's size); the one forward also warms the model up."""
    logits = model(mx.array([[0]]), cache=make_prompt_cache(model))
    return int(logits.shape[-1])


def group_for_padding(prompts: list[Sequence]) -> list[list[Sequence]]:
    """Split whole prompts into groups of similar length: left padding at most doubles a group's work."""
    groups: list[list[Sequence]] = []
    total = 0
    for seq in sorted(prompts, key=lambda s: s.num_prompt_tokens):
        n = seq.num_prompt_tokens
        if groups and n * (len(groups[-1]) + 1) <= 2 * (total + n):
            groups[-1].append(seq)
            total += n
        else:
            groups.append([seq])
            total = n
    return groups


def in_temporal_order(batch_cache: list[Any]) -> None:
    """Put sliding-window layers' ring buffers in temporal order before a multi-token step: mlx-lm's
    mask for such a step assumes the order its update puts the ring in first (one position off for a
    row with left padding otherwise)."""
    for c in leaf_caches(batch_cache):
        if isinstance(c, BatchRotatingKVCache):
            c._temporal_order()


COMPACT_PADDING = 64  # left padding every row of a batch cache has before it is cut off


def drop_row_tails(batch_cache: list[Any], junk: list[int]) -> None:
    """Cut ``junk[i]`` positions off the end of row i of a batch KV cache (rejected proposals, right
    padding): the part all rows share is trimmed; what a row drops beyond that becomes holes in a
    :class:`~.decode_cache.DecodeKVCache` (the decode batch's, a draft model's: nothing moves) or, in
    another batch cache (a sliding-window layer's ring), the row is rolled right by the difference, into its left padding, as mlx-lm's
    ``BatchKVCache.finalize`` does for right padding (only those rows, and only the filled part of the
    cache); once every such row has ``COMPACT_PADDING`` positions of left padding, they are cut off. A
    sliding-window layer's cache (mlx-lm's ``BatchRotatingKVCache``) is cut right after a multi-token
    step, which leaves it in temporal order holding a window and the step: the rows keep at least a
    window each, and the next step's trim of its oldest positions takes the padding first (the roll is
    the one mlx-lm applies to right-padded prompts)."""
    batch_cache = leaf_caches(batch_cache)
    if max(junk, default=0) == 0 or not batch_cache:
        return
    common = min(junk)
    rest = [j - common for j in junk]
    rows = [i for i, r in enumerate(rest) if r]
    moved = mx.array(rest) if rows else None
    rolled = []
    for c in batch_cache:
        rotating = isinstance(c, BatchRotatingKVCache)  # sliding-window layers: after a multi-token step
        if common:  # the buffer is in temporal order, ``_idx`` long (a window plus the step, at most)
            c.trim(common)
        if rotating:
            c.keys, c.values = c.keys[..., :c._idx, :], c.values[..., :c._idx, :]
        if not rows:
            continue
        if isinstance(c, DecodeKVCache):
            c.drop_in_place(rest, moved)
            continue
        if not rolled:
            sel, shifts = mx.array(rows), mx.array([rest[i] for i in rows])[:, None]
        end = c._idx if rotating else c.size()
        c.keys[sel, :, :end] = dynamic_roll(c.keys[sel, :, :end], shifts, axis=2)
        c.values[sel, :, :end] = dynamic_roll(c.values[sel, :, :end], shifts, axis=2)
        c.left_padding = c.left_padding + moved
        c.offset = c.offset - moved
        rolled.append(c)
    if rolled and min(rolled[0].left_padding.tolist()) >= COMPACT_PADDING:
        for c in rolled:
            c.filter(mx.arange(len(junk)))  # mlx-lm's filter drops the padding every row has
