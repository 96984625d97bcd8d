"""Export wall time and peak memory: bertship against Optimum's exporters, each run in its own process.

    python -m benchmarks.export_time [--models minilm bert-base deberta-v3-base modernbert-base]
                                     [--variants fp32 fp32-ort int8-static int8-mixed optimum-onnx optimum-openvino]
                                     [--out benchmarks/results]

Models, each at its full max length: the bundled all-MiniLM-L6-v2 (real weights, 256 tokens, feature-extraction); a
BERT-base-shaped encoder (random weights, 512, feature-extraction); DeBERTa-v3-base and ModernBERT-base shapes (random
weights, sequence classification; 512 and 8192 tokens). Variants:
- `fp32`: `bertship export` to both backends (ONNX Runtime and OpenVINO), its gate included;
- `fp32-ort`: the same for ONNX Runtime only (what `optimum-cli export onnx` makes);
- `int8-static`, and `int8-mixed` (`--min-cosine 0.99` for embeddings, the default 1 % drop for classifiers);
- `optimum-onnx`: `optimum-cli export onnx --model M --task T OUT` (its validation against PyTorch included);
- `optimum-openvino`: `optimum-cli export openvino --model M --task T OUT`.
Each is one child process: wall time and its peak RSS (wait4), bertship's per-stage times from its manifest.
Ratios are against Optimum measured in the same run on the same machine: bertship `fp32` against optimum-onnx +
optimum-openvino (both backends each way), `fp32-ort` against optimum-onnx. Writes export_time.json and .md.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from bertship.profiles import cpu_info
from bertship.profiles.machine import package_versions

from .export_memory import child, make_model

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "benchmarks" / ".cache" / "export_time"
MODELS = {
    "minilm": ("the bundled all-MiniLM-L6-v2 (real weights), max length 256", "feature-extraction"),
    "bert-base": ("BERT-base shape (768 hidden, 12 layers, random weights), max length 512", "feature-extraction"),
    "deberta-v3-base": ("DeBERTa-v3-base shape (random weights), max length 512", "text-classification"),
    "modernbert-base": ("ModernBERT-base shape (random weights), max length 8192", "text-classification"),
}
VARIANTS = ("fp32", "fp32-ort", "int8-static", "int8-mixed", "optimum-onnx", "optimum-openvino")
BERTSHIP_TASK = {"feature-extraction": "feature-extraction", "text-classification": "sequence-classification"}


def _log(msg: str) -> None:
    print(f"[export_time {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def source(name: str) -> Path:
    """The model folder: the bundled MiniLM, or a random-weight one of that shape made once under .cache/."""
    if name == "minilm":
        from bertship.exporter.load import default_model_path

        return default_model_path()
    folder = CACHE / "models" / name
    if (folder / "config.json").exists():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    made = child([sys.executable, "-c", "import sys; from pathlib import Path; from benchmarks.export_time import "
                  "make_source; make_source(sys.argv[1], Path(sys.argv[2]))", name, str(folder)])
    if made["exit"] != 0:
        raise SystemExit(f"building {name} failed: {made['error']}")
    return folder


def make_source(name: str, folder: Path) -> None:
    """Save a random-weight model of that shape with a tokenizer of its kind whose max length is the model's."""
    if name == "bert-base":
        make_model("bert-base", folder)
    else:
        from .families import build_source

        build_source(name, fresh=True, folder=folder, full_length=True)


def command(variant: str, folder: Path, task: str, out: Path) -> list[str]:
    bertship = [sys.executable, "-m", "bertship.cli", "export", str(folder), "--task", BERTSHIP_TASK[task],
                "--out", str(out)]
    if variant == "fp32":
        return bertship
    if variant == "fp32-ort":
        return bertship + ["--backends", "onnxruntime"]
    if variant == "int8-static":
        return bertship + ["--recipe", "int8-static"]
    if variant == "int8-mixed":
        return bertship + ["--recipe", "int8-mixed"] + (["--min-cosine", "0.99"] if task == "feature-extraction" else [])
    cli = str(Path(sys.executable).with_name("optimum-cli"))
    if variant == "optimum-onnx":
        return [cli, "export", "onnx", "--model", str(folder), "--task", task, str(out)]
    if variant == "optimum-openvino":
        return [cli, "export", "openvino", "--model", str(folder), "--task", task, str(out)]
    raise ValueError(variant)


def measure(name: str, variants: tuple[str, ...]) -> dict[str, Any]:
    folder = source(name)
    what, task = MODELS[name]
    row: dict[str, Any] = {"model": name, "what": what, "task": task, "variants": {}}
    for variant in variants:
        out = CACHE / "out" / f"{name}-{variant}"
        shutil.rmtree(out, ignore_errors=True)
        _log(f"{name}: {variant} …")
        done = child(command(variant, folder, task, out))
        rec = {k: done[k] for k in ("wall_s", "peak_rss_mb", "exit", "error")}
        manifest = out / "manifest.json"
        if done["exit"] == 0 and manifest.exists():
            m = json.loads(manifest.read_text())
            rec["stages_s"] = m.get("timings_s")
            rec["peak_rss_mb"] = max([rec["peak_rss_mb"], *(m.get("peak_rss_mb") or {}).values()])
            rec["sweep_lengths"] = len(m["golden"]["sweep"]["lengths"]) if "sweep" in m["golden"] else None
            rec["checks_s"] = {b: r.get("check_s") for b, r in m["fidelity"]["backends"].items()}
        _log(f"{name}: {variant} {'ok' if done['exit'] == 0 else 'FAILED: ' + str(done['error'])} in "
             f"{done['wall_s']:.1f} s, peak {rec['peak_rss_mb'] / 1024:.2f} GB")
        row["variants"][variant] = rec
        shutil.rmtree(out, ignore_errors=True)
    return row


def ratios(row: dict[str, Any]) -> dict[str, Any]:
    """bertship over Optimum, both measured in this run (None where either side did not run)."""
    v = row["variants"]

    def wall(key: str) -> float | None:
        return v[key]["wall_s"] if key in v and v[key]["exit"] == 0 else None

    onnx, ov = wall("optimum-onnx"), wall("optimum-openvino")
    out: dict[str, Any] = {}
    if wall("fp32") and onnx and ov:
        out["fp32_vs_optimum_onnx_plus_openvino"] = round(wall("fp32") / (onnx + ov), 2)
    if wall("fp32-ort") and onnx:
        out["fp32_ort_vs_optimum_onnx"] = round(wall("fp32-ort") / onnx, 2)
    return out


def markdown(r: dict[str, Any]) -> str:
    m = r["machine"]
    lines = [f"# Export time: bertship vs Optimum ({r['created']})", "",
             f"`{r['command']}` on {m['cpu']} (class {r['cpu_class']}), {m['cores']} cores, {m['memory_gb']} GB; "
             f"packages {', '.join(f'{k} {v}' for k, v in r['packages'].items())}. Each variant in its own process; "
             "wall time includes Python start-up and imports.", "",
             "| model | variant | wall s | peak RSS GB | load s | verify s | sweep lengths | vs Optimum |",
             "|---|---|---:|---:|---:|---:|---:|---|"]
    for row in r["rows"]:
        rat = row["ratios"]
        for variant, rec in row["variants"].items():
            stages = rec.get("stages_s") or {}
            vs = (f"{rat['fp32_vs_optimum_onnx_plus_openvino']}x onnx+openvino" if variant == "fp32" and
                  "fp32_vs_optimum_onnx_plus_openvino" in rat else
                  f"{rat['fp32_ort_vs_optimum_onnx']}x onnx" if variant == "fp32-ort" and
                  "fp32_ort_vs_optimum_onnx" in rat else "")
            wall = f"{rec['wall_s']:.1f}" if rec["exit"] == 0 else f"failed ({rec['error']})"
            lines.append(f"| {row['model']} | {variant} | {wall} | {rec['peak_rss_mb'] / 1024:.2f} | "
                         f"{stages.get('load', '')} | {stages.get('verify', '')} | {rec.get('sweep_lengths') or ''} | "
                         f"{vs} |")
    lines += ["", "Models: " + "; ".join(f"{row['model']}: {row['what']}" for row in r["rows"]) + "."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.export_time")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument("--name", default="export_time", help="results file stem")
    args = parser.parse_args(argv)
    from bertship.runtimes.cpuclass import flags_class

    with open("/proc/meminfo") as fh:
        mem_gb = round(int(fh.readline().split()[1]) / 2**20, 1)
    results: dict[str, Any] = {
        "benchmark": "export_time", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": "python -m benchmarks.export_time " + " ".join(argv if argv is not None else sys.argv[1:]),
        "cpu_class": flags_class(),
        "machine": {"cpu": cpu_info()["model"], "cores": os.cpu_count(), "memory_gb": mem_gb,
                    "python": platform.python_version()},
        "packages": package_versions(("torch", "transformers", "onnxruntime", "openvino", "optimum",
                                      "optimum-onnx", "optimum-intel")),
        "rows": [],
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.models:
        row = measure(name, tuple(args.variants))
        row["ratios"] = ratios(row)
        results["rows"].append(row)
        (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=1) + "\n")  # after every model
        (args.out / f"{args.name}.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
