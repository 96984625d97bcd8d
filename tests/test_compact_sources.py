"""Models already compressed other ways load, compact and export: HF pruned_heads checkpoints, dropped layers,
ALBERT's shared layers, low-rank factorized Linears; and the real MiniLM compacts exactly."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bertship.exporter import export, layout
from bertship.exporter.compact import compact
from bertship.exporter.load import default_model_path
from bertship.exporter.prune import apply, magnitude_scores, select
from bertship.exporter.sparsity import analyze, load_model
from bertship.runtimes import load, verify
from tests import tiny
from tests.test_compact import TEXTS, outputs


def test_hf_pruned_checkpoint_loads_exports_and_compacts_in_original_numbering(tmp_path):
    model, tokenizer = tiny.build("bert", "sequence-classification", seed=2)
    model.prune_heads({0: [1], 1: [0, 2]})
    model.save_pretrained(tmp_path / "src")
    tokenizer.save_pretrained(tmp_path / "src")
    out = export(tmp_path / "src", out=tmp_path / "art", backends="onnxruntime", log=lambda _: None)
    verify(out)
    assert json.loads((out / "manifest.json").read_text())["source"]["config"]["pruned_heads"] == {"0": [1], "1": [0, 2]}

    loaded = load_model(tmp_path / "src")
    assert [r["pruned_heads"] for r in analyze(loaded).layers] == [[1], [0, 2]]
    apply(loaded, [[1], []], [[], []])  # current head 1 of layer 0 is original head 2
    compacted, report = compact(loaded)
    assert report.layers[0].heads_removed == [2]
    assert compacted.config.pruned_heads[0] == [1, 2]
    ref, mask = outputs(loaded, tokenizer, "bert")
    got, _ = outputs(compacted, tokenizer, "bert")
    assert np.abs(ref - got)[mask].max() <= 1e-5


def test_layer_dropped_checkpoint_exports(tmp_path):
    import torch

    model, tokenizer = tiny.build("bert", "feature-extraction", layers=3)
    model.encoder.layer = torch.nn.ModuleList([model.encoder.layer[0], model.encoder.layer[2]])
    model.config.num_hidden_layers = 2
    model.save_pretrained(tmp_path / "src")
    tokenizer.save_pretrained(tmp_path / "src")
    out = export(tmp_path / "src", out=tmp_path / "art", backends="onnxruntime", log=lambda _: None)
    verify(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["graph"]["fusions"]["counts"]["Attention"] == 2
    assert len(analyze(load_model(tmp_path / "src")).layers) == 2


def _initializer_bytes(path) -> int:
    import onnx

    return sum(len(t.raw_data) for t in onnx.load(str(path)).graph.initializer)


def test_albert_shared_layer_is_stored_once(tmp_path):
    sizes = {}
    for depth in (2, 6):
        model, tokenizer = tiny.build("albert", "feature-extraction", layers=depth)
        compacted, report = compact(model) if depth == 6 else (model, None)
        out = export(compacted, tokenizer, task="feature-extraction", out=tmp_path / str(depth),
                     backends="onnxruntime", log=lambda _: None)
        sizes[depth] = _initializer_bytes(out / "onnxruntime" / "model.onnx")
    assert sizes[6] == sizes[2]  # three times the layers, not one byte more weights
    assert report.layers[0].uses == 6 and len(report.layers) == 1


def _factorize(linear, rank: int):
    """nn.Sequential(Linear(in, r, bias=False), Linear(r, out)) from a truncated SVD of `linear`."""
    import torch

    u, s, vh = torch.linalg.svd(linear.weight.detach(), full_matrices=False)
    first = torch.nn.Linear(linear.in_features, rank, bias=False)
    second = torch.nn.Linear(rank, linear.out_features)
    with torch.no_grad():
        first.weight.copy_(vh[:rank] * s[:rank, None])
        second.weight.copy_(u[:, :rank])
        second.bias.copy_(linear.bias)
    return torch.nn.Sequential(first, second)


def test_low_rank_factorized_linears_compact_and_export(tmp_path):
    model, tokenizer = tiny.build("bert", "sequence-classification", seed=4)
    for layer in model.bert.encoder.layer:
        layer.attention.self.query = _factorize(layer.attention.self.query, 8)
        layer.attention.output.dense = _factorize(layer.attention.output.dense, 8)
        layer.intermediate.dense = _factorize(layer.intermediate.dense, 16)
    apply(model, [[0, 3], [1]], [list(range(20)), []])
    compacted, report = compact(model)
    assert report.layers[0].shapes["attention.self.query.1"] == [16, 8]  # rows of the second factor sliced
    assert report.layers[0].shapes["attention.output.dense.0"] == [8, 16]  # columns of the first factor sliced
    assert report.layers[0].ffn_after == [44]
    ref, mask = outputs(model.bert, tokenizer, "bert")
    got, _ = outputs(compacted.bert, tokenizer, "bert")
    assert np.abs(ref - got)[mask].max() <= 1e-5
    # ONNX Runtime 1.32 fuses factorized FFNs, but not attention whose Q or output projection is MatMul->MatMul->Add
    # (and EmbedLayerNormalization only fuses in front of a fused Attention): the fusion check says so.
    out = export(compacted, tokenizer, task="sequence-classification", out=tmp_path / "lr",
                 allow_missing_fusions=True, log=lambda _: None)
    fusions = json.loads((out / "manifest.json").read_text())["graph"]["fusions"]
    assert set(fusions["missing"]) == {"Attention", "EmbedLayerNormalization"} and fusions["counts"]["BiasGelu"] == 2
    enc = tokenizer(TEXTS[:3], padding=True, return_tensors="pt")
    import torch

    with torch.no_grad():
        want = model(**enc).logits.numpy()
    np.testing.assert_allclose(load(out).encode(TEXTS[:3]), want, atol=1e-5)


@pytest.mark.slow
def test_real_minilm_compacts_exactly_on_real_text():
    import torch
    from transformers import AutoTokenizer

    model = load_model(default_model_path())
    tokenizer = AutoTokenizer.from_pretrained(default_model_path())
    heads, neurons = magnitude_scores(model)
    apply(model, select(heads, 0.5, "global"), select(neurons, 0.5, "global"))
    compacted, report = compact(model)
    assert 1.9 < report.flop_ratio < 2.1
    assert len({r.heads_after for r in report.layers}) > 1  # global ranking: non-uniform
    enc = tokenizer(TEXTS, padding=True, truncation=True, max_length=128, return_tensors="pt")
    with torch.no_grad():
        ref = model(**enc).last_hidden_state
        got = compacted(**enc).last_hidden_state
    mask = enc["attention_mask"].bool()
    assert (ref - got)[mask].abs().max().item() <= 1e-5
    assert sum(p.numel() for p in compacted.parameters()) < 0.8 * sum(p.numel() for p in model.parameters())
    assert layout.layers(compacted)[0].num_heads() == report.layers[0].heads_after
