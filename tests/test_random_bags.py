"""Random data's bags: max(1, round(u * min(E, L))) lookups, u ~ U[0, 1), or exactly L when fixed; rows in [0, E)."""

from __future__ import annotations

import math

import pytest
import torch

from model.data import Batch, RandomData

# every table with every L: E < L, E > L, E == L, a 1-row table, L = 1, a 2-row table (length 1 or 2 only)
_ROWS, _POOLING = (3, 100, 5, 1, 50, 2), (1, 5, 7, 9)
_B, _BATCHES = 1000, 12


def _pmf(c: int) -> dict[int, float]:
    """P(max(1, round(u * c)) = k) for u ~ U[0, 1): round(u c) is 0 on [0, 0.5/c), k on [(k - 0.5)/c, (k + 0.5)/c),
    and c on [(c - 0.5)/c, 1); 0 is raised to 1."""
    if c == 1:
        return {1: 1.0}
    pmf = {k: 1.0 / c for k in range(1, c)}
    pmf[1] += 0.5 / c
    pmf[c] = 0.5 / c
    return pmf


def _lengths(data: RandomData) -> list[torch.Tensor]:
    """Per table, the lengths of every bag of every batch; checks each batch's CSR and index range on the way."""
    T = len(data.table_rows)
    per_table: list[list[torch.Tensor]] = [[] for _ in range(T)]
    for i in range(len(data)):
        b = data.batch(i)
        B = b.batch_size
        assert b.offsets.shape == (T * B + 1,) and b.offsets.dtype == torch.int64
        assert b.offsets[0] == 0 and b.offsets[-1] == b.indices.numel()
        for t, E in enumerate(data.table_rows):
            idx, offs = b.table(t)
            assert idx.numel() == 0 or (idx.min() >= 0 and idx.max() < E), f"table {t}: rows outside [0, {E})"
            per_table[t].append(offs[1:] - offs[:-1])
    return [torch.cat(x) for x in per_table]


def test_bag_lengths_follow_the_rule():
    for L in _POOLING:
        data = RandomData(_ROWS, 4, _B, _B * _BATCHES, pooling_factor=L, seed=5)
        lengths = _lengths(data)
        for t, E in enumerate(_ROWS):
            c = min(E, L)
            n = lengths[t]
            assert n.numel() == _B * _BATCHES
            assert int(n.min()) >= 1, f"E={E} L={L}: an empty bag"
            assert int(n.max()) <= c, f"E={E} L={L}: a bag longer than min(E, L) = {c}"
            for k, p in _pmf(c).items():
                share = float((n == k).double().mean())
                sd = math.sqrt(p * (1 - p) / n.numel())
                assert abs(share - p) <= 5 * sd + 1e-12, f"E={E} L={L}: P(len={k}) {share:.4f}, expected {p:.4f}"


def test_a_one_row_table_has_one_lookup_per_bag():
    data = RandomData((1, 1), 2, 64, 640, pooling_factor=10, seed=1)
    for n in _lengths(data):
        assert n.tolist() == [1] * 640
    assert all(int(data.batch(i).indices.abs().sum()) == 0 for i in range(len(data)))  # row 0, the only row


@pytest.mark.parametrize("E", [1, 3, 1000])
def test_fixed_gives_exactly_L_lookups_drawn_with_replacement(E):
    L = 6
    data = RandomData((E, 40), 2, 50, 500, pooling_factor=L, fixed=True, seed=2)
    for n in _lengths(data):
        assert n.tolist() == [L] * 500  # even from a table with fewer than L rows: with replacement
    if E < L:
        b = data.batch(0)
        idx, offs = b.table(0)
        bags = [idx[offs[j] : offs[j + 1]].tolist() for j in range(b.batch_size)]
        assert all(len(bag) > len(set(bag)) for bag in bags)  # a bag of L > E lookups repeats rows


def test_rows_are_uniform_over_the_table():
    E = 8
    data = RandomData((E,), 1, 1000, 10000, pooling_factor=5, fixed=True, seed=3)
    idx = torch.cat([data.batch(i).indices for i in range(len(data))])
    counts = torch.bincount(idx, minlength=E).double()
    n, p = idx.numel(), 1.0 / E
    sd = math.sqrt(n * p * (1 - p))
    assert counts.numel() == E and bool(((counts - n * p).abs() <= 5 * sd).all()), counts.tolist()


def test_the_last_batch_holds_the_remaining_samples():
    data = RandomData((5, 3), 4, batch_size=8, data_size=20, pooling_factor=2, fixed=True)
    batches = list(data)
    assert [b.batch_size for b in batches] == [8, 8, 4]
    last = batches[-1]
    assert last.dense.shape == (4, 4) and last.labels.shape == (4,)
    assert last.offsets.tolist() == list(range(0, 2 * 2 * 4 + 1, 2))  # 2 tables x 4 bags of exactly 2 lookups


def test_round_targets_rounds_each_label_to_0_or_1():
    kw = {"table_rows": (5,), "num_dense": 3, "batch_size": 200, "data_size": 400, "seed": 9}
    for i in range(2):
        raw = RandomData(**kw).batch(i).labels  # U[0, 1), drawn from the same seeded stream
        rounded = RandomData(**kw, round_targets=True).batch(i).labels
        assert set(rounded.tolist()) == {0.0, 1.0}
        assert torch.equal(rounded, (raw >= 0.5).float())


def test_tables_slice_each_tables_bags_by_hand():
    # B = 2, T = 3; bags: t0 [10], [11 12]; t1 [], [20]; t2 [30 31], []
    batch = Batch(
        torch.zeros(2, 1),
        torch.tensor([10, 11, 12, 20, 30, 31]),
        torch.tensor([0, 1, 3, 3, 4, 6, 6]),
        torch.zeros(2),
    )
    got = [(i.tolist(), o.tolist()) for i, o in batch.tables([2, 0, 1])]
    assert got == [([30, 31], [0, 2, 2]), ([10, 11, 12], [0, 1, 3]), ([20], [0, 0, 1])]
    assert [(i.tolist(), o.tolist()) for i, o in [batch.table(1)]] == [([20], [0, 0, 1])]
    assert batch.tables([]) == []
    empty = Batch(
        torch.zeros(0, 1), torch.zeros(0, dtype=torch.int64), torch.zeros(1, dtype=torch.int64), torch.zeros(0)
    )
    assert [(i.tolist(), o.tolist()) for i, o in empty.tables([0, 1])] == [([], [0]), ([], [0])]
