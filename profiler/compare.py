"""`dlrmbench compare results/<skuA> results/<skuB> ...`: the same points on several machines, side by side.

Points are aligned by their point key (a hash of every Point field but the sweep name), so a
point matches only the identical measurement on another SKU; a working set given relative to a
cache (0.5*L2) is the same expression there, resolved to that machine's bytes, and the table shows
each side's bytes where they differ. The first folder is the reference:
each other side X gets the ratio tA/tX = time on A / time on X per point (> 1: X is faster), and
the roofline and throughput plots overlay all sides, each labelled with its CPU (and GPU) name.
Two folders of the same SKU (before and after a change, two VMs of one type) are told apart by
their folder, as given, in tables and plot titles.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from profiler.cli import check_output_path
from profiler.plots import add_shared_options, find_spec, make_plot, plot_settings
from profiler.results import (
    Machine,
    ResultSet,
    group_by,
    kernel_label,
    load_results,
    machine_name,
    point_label,
    select,
    varying_fields,
)
from profiler.sweep_spec import format_bytes

__all__ = ["Aligned", "add_commands", "align", "format_ratio_tables", "label_sides", "write_comparison"]


@dataclass(frozen=True)
class _Side(Machine):
    """A machine as seen through one results folder, when another folder of the comparison has its SKU."""

    source: str = ""  # the folder (or .jsonl) as given on the command line

    @property
    def name(self) -> str:
        return f"{machine_name(self.fingerprint, self.sku_id)} from {self.source}"


def _only_sku(s: ResultSet) -> str:
    ids = list(s.machines)
    if len(ids) != 1:
        raise ValueError(f"each compare argument must hold one machine's results; found {len(ids)}: {ids}")
    return ids[0]


def label_sides(sets: list[ResultSet], sources: list[str] | None = None) -> list[ResultSet]:
    """The sets keyed so that each side of a comparison has its own label (rows' sku_id, machines' key).

    Distinct SKUs keep their sku id, so sets of different machines come back unchanged. Sets whose SKU
    repeats (two runs on one machine type) are keyed 'sku_id @ source' instead, and their machine is
    named '<CPU> from <source>', which tables, plot legends and titles show.

    Args:
        sets: one ResultSet per side, the reference first.
        sources: the folder or .jsonl each set was read from, as given; default: the folder its files share.
    Returns:
        One ResultSet per side, in input order.
    Raises:
        ValueError: a set holds several machines, or two sets were read from the same files.
    """
    sources = sources or [os.path.commonpath([str(f.parent) for f in s.files]) if s.files else "" for s in sets]
    if len(sources) != len(sets):
        raise ValueError(f"{len(sources)} sources for {len(sets)} result sets")
    seen: dict[frozenset[Path], str] = {}
    for s, src in zip(sets, sources, strict=True):
        files = frozenset(f.resolve() for f in s.files)
        if files and files in seen:
            twice = f"{src} is given twice" if src == seen[files] else f"{seen[files]} and {src} are the same folder"
            raise ValueError(f"{twice}; compare needs two different results folders")
        seen.setdefault(files, src)
    skus = [_only_sku(s) for s in sets]
    counts = Counter(skus)
    out = []
    for s, sku, src in zip(sets, skus, sources, strict=True):
        if counts[sku] == 1:
            out.append(s)
            continue
        side = f"{sku} @ {src}"
        m = s.machines[sku]
        machine = _Side(m.sku_id, m.fingerprint, m.ceilings, source=src)
        rows = [{**r, "sku_id": side, "machine_name": machine.name} for r in s.rows]
        out.append(ResultSet(rows, {side: machine}, s.files, s.torn_lines, s.excluded_contended, s.torn_notes))
    return out


@dataclass(frozen=True)
class Aligned:
    """One point key and its ok row on each side that measured it (side key, the sku id, -> row)."""

    key: str
    rows: dict[str, dict[str, Any]]

    def ratio(self, reference: str, other: str) -> float | None:
        """time on `reference` / time on `other`: how many times faster `other` is."""
        a, b = self.rows.get(reference), self.rows.get(other)
        return a["median_s"] / b["median_s"] if a and b and a.get("median_s") and b.get("median_s") else None


def align(sets: list[ResultSet]) -> tuple[list[Aligned], list[str]]:
    """Points measured (status ok) on at least two of the SKUs, matched by point key.

    Args:
        sets: one ResultSet per side, the reference first, keyed apart by label_sides() when SKUs repeat.
    Returns:
        The aligned points in the reference's order (then the others'), and the side keys (sku ids) in
        input order.
    """
    skus: list[str] = []
    for s in sets:
        sku = _only_sku(s)
        if sku in skus:
            raise ValueError(f"SKU {sku} is given twice; key the result sets apart with label_sides() first")
        skus.append(sku)
    by_key: dict[str, dict[str, dict[str, Any]]] = {}
    for sku, s in zip(skus, sets, strict=True):
        for r in s.rows:
            if r.get("status") == "ok" and r.get("median_s"):
                by_key.setdefault(r["key"], {})[sku] = r  # a later record of the same point wins
    aligned = [Aligned(k, rows) for k, rows in by_key.items() if len(rows) >= 2]
    return aligned, skus


def format_ratio_tables(aligned: list[Aligned], skus: list[str], machines: dict[str, Machine]) -> str:
    """One text table per sweep: per point and kernel, each side's time and GB/s and the ratio
    tA/tX = time on A / time on X (> 1: X is faster), then a geometric mean per kernel and one over all kernels.

    Times have 4 significant figures, in µs (ms when a table's longest time is 10 ms or more). A row
    whose working-set expression (e.g. 0.5*L2) resolves to different bytes or memory levels on the sides
    ends 'ws 512 KiB | 1 MiB' (one entry per side), and a note under the table says so.

    Args:
        aligned, skus: from align().
        machines: side key -> Machine (the sets' machines after label_sides()).
    Returns:
        The text, header lines first.
    """
    if not aligned:
        return "no point was measured on more than one of these machines"
    lines = [f"{chr(65 + i)} = {_describe(s, machines.get(s))}" for i, s in enumerate(skus)]
    if len(skus) == 2:
        ratio = "tA/tB = time on A / time on B (> 1: B is faster than A)"
    else:
        others = ", ".join(chr(66 + i) for i in range(len(skus) - 1))
        ratio = f"tA/tX = time on A / time on X, for X in {others} (> 1: X is faster than A)"
    lines.append(f"{ratio}; {len(aligned)} aligned points")
    first = [next(iter(a.rows.values())) for a in aligned]
    for (sweep,), group_rows in group_by(first, ["sweep"]).items():
        keys = {r["key"] for r in group_rows}
        group = [a for a in aligned if a.key in keys]
        lines += ["", f"sweep {sweep}", *_sweep_table(group, group_rows, skus)]
    return "\n".join(lines)


_MAX_WIDTH = 140  # characters in a table line, before the other sides' GB/s columns are left out


def _sweep_table(group: list[Aligned], group_rows: list[dict[str, Any]], skus: list[str]) -> list[str]:
    """One sweep's header, rows, geomean lines and working-set note (see format_ratio_tables)."""
    ref, others = skus[0], skus[1:]
    shown = varying_fields(group_rows, exclude=["kernel"])
    labels = [point_label(next(iter(a.rows.values())), shown, short=True) for a in group]
    label_w = max(10, *(len(x) for x in labels)) + 2
    kernels = [kernel_label(next(iter(a.rows.values()))) for a in group]
    ws = [_ws_cell(a, skus) for a in group]
    scale, unit = (1e6, "µs") if max(r["median_s"] for a in group for r in a.rows.values()) < 1e-2 else (1e3, "ms")
    # each other side's GB/s too, while the widest row stays within _MAX_WIDTH
    ws_w = max((len(w) + 2 for w in ws if w), default=0)
    side_gbps = label_w + 14 + 19 + len(others) * 26 + ws_w <= _MAX_WIDTH
    other_w = 26 if side_gbps else 17

    def side(r: dict[str, Any] | None, gbps: bool) -> str:
        if r is None:
            return f"{'-':>10}" + (f"{'-':>9}" if gbps else "")
        return f"{_sig4(r['median_s'] * scale):>10}" + (f"{r.get('gbps') or 0:9.2f}" if gbps else "")

    head = f"{'point':<{label_w}}{'kernel':<14}{'A ' + unit:>10}{'A GB/s':>9}"
    for i in range(len(others)):
        x = chr(66 + i)
        head += f"{x + ' ' + unit:>10}" + (f"{x + ' GB/s':>9}" if side_gbps else "") + f"{'tA/t' + x:>7}"
    out = [head]
    for a, label, kernel, ws_cell in zip(group, labels, kernels, ws, strict=True):
        row = f"{label:<{label_w}}{kernel:<14}{side(a.rows.get(ref), True)}"
        for other in others:
            row += side(a.rows.get(other), side_gbps) + _cell(a.ratio(ref, other))
        out.append(row + (f"  {ws_cell}" if ws_cell else ""))
    by_kernel = list(dict.fromkeys(kernels))
    subsets = [(k, [a for a, kk in zip(group, kernels, strict=True) if kk == k]) for k in by_kernel]
    for name, subset in (subsets if len(by_kernel) > 1 else []) + [("all kernels", group)]:
        geo = "".join(f"{'':{other_w - 7}}{_cell(_geomean(subset, ref, other))}" for other in others)
        out.append(f"{'geomean':<{label_w}}{name:<14}{'':19}{geo}")
    if any(ws):
        out.append(
            "note: each row compares one working_set expression, resolved per machine from its caches; "
            "'ws A | B': each side's hot set, where they differ"
        )
    return out


def _sig4(x: float) -> str:
    """4 significant figures without an exponent: 21.59, 0.1234, 345.5, 12345."""
    if x <= 0:
        return f"{x:.4g}"
    return f"{x:.{max(0, 3 - math.floor(math.log10(x)))}f}"


def _geomean(group: list[Aligned], ref: str, other: str) -> float | None:
    qs = [q for a in group if (q := a.ratio(ref, other))]
    return math.exp(sum(map(math.log, qs)) / len(qs)) if qs else None


def _cell(q: float | None) -> str:
    return f"{q:6.2f}x" if q else f"{'-':>7}"


def _ws_cell(a: Aligned, skus: list[str]) -> str:
    """'ws 512 KiB | 1 MiB' (levels added when they differ) when the sides resolved the working set apart, else ''."""
    rows = [a.rows.get(s) for s in skus]
    present = [r for r in rows if r]
    sizes = {r.get("working_set_bytes") for r in present}
    levels = {r.get("memory_level") for r in present}
    if len(sizes) < 2 and len(levels) < 2:
        return ""

    def one(r: dict[str, Any] | None) -> str:
        if r is None:
            return "-"
        n = r.get("working_set_bytes")
        text = "all rows" if n is None else format_bytes(n)
        return f"{text} {r.get('memory_level') or '?'}" if len(levels) > 1 else text

    return "ws " + " | ".join(map(one, rows))


def _describe(side: str, m: Machine | None) -> str:
    """'AMD EPYC (2 cpus) [sku-id]', plus ' from <folder>' when another side has the same SKU."""
    if m is None:
        return side
    text = f"{machine_name(m.fingerprint, m.sku_id)} [{m.sku_id}]"
    return text + (f" from {m.source}" if isinstance(m, _Side) else "")


def write_comparison(
    sets: list[ResultSet], out_dir: str | Path, *, spec_dir: str | Path = "sweeps"
) -> tuple[list[Path], list[str]]:
    """Overlaid roofline (all aligned points) and one throughput plot per sweep, written under out_dir.

    Args:
        sets: one ResultSet per side, the reference first (passed through label_sides() here).
    Returns:
        The files written and notes (roofline flags, panels left out, plots skipped and why).
    """
    sets = label_sides(sets)
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
        raise ValueError("compare needs at least two results folders (one per machine or run)")
    if args.out:
        check_output_path("--out", args.out, directory=True)
    filters = [f for part in args.filter for f in part.split(",") if f]
    sets = []
    for path in args.results:
        s = load_results(path, include_contended=not args.exclude_contended)
        rows = select(s.rows, filters)
        sets.append(ResultSet(rows, s.machines, s.files, s.torn_lines, s.excluded_contended, s.torn_notes))
    sets = label_sides(sets, list(args.results))
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
        help="the same points on several machines or runs: ratio tables and overlaid roofline / throughput plots",
        description="Align points by key across results/<sku-id>/ folders of different machines, or of runs "
        "on the same machine type (labelled by their folder then). The first folder is the reference. Prints "
        "ratio tables; with --out, writes overlaid plots (PNG and SVG). Exit status 1 when no point was "
        "measured on two sides.",
    )
    p.add_argument("results", nargs="+", metavar="RESULTS", help="results/<sku-id>/ folders, reference first")
    p.add_argument("--out", default="", metavar="DIR", help="write compare_*.png / .svg here")
    add_shared_options(p)
    p.set_defaults(func=_cmd)
