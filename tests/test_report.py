"""`dlrmbench report`: the Markdown and HTML pages hold the machine, its ceilings, each sweep's medians and plots."""

from __future__ import annotations

from synthetic_results import CEILINGS, bag_point, write_sku

from profiler.cli import main
from profiler.report import render_html, render_markdown, write_report

TRIAD_L1, _, _, GATHER, _, _ = CEILINGS


def _folder(tmp_path):
    pts = [
        (bag_point("torch", working_set="8K"), 1.25e-3, TRIAD_L1),
        (bag_point("numba_w8", working_set="8K"), 0.5e-3, TRIAD_L1),
        (bag_point("torch", working_set="256M"), 3.5e-3, GATHER),
        (bag_point("numba_w8", working_set="256M"), None, GATHER),  # failed
    ]
    return write_sku(tmp_path / "results", "sku-a", "Synthetic CPU A", pts)


def test_report_tables_hold_the_medians_and_link_the_plots(tmp_path):
    out = tmp_path / "report"
    paths = write_report(_folder(tmp_path), out, spec_dir=tmp_path / "no-sweeps")
    md = (out / "index.md").read_text()
    page = (out / "index.html").read_text()
    assert paths[:2] == [out / "index.md", out / "index.html"]
    assert "Synthetic CPU A (2 cpus)" in md and "sku-a" in md
    assert "| triad/L1d/1t/float32 | measured | 200.0 GB/s |" in md  # ceilings table
    assert "## Sweep synth" in md
    for median_ms in ("| 1.25 |", "| 0.5 |", "| 3.5 |"):
        assert median_ms in md
    assert "failed: ValueError: synthetic" in md
    assert "speedup over torch" in md and "2.50x" in md  # 1.25 ms / 0.5 ms
    for kind in ("roofline", "throughput", "speedup"):
        assert f"](plots/synth_{kind}.png)" in md
        assert f'src="plots/synth_{kind}.png"' in page
        assert (out / "plots" / f"synth_{kind}.png").stat().st_size > 1000
        assert (out / "plots" / f"synth_{kind}.svg").stat().st_size > 1000
    assert "<td>1.25</td>" in page and page.startswith("<!DOCTYPE html>")


def test_report_takes_plot_kinds_from_the_sweep_file(tmp_path, capsys):
    specs = tmp_path / "sweeps"
    specs.mkdir()
    (specs / "synth.toml").write_text(
        'name = "synth"\ntarget = "embedding_bag"\ndescription = "A synthetic sweep."\n'
        '[axes]\nkernel = ["torch", "numba_w8"]\nworking_set = ["8K", "256M"]\n'
        '[plot]\nx = "working_set_bytes"\ny = "lookups_per_s"\nkinds = ["throughput"]\n'
    )
    out = tmp_path / "r"
    argv = ["report", str(_folder(tmp_path)), "--out", str(out), "--spec-dir", str(specs)]
    assert main(argv) == 0
    assert "wrote" in capsys.readouterr().out
    md = (out / "index.md").read_text()
    assert "A synthetic sweep." in md and "synth_throughput.png" in md and "synth_roofline" not in md
    assert sorted(p.name for p in (out / "plots").iterdir()) == ["synth_throughput.png", "synth_throughput.svg"]


def test_renderers_escape_their_input():
    blocks = [("h1", "a <b>"), ("table", ["x|y"], [["1|2"]]), ("img", "plots/p.png", "p")]
    assert "a &lt;b&gt;" in render_html(blocks, title="t")
    md = render_markdown(blocks)
    assert "x\\|y" in md and "1\\|2" in md and "![p](plots/p.png)" in md


def test_report_of_a_missing_folder_is_an_error(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nope"), "--out", str(tmp_path / "o")]) == 2
    assert "no such results" in capsys.readouterr().err
