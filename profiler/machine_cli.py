"""`dlrmbench machine`: print the fingerprint and, with --ceilings, measure the machine's limits and save them."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from profiler.store import write_json_atomic

__all__ = ["SCHEMA_VERSION", "add_commands"]

SCHEMA_VERSION = 1  # 1: {schema_version, sku_id, created, mode, elapsed_s, fingerprint, ceilings, checks}


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "machine",
        help="fingerprint this machine (SKU id) and, with --ceilings, measure its bandwidth and FLOP/s limits",
        description="Print the machine fingerprint. With --ceilings, measure memory bandwidth per cache level and "
        "DRAM, random-gather bandwidth and GEMM FLOP/s, check them against plain numpy/torch timings, and "
        "write results/<sku-id>/machine.json.",
    )
    p.add_argument("--ceilings", action="store_true", help="measure ceilings (under 2 minutes; --quick: seconds)")
    p.add_argument("--quick", action="store_true", help="smaller budgets and fewer shapes (for tests, quickstart)")
    p.add_argument(
        "--cache-sizes", default="", metavar="L1=48K,L2=2M,L3=32M", help="override detected cache sizes (per instance)"
    )
    p.add_argument("--json-out", default="", metavar="FILE", help="also write {sku_id, fingerprint, ceilings} here")
    p.add_argument("--results-dir", default="results", metavar="DIR", help="machine.json goes to DIR/<sku-id>/")
    p.add_argument("--no-py-cpuinfo", action="store_true", help="skip py-cpuinfo (a slow fallback source)")
    p.set_defaults(func=_run)


def _fmt_bytes(n: int) -> str:
    for unit, size in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if (n >= size and n % size == 0) or n >= 16 * size:
            return f"{n / size:g} {unit}"
    return f"{n} B"


def _summary(fp: dict[str, Any]) -> list[str]:
    lines = [f"sku_id      {fp['sku_id']}"]
    cpu = " ".join(str(fp[k]) for k in ("cpu_brand", "cpu_vendor") if k in fp)
    fam = f"family {fp.get('cpu_family', '?')} model {fp.get('cpu_model', '?')}"
    lines.append(
        f"cpu         {cpu} ({fam}), {fp.get('logical_cpus', '?')} cpus, {fp.get('physical_cores', '?')} cores"
    )
    if "cpu_mhz" in fp:
        lines.append(f"frequency   {fp['cpu_mhz']:.0f} MHz ({fp.get('cpu_mhz_source', '')})")
    lines.append(f"isa         {' '.join(fp.get('isa_flags', [])) or '-'}")
    for level, c in fp.get("caches", {}).items():
        shared = f", shared by {c['shared_cpus']} cpus" if "shared_cpus" in c else ""
        others = fp.get("cache_sources", {}).get(level, {})
        differ = {s: v for s, v in others.items() if v != c["size_bytes"]}
        note = ("; " + ", ".join(f"{s} says {_fmt_bytes(v)}" for s, v in differ.items())) if differ else ""
        lines.append(f"cache {level:5s} {_fmt_bytes(c['size_bytes'])} per instance{shared} [{c['source']}{note}]")
    if "memory_bytes" in fp:
        lines.append(f"memory      {fp['memory_bytes'] / (1 << 30):.1f} GiB, {fp.get('numa_nodes', '?')} NUMA node(s)")
    for gpu in fp.get("gpus", []):
        lines.append(f"gpu         {gpu['name']}, {gpu['sm_count']} SMs, {gpu['memory_bytes'] / (1 << 30):.0f} GiB")
    if not fp.get("gpus"):
        lines.append("gpu         none visible")
    versions = ", ".join(f"{k} {v}" for k, v in fp.get("versions", {}).items())
    lines.append(f"versions    {versions}")
    if "git_commit" in fp:
        lines.append(f"git         {fp['git_commit'][:12]}{' (dirty)' if fp.get('git_dirty') else ''}")
    return lines


REPEAT_TOLERANCE = 0.15  # the goal: repeated runs give ceilings within 15% of each other


def repeatability(previous_path: Path, record: dict[str, Any]) -> dict[str, Any] | None:
    """Compare this run's measured ceilings with the machine.json a previous run left (same SKU, mode).

    Returns None when there is no readable previous run of the same mode; otherwise how many
    ceilings (matched by key) are within REPEAT_TOLERANCE and the ratio of each one that is not.
    """
    try:
        before = json.loads(previous_path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(before, dict) or not isinstance(before.get("ceilings", []), list):
        return None  # not a machine record: this run replaces it
    if before.get("sku_id") != record["sku_id"] or before.get("mode") != record.get("mode"):
        return None
    old = {c["key"]: c for c in before.get("ceilings", []) if c.get("source") == "measured"}
    ratios = {}
    for c in record.get("ceilings", []):
        prev = old.get(c["key"])
        if c.get("source") != "measured" or prev is None:
            continue
        now_v = c["gbps"] if c["kind"] == "bandwidth" else c["gflops"]
        prev_v = prev["gbps"] if prev["kind"] == "bandwidth" else prev["gflops"]
        if now_v and prev_v:
            ratios[c["key"]] = now_v / prev_v
    outside = {k: r for k, r in ratios.items() if abs(r - 1.0) > REPEAT_TOLERANCE}
    return {
        "previous_created": before.get("created", "?"),
        "compared": len(ratios),
        "within": len(ratios) - len(outside),
        "outside": outside,
        "max_deviation": max((abs(r - 1.0) for r in ratios.values()), default=0.0),
    }


def _run(args: argparse.Namespace) -> int:
    from profiler import fingerprint
    from profiler.cli import check_output_path

    if args.json_out:  # before the ceilings' minutes of measuring
        check_output_path("--json-out", args.json_out)

    overrides = fingerprint.parse_cache_sizes(args.cache_sizes) if args.cache_sizes else None
    t0 = time.perf_counter()
    fp = fingerprint.collect(cache_overrides=overrides, use_py_cpuinfo=not args.no_py_cpuinfo)
    for line in _summary(fp):
        print(line)
    record: dict[str, Any] = {"schema_version": SCHEMA_VERSION, "sku_id": fp["sku_id"], "fingerprint": fp}
    if args.ceilings:
        from profiler.ceilings import measure_ceilings
        from profiler.crosscheck import AGREEMENT, run_checks

        mode = "quick" if args.quick else "full"
        print(f"\nceilings ({mode}):")
        ceilings = measure_ceilings(fp, quick=args.quick, log=lambda line: print("  " + line, flush=True))
        checks = run_checks(fp, ceilings, reps=3 if args.quick else 7, rounds=2 if args.quick else 3)
        print(
            f"\nindependent checks (agree = within {AGREEMENT:.0%} of the ceiling's method re-run beside it, "
            "best of alternating rounds; 'recorded' is machine.json's value):"
        )
        for c in checks:
            verdict = "info" if c.informative else ("agree" if c.agrees else "DIFFER")
            print(
                f"  {c.name:38s} {c.independent_value:8.1f} {c.unit:7s} vs {c.ceiling_key:32s} "
                f"{c.ceiling_value:8.1f} (recorded {c.ceiling_recorded:7.1f})  ratio {c.ratio:5.2f}  {verdict}"
            )
        contended = sum(c.contended for c in ceilings)
        if contended:
            print(f"\nwarning: {contended} of {len(ceilings)} ceilings were measured under contention (flagged)")
        record.update(
            created=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            mode=mode,
            elapsed_s=time.perf_counter() - t0,
            ceilings=[c.to_dict() for c in ceilings],
            checks=[c.to_dict() for c in checks],
        )
        path = Path(args.results_dir) / fp["sku_id"] / "machine.json"
        repeat = repeatability(path, record)
        if repeat is not None:
            record["repeat_vs_previous"] = repeat
            print(
                f"\nrepeatability against the previous run on this SKU ({repeat['previous_created']}): "
                f"{repeat['within']} of {repeat['compared']} ceilings within {REPEAT_TOLERANCE:.0%}"
            )
            for key, ratio in repeat["outside"].items():
                print(f"  {key:42s} now / before = {ratio:5.2f}")
        write_json_atomic(path, record)
        print(f"\nwrote {path} ({record['elapsed_s']:.1f} s)")
    if args.json_out:
        write_json_atomic(Path(args.json_out), record)
        print(f"wrote {args.json_out}")
    return 0
