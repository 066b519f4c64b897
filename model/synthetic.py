"""Synthetic batches with locality: per table, uniform rows, a Zipf law, or a replayed stack-distance profile.

Bag sizes, dense features and labels are those of `RandomData` (same seed, same batch);
only the rows differ. Each table draws its rows from one stream that lives for the whole
pass over the data, so reuse spans bags and batches. (The reference's stack-distance mode
re-reads the profile and restarts its LRU stack for every bag, so it only models reuse
within a bag; at its current head its own argument parser rejects `--data-generation
synthetic`.) Every pass (epoch) restarts the streams from the seed, so every epoch sees the
same data, as with random data. Duplicates within a bag are kept: they are part of the stream.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum, unique
from typing import Protocol, Self

import numpy as np
import torch

from model.data import Batch, RandomData
from model.stack_distance import LRUStream, coprime_multiplier
from model.traces import StackDistanceProfile

__all__ = ["DEFAULT_ZIPF_EXPONENT", "Locality", "SyntheticData", "TableLocality", "ZipfRows", "parse_locality"]

DEFAULT_ZIPF_EXPONENT = 1.15  # FBGEMM's suggestion for training traces (about 1.09 for inference)
_ZIPF_EXACT_RANKS = 1 << 22  # ranks with an exact CDF; beyond, the continuous approximation of the tail


@unique
class Locality(StrEnum):
    UNIFORM = "uniform"
    ZIPF = "zipf"
    STACK_DISTANCE = "sd"


@dataclass(frozen=True)
class TableLocality:
    """One table's locality model: `uniform`, `zipf[:S]`, or `sd:PATH` (a stack-distance profile)."""

    kind: Locality = Locality.UNIFORM
    zipf_exponent: float = DEFAULT_ZIPF_EXPONENT
    profile: StackDistanceProfile | None = None
    source: str = ""  # the profile's file

    def validate(self) -> Self:
        if self.kind == Locality.ZIPF and not (self.zipf_exponent >= 0 and math.isfinite(self.zipf_exponent)):
            raise ValueError(f"zipf exponent must be a finite number >= 0, got {self.zipf_exponent}")
        if (self.kind == Locality.STACK_DISTANCE) != (self.profile is not None):
            raise ValueError("a stack-distance locality needs a profile, and only it takes one")
        return self

    def describe(self) -> str:
        if self.kind == Locality.ZIPF:
            return f"zipf s={self.zipf_exponent:g}"
        if self.kind == Locality.STACK_DISTANCE:
            return f"stack distances from {self.source}"
        return "uniform"


def parse_locality(text: str, num_tables: int) -> tuple[TableLocality, ...]:
    """Parse `--locality`: one spec for every table, or a comma-separated spec per table.

    Specs: `uniform`; `zipf` or `zipf:S`; `sd:PATH` where `{t}` in PATH becomes the table index.

    Args:
        text: the flag's value.
        num_tables: T.
    Returns:
        T validated TableLocality.
    """
    specs = [s.strip() for s in text.split(",")]
    if len(specs) == 1:
        specs *= num_tables
    if len(specs) != num_tables:
        raise ValueError(f"--locality: {len(specs)} specs for {num_tables} tables (give one, or one per table)")
    out = []
    for t, spec in enumerate(specs):
        kind, _, arg = spec.partition(":")
        if kind == Locality.UNIFORM and not arg:
            out.append(TableLocality())
        elif kind == Locality.ZIPF:
            try:
                s = float(arg) if arg else DEFAULT_ZIPF_EXPONENT
            except ValueError:
                raise ValueError(f"--locality {spec!r}: the Zipf exponent {arg!r} is not a number") from None
            if not (s >= 0 and math.isfinite(s)):
                raise ValueError(f"--locality {spec!r}: the Zipf exponent must be a finite number >= 0 (0: uniform)")
            out.append(TableLocality(Locality.ZIPF, s).validate())
        elif kind == Locality.STACK_DISTANCE and arg:
            path = arg.replace("{t}", str(t))
            out.append(TableLocality(Locality.STACK_DISTANCE, profile=StackDistanceProfile.read(path), source=path))
        else:
            raise ValueError(f"--locality {spec!r}: expected uniform, zipf[:S] or sd:PATH")
    return tuple(out)


class _Rows(Protocol):
    def take(self, k: int) -> np.ndarray: ...


def _affine_permutation(n: int, rng: np.random.Generator) -> tuple[int, int]:
    """(a, b) with gcd(a, n) = 1, so k -> (a*k + b) mod n permutes [0, n): hot ranks land on scattered rows."""
    if n == 1:
        return 1, 0
    return coprime_multiplier(n, rng), int(rng.integers(n))


class ZipfRows:
    """Rows with P(rank r) proportional to r^-s, r = 1..E; ranks map to rows by a seeded permutation.

    The CDF is exact for the first 2^22 ranks; a longer tail is sampled from its continuous
    approximation (the integral of x^-s), which differs from the sum by far less than sampling noise.
    """

    def __init__(self, num_rows: int, s: float, rng: np.random.Generator):
        self.num_rows, self.s, self.rng = num_rows, s, rng
        K = min(num_rows, _ZIPF_EXACT_RANKS)
        self.head = np.cumsum(np.arange(1, K + 1, dtype=np.float64) ** -s)
        self.tail_lo = K + 0.5
        self.tail_mass = self._integral(self.tail_lo, num_rows + 0.5) if num_rows > K else 0.0
        self.a, self.b = _affine_permutation(num_rows, rng)

    def _integral(self, lo: float, hi: float) -> float:
        if self.s == 1.0:
            return math.log(hi / lo)
        return (hi ** (1 - self.s) - lo ** (1 - self.s)) / (1 - self.s)

    def ranks(self, k: int) -> np.ndarray:
        """k 0-based ranks (0 is the hottest)."""
        u = self.rng.random(k) * (self.head[-1] + self.tail_mass)
        r = np.searchsorted(self.head, u, side="right")
        tail = u >= self.head[-1]
        if tail.any():
            v = u[tail] - self.head[-1]
            if self.s == 1.0:
                x = self.tail_lo * np.exp(v)
            else:
                x = (self.tail_lo ** (1 - self.s) + (1 - self.s) * v) ** (1 / (1 - self.s))
            r[tail] = np.clip(np.floor(x + 0.5).astype(np.int64) - 1, self.head.size, self.num_rows - 1)
        return np.minimum(r, self.num_rows - 1)

    def take(self, k: int) -> np.ndarray:
        return (self.a * self.ranks(k) + self.b) % self.num_rows


class _UniformRows:
    def __init__(self, num_rows: int, rng: np.random.Generator):
        self.num_rows, self.rng = num_rows, rng

    def take(self, k: int) -> np.ndarray:
        return self.rng.integers(self.num_rows, size=k, dtype=np.int64)


def _rows(loc: TableLocality, num_rows: int, seed: int) -> _Rows:
    rng = np.random.default_rng(seed)
    if loc.kind == Locality.ZIPF:
        return ZipfRows(num_rows, loc.zipf_exponent, rng)
    if loc.kind == Locality.STACK_DISTANCE:
        assert loc.profile is not None
        return LRUStream(loc.profile.distances, loc.profile.normalized_cdf(), num_rows, seed)
    return _UniformRows(num_rows, rng)


@dataclass(frozen=True)
class SyntheticData:
    """`RandomData` batches whose rows follow a locality model per table, streamed across batches."""

    random: RandomData  # bag sizes, dense features, labels, seed
    locality: tuple[TableLocality, ...]  # one per table

    def __post_init__(self) -> None:
        if len(self.locality) != len(self.random.table_rows):
            raise ValueError(f"{len(self.locality)} locality models for {len(self.random.table_rows)} tables")
        for loc in self.locality:
            loc.validate()

    @property
    def table_rows(self) -> tuple[int, ...]:
        return self.random.table_rows

    def __len__(self) -> int:
        return len(self.random)

    def __iter__(self) -> Iterator[Batch]:
        seed = self.random.seed
        streams = [_rows(loc, E, seed * 1_000_003 + t) for t, (loc, E) in
                   enumerate(zip(self.locality, self.table_rows, strict=True))]  # fmt: skip
        for i in range(len(self)):
            base = self.random.batch(i)
            B = base.batch_size
            ends = base.offsets[B::B].tolist()  # end offset of each table's bags
            starts = [0, *ends[:-1]]
            rows = [s.take(b - a) for s, a, b in zip(streams, starts, ends, strict=True)]
            yield Batch(base.dense, torch.from_numpy(np.concatenate(rows)), base.offsets, base.labels)

    def shortfalls(self, samples: int | None = None) -> list[str]:
        """Notes on stack-distance tables with fewer rows than the first accesses their profile asks of
        `samples` samples (default: an epoch): once every row is out, a first access reuses the least
        recently used row, and the table's distances depart from its profile."""
        n = self.random.data_size if samples is None else samples
        L = self.random.pooling_factor
        notes = []
        for t, (loc, E) in enumerate(zip(self.locality, self.table_rows, strict=True)):
            if loc.kind != Locality.STACK_DISTANCE or loc.profile is None:
                continue
            c = min(E, L)  # a bag's lookups: L fixed, else max(1, round(u * c)), of mean c/2 + 1/(2c)
            accesses = n * (L if self.random.fixed else c / 2 + 1 / (2 * c))
            first = float(loc.profile.normalized_cdf()[0])
            needed = math.ceil(first * accesses)
            if needed > E:
                notes.append(f"table {t}: {E:,} rows, but its profile makes {first:.1%} of accesses first ones, "
                             f"about {needed:,} new rows in {accesses:,.0f} accesses: past {E:,} the stream "
                             "reuses the least recently used row and departs from the profile")  # fmt: skip
        return notes

    def describe(self) -> str:
        kinds = {loc.describe() for loc in self.locality}
        return kinds.pop() if len(kinds) == 1 else "; ".join(f"table {t}: {loc.describe()}"
                                                           for t, loc in enumerate(self.locality))  # fmt: skip
