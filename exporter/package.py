"""Package stage: golden file, manifest, report, and the atomic move of the staged directory into place."""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

import bertship
from bertship.profiles import cpu_info
from bertship.profiles.machine import package_versions
from bertship.runtimes import artifact
from bertship.runtimes.errors import UsageError

PACKAGES = ("torch", "transformers", "tokenizers", "onnx", "onnxruntime", "openvino", "numpy")


def environment() -> dict[str, Any]:
    """Where the artifact was made: package versions, Python, OS, CPU model and ISA flags."""
    versions = package_versions(PACKAGES)
    return {"python": platform.python_version(), "os": platform.platform(), "cpu": cpu_info(), "packages": versions}


def write_golden(staging: Path, texts: list[str], pairs: list[str] | None, feeds, refs,
                 sweep=None) -> dict[str, Any]:
    """golden.npz: the texts, each batch's inputs and PyTorch's outputs on them, and the length sweep's lengths and
    reference vectors (runtimes.verify.Sweep; plain arrays, loadable without pickle)."""
    arrays: dict[str, np.ndarray] = {"texts": np.array(texts, dtype=np.str_)}
    if sweep is not None:
        arrays["sweep.ref"] = sweep.refs
        arrays["sweep.lengths"] = np.asarray(sweep.lengths, dtype=np.int64)
    if pairs is not None:
        arrays["pairs"] = np.array(pairs, dtype=np.str_)
    for b, (feed, ref) in enumerate(zip(feeds, refs)):
        arrays.update({f"b{b}.{k}": v for k, v in feed.items()})
        arrays.update({f"b{b}.ref.{k}": v for k, v in ref.items()})
    np.savez_compressed(staging / artifact.GOLDEN, **arrays)
    return {"file": artifact.GOLDEN, "batches": len(feeds), "texts": len(texts), "reference": "pytorch fp32",
            "sweep_lengths": None if sweep is None else len(sweep.lengths)}


def write_manifest(staging: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Add every staged file with size and sha256, then write manifest.json last."""
    manifest = dict(manifest, files=artifact.file_entries(staging))
    (staging / artifact.MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=False) + "\n", encoding="utf-8")
    return manifest


def base_manifest(source, backends: dict[str, Any], tokenizer: dict[str, Any], tolerance: dict[str, float]) -> dict[str, Any]:
    """Everything the manifest says about the model, before fidelity, golden data, timings and files are known."""
    config = json.loads(source.model.config.to_json_string())
    task: dict[str, Any] = {"name": source.task.name}
    if source.task.name == "sentence-embedding":
        task.update(pooling=source.pooling, normalize=source.normalize)
    elif source.task.name == "multi-vector":
        task.update(normalize=source.normalize)
    task.update(source.settings)
    if source.task.outputs[0].argmax == "labels":
        task["id2label"] = {str(k): v for k, v in (config.get("id2label") or {}).items()}
    return {
        "format_version": artifact.FORMAT_VERSION,
        "bertship_version": bertship.__version__,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source": {**source.info, "family": source.family.name, "config": config},
        "task": task,
        "recipe": {"name": "fp32"},
        "signature": {
            "inputs": [{"name": n, "dtype": "int64", "axes": ["batch", "sequence"]} for n in source.family.inputs],
            "outputs": [dict(o.as_dict(), dtype="float32") for o in source.task.outputs],
        },
        "tokenizer": tokenizer,
        "backends": backends,
        "fidelity": {"tolerance": tolerance},
        "environment": environment(),
    }


def write_report(staging: Path, manifest: dict[str, Any]) -> None:
    """report.md: the manifest's main facts for a person."""
    from bertship.runtimes.inspect import describe

    (staging / artifact.REPORT).write_text(describe(manifest, staging), encoding="utf-8")


def rewrite(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """Re-render report.md and rewrite the manifest (new file checksums) after adding facts to a built artifact."""
    (root / artifact.REPORT).unlink(missing_ok=True)
    write_report(root, dict(manifest, files=artifact.file_entries(root)))
    return write_manifest(root, manifest)


def check_out(out: Path, force: bool) -> None:
    """Refuse an existing --out unless forced, or one that cannot be written, before any work is done."""
    artifact.check_destination(out)
    if out.exists() and not force:
        raise UsageError(f"{str(out)!r} already exists — pass --force to replace it, or choose another --out")
    if out.exists() and not (out / artifact.MANIFEST).is_file() and any(out.iterdir()):
        raise UsageError(f"{str(out)!r} is a non-empty directory that is not a bertship artifact — choose another --out")


def check_folder_out(out: Path, force: bool, marker: str, command: str) -> None:
    """A model-folder command's --out (prune, exits, tokens): refused when it exists unless forced, or when it is a
    non-empty folder the same command did not write (its `marker` file absent), or cannot be written."""
    artifact.check_destination(out)
    if out.exists() and not force:
        raise UsageError(f"{str(out)!r} already exists — pass --force to replace it, or choose another --out")
    if out.exists() and not (out / marker).is_file() and any(out.iterdir()):
        raise UsageError(f"{str(out)!r} is a non-empty folder that bertship {command} did not write — choose another "
                         "--out")


def write_folder(root: Path, out: Path, skip: Callable[[str], bool], write: Callable[[Path], None]) -> None:
    """A model folder at `out`: `root`'s files (hidden ones and those `skip` names left out) and what `write` adds in
    the staging folder, renamed into place at the end; nothing is left half-written."""
    import shutil

    staging = staging_dir(out)
    try:
        for item in root.iterdir():
            if item.name.startswith(".") or skip(item.name):
                continue
            (shutil.copytree if item.is_dir() else shutil.copy2)(item, staging / item.name)
        write(staging)
        publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# Building in a temporary directory beside --out and renaming it into place is shared with `deploy` (torch-free).
staging_dir = artifact.staging_dir
publish = artifact.publish
