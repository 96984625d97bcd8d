"""Accuracy-aware fallback: keep the most quantization-sensitive layers in float until the accuracy limit holds.

Sensitivity is measured, not guessed: each group of MatMuls (per layer: the attention-score products and the Linear
layers separately on ONNX Runtime; whole layers on OpenVINO, whose converter fuses attention into one op) is left in
float alone, and the score it wins back is its sensitivity. Groups then go back to float in that order until the
quantized model keeps (1 - max_drop) of the fp32 score. The manifest records every measurement.
"""

from __future__ import annotations

import re
import shutil
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bertship.runtimes import backends
from bertship.runtimes.errors import FidelityError, UsageError

from . import quantize

_LAYER = re.compile(r"layers?\.(\d+)/")


def parse_drop(text: str | float) -> float:
    """'1%' or 0.01 -> 0.01 (relative to the fp32 score); anything outside (0, 1) is a UsageError."""
    try:
        value = float(text[:-1]) / 100 if isinstance(text, str) and text.endswith("%") else float(text)
    except ValueError:
        raise UsageError(f"--max-accuracy-drop {text!r} is not a number — write e.g. 1% or 0.01") from None
    if not 0 < value < 1:
        raise UsageError(f"--max-accuracy-drop {text!r} must be between 0 and 100 % — e.g. 1% keeps 99 % of fp32")
    return value


@dataclass(frozen=True)
class Scorer:
    """Scores a runner on fixed batches: accuracy with labels; without labels, agreement with the fp32 graph's
    predictions for a classifier (its few logits have no direction worth a cosine), else mean output cosine."""

    feeds: list[dict[str, np.ndarray]]
    labels: list[np.ndarray] | None
    reference: list[np.ndarray]
    metric: str
    fp32: float  # the fp32 graph's own score

    def __call__(self, runner) -> float:
        outs = [_first(runner.run(f)) for f in self.feeds]
        if self.labels is not None or self.metric == "agreement":
            labels = self.labels or [r.argmax(-1) for r in self.reference]
            right = sum(int((o.argmax(-1) == y).sum()) for o, y in zip(outs, labels))
            return right / sum(len(y) for y in labels)
        cos = []
        for o, r in zip(outs, self.reference):
            a, b = o.reshape(len(o), -1).astype(np.float64), r.reshape(len(r), -1).astype(np.float64)
            cos.append((a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30))
        return float(np.concatenate(cos).mean())


def _first(outs: dict[str, np.ndarray]) -> np.ndarray:
    return np.concatenate([v.reshape(len(v), -1) for v in outs.values()], axis=-1)


def make_scorer(plain_onnx: Path, source, texts: list[str], pairs: list[str] | None, labels: list[int] | None,
                batch: int = 32) -> Scorer:
    """Batches of similar-length texts, tokenized by the source tokenizer; reference outputs from the fp32 graph on
    ONNX Runtime (equal to PyTorch within 1e-6, and much faster)."""
    lengths = [len(source.tokenizer(t, p, truncation=True, max_length=source.max_length)["input_ids"])
               for t, p in zip(texts, pairs or [None] * len(texts))]
    order = sorted(range(len(texts)), key=lengths.__getitem__)
    feeds, label_batches = [], []
    for start in range(0, len(order), batch):
        idx = order[start : start + batch]
        enc = source.tokenizer([texts[i] for i in idx], [pairs[i] for i in idx] if pairs else None, padding="longest",
                               truncation=True, max_length=source.max_length, return_token_type_ids=True,
                               return_tensors="np")
        feeds.append({n: np.asarray(enc[n], dtype=np.int64) for n in source.family.inputs})
        if labels is not None:
            label_batches.append(np.asarray([labels[i] for i in idx]))
    classifier = [list(o.axes) for o in source.task.outputs] == [["batch", "labels"]]
    return _scorer(plain_onnx, feeds, label_batches if labels is not None else None, classifier)


def _scorer(plain_onnx: Path, feeds, labels, classifier: bool) -> Scorer:
    ref_runner = backends.runner_class("onnxruntime")(plain_onnx, None, None)
    reference = [_first(ref_runner.run(f)) for f in feeds]
    metric = "accuracy" if labels is not None else "agreement" if classifier else "cosine"
    scorer = Scorer(feeds, labels, reference, metric, 1.0)
    return replace(scorer, fp32=scorer(ref_runner))


def groups(plain_onnx: Path, backend: str) -> dict[str, list[str]]:
    """Exclusion groups: name -> MatMul node names (ONNX Runtime) or node-name regexes (OpenVINO via NNCF)."""
    import onnx

    g = onnx.load(str(plain_onnx), load_external_data=False).graph
    weights = {i.name for i in g.initializer}
    found: dict[str, list[str]] = {}
    for node in g.node:
        if node.op_type != "MatMul":
            continue
        m = _LAYER.search(node.name)
        layer = f"layer {m.group(1)}" if m else "embeddings/head"
        if backend == "openvino":
            key, item = layer, (f".*{re.escape(m.group(0))}.*" if m else re.escape(node.name))
        else:
            kind = "linear" if any(i in weights for i in node.input) else "attention scores"
            key, item = f"{layer} {kind}", node.name
        if item not in found.setdefault(key, []):
            found[key].append(item)
    return found


def search(
    backend: str, ctx: quantize.BuildContext, scorer: Scorer, max_drop: float,
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build the backend under the recipe with as few float groups as the limit allows.

    Returns (the backend's manifest entry, the fallback record). Raises FidelityError when even every group in
    float misses the limit.
    """
    if backend == "onnxruntime" and ctx.ort_graph != "plain":
        raise UsageError("--max-accuracy-drop works on the plain graph — drop --ort-graph fused")
    if ctx.recipe.name not in ("int8-dynamic", "int8-static"):
        raise UsageError(f"--max-accuracy-drop applies to int8-dynamic and int8-static, not {ctx.recipe.name!r}")
    runner_cls = backends.runner_class(backend)
    fp32_score = scorer.fp32
    target = (1 - max_drop) * fp32_score
    scratch = ctx.staging / "_work" / "fallback"
    evaluations = 0

    def trial(excluded: list[str]) -> tuple[float, dict[str, Any]]:
        nonlocal evaluations
        evaluations += 1
        shutil.rmtree(scratch, ignore_errors=True)
        entry = quantize.build(backend, replace(ctx, staging=scratch, exclude=tuple(excluded)))
        score = scorer(runner_cls(scratch / entry["model"], None, entry.get("options")))
        return score, entry

    table = groups(ctx.plain_onnx, backend)
    full, _ = trial([])
    log(f"[bertship] fallback {scorer.metric}: fp32 {fp32_score:.4f}, all quantized {full:.4f}, "
        f"limit {target:.4f} ({max_drop:.2%} drop)")
    record: dict[str, Any] = {"metric": scorer.metric, "max_drop": max_drop, "fp32": fp32_score, "target": target,
                              "all_quantized": full, "kept_float": [], "sensitivity": {}}
    kept: list[str] = []
    score = full
    if full < target:
        for name, items in table.items():
            s, _ = trial(items)
            record["sensitivity"][name] = s - full
        ranked = sorted(table, key=lambda n: record["sensitivity"][n], reverse=True)
        log("[bertship] fallback most sensitive: " + ", ".join(f"{n} (+{record['sensitivity'][n]:.4f})"
                                                             for n in ranked[:4]))
        for name in ranked:
            kept.append(name)
            score, _ = trial([i for n in kept for i in table[n]])
            record["kept_float"].append({"group": name, "gain_alone": record["sensitivity"][name], "score_after": score})
            if score >= target:
                break
        if score < target:
            raise FidelityError(
                [f"{backend}: {scorer.metric} {score:.4f} with every MatMul group in float < limit {target:.4f}"],
                "nothing was written; the limit cannot be met by this recipe — raise --max-accuracy-drop or use "
                "another recipe (int8-weight-only keeps the most accuracy)")
    # the winning configuration is rebuilt into the real staging directory
    entry = quantize.build(backend, replace(ctx, exclude=tuple(i for n in kept for i in table[n])))
    shutil.rmtree(scratch, ignore_errors=True)
    record.update(final=score, evaluations=evaluations + 1)
    entry["build"]["kept_float"] = kept
    log(f"[bertship] fallback kept {len(kept)} group(s) in float: {', '.join(kept) or 'none'}; {scorer.metric} "
        f"{score:.4f}")
    return entry, record
