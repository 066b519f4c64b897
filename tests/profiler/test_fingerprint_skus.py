"""Fingerprints and ceilings' sizing on the machines users profile, from hand-written fake /proc, sysfs,
cgroup, psutil and affinity answers: SMT Xeons, many-CCD EPYCs, ARM servers, hybrid clients, containers."""

from __future__ import annotations

import os
import platform
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from profiler import fingerprint
from profiler.ceilings import derived_ceilings, level_working_sets, usable_threads
from profiler.contention import usable_cpus
from profiler.sweep_spec import cache_sizes

_REAL_PY_CPUINFO = fingerprint._py_cpuinfo
# level, type, size (or cpu -> size), cpu -> CPUs sharing it
Cache = tuple[int, str, str | Callable[[int], str], Callable[[int], list[int]]]


def _cpulist(ids: list[int]) -> str:
    return ",".join(map(str, sorted(ids)))


class FakeMachine:
    """A /sys/devices/system/{cpu,node} tree, /proc/cpuinfo, cgroup files, psutil and affinity answers."""

    def __init__(self, mp: pytest.MonkeyPatch, root: Path) -> None:
        self.mp, self.root = mp, root
        root.mkdir(parents=True, exist_ok=True)
        for name, path in (("_SYS_CPU", "cpu"), ("_SYS_NODE", "node"), ("_PROC_CPUINFO", "cpuinfo"),
                           ("_PROC_SELF_CGROUP", "self_cgroup"), ("_CGROUP_ROOT", "cgroup")):  # fmt: skip
            mp.setattr(fingerprint, name, str(root / path))
        (root / "self_cgroup").write_text("0::/\n")
        mp.setattr(fingerprint, "_lscpu_caches", dict)  # lscpu reads the same sysfs
        mp.setattr(fingerprint, "collect_gpu", lambda info: None)
        mp.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(total=256 << 30))

    def build(
        self,
        cores: dict[int, tuple[int, int]],  # cpu -> (package, core id)
        caches: list[Cache],
        proc: str,
        *,
        arch: str = "x86_64",
        affinity: list[int] | None = None,
        max_khz: int | None = None,
        nodes: int = 1,
    ) -> None:
        for cpu, (pkg, core) in cores.items():
            d = self.root / "cpu" / f"cpu{cpu}"
            (d / "topology").mkdir(parents=True)
            siblings = _cpulist([c for c, pc in cores.items() if pc == (pkg, core)])
            for name, value in (("physical_package_id", pkg), ("core_id", core), ("core_cpus_list", siblings)):
                (d / "topology" / name).write_text(f"{value}\n")
            for i, (level, kind, size, shared) in enumerate(caches):
                idx = d / "cache" / f"index{i}"
                idx.mkdir(parents=True)
                for name, value in (("level", level), ("type", kind), ("size", size), ("shared_cpu_list", shared)):
                    text = value(cpu) if callable(value) else value
                    text = _cpulist(text) if isinstance(text, list) else text
                    (idx / name).write_text(f"{text}\n")
            if max_khz:
                (d / "cpufreq").mkdir()
                (d / "cpufreq" / "cpuinfo_max_freq").write_text(f"{max_khz}\n")
        for n in range(nodes):
            (self.root / "node" / f"node{n}").mkdir(parents=True)
        (self.root / "cpuinfo").write_text(proc)
        logical, physical = len(cores), len(set(cores.values()))
        self.mp.setattr(psutil, "cpu_count", lambda logical=True: len(cores) if logical else physical)
        self.mp.setattr(os, "sched_getaffinity", lambda pid: set(affinity if affinity is not None else cores))
        self.mp.setattr(platform, "machine", lambda: arch)
        assert logical >= physical

    def cgroup(self, self_cgroup: str, files: dict[str, str]) -> None:
        (self.root / "self_cgroup").write_text(self_cgroup)
        for rel, text in files.items():
            path = self.root / "cgroup" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)


@pytest.fixture
def machine(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> FakeMachine:
    return FakeMachine(monkeypatch, tmp_path)


def _x86_proc(brand: str, vendor: str, family: int, model: int, flags: str, cache_kb: int) -> str:
    block = (
        f"processor\t: {{n}}\nvendor_id\t: {vendor}\ncpu family\t: {family}\nmodel\t\t: {model}\n"
        f"model name\t: {brand}\nstepping\t: 8\ncpu MHz\t\t: 2000.000\ncache size\t: {cache_kb} KB\n"
        f"flags\t\t: {flags}\n"
    )
    return "\n".join(block.format(n=n) for n in range(2))


def _no_py_cpuinfo(mp: pytest.MonkeyPatch, answer: dict[str, Any] | None = None) -> None:
    mp.setattr(fingerprint, "_py_cpuinfo", lambda: dict(answer or {}))


# 2 sockets x 4 cores, SMT: cpu c and c + 8 are siblings (Linux numbers every core's first thread first).
XEON_FLAGS = "fpu sse4_2 avx avx2 fma avx512f avx512bw avx512vl avx512_vnni avx512_bf16 amx_tile amx_bf16 ht"


def _xeon(machine: FakeMachine, nodes: int = 2) -> None:
    def core(c: int) -> list[int]:
        return [c % 8, c % 8 + 8]

    def socket(c: int) -> list[int]:
        s = c % 8 // 4
        return [*range(4 * s, 4 * s + 4), *range(8 + 4 * s, 12 + 4 * s)]

    caches = [(1, "Data", "48K", core), (1, "Instruction", "32K", core), (2, "Unified", "2048K", core),
              (3, "Unified", "107520K", socket)]  # fmt: skip
    cores = {c: (c % 8 // 4, c % 4) for c in range(16)}
    proc = _x86_proc("Intel(R) Xeon(R) Platinum 8480+", "GenuineIntel", 6, 143, XEON_FLAGS, 107520)
    machine.build(cores, caches, proc, max_khz=3800000, nodes=nodes)


def test_smt_xeon_peak_and_sets_count_physical_cores(machine: FakeMachine, monkeypatch: pytest.MonkeyPatch) -> None:
    _xeon(machine)
    _no_py_cpuinfo(monkeypatch)
    fp = fingerprint.collect()
    peaks = {c.dtype: c for c in derived_ceilings(fp)}
    # 8 cores (not 16 hardware threads) x 3800 MHz x 2 units x 16 lanes x 2 FLOP
    assert peaks["float32"].gflops == pytest.approx(8 * 3800 * 64 / 1e3) and peaks["float32"].threads == 8
    assert "two 512-bit FMA units assumed" in peaks["float32"].method  # Gold / Platinum: 2; some Silver: 1
    assert (fp["logical_cpus"], fp["physical_cores"], fp["affinity_cpus"], fp["affinity_cores"]) == (16, 8, 16, 8)
    assert fp["sockets"] == 2 and fp["numa_nodes"] == 2
    assert fp["caches"]["L3"] == {"size_bytes": 105 << 20, "source": "sysfs", "shared_cpus": 8, "instances": 2}
    assert cache_sizes(fp) == {"L1d": 48 << 10, "L2": 2 << 20, "L3": 105 << 20}  # one instance each
    assert usable_threads(fp) == (8, 16)  # ceilings run 1, 8 and 16 threads
    # 16 threads on 8 cores: two siblings share each core's L1d and L2, so each core holds half of its caches
    sets = level_working_sets(fp, 16)
    assert sets["L1d"] == 8 * (48 << 10) // 2 and sets["L2"] == 8 * (2 << 20) // 2
    assert level_working_sets(fp, 1)["L3"] == (105 << 20) // 2
    assert sets["DRAM"] == 4 * 2 * (105 << 20)  # both sockets' L3s


def test_sub_numa_clustering_is_another_sku_but_a_refingerprint_is_not(
    machine: FakeMachine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    _xeon(machine)
    _no_py_cpuinfo(monkeypatch)
    first = fingerprint.collect()
    monkeypatch.setattr(psutil, "virtual_memory", lambda: types.SimpleNamespace(total=(256 << 30) - (40 << 20)))
    assert fingerprint.collect()["sku_id"] == first["sku_id"]  # MemTotal drift between boots
    snc = FakeMachine(monkeypatch, tmp_path / "snc")
    _xeon(snc, nodes=4)
    assert fingerprint.collect()["sku_id"] != first["sku_id"]


def test_many_ccd_epyc_keeps_an_l3_ceiling_at_every_thread_count(
    machine: FakeMachine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # 16 cores with SMT (cpu c and c + 16), 2 CCDs of 8 cores, 32 MiB L3 per CCD.
    def core(c: int) -> list[int]:
        return [c % 16, c % 16 + 16]

    def ccd(c: int) -> list[int]:
        b = c % 16 // 8 * 8
        return [*range(b, b + 8), *range(b + 16, b + 24)]

    caches = [(1, "Data", "32K", core), (2, "Unified", "1024K", core), (3, "Unified", "32768K", ccd)]
    flags = "fpu sse4_2 avx avx2 fma avx512f avx512_bf16 ht"
    proc = _x86_proc("AMD EPYC 9654 96-Core Processor", "AuthenticAMD", 25, 17, flags, 1024)
    machine.build({c: (0, c % 16) for c in range(32)}, caches, proc, max_khz=3700000)
    _no_py_cpuinfo(monkeypatch)
    fp = fingerprint.collect()
    assert fp["caches"]["L3"]["instances"] == 2 and cache_sizes(fp)["L3"] == 32 << 20
    sets = level_working_sets(fp, 32)
    # 32 threads use both CCDs' L3s: half of each, well above the L2s' 16 x 1 MiB / 2
    assert sets["L3"] == 2 * (32 << 20) // 2 and sets["L2"] == 16 * (1 << 20) // 2
    assert usable_threads(fp) == (16, 32)
    assert level_working_sets(fp, 2)["L3"] == (32 << 20) // 2  # two threads may share one CCD
    peaks = {c.dtype: c for c in derived_ceilings(fp)}
    # Zen 4 (family 25, model 17): AVX-512 on two 256-bit FMA pipes, 16 cores x 3700 MHz x 2 x 8 lanes x 2 FLOP
    # = 1894.4 GFLOP/s, bf16 twice that (the flag rule's 16 lanes gave 3788.8 and 7577.6)
    assert peaks["float32"].gflops == pytest.approx(1894.4) and "Zen 4" in peaks["float32"].method
    assert peaks["bfloat16"].gflops == pytest.approx(3788.8)


ARM_PROC = "\n".join(
    f"processor\t: {n}\nBogoMIPS\t: 2100.00\nFeatures\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics "
    "fphp asimdhp cpuid asimdrdm sve svebf16 i8mm bf16\nCPU implementer\t: 0x41\nCPU architecture: 8\n"
    "CPU variant\t: 0x1\nCPU part\t: 0xd40\nCPU revision\t: 1\n"
    for n in range(2)
)


def _graviton(machine: FakeMachine) -> None:
    def own(c: int) -> list[int]:
        return [c]

    caches = [(1, "Data", "64K", own), (1, "Instruction", "64K", own), (2, "Unified", "1024K", own)]  # no L3 here
    machine.build({c: (0, c) for c in range(8)}, caches, ARM_PROC, arch="aarch64")


def test_arm_server_is_named_from_its_midr_fields(machine: FakeMachine, monkeypatch: pytest.MonkeyPatch) -> None:
    _graviton(machine)
    _no_py_cpuinfo(monkeypatch)
    fp = fingerprint.collect()
    assert (fp["cpu_brand"], fp["cpu_vendor"], fp["cpu_model"], fp["cpu_stepping"]) == (
        "ARM Neoverse-V1",
        "ARM",
        0xD40,
        1,
    )
    assert fp["isa_flags"] == ["asimd", "sve"] and fp["arch"] == "aarch64"
    assert fp["sku_id"].startswith("arm-neoverse-v1-8c-")
    assert "cpu_mhz" not in fp and derived_ceilings(fp) == []  # no frequency anywhere: no derived peak, no error
    assert cache_sizes(fp) == {"L1d": 64 << 10, "L2": 1 << 20}


def test_neoverse_v2_peak_counts_its_four_fma_pipes(machine: FakeMachine, monkeypatch: pytest.MonkeyPatch) -> None:
    def own(c: int) -> list[int]:
        return [c]

    proc = ARM_PROC.replace("CPU part\t: 0xd40", "CPU part\t: 0xd4f")  # Graviton 4 / Grace
    machine.build({c: (0, c) for c in range(8)}, [(1, "Data", "64K", own), (2, "Unified", "2048K", own)], proc,
                  arch="aarch64", max_khz=2800000)  # fmt: skip
    _no_py_cpuinfo(monkeypatch)
    fp = fingerprint.collect()
    assert fp["cpu_brand"] == "ARM Neoverse-V2" and fp["cpu_mhz"] == 2800.0
    (peak,) = derived_ceilings(fp)
    # 8 cores x 2800 MHz x 4 pipes x 4 float32 lanes x 2 FLOP = 716.8 GFLOP/s (the flag rule gave half)
    assert peak.gflops == pytest.approx(716.8) and "Neoverse V2" in peak.method


def test_sku_id_does_not_depend_on_py_cpuinfo(machine: FakeMachine, monkeypatch: pytest.MonkeyPatch) -> None:
    """quickstart names the results folder without py-cpuinfo, machine and sweep with it: one id for both."""
    _graviton(machine)
    _no_py_cpuinfo(monkeypatch)
    without = fingerprint.collect()
    # what py-cpuinfo 9 gives there: lscpu's 'Model name' and its cache totals over every instance
    _no_py_cpuinfo(monkeypatch, {"brand_raw": "Neoverse-V1", "l2_cache_size": 8 << 20, "l3_cache_size": 32 << 20})
    with_ci = fingerprint.collect()
    assert with_ci["sku_id"] == without["sku_id"]
    assert with_ci["cpu_brand"] == "ARM Neoverse-V1" and "L3" not in with_ci["caches"]

    def broken() -> dict[str, Any]:
        raise RuntimeError("py-cpuinfo: unsupported platform")

    monkeypatch.setattr("cpuinfo.get_cpu_info", broken)
    monkeypatch.setattr(fingerprint, "_py_cpuinfo", _REAL_PY_CPUINFO)
    assert fingerprint.collect()["sku_id"] == without["sku_id"]


def test_what_only_py_cpuinfo_gives_stays_out_of_the_sku_id(
    machine: FakeMachine, monkeypatch: pytest.MonkeyPatch
) -> None:
    machine.build({0: (0, 0)}, [], "processor\t: 0\n")  # an arch whose /proc/cpuinfo names nothing
    _no_py_cpuinfo(monkeypatch)
    bare = fingerprint.collect()
    _no_py_cpuinfo(monkeypatch, {"brand_raw": "Some CPU", "vendor_id_raw": "V", "model": 7, "flags": ["avx2"]})
    fp = fingerprint.collect()
    assert fp["cpu_brand"] == "Some CPU" and fp["isa_flags"] == ["avx2"]  # still shown
    assert set(fp["from_py_cpuinfo"]) == {"cpu_brand", "cpu_vendor", "cpu_model", "isa_flags"}
    assert fp["sku_id"] == bare["sku_id"]


def test_py_cpuinfo_cache_figures_are_not_taken_as_instance_sizes(
    machine: FakeMachine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container without /sys/.../cache: py-cpuinfo's L3 is /proc's 'cache size' (the per-core L2 on AMD)
    and its L2 lscpu's total; as instance sizes, '16*L3' was 16 MiB on a machine with 32 MiB L3s."""
    flags = "fpu sse4_2 avx avx2 fma avx512f hypervisor"
    proc = _x86_proc("AMD EPYC 9654 96-Core Processor", "AuthenticAMD", 25, 17, flags, 1024)
    machine.build({c: (0, c) for c in range(4)}, [], proc)
    _no_py_cpuinfo(monkeypatch, {"l3_cache_size": 1 << 20, "l2_cache_size": 4 << 20, "l1_data_cache_size": 128 << 10})
    fp = fingerprint.collect()
    assert "caches" not in fp and cache_sizes(fp) == {}  # unknown, so '16*L3' is refused, not misplaced
    assert fp["cache_sources"]["L3"] == {"py-cpuinfo": 1 << 20}  # still recorded


def test_hybrid_client_records_both_l2_sizes_and_sizes_from_the_smallest(
    machine: FakeMachine, monkeypatch: pytest.MonkeyPatch
) -> None:
    # cpu0-3: two P cores with SMT (48K L1d, 2 MiB L2 each); cpu4-7: four E cores, 32K L1d, one 4 MiB L2.
    def l1(c: int) -> list[int]:
        return [c // 2 * 2, c // 2 * 2 + 1] if c < 4 else [c]

    def l2(c: int) -> list[int]:
        return [c // 2 * 2, c // 2 * 2 + 1] if c < 4 else [4, 5, 6, 7]

    machine.build(
        {0: (0, 0), 1: (0, 0), 2: (0, 4), 3: (0, 4), 4: (0, 8), 5: (0, 9), 6: (0, 10), 7: (0, 11)},
        [
            (1, "Data", lambda c: "48K" if c < 4 else "32K", l1),
            (2, "Unified", lambda c: "2048K" if c < 4 else "4096K", l2),
            (3, "Unified", "36864K", lambda c: list(range(8))),
        ],
        _x86_proc("13th Gen Intel(R) Core(TM) i9-13900K", "GenuineIntel", 6, 183, "fpu avx avx2 fma ht", 36864),
        max_khz=5800000,
    )
    _no_py_cpuinfo(monkeypatch)
    fp = fingerprint.collect()
    l1d, l2_ = fp["caches"]["L1d"], fp["caches"]["L2"]
    assert l1d["size_bytes"] == 32 << 10 and l1d["mixed_sizes"] == [32 << 10, 48 << 10]
    assert l2_["size_bytes"] == 2 << 20 and l2_["mixed_sizes"] == [2 << 20, 4 << 20]
    assert l2_["instances"] == 3 and l2_["shared_cpus"] == 4
    assert cache_sizes(fp)["L1d"] == 32 << 10  # '1*L1d' fits whichever core runs it
    assert fp["affinity_cores"] == 6 and usable_threads(fp) == (6, 8)


def _smt_host(machine: FakeMachine, affinity: list[int] | None = None) -> None:
    # a 32-core / 64-thread host: cpu c and c + 32 are siblings
    def core(c: int) -> list[int]:
        return [c % 32, c % 32 + 32]

    caches = [(1, "Data", "32K", core), (2, "Unified", "1024K", core), (3, "Unified", "32768K", lambda c: [*range(64)])]
    proc = _x86_proc("AMD EPYC 7B13", "AuthenticAMD", 25, 1, "fpu avx avx2 fma ht", 512)
    machine.build({c: (0, c % 32) for c in range(64)}, caches, proc, affinity=affinity, max_khz=3000000)


def test_container_cpuset_of_smt_siblings(machine: FakeMachine, monkeypatch: pytest.MonkeyPatch) -> None:
    _smt_host(machine, affinity=[0, 1, 32, 33])  # 4 CPUs: two cores and their siblings
    _no_py_cpuinfo(monkeypatch)
    fp = fingerprint.collect()
    (peak,) = derived_ceilings(fp)
    assert peak.threads == 2 and peak.gflops == pytest.approx(2 * 3000 * 2 * 8 * 2 / 1e3)
    assert (fp["logical_cpus"], fp["affinity_cpus"], fp["affinity_cores"]) == (64, 4, 2)
    assert usable_threads(fp) == (2, 4)


@pytest.mark.parametrize(
    ("self_cgroup", "files", "quota"),
    [
        # cgroup v2, no namespace: the tightest cpu.max from the process's cgroup up to the root
        (
            "0::/kubepods/pod1/c1\n",
            {"kubepods/pod1/cpu.max": "800000 100000\n", "kubepods/pod1/c1/cpu.max": "400000 100000\n"},
            4.0,
        ),
        ("0::/\n", {"cpu.max": "250000 100000\n"}, 2.5),  # v2 inside a cgroup namespace
        ("0::/\n", {"cpu.max": "max 100000\n"}, None),
        # cgroup v1 in a container: the mount is the container's own cgroup
        (
            "4:cpu,cpuacct:/docker/abc\n",
            {"cpu,cpuacct/cpu.cfs_quota_us": "400000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"},
            4.0,
        ),
        ("4:cpu,cpuacct:/\n", {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n"}, None),
    ],
)
def test_cgroup_cpu_quota_caps_threads_and_peak(
    machine: FakeMachine, monkeypatch: pytest.MonkeyPatch, self_cgroup: str, files: dict[str, str], quota: float | None
) -> None:
    _smt_host(machine)
    machine.cgroup(self_cgroup, files)
    _no_py_cpuinfo(monkeypatch)
    fp = fingerprint.collect()
    (peak,) = derived_ceilings(fp)
    if quota is None:
        assert usable_threads(fp) == (32, 64) and peak.threads == 32
    else:  # 64 threads under a 4-CPU quota are throttled: the ceilings stop at the quota
        assert usable_threads(fp) == (int(quota), int(quota))
        # the peak of the threads measured: whole CPUs of the quota (2.5 CPUs: 2 threads, 2 cores' FMAs)
        assert peak.threads == int(quota) and peak.gflops == pytest.approx(int(quota) * 3000 * 2 * 8 * 2 / 1e3)
    assert fp.get("cpu_quota") == quota
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(64)))
    assert usable_cpus() == (int(quota) if quota else 64)  # the timer refuses more threads than the quota runs


def test_psutil_without_counts_falls_back(machine: FakeMachine, monkeypatch: pytest.MonkeyPatch) -> None:
    _smt_host(machine)
    monkeypatch.setattr(psutil, "cpu_count", lambda logical=True: None)  # psutil: None if undetermined
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    _no_py_cpuinfo(monkeypatch)
    fp = fingerprint.collect()
    assert fp["logical_cpus"] == 64 and "physical_cores" not in fp and fp["affinity_cores"] == 32
