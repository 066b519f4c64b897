"""`dlrmbench bench dist`: world sizes checked first, a timeout stops every rank, a failure keeps what ran."""

from __future__ import annotations

import json

import psutil
import pytest

import model.bench_dist
from profiler.cli import main

SMALL = ["bench", "dist", "--tables=4", "--dim=4", "--batch-size=16", "--threads=1"]


def _ours(marker: str) -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        if any(marker in part for part in p.info["cmdline"] or []):
            found.append(p)
    return found


def test_world_sizes_beyond_the_tables_are_refused_before_any_run(capsys):
    assert main([*SMALL, "--nprocs=1,5"]) == 2
    assert "--nprocs 5: each process owns whole tables, so a world size must be 1 to --tables (4)" in (
        capsys.readouterr().err
    )


def test_a_timeout_stops_torchrun_and_its_ranks(capsys):
    marker = "--arch-embedding-size=1237x4"  # a shape no other test uses: finds this run's processes
    argv = [*SMALL, "--rows=1237", "--nprocs=2", "--num-batches=100000000", "--timeout=8"]
    assert main(argv) == 2
    assert "did not finish in --timeout 8 s; its processes were stopped" in capsys.readouterr().err
    left = _ours(marker)
    assert not left, [p.info["cmdline"] for p in left]


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
    assert [r["world_size"] for r in kept] == [1] and kept[0]["scaling_efficiency"] == pytest.approx(1.0)
    text = capsys.readouterr()
    assert "kept the world sizes measured before the failure: 1" in text.out and "stopped on purpose" in text.err
