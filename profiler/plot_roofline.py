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

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from matplotlib.colors import to_hex, to_rgb
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from profiler.ceilings import Ceiling, below_measured
from profiler.plot_style import (
    AXIS_NAMES,
    COMPUTE_ROOF_COLOR,
    LABEL_BOX,
    LEVELS,
    SHARED_TINT,
    UNPLACED,
    color,
    format_bytes,
    group_equal,
    kernel_styles,
    level_color,
    level_marker,
    machine_tags,
    new_figure,
    roof_color,
    roof_key,
    stack_legends,
    unstack_labels,
)
from profiler.results import Machine, group_by, point_label, shared_label, threads_of, varying_fields
from profiler.sweep_spec import level_of

__all__ = [
    "DEFAULT_TOLERANCE",
    "RoofCheck",
    "above_roof",
    "dodge_factors",
    "missing_ceilings",
    "point_level",
    "point_roof_gflops",
    "roofline_figure",
    "roofs_for",
]

DEFAULT_TOLERANCE = 0.05  # a point within 5% of its roof is measurement noise, not an accounting error


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
        for level in LEVELS:
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


def _roof_label(c: Ceiling, drawn: Iterable[Ceiling] = ()) -> str:
    """'triad L1d 1t: 200 GB/s'; a derived peak says '(derived)', and why where it sits below a measured roof
    drawn beside it (`drawn`): the clock it was computed at (on a VM the nominal one) or its width is low."""
    where = c.level or c.dtype
    unit = f"{c.value:.0f} GB/s" if c.kind == "bandwidth" else f"{c.value:.0f} GFLOP/s"
    extra = f" D{c.row_dim}" if c.row_dim is not None else ""
    label = f"{c.name}{extra} {where} {c.threads}t: {unit}"
    if c.source != "derived":
        return label
    over = below_measured(c, drawn) if c.kind == "compute" else None
    if over is None:
        return label + " (derived)"
    low = "its clock or assumed width is low" if "assumed" in c.method else "the cores run faster than its clock"
    # two lines: on one, the legend's width squeezed the axes and clipped the x label
    return label + f" (derived;\nbelow measured {over.name} {over.threads}t {over.value:.0f}: {low})"


def _lighter(col: str, frac: float) -> str:
    r, g, b = to_rgb(col)
    return to_hex((r + (1 - r) * frac, g + (1 - g) * frac, b + (1 - b) * frac))


@dataclass(frozen=True)
class _Drawn:
    """A roof as drawn: its colour and the compute roof it bends at (None: it does not bend)."""

    ceiling: Ceiling
    color: str
    style: str
    bend: float | None

    def at(self, ai: float) -> float:
        c = self.ceiling
        if c.kind == "compute":
            return c.value
        return min(c.value * ai, self.bend) if self.bend else c.value * ai


def _bends(roofs: list[Ceiling], by_threads: bool) -> dict[str, Ceiling]:
    # Memory roofs bend at the measured compute roof: a derived peak is drawn (dashed) but is not
    # what the machine reached, so it does not lift the roofs (it does only where none was measured).
    # With points at several thread counts (by_threads), each memory roof bends at the compute roof
    # of its own thread count.
    compute = [c for c in roofs if c.kind == "compute"]
    measured = [c for c in compute if c.source == "measured"]
    top = max(measured or compute, key=lambda c: c.value, default=None)
    bends = {}
    for c in roofs:
        own = [m for m in measured if m.threads == c.threads] if by_threads else []
        bend = max(own, key=lambda m: m.value) if own else top
        if c.kind != "compute" and bend:
            bends[c.key] = bend
    return bends


def _draw_roofs(
    ax: Any, per_sku: dict[str, tuple[list[Ceiling], bool]], skus: list[str], tags: dict[str, str], x_lo: float,
    x_hi: float,
) -> tuple[dict[str, dict[str, _Drawn]], list[list[Any]]]:  # fmt: skip
    """Each machine's roofs (sku -> its roofs, and whether per thread count), drawn once per group of machines
    that agree on a roof: the same roof_key (the rule the throughput plot shares its lines by) and, for a
    memory roof, the same compute roof it bends at. Returns sku -> ceiling key -> the line it is drawn as,
    and the labels written on the plot in two columns (memory roofs at the left edge, compute at the right)."""
    # One machine: a memory roof takes its level's colour (the colour its points' level legend shows),
    # gather roofs dash-dotted beside the triad of the same level; compute roofs are grey; with points at
    # several thread counts the labels on the plot name the count, and fewer threads draw lighter.
    # Several: a roof one machine alone has takes that machine's colour, one several share SHARED_TINT,
    # and its label names all of them ('A, B L1d').
    multi = len(skus) > 1
    bends = {sku: _bends(roofs, split) for sku, (roofs, split) in per_sku.items()}
    ceiling = {(sku, c.key): c for sku, (roofs, _split) in per_sku.items() for c in roofs}
    keys = {(sku, key): (roof_key(c), roof_key(b) if (b := bends[sku].get(key)) else None)
            for (sku, key), c in ceiling.items()}  # fmt: skip
    groups = sorted(group_equal(keys), key=lambda g: (ceiling[g[0]].kind, -ceiling[g[0]].value))
    xs = [x_lo * (x_hi / x_lo) ** (i / 64) for i in range(65)]
    drawn: dict[str, dict[str, _Drawn]] = {}
    memory_labels: list[Any] = []
    compute_labels: list[Any] = []
    for i, group in enumerate(groups):
        c, who = ceiling[group[0]], list(dict.fromkeys(sku for sku, _key in group))
        by_threads = any(per_sku[sku][1] for sku in who)
        counts = sorted({r.threads for r in per_sku[who[0]][0]})
        style = "--" if c.source == "derived" else "-." if c.name == "gather" else "-"
        if multi:
            col = SHARED_TINT if len(who) > 1 else color(skus.index(who[0]))
        elif c.kind == "compute":
            col = COMPUTE_ROOF_COLOR
        else:
            col = level_color(c.level) if c.level in LEVELS else roof_color(i, len(groups))
        if by_threads and not multi and len(counts) > 1:
            col = _lighter(col, 0.5 * (1 - counts.index(c.threads) / (len(counts) - 1)))
        sku_tag = ", ".join(tags[sku] for sku in who)
        label = (sku_tag + ": " if sku_tag else "") + _roof_label(c, per_sku[who[0]][0])
        tag = f"{sku_tag} " if sku_tag else ""
        count = f" {c.threads}t" if by_threads else ""
        if c.kind == "compute":
            ax.plot([x_lo, x_hi], [c.value, c.value], style, color=col, lw=1.2, alpha=0.8, label=label)
            text = ax.annotate(f"{tag}{c.name} {c.dtype}{count}", (x_hi, c.value), xytext=(-3, 2),
                               textcoords="offset points", fontsize=6, color=col, ha="right",
                               bbox=LABEL_BOX)  # fmt: skip
            compute_labels.append(text)
            line = _Drawn(c, col, style, None)
        else:
            bend = b.value if (b := bends[who[0]].get(c.key)) else None
            knee = bend / c.value if bend else None  # where the slanted roof meets the flat one: drawn exactly
            line_xs = sorted({*xs, knee}) if knee and x_lo < knee < x_hi else xs
            ys = [min(c.value * x, bend) if bend else c.value * x for x in line_xs]
            ax.plot(line_xs, ys, style, color=col, lw=1.2, alpha=0.8, label=label)
            name = f"{c.name} {c.level}" if c.name != "triad" else c.level
            text = ax.annotate(f"{tag}{name}{count}", (line_xs[2], ys[2]), xytext=(0, 3), textcoords="offset points",
                               fontsize=6, color=col, bbox=LABEL_BOX)  # fmt: skip
            memory_labels.append(text)
            line = _Drawn(c, col, style, bend)
        for sku, key in group:
            drawn.setdefault(sku, {})[key] = line
    return drawn, [memory_labels, compute_labels]


def point_level(row: dict[str, Any], machine: Machine | None) -> str:
    """The memory level a point's hot set was placed in, for its marker on the roofline.

    The runner records it (memory_level: by the working set, or by the whole tables where the point has no
    working set, e.g. dlrm or a num_rows sweep). A row without one (an older record) is placed here by the
    same rule from its hot-set bytes (working_set_bytes, else table_bytes) and its machine's cache sizes;
    without cache sizes it is UNPLACED rather than guessed to be DRAM.
    """
    if row.get("memory_level"):
        return str(row["memory_level"])
    caches = machine.cache_sizes_bytes() if machine else {}
    size = row.get("working_set_bytes") or row.get("table_bytes")
    return level_of(int(size), caches) if caches and size else UNPLACED


def _level_order(levels: set[str]) -> list[str]:
    return sorted(levels, key=lambda lv: (LEVELS.index(lv) if lv in LEVELS else len(LEVELS) + (lv == UNPLACED), lv))


def _hot_sets(rows: list[dict[str, Any]]) -> str:
    """'512 KiB', '2 MiB, 16 MiB', or '2 MiB - 256 MiB' for more than three sizes: the hot sets of a level."""
    sizes = sorted({int(n) for r in rows if (n := r.get("working_set_bytes") or r.get("table_bytes"))})
    if not sizes:
        return ""
    if len(sizes) > 3:
        return f"{format_bytes(sizes[0])} - {format_bytes(sizes[-1])}"
    return ", ".join(format_bytes(n) for n in sizes)


# A column's points are drawn side by side, one slot per kernel (and per machine in a comparison): a slot
# is about a marker wide, and all slots together span at most this share of the x axis (log units).
_SLOT_SHARE = 0.012
_SPREAD_SHARE = 0.08


def dodge_factors(n_slots: int, x_lo: float, x_hi: float) -> list[float]:
    """The x multiplier of each of `n_slots` side-by-side slots around a column's true intensity (1.0 with one):
    equal steps in log x, centred on 1, about a marker wide on an axis from x_lo to x_hi."""
    if n_slots <= 1:
        return [1.0] * n_slots
    span = math.log10(x_hi / x_lo)
    step = min(_SLOT_SHARE * span, _SPREAD_SHARE * span / (n_slots - 1))
    return [10 ** ((i - (n_slots - 1) / 2) * step) for i in range(n_slots)]


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
    """Log-log roofline of the ok points under the machine's roofs (lines).

    Colour is the kernel; marker shape is the memory level the point's hot set was placed in (point_level),
    and each level's roof is drawn in that level's colour with the same shape on it where its points sit,
    at their true intensity. Points of one intensity (an embedding-bag sweep over working sets shares one)
    are drawn side by side, one slot per kernel (dodge_factors); the x label says so and by how much.
    With several machines (compare), colour marks the machine instead: a roof the machines agree on is drawn
    once in grey and labelled with all of them ('A, B'), one that differs in each machine's colour; slots are
    per kernel and machine, and the kernels are named under each column. Roof labels of close roofs are
    nudged apart so that none prints over another.
    With points at several thread counts, marker size grows with the thread count and roofs are drawn
    per count (fewer threads lighter).

    Args:
        rows: flat rows (failed ones and those without FLOPs are skipped).
        machines: sku_id -> Machine, for the ceilings and cache sizes.
        labels: annotate each point with the fields that vary between points.
        title: figure title (default: "Roofline: <machine names>").
        tolerance: fraction above its roof at which a point is flagged (drawn with a red ring).
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
    by_threads = len(threads) > 1 and not multi  # with several machines, colour is the machine
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
    roof_of, roof_labels = _draw_roofs(ax, drawn, skus, tags, x_lo, x_hi)  # sku -> ceiling key -> roof drawn
    bare = missing_ceilings(pts, machines)
    if bare:  # points without roofs read as a finished roofline unless the figure says otherwise
        who = ", ".join(tags[s] for s in bare) if multi else "this machine"
        ax.text(0.01, 0.99, f"no measured ceilings for {who}: roofs not drawn (dlrmbench machine --ceilings)",
                transform=ax.transAxes, va="top", fontsize=8, color="firebrick")  # fmt: skip
    level = {id(r): point_level(r, machines.get(r["sku_id"])) for r in pts}
    levels = _level_order(set(level.values()))
    slots = [(k, s) for k in kernels for s in skus if any(r["kernel"] == k and r["sku_id"] == s for r in pts)]
    factors = dict(zip(slots, dodge_factors(len(slots), x_lo, x_hi), strict=True))
    x_of = {id(r): float(r["arithmetic_intensity"]) * factors[(r["kernel"], r["sku_id"])] for r in pts}
    size = {t: 46.0 * (0.5 + i / (len(threads) - 1)) if by_threads else 46.0 for i, t in enumerate(threads)}
    shown = {sweep: varying_fields(group, exclude=["kernel"]) for (sweep,), group in group_by(pts, ["sweep"]).items()}
    for sku in skus:
        for kernel in kernels:
            for t in threads:
                for lv in levels:
                    group = [r for r in pts if r["sku_id"] == sku and r["kernel"] == kernel and _threads(r) == t
                             and level[id(r)] == lv]  # fmt: skip
                    if not group:
                        continue
                    name = f"{tags[sku]}: {kernel}" if multi else kernel
                    col = color(skus.index(sku)) if multi else styles[kernel][0]
                    shape = level_marker(lv)
                    ax.scatter(
                        [x_of[id(r)] for r in group], [r["gflops"] for r in group], marker=shape, s=size[t],
                        color=col, edgecolors="black", linewidths=0.5, zorder=3, label=name,
                        gid=f"{name} {lv} {t}t",
                    )  # fmt: skip
                    slowed = [r for r in group if r.get("contended")]  # hollowed: a neighbour competed for the CPUs
                    if slowed:
                        ax.scatter([x_of[id(r)] for r in slowed], [r["gflops"] for r in slowed], marker=shape,
                                   s=size[t] * 0.55, color="white", zorder=3.5,
                                   gid=f"{name} {lv} {t}t contended")  # fmt: skip
                    for r in group if labels else []:
                        text = point_label(r, shown[r["sweep"]], short=True)
                        ax.annotate(text, (x_of[id(r)], r["gflops"]), fontsize=7, xytext=(4, 3),
                                    textcoords="offset points")  # fmt: skip
    _mark_roofs(ax, pts, level, roof_of)
    if multi and len(kernels) > 1:
        _name_slots(ax, pts, kernels, skus, factors)
    if flagged:
        ax.scatter([x_of[id(f.row)] for f in flagged], [f.row["gflops"] for f in flagged], s=150,
                   marker="o", facecolors="none", edgecolors="red", linewidths=1.8, zorder=4,
                   gid="above its roof")  # fmt: skip
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(x_lo, x_hi)
    xlabel = AXIS_NAMES["arithmetic_intensity"]
    if len(slots) > 1:
        lo, hi = min(factors.values()), max(factors.values())
        what = "kernels and machines" if multi else "kernels"
        xlabel += (f"\n{what} side by side: x shifted \u00d7{lo:.2f} to \u00d7{hi:.2f}; "
                   "true intensity at each column's centre")  # fmt: skip
    ax.set_xlabel(xlabel)
    ax.set_ylabel("achieved performance (GFLOP/s)")
    ax.set_title(title or f"Roofline: {names}\n{shared_label(rows)}", fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    _legends(ax, pts, level, levels, kernels, skus, tags, styles, size, roof_of, flagged, tolerance, by_threads)
    unstack_labels(fig, roof_labels)  # laid out with the legends beside the axes, where the labels sit on screen
    return fig, flagged


def _mark_roofs(
    ax: Any, pts: list[dict[str, Any]], level: dict[int, str], roof_of: dict[str, dict[str, _Drawn]]
) -> None:
    """On the roof each point was judged against, at its true intensity: its level's shape in the roof's colour."""
    marks: dict[tuple[str, float, str], tuple[float, str]] = {}
    for r in pts:
        roof = roof_of.get(r["sku_id"], {}).get(str(r.get("ceiling")))
        if roof:
            ai = float(r["arithmetic_intensity"])
            marks.setdefault((roof.ceiling.key + roof.color, ai, level[id(r)]), (roof.at(ai), roof.color))
    for lv in dict.fromkeys(k[2] for k in marks):
        here = [(ai, y, col) for (_key, ai, mark_lv), (y, col) in marks.items() if mark_lv == lv]
        ax.scatter([m[0] for m in here], [m[1] for m in here], marker=level_marker(lv), s=34,
                   color=[m[2] for m in here], edgecolors="white", linewidths=0.8, zorder=2.5,
                   gid=f"roof mark {lv}")  # fmt: skip


def _name_slots(
    ax: Any, pts: list[dict[str, Any]], kernels: list[str], skus: list[str], factors: dict[tuple[str, str], float]
) -> None:
    """Compare: the kernel of each group of slots, written upright at the foot of every column."""
    columns: dict[float, float] = {}  # intensities a thousandth of a decade apart are one column
    for r in pts:
        ai = float(r["arithmetic_intensity"])
        columns.setdefault(round(math.log10(ai), 3), ai)
    for ai in columns.values():
        for kernel in kernels:
            here = [f for (k, _s), f in factors.items() if k == kernel]
            ax.annotate(kernel, (ai * math.sqrt(min(here) * max(here)), 0.01), xycoords=("data", "axes fraction"),
                        rotation=90, fontsize=6, ha="center", va="bottom", color="dimgray")  # fmt: skip


def _legends(
    ax: Any,
    pts: list[dict[str, Any]],
    level: dict[int, str],
    levels: list[str],
    kernels: list[str],
    skus: list[str],
    tags: dict[str, str],
    styles: dict[str, tuple[str, str]],
    size: dict[int, float],
    roof_of: dict[str, dict[str, _Drawn]],
    flagged: list[RoofCheck],
    tolerance: float,
    by_threads: bool,
) -> None:
    """Roofs, then what colour says (kernels, or machines), then what shape says (levels), top to bottom."""
    multi = len(skus) > 1
    roof_handles = [ln for ln in ax.get_lines() if not ln.get_label().startswith("_")]
    if multi:
        who = [Patch(facecolor=color(i), edgecolor="black", lw=0.5, label=tags[s]) for i, s in enumerate(skus)]
        who_title = "machine (colour of points and roofs)"
        if any(roof.color == SHARED_TINT for lines in roof_of.values() for roof in lines.values()):
            who_title += "\ngrey roof: " + ("both share it" if len(skus) == 2 else "shared by the machines it names")
    else:
        who = [Patch(facecolor=styles[k][0], edgecolor="black", lw=0.5, label=k) for k in kernels]
        who_title = "kernel (colour)"
    if any(r.get("contended") for r in pts):
        who.append(Line2D([], [], ls="none", marker="o", color="white", markeredgecolor="black",
                          label="hollow: measured under contention"))  # fmt: skip
    if flagged:
        who.append(Line2D([], [], ls="none", marker="o", markersize=10, markerfacecolor="none", markeredgecolor="red",
                          markeredgewidth=1.8, label=f"above its roof (> {tolerance:.0%})"))  # fmt: skip
    shapes = []
    for lv in levels:
        hot = _hot_sets([r for r in pts if level[id(r)] == lv])
        label = f"{lv}: hot set {hot}" if hot and lv != UNPLACED else lv
        if lv == UNPLACED:
            label += " (no level recorded, no cache sizes)"
        roofs = [roof_of.get(r["sku_id"], {}).get(str(r.get("ceiling"))) for r in pts if level[id(r)] == lv]
        used = {(roof.color, roof.style) for roof in roofs if roof}
        # one machine, one roof style for the level: the entry looks like the roof with its mark on it
        col, style = next(iter(used)) if len(used) == 1 and not multi else ("darkgray", "none")
        shapes.append(Line2D([], [], ls=style, color=col, marker=level_marker(lv),
                             markersize=7, markerfacecolor=col, markeredgecolor="black", markeredgewidth=0.5,
                             label=label))  # fmt: skip
    if by_threads:
        shapes += [Line2D([], [], ls="none", marker="o", markersize=math.sqrt(size[t]), color="darkgray",
                          markeredgecolor="black", markeredgewidth=0.5, label=f"{t} thread" + ("s" if t != 1 else ""))
                   for t in size]  # fmt: skip
    shape_title = "hot set in (marker; same mark on its roof)" + (", threads (size)" if by_threads else "")
    stack_legends(ax, [
        {"handles": roof_handles, "labels": [h.get_label() for h in roof_handles], "title": "roofs"},
        {"handles": who, "labels": [h.get_label() for h in who], "title": who_title},
        {"handles": shapes, "labels": [h.get_label() for h in shapes], "title": shape_title},
    ])  # fmt: skip
