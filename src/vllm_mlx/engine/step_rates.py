"""Which kind of step a speculating engine runs next, from measured tokens/s (:mod:`.speculative`).

An *arm* is a kind of step: 0 for a pipelined step, K for a verify step whose rows propose at most K
tokens. A verify step pays where more positions per row cost little (a GPU, Apple Silicon, one row)
and not where a forward's cost grows with its positions (a CPU with many rows), so the engine
measures instead of assuming.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

EXPLORE_EVERY = 256  # decisions between tries of an arm that is not the fastest measured (at first)
EXPLORE_DOUBLINGS = 3  # that gap doubles while the fastest arm stays the same, up to 8 times as long
EXPLORE_STEPS = 3  # steps such a try lasts (the first is a transition, not measured)
RATE_WEIGHT = 0.2  # of the newest step in an arm's moving tokens/s
MEASURE_TRIES = 2  # tries of an arm not yet measured, per batch size and exploration period


@dataclass
class _Bucket:
    """The decisions at one batch size (a power of two)."""

    decisions: int = 0
    explore_at: int = EXPLORE_EVERY  # the decision that starts the next period (and tries another arm)
    gap: int = EXPLORE_EVERY  # decisions in the current period
    best: int = 0  # the fastest arm when the period started
    explored: int = 0  # periods so far (which other arm the next one tries)
    tries: dict[int, int] = field(default_factory=dict)  # of each arm not yet measured, this period


def _fastest(rates: dict[int, float | None]) -> int:
    """The arm measured fastest (unmeasured ones count as 0; a tie goes to the smaller arm)."""
    return max(rates, key=lambda arm: rates[arm] or 0.0)


class StepRates:
    """Moving tokens/s of recent steps per batch size (powers of two) and per *arm*: 0 for a pipelined
    step, K for a verify step whose rows propose at most K tokens; and the choice of the next arm (the
    fastest measured, each other arm tried now and then).

    A step is counted only when it read back tokens of the arm it launches itself (steady state: the
    step after a change of arm also carries the other arm's work), did no prompt work and ran the
    batch the step before it ran (the first step of a new batch costs up to half as much again, and
    an arm measured there kept that against arms measured later).

    Arms are measured first the pipelined step, then the largest K, then the others from K = 1 up; an
    arm not yet measured is tried at most ``MEASURE_TRIES`` times per exploration period (proposals
    that come only now and then cannot be measured, and are not worth a synchronous step each), and
    not at all between two verify arms measured slower than the fastest. Each period starts with a
    try of another measured arm; periods grow twice as long while the fastest arm stays the same."""

    def __init__(self, max_tokens: int, clock=time.perf_counter):
        self.clock = clock  # when a step ends (a test's own clock)
        self.arms = sorted({0, max_tokens, *(k for k in (1, 2, 4, 8, 16) if k < max_tokens)})
        self._order = [0, max_tokens, *(arm for arm in self.arms if 0 < arm < max_tokens)]  # to measure
        self._rates: dict[tuple[int, int], float] = {}
        self._buckets: dict[int, _Bucket] = {}
        self._last: float | None = None  # when the previous step ended
        self._rows = 0  # the batch size of the previous step
        self._trying: tuple[int, int] | None = None  # (arm, steps left) of a try of another arm
        self.launched = 0  # the arm of the step last launched
        self.forced: Callable[[int], int] | None = None  # the arm of each decision, by batch size (tests)

    def observe(self, read: int, produced: int, rows: int, prompt_work: bool = False) -> None:
        """A step ended: it read back ``produced`` tokens of a step of arm ``read`` and launched one of
        arm :attr:`launched`."""
        now = self.clock()
        steady = read == self.launched and rows == self._rows and not prompt_work
        if steady and self._last is not None and produced and now > self._last:
            key, rate = (read, rows.bit_length()), produced / (now - self._last)
            old = self._rates.get(key)
            self._rates[key] = rate if old is None else old + RATE_WEIGHT * (rate - old)
        self._last, self._rows = now, rows

    def settled_on_plain(self, rows: int) -> bool:
        """Whether the next decision at a batch of ``rows`` is a pipelined step whatever the proposals:
        arm 0 the fastest measured, no arm to measure, no try under way and no new period due. Counted
        as a decision when so (periods end as they do when :meth:`choose` is asked)."""
        bucket = self._bucket(rows)
        if self.forced is not None or self._trying is not None or bucket.decisions + 1 >= bucket.explore_at:
            return False
        rates = self._rates_at(rows)
        if rates[0] is None or self._to_measure(rates, bucket) is not None or _fastest(rates) != 0:
            return False
        bucket.decisions += 1
        return True

    def choose(self, rows: int) -> int:
        """The arm of the next step of a batch of ``rows`` that has proposals (0: do not verify)."""
        if self.forced is not None:
            return self.forced(rows)
        if self._trying is not None:
            arm, left = self._trying
            self._trying = (arm, left - 1) if left > 1 else None
            return arm
        bucket, rates = self._bucket(rows), self._rates_at(rows)
        bucket.decisions += 1
        best = _fastest(rates)
        new_period = bucket.decisions >= bucket.explore_at
        if new_period:
            same = best == bucket.best
            bucket.gap = min(bucket.gap * 2, EXPLORE_EVERY << EXPLORE_DOUBLINGS) if same else EXPLORE_EVERY
            bucket.best, bucket.explore_at, bucket.tries = best, bucket.decisions + bucket.gap, {}
        arm = self._to_measure(rates, bucket)
        if arm is not None:
            bucket.tries[arm] = bucket.tries.get(arm, 0) + 1
        elif new_period:
            others = [arm for arm in self.arms if arm != best and rates[arm] is not None]
            arm = others[bucket.explored % len(others)] if others else None
            bucket.explored += 1
        if arm is None:
            return best
        self._trying = (arm, EXPLORE_STEPS - 1)
        return arm

    def _bucket(self, rows: int) -> _Bucket:
        return self._buckets.setdefault(rows.bit_length(), _Bucket())

    def _rates_at(self, rows: int) -> dict[int, float | None]:
        bucket = rows.bit_length()
        return {arm: self._rates.get((arm, bucket)) for arm in self.arms}

    def _to_measure(self, rates: dict[int, float | None], bucket: _Bucket) -> int | None:
        """The next arm to measure at this batch size (tries left this period), if any -- but not one
        between two verify arms measured slower than the fastest (a verify step's rate is taken to rise
        and fall with K once; proposals too seldom to measure an arm would leave it unmeasured, and
        trying it each period would cost synchronous steps for nothing)."""
        best = max((rate for rate in rates.values() if rate is not None), default=None)
        for arm in self._order:
            if rates[arm] is not None or bucket.tries.get(arm, 0) >= MEASURE_TRIES:
                continue
            below = [r for a, r in rates.items() if 0 < a < arm and r is not None]
            above = [r for a, r in rates.items() if a > arm and r is not None]
            if below and above and below[-1] < best and above[0] < best:
                continue
            return arm
        return None
