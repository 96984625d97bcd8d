"""Facts about this machine that decide what a profile can expect: CPU model, ISA flags, cores. Stdlib only."""

from __future__ import annotations

import os
import platform
from pathlib import Path

# The flags that change which kernels the runtimes can use for transformer encoders.
ISA_FLAGS = (
    "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16",
    "amx_tile", "amx_int8", "amx_bf16",
    # ARM (from /proc/cpuinfo "Features"): int8 dot product, int8 matrix multiply, bf16, SVE
    "asimd", "asimddp", "i8mm", "bf16", "sve", "sve2",
)


# Arm Ltd. cores (CPU implementer 0x41) by "CPU part": ARM Linux names no model, and baselines are matched by it.
ARM_PARTS = {
    "0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57", "0xd08": "Cortex-A72",
    "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76", "0xd0c": "Neoverse-N1", "0xd0d": "Cortex-A77",
    "0xd40": "Neoverse-V1", "0xd41": "Cortex-A78", "0xd44": "Cortex-X1", "0xd46": "Cortex-A510", "0xd47": "Cortex-A710",
    "0xd48": "Cortex-X2", "0xd49": "Neoverse-N2", "0xd4d": "Cortex-A715", "0xd4e": "Cortex-X3", "0xd4f": "Neoverse-V2",
}


def cpu_info(cpuinfo: str | None = None) -> dict[str, object]:
    """CPU model, architecture, logical cores, and which ISA_FLAGS are present (from /proc/cpuinfo on Linux)."""
    text = cpuinfo
    if text is None:
        path = Path("/proc/cpuinfo")
        text = path.read_text(errors="replace") if path.exists() else ""
    model = ""
    parts: list[str] = []
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
        elif key == "cpu part" and value.strip() not in parts:
            parts.append(value.strip())
    if not model and parts:  # big.LITTLE chips list several parts
        model = "ARM " + " + ".join(ARM_PARTS.get(p, f"CPU part {p}") for p in parts)
    return {
        "model": model or platform.processor() or "unknown",
        "arch": platform.machine(),
        "cores": os.cpu_count() or 1,
        "flags": sorted(f for f in ISA_FLAGS if f in flags),
    }


def usable_cores() -> int:
    """Cores this process may run on (its CPU affinity, which a container or taskset can narrow), else all."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def gpu_names(timeout_s: float = 10.0) -> list[str]:
    """NVIDIA GPUs that `nvidia-smi -L` lists here; empty when there is no nvidia-smi or it fails."""
    import shutil
    import subprocess

    exe = shutil.which("nvidia-smi")
    if exe is None:
        return []
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=timeout_s, check=False).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.split(":", 1)[1].split("(UUID")[0].strip() for line in out.splitlines() if line.startswith("GPU ")]


def ort_providers() -> list[str]:
    """ONNX Runtime's execution providers here (empty when onnxruntime is not installed); imports it only now."""
    try:
        import onnxruntime
    except ImportError:
        return []
    return list(onnxruntime.get_available_providers())


def machine_facts() -> dict[str, object]:
    """What a profile is checked against: cpu_info() plus usable cores, ONNX Runtime providers and NVIDIA GPUs."""
    return {**cpu_info(), "usable_cores": usable_cores(), "providers": ort_providers(), "gpus": gpu_names()}


def package_versions(names: tuple[str, ...]) -> dict[str, str | None]:
    """Installed version of each distribution (None when absent): recorded beside every artifact and number."""
    from importlib import metadata

    versions: dict[str, str | None] = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def _status_mb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def peak_rss_mb() -> float:
    """This process's peak resident memory in MB.

    VmHWM, not getrusage's ru_maxrss: Linux keeps ru_maxrss across fork+exec, so a worker started by a large parent
    (one that just ran torch) would report the parent's peak as its own.
    """
    peak = _status_mb("VmHWM:")
    if peak is not None:
        return peak
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def rss_mb() -> float | None:
    """This process's resident memory now, in MB (VmRSS; None where /proc is absent)."""
    return _status_mb("VmRSS:")


def reset_peak_rss() -> bool:
    """Start a new peak for peak_rss_mb() (Linux: writing 5 to /proc/self/clear_refs resets VmHWM to the current
    RSS). False where that is not possible: peaks then run from the process start."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def available_memory_mb() -> float | None:
    """Memory the kernel says a new allocation can get without swapping (MemAvailable), in MB; None if unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None
