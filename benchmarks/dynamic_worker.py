"""Score and time one classifier artifact as it runs (torch-free): `python -m benchmarks.dynamic_worker ART --backend B
--data test.tsv`.

Accuracy on the labelled texts (an early-exit artifact by its calibrated rule, texts leaving at their off-ramps),
the layers each text ran, then p50 latency of one text alone (the first --single texts, each at its own length) and
throughput of the whole file in length-sorted batches of 32 (as Model.classify batches), in shuffled rounds. For an
early-exit artifact, also per segment: rows it was given and its milliseconds in the batch-32 pass. One JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time

import numpy as np

from bertship.bench.procload import LoadWatch
from bertship.runtimes import load, tasks
from bertship.runtimes.evaluate import read_eval_data


class Timed:
    """A segment runner's stand-in that adds up its rows and milliseconds."""

    def __init__(self, runner):
        self.runner, self.rows, self.ms, self.calls = runner, 0, 0.0, 0
        self.backend, self.precision = runner.backend, runner.precision
        self.input_names, self.output_names = runner.input_names, runner.output_names

    def run(self, feeds):
        t = time.perf_counter()
        out = self.runner.run(feeds)
        self.ms += (time.perf_counter() - t) * 1000.0
        self.rows += next(iter(feeds.values())).shape[0]
        self.calls += 1
        return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.dynamic_worker")
    p.add_argument("artifact")
    p.add_argument("--backend", required=True)
    p.add_argument("--data", required=True)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--single", type=int, default=200, help="texts timed alone (batch 1)")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--no-score", action="store_true")
    p.add_argument("--reference", default=None, help="sentence embeddings: the artifact whose vectors are compared")
    args = p.parse_args(argv)
    model = load(args.artifact, backend=args.backend, threads=args.threads)
    if model.task == "sentence-embedding":
        return _embeddings(model, args)
    id2label = {k: v for k, v in (model.manifest["task"].get("id2label") or {}).items()}
    data = read_eval_data(args.data, "sequence-classification", id2label)
    exits = model.exits
    result: dict = {"backend": args.backend, "precision": model.precision, "exits": exits is not None}

    encodings = model.tokenizer.tokenize(data.texts)
    order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
    batches = [(order[i:i + args.batch], model.tokenizer.pad([encodings[j] for j in order[i:i + args.batch]]))
               for i in range(0, len(order), args.batch)]
    singles = [model.tokenizer.pad([encodings[i]]) for i in range(min(args.single, len(encodings)))]

    def run(feeds):
        if exits is not None:
            return model.runner.run_exits(feeds, exits["rule"])
        return model.runner.run(feeds)["logits"], None

    if not args.no_score:
        logits = np.zeros((len(encodings), 0), dtype=np.float32)
        layers = np.zeros(len(encodings), dtype=np.int64)
        for idx, feeds in batches:
            got, layer = run(feeds)
            if logits.shape[1] == 0:
                logits = np.zeros((len(encodings), got.shape[-1]), dtype=np.float32)
            logits[idx] = got
            layers[idx] = layer if layer is not None else 0
        pred = logits.argmax(-1)
        result["accuracy"] = float((pred == np.asarray(data.labels)).mean())
        result["predictions"] = pred.tolist()
        if exits is not None:
            total = exits["total_layers"]
            result["mean_layers"] = float(layers.mean())
            result["exit_histogram"] = {str(k): int((layers == k).sum()) for k in [*exits["layers"], total]}
            result["rule"] = exits["rule"]
            result["total_layers"] = total
        result["labels"] = tasks.label_names(model.manifest["task"], logits.shape[-1])

    for feeds in singles[:5] + [f for _, f in batches[:2]]:  # warm-up
        run(feeds)
    rng = random.Random(0)
    single_ms: list[float] = []
    pass_s: list[float] = []
    watch = LoadWatch()
    for _ in range(args.rounds):
        shuffled = singles[:]
        rng.shuffle(shuffled)
        for feeds in shuffled:
            t = time.perf_counter()
            run(feeds)
            single_ms.append((time.perf_counter() - t) * 1000.0)
        shuffled = [f for _, f in batches]
        rng.shuffle(shuffled)
        t = time.perf_counter()
        for feeds in shuffled:
            run(feeds)
        pass_s.append(time.perf_counter() - t)
    result["foreign_load"] = watch.foreign()
    result["b1_p50_ms"] = float(np.median(single_ms))
    result["b1_mean_ms"] = float(np.mean(single_ms))
    result["b32_texts_per_s"] = len(encodings) / float(np.median(pass_s))
    result["b32_pass_s"] = pass_s
    if exits is not None:  # where a batch-32 pass spends its time, segment by segment
        timed = [Timed(r) for r in model.runner.runners]
        model.runner.runners = timed
        for _, feeds in batches:
            run(feeds)
        result["segments"] = [{"layer": s["layer"], "rows": t.rows, "calls": t.calls, "ms": round(t.ms, 2),
                               "ms_per_row": round(t.ms / max(t.rows, 1), 4)}
                              for s, t in zip(model.manifest["backends"][args.backend]["segments"], timed)]
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


def _embeddings(model, args) -> int:
    """Sentence embeddings: cosine of each text's vector against --reference's (untimed), then the same timing."""
    texts = [line.strip() for line in open(args.data, encoding="utf-8") if line.strip()]
    result: dict = {"backend": args.backend, "precision": model.precision, "texts": len(texts)}
    if args.reference and not args.no_score:
        got, ref = model.embed(texts), load(args.reference, backend=args.backend).embed(texts)
        cos = (got * ref).sum(1) / np.maximum(np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1), 1e-12)
        result.update(cosine_min=float(cos.min()), cosine_p1=float(np.percentile(cos, 1)),
                      cosine_mean=float(cos.mean()))
    encodings = model.tokenizer.tokenize(texts)
    result["mean_tokens"] = float(np.mean([len(e.ids) for e in encodings]))
    order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
    batches = [model.tokenizer.pad([encodings[j] for j in order[i:i + args.batch]])
               for i in range(0, len(order), args.batch)]
    for feeds in batches[:2]:
        model.runner.run(feeds)
    rng, pass_s = random.Random(0), []
    watch = LoadWatch()
    for _ in range(args.rounds):
        shuffled = batches[:]
        rng.shuffle(shuffled)
        t = time.perf_counter()
        for feeds in shuffled:
            model.runner.run(feeds)
        pass_s.append(time.perf_counter() - t)
    result["foreign_load"] = watch.foreign()
    result["b32_texts_per_s"] = len(texts) / float(np.median(pass_s))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
