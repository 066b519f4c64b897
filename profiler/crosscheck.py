"""Independent checks of the measured ceilings: plain numpy / torch loops timed with bare perf_counter.

Neither the numba loops nor profiler.timer are used here, so agreement within 10% says the ceiling
is a property of the machine, not of our kernels or timer. The pairs compare like traffic: numpy's
`a = b + c` (STREAM Add) and torch's fused `a = b + s*c` move the same bytes as the triad ceiling
(two reads and a write-allocated write per element); torch.mm is compared with the GEMM ceiling.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from profiler.ceilings import Ceiling, level_working_sets

__all__ = ["AGREEMENT", "Check", "run_checks"]

AGREEMENT = 0.10  # the goal: ceilings agree with an independent measurement within 10%


@dataclass(frozen=True)
class Check:
    """One independent figure beside the ceiling it checks."""

    name: str
    ceiling_key: str
    ceiling_value: float
    independent_value: float
    unit: str  # GB/s | GFLOP/s
    method: str

    @property
    def ratio(self) -> float:
        return self.independent_value / self.ceiling_value

    @property
    def agrees(self) -> bool:
        return abs(self.ratio - 1.0) <= AGREEMENT

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "agrees": self.agrees}


def _median_time_s(fn: Callable[[], object], reps: int) -> float:
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def _single_thread(fn: Callable[[], float]) -> float:
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn()
    finally:
        torch.set_num_threads(old)


def run_checks(fp: dict[str, Any], ceilings: list[Ceiling], *, reps: int = 7) -> list[Check]:
    """Re-measure the 1-thread triad (L3, DRAM) and 1-thread square GEMM independently."""
    import torch

    by_key = {c.key: c for c in ceilings if c.source == "measured"}
    out: list[Check] = []
    sets = level_working_sets(fp, 1)
    for level in ("L3", "DRAM"):
        ceiling = by_key.get(f"triad/{level}/1t/float32")
        if ceiling is None or level not in sets:
            continue
        n = sets[level] // 12
        a, b, c = (np.full(n, 1.0 + i, dtype=np.float32) for i in range(3))
        s = _median_time_s(lambda a=a, b=b, c=c: np.add(b, c, out=a), reps)
        out.append(
            Check(f"numpy add {level}", ceiling.key, ceiling.value, 12 * n / s / 1e9, "GB/s", "np.add(b, c, out=a)")
        )
        ta, tb, tc = (torch.from_numpy(x) for x in (a, b, c))
        s = _single_thread(
            lambda ta=ta, tb=tb, tc=tc: _median_time_s(lambda: torch.add(tb, tc, alpha=0.5, out=ta), reps)
        )
        out.append(
            Check(
                f"torch triad {level}",
                ceiling.key,
                ceiling.value,
                12 * n / s / 1e9,
                "GB/s",
                "torch.add(b, c, alpha, out=a)",
            )
        )
    gemms = [c for c in ceilings if c.name == "gemm" and c.threads == 1 and c.dtype == "float32" and c.device == "cpu"]
    square = [c for c in gemms if len(set(c.shape)) == 1]
    if square:
        ceiling = square[0]
        M, K, N = ceiling.shape
        x, y = torch.randn(M, K), torch.randn(K, N)
        s = _single_thread(lambda: _median_time_s(lambda: torch.mm(x, y), reps))
        out.append(
            Check("torch.mm", ceiling.key, ceiling.value, 2 * M * K * N / s / 1e9, "GFLOP/s", "torch.mm, perf_counter")
        )
    # numpy's BLAS runs with its own (default: all) threads, so it is set beside the all-threads ceiling.
    square_all = [
        c for c in ceilings
        if c.name == "gemm" and c.dtype == "float32" and c.device == "cpu" and len(set(c.shape)) == 1
    ]  # fmt: skip
    if square_all:
        ceiling = max(square_all, key=lambda c: c.threads)
        M, K, N = ceiling.shape
        xn, yn = np.random.default_rng(0).standard_normal((2, M, K), dtype=np.float32)
        s = _median_time_s(lambda: xn @ yn, reps)
        out.append(
            Check(
                "numpy matmul (its BLAS, its threads)", ceiling.key, ceiling.value, 2 * M * K * N / s / 1e9,
                "GFLOP/s", "numpy @: a different library, informative",
            )
        )  # fmt: skip
    return out
