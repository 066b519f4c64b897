"""The machine's own limits: bandwidth per cache level and DRAM, random-gather bandwidth, GEMM FLOP/s.

Measured ceilings come from compiled loops timed with profiler.timer; derived ones from the
fingerprint and stated assumptions. Each record says which (`source`), so plots draw measured
ceilings solid and derived ones dashed.

Values are read at the fast end of the samples (10th-percentile time, Measurement.p10_s): a
ceiling is what the machine can do, and on a shared host interference only slows samples down,
so the median would move with the neighbours (it moved 10-20% between runs here).

Byte counting follows STREAM: copy moves 2 x 4 bytes per element, triad 3 x 4 (the write-allocate
read of the destination is not counted: where the cache allocates on write, the figures are 2/3 of the
bus traffic for copy and 3/4 for triad).
Gather is an embedding-bag over a table far larger than the last-level cache, counted with
profiler.metrics.embedding_bag_cost, so an embedding-bag point divided by it is a like-for-like share.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np

from profiler.metrics import embedding_bag_cost
from profiler.timer import Measurement, measure

__all__ = [
    "Ceiling",
    "FmaWidth",
    "below_measured",
    "derived_ceilings",
    "fma_width",
    "gemm_ceiling",
    "level_working_sets",
    "measure_ceilings",
    "monotone_in_threads",
    "skewed_arrays",
    "stream_ceiling",
    "sweeps_per_call",
    "usable_threads",
]

_GATHER_DIMS = (16, 64, 128)  # D: Kaggle/MLPerf-sized rows of 64, 256 and 512 bytes
_GATHER_POOLING = 32  # L per bag; large enough that the output write is a small share
_GEMM_SQUARE = {"full": 2048, "quick": 1024}
# DLRM-shaped (M=B, K=in, N=out): Kaggle bottom 512->256, Kaggle top 367->512, MLPerf top 1024->1024.
_GEMM_DLRM = ((2048, 512, 256), (2048, 367, 512), (2048, 1024, 1024))
_BUDGET = {"full": {"warmup_ms": 60.0, "rep_ms": 300.0}, "quick": {"warmup_ms": 10.0, "rep_ms": 40.0}}  # all rounds
_ROUNDS = {"full": 3, "quick": 1}
_GATHER_ROTATION = 4  # index arrays each of a quarter of the table's rows: together they touch ~63% of it
_CALL_BYTES = 64 << 20  # bytes counted per timed call of a cache-resident sweep (~1 ms at 64 GB/s)


@dataclass(frozen=True)
class Ceiling:
    """One limit of the machine, measured or derived. `gbps` for bandwidth, `gflops` for compute."""

    name: str  # copy, triad, gather, gemm, fma_peak, dram_peak
    kind: str  # bandwidth | compute
    source: str  # measured | derived
    device: str = "cpu"
    level: str = ""  # L1d, L2, L3, DRAM (bandwidth)
    threads: int = 1
    dtype: str = "float32"
    gbps: float | None = None
    gflops: float | None = None
    working_set_bytes: int | None = None
    shape: tuple[int, ...] = ()  # gemm (M, K, N); gather (rows, D, L)
    method: str = ""
    median_s: float | None = None
    fast_s: float | None = None  # the 10th-percentile time, which the value is computed from
    iqr_s: float | None = None
    n_samples: int | None = None
    contended: bool = False
    warnings: list[str] = field(default_factory=list)
    measured_value: float | None = None  # set when a slowed run took the fewer-thread value (monotone_in_threads)

    def validate(self) -> Ceiling:
        if self.kind not in ("bandwidth", "compute") or self.source not in ("measured", "derived"):
            raise ValueError(
                f"kind={self.kind!r}, source={self.source!r}: kind bandwidth|compute, source measured|derived"
            )
        if (self.gbps if self.kind == "bandwidth" else self.gflops) is None:
            raise ValueError(
                f"{self.name}: a {self.kind} ceiling needs {'gbps' if self.kind == 'bandwidth' else 'gflops'}"
            )
        return self

    @property
    def row_dim(self) -> int | None:
        """A gather's row width D (its shape is (rows, D)); None for every other ceiling."""
        return self.shape[1] if self.name == "gather" and len(self.shape) > 1 else None

    @property
    def key(self) -> str:
        """A stable label: 'triad/DRAM/2t/float32', 'gather/DRAM/D64/1t/float32', 'gemm/2048x2048x2048/2t/bfloat16'."""
        where = self.level or "x".join(map(str, self.shape)) or "peak"
        if self.row_dim is not None:
            where += f"/D{self.row_dim}"
        return f"{self.name}/{where}/{self.threads}t/{self.dtype}" + ("" if self.device == "cpu" else f"/{self.device}")

    @property
    def value(self) -> float:
        return float(self.gbps if self.kind == "bandwidth" else self.gflops)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "shape": list(self.shape), "key": self.key}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Ceiling:
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        known["shape"] = tuple(known.get("shape", ()))
        known["warnings"] = list(known.get("warnings", []))
        return cls(**known).validate()


def _from_measurement(m: Measurement, **kw: Any) -> Ceiling:
    return Ceiling(
        source="measured",
        median_s=m.median_s,
        fast_s=m.p10_s,
        iqr_s=m.iqr_s,
        n_samples=len(m.samples_s),
        contended=m.contended,
        warnings=list(m.warnings),
        threads=m.threads,
        **kw,
    ).validate()


def _instances_used(cache: dict[str, Any], threads: int, default: int) -> int:
    """Instances of a cache that `threads` threads are sure to have: packed onto as few as the cache's
    sharing allows (SMT siblings share an L1d / L2, a socket's or CCD's cores an L3)."""
    shared = cache.get("shared_cpus")
    if not shared:
        return default
    return max(1, min(-(-threads // shared), cache.get("instances") or threads))


def level_working_sets(fp: dict[str, Any], threads: int) -> dict[str, int]:
    """Total bytes (all arrays, all threads) that sit inside each level: half of each L1d / L2 / L3
    instance the threads use (threads packed: two SMT siblings share one core's L1d and L2), and 4 x
    the last level for DRAM. A level whose set would not exceed the one below is left out (e.g. an L3
    smaller than the L2s in use). Without sharing counts: one L1d / L2 per thread, one L3."""
    caches = fp.get("caches", {})
    size = {lv: caches[lv]["size_bytes"] for lv in ("L1d", "L2", "L3") if lv in caches}
    sets: dict[str, int] = {}
    if "L1d" in size:
        sets["L1d"] = _instances_used(caches["L1d"], threads, threads) * size["L1d"] // 2
    if "L2" in size:
        sets["L2"] = _instances_used(caches["L2"], threads, threads) * size["L2"] // 2
    if "L3" in size:
        # a thread cannot fill another socket's / CCD's L3: one instance per shared_cpus threads
        l3 = _instances_used(caches["L3"], threads, 1) * size["L3"]
        if l3 // 2 > 2 * sets.get("L2", 0):
            sets["L3"] = l3 // 2
    # DRAM: 4 x every L3 instance together, so no thread placement keeps it in cache
    llc = max(size.values(), default=32 << 20) * (caches.get("L3", {}).get("instances", 1) if "L3" in size else 1)
    sets["DRAM"] = max(4 * llc, 64 << 20)
    for lower, upper in (("L1d", "L2"), ("L2", "L3")):
        if lower in sets and upper in sets and sets[upper] <= sets[lower]:
            del sets[upper]
    return sets


_PAGE = 4096
_SKEW = 1024  # bytes between the arrays' offsets within a page


def skewed_arrays(count: int, n: int) -> list[np.ndarray]:
    """`count` float32 arrays of n elements, filled (no shared zero page), cut from one buffer so that
    array i starts at i x 1 KiB within a 4 KiB page.

    Separately allocated arrays land at whatever page offsets the allocator gives: when a load
    and a store stream share their low 12 address bits, the CPU's store-to-load check (4K
    aliasing) stalls the loop. In L1 that halved copy bandwidth in some runs and not others
    (213 vs 115 GB/s on this VM); STREAM pads its arrays for the same reason.
    """
    stride = -(-n * 4 // _PAGE) * _PAGE + _SKEW  # bytes from one array's start to the next
    raw = np.empty(count * stride + _PAGE, dtype=np.uint8)
    base = -raw.ctypes.data % _PAGE  # first page boundary in the buffer
    arrays = []
    for i in range(count):
        start = base + i * stride
        a = raw[start : start + 4 * n].view(np.float32)
        a.fill(1.0 + i)
        arrays.append(a)
    return arrays


def sweeps_per_call(level: str, counted_bytes: int) -> int:
    """Sweeps of a cache-resident working set per timed call (about _CALL_BYTES counted); DRAM: one."""
    return 1 if level == "DRAM" else max(1, _CALL_BYTES // counted_bytes)


def stream_ceiling(kind: str, level: str, ws_bytes: int, threads: int, budget: dict[str, float]) -> Ceiling:
    from profiler.stream import kernels

    fn = kernels()[kind]
    narrays = 2 if kind == "copy" else 3
    n = max(16, ws_bytes // (narrays * 4) // (16 * threads) * 16 * threads)  # per array, 64-byte chunks
    arrays = skewed_arrays(narrays, n)
    counted = narrays * 4 * n
    reps = sweeps_per_call(level, counted)
    if kind == "copy":
        call: Callable[[], object] = lambda: fn(arrays[0], arrays[1], threads, reps)  # noqa: E731
    else:
        call = lambda: fn(arrays[0], arrays[1], arrays[2], np.float32(0.5), threads, reps)  # noqa: E731
    m = measure(call, threads=threads, **budget)
    how = f"numba {kind} loop, {threads} private chunks, {reps} sweeps per call"
    if level in ("L3", "DRAM"):
        # At these sizes the plain loop measured ~20% under torch's and numpy's own kernels on DRAM
        # (fewer loads in flight); a ceiling must not sit under what a library reaches, so torch's
        # kernel is timed too and the faster counts. (numpy stays out: the cross-check uses it.)
        import torch

        t = [torch.from_numpy(x) for x in arrays]
        if kind == "copy":
            lib: Callable[[], object] = lambda: t[1].copy_(t[0])  # noqa: E731
        else:
            lib = lambda: torch.add(t[1], t[2], alpha=0.5, out=t[0])  # noqa: E731
        m_lib = measure(lambda: [lib() for _ in range(reps)], threads=threads, **budget)
        tried = f"{how} {m.p10_s * 1e3:.2f} ms, torch {kind} {m_lib.p10_s * 1e3:.2f} ms"
        if m_lib.p10_s < m.p10_s:
            m, how = m_lib, f"torch's {kind} kernel ({reps} per call)"
        how = f"{how}; fastest of: {tried}"
    return _from_measurement(
        m,
        name=kind,
        kind="bandwidth",
        level=level,
        gbps=counted * reps / m.p10_s / 1e9,
        working_set_bytes=counted,
        method=f"{how}; STREAM byte count",
    )


def _gather_ceiling(dim: int, table_bytes: int, threads: int, budget: dict[str, float], seed: int = 0) -> Ceiling:
    from profiler.stream import kernels

    rows = table_bytes // (4 * dim)
    # Page-aligned, as torch allocates the tables the sweeps time: numpy's large arrays start 16 bytes
    # into a page, so each row of 64 floats spans five cache lines instead of four and wide loads
    # split across lines. Unaligned, this ceiling measured about half of what the same kernels
    # reached on aligned rows, and sweep points "beat" it by up to 1.6x.
    (table,) = skewed_arrays(1, rows * dim)
    table = table.reshape(rows, dim)
    lookups = max(rows // 4, 1 << 16)  # a call reads a quarter of the table's rows: several x the LLC
    nbags = lookups // _GATHER_POOLING // threads * threads
    # Calls rotate through several index arrays: one array reused call after call reads the same rows
    # each time (~57 MiB at quick's 256 MiB table, under 2 x a 32 MiB L3), and its L3 hits made the quick
    # ceiling ~30% faster than DRAM; four arrays read ~63% of the table between them.
    rng = np.random.default_rng(seed)
    idxs = [rng.integers(0, rows, nbags * _GATHER_POOLING, dtype=np.int64) for _ in range(_GATHER_ROTATION)]
    idx = idxs[0]
    (out,) = skewed_arrays(1, nbags * dim)
    out = out.reshape(nbags, dim)
    fn = kernels()["gather"]
    nxt = itertools.cycle(idxs).__next__
    loop = measure(lambda: fn(table, nxt(), out, _GATHER_POOLING, threads), threads=threads, **budget)
    # A plain loop leaves memory-level parallelism unused (no prefetch): it measured about half of
    # what torch's embedding_bag (FBGEMM's JIT kernels) or a prefetching numba kernel reaches on the
    # same rows. The ceiling is the fastest of every available CPU kernel and the loop: a lower bound
    # on the machine's gather rate, where one loop's rate would flag good kernels as impossible.
    import torch

    import kernels as registry

    t_table, t_idxs = torch.from_numpy(table), [torch.from_numpy(i) for i in idxs]
    t_idx = t_idxs[0]
    t_offsets = torch.arange(0, idx.size + 1, _GATHER_POOLING)
    tried = [(loop, "a numba loop")]
    for entry in registry.list_kernels():
        if not entry.available or "cpu" not in entry.devices or entry.name == "torch_naive":
            continue
        try:
            entry.fn(t_table, t_idx, t_offsets)  # compile / first touch outside the timed region
            with torch.no_grad():
                turn = itertools.cycle(t_idxs).__next__
                call = lambda e=entry, n=turn: e.fn(t_table, n(), t_offsets)  # noqa: E731
                tried.append((measure(call, threads=threads, **budget), f"kernel {entry.name}"))
        except (NotImplementedError, ValueError, RuntimeError):
            continue
    m, how = min(tried, key=lambda mh: mh[0].p10_s)
    times = ", ".join(f"{name} {mm.p10_s * 1e3:.2f} ms" for mm, name in tried)
    cost = embedding_bag_cost(nbags, idx.size, dim)
    return _from_measurement(
        m,
        name="gather",
        kind="bandwidth",
        level="DRAM",
        gbps=cost.bytes_moved / m.p10_s / 1e9,
        working_set_bytes=table.nbytes,
        shape=(rows, dim, _GATHER_POOLING),
        method=f"embedding-bag (sum) over uniform random rows, the fastest of {times}: {how}; "
        "bytes = metrics.embedding_bag_cost",
    )


def gemm_ceiling(
    shape: tuple[int, int, int], dtype: str, threads: int | None, budget: dict[str, float], device: str = "cpu"
) -> Ceiling:
    import torch

    M, K, N = shape
    tdtype = getattr(torch, dtype)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(M, K, generator=gen, device=device).to(tdtype)
    b = torch.randn(K, N, generator=gen, device=device).to(tdtype)
    m = measure(lambda: torch.mm(a, b), threads=threads, device=device, **budget)
    return _from_measurement(
        m,
        name="gemm",
        kind="compute",
        device=device,
        dtype=dtype,
        gflops=2 * M * K * N / m.p10_s / 1e9,
        shape=shape,
        method=f"torch.mm {M}x{K} @ {K}x{N}",
    )


def _compute_cores(fp: dict[str, Any]) -> int | None:
    """Physical cores this process may run on (SMT siblings share a core's FMA units), at most the whole
    CPUs of the cgroup's quota: the thread counts the ceilings and the timer use (1.5 CPUs: 1 thread)."""
    cores = fp.get("affinity_cores")
    if not cores:
        known = [n for n in (fp.get("affinity_cpus"), fp.get("physical_cores")) if n]
        cores = min(known) if known else fp.get("logical_cpus")
    if cores and fp.get("cpu_quota"):
        return min(cores, max(1, int(fp["cpu_quota"])))
    return cores


def usable_threads(fp: dict[str, Any]) -> tuple[int, int]:
    """(physical cores, CPUs) this process may use: its affinity set, at most the cgroup's CPU quota
    (more threads than the quota are throttled, and time the throttling)."""
    cpus = fp.get("affinity_cpus") or fp.get("logical_cpus") or 1
    quota = fp.get("cpu_quota")
    if quota:
        cpus = max(1, min(cpus, int(quota)))
    cores = max(1, min(cpus, _compute_cores(fp) or cpus))
    return cores, cpus


@dataclass(frozen=True)
class FmaWidth:
    """Float32 FMA throughput of one core: `units` pipes of `lanes` float32 lanes, `flop` FLOPs per lane per
    cycle (2 for an FMA, 1 where the ISA has none), and where the figure comes from."""

    units: int
    lanes: int
    flop: int
    source: str
    known: bool  # the microarchitecture's documented pipes; False: assumed (from the ISA flags, or SKU-dependent)

    @property
    def per_cycle(self) -> int:
        return self.units * self.lanes * self.flop


# (vendor, family, model ranges, flag it needs) -> width. Model ranges as Linux's bsp_init_amd assigns
# X86_FEATURE_ZEN3 / ZEN4 / ZEN5 (arch/x86/kernel/cpu/amd.c). Widths: Zen 3 two 256-bit FMA pipes (as Zen 2);
# Zen 4 FMA on pipes FP0 / FP1 (LLVM's znver4 model, after AMD's Zen 4 optimization guide 57647), 256-bit
# wide, AVX-512 "double-pumped" through them; Zen 5 512-bit FP datapaths (AMD, Hot Chips 2024), but the
# mobile Strix Point cores' vector pipes measured narrower (their FMA width unconfirmed here); Intel:
# "2 x 512-bit FMA (varies by SKU)" (WikiChip, FLOPS).
_X86_WIDTHS: tuple[tuple[str, int, tuple[tuple[int, int], ...], str, FmaWidth], ...] = (
    ("AuthenticAMD", 0x19, ((0x00, 0x0F), (0x20, 0x5F)), "",
     FmaWidth(2, 8, 2, "AMD Zen 3: two 256-bit FMA pipes", True)),
    ("AuthenticAMD", 0x19, ((0x10, 0x1F), (0x60, 0xAF)), "",
     FmaWidth(2, 8, 2, "AMD Zen 4: two 256-bit FMA pipes; AVX-512 runs on them in two halves", True)),
    ("AuthenticAMD", 0x1A, ((0x00, 0x2F), (0x40, 0x4F), (0x70, 0x7F)), "avx512f",
     FmaWidth(2, 16, 2, "AMD Zen 5: two 512-bit FMA pipes, assumed: desktop and server parts have 512-bit FP "
              "datapaths; the mobile (Ryzen AI 300) cores have narrower vector pipes, unsure how much: "
              "possibly up to twice their rate", False)),
    ("GenuineIntel", 6, ((0x00, 0xFF),), "avx512f",
     FmaWidth(2, 16, 2, "Intel AVX-512: two 512-bit FMA units assumed (Xeon Gold / Platinum have two; "
              "some Silver / Bronze and client parts one, half this; the model number does not tell)", False)),
)  # fmt: skip
# Arm Neoverse by MIDR (the fingerprint's cpu_vendor 'ARM' and cpu_model = part): FP/ASIMD pipes that take
# an FMA, each 128 bits (4 float32 lanes) as NEON is. N1, N2: 2 x 128-bit FMA and V1: 2 x 256-bit SVE FMA,
# 32 FLOP/cycle either way (WikiChip, FLOPS); N3 two, V2 and V3 four FP/ASIMD pipes issuing FMAs (LLVM's
# Neoverse scheduling models, after Arm's software optimization guides).
_ARM_WIDTHS: dict[int, FmaWidth] = {
    0xD0C: FmaWidth(2, 4, 2, "Arm Neoverse N1: two 128-bit FMA pipes", True),
    0xD49: FmaWidth(2, 4, 2, "Arm Neoverse N2: two 128-bit FMA pipes", True),
    0xD8E: FmaWidth(2, 4, 2, "Arm Neoverse N3: two 128-bit FMA pipes", True),
    0xD40: FmaWidth(2, 8, 2, "Arm Neoverse V1: two 256-bit SVE FMA pipes", True),
    0xD4F: FmaWidth(4, 4, 2, "Arm Neoverse V2: four 128-bit FMA pipes", True),
    0xD84: FmaWidth(4, 4, 2, "Arm Neoverse V3: four 128-bit FMA pipes", True),
}


def fma_width(fp: dict[str, Any]) -> FmaWidth:
    """The float32 FMA width of one core: from the microarchitecture where the fingerprint names a known
    one (x86 vendor, family and model; Arm's MIDR part), else assumed from the ISA flags: 2 FMA units at
    the widest vector width the flags allow (avx512f 16 lanes, avx2 / avx 8, else 4)."""
    flags = set(fp.get("isa_flags", []))
    vendor, family, model = fp.get("cpu_vendor"), fp.get("cpu_family"), fp.get("cpu_model")
    for v, fam, ranges, flag, width in _X86_WIDTHS:
        if (vendor == v and family == fam and model is not None and any(lo <= model <= hi for lo, hi in ranges)
                and (not flag or flag in flags)):  # fmt: skip
            return width
    if vendor == "ARM" and model in _ARM_WIDTHS:
        return _ARM_WIDTHS[model]
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags or "avx" in flags else 4
    fma = "fma" in flags or "avx512f" in flags or "asimd" in flags
    return FmaWidth(2, lanes, 2 if fma else 1, f"assumed from the ISA flags: 2 units of the widest vectors ({lanes} "
                    "float32 lanes)" + ("" if fma else ", a multiply and an add unit (no FMA)"), False)  # fmt: skip


def below_measured(peak: Ceiling, ceilings: Iterable[Ceiling]) -> Ceiling | None:
    """The highest measured compute ceiling of the peak's device and dtype above the derived `peak`, if any:
    a machine that measured more than its derived peak shows the peak's clock or width to be low."""
    over = [c for c in ceilings if c.source == "measured" and c.kind == "compute" and c.dtype == peak.dtype
            and c.device.split(":")[0] == peak.device.split(":")[0] and c.value > peak.value]  # fmt: skip
    return max(over, key=lambda c: c.value, default=None)


def derived_ceilings(fp: dict[str, Any], measured: Iterable[Ceiling] = ()) -> list[Ceiling]:
    """Textbook peaks from the fingerprint, each with its assumptions in `method`.

    CPU float32 peak = cores x MHz x FMA units x float32 lanes x 2 (physical cores in the affinity set, at most
    the cgroup quota: SMT siblings share the units); the units and lanes per core come from fma_width: the
    microarchitecture's pipes where the fingerprint names a known one, else assumed from the ISA flags.
    GPU DRAM = memory clock x bus width x 2 (DDR) / 8, where both are known.

    The MHz is the fingerprint's cpu_mhz: on a VM /proc/cpuinfo's nominal clock, which cores that boost beat.
    Given `measured` ceilings (measure_ceilings passes its own), a peak below a measured GEMM of its dtype keeps
    its figure at the reported clock and says so in `method` and `warnings`, with the clock that GEMM implies
    at this width (a lower bound: GEMM at 100% of the FMA rate). Raising the peak to that clock would make it
    equal the GEMM by construction, claiming an efficiency nobody measured.
    """
    out: list[Ceiling] = []
    measured = list(measured)
    flags = set(fp.get("isa_flags", []))
    cores = _compute_cores(fp)
    mhz = fp.get("cpu_mhz")
    if cores and mhz:
        width = fma_width(fp)
        assume = (f"{cores} cores x {mhz:.0f} MHz x {width.units} units x {width.lanes} lanes x {width.flop} FLOP "
                  f"({width.source})")  # fmt: skip
        if fp.get("cpu_quota") is not None and cores == max(1, int(fp["cpu_quota"])):
            assume += f"; cores: the cgroup's CPU quota, {fp['cpu_quota']:g} CPUs"
        peaks = [("float32", width.per_cycle, assume)]
        if "avx512_bf16" in flags:
            bf16 = assume + "; bf16 dot-product (vdpbf16ps) doubles the float32 rate"
            if "amx_bf16" in flags:
                bf16 += "; AMX tile units not counted (a bf16 GEMM on AMX can exceed this)"
            peaks.append(("bfloat16", 2 * width.per_cycle, bf16))
        for dtype, per_cycle, method in peaks:
            c = Ceiling("fma_peak", "compute", "derived", threads=cores, dtype=dtype,
                        gflops=cores * mhz * per_cycle / 1e3, method=method)  # fmt: skip
            if (over := below_measured(c, measured)) is not None:
                implied = over.value * 1e3 / (min(over.threads, cores) * per_cycle)
                why = (f"below the measured {over.key} ({over.value:.0f} GFLOP/s): the cores run faster than the "
                       f"reported {mhz:.0f} MHz ({fp.get('cpu_mhz_source', 'cpu_mhz')}), at least {implied:.0f} "
                       f"MHz by that GEMM at {per_cycle} FLOP/cycle")  # fmt: skip
                if not width.known or "AMX" in method:
                    why += ", or the assumed width is too narrow"
                c = replace(c, method=f"{c.method}; {why}", warnings=[why])
            out.append(c)
    for i, gpu in enumerate(fp.get("gpus", [])):
        if gpu.get("memory_clock_mhz") and gpu.get("bus_width_bits"):
            gbps = gpu["memory_clock_mhz"] * gpu["bus_width_bits"] * 2 / 8 / 1e3
            out.append(
                Ceiling(
                    "dram_peak", "bandwidth", "derived", device=f"cuda:{i}", level="DRAM", gbps=gbps,
                    method=f"{gpu['memory_clock_mhz']:.0f} MHz x {gpu['bus_width_bits']} bits x 2 / 8",
                )
            )  # fmt: skip
    return [c.validate() for c in out]


def measure_ceilings(
    fp: dict[str, Any],
    *,
    quick: bool = False,
    thread_counts: tuple[int, ...] | None = None,
    log: Callable[[str], None] | None = None,
) -> list[Ceiling]:
    """Measure every ceiling (a few seconds with quick, well under two minutes in full on 2 cores).

    Args:
        fp: the fingerprint (profiler.fingerprint.collect()), for cache sizes, cores and GPUs.
        quick: smaller budgets, 1024 square GEMM, no DLRM-shaped GEMMs at 1 thread, D=64 gather only.
        thread_counts: default 1, the physical cores and all CPUs this process may use (usable_threads).
        log: called with one line per finished ceiling.
    Returns:
        Measured ceilings followed by derived ones.
    """
    mode = "quick" if quick else "full"
    rounds = _ROUNDS[mode]
    budget = {k: v / rounds for k, v in _BUDGET[mode].items()}
    threads_list = thread_counts or tuple(sorted({1, *usable_threads(fp)}))
    say = log or (lambda _line: None)
    jobs: list[Callable[[], Ceiling]] = []

    for t in threads_list:
        for level, ws in level_working_sets(fp, t).items():
            for kind in ("copy", "triad"):
                jobs.append(lambda kind=kind, level=level, ws=ws, t=t: stream_ceiling(kind, level, ws, t, budget))
    llc = level_working_sets(fp, 1)["DRAM"] // 4
    table_bytes = (8 if quick else 16) * llc  # a random row misses the LLC with probability >= 7/8
    for t in threads_list:
        for dim in (64,) if quick else _GATHER_DIMS:
            jobs.append(lambda dim=dim, t=t: _gather_ceiling(dim, table_bytes, t, budget))
    import torch

    n = _GEMM_SQUARE[mode]
    bf16 = "avx512_bf16" in fp.get("isa_flags", []) or "amx_bf16" in fp.get("isa_flags", [])
    for t in threads_list:
        for dtype in ("float32", "bfloat16") if bf16 else ("float32",):
            shapes = [(n, n, n)]
            if not quick or t == threads_list[-1]:
                shapes += _GEMM_DLRM[: 1 if quick else None]
            for shape in shapes:
                jobs.append(lambda shape=shape, dtype=dtype, t=t: gemm_ceiling(shape, dtype, t, budget))

    # Rounds: every ceiling is measured once per round, so each one's samples are spread over the
    # whole run and the best round counts. A neighbour busy for part of the run (L1 copy measured
    # 213 GB/s in one run and 115 in the next, each with IQR 2%) then costs a round, not the figure.
    best: list[Ceiling | None] = [None] * len(jobs)
    values: list[list[float]] = [[] for _ in jobs]
    for r in range(rounds):
        for i, job in enumerate(jobs):
            c = job()
            values[i].append(c.value)
            if best[i] is None or c.value > best[i].value:  # type: ignore[union-attr]
                best[i] = c
        if rounds > 1:
            say(f"(round {r + 1} of {rounds} done)")
    out: list[Ceiling] = []
    for c, vals in zip(best, values, strict=True):
        assert c is not None
        if rounds > 1:
            spread = ", ".join(f"{v:.1f}" for v in vals)
            c = replace(c, method=f"{c.method}; best of {rounds} rounds spread over the run ({spread})")
        out.append(c)
    out = monotone_in_threads(out)
    for c in out:
        say(_line(c))

    def add(c: Ceiling) -> None:
        out.append(c)
        say(_line(c))

    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            _gpu_ceilings(f"cuda:{i}", quick, _BUDGET[mode], add)
    derived = derived_ceilings(fp, out)  # after the GEMMs: a peak below one says so
    for c in derived:
        say(_line(c))
    return out + derived


def monotone_in_threads(ceilings: list[Ceiling]) -> list[Ceiling]:
    """No ceiling below the same limit at fewer threads: a machine that moved X GB/s on one thread can
    move X on two (one may idle). A lower many-thread figure is a run a neighbour slowed (2 threads on
    a 2-core VM with one core busy measured 8.4 GB/s L1 copy against 235 on one); stored as the roof,
    it would put sound kernels 'above the roof'. Such a ceiling takes the fewer-thread value, keeping
    its own figure in a warning. Order and everything else are kept."""
    best: dict[tuple[Any, ...], Ceiling] = {}
    out = list(ceilings)
    for i in sorted(range(len(out)), key=lambda i: out[i].threads):
        c = out[i]
        if c.source != "measured":
            continue
        group = (c.name, c.kind, c.level, c.dtype, c.shape, c.device)
        lower = best.get(group)
        if lower is not None and c.value < lower.value:
            why = (f"measured {c.value:.3g} at {c.threads} threads, below {lower.value:.3g} at {lower.threads}: "
                   f"a slowed run; the {lower.threads}-thread value stands")  # fmt: skip
            field_ = "gbps" if c.kind == "bandwidth" else "gflops"
            c = replace(c, **{field_: lower.value}, warnings=[*c.warnings, why], method=f"{c.method}; {why}",
                        measured_value=c.value)  # fmt: skip
            out[i] = c
        if lower is None or c.value > lower.value:  # a borrowed value keeps naming the run it came from
            best[group] = c
    return out


def _gpu_ceilings(device: str, quick: bool, budget: dict[str, float], add: Callable[[Ceiling], None]) -> None:
    """Device copy bandwidth and GEMM FLOP/s (float32 without TF32, bfloat16); added through `add`."""
    import torch

    nbytes = (256 if quick else 1024) << 20
    a = torch.ones(nbytes // 4, device=device)
    b = torch.empty_like(a)
    m = measure(lambda: b.copy_(a), device=device, **budget)
    add(
        _from_measurement(
            m, name="copy", kind="bandwidth", device=device, level="DRAM", gbps=2 * nbytes / m.p10_s / 1e9,
            working_set_bytes=2 * nbytes, method="torch copy_ of a device tensor",
        )
    )  # fmt: skip
    n = 4096 if quick else 8192
    old_tf32 = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        for dtype in ("float32", "bfloat16"):
            add(gemm_ceiling((n, n, n), dtype, None, budget, device))
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old_tf32


def _line(c: Ceiling) -> str:
    value = f"{c.gbps:9.1f} GB/s" if c.kind == "bandwidth" else f"{c.gflops:9.1f} GFLOP/s"
    spread = f"IQR {c.iqr_s / c.median_s:4.0%}" if c.median_s and c.iqr_s is not None else "         "
    flag = " CONTENDED" if c.contended else ""
    if c.measured_value is not None:  # monotone_in_threads took the fewer-thread value
        flag += f"  (measured {c.measured_value:.3g}: a slowed run; the fewer-thread value stands)"
    return f"{c.source:8s} {c.key:40s} {value}  {spread}{flag}"
