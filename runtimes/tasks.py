"""Task-level post-processing on plain numpy: pooling, labels and scores, answer spans, word tags. Torch-free.

Each function works on one batch's outputs (or one row of them) plus the `tokenizers` encodings that produced it, so
`Model` can stream batches through them and put results back in input order.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import numpy as np

from .errors import UsageError

# The task-level method each task answers to; a wrong-task call names the one to use instead.
METHODS: dict[str, str] = {
    "feature-extraction": "embed",
    "sentence-embedding": "embed",
    "sequence-classification": "classify",
    "token-classification": "tag",
    "question-answering": "answer",
    "rerank": "rerank",
    "sparse-embedding": "embed_sparse",
    "multi-vector": "embed_multi",
}


def require_method(task: str, method: str) -> None:
    """Raise UsageError when `method` is not the task-level method of `task`, naming the one that is."""
    if METHODS.get(task) == method:
        return
    needs = " or ".join(t for t, m in METHODS.items() if m == method)
    instead = f"use model.{METHODS[task]}() instead" if task in METHODS else "use model.encode() or model.run()"
    raise UsageError(f"{method}() needs a {needs} artifact, but this one is {task} — {instead}")


def softmax(x: np.ndarray, axis: int = -1) -> np.ndarray:
    """Numerically stable softmax in float64 (scores are reported as Python floats)."""
    z = np.asarray(x, dtype=np.float64)
    z = np.exp(z - z.max(axis=axis, keepdims=True))
    return z / z.sum(axis=axis, keepdims=True)


def mean_pool(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over the real tokens of [batch, sequence, hidden] (mask 1), as sentence-transformers' mean pooling."""
    weights = mask[:, : hidden.shape[1], None].astype(np.float32)
    return (hidden * weights).sum(axis=1) / np.maximum(weights.sum(axis=1), 1e-9)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm (an all-zero row stays zero)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return (x / np.maximum(norms, 1e-12)).astype(x.dtype, copy=False)


def label_names(task: dict[str, Any], count: int) -> list[str]:
    """Label of each class index from the manifest's id2label, LABEL_i where it has none."""
    id2label = task.get("id2label") or {}
    return [str(id2label.get(str(i), f"LABEL_{i}")) for i in range(count)]


def check_top_k(top_k: Any) -> int:
    """top_k as a positive int, or UsageError."""
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
        raise UsageError(f"top_k must be a positive int, got {top_k!r} — pass 1 for the best label only")
    return top_k


def top_labels(logits: np.ndarray, labels: Sequence[str], top_k: int) -> list[list[dict[str, Any]]]:
    """Per row, the top_k {label, score} by softmax score, best first (ties: lower class index first)."""
    probs = softmax(logits)
    order = np.argsort(-probs, axis=-1, kind="stable")[:, :top_k]
    return [[{"label": labels[k], "score": float(p[k])} for k in row] for p, row in zip(probs, order)]


def _trim(text: str, start: int, end: int) -> tuple[int, int]:
    # Metaspace and byte-level tokens carry the space before a word in their offsets.
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def best_span(
    start_logits: np.ndarray, end_logits: np.ndarray, encoding: Any, context: str, max_answer_tokens: int
) -> dict[str, Any]:
    """The most likely answer inside the context: start <= end, at most max_answer_tokens tokens, with char offsets.

    Scores are p(start) * p(end), each a softmax over the context tokens only. A context with no tokens (empty, or
    truncated away) gives {"answer": "", "score": 0.0, "start": 0, "end": 0}.
    """
    positions = np.array([i for i, s in enumerate(encoding.sequence_ids) if s == 1], dtype=np.int64)
    if positions.size == 0:
        return {"answer": "", "score": 0.0, "start": 0, "end": 0}
    p_start = softmax(start_logits[positions])
    p_end = softmax(end_logits[positions])
    # Context tokens are contiguous, so a band over their indices is a band over token positions.
    scores = np.tril(np.triu(np.outer(p_start, p_end)), max_answer_tokens - 1)
    i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
    offsets = encoding.offsets
    start, end = _trim(context, offsets[positions[i]][0], offsets[positions[j]][1])
    return {"answer": context[start:end], "score": float(scores[i, j]), "start": int(start), "end": int(end)}


def word_tags(logits: np.ndarray, encoding: Any, text: str, labels: Sequence[str]) -> list[dict[str, Any]]:
    """One tag per word of `text`, read at the word's first sub-token: {word, label, score, start, end}."""
    words: dict[int, list[int]] = {}  # word id -> [first token, char start, char end], in order of appearance
    for t, (w, seq) in enumerate(zip(encoding.word_ids, encoding.sequence_ids)):
        if w is None or seq != 0:
            continue
        s, e = encoding.offsets[t]
        if w in words:
            words[w][2] = max(words[w][2], e)
        else:
            words[w] = [t, s, e]
    if not words:
        return []
    firsts = [first for first, _, _ in words.values()]
    probs = softmax(logits[firsts])
    best = probs.argmax(axis=-1)
    tags = []
    for row, (_, s, e) in enumerate(words.values()):
        s, e = _trim(text, s, e)
        if s == e:
            continue  # a whitespace-only piece is not a word
        k = int(best[row])
        tags.append({"word": text[s:e], "label": labels[k], "score": float(probs[row, k]), "start": s, "end": e})
    return tags


def with_prompt(settings: dict[str, Any], texts: Sequence[str], prompt_name: str | None, prompt: str | None) -> list[str]:
    """Texts with the prompt prepended, as sentence-transformers' encode does: `prompt` itself, else the artifact's
    prompt called `prompt_name`, else its default prompt (if it names one)."""
    prompts = settings.get("prompts") or {}
    if prompt is not None and prompt_name is not None:
        raise UsageError("pass prompt= or prompt_name=, not both")
    if prompt is None:
        name = prompt_name if prompt_name is not None else settings.get("default_prompt_name")
        if name is not None and name not in prompts:
            raise UsageError(f"this artifact has no prompt {name!r} — its prompts: {sorted(prompts) or 'none'}; or pass "
                             "prompt='...' yourself")
        prompt = prompts.get(name, "") if name is not None else ""
    if not isinstance(prompt, str):
        raise UsageError(f"prompt must be a str, got {type(prompt).__name__}")
    return [prompt + t for t in texts] if prompt else list(texts)


def truncate_dims(vectors: np.ndarray, dimensions: int | None, normalized: bool) -> np.ndarray:
    """The first `dimensions` of each vector (Matryoshka), re-normalized when the artifact's vectors are unit length
    (their cosines are sentence-transformers' truncate_dim cosines)."""
    if dimensions is None:
        return vectors
    if isinstance(dimensions, bool) or not isinstance(dimensions, int) or not 1 <= dimensions <= vectors.shape[-1]:
        raise UsageError(f"dimensions must be an int from 1 to {vectors.shape[-1]}, got {dimensions!r}")
    cut = np.ascontiguousarray(vectors[:, :dimensions])
    return l2_normalize(cut) if normalized else cut


class SparseVector(NamedTuple):
    """One text's sparse embedding: vocabulary ids (ascending) and their weights."""

    indices: np.ndarray  # int64
    values: np.ndarray  # float32


def sparse_rows(rows: np.ndarray, top_k: int | None) -> list[SparseVector]:
    """Each row's non-zero entries (its top_k largest, when given), ids ascending."""
    out = []
    for row in rows:
        idx = np.flatnonzero(row)
        if top_k is not None and idx.size > top_k:
            idx = np.sort(idx[np.argsort(-row[idx], kind="stable")[:top_k]])
        out.append(SparseVector(idx.astype(np.int64), row[idx].astype(np.float32)))
    return out


def maxsim(query: np.ndarray, document: np.ndarray) -> float:
    """ColBERT's late-interaction score: for each query token vector, its best dot product over the document's token
    vectors, summed."""
    return float((np.asarray(query, np.float32) @ np.asarray(document, np.float32).T).max(axis=1).sum())


def maxsim_scores(queries: Sequence[np.ndarray], documents: Sequence[np.ndarray]) -> np.ndarray:
    """[len(queries), len(documents)] MaxSim scores (see `maxsim`)."""
    return np.array([[maxsim(q, d) for d in documents] for q in queries], dtype=np.float32).reshape(
        len(queries), len(documents))
