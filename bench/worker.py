"""Times one artifact on one backend in this process: `python -m bertship.bench.worker ART --backend B ...`.

Each backend runs in its own process (on 2 cores, timing several runtimes in one process skews them by up to 70 %).
Prints one JSON object: raw milliseconds per shape in timed blocks (each with the foreign CPU load seen during it;
a block taken under load is measured again, up to --retries times), load time, peak RSS, the precision and execution
providers the backend reports, fidelity on the golden inputs, and the harness's own per-call overhead. On a bertship
error it prints {"error", "exit_code"} and exits with that code. Torch-free.
"""

from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import time
from typing import Any, Callable

import numpy as np

from bertship.profiles.machine import package_versions, peak_rss_mb
from bertship.runtimes import cpuclass

from .procload import LoadWatch

PACKAGES = ("onnxruntime", "openvino", "numpy", "tokenizers")


def parse_shape(text: str) -> tuple[int, int]:
    """'8x128' -> (8, 128)."""
    try:
        batch, seq = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not BATCHxSEQUENCE, e.g. 8x128") from None
    if batch < 1 or seq < 2:
        raise argparse.ArgumentTypeError(f"shape {text!r} needs batch >= 1 and sequence >= 2")
    return batch, seq


def real_feeds(model, batch: int, seq: int) -> dict[str, np.ndarray]:
    """Real token ids of one long English text, cut to exactly `seq` tokens (no padding), repeated `batch` times."""
    if seq > model.max_length:
        raise SystemExit(f"shape sequence {seq} exceeds the artifact's max length {model.max_length}")
    text = " ".join(["The quick brown fox jumps over the lazy dog while the farmer watches from the porch."] * 64)
    ids = model.tokenizer.tokenize([text])[0].ids[:seq]
    feeds = {
        "input_ids": np.tile(np.asarray(ids, dtype=np.int64), (batch, 1)),
        "attention_mask": np.ones((batch, seq), dtype=np.int64),
        "token_type_ids": np.zeros((batch, seq), dtype=np.int64),
    }
    return {name: feeds[name] for name in model.input_names}


def text_batches(model, path: str, batch: int, limit: int) -> list[tuple[dict[str, np.ndarray], int]]:
    """The first `limit` non-empty lines of a text file as (feeds, texts) batches at their real token lengths: sorted
    by length, each batch padded only to its own longest member, as Model.encode does."""
    with open(path, encoding="utf-8") as fh:
        texts = [line.strip() for line in fh if line.strip()][:limit]
    if not texts:
        raise SystemExit(f"text workload {path} has no non-empty lines")
    encodings = sorted(model.tokenizer.tokenize(texts), key=lambda e: len(e.ids))
    return [(model.tokenizer.pad(encodings[i : i + batch]), len(encodings[i : i + batch]))
            for i in range(0, len(encodings), batch)]


def _runner_options(args: argparse.Namespace, notes: list[str]) -> dict[str, Any]:
    """ONNX Runtime providers (placed on what this build has) and IO binding, from the --runtime JSON."""
    spec = json.loads(args.runtime or "{}")
    if args.backend == "openvino":
        rate = spec.get("sparse_weights_decompression_rate")
        return {} if rate is None else {"sparse_weights_decompression_rate": rate}
    if args.backend != "onnxruntime":
        return {}
    from bertship.runtimes.providers import place

    placement = place(spec.get("providers") or ["CPUExecutionProvider"], spec.get("provider_options"),
                      require=spec.get("require", ()))
    notes.extend(placement.notes)
    options = {"providers": placement.session_providers(), "io_binding": bool(spec.get("io_binding")),
               "io_device": placement.device}
    if spec.get("disabled_optimizers") is not None:
        options["disabled_optimizers"] = list(spec["disabled_optimizers"])
    return options


def _environment(model, args: argparse.Namespace, runner_options: dict[str, Any]) -> dict[str, Any]:
    """What produced these numbers: backend, the providers and precision the runtime reports, package versions."""
    versions = package_versions(PACKAGES)
    return {
        "backend": args.backend, "threads": args.threads, "precision": model.precision,
        "providers": list(getattr(model.runner, "providers", ())), "io_binding": bool(runner_options.get("io_binding")),
        "disabled_optimizers": list(getattr(model.runner, "disabled_optimizers", ())),
        "sparse_weights_decompression_rate": runner_options.get("sparse_weights_decompression_rate"),
        "model_file": model.manifest["backends"][args.backend]["model"], "python": platform.python_version(),
        "packages": versions, "cpu_class": cpuclass.runtime_class(args.backend),
    }


def _fidelity(model) -> dict[str, Any] | None:
    """Min/mean cosine of this backend's outputs vs the artifact's golden PyTorch outputs, computed here."""
    from bertship.runtimes.verify import backend_checks, read_golden, read_sweep

    if "golden" not in model.manifest:
        return None
    feeds, refs, texts, _ = read_golden(model.root, model.manifest)
    report, failures = backend_checks(model.runner, model.manifest, feeds, refs, texts, read_sweep(model.root))
    return {"cosine_min": min(o["cosine_min"] for o in report["outputs"]),
            "cosine_mean": min(o["cosine_mean"] for o in report["outputs"]),
            "text_cosine_min": report["tail"]["cosine_min"], "text_cosine_p1": report["tail"]["cosine_p1"],
            "batch_cosine_min": report["batch_invariance"]["cosine_min"], "failures": failures,
            # a ranking where no golden query was decisive has nothing to lose: 1.0
            "rank_agreement": None if "ranking" not in report else
            1.0 if report["ranking"]["top1_agreement"] is None else report["ranking"]["top1_agreement"]}


def _exit_layers(model, work: dict[str, list]) -> dict[str, Any]:
    """Per workload, the layers its texts ran before leaving (run once more, outside the timed blocks)."""
    rule, total = model.exits["rule"], model.exits["total_layers"]
    out: dict[str, Any] = {"rule": rule, "total_layers": total, "mean_layers": {}, "histogram": {}}
    for key, calls in work.items():
        layers = np.concatenate([model.runner.run_exits(feeds, rule)[1] for feeds, _ in calls])
        out["mean_layers"][key] = float(layers.mean())
        out["histogram"][key] = {str(k): int((layers == k).sum()) for k in [*model.exits["layers"], total]}
    return out


def _timed(call: Callable[[], Any], calls: int) -> list[float]:
    """Milliseconds of each of `calls` calls: the one timing loop every number comes from."""
    samples = []
    for _ in range(calls):
        t = time.perf_counter()
        call()
        samples.append((time.perf_counter() - t) * 1000.0)
    return samples


def harness_overhead_us(calls: int = 20000) -> float:
    """Per-call cost of the timing loop itself (_timed around a call of a no-op), in microseconds."""
    noop = lambda _: None  # noqa: E731
    start = time.perf_counter()
    _timed(lambda: noop(None), calls)
    return (time.perf_counter() - start) / calls * 1e6


def timed_blocks(run: Callable, work: dict[str, list], args: argparse.Namespace) -> dict[str, list[dict[str, Any]]]:
    """Shuffled rounds of timed blocks per workload key; a block taken under foreign load is timed again (up to
    --retries times) and kept flagged when the load does not pass. Once a block's retries all ran under load, the
    load is persistent: later blocks are not retried until one comes out clean (retrying would only triple the run)."""
    blocks: dict[str, list[dict[str, Any]]] = {key: [] for key in work}
    order = list(work)
    rng = random.Random(args.seed)
    persistent = False
    for r in range(args.rounds):
        rng.shuffle(order)  # shuffled rounds: a slow phase of the machine does not land on one shape only
        for key in order:
            retries = 0 if persistent else args.retries
            for attempt in range(retries + 1):
                watch = LoadWatch()
                if key == "text":
                    calls = list(work[key])
                    rng.shuffle(calls)
                    ms = [x for feeds, _ in calls for x in _timed(lambda f=feeds: run(f), 1)]
                    items = [n for _, n in calls]
                else:
                    feeds = work[key][0][0]
                    ms = _timed(lambda: run(feeds), args.iters)
                    items = [work[key][0][1]] * len(ms)
                foreign = watch.foreign()
                loaded = foreign is not None and foreign > args.load_limit
                kept = not loaded or attempt == retries
                blocks[key].append({"round": r, "attempt": attempt, "ms": ms, "items": items, "foreign": foreign,
                                    "loaded": loaded, "kept": kept})
                if kept:
                    persistent = loaded and (persistent or retries > 0)
                    break
                time.sleep(0.5 * (attempt + 1))  # let a burst of foreign load pass before measuring again
    return blocks


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Load the artifact, warm up, time every workload in blocks, and return the worker's JSON record."""
    from bertship.runtimes import load

    notes: list[str] = []
    options = _runner_options(args, notes)
    spec = json.loads(args.runtime or "{}")
    watch = LoadWatch()
    t0 = time.perf_counter()
    model = load(args.artifact, backend=args.backend, threads=args.threads, runner_options=options)
    load_s = time.perf_counter() - t0
    load_foreign = watch.foreign()
    if spec.get("model_format") == "ort" and not model.manifest["backends"][args.backend]["model"].endswith(".ort"):
        notes.append("the profile expects an ORT-format model (.ort); this artifact holds "
                     f"{model.manifest['backends'][args.backend]['model']}, which was timed instead")
    run = model.runner.run
    if model.exits is not None:  # an early-exit artifact is timed as it runs: texts leave at their off-ramps
        rule = model.exits["rule"]
        run = lambda feeds: model.runner.run_exits(feeds, rule)  # noqa: E731
    # Each workload is a list of (feeds, items) calls; a block is `iters` calls of a shape, or one pass of the text.
    work: dict[str, list[tuple[dict[str, np.ndarray], int]]] = {f"{b}x{s}": [(real_feeds(model, b, s), b)]
                                                                 for b, s in args.shapes}
    if args.text:
        work["text"] = text_batches(model, args.text, args.text_batch, args.text_limit)
    for calls in work.values():
        for feeds, _ in calls:
            for _ in range(args.warmup):
                run(feeds)
    blocks = timed_blocks(run, work, args)
    exits = _exit_layers(model, work) if model.exits is not None else None
    rss_mb = peak_rss_mb()  # before the golden batches run
    fidelity = _fidelity(model) if args.fidelity else None
    return {
        "artifact": str(args.artifact),
        "backend": args.backend,
        "threads": args.threads,
        "precision": model.precision,
        "load_s": load_s,
        "load_foreign": load_foreign,
        "peak_rss_mb": rss_mb,
        "harness_overhead_us": harness_overhead_us(),
        "settings": {"warmup": args.warmup, "iters": args.iters, "rounds": args.rounds, "seed": args.seed,
                     "load_limit": args.load_limit, "retries": args.retries},
        "env": _environment(model, args, options),
        "fidelity": fidelity,
        "exits": exits,
        "notes": notes,
        "blocks": blocks,
        "samples_ms": {key: [x for b in bl if b["kept"] for x in b["ms"]] for key, bl in blocks.items()},
    }


def main(argv: list[str] | None = None) -> int:
    """Parse the worker's arguments, measure, print one JSON line; a bertship error is printed as JSON too."""
    parser = argparse.ArgumentParser(prog="python -m bertship.bench.worker", description=__doc__.splitlines()[0])
    parser.add_argument("artifact")
    parser.add_argument("--backend", required=True)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--shapes", type=parse_shape, nargs="*", default=[(1, 128)])
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--iters", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runtime", default=None, help="JSON: providers, require, provider_options, io_binding, "
                        "model_format (from the profile's [[runtimes]] entry)")
    parser.add_argument("--text", default=None, help="a text file, one text a line: timed at real lengths")
    parser.add_argument("--text-batch", type=int, default=32)
    parser.add_argument("--text-limit", type=int, default=512)
    parser.add_argument("--load-limit", type=float, default=0.15, help="foreign CPU share above which a block is "
                        "measured again")
    parser.add_argument("--retries", type=int, default=0)
    parser.add_argument("--fidelity", action="store_true", help="also compare outputs with the golden references")
    args = parser.parse_args(argv)
    from bertship.runtimes.errors import BertshipError

    try:
        result = measure(args)
    except BertshipError as exc:
        json.dump({"error": str(exc), "exit_code": exc.exit_code, "kind": type(exc).__name__}, sys.stdout)
        sys.stdout.write("\n")
        return exc.exit_code
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
