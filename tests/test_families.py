"""Every family × every task exports to both backends, passes the gate, and re-verifies without torch."""

from __future__ import annotations

import numpy as np
import pytest

from bertship.exporter import export
from bertship.exporter.families import FAMILIES as FAMILY_TABLE
from bertship.exporter.tasks import TASKS
from bertship.runtimes import load, verify
from tests import tiny

FAMILIES = ("bert", "distilbert", "roberta", "albert", "mobilebert", "electra", "mpnet", "deberta-v2", "modernbert")
# families whose graphs take no token_type_ids (the tiny DeBERTa is v3-shaped: type_vocab_size 0)
NO_TYPES = ("distilbert", "roberta", "mpnet", "deberta-v2", "modernbert")


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("family", FAMILIES)
def test_family_task_exports_and_verifies(family, task, tiny_folder, tmp_path):
    out = export(tiny_folder(family, task), out=tmp_path / "art", task=task, log=lambda _: None)
    report = verify(out)
    assert set(report) == {"onnxruntime", "openvino"}
    assert report["openvino"]["precision"] == "f32"  # an fp32 artifact must not run in bf16 on this CPU
    import json

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["family"] == family
    assert manifest["task"]["name"] == task
    expected_inputs = ["input_ids", "attention_mask"] + ([] if family in NO_TYPES else ["token_type_ids"])
    assert [i["name"] for i in manifest["signature"]["inputs"]] == expected_inputs
    for backend in report:
        for check in report[backend]["outputs"]:
            assert check["max_abs_diff"] < 1e-4, (backend, check)


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_encode_matches_pytorch_on_unseen_text(family, tiny_folder, tmp_path):
    """Runtime text → output equals the PyTorch model on texts that were not in the golden set (dynamic shapes)."""
    import torch
    import transformers

    folder = tiny_folder(family, "token-classification")
    out = export(folder, out=tmp_path / "art", log=lambda _: None)
    texts = ["a b", "completely different words appear here, with punctuation!", "x" * 300]
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModelForTokenClassification.from_pretrained(folder).eval()
    enc = tok(texts, padding=True, truncation=True, max_length=tiny.MAX_POSITIONS, return_tensors="pt")
    enc = {k: enc[k] for k in FAMILY_TABLE[family].inputs}
    with torch.no_grad():
        ref = model(**enc).logits.numpy()
    mask = enc["attention_mask"].numpy().astype(bool)
    for backend in ("onnxruntime", "openvino"):
        got = load(out, backend=backend).encode(texts, batch_size=2)
        assert got.shape == ref.shape
        np.testing.assert_allclose(got[mask], ref[mask], atol=1e-4)


UNSEEN = ["a b", "Completely DIFFERENT words appear here, with punctuation!", "naïve café — déjà vu? 🙂",
          "x" * 300, " ".join(["long"] * 120), "Why?"]


@pytest.mark.parametrize("family", FAMILIES)
def test_bundled_tokenizer_gives_transformers_ids_on_unseen_texts_and_pairs(family, tmp_path):
    """The tokenizer.json an artifact bundles (WordPiece, Unigram, byte-level BPE, each with its family's templates)
    gives the ids, types and masks of the transformers tokenizer the model was trained with: single texts and pairs,
    accents, emoji, and inputs truncated at max length (longest-first for pairs)."""
    from bertship.runtimes.tokenizer import TextEncoder

    model, tok = tiny.build(family, "question-answering")
    tok.backend_tokenizer.save(str(tmp_path / "tokenizer.json"))
    inputs = FAMILY_TABLE[family].for_config(model.config).inputs
    encoder = TextEncoder(tmp_path / "tokenizer.json", {"max_length": tiny.MAX_POSITIONS, "pad_id": tok.pad_token_id,
                                                         "input_names": inputs})
    for pairs in (None, UNSEEN[::-1]):
        ref = tok(UNSEEN, pairs, padding=True, truncation=True, max_length=tiny.MAX_POSITIONS,
                  return_token_type_ids=True, return_tensors="np")
        got = encoder(UNSEEN, pairs)
        assert list(got) == list(inputs)
        for name in inputs:
            np.testing.assert_array_equal(got[name], ref[name], err_msg=f"{family} {name} pairs={pairs is not None}")
    assert ("token_type_ids" in inputs) == (family not in NO_TYPES)


@pytest.mark.slow
def test_modernbert_is_exact_past_its_local_window(tiny_folder, tmp_path):
    """ModernBERT's local layers see a 16-token window here (max length 64): the golden set holds texts past it, and
    both runtimes match PyTorch on one padded batch mixing lengths below, at and past the window up to max length."""
    import torch
    import transformers

    folder = tiny_folder("modernbert", "feature-extraction")
    out = export(folder, out=tmp_path / "art", log=lambda _: None)
    window = transformers.AutoConfig.from_pretrained(folder).local_attention
    with np.load(out / "golden.npz", allow_pickle=False) as golden_file:
        longest = max(int(golden_file[k].sum(1).max()) for k in golden_file.files if k.endswith("attention_mask"))
    assert longest == tiny.MAX_POSITIONS > 2 * window
    tok = transformers.AutoTokenizer.from_pretrained(folder)
    model = transformers.AutoModel.from_pretrained(folder, attn_implementation="eager").eval()
    prose = "The quarterly results were better than anyone expected, and the shares rose sharply. " * 8
    texts = [prose[:n] for n in (4, 30, 60, 120, 600)]
    enc = tok(texts, padding=True, truncation=True, max_length=tiny.MAX_POSITIONS, return_tensors="pt")
    lengths = enc["attention_mask"].sum(1).tolist()
    assert min(lengths) < window // 2 < window < max(lengths) == tiny.MAX_POSITIONS
    with torch.no_grad():
        ref = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state.numpy()
    mask = enc["attention_mask"].numpy().astype(bool)
    for backend in ("onnxruntime", "openvino"):
        got = load(out, backend=backend).encode(texts, batch_size=len(texts))
        np.testing.assert_allclose(got[mask], ref[mask], atol=1e-4, err_msg=backend)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["modernbert", "deberta-v2"])
def test_deploy_serves_the_family_inputs_unchanged(family, task_artifact, tmp_path):
    """deploy works unchanged for families without token_type_ids: the Triton encoder takes exactly the artifact's
    inputs, and the ensemble's tokenizer model produces them (pairs for question answering)."""
    from bertship.runtimes import artifact, deploy
    from tests.test_deploy import mc, parse

    if mc is None:
        pytest.skip("parsing config.pbtxt needs Triton's schema (tritonclient[grpc], in the [deploy] extra)")
    art = task_artifact("question-answering", family)
    names = [i["name"] for i in artifact.read_manifest(art)["signature"]["inputs"]]
    assert names == ["input_ids", "attention_mask"]
    for backend in ("onnxruntime", "openvino"):
        deploy.triton(art, tmp_path / backend, backend=backend, name="enc")
        assert [i.name for i in parse(tmp_path / backend / "enc").input] == names
        tokenizer_outputs = [o.name for o in parse(tmp_path / backend / "enc_tokenizer").output]
        assert tokenizer_outputs == names


@pytest.mark.parametrize("family", FAMILIES)
def test_batched_sweep_references_equal_one_pass_per_length(family, tiny_folder, monkeypatch):
    """The length sweep's PyTorch references run in padded batches of near lengths: each length's vector must be the
    one PyTorch gives that input alone (padding masked out of every real token), for every family's attention."""
    from bertship.exporter import golden, load
    from bertship.runtimes.verify import sweep_lengths

    source = load.load_folder(tiny_folder(family, "token-classification"))
    texts, pairs = golden.golden_texts(source)
    feeds = golden.golden_feeds(source, texts, pairs)
    lengths = sweep_lengths(source.max_length)
    assert max(len(g) for g in golden.sweep_batches(lengths)) > 8  # batching really happens
    batched = golden.sweep_references(source, feeds, lengths)
    monkeypatch.setattr(golden, "SWEEP_BATCH_TOKENS", 1)  # every length in a pass of its own
    assert all(len(g) == 1 for g in golden.sweep_batches(lengths))
    alone = golden.sweep_references(source, feeds, lengths)
    np.testing.assert_allclose(batched, alone, rtol=0, atol=1e-5 * float(np.abs(alone).max()))
