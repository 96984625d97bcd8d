"""Summaries of raw float millisecond samples. Numbers stay floats; formatting happens only in reports."""

from __future__ import annotations

import math
from statistics import fmean, pstdev


def percentile(sorted_ms: list[float], q: float) -> float:
    """Linear-interpolated percentile (numpy's default method) of an already sorted list."""
    if not sorted_ms:
        raise ValueError("no samples")
    pos = (len(sorted_ms) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_ms[lo] + (sorted_ms[hi] - sorted_ms[lo]) * (pos - lo)


def summarize(ms: list[float], batch: int = 1) -> dict[str, float]:
    """p50/p90/p95/p99, mean, std, min, max, IQR and throughput (items per second at the median) of samples."""
    s = sorted(ms)
    p50 = percentile(s, 50)
    return {
        "n": len(s),
        "p50": p50,
        "p90": percentile(s, 90),
        "p95": percentile(s, 95),
        "p99": percentile(s, 99),
        "mean": fmean(s),
        "std": pstdev(s),
        "min": s[0],
        "max": s[-1],
        "iqr": percentile(s, 75) - percentile(s, 25),
        "throughput": batch * 1000.0 / p50 if p50 > 0 else float("inf"),
    }
