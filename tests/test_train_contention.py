"""`dlrmbench train` brackets its timed loop with a contention check, as sweeps do, and says when it failed."""

from __future__ import annotations

import json

import model.train
from profiler.cli import main
from profiler.contention import Contention

_ARGV = ["train", "--preset=tiny", "--data-size=40", "--mini-batch-size=8"]


def test_a_contended_loop_is_flagged_in_the_log_and_the_record(tmp_path, monkeypatch, capsys):
    seen = {}

    def contended(before, after, **kw):
        seen.update(kw, interval=after.wall_s - before.wall_s)
        return Contention(pressure_frac=0.5, cpus=2, threads=1, contended=True, reasons=["cpu pressure 50% > 10%"])

    monkeypatch.setattr(model.train, "assess", contended)
    out = tmp_path / "run.json"
    assert main([*_ARGV, f"--json-out={out}"]) == 0
    assert "warning: the timed loop ran under contention (cpu pressure 50% > 10%)" in capsys.readouterr().out
    record = json.loads(out.read_text())
    assert record["contention"]["contended"] and record["contention"]["reasons"] == ["cpu pressure 50% > 10%"]
    assert seen["processes"] == 1 and seen["threads"] == record["threads"] and seen["interval"] > 0


def test_a_quiet_loop_records_its_readings_without_a_warning(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(model.train, "assess", lambda before, after, **kw: Contention(pressure_frac=0.01, cpus=2))
    out = tmp_path / "run.json"
    assert main([*_ARGV, f"--json-out={out}"]) == 0
    assert "contention" not in capsys.readouterr().out
    assert json.loads(out.read_text())["contention"]["pressure_frac"] == 0.01


def test_bench_dlrm_marks_a_contended_batch_size(tmp_path, monkeypatch, capsys):
    import model.bench

    verdicts = iter([Contention(cpus=2), Contention(cpus=2, contended=True, reasons=["steal 9% > 5%"])])
    monkeypatch.setattr(model.bench, "assess", lambda before, after, **kw: next(verdicts))
    out = tmp_path / "b.json"
    argv = ["bench", "dlrm", "--arch-embedding-size=500x3", "--arch-mlp-bot=13-8-4", "--arch-sparse-feature-size=4",
            "--arch-mlp-top=8-1", "--batch-size=16,32", "--steps=2", "--warmup=1", "--kernels=torch",
            f"--json-out={out}"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    rows = [line for line in printed.splitlines() if line.split()[:2] in (["16", "torch"], ["32", "torch"])]
    assert [row.endswith("contended") for row in rows] == [False, True]
    assert "warning: B=32 ran under contention (steal 9% > 5%)" in printed and "B=16 ran" not in printed
    records = json.loads(out.read_text())["records"]
    assert [r["contended"] for r in records] == [False, True]
    assert records[1]["step"]["contention"]["reasons"] == ["steal 9% > 5%"]
