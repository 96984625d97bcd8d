"""Retrieval encoders as sentence-transformers saves them: SentenceTransformer folders in the 5.x and older layouts
(Pooling modes, Dense, Normalize, prompts, truncate_dim), CrossEncoder (rerank), SparseEncoder (SPLADE) and a
ColBERT-style model (per-token Dense). Every artifact is compared with sentence-transformers' own encode / predict /
rank on the same folder, and with a reference MaxSim; and the gate's ranking checks are shown to catch a wrong order."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from bertship.exporter import export
from bertship.exporter.st_folder import POOLING_MODES
from bertship.runtimes import load, tasks
from bertship.runtimes.errors import SourceError, UsageError
from bertship.runtimes.retrieval import kendall_tau, ranking, retrieval_checks, top_terms_overlap

pytestmark = pytest.mark.xdist_group("retrieval")

# Held-out texts of every length, with padding in one batch (the methods batch them together).
TEXTS = ["Where is the station?", "ok", "A cat sat on a warm mat near the open window of the kitchen.",
         "Thanks!!!", "The committee postponed the vote until every member had read the full report twice.",
         "Is it raining in Paris today?"]


def _st():
    import sentence_transformers

    return sentence_transformers


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny random models of each kind, built with the pinned sentence-transformers and saved by it."""
    import torch
    import transformers

    from tests import tiny

    st = _st()
    from sentence_transformers.base.modules import Dense, Transformer
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

    root = tmp_path_factory.mktemp("st")
    hf = tiny.save("bert", "feature-extraction", root / "hf")
    out = {"hf": hf}
    plain = st.SentenceTransformer(str(hf), device="cpu")
    plain.save_pretrained(str(root / "plain"))
    out["plain"] = root / "plain"
    torch.manual_seed(1)
    modules = [Transformer(str(hf)), Pooling(32, pooling_mode="cls"), Dense(32, 16, activation_function=torch.nn.Tanh()),
               Normalize()]
    st.SentenceTransformer(modules=modules, prompts={"query": "query: ", "document": "passage: "}, truncate_dim=12,
                           device="cpu").save_pretrained(str(root / "dense"))
    out["dense"] = root / "dense"
    tok = transformers.AutoTokenizer.from_pretrained(hf)
    config = transformers.AutoConfig.from_pretrained(hf)
    config.num_labels = 1
    config.id2label, config.label2id = {0: "LABEL_0"}, {"LABEL_0": 0}
    torch.manual_seed(2)
    transformers.BertForSequenceClassification(config).save_pretrained(root / "hf-ce")
    tok.save_pretrained(root / "hf-ce")
    st.CrossEncoder(str(root / "hf-ce"), device="cpu").save_pretrained(str(root / "ce"))
    out["ce"] = root / "ce"
    torch.manual_seed(3)
    transformers.BertForMaskedLM(transformers.AutoConfig.from_pretrained(hf)).save_pretrained(root / "hf-mlm")
    tok.save_pretrained(root / "hf-mlm")
    st.SparseEncoder(str(root / "hf-mlm"), device="cpu").save_pretrained(str(root / "sparse"))
    out["sparse"] = root / "sparse"
    torch.manual_seed(4)
    colbert = [Transformer(str(hf)),
               Dense(32, 16, bias=False, activation_function=torch.nn.Identity(), module_input_name="token_embeddings",
                     module_output_name="token_embeddings")]
    st.SentenceTransformer(modules=colbert, prompts={"query": "[unused0] "}, device="cpu").save_pretrained(
        str(root / "colbert"))
    out["colbert"] = root / "colbert"
    return out


@pytest.fixture(scope="module")
def artifacts(folders, tmp_path_factory):
    root = tmp_path_factory.mktemp("st-art")
    return {k: export(folders[k], out=root / k, log=lambda m: None)
            for k in ("plain", "dense", "ce", "sparse", "colbert")}


def test_a_sentence_transformers_5_folder_exports_as_its_pooling_says(folders, artifacts):
    """The reported bug: a folder saved by sentence-transformers 5.7 (`pooling_mode`, new module paths) was refused."""
    pooling = json.loads((folders["plain"] / "1_Pooling" / "config.json").read_text())
    assert pooling.get("pooling_mode") == "mean" and "pooling_mode_mean_tokens" not in pooling  # the 5.x layout
    model = load(artifacts["plain"])
    assert model.task == "sentence-embedding" and model.manifest["task"]["pooling"] == "mean"
    ref = _st().SentenceTransformer(str(folders["plain"]), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(model.embed(TEXTS), ref, atol=2e-5)


def test_the_older_pooling_layout_and_task_override(folders, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(folders["plain"], old)
    (old / "1_Pooling" / "config.json").write_text(json.dumps(
        {"word_embedding_dimension": 32, "pooling_mode_cls_token": False, "pooling_mode_mean_tokens": False,
         "pooling_mode_max_tokens": True, "pooling_mode_mean_sqrt_len_tokens": False}))
    modules = json.loads((old / "modules.json").read_text())
    for m in modules:
        m["type"] = m["type"].replace("sentence_transformers.base.modules.transformer", "sentence_transformers.models")
    (old / "modules.json").write_text(json.dumps(modules))
    art = export(old, out=tmp_path / "a", log=lambda m: None)
    ref = _st().SentenceTransformer(str(old), device="cpu").encode(TEXTS)
    np.testing.assert_allclose(load(art).embed(TEXTS), ref, atol=2e-5)
    # --task overrides what the folder says
    fe = export(old, out=tmp_path / "fe", task="feature-extraction", log=lambda m: None)
    assert load(fe).task == "feature-extraction"


@pytest.mark.parametrize("mode", [*POOLING_MODES, "cls+mean"])
def test_every_pooling_mode_equals_sentence_transformers(folders, mode):
    """The graph's pooling against sentence-transformers' Pooling on the same hidden states, padded batch."""
    import torch

    from bertship.exporter.load import load_folder
    from bertship.exporter.to_onnx import graph_module

    from sentence_transformers.base.modules import Transformer
    from sentence_transformers.sentence_transformer.modules import Pooling

    source = load_folder(folders["plain"], pooling=mode)
    reference = _st().SentenceTransformer(modules=[Transformer(str(folders["hf"])),
                                                   Pooling(32, pooling_mode=mode.split("+"))], device="cpu")
    enc = source.tokenizer(TEXTS, padding=True, return_tensors="pt", return_token_type_ids=True)
    with torch.no_grad():
        ours = graph_module(source)(*(enc[n] for n in source.family.inputs)).numpy()
    np.testing.assert_allclose(ours, reference.encode(TEXTS), atol=2e-5)


def test_dense_normalize_prompts_and_matryoshka(folders, artifacts):
    model = load(artifacts["dense"])
    settings = model.manifest["task"]
    assert settings["prompts"] == {"query": "query: ", "document": "passage: "} and settings["dimensions"] == 12
    ref = _st().SentenceTransformer(str(folders["dense"]), device="cpu")
    for name in ("query", "document"):
        ours, theirs = model.embed(TEXTS, prompt_name=name), ref.encode(TEXTS, prompt_name=name)
        assert ours.shape == theirs.shape == (len(TEXTS), 12)
        np.testing.assert_allclose(tasks.l2_normalize(ours), tasks.l2_normalize(theirs), atol=2e-5)
        np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)  # re-normalized after the cut
    without = model.embed(TEXTS)
    assert np.abs(without - model.embed(TEXTS, prompt_name="query")).max() > 1e-3  # the prompt is really applied
    full = model.embed(TEXTS, prompt="query: ", dimensions=16)
    np.testing.assert_allclose(full, ref.encode(TEXTS, prompt="query: ", truncate_dim=16), atol=2e-5)
    with pytest.raises(UsageError, match="no prompt 'passage'"):
        model.embed(TEXTS, prompt_name="passage")
    with pytest.raises(UsageError, match="dimensions must be an int from 1 to 16"):
        model.embed(TEXTS, dimensions=17)


def test_rerank_equals_the_cross_encoder(folders, artifacts):
    model = load(artifacts["ce"])
    assert model.task == "rerank" and model.manifest["task"]["activation"] == "Sigmoid"
    ce = _st().CrossEncoder(str(folders["ce"]), device="cpu")
    query = "Where can I sit?"
    ours = model.rerank(query, TEXTS)
    theirs = ce.rank(query, TEXTS)
    assert [r["index"] for r in ours] == [r["corpus_id"] for r in theirs]
    np.testing.assert_allclose([r["score"] for r in ours], [r["score"] for r in theirs], atol=1e-5)
    assert [r["document"] for r in ours] == [TEXTS[r["index"]] for r in ours]
    assert len(model.rerank(query, TEXTS, top_k=2)) == 2
    np.testing.assert_allclose(model.score([query] * 2, TEXTS[:2]), ce.predict([(query, t) for t in TEXTS[:2]]),
                               atol=1e-5)
    report = model.manifest["fidelity"]["backends"]["onnxruntime"]["ranking"]
    assert report["queries"] == 30 and report["top1_agreement"] == 1.0 and report["kendall_tau_min"] == 1.0


def test_rerank_reads_an_older_cross_encoder_and_refuses_a_multi_label_one(folders, tmp_path):
    from bertship.exporter.load import load_folder

    old = tmp_path / "old-ce"
    shutil.copytree(folders["ce"], old)
    for name in ("modules.json", "config_sentence_transformers.json", "sentence_bert_config.json"):
        (old / name).unlink()
    config = json.loads((old / "config.json").read_text())
    config["sentence_transformers"] = {"activation_fn": "torch.nn.modules.linear.Identity"}
    (old / "config.json").write_text(json.dumps(config))
    source = load_folder(old)
    assert source.task.name == "rerank" and source.settings["activation"] == "Identity"
    config["sentence_transformers"] = {"activation_fn": "mypackage.Custom"}
    (old / "config.json").write_text(json.dumps(config))
    with pytest.raises(SourceError, match="never imports a checkpoint's own code"):
        load_folder(old)
    unnamed = tmp_path / "unnamed"  # a folder that names no activation gets sentence-transformers' default
    shutil.copytree(folders["ce"], unnamed)
    meta = json.loads((unnamed / "config_sentence_transformers.json").read_text())
    del meta["activation_fn"]
    (unnamed / "config_sentence_transformers.json").write_text(json.dumps(meta))
    assert load_folder(unnamed).settings["activation"] == "Sigmoid"
    with pytest.raises(UsageError, match="rerank needs a pair classifier with one logit"):
        load_folder(folders["hf"], task="rerank")  # the tiny classifier config has 3 labels


def test_sparse_embedding_equals_the_sparse_encoder(folders, artifacts):
    model = load(artifacts["sparse"])
    assert model.task == "sparse-embedding" and model.manifest["task"]["splade"] == ["max", "relu"]
    assert model.manifest["signature"]["outputs"][0]["name"] == "sparse_embedding"
    se = _st().SparseEncoder(str(folders["sparse"]), device="cpu")
    for top_k in (None, 7):
        ours = model.embed_sparse(TEXTS, top_k=top_k)
        theirs = se.encode(TEXTS, convert_to_sparse_tensor=False, max_active_dims=top_k).numpy()
        for vec, row in zip(ours, theirs):
            assert vec.indices.tolist() == np.flatnonzero(row).tolist()
            np.testing.assert_allclose(vec.values, row[vec.indices], atol=2e-5)
    assert all(len(v.indices) == 7 for v in model.embed_sparse(TEXTS, top_k=7))
    fidelity = model.manifest["fidelity"]["backends"]["openvino"]
    assert fidelity["top_terms"]["overlap_min"] == 1.0


def test_multi_vector_equals_token_embeddings_and_maxsim(folders, artifacts):
    import torch

    model = load(artifacts["colbert"])
    assert model.task == "multi-vector"
    ref = _st().SentenceTransformer(str(folders["colbert"]), device="cpu")
    ours = model.embed_multi(TEXTS)
    theirs = ref.encode(TEXTS, output_value="token_embeddings")
    assert [m.shape for m in ours] == [tuple(t.shape) for t in theirs]  # real tokens only, padding dropped
    for m, t in zip(ours, theirs):
        np.testing.assert_allclose(m, t.numpy(), atol=2e-5)
    queries = model.embed_multi(TEXTS[:2], prompt_name="query")
    expected = torch.stack([torch.stack([(torch.as_tensor(q) @ torch.as_tensor(d).T).max(1).values.sum()
                                         for d in ours]) for q in queries]).numpy()
    np.testing.assert_allclose(tasks.maxsim_scores(queries, ours), expected, rtol=1e-5)
    assert model.manifest["fidelity"]["backends"]["onnxruntime"]["token_cosine"]["cosine_min"] > 0.9999


def test_ranking_checks_catch_a_changed_order():
    ref = np.array([0.9, 0.5, 0.1, 0.3])
    assert kendall_tau(ref, ref * 2) == 1.0 and kendall_tau(ref, -ref) == -1.0
    assert ranking([(ref, ref)])["top1_agreement"] == 1.0
    swapped = np.array([0.5, 0.9, 0.1, 0.3])
    assert ranking([(ref, swapped)])["top1_agreement"] == 0.0
    texts = ["q1"] * 4 + ["q2"] * 4
    both = [np.array([v]) for v in np.concatenate([ref, ref])]
    wrong = [np.array([v]) for v in np.concatenate([swapped, ref])]
    report, failures = retrieval_checks("rerank", texts, both, [both, wrong], 0.9)
    assert report["ranking"]["top1_agreement"] == 0.5 and "top-1 agreement" in failures[0]
    sparse = [np.array([0, 3.0, 2.0, 1.0, 0]), np.array([1.0, 0, 0, 0, 2.0])]
    assert top_terms_overlap(sparse, sparse, k=2).tolist() == [1.0, 1.0]
    assert top_terms_overlap(sparse, [np.array([0, 3.0, 0, 1.0, 2.0]), sparse[1]], k=2).tolist() == [0.5, 1.0]


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["ce", "sparse", "colbert"])
def test_int8_recipes_pass_the_gate_on_the_task_target(folders, tmp_path, kind):
    # int8-mixed: on every CPU class it keeps in float what that class's int8 kernels break (int8-static on these
    # random tiny heads holds on VNNI CPUs but need not under AVX2's 16-bit saturation)
    art = export(folders[kind], out=tmp_path / kind, recipe="int8-mixed", log=lambda m: None)
    model = load(art)
    assert model.manifest["fidelity"]["tolerance"]["min_rank_agreement"] == 0.9
    extra = {"ce": None, "sparse": "top_terms", "colbert": "token_cosine"}[kind]
    for report in model.manifest["fidelity"]["backends"].values():  # the task's own checks ran on every backend
        assert "ranking" in report and (extra is None or extra in report)
    # the search's target is the task's own: each query's order for a reranker, every text's cosine for vectors
    objectives = {o["metric"] for fb in model.manifest["fallback"].values() for o in fb["objectives"]}
    assert objectives == ({"rank_agreement"} if kind == "ce" else {"min_cosine"})
    if kind == "colbert":  # every token of every golden text is judged, not the text's vectors taken together
        limit = model.manifest["fidelity"]["tolerance"]["min_text_cosine"]
        for report in model.manifest["fidelity"]["backends"].values():
            assert report["token_cosine"]["cosine_min"] >= limit and report["tail"]["cosine_min"] >= limit
            assert report["tail"]["cosine_min"] == pytest.approx(report["token_cosine"]["cosine_min"])
    if kind == "ce":
        from bertship.runtimes.inspect import describe

        assert "(--min-rank-agreement)" in describe(model.manifest, art)


def test_a_budget_can_bound_the_rank_agreement():
    from bertship.bench.budgets import metric_value
    from bertship.profiles.schema import METRICS

    assert METRICS["rank_agreement"].better == "higher" and not METRICS["rank_agreement"].noisy
    record = {"path": "art", "fidelity": {"cosine_min": 0.99, "rank_agreement": 0.875}}
    assert metric_value(record, "rank_agreement", None) == 0.875
    with pytest.raises(UsageError, match="no golden queries to judge rank_agreement on"):
        metric_value({"path": "art", "fidelity": {"cosine_min": 0.99, "rank_agreement": None}}, "rank_agreement", None)


def test_bench_worker_reports_the_rank_agreement(artifacts):
    from bertship.bench.worker import _fidelity

    assert _fidelity(load(artifacts["ce"]))["rank_agreement"] == 1.0
    assert _fidelity(load(artifacts["dense"]))["rank_agreement"] is None


@pytest.mark.slow
def test_the_bundled_minilm_resaved_by_sentence_transformers_exports_as_reported(tmp_path):
    """The issue's reproduction: all-MiniLM-L6-v2 loaded and saved by sentence-transformers 5.7, then exported as the
    folder says (sentence-embedding, mean pooling, normalized)."""
    from bertship.cli import main
    from bertship.exporter.load import default_model_path

    st = _st().SentenceTransformer(str(default_model_path()), device="cpu")
    st.save_pretrained(str(tmp_path / "saved"))
    assert json.loads((tmp_path / "saved" / "1_Pooling" / "config.json").read_text())["pooling_mode"] == "mean"
    # refused before with exit 3, even under --task feature-extraction; the folder's own reading is the one checked
    assert main(["export", str(tmp_path / "saved"), "--backends", "onnxruntime", "--out", str(tmp_path / "se")]) == 0
    model = load(tmp_path / "se")
    assert model.manifest["task"]["pooling"] == "mean" and model.manifest["task"]["normalize"] is True
    ours, theirs = model.embed(TEXTS), st.encode(TEXTS)
    assert (np.sum(ours * theirs, axis=1) > 0.99999).all()


def test_a_wrong_min_rank_agreement_exits_2_and_writes_nothing(folders, tmp_path, capsys):
    from bertship.cli import main

    assert main(["export", str(folders["ce"]), "--min-rank-agreement", "1.5", "--out", str(tmp_path / "a")]) == 2
    assert "--min-rank-agreement '1.5' must be in (0, 1]" in capsys.readouterr().err
    assert main(["export", str(folders["plain"]), "--min-rank-agreement", "0.9", "--out", str(tmp_path / "b")]) == 2
    assert "--min-rank-agreement judges retrieval tasks" in capsys.readouterr().err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_int8_mixed_ranks_the_calibration_files_queries_too(folders, artifacts):
    from bertship.exporter.fallback import make_rank_scorer
    from bertship.exporter.load import load_folder
    from bertship.runtimes.backends import runner_class
    from bertship.runtimes.verify import read_golden

    source = load_folder(folders["ce"])
    feeds = read_golden(artifacts["ce"], load(artifacts["ce"]).manifest)[0]
    texts = ["q one"] * 3 + ["q two"] * 2 + ["alone"]  # a query with one document has no order to judge
    pairs = TEXTS[:3] + TEXTS[3:5] + TEXTS[5:]
    graph = artifacts["ce"] / "onnxruntime" / "model.onnx"
    scorer = make_rank_scorer(graph, source, feeds, texts, pairs)
    assert len(scorer.feeds) == len(feeds) + 2 and [len(f["input_ids"]) for f in scorer.feeds[-2:]] == [3, 2]
    assert scorer(runner_class("onnxruntime")(graph, None, None)) == 1.0
    swapped = type(scorer)(scorer.feeds, [-r for r in scorer.reference])  # every order reversed
    assert swapped(runner_class("onnxruntime")(graph, None, None)) < 0.5


def test_a_rerankers_groups_are_ranked_on_score_error_not_on_whole_queries():
    """int8-mixed on a reranker: top-1 agreement moves in whole queries, so one group freed alone rarely changes it
    and groups ranked on it would mostly tie at 0; they are ranked on each query's score error over its range."""
    from bertship.exporter import fallback

    feeds = [{"q": np.array([0])}, {"q": np.array([1])}]
    reference = [np.array([0.0, 1.0, 2.0]), np.array([5.0, 1.0, 3.0])]

    class Shifted:  # the second query's scores each 0.4 off: its order (top-1 included) unchanged
        def run(self, feed):
            out = reference[int(feed["q"][0])].copy()
            return {"scores": (out + (0.4 if feed["q"][0] == 1 else 0.0) * np.array([1, -1, 1]))[:, None]}

    scorer = fallback.RankScorer(feeds, reference)
    assert scorer(Shifted()) == 1.0  # the step signal cannot see it
    signal = scorer.signal()
    assert signal.per_text(Shifted()) == pytest.approx([1.0, 1 - 0.4 / 4.0])
    objective = fallback.Objective(scorer, 0.9)
    ranking, stand_ins, value = fallback._ranking([objective], {})
    assert isinstance(ranking[0].scorer, fallback.RankSignal) and stand_ins == [objective]
    # a trial's worth under the ranking: minus the mean error over the queries
    assert value([0.9], {0: signal.per_text(Shifted())}) == pytest.approx(-0.05)
