"""The one table of runtime backends: what each needs installed, where its files live, and how to start it.

Every place that chooses between ONNX Runtime and OpenVINO looks the backend up here instead of branching on strings.
"""

from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from types import ModuleType

from .errors import BackendMissingError, UsageError


@dataclass(frozen=True)
class Backend:
    """A runtime backend: its import name, the pip extra that installs it, and its model file in an artifact."""

    name: str
    module: str
    extra: str
    model_file: str
    runner: str  # "module:Class" inside bertship.runtimes, imported only when used


BACKENDS: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("onnxruntime", "onnxruntime", "runtime", "onnxruntime/model.onnx", "ort_runner:OrtRunner"),
        # OpenVINO's IR is model.xml (graph) + model.bin (weights); the .bin path is derived from the .xml.
        Backend("openvino", "openvino", "openvino", "openvino/model.xml", "ov_runner:OpenVinoRunner"),
    )
}


def get_backend(name: str) -> Backend:
    """Return the backend called `name`, or raise UsageError listing the valid names."""
    try:
        return BACKENDS[name]
    except KeyError:
        raise UsageError(f"unknown backend {name!r} — choose from: {', '.join(BACKENDS)}") from None


def is_installed(name: str) -> bool:
    """True when the backend's Python package can be imported here."""
    return importlib.util.find_spec(get_backend(name).module) is not None


def require(name: str) -> ModuleType:
    """Import and return the backend's package, or raise BackendMissingError naming the extra to install."""
    backend = get_backend(name)
    if not is_installed(name):
        raise BackendMissingError(
            f"backend {name!r} is not installed — pip install 'bertship[{backend.extra}]'"
        )
    return importlib.import_module(backend.module)


def runner_class(name: str) -> type:
    """The Runner class of a backend (imports the backend package)."""
    require(name)
    module_name, cls_name = get_backend(name).runner.split(":")
    module = importlib.import_module(f"{__package__}.{module_name}")
    return getattr(module, cls_name)


def open_runner(root, entry: dict, name: str, threads: int | None = None, options: dict | None = None):
    """The runner of one backend's entry in a manifest under `root`: its model, or for an early-exit artifact the
    chain of its segments (runtimes.exits.SegmentRunner)."""
    from pathlib import Path

    cls = runner_class(name)
    root = Path(root)
    if "segments" in entry:
        from .exits import SegmentRunner

        if name == "onnxruntime":  # segments run one after another: idle sessions must not spin (ort_runner)
            options = {"allow_spinning": False, **(options or {})}
        return SegmentRunner([cls(root / s["model"], threads, options) for s in entry["segments"]], entry["segments"],
                             int(entry["total_layers"]), entry.get("exit_rule"))
    return cls(root / entry["model"], threads, options)


def parse_backends(text: str | list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Parse 'onnxruntime,openvino' (or a list) into known backend names, keeping order and dropping repeats."""
    items = text.split(",") if isinstance(text, str) else list(text)
    names = tuple(dict.fromkeys(s.strip() for s in items if s.strip()))
    if not names:
        raise UsageError(f"no backend given — choose one or more of: {', '.join(BACKENDS)}")
    for name in names:
        get_backend(name)
    return names
