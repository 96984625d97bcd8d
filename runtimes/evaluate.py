"""Task quality of an artifact on the user's data, torch-free: accuracy for classification, cosine for embeddings.

Data files:
- classification: TSV `text<TAB>label` or `text<TAB>text_pair<TAB>label`, or JSONL {"text", "text_pair"?, "label"};
  a label is a name from the artifact's id2label or its integer index.
- embeddings / other outputs: one text per line (.txt) or JSONL {"text"}; compared with a reference artifact.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError

CLASSIFICATION = ("sequence-classification",)


@dataclass(frozen=True)
class EvalData:
    """Texts, optional second texts, and label indices (None for unlabelled data)."""

    texts: list[str]
    pairs: list[str] | None
    labels: list[int] | None
    origin: str


def read_eval_data(path: str | Path, task: str, id2label: dict[str, str] | None) -> EvalData:
    """Read an eval file for an artifact's task; unknown labels and wrong columns are UsageErrors naming the line."""
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"eval data {str(path)!r} does not exist — pass a .tsv or .jsonl file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read eval data {str(path)!r} ({exc}) — pass a UTF-8 .tsv, .txt or .jsonl") from None
    labelled = task in CLASSIFICATION
    rows = jsonl_rows(path, raw) if path.suffix == ".jsonl" else _tsv_rows(path, raw, labelled)
    if not rows:
        raise UsageError(f"eval data {str(path)!r} has no rows — add at least one")
    texts = [r[0] for r in rows]
    pairs = [r[1] for r in rows] if any(r[1] is not None for r in rows) else None
    if pairs is not None and any(p is None for p in pairs):
        raise UsageError(f"{path}: some rows have a second text and some do not — give it on every row or none")
    labels = None
    if labelled:
        names = {str(v): int(k) for k, v in (id2label or {}).items()}
        count = len(id2label or {})
        labels = []
        for number, (_, _, label) in enumerate(rows, 1):
            if label is None:
                raise UsageError(f"{path}:{number} has no label — classification eval needs `text<TAB>label` rows")
            if label in names:
                labels.append(names[label])
            elif label.lstrip("-").isdigit() and 0 <= int(label) < count:
                labels.append(int(label))
            else:
                raise UsageError(f"{path}:{number}: unknown label {label!r} — this model's labels are "
                                 f"{', '.join(names) or 'none'} (or their indices 0..{count - 1})")
    return EvalData(texts, pairs, labels, str(path))


def _tsv_rows(path: Path, raw: str, labelled: bool) -> list[tuple[str, str | None, str | None]]:
    rows = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        cols = line.split("\t")
        if not labelled:
            rows.append((line.strip(), None, None))
        elif len(cols) == 2:
            rows.append((cols[0], None, cols[1].strip()))
        elif len(cols) == 3:
            rows.append((cols[0], cols[1], cols[2].strip()))
        else:
            raise UsageError(f"{path}:{number} has {len(cols)} tab-separated columns — use text<TAB>label or "
                             "text<TAB>text_pair<TAB>label")
    return rows


def jsonl_rows(path: Path, raw: str) -> list[tuple[str, str | None, str | None]]:
    """(text, text_pair, label) of each JSONL line; a line that is not an object with a string "text" is a UsageError."""
    rows = []
    for number, line in enumerate(raw.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UsageError(f"{path}:{number} is not JSON ({exc.msg}) — one object per line") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise UsageError(f"{path}:{number} has no string \"text\" field — one object per line, e.g. {{\"text\": …}}")
        label = row.get("label")
        rows.append((row["text"], row.get("text_pair"), None if label is None else str(label)))
    return rows


def _outputs(model, data: EvalData, batch_size: int) -> np.ndarray:
    out = model.encode(data.texts, pairs=data.pairs, batch_size=batch_size)
    return out if isinstance(out, np.ndarray) else np.concatenate([out[k] for k in model.output_names], axis=-1)


def evaluate(model, data: EvalData, reference=None, batch_size: int = 32) -> dict[str, Any]:
    """Accuracy (labelled classification data) and/or per-text cosine against a reference model's outputs."""
    result: dict[str, Any] = {"data": data.origin, "n": len(data.texts), "backend": model.backend,
                              "precision": model.precision, "recipe": model.manifest["recipe"]["name"]}
    got = _outputs(model, data, batch_size)
    if data.labels is not None:
        pred = got.argmax(axis=-1)
        result["accuracy"] = float((pred == np.asarray(data.labels)).mean())
    if reference is not None:
        ref = _outputs(reference, data, batch_size)
        if ref.shape != got.shape:
            raise UsageError(f"reference outputs have shape {ref.shape}, this artifact's {got.shape} — compare "
                             "artifacts of the same model and task")
        result["reference"] = str(reference.root)
        if model.task in CLASSIFICATION:
            # a few class logits per text have no direction worth a cosine: compare the predictions
            result["argmax_agreement"] = float((got.argmax(-1) == ref.argmax(-1)).mean())
        else:
            a, b = got.reshape(len(got), -1).astype(np.float64), ref.reshape(len(ref), -1).astype(np.float64)
            cos = (a * b).sum(1) / np.maximum(np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1), 1e-30)
            result.update(cosine_mean=float(cos.mean()), cosine_min=float(cos.min()))
    if "accuracy" not in result and reference is None:
        raise UsageError(f"nothing to measure: {model.task} data has no labels — pass --reference ART (e.g. the "
                         "fp32 artifact) to compare outputs")
    return result
