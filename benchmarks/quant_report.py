"""Table and plot of benchmarks/quantization.py results (numbers stay raw floats until here)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

FP32 = "bertship fp32 [onnxruntime]"


def markdown(r: dict[str, Any]) -> str:
    """The classification table (accuracy, % of fp32, latency, speed-up vs PyTorch) and the embedding table."""
    cls = r["classification"]
    base_acc = cls.get(FP32, {}).get("accuracy")
    torch = cls.get("PyTorch eager fp32", {}).get("p50_ms", {})
    cpu = r["machine"]
    lines = [f"Machine: {cpu['model']} ({cpu['arch']}, {cpu['cores']} cores; {' '.join(cpu['flags'])}), "
             f"{r['threads']} threads; {r['created']}; `{r['command']}` ({r['minutes']:.0f} min).", "",
             "Classifier: all-MiniLM-L6-v2 fine-tuned on the MR train split (benchmarks/baselines.py `finetune`); test split "
             f"{len(r.get('test', [])) or 1057} sentences. p50 over two interleaved passes, each variant in its own process"
             + _load_note(r) + ".",
             "", "| variant | backend | accuracy | % of fp32 | b1 real len ms | b1×128 ms | b8×128 ms | "
             "× PyTorch (b1×128) | size MB |", "|---|---|---|---|---|---|---|---|---|"]
    rows = sorted(cls.items(), key=lambda kv: kv[1]["p50_ms"].get("1x128", 1e9))
    for name, v in rows:
        acc = v.get("accuracy")
        pct = f"{100 * acc / base_acc:.1f} %" if acc is not None and base_acc else "—"
        p = v["p50_ms"]
        speed = f"{torch['1x128'] / p['1x128']:.2f}×" if torch and "1x128" in p else "—"
        size = f"{v['size_bytes'] / 1e6:.1f}" if "size_bytes" in v else "—"
        lines.append(f"| {name} | {v.get('backend', '')} | {acc if acc is None else f'{acc:.4f}'} | {pct} | "
                     f"{p.get('b1 real', float('nan')):.2f} | {p.get('1x128', float('nan')):.2f} | "
                     f"{p.get('8x128', float('nan')):.2f} | {speed} | {size} |")
    for name, why in r.get("refused", {}).items():
        lines.append(f"| {name.replace('_', ' ')[:-8]} | — | refused by the export gate | | | | | | |")
        lines.append(f"|  | | `{why[:160]}` | | | | | | |")
    if r.get("embeddings"):
        lines += ["", "Sentence embeddings of the base all-MiniLM-L6-v2 (mean-pooled, normalized) vs "
                  "sentence-transformers fp32 on 500 test sentences:", "",
                  "| variant | backend | cosine mean | cosine min | b1×128 ms | size MB |", "|---|---|---|---|---|---|"]
        for name, v in sorted(r["embeddings"].items(), key=lambda kv: -kv[1]["cosine_mean"]):
            lines.append(f"| {name} | {v['backend']} | {v['cosine_mean']:.4f} | {v['cosine_min']:.4f} | "
                         f"{v['p50_ms'].get('1x128', float('nan')):.2f} | {v['size_bytes'] / 1e6:.1f} |")
    return "\n".join(lines) + "\n"


def plot(r: dict[str, Any], path: Path) -> Path | None:
    """Accuracy vs b1x128 latency per variant, bertship recipes and stock tools marked differently."""
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8.5, 5))
    base = r["classification"].get(FP32, {}).get("accuracy")
    for name, v in r["classification"].items():
        if v.get("accuracy") is None or "1x128" not in v["p50_ms"]:
            continue
        ours = name.startswith("bertship")
        ax.scatter(v["p50_ms"]["1x128"], 100 * v["accuracy"], marker="o" if ours else "x", s=50,
                   color="tab:blue" if ours else "tab:red")
        ax.annotate(name.replace("bertship ", ""), (v["p50_ms"]["1x128"], 100 * v["accuracy"]), fontsize=7,
                    xytext=(4, 3), textcoords="offset points")
    if base:
        ax.axhline(99 * base, color="gray", ls="--", lw=1)
        ax.text(ax.get_xlim()[1], 99 * base, " 99 % of fp32", va="bottom", ha="right", fontsize=8, color="gray")
    ax.set_xlabel("p50 latency, batch 1 × 128 tokens (ms)")
    ax.set_ylabel("MR test accuracy (%)")
    ax.set_title("bertship recipes (o) vs stock tools (x): accuracy vs latency", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _load_note(r: dict[str, Any]) -> str:
    """The highest share of the CPU other processes used while a kept worker was timing (runs above 15 % re-run)."""
    loads = [x for v in r.get("classification", {}).values() for x in v.get("foreign_loads", []) if x is not None]
    return f"; highest foreign CPU load during a kept timing: {max(loads):.0%}" if loads else ""
