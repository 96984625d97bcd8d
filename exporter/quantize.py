"""Build stage: turn the fp32 ONNX export into each backend's model under a recipe.

One handler per (backend, recipe), looked up in HANDLERS; each writes its files into the staging directory and
returns the manifest entry for its backend. The backends' own tools do the work: onnxruntime.quantization and
onnxruntime.transformers for ONNX Runtime, openvino and nncf for OpenVINO.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bertship.runtimes.backends import BACKENDS

from .recipes import Recipe

ORT_MODEL = BACKENDS["onnxruntime"].model_file
OV_MODEL = BACKENDS["openvino"].model_file
VNNI = ("avx512_vnni", "avx_vnni", "amx_int8")
# What ONNX Runtime computes in under each recipe (it reports nothing itself): recorded as the runner's precision.
ORT_PRECISION = {"fp32": "fp32", "fp16": "fp16", "int8-dynamic": "int8", "int8-static": "int8", "int8-qat": "int8",
                 "int8-weight-only": "int8-weights", "int4-weight-only": "int4-weights"}


@dataclass
class BuildContext:
    """What every handler may use."""

    staging: Path
    plain_onnx: Path  # the fp32 export, as traced
    fused_onnx: Path | None  # the same after ONNX Runtime's transformer fusions, when they ran
    ort_graph: str  # "plain" or "fused": which fp32 graph ONNX Runtime recipes start from
    recipe: Recipe
    calibration: list[dict[str, np.ndarray]]
    cpu_flags: list[str]
    arch: str
    pad_id: int = 0
    exclude: tuple[str, ...] = ()  # MatMul node names (ORT) or name regexes (OpenVINO) kept in float


def _ort_source(ctx: BuildContext) -> Path:
    return ctx.fused_onnx if ctx.ort_graph == "fused" and ctx.fused_onnx is not None else ctx.plain_onnx


def _ort_entry(ctx: BuildContext, **build: Any) -> dict[str, Any]:
    return {"model": ORT_MODEL, "files": [ORT_MODEL], "options": {"precision": ORT_PRECISION[ctx.recipe.name]},
            "build": {"graph": ctx.ort_graph, **build}}


def _ort_target(ctx: BuildContext) -> Path:
    path = ctx.staging / ORT_MODEL
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def ort_fp32(ctx: BuildContext) -> dict[str, Any]:
    shutil.copyfile(_ort_source(ctx), _ort_target(ctx))
    return _ort_entry(ctx)


def ort_qat(ctx: BuildContext) -> dict[str, Any]:
    import onnxruntime as ort

    shutil.copyfile(ctx.plain_onnx, _ort_target(ctx))
    # What ONNX Runtime makes of the Q/DQ pairs at load is the point of QAT: count the integer kernels it chose.
    so = ort.SessionOptions()
    so.optimized_model_filepath = str(ctx.staging / "_work" / "ort-optimized.onnx")
    ort.InferenceSession(str(ctx.plain_onnx), so, providers=["CPUExecutionProvider"])
    import onnx

    ops = [n.op_type for n in onnx.load(so.optimized_model_filepath, load_external_data=False).graph.node]
    integer = {op: ops.count(op) for op in sorted(set(ops)) if op.startswith(("QGemm", "QLinear", "MatMulInteger",
                                                                               "QAttention", "DynamicQuantize"))}
    return _ort_entry(ctx, source="Q/DQ from fake-quantize modules", integer_ops_at_load=integer)


def ort_fp16(ctx: BuildContext) -> dict[str, Any]:
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = convert_float_to_float16(onnx.load(str(_ort_source(ctx))), keep_io_types=True)
    onnx.save(model, str(_ort_target(ctx)))
    return _ort_entry(ctx, note="fp16 weights; the CPU provider runs many ops in fp32 behind casts: a size recipe on CPU")


def ort_int8_dynamic(ctx: BuildContext) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    # Without VNNI, x86 int8 dot products (vpmaddubsw) can saturate on U8xS8 pairs; 7-bit weights avoid that.
    reduce_range = ctx.arch in ("x86_64", "AMD64") and not set(VNNI) & set(ctx.cpu_flags)
    _check_names(_ort_source(ctx), ctx.exclude)
    quantize_dynamic(
        str(_ort_source(ctx)), str(_ort_target(ctx)), per_channel=True, reduce_range=reduce_range,
        weight_type=QuantType.QInt8, nodes_to_exclude=list(ctx.exclude),
        # the fused graph holds ORT contrib ops whose output types the quantizer cannot infer without a default
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    why = "x86 without VNNI" if reduce_range else "VNNI/AMX present or not x86"
    return _ort_entry(ctx, per_channel=True, weight_type="S8", activation_type="U8", reduce_range=reduce_range,
                      reduce_range_reason=why)


class _FeedReader:
    """onnxruntime.quantization CalibrationDataReader over prepared feeds."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._it = iter(feeds)

    def get_next(self):
        return next(self._it, None)


def ort_int8_static(ctx: BuildContext) -> dict[str, Any]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    params = ctx.recipe.params
    work = ctx.staging / "_work"
    work.mkdir(parents=True, exist_ok=True)
    pre = work / "preprocessed.onnx"
    # symbolic shape inference fails on opset-17 exports; ONNX shape inference is enough for QDQ placement
    quant_pre_process(str(_ort_source(ctx)), str(pre), skip_symbolic_shape=True)
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    _check_names(pre, ctx.exclude)
    feeds = ctx.calibration
    if params["calibration_method"] != "minmax":
        # ORT's histogram calibrators stack every sample's outputs into one array, so they need one shape: pad
        # (mask 0) to the longest calibration text. MinMax reduces each sample on its own and keeps real lengths.
        feeds = _pad_to_longest(feeds, ctx.pad_id)
    quantize_static(
        str(pre), str(_ort_target(ctx)), _FeedReader(feeds), quant_format=QuantFormat.QDQ,
        per_channel=params["per_channel"], activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        op_types_to_quantize=list(params["op_types"]), calibrate_method=methods[params["calibration_method"]],
        nodes_to_exclude=list(ctx.exclude),
        extra_options={"CalibTensorRangeSymmetric": False},
    )
    return _ort_entry(ctx, format="QDQ", activation_type="U8", weight_type="S8", per_channel=params["per_channel"],
                      op_types=list(params["op_types"]), calibration_method=params["calibration_method"],
                      calibration_samples=len(ctx.calibration),
                      calibration_lengths="padded to the longest" if feeds is not ctx.calibration else "real")


def _check_names(onnx_path: Path, names: tuple[str, ...]) -> None:
    """Excluding a node that is not in the graph would quantize it silently: fail loudly instead."""
    if not names:
        return
    import onnx

    present = {n.name for n in onnx.load(str(onnx_path), load_external_data=False).graph.node}
    absent = [n for n in names if n not in present]
    if absent:
        raise RuntimeError(f"nodes to keep in float are not in the graph: {absent[:3]}")


def _pad_to_longest(feeds: list[dict[str, np.ndarray]], pad_id: int) -> list[dict[str, np.ndarray]]:
    longest = max(f["input_ids"].shape[1] for f in feeds)
    padded = []
    for f in feeds:
        extra = longest - f["input_ids"].shape[1]
        fill = {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 0}
        padded.append({k: np.pad(v, ((0, 0), (0, extra)), constant_values=fill[k]) for k, v in f.items()})
    return padded


def ort_weight_only(ctx: BuildContext) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    bits, block = ctx.recipe.params["bits"], ctx.recipe.params["block_size"]
    quantizer = MatMulNBitsQuantizer(onnx.load(str(_ort_source(ctx))), bits=bits, block_size=block, is_symmetric=True)
    quantizer.process()
    quantizer.model.save_model_to_file(str(_ort_target(ctx)))
    return _ort_entry(ctx, op="MatMulNBits", bits=bits, block_size=block, symmetric=True)


def _ov_model(ctx: BuildContext):
    import openvino as ov

    # OpenVINO cannot read ONNX Runtime's contrib ops: it always starts from the plain export, and fuses by itself.
    return ov.convert_model(str(ctx.plain_onnx))


def _ov_save(ctx: BuildContext, model, precision: str, compress_to_fp16: bool = False, **build: Any) -> dict[str, Any]:
    import openvino as ov

    xml = ctx.staging / OV_MODEL
    xml.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(xml), compress_to_fp16=compress_to_fp16)
    return {"model": OV_MODEL, "files": [OV_MODEL, OV_MODEL[:-4] + ".bin"],
            "options": {"inference_precision": precision}, "build": {"weights_fp16": compress_to_fp16, **build}}


def ov_fp32(ctx: BuildContext) -> dict[str, Any]:
    return _ov_save(ctx, _ov_model(ctx), "f32")


def ov_bf16(ctx: BuildContext) -> dict[str, Any]:
    return _ov_save(ctx, _ov_model(ctx), "bf16")


def ov_fp16(ctx: BuildContext) -> dict[str, Any]:
    return _ov_save(ctx, _ov_model(ctx), "f32", compress_to_fp16=True,
                    note="fp16 weights; the CPU plugin decompresses them and computes in f32: a size recipe on CPU")


def ov_qat(ctx: BuildContext) -> dict[str, Any]:
    return _ov_save(ctx, _ov_model(ctx), "f32", source="Q/DQ from fake-quantize modules")


def _nncf():
    import nncf

    nncf.set_log_level(logging.ERROR)
    return nncf


def ov_int8_static(ctx: BuildContext) -> dict[str, Any]:
    nncf = _nncf()
    scope = nncf.IgnoredScope(patterns=list(ctx.exclude), validate=True) if ctx.exclude else None
    model = nncf.quantize(_ov_model(ctx), nncf.Dataset(ctx.calibration), model_type=nncf.ModelType.TRANSFORMER,
                          subset_size=len(ctx.calibration), ignored_scope=scope)
    return _ov_save(ctx, model, "f32", tool="nncf.quantize", model_type="TRANSFORMER",
                    calibration_samples=len(ctx.calibration))


def ov_weight_only(ctx: BuildContext) -> dict[str, Any]:
    nncf = _nncf()
    bits, block = ctx.recipe.params["bits"], ctx.recipe.params["block_size"]
    if bits == 8:
        model = nncf.compress_weights(_ov_model(ctx), mode=nncf.CompressWeightsMode.INT8_ASYM)
        return _ov_save(ctx, model, "f32", tool="nncf.compress_weights", mode="INT8_ASYM")
    model = nncf.compress_weights(_ov_model(ctx), mode=nncf.CompressWeightsMode.INT4_SYM, group_size=block, ratio=1.0)
    return _ov_save(ctx, model, "f32", tool="nncf.compress_weights", mode="INT4_SYM", group_size=block, ratio=1.0)


HANDLERS: dict[tuple[str, str], Callable[[BuildContext], dict[str, Any]]] = {
    ("onnxruntime", "fp32"): ort_fp32,
    ("onnxruntime", "fp16"): ort_fp16,
    ("onnxruntime", "int8-dynamic"): ort_int8_dynamic,
    ("onnxruntime", "int8-static"): ort_int8_static,
    ("onnxruntime", "int8-qat"): ort_qat,
    ("onnxruntime", "int8-weight-only"): ort_weight_only,
    ("onnxruntime", "int4-weight-only"): ort_weight_only,
    ("openvino", "fp32"): ov_fp32,
    ("openvino", "bf16"): ov_bf16,
    ("openvino", "fp16"): ov_fp16,
    ("openvino", "int8-static"): ov_int8_static,
    ("openvino", "int8-qat"): ov_qat,
    ("openvino", "int8-weight-only"): ov_weight_only,
    ("openvino", "int4-weight-only"): ov_weight_only,
}


def build(backend: str, ctx: BuildContext) -> dict[str, Any]:
    """Build one backend's model under the context's recipe; returns its manifest entry."""
    return HANDLERS[(backend, ctx.recipe.name)](ctx)
