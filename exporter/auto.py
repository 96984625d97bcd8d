"""`--recipe auto`: build every recipe suited to the backends and this machine, keep the fastest that holds the
accuracy limit, and record every candidate (score, latency, size, verdict) in the winner's manifest.

Each candidate is a complete artifact (its own fidelity gate included), scored on the user's eval data (accuracy) or
on the calibration text (output cosine against the fp32 candidate), and timed in its own process by bench.worker.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

from bertship.runtimes import artifact, load
from bertship.runtimes.errors import BertshipError, FidelityError
from bertship.runtimes.evaluate import EvalData, evaluate, read_eval_data

from . import calibration, package
from .fallback import parse_drop
from .options import ExportOptions
from .recipes import RECIPES

# Recipes worth trying for speed on a CPU backend, in order. fp16 and ONNX Runtime's weight-only MatMulNBits are
# size recipes here (measured slower than fp32 on CPU), so they are not candidates.
CANDIDATES = {
    "onnxruntime": ("fp32", "int8-dynamic", "int8-static"),
    "openvino": ("fp32", "bf16", "int8-static", "int8-weight-only"),
}
DEFAULT_DROP = "1%"  # MLPerf's bert-99 rule: keep at least 99 % of fp32 accuracy
TIMED_SHAPE = "1x128"


def candidates(backends: tuple[str, ...], cpu_flags: list[str]) -> list[tuple[str, str]]:
    """(recipe, backend) pairs to try: those each backend supports and this CPU can run."""
    out = []
    for backend in backends:
        for name in CANDIDATES[backend]:
            recipe = RECIPES[name]
            if backend in recipe.how and (not recipe.isa_any or set(recipe.isa_any) & set(cpu_flags)):
                out.append((name, backend))
    return out


def _time(path: Path, backend: str, threads: int | None, max_length: int) -> float:
    """p50 ms at 1x128 (or the model's max length if shorter), measured in a fresh process."""
    seq = min(128, max_length)
    cmd = [sys.executable, "-m", "bertship.bench.worker", str(path), "--backend", backend, "--shapes", f"1x{seq}",
           "--warmup", "3", "--iters", "10", "--rounds", "3"]
    if threads:
        cmd += ["--threads", str(threads)]
    result = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
    samples = sorted(next(iter(result["samples_ms"].values())))
    return samples[len(samples) // 2]


def run_auto(build: Callable[..., Path], out: Path, opts: ExportOptions, names: tuple[str, ...],
             cpu_flags: list[str], log: Callable[[str], None]) -> Path:
    """Build, score and time every candidate; publish the fastest within the limit at `out`."""
    max_drop = parse_drop(opts.max_accuracy_drop or DEFAULT_DROP)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.auto-", dir=out.parent if out.parent.exists() else None))
    try:
        tried: list[dict[str, Any]] = []
        built: dict[tuple[str, str], Path] = {}
        for recipe, backend in candidates(names, cpu_flags):
            log(f"[bertship] auto     candidate {recipe} on {backend}")
            sub = replace(opts, recipe=recipe, backends=(backend,), force=False,
                          max_accuracy_drop=(opts.max_accuracy_drop or DEFAULT_DROP)
                          if recipe in ("int8-dynamic", "int8-static") else None,
                          eval_data=opts.eval_data if recipe in ("int8-dynamic", "int8-static") else None,
                          calibration=opts.calibration if RECIPES[recipe].needs_calibration else None)
            try:
                built[(recipe, backend)] = build(out=work / f"{recipe}-{backend}", options=sub, log=log)
                tried.append({"recipe": recipe, "backend": backend, "status": "built"})
            except (BertshipError, RuntimeError) as exc:
                tried.append({"recipe": recipe, "backend": backend, "status": "failed", "reason": str(exc)})
                log(f"[bertship] auto     {recipe} on {backend} failed: {exc}")
        fp32 = next((p for (r, _), p in built.items() if r == "fp32"), None)
        data, reference = _scoring(opts, fp32)
        for entry in tried:
            if entry["status"] != "built":
                continue
            path = built[(entry["recipe"], entry["backend"])]
            model_ = load(path, backend=entry["backend"], threads=opts.threads)
            result = evaluate(model_, data, reference)
            score = result.get("accuracy", result.get("cosine_mean"))
            manifest = artifact.read_manifest(path)
            entry.update(metric="accuracy" if "accuracy" in result else "cosine", score=score,
                         size_bytes=sum(f["bytes"] for f in manifest["files"]
                                        if f["path"].startswith(entry["backend"] + "/")),
                         p50_ms=_time(path, entry["backend"], opts.threads, manifest["tokenizer"]["max_length"]))
        base = max((e["score"] for e in tried if e.get("recipe") == "fp32" and "score" in e), default=1.0)
        for entry in tried:
            if "score" in entry:
                entry["within_limit"] = entry["score"] >= (1 - max_drop) * base
        ok = [e for e in tried if e.get("within_limit")]
        if not ok:
            raise FidelityError([f"{e['recipe']} on {e['backend']}: {e.get('reason') or e.get('score')}" for e in tried],
                                "no candidate holds the accuracy limit; nothing was written — raise --max-accuracy-drop")
        winner = min(ok, key=lambda e: e["p50_ms"])
        for entry in tried:
            log(f"[bertship] auto     {entry['recipe']:<16} {entry['backend']:<11} "
                + (f"{entry['metric']} {entry['score']:.4f}  p50 {entry['p50_ms']:.2f} ms  "
                   f"{entry['size_bytes'] / 1e6:.1f} MB  {'ok' if entry['within_limit'] else 'over the limit'}"
                   if "score" in entry else f"failed: {entry['reason'][:120]}"))
        path = built[(winner["recipe"], winner["backend"])]
        manifest = artifact.read_manifest(path)
        manifest["auto"] = {
            "max_drop": max_drop, "baseline": base, "timed_shape": TIMED_SHAPE, "candidates": tried,
            "winner": {"recipe": winner["recipe"], "backend": winner["backend"]},
            "why": f"fastest p50 ({winner['p50_ms']:.2f} ms) of {len(ok)} candidate(s) within "
                   f"{max_drop:.2%} of the fp32 {winner['metric']}",
        }
        package.rewrite(path, manifest)
        if out.exists():
            package.check_out(out, opts.force)
        package.publish(path, out)
        log(f"[bertship] auto     winner: {winner['recipe']} on {winner['backend']} — {manifest['auto']['why']}")
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _scoring(opts: ExportOptions, fp32: Path | None) -> tuple[EvalData, Any]:
    """Eval data and reference: labelled data when given, else the calibration text compared with the fp32 candidate."""
    if fp32 is None:
        raise FidelityError(["the fp32 candidate failed, so nothing can be compared with it"],
                            "nothing was written; export --recipe fp32 first to see why")
    ref = load(fp32)
    if opts.eval_data is not None:
        return read_eval_data(opts.eval_data, ref.task, ref.manifest["task"].get("id2label")), None
    texts, pairs, origin = calibration.read_texts(opts.calibration)
    return EvalData(texts, pairs, None, origin), ref
