"""ONNX files on disk: a graph file, and for graphs past protobuf's 2 GB limit (or when asked) one external-data file
beside it, `<model>.data`: the layout ONNX Runtime's own tools write (OnnxModel.save_model_to_file) and every runtime
loads from the graph's folder.

Modes (ExportOptions.external_data): "auto" keeps the weights inside the graph file unless they would pass the limit;
"always" puts every tensor over 1 KiB in the data file (some deployments want the graph and the weights apart, and the
tests force the large-model path with it on tiny models).
"""

from __future__ import annotations

import itertools
import shutil
from collections.abc import Iterator
from pathlib import Path

MODES = ("auto", "always")
LIMIT = 2**31 - 1  # protobuf's hard limit on one serialized message
MARGIN = 64 << 20  # graph structure, attributes and names beside the tensors
THRESHOLD = 1024  # tensors at least this large go to the data file (ONNX's default)
ALIGN = 4096  # data-file offsets are page-aligned
CHUNK = 64 << 20  # tensors are copied between data files this many bytes at a time


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


def tensors(graph) -> Iterator:
    """Every TensorProto of a graph: initializers, and tensors held in node attributes (subgraphs included)."""
    yield from graph.initializer
    yield from attribute_tensors(graph)


def attribute_tensors(graph) -> Iterator:
    """Tensors held in node attributes (Constant values), subgraphs' initializers included."""
    for node in graph.node:
        for a in node.attribute:
            if a.HasField("t"):
                yield a.t
            yield from a.tensors
            if a.HasField("g"):
                yield from tensors(a.g)
            for g in a.graphs:
                yield from tensors(g)


def is_external(tensor) -> bool:
    from onnx import TensorProto

    return tensor.HasField("data_location") and tensor.data_location == TensorProto.EXTERNAL


def _info(tensor) -> dict[str, str]:
    return {e.key: e.value for e in tensor.external_data}


def external_files(path: Path) -> set[Path]:
    """The external-data files a graph file refers to (read without loading any tensor)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {Path(path).parent / _info(t)["location"] for t in tensors(model.graph) if is_external(t)}


def files(path: Path) -> list[Path]:
    """The graph file and its data file, when it has one: what an artifact must carry for it."""
    path = Path(path)
    return [path] + ([data_file(path)] if data_file(path).exists() else [])


def wants_external(model, mode: str) -> bool:
    return mode == "always" or tensor_bytes(model) + MARGIN >= LIMIT


def save(model, path: Path, mode: str = "auto", source_dir: Path | None = None) -> Path:
    """Write a ModelProto at `path`, with its tensors in `<path>.data` when the mode or its size says so. A model
    loaded with load_external_data=False (tensors still in data files under `source_dir`) is written without ever
    holding those tensors in memory (write_external)."""
    import onnx

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if wants_external(model, mode):
        return write_external(model, path, source_dir)
    if any(is_external(t) for t in model.graph.initializer):
        if source_dir is None:
            raise ValueError("the model refers to external data: say where it is (source_dir)")
        write_inline(model, path, Path(source_dir))
    else:
        onnx.save_model(model, str(path))
    data_file(path).unlink(missing_ok=True)
    return path


def _key(field: int) -> bytes:
    return _varint(field << 3 | 2)  # a length-delimited field's tag


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def write_inline(model, path: Path, source_dir: Path) -> Path:
    """Write a model whose initializers are (partly) in data files under `source_dir` as one self-contained graph
    file, one tensor at a time: protobuf lets a message's fields come in any order and repeated fields in pieces, so
    the file is the model without its initializers, then each initializer appended to the graph with its bytes read
    from the data file (ModelProto.graph is field 7, GraphProto.initializer field 5, TensorProto.raw_data field 9).
    Serialized whole, a graph under 2 GB costs a copy of the model in bytes on top of the model in memory."""
    import onnx

    from onnx.external_data_helper import load_external_data_for_tensor

    for t in attribute_tensors(model.graph):  # tensors in node attributes (small) come back into memory
        if is_external(t):
            load_external_data_for_tensor(t, str(source_dir))
    inits = [onnx.TensorProto() for _ in model.graph.initializer]
    for t, src in zip(inits, model.graph.initializer):
        t.CopyFrom(src)  # external ones are small: their bytes stay on disk
    head = onnx.ModelProto()
    head.CopyFrom(model)
    del head.graph.initializer[:]
    graph = head.graph.SerializeToString()
    head.ClearField("graph")

    def fields(t) -> tuple[bytes, tuple[Path, int, int] | None]:
        """A tensor's serialized bytes without its external data, and where its raw bytes are (None: inline)."""
        if not is_external(t):
            return t.SerializeToString(), None
        info = _info(t)
        bare = onnx.TensorProto()
        bare.CopyFrom(t)
        del bare.external_data[:]
        bare.ClearField("data_location")
        src = Path(source_dir) / info["location"]
        offset = int(info.get("offset", 0))
        length = int(info["length"]) if "length" in info else src.stat().st_size - offset
        return bare.SerializeToString(), (src, offset, length)

    def size(t) -> int:
        body, where = fields(t)
        n = len(body) + (len(_key(9)) + len(_varint(where[2])) + where[2] if where else 0)
        return len(_key(5)) + len(_varint(n)) + n

    graph_len = len(graph) + sum(size(t) for t in inits)
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    with open(partial, "wb") as out:
        out.write(head.SerializeToString())
        out.write(_key(7) + _varint(graph_len) + graph)
        for t in inits:
            body, where = fields(t)
            raw = len(_key(9)) + len(_varint(where[2])) + where[2] if where else 0
            out.write(_key(5) + _varint(len(body) + raw) + body)
            if where:
                src, offset, length = where
                out.write(_key(9) + _varint(length))
                _copy_bytes(src, offset, length, out, t.name)
    partial.replace(path)
    return path


def _copy_bytes(src: Path, offset: int, length: int, out, name: str) -> None:
    with open(src, "rb") as f:
        f.seek(offset)
        left = length
        while left:
            chunk = f.read(min(left, CHUNK))
            if not chunk:
                raise ValueError(f"{src} ends before tensor {name!r} does")
            out.write(chunk)
            left -= len(chunk)


def write_external(model, path: Path, source_dir: Path | None = None) -> Path:
    """Write `model` at `path` with every tensor of THRESHOLD bytes or more in `<path>.data`, one tensor at a time:
    tensors already in data files (under `source_dir`) are copied over in chunks, tensors in memory are moved out of
    it as they are written. Offsets are page-aligned (runtimes can map them). `model` is changed in place: its
    tensors point at the new data file afterwards."""
    import onnx
    from onnx import TensorProto, numpy_helper

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = data_file(path)
    partial = data.with_name(data.name + ".partial")
    # tensors in node attributes move only when already external (onnx.save's convert_attribute=False)
    moving = itertools.chain(model.graph.initializer, (t for t in attribute_tensors(model.graph) if is_external(t)))
    with open(partial, "wb") as out:
        for t in moving:
            if is_external(t):
                info = _info(t)
                if source_dir is None:
                    raise ValueError("the model refers to external data: say where it is (source_dir)")
                src, offset = Path(source_dir) / info["location"], int(info.get("offset", 0))
                length = int(info["length"]) if "length" in info else src.stat().st_size - offset
            elif t.HasField("raw_data") and len(t.raw_data) >= THRESHOLD:
                src, offset, length = None, 0, len(t.raw_data)
            elif not t.HasField("raw_data") and _typed_bytes(t) >= THRESHOLD:
                t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t), t.name))
                src, offset, length = None, 0, len(t.raw_data)
            else:
                continue
            out.seek(-out.tell() % ALIGN, 1)
            at = out.tell()
            if src is None:
                out.write(t.raw_data)
                t.ClearField("raw_data")
            else:
                _copy_bytes(src, offset, length, out, t.name)
            del t.external_data[:]
            t.data_location = TensorProto.EXTERNAL
            for key, value in (("location", data.name), ("offset", str(at)), ("length", str(length))):
                entry = t.external_data.add()
                entry.key, entry.value = key, value
    onnx.save_model(model, str(path))
    partial.replace(data)
    return path


def _typed_bytes(tensor) -> int:
    from onnx import TensorProto, helper

    if tensor.data_type in (TensorProto.UNDEFINED, TensorProto.STRING):
        return 0
    n = 1
    for d in tensor.dims:
        n *= d
    return n * helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize


def settle(path: Path, mode: str) -> Path:
    """Bring a graph some tool wrote (inline, one data file, or one file per tensor as torch.onnx writes past 2 GB)
    to this module's layout under `mode`. A graph already in it is left alone, so no weights are read for nothing;
    a graph going to (or staying in) external data is rewritten tensor by tensor, never whole in memory."""
    import onnx

    path = Path(path)
    model = onnx.load(str(path), load_external_data=False)  # read once: inline tensors come with it
    refs = {path.parent / _info(t)["location"] for t in tensors(model.graph) if is_external(t)}
    data = data_file(path)
    if refs == {data} and (mode == "always" or data.stat().st_size + MARGIN >= LIMIT):
        return path  # already one data file, and it is wanted
    if not refs and mode == "auto" and path.stat().st_size + MARGIN < LIMIT:
        return path  # inline, and small enough to be
    if wants_external(model, mode):
        staged = path.with_name(path.name + ".settling")
        write_external(model, staged, path.parent)  # reads the old files, writes staged + staged.data
        for stray in refs:
            stray.unlink()
        data_file(staged).replace(data)
        _relocate(model, data.name)
        onnx.save_model(model, str(path))
        staged.unlink()
        return path
    save(model, path, mode, source_dir=path.parent)  # under the limit: one copy of the weights, in memory
    for stray in refs:
        stray.unlink(missing_ok=True)
    return path


def _relocate(model, location: str) -> None:
    for t in tensors(model.graph):
        if is_external(t):
            for e in t.external_data:
                if e.key == "location":
                    e.value = location


def copy(src: Path, dst: Path) -> Path:
    """Copy a graph (and its data file) to `dst`, its data file renamed to match and the graph's pointers to it
    rewritten, without reading the tensors."""
    import onnx

    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    refs = external_files(src)
    if not refs:
        shutil.copyfile(src, dst)
        return dst
    if refs != {data_file(src)}:
        raise RuntimeError(f"{src} keeps its tensors in {len(refs)} files; settle() it into one first")
    model = onnx.load(str(src), load_external_data=False)
    _relocate(model, data_file(dst).name)
    onnx.save_model(model, str(dst))
    shutil.copyfile(data_file(src), data_file(dst))
    return dst
