"""Judge a profile's budgets against bench results: one Verdict per budget and measured job, with its margin.

A budget is data (profiles/schema.py Budget); judging it is a comparison of numbers, not code per metric. A failure
on timings whose rounds were mostly taken under foreign CPU load is `inconclusive`: load only ever slows a run down,
so a pass under load still counts, a fail does not prove anything.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass
from typing import Any

from bertship.profiles import METRICS, Budget, Profile
from bertship.runtimes.errors import UsageError

LOADED_SHARE = 0.5  # a shape whose kept rounds were more than half under foreign load cannot prove a failure


@dataclass(frozen=True)
class Verdict:
    """The outcome of one check: what was bounded, the limit, what was measured, the margin, pass/fail/inconclusive."""

    name: str
    kind: str  # "budget" or "baseline"
    metric: str
    shape: str | None
    job: str
    limit: float
    measured: float
    margin: float  # headroom as a share of the limit: > 0 passes, < 0 is over the limit
    status: str  # "pass", "fail" or "inconclusive"
    detail: str = ""
    noisy: bool = True
    confirmed: bool = False  # a failure that a re-measurement in a fresh process reproduced
    reference: float | None = None  # the baseline's or the reference artifact's value the limit was derived from

    def as_dict(self) -> dict[str, Any]:
        """Plain data for JSON."""
        return asdict(self)


def loaded(record: dict[str, Any], shape: str | None, limit: float) -> bool:
    """True when most of the timings behind a job's shape (or its load time) were taken under foreign load."""
    if shape is None:
        foreign = [f for f in record["load_foreign"] if f is not None]
        return bool(foreign) and sum(f > limit for f in foreign) / len(foreign) > LOADED_SHARE
    s = record["shapes"][shape]["summary"]
    return s["rounds"] > 0 and s["loaded_rounds"] / s["rounds"] > LOADED_SHARE


def metric_value(record: dict[str, Any], metric: str, shape: str | None) -> float:
    """The number a budget on `metric` judges, from one job's record."""
    if METRICS[metric].per_shape:
        s = record["shapes"][shape]["summary"]
        return s["throughput"] if metric == "throughput" else s[metric.removesuffix("_ms")]
    if metric in ("cosine_min", "rank_agreement"):
        if not record.get("fidelity") or record["fidelity"].get(metric) is None:
            raise UsageError(f"{record['path']} has no golden {'queries' if metric == 'rank_agreement' else 'outputs'} "
                             f"to judge {metric} on — re-export it (rank_agreement: a rerank, sparse-embedding or "
                             f"multi-vector artifact), or drop the {metric} budget")
        return record["fidelity"][metric]
    if metric == "mean_exit_layer":
        exits = record.get("exits")
        if not exits or "text" not in exits["mean_layers"]:
            raise UsageError(f"{record['path']} has no {'text workload' if exits else 'off-ramps'} to judge "
                             "mean_exit_layer on — give the profile a [workload] text file, or drop the budget "
                             "(it applies to artifacts exported from a `bertship exits` folder)")
        return exits["mean_layers"]["text"]
    if metric == "load_s":
        return statistics.median(record["load_s"])
    if metric == "peak_rss_mb":
        return max(record["peak_rss_mb"])
    return record["artifact_mb"]


def margin(bound: str, limit: float, measured: float) -> float:
    """Headroom as a share of the limit (positive: within budget)."""
    return (limit - measured) / limit if bound.startswith("max") else (measured - limit) / limit


def _jobs_for(budget: Budget, results: dict[str, Any]) -> list[str]:
    jobs = [k for k, r in results["jobs"].items() if r["role"] == "candidate"
            and budget.backend in (None, r["backend"]) and budget.threads in (None, r["setting"])]
    if not jobs:
        measured = ", ".join(k for k, r in results["jobs"].items() if r["role"] == "candidate")
        raise UsageError(f"budget {budget.label()!r} applies to no measured job (measured: {measured}) — measure its "
                         "backend and thread setting, or change the budget")
    return jobs


def judge(profile: Profile, results: dict[str, Any]) -> list[Verdict]:
    """One Verdict per (budget, candidate job) of the profile, judged on `results`."""
    verdicts = []
    for budget in profile.budgets:
        metric = METRICS[budget.metric]
        for job_id in _jobs_for(budget, results):
            record = results["jobs"][job_id]
            if metric.per_shape and budget.shape not in record["shapes"]:
                raise UsageError(f"budget {budget.label()!r}: shape {budget.shape} was not measured (measured: "
                                 f"{', '.join(record['shapes'])}) — measure it, or change the budget")
            measured = metric_value(record, budget.metric, budget.shape)
            limit, detail, ref = budget.value, "", None
            if budget.relative:
                ref_id = job_id.replace("candidate/", "reference/", 1)
                if ref_id not in results["jobs"]:
                    raise UsageError(f"budget {budget.label()!r} is relative to a reference artifact, which was not "
                                     "measured — pass --reference ART (e.g. the fp32 export of the same model)")
                ref = metric_value(results["jobs"][ref_id], budget.metric, budget.shape)
                limit = budget.value * ref
                detail = f"reference {ref:.4g} {metric.unit} in the same run"
            m = margin(budget.bound, limit, measured)
            status = "pass" if m >= 0 else "fail"
            busy = loaded(record, budget.shape, results["settings"]["foreign_load_max"])
            if status == "fail" and metric.noisy and busy:
                status = "inconclusive"
                detail = "; ".join(filter(None, [detail, "timed while other processes loaded the CPU"]))
            verdicts.append(Verdict(f"{budget.label()} [{job_id}]", "budget", budget.metric, budget.shape, job_id,
                                    limit, measured, m, status, detail, metric.noisy, reference=ref))
    return verdicts


def suspects(verdicts: list[Verdict], results: dict[str, Any]) -> list[str]:
    """Jobs whose failed timing verdicts deserve a re-measurement before failing (with their reference jobs)."""
    ids: list[str] = []
    for v in verdicts:
        if v.status == "fail" and v.noisy:
            ids.append(v.job)
            ref = v.job.replace("candidate/", "reference/", 1)
            if v.kind == "budget" and v.reference is not None and ref in results["jobs"]:
                ids.append(ref)
    return list(dict.fromkeys(ids))


def outcome(verdicts: list[Verdict]) -> str:
    """'fail' if any verdict failed, else 'inconclusive' if any was, else 'pass'."""
    statuses = {v.status for v in verdicts}
    return "fail" if "fail" in statuses else "inconclusive" if "inconclusive" in statuses else "pass"
