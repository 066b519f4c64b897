"""SGD as the reference trains DLRM (no momentum), with a parallel path for sparse embedding gradients."""

from __future__ import annotations

from collections.abc import Iterable

import torch

from kernels.update import scatter_add_rows

__all__ = ["SGD"]


class SGD(torch.optim.Optimizer):
    """p -= lr * grad. Dense gradients go through torch's foreach kernels; sparse COO ones
    (embedding tables) through `scatter_add_rows`, which need not coalesce them first."""

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float):
        if lr < 0:
            raise ValueError(f"learning rate must be >= 0, got {lr}")
        super().__init__(params, {"lr": lr})

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            lr = group["lr"]
            dense_p, dense_g = [], []
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                if g.is_sparse and g.sparse_dim() == 1 and g.dense_dim() == 1:
                    scatter_add_rows(p, g._indices()[0], g._values(), -lr)
                elif g.is_sparse:
                    p.add_(g, alpha=-lr)
                else:
                    dense_p.append(p)
                    dense_g.append(g)
            if dense_p:
                torch._foreach_add_(dense_p, dense_g, alpha=-lr)
        return None
