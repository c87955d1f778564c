"""Speculative decoding inside the batched decode: proposals from the row's own prompt and output
(:mod:`.ngram`, ``--speculative ngram``), from a draft model (:mod:`.draft`, ``--draft-model``) or from
the checkpoint's multi-token-prediction head (:mod:`.mtp`, ``--speculative mtp``), verified by the
served model.

One *verify* step feeds every row ``[its pending token, its proposals]`` -- rows with fewer proposals are
padded, rows that do not speculate take part with their first position only -- and keeps, per row, the
leading proposals the row would have drawn itself, plus its own next token after them
(:func:`verify_draw`: exact for greedy rows, speculative sampling for sampled ones; every proposer is
deterministic given the tokens so far). A step costs one forward of K + 1 positions and yields 1 to
K + 1 tokens per row.

Which rows speculate: every row of a text request that has not switched it off -- greedy and sampled
rows, seeded or not (temperature, top-k / top-p / min-p; penalties, logit bias and min_tokens applied at
every position as a plain step applies them), rows with a grammar or a reasoning budget (their rules
walk the proposals for a mask at each position: :func:`~.constraints.proposal_masks`). Rows without
proposals share the verify step and are sampled from its first position as usual.

The step is synchronous: a verify step needs the rows' latest tokens on the host (to propose after
them), and the next step needs each row's accepted count (to drop the rejected proposals' keys and
values). Rows that accepted fewer than the batch's longest proposal have those positions cut off the
batch cache (:func:`~.model_runner.drop_row_tails`); recurrent layers are rolled back (:mod:`.rollback`).

Each row's proposal length adapts to its acceptance (longer after a full acceptance, halved after
none); a row whose proposals keep failing rests for a while, twice as long each time until one of its
proposals is accepted (engine steps, counted whatever kind they are). When no row has a proposal the engine
goes back to its pipelined decode -- and also when speculating does not pay on this machine: a verify
step costs more than a decode step where the forward's cost grows with its positions (a CPU, a large
batch), so the speculator keeps the tokens/s of recent steps per batch size and per proposal cap K
(K = 0: a pipelined step) and runs the fastest, trying the others now and then (:class:`StepRates`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np

from .constraints import proposal_masks, unpack_bitmask
from .request import TokenLogprob
from .rollback import drop_rejected, keep_positions, recurrent_states, snapshot, take_kept
from .rows import RowArrays
from .sampler import BatchSamplingParams, PenaltyState, draw_positions, process_positions, reported_logprobs
from .sequence import Sequence
from .step_rates import StepRates
from .step_record import SpecStep, finished_rows

REST_STEPS = 16  # steps a row waits after proposals of its were rejected whole twice in a row
REST_DOUBLINGS = 4  # doubled after each such rest without an accepted proposal since, up to 16 times as long
IDLE_CHECKS = 4  # while no row has proposals, pipelined steps between looks for them


def verify_inputs(seqs: list[Sequence], proposals: list[list[int]]) -> list[list[int]]:
    """A verify step's inputs: each row's newest token, then its proposals, right-padded to the longest."""
    k = max(len(p) for p in proposals)
    return [[s.output_ids[-1], *p, *[0] * (k - len(p))] for s, p in zip(seqs, proposals)]


@dataclass
class Prepared:
    """:meth:`Speculator.prepare`'s result: the deltas read back, the rows that finished, whether the
    previous step verified, the positions each row drops (``None``: nothing to drop), the rows that stay,
    the cap of this step's kind, their proposals (empty: a plain step) and how many tokens were read."""

    outputs: list
    done: list[Sequence]
    verified: bool
    junk: list[int] | None
    staying: list[Sequence]
    cap: int
    proposals: list[list[int]]
    read: int

    def record(self, with_tokens: bool) -> SpecStep:
        """The step's decisions for a distributed follower (``with_tokens``: finished rows carry their
        tokens, for its prefix cache)."""
        verify = verify_inputs(self.staying, self.proposals) if any(self.proposals) else None
        return SpecStep(self.junk, finished_rows(self.done, with_tokens), verify,
                        [] if verify is not None else [s.output_ids[-1] for s in self.staying])


@dataclass
class SpeculationStats:
    method: str = "ngram"
    verify_steps: int = 0
    proposed: int = 0  # tokens proposed
    accepted: int = 0  # proposed tokens the model agreed with
    rollback_forwards: int = 0  # verify steps whose recurrent layers were rolled back by a second forward

    def as_dict(self) -> dict:
        rate = self.accepted / self.proposed if self.proposed else 0.0
        return {"method": self.method, "verify_steps": self.verify_steps, "proposed": self.proposed,
                "accepted": self.accepted, "rollback_forwards": self.rollback_forwards,
                "acceptance_rate": round(rate, 4)}  # not dataclasses.asdict: built every engine step


class _RowState:
    __slots__ = ("eligible", "budget", "misses", "resume", "rests")

    def __init__(self, eligible: bool, budget: int):
        self.eligible = eligible  # whether the row may speculate at all (its controls do not change)
        self.budget = budget  # tokens this row may propose next
        self.misses = 0  # verify steps in a row that accepted nothing
        self.resume = 0  # the engine step from which this row proposes again
        self.rests = 0  # rests since one of its proposals was last accepted


def verify_draw(logits: mx.array, drafts: mx.array, lengths: mx.array, params: BatchSamplingParams | None,
                keys: mx.array) -> tuple[mx.array, mx.array, mx.array]:
    """Each row draws its token at every position as a step at a time would (greedy: the argmax; sampled:
    its Gumbel-max draw with its key after as many splits, :func:`~.sampler.draw_positions`) and keeps the
    leading proposals that equal its draws, then the draw after them. With proposers that are certain of
    their tokens this is speculative sampling (a proposal d is kept with probability p(d); after a refusal
    the token follows p without d), and a row's tokens are the very tokens it draws without speculation
    from the same key. ``logits``: steps 0-4 applied; ``params``: the rows' controls (None when every
    speculating row is greedy); ``keys``: the rows' keys. Returns (accepted counts, the next tokens, the
    keys after them)."""
    k = drafts.shape[1]
    if params is None:
        tokens, after = mx.argmax(logits, axis=-1), None
    else:
        tokens, after = draw_positions(logits, params, keys)
    kept = (tokens[:, :k] == drafts) & (mx.arange(k)[None] < lengths[:, None])
    accepted = mx.cumprod(kept.astype(mx.int32), axis=1).sum(axis=1)
    chosen = mx.take_along_axis(tokens, accepted[:, None], axis=1)[:, 0]
    if after is not None:
        keys = mx.take_along_axis(after, accepted[:, None, None], axis=1)[:, 0]
    return accepted, chosen, keys


class Speculator:
    """Per-row proposal lengths, the verify step's graph and the batch cache's repair after it;
    ``proposer``: where proposals come from (:class:`~.ngram.NgramProposer`, :class:`~.draft.DraftProposer`,
    :class:`~.mtp.MTPProposer`)."""

    def __init__(self, num_tokens: int, proposer: Any, vocab_size: int):
        self.num_tokens = num_tokens
        self.proposer = proposer
        self.vocab_size = vocab_size  # the logits' width
        self.stats = SpeculationStats(method=proposer.method)
        self.active = False  # the next step is a speculative one (set after each step)
        self.rates = StepRates(num_tokens)
        self._rows: dict[Sequence, _RowState] = {}
        self._proposed: dict[Sequence, int] = {}  # of the verify step in flight
        self._masks: dict[Sequence, Any] = {}  # grammar rows' masks at each position of the next verify step
        self._idle = 0  # pipelined steps before proposals are looked for again
        self._chosen: int | None = None  # the arm worth_trying chose for the next step (one decision a step)
        self._steps = 0  # engine steps so far (what a row's rest is counted in)

    @staticmethod
    def eligible(seq: Sequence) -> bool:
        """Rows that may speculate: all but those switched off by their request."""
        return seq.sampling.speculative

    def _wants(self, seqs: list[Sequence], cap: int) -> list[int]:
        """How many tokens each row may propose now, at most ``cap`` (0: none, as for resting rows)."""
        wants = []
        for seq in seqs:
            state = self._rows.get(seq)
            if state is None:
                state = self._rows[seq] = _RowState(self.eligible(seq), self.num_tokens)
            if not state.eligible:
                wants.append(0)
                continue
            if state.resume > self._steps:
                wants.append(0)
                continue
            room = seq.sampling.max_tokens - len(seq.output_ids) - 1  # the bonus token comes on top
            wants.append(max(0, min(state.budget, room, cap)))
        return wants

    def proposals(self, seqs: list[Sequence], cap: int) -> list[list[int]]:
        """Each row's proposals after its latest token, at most ``cap`` (empty for rows that do not
        speculate now)."""
        proposals = self.proposer.propose(seqs, self._wants(seqs, cap))
        self._masks = {}
        for i, (seq, proposed) in enumerate(zip(seqs, proposals)):
            if proposed and seq.steers_tokens:  # a grammar's masks, a budget's forced tokens along the proposals
                proposals[i], self._masks[seq] = proposal_masks(seq, proposed, self.vocab_size)
        return proposals

    def worth_trying(self, seqs: list[Sequence]) -> bool:
        """Whether the next step should speculate: some row may propose and verifying is the arm to run at
        this batch size (decided after a pipelined step)."""
        if self._idle:  # nothing to propose lately: look again every IDLE_CHECKS steps (a cost per step)
            self._idle -= 1
            return False
        if self.rates.settled_on_plain(len(seqs)):  # proposals would not change the answer: not looked for
            return False
        if not self.proposer.may_propose(seqs, self._wants(seqs, self.num_tokens)):
            self._idle = IDLE_CHECKS - 1
            return False  # asked first: a decision without proposals would spend the tries of unmeasured arms
        self._chosen = self.rates.choose(len(seqs))
        return self._chosen > 0

    def observe(self, read: int, produced: int, rows: int, prompt_work: bool) -> None:
        """An engine step ended (of any kind): counted, and its rate kept (:meth:`.StepRates.observe`)."""
        self._steps += 1
        self.rates.observe(read, produced, rows, prompt_work)

    def report(self) -> dict:
        """The stats (``/health``), with the tokens a draft took from its own prefix cache."""
        reused = getattr(self.proposer, "cached_tokens", None) if getattr(self.proposer, "prefix", None) else None
        return self.stats.as_dict() | ({} if reused is None else {"draft_cached_tokens": reused})

    @property
    def prompt_work(self) -> bool:
        """Whether the proposer prefilled in the last step (a draft model taking in new rows)."""
        return getattr(self.proposer, "prompt_work", False)

    def forget(self, seqs: list[Sequence]) -> None:
        self.proposer.forget(seqs)
        for seq in seqs:
            self._rows.pop(seq, None)
            self._proposed.pop(seq, None)

    # -- the verify step -------------------------------------------------------------------
    def prepare(self, core: Any) -> "Prepared":
        """The host half of a speculative step, before any forward: read back the rows' tokens (with the
        proposals the last verify step accepted), and choose the rows' new proposals -- what a
        distributed rank 0 sends its followers before the step's forwards (:meth:`record`)."""
        runner = core.runner
        seqs, rows = list(runner.batch_seqs), runner.rows
        generated = core.counters.generated
        outputs, done = core.read_back(seqs, rows)
        verified = rows["junk"] is not None
        junk = rows["junk"].tolist() if verified and runner.batch_cache is not None else None
        gone = set(done)
        staying = [s for s in seqs if s not in gone]  # the batch after the finished rows leave
        chosen, self._chosen = self._chosen, None
        cap = (self.rates.choose(len(staying)) if chosen is None else chosen) if staying else 0
        proposals = self.proposals(staying, cap) if cap else []
        return Prepared(outputs, done, verified, junk, staying, cap, proposals, core.counters.generated - generated)

    def step(self, core: Any, plan: Any, prepared: "Prepared | None" = None) -> list:
        """A synchronous engine step: :meth:`prepare` (unless done already), drop the rejected positions,
        then verify the rows' new proposals -- or, when no row has any or verifying does not pay here,
        launch a pipelined decode step and leave speculation. ``core``: the :class:`~.core.EngineCore`
        whose step this is; ``plan``: its schedule."""
        runner = core.runner
        p = prepared or self.prepare(core)
        if p.junk is not None and drop_rejected(runner, p.junk):
            self.stats.rollback_forwards += 1
        # a verify step's last token is not fed yet; rows a record carried are not announced again
        core.retire(p.done, unfed=int(p.verified), announce=prepared is None)
        seqs = list(runner.batch_seqs)
        if any(p.proposals):
            runner.rows = self.launch(runner, core.sampler, seqs, p.proposals)
            self.rates.launched = p.cap
        else:
            self.active, self.rates.launched = False, 0
            if seqs:
                runner.rows = core.sampler.next(seqs, runner.decode(), runner.rows, pending_applied=True)
        if seqs:
            mx.async_eval(runner.launched())
        for group, logits, merged in core.prefill(plan.prefill):
            core.join_isolated(group, logits, merged)
        return p.outputs

    def launch(self, runner: Any, sampler: Any, seqs: list[Sequence], proposals: list[list[int]]) -> RowArrays:
        """Feed ``[pending token, proposals]`` per row; returns the rows' pending arrays: the next token,
        the proposals, how many of them each row accepted and the positions to drop (all lazy)."""
        k = max(len(p) for p in proposals)
        inputs = mx.array(verify_inputs(seqs, proposals))
        before = recurrent_states(runner.batch_cache, runner.recurrent)  # the state this step starts from
        per_position = bool(runner.recurrent) and runner.keeps_positions
        if per_position:  # recurrent layers that can keep each position's state (rollback.take_kept)
            keep_positions(runner.batch_cache, runner.recurrent, True)
        logits = runner.verify(inputs)  # (B, k + 1, vocab)
        if per_position:
            keep_positions(runner.batch_cache, runner.recurrent, False)
        if self._masks:
            logits = self._masked(logits, seqs)
        drafts, lengths = inputs[:, 1:], mx.array([len(p) for p in proposals])
        rows, params = runner.rows, sampler.batch_params(seqs)
        processed = self._processed(logits, params, rows, inputs, seqs)
        sampled = any(p and not s.sampling.greedy for s, p in zip(seqs, proposals))
        accepted, tokens, keys = verify_draw(processed, drafts, lengths, params if sampled else None, rows["keys"])
        rows = sampler.next(seqs, logits[:, 0, :], rows, pending_applied=True)  # rows without proposals
        rows["tokens"] = mx.where(lengths > 0, tokens, rows["tokens"])
        if sampled:  # a row with proposals used a key per token it takes; the others, one (in next())
            rows["keys"] = mx.where((lengths > 0)[:, None], keys, rows["keys"])
        rows["drafts"], rows["accepted"], rows["junk"] = drafts, accepted, k - accepted
        runner.hidden_index = accepted  # each row's next token is drawn after its accepted proposals
        if params.uses_penalties:  # the accepted proposals count for the penalties of the steps after
            kept = (mx.arange(k)[None] < accepted[:, None]).astype(mx.float32)
            rows["counts"] = rows["counts"].at[mx.arange(len(seqs))[:, None], drafts].add(kept)
        if runner.recurrent and not (per_position and take_kept(runner.batch_cache, runner.recurrent, accepted + 1)):
            snapshot(rows, before, runner.recurrent, inputs)  # rolled back and re-run by the next step
        if any(p and s.sampling.logprobs for s, p in zip(seqs, proposals)):
            self._report_logprobs(rows, processed, drafts, accepted, lengths, params)
        self._proposed = {s: len(p) for s, p in zip(seqs, proposals) if p}
        self.stats.verify_steps += 1
        self.stats.proposed += sum(self._proposed.values())
        return rows

    @staticmethod
    def _processed(logits: mx.array, params: BatchSamplingParams, rows: RowArrays, inputs: mx.array,
                   seqs: list[Sequence]) -> mx.array:
        """The verify step's logits with each row's logit bias, penalties and ``min_tokens`` applied at
        every position, as a plain step applies them to its one position (:func:`process_positions`)."""
        if params.logit_bias is None and not params.uses_penalties and params.min_tokens is None:
            return logits
        penalties = None
        if params.uses_penalties:
            penalties = PenaltyState(rows["counts"], rows["in_prompt"])
            penalties.add_tokens(inputs[:, 0])  # the pending token, as a plain step counts it
        generated = [len(s.output_ids) for s in seqs] if params.min_tokens is not None else None
        return process_positions(logits, params, penalties, inputs[:, 1:], generated)

    def _masked(self, logits: mx.array, seqs: list[Sequence]) -> mx.array:
        """Grammar rows' logits with what their grammar forbids at each position at -inf."""
        b, width, _ = logits.shape
        bitmask = np.full((b, width, (self.vocab_size + 31) // 32), -1, dtype=np.int32)
        for i, seq in enumerate(seqs):
            masks = self._masks.get(seq)
            if masks is not None:
                bitmask[i, :len(masks)] = masks
        self._masks = {}
        return mx.where(unpack_bitmask(bitmask, logits.shape[-1]), logits, float("-inf"))

    @staticmethod
    def _report_logprobs(rows: RowArrays, logits: mx.array, drafts: mx.array, accepted: mx.array,
                         lengths: mx.array, params: BatchSamplingParams) -> None:
        """The logprobs of a verify step's tokens under each row's own distribution (as a plain step
        reports them): of every proposal at its position, and of the next token at the position after
        the accepted ones."""
        b, width, vocab = logits.shape
        k, top = drafts.shape[1], bool(params.top_logprobs)
        temperature = params.repeated(k).temperature
        scaled = logits[:, :k].reshape(b * k, vocab).astype(mx.float32) / temperature
        lp, top_ids, top_lps = reported_logprobs(scaled, drafts.reshape(-1), top)
        rows["draft_logprobs"] = lp.reshape(b, k)
        if top:
            rows["draft_top_ids"], rows["draft_top_logprobs"] = top_ids.reshape(b, k, -1), top_lps.reshape(b, k, -1)
        at = mx.take_along_axis(logits, accepted[:, None, None], axis=1)[:, 0].astype(mx.float32)
        lp, top_ids, top_lps = reported_logprobs(at / params.temperature, rows["tokens"], top)
        speculated = lengths > 0
        rows["logprobs"] = mx.where(speculated, lp, rows["logprobs"])
        if top:
            rows["top_ids"] = mx.where(speculated[:, None], top_ids, rows["top_ids"])
            rows["top_logprobs"] = mx.where(speculated[:, None], top_lps, rows["top_logprobs"])

    def read_accepted(self, seqs: list[Sequence], rows: RowArrays) -> list[list[int]]:
        """The accepted proposals of each row of a verify step (host lists), its rows' budgets adapted."""
        accepted, drafts = rows["accepted"].tolist(), rows["drafts"].tolist()
        out = []
        for seq, n, row in zip(seqs, accepted, drafts):
            proposed = self._proposed.pop(seq, 0)
            out.append(row[:n])
            if not proposed:
                continue
            self.stats.accepted += n
            state = self._rows.get(seq)
            if state is None:
                continue
            if n == proposed:
                state.budget, state.misses = min(self.num_tokens, state.budget * 2), 0
            elif n == 0:
                state.budget, state.misses = max(1, state.budget // 2), state.misses + 1
                if state.misses >= 2:
                    state.resume = self._steps + (REST_STEPS << min(state.rests, REST_DOUBLINGS))
                    state.rests, state.misses = state.rests + 1, 0
            else:
                state.budget, state.misses = max(1, n), 0
            if n:
                state.rests = 0
        return out

    @staticmethod
    def read_logprobs(seqs: list[Sequence], rows: RowArrays,
                      accepted: list[list[int]]) -> list[list[TokenLogprob] | None] | None:
        """For each row asking for logprobs, those of its ``accepted`` proposals (host), else None."""
        if rows["draft_logprobs"] is None or not any(s.sampling.logprobs for s in seqs):
            return None
        values = rows["draft_logprobs"].tolist()
        tops = None
        if rows["draft_top_ids"] is not None:
            tops = list(zip(rows["draft_top_ids"].tolist(), rows["draft_top_logprobs"].tolist()))
        out: list[list[TokenLogprob] | None] = []
        for i, (seq, drafts) in enumerate(zip(seqs, accepted)):
            if not seq.sampling.logprobs:
                out.append(None)
                continue
            n = seq.sampling.top_logprobs
            ids, lps = tops[i] if tops is not None else ([()] * len(drafts), [()] * len(drafts))
            out.append([TokenLogprob(d, values[i][j], tuple(zip(ids[j][:n], lps[j][:n])))
                        for j, d in enumerate(drafts)])
        return out
