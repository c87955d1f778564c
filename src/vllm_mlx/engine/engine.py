"""The engine: one dedicated thread owning the model, the scheduler and every MLX array.

MLX streams are thread-local, so the model is loaded and run on this thread
only. Other threads talk to it through a command queue (add/abort) and receive
:class:`GenerationOutput` deltas through the ``on_outputs`` callback, which is
called on the engine thread with every delta produced by one step.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import asdict
from typing import Any, Callable

import mlx.core as mx

from .detokenizer import IncrementalDetokenizer
from mlx_lm.models.cache import make_prompt_cache

from ..platform import device_memory_bytes
from .kv_estimate import kv_bytes_per_token
from .model_runner import ModelRunner
from .config import EngineConfig, EngineStats
from .constraints import allowed_tokens
from .prefix_cache import PrefixCache, build_prefix_cache
from .restore_check import RestoreChecker
from .request import FinishReason, GenerationOutput, GenerationRequest, TokenLogprob
from .rows import RowArrays
from .sampler import BatchSamplingParams, PenaltyState, SampleResult, make_rng_key, sample
from .scheduler import Scheduler, StepPlan
from .sequence import Sequence
from .vision_model import VisionLanguageModel

logger = logging.getLogger(__name__)

OutputCallback = Callable[[list[GenerationOutput]], None]


class LLMEngine:
    # How long an idle engine waits for a command before calling ``_on_idle`` (None: forever).
    idle_wait: float | None = None
    # Whether sampled cache restores may be re-checked with extra forwards (not across lockstep ranks).
    verifies_restores = True

    def __init__(self, load: Callable[[], Any], config: EngineConfig, on_outputs: OutputCallback):
        """``load`` runs on the engine thread and returns an object with ``model`` and ``tokenizer``."""
        self._load = load
        self.config = config
        self._on_outputs = on_outputs
        self._commands: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="vllm-mlx-engine", daemon=True)
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self.loaded: Any = None
        self.stats = EngineStats()
        self.step_started: float | None = None  # monotonic start of the step running now (for the watchdog)
        self.kv_bytes_per_token = 0  # measured after loading (for memory admission)
        self._counters = dict(finished=0, aborted=0, failed=0, prompt=0, generated=0, steps=0, together=0,
                              peak_active=0)

    # -- called from other threads ------------------------------------------
    def start(self, timeout: float | None = None) -> Any:
        """Start the thread, wait for the model to load; returns what ``load`` returned."""
        self._thread.start()
        self._ready.wait(timeout)
        if self._load_error is not None:
            raise self._load_error
        return self.loaded

    def add_request(self, request: GenerationRequest) -> None:
        self.add_requests([request])

    def add_requests(self, requests: list[GenerationRequest]) -> None:
        """Submit several requests at once: they are admitted in the same step."""
        self._commands.put(("add", requests))

    def abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id))

    def abort_all(self) -> None:
        """End every request now (each gets its final ABORT delta)."""
        self._commands.put(("abort_all", None))

    def clear_prefix_cache(self) -> None:
        self._commands.put(("clear_prefix_cache", None))

    def set_max_num_seqs(self, n: int) -> None:
        """Change the admission bound at run time; 1 serializes generation end to end (the next
        request is admitted only when the previous one has finished)."""
        self._commands.put(("max_num_seqs", max(int(n), 1)))

    def shutdown(self, timeout: float = 10.0) -> None:
        self._commands.put(("stop", None))
        if self._thread.is_alive():
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    # -- the engine thread ---------------------------------------------------
    def _setup(self) -> None:
        """Load the model and build the runner, prefix cache and scheduler (on the engine thread)."""
        self.loaded = self._load()
        tokenizer = self.loaded.tokenizer
        self._eos_ids = set(tokenizer.eos_token_ids)
        self._tokenizer = tokenizer
        self.runner = self._make_runner()
        self.prefix_cache = self._make_prefix_cache()
        self.restore_checker = None
        if self.prefix_cache is not None and self.config.verify_cache_restores > 0 and self.verifies_restores:
            self.restore_checker = RestoreChecker(self.loaded.model, self.config.verify_cache_restores,
                                                  self.config.kv_cache_bits, self.config.max_num_batched_tokens)
        self._memory_limit = int(device_memory_bytes() * 0.9)
        self.scheduler = Scheduler(
            self.config.max_num_seqs, self.config.max_num_batched_tokens, self.config.deterministic,
            on_admit=self._reuse_prefix if self.prefix_cache else None,
        )
        self.vocab_size = self._probe_vocab_size()
        self.kv_bytes_per_token = kv_bytes_per_token(self.loaded.model)
        self._batch_params: BatchSamplingParams | None = None

    def _make_runner(self) -> ModelRunner:
        return ModelRunner(self.loaded.model, self.config.deterministic)

    def _run(self) -> None:
        try:
            self._setup()
        except BaseException as exc:  # reported to start()
            self._load_error = exc
            self._ready.set()
            return
        self._publish_stats("ready")
        self._ready.set()
        try:
            while True:
                if not self._drain_commands(block=not self.scheduler.has_work):
                    break
                if self.scheduler.has_work:
                    self._step_safely()
                else:
                    self._on_idle()
        except BaseException as exc:  # a bug outside a step: fail every request loudly rather than hang them
            logger.exception("engine loop crashed; failing all requests")
            self._fail(self.scheduler.all_sequences(), RuntimeError(f"the engine stopped: {exc}"))
            self._publish_stats("failed")
            raise
        self._abort_all()
        self.runner = self._make_runner()  # release the batch arrays
        mx.synchronize()  # no MLX work may still be in flight when the thread ends
        mx.clear_streams()
        self._publish_stats("stopped")

    def _make_prefix_cache(self) -> PrefixCache | None:
        if not self.config.prefix_cache or self.config.deterministic:
            return None
        cache = build_prefix_cache(self.loaded, self.config)
        logger.info("prefix cache: %s mode, %d MB budget, %d-token blocks%s%s", cache.stats.mode,
                    cache.stats.budget_bytes >> 20, self.config.prefix_block_size,
                    f", {self.config.kv_cache_bits}-bit" if self.config.kv_cache_bits else "",
                    f", on disk in {cache.disk.folder}" if cache.disk else "")
        return cache

    def _reuse_prefix(self, seq: Sequence) -> None:
        """On admission: start the sequence from the longest cached prefix of its prompt.

        A hit that cannot be assembled (a bad cache file, a bug) costs only the reuse: the
        sequence is prefilled cold. A sample of hits is re-checked against a fresh prefill."""
        try:
            hit = self.prefix_cache.lookup(seq.prefix_key)
        except Exception:
            logger.warning("prefix-cache restore for %s failed; prefilling it cold", seq.request_id, exc_info=True)
            self.prefix_cache.stats.restore_failures += 1
            return
        if not hit.num_tokens:
            return
        seq.cache, seq.num_computed, seq.num_cached_tokens = hit.cache, hit.num_tokens, hit.num_tokens
        if self.restore_checker is not None and seq.request.multimodal is None:
            self.restore_checker.maybe_verify(seq, self.prefix_cache.stats)

    def _checkpoint_positions(self, seq: Sequence, end: int) -> list[int]:
        """Prompt positions in (computed, end) where a model with state layers saves a checkpoint."""
        if self.prefix_cache is None or self.prefix_cache.block_mode:
            return []
        start, stride = seq.num_computed, self.config.checkpoint_stride
        # Template boundaries, and one token before the prompt's end: an identical resend (a retry,
        # a regenerate) can reuse all but the token it must compute.
        cuts = {p for p in (*seq.request.checkpoints, seq.num_prompt_tokens - 1) if start < p < end}
        if stride > 0:
            cuts.update(range((start // stride + 1) * stride, end, stride))
        return sorted(p for p in cuts if p < seq.num_prompt_tokens)

    def _prefill_chunk(self, seq: Sequence, num_tokens: int) -> mx.array | None:
        """Prefill ``num_tokens`` more prompt tokens, stopping at checkpoint positions to save them.
        (A model may stop a chunk short of, or run it past, what was asked -- a vision model keeps an
        image whole -- so a checkpoint is saved only where the prefill really stopped.)"""
        end = seq.num_computed + num_tokens
        for cut in self._checkpoint_positions(seq, end):
            if cut > seq.num_computed:
                self.runner.prefill(seq, cut - seq.num_computed)
                if seq.num_computed == cut:
                    self._remember(seq.prefix_key[:cut], seq.cache)
        return self.runner.prefill(seq, end - seq.num_computed) if end > seq.num_computed else None

    def _remember(self, tokens: list[int], cache: list) -> None:
        if self.prefix_cache is not None:
            try:
                self.prefix_cache.insert(tokens, cache)
            except Exception:  # caching is an optimisation: never fail a request over it
                logger.warning("prefix cache insert failed", exc_info=True)

    def _remember_finished(self, done: list[Sequence]) -> None:
        """Cache prompt + completion of finished rows, so the next turn of a conversation hits."""
        if self.prefix_cache is None or self.runner.batch_cache is None:
            return
        rows = {s: i for i, s in enumerate(self.runner.batch_seqs)}
        for seq in done:
            if seq in rows and seq.finish_reason in (FinishReason.STOP, FinishReason.LENGTH):
                tokens = seq.prefix_key + seq.output_ids
                self._remember(tokens, [c.extract(rows[seq]) for c in self.runner.batch_cache])

    @property
    def _block_mode(self) -> bool:
        return self.prefix_cache is not None and self.prefix_cache.block_mode

    def _prefix_cache_stats(self) -> dict | None:
        cache = getattr(self, "prefix_cache", None)
        if cache is None:
            return None
        stats = asdict(cache.stats) | {"token_hit_rate": cache.stats.token_hit_rate}
        if cache.disk is not None:
            stats |= {"disk_writes": cache.disk.writes, "disk_reads": cache.disk.reads,
                      "disk_rejected": cache.disk.rejected, "disk_folder": str(cache.disk.folder)}
        return stats

    def _vision_stats(self) -> dict | None:
        model = getattr(self.loaded, "model", None)
        return model.stats() if isinstance(model, VisionLanguageModel) else None

    def _probe_vocab_size(self) -> int:
        """The logits width (may exceed the tokenizer's size); the one forward also warms the model up."""
        logits = self.loaded.model(mx.array([[0]]), cache=make_prompt_cache(self.loaded.model))
        return int(logits.shape[-1])

    def _drain_commands(self, block: bool) -> bool:
        """Apply queued commands; returns False when asked to stop."""
        while True:
            try:
                kind, arg = self._commands.get(block=block, timeout=self.idle_wait if block else None)
            except queue.Empty:
                return True
            block = False
            if kind == "stop":
                return False
            if kind == "add":
                for request in arg:
                    self._add_safely(request)
            elif kind == "abort":
                self._abort(arg)
            elif kind == "abort_all":
                self._abort_all()
            elif kind == "max_num_seqs":
                self.scheduler.max_num_seqs = arg
                self._counters["peak_active"] = 0  # the peak is measured under the new bound
                self._publish_stats()
            elif kind == "clear_prefix_cache":
                self._clear_prefix_cache()

    def _on_idle(self) -> None:
        """Called when a wait for commands ran out (``idle_wait``) with nothing to do."""

    def _clear_prefix_cache(self) -> None:
        """Empty the prefix cache and, for a vision-language model, its vision-embedding cache."""
        if self.prefix_cache is not None:
            self.prefix_cache.clear()
        if isinstance(self.loaded.model, VisionLanguageModel):
            self.loaded.model.embeddings.clear()
        self._publish_stats()

    def _new_sequence(self, request: GenerationRequest, index: int = 0) -> Sequence:
        detokenizer = IncrementalDetokenizer(self._tokenizer, request.prompt_token_ids,
                                             skip_special_tokens=not request.keep_special_tokens)
        return Sequence(request, detokenizer, self._eos_ids, index)

    def _add_safely(self, request: GenerationRequest) -> None:
        """A request that cannot even be queued fails alone; the loop goes on."""
        try:
            self._add(request)
        except Exception as exc:
            logger.exception("request %s could not be queued", request.request_id)
            self.scheduler.remove_request(request.request_id)
            self._counters["failed"] += 1
            self._emit([GenerationOutput(request.request_id, index=i, finish_reason=FinishReason.ERROR,
                                         error=f"{type(exc).__name__}: {exc}") for i in range(request.sampling.n)])

    def _add(self, request: GenerationRequest) -> None:
        seq = self._new_sequence(request)
        if not seq.prompt_ids:
            self._fail([seq], ValueError("the prompt has no tokens"))
            return
        seed = request.sampling.seed
        if seed is None and self.config.deterministic:
            seed = 0  # identical requests must give identical output, sampled ones included
        seq.rng_key = make_rng_key(seed)
        self.scheduler.add(seq)
        self._publish_stats()

    def _abort(self, request_id: str) -> None:
        seqs = self.scheduler.find_all(request_id)
        if not seqs:
            return
        self._drop(*seqs)
        self._counters["aborted"] += 1
        self._emit([self._finish(seq, FinishReason.ABORT) for seq in seqs])
        self._publish_stats()

    def _abort_all(self) -> None:
        for seq in self.scheduler.all_sequences():
            self._abort(seq.request_id)

    def _drop(self, *seqs: Sequence) -> None:
        """Take sequences out of the scheduler and the decode batch, freeing their caches."""
        if self.runner.remove_from_batch(set(seqs)):
            self._batch_params = None
        for seq in seqs:
            self.scheduler.remove(seq)
            seq.cache = None

    def _fail(self, seqs: list[Sequence], exc: BaseException) -> None:
        logger.exception("request(s) %s failed", [s.request_id for s in seqs], exc_info=exc)
        outputs = []
        self._drop(*seqs)
        for seq in seqs:
            out = self._finish(seq, FinishReason.ERROR)
            out.error = f"{type(exc).__name__}: {exc}"
            outputs.append(out)
        self._counters["failed"] += len(seqs)
        self._emit(outputs)

    def _finish(self, seq: Sequence, reason: FinishReason) -> GenerationOutput:
        out = seq.finish(reason)
        self.scheduler.finish(seq)
        return out

    def _make_room(self) -> None:
        """The running batch comes first: cached blocks give way when memory runs short."""
        if self.prefix_cache is not None and self.prefix_cache.stats.bytes:
            excess = mx.get_active_memory() - self._memory_limit
            if excess > 0:
                self.prefix_cache.shrink(excess)

    def _step_safely(self) -> None:
        self.step_started = time.monotonic()
        try:
            self._step_and_publish()
        finally:
            self.step_started = None

    def _step_and_publish(self) -> None:
        self._make_room()
        plan = self.scheduler.schedule()
        try:
            outputs = self._step(plan)
        except Exception as exc:  # a failing batch must not take the engine down
            self._fail(list(self.runner.batch_seqs), exc)
            outputs = []
        self._counters["steps"] += 1
        self._emit(outputs)
        self._publish_stats()

    def _step(self, plan: StepPlan) -> list[GenerationOutput]:
        """Launch decode step t+1, run prefill chunks, then read back and apply step t."""
        runner = self.runner
        previous_seqs, previous = list(runner.batch_seqs), runner.rows
        deferred = None
        if previous_seqs:
            if any(s.steers_tokens for s in previous_seqs):
                # Grammar masks for token t+1 need token t: run the forward now, sample after read-back.
                deferred = runner.decode()
                mx.async_eval(deferred)
            else:
                runner.rows = self._sample_decode(previous_seqs, runner.decode(), pending_applied=False)
        prefilled = self._prefill(plan.prefill)
        outputs, done = self._read_back(previous_seqs, previous)
        if deferred is not None:
            runner.rows = self._sample_decode(previous_seqs, deferred, pending_applied=True)
        self._remember_finished(done)
        self._drop(*done)
        self._counters["failed"] += (failed := sum(s.finish_reason is FinishReason.ERROR for s in done))  # grammars
        self._counters["finished"] += len(done) - failed
        for seqs, logits, merged in prefilled:
            self._join_isolated(seqs, logits, merged)
        return outputs

    def _join_isolated(self, seqs: list[Sequence], logits: mx.array, merged: list | None) -> None:
        """Join prefilled rows to the batch; if the group fails, join them one by one so a bad row
        fails alone (with every continuation of its request) instead of taking its group down."""
        try:
            return self._join(seqs, logits, merged)
        except Exception as exc:
            if len(seqs) == 1:
                return self._fail(self.scheduler.find_all(seqs[0].request_id) or seqs, exc)
            logger.warning("joining %d prefilled rows failed; joining them one by one", len(seqs), exc_info=True)
        for i, seq in enumerate(seqs):
            if merged is not None:
                seq.cache = [c.extract(i) for c in merged]
            try:
                self._join([seq], logits[i:i + 1], None)
            except Exception as exc:
                self._fail(self.scheduler.find_all(seq.request_id) or [seq], exc)

    def _sample_decode(self, seqs: list[Sequence], logits: mx.array, pending_applied: bool) -> RowArrays:
        """Sample every row's next token from the decode logits; ``pending_applied``: the tokens that
        were fed this step are already appended to the sequences (the deferred, constrained path)."""
        rows = self.runner.rows
        if self._batch_params is None:
            self._batch_params = self._params_for(seqs)
            if not self._batch_params.uses_penalties:
                rows["counts"] = rows["in_prompt"] = None
        params = self._batch_params
        penalties = None
        if params.uses_penalties:
            penalties = PenaltyState(rows["counts"], rows["in_prompt"])
            penalties.add_tokens(rows["tokens"])
        fed = 0 if pending_applied else 1
        generated = [len(s.output_ids) + fed for s in seqs] if params.min_tokens else None
        allowed = allowed_tokens([s.next_token_rule for s in seqs], self.vocab_size)
        result = sample(logits, params, rows["keys"], penalties, generated, allowed)
        return self._pending_rows(result, penalties)

    def _params_for(self, seqs: list[Sequence]) -> BatchSamplingParams:
        return BatchSamplingParams.from_params([s.sampling for s in seqs], self.vocab_size, [s.stop_ids for s in seqs])

    @staticmethod
    def _pending_rows(result: SampleResult, penalties: PenaltyState | None) -> RowArrays:
        rows = RowArrays(
            result.tokens.shape[0],
            tokens=result.tokens, keys=result.keys, logprobs=result.logprobs,
            top_ids=result.top_ids, top_logprobs=result.top_logprobs,
            counts=penalties.counts if penalties else None, in_prompt=penalties.in_prompt if penalties else None,
        )
        mx.async_eval(rows.all())
        return rows

    def _read_back(self, seqs: list[Sequence], rows: RowArrays) -> tuple[list[GenerationOutput], list[Sequence]]:
        """Apply the tokens sampled for ``seqs`` in the previous step: text, stops, logprobs."""
        if not seqs:
            return [], []
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
        outputs, done = [], []
        for seq, tok, lp in zip(seqs, tokens, logprobs):
            out = seq.append_token(tok, lp)
            if out is not None:
                outputs.append(out)
            if seq.finished:
                self.scheduler.finish(seq)
                done.append(seq)
        self._counters["generated"] += len(seqs)
        return outputs, done

    def _join(self, seqs: list[Sequence], logits: mx.array, merged: list | None) -> None:
        """Sample the first tokens of freshly prefilled prompts and add them to the decode batch."""
        seqs, logits, merged = self._expand_n(seqs, logits, merged)
        rows = self._sample_first(seqs, logits)
        for seq in seqs:
            self.scheduler.mark_running(seq)
        self.runner.add_to_batch(seqs, rows, merged)
        self._batch_params = None

    def _sample_first(self, seqs: list[Sequence], logits: mx.array) -> RowArrays:
        """The first token of each freshly prefilled row, as the rows' pending arrays."""
        params = self._params_for(seqs)
        penalties = None
        if params.uses_penalties:
            penalties = PenaltyState.for_prompts([s.prompt_ids for s in seqs], self.vocab_size)
        generated = [0] * len(seqs) if params.min_tokens else None
        allowed = allowed_tokens([s.next_token_rule for s in seqs], self.vocab_size)
        result = sample(logits, params, mx.stack([s.rng_key for s in seqs]), penalties, generated, allowed)
        return self._pending_rows(result, penalties)

    def _expand_n(self, seqs: list[Sequence], logits: mx.array, merged: list | None):
        """Fork requests with n > 1 into n rows sharing one prefill."""
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

    def _prefill(self, chunks: list[tuple[Sequence, int]]) -> list[tuple[list[Sequence], mx.array, list | None]]:
        """Advance prompt chunks. Returns groups of sequences whose prompt is done:
        (sequences, their last logits, their batch caches if prefilled together else None).
        """
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
                self._counters["prompt"] += sum(s.num_prompt_tokens for s in group)
                self._counters["together"] += len(group)
                for i, seq in enumerate(group):
                    if seq.num_prompt_tokens >= self.config.prefix_block_size or not self._block_mode:
                        self._remember(seq.prompt_ids, [c.extract(i) for c in cache])
                groups.append((group, logits, cache))
                together.update(group)
        done, last_logits = [], []
        for seq, n in chunks:
            if seq in together:
                continue
            try:
                logits = self._prefill_chunk(seq, n)
            except Exception as exc:
                self._fail([seq], exc)
                continue
            self._counters["prompt"] += n
            if logits is not None:
                self._remember(seq.prefix_key, seq.cache)
                done.append(seq)
                last_logits.append(logits)
        if done:
            groups.append((done, mx.concatenate(last_logits, axis=0), None))
        return groups

    def _emit(self, outputs: list[GenerationOutput]) -> None:
        if not outputs:
            return
        try:
            self._on_outputs(outputs)
        except Exception:
            logger.exception("output callback failed")

    def _publish_stats(self, state: str | None = None) -> None:
        c = self._counters
        sched = self.scheduler
        c["peak_active"] = max(c["peak_active"], len(sched.running) + len(sched.prefilling))
        self.stats = EngineStats(
            running=len(sched.running),
            prefilling=len(sched.prefilling),
            waiting=len(sched.waiting),
            requests_finished=c["finished"],
            requests_aborted=c["aborted"],
            requests_failed=c["failed"],
            prompt_tokens=c["prompt"],
            generation_tokens=c["generated"],
            prompts_prefilled_together=c["together"],
            prefix_cache=self._prefix_cache_stats(),
            vision_cache=self._vision_stats(),
            steps=c["steps"],
            state=state or self.stats.state,
            batch_rows=len(self.runner.batch_seqs),
            max_num_seqs=sched.max_num_seqs,
            peak_active=c["peak_active"],
        )


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

