"""Crash-safe results: one JSON line per finished point, appended under a lock, flushed and fsynced.

A results file opens with a header line (schema version, sweep, machine fingerprint); every
other line is a point record. A crash or kill -9 mid-write leaves at most one torn last line:
readers skip it (and count it), and the next writer first ends it with a newline so the
file stays one record per line. Records are never rewritten.
"""

from __future__ import annotations

import fcntl
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["SCHEMA_VERSION", "ResultFile", "read_records", "replace_atomic", "write_json_atomic", "write_text_atomic"]

# 1: header {"kind": "header", schema_version, sweep, sku_id, fingerprint};
#    records {"kind": "point", schema_version, key, point, status, reason, measurement, derived, ...}
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Read:
    header: dict[str, Any] | None
    records: list[dict[str, Any]]
    torn_lines: list[int]  # 1-based line numbers that were not valid JSON


def read_records(path: str | Path) -> Read:
    """Every intact record of a results file; torn or corrupt lines are skipped and reported."""
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
            else:
                records.append(rec)
    return Read(header, records, torn)


class ResultFile:
    """Append-only JSONL results of one sweep on one machine."""

    def __init__(self, path: str | Path, header: dict[str, Any]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._header = {"kind": "header", "schema_version": SCHEMA_VERSION, **header}

    def done_keys(self) -> set[str]:
        """Keys of points already stored (failed ones included: they carry their reason)."""
        if not self.path.exists():
            return set()
        return {r["key"] for r in read_records(self.path).records if "key" in r}

    def ok_keys(self) -> set[str]:
        if not self.path.exists():
            return set()
        return {r["key"] for r in read_records(self.path).records if r.get("status") == "ok" and "key" in r}

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
