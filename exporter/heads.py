"""What runs after the transformer inside the exported graph, written in torch ops as sentence-transformers computes it:
pooling (every mode), Dense projections, normalization, a CrossEncoder's score activation, SPLADE's sparse pooling and
per-token (ColBERT-style) vectors. The same module makes the reference outputs, so the gate compares the runtime with
exactly this; tests compare it with sentence-transformers' own encode/predict on the same folder.
"""

from __future__ import annotations

from typing import Any


def pool(hidden, mask, mode: str, normalize: bool = False):
    """Sentence-transformers' Pooling over real tokens (modes joined by "+" are concatenated), then optional L2."""
    import torch

    m = mask.unsqueeze(-1).to(hidden.dtype)
    parts = []
    for one in mode.split("+"):
        if one in ("mean", "mean_sqrt_len_tokens"):
            count = m.sum(1).clamp(min=1e-9)
            parts.append((hidden * m).sum(1) / (count if one == "mean" else count.sqrt()))
        elif one == "max":
            parts.append(hidden.masked_fill(m == 0, -1e9).max(1).values)
        elif one == "cls":
            parts.append(hidden[:, 0])
        elif one == "weightedmean":
            w = m * torch.arange(1, hidden.shape[1] + 1, dtype=hidden.dtype).view(1, -1, 1)
            parts.append((hidden * w).sum(1) / w.sum(1).clamp(min=1e-9))
        elif one == "lasttoken":  # the last real token of a right-padded row
            last = (mask.to(torch.int64).sum(1) - 1).clamp(min=0)
            parts.append(hidden[torch.arange(hidden.shape[0]), last])
        else:
            raise ValueError(one)
    emb = parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)
    return torch.nn.functional.normalize(emb, p=2.0, dim=-1) if normalize else emb


def splade(logits, mask, strategy: str, activation: str):
    """SPLADE pooling: log(1 + ReLU(logits)) on real tokens (twice the log for log1p_relu), max or sum over tokens."""
    x = (logits * mask.unsqueeze(-1).to(logits.dtype)).relu().log1p()
    if activation == "log1p_relu":
        x = x.log1p()
    return x.max(1).values if strategy == "max" else x.sum(1)


def score_activation(logits, name: str):
    """A CrossEncoder's activation on its single logit: the scores predict() returns."""
    import torch

    return getattr(torch.nn, name)()(logits)


def task_outputs(source: Any, dense: Any, out: Any, feeds: dict[str, Any]):
    """The task's graph outputs from the transformers model's output `out` (dense: the Dense modules, in order)."""
    import torch

    task, settings = source.task.name, source.settings
    mask = feeds["attention_mask"]
    if task == "sentence-embedding":
        emb = pool(out[0], mask, source.pooling)
        for layer in dense:
            emb = layer(emb)
        return torch.nn.functional.normalize(emb, p=2.0, dim=-1) if source.normalize else emb
    if task == "rerank":
        return score_activation(out["logits"], settings.get("activation", "Identity"))
    if task == "sparse-embedding":
        return splade(out["logits"], mask, *settings["splade"])
    if task == "multi-vector":
        vectors = out[0]
        for layer in dense:
            vectors = layer(vectors)
        if source.normalize:
            vectors = torch.nn.functional.normalize(vectors, p=2.0, dim=-1)
        return vectors * mask.unsqueeze(-1).to(vectors.dtype)
    return tuple(out[o.name] for o in source.task.outputs)
