"""The roofline: arithmetic intensity vs achieved GFLOP/s, under the machine's measured ceilings.

A point doing F FLOPs and moving Q bytes in t seconds sits at x = F / Q (FLOP/byte) and
y = F / t / 1e9 (GFLOP/s). A bandwidth ceiling of W GB/s is the diagonal y = W x (a kernel
moving bytes at W GB/s reaches W x GFLOP/s at intensity x); a compute ceiling of P GFLOP/s is
the horizontal y = P. Attainable performance is the lowest roof above a point. Embedding-bag
(x ~ 0.2) sits on its bandwidth roof; MLP GEMMs (x in the tens) near the compute roof.

Each point is judged against the ceiling the runner picked for it (derived.ceiling). A point
above that roof by more than a tolerance cannot be a measurement: its bytes or FLOPs are
miscounted (or the ceiling was mismeasured), so it is flagged as an accounting error.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from profiler.ceilings import Ceiling
from profiler.plot_style import (
    AXIS_NAMES,
    SHARED_TINT,
    color,
    group_equal,
    kernel_styles,
    machine_tags,
    marker,
    new_figure,
    roof_color,
    roof_key,
)
from profiler.results import Machine, group_by, point_label, shared_label, threads_of, varying_fields

__all__ = [
    "DEFAULT_TOLERANCE",
    "RoofCheck",
    "above_roof",
    "missing_ceilings",
    "point_roof_gflops",
    "roofline_figure",
    "roofs_for",
]

DEFAULT_TOLERANCE = 0.05  # a point within 5% of its roof is measurement noise, not an accounting error
_LEVELS = ("L1d", "L2", "L3", "DRAM")


@dataclass(frozen=True)
class RoofCheck:
    """A point above its roof: where it sits and the roof it breaks."""

    row: dict[str, Any]
    roof_gflops: float
    ceiling: str
    roof_contended: bool = False  # the ceiling itself was measured while a neighbour competed

    @property
    def ratio(self) -> float:
        return float(self.row["gflops"]) / self.roof_gflops

    @property
    def cause(self) -> str:
        if self.roof_contended:
            return "its roof was measured under contention, so it is low: re-measure it (dlrmbench machine --ceilings)"
        return "accounting error (bytes or FLOPs miscounted, or the roof mismeasured)"


def _devices_match(ceiling_device: str, row_device: str) -> bool:
    return ceiling_device.split(":")[0] == str(row_device).split(":")[0]


def point_roof_gflops(row: dict[str, Any], machine: Machine | None) -> tuple[float, str] | None:
    """The roof over one point, in GFLOP/s at its intensity, and the ceiling key it comes from.

    Args:
        row: a flat result row with arithmetic_intensity and derived ceiling / ceiling_value.
        machine: its machine (for the ceiling's kind); without it, dlrm points count as compute-bound.
    Returns:
        (roof GFLOP/s, ceiling key), or None when the point has no ceiling.
    """
    key, value, ai = row.get("ceiling"), row.get("ceiling_value"), row.get("arithmetic_intensity")
    if not key or not value or ai is None:
        return None
    found = next((c for c in (machine.ceilings if machine else ()) if c.key == key), None)
    kind = found.kind if found else ("compute" if row.get("target") == "dlrm" else "bandwidth")
    return (float(value) if kind == "compute" else float(value) * float(ai)), str(key)


def above_roof(
    rows: list[dict[str, Any]], machines: dict[str, Machine], *, tolerance: float = DEFAULT_TOLERANCE
) -> list[RoofCheck]:
    """Points whose GFLOP/s exceeds their own roof by more than `tolerance` (a fraction): accounting errors."""
    flagged = []
    for r in rows:
        machine = machines.get(r.get("sku_id", ""))
        roof = point_roof_gflops(r, machine)
        if roof and r.get("gflops") is not None and float(r["gflops"]) > roof[0] * (1 + tolerance):
            ceiling = next((c for c in (machine.ceilings if machine else ()) if c.key == roof[1]), None)
            flagged.append(RoofCheck(r, roof[0], roof[1], bool(ceiling and ceiling.contended)))
    return flagged


def _threads(row: dict[str, Any]) -> int:
    return threads_of(row) or 1


def _nearest(cands: list[Ceiling], threads: int) -> list[Ceiling]:
    """The candidates measured at the thread count nearest `threads` (the higher one on a tie)."""
    if not cands:
        return []
    t = min({c.threads for c in cands}, key=lambda n: (abs(n - threads), -n))
    return [c for c in cands if c.threads == t]


def roofs_for(machine: Machine, rows: list[dict[str, Any]]) -> list[Ceiling]:
    """The ceilings worth drawing for these points: per memory level the triad roof (and DRAM gather),
    the best float32 GEMM, the derived peaks, and every ceiling a point was judged against. Measured
    roofs are taken at each thread count the points ran at (the nearest one the machine measured)."""
    devices = {str(r.get("device", "cpu")) for r in rows} or {"cpu"}
    pool = [c for c in machine.ceilings if any(_devices_match(c.device, d) for d in devices)]
    measured = [c for c in pool if c.source == "measured"]
    chosen: list[Ceiling] = []
    for t in sorted({_threads(r) for r in rows}) or [1]:
        for level in _LEVELS:
            chosen += _nearest(
                [c for c in measured if c.kind == "bandwidth" and c.level == level and c.name == "triad"], t
            )
        chosen += _nearest([c for c in measured if c.name == "gather"], t)
        gemms = _nearest([c for c in measured if c.kind == "compute" and c.dtype == "float32"], t)
        chosen += [max(gemms, key=lambda c: c.value)] if gemms else []
    chosen += [c for c in measured if c.kind == "bandwidth" and not c.device.startswith("cpu")]
    chosen += [c for c in pool if c.source == "derived" and c.dtype == "float32"]
    used = {r.get("ceiling") for r in rows}
    chosen += [c for c in machine.ceilings if c.key in used]
    return list({c.key: c for c in chosen}.values())


def _roof_label(c: Ceiling) -> str:
    where = c.level or c.dtype
    unit = f"{c.value:.0f} GB/s" if c.kind == "bandwidth" else f"{c.value:.0f} GFLOP/s"
    extra = f" D{c.shape[1]}" if c.name == "gather" and len(c.shape) > 1 else ""
    return f"{c.name}{extra} {where} {c.threads}t: {unit}" + (" (derived)" if c.source == "derived" else "")


def _draw_roofs(
    ax: Any, roofs: list[Ceiling], x_lo: float, x_hi: float, tint: str | None, sku: str, *, by_threads: bool = False
) -> None:
    # Memory roofs bend at the measured compute roof: a derived peak is drawn (dashed) but is not
    # what the machine reached, so it does not lift the roofs (it does only where none was measured).
    # With points at several thread counts (by_threads), each memory roof bends at the compute roof
    # of its own thread count, and the labels on the plot name the count.
    measured_top = [c.value for c in roofs if c.kind == "compute" and c.source == "measured"]
    top = max(measured_top or [c.value for c in roofs if c.kind == "compute"], default=None)
    tops: dict[int, float] = {}
    for c in roofs if by_threads else []:
        if c.kind == "compute" and c.source == "measured":
            tops[c.threads] = max(tops.get(c.threads, 0.0), c.value)
    xs = [x_lo * (x_hi / x_lo) ** (i / 64) for i in range(65)]
    for i, c in enumerate(ordered := sorted(roofs, key=lambda c: (c.kind, -c.value))):
        style = "--" if c.source == "derived" else "-"
        col = tint or roof_color(i, len(ordered))
        label = (sku + ": " if sku else "") + _roof_label(c)
        tag = f"{sku} " if sku else ""
        count = f" {c.threads}t" if by_threads else ""
        if c.kind == "compute":
            ax.plot([x_lo, x_hi], [c.value, c.value], style, color=col, lw=1.2, alpha=0.8, label=label)
            ax.annotate(f"{tag}{c.name} {c.dtype}{count}", (x_hi, c.value), xytext=(-3, 2),
                        textcoords="offset points", fontsize=6, color=col, ha="right")  # fmt: skip
        else:
            bend = tops.get(c.threads, top)
            knee = bend / c.value if bend else None  # where the slanted roof meets the flat one: drawn exactly
            line_xs = sorted({*xs, knee}) if knee and x_lo < knee < x_hi else xs
            ys = [min(c.value * x, bend) if bend else c.value * x for x in line_xs]
            ax.plot(line_xs, ys, style, color=col, lw=1.2, alpha=0.8, label=label)
            name = f"{c.name} {c.level}" if c.name != "triad" else c.level
            ax.annotate(f"{tag}{name}{count}", (line_xs[2], ys[2]), xytext=(0, 3), textcoords="offset points",
                        fontsize=6, color=col)  # fmt: skip


def missing_ceilings(rows: list[dict[str, Any]], machines: dict[str, Machine]) -> list[str]:
    """SKU ids among `rows` whose machine has no ceilings (no machine.json, or one without --ceilings)."""
    skus = dict.fromkeys(r["sku_id"] for r in rows)
    return [s for s in skus if not (machines.get(s) and machines[s].ceilings)]


def roofline_figure(
    rows: list[dict[str, Any]],
    machines: dict[str, Machine],
    *,
    labels: bool = False,
    title: str = "",
    tolerance: float = DEFAULT_TOLERANCE,
) -> tuple[Figure, list[RoofCheck]]:
    """Log-log roofline of the ok points, one colour and marker per kernel, the machine's roofs as lines.

    With several machines (compare), colours mark the machine and each machine's roofs take its colour.
    With points at several thread counts, markers mark the thread count and roofs are drawn per count.

    Args:
        rows: flat rows (failed ones and those without FLOPs are skipped).
        machines: sku_id -> Machine, for the ceilings.
        labels: annotate each point with the fields that vary between points.
        title: figure title (default: "Roofline: <machine names>").
        tolerance: fraction above its roof at which a point is flagged (drawn with a red edge).
    Returns:
        The figure and the flagged points.
    """
    pts = [r for r in rows if r.get("status") == "ok" and r.get("gflops") and r.get("arithmetic_intensity")]
    if not pts:
        raise ValueError("no ok points with FLOPs and bytes to place on a roofline")
    flagged = above_roof(pts, machines, tolerance=tolerance)
    skus = list(dict.fromkeys(r["sku_id"] for r in pts))
    kernels = list(dict.fromkeys(r["kernel"] for r in pts))
    multi = len(skus) > 1
    styles = kernel_styles(kernels)
    threads = sorted({_threads(r) for r in pts})
    by_threads = len(threads) > 1 and not multi  # with several machines, colour is the machine, marker the kernel
    tags, names = machine_tags(skus, {s: m.name for s, m in machines.items()})
    fig, (ax,) = new_figure(panel_in=(11.0, 6.0))
    ais = [float(r["arithmetic_intensity"]) for r in pts]
    x_lo, x_hi = min(ais) / 10, max(max(ais) * 10, 100.0)
    drawn: dict[str, tuple[list[Ceiling], bool]] = {}  # sku -> its roofs, and whether per thread count
    for sku in skus:
        m = machines.get(sku)
        if m and m.ceilings:
            sku_rows = [r for r in pts if r["sku_id"] == sku]
            drawn[sku] = (roofs_for(m, sku_rows), len({_threads(r) for r in sku_rows}) > 1)
    keys = {sku: (sorted(roof_key(c) for c in roofs), split) for sku, (roofs, split) in drawn.items()}
    for group in group_equal(keys):  # machines with the very same roofs share one set of lines
        roofs, split = drawn[group[0]]
        tint = (color(skus.index(group[0])) if len(group) == 1 else SHARED_TINT) if multi else None
        _draw_roofs(ax, roofs, x_lo, x_hi, tint, ", ".join(tags[s] for s in group), by_threads=split)
    bare = missing_ceilings(pts, machines)
    if bare:  # points without roofs read as a finished roofline unless the figure says otherwise
        who = ", ".join(tags[s] for s in bare) if multi else "this machine"
        ax.text(0.01, 0.99, f"no measured ceilings for {who}: roofs not drawn (dlrmbench machine --ceilings)",
                transform=ax.transAxes, va="top", fontsize=8, color="firebrick")  # fmt: skip
    shown = {sweep: varying_fields(group, exclude=["kernel"]) for (sweep,), group in group_by(pts, ["sweep"]).items()}
    proxies: list[Any] = []  # by_threads: legend entries for colour = kernel and marker = thread count
    for s, sku in enumerate(skus):
        for kernel in kernels:
            for t in threads:
                group = [r for r in pts if r["sku_id"] == sku and r["kernel"] == kernel and _threads(r) == t]
                if not group:
                    continue
                name = f"{tags[sku]}: {kernel}" if multi else kernel
                col = color(s) if multi else styles[kernel][0]
                shape = marker(threads.index(t)) if by_threads else styles[kernel][1]
                ax.scatter(
                    [r["arithmetic_intensity"] for r in group], [r["gflops"] for r in group], marker=shape,
                    s=46, color=col, edgecolors="black", linewidths=0.5, zorder=3,
                    label="_nolegend_" if by_threads else name, gid=f"{kernel} {t}t",
                )  # fmt: skip
                slowed = [r for r in group if r.get("contended")]  # hollowed: a neighbour competed for the CPUs
                if slowed:
                    ax.scatter([r["arithmetic_intensity"] for r in slowed], [r["gflops"] for r in slowed],
                               marker=shape, s=26, color="white", zorder=3.5,
                               gid=f"{kernel} {t}t contended")  # fmt: skip
                for r in group if labels else []:
                    text = point_label(r, shown[r["sweep"]], short=True)
                    ax.annotate(text, (r["arithmetic_intensity"], r["gflops"]), fontsize=7, xytext=(4, 3),
                                textcoords="offset points")  # fmt: skip
    if any(r.get("contended") for r in pts):
        proxies.append(Line2D([], [], ls="none", marker="o", color="white", markeredgecolor="black",
                              label="hollow: measured under contention"))  # fmt: skip
    if by_threads:
        proxies = [Patch(facecolor=styles[k][0], edgecolor="black", lw=0.5, label=k) for k in kernels] + proxies
        proxies += [Line2D([], [], ls="none", marker=marker(i), color="gray", markeredgecolor="black",
                           label=f"{t} thread" + ("s" if t != 1 else "")) for i, t in enumerate(threads)]  # fmt: skip
    if flagged:
        ax.scatter([f.row["arithmetic_intensity"] for f in flagged], [f.row["gflops"] for f in flagged], s=150,
                   marker="o", facecolors="none", edgecolors="red", linewidths=1.8, zorder=4,
                   label=f"above its roof (> {tolerance:.0%})")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_lo, x_hi)
    ax.set_xlabel(AXIS_NAMES["arithmetic_intensity"])
    ax.set_ylabel("achieved performance (GFLOP/s)")
    ax.set_title(title or f"Roofline: {names}\n{shared_label(rows)}", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    handles, names_ = ax.get_legend_handles_labels()
    ax.legend(handles + proxies, names_ + [p.get_label() for p in proxies], fontsize=7, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), framealpha=0.85)  # fmt: skip
    return fig, flagged
