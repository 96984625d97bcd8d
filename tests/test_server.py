"""`bertship serve` as users run it: the command in its own process on a localhost port, the official `openai` client,
texts of every length under concurrent load, bad requests, an overloaded queue, a killed replica, and SIGTERM —
after which no process of it may be left. Every wait is bounded."""

from __future__ import annotations

import concurrent.futures as cf
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bertship.runtimes import load

pytestmark = [pytest.mark.xdist_group("ray-serve"), pytest.mark.slow]
openai = pytest.importorskip("openai", reason="the serve tests call the server with the official openai client")
httpx = pytest.importorskip("httpx")
pytest.importorskip("ray.serve", reason="bertship serve needs ray[serve] (pip install 'bertship[serve]')")

READY_S = 180
QUEUE_TOKENS = 8000  # small enough that a burst of large requests overflows it; the load test stays far below

# The user's own texts, none of them golden or calibration text: short, long, punctuation, non-Latin, and one past the
# model's 256-token max length.
TEXTS = [
    "ok", "Refund please.", "Where is my parcel?!", "The soup was cold and the waiter never came back.",
    "Das Hotel lag direkt am Bahnhof, aber die Zimmer waren erstaunlich ruhig.",
    "東京の天気は明日晴れるでしょうか", "I've been using this keyboard for three weeks; the space bar squeaks.",
    "Quarterly revenue rose 4% while operating costs fell, beating analyst expectations for the third time.",
    "lol", "Can you explain how photosynthesis turns light into chemical energy in plant cells?",
    " ".join(["The committee reviewed every clause of the agreement in detail before voting."] * 30),
    "Battery life: great. Screen: dim. Price: fair.", "Why does my sourdough starter smell like acetone?",
]


def _free_port() -> int:
    return _free_ports(1)[0]


def _free_ports(n: int) -> list[int]:
    """`n` distinct ports free now (all held open while choosing, so none repeats)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _descendants(pid: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = set(), [pid]
    while todo:
        for c in children.get(todo.pop(), []):
            if c not in out:
                out.add(c)
                todo.append(c)
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


@pytest.fixture(scope="module")
def server(minilm_artifact):
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-c", "import sys; from bertship.cli import main; sys.exit(main())",
                             "serve", str(minilm_artifact), "--port", str(port), "--threads", "2",
                             "--max-queue-tokens", str(QUEUE_TOKENS)],
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    lines: list[str] = []
    ready = threading.Event()

    def read():
        for line in proc.stderr:
            lines.append(line)
            if "serve: ready at" in line:
                ready.set()

    threading.Thread(target=read, daemon=True).start()
    try:
        if not ready.wait(READY_S):
            pytest.fail(f"bertship serve was not ready in {READY_S} s:\n" + "".join(lines[-30:]))
        yield {"url": f"http://127.0.0.1:{port}", "proc": proc, "lines": lines, "port": port,
               "model": load(minilm_artifact)}
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)  # a test that failed before the SIGTERM test: leave nothing behind
            proc.wait(30)


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_the_openai_client_gets_in_process_vectors_under_concurrent_load(server):
    client = openai.OpenAI(base_url=server["url"] + "/v1", api_key="unused", max_retries=0, timeout=60)
    ref = {t: server["model"].embed([t])[0] for t in TEXTS}  # each alone, in-process

    def one(k: int):
        batch = [TEXTS[(k * 5 + j) % len(TEXTS)] for j in range(1 + k % 3)]
        # left out, the client asks for base64 and decodes it itself (its default); or plain floats
        fmt = {"encoding_format": "float"} if k % 2 else {}
        reply = client.embeddings.create(input=batch, model="minilm", **fmt)
        return batch, reply

    with cf.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(one, range(64)))
    for batch, reply in results:
        got = np.array([d.embedding for d in reply.data], dtype=np.float32)
        assert [d.index for d in reply.data] == list(range(len(batch)))
        assert _cosines(got, np.stack([ref[t] for t in batch])).min() > 0.99999
        assert np.abs(got - np.stack([ref[t] for t in batch])).max() < 1e-4
        assert reply.usage.prompt_tokens == sum(len(server["model"].tokenizer.tokenize([t])[0].ids) for t in batch)
    ready = httpx.get(server["url"] + "/ready", timeout=10).json()
    assert ready["batching"]["requests_per_batch"] > 1.5  # concurrent requests were batched together


def test_health_readiness_and_models(server):
    assert httpx.get(server["url"] + "/health", timeout=10).json() == {"status": "ok"}
    ready = httpx.get(server["url"] + "/ready", timeout=10).json()
    assert ready["status"] == "ready" and ready["task"] == "sentence-embedding" and ready["endpoint"] == "/v1/embeddings"
    assert httpx.get(server["url"] + "/v1/models", timeout=10).json()["data"][0]["id"] == ready["model"]


@pytest.mark.parametrize("content, status, needle", [
    (b"\xc3\x28 not utf-8", 400, "not UTF-8"),
    (b"input=hello", 400, "not JSON"),
    (json.dumps({"input": []}).encode(), 422, "empty list"),
    (json.dumps({"input": [1, 2, 3]}).encode(), 422, "not token ids"),
    (json.dumps({"input": [TEXTS[10]], "truncation": "error"}).encode(), 422, "max length of 256 tokens"),
    (json.dumps({"input": ["x"] * 3000}).encode(), 413, "3000 texts in one request"),
    (b'{"input": "' + b"a" * (17 * 2**20) + b'"}', 413, "body is over"),
], ids=["not-utf8", "not-json", "empty", "token-ids", "too-long", "too-many-texts", "too-many-bytes"])
def test_bad_requests_get_json_errors_over_http(server, content, status, needle):
    r = httpx.post(server["url"] + "/v1/embeddings", content=content, timeout=60,
                   headers={"content-type": "application/json"})
    assert r.status_code == status, r.text[:300]
    assert needle in r.json()["error"]["message"]
    wrong = httpx.post(server["url"] + "/v1/rerank", json={"query": "a", "documents": ["b"]}, timeout=30)
    assert wrong.status_code == 404 and "POST /v1/embeddings" in wrong.json()["error"]["message"]


def test_a_burst_past_the_queue_gets_503_with_retry_after_and_the_rest_exact_vectors(server):
    texts = [t for t in TEXTS if len(t) > 40] * 4  # about 1,700 tokens a request; 24 at once overflow the queue
    ref = server["model"].embed(texts)

    def one(_):
        return httpx.post(server["url"] + "/v1/embeddings", json={"input": texts}, timeout=120)

    with cf.ThreadPoolExecutor(24) as pool:
        replies = list(pool.map(one, range(24)))
    codes = [r.status_code for r in replies]
    assert set(codes) <= {200, 503} and codes.count(503) >= 1 and codes.count(200) >= 1, codes
    for r in replies:
        if r.status_code == 503:
            assert int(r.headers["retry-after"]) >= 1 and "queue holds" in r.json()["error"]["message"]
        else:
            got = np.array([d["embedding"] for d in r.json()["data"]], np.float32)
            assert _cosines(got, ref).min() > 0.99999


def test_a_killed_replica_is_restarted_and_no_request_gets_a_wrong_vector(server):
    replicas = [p for p in _descendants(server["proc"].pid) if _alive(p)
                and "ServeReplica:bertship" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")]
    assert len(replicas) == 1, replicas
    ref = {t: server["model"].embed([t])[0] for t in TEXTS}
    stop = time.monotonic() + 8
    outcomes: list[tuple[int, str, list[float] | None]] = []

    def client():
        while time.monotonic() < stop:
            text = TEXTS[len(outcomes) % len(TEXTS)]
            try:
                r = httpx.post(server["url"] + "/v1/embeddings", json={"input": text}, timeout=60)
                outcomes.append((r.status_code, text, r.json()["data"][0]["embedding"] if r.status_code == 200
                                 else None))
            except httpx.HTTPError:
                outcomes.append((-1, text, None))

    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(1.5)
    os.kill(replicas[0], signal.SIGKILL)
    for t in threads:
        t.join(90)
    for status, text, vec in outcomes:  # an error or the right vector, never another text's
        if status == 200:
            assert _cosines(np.array([vec], np.float32), ref[text][None])[0] > 0.99999
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # Ray Serve starts a new replica
        try:
            r = httpx.post(server["url"] + "/v1/embeddings", json={"input": TEXTS[3]}, timeout=30)
            if r.status_code == 200:
                break
        except httpx.HTTPError:
            pass
        time.sleep(1)
    else:
        pytest.fail("no replica answered within 120 s of the kill")
    assert _cosines(np.array([r.json()["data"][0]["embedding"]], np.float32), ref[TEXTS[3]][None])[0] > 0.99999
    new = [p for p in _descendants(server["proc"].pid) if _alive(p)
           and "ServeReplica:bertship" in Path(f"/proc/{p}/cmdline").read_bytes().decode(errors="replace")]
    assert new and replicas[0] not in new


def test_sigterm_stops_the_server_and_every_process_it_started(server):
    proc = server["proc"]
    started = _descendants(proc.pid)
    assert started  # Ray's processes, the proxy and the replica
    proc.send_signal(signal.SIGTERM)  # the main process only, as Kubernetes and systemd do
    assert proc.wait(90) == 0, "".join(server["lines"][-20:])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_alive(p) for p in started):
        time.sleep(0.5)
    assert not [p for p in started if _alive(p)]
    assert any("serve: stopped" in line for line in server["lines"])
    with socket.socket() as s:  # the port is free again (for a new server: reuse past the clients' TIME_WAIT)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("127.0.0.1", server["port"]))


def test_two_ray_nodes_on_localhost_serve_one_replica_each(minilm_artifact, tmp_path):
    """The multi-node layout, on one machine: a head and a second node started by `ray start` as their own processes,
    each with one CPU, then `bertship serve --address` with two one-thread replicas, which only fit one per node."""
    # every port a node would take by default is named: the OS's free port can be one of Ray's fixed defaults (CI
    # once drew 52365, the dashboard agent's, and `ray start` refused it), and two nodes on one machine would both
    # want the defaults
    ray_port, port, client_port, head_agent, node_agent = _free_ports(5)
    # Ray 2.60's `ray start --head` turns token authentication on (the token in ~/.ray/auth_token); every process
    # that joins must say so (docs/serving.md)
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    ray_cli = [sys.executable, "-m", "ray.scripts.scripts"]
    # its own temp dir (short: Ray's socket paths must fit 107 bytes) names this cluster's processes, so they alone
    # are stopped at the end: `ray stop` would stop every Ray instance on the machine, another test's too
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")
    try:
        _run([*ray_cli, "start", "--head", f"--port={ray_port}", "--num-cpus=1", "--include-dashboard=false",
              "--disable-usage-stats", f"--temp-dir={temp}", f"--ray-client-server-port={client_port}",
              f"--dashboard-agent-listen-port={head_agent}"], env=env, timeout=180)
        _run([*ray_cli, "start", f"--address=127.0.0.1:{ray_port}", "--num-cpus=1",
              f"--dashboard-agent-listen-port={node_agent}"], env=env, timeout=180)
        proc = subprocess.Popen([sys.executable, "-c", "import sys; from bertship.cli import main; sys.exit(main())",
                                 "serve", str(minilm_artifact), "--address", f"127.0.0.1:{ray_port}", "--replicas", "2",
                                 "--threads", "1", "--port", str(port)], env=env, stderr=subprocess.PIPE, text=True,
                                start_new_session=True)
        try:
            deadline, lines = time.monotonic() + READY_S, []
            for line in proc.stderr:
                lines.append(line)
                if "serve: ready at" in line or time.monotonic() > deadline:
                    break
            assert "serve: ready at" in lines[-1], "".join(lines[-20:])
            url = f"http://127.0.0.1:{port}"

            def status() -> str:
                out = subprocess.run([*ray_cli, "status", f"--address=127.0.0.1:{ray_port}"], env=env,
                                     capture_output=True, text=True, timeout=60)
                assert out.returncode == 0, out.stderr[-500:]
                return out.stdout

            # both replicas hold their CPU: with one CPU per node, one replica runs on each node (the proxy routes to
            # its own node's replica first, so /ready alone would not show the other)
            serving = status()
            assert "2.0/2.0 CPU" in serving and serving.count(" node_") >= 2, serving
            model = load(minilm_artifact)
            r = httpx.post(url + "/v1/embeddings", json={"input": TEXTS}, timeout=60)
            got = np.array([d["embedding"] for d in r.json()["data"]], np.float32)
            assert _cosines(got, model.embed(TEXTS)).min() > 0.99999
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(90) == 0
            # the cluster keeps running without this application (it was joined, not started), its CPUs free again
            deadline = time.monotonic() + 60
            while "0.0/2.0 CPU" not in (after := status()) and time.monotonic() < deadline:
                time.sleep(2)
            assert "0.0/2.0 CPU" in after, after
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(30)
    finally:
        _kill_matching(temp)
        shutil.rmtree(temp, ignore_errors=True)


def _run(cmd: list[str], **kwargs) -> None:
    out = subprocess.run(cmd, capture_output=True, text=True, **kwargs)
    assert out.returncode == 0, f"{' '.join(cmd[2:5])} failed:\n{out.stderr[-2000:]}"


def _kill_matching(text: str) -> None:
    """SIGKILL every process whose command line contains `text`, and their descendants (Ray's workers rename
    themselves), and wait until they are gone (bounded)."""
    for _ in range(3):
        roots = [int(e.name) for e in Path("/proc").iterdir() if e.name.isdigit() and _alive(int(e.name))
                 and text in _cmdline(int(e.name))]
        pids = [p for p in {*roots, *(d for r in roots for d in _descendants(r))} if _alive(p)]
        if not pids:
            return
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(1)


def _cmdline(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""
