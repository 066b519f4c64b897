"""The optional `fbgemm` kernel against torch (skipped, with the reason, where fbgemm_gpu is not loadable)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels.registry import list_kernels

_ENTRY = next(e for e in list_kernels() if e.name == "fbgemm")
pytestmark = pytest.mark.skipif(not _ENTRY.available, reason=_ENTRY.reason or "fbgemm unavailable")

#   bag:      0       1    2          3
#   indices: [4 1] | [] | [0 9 9] | [2]
_INDICES = [4, 1, 0, 9, 9, 2]
_OFFSETS = [0, 2, 2, 5, 6]


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32])
def test_forward_and_gradients_match_torch(dtype):
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(10, 5, generator=g)
    idx, off = torch.tensor(_INDICES, dtype=dtype), torch.tensor(_OFFSETS, dtype=dtype)
    psw = torch.rand(len(_INDICES), generator=g)
    grad = torch.randn(4, 5, generator=g)
    results = []
    for name in ("fbgemm", "torch"):
        w, p = weight.clone().requires_grad_(), psw.clone().requires_grad_()
        out = kernels.embedding_bag(name, w, idx, off, p, sparse=True)
        out.backward(grad)
        results.append((out.detach(), w.grad.to_dense(), p.grad))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_fused_sgd_shares_the_callers_table():
    from kernels.fbgemm_bag import FbgemmSGD

    weight = torch.randn(10, 8)
    table = weight.clone()
    idx, off = torch.tensor(_INDICES), torch.tensor(_OFFSETS)
    grad = torch.randn(4, 8)
    tbe = FbgemmSGD(table, lr=0.1, share_weight=True)
    out = tbe.step(idx, off, grad)
    torch.testing.assert_close(out, F.embedding_bag(idx, weight, off, mode="sum", include_last_offset=True))
    bags = torch.repeat_interleave(torch.arange(4), torch.tensor(_OFFSETS).diff())
    torch.testing.assert_close(table, weight.index_add(0, idx, -0.1 * grad[bags]))
