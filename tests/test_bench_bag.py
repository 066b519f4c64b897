"""`dlrmbench bench embedding-bag`: flag parsing, grid expansion, byte counts, inputs, tables, and a tiny run."""

from __future__ import annotations

import argparse
import json

import pytest
import torch

from profiler.bench_bag import (
    GATHER_CEILING,
    BagPoint,
    alloc_table,
    expand,
    huge_page_bytes,
    make_bags,
    parse_distribution,
    point_cost,
)
from profiler.bench_bag_cli import _print_row, parse_choice_list, parse_int_list, parse_list
from profiler.cli import build_parser, main
from profiler.timer import percent_over


def test_int_lists_accept_scientific_and_underscores():
    assert parse_int_list("128,2048") == [128, 2048]
    assert parse_int_list("1e4, 1e6,10_000") == [10_000, 1_000_000, 10_000]
    for bad in ("1.5", "0", "-3", "x", "1e4,", "inf"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_int_list(bad)
    assert parse_list("torch, numba_w16") == ["torch", "numba_w16"]


def test_choice_lists_name_the_allowed_values():
    parse = parse_choice_list(("sparse", "dense", "fused"))
    assert parse("sparse, fused") == ["sparse", "fused"]
    with pytest.raises(argparse.ArgumentTypeError, match=r"invalid choice: 'spares' \(choose from 'sparse', 'dense', "):
        parse("spares")
    with pytest.raises(argparse.ArgumentTypeError, match="empty item"):
        parse("sparse,")


def test_distributions():
    assert parse_distribution("uniform") == ("uniform", 0.0)
    assert parse_distribution("zipf:1.15") == ("zipf", 1.15)
    assert parse_distribution("zipf:0") == ("zipf", 0.0)  # uniform, as train and sweep specs take it
    for bad in ("zipf", "zipf:-1", "zipf:x", "zipf:nan", "zipf:inf", "normal"):
        with pytest.raises(ValueError, match="allowed"):
            parse_distribution(bad)


def test_bench_flags_parse_to_lists():
    args = build_parser().parse_args(
        [
            "bench", "embedding-bag", "--kernels", "torch,numba_w8", "--batch-size", "128,2048",
            "--num-rows", "1e4,1e6", "--embedding-dim", "16,64", "--pooling-factor", "1,20",
            "--distribution", "uniform,zipf:1.15", "--threads", "1,2", "--huge-pages", "on,off", "--backward",
        ]
    )  # fmt: skip
    assert args.kernels == ["torch", "numba_w8"] and args.num_rows == [10_000, 1_000_000]
    assert args.distribution == ["uniform", "zipf:1.15"] and args.huge_pages == [True, False]
    assert args.threads == [1, 2] and args.backward
    with pytest.raises(SystemExit):
        build_parser().parse_args(["bench", "embedding-bag", "--huge-pages", "maybe"])


def test_expand_is_table_major_with_kernels_innermost():
    pts = expand(["torch", "numba_w16"], num_rows=[100, 200], embedding_dim=[4], batch_size=[2, 3], threads=[1])
    assert len(pts) == 2 * 2 * 2
    assert [p.kernel for p in pts[:2]] == ["torch", "numba_w16"]
    assert [p.num_rows for p in pts] == [100] * 4 + [200] * 4  # one table alive at a time
    with pytest.raises(ValueError, match="unknown axis"):
        expand(["torch"], rows=[1])
    with pytest.raises(ValueError, match="int32"):
        BagPoint("torch", 1, 2**31, 1, 1, index_dtype="int32").validate()
    # 2^21 bags x 2^10 lookups: the last offset, 2^31, would wrap to -2^31 in int32 offsets
    with pytest.raises(ValueError, match="2,147,483,648 lookups: their offsets do not fit int32"):
        BagPoint("torch", 2**21, 100, 4, 2**10, index_dtype="int32").validate()
    BagPoint("torch", 2**21, 100, 4, 2**10 - 1, index_dtype="int32").validate()  # 2^31 - 2^21 fits


def test_point_cost_by_hand():
    p = BagPoint("torch", batch_size=2, num_rows=10, embedding_dim=4, pooling_factor=3)
    # read 6 rows x 16 B + 6 int64 indices + 3 int64 offsets; write 2 bags x 16 B
    assert point_cost(p).bytes_moved == 6 * 16 + 6 * 8 + 3 * 8 + 2 * 16
    b = BagPoint("torch", 2, 10, 4, 3, backward=True)
    # plus the update: read grad_out 2x16 B, rows 6x16 B, indices and offsets again; write rows 6x16 B
    assert point_cost(b).bytes_moved == point_cost(p).bytes_moved + 2 * 16 + 6 * 16 + 6 * 8 + 3 * 8 + 6 * 16


def test_make_bags_shapes_and_zipf_skew():
    idx, off = make_bags(50, 1000, 4, "uniform", dtype=torch.int32)
    assert idx.dtype == off.dtype == torch.int32 and idx.numel() == 200 and off.tolist()[:3] == [0, 4, 8]
    assert int(idx.min()) >= 0 and int(idx.max()) < 1000
    z, _ = make_bags(500, 1000, 4, "zipf:1.15")
    top = torch.bincount(z, minlength=1000).max()
    assert int(top) > 100  # the hottest row takes a large share (about 1/6 at s=1.15), uniform ~2


def test_table_pages_follow_the_advice():
    t = alloc_table(1000, 8, huge_pages=False, seed=1)
    assert t.shape == (1000, 8) and t.dtype == torch.float32 and float(t.abs().max()) <= 1.0
    assert huge_page_bytes(t) in (0, None)  # madvised off: never THP-backed


def test_tiny_run_writes_json(tmp_path, capsys):
    out = tmp_path / "points.json"
    rc = main(
        [
            "bench", "embedding-bag", "--kernels", f"torch,numba_w16,{GATHER_CEILING}", "--batch-size", "8",
            "--num-rows", "1e3", "--embedding-dim", "16", "--pooling-factor", "2", "--threads", "1",
            "--warmup-ms", "1", "--rep-ms", "3", "--json-out", str(out),
        ]
    )  # fmt: skip
    assert rc == 0
    records = json.loads(out.read_text())
    assert [r["kernel"] for r in records] == ["torch", GATHER_CEILING, "numba_w16"]
    keys = {"kernel", "batch_size", "num_rows", "embedding_dim", "pooling_factor", "distribution", "threads"}
    for r in records:
        assert keys | {"median_s", "gbps", "huge_pages", "numba_cpu_name", "isa"} <= r.keys()
        assert r["median_s"] > 0 and r["gbps"] > 0
    ref_s = next(r["median_s"] for r in records if r["kernel"] == "torch")
    for r in records[1:]:  # speedup vs torch: torch's median time over the kernel's, at the same point
        assert r["speedup_vs_torch"] == pytest.approx(ref_s / r["median_s"], rel=1e-12), r["kernel"]
    assert "geomean speedup vs torch" in capsys.readouterr().out


def test_unknown_kernel_is_an_error(capsys):
    assert main(["bench", "embedding-bag", "--kernels", "nope", "--num-rows", "10"]) == 2
    assert "unknown kernel 'nope'" in capsys.readouterr().err


def test_isa_child_gets_the_same_command_line():
    from profiler.bench_bag_cli import _bench_argv

    argv = [
        "bench", "embedding-bag", "--kernels", "torch,numba_w4", "--num-rows", "1e4", "--threads", "1,2",
        "--huge-pages", "on,off", "--distribution", "zipf:1.15", "--isa", "x86-64-v3", "--backward",
    ]  # fmt: skip
    args = build_parser().parse_args(argv)
    again = build_parser().parse_args(_bench_argv(args))
    assert {k: v for k, v in vars(again).items() if k != "func"} == {k: v for k, v in vars(args).items() if k != "func"}


def _row(kernel: str, median_s: float, iqr_s: float, warnings: list[str]) -> dict:
    point = {"batch_size": 128, "num_rows": 10_000, "embedding_dim": 64, "pooling_factor": 20, "threads": 2,
             "distribution": "uniform", "huge_pages": False, "backward": False, "index_dtype": "int64"}  # fmt: skip
    samples = [median_s - iqr_s / 2, median_s, median_s + iqr_s / 2]
    return {**point, "kernel": kernel, "median_s": median_s, "iqr_s": iqr_s, "samples_s": samples,
            "lookups_per_s": 1e9, "gbps": 10.0, "warnings": warnings}  # fmt: skip


def test_percent_over_the_limit_never_prints_equal_to_it():
    assert percent_over(0.25, 0.10) == "25%"
    assert percent_over(0.104, 0.10) == "10.4%"  # 10% > 10% at whole percents
    assert percent_over(0.1004, 0.10) == "10.04%"
    assert percent_over(0.1099, 0.10) == "11%"  # rounds up past the limit already


def test_table_median_in_one_unit(capsys):
    done: list[dict] = []
    for r in (_row("torch", 5433.9e-6, 0.0, []),
              _row("numba_w16", 11.17e-3, 0.104 * 11.17e-3, ["noisy: IQR/median = 10.4% > 10%"])):  # fmt: skip
        done.append(r)
        _print_row(r, done)
    legend, head, torch_line, numba_line = capsys.readouterr().out.splitlines()
    assert "(4k) or transparent huge pages (hp)" in legend and "median us" in head
    assert " ms" not in torch_line + numba_line and " us " not in torch_line + numba_line
    assert "   5,433.9 " in torch_line and "  11,170.0 " in numba_line
    assert torch_line.index("5,433.9") + 7 == numba_line.index("11,170.0") + 8  # right-aligned in one column
    assert "noisy: IQR/median = 10.4% > 10%" in numba_line and "0.49x" in numba_line


def test_more_threads_than_cpus_is_refused_before_timing(monkeypatch, capsys):
    import profiler.timer

    monkeypatch.setattr(profiler.timer, "usable_cpus", lambda: 2)
    assert main(["bench", "embedding-bag", "--kernels", "torch", "--threads", "1,3"]) == 2
    err = capsys.readouterr().err
    assert "--threads 3: this process may use 2 CPUs" in err and "Traceback" not in err
    with pytest.raises(ValueError, match="threads=3: this process may use 2 CPUs"):
        profiler.timer.measure(lambda: None, threads=3, warmup_ms=0, rep_ms=0)


def test_only_unavailable_kernels_is_an_error_not_an_empty_table(capsys):
    from kernels import registry

    registry.list_kernels()
    registry.register_unavailable("unbuilt_kernel", backend=registry.Backend.TORCH, reason="not built here (test)")
    try:
        assert main(["bench", "embedding-bag", "--kernels", "unbuilt_kernel"]) == 2
    finally:
        registry._REGISTRY.pop("unbuilt_kernel", None)
    err = capsys.readouterr().err
    assert "--kernels: nothing to run here, every kernel asked is unavailable: unbuilt_kernel (not built here" in err


def test_the_gather_ceiling_says_when_it_has_no_row(capsys):
    argv = ["bench", "embedding-bag", "--kernels", "torch", "--gather-ceiling", "--backward", "--batch-size", "8",
            "--num-rows", "100", "--embedding-dim", "4", "--pooling-factor", "2",
            "--warmup-ms", "1", "--rep-ms", "2"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr()
    assert "note: gather_ceiling times int64 forward bags only: no ceiling row for --backward" in out.err
    assert "gather_ceiling " not in out.out  # no row for it
    assert out.out.startswith("numba kernels compiled for ")  # the ISA in force, before the table


def test_ctrl_c_keeps_the_points_measured(tmp_path, monkeypatch, capsys):
    import profiler.bench_bag_cli as cli

    shown = []

    def print_then_stop(r, done):
        shown.append(r["kernel"])
        if len(shown) == 2:
            raise KeyboardInterrupt  # Ctrl-C while the second point's row is printed

    monkeypatch.setattr(cli, "_print_row", print_then_stop)
    out = tmp_path / "b.json"
    argv = ["bench", "embedding-bag", "--kernels", "torch,torch_naive,numba_w4", "--batch-size", "8",
            "--num-rows", "100", "--embedding-dim", "8", "--pooling-factor", "2", "--warmup-ms", "1",
            "--rep-ms", "2", "--json-out", str(out)]  # fmt: skip
    assert main(argv) == 130
    assert [r["kernel"] for r in json.loads(out.read_text())] == ["torch", "torch_naive"]
    assert f"interrupted: wrote the 2 points measured to {out}" in capsys.readouterr().out


def test_zipf_batches_share_one_placement():
    """The hottest rank is the same row in every rotated batch, so hot rows stay hot across calls."""
    from profiler.bench_bag import bag_batches

    batches = bag_batches(256, 10_000, 8, "zipf:1.2", seed=3)
    assert len(batches) > 1
    hottest = {int(torch.bincount(b, minlength=10_000).argmax()) for b in batches}
    assert len(hottest) == 1


def test_bench_bags_can_replay_a_stack_distance_profile(tmp_path):
    path = tmp_path / "p.prof"
    path.write_text("1\n0, 2\n1e-9, 1.0\n")  # distance 2 (P(0) must be > 0): two rows in turn, then again
    assert parse_distribution(f"sd:{path}") == ("sd", 0.0)
    idx, offsets = make_bags(3, 1000, 4, f"sd:{path}")
    a, b = idx[:2].tolist()
    assert a != b and idx.tolist() == [a, b] * 6 and offsets.tolist() == [0, 4, 8, 12]
    with pytest.raises(ValueError, match=r"nope\.prof: no such file"):
        parse_distribution(f"sd:{tmp_path / 'nope.prof'}")
