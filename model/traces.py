"""Index traces and stack-distance profiles in the reference's file formats, and a trace's locality summary.

Formats (from the reference's `input/`):
- trace: row ids separated by ", " (trace.log; we also accept any mix of commas and white space,
  or a .npy integer array);
- profile (`--data-trace-file`): three lines of values separated by ", ": the unique rows in
  order of first access, the distinct stack distances (ascending, 0 for a first access), and
  the cumulative distribution over those distances (non-decreasing, ending at 1.0).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self

import numpy as np

from model.stack_distance import stack_distances
from profiler.store import write_text_atomic

__all__ = ["StackDistanceProfile", "TraceSummary", "read_trace", "summarize_trace"]

_CDF_TOLERANCE = 1e-3  # a profile's CDF may end this far from 1.0 (rounded figures); it is then rescaled
_SEP = re.compile(r"[,\s]+")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _numbers(text: str, kind: type, path: Path, line: int, what: str) -> list:
    tokens = [t for t in _SEP.split(text.strip()) if t]
    out = []
    for k, tok in enumerate(tokens, 1):
        where = f"{path}:{line}: {what}: value {k} = {tok[:30]!r}"
        try:
            x = kind(tok)
        except ValueError:
            raise ValueError(f"{where} is not {kind.__name__}") from None
        if kind is float and not math.isfinite(x):
            raise ValueError(f"{where} is not a finite number")
        if kind is int and not _INT64_MIN <= x <= _INT64_MAX:
            raise ValueError(f"{where} does not fit in 64 bits")
        out.append(x)
    return out


@dataclass(frozen=True)
class StackDistanceProfile:
    """A locality profile: LRU stack-distance distribution plus the unique rows of the trace it came from."""

    unique_accesses: tuple[int, ...]  # distinct rows, first-access order
    distances: tuple[int, ...]  # distinct stack distances, ascending; 0 = first access
    cdf: tuple[float, ...]  # P(distance <= distances[i])

    def validate(self, where: str = "profile", file: bool = False) -> Self:
        """Check the distances and CDF; `file`: `where` is the profile's path, and errors name its line."""
        at = (lambda line: f"{where}:{line}") if file else (lambda line: where)
        if not self.distances or len(self.distances) != len(self.cdf):
            raise ValueError(
                f"{where}: {len(self.distances)} stack distances but {len(self.cdf)} CDF values (need equal, >= 1)"
            )
        d = np.asarray(self.distances)
        c = np.asarray(self.cdf)
        if d[0] != 0:
            raise ValueError(f"{at(2)}: stack distances must start at 0 (a first access; every trace has one), "
                             f"the first is {d[0]}")  # fmt: skip
        if np.any(np.diff(d) <= 0):
            i = int(np.argmax(np.diff(d) <= 0)) + 1
            raise ValueError(f"{at(2)}: stack distances must be strictly increasing: value {i + 1} ({d[i]}) "
                             f"follows {d[i - 1]}")  # fmt: skip
        if not np.isfinite(c).all() or c[0] <= 0 or np.any(np.diff(c) < 0):
            bad = (~np.isfinite(c)) | np.r_[c[0] <= 0, np.diff(c) < 0]
            i = int(np.argmax(bad))
            raise ValueError(f"{at(3)}: the CDF must be finite and non-decreasing, with P(distance 0) > 0: "
                             f"value {i + 1} is {c[i]}" + (f" after {c[i - 1]}" if i else ""))  # fmt: skip
        if abs(c[-1] - 1.0) > _CDF_TOLERANCE:
            raise ValueError(f"{at(3)}: the CDF must end at 1.0, it ends at {c[-1]}")
        return self

    @classmethod
    def read(cls, path: str | os.PathLike[str]) -> Self:
        """Read a profile file (the reference's --data-trace-file format).

        Args:
            path: the file.
        Returns:
            the validated profile; ValueError naming the file and line otherwise.
        """
        p = Path(path)
        lines = _read_text(p).rstrip().splitlines()
        if len(lines) != 3:
            blank = sum(not ln.strip() for ln in lines)
            raise ValueError(
                f"{p}: a stack-distance profile has 3 lines (unique accesses, distances, CDF), found {len(lines)}"
                + (f", {blank} of them blank" if blank else "")
            )
        values = []
        for n, (line, kind, what) in enumerate(
            zip(lines, (int, int, float), ("unique accesses", "stack distances", "CDF"), strict=True), 1
        ):
            values.append(tuple(_numbers(line, kind, p, n, what)))
            if not values[-1]:
                raise ValueError(f"{p}:{n}: {what}: no value (the line is blank)")
        return cls(*values).validate(str(p), file=True)

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write the three lines, values separated by ", ", as the reference reads them."""
        text = "\n".join(", ".join(repr(x) for x in row) for row in (self.unique_accesses, self.distances, self.cdf))
        write_text_atomic(path, text + "\n")

    def normalized_cdf(self) -> np.ndarray:
        c = np.asarray(self.cdf, dtype=np.float64)
        return c / c[-1]

    @classmethod
    def from_distances(cls, distances: np.ndarray, unique_accesses: np.ndarray) -> Self:
        values, counts = np.unique(distances, return_counts=True)
        cdf = np.cumsum(counts) / counts.sum()
        cdf[-1] = 1.0
        return cls(tuple(int(x) for x in unique_accesses), tuple(int(x) for x in values), tuple(float(x) for x in cdf))


def _read_text(p: Path) -> str:
    if not p.exists():
        raise ValueError(f"{p}: no such file")
    if p.is_dir():
        raise ValueError(f"{p}: is a directory")
    data = p.read_bytes()
    if not data.strip():
        raise ValueError(f"{p}: empty file")
    if b"\x00" in data[:8192]:
        raise ValueError(f"{p}: binary file, expected text")
    return data.decode("utf-8", errors="replace")


def _read_npy(p: Path) -> np.ndarray:
    with p.open("rb") as f:
        if f.read(len(np.lib.format.MAGIC_PREFIX)) != np.lib.format.MAGIC_PREFIX:
            raise ValueError(f"{p}: not a .npy file (no NumPy header); a text trace must not end in .npy")
    try:
        return np.load(p, allow_pickle=False)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(f"{p}: unreadable .npy file: {exc}") from None


def read_trace(path: str | os.PathLike[str]) -> np.ndarray:
    """Row ids of a trace file: the reference's trace.log (", "-separated), any comma/space list, or .npy.

    Args:
        path: the trace file.
    Returns:
        (N,) int64 row ids (N >= 1, all >= 0).
    """
    p = Path(path)
    if p.suffix == ".npy" and p.is_file():
        arr = _read_npy(p)
        if arr.dtype.kind not in "iu":
            raise ValueError(f"{p}: a .npy trace must hold integers, got {arr.dtype}")
        if arr.dtype.kind == "u" and arr.size and arr.max() > _INT64_MAX:
            raise ValueError(f"{p}: row id {int(arr.max())} does not fit in 64 bits")
        trace = arr.astype(np.int64).ravel()
    else:
        trace = np.array(
            [v for n, ln in enumerate(_read_text(p).splitlines(), 1) for v in _numbers(ln, int, p, n, "row id")],
            dtype=np.int64,
        )
    if trace.size == 0:
        raise ValueError(f"{p}: no row id in the trace")
    if trace.min() < 0:
        raise ValueError(f"{p}: row ids must be >= 0, found {int(trace.min())}")
    return trace


@dataclass(frozen=True)
class TraceSummary:
    """Locality of one trace: what `dlrmbench trace profile` prints and writes."""

    accesses: int
    unique_rows: int
    profile: StackDistanceProfile
    reuse_histogram: tuple[tuple[int, int, int], ...]  # (min distance, max distance, accesses); (0, 0) = first
    hottest_1pct_share: float  # share of accesses to the hottest 1% of the distinct rows
    hottest_10pct_share: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "accesses": self.accesses,
            "unique_rows": self.unique_rows,
            "cold_share": self.profile.cdf[0] if self.profile.distances[0] == 0 else 0.0,
            "hottest_1pct_share": self.hottest_1pct_share,
            "hottest_10pct_share": self.hottest_10pct_share,
            "reuse_histogram": [
                {"min_distance": a, "max_distance": b, "accesses": n, "share": n / self.accesses}
                for a, b, n in self.reuse_histogram
            ],
            "stack_distances": list(self.profile.distances),
            "cdf": list(self.profile.cdf),
        }


def _hot_share(counts_desc: np.ndarray, fraction: float) -> float:
    k = max(1, math.ceil(fraction * counts_desc.size))
    return float(counts_desc[:k].sum() / counts_desc.sum())


def summarize_trace(trace: np.ndarray) -> TraceSummary:
    """Unique rows, stack-distance CDF, log2 reuse histogram and hot-row shares of a trace.

    Args:
        trace: (N,) row ids in access order.
    Returns:
        TraceSummary; its profile holds the unique rows in first-access order.
    """
    trace = np.asarray(trace, dtype=np.int64).ravel()
    dist = stack_distances(trace)
    uniq, first = np.unique(trace, return_index=True)
    first_order = uniq[np.argsort(first, kind="stable")]
    _, counts = np.unique(trace, return_counts=True)
    counts_desc = np.sort(counts)[::-1]
    hist = [(0, 0, int((dist == 0).sum()))]
    top = int(dist.max()) if dist.size else 0
    lo = 1
    while lo <= top:
        hi = 2 * lo - 1
        hist.append((lo, hi, int(((dist >= lo) & (dist <= hi)).sum())))
        lo *= 2
    return TraceSummary(
        int(trace.size),
        int(uniq.size),
        StackDistanceProfile.from_distances(dist, first_order),
        tuple(hist),
        _hot_share(counts_desc, 0.01),
        _hot_share(counts_desc, 0.10),
    )
