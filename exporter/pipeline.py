"""The one place the stage order is written: load → export graph → build backends → verify → package → publish."""

from __future__ import annotations

import shutil
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

from bertship.runtimes import artifact, backends as backend_table
from bertship.runtimes.errors import UsageError

from . import golden, load as load_stage, package
from .gate import run_gate
from .to_onnx import OPSET, to_onnx, to_openvino

DEFAULT_BACKENDS = ("onnxruntime", "openvino")


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class _Stages:
    """Per-stage progress lines with timings; the timings also go into the manifest."""

    def __init__(self, log: Callable[[str], None]):
        self.log = log
        self.timings: dict[str, float] = {}

    @contextmanager
    def stage(self, name: str, what: str) -> Iterator[None]:
        self.log(f"[bertship] {name:<8} {what} …")
        start = time.perf_counter()
        yield
        self.timings[name] = round(time.perf_counter() - start, 3)
        self.log(f"[bertship] {name:<8} done in {self.timings[name]:.1f} s")


def export(
    model: Any = None,
    tokenizer: Any = None,
    *,
    out: str | Path,
    task: str | None = None,
    backends: str | tuple[str, ...] | list[str] = DEFAULT_BACKENDS,
    force: bool = False,
    allow_pickle: bool = False,
    max_length: int | None = None,
    pooling: str | None = None,
    normalize: bool | None = None,
    threads: int | None = None,
    log: Callable[[str], None] = _stderr,
) -> Path:
    """Export a model folder (None: the bundled all-MiniLM-L6-v2) or an in-memory transformers model to a verified
    artifact at `out`. Nothing exists at `out` unless every stage, the fidelity gate included, succeeded.
    """
    out = Path(out)
    names = backend_table.parse_backends(backends)
    for name in names:
        backend_table.require(name)
    package.check_out(out, force)
    stages = _Stages(log)

    with stages.stage("load", "checking and loading the model"):
        if model is None or isinstance(model, (str, Path)):
            if tokenizer is not None:
                raise UsageError("tokenizer= is only for an in-memory model; a model folder brings its own")
            path = load_stage.default_model_path() if model is None else Path(model)
            source = load_stage.load_folder(path, task, allow_pickle=allow_pickle, max_length=max_length,
                                            pooling=pooling, normalize=normalize)
        else:
            if tokenizer is None or task is None:
                raise UsageError("an in-memory model needs tokenizer= and task= — pass both")
            source = load_stage.from_model(model, tokenizer, task, max_length=max_length, pooling=pooling,
                                           normalize=normalize)
        texts, pairs = golden.golden_texts(source)
        feeds = golden.golden_feeds(source, texts, pairs)
        refs = golden.reference_outputs(source, feeds)
    params = sum(p.numel() for p in source.model.parameters())
    log(f"[bertship]          {source.family.name} / {source.task.name}, {params / 1e6:.1f} M parameters, "
        f"max length {source.max_length}")

    staging = package.staging_dir(out)
    try:
        built: dict[str, Any] = {}
        with stages.stage("export", f"ONNX graph (opset {OPSET})"):
            onnx_path = to_onnx(source, feeds[0], staging / backend_table.BACKENDS["onnxruntime"].model_file)
        if "onnxruntime" in names:
            built["onnxruntime"] = {"model": backend_table.BACKENDS["onnxruntime"].model_file,
                                    "files": [backend_table.BACKENDS["onnxruntime"].model_file],
                                    "options": {"precision": "fp32"}}
        if "openvino" in names:
            with stages.stage("openvino", "OpenVINO IR (fp32 weights)"):
                xml = backend_table.BACKENDS["openvino"].model_file
                to_openvino(onnx_path, staging / xml)
                built["openvino"] = {"model": xml, "files": [xml, xml[:-4] + ".bin"],
                                     "options": {"inference_precision": "f32"}}
        if "onnxruntime" not in names:
            shutil.rmtree(onnx_path.parent)
        source.tokenizer.backend_tokenizer.save(str(staging / artifact.TOKENIZER))
        spec = {"file": artifact.TOKENIZER, "max_length": source.max_length, "pad_id": source.tokenizer.pad_token_id,
                "pad_token": source.tokenizer.pad_token, "input_names": list(source.family.inputs),
                "text_pairs": source.task.text_pairs}
        manifest = package.base_manifest(source, built, spec, asdict(source.family.tolerance))
        with stages.stage("verify", f"{' + '.join(built)} vs PyTorch on {len(texts)} golden sentences"):
            manifest["fidelity"]["backends"] = run_gate(staging, manifest, feeds, refs, texts, pairs, threads)
        with stages.stage("package", "golden outputs, manifest, report"):
            manifest["golden"] = package.write_golden(staging, texts, pairs, feeds, refs)
            manifest["timings_s"] = stages.timings
            package.write_report(staging, dict(manifest, files=artifact.file_entries(staging)))
            package.write_manifest(staging, manifest)
            package.publish(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    log(f"[bertship] wrote {out} ({sum(f.stat().st_size for f in out.rglob('*') if f.is_file()) / 1e6:.1f} MB)")
    return out
