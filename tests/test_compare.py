"""`dlrmbench compare`: two runs of one SKU are told apart by folder, the same folder twice is refused,
the ratio column is named for what it holds (time on A / time on B), each kernel gets its own geomean,
a working set that resolves to different bytes on the two sides says so in its row, and the roofline draws
a roof the machines agree on once (tagged 'A, B') and one they differ on per machine."""

from __future__ import annotations

import json

import pytest
from matplotlib.legend import Legend
from synthetic_results import CEILINGS, bag_point, write_sku

from profiler.cli import main
from profiler.compare import align, format_ratio_tables, label_sides, write_comparison
from profiler.plot_roofline import roofline_figure
from profiler.plot_style import SHARED_TINT
from profiler.plot_throughput import throughput_figure
from profiler.results import load_results

TRIAD_L1, _, _, GATHER, _, _ = CEILINGS


def _run(root, sku, cpu, t_8k, t_256m):
    """One run of torch at an 8 KiB and a 256 MiB working set, with the given median times."""
    pts = [
        (bag_point("torch", working_set="8K"), t_8k, TRIAD_L1),
        (bag_point("torch", working_set="256M"), t_256m, GATHER),
    ]
    return write_sku(root, sku, cpu, pts)


def test_two_runs_of_one_sku_are_compared_and_labelled_by_folder(tmp_path, capsys):
    before = _run(tmp_path / "before", "sku-a", "Synthetic CPU A", 1e-5, 2e-4)
    after = _run(tmp_path / "after", "sku-a", "Synthetic CPU A", 5e-6, 5e-5)  # 2x and 4x faster
    out = tmp_path / "cmp"
    assert main(["compare", str(before), str(after), "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert f"A = Synthetic CPU A (2 cpus) [sku-a] from {before}\n" in text
    assert f"B = Synthetic CPU A (2 cpus) [sku-a] from {after}\n" in text
    assert "tA/tB = time on A / time on B (> 1: B is faster than A); 2 aligned points" in text
    lines = text.splitlines()
    head = next(line for line in lines if line.startswith("point"))
    assert head.split() == ["point", "kernel", "A", "µs", "A", "GB/s", "B", "µs", "B", "GB/s", "tA/tB"]
    # 1e-5 s = 10.00 µs, 5e-6 s = 5.000 µs (4 significant figures); each moves 18952 + 4096 = 23048 bytes:
    # 2.30 GB/s on A, 4.61 on B
    row_8k = next(line for line in lines if line.startswith("ws=8K")).split()
    assert row_8k[1:] == ["torch", "10.00", "2.30", "5.000", "4.61", "2.00x"]
    assert "ws " not in text and "note:" not in text  # same bytes on both sides: nothing to flag
    assert "4.00x" in text
    assert sorted(p.name for p in out.iterdir()) == [
        "compare_roofline.png", "compare_roofline.svg", "compare_synth_throughput.png",
        "compare_synth_throughput.svg",
    ]  # fmt: skip


def test_plots_of_one_sku_twice_name_each_folder(tmp_path):
    before = _run(tmp_path / "before", "sku-a", "Synthetic CPU A", 1e-5, 2e-4)
    after = _run(tmp_path / "after", "sku-a", "Synthetic CPU A", 5e-6, 5e-5)
    sets = label_sides([load_results(before), load_results(after)], ["runs/before", "runs/after"])
    assert [list(s.machines) for s in sets] == [["sku-a @ runs/before"], ["sku-a @ runs/after"]]
    machines = {k: v for s in sets for k, v in s.machines.items()}
    aligned, _skus = align(sets)
    rows = [r for a in aligned for r in a.rows.values()]
    # one machine per title line: on one line the two names would be 91 characters, clipped in the figure
    names = "A = Synthetic CPU A (2 cpus) from runs/before\nB = Synthetic CPU A (2 cpus) from runs/after"
    fig, _ = roofline_figure(rows, machines)
    assert fig.axes[0].get_title().startswith(f"Roofline: {names}\n")

    legend = [t.get_text() for leg in fig.axes[0].get_children() if isinstance(leg, Legend) for t in leg.get_texts()]
    assert "A" in legend and "B" in legend  # colour is the machine; its points are labelled 'A: torch'
    points = [c for c in fig.axes[0].collections if not c.get_gid().startswith("roof mark")]
    assert {c.get_label() for c in points} == {"A: torch", "B: torch"}
    fig, _ = throughput_figure(rows, machines, x="working_set_bytes", y="gbps")
    assert f"\n{names}\nsweep synth: " in fig._suptitle.get_text()
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()][-2:] == ["A: torch", "B: torch"]
    # write_comparison labels raw sets itself, by the folder their files share
    paths, _ = write_comparison([load_results(before), load_results(after)], tmp_path / "cmp")
    assert {p.name for p in paths} >= {"compare_roofline.png", "compare_synth_throughput.png"}


def test_distinct_skus_keep_their_plain_labels(tmp_path):
    a = _run(tmp_path, "sku-a", "Synthetic CPU A", 1e-5, 2e-4)
    b = _run(tmp_path, "sku-b", "Synthetic CPU B", 5e-6, 5e-5)
    raw = [load_results(a), load_results(b)]
    sets = label_sides(raw)
    assert sets == raw
    aligned, skus = align(sets)
    assert skus == ["sku-a", "sku-b"]
    machines = {k: v for s in sets for k, v in s.machines.items()}
    fig, _ = roofline_figure([r for x in aligned for r in x.rows.values()], machines)
    title = fig.axes[0].get_title().splitlines()[0]
    assert title == "Roofline: A = Synthetic CPU A (2 cpus); B = Synthetic CPU B (2 cpus)"
    text = format_ratio_tables(aligned, skus, machines)
    assert text.splitlines()[:3] == [
        "A = Synthetic CPU A (2 cpus) [sku-a]",
        "B = Synthetic CPU B (2 cpus) [sku-b]",
        "tA/tB = time on A / time on B (> 1: B is faster than A); 2 aligned points",
    ]
    head = next(line for line in text.splitlines() if line.startswith("point"))
    assert head.split()[-5:] == ["B", "µs", "B", "GB/s", "tA/tB"]  # the column the definition names: 1e-5 / 5e-6
    row_8k = next(line for line in text.splitlines() if line.startswith("ws=8K")).split()
    assert row_8k[4] == "5.000" and row_8k[-1] == "2.00x"


def test_three_sides_define_each_ratio_column(tmp_path):
    folders = [_run(tmp_path / f"r{i}", "sku-a", "CPU", 1e-5 / (i + 1), 2e-4) for i in range(3)]
    sets = label_sides([load_results(f) for f in folders])
    aligned, skus = align(sets)
    text = format_ratio_tables(aligned, skus, {k: v for s in sets for k, v in s.machines.items()})
    assert "tA/tX = time on A / time on X, for X in B, C (> 1: X is faster than A)" in text
    head = next(line for line in text.splitlines() if line.startswith("point"))
    assert head.split()[-6:] == ["tA/tB", "C", "µs", "C", "GB/s", "tA/tC"]
    row_8k = next(line for line in text.splitlines() if line.startswith("ws=8K")).split()
    assert row_8k[2:] == ["10.00", "2.30", "5.000", "4.61", "2.00x", "3.333", "6.91", "3.00x"]  # C: 1e-5 / 3 s


def test_the_same_folder_given_twice_is_refused(tmp_path, capsys, monkeypatch):
    folder = _run(tmp_path, "sku-a", "Synthetic CPU A", 1e-5, 2e-4)
    assert main(["compare", str(folder), str(folder)]) == 2
    assert f"error: {folder} is given twice; compare needs two different results folders" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)
    assert main(["compare", "sku-a", str(folder)]) == 2
    err = capsys.readouterr().err
    assert f"error: sku-a and {folder} are the same folder; compare needs two different results folders" in err
    with pytest.raises(ValueError, match="same folder"):
        label_sides([load_results(folder), load_results(folder / "synth.jsonl")], ["sku-a", "sku-a/synth.jsonl"])


def test_each_kernel_gets_its_geomean_beside_the_overall_one(tmp_path):
    # torch is 2x slower on B at both points (0.5x, 0.5x); numba_w8 is 2x and 8x faster (geomean 4x).
    # Over all four points: (0.5 * 0.5 * 2 * 8) ** (1/4) = 4 ** 0.25 = 1.41x, which hides the torch regression.
    def points(t_torch, t_numba_8k, t_numba_256m):
        return [
            (bag_point("torch", working_set="8K"), t_torch, TRIAD_L1),
            (bag_point("torch", working_set="256M"), t_torch, GATHER),
            (bag_point("numba_w8", working_set="8K"), t_numba_8k, TRIAD_L1),
            (bag_point("numba_w8", working_set="256M"), t_numba_256m, GATHER),
        ]

    a = write_sku(tmp_path, "sku-a", "CPU A", points(1e-5, 1e-5, 2e-4))
    b = write_sku(tmp_path, "sku-b", "CPU B", points(2e-5, 5e-6, 2.5e-5))
    sets = [load_results(a), load_results(b)]
    aligned, skus = align(sets)
    text = format_ratio_tables(aligned, skus, {k: v for s in sets for k, v in s.machines.items()})
    geo = [line.split() for line in text.splitlines() if line.startswith("geomean")]
    assert geo == [
        ["geomean", "torch", "0.50x"],
        ["geomean", "numba_w8", "4.00x"],
        ["geomean", "all", "kernels", "1.41x"],
    ]
    lines = text.splitlines()
    ratio_col = next(line for line in lines if line.startswith("point")).index("tA/tB") + len("tA/tB")
    assert all(line.index("x") + 1 == ratio_col for line in lines if line.startswith("geomean"))


def _set_resolved(folder, sweep, changes):
    """Rewrite the resolved working set of stored points: {working_set expression: {derived key: value}}."""
    path = folder / f"{sweep}.jsonl"
    recs = [json.loads(x) for x in path.read_text().splitlines()]
    for rec in recs[1:]:
        rec["derived"].update(changes.get(rec["point"]["working_set"], {}))
    path.write_text("".join(json.dumps(x) + "\n" for x in recs))


def test_a_working_set_resolved_to_different_bytes_shows_each_sides_bytes(tmp_path, capsys):
    a = _run(tmp_path, "sku-a", "CPU A", 1e-5, 2e-4)
    b = _run(tmp_path, "sku-b", "CPU B", 5e-6, 5e-5)
    # as 0.5*L2 would on a machine with twice the L2: the same key, 8 KiB on A but 16 KiB on B;
    # the 256M point keeps its bytes but B judged it against L3
    _set_resolved(b, "synth", {"8K": {"working_set_bytes": 16 << 10}, "256M": {"memory_level": "L3"}})
    assert main(["compare", str(a), str(b)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert next(line for line in lines if line.startswith("ws=8K")).endswith("2.00x  ws 8 KiB | 16 KiB")
    assert next(line for line in lines if line.startswith("ws=256M")).endswith("4.00x  ws 256 MiB DRAM | 256 MiB L3")
    assert lines[-1] == (
        "note: each row compares one working_set expression, resolved per machine from its caches; "
        "'ws A | B': each side's hot set, where they differ"
    )
    assert max(map(len, lines)) <= 140


def _roof_lines(ax):
    return {line.get_label(): line for line in ax.get_lines() if not line.get_label().startswith("_")}


def _roof_texts(ax):
    """The labels written on the plot beside the roofs (the kernel names under the columns stand upright)."""
    return {t.get_text(): t for t in ax.texts if t.get_rotation() == 0}


def _compare(tmp_path, name, other_ceilings):
    """sku-a of `_run`, its roofs as CEILINGS, beside a second run of sku-a with `other_ceilings` (its 256M
    point judged against that side's gather): both labelled by folder, A and B."""
    before = _run(tmp_path / "before", "sku-a", "Synthetic CPU A", 1e-5, 2e-4)
    gather = next(c for c in other_ceilings if c.name == "gather")
    pts = [(bag_point("torch", working_set="8K"), 5e-6, TRIAD_L1), (bag_point("torch", working_set="256M"), 5e-5,
                                                                     gather)]  # fmt: skip
    other = write_sku(tmp_path / name, "sku-a", "Synthetic CPU A", pts, ceilings=other_ceilings)
    sets = label_sides([load_results(before), load_results(other)], ["before", name])
    machines = {k: v for s in sets for k, v in s.machines.items()}
    rows = [r for a in align(sets)[0] for r in a.rows.values()]
    return roofline_figure(rows, machines)[0]


def test_machines_with_the_same_roofs_share_one_set_of_lines(tmp_path):
    from matplotlib.colors import to_rgb

    before = _run(tmp_path / "before", "sku-a", "Synthetic CPU A", 1e-5, 2e-4)
    after = _run(tmp_path / "after", "sku-a", "Synthetic CPU A", 5e-6, 5e-5)  # same machine.json: same roofs
    sets = label_sides([load_results(before), load_results(after)], ["before", "after"])
    machines = {k: v for s in sets for k, v in s.machines.items()}
    rows = [r for a in align(sets)[0] for r in a.rows.values()]
    roofs = {k: v for k, v in _roof_lines(roofline_figure(rows, machines)[0].axes[0]).items() if ": torch" not in k}
    # 6 roofs drawn once each (not twice over each other), tagged with both sides, in a neutral grey
    assert len(roofs) == len(CEILINGS) and all(k.startswith("A, B: ") for k in roofs)
    assert all(len(set(to_rgb(line.get_color()))) == 1 for line in roofs.values())
    fig, _ = throughput_figure(rows, machines, x="working_set_bytes", y="gbps")
    notes = [t.get_text() for t in fig.axes[0].texts]  # cache sizes and ceilings, each once for both
    assert notes and all(n.startswith("A, B: ") for n in notes) and len(notes) == len(set(notes))


def test_compare_roofline_shares_each_roof_the_machines_agree_on(tmp_path):
    """B's DRAM is twice as fast, every other roof the same: the L1d, L2 and compute roofs are drawn once,
    grey, tagged 'A, B'; the DRAM triad and gather roofs once per machine in its colour. Before, any one
    difference drew all six roofs per machine: the L1d, L2, gemm and peak lines twice on the same spot, and
    their labels 'A L1d' and 'B L1d' printed over each other."""
    from dataclasses import replace

    from matplotlib.colors import to_hex

    faster = [replace(c, gbps=c.gbps * 2) if c.level == "DRAM" else c for c in CEILINGS]
    fig = _compare(tmp_path, "faster", faster)
    ax = fig.axes[0]
    roofs = {k: v for k, v in _roof_lines(ax).items() if ": torch" not in k}
    assert sorted(roofs) == [
        "A, B: fma_peak float32 1t: 400 GFLOP/s (derived)",
        "A, B: gemm float32 1t: 100 GFLOP/s",
        "A, B: triad L1d 1t: 200 GB/s",
        "A, B: triad L2 1t: 100 GB/s",
        "A: gather D64 DRAM 1t: 10 GB/s",
        "A: triad DRAM 1t: 20 GB/s",
        "B: gather D64 DRAM 1t: 20 GB/s",
        "B: triad DRAM 1t: 40 GB/s",
    ]
    point_colour = {}
    for side in "AB":
        (pts,) = [c for c in ax.collections if c.get_gid() == f"{side}: torch DRAM 1t"]
        point_colour[side] = to_hex(pts.get_facecolor()[0])
    assert point_colour["A"] != point_colour["B"]
    for label, line in roofs.items():
        tag = label.split(":")[0]
        assert to_hex(line.get_color()) == (to_hex(SHARED_TINT) if tag == "A, B" else point_colour[tag]), label
    texts = _roof_texts(ax)
    assert sorted(texts) == ["A DRAM", "A gather DRAM", "A, B L1d", "A, B L2", "A, B fma_peak float32",
                             "A, B gemm float32", "B DRAM", "B gather DRAM"]  # fmt: skip
    # A's DRAM triad and B's gather are both 20 GB/s: one anchor, so only the nudge keeps the labels apart
    assert texts["A DRAM"].xy == pytest.approx(texts["B gather DRAM"].xy)
    fig.draw_without_rendering()
    boxes = {k: t.get_window_extent() for k, t in texts.items()}
    assert [(a, b) for a in boxes for b in boxes if a < b and boxes[a].overlaps(boxes[b])] == []
    # each label on a faint white box: a slanted roof runs through its own label at the left edge
    for label, text in texts.items():
        box = text.get_bbox_patch()
        assert box is not None and to_hex(box.get_facecolor()) == "#ffffff" and 0 < box.get_alpha() < 1, label
    # the legend says what grey is: a roof drawn once for both machines
    titles = {leg.get_title().get_text() for leg in ax.get_children() if isinstance(leg, Legend)}
    assert "machine (colour of points and roofs)\ngrey roof: both share it" in titles


def test_a_compare_roofline_sharing_no_roof_does_not_explain_grey(tmp_path):
    """Every roof twice as high on B: no roof is shared, none is grey, and the legend does not speak of grey."""
    from dataclasses import replace

    from matplotlib.colors import to_rgb

    faster = [replace(c, gbps=c.gbps * 2) if c.kind == "bandwidth" else replace(c, gflops=c.gflops * 2)
              for c in CEILINGS]  # fmt: skip
    ax = _compare(tmp_path, "faster", faster).axes[0]
    roofs = {k: v for k, v in _roof_lines(ax).items() if ": torch" not in k}
    assert len(roofs) == 2 * len(CEILINGS) and not any(k.startswith("A, B") for k in roofs)
    assert not any(len(set(to_rgb(line.get_color()))) == 1 for line in roofs.values())  # no grey
    titles = {leg.get_title().get_text() for leg in ax.get_children() if isinstance(leg, Legend)}
    assert "machine (colour of points and roofs)" in titles


def test_gather_roofs_of_different_rows_are_not_shared(tmp_path):
    """The same gather bandwidth at D=128 on B is another roof: each side keeps its own line and label (the
    roof key left the D out, so the two were drawn as one line named by A's D64)."""
    from dataclasses import replace

    wider = [replace(c, shape=(1 << 20, 128, 32)) if c.name == "gather" else c for c in CEILINGS]
    roofs = [k for k in _roof_lines(_compare(tmp_path, "wider", wider).axes[0]) if "gather" in k]
    assert sorted(roofs) == ["A: gather D64 DRAM 1t: 10 GB/s", "B: gather D128 DRAM 1t: 10 GB/s"]


def test_a_sides_geomean_is_over_the_points_that_side_measured(tmp_path):
    # C measured only the 8K point, 4x faster than A there; the 256M point is aligned on A and B alone.
    # tA/tB is 2x at both points; tA/tC is 4x over C's one point (not spread thinner over a point C lacks)
    def points(t_8k, t_256m):
        return [(bag_point("torch", working_set="8K"), t_8k, TRIAD_L1),
                (bag_point("torch", working_set="256M"), t_256m, GATHER)]  # fmt: skip

    a = write_sku(tmp_path, "sku-a", "CPU A", points(1e-5, 2e-4))
    b = write_sku(tmp_path, "sku-b", "CPU B", points(5e-6, 1e-4))
    c = write_sku(tmp_path, "sku-c", "CPU C", points(2.5e-6, 2e-4)[:1])
    sets = [load_results(x) for x in (a, b, c)]
    aligned, skus = align(sets)
    text = format_ratio_tables(aligned, skus, {k: v for s in sets for k, v in s.machines.items()})
    geo = [line.split() for line in text.splitlines() if line.startswith("geomean")]
    assert geo == [["geomean", "all", "kernels", "2.00x", "4.00x"]]
