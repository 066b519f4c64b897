"""numba_w1/w4/w8/w16 against torch.nn.functional.embedding_bag: forward, gradients, fused SGD, and the ISA."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

import kernels
from kernels.registry import list_kernels

numba_bag = pytest.importorskip("kernels.numba_bag")
if numba_bag.numba is None:
    pytest.skip("numba is not importable", allow_module_level=True)

NAMES = [f"numba_w{w}" for w in numba_bag.WIDTHS]
ATOL = 1e-5

# A jagged batch of 6 bags over a 40-row table; bags 1 and 4 are empty:
#   bag:      0         1    2                3     4    5
#   indices: [3 7 3] | [] | [0 39 5 5 12] | [8] | [] | [1 2 3 38]
_LENGTHS = [3, 0, 5, 1, 0, 4]
_INDICES = [3, 7, 3, 0, 39, 5, 5, 12, 8, 1, 2, 3, 38]
_ROWS = 40


def _batch(dim: int, dtype: torch.dtype = torch.int64, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(_ROWS, dim, generator=g)
    indices = torch.tensor(_INDICES, dtype=dtype)
    offsets = torch.tensor([0, *torch.tensor(_LENGTHS).cumsum(0).tolist()], dtype=dtype)
    psw = torch.rand(len(_INDICES), generator=g)
    return weight, indices, offsets, psw


def _reference(weight, indices, offsets, psw, sparse=False):
    return F.embedding_bag(
        indices,
        weight,
        offsets.to(indices.dtype),
        mode="sum",
        per_sample_weights=psw,
        include_last_offset=True,
        sparse=sparse,
    )


def _grads(name, weight, indices, offsets, psw, sparse):
    """(out, weight grad as dense, psw grad) from kernel `name` (or torch when name is None)."""
    w = weight.clone().requires_grad_()
    p = None if psw is None else psw.clone().requires_grad_()
    if name is None:
        out = _reference(w, indices, offsets, p, sparse)
    else:
        out = kernels.embedding_bag(name, w, indices, offsets, p, sparse=sparse)
    out.backward(torch.linspace(-1, 1, out.numel()).reshape(out.shape))
    gw = w.grad.to_dense() if w.grad.is_sparse else w.grad
    return out.detach(), gw, None if p is None else p.grad


def test_registered_with_description():
    entries = {e.name: e for e in list_kernels()}
    for name in NAMES:
        assert entries[name].available, entries[name].reason
        assert entries[name].backend == "numba"


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dim", [1, 3, 17, 129])
@pytest.mark.parametrize("weighted", [False, True])
def test_forward_matches_torch(name, dim, weighted):
    weight, indices, offsets, psw = _batch(dim)
    psw = psw if weighted else None
    out = kernels.embedding_bag(name, weight, indices, offsets, psw)
    torch.testing.assert_close(out, _reference(weight, indices, offsets, psw), atol=ATOL, rtol=1e-5)
    assert out[1].abs().sum() == 0 and out[4].abs().sum() == 0  # empty bags pool to zeros


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("sparse", [True, False])
@pytest.mark.parametrize("dim", [17, 129])
def test_gradients_match_torch(name, sparse, dim):
    weight, indices, offsets, psw = _batch(dim, seed=1)
    got = _grads(name, weight, indices, offsets, psw, sparse)
    want = _grads(None, weight, indices, offsets, psw, sparse)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_int32_indices_and_mixed_offsets(name):
    weight, indices, offsets, psw = _batch(3, torch.int32, seed=2)
    for off in (offsets, offsets.long()):  # int32 offsets, then int64 offsets with int32 indices
        got = _grads(name, weight, indices, off, psw, sparse=True)
        want = _grads(None, weight, indices, off, psw, sparse=True)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, atol=ATOL, rtol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_parallel_path_matches_torch(name):
    """Large enough to take the parallel region on 2 threads; variable bag lengths test the chunking."""
    g = torch.Generator().manual_seed(3)
    lengths = torch.randint(0, 12, (700,), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    indices = torch.randint(0, 500, (int(offsets[-1]),), generator=g)
    weight = torch.randn(500, 24, generator=g)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        out = kernels.embedding_bag(name, weight, indices, offsets)
        vals = numba_bag.get_numba_bag(name).lookup_grads(torch.ones(700, 24), indices, offsets)
    finally:
        torch.set_num_threads(before)
    torch.testing.assert_close(out, _reference(weight, indices, offsets, None), atol=1e-4, rtol=1e-5)
    assert vals.shape == (indices.numel(), 24) and bool((vals == 1).all())


@pytest.mark.parametrize("name", NAMES)
def test_fused_sgd_matches_torch_and_is_thread_count_independent(name):
    weight, indices, offsets, psw = _batch(17, seed=4)
    grad_out = torch.randn(len(_LENGTHS), 17)
    lr = 0.05
    _, dense_grad, _ = _grads(None, weight, indices, offsets, psw, sparse=False)  # grad of sum(out * ramp)
    ramp = torch.linspace(-1, 1, grad_out.numel()).reshape(grad_out.shape)
    bag = numba_bag.get_numba_bag(name)
    results = []
    before = torch.get_num_threads()
    for threads in (1, 2):
        torch.set_num_threads(threads)
        w = weight.clone()
        bag.sgd_(w, indices, offsets, ramp, lr, psw)
        results.append(w)
    torch.set_num_threads(before)
    torch.testing.assert_close(results[0], weight - lr * dense_grad, atol=ATOL, rtol=1e-5)
    assert torch.equal(results[0], results[1])  # each row is updated by one thread, in lookup order


@pytest.mark.parametrize("name", ["numba_w1", "numba_w16"])
def test_degenerate_batches(name):
    weight = torch.randn(5, 4)
    no_bags = kernels.embedding_bag(name, weight, torch.zeros(0, dtype=torch.int64), torch.zeros(1, dtype=torch.int64))
    assert no_bags.shape == (0, 4)
    no_lookups = kernels.embedding_bag(
        name, weight, torch.zeros(0, dtype=torch.int64), torch.zeros(3, dtype=torch.int64)
    )
    assert torch.equal(no_lookups, torch.zeros(2, 4))
    one_row = kernels.embedding_bag(name, weight[:1], torch.zeros(3, dtype=torch.int64), torch.tensor([0, 3]))
    torch.testing.assert_close(one_row, 3 * weight[:1])


def test_unsupported_inputs_say_what_to_use():
    with pytest.raises(NotImplementedError, match="torch"):
        kernels.embedding_bag("numba_w8", torch.randn(4, 3).half(), torch.tensor([1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="out of range"):  # validated before the unchecked kernel runs
        kernels.embedding_bag("numba_w8", torch.randn(4, 3), torch.tensor([4]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="width"):
        numba_bag.make_numba_bag(2)


def _host_has_avx512() -> str:
    """Empty when the w16/w4 register check can run here, else the reason to skip."""
    from llvmlite import binding

    if os.environ.get("NUMBA_CPU_NAME") or os.environ.get("NUMBA_CPU_FEATURES") is not None:
        return "NUMBA_CPU_NAME/NUMBA_CPU_FEATURES narrow the ISA in this process"
    features = binding.get_host_cpu_features()
    if not features.get("avx512f"):
        return f"the host CPU ({binding.get_host_cpu_name()}) lacks AVX-512F"
    return ""


@pytest.mark.skipif(bool(_host_has_avx512()), reason=_host_has_avx512() or "n/a")
def test_width_is_real_in_the_assembly():
    from kernels.asm import kernel_vector_usage

    w16, _ = kernel_vector_usage("numba_w16")
    assert w16.packed["z"] > 0, w16  # 16-lane adds/FMAs on zmm
    w4, _ = kernel_vector_usage("numba_w4")
    assert w4.registers["y"] == 0 and w4.registers["z"] == 0, w4  # xmm only
    assert w4.packed["x"] > 0, w4


def test_without_numba_the_widths_list_as_unavailable():
    import subprocess
    import sys

    code = (
        "import sys; sys.modules['numba'] = None\n"
        "from kernels.registry import list_kernels\n"
        "e = {k.name: k for k in list_kernels()}['numba_w16']\n"
        "print(e.available, e.reason)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.startswith("False numba is not importable"), out


@pytest.mark.parametrize("name", NAMES[-1:])
def test_mixed_index_types_past_int32_lookups_widen_not_wrap(name, monkeypatch):
    # int32 indices with int64 offsets used to narrow the offsets to int32; past 2^31 - 1 lookups they wrapped
    # (a silently wrong sum, or a read out of bounds). The limit is lowered here so 13 lookups cross it.
    monkeypatch.setattr(numba_bag, "INT32_MAX", 4)
    built = numba_bag._kernels
    bits = []
    monkeypatch.setattr(numba_bag, "_kernels", lambda w, ib, fb=32: (bits.append(ib), built(w, ib, fb))[1])
    weight, indices, offsets, psw = _batch(3, torch.int32, seed=4)
    got = kernels.embedding_bag(name, weight, indices, offsets.long(), psw)
    assert bits == [64]  # the int64 loop: narrowing the offsets to int32 would have wrapped them
    torch.testing.assert_close(got, _reference(weight, indices, offsets, psw), atol=ATOL, rtol=1e-5)
    kernels.embedding_bag(name, weight, indices[:4], torch.tensor([0, 4]), psw[:4])  # 4 lookups: under the limit
    assert bits == [64, 32]


def test_inputs_on_another_device_than_the_table_are_refused():
    weight, indices, offsets, psw = _batch(3)
    # a compiled CPU loop would read a device pointer; "meta" stands in for a GPU on CPU-only machines
    with pytest.raises(ValueError, match="indices on meta, offsets on meta, but the table on cpu"):
        kernels.embedding_bag("numba_w16", weight, indices.to("meta"), offsets.to("meta"))
    with pytest.raises(ValueError, match="per_sample_weights on meta, but the table on cpu"):
        kernels.embedding_bag("numba_w16", weight, indices, offsets, psw.to("meta"))


def test_grad_out_of_the_wrong_shape_is_refused():
    bag = numba_bag.get_numba_bag("numba_w16")
    weight, indices, offsets, _ = _batch(3)
    with pytest.raises(ValueError, match=r"grad_out has shape \(1, 3\), the 6 bags need \(6, 3\)"):
        bag.sgd_(weight, indices, offsets, torch.zeros(1, 3), 0.1)
    with pytest.raises(ValueError, match=r"grad_out has shape \(6,\), the 6 bags need \(6, D\)"):
        bag.lookup_grads(torch.zeros(6), indices, offsets)


def test_the_fused_update_checks_offsets_and_weights_on_cpu():
    from kernels.update import sgd_from_bags

    weight, indices, offsets, psw = _batch(3)
    g = torch.ones(6, 3)
    for bad, kwargs, message in [
        ("offsets past the rows", {"offsets": torch.tensor([0, 2, 4, 6, 8, 10, 64])}, "overruns the 13 indices"),
        ("float offsets", {"offsets": offsets.double()}, "offsets must be int32 or int64"),
        ("short weights", {"per_sample_weights": psw[:5]}, r"per_sample_weights has shape \(5,\)"),
    ]:
        args = {"offsets": offsets, "per_sample_weights": psw} | kwargs
        before = weight.clone()
        with pytest.raises(ValueError, match=message):
            sgd_from_bags(weight, indices, args["offsets"], g, args["per_sample_weights"], 0.1)
        assert torch.equal(weight, before), bad  # refused before any row was touched


def test_fused_sgd_bag_checks_rows_once_before_its_forward(monkeypatch):
    import kernels.validate

    fn = kernels.get("numba_w16").fn
    weight = torch.zeros(5, 16, requires_grad=True)
    with pytest.raises(ValueError, match=r"fused_sgd_bag: index 5 at position 1 \(bag 0\) is out of range \[0, 5\)"):
        kernels.fused_sgd_bag(fn, weight, torch.tensor([1, 5]), torch.tensor([0, 2]), 0.1)  # used to segfault
    seen = []
    check = kernels.validate.validate_bags
    monkeypatch.setattr(
        kernels.validate, "validate_bags", lambda *a, **k: (seen.append(k.get("where")), check(*a, **k))
    )
    kernels.fused_sgd_bag(fn, weight, torch.tensor([1, 4]), torch.tensor([0, 2]), 0.1).sum().backward()
    assert seen == ["fused_sgd_bag"]  # once for the forward and the update, not again in the backward
    assert weight.detach()[[1, 4]].eq(-0.1).all() and weight.detach()[[0, 2, 3]].eq(0).all()  # each row: -lr * 1


@pytest.mark.parametrize("name", ["numba_w1", "numba_w4"])
def test_float64_or_strided_per_sample_weights_on_a_float32_table(name):
    # the registry refuses a psw dtype other than the table's; NumbaBag's own methods convert it
    weight, indices, offsets, psw = _batch(5, seed=7)
    want = _reference(weight, indices, offsets, psw)
    with pytest.raises(ValueError, match="match them"):
        kernels.embedding_bag(name, weight, indices, offsets, psw.double())
    bag = numba_bag.get_numba_bag(name)
    for p in (psw.double(), torch.stack([psw, psw], 1)[:, 0]):  # another dtype; a non-contiguous view
        torch.testing.assert_close(bag.forward(weight, indices, offsets, p), want, atol=ATOL, rtol=1e-5)
        g = torch.randn(len(_LENGTHS), 5)
        bags = torch.repeat_interleave(torch.arange(len(_LENGTHS)), torch.tensor(_LENGTHS))
        torch.testing.assert_close(bag.lookup_grads(g, indices, offsets, p), psw[:, None] * g[bags])


def test_a_float64_table_is_sized_by_its_own_bytes_for_the_auto_prefetch(monkeypatch):
    # a 24 MiB float64 table was sized as float32 (12 MiB, under AUTO_PREFETCH_MIN_BYTES): no prefetch
    rows, dim = 49_152, 64  # 24 MiB as float64, 12 MiB as float32
    dists = []
    built = numba_bag._kernels

    def spy(w, ib, fb=32):
        k = built(w, ib, fb)
        return type(k)(lambda *a: (dists.append(a[13]), k.serial(*a))[1], k.parallel)

    monkeypatch.setattr(numba_bag, "_kernels", spy)
    weight = torch.zeros(rows, dim, dtype=torch.float64)
    indices, offsets = torch.tensor([0, rows - 1]), torch.tensor([0, 1, 2])
    numba_bag.make_numba_bag(4).forward(weight, indices, offsets)
    numba_bag.make_numba_bag(4).forward(weight.float(), indices, offsets)
    assert dists == [numba_bag.DEFAULT_PREFETCH_ROWS, 0]


def test_the_fused_sgd_update_prefetches_from_a_smaller_table_than_the_forward(monkeypatch):
    # hand-computed: the forward prefetches from 16 MiB, the SGD update from 12 MiB (both count the dtype's bytes)
    bag, mib, on = numba_bag.make_numba_bag(4), 1 << 20, numba_bag.DEFAULT_PREFETCH_ROWS
    assert [bag.prefetch_distance(n * mib) for n in (8, 12, 14, 16)] == [0, 0, 0, on]
    assert [bag.prefetch_distance(n * mib, sgd=True) for n in (8, 12, 14, 16)] == [0, on, on, on]
    assert bag.prefetch_distance(12 * mib - 1, sgd=True) == 0
    assert numba_bag.make_numba_bag(4, prefetch_rows=0).prefetch_distance(64 * mib, sgd=True) == 0  # forced
    # and sgd_ asks for the SGD threshold: a 12 MiB float64 table (6 MiB as float32) prefetches in sgd_ only
    rows, dim = 24_576, 64
    dists = []
    built = numba_bag._kernels

    def spy(w, ib, fb=32):
        k = built(w, ib, fb)
        return type(k)(lambda *a: (dists.append((a[0], a[13])), k.serial(*a))[1], k.parallel)

    monkeypatch.setattr(numba_bag, "_kernels", spy)
    indices, offsets = torch.tensor([0, rows - 1]), torch.tensor([0, 1, 2])
    for dtype in (torch.float64, torch.float32):
        weight = torch.zeros(rows, dim, dtype=dtype)
        numba_bag.make_numba_bag(4).forward(weight, indices, offsets)
        numba_bag.make_numba_bag(4).sgd_(weight, indices, offsets, torch.ones(2, dim, dtype=dtype), 0.1)
    fwd, sgd = numba_bag.numba_simd.Op.FORWARD, numba_bag.numba_simd.Op.SGD
    assert dists == [(fwd, 0), (sgd, on), (fwd, 0), (sgd, 0)]


@pytest.mark.parametrize("width", numba_bag.WIDTHS)
@pytest.mark.parametrize("prefetch", [1, 3, 32])
def test_forward_with_prefetch_matches_torch_for_every_tile_shape(width, prefetch):
    # the prefetching loops (whole rows up to 128 B, else each tile's lines, split at kend - dist) ran in no
    # test: tables here are under the 16 MiB auto threshold. Every D to 200 (whole and tiled, every tail),
    # int32/int64, float32/64, weighted or not, bags of 0-40 with empty ones at each end, 1 and 2 chunks.
    g = torch.Generator().manual_seed(width * 100 + prefetch)
    bag = numba_bag.make_numba_bag(width, prefetch_rows=prefetch)
    threads = torch.get_num_threads()
    try:
        for case in range(60):
            dim = 1 + (case * 37 + width) % 200
            idt = (torch.int32, torch.int64)[case % 2]
            fdt = (torch.float32, torch.float64)[case // 2 % 2]
            rows = int(torch.randint(1, 400, (1,), generator=g))
            lengths = torch.randint(0, 41, (int(torch.randint(1, 120, (1,), generator=g)),), generator=g)
            lengths[torch.rand(lengths.numel(), generator=g) < 0.2] = 0
            lengths[0] = lengths[-1] = 0
            indices = torch.randint(0, rows, (int(lengths.sum()),), generator=g, dtype=idt)
            offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]).to(idt)
            weight = torch.randn(rows, dim, generator=g, dtype=fdt)
            psw = torch.randn(indices.numel(), generator=g, dtype=fdt) if case % 3 else None
            torch.set_num_threads(1 + case % 2)  # 2 threads: 2 chunks where the batch is big enough
            got = bag.forward(weight, indices, offsets, psw)
            want = F.embedding_bag(indices.long(), weight, offsets[:-1].long(), mode="sum", per_sample_weights=psw)
            assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (case, dim, idt, fdt)
    finally:
        torch.set_num_threads(threads)


def test_forward_tiles_are_capped_at_256_bytes_of_a_row():
    # numba_w16 float32 reads D=128 as two passes of 4 zmm, not one of 8 (measured faster, numba_simd.MAX_TILE)
    tile = numba_bag.numba_simd._tile
    assert [tile(w, 32) for w in numba_bag.WIDTHS] == [8, 8, 8, 4]
    assert [tile(w, 64) for w in numba_bag.WIDTHS] == [8, 8, 4, 2]


@pytest.mark.parametrize("width", numba_bag.WIDTHS)
@pytest.mark.parametrize("fdt", [torch.float32, torch.float64])
def test_forward_without_prefetch_matches_torch_across_tile_boundaries(width, fdt):
    # D on each side of every tile and pass boundary of 256 B tiles (float32 W=16: 64, 128, 192, 256 columns;
    # float64 W=16: 32, 64, ...), bags of 0-40 with empty ones at each end, weighted and not
    g = torch.Generator().manual_seed(width)
    bag = numba_bag.make_numba_bag(width, prefetch_rows=0)
    for case, dim in enumerate((31, 32, 33, 63, 64, 65, 127, 128, 129, 191, 192, 200, 255, 256, 257)):
        rows = 50
        lengths = torch.randint(0, 41, (30,), generator=g)
        lengths[0] = lengths[-1] = lengths[7] = 0
        lengths[5] = 1
        indices = torch.randint(0, rows, (int(lengths.sum()),), generator=g)
        offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
        weight = torch.randn(rows, dim, generator=g, dtype=fdt)
        psw = torch.randn(indices.numel(), generator=g, dtype=fdt) if case % 2 else None
        got = bag.forward(weight, indices, offsets, psw)
        want = F.embedding_bag(indices, weight, offsets[:-1], mode="sum", per_sample_weights=psw)
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (dim, fdt)
