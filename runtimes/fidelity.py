"""Output comparison shared by the export gate and `verify`: numpy only, so any machine can re-check an artifact.

Each output of the signature says which axes it has; positions past a sample's attention mask are excluded, since
padding positions carry no meaning and differ legitimately between runtimes.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Tolerance:
    """Limits one output must meet: max |diff| on valid positions (None: not judged, as for quantized recipes),
    minimum per-sample cosine, and argmax agreement on positions whose reference top-2 margin exceeds argmax_margin.

    Two limits judge each text's vector as the artifact is used (see `text_vectors`), None where not judged:
    min_text_cosine, the lowest cosine any text may have against the reference, alone or batched (`--min-cosine`);
    min_batch_cosine, the lowest cosine between a text run alone and the same text run among other texts (batch
    invariance: an embedding must not depend on its batch-mates or on padding)."""

    max_abs_diff: float | None
    min_cosine: float
    min_argmax_agreement: float = 1.0
    argmax_margin: float = 1e-3
    min_text_cosine: float | None = None
    min_batch_cosine: float | None = None
    min_rank_agreement: float | None = None  # retrieval tasks: runtimes.retrieval (--min-rank-agreement)


@dataclass(frozen=True)
class OutputCheck:
    """What one output of one backend measured against the reference, and whether it passed."""

    output: str
    max_abs_diff: float
    cosine_min: float
    cosine_mean: float
    argmax_agreement: float | None  # None when the output has no argmax meaning, or nothing was decisive
    decisive: int  # positions whose reference top-2 margin was large enough to judge argmax on
    failures: tuple[str, ...]

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _valid_mask(axes: list[str], mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """Boolean array broadcastable to `shape`: True where the value belongs to a real (non-padding) token."""
    if len(axes) >= 2 and axes[1] == "sequence":
        m = mask.astype(bool)[:, : shape[1]]
        return m.reshape(m.shape + (1,) * (len(shape) - 2))
    return np.ones((shape[0],) + (1,) * (len(shape) - 1), dtype=bool)


def compare(
    name: str,
    axes: list[str],
    argmax: str | None,
    refs: list[np.ndarray],
    gots: list[np.ndarray],
    masks: list[np.ndarray],
    tol: Tolerance,
) -> OutputCheck:
    """Compare one output over several padded batches. `argmax` is None, 'labels' (last axis) or 'sequence'."""
    max_diff = 0.0
    cosines: list[float] = []
    agree = decisive = 0
    failures: list[str] = []
    for ref, got, mask in zip(refs, gots, masks):
        ref = np.asarray(ref, dtype=np.float64)
        got = np.asarray(got, dtype=np.float64)
        if ref.shape != got.shape:
            failures.append(f"{name}: shape {got.shape} != reference {ref.shape}")
            continue
        valid = np.broadcast_to(_valid_mask(axes, mask, ref.shape), ref.shape)
        if not np.isfinite(got[valid]).all():
            failures.append(f"{name}: non-finite values")
            continue
        max_diff = max(max_diff, float(np.abs(ref - got)[valid].max(initial=0.0)))
        # A few class logits per sample have no direction to compare (an undecided sample's logits sit near 0 and
        # flip sign under tiny changes); their cosine is taken over the whole batch, and argmax judges each sample.
        rows = [(ref[valid], got[valid])] if list(axes) == ["batch", "labels"] else \
            [(ref[i][valid[i]], got[i][valid[i]]) for i in range(ref.shape[0])]
        for r, g in rows:
            denom = np.linalg.norm(r) * np.linalg.norm(g)
            cosines.append(1.0 if denom == 0 and np.array_equal(r, g) else float(r @ g / denom) if denom else 0.0)
        if argmax is not None:
            a, d = _argmax_agreement(ref, got, mask, argmax, margin=tol.argmax_margin)
            agree += a
            decisive += d
    cos_min = min(cosines) if cosines else 0.0
    cos_mean = float(np.mean(cosines)) if cosines else 0.0
    agreement = agree / decisive if decisive else None
    if tol.max_abs_diff is not None and max_diff > tol.max_abs_diff:
        failures.append(f"{name}: max|diff| {max_diff:.3g} > {tol.max_abs_diff:.3g}")
    if cos_min < tol.min_cosine:
        failures.append(f"{name}: min cosine {cos_min:.6f} < {tol.min_cosine}")
    if agreement is not None and agreement < tol.min_argmax_agreement:
        failures.append(f"{name}: argmax agreement {agreement:.4f} < {tol.min_argmax_agreement}")
    return OutputCheck(name, max_diff, cos_min, cos_mean, agreement, decisive, tuple(failures))


def _argmax_agreement(ref, got, mask, kind: str, margin: float) -> tuple[int, int]:
    """(agreeing, decisive) argmax counts; a position is decisive when the reference's top two differ by > margin."""
    if kind == "sequence":  # QA span logits [batch, sequence]: argmax over each sample's real tokens
        pad = np.where(mask.astype(bool)[:, : ref.shape[1]], 0.0, -np.inf)
        ref, got = ref + pad, got + pad
    elif ref.shape[-1] < 2:  # a single-logit (regression) head has no argmax
        return 0, 0
    top2 = np.sort(ref, axis=-1)[..., -2:]
    ok = (top2[..., 1] - top2[..., 0]) > margin
    same = ref.argmax(axis=-1) == got.argmax(axis=-1)
    if kind == "labels" and ref.ndim == 3:  # token classification: real tokens only
        ok = ok & mask.astype(bool)[:, : ref.shape[1]]
    return int((same & ok).sum()), int(ok.sum())


def text_vectors(task: str, outputs: list[dict[str, Any]], outs: dict[str, np.ndarray], mask: np.ndarray,
                 pooled: bool = False) -> list[np.ndarray]:
    """One float64 vector per text of a batch, as the artifact is used: the sentence embedding; the mean-pooled hidden
    states of a feature-extraction model (what `embed` returns); otherwise every output's values on the text's real
    tokens (or its row of logits), concatenated — or, with `pooled`, their mean over the real tokens (a fixed-size
    summary, small enough to store for every sequence length). A multi-vector text stays its [tokens, dim] matrix
    unpooled: what MaxSim reads is each token's vector, and `cosines` judges each of them."""
    if task == "sentence-embedding":
        return list(np.asarray(outs["sentence_embedding"], dtype=np.float64))
    if task == "feature-extraction":
        hidden = np.asarray(outs["last_hidden_state"], dtype=np.float64)
        m = mask.astype(np.float64)[:, : hidden.shape[1], None]
        return list((hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9))
    if task == "multi-vector" and not pooled:
        tokens = np.asarray(outs[outputs[0]["name"]], dtype=np.float64)
        return [tokens[i, :n] for i, n in enumerate(mask.astype(bool).sum(1))]
    rows = []
    lengths = mask.astype(bool).sum(1)
    for i in range(mask.shape[0]):
        parts = []
        for spec in outputs:
            value = np.asarray(outs[spec["name"]][i], dtype=np.float64)
            if len(spec["axes"]) > 1 and spec["axes"][1] == "sequence":
                value = value[: lengths[i]].mean(0) if pooled else value[: lengths[i]]
            parts.append(value.ravel())
        rows.append(np.concatenate(parts))
    return rows


def cosines(a: list[np.ndarray], b: list[np.ndarray]) -> np.ndarray:
    """Cosine of each pair of vectors (1.0 for two equal zero vectors, 0.0 for one zero vector). A pair of [tokens,
    dim] matrices (a multi-vector text) gets its lowest row's cosine; matrices of different shapes get 0.0."""
    out = np.empty(len(a))
    for i, (x, y) in enumerate(zip(a, b)):
        if np.ndim(x) == 2 or np.ndim(y) == 2:
            out[i] = token_cosines(x, y).min(initial=1.0) if np.shape(x) == np.shape(y) else 0.0
            continue
        denom = np.linalg.norm(x) * np.linalg.norm(y)
        out[i] = 1.0 if denom == 0 and np.array_equal(x, y) else float(x @ y / denom) if denom else 0.0
    return out


def token_cosines(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """The cosine of each row of x with the same row of y (1.0 for two equal zero rows, 0.0 for one zero row)."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    nx, ny = np.linalg.norm(x, axis=-1), np.linalg.norm(y, axis=-1)
    denom = nx * ny
    same_zero = (nx == 0) & (ny == 0)
    return np.where(denom > 0, (x * y).sum(-1) / np.where(denom > 0, denom, 1.0), np.where(same_zero, 1.0, 0.0))


def tail(values: np.ndarray, texts: list[str], worst: int = 5) -> dict[str, Any]:
    """The low tail of per-text cosines: minimum, 1st percentile, mean, and the `worst` lowest texts."""
    order = np.argsort(values, kind="stable")[:worst]
    return {"texts": len(values), "cosine_min": float(values.min()), "cosine_p1": float(np.percentile(values, 1)),
            "cosine_mean": float(values.mean()),
            "worst": [{"text": texts[i], "cosine": float(values[i])} for i in order]}
