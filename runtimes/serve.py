"""Run a real Triton server on a repository `bertship deploy` wrote: find the binary, start it on free localhost ports,
wait until it is ready, and stop it — with its whole process group — whatever happens.

The binary comes from the `nvidia-pytriton` wheel (tritonserver + the Python backend + its libraries; no ONNX Runtime
or OpenVINO backend) or from a `tritonserver` on PATH (NGC's nvcr.io/nvidia/tritonserver container has every
backend). Triton's Python backend runs each model instance in a stub process with an embedded interpreter: that is
the serving environment's Python (`probe`, `SERVE_ENV`), wired up as pytriton does (`environment`). Torch-free;
tritonclient is not needed here.
"""

from __future__ import annotations

import atexit
import ctypes
import fcntl
import hashlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .errors import BackendMissingError, MachineError, ServeError, UsageError

# The Python backend's stub in nvidia-pytriton 0.7.0 (Triton 2.51) was built with a pybind11 that predates numpy 2:
# under numpy 2 every tensor it hands to Python arrives as its first byte repeated (a BYTES input crashes the stub).
# pytriton declares numpy<2 for that reason, and bertship pins numpy==2.4.6, so the server runs from its own
# environment, with numpy 1.26: `serving_env` finds one or makes it once (make_env). The repository carries its own
# copy of the bertship runtime, so bertship need not be installed there.
SERVE_PINS = ("nvidia-pytriton==0.7.0", "numpy==1.26.4", "onnxruntime==1.32.0", "tokenizers==0.22.2",
              "openvino==2026.4.1")
SERVE_ENV = "python -m venv .serve-env && .serve-env/bin/pip install " + " ".join(SERVE_PINS)  # by hand, the same
ENV_MARK = "bertship-serve-env.json"  # written last: an environment without it is half-made and is made again
# what to do when a Python given to serve from cannot: let bertship make its own, or make one by hand
FIX = f"drop --server-python (bertship then makes its serving environment once), or {SERVE_ENV} and pass " \
      "--server-python .serve-env/bin/python"
PIP_PROGRESS = ("Collecting", "Installing collected", "Successfully installed")
SERVE_INSTALL = "pip install 'bertship[serve]'"
PYTRITON_GLIBC = (2, 35)  # its wheel is manylinux_2_35_x86_64
READY_TIMEOUT_S = 180.0
LOG_NOISE = ("CudaDriverHelper", "pinned memory", "CUDA")  # a CPU-only machine's harmless startup errors
STOP_TIMEOUT_S = 30.0
_PROBE = """
import importlib.util, json, sys, sysconfig
def version(name):
    try:
        from importlib.metadata import version
        return version(name)
    except Exception:
        return None
spec = importlib.util.find_spec("pytriton")
print(json.dumps({"version": "%d.%d" % sys.version_info[:2],
                  "libdir": sysconfig.get_config_var("LIBDIR") if sysconfig.get_config_var("Py_ENABLE_SHARED") else None,
                  "pytriton": spec.submodule_search_locations[0] if spec else None,
                  "packages": {n: version(n) for n in ("numpy", "tokenizers", "onnxruntime", "openvino")}}))
"""


@dataclass(frozen=True)
class ServeEnv:
    """The interpreter whose environment runs Triton's Python backend stubs, and what that environment holds."""

    python: Path
    version: str  # "3.11": the stub must be built for it
    libdir: str | None  # the folder of its libpython (None: not a shared build, the stub cannot embed it)
    pytriton: Path | None  # the nvidia-pytriton package folder, when installed there
    packages: dict[str, str | None]  # numpy, tokenizers, onnxruntime, openvino: version or None

    def require(self, runtime: str) -> None:
        """BackendMissingError (exit 6) unless the stub can run the bertship runtime on `runtime` here."""
        numpy = self.packages.get("numpy")
        missing = [n for n in ("numpy", "tokenizers", runtime) if not self.packages.get(n)]
        if missing:
            raise BackendMissingError(f"the serving Python {self.python} lacks {', '.join(missing)} — {FIX}")
        if int(numpy.split(".")[0]) >= 2:
            raise BackendMissingError(
                f"the serving Python {self.python} has numpy {numpy}, but the Python backend stub of nvidia-pytriton "
                f"0.7.0 corrupts tensors under numpy 2 — {FIX}")
        if self.libdir is None:
            raise MachineError(f"{self.python} is not a shared-library build of Python, which Triton's Python "
                               "backend stub embeds — use a Python built with --enable-shared (pyenv: "
                               "PYTHON_CONFIGURE_OPTS=--enable-shared), or the system Python")


def probe(python: str | Path | None = None) -> ServeEnv:
    """What the interpreter `python` (default: this one) offers the Python backend; UsageError if it does not run."""
    python = Path(python or sys.executable)
    try:
        done = subprocess.run([str(python), "-c", _PROBE], capture_output=True, text=True, timeout=120)
    except OSError as exc:
        raise UsageError(f"--server-python {python} cannot be run ({exc.strerror}) — pass a Python interpreter") from None
    if done.returncode != 0:
        raise UsageError(f"--server-python {python} failed: {done.stderr.strip()[-200:]} — pass a Python interpreter")
    info = json.loads(done.stdout.strip().splitlines()[-1])
    # Its bin folder, unresolved: a virtualenv's python is a link to the base interpreter.
    return ServeEnv(python.absolute(), info["version"], info["libdir"],
                    Path(info["pytriton"]) if info["pytriton"] else None, info["packages"])


def env_home() -> Path:
    """Where bertship keeps the serving environment it makes: $BERTSHIP_CACHE (default ~/.cache/bertship, or under
    $XDG_CACHE_HOME), one folder per Python version and set of pins."""
    base = os.environ.get("BERTSHIP_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "bertship")
    key = hashlib.sha256(" ".join(SERVE_PINS).encode()).hexdigest()[:10]
    return Path(base) / f"serve-env-py{sys.version_info[0]}.{sys.version_info[1]}-{key}"


def _usable(env: ServeEnv, runtime: str) -> str | None:
    """Why `env` cannot serve `runtime` (None: it can)."""
    if env.pytriton is None:
        return "no nvidia-pytriton"
    try:
        env.require(runtime)
    except (BackendMissingError, MachineError) as exc:
        return str(exc).split(" — ")[0]
    return None


def serving_env(python: str | Path | None = None, runtime: str = "onnxruntime", make: bool = True,
                log: Callable[[str], None] = lambda _: None) -> ServeEnv:
    """The environment whose Python runs Triton's Python backend for `runtime`.

    `python` (or $BERTSHIP_SERVE_PYTHON) when given, as it is (ServeEnv.require says what it lacks). Otherwise this
    interpreter where it can serve (nvidia-pytriton, numpy < 2, tokenizers, the runtime), else bertship's own
    environment under env_home(), made there once when missing (`make`; up to 2 minutes of pip, with progress lines).
    """
    python = python or os.environ.get("BERTSHIP_SERVE_PYTHON")
    if python:
        log(f"serving environment: {python} (as given)")
        return probe(python)
    here = probe()
    if _usable(here, runtime) is None:
        log(f"serving environment: this Python ({here.python})")
        return here
    home = env_home()
    if (home / ENV_MARK).is_file():
        env = probe(home / "bin" / "python")
        if _usable(env, runtime) is None:
            log(f"serving environment: {home}")
            return env
    if not make:
        raise BackendMissingError(f"no serving environment (this Python has {_usable(here, runtime)}, none made in "
                                  f"{home}) — run `bertship deploy ... --check` once to make it, or {SERVE_ENV}")
    return make_env(home, SERVE_PINS, log)


def make_env(home: Path, pins: tuple[str, ...] | list[str], log: Callable[[str], None] = lambda _: None) -> ServeEnv:
    """A virtual environment at `home` with `pins` installed by pip, made once: under a lock (one maker among
    processes), into `home` with ENV_MARK written last; a folder without the mark is removed and made again."""
    home.parent.mkdir(parents=True, exist_ok=True)
    with open(home.parent / f"{home.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another process making it: wait, then use what it made
        if (home / ENV_MARK).is_file():
            log(f"serving environment: {home} (made by another process)")
            return probe(home / "bin" / "python")
        shutil.rmtree(home, ignore_errors=True)  # half-made by an interrupted run
        base = getattr(sys, "_base_executable", None) or sys.executable
        log(f"making the serving environment once, in {home} (Python {sys.version_info[0]}.{sys.version_info[1]}"
            f"{': pip install ' + ' '.join(pins) if pins else ''}; up to 2 minutes) …")
        started = time.monotonic()
        try:
            _run_logged([base, "-m", "venv", str(home)] if pins else [base, "-m", "venv", "--without-pip", str(home)],
                        log)
            if pins:
                _run_logged([str(home / "bin" / "python"), "-m", "pip", "install", "--progress-bar", "off",
                             "--disable-pip-version-check", *pins], log)
            env = probe(home / "bin" / "python")
            (home / ENV_MARK).write_text(json.dumps({"pins": list(pins), "python": env.version}) + "\n",
                                         encoding="utf-8")
        except BaseException:
            shutil.rmtree(home, ignore_errors=True)
            raise
        log(f"serving environment ready in {time.monotonic() - started:.0f} s: {home}")
        return env


def _run_logged(argv: list[str], log: Callable[[str], None]) -> None:
    """Run a command, passing pip's progress lines to `log`; BackendMissingError with its last lines if it fails."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                               env={k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")})
    tail: list[str] = []
    for line in process.stdout:
        line = line.rstrip()
        tail = (tail + [line])[-5:]
        text = line.strip()
        # the pins themselves and the install; each dependency's own lines would be a screenful
        if text.startswith(PIP_PROGRESS) and "(from " not in text:
            log("  " + text[:150])
    if process.wait() != 0:
        raise BackendMissingError(f"could not make the serving environment ({' '.join(argv[:4])} … failed: "
                                  f"{' | '.join(tail)[-300:]}) — check that pip reaches the package index, or make it "
                                  f"yourself: {SERVE_ENV}, then pass --server-python .serve-env/bin/python")


@dataclass(frozen=True)
class TritonBinary:
    """A tritonserver executable, the backend folder it loads from, and where that came from."""

    server: Path
    backends: Path
    libs: Path | None  # bundled libraries (LD_LIBRARY_PATH); None for an installed server
    stub: Path | None  # the Python backend stub built for the serving Python's version (pytriton ships one each)
    source: str

    def has_backend(self, name: str) -> bool:
        """Whether this server can load models of Triton backend `name` (e.g. python, onnxruntime, openvino)."""
        return (self.backends / name).is_dir()


def find_triton(env: ServeEnv) -> TritonBinary:
    """The tritonserver of nvidia-pytriton in the serving environment, else one on PATH; BackendMissingError (exit 6)
    naming the install otherwise."""
    if env.pytriton is not None and (env.pytriton / "tritonserver" / "bin" / "tritonserver").is_file():
        _check_platform()
        home = env.pytriton / "tritonserver"
        stub = home / "python_backend_stubs" / env.version / "triton_python_backend_stub"
        if not stub.is_file():
            raise MachineError(f"nvidia-pytriton has no Python backend stub for Python {env.version} — make the "
                               "serving environment with Python 3.8-3.13")
        return TritonBinary(home / "bin" / "tritonserver", home / "backends", env.pytriton.parent / "nvidia_pytriton.libs",
                            stub, f"nvidia-pytriton in {env.python}")
    found = shutil.which("tritonserver")
    if found:
        server = Path(found).resolve()
        return TritonBinary(server, server.parent.parent / "backends", None, None, f"PATH ({server})")
    raise BackendMissingError(f"no tritonserver binary (nvidia-pytriton is not in {env.python}'s environment, none on "
                              f"PATH) — {FIX}; or run inside "
                              "NGC's nvcr.io/nvidia/tritonserver container")


def find_ovms() -> Path:
    """An `ovms` binary on PATH; BackendMissingError (exit 6) saying where to get one (it has no pip package)."""
    found = shutil.which("ovms")
    if found:
        return Path(found)
    raise BackendMissingError(
        "no ovms binary on PATH (OpenVINO Model Server has no pip package) — unpack the ovms_ubuntu*.tar.gz of an "
        "OpenVINO Model Server release (github.com/openvinotoolkit/model_server/releases) and put ovms/bin on PATH "
        "with ovms/lib on LD_LIBRARY_PATH, or run the docker image openvino/model_server")


def _check_platform() -> None:
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        raise MachineError(f"nvidia-pytriton's tritonserver runs on Linux x86_64 only, not {platform.system()} "
                           f"{platform.machine()} — use NGC's tritonserver container for this machine")
    name, _, version = (os.confstr("CS_GNU_LIBC_VERSION") or "").partition(" ")
    have = tuple(int(p) for p in version.split(".")[:2]) if name == "glibc" else (0, 0)
    if have < PYTRITON_GLIBC:
        raise MachineError(f"nvidia-pytriton's tritonserver needs glibc >= 2.35, this machine has "
                           f"{version or 'none'} — use NGC's tritonserver container")


def free_ports(count: int) -> list[int]:
    """`count` distinct TCP ports free on 127.0.0.1 right now (held open together so none repeats)."""
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def backend_home(binary: TritonBinary, folder: Path) -> Path:
    """The backend folder the server loads from: for the pytriton wheel, a copy of its python/ backend with this
    interpreter's stub beside it, as pytriton does (the backend runs the stub found next to libtriton_python.so)."""
    if binary.stub is None:
        return binary.backends
    python = folder / "backends" / "python"
    shutil.copytree(binary.backends / "python", python)
    shutil.copy2(binary.stub, python / "triton_python_backend_stub")
    return folder / "backends"


def environment(binary: TritonBinary, env: ServeEnv) -> dict[str, str]:
    """The server's environment, as pytriton sets it: the serving Python's libpython first on LD_LIBRARY_PATH (the stub
    would otherwise load the system's), then the wheel's libraries; the serving Python's bin folder first on PATH,
    where the stub's embedded interpreter finds its prefix (so a virtualenv's site-packages are used)."""
    out = dict(os.environ)
    libs = [env.libdir] + ([str(binary.libs)] if binary.libs is not None else [])
    out["LD_LIBRARY_PATH"] = os.pathsep.join(libs + [p for p in out.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p])
    out["PATH"] = os.pathsep.join([str(env.python.parent), out.get("PATH", "")])
    out.pop("PYTHONPATH", None)  # this process's paths would put numpy 2 in front of the serving environment's
    out.pop("PYTHONHOME", None)
    return out


def command(binary: TritonBinary, repository: Path, backends: Path, http: int, grpc: int, shm_prefix: str) -> list[str]:
    """The tritonserver command line: localhost only, no metrics, exit if any model fails to load."""
    return [str(binary.server), f"--model-repository={repository}", f"--backend-directory={backends}",
            "--http-address=127.0.0.1", f"--http-port={http}", "--grpc-address=127.0.0.1", f"--grpc-port={grpc}",
            "--allow-metrics=false", "--exit-on-error=true", "--exit-timeout-secs=5", "--strict-readiness=true",
            "--log-verbose=0",
            # Each server's Python stubs talk through shared memory regions named by this prefix: unique per server,
            # so two servers on one machine do not collide.
            f"--backend-config=python,shm-region-prefix-name={shm_prefix}"]


def _die_with_parent() -> None:
    # The server gets SIGTERM when the process that started it dies, even by SIGKILL (where atexit cannot run).
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


class Server:
    """A model server process in its own process group; a context manager that always stops the whole group."""

    def __init__(self, argv: list[str], env: dict[str, str], http: int, grpc: int, workdir: Path):
        self.argv, self.env, self.http, self.grpc, self.workdir = argv, env, http, grpc, workdir
        self.log = workdir / "server.log"
        self.process: subprocess.Popen | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.http}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc}"

    def start(self, ready_path: str = "/v2/health/ready", timeout: float = READY_TIMEOUT_S) -> "Server":
        """Start the process and wait until `ready_path` answers 200; ServeError with the log's tail otherwise."""
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(self.argv, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, start_new_session=True,
                                            preexec_fn=_die_with_parent)
        atexit.register(self.stop)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServeError(f"the server exited with code {self.process.returncode} before it was ready: "
                                 f"{self.log_tail()} — see {self.log}")
            if self._ready(ready_path):
                return self
            time.sleep(0.2)
        raise ServeError(f"the server was not ready after {timeout:.0f} s: {self.log_tail()} — see {self.log}")

    def _ready(self, path: str) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}{path}", timeout=2) as reply:
                return reply.status == 200
        except OSError:
            return False

    def alive(self) -> bool:
        """Whether the server process is still running."""
        return self.process is not None and self.process.poll() is None

    def log_tail(self, lines: int = 2) -> str:
        """The server log's reason for failing, on one line: why a model failed to load, else its last error lines."""
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return "(no log)"
        # Triton logs each message as one line with the Python traceback escaped as \n: keep the first line of it.
        loads = [l.split('"', 1)[-1].split("\\n")[0].rstrip('"') for l in text if "failed to load '" in l]
        errors = [l.strip() for l in text if (l[:1] in "EF" or "error" in l.lower()) and not any(n in l for n in LOG_NOISE)]
        return " | ".join((loads or errors or [l.strip() for l in text])[-lines:]) or "(empty log)"

    def stop(self) -> None:
        """SIGINT to the process group, SIGKILL after STOP_TIMEOUT_S; every stub process goes with it."""
        process, self.process = self.process, None
        if process is None:
            return
        atexit.unregister(self.stop)
        for sig, wait in ((signal.SIGINT, STOP_TIMEOUT_S), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            try:
                process.wait(timeout=wait)
                _wait_group_gone(process.pid, wait)
                break
            except subprocess.TimeoutExpired:
                continue
        try:  # stubs left over after the server itself exited (they share its process group)
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass

    def __enter__(self) -> "Server":
        return self

    def __exit__(self, exc_type, *_) -> None:
        self.stop()
        if exc_type is None:  # on a failure the log stays: the error names it
            shutil.rmtree(self.workdir, ignore_errors=True)


def _wait_group_gone(pgid: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.1)
    raise subprocess.TimeoutExpired(f"process group {pgid}", timeout)


def triton_server(repository: str | Path, env: ServeEnv, binary: TritonBinary | None = None,
                  workdir: str | Path | None = None) -> Server:
    """A started Triton server on `repository` (localhost, free ports); use it as a context manager to stop it."""
    binary = binary or find_triton(env)
    work = Path(workdir) if workdir else Path(tempfile.mkdtemp(prefix="bertship-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    http, grpc = free_ports(2)
    backends = backend_home(binary, work)
    argv = command(binary, Path(repository).resolve(), backends, http, grpc, f"bertship{os.getpid()}x{http}")
    server = Server(argv, environment(binary, env), http, grpc, work)
    try:
        return server.start()
    except BaseException:
        server.stop()
        raise
