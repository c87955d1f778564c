"""The engine's use of the prefix cache (:mod:`.prefix_cache`) around one step.

* on admission, a sequence starts from the longest cached prefix of its prompt; a sample of these
  restores is re-checked against a fresh prefill (:mod:`.restore_check`);
* while prefilling, a model with recurrent or sliding-window layers stops its prompt chunks at
  checkpoint positions (template boundaries, a stride, one token before the prompt's end) to save them;
* every prompt is cached once prefilled, and prompt + completion of a finished row once it
  stops, so the next turn of a conversation hits.

Caching is an optimisation: a failed insert or restore costs the reuse, never the request.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from typing import Any

import mlx.core as mx

from .config import EngineConfig
from .model_runner import ModelRunner
from .prefix_cache import PrefixCache, build_prefix_cache
from .request import FinishReason
from .restore_check import RestoreChecker
from .sequence import Sequence

logger = logging.getLogger(__name__)


def make_prefix_cache(loaded: Any, config: EngineConfig) -> PrefixCache | None:
    """The prefix cache ``config`` asks for, or None (off, deterministic mode, or a pipeline-parallel
    shard: the stages hold different layers, so their cached blocks differ in size and their evictions
    could not be kept the same)."""
    if not config.prefix_cache or config.deterministic:
        return None
    if getattr(loaded, "parallelism", "tensor") == "pipeline":
        logger.warning("prefix cache off: not supported with pipeline parallelism")
        return None
    cache = build_prefix_cache(loaded, config)
    logger.info("prefix cache: %s mode, %d MB budget, %d-token blocks%s%s", cache.stats.mode,
                cache.stats.budget_bytes >> 20, config.prefix_block_size,
                f", {config.kv_cache_bits}-bit" if config.kv_cache_bits else "",
                f", on disk in {cache.disk.folder}" if cache.disk else "")
    return cache


class PrefixReuse:
    """The prefix cache as the engine uses it; without a cache every method does nothing."""

    def __init__(self, cache: PrefixCache | None, config: EngineConfig, model: Any = None):
        """``model``: re-check a sample of restores (``verify_cache_restores``) against it; None: never."""
        self.cache = cache
        self.checkpoint_stride = config.checkpoint_stride
        self.block_size = config.prefix_block_size
        self.checker = None
        self.namespaces: dict[str, bytes] = {}  # LoRA adapter -> its fingerprint: entries of each kept apart
        if cache is not None and model is not None and config.verify_cache_restores > 0:
            self.checker = RestoreChecker(model, config.verify_cache_restores, config.kv_cache_bits,
                                          config.max_num_batched_tokens)

    @property
    def block_mode(self) -> bool:
        return self.cache is not None and self.cache.block_mode

    # -- admission ------------------------------------------------------------------
    def restore(self, seq: Sequence) -> None:
        """Start ``seq`` from the longest cached prefix of its prompt (the scheduler's ``on_admit``).

        A hit that cannot be assembled (a bad cache file, a bug) costs only the reuse: the
        sequence is prefilled cold. A sample of hits is re-checked against a fresh prefill."""
        if self.cache is None:
            return
        try:
            hit = self.cache.lookup(seq.prefix_key, self.namespace(seq))
        except Exception:
            logger.warning("prefix-cache restore for %s failed; prefilling it cold", seq.request_id, exc_info=True)
            self.cache.stats.restore_failures += 1
            return
        if not hit.num_tokens:
            return
        seq.cache, seq.num_computed, seq.num_cached_tokens = hit.cache, hit.num_tokens, hit.num_tokens
        if self.checker is not None and seq.request.multimodal is None and seq.sampling.adapter is None:
            self.checker.maybe_verify(seq, self.cache.stats)

    # -- prefill ----------------------------------------------------------------------
    def checkpoint_positions(self, seq: Sequence, end: int) -> list[int]:
        """Prompt positions in (computed, end) where a model with state layers saves a checkpoint."""
        if self.cache is None or self.cache.block_mode:
            return []
        start, stride = seq.num_computed, self.checkpoint_stride
        # Template boundaries, and one token before the prompt's end: an identical resend (a retry,
        # a regenerate) can reuse all but the token it must compute.
        cuts = {p for p in (*seq.request.checkpoints, seq.num_prompt_tokens - 1) if start < p < end}
        if stride > 0:
            cuts.update(range((start // stride + 1) * stride, end, stride))
        return sorted(p for p in cuts if p < seq.num_prompt_tokens)

    def prefill_chunk(self, runner: ModelRunner, seq: Sequence, num_tokens: int) -> mx.array | None:
        """Prefill ``num_tokens`` more prompt tokens, stopping at checkpoint positions to save them.
        (A model may stop a chunk short of, or run it past, what was asked -- a vision model keeps an
        image whole -- so a checkpoint is saved only where the prefill really stopped.)"""
        end = seq.num_computed + num_tokens
        for cut in self.checkpoint_positions(seq, end):
            if cut > seq.num_computed:
                runner.prefill(seq, cut - seq.num_computed)
                if seq.num_computed == cut:
                    self.remember(seq, seq.prefix_key[:cut], seq.cache)
        return runner.prefill(seq, end - seq.num_computed) if end > seq.num_computed else None

    # -- caching --------------------------------------------------------------------------
    def namespace(self, seq: Sequence) -> bytes | None:
        """Where ``seq``'s entries live in the cache: its LoRA adapter's own space (None: the base model's)."""
        return None if seq.sampling.adapter is None else self.namespaces[seq.sampling.adapter]

    def remember(self, seq: Sequence, tokens: list[int], cache: list) -> None:
        """Cache the state after ``tokens`` (a prefix of ``seq``'s prompt and output)."""
        if self.cache is not None:
            try:
                self.cache.insert(tokens, cache, self.namespace(seq))
            except Exception:  # caching is an optimisation: never fail a request over it
                logger.warning("prefix cache insert failed", exc_info=True)

    def remember_prompts(self, seqs: list[Sequence], batch_cache: list) -> None:
        """Cache the prompts of rows prefilled together (in block mode, only those of a block or more)."""
        for i, seq in enumerate(seqs):
            if seq.num_prompt_tokens >= self.block_size or not self.block_mode:
                self.remember(seq, seq.prompt_ids, [c.extract(i) for c in batch_cache])

    def remember_finished(self, runner: ModelRunner, done: list[Sequence], unfed: int = 0) -> None:
        """Cache prompt + completion of finished rows, so the next turn of a conversation hits;
        ``unfed``: the newest tokens of each row its cache does not hold (after a verify step, the token
        drawn after the accepted proposals)."""
        if self.cache is None or runner.batch_cache is None:
            return
        rows = {s: i for i, s in enumerate(runner.batch_seqs)}
        for seq in done:
            if seq in rows and seq.finish_reason in (FinishReason.STOP, FinishReason.LENGTH):
                runner.settle()  # (writes an MTP head's deferred keys: once, then nothing is left)
                tokens = seq.prefix_key + seq.output_ids
                self.remember(seq, tokens[:len(tokens) - unfed], [c.extract(rows[seq]) for c in runner.batch_cache])

    def stats(self) -> dict | None:
        if self.cache is None:
            return None
        stats = asdict(self.cache.stats) | {"token_hit_rate": self.cache.stats.token_hit_rate}
        if self.cache.disk is not None:
            disk = self.cache.disk
            stats |= {"disk_writes": disk.writes, "disk_reads": disk.reads,
                      "disk_rejected": disk.rejected, "disk_folder": str(disk.folder)}
        return stats
