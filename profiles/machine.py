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


def cpu_info(cpuinfo: str | None = None) -> dict[str, object]:
    """CPU model, architecture, logical cores, and which ISA_FLAGS are present (from /proc/cpuinfo on Linux)."""
    text = cpuinfo
    if text is None:
        path = Path("/proc/cpuinfo")
        text = path.read_text(errors="replace") if path.exists() else ""
    model = ""
    flags: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key in ("model name", "hardware", "cpu model") and not model:
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    return {
        "model": model or platform.processor() or "unknown",
        "arch": platform.machine(),
        "cores": os.cpu_count() or 1,
        "flags": sorted(f for f in ISA_FLAGS if f in flags),
    }
