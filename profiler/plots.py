"""`dlrmbench plot RESULTS --kind roofline|throughput|speedup --out FILE`: figures from stored results.

Axes come from the sweep file's [plot] table (sweeps/<name>.toml, or the spec_file its results
header names) when it is found, else from defaults that suit the target. Plots read results/,
never run anything.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from profiler.bench_bag_cli import parse_float
from profiler.plot_roofline import DEFAULT_TOLERANCE, missing_ceilings, roofline_figure
from profiler.plot_style import save_figure
from profiler.plot_throughput import throughput_figure
from profiler.results import Machine, load_results, point_label, select, varying_fields
from profiler.speedup import format_speedup_table, speedup_figure, speedups
from profiler.sweep_spec import SweepSpec, load_spec

__all__ = ["KINDS", "PlotOutput", "add_commands", "add_shared_options", "find_spec", "make_plot", "plot_settings"]

KINDS = ("roofline", "throughput", "speedup")
_X_PREFERENCE = ("working_set", "batch_size", "num_rows", "embedding_dim", "pooling_factor", "num_tables", "threads",
                 "world_size")  # fmt: skip


@dataclass
class PlotOutput:
    """What one plot produced: files written, the printed table (speedup), notes and roofline flags."""

    paths: list[Path]
    table: str = ""
    notes: list[str] = field(default_factory=list)
    flagged: list[str] = field(default_factory=list)


def find_spec(sweep: str, spec_file: str = "", spec_dir: str | Path = "sweeps") -> SweepSpec | None:
    """The sweep's spec: the file its results header names if it still exists, else <spec_dir>/<sweep>.toml."""
    for candidate in (Path(spec_file) if spec_file else None, Path(spec_dir) / f"{sweep}.toml"):
        if candidate and candidate.is_file():
            spec = load_spec(candidate)
            if spec.name == sweep:
                return spec
    return None


def plot_settings(rows: list[dict[str, Any]], spec: SweepSpec | None) -> dict[str, Any]:
    """x, y, line, logx, logy, kinds, title: the spec's [plot] over defaults for these rows.

    Defaults: x the first varying axis of working_set, batch_size, num_rows, ..., world_size; y gbps
    for embedding_bag and all_to_all, samples_per_s for dlrm; one line per kernel (all_to_all: per
    world size, or per mode when x is the world size); log x; kinds roofline and throughput
    (embedding_bag) or throughput (dlrm, all_to_all: no FLOPs to place on a roofline), plus speedup
    when several kernels ran.
    """
    varying = varying_fields(rows, exclude=["kernel"])
    x = next((f for f in _X_PREFERENCE if f in varying), "batch_size")
    targets = {r.get("target") for r in rows}
    dlrm, collective = targets == {"dlrm"}, targets == {"all_to_all"}
    kinds = ["throughput"] if dlrm or collective else ["roofline", "throughput"]
    if len({r.get("kernel") for r in rows}) > 1:
        kinds.append("speedup")
    line = "kernel"
    if collective:
        line = "mode" if x == "world_size" or "world_size" not in varying else "world_size"
    out = {
        "x": "working_set_bytes" if x == "working_set" else x,
        "y": "samples_per_s" if dlrm else "gbps",
        "line": line,
        "logx": True,
        "logy": False,
        "kinds": kinds,
        "title": "",
    }
    out.update(spec.plot if spec else {})
    if out["x"] == "working_set":
        out["x"] = "working_set_bytes"
    return out


def make_plot(
    kind: str,
    rows: list[dict[str, Any]],
    machines: dict[str, Machine],
    out: str | Path,
    *,
    settings: dict[str, Any] | None = None,
    labels: bool = False,
    baseline: str = "torch",
    tolerance: float = DEFAULT_TOLERANCE,
) -> PlotOutput:
    """Draw one kind of plot from rows and write it (PNG and SVG, or the one format `out` names).

    Args:
        kind: roofline, throughput or speedup.
        rows: flat rows (profiler.results).
        machines: sku_id -> Machine.
        out: output path, with or without suffix.
        settings: plot_settings() of the rows (x, y, line, logx, logy, title); defaults when None.
        labels: roofline: label each point.
        baseline: speedup: the kernel to divide by.
        tolerance: roofline: fraction above its roof at which a point is flagged.
    """
    if kind not in KINDS:
        raise ValueError(f"--kind {kind!r}; allowed: {', '.join(KINDS)}")
    s = settings or plot_settings(rows, None)
    title = str(s.get("title") or "")
    result = PlotOutput([])
    if kind == "roofline":
        fig, flagged = roofline_figure(rows, machines, labels=labels, title=title, tolerance=tolerance)
        result.notes = [
            f"{sku} has no measured ceilings: the roofline shows its points without roofs; "
            f"run `dlrmbench machine --ceilings` on that machine"
            for sku in missing_ceilings([r for r in rows if r.get("status") == "ok"], machines)
        ]
        axes = varying_fields(rows, exclude=["kernel"])
        result.flagged = [
            f"{f.row['kernel']} {point_label(f.row, axes, short=True)} ({f.row['sweep']}, point {f.row['key']}): "
            f"{f.row['gflops']:.3g} GFLOP/s is {f.ratio:.2f}x its roof {f.roof_gflops:.3g} GFLOP/s ({f.ceiling}): "
            f"{f.cause}"
            for f in flagged
        ]
    elif kind == "throughput":
        fig, result.notes = throughput_figure(
            rows, machines, x=s["x"], y=s["y"], line=s.get("line", "kernel"),
            logx=bool(s.get("logx", True)), logy=bool(s.get("logy", False)), title=title,
        )  # fmt: skip
    else:
        table = speedups(rows, baseline)
        result.table = format_speedup_table(table)
        fig = speedup_figure(table, title=title)
    result.paths = save_figure(fig, out)
    return result


def _one_sweep(rows: list[dict[str, Any]], sweep: str, kind: str) -> list[dict[str, Any]]:
    names = list(dict.fromkeys(r["sweep"] for r in rows))
    if sweep:
        if sweep not in names:
            raise ValueError(f"--sweep {sweep!r} is not in these results; sweeps here: {', '.join(names)}")
        return [r for r in rows if r["sweep"] == sweep]
    if kind == "throughput" and len(names) > 1:
        raise ValueError(f"a throughput plot shows one sweep; choose one with --sweep: {', '.join(names)}")
    return rows


def _cmd(args: argparse.Namespace) -> int:
    results = load_results(args.results, include_contended=not args.exclude_contended)
    rows = _one_sweep(select(results.rows, [f for part in args.filter for f in part.split(",") if f]),
                      args.sweep, args.kind)  # fmt: skip
    if not rows:
        if results.rows:
            raise ValueError(f"{args.results}: no points left after --filter")
        excluded = f" ({results.excluded_contended} contended, excluded)" if results.excluded_contended else ""
        raise ValueError(f"{args.results}: no measured (status ok) points{excluded}")
    first = rows[0]
    single = len({r["sweep"] for r in rows}) == 1
    spec = find_spec(first["sweep"], first.get("spec_file", ""), args.spec_dir) if single else None
    settings = plot_settings(rows, spec)
    settings.update({k: v for k, v in (("x", args.x), ("y", args.y)) if v})
    if args.logy:
        settings["logy"] = True
    out = make_plot(args.kind, rows, results.machines, args.out, settings=settings, labels=args.labels,
                    baseline=args.baseline, tolerance=args.tolerance)  # fmt: skip
    if out.table:
        print(out.table)
    for line in out.flagged:
        print(f"warning: {line}", file=sys.stderr)
    for note in out.notes:
        print(f"note: {note}", file=sys.stderr)
    if results.torn_lines:
        print(f"note: skipped {results.torn_summary()}", file=sys.stderr)
    if results.excluded_contended:
        print(f"note: left out {results.excluded_contended} contended point(s)", file=sys.stderr)
    print("wrote " + ", ".join(map(str, out.paths)))
    return 0


def add_shared_options(p: argparse.ArgumentParser) -> None:
    """Options every results-reading command takes: --filter, --exclude-contended, --spec-dir."""
    p.add_argument("--filter", action="append", default=[], metavar="KEY=VALUE[,KEY=VALUE]",
                   help="keep only points whose field equals the value (repeatable)")  # fmt: skip
    p.add_argument("--exclude-contended", action="store_true", help="leave out points measured under contention")
    p.add_argument("--spec-dir", default="sweeps", metavar="DIR", help="where sweep files are looked up by name")


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot",
        help="roofline, throughput or speedup figure from stored results (PNG and SVG)",
        description="Draw a figure from a results folder (results/<sku-id>/) or one .jsonl file. Nothing is "
        "measured. --out without a suffix writes both FILE.png and FILE.svg.",
    )
    p.add_argument("results", metavar="RESULTS", help="results/<sku-id>/ folder or a .jsonl file")
    p.add_argument("--kind", required=True, choices=KINDS)
    p.add_argument("--out", required=True, metavar="FILE", help="FILE.png, FILE.svg, or FILE (both)")
    p.add_argument("--sweep", default="", help="plot only this sweep's points")
    p.add_argument("--x", default="", help="x-axis field (default: the sweep file's [plot] x)")
    p.add_argument("--y", default="", help="y metric: gbps, gflops, lookups_per_s, samples_per_s, median_s, ...")
    p.add_argument("--logy", action="store_true", help="throughput: log y axis (default: the sweep file's logy)")
    p.add_argument("--labels", action="store_true", help="roofline: label each point with its varying fields")
    p.add_argument("--baseline", default="torch", help="speedup: the kernel to divide by (default torch)")
    p.add_argument("--tolerance", type=parse_float(0), default=DEFAULT_TOLERANCE,
                   help="roofline: flag points more than this fraction above their roof (default 0.05)")  # fmt: skip
    add_shared_options(p)
    p.set_defaults(func=_cmd)
