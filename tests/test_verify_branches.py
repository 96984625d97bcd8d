"""`verify` on artifacts changed behind the checksums' back: the checksums were recomputed, so only the re-run of the
tokenizer and of each backend on the golden inputs can tell."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from bertship.cli import main
from bertship.exporter import package
from bertship.runtimes import artifact, verify
from bertship.runtimes.errors import ArtifactError, FidelityError


@pytest.fixture
def art(task_artifact, tmp_path):
    dst = tmp_path / "art"
    shutil.copytree(task_artifact("sentence-embedding"), dst)
    return dst


def test_a_changed_tokenizer_with_new_checksums_is_caught(art, capsys):
    spec = json.loads((art / "tokenizer.json").read_text())
    vocab = spec["model"]["vocab"]
    a, b = sorted((k for k in vocab if k.isalpha() and len(k) > 2), key=vocab.get)[:2]
    vocab[a], vocab[b] = vocab[b], vocab[a]  # two words trade ids: every text holding one of them changes
    (art / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(ArtifactError):
        verify(art)  # first, the checksum gives it away
    package.rewrite(art, artifact.read_manifest(art))
    with pytest.raises(FidelityError, match="tokenizer: tokenizer.json gives other input_ids"):
        verify(art)
    assert main(["verify", str(art)]) == 4 and "tokenizer" in capsys.readouterr().err


def test_a_changed_model_with_new_checksums_is_caught(art, capsys):
    import onnx
    from onnx import numpy_helper

    path = art / "onnxruntime" / "model.onnx"
    model = onnx.load(str(path))
    weight = max(model.graph.initializer, key=lambda i: np.prod(i.dims))
    weight.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(weight) * 1.5, weight.name))
    onnx.save(model, str(path))
    package.rewrite(art, artifact.read_manifest(art))
    with pytest.raises(FidelityError) as info:
        verify(art)
    assert all(f.startswith("onnxruntime:") for f in info.value.failures)  # openvino's files were not touched
    verify(art, backends=["openvino"])
    assert main(["verify", str(art)]) == 4
