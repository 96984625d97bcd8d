"""Serving cost: `bertship serve` (Ray Serve), the Triton Python-backend deployment, infinity (the anchor) and Ray Data
against in-process `embed`, on real MR sentences none of which tuned anything.

    python -m benchmarks.serving --out benchmarks/results [--artifact ART] [--server-python .serve-env/bin/python]
                                 [--skip triton,infinity,ray-data]

The default artifact is the bundled all-MiniLM-L6-v2 (fp32), exported once into benchmarks/.cache/serving. In-process:
`load(ART, threads=2).embed` over all sentences (batch 32), and one sentence per call. Servers get one sentence per
request from 1, 8, 32 and 128 concurrent clients, and 32 sentences per request from 8 clients, on this same machine
(the clients share its 2 cores with the server, as they share them with nothing in-process):
- `bertship serve ART --threads 2`, OpenAI `POST /v1/embeddings` over HTTP (httpx, one keep-alive client per thread);
- Triton: `bertship deploy triton --backend python --threads 2` (its default 2 instances), gRPC;
- infinity: `infinity_emb v2 --model-id <the bundled MiniLM folder> --engine torch` (infinity-emb 0.0.78 in its own
  venv, benchmarks/.cache/venv-infinity, with torch held at the project's 2.13.0; numpy<2 there), POST /embeddings
  with the same HTTP client.
Each server's vectors for every sentence are compared with `load(ART).embed` (cosine). Ray Data: `map_batches(Embed)`
with 1 actor (2 threads) and 2 actors (1 thread each) on a local 2-CPU Ray. Writes serving.json, serving.md (with the
machine's details) and serving.png (`--replot` redraws it from the JSON).
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

from bertship.exporter.load import default_model_path
from bertship.profiles import cpu_info
from bertship.runtimes import deploy, load, serve
from bertship.runtimes.serve_check import Client, measure

from .mr_data import CACHE, split

WORK = CACHE / "serving"
CLIENTS = (1, 8, 32, 128)
BATCHED = (8, 32)  # (clients, sentences per request)
INFINITY = ["infinity-emb[server,torch]==0.0.78", "torch==2.13.0"]
INFINITY_VENV = CACHE / "venv-infinity"
READY_S = 300


class OpenAIHttp:
    """An OpenAI-style embeddings client over HTTP (httpx, keep-alive): the same for bertship serve and infinity."""

    def __init__(self, url: str, model: str):
        import httpx

        self.url, self.model, self.client = url, model, httpx.Client(timeout=300)

    def infer(self, texts: list[str], pairs=None) -> np.ndarray:
        r = self.client.post(self.url, json={"input": texts, "model": self.model})
        r.raise_for_status()
        return np.array([d["embedding"] for d in sorted(r.json()["data"], key=lambda d: d["index"])], np.float32)

    def close(self) -> None:
        self.client.close()


def timed_server(name: str, make, sentences: list[str], reference: np.ndarray) -> dict[str, Any]:
    """Fidelity (every sentence, 32 a request, against in-process embed), then each client count's timing."""
    client = make()
    try:
        got = np.concatenate([client.infer(sentences[s : s + 32]) for s in range(0, len(sentences), 32)])
    finally:
        client.close()
    cos = (got * reference).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(reference, axis=1))
    results = {}
    for clients in CLIENTS:
        requests = 400 if clients == 1 else 1500
        print(f"[bench] {name}: {clients} client(s), {requests} requests", file=sys.stderr, flush=True)
        results[str(clients)] = measure(make, sentences, None, clients, requests)
    clients, per = BATCHED
    print(f"[bench] {name}: {clients} clients × {per} sentences a request", file=sys.stderr, flush=True)
    results[f"{clients}x{per}"] = measure(make, sentences, None, clients, 120, per_request=per)
    return {"by_clients": results, "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())}


def _start(cmd: list[str], ready: str, env: dict | None = None) -> tuple[subprocess.Popen, list[str]]:
    """A server in its own session, its output collected; returns once a line contains `ready`."""
    import threading

    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
                            env=env)
    lines: list[str] = []
    seen = threading.Event()

    def read():
        for line in proc.stdout:
            lines.append(line)
            if ready in line:
                seen.set()

    threading.Thread(target=read, daemon=True).start()
    deadline = time.time() + READY_S
    while not seen.wait(1):
        if proc.poll() is not None or time.time() > deadline:
            _stop(proc)
            raise RuntimeError(f"{cmd[0]} did not start: " + "".join(lines[-20:]))
    return proc, lines


def _stop(proc: subprocess.Popen) -> None:
    import signal

    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(30)


def _port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def bertship_serve(art: Path, sentences: list[str], reference: np.ndarray) -> dict[str, Any]:
    port = _port()
    proc, lines = _start([sys.executable, "-m", "bertship.cli", "serve", str(art), "--port", str(port), "--threads",
                          "2"], "serve: ready at")
    try:
        out = timed_server("bertship serve", lambda: OpenAIHttp(f"http://127.0.0.1:{port}/v1/embeddings", "minilm"),
                           sentences, reference)
        import httpx

        out["batching"] = httpx.get(f"http://127.0.0.1:{port}/ready", timeout=30).json()["batching"]
        return out
    finally:
        _stop(proc)


def infinity_python() -> tuple[Path | None, str]:
    """The infinity venv's python (created on first use) and its versions, or None and why."""
    py = INFINITY_VENV / "bin" / "python"
    try:
        if not (INFINITY_VENV / "bin" / "infinity_emb").exists():
            print(f"[bench] create {INFINITY_VENV} and pip install {' '.join(INFINITY)} there …", file=sys.stderr)
            subprocess.run([sys.executable, "-m", "venv", str(INFINITY_VENV)], check=True, capture_output=True)
            subprocess.run([str(py), "-m", "pip", "install", "-q", *INFINITY], check=True, capture_output=True)
        res = subprocess.run([str(py), "-c", "import json, importlib.metadata as m; print(json.dumps({n: m.version(n) "
                              "for n in ('infinity-emb', 'torch', 'sentence-transformers', 'transformers', 'numpy')}))"],
                             capture_output=True, text=True, check=True)
        return py, res.stdout.strip()
    except (subprocess.CalledProcessError, OSError) as exc:
        return None, f"infinity venv unusable: {str(getattr(exc, 'stderr', '') or exc)[-500:]}"


def infinity(sentences: list[str], reference: np.ndarray) -> dict[str, Any]:
    py, versions = infinity_python()
    if py is None:
        return {"skipped": versions}
    port = _port()
    env = {**os.environ, "INFINITY_ANONYMOUS_USAGE_STATS": "0", "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"}
    proc, lines = _start([str(INFINITY_VENV / "bin" / "infinity_emb"), "v2", "--model-id", str(default_model_path()),
                          "--served-model-name", "minilm", "--engine", "torch", "--device", "cpu", "--batch-size", "32",
                          "--port", str(port), "--no-bettertransformer"], "Uvicorn running", env)
    try:
        out = timed_server("infinity", lambda: OpenAIHttp(f"http://127.0.0.1:{port}/embeddings", "minilm"),
                           sentences, reference)
        return {**out, "versions": json.loads(versions)}
    finally:
        _stop(proc)


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


def triton(art: Path, sentences: list[str], server_python: str | None) -> dict[str, Any]:
    """One sentence per request at 1-128 concurrent gRPC clients against the Python-backend repository, as `deploy`
    writes it by default (2 instances, tuned batching; benchmarks.triton_path measures the alternatives)."""
    env = serve.serving_env(server_python, log=lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True))
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

    ray.init(address="local", num_cpus=2, include_dashboard=False, configure_logging=False)
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
             "One sentence per request from 1–128 concurrent clients, and 32 sentences per request from 8 (8×32); "
             "clients on the same 2 cores. × in-process: served sentences/s over in-process `embed` (batch 32) "
             "sentences/s; + ms: served p50 minus the in-process one-sentence p50.", "",
             "| server | clients | p50 ms | p99 ms | sentences/s | × in-process | p50 + ms | cosine min vs embed |",
             "|---|---|---|---|---|---|---|---|"]
    servers = {"bertship serve (Ray Serve, HTTP)": doc.get("bertship_serve"),
               f"Triton Python backend ({(doc.get('triton') or {}).get('server', '—')}, gRPC)": doc.get("triton"),
               "infinity 0.0.78 (torch engine, HTTP)": doc.get("infinity")}
    for name, res in servers.items():
        if not res or "by_clients" not in res:
            lines.append(f"| {name} | not run{': ' + res['skipped'] if res and 'skipped' in res else ''} | | | | | | |")
            continue
        cosine = f"{res['cosine_min']:.6f}" if "cosine_min" in res else "— (not compared)"
        for clients, r in res["by_clients"].items():
            rate = r.get("texts_per_s", r["throughput_rps"])
            lines.append(f"| {name} | {clients} | {r['latency_ms_p50']:.2f} | {r['latency_ms_p99']:.2f} | {rate:.0f} | "
                         f"{rate / base['sentences_per_s']:.2f}× | {r['latency_ms_p50'] - base['single_ms_p50']:+.2f} | "
                         f"{cosine} |")
    ray, inf = doc.get("bertship_serve"), doc.get("infinity")
    if ray and inf and "by_clients" in inf:
        lines += ["", f"bertship serve at 32 clients: {ray['by_clients']['32']['texts_per_s'] / inf['by_clients']['32']['texts_per_s']:.2f}× "
                  "infinity's throughput (aim ≥ 1.5×)."]
    if ray:
        b = ray.get("batching", {})
        lines += ["", f"bertship serve's batcher over the whole run: {b.get('texts_per_batch', 0):.1f} texts and "
                  f"{b.get('requests_per_batch', 0):.1f} requests per model run, {b.get('padding_share', 0):.0%} of "
                  "the padded tokens padding."]
    if not doc.get("ray_data"):
        return "\n".join(lines) + "\n"
    lines += ["", "Ray Data `map_batches(Embed)` on a local 2-CPU Ray (1 actor with 2 threads, or 2 with 1 each; "
              "actor start-up included, Ray started before timing):", "",
              "| workers | threads each | sentences/s | × in-process |", "|---|---|---|---|"]
    again = doc["in_process_before_ray"]["sentences_per_s"]
    for workers, r in (doc.get("ray_data") or {}).items():
        lines.append(f"| {workers} | {r['threads']} | {r['sentences_per_s']:.0f} | {r['sentences_per_s'] / again:.2f}× |")
    lines += ["", f"In-process `embed` measured again right before Ray: {again:.0f} sentences/s (the Ray ratios use it)."]
    return "\n".join(lines) + "\n"


SERVERS = {"bertship_serve": "bertship serve (Ray Serve, HTTP)", "triton": "Triton Python backend (gRPC)",
           "infinity": "infinity 0.0.78 (HTTP)"}


def plot(doc: dict[str, Any], path: Path) -> Path | None:
    """Sentences/s and p50 latency by concurrent clients (one sentence per request) per server, in-process drawn."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (rate_ax, p50_ax) = plt.subplots(1, 2, figsize=(12, 4.6))
    for key, name in SERVERS.items():
        res = doc.get(key) or {}
        if "by_clients" not in res:
            continue
        clients = [c for c in res["by_clients"] if c.isdigit()]
        rows = [res["by_clients"][c] for c in clients]
        xs = [int(c) for c in clients]
        rate_ax.plot(xs, [r.get("texts_per_s", r["throughput_rps"]) for r in rows], marker="o", label=name)
        p50_ax.plot(xs, [r["latency_ms_p50"] for r in rows], marker="o", label=name)
    base = doc["in_process"]
    rate_ax.axhline(base["sentences_per_s"], color="grey", ls="--", lw=0.8, label="in-process embed (batch 32)")
    p50_ax.axhline(base["single_ms_p50"], color="grey", ls="--", lw=0.8, label="in-process, one sentence a call")
    for ax, label in ((rate_ax, "sentences/s"), (p50_ax, "p50 latency, ms")):
        ax.set_xscale("log")
        ax.set_xticks(list(CLIENTS), [str(c) for c in CLIENTS])
        ax.set_xlabel("concurrent clients, one sentence per request (same 2 cores)")
        ax.set_ylabel(label)
        ax.legend(fontsize=7)
    p50_ax.set_yscale("log")
    fig.suptitle(f"Serving MiniLM: {doc['machine']['model']} ({doc['machine']['cores']} cores), {doc['created']}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.serving", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--artifact", type=Path, default=None, help="default: the bundled MiniLM, exported once")
    p.add_argument("--server-python", default=None,
                   help="the serving environment's Python (default: found or made by bertship, docs/serving.md)")
    p.add_argument("--skip", default="", help="leave out some of: triton, infinity, ray-data")
    p.add_argument("--replot", action="store_true", help="only redraw serving.png from --out's serving.json")
    args = p.parse_args(argv)
    if args.replot:
        print(plot(json.loads((args.out / "serving.json").read_text()), args.out / "serving.png"))
        return 0
    skip = set(filter(None, args.skip.split(",")))
    art = args.artifact or default_artifact()
    sentences = texts()
    print(f"[bench] in-process embed on {len(sentences)} sentences", file=sys.stderr, flush=True)
    doc = {"benchmark": "serving", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "command": "python -m benchmarks.serving " + " ".join(argv if argv is not None else sys.argv[1:]),
           "machine": cpu_info(), "artifact": str(art), "sentences": len(sentences),
           "load_average": {"start": os.getloadavg()[0]},
           "in_process": in_process(art, sentences)}
    reference = load(art, threads=2).embed(sentences)
    doc["bertship_serve"] = bertship_serve(art, sentences, reference)
    doc["infinity"] = infinity(sentences, reference) if "infinity" not in skip else None
    doc["triton"] = triton(art, sentences, args.server_python) if "triton" not in skip else None
    if "ray-data" not in skip:
        # Measured again right before Ray: on a shared machine each ratio is taken against the baseline next to it.
        doc["in_process_before_ray"] = in_process(art, sentences)
        doc["ray_data"] = ray_data(art, sentences)
    doc["load_average"]["end"] = os.getloadavg()[0]
    text = report(doc)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "serving.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.out / "serving.md").write_text(text)
    plot(doc, args.out / "serving.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
