"""The engine process (``--engine-process``): loads the model and runs the engine's step loop, away
from the API process's GIL. Started as ``python -m vllm_mlx.engine.process_main`` (nothing of the
API process's ``__main__`` runs again in it), its arguments pickled to its stdin.

The process hosts an :class:`~.engine.LLMEngine` (its engine thread loads the model and runs the
steps, as in the API process); the main thread takes commands from the API process's socket,
compiles output constraints from their specs, and exits when told to stop, when the engine thread
ends, or when the API process is gone (its pid no longer this process's parent). The engine thread
sends what each step produced, for all rows, as one ``StepOutputs`` message, with the stats after it.
"""

from __future__ import annotations

import logging
import mmap
import os
import pickle
import signal
import struct
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import zmq

from ..platform import process_memory
from .config import EngineConfig
from .constraints import GrammarCompiler, GrammarError
from .engine import LLMEngine
from .ipc_messages import (Abort, AbortAll, AddRequests, ClearPrefixCache, Codec, FinishRow, LoadFailed, Ready,
                           SetMaxNumSeqs, StepOutputs, Stop, generation_request, output_msg)
from .request import FinishReason, GenerationOutput

logger = logging.getLogger("vllm_mlx.engine_process")

PARENT_CHECK_S = 0.5  # how often the main thread checks that the API process is still there
MEMORY_READ_S = 1.0  # how often the engine process reads its own memory for its stats
ORPHAN_GRACE_S = 5.0  # then the watcher ends the process, if the command loop has not (a load, a wedged step)


class EventSender:
    """The engine process's one socket to the API process, shared by its two threads under a lock."""

    def __init__(self, socket: zmq.Socket):
        self._socket = socket
        self._codec = Codec()
        self._lock = threading.Lock()

    def send(self, message) -> None:
        with self._lock:
            self._socket.send(self._codec.encode(message), copy=False)


class HostedEngine(LLMEngine):
    """The engine thread of the engine process: deltas go out with the stats published after them.
    ``engine_kwargs`` go to the engine class it is hosted over (:func:`hosted`)."""

    def __init__(self, load: Callable[[], Any], config: EngineConfig, events: EventSender, step_clock: Any,
                 **engine_kwargs: Any):
        super().__init__(load, config, self._collect, **engine_kwargs)
        self._events = events
        self._step_clock = step_clock  # shared double: monotonic start of the running step, 0 when none
        self._pending: list[GenerationOutput] = []
        self._memory: dict | None = None
        self._memory_read_at = float("-inf")

    def _collect(self, outputs: list[GenerationOutput]) -> None:
        self._pending.extend(outputs)

    def _publish_stats(self, state: str | None = None) -> None:
        super()._publish_stats(state)  # every delta is followed by a stats update: both go as one message
        now = time.monotonic()
        if now - self._memory_read_at >= MEMORY_READ_S:  # the API process cannot see this process's memory
            self._memory, self._memory_read_at = process_memory(), now
        self.stats.memory = self._memory  # a fresh snapshot, not yet seen by anyone
        outputs, self._pending = self._pending, []
        self._events.send(StepOutputs([output_msg(o) for o in outputs], self.stats))

    def _step_safely(self) -> None:
        self._step_clock.value = time.monotonic()
        try:
            super()._step_safely()
        finally:
            self._step_clock.value = 0.0

    def fail_now(self, outputs: list[GenerationOutput]) -> None:
        """Deltas of requests that end before reaching the engine thread (their grammar failed)."""
        self._events.send(StepOutputs([output_msg(o) for o in outputs], self.stats))


def hosted(engine_class: type[LLMEngine]) -> type[HostedEngine]:
    """:class:`HostedEngine` over ``engine_class``, an LLMEngine or a subclass (the distributed leader)."""
    if engine_class is LLMEngine:
        return HostedEngine
    return type(f"Hosted{engine_class.__name__}", (HostedEngine, engine_class), {})


@dataclass
class EngineSetup:
    """What an engine process hosts: the model's loader (run on the engine thread), the engine class
    and its further arguments."""

    load: Callable[[], Any]
    engine_class: type[LLMEngine] = LLMEngine
    engine_kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ProcessArgs:
    """What the engine process is started with (pickled to its stdin)."""

    load: Callable[[], Any] | None  # picklable: loads the model (runs on the engine thread)
    config: EngineConfig
    folder: str  # holds the two sockets and the step clock
    parent_pid: int
    log_level: str = "info"
    # picklable, instead of ``load``: called on the process's main thread before anything loads, it
    # returns the EngineSetup (a distributed rank 0 joins its group there)
    setup: Callable[[], EngineSetup] | None = None

    @property
    def command_addr(self) -> str:
        return f"ipc://{self.folder}/commands"

    @property
    def event_addr(self) -> str:
        return f"ipc://{self.folder}/events"

    @property
    def clock_path(self) -> str:
        return os.path.join(self.folder, "step-clock")


class StepClock:
    """The monotonic start of the step running now (0.0: none), in an 8-byte file both processes map:
    the watchdog reads it without a message per step (the monotonic clock is system-wide)."""

    def __init__(self, path: str, create: bool = False):
        if create:
            with open(path, "wb") as f:
                f.write(bytes(8))
        fd = os.open(path, os.O_RDWR)
        try:
            self._map = mmap.mmap(fd, 8)
        finally:
            os.close(fd)

    @property
    def value(self) -> float:
        return struct.unpack_from("d", self._map)[0]

    @value.setter
    def value(self, v: float) -> None:
        struct.pack_into("d", self._map, 0, v)


def main() -> None:
    """``python -m vllm_mlx.engine.process_main``: the parent's sys.path, then ProcessArgs, on stdin."""
    sys.path[:] = pickle.load(sys.stdin.buffer)
    args: ProcessArgs = pickle.load(sys.stdin.buffer)
    run_engine_process(args)


def run_engine_process(args: ProcessArgs) -> None:
    """The engine process's main function (started by :class:`~.process_client.EngineProcess`)."""
    # Its lifetime is the API process's: a Ctrl-C or a SIGTERM sent to the whole process group (a
    # terminal, systemd) must not end it while the API process drains its requests.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s[engine %(process)d]: %(message)s")
    context = zmq.Context()
    commands = context.socket(zmq.PULL)
    commands.bind(args.command_addr)
    event_socket = context.socket(zmq.PUSH)
    event_socket.setsockopt(zmq.SNDHWM, 0)
    event_socket.connect(args.event_addr)
    events = EventSender(event_socket)
    orphaned = False
    watch_parent(args.parent_pid)
    engine = None
    try:
        try:
            setup = args.setup() if args.setup is not None else EngineSetup(args.load)
            engine = hosted(setup.engine_class)(setup.load, args.config, events, StepClock(args.clock_path),
                                                **setup.engine_kwargs)
            loaded = engine.start()
        except BaseException as exc:
            logger.exception("the engine process could not load the model")
            events.send(LoadFailed(f"{type(exc).__name__}: {exc}"))
            return
        backend = getattr(loaded, "backend", None)
        cache = engine.prefix_cache
        events.send(Ready(os.getpid(), engine.vocab_size, engine.kv_bytes_per_token,
                          int(getattr(loaded, "weight_bytes", 0) or 0),
                          backend.describe() if backend is not None else None,
                          None if cache is None else bool(cache.block_mode), weight_dtypes(loaded),
                          engine.config.speculative))
        orphaned = CommandLoop(engine, commands, args.parent_pid).run()
    finally:
        if engine is not None and engine.alive:
            engine.shutdown(timeout=2.0 if orphaned else 10.0)
        # the last deltas (aborts on stop) still reach the API process, if there is one
        event_socket.close(linger=0 if orphaned else 2000)
        commands.close(linger=0)
        context.term()


def weight_dtypes(loaded: Any) -> dict[str, int]:
    """The model's weight arrays by dtype (reported by /health/diagnostics)."""
    from mlx.utils import tree_flatten

    model = getattr(loaded, "model", None)
    arrays = tree_flatten(model.parameters()) if model is not None else []
    return dict(Counter(str(v.dtype).removeprefix("mlx.core.") for _, v in arrays))


def watch_parent(parent_pid: int) -> None:
    """End the process when the API process is gone, even while the model loads or a step hangs
    (the command loop, when it runs, exits cleanly first)."""

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(PARENT_CHECK_S)
        time.sleep(ORPHAN_GRACE_S)
        logger.error("the API process is gone; the engine process ends now")
        os._exit(1)

    threading.Thread(target=watch, name="vllm-mlx-parent-watch", daemon=True).start()


class CommandLoop:
    """The engine process's main thread: commands in, until stop (or the engine or the parent is gone)."""

    def __init__(self, engine: HostedEngine, commands: zmq.Socket, parent_pid: int):
        self.engine = engine
        self.commands = commands
        self.parent_pid = parent_pid
        self.codec = Codec()
        self._compiler: GrammarCompiler | None = None

    def run(self) -> bool:
        """Returns True when the API process is gone (nobody to say goodbye to)."""
        while True:
            if not self.commands.poll(int(PARENT_CHECK_S * 1000)):
                if os.getppid() != self.parent_pid:
                    logger.error("the API process is gone; the engine process exits")
                    return True
                if not self.engine.alive:
                    raise SystemExit("the engine thread stopped")
                continue
            command = self.codec.commands.decode(self.commands.recv(copy=False).buffer)
            if isinstance(command, Stop):
                return False
            self.apply(command)

    def apply(self, command) -> None:
        engine = self.engine
        if isinstance(command, AddRequests):
            requests = [r for r in map(self.with_constraint, command.requests) if r is not None]
            if requests:
                engine.add_requests(requests)
        elif isinstance(command, Abort):
            engine.abort(command.request_id)
        elif isinstance(command, FinishRow):
            engine.finish_row(command.request_id, command.index)
        elif isinstance(command, AbortAll):
            engine.abort_all()
        elif isinstance(command, ClearPrefixCache):
            engine.clear_prefix_cache()
        elif isinstance(command, SetMaxNumSeqs):
            engine.set_max_num_seqs(command.n)

    def with_constraint(self, msg):
        """The engine-side request, its grammar compiled here; None (and an error delta) if it fails."""
        if msg.constraint is None:
            return generation_request(msg)
        try:
            if self._compiler is None:
                tokenizer = self.engine.loaded.tokenizer
                self._compiler = GrammarCompiler(tokenizer, self.engine.vocab_size, sorted(tokenizer.eos_token_ids))
            return generation_request(msg, self._compiler.matcher(msg.constraint))
        except Exception as exc:
            status = 400 if isinstance(exc, GrammarError) else 500
            self.engine.fail_now([GenerationOutput(msg.request_id, index=i, finish_reason=FinishReason.ERROR,
                                                   error=f"the output constraint cannot be compiled: {exc}",
                                                   error_status=status) for i in range(msg.sampling.n)])
            return None


if __name__ == "__main__":
    main()
