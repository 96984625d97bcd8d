"""Calibration text for static int8: the user's sentences at their real lengths, or the bundled default set."""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import numpy as np

from bertship.runtimes.errors import UsageError
from bertship.runtimes.evaluate import jsonl_rows

MIN_SAMPLES = 16  # fewer sentences give activation ranges that one outlier decides


def read_texts(path: str | Path | None) -> tuple[list[str], list[str] | None, str]:
    """(texts, pairs or None, origin) from a .txt (one text per line) or .jsonl ({"text", "text_pair"?}) file."""
    if path is None:
        data = resources.files("bertship.exporter").joinpath("data/calibration.txt").read_text(encoding="utf-8")
        return [line.strip() for line in data.splitlines() if line.strip()], None, "bundled (64 English sentences)"
    path = Path(path)
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise UsageError(f"calibration file {str(path)!r} does not exist — pass a .txt (one text per line) or .jsonl") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"cannot read calibration file {str(path)!r} ({exc}) — pass a UTF-8 .txt or .jsonl file") from None
    texts: list[str] = []
    pairs: list[str] = []
    if path.suffix == ".jsonl":
        rows = jsonl_rows(path, raw)
        texts = [r[0] for r in rows]
        pairs = [r[1] for r in rows if isinstance(r[1], str)]
        if pairs and len(pairs) != len(texts):
            raise UsageError(f"{path}: some lines have \"text_pair\" and some do not — give it on every line or none")
    else:
        texts = [line.strip() for line in raw.splitlines() if line.strip()]
    if len(texts) < MIN_SAMPLES:
        raise UsageError(
            f"calibration file {str(path)!r} has {len(texts)} texts; static int8 needs at least {MIN_SAMPLES} — add "
            "more sentences like those the model will see"
        )
    return texts, (pairs or None), str(path)


def calibration_feeds(tokenizer, input_names, max_length: int, texts, pairs) -> list[dict[str, np.ndarray]]:
    """One [1, length] feed per text, at its real token length: calibration sees the lengths production sees."""
    feeds = []
    for i, text in enumerate(texts):
        enc = tokenizer(text, pairs[i] if pairs else None, truncation=True, max_length=max_length,
                        return_token_type_ids=True, return_tensors="np")
        feeds.append({name: np.asarray(enc[name], dtype=np.int64) for name in input_names})
    return feeds
