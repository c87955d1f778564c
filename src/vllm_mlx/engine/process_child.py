"""One engine process as the API process holds it (:class:`~.process_client.EngineProcess`
starts and watches it): the child started as ``python -m vllm_mlx.engine.process_main`` with its
arguments pickled to its stdin, the two sockets to it, and a pipe whose end of file says it exited."""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass

import zmq

from .process_main import ProcessArgs

logger = logging.getLogger(__name__)


@dataclass
class Child:
    """One engine process, the two sockets to it, and the read end of a pipe only it holds open (end
    of file: it has exited)."""

    process: subprocess.Popen
    commands: zmq.Socket
    events: zmq.Socket
    folder: str
    exited: int  # fd
    ready_at: float | None = None

    def close(self) -> None:
        self.commands.close(linger=0)
        self.events.close(linger=0)
        if self.exited >= 0:
            os.close(self.exited)
            self.exited = -1
        shutil.rmtree(self.folder, ignore_errors=True)

    def kill(self, after: float) -> None:
        """Wait ``after`` seconds for it to exit, then kill it."""
        try:
            self.process.wait(after)
        except subprocess.TimeoutExpired:
            logger.warning("the engine process did not stop in %.0f s; killing it", after)
            self.process.kill()
            self.process.wait()


def describe_exit(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


def spawn(context: zmq.Context, args: ProcessArgs) -> Child:
    """Start an engine process with ``args``; its sockets and exit pipe come with it."""
    events = context.socket(zmq.PULL)
    events.bind(args.event_addr)
    commands = context.socket(zmq.PUSH)
    commands.setsockopt(zmq.SNDHWM, 0)  # commands queue here until the engine process binds
    commands.setsockopt(zmq.LINGER, 0)
    commands.connect(args.command_addr)
    exited, held = os.pipe()
    try:
        process = subprocess.Popen([sys.executable, "-m", "vllm_mlx.engine.process_main"],
                                   stdin=subprocess.PIPE, pass_fds=(held,))
    finally:
        os.close(held)  # only the child holds the write end now
    try:
        pickle.dump(list(sys.path), process.stdin)
        pickle.dump(args, process.stdin)
        process.stdin.close()
    except OSError:  # it died at once: the pipe's end of file reports it
        pass
    logger.info("engine process %d started", process.pid)
    return Child(process, commands, events, args.folder, exited)
