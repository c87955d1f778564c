"""Keeping the ranks of a distributed engine in lockstep over MLX's own collectives.

Rank 0 decides everything (what arrives, what is scheduled, which tokens are
sampled, what finished) and tells the other ranks through
:class:`LockstepChannel`: a message is JSON bytes in an int32 array of fixed
size (its byte length first; a longer message sends the rest in a second
array), summed with ``mx.distributed.all_sum`` where the followers contribute
zeros -- a broadcast made from MLX's transport (ring over TCP, JACCL over
Thunderbolt RDMA, MPI), with no transport of our own. Every collective costs a
round trip in which all ranks must be running, so a step costs one exchange.

Collectives block, so a rank that stalls would hang the others forever: every
rank runs a :class:`Watchdog` that ends the process when one exchange or one
engine step takes longer than the timeout. A rank that dies makes the
collectives of the others raise, which ends them too (:class:`LockstepLost`).
"""

from __future__ import annotations

import json
import logging
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import mlx.core as mx
import numpy as np

logger = logging.getLogger(__name__)

MESSAGE_WORDS = 1024  # int32 words of the first array of every message (4 KiB)
LOST_EXIT_CODE = 3  # a rank was lost or stalled; restart the whole job


class LockstepLost(BaseException):
    """The ranks can no longer run together (a peer died, stalled or diverged).

    A ``BaseException`` so the engine's per-step error handling, which keeps
    the server up when one batch fails, does not swallow it.
    """


class LockstepChannel:
    """Rank 0 -> every rank messages, and rank 0's tokens shared inside the model graph."""

    def __init__(self, group: Any):
        self.group = group
        self.rank = group.rank()
        self.size = group.size()

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def exchange(self, message: dict | None = None) -> dict:
        """Rank 0 passes ``message``; every rank returns it."""
        try:
            return self._exchange(message)
        except Exception as exc:  # the ring reports a lost peer as an error of the collective
            raise LockstepLost(f"rank {self.rank}: a message exchange failed: {exc}") from exc

    def _exchange(self, message: dict | None) -> dict:
        if self.leader:
            data = json.dumps(message, separators=(",", ":")).encode()
            words = np.frombuffer(data.ljust(-(-len(data) // 4) * 4, b"\0"), dtype=np.int32)
            words = np.concatenate([np.array([len(data)], dtype=np.int32), words])
            words = np.pad(words, (0, max(0, MESSAGE_WORDS - len(words))))
        else:
            words = np.zeros(MESSAGE_WORDS, dtype=np.int32)
        first = np.array(self._sum(words[:MESSAGE_WORDS]))
        length = int(first[0])
        rest_words = max(0, -(-length // 4) + 1 - MESSAGE_WORDS)
        if rest_words:  # a long message (a long prompt arrived): the rest in a second array
            rest = words[MESSAGE_WORDS:] if self.leader else np.zeros(rest_words, dtype=np.int32)
            first = np.concatenate([first, np.array(self._sum(rest))])
        if self.leader:
            return message
        return json.loads(first[1:].tobytes()[:length])

    def _sum(self, words: np.ndarray) -> mx.array:
        # On the CPU stream, as mlx-lm's own barrier does: these are host messages, not model tensors.
        out = mx.distributed.all_sum(mx.array(words), group=self.group, stream=mx.cpu)
        mx.eval(out)
        return out


class Watchdog:
    """Calls ``on_expire`` when a guarded section runs longer than ``timeout`` seconds."""

    def __init__(self, timeout: float, on_expire: Callable[[str], None], name: str = "lockstep-watchdog"):
        self.timeout = timeout
        self._on_expire = on_expire
        self._since: float | None = None
        self._what = ""
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._watch, name=name, daemon=True)
        self._thread.start()

    @contextmanager
    def guard(self, what: str) -> Iterator[None]:
        with self._lock:
            self._since, self._what = time.monotonic(), what
        try:
            yield
        finally:
            with self._lock:
                self._since = None

    def _watch(self) -> None:
        while True:
            time.sleep(min(1.0, self.timeout / 4))
            with self._lock:
                since, what = self._since, self._what
            if since is not None and time.monotonic() - since > self.timeout:
                self._on_expire(f"{what} took longer than {self.timeout:g}s: a rank stalled or died")
                return


def exit_process(reason: str, delay: float = 0.0) -> None:
    """Log ``reason`` and end the process with ``LOST_EXIT_CODE`` after ``delay`` seconds, from a
    thread of its own (a rank stuck in a collective cannot unwind; ``mlx.launch`` then ends the others)."""

    def end() -> None:
        time.sleep(delay)
        logger.critical("distributed serving stopped: %s; exiting with code %d (restart every rank)",
                        reason, LOST_EXIT_CODE)
        for handler in logging.getLogger().handlers:
            handler.flush()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(LOST_EXIT_CODE)

    threading.Thread(target=end, name="lockstep-exit", daemon=True).start()
