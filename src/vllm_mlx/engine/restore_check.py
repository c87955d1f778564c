"""Run-time check of prefix-cache restores (``--verify-cache-restores RATE``).

A sampled restore is compared with a fresh prefill of the same prefix: both caches take the next
prompt token, and their logits must agree within the backend's tolerance
(:mod:`.numerics`). A mismatch is counted and logged, and the sequence goes on from the fresh
cache (its ``cached_tokens`` then say 0: nothing was reused), so a wrong restore never reaches
the output of a checked request.
"""

from __future__ import annotations

import logging
import random
from typing import Any

import mlx.core as mx
from mlx_lm.models.cache import make_prompt_cache

from .cache_layout import clone_cache
from .numerics import logits_close

logger = logging.getLogger(__name__)


class RestoreChecker:
    def __init__(self, model: Any, rate: float, kv_bits: int | None, chunk: int):
        self.model = model
        self.rate = rate
        self.kv_bits = kv_bits
        self.chunk = max(chunk, 1)
        self._rng = random.Random()

    def maybe_verify(self, seq: Any, stats: Any) -> None:
        """Re-check ``seq``'s restored cache with probability ``rate``."""
        if self._rng.random() >= self.rate:
            return
        n = seq.num_cached_tokens
        fresh = make_prompt_cache(self.model)
        for start in range(0, n, self.chunk):
            self.model(mx.array(seq.prompt_ids[start : min(start + self.chunk, n)])[None], cache=fresh)
            mx.eval([c.state for c in fresh])
        fresh_copy = clone_cache(fresh)
        probe = mx.array(seq.prompt_ids[n : n + 1])[None]
        restored_logits = self.model(probe, cache=clone_cache(seq.cache))[:, -1, :]
        fresh_logits = self.model(probe, cache=fresh)[:, -1, :]
        same, diff = logits_close(restored_logits, fresh_logits, self.kv_bits)
        stats.verified_restores += 1
        if same:
            return
        stats.restore_mismatches += 1
        logger.warning("prefix-cache restore of %d tokens for %s differs from a fresh prefill (max |logit "
                       "difference| %.3g); using the fresh cache", n, seq.request_id, diff)
        seq.cache, seq.num_cached_tokens = fresh_copy, 0
