"""The artifact on disk: its layout, the manifest, and the checksums that make it prove itself.

Layout (every path relative to the artifact directory):
    manifest.json            format version, source, task, recipe, signature, files + sha256, fidelity, environment
    report.md                the same facts for people
    tokenizer.json           the `tokenizers` file the runtime encodes text with
    golden.npz               golden inputs and the reference outputs, for `verify` on any machine
    onnxruntime/model.onnx   ONNX graph
    openvino/model.{xml,bin} OpenVINO IR
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import ArtifactError, UsageError

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
TOKENIZER = "tokenizer.json"
GOLDEN = "golden.npz"
REPORT = "report.md"


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def file_entries(root: Path) -> list[dict[str, Any]]:
    """One {path, bytes, sha256} entry for every file under `root` except the manifest itself."""
    entries = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        rel = path.relative_to(root).as_posix()
        if rel == MANIFEST:
            continue
        entries.append({"path": rel, "bytes": path.stat().st_size, "sha256": sha256_file(path)})
    return entries


def read_manifest(root: str | Path) -> dict[str, Any]:
    """Read and sanity-check an artifact's manifest; raise ArtifactError with the fix when it cannot be used."""
    root = Path(root)
    if not root.is_dir():
        raise ArtifactError(f"artifact directory {str(root)!r} does not exist — pass the --out of a `bertship export`")
    path = root / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{str(root)!r} has no {MANIFEST}: not a bertship artifact — re-run `bertship export`")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}) — re-run `bertship export`") from None
    version = manifest.get("format_version") if isinstance(manifest, dict) else None
    if not isinstance(version, int):
        raise ArtifactError(f"{path} has no integer format_version — re-run `bertship export`")
    if version > FORMAT_VERSION:
        raise ArtifactError(
            f"artifact format {version} was written by a newer bertship (this one reads up to {FORMAT_VERSION})"
            " — upgrade bertship"
        )
    if version < FORMAT_VERSION:
        raise ArtifactError(f"artifact format {version} is no longer read — re-export with this bertship")
    return manifest


def check_files(root: str | Path, manifest: dict[str, Any], only: set[str] | None = None) -> None:
    """Check size and sha256 of every file the manifest lists (or only those in `only`); raise one error naming all."""
    root = Path(root)
    problems = []
    listed = {entry["path"] for entry in manifest.get("files", [])}
    problems += [f"{rel} is not listed in the manifest" for rel in sorted((only or set()) - listed)]
    for entry in manifest.get("files", []):
        rel = entry["path"]
        if only is not None and rel not in only:
            continue
        path = root / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
        elif path.stat().st_size != entry["bytes"]:
            problems.append(f"{rel} has {path.stat().st_size} bytes, manifest says {entry['bytes']} (truncated?)")
        elif sha256_file(path) != entry["sha256"]:
            problems.append(f"{rel} was changed (sha256 differs from the manifest)")
    if problems:
        raise ArtifactError(
            f"artifact {str(root)!r} failed its checksums: " + "; ".join(problems)
            + " — re-export it or copy it again whole"
        )


def backend_files(manifest: dict[str, Any], backend: str) -> set[str]:
    """Paths of the files one backend needs, plus the tokenizer: what `load` checks before using them."""
    entry = manifest.get("backends", {}).get(backend)
    if entry is None:
        built = ", ".join(manifest.get("backends", {})) or "none"
        raise UsageError(f"this artifact has no {backend!r} model (built: {built}) — pick one of those or re-export")
    return set(entry["files"]) | {TOKENIZER}


def check_destination(out: Path) -> None:
    """Raise DestinationError, before any work, when `out` could not be written: its nearest existing ancestor must
    be a folder this process can write into (folders missing below it are created at the end)."""
    from .errors import DestinationError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise DestinationError(f"{str(out)!r} is a file — choose an --out folder path that is not taken by a file")
    ancestor = out.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise DestinationError(f"{str(ancestor)!r} is a file, so {str(out)!r} cannot be created — choose another --out")
    try:  # a real probe: permission bits do not tell root that /proc or a read-only mount refuses new folders
        os.rmdir(tempfile.mkdtemp(prefix=".bertship-probe-", dir=ancestor))
    except OSError as exc:
        raise DestinationError(f"cannot write into {str(ancestor)!r} ({exc.strerror}), so {str(out)!r} cannot be "
                               "created — choose an --out in a writable folder") from None


def staging_dir(out: Path) -> Path:
    """A fresh temporary directory beside `out` (same filesystem, so the final rename is atomic)."""
    from .errors import DestinationError

    check_destination(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        return Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    except OSError as exc:
        raise DestinationError(f"cannot create a folder beside {str(out)!r} ({exc.strerror}) — choose an --out in a "
                               "writable folder") from None


def publish(staging: Path, out: Path) -> None:
    """Move a finished staging directory to `out`; a directory already there is replaced only after that works."""
    if not out.exists():
        os.rename(staging, out)
        return
    old = out.with_name(f".{out.name}.replaced-{os.getpid()}")
    os.rename(out, old)
    try:
        os.rename(staging, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
