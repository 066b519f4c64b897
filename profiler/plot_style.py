"""Shared look of the workbench's figures: axis names with units, markers per kernel, colours, saving.

Figures are built with matplotlib.figure.Figure directly (no pyplot), so nothing depends on a
display or on global pyplot state; saving uses the Agg (PNG) and SVG canvases.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

from matplotlib.figure import Figure
from matplotlib.ticker import FixedLocator, FuncFormatter, LogLocator, NullLocator
from matplotlib.transforms import Bbox

from profiler.sweep_spec import format_bytes  # re-exported: the figures' byte labels

_K = TypeVar("_K")

__all__ = [
    "AXIS_NAMES",
    "BYTE_FIELDS",
    "COMPUTE_ROOF_COLOR",
    "LABEL_BOX",
    "LEVELS",
    "SHARED_TINT",
    "UNPLACED",
    "ceiling_color",
    "color",
    "format_bytes",
    "group_equal",
    "kernel_styles",
    "level_color",
    "level_marker",
    "machine_tags",
    "marker",
    "new_figure",
    "roof_color",
    "roof_key",
    "save_figure",
    "stack_legends",
    "unstack_labels",
    "use_byte_ticks",
    "use_value_ticks",
]

# field -> axis label with its unit
AXIS_NAMES: dict[str, str] = {
    "gbps": "achieved bandwidth (GB/s)",
    "gflops": "achieved GFLOP/s",
    "lookups_per_s": "lookups per second",
    "samples_per_s": "samples per second",
    "median_s": "time per call (s)",
    "frac_of_ceiling": "fraction of ceiling",
    "arithmetic_intensity": "arithmetic intensity (FLOP/byte, every lookup's whole row counted)",
    "batch_size": "batch size B (bags per table)",
    "num_rows": "rows per table E",
    "embedding_dim": "embedding dim D",
    "pooling_factor": "pooling factor L (lookups per bag)",
    "num_tables": "tables T",
    "threads": "threads",
    "world_size": "ranks W (processes)",
    "working_set_bytes": "hot working set (bytes)",
    "working_set": "hot working set (bytes)",
    "table_bytes": "table size (bytes)",
    "bytes_moved": "bytes moved per call",
}
BYTE_FIELDS = frozenset({"working_set_bytes", "working_set", "table_bytes", "bytes_moved", "bytes_read"})
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*", "<", ">", "h", "p")
_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink", "tab:olive",
           "tab:cyan", "tab:gray")  # fmt: skip
# Kernels: no greys or black, which ceiling lines use; registry kernels take the first colours in order
_KERNEL_COLORS = ("tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown", "tab:pink",
                  "tab:olive", "tab:cyan", "navy", "gold", "teal", "magenta", "maroon", "lime")  # fmt: skip
_CEILING_COLORS = ("black", "dimgray", "gray", "darkgray", "silver")
# Memory levels on the roofline: a point's marker shape is the level its hot set was placed in, and that
# level's roof is drawn in the level's colour and carries the same shape where the points sit under it.
LEVELS = ("L1d", "L2", "L3", "DRAM")
UNPLACED = "unplaced"  # no level recorded and no cache sizes to derive one from
_LEVEL_MARKERS = {"L1d": "o", "L2": "s", "L3": "^", "DRAM": "D", UNPLACED: "X"}
_LEVEL_COLORS = {"L1d": "#440154", "L2": "#3b528b", "L3": "#21918c", "DRAM": "#35b779"}  # viridis 0, .25, .5, .7
COMPUTE_ROOF_COLOR = "dimgray"  # compute roofs are grey: no level, and no kernel uses greys


_TITLE_CHARS = 80  # about what a one-panel figure's title holds at 10-11 pt before it is clipped


def marker(i: int) -> str:
    """The i-th marker shape (kernels keep their shape across figures when given in the same order)."""
    return _MARKERS[i % len(_MARKERS)]


def level_marker(level: str) -> str:
    """The marker shape of a memory level (L1d circle, L2 square, L3 triangle, DRAM diamond, unplaced X);
    a level name outside these (a GPU's, say) gets a plus."""
    return _LEVEL_MARKERS.get(level, "P")


def level_color(level: str) -> str:
    """The colour of a memory level's roofs (a dark-to-light viridis ramp, L1d darkest); grey for others."""
    return _LEVEL_COLORS.get(level, "gray")


def color(i: int) -> str:
    """The i-th colour of the qualitative palette."""
    return _COLORS[i % len(_COLORS)]


def ceiling_color(i: int) -> str:
    """The i-th colour of the ceiling lines: greys and black, a family no kernel uses."""
    return _CEILING_COLORS[i % len(_CEILING_COLORS)]


@cache
def _registry_names() -> tuple[str, ...]:
    from kernels import list_kernels  # lazy: plots of stored results need no backend until they name kernels

    return tuple(k.name for k in list_kernels())


def kernel_styles(kernels: Iterable[str], registry: Sequence[str] | None = None) -> dict[str, tuple[str, str]]:
    """A fixed kernel -> (colour, marker) map, so a kernel looks the same in every figure.

    Args:
        kernels: the kernel names to style (any order; the order does not change the result).
        registry: kernel names in registry order; default kernels.list_kernels().
    Returns:
        {name: (colour, marker)}: registry kernels by their registry position, other names after
        them in sorted order.
    """
    order = list(_registry_names() if registry is None else registry)
    order += sorted(set(kernels) - set(order))
    index = {k: i for i, k in enumerate(order)}
    return {k: (_KERNEL_COLORS[index[k] % len(_KERNEL_COLORS)], marker(index[k])) for k in kernels}


def roof_color(i: int, n: int) -> str:
    """The colour of the i-th of n roofs: a dark-to-light ramp kept apart from the kernels' palette."""
    from matplotlib import colormaps

    r, g, b, _ = colormaps["viridis"](0.85 * i / max(1, n - 1))
    return f"#{int(r * 255):02x}{int(g * 255):02x}{int(b * 255):02x}"


def machine_tags(skus: list[str], names: dict[str, str]) -> tuple[dict[str, str], str]:
    """Short tags for several machines in one figure ('A', 'B', ...) and the title line naming them.

    Args:
        skus: sku ids in plotting order.
        names: sku id -> machine name (CPU, GPU; compare adds the folder when two sides share a SKU).
    Returns:
        ({sku: tag}, 'A = AMD EPYC (64 cpus); B = ...'); with one machine, ({sku: ''}, its name). Names
        that would not fit on one title line go one per line instead.
    """
    if len(skus) == 1:
        return {skus[0]: ""}, names.get(skus[0], skus[0])
    tags = {s: chr(65 + i) if i < 26 else f"M{i}" for i, s in enumerate(skus)}
    parts = [f"{tags[s]} = {names.get(s, s)}" for s in skus]
    line = "; ".join(parts)
    return tags, line if len(line) <= _TITLE_CHARS else "\n".join(parts)


SHARED_TINT = "dimgray"  # lines several machines share (same roofs, same caches): drawn once, tagged "A, B"
# behind a roof's or ceiling's label: the line (a slanted roof runs through its own label) and the grid show
# through faintly instead of striking through the text
LABEL_BOX = {"boxstyle": "square,pad=0.1", "facecolor": "white", "edgecolor": "none", "alpha": 0.75}


def group_equal(keys: dict[_K, Any]) -> list[list[_K]]:
    """The skus (or (sku, roof) pairs) grouped by equal `keys[...]`, in first-seen order: machines whose roofs
    or caches are the same get one line tagged with all of them, instead of lines drawn over each other with
    garbled labels."""
    groups: list[list[_K]] = []
    for sku, key in keys.items():
        for g in groups:
            if keys[g[0]] == key:
                g.append(sku)
                break
        else:
            groups.append([sku])
    return groups


def roof_key(c: Any) -> tuple:
    """What makes two machines' roofs one line: the same kind of roof (a gather's D too, which its label
    names) at the value its label shows (3 significant figures)."""
    return (c.kind, c.name, c.level, c.dtype, c.threads, c.source, c.row_dim, float(f"{c.value:.3g}"))


def _extent(text: Any) -> Any:
    """What a label covers on screen: its text, and its background box when it has one."""
    box = text.get_window_extent()
    patch = text.get_bbox_patch()
    return Bbox.union([box, patch.get_window_extent()]) if patch is not None else box


def _lift(labels: list[Any], gap_pt: float) -> bool:
    """Nudge the labels of one column up, lowest first, until none overprints the one under it.
    Returns whether any label moved."""
    if len(labels) < 2:
        return False
    per_pt = labels[0].get_figure().dpi / 72
    floor, moved = -math.inf, False
    for text in sorted(labels, key=lambda t: _extent(t).y0):
        box = _extent(text)
        lift = max(0.0, floor - box.y0)
        if lift:
            dx, dy = text.xyann
            text.xyann = (dx, float(dy + lift / per_pt))
            moved = True
        floor = box.y1 + lift + gap_pt * per_pt
    return moved


def unstack_labels(fig: Figure, columns: list[list[Any]], *, gap_pt: float = 1.0, rounds: int = 3) -> None:
    """Nudge close labels apart: within each column (annotations with offsets in points, drawn one above
    the other, such as the labels of roofs or ceilings of close values: L2 220 and L3 181 GB/s, or two
    machines' DRAM roofs), each label goes up until it clears the one under it by `gap_pt`.

    The figure is laid out (drawn) first, so the labels have their place on screen; a nudge that grows the
    layout (a label lifted past the axes' top) is laid out again and checked, up to `rounds` times. The
    nudge is in points, so it holds at any dpi.
    """
    for _ in range(rounds):
        fig.draw_without_rendering()
        if not any([_lift(column, gap_pt) for column in columns]):  # a list: every column is lifted
            return


def use_byte_ticks(axis: Any) -> None:
    """Label a log axis at powers of two, in KiB / MiB / GiB instead of raw byte counts."""
    axis.set_major_locator(LogLocator(base=2, numticks=10))
    axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(FuncFormatter(lambda v, _pos: format_bytes(v) if v > 0 else "0"))


def use_value_ticks(axis: Any, values: list[float], max_ticks: int = 12) -> None:
    """Put ticks at the measured x values (batch sizes, row counts) in plain numbers, when there are few."""
    distinct = sorted(set(values))
    if 1 < len(distinct) <= max_ticks or len(distinct) == 1:
        axis.set_major_locator(FixedLocator(distinct))
        axis.set_minor_locator(NullLocator())
        axis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}" if v == int(v) else f"{v:g}"))


def stack_legends(ax: Any, legends: list[dict[str, Any]], *, gap: float = 0.02) -> list[Any]:
    """Legends one under another in a column right of `ax`, each placed under the one before as drawn.

    Args:
        ax: the axes.
        legends: keyword arguments of Axes.legend per legend (handles, labels, title, ...), top first;
            an entry without handles is skipped.
        gap: space between two legends, in axes heights.
    Returns:
        The legends drawn, top first; the first is ax.get_legend(), the others are added as artists.
    """
    from matplotlib.legend import Legend

    fig, top, drawn = ax.get_figure(), 1.0, []
    for kw in legends:
        if not kw.get("handles"):
            continue
        opts = {"fontsize": 7, "title_fontsize": 7, "loc": "upper left", "framealpha": 0.85, "alignment": "left",
                **kw, "bbox_to_anchor": (1.01, top)}  # fmt: skip
        legend = ax.legend(**opts) if not drawn else Legend(ax, **opts)
        if drawn:
            ax.add_artist(legend)
            legend.set_clip_on(False)  # add_artist clips to the axes, which would keep it out of the layout
        drawn.append(legend)
        fig.draw_without_rendering()  # lays the figure out, so the legend's height is known
        top = ax.transAxes.inverted().transform(legend.get_window_extent().p0)[1] - gap
    return drawn


def new_figure(nrows: int = 1, ncols: int = 1, *, panel_in: tuple[float, float] = (7.0, 4.6)) -> tuple[Figure, list]:
    """A figure of nrows x ncols panels; returns it and its axes as a flat list."""
    fig = Figure(figsize=(panel_in[0] * ncols, panel_in[1] * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def save_figure(fig: Figure, out: str | Path) -> list[Path]:
    """Write `fig` as PNG and SVG when `out` has no suffix, else as the one format named.

    Args:
        fig: the figure.
        out: 'plots/roofline' (writes roofline.png and roofline.svg), or 'x.png', or 'x.svg'.
    Returns:
        The paths written.
    """
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix and suffix not in (".png", ".svg"):
        raise ValueError(f"{out}: output format {suffix!r} is not supported; use .png, .svg, or no suffix for both")
    paths = [out] if suffix else [out.with_name(out.name + ".png"), out.with_name(out.name + ".svg")]
    out.parent.mkdir(parents=True, exist_ok=True)
    import matplotlib

    for p in paths:
        if p.suffix.lower() == ".png":
            fig.savefig(p, dpi=120)
        else:  # no date and fixed ids: the same figure gives the same file (a committed example stays put)
            with matplotlib.rc_context({"svg.hashsalt": "dlrmbench"}):
                fig.savefig(p, dpi="figure", metadata={"Date": None})
    return paths
