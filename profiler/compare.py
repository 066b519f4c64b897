"""`dlrmbench compare results/<skuA> results/<skuB> ...`: the same points on several machines, side by side.

Points are aligned by their point key (a hash of every Point field but the sweep name), so a
point matches only the identical measurement on another SKU. The first folder is the reference:
each other SKU gets the ratio time_A / time_X per point (> 1: X is faster), and the roofline and
throughput plots overlay all SKUs, each labelled with its CPU (and GPU) name.
"""

from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from profiler.plots import add_shared_options, find_spec, make_plot, plot_settings
from profiler.results import (
    Machine,
    ResultSet,
    group_by,
    kernel_label,
    load_results,
    point_label,
    select,
    varying_fields,
)

__all__ = ["Aligned", "add_commands", "align", "format_ratio_tables", "write_comparison"]


@dataclass(frozen=True)
class Aligned:
    """One point key and its ok row on each SKU that measured it (sku_id -> row)."""

    key: str
    rows: dict[str, dict[str, Any]]

    def ratio(self, reference: str, other: str) -> float | None:
        """time on `reference` / time on `other`: how many times faster `other` is."""
        a, b = self.rows.get(reference), self.rows.get(other)
        return a["median_s"] / b["median_s"] if a and b and a.get("median_s") and b.get("median_s") else None


def align(sets: list[ResultSet]) -> tuple[list[Aligned], list[str]]:
    """Points measured (status ok) on at least two of the SKUs, matched by point key.

    Args:
        sets: one ResultSet per machine, the reference first.
    Returns:
        The aligned points in the reference's order (then the others'), and the sku ids in input order.
    """
    skus: list[str] = []
    for s in sets:
        ids = list(s.machines)
        if len(ids) != 1:
            raise ValueError(f"each compare argument must hold one machine's results; found {len(ids)}: {ids}")
        if ids[0] in skus:
            raise ValueError(f"SKU {ids[0]} is given twice; compare needs different machines")
        skus.append(ids[0])
    by_key: dict[str, dict[str, dict[str, Any]]] = {}
    for sku, s in zip(skus, sets, strict=True):
        for r in s.rows:
            if r.get("status") == "ok" and r.get("median_s"):
                by_key.setdefault(r["key"], {})[sku] = r  # a later record of the same point wins
    aligned = [Aligned(k, rows) for k, rows in by_key.items() if len(rows) >= 2]
    return aligned, skus


def format_ratio_tables(aligned: list[Aligned], skus: list[str], machines: dict[str, Machine]) -> str:
    """One text table per sweep: per point and kernel, the reference's time and GB/s, each other SKU's
    time and its speed ratio over the reference, and a geometric-mean line."""
    if not aligned:
        return "no point was measured on more than one of these machines"
    ref = skus[0]
    names = {s: machines[s].name if s in machines else s for s in skus}
    lines = [f"{chr(65 + i)} = {names[s]} [{s}]" for i, s in enumerate(skus)]
    lines.append(f"ratio = time on A / time on the other (> 1: faster than A); {len(aligned)} aligned points")
    first = [next(iter(a.rows.values())) for a in aligned]
    for (sweep,), group_rows in group_by(first, ["sweep"]).items():
        keys = {r["key"] for r in group_rows}
        group = [a for a in aligned if a.key in keys]
        shown = varying_fields(group_rows, exclude=["kernel"])
        labels = [point_label(next(iter(a.rows.values())), shown, short=True) for a in group]
        label_w = max(10, *(len(x) for x in labels)) + 2
        head = f"{'point':<{label_w}}{'kernel':<14}{'A ms':>10}{'A GB/s':>9}"
        head += "".join(f"{chr(66 + i) + ' ms':>10}{chr(66 + i) + '/A':>7}" for i in range(len(skus) - 1))
        lines += ["", f"sweep {sweep}", head]
        for a, label in zip(group, labels, strict=True):
            r0 = a.rows.get(ref)
            row = f"{label:<{label_w}}{kernel_label(next(iter(a.rows.values()))):<14}"
            row += f"{r0['median_s'] * 1e3:10.3f}{r0.get('gbps') or 0:9.2f}" if r0 else f"{'-':>10}{'-':>9}"
            for other in skus[1:]:
                r, q = a.rows.get(other), a.ratio(ref, other)
                row += f"{r['median_s'] * 1e3:10.3f}" if r else f"{'-':>10}"
                row += f"{q:6.2f}x" if q else f"{'-':>7}"
            lines.append(row)
        geo = ""
        for other in skus[1:]:
            qs = [q for a in group if (q := a.ratio(ref, other))]
            gm = math.exp(sum(map(math.log, qs)) / len(qs)) if qs else None
            geo += f"{'':10}{gm:6.2f}x" if gm else f"{'':10}{'-':>7}"
        lines.append(f"{'geomean':<{label_w}}{'':14}{'':19}{geo}")
    return "\n".join(lines)


def write_comparison(
    sets: list[ResultSet], out_dir: str | Path, *, spec_dir: str | Path = "sweeps"
) -> tuple[list[Path], list[str]]:
    """Overlaid roofline (all aligned points) and one throughput plot per sweep, written under out_dir.

    Returns:
        The files written and notes (roofline flags, panels left out, plots skipped and why).
    """
    aligned, _skus = align(sets)
    if not aligned:
        raise ValueError("no point was measured on more than one of these machines; nothing to overlay")
    machines = {k: v for s in sets for k, v in s.machines.items()}
    rows = [r for a in aligned for r in a.rows.values()]
    out_dir = Path(out_dir)
    paths: list[Path] = []
    notes: list[str] = []
    if any(r.get("gflops") for r in rows):
        res = make_plot("roofline", rows, machines, out_dir / "compare_roofline")
        paths += res.paths
        notes += [f"roofline: {f}" for f in res.flagged]
    for (sweep,), sweep_rows in group_by(rows, ["sweep"]).items():
        settings = plot_settings(sweep_rows, find_spec(sweep, sweep_rows[0].get("spec_file", ""), spec_dir))
        try:
            res = make_plot("throughput", sweep_rows, machines, out_dir / f"compare_{sweep}_throughput",
                            settings=settings)  # fmt: skip
        except ValueError as exc:
            notes.append(f"{sweep}: no throughput plot: {exc}")
            continue
        paths += res.paths
        notes += [f"{sweep}: {n}" for n in res.notes]
    return paths, notes


def _cmd(args: argparse.Namespace) -> int:
    if len(args.results) < 2:
        raise ValueError("compare needs at least two results folders (one per machine)")
    filters = [f for part in args.filter for f in part.split(",") if f]
    sets = []
    for path in args.results:
        s = load_results(path, include_contended=not args.exclude_contended)
        sets.append(ResultSet(select(s.rows, filters), s.machines, s.files, s.torn_lines, s.excluded_contended))
    aligned, skus = align(sets)
    machines = {k: v for s in sets for k, v in s.machines.items()}
    print(format_ratio_tables(aligned, skus, machines))
    if args.out:
        paths, notes = write_comparison(sets, args.out, spec_dir=args.spec_dir)
        for note in notes:
            print(f"note: {note}", file=sys.stderr)
        print("wrote " + ", ".join(map(str, paths)))
    return 0 if aligned else 1


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare",
        help="the same points on several machines: ratio tables and overlaid roofline / throughput plots",
        description="Align points by key across results/<sku-id>/ folders of different machines. The first "
        "folder is the reference. Prints ratio tables; with --out, writes overlaid plots (PNG and SVG). "
        "Exit status 1 when no point was measured on two machines.",
    )
    p.add_argument("results", nargs="+", metavar="RESULTS", help="results/<sku-id>/ folders, reference first")
    p.add_argument("--out", default="", metavar="DIR", help="write compare_*.png / .svg here")
    add_shared_options(p)
    p.set_defaults(func=_cmd)
