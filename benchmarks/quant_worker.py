"""Score and time one model file in this process (torch-free): a bertship artifact or a stock tool's ONNX/IR file.

    python -m benchmarks.quant_worker --model FILE --backend B --tokenizer-from ART --data test.tsv [--texts FILE]

Accuracy on labelled data (classification logits) or sentence embeddings on texts (pooled and normalized here when
the model outputs token states), then p50 latency at b1 on real sentence lengths and at b1/b8 x 128 tokens. One JSON
object on stdout. Every variant runs this same code, so they differ only in the model file.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

import numpy as np

from bertship.runtimes import artifact, backends
from bertship.runtimes.tokenizer import TextEncoder

from bertship.bench.procload import LoadWatch

from bertship.profiles.machine import peak_rss_mb


def _vectors(name: str, out: dict[str, np.ndarray], mask: np.ndarray) -> np.ndarray:
    if "logits" in out:
        return out["logits"]
    if "sentence_embedding" in out:
        return out["sentence_embedding"]
    hidden = out.get("last_hidden_state", next(iter(out.values())))
    m = mask[..., None].astype(np.float32)
    pooled = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)
    return pooled / np.maximum(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12)


def _median(xs: list[float]) -> float:
    s = sorted(xs)
    return s[len(s) // 2]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.quant_worker")
    p.add_argument("--model", required=True, help="artifact directory, or an .onnx / .xml file")
    p.add_argument("--backend", required=True)
    p.add_argument("--tokenizer-from", required=True, help="artifact whose tokenizer.json and spec to use")
    p.add_argument("--data", default=None, help="labelled TSV (text<TAB>label index)")
    p.add_argument("--texts", default=None, help="one text per line: embeddings are returned for cosine")
    p.add_argument("--vectors-out", default=None, help="write the embeddings here (.npy)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--real", type=int, default=200, help="sentences timed one at a time at their real lengths")
    p.add_argument("--score", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args(argv)

    tok_root = Path(args.tokenizer_from)
    spec = artifact.read_manifest(tok_root)["tokenizer"]
    model_path = Path(args.model)
    options = None
    if model_path.is_dir():
        manifest = artifact.read_manifest(model_path)
        entry = manifest["backends"][args.backend]
        model_path, options = model_path / entry["model"], entry.get("options")
    elif args.backend == "openvino":
        options = {"inference_precision": "f32"}  # the same explicit hint bertship uses, for a fair comparison
    runner = backends.runner_class(args.backend)(model_path, args.threads, options)
    spec = dict(spec, input_names=[n for n in ("input_ids", "attention_mask", "token_type_ids")
                                   if n in runner.input_names])
    enc = TextEncoder(tok_root / artifact.TOKENIZER, spec)
    result: dict = {"model": str(args.model), "backend": args.backend, "precision": runner.precision,
                    "size_bytes": sum(f.stat().st_size for f in _files(Path(args.model), args.backend))}

    texts, labels = [], None
    if args.data:
        rows = [line.rsplit("\t", 1) for line in Path(args.data).read_text(encoding="utf-8").splitlines() if line]
        texts, labels = [r[0] for r in rows], np.array([int(r[1]) for r in rows])
    elif args.texts:
        texts = [t for t in Path(args.texts).read_text(encoding="utf-8").splitlines() if t]
    encodings = enc.tokenize(texts) if texts else []
    if args.score and texts:
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        vecs = None
        for start in range(0, len(order), 32):
            idx = order[start : start + 32]
            feeds = enc.pad([encodings[i] for i in idx])
            v = _vectors(args.model, runner.run(feeds), feeds["attention_mask"])
            if vecs is None:
                vecs = np.zeros((len(texts), v.shape[-1]), np.float32)
            vecs[idx] = v
        if labels is not None:
            result["accuracy"] = float((vecs.argmax(-1) == labels).mean())
        if args.vectors_out:
            np.save(args.vectors_out, vecs)

    timings: dict[str, list[float]] = {}
    watch = LoadWatch()  # other processes' CPU use while this one times: the driver re-runs a loaded worker
    if encodings:
        singles = [enc.pad([e]) for e in encodings[: args.real]]
        for f in singles[:5]:
            runner.run(f)
        ms = []
        for f in singles:
            t = time.perf_counter()
            runner.run(f)
            ms.append((time.perf_counter() - t) * 1e3)
        timings["b1 real"] = ms
        result["real_mean_tokens"] = float(np.mean([len(e.ids) for e in encodings[: args.real]]))
    long_text = " ".join(texts[:200]) if texts else "hello world " * 200
    ids = enc.tokenize([long_text])[0]
    shapes = {"1x128": 1, "8x128": 8}
    feeds = {}
    for key, b in shapes.items():
        one = enc.pad([ids])
        feeds[key] = {k: np.tile(v[:, :128], (b, 1)) for k, v in one.items()}
    order = list(feeds)
    rng = random.Random(0)
    for f in feeds.values():
        for _ in range(3):
            runner.run(f)
    for _ in range(3):  # shuffled rounds
        rng.shuffle(order)
        for key in order:
            for _ in range(args.iters // 3):
                t = time.perf_counter()
                runner.run(feeds[key])
                timings.setdefault(key, []).append((time.perf_counter() - t) * 1e3)
    result["foreign_load"] = watch.foreign()
    result["p50_ms"] = {k: _median(v) for k, v in timings.items()}
    result["samples_ms"] = timings
    result["peak_rss_mb"] = peak_rss_mb()
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


def _files(path: Path, backend: str) -> list[Path]:
    """The model files one variant ships for this backend (an artifact's other backend not counted)."""
    if path.is_dir():
        return [p for p in (path / backend).rglob("*") if p.is_file()]
    if path.suffix == ".xml":
        return [path, path.with_suffix(".bin")]
    return [path] + [p for p in path.parent.glob(path.name + ".data")]


if __name__ == "__main__":
    sys.exit(main())
