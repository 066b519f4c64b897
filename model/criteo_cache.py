"""A raw Criteo file preprocessed once into .npy memmaps with a JSON manifest, rebuilt when the source changes.

Layout of a cache folder (no pickle anywhere):
- labels.npy (N,) float32 in {0, 1}
- dense.npy (N, 13) float32, already log(1 + max(x, 0)) as the reference transforms them
- cats.npy (N, 26) uint32, the categorical values as written (hex, full 32-bit range)
- cat_empty.npy (N,) uint32, bit t set when categorical t was empty
- vocab-*.npy: sorted values per table seen in the first n training rows (built on demand)
- manifest.json: source path, size and mtime, options, rows, bad-line report; written last,
  so an interrupted build is never mistaken for a finished cache. While a build runs it holds a
  placeholder that matches no source: a non-empty folder without a manifest of ours is not a
  cache, and is never written to.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import os
import re
import shutil
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from enum import StrEnum, unique
from pathlib import Path
from typing import Any

import numpy as np

from model import criteo_fast
from model.criteo_format import (
    NUM_CAT,
    NUM_DENSE,
    BadLine,
    Layout,
    detect_layout,
    iter_lines,
    open_raw,
    parse_line,
)

__all__ = ["CACHE_VERSION", "BadLinePolicy", "CriteoCache", "default_cache_dir", "preprocess"]

CACHE_VERSION = 1  # 1: labels/dense/cats/cat_empty .npy + manifest.json
_CHUNK_LINES = 65536  # lines parsed between two writes to the memmaps (per-line parser)
_CHUNK_BYTES = 8 << 20  # raw bytes parsed between two appends to the .npy files (compiled parser)
_VOCAB_CHUNK_ROWS = 1 << 21  # rows per step of the vocabulary's pass: (2M, 26) uint32 = 208 MB
_TRANSPOSE_ROWS = 1 << 15  # rows transposed at once, 3.3 MB: in cache, ~8x faster than a whole chunk
_MAX_EXAMPLES = 5  # bad lines quoted in the manifest
_FILES = ("labels.npy", "dense.npy", "cats.npy", "cat_empty.npy")
_DTYPES = (np.float32, np.float32, np.uint32, np.uint32)
# what a cache folder holds (a build cut short under an older version left these without a manifest)
_OURS = re.compile(
    r"labels\.npy|dense\.npy|cats\.npy|cat_empty\.npy|manifest\.json|vocab-\d+-\d+\.npy|\.build-\d+|.+\.tmp\d+(\.npy)?"
)
_TEMPORARY = re.compile(r"(?:\.build-|.+\.tmp)(\d+)(?:\.npy)?")  # a build's folder, a file being replaced: its pid


@unique
class BadLinePolicy(StrEnum):
    ERROR = "error"  # stop at the first bad line and quote it
    SKIP = "skip"  # drop bad lines, count them, quote the first few in the manifest


def default_cache_dir(raw_path: str | os.PathLike[str]) -> Path:
    """`<file>.dlrmbench-cache/` beside the data, or under ~/.cache/dlrmbench when that folder is read-only.

    Args:
        raw_path: the raw data file.
    Returns:
        the folder the cache goes in.
    """
    p = Path(raw_path).resolve()
    # os.access says yes to root everywhere; a folder without write bits is read-only by intent
    if os.access(p.parent, os.W_OK) and p.parent.stat().st_mode & 0o222:
        return p.parent / f"{p.name}.dlrmbench-cache"
    key = hashlib.sha1(str(p).encode()).hexdigest()[:12]
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "dlrmbench" / f"{p.name}-{key}"


class CriteoCache:
    """A finished cache opened read-only: arrays are memory-mapped, nothing is loaded until used."""

    def __init__(self, folder: Path, manifest: dict[str, Any]):
        self.folder = folder
        self.manifest = manifest
        self.labels, self.dense, self.cats, self.cat_empty = (_open_npy(folder / f) for f in _FILES)
        n = manifest["rows"]
        if not (len(self.labels) == len(self.dense) == len(self.cats) == len(self.cat_empty) == n):
            raise ValueError(f"{folder}: cache arrays disagree with the manifest's {n} rows; delete the folder")

    def __len__(self) -> int:
        return int(self.manifest["rows"])

    @property
    def source(self) -> str:
        return str(self.manifest["source"]["path"])

    def vocabulary(self, n_train: int, min_count: int = 1) -> list[np.ndarray]:
        """Sorted distinct values of each table among rows [0, n_train) seen at least `min_count` times.

        Built once per (n_train, min_count) and kept in the cache folder.

        Args:
            n_train: training rows (a prefix of the file).
            min_count: rarer values are left out (they share the model's "unseen" row).
        Returns:
            26 uint32 arrays.
        """
        if not 1 <= n_train <= len(self):
            raise ValueError(f"vocabulary over {n_train} rows of a {len(self)}-row cache")
        key = f"vocab-{n_train}-{min_count}"
        path = self.folder / f"{key}.npy"
        offsets = self.manifest.get("vocab", {}).get(key)
        flat = None
        if offsets is not None:
            with contextlib.suppress(OSError, ValueError, EOFError):  # missing or truncated: built again
                flat = np.load(path, allow_pickle=False)
        if flat is None or flat.dtype != np.uint32 or flat.shape != (offsets[-1],):
            counted = _value_counts(self.cats, self.cat_empty, n_train, _VOCAB_CHUNK_ROWS)
            tables = [values[counts >= min_count] for values, counts in counted]
            offsets = np.cumsum([0, *(len(v) for v in tables)]).tolist()
            flat = np.concatenate(tables).astype(np.uint32)
            _save_atomic(path, flat)
            self.manifest.setdefault("vocab", {})[key] = offsets
            _write_manifest(self.folder, self.manifest)
        return [flat[a:b] for a, b in itertools.pairwise(offsets)]


def _open_npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise ValueError(f"{path}: unreadable cache file ({exc}); delete the folder {path.parent}") from None


def _value_counts(
    cats: np.ndarray, cat_empty: np.ndarray, n_rows: int, chunk_rows: int
) -> list[tuple[np.ndarray, np.ndarray]]:
    """Sorted distinct non-empty values of each table in rows [0, n_rows), and how often each is seen.

    One sequential pass over the rows in chunks: reading a table's column strided would touch every page
    of `cats` once per table, 26 reads of the file when it does not fit in the page cache. Each chunk is
    transposed so that a table's values are contiguous and counted by np.unique into a run; a table's runs
    are merged once they hold as many values as its merged run, so memory follows the distinct values,
    not the rows. numpy's copies and sorts release the GIL: blocks and tables go to a few threads, the
    largest tables first so that the threads finish together.
    """
    with ThreadPoolExecutor(max(1, min(4, os.cpu_count() or 1))) as pool:
        runs = _chunk_runs(pool, cats, cat_empty, n_rows, chunk_rows)  # its chunk buffer gone before the last merges
        order = _largest_first(runs)
        merged = dict(zip(order, pool.map(_merge_runs, [runs[t] for t in order]), strict=True))
    return [merged[t] for t in range(NUM_CAT)]


def _chunk_runs(
    pool: ThreadPoolExecutor, cats: np.ndarray, cat_empty: np.ndarray, n_rows: int, chunk_rows: int
) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    runs: list[list[tuple[np.ndarray, np.ndarray]]] = [[] for _ in range(NUM_CAT)]  # merged run first
    columns = np.empty((NUM_CAT, min(chunk_rows, n_rows)), np.uint32)  # (T, rows)

    def transpose(start: int, first: int, stop: int) -> None:
        end = min(stop, start + _TRANSPOSE_ROWS)
        columns[:, start - first : end - first] = cats[start:end].T

    def count(t: int, empty: np.ndarray) -> None:
        values = columns[t, : len(empty)][((empty >> np.uint32(t)) & 1) == 0]
        table = runs[t]
        table.append(np.unique(values, return_counts=True))
        if sum(len(v) for v, _ in table[1:]) >= len(table[0][0]):
            table[:] = [_merge_runs(table)]

    for first in range(0, n_rows, chunk_rows):
        stop = min(n_rows, first + chunk_rows)
        starts = range(first, stop, _TRANSPOSE_ROWS)
        list(pool.map(transpose, starts, itertools.repeat(first), itertools.repeat(stop)))
        empty = np.asarray(cat_empty[first:stop])
        list(pool.map(count, _largest_first(runs), itertools.repeat(empty)))
    return runs


def _largest_first(runs: list[list[tuple[np.ndarray, np.ndarray]]]) -> list[int]:
    return sorted(range(NUM_CAT), key=lambda t: -sum(len(v) for v, _ in runs[t]))


def _merge_runs(runs: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct values, counts) runs of one table into one."""
    if len(runs) == 1:
        return runs[0]
    values = np.concatenate([v for v, _ in runs])
    counts = np.concatenate([c for _, c in runs])
    order = np.argsort(values, kind="stable")  # sorted runs: timsort merges them
    values, counts = values[order], counts[order]
    first = np.empty(len(values), bool)
    first[:1] = True
    np.not_equal(values[1:], values[:-1], out=first[1:])
    starts = np.flatnonzero(first)
    return values[starts], np.add.reduceat(counts, starts) if len(starts) else counts


@dataclass(frozen=True)
class _Options:
    on_bad_line: str  # error | skip
    cache_version: int = CACHE_VERSION


def _source_key(raw: Path) -> dict[str, Any]:
    st = raw.stat()
    return {"path": str(raw.resolve()), "size_bytes": st.st_size, "mtime_ns": st.st_mtime_ns}


def _save_atomic(path: Path, array: np.ndarray) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}.npy")
    np.save(tmp, array, allow_pickle=False)
    os.replace(tmp, path)


def _read_manifest(folder: Path) -> dict[str, Any] | None:
    """The folder's manifest; None when it has none of ours (absent, unreadable, someone else's)."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) and "cache_version" in manifest else None


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    tmp = folder / f"manifest.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, folder / "manifest.json")


def preprocess(raw_path: str | os.PathLike[str], cache_dir: str | os.PathLike[str], on_bad_line: str = "error") -> (
    tuple[CriteoCache, bool]
):  # fmt: skip
    """Open the cache of `raw_path` in `cache_dir`, building it first unless a matching one is there.

    A cache matches when the source's path, size and mtime and the options are those it was
    built from, and its files are those its manifest records (one cut short is rebuilt). A
    non-empty folder that is not a cache is refused, never written to. Reading streams: memory
    holds one chunk of lines besides the memmaps.

    Args:
        raw_path: raw Criteo TSV or headered CSV, plain or gzip.
        cache_dir: folder for the cache (created).
        on_bad_line: "error" (stop at the first bad line, quoting it) or "skip" (drop and count).
    Returns:
        (the cache, whether it was built now rather than reused).
    """
    allowed = [str(p) for p in BadLinePolicy]
    if on_bad_line not in allowed:
        raise ValueError(f"--on-bad-line {on_bad_line!r}: allowed: {', '.join(allowed)}")
    raw = Path(raw_path)
    with open_raw(raw):  # clear messages for missing, directory, empty, binary
        pass
    folder = Path(cache_dir)
    want = {"source": _source_key(raw), "options": asdict(_Options(on_bad_line))}
    old = _read_manifest(folder)
    if old is not None and {k: old.get(k) for k in want} == want:
        with contextlib.suppress(ValueError):  # files cut short or gone since: rebuilt below
            return CriteoCache(folder, old), False
    foreign = sorted(p.name for p in folder.iterdir() if not _OURS.fullmatch(p.name)) if folder.is_dir() else []
    if old is None and foreign:
        raise ValueError(
            f"{folder}: not a dlrmbench cache (no manifest.json of ours) and it holds other files "
            f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''}): building the cache there would "
            "replace or delete files in it; pass an empty or new folder as --processed-data-file"
        )
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_manifest(folder, {"cache_version": CACHE_VERSION, "building": True})  # ours, matching no source
    except OSError as exc:
        msg = f"cannot write the cache folder {folder} ({exc.strerror}): pass --processed-data-file DIR"
        raise ValueError(msg) from None
    manifest = want | _build(raw, folder, on_bad_line)
    _write_manifest(folder, manifest)
    return CriteoCache(folder, manifest), True


def _build(
    raw: Path, folder: Path, on_bad_line: str, *, compiled: bool = True, chunk_bytes: int = _CHUNK_BYTES
) -> dict[str, Any]:
    _remove_stale(folder)
    tmp = folder / f".build-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        stats = _parse_into(raw, tmp, on_bad_line, compiled, chunk_bytes)
        for name in _FILES:
            os.replace(tmp / name, folder / name)
        for old in folder.glob("vocab-*.npy"):
            old.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return stats


def _remove_stale(folder: Path) -> None:
    """Delete what builds and replacements killed mid-way left behind: `.build-<pid>` folders and
    `*.tmp<pid>` files whose process is gone. A live process's are kept, as are our own."""
    for path in folder.iterdir():
        match = _TEMPORARY.fullmatch(path.name)
        if match and int(match[1]) != os.getpid() and not _alive(int(match[1])):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0: nothing is sent, only whether the process exists is checked
    except ProcessLookupError:
        return False
    except (OSError, OverflowError):  # another user's process, or not a pid: keep its files
        pass
    return True


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


def _parse_into(raw: Path, tmp: Path, on_bad_line: str, compiled: bool, chunk_bytes: int) -> dict[str, Any]:
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
        "cache_version": CACHE_VERSION,
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
        for name, dtype, row_shape in zip(_FILES, _DTYPES, shapes, strict=True)
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
        for buf in chunks:
            if header:  # the first line; read_chunks gives whole lines
                header = False
                cut = int(np.argmax(buf == 10)) + 1 if (buf == 10).any() else len(buf)
                buf, lines = buf[cut:], 1
                if not len(buf):
                    continue
            c = criteo_fast.parse_chunk(buf, ord(layout.sep), layout.label_col)
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
