"""profiler.metrics against counts worked out by hand."""

from __future__ import annotations

import pytest

from profiler.metrics import (
    Cost,
    dlrm_step_cost,
    embedding_bag_backward_cost,
    embedding_bag_cost,
    mlp_cost,
    mlp_layer_cost,
    rates,
)


def test_embedding_bag_bytes_and_flops_by_hand() -> None:
    # B=2 bags, N=5 lookups, D=4, float32 table, int64 indices/offsets:
    #   bag 0: rows [3, 1, 4]   bag 1: rows [1, 5]      offsets = [0, 3, 5]  (B+1 = 3 entries)
    # read : rows 5*4*4 = 80, indices 5*8 = 40, offsets 3*8 = 24  -> 144
    # write: output 2*4*4 = 32
    # flops: one add per element of each looked-up row: 5*4 = 20
    c = embedding_bag_cost(2, 5, 4)
    assert (c.bytes_read, c.bytes_written, c.flops) == (144, 32, 20)
    assert c.bytes_moved == 176
    assert c.arithmetic_intensity == pytest.approx(20 / 176)


def test_embedding_bag_weighted_int32_mean() -> None:
    # per-sample weights add 5*4 = 20 bytes read and a multiply per element; int32 indices/offsets halve
    # those; mean adds B*D = 8 divides.  read 80 + 5*4 + 3*4 + 20 = 132, flops 2*20 + 8 = 48
    c = embedding_bag_cost(2, 5, 4, index_bytes=4, offset_bytes=4, per_sample_weights=True, mode="mean")
    assert (c.bytes_read, c.bytes_written, c.flops) == (132, 32, 48)


def test_embedding_bag_backward_by_hand() -> None:
    # read grad (2, 4) = 32, indices 40, offsets 24 -> 96; write 5 rows of 4 floats = 80 + their indices 40
    c = embedding_bag_backward_cost(2, 5, 4)
    assert (c.bytes_read, c.bytes_written, c.flops) == (96, 120, 0)


def test_mlp_layer_forward_and_backward_by_hand() -> None:
    # B=8, 13 -> 512, float32.  forward: read x 8*13 + W 13*512 + b 512 = 104 + 6656 + 512 = 7272 floats
    # write y 8*512 = 4096 floats; flops 2*8*13*512 + 8*512 = 106496 + 4096
    c = mlp_layer_cost(8, 13, 512)
    assert c == Cost(7272 * 4, 4096 * 4, 110592)
    # backward: read dy 4096 + x 104 + W 6656; write dx 104 + dW 6656 + db 512; flops 4*8*13*512 + 4096
    g = mlp_layer_cost(8, 13, 512, backward=True)
    assert g == Cost((4096 + 104 + 6656) * 4, (104 + 6656 + 512) * 4, 212992 + 4096)
    # a first layer (no dx): W is not read, dx neither written nor computed: one GEMM
    g1 = mlp_layer_cost(8, 13, 512, backward=True, input_grad=False)
    assert g1 == Cost((4096 + 104) * 4, (6656 + 512) * 4, 106496 + 4096)


# A DLRM step by hand: T=2 tables of 10 rows, B=2, L=1, D=2, bottom 3-2, dot over the T+1 = 3 vectors
# (3 pairs), top MLP input 3 + 2 = 5 padded with 11 zero columns to 16, top 5-1. n = bags = T*B*L = 4.
# Forward                                    read                        write        flops
#   rows of the concatenated tables          idx 4*8 + off 5*8 = 72      idx 32       0
#   embedding-bag                            rows 4*2*4 + 32 + 40 = 104  4*2*4 = 32   4*2 = 8
#   bottom 3->2                              (2*3 + 3*2 + 2)*4 = 56      2*2*4 = 16   2*2*3*2 + 2*2 = 28
#   interaction                              vectors 3*2*2*4 = 48        2*16*4 = 128 2*2*3*2 = 24
#   first top weight, padded copy            5*1*4 = 20                  16*1*4 = 64  0
#   top 16->1                                (2*16 + 16 + 1)*4 = 196     2*1*4 = 8    2*2*16 + 2 = 66
#   forward total                            496                         280          126
_FORWARD = (496, 280, 126)
# Train adds
#   bottom 3->2 backward, no dx              (dy 4 + x 6)*4 = 40         (dW 6 + db 2)*4 = 32   2*2*3*2 + 4 = 28
#   top 16->1 backward                       (dy 2 + x 32 + W 16)*4 = 200 (dx 32 + 16 + 1)*4 = 196  4*2*16 + 2 = 130
#   interaction backward                     dz 2*5*4 + vectors 48 = 88  48           4*2*3*2 = 48
#   SGD on 14 MLP parameters (8 + 6)         2*14*4 = 112                56           28
_TRAIN_MLPS = (40 + 200 + 88 + 112, 32 + 196 + 48 + 56, 28 + 130 + 48 + 28)
#   tables, sparse: gradient rows            grad 32 + idx 32 + off 40   rows 32 + idx 32
#                   then the update          grad 32 + rows 32 + idx 32  rows 32      2*4*2 = 16
#   tables, fused                            grad 32 + rows 32 + idx 32 + off 40 = 136   32   16
#   tables, dense: zeroed gradient, scatter  grad 32 + idx 32 + off 40 + rows 32        table 160 + rows 32  8
#                  update of every row       table 160 + grad 160        160          2*20*2 = 80
_TABLES = {"sparse": (104 + 96, 64 + 32, 16), "fused": (136, 32, 16), "dense": (136 + 320, 192 + 160, 8 + 80)}


@pytest.mark.parametrize("grad", ["sparse", "fused", "dense"])
def test_dlrm_step_by_hand(grad: str) -> None:
    args = (2, 1, (10, 10), 2, (3, 2), (5, 1))
    assert dlrm_step_cost(*args, top_pad=11, mode="forward", embedding_grad=grad) == Cost(*_FORWARD)
    want = [f + m + t for f, m, t in zip(_FORWARD, _TRAIN_MLPS, _TABLES[grad], strict=True)]
    assert dlrm_step_cost(*args, top_pad=11, mode="train", embedding_grad=grad) == Cost(*want)


def test_a_dlrm_sweep_point_records_the_step_counted_by_hand() -> None:
    from profiler.runner import run_point
    from profiler.sweep_spec import Point

    for grad in ("sparse", "dense"):
        point = Point(target="dlrm", kernel="torch", batch_size=2, num_rows=10, num_tables=2, embedding_dim=2,
                      pooling_factor=1, bottom_mlp="3", top_mlp="1", mode="train", embedding_grad=grad)  # fmt: skip
        d = run_point(point, fingerprint={}, ceilings=[], timing={"warmup_ms": 1, "rep_ms": 2})["derived"]
        want = [f + m + t for f, m, t in zip(_FORWARD, _TRAIN_MLPS, _TABLES[grad], strict=True)]
        assert (d["bytes_read"], d["bytes_written"], d["flops"]) == tuple(want)


def test_mlp_cost_is_per_layer() -> None:
    layers = mlp_cost(8, [13, 512, 256])
    assert layers == [mlp_layer_cost(8, 13, 512), mlp_layer_cost(8, 512, 256)]
    assert sum(layers[1:], layers[0]).flops == layers[0].flops + layers[1].flops


def test_rates_and_roofline() -> None:
    c = Cost(bytes_read=800, bytes_written=200, flops=4000)  # intensity 4 FLOP/byte
    r = rates(c, 1e-9, bandwidth_gbps=500.0, peak_gflops=1000.0)  # 1000 bytes in 1 ns = 1000 GB/s
    assert r.gbps == pytest.approx(1000.0) and r.gflops == pytest.approx(4000.0)
    assert r.frac_of_bandwidth == pytest.approx(2.0)
    # roofline: min(1000, 4 * 500) = 1000 GFLOP/s attainable
    assert r.frac_of_roofline == pytest.approx(4.0)
    assert rates(c, 1e-6).frac_of_bandwidth is None
    assert Cost.from_dict(c.to_dict()) == c


@pytest.mark.parametrize(
    "bad",
    [
        lambda: embedding_bag_cost(-1, 1, 1),
        lambda: embedding_bag_cost(1, 1, 1, mode="min"),
        lambda: rates(Cost(1, 1, 1), 0.0),
    ],
)
def test_bad_inputs_raise(bad) -> None:
    with pytest.raises(ValueError):
        bad()


def test_roofline_below_the_ridge_is_judged_by_the_bandwidth_roof() -> None:
    # 4000 bytes and 1000 FLOPs (intensity 0.25) in 1 µs: 4 GB/s, 1 GFLOP/s. Roofs 100 GB/s, 1000 GFLOP/s:
    # attainable min(1000, 0.25 x 100) = 25 GFLOP/s, so 1 / 25 of the roofline; 1 / 1000 of the FLOP peak
    c = Cost(bytes_read=3000, bytes_written=1000, flops=1000)
    r = rates(c, 1e-6, bandwidth_gbps=100.0, peak_gflops=1000.0)
    assert r.gbps == pytest.approx(4.0) and r.gflops == pytest.approx(1.0)
    assert r.frac_of_roofline == pytest.approx(1 / 25) and r.frac_of_flops == pytest.approx(1 / 1000)
    assert rates(c, 1e-6, bandwidth_gbps=100.0).frac_of_roofline == pytest.approx(0.04)  # bandwidth only
    # no FLOPs (a copy): the roofline share is the bandwidth share, and there is no FLOP share at all
    copy = rates(Cost(3000, 1000, 0), 1e-6, bandwidth_gbps=100.0, peak_gflops=1000.0)
    assert copy.frac_of_roofline == pytest.approx(0.04) and copy.frac_of_flops is None


def test_dlrm_step_with_self_interaction_by_hand() -> None:
    # As _FORWARD's model, but the dot keeps the diagonal: (T+1)(T+2)/2 = 6 pairs, top 8 -> 1, no padding.
    #   rows 72 / 32 / 0;  embedding-bag 104 / 32 / 8;  bottom 56 / 16 / 28
    #   interaction  read vectors 48, write 2*8*4 = 64, flops 2*B*pairs*D = 2*2*6*2 = 48
    #   top 8->1     read (2*8 + 8 + 1)*4 = 100, write 8, flops 2*2*8 + 2 = 34
    got = dlrm_step_cost(2, 1, (10, 10), 2, (3, 2), (8, 1), interaction_itself=True, mode="forward")
    assert got == Cost(72 + 104 + 56 + 48 + 100, 32 + 32 + 16 + 64 + 8, 8 + 28 + 48 + 34)


def test_dlrm_step_with_cat_interaction_by_hand() -> None:
    # As _FORWARD's model, but cat: the top MLP takes the 3 vectors side by side, 3*2 = 6 -> 1, no padding.
    # Forward: rows 72/32/0, embedding-bag 104/32/8, bottom 56/16/28, interaction read 48 write 2*6*4 = 48,
    #          top 6->1 read (2*6 + 6 + 1)*4 = 76, write 8, flops 2*2*6 + 2 = 26      -> 356 / 136 / 62
    # Train adds: bottom backward (no dx) 40 / 32 / 28; top 6->1 backward (dy 2 + x 12 + W 6)*4 = 80 /
    #          (dx 12 + dW 6 + db 1)*4 = 76 / 4*2*6 + 2 = 50; cat's backward is a slice of dz: read dz 2*6*4 = 48
    #          (not the vectors again), write the vectors 48, no FLOPs; SGD on 8 + 7 = 15 parameters 120 / 60 / 30;
    #          the tables, sparse, 200 / 96 / 16                                      -> 844 / 448 / 186
    args = (2, 1, (10, 10), 2, (3, 2), (6, 1))
    assert dlrm_step_cost(*args, interaction="cat", mode="forward") == Cost(356, 136, 62)
    assert dlrm_step_cost(*args, interaction="cat", mode="train") == Cost(844, 448, 186)
