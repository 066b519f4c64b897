"""`dlrmbench trace profile|dump|generate`: capture a trace's locality as a profile, and replay it."""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np
import psutil

from model.criteo_cache import BadLinePolicy, default_cache_dir, preprocess
from model.criteo_format import NUM_CAT
from model.stack_distance import LRUStream
from model.traces import StackDistanceProfile, read_trace, summarize_trace
from profiler.cli import check_output_path
from profiler.store import write_json_atomic, write_text_atomic

__all__ = ["add_commands", "trace_dump", "trace_generate", "trace_profile"]

# peak bytes per generated access: the stream's slots and tree (2 x 2 x 8, grown to twice the count), the rows
# and draws (2 x 8), and the text written (a Python int and its string per row, about 100)
_GENERATE_BYTES_PER_ACCESS = 160
_CDF_ROWS_SHOWN = 12  # distances printed before the CDF table is elided


def _write_trace(path: str, rows: np.ndarray) -> None:
    write_text_atomic(path, ", ".join(map(str, rows.tolist())) + "\n")


def _check_outputs(args: argparse.Namespace, *names: str) -> None:
    """The output paths given, checked before the work (a folder given as a file was found only at the end)."""
    for name in names:
        if getattr(args, name, ""):
            check_output_path("--" + name.replace("_", "-"), getattr(args, name))


def trace_profile(args: argparse.Namespace) -> int:
    """Print a trace's locality; optionally write its profile (--write-profile) and JSON (--json-out)."""
    _check_outputs(args, "write_profile", "json_out")
    trace = read_trace(args.file)
    s = summarize_trace(trace)
    prof = s.profile
    print(f"{args.file}: {s.accesses:,} accesses, {s.unique_rows:,} unique rows "
          f"({s.unique_rows / s.accesses:.3f} of accesses are first accesses)")  # fmt: skip
    print(f"hottest 1% of rows: {100 * s.hottest_1pct_share:.1f}% of accesses; "
          f"hottest 10%: {100 * s.hottest_10pct_share:.1f}%")  # fmt: skip
    print("reuse histogram (LRU stack distance; 0 = first access):")
    for lo, hi, n in s.reuse_histogram:
        span = f"{lo}" if lo == hi else f"{lo}-{hi}"
        print(f"  {span:>15}  {n:>10,}  {100 * n / s.accesses:6.2f}%")
    shown = len(prof.distances) if len(prof.distances) <= _CDF_ROWS_SHOWN else _CDF_ROWS_SHOWN - 1
    print("stack-distance CDF:")
    for d, c in zip(prof.distances[:shown], prof.cdf[:shown], strict=True):
        print(f"  <= {d:>12}  {c:.4f}")
    if shown < len(prof.distances):
        print(f"  ... {len(prof.distances) - shown - 1} more; max {prof.distances[-1]}  {prof.cdf[-1]:.4f}")
    if args.write_profile:
        out = prof
        if not args.keep_ids:  # the rows' identities are the trace's contents; the locality does not need them
            out = StackDistanceProfile(tuple(range(len(prof.unique_accesses))), prof.distances, prof.cdf)
        out.write(args.write_profile)
        print(f"wrote the profile to {args.write_profile}" + ("" if args.keep_ids else " (row ids anonymised)"))
    if args.json_out:
        write_json_atomic(args.json_out, {"trace": args.file, **s.to_dict()})
    return 0


def trace_dump(args: argparse.Namespace) -> int:
    """Write one categorical feature's values of a Criteo file, in file order, as a trace (empties skipped)."""
    if not 0 <= args.table < NUM_CAT:
        raise ValueError(f"--table {args.table}: Criteo has tables 0..{NUM_CAT - 1}")
    _check_outputs(args, "out")
    folder = Path(args.processed_data_file) if args.processed_data_file else default_cache_dir(args.raw_data_file)
    cache, _ = preprocess(args.raw_data_file, folder, args.on_bad_line)
    empty = (np.asarray(cache.cat_empty) >> np.uint32(args.table)) & 1
    rows = np.asarray(cache.cats[:, args.table])[empty == 0].astype(np.int64)
    if rows.size == 0:
        raise ValueError(f"{args.raw_data_file}: categorical C{args.table + 1} is empty on every line")
    _write_trace(args.out, rows)
    print(f"wrote {rows.size:,} accesses of C{args.table + 1} ({len(cache) - rows.size:,} empty skipped) to {args.out}")
    return 0


def trace_generate(args: argparse.Namespace) -> int:
    """Write `--count` rows of `--rows` drawn to follow a profile's stack distances (LRU state kept throughout)."""
    if args.count < 1 or args.rows < 1:
        raise ValueError("--count and --rows must be >= 1")
    _check_outputs(args, "out")
    avail = psutil.virtual_memory().available
    if args.count * _GENERATE_BYTES_PER_ACCESS > 0.8 * avail:  # else numpy's MemoryError, or the OOM killer
        raise ValueError(
            f"--count {args.count:,}: about {args.count * _GENERATE_BYTES_PER_ACCESS / 2**30:,.1f} GiB to generate and "
            f"write, {avail / 2**30:.1f} GiB available; at most {int(0.8 * avail) // _GENERATE_BYTES_PER_ACCESS:,} "
            "accesses fit"
        )
    prof = StackDistanceProfile.read(args.profile)
    cdf = prof.normalized_cdf()
    first = float(cdf[0]) if prof.distances[0] == 0 else 0.0  # share of first accesses (distance 0)
    needed = math.ceil(first * args.count)
    if needed > args.rows:
        print(
            f"note: the profile makes {first:.1%} of accesses first ones, {needed:,} new rows in {args.count:,} "
            f"accesses, but --rows is {args.rows:,}: once every row is out, a first access reuses the least "
            f"recently used row and the stream's distances depart from the profile. Give --rows >= {needed:,}"
        )
    rows = LRUStream(prof.distances, cdf, args.rows, args.seed).take(args.count)
    _write_trace(args.out, rows)
    print(f"wrote {args.count:,} accesses over {args.rows:,} rows to {args.out}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("trace", help="index traces: locality profile, dump from Criteo, replay a profile")
    tsub = p.add_subparsers(dest="trace_command", required=True, metavar="ACTION")

    prof = tsub.add_parser("profile", help="unique rows, stack-distance CDF, reuse histogram, hot-row shares")
    prof.add_argument("file", help="a trace: row ids separated by ', ' (the reference's trace.log) or a .npy")
    prof.add_argument("--write-profile", default="", help="write the profile (the reference's --data-trace-file)")
    prof.add_argument("--keep-ids", action="store_true", help="write the real row ids in the profile's first line")
    prof.add_argument("--json-out", default="", help="write the summary as JSON")
    prof.set_defaults(func=trace_profile)

    dump = tsub.add_parser("dump", help="one Criteo categorical feature's values, in file order, as a trace")
    dump.add_argument("raw_data_file", help="raw Criteo TSV or headered CSV, plain or .gz")
    dump.add_argument("--table", type=int, required=True, help="categorical feature index, 0 (C1) to 25 (C26)")
    dump.add_argument("--out", required=True, help="trace file to write")
    dump.add_argument("--processed-data-file", default="", help="cache folder (as for train)")
    dump.add_argument("--on-bad-line", default="error", choices=[str(x) for x in BadLinePolicy])
    dump.set_defaults(func=trace_dump)

    gen = tsub.add_parser("generate", help="a trace of rows whose stack distances follow a profile")
    gen.add_argument("profile", help="a stack-distance profile (the reference's --data-trace-file format)")
    gen.add_argument("--rows", "--num-rows", dest="rows", type=int, required=True, help="rows of the table, E")
    gen.add_argument("--count", type=int, required=True, help="accesses to generate")
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--out", required=True, help="trace file to write")
    gen.set_defaults(func=trace_generate)
