"""Pure statistics for the benchmark: summaries over repetitions, percentiles, ratios.

No processes, no files: everything here is a function of numbers, so it is
tested without a broker.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True, slots=True)
class Summary:
    """One figure over the repetitions of one arm."""

    n: int
    median: float
    mean: float
    min: float
    max: float
    stdev: float  # sample standard deviation; 0 with one sample

    def to_json(self) -> dict:
        return {k: round_sig(v) for k, v in asdict(self).items()}


def summarize(samples: Sequence[float]) -> Summary:
    """Median, mean, min, max and sample stdev of at least one sample."""
    values = [float(v) for v in samples]
    if not values:
        raise ValueError("no samples to summarize")
    if any(math.isnan(v) or math.isinf(v) for v in values):
        raise ValueError(f"samples must be finite numbers, got {values!r}")
    return Summary(
        n=len(values),
        median=statistics.median(values),
        mean=statistics.fmean(values),
        min=min(values),
        max=max(values),
        stdev=statistics.stdev(values) if len(values) > 1 else 0.0,
    )


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0 < q <= 100) by nearest rank: a value that was actually observed.

    The rank is ceil(q/100 * n): p99.9 of 1,000 samples is the 999th smallest,
    p99.9 of fewer than 1,000 samples is the largest. It never invents a latency
    between two observations.
    """
    if not values:
        raise ValueError("no values")
    if not 0 < q <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {q}")
    ordered = sorted(values)
    rank = math.ceil(q * len(ordered) / 100 - 1e-9)  # the epsilon: 99.9 * 1000 / 100 is 999.0000000000001
    return float(ordered[max(rank, 1) - 1])


def ratio(proxied: float, direct: float) -> float | None:
    """proxied / direct, or None when direct is zero (no meaningful ratio)."""
    if direct == 0:
        return None
    return proxied / direct


def paired_ratios(direct: Sequence[float], proxied: Sequence[float]) -> list[float]:
    """proxied_i / direct_i for each repetition i: the two arms of one repetition ran back to back,
    so their ratio cancels slow drifts of the machine that the medians of the arms do not."""
    return [p / d for d, p in zip(direct, proxied) if d != 0]


def round_sig(value):
    """Floats to 6 significant digits for the JSON document; anything else unchanged."""
    if isinstance(value, float):
        return float(f"{value:.6g}")
    return value
