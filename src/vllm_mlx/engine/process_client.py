"""The API process's handle of the engine process (``--engine-process``): the interface
:class:`~.async_engine.AsyncEngine` uses of :class:`~.engine.LLMEngine`, with the engine in a child
process (:mod:`.process_main`) that owns the model, the scheduler, the prefix cache and the sampler.

Commands go out on one pyzmq socket, events come back on another (msgspec messages,
:mod:`.ipc_messages`); an I/O thread reads the events and watches the child. When the child dies (a
kill, a segfault, an out-of-memory kill) every request in flight gets an ERROR delta, ``alive`` is
False and ``problem`` says why, and the child is started again after a backoff -- up to
``max_restarts`` times in a row (a run of ``STABLE_S`` seconds ends a row; a distributed rank 0 is
not restarted: its ``on_death`` ends the job). The child exits by itself when the API process is
gone; it ignores SIGINT and SIGTERM (its lifetime is the API process's). The child itself, its
sockets and its start are in :mod:`.process_child`.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import os
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

import zmq

from .config import EngineConfig, EngineStats
from .ipc_messages import (Abort, AbortAll, AddRequests, ClearPrefixCache, Codec, FinishRow, LoadFailed, Ready,
                           SetMaxNumSeqs, StepOutputs, Stop, generation_output, request_msg)
from .process_child import Child, describe_exit, spawn
from .process_main import ProcessArgs, StepClock
from .request import FinishReason, GenerationOutput, GenerationRequest

logger = logging.getLogger(__name__)

BACKOFF_S = 0.5  # wait before the first restart; doubled for each further restart in a row
BACKOFF_MAX_S = 30.0
STABLE_S = 60.0  # an engine process that ran this long ends a row of restarts


@dataclass(frozen=True)
class BackendText:
    """The engine process's backend, as its description (what the API process reports of it)."""

    text: str

    def describe(self) -> str:
        return self.text


@dataclass(frozen=True)
class PrefixCacheInfo:
    """What the API process knows of the engine process's prefix cache."""

    block_mode: bool


class EngineProcess:
    """Drop-in for LLMEngine under AsyncEngine, with the engine in its own process."""

    remote = True  # requests carry output constraints as specs (the engine process compiles them)

    def __init__(self, load: Callable[[], Any], engine_load: Callable[[], Any] | None, config: EngineConfig,
                 on_outputs: Callable[[list[GenerationOutput]], None], max_restarts: int = 3,
                 log_level: str = "info", setup: Callable[[], Any] | None = None,
                 on_death: Callable[[str], None] | None = None):
        """``load`` runs here and returns the model's metadata (tokenizer, config, no weights);
        ``engine_load`` (picklable) loads the model in the engine process -- or ``setup`` (picklable)
        sets up its engine there (:class:`~.process_main.EngineSetup`). ``on_death``: called with the
        reason, instead of a restart, once the requests in flight have failed (a distributed rank 0,
        whose group cannot be joined again, ends its job)."""
        self._load = load
        self._engine_load = engine_load
        self._setup = setup
        self._on_death = on_death
        self.config = config
        self._on_outputs = on_outputs
        self.max_restarts = max_restarts
        self._log_level = log_level
        self._zmq = zmq.Context()
        self._codec = Codec()
        self._lock = threading.Lock()  # the command socket, the in-flight table, the state
        self._inflight: dict[str, set[int]] = {}  # request id -> indices of continuations not finished
        self._child: Child | None = None
        self._alive = False
        self._stop = threading.Event()
        self._started = threading.Event()
        self._start_error: str | None = None
        self._load_failure: str | None = None
        self._ready: Ready | None = None  # the latest engine process's
        self._in_a_row = 0  # restarts since the engine last ran STABLE_S
        self._max_num_seqs: int | None = None  # set at run time: applied again after a restart
        self._step_clock: StepClock | None = None
        self._io = threading.Thread(target=self._run, name="vllm-mlx-engine-io", daemon=True)
        self.loaded: Any = None
        self.core = None  # the core lives in the engine process
        self.stats = EngineStats()
        self.kv_bytes_per_token = 0
        self.vocab_size = 0
        self.restarts = 0
        self.problem: str | None = None  # why the engine is not serving now
        self.prefix_cache: PrefixCacheInfo | None = None

    # -- the LLMEngine interface ---------------------------------------------------------
    def start(self, timeout: float | None = None) -> Any:
        """Start the engine process, load the metadata here meanwhile, wait for its model to load.
        A model that cannot load fails with the engine process's error (as in-process)."""
        self._child = self._spawn()
        # an interpreter exiting without shutdown() (a failed startup) stops it too
        atexit.register(self.shutdown, 5.0)
        self._io.start()
        try:
            loaded, failure = self._load(), None
        except Exception as exc:
            loaded, failure = None, exc
        self._started.wait(timeout)
        if self._start_error is not None:
            raise RuntimeError(self._start_error)
        if failure is not None:
            raise failure
        self.loaded = loaded
        if self._ready is not None:
            self._apply_ready(self._ready)
        return loaded

    def add_request(self, request: GenerationRequest) -> None:
        self.add_requests([request])

    def add_requests(self, requests: list[GenerationRequest]) -> None:
        """Submit several requests at once; one that cannot cross (a seed beyond 64 bits) fails alone."""
        msgs = self._crossing([(r, None) for r in requests])
        try:
            payload = self._codec.encode(AddRequests([m for _, m in msgs]))
        except (TypeError, ValueError, OverflowError):
            msgs = self._crossing(msgs, encode=True)
            payload = self._codec.encode(AddRequests([m for _, m in msgs]))
        with self._lock:
            if self._alive and msgs:
                for r, _ in msgs:
                    self._inflight[r.request_id] = set(range(r.sampling.n))
                self._child.commands.send(payload)
                return
        if msgs:
            self._fail_now([r for r, _ in msgs], self.problem or "the engine process is not running")

    def _crossing(self, pairs: list, encode: bool = False) -> list:
        """(request, its message) for the requests that convert (and encode); the others fail now."""
        out = []
        for r, msg in pairs:
            try:
                msg = msg or request_msg(r)
                if encode:
                    self._codec.encode(msg)
                out.append((r, msg))
            except (TypeError, ValueError, OverflowError) as exc:
                self._fail_now([r], f"{type(exc).__name__}: {exc}")
        return out

    def _fail_now(self, requests: list[GenerationRequest], error: str) -> None:
        self._on_outputs([GenerationOutput(r.request_id, index=i, finish_reason=FinishReason.ERROR, error=error)
                          for r in requests for i in range(r.sampling.n)])

    def abort(self, request_id: str) -> None:
        self._send(Abort(request_id))

    def finish_row(self, request_id: str, index: int) -> None:
        self._send(FinishRow(request_id, index))

    def abort_all(self) -> None:
        self._send(AbortAll())

    def clear_prefix_cache(self) -> None:
        self._send(ClearPrefixCache())

    def set_max_num_seqs(self, n: int) -> None:
        self._max_num_seqs = max(int(n), 1)
        self._send(SetMaxNumSeqs(self._max_num_seqs))

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop the engine process (its requests end with ABORT deltas); kill it if it does not stop."""
        if self._stop.is_set():
            return
        atexit.unregister(self.shutdown)
        self._stop.set()
        with self._lock:  # a restart under way either has its new child here or sees the stop
            child = self._child
        self._send(Stop())
        if child is not None:
            child.kill(after=timeout)
        if self._io.is_alive():
            self._io.join(10)
        if child is not None:
            child.close()
        self._zmq.destroy(linger=0)

    @property
    def alive(self) -> bool:
        return self._alive

    @property
    def step_started(self) -> float | None:
        """Monotonic start of the step the engine process runs now (the clock is system-wide)."""
        clock = self._step_clock
        return None if clock is None else (clock.value or None)

    @property
    def pid(self) -> int | None:
        child = self._child
        return None if child is None else child.process.pid

    # -- the engine process ----------------------------------------------------------------
    def _send(self, message) -> None:
        with self._lock:
            if self._child is not None and self._child.process.poll() is None:
                self._child.commands.send(self._codec.encode(message))

    def _spawn(self) -> Child:
        args = ProcessArgs(self._engine_load, self.config, tempfile.mkdtemp(prefix="vllm-mlx-engine-"),
                           os.getpid(), self._log_level, self._setup)
        self._step_clock = StepClock(args.clock_path, create=True)
        return spawn(self._zmq, args)

    def _run(self) -> None:
        """The I/O thread: events in; a dead engine process is reported and started again."""
        child = self._child
        while child is not None:
            code = self._serve(child)
            reason = describe_exit(code)
            with self._lock:
                self._alive = False
                self._step_clock.value = 0.0  # (the map outlives its file)
                lost, self._inflight = self._inflight, {}
            child.close()
            if not self._started.is_set():  # the first load failed: start() reports it
                self._start_error = self._load_failure or f"the engine process ended ({reason}) before loading"
                self._started.set()
                return
            message = "the engine stopped" if self._stop.is_set() else f"the engine process died ({reason})"
            self._fail(lost, message)
            if self._stop.is_set():
                return
            if self._on_death is not None:
                self._down(message, "failed")
                self._on_death(reason)
                return
            try:
                child = self._restart(child, reason)
            except Exception as exc:  # e.g. no process could be started: the engine stays down, saying why
                logger.exception("the engine process could not be restarted")
                self._down(f"the engine process died ({reason}) and could not be restarted: {exc}", "failed")
                return

    def _serve(self, child: Child) -> int | None:
        """Read events until the engine process ends; returns its exit code."""
        poller = zmq.Poller()
        poller.register(child.events, zmq.POLLIN)
        poller.register(child.exited, zmq.POLLIN)
        while True:
            ready = dict(poller.poll(1000))
            if child.events in ready:
                self._drain(child)
            if child.exited in ready:
                code = child.process.wait()
                self._drain(child)  # what it sent before it ended
                return code

    def _drain(self, child: Child) -> None:
        while True:
            try:
                frame = child.events.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            try:
                event = self._codec.events.decode(frame.buffer)
            except Exception:  # never expected; a bad message must not end the I/O thread
                logger.exception("undecodable message from the engine process")
                continue
            if isinstance(event, StepOutputs):
                self._deliver(event)
            elif isinstance(event, Ready):
                self._on_ready(child, event)
            elif isinstance(event, LoadFailed):
                self._load_failure = event.error

    def _deliver(self, event: StepOutputs) -> None:
        outputs = [generation_output(m) for m in event.outputs]
        with self._lock:
            for out in outputs:
                if out.finish_reason is None:
                    continue
                left = self._inflight.get(out.request_id)
                if left is None:
                    continue
                left.discard(out.index)
                # an error or abort ends the whole request (its consumer stops at the first one)
                if not left or out.finish_reason in (FinishReason.ERROR, FinishReason.ABORT):
                    del self._inflight[out.request_id]
            self.stats = dataclasses.replace(event.stats, pid=self.pid, restarts=self.restarts, problem=None)
        if outputs:
            try:
                self._on_outputs(outputs)
            except Exception:
                logger.exception("output callback failed")

    def _apply_ready(self, event: Ready) -> None:
        self.vocab_size, self.kv_bytes_per_token = event.vocab_size, event.kv_bytes_per_token
        self.config = dataclasses.replace(self.config, speculative=event.speculative)  # auto, as chosen there
        self.prefix_cache = None if event.prefix_block_mode is None else PrefixCacheInfo(event.prefix_block_mode)
        if self.loaded is not None:
            self.loaded.weight_bytes = event.weight_bytes
            self.loaded.weight_dtypes = dict(event.weight_dtypes)
            self.loaded.backend = BackendText(event.backend) if event.backend else None

    def _on_ready(self, child: Child, event: Ready) -> None:
        self._ready = event
        self._apply_ready(event)  # (before the first start() returns, start() applies it to what it loaded)
        with self._lock:
            child.ready_at = time.monotonic()
            self.problem = None
            self._alive = True
            if self._max_num_seqs is not None:
                child.commands.send(self._codec.encode(SetMaxNumSeqs(self._max_num_seqs)))
            self.stats = dataclasses.replace(self.stats, pid=event.pid, restarts=self.restarts, problem=None)
        if self.restarts:
            logger.warning("engine process %d ready again (restart %d)", event.pid, self.restarts)
        self._started.set()

    def _fail(self, lost: dict[str, set[int]], message: str) -> None:
        """Every request in flight ends with an ERROR delta."""
        if lost:
            logger.error("%s: %d request(s) in flight fail", message, len(lost))
            self._on_outputs([GenerationOutput(rid, index=i, finish_reason=FinishReason.ERROR, error=message)
                              for rid, left in lost.items() for i in sorted(left)])

    def _restart(self, child: Child, reason: str) -> Child | None:
        """A new engine process after a backoff, or None (stopping, or too many restarts in a row)."""
        if child.ready_at is not None and time.monotonic() - child.ready_at >= STABLE_S:
            self._in_a_row = 0
        self._in_a_row += 1
        if self._in_a_row > self.max_restarts:
            self._down(f"the engine process died ({reason}); not restarted after {self.max_restarts} "
                       f"restart(s) in a row", "failed")
            logger.error("%s", self.problem)
            return None
        delay = min(BACKOFF_S * 2 ** (self._in_a_row - 1), BACKOFF_MAX_S)
        self._down(f"the engine process died ({reason}); restarting in {delay:g} s "
                   f"({self._in_a_row} of {self.max_restarts} restarts in a row)", "restarting")
        logger.error("%s", self.problem)
        if self._stop.wait(delay):
            return None
        with self._lock:
            if self._stop.is_set():
                return None
            self.restarts += 1
            self._child = self._spawn()
            self.problem = (f"the engine process died ({reason}); restart {self.restarts}: engine process "
                            f"{self._child.process.pid} is loading the model")
            self.stats = dataclasses.replace(self.stats, problem=self.problem, pid=self._child.process.pid,
                                             restarts=self.restarts)
            return self._child

    def _down(self, problem: str, state: str) -> None:
        with self._lock:
            self.problem = problem
            self.stats = dataclasses.replace(self.stats, state=state, problem=problem, pid=None,
                                             restarts=self.restarts, running=0, prefilling=0, waiting=0,
                                             batch_rows=0)
