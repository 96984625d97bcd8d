"""Synthetic bench results in the format `bertship bench --json` writes, built from chosen per-round latencies."""

from __future__ import annotations

import copy
from typing import Any

from bertship.bench.run import FORMAT, summarize_job

KEY = {"family": "bert", "task": "sequence-classification", "inputs": ["input_ids", "attention_mask", "token_type_ids"],
       "outputs": ["logits"], "hidden_size": 32, "vocab_size": 300, "max_length": 64}
MACHINE = {"model": "Intel(R) Xeon(R) Gold 6338", "arch": "x86_64", "cores": 2, "usable_cores": 2,
           "flags": ["avx2", "avx512_vnni", "avx512f"], "providers": ["CPUExecutionProvider"], "gpus": []}
PROFILE = """
name = "ci"
[machine]
arch = ["x86_64"]
[machine.isa]
int8-dynamic = ["avx512_vnni", "avx_vnni", "amx_int8"]
[recipes]
candidates = ["int8-dynamic", "fp32"]
reference = "fp32"
[[runtimes]]
backend = "onnxruntime"
threads = [2]
[workload]
shapes = ["1x16", "8x16"]
[[budgets]]
metric = "p95_ms"
shape = "1x16"
max = 12.0
[[budgets]]
metric = "throughput"
shape = "8x16"
min = 100.0
[[budgets]]
metric = "artifact_mb"
max = 30.0
[[budgets]]
metric = "cosine_min"
min = 0.98
"""


def job(role: str, rounds: dict[str, list[float]], loaded: int = 0, recipe: str = "int8-dynamic",
        setting: int | str = 2, backend: str = "onnxruntime") -> tuple[str, dict[str, Any]]:
    """(job id, record): each round of a shape is 10 calls around that round's median (+-2 %)."""
    shapes = {}
    for shape, medians in rounds.items():
        batch = int(shape.split("x")[0])
        blocks = [{"round": i, "attempt": 0, "pass": 0, "ms": [m * f for f in (0.98, 0.99, 1.0, 1.0, 1.0, 1.0, 1.01,
                   1.01, 1.02, 1.02)], "items": [batch] * 10, "foreign": 0.5 if i < loaded else 0.0,
                   "loaded": i < loaded, "kept": True} for i, m in enumerate(medians)]
        shapes[shape] = {"blocks": blocks}
    record = {"role": role, "path": f"/art/{role}", "backend": backend, "setting": setting, "threads": 2,
              "runtime": {}, "recipe": recipe, "artifact_mb": 23.5 if recipe.startswith("int8") else 91.0,
              "env": {"precision": "int8" if recipe.startswith("int8") else "fp32", "providers": ["CPUExecutionProvider"],
                      "io_binding": False}, "fidelity": {"cosine_min": 0.99, "cosine_mean": 0.995, "failures": []},
              "notes": [], "load_s": [0.4, 0.5], "load_foreign": [0.0, 0.0], "peak_rss_mb": [150.0, 152.0],
              "harness_overhead_us": [0.2], "shapes": shapes}
    summarize_job(record)
    return f"{role}/{backend}/threads={setting}", record


def results(*jobs: tuple[str, dict[str, Any]], machine: dict[str, Any] | None = None,
            key: dict[str, Any] | None = None) -> dict[str, Any]:
    """A bench results dict holding these jobs."""
    records = dict(jobs)
    shapes = sorted({s for r in records.values() for s in r["shapes"] if s != "text"})
    artifacts = {r["role"]: {"path": r["path"], "recipe": r["recipe"], "model_key": copy.deepcopy(key or KEY),
                             "backends": ["onnxruntime"], "artifact_mb": {"onnxruntime": r["artifact_mb"]}}
                 for r in records.values()}
    return {"bertship_bench": FORMAT, "created": "2026-01-01T00:00:00Z", "command": "synthetic",
            "profile": {"name": "ci"}, "machine": dict(machine or MACHINE), "artifacts": artifacts,
            "workload": {"shapes": shapes, "text": None},
            "settings": {"warmup": 1, "iterations": 10, "rounds": 4, "passes": 1, "foreign_load_max": 0.15,
                         "retries": 2},
            "jobs": records, "overhead": {"harness_us": 0.2, "smallest_p50_ms": 1.0, "percent": 0.02}, "notes": []}
