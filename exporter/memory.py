"""Memory an export will need, estimated from the model's fp32 weight size before anything is loaded, and the refusal
(MemoryNeedError, exit 12) when this machine does not have it: better a clear error than the kernel's OOM killer
ending the process without a word.

The estimate is peak RSS ≈ base + factor × fp32 weight MB per stage, fitted on the export benchmark
(`python -m benchmarks.export_memory`, random weights; measured against estimated in docs/benchmarks.md). It is a
guide, not a promise: `--no-memory-check` skips it.
"""

from __future__ import annotations

from pathlib import Path

from bertship.runtimes.errors import MemoryNeedError

# Peak RSS (MB) of each stage as the largest of its lines base + factor × fp32 weight MB: the line through the largest
# peak of any recipe at MiniLM-L6 (87 MB) and BERT-base (418 MB) in benchmarks/results/export_memory.json (2026-11-29);
# for the optimizer, also the line through BERT-base and BERT-large (1,278 MB), which grows faster than the first.
STAGES: dict[str, tuple[tuple[float, float], ...]] = {
    "load": ((690.0, 1.55),),
    "export": ((499.0, 4.18),),
    "optimize": ((500.0, 1.0),),  # provisional: BERT-base 0.94 GB with the weights left on disk
    "build": ((611.0, 5.23),),
    "verify": ((1478.0, 3.55),),
}
HEADROOM = 1.10  # margin over the fitted line


def fp32_weight_mb(folder: Path) -> float | None:
    """The model's weights as fp32 (what from_pretrained loads), from the safetensors headers alone; None when the
    folder has no safetensors (pickle weights are sized by their files)."""
    import json

    from safetensors import safe_open

    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text(encoding="utf-8")).get("weight_map", {}).values()))
    elif (folder / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        pickles = [p for p in ("pytorch_model.bin",) if (folder / p).is_file()]
        return sum((folder / p).stat().st_size for p in pickles) / 2**20 if pickles else None
    numel = 0
    try:
        for name in files:
            with safe_open(str(folder / name), framework="np") as fh:
                for key in fh.keys():
                    n = 1
                    for d in fh.get_slice(key).get_shape():
                        n *= d
                    numel += n
    except Exception:  # a missing or corrupt file: the load stage says which and how to fix it
        return None
    return numel * 4 / 2**20


def estimate(weights_mb: float, optimize: bool) -> dict[str, float]:
    """Estimated peak RSS (MB) of each stage for a model of `weights_mb` fp32 weights."""
    return {stage: max(base + f * weights_mb for base, f in lines) for stage, lines in STAGES.items()
            if optimize or stage != "optimize"}


def check(folder: Path, optimize: bool, available_mb: float | None) -> dict[str, float] | None:
    """Raise MemoryNeedError when the largest stage estimate (with headroom) exceeds `available_mb`; return the
    estimates (None when the weights cannot be sized or the memory available is unknown)."""
    weights = fp32_weight_mb(folder)
    if weights is None or available_mb is None:
        return None
    stages = estimate(weights, optimize)
    stage, need = max(stages.items(), key=lambda kv: kv[1])
    if need * HEADROOM > available_mb:
        raise MemoryNeedError(
            f"exporting this model ({weights / 1024:.2f} GB of fp32 weights) needs about {need / 1024:.1f} GB of memory "
            f"at its peak ({stage} stage, estimated), and {available_mb / 1024:.1f} GB is available — free memory or "
            "export on a larger machine; pass --no-memory-check to try anyway"
        )
    return stages
