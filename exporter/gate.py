"""Fidelity gate: before anything is published, every backend must reproduce PyTorch on the golden sentences."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable

from bertship.runtimes import artifact, backends, cpuclass
from bertship.runtimes.errors import FidelityError
from bertship.runtimes.tokenizer import TextEncoder
from bertship.runtimes.verify import Feeds, backend_checks, tokenizer_failures


def run_gate(
    staging: Path, manifest: dict[str, Any], feeds: Feeds, refs: Feeds, texts: list[str], pairs: list[str] | None,
    threads: int | None, sweep=None, log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Check the bundled tokenizer and run every built backend on the golden feeds; `log` gets one line per backend
    with its load and check times (minutes for large models).

    Returns the per-backend report; raises FidelityError listing every failing output of every backend.
    """
    encoder = TextEncoder(staging / artifact.TOKENIZER, manifest["tokenizer"])
    failures = tokenizer_failures(encoder, texts, pairs, feeds)
    report: dict[str, Any] = {}
    for name, entry in manifest["backends"].items():
        start = time.perf_counter()
        runner = backends.open_runner(staging, entry, name, threads, entry.get("options"))
        loaded = time.perf_counter() - start
        report[name], failed = backend_checks(runner, manifest, feeds, refs, texts, sweep)
        report[name]["cpu_class"] = cpuclass.runtime_class(name)
        failures += failed
        del runner  # one backend's session (weights, pre-packed kernels) in memory at a time
        if log is not None:
            parts = ", ".join(f"{k.replace('_', ' ')} {v:.1f}" for k, v in report[name]["check_s"].items())
            log(f"[bertship]          {name}: session {loaded:.1f} s, checks {time.perf_counter() - start - loaded:.1f} s "
                f"({parts})")
    if failures:
        recipe = manifest["recipe"]["name"]
        if any("depend on batch-mates" in f for f in failures):
            why = ("int8-dynamic computes one activation scale per padded batch" if recipe == "int8-dynamic" else
                   "the runtime picks kernels by batch shape, and they round differently")
            fix = (f"nothing was written; this artifact's outputs change with batch-mates and padding ({why}) — use "
                   "int8-static, int8-mixed or a float recipe, or pass --allow-batch-dependence to accept it "
                   "(recorded in the manifest)")
        elif all("length sweep" in f and "computes that shape wrongly" in f for f in failures):
            fix = ("nothing was written; the runtime computes some sequence lengths wrongly under this recipe — use "
                   "another recipe or backend (with int8-mixed: its search covers the sweep), and report the length")
        elif any("--min-cosine" in f for f in failures):
            fix = ("nothing was written; use --recipe int8-mixed (keeps the sensitive groups in float until the "
                   "target holds), bf16 or int8-weight-only, or lower --min-cosine")
        elif recipe == "fp32":
            fix = "nothing was written; an fp32 export should match PyTorch: report the model family and these numbers"
        else:
            fix = (f"nothing was written; recipe {recipe!r} damages this model: try int8-mixed "
                   "(keeps the measured-sensitive groups in float), a weight-only recipe, or calibration text closer "
                   "to your data")
        raise FidelityError(failures, fix)
    for name, entry in manifest["backends"].items():
        entry.setdefault("cpu_class", {"target": report[name]["cpu_class"], "verified_on": []})["verified_on"].append(
            {"class": report[name]["cpu_class"], "how": "export gate, this machine's kernels"})
    return report


def cross_class_checks(staging: Path, manifest: dict[str, Any], threads: int | None,
                       log: Callable[[str], None] | None = None) -> bool:
    """Verify each int8 backend built for another CPU class than this machine's on that class's kernels, where this
    machine can run them (cpuclass.emulation), in a fresh process (runtimes.classcheck): the staged artifact, its
    checksums and the gate's checks (the golden texts only, without the length sweep, under a slow emulation).
    Records each pass under the backend's cpu_class.verified_on; raises FidelityError on a miss. True when any ran."""
    import json
    import os
    import subprocess
    import sys

    if not cpuclass.computes_int8(manifest):
        return False
    ran = False
    for name, entry in manifest["backends"].items():
        record = entry["cpu_class"]
        target = record["target"]
        if any(v["class"] == target for v in record["verified_on"]):
            continue
        emu = cpuclass.emulation(name, target)
        if emu is None:
            if log is not None:
                log(f"[bertship] verify   {name}: this machine cannot run {target} int8 kernels; load() re-checks "
                    f"the golden texts on the first {target} machine")
            continue
        cmd = [*emu.prefix, sys.executable, "-m", "bertship.runtimes.classcheck", str(staging), name]
        what = "the golden texts (no length sweep: emulation is slow, ~2.5 min for MiniLM)" if emu.slow else "every check"
        if log is not None:
            log(f"[bertship] verify   {name} on {target} kernels ({emu.how}): {what} …")
        start = time.perf_counter()
        cmd += (["--golden-only"] if emu.slow else []) + (["--threads", str(threads)] if threads else [])
        done = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **emu.env}, check=False)
        if done.returncode != 0 or not done.stdout.strip():
            raise RuntimeError(f"the {target} check of {name} ({emu.how}) could not run: "
                               f"{(done.stderr.strip().splitlines() or [str(done.returncode)])[-1]}")
        result = json.loads(done.stdout.strip().splitlines()[-1])
        if result["cpu_class"] != target:
            raise RuntimeError(f"{emu.how} ran {name} as {result['cpu_class']}, not {target}: the emulation did not "
                               "take; nothing was written")
        if result["failures"]:
            raise FidelityError([f"on {target} kernels ({emu.how}): {f}" for f in result["failures"]],
                                f"nothing was written; the artifact built for {target} does not hold there — try "
                                "int8-mixed or a float recipe for that class")
        report = result["report"]
        record["verified_on"].append({"class": target, "how": emu.how + (", golden texts only" if emu.slow else ""),
                                      "tail_cosine_min": report["tail"]["cosine_min"],
                                      "output_cosine_min": min(o["cosine_min"] for o in report["outputs"])})
        ran = True
        if log is not None:
            log(f"[bertship] verify   {name} on {target} kernels: passed in {time.perf_counter() - start:.1f} s, "
                f"per-text cosine min {report['tail']['cosine_min']:.5f}")
    return ran
