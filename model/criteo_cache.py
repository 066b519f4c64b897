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
from pathlib import Path
from typing import Any

import numpy as np

from model.criteo_fill import CHUNK_BYTES, FILES, BadLinePolicy, parse_into
from model.criteo_format import NUM_CAT, open_raw

__all__ = ["CACHE_VERSION", "BadLinePolicy", "CriteoCache", "default_cache_dir", "preprocess"]

CACHE_VERSION = 1  # 1: labels/dense/cats/cat_empty .npy + manifest.json
_VOCAB_CHUNK_ROWS = 1 << 21  # rows per step of the vocabulary's pass: (2M, 26) uint32 = 208 MB
_TRANSPOSE_ROWS = 1 << 15  # rows transposed at once, 3.3 MB: in cache, ~8x faster than a whole chunk
# what a cache folder holds (a build cut short under an older version left these without a manifest)
_OURS = re.compile(
    r"labels\.npy|dense\.npy|cats\.npy|cat_empty\.npy|manifest\.json|vocab-\d+-\d+\.npy|\.build-\d+|.+\.tmp\d+(\.npy)?"
)
_TEMPORARY = re.compile(r"(?:\.build-|.+\.tmp)(\d+)(?:\.npy)?")  # a build's folder, a file being replaced: its pid


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
        self.labels, self.dense, self.cats, self.cat_empty = (_open_npy(folder / f) for f in FILES)
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
    raw: Path, folder: Path, on_bad_line: str, *, compiled: bool = True, chunk_bytes: int = CHUNK_BYTES
) -> dict[str, Any]:
    _remove_stale(folder)
    tmp = folder / f".build-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        stats = {"cache_version": CACHE_VERSION, **parse_into(raw, tmp, on_bad_line, compiled, chunk_bytes)}
        for name in FILES:
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
