"""The engine's step and the state it advances: the scheduler, the model runner's decode batch and
the prefix cache, changed only by this module's :class:`EngineCore` on the engine thread.

One step (:meth:`EngineCore.step`) -- decoding is pipelined (see :mod:`.model_runner`):

1. make room: cached blocks give way when device memory runs short;
2. schedule: admit queued prompts (each restores its longest cached prefix; a LoRA row once its adapter
   has a slot), split the step's token budget into prompt chunks; the step's decisions become a
   :class:`~.step_record.StepRecord` (:meth:`schedule`), which a distributed leader sends first;
3. launch decode step t+1 from the rows' pending tokens, and sample its tokens on the device (rows whose
   next token may be masked -- a grammar, a reasoning budget -- sample after step 5 instead);
4. prefill the prompt chunks (whole prompts of similar length together), saving checkpoints;
5. read back step t's tokens and apply them: text, stop conditions, logprobs;
6. cache and drop the finished rows;
7. join the prompts prefilled this step to the batch: n > 1 forks, their first tokens are sampled.

A failure costs the rows it concerns: a bad prompt fails alone, a failing step fails its batch.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

import mlx.core as mx

from ..platform import device_memory_bytes
from .config import EngineConfig, EngineCounters
from .lora import AdapterAdmission
from .model_runner import ModelRunner, group_for_padding, probe_vocab_size
from .prefix_reuse import PrefixReuse
from .request import FinishReason, GenerationOutput, GenerationRequest, TokenLogprob
from .rows import RowArrays
from .row_sampling import RowSampler
from .sampler import make_rng_key
from .scheduler import Scheduler, StepPlan
from .step_profile import StepProfile
from .step_record import (Aborted, Added, CacheCleared, CacheShrunk, RowEnded, RowsFailed, StepRecord,
                          finished_rows, schedule_of)
from .sequence import Sequence
from .drafters import make_proposer
from .speculative import Speculator
from .vision_model import VisionLanguageModel

logger = logging.getLogger(__name__)

OutputCallback = Callable[[list[GenerationOutput]], None]
# (sequences whose prompt is done, their last logits, their batch caches if prefilled together else None)
Prefilled = tuple[list[Sequence], mx.array, "list | None"]


class EngineCore:
    def __init__(self, loaded: Any, config: EngineConfig, runner: ModelRunner, prefix: PrefixReuse,
                 emit: OutputCallback):
        """``emit`` receives the deltas of requests that end outside a step's output (aborts, failures)."""
        self.loaded, self.config, self.runner, self.prefix, self.emit = loaded, config, runner, prefix, emit
        self.scheduler = Scheduler(config.max_num_seqs, config.max_num_batched_tokens, config.deterministic,
                                   on_admit=prefix.restore if prefix.cache is not None else None)
        self.scheduler.can_admit = AdapterAdmission(runner.adapters, self.scheduler, self.fail)
        self.counters = EngineCounters()
        self.memory_limit = int(device_memory_bytes() * 0.9)
        self.vocab_size = probe_vocab_size(loaded.model)
        self._eos_ids = set(loaded.tokenizer.eos_token_ids)
        self.sampler = RowSampler(self.vocab_size)
        self.speculator: Speculator | None = None
        if config.speculative != "off":
            proposer = make_proposer(loaded, config, self.vocab_size, runner, prefix.cache)
            self.speculator = Speculator(config.num_speculative_tokens, proposer, self.vocab_size)
        self.profile: StepProfile | None = None  # set to time each step's phases (`vllm-mlx bench rows --profile`)
        # The step record's parts gathered since the last record (see :meth:`take_record`).
        self.record_tokens = False  # whether records carry the decode tokens (a host read-back per step)
        self._events, self._finished, self._end_at = [], None, 0  # (types as in take_record)

    # -- requests ----------------------------------------------------------------------
    def add_safely(self, request: GenerationRequest) -> None:
        """A request that cannot even be queued fails alone."""
        try:
            self.add(request)
        except Exception as exc:
            logger.exception("request %s could not be queued", request.request_id)
            self.scheduler.remove_request(request.request_id)
            self.counters.failed += 1
            self.emit([GenerationOutput(request.request_id, index=i, finish_reason=FinishReason.ERROR,
                                        error=f"{type(exc).__name__}: {exc}") for i in range(request.sampling.n)])

    def add(self, request: GenerationRequest) -> None:
        seq = self._new_sequence(request)
        self._events.append(Added(request.request_id, seq.prompt_ids, request.sampling.n, list(request.checkpoints)))
        if not seq.prompt_ids:
            self.fail([seq], ValueError("the prompt has no tokens"))
            return
        seed = request.sampling.seed
        if seed is None and self.config.deterministic:
            seed = 0  # identical requests must give identical output, sampled ones included
        seq.rng_key = make_rng_key(seed)
        self.scheduler.add(seq)

    def _new_sequence(self, request: GenerationRequest, index: int = 0) -> Sequence:
        return Sequence(request, self._eos_ids, index)

    def abort(self, request_id: str) -> None:
        seqs = self.scheduler.find_all(request_id)
        if not seqs:
            return
        self._events.append(Aborted(request_id))
        self.drop(*seqs)
        self.counters.aborted += 1
        self.emit([self._finish(seq, FinishReason.ABORT) for seq in seqs])

    def finish_row(self, request_id: str, index: int) -> None:
        """A continuation its consumer ended (a stop string in its text): it stops as STOP, cached
        like any finished row; its final delta goes out (its consumer no longer reads it)."""
        seq = self.scheduler.find_row(request_id, index)
        if seq is None:
            return
        self._events.append(RowEnded(request_id, index, seq.output_ids if self.prefix.cache is not None else None))
        out = self._finish(seq, FinishReason.STOP)
        # with recurrent layers and a verify step in flight, the row's state is past its tokens
        if not (self.runner.recurrent and self.runner.rows["junk"] is not None):
            self.prefix.remember_finished(self.runner, [seq])
        self.drop(seq)
        self.counters.finished += 1
        self.emit([out])

    def abort_all(self) -> None:
        for seq in self.scheduler.all_sequences():
            self.abort(seq.request_id)

    def fail(self, seqs: list[Sequence], exc: BaseException) -> None:
        logger.exception("request(s) %s failed", [s.request_id for s in seqs], exc_info=exc)
        self._events.append(RowsFailed([(s.request_id, s.index) for s in seqs]))
        self.drop(*seqs)
        outputs = []
        for seq in seqs:
            out = self._finish(seq, FinishReason.ERROR)
            out.error = f"{type(exc).__name__}: {exc}"
            outputs.append(out)
        self.counters.failed += len(seqs)
        self.emit(outputs)

    def _finish(self, seq: Sequence, reason: FinishReason) -> GenerationOutput:
        out = seq.finish(reason)
        self.scheduler.finish(seq)
        return out

    def drop(self, *seqs: Sequence) -> None:
        """Take sequences out of the scheduler and the decode batch, freeing their caches."""
        if self.runner.remove_from_batch(set(seqs)):
            self.sampler.rows_changed()
        if self.speculator is not None:
            self.speculator.forget(list(seqs))
        for seq in seqs:
            self.scheduler.remove(seq)
            seq.cache = None

    def close(self) -> None:
        """End every request and let the batch arrays go (the engine is stopping)."""
        self.abort_all()
        self.runner.remove_from_batch(set(self.runner.batch_seqs))

    # -- the prefix cache ----------------------------------------------------------------
    def clear_prefix_cache(self) -> None:
        """Empty the prefix cache and, for a vision-language model, its vision-embedding cache."""
        self._events.append(CacheCleared())
        if self.prefix.cache is not None:
            self.prefix.cache.clear()
        if isinstance(self.loaded.model, VisionLanguageModel):
            self.loaded.model.embeddings.clear()

    def make_room(self) -> None:
        """The running batch comes first: cached blocks give way when memory runs short."""
        cache = self.prefix.cache
        if cache is not None and cache.stats.bytes:
            excess = mx.get_active_memory() - self.memory_limit
            if excess > 0:
                self.shrink_prefix_cache(int(excess))

    def shrink_prefix_cache(self, num_bytes: int) -> None:
        self._events.append(CacheShrunk(int(num_bytes)))
        self.prefix.cache.shrink(num_bytes)

    # -- the step ------------------------------------------------------------------------
    def step(self) -> list[GenerationOutput]:
        """Schedule and run one step; returns its deltas."""
        return self.execute(self.schedule()[0])

    def schedule(self) -> tuple[StepPlan, StepRecord]:
        """Make room and schedule a step: its plan, and its record (see :mod:`.step_record`)."""
        if self.profile is not None:
            self.profile.start()
        self.make_room()
        return self.plan_step()

    def plan_step(self) -> tuple[StepPlan, StepRecord]:
        """Schedule a step (room made, or not this core's to make) and record it."""
        plan = self.scheduler.schedule()
        record = self.take_record()
        runner = self.runner
        record.schedule = schedule_of(plan, self.scheduler, len(runner.batch_seqs))
        if self.record_tokens and runner.batch_seqs:
            record.tokens = runner.rows["tokens"].tolist()
        if self.profile is not None:
            self.profile.mark("schedule")
        return plan, record

    def take_record(self) -> StepRecord:
        """The events and step end gathered since the last record, as a record without a schedule."""
        record = StepRecord(self._events, self._finished, self._end_at)
        self._events, self._finished, self._end_at = [], None, 0
        return record

    def execute(self, plan: StepPlan, prepared: Any = None) -> list[GenerationOutput]:
        """Run a scheduled step; returns its deltas. A failing step fails its batch, not the engine."""
        try:
            outputs = self.run(plan, prepared)
        except Exception as exc:
            self.fail(list(self.runner.batch_seqs), exc)
            outputs = []
        self.counters.steps += 1
        return outputs

    def run(self, plan: StepPlan, prepared: Any = None) -> list[GenerationOutput]:
        """Launch decode step t+1, run prefill chunks, then read back and apply step t (``prepared``: a
        speculative step's host half, done before a distributed record went out)."""
        spec = self.speculator
        if spec is None:
            return self.run_pipelined(plan)
        generated = self.counters.generated - (prepared.read if prepared is not None else 0)
        rows, arm = len(self.runner.batch_seqs), spec.rates.launched
        if spec.active:
            outputs = spec.step(self, plan, prepared)
        else:
            outputs, spec.rates.launched = self.run_pipelined(plan), 0
        spec.observe(arm, self.counters.generated - generated, rows,  # arm: read back
                     bool(plan.prefill) or spec.prompt_work)
        if not spec.active and self.runner.batch_seqs:
            spec.active = spec.worth_trying(self.runner.batch_seqs)
        return outputs

    def run_pipelined(self, plan: StepPlan) -> list[GenerationOutput]:
        runner, prof = self.runner, self.profile
        previous_seqs, previous = list(runner.batch_seqs), runner.rows
        deferred = None
        if previous_seqs:
            if prof is not None:
                prof.decoded(len(previous_seqs))
            if any(s.steers_tokens for s in previous_seqs):
                # Masks for token t+1 need token t: run the forward now, sample after read-back.
                deferred = runner.decode()
                if prof is not None:
                    prof.mark("build")
                mx.async_eval([deferred, *runner.written()])
            else:
                runner.rows = self.sampler.next(previous_seqs, runner.decode(), runner.rows, pending_applied=False)
                if prof is not None:
                    prof.mark("build")
                mx.async_eval(runner.launched())
            if prof is not None:
                prof.mark("launch")
        prefilled = self.prefill(plan.prefill)
        if prof is not None:
            prof.mark("prefill")
        outputs, done = self.read_back(previous_seqs, previous)
        if deferred is not None:
            runner.rows = self.sampler.next(previous_seqs, deferred, runner.rows, pending_applied=True)
            mx.async_eval(runner.launched())
        self.retire(done)
        if prof is not None:
            prof.mark("post")
        for seqs, logits, merged in prefilled:
            self.join_isolated(seqs, logits, merged)
        if prof is not None:
            prof.mark("join")
        return outputs

    def retire(self, done: list[Sequence], unfed: int = 0, announce: bool = True) -> None:
        """The step's finished rows leave: cached (prompt + completion, less ``unfed`` newest tokens their
        cache lacks), then dropped. Called once per step, between reading tokens back and joining
        prefilled rows: the step's end (the next record names the rows unless this step's did: ``announce``)."""
        rows = finished_rows(done, self.prefix.cache is not None) if announce else []
        self._finished, self._end_at = rows, len(self._events)
        self.prefix.remember_finished(self.runner, done, unfed)
        self.drop(*done)
        self.counters.failed += (failed := sum(s.finish_reason is FinishReason.ERROR for s in done))  # grammars
        self.counters.finished += len(done) - failed

    def read_back(self, seqs: list[Sequence], rows: RowArrays) -> tuple[list[GenerationOutput], list[Sequence]]:
        """Apply the tokens sampled for ``seqs`` in the previous step: text, stops, logprobs."""
        if not seqs:
            return [], []
        prof = self.profile
        if prof is not None:
            mx.eval(rows["tokens"])
            prof.mark("wait")
        tokens = rows["tokens"].tolist()
        logprobs = [None] * len(seqs)
        if any(s.sampling.logprobs for s in seqs):
            values = rows["logprobs"].tolist()
            top = zip(rows["top_ids"].tolist(), rows["top_logprobs"].tolist()) if rows["top_ids"] is not None else None
            for i, (seq, tok, lp) in enumerate(zip(seqs, tokens, values)):
                alternatives = next(top) if top is not None else ((), ())
                if seq.sampling.logprobs:
                    k = seq.sampling.top_logprobs
                    logprobs[i] = TokenLogprob(tok, lp, tuple(zip(alternatives[0][:k], alternatives[1][:k])))
        if prof is not None:
            prof.mark("read")
        accepted = self.speculator.read_accepted(seqs, rows) if rows["accepted"] is not None else None
        draft_logprobs = self.speculator.read_logprobs(seqs, rows, accepted) if accepted is not None else None
        outputs, done = [], []
        for i, (seq, tok, lp) in enumerate(zip(seqs, tokens, logprobs)):
            out = None
            for j, draft in enumerate(accepted[i] if accepted is not None else ()):  # a verify step's proposals
                dlp = draft_logprobs[i][j] if draft_logprobs is not None and draft_logprobs[i] else None
                delta = seq.append_token(draft, dlp)
                out = delta if out is None else out.merged_with(delta)
                self.counters.generated += 1
                if seq.finished:
                    break
            if not seq.finished:
                out = seq.append_token(tok, lp) if out is None else out.merged_with(seq.append_token(tok, lp))
                self.counters.generated += 1
            if out is not None:
                outputs.append(out)
            if seq.finished:
                self.scheduler.finish(seq)
                done.append(seq)
        return outputs, done

    # -- prefill ------------------------------------------------------------------------
    def prefill(self, chunks: list[tuple[Sequence, int]]) -> list[Prefilled]:
        """Advance prompt chunks; returns the groups of sequences whose prompt is done."""
        groups, together = [], set()
        if self.runner.can_prefill_together:
            whole = [seq for seq, n in chunks if seq.num_computed == 0 and n == seq.num_prompt_tokens
                     and seq.request.multimodal is None]
            for group in group_for_padding(whole):
                if len(group) < 2:
                    continue
                try:
                    cache, logits = self.runner.prefill_together(group)
                except Exception:  # retried one by one below, so a bad prompt fails alone
                    logger.warning("batched prefill failed; prefilling one by one", exc_info=True)
                    for seq in group:
                        seq.num_computed = 0
                    continue
                self.counters.prompt += sum(s.num_prompt_tokens for s in group)
                self.counters.together += len(group)
                self.prefix.remember_prompts(group, cache)
                groups.append((group, logits, cache))
                together.update(group)
        done, last_logits = [], []
        for seq, n in chunks:
            if seq in together:
                continue
            try:
                logits = self.prefix.prefill_chunk(self.runner, seq, n)
            except Exception as exc:
                self.fail([seq], exc)
                continue
            self.counters.prompt += n
            if logits is not None:
                self.prefix.remember(seq, seq.prefix_key, seq.cache)
                done.append(seq)
                last_logits.append(logits)
        if done:
            groups.append((done, mx.concatenate(last_logits, axis=0), None))
        return groups

    # -- joining the decode batch ---------------------------------------------------------
    def join_isolated(self, seqs: list[Sequence], logits: mx.array, merged: list | None) -> None:
        """Join prefilled rows to the batch; if the group fails, join them one by one so a bad row
        fails alone (with every continuation of its request) instead of taking its group down."""
        try:
            return self.join(seqs, logits, merged)
        except Exception as exc:
            if len(seqs) == 1:
                return self.fail(self.scheduler.find_all(seqs[0].request_id) or seqs, exc)
            logger.warning("joining %d prefilled rows failed; joining them one by one", len(seqs), exc_info=True)
        for i, seq in enumerate(seqs):
            if merged is not None:
                seq.cache = [c.extract(i) for c in merged]
            try:
                self.join([seq], logits[i:i + 1], None)
            except Exception as exc:
                self.fail(self.scheduler.find_all(seq.request_id) or [seq], exc)

    def join(self, seqs: list[Sequence], logits: mx.array, merged: list | None) -> None:
        """Sample the first tokens of freshly prefilled prompts and add them to the decode batch."""
        seqs, logits, merged = self._fork_n(seqs, logits, merged)
        rows = self.sample_first(seqs, logits)
        for seq in seqs:
            self.scheduler.mark_running(seq)
        self.runner.add_to_batch(seqs, rows, merged)
        self.sampler.rows_changed()

    def _fork_n(self, seqs: list[Sequence], logits: mx.array, merged: list | None) -> Prefilled:
        """Fork requests with n > 1 into n rows sharing one prefill (their logits and batch caches repeated)."""
        if all(s.sampling.n == 1 for s in seqs):
            return seqs, logits, merged
        rows, index = [], []
        for i, seq in enumerate(seqs):
            n = seq.sampling.n
            children = [self._new_sequence(seq.request, index=k) for k in range(1, n)]
            if children:
                keys = mx.random.split(seq.rng_key, n)
                self.scheduler.fork(seq, children, [keys[k] for k in range(1, n)])
            rows += [seq, *children]
            index += [i] * n
        picked = mx.array(index)
        if merged is not None:
            for c in merged:
                c.filter(picked)
        return rows, logits[picked], merged

    # -- sampling -----------------------------------------------------------------------
    def sample_first(self, seqs: list[Sequence], logits: mx.array) -> RowArrays:
        """The first token of each freshly prefilled row, as the rows' pending arrays (launched)."""
        rows = self.sampler.first(seqs, logits)
        mx.async_eval(rows.all())
        return rows
