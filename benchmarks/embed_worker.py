"""Embed a text file with one variant in this process, the way an app does, timed; torch-free.

    python -m benchmarks.embed_worker --model ART --backend B --tokenizer-from ART --texts FILE --vectors-out P

A bertship artifact runs through `load(ART).embed(texts, batch_size=32)`; a stock tool's .onnx/.xml file through the
same batching (texts sorted by length, 32 at a time, each batch padded to its longest), mean-pooled and normalized as
sentence-transformers does. Writes P.batched.npy (the first timed round) and P.alone.npy (every text embedded on
its own), and prints one JSON object: sentences per second of each round and the other processes' CPU use then.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from bertship.profiles.machine import peak_rss_mb
from bertship.runtimes import artifact, backends, load, tasks
from bertship.runtimes.tokenizer import TextEncoder

from bertship.bench.procload import LoadWatch

BATCH = 32


def _file_embedder(path: Path, backend: str, tok_from: Path, threads: int):
    """embed(texts) for a bare model file: Model.embed's batching, mean pooling and L2 normalization."""
    options = {"inference_precision": "f32"} if backend == "openvino" else None
    runner = backends.runner_class(backend)(path, threads, options)
    spec = artifact.read_manifest(tok_from)["tokenizer"]
    spec = dict(spec, input_names=[n for n in ("input_ids", "attention_mask", "token_type_ids")
                                   if n in runner.input_names])
    enc = TextEncoder(tok_from / artifact.TOKENIZER, spec)

    def embed(texts: list[str]) -> np.ndarray:
        encodings = enc.tokenize(texts)
        order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
        out = None
        for start in range(0, len(order), BATCH):
            idx = order[start : start + BATCH]
            feeds = enc.pad([encodings[i] for i in idx])
            outs = runner.run(feeds)
            hidden = outs.get("last_hidden_state", next(iter(outs.values())))
            v = tasks.l2_normalize(tasks.mean_pool(hidden, feeds["attention_mask"])) if hidden.ndim == 3 else hidden
            if out is None:
                out = np.zeros((len(texts), v.shape[-1]), np.float32)
            out[idx] = v
        return out

    return embed, runner.precision


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.embed_worker")
    p.add_argument("--model", required=True, type=Path, help="artifact directory, or an .onnx / .xml file")
    p.add_argument("--backend", required=True)
    p.add_argument("--tokenizer-from", type=Path, default=None, help="for a bare model file: an artifact's tokenizer")
    p.add_argument("--texts", required=True, type=Path)
    p.add_argument("--vectors-out", type=Path, default=None, help="prefix for .batched.npy and .alone.npy")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)

    texts = [t for t in args.texts.read_text(encoding="utf-8").splitlines() if t]
    if args.model.is_dir():
        model = load(args.model, backend=args.backend, threads=args.threads)
        embed, precision = (lambda ts: model.embed(ts, batch_size=BATCH)), model.precision
        size = sum(f["bytes"] for f in model.manifest["files"] if f["path"].startswith(args.backend + "/"))
    else:
        embed, precision = _file_embedder(args.model, args.backend, args.tokenizer_from, args.threads)
        files = [args.model, args.model.with_suffix(".bin")] if args.model.suffix == ".xml" else [args.model]
        size = sum(f.stat().st_size for f in files if f.exists())
    embed(texts[:200])  # warm-up: every shape class compiled once
    rates, loads = [], []
    for r in range(args.rounds):
        watch = LoadWatch()
        start = time.perf_counter()
        vectors = embed(texts)
        rates.append(len(texts) / (time.perf_counter() - start))
        loads.append(watch.foreign())
        if r == 0 and args.vectors_out:
            np.save(f"{args.vectors_out}.batched.npy", vectors)
    if args.vectors_out:
        np.save(f"{args.vectors_out}.alone.npy", np.concatenate([embed([t]) for t in texts]))
    json.dump({"model": str(args.model), "backend": args.backend, "precision": precision, "size_bytes": size,
               "texts": len(texts), "sent_per_s": rates, "foreign_loads": loads,
               "foreign_load": max((x for x in loads if x is not None), default=None), "peak_rss_mb": peak_rss_mb()},
              sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
