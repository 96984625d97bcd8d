"""Memory an export will need, estimated from the model's fp32 weight size before anything is loaded, and the refusal
(MemoryNeedError, exit 12) when this machine does not have it: better a clear error than the kernel's OOM killer
ending the process without a word.

The estimate per stage is interpolated between the peaks the export benchmark measured at four model sizes
(`python -m benchmarks.export_memory`, random weights; see STAGES). It is a guide, not a promise:
`--no-memory-check` skips it.
"""

from __future__ import annotations

from pathlib import Path

from bertship.runtimes.errors import MemoryNeedError

# Peak RSS (MB) of each stage, (fp32 weight MB, largest peak of any recipe and layout), measured by
# `python -m benchmarks.export_memory` (benchmarks/results/export_memory.json, 2026-11-29: MiniLM-L6, BERT-base,
# BERT-large, XLM-R large). Between two sizes the estimate is interpolated on the running maximum; past the largest it
# grows in proportion to the weights. (The growth is not one line: BERT-large's graph is one file and its tracer holds
# the serialized model twice, XLM-R large's goes to per-tensor files.)
# Weights are rounded down and peaks up, so every measured peak is at or under its estimate.
STAGES: dict[str, tuple[tuple[int, int], ...]] = {
    "load": ((86, 922), (417, 1404), (1278, 2479), (2135, 2523)),
    "export": ((86, 924), (417, 2299), (1278, 5851), (2135, 5783)),
    "optimize": ((86, 663), (417, 923), (1278, 1791), (2135, 1505)),
    "build": ((86, 954), (417, 2490), (1278, 6797), (2135, 6313)),
    "verify": ((86, 1805), (417, 3039), (1278, 5047), (2135, 6367)),
}
HEADROOM = 1.10  # margin over the measured peaks


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
    return {stage: _interpolate(points, weights_mb) for stage, points in STAGES.items()
            if optimize or stage != "optimize"}


def _interpolate(points: tuple[tuple[int, int], ...], w: float) -> float:
    envelope, top = [], 0
    for x, y in points:
        top = max(top, y)
        envelope.append((x, top))
    if w <= envelope[0][0]:
        return float(envelope[0][1])
    for (x0, y0), (x1, y1) in zip(envelope, envelope[1:]):
        if w <= x1:
            return y0 + (y1 - y0) * (w - x0) / (x1 - x0)
    x, y = envelope[-1]
    return y * w / x


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
