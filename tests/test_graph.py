"""ONNX Runtime transformer fusions: counts before/after, parity of the fused graph, and the missing-fusion error."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest

from bertship.cli import main
from bertship.exporter import export, families, graph

pytestmark = pytest.mark.xdist_group("plain-graphs")  # its module fixtures are made on one xdist worker


@pytest.fixture(scope="module")
def plain_graphs(tiny_folder, tmp_path_factory):
    """The plain fp32 ONNX export of each tiny family (feature extraction)."""
    root = tmp_path_factory.mktemp("plain")
    return {f: export(tiny_folder(f, "feature-extraction"), out=root / f, backends="onnxruntime",
                      allow_missing_fusions=True, log=lambda _: None) / "onnxruntime" / "model.onnx"
            for f in families.FAMILIES}


def _ops(path) -> Counter:
    import onnx

    return Counter(n.op_type for n in onnx.load(str(path)).graph.node)


@pytest.mark.slow
@pytest.mark.parametrize("family", list(families.FAMILIES))
def test_fusions_reach_the_family_counts_and_keep_outputs(family, plain_graphs, tmp_path):
    import onnxruntime as ort

    plain = plain_graphs[family]
    fused = tmp_path / "fused.onnx"
    report = graph.optimize(plain, families.FAMILIES[family], 2, fused)
    assert report.missing == {}, report
    for op, want in report.expected.items():
        assert report.counts.get(op, 0) >= want
    before, after = _ops(plain), _ops(fused)
    if "Attention" in report.expected:
        assert before["Softmax"] == 2 and before["Attention"] == 0
        assert after["Attention"] == report.counts["Attention"]
        assert after["Softmax"] == before["Softmax"] - after["Attention"]
    names = [i.name for i in ort.InferenceSession(str(plain)).get_inputs()]
    rng = np.random.default_rng(0)
    feeds = {"input_ids": rng.integers(5, 200, (3, 11)), "attention_mask": np.ones((3, 11), np.int64),
             "token_type_ids": np.zeros((3, 11), np.int64)}
    feeds["attention_mask"][1, 6:] = 0
    feeds = {k: feeds[k].astype(np.int64) for k in names}
    a = ort.InferenceSession(str(plain)).run(None, feeds)[0]
    b = ort.InferenceSession(str(fused)).run(None, feeds)[0]
    valid = feeds["attention_mask"].astype(bool)
    np.testing.assert_allclose(a[valid], b[valid], atol=1e-4)


def test_missing_fusion_names_op_and_layers(capsys, tiny_folder, tmp_path, monkeypatch):
    # Pretend DistilBERT's attention should fuse: the report must say it did not, and in which layers.
    strict = replace(families.FAMILIES["distilbert"], fusions={**families.FAMILIES["distilbert"].fusions,
                                                               "Attention": (1, 0)})
    monkeypatch.setitem(families.FAMILIES, "distilbert", strict)
    src = tiny_folder("distilbert", "feature-extraction")
    code = main(["export", str(src), "--backends", "onnxruntime", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 10
    assert "Attention: 0 of 2 fused; not fused in layer 0, 1" in err and "--allow-missing-fusions" in err
    assert not (tmp_path / "o").exists()
    code = main(["export", str(src), "--backends", "onnxruntime", "--out", str(tmp_path / "o"),
                 "--allow-missing-fusions"])
    assert code == 0
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["graph"]["allow_missing_fusions"] is True
    assert manifest["graph"]["fusions"]["missing"] == {"Attention": "0 of 2 fused; not fused in layer 0, 1"}


def test_manifest_and_report_carry_the_fusion_counts(tiny_artifact):
    manifest = json.loads((tiny_artifact / "manifest.json").read_text())
    fusions = manifest["graph"]["fusions"]
    assert fusions["counts"] == {"EmbedLayerNormalization": 1, "Attention": 2, "BiasGelu": 2,
                                 "SkipLayerNormalization": 4}
    assert fusions["expected"] == fusions["counts"] and fusions["missing"] == {}
    assert "Attention 2" in (tiny_artifact / "report.md").read_text()


@pytest.mark.parametrize("recipe", ["fp32", "int8-dynamic"])
def test_ort_recipes_can_start_from_the_fused_graph(recipe, tiny_folder, tmp_path):
    out = export(tiny_folder("bert", "sequence-classification"), out=tmp_path / "a", recipe=recipe,
                 backends="onnxruntime", ort_graph="fused", log=lambda _: None)
    ops = _ops(out / "onnxruntime" / "model.onnx")
    assert ops["Attention"] + ops["QAttention"] == 2
    assert json.loads((out / "manifest.json").read_text())["backends"]["onnxruntime"]["build"]["graph"] == "fused"
