"""Where an artifact's time goes: kernel milliseconds per operator type, from the runtime's own profiler.

    python -m bertship.bench.op_profile ART --backend onnxruntime --shape 8x128

ONNX Runtime's per-node trace (SessionOptions.enable_profiling) or OpenVINO's CPU-plugin counters (PERF_COUNT),
summed per operator type over --iters calls after --warmup, on the same real-token feeds bench.worker times. The
session is opened exactly as bertship's runtime opens it. Prints one JSON object. Torch-free.

`compare` sets a dense and a compacted profile side by side and bounds what compaction can give: operator types
whose time barely shrank are work the removed heads and neurons never touched (layer norms, residual adds, activation
quantization, per-call overhead); if every other operator shrank exactly by the FLOP ratio, the speed-up would still
be capped at `ceiling`.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from typing import Any

from .worker import parse_shape, real_feeds

SHRUNK = 1.25  # an operator type whose time fell by less than this factor counts as not shrinking with the model


def profile(artifact: str, backend: str, shape: str, threads: int = 2, warmup: int = 5, iters: int = 20) -> dict:
    """Per-call milliseconds per operator type, the kernel total and the wall-clock p50 of the same calls."""
    from bertship.runtimes import load

    batch, seq = parse_shape(shape)
    model = load(artifact, backend=backend, threads=threads, runner_options={"profile": True})
    feeds = real_feeds(model, batch, seq)
    for _ in range(warmup):
        model.runner.run(feeds)
    wall = []
    for _ in range(iters):
        start = time.perf_counter()
        model.runner.run(feeds)
        wall.append((time.perf_counter() - start) * 1000.0)
    totals, runs = model.runner.op_times(skip_runs=warmup)
    per_call = {op: ms / runs for op, ms in sorted(totals.items(), key=lambda kv: -kv[1])}
    return {"artifact": artifact, "backend": backend, "shape": shape, "threads": threads, "runs": runs,
            "ops_ms": per_call, "kernel_ms": sum(per_call.values()), "wall_p50_ms": statistics.median(wall)}


def compare(dense: dict[str, Any], compacted: dict[str, Any], flop_ratio: float) -> dict[str, Any]:
    """Per operator type: dense and compacted ms and their ratio; the kernel time that did not shrink, and the
    speed-up ceiling it leaves (every shrinking operator shrinking by exactly `flop_ratio`)."""
    ops = sorted(set(dense["ops_ms"]) | set(compacted["ops_ms"]), key=lambda op: -dense["ops_ms"].get(op, 0.0))
    rows = []
    for op in ops:
        d, c = dense["ops_ms"].get(op, 0.0), compacted["ops_ms"].get(op, 0.0)
        rows.append({"op": op, "dense_ms": d, "compacted_ms": c, "ratio": d / c if c else float("inf")})
    fixed = [r for r in rows if r["ratio"] < SHRUNK]
    fixed_dense = sum(r["dense_ms"] for r in fixed)
    fixed_compacted = sum(r["compacted_ms"] for r in fixed)
    ideal = fixed_compacted + (dense["kernel_ms"] - fixed_dense) / flop_ratio
    return {"rows": rows, "kernel_ratio": dense["kernel_ms"] / compacted["kernel_ms"],
            "fixed_ops": [r["op"] for r in fixed], "fixed_share_dense": fixed_dense / dense["kernel_ms"],
            "fixed_compacted_ms": fixed_compacted, "ceiling": dense["kernel_ms"] / ideal,
            "ceiling_vs_flop_ratio": dense["kernel_ms"] / ideal / flop_ratio}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bertship.bench.op_profile", description=__doc__.splitlines()[0])
    p.add_argument("artifact")
    p.add_argument("--backend", required=True)
    p.add_argument("--shape", default="8x128")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=20)
    args = p.parse_args(argv)
    print(json.dumps(profile(args.artifact, args.backend, args.shape, args.threads, args.warmup, args.iters)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
