"""Criteo samples as DLRM batches: categorical values mapped to table rows, a train / test split, batching.

Two ways to turn a 32-bit categorical value into a row of its table:
- vocabulary (default): each table's rows are the distinct values seen in the training rows
  (optionally only those seen at least `min_count` times), plus row 0 for an empty field and
  row 1 for a value not in the vocabulary (test rows, rare values);
- modulo (`--max-ind-range N`): row = value mod N, an empty field is value 0 as in the
  reference; every table has N rows and no vocabulary pass is needed.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch

from model.criteo_cache import CriteoCache
from model.criteo_format import NUM_CAT, NUM_DENSE
from model.data import Batch

__all__ = ["EMPTY_ROW", "UNSEEN_ROW", "CategoryIndex", "CriteoData", "split_rows"]

EMPTY_ROW = 0  # vocabulary mapping: the row of an empty field
UNSEEN_ROW = 1  # vocabulary mapping: the row of a value outside the vocabulary
_RESERVED = 2


class CategoryIndex:
    """Maps (B, 26) categorical values (+ empty bits) to (26, B) table-local rows."""

    def __init__(self, vocab: list[np.ndarray] | None = None, max_ind_range: int = 0):
        if (vocab is None) == (max_ind_range <= 0):
            raise ValueError("CategoryIndex: give a vocabulary or max_ind_range > 0, not both")
        if vocab is not None and len(vocab) != NUM_CAT:
            raise ValueError(f"CategoryIndex: {len(vocab)} vocabularies, expected {NUM_CAT}")
        self.vocab = vocab
        self.max_ind_range = max_ind_range

    @property
    def table_rows(self) -> tuple[int, ...]:
        if self.vocab is None:
            return (self.max_ind_range,) * NUM_CAT
        return tuple(len(v) + _RESERVED for v in self.vocab)

    def describe(self) -> str:
        if self.vocab is None:
            return f"categorical values modulo --max-ind-range {self.max_ind_range}"
        return "vocabulary of the training rows (row 0: empty, row 1: unseen)"

    def rows(self, cats: np.ndarray, empty: np.ndarray) -> np.ndarray:
        """Table rows of a block of samples.

        Args:
            cats: (B, 26) uint32 values.
            empty: (B,) uint32, bit t set when categorical t is empty.
        Returns:
            (26, B) int64 rows, table-major as a Batch lays them out.
        """
        values = np.asarray(cats, dtype=np.int64).T  # (26, B)
        bits = (np.asarray(empty, dtype=np.uint32)[None, :] >> np.arange(NUM_CAT, dtype=np.uint32)[:, None]) & 1
        is_empty = bits.astype(bool)  # (26, B)
        if self.vocab is None:
            return np.where(is_empty, 0, values) % self.max_ind_range
        out = np.empty_like(values)
        for t, v in enumerate(self.vocab):
            pos = np.searchsorted(v, values[t])
            found = pos < len(v)
            found[found] = v[pos[found]] == values[t][found]
            out[t] = np.where(found, pos + _RESERVED, UNSEEN_ROW)
        out[is_empty] = EMPTY_ROW
        return out


def split_rows(n: int, test_fraction: float) -> int:
    """Training rows when the last `test_fraction` of n rows are held out (rows stay in file order).

    Args:
        n: rows in the file.
        test_fraction: in [0, 1); the test split is the last round(n * fraction) rows.
    Returns:
        n_train, at least 1, and at most n - 1 when test_fraction > 0.
    """
    if not 0.0 <= test_fraction < 1.0:
        raise ValueError(f"--test-fraction must be in [0, 1), got {test_fraction}")
    if test_fraction == 0:
        return n
    n_test = round(n * test_fraction)
    if n_test < 1 or n - n_test < 1:
        raise ValueError(f"--test-fraction {test_fraction} of {n} rows leaves an empty train or test split")
    return n - n_test


@dataclass(frozen=True, eq=False)
class CriteoData:
    """Rows [start, stop) of a cache in batches of B: one lookup per table per sample.

    With `shuffle`, each epoch visits the batches in a new order (seeded); samples within a
    batch stay neighbours in the file. Without it, file order (the reference shuffles its
    training rows once, at preprocessing, by default).
    """

    cache: CriteoCache
    index: CategoryIndex
    batch_size: int  # B
    start: int = 0
    stop: int = -1  # -1: to the end
    shuffle: bool = False
    seed: int = 123
    _epoch: list[int] = field(default_factory=lambda: [0], repr=False)

    def __post_init__(self) -> None:
        stop = len(self.cache) if self.stop < 0 else self.stop
        object.__setattr__(self, "stop", stop)
        if self.batch_size < 1:
            raise ValueError(f"batch size must be >= 1, got {self.batch_size}")
        if not 0 <= self.start < stop <= len(self.cache):
            raise ValueError(f"rows [{self.start}, {stop}) outside the {len(self.cache)} rows of {self.cache.source}")

    @property
    def table_rows(self) -> tuple[int, ...]:
        return self.index.table_rows

    @property
    def num_dense(self) -> int:
        return NUM_DENSE

    @property
    def samples(self) -> int:
        return self.stop - self.start

    def __len__(self) -> int:
        return math.ceil(self.samples / self.batch_size)

    def positive_rate(self) -> float:
        """Share of label-1 rows in [start, stop)."""
        return float(self.cache.labels[self.start : self.stop].mean(dtype=np.float64))

    def set_epoch(self, epoch: int) -> None:
        """Iterate next in `epoch`'s order (each iteration moves on one): a resumed run replays its epoch."""
        self._epoch[0] = epoch

    def __iter__(self) -> Iterator[Batch]:
        return self.batches_from(0)

    def batches_from(self, first: int) -> Iterator[Batch]:
        """This epoch's batches from position `first` on; a resumed run skips those it trained without building them."""
        order = np.arange(len(self))
        if self.shuffle:
            np.random.default_rng((self.seed, self._epoch[0])).shuffle(order)
            self._epoch[0] += 1
        for i in order[first:]:
            yield self.batch(int(i))

    def batch(self, i: int) -> Batch:
        lo = self.start + i * self.batch_size
        hi = min(lo + self.batch_size, self.stop)
        B = hi - lo
        rows = self.index.rows(self.cache.cats[lo:hi], self.cache.cat_empty[lo:hi])  # (26, B)
        return Batch(
            torch.from_numpy(np.array(self.cache.dense[lo:hi], dtype=np.float32)),
            torch.from_numpy(rows.reshape(-1)),
            torch.arange(NUM_CAT * B + 1, dtype=torch.int64),
            torch.from_numpy(np.array(self.cache.labels[lo:hi], dtype=np.float32)),
        )
