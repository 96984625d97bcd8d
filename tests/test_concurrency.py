"""Loaded models shared by 8 threads × 1,000 mixed requests: no errors, results identical to single-threaded ones."""

from __future__ import annotations

import random
import threading
from typing import Any, Callable

import numpy as np
import pytest

from bertship.runtimes import UsageError, load

pytestmark = pytest.mark.slow

THREADS = 8
REQUESTS_PER_THREAD = 1000
WORDS = "the quick brown fox jumps over lazy dog while farmer watches from porch river mill".split()


def _text(rng: random.Random) -> str:
    # Mostly short, so 8,000 requests take seconds; one text in ten is past the 64-token limit (truncated).
    return " ".join(rng.choice(WORDS) for _ in range(rng.choice([0, 1, 2, 3, 5, 5, 8, 8, 12, 70])))


def _requests(models: dict[str, Any]) -> list[Callable[[], Any]]:
    """Distinct requests over every task method, batch size, text length, plus a few that must fail the same way."""
    rng = random.Random(0)
    emb, cls, qa, tag = (models[t] for t in ("feature-extraction", "sequence-classification", "question-answering",
                                             "token-classification"))
    out: list[Callable[[], Any]] = []
    for k in range(32):
        texts = [_text(rng) for _ in range(rng.choice([1, 1, 2, 3]))]
        bs = rng.choice([2, 32])
        out += [
            lambda t=texts, b=bs, n=k % 3: emb.embed(t, normalize=(None, True, False)[n], batch_size=b),
            lambda t=texts, b=bs, k=1 + k % 3: cls.classify(t, top_k=k, batch_size=b),
            lambda t=texts, b=bs: cls.classify(t, pairs=t[::-1], batch_size=b),
            lambda t=texts, b=bs: qa.answer(t, [s + " and the porch" for s in t], batch_size=b),
            lambda t=texts, b=bs: tag.tag(t, batch_size=b),
            lambda t=texts: cls.encode(t),
            lambda t=texts: emb.count_truncated(t),
        ]
    out += [
        lambda: cls.classify(["ok", "\ud800"]),
        lambda: qa.answer("q", WORDS * 10, truncation="error"),
        lambda: tag.tag([]),
        lambda: emb.classify(["wrong task"]),
    ]
    return out


def _outcome(call: Callable[[], Any]) -> Any:
    try:
        return call()
    except UsageError as exc:  # an expected, deterministic refusal is a result too
        return ("UsageError", str(exc))


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
    return type(a) is type(b) and a == b


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
def test_eight_threads_share_models_and_match_single_threaded_results(task_artifact, backend):
    tasks = ("feature-extraction", "sequence-classification", "question-answering", "token-classification")
    models = {t: load(task_artifact(t), backend=backend, threads=1) for t in tasks}
    requests = _requests(models)
    expected = [_outcome(call) for call in requests]
    assert sum(isinstance(e, tuple) and e[0] == "UsageError" for e in expected) == 4
    mismatches: list[str] = []
    errors: list[BaseException] = []
    done = [0] * THREADS
    start = threading.Barrier(THREADS)

    def worker(t: int) -> None:
        rng = random.Random(1000 + t)
        try:
            start.wait()
            for _ in range(REQUESTS_PER_THREAD):
                i = rng.randrange(len(requests))
                if not _same(_outcome(requests[i]), expected[i]):
                    mismatches.append(f"thread {t}: request {i} differs from its single-threaded result")
                done[t] += 1
        except BaseException as exc:  # collected, asserted in the main thread
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    assert mismatches == []
    assert sum(done) == THREADS * REQUESTS_PER_THREAD
