"""Golden inputs (the shipped sentences, batched with padding) and the PyTorch reference outputs on them."""

from __future__ import annotations

import itertools
from importlib import resources

import numpy as np

from .load import Source
from .to_onnx import graph_module

BATCH = 8  # several lengths per batch, so every batch exercises the attention mask on padding


def _lines(name: str) -> list[str]:
    text = resources.files("bertship.exporter").joinpath(f"data/{name}").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def sentences() -> list[str]:
    """The few dozen varied English sentences of mixed lengths that every export is checked on."""
    return _lines("sentences.txt")


def short_texts() -> list[str]:
    """Texts of one to four words, questions, heavy punctuation and emoji: what search queries look like, and where
    int8 hurts most (their pooled vectors are dominated by the special tokens, which carry the outlier channels)."""
    return _lines("short.txt")


RANK_DOCS = 8  # a reranker's golden batches: one query each, with this many candidate documents


def ranking_pairs() -> tuple[list[str], list[str]]:
    """(queries, documents) for a reranker: the shipped questions and every short text as queries (30), each beside
    RANK_DOCS of the sentences (a different run of them per query), so the gate can check each query's order. Eight
    queries proved too few: an int8 reranker that kept all 7 decisive golden queries changed 3 of 32 decisive
    held-out ones (benchmarks/results/retrieval.md)."""
    long, short = sentences(), short_texts()
    queries = [s for s in long if s.endswith("?")] + short
    texts, pairs = [], []
    for q, query in enumerate(queries):
        for d in range(RANK_DOCS):
            texts.append(query)
            pairs.append(long[(q * 5 + d) % len(long)])
    return texts, pairs


def golden_texts(source: Source) -> tuple[list[str], list[str] | None]:
    """The sentences with a short text after every second one (so every golden batch mixes lengths), and second texts
    for pair tasks (each text paired with the next one); for a reranker, queries with candidate documents."""
    if source.task.name == "rerank":
        return ranking_pairs()
    long, short = sentences(), short_texts()
    texts = []
    for i, sentence in enumerate(long):
        texts.append(sentence)
        if i % 2 == 1 and i // 2 < len(short):
            texts.append(short[i // 2])
    texts += short[len(long) // 2 :]
    texts += long_texts(source)
    if not source.task.text_pairs:
        return texts, None
    return texts, texts[1:] + texts[:1]


def long_texts(source: Source) -> list[str]:
    """For a family with local (sliding-window) attention, two texts that run past the window: about 1.5 windows and
    min(max length, 4 windows) tokens, made of the shipped sentences. Every golden check then covers tokens that see
    only part of the sequence in local layers, batched with short texts (padding past the window); the length sweep
    covers one input of each length up to the max length."""
    attr = getattr(getattr(source, "family", None), "window", "")
    window = getattr(source.model.config, attr, None) if attr else None
    if not window or source.max_length <= window:
        return []
    found = []
    for target in sorted({min(source.max_length, window * 3 // 2), min(source.max_length, 4 * window)}):
        pool, words = itertools.cycle(sentences()), []
        while len(source.tokenizer(" ".join(words), verbose=False)["input_ids"]) < target:
            words.append(next(pool))
        found.append(" ".join(words))
    return found


def golden_feeds(source: Source, texts: list[str], pairs: list[str] | None) -> list[dict[str, np.ndarray]]:
    """Batches tokenized by the source's own (transformers) tokenizer: the reference the bundled one must match."""
    feeds = []
    for start in range(0, len(texts), BATCH):
        batch = texts[start : start + BATCH]
        second = pairs[start : start + BATCH] if pairs else None
        enc = source.tokenizer(
            batch, second, padding="longest", truncation=True, max_length=source.max_length,
            return_token_type_ids=True, return_tensors="np",
        )
        feeds.append({name: np.asarray(enc[name], dtype=np.int64) for name in source.family.inputs})
    return feeds


def reference_outputs(source: Source, feeds: list[dict[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """PyTorch fp32 outputs of the exported graph module on each golden batch."""
    import torch

    module = graph_module(source)
    names = [o.name for o in source.task.outputs]
    refs = []
    with torch.no_grad():
        for feed in feeds:
            out = module(*(torch.from_numpy(feed[n]) for n in source.family.inputs))
            out = out if isinstance(out, tuple) else (out,)
            refs.append({n: t.detach().float().numpy().copy() for n, t in zip(names, out)})
    return refs


SWEEP_BATCH_TOKENS = 4096  # padded tokens per PyTorch pass of the length sweep (longer inputs run alone)
SWEEP_BATCH_SPREAD = 1.25  # the longest input of a pass is at most this much longer than its shortest


def sweep_references(source: Source, feeds: list[dict[str, np.ndarray]], lengths: list[int]) -> np.ndarray:
    """PyTorch fp32 vectors of the length sweep (runtimes.verify.sweep_feeds), one row per length: what every backend
    must reproduce at each of those lengths, each run there as a [1, L] input.

    PyTorch runs them in padded batches of near lengths: each input keeps its own attention mask, so the padding is
    masked out of every real token's attention and its vector is the input's alone up to float rounding (tested
    against one pass per length for every family); one pass per length was most of the load stage's time."""
    import torch

    from bertship.runtimes.fidelity import text_vectors
    from bertship.runtimes.verify import sweep_feeds

    module = graph_module(source)
    names = [o.name for o in source.task.outputs]
    outputs = [o.as_dict() for o in source.task.outputs]
    inputs = sweep_feeds(feeds, lengths)
    pad_id = int(source.tokenizer.pad_token_id)
    rows: list[np.ndarray | None] = [None] * len(inputs)
    with torch.no_grad():
        for group in sweep_batches(lengths):
            longest = max(lengths[i] for i in group)
            batch = {n: np.stack([np.pad(inputs[i][n][0], (0, longest - lengths[i]),
                                         constant_values=pad_id if n == "input_ids" else 0) for i in group])
                     for n in source.family.inputs}
            out = module(*(torch.from_numpy(batch[n]) for n in source.family.inputs))
            out = out if isinstance(out, tuple) else (out,)
            outs = {n: t.detach().float().numpy() for n, t in zip(names, out)}
            for i, row in zip(group, text_vectors(source.task.name, outputs, outs, batch["attention_mask"], pooled=True)):
                rows[i] = row
    return np.stack(rows).astype(np.float32)


def sweep_batches(lengths: list[int]) -> list[list[int]]:
    """Indices of `lengths` grouped into PyTorch passes: ascending, at most SWEEP_BATCH_TOKENS padded tokens and a
    spread of SWEEP_BATCH_SPREAD per pass."""
    groups: list[list[int]] = []
    for i in sorted(range(len(lengths)), key=lambda i: lengths[i]):
        if groups and (len(groups[-1]) + 1) * lengths[i] <= SWEEP_BATCH_TOKENS \
                and lengths[i] <= SWEEP_BATCH_SPREAD * lengths[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups
