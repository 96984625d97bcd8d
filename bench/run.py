"""Run a profile's benchmark: every artifact x runtime x thread setting timed in its own worker process.

Jobs run in `passes` interleaved passes, each pass in a new shuffled order and a fresh process per job, so a slow
phase of a shared machine spreads over every job instead of landing on one. Raw float milliseconds are kept per timed
block, with the foreign CPU load seen during it; summaries are computed from them, never instead of them. Torch-free.
"""

from __future__ import annotations

import json
import platform
import random
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from bertship.profiles import Profile, machine_facts, parse_shape, require_fit, usable_cores
from bertship.runtimes import artifact, backends
from bertship.runtimes.errors import BertshipError, FidelityError, UsageError

from .progress import Progress
from .stats import shape_summary

FORMAT = 1
_ERRORS = {cls.exit_code: cls for cls in BertshipError.__subclasses__() if cls is not FidelityError}


@dataclass(frozen=True)
class Job:
    """One artifact on one backend at one thread setting: the unit timed in its own process."""

    role: str
    path: str
    backend: str
    setting: int | str  # as the profile writes it: an int, or "cores"
    threads: int
    runtime: dict[str, Any]

    @property
    def id(self) -> str:
        """Stable key, matched between a run and its baseline: role/backend/threads=<setting as written>."""
        return f"{self.role}/{self.backend}/threads={self.setting}"


def model_key(manifest: dict[str, Any]) -> dict[str, Any]:
    """What makes two artifacts the same model for timing: family, task, signature, width, vocabulary, max length.

    The recipe and the weights are left out on purpose: an int8 build or a retrained model is compared with the fp32
    baseline of the same model, which is what a regression check is for.
    """
    cfg = manifest["source"].get("config", {})
    sig = manifest["signature"]
    return {"family": manifest["source"].get("family"), "task": manifest["task"]["name"],
            "inputs": [i["name"] for i in sig["inputs"]], "outputs": [o["name"] for o in sig["outputs"]],
            "hidden_size": cfg.get("hidden_size", cfg.get("dim")), "vocab_size": cfg.get("vocab_size"),
            "max_length": manifest["tokenizer"]["max_length"]}


def _artifact_info(path: str) -> dict[str, Any]:
    manifest = artifact.read_manifest(path)
    sizes = {}
    for name in manifest["backends"]:
        files = artifact.backend_files(manifest, name)
        sizes[name] = sum(f["bytes"] for f in manifest["files"] if f["path"] in files) / 1e6
    return {"path": str(path), "recipe": manifest["recipe"]["name"], "model_key": model_key(manifest),
            "backends": list(manifest["backends"]), "artifact_mb": sizes}


def effective(profile: Profile, shapes: tuple[str, ...] | None = None, threads: tuple[int | str, ...] | None = None,
              only_backends: tuple[str, ...] | None = None, text: str | None = None) -> Profile:
    """The profile with the command line's --shapes, --threads, --backends and --text applied."""
    runtimes = tuple(replace(rt, threads=threads or rt.threads) for rt in profile.runtimes
                     if not only_backends or rt.backend in only_backends)
    if not runtimes:
        raise UsageError(f"--backends {','.join(only_backends or ())} leaves none of profile {profile.name!r}'s "
                         f"runtimes ({', '.join(rt.backend for rt in profile.runtimes)}) — pick from those")
    workload = replace(profile.workload, shapes=tuple(shapes or profile.workload.shapes),
                       text=text or profile.workload.text)
    return replace(profile, runtimes=runtimes, workload=workload)


def plan(profile: Profile, artifacts: dict[str, dict[str, Any]]) -> tuple[list[Job], list[str]]:
    """The jobs to time, and notes on runtimes left out (a backend the artifact was not built for)."""
    jobs, notes, cores = [], [], usable_cores()
    for role, info in artifacts.items():
        for rt in profile.runtimes:
            if rt.backend not in info["backends"]:
                notes.append(f"{role} artifact has no {rt.backend} model (built: {', '.join(info['backends'])}): "
                             f"the profile's {rt.backend} runtime is not timed for it")
                continue
            backends.require(rt.backend)
            spec = {"providers": list(rt.providers), "require": list(rt.require), "provider_options": rt.options_for(),
                    "io_binding": rt.io_binding, "model_format": rt.model_format}
            if rt.disabled_optimizers is not None:
                spec["disabled_optimizers"] = list(rt.disabled_optimizers)
            for setting in rt.threads:
                n = cores if setting == "cores" else int(setting)
                jobs.append(Job(role, info["path"], rt.backend, setting, n, spec))
    if not any(j.role == "candidate" for j in jobs):
        raise UsageError(f"no runtime of profile {profile.name!r} applies to this artifact (built: "
                         f"{', '.join(artifacts['candidate']['backends'])}) — re-export it for "
                         f"{', '.join(rt.backend for rt in profile.runtimes)}, or pass another profile")
    return jobs, notes


def run_worker(job: Job, settings: dict[str, Any], workload: dict[str, Any], seed: int, fidelity: bool) -> dict:
    """Time one job in a fresh process; its JSON, or the worker's typed error raised here."""
    cmd = [sys.executable, "-m", "bertship.bench.worker", job.path, "--backend", job.backend, "--threads",
           str(job.threads), "--shapes", *workload["shapes"], "--warmup", str(settings["warmup"]), "--iters",
           str(settings["iterations"]), "--rounds", str(settings["rounds"]), "--seed", str(seed), "--runtime",
           json.dumps(job.runtime), "--load-limit", str(settings["foreign_load_max"]), "--retries",
           str(settings["retries"])] + (["--fidelity"] if fidelity else [])
    if workload.get("text"):
        cmd += ["--text", workload["text"]["path"], "--text-batch", str(workload["text"]["batch"]),
                "--text-limit", str(workload["text"]["limit"])]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
    try:
        out = json.loads(last)
    except json.JSONDecodeError:
        out = {}
    if proc.returncode != 0 or "error" in out:
        if out.get("exit_code") in _ERRORS:
            raise _ERRORS[out["exit_code"]](out["error"])
        raise RuntimeError(f"benchmark worker for {job.id} failed (exit {proc.returncode}): "
                           f"{proc.stderr.strip()[-1500:]}")
    return out


def _merge(record: dict[str, Any], out: dict[str, Any], pass_index: int) -> None:
    """Add one worker run (one pass) to a job's record."""
    record["load_s"].append(out["load_s"])
    record["load_foreign"].append(out["load_foreign"])
    record["peak_rss_mb"].append(out["peak_rss_mb"])
    record["harness_overhead_us"].append(out["harness_overhead_us"])
    record["env"] = record["env"] or out["env"]
    if out.get("fidelity"):
        record["fidelity"] = out["fidelity"]
    if out.get("exits"):
        record["exits"] = out["exits"]
    record["notes"] = list(dict.fromkeys(record["notes"] + out["notes"]))
    for key, blocks in out["blocks"].items():
        shape = record["shapes"].setdefault(key, {"blocks": []})
        shape["blocks"] += [dict(b, **{"pass": pass_index}) for b in blocks]


def summarize_job(record: dict[str, Any]) -> None:
    """(Re)compute every shape's summary from its blocks."""
    for key, shape in record["shapes"].items():
        shape["summary"] = shape_summary(shape["blocks"], text=key == "text")


def bench(profile: Profile, candidate: str | Path, reference: str | Path | None = None, *,
          shapes: tuple[str, ...] | None = None, threads: tuple[int | str, ...] | None = None,
          only_backends: tuple[str, ...] | None = None, text: str | None = None, facts: dict[str, Any] | None = None,
          progress: Progress | None = None, command: str = "") -> dict[str, Any]:
    """Check the machine fits, time every job of the profile, and return the results (format: docs in README)."""
    profile = effective(profile, shapes, threads, only_backends, text)
    artifacts = {"candidate": _artifact_info(str(candidate))}
    if reference is not None:
        artifacts["reference"] = _artifact_info(str(reference))
    facts = machine_facts() if facts is None else facts
    require_fit(profile, facts, [a["recipe"] for a in artifacts.values()])
    workload = _workload(profile, artifacts)
    jobs, notes = plan(profile, artifacts)
    settings = {k: getattr(profile.measure, k) for k in ("warmup", "iterations", "rounds", "passes",
                                                        "foreign_load_max", "retries")}
    records = {j.id: _record(j, artifacts[j.role]) for j in jobs}
    progress = progress or Progress(len(jobs) * settings["passes"])
    rng = random.Random(0)
    for p in range(settings["passes"]):
        order = list(jobs)
        rng.shuffle(order)
        for job in order:
            progress.start(f"pass {p + 1}/{settings['passes']} {job.id}")
            _merge(records[job.id], run_worker(job, settings, workload, seed=p, fidelity=p == 0), p)
            progress.done()
    progress.close()
    for record in records.values():
        summarize_job(record)
    return {
        "bertship_bench": FORMAT, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": command,
        "profile": {"name": profile.name, "source": profile.source, "data": profile.as_dict()},
        "machine": {**facts, "python": platform.python_version(), "platform": platform.platform()},
        "artifacts": artifacts, "workload": workload, "settings": settings, "jobs": records,
        "overhead": overhead(records), "notes": notes + list(profile.notes),
    }


def remeasure(results: dict[str, Any], job_ids: list[str], progress: Progress | None = None) -> None:
    """Time these jobs once more (a fresh process each, one more pass) and merge the blocks into `results`."""
    settings, workload = results["settings"], results["workload"]
    progress = progress or Progress(len(job_ids))
    for job_id in job_ids:
        record = results["jobs"][job_id]
        job = Job(record["role"], record["path"], record["backend"], record["setting"], record["threads"],
                  record["runtime"])
        pass_index = 1 + max(b["pass"] for s in record["shapes"].values() for b in s["blocks"])
        progress.start(f"re-measure {job_id}")
        _merge(record, run_worker(job, settings, workload, seed=pass_index, fidelity=False), pass_index)
        progress.done()
        summarize_job(record)
    progress.close()
    results["overhead"] = overhead(results["jobs"])


def overhead(records: dict[str, Any]) -> dict[str, float]:
    """The harness's own per-call cost against the smallest latency reported (target: under 1 %)."""
    worst = max(x for r in records.values() for x in r["harness_overhead_us"])
    smallest = min(s["summary"]["p50"] for r in records.values() for k, s in r["shapes"].items() if k != "text")
    return {"harness_us": worst, "smallest_p50_ms": smallest, "percent": worst / 10.0 / smallest}


def _record(job: Job, info: dict[str, Any]) -> dict[str, Any]:
    return {"role": job.role, "path": job.path, "backend": job.backend, "setting": job.setting,
            "threads": job.threads, "runtime": job.runtime, "recipe": info["recipe"],
            "artifact_mb": info["artifact_mb"][job.backend], "env": None, "fidelity": None, "notes": [],
            "load_s": [], "load_foreign": [], "peak_rss_mb": [], "harness_overhead_us": [], "shapes": {}}


def _workload(profile: Profile, artifacts: dict[str, Any]) -> dict[str, Any]:
    """Shapes and text, checked against every artifact's max length before any process starts."""
    chosen, text = list(profile.workload.shapes), profile.workload.text
    longest = min(a["model_key"]["max_length"] for a in artifacts.values())
    for shape in chosen:
        if parse_shape(shape)[1] > longest:
            raise UsageError(f"shape {shape} is longer than the artifact's max length {longest} — pass --shapes "
                             f"with sequences up to {longest}")
    if text is not None and not Path(text).is_file():
        raise UsageError(f"text workload {text!r} does not exist — pass a file with one text a line")
    spec = {"path": str(text), "batch": profile.workload.text_batch, "limit": profile.workload.text_limit}
    return {"shapes": chosen, "text": spec if text else None}
