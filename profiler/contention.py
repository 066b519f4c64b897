"""Noise from neighbours: CPU pressure, steal time and load average around a measurement, and a wait for quiet.

These machines are shared. A measurement is bracketed by two `snapshot()`s; `assess()` turns the
pair into a `Contention` record (fractions over the measured interval, not 10 s averages) and flags
it when a neighbour plainly competed for the CPUs. Every reader is best-effort: a missing /proc
file leaves its field None, never raises.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = [
    "LOADAVG_MARGIN",
    "PRESSURE_LIMIT",
    "STEAL_LIMIT",
    "Contention",
    "Snapshot",
    "assess",
    "snapshot",
    "usable_cpus",
    "wait_for_quiet",
]

PRESSURE_LIMIT = 0.10  # share of wall time some runnable task waited for a CPU; above it = contended
STEAL_LIMIT = 0.05  # share of CPU time the hypervisor gave to another guest
LOADAVG_MARGIN = 0.5  # 1-min load above cpus + this margin: more runnable tasks than CPUs

_PSI_CPU = "/proc/pressure/cpu"
_PROC_STAT = "/proc/stat"


@dataclass(frozen=True)
class Snapshot:
    """Cumulative counters at one instant; None where the source is unreadable."""

    wall_s: float
    psi_some_total_us: int | None = None  # /proc/pressure/cpu 'some total=' (µs, cumulative)
    psi_some_avg10: float | None = None  # percent, the kernel's 10 s average
    steal_ticks: int | None = None  # /proc/stat 'cpu' steal column (USER_HZ ticks)
    total_ticks: int | None = None  # sum of all /proc/stat 'cpu' columns
    loadavg_1m: float | None = None


@dataclass(frozen=True)
class Contention:
    """What competed with a measurement, before and after it; `contended` is the verdict."""

    pressure_frac: float | None = None  # share of the interval some task waited for a CPU (PSI some)
    steal_frac: float | None = None  # share of CPU ticks stolen by the hypervisor over the interval
    loadavg_before: float | None = None
    loadavg_after: float | None = None
    psi_avg10_before: float | None = None
    cpus: int = 1
    threads: int = 1
    waited_s: float = 0.0  # time spent in wait_for_quiet before measuring
    contended: bool = False
    reasons: list[str] = field(default_factory=list)
    not_judged: list[str] = field(default_factory=list)  # signals left out of the verdict, and why

    def validate(self) -> Contention:
        if self.cpus < 1 or self.threads < 1:
            raise ValueError(f"cpus={self.cpus}, threads={self.threads}: both must be >= 1")
        return self

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Contention:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["reasons"] = list(known.get("reasons", []))
        known["not_judged"] = list(known.get("not_judged", []))
        return cls(**known).validate()


def _read_text(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return None


def _parse_psi(text: str | None) -> tuple[int | None, float | None]:
    """(total µs, avg10 %) of the 'some' line of a PSI file."""
    if not text:
        return None, None
    for line in text.splitlines():
        if line.startswith("some "):
            fields = dict(kv.split("=", 1) for kv in line.split()[1:] if "=" in kv)
            try:
                return int(fields["total"]), float(fields["avg10"])
            except (KeyError, ValueError):
                return None, None
    return None, None


def _parse_stat(text: str | None) -> tuple[int | None, int | None]:
    """(steal ticks, total ticks) from the aggregate 'cpu' line of /proc/stat."""
    if not text:
        return None, None
    for line in text.splitlines():
        if line.startswith("cpu "):
            try:
                cols = [int(x) for x in line.split()[1:]]
            except ValueError:
                return None, None
            # user nice system idle iowait irq softirq steal guest guest_nice; guest* are inside user/nice
            steal = cols[7] if len(cols) > 7 else None
            return steal, sum(cols[:8])
    return None, None


def snapshot(*, clock: Callable[[], float] = time.monotonic) -> Snapshot:
    """Read the counters now (each missing source leaves its field None)."""
    psi_total, psi_avg10 = _parse_psi(_read_text(_PSI_CPU))
    steal, total = _parse_stat(_read_text(_PROC_STAT))
    try:
        load = os.getloadavg()[0]
    except OSError:
        load = None
    return Snapshot(clock(), psi_total, psi_avg10, steal, total, load)


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask (all CPUs where there is none), at most its cgroup's
    CPU quota (4 CPUs' worth of time over 64 CPUs: 64 threads would be throttled, and time the throttling)."""
    from profiler.fingerprint import cgroup_cpu_quota

    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    return max(1, min(cpus, int(quota))) if quota else cpus


def assess(
    before: Snapshot,
    after: Snapshot,
    *,
    threads: int = 1,
    cpus: int | None = None,
    waited_s: float = 0.0,
    processes: int = 1,
) -> Contention:
    """Turn two snapshots into a Contention record with its verdict.

    Args:
        before, after: snapshots bracketing the measurement.
        threads: threads the measured code ran (its own load is not held against it).
        cpus: CPUs this process may use; default: its affinity mask.
        waited_s: time already spent waiting for quiet, recorded as is.
        processes: processes the measured code ran (an all-to-all: one per rank). When they are at
            least as many as the CPUs, their own helper threads (gloo's) wait for CPUs and the
            previous points' ranks still weigh in the 1-minute load: pressure and load then measure
            the measurement itself, are recorded but not judged, and only steal is.
    Returns:
        A Contention; `contended` is True when PSI pressure, steal or a neighbour's load passed its limit.
    """
    cpus = cpus or usable_cpus()
    dt_s = after.wall_s - before.wall_s
    pressure = None
    if before.psi_some_total_us is not None and after.psi_some_total_us is not None and dt_s > 0:
        pressure = max(0.0, (after.psi_some_total_us - before.psi_some_total_us) / 1e6 / dt_s)
    steal = None
    if None not in (before.steal_ticks, after.steal_ticks, before.total_ticks, after.total_ticks):
        d_total = after.total_ticks - before.total_ticks  # type: ignore[operator]
        if d_total > 0:
            steal = max(0.0, (after.steal_ticks - before.steal_ticks) / d_total)  # type: ignore[operator]
    reasons = []
    own = processes > 1 and processes >= cpus
    not_judged = [f"cpu pressure and load average ({processes} processes on {cpus} cpus)"] if own else []
    if not own and pressure is not None and pressure > PRESSURE_LIMIT:
        reasons.append(f"cpu pressure {pressure:.0%} > {PRESSURE_LIMIT:.0%}")
    if steal is not None and steal > STEAL_LIMIT:
        reasons.append(f"steal {steal:.0%} > {STEAL_LIMIT:.0%}")
    # The 1-min load lags, so only the 'before' value judges others' work: more runnable tasks than CPUs.
    if not own and before.loadavg_1m is not None and before.loadavg_1m > cpus + LOADAVG_MARGIN:
        reasons.append(f"load average {before.loadavg_1m:.2f} > {cpus} cpus")
    return Contention(
        pressure_frac=pressure,
        steal_frac=steal,
        loadavg_before=before.loadavg_1m,
        loadavg_after=after.loadavg_1m,
        psi_avg10_before=before.psi_some_avg10,
        cpus=cpus,
        threads=threads,
        waited_s=waited_s,
        contended=bool(reasons),
        reasons=reasons,
        not_judged=not_judged,
    ).validate()


def wait_for_quiet(
    max_wait_s: float,
    *,
    window_s: float = 0.2,
    threads: int = 1,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    probe: Callable[[], Snapshot] | None = None,
) -> tuple[bool, float]:
    """Sleep until one `window_s` window shows no contention, for at most `max_wait_s`.

    Returns:
        (quiet, waited_s): whether a quiet window was seen, and the seconds spent waiting.
    """
    take = probe or (lambda: snapshot(clock=clock))
    t0 = clock()
    while True:
        before = take()
        sleep(window_s)
        after = take()
        verdict = assess(before, after, threads=threads)
        waited = clock() - t0
        if not verdict.contended:
            return True, waited
        if waited >= max_wait_s:
            return False, waited
