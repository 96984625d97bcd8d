"""Graphs whose weights live in an external-data file (what models past protobuf's 2 GB limit need), through every
stage: export, fusions, each ONNX Runtime recipe, the gate, the manifest's checksums, verify, load, deploy, inspect.

A 2 GB graph cannot be built in the suite on 2 cores; `--external-data always` forces the same path on a tiny model,
and onnxio.LIMIT is lowered to make "auto" treat the tiny fp32 graph as too large for one file.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from bertship.cli import main
from bertship.exporter import export, onnxio
from bertship.runtimes import artifact, deploy, load, verify
from bertship.runtimes.errors import ArtifactError

pytestmark = pytest.mark.xdist_group("external-data")  # its module fixtures are made on one xdist worker

TEXTS = ["Why?", "An index built in batches and queries embedded one at a time must agree.", "ok"]


def _inline_bytes(path) -> int:
    """Tensor bytes stored inside the graph file itself."""
    model = onnx.load(str(path), load_external_data=False)
    return sum(len(t.raw_data) for t in model.graph.initializer if t.data_location != onnx.TensorProto.EXTERNAL
               and len(t.raw_data) >= onnxio.THRESHOLD)


@pytest.fixture(scope="module")
def folder(tiny_folder):
    return tiny_folder("bert", "feature-extraction")


@pytest.fixture(scope="module")
def inline(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("inline") / "art"
    export(folder, out=out, task="sentence-embedding", backends="onnxruntime", log=lambda _: None)
    return out


@pytest.fixture(scope="module")
def external(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("external") / "art"
    export(folder, out=out, task="sentence-embedding", external_data="always", log=lambda _: None)
    return out


def test_external_artifact_carries_its_data_file_with_checksums(external, inline):
    manifest = artifact.read_manifest(external)
    entry = manifest["backends"]["onnxruntime"]
    assert entry["files"] == ["onnxruntime/model.onnx", "onnxruntime/model.onnx.data"]
    assert entry["external_data"] == "onnxruntime/model.onnx.data"
    listed = {f["path"]: f for f in manifest["files"]}
    data = external / "onnxruntime" / "model.onnx.data"
    assert listed["onnxruntime/model.onnx.data"]["sha256"] == artifact.sha256_file(data)
    # the weights really are outside the graph file: it holds none of their bytes, and the data file holds them all
    graph = external / "onnxruntime" / "model.onnx"
    assert onnxio.external_files(graph) == {data}
    assert _inline_bytes(graph) == 0
    whole = inline / "onnxruntime" / "model.onnx"
    big = sum(len(t.raw_data) for t in onnx.load(str(whole)).graph.initializer if len(t.raw_data) >= onnxio.THRESHOLD)
    assert big > 0 and data.stat().st_size >= big
    assert graph.stat().st_size <= whole.stat().st_size - big + 4096  # the graph file shrank by the weights moved out
    # nothing else was left beside the model (torch's per-tensor files, the work folder)
    assert sorted(p.name for p in (external / "onnxruntime").iterdir()) == ["model.onnx", "model.onnx.data"]
    assert not (external / "_work").exists()
    assert manifest["export_options"]["external_data"] == "always"


def test_external_artifact_verifies_and_loads_to_the_same_vectors(external, inline):
    verify(external)
    a = load(external, backend="onnxruntime").embed(TEXTS)
    b = load(inline, backend="onnxruntime").embed(TEXTS)
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
    assert main(["inspect", str(external)]) == 0


def test_tampered_data_file_is_refused(external, tmp_path, capsys):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(external, copy)
    data = copy / "onnxruntime" / "model.onnx.data"
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(ArtifactError, match="model.onnx.data was changed"):
        load(copy, backend="onnxruntime")
    assert main(["verify", str(copy)]) == 5
    assert "model.onnx.data was changed" in capsys.readouterr().err
    data.unlink()
    with pytest.raises(ArtifactError, match="model.onnx.data is missing"):
        load(copy, backend="onnxruntime")


def test_triton_repository_keeps_the_data_file_beside_the_model(external, tmp_path):
    import onnxruntime as ort

    out = tmp_path / "triton"
    deploy.triton(external, out)
    version = next(p for p in out.rglob("model.onnx")).parent
    assert (version / "model.onnx.data").is_file()
    assert onnxio.external_files(version / "model.onnx") == {version / "model.onnx.data"}
    session = ort.InferenceSession(str(version / "model.onnx"), providers=["CPUExecutionProvider"])
    assert session.get_outputs()[0].name == "sentence_embedding"


@pytest.mark.parametrize("recipe", ["int8-dynamic", "int8-static", "int8-weight-only", "fp16"])
def test_every_onnx_runtime_recipe_builds_from_and_into_external_data(folder, tmp_path, recipe):
    out = tmp_path / recipe
    export(folder, out=out, task="feature-extraction", backends="onnxruntime", recipe=recipe,
           external_data="always", log=lambda _: None)
    entry = artifact.read_manifest(out)["backends"]["onnxruntime"]
    assert entry["files"] == ["onnxruntime/model.onnx", "onnxruntime/model.onnx.data"], recipe
    assert _inline_bytes(out / "onnxruntime" / "model.onnx") == 0
    verify(out)


def test_auto_moves_a_large_graph_out_and_a_quantized_one_back_in(folder, tmp_path, monkeypatch):
    """With the limit lowered between the int8 and the fp32 size, "auto" must keep the fp32 graph external and put the
    int8 one back into a single file, as a 2.2 GB model and its 0.6 GB int8 version would be."""
    plain = tmp_path / "probe"
    export(folder, out=plain, task="feature-extraction", backends="onnxruntime", log=lambda _: None)
    fp32_bytes = onnxio.tensor_bytes(onnx.load(str(plain / "onnxruntime" / "model.onnx")))
    monkeypatch.setattr(onnxio, "MARGIN", 0)
    monkeypatch.setattr(onnxio, "LIMIT", int(fp32_bytes * 0.6))  # int8 is about 0.3 of fp32: under; fp32: over
    big = tmp_path / "fp32"
    export(folder, out=big, task="feature-extraction", backends="onnxruntime", log=lambda _: None)
    assert artifact.read_manifest(big)["backends"]["onnxruntime"]["files"][-1] == "onnxruntime/model.onnx.data"
    small = tmp_path / "int8"
    logs = []
    export(folder, out=small, task="feature-extraction", backends="onnxruntime", recipe="int8-dynamic",
           log=logs.append)
    assert artifact.read_manifest(small)["backends"]["onnxruntime"]["files"] == ["onnxruntime/model.onnx"]
    verify(big)
    verify(small)
    # every stage reports its peak memory, in the progress lines and the manifest
    manifest = artifact.read_manifest(small)
    assert set(manifest["peak_rss_mb"]) >= {"load", "export", "build", "verify"}
    assert all(v > 50 for v in manifest["peak_rss_mb"].values())
    assert any("peak RSS" in line and "GB" in line for line in logs)


def test_settle_joins_per_tensor_files_into_one(tmp_path, inline):
    """torch.onnx writes one file per tensor past 2 GB; settle() makes that one data file (or one inline graph)."""
    src = onnx.load(str(inline / "onnxruntime" / "model.onnx"))
    scattered = tmp_path / "scattered" / "model.onnx"
    scattered.parent.mkdir()
    onnx.save_model(src, str(scattered), save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=1024)
    assert len(list(scattered.parent.iterdir())) > 5
    onnxio.settle(scattered, "always")
    assert sorted(p.name for p in scattered.parent.iterdir()) == ["model.onnx", "model.onnx.data"]
    onnxio.settle(scattered, "auto")
    assert sorted(p.name for p in scattered.parent.iterdir()) == ["model.onnx"]
    back = onnx.load(str(scattered))
    assert onnxio.tensor_bytes(back) == onnxio.tensor_bytes(src)
    values = {t.name: onnx.numpy_helper.to_array(t) for t in back.graph.initializer}
    for t in onnx.load(str(inline / "onnxruntime" / "model.onnx")).graph.initializer:  # (saving moved src's out)
        np.testing.assert_array_equal(values[t.name], onnx.numpy_helper.to_array(t))
    assert [n.op_type for n in back.graph.node] == [n.op_type for n in src.graph.node]
    moved = onnxio.copy(onnxio.settle(scattered, "always"), tmp_path / "elsewhere" / "renamed.onnx")
    assert onnxio.external_files(moved) == {tmp_path / "elsewhere" / "renamed.onnx.data"}


def test_bad_external_data_mode_is_usage_error(folder, tmp_path, capsys):
    code = main(["export", str(folder), "--external-data", "sometimes", "--out", str(tmp_path / "x")])
    assert code == 2 and "--external-data 'sometimes'" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_manifest_lists_data_file_in_report(external):
    report = (external / "report.md").read_text()
    assert "model.onnx.data" in report
    assert json.loads((external / "manifest.json").read_text())["backends"]["openvino"]["files"][0].endswith(".xml")


def test_fusions_run_on_a_graph_read_without_its_weights(folder, tmp_path):
    """graph.optimize reads the graph without its weights and writes the fused one tensor by tensor: the fused graph
    has its own page-aligned data file (nothing points back at the source's) and keeps the outputs, so the weights
    the fusions rewrote (Q, K, V concatenated into one) were read right from the data file on demand."""
    import onnxruntime as ort

    from bertship.exporter import families, graph

    art = export(folder, out=tmp_path / "plain", task="feature-extraction", backends="onnxruntime",
                 ort_graph="plain", external_data="always", log=lambda _: None)
    raw = onnxio.copy(art / "onnxruntime" / "model.onnx", tmp_path / "raw" / "model.onnx")
    fused = tmp_path / "fused" / "model.onnx"
    report = graph.optimize(raw, families.FAMILIES["bert"], 2, fused)
    assert report.missing == {} and report.counts["Attention"] == 2
    assert onnxio.external_files(fused) == {onnxio.data_file(fused)}
    offsets = [int({e.key: e.value for e in t.external_data}["offset"])
               for t in onnx.load(str(fused), load_external_data=False).graph.initializer if onnxio.is_external(t)]
    assert offsets and all(o % onnxio.ALIGN == 0 for o in offsets)
    rng = np.random.default_rng(1)
    mask = np.ones((3, 9), np.int64)
    mask[1, 4:] = 0
    feeds = {"input_ids": rng.integers(5, 200, (3, 9)).astype(np.int64), "attention_mask": mask,
             "token_type_ids": np.zeros((3, 9), np.int64)}
    expect = ort.InferenceSession(str(raw), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    onnxio.data_file(raw).unlink()  # the fused graph must not need the source's data file
    got = ort.InferenceSession(str(fused), providers=["CPUExecutionProvider"]).run(None, feeds)[0]
    valid = mask.astype(bool)
    np.testing.assert_allclose(got[valid], expect[valid], atol=1e-4)


def test_write_external_streams_mixed_inline_and_external_tensors(inline, tmp_path):
    """A model holding some tensors in memory and some in another data file (what the fusions leave) is written with
    every large tensor in one new data file, the bytes unchanged."""
    whole = onnx.load(str(inline / "onnxruntime" / "model.onnx"))
    half = tmp_path / "half" / "model.onnx"
    copy = onnx.ModelProto()
    copy.CopyFrom(whole)
    onnxio.save(copy, half, "always")  # moves copy's tensors out to half's data file
    model = onnx.load(str(half), load_external_data=False)
    big = [t for t in model.graph.initializer if onnxio.is_external(t)]
    for t in big[::2]:  # every other tensor back in memory, as a fusion's new weights would be
        t.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(t, str(half.parent)), t.name))
    out = onnxio.write_external(model, tmp_path / "out" / "model.onnx", half.parent)
    assert onnxio.external_files(out) == {onnxio.data_file(out)}
    back = {t.name: onnx.numpy_helper.to_array(t) for t in onnx.load(str(out)).graph.initializer}
    for t in whole.graph.initializer:
        np.testing.assert_array_equal(back[t.name], onnx.numpy_helper.to_array(t))



def test_settle_keeps_constant_attributes_and_initializers_through_both_layouts(tmp_path):
    """A Constant node's tensor over the threshold (torch writes position ids that way) stays in its node when the
    initializers move out, and a graph that has both in data files comes back whole into one file."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    w = np.arange(1024, dtype=np.float32).reshape(32, 32) / 1024
    c = np.linspace(-1, 1, 2048, dtype=np.float32).reshape(64, 32)
    graph = helper.make_graph(
        [helper.make_node("Constant", [], ["c"], value=numpy_helper.from_array(c)),
         helper.make_node("MatMul", ["x", "w"], ["xw"]), helper.make_node("MatMul", ["c", "xw"], ["y"])],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [32, 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [64, 32])], [numpy_helper.from_array(w, "w")])
    path = tmp_path / "m" / "model.onnx"
    path.parent.mkdir()
    onnx.save_model(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path),
                    save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=1024,
                    convert_attribute=True)  # both tensors in files of their own, as torch can leave them
    x = np.eye(32, dtype=np.float32)
    for mode, files in (("always", ["model.onnx", "model.onnx.data"]), ("auto", ["model.onnx"])):
        onnxio.settle(path, mode)
        assert sorted(p.name for p in path.parent.iterdir()) == files, mode
        y = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
        np.testing.assert_allclose(y, c @ w, rtol=1e-6)
    model = onnx.load(str(path), load_external_data=False)
    assert not any(onnxio.is_external(t) for t in onnxio.tensors(model.graph))
    assert [n.op_type for n in model.graph.node] == ["Constant", "MatMul", "MatMul"]


BENCH = """
name = "external"
[recipes]
candidates = ["fp32"]
[[runtimes]]
backend = "onnxruntime"
threads = [1]
[workload]
batches = [2]
sequences = [16]
[measure]
warmup = 1
iterations = 3
rounds = 2
passes = 1
[[budgets]]
metric = "cosine_min"
min = 0.999
"""


def test_bench_times_an_external_data_artifact_and_counts_its_data_file(external, tmp_path):
    profile = tmp_path / "p.toml"
    profile.write_text(BENCH)
    out = tmp_path / "bench.json"
    assert main(["check", str(external), "--profile", str(profile), "--json", str(out)]) == 0
    job = json.loads(out.read_text())["jobs"]["candidate/onnxruntime/threads=1"]
    assert job["fidelity"]["cosine_min"] > 0.999
    data_mb = (external / "onnxruntime" / "model.onnx.data").stat().st_size / 1e6
    assert job["artifact_mb"] >= data_mb  # the job's own backend files: the graph alone is a few kB
