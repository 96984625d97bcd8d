"""OpenVINO runner: one compiled model and a pool of infer requests, so threads never share a request."""

from __future__ import annotations

import queue
from pathlib import Path
from typing import Any

import numpy as np

from .errors import UsageError


class OpenVinoRunner:
    """Runs an OpenVINO IR on the CPU plugin with an explicit inference precision."""

    backend = "openvino"

    def __init__(self, model_path: str | Path, threads: int | None = None, options: dict[str, Any] | None = None):
        import openvino as ov

        opts = dict(options or {})
        core = ov.Core()
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        # The CPU plugin silently runs an f32 IR in bf16 on AVX512_BF16/AMX CPUs unless told otherwise: the hint is
        # always explicit, and the precision reported back is the one recorded.
        config["INFERENCE_PRECISION_HINT"] = opts.get("inference_precision", "f32")
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        # options["sparse_weights_decompression_rate"]: the CPU plugin's sparse int8 weights (AMX CPUs): FullyConnected
        # layers whose int8 weights are at least this sparse are stored compressed and decompressed in the kernel.
        rate = opts.get("sparse_weights_decompression_rate")
        if rate is not None:
            if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0.0 < float(rate) <= 1.0:
                raise UsageError(f"sparse_weights_decompression_rate must be a number in (0, 1], got {rate!r} — "
                                 "e.g. 0.5 for layers at least half zeros")
            config["CPU_SPARSE_WEIGHTS_DECOMPRESSION_RATE"] = float(rate)
        # options["profile"]: the CPU plugin's per-node counters, summed per operator type by op_times().
        self._profiling = bool(opts.get("profile"))
        if self._profiling:
            config["PERF_COUNT"] = True
        self._op_runs: list[dict[str, float]] = []
        self._kernels: dict[str, set[str]] = {}
        self.compiled = core.compile_model(core.read_model(str(model_path)), "CPU", config)
        self.input_names = tuple(p.get_any_name() for p in self.compiled.inputs)
        self.output_names = tuple(p.get_any_name() for p in self.compiled.outputs)
        self.precision = self.compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        self._pool: queue.SimpleQueue = queue.SimpleQueue()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        try:
            request = self._pool.get_nowait()
        except queue.Empty:
            request = self.compiled.create_infer_request()
        try:
            result = request.infer({name: feeds[name] for name in self.input_names})
            if self._profiling:
                ms: dict[str, float] = {}
                for node in request.profiling_info:
                    ms[node.node_type] = ms.get(node.node_type, 0.0) + node.real_time.total_seconds() * 1000.0
                    self._kernels.setdefault(node.node_type, set()).add(node.exec_type)
                self._op_runs.append(ms)
            # Copy: the request's output tensors are reused by its next inference.
            return {name: np.array(result[self.compiled.output(name)]) for name in self.output_names}
        finally:
            self._pool.put(request)

    def op_times(self, skip_runs: int = 0) -> tuple[dict[str, float], int]:
        """With options["profile"]: (milliseconds summed per operator type, runs counted), leaving out the first
        `skip_runs` runs (warm-up)."""
        if not self._profiling:
            raise UsageError("op_times() needs the runner created with options {'profile': True}")
        totals: dict[str, float] = {}
        for ms in self._op_runs[skip_runs:]:
            for op, v in ms.items():
                totals[op] = totals.get(op, 0.0) + v
        return totals, len(self._op_runs[skip_runs:])

    def kernels(self) -> dict[str, list[str]]:
        """With options["profile"]: the CPU plugin's kernel names per operator type seen so far (e.g. FullyConnected:
        brgemm_avx512_amx_I8, or brgemm_avx512_amx_sparse_I8 where sparse int8 weights are in use)."""
        return {op: sorted(names) for op, names in sorted(self._kernels.items())}
