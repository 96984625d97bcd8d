"""One contract, both runners: what an app may rely on whichever backend it loads."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from bertship.runtimes import UsageError, load

BACKENDS = ("onnxruntime", "openvino")


@pytest.fixture(scope="module", params=BACKENDS)
def model(request, tiny_artifact):
    return load(tiny_artifact, backend=request.param, threads=1)


def feeds_for(model, batch: int, seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 200, size=(batch, seq), dtype=np.int64)
    mask = np.ones_like(ids)
    mask[0, seq // 2 :] = 0  # first row padded
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    return {k: feeds[k] for k in model.input_names}


def test_names_match_the_manifest(model):
    assert model.runner.input_names == model.input_names
    assert model.runner.output_names == model.output_names == ("logits",)
    assert model.backend == model.runner.backend
    assert isinstance(model.precision, str) and model.precision in ("fp32", "f32")


@pytest.mark.parametrize("batch,seq", [(1, 2), (3, 17), (5, 64)])
def test_dynamic_batch_and_sequence(model, batch, seq):
    out = model.run(feeds_for(model, batch, seq))
    assert set(out) == {"logits"}
    assert out["logits"].shape == (batch, 3) and out["logits"].dtype == np.float32
    assert np.isfinite(out["logits"]).all()


def test_results_are_fresh_arrays(model):
    feeds = feeds_for(model, 2, 8)
    first = model.run(feeds)["logits"]
    keep = first.copy()
    model.run(feeds_for(model, 2, 8, seed=1))
    first[:] = 0  # the caller owns the array: neither the runner nor the next call may reuse it
    np.testing.assert_array_equal(model.run(feeds)["logits"], keep)


def test_threads_share_one_model(model):
    jobs = [feeds_for(model, 1 + i % 3, 4 + i, seed=i) for i in range(12)]
    expected = [model.run(f)["logits"] for f in jobs]
    results: dict[int, np.ndarray] = {}
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            for k in range(len(jobs)):
                i = (k + offset) % len(jobs)
                got = model.run(jobs[i])["logits"]
                if not np.array_equal(got, expected[i]):
                    raise AssertionError(f"job {i} differs under threads")
                results[i] = got
        except BaseException as exc:  # collected, re-raised in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(results) == len(jobs)


def test_backends_agree(tiny_artifact):
    a, b = (load(tiny_artifact, backend=name) for name in BACKENDS)
    feeds = feeds_for(a, 4, 23)
    np.testing.assert_allclose(a.run(feeds)["logits"], b.run(feeds)["logits"], atol=1e-5)


@pytest.mark.parametrize(
    "mutate,message",
    [
        (lambda f: f.pop("attention_mask"), "missing"),
        (lambda f: f.update(extra=f["input_ids"]), "unexpected"),
        (lambda f: f.update(input_ids=f["input_ids"].astype(np.float32)), "dtype"),
        (lambda f: f.update(input_ids=f["input_ids"][0]), "shape"),
        (lambda f: f.update(attention_mask=f["attention_mask"][:, :3]), "shape"),
        (lambda f: f.update({k: np.ones((1, 65), np.int64) for k in f}), "exceeds"),
    ],
)
def test_bad_feeds_are_usage_errors_and_the_model_stays_usable(model, mutate, message):
    feeds = feeds_for(model, 2, 6)
    mutate(feeds)
    with pytest.raises(UsageError, match=message):
        model.run(feeds)
    assert model.run(feeds_for(model, 2, 6))["logits"].shape == (2, 3)


@pytest.mark.parametrize("texts", [[], "a string", ["ok", 3], None])
def test_bad_texts_are_usage_errors(model, texts):
    with pytest.raises(UsageError):
        model.encode(texts)
    assert model.encode(["still works"]).shape == (1, 3)


def test_encode_keeps_input_order_across_length_buckets(model):
    texts = ["short", "a much longer sentence with many more words in it than the others", "mid length text", ""]
    together = model.encode(texts, batch_size=2)
    alone = np.concatenate([model.encode([t]) for t in texts])
    np.testing.assert_allclose(together, alone, atol=1e-5)


def test_threads_argument_is_checked(tiny_artifact):
    with pytest.raises(UsageError, match="threads"):
        load(tiny_artifact, threads=0)
