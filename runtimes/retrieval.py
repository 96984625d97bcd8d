"""The gate's checks of what retrieval users measure, numpy only: the order a reranker gives each query's documents,
the top terms of a sparse (SPLADE) vector, the per-token vectors of a late-interaction (ColBERT) model and the MaxSim
order they give. Each compares the artifact with the PyTorch reference on the golden texts."""

from __future__ import annotations

from typing import Any

import numpy as np

from .fidelity import token_cosines
from .tasks import maxsim

RETRIEVAL_TASKS = ("rerank", "sparse-embedding", "multi-vector")
DECISIVE = 0.05  # a query's top-1 is judged when its reference's top two scores differ by 5 % of its score range
TOP_TERMS = 10  # the sparse check compares each text's 10 heaviest vocabulary terms
QUERIES = 8  # sparse and multi-vector rank every golden text against the first QUERIES of them


def limit_flag(metric: str, max_drop: float | None) -> str:
    """How a search objective's limit was given, for logs and reports: a drop, --min-rank-agreement or --min-cosine."""
    if max_drop is not None:
        return f"{max_drop:.2%} drop"
    return "--min-rank-agreement" if metric == "rank_agreement" else "--min-cosine"


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's tau-a between two score lists of one query (1.0: same order; pairs tied in `a` are skipped)."""
    i, j = np.triu_indices(len(a), 1)
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    judged = da != 0
    return float((da[judged] * db[judged]).mean()) if judged.any() else 1.0


def ranking(groups: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, Any]:
    """Over (reference scores, artifact scores) per query: top-1 agreement on decisive queries, and Kendall's tau."""
    agree = decisive = 0
    taus = []
    for ref, got in groups:
        taus.append(kendall_tau(ref, got))
        top = np.sort(ref)[-2:]
        spread = float(ref.max() - ref.min())
        if len(ref) > 1 and spread > 0 and top[1] - top[0] > DECISIVE * spread:
            decisive += 1
            agree += int(np.argmax(ref) == np.argmax(got))
    return {"queries": len(groups), "decisive": decisive,
            "top1_agreement": agree / decisive if decisive else None,
            "kendall_tau_min": float(min(taus)), "kendall_tau_mean": float(np.mean(taus))}


def rerank_groups(texts: list[str], ref: np.ndarray, got: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The golden pairs grouped by query (their first text), scores of each group in document order."""
    by_query: dict[str, list[int]] = {}
    for i, query in enumerate(texts):
        by_query.setdefault(query, []).append(i)
    return [(ref[idx], got[idx]) for idx in map(np.array, by_query.values()) if len(idx) > 1]


def top_terms_overlap(ref: list[np.ndarray], got: list[np.ndarray], k: int = TOP_TERMS) -> np.ndarray:
    """Per text, the share of the reference's k heaviest terms that are among the artifact's k heaviest."""
    out = []
    for r, g in zip(ref, got):
        n = min(k, int((r > 0).sum()))
        if n == 0:
            out.append(1.0 if not (g > 0).any() else 0.0)
            continue
        top_r = set(np.argsort(-r, kind="stable")[:n].tolist())
        top_g = set(np.argsort(-g, kind="stable")[:n].tolist())
        out.append(len(top_r & top_g) / n)
    return np.array(out)


def score_groups(score, ref: list[np.ndarray], got: list[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """Each of the first QUERIES texts as a query against every other text, scored by `score(query, document)`."""
    groups = []
    for q in range(min(QUERIES, len(ref))):
        docs = [d for d in range(len(ref)) if d != q]
        groups.append((np.array([score(ref[q], ref[d]) for d in docs]), np.array([score(got[q], got[d]) for d in docs])))
    return groups


def retrieval_checks(task: str, texts: list[str], ref: list[np.ndarray], arrangements: list[list[np.ndarray]],
                     limit: float | None) -> tuple[dict[str, Any], list[str]]:
    """The task's own checks on the golden texts: `ref` holds each text's reference vector (text_vectors, unpooled:
    a multi-vector text's [tokens, dim] matrix), `arrangements` the artifact's in each arrangement
    that was run (batched, alone, other batch-mates). Each judged number is the worst over the arrangements; `limit`
    is --min-rank-agreement (None: reported, not judged)."""
    report: dict[str, Any] = {}
    failures: list[str] = []
    if task == "rerank":
        scores = np.array([v[0] for v in ref])
        ranks = [ranking(rerank_groups(texts, scores, np.array([v[0] for v in got]))) for got in arrangements]
        report["ranking"] = _worst(ranks)
    elif task == "sparse-embedding":
        overlap = np.minimum.reduce([top_terms_overlap(ref, got) for got in arrangements])
        report["top_terms"] = {"k": TOP_TERMS, "overlap_min": float(overlap.min()), "overlap_mean": float(overlap.mean()),
                               "worst_text": texts[int(overlap.argmin())]}
        report["ranking"] = _worst([ranking(score_groups(lambda a, b: float(a @ b), ref, got)) for got in arrangements])
        if limit is not None and overlap.mean() < limit:
            failures.append(f"sparse top-{TOP_TERMS} terms: mean overlap with PyTorch {overlap.mean():.4f} < "
                            f"--min-rank-agreement {limit} (lowest {overlap.min():.2f}, text {texts[int(overlap.argmin())]!r})")
    elif task == "multi-vector":
        cos = np.concatenate([token_cosines(np.concatenate(ref), np.concatenate(got)) for got in arrangements])
        report["token_cosine"] = {"tokens": int(len(cos) // len(arrangements)), "cosine_min": float(cos.min()),
                                  "cosine_p1": float(np.percentile(cos, 1))}
        report["ranking"] = _worst([ranking(score_groups(maxsim, ref, got)) for got in arrangements])
    rank = report.get("ranking")
    if limit is not None and rank and rank["top1_agreement"] is not None and rank["top1_agreement"] < limit:
        failures.append(f"ranking: top-1 agreement with PyTorch {rank['top1_agreement']:.4f} < --min-rank-agreement "
                        f"{limit} on {rank['decisive']} decisive queries (Kendall tau min {rank['kendall_tau_min']:.3f})")
    return report, failures


def _worst(ranks: list[dict[str, Any]]) -> dict[str, Any]:
    agreements = [r["top1_agreement"] for r in ranks if r["top1_agreement"] is not None]
    return {**ranks[0], "top1_agreement": min(agreements) if agreements else None,
            "kendall_tau_min": min(r["kendall_tau_min"] for r in ranks),
            "kendall_tau_mean": min(r["kendall_tau_mean"] for r in ranks)}
