"""How much of the CPU other processes took while a block was timed, from /proc/stat. Stdlib only.

On a shared 2-core machine another process slows a timed block 2-3x (ANCHORS.md §3). Foreign load is what the whole
machine was busy with (steal time included: the hypervisor giving the cores to another guest) minus this process's
own CPU time, as a share of the machine's capacity over the block's wall time.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

_STAT = Path("/proc/stat")
MIN_WALL_S = 0.1


def _busy_s() -> float | None:
    """Seconds the machine's CPUs have been busy since boot (user, nice, system, irq, softirq, steal), or None."""
    try:
        fields = _STAT.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:9]]  # user nice system idle iowait irq softirq steal
    busy = ticks[0] + ticks[1] + ticks[2] + ticks[5] + ticks[6] + ticks[7]
    return busy / os.sysconf("SC_CLK_TCK")


def _capacity() -> int:
    """CPUs counted in /proc/stat (the whole machine: foreign load anywhere competes for memory and caches too)."""
    try:
        return max(1, sum(1 for line in _STAT.read_text().splitlines() if line[:3] == "cpu" and line[3:4].isdigit()))
    except OSError:
        return os.cpu_count() or 1


class LoadWatch:
    """Start before a timed block, `foreign()` after it: the share of CPU capacity other processes used meanwhile."""

    capacity = _capacity()

    def __init__(self) -> None:
        self.wall = time.perf_counter()
        self.own = time.process_time()
        self.busy = _busy_s()

    def foreign(self) -> float | None:
        """Foreign CPU share in [0, 1] since construction; None where /proc/stat cannot be read or the block was too
        short to tell (/proc/stat counts 10 ms ticks: one tick is 5 % of a 0.1 s block on 2 CPUs)."""
        busy = _busy_s()
        wall = time.perf_counter() - self.wall
        if busy is None or self.busy is None or wall < MIN_WALL_S:
            return None
        other = (busy - self.busy) - (time.process_time() - self.own)
        return min(1.0, max(0.0, other / (wall * self.capacity)))
