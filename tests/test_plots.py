"""Plots, speedups and SKU comparison from synthetic results: files written, roofline math, ratios."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from matplotlib.colors import to_hex, to_rgb
from synthetic_results import CEILINGS, bag_point, write_sku

from profiler.cli import main
from profiler.compare import align, format_ratio_tables, write_comparison
from profiler.plot_roofline import above_roof, roofline_figure
from profiler.plot_style import save_figure
from profiler.plot_throughput import throughput_figure
from profiler.plots import make_plot, plot_settings
from profiler.results import band, group_by, load_results, select
from profiler.speedup import SpeedupTable, format_speedup_table, speedup_figure, speedups
from profiler.sweep_spec import Point

TRIAD_L1, TRIAD_L2, _, GATHER, _, _ = CEILINGS


def _one_sku(tmp_path, **kw):
    """torch and numba_w8 over three working sets; numba_w8 in DRAM is 2x torch."""
    pts = []
    for ws, ceiling, t in (("8K", TRIAD_L1, 1e-5), ("512K", TRIAD_L2, 2e-5), ("256M", GATHER, 2e-4)):
        pts.append((bag_point("torch", working_set=ws), t, ceiling))
        pts.append((bag_point("numba_w8", working_set=ws), t / 2, ceiling))
    pts.append((bag_point("torch_naive", working_set="256M"), 8e-4, GATHER))
    return write_sku(tmp_path, "sku-a", "Synthetic CPU A", pts, **kw)


def test_rows_are_flat_and_grouped_by_fields(tmp_path):
    folder = _one_sku(tmp_path)
    rs = load_results(folder)
    assert len(rs.rows) == 7 and list(rs.machines) == ["sku-a"]
    row = select(rs.rows, ["kernel=torch", "working_set=8K"])[0]
    assert row["machine_name"] == "Synthetic CPU A (2 cpus)" and row["sku_id"] == "sku-a"
    assert (row["median_s"], row["embedding_dim"], row["working_set_bytes"]) == (1e-5, 16, 8 << 10)
    assert row["p25_s"] == pytest.approx(0.95e-5) and row["p75_s"] == pytest.approx(1.1e-5)
    lo, hi = band(row, "gbps")  # a rate: the slow quartile is the low edge
    assert lo == pytest.approx(row["gbps"] / 1.1) and hi == pytest.approx(row["gbps"] / 0.95)
    assert [k for (k,) in group_by(rs.rows, ["kernel"])] == ["torch", "numba_w8", "torch_naive"]
    with pytest.raises(ValueError, match="not a field"):
        select(rs.rows, ["colour=red"])


def test_contended_points_can_be_left_out(tmp_path):
    key = bag_point("torch", working_set="8K").key()
    folder = _one_sku(tmp_path, contended_keys=frozenset({key}))
    assert len(load_results(folder).rows) == 7
    rs = load_results(folder, include_contended=False)
    assert len(rs.rows) == 6 and rs.excluded_contended == 1 and key not in {r["key"] for r in rs.rows}
    # kept, a contended point is drawn hollow (a white centre over its kernel's marker), and the legend says so
    rs = load_results(folder)
    fig, _ = roofline_figure(rs.rows, rs.machines)
    ax = fig.axes[0]
    hollow = [c for c in ax.collections if c.get_gid() == "torch L1d 1t contended"]
    assert len(hollow) == 1 and len(hollow[0].get_offsets()) == 1
    row = next(r for r in rs.rows if r["key"] == key)
    (under,) = [c for c in ax.collections if c.get_gid() == "torch L1d 1t"]  # its kernel's marker, dodged
    assert tuple(hollow[0].get_offsets()[0]) == pytest.approx(tuple(under.get_offsets()[0]))
    assert hollow[0].get_offsets()[0][1] == pytest.approx(row["gflops"])
    assert "hollow: measured under contention" in _legend_texts(ax)
    # and in the throughput lines, at the same point's x and y
    fig, _ = throughput_figure(rs.rows, rs.machines, x="working_set_bytes")
    (hollow,) = [line for line in fig.axes[0].get_lines() if line.get_gid() == "torch contended"]
    assert (hollow.get_xdata()[0], hollow.get_ydata()[0]) == pytest.approx((row["working_set_bytes"], row["gbps"]))
    assert "hollow: measured under contention" in [t.get_text() for t in fig.axes[0].get_legend().get_texts()]


def test_roofline_places_a_point_at_its_intensity_and_gflops(tmp_path):
    # B=64 bags, L=4, D=16: reads 256 rows x 64 B + 256 x 8 B indices + 65 x 8 B offsets, writes 64 x 64 B
    bytes_moved = 256 * 64 + 256 * 8 + 65 * 8 + 64 * 64
    flops = 256 * 16
    folder = write_sku(tmp_path, "sku-a", "CPU", [(bag_point(working_set="8K"), 1e-6, TRIAD_L1)])
    rs = load_results(folder)
    fig, flagged = roofline_figure(rs.rows, rs.machines)
    (x, y), = fig.axes[0].collections[0].get_offsets()  # fmt: skip
    assert x == pytest.approx(flops / bytes_moved)
    assert y == pytest.approx(flops / 1e-6 / 1e9)
    assert flagged == []  # 22.8 GB/s under a 200 GB/s roof
    # the title says what the points share: the sweep, the shape bag_point gives them, the threads measured
    assert fig.axes[0].get_title().splitlines()[1] == "sweep synth: B=64 E=1000 D=16 L=4 T=1; 1 thread"


def test_memory_roofs_bend_exactly_at_the_compute_roof(tmp_path):
    # triad L1d 200 GB/s meets the 100 GFLOP/s GEMM roof at 100 / 200 = 0.5 FLOP/byte; DRAM 20 GB/s at 5
    folder = write_sku(tmp_path, "sku-a", "CPU", [(bag_point(working_set="8K"), 1e-6, TRIAD_L1)])
    rs = load_results(folder)
    fig, _ = roofline_figure(rs.rows, rs.machines)
    lines = {ln.get_label(): ln.get_xydata() for ln in fig.axes[0].get_lines()}
    for label, knee in (("triad L1d 1t: 200 GB/s", 0.5), ("triad DRAM 1t: 20 GB/s", 5.0)):
        xy = lines[label]
        assert any(x == pytest.approx(knee) and y == pytest.approx(100.0) for x, y in xy)
        assert all(y <= 100.0 + 1e-9 for _, y in xy) and max(y for x, y in xy if x < knee) < 100.0


def test_a_point_above_its_roof_is_flagged_and_one_below_is_not(tmp_path, capsys):
    bytes_moved = 256 * 64 + 256 * 8 + 65 * 8 + 64 * 64
    over = bag_point("over", working_set="256M")
    under = bag_point("under", working_set="256M")
    t_over = bytes_moved / 15e9  # 15 GB/s against a 10 GB/s gather roof
    t_under = bytes_moved / 8e9
    folder = write_sku(tmp_path, "sku-a", "CPU", [(over, t_over, GATHER), (under, t_under, GATHER)])
    rs = load_results(folder)
    flagged = above_roof(rs.rows, rs.machines)
    assert [f.row["kernel"] for f in flagged] == ["over"]
    assert flagged[0].ratio == pytest.approx(1.5)
    out = tmp_path / "roof.png"
    assert main(["plot", str(folder), "--kind", "roofline", "--out", str(out), "--labels"]) == 0
    err = capsys.readouterr().err
    assert "over" in err and "accounting error" in err and "under" not in err
    assert out.stat().st_size > 0
    slowed = replace(GATHER, contended=True)  # the same roof, measured while a neighbour competed
    folder = write_sku(tmp_path / "b", "sku-a", "CPU", [(over, t_over, slowed)], ceilings=[slowed])
    assert main(["plot", str(folder), "--kind", "roofline", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "1.50x its roof" in err and "its roof was measured under contention" in err
    assert "over B=64 E=1000 D=16 L=4 T=1 (synth, point " in err  # named by its shape, the hash kept for lookups
    assert "accounting error" not in err


def test_plot_writes_png_and_svg_without_a_suffix(tmp_path, capsys):
    folder = _one_sku(tmp_path)
    for kind in ("roofline", "throughput", "speedup"):
        assert main(["plot", str(folder / "synth.jsonl"), "--kind", kind, "--out", str(tmp_path / kind)]) == 0
        for suffix in (".png", ".svg"):
            assert (tmp_path / f"{kind}{suffix}").stat().st_size > 1000
    assert "speedup over torch" in capsys.readouterr().out
    assert main(["plot", str(folder), "--kind", "speedup", "--out", str(tmp_path / "x.pdf")]) == 2
    assert main(["plot", str(tmp_path / "missing"), "--kind", "roofline", "--out", str(tmp_path / "y")]) == 2


def test_throughput_defaults_to_the_varying_axis_and_draws_bands(tmp_path):
    rs = load_results(_one_sku(tmp_path))
    settings = plot_settings(rs.rows, None)
    assert (settings["x"], settings["y"], settings["kinds"]) == ("working_set_bytes", "gbps",
                                                                  ["roofline", "throughput", "speedup"])  # fmt: skip
    res = make_plot("throughput", rs.rows, rs.machines, tmp_path / "t.png", settings=settings)
    assert res.paths == [tmp_path / "t.png"] and res.paths[0].stat().st_size > 1000
    with pytest.raises(ValueError, match="no ok points"):
        make_plot("throughput", rs.rows, rs.machines, tmp_path / "u.png", settings={**settings, "y": "nope"})


def test_speedup_values_match_hand_computed_ratios(tmp_path):
    rs = load_results(_one_sku(tmp_path))
    table = speedups(rs.rows, "torch")
    assert table.labels == ["working_set=8K", "working_set=512K", "working_set=256M"]
    assert table.values[("working_set=8K", "numba_w8")] == pytest.approx(2.0)
    assert table.values[("working_set=256M", "torch_naive")] == pytest.approx(2e-4 / 8e-4)
    assert table.values[("working_set=8K", "torch_naive")] is None  # never measured there
    assert table.geomean("numba_w8") == pytest.approx(2.0)
    text = format_speedup_table(table)
    assert "2.00x" in text and "0.25x" in text and "geomean" in text
    assert speedups(rs.rows, "numba_w8").values[("working_set=8K", "torch")] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="kernels here: torch, numba_w8, torch_naive"):
        speedups(rs.rows, "cuda")


def test_compare_aligns_points_by_key_across_skus(tmp_path, capsys):
    a = _one_sku(tmp_path)
    cases = (("8K", 5e-6, TRIAD_L1), ("256M", 5e-5, GATHER))
    shared = [(bag_point("torch", working_set=ws), t, c) for ws, t, c in cases]
    only_b = [(bag_point("torch", working_set="512K", embedding_dim=128), 1e-5, TRIAD_L2)]
    b = write_sku(tmp_path, "sku-b", "Synthetic CPU B", shared + only_b)
    sets = [load_results(a), load_results(b)]
    aligned, skus = align(sets)
    assert skus == ["sku-a", "sku-b"]
    assert {x.key for x in aligned} == {p.key() for p, _, _ in shared}
    by_ws = {x.rows["sku-a"]["working_set"]: x.ratio("sku-a", "sku-b") for x in aligned}
    assert by_ws == pytest.approx({"8K": 1e-5 / 5e-6, "256M": 2e-4 / 5e-5})
    text = format_ratio_tables(aligned, skus, {k: v for s in sets for k, v in s.machines.items()})
    assert "Synthetic CPU A (2 cpus)" in text and "Synthetic CPU B (2 cpus)" in text
    assert "2.00x" in text and "4.00x" in text
    paths, _notes = write_comparison(sets, tmp_path / "cmp")
    assert {p.name for p in paths} >= {"compare_roofline.png", "compare_synth_throughput.svg"}
    assert all(p.stat().st_size > 1000 for p in paths)
    assert main(["compare", str(a), str(b), "--out", str(tmp_path / "cli")]) == 0
    assert "4.00x" in capsys.readouterr().out
    assert main(["compare", str(a), str(a)]) == 2


def test_save_figure_rejects_unknown_formats(tmp_path):
    rs = load_results(_one_sku(tmp_path))
    fig, _ = roofline_figure(rs.rows, rs.machines)
    assert [p.name for p in save_figure(fig, tmp_path / "r")] == ["r.png", "r.svg"]
    with pytest.raises(ValueError, match=r"\.jpg"):
        save_figure(fig, tmp_path / "r.jpg")


def test_memory_roofs_bend_at_the_measured_compute_roof_not_the_derived_peak(tmp_path):
    folder = write_sku(tmp_path, "sku-a", "CPU", [(bag_point(working_set="8K"), 1e-6, TRIAD_L1)])
    rs = load_results(folder)
    fig, _ = roofline_figure(rs.rows, rs.machines)
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    l1 = next(line for label, line in lines.items() if label.startswith("triad L1d"))
    # 200 GB/s x intensity rises until 100 GFLOP/s (the measured gemm), never to the derived 400
    assert max(l1.get_ydata()) == pytest.approx(100.0)
    derived = next(line for label, line in lines.items() if "(derived)" in label)
    assert derived.get_linestyle() == "--" and set(derived.get_ydata()) == {400.0}


def test_a_derived_peak_under_a_measured_roof_says_why_in_its_label(tmp_path):
    """A VM reports its nominal clock: a peak derived from it can sit under the GEMM the cores reached."""
    low = replace(CEILINGS[5], gflops=80.0, method="1 cores x 2596 MHz x 2 units x 8 lanes x 2 FLOP (AMD Zen 4: ...)")
    folder = write_sku(tmp_path, "sku-a", "CPU", [(bag_point(working_set="8K"), 1e-6, TRIAD_L1)],
                       ceilings=[*CEILINGS[:5], low])  # fmt: skip
    rs = load_results(folder)
    fig, _ = roofline_figure(rs.rows, rs.machines)
    (label,) = [line.get_label() for line in fig.axes[0].get_lines() if "derived" in line.get_label()]
    assert label == ("fma_peak float32 1t: 80 GFLOP/s (derived;\nbelow measured gemm 1t 100: "
                     "the cores run faster than its clock)")  # fmt: skip
    # a width the fingerprint could not name may be the low one
    assumed = replace(low, method="1 cores x 2596 MHz x 2 units x 8 lanes x 2 FLOP (assumed from the ISA flags)")
    folder = write_sku(tmp_path / "b", "sku-a", "CPU", [(bag_point(working_set="8K"), 1e-6, TRIAD_L1)],
                       ceilings=[*CEILINGS[:5], assumed])  # fmt: skip
    rs = load_results(folder)
    fig, _ = roofline_figure(rs.rows, rs.machines)
    (label,) = [line.get_label() for line in fig.axes[0].get_lines() if "derived" in line.get_label()]
    assert label.endswith("(derived;\nbelow measured gemm 1t 100: its clock or assumed width is low)")


def test_compare_names_the_backend_of_all_to_all_points(tmp_path):
    point = Point(target="all_to_all", world_size=2, batch_size=64, num_rows=1000, embedding_dim=16, sweep="a2a")
    sets = []
    for sku, t in (("sku-a", 2e-3), ("sku-b", 1e-3)):
        folder = write_sku(tmp_path, sku, f"Synthetic {sku}", [(point, t, None)], sweep="a2a")
        path = folder / "a2a.jsonl"
        lines = [json.loads(x) for x in path.read_text().splitlines()]
        for rec in lines[1:]:
            rec["derived"]["backend"] = "gloo"  # what the runner records for a collective point
        path.write_text("".join(json.dumps(x) + "\n" for x in lines))
        sets.append(load_results(folder))
    aligned, skus = align(sets)
    text = format_ratio_tables(aligned, skus, {k: v for s in sets for k, v in s.machines.items()})
    row = next(line for line in text.splitlines() if "2.00x" in line and "geomean" not in line)
    assert "gloo" in row and "torch" not in row


def test_a_roofline_without_ceilings_says_so_in_the_figure_and_on_stderr(tmp_path, capsys):
    bare = write_sku(tmp_path, "sku-a", "CPU", [(bag_point(working_set="8K"), 1e-6, None)], ceilings=[])
    out = tmp_path / "roof.png"
    assert main(["plot", str(bare), "--kind", "roofline", "--out", str(out)]) == 0
    assert (
        "note: sku-a has no measured ceilings: the roofline shows its points without roofs" in capsys.readouterr().err
    )
    rs = load_results(bare)
    fig, _ = roofline_figure(rs.rows, rs.machines)
    (text,) = fig.axes[0].texts
    assert text.get_text().startswith("no measured ceilings for this machine: roofs not drawn")
    assert fig.axes[0].get_lines() == []  # no roof line at all
    measured = write_sku(tmp_path / "m", "sku-b", "CPU", [(bag_point(working_set="8K"), 1e-6, TRIAD_L1)])
    rs = load_results(measured)
    fig, _ = roofline_figure(rs.rows, rs.machines)
    assert fig.axes[0].get_lines() and not any("no measured" in t.get_text() for t in fig.axes[0].texts)
    assert main(["plot", str(measured), "--kind", "roofline", "--out", str(out)]) == 0
    assert "no measured ceilings" not in capsys.readouterr().err


def _legend_texts(ax):
    """The entries of every legend of the axes (roofs, kernels, levels), top to bottom."""
    from matplotlib.legend import Legend

    return [t.get_text() for leg in ax.get_children() if isinstance(leg, Legend) for t in leg.get_texts()]


def _points_of(ax, kernel):
    """The scatter collections of one kernel's points (labelled with its name)."""
    return [c for c in ax.collections if c.get_label() == kernel]


def test_a_kernel_has_one_colour_and_marker_in_every_figure(tmp_path):
    rs = load_results(_one_sku(tmp_path))  # torch, numba_w8, torch_naive (only at 256M)
    fig_all, _ = roofline_figure(rs.rows, rs.machines)
    fig_w8, _ = roofline_figure(select(rs.rows, ["kernel=numba_w8"]), rs.machines)
    w8s_all, w8s_alone = _points_of(fig_all.axes[0], "numba_w8"), _points_of(fig_w8.axes[0], "numba_w8")
    assert len(w8s_all) == len(w8s_alone) == 3  # one marker per level (L1d, L2, DRAM), the same in both
    assert len({to_hex(c.get_facecolor()[0]) for c in w8s_all + w8s_alone}) == 1
    for a, b in zip(w8s_all, w8s_alone, strict=True):
        assert a.get_gid() == b.get_gid() and (a.get_paths()[0].vertices == b.get_paths()[0].vertices).all()
    w8_all = w8s_all[0]
    roof_colours = {k: to_hex(_points_of(fig_all.axes[0], k)[0].get_facecolor()[0]) for k in ("torch", "torch_naive")}
    assert len({*roof_colours.values(), to_hex(w8_all.get_facecolor()[0])}) == 3
    # speedup bars leave the baseline out: the others must not shift into its colour
    table = speedups(rs.rows, "torch")
    bars = {c.get_label(): to_hex(c.patches[0].get_facecolor()) for c in speedup_figure(table).axes[0].containers}
    assert bars["torch_naive"] == roof_colours["torch_naive"]
    assert bars["numba_w8"] == to_hex(w8_all.get_facecolor()[0])
    fig_t, _ = throughput_figure(select(rs.rows, ["kernel=torch_naive"]), rs.machines, x="working_set_bytes")
    lines = {line.get_label(): line for line in fig_t.axes[0].get_lines()}
    assert to_hex(lines["torch_naive"].get_color()) == roof_colours["torch_naive"]


def test_throughput_ceiling_lines_use_no_kernel_colour(tmp_path):
    rs = load_results(_one_sku(tmp_path))
    fig, _ = throughput_figure(rs.rows, rs.machines, x="working_set_bytes")
    ax = fig.axes[0]
    kernel_colours = {to_rgb(line.get_color()) for line in ax.get_lines() if line.get_label() in
                      ("torch", "numba_w8", "torch_naive")}  # fmt: skip
    ceilings = [line for line in ax.get_lines() if set(line.get_xdata()) == {0, 1}]  # axhline: x in axes units
    assert len(ceilings) == 3  # the triad L1d, triad L2 and gather roofs the points were judged against
    for line in ceilings:
        r, g, b = to_rgb(line.get_color())
        assert r == g == b and (r, g, b) not in kernel_colours  # a grey, never a kernel's colour


def test_a_failed_kernel_is_drawn_as_failed_not_as_zero(tmp_path):
    pts = [(bag_point("torch", working_set="8K"), 1e-5, TRIAD_L1),
           (bag_point("numba_w8", working_set="8K"), None, None),  # failed
           (bag_point("torch", working_set="512K"), 2e-5, TRIAD_L2),
           (bag_point("numba_w8", working_set="512K"), 1e-5, TRIAD_L2)]  # fmt: skip
    rs = load_results(write_sku(tmp_path, "sku-a", "CPU", pts))
    table = speedups(rs.rows, "torch")
    ax = speedup_figure(table).axes[0]
    (solid,) = [p for p in ax.patches if p.get_fill()]  # one real bar, no zero-height one
    assert (solid.get_y(), solid.get_y() + solid.get_height()) == pytest.approx((1.0, 2.0))  # from 1x up to 2x
    assert ax.get_yscale() == "log"  # a 2x speedup and a 2x slowdown stand equally far from 1x
    (stub,) = [p for p in ax.patches if not p.get_fill()]
    assert stub.get_hatch() == "//" and stub.get_x() + stub.get_width() / 2 == pytest.approx(0.0)
    assert [t.get_text() for t in ax.texts] == ["failed"]
    assert table.why_missing("working_set=8K", "numba_w8") == "failed"


def test_a_failed_cell_of_the_heat_map_is_grey_and_says_failed(tmp_path):
    pts = []
    for b in range(1, 26):  # 25 points x 2 kernels > 48 bars: a heat map
        pts.append((bag_point("torch", batch_size=b * 8), 1e-5, TRIAD_L1))
        pts.append((bag_point("numba_w8", batch_size=b * 8), None if b == 3 else 1e-5, TRIAD_L1))
        pts.append((bag_point("numba_w4", batch_size=b * 8), 5e-6, TRIAD_L1))
    rs = load_results(write_sku(tmp_path, "sku-a", "CPU", pts))
    ax = speedup_figure(speedups(rs.rows, "torch")).axes[0]
    grid = ax.images[0].get_array()
    col = [t.get_text() for t in ax.get_xticklabels()].index("numba_w8")
    assert grid.mask[2, col] and grid.mask.sum() == 1  # the failed cell is masked (drawn grey), not log2(1) = 0
    assert ax.images[0].get_cmap().get_bad()[:3] == pytest.approx((0.827, 0.827, 0.827), abs=1e-3)
    assert [t.get_text() for t in ax.texts].count("failed") == 1


def _threads_sku(tmp_path):
    """torch at 1 and 2 threads; the machine measured triad L1d and gemm at both counts."""
    t2 = [replace(TRIAD_L1, threads=2, gbps=400.0), replace(CEILINGS[4], threads=2, gflops=200.0)]
    ceilings = [TRIAD_L1, CEILINGS[4], *t2]
    pts = [(bag_point("torch", working_set="8K"), 1e-6, TRIAD_L1),
           (bag_point("torch", working_set="8K", threads=2), 5e-7, t2[0])]  # fmt: skip
    folder = write_sku(tmp_path, "sku-a", "CPU", pts, ceilings=ceilings)
    path = folder / "synth.jsonl"
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    for rec in recs[1:]:
        rec["measurement"]["threads"] = rec["point"]["threads"] or 1  # what the runner records
    path.write_text("".join(json.dumps(x) + "\n" for x in recs))
    return load_results(folder)


def test_a_roofline_of_two_thread_counts_draws_the_roofs_of_each(tmp_path):
    rs = _threads_sku(tmp_path)
    assert sorted(r["measured_threads"] for r in rs.rows) == [1, 2]
    fig, _ = roofline_figure(rs.rows, rs.machines)
    ax = fig.axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    # each memory roof bends at the gemm of its own thread count
    assert max(lines["triad L1d 1t: 200 GB/s"].get_ydata()) == pytest.approx(100.0)
    assert max(lines["triad L1d 2t: 400 GB/s"].get_ydata()) == pytest.approx(200.0)
    assert "gemm float32 2t: 200 GFLOP/s" in lines and "gemm float32 1t: 100 GFLOP/s" in lines
    legend = _legend_texts(ax)
    assert "1 thread" in legend and "2 threads" in legend
    one, two = (c for c in ax.collections if c.get_gid() in ("torch L1d 1t", "torch L1d 2t"))
    # both in L1d: the same shape, and the thread count in the marker's size (more threads, larger)
    assert (one.get_paths()[0].vertices == two.get_paths()[0].vertices).all()
    assert one.get_sizes()[0] < two.get_sizes()[0]
    # one thread count: no per-count legend, roofs as before
    fig1, _ = roofline_figure([r for r in rs.rows if r["measured_threads"] == 1], rs.machines)
    legend1 = _legend_texts(fig1.axes[0])
    assert "torch" in legend1 and not any("thread" in t for t in legend1)


def test_the_same_plot_drawn_twice_gives_the_same_svg_bytes(tmp_path):
    rs = load_results(_one_sku(tmp_path))
    a, b = (save_figure(roofline_figure(rs.rows, rs.machines)[0], tmp_path / f"{n}.svg")[0] for n in "ab")
    assert a.read_bytes() == b.read_bytes() and b"<dc:date>" not in a.read_bytes()


def test_a_point_within_the_tolerance_of_its_roof_is_not_flagged(tmp_path):
    bytes_moved = 256 * 64 + 256 * 8 + 65 * 8 + 64 * 64
    near = bag_point("near", working_set="256M")  # 10.3 GB/s on the 10 GB/s gather roof: 3% above, noise
    far = bag_point("far", working_set="256M")  # 10.7 GB/s: 7% above, past the 5% tolerance
    folder = write_sku(tmp_path, "sku-a", "CPU", [(near, bytes_moved / 10.3e9, GATHER), (far, bytes_moved / 10.7e9,
                                                                                        GATHER)])  # fmt: skip
    rs = load_results(folder)
    assert [f.row["kernel"] for f in above_roof(rs.rows, rs.machines)] == ["far"]
    assert sorted(f.row["kernel"] for f in above_roof(rs.rows, rs.machines, tolerance=0.0)) == ["far", "near"]


def test_roofs_are_taken_at_the_nearest_thread_count_the_higher_on_a_tie():
    from profiler.ceilings import Ceiling
    from profiler.plot_roofline import roofs_for
    from profiler.results import Machine

    machine = Machine("sku", {}, tuple(Ceiling("triad", "bandwidth", "measured", level="L1d", threads=t,
                                               gbps=100.0 * t) for t in (1, 3, 8)))  # fmt: skip

    def drawn(threads: int) -> list[str]:
        return [c.key for c in roofs_for(machine, [{"device": "cpu", "measured_threads": threads}])]

    assert drawn(2) == ["triad/L1d/3t/float32"]  # 1 and 3 are both one away: the higher, as the runner picks
    assert drawn(6) == ["triad/L1d/8t/float32"] and drawn(1) == ["triad/L1d/1t/float32"]


def test_select_filters_match_whole_values_only():
    rows = [{"kernel": k, "batch_size": b} for k, b in [("numba_w1", 64), ("numba_w16", 64), ("torch", 640)]]
    assert select(rows, ["kernel=numba_w1"]) == [rows[0]]
    assert select(rows, ["batch_size=64"]) == rows[:2]
    assert select(rows, ["kernel=numba"]) == []


def test_speedup_geomean_and_why_a_point_has_no_value(tmp_path):
    table = SpeedupTable("torch", ["k"], ["a", "b", "c"], {("a", "k"): 2.0, ("b", "k"): 8.0, ("c", "k"): None})
    assert table.geomean("k") == pytest.approx(4.0)  # sqrt(2 x 8); the failed point left out
    rs = load_results(_one_sku(tmp_path))
    assert speedups(rs.rows, "torch").why_missing("working_set=8K", "torch_naive") == "not run"


def test_a_point_field_wins_over_a_derived_value_of_the_same_name(tmp_path):
    path = tmp_path / "r.jsonl"
    rec = {"kind": "point", "key": "p", "status": "ok", "point": Point(kernel="torch").to_dict(),
           "derived": {"kernel": "bogus", "gbps": 3.0}, "measurement": {"median_s": 1e-3}}  # fmt: skip
    path.write_text(json.dumps({"kind": "header", "sweep": "s"}) + "\n" + json.dumps(rec) + "\n")
    row = load_results(path).rows[0]
    assert row["kernel"] == "torch" and row["gbps"] == 3.0


def test_compare_throughput_shares_a_cache_line_per_level_the_machines_agree_on(tmp_path):
    """Two machines that differ only in L3: one shared L1d and L2 line each, tagged 'A, B', and one L3 line
    per machine; before, any difference drew every level twice, the labels printed over each other."""
    pts = [(bag_point("torch", working_set=ws), t, c) for ws, t, c in (("8K", 1e-5, TRIAD_L1), ("256M", 2e-4, GATHER))]
    a = write_sku(tmp_path, "sku-a", "Synthetic CPU A", pts)
    b = write_sku(tmp_path, "sku-b", "Synthetic CPU B", pts)
    stored = json.loads((b / "machine.json").read_text())
    stored["fingerprint"]["caches"]["L3"]["size_bytes"] = 16 << 20
    (b / "machine.json").write_text(json.dumps(stored))
    sets = [load_results(a), load_results(b)]
    rows = [r for s in sets for r in s.rows]
    machines = {k: v for s in sets for k, v in s.machines.items()}
    fig, _ = throughput_figure(rows, machines, x="working_set_bytes")
    texts = [t.get_text() for t in fig.axes[0].texts if "KiB" in t.get_text() or "MiB" in t.get_text()]
    assert sorted(texts) == ["A, B: L1d 32 KiB", "A, B: L2 1 MiB", "A: L3 32 MiB", "B: L3 16 MiB"]


def test_compare_throughput_shares_each_ceiling_the_machines_agree_on(tmp_path):
    """Two machines that differ only in their gather ceiling (10 and 12 GB/s): the L1d and L2 triad ceilings
    drawn once each in grey, tagged 'A, B', the gather once per machine in its colour, and the two gather
    labels (anchored a few pixels apart at the right edge) nudged apart. Before, one differing ceiling drew
    every ceiling once per machine, two lines on one spot and their labels printed over each other."""
    from matplotlib.colors import to_hex

    from profiler.plot_style import SHARED_TINT

    def side(name, gather):
        ceilings = [gather if c.name == "gather" else c for c in CEILINGS]
        pts = [(bag_point("torch", working_set=ws), t, c)
               for ws, t, c in (("8K", 1e-5, TRIAD_L1), ("512K", 2e-5, TRIAD_L2), ("256M", 2e-4, gather))]  # fmt: skip
        return load_results(write_sku(tmp_path, name, f"Synthetic CPU {name}", pts, ceilings=ceilings))

    sets = [side("sku-a", GATHER), side("sku-b", replace(GATHER, gbps=12.0))]
    rows = [r for s in sets for r in s.rows]
    machines = {k: v for s in sets for k, v in s.machines.items()}
    fig, _ = throughput_figure(rows, machines, x="working_set_bytes", y="gbps")
    ax = fig.axes[0]
    texts = {t.get_text(): t for t in ax.texts if t.get_text().endswith("GB/s")}
    assert sorted(texts) == ["A, B: triad L1d 1t 200 GB/s", "A, B: triad L2 1t 100 GB/s",
                             "A: gather D64 DRAM 1t 10 GB/s", "B: gather D64 DRAM 1t 12 GB/s"]  # fmt: skip
    lines = [line for line in ax.get_lines() if set(line.get_xdata()) == {0, 1}]  # axhline: x in axes units
    assert sorted(line.get_gid() for line in lines) == sorted(texts)  # one line per label: none drawn twice
    data = {line.get_label(): to_hex(line.get_color()) for line in ax.get_lines() if line.get_label()[1:3] == ": "}
    assert data["A: torch"] != data["B: torch"]
    for line in lines:
        tag = line.get_gid().split(":")[0]
        want = to_hex(SHARED_TINT) if tag == "A, B" else data[f"{tag}: torch"]
        assert to_hex(line.get_color()) == want == to_hex(texts[line.get_gid()].get_color()), line.get_gid()
    # the gather labels' anchors are closer than a label is tall: only the nudge keeps them apart
    fig.draw_without_rendering()
    a, b = texts["A: gather D64 DRAM 1t 10 GB/s"], texts["B: gather D64 DRAM 1t 12 GB/s"]
    anchors = [ax.transData.transform((1, t.xy[1]))[1] for t in (a, b)]
    assert anchors[1] - anchors[0] < a.get_window_extent().height
    boxes = {k: t.get_window_extent() for k, t in texts.items()}
    assert [(x, y) for x in boxes for y in boxes if x < y and boxes[x].overlaps(boxes[y])] == []


def test_speedup_axis_says_which_way_is_faster(tmp_path):
    table = speedups(load_results(_one_sku(tmp_path)).rows, "torch")
    ax = speedup_figure(table).axes[0]
    assert ax.get_ylabel() == "speedup over torch (log scale; > 1x: faster than torch)"
