"""Plots of benchmark results (needs the `plots` extra: matplotlib). Imported only when a plot is asked for."""

from __future__ import annotations

from pathlib import Path


def latency_distribution(runs: dict[str, dict[str, list[float]]], path: Path, title: str) -> Path:
    """One box plot panel per shape: the raw millisecond samples of every variant side by side."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shapes = sorted({s for samples in runs.values() for s in samples}, key=lambda k: tuple(map(int, k.split("x"))))
    fig, axes = plt.subplots(1, len(shapes), figsize=(4.5 * len(shapes), 3.6), squeeze=False)
    for ax, shape in zip(axes[0], shapes):
        names = [n for n in runs if shape in runs[n]]
        ax.boxplot([runs[n][shape] for n in names], showfliers=True, whis=(5, 95))
        ax.set_xticks(range(1, len(names) + 1), names, rotation=20, ha="right", fontsize=8)
        ax.set_title(f"batch x sequence = {shape}", fontsize=9)
        ax.set_ylabel("latency per call (ms)")
        ax.set_ylim(bottom=0)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
