"""The foundation benchmark: export the bundled MiniLM, then time what the artifact gives against PyTorch.

    python -m benchmarks.foundation --out benchmarks/results

Measures, each step in its own process: `bertship export` wall time and peak RSS, `bertship verify` wall time,
`import bertship.runtimes` time, artifact sizes and parity (from the manifest), and latency of PyTorch eager fp32,
ONNX Runtime fp32 and OpenVINO f32 on the same shapes and threads, in two interleaved passes. Writes
foundation.json (raw samples + machine details), foundation.md and foundation.png.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bertship.profiles import cpu_info

from bertship.bench.stats import summarize


def timed_process(cmd: list[str]) -> dict[str, Any]:
    """Run a command to completion; its wall time and output (exit on failure)."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {err.strip()[-2000:]}")
    return {"wall_s": wall, "stdout": out, "stderr": err}


def peak_rss_mb(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, peak RSS MB) of a child process, from wait4's rusage of that child alone."""
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.read().decode()[-2000:]}")
    return wall, usage.ru_maxrss / 1024.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.foundation", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--shapes", nargs="+", default=["1x128", "8x128"])
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--passes", type=int, default=2)
    args = parser.parse_args(argv)
    py = sys.executable
    work = Path(tempfile.mkdtemp(prefix="bertship-bench-"))
    art = work / "minilm"

    print("[bench] export of the bundled model …", file=sys.stderr)
    export_s, export_rss = peak_rss_mb([py, "-m", "bertship.cli", "export", "--out", str(art)])
    print("[bench] verify …", file=sys.stderr)
    verify_s, verify_rss = peak_rss_mb([py, "-m", "bertship.cli", "verify", str(art)])
    imp = timed_process([py, "-c", "import time; t = time.perf_counter(); import bertship.runtimes; "
                                   "print(time.perf_counter() - t)"])
    manifest = json.loads((art / "manifest.json").read_text())
    model_dir = manifest["source"]["path"]

    variants = {
        "pytorch eager fp32": [py, "-m", "benchmarks.baselines", model_dir],
        "onnxruntime fp32": [py, "-m", "bertship.bench.worker", str(art), "--backend", "onnxruntime"],
        "openvino f32": [py, "-m", "bertship.bench.worker", str(art), "--backend", "openvino"],
    }
    common = ["--threads", str(args.threads), "--shapes", *args.shapes, "--iters", str(args.iters),
              "--rounds", str(args.rounds)]
    runs: dict[str, dict[str, Any]] = {}
    rng = random.Random(0)
    for p in range(args.passes):
        order = list(variants)
        rng.shuffle(order)  # interleaved passes: a slow phase of the shared machine hits every variant alike
        for name in order:
            print(f"[bench] pass {p + 1}/{args.passes}: {name} …", file=sys.stderr)
            result = json.loads(timed_process(variants[name] + common + ["--seed", str(p)])["stdout"])
            if name not in runs:
                runs[name] = result
            else:
                for shape, ms in result["samples_ms"].items():
                    runs[name]["samples_ms"][shape] += ms

    files = {f["path"]: f["bytes"] for f in manifest["files"]}
    results = {
        "benchmark": "foundation",
        "command": "python -m benchmarks.foundation " + " ".join(argv or sys.argv[1:]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpu": cpu_info(), "python": manifest["environment"]["python"],
                    "packages": manifest["environment"]["packages"]},
        "export": {"wall_s": export_s, "peak_rss_mb": export_rss, "stages_s": manifest["timings_s"]},
        "verify": {"wall_s": verify_s, "peak_rss_mb": verify_rss},
        "import_runtimes_s": float(imp["stdout"].strip()),
        "sizes_bytes": files,
        "fidelity": manifest["fidelity"]["backends"],
        "latency": {
            name: {"precision": r["precision"], "load_s": r["load_s"], "peak_rss_mb": r["peak_rss_mb"],
                   "harness_overhead_us": r.get("harness_overhead_us"),
                   "summary": {s: summarize(ms, int(s.split("x")[0])) for s, ms in r["samples_ms"].items()},
                   "samples_ms": r["samples_ms"]}
            for name, r in runs.items()
        },
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "foundation.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "foundation.md").write_text(markdown(results))
    try:
        from bertship.bench.plots import latency_distribution

        latency_distribution({n: r["samples_ms"] for n, r in runs.items()}, args.out / "foundation.png",
                             f"all-MiniLM-L6-v2, {args.threads} threads — {results['machine']['cpu']['model']}")
    except ImportError:
        print("[bench] matplotlib not installed: no plot (pip install 'bertship[plots]')", file=sys.stderr)
    print(markdown(results))
    return 0


def markdown(r: dict[str, Any]) -> str:
    """The results as Markdown: machine, export facts, then latency with ratios to PyTorch from this same run."""
    cpu = r["machine"]["cpu"]
    lat = r["latency"]
    base = lat.get("pytorch eager fp32")
    lines = [
        f"Machine: {cpu['model']} ({cpu['arch']}, {cpu['cores']} cores; {' '.join(cpu['flags'])}); "
        f"{r['created']}; command: `{r['command']}`",
        "",
        f"- export of the bundled model: {r['export']['wall_s']:.1f} s wall, peak RSS {r['export']['peak_rss_mb']:.0f} MB "
        f"(stages: " + ", ".join(f"{k} {v:.1f} s" for k, v in r["export"]["stages_s"].items()) + ")",
        f"- verify (both backends, torch-free): {r['verify']['wall_s']:.1f} s, peak RSS {r['verify']['peak_rss_mb']:.0f} MB;"
        f" `import bertship.runtimes`: {r['import_runtimes_s'] * 1000:.0f} ms",
        "- sizes: " + ", ".join(f"{k} {v / 1e6:.1f} MB" for k, v in r["sizes_bytes"].items()),
        "- parity vs PyTorch on the golden sentences: " + "; ".join(
            f"{b} max|diff| {o['outputs'][0]['max_abs_diff']:.1e}, min cosine {o['outputs'][0]['cosine_min']:.7f}"
            for b, o in r["fidelity"].items()),
        "",
        "| variant | precision | shape | p50 ms | p95 ms | p99 ms | items/s | speed-up vs PyTorch (p50) | load s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, v in lat.items():
        for shape, s in v["summary"].items():
            ratio = base["summary"][shape]["p50"] / s["p50"] if base else float("nan")
            lines.append(
                f"| {name} | {v['precision']} | {shape} | {s['p50']:.2f} | {s['p95']:.2f} | {s['p99']:.2f} | "
                f"{s['throughput']:.1f} | {ratio:.2f}× | {v['load_s']:.2f} | {v['peak_rss_mb']:.0f} |"
            )
    worst = max(v["harness_overhead_us"] for v in lat.values() if v.get("harness_overhead_us") is not None)
    smallest = min(s["p50"] for v in lat.values() for s in v["summary"].values())
    lines += ["", f"Harness overhead per call: {worst:.2f} µs = {worst / 10 / smallest:.4f} % of the smallest p50.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
