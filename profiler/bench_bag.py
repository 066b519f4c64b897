"""The embedding-bag kernel benchmark: grid points, tables on chosen page sizes, inputs, and one timed record per point.

Keys: B batch size (bags), E rows per table, D embedding dim, L pooling factor (lookups per bag).
A point times one kernel's forward, or with `backward` a training step: forward + backward + SGD
update (numba: the fused sparse SGD; fbgemm: TBE's fused exact-SGD backward; others: their sparse
gradient applied with `add_`). Tables are anonymous mmaps, madvised onto transparent huge pages
or off them, so page size is an input rather than whatever the allocator did.
"""

from __future__ import annotations

import itertools
import math
import mmap
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch

from kernels.validate import INT32_MAX
from profiler.metrics import Cost, embedding_bag_cost, fused_sgd_cost
from profiler.timer import Measurement

__all__ = [
    "GATHER_CEILING",
    "BagPoint",
    "Inputs",
    "alloc_table",
    "check_memory",
    "expand",
    "huge_page_bytes",
    "make_bags",
    "parse_distribution",
    "point_cost",
    "record",
    "step_fn",
]

GATHER_CEILING = "gather_ceiling"  # pseudo-kernel: profiler.stream's plain gather loop on the same table and rows
_HUGE_PAGE_BYTES = 2 << 20  # x86-64 PMD page; tables are aligned to it so THP can back them


@dataclass(frozen=True)
class BagPoint:
    """One benchmark point (see the module docstring for B, E, D, L)."""

    kernel: str
    batch_size: int
    num_rows: int
    embedding_dim: int
    pooling_factor: int
    distribution: str = "uniform"  # "uniform", "zipf:<exponent>" (e.g. "zipf:1.15") or "sd:PATH" (a profile)
    threads: int = 1
    huge_pages: bool = False
    backward: bool = False  # forward + backward + SGD update instead of forward alone
    index_dtype: str = "int64"

    def validate(self) -> BagPoint:
        if min(self.batch_size, self.num_rows, self.embedding_dim, self.pooling_factor, self.threads) < 1:
            raise ValueError(f"{self}: batch size, rows, dim, pooling factor and threads must be >= 1")
        if self.index_dtype not in ("int32", "int64"):
            raise ValueError(f"index_dtype={self.index_dtype!r}: allowed: int32, int64")
        if self.index_dtype == "int32" and self.num_rows > INT32_MAX:
            raise ValueError(f"num_rows={self.num_rows} does not fit int32 indices")
        if self.index_dtype == "int32" and self.batch_size * self.pooling_factor > INT32_MAX:
            raise ValueError(f"batch_size x pooling_factor = {self.batch_size * self.pooling_factor:,} lookups: "
                             "their offsets do not fit int32 (use --index-dtype int64)")  # fmt: skip
        parse_distribution(self.distribution)
        return self

    @property
    def table_key(self) -> tuple[int, int, bool]:
        return (self.num_rows, self.embedding_dim, self.huge_pages)

    @property
    def input_key(self) -> tuple[Any, ...]:
        return (*self.table_key, self.batch_size, self.pooling_factor, self.distribution, self.index_dtype)


def parse_distribution(text: str) -> tuple[str, float]:
    """'uniform' -> ('uniform', 0.0); 'zipf:1.15' -> ('zipf', 1.15). ValueError names the allowed forms."""
    if text == "uniform":
        return "uniform", 0.0
    name, _, arg = text.partition(":")
    if name == "sd" and arg:
        from model.traces import StackDistanceProfile

        StackDistanceProfile.read(arg)  # ValueError or OSError naming the file
        return "sd", 0.0
    if name == "zipf":
        try:
            s = float(arg)
        except ValueError:
            s = -1.0
        if s >= 0 and math.isfinite(s):  # 0 is uniform, as train --locality zipf:0 and a sweep take it
            return "zipf", s
    raise ValueError(
        f"distribution {text!r}: allowed: uniform, zipf:<exponent >= 0> (e.g. zipf:1.15), sd:PATH (a stack-distance "
        "profile)"
    )


def expand(kernels: list[str], **axes: list[Any]) -> list[BagPoint]:
    """Cartesian product of the axes (BagPoint field names -> lists of values) for every kernel.

    Ordered table-major (one table alive at a time), then inputs, with the kernels innermost so
    they are compared on the same table and indices, back to back.
    """
    outer = ("num_rows", "embedding_dim", "huge_pages", "batch_size", "pooling_factor", "distribution")
    rest = ("index_dtype", "threads", "backward")
    for name in axes:
        if name not in BagPoint.__dataclass_fields__ or name == "kernel":
            raise ValueError(f"unknown axis {name!r}; axes: {', '.join(outer + rest)}")
    names = [n for n in outer + rest if n in axes]
    points = []
    for values in itertools.product(*(axes[n] for n in names)):
        for kernel in kernels:
            points.append(BagPoint(kernel, **dict(zip(names, values, strict=True)), **_defaults(names)).validate())
    return points


def _defaults(given: list[str]) -> dict[str, Any]:
    required = {"batch_size": 2048, "num_rows": 1_000_000, "embedding_dim": 64, "pooling_factor": 20}
    return {k: v for k, v in required.items() if k not in given}


def check_memory(p: BagPoint) -> None:
    """Refuse, before allocating, a point whose table and inputs do not fit in available memory.

    The sweep's check (profiler.workload.check_memory) on the same shape: one table, every row hot.
    Raises:
        MemoryError with the bytes needed and available, and the most rows that would fit.
    """
    from profiler.sweep_spec import Point
    from profiler.workload import check_memory as check_point

    def check(rows: int) -> None:
        mode = "backward" if p.backward else "forward"
        check_point(Point(kernel=p.kernel, batch_size=p.batch_size, num_rows=rows, embedding_dim=p.embedding_dim,
                          pooling_factor=p.pooling_factor, mode=mode), rows, touched_mask=False)  # fmt: skip

    try:
        check(p.num_rows)
    except MemoryError as exc:
        lo, hi = 0, p.num_rows  # bisect: lo rows fit (0 taken to), hi do not
        while hi - lo > 1:
            mid = (lo + hi) // 2
            try:
                check(mid)
                lo = mid
            except MemoryError:
                hi = mid
        hint = f"at most {lo} rows fit" if lo else "not even one row fits at this batch size and pooling factor"
        raise MemoryError(f"{exc}: {hint}") from None


def alloc_table(rows: int, dim: int, huge_pages: bool, seed: int = 0) -> torch.Tensor:
    """A (rows, dim) float32 table in its own 2 MiB-aligned anonymous mapping, madvised on or off THP.

    The advice is given before the first touch, so the kernel backs the pages as asked from the
    start (when THP is in "madvise" or "always" mode). Values are uniform in [-1, 1).
    """
    nbytes = rows * dim * 4
    buf = mmap.mmap(-1, nbytes + _HUGE_PAGE_BYTES, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    base = np.frombuffer(buf, dtype=np.uint8)
    start = (-base.ctypes.data) % _HUGE_PAGE_BYTES
    advice = getattr(mmap, "MADV_HUGEPAGE" if huge_pages else "MADV_NOHUGEPAGE", None)
    if advice is not None:  # not on every platform; then the page size is the system's default
        buf.madvise(advice, start - start % mmap.PAGESIZE, nbytes + start % mmap.PAGESIZE)
    table = torch.from_numpy(base[start : start + nbytes].view(np.float32).reshape(rows, dim))
    g = torch.Generator().manual_seed(seed)
    for lo in range(0, rows, 1 << 20):  # fill in slices: no second table-sized temporary
        hi = min(rows, lo + (1 << 20))
        table[lo:hi].uniform_(-1.0, 1.0, generator=g)
    return table


def huge_page_bytes(t: torch.Tensor) -> int | None:
    """Bytes of `t`'s mapping backed by transparent huge pages (/proc/self/smaps AnonHugePages); None if unknown."""
    addr = t.data_ptr()
    try:
        with open("/proc/self/smaps") as f:
            inside = False
            for line in f:
                head = line.split(maxsplit=1)[0]
                if "-" in head and not head.endswith(":"):
                    lo, _, hi = head.partition("-")
                    inside = int(lo, 16) <= addr < int(hi, 16)
                elif inside and head == "AnonHugePages:":
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def make_bags(
    batch_size: int, rows: int, pooling: int, distribution: str, seed: int = 0, dtype: torch.dtype = torch.int64
) -> tuple[torch.Tensor, torch.Tensor]:
    """B bags of L lookups each: (indices (B*L,), offsets (B+1,)) of `dtype`.

    Zipf: rank k is drawn with probability proportional to k^-s, and ranks map to rows through a
    fixed random permutation, so hot rows are scattered over the table as in real traces. sd:PATH:
    one LRU stream over all the bags, its stack distances following the profile (profiler.workload).
    """
    from profiler.workload import sample_rows

    kind, _ = parse_distribution(distribution)
    g = torch.Generator().manual_seed(seed)
    n = batch_size * pooling
    idx = sample_rows(distribution, rows, n, g)  # uniform rows, or Zipf or LRU-stream ranks
    if kind != "uniform":
        idx = torch.randperm(rows, generator=g)[idx]
    offsets = torch.arange(0, n + 1, pooling, dtype=dtype)
    return idx.to(dtype), offsets


def bag_batches(
    batch_size: int, rows: int, pooling: int, distribution: str, seed: int = 0, dtype: torch.dtype = torch.int64
) -> list[torch.Tensor]:
    """Index batches for the timed calls to rotate through, enough to sweep the table twice (within the
    sweep's caps, profiler.workload). Zipf ranks map to rows through one permutation shared by all batches.

    One batch reused call after call touches only its own B x L rows, which then sit in cache
    whatever the table's size; rotating makes the table, not one batch, the working set.
    """
    from profiler.workload import rotation_batches

    n = batch_size * pooling
    count = rotation_batches(rows, n)
    # drawn as one call of count x B bags: one placement of the Zipf ranks for every batch, so the hot
    # rows stay hot from call to call
    idx, _ = make_bags(count * batch_size, rows, pooling, distribution, seed, dtype)
    return list(idx.view(count, n).unbind(0))


def point_cost(p: BagPoint) -> Cost:
    """Bytes and FLOPs one timed call moves: the forward (profiler.metrics), plus the update when backward."""
    n = p.batch_size * p.pooling_factor
    ib = 4 if p.index_dtype == "int32" else 8
    cost = embedding_bag_cost(p.batch_size, n, p.embedding_dim, index_bytes=ib, offset_bytes=ib)
    return cost + fused_sgd_cost(p.batch_size, n, p.embedding_dim, index_bytes=ib) if p.backward else cost


@dataclass
class Inputs:
    """What a point's step runs on; `table` is shared by every kernel of the point."""

    table: torch.Tensor
    batches: list[torch.Tensor]  # index batches; each timed call takes the next
    offsets: torch.Tensor
    grad_out: torch.Tensor
    lr: float = 0.01

    @property
    def indices(self) -> torch.Tensor:
        return self.batches[0]


def step_fn(p: BagPoint, x: Inputs) -> tuple[Callable[[], object], dict[str, Any]]:
    """The zero-argument call to time for point `p`, with kernel facts to record (e.g. prefetch distance).

    Compilation and first-call costs are paid here, before any timed region.
    """
    import torch.nn.functional as F

    from kernels import get
    from kernels.validate import validate_bags

    extra: dict[str, Any] = {}
    t, idx, off, g, lr = x.table, x.indices, x.offsets, x.grad_out, x.lr
    for batch in x.batches:  # the compiled loops below are called unchecked: check what they will read, once
        validate_bags(t.shape[0], batch, off, device=t.device)
    rot = itertools.cycle(x.batches)  # each call takes the next index batch
    if p.kernel == GATHER_CEILING:
        from profiler.stream import kernels as stream_kernels

        gather, tn = stream_kernels()["gather"], t.numpy()
        rot = itertools.cycle([b.numpy() for b in x.batches])
        out = np.empty((p.batch_size, p.embedding_dim), dtype=np.float32)
        fn = lambda: gather(tn, next(rot), out, p.pooling_factor, p.threads)  # noqa: E731
    elif p.kernel.startswith("numba_w"):
        from kernels.numba_bag import get_numba_bag

        bag = get_numba_bag(p.kernel)
        bag.warm((idx.dtype,))
        extra["prefetch_rows"] = bag.prefetch_distance(t.numel() * 4)
        if p.backward:
            extra["sgd_prefetch_rows"] = bag.prefetch_distance(t.numel() * 4, sgd=True)
        if p.backward:
            fn = lambda: (bag.forward(t, i := next(rot), off), bag.sgd_(t, i, off, g, lr))  # noqa: E731
        else:
            fn = lambda: bag.forward(t, next(rot), off)  # noqa: E731
    elif p.kernel == "fbgemm" and p.backward:
        from kernels.fbgemm_bag import FbgemmSGD

        tbe = FbgemmSGD(t, lr, share_weight=True)
        fn = lambda: tbe.step(next(rot), off, g)  # noqa: E731
    elif p.kernel == "torch" and not p.backward:
        fn = lambda: F.embedding_bag(next(rot), t, off, mode="sum", include_last_offset=True)  # noqa: E731
    else:
        kernel = get(p.kernel, "cpu").fn
        if p.backward:
            w = t.detach().requires_grad_()

            def fn() -> None:
                kernel(w, next(rot), off, None, "sum", True).backward(g)
                with torch.no_grad():
                    w.add_(w.grad, alpha=-lr)  # torch.optim.SGD's step for a sparse gradient
                w.grad = None
        else:
            fn = lambda: kernel(t, next(rot), off)  # noqa: E731
    if p.kernel == "fbgemm" and (p.threads or torch.get_num_threads()) > 1:  # 0: torch's count
        # measured: 1,317 and 1,307 us at 1 and 2 threads (B=2048, E=1e6, D=64, L=20), torch 1,262 and 643
        extra["kernel_note"] = "fbgemm-gpu-cpu 1.8.0 runs its CPU ops on one thread: compare at t=1"
    fn()  # compile / first touch outside the timed region
    return fn, extra


def record(p: BagPoint, m: Measurement, extra: dict[str, Any]) -> dict[str, Any]:
    """One JSON-ready object per point: the point, the raw measurement, and derived rates."""
    cost = point_cost(p)
    lookups = p.batch_size * p.pooling_factor
    return {
        **asdict(p),
        "median_s": m.median_s,
        "iqr_s": m.iqr_s,
        "min_s": m.min_s,
        "samples_s": list(m.samples_s),
        "calls_per_sample": m.calls_per_sample,
        "warnings": list(m.warnings),
        "bytes_moved": cost.bytes_moved,
        "gbps": cost.bytes_moved / m.median_s / 1e9,
        "lookups_per_s": lookups / m.median_s,
        **extra,
    }
