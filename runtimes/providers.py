"""The one table of ONNX Runtime execution providers a profile may ask for, and how a request is placed here.

A profile lists providers in priority order; ONNX Runtime places each node on the first provider that takes it and
the CPU provider takes the rest. Providers this onnxruntime build lacks are either required (MachineError naming how
to get them) or skipped with a note that says what runs instead — never silently.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

from .errors import MachineError, UsageError


@dataclass(frozen=True)
class Provider:
    """One execution provider: the device its tensors live on (for IO binding) and how to get a build that has it."""

    name: str
    device: str  # "cpu" or "cuda"
    get_it: str
    note: str = ""


PROVIDERS: dict[str, Provider] = {
    p.name: p
    for p in (
        Provider("CPUExecutionProvider", "cpu", "every onnxruntime build has it"),
        Provider("CUDAExecutionProvider", "cuda", "pip install onnxruntime-gpu (needs CUDA 12 and cuDNN 9 here)"),
        # Options pass through verbatim; trt_sparsity_enable lets TensorRT use 2:4 sparse tensor cores (Ampere or
        # newer), trt_fp16_enable lets it pick fp16 kernels even for an fp32 graph.
        Provider("TensorrtExecutionProvider", "cuda",
                 "onnxruntime-gpu with the TensorRT libraries on the library path",
                 "options: trt_fp16_enable, trt_int8_enable, trt_sparsity_enable, trt_engine_cache_enable, "
                 "trt_engine_cache_path, trt_max_workspace_size"),
        Provider("XnnpackExecutionProvider", "cpu",
                 "an onnxruntime built with --use_xnnpack (ONNX Runtime's Android and iOS packages); the PyPI wheels, "
                 "aarch64 included, have none — they run on CPUExecutionProvider (with KleidiAI kernels on ARM)"),
    )
}


@dataclass(frozen=True)
class Placement:
    """Where a session runs: the providers (with options) handed to InferenceSession, and what was left out."""

    providers: tuple[tuple[str, dict[str, Any]], ...]
    device: str  # the first provider's device: where IO binding keeps inputs and outputs
    skipped: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    def session_providers(self) -> list[tuple[str, dict[str, Any]]]:
        """The list InferenceSession(providers=...) takes."""
        return [(name, dict(opts)) for name, opts in self.providers]


def get_provider(name: str) -> Provider:
    """The provider called `name`, or UsageError listing the known ones."""
    try:
        return PROVIDERS[name]
    except KeyError:
        raise UsageError(f"unknown execution provider {name!r} — choose from: {', '.join(PROVIDERS)}") from None


def available() -> list[str]:
    """The execution providers this onnxruntime build has (imports onnxruntime)."""
    import onnxruntime

    return list(onnxruntime.get_available_providers())


def place(
    requested: Sequence[str],
    options: Mapping[str, Mapping[str, Any]] | None = None,
    have: Sequence[str] | None = None,
    require: Sequence[str] = (),
) -> Placement:
    """Keep the requested providers this build has, in order; MachineError when a required one is missing."""
    have = list(available() if have is None else have)
    options = options or {}
    for name in (*requested, *require, *options):
        get_provider(name)
    missing = [name for name in require if name not in have]
    if missing:
        raise MachineError(
            "; ".join(f"onnxruntime here has no {n} (it has: {', '.join(have)})" for n in missing)
            + f" — {get_provider(missing[0]).get_it}"
        )
    kept = [name for name in requested if name in have]
    if not kept:
        kept = ["CPUExecutionProvider"]
    skipped = tuple(name for name in requested if name not in have)
    notes = tuple(f"{name} is not in this onnxruntime build ({get_provider(name).get_it}): running on "
                  f"{', '.join(kept)}" for name in skipped)
    chosen = tuple((name, dict(options.get(name, {}))) for name in kept)
    return Placement(chosen, get_provider(kept[0]).device, skipped, notes)
