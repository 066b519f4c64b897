"""The batch every data source yields, and the reference's random data, generated vectorised."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import torch

__all__ = ["Batch", "RandomData"]


@dataclass(frozen=True)
class Batch:
    """One mini-batch. Tables are concatenated: table t's bags are offsets[t*B : (t+1)*B + 1].

    dense: (B, F) float32; indices: (N,) int64 table-local row ids; offsets: (T*B + 1,)
    int64 CSR; labels: (B,) float32 click targets in [0, 1].
    """

    dense: torch.Tensor
    indices: torch.Tensor
    offsets: torch.Tensor
    labels: torch.Tensor

    @property
    def batch_size(self) -> int:
        return self.dense.shape[0]

    def table(self, t: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Table t's (indices, offsets), offsets rebased to start at 0."""
        return self.tables([t])[0]

    def tables(self, ts: list[int] | tuple[int, ...]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Tables ts' (indices, offsets), as `table` gives them. The tables' bounds are read to the host
        in one copy: slicing by 0-d device tensors would wait on the device twice per table."""
        B = self.batch_size
        if B == 0:  # no bags: every table's slice is empty
            return [(self.indices[:0], self.offsets[:1] - self.offsets[:1]) for _ in ts]
        bounds = self.offsets[::B].tolist() if ts else []  # T + 1 values: where each table's lookups start
        return [
            (self.indices[bounds[t] : bounds[t + 1]], self.offsets[t * B : (t + 1) * B + 1] - bounds[t]) for t in ts
        ]

    def to(self, device: torch.device | str) -> Batch:
        return Batch(*(t.to(device, non_blocking=True) for t in (self.dense, self.indices, self.offsets, self.labels)))


@dataclass(frozen=True)
class RandomData:
    """Uniform random batches in the reference's `--data-generation random` form.

    Each sample draws, per table, L lookups (`fixed`) or max(1, round(u * min(E, L))) with
    u ~ U[0, 1), as the reference does; rows are uniform in [0, E) (the reference's
    round(u * (E - 1)) draws rows 0 and E - 1 half as often). Unlike the reference, rows are
    drawn with replacement (it de-duplicates within a bag, which shortens bags of tiny tables).
    Batch i is seeded from (seed, i), so every epoch sees the same data.
    """

    table_rows: tuple[int, ...]  # E per table
    num_dense: int  # F, dense features
    batch_size: int  # B
    data_size: int  # samples in the data set; the last batch may be smaller
    pooling_factor: int = 10  # L, --num-indices-per-lookup
    fixed: bool = False  # --num-indices-per-lookup-fixed
    seed: int = 123
    round_targets: bool = False  # labels in {0, 1} instead of U[0, 1)

    def __post_init__(self) -> None:
        for name in ("batch_size", "data_size", "pooling_factor", "num_dense"):
            if getattr(self, name) < 1:
                raise ValueError(f"RandomData: {name} must be >= 1, got {getattr(self, name)}")

    def __len__(self) -> int:
        return math.ceil(self.data_size / self.batch_size)

    def __iter__(self) -> Iterator[Batch]:
        return self.batches_from(0)

    def batches_from(self, first: int) -> Iterator[Batch]:
        """Batches `first`.. (each seeded by its index): a resumed run skips those it trained, unbuilt."""
        for i in range(first, len(self)):
            yield self.batch(i)

    def batch(self, i: int) -> Batch:
        B = min(self.batch_size, self.data_size - i * self.batch_size)
        g = torch.Generator().manual_seed(self.seed * 1_000_003 + i)
        T, L = len(self.table_rows), self.pooling_factor
        rows = torch.tensor(self.table_rows, dtype=torch.int64)
        if self.fixed:
            lengths = torch.full((T, B), L, dtype=torch.int64)
        else:
            cap = rows.clamp(max=L).unsqueeze(1).double()  # (T, 1)
            lengths = (torch.rand(T, B, generator=g, dtype=torch.float64) * cap).round().long().clamp_(min=1)
        offsets = torch.zeros(T * B + 1, dtype=torch.int64)
        torch.cumsum(lengths.flatten(), 0, out=offsets[1:])
        per_table = lengths.sum(1).tolist()
        indices = torch.cat(
            [torch.randint(e, (n,), generator=g) for e, n in zip(self.table_rows, per_table, strict=True)]
        )
        dense = torch.rand(B, self.num_dense, generator=g)
        labels = torch.rand(B, generator=g)
        if self.round_targets:
            labels = labels.round()
        return Batch(dense, indices, offsets, labels)
