"""A raw Criteo file preprocessed once into .npy memmaps with a JSON manifest, rebuilt when the source changes.

Layout of a cache folder (no pickle anywhere):
- labels.npy (N,) float32 in {0, 1}
- dense.npy (N, 13) float32, already log(1 + max(x, 0)) as the reference transforms them
- cats.npy (N, 26) uint32, the categorical values as written (hex, full 32-bit range)
- cat_empty.npy (N,) uint32, bit t set when categorical t was empty
- vocab-*.npy: sorted values per table seen in the first n training rows (built on demand)
- manifest.json: source path, size and mtime, options, rows, bad-line report; written last,
  so a folder without it (an interrupted build) is never mistaken for a finished cache.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import shutil
from dataclasses import asdict, dataclass
from enum import StrEnum, unique
from pathlib import Path
from typing import Any

import numpy as np

from model.criteo_format import NUM_CAT, NUM_DENSE, BadLine, detect_layout, iter_lines, open_raw, parse_line

__all__ = ["CACHE_VERSION", "BadLinePolicy", "CriteoCache", "default_cache_dir", "preprocess"]

CACHE_VERSION = 1  # 1: labels/dense/cats/cat_empty .npy + manifest.json
_CHUNK_LINES = 65536  # lines parsed between two writes to the memmaps
_MAX_EXAMPLES = 5  # bad lines quoted in the manifest
_FILES = ("labels.npy", "dense.npy", "cats.npy", "cat_empty.npy")


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
        load = lambda name: np.load(folder / name, mmap_mode="r", allow_pickle=False)  # noqa: E731
        self.labels, self.dense, self.cats, self.cat_empty = (load(f) for f in _FILES)
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
        if offsets is None or not path.exists():
            tables = []
            empty = np.asarray(self.cat_empty[:n_train])
            for t in range(NUM_CAT):
                values = np.asarray(self.cats[:n_train, t])[((empty >> np.uint32(t)) & 1) == 0]
                uniq, counts = np.unique(values, return_counts=True)
                tables.append(uniq[counts >= min_count])
            offsets = np.cumsum([0, *(len(v) for v in tables)]).tolist()
            _save_atomic(path, np.concatenate(tables).astype(np.uint32))
            self.manifest.setdefault("vocab", {})[key] = offsets
            _write_manifest(self.folder, self.manifest)
        flat = np.load(path, allow_pickle=False)
        return [flat[a:b] for a, b in itertools.pairwise(offsets)]


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


def _write_manifest(folder: Path, manifest: dict[str, Any]) -> None:
    tmp = folder / f"manifest.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, folder / "manifest.json")


def _count_lines(raw: Path) -> int:
    with open_raw(raw) as f:
        n, last = 0, b"\n"
        while chunk := f.read(1 << 20):
            n += chunk.count(b"\n")
            last = chunk[-1:]
    return n + (last != b"\n")


def preprocess(raw_path: str | os.PathLike[str], cache_dir: str | os.PathLike[str], on_bad_line: str = "error") -> (
    tuple[CriteoCache, bool]
):  # fmt: skip
    """Open the cache of `raw_path` in `cache_dir`, building it first unless a matching one is there.

    A cache matches when the source's path, size and mtime and the options are those it was
    built from. Reading streams: memory holds one chunk of lines besides the memmaps.

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
    manifest_path = folder / "manifest.json"
    if manifest_path.exists():
        try:
            old = json.loads(manifest_path.read_text())
        except (OSError, json.JSONDecodeError):
            old = {}
        if {k: old.get(k) for k in want} == want:
            return CriteoCache(folder, old), False
    try:
        folder.mkdir(parents=True, exist_ok=True)
        manifest_path.unlink(missing_ok=True)
    except OSError as exc:
        msg = f"cannot write the cache folder {folder} ({exc.strerror}): pass --processed-data-file DIR"
        raise ValueError(msg) from None
    manifest = want | _build(raw, folder, on_bad_line)
    _write_manifest(folder, manifest)
    return CriteoCache(folder, manifest), True


def _build(raw: Path, folder: Path, on_bad_line: str) -> dict[str, Any]:
    lines = _count_lines(raw)
    tmp = folder / f".build-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        stats = _parse_into(raw, tmp, lines, on_bad_line)
        for name in _FILES:
            os.replace(tmp / name, folder / name)
        for old in folder.glob("vocab-*.npy"):
            old.unlink()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return stats


def _parse_into(raw: Path, tmp: Path, lines: int, on_bad_line: str) -> dict[str, Any]:
    open_mm = np.lib.format.open_memmap
    arrays = {
        "labels.npy": open_mm(tmp / "labels.npy", "w+", np.float32, (lines,)),
        "dense.npy": open_mm(tmp / "dense.npy", "w+", np.float32, (lines, NUM_DENSE)),
        "cats.npy": open_mm(tmp / "cats.npy", "w+", np.uint32, (lines, NUM_CAT)),
        "cat_empty.npy": open_mm(tmp / "cat_empty.npy", "w+", np.uint32, (lines,)),
    }
    rows = bad = 0
    examples: list[dict[str, Any]] = []
    layout = None
    chunk: list[tuple] = []
    with open_raw(raw) as f:
        for lineno, line in iter_lines(f, raw):
            if layout is None:
                layout = detect_layout(line, raw)
                if layout.has_header:
                    continue
            try:
                s = parse_line(line, layout)
            except BadLine as exc:
                bad += 1
                if on_bad_line == BadLinePolicy.ERROR:
                    raise ValueError(
                        f"{raw}:{lineno}: bad line: {exc.reason}: {line[:200]!r} "
                        "(--on-bad-line skip drops such lines and counts them)"
                    ) from None
                if len(examples) < _MAX_EXAMPLES:
                    examples.append({"line": lineno, "reason": exc.reason})
                continue
            chunk.append((s.label, s.dense, s.cats))
            if len(chunk) == _CHUNK_LINES:
                rows = _flush(arrays, rows, chunk)
    rows = _flush(arrays, rows, chunk)
    if rows == 0:
        raise ValueError(f"{raw}: no valid sample ({bad} bad line(s))")
    for arr in arrays.values():
        arr.flush()
    if rows < lines:  # header or skipped lines: write arrays of the exact length
        for name, arr in arrays.items():
            np.save(tmp / f"exact-{name}", arr[:rows], allow_pickle=False)
            del arr
        arrays.clear()
        for name in _FILES:
            os.replace(tmp / f"exact-{name}", tmp / name)
    assert layout is not None
    labels = np.load(tmp / "labels.npy", mmap_mode="r")
    return {
        "cache_version": CACHE_VERSION,
        "format": layout.name,
        "rows": rows,
        "lines": lines,
        "bad_lines": bad,
        "bad_line_examples": examples,
        "positives": int(labels.sum(dtype=np.float64)),
    }


def _flush(arrays: dict[str, np.ndarray], rows: int, chunk: list[tuple]) -> int:
    if not chunk:
        return rows
    n = len(chunk)
    labels, dense, cats = zip(*chunk, strict=True)
    dense_raw = np.array(dense, dtype=np.float64)  # (n, 13); Python ints of any size
    cat_raw = np.array(cats, dtype=np.int64)  # (n, 26), empty -1
    empty = cat_raw < 0
    arrays["labels.npy"][rows : rows + n] = labels
    arrays["dense.npy"][rows : rows + n] = np.log1p(np.maximum(dense_raw, 0.0))
    arrays["cats.npy"][rows : rows + n] = np.where(empty, 0, cat_raw).astype(np.uint32)
    arrays["cat_empty.npy"][rows : rows + n] = (empty.astype(np.uint32) << np.arange(NUM_CAT, dtype=np.uint32)).sum(
        1, dtype=np.uint32
    )
    chunk.clear()
    return rows + n
