"""DLRM (Naumov et al. 2019): bottom MLP, pooled embeddings, pairwise interaction, top MLP."""

from __future__ import annotations

import itertools
import math

import torch
from torch import nn
from torch.nn import functional as F

import kernels
from kernels.interaction import dot_interaction, numba_available
from model.config import DLRMConfig, EmbeddingGrad, Interaction

__all__ = ["DLRM", "Embeddings", "PaddedInputLinear", "aligned_pad", "interact", "make_mlp"]


class PaddedInputLinear(nn.Linear):
    """nn.Linear that also takes an input with zero columns appended (an aligned row stride).

    The weight keeps its (out, in) shape, so parameters, checkpoints and the optimizer see
    the true model; the product uses the weight padded with zero columns to match.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad = x.shape[-1] - self.in_features
        if pad == 0:
            return super().forward(x)
        if pad < 0:
            raise ValueError(f"input has {x.shape[-1]} features, the layer needs {self.in_features}")
        return F.linear(x, F.pad(self.weight, (0, pad)), self.bias)


def aligned_pad(width: int, multiple: int = 16) -> int:
    """Zero columns that bring `width` to a multiple of `multiple` (16 float32 = one cache line)."""
    return -width % multiple


def make_mlp(
    sizes: tuple[int, ...], generator: torch.Generator | None, sigmoid_last: bool, padded_input: bool = False
) -> nn.Sequential:
    """Linear + ReLU layers, the last one Sigmoid when `sigmoid_last`; the reference's init.

    With `padded_input` the first layer is a PaddedInputLinear (same parameters)."""
    layers: list[nn.Module] = []
    for i, (n_in, n_out) in enumerate(itertools.pairwise(sizes)):
        linear = (PaddedInputLinear if padded_input and i == 0 else nn.Linear)(n_in, n_out)
        with torch.no_grad():
            linear.weight.normal_(0.0, math.sqrt(2.0 / (n_in + n_out)), generator=generator)
            linear.bias.normal_(0.0, math.sqrt(1.0 / n_out), generator=generator)
        last = i == len(sizes) - 2
        layers += [linear, nn.Sigmoid() if (last and sigmoid_last) else nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class Embeddings(nn.Module):
    """T tables of the same dim D kept in one (sum E, D) weight, looked up in one kernel call.

    Fusing the tables (as FBGEMM's table-batched embedding does) turns T small kernel
    calls, T sparse gradients and T optimizer updates into one of each.
    """

    def __init__(
        self,
        table_rows: tuple[int, ...],
        dim: int,
        kernel: str,
        grad: EmbeddingGrad,
        generator: torch.Generator | None,
        table_ids: tuple[int, ...] | None = None,
    ):
        super().__init__()
        self.kernel = kernel
        self.grad = grad
        self.fused_lr: float | None = None  # the trainer sets it for EmbeddingGrad.FUSED
        self._fn = kernels.get(kernel).fn
        starts = torch.tensor((0, *table_rows), dtype=torch.int64).cumsum(0)  # (T + 1,)
        self.register_buffer("row_starts", starts, persistent=False)
        self.register_buffer("table_rows", torch.tensor(table_rows, dtype=torch.int64), persistent=False)
        self.weight = nn.Parameter(torch.empty(int(starts[-1]), dim))
        # Each table draws from its own generator, seeded by its global id, so a rank holding
        # some tables (model parallelism) initialises them exactly as one process holding all.
        base = generator.initial_seed() if generator is not None else int(torch.randint(1 << 62, ()))
        ids = table_ids if table_ids is not None else tuple(range(len(table_rows)))
        with torch.no_grad():
            for t, rows in enumerate(table_rows):  # the reference's U(-1/sqrt(E), 1/sqrt(E)) per table
                bound = math.sqrt(1.0 / rows)
                g = torch.Generator().manual_seed((base * 1_000_003 + ids[t] + 1) % (1 << 63))
                self.weight[starts[t] : starts[t + 1]].uniform_(-bound, bound, generator=g)

    def forward(self, indices: torch.Tensor, offsets: torch.Tensor, batch_size: int) -> torch.Tensor:
        """(N,) table-local indices, (T*B + 1,) offsets -> pooled (T, B, D)."""
        rows = kernels.fused_rows(self.table_rows, self.row_starts, indices, offsets, batch_size)  # (N,)
        if self.grad == EmbeddingGrad.FUSED and self.training and torch.is_grad_enabled():
            if self.fused_lr is None:
                raise ValueError("embedding_grad=fused needs the learning rate: set Embeddings.fused_lr")
            out = kernels.fused_sgd_bag(self._fn, self.weight, rows, offsets, self.fused_lr, checked=True)  # (T*B, D)
        else:
            sparse = self.grad != EmbeddingGrad.DENSE
            out = self._fn(self.weight, rows, offsets, None, "sum", sparse)  # (T*B, D)
        return out.view(self.table_rows.numel(), batch_size, -1)


def interact(
    x: torch.Tensor,
    ly: torch.Tensor,
    op: Interaction,
    pairs: torch.Tensor | None,
    impl: str = "auto",
    pad: int = 0,
) -> torch.Tensor:
    """Second-order interaction, concatenated with the bottom MLP output x.

    Args:
        x: (B, D) bottom MLP output.
        ly: (T, B, D) pooled embeddings.
        op: dot (pairwise dot products of all T + 1 vectors) or cat.
        pairs: for dot, flat indices into the (T+1, T+1) Gram matrix of the pairs kept
            (strict lower triangle, or with the diagonal for self-interaction), row-major
            as in the reference.
        impl: "torch" (bmm of the stacked vectors, then the kept pairs, as the reference),
            "numba" (kernels.interaction: only the kept pairs, 2-3x faster on CPU), or "auto"
            (numba for CPU float tensors where numba is present, else torch).
        pad: zero columns appended, for an aligned row stride (see PaddedInputLinear).
    Returns:
        (B, D + num_pairs + pad) for dot, (B, (T + 1) * D + pad) for cat.
    """
    if op == Interaction.CAT:
        return torch.cat([x, ly.transpose(0, 1).flatten(1), x.new_zeros(x.shape[0], pad)], dim=1)
    assert pairs is not None
    n = ly.shape[0] + 1
    if impl == "auto":
        impl = "numba" if _numba_interaction_fits(x, ly) else "torch"
    if impl == "numba":
        if pairs.numel() not in (n * (n - 1) // 2, n * (n + 1) // 2):
            raise ValueError(f"the numba interaction keeps a whole lower triangle, not {pairs.numel()} pairs")
        return dot_interaction(x, ly, itself=pairs.numel() == n * (n + 1) // 2, pad=pad)
    if impl != "torch":
        raise ValueError(f"interaction impl {impl!r}: allowed: auto, torch, numba")
    vectors = torch.cat([x.unsqueeze(0), ly], dim=0).transpose(0, 1)  # (B, T+1, D)
    gram = torch.bmm(vectors, vectors.transpose(1, 2))  # (B, T+1, T+1)
    parts = [x, gram.flatten(1).index_select(1, pairs)]
    return torch.cat([*parts, x.new_zeros(x.shape[0], pad)] if pad else parts, dim=1)


def _numba_interaction_fits(x: torch.Tensor, ly: torch.Tensor) -> bool:
    return (
        numba_available()
        and x.device.type == "cpu"
        and x.dtype in (torch.float32, torch.float64)
        and ly.dtype == x.dtype
    )


class DLRM(nn.Module):
    """forward(dense (B, F), indices (N,), offsets (T*B + 1,)) -> click probability (B,)."""

    def __init__(self, config: DLRMConfig, generator: torch.Generator | None = None):
        super().__init__()
        self.config = config.validate()
        self.bottom = make_mlp(config.bottom_mlp, generator, sigmoid_last=False)
        self.embeddings = Embeddings(
            config.table_rows, config.embedding_dim, config.kernel, config.embedding_grad, generator
        )
        self.top = make_mlp(config.top_mlp_full, generator, sigmoid_last=True, padded_input=True)
        self.top_pad = aligned_pad(config.interaction_width)
        n = config.num_tables + 1
        rows, cols = torch.tril_indices(n, n, offset=0 if config.interaction_itself else -1)
        self.register_buffer("pairs", rows * n + cols, persistent=False)

    def set_output_bias(self, logit: float) -> None:
        """Start the last layer's bias at `logit`, e.g. the log-odds of the training labels' positive rate.

        The reference draws it from N(0, 1), so an untrained model starts anywhere between ~15% and
        ~85% clicks; at Adagrad's small rates that offset takes much of a short training to unlearn.
        """
        if not math.isfinite(logit):
            raise ValueError(f"output bias {logit}: must be finite (a positive rate strictly between 0 and 1)")
        with torch.no_grad():
            self.top[-2].bias.fill_(logit)

    def forward(self, dense: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        if dense.dim() != 2 or dense.shape[1] != self.config.num_dense:
            raise ValueError(
                f"dense features have shape {tuple(dense.shape)} but --arch-mlp-bot starts with "
                f"{self.config.num_dense}: the bottom MLP's input must equal the data's dense width"
            )
        x = self.bottom(dense)  # (B, D)
        ly = self.embeddings(indices, offsets, dense.shape[0])  # (T, B, D)
        z = interact(x, ly, self.config.interaction, self.pairs, pad=self.top_pad)  # (B, top input + pad)
        return self.top(z).squeeze(1)  # (B,)
