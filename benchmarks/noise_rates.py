"""How often does `bertship check --baseline` cry wolf, and how often does it catch a real slowdown?

    python -m benchmarks.noise_rates --trials 20 --out benchmarks/results

Each trial measures a fresh baseline and then runs the same check `bertship check --baseline` runs (confirmation by
re-measuring included), through the library:
  false alarm: the unchanged artifact against its own fresh baseline — any non-zero outcome is a false alarm;
  detection:   a real slowdown against the fast baseline — `threads`: the baseline timed at --fast-threads, the check
               at --slow-threads (the baseline's job relabelled, as if the thread count had silently changed), or
               `artifact`: the baseline of --artifact, the check of --slow-artifact (e.g. fp32 in place of int8).
Trials of both kinds alternate, so a slow phase of the machine hits both. Without --artifact the bundled MiniLM is
exported first (needs the export extra). Writes noise_rates.json (every trial, raw ratios) and noise_rates.md.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from bertship.profiles import load_profile
from bertship.profiles.schema import Profile

from bertship.bench.check import check
from bertship.bench.progress import Progress
from bertship.bench.run import bench


def wilson(hits: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a rate hits/n."""
    if n == 0:
        return 0.0, 1.0
    p = hits / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def trial_profile(base: Profile, args: argparse.Namespace, threads: int | str) -> Profile:
    """The base profile cut to what the experiment judges: one backend at one thread setting, no budgets."""
    runtimes = tuple(replace(rt, threads=(threads,)) for rt in base.runtimes if rt.backend == args.backend)
    measure = replace(base.measure, iterations=args.iterations, rounds=args.rounds, passes=args.passes)
    workload = replace(base.workload, shapes=tuple(args.shapes), text=None)
    return replace(base, runtimes=runtimes, budgets=(), measure=measure, workload=workload)


def relabel(results: dict[str, Any], threads: int | str) -> dict[str, Any]:
    """A copy of bench results whose jobs claim another thread setting (the detection trial's hidden change)."""
    out = copy.deepcopy(results)
    jobs = {}
    for job_id, record in out["jobs"].items():
        record["setting"] = threads
        jobs[job_id.rsplit("=", 1)[0] + f"={threads}"] = record
    out["jobs"] = jobs
    return out


def one_trial(kind: str, args: argparse.Namespace, fast: Profile, slow: Profile) -> dict[str, Any]:
    """Measure a baseline, then check against it; the outcome and the floor ratios it saw."""
    quiet = Progress(1, quiet=True)
    started = time.perf_counter()
    baseline = bench(fast, args.artifact, progress=quiet)
    if kind == "false-alarm":
        report = check(fast, args.artifact, baseline=baseline, progress=quiet)
    elif args.slowdown == "threads":
        report = check(slow, args.artifact, baseline=relabel(baseline, args.slow_threads), progress=quiet)
    else:
        report = check(fast, args.slow_artifact, baseline=baseline, progress=quiet)
    ratios = {f"{v.job} {v.shape}": v.measured / v.reference for v in report.verdicts if v.reference}
    return {"kind": kind, "status": report.status, "remeasured": report.remeasured, "floor_ratio": ratios,
            "verdicts": [v.as_dict() for v in report.verdicts], "seconds": time.perf_counter() - started,
            "max_foreign_share": max((b["foreign"] or 0.0) for r in report.results["jobs"].values()
                                     for s in r["shapes"].values() for b in s["blocks"])}


def rates(trials: list[dict[str, Any]]) -> dict[str, Any]:
    """False-alarm and detection rates with 95 % intervals; 'fail' is exit 7, 'non-zero' adds inconclusive (9)."""
    out: dict[str, Any] = {}
    for kind, bad in (("false-alarm", True), ("detection", False)):
        runs = [t for t in trials if t["kind"] == kind]
        fails = sum(t["status"] == "fail" for t in runs)
        nonzero = sum(t["status"] != "pass" for t in runs)
        out[kind] = {"trials": len(runs), "fail": fails, "inconclusive": nonzero - fails, "pass": len(runs) - nonzero,
                     "rate_fail": fails / len(runs) if runs else None,
                     "rate_nonzero": nonzero / len(runs) if runs else None,
                     "interval_95_nonzero" if bad else "interval_95_fail": wilson(nonzero if bad else fails, len(runs))}
    return out


def markdown(result: dict[str, Any]) -> str:
    """The rates and every trial as Markdown."""
    r, a = result["rates"], result["settings"]
    fa, de = r["false-alarm"], r["detection"]
    lines = [f"# `bertship check --baseline`: false alarms and detection ({result['created']})", "",
             f"Machine: {result['machine']}; 1-minute load average {result['load_average']['before'][0]:.1f} before, "
             f"{result['load_average']['after'][0]:.1f} after (other processes). Command: `{result['command']}`.",
             f"Artifact: `{a['artifact']}`; slowdown: {a['slowdown']}; shapes {', '.join(a['shapes'])}; backend "
             f"{a['backend']}; {a['passes']} pass(es) x {a['rounds']} rounds x {a['iterations']} calls.", "",
             "| trial kind | trials | pass | fail (exit 7) | inconclusive (exit 9) | rate | 95 % interval |",
             "|---|---|---|---|---|---|---|",
             f"| unchanged artifact vs its own baseline | {fa['trials']} | {fa['pass']} | {fa['fail']} | "
             f"{fa['inconclusive']} | false alarms (non-zero exit) {fa['rate_nonzero']:.0%} | "
             f"{fa['interval_95_nonzero'][0]:.0%}–{fa['interval_95_nonzero'][1]:.0%} |",
             f"| real slowdown | {de['trials']} | {de['pass']} | {de['fail']} | {de['inconclusive']} | "
             f"detected (exit 7) {de['rate_fail']:.0%} | "
             f"{de['interval_95_fail'][0]:.0%}–{de['interval_95_fail'][1]:.0%} |",
             "", "inconclusive (exit 9): the check refused to judge because the run or its baseline was timed while "
             "other processes loaded the CPU; a false alarm is any non-zero exit on the unchanged artifact.",
             "", "| # | kind | outcome | floor ratio now / baseline | re-measured | max foreign CPU share | s |",
             "|---|---|---|---|---|---|---|"]
    for i, t in enumerate(result["trials"]):
        ratios = ", ".join(f"{k.split()[-1]} {v:.3f}" for k, v in t["floor_ratio"].items())
        lines.append(f"| {i} | {t['kind']} | {t['status']} | {ratios} | {'yes' if t['remeasured'] else 'no'} | "
                     f"{t['max_foreign_share']:.2f} | {t['seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.noise_rates", description=__doc__.splitlines()[0])
    parser.add_argument("--artifact", default=None, help="default: export the bundled MiniLM (fp32, onnxruntime)")
    parser.add_argument("--slowdown", choices=["threads", "artifact"], default="threads")
    parser.add_argument("--slow-artifact", default=None, help="--slowdown artifact: the slower artifact to check")
    parser.add_argument("--fast-threads", type=int, default=2)
    parser.add_argument("--slow-threads", type=int, default=1)
    parser.add_argument("--profile", default="server-cpu", help="base profile: its [measure] and [baseline] rules")
    parser.add_argument("--backend", default="onnxruntime")
    parser.add_argument("--shapes", nargs="+", default=["1x128", "8x128"])
    parser.add_argument("--iterations", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--passes", type=int, default=2)
    parser.add_argument("--trials", type=int, default=20, help="trials of each kind")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    args = parser.parse_args(argv)
    if args.slowdown == "artifact" and not args.slow_artifact:
        parser.error("--slowdown artifact needs --slow-artifact")
    if args.artifact is None:
        args.artifact = str(Path(tempfile.mkdtemp(prefix="bertship-noise-")) / "minilm")
        print(f"[noise] exporting the bundled MiniLM to {args.artifact} …", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "bertship.cli", "export", "--out", args.artifact, "--backends",
                        args.backend], check=True)
    load_before = os.getloadavg()
    base = load_profile(args.profile)
    fast = trial_profile(base, args, args.fast_threads)
    slow = trial_profile(base, args, args.slow_threads)
    trials = []
    for i in range(args.trials):
        for kind in ("false-alarm", "detection") if i % 2 == 0 else ("detection", "false-alarm"):
            trials.append(one_trial(kind, args, fast, slow))
            t = trials[-1]
            print(f"[noise] trial {i + 1}/{args.trials} {kind}: {t['status']} "
                  f"({', '.join(f'{v:.3f}' for v in t['floor_ratio'].values())}; {t['seconds']:.0f} s)", file=sys.stderr)
    from bertship.profiles import cpu_info

    cpu = cpu_info()
    result = {"created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
              "command": "python -m benchmarks.noise_rates " + " ".join(argv if argv is not None else sys.argv[1:]),
              "machine": f"{cpu['model']} ({cpu['arch']}, {cpu['cores']} cores)",
              "load_average": {"before": load_before, "after": os.getloadavg()},
              "settings": {k: v for k, v in vars(args).items() if k != "out"} | {"shapes": list(args.shapes)},
              "rule": fast.baseline.__dict__, "rates": rates(trials), "trials": trials}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "noise_rates.json").write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    (args.out / "noise_rates.md").write_text(markdown(result), encoding="utf-8")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
