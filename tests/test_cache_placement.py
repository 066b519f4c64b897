"""Where the Criteo cache goes (beside the data, else $XDG_CACHE_HOME/dlrmbench), and `trace dump` of a column."""

from __future__ import annotations

import random
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from model.criteo_cache import default_cache_dir
from profiler.cli import main

# default_cache_dir takes a folder without write bits as read-only even for root (whom os.access lets write
# anywhere), so these tests hold as root too; a real write there would succeed as root, which is why the
# end-to-end test checks where the cache went rather than expecting a failure.


def _tsv(path: Path, rows: int = 40, seed: int = 0) -> list[list[str]]:
    """A raw Criteo TSV (label, 13 integers, 26 hex); some categoricals empty, some lines with trailing empties
    stripped. Returns each line's 26 categorical fields as written (missing ones as '')."""
    rng = random.Random(seed)
    cats_by_line, lines = [], []
    for _ in range(rows):
        dense = [str(rng.randint(0, 50)) for _ in range(13)]
        cats = [f"{rng.randrange(2**32):08x}" if rng.random() < 0.8 else "" for _ in range(26)]
        if rng.random() < 0.3:
            cats[-3:] = ["", "", ""]
        cats_by_line.append(cats)
        fields = [str(rng.randint(0, 1)), *dense, *cats]
        while fields[-1] == "":  # trailing empty fields stripped, as some Criteo dumps have them
            fields.pop()
        lines.append("\t".join(fields))
    path.write_text("\n".join(lines) + "\n")
    return cats_by_line


@contextmanager
def _read_only(folder: Path) -> Iterator[None]:
    mode = folder.stat().st_mode
    folder.chmod(stat.S_IMODE(mode) & ~0o222)
    try:
        yield
    finally:
        folder.chmod(stat.S_IMODE(mode))


def test_the_cache_goes_beside_the_data_in_a_writable_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    data = tmp_path / "data"
    data.mkdir()
    assert default_cache_dir(data / "c.txt") == (data / "c.txt.dlrmbench-cache").resolve()
    _tsv(data / "c.txt")
    assert main(["trace", "dump", str(data / "c.txt"), "--table=0", f"--out={tmp_path / 't.log'}"]) == 0
    assert (data / "c.txt.dlrmbench-cache" / "manifest.json").is_file()
    assert not (tmp_path / "xdg" / "dlrmbench").exists()  # (other libraries may cache under xdg/)


def test_a_read_only_data_folder_puts_the_cache_under_xdg_cache_home(tmp_path, monkeypatch):
    xdg = tmp_path / "xdg"
    monkeypatch.setenv("XDG_CACHE_HOME", str(xdg))
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        _tsv(d / "c.txt")
    with _read_only(a), _read_only(b):
        where_a, where_b = default_cache_dir(a / "c.txt"), default_cache_dir(b / "c.txt")
        assert where_a.parent == xdg / "dlrmbench" and where_b.parent == xdg / "dlrmbench"
        assert where_a != where_b  # two files of one name in two folders do not share a cache
        assert main(["trace", "dump", str(a / "c.txt"), "--table=0", f"--out={tmp_path / 't.log'}"]) == 0
        assert sorted(p.name for p in a.iterdir()) == ["c.txt"]  # nothing written beside the data
        assert (where_a / "manifest.json").is_file()
        monkeypatch.delenv("XDG_CACHE_HOME")
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        assert default_cache_dir(a / "c.txt").parent == tmp_path / "home" / ".cache" / "dlrmbench"
    assert default_cache_dir(a / "c.txt") == (a / "c.txt.dlrmbench-cache").resolve()  # writable again


@pytest.mark.parametrize("table", [0, 2, 25])  # C26: stripped trailing fields are empty, and skipped
def test_trace_dump_writes_the_columns_values_in_file_order(tmp_path, table):
    cats = _tsv(tmp_path / "c.txt", rows=60, seed=table)
    out = tmp_path / "t.log"
    argv = ["trace", "dump", str(tmp_path / "c.txt"), f"--table={table}", f"--out={out}",
            f"--processed-data-file={tmp_path / 'cache'}"]  # fmt: skip
    assert main(argv) == 0
    want = [int(line[table], 16) for line in cats if line[table] != ""]  # the hex value, empty fields skipped
    assert 0 < len(want) < 60
    assert [int(v) for v in out.read_text().strip().split(", ")] == want
