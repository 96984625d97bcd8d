"""Rerank or sparse-encode the benchmark's texts with one tool in this process, the way an app calls it, timed.

    python -m benchmarks.retrieval_worker --tool st|bertship|fastembed --kind rerank|sparse|multi-vector --model PATH
        [--backend onnxruntime|openvino] --data DATA.json --out PREFIX [--threads 2] [--rounds 2]

rerank: every query's documents in one call per query, batch 32 — sentence-transformers
`CrossEncoder.predict([(q, d) …], batch_size=32)`, bertship `load(ART).rerank(q, docs, batch_size=32)`, fastembed
`TextCrossEncoder.rerank(q, docs, batch_size=32)` (a local ONNX file registered with `add_custom_model` and read from
`specific_model_path`; its ONNX gives logits, so the sigmoid sentence-transformers applies is applied to its
scores). Rate: query-document pairs per second. Writes PREFIX.npy, the scores of the first timed round in group order.

sparse: all texts in one call, batch 32 — `SparseEncoder.encode(texts, batch_size=32)` (its default output, a torch
sparse tensor), `load(ART).embed_sparse(texts, batch_size=32)`, fastembed `SparseTextEmbedding.embed(texts,
batch_size=32)` (the SPLADE++ description, whose vocabulary and post-processing this model shares, pointed at the
local ONNX file by `specific_model_path`: fastembed 0.9.1 has no `add_custom_model` for sparse models). Rate: texts
per second. Writes PREFIX.npz (offsets, indices, values of each text's vector, first timed round).

multi-vector: the documents in one call, batch 32 — `SentenceTransformer.encode(texts, output_value="token_embeddings",
batch_size=32)` L2-normalized per token (its Normalize module would touch only sentence_embedding),
`load(ART).embed_multi(texts, batch_size=32)` (exported with --normalize); st and bertship only. Rate: documents per
second. After the timing the queries are embedded too. Writes PREFIX.npz (documents_offsets, documents_vectors,
queries_offsets, queries_vectors: each text's real tokens, first timed round).
The fastembed tool runs under the separate venv's python (benchmarks/.cache/venv-fastembed), where neither bertship
nor torch is installed: this file imports them only for the tools that need them. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
BATCH = 32


def _load_watch():
    """bertship's LoadWatch (stdlib only), also where bertship is not installed (the fastembed venv)."""
    try:
        from bertship.bench.procload import LoadWatch
    except ImportError:
        spec = importlib.util.spec_from_file_location("procload", ROOT / "bench" / "procload.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        LoadWatch = module.LoadWatch
    return LoadWatch


def _peak_rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def rerank_fn(tool: str, model_path: Path, backend: str | None, threads: int):
    """fn(query, documents) -> float32 scores in document order, and a note on what ran."""
    if tool == "st":
        import torch
        from sentence_transformers import CrossEncoder

        torch.set_num_threads(threads)
        ce = CrossEncoder(str(model_path), device="cpu")

        def fn(q, docs):
            return np.asarray(ce.predict([(q, d) for d in docs], batch_size=BATCH, show_progress_bar=False,
                                         convert_to_numpy=True), dtype=np.float32)

        return fn, {"runtime": f"torch {torch.__version__}", "activation": type(ce.activation_fn).__name__}
    if tool == "bertship":
        from bertship.runtimes import load

        m = load(model_path, backend=backend, threads=threads)

        def fn(q, docs):
            out = np.zeros(len(docs), np.float32)
            for r in m.rerank(q, docs, batch_size=BATCH):
                out[r["index"]] = r["score"]
            return out

        return fn, {"runtime": backend, "precision": m.precision}
    if tool == "fastembed":
        from fastembed.common.model_description import ModelSource
        from fastembed.rerank.cross_encoder import TextCrossEncoder

        name = "bertship-bench/minilm-random-head-ce"
        if name.lower() not in {d["model"].lower() for d in TextCrossEncoder.list_supported_models()}:
            TextCrossEncoder.add_custom_model(name, sources=ModelSource(hf=name), model_file="model.onnx")
        enc = TextCrossEncoder(name, specific_model_path=str(model_path), threads=threads)

        def fn(q, docs):
            return _sigmoid(np.fromiter(enc.rerank(q, docs, batch_size=BATCH), np.float64)).astype(np.float32)

        return fn, {"runtime": f"onnxruntime {_version('onnxruntime')}", "fastembed": _version("fastembed")}
    raise SystemExit(f"unknown tool {tool}")


def sparse_fn(tool: str, model_path: Path, backend: str | None, threads: int):
    """fn(texts) -> the tool's own output, and to_rows(output) -> [(indices, values)] per text (not timed)."""
    if tool == "st":
        import torch
        from sentence_transformers import SparseEncoder

        torch.set_num_threads(threads)
        se = SparseEncoder(str(model_path), device="cpu")

        def fn(texts):
            return se.encode(texts, batch_size=BATCH, show_progress_bar=False)

        def rows(out):
            out = out.coalesce()
            idx, val = out.indices().numpy(), out.values().numpy()
            per = []
            for i in range(out.shape[0]):
                sel = idx[0] == i
                order = np.argsort(idx[1][sel])
                per.append((idx[1][sel][order], val[sel][order]))
            return per

        return fn, rows, {"runtime": f"torch {torch.__version__}"}
    if tool == "bertship":
        from bertship.runtimes import load

        m = load(model_path, backend=backend, threads=threads)
        return ((lambda texts: m.embed_sparse(texts, batch_size=BATCH)),
                (lambda out: [(v.indices, v.values) for v in out]), {"runtime": backend, "precision": m.precision})
    if tool == "fastembed":
        from fastembed import SparseTextEmbedding

        emb = SparseTextEmbedding("prithivida/Splade_PP_en_v1", specific_model_path=str(model_path), threads=threads)
        return ((lambda texts: list(emb.embed(texts, batch_size=BATCH))),
                (lambda out: [(e.indices, e.values) for e in out]),
                {"runtime": f"onnxruntime {_version('onnxruntime')}", "fastembed": _version("fastembed")})
    raise SystemExit(f"unknown tool {tool}")


def multi_fn(tool: str, model_path: Path, backend: str | None, threads: int):
    """fn(texts) -> one float32 [tokens, dim] matrix per text (real tokens only), L2-normalized per token."""
    if tool == "st":
        import torch
        from sentence_transformers import SentenceTransformer

        torch.set_num_threads(threads)
        model = SentenceTransformer(str(model_path), device="cpu")

        def fn(texts):
            out = model.encode(texts, output_value="token_embeddings", batch_size=BATCH, show_progress_bar=False)
            # sentence-transformers 5.7's Normalize touches only sentence_embedding: normalize each token here
            return [torch.nn.functional.normalize(t.float(), p=2.0, dim=-1).numpy() for t in out]

        return fn, {"runtime": f"torch {torch.__version__}"}
    if tool == "bertship":
        from bertship.runtimes import load

        m = load(model_path, backend=backend, threads=threads)
        return (lambda texts: m.embed_multi(texts, batch_size=BATCH)), {"runtime": backend, "precision": m.precision}
    raise SystemExit(f"no multi-vector for tool {tool}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.retrieval_worker")
    p.add_argument("--tool", required=True, choices=("st", "bertship", "fastembed"))
    p.add_argument("--kind", required=True, choices=("rerank", "sparse", "multi-vector"))
    p.add_argument("--model", required=True, type=Path)
    p.add_argument("--backend", default=None)
    p.add_argument("--data", required=True, type=Path)
    p.add_argument("--out", required=True, type=Path, help="prefix of the outputs of the first timed round")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    data = json.loads(args.data.read_text(encoding="utf-8"))
    LoadWatch = _load_watch()
    start = time.perf_counter()
    if args.kind == "rerank":
        fn, info = rerank_fn(args.tool, args.model, args.backend, args.threads)
        groups = [(data["queries"][i], [data["documents"][d] for d in g]) for i, g in enumerate(data["groups"])]
        n = sum(len(docs) for _, docs in groups)

        def run():
            return [fn(q, docs) for q, docs in groups]

        def warm():
            for q, docs in groups[:4]:
                fn(q, docs)
    elif args.kind == "multi-vector":
        fn, info = multi_fn(args.tool, args.model, args.backend, args.threads)
        texts = data["documents"]
        n = len(texts)

        def run():
            return fn(texts)

        def warm():
            fn(texts[:64])
    else:
        fn, to_rows, info = sparse_fn(args.tool, args.model, args.backend, args.threads)
        texts = data["sparse_texts"]
        n = len(texts)

        def run():
            return fn(texts)

        def warm():
            fn(texts[:64])
    load_s = time.perf_counter() - start
    warm()
    rates, loads, first = [], [], None
    for r in range(args.rounds):
        watch = LoadWatch()
        t0 = time.perf_counter()
        out = run()
        rates.append(n / (time.perf_counter() - t0))
        loads.append(watch.foreign())
        if r == 0:
            first = out
    if args.kind == "multi-vector":
        parts = {"documents": first, "queries": fn(data["queries"])}  # the queries: after the timing
        arrays = {}
        for part, mats in parts.items():
            arrays[f"{part}_offsets"] = np.concatenate([[0], np.cumsum([len(m) for m in mats])]).astype(np.int64)
            arrays[f"{part}_vectors"] = np.concatenate([np.asarray(m, np.float32) for m in mats])
        np.savez(f"{args.out}.npz", **arrays)
    elif args.kind == "rerank":
        np.save(f"{args.out}.npy", np.concatenate(first).astype(np.float32))
    else:
        rows = to_rows(first)
        lengths = np.array([len(i) for i, _ in rows], np.int64)
        np.savez(f"{args.out}.npz", offsets=np.concatenate([[0], np.cumsum(lengths)]),
                 indices=np.concatenate([np.asarray(i, np.int32) for i, _ in rows]),
                 values=np.concatenate([np.asarray(v, np.float32) for _, v in rows]))
    json.dump({"tool": args.tool, "kind": args.kind, "model": str(args.model), "backend": args.backend, **info,
               "items": n, "per_s": rates, "foreign_loads": loads,
               "foreign_load": max((x for x in loads if x is not None), default=None), "load_s": load_s,
               "peak_rss_mb": _peak_rss_mb(), "python": sys.executable}, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
