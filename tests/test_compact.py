"""Compaction: non-uniform dead heads and FFN neurons removed exactly, in every family, and the result exports."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bertship.exporter import export, families, graph, layout
from bertship.exporter.compact import compact
from bertship.exporter.golden import sentences
from bertship.exporter.prune import apply
from bertship.exporter.sparsity import analyze
from bertship.runtimes import SourceError, verify
from tests import tiny

TEXTS = sentences()[:16]


def zero_pattern(model, layers: int = 3):
    """Layer 0 keeps 1 head and 2/3 of its neurons, layer 1 keeps all but one head and loses 10 neurons, layer 2
    keeps no head and no neuron (dead attention and dead FFN)."""
    views = layout.layers(model)
    heads, neurons = [], []
    for view in views[:layers]:
        h = view.num_heads()
        width = sum(layout.parts(view.get(f[1]))[0].in_features for f in view.ffn_paths())
        pattern = [(list(range(h - 1)), list(range(0, width, 3))), ([h - 1], list(range(10))),
                   (list(range(h)), list(range(width)))][view.index]
        heads.append(pattern[0])
        neurons.append(pattern[1])
    apply(model, heads, neurons)
    return heads, neurons


def outputs(model, tokenizer, family: str):
    import torch

    enc = tokenizer(TEXTS, padding=True, truncation=True, max_length=tiny.MAX_POSITIONS, return_tensors="pt")
    feeds = {k: enc[k] for k in families.FAMILIES[family].inputs}
    with torch.no_grad():
        return model(**feeds)[0].numpy(), enc["attention_mask"].numpy().astype(bool)


@pytest.mark.parametrize("family", list(families.FAMILIES))
def test_compaction_is_exact_and_matches_the_analysis(family):
    import torch

    model, tokenizer = tiny.build(family, "feature-extraction", seed=1, layers=3)
    zero_pattern(model)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    predicted = analyze(model)
    compacted, report = compact(model)
    ref, mask = outputs(model, tokenizer, family)
    got, _ = outputs(compacted, tokenizer, family)
    assert np.abs(ref - got)[mask].max() <= 1e-5
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in state.items())  # compact is pure
    assert report.flops_before - report.flops_after == predicted.totals["flops_removable"]
    assert report.flop_ratio > 1.5
    json.dumps(report.as_dict())
    first = report.layers[0]
    if layout.LAYOUTS[family].heads_fixed:  # MPNet: partly dead heads stay (shared per-head position bias)
        assert first.heads_after == first.heads_before and "kept" in first.attention
        assert report.layers[2].attention.startswith("replaced")  # a wholly dead attention is still removed
        return
    assert first.heads_after == 1 and first.heads_before > 1
    if family != "albert":  # ALBERT has one shared layer
        assert report.layers[1].heads_after == first.heads_before - 1


def test_non_uniform_bert_shapes_and_replaced_sublayers():
    model, _ = tiny.build("bert", "feature-extraction", layers=3)
    zero_pattern(model)
    compacted, report = compact(model)
    l0, l1, l2 = report.layers
    assert (l0.heads_after, l1.heads_after, l2.heads_after) == (1, 3, 0)
    assert l0.shapes["attention.self.query"] == [8, 32] and l1.shapes["attention.output.dense"] == [32, 24]
    assert (l0.ffn_after, l1.ffn_after, l2.ffn_after) == ([42], [54], [])
    assert l2.attention.startswith("replaced by attention.output.LayerNorm(x + attention.output.dense.bias)")
    assert l2.ffn.startswith("replaced") and "attention.self.query" not in l2.shapes
    assert report.removed_sublayers() == {"attention": 1, "ffn": 1}
    assert compacted.config.pruned_heads == {0: [0, 1, 2], 1: [3]}  # the fully removed layer is not a pruned_heads entry
    assert model.config.pruned_heads == {}


def test_all_heads_of_all_layers_dead_is_refused():
    model, _ = tiny.build("bert", "feature-extraction")
    apply_all = [[0, 1, 2, 3], [0, 1, 2, 3]]
    with pytest.raises(Exception, match="every head of every layer"):
        apply(model, apply_all, [[], []])
    for view in layout.layers(model):  # zeroed by hand: compact refuses too
        layout.parts(view.get(view.layout.o))[0].weight.data.zero_()
    with pytest.raises(SourceError, match="no longer attends"):
        compact(model)


@pytest.mark.parametrize("task", list(tiny.HEADS))
def test_compacted_tiny_bert_exports_every_task(task, tmp_path):
    model, tokenizer = tiny.build("bert", "feature-extraction" if task == "sentence-embedding" else task, layers=3)
    zero_pattern(model)
    compacted, report = compact(model)
    # the dead attention and FFN of layer 2 have no fused ops; graph.optimize(removed=…) expects that (checked below)
    out = export(compacted, tokenizer, task=task, out=tmp_path / "art", backends="onnxruntime",
                 allow_missing_fusions=True, log=lambda _: None)
    fidelity = verify(out)["onnxruntime"]
    assert max(o["max_abs_diff"] for o in fidelity["outputs"]) <= 1e-4
    fused = graph.optimize(out / "onnxruntime" / "model.onnx", families.FAMILIES["bert"], 3,
                           removed=report.removed_sublayers())
    assert fused.missing == {} and fused.counts["Attention"] == 2  # layers with 1 and 3 heads both fused


@pytest.mark.slow
@pytest.mark.parametrize("family", ["electra", "mpnet", "deberta-v2", "modernbert"])
def test_compacted_newer_families_export_and_verify(family, tmp_path):
    """Sliced heads (DeBERTa's and ModernBERT's without prune_heads, a fused Wqkv), GLU pairs and replaced sublayers
    export from memory with non-uniform shapes, and both runtimes reproduce the uncompacted model."""
    model, tokenizer = tiny.build(family, "sequence-classification", seed=2, layers=3)
    zero_pattern(model)
    out = export(model, tokenizer, task="sequence-classification", out=tmp_path / "c", compact=True,
                 log=lambda _: None)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["compaction"]["flop_ratio"] > 1.5
    assert manifest["graph"]["fusions"]["missing"] == {}
    for backend, report in verify(out).items():
        assert max(o["max_abs_diff"] for o in report["outputs"]) <= 1e-4, backend


def test_glu_neuron_is_its_value_row_and_gate_row_together():
    """ModernBERT's Wi computes [value; gate]: a neuron dies by a zero gate row, a zero value row (GELU(0) = 0) or a
    zero Wo column, and compaction removes its two Wi rows together."""
    import torch

    model, tokenizer = tiny.build("modernbert", "feature-extraction", seed=3)
    view = layout.layers(model)[1]
    wi, wo = view.get("mlp.Wi"), view.get("mlp.Wo")
    width = wo.in_features
    with torch.no_grad():
        wi.weight[width + 3] = 0  # gate of neuron 3
        wi.weight[7] = 0  # value of neuron 7
        wo.weight[:, 11] = 0  # output of neuron 11
        wi.weight[20] = 0  # value of neuron 20
        wi.weight[width + 21] = 0  # gate of neuron 21
    assert analyze(model).layers[1]["dead_neuron_indices"] == [[3, 7, 11, 20, 21]]
    compacted, report = compact(model)
    cview = layout.layers(compacted)[1]
    assert cview.get("mlp.Wi").out_features == 2 * (width - 5) and cview.get("mlp.Wo").in_features == width - 5
    ref, mask = outputs(model, tokenizer, "modernbert")
    got, _ = outputs(compacted, tokenizer, "modernbert")
    assert np.abs(ref - got)[mask].max() <= 1e-5


def test_non_uniform_heads_fuse_attention_in_every_layer(tmp_path):
    model, tokenizer = tiny.build("bert", "sequence-classification")
    zero_pattern(model, layers=2)  # 1 head left in layer 0, 3 in layer 1
    compacted, _ = compact(model)
    out = export(compacted, tokenizer, task="sequence-classification", out=tmp_path / "a", log=lambda _: None)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["graph"]["fusions"]["counts"]["Attention"] == 2
    assert manifest["graph"]["fusions"]["missing"] == {}
    assert set(manifest["fidelity"]["backends"]) == {"onnxruntime", "openvino"}


@pytest.mark.parametrize("recipe", ["int8-dynamic", "int8-static"])
def test_int8_recipes_on_a_compacted_model(recipe, tmp_path):
    model, tokenizer = tiny.build("bert", "sequence-classification", layers=3)
    zero_pattern(model)
    compacted, _ = compact(model)
    out = export(compacted, tokenizer, task="sequence-classification", out=tmp_path / "q", recipe=recipe,
                 backends="onnxruntime", allow_missing_fusions=True, log=lambda _: None)
    report = verify(out)["onnxruntime"]
    assert min(o["cosine_min"] for o in report["outputs"]) > 0.99


@pytest.mark.slow
def test_export_compact_flag_end_to_end(tmp_path, capsys):
    """`bertship export --compact` on a zeroed checkpoint: smaller graph, gate against the uncompacted model, recorded."""
    import json

    from bertship.cli import main
    from bertship.runtimes import verify

    model, tok = tiny.build("bert", "sequence-classification", layers=3)
    zero_pattern(model)
    model.save_pretrained(tmp_path / "zeroed")
    tok.save_pretrained(tmp_path / "zeroed")
    assert main(["export", str(tmp_path / "zeroed"), "--out", str(tmp_path / "dense"), "--backends", "onnxruntime"]) == 0
    assert main(["export", str(tmp_path / "zeroed"), "--compact", "--out", str(tmp_path / "small")]) == 0, \
        capsys.readouterr().err
    manifest = json.loads((tmp_path / "small" / "manifest.json").read_text())
    assert manifest["compaction"]["flop_ratio"] > 1.2
    assert manifest["compaction"]["removed_sublayers"]["attention"] >= 1
    assert manifest["graph"]["fusions"]["missing"] == {}
    verify(tmp_path / "small")
    size = lambda d: (d / "onnxruntime" / "model.onnx").stat().st_size  # noqa: E731
    assert size(tmp_path / "small") < size(tmp_path / "dense")
