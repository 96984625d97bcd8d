"""`bertship serve`'s request handling without a server: the token-budget batcher and Service.call, status by status,
and every task endpoint against the in-process Model method it must equal."""

from __future__ import annotations

import asyncio
import base64
import json
import socket
import threading
from types import SimpleNamespace

import numpy as np
import pytest

from bertship.exporter.golden import sentences, short_texts
from bertship.runtimes import load
from bertship.runtimes.batcher import Overloaded, TokenBatcher, measure_overhead, plan_batches
from bertship.runtimes.service import Limits, Service


def enc(n: int, tag: int = 0):
    return SimpleNamespace(ids=[tag] * n)


def call(service: Service, path: str, body) -> tuple[int, dict, dict]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    reply = asyncio.run(service.call(path, raw))
    return reply.status, json.loads(reply.json()), reply.headers


# --- the batcher ---------------------------------------------------------------------------------------------------

def test_plan_sorts_by_length_and_keeps_both_budgets():
    b = TokenBatcher(lambda e: e, max_batch_tokens=40, max_batch_size=3)
    try:
        lengths = [10, 3, 12, 5, 4, 20, 9]
        plan = b.plan(lengths)
        assert sorted(i for batch in plan for i in batch) == list(range(len(lengths)))
        flat = [lengths[i] for batch in plan for i in batch]
        assert flat == sorted(lengths)  # length-sorted, so each batch pads only to its own longest
        for batch in plan:
            assert len(batch) <= 3 and len(batch) * max(lengths[i] for i in batch) <= 40
        assert b.plan([100]) == [[0]]  # one text over the token budget still runs, alone
    finally:
        b.close()


def test_the_cheapest_cut_is_the_cheapest_of_every_cut_of_the_sorted_texts():
    import itertools

    rng = np.random.default_rng(0)
    for _ in range(60):
        lengths = [int(x) for x in rng.integers(2, 80, size=int(rng.integers(1, 9)))]
        overhead, size, budget = float(rng.uniform(0, 60)), int(rng.integers(1, 6)), int(rng.integers(60, 400))
        plan = plan_batches(lengths, size, budget, overhead)
        assert sorted(i for b in plan for i in b) == list(range(len(lengths)))
        assert [lengths[i] for b in plan for i in b] == sorted(lengths)

        def cost(batches):
            return sum(overhead + len(b) * max(b) for b in batches)

        def ok(b):
            return len(b) == 1 or (len(b) <= size and len(b) * max(b) <= budget)

        ordered = sorted(lengths)
        best = min(cost(parts) for cuts in itertools.product([0, 1], repeat=len(ordered) - 1)
                   for parts in [_split(ordered, cuts)] if all(ok(b) for b in parts))
        assert cost([[lengths[i] for i in b] for b in plan]) == pytest.approx(best)
    # without a known overhead: every `size` sorted texts, as before; with a large one, as few runs as fit
    assert plan_batches([5, 1, 4, 2, 3], 2) == [[1, 3], [4, 2], [0]]
    assert len(plan_batches([5, 50, 6, 60], 4, None, 1e6)) == 1
    assert plan_batches([5, 50, 6, 60], 4, None, 0.0) == [[0], [2], [1], [3]]  # no run cost: no padding at all


def test_the_overhead_is_measured_within_the_model_max_length():
    import time

    shapes = []

    def run(feeds):  # a model whose run costs 2 ms plus 0.1 ms a padded token: 20 tokens' worth of overhead
        shapes.append(feeds["input_ids"].shape)
        assert set(feeds) == {"input_ids", "attention_mask"} and (feeds["input_ids"] == 7).all()
        time.sleep(0.002 + 0.0001 * feeds["input_ids"].size)

    overhead = measure_overhead(run, ["input_ids", "attention_mask"], token_id=7, max_length=8)
    assert max(length for _, length in shapes) == 8 and {b for b, _ in shapes} == {1, 4}
    assert 5.0 < overhead < 80.0


def _split(ordered, cuts):
    parts, current = [], [ordered[0]]
    for value, cut in zip(ordered[1:], cuts):
        if cut:
            parts.append(current)
            current = []
        current.append(value)
    return parts + [current]


def test_tuned_batching_pads_less_and_gives_the_same_vectors(task_artifact):
    model = load(task_artifact("sentence-embedding"))
    texts = ["short", "a much longer text " * 12, "tiny", "mid length text here " * 3, "x", "another long one " * 10]
    plain = model.embed(texts, batch_size=16)
    padded: list[int] = []
    real = model.runner.run

    def counting(feeds):
        padded.append(feeds["input_ids"].size)
        return real(feeds)

    model.runner.run = counting
    model.embed(texts, batch_size=16)
    untuned = sum(padded)
    overhead = model.tune_batching()
    assert 0.0 <= overhead <= 512.0 and model.batch_overhead_tokens == overhead
    model.batch_overhead_tokens = 4.0  # a fixed value for a deterministic plan: short and long texts run apart
    padded.clear()
    tuned = model.embed(texts, batch_size=16)
    assert len(padded) > 1 and sum(padded) < untuned
    np.testing.assert_allclose(tuned, plain, atol=1e-5)


def test_requests_that_arrive_while_a_batch_runs_are_batched_together_and_get_their_own_rows():
    gate, started, calls = threading.Event(), threading.Event(), []

    def run(encodings):
        calls.append([e.ids[0] for e in encodings])
        started.set()
        gate.wait(5)
        return [e.ids[0] * 10 + len(e.ids) for e in encodings]

    b = TokenBatcher(run, max_batch_tokens=10_000, max_batch_size=64)
    try:
        first = b.submit([enc(3, 1)])
        assert started.wait(5)  # the model thread runs the first request alone at once (no wait timer)
        later = [b.submit([enc(5 + k, 2 + k), enc(2, 2 + k)]) for k in range(4)]
        gate.set()
        assert first.result(5) == [13]
        for k, f in enumerate(later):  # each request gets its rows, in its own order
            assert f.result(5) == [(2 + k) * 10 + 5 + k, (2 + k) * 10 + 2]
        assert calls[0] == [1] and sorted(calls[1]) == sorted([2, 3, 4, 5] * 2)  # one batch for the four
        assert b.stats.as_dict()["requests_per_batch"] == 2.5  # 1, then 4
    finally:
        gate.set()
        b.close()


def test_a_full_queue_refuses_at_once_with_a_retry_time():
    gate = threading.Event()
    b = TokenBatcher(lambda e: (gate.wait(5), [0] * len(e))[1], max_queue_tokens=100)
    try:
        running = b.submit([enc(60)])  # counted from submit until its round ends
        with pytest.raises(Overloaded) as err:
            b.submit([enc(50)])
        assert err.value.retry_after >= 1 and "retry after" in str(err.value)
        small = b.submit([enc(30)])  # what fits is still taken
        gate.set()
        assert running.result(5) == [0] and small.result(5) == [0]
        assert b.queued_tokens == 0
    finally:
        gate.set()
        b.close()


def test_a_failing_batch_fails_only_the_requests_in_it():
    def run(encodings):
        if any(e.ids[0] == 666 for e in encodings):
            raise RuntimeError("kernel died")
        return [e.ids[0] for e in encodings]

    b = TokenBatcher(run, max_batch_tokens=16, max_batch_size=8)  # 4-token and 12-token texts land in two batches
    try:
        bad = b.submit([enc(12, 666), enc(4, 1)])
        good = b.submit([enc(4, 2)])
        with pytest.raises(RuntimeError, match="kernel died"):
            bad.result(5)
        assert good.result(5) == [2]
    finally:
        b.close()


# --- the service: status codes --------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def embedder(task_artifact):
    model = load(task_artifact("sentence-embedding"))
    service = Service(model, name="tiny-se", limits=Limits(max_texts=64, max_request_tokens=1000))
    yield service
    service.close()


def test_embeddings_equal_in_process_embed_in_float_and_base64(embedder):
    texts = [*sentences()[:6], *short_texts()[:3], "word " * 400]  # short, long, one past the max length
    status, body, _ = call(embedder, "/v1/embeddings", {"input": texts, "model": "anything"})
    assert status == 200 and body["object"] == "list" and body["model"] == "tiny-se"
    ref = embedder.model.embed(texts)
    got = np.array([d["embedding"] for d in body["data"]], dtype=np.float32)
    assert [d["index"] for d in body["data"]] == list(range(len(texts)))
    np.testing.assert_array_equal(got, ref)
    tokens = sum(len(e.ids) for e in embedder.model.tokenizer.tokenize(texts))
    assert body["usage"] == {"prompt_tokens": tokens, "total_tokens": tokens}
    status, body, _ = call(embedder, "/v1/embeddings", {"input": texts[0], "encoding_format": "base64"})
    vec = np.frombuffer(base64.b64decode(body["data"][0]["embedding"]), dtype="<f4")
    np.testing.assert_array_equal(vec, embedder.model.embed(texts[:1])[0])
    status, body, _ = call(embedder, "/v1/embeddings", {"input": texts[:2], "dimensions": 8})
    np.testing.assert_array_equal(np.array([d["embedding"] for d in body["data"]], np.float32),
                                  embedder.model.embed(texts[:2], dimensions=8))


@pytest.mark.parametrize("body, status, needle", [
    (b"\xff\xfe{", 400, "not UTF-8"),
    (b"{input: 1", 400, "not JSON"),
    (b"[\"a\"]", 400, "not an object"),
    ({"model": "x"}, 422, "'input' is missing"),
    ({"input": []}, 422, "empty list"),
    ({"input": 5}, 422, "'input' is a int"),
    ({"input": [[101, 2023]]}, 422, "not token ids"),
    ({"input": ["a", 3]}, 422, "input[1]"),
    ({"input": "a", "encoding_format": "int8"}, 422, "encoding_format"),
    ({"input": "a", "dimensions": 0}, 422, "'dimensions' must be a positive integer"),
    ({"input": "a", "dimensions": 100000}, 422, "dimensions must be an int from 1"),
    ({"input": "a", "truncation": "cut"}, 422, "truncation"),
    ({"input": ["word " * 400], "truncation": "error"}, 422, "longer than this model's max length"),
    ({"input": ["a"] * 65}, 413, "65 texts in one request (limit 64)"),
    ({"input": ["word " * 200] * 30}, 413, "tokens in one request (limit 1000)"),
    ({"input": "a", "prompt_name": "query"}, 422, "has no prompt 'query'"),
])
def test_bad_requests_get_a_json_error_naming_the_field(embedder, body, status, needle):
    got, reply, _ = call(embedder, "/v1/embeddings", body)
    assert got == status, reply
    assert needle in reply["error"]["message"] and reply["error"]["code"] == status


def test_an_endpoint_of_another_task_is_a_404_naming_this_ones(embedder):
    status, reply, _ = call(embedder, "/v1/classify", {"input": ["a"]})
    assert status == 404 and "use POST /v1/embeddings" in reply["error"]["message"]
    status, reply, _ = call(embedder, "/v1/nope", {"input": ["a"]})
    assert status == 404


def test_overload_is_a_503_with_retry_after_and_a_failed_model_a_500(task_artifact):
    model = load(task_artifact("sentence-embedding"))
    gate = threading.Event()
    run = model.runner.run
    model.runner = SimpleNamespace(run=lambda feeds: (gate.wait(10), run(feeds))[1], backend="x", precision="fp32")
    service = Service(model, limits=Limits(max_queue_tokens=50, max_request_tokens=50))

    async def burst():
        first = asyncio.ensure_future(service.call("/v1/embeddings", json.dumps({"input": ["a b c d e"] * 4}).encode()))
        await asyncio.sleep(0.2)
        second = await service.call("/v1/embeddings", json.dumps({"input": ["a b c d e f g"] * 5}).encode())
        gate.set()
        return await first, second

    try:
        first, second = asyncio.run(burst())
        assert first.status == 200
        assert second.status == 503 and int(second.headers["Retry-After"]) >= 1
        assert "queue holds" in json.loads(second.json())["error"]["message"]
        model.runner = SimpleNamespace(run=lambda feeds: 1 / 0, backend="x", precision="fp32")
        status, reply, _ = call(service, "/v1/embeddings", {"input": ["a"]})
        assert status == 500 and "ZeroDivisionError" in reply["error"]["message"] and "data" not in reply
    finally:
        gate.set()
        service.close()


# --- the service: every task equals its Model method ---------------------------------------------------------------

TEXTS = [*sentences()[:5], *short_texts()[:3]]


@pytest.mark.parametrize("task", ["sequence-classification", "rerank", "sparse-embedding", "multi-vector",
                                  "question-answering", "token-classification", "feature-extraction"])
def test_each_task_endpoint_equals_the_in_process_method(task_artifact, task):
    model = load(task_artifact(task))
    service = Service(model)
    try:
        if task == "sequence-classification":
            status, body, _ = call(service, "/v1/classify", {"input": TEXTS, "top_k": 2})
            assert [d["labels"] for d in body["data"]] == model.classify(TEXTS, top_k=2)
            status, body, _ = call(service, "/v1/classify", {"input": TEXTS})
            assert [{k: v for k, v in d.items() if k != "index"} for d in body["data"]] == model.classify(TEXTS)
        elif task == "rerank":
            status, body, _ = call(service, "/v1/rerank", {"query": TEXTS[0], "documents": TEXTS[1:], "top_n": 3,
                                                           "return_documents": True})
            ref = model.rerank(TEXTS[0], TEXTS[1:], top_k=3)
            assert [(r["index"], r["document"]) for r in body["results"]] == [(r["index"], r["document"]) for r in ref]
            np.testing.assert_allclose([r["relevance_score"] for r in body["results"]], [r["score"] for r in ref],
                                       rtol=0, atol=1e-6)
        elif task == "sparse-embedding":
            status, body, _ = call(service, "/v1/embed_sparse", {"input": TEXTS, "top_k": 5})
            for d, ref in zip(body["data"], model.embed_sparse(TEXTS, top_k=5)):
                assert d["indices"] == ref.indices.tolist() and np.allclose(d["values"], ref.values, atol=1e-6)
        elif task == "multi-vector":
            status, body, _ = call(service, "/v1/embed_multi", {"input": TEXTS})
            for d, ref in zip(body["data"], model.embed_multi(TEXTS)):
                np.testing.assert_allclose(np.array(d["embeddings"], np.float32), ref, atol=1e-6)
        elif task == "question-answering":
            question, context = "Who wrote it?", TEXTS[1]
            status, body, _ = call(service, "/v1/answer", {"question": question, "context": context})
            ref = model.answer(question, context)
            assert {k: v for k, v in body["data"][0].items() if k not in ("index", "score")} == \
                {k: v for k, v in ref.items() if k != "score"}
            code, bad, _ = call(service, "/v1/answer", {"question": ["a", "b"], "context": ["c"]})
            assert code == 422 and "2 questions but 1 contexts" in bad["error"]["message"]
        elif task == "token-classification":
            status, body, _ = call(service, "/v1/tag", {"input": TEXTS})
            ref = model.tag(TEXTS)
            assert [[(e["word"], e["label"]) for e in d["entities"]] for d in body["data"]] == \
                [[(e["word"], e["label"]) for e in r] for r in ref]
        else:
            status, body, _ = call(service, "/v1/embeddings", {"input": TEXTS})
            np.testing.assert_allclose(np.array([d["embedding"] for d in body["data"]], np.float32),
                                       model.embed(TEXTS), atol=1e-6)
        assert status == 200 and body["usage"]["prompt_tokens"] > 0, body
    finally:
        service.close()


def test_serve_refuses_bad_usage_before_starting_anything(task_artifact, tmp_path, capsys):
    from bertship.cli import main

    art = str(task_artifact("sentence-embedding"))
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        for argv, code, needle in [
            ([str(tmp_path / "none")], 5, "does not exist"),
            ([art, "--backend", "tensorrt"], 2, "--backend 'tensorrt'"),
            ([art, "--replicas", "0"], 2, "--replicas must be a positive integer"),
            ([art, "--truncation", "cut"], 2, "--truncation"),
            ([art, "--max-batch-tokens", "0"], 2, "--max-batch-tokens"),
            ([art, "--port", str(port)], 2, f"cannot listen on 127.0.0.1:{port}"),
        ]:
            assert main(["serve", *argv]) == code, argv
            err = capsys.readouterr().err
            assert needle in err and "starting Ray" not in err, err
