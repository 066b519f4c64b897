"""The compiled raw-TSV parser against the reference: criteo_format.parse_line and the per-line cache build."""

from __future__ import annotations

import gzip
import random
from pathlib import Path

import numpy as np
import pytest

from model import criteo_cache, criteo_fast, criteo_fill
from model.criteo_cache import _build
from model.criteo_format import BadLine, detect_layout, parse_line

pytestmark = pytest.mark.skipif(not criteo_fast.AVAILABLE, reason="numba is not installed")

TSV = detect_layout("0\t1", "t")
_LABELS = ["0", "1"]
_LABELS_ODD = ["2", "", "1.0", " 1", "01", "-1", "+1", "1e0", "x", "-0"]
_DENSE = ["", "0", "7", "-3", "-0", "0012", "260", "999999999999999999", "-123456789012345678"]
_DENSE_ODD = ["+5", " 5", "5 ", "260.0", "1e3", "1_0", "-", "--1", "1.5", "abc", "0x1f", "nan", "inf", "5\r",
              "1234567890123456789", "9223372036854775808", "-99999999999999999999", "0000000000000000000007",
              "٣", "\xa05", "5\x0b", "\x1c5", "1\u200b"]  # fmt: skip
_CATS = ["", "0", "a", "ffffffff", "FFFFFFFF", "DeadBeef", "68fd1e64", "00000001", "7e0ccccf"]
_CATS_ODD = ["zz", "123456789", "000000001", " ab", "ab ", "0x1f", "-1", "ab\r", "é", "g", "\u00a0a"]
_ENDINGS = ["\n", "\r\n"]


def _random_line(rng: random.Random, odd: float) -> tuple[bytes, bool]:
    """One line without its ending, and whether it is plain (the compiled pass must accept it)."""
    plain = True

    def pick(common: list[str], rare: list[str]) -> str:
        nonlocal plain
        if rng.random() < odd:
            plain = False
            return rng.choice(rare)
        return rng.choice(common)

    fields = [pick(_LABELS, _LABELS_ODD)]
    fields += [pick(_DENSE, _DENSE_ODD) for _ in range(13)]
    fields += [pick(_CATS, _CATS_ODD) for _ in range(26)]
    u = rng.random()
    if u < 0.1:
        fields = fields[: rng.randint(15, 39)]  # trailing fields stripped
    elif u < 0.13:
        fields = fields[: rng.randint(1, 14)]  # too few
        plain = False
    elif u < 0.16:
        fields += [""] * rng.randint(1, 2) if rng.random() < 0.5 else ["x"]  # too many
        plain = False
    raw = "\t".join(fields).encode()
    v = rng.random()
    if v < 0.02:
        raw, plain = b"", False  # blank line
    elif v < 0.04:
        raw, plain = raw.replace(b"a", b"\xff", 1), raw.count(b"a") == 0 and plain  # undecodable byte
    elif v < 0.05:
        raw, plain = raw + b"\r", False  # "\r\r\n": rstrip takes both
    return raw, plain


def _random_file(seed: int, n: int, odd: float = 0.02, ending: str | None = None, final_newline: bool = True) -> (
    tuple[bytes, list[bool]]
):  # fmt: skip
    rng = random.Random(seed)
    lines = [_random_line(rng, odd) for _ in range(n)]
    endings = [(ending or rng.choice(_ENDINGS)).encode() for _ in range(n)]
    if not final_newline:
        endings[-1] = b""
        raw, plain = lines[-1]
        lines[-1] = raw, plain and raw.count(b"\t") == 39  # without its ending, a line needs all its fields
    data = b"".join(raw + end for (raw, _), end in zip(lines, endings, strict=True))
    return data, [plain for _, plain in lines]


def _reference(line: bytes) -> tuple[int, list[float], list[int]] | None:
    try:
        s = parse_line(line.decode("utf-8", errors="replace").rstrip("\r\n"), TSV, line.endswith(b"\n"))
    except BadLine:
        return None
    return s.label, [float(x) for x in s.dense], list(s.cats)


@pytest.mark.parametrize("seed", range(4))
def test_random_lines_field_by_field_as_parse_line(seed):
    data, plain = _random_file(seed, 3000, odd=0.01, final_newline=seed % 2 == 0)
    c = criteo_fast.parse_chunk(np.frombuffer(data, np.uint8))
    assert len(c.flagged) == len(plain) and c.starts[-1] == len(data)
    accepted = 0
    for k in range(len(plain)):
        line = data[c.starts[k] : c.starts[k + 1]]
        assert line.endswith(b"\n") or k == len(plain) - 1
        if plain[k]:
            assert not c.flagged[k], line
        if c.flagged[k]:
            continue
        accepted += 1
        ref = _reference(line)
        assert ref is not None, line  # never accept what parse_line rejects
        label, dense, cats = ref
        assert c.labels[k] == label
        assert c.dense[k].tolist() == dense, line  # exact: no wrapping, no rounding difference
        assert [-1 if c.cat_empty[k] >> t & 1 else int(c.cats[k, t]) for t in range(26)] == cats, line
        assert all(c.cats[k, t] == 0 for t in range(26) if c.cat_empty[k] >> t & 1)
    assert accepted >= plain.count(True) > len(plain) // 3


def _build_both(path: Path, tmp_path: Path, policy: str, chunk_bytes: int) -> tuple[object, object]:
    """(reference, compiled) results: the stats dict, or the message of the ValueError raised."""
    out = []
    for compiled in (False, True):
        folder = tmp_path / f"{path.name}-{compiled}-{policy}-{chunk_bytes}"
        folder.mkdir()
        try:
            stats = _build(path, folder, policy, compiled=compiled, chunk_bytes=chunk_bytes)
        except ValueError as exc:
            out.append(str(exc))
            continue
        out.append((stats, [(folder / name).read_bytes() for name in criteo_fill.FILES]))
    return out[0], out[1]


@pytest.mark.parametrize(
    ("seed", "ending", "final_newline", "gz", "chunk_bytes"),
    [
        (10, "\n", True, False, 1 << 20),
        (11, "\r\n", True, False, 1 << 20),
        (12, None, False, False, 1 << 20),
        (13, None, True, True, 1 << 20),
        (14, "\r\n", False, True, 4096),
        (15, None, True, False, 1000),  # about 4 lines a chunk: most lines straddle a read
        (16, "\r\n", False, False, 7),  # every line longer than a read
        (17, None, True, False, 1),
    ],
)
def test_cache_identical_to_the_per_line_build(tmp_path, seed, ending, final_newline, gz, chunk_bytes):
    data, _ = _random_file(seed, 400 if chunk_bytes < 100 else 4000, ending=ending, final_newline=final_newline)
    path = tmp_path / ("t.txt.gz" if gz else "t.txt")
    path.write_bytes(gzip.compress(data) if gz else data)
    ref, fast = _build_both(path, tmp_path, "skip", chunk_bytes)
    assert fast == ref  # stats (rows, lines, bad lines, examples, positives) and every array byte
    stats = ref[0]
    assert stats["bad_lines"] > 0 and stats["rows"] + stats["bad_lines"] == stats["lines"]
    ref, fast = _build_both(path, tmp_path, "error", chunk_bytes)
    assert isinstance(ref, str) and fast == ref  # the first bad line, same message


def test_plain_lines_never_reach_parse_line(tmp_path, monkeypatch):
    data, plain = _random_file(20, 2000)
    path = tmp_path / "t.txt"
    path.write_bytes(data)
    calls = []
    monkeypatch.setattr(criteo_fill, "parse_line", lambda line, *a: calls.append(line) or parse_line(line, *a))
    (tmp_path / "c").mkdir()
    _build(path, tmp_path / "c", "skip")
    assert 0 < len(calls) <= plain.count(False)


def _tsv(label: str = "0", dense: list[str] | None = None, cats: list[str] | None = None) -> str:
    dense = dense if dense is not None else [str(k) for k in range(13)]
    cats = cats if cats is not None else [f"{k:08x}" for k in range(26)]
    return "\t".join([label, *dense, *cats])


def test_hand_computed_values_with_crlf_and_no_final_newline(tmp_path):
    lines = [
        _tsv("1", ["-5", "0012", "", "+5", "260.0", " 7", *["0"] * 7], ["FFFFFFFF", "", "DeadBeef", *["1"] * 23]),
        "\t".join(_tsv("0").split("\t")[:15]),  # only C1 left
        _tsv("0", ["12345678901234567890123", *["1"] * 12]),  # wider than int64: parse_line's float, not wrapped
    ]
    path = tmp_path / "t.txt"
    path.write_bytes("\r\n".join(lines).encode())
    cache, _ = criteo_cache.preprocess(path, tmp_path / "c")
    assert cache.manifest["rows"] == cache.manifest["lines"] == 3
    np.testing.assert_array_equal(cache.labels, np.array([1, 0, 0], np.float32))
    want = np.log1p(np.array([0, 12, 0, 5, 260, 7, *[0] * 7], np.float64)).astype(np.float32)
    np.testing.assert_array_equal(cache.dense[0], want)
    assert cache.dense[2, 0] == np.float32(np.log1p(1.2345678901234568e22))
    assert cache.cats[0, :3].tolist() == [0xFFFFFFFF, 0, 0xDEADBEEF] and cache.cat_empty[0] == 1 << 1
    assert cache.cats[1, 0] == 0 and cache.cat_empty[1] == ((1 << 26) - 1) & ~1


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("\t".join([*_tsv().split("\t"), "x"]), "41 fields, expected 40"),
        (_tsv() + "\t", "41 fields, expected 40"),
        ("\t".join(_tsv().split("\t")[:14]), "14 field(s), expected 40 (or at least 15 with trailing empty fields"),
        ("", "1 field(s), expected 40"),
        (_tsv("2"), "label '2' is not 0 or 1"),
        (_tsv(""), "label '' is not 0 or 1"),
        (_tsv("0", ["1.5", *["0"] * 12]), "I1 = '1.5' is not an integer"),
        (_tsv("0", ["0", "-", *["0"] * 11]), "I2 = '-' is not an integer"),
        (_tsv("0", [*["0"] * 12, "9" * 5000]), "I13 = '999999"),  # past int()'s 4300 digits, float() says inf
        (_tsv("0", None, ["zz", *["0"] * 25]), "C1 = 'zz' is not a hex value of at most 8 digits"),
        (_tsv("0", None, [*["0"] * 25, "123456789"]), "C26 = '123456789' is not a hex value of at most 8 digits"),
        (_tsv("0", None, ["0x1f", *["0"] * 25]), "C1 = '0x1f' is not a hex value"),
        (_tsv("0", None, ["\udcff", *["0"] * 25]), "C1 = '\ufffd' is not a hex value"),  # the byte 0xff
    ],
)
@pytest.mark.parametrize("chunk_bytes", [1 << 20, 64])
def test_each_bad_line_same_message_and_line(tmp_path, bad, reason, chunk_bytes):
    good = _tsv("1")
    path = tmp_path / "b.txt"
    path.write_bytes(("\n".join([good, good, bad, good, bad, good]) + "\n").encode("utf-8", "surrogateescape"))
    ref, fast = _build_both(path, tmp_path, "error", chunk_bytes)
    assert isinstance(fast, str) and fast == ref
    assert fast.startswith(f"{path}:3: bad line: {reason}")
    ref, fast = _build_both(path, tmp_path, "skip", chunk_bytes)
    assert fast == ref
    stats = fast[0]
    assert (stats["rows"], stats["lines"], stats["bad_lines"]) == (4, 6, 2)
    assert [e["line"] for e in stats["bad_line_examples"]] == [3, 5]
    assert stats["bad_line_examples"][0]["reason"].startswith(reason)


@pytest.mark.parametrize(("ending", "gz"), [("\n", False), ("\r\n", False), ("\n", True)])
def test_file_cut_mid_line_is_a_bad_last_line(tmp_path, ending, gz):
    good = _tsv("1")
    cut = "\t".join(good.split("\t")[:16])  # `head -c` stopped in C2 of line 3: no line ending after it
    path = tmp_path / ("cut.txt.gz" if gz else "cut.txt")
    data = ending.join([good, good, cut]).encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    ref, fast = _build_both(path, tmp_path, "error", 1 << 20)
    assert fast == ref == f"{path}:3: bad line: 16 field(s), expected 40: the file ends mid-line (no line ending): " \
        f"{cut!r} (--on-bad-line skip drops such lines and counts them)"  # fmt: skip
    ref, fast = _build_both(path, tmp_path, "skip", 1 << 20)
    assert fast == ref
    stats = ref[0]
    assert (stats["rows"], stats["lines"], stats["bad_lines"], stats["bad_line_examples"][0]["line"]) == (2, 3, 1, 3)
    whole = tmp_path / ("whole.txt.gz" if gz else "whole.txt")  # with its line ending: trailing fields stripped
    whole.write_bytes(gzip.compress(data + ending.encode()) if gz else data + ending.encode())
    ref, fast = _build_both(whole, tmp_path, "error", 1 << 20)
    assert fast == ref
    assert (ref[0]["rows"], ref[0]["bad_lines"]) == (3, 0)


def test_integer_too_wide_for_float_is_a_bad_line_in_both(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(_tsv("0", ["9" * 400, *["0"] * 12]) + "\n" + _tsv("1", ["1"] * 13) + "\n")
    ref, fast = _build_both(path, tmp_path, "skip", 1 << 20)
    assert fast == ref and (ref[0]["rows"], ref[0]["bad_lines"]) == (1, 1)
    ref, fast = _build_both(path, tmp_path, "error", 1 << 20)
    assert fast == ref and "t.txt:1: bad line: I1 = '9999" in ref and "too large for a float" in ref


@pytest.mark.parametrize("chunk_bytes", [1, 5, 64, 1 << 20])
def test_read_chunks_yields_whole_lines(tmp_path, chunk_bytes):
    data = b"a\tb\n\nccc\r\n" + b"x" * 200 + b"\nlast"
    path = tmp_path / "t.txt"
    path.write_bytes(data)
    with path.open("rb") as f:
        chunks = [c.tobytes() for c in criteo_fast.read_chunks(f, chunk_bytes, path)]
    assert b"".join(chunks) == data
    assert all(c.endswith(b"\n") for c in chunks[:-1]) and chunks[-1].endswith(b"last")


def test_no_valid_sample_and_truncated_gzip_fail_as_before(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_text("1\t2\n\nx\n")
    assert _build_both(bad, tmp_path, "skip", 1 << 20) == (f"{bad}: no valid sample (3 bad line(s))",) * 2
    data, _ = _random_file(30, 4000, odd=0)
    packed = gzip.compress(data)
    cut = tmp_path / "cut.txt.gz"
    cut.write_bytes(packed[: len(packed) // 2])
    for compiled in (False, True):  # a clear message (the CLI prints ValueErrors), not gzip's EOFError
        (tmp_path / f"c{compiled}").mkdir()
        with pytest.raises(ValueError, match=r"cut\.txt\.gz: read failed \(.*\); a truncated or corrupt gzip file\?"):
            _build(cut, tmp_path / f"c{compiled}", "skip", compiled=compiled)


def test_prefetch_keeps_order_raises_where_the_producer_failed_and_stops_early():
    import threading

    assert list(criteo_fast.prefetch(iter(range(10)), depth=2)) == list(range(10))

    def failing():
        yield 1
        yield 2
        raise EOFError("truncated")

    got = []
    with pytest.raises(EOFError, match="truncated"):
        for x in criteo_fast.prefetch(failing()):
            got.append(x)
    assert got == [1, 2]
    produced = []

    def endless():
        k = 0
        while True:
            produced.append(k)
            yield k
            k += 1

    chunks = criteo_fast.prefetch(endless(), depth=2)
    assert next(chunks) == 0
    chunks.close()  # the caller stops: the producer must stop too, not run on or hang
    assert len(produced) <= 5
    assert not any(t.name == "criteo-read" for t in threading.enumerate())


@pytest.mark.parametrize("variant", ["kaggle-csv", "csv"])
@pytest.mark.parametrize(
    ("ending", "chunk_bytes", "gz"), [("\r\n", 1 << 20, False), (None, 1000, True), ("\n", 7, False)]
)
def test_headered_csv_cache_identical_to_the_per_line_build(tmp_path, variant, ending, chunk_bytes, gz):
    data, _ = _random_file(30, 300 if chunk_bytes < 100 else 3000, ending=ending)
    names = ["Label" if variant == "kaggle-csv" else "label", *(f"I{k}" for k in range(1, 14)),
             *(f"C{k}" for k in range(1, 27))]  # fmt: skip
    lines = data.replace(b"\t", b",").split(b"\n")
    if variant == "kaggle-csv":  # an Id column first, as Kaggle's train.csv
        names = ["Id", *names]
        lines = [b"%d," % (10_000_000 + i) + line if line else line for i, line in enumerate(lines)]
    text = (",".join(names) + (ending or "\n")).encode() + b"\n".join(lines)
    path = tmp_path / ("t.csv.gz" if gz else "t.csv")
    path.write_bytes(gzip.compress(text) if gz else text)
    assert detect_layout(",".join(names), path).name == variant
    ref, fast = _build_both(path, tmp_path, "skip", chunk_bytes)
    assert fast == ref
    stats = ref[0]
    assert (
        stats["format"] == variant
        and stats["bad_lines"] > 0
        and stats["rows"] + stats["bad_lines"] + 1 == stats["lines"]
    )
    ref, fast = _build_both(path, tmp_path, "error", chunk_bytes)
    assert isinstance(ref, str) and fast == ref


def test_csv_lines_take_the_compiled_pass(tmp_path, monkeypatch):
    header = ",".join(["Id", "Label", *(f"I{k}" for k in range(1, 14)), *(f"C{k}" for k in range(1, 27))])
    path = tmp_path / "t.csv"
    path.write_text("\r\n".join([header, *(f"{i}," + _tsv("1").replace("\t", ",") for i in range(50))]) + "\r\n")
    calls = []
    monkeypatch.setattr(criteo_fill, "parse_line", lambda line, *a: calls.append(line) or parse_line(line, *a))
    (tmp_path / "c").mkdir()
    stats = _build(path, tmp_path / "c", "error")
    assert (stats["rows"], stats["lines"], calls) == (50, 51, [])
