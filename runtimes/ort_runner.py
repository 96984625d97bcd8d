"""ONNX Runtime runner. `InferenceSession.run` is thread-safe, so one session serves every thread."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .errors import UsageError

# ONNX Runtime graph transformers bertship turns off when a session runs on CPU providers only. SkipLayerNormFusion
# folds `Add(residual) + LayerNormalization` into SkipLayerNormalization, whose CPU kernel in onnxruntime 1.32 is slower
# than the two ops it replaces: without the fusion, int8-dynamic MiniLM ran 11-14 % faster and compacted int8 models
# 16-22 % faster (bench/results/sparsity.md times both settings side by side). Fp32 graphs exported by bertship are not
# fused this way, so they are unaffected. A profile's [[runtimes]] `disabled_optimizers = []` (or the runner option)
# restores ONNX Runtime's defaults.
CPU_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)
_GPU_PROVIDERS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def _provider_name(entry: Any) -> str:
    return entry[0] if isinstance(entry, (tuple, list)) else str(entry)


def session_providers(providers: Sequence[Any], precision: str) -> list[tuple[str, dict[str, Any]]]:
    """(name, options) pairs for InferenceSession. The CUDA provider runs fp32 MatMuls in TF32 unless told otherwise
    (10-bit mantissa: a tiny BERT moved by 6.5e-4 on an H200, past the fp32 gate); an fp32 artifact keeps fp32 math
    there unless the options set use_tf32 themselves."""
    out = []
    for entry in providers:
        name, opts = (entry[0], dict(entry[1])) if isinstance(entry, (tuple, list)) else (str(entry), {})
        if name == "CUDAExecutionProvider" and precision == "fp32":
            opts.setdefault("use_tf32", "0")
        out.append((name, opts))
    return out


def disabled_optimizers(providers: Sequence[Any], requested: Sequence[str] | None) -> tuple[str, ...]:
    """The graph transformers to turn off: `requested` when given, else bertship's CPU default on CPU-only sessions."""
    if requested is not None:
        if isinstance(requested, str) or not all(isinstance(x, str) and x for x in requested):
            raise UsageError(f"disabled_optimizers must be a list of ONNX Runtime optimizer names, got {requested!r}")
        return tuple(requested)
    if any(_provider_name(p) in _GPU_PROVIDERS for p in providers):
        return ()
    return CPU_DISABLED_OPTIMIZERS


class OrtRunner:
    """Runs an ONNX model with ONNX Runtime on the CPU execution provider (or the providers in options)."""

    backend = "onnxruntime"

    def __init__(self, model_path: str | Path, threads: int | None = None, options: dict[str, Any] | None = None):
        import onnxruntime as ort

        so = ort.SessionOptions()
        # ORT fuses the graph at session creation (ORT_ENABLE_ALL); a single inter-op thread because encoder graphs
        # are one chain, and more inter-op threads only compete with intra-op ones on small machines.
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        so.intra_op_num_threads = int(threads or 0)
        so.inter_op_num_threads = 1
        opts = options or {}
        # options["allow_spinning"] False: the intra-op threads sleep between runs instead of spinning. An early-exit
        # artifact's segments are several sessions run one after another: each idle session's spinning threads took
        # the cores from the one running (6 MiniLM segments, fp32, batch 32: 1.5-2.1 ms per text per layer vs 0.6 in
        # the dense model)
        if opts.get("allow_spinning") is False:
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if opts.get("optimized_model_path"):  # write the graph as ONNX Runtime optimized it (to see what runs)
            so.optimized_model_filepath = str(opts["optimized_model_path"])
        # options["profile"]: ONNX Runtime's own per-node profiler (a JSON trace read back by op_times()).
        self._profiling = bool(opts.get("profile"))
        if self._profiling:
            import tempfile

            so.enable_profiling = True
            so.profile_file_prefix = str(Path(tempfile.mkdtemp(prefix="bertship-ort-profile-")) / "trace")
        providers = session_providers(opts.get("providers", ["CPUExecutionProvider"]), str(opts.get("precision", "fp32")))
        self.disabled_optimizers = disabled_optimizers(providers, opts.get("disabled_optimizers"))
        self.session = ort.InferenceSession(str(model_path), so, providers=providers,
                                            disabled_optimizers=list(self.disabled_optimizers))
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.precision = str(opts.get("precision", "fp32"))
        self.providers = tuple(self.session.get_providers())
        # options["io_binding"]: bind inputs and outputs on options["io_device"] ("cpu" or "cuda"), see io_binding.py.
        self._bound = None
        if opts.get("io_binding"):
            from .io_binding import IoBinding

            self._bound = IoBinding(self.session, opts.get("io_device", "cpu"))

    def op_times(self, skip_runs: int = 0) -> tuple[dict[str, float], int]:
        """With options["profile"]: (kernel milliseconds summed per operator type, runs counted), leaving out the
        first `skip_runs` runs (warm-up). Ends profiling: call once, after the runs to count."""
        import json
        import shutil

        if not self._profiling:
            raise UsageError("op_times() needs the runner created with options {'profile': True}")
        trace = Path(self.session.end_profiling())
        try:
            events = json.loads(trace.read_text())
        finally:
            shutil.rmtree(trace.parent, ignore_errors=True)
        starts = sorted(e["ts"] for e in events if e.get("cat") == "Session" and e.get("name") == "model_run")
        since = starts[skip_runs] if skip_runs < len(starts) else float("inf")
        totals: dict[str, float] = {}
        for e in events:
            if e.get("cat") == "Node" and e.get("name", "").endswith("_kernel_time") and e["ts"] >= since:
                op = e["args"]["op_name"]
                totals[op] = totals.get(op, 0.0) + e["dur"] / 1000.0
        return totals, max(len(starts) - skip_runs, 0)

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._bound is not None:
            return self._bound.run(feeds)
        outs = self.session.run(None, {name: feeds[name] for name in self.input_names})
        return dict(zip(self.output_names, outs))
