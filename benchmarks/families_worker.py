"""Time (or profile) one variant of benchmarks/families.py in this process, on the fixed feeds of feeds.npz.

    python -m benchmarks.families_worker time --kind artifact --model ART --backend onnxruntime --feeds F.npz \
        --outputs-out O.npz
    python -m benchmarks.families_worker profile --model ART --feeds F.npz

`time`: kinds `torch` (a Hugging Face folder, eager fp32), `artifact` (a bertship artifact, opened by
`bertship.runtimes.load` with its manifest's backend options), `onnx` / `ir` (a stock tool's file, opened by bertship's
runner class like benchmarks/quant_worker.py does, OpenVINO with the explicit f32 hint). Warm-up, then shuffled rounds
over the shapes; the first output of each shape is saved for cosine. One JSON object on stdout.

`profile`: ONNX Runtime's per-node profiler on an artifact's (or an .onnx file's) session, opened as bertship's runner
opens it; node kernel times grouped into Q/K/V projections, attention core, other weight MatMuls and the rest
(see `classify`).
"""

from __future__ import annotations

import argparse
import json
import math
import random
import re
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from bertship.bench.procload import LoadWatch
from bertship.profiles.machine import peak_rss_mb

TARGET_S = 5.0  # timed seconds per shape (spread over the rounds), within MIN_ITERS..MAX_ITERS calls
MIN_ITERS, MAX_ITERS, ROUNDS, WARMUP = 8, 40, 4, 2


def _feeds(path: str, shapes: list[str], names: tuple[str, ...]) -> dict[str, dict[str, np.ndarray]]:
    data = np.load(path)
    return {s: {n: data[f"{s}/{n}"] for n in names} for s in shapes}


def _runner(kind: str, model: str, backend: str | None, threads: int, extra: dict | None = None):
    """(run(feeds) -> first output as numpy, input names, precision) for one variant."""
    if kind == "torch":
        import torch
        from transformers import AutoModelForSequenceClassification

        torch.set_num_threads(threads)
        m = AutoModelForSequenceClassification.from_pretrained(model, local_files_only=True).eval()
        names = ("input_ids", "attention_mask") + (("token_type_ids",) if m.config.model_type == "bert" else ())

        def run(f):
            with torch.inference_mode():
                return m(**{k: torch.from_numpy(v) for k, v in f.items()}).logits.numpy()

        return run, names, f"fp32 (torch {torch.__version__}, attn {m.config._attn_implementation})"
    from bertship.runtimes import backends, load

    if kind == "artifact":
        r = load(model, backend=backend, threads=threads, runner_options=extra).runner
    else:
        options = dict(extra or {})
        if backend == "openvino":
            options.setdefault("inference_precision", "f32")
        r = backends.runner_class(backend)(Path(model), threads, options or None)
    first = r.output_names[0]
    return (lambda f: r.run(f)[first]), tuple(r.input_names), r.precision


def time_variant(args) -> dict:
    t0 = time.perf_counter()
    run, names, precision = _runner(args.kind, args.model, args.backend, args.threads)
    load_s = time.perf_counter() - t0
    feeds = _feeds(args.feeds, args.shapes, names)
    outputs, per_call = {}, {}
    for s, f in feeds.items():
        outputs[s] = np.asarray(run(f), np.float32)
        for _ in range(WARMUP):
            t = time.perf_counter()
            run(f)
            per_call[s] = time.perf_counter() - t
    iters = {s: min(MAX_ITERS, max(MIN_ITERS, math.ceil(TARGET_S / max(per_call[s], 1e-4)))) for s in feeds}
    samples: dict[str, list[float]] = {s: [] for s in feeds}
    rng = random.Random(args.seed)
    order = list(feeds)
    watch = LoadWatch()
    for r in range(ROUNDS):
        rng.shuffle(order)
        for s in order:
            n = iters[s] // ROUNDS + (1 if r < iters[s] % ROUNDS else 0)
            for _ in range(n):
                t = time.perf_counter()
                run(feeds[s])
                samples[s].append((time.perf_counter() - t) * 1e3)
    if args.outputs_out:
        np.savez(args.outputs_out, **outputs)
    return {"kind": args.kind, "model": args.model, "backend": args.backend or "pytorch", "precision": precision,
            "inputs": list(names), "load_s": load_s, "foreign_load": watch.foreign(), "samples_ms": samples,
            "peak_rss_mb": peak_rss_mb()}


# ------------------------------------------------------------------------------------------------------- profiling
WEIGHT_OPS = {"MatMul", "Gemm", "FusedMatMul", "MatMulInteger", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
              "QGemm", "MatMulNBits"}
QKV = re.compile(r"query|key|value|wqkv|qkv", re.I)
ATTN = re.compile(r"attention|/attn/|rel_embeddings|rel_pos|relative|rotary", re.I)
NOT_ATTN = re.compile(r"attention/output|attn_norm|layernorm", re.I)


def classify(name: str, op: str, has_weight: bool) -> str:
    """One node of the optimized graph: 'fused attention' (the contrib Attention op: Q/K/V projection + scores +
    softmax + context in one kernel), 'qkv projection' (a MatMul on a Q/K/V weight), 'attention core' (everything else
    under the attention module's name that is not a weight MatMul or a LayerNorm: score and context MatMuls, Softmax,
    scale, mask / relative-position / rotary arithmetic, reshapes), 'other weight matmul' (output projection, FFN,
    classifier), 'other' (LayerNorm, residual Add, activation, embeddings, mask construction outside attention)."""
    if op in ("Attention", "MultiHeadAttention", "QAttention"):
        return "fused attention"
    if op in WEIGHT_OPS and has_weight:
        return "qkv projection" if QKV.search(name) and ATTN.search(name) else "other weight matmul"
    if ATTN.search(name) and not NOT_ATTN.search(name) and op not in ("LayerNormalization", "SkipLayerNormalization"):
        return "attention core"
    return "other"


def context_names(graph) -> dict[str, str]:
    """The name each node is classified by: its own, or — for nodes ONNX Runtime's optimizer (or a scripted helper)
    named without a '/' module scope, e.g. 'Transpose_token_12', 'Mul_2267' — the scope of the nearest node up its
    first-input chain, else down its first-consumer chain (a few steps each way)."""
    producer = {o: n for n in graph.node for o in n.output}
    consumer: dict[str, Any] = {}
    for n in graph.node:
        for i in n.input:
            consumer.setdefault(i, n)
    out = {}
    for n in graph.node:
        name = n.name
        for step in (lambda x: producer.get(x.input[0]) if x.input else None,
                     lambda x: consumer.get(x.output[0]) if x.output else None):
            node, seen = n, 0
            while "/" not in name and seen < 6:
                node = step(node)
                if node is None:
                    break
                name, seen = node.name, seen + 1
            if "/" in name:
                break
            name = n.name
        out[n.name] = name
    return out


def profile_variant(args) -> dict:
    import onnx

    from bertship.runtimes import artifact, backends

    tmp = Path(args.work)
    tmp.mkdir(parents=True, exist_ok=True)
    optimized = tmp / "optimized.onnx"
    opts = {"profile": True, "optimized_model_path": str(optimized)}
    model = Path(args.model)
    if model.is_dir():
        entry = artifact.read_manifest(model)["backends"]["onnxruntime"]
        model, opts = model / entry["model"], {**entry.get("options", {}), **opts}
    r = backends.runner_class("onnxruntime")(model, args.threads, opts)
    feeds = _feeds(args.feeds, args.shapes, tuple(r.input_names))
    g = onnx.load(str(optimized), load_external_data=False).graph
    inits = {i.name for i in g.initializer}
    has_weight = {n.name: any(i in inits for i in n.input) for n in g.node}
    optype = {n.name: n.op_type for n in g.node}
    scope = context_names(g)
    watch = LoadWatch()
    marks = []  # (shape, first timed run index): the runs of each shape after its warm-up
    wall: dict[str, list[float]] = {}
    runs = 0
    for s in args.shapes:
        for _ in range(WARMUP):
            r.run(feeds[s])
            runs += 1
        marks.append((s, runs))
        for _ in range(args.iters):
            t = time.perf_counter()
            r.run(feeds[s])
            wall.setdefault(s, []).append((time.perf_counter() - t) * 1e3)
            runs += 1
    foreign = watch.foreign()
    trace = Path(r.session.end_profiling())
    events = json.loads(trace.read_text())
    starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
    out: dict = {"model": str(args.model), "nodes": len(g.node), "foreign_load": foreign,
                 "op_counts": {}, "shapes": {}}
    for n in g.node:
        out["op_counts"][n.op_type] = out["op_counts"].get(n.op_type, 0) + 1
    for s, first in marks:
        lo, hi = starts[first], (starts[first + args.iters] if first + args.iters < len(starts) else float("inf"))
        groups: dict[str, float] = {}
        by_op: dict[str, float] = {}
        nodes: dict[str, list] = {}
        for e in events:
            if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or not lo <= e["ts"] < hi:
                continue
            name = e["name"][: -len("_kernel_time")]
            op = e["args"].get("op_name", optype.get(name, "?"))
            g_name = classify(scope.get(name, name), op, has_weight.get(name, False))
            ms = e["dur"] / 1000.0 / args.iters
            groups[g_name] = groups.get(g_name, 0.0) + ms
            by_op[f"{g_name} | {op}"] = by_op.get(f"{g_name} | {op}", 0.0) + ms
            nodes.setdefault(name, [op, g_name, 0.0])[2] += ms
        total = sum(groups.values())
        top_other = sorted(([k, *v] for k, v in nodes.items() if v[1] == "other"), key=lambda x: -x[3])[:12]
        out["shapes"][s] = {"kernel_ms": total, "wall_p50_ms": sorted(wall[s])[len(wall[s]) // 2],
                            "groups_ms": groups, "by_op_ms": dict(sorted(by_op.items(), key=lambda kv: -kv[1])),
                            "top_other_nodes": top_other, "iters": args.iters}
    trace.unlink(missing_ok=True)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.families_worker")
    p.add_argument("mode", choices=("time", "profile"))
    p.add_argument("--kind", choices=("torch", "artifact", "onnx", "ir"), default="artifact")
    p.add_argument("--model", required=True)
    p.add_argument("--backend", default=None)
    p.add_argument("--feeds", required=True)
    p.add_argument("--shapes", nargs="+", default=["1x128", "8x128", "1x512"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--outputs-out", default=None)
    p.add_argument("--iters", type=int, default=5, help="profile: profiled runs per shape")
    p.add_argument("--work", default="/tmp/families-profile", help="profile: where the optimized graph is written")
    args = p.parse_args(argv)
    res = time_variant(args) if args.mode == "time" else profile_variant(args)
    json.dump(res, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
