"""Embedding-bag kernels behind one contract, chosen by name from a registry."""

from __future__ import annotations

import torch

from kernels.autograd import fused_sgd_bag
from kernels.registry import Backend, KernelEntry, get, list_kernels, register, register_unavailable
from kernels.validate import fused_rows, validate_bags, validate_tables

__all__ = [
    "Backend",
    "KernelEntry",
    "embedding_bag",
    "fused_rows",
    "fused_sgd_bag",
    "get",
    "list_kernels",
    "register",
    "register_unavailable",
    "validate_bags",
    "validate_tables",
]


def embedding_bag(
    name: str,
    weight: torch.Tensor,
    indices: torch.Tensor,
    offsets: torch.Tensor,
    per_sample_weights: torch.Tensor | None = None,
    mode: str = "sum",
    sparse: bool = True,
) -> torch.Tensor:
    """Validate the bags, then run kernel `name`. Returns (B, D) with B = len(offsets) - 1."""
    entry = get(name, weight.device.type)
    if weight.dim() != 2:
        raise ValueError(f"weight must be 2-D (rows, dim), got shape {tuple(weight.shape)}")
    validate_bags(weight.shape[0], indices, offsets, per_sample_weights, device=weight.device)
    if per_sample_weights is not None and per_sample_weights.dtype != weight.dtype:
        # torch refuses the mix; the compiled kernels would cast silently: one rule for all
        psw = per_sample_weights.dtype
        raise ValueError(f"per_sample_weights are {psw} but the table is {weight.dtype}: match them")
    return entry.fn(weight, indices, offsets, per_sample_weights, mode, sparse)
