"""Inputs for one sweep point: tables and index streams with a chosen hot set and distribution.

The hot set places a kernel in a chosen level of the memory hierarchy: indices are drawn
from `hot_rows` rows per table, scattered over the table (not its first rows), so the
bytes touched repeatedly are about working_set bytes while the table keeps its size.

Timed calls rotate through several index batches drawn from the same hot set: one batch
reused call after call would touch only its own B x L rows, which sit in cache after the
first call whatever the hot set. With enough batches to sweep the hot set twice (up to a
cap), the bytes a call finds in cache are the hot set's, as in training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import psutil
import torch

from profiler.sweep_spec import Point

__all__ = [
    "BagInputs",
    "estimate_bytes",
    "hot_rows",
    "make_bag_inputs",
    "num_batches",
    "profile_digest",
    "rotation_batches",
    "sample_rows",
]

_MEMORY_FRACTION = 0.8  # of available memory a point may plan to use


_MAX_BATCHES = 1 << 16  # index batches to rotate through (bounds set-up time; the byte cap below binds first
# for all but tiny calls: 64 batches of B=128, L=1 touched 8k rows of a 1M-row "DRAM" table, 4 MiB, in L3)
_MAX_INDEX_BYTES = 256 << 20  # ... and the bytes of indices they hold


@dataclass(frozen=True)
class BagInputs:
    weight: torch.Tensor  # (T*E, D), the T tables fused
    batches: list[torch.Tensor]  # each (N,) int64 rows of the fused weight; timed calls rotate through them
    offsets: torch.Tensor  # (T*B + 1,) int64 CSR, shared by every batch
    hot_rows: int  # per table
    touched_rows: int = 0  # distinct rows the rotation reads, all tables: the footprint actually measured

    @property
    def indices(self) -> torch.Tensor:
        return self.batches[0]


def rotation_batches(hot: int, lookups_per_table: int, tables: int = 1) -> int:
    """Index batches for timed calls to rotate through: enough to sweep `hot` rows per table twice,
    within the caps on their count and on their int64 indices' bytes."""
    want = -(-2 * hot // lookups_per_table)
    cap = max(1, _MAX_INDEX_BYTES // (8 * lookups_per_table * tables))
    return max(1, min(want, _MAX_BATCHES, cap))


def num_batches(point: Point, hot: int) -> int:
    """Index batches needed for the calls to sweep the hot set twice, within the caps."""
    return rotation_batches(hot, point.batch_size * point.pooling_factor, point.num_tables)


def hot_rows(point: Point, working_set_bytes: int | None) -> int:
    """Rows per table in the hot set: working_set bytes over all T tables' rows of D float32."""
    if working_set_bytes is None:
        return point.num_rows
    per_row = point.embedding_dim * 4 * point.num_tables
    return max(1, min(point.num_rows, working_set_bytes // per_row))


def estimate_bytes(point: Point, hot: int, touched_mask: bool = True) -> int:
    """Memory the point will allocate (tables, indices, outputs, gradients, sampling tables, and with
    `touched_mask` the mask make_bag_inputs counts touched rows in; bench embedding-bag has none)."""
    T, E, D, B, L = point.num_tables, point.num_rows, point.embedding_dim, point.batch_size, point.pooling_factor
    if point.target == "all_to_all":
        # over all ranks: pooled inputs, outputs, their gradients and the exchange's buffers (T x B x D
        # float32 each, about 6 in all), plus each rank's own process (torch and gloo, ~200 MiB)
        return 6 * T * B * D * 4 + point.world_size * (200 << 20)
    n = T * B * L
    total = T * E * D * 4 + n * 8 * (1 + num_batches(point, hot)) + T * B * D * 4 * 3 + E * 8 + hot * 8
    if touched_mask:
        total += T * E  # one byte a row
    if point.mode in ("backward", "train"):
        total += n * D * 4  # a per-lookup gradient, for kernels that build one
    if point.target == "dlrm":
        total += 8 * B * (T + 1) ** 2 * 4 + (64 << 20)  # interaction and MLP activations, roughly
    return total


def check_memory(point: Point, hot: int, touched_mask: bool = True, flush_bytes: int = 0) -> None:
    """MemoryError when the point (and the timer's `flush_bytes` cache-flush buffer, on the host) would not fit."""
    need, avail = estimate_bytes(point, hot, touched_mask), psutil.virtual_memory().available
    flush = flush_bytes if point.device == "cpu" else 0
    if need + flush > _MEMORY_FRACTION * avail:
        with_flush = f" with flush_bytes {flush / 2**30:.2f} GiB" if flush else ""
        raise MemoryError(
            f"needs about {(need + flush) / 2**30:.2f} GiB{with_flush} but {avail / 2**30:.2f} GiB is available; "
            "refused before allocating"
        )


def profile_digest(distribution: str) -> str | None:
    """'sd:PATH': the profile file's SHA-256 (16 hex digits), stored with the point so that a resumed sweep
    measures again what a changed profile would draw differently; None for other distributions."""
    if not distribution.startswith("sd:"):
        return None
    import hashlib

    with open(distribution[3:], "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()[:16]


def sample_rows(distribution: str, hot: int, n: int, generator: torch.Generator) -> torch.Tensor:
    """n ranks in [0, hot): uniform; Zipf ('zipf:S': P(k) ~ 1/(k+1)^S on the finite support); or one LRU
    stream whose stack distances follow a profile ('sd:PATH', the reference's --data-trace-file format, as
    train --locality takes it): the n draws keep one LRU state, so reuse spans bags and batches."""
    if distribution.startswith("sd:"):
        from model.stack_distance import LRUStream
        from model.traces import StackDistanceProfile

        prof = StackDistanceProfile.read(distribution[3:])
        seed = int(torch.randint(2**62, (1,), generator=generator))
        stream = LRUStream(np.asarray(prof.distances, dtype=np.int64), prof.normalized_cdf(), hot, seed)
        return torch.from_numpy(stream.take(n))
    if distribution == "uniform":
        return torch.randint(hot, (n,), generator=generator)
    if distribution.startswith("zipf:"):
        s = float(distribution.split(":", 1)[1])
        weights = torch.arange(1, hot + 1, dtype=torch.float64).pow_(-s)
        cdf = weights.cumsum_(0)
        cdf /= cdf[-1].clone()
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        return torch.searchsorted(cdf, u).clamp_(max=hot - 1)
    raise NotImplementedError(f"distribution {distribution!r}: uniform, zipf:S and sd:PATH are implemented here")


def make_bag_inputs(point: Point, working_set_bytes: int | None, seed: int = 0, flush_bytes: int = 0) -> BagInputs:
    """Tables (uniform weights) and B bags of exactly L lookups per table for `point` (`flush_bytes`: the
    timer's flush buffer, counted in the memory check)."""
    g = torch.Generator().manual_seed(seed)
    T, E, D, B, L = point.num_tables, point.num_rows, point.embedding_dim, point.batch_size, point.pooling_factor
    hot = hot_rows(point, working_set_bytes)
    check_memory(point, hot, flush_bytes=flush_bytes)
    weight = torch.empty(T * E, D).uniform_(-1.0 / math.sqrt(E), 1.0 / math.sqrt(E), generator=g)
    k = num_batches(point, hot)
    per_table = []
    for t in range(T):
        # Hot rows sit at random places in the table; the hottest rank maps to a random row.
        placement = torch.randperm(E, generator=g)[:hot] if hot < E else torch.randperm(E, generator=g)
        ranks = sample_rows(point.distribution, hot, k * B * L, g)
        per_table.append((placement.index_select(0, ranks) + t * E).view(k, B * L))
    batches = [torch.cat([rows[i] for rows in per_table]) for i in range(k)]
    offsets = torch.arange(0, T * B * L + 1, L, dtype=torch.int64)
    seen = torch.zeros(T * E, dtype=torch.bool)
    for rows in per_table:
        seen[rows.reshape(-1)] = True
    return BagInputs(weight, batches, offsets, hot, int(seen.sum()))
