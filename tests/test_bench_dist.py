"""`dlrmbench bench dist`: world sizes checked first, a timeout stops every rank, a failure keeps what ran."""

from __future__ import annotations

import json

import psutil
import pytest

import model.bench_dist
from profiler.cli import main

SMALL = ["bench", "dist", "--num-tables=4", "--dim=4", "--batch-size=16", "--threads=1"]


def test_world_sizes_beyond_the_tables_are_refused_before_any_run(capsys):
    assert main([*SMALL, "--nprocs=1,5"]) == 2
    assert "--nprocs 5: each process owns whole tables, so a world size must be 1 to --num-tables (4)" in (
        capsys.readouterr().err
    )


def test_a_timeout_stops_torchrun_and_its_ranks(capsys, monkeypatch):
    stop, seen = model.bench_dist._stop_group, []

    def note_the_group(proc):  # torchrun and its ranks, as they are when the timeout stops them
        seen.extend(psutil.Process(proc.pid).children(recursive=True))
        return stop(proc)

    monkeypatch.setattr(model.bench_dist, "_stop_group", note_the_group)
    argv = [*SMALL, "--rows=1237", "--nprocs=2", "--num-batches=100000000", "--timeout=20"]
    assert main(argv) == 2
    assert "did not finish in --timeout 20 s; its processes were stopped" in capsys.readouterr().err
    assert len(seen) >= 2  # the ranks had started: killing torchrun alone would have left them running
    psutil.wait_procs(seen, timeout=10)
    left = [p for p in seen if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    assert not left, [p.cmdline() for p in left]


def test_a_failed_world_size_keeps_those_measured(tmp_path, monkeypatch, capsys):
    run = model.bench_dist._run_group

    def fail_on_two(cmd, env, timeout_s, what):
        if what.startswith("2 "):
            raise ValueError(f"{what}: stopped on purpose")
        return run(cmd, env, timeout_s, what)

    monkeypatch.setattr(model.bench_dist, "_run_group", fail_on_two)
    out = tmp_path / "d.json"
    assert main([*SMALL, "--rows=100", "--nprocs=1,2", "--num-batches=3", f"--json-out={out}"]) == 2
    kept = json.loads(out.read_text())
    assert kept["complete"] is False and kept["not_measured"] == [2] and "stopped on purpose" in kept["stopped"]
    rows = kept["records"]
    assert [r["world_size"] for r in rows] == [1] and rows[0]["scaling_efficiency"] == pytest.approx(1.0)
    # the median step gives samples/s; the mean is kept as train records it
    assert rows[0]["step_samples_per_s"] == pytest.approx(16 * 1000 / rows[0]["step_ms_median"])
    text = capsys.readouterr()
    assert "kept the world sizes measured before it stopped: 1" in text.out and "stopped on purpose" in text.err
