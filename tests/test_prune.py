"""`bertship prune`: importance by gradients or magnitude, zeroed checkpoints that analyze and compact find, and the
refusals that leave nothing behind."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bertship.cli import main
from bertship.exporter import export, layout
from bertship.exporter.compact import compact
from bertship.exporter.golden import sentences
from bertship.exporter.prune import apply, gradient_scores, parse_ratio, select
from bertship.exporter.sparsity import analyze, load_model
from bertship.runtimes import UsageError, load
from tests import tiny


@pytest.fixture(scope="module")
def labelled(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "train.tsv"
    path.write_text("\n".join(f"{t}\t{i % tiny.NUM_LABELS}" for i, t in enumerate(sentences())) + "\n")
    return path


def test_prune_with_data_then_compact_and_export(tiny_folder, labelled, tmp_path, capsys):
    src = tiny_folder("bert", "sequence-classification")
    out = tmp_path / "pruned"
    assert main(["prune", str(src), "--heads", "50%", "--ffn", "40%", "--data", str(labelled),
                 "--recover-steps", "2", "--out", str(out)]) == 0
    assert "4 head(s)" in capsys.readouterr().out
    record = json.loads((out / "pruning.json").read_text())
    assert record["importance"].startswith("gradient") and len(record["recover_losses"]) == 2
    assert {"model.safetensors", "config.json", "tokenizer.json"} <= {p.name for p in out.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left behind

    report = analyze(load_model(out))
    assert {str(r["index"]): r["dead_heads"] for r in report.layers if r["dead_heads"]} == record["heads_zeroed"]
    assert sum(sum(r["dead_neurons"]) for r in report.layers) == round(0.4 * 128)

    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(out, attn_implementation="eager").eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    compacted, comp = compact(model)
    assert comp.flop_ratio > 1.3
    art = export(compacted, tokenizer, task="sequence-classification", out=tmp_path / "art",
                 backends="onnxruntime", allow_missing_fusions=True, log=lambda _: None)
    texts = sentences()[:4]
    import torch

    with torch.no_grad():
        want = model(**tokenizer(texts, padding=True, return_tensors="pt")).logits.numpy()
    np.testing.assert_allclose(load(art).encode(texts), want, atol=1e-5)


def test_recovery_distils_from_the_unpruned_model(tiny_folder, labelled, tmp_path):
    from bertship.exporter.prune import prune

    src = tiny_folder("bert", "sequence-classification")
    plain = prune(src, tmp_path / "plain", heads="50%", ffn="50%", data=labelled, recover_steps=3, batch_size=8)
    lines: list[str] = []
    kd = prune(src, tmp_path / "kd", heads="50%", ffn="50%", data=labelled, recover_steps=3, batch_size=8,
               distill=True, log=lines.append)
    assert any("distilling from the unpruned model" in x for x in lines)
    assert [x.split(":")[0] for x in lines if "recovery step" in x] == [
        f"[bertship] prune    recovery step {i}/3" for i in (1, 2, 3)]  # progress, one line per tenth
    assert plain["distill"] is None and kd["distill"]["temperature"] == 2.0
    assert kd["heads_zeroed"] == plain["heads_zeroed"] and plain["importance_rows"] == len(sentences())
    # same pruning, batches and start: only the loss differs, so the recorded losses differ from the first step on
    assert len(kd["recover_losses"]) == 3 and kd["recover_losses"][0] != pytest.approx(plain["recover_losses"][0])
    assert json.loads((tmp_path / "kd" / "pruning.json").read_text())["distill"]["weight"] == 0.5
    report = analyze(load_model(tmp_path / "kd"))
    assert {str(r["index"]): r["dead_heads"] for r in report.layers if r["dead_heads"]} == kd["heads_zeroed"]
    few = prune(src, tmp_path / "few", heads="50%", data=labelled, batch_size=8, importance_rows=16)
    assert few["importance_rows"] == 16


def test_magnitude_per_layer_removes_the_same_count_everywhere(tiny_folder, tmp_path):
    out = tmp_path / "p"
    assert main(["prune", str(tiny_folder("distilbert", "feature-extraction")), "--heads", "50%", "--ffn", "25%",
                 "--ranking", "per-layer", "--out", str(out)]) == 0
    report = analyze(load_model(out))
    assert [len(r["dead_heads"]) for r in report.layers] == [2, 2]
    assert [r["dead_neurons"] for r in report.layers] == [[16], [16]]
    assert main(["prune", str(tiny_folder("distilbert", "feature-extraction")), "--heads", "25%",
                 "--out", str(out), "--force"]) == 0  # an earlier prune output may be replaced
    assert json.loads((out / "pruning.json").read_text())["heads"] == 0.25


def test_global_ranking_is_non_uniform_and_normalized_per_layer():
    scores = [[1.0, 2.0, 3.0, 4.0], [10.0, 10.0, 10.0, 0.1]]
    assert select(scores, 0.25, "global") == [[0], [3]]  # raw scores would take both from layer 1
    assert select(scores, 0.5, "per-layer") == [[0, 1], [0, 3]]


def test_gradient_importance_is_zero_for_a_head_that_is_already_dead():
    import torch

    model, tokenizer = tiny.build("bert", "sequence-classification", seed=5)
    apply(model, [[2], []], [[], []])
    enc = tokenizer(sentences()[:8], padding=True, return_tensors="pt")
    batch = {**enc, "labels": torch.tensor([i % tiny.NUM_LABELS for i in range(8)])}
    heads, neurons = gradient_scores(model, [batch])
    assert heads[0][2] == 0.0 and min(heads[0][:2] + heads[0][3:]) > 0
    assert len(neurons[0]) == 64 and max(neurons[1]) > 0
    assert all(p.requires_grad for p in model.parameters())


@pytest.mark.parametrize("text, value", [("50%", 0.5), ("0", 0.0), ("100%", 1.0), (0.3, 0.3)])
def test_ratio_parsing(text, value):
    assert parse_ratio(text, "--heads") == pytest.approx(value)


@pytest.mark.parametrize("argv, code, message", [
    (["--heads", "150%"], 2, "outside 0–100 %"),
    (["--ffn=-5%"], 2, "outside 0–100 %"),
    (["--heads", "half"], 2, "not a percentage"),
    (["--heads", "100%"], 2, "removes every head of every layer"),
    (["--recover-steps", "3"], 2, "--data"),
    (["--distill"], 2, "--recover-steps"),
    (["--lr", "0"], 2, "--lr must be positive"),
    (["--ranking", "random"], 2, "unknown ranking"),
])
def test_bad_arguments_write_nothing(tiny_folder, tmp_path, capsys, argv, code, message):
    out = tmp_path / "x"
    assert main(["prune", str(tiny_folder("bert", "sequence-classification")), "--out", str(out), *argv]) == code
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and " — " in err
    assert list(tmp_path.iterdir()) == []


def test_heads_of_a_family_that_cannot_drop_them_are_refused(tiny_folder, tmp_path, capsys):
    """MPNet's per-head position bias is shared by all layers: pruning heads could never be compacted, so --heads
    exits 2 naming why and what to do; --ffn alone works."""
    out = tmp_path / "x"
    folder = str(tiny_folder("mpnet", "sequence-classification"))
    assert main(["prune", folder, "--out", str(out), "--heads", "25%"]) == 2
    err = capsys.readouterr().err.strip()
    assert "position bias" in err and "--ffn" in err and len(err.splitlines()) == 1
    assert not out.exists()
    assert main(["prune", folder, "--out", str(out), "--ffn", "25%"]) == 0


def test_data_needs_a_trained_classification_head(tiny_folder, labelled, tmp_path, capsys):
    assert main(["prune", str(tiny_folder("bert", "feature-extraction")), "--heads", "50%", "--data", str(labelled),
                 "--out", str(tmp_path / "x")]) == 3
    assert "sequence-classification head" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_existing_out_is_refused_without_force(tiny_folder, tmp_path, capsys):
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    src = str(tiny_folder("bert", "sequence-classification"))
    assert main(["prune", src, "--heads", "25%", "--out", str(tmp_path / "taken")]) == 2
    assert main(["prune", src, "--heads", "25%", "--out", str(tmp_path / "taken"), "--force"]) == 2
    assert "did not write" in capsys.readouterr().err
    assert [p.name for p in (tmp_path / "taken").iterdir()] == ["keep.txt"]


def test_a_mask_removing_every_head_is_refused_in_the_api():
    model, _ = tiny.build("roberta", "feature-extraction")
    with pytest.raises(UsageError, match="every head of every layer"):
        apply(model, [[0, 1, 2, 3], [3, 2, 1, 0]], [[], []])
    assert all(layout.parts(v.get(v.layout.o))[0].weight.abs().sum() > 0 for v in layout.layers(model))
