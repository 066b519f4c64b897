"""Bytes moved and FLOPs of an embedding-bag call and of MLP layers, and the rates derived from a time.

Counting convention (FBGEMM's `compute_read_write_bytes`, extended): every lookup reads its whole row,
with no credit for repeated rows (a cache may still hit; that is what the cache-footprint axis
measures); indices, offsets and per-sample weights are read once; the pooled output is written once.
A GEMM reads each operand once and writes its result once (the minimum; a blocked kernel may touch
them more). FLOPs count a multiply-add as two.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass
from typing import Any

__all__ = [
    "Cost",
    "Rates",
    "dlrm_step_cost",
    "embedding_bag_backward_cost",
    "embedding_bag_cost",
    "fused_sgd_cost",
    "mlp_cost",
    "mlp_layer_cost",
    "rates",
]

_MODES = ("sum", "mean", "max")


@dataclass(frozen=True)
class Cost:
    """Work of one call: bytes read, bytes written, floating-point operations."""

    bytes_read: int
    bytes_written: int
    flops: int

    def validate(self) -> Cost:
        if min(self.bytes_read, self.bytes_written, self.flops) < 0:
            raise ValueError(f"{self}: counts must be >= 0")
        return self

    @property
    def bytes_moved(self) -> int:
        return self.bytes_read + self.bytes_written

    @property
    def arithmetic_intensity(self) -> float:
        """FLOPs per byte moved."""
        return self.flops / self.bytes_moved if self.bytes_moved else 0.0

    def __add__(self, other: Cost) -> Cost:
        return Cost(
            self.bytes_read + other.bytes_read, self.bytes_written + other.bytes_written, self.flops + other.flops
        )

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "bytes_moved": self.bytes_moved, "arithmetic_intensity": self.arithmetic_intensity}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Cost:
        return cls(int(d["bytes_read"]), int(d["bytes_written"]), int(d["flops"])).validate()


def embedding_bag_cost(
    batch_size: int,
    num_lookups: int,
    embedding_dim: int,
    *,
    weight_bytes: int = 4,
    output_bytes: int = 4,
    index_bytes: int = 8,
    offset_bytes: int = 8,
    per_sample_weights: bool = False,
    mode: str = "sum",
) -> Cost:
    """Forward of one table's embedding-bag: B bags, N lookups in all, rows of D elements.

    Args:
        batch_size: B, the number of bags; offsets hold B + 1 entries (CSR).
        num_lookups: N, total indices over all bags (B x L for a fixed pooling factor L).
        embedding_dim: D.
        weight_bytes, output_bytes: element sizes of the table and of the output (4 for float32).
        index_bytes, offset_bytes: 8 for int64, 4 for int32.
        per_sample_weights: one float32 weight per lookup, read and multiplied in.
        mode: "sum", "mean" (one extra divide per output element) or "max" (one compare per element).
    Returns:
        Cost: read N*D*weight_bytes + N*index_bytes + (B+1)*offset_bytes [+ N*4],
        written B*D*output_bytes, FLOPs N*D (x2 with weights) [+ B*D for mean].
    """
    B, N, D = batch_size, num_lookups, embedding_dim
    if min(B, N, D) < 0:
        raise ValueError(f"batch_size={B}, num_lookups={N}, embedding_dim={D}: must be >= 0")
    if mode not in _MODES:
        raise ValueError(f"mode={mode!r}: allowed: {', '.join(_MODES)}")
    read = N * D * weight_bytes + N * index_bytes + (B + 1) * offset_bytes
    flops = N * D
    if per_sample_weights:
        read += N * 4
        flops *= 2
    if mode == "mean":
        flops += B * D
    return Cost(read, B * D * output_bytes, flops)


def embedding_bag_backward_cost(
    batch_size: int,
    num_lookups: int,
    embedding_dim: int,
    *,
    grad_bytes: int = 4,
    index_bytes: int = 8,
    offset_bytes: int = 8,
) -> Cost:
    """Backward to a sparse gradient (sum mode): read the (B, D) output gradient, indices and offsets,
    write one D-row of gradient and one index per lookup. No FLOPs: each row is a copy of its bag's gradient.
    """
    B, N, D = batch_size, num_lookups, embedding_dim
    if min(B, N, D) < 0:
        raise ValueError(f"batch_size={B}, num_lookups={N}, embedding_dim={D}: must be >= 0")
    read = B * D * grad_bytes + N * index_bytes + (B + 1) * offset_bytes
    return Cost(read, N * D * grad_bytes + N * index_bytes, 0)


def mlp_layer_cost(
    batch_size: int,
    in_features: int,
    out_features: int,
    *,
    dtype_bytes: int = 4,
    bias: bool = True,
    backward: bool = False,
    input_grad: bool = True,
) -> Cost:
    """One Linear layer y = x W^T + b on a (B, in) batch, forward or backward.

    Forward: read x (B*in), W (in*out), b (out); write y (B*out); FLOPs 2*B*in*out (+ B*out bias adds).
    Backward: read dy (B*out), x and W; write dx (B*in), dW (in*out), db (out);
    FLOPs 4*B*in*out (dx and dW, one GEMM each) (+ B*out for db). Without `input_grad` (the first
    layer of a network: its input needs no gradient) W is not read and dx neither written nor computed.
    """
    B, K, M = batch_size, in_features, out_features
    if min(B, K, M) < 0:
        raise ValueError(f"batch_size={B}, in_features={K}, out_features={M}: must be >= 0")
    e = dtype_bytes
    if not backward:
        read = (B * K + K * M + (M if bias else 0)) * e
        return Cost(read, B * M * e, 2 * B * K * M + (B * M if bias else 0))
    dx = 1 if input_grad else 0
    read = (B * M + B * K + dx * K * M) * e
    written = (dx * B * K + K * M + (M if bias else 0)) * e
    return Cost(read, written, (2 + 2 * dx) * B * K * M + (B * M if bias else 0))


def fused_sgd_cost(batch_size: int, num_lookups: int, embedding_dim: int, *, index_bytes: int = 8) -> Cost:
    """Embedding-bag backward with the SGD update fused in (no gradient is built): read the (B, D) output
    gradient, the indices and offsets; read and write each looked-up row; a multiply-add per element."""
    B, N, D = batch_size, num_lookups, embedding_dim
    return Cost(B * D * 4 + N * D * 4 + N * index_bytes + (B + 1) * index_bytes, N * D * 4, 2 * N * D)


def dlrm_step_cost(
    batch_size: int,
    pooling_factor: int,
    table_rows: tuple[int, ...],
    embedding_dim: int,
    bottom: tuple[int, ...],
    top: tuple[int, ...],
    *,
    interaction: str = "dot",
    interaction_itself: bool = False,
    top_pad: int = 0,
    mode: str = "train",
    embedding_grad: str = "sparse",
) -> Cost:
    """One DLRM step (float32, int64 indices, L lookups per bag), forward or forward + backward + SGD.

    Forward: the pass that turns table-local indices into rows of the concatenated tables (read
    indices and offsets, write rows), the embedding-bag (embedding_bag_cost), the bottom MLP, the
    interaction (read the T + 1 vectors; dot: 2*D FLOPs per pair; write the top MLP's input with its
    `top_pad` zero columns), the top MLP on the padded input (and, when padded, the copy of its first
    weight the padding needs).
    Train adds: every layer's backward (the bottom MLP's first layer without dx), the interaction's
    backward (dot: 4*D FLOPs per pair, reading the vectors again), SGD on the MLPs (read weight and
    gradient, write weight), and the tables by `embedding_grad`: sparse builds one gradient row per
    lookup (embedding_bag_backward_cost) then reads it, the indices and each row, and writes the row;
    dense writes a zeroed gradient of every table, adds each lookup's row into it, then updates every
    row; fused updates the looked-up rows in the backward (fused_sgd_cost).
    `top` starts with the interaction width (config.top_mlp_full).
    """
    if mode not in ("forward", "train"):
        raise ValueError(f"mode={mode!r}: allowed: forward, train")
    if interaction not in ("dot", "cat") or embedding_grad not in ("sparse", "dense", "fused"):
        raise ValueError(f"interaction={interaction!r}, embedding_grad={embedding_grad!r}: allowed: dot, cat; "
                         "sparse, dense, fused")  # fmt: skip
    B, D, T = batch_size, embedding_dim, len(table_rows)
    n = T * B * pooling_factor
    bags = T * B
    width = top[0]
    vectors = (T + 1) * B * D * 4
    pairs = 0 if interaction == "cat" else (T + 1) * (T + 2 if interaction_itself else T) // 2
    padded_top = (width + top_pad, *top[1:])
    cost = Cost(n * 8 + (bags + 1) * 8, n * 8, 0) + embedding_bag_cost(bags, n, D)
    for c in mlp_cost(B, bottom):
        cost = cost + c
    cost = cost + Cost(vectors, B * (width + top_pad) * 4, 2 * B * pairs * D)
    if top_pad:
        cost = cost + Cost(width * top[1] * 4, (width + top_pad) * top[1] * 4, 0)
    for c in mlp_cost(B, padded_top):
        cost = cost + c
    if mode == "forward":
        return cost
    layers = [(k, m, i > 0) for i, (k, m) in enumerate(itertools.pairwise(bottom))]
    layers += [(k, m, True) for k, m in itertools.pairwise(padded_top)]
    for k, m, dx in layers:
        cost = cost + mlp_layer_cost(B, k, m, backward=True, input_grad=dx)
    params = sum(k * m + m for k, m in itertools.pairwise(bottom)) + sum(k * m + m for k, m in itertools.pairwise(top))
    reread = vectors if pairs else 0  # dot's gradient needs the vectors again; cat's is a slice of dz
    cost = cost + Cost(B * width * 4 + reread, vectors, 4 * B * pairs * D)  # the interaction's backward
    cost = cost + Cost(2 * params * 4, params * 4, 2 * params)  # SGD on the MLPs
    rows_bytes = n * D * 4
    if embedding_grad == "sparse":
        cost = cost + embedding_bag_backward_cost(bags, n, D) + Cost(2 * rows_bytes + n * 8, rows_bytes, 2 * n * D)
    elif embedding_grad == "dense":
        table = sum(table_rows) * D * 4
        scatter = Cost(bags * D * 4 + n * 8 + (bags + 1) * 8 + rows_bytes, table + rows_bytes, n * D)
        cost = cost + scatter + Cost(2 * table, table, 2 * sum(table_rows) * D)
    else:
        cost = cost + fused_sgd_cost(bags, n, D)
    return cost


def mlp_cost(batch_size: int, sizes: list[int] | tuple[int, ...], **kwargs: Any) -> list[Cost]:
    """Per-layer costs of an MLP given as layer widths, e.g. [13, 512, 256, 64] -> three layers."""
    return [mlp_layer_cost(batch_size, k, m, **kwargs) for k, m in itertools.pairwise(sizes)]


@dataclass(frozen=True)
class Rates:
    """What a cost achieved in a time, and the share of the roofline it reached."""

    time_s: float
    gbps: float
    gflops: float
    arithmetic_intensity: float
    frac_of_bandwidth: float | None = None
    frac_of_flops: float | None = None
    frac_of_roofline: float | None = None  # achieved GFLOP/s over min(peak, intensity x bandwidth)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Rates:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})


def rates(cost: Cost, time_s: float, *, bandwidth_gbps: float | None = None, peak_gflops: float | None = None) -> Rates:
    """Achieved GB/s and GFLOP/s of `cost` done in `time_s`, and fractions of the given ceilings.

    Roofline: attainable GFLOP/s = min(peak_gflops, intensity x bandwidth_gbps). A memory-bound kernel
    (embedding-bag) is judged by frac_of_bandwidth; frac_of_roofline covers both regimes when both
    ceilings are given.
    """
    if time_s <= 0:
        raise ValueError(f"time_s={time_s}: must be > 0")
    gbps = cost.bytes_moved / time_s / 1e9
    gflops = cost.flops / time_s / 1e9
    ai = cost.arithmetic_intensity
    frac_bw = gbps / bandwidth_gbps if bandwidth_gbps else None
    frac_fl = gflops / peak_gflops if peak_gflops and cost.flops else None
    roof = None
    if bandwidth_gbps and peak_gflops and cost.flops:
        roof = gflops / min(peak_gflops, ai * bandwidth_gbps)
    elif bandwidth_gbps:
        roof = frac_bw
    return Rates(time_s, gbps, gflops, ai, frac_bw, frac_fl, roof)
