"""Accuracy-aware fallback and `bertship eval` on tiny models (the real-task numbers are in bench/quantization.py)."""

from __future__ import annotations

import json

import pytest

from bertship.cli import main
from bertship.exporter import export, fallback
from bertship.exporter.golden import sentences
from bertship.runtimes import load
from bertship.runtimes.evaluate import evaluate, read_eval_data


def quiet(_):
    pass


@pytest.fixture(scope="module")
def labelled(tiny_artifact, tmp_path_factory):
    """Dev data labelled with the tiny fp32 classifier's own predictions, by label name."""
    model = load(tiny_artifact)
    texts = sentences()
    preds = model.classify(texts)
    path = tmp_path_factory.mktemp("data") / "dev.tsv"
    path.write_text("".join(f"{t}\t{p['label']}\n" for t, p in zip(texts, preds)))
    return path


def test_parse_drop():
    assert fallback.parse_drop("1%") == pytest.approx(0.01)
    assert fallback.parse_drop("0.5") == 0.5
    for bad in ("0%", "150%", "x", "-1"):
        with pytest.raises(Exception, match="max-accuracy-drop"):
            fallback.parse_drop(bad)


def test_eval_accuracy_and_reference(tiny_artifact, labelled, capsys):
    assert main(["eval", str(tiny_artifact), "--data", str(labelled), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] == 1.0 and result["n"] == 40  # labels are the model's own predictions
    assert main(["eval", str(tiny_artifact), "--data", str(labelled), "--backend", "openvino",
                 "--reference", str(tiny_artifact), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["argmax_agreement"] == 1.0 and "cosine_min" not in result  # no cosine of two or three logits


def test_eval_embeddings_against_a_reference(task_artifact, tmp_path, capsys):
    art = task_artifact("sentence-embedding")
    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(sentences()[:12]) + "\n")
    assert main(["eval", str(art), "--data", str(texts), "--backend", "openvino", "--reference", str(art), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 12 and result["cosine_min"] > 0.99999 and "accuracy" not in result
    assert main(["eval", str(art), "--data", str(texts)]) == 2  # unlabelled data and no reference: nothing to measure


@pytest.mark.parametrize("content,needle", [
    ("good film\tneutral\n", "unknown label 'neutral'"),
    ("good film\n", "1 tab-separated columns"),
    ("a\tb\tc\td\n", "4 tab-separated columns"),
    ("", "has no rows"),
])
def test_eval_data_errors(tiny_artifact, tmp_path, content, needle, capsys):
    path = tmp_path / "bad.tsv"
    path.write_text(content)
    assert main(["eval", str(tiny_artifact), "--data", str(path)]) == 2
    assert needle in capsys.readouterr().err


def test_eval_labels_by_index(tiny_artifact, tmp_path):
    path = tmp_path / "idx.tsv"
    path.write_text("one\t0\ntwo\t2\n")
    data = read_eval_data(path, "sequence-classification", {"0": "LABEL_0", "1": "LABEL_1", "2": "LABEL_2"})
    assert data.labels == [0, 2]
    assert 0.0 <= evaluate(load(tiny_artifact), data)["accuracy"] <= 1.0


def test_fallback_search_keeps_groups_until_the_limit_holds(tiny_folder, labelled, tmp_path):
    # Random weights barely suffer from int8, so a near-zero allowed drop forces the full search.
    lines = []
    out = export(tiny_folder("bert", "feature-extraction"), out=tmp_path / "a", recipe="int8-static",
                 backends="onnxruntime", max_accuracy_drop="0.000001%", log=lines.append)
    manifest = json.loads((out / "manifest.json").read_text())
    record = manifest["fallback"]["onnxruntime"]
    assert record["metric"] == "cosine"
    # the sensitivity pass says how far it is and about how long is left (4 groups: a line after each but the last)
    eta = [line for line in lines if "fallback sensitivity:" in line]
    assert [line.split(": ")[1].split(" groups")[0] for line in eta] == ["1/4", "2/4", "3/4"]
    assert all(" s left, then about 3 builds" in line for line in eta)
    # hidden states only: the unused pooler is not in the graph
    assert set(record["sensitivity"]) == {"layer 0 linear", "layer 0 attention scores", "layer 1 linear",
                                          "layer 1 attention scores"}
    gains = [k["gain_alone"] for k in record["kept_float"]]
    assert gains == sorted(gains, reverse=True)
    assert record["final"] >= record["target"]
    assert manifest["backends"]["onnxruntime"]["build"]["kept_float"] == [k["group"] for k in record["kept_float"]]
    assert manifest["export_options"]["max_accuracy_drop"] == "0.000001%"


def test_fallback_without_labels_on_a_classifier_uses_prediction_agreement(tiny_folder, tmp_path):
    out = export(tiny_folder("bert", "sequence-classification"), out=tmp_path / "a", recipe="int8-dynamic",
                 backends="onnxruntime", max_accuracy_drop="1%", log=quiet)
    record = json.loads((out / "manifest.json").read_text())["fallback"]["onnxruntime"]
    assert record["metric"] == "agreement" and record["fp32"] == 1.0 and record["final"] >= 0.99


@pytest.mark.slow
def test_fallback_on_labelled_data_with_openvino(tiny_folder, labelled, tmp_path):
    out = export(tiny_folder("bert", "sequence-classification"), out=tmp_path / "a", recipe="int8-static",
                 backends="openvino", max_accuracy_drop="5%", eval_data=labelled, log=quiet)
    record = json.loads((out / "manifest.json").read_text())["fallback"]["openvino"]
    assert record["metric"] == "accuracy" and record["fp32"] == 1.0
    assert record["final"] >= 0.95


def test_fallback_that_cannot_reach_the_limit(tiny_folder, tmp_path, monkeypatch, capsys):
    real = fallback.groups
    monkeypatch.setattr(fallback, "groups", lambda plain, backend: {"layer 0 linear": real(plain, backend)["layer 0 linear"]})
    code = main(["export", str(tiny_folder("bert", "feature-extraction")), "--recipe", "int8-static",
                 "--backends", "onnxruntime", "--max-accuracy-drop", "0.000001%", "--out", str(tmp_path / "o")])
    assert code == 4
    assert "with every group in float" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("argv,needle", [
    (["--recipe", "fp32", "--max-accuracy-drop", "1%"], "applies to int8-dynamic, int8-static, int8-mixed"),
    (["--recipe", "int8-dynamic", "--eval-data", "x.tsv"], "--eval-data is what --max-accuracy-drop"),
    (["--recipe", "int8-dynamic", "--max-accuracy-drop", "2%", "--ort-graph", "fused"], "plain graph"),
])
def test_fallback_usage_errors(tiny_folder, tmp_path, capsys, argv, needle):
    code = main(["export", str(tiny_folder("bert", "sequence-classification")), "--backends", "onnxruntime",
                 *argv, "--out", str(tmp_path / "o")])
    assert code == 2 and needle in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
