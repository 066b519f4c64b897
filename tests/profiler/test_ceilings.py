"""profiler.ceilings: working-set sizing and derived peaks by hand, record round trip, one tiny measured sweep."""

from __future__ import annotations

import itertools
from dataclasses import replace

import numpy as np
import pytest
import torch

from profiler import ceilings
from profiler.ceilings import Ceiling, derived_ceilings, level_working_sets
from profiler.timer import Measurement

FP = {
    "affinity_cpus": 2,
    "cpu_mhz": 2500.0,
    "isa_flags": ["avx2", "fma", "avx512f", "avx512_bf16"],
    "caches": {
        "L1d": {"size_bytes": 32 << 10, "instances": 2},
        "L2": {"size_bytes": 1 << 20, "instances": 2},
        "L3": {"size_bytes": 32 << 20, "instances": 1},
    },
}


def test_working_sets_by_level() -> None:
    assert level_working_sets(FP, 1) == {"L1d": 16 << 10, "L2": 512 << 10, "L3": 16 << 20, "DRAM": 128 << 20}
    assert level_working_sets(FP, 2) == {"L1d": 32 << 10, "L2": 1 << 20, "L3": 16 << 20, "DRAM": 128 << 20}


def test_l3_not_above_the_l2s_is_left_out() -> None:
    fp = {"caches": {"L2": {"size_bytes": 2 << 20}, "L3": {"size_bytes": 4 << 20, "instances": 1}}}
    assert "L3" not in level_working_sets(fp, 2)


def test_derived_peaks_by_hand() -> None:
    peaks = {c.dtype: c for c in derived_ceilings(FP)}
    # no vendor / family / model: the flag rule, 2 cores x 2500 MHz x 2 FMA units x 16 lanes x 2 FLOP = 320
    # GFLOP/s; bf16 dot products double it
    assert peaks["float32"].gflops == pytest.approx(320.0)
    assert peaks["bfloat16"].gflops == pytest.approx(640.0)
    assert all(c.source == "derived" and "assumed from the ISA flags" in c.method for c in peaks.values())


def _cpu(vendor: str, family: int | None, model: int, flags: list[str], cores: int, mhz: float) -> dict:
    fp = {"cpu_vendor": vendor, "cpu_model": model, "isa_flags": flags, "affinity_cpus": cores, "cpu_mhz": mhz}
    return fp if family is None else {**fp, "cpu_family": family}


ZEN4 = _cpu("AuthenticAMD", 0x19, 0x11, ["avx", "avx2", "fma", "avx512f", "avx512_bf16"], 2, 2596.0)  # Genoa


@pytest.mark.parametrize(
    ("fp", "float32", "says"),
    [
        # Zen 4 (EPYC 9004, family 0x19 model 0x11): AVX-512 on two 256-bit pipes, 2 x 8 lanes:
        # 2 cores x 2596 MHz x 2 x 8 x 2 = 166.144 GFLOP/s (the flag rule's 16 lanes gave 332.3)
        (ZEN4, 166.144, "Zen 4"),
        # Zen 4 desktop (Raphael, model 0x61) with AVX-512 hidden by the hypervisor: the same 2 x 8
        (_cpu("AuthenticAMD", 0x19, 0x61, ["avx", "avx2", "fma"], 8, 4500.0), 8 * 4500 * 32 / 1e3, "Zen 4"),
        # Zen 3 (EPYC 7B13, model 0x01): two 256-bit FMA pipes, 4 x 3000 x 2 x 8 x 2 = 384 GFLOP/s
        (_cpu("AuthenticAMD", 0x19, 0x01, ["avx", "avx2", "fma"], 4, 3000.0), 384.0, "Zen 3"),
        # Zen 5 with AVX-512: 2 x 16 lanes, assumed (mobile parts have half): 2 x 3000 x 64 = 384
        (_cpu("AuthenticAMD", 0x1A, 0x02, ["avx2", "fma", "avx512f"], 2, 3000.0), 384.0, "Zen 5"),
        # Intel with AVX-512 (Sapphire Rapids, 6/0x8F): 2 x 512-bit assumed, 8 x 3800 x 2 x 16 x 2 = 1945.6
        (_cpu("GenuineIntel", 6, 0x8F, ["avx2", "fma", "avx512f"], 8, 3800.0), 1945.6, "assumed"),
        # Neoverse N1 (Graviton 2, part 0xD0C): two 128-bit pipes, 64 x 2500 x 2 x 4 x 2 = 2560
        (_cpu("ARM", None, 0xD0C, ["asimd"], 64, 2500.0), 2560.0, "Neoverse N1"),
        # Neoverse V2 (Graviton 4 / Grace, part 0xD4F): four 128-bit pipes, 4 x 3100 x 4 x 4 x 2 = 396.8
        # (the flag rule's 2 x 4 gave half)
        (_cpu("ARM", None, 0xD4F, ["asimd", "sve"], 4, 3100.0), 396.8, "Neoverse V2"),
        # an Arm part not in the table (AmpereOne, implementer 0xC0): the flag rule, 2 x 4 lanes, assumed
        (_cpu("Ampere", None, 0xAC3, ["asimd"], 2, 3000.0), 2 * 3000 * 16 / 1e3, "assumed"),
    ],
)
def test_derived_peak_by_microarchitecture(fp: dict, float32: float, says: str) -> None:
    c = next(c for c in derived_ceilings(fp) if c.dtype == "float32")
    assert c.gflops == pytest.approx(float32) and says in c.method and c.threads == fp["affinity_cpus"]
    assert not c.warnings and "below the measured" not in c.method  # no GEMM given: nothing to compare


def test_zen4_bf16_peak_doubles_its_float32_width() -> None:
    peaks = {c.dtype: c for c in derived_ceilings(ZEN4)}
    # 2 cores x 2596 MHz x 2 x 8 lanes x 2 FLOP x 2 (bf16 pairs) = 332.288 GFLOP/s
    assert peaks["bfloat16"].gflops == pytest.approx(332.288) and "vdpbf16ps" in peaks["bfloat16"].method


def test_amx_is_not_counted_in_the_bf16_peak() -> None:
    fp = _cpu("GenuineIntel", 6, 0x8F, ["fma", "avx512f", "avx512_bf16", "amx_bf16"], 1, 2000.0)
    bf16 = next(c for c in derived_ceilings(fp) if c.dtype == "bfloat16")
    assert bf16.gflops == pytest.approx(2000 * 128 / 1e3) and "AMX tile units not counted" in bf16.method


def test_a_peak_below_a_measured_gemm_says_the_clock_is_higher() -> None:
    """This VM's example: /proc/cpuinfo says 2596 MHz, the 2-thread GEMM measured 209 GFLOP/s."""
    gemm = Ceiling("gemm", "compute", "measured", threads=2, gflops=209.0, shape=(2048, 512, 256))
    slower = Ceiling("gemm", "compute", "measured", threads=1, gflops=102.0, shape=(1024, 1024, 1024))
    gpu = Ceiling("gemm", "compute", "measured", device="cuda:0", gflops=5e4, shape=(8192, 8192, 8192))
    bf16 = Ceiling("gemm", "compute", "measured", threads=2, dtype="bfloat16", gflops=300.0, shape=(1024,) * 3)
    peaks = {c.dtype: c for c in derived_ceilings(ZEN4, iter([slower, gemm, gpu, bf16]))}
    f32 = peaks["float32"]
    # the figure stays at the reported clock (166.144), and says why it is under the GEMM: 209 GFLOP/s on
    # 2 cores at 32 FLOP/cycle needs 209e3 / 64 = 3265.6 MHz at least
    assert f32.gflops == pytest.approx(166.144)
    assert "below the measured gemm/2048x512x256/2t/float32 (209 GFLOP/s)" in f32.method
    assert "faster than the reported 2596 MHz" in f32.method and "at least 3266 MHz" in f32.method
    assert f32.warnings and "assumed width" not in f32.method  # Zen 4's width is known: the clock is low
    # bf16: 300 < 332.3, no note (the GPU's 50 TFLOP/s and the float32 GEMM are other devices / dtypes)
    assert not peaks["bfloat16"].warnings and "below" not in peaks["bfloat16"].method
    # one GEMM at 1 thread above the whole 2-core peak: implied per core, 400e3 / (1 x 32) = 12500 MHz
    (one,) = [c for c in derived_ceilings({**ZEN4, "isa_flags": ["avx2", "fma"]},
                                          [replace(slower, gflops=400.0)])]  # fmt: skip
    assert "at least 12500 MHz" in one.method


def test_an_assumed_width_under_a_gemm_may_be_the_width() -> None:
    fp = _cpu("GenuineIntel", 6, 0x8F, ["fma", "avx512f"], 1, 1000.0)  # 1 x 1000 x 64 = 64 GFLOP/s, assumed
    gemm = Ceiling("gemm", "compute", "measured", threads=1, gflops=80.0, shape=(1024,) * 3)
    (c,) = derived_ceilings(fp, [gemm])
    assert c.gflops == pytest.approx(64.0) and "at least 1250 MHz" in c.method
    assert "or the assumed width is too narrow" in c.method


def test_gpu_dram_peak_derived_from_clock_and_bus() -> None:
    fp = {"gpus": [{"name": "x", "memory_clock_mhz": 2619.0, "bus_width_bits": 5120}]}
    (c,) = derived_ceilings(fp)
    assert c.gbps == pytest.approx(2619.0 * 5120 * 2 / 8 / 1e3) and c.device == "cuda:0"


def test_record_round_trip_and_validation() -> None:
    c = Ceiling("triad", "bandwidth", "measured", level="DRAM", threads=2, gbps=20.0, warnings=["noisy"])
    assert c.key == "triad/DRAM/2t/float32"
    assert Ceiling.from_dict(c.to_dict()) == c
    with pytest.raises(ValueError):
        Ceiling("triad", "bandwidth", "guessed", gbps=1.0).validate()
    with pytest.raises(ValueError):
        Ceiling("gemm", "compute", "measured").validate()


def test_tiny_measured_triad_is_positive() -> None:
    c = ceilings.stream_ceiling("triad", "L1d", 12 << 10, 1, {"warmup_ms": 1.0, "rep_ms": 5.0})
    assert c.source == "measured" and c.gbps > 0 and c.n_samples >= 5


def test_skewed_arrays_sit_at_distinct_page_offsets() -> None:
    arrays = ceilings.skewed_arrays(3, 3000)
    assert [a.shape for a in arrays] == [(3000,)] * 3
    assert [float(a[0]) for a in arrays] == [1.0, 2.0, 3.0] and all(float(a[-1]) == a[0] for a in arrays)
    offsets = [a.ctypes.data % 4096 for a in arrays]
    assert offsets == [0, 1024, 2048]
    ends = [(a.ctypes.data, a.ctypes.data + a.nbytes) for a in arrays]
    assert all(ends[i][1] <= ends[i + 1][0] for i in range(len(ends) - 1))  # no overlap


def test_gather_ceiling_times_kernels_on_cache_line_aligned_rows(monkeypatch) -> None:
    """numpy starts a large array 16 bytes into a page: every 256-byte row then spans five cache lines.

    Timed on such rows the kernels ran up to 2x slower than on the aligned tables sweeps use, so
    sweep points exceeded their own roof. The probe sees the table each kernel is timed on.
    """
    import types

    import kernels

    seen = []

    def probe(table, idx, offsets):
        seen.append((table.data_ptr() % 64, float(table.sum()), table.numel()))
        return torch.ops.aten.embedding_bag(table, idx, offsets, False, 0)[0]  # torch's own, for a timing

    entry = types.SimpleNamespace(name="probe", available=True, devices=("cpu",), fn=probe)
    monkeypatch.setattr(kernels, "list_kernels", lambda: [entry])
    c = ceilings._gather_ceiling(64, 1 << 20, 1, {"warmup_ms": 1.0, "rep_ms": 2.0})  # mmap-sized: 16 mod 64 unaligned
    assert seen and all(s == (0, 4096.0 * 64, 4096 * 64) for s in seen)  # aligned, every row of 64 ones
    assert c.shape == (4096, 64, 32) and c.gbps > 0 and "kernel probe" in c.method


def test_a_many_thread_ceiling_below_fewer_threads_takes_their_value() -> None:
    def bw(level: str, threads: int, gbps: float, dtype: str = "float32") -> Ceiling:
        return Ceiling("copy", "bandwidth", "measured", level=level, threads=threads, dtype=dtype, gbps=gbps)

    gemm2 = Ceiling("gemm", "compute", "measured", threads=2, gflops=50.7, shape=(1024, 1024, 1024))
    gemm1 = Ceiling("gemm", "compute", "measured", threads=1, gflops=83.7, shape=(1024, 1024, 1024))
    peak = Ceiling("fma_peak", "compute", "derived", threads=2, gflops=10.0)
    given = [bw("L1d", 2, 8.4), bw("L1d", 1, 235.2), bw("L1d", 4, 300.0), bw("L2", 2, 200.0), bw("L2", 1, 115.0),
             bw("L1d", 2, 5.0, "bfloat16"), gemm2, gemm1, peak]  # fmt: skip
    out = ceilings.monotone_in_threads(given)
    assert [c.key for c in out] == [c.key for c in given]  # same order, same ceilings
    assert [c.value for c in out] == [235.2, 235.2, 300.0, 200.0, 115.0, 5.0, 83.7, 83.7, 10.0]
    assert out[0].warnings == ["measured 8.4 at 2 threads, below 235 at 1: a slowed run; the 1-thread value stands"]
    assert out[6].warnings and not any(c.warnings for i, c in enumerate(out) if i not in (0, 6))
    printed = ceilings._line(out[0])  # the table machine --ceilings prints says which value it shows
    assert "235.2 GB/s" in printed and printed.endswith("(measured 8.4: a slowed run; the fewer-thread value stands)")
    assert "(" not in ceilings._line(out[1])
    assert ceilings.Ceiling.from_dict(out[0].to_dict()).measured_value == 8.4  # kept in machine.json


def test_a_borrowed_value_names_the_run_it_came_from() -> None:
    runs = [Ceiling("copy", "bandwidth", "measured", level="L2", threads=t, gbps=v) for t, v in ((1, 100.0), (2, 9.0),
                                                                                               (4, 7.0))]  # fmt: skip
    out = ceilings.monotone_in_threads(runs)
    assert [c.value for c in out] == [100.0, 100.0, 100.0]
    assert out[2].warnings == ["measured 7 at 4 threads, below 100 at 1: a slowed run; the 1-thread value stands"]


def test_stream_loops_cover_every_element_when_chunks_do_not_divide_it() -> None:
    from profiler.stream import kernels

    k = kernels()
    a = np.arange(10, dtype=np.float32)
    b = np.full(10, -1.0, dtype=np.float32)
    k["copy"](a, b, 3, 1)  # 10 elements over 3 chunks: 3, 3, 4
    np.testing.assert_array_equal(b, a)
    c = np.ones(10, dtype=np.float32)
    k["triad"](b, a, c, np.float32(2.0), 4, 1)  # b = a + 2 * c
    np.testing.assert_array_equal(b, a + 2.0)
    table = np.array([[1, 2], [3, 4], [5, 6]], dtype=np.float32)
    idx = np.array([0, 0, 1, 1, 2, 2], dtype=np.int64)  # 3 bags of 2 lookups
    out = np.full((3, 2), -7.0, dtype=np.float32)
    k["gather"](table, idx, out, 2, 2)  # 3 bags over 2 chunks: the last bag too
    np.testing.assert_array_equal(out, [[2, 4], [6, 8], [10, 12]])
    out[:] = -7.0
    k["gather"](table, idx, out, 2, 4)  # more chunks than bags
    np.testing.assert_array_equal(out, [[2, 4], [6, 8], [10, 12]])


# Timing fixed, so each ceiling's number can be checked against bytes or FLOPs counted by hand.
# The fast time is the 10th percentile (numpy's default quantile): here the second smallest of 11,
# which is neither the minimum nor the median.
SAMPLES = [4e-3, 1e-3, 2e-3, 9e-3, 3e-3, 5e-3, 8e-3, 6e-3, 7e-3, 1.5e-3, 2.5e-3]
BUDGET = {"warmup_ms": 1.0, "rep_ms": 1.0}


def _fixed_measure(*sample_sets: list[float], run: bool = True):
    """A stand-in for profiler.timer.measure: calls fn once (so spies see the work), returns the next fixed samples."""
    left = list(sample_sets)

    def fake(fn, *, threads=None, device="cpu", **_budget) -> Measurement:
        if run:
            fake.results.append(fn())
        return Measurement(samples_s=list(left.pop(0)), threads=threads or 1, device=device)

    fake.results = []
    return fake


def _stream_spies(monkeypatch) -> list[tuple]:
    """Replace the numba STREAM loops by spies recording (arrays, threads, reps) of each call."""
    import profiler.stream

    calls: list[tuple] = []

    def copy(a, b, threads, reps):
        calls.append(((a, b), threads, reps))

    def triad(a, b, c, s, threads, reps):
        calls.append(((a, b, c), threads, reps))

    monkeypatch.setattr(profiler.stream, "kernels", lambda: {"copy": copy, "triad": triad})
    return calls


@pytest.mark.parametrize(("kind", "narrays"), [("copy", 2), ("triad", 3)])  # STREAM: copy b=a 2 words, triad 3
def test_stream_gbps_is_stream_bytes_of_every_sweep_over_the_fast_time(monkeypatch, kind, narrays) -> None:
    calls = _stream_spies(monkeypatch)
    monkeypatch.setattr(ceilings, "measure", _fixed_measure(SAMPLES))
    ws = 256 << 10
    c = ceilings.stream_ceiling(kind, "L2", ws, 2, BUDGET)
    ((arrays, threads, reps),) = calls
    n = arrays[0].size
    assert len(arrays) == narrays and all(a.size == n and a.dtype == np.float32 for a in arrays) and threads == 2
    one_sweep = narrays * 4 * n  # float32: each array read or written once per sweep, no write-allocate
    assert one_sweep <= ws and c.working_set_bytes == one_sweep
    assert reps > 1  # cache-resident: swept many times per timed call, about 64 MiB counted per call
    assert (64 << 20) - one_sweep < reps * one_sweep <= 64 << 20
    fast_s = float(np.quantile(SAMPLES, 0.10))
    assert c.gbps == pytest.approx(reps * one_sweep / fast_s / 1e9, rel=1e-12)
    assert c.fast_s == pytest.approx(fast_s) and c.level == "L2" and c.name == kind


@pytest.mark.parametrize("torch_faster", [True, False])
def test_l3_triad_counts_the_faster_of_the_loop_and_torch(monkeypatch, torch_faster) -> None:
    calls = _stream_spies(monkeypatch)
    adds = []
    real_add = torch.add

    def add(*args, **kw):
        adds.append(kw["out"].numel())
        return real_add(*args, **kw)

    monkeypatch.setattr(torch, "add", add)
    slow = [2 * s for s in SAMPLES]
    loop_samples, torch_samples = (slow, SAMPLES) if torch_faster else (SAMPLES, slow)
    monkeypatch.setattr(ceilings, "measure", _fixed_measure(loop_samples, torch_samples))
    c = ceilings.stream_ceiling("triad", "L3", 1 << 20, 1, BUDGET)
    ((arrays, _, reps),) = calls
    n = arrays[0].size
    assert reps > 1 and adds == [n] * reps  # torch's timed call does the same sweeps as the loop's
    fast_s = float(np.quantile(SAMPLES, 0.10))
    assert c.gbps == pytest.approx(reps * 3 * 4 * n / fast_s / 1e9, rel=1e-12)
    assert c.method.startswith("torch's triad kernel") == torch_faster


def _gather_spy(monkeypatch) -> list[tuple]:
    import profiler.stream

    calls: list[tuple] = []
    monkeypatch.setattr(profiler.stream, "kernels", lambda: {"gather": lambda *args: calls.append(args)})
    return calls


def _embedding_bag_bytes(num_bags: int, lookups: int, dim: int) -> int:
    """By hand: read every looked-up float32 row, the int64 indices and B + 1 int64 offsets; write B rows."""
    return lookups * dim * 4 + lookups * 8 + (num_bags + 1) * 8 + num_bags * dim * 4


def test_gather_gbps_is_embedding_bag_bytes_over_the_fast_time(monkeypatch) -> None:
    import kernels

    calls = _gather_spy(monkeypatch)
    monkeypatch.setattr(kernels, "list_kernels", lambda: [])  # the numba loop alone
    monkeypatch.setattr(ceilings, "measure", _fixed_measure(SAMPLES))
    c = ceilings._gather_ceiling(64, 1 << 20, 1, BUDGET)
    ((table, idx, out, pooling, _),) = calls
    assert table.shape == (4096, 64) and idx.size == out.shape[0] * pooling and out.shape[1] == 64
    fast_s = float(np.quantile(SAMPLES, 0.10))
    assert c.gbps == pytest.approx(_embedding_bag_bytes(out.shape[0], idx.size, 64) / fast_s / 1e9, rel=1e-12)


def test_gather_ceiling_takes_the_fastest_kernel(monkeypatch) -> None:
    import types

    import kernels

    calls = _gather_spy(monkeypatch)
    seen = []

    def probe(table, idx, offsets):
        seen.append((tuple(table.shape), idx.numel(), offsets.tolist()))

    entry = types.SimpleNamespace(name="probe", available=True, devices=("cpu",), fn=probe)
    monkeypatch.setattr(kernels, "list_kernels", lambda: [entry])
    monkeypatch.setattr(ceilings, "measure", _fixed_measure([3 * s for s in SAMPLES], SAMPLES))  # loop, probe
    c = ceilings._gather_ceiling(64, 1 << 20, 1, BUDGET)
    ((_, idx, out, pooling, _),) = calls
    nbags = out.shape[0]
    assert seen and all(s == ((4096, 64), idx.size, list(range(0, idx.size + 1, pooling))) for s in seen)
    fast_s = float(np.quantile(SAMPLES, 0.10))  # the probe's, 3x faster than the loop
    assert c.gbps == pytest.approx(_embedding_bag_bytes(nbags, idx.size, 64) / fast_s / 1e9, rel=1e-12)
    assert "kernel probe" in c.method.split(": ")[-1]


def test_gather_ceiling_calls_rotate_through_index_arrays(monkeypatch) -> None:
    """One index array reused call after call reads the same rows, which then hit in the LLC: the
    DRAM ceiling came out ~5-7% high in quick mode. Successive calls must read other rows."""
    import types

    import kernels

    calls = _gather_spy(monkeypatch)
    seen = []
    entry = types.SimpleNamespace(name="probe", available=True, devices=("cpu",), fn=lambda t, i, o: seen.append(i))
    monkeypatch.setattr(kernels, "list_kernels", lambda: [entry])
    ceilings._gather_ceiling(64, 1 << 20, 1, {"warmup_ms": 1.0, "rep_ms": 2.0})
    loop_idx = [args[1] for args in calls]
    for arrays in (loop_idx, seen):  # numpy arrays to the loop, torch tensors to the kernels
        assert len(arrays) >= 8
        distinct = {id(a): a for a in arrays}.values()  # the same arrays passed again and again
        assert len(distinct) == 4 and len({np.asarray(a).tobytes() for a in distinct}) == 4  # each of other rows
        assert not any(a is b for a, b in itertools.pairwise(arrays[1:]))  # each call, new rows
        rows = np.unique(np.concatenate([np.asarray(a) for a in distinct]))
        assert rows.min() >= 0 and rows.max() < 4096 and rows.size > 0.5 * 4096


def test_gemm_gflops_is_2mkn_over_the_fast_time(monkeypatch) -> None:
    fake = _fixed_measure(SAMPLES)
    monkeypatch.setattr(ceilings, "measure", fake)
    c = ceilings.gemm_ceiling((96, 40, 72), "float32", 1, BUDGET)
    (product,) = fake.results
    assert product.shape == (96, 72)  # the timed call is the (96 x 40) @ (40 x 72) product
    fast_s = float(np.quantile(SAMPLES, 0.10))
    assert c.gflops == pytest.approx(2 * 96 * 40 * 72 / fast_s / 1e9, rel=1e-12)  # a multiply and an add per MAC


def test_device_copy_counts_a_read_and_a_write(monkeypatch) -> None:
    """_gpu_ceilings on the CPU: its timed copy_ returns the destination; the GEMMs are not run."""
    copied = []

    def fake(fn, *, threads=None, device="cpu", **_budget) -> Measurement:
        if not copied:
            copied.append(fn())  # the first timed call is the copy
        return Measurement(samples_s=list(SAMPLES), threads=threads or 1, device=device)

    monkeypatch.setattr(ceilings, "measure", fake)
    found: list[Ceiling] = []
    ceilings._gpu_ceilings("cpu", True, BUDGET, found.append)
    (dst,) = copied
    copy = next(c for c in found if c.name == "copy")
    fast_s = float(np.quantile(SAMPLES, 0.10))
    assert copy.gbps == pytest.approx(2 * dst.numel() * 4 / fast_s / 1e9, rel=1e-12)
    assert copy.working_set_bytes == 2 * dst.numel() * 4


def test_an_l3_not_above_twice_the_l2_set_is_left_out() -> None:
    # one thread: L2 set 1 MiB / 2 = 512 KiB. An L3 of 1.5 MiB gives a 768 KiB set, above the L2 set
    # but not above twice it (1 MiB): left out. An L3 of 2.5 MiB (1.25 MiB set) is kept.
    def fp(l3: int) -> dict:
        return {"caches": {"L2": {"size_bytes": 1 << 20}, "L3": {"size_bytes": l3, "instances": 1}}}

    assert "L3" not in level_working_sets(fp(3 << 19), 1)
    assert level_working_sets(fp(5 << 19), 1)["L3"] == 5 << 18


def test_the_dram_set_covers_every_l3_instance() -> None:
    # 4 instances of a 32 MiB L3: 128 MiB of L3 together, so the DRAM set is 4 x 128 MiB = 512 MiB;
    # the L3 set is half of one instance (16 MiB)
    fp = {"caches": {"L2": {"size_bytes": 1 << 20}, "L3": {"size_bytes": 32 << 20, "instances": 4}}}
    sets = level_working_sets(fp, 1)
    assert sets["DRAM"] == 512 << 20 and sets["L3"] == 16 << 20


def test_derived_peak_of_an_avx2_machine_by_hand() -> None:
    # 2 cores x 2500 MHz x 2 FMA units x 8 lanes (256-bit) x 2 FLOP = 160 GFLOP/s; no bf16 record
    fp = {"affinity_cpus": 2, "cpu_mhz": 2500.0, "isa_flags": ["avx", "avx2", "fma"]}
    (c,) = derived_ceilings(fp)
    assert c.gflops == pytest.approx(160.0) and c.dtype == "float32"


def test_measure_ceilings_keeps_the_best_round(monkeypatch) -> None:
    """Full mode measures every ceiling in 3 rounds; a neighbour slowing some rounds must not set the figure."""
    rounds = {"copy": iter([5.0, 9.0, 7.0]), "triad": iter([8.0, 4.0, 6.0])}
    rounds |= {dim: iter([2.0 * dim, 3.0 * dim, 1.0 * dim]) for dim in (16, 64, 128)}
    gemm = iter([30.0, 50.0, 40.0] * 10)

    def stream(kind, level, ws, t, budget):
        return Ceiling(kind, "bandwidth", "measured", level=level, threads=t, gbps=next(rounds[kind]))

    def gather(dim, table_bytes, t, budget):
        return Ceiling("gather", "bandwidth", "measured", level="DRAM", threads=t, gbps=next(rounds[dim]),
                       shape=(1, dim, 32))  # fmt: skip

    def gemm_(shape, dtype, t, budget):
        return Ceiling("gemm", "compute", "measured", threads=t, dtype=dtype, shape=shape, gflops=next(gemm))

    monkeypatch.setattr(ceilings, "stream_ceiling", stream)
    monkeypatch.setattr(ceilings, "_gather_ceiling", gather)
    monkeypatch.setattr(ceilings, "gemm_ceiling", gemm_)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fp = {"affinity_cpus": 1, "caches": {}}  # no caches known: DRAM only; no cores x MHz: no derived peak
    got = {(c.name, c.shape[1] if c.name == "gather" else None): c for c in
           ceilings.measure_ceilings(fp, quick=False, thread_counts=(1,))}  # fmt: skip
    assert got[("copy", None)].gbps == 9.0 and got[("triad", None)].gbps == 8.0
    assert [got[("gather", dim)].gbps for dim in (16, 64, 128)] == [48.0, 192.0, 384.0]  # round 2's
    assert "best of 3 rounds" in got[("copy", None)].method


def test_measure_ceilings_checks_the_derived_peak_against_its_gemms(monkeypatch) -> None:
    """The derived peak is computed after the GEMMs are measured, so a peak below one is stored with why."""
    monkeypatch.setattr(ceilings, "stream_ceiling",
                        lambda kind, level, ws, t, budget: Ceiling(kind, "bandwidth", "measured", level=level,
                                                                   threads=t, gbps=1.0))  # fmt: skip
    monkeypatch.setattr(ceilings, "_gather_ceiling",
                        lambda dim, tb, t, budget: Ceiling("gather", "bandwidth", "measured", level="DRAM",
                                                           threads=t, gbps=1.0, shape=(1, dim, 32)))  # fmt: skip
    monkeypatch.setattr(ceilings, "gemm_ceiling",
                        lambda shape, dtype, t, budget: Ceiling("gemm", "compute", "measured", threads=t, dtype=dtype,
                                                                shape=shape, gflops=100.0 * t))  # fmt: skip
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    fp = {**ZEN4, "isa_flags": ["avx2", "fma"], "caches": {}}  # 2 x 2596 x 32 = 166.1; the 2-thread GEMM: 200
    peak = next(c for c in ceilings.measure_ceilings(fp, quick=True, thread_counts=(1, 2)) if c.source == "derived")
    assert peak.gflops == pytest.approx(166.144) and "below the measured gemm/" in peak.method
    assert "at least 3125 MHz" in peak.method  # 200e3 / (2 cores x 32 FLOP/cycle)
