"""CPU classes for int8: which integer arithmetic a runtime's int8 kernels do on this machine. Torch-free.

An int8 artifact computes different numbers on different CPUs. x86 CPUs with VNNI (AVX-512 VNNI, AVX-VNNI) or AMX
multiply u8 x s8 into 32-bit sums exactly. x86 CPUs without VNNI (AVX2, or AVX-512 without VNNI: AMD EPYC Naples,
Rome, Milan, Intel Skylake-SP and earlier) use VPMADDUBSW, whose 16-bit sums of two products saturate: 255 x 127 x 2
does not fit. ONNX Runtime (MLAS) and OpenVINO (oneDNN) both pick the kernel at run time. ARM64 int8 kernels need the
Armv8.2 dot product (SDOT/UDOT) to beat float.

The class is measured, not read from /proc/cpuinfo: `runtime_class(backend)` runs one tiny int8 MatMul whose exact
result only a non-saturating kernel gives. That is what the backend's kernels really do here, also where the ISA they
see is narrower than the CPU's (OpenVINO under ONEDNN_MAX_CPU_ISA=AVX2, ONNX Runtime under qemu -cpu Haswell: the
two ways this project tests the no-VNNI class on a VNNI machine).
"""

from __future__ import annotations

import base64
import functools
import platform
from dataclasses import dataclass

X86 = ("x86_64", "AMD64", "i686", "x86")
ARM64 = ("aarch64", "arm64")
VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class CpuClass:
    name: str
    what: str
    int8: str  # what int8 arithmetic does there, in one line


CLASSES: dict[str, CpuClass] = {
    c.name: c
    for c in (
        CpuClass("x86-vnni", "x86 with AVX-512 VNNI, AVX-VNNI or AMX",
                 "u8 x s8 products summed exactly in 32 bits (VPDPBUSD / AMX tiles)"),
        CpuClass("x86-novnni", "x86 without VNNI: AVX2, or AVX-512 without VNNI (EPYC Naples/Rome/Milan, Skylake-SP)",
                 "u8 x s8 pairs summed in 16 bits with saturation (VPMADDUBSW): 7-bit weights (reduce_range, "
                 "NNCF overflow_fix) keep the sums exact"),
        CpuClass("arm64-dot", "ARM64 with the Armv8.2 int8 dot product (asimddp; i8mm speeds it up further)",
                 "s8/u8 dot products summed exactly in 32 bits (SDOT/UDOT, SMMLA)"),
        CpuClass("arm64", "ARM64 without the dot product (Armv8.0: Cortex-A53/A57/A72)",
                 "widening multiplies; int8 rarely beats float there"),
        CpuClass("other", "another architecture", "whatever the runtime's reference kernels do"),
    )
}
# The classes an artifact can be built for with --target-cpu (the machine at hand is one of them).
TARGETS = ("x86-vnni", "x86-novnni", "arm64-dot", "arm64")


def check_target(name: str) -> str:
    """The class name itself, or UsageError listing the valid ones."""
    from .errors import UsageError

    if name not in TARGETS:
        raise UsageError(f"unknown --target-cpu {name!r} — choose from: {', '.join(TARGETS)} (`bertship recipes` "
                         "says what each does)")
    return name


def class_of(arch: str, flags: list[str] | tuple[str, ...] | set[str]) -> str:
    """The class a CPU's architecture and /proc/cpuinfo flags name (for records and for machines not at hand)."""
    flags = set(flags)
    if arch in X86:
        return "x86-vnni" if flags & set(VNNI_FLAGS) else "x86-novnni"
    if arch in ARM64:
        return "arm64-dot" if "asimddp" in flags else "arm64"
    return "other"


def flags_class() -> str:
    """This machine's class from /proc/cpuinfo."""
    from bertship.profiles.machine import cpu_info

    info = cpu_info()
    return class_of(str(info["arch"]), info["flags"])


# The probe: a [4 x K] u8 row of 255s times a [K x 8] s8 column of 127s. Exact: 255 * 127 * K; a saturating kernel
# caps each pair of products at 32767, giving 32767 * K / 2.
_K = 64
EXACT = 255 * 127 * _K


def _probe_model() -> bytes:
    """A QDQ MatMul (ONNX): both runtimes turn it into their int8 GEMM, as they do a quantized encoder's MatMuls."""
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("QuantizeLinear", ["x", "sx", "zx"], ["xq"]),
             helper.make_node("DequantizeLinear", ["xq", "sx", "zx"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "sw", "zw"], ["wd"]),
             helper.make_node("MatMul", ["xd", "wd"], ["y"])]
    inits = [numpy_helper.from_array(np.array(1.0, np.float32), "sx"),
             numpy_helper.from_array(np.array(0, np.uint8), "zx"),
             numpy_helper.from_array(np.full((_K, 8), 127, np.int8), "w"),
             numpy_helper.from_array(np.array(1.0, np.float32), "sw"),
             numpy_helper.from_array(np.array(0, np.int8), "zw")]
    graph = helper.make_graph(nodes, "int8_probe", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4, _K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    return model.SerializeToString()


# _probe_model()'s bytes, so the runtime needs no onnx package (tests/test_cpuclass.py checks they are equal).
_PROBE_B64 = (
    "CAg69AUKHwoBeAoCc3gKAnp4EgJ4cSIOUXVhbnRpemVMaW5lYXIKIgoCeHEKAnN4CgJ6eBICeGQiEERlcXVhbnRpemVMaW5lYXIKIQoBdwoCc3cKAnp3"
    "EgJ3ZCIQRGVxdWFudGl6ZUxpbmVhcgoTCgJ4ZAoCd2QSAXkiBk1hdE11bBIKaW50OF9wcm9iZSoMEAFCAnN4SgQAAIA/KgkQAkICenhKAQAqjAQIQAgI"
    "EANCAXdKgAR/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/"
    "f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/"
    "f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/"
    "f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/"
    "f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/"
    "f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/f39/fyoM"
    "EAFCAnN3SgQAAIA/KgkQA0ICendKAQBaEwoBeBIOCgwIARIICgIIBAoCCEBiEwoBeRIOCgwIARIICgIIBAoCCAhCBAoAEA0="
)


def probe_value(backend: str) -> float:
    """The probe's output on `backend` here: EXACT, or less where the int8 kernel saturates."""
    import numpy as np

    x = np.full((4, _K), 255.0, np.float32)
    if backend == "onnxruntime":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.log_severity_level = 3
        so.intra_op_num_threads = 1
        session = ort.InferenceSession(base64.b64decode(_PROBE_B64), so, providers=["CPUExecutionProvider"])
        return float(session.run(None, {"x": x})[0][0, 0])
    if backend == "openvino":
        import openvino as ov

        core = ov.Core()
        model = core.read_model(base64.b64decode(_PROBE_B64), b"")
        compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1})
        return float(compiled(x)[0][0, 0])
    raise ValueError(f"no int8 probe for backend {backend!r}")


@functools.cache
def runtime_class(backend: str) -> str:
    """The class of `backend`'s int8 kernels in this process: measured on x86 (a few ms, once per process), from
    /proc/cpuinfo elsewhere."""
    arch = platform.machine()
    if arch not in X86:
        return flags_class()
    return "x86-vnni" if probe_value(backend) == EXACT else "x86-novnni"


def describe(name: str) -> str:
    c = CLASSES[name]
    return f"{c.name} ({c.what}): {c.int8}"


# Recipes whose kernels compute in int8 (weight-only recipes store int8 weights but compute in float).
INT8_COMPUTE = ("int8-dynamic", "int8-static", "int8-mixed", "int8-qat")


def computes_int8(manifest: dict) -> bool:
    return manifest.get("recipe", {}).get("name") in INT8_COMPUTE


def recorded(manifest: dict, backend: str) -> tuple[str, list[str]]:
    """(the class a backend's model was built for, the classes it was verified on) from the manifest; artifacts made
    before classes were recorded count as built for and verified on the class of their build CPU's flags."""
    entry = manifest.get("backends", {}).get(backend, {}).get("cpu_class")
    if entry:
        return entry["target"], [v["class"] for v in entry.get("verified_on", [])]
    cpu = manifest.get("environment", {}).get("cpu", {})
    built = class_of(str(cpu.get("arch", "")), cpu.get("flags", []))
    return built, [built]


# Recipes that cannot beat fp32 on a class, as measured (MiniLM embeddings on held-out real text, batch 32, 2 threads,
# each variant in its own process, x sentence-transformers' PyTorch encode in the same run; 2-core AMD EPYC Naples,
# AVX2 + FMA only, 2026-12-01, ANCHORS.md §7). `--recipe auto` and profiles skip them there and say why; asked for by
# name, they are still built.
NO_GAIN: dict[str, dict[tuple[str, str], str]] = {
    "x86-novnni": {
        ("int8-static", "onnxruntime"): "ONNX Runtime static int8 ran at 0.94-0.98x the same fp32 graph",
        ("int8-mixed", "onnxruntime"): "int8-mixed on ONNX Runtime 1.68x vs fp32 1.71x sentence-transformers",
        ("int8-static", "openvino"): "static int8 on OpenVINO 0.50x vs its fp32 1.16x sentence-transformers "
                                     "(export_static_quantized_openvino_model)",
        ("int8-mixed", "openvino"): "int8-mixed on OpenVINO 0.98x vs fp32 1.86x sentence-transformers",
        ("int8-weight-only", "openvino"): "int8-weight-only on OpenVINO 1.64x vs fp32 1.86x sentence-transformers",
    },
}


def no_gain(cls: str, recipe: str, backend: str) -> str | None:
    """Why `recipe` on `backend` cannot beat fp32 on class `cls` (a measured fact), or None."""
    why = NO_GAIN.get(cls, {}).get((recipe, backend))
    return None if why is None else f"on {cls} CPUs {why} (measured on an AMD EPYC with AVX2 only)"


@dataclass(frozen=True)
class Emulation:
    """How to run a backend's int8 kernels of another class on this machine: a command prefix and environment."""

    prefix: tuple[str, ...]
    env: dict[str, str]
    how: str
    slow: bool = False  # instruction-set emulation: the export checks the golden texts only, not the length sweep


def emulation(backend: str, cls: str) -> Emulation | None:
    """A way to run `backend` with the int8 kernels of class `cls` here, or None (only x86-novnni on an x86 machine):
    OpenVINO's CPU plugin held to AVX2 by oneDNN's ONEDNN_MAX_CPU_ISA (native speed); ONNX Runtime, whose MLAS reads
    CPUID itself, under qemu-x86_64 -cpu Haswell (a CPU without AVX-512 or VNNI; slow, functional). Both were checked
    to give the saturated result of VPMADDUBSW on the probe (runtime_class reports x86-novnni under them)."""
    import os
    import shutil

    if cls != "x86-novnni" or platform.machine() not in X86:
        return None
    if backend == "openvino":
        return Emulation((), {"ONEDNN_MAX_CPU_ISA": "AVX2"}, "OpenVINO's AVX2 kernels (ONEDNN_MAX_CPU_ISA=AVX2)")
    if backend == "onnxruntime":
        qemu = os.environ.get("BERTSHIP_QEMU_X86_64") or shutil.which("qemu-x86_64-static") or shutil.which("qemu-x86_64")
        if qemu:
            return Emulation((qemu, "-cpu", "Haswell"), {}, "ONNX Runtime's AVX2 kernels under qemu-x86_64 -cpu Haswell",
                             slow=True)
    return None
