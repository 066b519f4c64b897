"""Input checks that every unchecked kernel relies on: shapes, dtypes, index and offset ranges."""

from __future__ import annotations

import numpy as np
import torch

from kernels.update import numba_threads

__all__ = ["INT32_MAX", "fused_rows", "validate_bags", "validate_tables"]

INT32_MAX = 2**31 - 1  # past this many rows or lookups, int32 indices and offsets no longer fit

try:
    import numba
    from numba import njit, prange
except ImportError:  # numba is a dependency, but keep torch's path if it is missing
    numba = None

_INDEX_DTYPES = (torch.int32, torch.int64)


def validate_bags(
    num_rows: int | None,
    indices: torch.Tensor,
    offsets: torch.Tensor,
    per_sample_weights: torch.Tensor | None = None,
    *,
    where: str = "",
    batch_size: int = 0,
    device: torch.device | None = None,
    extra_bad: torch.Tensor | None = None,
) -> bool:
    """Raise ValueError unless (indices, offsets) describe valid bags over `num_rows` rows.

    Offsets are CSR style: B + 1 non-decreasing entries from 0 to len(indices).
    `where` prefixes messages (e.g. "table 3") so the caller's context is named.

    Args:
        num_rows: rows of the table the indices address; None skips the range check.
        indices: 1-D int32/int64 row ids.
        offsets: 1-D int32/int64, length B + 1.
        per_sample_weights: optional 1-D floating tensor, one weight per index.
        where: context for the message.
        batch_size: B when the bags are T tables x B (table-batched): messages then name the table and bag.
        device: the table's; every input must be on it (a compiled CPU loop would read a GPU pointer).
        extra_bad: a 0-d bool tensor of the caller's own check, read back with these in the same copy
            (validate_tables' per-table ranges).
    Returns:
        `extra_bad`'s value (False without it): the caller names that fault.
    """
    at = f"{where}: " if where else ""
    on = {"indices": indices.device, "offsets": offsets.device}
    if per_sample_weights is not None:
        on["per_sample_weights"] = per_sample_weights.device
    want = device if device is not None else indices.device
    stray = [f"{name} on {d}" for name, d in on.items() if d != want]
    if stray:
        raise ValueError(f"{at}{', '.join(stray)}, but the {'table' if device is not None else 'indices'} on "
                         f"{want}: every input must be on one device")  # fmt: skip
    for name, t in (("indices", indices), ("offsets", offsets)):
        if t.dtype not in _INDEX_DTYPES:
            raise ValueError(f"{at}{name} must be int32 or int64, got {t.dtype}")
        if t.dim() != 1:
            raise ValueError(f"{at}{name} must be 1-D, got shape {tuple(t.shape)}")
    if offsets.numel() == 0:
        raise ValueError(f"{at}offsets must have B + 1 >= 1 entries, got none")
    faults = _bag_checks(num_rows, indices, offsets, extra_bad)
    flagged = bool(faults.pop()) if extra_bad is not None else False
    if any(faults):
        _name_the_fault(num_rows, indices, offsets, at, batch_size)
    if per_sample_weights is not None:
        if not per_sample_weights.is_floating_point():
            raise ValueError(f"{at}per_sample_weights must be floating point, got {per_sample_weights.dtype}")
        if per_sample_weights.shape != indices.shape:
            raise ValueError(
                f"{at}per_sample_weights has shape {tuple(per_sample_weights.shape)}, "
                f"indices {tuple(indices.shape)}: they must match"
            )
    return flagged


def _bag_checks(
    num_rows: int | None, indices: torch.Tensor, offsets: torch.Tensor, extra_bad: torch.Tensor | None = None
) -> list[int]:
    """Every check at once, read back in one device-to-host copy (on a GPU, one sync per batch): all 0 when
    right; `extra_bad`, when given, last. On CPU one compiled pass does them: the dozen small torch ops took
    27 us for B=256 x L=20 and 39 us for B=2048, two to three times the numba kernel they guard."""
    strided = indices.layout == offsets.layout == torch.strided
    if numba is not None and indices.device.type == offsets.device.type == "cpu" and strided:
        rows = -1 if num_rows is None else min(max(num_rows, 0), 2**63 - 1)  # < 0 rows: every index is out
        faults = list(_bag_faults(indices.numpy(), offsets.numpy(), np.int64(rows)))
        return faults + ([int(extra_bad)] if extra_bad is not None else [])
    parts = [offsets[0].long(), offsets[-1].long() - indices.numel()]  # both 0 when right
    if offsets.numel() > 1:
        parts.append((offsets[1:] < offsets[:-1]).any().long())
    if indices.numel() and num_rows is not None:
        lo, hi = torch.aminmax(indices)
        parts += [(lo < 0).long(), (hi.long() >= num_rows).long()]
    if extra_bad is not None:
        parts.append(extra_bad.long())
    return torch.stack(parts).tolist()


def _name_the_fault(
    num_rows: int | None, indices: torch.Tensor, offsets: torch.Tensor, at: str, batch_size: int
) -> None:
    """The first fault _bags_ok found, named by position, bag and value (a slow path: bad input only)."""
    n = indices.numel()
    first, last = int(offsets[0]), int(offsets[-1])
    if first != 0:
        raise ValueError(f"{at}offsets[0] must be 0, got {first}")
    if last != n:
        fault = "overruns" if last > n else "stops short of"
        raise ValueError(f"{at}offsets[-1] = {last} {fault} the {n} indices (it must equal len(indices))")
    if offsets.numel() > 1:
        bad = (offsets[1:] < offsets[:-1]).nonzero()
        if bad.numel():
            i = int(bad[0, 0])  # bag i ends before it starts
            bag = f"table {i // batch_size}, bag {i % batch_size}" if batch_size else f"bag {i}"
            raise ValueError(
                f"{at}offsets decrease at position {i + 1} ({bag}): "
                f"offsets[{i}] = {int(offsets[i])} > offsets[{i + 1}] = {int(offsets[i + 1])}"
            )
    if n and num_rows is not None:
        limit = torch.iinfo(indices.dtype).max
        # a Python bound past the index dtype's range would wrap in the comparison: every index is below it
        bad = ((indices < 0) | (indices >= num_rows) if num_rows <= limit else indices < 0).nonzero()
        if bad.numel():
            i = int(bad[0, 0])
            bag = int(torch.searchsorted(offsets, torch.tensor(i, dtype=offsets.dtype), right=True)) - 1
            raise ValueError(f"{at}index {int(indices[i])} at position {i} (bag {bag}) is out of range [0, {num_rows})")
    raise ValueError(f"{at}invalid bags (a check disagreed with its slow path: please report)")


def validate_tables(
    table_rows: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """Check a table-batched lookup (T tables x B bags, tables concatenated) table by table.

    Layout, e.g. T=2, B=2 (bags 0,1 of table 0 then bags 0,1 of table 1):
        indices = [3, 1, 4 | 0 | 2, 2]      offsets = [0, 2, 3, 4, 6]
    Table t's bags are offsets[t*B : (t+1)*B + 1].

    Args:
        table_rows: (T,) int64, rows of each table (on the device of `indices`).
        indices: (N,) int32/int64, row ids local to their table.
        offsets: (T*B + 1,) int32/int64, CSR over all bags.
        batch_size: B.
    Returns:
        (N,) int64, the table of each index (callers need it to address a fused table).
    """
    num_tables = table_rows.numel()
    if offsets.dim() == 1 and offsets.numel() != num_tables * batch_size + 1:
        raise ValueError(
            f"offsets has {offsets.numel()} entries; {num_tables} tables x {batch_size} bags "
            f"need {num_tables * batch_size + 1}"
        )
    table_starts = offsets[:: max(batch_size, 1)] if batch_size else offsets.new_zeros(num_tables + 1)
    n = indices.numel()
    same_device = indices.device == offsets.device == table_rows.device
    if offsets.dim() == 1 and indices.dim() == 1 and same_device and offsets.numel() and n and num_tables:
        # each index's table by binary search over the tables' ends: in range even for bad offsets, so the
        # per-table range check joins validate_bags' one device-to-host read (one GPU sync a batch, not two);
        # other shapes and devices go to validate_bags as they are, which names what is wrong
        ends = table_starts[1:].contiguous()
        positions = torch.arange(n, device=indices.device, dtype=ends.dtype)
        table_ids = torch.searchsorted(ends, positions, right=True).clamp_(max=num_tables - 1)
        limits = table_rows.index_select(0, table_ids)
        out_of_range = ((indices < 0) | (indices >= limits)).any()
    else:
        table_ids = torch.zeros(n, dtype=torch.int64, device=indices.device)
        out_of_range = None
    # shapes, dtypes, offsets, and the ranges above, in one read; raises on bad offsets
    if validate_bags(None, indices, offsets, batch_size=batch_size, extra_bad=out_of_range):
        bad = ((indices < 0) | (indices >= limits)).nonzero()  # the slow path: bad input only
        if bad.numel():
            i = int(bad[0, 0])
            t = int(table_ids[i])
            pos = i - int(table_starts[t])
            bag = int(torch.searchsorted(offsets, torch.tensor(i, dtype=offsets.dtype), right=True)) - 1
            raise ValueError(
                f"table {t}: index {int(indices[i])} at position {pos} (bag {bag - t * batch_size}) "
                f"is out of range [0, {int(table_rows[t])})"
            )
    return table_ids


if numba is not None:

    @njit(cache=True, nogil=True)
    def _bag_faults(indices, offsets, num_rows):  # pragma: no cover - compiled
        """_bag_checks' flags in one pass: offsets[0] != 0, offsets[-1] != N, a decrease, an index out of
        [0, num_rows) (num_rows < 0: not checked)."""
        dec = False
        for i in range(1, offsets.shape[0]):
            dec |= offsets[i] < offsets[i - 1]  # no branch: the loop vectorises
        bad = False
        if num_rows >= 0:
            for i in range(indices.shape[0]):
                v = np.int64(indices[i])
                bad |= (v < 0) | (v >= num_rows)
        return int(offsets[0] != 0), int(offsets[-1] != indices.shape[0]), int(dec), int(bad)

    @njit(parallel=True, cache=True, nogil=True)
    def _fused_rows(indices, offsets, batch_size, table_rows, row_starts, out):  # pragma: no cover - compiled
        num_tables = table_rows.shape[0]
        ok = np.ones(num_tables, dtype=np.bool_)
        for t in prange(num_tables):
            lim = table_rows[t]
            start = row_starts[t]
            good = True
            for i in range(offsets[t * batch_size], offsets[(t + 1) * batch_size]):
                v = indices[i]
                good &= (v >= 0) & (v < lim)  # no branch: the loop vectorises
                out[i] = v + start
            ok[t] = good
        return ok.all()


def fused_rows(
    table_rows: torch.Tensor, row_starts: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, batch_size: int
) -> torch.Tensor:
    """validate_tables, then each index's row in the tables' concatenation: indices + row_starts[table].

    One compiled pass on CPU (the torch ops took 1.7 ms of a 48 ms step at batch 2048 with
    26 tables x 10 lookups); on bad input the torch path runs to name the table and position.

    Args:
        table_rows: (T,) int64 rows per table; row_starts: (T + 1,) int64 cumulative.
        indices, offsets, batch_size: as validate_tables.
    Returns:
        (N,) int64 rows of the fused table.
    """
    fast = (
        numba is not None
        and indices.device.type == "cpu"
        and table_rows.device.type == "cpu"
        and table_rows.dtype == torch.int64
        and row_starts.dtype == torch.int64
        and row_starts.numel() == table_rows.numel() + 1
    )
    if fast:
        num_tables = table_rows.numel()
        if offsets.dim() != 1 or offsets.numel() != num_tables * batch_size + 1:
            validate_tables(table_rows, indices, offsets, batch_size)  # raises, naming the mismatch
        validate_bags(None, indices, offsets, batch_size=batch_size)  # offsets monotone in [0, N]: the loop bounds
        numba_threads()
        out = torch.empty(indices.numel(), dtype=torch.int64)
        if _fused_rows(
            indices.numpy(),
            offsets.numpy(),
            np.int64(batch_size),
            table_rows.contiguous().numpy(),
            row_starts.contiguous().numpy(),
            out.numpy(),
        ):
            return out
    table_ids = validate_tables(table_rows, indices, offsets, batch_size)  # raises on bad input
    return indices + row_starts.index_select(0, table_ids)
