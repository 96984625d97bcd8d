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

from bertship.runtimes import artifact, cpuclass, load
from bertship.runtimes.errors import BertshipError, FidelityError, UsageError
from bertship.runtimes.evaluate import EvalData, evaluate, read_eval_data

from . import calibration, package
from .fallback import parse_drop, parse_min_cosine
from .options import ExportOptions
from .recipes import EMBEDDING_TASKS, RECIPES

# Recipes worth trying for speed on a CPU backend, in order. fp16 and ONNX Runtime's weight-only MatMulNBits are
# size recipes here (measured slower than fp32 on CPU), so they are not candidates.
CANDIDATES = {
    "onnxruntime": ("fp32", "int8-dynamic", "int8-static"),
    "openvino": ("fp32", "bf16", "int8-static", "int8-weight-only"),
}
DEFAULT_DROP = "1%"  # MLPerf's bert-99 rule: keep at least 99 % of fp32 accuracy
TIMED_SHAPE = "1x128"
# With --min-cosine, the mixed recipe joins the candidates: its search is what can meet a tail target with int8.
MIXED = "int8-mixed"
_SEARCHING = ("int8-dynamic", "int8-static", MIXED)


def candidates(backends: tuple[str, ...], cpu_flags: list[str],
               wanted: tuple[str, ...] | None = None, mixed: bool = False) -> list[tuple[str, str]]:
    """(recipe, backend) pairs to try: those each backend supports and this CPU can run (`wanted`: a profile's
    candidate recipes, in its order; None: the CPU defaults above, plus int8-mixed when `mixed`)."""
    out = []
    for backend in backends:
        for name in (wanted if wanted is not None else CANDIDATES[backend] + ((MIXED,) if mixed else ())):
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
             cpu_flags: list[str], log: Callable[[str], None], profile: Any = None,
             timed_here: bool = True, cpu_class: str | None = None) -> Path:
    """Build, score and time every candidate; publish the fastest within the limit at `out`.

    With a profile, its candidate recipes are tried; when this machine is not the profile's target (`timed_here`
    False: e.g. an ARM profile exported on x86) nothing is timed and the profile's order decides among the
    candidates that hold the limit. A profile asking for the ORT format gets the winner converted to .ort.
    `cpu_class` (runtimes.cpuclass): the class built for; the profile's order for it is used, and candidates measured
    to be no faster than fp32 there (cpuclass.NO_GAIN) are skipped with the measurement as the reason.
    """
    max_drop = parse_drop(opts.max_accuracy_drop or DEFAULT_DROP)
    if opts.min_cosine is not None:
        parse_min_cosine(opts.min_cosine)
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}.auto-", dir=out.parent if out.parent.exists() else None))
    try:
        tried: list[dict[str, Any]] = []
        built: dict[tuple[str, str], Path] = {}
        wanted = tuple(profile.recipes_for(cpu_class)) if profile is not None else None
        flags = cpu_flags if timed_here else list(cpu_flags) + ["asimddp", "i8mm", "avx512_vnni", "amx_bf16"]
        tail = opts.min_cosine is not None
        task = None
        for recipe, backend in candidates(names, flags, wanted, mixed=tail):
            slower = cpuclass.no_gain(cpu_class, recipe, backend) if cpu_class else None
            if slower:
                tried.append({"recipe": recipe, "backend": backend, "status": "skipped", "reason": slower})
                log(f"[bertship] auto     {recipe} on {backend} skipped: {slower}")
                continue
            if recipe == "int8-dynamic" and task in EMBEDDING_TASKS and not opts.allow_batch_dependence:
                tried.append({"recipe": recipe, "backend": backend, "status": "skipped",
                              "reason": "its vectors depend on batch-mates and padding (one activation scale per "
                                        "batch); pass --allow-batch-dependence to try it"})
                log(f"[bertship] auto     {recipe} on {backend} skipped: outputs depend on batch-mates")
                continue
            log(f"[bertship] auto     candidate {recipe} on {backend}")
            # with --min-cosine every candidate is judged on the tail (int8-mixed searches for it, the others are
            # refused when they miss it); otherwise the int8 recipes search within the accuracy drop
            drop = None if tail or recipe not in _SEARCHING else (opts.max_accuracy_drop or DEFAULT_DROP)
            sub = replace(opts, recipe=recipe, backends=(backend,), force=False, max_accuracy_drop=drop,
                          eval_data=opts.eval_data if (drop is not None or tail) else None,
                          calibration=opts.calibration if (RECIPES[recipe].needs_calibration or tail) else None)
            try:
                built[(recipe, backend)] = build(out=work / f"{recipe}-{backend}", options=sub, log=log)
                tried.append({"recipe": recipe, "backend": backend, "status": "built"})
                task = artifact.read_manifest(built[(recipe, backend)])["task"]["name"]
            except UsageError:
                raise  # the request itself is wrong (e.g. --min-cosine on a classifier): no candidate can fix it
            except (BertshipError, RuntimeError) as exc:
                tried.append({"recipe": recipe, "backend": backend, "status": "failed", "reason": str(exc)})
                log(f"[bertship] auto     {recipe} on {backend} failed: {exc}")
        fp32 = next((p for (r, _), p in built.items() if r == "fp32"), None)
        data, reference = _scoring(opts, fp32) if not tail else (None, None)
        for entry in tried:
            if entry["status"] != "built":
                continue
            path = built[(entry["recipe"], entry["backend"])]
            manifest = artifact.read_manifest(path)
            fidelity = manifest["fidelity"]
            golden = fidelity["backends"][entry["backend"]]
            if tail:  # the candidate's own export measured its tail against the target, and refused a miss
                metric, score = "min_cosine", fidelity["target"]["backends"][entry["backend"]]["cosine_min"]
            else:
                result = evaluate(load(path, backend=entry["backend"], threads=opts.threads), data, reference)
                # a classifier's few logits have no direction worth a cosine: without labels, agreement with fp32
                metric = ("accuracy" if "accuracy" in result else
                          "agreement" if "argmax_agreement" in result else "cosine")
                score = result[{"accuracy": "accuracy", "agreement": "argmax_agreement",
                                "cosine": "cosine_mean"}[metric]]
            entry.update(metric=metric, score=score, golden_text_cosine_min=golden["tail"]["cosine_min"],
                         golden_text_cosine_p1=golden["tail"]["cosine_p1"],
                         batch_cosine_min=golden["batch_invariance"]["cosine_min"],
                         size_bytes=sum(f["bytes"] for f in manifest["files"]
                                        if f["path"].startswith(entry["backend"] + "/")),
                         p50_ms=_time(path, entry["backend"], opts.threads, manifest["tokenizer"]["max_length"])
                         if timed_here else None)
        base = max((e["score"] for e in tried if e.get("recipe") == "fp32" and "score" in e), default=1.0)
        limit = float(opts.min_cosine) if tail else (1 - max_drop) * base
        for entry in tried:
            if "score" in entry:
                entry["within_limit"] = entry["score"] >= limit
        ok = [e for e in tried if e.get("within_limit")]
        if not ok:
            raise FidelityError([f"{e['recipe']} on {e['backend']}: {e.get('reason') or e.get('score')}" for e in tried],
                                "no candidate holds the target; nothing was written — "
                                + ("lower --min-cosine" if tail else "raise --max-accuracy-drop"))
        winner = min(ok, key=lambda e: e["p50_ms"]) if timed_here else ok[0]
        for entry in tried:
            log(f"[bertship] auto     {entry['recipe']:<16} {entry['backend']:<11} "
                + (f"{entry['metric']} {entry['score']:.4f}  p50 {_ms(entry['p50_ms'])}  "
                   f"{entry['size_bytes'] / 1e6:.1f} MB  alone vs batched {entry['batch_cosine_min']:.5f}  "
                   f"{'ok' if entry['within_limit'] else 'over the limit'}"
                   if "score" in entry else f"{entry['status']}: {entry['reason'][:120]}"))
        path = built[(winner["recipe"], winner["backend"])]
        manifest = artifact.read_manifest(path)
        held = (f"with every text's cosine ≥ {opts.min_cosine} (--min-cosine)" if tail else
                f"within {max_drop:.2%} of the fp32 {winner['metric']}")
        why = (f"fastest p50 ({winner['p50_ms']:.2f} ms) of {len(ok)} candidate(s) {held}" if timed_here else
               f"first of the candidates {held}; not timed: this machine is not the target")
        manifest["auto"] = {
            "max_drop": None if tail else max_drop, "min_cosine": float(opts.min_cosine) if tail else None,
            "baseline": base, "timed_shape": TIMED_SHAPE if timed_here else None,
            "candidates": tried, "winner": {"recipe": winner["recipe"], "backend": winner["backend"]}, "why": why,
            "profile": profile.name if profile is not None else None, "cpu_class": cpu_class,
        }
        if profile is not None and any(r.model_format == "ort" and r.backend == winner["backend"]
                                       for r in profile.runtimes):
            manifest["backends"][winner["backend"]] = ort_format(path, manifest["backends"][winner["backend"]], log)
        package.rewrite(path, manifest)
        if out.exists():
            package.check_out(out, opts.force)
        package.publish(path, out)
        log(f"[bertship] auto     winner: {winner['recipe']} on {winner['backend']} — {manifest['auto']['why']}")
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _ms(value: float | None) -> str:
    return "not timed" if value is None else f"{value:.2f} ms"


def ort_format(root: Path, entry: dict[str, Any], log: Callable[[str], None]) -> dict[str, Any]:
    """Convert the ONNX Runtime model to the ORT format mobile builds load, check it reproduces the ONNX model's
    outputs on the golden inputs, and record the operators a reduced ORT build must include."""
    import numpy as np

    from bertship.runtimes.ort_runner import OrtRunner
    from bertship.runtimes.verify import backend_checks, read_golden, read_sweep
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort

    onnx_path = root / entry["model"]
    convert_onnx_models_to_ort(onnx_path, output_dir=onnx_path.parent, optimization_styles=[OptimizationStyle.Fixed],
                               target_platform="arm")
    ort_path = next(onnx_path.parent.glob("*.ort"))
    ort_path.rename(onnx_path.with_suffix(".ort"))
    ort_path = onnx_path.with_suffix(".ort")
    config = next(onnx_path.parent.glob("*.config"))
    ops = {}
    for line in config.read_text().splitlines():
        if line and not line.startswith("#"):
            domain, opset, names = line.split(";")
            ops[f"{domain or 'ai.onnx'}:{opset}"] = sorted(names.split(","))
    manifest = artifact.read_manifest(root)
    feeds, refs, texts, _ = read_golden(root, manifest)
    options = entry.get("options")
    a, b = OrtRunner(onnx_path, None, options), OrtRunner(ort_path, None, options)
    # The conversion applies the fusions for the target ahead of time (SkipLayerNormalization among them), so float
    # rounding differs a little from the ONNX model's session, and int8-dynamic can move a value by a quantization
    # step. What ships is the .ort file: it must pass the artifact's own gate against the PyTorch references.
    worst = max(float(np.abs(a.run(f)[k] - b.run(f)[k]).max()) for f in feeds for k in a.output_names)
    _, failures = backend_checks(b, manifest, feeds, refs, texts, read_sweep(root))
    if failures:
        raise FidelityError([f"the .ort model: {f}" for f in failures],
                            "nothing was written; export the profile without model_format = \"ort\"")
    rel = ort_path.relative_to(root).as_posix()
    log(f"[bertship] ort      {rel}: ORT format for arm, {sum(len(v) for v in ops.values())} operator types "
        f"(max |diff| vs ONNX {worst:.1e})")
    return dict(entry, model=rel, files=[*entry["files"], rel, config.relative_to(root).as_posix()],
                build=dict(entry.get("build", {}), ort_format={"target_platform": "arm", "required_operators": ops,
                                                              "max_abs_diff_vs_onnx": worst}))


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
