"""Compare a run with an earlier bench JSON of the same model and shapes: a slowdown beyond the allowance fails.

Each (job, shape) is judged on its floor: the best round's median call (text: the best pass over the texts). Noise on
a shared machine only slows rounds down, so the best round moves far less between runs than p50 does (±15 % here).
The allowed growth is the profile's threshold, widened by the baseline's own round-to-round spread (a noisy baseline
earns more room) up to max_allowance, which stays below the 25 % slowdown the check must catch.
"""

from __future__ import annotations

from typing import Any

from bertship.profiles.schema import BaselineRule
from bertship.runtimes.errors import UsageError

from .budgets import LOADED_SHARE, Verdict, loaded, margin
from .run import FORMAT


def _shapes(results: dict[str, Any]) -> list[str]:
    return list(results["workload"]["shapes"]) + (["text"] if results["workload"].get("text") else [])


def check_compatible(results: dict[str, Any], baseline: dict[str, Any], source: str = "the baseline",
                     jobs: bool = True) -> None:
    """Refuse (UsageError) a baseline of another model or signature, other shapes, another CPU or (with `jobs`) no
    job in common; `results` needs only artifacts, workload and machine when jobs=False (before measuring)."""
    if not isinstance(baseline, dict) or baseline.get("bertship_bench") != FORMAT:
        raise UsageError(f"{source} is not a bertship bench JSON (format {FORMAT}) — pass the --json of "
                         "`bertship bench`")
    ours, theirs = results["artifacts"]["candidate"]["model_key"], baseline["artifacts"]["candidate"]["model_key"]
    differ = [k for k in sorted(set(ours) | set(theirs)) if ours.get(k) != theirs.get(k)]
    if differ:
        what = ", ".join(f"{k}: {theirs.get(k)} vs {ours.get(k)}" for k in differ)
        raise UsageError(f"{source} measured another model ({what}) — compare with a baseline of the same model and "
                         "signature")
    if sorted(_shapes(results)) != sorted(_shapes(baseline)):
        raise UsageError(f"{source} measured shapes {', '.join(_shapes(baseline))}, this run "
                         f"{', '.join(_shapes(results))} — measure the same shapes (same profile workload and --shapes)")
    a, b = baseline["machine"].get("model"), results["machine"].get("model")
    if a != b:
        raise UsageError(f"{source} was measured on a {a}, this run on a {b} — record the baseline on the same kind "
                         "of runner, or use budgets relative to a --reference artifact (they survive a change of "
                         "machine)")
    if jobs and not common_jobs(results, baseline):
        raise UsageError(f"{source} has no job in common with this run (it has: {', '.join(baseline['jobs'])}) — "
                         "measure the same backends and thread settings")


def common_jobs(results: dict[str, Any], baseline: dict[str, Any]) -> list[str]:
    """Candidate jobs measured in both."""
    return [k for k, r in results["jobs"].items() if r["role"] == "candidate" and k in baseline["jobs"]]


def allowance(rule: BaselineRule, spread: float) -> float:
    """How much the floor may grow: the threshold, widened by spread_factor x the baseline's spread, capped."""
    return min(rule.max_allowance, max(rule.threshold, rule.spread_factor * spread))


def compare(results: dict[str, Any], baseline: dict[str, Any], rule: BaselineRule) -> list[Verdict]:
    """One Verdict per common (job, shape): the floor now against the baseline's floor x (1 + allowance)."""
    verdicts = []
    limit_share = results["settings"]["foreign_load_max"]
    for job_id in common_jobs(results, baseline):
        record, base = results["jobs"][job_id], baseline["jobs"][job_id]
        for shape in _shapes(results):
            now, then = record["shapes"][shape]["summary"], base["shapes"][shape]["summary"]
            allowed = allowance(rule, then["spread"])
            limit = then["floor_ms"] * (1.0 + allowed)
            m = margin("max", limit, now["floor_ms"])
            status = "pass" if m >= 0 else "fail"
            detail = (f"{'best pass' if shape == 'text' else 'best-round median'} {now['floor_ms']:.4g} ms vs baseline "
                      f"{then['floor_ms']:.4g} ms ({now['floor_ms'] / then['floor_ms'] - 1:+.1%}; allowed +{allowed:.0%}"
                      f"{', widened by the baseline spread' if allowed > rule.threshold else ''})")
            if status == "fail" and loaded(record, shape, limit_share):
                status, detail = "inconclusive", detail + "; timed while other processes loaded the CPU"
            elif then["rounds"] and then["loaded_rounds"] / then["rounds"] > LOADED_SHARE:
                # A baseline slowed by its neighbours hides a real slowdown: even a pass proves nothing.
                status = "inconclusive"
                detail += "; the baseline was timed under foreign CPU load — record it again on a quiet machine"
            verdicts.append(Verdict(f"no slowdown vs baseline {shape} [{job_id}]", "baseline", "floor_ms", shape, job_id,
                                    limit, now["floor_ms"], m, status, detail, reference=then["floor_ms"]))
    return verdicts
