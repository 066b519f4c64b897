"""Stream a raw Criteo file into a cache's .npy columns: the compiled parser where the layout fits
it, the per-line parser otherwise; bad lines handled by the --on-bad-line policy."""

from __future__ import annotations

import contextlib
from enum import StrEnum, unique
from pathlib import Path
from typing import Any

import numpy as np

from model import criteo_fast, criteo_format
from model.criteo_format import (
    NUM_CAT,
    NUM_DENSE,
    BadLine,
    Layout,
    detect_layout,
    iter_lines,
    line_too_long,
    open_raw,
    parse_line,
)

__all__ = ["CHUNK_BYTES", "FILES", "BadLinePolicy", "parse_into"]

FILES = ("labels.npy", "dense.npy", "cats.npy", "cat_empty.npy")
_DTYPES = (np.float32, np.float32, np.uint32, np.uint32)
CHUNK_BYTES = 8 << 20  # raw bytes parsed between two appends to the .npy files (compiled parser)
_CHUNK_LINES = 65536  # lines parsed between two writes to the memmaps (per-line parser)
_MAX_EXAMPLES = 5  # bad lines quoted in the manifest


@unique
class BadLinePolicy(StrEnum):
    ERROR = "error"  # stop at the first bad line and quote it
    SKIP = "skip"  # drop bad lines, count them, quote the first few in the manifest


class _BadLines:
    """The --on-bad-line policy: raise at the first bad line, or count them and keep the first few."""

    def __init__(self, raw: Path, policy: str):
        self.raw, self.policy = raw, policy
        self.count = 0
        self.examples: list[dict[str, Any]] = []

    def add(self, lineno: int, line: str, exc: BadLine) -> None:
        self.count += 1
        if self.policy == BadLinePolicy.ERROR:
            raise ValueError(
                f"{self.raw}:{lineno}: bad line: {exc.reason}: {line[:200]!r} "
                "(--on-bad-line skip drops such lines and counts them)"
            ) from None
        if len(self.examples) < _MAX_EXAMPLES:
            self.examples.append({"line": lineno, "reason": exc.reason})


def parse_into(raw: Path, tmp: Path, on_bad_line: str, compiled: bool, chunk_bytes: int) -> dict[str, Any]:
    bad = _BadLines(raw, on_bad_line)
    layout = None
    if compiled and criteo_fast.AVAILABLE:
        with open_raw(raw) as f:
            layout = detect_layout(next(iter_lines(f, raw))[1], raw)
    if layout is not None and _compiled_fits(layout):
        rows, lines = _fill_compiled(raw, tmp, layout, bad, chunk_bytes)
    else:
        layout, rows, lines = _fill_per_line(raw, tmp, bad)
    if rows == 0:
        raise ValueError(f"{raw}: no valid sample ({bad.count} bad line(s))")
    labels = np.load(tmp / "labels.npy", mmap_mode="r")
    return {
        "format": layout.name,
        "rows": rows,
        "lines": lines,
        "bad_lines": bad.count,
        "bad_line_examples": bad.examples,
        "positives": int(labels.sum(dtype=np.float64)),
    }


def _fill_per_line(raw: Path, tmp: Path, bad: _BadLines) -> tuple[Layout, int, int]:
    """The reference: criteo_format.parse_line on every line, rows appended to the files in one pass."""
    rows = lines = 0
    layout = None
    chunk: list[tuple] = []
    with contextlib.ExitStack() as stack:
        out = _appenders(stack, tmp)
        f = stack.enter_context(open_raw(raw))
        for lineno, line, ended in iter_lines(f, raw):
            lines = lineno
            if layout is None:
                layout = detect_layout(line, raw)
                if layout.has_header:
                    continue
            try:
                s = parse_line(line, layout, ended)
            except BadLine as exc:
                bad.add(lineno, line, exc)
                continue
            chunk.append((s.label, s.dense, s.cats))
            if len(chunk) == _CHUNK_LINES:
                rows += _append(out, _columns(chunk))
                chunk.clear()
        if chunk:
            rows += _append(out, _columns(chunk))
    assert layout is not None
    return layout, rows, lines


def _appenders(stack: contextlib.ExitStack, tmp: Path) -> list[_NpyAppender]:
    """The cache's four .npy files, open for appending until `stack` closes."""
    shapes = ((), (NUM_DENSE,), (NUM_CAT,), ())
    return [
        stack.enter_context(_NpyAppender(tmp / name, dtype, row_shape))
        for name, dtype, row_shape in zip(FILES, _DTYPES, shapes, strict=True)
    ]


def _append(out: list[_NpyAppender], block: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]) -> int:
    """Append (labels, raw dense, cats, empty bits) rows, the dense transformed; returns how many."""
    labels, dense_raw, cats, cat_empty = block
    for appender, values in zip(out, (labels, _dense(dense_raw), cats, cat_empty), strict=True):
        appender.append(values)
    return len(labels)


def _columns(chunk: list[tuple]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(label, dense, cats) tuples from parse_line as labels, raw dense float64, cats and the empty bitmask."""
    labels, dense, cats = zip(*chunk, strict=True)
    dense_raw = np.array(dense, dtype=np.float64)  # (n, 13); Python ints of any size
    cat_raw = np.array(cats, dtype=np.int64)  # (n, 26), empty -1
    empty = cat_raw < 0
    return (
        np.array(labels, dtype=np.float32),
        dense_raw,
        np.where(empty, 0, cat_raw).astype(np.uint32),
        (empty.astype(np.uint32) << np.arange(NUM_CAT, dtype=np.uint32)).sum(1, dtype=np.uint32),
    )


def _dense(dense_raw: np.ndarray) -> np.ndarray:
    return np.log1p(np.maximum(dense_raw, 0.0)).astype(np.float32)


def _compiled_fits(layout: Layout) -> bool:
    """Whether the compiled pass reads this layout: the columns in the usual order, after `label_col`
    leading ones it skips (Kaggle's CSV Id); a CSV with its columns shuffled stays per line."""
    k = layout.label_col
    return (
        layout.dense_cols == tuple(range(k + 1, k + 1 + NUM_DENSE))
        and layout.cat_cols == tuple(range(k + 1 + NUM_DENSE, k + 1 + NUM_DENSE + NUM_CAT))
        and layout.num_fields == k + 1 + NUM_DENSE + NUM_CAT
    )


def _fill_compiled(raw: Path, tmp: Path, layout: Layout, bad: _BadLines, chunk_bytes: int) -> tuple[int, int]:
    """Through criteo_fast in one pass: lines are counted as they are parsed and rows appended to the files.

    The lines criteo_fast flags go through parse_line, which accepts them or says why not.
    """
    rows = lines = 0  # lines: before the chunk
    header = layout.has_header
    with contextlib.ExitStack() as stack:
        out = _appenders(stack, tmp)
        f = stack.enter_context(open_raw(raw))
        chunks = criteo_fast.prefetch(criteo_fast.read_chunks(f, chunk_bytes, raw))
        stack.callback(chunks.close)  # the reading thread stops before f closes
        while True:
            try:
                buf = next(chunks, None)
            except criteo_fast.LineTooLong as exc:  # every line before it is counted: it is the next one
                raise line_too_long(raw, lines + 1, exc.cr) from None
            if buf is None:
                break
            if header:  # the first line; read_chunks gives whole lines
                header = False
                cut = int(np.argmax(buf == 10)) + 1 if (buf == 10).any() else len(buf)
                buf, lines = buf[cut:], 1
                if not len(buf):
                    continue
            c = criteo_fast.parse_chunk(buf, ord(layout.sep), layout.label_col)
            long = np.flatnonzero(np.diff(c.starts) > criteo_format.MAX_LINE_BYTES)  # as iter_lines refuses them
            if len(long):
                k = int(long[0])
                head = buf[c.starts[k] : c.starts[k] + criteo_format.MAX_LINE_BYTES + 1]
                raise line_too_long(raw, lines + k + 1, bool((head == 13).any()))
            keep = ~c.flagged
            accepted: list[int] = []
            parsed: list[tuple] = []
            for k in np.flatnonzero(c.flagged).tolist():
                raw_line = buf[c.starts[k] : c.starts[k + 1]].tobytes()
                line = raw_line.decode("utf-8", errors="replace").rstrip("\r\n")
                try:
                    s = parse_line(line, layout, raw_line.endswith(b"\n"))
                except BadLine as exc:
                    bad.add(lines + k + 1, line, exc)
                    continue
                accepted.append(k)
                parsed.append((s.label, s.dense, s.cats))
            if parsed:
                c.labels[accepted], c.dense[accepted], c.cats[accepted], c.cat_empty[accepted] = _columns(parsed)
                keep[accepted] = True
            block = (c.labels, c.dense, c.cats, c.cat_empty)
            if not keep.all():
                block = tuple(a[keep] for a in block)
            rows += _append(out, block)
            lines += len(keep)
    return rows, lines


class _NpyAppender:
    """An .npy file written a block of rows at a time, its header (shape) rewritten on close.

    numpy pads the header so that the row count can grow to 21 digits in place (the same rule
    lets np.lib.format.open_memmap files be appended to), so the final header fits the space
    the first one took and the file is byte for byte what np.save would write.
    """

    def __init__(self, path: Path, dtype: type, row_shape: tuple[int, ...]):
        self.path, self.dtype, self.row_shape = path, np.dtype(dtype), row_shape
        self.rows = 0
        self.f = open(path, "wb")  # closed by __exit__
        self.data_offset = self._write_header()

    def _write_header(self) -> int:
        header = {
            "descr": np.lib.format.dtype_to_descr(self.dtype),
            "fortran_order": False,
            "shape": (self.rows, *self.row_shape),
        }
        np.lib.format.write_array_header_1_0(self.f, header)
        return self.f.tell()

    def append(self, block: np.ndarray) -> None:
        self.f.write(np.ascontiguousarray(block, dtype=self.dtype).data)
        self.rows += len(block)

    def __enter__(self) -> _NpyAppender:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.f.seek(0)
            if self._write_header() != self.data_offset:
                raise RuntimeError(f"{self.path}: the .npy header for {self.rows} rows outgrew the first one")
        finally:
            self.f.close()
