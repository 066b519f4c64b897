"""The all-to-all as an operator: timing on gloo processes, its exchange, bytes, sweep target and failures.

Also: `dlrmbench train --dist-backend` refuses what it cannot do across processes.

The exchange, W=2, T=5 tables, B=7 samples (rank 0 holds tables 0, 2, 4 and samples 0-3,
rank 1 tables 1, 3 and samples 4-6):

    before (T_local, B, D) for the global batch      after (T, B_rank, D) for its samples
    rank 0: t0 t2 t4 x [s0 .. s6]                    rank 0: t0 .. t4 x [s0 .. s3]
    rank 1: t1 t3    x [s0 .. s6]                    rank 1: t0 .. t4 x [s4 .. s6]
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import time

import pytest
import torch

from profiler.collective import (
    CollectiveFailure,
    _launch,
    all_to_all_bytes,
    all_to_all_once,
    nccl_tests_bandwidths,
    time_all_to_all,
)
from profiler.runner import run_point
from profiler.sweep_spec import Point, expand, load_spec, parse_spec
from profiler.timer import Measurement


@pytest.mark.parametrize("world_size", [1, 2])
def test_time_all_to_all_returns_the_samples_asked(world_size):
    m = time_all_to_all(world_size, 8, 4, 3, mode="train", warmup=1, reps=6)
    assert isinstance(m, Measurement)
    assert len(m.samples_s) == 6 and all(s > 0 for s in m.samples_s)
    assert m.threads == 1 and m.warmup_calls == 1 and m.median_s > 0


def test_the_exchange_matches_plain_indexing():
    W, T, B, D, seed = 2, 5, 7, 3, 11  # uneven: 3 + 2 tables, 4 + 3 samples
    full = torch.randn((T, B, D), generator=torch.Generator().manual_seed(seed))
    grad = torch.randn((T, B, D), generator=torch.Generator().manual_seed(seed + 1))
    outs = all_to_all_once(W, B, T, D, seed=seed)
    assert [o.tables for o in outs] == [(0, 2, 4), (1, 3)]
    starts = [0, 4, 7]
    for o in outs:
        lo, hi = starts[o.rank], starts[o.rank + 1]
        torch.testing.assert_close(o.output, full[:, lo:hi])  # every table, this rank's samples
        torch.testing.assert_close(o.grad_input, grad[list(o.tables)] / W)  # its tables' gradients come home, 1/W


def test_bytes_worked_by_hand():
    # W=2, T=4, B=6, D=3: 2 tables and 3 samples each; send 2 tables x 3 others' samples x 3 x 4 bytes = 72
    assert all_to_all_bytes(2, 6, 4, 3) == [(72, 72), (72, 72)]
    assert all_to_all_bytes(2, 6, 4, 3, mode="train") == [(144, 144), (144, 144)]
    # W=2, T=3, B=5, D=3: rank 0 holds tables 0, 2 and 3 samples, rank 1 table 1 and 2 samples
    #   rank 0 sends 2 x 2 x 3 x 4 = 48, receives 1 x 3 x 3 x 4 = 36; rank 1 the reverse
    assert all_to_all_bytes(2, 5, 3, 3) == [(48, 36), (36, 48)]
    assert all_to_all_bytes(2, 5, 3, 3, mode="train") == [(84, 84), (84, 84)]
    assert all_to_all_bytes(1, 5, 3, 3) == [(0, 0)]  # one rank keeps everything
    for W, B, T, D in [(3, 10, 7, 4), (4, 2048, 26, 16)]:
        pairs = all_to_all_bytes(W, B, T, D)
        assert sum(s for s, _ in pairs) == sum(r for _, r in pairs)


def test_nccl_tests_bandwidths_by_hand():
    # nccl-tests (AlltoAllGetBw): algbw = a rank's send buffer / time, busbw = algbw * (W - 1) / W.
    # W=4, T=26, B=2048, D=16: the busiest rank holds 7 tables, 7 x 2048 x 16 x 4 = 917,504 bytes; in 1 ms
    algbw, busbw = nccl_tests_bandwidths(4, 2048, 26, 16, 1e-3)
    assert algbw == pytest.approx(0.917504) and busbw == pytest.approx(0.917504 * 3 / 4)
    # train adds the backward's buffer, all 26 tables for the rank's 512 samples: 26 x 512 x 16 x 4 = 851,968
    assert nccl_tests_bandwidths(4, 2048, 26, 16, 1e-3, mode="train")[0] == pytest.approx(0.917504 + 0.851968)
    with pytest.raises(ValueError, match="mode='backward': allowed: forward, train"):
        nccl_tests_bandwidths(4, 2048, 26, 16, 1e-3, mode="backward")
    assert nccl_tests_bandwidths(1, 8, 3, 2, 1e-3)[1] == 0.0  # one rank: nothing crosses


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"world_size": 0}, ValueError, "world_size=0: must be >= 1"),
        ({"world_size": 2, "num_tables": 1}, ValueError, "num_tables=1: must be >= world_size=2"),
        ({"world_size": 2, "batch_size": 1}, ValueError, "batch_size=1: must be >= world_size=2"),
        ({"embedding_dim": 0}, ValueError, "embedding_dim=0: must be >= 1"),
        ({"mode": "backward"}, ValueError, "mode='backward': allowed: forward, train"),
        ({"reps": 0}, ValueError, "reps=0"),
        ({"backend": "nccl"}, NotImplementedError, "backend='nccl': only gloo"),
    ],
)
def test_bad_arguments_are_named(kwargs, error, message):
    args = {"world_size": 1, "batch_size": 4, "num_tables": 2, "embedding_dim": 3, **kwargs}
    with pytest.raises(error) as exc:
        time_all_to_all(**args)
    assert message in str(exc.value)


# ---- failures surface in the parent ----


def _raise_on_rank_1(rank: int, world_size: int, job: dict) -> None:
    import torch.distributed as dist

    if rank == 1:
        raise ValueError("boom on purpose")
    dist.barrier()  # rank 0 waits for a peer that is gone


def _die_quietly(rank: int, world_size: int, job: dict) -> None:
    os._exit(7)


def _hang_on_rank_1(rank: int, world_size: int, job: dict) -> None:
    import torch.distributed as dist

    if rank == 1:
        time.sleep(3600)
    dist.barrier()


@pytest.mark.parametrize(
    ("work", "world_size", "message"),
    [
        (_raise_on_rank_1, 2, "rank 1 exited with code 1: ValueError: boom on purpose"),
        (_die_quietly, 1, "rank 0 exited with code 7 (no Python error recorded)"),
    ],
)
def test_a_crashed_rank_is_a_clear_error(work, world_size, message):
    with pytest.raises(CollectiveFailure) as exc:
        _launch(world_size, work, {}, timeout_s=60)
    assert f"all-to-all on {world_size} gloo rank(s) failed" in str(exc.value)
    assert message in str(exc.value)
    assert not multiprocessing.active_children()


def test_a_hung_rank_times_out_and_is_killed():
    t0 = time.monotonic()
    with pytest.raises(CollectiveFailure) as exc:
        _launch(2, _hang_on_rank_1, {}, timeout_s=3)
    assert time.monotonic() - t0 < 120  # killed at the timeout, not after the hour rank 1 sleeps (generous: spawns)
    assert "timed out after 3 s" in str(exc.value) and "rank 1 still running" in str(exc.value)
    assert not multiprocessing.active_children()


# ---- the sweep target ----


def test_spec_with_target_all_to_all_expands_over_world_size():
    spec = parse_spec(
        {
            "name": "t",
            "target": "all_to_all",
            "fixed": {"num_tables": 4, "embedding_dim": 3},
            "axes": {"world_size": [1, 2], "mode": ["forward", "train"]},
        }
    )
    points = expand(spec)
    assert [(p.world_size, p.mode) for p in points] == [(w, m) for w in (1, 2) for m in ("forward", "train")]
    assert all(p.target == "all_to_all" and p.num_tables == 4 for p in points)
    shipped = expand(load_spec("sweeps/all_to_all.toml"))
    assert len(shipped) == 12 and {p.world_size for p in shipped} == {2, 4}


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"target": "all_to_all", "axes": {"world_size": [0]}}, "world_size = 0 must be >= 1"),
        ({"target": "dlrm", "fixed": {"world_size": 2}}, "world_size applies to target all_to_all only"),
        (
            {"target": "all_to_all", "axes": {"kernel": ["torch", "numba_w8"]}, "fixed": {"num_rows": 10}},
            "kernel, num_rows do.es. not apply to target all_to_all",
        ),
    ],
)
def test_bad_world_size_in_a_spec(data, message):
    with pytest.raises(ValueError, match=message):
        parse_spec({"name": "t", **data})


def test_point_keys_without_world_size_are_unchanged():
    # The key before world_size existed: sha256 of the other fields, sorted, sweep left out.
    old_fields = {
        "target": "embedding_bag", "kernel": "torch", "batch_size": 2048, "num_rows": 1_000_000,
        "embedding_dim": 64, "pooling_factor": 20, "num_tables": 1, "distribution": "uniform",
        "working_set": "all", "threads": 0, "device": "cpu", "mode": "forward", "embedding_grad": "sparse",
        "bottom_mlp": "13-512-256-64", "top_mlp": "512-256-1",
    }  # fmt: skip
    by_hand = hashlib.sha256(json.dumps(old_fields, sort_keys=True).encode()).hexdigest()[:16]
    assert Point().key() == by_hand == "2fad22c855c97274"
    dlrm = Point(target="dlrm", mode="train", batch_size=128, num_tables=26, num_rows=100_000, embedding_dim=16,
                 pooling_factor=10, sweep="dlrm_batch")  # fmt: skip
    dlrm_fields = old_fields | {"target": "dlrm", "mode": "train", "batch_size": 128, "num_tables": 26,
                                "num_rows": 100_000, "embedding_dim": 16, "pooling_factor": 10}  # fmt: skip
    assert dlrm.key() == hashlib.sha256(json.dumps(dlrm_fields, sort_keys=True).encode()).hexdigest()[:16]
    assert Point(world_size=2).key() != Point().key()


def test_run_point_times_an_all_to_all_and_the_report_shows_it(tmp_path):
    from profiler.plots import plot_settings
    from profiler.report import write_report
    from profiler.results import load_results, shared_label
    from profiler.store import ResultFile

    point = Point(target="all_to_all", world_size=2, batch_size=8, num_tables=4, embedding_dim=3, mode="train")
    rec = run_point(point, fingerprint={}, ceilings=[])
    assert rec["status"] == "ok", rec["reason"]
    d = rec["derived"]
    # forward: each rank sends (and receives) 2 tables x 4 samples x D=3 x 4 bytes = 96; train: 192 each way
    assert d["bytes_read"] == d["bytes_written"] == 192 and d["bytes_moved"] == 384
    assert d["gbps"] == pytest.approx(d["bytes_moved"] / rec["median_s"] / 1e9)
    assert d["frac_of_ceiling"] is None and d["ceiling"] is None and d["memory_level"] is None
    assert d["bytes_sent_per_rank"] == [192, 192] and d["backend"] == "gloo"
    # nccl-tests' algbw: a rank's send buffer, 2 tables x 8 samples x 3 x 4 bytes = 192, and in train the
    # backward's, 4 tables x 4 samples x 3 x 4 = 192 more; busbw half
    assert d["algbw_gbps"] == pytest.approx(384 / rec["median_s"] / 1e9) and d["busbw_gbps"] == pytest.approx(
        d["algbw_gbps"] / 2
    )

    folder = tmp_path / "results" / "sku"
    ResultFile(folder / "t.jsonl", {"sweep": "t", "sku_id": "sku", "fingerprint": {}}).append(
        {"key": point.key(), "point": {**point.to_dict(), "sweep": "t"}, **rec}
    )
    rows = load_results(folder).rows
    assert rows[0]["working_set_bytes"] is None  # no table is read
    settings = plot_settings(rows, None)
    assert settings["kinds"] == ["throughput"] and settings["y"] == "gbps"
    paths = write_report(folder, tmp_path / "report")
    page = paths[0].read_text()
    assert "| gloo |" in page and "t_throughput.png" in page
    assert shared_label(rows) == "sweep t: B=8 D=3 T=4 W=2; 1 thread"  # no table rows or lookups: it has none


def test_run_point_reports_failures_of_all_to_all_points(monkeypatch):
    import profiler.collective

    bad_mode = Point(target="all_to_all", world_size=2, batch_size=8, num_tables=4, mode="backward")
    rec = run_point(bad_mode, fingerprint={}, ceilings=[])
    assert rec["status"] == "failed" and "mode='backward' is not valid for all_to_all" in rec["reason"]
    rec = run_point(Point(world_size=2), fingerprint={}, ceilings=[])
    assert rec["status"] == "failed" and "only all_to_all points run on several processes" in rec["reason"]
    rec = run_point(Point(num_rows=0), fingerprint={}, ceilings=[])  # built by hand, past the spec's checks
    assert rec["status"] == "failed" and rec["reason"] == "ValueError: point: num_rows = 0 must be >= 1"

    def crashed(*args, **kwargs):
        raise CollectiveFailure("all-to-all on 2 gloo rank(s) failed: rank 1 exited with code 1: boom")

    monkeypatch.setattr(profiler.collective, "time_all_to_all", crashed)
    rec = run_point(Point(target="all_to_all", world_size=2, batch_size=8, num_tables=4), fingerprint={}, ceilings=[])
    assert rec["status"] == "failed" and rec["reason"].startswith("CollectiveFailure: all-to-all on 2")
    # 64 tables x 10^8 samples x D 1024: 26 TB of pooled vectors alone, refused before any rank starts
    huge = Point(target="all_to_all", world_size=2, batch_size=10**8, num_tables=64, embedding_dim=1024)
    rec = run_point(huge, fingerprint={}, ceilings=[])
    assert rec["status"] == "failed" and rec["reason"].startswith("out of memory: needs about")
    assert "refused before allocating" in rec["reason"]


def test_point_timeout_bounds_an_all_to_all_point_and_its_ranks(monkeypatch):
    import psutil

    import profiler.collective

    point = Point(target="all_to_all", world_size=2, batch_size=8, num_tables=4)
    # a budget shorter than the ranks' start-up: the point fails as timed out and leaves no rank behind
    rec = run_point(point, fingerprint={}, ceilings=[], timeout_s=0.3)
    assert rec["status"] == "failed" and "timed out after 0.3 s" in rec["reason"]
    ranks = [c for c in psutil.Process().children(recursive=True) if "resource_tracker" not in " ".join(c.cmdline())]
    assert not [c for c in ranks if c.is_running() and c.status() != "zombie"]  # multiprocessing's tracker stays

    seen = []

    def record(*args, **kwargs):
        seen.append(kwargs.get("timeout_s"))
        raise CollectiveFailure("stop here")

    monkeypatch.setattr(profiler.collective, "time_all_to_all", record)
    run_point(point, fingerprint={}, ceilings=[], timeout_s=300.0)
    run_point(point, fingerprint={}, ceilings=[])
    assert seen == [300.0, None]  # the point's budget, not the collective's 60 s default; none: the default


# ---- dlrmbench train --dist-backend refuses what needs one process ----


class _NoDist:
    """A dist_ctx that must not be reached: the refusal comes before any model is built."""

    def build_model(self, *args, **kwargs):
        raise AssertionError("run() built a model before refusing")


@pytest.mark.parametrize(
    ("train_kwargs", "run_kwargs", "listed"),
    [
        ({"save_model": "m.pt"}, {}, "--save-model"),
        ({}, {"state_dict": {}}, "--load-model"),
        ({}, {"test_data": []}, "a test split"),
        ({"profile_trace": "trace.json"}, {}, "--profile"),
        ({"save_model": "m.pt", "profile_trace": "t.json"}, {"state_dict": {}, "test_data": []},
         "--load-model, --save-model, a test split, --profile"),
    ],
)  # fmt: skip
def test_train_with_dist_backend_refuses_single_process_features(train_kwargs, run_kwargs, listed):
    from model.config import DLRMConfig
    from model.train import TrainConfig, run

    config = DLRMConfig(4, (5, 6), (3, 4), (4, 1))
    with pytest.raises(NotImplementedError) as exc:
        run(config, TrainConfig(**train_kwargs), [], dist_ctx=_NoDist(), log=lambda _: None, **run_kwargs)
    assert str(exc.value) == f"{listed} with --dist-backend: run those on one process"


def test_train_cli_with_dist_backend_refuses_save_model(monkeypatch, tmp_path, capsys):
    import model.distributed
    from profiler.cli import main

    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setattr(model.distributed, "init_distributed", lambda *args: _NoDist())
    argv = ["train", "--preset=tiny", "--mini-batch-size=8", "--num-batches=1", "--dist-backend=gloo",
            f"--save-model={tmp_path / 'm.pt'}", "--profile"]  # fmt: skip
    code = main(argv)
    err = capsys.readouterr().err
    assert "--save-model, --profile with --dist-backend: run those on one process" in err
    assert code == 2 and "peer rank" not in err
