"""Sweep specs expand as specified; the results store survives torn lines and concurrent writers."""

from __future__ import annotations

import json
import multiprocessing
import re
from pathlib import Path

import pytest

from profiler.store import Busy, ResultFile, latest_per_key, read_records
from profiler.sweep_spec import Point, expand, load_spec, parse_spec, resolve_bytes

_P = Point().to_dict()  # a point record's fields: the store skips a record without its shape
_PJ = json.dumps(_P)

SWEEPS = sorted((Path(__file__).resolve().parents[1] / "sweeps").glob("*.toml"))
CACHES = {"L1d": 32 << 10, "L2": 1 << 20, "L3": 32 << 20}


@pytest.mark.parametrize("path", SWEEPS, ids=[p.stem for p in SWEEPS])
def test_every_shipped_sweep_loads_and_expands(path):
    spec = load_spec(path)
    points = expand(spec, available_kernels=["torch", "torch_naive", "numba_w4", "numba_w16"])
    n = 1
    for key, values in spec.axes.items():
        if key == "kernel":
            continue
        n *= len(values)
    assert len(points) % n == 0 and len(points) >= n
    assert len({p.key() for p in points}) == len(points)  # every point distinct
    for p in points:
        assert p.sweep == spec.name and p.target == str(spec.target)
        resolve_bytes(p.working_set, CACHES)


def test_required_sweeps_are_shipped():
    assert {p.stem for p in SWEEPS} >= {"embedding_bag_kernels", "cache_footprint", "dlrm_batch", "simd_width"}


def test_cartesian_product_and_zip():
    spec = parse_spec(
        {
            "name": "t",
            "target": "embedding_bag",
            "fixed": {"num_rows": 100},
            "axes": {
                "kernel": ["a", "b"],
                "batch_size": [1, 2, 3],
                "pooling_factor": [10, 20, 30],
                "embedding_dim": [4],
            },
            "zip": [["batch_size", "pooling_factor"]],
        }
    )
    points = expand(spec)
    got = [(p.kernel, p.batch_size, p.pooling_factor, p.embedding_dim, p.num_rows) for p in points]
    assert got == [(k, b, pf, 4, 100) for k in "ab" for b, pf in ((1, 10), (2, 20), (3, 30))]


def test_kernel_wildcards():
    spec = parse_spec({"name": "t", "target": "embedding_bag", "axes": {"kernel": ["numba_*", "torch", "all"]}})
    kernels = [p.kernel for p in expand(spec, ["torch", "numba_w1", "numba_w8", "x"])]
    assert kernels == ["numba_w1", "numba_w8", "torch", "x"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"name": "t", "target": "gemm"}, "target = 'gemm'; allowed: embedding_bag, dlrm"),
        ({"name": "t", "target": "dlrm", "axis": {}}, "unknown key(s) ['axis']"),
        ({"name": "t", "target": "dlrm", "axes": {"batchsize": [1]}}, "unknown axis or argument 'batchsize'"),
        ({"name": "t", "target": "dlrm", "axes": {"batch_size": [0]}}, "batch_size = 0 must be >= 1"),
        ({"name": "t", "target": "dlrm", "fixed": {"mode": "fast"}}, "mode = 'fast'; allowed: ['backward'"),
        ({"name": "t", "target": "dlrm", "axes": {"distribution": ["zipf"]}}, "allowed: uniform, zipf:S"),
        ({"name": "t", "target": "dlrm", "axes": {"working_set": ["3*L4"]}}, "is not a size"),
        (
            {
                "name": "t",
                "target": "dlrm",
                "axes": {"batch_size": [1, 2], "pooling_factor": [1]},
                "zip": [["batch_size", "pooling_factor"]],
            },
            "zipped axes must have equal lengths",
        ),
        ({"name": "t", "target": "dlrm", "plot": {"colour": "red"}}, "unknown key(s) ['colour'] in [plot]"),
        ({"target": "dlrm"}, "missing required key 'name'"),
        ({"name": "t", "target": "dlrm", "axes": {"batch_size": [64, 128, 64.0]}}, "axes.batch_size lists 64 more"),
        ({"name": "t", "target": "dlrm", "axes": 5}, "[axes] must be a table (key = value lines), got 5"),
        ({"name": "t", "target": "dlrm", "fixed": [1, 2]}, "[fixed] must be a table"),
        ({"name": "t", "target": "dlrm", "plot": 3}, "[plot] must be a table"),
        ({"name": "t", "target": "dlrm", "timing": {"rep_ms": "x"}}, "timing.rep_ms = 'x' must be a non-negative"),
        ({"name": "t", "target": "dlrm", "timing": {"flush_bytes": 1.5}}, "timing.flush_bytes = 1.5 must be a non-n"),
        ({"name": "t", "target": "dlrm", "timing": {"warmup_ms": float("nan")}}, "timing.warmup_ms = nan must be"),
        ({"name": "t", "target": "dlrm", "timing": {"flush_bytes": float("inf")}}, "timing.flush_bytes = inf must be"),
        ({"name": "t", "target": "dlrm", "timing": {"rep_ms": float("inf")}}, "timing.rep_ms = inf must be"),
    ],
)
def test_bad_specs_name_the_key(data, message):
    with pytest.raises(ValueError) as exc:
        parse_spec(data, "sweeps/x.toml")
    assert message in str(exc.value) and "sweeps/x.toml" in str(exc.value)


def test_resolve_bytes():
    assert resolve_bytes("0.5*L2", CACHES) == 512 << 10
    assert resolve_bytes("64*L3", CACHES) == 64 * (32 << 20)
    assert resolve_bytes("0.25*L1", CACHES) == 8 << 10
    assert resolve_bytes("2*LLC", CACHES) == 64 << 20
    assert resolve_bytes("64K", CACHES) == 65536 and resolve_bytes("1048576", CACHES) == 1 << 20
    assert resolve_bytes("all", CACHES) is None
    with pytest.raises(ValueError, match="whose size is unknown"):
        resolve_bytes("2*L3", {"L2": 1})
    assert resolve_bytes("0.0000001*L1", CACHES) == 1  # a fraction of a cache: at least one byte
    for empty in ("0*L2", "0.0*LLC", "0", "0.4"):  # no bytes at all: refused, not rounded up to 1
        with pytest.raises(ValueError, match=rf"'{re.escape(empty)}' is 0 bytes; a working set holds at least one"):
            resolve_bytes(empty, CACHES)


def test_point_key_is_stable_and_ignores_the_sweep_name():
    a, b = Point(kernel="torch", sweep="x"), Point(kernel="torch", sweep="y")
    assert a.key() == b.key() and a.key() != Point(kernel="torch_naive").key()
    assert Point.from_dict(json.loads(json.dumps(a.to_dict()))) == a


def test_store_appends_and_skips_torn_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    store = ResultFile(path, {"sweep": "t"})
    store.append({"key": "a", "point": _P, "status": "ok"})
    with open(path, "a") as f:  # a crash in mid-write
        f.write('{"kind": "point", "key": "b", "sta')
    assert read_records(path).torn_lines == [3]
    assert store.latest_status() == {"a": "ok"}
    store.append({"key": "c", "point": _P, "status": "failed", "reason": "x"})
    got = read_records(path)
    assert [r["key"] for r in got.records] == ["a", "c"] and got.torn_lines == [3]
    assert got.header["sweep"] == "t" and got.header["schema_version"] == 1
    assert path.read_text().count("\n") == 4  # header, a, torn b (now closed off), c


def test_records_of_the_wrong_shape_are_skipped_like_torn_lines(tmp_path):
    path = tmp_path / "r.jsonl"
    lines = ['{"kind": "header"}', '{"kind": "point", "point": null, "key": "a"}', '{"key": ["a"], "point": {}}',
             "[1, 2]", f'{{"key": "b", "point": {_PJ}, "status": "ok"}}']  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    got = read_records(path)
    assert [r["key"] for r in got.records] == ["b"] and got.torn_lines == [2, 3, 4]
    assert ResultFile(path, {}).latest_status() == {"b": "ok"}


def test_latest_record_of_each_key_in_first_seen_order():
    recs = [{"key": "a", "v": 1}, {"key": "b", "v": 2}, {"key": "a", "v": 3}]
    assert latest_per_key(recs) == [{"key": "a", "v": 3}, {"key": "b", "v": 2}]


def test_a_second_holder_of_a_results_file_is_refused(tmp_path):
    store = ResultFile(tmp_path / "r.jsonl", {})
    with store.exclusive("sweep one"):
        with pytest.raises(Busy, match=r"r.jsonl: pid \d+ \(sweep one\) is writing this file now"):
            with ResultFile(tmp_path / "r.jsonl", {}).exclusive("sweep two"):
                pass
    with store.exclusive("sweep three"):  # released
        pass


def _writer(path: str, tag: str, n: int) -> None:
    store = ResultFile(path, {"sweep": "t"})
    for i in range(n):
        store.append({"key": f"{tag}{i}", "point": _P, "status": "ok", "payload": tag * 2000})


def test_concurrent_writers_do_not_interleave(tmp_path):
    path = str(tmp_path / "r.jsonl")
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_writer, args=(path, tag, 40)) for tag in "xy"]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    got = read_records(path)
    assert not got.torn_lines
    assert sorted(r["key"] for r in got.records) == sorted(f"{t}{i}" for t in "xy" for i in range(40))
    assert sum(1 for line in open(path) if '"header"' in line) == 1


def test_index_batches_sweep_the_hot_set():
    import torch

    from profiler.workload import make_bag_inputs, num_batches

    # hot set of 500 rows, 8 lookups per call: ceil(2 * 500 / 8) = 125 batches, enough to sweep it twice
    p = Point(batch_size=2, pooling_factor=4, num_rows=10_000, embedding_dim=4, num_tables=2)
    assert num_batches(p, 500) == 125
    assert num_batches(Point(batch_size=100, pooling_factor=10, num_rows=50), 50) == 1
    bags = make_bag_inputs(p, working_set_bytes=500 * 4 * 4 * 2)
    assert bags.hot_rows == 500 and len(bags.batches) == 125
    assert bags.touched_rows == torch.cat(bags.batches).unique().numel() > 0.8 * 1000  # 1 - e^-2 of 2 x 500
    rows = torch.cat(bags.batches)
    per_table = [rows[(rows >= t * 10_000) & (rows < (t + 1) * 10_000)] for t in range(2)]
    for t, r in enumerate(per_table):
        assert r.unique().numel() <= 500  # drawn from the hot set only...
        assert r.unique().numel() > 250  # ...and the batches together cover most of it
        assert r.min() >= t * 10_000 and r.max() < (t + 1) * 10_000
    assert all(b.numel() == 2 * 2 * 4 for b in bags.batches)


def test_small_calls_on_a_large_table_are_placed_by_the_rows_they_touch():
    """B=128, L=1 on a 64 MB table: the rotation must sweep the table, or the point is L3-resident, not DRAM."""
    from profiler.ceilings import Ceiling
    from profiler.runner import run_point

    fp = {"caches": {"L1d": {"size_bytes": 32 << 10}, "L2": {"size_bytes": 1 << 20},
                     "L3": {"size_bytes": 32 << 20, "instances": 4}}}  # fmt: skip
    ceilings = [Ceiling("gather", "bandwidth", "measured", level="DRAM", gbps=10.0, shape=(1, 16, 32)),
                Ceiling("triad", "bandwidth", "measured", level="L3", gbps=100.0)]  # fmt: skip
    p = Point(batch_size=128, pooling_factor=1, num_rows=1_000_000, embedding_dim=16, threads=1)
    rec = run_point(p, fingerprint=fp, ceilings=ceilings, timing={"warmup_ms": 1, "rep_ms": 5})
    d = rec["derived"]
    assert d["touched_bytes"] > 0.8 * 64e6 and d["memory_level"] == "DRAM"
    # one L3 instance is what a thread fills: 0.5*L3 is 16 MiB here, not half of the 4 instances
    p = Point(batch_size=2048, pooling_factor=20, num_rows=1_000_000, embedding_dim=16, working_set="0.5*L3", threads=1)
    assert run_point(p, fingerprint=fp, ceilings=ceilings, timing={"warmup_ms": 1, "rep_ms": 5})[
        "derived"]["working_set_bytes"] == 16 << 20  # fmt: skip


def test_read_records_keeps_the_first_header_of_concatenated_files(tmp_path):
    path = tmp_path / "r.jsonl"
    lines = ['{"kind": "header", "sweep": "first"}', f'{{"key": "a", "point": {_PJ}}}',
             '{"kind": "header", "sweep": "second"}', f'{{"key": "b", "point": {_PJ}}}']  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    got = read_records(path)
    assert got.header == {"kind": "header", "sweep": "first"} and [r["key"] for r in got.records] == ["a", "b"]


def _profile(tmp_path, distances, cdf, name="p.prof"):
    path = tmp_path / name
    path.write_text(f"1\n{', '.join(map(str, distances))}\n{', '.join(map(str, cdf))}\n")
    return path


def test_stack_distance_draws_follow_the_profile_by_hand(tmp_path):
    import torch

    from profiler.workload import sample_rows

    def draw(distances, cdf, hot, n):
        path = _profile(tmp_path, distances, cdf)
        return sample_rows(f"sd:{path}", hot, n, torch.Generator().manual_seed(3)).tolist()

    # distance 0 only: every access a first one, each row once; then, every row handed out, the LRU row
    every_new = draw([0], [1.0], 50, 100)
    assert sorted(every_new[:50]) == list(range(50)) and every_new[50:] == every_new[:50]
    # P(distance 0) must be > 0; at 1e-9 no draw of these takes it. A draw deeper than the stack is a new row.
    same = draw([0, 1], [1e-9, 1.0], 50, 20)  # distance 1: the row just used, again and again
    assert same == [same[0]] * 20
    a, b, *rest = draw([0, 2], [1e-9, 1.0], 50, 12)  # distance 2: two rows in turn
    assert a != b and [a, b, *rest] == [a, b] * 6


def test_a_sweep_point_draws_from_a_stack_distance_profile(tmp_path):
    import torch

    from profiler.workload import make_bag_inputs

    path = _profile(tmp_path, [0, 1, 2], [1e-9, 0.5, 1.0])
    fixed = {"batch_size": 4, "pooling_factor": 3, "num_rows": 1000, "embedding_dim": 4}
    axes = {"distribution": [f"sd:{path}"]}
    spec = parse_spec({"name": "sd", "target": "embedding_bag", "axes": axes, "fixed": fixed})
    (p,) = expand(spec, ["torch"])
    rows = torch.cat(make_bag_inputs(p, None).batches)
    assert rows.unique().numel() == 2  # distances 1 and 2 only: after the first two, no new row is ever taken
    bad = _profile(tmp_path, [1, 2], [0.5, 1.0], "bad.prof")
    for missing, match in ((tmp_path / "nope.prof", "no such file"), (bad, "stack distances must start at 0")):
        with pytest.raises(ValueError, match=rf"^s.toml: distribution = 'sd:{re.escape(str(missing))}': .*{match}"):
            parse_spec({"name": "s", "target": "embedding_bag", "fixed": {"distribution": f"sd:{missing}"}}, "s.toml")
