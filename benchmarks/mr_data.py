"""The Rotten-Tomatoes sentences (Pang & Lee's MR set, via the vaderSentiment 3.3.2 sdist on PyPI), split once.

The sdist is fetched with pip into a git-ignored cache the first time (a package registry download, never a model
hub); the split is seeded, so every benchmark run sees the same train/dev/test sentences.
"""

from __future__ import annotations

import io
import random
import subprocess
import sys
import tarfile
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"
SDIST = "vaderSentiment==3.3.2"
MEMBER = "movieReviewSnippets_GroundTruth.txt"


def _sdist(cache: Path) -> Path:
    found = sorted(cache.glob("vaderSentiment-3.3.2*.tar.gz"))
    if not found:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", SDIST,
                        "-d", str(cache)], check=True, capture_output=True)
        found = sorted(cache.glob("vaderSentiment-3.3.2*.tar.gz"))
    return found[0]


def sentences(cache: Path = CACHE) -> list[tuple[str, int]]:
    """(text, label) pairs: label 1 when the crowd valence is positive, 0 when negative; neutral (0) dropped."""
    with tarfile.open(_sdist(cache)) as outer:
        inner_member = next(m for m in outer.getmembers() if m.name.endswith("hutto_ICWSM_2014.tar.gz"))
        inner_bytes = outer.extractfile(inner_member).read()
    with tarfile.open(fileobj=io.BytesIO(inner_bytes)) as inner:
        member = next(m for m in inner.getmembers() if m.name.endswith(MEMBER))
        text = inner.extractfile(member).read().decode("latin-1")
    pairs = []
    for line in text.splitlines():
        cols = line.split("\t")
        if len(cols) < 3:
            continue
        valence = float(cols[1])
        if valence != 0:
            pairs.append((cols[2].strip(), int(valence > 0)))
    return pairs


def split(seed: int = 0) -> dict[str, list[tuple[str, int]]]:
    """80 % train, 10 % dev (for fallback and auto), 10 % test (reported), shuffled with a fixed seed."""
    data = sentences()
    random.Random(seed).shuffle(data)
    n = len(data)
    a, b = int(0.8 * n), int(0.9 * n)
    return {"train": data[:a], "dev": data[a:b], "test": data[b:]}


def write_tsv(rows: list[tuple[str, int]], path: Path, names: tuple[str, str] = ("negative", "positive")) -> Path:
    """rows as `text<TAB>label-name` lines, the format `bertship eval` reads."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{t.replace(chr(9), ' ')}\t{names[y]}\n" for t, y in rows), encoding="utf-8")
    return path
