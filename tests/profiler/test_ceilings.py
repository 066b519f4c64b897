"""profiler.ceilings: working-set sizing and derived peaks by hand, record round trip, one tiny measured sweep."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from profiler import ceilings
from profiler.ceilings import Ceiling, derived_ceilings, level_working_sets

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
    # 2 cores x 2500 MHz x 2 FMA units x 16 lanes x 2 FLOP = 320 GFLOP/s; bf16 dot products double it
    assert peaks["float32"].gflops == pytest.approx(320.0)
    assert peaks["bfloat16"].gflops == pytest.approx(640.0)
    assert all(c.source == "derived" for c in peaks.values())


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
