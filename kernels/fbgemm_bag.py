"""`fbgemm`: FBGEMM's table-batched embedding (fbgemm-gpu-cpu) behind the registry contract, when installed.

The forward is TBE's dense lookup op on a one-table layout that aliases the caller's
weight (no copy). Its registry backward is the per-lookup gradient in plain torch; the
industrial path, TBE's backward with exact SGD fused in, is `FbgemmSGD`, which the
benchmark's --backward mode times. Optional: `.venv/bin/python -m pip install -e '.[fbgemm]'`; absent, or
failing to load against this torch, the kernel lists as unavailable with the reason.
"""

from __future__ import annotations

import functools
import math
import warnings

import torch

from kernels.autograd import differentiable
from kernels.reference import naive_backward
from kernels.registry import Backend, register, register_unavailable

__all__ = ["FbgemmSGD", "fbgemm_forward"]

_REQUIRES = (
    "fbgemm-gpu-cpu==1.8.0 (.venv/bin/python -m pip install -e '.[fbgemm]'); 1.9.0 does not load with torch 2.13"
)

try:
    with warnings.catch_warnings():  # the CPU build warns about every GPU-only (SSD, Triton) module it skips
        warnings.simplefilter("ignore")
        import fbgemm_gpu  # noqa: F401 - registers torch.ops.fbgemm
        from fbgemm_gpu.split_embedding_configs import EmbOptimType
        from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation, PoolingMode
        from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
            ComputeDevice,
            SplitTableBatchedEmbeddingBagsCodegen,
        )

    _lookup = torch.ops.fbgemm.dense_embedding_codegen_lookup_function
    _MISSING = ""
except Exception as exc:
    _MISSING = f"fbgemm_gpu is not loadable ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"


@functools.lru_cache(maxsize=64)
def _layout(rows: int, dim: int) -> dict[str, object]:
    """TBE's description of one (rows, dim) table starting at offset 0 of the weight buffer."""
    return {
        "weights_offsets": torch.zeros(1, dtype=torch.int64),
        "D_offsets": torch.tensor([0, dim], dtype=torch.int32),
        "total_D": dim,
        "max_D": dim,
        "hash_size_cumsum": torch.tensor([0, rows], dtype=torch.int64),
        "total_hash_size_bits": int(math.log2(rows)) + 1 if rows else 0,
    }


def fbgemm_forward(
    weight: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, psw: torch.Tensor | None = None
) -> torch.Tensor:
    """Sum-pooled bags with TBE's dense lookup: (B, D) float32."""
    if weight.dtype != torch.float32:
        raise NotImplementedError(f"fbgemm kernel takes float32 weights, got {weight.dtype}; use kernel 'torch'")
    rows, dim = weight.shape
    with torch.no_grad():
        return _lookup(
            dev_weights=weight.detach().contiguous().view(-1),
            **_layout(rows, dim),
            indices=indices,
            offsets=offsets.to(indices.dtype),  # TBE assumes one dtype for both
            pooling_mode=int(PoolingMode.SUM),
            indice_weights=None if psw is None else psw.detach().float(),
            feature_requires_grad=None,
            output_dtype=0,  # SparseType.FP32
        )


class FbgemmSGD:
    """TBE with exact SGD fused into its backward.

    TBE allocates its own table; it is filled with a copy of `weight`, or with `share_weight`
    replaced by `weight`'s memory, which TBE then updates in place (so a benchmark controls the
    page size of the table it reads). `step(indices, offsets, grad_out)` runs forward +
    backward + update, as a training step does.
    """

    def __init__(self, weight: torch.Tensor, lr: float, share_weight: bool = False) -> None:
        if _MISSING:
            raise NotImplementedError(f"fbgemm is unavailable here: {_MISSING}")
        rows, dim = weight.shape
        self.module = SplitTableBatchedEmbeddingBagsCodegen(
            [(rows, dim, EmbeddingLocation.HOST, ComputeDevice.CPU)],
            optimizer=EmbOptimType.EXACT_SGD,
            learning_rate=lr,
            pooling_mode=PoolingMode.SUM,
        )
        with torch.no_grad():
            if share_weight:
                if weight.dtype != torch.float32 or not weight.is_contiguous():
                    raise ValueError("share_weight needs a contiguous float32 weight")
                self.module.weights_host.data = weight.view(-1)
            else:
                self.weight.copy_(weight)

    @property
    def weight(self) -> torch.Tensor:
        """The (rows, dim) table TBE updates, a view of its own buffer."""
        return self.module.split_embedding_weights()[0]

    def step(self, indices: torch.Tensor, offsets: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
        out = self.module(indices, offsets.to(indices.dtype))
        out.backward(grad_out)
        return out


_fbgemm_embedding_bag = differentiable(fbgemm_forward, naive_backward)


if _MISSING:
    register_unavailable("fbgemm", backend=Backend.FBGEMM, reason=_MISSING, requires=_REQUIRES)
else:
    register(
        "fbgemm",
        backend=Backend.FBGEMM,
        devices=("cpu",),
        requires=_REQUIRES,
        description="FBGEMM table-batched embedding (dense lookup op); backward in torch, fused SGD in bench",
    )(_fbgemm_embedding_bag)
