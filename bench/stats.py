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


def shape_summary(blocks: list[dict], text: bool = False) -> dict[str, float]:
    """Summary of one shape's timed blocks: percentiles over every call, plus per-round statistics.

    A round's statistic is its median call (grid shapes) or its total time (text: one pass over every batch). The
    floor is the best round's statistic: noise only ever slows a round down, so the best round is the most stable
    measure of what the artifact can do, and `spread` (median round / best round - 1) is how noisy the rounds were.
    """
    kept = [b for b in blocks if b["kept"]]
    # Blocks timed while other processes loaded the CPU are kept in the raw data but left out of the summary
    # whenever clean blocks exist: they measure the neighbours as much as the model.
    used = [b for b in kept if not b["loaded"]] or kept
    ms = [x for b in used for x in b["ms"]]
    batch = used[0]["items"][0] if used and not text else 1
    summary = summarize(ms, batch)
    rounds = sorted(sum(b["ms"]) if text else percentile(sorted(b["ms"]), 50) for b in used)
    floor, middle = rounds[0], percentile(rounds, 50)
    if text:
        summary["throughput"] = sum(used[0]["items"]) * 1000.0 / middle
    summary.update(floor_ms=floor, round_median_ms=middle, spread=middle / floor - 1.0 if floor > 0 else 0.0,
                   rounds=len(kept), loaded_rounds=sum(1 for b in kept if b["loaded"]),
                   remeasured_blocks=sum(1 for b in blocks if not b["kept"]))
    return summary

