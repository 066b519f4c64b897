"""`dlrmbench bench timer`: its flags are checked before any timing, and it ends with a verdict on the < 1% goal."""

from __future__ import annotations

import json
import re

import pytest

from profiler.bench_timer import _verdict
from profiler.cli import main


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--target-us", "-5"], "--target-us -5: expected a positive number of microseconds, e.g. 100"),
        (["--target-us", "100,0"], "--target-us 0: expected a positive number of microseconds, e.g. 100"),
        (["--target-us", "inf"], "--target-us inf: expected a positive number of microseconds, e.g. 100"),
        (["--target-us", "abc"], "--target-us 'abc': expected positive microseconds, comma-separated, e.g. 100,1000"),
        (["--rounds", "0"], "--rounds 0: expected at least 1 (each round times the bare loop, then the timer)"),
    ],
)
def test_bad_flags_name_the_flag_in_one_line(capsys, argv, message):
    assert main(["bench", "timer", *argv]) == 2
    err = capsys.readouterr().err
    assert err == f"dlrmbench bench timer: error: {message}\n"


def test_verdict_is_two_sided_per_kernel():
    rows = [
        {"bare_median_s": 68.21e-6, "overhead": -0.011},
        {"bare_median_s": 155.04e-6, "overhead": 0.013},
        {"bare_median_s": 99.96e-6, "overhead": -0.0099},
    ]
    assert _verdict(rows) == (
        "verdict, goal |overhead| < 1%: UNDER (the timer reads below the bare loop) at 68.2 µs (-1.10%); "
        "OVER at 155.0 µs (+1.30%); within at 100.0 µs (-0.99%)"
    )


def test_run_prints_the_verdict_and_records_it(tmp_path, capsys):
    out = tmp_path / "t.json"
    assert main(["bench", "timer", "--target-us", "50", "--rounds", "1", "--json-out", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["within_goal"] == (-0.01 < row["overhead"] < 0.01)
    word = "within" if row["within_goal"] else ("OVER" if row["overhead"] > 0 else r"UNDER \(.*\)")
    assert re.search(rf"^verdict, goal \|overhead\| < 1%: {word} at \d+\.\d µs \([+-]\d+\.\d\d%\)$",
                     capsys.readouterr().out, re.M)  # fmt: skip


def test_calls_follow_the_kernels_real_time_when_the_target_is_below_it():
    from profiler.bench_timer import _calls

    assert _calls(0.1, 1e-9, 1.5e-6) == 66_666  # 0.1 s / 1.5 µs, not 0.1 s / 0.001 ns
    assert _calls(0.1, 1e-4, 1e-6) == 1_000  # a kernel sized up to its target: the target counts
    assert _calls(0.1, 1.0, 1.0) == 20  # at least 20


def test_rounds_alternate_which_loop_runs_first(monkeypatch):
    import types

    import profiler.bench_timer as bt

    order: list[str] = []

    def fake_measure(fn, **kw):
        order.append("timer")
        return types.SimpleNamespace(median_s=1.0, overhead_frac=0.0)

    def fake_bare(fn, per_block, blocks):
        order.append("bare")
        return 1.0

    monkeypatch.setattr(bt, "measure", fake_measure)
    monkeypatch.setattr(bt, "_bare_median", fake_bare)
    monkeypatch.setattr(bt, "_sized_kernel", lambda target_s: ((lambda: None), 1024))
    row = bt.bench_timer(target_us=100.0, rounds=3)
    assert order == ["bare", "timer", "timer", "bare", "bare", "timer"]
    assert row["overhead_per_round"] == [0.0, 0.0, 0.0]
