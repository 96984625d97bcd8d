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


def latency_vs_shape(results: dict, path: Path, title: str) -> Path:
    """p50 latency (bars: p10-p90) against batch size and against sequence length, one line per job."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for axis, (ax, label) in enumerate(zip(axes, ("batch size", "sequence length"))):
        for job_id, record in results["jobs"].items():
            points: dict[int, list[tuple[int, dict]]] = {}
            for shape, s in record["shapes"].items():
                if shape == "text":
                    continue
                b, q = (int(x) for x in shape.split("x"))
                x, other = (b, q) if axis == 0 else (q, b)
                points.setdefault(other, []).append((x, s["summary"]))
            for other, line in sorted(points.items()):
                if len(line) < 2:
                    continue
                line.sort(key=lambda p: p[0])
                xs = [p[0] for p in line]
                mid = [p[1]["p50"] for p in line]
                err = [[p[1]["p50"] - p[1]["min"] for p in line], [p[1]["p90"] - p[1]["p50"] for p in line]]
                fixed = "seq" if axis == 0 else "batch"
                ax.errorbar(xs, mid, yerr=err, marker="o", capsize=3, label=f"{job_id} ({fixed} {other})")
        ax.set_xlabel(label)
        ax.set_ylabel("latency per call (ms), p50 with min..p90")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_plots(results: dict, folder: Path) -> list[Path]:
    """latency_distribution.png (every shape) and, for a batch or sequence sweep, latency_vs_shape.png."""
    runs = {job_id: {shape: [x for b in s["blocks"] if b["kept"] for x in b["ms"]]
                     for shape, s in r["shapes"].items() if shape != "text"}
            for job_id, r in results["jobs"].items()}
    title = f"profile {results['profile']['name']} — {results['machine'].get('model')}"
    paths = []
    if any(runs.values()):
        paths.append(latency_distribution(runs, Path(folder) / "latency_distribution.png", title))
    shapes = [tuple(map(int, k.split("x"))) for k in results["workload"]["shapes"]]
    swept = any(sum(1 for s in shapes if s[1 - i] == fixed) > 1 for i in (0, 1) for fixed in {s[1 - i] for s in shapes})
    if swept:  # a line needs two batch sizes at one length, or two lengths at one batch size
        paths.append(latency_vs_shape(results, Path(folder) / "latency_vs_shape.png", title))
    return paths
