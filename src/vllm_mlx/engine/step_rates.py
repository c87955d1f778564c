"""Which kind of step a speculating engine runs next, from measured tokens/s (:mod:`.speculative`).

An *arm* is a kind of step: 0 for a pipelined step, K for a verify step whose rows propose at most K
tokens. A verify step pays where more positions per row cost little (a GPU, Apple Silicon, one row)
and not where a forward's cost grows with its positions (a CPU with many rows), so the engine
measures instead of assuming.
"""

from __future__ import annotations

import time

EXPLORE_EVERY = 256  # decisions between tries of an arm that is not the fastest measured
EXPLORE_STEPS = 3  # steps such a try lasts (the first is a transition, not measured)
RATE_WEIGHT = 0.2  # of the newest step in an arm's moving tokens/s
MEASURE_TRIES = 2  # tries of an arm not yet measured, per batch size and exploration period


class StepRates:
    """Moving tokens/s of recent steps per batch size (powers of two) and per *arm*: 0 for a pipelined
    step, K for a verify step whose rows propose at most K tokens; and the choice of the next arm (the
    fastest measured, each other arm tried now and then).

    A step is counted only when it read back tokens of the arm it launches itself (steady state: the
    step after a change of arm also carries the other arm's work), did no prompt work and ran the
    batch the step before it ran (the first step of a new batch costs up to half as much again, and
    an arm measured there kept that against arms measured later). An arm not yet
    measured is tried at most ``MEASURE_TRIES`` times per exploration period: proposals that come only
    now and then cannot be measured, and are not worth a synchronous step each."""

    def __init__(self, max_tokens: int):
        self.arms = sorted({0, max_tokens, *(k for k in (1, 2, 4, 8, 16) if k < max_tokens)})
        self._rates: dict[tuple[int, int], float] = {}
        self._tries: dict[tuple[int, int], int] = {}  # unmeasured tries per (arm, bucket) this period
        self._last: float | None = None  # when the previous step ended
        self._rows = 0  # the batch size of the previous step
        self._decisions = 0
        self._trying: tuple[int, int] | None = None  # (arm, steps left) of a try of another arm
        self.launched = 0  # the arm of the step last launched

    def observe(self, read: int, produced: int, rows: int, prompt_work: bool = False) -> None:
        """A step ended: it read back ``produced`` tokens of a step of arm ``read`` and launched one of
        arm :attr:`launched`."""
        now = time.perf_counter()
        steady = read == self.launched and rows == self._rows and not prompt_work
        if steady and self._last is not None and produced and now > self._last:
            key, rate = (read, rows.bit_length()), produced / (now - self._last)
            old = self._rates.get(key)
            self._rates[key] = rate if old is None else old + RATE_WEIGHT * (rate - old)
        self._last, self._rows = now, rows

    def choose(self, rows: int) -> int:
        """The arm of the next step of a batch of ``rows`` that has proposals (0: do not verify)."""
        bucket = rows.bit_length()
        if self._trying is not None:
            arm, left = self._trying
            self._trying = (arm, left - 1) if left > 1 else None
            return arm
        self._decisions += 1
        if self._decisions % EXPLORE_EVERY == 0:
            self._tries = {key: n for key, n in self._tries.items() if key[1] != bucket}  # a new period
        rates = {arm: self._rates.get((arm, bucket)) for arm in self.arms}
        for arm, rate in rates.items():
            if rate is None and self._tries.get((arm, bucket), 0) < MEASURE_TRIES:
                self._tries[(arm, bucket)] = self._tries.get((arm, bucket), 0) + 1
                self._trying = (arm, EXPLORE_STEPS - 1)
                return arm
        best = max(rates, key=lambda arm: rates[arm] or 0.0)
        if self._decisions % EXPLORE_EVERY == 0:
            others = [arm for arm in self.arms if arm != best and rates[arm] is not None]
            if others:
                arm = others[(self._decisions // EXPLORE_EVERY) % len(others)]
                self._trying = (arm, EXPLORE_STEPS - 1)
                return arm
        return best
