"""Serving cost: the Triton Python-backend deployment and Ray Data against in-process `embed`, on real MR sentences.

    python -m benchmarks.serving --out benchmarks/results [--artifact ART] [--server-python .serve-env/bin/python]

The default artifact is the bundled all-MiniLM-L6-v2 (fp32), exported once into benchmarks/.cache/serving. In-process:
`load(ART, threads=2).embed` over all sentences (batch 32), and one sentence per call. Triton: `bertship deploy triton
--backend python` (1 instance, 2 threads), one sentence per gRPC request from 1, 8 and 32 concurrent clients; the
serving overhead is served throughput over in-process throughput, and served p50 over in-process one-sentence p50.
Ray Data: `map_batches(Embed)` with 1 actor (2 threads) and 2 actors (1 thread each) on a local 2-CPU Ray. Writes serving.json and
serving.md with the machine's details.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bertship.profiles import cpu_info
from bertship.runtimes import deploy, load, serve
from bertship.runtimes.serve_check import Client, measure

from .mr_data import CACHE, split

WORK = CACHE / "serving"
ROOT = Path(__file__).resolve().parent.parent
CLIENTS = (1, 8, 32)


def texts() -> list[str]:
    """The dev + test MR sentences (2,114 real movie-review sentences)."""
    data = split()
    return [t.replace("\n", " ") for t, _ in data["dev"] + data["test"]]


def default_artifact() -> Path:
    """The bundled MiniLM exported once (about a minute) into the benchmark cache."""
    art = WORK / "minilm"
    if not (art / "manifest.json").is_file():
        subprocess.run([sys.executable, "-m", "bertship.cli", "export", "--out", str(art), "--force"], check=True)
    return art


def in_process(art: Path, sentences: list[str], passes: int = 2) -> dict[str, Any]:
    """Sentences/s of one embed() call over all of them (best of `passes`), and one sentence per call's p50/p99."""
    model = load(art, threads=2)
    model.embed(sentences[:64])
    best = 0.0
    for _ in range(passes):
        start = time.perf_counter()
        model.embed(sentences, batch_size=32)
        best = max(best, len(sentences) / (time.perf_counter() - start))
    single = []
    for text in sentences[:300]:
        start = time.perf_counter()
        model.embed([text])
        single.append(time.perf_counter() - start)
    return {"sentences_per_s": best, "single_ms_p50": float(np.percentile(single, 50) * 1e3),
            "single_ms_p99": float(np.percentile(single, 99) * 1e3)}


def triton(art: Path, sentences: list[str], server_python: str) -> dict[str, Any]:
    """One sentence per gRPC request at 1, 8 and 32 concurrent clients against the Python-backend repository."""
    env = serve.probe(server_python)
    env.require("onnxruntime")
    work = Path(tempfile.mkdtemp(prefix="bertship-bench-serving-"))
    try:
        record = deploy.triton(art, work / "repo", backend="python", name="minilm", threads=2, max_batch=32)
        results = {}
        with serve.triton_server(work / "repo", env) as server:
            make = lambda: Client("grpc", server.grpc_url, "minilm", record["text_inputs"], record["outputs"])  # noqa: E731
            measure(make, sentences, None, 4, 64)  # warm-up
            for clients in CLIENTS:
                requests = 400 if clients == 1 else 1500
                print(f"[bench] triton: {clients} client(s), {requests} requests", file=sys.stderr, flush=True)
                results[str(clients)] = measure(make, sentences, None, clients, requests)
        return {"server": serve.find_triton(env).source, "by_clients": results}
    finally:
        shutil.rmtree(work, ignore_errors=True)


def ray_data(art: Path, sentences: list[str]) -> dict[str, Any]:
    """Sentences/s of map_batches(Embed) over all sentences with 1 and 2 actors (Ray started before timing)."""
    import ray

    from bertship.runtimes.ray_data import Embed

    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    try:
        ray.data.DataContext.get_current().enable_progress_bars = False
        results = {}
        for workers in (1, 2):
            print(f"[bench] ray data: {workers} worker(s)", file=sys.stderr, flush=True)
            ds = ray.data.from_items([{"text": t} for t in sentences]).materialize()
            start = time.perf_counter()
            threads = 2 // workers  # the machine's 2 CPUs split between the actors, as in-process uses both
            rows = ds.map_batches(Embed, fn_constructor_args=(str(art),), fn_constructor_kwargs={"threads": threads},
                                  compute=ray.data.ActorPoolStrategy(size=workers),
                                  batch_size=256, num_cpus=threads).take_all()
            wall = time.perf_counter() - start
            assert len(rows) == len(sentences)
            results[str(workers)] = {"sentences_per_s": len(sentences) / wall, "wall_s": wall, "threads": threads}
        return results
    finally:
        ray.shutdown()


def report(doc: dict[str, Any]) -> str:
    """serving.md: the tables, the overhead ratios, and the conditions they were measured under."""
    base = doc["in_process"]
    m = doc["machine"]
    load = doc["load_average"]
    lines = [f"Machine: {m['model']} ({m['cores']} cores), {doc['created']}; `{doc['command']}`", "",
             f"1-minute load average {load['start']:.1f} at the start, {load['end']:.1f} at the end" + (
                 f": above {m['cores']}, other processes competed for the CPUs, so every number here is lower than on "
                 "a quiet machine (ratios are taken against an in-process baseline measured next to them)."
                 if max(load.values()) > m["cores"] else ": the machine was otherwise quiet."), "",
             f"{doc['sentences']} MR sentences, all-MiniLM-L6-v2 fp32 on ONNX Runtime, 2 threads.", "",
             f"In-process `embed` (batch 32): **{base['sentences_per_s']:.0f} sentences/s**; one sentence per call: "
             f"p50 {base['single_ms_p50']:.2f} ms, p99 {base['single_ms_p99']:.2f} ms.", "",
             f"Triton Python backend ({doc['triton']['server']}), one sentence per gRPC request:", "",
             "| clients | p50 ms | p99 ms | sentences/s | × in-process throughput | p50 × in-process one-sentence p50 |",
             "|---|---|---|---|---|---|"]
    for clients, r in doc["triton"]["by_clients"].items():
        lines.append(f"| {clients} | {r['latency_ms_p50']:.2f} | {r['latency_ms_p99']:.2f} | "
                     f"{r['throughput_rps']:.0f} | {r['throughput_rps'] / base['sentences_per_s']:.2f}× | "
                     f"{r['latency_ms_p50'] / base['single_ms_p50']:.2f}× |")
    lines += ["", "Ray Data `map_batches(Embed)` on a local 2-CPU Ray (1 actor with 2 threads, or 2 with 1 each; "
              "actor start-up included, Ray started before timing):", "",
              "| workers | threads each | sentences/s | × in-process |", "|---|---|---|---|"]
    again = doc["in_process_before_ray"]["sentences_per_s"]
    for workers, r in doc["ray_data"].items():
        lines.append(f"| {workers} | {r['threads']} | {r['sentences_per_s']:.0f} | {r['sentences_per_s'] / again:.2f}× |")
    lines += ["", f"In-process `embed` measured again right before Ray: {again:.0f} sentences/s (the Ray ratios use it)."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--artifact", type=Path, default=None, help="default: the bundled MiniLM, exported once")
    p.add_argument("--server-python", default=str(ROOT / ".serve-env" / "bin" / "python"),
                   help="the serving environment's Python (docs/serving.md)")
    args = p.parse_args(argv)
    art = args.artifact or default_artifact()
    sentences = texts()
    print(f"[bench] in-process embed on {len(sentences)} sentences", file=sys.stderr, flush=True)
    doc = {"benchmark": "serving", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "command": "python -m benchmarks.serving " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": cpu_info(), "artifact": str(art), "sentences": len(sentences),
           "load_average": {"start": os.getloadavg()[0]},
           "in_process": in_process(art, sentences)}
    doc["triton"] = triton(art, sentences, args.server_python)
    # Measured again right before Ray: on a shared machine each ratio is taken against the baseline next to it.
    doc["in_process_before_ray"] = in_process(art, sentences)
    doc["ray_data"] = ray_data(art, sentences)
    doc["load_average"]["end"] = os.getloadavg()[0]
    text = report(doc)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serving.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.out / "serving.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
