"""Regressions from the Criteo loader audit: huge integers, a UTF-8 BOM, lines with no LF, non-ASCII numbers."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from model import criteo_fast, criteo_format
from model.criteo_cache import _build, preprocess
from model.criteo_format import BadLine, detect_layout, parse_line

TSV = detect_layout("0\t1", "t")
NAMES = ["label"] + [f"I{k}" for k in range(1, 14)] + [f"C{k}" for k in range(1, 27)]
_COMPILED = [False, True] if criteo_fast.AVAILABLE else [False]


def _tsv(label: str = "1", dense: list[str] | None = None) -> str:
    return "\t".join([label, *(dense or ["3"] * 13), *["a"] * 26])


@pytest.mark.parametrize("compiled", _COMPILED)
def test_integer_too_large_for_a_float_is_a_bad_line_not_a_crash(tmp_path, compiled):
    path = tmp_path / "t.txt"
    path.write_text(_tsv() + "\n" + _tsv("0", ["9" * 400, *["0"] * 12]) + "\n" + _tsv() + "\n")
    (tmp_path / "skip").mkdir()
    stats = _build(path, tmp_path / "skip", "skip", compiled=compiled)
    assert (stats["rows"], stats["bad_lines"], stats["bad_line_examples"][0]["line"]) == (2, 1, 2)
    assert "I1" in stats["bad_line_examples"][0]["reason"]
    (tmp_path / "error").mkdir()
    with pytest.raises(ValueError, match=r"t\.txt:2: bad line: I1 = "):
        _build(path, tmp_path / "error", "error", compiled=compiled)


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("variant", ["tsv", "csv", "kaggle-csv"])
def test_utf8_bom_is_skipped(tmp_path, variant, gz):
    if variant == "tsv":
        text = _tsv() + "\n" + _tsv("0") + "\n"
    elif variant == "csv":
        text = ",".join(NAMES) + "\n" + _tsv().replace("\t", ",") + "\n" + _tsv("0").replace("\t", ",") + "\n"
    else:
        text = ("Id,Label," + ",".join(NAMES[1:]) + "\r\n" + "7," + _tsv().replace("\t", ",") + "\r\n"
                + "8," + _tsv("0").replace("\t", ",") + "\r\n")  # fmt: skip
    data = b"\xef\xbb\xbf" + text.encode()
    path = tmp_path / ("t.gz" if gz else "t.txt")
    path.write_bytes(gzip.compress(data) if gz else data)
    cache, _ = preprocess(path, tmp_path / "c", "error")
    m = cache.manifest
    assert (m["format"], m["rows"], m["bad_lines"]) == (variant, 2, 0)
    assert cache.labels.tolist() == [1.0, 0.0]


def test_only_a_bom_is_an_empty_file(tmp_path):
    path = tmp_path / "t.txt"
    path.write_bytes(b"\xef\xbb\xbf")
    with pytest.raises(ValueError, match="empty file"):
        preprocess(path, tmp_path / "c", "skip")


@pytest.mark.parametrize("compiled", _COMPILED)
def test_a_file_without_line_feeds_is_refused_without_reading_it_whole(tmp_path, monkeypatch, compiled):
    monkeypatch.setattr(criteo_format, "MAX_LINE_BYTES", 4096)
    path = tmp_path / "cr.txt"
    path.write_bytes(("\r".join(_tsv() for _ in range(200)) + "\r").encode())  # CR-only line endings, ~17 KB
    for policy in ("error", "skip"):
        (tmp_path / policy).mkdir()
        with pytest.raises(ValueError, match=r"cr\.txt:1: a line of more than 4096 bytes.*CR"):
            _build(path, tmp_path / policy, policy, compiled=compiled, chunk_bytes=1000)


def test_a_long_line_after_good_ones_is_named_by_its_number(tmp_path, monkeypatch):
    monkeypatch.setattr(criteo_format, "MAX_LINE_BYTES", 4096)
    path = tmp_path / "t.txt"
    path.write_text(_tsv() + "\n" + _tsv() + "\n" + "x" * 10000 + "\n")
    for compiled in _COMPILED:
        (tmp_path / f"c{compiled}").mkdir()
        with pytest.raises(ValueError, match=r"t\.txt:3: a line of more than 4096 bytes"):
            _build(path, tmp_path / f"c{compiled}", "skip", compiled=compiled, chunk_bytes=1000)


@pytest.mark.parametrize("text", ["1_000", "\u0663", "\uff15", "\xa05", "1\u200b"])
def test_dense_must_be_ascii_digits(text):
    with pytest.raises(BadLine, match="I1 = "):
        parse_line(_tsv("1", [text, *["0"] * 12]), TSV)


@pytest.mark.parametrize("label", ["\uff11", "1_0", "\u0661"])
def test_label_must_be_ascii(label):
    with pytest.raises(BadLine, match="label"):
        parse_line(_tsv(label), TSV)


def test_categorical_surrounded_by_non_ascii_space_is_bad():
    with pytest.raises(BadLine, match="C1 = "):
        parse_line("\t".join(["1", *["0"] * 13, "\xa0a", *["a"] * 25]), TSV)


def test_documented_forms_still_accepted():
    s = parse_line(_tsv(" 1", ["+5", " 5", "5 ", "260.0", "-3", str(2**63), *["0"] * 7]), TSV)
    assert s.label == 1 and s.dense[:6] == (5, 5, 5, 260, -3, 2**63)
    assert np.isfinite(float(s.dense[5]))
