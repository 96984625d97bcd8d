"""A compressed download container for an artifact: what unstructured sparsity can deliver on CPUs without sparse
kernels. Torch-free (stdlib zipfile).

No runtime bertship uses here skips zero weights, so an unstructured-sparse model runs as fast as a dense one; but
its zeros compress. Quantized to int8, a zero weight is the byte 0 (symmetric per-channel scales), and long runs of
them shrink under deflate/LZMA. `pack` writes a zip of the artifact; `unpack` restores the exact files, and
`bertship verify` then checks every checksum as for any artifact.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path
from typing import Any

from bertship.runtimes import artifact
from bertship.runtimes.errors import ArtifactError, UsageError

METHODS = {"deflate": zipfile.ZIP_DEFLATED, "lzma": zipfile.ZIP_LZMA}  # deflate: every unzip tool reads it


def pack(art: str | Path, out: str | Path, method: str = "deflate", force: bool = False) -> dict[str, Any]:
    """Zip an artifact folder into `out`; returns its size and the artifact's size, per file and in total."""
    art, out = Path(art), Path(out)
    if not (art / artifact.MANIFEST).is_file():
        raise ArtifactError(f"{str(art)!r} is not a bertship artifact (no {artifact.MANIFEST}) — pass an export's --out")
    if method not in METHODS:
        raise UsageError(f"unknown compression {method!r} — choose from: {', '.join(METHODS)}")
    if out.exists() and not force:
        raise UsageError(f"{str(out)!r} already exists — pass force=True to replace it, or choose another path")
    partial = out.with_name(f".{out.name}.partial-{os.getpid()}")
    files = sorted(p for p in art.rglob("*") if p.is_file())
    per_file = {}
    try:
        level = 9 if method == "deflate" else None
        with zipfile.ZipFile(partial, "w", compression=METHODS[method], compresslevel=level) as zf:
            for path in files:
                name = path.relative_to(art).as_posix()
                zf.write(path, name)
                info = zf.getinfo(name)
                per_file[name] = {"bytes": info.file_size, "packed_bytes": info.compress_size}
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    raw = sum(f["bytes"] for f in per_file.values())
    return {"container": str(out), "method": method, "artifact_bytes": raw, "container_bytes": out.stat().st_size,
            "ratio": raw / max(out.stat().st_size, 1), "files": per_file}


def unpack(container: str | Path, out: str | Path) -> Path:
    """Extract a container made by `pack` into a new folder `out` (refused if it exists)."""
    out = Path(out)
    if out.exists():
        raise UsageError(f"{str(out)!r} already exists — choose another folder to unpack into")
    with zipfile.ZipFile(container) as zf:
        for name in zf.namelist():
            if name.startswith("/") or ".." in Path(name).parts:
                raise ArtifactError(f"container member {name!r} points outside the folder — not made by bertship pack")
        zf.extractall(out)
    return out
