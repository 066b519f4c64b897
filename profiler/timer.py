"""The project's one timer: `measure(fn)` warms up, repeats, and returns every raw sample with its statistics.

Method (CPU):
    1. Warm-up by time budget. `fn` is called in doubling blocks (1, 2, 4, ... calls) until `warmup_ms`
       has passed; the last block gives the per-call estimate, so a slow first call (JIT compile, page
       faults, allocator growth) neither counts nor skews the estimate.
    2. Blocking. Reading the clock costs roughly 30-100 ns and the Python loop around it a little more;
       against a 100 µs kernel one read pair per call is already ~0.1%, against a 5 µs kernel it is
       several percent. So, unless the cache is flushed, each sample times a block of
       `calls_per_sample` back-to-back calls lasting about `_BLOCK_S` (1 ms), and records block time /
       calls. A 100 µs kernel gets 10 calls per sample and the clock costs <0.01% of a block. The price:
       a sample is a mean over its block, so variation *within* a block is invisible (the IQR
       understates per-call jitter), and a block of warm calls is warmer than one isolated call would
       be. We keep at least `min_reps` samples by shrinking the block when the budget is tight.
    3. Repetition until `rep_ms` has passed and at least `min_reps` samples exist, or `max_reps`.
       Nothing is dropped: the raw samples are kept; median and IQR summarise them; a warning is
       attached when IQR/median or stdev/mean passes 10%.

Cache state is an input. `flush_bytes=0` (default) measures a warm cache. Otherwise a buffer of that
size is overwritten before every sample, outside the timed region, and each sample then holds exactly
one call (a second call in the block would find the cache warm again). `llc_flush_bytes()` gives a
size comfortably above the last-level cache.

GPU (`device="cuda[:n]"`): the timer synchronises; call sites never do. Each sample is bracketed by
CUDA events recorded on the current stream; the sample count is fixed from the warm-up estimate, all
events are recorded back to back and the device is synchronised once at the end, so the host never
leaves the GPU idle between samples. Flushing zeroes a device buffer with the same stream.

Threads: `threads=N` sets torch's (and numba's, when numba is already imported) thread count for the
measurement and restores it afterwards; the count used is recorded either way.

Contention: /proc pressure, steal and load are read before and after (see profiler.contention); a
contended measurement carries a warning and `contention.contended`. `wait_quiet_s > 0` first waits,
bounded, for a quiet window.
"""

from __future__ import annotations

import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from profiler.contention import Contention, assess, snapshot, usable_cpus, wait_for_quiet

__all__ = [
    "SPREAD_LIMIT",
    "Measurement",
    "clock_overhead_s",
    "from_samples",
    "llc_flush_bytes",
    "measure",
    "percent_over",
    "usable_cpus",
]

SPREAD_LIMIT = 0.10  # IQR/median or stdev/mean above this: the measurement is noisy (TB and pyperf use 10%)
_BLOCK_S = 1e-3  # target duration of one timed block on CPU: clock overhead <0.01% of it
_MAX_WARMUP_BLOCK = 1 << 16  # calls; bounds warm-up when the clock does not advance
_MAX_CALLS_PER_SAMPLE = 10_000  # a 10 ns call still gets a 100 µs block: clock overhead ~0.1%
_CLOCK_PROBES = 200  # clock reads used to estimate one read's cost


@dataclass(frozen=True)
class Measurement:
    """Raw samples (seconds per call) and how they were taken; statistics are derived properties."""

    samples_s: list[float]
    calls_per_sample: int = 1
    threads: int = 1
    flush_bytes: int = 0
    device: str = "cpu"
    warmup_calls: int = 0
    clock_overhead_s: float = 0.0  # one clock read, estimated; 0 on GPU (events)
    warnings: list[str] = field(default_factory=list)
    contention: Contention | None = None

    def validate(self) -> Measurement:
        if not self.samples_s:
            raise ValueError("a Measurement needs at least one sample")
        if self.calls_per_sample < 1 or self.threads < 1 or self.flush_bytes < 0:
            raise ValueError(
                f"calls_per_sample={self.calls_per_sample}, threads={self.threads}, "
                f"flush_bytes={self.flush_bytes}: expected >= 1, >= 1, >= 0"
            )
        return self

    @property
    def median_s(self) -> float:
        return statistics.median(self.samples_s)

    @property
    def p25_s(self) -> float:
        return _quantile(self.samples_s, 0.25)

    @property
    def p75_s(self) -> float:
        return _quantile(self.samples_s, 0.75)

    @property
    def iqr_s(self) -> float:
        return self.p75_s - self.p25_s

    @property
    def p10_s(self) -> float:
        """The fast end of the samples: what the machine does when nothing interferes.

        Interference (a neighbour's thread, an interrupt) only ever slows a sample, so a ceiling
        is read here rather than at the median; unlike min it is not one lucky sample.
        """
        return _quantile(self.samples_s, 0.10)

    @property
    def min_s(self) -> float:
        return min(self.samples_s)

    @property
    def mean_s(self) -> float:
        return statistics.fmean(self.samples_s)

    @property
    def stdev_s(self) -> float:
        return statistics.stdev(self.samples_s) if len(self.samples_s) > 1 else 0.0

    @property
    def overhead_frac(self) -> float:
        """Share of a timed block spent reading the clock: about one read's cost lands inside each block
        (the end of the read that starts it, the start of the one that ends it)."""
        block_s = self.median_s * self.calls_per_sample
        return self.clock_overhead_s / block_s if block_s > 0 else 0.0

    @property
    def contended(self) -> bool:
        return bool(self.contention and self.contention.contended)

    def to_dict(self) -> dict[str, Any]:
        """Raw samples plus flattened scalar summaries (the summaries are ignored by from_dict)."""
        return {
            "samples_s": list(self.samples_s),
            "calls_per_sample": self.calls_per_sample,
            "threads": self.threads,
            "flush_bytes": self.flush_bytes,
            "device": self.device,
            "warmup_calls": self.warmup_calls,
            "clock_overhead_s": self.clock_overhead_s,
            "warnings": list(self.warnings),
            "contention": self.contention.to_dict() if self.contention else None,
            "n_samples": len(self.samples_s),
            "median_s": self.median_s,
            "iqr_s": self.iqr_s,
            "p25_s": self.p25_s,
            "p75_s": self.p75_s,
            "p10_s": self.p10_s,
            "min_s": self.min_s,
            "mean_s": self.mean_s,
            "stdev_s": self.stdev_s,
            "contended": self.contended,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Measurement:
        contention = d.get("contention")
        return cls(
            samples_s=[float(x) for x in d["samples_s"]],
            calls_per_sample=int(d.get("calls_per_sample", 1)),
            threads=int(d.get("threads", 1)),
            flush_bytes=int(d.get("flush_bytes", 0)),
            device=str(d.get("device", "cpu")),
            warmup_calls=int(d.get("warmup_calls", 0)),
            clock_overhead_s=float(d.get("clock_overhead_s", 0.0)),
            warnings=[str(w) for w in d.get("warnings", [])],
            contention=Contention.from_dict(contention) if contention else None,
        ).validate()

    def __str__(self) -> str:
        return (
            f"median {self.median_s * 1e6:.2f} us, IQR {self.iqr_s * 1e6:.2f} us, "
            f"{len(self.samples_s)} samples x {self.calls_per_sample} calls, {self.threads} threads"
            + (f" [{'; '.join(self.warnings)}]" if self.warnings else "")
        )


def _quantile(xs: list[float], q: float) -> float:
    """Linear-interpolation quantile (numpy's default method)."""
    s = sorted(xs)
    pos = (len(s) - 1) * q
    lo = math.floor(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def llc_flush_bytes(factor: int = 2, fallback_bytes: int = 256 << 20) -> int:
    """A flush size of `factor` x the largest cache that sysfs reports (fallback when unreadable)."""
    from profiler.fingerprint import sysfs_caches

    sizes = [c["size_bytes"] for c in sysfs_caches()]
    return factor * max(sizes) if sizes else fallback_bytes


def _set_threads(threads: int | None) -> tuple[int, Callable[[], None]]:
    """Set the thread count; return the count in force and an undo."""
    import torch

    old = torch.get_num_threads()
    numba = sys.modules.get("numba")  # only when the caller already uses numba: importing it costs ~0.5 s
    old_numba = numba.get_num_threads() if numba is not None else None
    if threads is None:
        return old, lambda: None
    if threads < 1:
        raise ValueError(f"threads={threads}: expected >= 1 or None (leave as is)")
    cpus = usable_cpus()
    if threads > cpus:
        # torch would run them all, numba stops at NUMBA_NUM_THREADS (the CPU count): a kernel
        # comparison at such a count compares different thread counts, and both time the scheduler.
        raise ValueError(f"threads={threads}: this process may use {cpus} CPUs; time at most {cpus} threads")
    torch.set_num_threads(threads)
    if numba is not None:
        if threads > numba.config.NUMBA_NUM_THREADS:
            raise ValueError(
                f"threads={threads}: numba runs at most NUMBA_NUM_THREADS={numba.config.NUMBA_NUM_THREADS}; "
                "raise it (environment) or time fewer threads"
            )
        numba.set_num_threads(threads)

    def undo() -> None:
        torch.set_num_threads(old)
        if numba is not None and old_numba is not None:
            numba.set_num_threads(old_numba)

    return torch.get_num_threads(), undo


def clock_overhead_s(clock: Callable[[], float]) -> float:
    """Seconds one call of `clock` costs (the mean of a few hundred back-to-back reads)."""
    t0 = clock()
    for _ in range(_CLOCK_PROBES):
        clock()
    return max(0.0, (clock() - t0) / (_CLOCK_PROBES + 1))


def _warmup(
    fn: Callable[[], object], warmup_s: float, clock: Callable[[], float], sync: Callable[[], None]
) -> tuple[int, float]:
    """Doubling blocks until warmup_s has passed; returns (calls made, seconds per call in the last block)."""
    calls, n, t_start = 0, 1, clock()
    while True:
        t0 = clock()
        for _ in range(n):
            fn()
        sync()
        t1 = clock()
        calls += n
        per_call_s = (t1 - t0) / n
        # Never stop after the first call alone: it may include a compile and would spoil the estimate.
        if (calls > 1 and t1 - t_start >= warmup_s) or n >= _MAX_WARMUP_BLOCK:
            return calls, per_call_s
        n *= 2


def _calls_per_sample(per_call_s: float, rep_s: float, min_reps: int, flush: bool) -> int:
    if flush or per_call_s <= 0 or per_call_s >= _BLOCK_S:
        return 1
    cps = math.ceil(_BLOCK_S / per_call_s - 1e-6)  # the epsilon absorbs float noise in the estimate
    if cps * per_call_s * min_reps > rep_s * (1 + 1e-6):  # keep min_reps samples inside the budget
        cps = max(1, math.floor(rep_s / (min_reps * per_call_s) + 1e-6))
    return min(cps, _MAX_CALLS_PER_SAMPLE)


def percent_over(ratio: float, limit: float) -> str:
    """`ratio` in percent with the fewest decimals (up to 4) that print it above `limit` at the same
    precision: 0.104 over 0.10 is '10.4%', never '10% > 10%'."""
    for digits in range(5):
        shown = f"{100 * ratio:.{digits}f}"
        if float(shown) > float(f"{100 * limit:.{digits}f}"):
            return f"{shown}%"
    return f"{100 * ratio:.4f}%"


def _spread_warnings(m: Measurement) -> list[str]:
    out = []
    med, mean = m.median_s, m.mean_s
    if med > 0 and m.iqr_s / med > SPREAD_LIMIT:
        out.append(f"noisy: IQR/median = {percent_over(m.iqr_s / med, SPREAD_LIMIT)} > {SPREAD_LIMIT:.0%}")
    if mean > 0 and m.stdev_s / mean > SPREAD_LIMIT:
        out.append(f"noisy: stdev/mean = {percent_over(m.stdev_s / mean, SPREAD_LIMIT)} > {SPREAD_LIMIT:.0%}")
    if m.overhead_frac > 0.01:
        out.append(f"clock overhead {m.overhead_frac:.1%} of a sample (call too short to time unblocked)")
    return out


def measure(
    fn: Callable[[], object],
    *,
    warmup_ms: float = 50.0,
    rep_ms: float = 200.0,
    min_reps: int = 5,
    max_reps: int = 10_000,
    flush_bytes: int = 0,
    threads: int | None = None,
    device: str = "cpu",
    clock: Callable[[], float] = time.perf_counter,
    wait_quiet_s: float = 0.0,
    check_contention: bool = True,
) -> Measurement:
    """Time `fn()` (the module docstring explains the method).

    Args:
        fn: the work, with no arguments; its result is ignored.
        warmup_ms: warm-up budget; at least one call is made.
        rep_ms: measurement budget; sampling stops once it has passed and `min_reps` samples exist.
        min_reps, max_reps: bounds on the number of samples.
        flush_bytes: 0 = warm cache; otherwise a buffer this large is overwritten before each sample.
        threads: thread count to set for the measurement (restored afterwards); None leaves it.
        device: "cpu" or "cuda[:n]"; on CUDA the timer synchronises and times with events.
        clock: seconds, monotonic; tests pass a fake one.
        wait_quiet_s: if > 0, first wait at most this long for a window free of contention.
        check_contention: read CPU pressure / steal / load before and after.
    Returns:
        A Measurement: seconds per call for each sample, calls per sample, thread count, warnings.
    """
    if min_reps < 1 or max_reps < min_reps:
        raise ValueError(f"min_reps={min_reps}, max_reps={max_reps}: need 1 <= min_reps <= max_reps")
    if warmup_ms < 0 or rep_ms < 0 or flush_bytes < 0:
        raise ValueError(f"warmup_ms={warmup_ms}, rep_ms={rep_ms}, flush_bytes={flush_bytes}: must be >= 0")
    on_gpu = device.startswith("cuda")
    if not on_gpu and device != "cpu":
        raise ValueError(f"device={device!r}: allowed: cpu, cuda, cuda:N")
    used_threads, undo = _set_threads(threads)
    try:
        waited_s = 0.0
        if wait_quiet_s > 0:
            _, waited_s = wait_for_quiet(wait_quiet_s, threads=used_threads)
        before = snapshot() if check_contention else None
        if on_gpu:
            samples, cps, warm_calls, overhead_s = _measure_cuda(
                fn, device, warmup_ms / 1e3, rep_ms / 1e3, min_reps, max_reps, flush_bytes, clock
            )
        else:
            samples, cps, warm_calls, overhead_s = _measure_cpu(
                fn, warmup_ms / 1e3, rep_ms / 1e3, min_reps, max_reps, flush_bytes, clock
            )
        contention = None
        if before is not None:
            contention = assess(before, snapshot(), threads=used_threads, waited_s=waited_s)
    finally:
        undo()
    return from_samples(
        samples,
        calls_per_sample=cps,
        threads=used_threads,
        flush_bytes=flush_bytes,
        device=device,
        warmup_calls=warm_calls,
        clock_overhead_s=overhead_s,
        contention=contention,
    )


def from_samples(
    samples_s: list[float],
    *,
    calls_per_sample: int = 1,
    threads: int = 1,
    flush_bytes: int = 0,
    device: str = "cpu",
    warmup_calls: int = 0,
    clock_overhead_s: float = 0.0,
    contention: Contention | None = None,
) -> Measurement:
    """A Measurement of samples taken elsewhere (e.g. by worker processes), with the warnings `measure` attaches:
    spread past SPREAD_LIMIT, clock overhead, and contention."""
    args = (samples_s, calls_per_sample, threads, flush_bytes, device, warmup_calls, clock_overhead_s)
    warnings = _spread_warnings(Measurement(*args, [], contention).validate())
    if contention is not None and contention.contended:
        warnings.append("contended: " + "; ".join(contention.reasons))
    return Measurement(*args, warnings, contention)


def _measure_cpu(
    fn: Callable[[], object],
    warmup_s: float,
    rep_s: float,
    min_reps: int,
    max_reps: int,
    flush_bytes: int,
    clock: Callable[[], float],
) -> tuple[list[float], int, int, float]:
    import numpy as np

    overhead_s = clock_overhead_s(clock)
    flush_buf = np.empty(flush_bytes, dtype=np.uint8) if flush_bytes else None
    warm_calls, per_call_s = _warmup(fn, warmup_s, clock, lambda: None)
    cps = _calls_per_sample(per_call_s, rep_s, min_reps, flush_buf is not None)
    samples: list[float] = []
    t_start = clock()
    while len(samples) < max_reps:
        if flush_buf is not None:
            flush_buf.fill(len(samples) & 0xFF)  # a write: the kernel's lines are evicted, not just shared
        t0 = clock()
        for _ in range(cps):
            fn()
        t1 = clock()
        samples.append((t1 - t0) / cps)
        if len(samples) >= min_reps and t1 - t_start >= rep_s:
            break
    return samples, cps, warm_calls, overhead_s


def _measure_cuda(
    fn: Callable[[], object],
    device: str,
    warmup_s: float,
    rep_s: float,
    min_reps: int,
    max_reps: int,
    flush_bytes: int,
    clock: Callable[[], float],
) -> tuple[list[float], int, int, float]:
    import torch

    if not torch.cuda.is_available():
        raise ValueError(f"device={device!r}: no CUDA device is visible")
    dev = torch.device(device)
    with torch.cuda.device(dev):
        sync = torch.cuda.synchronize
        flush_buf = torch.empty(flush_bytes, dtype=torch.uint8, device=dev) if flush_bytes else None
        sync()
        warm_calls, per_call_s = _warmup(fn, warmup_s, clock, sync)
        cps = _calls_per_sample(per_call_s, rep_s, min_reps, flush_buf is not None)
        n = min(max_reps, max(min_reps, math.ceil(rep_s / max(per_call_s * cps, 1e-9))))
        events = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]
        for start, end in events:
            if flush_buf is not None:
                flush_buf.zero_()
            start.record()
            for _ in range(cps):
                fn()
            end.record()
        sync()
        samples = [start.elapsed_time(end) / 1e3 / cps for start, end in events]
    return samples, cps, warm_calls, 0.0
