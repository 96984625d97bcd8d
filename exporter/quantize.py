"""Build stage: turn the fp32 ONNX export into each backend's model under a recipe.

One handler per (backend, recipe), looked up in HANDLERS; each writes its files into the staging directory and
returns the manifest entry for its backend. The backends' own tools do the work: onnxruntime.quantization and
onnxruntime.transformers for ONNX Runtime, openvino and nncf for OpenVINO.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from bertship.runtimes.backends import BACKENDS

from . import onnxio, qdq
from .recipes import Recipe, with_params

ORT_MODEL = BACKENDS["onnxruntime"].model_file
OV_MODEL = BACKENDS["openvino"].model_file
# What ONNX Runtime computes in under each recipe (it reports nothing itself): recorded as the runner's precision.
ORT_PRECISION = {"fp32": "fp32", "fp16": "fp16", "int8-dynamic": "int8", "int8-static": "int8", "int8-qat": "int8",
                 "int8-weight-only": "int8-weights", "int4-weight-only": "int4-weights", "int8-mixed": "int8+fp32"}
BF16 = ("avx512_bf16", "amx_bf16")
# int8-mixed: the quantization routes measured before the group search (the one whose all-int8 model scores best is
# kept). SmoothQuant strength on OpenVINO (nncf's default for transformers is 0.95; -1 turns it off); on ONNX Runtime,
# which has no SmoothQuant without neural-compressor, the calibration method (percentile clips rare extremes).
ROUTES: dict[str, list[dict[str, Any]]] = {
    "openvino": [{"smooth_quant_alpha": a} for a in (0.95, 0.8, -1.0)],
    "onnxruntime": [{"calibration_method": m} for m in ("minmax", "percentile")],
}


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
    target: str = "x86-vnni"  # runtimes.cpuclass: the CPU class whose int8 arithmetic the quantization parameters follow
    pad_id: int = 0
    # kept in float: MatMul node names (ORT) or name regexes (OpenVINO); for int8-mixed, group labels (mixed_groups)
    exclude: tuple[str, ...] = ()
    work: Path | None = None  # where int8-mixed keeps its all-int8 models between trials (default: staging/_work)
    fixed_params: tuple[str, ...] = ()  # recipe parameters the user set: int8-mixed does not vary them
    external_data: str = "auto"  # onnxio.MODES: where ONNX Runtime models keep their weights
    # ops whose node names start with this stay float under every int8 recipe: an early-exit graph's off-ramps
    # ("/exits/"), a few small ops per off-ramp (no speed to gain), so the only int8 error they see is the backbone's
    float_scope: str | None = None


def _scoped(ctx: BuildContext, graph: Path) -> list[str]:
    """Names of the ops under ctx.float_scope in an ONNX graph (none without a scope). ONNX Runtime's dynamic quantizer
    first rewrites each Gemm as `{name}_MatMul` + `{name}_Add` (and `{name}_Transpose`), so those names are excluded
    too: by its own name alone an off-ramp's Gemm would be quantized."""
    if not ctx.float_scope:
        return []
    import onnx

    names = []
    for n in onnx.load(str(graph), load_external_data=False).graph.node:
        if n.name.startswith(ctx.float_scope):
            names.append(n.name)
            if n.op_type == "Gemm":
                names += [f"{n.name}_MatMul", f"{n.name}_Add", f"{n.name}_Transpose"]
    return names


def _ort_source(ctx: BuildContext) -> Path:
    return ctx.fused_onnx if ctx.ort_graph == "fused" and ctx.fused_onnx is not None else ctx.plain_onnx


def _ort_entry(ctx: BuildContext, **build: Any) -> dict[str, Any]:
    """The manifest entry of the model a handler wrote, its weights first settled inline or in one data file."""
    target = onnxio.settle(ctx.staging / ORT_MODEL, ctx.external_data)
    files = [p.relative_to(ctx.staging).as_posix() for p in onnxio.files(target)]
    entry = {"model": ORT_MODEL, "files": files, "options": {"precision": ORT_PRECISION[ctx.recipe.name]},
             "build": {"graph": ctx.ort_graph, **build}}
    if len(files) > 1:
        entry["external_data"] = files[1]
    return entry


def seven_bit_weights(ctx: BuildContext) -> bool:
    """Whether int8 weights keep to 7 bits (ONNX Runtime reduce_range, NNCF overflow_fix): on x86 without VNNI, whose
    u8 x s8 kernels (VPMADDUBSW) saturate a pair of products past 32767; 255 x 63 x 2 fits."""
    return ctx.target == "x86-novnni"


def _int8_record(ctx: BuildContext) -> dict[str, Any]:
    seven = seven_bit_weights(ctx)
    return {"target_cpu": ctx.target, "weights_7bit": seven,
            "weights_7bit_reason": ("x86 without VNNI saturates 16-bit pair sums of u8 x s8 products" if seven else
                                    f"{ctx.target}: int8 products are summed exactly")}


def _external(ctx: BuildContext, source: Path | None = None) -> bool:
    """Whether ONNX Runtime's tools should write external data: when asked to, or when their input had to."""
    return ctx.external_data == "always" or bool(onnxio.external_files(source or _ort_source(ctx)))


def _ort_target(ctx: BuildContext) -> Path:
    path = ctx.staging / ORT_MODEL
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def ort_fp32(ctx: BuildContext) -> dict[str, Any]:
    onnxio.copy(_ort_source(ctx), _ort_target(ctx))
    return _ort_entry(ctx)


def ort_qat(ctx: BuildContext) -> dict[str, Any]:
    import onnxruntime as ort

    onnxio.copy(ctx.plain_onnx, _ort_target(ctx))
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
    onnxio.save(model, _ort_target(ctx), ctx.external_data)
    return _ort_entry(ctx, note="fp16 weights; the CPU provider runs many ops in fp32 behind casts: a size recipe on CPU")


def ort_int8_dynamic(ctx: BuildContext) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    reduce_range = seven_bit_weights(ctx)
    _check_names(_ort_source(ctx), ctx.exclude)
    quantize_dynamic(
        str(_ort_source(ctx)), str(_ort_target(ctx)), per_channel=True, reduce_range=reduce_range,
        weight_type=QuantType.QInt8, nodes_to_exclude=[*ctx.exclude, *_scoped(ctx, _ort_source(ctx))],
        use_external_data_format=_external(ctx),
        # the fused graph holds ORT contrib ops whose output types the quantizer cannot infer without a default
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return _ort_entry(ctx, per_channel=True, weight_type="S8", activation_type="U8", reduce_range=reduce_range,
                      **_int8_record(ctx),
                      activation_scale="one per padded batch (DynamicQuantizeLinear): a text's output depends on its "
                                       "batch-mates and padding; ONNX Runtime has no per-row dynamic int8 MatMul")


class _FeedReader:
    """onnxruntime.quantization CalibrationDataReader over prepared feeds; `set_range` lets quantize_static's
    CalibStridedMinMax option hand the calibrator one chunk at a time."""

    def __init__(self, feeds: list[dict[str, np.ndarray]]):
        self._feeds = feeds
        self.set_range(0, len(feeds))

    def __len__(self) -> int:
        return len(self._feeds)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self._feeds[start_index:end_index])

    def get_next(self):
        return next(self._it, None)


# ORT's histogram calibrators (entropy, percentile) keep every sample's every calibrated tensor until they build the
# histograms (onnxruntime #10503): MiniLM int8-static with percentile on 80 texts of ~200 tokens, padded to one length,
# peaked at 7.64 GB in the build stage. Fed CALIB_CHUNK samples at a time (ORT's CalibStridedMinMax, which every
# calibrator honours: the histograms are merged chunk by chunk), memory is bounded by one chunk: 1.19 GB (minmax on
# the same texts: 1.00 GB), and 45 s -> 16 s. Samples are sorted by length so each chunk is padded to its own longest.
CALIB_CHUNK = 4


def ort_int8_static(ctx: BuildContext) -> dict[str, Any]:
    return _ort_entry(ctx, **_ort_static(ctx, _ort_target(ctx), ctx.exclude))


def _ort_static(ctx: BuildContext, target: Path, exclude: tuple[str, ...]) -> dict[str, Any]:
    """quantize_static QDQ of the recipe's op types into `target`; returns what was done."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    params = ctx.recipe.params
    work = ctx.staging / "_work"
    work.mkdir(parents=True, exist_ok=True)
    pre = work / "preprocessed.onnx"
    # symbolic shape inference fails on opset-17 exports; ONNX shape inference is enough for QDQ placement
    big = _external(ctx)
    quant_pre_process(str(_ort_source(ctx)), str(pre), skip_symbolic_shape=True, save_as_external_data=big,
                      all_tensors_to_one_file=True, external_data_location=onnxio.data_file(pre).name)
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    _check_names(pre, exclude)
    feeds = ctx.calibration
    options: dict[str, Any] = {}
    if params["calibration_method"] != "minmax":
        # ORT's histogram calibrators stack a chunk's samples into one array, so a chunk needs one shape: pad (mask 0)
        # to the chunk's longest. MinMax reduces each sample on its own and keeps real lengths.
        feeds, options["CalibStridedMinMax"] = _pad_in_chunks(feeds, ctx.pad_id)
    quantize_static(
        str(pre), str(target), _FeedReader(feeds), quant_format=QuantFormat.QDQ,
        per_channel=params["per_channel"], activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
        op_types_to_quantize=list(params["op_types"]), calibrate_method=methods[params["calibration_method"]],
        nodes_to_exclude=[*exclude, *_scoped(ctx, pre)], reduce_range=seven_bit_weights(ctx),
        extra_options={"CalibTensorRangeSymmetric": False, **options}, use_external_data_format=big,
    )
    return _ort_static_record(ctx)


def _ort_static_record(ctx: BuildContext) -> dict[str, Any]:
    params = ctx.recipe.params
    padded = params["calibration_method"] != "minmax"
    return dict(format="QDQ", activation_type="U8", weight_type="S8", per_channel=params["per_channel"],
                op_types=list(params["op_types"]), calibration_method=params["calibration_method"],
                calibration_samples=len(ctx.calibration),
                calibration_lengths=f"padded to the longest of each {_chunk(len(ctx.calibration))}, sorted by "
                                    "length" if padded else "real",
                reduce_range=seven_bit_weights(ctx), **_int8_record(ctx))


def _check_names(onnx_path: Path, names: tuple[str, ...]) -> None:
    """Excluding a node that is not in the graph would quantize it silently: fail loudly instead."""
    if not names:
        return
    import onnx

    present = {n.name for n in onnx.load(str(onnx_path), load_external_data=False).graph.node}
    absent = [n for n in names if n not in present]
    if absent:
        raise RuntimeError(f"nodes to keep in float are not in the graph: {absent[:3]}")


def _chunk(n: int) -> int:
    return max(d for d in range(1, CALIB_CHUNK + 1) if n % d == 0)


def _pad_in_chunks(feeds: list[dict[str, np.ndarray]], pad_id: int) -> tuple[list[dict[str, np.ndarray]], int]:
    """The feeds sorted by length and padded to the longest of each chunk, and the chunk size: the largest divisor of
    their number up to CALIB_CHUNK (ORT's stride must divide it)."""
    chunk = _chunk(len(feeds))
    ordered = sorted(feeds, key=lambda f: f["input_ids"].shape[1])
    fill = {"input_ids": pad_id, "attention_mask": 0, "token_type_ids": 0}
    padded = []
    for start in range(0, len(ordered), chunk):
        group = ordered[start:start + chunk]
        longest = group[-1]["input_ids"].shape[1]
        padded += [{k: np.pad(v, ((0, 0), (0, longest - v.shape[1])), constant_values=fill[k]) for k, v in f.items()}
                   for f in group]
    return padded, chunk


def ort_weight_only(ctx: BuildContext) -> dict[str, Any]:
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import MatMulNBitsQuantizer

    bits, block = ctx.recipe.params["bits"], ctx.recipe.params["block_size"]
    quantizer = MatMulNBitsQuantizer(onnx.load(str(_ort_source(ctx))), bits=bits, block_size=block, is_symmetric=True)
    quantizer.process()
    quantizer.model.save_model_to_file(str(_ort_target(ctx)), _external(ctx))
    return _ort_entry(ctx, op="MatMulNBits", bits=bits, block_size=block, symmetric=True)


def _ov_model(ctx: BuildContext):
    import openvino as ov

    # OpenVINO cannot read ONNX Runtime's contrib ops: it always starts from the plain export, and fuses by itself.
    # Converted once per export: searches build many trials from it.
    ir = _work(ctx) / "plain-ov" / "model.xml"
    if not ir.exists():
        ir.parent.mkdir(parents=True, exist_ok=True)
        ov.save_model(ov.convert_model(str(ctx.plain_onnx)), str(ir), compress_to_fp16=False)
    return ov.Core().read_model(str(ir))


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
    return _ov_save(ctx, _ov_static(ctx, ctx.exclude), "f32", tool="nncf.quantize", model_type="TRANSFORMER",
                    calibration_samples=len(ctx.calibration), **_ov_overflow_record(ctx))


def _ov_overflow_record(ctx: BuildContext) -> dict[str, Any]:
    return {"overflow_fix": "enable" if seven_bit_weights(ctx) else "first_layer_only", **_int8_record(ctx)}


def _ov_static(ctx: BuildContext, exclude: tuple[str, ...], smooth_quant_alpha: float | None = None):
    """nncf.quantize (TRANSFORMER preset: SmoothQuant, fast bias correction) of the plain export; `exclude`: name
    regexes of ops NNCF must leave in float."""
    nncf = _nncf()
    patterns = [*exclude, *([f".*{re.escape(ctx.float_scope)}.*"] if ctx.float_scope else [])]
    scope = nncf.IgnoredScope(patterns=patterns, validate=True) if patterns else None
    from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters, AdvancedSmoothQuantParameters,
                                                        OverflowFix)

    advanced: dict[str, Any] = {}
    if smooth_quant_alpha is not None:
        advanced["smooth_quant_alphas"] = AdvancedSmoothQuantParameters(matmul=smooth_quant_alpha)
    if seven_bit_weights(ctx):  # every weight quantizer at 7 bits, not only the first layer's (nncf's default)
        advanced["overflow_fix"] = OverflowFix.ENABLE
    extra = {"advanced_parameters": AdvancedQuantizationParameters(**advanced)} if advanced else {}
    return nncf.quantize(_ov_model(ctx), nncf.Dataset(ctx.calibration), model_type=nncf.ModelType.TRANSFORMER,
                         subset_size=len(ctx.calibration), ignored_scope=scope, **extra)


def _mixed_full(ctx: BuildContext, backend: str) -> Path:
    """The all-int8 model of int8-mixed under the recipe's route, built once per export and kept in the work folder
    beside the float model it was quantized from: every trial of the group search edits this one model."""
    params = ctx.recipe.params
    route = params["calibration_method"] if backend == "onnxruntime" else f"sq{params['smooth_quant_alpha']:g}"
    path = _work(ctx) / "mixed" / f"{backend}-{route}.{'onnx' if backend == 'onnxruntime' else 'xml'}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        if backend == "onnxruntime":
            _ort_static(ctx, path, ())
            onnxio.copy(onnxio.settle(ctx.staging / "_work" / "preprocessed.onnx", "auto"), _mixed_float(ctx, backend))
        else:
            import openvino as ov

            ov.save_model(_ov_static(ctx, (), params["smooth_quant_alpha"]), str(path), compress_to_fp16=False)
    return path


def _mixed_float(ctx: BuildContext, backend: str) -> Path:
    """The float model int8-mixed quantized: ORT's pre-processed graph, or OpenVINO's conversion of the export."""
    if backend == "onnxruntime":
        return _work(ctx) / "mixed" / "onnxruntime-float.onnx"
    _ov_model(ctx)
    return _work(ctx) / "plain-ov" / "model.xml"


def _work(ctx: BuildContext) -> Path:
    return ctx.work or ctx.staging / "_work"


def mixed_groups(backend: str, ctx: BuildContext) -> qdq.Groups:
    """int8-mixed's search groups: the activation quantizers of its all-int8 model by layer and reading module, each
    with the ops that read them."""
    path = _mixed_full(ctx, backend)
    if backend == "onnxruntime":
        import onnx

        return qdq.onnx_groups(onnx.load(str(path)), tuple(ctx.recipe.params["op_types"]))
    import openvino as ov

    return qdq.ov_groups(ov.Core().read_model(str(path)))


def _mixed_model(backend: str, ctx: BuildContext):
    """The all-int8 model with the groups named in ctx.exclude kept in float (qdq.onnx_float_ops / ov_float_ops)."""
    table = mixed_groups(backend, ctx)
    unknown = [g for g in ctx.exclude if g not in table]
    if unknown:
        raise RuntimeError(f"groups to keep in float are not in the quantized model: {unknown[:3]}")
    quantizers = [q for g in ctx.exclude for q in table[g][0]]
    ops = [o for g in ctx.exclude for o in table[g][1]]
    if backend == "onnxruntime":
        import onnx

        return qdq.onnx_float_ops(onnx.load(str(_mixed_full(ctx, backend))),
                                  onnx.load(str(_mixed_float(ctx, backend))), quantizers, ops)
    import openvino as ov

    core = ov.Core()
    return qdq.ov_float_ops(core.read_model(str(_mixed_full(ctx, backend))),
                            core.read_model(str(_mixed_float(ctx, backend))), quantizers, ops)


def routes(backend: str, recipe: Recipe, fixed: tuple[str, ...] = ()) -> list[Recipe]:
    """The recipe under each quantization route worth measuring: one, the recipe itself, unless it is int8-mixed and
    the user did not set the route's parameter (`fixed`: parameters given on the command line)."""
    if recipe.name != "int8-mixed" or any(k in fixed for r in ROUTES[backend] for k in r):
        return [recipe]
    return [with_params(recipe, **route) for route in ROUTES[backend]]


def ort_int8_mixed(ctx: BuildContext) -> dict[str, Any]:
    onnxio.save(_mixed_model("onnxruntime", ctx), _ort_target(ctx), ctx.external_data)
    return _ort_entry(ctx, **_ort_static_record(ctx), float_groups=len(ctx.exclude))


def _ov_mixed_precision(ctx: BuildContext) -> str:
    # what stays float runs in bf16 where the CPU has it (AMX/AVX512_BF16), else in f32; every x86 CPU with bf16 has
    # VNNI, so an artifact built for x86 without VNNI keeps f32
    return "bf16" if set(BF16) & set(ctx.cpu_flags) and ctx.target != "x86-novnni" else "f32"


def ov_int8_mixed(ctx: BuildContext) -> dict[str, Any]:
    return _ov_save(ctx, _mixed_model("openvino", ctx), _ov_mixed_precision(ctx), tool="nncf.quantize",
                    model_type="TRANSFORMER", smooth_quant_alpha=ctx.recipe.params["smooth_quant_alpha"],
                    calibration_samples=len(ctx.calibration), float_groups=len(ctx.exclude), **_ov_overflow_record(ctx))


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
    ("onnxruntime", "int8-mixed"): ort_int8_mixed,
    ("openvino", "fp32"): ov_fp32,
    ("openvino", "bf16"): ov_bf16,
    ("openvino", "fp16"): ov_fp16,
    ("openvino", "int8-static"): ov_int8_static,
    ("openvino", "int8-qat"): ov_qat,
    ("openvino", "int8-weight-only"): ov_weight_only,
    ("openvino", "int4-weight-only"): ov_weight_only,
    ("openvino", "int8-mixed"): ov_int8_mixed,
}


def build(backend: str, ctx: BuildContext) -> dict[str, Any]:
    """Build one backend's model under the context's recipe; returns its manifest entry."""
    return HANDLERS[(backend, ctx.recipe.name)](ctx)
