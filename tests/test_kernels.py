"""Every available embedding-bag kernel against torch's own embedding_bag, forward and gradients."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import kernels

CPU_KERNELS = [e.name for e in kernels.list_kernels() if e.available and "cpu" in e.devices]


def _reference(weight, indices, offsets, psw):
    return F.embedding_bag(
        indices.long(), weight, offsets.long(), mode="sum", per_sample_weights=psw, include_last_offset=True
    )


# Jagged batches, sketched:
#   bags   : [0: 1 2 2] [1: -] [2: 4] [3: -]     (bags 1 and 3 empty, row 2 repeated)
#   indices: 1 2 2 4        offsets: 0 3 3 4 4
CASES = {
    "repeats_and_empty_bags": (6, [1, 2, 2, 4], [0, 3, 3, 4, 4]),
    "single_row_table": (1, [0, 0, 0], [0, 1, 3]),
    "all_bags_empty": (5, [], [0, 0, 0]),
    "no_bags": (4, [], [0]),
    "one_bag_many": (9, [8, 0, 3, 3, 7, 1], [0, 6]),
}


@pytest.mark.parametrize("name", CPU_KERNELS)
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dim", [1, 3, 16])
def test_forward_and_gradients_match_torch(name, case, index_dtype, weighted, dim):
    rows, idx, offs = CASES[case]
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(rows, dim, generator=g)
    indices = torch.tensor(idx, dtype=index_dtype)
    offsets = torch.tensor(offs, dtype=index_dtype)
    psw = torch.rand(len(idx), generator=g) if weighted else None
    grad_out = torch.randn(len(offs) - 1, dim, generator=g)

    w_ref = weight.clone().requires_grad_()
    p_ref = psw.clone().requires_grad_() if weighted else None
    out_ref = _reference(w_ref, indices, offsets, p_ref)
    out_ref.backward(grad_out)

    for sparse in (True, False):
        w = weight.clone().requires_grad_()
        p = psw.clone().requires_grad_() if weighted else None
        out = kernels.embedding_bag(name, w, indices, offsets, p, sparse=sparse)
        assert out.shape == (len(offs) - 1, dim)
        torch.testing.assert_close(out, out_ref)
        out.backward(grad_out)
        assert w.grad.is_sparse == sparse
        torch.testing.assert_close(w.grad.to_dense(), w_ref.grad)
        if weighted:
            torch.testing.assert_close(p.grad, p_ref.grad)


@pytest.mark.parametrize("name", CPU_KERNELS)
def test_gradcheck_float64(name):
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(7, 5, dtype=torch.float64, generator=g, requires_grad=True)
    psw = torch.rand(6, dtype=torch.float64, generator=g, requires_grad=True)
    indices = torch.tensor([0, 6, 6, 2, 3, 0])
    offsets = torch.tensor([0, 2, 2, 5, 6])
    fn = kernels.get(name).fn
    try:
        fn(weight.detach(), indices, offsets, None, "sum", False)
    except NotImplementedError as exc:  # a kernel may be float32-only; it must say so, not compute wrongly
        pytest.skip(f"{name}: {exc}")
    assert torch.autograd.gradcheck(lambda w, p: fn(w, indices, offsets, p, "sum", False), (weight, psw))


def test_int32_indices_into_a_table_past_2_31_rows_are_accepted():
    from kernels.validate import validate_bags

    rows = 2**31 + 5  # more rows than int32 can count: every int32 index >= 0 addresses one
    offsets = torch.tensor([0, 2], dtype=torch.int32)
    validate_bags(rows, torch.tensor([7, 2**31 - 1], dtype=torch.int32), offsets)
    with pytest.raises(ValueError, match=r"index -1 at position 1 \(bag 0\) is out of range \[0, 2147483653\)"):
        validate_bags(rows, torch.tensor([7, -1], dtype=torch.int32), offsets)
    with pytest.raises(ValueError, match=r"index 2147483653 at position 0"):  # int64 still checked at the top
        validate_bags(rows, torch.tensor([2**31 + 5, 0]), torch.tensor([0, 2]))


@pytest.mark.parametrize("name", ["torch", "numba_w4"])
def test_per_sample_weights_of_another_dtype_are_refused_by_every_kernel(name):
    w, idx, off = torch.ones(4, 3), torch.tensor([0, 1]), torch.tensor([0, 2])
    with pytest.raises(ValueError, match=r"per_sample_weights are torch.float64 but the table is torch.float32"):
        kernels.embedding_bag(name, w, idx, off, torch.ones(2, dtype=torch.float64))
    got = kernels.embedding_bag(name, w, idx, off, torch.tensor([2.0, 3.0]))  # same dtype: 2 * row + 3 * row
    torch.testing.assert_close(got, torch.full((1, 3), 5.0))


def test_bad_indices_and_offsets_are_named():
    w = torch.zeros(10, 4)
    with pytest.raises(ValueError, match=r"index 10 at position 2 \(bag 1\) is out of range \[0, 10\)"):
        kernels.embedding_bag("torch", w, torch.tensor([1, 2, 10]), torch.tensor([0, 2, 3]))
    with pytest.raises(ValueError, match=r"index -1 at position 0 \(bag 0\)"):
        kernels.embedding_bag("torch_naive", w, torch.tensor([-1]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match=r"offsets decrease at position 2 \(bag 1\): offsets\[1\] = 3 > offsets\[2\]"):
        kernels.embedding_bag("torch", w, torch.tensor([1, 2, 3]), torch.tensor([0, 3, 1, 3]))
    with pytest.raises(ValueError, match=r"offsets\[-1\] = 5 overruns the 3 indices"):
        kernels.embedding_bag("torch", w, torch.tensor([1, 2, 3]), torch.tensor([0, 2, 5]))
    with pytest.raises(ValueError, match=r"indices must be int32 or int64"):
        kernels.embedding_bag("torch", w, torch.tensor([1.0]), torch.tensor([0, 1]))


def test_table_batched_validation_names_the_table():
    # T=2 tables of 3 and 5 rows, B=2:  table 0: [0 2] [1] | table 1: [4] [5 <- out of range]
    rows = torch.tensor([3, 5])
    indices = torch.tensor([0, 2, 1, 4, 5])
    offsets = torch.tensor([0, 2, 3, 4, 5])
    with pytest.raises(ValueError, match=r"table 1: index 5 at position 1 \(bag 1\) is out of range \[0, 5\)"):
        kernels.validate_tables(rows, indices, offsets, 2)
    ok = torch.tensor([0, 2, 1, 4, 0])
    assert kernels.validate_tables(rows, ok, offsets, 2).tolist() == [0, 0, 0, 1, 1]
    with pytest.raises(ValueError, match=r"2 tables x 3 bags need 7"):
        kernels.validate_tables(rows, ok, offsets, 3)


@pytest.mark.parametrize("dtype", [torch.int32, torch.int64])
def test_fused_rows_matches_a_loop_and_names_bad_indices(dtype):
    g = torch.Generator().manual_seed(3)
    table_rows = torch.tensor([3, 7, 1, 5])
    row_starts = torch.tensor([0, 3, 10, 11, 16])
    B = 6
    lengths = torch.randint(0, 4, (4 * B,), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)]).to(dtype)
    indices, expected = [], []
    for bag, n in enumerate(lengths.tolist()):
        t = bag // B
        for _ in range(n):
            i = int(torch.randint(0, int(table_rows[t]), (), generator=g))
            indices.append(i)
            expected.append(i + int(row_starts[t]))
    indices = torch.tensor(indices, dtype=dtype)
    assert kernels.fused_rows(table_rows, row_starts, indices, offsets, B).tolist() == expected
    for bad in (-1, 7):  # one index of table 1 out of its range [0, 7)
        pos = int(offsets[B]) + 1 if lengths[B] > 1 else int(offsets[B])
        broken = indices.clone()
        broken[pos] = bad
        first_of_table1 = int(offsets[B])
        with pytest.raises(ValueError, match=rf"table 1: index {bad} at position {pos - first_of_table1} "):
            kernels.fused_rows(table_rows, row_starts, broken, offsets, B)
    with pytest.raises(ValueError, match=r"4 tables x 5 bags need 21"):
        kernels.fused_rows(table_rows, row_starts, indices, offsets, 5)
    decreasing = offsets.clone()
    decreasing[8] = decreasing[9] + 1  # bag 8 of the 4 x 6 (table 1's bag 2) ends before it starts
    with pytest.raises(ValueError, match=r"offsets decrease at position 9 \(table 1, bag 2\)"):
        kernels.fused_rows(table_rows, row_starts, indices, decreasing, B)


def test_registry_lookup_errors():
    with pytest.raises(ValueError, match=r"unknown kernel 'nope'; registered kernels: .*torch"):
        kernels.get("nope")
    names = [e.name for e in kernels.list_kernels()]
    assert {"torch", "torch_naive"} <= set(names)
    with pytest.raises(NotImplementedError, match="only 'sum'"):
        kernels.get("torch_naive").fn(torch.zeros(2, 2), torch.tensor([0]), torch.tensor([0, 1]), None, "mean")


def test_validate_tables_names_a_bad_shape_or_device_before_its_range_check():
    rows, offsets = torch.tensor([5, 5]), torch.tensor([0, 1, 2, 3, 4])
    with pytest.raises(ValueError, match=r"indices must be 1-D, got shape \(2, 2\)"):
        kernels.validate_tables(rows, torch.tensor([[0, 1], [2, 3]]), offsets, 2)
    with pytest.raises(ValueError, match="offsets on cpu, but the indices on meta: every input must be on one device"):
        kernels.validate_tables(rows, torch.zeros(4, dtype=torch.int64, device="meta"), offsets, 2)
    with pytest.raises(ValueError, match=r"table 1.*out of range"):  # and a good shape still gets its range checked
        kernels.validate_tables(rows, torch.tensor([0, 1, 4, 5]), offsets, 2)


@pytest.mark.parametrize("compiled", [True, False], ids=["numba", "torch"])
def test_bag_checks_flag_exactly_what_a_python_loop_flags(compiled, monkeypatch):
    """The compiled CPU pass and the torch ops (the GPU's path) against a plain loop, on random good and bad
    bags: int32/int64, strided views, no indices, num_rows None, 0 or past int32."""
    import kernels.validate as v

    if not compiled:
        monkeypatch.setattr(v, "numba", None)
    rng = np.random.default_rng(0)
    for case in range(400):
        n, bags = int(rng.integers(0, 12)), int(rng.integers(0, 5))
        rows = [None, 0, 5, 2**31 + 5][case % 4]
        idx = rng.integers(-2, 8, n) if case % 3 else rng.integers(0, 5, n)
        off = np.sort(rng.integers(0, n + 1, bags + 1))
        if case % 5 == 0 and bags:
            off[rng.integers(0, bags + 1)] += int(rng.integers(-2, 3))  # a start, an end or a decrease broken
        want = [off[0] != 0, off[-1] != n, bool(np.any(off[1:] < off[:-1])),
                rows is not None and bool(np.any((idx < 0) | (idx >= rows)))]  # fmt: skip
        dt = torch.int32 if case % 2 else torch.int64
        indices = torch.tensor(np.repeat(idx, 2), dtype=dt)[::2] if case % 7 == 0 else torch.tensor(idx, dtype=dt)
        got = [bool(x) for x in v._bag_checks(rows, indices, torch.tensor(off, dtype=dt))]
        if compiled:
            assert got == want, (case, idx, off, rows)
        else:  # the torch ops list only the checks that apply (and min, max apart): only any() is comparable
            assert any(got) == any(want), (case, idx, off, rows)
