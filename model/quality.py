"""Click-model quality on a held-out split: exact rank-based ROC AUC (ties averaged), accuracy, log loss."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["LOGLOSS_EPS", "Quality", "accuracy", "log_loss", "quality", "roc_auc"]

LOGLOSS_EPS = 1e-7  # probabilities are clipped to [eps, 1 - eps]: a float32 sigmoid reaches 0 and 1 exactly


def _as_arrays(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(labels, dtype=np.float64).ravel()
    p = np.asarray(scores, dtype=np.float64).ravel()
    if y.shape != p.shape:
        raise ValueError(f"labels and scores differ in length: {y.size} vs {p.size}")
    if not np.all(np.isfinite(p)):
        raise ValueError("scores contain NaN or infinity")
    return y, p


def roc_auc(labels: Any, scores: Any) -> float:
    """Exact ROC AUC by ranks (Mann-Whitney U): the chance a random positive outscores a random negative.

    Tied scores get their average rank, so a tie between a positive and a negative counts one half.
    A label is positive when it is above 0.5 (0/1 labels, or soft ones rounded as the reference does).

    Args:
        labels: (N,) targets in [0, 1].
        scores: (N,) predicted scores; only their order matters.
    Returns:
        AUC in [0, 1]; NaN when the labels hold only one class (AUC is undefined then).
    """
    y, p = _as_arrays(labels, scores)
    pos = y > 0.5
    n_pos = int(pos.sum())
    n_neg = y.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    order = np.argsort(p, kind="mergesort")
    sorted_p = p[order]
    # average rank (1-based) of each run of equal scores
    starts = np.flatnonzero(np.r_[True, sorted_p[1:] != sorted_p[:-1]])
    ends = np.r_[starts[1:], sorted_p.size]  # exclusive
    run_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(p.size, dtype=np.float64)
    ranks[order] = np.repeat(run_rank, ends - starts)
    u = ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def accuracy(labels: Any, scores: Any) -> float:
    """Share of samples whose rounded probability equals the rounded label (0.5 rounds down, as np.round)."""
    y, p = _as_arrays(labels, scores)
    if y.size == 0:
        return math.nan
    return float(np.mean((p > 0.5) == (y > 0.5)))


def log_loss(labels: Any, scores: Any) -> float:
    """Mean binary cross-entropy of probabilities `scores`, clipped to [LOGLOSS_EPS, 1 - LOGLOSS_EPS]."""
    y, p = _as_arrays(labels, scores)
    if y.size == 0:
        return math.nan
    p = np.clip(p, LOGLOSS_EPS, 1.0 - LOGLOSS_EPS)
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


@dataclass(frozen=True)
class Quality:
    """Metrics of one evaluation; `to_dict` writes NaN (undefined AUC) as None, which JSON can hold."""

    auc: float
    accuracy: float
    logloss: float
    samples: int

    def to_dict(self) -> dict[str, Any]:
        def clean(x: float) -> float | None:
            return None if math.isnan(x) else x

        return {
            "auc": clean(self.auc),
            "accuracy": clean(self.accuracy),
            "logloss": clean(self.logloss),
            "samples": self.samples,
        }

    def line(self) -> str:
        return (
            f"auc {self.auc:.4f}, accuracy {100 * self.accuracy:.3f} %, "
            f"logloss {self.logloss:.6f}, {self.samples} samples"
        )


def quality(labels: Any, scores: Any) -> Quality:
    """All three metrics at once.

    Args:
        labels: (N,) targets in [0, 1].
        scores: (N,) predicted click probabilities.
    Returns:
        Quality(auc, accuracy, logloss, samples).
    """
    y, p = _as_arrays(labels, scores)
    return Quality(roc_auc(y, p), accuracy(y, p), log_loss(y, p), int(y.size))
