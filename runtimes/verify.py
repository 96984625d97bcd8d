"""Re-check an artifact on this machine without torch: checksums, tokenizer, and every backend on the golden inputs.

The export gate runs the same functions on the staged artifact before it is published.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import artifact
from .errors import FidelityError
from .fidelity import Tolerance, compare, cosines, tail, text_vectors
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
    runner: Runner, manifest: dict[str, Any], feeds: Feeds, refs: Feeds, texts: list[str]
) -> tuple[dict[str, Any], list[str]]:
    """Run one backend on the golden feeds and compare every output, then each text's vector alone and among other
    batch-mates (see `usage_checks`); (report, failures prefixed by backend)."""
    tolerance = Tolerance(**manifest["fidelity"]["tolerance"])
    gots = [runner.run(f) for f in feeds]
    masks = [f["attention_mask"] for f in feeds]
    checks = [
        compare(o["name"], o["axes"], o.get("argmax"), [r[o["name"]] for r in refs], [g[o["name"]] for g in gots],
                masks, tolerance)
        for o in manifest["signature"]["outputs"]
    ]
    usage, failures = usage_checks(runner, manifest, feeds, refs, gots, texts, tolerance)
    report = {"precision": runner.precision, "outputs": [c.as_dict() for c in checks], **usage}
    failures = [msg for c in checks for msg in c.failures] + failures
    return report, [f"{runner.backend}: {msg}" for msg in failures]


OTHER_BATCH = 5  # the golden batches hold 8: a second arrangement gives every text other batch-mates and padding


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
    tolerance: Tolerance,
) -> tuple[dict[str, Any], list[str]]:
    """Each golden text's vector (fidelity.text_vectors) in the golden batch, alone, and among other batch-mates.

    tail: the lowest per-text cosines against the reference over the three arrangements; batch_invariance: the lowest
    cosine between a text alone and the same text batched. Failures against min_text_cosine and min_batch_cosine."""
    task, outputs = manifest["task"]["name"], manifest["signature"]["outputs"]

    def vectors(feed_list: Feeds, out_list: Feeds) -> list[np.ndarray]:
        return [v for f, o in zip(feed_list, out_list) for v in text_vectors(task, outputs, o, f["attention_mask"])]

    alone, others = arrangements(feeds, int(manifest["tokenizer"]["pad_id"]))
    ref = vectors(feeds, refs)
    batched = vectors(feeds, gots)
    single = vectors(alone, [runner.run(f) for f in alone])
    other = vectors(others, [runner.run(f) for f in others])[::-1]
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
    if tolerance.min_batch_cosine is not None and invariance.min() < tolerance.min_batch_cosine:
        i = int(invariance.argmin())
        failures.append(f"a text alone vs in a batch: cosine {invariance[i]:.6f} < {tolerance.min_batch_cosine} "
                        f"(text {texts[i]!r}): outputs depend on batch-mates and padding")
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
    report: dict[str, Any] = {}
    failures: list[str] = []
    for i, name in enumerate(backends or list(manifest["backends"])):
        model = load(root, backend=name, threads=threads)
        if i == 0:
            failures += tokenizer_failures(model.tokenizer, texts, pairs, feeds)
        report[name], failed = backend_checks(model.runner, manifest, feeds, refs, texts)
        failures += failed
    if failures:
        raise FidelityError(failures)
    return report
