"""The recipe table: named, inert configs for what the graph becomes on each backend. Torch-free (the CLI lists it).

A recipe says which backends can build it (and why the others cannot), what the machine must have, whether it needs
calibration text, its parameters, and the fidelity floor its artifact must meet against PyTorch fp32 in the export
gate. The gate's floor only proves the artifact is not broken; whether a recipe keeps enough task accuracy is judged
on the user's data (`bertship eval`, `--max-accuracy-drop`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bertship.runtimes.errors import MachineError, UsageError
from bertship.runtimes.fidelity import Tolerance

CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
# Tasks whose outputs are vectors judged per text by cosine (--min-cosine, batch invariance); a sparse SPLADE vector
# and a text's per-token vectors included
EMBEDDING_TASKS = ("feature-extraction", "sentence-embedding", "sparse-embedding", "multi-vector")
# Batch invariance asked of every embedding artifact: a text embedded alone and the same text embedded among other
# texts (other lengths, padding) must agree to this cosine, or an index built in batches disagrees with queries
# embedded one at a time. Float and static int8 recipes measure >= 0.9995 on MiniLM; ORT dynamic int8 0.95-0.97.
MIN_BATCH_COSINE = 0.999
# int8-mixed's default target on embedding tasks: the lowest per-text cosine against fp32, alone and batched.
MIXED_MIN_COSINE = 0.99
# Retrieval tasks (runtimes.retrieval): the share of golden queries whose best document (reranker; MaxSim or sparse dot
# product over the golden texts) stays first, and the sparse top-10 terms kept. fp32 must keep every one; a quantized
# recipe may lose one decisive query in ten (--min-rank-agreement sets it).
RANK_AGREEMENT_FP32 = 1.0
RANK_AGREEMENT = 0.9
# What `--recipe auto` does, for `bertship recipes` (auto is not a recipe of its own: it chooses one).
AUTO_SUMMARY = ("build every recipe suited to the backends and this CPU, judge each against the target (--min-cosine "
                "for embeddings, else --max-accuracy-drop, default 1%), time each in its own process and keep the "
                "fastest that holds it; int8-dynamic is skipped for embedding tasks unless --allow-batch-dependence")


@dataclass(frozen=True)
class Recipe:
    """One recipe. `how` maps each supported backend to what is done; `refused` maps the others to the reason."""

    name: str
    summary: str
    how: dict[str, str]
    refused: dict[str, str]
    tolerance: Tolerance | None  # None: the family's fp32 tolerance
    needs_calibration: bool = False
    isa_any: tuple[str, ...] = ()  # the machine must have one of these CPU flags (empty: no requirement)
    isa_reason: str = ""
    params: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"name": self.name, "params": dict(self.params)}


# Floors measured against: ANCHORS.md §2 (trained MiniLM, mean (min) cosine vs fp32 on real sentences): weight-only
# int8 0.9995 (0.997), ORT dynamic int8 0.993 (0.988), nncf static int8 0.9916 (0.972), ORT static QDQ 0.944 (0.90).
# A floor sits below what a working recipe reaches and far above what a broken graph gives (cosine ~0).
_HALF = Tolerance(max_abs_diff=None, min_cosine=0.999, min_argmax_agreement=0.98, argmax_margin=0.05)
_INT8 = Tolerance(max_abs_diff=None, min_cosine=0.90, min_argmax_agreement=0.90, argmax_margin=0.2)
_INT8_WO = Tolerance(max_abs_diff=None, min_cosine=0.98, min_argmax_agreement=0.95, argmax_margin=0.1)
_INT4_WO = Tolerance(max_abs_diff=None, min_cosine=0.85, min_argmax_agreement=0.85, argmax_margin=0.3)

_NO_OV_DYNAMIC = ("OpenVINO has no offline dynamic int8 quantization — use int8-static (NNCF) or int8-weight-only "
                  "with --backends openvino")

RECIPES: dict[str, Recipe] = {
    r.name: r
    for r in (
        Recipe("fp32", "float32 weights and compute; the reference every other recipe is judged against",
               {"onnxruntime": "the exported graph as is (ORT fuses at session creation)",
                "openvino": "IR with fp32 weights, INFERENCE_PRECISION_HINT=f32"}, {}, None),
        Recipe("bf16", "bfloat16 compute on CPUs with AVX512_BF16 or AMX; fp32 weights on disk",
               {"openvino": "fp32 IR run with INFERENCE_PRECISION_HINT=bf16"},
               {"onnxruntime": "ONNX Runtime's CPU provider has no bf16 kernels for encoder graphs — use --backends openvino"},
               _HALF, isa_any=("avx512_bf16", "amx_bf16"),
               isa_reason="bf16 needs AVX512_BF16 or AMX-BF16; elsewhere the CPU plugin emulates it slower than fp32"),
        Recipe("fp16", "float16 weights (half the size); fp16 compute on GPUs, a size recipe on CPU (computes in fp32)",
               {"onnxruntime": "float16 conversion of the graph, float32 inputs and outputs kept",
                "openvino": "IR with fp16-compressed weights (the CPU plugin decompresses them to f32)"}, {}, _HALF),
        Recipe("int8-dynamic", "int8 weights per channel; activations quantized at run time with one scale per "
               "padded batch, so a text's output depends on its batch-mates and padding (refused for embedding tasks "
               "unless --allow-batch-dependence)",
               {"onnxruntime": "quantize_dynamic: per-channel S8 weights, U8 activations; 7-bit weights (reduce_range) when "
                               "built for x86 without VNNI"},
               {"openvino": _NO_OV_DYNAMIC}, _INT8, params={"per_channel": True, "weight_type": "S8"}),
        Recipe("int8-static", "int8 weights and activations with scales calibrated on text",
               {"onnxruntime": "quantize_static QDQ of MatMuls: U8 activations (S8 activations are 2-4x slower on "
                               "x86 CPUs), per-channel S8 weights",
                "openvino": "nncf.quantize(model_type=TRANSFORMER): SmoothQuant, bias correction"},
               {}, _INT8, needs_calibration=True,
               params={"calibration_method": "minmax", "per_channel": True, "activation_type": "U8",
                       "weight_type": "S8", "op_types": ["MatMul"]}),
        Recipe("int8-qat", "a quantization-aware-trained model (torch.ao fake-quantize modules): its learned scales "
               "become Q/DQ pairs and it runs as int8, no calibration",
               {"onnxruntime": "the Q/DQ graph as exported; ORT turns Q/DQ groups into int8 kernels at load",
                "openvino": "IR from the Q/DQ graph; the CPU plugin runs the FakeQuantize groups in int8"},
               {}, _INT8),
        Recipe("int8-mixed", "int8 where the measured sensitivity on the worst texts allows it, float for the rest: "
               "the all-int8 model's activation quantizers are removed group by group, most sensitive first, until the "
               "target holds (embeddings: --min-cosine, default 0.99 on every text alone and batched; classifiers: "
               "--max-accuracy-drop, default 1%)",
               {"onnxruntime": "quantize_static QDQ (U8 activations, per-channel S8 weights); float groups compute in "
                               "fp32 on int8 weights; calibration method measured (minmax, percentile)",
                "openvino": "nncf.quantize(model_type=TRANSFORMER); float groups compute in bf16 on CPUs with "
                            "AVX512_BF16/AMX (else f32) on int8 weights; SmoothQuant strength measured (0.95, 0.8, off)"},
               {}, _INT8, needs_calibration=True,
               params={"calibration_method": "minmax", "smooth_quant_alpha": 0.95, "per_channel": True,
                       "activation_type": "U8", "weight_type": "S8", "op_types": ["MatMul"]}),
        Recipe("int8-weight-only", "int8 weights, float compute: 4x smaller MatMul weights, near-fp32 accuracy",
               {"onnxruntime": "MatMulNBits (bits=8, block 32)", "openvino": "nncf.compress_weights(INT8_ASYM)"},
               {}, _INT8_WO, params={"bits": 8, "block_size": 32}),
        Recipe("int4-weight-only", "int4 weights in blocks, float compute: the smallest artifact",
               {"onnxruntime": "MatMulNBits (bits=4, block 32, symmetric)",
                "openvino": "nncf.compress_weights(INT4_SYM, group 32, ratio 1.0)"},
               {}, _INT4_WO, params={"bits": 4, "block_size": 32}),
    )
}


def get_recipe(name: str) -> Recipe:
    """The recipe called `name`, or UsageError listing the valid ones."""
    try:
        return RECIPES[name]
    except KeyError:
        raise UsageError(f"unknown recipe {name!r} — choose from: {', '.join(RECIPES)} (see `bertship recipes`)") from None


def check_recipe(recipe: Recipe, backends: tuple[str, ...], cpu_flags: list[str]) -> None:
    """Refuse a recipe a requested backend cannot build, or one this machine cannot run, with the reason."""
    for backend in backends:
        if backend in recipe.refused:
            raise UsageError(f"recipe {recipe.name!r} on {backend}: {recipe.refused[backend]}")
    if recipe.isa_any and not set(recipe.isa_any) & set(cpu_flags):
        raise MachineError(
            f"recipe {recipe.name!r} needs one of the CPU flags {', '.join(recipe.isa_any)}, which this machine lacks "
            f"({recipe.isa_reason}) — use fp32 or an int8 recipe here"
        )


def with_params(recipe: Recipe, **overrides: Any) -> Recipe:
    """A copy of the recipe with parameters changed; unknown parameters are refused by name."""
    unknown = sorted(k for k, v in overrides.items() if v is not None and k not in recipe.params)
    if unknown:
        raise UsageError(
            f"recipe {recipe.name!r} has no parameter {unknown[0]!r} — its parameters: {', '.join(recipe.params) or 'none'}"
        )
    method = overrides.get("calibration_method")
    if method is not None and method not in CALIBRATION_METHODS:
        raise UsageError(f"unknown calibration method {method!r} — choose from: {', '.join(CALIBRATION_METHODS)}")
    params = dict(recipe.params, **{k: v for k, v in overrides.items() if v is not None})
    return Recipe(recipe.name, recipe.summary, recipe.how, recipe.refused, recipe.tolerance, recipe.needs_calibration,
                  recipe.isa_any, recipe.isa_reason, params)


def on_class(recipe: str, backend: str, cls: str) -> str:
    """What `recipe` on `backend` does on a CPU of class `cls` (runtimes.cpuclass), for `bertship recipes`."""
    from bertship.runtimes.cpuclass import INT8_COMPUTE, no_gain

    slower = no_gain(cls, recipe, backend)
    if recipe not in INT8_COMPUTE:
        what = "float compute: no int8 arithmetic that differs between CPU classes"
    elif recipe == "int8-qat":
        what = "its trained 8-bit scales as they are" + (
            ": on x86 without VNNI, 8-bit weights can saturate the u8 x s8 pair sums (the gate measures what that "
            "does)" if cls == "x86-novnni" else "")
    elif cls == "x86-novnni":
        what = ("7-bit weights (" + ("reduce_range" if backend == "onnxruntime" else "NNCF overflow_fix=ENABLE")
                + "), so the 16-bit u8 x s8 pair sums of VPMADDUBSW cannot saturate")
    else:
        what = "8-bit weights; int8 products are summed exactly in 32 bits"
    if slower:
        what += f"; skipped by --recipe auto and profiles: {slower}"
    return what
