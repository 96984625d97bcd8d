"""The task-level API (embed, classify, answer, tag) on both backends: results, truncation, bad input, wrong task."""

from __future__ import annotations

import numpy as np
import pytest

from bertship.runtimes import Model, UsageError, load

BACKENDS = ("onnxruntime", "openvino")
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "",
    "short",
    "A much longer sentence, with punctuation; and many more words than the others have in them.",
    "mid length text here",
]
LONG = "word " * 100  # past the tiny models' 64-token limit


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    return request.param


def _softmax(x):
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def test_embed_mean_pools_real_tokens_like_the_sentence_embedding_graph(task_artifact, backend):
    fe = load(task_artifact("feature-extraction"), backend=backend)
    se = load(task_artifact("sentence-embedding"), backend=backend)  # same weights, pooling="mean" in the graph
    got = fe.embed(TEXTS, batch_size=2)  # batches mix lengths, so padding must be left out of the mean
    assert got.shape == (len(TEXTS), 32) and got.dtype == np.float32
    np.testing.assert_allclose(got, se.embed(TEXTS, batch_size=len(TEXTS)), atol=1e-5)
    np.testing.assert_allclose(fe.embed(TEXTS, normalize=False), got, atol=1e-6)
    unit = fe.embed(TEXTS, normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose(unit, got / np.linalg.norm(got, axis=1, keepdims=True), atol=1e-6)


def test_embed_refuses_to_undo_in_graph_normalization(task_artifact):
    m = load(task_artifact("sentence-embedding"))
    normalizing = Model(m.root, dict(m.manifest, task=dict(m.manifest["task"], normalize=True)), m.runner, m.tokenizer)
    with pytest.raises(UsageError, match="--no-normalize"):
        normalizing.embed(["x"], normalize=False)
    with pytest.raises(UsageError, match="normalize"):
        m.embed(["x"], normalize="yes")


def test_classify_gives_softmax_scores_and_manifest_labels_in_input_order(task_artifact, backend):
    m = load(task_artifact("sequence-classification"), backend=backend)
    probs = _softmax(m.encode(TEXTS).astype(np.float64))
    labels = [m.manifest["task"]["id2label"][str(i)] for i in range(3)]
    best = m.classify(TEXTS, batch_size=2)
    assert [r["label"] for r in best] == [labels[k] for k in probs.argmax(1)]
    np.testing.assert_allclose([r["score"] for r in best], probs.max(1), atol=1e-5)
    ranked = m.classify(TEXTS, top_k=3)
    for row, p in zip(ranked, probs):
        assert [r["score"] for r in row] == sorted((r["score"] for r in row), reverse=True)
        assert sorted(r["label"] for r in row) == sorted(labels)
        np.testing.assert_allclose(sum(r["score"] for r in row), 1.0, atol=1e-9)
        np.testing.assert_allclose([r["score"] for r in row], np.sort(p)[::-1], atol=1e-5)
    assert m.classify(TEXTS, top_k=10)[0] == ranked[0]  # more than the labels: all of them
    pairs = ["a premise", "", "x", "y", "z"]
    np.testing.assert_allclose([r["score"] for r in m.classify(TEXTS, pairs=pairs)],
                               _softmax(m.encode(TEXTS, pairs=pairs).astype(np.float64)).max(1), atol=1e-5)


def test_classify_labels_fall_back_to_label_i(task_artifact):
    m = load(task_artifact("sequence-classification"))
    named = Model(m.root, dict(m.manifest, task={"name": m.task, "id2label": {"1": "positive"}}), m.runner,
                  m.tokenizer)
    assert {r["label"] for r in named.classify(["a"], top_k=3)[0]} == {"LABEL_0", "positive", "LABEL_2"}


def _best_span_by_brute_force(m, question, context, max_tokens):
    enc = m.tokenizer.tokenize([question], [context])[0]
    out = m.encode([question], pairs=[context])
    ctx = [i for i, s in enumerate(enc.sequence_ids) if s == 1]
    ps, pe = _softmax(out["start_logits"][0][ctx]), _softmax(out["end_logits"][0][ctx])
    best = max((ps[a] * pe[b], a, b) for a in range(len(ctx)) for b in range(a, min(len(ctx), a + max_tokens)))
    return best[0], enc.offsets[ctx[best[1]]][0], enc.offsets[ctx[best[2]]][1]


@pytest.mark.parametrize("family", ["bert", "roberta"])
def test_answer_is_the_best_valid_span_inside_the_context(task_artifact, backend, family):
    m = load(task_artifact("question-answering", family), backend=backend)
    questions = ["what jumps?", "who watches", "where is it?"]
    contexts = ["The quick brown fox jumps over the lazy dog.", "  The farmer watches from the porch, smiling. ",
                "It is in the house by the river, near the old mill."]
    answers = m.answer(questions, contexts, max_answer_tokens=4)
    for q, c, a in zip(questions, contexts, answers):
        assert a == m.answer(q, c, max_answer_tokens=4)  # one pair or a list: the same result
        assert 0 <= a["start"] <= a["end"] <= len(c) and a["answer"] == c[a["start"] : a["end"]]
        assert a["answer"] == a["answer"].strip()
        score, start, end = _best_span_by_brute_force(m, q, c, 4)
        assert a["score"] == pytest.approx(score, rel=1e-4)
        assert c[start:end].strip() == a["answer"]
    for q, c, a in zip(questions, contexts, m.answer(questions, contexts, max_answer_tokens=1)):
        assert a["score"] == pytest.approx(_best_span_by_brute_force(m, q, c, 1)[0], rel=1e-4)


def test_answer_edge_cases(task_artifact):
    m = load(task_artifact("question-answering"))
    assert m.answer("anything?", "") == {"answer": "", "score": 0.0, "start": 0, "end": 0}
    assert m.answer("", "some context")["answer"] in "some context"
    with pytest.raises(UsageError, match="one question with one context"):
        m.answer("q", ["c"])
    with pytest.raises(UsageError, match="2 questions but 1 contexts"):
        m.answer(["q", "r"], ["c"])
    with pytest.raises(UsageError, match="max_answer_tokens"):
        m.answer("q", "c", max_answer_tokens=0)


@pytest.mark.parametrize("family", ["bert", "albert"])
def test_tag_gives_one_tag_per_word_from_its_first_sub_token(task_artifact, backend, family):
    m = load(task_artifact("token-classification", family), backend=backend)
    texts = ["hello wonderful  world again", "", "the farmer watches from the porch", "x"]
    tags = m.tag(texts, batch_size=3)
    logits = m.encode(texts)
    labels = [m.manifest["task"]["id2label"][str(i)] for i in range(3)]
    for row, (text, words) in enumerate(zip(texts, tags)):
        assert [w["word"] for w in words] == text.split()
        enc = m.tokenizer.tokenize([text])[0]
        spans: dict[int, list[int]] = {}  # word id -> [first token, start, end]
        for t, (w, (s, e)) in enumerate(zip(enc.word_ids, enc.offsets)):
            if w is not None:
                spans.setdefault(w, [t, s, e])[2] = e
        firsts = [t for t, s, e in spans.values() if text[s:e].strip()]  # a lone "▁" piece is not a word
        assert len(firsts) == len(words)
        for w, first in zip(words, firsts):
            assert text[w["start"] : w["end"]] == w["word"]
            p = _softmax(logits[row, first].astype(np.float64))
            assert w["label"] == labels[int(p.argmax())]
            assert w["score"] == pytest.approx(float(p.max()), rel=1e-4)


WRONG = [
    ("sequence-classification", lambda m: m.embed(["x"]), "classify"),
    ("sequence-classification", lambda m: m.tag(["x"]), "classify"),
    ("question-answering", lambda m: m.classify(["x"]), "answer"),
    ("token-classification", lambda m: m.answer("q", "c"), "tag"),
    ("feature-extraction", lambda m: m.tag(["x"]), "embed"),
]


@pytest.mark.parametrize("task,call,instead", WRONG)
def test_wrong_task_method_names_the_task_and_the_method_to_use(task_artifact, task, call, instead):
    m = load(task_artifact(task))
    with pytest.raises(UsageError, match=rf"this one is {task} — use model\.{instead}\(\) instead"):
        call(m)
    assert m.encode(["still works"]) is not None


def test_truncation_error_mode_names_the_count_and_max_length(task_artifact):
    path = task_artifact("sequence-classification")
    strict = load(path, truncation="error")
    texts = ["ok", LONG, "fine", LONG + "more"]
    with pytest.raises(UsageError, match=r"2 of 4 input\(s\) are longer than this model's max length of 64 tokens"):
        strict.classify(texts)
    assert strict.count_truncated(texts) == 2
    lenient = strict.classify(texts, truncation="truncate")  # per call beats the load() default
    assert lenient == load(path).classify(texts)
    with pytest.raises(UsageError, match="1 of 1"):
        load(path).classify([LONG], truncation="error")
    with pytest.raises(UsageError, match="1 of 1"):
        load(task_artifact("question-answering"), truncation="error").answer("q", LONG)
    assert strict.count_truncated(["ok"], pairs=[LONG]) == 1
    with pytest.raises(UsageError, match="truncation"):
        load(path, truncation="cut")
    with pytest.raises(UsageError, match="truncation"):
        strict.classify(["x"], truncation=True)


BAD = [
    (lambda m: m.classify([]), "empty"),
    (lambda m: m.classify("one string"), "list of strings"),
    (lambda m: m.classify(["ok", None]), r"texts\[1\] is NoneType"),
    (lambda m: m.classify(["ok", b"bytes"]), r"texts\[1\] is bytes"),
    (lambda m: m.classify(["ok", "bad \ud800 text"]), r"texts\[1\] is not valid Unicode \(lone surrogate at char"),
    (lambda m: m.classify(["ok"], pairs=["\udfff"]), r"pairs\[0\] is not valid Unicode"),
    (lambda m: m.classify(["ok"], pairs=["a", "b"]), "1 texts but 2 pairs"),
    (lambda m: m.classify(["ok"], top_k=0), "top_k"),
    (lambda m: m.classify(["ok"], batch_size=0), "batch_size"),
    (lambda m: m.encode(["\ud83d"]), "not valid Unicode"),
    (lambda m: m.count_truncated(["\ud800"]), "not valid Unicode"),
]


@pytest.mark.parametrize("call,message", BAD)
def test_bad_input_is_a_usage_error_and_the_model_stays_usable(task_artifact, call, message):
    m = load(task_artifact("sequence-classification"))
    before = m.classify(TEXTS)
    with pytest.raises(UsageError, match=message):
        call(m)
    assert m.classify(TEXTS) == before


def test_lone_surrogates_in_every_text_method(task_artifact):
    for task, call in [("feature-extraction", lambda m: m.embed(["\ud800"])),
                       ("question-answering", lambda m: m.answer("q\ud800", "c")),
                       ("question-answering", lambda m: m.answer("q", "c\ud800")),
                       ("token-classification", lambda m: m.tag(["ok", "\udc80x"]))]:
        with pytest.raises(UsageError, match="not valid Unicode"):
            call(load(task_artifact(task)))


def test_empty_string_encodes_to_special_tokens_only(task_artifact):
    m = load(task_artifact("feature-extraction"))
    assert m.tokenizer.tokenize([""])[0].tokens == ["[CLS]", "[SEP]"]
    hidden = m.encode([""])
    np.testing.assert_allclose(m.embed([""])[0], hidden[0, :2].mean(axis=0), atol=1e-6)
    assert m.embed(["", "x"])[0].tolist() == m.embed([""])[0].tolist()
    assert load(task_artifact("token-classification")).tag([""]) == [[]]
    assert set(load(task_artifact("sequence-classification")).classify([""])[0]) == {"label", "score"}
