"""Plain-torch embedding-bags: `torch` (the reference) and `torch_naive` (the baseline)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from kernels.autograd import bag_ids, differentiable
from kernels.registry import Backend, register

__all__ = ["naive_backward", "naive_forward", "torch_embedding_bag"]


@register(
    "torch",
    backend=Backend.TORCH,
    devices=("cpu", "cuda"),
    description="torch.nn.functional.embedding_bag (FBGEMM JIT kernels on CPU)",
)
def torch_embedding_bag(
    weight: torch.Tensor,
    indices: torch.Tensor,
    offsets: torch.Tensor,
    per_sample_weights: torch.Tensor | None = None,
    mode: str = "sum",
    sparse: bool = True,
) -> torch.Tensor:
    """torch's own embedding_bag with CSR offsets; its own backward."""
    if mode != "sum":
        raise NotImplementedError(f"mode={mode!r}: dlrmbench kernels implement 'sum' only")
    return F.embedding_bag(
        indices,
        weight,
        offsets.to(indices.dtype),
        mode="sum",
        sparse=sparse,
        per_sample_weights=per_sample_weights,
        include_last_offset=True,
    )


def naive_forward(
    weight: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, psw: torch.Tensor | None
) -> torch.Tensor:
    """Gather every row, scale, then segment-sum into its bag."""
    rows = weight.index_select(0, indices.long())  # (N, D)
    if psw is not None:
        rows = rows * psw.unsqueeze(1)
    out = weight.new_zeros(offsets.numel() - 1, weight.shape[1])  # (B, D)
    return out.index_add_(0, bag_ids(offsets, indices.numel()), rows)


def naive_backward(
    grad_out: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, psw: torch.Tensor | None
) -> torch.Tensor:
    """Each lookup's weight gradient is its bag's output gradient (times its weight)."""
    values = grad_out.index_select(0, bag_ids(offsets, indices.numel()))  # (N, D)
    return values * psw.unsqueeze(1) if psw is not None else values


register(
    "torch_naive",
    backend=Backend.TORCH,
    devices=("cpu", "cuda"),
    description="index_select + segment sum (index_add_), the naive baseline",
)(differentiable(naive_forward, naive_backward))
