"""Turns a kernel's forward and per-lookup backward into a differentiable embedding-bag."""

from __future__ import annotations

from collections.abc import Callable

import torch

__all__ = ["BagBackward", "BagForward", "bag_ids", "differentiable", "fused_sgd_bag"]

# forward(weight, indices, offsets, per_sample_weights | None) -> (B, D)
BagForward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]
# backward(grad_out (B, D), indices, offsets, per_sample_weights | None) -> (N, D), one row per lookup
BagBackward = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None], torch.Tensor]


def bag_ids(offsets: torch.Tensor, num_indices: int) -> torch.Tensor:
    """The bag each index belongs to: (N,) int64, from CSR offsets."""
    lengths = offsets[1:] - offsets[:-1]
    bags = torch.arange(lengths.numel(), device=offsets.device)
    return torch.repeat_interleave(bags, lengths.long(), output_size=num_indices)


class _Bag(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, indices, offsets, per_sample_weights, fwd, bwd, sparse):  # type: ignore[override]
        ctx.save_for_backward(weight, indices, offsets, per_sample_weights)
        ctx.bwd, ctx.sparse = bwd, sparse
        return fwd(weight, indices, offsets, per_sample_weights)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        weight, indices, offsets, psw = ctx.saved_tensors
        grad_out = grad_out.contiguous()
        grad_w = grad_psw = None
        if ctx.needs_input_grad[0]:
            values = ctx.bwd(grad_out, indices, offsets, psw)  # (N, D)
            if ctx.sparse:
                # indices were validated before the forward, so the invariant check is skipped
                grad_w = torch.sparse_coo_tensor(
                    indices.long().unsqueeze(0), values, weight.shape, check_invariants=False
                )
            else:
                grad_w = torch.zeros_like(weight).index_add_(0, indices.long(), values)
        if ctx.needs_input_grad[3]:
            bags = bag_ids(offsets, indices.numel())
            grad_psw = (weight.index_select(0, indices.long()) * grad_out.index_select(0, bags)).sum(1)
        return grad_w, None, None, grad_psw, None, None, None


def differentiable(fwd: BagForward, bwd: BagBackward) -> Callable[..., torch.Tensor]:
    """Wrap a kernel's (forward, backward) pair into the registry's `fn` contract.

    When no gradient is wanted the forward runs bare, without an autograd node (several
    microseconds, as much as a small kernel call takes).
    """

    def fn(
        weight: torch.Tensor,
        indices: torch.Tensor,
        offsets: torch.Tensor,
        per_sample_weights: torch.Tensor | None = None,
        mode: str = "sum",
        sparse: bool = True,
    ) -> torch.Tensor:
        if mode != "sum":
            raise NotImplementedError(f"mode={mode!r}: only 'sum' is implemented; use kernel 'torch' for it")
        wants_grad = weight.requires_grad or (per_sample_weights is not None and per_sample_weights.requires_grad)
        if not (torch.is_grad_enabled() and wants_grad):
            return fwd(weight, indices, offsets, per_sample_weights)
        return _Bag.apply(weight, indices, offsets, per_sample_weights, fwd, bwd, sparse)

    fn.__doc__ = fwd.__doc__
    return fn


class _FusedSGDBag(torch.autograd.Function):
    @staticmethod
    def forward(ctx, weight, rows, offsets, fn, lr):  # type: ignore[override]
        ctx.save_for_backward(weight, rows, offsets)
        ctx.lr = lr
        ctx.cuda_kernel = bool(getattr(fn, "cuda_sgd", False))  # kernel 'cuda' brings its own fused update
        return fn(weight.detach(), rows, offsets, None, "sum", True)

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        from kernels.update import sgd_from_bags

        weight, rows, offsets = ctx.saved_tensors
        # checked before the forward (fused_sgd_bag): the same saved tensors need no second pass (or GPU sync)
        sgd_from_bags(weight, rows, offsets, grad_out.contiguous(), None, ctx.lr, cuda_kernel=ctx.cuda_kernel,
                      checked=True)  # fmt: skip
        return None, None, None, None, None


def fused_sgd_bag(
    fn: Callable[..., torch.Tensor],
    weight: torch.Tensor,
    rows: torch.Tensor,
    offsets: torch.Tensor,
    lr: float,
    *,
    checked: bool = False,
) -> torch.Tensor:
    """Kernel `fn`'s forward; its backward applies SGD to `weight` directly and returns no gradient.

    This is FBGEMM's fused-optimizer backward: the (N, D) per-lookup gradient and the
    sparse tensor holding it are never built. The rows and offsets are checked here, once for
    both passes, unless the caller has (`checked`, as the model's fused_rows does).
    """
    if not checked:
        from kernels.validate import validate_bags

        validate_bags(weight.shape[0], rows, offsets, where="fused_sgd_bag", device=weight.device)
    return _FusedSGDBag.apply(weight, rows, offsets, fn, lr)
