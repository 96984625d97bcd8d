"""sentence-transformers' own backends, as embedding users try them first: built once, then each run in its own process.

    python -m benchmarks.st_backends build --work DIR --calibration FILE     # the files, from the bundled MiniLM
    python -m benchmarks.st_backends embed --work DIR --variant NAME --texts FILE --vectors-out P [--threads 2]

Variants (`VARIANTS`): `SentenceTransformer(path, backend="onnx")` (Optimum's fp32 export), its
`export_optimized_onnx_model(…, "O3")`, `export_dynamic_quantized_onnx_model(…, CONFIG)` for this CPU's class
(avx512_vnni on x86 with VNNI, avx2 without, arm64 on ARM), `backend="openvino"` and
`export_static_quantized_openvino_model` (NNCF through optimum-intel; it needs the `datasets` package, calibrated on
the calibration texts, which it pads to 384 tokens as sentence-transformers does). `embed` prints the JSON line of
benchmarks.embed_worker (sentences/s per round, the other processes' CPU use) and writes P.batched.npy / P.alone.npy
from `model.encode(texts, batch_size=32)` and each text alone.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

import numpy as np

BATCH = 32


def quant_config() -> str:
    """sentence-transformers' dynamic-quantization config for this CPU's int8 class."""
    from bertship.runtimes.cpuclass import flags_class

    return {"x86-vnni": "avx512_vnni", "x86-novnni": "avx2"}.get(flags_class(), "arm64")


def variants() -> dict[str, tuple[str, str]]:
    """name -> (backend, file_name inside the model folder)."""
    cfg = quant_config()
    return {
        "sentence-transformers onnx (fp32)": ("onnx", "onnx/model.onnx"),
        "sentence-transformers onnx O3": ("onnx", "onnx/model_O3.onnx"),
        f"sentence-transformers onnx qint8 {cfg}": ("onnx", f"onnx/model_qint8_{cfg}.onnx"),
        "sentence-transformers openvino (fp32)": ("openvino", "openvino/openvino_model.xml"),
        "sentence-transformers openvino static int8": ("openvino", "openvino/openvino_model_qint8_quantized.xml"),
    }


def _model_dir(work: Path) -> Path:
    return work / "st-model"


def build(work: Path, calibration: Path) -> dict[str, str]:
    """Every variant's file under work/st-model (a copy of the bundled model); name -> 'ok' or why it is missing."""
    import sentence_transformers as st
    from bertship.exporter.load import default_model_path

    root = _model_dir(work)
    if not root.exists():
        shutil.copytree(default_model_path(), root)
    status: dict[str, str] = {}
    onnx_model = st.SentenceTransformer(str(root), backend="onnx", device="cpu")
    if not (root / "onnx" / "model.onnx").exists():
        onnx_model.save_pretrained(str(root))
    st.export_optimized_onnx_model(onnx_model, "O3", str(root))
    st.export_dynamic_quantized_onnx_model(onnx_model, quant_config(), str(root))
    ov_model = st.SentenceTransformer(str(root), backend="openvino", device="cpu")
    if not (root / "openvino" / "openvino_model.xml").exists():
        ov_model.save_pretrained(str(root))
    try:
        from optimum.intel import OVQuantizationConfig

        data = work / "calibration-dataset"
        data.mkdir(parents=True, exist_ok=True)
        (data / "train.txt").write_text(calibration.read_text(encoding="utf-8"), encoding="utf-8")
        st.export_static_quantized_openvino_model(ov_model, OVQuantizationConfig(num_samples=80), str(root),
                                                  dataset_name=str(data), dataset_config_name="default",
                                                  dataset_split="train", column_name="text")
    except Exception as exc:  # noqa: BLE001 - a stock tool that cannot run here is a result, stated in the report
        (root / "static-openvino.failed").write_text(f"{type(exc).__name__}: {exc}")
    for name, (_, file_name) in variants().items():
        status[name] = "ok" if (root / file_name).exists() else (
            (root / "static-openvino.failed").read_text() if (root / "static-openvino.failed").exists()
            else "not built")
    return status


def embed(work: Path, variant: str, texts_file: Path, vectors_out: Path | None, threads: int, rounds: int) -> dict:
    import torch
    from sentence_transformers import SentenceTransformer

    from bertship.bench.procload import LoadWatch
    from bertship.profiles.machine import peak_rss_mb

    torch.set_num_threads(threads)
    backend, file_name = variants()[variant]
    kwargs = {"file_name": file_name}
    if backend == "onnx":
        import onnxruntime as ort

        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        kwargs.update(provider="CPUExecutionProvider", session_options=so)
    else:
        kwargs["ov_config"] = {"INFERENCE_NUM_THREADS": threads, "PERFORMANCE_HINT": "LATENCY"}
    model = SentenceTransformer(str(_model_dir(work)), backend=backend, device="cpu", model_kwargs=kwargs)
    texts = [t for t in texts_file.read_text(encoding="utf-8").splitlines() if t]

    def run(ts: list[str]) -> np.ndarray:
        return model.encode(ts, batch_size=BATCH, convert_to_numpy=True, normalize_embeddings=True)

    run(texts[:200])
    rates, loads = [], []
    for r in range(rounds):
        watch = LoadWatch()
        start = time.perf_counter()
        vectors = run(texts)
        rates.append(len(texts) / (time.perf_counter() - start))
        loads.append(watch.foreign())
        if r == 0 and vectors_out:
            np.save(f"{vectors_out}.batched.npy", vectors)
    if vectors_out:
        np.save(f"{vectors_out}.alone.npy", np.concatenate([run([t]) for t in texts]))
    path = _model_dir(work) / file_name
    files = [path, path.with_suffix(".bin")] if path.suffix == ".xml" else [path]
    return {"model": str(path), "backend": backend, "precision": "stock", "texts": len(texts),
            "size_bytes": sum(f.stat().st_size for f in files if f.exists()), "sent_per_s": rates,
            "foreign_loads": loads, "foreign_load": max((x for x in loads if x is not None), default=None),
            "peak_rss_mb": peak_rss_mb()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.st_backends")
    sub = p.add_subparsers(dest="command", required=True)
    b = sub.add_parser("build")
    b.add_argument("--work", type=Path, required=True)
    b.add_argument("--calibration", type=Path, required=True)
    e = sub.add_parser("embed")
    e.add_argument("--work", type=Path, required=True)
    e.add_argument("--variant", required=True)
    e.add_argument("--texts", type=Path, required=True)
    e.add_argument("--vectors-out", type=Path, default=None)
    e.add_argument("--threads", type=int, default=2)
    e.add_argument("--rounds", type=int, default=2)
    args = p.parse_args(argv)
    if args.command == "build":
        print(json.dumps(build(args.work, args.calibration)))
    else:
        print(json.dumps(embed(args.work, args.variant, args.texts, args.vectors_out, args.threads, args.rounds)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
