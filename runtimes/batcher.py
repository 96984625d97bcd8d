"""Batching by token budget inside one serving process, as text-embeddings-inference and infinity do: requests arrive
already tokenized, wait in a bounded queue, and one model thread runs them in length-sorted batches.

- No wait timer: an idle model thread runs what is there at once (one client pays no batching delay); while it runs,
  new requests gather and the next round takes them all.
- A round takes every waiting text, sorts them by length and cuts batches of at most `max_batch_size` texts and
  `max_batch_tokens` padded tokens (texts × the batch's longest), so a batch is padded only to its own longest member.
  Where the cost of one model run is known (`overhead_tokens`, measured by `measure_overhead`), the cuts are the
  cheapest ones (`plan_batches`): a run costs its padded tokens plus a fixed overhead, so short and long texts that
  arrived together run apart when the padding would cost more than one more run.
  Texts that arrive during a round wait for the next: a long text is never starved by a stream of short ones.
- The queue is bounded in tokens: past `max_queue_tokens`, `submit` raises Overloaded at once (HTTP 503 with
  Retry-After), so memory stays bounded under any load.
- A batch that raises fails the requests that had texts in it, with the error; nothing else. A request gets either
  every one of its rows, in its own order, or an error: never a row of another request.

Torch-free; the model is any callable from a list of encodings to one result per encoding.
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np


def plan_batches(lengths: Sequence[int], max_size: int, max_tokens: int | None = None,
                 overhead_tokens: float | None = None) -> list[list[int]]:
    """Batches of indices into `lengths` (token counts), each sorted by length and padded only to its own longest.

    overhead_tokens None: consecutive runs of the sorted texts, `max_size` at a time (and within `max_tokens` padded
    tokens). Otherwise the cheapest cut of the sorted texts, where a batch costs `overhead_tokens` (what one model
    run costs beyond its tokens, in tokens) plus its padded tokens (texts × its longest): a dynamic program over the
    sorted lengths (for sorted lengths and this cost, some cheapest partition is made of consecutive runs). A text
    longer than `max_tokens` still runs, alone.
    """
    order = sorted(range(len(lengths)), key=lengths.__getitem__)
    sorted_len = [lengths[i] for i in order]
    n = len(order)

    def fits(first: int, last: int) -> bool:  # sorted_len[last] is the longest of first..last
        size = last - first + 1
        return size == 1 or (size <= max_size and (max_tokens is None or size * sorted_len[last] <= max_tokens))

    if overhead_tokens is None:
        cuts, first = [], 0
        for last in range(n):
            if not fits(first, last):
                cuts.append((first, last))
                first = last
        if n:
            cuts.append((first, n))
    else:
        best = [0.0] + [float("inf")] * n  # best[j]: cheapest cost of the first j sorted texts
        start = [0] * (n + 1)
        for last in range(n):
            for first in range(last, max(-1, last - max_size), -1):
                if not fits(first, last):
                    break
                cost = best[first] + overhead_tokens + (last - first + 1) * sorted_len[last]
                if cost < best[last + 1]:
                    best[last + 1], start[last + 1] = cost, first
        cuts, end = [], n
        while end:
            cuts.append((start[end], end))
            end = start[end]
        cuts.reverse()
    return [order[a:b] for a, b in cuts]


def measure_overhead(run: Callable[[dict[str, np.ndarray]], Any], input_names: Sequence[str], token_id: int,
                     max_length: int = 512, repeats: int = 7) -> float:
    """What one run of a model costs beyond its tokens, in tokens: runs of 1×16 and 4×64 token ids (shorter where
    max_length is; medians of `repeats`) give cost = a + b × padded tokens; returns a / b, within 0..512. About 15
    runs of the model."""
    import time

    def timed(batch: int, length: int) -> float:
        feeds = {name: np.zeros((batch, length), np.int64) for name in input_names}
        if "input_ids" in feeds:
            feeds["input_ids"][:] = token_id  # an ordinary word of the vocabulary
        if "attention_mask" in feeds:
            feeds["attention_mask"][:] = 1
        run(feeds)  # warm-up of this shape
        times = []
        for _ in range(repeats):
            begin = time.perf_counter()
            run(feeds)
            times.append(time.perf_counter() - begin)
        return float(np.median(times))

    long = min(64, max_length)
    short = max(1, long // 4)
    small, large = timed(1, short), timed(4, long)
    per_token = (large - small) / (4 * long - short)
    if per_token <= 0:  # noise swamped the difference: assume runs are cheap to split
        return 0.0
    return float(min(512.0, max(0.0, (small - short * per_token) / per_token)))


class Overloaded(Exception):
    """Raised by submit when the queue holds max_queue_tokens already; retry_after is a suggested wait in seconds."""

    def __init__(self, queued_tokens: int, limit: int, retry_after: float):
        self.queued_tokens, self.limit, self.retry_after = queued_tokens, limit, retry_after
        super().__init__(f"the server's queue holds {queued_tokens} tokens (limit {limit}) — retry after "
                         f"{math.ceil(retry_after)} s, or add replicas")


@dataclass
class _Request:
    encodings: Sequence[Any]
    future: Future
    tokens: int
    rows: list[Any] = field(default_factory=list)
    left: int = 0


@dataclass
class Stats:
    """What the model thread did: rounds, batches, texts and requests per batch, padded and real tokens."""

    rounds: int = 0
    batches: int = 0
    texts: int = 0
    requests: int = 0
    padded_tokens: int = 0
    real_tokens: int = 0
    busy_s: float = 0.0

    def as_dict(self) -> dict[str, float]:
        return {"rounds": self.rounds, "batches": self.batches, "texts": self.texts, "requests": self.requests,
                "texts_per_batch": self.texts / self.batches if self.batches else 0.0,
                "requests_per_batch": self.requests / self.batches if self.batches else 0.0,
                "padding_share": 1 - self.real_tokens / self.padded_tokens if self.padded_tokens else 0.0,
                "busy_s": self.busy_s}


class TokenBatcher:
    """Runs `run(encodings) -> results` on one thread, in batches cut by token budget from everything waiting."""

    def __init__(self, run: Callable[[list[Any]], Sequence[Any]], max_batch_tokens: int = 8192,
                 max_batch_size: int = 32, max_queue_tokens: int = 65536, name: str = "bertship-batcher",
                 overhead_tokens: float | None = None):
        for key, value in (("max_batch_tokens", max_batch_tokens), ("max_batch_size", max_batch_size),
                           ("max_queue_tokens", max_queue_tokens)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{key} must be a positive int, got {value!r}")
        self.run, self.max_batch_tokens, self.max_batch_size = run, max_batch_tokens, max_batch_size
        self.max_queue_tokens = max_queue_tokens
        self.overhead_tokens = overhead_tokens  # one run's cost beyond its tokens (measure_overhead); None: unknown
        self.stats = Stats()
        self._pending: list[_Request] = []
        self._queued_tokens = 0
        self._tokens_per_s = 0.0  # measured throughput, for Retry-After
        self._cond = threading.Condition()
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)
        self._thread.start()

    @property
    def queued_tokens(self) -> int:
        return self._queued_tokens

    def alive(self) -> bool:
        return self._thread.is_alive() and not self._closed

    def submit(self, encodings: Sequence[Any]) -> Future:
        """Queue one request's encodings; the future resolves to its results in order. Raises Overloaded when the
        queue is full (a request larger than the whole queue is let in alone, when nothing else waits)."""
        tokens = sum(len(e.ids) for e in encodings)
        future: Future = Future()
        if not encodings:
            future.set_result([])
            return future
        with self._cond:
            if self._closed:
                raise RuntimeError("the batcher is closed")
            if self._queued_tokens and self._queued_tokens + tokens > self.max_queue_tokens:
                rate = self._tokens_per_s or 1000.0
                raise Overloaded(self._queued_tokens, self.max_queue_tokens,
                                 max(1.0, self._queued_tokens / rate))
            self._pending.append(_Request(encodings, future, tokens, [None] * len(encodings), len(encodings)))
            self._queued_tokens += tokens
            self._cond.notify()
        return future

    def close(self, timeout: float = 10.0) -> None:
        """Stop after the round in progress; requests still waiting get RuntimeError."""
        with self._cond:
            self._closed = True
            waiting, self._pending = self._pending, []
            self._cond.notify()
        for r in waiting:
            r.future.set_exception(RuntimeError("the server is shutting down — retry on another replica"))
        self._thread.join(timeout)

    def plan(self, lengths: Sequence[int]) -> list[list[int]]:
        """Batches of indices into `lengths`: sorted by length, each within max_batch_size and max_batch_tokens, cut
        where cheapest when overhead_tokens is known (plan_batches)."""
        return plan_batches(lengths, self.max_batch_size, self.max_batch_tokens, self.overhead_tokens)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed:
                    return
                requests, self._pending = self._pending, []
            self._round(requests)

    def _round(self, requests: list[_Request]) -> None:
        units = [(r, j) for r in requests for j in range(len(r.encodings))]
        lengths = [len(r.encodings[j].ids) for r, j in units]
        start = time.perf_counter()
        for batch in self.plan(lengths):
            chunk = [units[k] for k in batch]
            try:
                results = self.run([r.encodings[j] for r, j in chunk])
                if len(results) != len(chunk):
                    raise RuntimeError(f"the model returned {len(results)} results for {len(chunk)} texts")
            except BaseException as exc:  # noqa: BLE001 - every request of the batch gets the error, never a row
                for r in {id(r): r for r, _ in chunk}.values():
                    if not r.future.done():
                        r.future.set_exception(exc)
                results = None
            self.stats.batches += 1
            self.stats.texts += len(chunk)
            self.stats.requests += len({id(r) for r, _ in chunk})
            self.stats.padded_tokens += len(chunk) * max(lengths[k] for k in batch)
            self.stats.real_tokens += sum(lengths[k] for k in batch)
            for (r, j), value in zip(chunk, results or [None] * len(chunk)):
                if results is None:
                    continue
                r.rows[j] = value
                r.left -= 1
                if r.left == 0 and not r.future.done():
                    r.future.set_result(r.rows)
        spent = time.perf_counter() - start
        done = sum(r.tokens for r in requests)
        self.stats.rounds += 1
        self.stats.busy_s += spent
        if spent > 0:
            rate = done / spent
            self._tokens_per_s = rate if not self._tokens_per_s else 0.8 * self._tokens_per_s + 0.2 * rate
        with self._cond:
            self._queued_tokens -= done
