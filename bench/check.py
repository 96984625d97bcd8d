"""`bertship check`: measure (or read) results, judge every budget and the baseline, confirm failures, decide.

Order matters: the machine is checked first (a mismatch is exit 8 before anything is timed), a baseline is checked
for compatibility before any timing verdict, and a suspected timing failure is re-measured in a fresh process, after
a pause, before it may fail the run. Exit: 0 all pass, 7 a confirmed failure, 9 judged only under foreign load.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from bertship.profiles import Profile, machine_facts, require_fit
from bertship.runtimes import artifact
from bertship.runtimes.errors import BudgetError, InconclusiveError, UsageError

from . import baseline as baseline_mod
from .budgets import Verdict, judge, outcome, suspects
from .progress import Progress
from .run import FORMAT, bench, effective, model_key, remeasure


@dataclass
class CheckReport:
    """Everything a check decided: the results it judged, each verdict, what was re-measured."""

    results: dict[str, Any]
    verdicts: list[Verdict]
    remeasured: list[str] = field(default_factory=list)

    @property
    def status(self) -> str:
        """'pass', 'fail' or 'inconclusive'."""
        return outcome(self.verdicts)

    def as_dict(self) -> dict[str, Any]:
        """The results with the verdicts beside them (what `check --json` writes)."""
        return {**self.results, "check": {"status": self.status, "remeasured": self.remeasured,
                                          "verdicts": [v.as_dict() for v in self.verdicts]}}


def _judge_all(profile: Profile, results: dict[str, Any], base: dict[str, Any] | None) -> list[Verdict]:
    verdicts = judge(profile, results)
    if base is not None:
        verdicts += baseline_mod.compare(results, base, profile.baseline)
    return verdicts


def check(profile: Profile, candidate: str | Path | None = None, *, reference: str | Path | None = None,
          baseline: dict[str, Any] | None = None, results: dict[str, Any] | None = None,
          facts: dict[str, Any] | None = None, progress: Progress | None = None, confirm: bool = True,
          **bench_options: Any) -> CheckReport:
    """Judge a profile's budgets (and a baseline) on a fresh measurement of `candidate`, or on given `results`."""
    live = results is None
    if live:
        if candidate is None:
            raise UsageError("nothing to check — pass an artifact, or --results FILE of an earlier bench")
        relative = [b.label() for b in profile.budgets if b.relative]
        if relative and reference is None:
            raise UsageError(f"budget {relative[0]!r} is relative to a reference artifact timed in the same run — "
                             "pass --reference ART (e.g. the fp32 export of the same model)")
        facts = machine_facts() if facts is None else facts
        preview = _preview(profile, candidate, facts, bench_options)
        shapes = preview["workload"]["shapes"] + (["text"] if preview["workload"]["text"] else [])
        unmeasured = [b.label() for b in profile.budgets if b.shape and b.shape not in shapes]
        if unmeasured:
            raise UsageError(f"budget {unmeasured[0]!r} is on a shape this run does not measure ({', '.join(shapes)})"
                             " — measure it (--shapes), or use a profile without that budget")
        if baseline is not None:  # refuse an unusable baseline before minutes of timing, not after
            baseline_mod.check_compatible(preview, baseline, jobs=False)
        results = bench(profile, candidate, reference, facts=facts, progress=progress, **bench_options)
    else:
        _check_results(profile, results, candidate)
    if baseline is not None:
        baseline_mod.check_compatible(results, baseline)
    verdicts = _judge_all(profile, results, baseline)
    redo = suspects(verdicts, results) if live and confirm else []
    if redo:
        time.sleep(profile.baseline.confirm_pause_s)  # a slow phase of a shared machine often passes in seconds
        remeasure(results, redo, Progress(len(redo), quiet=progress is not None and progress.quiet))
        first = {v.name: v for v in verdicts}
        verdicts = [replace(v, confirmed=v.status == "fail" and first[v.name].status == "fail")
                    for v in _judge_all(profile, results, baseline)]
    return CheckReport(results, verdicts, redo)


def _preview(profile: Profile, candidate: str | Path, facts: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """What a run will be compared on, known before it runs: the model, the shapes, the machine."""
    eff = effective(profile, *(options.get(k) for k in ("shapes", "threads", "only_backends", "text")))
    return {"artifacts": {"candidate": {"model_key": model_key(artifact.read_manifest(candidate))}},
            "workload": {"shapes": list(eff.workload.shapes), "text": eff.workload.text}, "machine": facts}


def _check_results(profile: Profile, results: dict[str, Any], candidate: str | Path | None) -> None:
    """Results given with --results: the right format, a machine that fits, the same model as the artifact."""
    if not isinstance(results, dict) or results.get("bertship_bench") != FORMAT:
        raise UsageError(f"--results is not a bertship bench JSON (format {FORMAT}) — pass the --json of "
                         "`bertship bench`")
    require_fit(profile, results["machine"], [a["recipe"] for a in results["artifacts"].values()])
    if candidate is not None:
        key = model_key(artifact.read_manifest(candidate))
        if key != results["artifacts"]["candidate"]["model_key"]:
            raise UsageError(f"--results measured another model than {candidate} "
                             f"({results['artifacts']['candidate']['path']}) — pass the results of this artifact")


def raise_for(report: CheckReport) -> None:
    """BudgetError (exit 7) for a failure, InconclusiveError (exit 9) when what failed was timed under load."""
    failed = [v for v in report.verdicts if v.status == "fail"]
    if failed:
        shown = "; ".join(f"{v.name}: {v.measured:.4g} vs limit {v.limit:.4g} ({v.margin:+.0%})" for v in failed[:3])
        more = f" and {len(failed) - 3} more" if len(failed) > 3 else ""
        raise BudgetError(f"{len(failed)} of {len(report.verdicts)} checks failed: {shown}{more} — see the table "
                          "(or --junit); fix the regression, or change the budget if it was deliberate")
    unsure = [v for v in report.verdicts if v.status == "inconclusive"]
    if unsure:
        raise InconclusiveError(f"{len(unsure)} of {len(report.verdicts)} checks cannot be judged: their timings (or "
                                f"the baseline's) were taken while other processes loaded the CPU (first: "
                                f"{unsure[0].name}) — re-run on a quiet machine")
