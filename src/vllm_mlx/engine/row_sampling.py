"""Sampling the decode batch's rows: the first token of freshly prefilled rows, then one token per
row and step. The batch's parameter arrays are built once per change of the rows, not every step;
the results stay on the device as the rows' pending arrays (launched by the caller)."""

from __future__ import annotations

import mlx.core as mx

from .constraints import allowed_tokens
from .rows import RowArrays
from .sampler import BatchSamplingParams, PenaltyState, SampleResult, sample
from .sequence import Sequence


class RowSampler:
    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size
        self._batch_params: BatchSamplingParams | None = None  # of the decode batch; None: rows changed

    def rows_changed(self) -> None:
        self._batch_params = None

    def params_for(self, seqs: list[Sequence]) -> BatchSamplingParams:
        return BatchSamplingParams.from_params([s.sampling for s in seqs], self.vocab_size,
                                               [s.stop_ids for s in seqs])

    def batch_params(self, seqs: list[Sequence]) -> BatchSamplingParams:
        """The decode batch's controls (built once per change of its rows)."""
        if self._batch_params is None:
            self._batch_params = self.params_for(seqs)
        return self._batch_params

    def first(self, seqs: list[Sequence], logits: mx.array) -> RowArrays:
        """The first token of each freshly prefilled row, as the rows' pending arrays."""
        params = self.params_for(seqs)
        penalties = None
        if params.uses_penalties:
            penalties = PenaltyState.for_prompts([s.prompt_ids for s in seqs], self.vocab_size)
        generated = [0] * len(seqs) if params.min_tokens else None
        allowed = allowed_tokens([s.next_token_rule for s in seqs], self.vocab_size)
        result = sample(logits, params, mx.stack([s.rng_key for s in seqs]), penalties, generated, allowed)
        return pending_rows(result, penalties)

    def next(self, seqs: list[Sequence], logits: mx.array, rows: RowArrays, pending_applied: bool) -> RowArrays:
        """Every row's next token from the decode logits; ``rows``: the batch's pending arrays (the
        tokens fed this step); ``pending_applied``: those tokens are already appended to the
        sequences (the deferred, constrained path)."""
        fresh = self._batch_params is None
        params = self.batch_params(seqs)
        if fresh and not params.uses_penalties:
            rows["counts"] = rows["in_prompt"] = None
        penalties = None
        if params.uses_penalties:
            penalties = PenaltyState(rows["counts"], rows["in_prompt"])
            penalties.add_tokens(rows["tokens"])
        generated = None
        if params.min_tokens:
            fed = 0 if pending_applied else 1
            generated = [len(s.output_ids) + fed for s in seqs]
        allowed = None
        if any(s.steers_tokens for s in seqs):
            allowed = allowed_tokens([s.next_token_rule for s in seqs], self.vocab_size)
        result = sample(logits, params, rows["keys"], penalties, generated, allowed)
        return pending_rows(result, penalties)


def pending_rows(result: SampleResult, penalties: PenaltyState | None) -> RowArrays:
    """The sampled tokens (and what the next step needs of them) as the rows' pending arrays."""
    return RowArrays(
        result.tokens.shape[0],
        tokens=result.tokens, keys=result.keys, logprobs=result.logprobs,
        top_ids=result.top_ids, top_logprobs=result.top_logprobs,
        counts=penalties.counts if penalties else None, in_prompt=penalties.in_prompt if penalties else None,
    )
