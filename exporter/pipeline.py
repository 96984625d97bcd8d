"""The one place the stage order is written:
load → export graph → optimize (fusion report) → build each backend under the recipe → verify → package → publish.
"""

from __future__ import annotations

import platform
import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from bertship.profiles import cpu_info
from bertship.profiles.machine import available_memory_mb, peak_rss_mb, reset_peak_rss, rss_mb
from bertship.runtimes import artifact, backends as backend_table, cpuclass
from bertship.runtimes.errors import UsageError
from bertship.runtimes.retrieval import RETRIEVAL_TASKS
from bertship.runtimes.verify import SWEEP_BUDGET, Sweep, sweep_lengths

from . import auto, calibration, fallback, golden, graph, load as load_stage, memory, package, qat, quantize
from .gate import cross_class_checks, run_gate
from .options import ExportOptions
from .recipes import (EMBEDDING_TASKS, MIN_BATCH_COSINE, MIXED_MIN_COSINE, RANK_AGREEMENT, RANK_AGREEMENT_FP32,
                      check_recipe, get_recipe, with_params)
from .to_onnx import OPSET, to_onnx


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _Stages:
    """Per-stage progress lines with wall time and peak resident memory; both also go into the manifest."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log
        self.timings: dict[str, float] = {}
        self.peak_rss_mb: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        self.log(f"[bertship] {name:<8} {what} …")
        own_peak = reset_peak_rss()  # else the peaks below run from the process start
        before = rss_mb()
        start = time.perf_counter()
        yield
        took = time.perf_counter() - start
        peak = round(peak_rss_mb(), 1)
        if before is None or peak - before >= TRIM_ABOVE_MB:
            _trim_heap()  # what this stage freed goes back to the OS, not into the next stage's peak
        self.timings[name] = round(self.timings.get(name, 0.0) + took, 3)
        self.peak_rss_mb[name] = max(self.peak_rss_mb.get(name, 0.0), peak)
        self.log(f"[bertship] {name:<8} done in {took:.1f} s, peak RSS {peak / 1024:.2f} GB"
                 + ("" if own_peak else " (since start)"))


# A stage whose peak rose less than this above its start leaves nothing worth trimming. The full gc.collect() that a
# trim starts with costs ~0.25 s in a process that has imported torch, transformers and both runtimes (half of a
# tiny model's export time when it ran after every stage); a large model's stages free gigabytes.
TRIM_ABOVE_MB = 256


def _trim_heap() -> None:
    """Return freed heap pages to the OS (glibc malloc_trim): large exports free gigabytes between stages that the
    allocator would otherwise keep resident. A no-op where glibc is absent."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def export(
    model: Any = None,
    tokenizer: Any = None,
    *,
    out: str | Path,
    options: ExportOptions | None = None,
    log: Callable[[str], None] = _stderr,
    **option_values: Any,
) -> Path:
    """Export a model folder (None: the bundled all-MiniLM-L6-v2) or an in-memory transformers model to a verified
    artifact at `out`. Options come as an ExportOptions or as keywords (task=, recipe=, backends=, …). Nothing
    exists at `out` unless every stage, the fidelity gate included, succeeded.
    """
    opts = options if options is not None else ExportOptions.build(**option_values)
    if options is not None and option_values:
        raise UsageError("pass options= or option keywords, not both")
    out = Path(out)
    if opts.recipe == "auto" or opts.profile is not None:
        return _auto(model, tokenizer, out, opts, log)
    recipe = with_params(get_recipe(opts.recipe), calibration_method=opts.calibration_method)
    names = backend_table.parse_backends(opts.backends if opts.backends is not None else tuple(recipe.how))
    for name in names:
        backend_table.require(name)
    cpu = cpu_info()
    check_recipe(recipe, names, cpu["flags"])
    max_drop = fallback.parse_drop(opts.max_accuracy_drop) if opts.max_accuracy_drop is not None else None
    min_cos = fallback.parse_min_cosine(opts.min_cosine) if opts.min_cosine is not None else None
    exits_folder = _has_exits(model)  # an early-exit classifier: --max-accuracy-drop also limits what its exits cost
    if opts.min_rank_agreement is not None:  # judged after load, where the task is known; its number fails here
        fallback.parse_min_cosine(opts.min_rank_agreement, "--min-rank-agreement")
    if opts.calibration is not None and not recipe.needs_calibration and min_cos is None:
        raise UsageError(f"--calibration applies to recipes that calibrate (int8-static, int8-mixed) and to the texts "
                         f"--min-cosine is judged on, not to {recipe.name!r} alone — drop it")
    if opts.eval_data is not None and max_drop is None and min_cos is None and not exits_folder:
        raise UsageError("--eval-data is what --max-accuracy-drop (or --min-cosine) is judged on — pass both, or use "
                         "`bertship eval`")
    if max_drop is not None and recipe.name not in fallback.SEARCHING and not exits_folder:
        raise UsageError(f"--max-accuracy-drop applies to {', '.join(fallback.SEARCHING)}, not {recipe.name!r}")
    if min_cos is not None and opts.task is not None and opts.task not in EMBEDDING_TASKS:
        raise UsageError(_MIN_COSINE_TASK.format(task=opts.task))
    needs_text = recipe.needs_calibration or ((max_drop is not None or min_cos is not None) and opts.eval_data is None)
    calib_texts = calibration.read_texts(opts.calibration) if needs_text else None
    package.check_out(out, opts.force)
    stages = _Stages(log)
    if not opts.no_memory_check and (model is None or isinstance(model, (str, Path))):
        folder = load_stage.default_model_path() if model is None else Path(model)
        if folder.is_dir():  # the load stage explains a missing or wrong folder
            available = available_memory_mb()
            need = memory.check(folder, "onnxruntime" in names, available)
            if need:
                stage, peak = max(need.items(), key=lambda kv: kv[1])
                log(f"[bertship] memory   estimated peak {peak / 1024:.1f} GB ({stage}); {available / 1024:.1f} GB "
                    "available")

    with stages.stage("load", "checking and loading the model"), torch_threads(opts.threads):
        clock = time.perf_counter()
        source = _load(model, tokenizer, opts)
        qat_record = _check_qat(source, recipe)
        took = time.perf_counter() - clock
        key = _references_key(source, qat_record is not None)
        if _shared_references is not None and key in _shared_references:
            texts, pairs, feeds, refs, sweep = _shared_references[key]
            log(f"[bertship]          weights {took:.1f} s; the PyTorch references of an earlier candidate "
                f"({len(texts)} golden texts, {len(sweep.lengths)} sweep lengths) are reused")
        else:
            texts, pairs, feeds, refs, sweep = _references(source, took, log)
            if _shared_references is not None:
                _shared_references[key] = (texts, pairs, feeds, refs, sweep)
    exit_data = exit_cal = None
    if opts.exit_calibration is not None and source.exits is None:
        raise UsageError("--exit-calibration calibrates the exit rule of an early-exit folder (`bertship exits`) — "
                         "drop it for this model")
    if source.exits is not None:
        if opts.eval_data is None:
            raise UsageError("an early-exit classifier is gated on labelled held-out text — pass --eval-data test.tsv "
                             "(rows `text<TAB>label`, not the texts `bertship exits` calibrated on)")
        from bertship.runtimes.evaluate import read_eval_data

        id2label = {str(k): v for k, v in (getattr(source.model.config, "id2label", None) or {}).items()}
        data = read_eval_data(opts.eval_data, "sequence-classification", id2label)
        with stages.stage("load", f"PyTorch full-model predictions on {len(data.texts)} --eval-data texts"), \
                torch_threads(opts.threads):
            exit_data = (data, _reference_logits(source, data.texts, data.pairs))
            if opts.exit_calibration is not None:
                cal = read_eval_data(opts.exit_calibration, "sequence-classification", id2label)
                exit_cal = (cal, _reference_logits(source, cal.texts, cal.pairs))
    embedding = source.task.name in EMBEDDING_TASKS
    if min_cos is not None and not embedding:
        raise UsageError(_MIN_COSINE_TASK.format(task=source.task.name))
    rank_target = _rank_agreement(opts, source.task.name, recipe.name)
    if recipe.name == "int8-mixed" and max_drop is None and min_cos is None:
        # the mixed recipe always searches: on the tail for embeddings, on each query's order for a reranker, on
        # predictions for the other tasks
        if embedding:
            min_cos = MIXED_MIN_COSINE
        elif source.task.name != "rerank":
            max_drop = fallback.parse_drop(auto.DEFAULT_DROP)
    compaction = None
    if opts.compact:
        from .compact import compact

        with stages.stage("compact", "removing dead heads and FFN neurons"):
            source.model, compaction = compact(source.model)
        log(f"[bertship]          compacted: {compaction.flops_before / 1e9:.3f} → {compaction.flops_after / 1e9:.3f} "
            f"GFLOP at {compaction.seq_len} tokens (ratio {compaction.flop_ratio:.2f})")
    params = sum(p.numel() for p in source.model.parameters())
    log(f"[bertship]          {source.family.name} / {source.task.name}, {params / 1e6:.1f} M parameters, "
        f"max length {source.max_length}, recipe {recipe.name}")

    staging = package.staging_dir(out)
    work = staging / "_work"
    try:
        with stages.stage("export", f"ONNX graph (opset {OPSET})"):
            # work graphs keep their weights in a data file, so later stages can read the graph without them
            plain = to_onnx(source, feeds[0], work / "export.onnx", "always")
            if model is None or isinstance(model, (str, Path)):
                source.release_weights()  # loaded here, so nobody else holds them: free one copy of the weights
        fusion = None
        if "onnxruntime" in names:
            with stages.stage("optimize", "ONNX Runtime transformer fusions"):
                fusion = graph.optimize(plain, source.family, graph.num_layers(source.model.config),
                                        work / "fused.onnx",
                                        removed=compaction.removed_sublayers() if compaction else None)
            log(f"[bertship]          fused: {', '.join(f'{k} {v}' for k, v in fusion.counts.items()) or 'nothing'}")
            if source.tokens is not None:  # the layer loop that gathers tokens is not a pattern ORT's fusions know
                fusion = replace(fusion, note=(fusion.note + " " if fusion.note else "") + TOKENS_FUSION_NOTE)
            elif qat_record is None:  # Q/DQ pairs break the float fusion patterns; ORT fuses them its own way at load
                graph.check(fusion, opts.allow_missing_fusions)
        calib = []
        if calib_texts is not None and recipe.needs_calibration:
            calib = calibration.calibration_feeds(source.tokenizer, source.family.inputs, source.max_length,
                                                  calib_texts[0], calib_texts[1])
        fixed = tuple(k for k, v in (("calibration_method", opts.calibration_method),) if v is not None)
        ctx = quantize.BuildContext(staging, plain, work / "fused.onnx" if fusion else None, opts.ort_graph, recipe,
                                    calib, cpu["flags"], platform.machine(), source.tokenizer.pad_token_id,
                                    work=work, fixed_params=fixed, external_data=opts.external_data,
                                    float_scope="/exits/" if source.exits is not None else None)
        built: dict[str, Any] = {}
        fallbacks: dict[str, Any] = {}
        targets = _targets(names, opts.target_cpu, recipe.name, log)
        objectives = []
        if max_drop is not None:
            objectives.append(fallback.Objective.drop(_scorer(source, plain, opts, calib_texts), max_drop))
        tail_scorer = None
        if min_cos is not None:
            tail_scorer = _tail_scorer(source, plain, opts, calib_texts, texts, feeds, sweep.lengths)
            objectives.append(fallback.Objective(tail_scorer, min_cos))
        if recipe.name == "int8-mixed" and source.task.name == "rerank":
            # the golden queries, and the calibration file's queries where it gives (text, text_pair) lines
            pairs_given = calib_texts is not None and calib_texts[1] is not None
            scorer = fallback.make_rank_scorer(plain, source, feeds, *(calib_texts[:2] if pairs_given else ()))
            log(f"[bertship]          int8-mixed judges the order of {len(scorer.feeds)} queries' documents")
            objectives.append(fallback.Objective(scorer, rank_target))
        searching = recipe.name == "int8-mixed" or (max_drop is not None and recipe.name in fallback.SEARCHING)
        for name in names:
            with stages.stage("build", f"{name}: {recipe.how[name]}"):
                bctx = replace(ctx, target=targets[name])
                if searching:
                    built[name], fallbacks[name] = fallback.search(name, bctx, objectives, log)
                else:
                    built[name] = quantize.build(name, bctx)
                built[name]["cpu_class"] = {"target": targets[name], "verified_on": []}
        target = _check_target(staging, built, tail_scorer, min_cos, recipe.name, log) if tail_scorer else None
        if source.exits is not None:
            with stages.stage("segments", f"cutting each graph at the off-ramps after layers "
                                          f"{','.join(map(str, source.exits.layers))}"):
                for name in names:
                    built[name] = _segment(staging, name, built[name], source, opts.external_data)
        shutil.rmtree(work)
        source.tokenizer.backend_tokenizer.save(str(staging / artifact.TOKENIZER))
        spec = {"file": artifact.TOKENIZER, "max_length": source.max_length, "pad_id": source.tokenizer.pad_token_id,
                "pad_token": source.tokenizer.pad_token, "input_names": list(source.family.inputs),
                "text_pairs": source.task.text_pairs}
        tolerance = replace(recipe.tolerance or source.family.tolerance, min_text_cosine=min_cos,
                            min_batch_cosine=MIN_BATCH_COSINE if embedding and not opts.allow_batch_dependence else None,
                            min_rank_agreement=rank_target)
        manifest = package.base_manifest(source, built, spec, asdict(tolerance))
        manifest["fidelity"]["allow_batch_dependence"] = opts.allow_batch_dependence
        if target is not None:
            manifest["fidelity"]["target"] = target
        manifest["recipe"] = {**recipe.as_dict(), "calibration": calib_texts[2] if calib_texts else None}
        manifest["export_options"] = opts.as_dict()
        if fallbacks:
            manifest["fallback"] = fallbacks
        if qat_record is not None:
            manifest["recipe"]["qat"] = qat_record
        if compaction is not None:
            manifest["compaction"] = compaction.as_dict()
        if source.exits is not None:
            manifest["exits"] = _exits_record(source)
            if exit_cal is not None:
                with stages.stage("exits", f"each backend's exit rule on {opts.exit_calibration}"):
                    _calibrate_backends(staging, manifest, source, opts, *exit_cal, log)
        if source.tokens is not None:
            spec = source.tokens_spec
            manifest["tokens"] = {k: spec.get(k) for k in ("schedule", "layers", "score", "kept_at", "judged_on",
                                                           "result", "recovery")}
        if fusion is not None:
            manifest["graph"] = {"fusions": fusion.as_dict(), "allow_missing_fusions": opts.allow_missing_fusions}
        with stages.stage("verify", f"{' + '.join(built)} vs PyTorch fp32 on {len(texts)} golden texts (batched, "
                                    f"alone, other batch-mates) and {len(sweep.lengths)} sequence lengths"):
            manifest["fidelity"]["backends"] = run_gate(staging, manifest, feeds, refs, texts, pairs, opts.threads,
                                                        sweep, log=log)
        for name, rep in manifest["fidelity"]["backends"].items():
            swept = rep["length_sweep"]
            log(f"[bertship]          {name}: per-text cosine min {rep['tail']['cosine_min']:.5f} "
                f"(p1 {rep['tail']['cosine_p1']:.5f}, worst {rep['tail']['worst'][0]['text']!r}); alone vs batched "
                f"min {rep['batch_invariance']['cosine_min']:.6f}; lengths 3-{swept['longest']} min "
                f"{swept['cosine_min']:.5f} (at {swept['worst_length']})")
        if source.exits is not None:
            with stages.stage("exits", f"exit rule on {opts.eval_data} (runtime chain vs the PyTorch full model)"):
                manifest["exits"]["gate"] = _exit_gate(staging, manifest, source, opts, *exit_data, log)
        with stages.stage("package", "golden outputs, manifest, report"):
            manifest["golden"] = package.write_golden(staging, texts, pairs, feeds, refs, sweep)
            # what verify re-runs is golden.npz's sweep.lengths; this says how they were chosen (cost: sweep_cost)
            manifest["golden"]["sweep"] = {"lengths": sweep.lengths, "hidden_size": hidden_size(source.model.config),
                                           "budget_token_equivalents": SWEEP_BUDGET,
                                           "rule": "runtimes.verify.sweep_lengths (docs/recipes.md)"}
            manifest["timings_s"] = stages.timings
            manifest["peak_rss_mb"] = stages.peak_rss_mb
            package.write_report(staging, dict(manifest, files=artifact.file_entries(staging)))
            package.write_manifest(staging, manifest)
        if cross_class_checks(staging, manifest, opts.threads, log):
            package.rewrite(staging, manifest)
        package.publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"[bertship] wrote {out} ({sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 1e6:.1f} MB)")
    return out


def _segment(staging: Path, name: str, entry: dict[str, Any], source: load_stage.Source, external: str) -> dict[str, Any]:
    """Cut one backend's built early-exit graph into its segments (exporter.segments), in place of the whole graph."""
    from . import onnxio, segments
    from .exits import num_layers

    total = num_layers(source.model.config)
    full = staging / entry["model"]
    folder = full.parent
    if name == "onnxruntime":
        segs = segments.cut_onnx(full, source.exits.layers, source.family.inputs, folder / "_segments", external, total,
                                 masks=source.tokens is not None)
    else:
        segs = segments.cut_openvino(full, source.exits.layers, folder / "_segments", total,
                                     masks=source.tokens is not None)
    for rel in entry["files"]:
        (staging / rel).unlink()
    files = []
    for seg in segs:
        written = folder / "_segments" / seg["model"]
        group = onnxio.files(written) if name == "onnxruntime" else [written, written.with_suffix(".bin")]
        for f in group:
            f.rename(folder / f.name)
        rel = [(folder / f.name).relative_to(staging).as_posix() for f in group]
        seg.update(model=rel[0], files=rel)
        files += rel
    (folder / "_segments").rmdir()
    return {**entry, "model": segs[0]["model"], "files": files, "segments": segs, "total_layers": total,
            "build": {**entry.get("build", {}), "segments": len(segs)}}


TOKENS_FUSION_NOTE = ("token elimination: the attention of a layer loop that gathers the kept tokens and their mask "
                      "after each layer is not a pattern ONNX Runtime's fusions match (its Attention stays unfused); "
                      "accepted for this graph")


def _has_exits(model: Any) -> bool:
    """Whether the model folder (not a model in memory) was written by `bertship exits`."""
    from .exits import EXITS_FILE

    return isinstance(model, (str, Path)) and (Path(model) / EXITS_FILE).is_file()


def _exits_record(source: load_stage.Source) -> dict[str, Any]:
    spec = source.exits_spec or {}
    return {"layers": list(source.exits.layers), "rule": spec["rule"], "head": spec.get("head"),
            "precision": "the off-ramps stay float under every int8 recipe (exporter.quantize.BuildContext.float_scope)",
            "calibration": spec.get("calibration"), "training": {k: v for k, v in spec.get("training", {}).items()
                                                                 if k != "losses"}}


def _exit_gate(staging: Path, manifest: dict[str, Any], source: load_stage.Source, opts: ExportOptions,
               data: Any, ref_logits: Any, log: Callable[[str], None]) -> dict[str, Any]:
    """Each backend's segment chain, leaving by the artifact's rule, on --eval-data: its predictions against the
    PyTorch full model's (agreement; `ref_logits`, computed before the weights were released) and against the labels
    (accuracy drop). FidelityError past --max-accuracy-drop, by default the drop the rule was calibrated for
    (exits.json)."""
    import numpy as np

    from bertship.runtimes.errors import FidelityError

    spec = source.exits_spec or {}
    limit = (fallback.parse_drop(opts.max_accuracy_drop) if opts.max_accuracy_drop is not None else
             float(spec.get("calibration", {}).get("max_accuracy_drop", fallback.parse_drop(auto.DEFAULT_DROP))))
    ref_pred = ref_logits.argmax(-1)
    truth = np.asarray(data.labels)
    ref_acc = float((ref_pred == truth).mean())
    report, failures = {}, []
    for name in manifest["backends"]:
        model = _staged_model(staging, manifest, name, opts.threads)
        logits, layers = model.exit_logits(data.texts, data.pairs)
        pred = logits.argmax(-1)
        acc = float((pred == truth).mean())
        total = model.exits["total_layers"]
        rep = {"texts": len(truth), "accuracy": round(acc, 5), "full_model_accuracy": round(ref_acc, 5),
               "accuracy_drop": round((ref_acc - acc) / ref_acc if ref_acc else 0.0, 5),
               "agreement": round(float((pred == ref_pred).mean()), 5), "mean_layers": round(float(layers.mean()), 4),
               "exit_histogram": {str(k): int((layers == k).sum()) for k in [*source.exits.layers, total]}}
        report[name] = rep
        log(f"[bertship]          {name}: accuracy {acc:.4f} with exits vs {ref_acc:.4f} full (drop "
            f"{rep['accuracy_drop'] * 100:.2f} %, limit {limit * 100:g} %), agreement {rep['agreement']:.4f}, mean "
            f"{rep['mean_layers']:.2f} of {total} layers")
        if acc < ref_acc * (1 - limit) - 1e-12:
            failures.append(f"{name}: accuracy with exits {acc:.4f} is {rep['accuracy_drop'] * 100:.2f} % below the "
                            f"full model's {ref_acc:.4f} (limit {limit * 100:g} %)")
        del model
    if failures:
        raise FidelityError(failures, "nothing was written; re-run `bertship exits` with a smaller "
                            "--max-accuracy-drop (a stricter rule) or more --eval-data to calibrate on"
                            + ("" if manifest["recipe"]["name"] == "fp32" else ", or export with a float recipe"))
    return {"data": str(opts.eval_data), "max_accuracy_drop": limit, "backends": report}


def _staged_model(staging: Path, manifest: dict[str, Any], name: str, threads: int | None):
    """One backend of the artifact being built, as the runtime's Model (load() needs the published manifest)."""
    from bertship.runtimes.model import Model
    from bertship.runtimes.tokenizer import TextEncoder

    entry = manifest["backends"][name]
    runner = backend_table.open_runner(staging, entry, name, threads, entry.get("options"))
    return Model(staging, manifest, runner, TextEncoder(staging / artifact.TOKENIZER, manifest["tokenizer"]))


def _calibrate_backends(staging: Path, manifest: dict[str, Any], source: load_stage.Source, opts: ExportOptions,
                        data: Any, ref_logits: Any, log: Callable[[str], None]) -> None:
    """--exit-calibration: each backend's exit rule calibrated on its own segments' logits (an int8 chain's early
    states are not PyTorch's), against the PyTorch full model's accuracy on that file; recorded in its entry."""
    import numpy as np

    from .exits import calibrate

    spec = source.exits_spec or {}
    limit = float(spec.get("calibration", {}).get("max_accuracy_drop", fallback.parse_drop(auto.DEFAULT_DROP)))
    truth = np.asarray(data.labels)
    reference = float((ref_logits.argmax(-1) == truth).mean())
    layers = list(source.exits.layers)
    for name, entry in manifest["backends"].items():
        model = _staged_model(staging, manifest, name, opts.threads)
        outs = model.encode(data.texts, data.pairs)
        ramps = np.stack([outs[f"exit{k}_logits"] for k in layers])
        cal = calibrate(ramps, outs["logits"], data.labels, layers, entry["total_layers"], limit, reference)
        entry["exit_rule"] = cal["rule"]
        entry["exit_calibration"] = {**cal, "data": str(opts.exit_calibration), "reference": "PyTorch full model"}
        chosen = cal["measured"][cal["rule"]["kind"]]
        from bertship.runtimes.exits import describe

        log(f"[bertship]          {name}: {describe(cal['rule'])}, {chosen['mean_layers']:.2f} of "
            f"{entry['total_layers']} layers, accuracy {chosen['accuracy']:.4f} (PyTorch full model {reference:.4f}) "
            f"on {len(truth)} texts (the folder's rule: {describe(spec['rule'])})")
        del model


def _reference_logits(source: load_stage.Source, texts: list[str], pairs: list[str] | None):
    """The PyTorch classifier's logits as the artifact's last segment computes them (under the folder's token
    schedule, if it has one): what the exits are judged against."""
    import torch

    from .exits import layer_states

    out = []
    with torch.no_grad():
        for i in range(0, len(texts), 32):
            enc = source.tokenizer(texts[i:i + 32], pairs[i:i + 32] if pairs else None, padding=True, truncation=True,
                                   max_length=source.max_length, return_tensors="pt")
            out.append(layer_states(source, {k: enc[k] for k in source.family.inputs})[2])
    return torch.cat(out).numpy()


# While `--recipe auto` or a profile builds its candidates (`_auto`), the load stage's PyTorch references (golden
# texts and length sweep) of one model are computed once and shared: they depend on the model, task and max length,
# not on the recipe. None outside `_auto`.
_shared_references: dict[tuple, tuple] | None = None


def _references_key(source: load_stage.Source, qat: bool) -> tuple:
    return (source.info.get("path"), source.info.get("weights_sha256"), source.family.name, source.task.name,
            source.max_length, source.pooling, source.normalize, repr(source.settings), qat)


def _references(source: load_stage.Source, took: float, log: Callable[[str], None]):
    """Golden texts, their batches, and PyTorch's outputs on them and on the length sweep, with progress lines.
    References come from the model as given, so the gate also proves that compaction changed nothing."""
    clock = time.perf_counter()
    texts, pairs = golden.golden_texts(source)
    feeds = golden.golden_feeds(source, texts, pairs)
    refs = golden.reference_outputs(source, feeds)
    golden_s, clock = time.perf_counter() - clock, time.perf_counter()
    lengths = sweep_lengths(source.max_length, hidden_size(source.model.config))
    log(f"[bertship]          weights {took:.1f} s, PyTorch references for {len(texts)} golden texts "
        f"{golden_s:.1f} s; now the length sweep ({len(lengths)} lengths, 3 to {source.max_length} tokens) …")
    sweep = Sweep(lengths, golden.sweep_references(source, feeds, lengths))
    log(f"[bertship]          length sweep: {len(lengths)} lengths ({sum(lengths)} tokens) in "
        f"{time.perf_counter() - clock:.1f} s")
    return texts, pairs, feeds, refs, sweep


def hidden_size(config: Any) -> int:
    """The width of the model's hidden states (the length sweep's cost model); 768 where the config names none."""
    for name in ("hidden_size", "dim", "d_model"):
        value = getattr(config, name, None)
        if isinstance(value, int) and value > 0:
            return value
    return 768


@contextmanager
def torch_threads(threads: int | None):
    """PyTorch's reference passes on `--threads` threads (default: PyTorch's own choice). On a busy machine PyTorch's
    default of one thread per core waits on descheduled threads: a ModernBERT-base forward went from 0.16 s to 8 s."""
    import torch

    before = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _auto(model: Any, tokenizer: Any, out: Path, opts: ExportOptions, log: Callable[[str], None]) -> Path:
    """`--recipe auto` and `--profile P`: candidates built, scored and timed; the winner published."""
    from bertship.profiles import load_profile, machine_facts, mismatches

    profile = load_profile(opts.profile) if opts.profile is not None else None
    if profile is not None and opts.recipe not in ("auto", "fp32"):
        raise UsageError("--profile chooses the recipe from its candidates — drop --recipe")
    default = tuple(r.backend for r in profile.runtimes) if profile is not None else tuple(auto.CANDIDATES)
    names = backend_table.parse_backends(opts.backends or default)
    for name in names:
        backend_table.require(name)
    package.check_out(out, opts.force)
    here = cpuclass.runtime_class(names[0])
    arm_profile = profile is not None and bool(set(profile.machine.arch) & set(cpuclass.ARM64))
    target = opts.target_cpu or ("arm64-dot" if arm_profile and here not in ("arm64-dot", "arm64") else here)
    problems = mismatches(profile, machine_facts(), recipes=()) if profile is not None else []
    if target != here and not problems:
        problems.append(f"it is a {here} CPU and the artifact is built for {target} (--target-cpu)")
    timed_here = not problems
    if not timed_here:
        log(f"[bertship] auto     this machine is not the target ({'; '.join(problems)}): candidates are not timed, "
            "the order decides")
    global _shared_references
    _shared_references = {}
    try:
        return auto.run_auto(lambda **kw: export(model, tokenizer, **kw), out,
                             replace(opts, profile=None, target_cpu=target), names,
                             cpu_info()["flags"], log, profile, timed_here, target)
    finally:
        _shared_references = None


def _targets(names: tuple[str, ...], target: str | None, recipe: str, log: Callable[[str], None]) -> dict[str, str]:
    """Per backend, the CPU class whose int8 arithmetic the recipe is built for: --target-cpu, else the class that
    backend's int8 kernels measure here (runtimes.cpuclass). Says so where int8 cannot beat fp32 on that class."""
    here = {name: cpuclass.runtime_class(name) for name in names}
    chosen = {name: target or here[name] for name in names}
    if recipe not in cpuclass.INT8_COMPUTE + ("int8-weight-only",):
        return chosen
    for name in names:
        if chosen[name] != here[name] and recipe in cpuclass.INT8_COMPUTE:
            log(f"[bertship] target   {name}: int8 built for {chosen[name]}, not for this {here[name]} CPU; the gate "
                f"checks it here, then on {chosen[name]} kernels where this machine can run them")
        slower = cpuclass.no_gain(chosen[name], recipe, name)
        if slower:
            log(f"[bertship] target   {name}: {recipe} will not be faster than fp32: {slower}")
    return chosen


def _check_qat(source: load_stage.Source, recipe) -> dict[str, Any] | None:
    """A QAT model must be exported with int8-qat and int8-qat needs one; freezes its fake-quantize modules."""
    has_fq = bool(qat.fake_quant_modules(source.model))
    if has_fq and recipe.name != "int8-qat":
        raise UsageError(f"this model carries fake-quantize modules (quantization-aware training) — export it with "
                         f"--recipe int8-qat, not {recipe.name!r}")
    if recipe.name == "int8-qat" and not has_fq:
        raise UsageError("recipe int8-qat needs a model with torch.ao fake-quantize modules (prepare_qat) — use "
                         "int8-static or int8-dynamic for a float model")
    return qat.freeze(source.model) if has_fq else None


def _scorer(source, plain: Path, opts: ExportOptions, calib_texts) -> fallback.Scorer:
    """What --max-accuracy-drop is judged on: labelled eval data, else output cosine on the calibration text."""
    if opts.eval_data is None:
        texts, pairs, _ = calib_texts
        return fallback.make_scorer(plain, source, texts, pairs, None)
    from bertship.runtimes.evaluate import read_eval_data

    id2label = {str(k): v for k, v in (getattr(source.model.config, "id2label", None) or {}).items()}
    data = read_eval_data(opts.eval_data, source.task.name, id2label)
    return fallback.make_scorer(plain, source, data.texts, data.pairs, data.labels)


def _rank_agreement(opts: ExportOptions, task: str, recipe: str) -> float | None:
    """The gate's --min-rank-agreement for a retrieval task (None for the others)."""
    if task not in RETRIEVAL_TASKS:
        if opts.min_rank_agreement is not None:
            raise UsageError(f"--min-rank-agreement judges retrieval tasks ({', '.join(RETRIEVAL_TASKS)}), not {task} "
                             "— use --min-cosine for embeddings, --max-accuracy-drop for a classifier")
        return None
    if opts.min_rank_agreement is not None:
        return fallback.parse_min_cosine(opts.min_rank_agreement, "--min-rank-agreement")
    return RANK_AGREEMENT_FP32 if recipe == "fp32" else RANK_AGREEMENT


_MIN_COSINE_TASK = ("--min-cosine judges embedding vectors (feature-extraction, sentence-embedding), not {task} — use "
                    "--max-accuracy-drop for a classifier or tagger")


def _tail_scorer(source, plain: Path, opts: ExportOptions, calib_texts, golden_texts: list[str],
                 golden_feeds, lengths: list[int]) -> fallback.TailScorer:
    """What --min-cosine is judged on: the eval or calibration texts plus the golden texts, and the length sweep."""
    if opts.eval_data is not None:
        from bertship.runtimes.evaluate import read_eval_data

        texts = read_eval_data(opts.eval_data, source.task.name, {}).texts
    else:
        texts = calib_texts[0]
    from bertship.runtimes.verify import sweep_feeds

    return fallback.make_tail_scorer(plain, source, list(dict.fromkeys([*texts, *golden_texts])), None,
                                     sweep_feeds(golden_feeds, lengths))


def _check_target(staging: Path, built: dict[str, Any], scorer: fallback.TailScorer, min_cos: float, recipe: str,
                  log: Callable[[str], None]) -> dict[str, Any]:
    """Measure --min-cosine on every built backend; FidelityError (nothing written) when one misses it."""
    from bertship.runtimes.errors import FidelityError

    measured, failures = {}, []
    for name, entry in built.items():
        m = scorer.measure(backend_table.runner_class(name)(staging / entry["model"], None, entry.get("options")))
        measured[name] = m
        log(f"[bertship] target   {name}: lowest per-text cosine {m['cosine_min']:.5f} (p1 {m['cosine_p1']:.5f}) on "
            f"{m['texts']} texts and sweep lengths, alone and batched; --min-cosine {min_cos}")
        if m["cosine_min"] < min_cos:
            failures.append(f"{name}: lowest per-text cosine {m['cosine_min']:.5f} < --min-cosine {min_cos} (p1 "
                            f"{m['cosine_p1']:.5f}, worst {m['worst'][0]['text']!r})")
    if failures:
        fix = ("nothing was written; use --recipe int8-mixed (keeps the sensitive groups in float until the target "
               "holds), bf16 or int8-weight-only" if recipe != "int8-mixed" else "nothing was written")
        raise FidelityError(failures, fix)
    return {"min_cosine": min_cos, "texts": len(scorer.texts), "judged_on": "each text alone and in "
            f"mixed-length batches of {scorer.BATCH}, against the fp32 graph", "backends": measured}


def _load(model: Any, tokenizer: Any, opts: ExportOptions) -> load_stage.Source:
    """The load stage for a folder (or the bundled default) or a model in memory."""
    common = {"max_length": opts.max_length, "pooling": opts.pooling, "normalize": opts.normalize}
    if model is None or isinstance(model, (str, Path)):
        if tokenizer is not None:
            raise UsageError("tokenizer= is only for an in-memory model; a model folder brings its own")
        path = load_stage.default_model_path() if model is None else Path(model)
        return load_stage.load_folder(path, opts.task, allow_pickle=opts.allow_pickle, **common)
    if tokenizer is None or opts.task is None:
        raise UsageError("an in-memory model needs tokenizer= and task= — pass both")
    return load_stage.from_model(model, tokenizer, opts.task, **common)
