"""Crash-safe results: one JSON line per finished point, appended under a lock, flushed and fsynced.

A results file opens with a header line (schema version, sweep, machine fingerprint); every
other line is a point record. A crash or kill -9 mid-write leaves at most one torn last line:
readers skip it (and count it), and the next writer first ends it with a newline so the
file stays one record per line. Records are never rewritten: a point measured again (a failed
point retried, or --force) appends a new record, and readers take the last record of each key.
One sweep at a time writes a file (`ResultFile.exclusive`): two would measure each other.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from profiler.sweep_spec import Point

__all__ = [
    "SCHEMA_VERSION",
    "Busy",
    "ResultFile",
    "ensure_folder",
    "latest_per_key",
    "read_header",
    "read_records",
    "replace_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

# 1: header {"kind": "header", schema_version, sweep, sku_id, fingerprint};
#    records {"kind": "point", schema_version, key, point, status, reason, measurement, derived, ...}
SCHEMA_VERSION = 1
_POINT_TYPES = {f.name: int if f.type == "int" else str for f in fields(Point)}
# every point record a sweep writes carries these: without them a record would read as the default point
_POINT_REQUIRED = ("target", "kernel", "batch_size", "num_rows", "embedding_dim", "pooling_factor", "num_tables")


class Busy(RuntimeError):
    """Another sweep holds the results file (exit status 75, EX_TEMPFAIL: try again later)."""

    exit_code = 75


@dataclass(frozen=True)
class Read:
    header: dict[str, Any] | None
    records: list[dict[str, Any]]
    torn_lines: list[int]  # 1-based line numbers that were not valid JSON, or not a record's shape
    problems: dict[int, str] = field(default_factory=dict)  # line -> what is wrong with it


# fields a record's readers compute with: a value of another type made report, plot, compare and a resumed
# sweep fail with a traceback (a string num_rows multiplied, a list measurement .get()) or read "false" as true
_NUMBERS = ("median_s", "iqr_s")
_MEASUREMENT_NUMBERS = ("median_s", "iqr_s", "p25_s", "p75_s", "n_samples", "threads", "flush_bytes")
_DERIVED_NUMBERS = (
    "bytes_read", "bytes_written", "flops", "bytes_moved", "arithmetic_intensity", "time_s", "gbps", "gflops",
    "frac_of_bandwidth", "frac_of_flops", "frac_of_roofline", "working_set_bytes", "working_set_requested_bytes",
    "ceiling_value", "frac_of_ceiling", "lookups_per_s", "samples_per_s", "hot_rows", "index_batches",
    "touched_bytes", "algbw_gbps", "busbw_gbps",
)  # fmt: skip


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _problem(rec: dict[str, Any]) -> str | None:
    """What makes a point record unusable, or None: its key, point fields, status and numbers checked by type."""
    if not isinstance(rec.get("key"), str):
        return "no string 'key'"
    point = rec.get("point")
    if not isinstance(point, dict):
        return "no 'point' object"
    if missing := [name for name in _POINT_REQUIRED if name not in point]:  # {} read as 2048 x 1e6 x 64
        return f"point lacks {', '.join(missing)}"
    version = rec.get("schema_version", SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        return f"schema_version {version!r}; this dlrmbench reads {SCHEMA_VERSION}"
    for name, kind in _POINT_TYPES.items():
        if name in point and not (isinstance(point[name], kind) and not isinstance(point[name], bool)):
            return f"point.{name} = {point[name]!r} is not {'an integer' if kind is int else 'a string'}"
    if rec.get("status", "ok") not in ("ok", "failed"):
        return f"status = {rec['status']!r}; expected 'ok' or 'failed'"
    for section, numbers in (("measurement", _MEASUREMENT_NUMBERS), ("derived", _DERIVED_NUMBERS)):
        part = rec.get(section)
        if part is None:
            continue
        if not isinstance(part, dict):
            return f"{section} is {type(part).__name__}, not an object"
        for name in numbers:
            if part.get(name) is not None and not _is_number(part[name]):
                return f"{section}.{name} = {part[name]!r} is not a number"
        if not isinstance(part.get("contended", False), bool):
            return f"{section}.contended = {part['contended']!r} is not true or false"
    for name in _NUMBERS:
        if rec.get(name) is not None and not _is_number(rec[name]):
            return f"{name} = {rec[name]!r} is not a number"
    warnings = rec.get("warnings")
    if warnings is not None and not (isinstance(warnings, list) and all(isinstance(w, str) for w in warnings)):
        return "warnings is not a list of strings"
    return None


def read_records(path: str | Path) -> Read:
    """Every intact record of a results file, in file order; torn or corrupt lines are skipped and
    reported (`problems` says why). A point record must carry a string key, a point object whose fields
    have their types, and numbers where readers compute (see _problem); a header, a fingerprint object."""
    header, records, problems = None, [], {}
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                problems[n] = "not a complete JSON line (torn by a crash?)"
                continue
            if not isinstance(rec, dict):
                problems[n] = f"a JSON {type(rec).__name__}, not an object"
            elif rec.get("kind") == "header":
                if not isinstance(rec.get("fingerprint", {}), dict):
                    problems[n] = "header: fingerprint is not an object"
                else:
                    header = header or rec
            elif (why := _problem(rec)) is not None:
                problems[n] = why
            else:
                records.append(rec)
    return Read(header, records, sorted(problems), problems)


def read_header(path: Path) -> dict[str, Any] | None:
    """A results file's header: its first intact JSON line, when that is one; not a read of every record."""
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # blank or torn
            ok = isinstance(rec, dict) and rec.get("kind") == "header" and isinstance(rec.get("fingerprint", {}), dict)
            return rec if ok else None
    return None


def latest_per_key(records: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """The last record of each key, in the order the keys first appear."""
    latest: dict[str, dict[str, Any]] = {}
    for rec in records:
        latest[rec["key"]] = rec
    return list(latest.values())


class ResultFile:
    """Append-only JSONL results of one sweep on one machine."""

    def __init__(self, path: str | Path, header: dict[str, Any]):
        self.path = Path(path)
        ensure_folder(self.path.parent)
        self._header = {"kind": "header", "schema_version": SCHEMA_VERSION, **header}

    def latest_status(self) -> dict[str, str]:
        """key -> status of its last stored record ("ok" or "failed")."""
        if not self.path.exists():
            return {}
        return {r["key"]: str(r.get("status")) for r in latest_per_key(read_records(self.path).records)}

    @contextlib.contextmanager
    def exclusive(self, owner: str) -> Iterator[None]:
        """Hold this file for one sweep: a second sweep into it fails at once, naming the first.

        Also checks, before any point is measured, that the file can be written.
        """
        if self.path.is_dir():
            raise IsADirectoryError(f"{self.path}: is a folder; expected a results file or nothing")
        if self.path.exists() and not os.access(self.path, os.W_OK):
            raise PermissionError(f"{self.path}: results file is not writable")
        lock_path = self.path.with_name(f".{self.path.name}.lock")
        with open(lock_path, "a+", encoding="utf-8") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                other = f.read().strip() or "another process"
                raise Busy(
                    f"{self.path}: {other} is writing this file now; two sweeps at once would measure each other "
                    "and store points twice. Wait for it, or give --results-dir another folder"
                ) from None
            try:
                self._check_header()
                f.truncate(0)
                f.write(f"pid {os.getpid()} ({owner})")
                f.flush()
                yield
            finally:
                f.truncate(0)
                fcntl.flock(f, fcntl.LOCK_UN)

    def _check_header(self) -> None:
        """Refuse to add to a file of another schema version or another machine: its points would be mixed with
        this run's, and those stored as ok skipped here as if measured on this machine."""
        theirs = read_header(self.path) if self.path.exists() else None
        if theirs is None:
            return
        if theirs.get("schema_version", SCHEMA_VERSION) != SCHEMA_VERSION:
            raise ValueError(
                f"{self.path}: results of schema_version {theirs.get('schema_version')!r}, this dlrmbench writes "
                f"{SCHEMA_VERSION}; move the file away (or give --results-dir another folder) to measure again"
            )
        mine, other = self._header.get("sku_id"), theirs.get("sku_id")
        if mine and other and mine != other:
            raise ValueError(
                f"{self.path}: its header says it was measured on {other!r}, and this machine is {mine!r}; "
                "move the file away (or give --results-dir another folder): its points would be skipped here "
                "as if measured on this machine"
            )

    def append(self, record: dict[str, Any]) -> None:
        """Append one record atomically with respect to other writers (flock) and crashes (fsync)."""
        line = json.dumps({"kind": "point", "schema_version": SCHEMA_VERSION, **record}, default=_jsonable)
        if "\n" in line:
            raise AssertionError("a JSON line must not contain a newline")
        with open(self.path, "a+b", buffering=0) as f:  # unbuffered: a failed write is known here, not at close
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                f.seek(0, os.SEEK_END)
                chunks = []
                if f.tell() == 0:
                    chunks.append(json.dumps(self._header, default=_jsonable) + "\n")
                else:
                    f.seek(-1, os.SEEK_END)
                    if f.read(1) != b"\n":  # a torn line from a crash: close it off
                        chunks.append("\n")
                chunks.append(line + "\n")
                end = f.seek(0, os.SEEK_END)
                try:
                    data = memoryview("".join(chunks).encode())
                    while data:  # a raw write may take part of it (a disk filling up) before it fails
                        data = data[os.write(f.fileno(), data) :]
                    os.fsync(f.fileno())
                except OSError as exc:  # a full disk: take back the part written, so no torn line is left
                    with contextlib.suppress(OSError):
                        f.truncate(end)
                    raise OSError(exc.errno, f"{exc.strerror}; this point was not stored, those before it are",
                                  str(self.path)) from exc  # fmt: skip
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(read_records(self.path).records if self.path.exists() else [])


def ensure_folder(path: str | Path) -> None:
    """mkdir -p, with an error naming the part of the path that is a file instead of a folder."""
    path = Path(path)
    for p in (path, *path.parents):
        if p.exists() and not p.is_dir():
            raise NotADirectoryError(f"{p}: results go in a folder, and this is a file")
    path.mkdir(parents=True, exist_ok=True)


def replace_atomic(path: str | Path, write: Callable[[Path], object]) -> None:
    """`write(tmp)` to a temporary file beside `path`, then os.replace: a crash leaves the old file or
    the new one, never half of one, and no temporary file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        if exc.filename is not None or exc.errno is None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from exc  # a full disk: name the file, not [Errno 28]
    finally:
        tmp.unlink(missing_ok=True)


def write_text_atomic(path: str | Path, text: str) -> None:
    replace_atomic(path, lambda tmp: tmp.write_text(text))


def write_json_atomic(path: str | Path, record: Any) -> None:
    """`record` as indented JSON, written atomically (write_text_atomic)."""
    write_text_atomic(path, json.dumps(record, indent=2, default=str) + "\n")


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return obj.to_dict()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    return str(obj)
