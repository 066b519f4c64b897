"""The machine fingerprint: small best-effort collectors of CPU, caches, memory, GPU and versions, and a SKU id.

Every `collect_*(info)` adds what it can read to the dict `info` and leaves out what it cannot; none
raises. Cache sizes come from several sources that may disagree (py-cpuinfo reports L3 = 1 MiB on a
Zen 4 VM where sysfs and lscpu say 32 MiB): sysfs is read first, then lscpu, then py-cpuinfo; each
level records its `source`, and `cache_sources` keeps every source's figure. Overrides win and say so.
The SKU id hashes hardware fields only (never hostname, clock readings, versions or overrides), so two
machines of one SKU share it.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import platform
import re
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

__all__ = [
    "FIELDS",
    "ISA_FLAGS",
    "cgroup_cpu_quota",
    "collect",
    "collect_caches",
    "collect_cpu",
    "collect_gpu",
    "collect_memory",
    "collect_versions",
    "parse_cache_sizes",
    "parse_size",
    "sku_id",
    "sysfs_caches",
]

# Flags that matter for the kernels here: SIMD width (w4/w8/w16), FMA, bf16 and AMX GEMM, NEON/SVE.
ISA_FLAGS = (
    "sse4_2", "avx", "avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni", "avx512_bf16",
    "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "asimd", "sve",
)  # fmt: skip

# Known keys: type, unit and meaning (the store can validate against this table).
FIELDS: dict[str, tuple[str, str, str]] = {
    "cpu_brand": ("str", "", "CPU model name"),
    "cpu_vendor": ("str", "", "vendor id, e.g. GenuineIntel, AuthenticAMD"),
    "cpu_family": ("int", "", "x86 family"),
    "cpu_model": ("int", "", "x86 model; ARM: the MIDR part number"),
    "cpu_stepping": ("int", "", "x86 stepping; ARM: the MIDR revision"),
    "arch": ("str", "", "machine architecture"),
    "isa_flags": ("list[str]", "", f"present flags among {', '.join(ISA_FLAGS)}"),
    "logical_cpus": ("int", "cpus", "online logical CPUs"),
    "physical_cores": ("int", "cores", "physical cores"),
    "affinity_cpus": ("int", "cpus", "CPUs this process may run on"),
    "affinity_cores": ("int", "cores", "physical cores among those CPUs (SMT siblings count once)"),
    "cpu_quota": ("float", "cpus", "cgroup CPU bandwidth limit (cpu.max / cfs quota), where one is set"),
    "sockets": ("int", "", "CPU packages"),
    "cpu_mhz": ("float", "MHz", "nominal / max frequency, see cpu_mhz_source"),
    "cpu_governor": ("str", "", "cpufreq scaling governor"),
    "hypervisor": ("bool", "", "running under a hypervisor"),
    "caches": (
        "dict",
        "bytes",
        "per level L1d/L1i/L2/L3: size_bytes (the smallest instance), shared_cpus (the most), instances, source; "
        "mixed_sizes where instances differ (hybrid P/E cores)",
    ),
    "cache_sources": ("dict", "bytes", "per level, the figure each source gave"),
    "memory_bytes": ("int", "bytes", "physical memory"),
    "numa_nodes": ("int", "", "NUMA nodes"),
    "gpus": ("list[dict]", "", "name, sm_count, memory_bytes, capability, clocks and bus width where known"),
    "versions": ("dict", "", "python and library versions"),
    "git_commit": ("str", "", "commit of this checkout"),
    "git_dirty": ("bool", "", "uncommitted changes present"),
    "hostname": ("str", "", "host name (not part of the SKU id)"),
    "os": ("str", "", "kernel / OS release"),
    "from_py_cpuinfo": ("list[str]", "", "fields py-cpuinfo filled (not hashed: it may be absent or fail)"),
}

_SYS_CPU = "/sys/devices/system/cpu"
_SYS_NODE = "/sys/devices/system/node"
_PROC_CPUINFO = "/proc/cpuinfo"
_PROC_SELF_CGROUP = "/proc/self/cgroup"
_CGROUP_ROOT = "/sys/fs/cgroup"
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:I?B)?\s*$", re.IGNORECASE)
_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}
_LEVELS = ("L1d", "L1i", "L2", "L3")


def parse_size(text: str) -> int:
    """'32K' / '1M' / '32 MiB' / '4096' -> bytes (binary units). ValueError on anything else."""
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"size {text!r}: expected a number with an optional K, M, G or T suffix (binary)")
    return int(float(m.group(1)) * _UNITS[m.group(2).upper()])


def parse_cache_sizes(text: str) -> dict[str, int]:
    """'L1=48K,L2=2M,L3=32M' -> {'L1d': 49152, 'L2': 2097152, 'L3': 33554432}; L1 means L1d."""
    out: dict[str, int] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        key, sep, value = item.partition("=")
        level = {"l1": "L1d", "l1d": "L1d", "l1i": "L1i", "l2": "L2", "l3": "L3"}.get(key.strip().lower())
        if not sep or level is None:
            raise ValueError(f"cache size {item!r}: expected LEVEL=SIZE with LEVEL one of L1, L1d, L1i, L2, L3")
        out[level] = parse_size(value)
    return out


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _run(cmd: list[str], timeout_s: float = 5.0) -> str | None:
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return res.stdout if res.returncode == 0 else None


def _cpu_list_len(text: str) -> int:
    """'0-3,8' -> 5."""
    n = 0
    for part in filter(None, text.split(",")):
        lo, _, hi = part.partition("-")
        n += int(hi) - int(lo) + 1 if hi else 1
    return n


def sysfs_caches(root: str | None = None) -> list[dict[str, Any]]:
    """Distinct caches under /sys/.../cpu*/cache: level name, size_bytes, shared_cpus, instances.

    Where instances of a level differ (a hybrid CPU's P- and E-core L2s), size_bytes is the smallest (a
    working set sized from it fits whichever core runs it), shared_cpus the most, and mixed_sizes lists
    every size; before, both were whichever CPU the glob's order gave."""
    found: dict[str, dict[str, Any]] = {}
    for index in sorted(glob.glob(f"{root or _SYS_CPU}/cpu[0-9]*/cache/index[0-9]*")):
        level, kind, size, shared = (_read(f"{index}/{f}") for f in ("level", "type", "size", "shared_cpu_list"))
        if not (level and kind and size):
            continue
        name = f"L{level}" + {"Data": "d", "Instruction": "i"}.get(kind, "")
        try:
            size_bytes = parse_size(size)
        except ValueError:
            continue
        entry = found.setdefault(name, {"level": name, "size_bytes": size_bytes, "groups": set(), "sizes": set()})
        entry["groups"].add(shared or index)
        entry["sizes"].add(size_bytes)
        entry["size_bytes"] = min(entry["size_bytes"], size_bytes)
        if shared:
            entry["shared_cpus"] = max(entry.get("shared_cpus", 0), _cpu_list_len(shared))
    for entry in found.values():
        entry["instances"] = len(entry.pop("groups"))
        if len(sizes := entry.pop("sizes")) > 1:
            entry["mixed_sizes"] = sorted(sizes)
    return sorted(found.values(), key=lambda e: e["level"])


def _lscpu_caches() -> dict[str, int]:
    out = _run(["lscpu", "-J", "-C", "-B"])
    if out is None:
        return {}
    try:
        rows = json.loads(out).get("caches", [])
        return {r["name"]: int(r["one-size"]) for r in rows if r.get("name") in _LEVELS}
    except (ValueError, KeyError, TypeError, AttributeError):
        return {}


def _cpuinfo_caches(ci: dict[str, Any]) -> dict[str, int]:
    keys = {
        "L1d": "l1_data_cache_size",
        "L1i": "l1_instruction_cache_size",
        "L2": "l2_cache_size",
        "L3": "l3_cache_size",
    }
    out = {}
    for level, key in keys.items():
        v = ci.get(key)
        try:
            out[level] = int(v) if isinstance(v, int) else parse_size(str(v))
        except (ValueError, TypeError):
            continue
    return out


def collect_caches(
    info: dict[str, Any], *, overrides: dict[str, int] | None = None, cpuinfo: dict[str, Any] | None = None
) -> None:
    """caches[level] = {size_bytes (per instance), shared_cpus, instances, source}; sysfs, else lscpu.

    py-cpuinfo's figures are recorded in cache_sources only: its L1/L2 are lscpu's totals over every
    instance ("96 MiB (96 instances)" read as 96 MiB) and its L3 is /proc/cpuinfo's "cache size", which is
    the per-core L2 on AMD; taken as one instance's size they misplaced every cache-relative working set
    (and, being optional, changed the SKU id with py-cpuinfo's presence)."""
    sysfs = sysfs_caches()
    sources: dict[str, dict[str, int]] = {
        "sysfs": {c["level"]: c["size_bytes"] for c in sysfs},
        "lscpu": _lscpu_caches(),
        "py-cpuinfo": _cpuinfo_caches(cpuinfo or {}),
    }
    sysfs_by_level = {c["level"]: c for c in sysfs}
    caches: dict[str, dict[str, Any]] = {}
    for level in _LEVELS:
        for src in ("sysfs", "lscpu"):
            if level in sources[src]:
                caches[level] = {"size_bytes": sources[src][level], "source": src}
                extra = sysfs_by_level.get(level, {})
                caches[level].update({k: extra[k] for k in ("shared_cpus", "instances", "mixed_sizes") if k in extra})
                break
    for level, size in (overrides or {}).items():
        caches.setdefault(level, {})
        caches[level].update(
            {"size_bytes": size, "source": "override", "detected_bytes": caches[level].get("size_bytes")}
        )
        if caches[level]["detected_bytes"] is None:
            del caches[level]["detected_bytes"]
    if caches:
        info["caches"] = caches
    per_level = {lv: {s: v[lv] for s, v in sources.items() if lv in v} for lv in _LEVELS}
    info["cache_sources"] = {lv: v for lv, v in per_level.items() if v}
    disagree = sorted(lv for lv, v in per_level.items() if len(set(v.values())) > 1)
    if disagree:
        info["cache_disagreements"] = disagree  # py-cpuinfo often gives totals, or a wrong L3, here


def _proc_cpuinfo() -> dict[str, str]:
    text = _read(_PROC_CPUINFO) or ""
    first = text.split("\n\n", 1)[0]
    return {k.strip(): v.strip() for k, _, v in (ln.partition(":") for ln in first.splitlines()) if k.strip()}


# ARM's /proc/cpuinfo names no model, only MIDR fields: implementer and part (lscpu's names).
_ARM_IMPLEMENTERS = {
    0x41: "ARM", 0x42: "Broadcom", 0x43: "Cavium", 0x46: "Fujitsu", 0x48: "HiSilicon", 0x4E: "NVIDIA",
    0x50: "APM", 0x51: "Qualcomm", 0x61: "Apple", 0xC0: "Ampere",
}  # fmt: skip
_ARM_PARTS = {
    (0x41, 0xD0C): "Neoverse-N1", (0x41, 0xD40): "Neoverse-V1", (0x41, 0xD49): "Neoverse-N2",
    (0x41, 0xD4F): "Neoverse-V2", (0x41, 0xD84): "Neoverse-V3", (0x41, 0xD8E): "Neoverse-N3",
    (0xC0, 0xAC3): "AmpereOne",
}  # fmt: skip


def _arm_ids(proc: dict[str, str]) -> dict[str, Any]:
    """cpu_brand / cpu_vendor / cpu_model / cpu_stepping from ARM's 'CPU implementer', 'CPU part', 'CPU revision'."""
    try:
        impl, part = int(proc["CPU implementer"], 16), int(proc["CPU part"], 16)
    except (KeyError, ValueError):
        return {}
    vendor = _ARM_IMPLEMENTERS.get(impl, f"implementer 0x{impl:02x}")
    out: dict[str, Any] = {"cpu_vendor": vendor, "cpu_model": part}
    out["cpu_brand"] = f"{vendor} {_ARM_PARTS.get((impl, part), f'part 0x{part:03x}')}"
    try:
        out["cpu_stepping"] = int(proc["CPU revision"], 0)
    except (KeyError, ValueError):
        pass
    return out


def _affinity_cores(cpus: set[int]) -> int | None:
    """Physical cores among `cpus` (SMT siblings count once), from sysfs topology; None where unreadable."""
    cores = set()
    for cpu in cpus:
        topo = f"{_SYS_CPU}/cpu{cpu}/topology"
        core = _read(f"{topo}/core_cpus_list") or _read(f"{topo}/thread_siblings_list")
        if core is None:
            package, core_id = _read(f"{topo}/physical_package_id"), _read(f"{topo}/core_id")
            if package is None or core_id is None:
                return None
            core = f"{package}/{core_id}"
        cores.add(core)
    return len(cores) or None


def cgroup_cpu_quota() -> float | None:
    """CPUs' worth of time this process's cgroup may use: the tightest cgroup v2 cpu.max from its cgroup up
    to the root, or v1's cpu.cfs_quota_us / cpu.cfs_period_us; None where no limit is set or readable.
    (In a container the cgroup mount is its own cgroup, so the mount's root is read too.)"""
    limits: list[float] = []

    def add(quota: str | None, period: str | None) -> None:
        try:
            q, p = float(quota or "max"), float(period or "100000")
        except ValueError:  # "max": no limit
            return
        if q > 0 and p > 0:
            limits.append(q / p)

    for line in (_read(_PROC_SELF_CGROUP) or "").splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            bases = [_CGROUP_ROOT, f"{_CGROUP_ROOT}/unified"]
        elif "cpu" in controllers.split(","):
            bases = [f"{_CGROUP_ROOT}/{controllers}", f"{_CGROUP_ROOT}/cpu,cpuacct", f"{_CGROUP_ROOT}/cpu"]
        else:
            continue
        parts = [p for p in path.split("/") if p]
        for base in bases:
            for depth in range(len(parts), -1, -1):
                d = "/".join([base, *parts[:depth]])
                if hierarchy == "0" and not controllers:
                    quota, _, period = (_read(f"{d}/cpu.max") or "").partition(" ")
                    add(quota or None, period or None)
                else:
                    add(_read(f"{d}/cpu.cfs_quota_us"), _read(f"{d}/cpu.cfs_period_us"))
    return min(limits) if limits else None


def collect_cpu(info: dict[str, Any], cpuinfo: dict[str, Any] | None = None) -> None:
    """Brand, vendor, family/model, ISA flags, cores, sockets, frequency and governor.

    /proc/cpuinfo and sysfs first; what only py-cpuinfo gave is listed in from_py_cpuinfo, which the SKU
    id leaves out (py-cpuinfo is optional and may fail: the same machine must keep its id)."""
    proc = _proc_cpuinfo()
    ci = cpuinfo or {}
    arm = _arm_ids(proc)
    from_ci: list[str] = []

    def put(key: str, mine: Any, theirs: Any) -> None:
        if mine is not None:
            info[key] = mine
        elif theirs is not None:
            info[key] = theirs
            from_ci.append(key)

    put("cpu_brand", proc.get("model name") or arm.get("cpu_brand"), ci.get("brand_raw") or None)
    put("cpu_vendor", proc.get("vendor_id") or arm.get("cpu_vendor"), ci.get("vendor_id_raw") or None)
    for key, pkey, ckey in (
        ("cpu_family", "cpu family", "family"),
        ("cpu_model", "model", "model"),
        ("cpu_stepping", "stepping", "stepping"),
    ):
        try:
            mine = int(proc[pkey]) if pkey in proc else arm.get(key)
        except ValueError:
            mine = None
        theirs = ci.get(ckey)
        put(key, mine, theirs if isinstance(theirs, int) and not isinstance(theirs, bool) else None)
    info["arch"] = platform.machine()
    flags = set((proc.get("flags") or proc.get("Features") or "").split())
    if not flags and ci.get("flags"):
        flags = set(ci["flags"])
        from_ci.append("isa_flags")
    info["isa_flags"] = [f for f in ISA_FLAGS if f in flags]
    info["hypervisor"] = "hypervisor" in flags
    try:
        import psutil

        info["logical_cpus"] = psutil.cpu_count(logical=True) or os.cpu_count()  # psutil: None if undetermined
        if cores := psutil.cpu_count(logical=False):
            info["physical_cores"] = cores
    except Exception:  # psutil absent or unsupported platform: left out
        info["logical_cpus"] = os.cpu_count()
    if hasattr(os, "sched_getaffinity"):
        affinity = os.sched_getaffinity(0)
        info["affinity_cpus"] = len(affinity)
        if cores := _affinity_cores(affinity):
            info["affinity_cores"] = cores
    if (quota := cgroup_cpu_quota()) is not None:
        info["cpu_quota"] = quota
    packages = {_read(p) for p in glob.glob(f"{_SYS_CPU}/cpu[0-9]*/topology/physical_package_id")} - {None}
    if packages:
        info["sockets"] = len(packages)
    max_khz = _read(f"{_SYS_CPU}/cpu0/cpufreq/cpuinfo_max_freq")
    if max_khz and max_khz.isdigit():
        info["cpu_mhz"], info["cpu_mhz_source"] = int(max_khz) / 1e3, "sysfs cpuinfo_max_freq"
    elif proc.get("cpu MHz"):
        info["cpu_mhz"], info["cpu_mhz_source"] = float(proc["cpu MHz"]), "/proc/cpuinfo cpu MHz"
    elif (ci.get("hz_advertised") or [0])[0]:  # py-cpuinfo gives [0, 0] where it found nothing
        info["cpu_mhz"], info["cpu_mhz_source"] = ci["hz_advertised"][0] / 1e6, "py-cpuinfo hz_advertised"
    if governor := _read(f"{_SYS_CPU}/cpu0/cpufreq/scaling_governor"):
        info["cpu_governor"] = governor
    if from_ci:
        info["from_py_cpuinfo"] = from_ci


def collect_memory(info: dict[str, Any]) -> None:
    """Physical memory and NUMA node count."""
    try:
        import psutil

        info["memory_bytes"] = int(psutil.virtual_memory().total)
    except Exception:  # best effort
        pass
    nodes = glob.glob(f"{_SYS_NODE}/node[0-9]*")
    if nodes:
        info["numa_nodes"] = len(nodes)


def _nvidia_smi() -> list[dict[str, Any]]:
    out = _run(["nvidia-smi", "--query-gpu=clocks.max.memory,clocks.max.sm", "--format=csv,noheader,nounits"])
    rows = []
    for line in (out or "").strip().splitlines():
        try:
            mem, sm = (float(x) for x in line.split(","))
            rows.append({"memory_clock_mhz": mem, "sm_clock_mhz": sm})
        except ValueError:
            continue
    return rows


def collect_gpu(info: dict[str, Any]) -> None:
    """CUDA devices seen by torch: name, SMs, memory; clocks via nvidia-smi and bus width via pynvml if present."""
    try:
        import torch

        if not torch.cuda.is_available():
            return
        gpus = []
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpu = {"name": p.name, "sm_count": p.multi_processor_count, "memory_bytes": int(p.total_memory)}
            gpu["capability"] = f"{p.major}.{p.minor}"
            if l2 := getattr(p, "L2_cache_size", None):
                gpu["l2_bytes"] = int(l2)
            gpus.append(gpu)
    except Exception:  # a broken driver must not stop the fingerprint
        return
    for gpu, smi in zip(gpus, _nvidia_smi(), strict=False):
        gpu.update(smi)
    try:
        import pynvml

        pynvml.nvmlInit()
        for i, gpu in enumerate(gpus):
            gpu["bus_width_bits"] = int(pynvml.nvmlDeviceGetMemoryBusWidth(pynvml.nvmlDeviceGetHandleByIndex(i)))
    except Exception:  # pynvml absent or too old: left out
        pass
    if gpus:
        info["gpus"] = gpus


def collect_versions(info: dict[str, Any]) -> None:
    """Python, library versions (from package metadata, nothing imported), and the git commit."""
    versions = {"python": platform.python_version()}
    for name in ("torch", "numpy", "numba", "llvmlite", "fbgemm-gpu", "psutil", "py-cpuinfo"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    info["versions"] = versions
    repo = str(Path(__file__).resolve().parent.parent)
    if commit := _run(["git", "-C", repo, "rev-parse", "HEAD"]):
        info["git_commit"] = commit.strip()
        status = _run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"])
        if status is not None:
            info["git_dirty"] = bool(status.strip())
    info["hostname"] = platform.node()
    info["os"] = f"{platform.system()} {platform.release()}"


def _py_cpuinfo() -> dict[str, Any]:
    try:
        import cpuinfo

        return cpuinfo.get_cpu_info()
    except Exception:  # py-cpuinfo absent or failing on this platform
        return {}


def collect(*, cache_overrides: dict[str, int] | None = None, use_py_cpuinfo: bool = True) -> dict[str, Any]:
    """The whole fingerprint, with `sku_id` (py-cpuinfo costs about a second; it is a fallback source)."""
    ci = _py_cpuinfo() if use_py_cpuinfo else {}
    info: dict[str, Any] = {}
    collect_cpu(info, ci)
    collect_caches(info, overrides=cache_overrides, cpuinfo=ci)
    collect_memory(info)
    collect_gpu(info)
    collect_versions(info)
    info["sku_id"] = sku_id(info)
    return info


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:32] or "cpu"


def sku_id(info: dict[str, Any]) -> str:
    """'<brand-slug>-<N>c-<8 hex>': a hash of hardware fields only; detected cache sizes, not overrides."""
    caches = {lv: c.get("detected_bytes", c.get("size_bytes")) for lv, c in info.get("caches", {}).items()}
    skip = set(info.get("from_py_cpuinfo", []))  # py-cpuinfo may be absent or fail: not an identity
    info = {**info, **{k: [] if k == "isa_flags" else None for k in skip}}  # as collected without it
    memory_gib = round(info.get("memory_bytes", 0) / (1 << 30))  # MemTotal drifts by MBs between boots
    hw = {
        k: info.get(k)
        for k in ("cpu_brand", "cpu_vendor", "cpu_family", "cpu_model", "cpu_stepping", "arch", "isa_flags")
    }
    hw.update(
        logical_cpus=info.get("logical_cpus"),
        physical_cores=info.get("physical_cores"),
        sockets=info.get("sockets"),
        numa_nodes=info.get("numa_nodes"),
        caches=caches,
        memory_gib=memory_gib,
        gpus=[
            (g.get("name"), g.get("sm_count"), round(g.get("memory_bytes", 0) / (1 << 30)))
            for g in info.get("gpus", [])
        ],
    )
    digest = hashlib.sha256(json.dumps(hw, sort_keys=True, default=str).encode()).hexdigest()[:8]
    return f"{_slug(str(info.get('cpu_brand') or 'cpu'))}-{info.get('logical_cpus') or 0}c-{digest}"
