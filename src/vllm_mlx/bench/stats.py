"""Summary statistics for repeated measurements.

* :func:`summarize` -- median with a 95% percentile-bootstrap interval of the median
  (2000 resamples, fixed seed, so the same numbers always give the same interval).
  With fewer than 3 values the interval is the min-max range.
* :func:`percentile` -- linear interpolation between order statistics (numpy's default).
* :func:`wilson_interval` -- 95% Wilson score interval of a proportion (divergence rates).
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import asdict, dataclass
from typing import Sequence

Z95 = 1.959963984540054
BOOTSTRAP_RESAMPLES = 2000


@dataclass(frozen=True)
class Summary:
    median: float
    low: float  # 95% interval of the median
    high: float
    n: int
    values: tuple[float, ...] = ()

    def as_dict(self) -> dict:
        return asdict(self) | {"values": list(self.values)}

    def fmt(self, digits: int = 1) -> str:
        if self.n == 0:
            return "-"
        return f"{self.median:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100), interpolating linearly between order statistics."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= q <= 100:
        raise ValueError("q must be in [0, 100]")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100
    lo = math.floor(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def bootstrap_median_interval(values: Sequence[float], confidence: float = 0.95,
                              resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """Percentile-bootstrap interval of the median."""
    if len(values) < 3:
        return min(values), max(values)
    rng = random.Random(seed)
    n = len(values)
    medians = [statistics.median(rng.choices(values, k=n)) for _ in range(resamples)]
    tail = (1 - confidence) / 2 * 100
    return percentile(medians, tail), percentile(medians, 100 - tail)


def summarize(values: Sequence[float]) -> Summary:
    values = [float(v) for v in values if not math.isnan(v)]  # NaN: a round that measured nothing
    if not values:
        return Summary(math.nan, math.nan, math.nan, 0)
    low, high = bootstrap_median_interval(values)
    return Summary(statistics.median(values), low, high, len(values), tuple(values))


def wilson_interval(successes: int, total: int, z: float = Z95) -> tuple[float, float]:
    """Wilson score interval of successes/total (95% by default); (0, 1) when total is 0."""
    if total <= 0:
        return 0.0, 1.0
    if not 0 <= successes <= total:
        raise ValueError("successes must be between 0 and total")
    p = successes / total
    denom = 1 + z * z / total
    centre = (p + z * z / (2 * total)) / denom
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def latency_percentiles(values: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99 and mean of latencies (NaN when there are none)."""
    if not values:
        return {"mean": math.nan, "p50": math.nan, "p95": math.nan, "p99": math.nan}
    return {"mean": statistics.fmean(values), "p50": percentile(values, 50),
            "p95": percentile(values, 95), "p99": percentile(values, 99)}
