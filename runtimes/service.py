"""What `bertship serve` answers, without the web framework: one artifact loaded once, requests parsed and checked,
tokenized in the handler, run by a TokenBatcher (runtimes/batcher.py) and shaped into JSON. Ray Serve and FastAPI
(runtimes/server.py) only carry bytes to `Service.call` and its Reply back, so every status code here is tested
without a server.

Endpoints (POST, JSON bodies; docs/serving.md has the schemas):
    /v1/embeddings     OpenAI-compatible: input (str or list), model, encoding_format float|base64, dimensions
    /v1/embed_sparse   SPLADE: input, top_k                       -> data[{index, indices, values}]
    /v1/embed_multi    ColBERT-style: input                       -> data[{index, embeddings: [[...], ...]}]
    /v1/classify       input, pairs, top_k                        -> data[{index, label, score} | {index, labels}]
                                                                     (+ exit_layer for an early-exit artifact)
    /v1/rerank         query, documents, top_n, return_documents  -> results[{index, relevance_score, document}]
    /v1/answer         question, context (str or equal lists)     -> data[{index, answer, score, start, end}]
    /v1/tag            input                                      -> data[{index, entities: [...]}]
Every body may carry truncation "truncate" (default: the server's) or "error" (an over-long text is a 422).

Status codes: 200; 400 the body is not UTF-8 JSON object; 404 no such endpoint, or not this artifact's task; 413 too
many texts, tokens or bytes; 422 a field of the wrong type or value, an empty input, an over-long text under
truncation "error"; 500 the model failed (the request gets no rows); 503 the queue is full (Retry-After). Errors are
{"error": {"message", "type", "code"}} as OpenAI's API writes them.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from . import tasks
from .batcher import Overloaded, TokenBatcher
from .errors import UsageError

ENDPOINTS = {  # path -> the tasks it serves
    "/v1/embeddings": ("sentence-embedding", "feature-extraction"),
    "/v1/embed_sparse": ("sparse-embedding",),
    "/v1/embed_multi": ("multi-vector",),
    "/v1/classify": ("sequence-classification",),
    "/v1/rerank": ("rerank",),
    "/v1/answer": ("question-answering",),
    "/v1/tag": ("token-classification",),
}


INLINE_TEXTS = 16  # requests of up to this many texts are tokenized on the event loop, larger ones on a thread


@dataclass(frozen=True)
class Limits:
    """What one request and one replica may hold; past them a request gets 413 (too big) or 503 (queue full)."""

    max_texts: int = 2048  # OpenAI's own limit on an embeddings request's inputs
    max_request_tokens: int = 65536
    max_body_bytes: int = 16 * 2**20
    max_batch_tokens: int = 8192  # texts × longest per model run
    max_batch_size: int = 32
    max_queue_tokens: int = 131072  # per replica, waiting and running


@dataclass
class Reply:
    status: int
    body: dict[str, Any]
    headers: dict[str, str] = field(default_factory=dict)

    def json(self) -> bytes:
        return json.dumps(self.body, separators=(",", ":")).encode("utf-8")


class RequestError(Exception):
    """A request the service refuses: its HTTP status and a one-line message naming the fix."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error"):
        self.status, self.kind = status, kind
        super().__init__(message)


def error_reply(status: int, message: str, kind: str = "invalid_request_error",
                headers: dict[str, str] | None = None) -> Reply:
    return Reply(status, {"error": {"message": message, "type": kind, "code": status}}, headers or {})


class Service:
    """One loaded artifact answering requests; `call` is safe from many coroutines, the model runs on one thread."""

    def __init__(self, model, name: str | None = None, limits: Limits = Limits(), truncation: str = "truncate"):
        self.model = model
        self.task: str = model.task
        self.name = name or Path(model.root).name
        self.limits = limits
        self.truncation = tasks_truncation(truncation)
        self.settings = model.manifest["task"]
        self.batcher = TokenBatcher(self._run, limits.max_batch_tokens, limits.max_batch_size,
                                    limits.max_queue_tokens, overhead_tokens=model.batch_overhead_tokens)
        self.handlers: dict[str, Callable] = {
            "/v1/embeddings": self._embeddings, "/v1/embed_sparse": self._embed_sparse,
            "/v1/embed_multi": self._embed_multi, "/v1/classify": self._classify, "/v1/rerank": self._rerank,
            "/v1/answer": self._answer, "/v1/tag": self._tag}

    def endpoint(self) -> str:
        return endpoint_for(self.task)

    def ready(self) -> bool:
        return self.batcher.alive()

    def describe(self) -> dict[str, Any]:
        return {"model": self.name, "task": self.task, "endpoint": self.endpoint(), "backend": self.model.backend,
                "precision": self.model.precision, "max_length": self.model.max_length,
                "queued_tokens": self.batcher.queued_tokens, "batching": self.batcher.stats.as_dict()}

    def close(self) -> None:
        self.batcher.close()

    async def call(self, path: str, body: bytes) -> Reply:
        """Answer one POST: the reply, never an exception (a bug is a 500 naming it)."""
        try:
            if path not in ENDPOINTS:
                raise RequestError(404, f"no endpoint {path} — this server answers POST {self.endpoint()}")
            if self.task not in ENDPOINTS[path]:
                raise RequestError(404, f"{path} serves {' or '.join(ENDPOINTS[path])} models, but this one is "
                                        f"{self.task} — use POST {self.endpoint()}")
            if len(body) > self.limits.max_body_bytes:
                raise RequestError(413, f"the body is {len(body)} bytes (limit {self.limits.max_body_bytes}) — "
                                        "split the request", "request_too_large")
            return Reply(200, await self.handlers[path](parse_body(body)))
        except RequestError as exc:
            return error_reply(exc.status, str(exc), exc.kind)
        except Overloaded as exc:
            return error_reply(503, str(exc), "overloaded", {"Retry-After": str(math.ceil(exc.retry_after))})
        except UsageError as exc:  # from the runtime's own checks (truncation="error", prompts, dimensions)
            return error_reply(422, str(exc))
        except Exception as exc:  # noqa: BLE001 - the model or a bug: the request gets no rows, the server goes on
            return error_reply(500, f"{type(exc).__name__}: {exc}", "server_error")

    # --- the model thread --------------------------------------------------------------------------------------

    def _run(self, encodings: list[Any]) -> list[Any]:
        """One padded batch through the runner; per text, the row(s) its task's answer is made from."""
        feeds = self.model.tokenizer.pad(encodings)
        if self.model.exits is not None:  # an early-exit classifier: each text leaves at its off-ramp, and the batch
            logits, layers = self.model.runner.run_exits(feeds, self.model.exits["rule"])  # shrinks as they do
            return [(row, int(layer)) for row, layer in zip(logits, layers)]
        outs = self.model.runner.run(feeds)
        lengths = feeds["attention_mask"].sum(1)
        task = self.task
        if task == "feature-extraction":
            return list(tasks.mean_pool(outs["last_hidden_state"], feeds["attention_mask"]))
        if task == "sentence-embedding":
            return list(outs["sentence_embedding"])
        if task == "rerank":
            return [float(s) for s in outs["scores"][:, 0]]
        if task in ("sequence-classification", "sparse-embedding"):
            return list(outs["logits" if task == "sequence-classification" else "sparse_embedding"])
        if task == "multi-vector":
            return [np.array(outs["token_embeddings"][r, :n], np.float32) for r, n in enumerate(lengths)]
        if task == "question-answering":
            return [(outs["start_logits"][r, :n], outs["end_logits"][r, :n]) for r, n in enumerate(lengths)]
        return [outs["logits"][r, :n] for r, n in enumerate(lengths)]  # token-classification

    async def _rows(self, texts: list[str], pairs: list[str] | None, body: dict[str, Any]
                    ) -> tuple[list[Any], int, list[Any]]:
        """Tokenize (here, off the model thread), check the request's size, queue it; (rows, tokens, encodings)."""
        if len(texts) > self.limits.max_texts:
            raise RequestError(413, f"{len(texts)} texts in one request (limit {self.limits.max_texts}) — split it",
                               "request_too_large")
        truncation = tasks_truncation(body.get("truncation", self.truncation), "truncation")
        tokenize = self.model.tokenizer.tokenize
        # a few texts tokenize in microseconds: a thread hop would cost more; many would hold up other requests
        encodings = (tokenize(texts, pairs, truncation=truncation) if len(texts) <= INLINE_TEXTS
                     else await asyncio.to_thread(tokenize, texts, pairs, truncation=truncation))
        tokens = sum(len(e.ids) for e in encodings)
        if tokens > self.limits.max_request_tokens:
            raise RequestError(413, f"{tokens} tokens in one request (limit {self.limits.max_request_tokens}) — "
                                    "split it", "request_too_large")
        rows = await asyncio.wrap_future(self.batcher.submit(encodings))
        return rows, tokens, encodings

    # --- endpoints ---------------------------------------------------------------------------------------------

    async def _embeddings(self, body: dict[str, Any]) -> dict[str, Any]:
        texts = input_texts(body, "input")
        fmt = choice(body, "encoding_format", ("float", "base64"), "float")
        dims = optional_int(body, "dimensions")
        texts = tasks.with_prompt(self.settings, texts, optional_str(body, "prompt_name"), optional_str(body, "prompt"))
        rows, tokens, _ = await self._rows(texts, None, body)
        vectors = tasks.truncate_dims(np.stack(rows).astype(np.float32), dims if dims is not None else
                                      self.settings.get("dimensions"), bool(self.settings.get("normalize")))
        data = [{"object": "embedding", "index": i,
                 "embedding": base64.b64encode(v.astype("<f4").tobytes()).decode("ascii") if fmt == "base64"
                 else v.tolist()} for i, v in enumerate(vectors)]
        return {"object": "list", "data": data, "model": self.name, "usage": usage(tokens)}

    async def _embed_sparse(self, body: dict[str, Any]) -> dict[str, Any]:
        texts = tasks.with_prompt(self.settings, input_texts(body, "input"), optional_str(body, "prompt_name"),
                                  optional_str(body, "prompt"))
        top_k = optional_int(body, "top_k")
        rows, tokens, _ = await self._rows(texts, None, body)
        vectors = tasks.sparse_rows(np.stack(rows), top_k)
        return {"object": "list", "model": self.name, "usage": usage(tokens),
                "data": [{"index": i, "indices": v.indices.tolist(), "values": v.values.tolist()}
                         for i, v in enumerate(vectors)]}

    async def _embed_multi(self, body: dict[str, Any]) -> dict[str, Any]:
        texts = tasks.with_prompt(self.settings, input_texts(body, "input"), optional_str(body, "prompt_name"),
                                  optional_str(body, "prompt"))
        rows, tokens, _ = await self._rows(texts, None, body)
        return {"object": "list", "model": self.name, "usage": usage(tokens),
                "data": [{"index": i, "embeddings": m.tolist()} for i, m in enumerate(rows)]}

    async def _classify(self, body: dict[str, Any]) -> dict[str, Any]:
        texts = input_texts(body, "input")
        pairs = input_texts(body, "pairs") if body.get("pairs") is not None else None
        if pairs is not None and len(pairs) != len(texts):
            raise RequestError(422, f"got {len(texts)} inputs but {len(pairs)} pairs — pass one pair per input")
        top_k = optional_int(body, "top_k") or 1
        rows, tokens, _ = await self._rows(texts, pairs, body)
        exits = [layer for _, layer in rows] if self.model.exits is not None else None
        logits = np.stack([row for row, _ in rows] if exits is not None else rows)
        best = tasks.top_labels(logits, tasks.label_names(self.settings, logits.shape[-1]), top_k)
        data = [{"index": i, **b[0]} if top_k == 1 else {"index": i, "labels": b} for i, b in enumerate(best)]
        if exits is not None:
            for item, layer in zip(data, exits):
                item["exit_layer"] = layer
        return {"object": "list", "model": self.name, "usage": usage(tokens), "data": data}

    async def _rerank(self, body: dict[str, Any]) -> dict[str, Any]:
        query = required_str(body, "query")
        documents = input_texts(body, "documents")
        top_n = optional_int(body, "top_n")
        keep = body.get("return_documents", False)
        if not isinstance(keep, bool):
            raise RequestError(422, f"return_documents must be true or false, got {keep!r}")
        rows, tokens, _ = await self._rows([query] * len(documents), documents, body)
        scores = np.array(rows, dtype=np.float32)
        order = np.argsort(-scores, kind="stable")[:top_n]
        results = [{"index": int(i), "relevance_score": float(scores[i]), **({"document": documents[i]} if keep else {})}
                   for i in order]
        return {"object": "list", "model": self.name, "usage": usage(tokens), "results": results}

    async def _answer(self, body: dict[str, Any]) -> dict[str, Any]:
        single = isinstance(body.get("question"), str) and isinstance(body.get("context"), str)
        questions = [required_str(body, "question")] if single else input_texts(body, "question")
        contexts = [required_str(body, "context")] if single else input_texts(body, "context")
        if len(questions) != len(contexts):
            raise RequestError(422, f"got {len(questions)} questions but {len(contexts)} contexts — pass one each")
        longest = optional_int(body, "max_answer_tokens") or 30
        rows, tokens, encodings = await self._rows(questions, contexts, body)
        data = [{"index": i, **tasks.best_span(start, end, encodings[i], contexts[i], longest)}
                for i, (start, end) in enumerate(rows)]
        return {"object": "list", "model": self.name, "usage": usage(tokens), "data": data}

    async def _tag(self, body: dict[str, Any]) -> dict[str, Any]:
        texts = input_texts(body, "input")
        rows, tokens, encodings = await self._rows(texts, None, body)
        labels = tasks.label_names(self.settings, rows[0].shape[-1])
        return {"object": "list", "model": self.name, "usage": usage(tokens),
                "data": [{"index": i, "entities": tasks.word_tags(r, encodings[i], texts[i], labels)}
                         for i, r in enumerate(rows)]}


def endpoint_for(task: str) -> str:
    """The POST endpoint that serves an artifact of this task."""
    return next(p for p, served in ENDPOINTS.items() if task in served)


# --- request parsing: each returns the value or raises RequestError naming the field ------------------------------

def parse_body(body: bytes) -> dict[str, Any]:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"the body is not UTF-8 (byte {exc.start}) — send JSON encoded as UTF-8") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise RequestError(400, f"the body is not JSON ({exc.msg} at character {exc.pos}) — send a JSON object") from None
    if not isinstance(value, dict):
        raise RequestError(400, f"the body is a JSON {type(value).__name__}, not an object — send {{\"input\": ...}}")
    return value


def input_texts(body: dict[str, Any], key: str) -> list[str]:
    value = body.get(key)
    if value is None:
        raise RequestError(422, f"{key!r} is missing — pass a string or a list of strings")
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list):
        raise RequestError(422, f"{key!r} is a {type(value).__name__} — pass a string or a list of strings")
    if not value:
        raise RequestError(422, f"{key!r} is an empty list — pass at least one string")
    bad = next((i for i, t in enumerate(value) if not isinstance(t, str)), None)
    if bad is not None:
        raise RequestError(422, f"{key}[{bad}] is {type(value[bad]).__name__}, not a string — this server takes text, "
                                "not token ids")
    return value


def required_str(body: dict[str, Any], key: str) -> str:
    value = body.get(key)
    if not isinstance(value, str):
        raise RequestError(422, f"{key!r} must be a string, got {type(value).__name__}")
    return value


def optional_str(body: dict[str, Any], key: str) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise RequestError(422, f"{key!r} must be a string, got {type(value).__name__}")
    return value


def optional_int(body: dict[str, Any], key: str) -> int | None:
    value = body.get(key)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise RequestError(422, f"{key!r} must be a positive integer, got {value!r}")
    return value


def choice(body: dict[str, Any], key: str, allowed: tuple[str, ...], default: str) -> str:
    value = body.get(key, default)
    if value not in allowed:
        raise RequestError(422, f"{key!r} must be one of {', '.join(allowed)}, got {value!r}")
    return value


def tasks_truncation(value: Any, key: str = "--truncation") -> str:
    if value not in ("truncate", "error"):
        raise RequestError(422, f"{key} must be 'truncate' or 'error', got {value!r}")
    return value


def usage(tokens: int) -> dict[str, int]:
    return {"prompt_tokens": tokens, "total_tokens": tokens}
