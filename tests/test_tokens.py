"""Token elimination: a retention schedule searched on held-out text (and recovered), exported as TopK + Gather on
both backends, for a classifier and for sentence embeddings; each text keeps its own share of tokens whatever its
batch-mates."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from bertship.cli import main
from bertship.runtimes import load
from tests.conftest import built_once

pytestmark = pytest.mark.xdist_group("exits")

SCHEDULE = [0.7, 0.5, 0.35]


@pytest.fixture(scope="module")
def token_folder(fine_tuned, tmp_path_factory):
    """The fine-tuned tiny classifier with a fixed schedule judged on dev.tsv (a loose limit: these tests check the
    mechanism), and its fp32 export on both backends."""
    from bertship.exporter import export
    from bertship.exporter.tokens import search_tokens

    def build(root: Path) -> None:
        search_tokens(fine_tuned / "model", root / "tokens", eval_data=fine_tuned / "dev.tsv",
                      schedule=",".join(map(str, SCHEDULE)), max_accuracy_drop="20%")
        export(root / "tokens", out=root / "art", log=lambda _: None)

    root = built_once(tmp_path_factory, "token-folder", build)
    return root / "tokens", root / "art", fine_tuned


def _texts(data: Path, n: int) -> list[str]:
    return [line.split("\t")[0] for line in (data / "test.tsv").read_text().splitlines()][:n]


def _reference(folder: Path, texts: list[str], eliminate: bool) -> np.ndarray:
    from bertship.exporter.load import load_folder
    from bertship.exporter.tokens import outputs

    source = load_folder(folder, "sequence-classification")
    return outputs(source, source.tokens if eliminate else None, texts, None, source.max_length)


def test_the_search_keeps_the_cheapest_schedule_within_the_limit(fine_tuned, tmp_path):
    from bertship.exporter.tokens import RATES, cost, geometric

    code = main(["tokens", str(fine_tuned / "model"), "--eval-data", str(fine_tuned / "dev.tsv"), "--out",
                 str(tmp_path / "t"), "--max-accuracy-drop", "3%"])
    assert code == 0
    spec = json.loads((tmp_path / "t" / "tokens.json").read_text())
    tried = spec["search"]
    assert [t["schedule"] for t in tried] == [geometric(r, 4) for r in RATES[:len(tried)]]  # cheapest first
    assert tried[-1]["within"] and not any(t["within"] for t in tried[:-1])
    assert spec["schedule"] == tried[-1]["schedule"] and spec["result"]["cost"] == pytest.approx(cost(spec["schedule"]), abs=1e-4)
    full = spec["judged_on"]["full_model"]["accuracy"]
    assert spec["result"]["accuracy"] >= full * 0.97 - 1e-9
    assert spec["kept_at"]["16"][0] == 16 and spec["kept_at"]["16"][-1] < 16


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_the_runtime_eliminates_tokens_as_pytorch_does(token_folder, backend):
    import onnx

    folder, art, data = token_folder
    texts = _texts(data, 64)
    model = load(art, backend=backend)
    got = model.encode(texts)
    eliminated, full = _reference(folder, texts, True), _reference(folder, texts, False)
    np.testing.assert_allclose(got, eliminated, atol=2e-4)
    # the tokens really go: the outputs are the eliminating model's, not the full model's
    assert np.abs(got - full).max() > 1e-2
    graph = onnx.load(str(art / "onnxruntime" / "model.onnx"))
    assert sum(n.op_type == "TopK" for n in graph.graph.node) == len(SCHEDULE)
    manifest = json.loads((art / "manifest.json").read_text())
    assert manifest["tokens"]["schedule"] == SCHEDULE
    assert "token elimination" in manifest["graph"]["fusions"]["note"]


def test_a_text_keeps_its_own_tokens_whatever_its_batch_mates(token_folder):
    _, art, data = token_folder
    texts = _texts(data, 40)
    model = load(art, backend="onnxruntime")
    batched = model.encode(texts, batch_size=40)  # padded to the longest of all 40
    alone = np.concatenate([model.encode([t]) for t in texts])
    np.testing.assert_allclose(batched, alone, atol=1e-4)


def test_sentence_embeddings_eliminate_tokens_and_pool_the_kept_ones(tiny_folder, tmp_path):
    from bertship.exporter import export
    from bertship.exporter.golden import sentences

    texts = tmp_path / "texts.txt"
    texts.write_text("\n".join(sentences()[:30]) + "\n")
    folder = tiny_folder("bert", "feature-extraction")
    code = main(["tokens", str(folder), "--task", "sentence-embedding", "--eval-data", str(texts), "--schedule",
                 "0.6", "--min-cosine", "0.1", "--out", str(tmp_path / "t")])
    assert code == 0
    spec = json.loads((tmp_path / "t" / "tokens.json").read_text())
    assert spec["task"] == "sentence-embedding" and spec["result"]["cosine_min"] < 1.0
    export(tmp_path / "t", out=tmp_path / "art", task="sentence-embedding", pooling="mean", log=lambda _: None)
    model = load(tmp_path / "art", backend="openvino")
    vectors = model.embed(sentences()[:8])
    assert vectors.shape == (8, 32) and np.isfinite(vectors).all()
    assert main(["verify", str(tmp_path / "art")]) == 0


def test_recovery_distils_and_saves_the_weights(fine_tuned, tmp_path):
    code = main(["tokens", str(fine_tuned / "model"), "--eval-data", str(fine_tuned / "dev.tsv"), "--out",
                 str(tmp_path / "r"), "--schedule", "0.5,0.3,0.2", "--max-accuracy-drop", "50%", "--data",
                 str(fine_tuned / "train.tsv"), "--recover-steps", "20"])
    assert code == 0
    spec = json.loads((tmp_path / "r" / "tokens.json").read_text())
    assert spec["recovery"]["steps"] == 20 and len(spec["recovery"]["losses"]) == 2
    before = (fine_tuned / "model" / "model.safetensors").read_bytes()
    assert (tmp_path / "r" / "model.safetensors").read_bytes() != before  # recovered weights, not the originals


def test_bad_input_is_refused(fine_tuned, tiny_folder, tmp_path, capsys):
    model, dev = str(fine_tuned / "model"), str(fine_tuned / "dev.tsv")
    cases = [
        ([model, "--schedule", "0.5,0.6,0.4"], 2, "must not grow"),
        ([model, "--schedule", "0.5"], 2, "3 numbers for this 4-layer model"),
        ([model, "--schedule", "0,0,0"], 2, "(0, 1]"),
        ([model, "--recover-steps", "5"], 2, "pass --data"),
        ([model, "--min-cosine", "0.9"], 2, "use --max-accuracy-drop"),
        ([str(tiny_folder("distilbert", "sequence-classification"))], 2, "BERT-style encoders"),
        ([str(tiny_folder("bert", "feature-extraction")), "--task", "feature-extraction"], 2,
         "--task sentence-embedding"),
    ]
    for args, want, message in cases:
        code = main(["tokens", *args, "--eval-data", dev, "--out", str(tmp_path / "t")])
        err = capsys.readouterr().err
        assert code == want and message in err, err
        assert not (tmp_path / "t").exists()
