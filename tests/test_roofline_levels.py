"""The roofline tells a point's memory level by its marker, spreads the kernels of one intensity side by side
(and says so), pairs each level with its roof, and format_bytes switches unit where the number reaches 1024.

References are written out by hand here: which working set lands in which level of the synthetic machine
(L1d 32 KiB, L2 1 MiB, L3 32 MiB), the marker each level is drawn with, the byte strings."""

from __future__ import annotations

import json
import math
import re

import pytest
from matplotlib.colors import to_hex
from matplotlib.legend import Legend
from matplotlib.markers import MarkerStyle
from synthetic_results import CEILINGS, bag_point, write_sku

from profiler.compare import label_sides
from profiler.plot_roofline import point_level, roofline_figure
from profiler.results import load_results
from profiler.sweep_spec import format_bytes

TRIAD_L1, TRIAD_L2, _, GATHER, _, _ = CEILINGS
SHAPES = {"L1d": "o", "L2": "s", "L3": "^", "DRAM": "D", "unplaced": "X"}  # the legend's promise
LEVEL_OF_WS = {"8K": "L1d", "512K": "L2", "256M": "DRAM"}
KERNELS = ["torch", "numba_w8", "torch_naive"]


def _marker_vertices(shape):
    m = MarkerStyle(shape)
    return m.get_path().transformed(m.get_transform()).vertices


def _legends(ax):
    return {leg.get_title().get_text(): [t.get_text() for t in leg.get_texts()]
            for leg in ax.get_children() if isinstance(leg, Legend)}  # fmt: skip


def _points(ax):
    """(kernel, level, threads) -> its scatter collection, from the gid the figure gives each group."""
    out = {}
    for c in ax.collections:
        gid = c.get_gid() or ""
        if not gid.startswith(("roof mark", "above")) and not gid.endswith("contended"):
            kernel, level, t = gid.rsplit(" ", 2)
            out[(kernel, level, t)] = c
    return out


def _sweep(tmp_path, kernels=KERNELS):
    """Each kernel at 8 KiB, 512 KiB and 256 MiB hot sets, all at one intensity (bytes counted alike)."""
    ceiling = {"8K": TRIAD_L1, "512K": TRIAD_L2, "256M": GATHER}
    pts = [(bag_point(k, working_set=ws), 1e-5 * (i + 1) * (j + 1), ceiling[ws])
           for i, k in enumerate(kernels) for j, ws in enumerate(ceiling)]  # fmt: skip
    return write_sku(tmp_path, "sku-a", "Synthetic CPU A", pts)


def test_each_point_is_drawn_with_its_levels_marker_and_kernels_stand_side_by_side(tmp_path):
    rs = load_results(_sweep(tmp_path))
    ai = rs.rows[0]["arithmetic_intensity"]
    assert {r["arithmetic_intensity"] for r in rs.rows} == {ai}  # one column: what overprinted before
    fig, _ = roofline_figure(rs.rows, rs.machines)
    ax = fig.axes[0]
    points = _points(ax)
    assert set(points) == {(k, lv, "1t") for k in KERNELS for lv in ("L1d", "L2", "DRAM")}
    for (_kernel, level, _t), c in points.items():
        assert c.get_paths()[0].vertices == pytest.approx(_marker_vertices(SHAPES[level]))
    # the x label states the shift; every point lies within it, one x per kernel, in legend order
    note = ax.get_xlabel().splitlines()[1]
    lo, hi = map(float, re.search(r"shifted \u00d7([\d.]+) to \u00d7([\d.]+)", note).groups())
    assert lo < 1 < hi and "true intensity" in note
    xs = {}
    for (kernel, _level, _t), c in points.items():
        for x, _y in c.get_offsets():
            assert lo - 0.005 <= x / ai <= hi + 0.005
            xs.setdefault(kernel, set()).add(round(float(x), 12))
    assert all(len(v) == 1 for v in xs.values())  # a kernel keeps its slot in every level
    order = [next(iter(xs[k])) for k in KERNELS]
    assert order == sorted(order) and len(set(order)) == 3
    assert order[1] == pytest.approx(ai)  # the middle of three slots sits on the true intensity
    # two legends for the points: colour = kernel, shape = level (with its hot set), besides the roofs
    legends = _legends(ax)
    assert legends["kernel (colour)"] == KERNELS
    (levels,) = [v for k, v in legends.items() if k.startswith("hot set in (marker")]
    assert levels == ["L1d: hot set 8 KiB", "L2: hot set 512 KiB", "DRAM: hot set 256 MiB"]
    assert any(t.startswith("triad L2 1t") for t in legends["roofs"])


def test_a_levels_roof_carries_its_mark_at_the_true_intensity_in_the_roofs_colour(tmp_path):
    rs = load_results(_sweep(tmp_path))
    ai = rs.rows[0]["arithmetic_intensity"]
    ax = roofline_figure(rs.rows, rs.machines)[0].axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    for level, roof, gbps in (("L1d", "triad L1d 1t: 200 GB/s", 200.0), ("L2", "triad L2 1t: 100 GB/s", 100.0),
                              ("DRAM", "gather D64 DRAM 1t: 10 GB/s", 10.0)):  # fmt: skip
        (mark,) = [c for c in ax.collections if c.get_gid() == f"roof mark {level}"]
        assert tuple(mark.get_offsets()[0]) == pytest.approx((ai, gbps * ai))  # on the roof, undodged
        assert mark.get_paths()[0].vertices == pytest.approx(_marker_vertices(SHAPES[level]))
        assert to_hex(mark.get_facecolor()[0]) == to_hex(lines[roof].get_color())
    # and the level's legend entry is drawn as that roof: its colour and line style, with the mark on it
    (legend,) = [leg for leg in ax.get_children() if isinstance(leg, Legend) and leg.get_title().get_text()
                 .startswith("hot set in")]  # fmt: skip
    entry = dict(zip([t.get_text() for t in legend.get_texts()], legend.legend_handles, strict=True))
    l2 = entry["L2: hot set 512 KiB"]
    assert to_hex(l2.get_color()) == to_hex(lines["triad L2 1t: 100 GB/s"].get_color()) and l2.get_marker() == "s"
    assert entry["DRAM: hot set 256 MiB"].get_linestyle() == lines["gather D64 DRAM 1t: 10 GB/s"].get_linestyle()


def test_one_kernel_is_not_moved_and_the_axis_says_nothing_of_a_shift(tmp_path):
    rs = load_results(_sweep(tmp_path, kernels=["torch"]))
    ax = roofline_figure(rs.rows, rs.machines)[0].axes[0]
    ai = rs.rows[0]["arithmetic_intensity"]
    assert all(x == pytest.approx(ai) for c in _points(ax).values() for x, _y in c.get_offsets())
    assert "\n" not in ax.get_xlabel()


def _strip(folder, *, levels=False, caches=False):
    """Rewrite stored results as an older run would have left them: no memory_level, or no cache sizes."""
    path = folder / "synth.jsonl"
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    for rec in recs[1:] if levels else []:
        rec["derived"].pop("memory_level")
    path.write_text("".join(json.dumps(x) + "\n" for x in recs))
    if caches:
        stored = json.loads((folder / "machine.json").read_text())
        stored["fingerprint"]["caches"] = {}
        (folder / "machine.json").write_text(json.dumps(stored))
        recs[0]["fingerprint"]["caches"] = {}
        path.write_text("".join(json.dumps(x) + "\n" for x in recs))


def test_a_point_without_a_recorded_level_is_placed_by_its_bytes_or_left_unplaced(tmp_path):
    folder = _sweep(tmp_path / "a", kernels=["torch"])
    _strip(folder, levels=True)
    rs = load_results(folder)
    machine = rs.machines["sku-a"]
    assert {r["working_set"]: point_level(r, machine) for r in rs.rows} == LEVEL_OF_WS
    # a whole-table point (working_set "all", as dlrm and num_rows sweeps run): 1000 rows x 16 x 4 B = 62.5 KiB
    whole = {"working_set_bytes": None, "table_bytes": 64_000}
    assert point_level(whole, machine) == "L2"
    assert point_level({**whole, "memory_level": "DRAM"}, machine) == "DRAM"  # the runner's record wins
    folder = _sweep(tmp_path / "b", kernels=["torch"])
    _strip(folder, levels=True, caches=True)
    rs = load_results(folder)
    assert {point_level(r, rs.machines["sku-a"]) for r in rs.rows} == {"unplaced"}
    ax = roofline_figure(rs.rows, rs.machines)[0].axes[0]
    ((key, c),) = _points(ax).items()
    assert key == ("torch", "unplaced", "1t")
    assert c.get_paths()[0].vertices == pytest.approx(_marker_vertices(SHAPES["unplaced"]))
    (levels,) = [v for k, v in _legends(ax).items() if k.startswith("hot set in")]
    assert levels == ["unplaced (no level recorded, no cache sizes)"]


def test_compare_colours_the_machine_shapes_the_level_and_names_the_kernel_slots(tmp_path):
    a = _sweep(tmp_path / "a", kernels=["torch", "numba_w8"])
    b = _sweep(tmp_path / "b", kernels=["torch", "numba_w8"])
    sets = label_sides([load_results(a), load_results(b)], ["a", "b"])
    machines = {k: v for s in sets for k, v in s.machines.items()}
    rows = [r for s in sets for r in s.rows]
    ai = rows[0]["arithmetic_intensity"]
    ax = roofline_figure(rows, machines)[0].axes[0]
    points = _points(ax)
    assert len(points) == 2 * 2 * 3  # machine x kernel x level
    colours = {side: {to_hex(c.get_facecolor()[0]) for k, c in points.items() if k[0].startswith(side)}
               for side in ("A:", "B:")}  # fmt: skip
    assert all(len(v) == 1 for v in colours.values()) and colours["A:"] != colours["B:"]
    for (_name, level, _t), c in points.items():
        assert c.get_paths()[0].vertices == pytest.approx(_marker_vertices(SHAPES[level]))
    # four slots: torch on A and B, then numba_w8 on A and B, left to right, each a distinct x
    slot = {name: float(c.get_offsets()[0][0]) for (name, _lv, _t), c in points.items()}
    order = ["A: torch", "B: torch", "A: numba_w8", "B: numba_w8"]
    assert [slot[n] for n in order] == sorted(slot.values()) and len(set(slot.values())) == 4
    assert math.sqrt(slot["A: torch"] * slot["B: numba_w8"]) == pytest.approx(ai)  # centred on the true one
    # the kernel of each pair of slots is written at the foot of the column, between its two slots
    names = {t.get_text(): t.xy[0] for t in ax.texts}
    assert names["torch"] == pytest.approx(math.sqrt(slot["A: torch"] * slot["B: torch"]))
    assert names["numba_w8"] == pytest.approx(math.sqrt(slot["A: numba_w8"] * slot["B: numba_w8"]))
    # the two sides have the same roofs: drawn once each, in grey, which the legend says means both share it
    assert _legends(ax)["machine (colour of points and roofs)\ngrey roof: both share it"] == ["A", "B"]


@pytest.mark.parametrize(
    ("n", "text"),
    [
        (0, "0 B"),
        (1023, "1023 B"),
        (1023.6, "1 KiB"),  # rounds to 1024 B: one unit up, not '1024 B'
        (1024, "1 KiB"),
        (1536, "1.5 KiB"),
        (32 * 1024, "32 KiB"),
        (99.96 * 1024, "100 KiB"),
        (1000 * 1024, "1000 KiB"),
        (1023.4 * 1024, "1023 KiB"),
        (1023.9 * 1024, "1 MiB"),  # was '1024 KiB'
        ((1 << 20) - 1, "1 MiB"),
        (1 << 20, "1 MiB"),
        (3e7, "28.6 MiB"),
        (1023.7 * (1 << 20), "1 GiB"),
        (1 << 30, "1 GiB"),
        (3 << 40, "3 TiB"),
        (-2048, "-2 KiB"),
    ],
)
def test_format_bytes_names_one_size_one_way(n, text):
    assert format_bytes(n) == text


def test_labels_of_close_roofs_are_nudged_apart(tmp_path):
    """L2 at 110 and L3 at 100 GB/s: both labels sit at the left edge, closer than a line of text, so they
    printed over each other; the lower stays on its roof and the upper one is lifted clear of it."""
    from dataclasses import replace

    from profiler.ceilings import Ceiling

    l3 = Ceiling("triad", "bandwidth", "measured", level="L3", threads=1, gbps=100.0)
    ceilings = [replace(TRIAD_L2, gbps=110.0) if c is TRIAD_L2 else c for c in CEILINGS] + [l3]
    pts = [(bag_point("torch", working_set="512K"), 1e-5, ceilings[1])]
    rs = load_results(write_sku(tmp_path, "sku-a", "Synthetic CPU A", pts, ceilings=ceilings))
    fig = roofline_figure(rs.rows, rs.machines)[0]
    texts = {t.get_text(): t for t in fig.axes[0].texts}
    assert {"L2", "L3"} <= set(texts)
    for dpi in (fig.dpi, 120):  # as drawn, and as save_figure writes the PNG
        fig.set_dpi(dpi)
        fig.draw_without_rendering()
        l2, l3 = (texts[k].get_window_extent() for k in ("L2", "L3"))
        anchors = [fig.axes[0].transData.transform(texts[k].xy)[1] for k in ("L2", "L3")]
        assert anchors[0] - anchors[1] < l2.height  # at their roofs alone the two would overprint
        assert not l2.overlaps(l3) and l2.y0 > l3.y1
    assert texts["L3"].xyann == (0, 3) and texts["L2"].xyann[1] > 3
