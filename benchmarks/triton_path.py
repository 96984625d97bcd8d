"""Where the Triton Python backend's time goes, and what the mended deployment gains: issue 21's "Triton path".

    python -m benchmarks.triton_path --out benchmarks/results [--artifact ART] [--server-python .serve-env/bin/python]

On the bundled all-MiniLM-L6-v2 (fp32, ONNX Runtime) and real MR sentences, one sentence per gRPC request from 1, 8
and 32 concurrent clients on this same machine, for each deployment:
- `before`: what `deploy triton --backend python` wrote until now: 1 instance × 2 threads, every 16 texts of a
  dynamic batch one run (`--instances 1 --threads 2 --no-tune-batching`);
- `tuned batching`: the same, with each dynamic batch's length-sorted texts cut where cheapest (`Model.tune_batching`);
- `2 instances` (the new default): 2 instances, each with every core's threads (here 2), tuned batching;
- `2 instances × 1 thread`: the cores split between them instead;
- `2 instances, 2 ms queue delay`: the same with `--queue-delay-us 2000`.
For each: latency and throughput at the client; from Triton's statistics API (GET /v2/models/NAME/stats) the requests
per execution, queue time and the time each execution spends in the stub; and CPU time per request taken by the
client process, by tritonserver itself (gRPC, the batcher, copying tensors to and from the stubs) and by the stub
processes (Python: decoding, tokenizing, the model run, building the responses), from /proc.
In-process, on the same sentences: the model's cost per run (fixed + per padded token), and what a batch of k
sentences in arrival order costs per sentence, cut every 16 and cut where cheapest, against all sentences sorted by
length (the in-process baseline of benchmarks.serving). Writes triton_path.json, triton_path.md and triton_path.png
(`--replot` redraws the plot from the JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

from bertship.profiles import cpu_info
from bertship.runtimes import deploy, load, serve
from bertship.runtimes.serve_check import Client, measure

from .serving import default_artifact, texts

CLIENTS = (1, 8, 32)
VARIANTS = {
    "before": dict(instances=1, threads=2, tune_batching=False),
    "tuned batching": dict(instances=1, threads=2, tune_batching=True),
    "2 instances": dict(instances=2, threads=None, tune_batching=True),
    "2 instances × 1 thread": dict(instances=2, threads=1, tune_batching=True),
    "2 instances, 2 ms queue delay": dict(instances=2, threads=None, tune_batching=True, queue_delay_us=2000),
}
TICK = os.sysconf("SC_CLK_TCK")


def _cpu_s(pid: int) -> float:
    """utime + stime of one process, in seconds (0 when it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / TICK


def _children(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def cpu_split(server_pid: int) -> dict[str, float]:
    """CPU seconds so far of this process (the clients), tritonserver and its stub processes."""
    return {"client": sum(os.times()[:2]), "server": _cpu_s(server_pid),
            "stubs": sum(_cpu_s(c) for c in _children(server_pid))}


def triton_stats(url: str, model: str) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://{url}/v2/models/{model}/stats", timeout=30) as reply:
        stat = json.load(reply)["model_stats"][0]
    inf = stat["inference_stats"]
    return {"inferences": int(stat["inference_count"]), "executions": int(stat["execution_count"]),
            **{k: int(inf[k]["ns"]) for k in ("success", "queue", "compute_input", "compute_infer", "compute_output")},
            "requests": int(inf["success"]["count"])}


def one_variant(art: Path, sentences: list[str], env, settings: dict[str, Any]) -> dict[str, Any]:
    work = Path(tempfile.mkdtemp(prefix="bertship-bench-triton-"))
    try:
        record = deploy.triton(art, work / "repo", backend="python", name="minilm", max_batch=32, **settings)
        out: dict[str, Any] = {"settings": settings}
        with serve.triton_server(work / "repo", env) as server:
            make = lambda: Client("grpc", server.grpc_url, "minilm", record["text_inputs"], record["outputs"])  # noqa: E731
            measure(make, sentences, None, 4, 64)  # warm-up
            for clients in CLIENTS:
                requests = 200 if clients == 1 else 600
                print(f"[bench] triton {settings}: {clients} client(s), {requests} requests", file=sys.stderr, flush=True)
                s0, c0 = triton_stats(server.http_url, "minilm"), cpu_split(server.process.pid)
                timing = measure(make, sentences, None, clients, requests)
                s1, c1 = triton_stats(server.http_url, "minilm"), cpu_split(server.process.pid)
                d = {k: s1[k] - s0[k] for k in s0}
                n, e = max(1, d["requests"]), max(1, d["executions"])
                out[str(clients)] = {
                    **timing,
                    "requests_per_execution": d["inferences"] / e,
                    "server_ms": d["success"] / n / 1e6,  # request in to response out, inside Triton
                    "queue_ms": d["queue"] / n / 1e6,
                    # compute_* are summed over a batch's requests: per execution, divide by executions
                    "execution_ms": d["compute_infer"] / n / 1e6,  # each request's execution: the stub's round trip
                    "copy_ms": (d["compute_input"] + d["compute_output"]) / n / 1e6,
                    "cpu_ms_per_request": {k: (c1[k] - c0[k]) / requests * 1e3 for k in c0},
                }
        return out
    finally:
        shutil.rmtree(work, ignore_errors=True)


def in_process(art: Path, sentences: list[str]) -> dict[str, Any]:
    """The model's cost per run, and arrival-order batches of k sentences per sentence, against the sorted corpus."""
    model = load(art, threads=2, runner_options={"allow_spinning": False})
    model.embed(sentences[:64])

    def run_ms(batch: int, length: int) -> float:
        feeds = {n: np.ones((batch, length), np.int64) for n in model.input_names}
        feeds["input_ids"][:] = 1000
        if "token_type_ids" in feeds:
            feeds["token_type_ids"][:] = 0
        model.runner.run(feeds)
        times = []
        for _ in range(9):
            start = time.perf_counter()
            model.runner.run(feeds)
            times.append(time.perf_counter() - start)
        return float(np.median(times) * 1e3)

    shapes = [(1, 16), (1, 64), (4, 32), (16, 32), (32, 32)]
    runs = {f"{b}x{length}": run_ms(b, length) for b, length in shapes}
    start = time.perf_counter()
    model.embed(sentences, batch_size=32)
    sorted_ms = (time.perf_counter() - start) / len(sentences) * 1e3
    overhead = model.tune_batching()
    batches: dict[str, Any] = {}
    for k in (1, 4, 8, 16, 32):
        row = {}
        for how, tokens in (("every 16", None), ("cheapest cut", overhead)):
            model.batch_overhead_tokens = tokens
            times = []
            for i in range(min(40, len(sentences) // k)):
                chunk = sentences[i * k : (i + 1) * k]
                start = time.perf_counter()
                model.embed(chunk, batch_size=16)
                times.append(time.perf_counter() - start)
            row[how] = float(np.sum(times) / (len(times) * k) * 1e3)
        batches[str(k)] = row
    lengths = [len(e.ids) for e in model.tokenizer.tokenize(sentences)]
    return {"run_ms": runs, "sorted_ms_per_sentence": sorted_ms, "overhead_tokens": overhead,
            "arrival_batches_ms_per_sentence": batches, "tokens_mean": float(np.mean(lengths)),
            "tokens_p90": float(np.percentile(lengths, 90)), "tokens_max": int(max(lengths))}


def _median(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Per client count, the median of every number over the repeats, and the throughput's min and max."""
    out: dict[str, Any] = {"settings": results[0]["settings"]}
    for clients in CLIENTS:
        rows = [r[str(clients)] for r in results]
        cell = {k: float(np.median([r[k] for r in rows])) for k, v in rows[0].items() if isinstance(v, (int, float))}
        cell["cpu_ms_per_request"] = {k: float(np.median([r["cpu_ms_per_request"][k] for r in rows]))
                                      for k in rows[0]["cpu_ms_per_request"]}
        cell["texts_per_s_range"] = [min(r["texts_per_s"] for r in rows), max(r["texts_per_s"] for r in rows)]
        out[str(clients)] = cell
    return out


def report(doc: dict[str, Any]) -> str:
    m, ip = doc["machine"], doc["in_process"]
    load_avg = doc["load_average"]
    lines = [f"Machine: {m['model']} ({m['cores']} cores, CPU class {doc['cpu_class']}), {doc['created']}; "
             f"`{doc['command']}`; 1-minute load average {load_avg['start']:.1f} at the start, {load_avg['end']:.1f} "
             "at the end.", "",
             f"{doc['sentences']} MR sentences ({ip['tokens_mean']:.0f} tokens on average, p90 {ip['tokens_p90']:.0f}, "
             f"max {ip['tokens_max']}), all-MiniLM-L6-v2 fp32 on ONNX Runtime.", "",
             "**In-process cost of the work a server is handed.** One model run (2 threads): "
             + ", ".join(f"{k} tokens {v:.1f} ms" for k, v in ip["run_ms"].items())
             + f"; a run's fixed cost is about {ip['overhead_tokens']:.0f} tokens' worth (Model.tune_batching). All "
             f"sentences sorted by length, batch 32 (the in-process baseline): {ip['sorted_ms_per_sentence']:.2f} ms "
             "a sentence. k sentences in arrival order, per sentence:", "",
             "| k | cut every 16 | cut where cheapest | × the sorted corpus's cost (cheapest cut) |", "|---|---|---|---|"]
    for k, row in ip["arrival_batches_ms_per_sentence"].items():
        lines.append(f"| {k} | {row['every 16']:.2f} ms | {row['cheapest cut']:.2f} ms | "
                     f"{row['cheapest cut'] / ip['sorted_ms_per_sentence']:.2f}× |")
    lines += ["", "**Served**, one sentence per gRPC request, clients on the same cores. Requests/execution, queue and "
              "execution (the stub's round trip: IPC + the Python `execute`) from Triton's statistics; CPU per "
              "request from /proc (client process, tritonserver, the stub processes).", "",
              f"Medians of {doc['repeats']} runs of each deployment, interleaved; sentences/s with its range.", "",
              "| deployment | clients | p50 ms | p99 ms | sentences/s (range) | requests/execution | queue ms | "
              "execution ms | CPU ms/request: client / server / stubs |", "|---|---|---|---|---|---|---|---|---|"]
    for name, res in doc["variants"].items():
        for clients in CLIENTS:
            r = res[str(clients)]
            cpu = r["cpu_ms_per_request"]
            lines.append(f"| {name} | {clients} | {r['latency_ms_p50']:.1f} | {r['latency_ms_p99']:.1f} | "
                         f"{r['texts_per_s']:.0f} ({r['texts_per_s_range'][0]:.0f}–{r['texts_per_s_range'][1]:.0f}) | "
                         f"{r['requests_per_execution']:.1f} | {r['queue_ms']:.1f} | "
                         f"{r['execution_ms']:.1f} | {cpu['client']:.2f} / {cpu['server']:.2f} / {cpu['stubs']:.2f} |")
    before, after = doc["variants"]["before"], doc["variants"]["2 instances"]
    lines += ["", "2 instances (tuned batching) over before: "
              + ", ".join(f"{c} client(s) {after[str(c)]['texts_per_s'] / before[str(c)]['texts_per_s']:.2f}×"
                          for c in CLIENTS)
              + f". In-process sorted-corpus rate: {1e3 / ip['sorted_ms_per_sentence']:.0f} sentences/s."]
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> Path | None:
    """Left: sentences/s by clients per deployment (median, range as bars), the in-process sorted rate as a line.
    Right: what k arrival-order sentences cost per sentence, cut every 16 or where cheapest, against the sorted corpus."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    for i, (name, res) in enumerate(doc["variants"].items()):
        rates = [res[str(c)]["texts_per_s"] for c in CLIENTS]
        lows = [rate - res[str(c)]["texts_per_s_range"][0] for rate, c in zip(rates, CLIENTS)]
        highs = [res[str(c)]["texts_per_s_range"][1] - rate for rate, c in zip(rates, CLIENTS)]
        left.errorbar([c * (1 + 0.03 * i) for c in CLIENTS], rates, yerr=[lows, highs], marker="o", capsize=3,
                      label=name)
    ip = doc["in_process"]
    left.axhline(1e3 / ip["sorted_ms_per_sentence"], color="grey", ls="--", lw=0.8, label="in-process, sorted corpus")
    left.set_xscale("log")
    left.set_xticks(CLIENTS, [str(c) for c in CLIENTS])
    left.set_xlabel("concurrent clients (one sentence per gRPC request)")
    left.set_ylabel("sentences/s")
    left.set_title(f"Triton Python backend, median of {doc['repeats']} runs")
    left.legend(fontsize=7)
    ks = list(ip["arrival_batches_ms_per_sentence"])
    for how, label in (("every 16", "arrival order, cut every 16 (before)"),
                       ("cheapest cut", "arrival order, cut where cheapest")):
        right.plot([int(k) for k in ks], [ip["arrival_batches_ms_per_sentence"][k][how] for k in ks], marker="o",
                   label=label)
    right.axhline(ip["sorted_ms_per_sentence"], color="grey", ls="--", lw=0.8, label="all sentences sorted (batch 32)")
    right.set_xscale("log", base=2)
    right.set_xticks([int(k) for k in ks], ks)
    right.set_xlabel("sentences in one execution (k)")
    right.set_ylabel("ms per sentence, in-process")
    right.set_title("What padding costs")
    right.legend(fontsize=7)
    fig.suptitle(f"{doc['machine']['model']} ({doc['machine']['cores']} cores, {doc['cpu_class']}), {doc['created']}",
                 fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=130)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.triton_path", description=__doc__.splitlines()[0])
    p.add_argument("--out", type=Path, default=Path("benchmarks/results"))
    p.add_argument("--artifact", type=Path, default=None, help="default: the bundled MiniLM, exported once")
    p.add_argument("--repeats", type=int, default=3, help="runs of each deployment, interleaved (default: 3)")
    p.add_argument("--server-python", default=None, help="the serving environment's Python (default: found or made "
                   "by bertship, docs/serving.md)")
    p.add_argument("--replot", action="store_true", help="only redraw triton_path.png from --out's triton_path.json")
    args = p.parse_args(argv)
    if args.replot:
        print(plot(json.loads((args.out / "triton_path.json").read_text()), args.out / "triton_path.png"))
        return 0
    from bertship.runtimes import cpuclass

    art = args.artifact or default_artifact()
    sentences = texts()
    env = serve.serving_env(args.server_python, log=lambda m: print(f"[bench] {m}", file=sys.stderr, flush=True))
    doc: dict[str, Any] = {"benchmark": "triton_path", "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                           "command": "python -m benchmarks.triton_path " + " ".join(
                               argv if argv is not None else sys.argv[1:]),
                           "machine": cpu_info(), "cpu_class": cpuclass.runtime_class("onnxruntime"),
                           "artifact": str(art), "sentences": len(sentences),
                           "load_average": {"start": os.getloadavg()[0]}}
    print("[bench] in-process costs", file=sys.stderr, flush=True)
    doc["in_process"] = in_process(art, sentences)
    # Each deployment measured `repeats` times, the deployments interleaved (a shared machine's slow minute hits them
    # all); the table gives each number's median over the repeats and the throughput's range.
    runs: dict[str, list[dict[str, Any]]] = {name: [] for name in VARIANTS}
    for repeat in range(args.repeats):
        for name, settings in VARIANTS.items():
            print(f"[bench] repeat {repeat + 1}/{args.repeats}: {name}", file=sys.stderr, flush=True)
            runs[name].append(one_variant(art, sentences, env, settings))
    doc["repeats"] = args.repeats
    doc["runs"] = runs
    doc["variants"] = {name: _median(results) for name, results in runs.items()}
    doc["load_average"]["end"] = os.getloadavg()[0]
    text = report(doc)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "triton_path.json").write_text(json.dumps(doc, indent=1) + "\n")
    (args.out / "triton_path.md").write_text(text)
    plot(doc, args.out / "triton_path.png")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
