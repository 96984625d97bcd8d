"""Re-check an artifact on this machine without torch: checksums, tokenizer, and every backend on the golden inputs.

The export gate runs the same functions on the staged artifact before it is published.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from . import artifact
from .errors import FidelityError
from .fidelity import Tolerance, compare
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
    runner: Runner, manifest: dict[str, Any], feeds: Feeds, refs: Feeds
) -> tuple[dict[str, Any], list[str]]:
    """Run one backend on the golden feeds and compare every output; (report, failures prefixed by backend)."""
    tolerance = Tolerance(**manifest["fidelity"]["tolerance"])
    gots = [runner.run(f) for f in feeds]
    masks = [f["attention_mask"] for f in feeds]
    checks = [
        compare(o["name"], o["axes"], o.get("argmax"), [r[o["name"]] for r in refs], [g[o["name"]] for g in gots],
                masks, tolerance)
        for o in manifest["signature"]["outputs"]
    ]
    report = {"precision": runner.precision, "outputs": [c.as_dict() for c in checks]}
    return report, [f"{runner.backend}: {msg}" for c in checks for msg in c.failures]


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
        report[name], failed = backend_checks(model.runner, manifest, feeds, refs)
        failures += failed
    if failures:
        raise FidelityError(failures)
    return report
