"""`dlrmbench bench timer`: what profiler.timer adds to a real ~100 µs CPU kernel, against a bare loop.

The unit tests check the timer's arithmetic with a fake clock; this measures its cost on the
machine. A kernel (torch.sum over a float32 vector, sized at start so one call takes about the
target time) is timed two ways in each round: a bare loop (perf_counter around blocks of calls as
long as the timer's, ~1 ms; median block mean, the timer's own statistic) and `measure()`, each
after the same warm-up, the bare loop first in even rounds and second in odd ones, so neither
always runs on the warmer machine.
Overhead = timer median / bare median - 1, per round and as the median over rounds; the
issue's goal is below 1% at 100 µs. The verdict is two-sided: a timer reading 1% below the bare
loop is as far off the kernel's time as one reading 1% above.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from typing import Any

import torch

from profiler.bench_bag_cli import parse_positive_int
from profiler.cli import check_output_path
from profiler.store import write_json_atomic
from profiler.timer import _calls_per_sample, _set_threads, measure

__all__ = ["GOAL_OVERHEAD", "add_bench_targets", "bench_timer"]

_WARMUP_S = 0.020  # before each loop, bare and timed alike
GOAL_OVERHEAD = 0.01  # the (and the README's) goal: the timer adds under 1% to a ~100 µs kernel


def _sum_of(x: torch.Tensor) -> Any:
    return lambda: torch.sum(x)


def _sized_kernel(target_s: float) -> tuple[Any, int]:
    n = 1 << 14
    while True:
        x = torch.ones(n)
        torch.sum(x)
        t0 = time.perf_counter()
        for _ in range(20):
            torch.sum(x)
        per = (time.perf_counter() - t0) / 20
        if per >= target_s or n >= 1 << 28:
            n = max(1 << 10, int(n * target_s / per))
            return _sum_of(torch.ones(n)), n
        n *= 4


def _calls(budget_s: float, target_s: float, per_call_s: float) -> int:
    """Calls per timed stretch: the budget over the kernel's time, the longer of the target and what the
    sized kernel really takes (a target below the smallest kernel, 1,024 floats, must not ask for
    budget / target calls: 0.001 µs asked for 10^8 calls of a 1.5 µs kernel a round)."""
    return max(20, int(budget_s / max(per_call_s, target_s)))


def bench_timer(
    target_us: float = 100.0, rounds: int = 7, threads: int = 1, budget_ms: float = 100.0
) -> dict[str, Any]:
    """Median per-call seconds by bare loop and by measure(), `rounds` alternating rounds."""
    _check(target_us, rounds)
    _, undo = _set_threads(threads)  # put back after: the caller (a test, say) keeps its own count
    try:
        fn, n = _sized_kernel(target_us * 1e-6)
        t0 = time.perf_counter()
        for _ in range(20):
            fn()
        per_call_s = (time.perf_counter() - t0) / 20
        calls = _calls(budget_ms * 1e-3, target_us * 1e-6, per_call_s)
        # blocks as long as the timer's own (~1 ms): the median of short blocks dodges more of a busy
        # machine's interruptions than that of long ones, which read 1-2% slower here
        per_block = max(1, min(calls, _calls_per_sample(per_call_s, budget_ms * 1e-3, 5, flush=False)))
        blocks = max(20, calls // per_block)
        bare, timed, overhead_est = [], [], []
        for i in range(rounds):
            if i % 2:
                m = measure(fn, warmup_ms=_WARMUP_S * 1e3, rep_ms=budget_ms, threads=threads, check_contention=False)
                bare.append(_bare_median(fn, per_block, blocks))
            else:
                bare.append(_bare_median(fn, per_block, blocks))
                m = measure(fn, warmup_ms=_WARMUP_S * 1e3, rep_ms=budget_ms, threads=threads, check_contention=False)
            timed.append(m.median_s)
            overhead_est.append(m.overhead_frac)
        per_round = [t / b - 1.0 for t, b in zip(timed, bare, strict=True)]
        return {
            "kernel": f"torch.sum over {n:,} float32",
            "threads": threads,
            "bare_s": bare,
            "timer_s": timed,
            "bare_median_s": statistics.median(bare),
            "timer_median_s": statistics.median(timed),
            "overhead_per_round": per_round,
            "overhead": statistics.median(per_round),
            "within_goal": abs(statistics.median(per_round)) < GOAL_OVERHEAD,
            "clock_share_estimate": statistics.median(overhead_est),
        }
    finally:
        undo()


def _bare_median(fn: Any, per_block: int, blocks: int) -> float:
    """The same statistic as the timer's (median of block means), with minimal machinery, after the
    same 20 ms of warm-up calls the timer makes."""
    t_end = time.perf_counter() + _WARMUP_S
    while time.perf_counter() < t_end:
        fn()
    means = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(per_block):
            fn()
        means.append((time.perf_counter() - t0) / per_block)
    return statistics.median(means)


def _check(target_us: float, rounds: int) -> None:
    if not (math.isfinite(target_us) and target_us > 0):
        raise ValueError(f"--target-us {target_us:g}: expected a positive number of microseconds, e.g. 100")
    if rounds < 1:
        raise ValueError(f"--rounds {rounds}: expected at least 1 (each round times the bare loop, then the timer)")


def _parse_target_us(text: str) -> list[float]:
    """--target-us: comma-separated kernel times in µs, e.g. 100,1000."""
    try:
        return [float(x) for x in text.split(",")]
    except ValueError:
        raise ValueError(
            f"--target-us {text!r}: expected positive microseconds, comma-separated, e.g. 100,1000"
        ) from None


def _verdict(rows: list[dict[str, Any]]) -> str:
    """One line: each kernel's median overhead against GOAL_OVERHEAD, either way."""
    parts = [f"{_word(r)} at {r['bare_median_s'] * 1e6:.1f} µs ({r['overhead']:+.2%})" for r in rows]
    return f"verdict, goal |overhead| < {GOAL_OVERHEAD:.0%}: {'; '.join(parts)}"


def _word(row: dict[str, Any]) -> str:
    if abs(row["overhead"]) < GOAL_OVERHEAD:
        return "within"
    return "OVER" if row["overhead"] > 0 else "UNDER (the timer reads below the bare loop)"


def _cmd(args: argparse.Namespace) -> int:
    if args.json_out:
        check_output_path("--json-out", args.json_out)
    targets_us = _parse_target_us(args.target_us)
    for us in targets_us:  # all before any timing, so a bad value fails in a second, not after a run
        _check(us, args.rounds)
    rows = [bench_timer(us, args.rounds, args.threads) for us in targets_us]
    print(f"{'kernel':34s} {'bare µs':>9} {'timer µs':>9} {'overhead':>9}  per round")
    for r in rows:
        rounds = " ".join(f"{x:+.2%}" for x in r["overhead_per_round"])
        print(
            f"{r['kernel']:34s} {r['bare_median_s'] * 1e6:9.2f} {r['timer_median_s'] * 1e6:9.2f} "
            f"{r['overhead']:+9.2%}  {rounds}"
        )
    print(_verdict(rows))
    if args.json_out:
        write_json_atomic(args.json_out, rows)
        print(f"wrote {args.json_out}")
    return 0


def add_bench_targets(bench_sub: argparse._SubParsersAction) -> None:
    p = bench_sub.add_parser(
        "timer",
        help="profiler.timer's overhead against a bare loop, on real kernels sized by --target-us",
        description="Time a real CPU kernel (torch.sum) sized to each --target-us (default 100 and 1000 µs) by a "
        "bare loop and by profiler.timer.measure in alternating rounds; print the overhead per kernel and a "
        "verdict against the goal (< 1%).",
    )
    p.add_argument(
        "--target-us", default="100,1000", help="kernel times to size for, µs, comma-separated (default %(default)s)"
    )
    p.add_argument("--rounds", type=int, default=7, help="alternating rounds of bare loop and timer (>= 1)")
    p.add_argument("--threads", type=parse_positive_int, default=1, help="threads the kernels run on (default 1)")
    p.add_argument("--json-out")
    p.set_defaults(func=_cmd)
