"""FNN-style warm start (Zhang et al. 2016): a DLRM initialised to compute a fitted logistic regression.

`dlrmbench train --embedding-init lr` fits the one-hot baseline (model.baseline, L2 chosen on the
last fifth of the training rows, as `dlrmbench baseline` does) on the training rows only, then sets:

- every table row's coordinate `coordinate` to that row's LR weight (the baseline's `cat_w` is
  indexed by the fused table's rows, the same rows: empty 0, unseen 1, then the vocabulary);
- the bottom MLP's first two units to carry the dense part, split by sign so that ReLU keeps it
  exactly: unit 0 = sum of max(w, 0) x, unit 1 = sum of max(-w, 0) x (the dense features are
  log(1 + max(x, 0)) >= 0); later layers pass both on unchanged and read nothing else into them;
- the top MLP's first hidden unit to K + (the tables' LR coordinates summed) + unit 0, K a bias
  large enough that it is never negative, and its second hidden unit to unit 1; later hidden layers
  pass both on; the output adds the first, subtracts the second and starts at the LR bias - K.

The other units keep the reference's random init, but read neither carrier, and the output reads
them with weights scaled by `rest_scale` (0: the model starts exactly at the LR's logit). Needs the
`cat` interaction (dot products cannot carry a sum of table weights) and hidden layers of >= 2 units.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace

import psutil
import torch
from torch import nn

from model.baseline import DEFAULT_L2_GRID, LogisticModel, fit_logistic_cv
from model.config import DLRMConfig, Interaction
from model.criteo import CriteoData
from model.criteo_format import NUM_CAT, NUM_DENSE
from model.dlrm import DLRM

__all__ = ["BASELINE_BATCH", "baseline_batches", "check_warm_start", "fit_baseline", "logistic_warm_start"]

# full-batch L-BFGS: float64 dense + int64 rows + label per row, with the logits, gradients and
# L-BFGS's temporaries about three times that
_BYTES_PER_ROW = 3 * 8 * (NUM_DENSE + NUM_CAT + 1)
BASELINE_BATCH = 512  # training rows per batch of `dlrmbench baseline`; its L2 is picked on the last fifth of them


def baseline_batches(train: CriteoData) -> CriteoData:
    """The training rows in `dlrmbench baseline`'s batches: file order, at least ten (a small file keeps some back)."""
    batch = min(BASELINE_BATCH, -(-train.samples // 10))
    return replace(train, batch_size=batch, shuffle=False)


def fit_baseline(
    train: CriteoData, num_dense: int, l2_grid: tuple[float, ...] = DEFAULT_L2_GRID
) -> tuple[LogisticModel, dict[float, float]]:
    """The baseline `dlrmbench baseline` fits on these training rows: (model, {l2: held-back log loss}).

    Refused (ValueError) where the full-batch fit would not fit in the memory available now.
    """
    need = train.samples * _BYTES_PER_ROW
    free = psutil.virtual_memory().available
    if need > free:
        raise ValueError(
            f"the baseline fits all {train.samples:,} training rows at once (about {need / 2**30:.1f} GiB); "
            f"{free / 2**30:.1f} GiB is free. Fit it on fewer rows (a smaller file or --test-raw-data-file)"
        )
    return fit_logistic_cv(list(baseline_batches(train)), train.table_rows, num_dense, l2_grid=l2_grid)


def _linears(mlp: nn.Sequential) -> list[nn.Linear]:
    return [m for m in mlp if isinstance(m, nn.Linear)]


def check_warm_start(cfg: DLRMConfig, table_rows: Sequence[int], num_dense: int, coordinate: int = 0) -> None:
    """ValueError unless a DLRM of `cfg` can carry an LR over `table_rows` and `num_dense` features.

    `dlrmbench train` calls it before fitting the LR, so a model that cannot carry it is refused at once.
    """
    if cfg.interaction != Interaction.CAT:
        raise ValueError("--embedding-init lr needs --arch-interaction-op cat (a dot product cannot carry a sum)")
    if tuple(cfg.table_rows) != tuple(table_rows):
        differ = [t for t, (a, b) in enumerate(zip(cfg.table_rows, table_rows, strict=False)) if a != b]
        where = f"table {differ[0]}: {cfg.table_rows[differ[0]]} rows, the data's {table_rows[differ[0]]}" if differ \
            else f"{cfg.num_tables} tables, the data's {len(table_rows)}"  # fmt: skip
        raise ValueError(f"--embedding-init lr needs the tables the data gives (omit --arch-embedding-size): {where}")
    if cfg.num_dense != num_dense:
        raise ValueError(f"--embedding-init lr: {cfg.num_dense} dense features, the LR has {num_dense}")
    if not 0 <= coordinate < cfg.embedding_dim:
        raise ValueError(f"coordinate {coordinate} outside the embedding dim {cfg.embedding_dim}")
    if any(w < 2 for w in (*cfg.bottom_mlp[1:], *cfg.top_mlp[:-1])):
        raise ValueError("--embedding-init lr needs every bottom MLP layer and top hidden layer >= 2 units wide")


@torch.no_grad()
def logistic_warm_start(model: DLRM, lr: LogisticModel, rest_scale: float = 0.0, coordinate: int = 0) -> float:
    """Set `model`'s weights so that its logit is `lr`'s (plus `rest_scale` times the random units' output).

    Args:
        model: a DLRM with the `cat` interaction, tables of `lr.table_rows` and `lr.dense_w`'s dense width.
        lr: the fitted logistic regression.
        rest_scale: factor on the output weights of the units that do not carry the LR (0: exactly the LR).
        coordinate: the embedding coordinate that carries each row's LR weight.
    Returns:
        K, the first top hidden unit's bias (0 for a linear top). Its pre-activation is K + (the sum of
        one LR weight per table) + (a ReLU output >= 0) >= K + (the sum of each table's most negative
        weight, or 0) = 1 (less float32 rounding, ~1e-6), for every input: unseen and empty rows are
        table rows too, and the dense features reach it only through that ReLU. So its ReLU passes it
        unchanged.
    """
    cfg = model.config
    check_warm_start(cfg, lr.table_rows, lr.dense_w.numel(), coordinate)
    if not math.isfinite(rest_scale) or rest_scale < 0:
        raise ValueError(f"rest scale {rest_scale}: must be finite and >= 0")
    D, T = cfg.embedding_dim, cfg.num_tables
    cat_w = lr.cat_w.detach()
    weight = model.embeddings.weight
    weight[:, coordinate] = cat_w.to(weight.dtype)

    dense_w = lr.dense_w.detach()
    for i, layer in enumerate(_linears(model.bottom)):
        layer.weight[:2] = 0.0
        layer.bias[:2] = 0.0
        if i == 0:
            layer.weight[0] = dense_w.clamp(min=0).to(layer.weight.dtype)
            layer.weight[1] = (-dense_w).clamp(min=0).to(layer.weight.dtype)
        else:
            layer.weight[2:, :2] = 0.0
            layer.weight[0, 0] = layer.weight[1, 1] = 1.0

    # the first top hidden unit's input is at least sum over tables of its most negative weight (x's carrier >= 0)
    starts = torch.tensor((0, *cfg.table_rows)).cumsum(0)
    lowest = sum(float(cat_w[starts[t] : starts[t + 1]].min().clamp(max=0)) for t in range(T))
    k = 1.0 - lowest
    top = _linears(model.top)
    table_cols = [D + t * D + coordinate for t in range(T)]  # cat: [x (D), table 0 (D), table 1 (D), ...]
    out = top[-1]
    if len(top) == 1:  # a linear top: the logit is the sum itself
        out.weight.mul_(rest_scale)
        out.weight[0, table_cols] = 1.0
        out.weight[0, 0], out.weight[0, 1] = 1.0, -1.0
        out.bias.fill_(float(lr.bias))
        return 0.0
    first = top[0]
    first.weight[:, :2] = 0.0  # no unit reads the dense carriers but the two that carry them on
    first.weight[:2] = 0.0
    first.weight[0, table_cols] = 1.0
    first.weight[0, 0] = first.weight[1, 1] = 1.0
    first.bias[0], first.bias[1] = k, 0.0
    for layer in top[1:-1]:
        layer.weight[:2] = 0.0
        layer.weight[2:, :2] = 0.0
        layer.weight[0, 0] = layer.weight[1, 1] = 1.0
        layer.bias[:2] = 0.0
    out.weight.mul_(rest_scale)
    out.weight[0, 0], out.weight[0, 1] = 1.0, -1.0
    out.bias.fill_(float(lr.bias) - k)
    return k
