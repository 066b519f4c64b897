"""`dlrmbench bench embedding-bag` (who wins, per point) and `dlrmbench asm NAME` (which vector registers).

Both take `--isa`: numba reads its target CPU once per process, so a narrower ISA re-runs the
command in a child process with NUMBA_CPU_NAME / NUMBA_CPU_FEATURES set (kernels.asm.isa_env).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterable
from typing import Any

from profiler.cli import check_output_path
from profiler.store import write_json_atomic

__all__ = [
    "add_bench_targets",
    "add_commands",
    "parse_choice_list",
    "parse_float",
    "parse_int_list",
    "parse_list",
    "parse_positive_int",
]

_ISA_MARK = "DLRMBENCH_ISA"  # set in the child so it runs instead of re-launching itself
_DEFAULT_KERNELS = ("torch", "numba_w1", "numba_w4", "numba_w8", "numba_w16", "fbgemm")


def parse_list(text: str) -> list[str]:
    """'a,b, c' -> ['a', 'b', 'c']; empty items are errors."""
    items = [s.strip() for s in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"{text!r}: empty item in a comma-separated list")
    return items


def parse_int_list(text: str) -> list[int]:
    """'128,2048' or '1e4,1e6' or '10_000' -> ints; a value that is not a whole number >= 1 is an error.

    The `type=` of every comma-separated count flag (argparse names the flag in the error).
    """
    out = []
    for item in parse_list(text):
        try:
            value = float(item.replace("_", ""))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r} is not a number") from None
        if not math.isfinite(value) or value != int(value) or value < 1:
            raise argparse.ArgumentTypeError(f"{item!r} is not a whole number >= 1")
        out.append(int(value))
    return out


def parse_positive_int(text: str) -> int:
    """argparse `type=` for one count >= 1, worded as parse_int_list words its items."""
    values = parse_int_list(text)
    if len(values) != 1:
        raise argparse.ArgumentTypeError(f"{text!r}: one number expected, not a list")
    return values[0]


def parse_float(low: float | None = None, *, above: bool = False) -> Callable[[str], float]:
    """An argparse `type=` for one finite number, at least `low` (above it, with `above`): float() takes
    'nan' and 'inf', which passed range checks written as `x < 0` and surfaced later as a NaN loss."""
    bound = "" if low is None else f" {'>' if above else '>='} {low:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not math.isfinite(value) or (low is not None and (value <= low if above else value < low)):
            raise argparse.ArgumentTypeError(f"{text!r}: expected a finite number{bound}")
        return value

    return parse


def parse_threads(text: str) -> int:
    """argparse `type=` for a thread count: a whole number >= 0, where 0 leaves torch's own count."""
    if text.strip() == "0":
        return 0
    try:
        return parse_positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number >= 0 (0: torch's own count)") from None


def parse_choice_list(allowed: Iterable[str]) -> Callable[[str], list[str]]:
    """A `type=` for a comma-separated list of names from `allowed`, e.g. 'sparse,fused'.

    Args:
        allowed: the valid names, in the order the error lists them.
    Returns:
        A parser raising argparse.ArgumentTypeError, as argparse's `choices` words it, on an unknown item.
    """
    names = tuple(allowed)
    listed = ", ".join(map(repr, names))

    def parse(text: str) -> list[str]:
        items = parse_list(text)
        for item in items:
            if item not in names:
                raise argparse.ArgumentTypeError(f"invalid choice: {item!r} (choose from {listed})")
        return items

    return parse


def _parse_on_off(text: str) -> list[bool]:
    return [item == "on" for item in parse_choice_list(("on", "off"))(text)]


def _parse_distributions(text: str) -> list[str]:
    from profiler.bench_bag import parse_distribution

    items = parse_list(text)
    for item in items:
        try:
            parse_distribution(item)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return items


def _isa_child(args: argparse.Namespace, argv: list[str]) -> int | None:
    """Re-run `dlrmbench ARGV` with the ISA's environment; None when this process already has it."""
    from kernels.asm import isa_env

    if args.isa == "native" or os.environ.get(_ISA_MARK) == args.isa:
        return None
    env = {**os.environ, **isa_env(args.isa), _ISA_MARK: args.isa}
    return subprocess.call([sys.executable, "-m", "profiler.cli", *argv], env=env)


def _add_isa(p: argparse.ArgumentParser) -> None:
    from kernels.asm import ISA_PRESETS

    p.add_argument(
        "--isa",
        default="native",
        choices=list(ISA_PRESETS),
        help="compile numba kernels for a narrower ISA (in a child process): "
        + "; ".join(f"{k}: {v[1]}" for k, v in ISA_PRESETS.items()),
    )


def _cmd_asm(args: argparse.Namespace) -> int:
    from kernels.asm import isa_in_force, kernel_vector_usage

    child = _isa_child(
        args,
        ["asm", args.name, "--isa", args.isa, "--index-bits", str(args.index_bits)] + (["--show"] if args.show else []),
    )
    if child is not None:
        return child
    usage, asm = kernel_vector_usage(args.name, args.index_bits)
    isa = isa_in_force()
    print(
        f"{args.name}, int{args.index_bits} indices, numba target {isa['numba_cpu_name']} ({isa['numba_cpu_features']})"
    )
    print(f"{'class':<6} {'registers':>9} {'instructions':>12} {'fp arith':>9} {'packed':>7}")
    for cls in "xyz":
        print(
            f"{cls + 'mm':<6} {usage.registers[cls]:>9} {usage.instructions[cls]:>12} "
            f"{usage.arithmetic[cls]:>9} {usage.packed[cls]:>7}"
        )
    print(f"widest float arithmetic: {usage.widest_arithmetic()}")
    if args.show:
        print(asm)
    return 0


def _fmt_us(s: float) -> str:
    """Seconds in microseconds, one decimal, thousands grouped: one unit for the whole column."""
    return f"{s * 1e6:,.1f}"


def _run_bench(args: argparse.Namespace, records: list[dict[str, Any]]) -> None:
    """Measure every point of `args`, appending each record to `records` as it finishes."""
    import torch

    from kernels.asm import isa_in_force
    from kernels.registry import list_kernels
    from profiler.bench_bag import (
        GATHER_CEILING,
        Inputs,
        alloc_table,
        bag_batches,
        check_memory,
        expand,
        huge_page_bytes,
        record,
        step_fn,
    )
    from profiler.timer import measure, usable_cpus

    cpus = usable_cpus()
    if max(args.threads) > cpus:
        raise ValueError(
            f"--threads {max(args.threads)}: this process may use {cpus} CPUs. More threads than CPUs time the "
            "scheduler, and numba kernels stop at the CPU count while torch does not"
        )
    known = {e.name: e for e in list_kernels()}
    kernels, skipped = [], []
    for k in args.kernels:
        if k != GATHER_CEILING and k not in known:
            raise ValueError(f"--kernels: unknown kernel {k!r}; registered: {', '.join(known)}, and {GATHER_CEILING}")
        if k in known and not known[k].available:
            skipped.append(f"{k} ({known[k].reason})")
        else:
            kernels.append(k)
    if args.gather_ceiling and GATHER_CEILING not in kernels:
        kernels.append(GATHER_CEILING)
    kernels.sort(key=lambda k: (k != "torch", k != GATHER_CEILING))  # references first: later rows compare to them
    for s in skipped:
        print(f"skipping unavailable kernel {s}", file=sys.stderr)
    if not kernels:
        raise ValueError(f"--kernels: nothing to run here, every kernel asked is unavailable: {'; '.join(skipped)}")
    if GATHER_CEILING in kernels and (args.backward or set(args.index_dtype) != {"int64"}):
        print(f"note: {GATHER_CEILING} times int64 forward bags only: no ceiling row for"
              f"{' --backward' if args.backward else ''}{' int32 indices' if 'int32' in args.index_dtype else ''}",
              file=sys.stderr)  # fmt: skip
    points = expand(
        kernels,
        batch_size=args.batch_size,
        num_rows=args.num_rows,
        embedding_dim=args.embedding_dim,
        pooling_factor=args.pooling_factor,
        distribution=args.distribution,
        threads=args.threads,
        huge_pages=args.huge_pages,
        backward=[args.backward],
        index_dtype=args.index_dtype,
    )
    points = [p for p in points if not (p.kernel == GATHER_CEILING and (p.backward or p.index_dtype != "int64"))]
    for p in {p.input_key: p for p in points}.values():  # one table alive at a time: check each alone
        try:
            check_memory(p)
        except MemoryError as exc:
            raise ValueError(
                f"--num-rows {p.num_rows} (with --embedding-dim {p.embedding_dim}, --batch-size {p.batch_size}, "
                f"--pooling-factor {p.pooling_factor}) {exc}"
            ) from None
    isa = {"isa": args.isa, **isa_in_force()}
    print(f"numba kernels compiled for {isa['numba_cpu_name']} ({isa['numba_cpu_features']})"
          + (f", --isa {args.isa}" if args.isa else ""))  # fmt: skip
    table_key, table, inputs_key, inputs, hp_bytes, fn = None, None, None, None, None, None
    for p in points:
        if p.table_key != table_key:
            table = inputs = fn = None  # free the previous table first (the last step holds it too)
            table, table_key = alloc_table(p.num_rows, p.embedding_dim, p.huge_pages, args.seed), p.table_key
            hp_bytes = huge_page_bytes(table)
        if p.input_key != inputs_key:
            dtype = getattr(torch, p.index_dtype)
            batches = bag_batches(p.batch_size, p.num_rows, p.pooling_factor, p.distribution, args.seed, dtype)
            off = torch.arange(0, p.batch_size * p.pooling_factor + 1, p.pooling_factor, dtype=dtype)
            inputs = Inputs(table, batches, off, torch.randn(p.batch_size, p.embedding_dim), args.lr)
            inputs_key = p.input_key
        before = torch.get_num_threads()
        torch.set_num_threads(p.threads)  # compile/first call on the point's thread count
        try:
            fn, extra = step_fn(p, inputs)
        finally:
            torch.set_num_threads(before)
        m = measure(fn, warmup_ms=args.warmup_ms, rep_ms=args.rep_ms, threads=p.threads)
        rec = record(p, m, {**extra, **isa, "huge_page_bytes": hp_bytes})
        records.append(rec)
        _print_row(rec, records)


def _point_label(r: dict[str, Any]) -> str:
    hp = "hp" if r["huge_pages"] else "4k"
    dist = r["distribution"]
    if dist.startswith("sd:"):  # the profile's file name: its folder would widen every row of the table
        dist = "sd:" + os.path.basename(dist[3:])
    return (
        f"B={r['batch_size']} E={r['num_rows']:.0e} D={r['embedding_dim']} L={r['pooling_factor']} "
        f"{dist} t={r['threads']} {hp}{' bwd' if r['backward'] else ''}"
    )


def _same_point(a: dict[str, Any], b: dict[str, Any]) -> bool:
    return all(
        a[k] == b[k]
        for k in a
        if k
        in (
            "batch_size",
            "num_rows",
            "embedding_dim",
            "pooling_factor",
            "distribution",
            "threads",
            "huge_pages",
            "backward",
            "index_dtype",
        )
    )


def _print_row(r: dict[str, Any], done: list[dict[str, Any]]) -> None:
    """Print one row, adding speedup_vs_torch and frac_of_gather from the point's reference rows."""
    if len(done) == 1:
        print("point: B bags, E rows, D dim, L lookups per bag, index distribution, t threads, table on 4 KiB pages "
              "(4k) or transparent huge pages (hp), bwd: forward + backward + SGD update; gather_ceiling: "
              "the profiler's plain gather loop, no prefetch (a floor for a good kernel, not the roof)")  # fmt: skip
        print(f"{'kernel':<15} {'point':<44} {'median us':>11} {'lookups/s':>10} {'GB/s':>7} {'vs torch':>8}  notes")
    ref = next((d for d in done if d["kernel"] == "torch" and _same_point(d, r)), None)
    r["speedup_vs_torch"] = ref["median_s"] / r["median_s"] if ref else None
    ceiling = next((d for d in done if d["kernel"] == "gather_ceiling" and _same_point(d, r)), None)
    r["frac_of_gather"] = r["gbps"] / ceiling["gbps"] if ceiling else None
    vs = f"{r['speedup_vs_torch']:.2f}x" if r["speedup_vs_torch"] else "-"
    notes = [f"{r['frac_of_gather']:.0%} of the plain loop"] if r["frac_of_gather"] else []
    if r.get("prefetch_rows") is not None:
        notes.append(f"prefetch {r['prefetch_rows']}")
    if r.get("sgd_prefetch_rows") is not None:
        notes.append(f"sgd prefetch {r['sgd_prefetch_rows']}")
    if r.get("kernel_note"):
        notes.append(r["kernel_note"])
    notes = "; ".join(notes + r["warnings"])[:120]
    print(
        f"{r['kernel']:<15} {_point_label(r):<44} {_fmt_us(r['median_s']):>11} {r['lookups_per_s']:>10.3g} "
        f"{r['gbps']:>7.1f} {vs:>8}  {notes}",
        flush=True,
    )


def _geomeans(records: list[dict[str, Any]]) -> None:
    by_kernel: dict[str, list[float]] = {}
    for r in records:
        if r.get("speedup_vs_torch") and r["kernel"] != "torch":
            by_kernel.setdefault(r["kernel"], []).append(r["speedup_vs_torch"])
    for k, xs in by_kernel.items():
        print(f"geomean speedup vs torch, {k}: {math.exp(sum(map(math.log, xs)) / len(xs)):.3f}x over {len(xs)} points")


def _cmd_bench(args: argparse.Namespace) -> int:
    if args.json_out:
        check_output_path("--json-out", args.json_out)
    child = _isa_child(args, _bench_argv(args))
    if child is not None:
        return child
    records: list[dict[str, Any]] = []  # filled point by point: a Ctrl-C keeps what was measured
    try:
        _run_bench(args, records)
    except KeyboardInterrupt:
        if args.json_out and records:
            write_json_atomic(args.json_out, records)
            print(f"interrupted: wrote the {len(records)} points measured to {args.json_out}")
        raise
    _geomeans(records)
    if args.json_out:
        write_json_atomic(args.json_out, records)
        print(f"wrote {len(records)} points to {args.json_out}")
    return 0


def _bench_argv(args: argparse.Namespace) -> list[str]:
    """The command line of this run, rebuilt from the parsed arguments, for the ISA child."""
    join = lambda xs: ",".join(str(x) for x in xs)  # noqa: E731
    argv = ["bench", "embedding-bag", "--kernels", join(args.kernels), "--batch-size", join(args.batch_size)]
    argv += ["--num-rows", join(args.num_rows), "--embedding-dim", join(args.embedding_dim)]
    argv += ["--pooling-factor", join(args.pooling_factor), "--distribution", join(args.distribution)]
    argv += ["--threads", join(args.threads), "--huge-pages", join("on" if h else "off" for h in args.huge_pages)]
    argv += ["--index-dtype", join(args.index_dtype), "--warmup-ms", str(args.warmup_ms), "--rep-ms", str(args.rep_ms)]
    argv += ["--lr", str(args.lr), "--seed", str(args.seed), "--isa", args.isa]
    argv += ["--backward"] * args.backward + ["--gather-ceiling"] * args.gather_ceiling
    return argv + (["--json-out", args.json_out] if args.json_out else [])


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("asm", help="vector registers (xmm/ymm/zmm) a numba kernel's compiled loops use")
    p.add_argument("name", help="a numba kernel, e.g. numba_w16")
    p.add_argument("--index-bits", type=int, choices=(32, 64), default=64)
    p.add_argument("--show", action="store_true", help="also print the assembly")
    _add_isa(p)
    p.set_defaults(func=_cmd_asm)


def add_bench_targets(bench_sub: argparse._SubParsersAction) -> None:
    p = bench_sub.add_parser(
        "embedding-bag",
        help="time embedding-bag kernels over a grid: median time, lookups/s, GB/s, speedup vs torch",
        description="Each list flag takes comma-separated values; numbers may be written 1e6 or 10_000.",
    )
    p.add_argument(
        "--kernels", type=parse_list, default=list(_DEFAULT_KERNELS), help="registry names, and gather_ceiling"
    )
    p.add_argument("--batch-size", type=parse_int_list, default=[2048], help="B, bags per call")
    p.add_argument("--num-rows", type=parse_int_list, default=[1_000_000], help="E, rows per table")
    p.add_argument("--embedding-dim", type=parse_int_list, default=[64], help="D")
    p.add_argument("--pooling-factor", type=parse_int_list, default=[20], help="L, lookups per bag")
    p.add_argument(
        "--distribution",
        type=_parse_distributions,
        default=["uniform"],
        help="uniform, zipf:1.15, sd:PATH (a stack-distance profile, e.g. from `dlrmbench trace profile`)",
    )
    p.add_argument(
        "--threads",
        type=parse_int_list,
        default=[1],
        help="threads (torch and numba), comma-separated (default 1; bench dlrm's default is torch's)",
    )
    p.add_argument("--huge-pages", type=_parse_on_off, default="off", help="table on transparent huge pages: on,off")
    p.add_argument("--index-dtype", type=parse_choice_list(("int64", "int32")), default=["int64"], help="int64,int32")
    p.add_argument("--backward", action="store_true", help="time forward + backward + SGD update")
    p.add_argument(
        "--gather-ceiling",
        action="store_true",
        help="also time the profiler's plain gather loop (no prefetch) on the same rows, and give each kernel's "
        "share of its GB/s; a floor a good kernel clears, not the machine's roof (machine --ceilings' gather "
        "is the fastest of it and every kernel)",
    )
    p.add_argument("--lr", type=parse_float(0), default=0.01, help="SGD learning rate in --backward mode")
    p.add_argument("--warmup-ms", type=parse_float(0), default=30.0)
    p.add_argument("--rep-ms", type=parse_float(0, above=True), default=150.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json-out", help="write a JSON list, one object per point")
    _add_isa(p)
    p.set_defaults(func=_cmd_bench)
