"""`bertship analyze`: per-layer sparsity of every family, its CLI outputs, bad sources, and the zip container that
is what unstructured zeros deliver here."""

from __future__ import annotations

import json

import pytest

from bertship.cli import main
from bertship.exporter import families, layout
from bertship.exporter.container import pack, unpack
from bertship.exporter.sparsity import analyze, matrix_stats
from bertship.runtimes import ArtifactError, verify
from tests import tiny
from tests.test_compact import zero_pattern


@pytest.mark.parametrize("family", list(families.FAMILIES))
def test_analysis_finds_dead_heads_and_neurons(family):
    import torch

    model, _ = tiny.build(family, "feature-extraction", seed=3, layers=3)
    heads, neurons = zero_pattern(model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    report = analyze(model, seq_len=64)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert [r["dead_heads"] for r in report.layers] == heads
    assert [sum(r["dead_neurons"]) for r in report.layers] == [len(n) for n in neurons]
    last = report.layers[-1]
    if family != "albert":  # one shared layer: the fully dead pattern of layer 2 does not apply
        assert last["attention_dead"] and last["ffn_dead"]
        assert last["sparsity"] == 1.0 if family != "mobilebert" else last["sparsity"] < 1.0
    assert 0 < report.totals["flops_removable"] < report.totals["flops"]
    assert report.totals["flops_on_zeros"] > 0
    json.dumps(report.as_dict())
    assert ("MobileBERT" in " ".join(report.notes)) == (family == "mobilebert")


def test_albert_counts_every_use_of_its_shared_layer():
    model, _ = tiny.build("albert", "feature-extraction", layers=4)
    one = analyze(tiny.build("albert", "feature-extraction", layers=1)[0])
    four = analyze(model)
    assert len(four.layers) == 1 and four.layers[0]["uses"] == 4
    assert four.totals["flops"] == 4 * one.totals["flops"] and four.totals["params"] == one.totals["params"]


def test_matrix_statistics_blocks_and_2_of_4():
    import torch

    w = torch.ones(8, 8)
    w[:, 0::4] = 0
    w[:, 1::4] = 0  # every group of 4 has 2 nonzeros: 2:4
    assert matrix_stats(w)["n_m"] == 1.0 and matrix_stats(w)["sparsity"] == 0.5
    assert matrix_stats(w)["zero_blocks"] == 0.0
    w[:4, :4] = 0
    stats = matrix_stats(w)
    assert stats["zero_blocks"] == 0.25 and stats["zeros"] == 32 + 8


def test_analyze_cli_writes_table_json_and_plot(tiny_folder, tmp_path, capsys):
    folder = tiny_folder("roberta", "feature-extraction")
    assert main(["analyze", str(folder), "--seq-len", "32", "--json", str(tmp_path / "r.json"),
                 "--plot", str(tmp_path / "r.png")]) == 0
    out = capsys.readouterr().out
    assert "layer uses heads" in out and "onnxruntime:" in out and "unstructured zeros give no speed" in out
    data = json.loads((tmp_path / "r.json").read_text())
    assert data["seq_len"] == 32 and len(data["layers"]) == 2 and data["family"] == "roberta"
    assert (tmp_path / "r.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("change, message", [
    ({"pruned_heads": {"5": [0]}}, "names layer '5', but the model has 2"),
    ({"pruned_heads": {"0": [9]}}, "names head 9, but layers have 4"),
    ({"pruned_heads": {"0": [0, 1, 2, 3]}}, "removes every head of layer 0"),
    ({"pruned_heads": {"0": [1]}}, "do not fit config.json (size mismatch"),  # weights still have every head
    ({"hidden_size": 48}, "do not fit config.json (size mismatch"),
])
def test_sources_that_do_not_match_their_config_are_refused(tiny_folder, tmp_path, capsys, change, message):
    import shutil

    folder = shutil.copytree(tiny_folder("bert", "feature-extraction"), tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, **change}))
    assert main(["analyze", str(folder)]) == 3
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1 and " — " in err
    assert main(["export", str(folder), "--out", str(tmp_path / "art")]) == 3
    assert message in capsys.readouterr().err and not (tmp_path / "art").exists()


def test_analyze_refuses_bad_usage(tmp_path, capsys):
    assert main(["analyze", str(tmp_path / "missing")]) == 3
    assert main(["analyze", str(tmp_path), "--seq-len", "0"]) == 2
    assert "--seq-len" in capsys.readouterr().err


def test_unsupported_projection_type_is_named():
    import torch

    model, _ = tiny.build("bert", "feature-extraction")
    model.encoder.layer[0].attention.self.value = torch.nn.Identity()
    with pytest.raises(Exception, match="attention.self.value is a Identity"):
        analyze(model)


def test_container_round_trips_and_is_smaller(tiny_artifact, tmp_path):
    record = pack(tiny_artifact, tmp_path / "a.zip")
    assert record["container_bytes"] < record["artifact_bytes"]
    assert set(record["files"]) >= {"manifest.json", "onnxruntime/model.onnx"}
    verify(unpack(tmp_path / "a.zip", tmp_path / "back"))
    with pytest.raises(ArtifactError, match="not a bertship artifact"):
        pack(tmp_path, tmp_path / "b.zip")
    assert layout.LAYOUTS["mobilebert"].attn_dead is None
