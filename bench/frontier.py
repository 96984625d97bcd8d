"""Accuracy/speed frontier of structured pruning: the MR classifier pruned at several levels, recovered, compacted, int8.

    python -m bertship.bench.frontier --out bench/results --levels 30 50 --recover-steps 150

Each level: `bertship prune` (gradient importance on a train subset, then recovery fine-tuning on it), `bertship
export --compact --recipe int8-dynamic`; the dense baselines are the quantization benchmark's artifacts (run it
first). Every variant scored on the test split and timed by bench/quant_worker.py in its own process.
Writes frontier.json, frontier.md and frontier.png.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bertship.profiles import cpu_info

from .mr_data import CACHE, split
from .quantization import WORK as QUANT

WORK = CACHE / "frontier"


def _run(cmd: list[str]) -> None:
    print("[bench] " + " ".join(cmd[2:6]) + " …", file=sys.stderr, flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-2000:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bertship.bench.frontier", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("bench/results"))
    p.add_argument("--levels", type=int, nargs="+", default=[30, 50])
    p.add_argument("--recover-steps", type=int, default=150)
    p.add_argument("--train-rows", type=int, default=2048)
    args = p.parse_args(argv)
    start = time.time()
    clf = CACHE / "mr-minilm"
    dense = {"dense int8-dynamic": (QUANT / "sequence-classification" / "bertship_int8-dynamic", "onnxruntime"),
             "dense fp32": (QUANT / "sequence-classification" / "bertship_fp32", "onnxruntime")}
    if not clf.exists() or not all((d / "manifest.json").exists() for d, _ in dense.values()):
        raise SystemExit("run python -m bertship.bench.quantization first (it fine-tunes and exports the dense model)")
    WORK.mkdir(parents=True, exist_ok=True)
    data = split()
    train = WORK / "train-subset.tsv"
    train.write_text("".join(f"{t.replace(chr(9), ' ')}\t{y}\n" for t, y in data["train"][: args.train_rows]))
    test = QUANT / "test-index.tsv"
    py = sys.executable
    variants = dict(dense)
    for level in args.levels:
        pruned, art = WORK / f"pruned-{level}", WORK / f"pruned-{level}-int8"
        if not (art / "manifest.json").exists():
            _run([py, "-m", "bertship.cli", "prune", str(clf), "--heads", f"{level}%", "--ffn", f"{level}%",
                  "--data", str(train), "--recover-steps", str(args.recover_steps), "--out", str(pruned), "--force"])
            _run([py, "-m", "bertship.cli", "export", str(pruned), "--compact", "--recipe", "int8-dynamic",
                  "--backends", "onnxruntime", "--out", str(art), "--force"])
        variants[f"pruned {level}% + compact + int8-dynamic"] = (art, "onnxruntime")
    results: dict[str, Any] = {}
    for name, (path, backend) in variants.items():
        print(f"[bench] measure {name}", file=sys.stderr, flush=True)
        cmd = [py, "-m", "bertship.bench.quant_worker", "--model", str(path), "--backend", backend,
               "--tokenizer-from", str(dense["dense fp32"][0]), "--data", str(test)]
        r = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout)
        manifest = json.loads((path / "manifest.json").read_text())
        r["flop_ratio"] = manifest.get("compaction", {}).get("flop_ratio", 1.0)
        r.pop("samples_ms")
        results[name] = r
    base = results["dense int8-dynamic"]
    lines = [f"Machine: {cpu_info()['model']} (2 threads); {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}; "
             f"`python -m bertship.bench.frontier {' '.join(argv or sys.argv[1:])}` ({(time.time() - start) / 60:.0f} min)",
             "", f"Pruning: gradient importance (Michel et al.) on {args.train_rows} train sentences, global ranking, "
             f"{args.recover_steps} recovery steps (batch 32) on the same subset; MR test split, 1,057 sentences.", "",
             "| variant | accuracy | Δ vs dense int8 (points) | FLOP ratio | b1 real ms | b1×128 ms | b8×128 ms | "
             "× dense int8 (b8×128) | size MB |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['accuracy']:.4f} | {100 * (r['accuracy'] - base['accuracy']):+.1f} | "
                     f"{r['flop_ratio']:.2f} | {r['p50_ms']['b1 real']:.2f} | {r['p50_ms']['1x128']:.2f} | "
                     f"{r['p50_ms']['8x128']:.2f} | {base['p50_ms']['8x128'] / r['p50_ms']['8x128']:.2f}× | "
                     f"{r['size_bytes'] / 1e6:.1f} |")
    text = "\n".join(lines) + "\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "frontier.json").write_text(json.dumps({"machine": cpu_info(), "results": results}, indent=1) + "\n")
    (args.out / "frontier.md").write_text(text)
    _plot(results, args.out / "frontier.png")
    print(text)
    return 0


def _plot(results: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, r in results.items():
        ax.scatter(r["p50_ms"]["8x128"], 100 * r["accuracy"], s=50,
                   color="tab:red" if name.startswith("dense") else "tab:blue")
        ax.annotate(name, (r["p50_ms"]["8x128"], 100 * r["accuracy"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    ax.set_xlabel("p50 latency, batch 8 × 128 tokens (ms)")
    ax.set_ylabel("MR test accuracy (%)")
    ax.set_title("structured pruning + compaction + int8: accuracy vs latency", fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
