"""Kernel vs kernel: per point, the speedup of each kernel over a baseline kernel, as a table and a figure.

Points are aligned on every Point field except the kernel (and the sweep name), per machine, so
a kernel is only ever compared with the baseline at the very same batch, table, dim, pooling and
working set. speedup = baseline median time / kernel median time (> 1: faster than the baseline).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from matplotlib import colormaps
from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

from profiler.plot_style import kernel_styles, new_figure
from profiler.results import POINT_FIELDS, point_label, varying_fields

__all__ = ["SpeedupTable", "format_speedup_table", "speedup_figure", "speedups"]

_ALIGN = tuple(f for f in POINT_FIELDS if f not in ("kernel", "sweep"))
_MAX_BARS = 48  # points x kernels beyond which a heat map reads better than bars


@dataclass(frozen=True)
class SpeedupTable:
    """Rows are points (labelled by the fields that vary), columns kernels; None where either side failed."""

    baseline: str
    kernels: list[str]
    labels: list[str]
    values: dict[tuple[str, str], float | None]  # (label, kernel) -> speedup
    missing: dict[tuple[str, str], str] = field(default_factory=dict)  # (label, kernel) -> why no value

    def why_missing(self, label: str, kernel: str) -> str:
        """Why a point has no speedup: 'failed', 'baseline failed', 'not run' or 'no baseline'."""
        return self.missing.get((label, kernel), "failed")

    def geomean(self, kernel: str) -> float | None:
        """Geometric mean speedup of `kernel` over the points where it and the baseline both ran."""
        vals = [v for (_, k), v in self.values.items() if k == kernel and v]
        return math.exp(sum(math.log(v) for v in vals) / len(vals)) if vals else None


def speedups(rows: list[dict[str, Any]], baseline: str = "torch") -> SpeedupTable:
    """Speedup of every kernel over `baseline` at each point.

    Args:
        rows: flat rows (one machine, or several: the machine then becomes part of the label).
        baseline: the kernel to divide by.
    Returns:
        A SpeedupTable; a point whose baseline or kernel failed gets None.
    """
    kernels = list(dict.fromkeys(r["kernel"] for r in rows))
    if baseline not in kernels:
        raise ValueError(f"baseline kernel {baseline!r} is not in these results; kernels here: {', '.join(kernels)}")
    align = (*_ALIGN, "sku_id")
    shown = varying_fields(rows, exclude=["kernel"]) + (
        ["machine_name"] if len({r["sku_id"] for r in rows}) > 1 else []
    )
    times: dict[tuple[Any, ...], dict[str, float | None]] = {}
    labels: dict[tuple[Any, ...], str] = {}
    for r in rows:  # later records of the same point (a --force re-run) replace earlier ones
        key = tuple(r.get(f) for f in align)
        ok = r.get("status") == "ok" and r.get("median_s")
        times.setdefault(key, {})[r["kernel"]] = float(r["median_s"]) if ok else None
        labels[key] = point_label(r, shown, short=not shown)
    values: dict[tuple[str, str], float | None] = {}
    missing: dict[tuple[str, str], str] = {}
    for key, by_kernel in times.items():
        base = by_kernel.get(baseline)
        for k in kernels:
            t = by_kernel.get(k)
            values[(labels[key], k)] = base / t if base and t else None
            if not (base and t):
                missing[(labels[key], k)] = (
                    "not run" if k not in by_kernel else "failed" if not t
                    else "no baseline" if baseline not in by_kernel else "baseline failed"
                )  # fmt: skip
    return SpeedupTable(baseline, kernels, list(dict.fromkeys(labels.values())), values, missing)


def format_speedup_table(table: SpeedupTable) -> str:
    """A fixed-width text table: one row per point, one column per kernel, and a geometric-mean row."""
    width = max(12, *(len(k) + 2 for k in table.kernels))
    label_w = max(len("geomean"), *(len(label) for label in table.labels)) + 2

    def cell(v: float | None) -> str:
        return f"{v:{width}.2f}x" if v else f"{'-':>{width + 1}}"

    lines = [f"speedup over {table.baseline} (baseline time / kernel time; > 1 is faster)"]
    lines.append(f"{'point':<{label_w}}" + "".join(f"{k:>{width + 1}}" for k in table.kernels))
    for label in table.labels:
        lines.append(f"{label:<{label_w}}" + "".join(cell(table.values.get((label, k))) for k in table.kernels))
    lines.append(f"{'geomean':<{label_w}}" + "".join(cell(table.geomean(k)) for k in table.kernels))
    return "\n".join(lines)


def speedup_figure(table: SpeedupTable, *, title: str = "") -> Figure:
    """Grouped bars (point on x, one bar per kernel) for small tables, a heat map for large ones."""
    others = [k for k in table.kernels if k != table.baseline]
    if not others:
        raise ValueError(f"only the baseline kernel {table.baseline!r} is present; nothing to compare it with")
    title = title or f"Speedup over {table.baseline} (baseline time / kernel time)"
    n = len(table.labels)
    styles = kernel_styles(table.kernels)
    if n * len(others) <= _MAX_BARS:
        fig, (ax,) = new_figure(panel_in=(max(7.0, 0.9 * n * max(1, len(others)) ** 0.5 + 3), 5.0))
        w = 0.8 / len(others)
        # a log axis with bars from 1: 2x faster and 2x slower stand equally far from the baseline
        values = [v for v in table.values.values() if v]
        lo, hi = min([0.5, *values]) / 1.25, max([2.0, *values]) * 1.25
        stub = (hi / lo) ** 0.06  # a failed point's stub: 6% of the axis up from 1
        for j, k in enumerate(others):
            xs = [i + (j - (len(others) - 1) / 2) * w for i in range(n)]
            ys = [table.values.get((label, k)) for label in table.labels]
            ok = [(x, y) for x, y in zip(xs, ys, strict=True) if y]
            col = styles[k][0]
            if ok:
                ax.bar([x for x, _ in ok], [y - 1.0 for _, y in ok], w, bottom=1.0, color=col, label=k)
            for x, y, label in zip(xs, ys, table.labels, strict=True):
                if y:
                    continue
                # a failed point is no bar at all: a hatched, unfilled stub at the baseline saying why
                ax.bar(x, stub - 1.0, w, bottom=1.0, fill=False, edgecolor=col, hatch="//", lw=0.8,
                       label="_nolegend_" if ok else k, gid="failed")  # fmt: skip
                ax.text(x, stub * 1.02, table.why_missing(label, k), rotation=90, ha="center", va="bottom",
                        fontsize=7, color=col)  # fmt: skip
        ax.set_yscale("log")
        ax.set_ylim(lo, hi)
        ticks = [2.0**e for e in range(math.floor(math.log2(lo)), math.ceil(math.log2(hi)) + 1)]
        ax.yaxis.set_major_locator(FixedLocator(ticks))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}x"))
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.axhline(1.0, color="black", lw=0.8, ls="--")
        ax.set_xticks(range(n), table.labels, rotation=30 if n > 3 else 0, ha="right" if n > 3 else "center",
                      fontsize=8)  # fmt: skip
        ax.set_ylabel(f"speedup over {table.baseline} (log scale; > 1x: faster than {table.baseline})")
        ax.set_xlabel("point")
        ax.legend(fontsize=8)
        ax.grid(True, axis="y", alpha=0.3)
    else:
        fig, (ax,) = new_figure(panel_in=(1.2 * len(others) + 5, 0.28 * n + 2.0))
        logs = [[math.log2(v) if (v := table.values.get((label, k))) else math.nan for k in others]
                for label in table.labels]  # fmt: skip
        grid = np.ma.masked_invalid(np.array(logs, dtype=float))  # (points, kernels); failed cells masked
        lim = max(1.0, float(np.abs(grid).max()) if grid.count() else 0.0)
        cmap = colormaps["RdBu"].with_extremes(bad="lightgray")  # a failed cell is grey, not "no change"
        im = ax.imshow(grid, cmap=cmap, vmin=-lim, vmax=lim, aspect="auto")
        ax.set_xticks(range(len(others)), others, rotation=30, ha="right", fontsize=8)
        ax.set_yticks(range(n), table.labels, fontsize=7)
        for i, label in enumerate(table.labels):
            for j, k in enumerate(others):
                v = table.values.get((label, k))
                ax.text(j, i, f"{v:.2f}" if v else table.why_missing(label, k), ha="center", va="center",
                        fontsize=6)  # fmt: skip
        fig.colorbar(im, ax=ax, label=f"log2 speedup over {table.baseline} (> 0: faster; grey: no value)")
    ax.set_title(title)
    return fig
