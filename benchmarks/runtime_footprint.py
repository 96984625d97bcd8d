"""What embedding the runtime costs an app: installed size, import time, cold load time and peak memory.

    python -m benchmarks.runtime_footprint ARTIFACT --out benchmarks/results

Measures the installed size of the dependency closure of `bertship[runtime]` against `bertship[all]` (the bytes of
every file each installed distribution lists in its RECORD), `import bertship.runtimes` time, and per backend the
load() time, first-call time and peak RSS of the artifact, each in a fresh process (the OS page cache stays warm:
this is a process cold start, not a disk cold start). Torch-free. Writes runtime_footprint.json and .md to --out.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from bertship.profiles import cpu_info

from bertship.profiles.machine import peak_rss_mb

_NAME = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(?:\[([^\]]*)\])?")


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _applies(marker: str | None, extras: set[str]) -> bool:
    if not marker:
        return True
    from packaging.markers import Marker

    # A requirement without `extra ==` in its marker must still apply when no extra is asked for.
    return any(Marker(marker).evaluate({"extra": e}) for e in (extras or {""}))


def closure(root: str, extras: set[str]) -> dict[str, int]:
    """{distribution: installed bytes} for `root[extras]` and everything it requires here, transitively."""
    sizes: dict[str, int] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    todo = [(root, frozenset(extras))]
    while todo:
        name, wanted = todo.pop()
        if (_canonical(name), wanted) in seen:
            continue
        seen.add((_canonical(name), wanted))
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            sizes.setdefault(_canonical(name), -1)  # required but not installed here
            continue
        sizes[_canonical(name)] = _installed_bytes(dist)
        for req in dist.requires or []:
            spec, _, marker = req.partition(";")
            match = _NAME.match(spec)
            if match and _applies(marker.strip() or None, set(wanted)):
                sub = {e.strip() for e in (match.group(2) or "").split(",") if e.strip()}
                todo.append((match.group(1), frozenset(sub)))
    return sizes


def _installed_bytes(dist: metadata.Distribution) -> int:
    total = 0
    for f in dist.files or []:
        path = Path(dist.locate_file(f))
        if path.is_file():
            total += path.stat().st_size
    return total


def worker(art: str, backend: str) -> dict[str, Any]:
    """In this (fresh) process: import, load and first-call times, peak RSS, and whether torch got imported."""
    from bertship.runtimes import load

    t1 = time.perf_counter()
    model = load(art, backend=backend)
    t2 = time.perf_counter()
    model.encode(["The first request an app sends after it starts."])
    t3 = time.perf_counter()
    return {"load_s": t2 - t1, "first_call_s": t3 - t2,
            "peak_rss_mb": peak_rss_mb(),
            "precision": model.precision, "torch_imported": "torch" in sys.modules}


def _fresh(args: list[str]) -> dict[str, Any]:
    cmd = [sys.executable, "-m", "benchmarks.runtime_footprint", *args]
    # Outside the checkout: a stale bertship.egg-info there would shadow the installed metadata. The worker module
    # itself is found through PYTHONPATH.
    from benchmarks import ROOT

    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p))
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tempfile.gettempdir(), env=env)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


_IMPORT_PROBE = ("import json, sys, time; t = time.perf_counter(); import bertship.runtimes; "
                 "print(json.dumps({'import_s': time.perf_counter() - t, 'torch_imported': 'torch' in sys.modules}))")


def _import_only() -> dict[str, Any]:
    """`import bertship.runtimes` timed in a bare interpreter: this module's own imports (profiles) already load it."""
    proc = subprocess.run([sys.executable, "-c", _IMPORT_PROBE], capture_output=True, text=True, check=True,
                          cwd=tempfile.gettempdir())
    return json.loads(proc.stdout)


def measure(art: str, backends: list[str], runs: int) -> dict[str, Any]:
    """Sizes, then `runs` fresh processes for the import and for each backend's load; medians plus raw samples."""
    art = str(Path(art).resolve())
    extras = _fresh(["--sizes"])
    imports = [_import_only() for _ in range(runs)]
    loads = {b: [_fresh(["--worker", art, "--backend", b]) for _ in range(runs)] for b in backends}
    manifest = json.loads((Path(art) / "manifest.json").read_text())
    return {
        "benchmark": "runtime_footprint",
        "command": "python -m benchmarks.runtime_footprint " + " ".join(sys.argv[1:]),
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpu": cpu_info(), "python": sys.version.split()[0]},
        "artifact": {"path": art, "task": manifest["task"]["name"], "recipe": manifest.get("recipe", {}).get("name"),
                     "files_bytes": {f["path"]: f["bytes"] for f in manifest["files"]}},
        "installed_bytes": {k: {"total": sum(v for v in d.values() if v > 0), "distributions": d,
                                "missing": sorted(n for n, v in d.items() if v < 0)} for k, d in extras.items()},
        "import_runtimes_s": {"median": statistics.median(r["import_s"] for r in imports),
                              "samples": [r["import_s"] for r in imports],
                              "torch_imported": any(r["torch_imported"] for r in imports)},
        "load": {b: {k: statistics.median(r[k] for r in rs) for k in ("load_s", "first_call_s",
                                                                      "peak_rss_mb")}
                 | {"precision": rs[0]["precision"], "torch_imported": any(r["torch_imported"] for r in rs),
                    "samples": rs} for b, rs in loads.items()},
    }


def markdown(r: dict[str, Any]) -> str:
    """The results as Markdown tables."""
    sizes = r["installed_bytes"]
    cpu = r["machine"]["cpu"]
    lines = [f"Machine: {cpu['model']} ({cpu['cores']} cores), Python {r['machine']['python']}; {r['created']}; "
             f"artifact: {r['artifact']['path']} ({r['artifact']['task']}, {r['artifact']['recipe']})", "",
             "| install | distributions | installed size MB | largest |", "|---|---|---|---|"]
    for extra, s in sizes.items():
        top = sorted(((v, n) for n, v in s["distributions"].items() if v > 0), reverse=True)[:4]
        lines.append(f"| `bertship[{extra}]` | {len(s['distributions'])} | {s['total'] / 1e6:.1f} | "
                     + ", ".join(f"{n} {v / 1e6:.0f}" for v, n in top) + " |")
    ratio = sizes["all"]["total"] / max(sizes["runtime"]["total"], 1)
    imp = r["import_runtimes_s"]
    lines += ["", f"The runtime install is {ratio:.1f}× smaller than the full one. `import bertship.runtimes`: "
              f"{imp['median'] * 1000:.0f} ms (median of {len(imp['samples'])} fresh processes; torch imported: "
              f"{imp['torch_imported']}).", "",
              "| backend | precision | load() s | first call s | peak RSS MB | torch imported |",
              "|---|---|---|---|---|---|"]
    for b, v in r["load"].items():
        lines.append(f"| {b} | {v['precision']} | {v['load_s']:.3f} | {v['first_call_s']:.3f} "
                     f"| {v['peak_rss_mb']:.0f} | {v['torch_imported']} |")
    lines += ["", "Each load is a fresh process (medians); the OS page cache is warm, so this is a process cold start."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Measure and write runtime_footprint.json and runtime_footprint.md (or run one fresh-process probe)."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.runtime_footprint",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("artifact", nargs="?")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    parser.add_argument("--backends", default="onnxruntime,openvino")
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per measurement (default: %(default)s)")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--backend", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--sizes", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.sizes:
        print(json.dumps({"runtime": closure("bertship", {"runtime"}), "all": closure("bertship", {"all"})}))
        return 0
    if args.worker:
        print(json.dumps(worker(args.worker, args.backend)))
        return 0
    if not args.artifact:
        parser.error("ARTIFACT is required")
    results = measure(args.artifact, [b.strip() for b in args.backends.split(",") if b.strip()], args.runs)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "runtime_footprint.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / "runtime_footprint.md").write_text(markdown(results))
    print(markdown(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
