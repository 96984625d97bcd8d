"""`bertship deploy triton|ovms ART --out DIR --check`: start a real server on the written layout, send the artifact's
golden texts over HTTP and gRPC, compare the answers with the golden outputs under the artifact's own limits, then
time it under concurrent clients (p50/p99 latency, throughput). The server is stopped whatever happens.

Expected values come from golden.npz (PyTorch's outputs), as in `verify`: the embedding (or logits) per text through
`fidelity.compare`; answer spans and word tags computed from the golden logits, judged on their scores (a tie between
two spans has equal scores, so a flip under float noise is not a failure). Needs tritonclient (`bertship[serve]`).
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import artifact, cpuclass, serve, tasks
from .errors import BackendMissingError, FidelityError, ServeError
from .fidelity import Tolerance, compare, cosines, text_vectors
from .retrieval import ranking, rerank_groups
from .tokenizer import TextEncoder
from .verify import read_golden

PROTOCOLS = ("http", "grpc")
MAX_ANSWER_TOKENS = 30  # what Model.answer uses by default, and so the served model


def client_module(protocol: str):
    """tritonclient.http or tritonclient.grpc; BackendMissingError naming the extra when it is not installed."""
    try:
        if protocol == "http":
            import tritonclient.http as module
        else:
            import tritonclient.grpc as module
    except ImportError:
        raise BackendMissingError(f"the check needs tritonclient[{protocol}] — {serve.SERVE_INSTALL}") from None
    return module


class Client:
    """One connection to a server over one protocol: texts in, the named numpy outputs back."""

    def __init__(self, protocol: str, url: str, model: str, text_inputs: list[str], outputs: list[str]):
        self.module = client_module(protocol)
        self.client = self.module.InferenceServerClient(url)
        self.model, self.text_inputs, self.outputs = model, text_inputs, outputs

    def infer(self, texts: list[str], pairs: list[str] | None = None) -> dict[str, np.ndarray]:
        """One request holding these texts (and pairs) as a [n, 1] BYTES batch."""
        inputs = []
        for name, values in zip(self.text_inputs, (texts, pairs)):
            tensor = self.module.InferInput(name, [len(values), 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[v.encode("utf-8")] for v in values], dtype=np.object_))
            inputs.append(tensor)
        reply = self.client.infer(self.model, inputs)
        return {name: reply.as_numpy(name) for name in self.outputs}

    def close(self) -> None:
        """Close the connection (an open HTTP connection holds up the server's shutdown)."""
        self.client.close()


def golden_texts(root: Path, manifest: dict[str, Any]) -> tuple[list[str], list[str] | None, list[dict], list[dict]]:
    """(texts, pairs, golden feeds per batch, golden reference outputs per batch) of an artifact."""
    feeds, refs, texts, pairs = read_golden(root, manifest)
    return texts, pairs, feeds, refs


def expected_results(root: Path, manifest: dict[str, Any]) -> dict[str, Any]:
    """What the Python-backend model must answer for each golden text, from PyTorch's golden outputs."""
    texts, pairs, feeds, refs = golden_texts(root, manifest)
    task, outputs = manifest["task"]["name"], manifest["signature"]["outputs"]
    if task in ("sentence-embedding", "feature-extraction"):
        return {"EMBEDDING": np.stack([v for f, r in zip(feeds, refs)
                                       for v in text_vectors(task, outputs, r, f["attention_mask"])])}
    if task == "sequence-classification":
        return {"LOGITS": np.concatenate([r["logits"] for r in refs])}
    if task == "rerank":
        return {"SCORE": np.concatenate([r["scores"] for r in refs])[:, 0], "queries": texts}
    if task in ("sparse-embedding", "multi-vector"):
        return {"vectors": [v for f, r in zip(feeds, refs) for v in text_vectors(task, outputs, r, f["attention_mask"])]}
    encodings = TextEncoder(root / artifact.TOKENIZER, manifest["tokenizer"]).tokenize(texts, pairs)
    rows = [(b, i) for b, f in enumerate(feeds) for i in range(len(f["input_ids"]))]
    if task == "question-answering":
        return {"spans": [tasks.best_span(refs[b]["start_logits"][i], refs[b]["end_logits"][i], encodings[k],
                                          pairs[k], MAX_ANSWER_TOKENS) for k, (b, i) in enumerate(rows)]}
    labels = tasks.label_names(manifest["task"], refs[0]["logits"].shape[-1])
    return {"tags": [tasks.word_tags(refs[b]["logits"][i], encodings[k], texts[k], labels)
                     for k, (b, i) in enumerate(rows)]}


def score_tolerance(tol: Tolerance) -> float:
    """How far a served probability (answer or tag score) may be from the golden one: 1e-3 where the recipe bounds
    max|diff| (float recipes), 0.05 where it judges cosine only (quantized recipes)."""
    return 1e-3 if tol.max_abs_diff is not None else 0.05


def judge(manifest: dict[str, Any], expected: dict[str, Any], got: dict[str, np.ndarray], where: str
          ) -> tuple[dict[str, Any], list[str]]:
    """Compare served rows (one per golden text, in order) with the expected ones; (report, failures)."""
    tol = Tolerance(**manifest["fidelity"]["tolerance"])
    task = manifest["task"]["name"]
    failures: list[str] = []
    if "EMBEDDING" in expected or "LOGITS" in expected:
        name = "EMBEDDING" if "EMBEDDING" in expected else "LOGITS"
        axes, argmax = (["batch", "hidden"], None) if name == "EMBEDDING" else (["batch", "labels"], "labels")
        ref, served = expected[name], np.asarray(got[name], dtype=np.float64)
        check = compare(name, axes, argmax, [ref], [served], [np.ones((len(ref), 1))], tol)
        failures += list(check.failures)
        if name == "EMBEDDING" and tol.min_text_cosine is not None and check.cosine_min < tol.min_text_cosine:
            failures.append(f"EMBEDDING: lowest per-text cosine {check.cosine_min:.6f} < {tol.min_text_cosine}")
        if name == "LOGITS":
            labels = tasks.label_names(manifest["task"], served.shape[-1])
            said = [b.decode("utf-8") for b in np.asarray(got["LABEL"]).reshape(-1)]
            if said != [labels[k] for k in served.argmax(-1)]:
                failures.append("LABEL: does not name the served LOGITS' argmax")
        report = check.as_dict()
    elif task == "rerank":
        ref, served = expected["SCORE"], np.asarray(got["SCORE"], dtype=np.float64).reshape(-1)
        diff = float(np.abs(ref - served).max())
        order = ranking(rerank_groups(expected["queries"], ref, served))
        report = {"output": "SCORE", "max_abs_diff": diff, "ranking": order}
        if diff > score_tolerance(tol):
            failures.append(f"SCORE: max|diff| {diff:.3g} > {score_tolerance(tol):.3g} against the golden scores")
        if tol.min_rank_agreement is not None and (order["top1_agreement"] or 1.0) < tol.min_rank_agreement:
            failures.append(f"SCORE: top-1 agreement {order['top1_agreement']:.4f} < {tol.min_rank_agreement}")
    elif task in ("sparse-embedding", "multi-vector"):
        served = _served_vectors(task, got, len(expected["vectors"][0]))
        cos = cosines(served, expected["vectors"]) if len(served) == len(expected["vectors"]) else np.zeros(1)
        name = "SPARSE" if task == "sparse-embedding" else "TOKEN_EMBEDDINGS"
        diff = max(float(np.abs(a - b).max(initial=0.0)) if a.shape == b.shape else np.inf
                   for a, b in zip(served, expected["vectors"]))
        report = {"output": name, "max_abs_diff": diff, "cosine_min": float(cos.min()), "cosine_mean": float(cos.mean())}
        if cos.min() < tol.min_cosine:
            what = "per-text cosine" if task == "sparse-embedding" else "per-token cosine"
            failures.append(f"{name}: lowest {what} {cos.min():.6f} < {tol.min_cosine} against the golden outputs")
    elif task == "question-answering":
        spans = expected["spans"]
        scores = np.asarray(got["SCORE"], dtype=np.float64).reshape(-1)
        answers = [b.decode("utf-8") for b in np.asarray(got["ANSWER"]).reshape(-1)]
        diff = float(np.abs(scores - [s["score"] for s in spans]).max())
        same = float(np.mean([a == s["answer"] for a, s in zip(answers, spans)]))
        report = {"output": "SCORE", "max_abs_diff": diff, "answer_agreement": same}
        if diff > score_tolerance(tol):
            failures.append(f"SCORE: max|diff| {diff:.3g} > {score_tolerance(tol):.3g} against the golden spans")
    else:
        served = [json.loads(b.decode("utf-8")) for b in np.asarray(got["TAGS"]).reshape(-1)]
        words = [[(t["start"], t["end"]) for t in s] == [(t["start"], t["end"]) for t in e]
                 for s, e in zip(served, expected["tags"])]
        diffs = [abs(a["score"] - b["score"]) for s, e in zip(served, expected["tags"]) for a, b in zip(s, e)]
        diff = max(diffs, default=0.0)
        report = {"output": "TAGS", "max_abs_diff": diff, "words_agree": float(np.mean(words))}
        if not all(words):
            failures.append(f"TAGS: the words of {words.count(False)} text(s) differ from the golden ones")
        if diff > score_tolerance(tol):
            failures.append(f"TAGS: score max|diff| {diff:.3g} > {score_tolerance(tol):.3g}")
    return report, [f"{where}: {f}" for f in failures]


def _served_vectors(task: str, got: dict[str, Any], width: int) -> list[np.ndarray]:
    """Per text, what text_vectors gives for the task, from the served rows: the sparse vector made dense over the
    vocabulary (`width` ids), or the [tokens, dim] matrix."""
    if task == "multi-vector":
        return [np.asarray(m[:n], np.float64) for m, n in zip(got["TOKEN_EMBEDDINGS"],
                                                                     np.asarray(got["TOKENS"]).reshape(-1))]
    rows = [json.loads(b.decode("utf-8")) for b in np.asarray(got["SPARSE"]).reshape(-1)]
    out = []
    for r in rows:
        dense = np.zeros(width)
        dense[r["indices"]] = r["values"]
        out.append(dense)
    return out


def _rows(replies: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The replies' rows stacked; a per-token output (multi-vector) is zero-padded to the longest reply first."""
    out = {}
    for name in replies[0]:
        parts = [r[name] for r in replies]
        if parts[0].ndim == 3:
            longest = max(p.shape[1] for p in parts)
            parts = [np.pad(p, ((0, 0), (0, longest - p.shape[1]), (0, 0))) for p in parts]
        out[name] = np.concatenate(parts)
    return out


def served_alone(make: Callable[[], Client], texts: list[str], pairs: list[str] | None, clients: int
                 ) -> dict[str, np.ndarray]:
    """Each text in its own request, `clients` at a time (so the dynamic batcher joins them); rows in text order."""
    def one(k: int) -> dict[str, np.ndarray]:
        return pool_client().infer([texts[k]], [pairs[k]] if pairs else None)

    pool_client = _per_thread(make)
    try:
        with ThreadPoolExecutor(clients) as pool:
            return _rows(list(pool.map(one, range(len(texts)))))
    finally:
        pool_client.close_all()


def served_batched(client: Client, texts: list[str], pairs: list[str] | None, size: int) -> dict[str, np.ndarray]:
    """The texts in requests of `size` (mixed lengths in one request); rows in text order."""
    return _rows([client.infer(texts[s : s + size], pairs[s : s + size] if pairs else None)
                  for s in range(0, len(texts), size)])


class _per_thread:
    """One client per thread (a tritonclient client is not shared between threads)."""

    def __init__(self, make: Callable[[], Client]):
        import threading

        self.make, self.local, self.made = make, threading.local(), []

    def __call__(self) -> Client:
        if not hasattr(self.local, "client"):
            self.local.client = self.make()
            self.made.append(self.local.client)
        return self.local.client

    def close_all(self) -> None:
        for client in self.made:
            client.close()


def measure(make: Callable[[], Client], texts: list[str], pairs: list[str] | None, clients: int,
            requests: int, per_request: int = 1) -> dict[str, Any]:
    """`requests` requests of `per_request` texts each (the texts cycled) from `clients` concurrent clients: latency
    per request, requests/s and texts/s."""
    pool_client = _per_thread(make)

    def one(k: int) -> float:
        idx = [(k * per_request + j) % len(texts) for j in range(per_request)]
        start = time.perf_counter()
        pool_client().infer([texts[i] for i in idx], [pairs[i] for i in idx] if pairs else None)
        return time.perf_counter() - start

    try:
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(one, range(clients)))  # connect every client first: not part of the timing
            start = time.perf_counter()
            latencies = np.array(list(pool.map(one, range(requests))))
            wall = time.perf_counter() - start
    finally:
        pool_client.close_all()
    return {"clients": clients, "requests": requests, "per_request": per_request,
            "latency_ms_p50": float(np.percentile(latencies, 50) * 1e3),
            "latency_ms_p99": float(np.percentile(latencies, 99) * 1e3), "throughput_rps": requests / wall,
            "texts_per_s": requests * per_request / wall, "wall_s": wall}


def check_triton(root: str | Path, repository: str | Path, server_python: str | Path | None = None,
                 clients: int = 8, requests: int = 200, log: Callable[[str], None] = lambda _: None,
                 workdir: str | Path | None = None) -> dict[str, Any]:
    """Start Triton on a `deploy triton --backend python` repository, check it against the golden outputs over HTTP
    and gRPC, and time it. The server runs from `server_python`'s environment, else one found or made once
    (serve.serving_env); FidelityError on a mismatch, ServeError when the server fails, BackendMissingError when
    no server (or backend) can run here. `workdir` holds the server's backend folder and log (default: a new
    temporary folder, removed when the check passes)."""
    root, repository = Path(root), Path(repository)
    manifest = artifact.read_manifest(root)
    artifact.check_files(root, manifest, only={artifact.GOLDEN, artifact.TOKENIZER})  # what the check trusts
    record = json.loads((repository / "bertship-deploy.json").read_text(encoding="utf-8"))
    env = serve.serving_env(server_python, record.get("runtime") or "onnxruntime", log=log)
    binary = serve.find_triton(env)
    if record["backend"] != "python":
        has = "has" if binary.has_backend(record["backend"]) else "has no"
        raise BackendMissingError(
            f"--check serves the Python-backend layout (the tritonserver of {binary.source} {has} a "
            f"{record['backend']} backend; nvidia-pytriton ships only the Python one) — deploy with --backend python, "
            "or load this repository in NGC's nvcr.io/nvidia/tritonserver container (docs/serving.md)")
    env.require(record["runtime"])
    for protocol in PROTOCOLS:
        client_module(protocol)
    texts, pairs, _, _ = golden_texts(root, manifest)
    expected = expected_results(root, manifest)
    model = record["models"][0]
    # the server runs on this machine's CPU: the class its runtime's int8 kernels measure here
    report: dict[str, Any] = {"server": binary.source, "server_python": str(env.python), "model": model,
                              "texts": len(texts), "fidelity": {}, "cpu_class": cpuclass.runtime_class(record["runtime"])}
    failures: list[str] = []
    log(f"starting tritonserver ({binary.source}) on {repository} …")
    with serve.triton_server(repository, env, binary, workdir) as server:
        urls = {"http": server.http_url, "grpc": server.grpc_url}
        log(f"ready: HTTP {urls['http']}, gRPC {urls['grpc']}; sending {len(texts)} golden texts over each")
        for protocol in PROTOCOLS:
            make = lambda p=protocol: Client(p, urls[p], model, record["text_inputs"], record["outputs"])  # noqa: E731
            try:
                alone = served_alone(make, texts, pairs, clients)
                client = make()
                try:
                    batched = served_batched(client, texts, pairs, 8)
                finally:
                    client.close()
            except Exception as exc:  # a refused request or a dead server: say which, with the server's log
                raise _served_error(server, protocol, exc) from None
            for how, got in (("alone", alone), ("batched", batched)):
                rep, failed = judge(manifest, expected, got, f"{protocol} {how}")
                report["fidelity"][f"{protocol}_{how}"] = rep
                failures += failed
        if failures:
            raise FidelityError(failures, fix="the served outputs differ from the golden ones; run `bertship verify` "
                                              "on the artifact, and compare the serving environment's packages")
        log(f"timing {requests} requests from {clients} concurrent gRPC clients …")
        try:
            report["load"] = measure(lambda: Client("grpc", urls["grpc"], model, record["text_inputs"],
                                                    record["outputs"]), texts, pairs, clients, requests)
        except Exception as exc:
            raise _served_error(server, "grpc", exc) from None
    return report


def _served_error(server: serve.Server, protocol: str, exc: Exception) -> ServeError:
    """ServeError saying what failed; a dead Python backend stub is named as such, with what to do."""
    if "is not healthy" in str(exc):
        return ServeError(f"a {protocol} request failed because a model instance's Python backend stub process died "
                          f"({str(exc)[:120]}): Triton 2.51 does not restart it, answers every later request to that "
                          "instance with this error and still reports itself ready — restart the server (in "
                          f"production: a liveness probe that sends a request); server log: {server.log}")
    state = "the server is still running" if server.alive() else "the server process died"
    return ServeError(f"{protocol} request failed ({type(exc).__name__}: {str(exc)[:200]}); {state}; server log: "
                      f"{server.log_tail()} — see {server.log}")


def check_ovms(root: str | Path, out: str | Path) -> dict[str, Any]:
    """The OVMS layout's check: needs an `ovms` binary (BackendMissingError, exit 6, saying where to get one)."""
    serve.find_ovms()
    raise BackendMissingError("an ovms binary was found, but bertship's check drives Triton only so far — start it "
                              f"yourself with `ovms --config_path {Path(out) / 'config.json'} --port 9000 "
                              "--rest_port 8000` (see docs/serving.md)")
