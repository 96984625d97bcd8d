"""Re-check an artifact on this machine without torch: checksums, tokenizer, and every backend on the golden inputs.

The export gate runs the same functions on the staged artifact before it is published.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from . import artifact, cpuclass
from .errors import FidelityError
from .fidelity import Tolerance, compare, cosines, tail, text_vectors
from .retrieval import RETRIEVAL_TASKS, retrieval_checks
from .runner import Runner
from .tokenizer import TextEncoder

Feeds = list[dict[str, np.ndarray]]


def read_golden(root: Path, manifest: dict[str, Any]) -> tuple[Feeds, Feeds, list[str], list[str] | None]:
    """(feeds per batch, reference outputs per batch, texts, pairs) from golden.npz; plain arrays, no pickle."""
    with np.load(root / artifact.GOLDEN, allow_pickle=False) as data:
        n = int(manifest["golden"]["batches"])
        inputs = [i["name"] for i in manifest["signature"]["inputs"]]
        outputs = [o["name"] for o in manifest["signature"]["outputs"]]
        feeds = [{k: data[f"b{b}.{k}"] for k in inputs} for b in range(n)]
        refs = [{k: data[f"b{b}.ref.{k}"] for k in outputs} for b in range(n)]
        texts = [str(t) for t in data["texts"]]
        pairs = [str(t) for t in data["pairs"]] if "pairs" in data.files else None
    return feeds, refs, texts, pairs


def tokenizer_failures(encoder: TextEncoder, texts: list[str], pairs: list[str] | None, feeds: Feeds) -> list[str]:
    """Golden batches the encoder does not reproduce id for id (batches hold len(feeds[0]) texts each)."""
    encodings = encoder.tokenize(texts, pairs)
    size = len(feeds[0]["input_ids"])
    failures = []
    for b, feed in enumerate(feeds):
        again = encoder.pad(encodings[b * size : (b + 1) * size])
        bad = [name for name, expected in feed.items() if not np.array_equal(again[name], expected)]
        if bad:
            failures.append(f"tokenizer: tokenizer.json gives other {', '.join(bad)} than the reference in batch {b}")
    return failures


def backend_checks(
    runner: Runner, manifest: dict[str, Any], feeds: Feeds, refs: Feeds, texts: list[str],
    sweep: Sweep | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Run one backend on the golden feeds and compare every output, then each text's vector alone and among other
    batch-mates, and the length sweep (see `usage_checks`); (report, failures prefixed by backend). The report's
    check_s says how long each part ran."""
    tolerance = Tolerance(**manifest["fidelity"]["tolerance"])
    start = time.perf_counter()
    gots = [runner.run(f) for f in feeds]
    golden_s = time.perf_counter() - start
    masks = [f["attention_mask"] for f in feeds]
    exits = manifest.get("exits")
    # an early-exit artifact's off-ramp logits count only where a text leaves by them: judged through the rule
    judged = [o for o in manifest["signature"]["outputs"] if not (exits and o["name"].startswith("exit"))]
    checks = [
        compare(o["name"], o["axes"], o.get("argmax"), [r[o["name"]] for r in refs], [g[o["name"]] for g in gots],
                masks, tolerance)
        for o in judged
    ]
    usage, failures = usage_checks(runner, manifest, feeds, refs, gots, texts, tolerance, sweep)
    if exits:
        rule = getattr(runner, "rule", None) or exits["rule"]  # the backend's own rule where it was calibrated
        usage["exits"], exit_failures = exit_checks({**exits, "rule": rule}, getattr(runner, "total_layers", None),
                                                    refs, gots, tolerance)
        failures += exit_failures
    usage["check_s"] = {"golden_batches": round(golden_s, 3), **usage["check_s"]}
    report = {"precision": runner.precision, "outputs": [c.as_dict() for c in checks], **usage}
    failures = [msg for c in checks for msg in c.failures] + failures
    return report, [f"{runner.backend}: {msg}" for msg in failures]


def exit_checks(exits: dict[str, Any], total: int | None, refs: Feeds, gots: Feeds,
                tol: Tolerance) -> tuple[dict[str, Any], list[str]]:
    """An early-exit artifact on the golden batches: the rule applied to PyTorch's off-ramp logits and to the
    runtime's, per text; the predictions must agree (as argmax agreement on decisive texts: the logits the text
    leaves by have a top-2 margin above argmax_margin), the exit layers are reported."""
    from .exits import apply_offline

    layers = list(exits["layers"])
    total = total or max(layers) + 1
    got_pred, got_layer, ref_pred, ref_layer, decisive = [], [], [], [], []
    for ref, got in zip(refs, gots):
        for outs, preds, where in ((ref, ref_pred, ref_layer), (got, got_pred, got_layer)):
            ramps = np.stack([np.asarray(outs[f"exit{k}_logits"], dtype=np.float64) for k in layers])
            pred, layer = apply_offline(exits["rule"], ramps, np.asarray(outs["logits"], dtype=np.float64), layers,
                                        total)
            preds.append(pred)
            where.append(layer)
        used = np.stack([np.asarray(ref[f"exit{k}_logits"]) for k in layers] + [np.asarray(ref["logits"])])
        index = np.array([layers.index(x) if x in layers else len(layers) for x in ref_layer[-1]])
        chosen = np.sort(used[index, np.arange(len(index))], axis=-1)
        decisive.append(chosen[:, -1] - chosen[:, -2] > tol.argmax_margin)
    rp, gp, rl, gl, dec = (np.concatenate(x) for x in (ref_pred, got_pred, ref_layer, got_layer, decisive))
    agreement = float((rp == gp)[dec].mean()) if dec.any() else 1.0
    report = {"texts": int(len(rp)), "prediction_agreement": round(agreement, 5),
              "exit_layer_agreement": round(float((rl == gl).mean()), 5),
              "mean_layers": {"reference": round(float(rl.mean()), 4), "runtime": round(float(gl.mean()), 4)}}
    failures = []
    if agreement < tol.min_argmax_agreement:
        failures.append(f"early exit: predictions by the exit rule agree with PyTorch's on {agreement:.4f} of the "
                        f"decisive golden texts < {tol.min_argmax_agreement}")
    return report, failures


# tasks whose outputs are vectors compared by cosine at every sweep length (a classifier's logits are judged by argmax)
VECTOR_TASKS = ("feature-extraction", "sentence-embedding", "sparse-embedding", "multi-vector")
OTHER_BATCH = 5  # the golden batches hold 8: a second arrangement gives every text other batch-mates and padding


# The length sweep: one [1, L] input per chosen length, each checked against PyTorch. Runtimes pick kernels by shape,
# and one can be wrong at one shape only: OpenVINO 2026.4 ran an int8 model with a bf16 hint wrong at exactly 32 tokens
# in a batch of one (cosine 0.85; 0.998 at 31 and 33), which no golden text hit. Which lengths are worth a forward pass
# follows from how CPU kernels tile the sequence: GEMMs and attention cut it into tiles of 4 to 64 rows and handle the
# rest (L mod tile) on a separate path, and switch algorithms at size thresholds. So every length up to 64 is checked
# (every tail with no full tile before it: short texts, queries), and the maximum length (the longest path). Beyond
# them the candidates come by kind, most telling first: each power of two from 64 with its neighbours (thresholds and
# tile edges), the tails after one full 64-row tile that sit on 8-row tile edges (L mod 8 in 7, 0, 1), the multiples of
# 64 with their neighbours, the other lengths to 128, and every 8th length to 512. They are taken in that order while
# their cost stays within SWEEP_BUDGET token-equivalents (a forward pass of L tokens costs L * (1 + L / (6 * hidden))
# token-equivalents: the attention's share grows with L): a budget in units of the model's own per-token cost, so the
# sweep's time scales with the model's size and not with its max length. docs/recipes.md has the measurements.
SWEEP_SHORT = 64
SWEEP_BUDGET = 6144


@dataclass(frozen=True)
class Sweep:
    """The length sweep of an artifact: the lengths checked and PyTorch's vector at each (fidelity.text_vectors,
    pooled), row for row."""

    lengths: list[int]
    refs: np.ndarray


def sweep_cost(length: int, hidden: int) -> float:
    """Token-equivalents of one forward pass of `length` tokens (dense layers per token, plus attention's L^2)."""
    return length * (1.0 + length / (6.0 * hidden))


def sweep_lengths(max_length: int, hidden: int = 768, budget: float = SWEEP_BUDGET) -> list[int]:
    """The lengths the sweep checks for a model of this max length and hidden size (see SWEEP_BUDGET)."""
    if max_length < 3:
        return []
    always = set(range(3, min(max_length, SWEEP_SHORT) + 1)) | {max_length}
    powers = [2 ** k for k in range(6, 16) if 2 ** k <= max_length + 1]
    second_tile = range(SWEEP_SHORT + 1, 2 * SWEEP_SHORT + 1)
    kinds = [
        [n for p in powers for n in (p - 1, p, p + 1)] + [max_length - 1],
        [n for n in second_tile if n % 8 in (7, 0, 1)],
        [n for m in range(3 * SWEEP_SHORT, max_length, SWEEP_SHORT) for n in (m - 1, m, m + 1)],
        list(second_tile),
        list(range(2 * SWEEP_SHORT + 8, 513, 8)),
    ]
    chosen, spent = set(always), 0.0
    for kind in kinds:
        for n in kind:
            if 3 <= n <= max_length and n not in chosen and spent + sweep_cost(n, hidden) <= budget:
                chosen.add(n)
                spent += sweep_cost(n, hidden)
    return sorted(chosen)


def legacy_sweep_lengths(max_length: int) -> list[int]:
    """The lengths of artifacts whose golden.npz does not list them (made before the budgeted sweep): every length to
    130, every 8th to 512, then doubling, and the max length."""
    dense = range(3, min(max_length, 130) + 1)
    sparse = range(138, min(max_length, 512) + 1, 8)
    doubling = [512 * 2 ** i for i in range(1, 16) if 512 * 2 ** i <= max_length]
    ends = {max_length, min(max_length, 512)} if max_length >= 3 else set()
    return sorted(set(dense) | set(sparse) | set(doubling) | ends)


def sweep_feeds(feeds: Feeds, lengths: list[int]) -> Feeds:
    """One [1, L] input per length, made of the golden texts' own tokens: the first golden text's first and last
    tokens (the special tokens) around the other tokens of every golden text, repeated as needed."""
    alone, _ = arrangements(feeds, 0)
    first = alone[0]
    names = list(first)
    inner = np.concatenate([a["input_ids"][0, 1:-1] for a in alone if a["input_ids"].shape[1] > 2])
    inner = np.tile(inner, max(lengths, default=0) // max(len(inner), 1) + 1)
    out = []
    for length in lengths:
        ids = np.concatenate([first["input_ids"][0, :1], inner[: length - 2], first["input_ids"][0, -1:]])[None, :]
        feed = {n: np.zeros_like(ids) for n in names}
        feed["input_ids"] = ids.astype(np.int64)
        feed["attention_mask"] = np.ones_like(ids)
        out.append(feed)
    return out


def read_sweep(root: Path, manifest: dict[str, Any] | None = None) -> Sweep | None:
    """The length sweep from golden.npz (None for artifacts made before it existed)."""
    with np.load(root / artifact.GOLDEN, allow_pickle=False) as data:
        if "sweep.ref" not in data.files:
            return None
        refs = data["sweep.ref"]
        if "sweep.lengths" in data.files:
            return Sweep([int(n) for n in data["sweep.lengths"]], refs)
    manifest = manifest if manifest is not None else artifact.read_manifest(root)
    return Sweep(legacy_sweep_lengths(int(manifest["tokenizer"]["max_length"])), refs)


def arrangements(feeds: Feeds, pad_id: int) -> tuple[Feeds, Feeds]:
    """(each text alone, unpadded; the same texts in reverse order in batches of OTHER_BATCH, padded to each batch's
    longest) from the golden batches. Text order is kept in the first; the second holds the texts reversed."""
    alone = []
    for feed in feeds:
        mask = feed["attention_mask"].astype(bool)
        for i in range(mask.shape[0]):
            alone.append({k: v[i][mask[i]][None, :] for k, v in feed.items()})
    others = []
    order = alone[::-1]
    for start in range(0, len(order), OTHER_BATCH):
        group = order[start : start + OTHER_BATCH]
        longest = max(g["attention_mask"].shape[1] for g in group)
        others.append({k: np.concatenate([np.pad(g[k], ((0, 0), (0, longest - g[k].shape[1])),
                                                 constant_values=pad_id if k == "input_ids" else 0) for g in group])
                       for k in group[0]})
    return alone, others


def usage_checks(
    runner: Runner, manifest: dict[str, Any], feeds: Feeds, refs: Feeds, gots: Feeds, texts: list[str],
    tolerance: Tolerance, sweep: Sweep | None = None,
) -> tuple[dict[str, Any], list[str]]:
    """Each golden text's vector (fidelity.text_vectors) in the golden batch, alone, and among other batch-mates; and
    with `sweep`, one input of every sweep length.

    tail: the lowest per-text cosines against the reference over the three arrangements; batch_invariance: the lowest
    cosine between a text alone and the same text batched; length_sweep: the lowest cosine over the lengths. Failures
    against min_text_cosine and min_batch_cosine, and, for embedding tasks, a sweep length below min_text_cosine (or
    the recipe's per-sample floor)."""
    task, outputs = manifest["task"]["name"], manifest["signature"]["outputs"]

    def vectors(feed_list: Feeds, out_list: Feeds) -> list[np.ndarray]:
        return [v for f, o in zip(feed_list, out_list) for v in text_vectors(task, outputs, o, f["attention_mask"])]

    alone, others = arrangements(feeds, int(manifest["tokenizer"]["pad_id"]))
    ref = vectors(feeds, refs)
    batched = vectors(feeds, gots)
    clock = time.perf_counter()
    single = vectors(alone, [runner.run(f) for f in alone])
    alone_s, clock = time.perf_counter() - clock, time.perf_counter()
    other = vectors(others, [runner.run(f) for f in others])[::-1]
    timings = {"alone": round(alone_s, 3), "other_batch_mates": round(time.perf_counter() - clock, 3)}
    per_text = np.minimum.reduce([cosines(batched, ref), cosines(single, ref), cosines(other, ref)])
    invariance = np.minimum(cosines(single, batched), cosines(single, other))
    worst_diff = max(float(np.abs(a - b).max(initial=0.0)) for a, b in zip(single + single, batched + other))
    report = {"tail": tail(per_text, texts),
              "batch_invariance": {**{k: v for k, v in tail(invariance, texts, worst=3).items() if k != "cosine_mean"},
                                   "max_abs_diff": worst_diff}}
    failures = []
    if tolerance.min_text_cosine is not None and per_text.min() < tolerance.min_text_cosine:
        i = int(per_text.argmin())
        failures.append(f"lowest per-text cosine {per_text[i]:.6f} < --min-cosine {tolerance.min_text_cosine} "
                        f"(text {texts[i]!r})")
    if task in RETRIEVAL_TASKS:
        extra, failed = retrieval_checks(task, texts, ref, [batched, single, other], tolerance.min_rank_agreement)
        report.update(extra)
        failures += failed
    if tolerance.min_batch_cosine is not None and invariance.min() < tolerance.min_batch_cosine:
        i = int(invariance.argmin())
        failures.append(f"a text alone vs in a batch: cosine {invariance[i]:.6f} < {tolerance.min_batch_cosine} "
                        f"(text {texts[i]!r}): outputs depend on batch-mates and padding")
    if sweep is not None:
        clock = time.perf_counter()
        inputs = sweep_feeds(feeds, sweep.lengths)
        got = [text_vectors(task, outputs, runner.run(f), f["attention_mask"], pooled=True)[0] for f in inputs]
        timings["length_sweep"] = round(time.perf_counter() - clock, 3)
        cos = cosines(got, list(sweep.refs))
        worst = int(cos.argmin())
        length = sweep.lengths[worst]
        report["length_sweep"] = {"lengths": len(sweep.lengths), "longest": max(sweep.lengths),
                                  "cosine_min": float(cos.min()), "worst_length": length}
        limit = tolerance.min_text_cosine if tolerance.min_text_cosine is not None else tolerance.min_cosine
        if task in VECTOR_TASKS and cos.min() < limit:
            near = [float(cos[j]) for j in (worst - 1, worst + 1) if 0 <= j < len(cos)]
            isolated = bool(near) and min(near) >= limit
            failures.append(f"length sweep: cosine {cos.min():.6f} < {limit} at {length} tokens in a batch of one"
                            + (" while the lengths beside it pass (the runtime computes that shape wrongly)"
                               if isolated else ""))
    report["check_s"] = timings
    return report, failures


def verify(path: str | Path, backends: list[str] | None = None, threads: int | None = None) -> dict[str, Any]:
    """Verify all checksums, the tokenizer, and each backend's outputs against the golden references.

    Returns {backend: {precision, outputs: [...]}}; raises ArtifactError (integrity) or FidelityError (every failure).
    """
    from .model import load

    root = Path(path)
    manifest = artifact.read_manifest(root)
    artifact.check_files(root, manifest)
    feeds, refs, texts, pairs = read_golden(root, manifest)
    sweep = read_sweep(root, manifest)
    report: dict[str, Any] = {}
    failures: list[str] = []
    for i, name in enumerate(backends or list(manifest["backends"])):
        model = load(root, backend=name, threads=threads, recheck=False)  # the full checks below include load()'s
        if i == 0:
            failures += tokenizer_failures(model.tokenizer, texts, pairs, feeds)
        report[name], failed = backend_checks(model.runner, manifest, feeds, refs, texts, sweep)
        report[name]["cpu_class"] = cpuclass.runtime_class(name)
        failures += failed
    if failures:
        raise FidelityError(failures)
    return report
