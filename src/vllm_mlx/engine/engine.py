"""The engine: one dedicated thread owning the model, the scheduler and every MLX array.

MLX streams are thread-local, so the model is loaded and run on this thread
only. Other threads talk to it through a command queue (add/abort) and receive
:class:`GenerationOutput` deltas through the ``on_outputs`` callback, which is
called on the engine thread with every delta produced by one step.

:class:`LLMEngine` is the thread host: it loads the model, applies commands,
runs steps while there is work (:class:`~.core.EngineCore` does the step),
publishes :class:`EngineStats` after each, and fails every request loudly if
the loop itself breaks. Processes that must run every step with it (a
distributed rank 0's followers) plug in as its :class:`StepPeers`.
"""

from __future__ import annotations

import dataclasses
import logging
import queue
import threading
import time
from contextlib import AbstractContextManager, nullcontext
from typing import Any, Callable, Protocol

import mlx.core as mx

from ..models.cpu_decode import swap_cpu_decode_modules
from ..models.position_states import keep_position_states
from ..models.row_lengths import honour_row_lengths
from .config import EngineConfig, EngineStats
from .core import EngineCore, OutputCallback
from .drafters import chosen_method
from .kv_estimate import kv_bytes_per_token
from .lora import serve_adapters
from .model_runner import ModelRunner
from .mtp import serve_with_head
from .prefix_cache import PrefixCache
from .prefix_reuse import PrefixReuse, make_prefix_cache
from .request import FinishReason, GenerationOutput, GenerationRequest
from .step_record import StepRecord
from .vision_model import VisionLanguageModel

logger = logging.getLogger(__name__)


class StepPeers(Protocol):
    """Processes that run every step of an engine with it: a distributed rank 0's followers
    (:class:`~.distributed.Followers`). The engine, on its thread, tells them its prefix cache's
    budget once, each step's :class:`~.step_record.StepRecord` before the step runs, a record of the
    events since while idle (every ``idle_wait`` seconds), and its stop -- each under :meth:`guard`,
    as is each step."""

    idle_wait: float | None
    lost: bool  # they are gone: the engine is no longer alive

    def share_cache_budget(self, budget: int | None) -> None: ...

    def send(self, record: StepRecord) -> None: ...

    def stop(self) -> None: ...

    def guard(self, what: str) -> AbstractContextManager[None]: ...

    def ended(self, exc: BaseException) -> bool:
        """The engine loop broke with ``exc`` (its requests already failed); True: handled here."""
        ...


class LLMEngine:
    # How long an idle engine waits for a command before calling ``_on_idle`` (None: forever).
    idle_wait: float | None = None
    # Whether sampled cache restores may be re-checked with extra forwards (not across lockstep ranks).
    verifies_restores = True
    runner_class = ModelRunner

    def __init__(self, load: Callable[[], Any], config: EngineConfig, on_outputs: OutputCallback,
                 peers: StepPeers | None = None):
        """``load`` runs on the engine thread and returns an object with ``model`` and ``tokenizer``;
        ``peers``: processes that run every step with this engine (see :class:`StepPeers`)."""
        self._load = load
        self.peers = peers
        if peers is not None:
            self.idle_wait = peers.idle_wait
        self.config = config
        self._on_outputs = on_outputs
        self._commands: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="vllm-mlx-engine", daemon=True)
        self._ready = threading.Event()
        self._load_error: BaseException | None = None
        self.loaded: Any = None
        self.core: EngineCore | None = None  # built on the engine thread once the model is loaded
        self.stats = EngineStats()
        self.step_started: float | None = None  # monotonic start of the step running now (for the watchdog)
        self.kv_bytes_per_token = 0  # measured after loading (for memory admission)

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

    def finish_row(self, request_id: str, index: int) -> None:
        """End one continuation as STOP (its consumer found a stop string in its text)."""
        self._commands.put(("finish_row", (request_id, index)))

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
        return self._thread.is_alive() and not (self.peers is not None and self.peers.lost)

    def fail_in_flight(self, error: str) -> None:
        """End every request in flight with ``error`` now and report the engine failed -- from another
        thread, while the engine thread is stuck (best effort: the process ends after)."""
        try:
            outputs = []
            for seq in self.core.scheduler.all_sequences():
                out = seq.finish(FinishReason.ERROR)
                out.error = error
                outputs.append(out)
            self._emit(outputs)
            self._publish_stats("failed")
        except Exception:
            logger.exception("could not fail the requests in flight")

    @property
    def prefix_cache(self) -> PrefixCache | None:
        return None if self.core is None else self.core.prefix.cache

    @property
    def vocab_size(self) -> int:
        """The logits width (known once the model is loaded)."""
        return self.core.vocab_size

    # -- the engine thread ---------------------------------------------------
    def _setup(self) -> None:
        """Load the model and build the core: runner, prefix cache, scheduler (on the engine thread)."""
        self.loaded = self._load()
        module = getattr(self.loaded.model, "vlm", self.loaded.model)  # vision: the mlx-vlm module it drives
        honour_row_lengths(module)  # recurrent layers a speculative rollback can re-run right-padded
        keep_position_states(module)  # ... or that keep each verified position's state (no re-run)
        swapped = swap_cpu_decode_modules(module)
        if swapped:
            logger.info("CPU backend: %d norm, RoPE and linear modules take their decode-step forms", swapped)
        model = self.loaded.model
        self.config = dataclasses.replace(self.config, speculative=chosen_method(self.config, model))
        if self.config.speculative == "mtp":  # its cache and forwards carry the MTP head's
            self.loaded.model = serve_with_head(self.loaded)
        runner = self.runner_class(self.loaded.model, self.config.deterministic)
        if self.config.loras:
            runner.adapters = serve_adapters(model, self.config.loras, self.config.max_loras)
        prefix = PrefixReuse(self._make_prefix_cache(), self.config,
                             self.loaded.model if self.verifies_restores else None)
        if runner.adapters is not None:
            prefix.namespaces = runner.adapters.namespaces
        self.core = self._make_core(runner, prefix)
        self.kv_bytes_per_token = kv_bytes_per_token(self.loaded.model)
        proposer = self.core.speculator.proposer if self.core.speculator is not None else None
        if proposer is not None and proposer.method == "draft":  # a draft keeps every row's keys and values too
            self.kv_bytes_per_token += kv_bytes_per_token(proposer.model)

    def _make_prefix_cache(self) -> PrefixCache | None:
        cache = make_prefix_cache(self.loaded, self.config)
        if self.peers is not None:  # theirs evict as this one does: the same budget
            self.peers.share_cache_budget(cache.stats.budget_bytes if cache is not None else None)
        return cache

    def _make_core(self, runner: ModelRunner, prefix: PrefixReuse) -> EngineCore:
        core = EngineCore(self.loaded, self.config, runner, prefix, self._emit)
        core.record_tokens = self.peers is not None  # peers feed this engine's tokens to their forwards
        return core

    def _guard(self, what: str) -> AbstractContextManager[None]:
        return nullcontext() if self.peers is None else self.peers.guard(what)

    def _run(self) -> None:
        try:
            self._setup()
        except BaseException as exc:  # reported to start()
            self._load_error = exc
            self._ready.set()
            return
        self._publish_stats("ready")
        self._ready.set()
        scheduler = self.core.scheduler
        try:
            while True:
                if not self._drain_commands(block=not scheduler.has_work):
                    break
                if scheduler.has_work:
                    self._step_safely()
                else:
                    self._on_idle()
        except BaseException as exc:  # a bug outside a step: fail every request loudly rather than hang them
            logger.exception("engine loop crashed; failing all requests")
            self.core.fail(scheduler.all_sequences(), RuntimeError(f"the engine stopped: {exc}"))
            self._publish_stats("failed")
            if self.peers is not None and self.peers.ended(exc):
                return
            raise
        self.core.close()  # every request ends; the batch arrays go
        mx.synchronize()  # no MLX work may still be in flight when the thread ends
        mx.clear_streams()
        self._publish_stats("stopped")

    def _drain_commands(self, block: bool) -> bool:
        """Apply queued commands; returns False when asked to stop."""
        while True:
            try:
                kind, arg = self._commands.get(block=block, timeout=self.idle_wait if block else None)
            except queue.Empty:
                return True
            block = False
            if kind == "stop":
                if self.peers is not None:
                    with self._guard("the stop message"):
                        self.peers.stop()
                return False
            if kind == "add":
                for request in arg:
                    self.core.add_safely(request)
                    self._publish_stats()
            elif kind == "abort":
                self.core.abort(arg)
                self._publish_stats()
            elif kind == "finish_row":
                self.core.finish_row(*arg)
                self._publish_stats()
            elif kind == "abort_all":
                self.core.abort_all()
                self._publish_stats()
            elif kind == "max_num_seqs":
                self.core.scheduler.max_num_seqs = arg
                self.core.counters.peak_active = 0  # the peak is measured under the new bound
                self._publish_stats()
            elif kind == "clear_prefix_cache":
                self.core.clear_prefix_cache()
                self._publish_stats()

    def _on_idle(self) -> None:
        """Called when a wait for commands ran out (``idle_wait``) with nothing to do: the peers hear
        of the events since (a heartbeat)."""
        if self.peers is not None:
            with self._guard("a heartbeat"):
                self.peers.send(self.core.take_record())

    def _step_safely(self) -> None:
        self.step_started = time.monotonic()
        try:
            with self._guard("an engine step"):
                self._emit(self._step())
                self._publish_stats()
        finally:
            self.step_started = None

    def _step(self) -> list[GenerationOutput]:
        """One step: ``core.schedule()`` then ``core.execute(plan)``; the peers get the step's record
        between the two (a speculative step reads back and proposes first: they feed the same)."""
        if self.peers is None:
            return self.core.step()
        plan, record = self.core.schedule()
        spec, prepared = self.core.speculator, None
        if spec is not None and spec.active:
            prepared = spec.prepare(self.core)
            record.speculative = prepared.record(self.core.prefix.cache is not None)
        self.peers.send(record)
        return self.core.execute(plan, prepared)

    def _emit(self, outputs: list[GenerationOutput]) -> None:
        if not outputs:
            return
        try:
            self._on_outputs(outputs)
        except Exception:
            logger.exception("output callback failed")

    def _publish_stats(self, state: str | None = None) -> None:
        c = self.core.counters
        sched = self.core.scheduler
        c.peak_active = max(c.peak_active, len(sched.running) + len(sched.prefilling))
        model = getattr(self.loaded, "model", None)
        self.stats = EngineStats(
            running=len(sched.running),
            prefilling=len(sched.prefilling),
            waiting=len(sched.waiting),
            requests_finished=c.finished,
            requests_aborted=c.aborted,
            requests_failed=c.failed,
            prompt_tokens=c.prompt,
            generation_tokens=c.generated,
            prompts_prefilled_together=c.together,
            prefix_cache=self.core.prefix.stats(),
            vision_cache=model.stats() if isinstance(model, VisionLanguageModel) else None,
            steps=c.steps,
            state=state or self.stats.state,
            batch_rows=len(self.core.runner.batch_seqs),
            max_num_seqs=sched.max_num_seqs,
            peak_active=c.peak_active,
            speculative=None if self.core.speculator is None else self.core.speculator.report(),
            lora=None if self.core.runner.adapters is None else self.core.runner.adapters.stats(),
        )
