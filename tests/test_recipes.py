"""Recipes on both backends, their refusals, calibration input, and the manifest record — on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bertship.cli import main
from bertship.exporter import export
from bertship.exporter.quantize import HANDLERS
from bertship.exporter.recipes import RECIPES
from bertship.profiles import cpu_info
from bertship.runtimes import load, verify

HAS_BF16 = bool({"avx512_bf16", "amx_bf16"} & set(cpu_info()["flags"]))


def test_every_recipe_backend_has_a_handler_and_nothing_else():
    declared = {(b, r.name) for r in RECIPES.values() for b in r.how}
    assert declared == set(HANDLERS)
    for r in RECIPES.values():
        assert set(r.how) | set(r.refused) == {"onnxruntime", "openvino"}, r.name


@pytest.mark.slow
@pytest.mark.parametrize("backend,recipe", sorted(k for k in HANDLERS if k[1] != "int8-qat"))  # QAT: test_qat.py
def test_recipe_builds_verifies_and_is_recorded(backend, recipe, tiny_folder, tmp_path):
    if recipe == "bf16" and not HAS_BF16:
        pytest.skip("this CPU has neither AVX512_BF16 nor AMX-BF16: the bf16 recipe is refused here (tested below)")
    out = export(tiny_folder("bert", "sequence-classification"), out=tmp_path / "a", recipe=recipe,
                 backends=backend, log=lambda _: None)
    report = verify(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["name"] == recipe
    assert manifest["recipe"]["params"] == RECIPES[recipe].params
    assert manifest["backends"][backend]["build"], "the handler records what it did"
    if RECIPES[recipe].tolerance is not None:
        assert manifest["fidelity"]["tolerance"]["min_cosine"] == RECIPES[recipe].tolerance.min_cosine
    if recipe == "bf16" or (recipe == "int8-mixed" and backend == "openvino" and HAS_BF16):
        assert report["openvino"]["precision"] == "bf16"  # int8-mixed: what stays float runs in bf16 where it can
    elif backend == "openvino":
        assert report["openvino"]["precision"] == "f32"
    assert load(out).encode(["a short test"]).shape == (1, 3)
    facts = graph_facts(out, backend)
    for claim, ok in CLAIMS[(backend, recipe)](facts).items():
        assert ok, f"{backend} {recipe}: the graph does not hold what the recipe claims: {claim} ({facts})"


def graph_facts(out: Path, backend: str) -> dict:
    """What the shipped graph holds: op counts, the element types of the Linear weights, MatMulNBits attributes."""
    if backend == "onnxruntime":
        import onnx
        from onnx import helper, numpy_helper

        g = onnx.load(str(out / "onnxruntime" / "model.onnx")).graph
        inits = {i.name: i for i in g.initializer}
        writer = {o: n for n in g.node for o in n.output}
        ops: dict[str, int] = {}
        for n in g.node:
            ops[n.op_type] = ops.get(n.op_type, 0) + 1
        weights = []  # element type of each MatMul-like op's constant weight, through a DequantizeLinear
        for n in g.node:
            if n.op_type in ("MatMul", "MatMulInteger", "MatMulNBits") and len(n.input) > 1:
                w = n.input[1]
                if w in writer and writer[w].op_type == "DequantizeLinear":
                    w = writer[w].input[0]
                if w in inits:
                    weights.append(helper.tensor_dtype_to_np_dtype(inits[w].data_type).name)
        act_zero_points = [numpy_helper.to_array(inits[n.input[2]]).dtype.name for n in g.node
                           if n.op_type == "QuantizeLinear" and len(n.input) > 2 and n.input[2] in inits
                           and n.input[0] not in inits]
        per_channel = any(numpy_helper.to_array(inits[n.input[1]]).size > 1 for n in g.node
                          if n.op_type == "DequantizeLinear" and n.input[0] in inits and n.input[1] in inits)
        nbits = [{a.name: helper.get_attribute_value(a) for a in n.attribute} for n in g.node
                 if n.op_type == "MatMulNBits"]
        return {"ops": ops, "weights": weights, "activation_zero_points": act_zero_points,
                "per_channel_weights": per_channel, "nbits": nbits}
    import openvino as ov

    model = ov.Core().read_model(str(out / "openvino" / "model.xml"))
    ops: dict[str, int] = {}
    weights = []
    for op in model.get_ordered_ops():
        ops[op.get_type_name()] = ops.get(op.get_type_name(), 0) + 1
        if op.get_type_name() == "MatMul":
            node = op.input_value(1).get_node()
            while node.get_type_name() in ("Convert", "Multiply", "Subtract", "Reshape", "Transpose"):
                node = node.input_value(0).get_node()
            if node.get_type_name() == "Constant":
                weights.append(node.get_element_type().get_type_name())
    return {"ops": ops, "weights": weights}


def _none(facts, *ops):
    return all(facts["ops"].get(op, 0) == 0 for op in ops)


_INT_OPS = ("QuantizeLinear", "DequantizeLinear", "MatMulInteger", "DynamicQuantizeLinear", "MatMulNBits")
# What each recipe claims its graph holds (recipes.py `how`), as checks on graph_facts: a handler that shipped the
# fp32 graph instead fails every one of these but fp32's.
CLAIMS = {
    ("onnxruntime", "fp32"): lambda f: {"no quantized op": _none(f, *_INT_OPS),
                                        "float32 weights": set(f["weights"]) == {"float32"}},
    ("onnxruntime", "fp16"): lambda f: {"float16 weights": set(f["weights"]) == {"float16"}},
    ("onnxruntime", "int8-dynamic"): lambda f: {
        "activations quantized at run time": f["ops"].get("DynamicQuantizeLinear", 0) > 0,
        "integer MatMuls": f["ops"].get("MatMulInteger", 0) > 0, "S8 weights": set(f["weights"]) == {"int8"}},
    ("onnxruntime", "int8-static"): lambda f: {
        "U8 activations": set(f["activation_zero_points"]) == {"uint8"},
        "S8 weights": "int8" in f["weights"] and "float32" not in f["weights"],
        "per-channel weights": f["per_channel_weights"]},
    ("onnxruntime", "int8-mixed"): lambda f: {
        "U8 activations": set(f["activation_zero_points"]) == {"uint8"}, "S8 weights": "int8" in f["weights"]},
    ("onnxruntime", "int8-weight-only"): lambda f: {
        "MatMulNBits bits 8 block 32": bool(f["nbits"]) and all(a["bits"] == 8 and a["block_size"] == 32
                                                                for a in f["nbits"]),
        "no float Linear weight left": "float32" not in f["weights"]},
    ("onnxruntime", "int4-weight-only"): lambda f: {
        "MatMulNBits bits 4 block 32": bool(f["nbits"]) and all(a["bits"] == 4 and a["block_size"] == 32
                                                                for a in f["nbits"])},
    ("openvino", "fp32"): lambda f: {"no FakeQuantize": _none(f, "FakeQuantize"),
                                     "f32 weights": set(f["weights"]) == {"f32"}},
    ("openvino", "bf16"): lambda f: {"f32 weights (bf16 is the run-time hint)": set(f["weights"]) == {"f32"}},
    ("openvino", "fp16"): lambda f: {"f16 weights": set(f["weights"]) == {"f16"}},
    ("openvino", "int8-static"): lambda f: {"FakeQuantize on activations": f["ops"].get("FakeQuantize", 0) > 0,
                                            "i8 weights": set(f["weights"]) == {"i8"}},
    ("openvino", "int8-mixed"): lambda f: {"FakeQuantize on activations": f["ops"].get("FakeQuantize", 0) > 0,
                                           "i8 weights": "i8" in f["weights"]},
    ("openvino", "int8-weight-only"): lambda f: {"no FakeQuantize": _none(f, "FakeQuantize"),
                                                 "u8 weights (INT8_ASYM)": set(f["weights"]) == {"u8"}},
    ("openvino", "int4-weight-only"): lambda f: {"no FakeQuantize": _none(f, "FakeQuantize"),
                                                 "i4 weights (INT4_SYM)": "i4" in f["weights"]},
}


def _size(out: Path, backend: str) -> int:
    manifest = json.loads((out / "manifest.json").read_text())
    return sum(f["bytes"] for f in manifest["files"] if f["path"].startswith(backend + "/"))


def test_quantized_recipes_change_the_weights(tiny_folder, tmp_path):
    import onnx

    src = tiny_folder("bert", "sequence-classification")
    fp32 = export(src, out=tmp_path / "fp32", backends="onnxruntime", log=lambda _: None)
    int8 = export(src, out=tmp_path / "int8", recipe="int8-dynamic", backends="onnxruntime", log=lambda _: None)
    fp16 = export(src, out=tmp_path / "fp16", recipe="fp16", backends="onnxruntime", log=lambda _: None)
    assert _size(int8, "onnxruntime") < _size(fp32, "onnxruntime")
    assert _size(fp16, "onnxruntime") < _size(fp32, "onnxruntime")
    g = onnx.load(str(int8 / "onnxruntime" / "model.onnx")).graph
    # 2 layers x 6 Linear (q, k, v, out, ffn in, ffn out) + pooler + classifier compute in int8
    assert sum(n.op_type == "MatMulInteger" for n in g.node) == 14
    g16 = onnx.load(str(fp16 / "onnxruntime" / "model.onnx")).graph
    assert {i.data_type for i in g16.initializer if len(i.dims) == 2} == {onnx.TensorProto.FLOAT16}
    assert [i.type.tensor_type.elem_type for i in g16.output] == [onnx.TensorProto.FLOAT]  # fp32 I/O kept


@pytest.mark.slow
def test_int8_dynamic_records_the_target_class(tiny_folder, tmp_path):
    """--target-cpu x86-novnni gives 7-bit weights (reduce_range); the default follows this machine's measured class."""
    from bertship.runtimes.cpuclass import runtime_class

    for target in ("x86-novnni", None):
        out = export(tiny_folder("bert", "sequence-classification"), out=tmp_path / str(target), recipe="int8-dynamic",
                     backends="onnxruntime", target_cpu=target, log=lambda _: None)
        entry = json.loads((out / "manifest.json").read_text())["backends"]["onnxruntime"]
        expected = target or runtime_class("onnxruntime")
        assert entry["cpu_class"]["target"] == entry["build"]["target_cpu"] == expected
        assert entry["build"]["reduce_range"] is (expected == "x86-novnni")
        assert ("saturates" in entry["build"]["weights_7bit_reason"]) is (expected == "x86-novnni")


def run(capsys, *argv) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


@pytest.mark.parametrize("recipe,backend,needle", [
    ("int8-dynamic", "openvino", "no offline dynamic int8"),
    ("bf16", "onnxruntime", "no bf16 kernels"),
    ("int9", "onnxruntime", "unknown recipe"),
])
def test_recipe_a_backend_lacks_is_refused(capsys, tiny_folder, tmp_path, recipe, backend, needle):
    code, err = run(capsys, "export", tiny_folder("bert", "feature-extraction"), "--recipe", recipe,
                    "--backends", backend, "--out", tmp_path / "o")
    assert code == 2 and needle in err and " — " in err
    assert not (tmp_path / "o").exists()


def test_bf16_refused_on_a_cpu_without_bf16(capsys, tiny_folder, tmp_path, monkeypatch):
    from bertship.exporter import pipeline

    monkeypatch.setattr(pipeline, "cpu_info", lambda: {"model": "old", "arch": "x86_64", "cores": 2, "flags": ["avx2"]})
    code, err = run(capsys, "export", tiny_folder("bert", "feature-extraction"), "--recipe", "bf16",
                    "--backends", "openvino", "--out", tmp_path / "o")
    assert code == 8 and "avx512_bf16" in err and "amx_bf16" in err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("content,suffix,needle", [
    (None, ".txt", "does not exist"),
    ("", ".txt", "has 0 texts; static int8 needs at least 16"),
    ("one\ntwo\nthree\n", ".txt", "has 3 texts"),
    ('{"text": "ok"}\nnot json\n', ".jsonl", ":2 is not JSON"),
    ('{"text": "ok"}\n{"sentence": "x"}\n', ".jsonl", ':2 has no string "text" field'),
    (b"\xff\xfe\x00bad", ".txt", "cannot read calibration file"),
])
def test_bad_calibration_input(capsys, tiny_folder, tmp_path, content, suffix, needle):
    path = tmp_path / f"calib{suffix}"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content)
    code, err = run(capsys, "export", tiny_folder("bert", "feature-extraction"), "--recipe", "int8-static",
                    "--calibration", path, "--out", tmp_path / "o")
    assert code == 2 and needle in err, err
    assert not (tmp_path / "o").exists()


def test_calibration_only_for_calibrated_recipes(capsys, tiny_folder, tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("x\n" * 20)
    code, err = run(capsys, "export", tiny_folder("bert", "feature-extraction"), "--recipe", "int8-dynamic",
                    "--calibration", path, "--out", tmp_path / "o")
    assert code == 2 and "--calibration applies to recipes that calibrate" in err


def test_unknown_calibration_method(capsys, tiny_folder, tmp_path):
    code, err = run(capsys, "export", tiny_folder("bert", "feature-extraction"), "--recipe", "int8-static",
                    "--calibration-method", "kl", "--out", tmp_path / "o")
    assert code == 2 and "minmax, entropy, percentile" in err


@pytest.mark.parametrize("method", ["minmax", "entropy", "percentile"])
def test_user_calibration_jsonl_and_methods(tiny_folder, tmp_path, method):
    from bertship.exporter.golden import sentences

    path = tmp_path / "calib.jsonl"
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in sentences()[:20]))
    out = export(tiny_folder("bert", "sequence-classification"), out=tmp_path / "a", recipe="int8-static",
                 calibration=path, calibration_method=method, backends="onnxruntime", log=lambda _: None)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["recipe"]["calibration"] == str(path)
    assert manifest["recipe"]["params"]["calibration_method"] == method
    assert manifest["backends"]["onnxruntime"]["build"]["calibration_samples"] == 20
    lengths = manifest["backends"]["onnxruntime"]["build"]["calibration_lengths"]
    assert lengths == ("real" if method == "minmax" else "padded to the longest of each 4, sorted by length")


def test_histogram_calibration_is_fed_in_length_sorted_chunks():
    """Entropy/percentile calibration sees at most CALIB_CHUNK samples at once, each chunk padded to its own longest
    (ORT keeps every sample of a call in memory); nothing is lost and padding is masked."""
    from bertship.exporter import quantize

    rng = np.random.default_rng(0)
    feeds = []
    for n in rng.integers(3, 40, size=18):
        ids = rng.integers(5, 90, size=(1, int(n)))
        feeds.append({"input_ids": ids, "attention_mask": np.ones_like(ids), "token_type_ids": np.zeros_like(ids)})
    padded, chunk = quantize._pad_in_chunks(feeds, pad_id=0)
    assert chunk == 3 and len(padded) == 18  # the largest divisor of 18 up to CALIB_CHUNK (4)
    assert sorted(int(f["attention_mask"].sum()) for f in padded) == sorted(f["input_ids"].shape[1] for f in feeds)
    widths = [f["input_ids"].shape[1] for f in padded]
    assert widths == sorted(widths)
    for start in range(0, 18, chunk):
        group = padded[start:start + chunk]
        assert len({f["input_ids"].shape for f in group}) == 1
        assert max(int(f["attention_mask"].sum()) for f in group) == group[0]["input_ids"].shape[1]
    reader = quantize._FeedReader(padded)
    reader.set_range(3, 6)
    assert len(reader) == 18 and [reader.get_next() is not None for _ in range(4)] == [True, True, True, False]


@pytest.mark.parametrize("family,recipe,backends", [
    ("deberta-v2", "int8-static", ("onnxruntime", "openvino")), ("deberta-v2", "int8-dynamic", ("onnxruntime",)),
    ("modernbert", "int8-static", ("onnxruntime", "openvino")), ("mpnet", "int8-dynamic", ("onnxruntime",)),
    ("electra", "int8-dynamic", ("onnxruntime",)),
])
@pytest.mark.slow
def test_int8_recipes_on_the_newer_families(family, recipe, backends, tiny_folder, tmp_path):
    """int8 quantizes the newer families' graphs (DeBERTa's disentangled attention, ModernBERT's GLU and RoPE, MPNet's
    relative bias, ELECTRA's factorized embedding), passes the gate, and the graphs hold what the recipe claims.
    Every recipe × these families was measured once (docs/benchmarks.md); these are the cases kept in the suite."""
    out = export(tiny_folder(family, "sequence-classification"), out=tmp_path / recipe, recipe=recipe,
                 backends=backends, log=lambda _: None)
    assert set(verify(out)) == set(backends)
    for backend in backends:
        facts = graph_facts(out, backend)
        for claim, ok in CLAIMS[(backend, recipe)](facts).items():
            assert ok, f"{family} {backend} {recipe}: {claim} ({facts})"
