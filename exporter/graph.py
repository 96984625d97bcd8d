"""Graph optimization: ONNX Runtime's transformer fusions, with a report of what fused where.

The fused-op counts are checked against what the family should reach (`Family.fusions`); a missing fusion is the
classic silent BERT slowdown, so it is an error naming the op and the layers, unless the user accepts it (recorded).
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from bertship.runtimes.errors import FusionError

from . import onnxio
from .families import Family

# For each fused op, the op type that is left in a layer when that layer's pattern did not fuse.
WITNESS = {
    "Attention": ("Softmax",),
    "BiasGelu": ("Erf",),
    "Gelu": ("Erf",),
    "FastGelu": ("Tanh",),
    "SkipLayerNormalization": ("LayerNormalization",),
    "EmbedLayerNormalization": ("LayerNormalization",),
}
_LAYER = re.compile(r"layers?\.(\d+)")
# Fused ops a sublayer contributes; one that compaction replaced by norm(x + bias) has none of them (its Add + LayerNorm
# with a constant bias is left to ONNX Runtime's session-time LayerNormalization fusion).
SUBLAYER_FUSIONS = {"attention": ("Attention", "SkipLayerNormalization"),
                    "ffn": ("BiasGelu", "Gelu", "FastGelu", "SkipLayerNormalization")}


@dataclass(frozen=True)
class FusionReport:
    """Fused-op counts found, counts expected for the family, and where expected fusions are missing."""

    counts: dict[str, int]
    expected: dict[str, int]
    missing: dict[str, str]  # op -> what is missing and where
    note: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def num_layers(config: Any) -> int:
    """Transformer layers in a config (DistilBERT calls them n_layers; transformers maps both)."""
    return int(getattr(config, "num_hidden_layers", None) or getattr(config, "n_layers"))


def optimize(onnx_path: Path, family: Family, layers: int, out_path: Path | None = None,
             removed: dict[str, int] | None = None) -> FusionReport:
    """Run ONNX Runtime's BERT fusions on the graph; optionally save the fused graph (its weights in
    `<out_path>.data`); report counts and gaps.

    The graph is read without its weights: the fusions read the few they rewrite (Q, K and V become one QKV weight)
    from the data file when they need them, and the fused graph is written tensor by tensor (onnxio.write_external).
    Loaded whole, the optimizer held 9-11 copies of the weights at its peak (symbolic shape inference copies the
    model, more than once); this way it holds the rewritten weights only.

    `removed`: sublayer applications compaction replaced ({"attention": n, "ffn": n}, CompactionReport.removed_sublayers),
    whose fused ops are not expected.
    """
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    # The optimizer logs each fusion at INFO and harmless shape warnings on pruned graphs; the report says it all.
    quiet = [logging.getLogger(n) for n in ("onnx_model", "onnx_model_bert", "fusion_base", "fusion_attention",
                                             "fusion_utils", "fusion_skiplayernorm", "fusion_embedlayer")]
    levels = [lg.level for lg in quiet]
    for lg in quiet:
        lg.setLevel(logging.ERROR)
    onnx_path = Path(onnx_path).resolve()
    proto = onnx.load(str(onnx_path), load_external_data=False)
    try:
        # The weights' data-file locations are relative to the graph's folder, and the optimizer reads them from
        # the working directory (onnx.numpy_helper.to_array without a base_dir).
        with _working_dir(onnx_path.parent):
            # opt_level 0: only the Python fusions; ONNX Runtime applies its own graph optimizations at session
            # creation.
            model = optimize_model(proto, model_type="bert", num_heads=0, hidden_size=0, opt_level=0)
    finally:
        for lg, level in zip(quiet, levels):
            lg.setLevel(level)
    counts = {k: int(v) for k, v in model.get_fused_operator_statistics().items() if v}
    expected = {op: a * layers + b for op, (a, b) in family.fusions.items()}
    for sublayer, count in (removed or {}).items():
        for op in SUBLAYER_FUSIONS[sublayer]:
            if op in expected:
                expected[op] -= count
    expected = {op: n for op, n in expected.items() if n > 0}
    missing = {}
    for op, want in expected.items():
        got = counts.get(op, 0)
        if got < want:
            where = sorted({m.group(1) for n in model.model.graph.node if n.op_type in WITNESS.get(op, ())
                            for m in [_LAYER.search(n.name)] if m}, key=int)
            missing[op] = f"{got} of {want} fused" + (f"; not fused in layer {', '.join(where)}" if where else "")
    if out_path is not None:
        # what OnnxModel.save adds before writing: the contrib-op domain the fused ops live in
        if any(n.domain == "com.microsoft" for n in model.model.graph.node) and not any(
                o.domain == "com.microsoft" for o in model.model.opset_import):
            model.model.opset_import.add(domain="com.microsoft", version=1)
        onnxio.write_external(model.model, Path(out_path), onnx_path.parent)
    return FusionReport(counts, expected, missing, family.fusion_note)


@contextmanager
def _working_dir(folder: Path) -> Iterator[None]:
    before = os.getcwd()
    os.chdir(folder)
    try:
        yield
    finally:
        os.chdir(before)


def check(report: FusionReport, allow_missing: bool) -> None:
    """Raise FusionError for missing fusions unless the user allowed them (the manifest records that choice)."""
    if report.missing and not allow_missing:
        detail = "; ".join(f"{op}: {text}" for op, text in report.missing.items())
        raise FusionError(
            f"ONNX Runtime's transformer fusions are incomplete ({detail}) — the artifact would run slower than it "
            "should; fix the graph, or pass --allow-missing-fusions to accept it (recorded in the manifest)"
        )
