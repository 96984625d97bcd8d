"""Accuracy/speed frontier of structured pruning: the MR classifier pruned at several levels, recovered, compacted, int8.

    python -m benchmarks.frontier --out benchmarks/results

Each level: `bertship prune` (gradient importance on a train subset, then a recovery fine-tune on the whole train split,
distilling from the unpruned classifier unless --no-distill), then `bertship export --compact` twice: int8-dynamic on
ONNX Runtime and int8-static (nncf) on OpenVINO. The dense baselines are the quantization benchmark's artifacts (run
it first). Every variant is scored on the test split and timed by benchmarks/quant_worker.py in its own process; each
pruned model is compared with the fastest dense int8 artifact (the aim: >= 2x faster within 1.5 points).
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
from .quantization import WORK as QUANT, run_worker

WORK = CACHE / "frontier"


def _run(cmd: list[str]) -> None:
    print("[bench] " + " ".join(cmd[2:6]) + " …", file=sys.stderr, flush=True)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if res.returncode != 0:
        raise SystemExit(res.stderr[-2000:])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.frontier", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--levels", type=int, nargs="+", default=[30, 50, 60, 70])
    p.add_argument("--recover-steps", type=int, default=800)
    p.add_argument("--train-rows", type=int, default=2048, help="rows the importance scores are computed on")
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--distill", action=argparse.BooleanOptionalAction, default=True)
    args = p.parse_args(argv)
    start = time.time()
    clf = CACHE / "mr-minilm"
    q = QUANT / "sequence-classification"
    dense = {"dense int8-dynamic (ORT)": (q / "bertship_int8-dynamic", "onnxruntime"),
             "dense int8-static (OpenVINO)": (q / "bertship_int8-static_(nncf)", "openvino"),
             "dense fp32 (ORT)": (q / "bertship_fp32", "onnxruntime")}
    if not clf.exists() or not all((d / "manifest.json").exists() for d, _ in dense.values()):
        raise SystemExit("run python -m benchmarks.quantization first (it fine-tunes and exports the dense model)")
    WORK.mkdir(parents=True, exist_ok=True)
    data = split()
    train = WORK / "train.tsv"
    train.write_text("".join(f"{t.replace(chr(9), ' ')}\t{y}\n" for t, y in data["train"]))
    recipe_tag = f"s{args.recover_steps}-lr{args.lr:g}-{'kd' if args.distill else 'ce'}-i{args.train_rows}"
    test = QUANT / "test-index.tsv"
    py = sys.executable
    variants = dict(dense)
    pruned_from: dict[str, Path] = {}
    for level in args.levels:
        pruned = WORK / f"pruned-{level}-{recipe_tag}"
        if not (pruned / "pruning.json").exists():
            _run([py, "-m", "bertship.cli", "prune", str(clf), "--heads", f"{level}%", "--ffn", f"{level}%",
                  "--data", str(train), "--importance-rows", str(args.train_rows), "--batch-size", "32",
                  "--recover-steps", str(args.recover_steps), "--lr", str(args.lr),
                  *(["--distill"] if args.distill else []), "--out", str(pruned), "--force"])
        for recipe, backend, label in (("int8-dynamic", "onnxruntime", "ORT"), ("int8-static", "openvino", "OpenVINO")):
            art = WORK / f"{pruned.name}-{recipe}-{backend}"
            if not (art / "manifest.json").exists():
                _run([py, "-m", "bertship.cli", "export", str(pruned), "--compact", "--recipe", recipe,
                      "--backends", backend, "--out", str(art), "--force"])
            variants[f"pruned {level}% + compact + {recipe} ({label})"] = (art, backend)
            pruned_from[f"pruned {level}% + compact + {recipe} ({label})"] = pruned
    results: dict[str, Any] = {}
    for name, (path, backend) in variants.items():
        print(f"[bench] measure {name}", file=sys.stderr, flush=True)
        r = run_worker(path, backend, dense["dense fp32 (ORT)"][0], ["--data", str(test)])  # re-run if loaded
        manifest = json.loads((path / "manifest.json").read_text())
        r["flop_ratio"] = manifest.get("compaction", {}).get("flop_ratio", 1.0)
        r.pop("samples_ms")
        r["pruning"] = json.loads((pruned_from[name] / "pruning.json").read_text()) if name in pruned_from else None
        results[name] = r
    text = report(results, args, time.time() - start, argv)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "frontier.json").write_text(json.dumps({"machine": cpu_info(), "settings": vars(args) | {"out": str(args.out)},
                                                        "results": results}, indent=1) + "\n")
    (args.out / "frontier.md").write_text(text)
    _plot(results, args.out / "frontier.png")
    print(text)
    return 0


AIM_SPEEDUP, AIM_POINTS = 2.0, 1.5


def report(results: dict[str, Any], args: argparse.Namespace, seconds: float, argv: list[str] | None) -> str:
    """Table of every variant against the fastest dense int8 artifact, then the aim checked per pruned variant."""
    dense8 = {n: r for n, r in results.items() if n.startswith("dense int8")}
    best_name = min(dense8, key=lambda n: dense8[n]["p50_ms"]["8x128"])
    best = dense8[best_name]
    lines = [f"Machine: {cpu_info()['model']} (2 threads); {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}; "
             f"`python -m benchmarks.frontier {' '.join(argv if argv is not None else sys.argv[1:])}` "
             f"({seconds / 60:.0f} min)", "",
             f"Pruning: gradient importance (Michel et al.) on {args.train_rows} train sentences, global ranking; "
             f"recovery {args.recover_steps} steps of 32 on the 8,454-sentence train split, lr {args.lr:g}, "
             + ("distilling from the unpruned classifier (½ CE + ½ KL at T=2)" if args.distill else "cross-entropy")
             + f". MR test split, 1,057 sentences. Fastest dense int8 artifact (b8×128): **{best_name}**.", "",
             "| variant | accuracy | Δ vs fastest dense int8 (points) | FLOP ratio | b1 real ms | b1×128 ms "
             "| b8×128 ms | × fastest dense int8 (b1×128 / b8×128) | size MB |", "|---|---|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        lines.append(f"| {name} | {r['accuracy']:.4f} | {100 * (r['accuracy'] - best['accuracy']):+.1f} | "
                     f"{r['flop_ratio']:.2f} | {r['p50_ms']['b1 real']:.2f} | {r['p50_ms']['1x128']:.2f} | "
                     f"{r['p50_ms']['8x128']:.2f} | {best['p50_ms']['1x128'] / r['p50_ms']['1x128']:.2f}× / "
                     f"{best['p50_ms']['8x128'] / r['p50_ms']['8x128']:.2f}× | {r['size_bytes'] / 1e6:.1f} |")
    lines.append("")
    for shape in ("8x128", "1x128"):
        met = [n for n, r in results.items() if n.startswith("pruned")
               and best["p50_ms"][shape] / r["p50_ms"][shape] >= AIM_SPEEDUP
               and 100 * (best["accuracy"] - r["accuracy"]) <= AIM_POINTS]
        lines.append(f"Aim at {shape.replace('x', '×')} (a pruned + int8 model >= {AIM_SPEEDUP:g}x faster than the "
                     f"fastest dense int8 artifact, within {AIM_POINTS:g} points of its accuracy): "
                     + (f"met by {', '.join(met)}." if met else "not met by any variant measured here."))
    return "\n".join(lines) + "\n"


def _short(name: str) -> str:
    """'pruned 60% + compact + int8-static (OpenVINO)' -> '60% OV int8'."""
    backend = "OV" if "OpenVINO" in name else "ORT"
    kind = "fp32" if "fp32" in name else "int8"
    return f"{name.split()[1] if name.startswith('pruned') else 'dense'} {backend} {kind}"


def _plot(results: dict[str, Any], path: Path) -> None:
    try:
        import matplotlib
    except ImportError:
        return
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    dense8 = {n: r for n, r in results.items() if n.startswith("dense int8")}
    best = min(dense8.values(), key=lambda r: r["p50_ms"]["8x128"])
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ax.axvspan(0, best["p50_ms"]["8x128"] / AIM_SPEEDUP, ymin=0, ymax=1, color="tab:green", alpha=0.08,
               label=f"aim: >= {AIM_SPEEDUP:g}x the fastest dense int8, within {AIM_POINTS:g} points")
    ax.axhline(100 * best["accuracy"] - AIM_POINTS, color="tab:green", lw=0.8, ls="--")
    for name, r in results.items():
        ax.scatter(r["p50_ms"]["8x128"], 100 * r["accuracy"], s=50, marker="s" if "OpenVINO" in name else "o",
                   color="tab:red" if name.startswith("dense") else "tab:blue")
        ax.annotate(_short(name), (r["p50_ms"]["8x128"], 100 * r["accuracy"]), fontsize=7, xytext=(4, 3),
                    textcoords="offset points")
    ax.set_xlim(0, 1.08 * max(r["p50_ms"]["8x128"] for r in results.values()))
    ax.set_xlabel("p50 latency, batch 8 × 128 tokens (ms)")
    ax.set_ylabel("MR test accuracy (%)")
    ax.set_title("structured pruning + compaction + int8: accuracy vs latency (○ ORT, □ OpenVINO)", fontsize=10)
    ax.legend(fontsize=7, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
