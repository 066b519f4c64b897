"""profiler.fingerprint: sizes, cache sources and overrides, a fake sysfs tree, and the SKU id."""

from __future__ import annotations

import pytest

from profiler import fingerprint
from profiler.fingerprint import collect, collect_caches, parse_cache_sizes, parse_size, sku_id, sysfs_caches


def test_parse_size() -> None:
    assert parse_size("32K") == 32 << 10
    assert parse_size("1M") == 1 << 20
    assert parse_size("32 MiB") == 32 << 20
    assert parse_size("4096") == 4096
    with pytest.raises(ValueError):
        parse_size("lots")


def test_parse_cache_sizes() -> None:
    assert parse_cache_sizes("L1=48K,L2=2M,L3=32M") == {"L1d": 48 << 10, "L2": 2 << 20, "L3": 32 << 20}
    with pytest.raises(ValueError, match="L4"):
        parse_cache_sizes("L4=1G")


def _fake_sysfs(root, cpus: int = 2) -> None:
    # Two cores: private 32K L1d and 1M L2, one 32M L3 shared by both.
    for cpu in range(cpus):
        for i, (level, kind, size, shared) in enumerate(
            [(1, "Data", "32K", str(cpu)), (1, "Instruction", "32K", str(cpu)), (2, "Unified", "1024K", str(cpu)),
             (3, "Unified", "32768K", f"0-{cpus - 1}")]
        ):  # fmt: skip
            d = root / f"cpu{cpu}" / "cache" / f"index{i}"
            d.mkdir(parents=True)
            for name, value in (("level", level), ("type", kind), ("size", size), ("shared_cpu_list", shared)):
                (d / name).write_text(f"{value}\n")


def test_sysfs_caches_from_a_fake_tree(tmp_path) -> None:
    _fake_sysfs(tmp_path)
    by_level = {c["level"]: c for c in sysfs_caches(str(tmp_path))}
    assert by_level["L1d"] == {"level": "L1d", "size_bytes": 32 << 10, "shared_cpus": 1, "instances": 2}
    assert by_level["L3"] == {"level": "L3", "size_bytes": 32 << 20, "shared_cpus": 2, "instances": 1}


def test_sources_disagree_and_overrides_win(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    _fake_sysfs(tmp_path)
    monkeypatch.setattr(fingerprint, "sysfs_caches", lambda: sysfs_caches(str(tmp_path)))
    monkeypatch.setattr(fingerprint, "_lscpu_caches", lambda: {"L3": 32 << 20})
    info: dict = {}
    collect_caches(info, overrides={"L1d": 48 << 10}, cpuinfo={"l3_cache_size": 1 << 20})  # py-cpuinfo's wrong L3
    assert info["caches"]["L3"] == {"size_bytes": 32 << 20, "source": "sysfs", "shared_cpus": 2, "instances": 1}
    assert info["cache_sources"]["L3"] == {"sysfs": 32 << 20, "lscpu": 32 << 20, "py-cpuinfo": 1 << 20}
    assert info["cache_disagreements"] == ["L3"]
    assert info["caches"]["L1d"]["source"] == "override"
    assert info["caches"]["L1d"]["size_bytes"] == 48 << 10 and info["caches"]["L1d"]["detected_bytes"] == 32 << 10


def test_missing_sources_leave_keys_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(fingerprint, "sysfs_caches", lambda: [])
    monkeypatch.setattr(fingerprint, "_lscpu_caches", lambda: {})
    info: dict = {}
    collect_caches(info)
    assert "caches" not in info and info["cache_sources"] == {}


def test_collect_runs_and_ids_are_stable() -> None:
    fp = collect(use_py_cpuinfo=False)
    assert fp["sku_id"] == sku_id(fp) == collect(use_py_cpuinfo=False)["sku_id"]
    assert "versions" in fp and "isa_flags" in fp


def test_sku_id_hashes_hardware_only() -> None:
    fp = {"cpu_brand": "AMD EPYC 9R14", "logical_cpus": 2, "caches": {"L3": {"size_bytes": 32 << 20}}}
    base = sku_id(fp)
    assert base.startswith("amd-epyc-9r14-2c-")
    assert sku_id({**fp, "hostname": "other", "versions": {"torch": "9"}, "cpu_mhz": 1.0}) == base
    overridden = {**fp, "caches": {"L3": {"size_bytes": 1 << 20, "detected_bytes": 32 << 20, "source": "override"}}}
    assert sku_id(overridden) == base
    assert sku_id({**fp, "logical_cpus": 4}) != base
