"""ONNX Runtime runner. `InferenceSession.run` is thread-safe, so one session serves every thread."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


class OrtRunner:
    """Runs an ONNX model with ONNX Runtime on the CPU execution provider."""

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
        self.session = ort.InferenceSession(str(model_path), so, providers=opts.get("providers", ["CPUExecutionProvider"]))
        self.input_names = tuple(i.name for i in self.session.get_inputs())
        self.output_names = tuple(o.name for o in self.session.get_outputs())
        self.precision = str(opts.get("precision", "fp32"))
        self.providers = tuple(self.session.get_providers())
        # options["io_binding"]: bind inputs and outputs on options["io_device"] ("cpu" or "cuda"), see io_binding.py.
        self._bound = None
        if opts.get("io_binding"):
            from .io_binding import IoBinding

            self._bound = IoBinding(self.session, opts.get("io_device", "cpu"))

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._bound is not None:
            return self._bound.run(feeds)
        outs = self.session.run(None, {name: feeds[name] for name in self.input_names})
        return dict(zip(self.output_names, outs))
