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


def test_verdict_says_within_or_over_the_goal_per_kernel():
    rows = [
        {"bare_median_s": 68.21e-6, "overhead": -0.011, "within_goal": True},
        {"bare_median_s": 155.04e-6, "overhead": 0.013, "within_goal": False},
    ]
    assert _verdict(rows) == "verdict, goal overhead < 1%: within at 68.2 µs (-1.10%); OVER at 155.0 µs (+1.30%)"


def test_run_prints_the_verdict_and_records_it(tmp_path, capsys):
    out = tmp_path / "t.json"
    assert main(["bench", "timer", "--target-us", "50", "--rounds", "1", "--json-out", str(out)]) == 0
    (row,) = json.loads(out.read_text())
    assert row["within_goal"] == (row["overhead"] < 0.01)
    word = "within" if row["within_goal"] else "OVER"
    assert re.search(rf"^verdict, goal overhead < 1%: {word} at \d+\.\d µs \([+-]\d+\.\d\d%\)$",
                     capsys.readouterr().out, re.M)  # fmt: skip


def test_calls_follow_the_kernels_real_time_when_the_target_is_below_it():
    from profiler.bench_timer import _calls

    assert _calls(0.1, 1e-9, 1.5e-6) == 66_666  # 0.1 s / 1.5 µs, not 0.1 s / 0.001 ns
    assert _calls(0.1, 1e-4, 1e-6) == 1_000  # a kernel sized up to its target: the target counts
    assert _calls(0.1, 1.0, 1.0) == 20  # at least 20
