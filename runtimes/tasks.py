"""Task-level post-processing on plain numpy: pooling, labels and scores, answer spans, word tags. Torch-free.

Each function works on one batch's outputs (or one row of them) plus the `tokenizers` encodings that produced it, so
`Model` can stream batches through them and put results back in input order.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .errors import UsageError

# The task-level method each task answers to; a wrong-task call names the one to use instead.
METHODS: dict[str, str] = {
    "feature-extraction": "embed",
    "sentence-embedding": "embed",
    "sequence-classification": "classify",
    "token-classification": "tag",
    "question-answering": "answer",
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
