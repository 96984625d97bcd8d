"""Times the source model in PyTorch eager fp32, the user's starting point, in its own process.

`python -m bertship.bench.torch_worker MODEL_DIR --shapes 1x128 ...` prints the same JSON as bench.worker. This is a
baseline for ratios only: it needs torch, which the artifact timing in bench.worker never imports.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

from .stats import peak_rss_mb
from .worker import harness_overhead_us, parse_shape


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertship.bench.torch_worker")
    parser.add_argument("model_dir")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--shapes", type=parse_shape, nargs="+", default=[(1, 128)])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    import torch
    from transformers import AutoModel, AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model = AutoModel.from_pretrained(args.model_dir, local_files_only=True).eval()
    tok = AutoTokenizer.from_pretrained(args.model_dir, local_files_only=True)
    load_s = time.perf_counter() - t0
    text = " ".join(["The quick brown fox jumps over the lazy dog while the farmer watches from the porch."] * 64)
    ids = tok(text, truncation=True, max_length=512)["input_ids"]
    feeds = {}
    for b, s in args.shapes:
        row = torch.tensor(ids[:s]).unsqueeze(0).repeat(b, 1)
        feeds[f"{b}x{s}"] = {"input_ids": row, "attention_mask": torch.ones_like(row), "token_type_ids": torch.zeros_like(row)}
    samples: dict[str, list[float]] = {k: [] for k in feeds}
    order = list(feeds)
    rng = random.Random(args.seed)
    with torch.inference_mode():
        for f in feeds.values():
            for _ in range(args.warmup):
                model(**f)
        for _ in range(args.rounds):
            rng.shuffle(order)
            for key in order:
                for _ in range(args.iters):
                    t = time.perf_counter()
                    model(**feeds[key])
                    samples[key].append((time.perf_counter() - t) * 1000.0)
    json.dump({
        "artifact": args.model_dir, "backend": "pytorch", "threads": args.threads, "precision": "fp32",
        "load_s": load_s, "peak_rss_mb": peak_rss_mb(),
        "harness_overhead_us": harness_overhead_us(),
        "settings": {"warmup": args.warmup, "iters": args.iters, "rounds": args.rounds, "seed": args.seed},
        "samples_ms": samples,
    }, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
