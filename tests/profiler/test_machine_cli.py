"""`dlrmbench machine`: JSON output, atomic writes, and errors mapped to exit code 2."""

from __future__ import annotations

import json

import pytest

from profiler.cli import main
from profiler.machine_cli import write_json_atomic
from profiler.store import replace_atomic


def test_machine_writes_json(tmp_path, capsys) -> None:
    out = tmp_path / "m.json"
    assert main(["machine", "--no-py-cpuinfo", "--json-out", str(out), "--cache-sizes", "L1=48K"]) == 0
    record = json.loads(out.read_text())
    assert set(record) >= {"sku_id", "fingerprint", "schema_version"}
    assert record["fingerprint"]["caches"]["L1d"]["source"] == "override"
    assert record["sku_id"] in capsys.readouterr().out


def test_the_summary_says_when_no_gpu_is_visible() -> None:
    # the README lists the GPU among what `dlrmbench machine` prints; with none the line was left out
    from profiler.machine_cli import _summary

    fp = {"sku_id": "sku-a", "gpus": []}
    assert "gpu         none visible" in _summary(fp)
    gpu = {"name": "NVIDIA H200", "sm_count": 132, "memory_bytes": 141 << 30}
    assert [line for line in _summary({**fp, "gpus": [gpu]}) if line.startswith("gpu")] == [
        "gpu         NVIDIA H200, 132 SMs, 141 GiB"
    ]


def test_bad_cache_sizes_exit_2(capsys) -> None:
    assert main(["machine", "--no-py-cpuinfo", "--cache-sizes", "L9=1K"]) == 2
    assert "L9" in capsys.readouterr().err


def test_write_json_atomic_leaves_no_temp(tmp_path) -> None:
    path = tmp_path / "sku" / "machine.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["machine.json"]


def test_a_write_that_fails_midway_keeps_the_old_file(tmp_path) -> None:
    path = tmp_path / "m.pt"
    path.write_text("old")

    def half(tmp) -> None:
        tmp.write_text("half of the new")
        raise KeyboardInterrupt  # Ctrl-C mid-write

    with pytest.raises(KeyboardInterrupt):
        replace_atomic(path, half)
    assert path.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["m.pt"]


def _record(created: str, triad: float, gemm: float, mode: str = "full", sku: str = "sku-a") -> dict:
    return {
        "sku_id": sku,
        "mode": mode,
        "created": created,
        "ceilings": [
            {"key": "triad/DRAM/1t/float32", "source": "measured", "kind": "bandwidth", "gbps": triad},
            {"key": "gemm/2048/1t/float32", "source": "measured", "kind": "compute", "gflops": gemm},
            {"key": "fma_peak/peak/2t/float32", "source": "derived", "kind": "compute", "gflops": 1.0},
        ],
    }


def test_repeatability_against_the_previous_run(tmp_path) -> None:
    from profiler.machine_cli import repeatability

    path = tmp_path / "machine.json"
    assert repeatability(path, _record("t1", 30.0, 100.0)) is None  # no previous run
    write_json_atomic(path, _record("t0", 30.0, 100.0))
    r = repeatability(path, _record("t1", 33.0, 80.0))
    assert r is not None
    assert (r["compared"], r["within"]) == (2, 1)  # 33/30 = 1.10 within 15%; 80/100 = 0.80 not
    assert r["outside"] == {"gemm/2048/1t/float32": pytest.approx(0.8)}
    assert r["max_deviation"] == pytest.approx(0.2)
    assert repeatability(path, _record("t1", 30.0, 100.0, mode="quick")) is None  # other mode
    assert repeatability(path, _record("t1", 30.0, 100.0, sku="sku-b")) is None  # other SKU
