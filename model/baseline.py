"""Logistic regression on the same batches as DLRM: one-hot categoricals + the dense features, L2, L-BFGS.

The baseline DLRM should beat on real data. Each categorical row gets one weight (a one-hot
encoding of every table's row, the same rows DLRM's tables use), each dense feature one
weight (same log(1 + max(x, 0)) transform), plus a bias. Fitted full-batch with L-BFGS on
mean log loss + l2 / 2 * ||w||^2; `fit_logistic_cv` picks l2 on a held-back tail of the
training rows, then refits on all of them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import torch

from model.data import Batch
from model.quality import Quality, quality

__all__ = ["DEFAULT_L2_GRID", "LogisticModel", "fit_logistic", "fit_logistic_cv"]

# per-sample L2 strengths tried by fit_logistic_cv and `dlrmbench baseline`. On the Criteo sample
# (1,280 to 6,400 training rows) the held-back choice is 3e-3 or 1e-2, inside the grid.
DEFAULT_L2_GRID = (1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1)


@dataclass(frozen=True)
class _Design:
    dense: torch.Tensor  # (N, F) float64
    rows: torch.Tensor  # (N, T) rows of the concatenated tables
    labels: torch.Tensor  # (N,) float64


def _design(data: Iterable[Batch], table_rows: Sequence[int]) -> _Design:
    starts = torch.tensor((0, *table_rows), dtype=torch.int64).cumsum(0)[:-1]  # (T,)
    T = len(table_rows)
    dense, rows, labels = [], [], []
    for b in data:
        B = b.batch_size
        if b.indices.numel() != T * B or not torch.equal(b.offsets, torch.arange(T * B + 1)):
            raise ValueError("logistic baseline: needs one lookup per table per sample (one-hot categoricals)")
        rows.append(b.indices.view(T, B).T + starts)  # (B, T)
        dense.append(b.dense.double())
        labels.append(b.labels.double())
    if not labels:
        raise ValueError("logistic baseline: no data")
    return _Design(torch.cat(dense), torch.cat(rows), torch.cat(labels))


class LogisticModel:
    """Fitted weights: one per categorical row, one per dense feature, and a bias."""

    def __init__(self, table_rows: Sequence[int], num_dense: int, l2: float):
        self.table_rows = tuple(table_rows)
        self.l2 = l2
        self.cat_w = torch.zeros(sum(table_rows), dtype=torch.float64, requires_grad=True)
        self.dense_w = torch.zeros(num_dense, dtype=torch.float64, requires_grad=True)
        self.bias = torch.zeros((), dtype=torch.float64, requires_grad=True)

    def _logits(self, d: _Design) -> torch.Tensor:
        return d.dense @ self.dense_w + self.cat_w[d.rows].sum(1) + self.bias

    def _fit(self, d: _Design, max_iter: int) -> None:
        params = [self.cat_w, self.dense_w, self.bias]
        opt = torch.optim.LBFGS(params, lr=1.0, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")
        bce = torch.nn.BCEWithLogitsLoss()

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = bce(self._logits(d), d.labels)
            loss = loss + 0.5 * self.l2 * (self.cat_w.square().sum() + self.dense_w.square().sum())
            loss.backward()
            return loss

        opt.step(closure)

    @torch.no_grad()
    def predict(self, data: Iterable[Batch]) -> tuple[torch.Tensor, torch.Tensor]:
        """(labels, click probabilities) of every sample in `data`."""
        d = _design(data, self.table_rows)
        return d.labels, torch.sigmoid(self._logits(d))

    def evaluate(self, data: Iterable[Batch]) -> Quality:
        labels, probs = self.predict(data)
        return quality(labels.numpy(), probs.numpy())


def fit_logistic(
    data: Iterable[Batch], table_rows: Sequence[int], num_dense: int, l2: float, max_iter: int = 200
) -> LogisticModel:
    """Fit logistic regression with a given L2 strength.

    Args:
        data: training batches with one lookup per table per sample.
        table_rows: rows of each table (the one-hot widths).
        num_dense: dense features F.
        l2: L2 strength on the per-sample mean loss.
        max_iter: L-BFGS iterations.
    Returns:
        the fitted LogisticModel.
    """
    model = LogisticModel(table_rows, num_dense, l2)
    model._fit(_design(data, table_rows), max_iter)
    return model


def fit_logistic_cv(
    data: Sequence[Batch],
    table_rows: Sequence[int],
    num_dense: int,
    l2_grid: Sequence[float] = DEFAULT_L2_GRID,
    holdout_fraction: float = 0.2,
    max_iter: int = 200,
) -> tuple[LogisticModel, dict[float, float]]:
    """Pick l2 by log loss on the last `holdout_fraction` of the training batches, then refit on all.

    Args:
        data: training batches in order (the held-back tail never includes test rows).
        table_rows: rows of each table.
        num_dense: dense features F.
        l2_grid: candidate strengths.
        holdout_fraction: share of batches held back for the choice.
        max_iter: L-BFGS iterations per fit.
    Returns:
        (model refitted on all of `data` with the best l2, {l2: held-back log loss}).
    """
    batches = list(data)
    cut = max(1, round(len(batches) * (1 - holdout_fraction)))
    if cut >= len(batches):
        raise ValueError(f"logistic baseline: {len(batches)} batch(es) are too few to hold some back")
    scores = {}
    for l2 in l2_grid:
        scores[l2] = fit_logistic(batches[:cut], table_rows, num_dense, l2, max_iter).evaluate(batches[cut:]).logloss
    best = min(scores, key=scores.__getitem__)
    return fit_logistic(batches, table_rows, num_dense, best, max_iter), scores
