"""profiler.metrics against counts worked out by hand."""

from __future__ import annotations

import pytest

from profiler.metrics import (
    Cost,
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
