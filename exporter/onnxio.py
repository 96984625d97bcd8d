"""ONNX files on disk: a graph file, and for graphs past protobuf's 2 GB limit (or when asked) one external-data file
beside it, `<model>.data`: the layout ONNX Runtime's own tools write (OnnxModel.save_model_to_file) and every runtime
loads from the graph's folder.

Modes (ExportOptions.external_data): "auto" keeps the weights inside the graph file unless they would pass the limit;
"always" puts every tensor over 1 KiB in the data file (some deployments want the graph and the weights apart, and the
tests force the large-model path with it on tiny models).
"""

from __future__ import annotations

import shutil
from pathlib import Path

MODES = ("auto", "always")
LIMIT = 2**31 - 1  # protobuf's hard limit on one serialized message
MARGIN = 64 << 20  # graph structure, attributes and names beside the tensors
THRESHOLD = 1024  # tensors at least this large go to the data file (ONNX's default)


def data_file(path: Path) -> Path:
    """Where a graph's external data lives: beside it, `<name>.data`."""
    path = Path(path)
    return path.with_name(path.name + ".data")


def tensor_bytes(model) -> int:
    """Bytes of the initializers, wherever they are stored (inline or external)."""
    from onnx import TensorProto, helper

    total = 0
    for t in model.graph.initializer:
        if t.data_location == TensorProto.EXTERNAL:
            total += int({e.key: e.value for e in t.external_data}.get("length", 0))
        elif t.raw_data:
            total += len(t.raw_data)
        else:
            n = 1
            for d in t.dims:
                n *= d
            total += n * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
    return total


def external_files(path: Path) -> set[Path]:
    """The external-data files a graph file refers to (read without loading any tensor)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    return {Path(path).parent / ExternalDataInfo(t).location for t in _get_all_tensors(model) if uses_external_data(t)}


def files(path: Path) -> list[Path]:
    """The graph file and its data file, when it has one: what an artifact must carry for it."""
    path = Path(path)
    return [path] + ([data_file(path)] if data_file(path).exists() else [])


def wants_external(model, mode: str) -> bool:
    return mode == "always" or tensor_bytes(model) + MARGIN >= LIMIT


def save(model, path: Path, mode: str = "auto") -> Path:
    """Write a ModelProto at `path`, with its tensors in `<path>.data` when the mode or its size says so. Stale data
    files are removed first (ONNX appends to an existing one)."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = data_file(path)
    data.unlink(missing_ok=True)
    if wants_external(model, mode):
        onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=THRESHOLD, convert_attribute=False)
    else:
        onnx.save_model(model, str(path))
    return path


def settle(path: Path, mode: str) -> Path:
    """Bring a graph some tool wrote (inline, one data file, or one file per tensor as torch.onnx writes past 2 GB)
    to this module's layout under `mode`. A graph already in it is left alone, so no weights are read for nothing."""
    import onnx

    path = Path(path)
    refs = external_files(path)
    data = data_file(path)
    if refs == {data} and (mode == "always" or data.stat().st_size + MARGIN >= LIMIT):
        return path  # already one data file, and it is wanted
    if not refs and mode == "auto" and path.stat().st_size + MARGIN < LIMIT:
        return path  # inline, and small enough to be
    model = onnx.load(str(path))  # tensors in memory: one copy of the weights
    for stray in refs - {data}:
        stray.unlink()
    save(model, path, mode)
    return path


def copy(src: Path, dst: Path) -> Path:
    """Copy a graph (and its data file) to `dst`, its data file renamed to match and the graph's pointers to it
    rewritten, without reading the tensors."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors, uses_external_data

    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    refs = external_files(src)
    if not refs:
        shutil.copyfile(src, dst)
        return dst
    if refs != {data_file(src)}:
        raise RuntimeError(f"{src} keeps its tensors in {len(refs)} files; settle() it into one first")
    model = onnx.load(str(src), load_external_data=False)
    for t in _get_all_tensors(model):
        if uses_external_data(t):
            for e in t.external_data:
                if e.key == "location":
                    e.value = data_file(dst).name
    onnx.save_model(model, str(dst))
    shutil.copyfile(data_file(src), data_file(dst))
    return dst
