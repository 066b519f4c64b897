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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "SCHEMA_VERSION",
    "Busy",
    "ResultFile",
    "ensure_folder",
    "latest_per_key",
    "read_records",
    "replace_atomic",
    "write_json_atomic",
    "write_text_atomic",
]

# 1: header {"kind": "header", schema_version, sweep, sku_id, fingerprint};
#    records {"kind": "point", schema_version, key, point, status, reason, measurement, derived, ...}
SCHEMA_VERSION = 1


class Busy(RuntimeError):
    """Another sweep holds the results file (exit status 75, EX_TEMPFAIL: try again later)."""

    exit_code = 75


@dataclass(frozen=True)
class Read:
    header: dict[str, Any] | None
    records: list[dict[str, Any]]
    torn_lines: list[int]  # 1-based line numbers that were not valid JSON, or not a record's shape


def read_records(path: str | Path) -> Read:
    """Every intact record of a results file, in file order; torn or corrupt lines are skipped and
    reported. A point record must carry a string key and a point object."""
    header, records, torn = None, [], []
    with open(path, encoding="utf-8", errors="replace") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                torn.append(n)
                continue
            if not isinstance(rec, dict):
                torn.append(n)
            elif rec.get("kind") == "header":
                header = header or rec
            elif not isinstance(rec.get("key"), str) or not isinstance(rec.get("point"), dict):
                torn.append(n)
            else:
                records.append(rec)
    return Read(header, records, torn)


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
                f.truncate(0)
                f.write(f"pid {os.getpid()} ({owner})")
                f.flush()
                yield
            finally:
                f.truncate(0)
                fcntl.flock(f, fcntl.LOCK_UN)

    def append(self, record: dict[str, Any]) -> None:
        """Append one record atomically with respect to other writers (flock) and crashes (fsync)."""
        line = json.dumps({"kind": "point", "schema_version": SCHEMA_VERSION, **record}, default=_jsonable)
        if "\n" in line:
            raise AssertionError("a JSON line must not contain a newline")
        with open(self.path, "a+b") as f:
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
                f.write("".join(chunks).encode())
                f.flush()
                os.fsync(f.fileno())
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
