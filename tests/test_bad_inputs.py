"""Adversarial inputs to the sweep spec, the results store and trace generate: a clear error or a skipped line
naming file, line and field, never a traceback, and nothing already stored lost."""

from __future__ import annotations

import errno
import json
import os

import pytest

from profiler import workload
from profiler.cli import main
from profiler.results import load_results
from profiler.store import ResultFile, read_records
from profiler.sweep_spec import Point, load_spec

_POINT = {"target": "embedding_bag", "kernel": "torch", "batch_size": 16, "num_rows": 1000, "embedding_dim": 8,
          "pooling_factor": 2, "num_tables": 1, "distribution": "uniform", "working_set": "all", "threads": 0,
          "world_size": 1, "device": "cpu", "mode": "forward", "embedding_grad": "sparse",
          "bottom_mlp": "13-512-256-64", "top_mlp": "512-256-1", "sweep": "t"}  # fmt: skip


def _record(**change):
    """A point record as a sweep writes it, by hand; `change` replaces fields ('point.num_rows' reaches inside)."""
    rec = {"kind": "point", "schema_version": 1, "key": "k0", "point": dict(_POINT), "status": "ok", "reason": "",
           "measurement": {"median_s": 1e-5, "iqr_s": 1e-7, "p25_s": 0.99e-5, "p75_s": 1.01e-5, "threads": 1,
                           "flush_bytes": 0, "contended": False},
           "median_s": 1e-5, "iqr_s": 1e-7, "derived": {"gbps": 1.5, "lookups_per_s": 3.2e6},
           "warnings": []}  # fmt: skip
    for name, value in change.items():
        part, _, field = name.partition(".")
        if field:
            rec[part][field] = value
        else:
            rec[part] = value
    return rec


def _write(path, header, *records):
    path.write_text("".join(json.dumps(r) + "\n" for r in (header, *records)))


_HEADER = {"kind": "header", "schema_version": 1, "sweep": "t", "sku_id": "sku-a", "fingerprint": {}}


@pytest.mark.parametrize(
    ("change", "why"),
    [
        ({"point.num_rows": "1000"}, "point.num_rows = '1000' is not an integer"),
        ({"point.num_rows": None}, "point.num_rows = None is not an integer"),
        ({"point.embedding_dim": 8.5}, "point.embedding_dim = 8.5 is not an integer"),
        ({"point.kernel": 7}, "point.kernel = 7 is not a string"),
        ({"measurement": [1, 2]}, "measurement is list, not an object"),
        ({"derived": [1]}, "derived is list, not an object"),
        ({"median_s": "fast"}, "median_s = 'fast' is not a number"),
        ({"derived.gbps": "x"}, "derived.gbps = 'x' is not a number"),
        ({"measurement.flush_bytes": "abc"}, "measurement.flush_bytes = 'abc' is not a number"),
        ({"measurement.contended": "false"}, "measurement.contended = 'false' is not true or false"),
        ({"status": 5}, "status = 5; expected 'ok' or 'failed'"),
        ({"warnings": "abc"}, "warnings is not a list of strings"),
        ({"schema_version": 99}, "schema_version 99; this dlrmbench reads 1"),
    ],
)
def test_a_record_of_wrong_types_is_skipped_with_its_line_and_field(tmp_path, change, why):
    path = tmp_path / "t.jsonl"
    good = _record(key="k1")
    _write(path, _HEADER, _record(**change), good)
    got = read_records(path)
    assert [r["key"] for r in got.records] == ["k1"]
    assert got.problems == {2: why}
    results = load_results(path)  # report, plot and compare read through this: it raised TypeError and others
    assert [r["key"] for r in results.rows] == ["k1"] and results.torn_lines == 1
    assert results.torn_summary() == f"1 torn or malformed line(s), first {path}:2: {why}"


def test_a_point_record_without_its_shape_is_skipped_not_read_as_the_default_point(tmp_path):
    path = tmp_path / "t.jsonl"
    partial = {k: v for k, v in _POINT.items() if k != "num_rows"}
    _write(path, _HEADER, _record(key="empty", point={}), _record(key="partial", point=partial), _record(key="k1"))
    results = load_results(path)  # {} was read as Point(): B=2048 E=1000000 D=64 and a made-up table size
    assert [r["key"] for r in results.rows] == ["k1"] and results.torn_lines == 2
    assert results.torn_notes == (
        f"{path}:2: point lacks target, kernel, batch_size, num_rows, embedding_dim, pooling_factor, num_tables",
        f"{path}:3: point lacks num_rows",
    )


def test_a_shapeless_record_measured_again_neither_hides_the_stored_point_nor_counts_as_stored(tmp_path):
    """A key's good record, then a record of the same key without its shape: the good one is what the readers
    see (load_results, and the sweep's record of what is stored), the broken line is reported by number."""
    path = tmp_path / "t.jsonl"
    _write(path, _HEADER, _record(key="k1"), _record(key="k1", point={}), _record(key="k2", point={}))
    results = load_results(path)
    assert [(r["key"], r["num_rows"], r["median_s"]) for r in results.rows] == [("k1", 1000, 1e-5)]
    assert results.torn_lines == 2
    assert sorted(read_records(path).problems) == [3, 4]
    assert ResultFile(path, {}).latest_status() == {"k1": "ok"}  # k2 was never stored: the sweep measures it


def test_a_header_whose_fingerprint_is_not_an_object_is_skipped(tmp_path):
    path = tmp_path / "t.jsonl"
    _write(path, {**_HEADER, "fingerprint": [1]}, _record())
    results = load_results(path)  # dict([1]) raised TypeError
    assert len(results.rows) == 1 and results.torn_notes == (f"{path}:1: header: fingerprint is not an object",)


def test_report_and_plot_of_a_record_of_wrong_types_exit_cleanly(tmp_path, capsys):
    folder = tmp_path / "sku-a"
    folder.mkdir()
    _write(folder / "t.jsonl", _HEADER, _record(**{"point.num_rows": "1000"}), _record(key="k1"))
    assert main(["report", str(folder), "--out", str(tmp_path / "rep")]) == 0
    assert "t.jsonl:2: point.num_rows = '1000' is not an integer" in (tmp_path / "rep" / "index.md").read_text()
    assert main(["plot", str(folder), "--kind", "throughput", "--out", str(tmp_path / "p.png")]) == 0
    assert "t.jsonl:2: point.num_rows = '1000' is not an integer" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("header", "match"),
    [
        ({**_HEADER, "sku_id": "another-machine"}, "measured on 'another-machine', and this machine is 'sku-a'"),
        ({**_HEADER, "schema_version": 2}, "results of schema_version 2, this dlrmbench writes 1"),
    ],
)
def test_a_sweep_does_not_add_to_a_file_of_another_machine_or_schema(tmp_path, header, match):
    path = tmp_path / "t.jsonl"
    _write(path, header, _record())
    before = path.read_bytes()
    with pytest.raises(ValueError, match=match), ResultFile(path, {"sku_id": "sku-a"}).exclusive("test"):
        pass
    assert path.read_bytes() == before


def test_a_sweep_adds_to_a_file_of_its_own_machine(tmp_path):
    path = tmp_path / "t.jsonl"
    _write(path, _HEADER, _record())
    with ResultFile(path, {"sku_id": "sku-a"}).exclusive("test"):
        ResultFile(path, {"sku_id": "sku-a"}).append(_record(key="k1"))
    assert [r["key"] for r in read_records(path).records] == ["k0", "k1"]


def test_a_full_disk_leaves_no_torn_line_and_names_the_file(tmp_path, monkeypatch):
    path = tmp_path / "t.jsonl"
    store = ResultFile(path, {"sweep": "t"})
    store.append(_record(key="k0"))
    before = path.read_bytes()
    real_write = os.write
    calls = {"n": 0}

    def half_then_enospc(fd, data):
        calls["n"] += 1
        if calls["n"] == 1:
            return real_write(fd, bytes(data[: len(data) // 2]))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", half_then_enospc)
    with pytest.raises(OSError, match="No space left") as info:
        store.append(_record(key="k1"))
    assert info.value.filename == str(path)
    monkeypatch.undo()
    assert path.read_bytes() == before  # the half line was taken back
    assert not read_records(path).torn_lines


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("[fixed]\nbatch_size = inf", "batch_size = inf must be an integer"),
        ("[fixed]\nbatch_size = nan", "batch_size = nan must be an integer"),
        ("[axes]\nnum_rows = [1, -inf]", "num_rows = -inf must be an integer"),
        ('[fixed]\ndistribution = "profile:x.prof"', "distribution = 'profile:x.prof'; allowed: uniform, zipf:S"),
        ('[fixed]\nbottom_mlp = "abc"', "bottom_mlp: 'abc' in 'abc' is not an integer"),  # each point failed when run
        ('[axes]\ntop_mlp = ["64-1", "64-0-1"]', "top_mlp: sizes must be positive, got 0 in '64-0-1'"),
    ],
)
def test_spec_values_that_cannot_run_are_refused_naming_file_and_key(tmp_path, text, match):
    path = tmp_path / "s.toml"
    path.write_text(f'name = "s"\ntarget = "embedding_bag"\n{text}\n')
    with pytest.raises(ValueError, match=f"^{path}: {match}"):
        load_spec(path)


def test_a_spec_that_is_not_utf8_is_refused_naming_the_file(tmp_path):
    path = tmp_path / "s.toml"
    path.write_bytes(b'name = "s\xff"\ntarget = "embedding_bag"\n')
    with pytest.raises(ValueError, match=rf"^{path}: not UTF-8 text \(TOML is UTF-8\): byte 9 is 0xff"):
        load_spec(path)


def test_the_flush_buffer_counts_in_a_points_memory_check(monkeypatch):
    point = Point(num_rows=1000, embedding_dim=8, batch_size=16, pooling_factor=2)
    need = workload.estimate_bytes(point, 1000)

    class Mem:
        available = 10 * need

    monkeypatch.setattr(workload.psutil, "virtual_memory", lambda: Mem)
    workload.check_memory(point, 1000, flush_bytes=need)  # 2 x need of 10 x need: fits
    with pytest.raises(MemoryError, match="with flush_bytes"):
        workload.check_memory(point, 1000, flush_bytes=8 * need)  # 9 x need > 0.8 x 10 x need


def test_trace_generate_refuses_a_count_that_cannot_fit(tmp_path, capsys):
    prof = tmp_path / "p.prof"
    prof.write_text("1\n0, 5\n0.5, 1.0\n")
    code = main(["trace", "generate", str(prof), "--rows", "100", "--count", str(10**14), "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert code == 2 and "--count 100,000,000,000,000:" in err and "accesses fit" in err
    assert not (tmp_path / "x").exists()
