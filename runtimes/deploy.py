"""Deploy an artifact to existing serving engines: a Triton model repository, or an OpenVINO Model Server layout.

    triton(ART, out)   <name>/ (the encoder, ONNX Runtime or OpenVINO backend), <name>_tokenizer/ (Python backend:
                       text -> token ids with the artifact's tokenizer.json), <name>_ensemble/ (clients send text)
    triton(ART, out, backend="python")
                       <name>/ only: Triton's Python backend runs the bertship runtime (triton_model.py) on a copy of
                       the artifact; clients send text and get the task's results (see PYTHON_OUTPUTS)
    ovms(ART, out)     <name>/1/model.xml + .bin and config.json (model_config_list); clients send token ids

Both check the artifact's checksums first, write into a temporary folder beside `out` and rename it into place, and
leave a bertship-deploy.json saying what was deployed from where. Torch-free; config.pbtxt is written as text, so
nothing from Triton is needed here (the tests parse it with Triton's own protobuf schema).
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from . import artifact, backends
from .errors import UsageError
from .tokenizer import check_truncation

RECORD = "bertship-deploy.json"
TRITON_BACKENDS = ("onnxruntime", "openvino", "python")
# What the Python-backend model returns per task, one row per text: (name, dtype, dims after the batch axis); "hidden"
# and "labels" are read from the model file. The model code (triton_model.py) computes exactly these.
PYTHON_OUTPUTS: dict[str, list[tuple[str, str, list[Any]]]] = {
    "sentence-embedding": [("EMBEDDING", "float32", ["hidden"])],
    "feature-extraction": [("EMBEDDING", "float32", ["hidden"])],
    "sequence-classification": [("LOGITS", "float32", ["labels"]), ("LABEL", "string", [1]),
                                ("SCORE", "float32", [1])],
    "question-answering": [("ANSWER", "string", [1]), ("SCORE", "float32", [1]), ("START", "int64", [1]),
                           ("END", "int64", [1])],
    "token-classification": [("TAGS", "string", [1])],  # per text, a JSON list of {word, label, score, start, end}
    "rerank": [("SCORE", "float32", [1])],  # per (TEXT = query, TEXT_PAIR = document): the cross-encoder's score
    "sparse-embedding": [("SPARSE", "string", [1])],  # per text, JSON {"indices": [...], "values": [...]}
    # per text, its token vectors padded with zero rows to the longest text of the batch, and its token count
    "multi-vector": [("TOKEN_EMBEDDINGS", "float32", [-1, "hidden"]), ("TOKENS", "int64", [1])],
}
PYTHON_INSTANCES = 2  # --backend python's default instance count
TRITON_DTYPES = {"int64": "TYPE_INT64", "int32": "TYPE_INT32", "float32": "TYPE_FP32", "float16": "TYPE_FP16",
                 "bfloat16": "TYPE_BF16", "int8": "TYPE_INT8", "uint8": "TYPE_UINT8", "bool": "TYPE_BOOL"}
# Triton's OpenVINO backend can only force bf16 (HINT_BF16); it has no way to ask for f32, so on CPUs with
# AVX512_BF16/AMX the CPU plugin's default (bf16) applies there. OVMS passes plugin_config through, so f32 holds.
OPENVINO_TRITON_NOTE = ("Triton's OpenVINO backend cannot set INFERENCE_PRECISION_HINT=f32: on CPUs with AVX512_BF16 "
                        "or AMX the OpenVINO CPU plugin then runs this model in bf16, not the f32 it was verified in "
                        "— use --backend onnxruntime, or OVMS (bertship deploy ovms), for verified f32 outputs")


def triton(path: str | Path, out: str | Path, *, backend: str = "onnxruntime", max_batch: int = 32,
           instances: int | None = None, threads: int | None = None, name: str | None = None, pairs: bool | None = None,
           runtime: str | None = None, truncation: str = "truncate", bucket_size: int = 16,
           queue_delay_us: int = 0, tune_batching: bool = True, force: bool = False) -> dict[str, Any]:
    """Write a Triton model repository for an artifact; returns the record.

    backend "onnxruntime"/"openvino": encoder + Python tokenizer + ensemble; "python": one Python-backend model that
    runs the bertship runtime (`runtime`: the artifact's backend it loads, default its first; `truncation` and
    `bucket_size` as in `load`/`encode`; `tune_batching`: Model.tune_batching at start, so each dynamic batch's texts
    are cut into length-sorted batches where cheapest). pairs=True adds a TEXT_PAIR input (e.g. sentence-pair
    classification); None: as the task is used (QA: yes). `queue_delay_us`: the dynamic batcher's
    max_queue_delay_microseconds (0: a free instance takes what is queued at once).
    """
    if backend not in TRITON_BACKENDS:
        raise UsageError(f"unknown Triton backend {backend!r} — choose from: {', '.join(TRITON_BACKENDS)}")
    _positive("--max-batch", max_batch)
    # The Python backend's stub is one Python thread: while it decodes, tokenizes and answers, the model waits. Two
    # instances overlap one's Python with the other's model run (measured: benchmarks/triton_path.py); each may use
    # every core (its threads sleep while it is idle), so one client alone still gets them all.
    instances = (PYTHON_INSTANCES if backend == "python" else 1) if instances is None else instances
    _positive("--instances", instances)
    if threads is not None:
        _positive("--threads", threads)
    if isinstance(queue_delay_us, bool) or not isinstance(queue_delay_us, int) or queue_delay_us < 0:
        raise UsageError(f"--queue-delay-us must be 0 or more microseconds, got {queue_delay_us!r}")
    if backend == "python":
        return _triton_python(path, out, max_batch=max_batch, instances=instances, threads=threads, name=name,
                              pairs=pairs, runtime=runtime, truncation=truncation, bucket_size=bucket_size,
                              queue_delay_us=queue_delay_us, tune_batching=tune_batching, force=force)
    if runtime is not None:
        raise UsageError(f"--runtime is for --backend python; the {backend} backend runs the artifact's {backend} "
                         "model — drop --runtime, or pass --backend python")
    root, manifest, name, out = _prepare(path, out, backend, name, force)
    outputs = _output_dims(root, manifest, backend)
    inputs = [i["name"] for i in manifest["signature"]["inputs"]]
    pairs = bool(manifest["tokenizer"].get("text_pairs")) if pairs is None else pairs
    texts = ["TEXT", "TEXT_PAIR"] if pairs else ["TEXT"]
    notes = [OPENVINO_TRITON_NOTE] if backend == "openvino" else []
    common = dict(max_batch=max_batch, instances=instances, queue_delay_us=queue_delay_us)

    def write(staging: Path) -> None:
        version = staging / name / "1"
        _copy_model(root, manifest, backend, version)
        model_in = [(i["name"], i["dtype"], [-1]) for i in manifest["signature"]["inputs"]]
        model_out = [(o["name"], o["dtype"], dims) for o, dims in zip(manifest["signature"]["outputs"], outputs)]
        if backend == "onnxruntime":
            params = {"intra_op_thread_count": threads or 0, "inter_op_thread_count": 1}
        else:
            params = {"PERFORMANCE_HINT": "LATENCY", "NUM_STREAMS": 1}
            if threads:
                params["INFERENCE_NUM_THREADS"] = threads
        _write_config(staging / name, name, f'backend: "{backend}"', model_in, model_out, params, **common)

        tok = staging / f"{name}_tokenizer"
        (tok / "1").mkdir(parents=True)
        shutil.copyfile(Path(__file__).with_name("triton_tokenizer.py"), tok / "1" / "model.py")
        shutil.copyfile(root / artifact.TOKENIZER, tok / "1" / artifact.TOKENIZER)
        spec = manifest["tokenizer"]
        tok_params = {"max_length": spec["max_length"], "pad_id": spec["pad_id"], "input_names": ",".join(inputs),
                      "text_pairs": "true" if len(texts) == 2 else "false"}
        _write_config(tok, tok.name, 'backend: "python"', [(t, "string", [1]) for t in texts],
                      [(n, "int64", [-1]) for n in inputs], tok_params, **common)

        ens = staging / f"{name}_ensemble"
        (ens / "1").mkdir(parents=True)  # Triton wants a version folder even for an ensemble
        steps = [_step(tok.name, {t: t for t in texts}, {n: n for n in inputs}),
                 _step(name, {n: n for n in inputs}, {o[0]: o[0] for o in model_out})]
        scheduling = "ensemble_scheduling {\n  step [\n" + ",\n".join(steps) + "\n  ]\n}\n"
        _write_config(ens, ens.name, 'platform: "ensemble"', [(t, "string", [1]) for t in texts], model_out, {},
                      max_batch=max_batch, instances=None, extra=scheduling)

    record = {"target": "triton", "backend": backend, "models": [name, f"{name}_tokenizer", f"{name}_ensemble"],
              "text_inputs": texts, "notes": notes}
    return _publish(out, force, write, _record(root, manifest, record))


def _triton_python(path: str | Path, out: str | Path, *, max_batch: int, instances: int, threads: int | None,
                   name: str | None, pairs: bool | None, runtime: str | None, truncation: str, bucket_size: int,
                   queue_delay_us: int, tune_batching: bool, force: bool) -> dict[str, Any]:
    """The Python-backend layout: <name>/config.pbtxt, <name>/1/model.py and <name>/1/artifact/ (one runtime's files)."""
    _positive("--bucket-size", bucket_size)
    check_truncation(truncation)
    manifest = artifact.read_manifest(path)
    built = list(manifest.get("backends", {}))
    runtime = runtime or (built[0] if built else "onnxruntime")
    if runtime not in built:
        raise UsageError(f"the artifact has no {runtime!r} model (it has {', '.join(built) or 'none'}) — pass "
                         f"--runtime {' or '.join(built) or 'onnxruntime'}")
    root, manifest, name, out = _prepare(path, out, runtime, name, force, python=True)
    task = manifest["task"]["name"]
    if task not in PYTHON_OUTPUTS:
        raise UsageError(f"task {task!r} has no Python-backend outputs here — use --backend onnxruntime")
    pairs = bool(manifest["tokenizer"].get("text_pairs")) if pairs is None else pairs
    if task in ("question-answering", "rerank") and not pairs:
        raise UsageError(f"{task} needs two texts per request (question and context, query and document) — drop "
                         "--no-pairs")
    texts = ["TEXT", "TEXT_PAIR"] if pairs else ["TEXT"]
    last = _output_dims(root, manifest, runtime)[0][-1]  # hidden size or label count: the first output's last axis
    outputs = [(n, dtype, [last if d in ("hidden", "labels") else d for d in dims])
               for n, dtype, dims in PYTHON_OUTPUTS[task]]
    params = {"runtime": runtime, "threads": threads or "", "truncation": truncation, "bucket_size": bucket_size,
              "text_pairs": "true" if pairs else "false", "tune_batching": "true" if tune_batching else "false"}

    def write(staging: Path) -> None:
        version = staging / name / "1"
        _copy_artifact(root, manifest, runtime, version / "artifact")
        _copy_runtime(version)
        shutil.copyfile(Path(__file__).with_name("triton_model.py"), version / "model.py")
        _write_config(staging / name, name, 'backend: "python"', [(t, "string", [1]) for t in texts], outputs,
                      params, max_batch=max_batch, instances=instances, queue_delay_us=queue_delay_us)

    record = {"target": "triton", "backend": "python", "runtime": runtime, "models": [name], "text_inputs": texts,
              "outputs": [o[0] for o in outputs], "truncation": truncation, "notes": []}
    return _publish(out, force, write, _record(root, manifest, record))


def _copy_artifact(root: Path, manifest: dict[str, Any], runtime: str, dest: Path) -> None:
    """What `load(dest, backend=runtime)` needs: manifest, tokenizer and that runtime's files, paths kept."""
    for rel in sorted({artifact.MANIFEST} | artifact.backend_files(manifest, runtime)):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / rel, dest / rel)


def _copy_runtime(version: Path) -> None:
    """This bertship runtime (torch-free, numpy + tokenizers + the backend) as `bertship.runtimes` beside model.py:
    the Python backend puts the version folder on sys.path, so the server's environment needs no bertship install
    and runs exactly the runtime that wrote the repository."""
    package = version / "bertship" / "runtimes"
    package.mkdir(parents=True)
    (version / "bertship" / "__init__.py").write_text('"""The bertship runtime, copied here by `bertship deploy`."""\n',
                                                      encoding="utf-8")
    for source in sorted(Path(__file__).parent.glob("*.py")):
        shutil.copyfile(source, package / source.name)


def ovms(path: str | Path, out: str | Path, *, name: str | None = None, threads: int | None = None,
         force: bool = False) -> dict[str, Any]:
    """Write an OpenVINO Model Server layout (<name>/1/model.xml + .bin, config.json); returns the record."""
    if threads is not None:
        _positive("--threads", threads)
    root, manifest, name, out = _prepare(path, out, "openvino", name, force)
    entry = manifest["backends"]["openvino"]
    plugin = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": entry.get("options", {}).get(
        "inference_precision", "f32")}
    if threads:
        plugin["INFERENCE_NUM_THREADS"] = str(threads)
    # base_path is relative to config.json, so the folder can be mounted anywhere.
    config = {"model_config_list": [{"config": {"name": name, "base_path": name, "plugin_config": plugin}}]}

    def write(staging: Path) -> None:
        _copy_model(root, manifest, "openvino", staging / name / "1")
        # OVMS serves the encoder on token ids; the tokenizer travels along (outside the model folder, which OVMS
        # scans for versions) for clients to encode with.
        shutil.copyfile(root / artifact.TOKENIZER, staging / artifact.TOKENIZER)
        (staging / "config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")

    record = {"target": "ovms", "backend": "openvino", "models": [name], "plugin_config": plugin, "notes": []}
    return _publish(out, force, write, _record(root, manifest, record))


def _positive(option: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise UsageError(f"{option} must be a positive integer, got {value!r} — pass 1 or more")


def _prepare(path: str | Path, out: str | Path, backend: str, name: str | None,
             force: bool, python: bool = False) -> tuple[Path, dict[str, Any], str, Path]:
    root, out = Path(path), Path(out)
    manifest = artifact.read_manifest(root)
    artifact.check_files(root, manifest, only=artifact.backend_files(manifest, backend))
    name = name or re.sub(r"[^A-Za-z0-9_-]+", "_", root.resolve().name).strip("_") or "model"
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", name):
        raise UsageError(f"model name {name!r} has characters a model server rejects — use letters, digits, _ and -")
    if manifest.get("exits") and not python:
        raise UsageError("an early-exit artifact runs as a chain of segments that drop the texts that left between "
                         "them; a model server's onnxruntime/openvino backend runs one graph — deploy it with "
                         "`bertship deploy triton --backend python`, or serve it with `bertship serve`")
    if out.exists() and not force:
        raise UsageError(f"{str(out)!r} already exists — pass --force to replace it, or choose another --out")
    if out.exists() and not (out / RECORD).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(f"{str(out)!r} exists and was not written by `bertship deploy` — choose another --out")
    return root, manifest, name, out


def _output_dims(root: Path, manifest: dict[str, Any], backend: str) -> list[list[int]]:
    """Each output's dims after the batch axis, read from the model file itself: -1 where the axis is dynamic."""
    entry = manifest["backends"][backend]
    names = [o["name"] for o in manifest["signature"]["outputs"]]
    shapes: dict[str, Any] = {}
    # an early-exit artifact's outputs come from its segments: each off-ramp's logits from its own
    for rel in [s["model"] for s in entry["segments"]] if "segments" in entry else [entry["model"]]:
        path = str(root / rel)
        if backend == "onnxruntime":
            ort = backends.require("onnxruntime")
            options = ort.SessionOptions()
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # only the shapes are read
            shapes.update({o.name: o.shape for o in ort.InferenceSession(path, options).get_outputs()})
        else:
            ov = backends.require("openvino")
            model = ov.Core().read_model(path)
            shapes.update({o.get_any_name(): [d.get_length() if d.is_static else None for d in o.get_partial_shape()]
                           for o in model.outputs})
    return [[d if isinstance(d, int) and d > 0 else -1 for d in shapes[n][1:]] for n in names]


def _copy_model(root: Path, manifest: dict[str, Any], backend: str, version: Path) -> None:
    """The backend's files into a version folder, the model renamed to what the server loads by default."""
    entry = manifest["backends"][backend]
    version.mkdir(parents=True)
    model = Path(entry["model"])
    for rel in entry["files"]:
        src = Path(rel)
        # OpenVINO finds model.bin beside model.xml by name; other files (ONNX external data) keep theirs.
        if src == model or (backend == "openvino" and src.suffix == ".bin" and src.stem == model.stem):
            dst = "model" + src.suffix
        else:
            dst = src.name
        shutil.copyfile(root / rel, version / dst)


def _tensor(name: str, dtype: str, dims: list[int]) -> str:
    triton_type = "TYPE_STRING" if dtype == "string" else TRITON_DTYPES.get(dtype)
    if triton_type is None:
        raise UsageError(f"tensor {name!r} has dtype {dtype!r}, which has no Triton type here — report it")
    return f'  {{\n    name: "{name}"\n    data_type: {triton_type}\n    dims: [ {", ".join(map(str, dims))} ]\n  }}'


def _step(model: str, inputs: dict[str, str], outputs: dict[str, str]) -> str:
    lines = [f'    {{\n      model_name: "{model}"\n      model_version: -1']
    lines += [f'      input_map {{ key: "{k}" value: "{v}" }}' for k, v in inputs.items()]
    lines += [f'      output_map {{ key: "{k}" value: "{v}" }}' for k, v in outputs.items()]
    return "\n".join(lines) + "\n    }"


def _write_config(folder: Path, name: str, runtime: str, inputs: list, outputs: list, params: dict[str, Any],
                  max_batch: int, instances: int | None, extra: str = "", queue_delay_us: int = 0) -> None:
    text = f'name: "{name}"\n{runtime}\nmax_batch_size: {max_batch}\n'
    text += "input [\n" + ",\n".join(_tensor(*t) for t in inputs) + "\n]\n"
    text += "output [\n" + ",\n".join(_tensor(*t) for t in outputs) + "\n]\n"
    if instances is not None:  # an ensemble has no instances or batcher of its own: its steps do
        text += f"instance_group [\n  {{\n    count: {instances}\n    kind: KIND_CPU\n  }}\n]\n"
        text += (f"dynamic_batching {{\n  max_queue_delay_microseconds: {queue_delay_us}\n}}\n" if queue_delay_us
                 else "dynamic_batching { }\n")
    for key, value in params.items():
        text += f'parameters {{\n  key: "{key}"\n  value: {{ string_value: "{value}" }}\n}}\n'
    (folder / "config.pbtxt").write_text(text + extra, encoding="utf-8")


def _record(root: Path, manifest: dict[str, Any], record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "artifact": str(root.resolve()), "task": manifest["task"]["name"],
            "recipe": manifest.get("recipe", {}).get("name"), "max_length": manifest["tokenizer"]["max_length"],
            "manifest_sha256": artifact.sha256_file(root / artifact.MANIFEST)}


def _publish(out: Path, force: bool, write, record: dict[str, Any]) -> dict[str, Any]:
    """Write into a temporary folder beside `out`, then rename it into place (an old one goes only after that)."""
    staging = artifact.staging_dir(out)
    try:
        write(staging)
        (staging / RECORD).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        artifact.publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return dict(record, out=str(out))
