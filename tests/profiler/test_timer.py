"""profiler.timer with a fake clock: blocking, budgets, flush, threads, statistics, warnings, round trip."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from profiler import timer
from profiler.contention import Snapshot
from profiler.timer import Measurement, measure


class FakeClock:
    """A clock that only moves when told to; each read may cost `read_cost_s` (to model timer overhead)."""

    def __init__(self, read_cost_s: float = 0.0) -> None:
        self.t = 0.0
        self.read_cost_s = read_cost_s
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        self.t += self.read_cost_s
        return self.t


def _kernel(clock: FakeClock, seconds: float):
    def fn() -> None:
        clock.t += seconds

    return fn


def test_blocks_calls_so_a_sample_lasts_about_a_millisecond() -> None:
    clock = FakeClock()
    m = measure(_kernel(clock, 100e-6), clock=clock, warmup_ms=5, rep_ms=20, check_contention=False)
    assert m.calls_per_sample == 10  # 1 ms block / 100 µs
    assert m.median_s == pytest.approx(100e-6)
    assert m.iqr_s == pytest.approx(0.0, abs=1e-15)
    assert m.min_s == pytest.approx(100e-6) and m.mean_s == pytest.approx(100e-6)
    assert len(m.samples_s) in (20, 21)  # 20 ms budget / 1 ms samples (float sums may need one more)
    assert m.warnings == []


def test_timer_overhead_below_one_percent_of_a_100us_kernel() -> None:
    # Each clock read costs 1 µs (an order of magnitude above perf_counter's real cost): blocking
    # keeps the error of a 100 µs kernel at (1 µs / 10 calls) / 100 µs = 0.1%.
    clock = FakeClock(read_cost_s=1e-6)
    m = measure(_kernel(clock, 100e-6), clock=clock, warmup_ms=5, rep_ms=20, check_contention=False)
    assert m.median_s == pytest.approx(100e-6, rel=0.01)
    assert m.overhead_frac < 0.01
    assert m.clock_overhead_s == pytest.approx(1e-6)


def test_long_call_is_one_per_sample_and_min_reps_holds() -> None:
    clock = FakeClock()
    m = measure(_kernel(clock, 0.01), clock=clock, warmup_ms=0, rep_ms=0, min_reps=7, check_contention=False)
    assert m.calls_per_sample == 1
    assert len(m.samples_s) == 7


def test_block_shrinks_to_keep_min_reps_inside_the_budget() -> None:
    clock = FakeClock()
    m = measure(_kernel(clock, 1e-5), clock=clock, warmup_ms=1, rep_ms=0.5, min_reps=5, check_contention=False)
    assert m.calls_per_sample == 10  # 0.5 ms / (5 samples x 10 µs), not the 100 a 1 ms block would take
    assert len(m.samples_s) == 5


def test_max_reps_caps_samples() -> None:
    clock = FakeClock()
    m = measure(_kernel(clock, 0.01), clock=clock, warmup_ms=0, rep_ms=1000, max_reps=6, check_contention=False)
    assert len(m.samples_s) == 6


def test_warmup_excludes_a_slow_first_call() -> None:
    clock = FakeClock()
    calls = []

    def fn() -> None:
        clock.t += 0.5 if not calls else 1e-4  # first call "compiles"
        calls.append(1)

    m = measure(fn, clock=clock, warmup_ms=10, rep_ms=10, check_contention=False)
    assert m.calls_per_sample == 10  # estimate from the last warm-up block, not the 0.5 s call
    assert m.median_s == pytest.approx(1e-4)
    assert m.warmup_calls >= 2


def test_overhead_share_is_what_the_clock_adds_to_a_sample() -> None:
    # One call per sample (flush), a 100 µs kernel, reads costing 5 µs: each sample is 105 µs, of
    # which 5 µs (one read's cost) is the clock's: 5 / 105 = 4.8%, not twice that.
    clock = FakeClock(read_cost_s=5e-6)
    m = measure(_kernel(clock, 100e-6), clock=clock, rep_ms=2, flush_bytes=1 << 12, check_contention=False)
    assert m.calls_per_sample == 1 and m.median_s == pytest.approx(105e-6)
    assert m.overhead_frac == pytest.approx(5 / 105)
    assert any("clock overhead 4.8% of a sample" in w for w in m.warnings)


def test_flush_means_one_call_per_sample_and_is_recorded() -> None:
    clock = FakeClock()
    m = measure(_kernel(clock, 1e-5), clock=clock, rep_ms=1, flush_bytes=1 << 16, check_contention=False)
    assert m.calls_per_sample == 1
    assert m.flush_bytes == 1 << 16


def test_noisy_samples_warn() -> None:
    clock = FakeClock()
    n = [0]

    def fn() -> None:
        n[0] += 1
        clock.t += 0.01 if n[0] % 2 else 0.02

    m = measure(fn, clock=clock, warmup_ms=0, rep_ms=0, min_reps=10, check_contention=False)
    assert any("IQR/median" in w for w in m.warnings)
    assert m.median_s == pytest.approx(0.015)


def test_threads_set_during_the_call_and_restored() -> None:
    before = torch.get_num_threads()
    seen = []
    clock = FakeClock()

    def fn() -> None:
        seen.append(torch.get_num_threads())
        clock.t += 0.01

    m = measure(fn, clock=clock, warmup_ms=0, rep_ms=0, min_reps=2, threads=1, check_contention=False)
    assert set(seen) == {1} and m.threads == 1
    assert torch.get_num_threads() == before
    m = measure(fn, clock=clock, warmup_ms=0, rep_ms=0, min_reps=2, check_contention=False)
    assert m.threads == before  # None: left as is, still recorded


def test_statistics_match_numpy() -> None:
    xs = [3.0, 1.0, 4.0, 1.0, 5.0, 9.0, 2.0, 6.0]
    m = Measurement(samples_s=xs)
    assert m.median_s == np.median(xs)
    assert m.iqr_s == pytest.approx(np.percentile(xs, 75) - np.percentile(xs, 25))
    assert m.stdev_s == pytest.approx(np.std(xs, ddof=1))


def test_round_trip_through_json() -> None:
    clock = FakeClock()
    m = measure(_kernel(clock, 1e-4), clock=clock, warmup_ms=1, rep_ms=5)
    d = json.loads(json.dumps(m.to_dict()))
    assert d["median_s"] == pytest.approx(1e-4)
    back = Measurement.from_dict(d)
    assert back == m


def test_contention_is_flagged(monkeypatch: pytest.MonkeyPatch) -> None:
    shots = iter(
        [
            Snapshot(wall_s=0.0, psi_some_total_us=0, steal_ticks=0, total_ticks=0, loadavg_1m=0.1),
            Snapshot(wall_s=1.0, psi_some_total_us=400_000, steal_ticks=0, total_ticks=100, loadavg_1m=1.0),
        ]
    )
    monkeypatch.setattr(timer, "snapshot", lambda: next(shots))
    clock = FakeClock()
    m = measure(_kernel(clock, 1e-3), clock=clock, warmup_ms=0, rep_ms=5)
    assert m.contended
    assert m.contention is not None and m.contention.pressure_frac == pytest.approx(0.4)
    assert any(w.startswith("contended") for w in m.warnings)


@pytest.mark.parametrize(
    "kwargs",
    [{"min_reps": 0}, {"min_reps": 5, "max_reps": 4}, {"rep_ms": -1}, {"flush_bytes": -1}, {"device": "tpu"}],
)
def test_bad_arguments_raise(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        measure(lambda: None, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error raised where no CUDA device exists")
def test_cuda_without_a_device_says_so() -> None:
    with pytest.raises(ValueError, match="no CUDA device"):
        measure(lambda: None, device="cuda", check_contention=False)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_events_time_a_matmul() -> None:
    a = torch.randn(1024, 1024, device="cuda")
    m = measure(lambda: a @ a, device="cuda", warmup_ms=10, rep_ms=20)
    assert m.device == "cuda" and m.median_s > 0 and m.clock_overhead_s == 0.0


def test_bench_timer_writes_both_timings(tmp_path) -> None:
    """Structure of `dlrmbench bench timer` (its figures are the benchmark's business, not a test's)."""
    import json

    from profiler.cli import main

    out = tmp_path / "t.json"
    assert main(["bench", "timer", "--target-us", "50", "--rounds", "2", "--json-out", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert len(row["bare_s"]) == len(row["timer_s"]) == len(row["overhead_per_round"]) == 2
    assert row["overhead"] == pytest.approx(
        sorted(row["overhead_per_round"])[0] / 2 + sorted(row["overhead_per_round"])[1] / 2
    )
    assert all(t > 0 for t in row["bare_s"] + row["timer_s"])


def test_a_spread_just_over_the_limit_is_not_printed_equal_to_it() -> None:
    samples = [0.9, 0.948, 1.0, 1.052, 1.1]  # quartiles 0.948 and 1.052: IQR/median 10.4%, stdev/mean 8%
    ratio = (np.percentile(samples, 75) - np.percentile(samples, 25)) / np.median(samples)
    assert ratio == pytest.approx(0.104)
    assert timer._spread_warnings(Measurement(samples)) == ["noisy: IQR/median = 10.4% > 10%"]  # was '10% > 10%'
    assert timer.percent_over(0.25, 0.10) == "25%" and timer.percent_over(0.1004, 0.10) == "10.04%"


def test_a_shrunk_block_keeps_min_reps_inside_the_budget_when_it_does_not_divide() -> None:
    # 15 µs calls, 0.5 ms for 5 samples: 0.5 ms / (5 x 15 µs) = 6.67 calls, so 6 (6 x 15 µs x 5 = 0.45 ms);
    # 7 would need 0.525 ms, past the budget
    clock = FakeClock()
    m = measure(_kernel(clock, 15e-6), clock=clock, warmup_ms=1, rep_ms=0.5, min_reps=5, check_contention=False)
    assert m.calls_per_sample == 6
    assert m.median_s == pytest.approx(15e-6)


def test_overhead_share_divides_one_read_by_the_whole_block() -> None:
    # 10 calls of 100 µs per sample: a 1 ms block, of which one 1 µs read is 0.1%
    m = Measurement(samples_s=[100e-6] * 3, calls_per_sample=10, clock_overhead_s=1e-6)
    assert m.overhead_frac == pytest.approx(1e-6 / 1e-3)
