"""`dlrmbench machine`: JSON output, atomic writes, and errors mapped to exit code 2."""

from __future__ import annotations

import json

from profiler.cli import main
from profiler.machine_cli import write_json_atomic


def test_machine_writes_json(tmp_path, capsys) -> None:
    out = tmp_path / "m.json"
    assert main(["machine", "--no-py-cpuinfo", "--json-out", str(out), "--cache-sizes", "L1=48K"]) == 0
    record = json.loads(out.read_text())
    assert set(record) >= {"sku_id", "fingerprint", "schema_version"}
    assert record["fingerprint"]["caches"]["L1d"]["source"] == "override"
    assert record["sku_id"] in capsys.readouterr().out


def test_bad_cache_sizes_exit_2(capsys) -> None:
    assert main(["machine", "--no-py-cpuinfo", "--cache-sizes", "L9=1K"]) == 2
    assert "L9" in capsys.readouterr().err


def test_write_json_atomic_leaves_no_temp(tmp_path) -> None:
    path = tmp_path / "sku" / "machine.json"
    write_json_atomic(path, {"a": 1})
    write_json_atomic(path, {"a": 2})
    assert json.loads(path.read_text()) == {"a": 2}
    assert [p.name for p in path.parent.iterdir()] == ["machine.json"]
