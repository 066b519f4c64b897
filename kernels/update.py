"""Sparse row updates for optimizers: weight[rows[i]] += alpha * values[i], parallel and race-free.

torch applies a sparse gradient to a dense table with one serial loop (and
`index_add_` is slower still); on a 2.6M-row table that loop took longer than the
whole embedding forward. Here each thread owns a contiguous range of rows and scans
all lookups, applying only its own, so no two threads ever write the same row.
"""

from __future__ import annotations

import threading

import numpy as np
import torch

__all__ = ["adagrad_rows", "numba_threads", "scatter_add_rows", "sgd_from_bags"]

try:
    import numba
    from numba import njit, prange
except ImportError:  # numba is a dependency, but keep torch's path if it is missing
    numba = None


if numba is not None:

    @njit(parallel=True, fastmath=True, cache=True, nogil=True)
    def _scatter_add_partitioned(weight, rows, values, alpha, parts):  # pragma: no cover - compiled
        num_rows, dim = weight.shape
        for p in prange(parts):
            lo = num_rows * p // parts
            hi = num_rows * (p + 1) // parts
            for i in range(rows.shape[0]):
                r = rows[i]
                if lo <= r < hi:
                    for d in range(dim):
                        weight[r, d] += alpha * values[i, d]

    @njit(parallel=True, fastmath=True, cache=True, nogil=True)
    def _adagrad_partitioned(weight, acc, rows, values, lr, eps, slot, parts):  # pragma: no cover
        num_rows, dim = weight.shape
        for p in prange(parts):
            lo = num_rows * p // parts
            hi = num_rows * (p + 1) // parts
            count = 0
            for i in range(rows.shape[0]):
                if lo <= rows[i] < hi:
                    count += 1
            if count == 0:
                continue
            uniq = np.empty(count, np.int64)
            summed = np.empty((count, dim), values.dtype)  # filled at each row's first lookup
            k = 0
            for i in range(rows.shape[0]):  # duplicates summed first: the update is not linear in g
                r = rows[i]
                if lo <= r < hi:
                    s = slot[r]
                    if s < 0:
                        slot[r] = k
                        uniq[k] = r
                        for d in range(dim):
                            summed[k, d] = values[i, d]
                        k += 1
                    else:
                        for d in range(dim):
                            summed[s, d] += values[i, d]
            for s in range(k):
                r = uniq[s]
                if acc.shape[1] == 1:  # row-wise: one accumulator per row
                    sq = 0.0
                    for d in range(dim):
                        sq += summed[s, d] * summed[s, d]
                    acc[r, 0] += sq / dim
                    step = lr / (np.sqrt(acc[r, 0]) + eps)
                    for d in range(dim):
                        weight[r, d] -= step * summed[s, d]
                else:
                    for d in range(dim):
                        acc[r, d] += summed[s, d] * summed[s, d]
                        weight[r, d] -= lr * summed[s, d] / (np.sqrt(acc[r, d]) + eps)
                slot[r] = -1

    @njit(parallel=True, fastmath=True, cache=True, nogil=True)
    def _sgd_from_bags_partitioned(weight, rows, offsets, grad_out, psw, alpha, parts):  # pragma: no cover
        num_rows, dim = weight.shape
        weighted = psw.shape[0] > 0
        for p in prange(parts):
            lo = num_rows * p // parts
            hi = num_rows * (p + 1) // parts
            for b in range(offsets.shape[0] - 1):
                for i in range(offsets[b], offsets[b + 1]):
                    r = rows[i]
                    if lo <= r < hi:
                        scale = alpha * psw[i] if weighted else alpha
                        for d in range(dim):
                            weight[r, d] += scale * grad_out[b, d]


def numba_threads() -> int:
    """Give numba torch's thread count, and return it; every parallel numba launch calls this first.

    With numba's OpenMP layer, starting numba's pool (its first set_num_threads or launch) sets
    the OpenMP pool torch shares to NUMBA_NUM_THREADS: `--threads 1` silently became 2 threads
    (and 2 processes x 2 threads on 2 cores stalled). So torch's count is put back afterwards.
    Asked, not cached: profiler.timer sets numba's count too.
    """
    want = torch.get_num_threads()
    n = max(1, min(want, numba.config.NUMBA_NUM_THREADS))
    if numba.get_num_threads() != n:
        numba.set_num_threads(n)
    if torch.get_num_threads() != want:
        torch.set_num_threads(want)
    return n


def _check_rows(rows: torch.Tensor, num_rows: int, where: str) -> None:
    lo, hi = torch.aminmax(rows)
    if int(lo) < 0 or int(hi) >= num_rows:  # the compiled loops trust their rows
        raise ValueError(f"{where}: row ids span [{int(lo)}, {int(hi)}], table has {num_rows} rows")


def _use_cuda_update(weight: torch.Tensor, cuda_kernel: bool) -> bool:
    """The hand-written CUDA update applies: kernel 'cuda' is in use, on a contiguous float32/64 CUDA table."""
    return (
        cuda_kernel
        and weight.device.type == "cuda"
        and weight.is_contiguous()
        and weight.dtype in (torch.float32, torch.float64)  # its scalar types; half/bf16 take index_add_
    )


def sgd_from_bags(
    weight: torch.Tensor,
    rows: torch.Tensor,
    offsets: torch.Tensor,
    grad_out: torch.Tensor,
    per_sample_weights: torch.Tensor | None,
    lr: float,
    *,
    cuda_kernel: bool = False,
    checked: bool = False,
) -> None:
    """The embedding-bag backward with SGD fused in: weight[rows[i]] -= lr * psw[i] * grad_out[bag(i)].

    No (N, D) gradient is ever materialised, as in FBGEMM's fused-optimizer backward.

    Args:
        weight: (R, D) table, updated in place.
        rows: (N,) int64 row ids; offsets: (B + 1,) int64 CSR bags.
        grad_out: (B, D) gradient of the pooled output.
        per_sample_weights: optional (N,).
        lr: learning rate.
        cuda_kernel: kernel 'cuda' is in use: a contiguous float32/64 CUDA table takes its update
            (kernels/cuda). Other callers leave it False, so they never need that extension built;
            a CUDA table then takes torch's index_add_.
        checked: rows, offsets and weights were validated already (fused_sgd_bag's forward did).
    """
    B = offsets.numel() - 1
    if grad_out.shape != (B, weight.shape[1]) or rows.dim() != 1:
        raise ValueError(
            f"sgd_from_bags: grad_out {tuple(grad_out.shape)} does not match {B} bags of dim {weight.shape[1]}"
        )
    if not checked:  # the compiled CPU loop and the CUDA kernel trust rows, offsets and weights alike
        from kernels.validate import validate_bags  # here: kernels.validate imports this module

        validate_bags(weight.shape[0], rows, offsets, per_sample_weights, where="sgd_from_bags", device=weight.device)
    if rows.numel() == 0:
        return
    if _use_cuda_update(weight, cuda_kernel):
        from kernels import cuda_bag

        cuda_bag.sgd_from_bags(weight, rows, offsets, grad_out, per_sample_weights, lr)
        return
    fast = (
        numba is not None and weight.device.type == "cpu" and weight.is_contiguous() and weight.dtype == grad_out.dtype
    )
    if not fast:
        bags = torch.repeat_interleave(torch.arange(B, device=rows.device), offsets.diff(), output_size=rows.numel())
        values = grad_out.index_select(0, bags)  # output_size: no device-to-host read of the total on a GPU
        if per_sample_weights is not None:
            values = values * per_sample_weights.unsqueeze(1)
        weight.index_add_(0, rows, values, alpha=-lr)
        return
    w = weight.detach().numpy()
    psw = per_sample_weights if per_sample_weights is not None else weight.new_empty(0)
    _sgd_from_bags_partitioned(
        w,
        rows.numpy(),
        offsets.long().numpy(),
        grad_out.detach().contiguous().numpy(),
        psw.detach().to(weight.dtype).contiguous().numpy(),
        w.dtype.type(-lr),
        np.int64(numba_threads()),
    )


def scatter_add_rows(weight: torch.Tensor, rows: torch.Tensor, values: torch.Tensor, alpha: float) -> None:
    """In place: weight[rows[i]] += alpha * values[i] for every i (rows may repeat).

    Args:
        weight: (R, D) dense table.
        rows: (N,) int64 row ids in [0, R).
        values: (N, D) same dtype as weight.
        alpha: scale, e.g. -learning_rate.
    """
    if rows.dim() != 1 or values.shape != (rows.numel(), weight.shape[1]):
        raise ValueError(
            f"scatter_add_rows: rows {tuple(rows.shape)} and values {tuple(values.shape)} do not match "
            f"a table of shape {tuple(weight.shape)}"
        )
    if rows.numel() == 0:
        return
    fast = (
        numba is not None
        and weight.device.type == "cpu"
        and weight.is_contiguous()
        and weight.dtype in (torch.float32, torch.float64)
        and values.dtype == weight.dtype
    )
    if not fast:
        weight.index_add_(0, rows, values, alpha=alpha)
        return
    _check_rows(rows, weight.shape[0], "scatter_add_rows")
    w = weight.detach().numpy()
    _scatter_add_partitioned(
        w, rows.numpy(), values.detach().contiguous().numpy(), w.dtype.type(alpha), np.int64(numba_threads())
    )


def adagrad_rows(
    weight: torch.Tensor, accumulator: torch.Tensor, rows: torch.Tensor, values: torch.Tensor, lr: float, eps: float
) -> bool:
    """Adagrad from an uncoalesced sparse gradient (values[i] belongs to row rows[i]), in place: per
    distinct row r, g = the sum of its values, then with an (R, D) accumulator element-wise
    acc[r] += g^2, weight[r] -= lr * g / (sqrt(acc[r]) + eps) (torch's Adagrad), with an (R,) one
    row-wise acc[r] += mean(g^2), weight[r] -= lr * g / (sqrt(acc[r]) + eps) (FBGEMM's).

    One parallel pass, each thread owning a range of rows, instead of torch's sort (coalesce)
    and gathers. Returns False, touching nothing, where it does not apply (not CPU, float32/64
    and contiguous, or no numba): the caller then takes torch's path.
    """
    if (
        rows.dim() != 1
        or values.shape != (rows.numel(), weight.shape[1])
        or accumulator.shape not in (weight.shape, weight.shape[:1])
    ):
        raise ValueError(
            f"adagrad_rows: rows {tuple(rows.shape)}, values {tuple(values.shape)} and accumulator "
            f"{tuple(accumulator.shape)} do not match a table of shape {tuple(weight.shape)}"
        )
    fast = (
        numba is not None
        and weight.device.type == "cpu"
        and weight.is_contiguous()
        and accumulator.is_contiguous()
        and weight.dtype in (torch.float32, torch.float64)
        and values.dtype == accumulator.dtype == weight.dtype
    )
    if not fast:
        return False
    if rows.numel() == 0:
        return True
    _check_rows(rows, weight.shape[0], "adagrad_rows")
    w = weight.detach().numpy()
    slot = _row_slots(weight.shape[0])
    try:
        _adagrad_partitioned(
            w,
            accumulator.detach().view(weight.shape[0], -1).numpy(),
            rows.numpy(),
            values.detach().contiguous().numpy(),
            w.dtype.type(lr),
            w.dtype.type(eps),
            slot,
            np.int64(numba_threads()),
        )
    except BaseException:
        _scratch.slots = None  # the pass may have stopped with rows claimed: never reuse it
        raise
    return True


_scratch = threading.local()


def _row_slots(num_rows: int) -> np.ndarray:
    """Each row's slot in a thread's buffer during an adagrad pass, all -1 ("none yet") on entry.

    The pass sets -1 back on every row it claims, so one array per table size is kept (per
    Python thread) instead of filling a fresh one (10 MB at 2.6M rows) every step.
    """
    slots = getattr(_scratch, "slots", None)
    if slots is None or slots.shape[0] != num_rows:
        slots = _scratch.slots = np.full(num_rows, -1, np.int32)
    return slots
