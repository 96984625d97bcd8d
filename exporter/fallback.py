"""Accuracy-aware fallback: keep the most quantization-sensitive groups in float until every objective holds.

An objective is a score and a target: accuracy or agreement within --max-accuracy-drop of fp32, or, for embeddings,
the lowest per-text cosine against fp32 (each text alone and in mixed-length batches) at or above --min-cosine.

Sensitivity is measured, not guessed: each group is left in float alone, and the margin it wins back is its
sensitivity. The fewest groups, taken in that order, that meet every objective stay in float (found by bisection on
their count). For int8-static and int8-dynamic
a group is a set of MatMuls kept out of quantization (per layer: the attention-score products and the Linear layers
separately on ONNX Runtime; whole layers on OpenVINO, whose converter fuses attention into one op), and each trial is
quantized anew; for int8-mixed a group is an activation quantizer of one all-int8 model (see qdq.py), chosen after the
quantization routes were measured, so trials only remove quantizers. The manifest records every measurement.
"""

from __future__ import annotations

import math
import re
import shutil
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bertship.runtimes import backends
from bertship.runtimes.errors import FidelityError, UsageError
from bertship.runtimes.fidelity import cosines, tail, text_vectors

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


def parse_min_cosine(text: str | float, flag: str = "--min-cosine") -> float:
    """'0.99' -> 0.99; anything outside (0, 1] is a UsageError naming `flag`."""
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UsageError(f"{flag} {text!r} is not a number — write e.g. 0.99") from None
    if not 0 < value <= 1:
        raise UsageError(f"{flag} {text!r} must be in (0, 1] — e.g. 0.99")
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
    names: tuple[str, ...] | None = None  # the outputs judged (None: all); an early-exit graph's final logits

    def __call__(self, runner) -> float:
        outs = [_first(runner.run(f), self.names) for f in self.feeds]
        if self.labels is not None or self.metric == "agreement":
            labels = self.labels or [r.argmax(-1) for r in self.reference]
            right = sum(int((o.argmax(-1) == y).sum()) for o, y in zip(outs, labels))
            return right / sum(len(y) for y in labels)
        cos = []
        for o, r in zip(outs, self.reference):
            a, b = o.reshape(len(o), -1).astype(np.float64), r.reshape(len(r), -1).astype(np.float64)
            cos.append((a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30))
        return float(np.concatenate(cos).mean())


@dataclass(frozen=True)
class TailScorer:
    """The lowest per-text cosine against the fp32 graph, each text run alone and inside mixed-length batches (its
    vector as the artifact is used: fidelity.text_vectors), and each length of the sweep (runtimes.verify.sweep_feeds)
    run alone. What --min-cosine is judged on."""

    alone: list[dict[str, np.ndarray]]
    batches: list[dict[str, np.ndarray]]  # the texts in their given order, BATCH at a time, padded
    reference: list[np.ndarray]  # per text, from the fp32 graph run on the text alone
    texts: list[str]  # the texts, then one "<N tokens>" label per sweep length
    task: str
    outputs: list[dict[str, Any]]
    sweep: list[dict[str, np.ndarray]] = field(default_factory=list)
    sweep_reference: list[np.ndarray] = field(default_factory=list)
    metric: str = "min_cosine"
    fp32: float = 1.0

    BATCH = 16

    def measure(self, runner) -> dict[str, Any]:
        """tail(...) of the per-text minimum over both arrangements and the sweep, plus the lowest alone-vs-batched
        cosine."""
        per_text, invariance = self._cosines(runner)
        return {**tail(per_text, self.texts), "batch_cosine_min": float(invariance.min(initial=1.0))}

    def per_text(self, runner) -> np.ndarray:
        """Each text's lowest cosine against the reference, alone or batched, then each sweep length's."""
        return self._cosines(runner)[0]

    def __call__(self, runner) -> float:
        return float(self.per_text(runner).min())

    def subset(self, indices) -> "TailScorer":
        """The same judgement on some of its texts and sweep lengths (indices into per_text's order), each run alone
        only: a cheaper scorer for ranking groups on the worst of them."""
        n = len(self.alone)
        texts = [i for i in indices if i < n]
        lengths = [i - n for i in indices if i >= n]
        return replace(self, alone=[self.alone[i] for i in texts], batches=[],
                       reference=[self.reference[i] for i in texts],
                       texts=[self.texts[i] for i in texts] + [self.texts[n + j] for j in lengths],
                       sweep=[self.sweep[j] for j in lengths], sweep_reference=[self.sweep_reference[j] for j in lengths])

    def _cosines(self, runner) -> tuple[np.ndarray, np.ndarray]:
        single = self._vectors(runner, self.alone)
        texts = cosines(single, self.reference)
        invariance = np.ones(0)
        if self.batches:
            batched = self._vectors(runner, self.batches)
            texts = np.minimum(texts, cosines(batched, self.reference))
            invariance = cosines(single, batched)
        sweep = cosines(self._vectors(runner, self.sweep, pooled=True), self.sweep_reference)
        return np.concatenate([texts, sweep]), invariance

    def _vectors(self, runner, feeds: list[dict[str, np.ndarray]], pooled: bool = False) -> list[np.ndarray]:
        return [v for f in feeds for v in text_vectors(self.task, self.outputs, runner.run(f), f["attention_mask"],
                                                      pooled=pooled)]


def make_tail_scorer(plain_onnx: Path, source, texts: list[str], pairs: list[str] | None,
                     sweep: list[dict[str, np.ndarray]] = ()) -> TailScorer:
    """Texts tokenized by the source tokenizer, alone and in batches, and the sweep inputs; the reference from the fp32
    graph on ONNX Runtime (equal to PyTorch within 1e-6) with each text alone."""
    def encode(idx: list[int]) -> dict[str, np.ndarray]:
        enc = source.tokenizer([texts[i] for i in idx], [pairs[i] for i in idx] if pairs else None, padding="longest",
                               truncation=True, max_length=source.max_length, return_token_type_ids=True,
                               return_tensors="np")
        return {n: np.asarray(enc[n], dtype=np.int64) for n in source.family.inputs}

    alone = [encode([i]) for i in range(len(texts))]
    batches = [encode(list(range(s, min(s + TailScorer.BATCH, len(texts))))) for s in range(0, len(texts), TailScorer.BATCH)]
    outputs = [o.as_dict() for o in source.task.outputs]
    ref_runner = backends.runner_class("onnxruntime")(plain_onnx, None, None)

    def vectors(feeds, pooled=False):
        return [v for f in feeds for v in text_vectors(source.task.name, outputs, ref_runner.run(f), f["attention_mask"],
                                                       pooled=pooled)]

    sweep = list(sweep)
    labels = [f"<{f['input_ids'].shape[1]} tokens>" for f in sweep]
    return TailScorer(alone, batches, vectors(alone), [*texts, *labels], source.task.name, outputs, sweep,
                      vectors(sweep, pooled=True))


@dataclass(frozen=True)
class Objective:
    """A score the quantized model must reach: `target`, or (1 - max_drop) of the fp32 score when max_drop is set."""

    scorer: Any  # Scorer or TailScorer: called with a runner, returns a float; has .metric and .fp32
    target: float
    max_drop: float | None = None

    @classmethod
    def drop(cls, scorer, max_drop: float) -> "Objective":
        return cls(scorer, (1 - max_drop) * scorer.fp32, max_drop)

    def describe(self) -> str:
        from bertship.runtimes.retrieval import limit_flag

        return f"{self.scorer.metric} ≥ {self.target:.4f} ({limit_flag(self.scorer.metric, self.max_drop)})"


@dataclass(frozen=True)
class RankScorer:
    """A reranker's top-1 agreement with the fp32 graph over query groups (runtimes.retrieval.ranking): each feed is
    one query with its candidate documents. What --min-rank-agreement is judged on, and int8-mixed's target for it."""

    feeds: list[dict[str, np.ndarray]]
    reference: list[np.ndarray]
    metric: str = "rank_agreement"
    fp32: float = 1.0

    def __call__(self, runner) -> float:
        from bertship.runtimes.retrieval import ranking

        got = [_first(runner.run(f))[:, 0] for f in self.feeds]
        agreement = ranking(list(zip(self.reference, got)))["top1_agreement"]
        return 1.0 if agreement is None else agreement

    def signal(self) -> "RankSignal":
        """What groups are ranked on for this objective: top-1 agreement moves in steps of one query, and freeing one
        group rarely moves a query across, so most groups would measure 0 and the order would be arbitrary."""
        return RankSignal(self.feeds, self.reference)


@dataclass(frozen=True)
class RankSignal:
    """Per query group, 1 - the RMS error of the artifact's scores over the group's reference score range: a
    continuous measure of how far the scores moved, to rank groups for a RankScorer (never a target itself)."""

    feeds: list[dict[str, np.ndarray]]
    reference: list[np.ndarray]
    metric: str = "rank_score_error"
    fp32: float = 1.0

    def per_text(self, runner) -> np.ndarray:
        out = []
        for f, ref in zip(self.feeds, self.reference):
            got = _first(runner.run(f))[:, 0].astype(np.float64)
            spread = max(float(ref.max() - ref.min()), 1e-12)
            out.append(1.0 - float(np.sqrt(np.mean((got - ref) ** 2))) / spread)
        return np.array(out)

    def __call__(self, runner) -> float:
        return float(self.per_text(runner).min())


def make_rank_scorer(plain_onnx: Path, source, feeds: list[dict[str, np.ndarray]], texts: list[str] | None = None,
                     pairs: list[str] | None = None) -> RankScorer:
    """RankScorer on the golden query groups (`feeds`, one query each) plus, from (query, document) pairs such as a
    .jsonl calibration file, one group per query with several documents; the reference from the fp32 graph on ONNX
    Runtime."""
    groups = list(feeds)
    if texts and pairs:
        by_query: dict[str, list[str]] = {}
        for query, document in zip(texts, pairs):
            by_query.setdefault(query, []).append(document)
        for query, documents in by_query.items():
            if len(documents) > 1:
                enc = source.tokenizer([query] * len(documents), documents, padding="longest", truncation=True,
                                       max_length=source.max_length, return_token_type_ids=True, return_tensors="np")
                groups.append({n: np.asarray(enc[n], dtype=np.int64) for n in source.family.inputs})
    ref_runner = backends.runner_class("onnxruntime")(plain_onnx, None, None)
    return RankScorer(groups, [_first(ref_runner.run(f))[:, 0] for f in groups])


def _first(outs: dict[str, np.ndarray], names: tuple[str, ...] | None = None) -> np.ndarray:
    """The outputs (all, or those named) as one [batch, values] array."""
    return np.concatenate([v.reshape(len(v), -1) for k, v in outs.items() if names is None or k in names], axis=-1)


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
    # an early-exit graph is judged on its final logits (what every layer computes); the export gate judges the exits
    names = ("logits",) if getattr(source, "exits", None) is not None else None
    classifier = names is not None or [list(o.axes) for o in source.task.outputs] == [["batch", "labels"]]
    return _scorer(plain_onnx, feeds, label_batches if labels is not None else None, classifier, names)


def _scorer(plain_onnx: Path, feeds, labels, classifier: bool, names: tuple[str, ...] | None = None) -> Scorer:
    ref_runner = backends.runner_class("onnxruntime")(plain_onnx, None, None)
    reference = [_first(ref_runner.run(f), names) for f in feeds]
    metric = "accuracy" if labels is not None else "agreement" if classifier else "cosine"
    scorer = Scorer(feeds, labels, reference, metric, 1.0, names)
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


SEARCHING = ("int8-dynamic", "int8-static", "int8-mixed")


def search(
    backend: str, ctx: quantize.BuildContext, objectives: list[Objective],
    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True),
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Build the backend under the recipe with as few float groups as every objective allows.

    Returns (the backend's manifest entry, the fallback record). Raises FidelityError when even every group in
    float misses an objective.
    """
    if backend == "onnxruntime" and ctx.ort_graph != "plain":
        raise UsageError("--max-accuracy-drop works on the plain graph — drop --ort-graph fused")
    if ctx.recipe.name not in SEARCHING:
        raise UsageError(f"--max-accuracy-drop applies to {', '.join(SEARCHING)}, not {ctx.recipe.name!r}")
    runner_cls = backends.runner_class(backend)
    scratch = ctx.staging / "_work" / "fallback"
    ctx = replace(ctx, work=ctx.work or ctx.staging / "_work")
    evaluations = 0
    stopped: set[int] = set()  # the trials that stopped at their cheaper stand-ins (see trial's `first`)

    def trial(c: quantize.BuildContext, excluded: list[str], details: dict | None = None,
              judged: list[Objective] | None = None, first: list[Objective] | None = None) -> list[float]:
        """Each objective's score with `excluded` kept in float; `details` gets the per-text cosines of a tail;
        `judged`: other objectives to score instead (the cheaper ranking ones). `first`: cheaper stand-ins scored
        before the objectives (a tail's worst texts so far, alone): when one already misses its objective's target,
        the trial stops there and returns that score (a subset's minimum is at least the whole set's, so the trial
        fails either way); `stopped` records it."""
        nonlocal evaluations
        evaluations += 1
        shutil.rmtree(scratch, ignore_errors=True)
        entry = quantize.build(backend, replace(c, staging=scratch, exclude=tuple(excluded)))
        runner = runner_cls(scratch / entry["model"], None, entry.get("options"))
        if EARLY_STOP and first is not None:
            for i, (cheap, o) in enumerate(zip(first, objectives)):
                if cheap is not o:
                    score = cheap.scorer(runner)
                    if score < o.target:
                        stopped.add(evaluations)
                        return [score if j == i else float("nan") for j in range(len(objectives))]
        scores = []
        for i, o in enumerate(judged or objectives):
            if hasattr(o.scorer, "per_text"):
                values = o.scorer.per_text(runner)
                scores.append(float(values.min()))
                if details is not None:
                    details[i] = values
            else:
                scores.append(o.scorer(runner))
        return scores

    def margin(scores: list[float]) -> float:  # NaN: not measured (a trial that stopped early)
        return min(s - o.target for s, o in zip(scores, objectives) if not np.isnan(s))

    def named(scores: list[float]) -> dict[str, float]:
        return {o.scorer.metric: s for o, s in zip(objectives, scores)}

    record: dict[str, Any] = {"objectives": [{"metric": o.scorer.metric, "fp32": o.scorer.fp32, "target": o.target,
                                              "max_drop": o.max_drop} for o in objectives]}
    candidates = quantize.routes(backend, ctx.recipe, ctx.fixed_params)
    tried = []
    for recipe in candidates:
        per_text: dict[int, np.ndarray] = {}
        scores = trial(replace(ctx, recipe=recipe), [], per_text)
        tried.append((margin(scores), scores, recipe, per_text))
    _, full, recipe, full_texts = max(tried, key=lambda t: t[0])
    ctx = replace(ctx, recipe=recipe)
    if len(candidates) > 1:
        record["routes"] = [{"params": _route(backend, r), "all_quantized": named(sc)} for _, sc, r, _ in tried]
        record["route"] = _route(backend, recipe)
        log("[bertship] fallback routes: " + "; ".join(f"{_route(backend, r)} → {', '.join(f'{k} {v:.4f}' for k, v in named(sc).items())}"
                                                       for _, sc, r, _ in tried) + f"; kept {_route(backend, recipe)}")
    # int8-mixed: a group is an activation quantizer of the route's all-int8 model, kept float by editing that model
    table = ({name: [name] for name in quantize.mixed_groups(backend, ctx)} if ctx.recipe.name == "int8-mixed"
             else groups(ctx.plain_onnx, backend))
    primary = objectives[0]
    log(f"[bertship] fallback {primary.scorer.metric}: fp32 {primary.scorer.fp32:.4f}, all quantized "
        f"{', '.join(f'{k} {v:.4f}' for k, v in named(full).items())}; objective "
        f"{' and '.join(o.describe() for o in objectives)}; {len(table)} groups")
    record.update(metric=primary.scorer.metric, max_drop=primary.max_drop, fp32=primary.scorer.fp32,
                  target=primary.target, all_quantized=full[0], all_quantized_scores=named(full), kept_float=[],
                  sensitivity={})
    kept: list[str] = []
    scores = full
    if margin(full) < 0:
        ranking, stand_ins, rank = _ranking(objectives, full_texts)
        base = None
        start, every = time.perf_counter(), max(1, len(table) // 6)
        for done, name in enumerate(table, 1):
            if base is None:  # the all-quantized model under the (cheaper) ranking objectives
                per_text = {}
                base = rank(trial(ctx, [], per_text, ranking), per_text)
            per_text = {}
            record["sensitivity"][name] = rank(trial(ctx, table[name], per_text, ranking), per_text) - base
            if done % every == 0 and done < len(table):
                spent = time.perf_counter() - start
                log(f"[bertship] fallback sensitivity: {done}/{len(table)} groups in {spent:.0f} s, about "
                    f"{spent / done * (len(table) - done):.0f} s left, then about {math.ceil(math.log2(len(table))) + 1}"
                    " builds to find how many stay float")
        ranked = sorted(table, key=lambda n: record["sensitivity"][n], reverse=True)
        log("[bertship] fallback most sensitive: " + ", ".join(f"{n} (+{record['sensitivity'][n]:.4f})"
                                                             for n in ranked[:4]))
        # The fewest most-sensitive groups in float that meet every objective, found by bisection on their count
        # (the score grows with it): about log2(groups) builds instead of one per group.
        tried: dict[int, list[float]] = {}
        early: dict[int, bool] = {}

        def holds(k: int) -> bool:
            tried[k] = trial(ctx, [i for n in ranked[:k] for i in table[n]], first=stand_ins)
            early[k] = evaluations in stopped
            log(f"[bertship] fallback {k} group(s) in float: " + ", ".join(
                f"{m} {v:.4f}" for m, v in named(tried[k]).items() if not np.isnan(v))
                + (" (stopped at the worst texts so far: the target cannot hold)" if early[k] else ""))
            return margin(tried[k]) >= 0

        if not holds(len(ranked)):
            raise FidelityError(
                [f"{backend}: {o.scorer.metric} {s:.4f} with every group in float < limit {o.target:.4f}"
                 for o, s in zip(objectives, tried[len(ranked)]) if s < o.target],
                "nothing was written; the limit cannot be met by this recipe — relax the target or use another "
                "recipe (bf16 or int8-weight-only keep the most accuracy)")
        low, high = 0, len(ranked)
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (low, mid) if holds(mid) else (mid, high)
        kept, scores = ranked[:high], tried[high]
        record["kept_float"] = [{"group": n, "gain_alone": record["sensitivity"][n]} for n in kept]
        record["bisection"] = [{"float_groups": k, "scores": {m: x for m, x in named(v).items() if not np.isnan(x)},
                                "stopped_early": early[k]} for k, v in sorted(tried.items())]
    # the winning configuration is rebuilt into the real staging directory
    entry = quantize.build(backend, replace(ctx, exclude=tuple(i for n in kept for i in table[n])))
    shutil.rmtree(scratch, ignore_errors=True)
    record.update(final=scores[0], final_scores=named(scores), evaluations=evaluations + 1, groups=len(table))
    entry["build"]["kept_float"] = kept
    if len(candidates) > 1:
        entry["build"]["route"] = _route(backend, recipe)
    log(f"[bertship] fallback kept {len(kept)} of {len(table)} group(s) in float: {', '.join(kept) or 'none'}; "
        f"{', '.join(f'{k} {v:.4f}' for k, v in named(scores).items())}")
    if len(kept) == len(table):
        record["int8_in_name_only"] = True
        log(f"[bertship] fallback every group stayed in float: this {backend} model computes no MatMul in int8 and "
            "runs at about the float recipe's speed — export fp32 (or bf16) instead, or give calibration text "
            "closer to your data")
    return entry, record


TAIL_SHARE = 0.05  # a tail objective's groups are ranked on the mean error of this share of its worst texts
# The bisection's trials first score a tail objective on those worst texts alone, and stop when that already misses the
# target (the whole set's minimum can only be lower): about half its trials fail, most of them there.
EARLY_STOP = True


def _ranking(objectives: list[Objective], full_texts: dict[int, np.ndarray]):
    """(the objectives groups are ranked on, the cheaper stand-ins a trial may stop at, how much a trial is worth under
    the ranking ones). A tail objective is ranked on its
    TAIL_SHARE worst texts and sweep lengths under full quantization, run alone (a subset scorer: ranking runs once per
    group), by their mean 1 - cosine; the minimum alone ranks badly, since the worst text is damaged by several groups
    at once, so freeing any one of them barely moves it, while errors from different groups add up over the tail;
    the subset is also its stand-in (its minimum is at least the whole set's). A rank objective is ranked on its
    continuous signal (RankSignal: mean score error over the queries), with no stand-in. Other objectives count their
    score."""
    ranking, stand_ins = [], []
    for i, o in enumerate(objectives):
        if i in full_texts and hasattr(o.scorer, "subset"):
            worst = np.argsort(full_texts[i])[: max(5, int(TAIL_SHARE * len(full_texts[i])))]
            ranking.append(replace(o, scorer=o.scorer.subset([int(k) for k in worst])))
            stand_ins.append(ranking[-1])
        elif hasattr(o.scorer, "signal"):
            ranking.append(replace(o, scorer=o.scorer.signal()))
            stand_ins.append(o)
        else:
            ranking.append(o)
            stand_ins.append(o)

    def value(scores: list[float], per_text: dict[int, np.ndarray]) -> float:
        return sum(-float((1 - per_text[i]).mean()) if i in per_text else s for i, s in enumerate(scores))

    return ranking, stand_ins, value


def _route(backend: str, recipe) -> dict[str, Any]:
    """The route parameters of a recipe on this backend (those quantize.ROUTES varies)."""
    keys = {k for r in quantize.ROUTES[backend] for k in r}
    return {k: v for k, v in recipe.params.items() if k in keys}
