"""Recipes on both backends, their refusals, calibration input, and the manifest record — on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_int8_dynamic_records_the_isa_choice(tiny_folder, tmp_path, monkeypatch):
    from bertship.exporter import pipeline

    no_vnni = dict(cpu_info(), flags=["avx2", "fma"], arch="x86_64")
    monkeypatch.setattr(pipeline, "cpu_info", lambda: no_vnni)
    monkeypatch.setattr(pipeline.platform, "machine", lambda: "x86_64")
    out = export(tiny_folder("bert", "sequence-classification"), out=tmp_path / "a", recipe="int8-dynamic",
                 backends="onnxruntime", log=lambda _: None)
    build = json.loads((out / "manifest.json").read_text())["backends"]["onnxruntime"]["build"]
    assert build["reduce_range"] is True and "without VNNI" in build["reduce_range_reason"]


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
