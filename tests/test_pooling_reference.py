"""Sentence embeddings against an independent computation: the encoder's hidden states from transformers, pooled and
normalized here in numpy, for every pooling and normalization mode (the gate's reference comes from bertship's own
wrapper, so it cannot catch a wrong pooling by itself)."""

from __future__ import annotations

import numpy as np
import pytest

from bertship.exporter import export
from bertship.runtimes import load

TEXTS = ["Yes.", "The cat sat on the mat while the dog slept.", "Why is the sky blue?", "ok 👍",
         "A much longer sentence that is padded less than the others in its batch, with commas, and more words."]


def independent(folder, pooling: str, normalize: bool) -> np.ndarray:
    import torch
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    enc = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state.numpy().astype(np.float64)
    mask = enc["attention_mask"].numpy()[..., None].astype(np.float64)
    if pooling == "mean":
        vec = (hidden * mask).sum(1) / mask.sum(1)
    elif pooling == "cls":
        vec = hidden[:, 0]
    else:
        vec = np.where(mask > 0, hidden, -1e9).max(1)
    if normalize:
        vec = vec / np.linalg.norm(vec, axis=1, keepdims=True)
    return vec


@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("pooling", ["mean", "cls", "max"])
def test_sentence_embedding_matches_an_independent_pooling(tiny_folder, tmp_path, pooling, normalize):
    folder = tiny_folder("bert", "feature-extraction")
    out = export(folder, out=tmp_path / "a", task="sentence-embedding", pooling=pooling, normalize=normalize,
                 backends="onnxruntime", log=lambda _: None)
    manifest = load(out).manifest
    assert manifest["task"]["pooling"] == pooling and manifest["task"]["normalize"] is normalize
    got = load(out).embed(TEXTS)
    expected = independent(folder, pooling, normalize)
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-4)
    if normalize:
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    else:
        assert not np.allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-3)
