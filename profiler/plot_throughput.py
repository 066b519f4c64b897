"""Throughput vs one axis (batch size, table size, working set): median line and p25-p75 band per kernel.

When x is a byte size the machine's L1d / L2 / L3 sizes are drawn as vertical lines, so the
knees of a cache-footprint sweep line up with the cache boundaries; when y is GB/s the
bandwidth ceilings the panel's points were judged against are drawn as horizontal lines.
Fields that vary besides x and the line field (say embedding_dim) get one panel per combination.
"""

from __future__ import annotations

import math
from typing import Any

from matplotlib.figure import Figure

from profiler.plot_roofline import roofs_for
from profiler.plot_style import (
    AXIS_NAMES,
    BYTE_FIELDS,
    LABEL_BOX,
    SHARED_TINT,
    ceiling_color,
    color,
    format_bytes,
    group_equal,
    kernel_styles,
    machine_tags,
    marker,
    new_figure,
    roof_key,
    unstack_labels,
    use_byte_ticks,
    use_value_ticks,
)
from profiler.results import Machine, band, group_by, point_label, shared_label, value_of, varying_fields

__all__ = ["MAX_PANELS", "throughput_figure"]

MAX_PANELS = 12  # beyond this a figure is unreadable; the rest are left out with a note (narrow with --filter)
_CACHE_STYLES = {"L1d": ":", "L2": "--", "L3": "-."}


def _facets(rows: list[dict[str, Any]], x: str, line: str) -> list[str]:
    exclude = {x, line, "working_set" if x in ("working_set_bytes", "working_set") else x}
    return varying_fields(rows, exclude=exclude)


def _draw_caches(ax: Any, machine: Machine, tint: str, prefix: str, levels: set[str] | None = None) -> None:
    for level, size in machine.cache_sizes_bytes().items():
        if levels is not None and level not in levels:
            continue
        ax.axvline(size, color=tint, ls=_CACHE_STYLES.get(level, ":"), lw=1.0, alpha=0.7)
        ax.annotate(f"{prefix}{level} {format_bytes(size)}", (size, 1.0), xycoords=("data", "axes fraction"),
                    xytext=(2, -10), textcoords="offset points", fontsize=7, color=tint, rotation=90,
                    va="top")  # fmt: skip


def _bandwidth_roofs(machine: Machine, rows: list[dict[str, Any]]) -> list[Any]:
    """The bandwidth ceilings the rows were judged against (else the roofs that apply to them)."""
    used = {r.get("ceiling") for r in rows}
    bw = [c for c in machine.ceilings if c.key in used and c.kind == "bandwidth"]
    return bw or [c for c in roofs_for(machine, rows) if c.kind == "bandwidth"]  # points judged against none


def _draw_ceilings(ax: Any, shown: dict[str, list[Any]], skus: list[str], tags: dict[str, str]) -> list[Any]:
    """Each machine's bandwidth ceilings (sku -> its ceilings), drawn once per group of machines that agree on
    a ceiling: the same roof_key, the rule the compare roofline shares its roofs by. Returns the labels
    written at the right edge, to be nudged apart (unstack_labels) once the figure is laid out."""
    # One machine: greys, darkest at the top (no kernel's colour). Several: a ceiling one machine alone has
    # takes that machine's colour, one several share SHARED_TINT, and its label names all of them ('A, B: ').
    multi = len(skus) > 1
    ceiling = {(sku, c.key): c for sku, roofs in shown.items() for c in roofs}
    groups = sorted(group_equal({k: roof_key(c) for k, c in ceiling.items()}), key=lambda g: -ceiling[g[0]].value)
    labels = []
    for i, group in enumerate(groups):
        c, who = ceiling[group[0]], list(dict.fromkeys(sku for sku, _key in group))
        if multi:
            col = SHARED_TINT if len(who) > 1 else color(skus.index(who[0]))
        else:
            col = ceiling_color(i)
        prefix = ", ".join(tags[sku] for sku in who) + ": " if multi else ""
        dim = f" D{c.row_dim}" if c.row_dim is not None else ""  # roof_key tells gathers by D
        text = f"{prefix}{c.name}{dim} {c.level} {c.threads}t {c.value:.0f} GB/s"
        ax.axhline(c.value, color=col, ls="--" if c.source == "derived" else "-", lw=0.9, alpha=0.6, gid=text)
        labels.append(ax.annotate(text, (1.0, c.value), xycoords=("axes fraction", "data"), xytext=(-3, 2),
                                  textcoords="offset points", fontsize=7, color=col, ha="right",
                                  bbox=LABEL_BOX))  # fmt: skip
    return labels


def throughput_figure(
    rows: list[dict[str, Any]],
    machines: dict[str, Machine],
    *,
    x: str,
    y: str = "gbps",
    line: str = "kernel",
    logx: bool = True,
    logy: bool = False,
    title: str = "",
) -> tuple[Figure, list[str]]:
    """Median `y` vs `x`, one line per value of `line` (and per machine when several), p25-p75 shaded.

    With several machines (compare), a cache-size line or bandwidth ceiling the machines agree on is drawn
    once in grey and labelled with all of them ('A, B: '), one that differs in each machine's colour; labels
    of close ceilings are nudged apart so that none prints over another.

    Args:
        rows: flat rows; failed points and points without `y` are skipped.
        machines: sku_id -> Machine, for cache sizes and ceilings.
        x: the axis field (batch_size, num_rows, working_set_bytes, ...).
        y: the metric (gbps, gflops, lookups_per_s, samples_per_s, median_s, frac_of_ceiling).
        line: the field that tells lines apart (usually kernel).
        logx, logy: log scales.
        title: figure title (default: "<y> vs <x>: <machine names>").
    Returns:
        The figure and notes (panels left out, points without a value).
    """
    pts = [r for r in rows if r.get("status") == "ok" and r.get(y) is not None and value_of(r, x) is not None]
    if not pts:
        known = sorted({k for r in rows for k, v in r.items() if isinstance(v, (int, float))})
        raise ValueError(f"no ok points with both x={x!r} and y={y!r}; numeric fields here: {', '.join(known)}")
    notes = []
    facets = _facets(pts, x, line)
    panels = group_by(pts, facets)
    if len(panels) > MAX_PANELS:
        notes.append(f"{len(panels) - MAX_PANELS} of {len(panels)} panels ({', '.join(facets)}) left out; "
                     "narrow the points with --filter")  # fmt: skip
        panels = dict(list(panels.items())[:MAX_PANELS])
    ncols = 1 if len(panels) == 1 else 2 if len(panels) <= 4 else 3
    nrows = math.ceil(len(panels) / ncols)
    fig, axes = new_figure(nrows, ncols, panel_in=(8.0, 5.0) if len(panels) == 1 else (5.5, 3.8))
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    skus = list(dict.fromkeys(r["sku_id"] for r in pts))
    multi = len(skus) > 1
    tags, names = machine_tags(skus, {s: m.name for s, m in machines.items()})
    line_values = list(dict.fromkeys(r.get(line) for r in pts))
    # a kernel keeps its colour and marker across figures; other line fields keep the palette's order
    styles = kernel_styles(line_values) if line == "kernel" else {}
    ceiling_labels: list[list[Any]] = []  # per panel: the ceilings' labels at its right edge
    for ax, (facet_values, panel_rows) in zip(axes, panels.items(), strict=False):
        known = [sku for sku in skus if machines.get(sku)]

        def tint_and_prefix(group: list[str]) -> tuple[str | None, str]:
            if not multi:
                return None, ""
            tint = color(skus.index(group[0])) if len(group) == 1 else SHARED_TINT
            return tint, ", ".join(tags[s] for s in group) + ": "

        if x in BYTE_FIELDS:  # machines with the same size of a cache level share that level's line
            sizes = {sku: machines[sku].cache_sizes_bytes() for sku in known}
            for level in dict.fromkeys(lv for s in sizes.values() for lv in s):
                have = {sku: s[level] for sku, s in sizes.items() if level in s}
                for group in group_equal(have):
                    tint, prefix = tint_and_prefix(group)
                    _draw_caches(ax, machines[group[0]], tint or "gray", prefix, {level})
        if y == "gbps":  # each ceiling once for the machines that agree on it (roof_key)
            shown = {sku: _bandwidth_roofs(machines[sku], [r for r in panel_rows if r["sku_id"] == sku])
                     for sku in known if machines[sku].ceilings}  # fmt: skip
            ceiling_labels.append(_draw_ceilings(ax, shown, skus, tags))
        for (sku, value), group in group_by(panel_rows, ["sku_id", line]).items():
            group = sorted(group, key=lambda r: value_of(r, x))
            k = line_values.index(value)
            s = skus.index(sku)
            col_k, marker_k = styles.get(value) or (color(k), marker(k))
            col = color(s) if multi else col_k
            shown = str(value) if line == "kernel" else f"{line}={value}"  # kernels name themselves; W=2 needs its key
            name = f"{tags[sku]}: {shown}" if multi else shown
            xs = [value_of(r, x) for r in group]
            ax.plot(xs, [r[y] for r in group], marker=marker_k, ms=5, color=col, lw=1.5, label=name,
                    ls=["-", "--", ":", "-."][k % 4] if multi else "-")  # fmt: skip
            slowed = [r for r in group if r.get("contended")]  # hollowed: a neighbour competed for the CPUs
            if slowed:
                ax.plot([value_of(r, x) for r in slowed], [r[y] for r in slowed], ls="none", marker=marker_k, ms=3,
                        color="white", zorder=3.5, label="_nolegend_", gid=f"{name} contended")  # fmt: skip
            bands = [band(r, y) for r in group]
            if all(bands):
                ax.fill_between(xs, [b[0] for b in bands], [b[1] for b in bands], color=col, alpha=0.2, lw=0)
        if logx:
            ax.set_xscale("log")
        if logy:
            ax.set_yscale("log")
        if x in BYTE_FIELDS and logx:
            use_byte_ticks(ax.xaxis)
        elif logx:
            use_value_ticks(ax.xaxis, [float(value_of(r, x)) for r in panel_rows])
        ax.set_xlabel(AXIS_NAMES.get(x, x))
        ax.set_ylabel(AXIS_NAMES.get(y, y))
        if not logy:
            ax.set_ylim(bottom=0)
        ax.grid(True, which="major", alpha=0.3)
        if facets:
            ax.set_title(point_label(dict(zip(facets, facet_values, strict=True)), facets), fontsize=9)
        if any(r.get("contended") for r in panel_rows):
            ax.plot([], [], ls="none", marker="o", ms=5, color="white", markeredgecolor="black",
                    label="hollow: measured under contention")  # fmt: skip
        ax.legend(fontsize=7, loc="best", framealpha=0.85, title="median, p25-p75 band", title_fontsize=7)
    heading = f"{AXIS_NAMES.get(y, y)} vs {AXIS_NAMES.get(x, x)}"
    fig.suptitle(title or f"{heading}{chr(10) if multi else ': '}{names}\n{shared_label(rows)}", fontsize=11)
    unstack_labels(fig, ceiling_labels)  # ceilings of close values (two machines' DRAM) print apart
    return fig, notes
