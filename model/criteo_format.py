"""Criteo raw lines parsed and checked: raw TSV (Kaggle / Terabyte) or headered CSV, plain or gzip, streamed.

A sample is a label (0/1), 13 integer features I1..I13 and 26 categorical features C1..C26
written as hex (up to 8 digits: the full 32-bit range). Any feature may be empty. Raw TSV has
no header; trailing empty fields may be stripped, so a line may have 15 to 40 fields (all 40 on a
last line without a line ending, which may be a file cut mid-line). The headered CSV variants
(Kaggle's `Id,Label,I1,...` with CRLF; `label,I1,...,C26` with integers written as `260.0`) are
recognised from their first line and read by column name.
"""

from __future__ import annotations

import gzip
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "MAX_LINE_BYTES",
    "NUM_CAT",
    "NUM_DENSE",
    "BadLine",
    "Layout",
    "ParsedLine",
    "detect_layout",
    "iter_lines",
    "line_too_long",
    "open_raw",
    "parse_line",
    "read_failed",
]

NUM_DENSE = 13  # I1..I13
NUM_CAT = 26  # C1..C26
_GZIP_MAGIC = b"\x1f\x8b"
_SNIFF_BYTES = 8192  # read this much to tell text from binary
_HEX = frozenset("0123456789abcdefABCDEF")
_BOM = b"\xef\xbb\xbf"  # UTF-8 byte-order mark (Excel, pandas' utf-8-sig): skipped
_WS = " \t\r\n\x0b\x0c"  # what may surround a field: ASCII whitespace only
_FLOAT = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?\Z")  # ASCII, no '_', no nan/inf
MAX_LINE_BYTES = 1 << 20  # a Criteo line is ~200 bytes: a longer one means no LF line endings, or not text


class BadLine(ValueError):
    """One line that is not a valid sample; `reason` says which field and why."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class Layout:
    """Where each field sits in a line: the separator and the column of each feature."""

    name: str  # "tsv", "csv" (label,I1..C26) or "kaggle-csv" (Id,Label,I1..C26)
    sep: str
    label_col: int
    dense_cols: tuple[int, ...]  # 13 columns
    cat_cols: tuple[int, ...]  # 26 columns
    num_fields: int  # fields in a full line
    has_header: bool

    @property
    def min_fields(self) -> int:
        """Fewer fields than this is a truncated line, not stripped trailing empties."""
        return max(self.label_col, *self.dense_cols) + 2  # at least one categorical after the integers

    def validate(self) -> Layout:
        if len(self.dense_cols) != NUM_DENSE or len(self.cat_cols) != NUM_CAT:
            raise ValueError(f"layout {self.name}: needs {NUM_DENSE} integer and {NUM_CAT} categorical columns")
        return self


_TSV = Layout("tsv", "\t", 0, tuple(range(1, 14)), tuple(range(14, 40)), 40, False)


@dataclass(frozen=True)
class ParsedLine:
    label: int  # 0 or 1
    dense: tuple[int, ...]  # 13 raw integers, empty as 0
    cats: tuple[int, ...]  # 26 values in [0, 2**32), empty as -1


def open_raw(path: str | os.PathLike[str]) -> BinaryIO:
    """Open a raw file for binary line reading, gunzipping when it starts with gzip's magic.

    Raises ValueError (naming the file) for a missing path, a directory, an empty file or
    a binary one, so the command line can say so in one line.

    Args:
        path: the raw TSV / CSV file, plain or gzip.
    Returns:
        a binary file object positioned at the start of the text.
    """
    p = Path(path)
    if not p.exists():
        raise ValueError(f"{p}: no such file")
    if p.is_dir():
        raise ValueError(f"{p}: is a directory, not a Criteo data file")
    with open(p, "rb") as f:
        magic = f.read(2)
    if not magic:
        raise ValueError(f"{p}: empty file (0 bytes)")
    f: BinaryIO = gzip.open(p, "rb") if magic == _GZIP_MAGIC else open(p, "rb")  # type: ignore[assignment]
    try:
        head = f.read(_SNIFF_BYTES)
        f.seek(0)
    except (OSError, EOFError) as exc:
        f.close()
        raise ValueError(f"{p}: unreadable gzip data ({exc})") from None
    if head.startswith(_BOM):
        head = head[len(_BOM) :]
        f.seek(len(_BOM))
    if not head:
        f.close()
        raise ValueError(f"{p}: empty file (no data after decompression, or only a byte-order mark)")
    if b"\x00" in head:
        f.close()
        raise ValueError(f"{p}: binary file (NUL bytes in the first {len(head)} bytes), not Criteo text")
    return f


def read_failed(path: str | os.PathLike[str], exc: OSError | EOFError) -> ValueError:
    """The error every reader of a raw file raises when reading it fails mid-way."""
    return ValueError(f"{path}: read failed ({exc}); a truncated or corrupt gzip file?")


def line_too_long(path: str | os.PathLike[str], lineno: int, cr: bool) -> ValueError:
    """The error both parsers raise for a line longer than MAX_LINE_BYTES, before reading it whole."""
    why = ("it has CR but no LF line endings (old Mac files): convert them, e.g. tr '\\r' '\\n'" if cr
           else "not Criteo text?")  # fmt: skip
    return ValueError(f"{path}:{lineno}: a line of more than {MAX_LINE_BYTES} bytes: {why}")


def iter_lines(f: BinaryIO, path: str | os.PathLike[str]) -> Iterator[tuple[int, str, bool]]:
    """(1-based line number, text without the line ending, whether it had one: only a file's last line may
    not); undecodable bytes become U+FFFD. A line longer than MAX_LINE_BYTES is an error (line_too_long)."""
    lineno = 0
    while True:
        try:
            raw = f.readline(MAX_LINE_BYTES + 1)
        except (OSError, EOFError) as exc:
            raise read_failed(path, exc) from None
        if not raw:
            return
        lineno += 1
        if len(raw) > MAX_LINE_BYTES:
            raise line_too_long(path, lineno, b"\r" in raw)
        yield lineno, raw.decode("utf-8", errors="replace").rstrip("\r\n"), raw.endswith(b"\n")


def detect_layout(first_line: str, path: str | os.PathLike[str]) -> Layout:
    """Tell raw TSV from the headered CSV variants by the first line.

    Args:
        first_line: the file's first line, line ending removed.
        path: for messages.
    Returns:
        the Layout; ValueError for an unlabelled file or a first line of no known form.
    """
    if "\t" in first_line:
        return _TSV
    names = [n.strip().strip('"').lower() for n in first_line.split(",")]
    if len(names) > 1 and all(f"i{k}" in names for k in range(1, NUM_DENSE + 1)):
        missing = [f"C{k}" for k in range(1, NUM_CAT + 1) if f"c{k}" not in names]
        if missing:
            raise ValueError(f"{path}:1: CSV header lacks categorical columns {', '.join(missing)}")
        if "label" not in names:
            raise ValueError(
                f"{path}:1: CSV header has no Label column: an unlabelled (test-set) file cannot be used "
                "for training or evaluation"
            )
        name = "kaggle-csv" if names[0] == "id" else "csv"
        col = names.index
        layout = Layout(
            name,
            ",",
            col("label"),
            tuple(col(f"i{k}") for k in range(1, NUM_DENSE + 1)),
            tuple(col(f"c{k}") for k in range(1, NUM_CAT + 1)),
            len(names),
            True,
        )
        return layout.validate()
    fields = first_line.split("\t")
    raise ValueError(
        f"{path}:1: not Criteo data: expected tab-separated label, 13 integers and 26 hex categoricals "
        f"(or a CSV header naming Label, I1..I13, C1..C26); the first line has {len(fields)} tab-separated "
        f"field(s): {first_line[:120]!r}"
    )


def _integer(text: str) -> int:
    """An integer field: '-2', '260', or '260.0' (float-formatted CSV), ASCII digits only (int() would take
    '1_000' and other scripts' digits); ValueError otherwise."""
    digits = text[1:] if text[:1] in ("+", "-") else text
    if digits.isascii() and digits.isdigit():  # as fast as int() alone: the common case
        return int(text)
    if not _FLOAT.match(text):
        raise ValueError(text)
    x = float(text)
    if not math.isfinite(x) or x != int(x):
        raise ValueError(text)
    return int(x)


def parse_line(line: str, layout: Layout, ended: bool = True) -> ParsedLine:
    """Parse one sample; BadLine names the field and the value at fault.

    Args:
        line: one line, line ending removed.
        layout: from detect_layout.
        ended: False for a file's last line when it has no line ending: it must then have all its fields,
            since a file cut mid-line (`head -c`) looks like one whose trailing empty fields were stripped.
    Returns:
        ParsedLine with raw integers (empty as 0) and 32-bit categorical values (empty as -1).
    """
    fields = line.split(layout.sep)
    n = len(fields)
    if n > layout.num_fields:
        raise BadLine(f"{n} fields, expected {layout.num_fields}")
    if n < layout.num_fields and not ended:
        raise BadLine(f"{n} field(s), expected {layout.num_fields}: the file ends mid-line (no line ending)")
    if n < layout.min_fields:
        raise BadLine(f"{n} field(s), expected {layout.num_fields} (or at least {layout.min_fields} with trailing "
                      "empty fields stripped)")  # fmt: skip
    if n < layout.num_fields:
        fields += [""] * (layout.num_fields - n)
    label_text = fields[layout.label_col].strip(_WS)
    try:
        label = _integer(label_text)
    except ValueError:
        label = -1
    if label not in (0, 1):
        raise BadLine(f"label {label_text!r} is not 0 or 1")
    dense = []
    for k, col in enumerate(layout.dense_cols, 1):
        text = fields[col].strip(_WS)
        if not text:
            dense.append(0)
            continue
        try:
            value = _integer(text)
        except (ValueError, OverflowError):
            hint = ""
            if k == len(layout.dense_cols) and n == layout.num_fields - 1 and _HEX.issuperset(text.lower()):
                hint = (f"; {n} fields and a hex value here: an unlabelled line (as in Criteo's test.txt: 13 integers, "
                        "then 26 categoricals)? training and evaluation need the label first")  # fmt: skip
            raise BadLine(f"I{k} = {text!r} is not an integer{hint}") from None
        if len(text) > 300:  # the cache computes log(1 + x) from a float64: past ~1.8e308 (309 digits) it cannot
            try:
                float(value)
            except OverflowError:
                raise BadLine(f"I{k} = {text[:24]!r}... ({len(text)} characters) is too large for a float") from None
        dense.append(value)
    cats = []
    for k, col in enumerate(layout.cat_cols, 1):
        text = fields[col].strip(_WS)
        if not text:
            cats.append(-1)
            continue
        if len(text) > 8 or not _HEX.issuperset(text):
            raise BadLine(f"C{k} = {text[:20]!r} is not a hex value of at most 8 digits")
        cats.append(int(text, 16))
    return ParsedLine(label, tuple(dense), tuple(cats))
