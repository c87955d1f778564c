"""Memory-aware admission: a request starts only when the KV cache it may need fits the memory budget.

Each generation reserves ``(prompt tokens + max_tokens) x n x KV bytes per token`` — the most its
rows can hold — for as long as it runs. A request that does not fit waits (``--admission-wait``) for
running ones to finish, then gets 503 with ``Retry-After``: the server never takes on more than the
budget, so a burst cannot run it out of memory. A request that alone needs more than the whole budget
is admitted only when nothing else runs (its reservation counts as the whole budget).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import AsyncIterator

from ..engine.request import GenerationOutput, SamplingParams
from .errors import APIError

logger = logging.getLogger(__name__)

RETRY_AFTER_S = 2


class MemoryAdmission:
    def __init__(self, budget_bytes: int, bytes_per_token: int, wait_s: float):
        self.budget_bytes = budget_bytes
        self.bytes_per_token = bytes_per_token
        self.wait_s = wait_s
        self.reserved_bytes = 0
        self.admitted = 0  # generations holding a reservation now
        self.refused = 0  # requests answered 503 since start
        self._released: asyncio.Event | None = None

    def need(self, prompt_len: int, params: SamplingParams) -> int:
        """Bytes reserved for one generation (at most the whole budget: such a request runs alone)."""
        return min((prompt_len + params.max_tokens) * params.n * self.bytes_per_token, self.budget_bytes)

    def fits(self, need: int) -> bool:
        return self.reserved_bytes + need <= self.budget_bytes

    async def wait_for_room(self, need: int) -> None:
        """Return once ``need`` bytes fit; 503 with Retry-After when they do not within the wait."""
        deadline = time.monotonic() + self.wait_s
        while not self.fits(need):
            left = deadline - time.monotonic()
            if left <= 0:
                self._refuse(need)
            if self._released is None:
                self._released = asyncio.Event()
            try:
                await asyncio.wait_for(self._released.wait(), timeout=left)
            except asyncio.TimeoutError:
                pass

    def reserve(self, need: int) -> "Reservation":
        if not self.fits(need):
            self._refuse(need)
        self.reserved_bytes += need
        self.admitted += 1
        return Reservation(self, need)

    def _release(self, need: int) -> None:
        self.reserved_bytes -= need
        self.admitted -= 1
        if self._released is not None:  # wake every waiter; each checks whether it fits now
            self._released.set()
            self._released = None

    def _refuse(self, need: int) -> None:
        self.refused += 1
        logger.warning("admission: refused a request needing %d MB of KV cache (%d MB of %d MB reserved)",
                       need >> 20, self.reserved_bytes >> 20, self.budget_bytes >> 20)
        raise APIError(503, f"the server is at its memory budget ({self.budget_bytes >> 20} MB of KV cache "
                            f"reserved by running requests); retry shortly", code="memory_budget_exceeded",
                       headers={"Retry-After": str(RETRY_AFTER_S)})

    def stats(self) -> dict:
        return {"budget_bytes": self.budget_bytes, "reserved_bytes": self.reserved_bytes,
                "kv_bytes_per_token": self.bytes_per_token, "admitted": self.admitted, "refused": self.refused}


class Reservation:
    def __init__(self, admission: MemoryAdmission, need: int):
        self._admission: MemoryAdmission | None = admission
        self._need = need

    def release(self) -> None:
        if self._admission is not None:
            self._admission._release(self._need)
            self._admission = None

    def __del__(self):  # a stream that was never iterated still gives its reservation back
        self.release()


class AdmittedStream:
    """An engine stream that holds a reservation until it ends, is closed, or is dropped."""

    def __init__(self, stream: AsyncIterator[GenerationOutput], reservation: Reservation | None):
        self._stream = stream
        self._reservation = reservation

    def __aiter__(self) -> "AdmittedStream":
        return self

    async def __anext__(self) -> GenerationOutput:
        try:
            return await self._stream.__anext__()
        except BaseException:
            self._done()
            raise

    async def aclose(self) -> None:
        try:
            await self._stream.aclose()
        finally:
            self._done()

    def _done(self) -> None:
        if self._reservation is not None:
            self._reservation.release()
            self._reservation = None


def build_admission(limits, bytes_per_token: int) -> MemoryAdmission | None:
    """The admission control for a loaded model (None when its KV size per token is unknown)."""
    if bytes_per_token <= 0:
        return None
    from ..platform import available_memory_bytes

    budget = limits.memory_budget_bytes
    if budget is None:
        budget = int(available_memory_bytes() * limits.memory_budget_fraction)
    logger.info("memory admission: %d MB budget for KV caches, %d bytes per token (%d tokens)",
                budget >> 20, bytes_per_token, budget // bytes_per_token)
    return MemoryAdmission(budget, bytes_per_token, limits.admission_wait_s)
