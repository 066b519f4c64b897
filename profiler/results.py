"""Read stored results (a results/<sku-id>/ folder or one .jsonl) into flat rows for tables and plots.

A row is one point record flattened: the Point's fields, the point key, status and reason, the
median / IQR / p25 / p75 seconds, the derived counts and rates (gbps, gflops, ...), and the machine
(sku_id, machine_name). Rows are plain dicts so tables and plots group them by *fields*
(`group_by(rows, ["kernel"])`), never by parsing labels. Nothing here measures anything.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from profiler.ceilings import Ceiling
from profiler.store import latest_per_key, read_records
from profiler.sweep_spec import Point, cache_sizes

__all__ = [
    "POINT_FIELDS",
    "Machine",
    "ResultSet",
    "band",
    "group_by",
    "kernel_label",
    "load_results",
    "machine_name",
    "point_label",
    "select",
    "shared_label",
    "threads_of",
    "value_of",
    "varying_fields",
]

POINT_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(Point))
_SHORT = {"batch_size": "B", "num_rows": "E", "embedding_dim": "D", "pooling_factor": "L", "num_tables": "T",
          "working_set": "ws", "distribution": "dist", "embedding_grad": "grad", "world_size": "W"}  # fmt: skip
_SHAPE = ("batch_size", "num_rows", "embedding_dim", "pooling_factor", "num_tables")
_BYTES_PER_ELEMENT = 4  # float32 tables: a working set of "all" is the whole table


@dataclass(frozen=True)
class Machine:
    """One SKU: its id, fingerprint and stored ceilings (empty when machine.json has none)."""

    sku_id: str
    fingerprint: dict[str, Any]
    ceilings: tuple[Ceiling, ...] = ()

    @property
    def name(self) -> str:
        return machine_name(self.fingerprint, self.sku_id)

    def cache_sizes_bytes(self) -> dict[str, int]:
        """Level -> bytes one thread sees, as the runner resolves them (sweep_spec.cache_sizes)."""
        return cache_sizes(self.fingerprint)


@dataclass(frozen=True)
class ResultSet:
    """Rows from one or more results files, with the machines they were measured on."""

    rows: list[dict[str, Any]]
    machines: dict[str, Machine]
    files: list[Path] = field(default_factory=list)
    torn_lines: int = 0
    excluded_contended: int = 0
    torn_notes: tuple[str, ...] = ()  # 'FILE:LINE: why' of each skipped line

    def torn_summary(self) -> str:
        """'N torn or malformed line(s), first FILE:LINE: why' ('' when none was skipped)."""
        if not self.torn_lines:
            return ""
        first = f", first {self.torn_notes[0]}" if self.torn_notes else ""
        return f"{self.torn_lines} torn or malformed line(s){first}"

    def sweeps(self) -> list[str]:
        return list(dict.fromkeys(r["sweep"] for r in self.rows))


def machine_name(fingerprint: dict[str, Any], sku_id: str = "") -> str:
    """'AMD EPYC (2 cpus)', plus ' + NVIDIA H100' per GPU: the label a SKU gets in tables and legends."""
    cpu = str(fingerprint.get("cpu_brand") or fingerprint.get("cpu_vendor") or sku_id or "unknown machine")
    cpus = fingerprint.get("affinity_cpus") or fingerprint.get("logical_cpus")
    name = f"{cpu} ({cpus} cpu{'' if cpus == 1 else 's'})" if cpus else cpu
    gpus = [str(g.get("name", "GPU")) for g in fingerprint.get("gpus", []) or []]
    return name + "".join(f" + {g}" for g in dict.fromkeys(gpus))


def load_results(path: str | Path, *, include_contended: bool = True, include_failed: bool = True) -> ResultSet:
    """Rows of a results folder (every *.jsonl in it, machine.json beside them) or of one .jsonl file.

    Args:
        path: results/<sku-id>/, a .jsonl file, or a folder of several <sku-id>/ folders.
        include_contended: keep points whose measurement was flagged as contended (CPU pressure, steal).
        include_failed: keep failed points (status "failed", with their reason and no timing).
    Returns:
        A ResultSet; rows in file order, files in name order.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such results file or folder")
    if path.is_file():
        if path.suffix != ".jsonl":
            raise ValueError(f"{path}: expected a results folder or a .jsonl file")
        files = [path]
    else:
        files = sorted(path.glob("*.jsonl")) or sorted(path.glob("*/*.jsonl"))
        if not files:
            raise ValueError(f"{path}: no *.jsonl results here (run `dlrmbench sweep FILE --results-dir ...` first)")
    rows: list[dict[str, Any]] = []
    machines: dict[str, Machine] = {}
    torn = contended = 0
    notes: list[str] = []
    for f in files:
        read = read_records(f)
        torn += len(read.torn_lines)
        notes += [f"{f}:{n}: {why}" for n, why in read.problems.items()]
        header = read.header or {}
        machine = _machine_for(f.parent, header, machines)
        for rec in latest_per_key(read.records):  # a point measured again: its last record
            if rec.get("kind", "point") != "point":
                continue
            row = _flatten(rec, header, machine, f)
            if row["status"] != "ok" and not include_failed:
                continue
            if row["contended"] and not include_contended:
                contended += 1
                continue
            rows.append(row)
    return ResultSet(rows, machines, files, torn, contended, tuple(notes))


def _machine_for(folder: Path, header: dict[str, Any], seen: dict[str, Machine]) -> Machine:
    sku = str(header.get("sku_id") or folder.name)
    if sku in seen:
        return seen[sku]
    fp: dict[str, Any] = dict(header.get("fingerprint") or {})
    ceilings: tuple[Ceiling, ...] = ()
    machine_json = folder / "machine.json"
    if machine_json.exists():
        try:
            stored = json.loads(machine_json.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{machine_json}: not valid JSON: {exc}") from None
        if stored.get("sku_id", sku) == sku:
            fp = stored.get("fingerprint") or fp
            ceilings = tuple(Ceiling.from_dict(c) for c in stored.get("ceilings", []))
    seen[sku] = Machine(sku, fp, ceilings)
    return seen[sku]


def _flatten(rec: dict[str, Any], header: dict[str, Any], machine: Machine, source: Path) -> dict[str, Any]:
    point = Point.from_dict(rec["point"]).to_dict()
    m = rec.get("measurement") or {}
    derived = rec.get("derived") or {}
    row: dict[str, Any] = {**derived, **point}  # point fields win over any clash
    row.update(
        key=rec.get("key") or Point.from_dict(rec["point"]).key(),
        sweep=point.get("sweep") or header.get("sweep") or source.stem,
        status=rec.get("status", "ok"),
        reason=rec.get("reason", ""),
        median_s=rec.get("median_s", m.get("median_s")),
        iqr_s=rec.get("iqr_s", m.get("iqr_s")),
        p25_s=m.get("p25_s"),
        p75_s=m.get("p75_s"),
        n_samples=m.get("n_samples"),
        measured_threads=m.get("threads"),
        contended=bool(m.get("contended", False)),
        warnings=list(rec.get("warnings", m.get("warnings", [])) or []),
        sku_id=machine.sku_id,
        machine_name=machine.name,
        table_bytes=point["num_rows"] * point["embedding_dim"] * _BYTES_PER_ELEMENT * point["num_tables"],
        source=str(source),
        spec_file=str(header.get("spec_file", "")),
    )
    if row.get("working_set_bytes") is None and point["working_set"] == "all" and point["target"] != "all_to_all":
        row["working_set_bytes"] = row["table_bytes"]  # the hot set is every row (an all-to-all reads no table)
    return row


def value_of(row: dict[str, Any], name: str) -> Any:
    """A row's value for a plot axis or table column; 'working_set' means its resolved bytes."""
    if name == "working_set":
        name = "working_set_bytes"
    return row.get(name)


def band(row: dict[str, Any], metric: str) -> tuple[float, float] | None:
    """The p25-p75 band of `metric` for one row, from the timing percentiles.

    A time (a name ending in _s) maps directly: (p25_s, p75_s). Any other stored metric is a rate
    of fixed work per time (GB/s, GFLOP/s, lookups/s, fraction of a ceiling), so its value at a
    time t is value x median_s / t: the slow quartile p75_s gives the low edge.
    Returns None when the row lacks the metric or the percentiles.
    """
    value, med, p25, p75 = row.get(metric), row.get("median_s"), row.get("p25_s"), row.get("p75_s")
    if value is None or not med or not p25 or not p75:
        return None
    if metric.endswith("_s"):
        return (float(p25), float(p75)) if metric == "median_s" else None
    return (float(value) * med / p75, float(value) * med / p25)


def select(rows: Iterable[dict[str, Any]], filters: list[str] | None = None, **equal: Any) -> list[dict[str, Any]]:
    """Rows whose fields equal the given values; `filters` are 'key=value' strings compared as text.

    Args:
        rows: flat rows.
        filters: e.g. ["kernel=torch", "batch_size=2048"] (the `--filter` syntax of `dlrmbench sweep`).
        equal: field=value pairs compared exactly.
    """
    wanted = dict(equal)
    text: dict[str, str] = {}
    for f in filters or []:
        key, sep, value = f.partition("=")
        if not sep or not key:
            raise ValueError(f"filter {f!r}: expected KEY=VALUE, e.g. kernel=torch")
        text[key] = value
    rows = list(rows)
    known = set().union(*(r.keys() for r in rows)) if rows else set(POINT_FIELDS)
    for key in [*wanted, *text]:
        if key not in known:
            raise ValueError(f"filter key {key!r} is not a field of these results; known: {', '.join(sorted(known))}")
    return [
        r
        for r in rows
        if all(r.get(k) == v for k, v in wanted.items()) and all(str(r.get(k)) == v for k, v in text.items())
    ]


def group_by(rows: Iterable[dict[str, Any]], keys: list[str] | tuple[str, ...]) -> dict[tuple[Any, ...], list[dict]]:
    """Rows grouped by the values of `keys`, in first-seen order."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(tuple(r.get(k) for k in keys), []).append(r)
    return groups


def varying_fields(rows: list[dict[str, Any]], exclude: Iterable[str] = ()) -> list[str]:
    """Point fields (sweep excluded) that take more than one value over `rows`, in Point order."""
    skip = {"sweep", *exclude}
    return [f for f in POINT_FIELDS if f not in skip and len({str(r.get(f)) for r in rows}) > 1]


def kernel_label(row: dict[str, Any]) -> str:
    """The kernel, or for an all-to-all point the collective backend (it runs no embedding kernel)."""
    return str(row.get("backend") or "-") if row.get("target") == "all_to_all" else str(row["kernel"])


def threads_of(row: dict[str, Any]) -> int:
    """The threads a point ran on: as measured, else as asked (0: not known, torch's default was asked)."""
    return int(row.get("measured_threads") or row.get("threads") or 0)


def shared_label(rows: list[dict[str, Any]]) -> str:
    """What a figure's points have in common, for its title: 'sweep quickstart: B=512 E=2000000 D=64 L=20 T=1;
    2 threads' (the sweep, or how many, the shape fields with one value over all rows, the threads measured;
    the '; ' keeps the thread count from reading as part of T, as 'T=1 2 threads' did)."""
    if not rows:
        return ""
    sweeps = list(dict.fromkeys(str(r.get("sweep")) for r in rows))
    shape = _SHAPE
    if all(r.get("target") == "all_to_all" for r in rows):  # pooled vectors: no rows, no lookups per bag
        shape = (*(f for f in _SHAPE if f not in ("num_rows", "pooling_factor")), "world_size")
    same = [f for f in shape if f in rows[0] and len({str(r.get(f)) for r in rows}) == 1]
    threads = {threads_of(r) for r in rows}
    head = f"sweep {sweeps[0]}" if len(sweeps) == 1 else f"{len(sweeps)} sweeps"
    shape = point_label(rows[0], same, short=True) if same else ""
    n = threads.pop() if len(threads) == 1 else None
    count = f"{n} thread{'s' if n != 1 else ''}" if n else ""
    return head + (": " if shape or count else "") + "; ".join(x for x in (shape, count) if x)


def point_label(row: dict[str, Any], keys: list[str], *, short: bool = False) -> str:
    """'batch_size=128 embedding_dim=64' for the given fields (the axes that vary).

    With short, the domain letters: 'B=128 D=64' (B batch, E rows, D dim, L pooling, T tables, ws working set,
    W world size).
    With no keys (a single point per kernel), the shape: 'B=128 E=100000 D=16 L=10 T=26'.
    """
    keys = keys or list(_SHAPE)
    return " ".join(f"{_SHORT.get(k, k) if short else k}={row.get(k)}" for k in keys)
