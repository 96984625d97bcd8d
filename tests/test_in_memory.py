"""The Python API exports a model already in memory, such as one a user pruned."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bertship.exporter import export
from bertship.runtimes import UsageError, load, verify
from tests import tiny


def test_pruned_model_in_memory_exports_and_matches(tmp_path):
    import torch

    model, tokenizer = tiny.build("bert", "sequence-classification", seed=3)
    model.prune_heads({0: [0, 2], 1: [1]})  # non-uniform heads: 2 left in layer 0, 3 in layer 1
    out = export(model, tokenizer, task="sequence-classification", out=tmp_path / "pruned", log=lambda _: None)
    verify(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["path"] == "<in-memory>"
    assert manifest["source"]["config"]["pruned_heads"] == {"0": [0, 2], "1": [1]}
    assert len(manifest["source"]["weights_sha256"]) == 64
    texts = ["pruned heads still give the same logits", "yes"]
    enc = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        ref = model(**enc).logits.numpy()
    np.testing.assert_allclose(load(out).encode(texts), ref, atol=1e-5)


def test_in_memory_model_needs_task_and_tokenizer(tmp_path):
    model, tokenizer = tiny.build("bert", "feature-extraction")
    with pytest.raises(UsageError, match="tokenizer= and task="):
        export(model, out=tmp_path / "x", log=lambda _: None)
    with pytest.raises(UsageError, match="PreTrainedModel"):
        export(object(), tokenizer, task="feature-extraction", out=tmp_path / "x", log=lambda _: None)
    assert not (tmp_path / "x").exists()
