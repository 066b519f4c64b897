"""The cross-check's arithmetic and method: verdicts, drift, alternation, the fast-end statistic."""

from __future__ import annotations

import pytest

from profiler import crosscheck
from profiler.crosscheck import Check, run_checks
from profiler.timer import Measurement


def test_verdict_ratio_and_drift_by_hand() -> None:
    c = Check("numpy add DRAM", "triad/DRAM/1t/float32", 30.0, 32.7, "GB/s", "np.add", ceiling_recorded=27.0)
    assert c.ratio == pytest.approx(1.09)
    assert c.agrees
    assert c.drift == pytest.approx(0.9)
    far = Check("x", "k", 30.0, 33.3, "GB/s", "m")
    assert not far.agrees  # 11% off
    d = far.to_dict()
    assert d["agrees"] is False and d["ratio"] == pytest.approx(1.11)


def test_alternate_takes_turns_and_keeps_each_sides_best() -> None:
    calls: list[str] = []
    ceiling_values = iter([10.0, 14.0, 12.0])
    independent_values = iter([11.0, 9.0, 13.0])

    def ceiling() -> float:
        calls.append("c")
        return next(ceiling_values)

    def independent() -> float:
        calls.append("i")
        return next(independent_values)

    assert crosscheck._alternate(3, ceiling, independent) == (14.0, 13.0)
    assert calls == ["c", "i", "c", "i", "c", "i"]


def test_p10_is_numpys_linear_quantile() -> None:
    m = Measurement([5.0, 1.0, 4.0, 2.0, 3.0, 10.0], threads=1)
    # sorted 1 2 3 4 5 10: position 0.1 * 5 = 0.5, between 1 and 2
    assert m.p10_s == pytest.approx(1.5)


def test_run_checks_on_the_quick_ceilings_of_this_machine() -> None:
    """Structure only (timings are the benchmark's business): each check names a recorded ceiling."""
    from profiler.ceilings import Ceiling

    fp = {"caches": {"L3": {"size_bytes": 2 << 20, "instances": 1}, "L2": {"size_bytes": 256 << 10}}}
    recorded = [
        Ceiling("triad", "bandwidth", "measured", level="L3", gbps=50.0),
        Ceiling("gemm", "compute", "measured", gflops=50.0, shape=(64, 64, 64)),
    ]
    checks = run_checks(fp, recorded, reps=2, rounds=1)
    names = [c.name for c in checks]
    assert names == ["numpy add L3", "torch.mm 1t", "numpy matmul (its BLAS, its threads)"]
    assert all(c.independent_value > 0 and c.ceiling_value > 0 for c in checks)
    assert [c.ceiling_recorded for c in checks] == [50.0, 50.0, 50.0]
    assert [c.informative for c in checks] == [False, False, True]
