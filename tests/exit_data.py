"""A tiny classifier that has learned something, for the early-exit tests: a 4-layer tiny BERT fine-tuned in a few
seconds on a made-up three-class task, and its train/dev/test files.

A text's class is the cue word it repeats most (cat, train, movie) among filler words of the golden sentences. Texts
with one cue are easy and texts whose cues nearly tie are hard, so a trained model is sure of some texts after a
layer or two and of others only at the end: what early exit needs to have something to do.
"""

from __future__ import annotations

import random
from pathlib import Path

CUES = ("cat", "train", "movie")
LABELS = ("cats", "trains", "movies")


def texts(n: int, seed: int) -> list[tuple[str, int]]:
    from bertship.exporter.golden import sentences

    rng = random.Random(seed)
    filler = [w.strip(".,?!'\"").lower() for s in sentences() for w in s.split()]
    filler = [w for w in filler if w and w not in CUES]
    rows = []
    for _ in range(n):
        label = rng.randrange(3)
        counts = [0, 0, 0]
        counts[label] = rng.choice((1, 2, 3))
        for other in range(3):  # hard texts: other cues almost as often
            if other != label and rng.random() < 0.5:
                counts[other] = rng.randrange(counts[label])
        words = [CUES[c] for c in range(3) for _ in range(counts[c])] + rng.sample(filler, rng.randrange(3, 14))
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


def write(path: Path, rows: list[tuple[str, int]]) -> Path:
    path.write_text("".join(f"{t}\t{LABELS[y]}\n" for t, y in rows), encoding="utf-8")
    return path


def save(folder: Path, layers: int = 4, steps: int = 300, seed: int = 0) -> Path:
    """Fine-tune a tiny BERT on the task and save it, with train.tsv, dev.tsv and test.tsv beside it in `folder`."""
    import torch

    from tests import tiny

    model, tokenizer = tiny.build("bert", "sequence-classification", seed=seed, layers=layers)
    model.config.id2label = dict(enumerate(LABELS))
    model.config.label2id = {v: k for k, v in enumerate(LABELS)}
    train = texts(600, seed + 1)
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same model on every run: sums over more threads round in another order
    for step in range(steps):
        batch = [train[(step * 32 + i) % len(train)] for i in range(32)]
        enc = tokenizer([t for t, _ in batch], padding=True, truncation=True, return_tensors="pt")
        loss = model(**enc, labels=torch.tensor([y for _, y in batch])).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    torch.set_num_threads(threads)
    model.eval()
    out = folder / "model"
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    write(folder / "train.tsv", train)
    write(folder / "dev.tsv", texts(300, seed + 2))
    write(folder / "test.tsv", texts(300, seed + 3))
    return out
