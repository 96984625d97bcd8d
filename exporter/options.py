"""The one options record of an export: the CLI and the Python API both build it, so they cannot drift apart."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

from bertship.runtimes.errors import UsageError

ORT_GRAPHS = ("plain", "fused")
EXTERNAL_DATA = ("auto", "always")  # exporter.onnxio.MODES (kept here so options import nothing heavy)


@dataclass(frozen=True)
class ExportOptions:
    """Everything `bertship export` can be told, with its defaults."""

    task: str | None = None
    backends: tuple[str, ...] | str | None = None  # None: every backend the recipe supports
    recipe: str = "fp32"
    calibration: str | Path | None = None  # int8-static: .txt / .jsonl of the user's texts (default: bundled set)
    calibration_method: str | None = None  # int8-static on ONNX Runtime: minmax, entropy, percentile
    max_accuracy_drop: str | float | None = None  # e.g. "1%": keep sensitive layers in float until it holds
    eval_data: str | Path | None = None  # labelled data the limit is judged on (default: cosine on calibration text)
    exit_calibration: str | Path | None = None  # early exit: labelled data each backend's exit rule is calibrated on
    min_cosine: str | float | None = None  # embeddings: lowest per-text cosine vs fp32, alone and batched, e.g. 0.99
    min_rank_agreement: str | float | None = None  # rerank, sparse, multi-vector: top-1 agreement vs fp32, e.g. 0.95
    allow_batch_dependence: bool = False  # accept an embedding artifact whose outputs depend on batch-mates
    compact: bool = False  # remove dead heads and FFN neurons (structured zeros) before the graph is exported
    profile: str | Path | None = None  # a device profile: its candidate recipes, backends and model format decide
    ort_graph: str = "plain"  # which fp32 graph ONNX Runtime recipes start from: as exported, or ORT-fused offline
    external_data: str = "auto"  # onnxio.MODES: ONNX weights inline unless past 2 GB, or always in model.onnx.data
    allow_missing_fusions: bool = False
    no_memory_check: bool = False  # skip the refusal when the estimated peak memory exceeds what is available
    force: bool = False
    allow_pickle: bool = False
    max_length: int | None = None
    pooling: str | None = None
    normalize: bool | None = None
    threads: int | None = None
    target_cpu: str | None = None  # runtimes.cpuclass.TARGETS: whose int8 arithmetic to quantize for (None: this CPU)

    def __post_init__(self):
        if self.target_cpu is not None:
            from bertship.runtimes.cpuclass import check_target

            check_target(self.target_cpu)
        if self.ort_graph not in ORT_GRAPHS:
            raise UsageError(f"unknown --ort-graph {self.ort_graph!r} — choose from: {', '.join(ORT_GRAPHS)}")
        if self.external_data not in EXTERNAL_DATA:
            raise UsageError(f"unknown --external-data {self.external_data!r} — choose from: {', '.join(EXTERNAL_DATA)}")
        if self.threads is not None and (isinstance(self.threads, bool) or not isinstance(self.threads, int)
                                         or self.threads < 1):
            raise UsageError(f"--threads {self.threads!r} is not a thread count — give a positive number, or leave it "
                             "out for the runtime's default")

    @classmethod
    def build(cls, **values: Any) -> "ExportOptions":
        """Options from keyword arguments; an unknown name is a UsageError listing the valid ones."""
        names = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise UsageError(f"unknown export option {unknown[0]!r} — valid: {', '.join(sorted(names))}")
        return cls(**values)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for key in ("calibration", "eval_data", "profile"):
            d[key] = str(d[key]) if d[key] is not None else None
        d["backends"] = list(self.backends) if isinstance(self.backends, (tuple, list)) else self.backends
        return d
