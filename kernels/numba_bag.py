"""numba_w1, numba_w4, numba_w8, numba_w16: embedding-bag kernels built by one factory from the SIMD width.

`make_numba_bag(W)` wraps the compiled loops of `kernels.numba_simd` (W float32 lanes per
vector op, up to 8 vectors and 256 B of a row per pass, parallel over bags) behind the registry
contract, and adds what the benchmark needs beyond it: a fused sparse-SGD backward that
never builds a gradient tensor, ahead-of-time warm-up, and the generated assembly.
Inputs are trusted (validated by `kernels.embedding_bag` or the caller). Without numba the
four names are registered as unavailable, with the import error as the reason.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch

from kernels.autograd import differentiable
from kernels.registry import Backend, register, register_unavailable
from kernels.update import numba_threads
from kernels.validate import INT32_MAX

try:
    import numba

    from kernels import numba_simd
except ImportError as exc:  # numba is a dependency, but listing must survive without it
    numba = numba_simd = None
    _MISSING = f"numba is not importable ({exc}); pip install 'numba>=0.60'"

__all__ = [
    "AUTO_PREFETCH_MIN_BYTES",
    "AUTO_SGD_PREFETCH_MIN_BYTES",
    "DEFAULT_PREFETCH_ROWS",
    "WIDTHS",
    "NumbaBag",
    "get_numba_bag",
    "make_numba_bag",
]

WIDTHS = (1, 4, 8, 16)  # float32 lanes: scalar, 128-bit (SSE/NEON), 256-bit (AVX2), 512-bit (AVX-512)
# Lookups ahead. 32 rows of 256 B (8 KiB) stay inside L1 and cover DRAM latency; measured on a 32 MiB-L3 Zen 4
# (numba_w16 at 1 thread, medians of 5 interleaved rounds), 32 against 16: D=16 DRAM 254 against 344 us, D=64
# Zipf 1.15 over 1M rows 53 against 62 us, D=64 L3-sized 344 against 383 us, D=128 DRAM 1,796 against 1,750 us;
# the fused SGD update (B=2048): D=16 DRAM 288 against 411 us, D=64 DRAM 1,066 against 1,077, Zipf 494 against 529.
# A distance by row size was measured and not adopted (same harness, 1M rows unless noted, B=2048, 48 against 32):
# 256 B rows gain (D=64 DRAM 657 against 772 us, Zipf 1.15 244 against 263) but every other size loses or is
# level (D=32 400 against 329, D=48 561 against 514, D=96 848 against 824, D=128 1,527 against 1,513) and so does
# a 256 B row in an L3-sized table (100K rows: 365 against 313).
DEFAULT_PREFETCH_ROWS = 32
# Smaller tables sit in L2/L3, where the prefetch instructions cost more than they save (measured on a
# 32 MiB-L3 Zen 4: a 5 MiB table ran ~12% slower with them, 256 MiB+ tables 10-30% faster).
# A same-run map of 1-64 MiB tables (numba_w16, 1 thread, L=20, B=2048 and 256, medians of 9-11 interleaved
# rounds, time on/off) found no better rule by table bytes or row size: at 12 MiB rows over 128 B gain with uniform
# rows (D=64/128 0.84-0.89) but lose with Zipf 1.15 at B=256 (1.02-1.07); rows of up to 128 B lose with Zipf up to
# 32 MiB (16 MiB: D=16 1.66-1.72, D=32 1.25-1.35) where uniform gains (0.65-0.82); at 8 MiB and under prefetch
# loses (up to 1.9 at D=16 Zipf) but for D=64 uniform (0.92-0.95).
AUTO_PREFETCH_MIN_BYTES = 16 << 20
# The fused SGD update (read-modify-write of whole rows) gains from a smaller table: at 12 MiB 0.39-1.00 in two
# runs, every D 16-128, uniform and Zipf 1.15, B=2048 and 256 (e.g. D=64 uniform B=2048 379 against 500 us, D=128
# Zipf 451 against 497); 10 MiB loses with D=16 Zipf (1.04-1.10), 8 MiB with Zipf at D=16/64/128 (1.02-1.12).
AUTO_SGD_PREFETCH_MIN_BYTES = 12 << 20
_SERIAL_MAX_FLOATS = 1 << 15  # below this many gathered floats a parallel region costs more than it saves
_REQUIRES = "numba>=0.60"


@functools.cache
def _kernels(width: int, index_bits: int, float_bits: int = 32) -> numba_simd.NumbaKernels:
    return numba_simd.build(width, index_bits, float_bits)


_FLOAT_BITS = {torch.float32: 32, torch.float64: 64}
_INDEX_BITS = {torch.int32: 32, torch.int64: 64}


def _float_bits(name: str, t: torch.Tensor) -> int:
    """32 or 64: the kernels are compiled for float32 (what DLRM trains in) and float64 (gradcheck)."""
    bits = _FLOAT_BITS.get(t.dtype)
    if bits is None:
        raise NotImplementedError(f"numba kernels take float32/float64 {name}, got {t.dtype}; use kernel 'torch'")
    if not t.is_cpu:
        raise NotImplementedError(f"numba kernels run on CPU tensors, got {t.device}; use kernel 'torch' or 'cuda'")
    return bits


def _check_grad_out(grad_out: torch.Tensor, offsets: torch.Tensor, dim: int | None = None) -> None:
    """grad_out must be (B, D): the loops read row bag(k) of it for every lookup k."""
    B = offsets.numel() - 1
    if grad_out.dim() != 2 or grad_out.shape[0] != B or (dim is not None and grad_out.shape[1] != dim):
        want = f"({B}, {dim})" if dim is not None else f"({B}, D)"
        raise ValueError(f"grad_out has shape {tuple(grad_out.shape)}, the {B} bags need {want}")


@dataclass(frozen=True)
class NumbaBag:
    """The embedding-bag kernels of one SIMD width.

    `prefetch_rows`: software prefetch distance in lookups (0 = off); None chooses
    DEFAULT_PREFETCH_ROWS for tables of at least AUTO_PREFETCH_MIN_BYTES (the fused SGD update:
    AUTO_SGD_PREFETCH_MIN_BYTES) and 0 below.
    """

    width: int
    prefetch_rows: int | None = None

    @property
    def name(self) -> str:
        return f"numba_w{self.width}"

    def prefetch_distance(self, table_bytes: int, sgd: bool = False) -> int:
        """Lookups ahead whose rows are prefetched, for a table of this size (0 = no prefetch); `sgd`: for the
        fused SGD update rather than the forward."""
        if self.prefetch_rows is not None:
            return self.prefetch_rows
        least = AUTO_SGD_PREFETCH_MIN_BYTES if sgd else AUTO_PREFETCH_MIN_BYTES
        return DEFAULT_PREFETCH_ROWS if table_bytes >= least else 0

    def _run(
        self,
        op: int,
        weight: torch.Tensor,
        indices: torch.Tensor,
        offsets: torch.Tensor,
        psw: torch.Tensor | None,
        bd: torch.Tensor,
        nd: torch.Tensor | None = None,
        lr: float = 0.0,
        parallel: bool = True,
    ) -> None:
        rows, dim = weight.shape
        index_dtype = indices.dtype
        if offsets.dtype != index_dtype:  # one index type for the loop: offsets reach N, so past int32 widen
            if indices.numel() > INT32_MAX:  # offsets need int64 (and the indices widen with them)
                indices, offsets = indices.long(), offsets.long()
            else:
                offsets = offsets.to(index_dtype)
            index_dtype = indices.dtype
        if not indices.is_contiguous():
            indices = indices.contiguous()
        if not offsets.is_contiguous():
            offsets = offsets.contiguous()
        if psw is not None and (psw.dtype != weight.dtype or not psw.is_contiguous()):
            psw = psw.detach().to(weight.dtype).contiguous()
        n = indices.numel()
        k = _kernels(self.width, _INDEX_BITS[index_dtype], _FLOAT_BITS[weight.dtype])
        # torch at 1 thread means serial: numba's count (~1 us to ask) only matters for a parallel launch
        parallel = parallel and n * dim >= _SERIAL_MAX_FLOATS and torch.get_num_threads() > 1
        chunks = numba_threads() if parallel else 1
        (k.parallel if chunks > 1 else k.serial)(
            op,
            weight.data_ptr(),
            rows,
            dim,
            indices.data_ptr(),
            n,
            offsets.data_ptr(),
            offsets.numel() - 1,
            0 if psw is None else psw.data_ptr(),
            psw is not None,
            bd.data_ptr(),
            0 if nd is None else nd.data_ptr(),
            lr,
            self.prefetch_distance(rows * dim * weight.element_size(), op == numba_simd.Op.SGD),  # f64: 8-byte
            chunks,
        )

    def forward(
        self, weight: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, psw: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Sum-pooled bags: (B, D) of weight's dtype, B = len(offsets) - 1."""
        _float_bits("weights", weight)
        if not weight.is_contiguous():
            weight = weight.contiguous()
        out = torch.empty(offsets.numel() - 1, weight.shape[1], dtype=weight.dtype)
        if out.numel():
            self._run(numba_simd.Op.FORWARD, weight, indices, offsets, psw, out)
        return out

    def lookup_grads(
        self, grad_out: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, psw: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Each lookup's weight gradient, psw[k] * grad_out[bag(k)]: (N, D) of grad_out's dtype."""
        _float_bits("gradients", grad_out)
        _check_grad_out(grad_out, offsets)
        grad_out = grad_out.contiguous()
        vals = torch.empty(indices.numel(), grad_out.shape[1], dtype=grad_out.dtype)
        if vals.numel():
            self._run(numba_simd.Op.LOOKUP_GRADS, grad_out, indices, offsets, psw, grad_out, vals)
        return vals

    def sgd_(
        self,
        weight: torch.Tensor,
        indices: torch.Tensor,
        offsets: torch.Tensor,
        grad_out: torch.Tensor,
        lr: float,
        psw: torch.Tensor | None = None,
    ) -> None:
        """Fused backward + SGD, in place: weight[idx[k]] -= lr * psw[k] * grad_out[bag(k)].

        No gradient tensor is built. Each thread owns the rows that hash to it and applies
        their updates in lookup order, so the result does not depend on the thread count.
        """
        if _float_bits("weights", weight) != _float_bits("gradients", grad_out):
            raise ValueError(f"weight is {weight.dtype} but grad_out is {grad_out.dtype}: they must match")
        if not weight.is_contiguous():
            raise ValueError("sgd_ updates in place: weight must be contiguous")
        _check_grad_out(grad_out, offsets, weight.shape[1])
        if indices.numel() and weight.numel():
            self._run(numba_simd.Op.SGD, weight.detach(), indices, offsets, psw, grad_out.contiguous(), lr=lr)

    def warm(self, index_dtypes: tuple[torch.dtype, ...] = (torch.int64,), parallel: bool = True) -> None:
        """Compile (or load from numba's disk cache) every entry point for these index dtypes."""
        for dtype in index_dtypes:
            k = _kernels(self.width, 64 if dtype == torch.int64 else 32)
            w, g = torch.zeros(2, 3), torch.zeros(1, 3)
            idx, off = torch.zeros(1, dtype=dtype), torch.tensor([0, 1], dtype=dtype)
            for run in (k.serial, k.parallel) if parallel else (k.serial,):
                run(0, w.data_ptr(), 2, 3, idx.data_ptr(), 1, off.data_ptr(), 1, 0, False, g.data_ptr(), 0, 0.0, 0, 1)

    def asm(self, index_dtype: torch.dtype = torch.int64) -> str:
        """The x86/ARM assembly of the compiled loops (forward, lookup gradients, SGD) for this width."""
        return numba_simd.inspect_asm(self.width, 64 if index_dtype == torch.int64 else 32)

    @functools.cached_property
    def fn(self) -> Callable[..., torch.Tensor]:
        """The registry contract: differentiable in weight (sparse or dense) and per_sample_weights."""
        embedding_bag = differentiable(self.forward, self.lookup_grads)
        embedding_bag.__doc__ = f"{self.name}: sum-pooled embedding-bag, {self.width} float32 lanes per vector op."
        return embedding_bag


def make_numba_bag(width: int, prefetch_rows: int | None = None) -> NumbaBag:
    """The factory: kernels whose inner loop works in blocks of `width` float32 lanes."""
    if width not in WIDTHS:
        raise ValueError(f"width {width} is not one of {', '.join(map(str, WIDTHS))}")
    if prefetch_rows is not None and prefetch_rows < 0:
        raise ValueError(f"prefetch_rows must be >= 0 (0 = off), got {prefetch_rows}")
    if numba is None:
        raise NotImplementedError(_MISSING)
    return NumbaBag(width, prefetch_rows)


def get_numba_bag(name: str) -> NumbaBag:
    """The NumbaBag behind a registry name such as 'numba_w16' (for fused SGD, warm-up, asm)."""
    widths = {f"numba_w{w}": w for w in WIDTHS}
    if name not in widths:
        raise ValueError(f"{name!r} is not a numba kernel; numba kernels: {', '.join(widths)}")
    return _BAGS.get(name) or make_numba_bag(widths[name])


_BAGS: dict[str, NumbaBag] = {}
for _w in WIDTHS:
    _name = f"numba_w{_w}"
    if numba is None:
        register_unavailable(_name, backend=Backend.NUMBA, reason=_MISSING, requires=_REQUIRES)
        continue
    _BAGS[_name] = make_numba_bag(_w)
    _lanes = "scalar" if _w == 1 else f"{_w * 32}-bit"
    register(
        _name,
        backend=Backend.NUMBA,
        devices=("cpu",),
        requires=_REQUIRES,
        description=f"numba, {_w} float32 lanes per vector op ({_lanes}), parallel over bags",
    )(_BAGS[_name].fn)
