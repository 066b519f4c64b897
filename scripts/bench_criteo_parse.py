"""Criteo raw TSV preprocessing, the per-line parser against the compiled one, alternating.

    python scripts/bench_criteo_parse.py [--lines 400000] [--rounds 3] [--formats plain,gzip] [--json-out PATH]

Writes, in a temporary folder outside the repository, a file of --lines lines by repeating the
bundled sample (../shared/data/criteo/wide-resdnn/train.txt; a headered CSV sample's header is
written once, on top, and only its data lines repeated), gzipped too for the gzip format,
then builds its cache with each parser in turn for --rounds rounds (the order flips every round,
so drift of this shared host hits both alike) and prints the median lines/s of each and their
ratio. A build is the whole preprocessing: the line count, the parse, the memmap writes. Every
build must give the same stats and byte-identical arrays as the first per-line one. The
compiled kernel is loaded (or compiled) once before timing.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from model import criteo_fast
from model.criteo_cache import _build
from model.criteo_fill import FILES
from model.criteo_format import detect_layout
from profiler.bench_bag_cli import parse_choice_list, parse_positive_int
from profiler.store import write_json_atomic

SAMPLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "criteo" / "wide-resdnn" / "train.txt"
PARSERS = ("per-line", "compiled")
FORMATS = ("plain", "gzip")


def read_sample(sample: Path) -> tuple[bytes, list[bytes]]:
    """The header line (b"" for raw TSV) and the data lines of `sample`; ValueError if it is not Criteo data."""
    lines = sample.read_bytes().splitlines(keepends=True)
    if not lines:
        raise ValueError(f"{sample}: empty file")
    if not lines[-1].endswith(b"\n"):
        lines[-1] += b"\n"  # else two copies of the sample would be glued together
    first = lines[0].decode("utf-8", errors="replace").rstrip("\r\n")
    header = lines.pop(0) if detect_layout(first, sample).has_header else b""
    if not lines:
        raise ValueError(f"{sample}: no data lines after the header")
    return header, lines


def write_sample(path: Path, header: bytes, data: list[bytes], lines: int, gz: bool) -> None:
    """`lines` lines: the header once (if any), then `data` repeated as often as needed."""
    whole = b"".join(data)
    n = lines - bool(header)  # data lines
    with gzip.open(path, "wb", compresslevel=6) if gz else open(path, "wb") as f:
        f.write(header)
        for _ in range(n // len(data)):
            f.write(whole)
        f.write(b"".join(data[: n % len(data)]))


def build(raw: Path, folder: Path, parser: str) -> tuple[float, dict[str, Any], list[str]]:
    """Seconds, stats and a digest of each cache array."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir()
    t0 = time.perf_counter()
    stats = _build(raw, folder, "error", compiled=parser == "compiled")
    seconds = time.perf_counter() - t0
    digests = [hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in FILES]
    return seconds, stats, digests


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--lines", type=parse_positive_int, default=400_000, help="lines in the file to parse, header included"
    )
    ap.add_argument("--rounds", type=parse_positive_int, default=3)
    ap.add_argument("--formats", type=parse_choice_list(FORMATS), default=list(FORMATS), help="comma-separated")
    ap.add_argument("--sample", type=Path, default=SAMPLE, help="Criteo file to repeat: raw TSV or headered CSV")
    ap.add_argument("--json-out", type=Path, help="write the figures here (JSON)")
    args = ap.parse_args()
    if not args.sample.is_file():
        ap.error(f"--sample {args.sample}: no such file")
    try:
        header, data = read_sample(args.sample)
    except ValueError as exc:
        ap.error(f"--sample: {exc}")
    if header and args.lines < 2:
        ap.error(f"--lines {args.lines}: {args.sample} has a header line, so at least 2 (the header and one sample)")
    if not criteo_fast.AVAILABLE:
        raise SystemExit("numba is not installed: there is no compiled parser to compare")

    results = []
    with tempfile.TemporaryDirectory(prefix="bench-criteo-parse-") as tmp_name:
        tmp = Path(tmp_name)
        warm = tmp / "warm.txt"
        write_sample(warm, header, data, 100, False)
        build(warm, tmp / "warm", "compiled")
        for fmt in args.formats:
            raw = tmp / ("train.txt.gz" if fmt == "gzip" else "train.txt")
            write_sample(raw, header, data, args.lines, fmt == "gzip")
            seconds: dict[str, list[float]] = {p: [] for p in PARSERS}
            reference = None
            for r in range(args.rounds):
                for parser in PARSERS if r % 2 == 0 else PARSERS[::-1]:
                    s, stats, digests = build(raw, tmp / "cache", parser)
                    reference = reference or (stats, digests)
                    if (stats, digests) != reference:
                        raise SystemExit(f"{fmt}, round {r + 1}: the {parser} cache differs from the per-line one")
                    seconds[parser].append(s)
            rows = reference[0]["lines"]
            rates = {p: rows / statistics.median(seconds[p]) for p in PARSERS}
            results.append(
                {
                    "format": fmt,
                    "lines": rows,
                    "file_bytes": raw.stat().st_size,
                    "seconds": seconds,
                    "lines_per_s": rates,
                    "speedup": rates["compiled"] / rates["per-line"],
                    "cache_sha256": dict(zip(FILES, reference[1], strict=True)),  # every build's, checked above
                }
            )

    print(f"{'format':<8}{'lines':>10}{'per-line lines/s':>18}{'compiled lines/s':>18}{'speedup':>9}")
    for res in results:
        rate = res["lines_per_s"]
        print(f"{res['format']:<8}{res['lines']:>10,}{rate['per-line']:>18,.0f}{rate['compiled']:>18,.0f}"
              f"{res['speedup']:>8.1f}x")  # fmt: skip
    print(f"medians of {args.rounds} rounds each; both parsers gave byte-identical caches")
    if args.json_out:
        record = {"rounds": args.rounds, "cpus": os.cpu_count(), "sample": str(args.sample.resolve())}
        write_json_atomic(args.json_out, record | {"python": sys.version.split()[0], "results": results})
        print(f"wrote {args.json_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
