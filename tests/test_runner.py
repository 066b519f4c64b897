"""The sweep runner: records, failure reasons, resume after a stop, and kill -9 in mid-sweep."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from profiler.store import read_records
from profiler.sweep_cli import run_sweep
from profiler.sweep_spec import Point

SPEC = """
name = "tiny"
target = "embedding_bag"
[fixed]
batch_size = 4
num_rows = 50
embedding_dim = 4
pooling_factor = 3
[axes]
kernel = ["torch", "torch_naive", "unbuilt_kernel"]
num_tables = [1, 2]
[timing]
warmup_ms = 1
rep_ms = 5
"""


@pytest.fixture(autouse=True)
def _unbuilt_kernel():
    """A kernel registered as unavailable (as fbgemm is where it is not installed): its points fail."""
    import kernels
    from kernels import registry

    kernels.list_kernels()  # load the real ones first
    registry.register_unavailable("unbuilt_kernel", backend=registry.Backend.TORCH, reason="not built here (test)")
    yield
    registry._REGISTRY.pop("unbuilt_kernel", None)


def _spec(tmp_path: Path, text: str = SPEC) -> str:
    path = tmp_path / "tiny.toml"
    path.write_text(text)
    return str(path)


def _records(results: Path, name: str = "tiny") -> list[dict]:
    (path,) = results.glob(f"*/{name}.jsonl")
    return read_records(path).records


def test_sweep_records_derived_rates_and_failures_then_resumes(tmp_path, capsys):
    spec, results = _spec(tmp_path), tmp_path / "results"
    counts = run_sweep(spec, results_dir=results, progress=False)
    assert counts == {"ok": 4, "failed": 2, "skipped": 0}
    recs = _records(results)
    failed = [r for r in recs if r["status"] == "failed"]
    assert all("kernel 'unbuilt_kernel' is unavailable here: not built here (test)" in r["reason"] for r in failed)
    for r in (r for r in recs if r["status"] == "ok"):
        p = Point.from_dict(r["point"])
        bags, n, D = p.batch_size * p.num_tables, p.batch_size * p.num_tables * p.pooling_factor, p.embedding_dim
        moved = n * D * 4 + n * 8 + (bags + 1) * 8 + bags * D * 4  # rows, indices, offsets read; output written
        assert r["derived"]["bytes_moved"] == moved
        assert r["derived"]["gbps"] == pytest.approx(moved / r["median_s"] / 1e9)
        assert len(r["measurement"]["samples_s"]) >= 5
    # a rerun skips the points stored as ok and measures the failed ones again
    assert run_sweep(spec, results_dir=results, progress=False) == {"ok": 0, "failed": 2, "skipped": 4}
    assert "measuring again 2 point(s) stored as failed" in capsys.readouterr().out
    assert run_sweep(spec, results_dir=results, progress=False, force=True, filters=["kernel=torch"])["ok"] == 2
    assert len(_records(results)) == 10  # records are only ever appended
    assert (next(results.iterdir()) / "machine.json").exists()


def test_points_stored_at_another_flush_bytes_are_measured_again(tmp_path, capsys):
    """A warm-cache result must not stand in for a cold-cache one: [timing] flush_bytes is part of what was measured."""
    results = tmp_path / "results"
    spec = _spec(tmp_path)
    assert run_sweep(spec, results_dir=results, progress=False, filters=["kernel=torch"])["ok"] == 2
    cold = _spec(tmp_path, SPEC.replace("rep_ms = 5", "rep_ms = 5\nflush_bytes = 65536"))
    assert run_sweep(cold, results_dir=results, progress=False, filters=["kernel=torch"]) == {
        "ok": 2, "failed": 0, "skipped": 0}  # fmt: skip
    assert "measuring again 2 point(s) stored with another flush_bytes than [timing]'s 65536" in capsys.readouterr().out
    assert [r["measurement"]["flush_bytes"] for r in _records(results)] == [0, 0, 65536, 65536]
    assert run_sweep(cold, results_dir=results, progress=False, filters=["kernel=torch"])["skipped"] == 2


def test_a_point_measured_again_is_read_once_as_its_last_record(tmp_path, monkeypatch):
    import profiler.runner
    from profiler.results import load_results

    spec, results = _spec(tmp_path), tmp_path / "results"
    real = profiler.runner.run_point
    monkeypatch.setattr(profiler.runner, "run_point", lambda *a, **k: {"status": "failed", "reason": "MemoryError: x"})
    assert run_sweep(spec, results_dir=results, progress=False, filters=["kernel=torch"])["failed"] == 2
    monkeypatch.setattr(profiler.runner, "run_point", real)  # the machine has room now
    assert run_sweep(spec, results_dir=results, progress=False, filters=["kernel=torch"])["ok"] == 2
    run_sweep(spec, results_dir=results, progress=False, filters=["kernel=torch"], force=True)
    assert len(_records(results)) == 6
    rows = load_results(results, include_failed=True).rows
    assert len(rows) == 2 and {r["status"] for r in rows} == {"ok"}
    last = {r["key"]: r.get("median_s") for r in _records(results)}  # the file's last record of each key
    assert {r["key"]: r["median_s"] for r in rows} == last


def test_a_second_sweep_into_the_same_file_is_refused_while_the_first_runs(tmp_path, monkeypatch):
    import profiler.runner
    from profiler.store import Busy

    spec, results = _spec(tmp_path), tmp_path / "results"
    inner: list[BaseException] = []

    def nested(*args, **kwargs):
        try:
            run_sweep(spec, results_dir=results, progress=False)
        except Busy as exc:
            inner.append(exc)
        return {"status": "failed", "reason": "ValueError: stop"}

    monkeypatch.setattr(profiler.runner, "run_point", nested)
    run_sweep(spec, results_dir=results, progress=False, filters=["kernel=torch", "num_tables=1"])
    assert len(inner) == 1 and "tiny.toml" in str(inner[0]) and "is writing this file now" in str(inner[0])
    assert len(_records(results)) == 1  # the refused sweep stored nothing
    monkeypatch.undo()
    assert run_sweep(spec, results_dir=results, progress=False, filters=["kernel=torch", "num_tables=1"])["ok"] == 1


def test_results_dir_that_is_a_file_is_refused_before_measuring(tmp_path, monkeypatch):
    import profiler.runner

    monkeypatch.setattr(profiler.runner, "run_point", lambda *a, **k: pytest.fail("measured"))
    spec, results = _spec(tmp_path), tmp_path / "results"
    results.mkdir()
    (results / "x").write_text("")
    with pytest.raises(NotADirectoryError, match=r"results/x: results go in a folder, and this is a file"):
        run_sweep(spec, results_dir=results / "x", progress=False)


def test_points_that_would_not_fit_are_refused_before_allocating(tmp_path):
    spec = _spec(tmp_path, SPEC.replace("num_rows = 50", "num_rows = 1_000_000_000_000"))
    results = tmp_path / "r"
    assert run_sweep(spec, results_dir=results, progress=False, filters=["kernel=torch", "num_tables=1"])["failed"] == 1
    (rec,) = _records(results)
    assert rec["reason"].startswith("out of memory: needs about") and "refused before allocating" in rec["reason"]


def test_dry_run_lists_points(tmp_path, capsys):
    assert run_sweep(_spec(tmp_path), results_dir=tmp_path / "r", dry_run=True) == {"points": 6}
    assert "kernel=torch_naive num_tables=2" in capsys.readouterr().out
    assert not (tmp_path / "r").exists()


def test_a_filter_that_matches_no_point_is_refused_naming_the_values(tmp_path, capsys):
    # a typo ('0.5L2' for '0.5*L2', '2048.0') ran nothing and exited 0, as if the points were stored
    spec = _spec(tmp_path)
    with pytest.raises(ValueError, match=r"matches no point of .*tiny.toml: num_tables is 1, 2 here, not '3'"):
        run_sweep(spec, results_dir=tmp_path / "r", filters=["kernel=torch", "num_tables=3"], dry_run=True)
    zipped = _spec(tmp_path, SPEC.replace("[fixed]", 'zip = [["kernel", "num_tables"]]\n[fixed]').replace(
        '"torch", "torch_naive", "unbuilt_kernel"', '"torch", "torch_naive"'))  # fmt: skip
    with pytest.raises(ValueError, match="no point has all of these values"):
        run_sweep(zipped, results_dir=tmp_path / "r", filters=["kernel=torch", "num_tables=2"], dry_run=True)
    assert run_sweep(zipped, results_dir=tmp_path / "r", filters=["kernel=torch"], dry_run=True) == {"points": 1}
    assert not (tmp_path / "r").exists()


def test_kill_9_loses_at_most_the_point_in_flight(tmp_path):
    slow = SPEC.replace("rep_ms = 5", "rep_ms = 400").replace("num_tables = [1, 2]", "num_tables = [1, 2, 3, 4]")
    slow = slow.replace('"unbuilt_kernel"', '"numba_w4"')  # a subprocess: the test's registration is not there
    spec, results = _spec(tmp_path, slow), tmp_path / "results"
    cmd = [sys.executable, "-m", "profiler.cli", "sweep", spec, "--results-dir", str(results), "--no-progress"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        files = list(results.glob("*/tiny.jsonl"))
        if files and len(read_records(files[0]).records) >= 2:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    before = {r["key"] for r in _records(results)}
    assert 2 <= len(before) < 12
    counts = run_sweep(spec, results_dir=results, progress=False, filters=[])
    assert counts["skipped"] == len(before) and counts["ok"] + counts["failed"] == 12 - len(before)
    keys = [r["key"] for r in _records(results)]
    assert len(keys) == len(set(keys)) == 12


def test_sweep_into_a_log_prints_a_plain_line_per_point(tmp_path, capsys):
    spec, results = _spec(tmp_path), tmp_path / "results"
    run_sweep(spec, results_dir=results, filters=["num_tables=1"])  # pytest's stderr is no terminal
    out = capsys.readouterr()
    lines = [line for line in out.out.splitlines() if line.startswith("[")]
    assert [line.split("]")[0] for line in lines] == ["[1/3", "[2/3", "[3/3"]
    assert sum(": ok (" in line for line in lines) == 2 and sum(": failed (" in line for line in lines) == 1
    assert "\r" not in out.err + out.out  # no bar redrawn into the log
    run_sweep(spec, results_dir=results, filters=["num_tables=1"])
    assert capsys.readouterr().out.count(": already stored") == 2  # the failed point is measured again
    run_sweep(spec, results_dir=results, filters=["num_tables=1"], progress=False)
    assert "[1/3]" not in capsys.readouterr().out


def test_a_hot_set_larger_than_the_tables_is_recorded_as_the_tables(tmp_path, capsys):
    spec = _spec(tmp_path, SPEC.replace('kernel = ["torch", "torch_naive", "unbuilt_kernel"]', 'kernel = ["torch"]')
                 .replace("num_tables = [1, 2]", 'num_tables = [2]\nworking_set = ["64K", "256"]'))  # fmt: skip
    run_sweep(spec, results_dir=tmp_path / "r", progress=False)
    capped, inside = sorted(_records(tmp_path / "r"), key=lambda r: -r["derived"]["working_set_bytes"])
    tables = 2 * 50 * 4 * 4  # T x E x D x 4 bytes = 1600
    assert (
        capped["derived"]["working_set_bytes"] == tables and capped["derived"]["working_set_requested_bytes"] == 65536
    )
    assert capped["derived"]["hot_rows"] == 50
    assert any("more than the tables'" in w for w in capped["warnings"])
    assert "working_set 64K is 64 KiB, more than the tables' 1.56 KiB" in capsys.readouterr().out
    assert inside["derived"]["working_set_bytes"] == 256 and "working_set_requested_bytes" not in inside["derived"]
    assert inside["derived"]["hot_rows"] == 256 // (2 * 4 * 4)  # 8 rows per table


def test_a_kernel_no_build_has_is_refused_before_any_point_runs(tmp_path):
    spec = _spec(tmp_path, SPEC.replace('"unbuilt_kernel"', '"numba_w16x"'))
    for dry_run in (True, False):
        with pytest.raises(ValueError, match=r"tiny.toml: \[axes\] kernel: unknown kernel 'numba_w16x'; registered: "):
            run_sweep(spec, results_dir=tmp_path / "r", progress=False, dry_run=dry_run)
    assert not (tmp_path / "r").exists()  # nothing measured, nothing written
    fixed = SPEC.replace('kernel = ["torch", "torch_naive", "unbuilt_kernel"]\n', "").replace(
        "[fixed]", '[fixed]\nkernel = "trch"'
    )
    with pytest.raises(ValueError, match=r"\[fixed\] kernel: unknown kernel 'trch'"):
        run_sweep(_spec(tmp_path, fixed), results_dir=tmp_path / "r", progress=False)


def test_pick_ceiling_takes_the_nearest_thread_count_and_row_width():
    from profiler.ceilings import Ceiling
    from profiler.runner import pick_ceiling

    def gather(threads, dim, gbps):
        return Ceiling("gather", "bandwidth", "measured", level="DRAM", threads=threads, gbps=gbps,
                       shape=(1 << 20, dim, 32))  # fmt: skip

    def gemm(threads, n, gflops):
        return Ceiling("gemm", "compute", "measured", threads=threads, gflops=gflops, shape=(n, n, n))

    cs = [gather(1, 16, 5.0), gather(1, 64, 6.0), gather(1, 128, 7.0), gather(3, 64, 9.0),
          gemm(1, 1024, 50.0), gemm(1, 2048, 80.0), gemm(3, 1024, 150.0)]  # fmt: skip
    # row width: D=64 is judged on the D64 gather, D=100 on D128 (28 away, not 36), D=16 on D16
    assert [pick_ceiling(cs, level="DRAM", dim=d, threads=1).shape[1] for d in (64, 100, 16)] == [64, 128, 16]
    # compute-bound: the fastest GEMM measured at that thread count
    assert pick_ceiling(cs, level="DRAM", dim=64, threads=1, compute=True).value == 80.0
    # 2 threads sit one away from both 1 and 3: the higher count, as the roofline draws it
    assert pick_ceiling(cs, level="DRAM", dim=64, threads=2).threads == 3
    assert pick_ceiling(cs, level="DRAM", dim=64, threads=2, compute=True).value == 150.0


def test_a_working_set_the_size_of_a_cache_is_placed_in_it():
    from profiler.sweep_spec import level_of

    caches = {"L1d": 32 << 10, "L2": 1 << 20, "L3": 32 << 20}
    assert [level_of(n, caches) for n in (32 << 10, (32 << 10) + 1, 1 << 20)] == ["L1d", "L2", "L2"]
    assert [level_of(n, caches) for n in (32 << 20, (32 << 20) + 1, None)] == ["L3", "DRAM", "DRAM"]


def test_a_dlrm_point_is_judged_by_its_share_of_the_gemm_roof():
    from profiler.ceilings import Ceiling
    from profiler.runner import run_point

    point = Point(target="dlrm", kernel="torch", batch_size=2, num_rows=10, num_tables=2, embedding_dim=2,
                  pooling_factor=1, bottom_mlp="3", top_mlp="1", mode="forward", threads=1)  # fmt: skip
    gemm = Ceiling("gemm", "compute", "measured", threads=1, gflops=100.0, shape=(64, 64, 64))
    triad = Ceiling("triad", "bandwidth", "measured", level="DRAM", threads=1, gbps=10.0)
    rec = run_point(point, fingerprint={}, ceilings=[triad, gemm], timing={"warmup_ms": 1, "rep_ms": 2})
    d = rec["derived"]
    assert d["ceiling"] == gemm.key and d["ceiling_value"] == 100.0
    assert d["frac_of_ceiling"] == pytest.approx(d["flops"] / rec["median_s"] / 1e9 / 100.0)


def test_memory_estimate_by_hand_with_and_without_the_touched_rows_mask():
    from profiler.workload import estimate_bytes

    p = Point(batch_size=2, pooling_factor=3, num_rows=1000, embedding_dim=4, num_tables=2)
    # tables 2 x 1000 x 4 x 4 = 32,000; n = 12 lookups, int64, in ceil(2 x 1000 / 6) = 334 batches + 1: 32,160;
    # outputs 3 x 2 x 2 x 4 x 4 = 192; sampling tables 1000 x 8 twice = 16,000; the mask, a byte a row: 2,000
    assert estimate_bytes(p, 1000) == 32_000 + 32_160 + 192 + 16_000 + 2_000
    assert estimate_bytes(p, 1000, touched_mask=False) == 32_000 + 32_160 + 192 + 16_000


def test_ctrl_c_mid_sweep_says_how_to_resume_and_the_rerun_skips_what_was_stored(tmp_path, monkeypatch, capsys):
    import profiler.runner

    spec = _spec(tmp_path, SPEC.replace(', "unbuilt_kernel"]', "]"))
    results = tmp_path / "results"
    real, calls = profiler.runner.run_point, []

    def stop_at_the_third(point, **kw):
        calls.append(point)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(point, **kw)

    monkeypatch.setattr(profiler.runner, "run_point", stop_at_the_third)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(spec, results_dir=results, progress=False)
    err = capsys.readouterr().err
    assert "tiny: interrupted after 2 ok, 0 failed in this run, stored in " in err
    assert "the same command resumes (stored ok points are skipped)" in err
    assert len(_records(results)) == 2
    monkeypatch.setattr(profiler.runner, "run_point", real)
    assert run_sweep(spec, results_dir=results, progress=False) == {
        "ok": 2, "failed": 0, "skipped": 2}  # fmt: skip


def test_a_point_timeout_of_years_runs_the_point_without_an_alarm(tmp_path):
    # setitimer overflows past ~9.2e9 s: run_sweep(point_timeout_s=1e10) raised OverflowError (a traceback)
    spec = _spec(tmp_path, SPEC.replace(', "torch_naive", "unbuilt_kernel"]', "]").replace("[1, 2]", "[1]"))
    counts = run_sweep(spec, results_dir=tmp_path / "results", progress=False, point_timeout_s=1e10)
    assert counts == {"ok": 1, "failed": 0, "skipped": 0}
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_points_of_a_changed_stack_distance_profile_are_measured_again(tmp_path, capsys):
    """Points are keyed by the profile's path: a resumed sweep must not keep what the old file's contents drew."""
    prof = tmp_path / "p.prof"
    prof.write_text("1\n0, 1\n0.5, 1.0\n")
    text = SPEC.replace(', "torch_naive", "unbuilt_kernel"]', "]")
    spec = _spec(tmp_path, text.replace("num_tables = [1, 2]", f'num_tables = [1]\ndistribution = ["sd:{prof}"]'))
    results = tmp_path / "results"
    assert run_sweep(spec, results_dir=results, progress=False) == {"ok": 1, "failed": 0, "skipped": 0}
    assert run_sweep(spec, results_dir=results, progress=False)["skipped"] == 1  # unchanged: kept
    prof.write_text("1\n0, 2\n0.5, 1.0\n")
    capsys.readouterr()
    assert run_sweep(spec, results_dir=results, progress=False) == {"ok": 1, "failed": 0, "skipped": 0}
    assert "measuring again 1 point(s) whose stack-distance profile changed since stored" in capsys.readouterr().out
    digests = [r["derived"]["profile_sha256"] for r in _records(results)]
    assert len(digests) == 2 and digests[0] != digests[1] and all(len(d) == 16 for d in digests)


def test_a_sweep_summary_counts_the_points_measured_under_contention(tmp_path, monkeypatch, capsys):
    import profiler.runner

    spec, results = _spec(tmp_path), tmp_path / "results"
    real, calls = profiler.runner.run_point, []

    def every_other_contended(*a, **k):
        rec = real(*a, **k)
        calls.append(rec)
        rec["measurement"]["contended"] = len(calls) % 2 == 1  # the first of the two points only
        return rec

    monkeypatch.setattr(profiler.runner, "run_point", every_other_contended)
    assert run_sweep(spec, results_dir=results, progress=False, filters=["kernel=torch"])["ok"] == 2
    out = capsys.readouterr().out
    assert "note: 1 of the 2 ok point(s) ran under contention" in out and "--exclude-contended" in out
    assert "(CPU pressure or steal; first: " in out
