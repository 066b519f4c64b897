"""SGD as the reference trains DLRM (no momentum), with a parallel path for sparse embedding gradients."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from kernels.update import scatter_add_rows

__all__ = ["SGD"]


class SGD(torch.optim.Optimizer):
    """p -= lr * (grad + weight_decay * p). Dense gradients go through torch's foreach kernels;
    sparse COO ones (embedding tables) through `scatter_add_rows`, which need not coalesce them.

    Weight decay on a sparse gradient is lazy: only the rows the step touched decay (once each),
    as sparse optimizers do, so a step costs the batch's rows, not the table's.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0):
        if lr < 0:
            raise ValueError(f"learning rate must be >= 0, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"weight decay must be >= 0, got {weight_decay}")
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            dense_p, dense_g = [], []
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                if g.is_sparse and g.sparse_dim() == 1 and g.dense_dim() == 1:
                    if wd:
                        rows = g._indices()[0].unique()
                        p.index_copy_(0, rows, p.index_select(0, rows) * (1.0 - lr * wd))
                    scatter_add_rows(p, g._indices()[0], g._values(), -lr)
                elif g.is_sparse:
                    if wd:
                        g = g.coalesce()
                        rows = g._indices()[0]
                        p.index_copy_(0, rows, p.index_select(0, rows) * (1.0 - lr * wd))
                    p.add_(g, alpha=-lr)
                else:
                    dense_p.append(p)
                    dense_g.append(g)
            if dense_p:
                if wd:
                    torch._foreach_mul_(dense_p, 1.0 - lr * wd)
                torch._foreach_add_(dense_p, dense_g, alpha=-lr)
        return None
