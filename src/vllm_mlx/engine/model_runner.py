"""Runs the model: per-sequence prefill chunks and one batched decode step.

Each sequence is prefilled into a cache of its own (from ``make_prompt_cache``),
chunk by chunk. When its prompt is done, its cache is merged into the running
decode batch (``merge`` + ``extend`` of mlx-lm's batch caches); finished rows are
dropped with ``filter``. These are mlx-lm's public cache operations, so every
cache type that implements them (KV, rotating, arrays/recurrent) works.

Decoding is pipelined: every row has a *pending* token (sampled, possibly not
yet computed) and PRNG key, kept as arrays aligned with the batch rows. A step
feeds the pending tokens to the model and replaces them with the next sample
before the previous ones are read back, so the Python work on step t overlaps
the computation of step t+1.
"""

from __future__ import annotations

from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx_lm.models.cache import BatchKVCache, KVCache, make_prompt_cache

from .sequence import Sequence


class ModelRunner:
    def __init__(self, model: nn.Module):
        self.model = model
        self.batch_cache: list[Any] | None = None  # per-layer batch caches of the running rows
        self.batch_seqs: list[Sequence] = []  # row order of batch_cache
        self.pending_tokens: mx.array | None = None  # (B,) next input token of each row
        self.pending_keys: mx.array | None = None  # (B, 2) PRNG key of each row
        # Whole prompts can share one left-padded forward when every layer is a plain KV cache.
        layer_caches = make_prompt_cache(model)
        self.num_layers = len(layer_caches)
        self.can_prefill_together = all(type(c) is KVCache for c in layer_caches)

    # -- prefill ---------------------------------------------------------
    def prefill(self, seq: Sequence, num_tokens: int) -> mx.array | None:
        """Write the next ``num_tokens`` prompt tokens of ``seq`` into its cache.

        Returns the logits (1, vocab) of the last prompt position once the whole
        prompt is in the cache, else None.
        """
        if seq.cache is None:
            seq.cache = make_prompt_cache(self.model)
        start = seq.num_computed
        end = min(start + num_tokens, seq.num_prompt_tokens)
        tokens = mx.array(seq.prompt_ids[start:end])[None]
        logits = self.model(tokens, cache=seq.cache)
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
        logits = self.model(mx.array(rows), cache=cache)
        for s in seqs:
            s.num_computed = s.num_prompt_tokens
        return cache, logits[:, -1, :]

    # -- the decode batch -------------------------------------------------
    def add_to_batch(
        self, seqs: list[Sequence], first_tokens: mx.array, keys: mx.array, merged: list[Any] | None = None
    ) -> None:
        """Move freshly prefilled rows into the decode batch.

        ``merged`` holds their batch caches when they were prefilled together;
        otherwise each sequence's own cache is merged here.
        """
        if not seqs:
            return
        if merged is None:
            merged = [layer[0].merge(list(layer)) for layer in zip(*(s.cache for s in seqs))]
        for s in seqs:
            s.cache = None
        if self.batch_cache is None:
            self.batch_cache, self.pending_tokens, self.pending_keys = merged, first_tokens, keys
        else:
            for running, new in zip(self.batch_cache, merged):
                running.extend(new)
            self.pending_tokens = mx.concatenate([self.pending_tokens, first_tokens])
            self.pending_keys = mx.concatenate([self.pending_keys, keys])
        self.batch_seqs.extend(seqs)

    def remove_from_batch(self, seqs: set[Sequence]) -> bool:
        """Drop rows from the decode batch; returns whether any row was removed."""
        keep = [i for i, s in enumerate(self.batch_seqs) if s not in seqs]
        if len(keep) == len(self.batch_seqs):
            return False
        if not keep:
            self.batch_cache, self.batch_seqs = None, []
            self.pending_tokens = self.pending_keys = None
            return True
        self.batch_seqs = [self.batch_seqs[i] for i in keep]
        indices = mx.array(keep)
        for c in self.batch_cache:
            c.filter(indices)
        self.pending_tokens = self.pending_tokens[indices]
        self.pending_keys = self.pending_keys[indices]
        return True

    def decode(self) -> mx.array:
        """One decode step for every row from its pending token -> logits (B, vocab)."""
        logits = self.model(self.pending_tokens[:, None], cache=self.batch_cache)
        return logits[:, -1, :]
