"""Times one artifact on one backend in this process: `python -m bertship.bench.worker ART --backend B ...`.

Each backend runs in its own process (on 2 cores, timing several runtimes in one process skews them by up to 70 %).
Prints one JSON object: raw milliseconds per shape, load time, peak RSS, the precision the backend reports, and the
harness's own per-call overhead. Torch-free.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import time
from typing import Any

import numpy as np


def parse_shape(text: str) -> tuple[int, int]:
    """'8x128' -> (8, 128)."""
    try:
        batch, seq = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not BATCHxSEQUENCE, e.g. 8x128") from None
    if batch < 1 or seq < 2:
        raise argparse.ArgumentTypeError(f"shape {text!r} needs batch >= 1 and sequence >= 2")
    return batch, seq


def real_feeds(model, batch: int, seq: int) -> dict[str, np.ndarray]:
    """Real token ids of one long English text, cut to exactly `seq` tokens (no padding), repeated `batch` times."""
    if seq > model.max_length:
        raise SystemExit(f"shape sequence {seq} exceeds the artifact's max length {model.max_length}")
    text = " ".join(["The quick brown fox jumps over the lazy dog while the farmer watches from the porch."] * 64)
    ids = model.tokenizer.tokenize([text])[0].ids[:seq]
    feeds = {
        "input_ids": np.tile(np.asarray(ids, dtype=np.int64), (batch, 1)),
        "attention_mask": np.ones((batch, seq), dtype=np.int64),
        "token_type_ids": np.zeros((batch, seq), dtype=np.int64),
    }
    return {name: feeds[name] for name in model.input_names}


def harness_overhead_us(calls: int = 20000) -> float:
    """Per-call cost of the timing loop itself (perf_counter pair + append + a no-op call), in microseconds."""
    noop = lambda: None  # noqa: E731
    samples: list[float] = []
    start = time.perf_counter()
    for _ in range(calls):
        t0 = time.perf_counter()
        noop()
        samples.append(time.perf_counter() - t0)
    return (time.perf_counter() - start) / calls * 1e6


def measure(args: argparse.Namespace) -> dict[str, Any]:
    from bertship.runtimes import load

    t0 = time.perf_counter()
    model = load(args.artifact, backend=args.backend, threads=args.threads)
    load_s = time.perf_counter() - t0
    feeds = {f"{b}x{s}": real_feeds(model, b, s) for b, s in args.shapes}
    for key, f in feeds.items():
        for _ in range(args.warmup):
            model.runner.run(f)
    samples: dict[str, list[float]] = {key: [] for key in feeds}
    order = list(feeds)
    rng = random.Random(args.seed)
    for _ in range(args.rounds):
        rng.shuffle(order)  # shuffled rounds: a slow phase of the machine does not land on one shape only
        for key in order:
            f = feeds[key]
            run = model.runner.run
            for _ in range(args.iters):
                t = time.perf_counter()
                run(f)
                samples[key].append((time.perf_counter() - t) * 1000.0)
    return {
        "artifact": str(args.artifact),
        "backend": args.backend,
        "threads": args.threads,
        "precision": model.precision,
        "load_s": load_s,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "harness_overhead_us": harness_overhead_us(),
        "settings": {"warmup": args.warmup, "iters": args.iters, "rounds": args.rounds, "seed": args.seed},
        "samples_ms": samples,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertship.bench.worker", description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--backend", required=True)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--shapes", type=parse_shape, nargs="+", default=[(1, 128)])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    json.dump(measure(args), sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
