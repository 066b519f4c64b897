"""Independent checks of the measured ceilings: plain numpy / torch calls timed with bare perf_counter.

Neither the numba loops nor profiler.timer time the independent side, so agreement within 10% says
the ceiling is a property of the machine, not of our kernels or timer. The pairs compare like
traffic: numpy's `a = b + c` (STREAM Add) moves the same bytes as the triad ceiling (two reads
and a write-allocated write per element); torch.mm timed with a bare
loop is compared with the GEMM ceiling (torch.mm through profiler.timer). torch's triad is not a
check: it is one of the methods the ceiling takes the fastest of.

Same window: this host's speed drifts by 10-25% over minutes (neighbours share its L3 and
memory), so a ceiling recorded a minute earlier can differ from any later figure by more than
the 10% asked. Each check therefore runs in rounds that alternate the ceiling's own method
(profiler.ceilings, re-run with a short budget) with the independent one, and compares the two
at their fast ends (best round), as ceilings are read; the recorded ceiling is reported beside.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from profiler import ceilings as ceil
from profiler.ceilings import Ceiling, level_working_sets

__all__ = ["AGREEMENT", "Check", "run_checks"]

AGREEMENT = 0.10  # the goal: ceilings agree with an independent measurement within 10%
_RECHECK_BUDGET = {"warmup_ms": 10.0, "rep_ms": 60.0, "min_reps": 3}


@dataclass(frozen=True)
class Check:
    """One independent figure beside the ceiling it checks."""

    name: str
    ceiling_key: str
    ceiling_value: float  # the ceiling's own method, re-measured in the rounds beside the independent one
    independent_value: float
    unit: str  # GB/s | GFLOP/s
    method: str
    ceiling_recorded: float = 0.0  # the value machine.json holds (measured earlier in the run)
    rounds: int = 1
    informative: bool = False  # a different library: reported, not part of the verdict

    @property
    def ratio(self) -> float:
        return self.independent_value / self.ceiling_value

    @property
    def agrees(self) -> bool:
        return abs(self.ratio - 1.0) <= AGREEMENT

    @property
    def drift(self) -> float:
        """Recorded ceiling / the same method re-measured now: how far the host moved meanwhile."""
        return self.ceiling_recorded / self.ceiling_value if self.ceiling_value else float("nan")

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio, "agrees": self.agrees, "drift": self.drift}


def _fast_time_s(fn: Callable[[], object], reps: int) -> float:
    """Bare perf_counter around `reps` calls after one warm call; the 10th-percentile time."""
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[int(0.1 * (len(times) - 1))]


def _threads(n: int, fn: Callable[[], float]) -> float:
    import torch

    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        return fn()
    finally:
        torch.set_num_threads(old)


def _alternate(
    rounds: int, ceiling_fn: Callable[[], float], independent_fn: Callable[[], float]
) -> tuple[float, float]:
    """Best of `rounds` of each side (value units: higher is faster), the sides taking turns."""
    c_best = i_best = 0.0
    for _ in range(rounds):
        c_best = max(c_best, ceiling_fn())
        i_best = max(i_best, independent_fn())
    return c_best, i_best


def run_checks(fp: dict[str, Any], ceilings: list[Ceiling], *, reps: int = 7, rounds: int = 3) -> list[Check]:
    """Check the 1-thread triad (L3, DRAM) and the square GEMMs against independent timings.

    Args:
        fp: the fingerprint the ceilings were measured with (cache sizes).
        ceilings: the measured ceilings (measure_ceilings).
        reps: perf_counter samples per independent figure per round.
        rounds: alternations of ceiling method and independent method.
    """
    import torch

    by_key = {c.key: c for c in ceilings if c.source == "measured"}
    out: list[Check] = []
    sets = level_working_sets(fp, 1)
    for level in ("L3", "DRAM"):
        recorded = by_key.get(f"triad/{level}/1t/float32")
        if recorded is None or level not in sets:
            continue
        n = sets[level] // 12
        a, b, c = (np.full(n, 1.0 + i, dtype=np.float32) for i in range(3))
        sweeps = ceil.sweeps_per_call(level, 12 * n)

        def again(level: str = level) -> float:
            return ceil.stream_ceiling("triad", level, sets[level], 1, _RECHECK_BUDGET).value

        def numpy_add(a=a, b=b, c=c, sweeps=sweeps, nbytes=12 * n * sweeps) -> float:
            def call() -> None:
                for _ in range(sweeps):
                    np.add(b, c, out=a)

            return nbytes / _fast_time_s(call, reps) / 1e9

        c_val, i_val = _alternate(rounds, again, numpy_add)
        out.append(
            Check(f"numpy add {level}", recorded.key, c_val, i_val, "GB/s", "np.add(b, c, out=a), perf_counter",
                  recorded.value, rounds)
        )  # fmt: skip

    gemms = [c for c in ceilings if c.name == "gemm" and c.dtype == "float32" and c.device == "cpu"]
    square = [c for c in gemms if len(set(c.shape)) == 1]
    for recorded in sorted(square, key=lambda c: c.threads):
        M, K, N = recorded.shape
        x, y = torch.randn(M, K), torch.randn(K, N)

        def again(recorded: Ceiling = recorded) -> float:
            return ceil.gemm_ceiling(recorded.shape, "float32", recorded.threads, _RECHECK_BUDGET).value

        def torch_mm(x=x, y=y, threads=recorded.threads, flops=2 * M * K * N) -> float:
            return _threads(threads, lambda: flops / _fast_time_s(lambda: torch.mm(x, y), reps) / 1e9)

        c_val, i_val = _alternate(rounds, again, torch_mm)
        out.append(
            Check(
                f"torch.mm {recorded.threads}t", recorded.key, c_val, i_val, "GFLOP/s",
                "torch.mm, perf_counter", recorded.value, rounds,
            )
        )  # fmt: skip
    if square:
        # numpy's BLAS (OpenBLAS in numpy's wheels) runs its own pool with all cores: informative only.
        # It runs last: its threads spin after each call and would slow a torch call made beside it.
        recorded = max(square, key=lambda c: c.threads)
        M, K, N = recorded.shape
        xn, yn = np.random.default_rng(0).standard_normal((2, M, K), dtype=np.float32)
        value = 2 * M * K * N / _fast_time_s(lambda: xn @ yn, reps) / 1e9
        out.append(
            Check(
                "numpy matmul (its BLAS, its threads)", recorded.key, recorded.value, value, "GFLOP/s",
                "numpy @: a different library, informative", recorded.value, 1, informative=True,
            )
        )  # fmt: skip
    return out
