"""`dlrmbench report`: the Markdown and HTML pages hold the machine, its ceilings, each sweep's medians and plots."""

from __future__ import annotations

import json

from synthetic_results import CEILINGS, bag_point, write_sku

from profiler.cli import main
from profiler.report import machine_lines, render_html, render_markdown, write_report
from profiler.results import Machine

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


_SPEC = 'name = "synth"\ntarget = "embedding_bag"\n[axes]\nkernel = ["torch"]\n[plot]\nkinds = ["throughput"]\n'


def test_report_names_the_header_sweep_file_relative_to_here_or_by_its_name(tmp_path, monkeypatch):
    clone = tmp_path / "ci_clone"  # where the sweep ran: its header stores the spec file's absolute path
    (clone / "sweeps").mkdir(parents=True)
    (clone / "sweeps" / "synth.toml").write_text(_SPEC)
    folder = _folder(tmp_path)
    jsonl = folder / "synth.jsonl"
    header, *records = jsonl.read_text().splitlines(keepends=True)
    header = json.dumps({**json.loads(header), "spec_file": str(clone / "sweeps" / "synth.toml")}) + "\n"
    jsonl.write_text(header + "".join(records))
    monkeypatch.chdir(clone)
    write_report(folder, tmp_path / "r1", spec_dir=tmp_path / "no-sweeps")
    md = (tmp_path / "r1" / "index.md").read_text()
    assert "Plot settings: sweep file sweeps/synth.toml." in md
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    write_report(folder, tmp_path / "r2", spec_dir=tmp_path / "no-sweeps")
    md = (tmp_path / "r2" / "index.md").read_text()
    assert "Plot settings: sweep file synth.toml." in md
    assert str(clone) not in md and str(clone) not in (tmp_path / "r2" / "index.html").read_text()


def test_machine_lines_say_one_socket_not_one_sockets():
    one = {"cpu_brand": "CPU", "logical_cpus": 1, "physical_cores": 1, "sockets": 1, "memory_bytes": 1 << 30,
           "numa_nodes": 1, "gpus": [{"name": "G", "sm_count": 1, "memory_bytes": 1 << 30}]}  # fmt: skip
    lines = machine_lines(Machine("s", one))
    assert "CPU: CPU (1 cpu) + G" in lines
    assert "Cores: 1 logical cpu, 1 physical core, 1 socket" in lines
    assert "Memory: 1.0 GiB, 1 NUMA node" in lines
    assert "GPU: G, 1 SM, 1 GiB" in lines
    two = {**one, "logical_cpus": 4, "physical_cores": 2, "sockets": 2, "numa_nodes": 2,
           "gpus": [{"name": "G", "sm_count": 132}]}  # fmt: skip
    lines = machine_lines(Machine("s", two))
    assert "CPU: CPU (4 cpus) + G" in lines
    assert "Cores: 4 logical cpus, 2 physical cores, 2 sockets" in lines
    assert "Memory: 1.0 GiB, 2 NUMA nodes" in lines
    assert "GPU: G, 132 SMs" in lines


def test_point_warnings_show_in_the_status_column():
    from profiler.report import sweep_table

    base = {"status": "ok", "kernel": "torch", "target": "embedding_bag", "sweep": "s", "median_s": 1e-3}
    rows = [
        {**base, "batch_size": 1, "warnings": ["noisy: IQR/median = 10.4% > 10%"]},
        {**base, "batch_size": 2, "contended": True, "warnings": ["contended: cpu pressure 50% > 10%"]},
        {**base, "batch_size": 3, "warnings": []},
    ]
    _, table = sweep_table(rows)
    assert [row[-1] for row in table] == ["ok; noisy: IQR/median = 10.4% > 10%", "ok (contended)", "ok"]


def test_a_filter_that_leaves_no_point_is_an_error_not_an_empty_report(tmp_path, capsys):
    folder, out = _folder(tmp_path), tmp_path / "report"
    assert main(["report", str(folder), "--out", str(out), "--filter", "kernel=nope"]) == 2
    assert f"{folder}: no points left after --filter kernel=nope" in capsys.readouterr().err
    assert not (out / "index.md").exists()
    assert main(["report", str(folder), "--out", str(out), "--filter", "kernel=torch"]) == 0
    assert "| 1.25 |" in (out / "index.md").read_text() and "| 0.5 |" not in (out / "index.md").read_text()


def test_report_names_each_sweeps_file_and_run_commit_and_captions_its_figures(tmp_path):
    """The Machine section's commit is machine.json's (when fingerprinted); a sweep re-run later at another
    commit says its own, read from its results file's header, and each figure names the points it draws."""
    folder = _folder(tmp_path)
    stored = json.loads((folder / "machine.json").read_text())
    stored["fingerprint"]["git_commit"] = "a" * 40
    (folder / "machine.json").write_text(json.dumps(stored))
    jsonl = folder / "synth.jsonl"
    lines = jsonl.read_text().splitlines()
    header = json.loads(lines[0])
    header["fingerprint"] = {**header["fingerprint"], "git_commit": "b" * 40, "git_dirty": True}
    jsonl.write_text("\n".join([json.dumps(header), *lines[1:]]) + "\n")
    out = tmp_path / "report"
    write_report(folder, out, spec_dir=tmp_path / "no-sweeps")
    md = (out / "index.md").read_text()
    assert "- Git at fingerprint (machine.json): aaaaaaaaaaaa" in md
    assert "Data: synth.jsonl (run at commit bbbbbbbbbbbb (dirty))." in md
    assert ("Figure (roofline): the 3 ok points of sweep synth from synth.jsonl; ceilings from machine.json; "
            "redraw with `dlrmbench plot RESULTS_DIR --sweep synth --kind roofline`.") in md  # fmt: skip
    assert "Figure (speedup): the 3 ok points of sweep synth from synth.jsonl; redraw" in md
