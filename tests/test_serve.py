"""`bertship deploy triton --backend python` under a real Triton server: `--check` on every task, concurrent load,
bad requests, a killed model instance, and a server that is always stopped.

The server is nvidia-pytriton's tritonserver, run from the serving environment (serve.serving_env:
BERTSHIP_SERVE_PYTHON, else bertship's own, made by the first test that needs it). Every server listens on 127.0.0.1 only,
every request loop is bounded, and every server is stopped by the test that started it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from bertship.cli import main
from bertship.runtimes import artifact, deploy, load, serve, serve_check
from bertship.runtimes.errors import ArtifactError, BackendMissingError, FidelityError, MachineError, ServeError

tritonclient = pytest.importorskip("tritonclient.grpc", reason="the serve tests need pip install 'bertship[serve]'")
import tritonclient.http as http  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = [pytest.mark.xdist_group("triton"), pytest.mark.slow]  # module fixtures on one xdist worker

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def serve_env(request):
    """The serving environment as `deploy --check` finds it (serve.serving_env): BERTSHIP_SERVE_PYTHON, else
    bertship's own under ~/.cache/bertship, made by the first test that needs it (up to 2 minutes of pip, once per
    machine), so that README's `pytest` is the whole test command on a new machine too. Skipped only where
    nvidia-pytriton's server cannot run on this machine."""
    report = request.config.pluginmanager.get_plugin("terminalreporter")
    say = report.write_line if report else print
    env = serve.serving_env(log=lambda m: say(f"[tests] {m}"))
    try:
        serve.find_triton(env)
    except MachineError as exc:  # not x86_64 Linux, or glibc < 2.35: the wheel's binary cannot run here
        pytest.skip(f"tritonserver cannot run on this machine: {exc}")
    env.require("onnxruntime")
    return env


@pytest.fixture(scope="session")
def embedding_repo(task_artifact, tmp_path_factory):
    """A Python-backend repository of the tiny sentence-embedding artifact, truncation='error', 2 instances."""
    art = task_artifact("sentence-embedding")
    out = tmp_path_factory.mktemp("serve") / "repo"
    # Hold requests up to 20 ms so concurrent ones reach execute() together: the joint-batch path is then exercised.
    deploy.triton(art, out, backend="python", name="emb", truncation="error", instances=2, threads=1, max_batch=16,
                  queue_delay_us=20000)
    assert "max_queue_delay_microseconds: 20000" in (out / "emb" / "config.pbtxt").read_text()
    return art, out


def _texts(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    words = "the a model served text quarterly results bright ünïcode café why no".split()
    return [" ".join(rng.choice(words, size=int(rng.integers(1, 18)))) for _ in range(n)]


def _infer(module, client, texts, name="TEXT", dtype="BYTES", array=None):
    array = np.array([[t.encode("utf-8")] for t in texts], dtype=object) if array is None else array
    tensor = module.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return client.infer("emb", [tensor]).as_numpy("EMBEDDING")


@pytest.mark.parametrize("task,runtime", [("sentence-embedding", "onnxruntime"), ("sentence-embedding", "openvino"),
                                          ("sequence-classification", "onnxruntime"),
                                          ("question-answering", "onnxruntime"),
                                          ("token-classification", "onnxruntime"), ("rerank", "onnxruntime"),
                                          ("sparse-embedding", "openvino"), ("multi-vector", "onnxruntime")])
def test_check_serves_the_golden_outputs(task_artifact, serve_env, tmp_path, capsys, task, runtime):
    art = task_artifact(task)
    # the first case finds its serving environment itself, as a user's `deploy --check` does
    python = [] if (task, runtime) == ("sentence-embedding", "onnxruntime") else ["--server-python", str(serve_env.python)]
    code = main(["deploy", "triton", str(art), "--out", str(tmp_path / "repo"), "--backend", "python", "--runtime",
                 runtime, "--check", *python, "--clients", "4", "--requests", "40"])
    out = capsys.readouterr()
    assert code == 0, out.err
    if not python:
        assert "serving environment: " in out.err
    for where in ("http_alone", "http_batched", "grpc_alone", "grpc_batched"):
        assert f"{where}" in out.out and " ok " in out.out
    assert "p50" in out.out and "p99" in out.out and "requests/s" in out.out
    from bertship.runtimes.cpuclass import runtime_class

    assert f"CPU class {runtime_class(runtime)})" in out.out
    record = json.loads((tmp_path / "repo" / "bertship-deploy.json").read_text())
    assert record["runtime"] == runtime
    assert record["text_inputs"] == (["TEXT", "TEXT_PAIR"] if task in ("question-answering", "rerank") else ["TEXT"])
    assert not list(tmp_path.glob("bertship-serve-*"))


def test_check_fails_when_served_outputs_differ_from_the_golden_ones(task_artifact, serve_env, tmp_path):
    art = task_artifact("sentence-embedding")
    deploy.triton(art, tmp_path / "repo", backend="python", name="emb")
    other = tmp_path / "other"
    shutil.copytree(art, other)
    with np.load(other / "golden.npz") as data:
        arrays = dict(data)
    arrays["b0.ref.sentence_embedding"][3] *= -1  # one golden text's reference turned around
    np.savez(other / "golden.npz", **arrays)
    with pytest.raises(ArtifactError, match="checksums"):  # a changed golden file is refused as such (exit 5) ...
        serve_check.check_triton(other, tmp_path / "repo", server_python=serve_env.python, requests=10,
                                 workdir=tmp_path / "server")
    manifest = json.loads((other / "manifest.json").read_text())
    for entry in manifest["files"]:  # ... so the changed reference is made to look like the artifact's own
        if entry["path"] == "golden.npz":
            entry.update(bytes=(other / "golden.npz").stat().st_size, sha256=artifact.sha256_file(other / "golden.npz"))
    (other / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(FidelityError, match="EMBEDDING: min cosine -1") as info:
        serve_check.check_triton(other, tmp_path / "repo", server_python=serve_env.python, requests=10,
                                 workdir=tmp_path / "server")
    assert info.value.exit_code == 4


def test_concurrent_clients_get_exactly_what_embed_gives(embedding_repo, serve_env):
    art, repo = embedding_repo
    runtime = load(art)
    requests = [_texts(int(k % 3) + 1, seed=k) for k in range(8 * 25)]
    requests[5] = ["x"]  # a one-token text among long ones
    errors, got = [], {}

    def client(c: int) -> None:
        module = http if c % 2 else tritonclient
        conn = module.InferenceServerClient(server.http_url if c % 2 else server.grpc_url)
        try:
            for k in range(c, len(requests), 8):
                try:
                    got[k] = _infer(module, conn, requests[k])
                except Exception as exc:  # every failure is counted, none may happen
                    errors.append(f"request {k}: {exc}")
        finally:
            conn.close()

    with serve.triton_server(repo, serve_env) as server:
        threads = [threading.Thread(target=client, args=(c,)) for c in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
    assert errors == []
    assert sorted(got) == list(range(len(requests)))
    flat = [t for r in requests for t in r]
    expected = runtime.embed(flat)
    served = np.concatenate([got[k] for k in range(len(requests))])
    # The dynamic batcher groups texts differently from one embed() call: equal up to float summation order.
    np.testing.assert_allclose(served, expected, atol=2e-6, rtol=0)


def test_bad_requests_get_errors_and_the_server_keeps_serving(embedding_repo, serve_env):
    art, repo = embedding_repo
    good = load(art).embed(["still serving"])
    long_text = "word " * 1000  # past the max length, and the repository says truncation="error"
    bad = [  # (texts, _infer options, what the error says)
        (["ok"], dict(dtype="INT32", array=np.array([[1]], dtype=np.int32)), "data-type is 'INT32', but model 'emb'"),
        (["ok"], dict(array=np.array([[b"a", b"b"]], dtype=object)), "unexpected shape for input 'TEXT'"),
        (["ok"], dict(array=np.zeros((0, 1), dtype=object)), "got 0"),
        (["ok"], dict(array=np.array([[b"\xff\xfe not utf-8"]], dtype=object)), "TEXT[0] is not UTF-8"),
        ([long_text], {}, "longer than this model's max length"),
        ([long_text], {}, "deploy with `bertship deploy triton --backend python --truncation truncate`"),
        (["ok"], dict(name="TXT"), "unexpected inference input 'TXT'"),
    ]
    with serve.triton_server(repo, serve_env) as server:
        for module, url in ((http, server.http_url), (tritonclient, server.grpc_url)):
            conn = module.InferenceServerClient(url)
            try:
                for texts, options, needle in bad:
                    with pytest.raises(InferenceServerException) as info:
                        _infer(module, conn, texts, **options)
                    assert needle in str(info.value)
                    np.testing.assert_allclose(_infer(module, conn, ["still serving"]), good, atol=2e-6)
            finally:
                conn.close()
        # A bad request batched together with good ones: only it fails.
        outcomes: dict[int, object] = {}

        def send(k: int) -> None:
            conn = tritonclient.InferenceServerClient(server.grpc_url)
            try:
                outcomes[k] = _infer(tritonclient, conn, [long_text if k == 3 else f"text number {k}"])
            except InferenceServerException as exc:
                outcomes[k] = exc
            finally:
                conn.close()

        threads = [threading.Thread(target=send, args=(k,)) for k in range(6)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
    assert isinstance(outcomes[3], InferenceServerException) and "max length" in str(outcomes[3])
    expected = load(art).embed([f"text number {k}" for k in range(6) if k != 3])
    np.testing.assert_allclose(np.concatenate([outcomes[k] for k in range(6) if k != 3]), expected, atol=2e-6)


def _stub_pids(repo: Path) -> list[int]:
    """Python backend stub processes serving models of this repository."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and "triton_python_backend_stub" in cmd and str(repo.resolve()) in cmd:
            pids.append(int(proc.name))
    return pids


def test_a_killed_model_instance_is_reported_by_check(task_artifact, serve_env, tmp_path):
    # Measured with Triton 2.51 (nvidia-pytriton 0.7.0): a killed stub is not restarted, every later request to that
    # instance fails with "Stub process … is not healthy", and the health endpoints still answer 200. So --check,
    # which would otherwise pass, must fail with a message that says so.
    art = task_artifact("sentence-embedding")
    repo = tmp_path / "repo"
    deploy.triton(art, repo, backend="python", name="emb")
    killed = []

    def kill_during_timing(message: str) -> None:
        if message.startswith("timing"):
            def kill() -> None:
                time.sleep(0.5)
                for pid in _stub_pids(repo):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            threading.Thread(target=kill, daemon=True).start()

    with pytest.raises(ServeError, match="Python backend stub process died") as info:
        serve_check.check_triton(art, repo, server_python=serve_env.python, clients=4, requests=4000,
                                 log=kill_during_timing, workdir=tmp_path / "server")
    assert killed and info.value.exit_code == 13 and "restart the server" in str(info.value)
    assert _stub_pids(repo) == []  # the server and its remaining processes were stopped


def test_the_server_is_stopped_whatever_happens(embedding_repo, serve_env, tmp_path):
    art, repo = embedding_repo
    with pytest.raises(RuntimeError, match="boom"):
        with serve.triton_server(repo, serve_env, workdir=tmp_path / "server") as server:
            pid = server.process.pid
            raise RuntimeError("boom")
    with pytest.raises(ProcessLookupError):
        os.killpg(pid, 0)  # the whole process group, stubs included, is gone
    # The process that started the server is killed outright (no atexit, no finally): the server goes with it.
    script = (f"import sys; from bertship.runtimes import serve\n"
              f"env = serve.probe({str(serve_env.python)!r})\n"
              f"s = serve.triton_server({str(repo)!r}, env, workdir={str(tmp_path / 'orphan')!r})\n"
              "print(s.process.pid, flush=True)\n"
              "import os, signal; os.kill(os.getpid(), signal.SIGKILL)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=200)
    orphan = int(done.stdout.split()[0])
    deadline = time.monotonic() + 40
    while _running(orphan) and time.monotonic() < deadline:
        time.sleep(0.2)
    alive = _running(orphan)
    if alive:
        os.killpg(orphan, signal.SIGKILL)  # the test's own server: leave nothing behind even when failing
    assert not alive, "the server outlived the process that started it"


def _running(pid: int) -> bool:
    """Whether process `pid` exists and is not a zombie waiting to be reaped."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def test_a_repository_that_cannot_load_is_a_clear_serve_error(task_artifact, serve_env, tmp_path, capsys):
    art = task_artifact("sentence-embedding")
    repo = tmp_path / "repo"
    deploy.triton(art, repo, backend="python", name="emb")
    with open(repo / "emb" / "1" / "artifact" / "onnxruntime" / "model.onnx", "ab") as fh:
        fh.write(b"\0")  # the copied model no longer matches its checksum: load() in the stub refuses it
    with pytest.raises(ServeError, match="before it was ready") as info:
        serve_check.check_triton(art, repo, server_python=serve_env.python, workdir=tmp_path / "server")
    assert "checksum" in str(info.value) and "server.log" in str(info.value)


def test_no_server_and_unserved_layouts_exit_6(task_artifact, serve_env, tmp_path, capsys):
    art = task_artifact("sentence-embedding")
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)
    cases = [
        (["triton", "--backend", "python", "--server-python", str(bare / "bin" / "python")], "no tritonserver binary"),
        (["triton", "--backend", "onnxruntime", "--server-python", str(serve_env.python)], "--backend python"),
    ]
    if shutil.which("ovms") is None:
        cases.append((["ovms"], "no ovms binary on PATH"))
    for k, (argv, needle) in enumerate(cases):
        target, *rest = argv
        assert main(["deploy", target, str(art), "--out", str(tmp_path / f"o{k}"), "--check", *rest]) == 6
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith("bertship: error:") and needle in err and " — " in err
    numpy2 = serve.ServeEnv(Path(sys.executable), "3.11", "/usr/lib", None, {"numpy": "2.4.6", "tokenizers": "0.22.2",
                                                                            "onnxruntime": "1.32.0"})
    with pytest.raises(BackendMissingError, match="corrupts tensors under numpy 2"):
        numpy2.require("onnxruntime")


def test_the_serving_environment_is_made_once_with_progress_and_a_half_made_one_is_made_again(tmp_path, monkeypatch):
    home = tmp_path / "cache" / "env"
    lines: list[str] = []
    env = serve.make_env(home, (), lines.append)  # no pins: only the venv (the real pins are the fixture's, once)
    assert (home / serve.ENV_MARK).is_file() and env.python == home / "bin" / "python"
    assert any("making the serving environment once" in line for line in lines)
    assert any("serving environment ready" in line for line in lines)
    made = (home / "pyvenv.cfg").stat().st_mtime_ns
    lines.clear()
    serve.make_env(home, (), lines.append)  # made already: used as it is
    assert (home / "pyvenv.cfg").stat().st_mtime_ns == made and "made by another process" in lines[0]
    (home / serve.ENV_MARK).unlink()  # as an interrupted make leaves it
    (home / "junk").write_text("half-made")
    serve.make_env(home, (), lines.append)
    assert (home / serve.ENV_MARK).is_file() and not (home / "junk").exists()
    # serving_env finds a made one under BERTSHIP_CACHE, and never makes one when asked not to
    monkeypatch.delenv("BERTSHIP_SERVE_PYTHON", raising=False)
    monkeypatch.setenv("BERTSHIP_CACHE", str(tmp_path / "empty-cache"))
    if serve._usable(serve.probe(), "onnxruntime") is not None:  # this Python cannot serve (numpy 2): none found
        with pytest.raises(BackendMissingError, match="no serving environment"):
            serve.serving_env(make=False)
    assert not (tmp_path / "empty-cache").exists() or not any((tmp_path / "empty-cache").iterdir())


def test_a_failing_pip_leaves_no_half_made_environment(tmp_path):
    home = tmp_path / "env"
    with pytest.raises(BackendMissingError, match="could not make the serving environment"):
        serve.make_env(home, ("--no-index", "bertship-no-such-package==0.0.1"), lambda _: None)
    assert not home.exists()

