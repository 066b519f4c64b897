"""profiler.contention: /proc parsing, the verdict, and the bounded wait (fake clock and probe)."""

from __future__ import annotations

import pytest

from profiler import contention
from profiler.contention import Contention, Snapshot, assess, wait_for_quiet

PSI = "some avg10=1.50 avg60=0.20 avg300=0.10 total=123456\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
STAT = "cpu  100 0 50 800 10 0 5 35 0 0\ncpu0 50 0 25 400 5 0 2 18 0 0\n"


def test_parse_proc_files() -> None:
    assert contention._parse_psi(PSI) == (123456, 1.5)
    assert contention._parse_stat(STAT) == (35, 1000)
    assert contention._parse_psi(None) == (None, None)
    assert contention._parse_stat("garbage") == (None, None)


def test_snapshot_never_raises() -> None:
    s = snapshot = contention.snapshot()
    assert isinstance(snapshot, Snapshot) and s.wall_s > 0


def test_quiet_interval_is_not_flagged() -> None:
    a = Snapshot(0.0, 0, 0.0, 0, 0, 0.5)
    b = Snapshot(2.0, 20_000, 0.0, 1, 200, 0.9)  # 1% pressure, 0.5% steal
    c = assess(a, b, threads=1, cpus=2)
    assert not c.contended and c.pressure_frac == pytest.approx(0.01) and c.steal_frac == pytest.approx(0.005)


@pytest.mark.parametrize(
    ("after", "before_load", "reason"),
    [
        (Snapshot(1.0, 300_000, None, 0, 100, 1.0), 0.5, "cpu pressure"),
        (Snapshot(1.0, 0, None, 20, 100, 1.0), 0.5, "steal"),
        (Snapshot(1.0, 0, None, 0, 100, 1.0), 3.0, "load average"),
    ],
)
def test_each_signal_flags(after: Snapshot, before_load: float, reason: str) -> None:
    before = Snapshot(0.0, 0, None, 0, 0, before_load)
    c = assess(before, after, threads=2, cpus=2)
    assert c.contended and any(r.startswith(reason) for r in c.reasons)
    assert Contention.from_dict(c.to_dict()) == c


@pytest.mark.parametrize("processes", [2, 4])
def test_ranks_filling_the_cpus_are_judged_by_steal_alone(processes: int) -> None:
    """W ranks on C <= W cpus: 30% pressure and a load of 3 are their own; 20% steal is not."""
    before = Snapshot(0.0, 0, None, 0, 0, 3.0)
    own = assess(before, Snapshot(1.0, 300_000, None, 0, 100, 3.0), threads=processes, cpus=2, processes=processes)
    assert not own.contended and own.pressure_frac == pytest.approx(0.3)
    assert own.not_judged == [f"cpu pressure and load average ({processes} processes on 2 cpus)"]
    stolen = assess(before, Snapshot(1.0, 300_000, None, 20, 100, 3.0), threads=processes, cpus=2, processes=processes)
    assert stolen.contended and stolen.reasons == ["steal 20% > 5%"]
    assert Contention.from_dict(own.to_dict()) == own
    one_fewer = assess(
        before, Snapshot(1.0, 300_000, None, 0, 100, 3.0), threads=1, cpus=processes + 1, processes=processes
    )
    assert one_fewer.contended and one_fewer.not_judged == []  # a free cpu: pressure is a neighbour's


def test_missing_sources_give_none_not_errors() -> None:
    c = assess(Snapshot(0.0), Snapshot(1.0), cpus=2)
    assert c.pressure_frac is None and c.steal_frac is None and not c.contended


def test_wait_for_quiet_is_bounded() -> None:
    t = [0.0]
    busy = iter([0, 500_000, 500_000, 1_000_000] + [1_000_000 + 500_000 * i for i in range(100)])

    def probe() -> Snapshot:
        return Snapshot(t[0], next(busy), None, None, None, None)

    def sleep(s: float) -> None:
        t[0] += s

    quiet, waited = wait_for_quiet(1.0, window_s=0.5, clock=lambda: t[0], sleep=sleep, probe=probe)
    assert not quiet and waited == pytest.approx(1.0)


def test_wait_for_quiet_returns_when_quiet() -> None:
    t = [0.0]
    totals = iter([0, 0])

    def sleep(s: float) -> None:
        t[0] += s

    probe = lambda: Snapshot(t[0], next(totals))  # noqa: E731
    assert wait_for_quiet(5.0, window_s=0.1, clock=lambda: t[0], sleep=sleep, probe=probe) == (True, pytest.approx(0.1))
