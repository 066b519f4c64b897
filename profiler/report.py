"""`dlrmbench report RESULTS_DIR --out DIR`: one machine's results as a Markdown and an HTML page.

The page has the machine (fingerprint summary), its ceilings, and per sweep a table of every
point (median, IQR, GB/s, fraction of its ceiling, status or failure reason) followed by the
sweep's plots, which are written beside the page and linked relatively (plots/<sweep>_<kind>.png),
so the folder can be moved or committed as a whole. The page is built once as a list of blocks
and rendered twice, so the two formats cannot drift apart.
"""

from __future__ import annotations

import argparse
import html
from pathlib import Path
from typing import Any

from profiler.plot_style import format_bytes
from profiler.plots import add_shared_options, find_spec, make_plot, plot_settings
from profiler.results import Machine, kernel_label, load_results, point_label, select, varying_fields
from profiler.store import read_header, write_text_atomic

__all__ = [
    "add_commands",
    "ceiling_rows",
    "machine_lines",
    "render_html",
    "render_markdown",
    "sweep_table",
    "write_report",
]

Block = tuple[Any, ...]  # ("h1"|"h2"|"p"|"pre", text) | ("ul", [items]) | ("table", headers, rows) | ("img", src, alt)
_POINT_HEADERS = ["point", "kernel", "working set", "median (ms)", "IQR (ms)", "GB/s", "GFLOP/s", "of ceiling",
                  "ceiling", "status"]  # fmt: skip


_ROOFLINE_KEY = (" Colour is the kernel, marker shape the memory level its hot set was placed in (the working set"
                 " column), and each level's roof carries the same shape at the points' intensity; kernels of one"
                 " intensity are drawn side by side, shifted as the x label states.")  # fmt: skip


def _ms(seconds: float | None) -> str:
    return f"{seconds * 1e3:.4g}" if seconds else "-"


def _num(value: float | None, fmt: str = ".3g") -> str:
    return format(value, fmt) if value is not None else "-"


def _count(n: Any, noun: str) -> str:
    """'1 socket', '2 sockets': the noun singular for exactly one."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _shown_path(path: str | Path) -> str:
    """A file's path for the page: relative to the current directory when it lies under it (a repository's
    sweeps/x.toml), else its name alone, so a page made in one checkout names no absolute path of it."""
    p, here = Path(path).resolve(), Path.cwd().resolve()
    return p.relative_to(here).as_posix() if p.is_relative_to(here) else p.name


def _working_set(row: dict[str, Any]) -> str:
    ws, level = row.get("working_set_bytes"), row.get("memory_level")
    if row.get("target") != "embedding_bag" or not ws:
        return "-"
    return format_bytes(ws) + (f" ({level})" if level else "")


def machine_lines(machine: Machine) -> list[str]:
    """A short summary of a fingerprint: CPU, cores, frequency, ISA, caches, memory, GPUs, versions."""
    fp = machine.fingerprint
    out = [f"SKU id: `{machine.sku_id}`", f"CPU: {machine.name}"]
    nouns = {"logical_cpus": "logical cpu", "physical_cores": "physical core", "sockets": "socket"}
    cores = [_count(fp[k], noun) for k, noun in nouns.items() if k in fp]
    if cores:
        out.append("Cores: " + ", ".join(cores) + (f"; {fp['cpu_mhz']:.0f} MHz" if fp.get("cpu_mhz") else ""))
    if fp.get("isa_flags"):
        out.append("ISA: " + " ".join(fp["isa_flags"]))
    caches = [f"{lv} {format_bytes(c['size_bytes'])} x {c.get('instances', 1)}"
              for lv, c in fp.get("caches", {}).items() if c.get("size_bytes")]  # fmt: skip
    if caches:
        out.append("Caches: " + ", ".join(caches))
    if fp.get("memory_bytes"):
        numa = f", {_count(fp['numa_nodes'], 'NUMA node')}" if fp.get("numa_nodes") else ""
        out.append(f"Memory: {fp['memory_bytes'] / (1 << 30):.1f} GiB{numa}")
    for gpu in fp.get("gpus", []) or []:
        mem = f", {gpu['memory_bytes'] / (1 << 30):.0f} GiB" if gpu.get("memory_bytes") else ""
        sms = f", {_count(gpu['sm_count'], 'SM')}" if gpu.get("sm_count") else ""
        out.append(f"GPU: {gpu.get('name', '?')}{sms}{mem}")
    if fp.get("versions"):
        out.append("Versions: " + ", ".join(f"{k} {v}" for k, v in fp["versions"].items()))
    if fp.get("git_commit"):
        dirty = " (dirty)" if fp.get("git_dirty") else ""
        out.append(f"Git at fingerprint (machine.json): {fp['git_commit'][:12]}{dirty}")
    return out


def ceiling_rows(machine: Machine) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the ceilings table (measured first, then derived)."""
    headers = ["ceiling", "source", "value", "working set", "IQR / median", "contended", "method"]
    rows = []
    for c in sorted(machine.ceilings, key=lambda c: c.source != "measured"):
        value = f"{c.value:.1f} GB/s" if c.kind == "bandwidth" else f"{c.value:.1f} GFLOP/s"
        spread = f"{c.iqr_s / c.median_s:.0%}" if c.iqr_s is not None and c.median_s else "-"
        ws = format_bytes(c.working_set_bytes) if c.working_set_bytes else "-"
        rows.append([c.key, c.source, value, ws, spread, "yes" if c.contended else "", c.method])
    return headers, rows


def sweep_table(rows: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """Headers and one row per point: the varying fields, kernel, median and IQR (ms), GB/s, GFLOP/s,
    fraction of its ceiling, the ceiling, and ok / contended / failed with the reason."""
    shown = varying_fields(rows, exclude=["kernel"])
    out = []
    for r in rows:
        status = "ok" + (" (contended)" if r.get("contended") else "") if r["status"] == "ok" else r["status"]
        if r.get("reason"):
            status += f": {r['reason']}"
        notes = [w for w in r.get("warnings", []) if not w.startswith("contended")]  # that one is said above
        if notes:
            status += "; " + "; ".join(notes)  # noisy samples, a capped working set, clock overhead
        frac = r.get("frac_of_ceiling")
        out.append([
            point_label(r, shown, short=True) or "-", kernel_label(r), _working_set(r), _ms(r.get("median_s")),
            _ms(r.get("iqr_s")),
            _num(r.get("gbps")), _num(r.get("gflops")) if r.get("flops") else "-",
            f"{frac:.0%}" if frac is not None else "-",
            r.get("ceiling") or "-", status,
        ])  # fmt: skip
    return _POINT_HEADERS, out


def _provenance(rows: list[dict[str, Any]]) -> str:
    """Where a sweep's points come from: each results file and the commit its run was measured at (from the
    file's header, which can differ from the machine.json one: sweeps are often re-run after a change)."""
    parts = []
    for src in dict.fromkeys(str(r.get("source") or "") for r in rows):
        if not src:
            continue
        try:
            fp = (read_header(Path(src)) or {}).get("fingerprint") or {}
        except OSError:
            fp = {}
        commit = fp.get("git_commit")
        dirty = " (dirty)" if fp.get("git_dirty") else ""
        parts.append(f"{Path(src).name} (run at commit {commit[:12]}{dirty})" if commit else
                     f"{Path(src).name} (run's commit not recorded)")  # fmt: skip
    return "Data: " + ", ".join(parts) + "." if parts else ""


def _sweep_blocks(
    sweep: str, rows: list[dict[str, Any]], machines: dict[str, Machine], out_dir: Path, spec_dir: str | Path
) -> tuple[list[Block], list[Path]]:
    spec = find_spec(sweep, rows[0].get("spec_file", ""), spec_dir)
    settings = plot_settings(rows, spec)
    ok = [r for r in rows if r["status"] == "ok"]
    blocks: list[Block] = [("h2", f"Sweep {sweep}")]
    if spec and spec.description:
        blocks.append(("p", spec.description))
    contended = sum(bool(r.get("contended")) for r in ok)
    source = f"sweep file {_shown_path(spec.source)}" if spec else "defaults (no sweep file found)"
    blocks.append(("p", f"{len(ok)} ok, {len(rows) - len(ok)} failed, {contended} measured under contention. "
                        f"Plot settings: {source}."))  # fmt: skip
    if provenance := _provenance(rows):
        blocks.append(("p", provenance))
    headers, table = sweep_table(rows)
    blocks.append(("table", headers, table))
    paths: list[Path] = []
    kinds = [k for k in settings.get("kinds", []) if k != "speedup" or len({r["kernel"] for r in ok}) > 1]
    for kind in kinds:
        stem = out_dir / "plots" / f"{sweep}_{kind}"
        try:
            res = make_plot(kind, ok, machines, stem, settings=settings,
                            baseline=str(settings.get("baseline", "torch")))  # fmt: skip
        except ValueError as exc:
            blocks.append(("p", f"No {kind} plot: {exc}"))
            continue
        paths += res.paths
        if res.table:
            blocks.append(("pre", res.table))
        for line in res.flagged + res.notes:
            blocks.append(("p", f"Note ({kind}): {line}"))
        blocks.append(("img", f"plots/{stem.name}.png", f"{sweep}: {kind}"))
        files = ", ".join(dict.fromkeys(Path(str(r.get("source"))).name for r in ok if r.get("source")))
        roofs = "; ceilings from machine.json" if kind != "speedup" else ""
        caption = (f"Figure ({kind}): the {len(ok)} ok points of sweep {sweep} from {files or '?'}{roofs}; "
                   f"redraw with `dlrmbench plot RESULTS_DIR --sweep {sweep} --kind {kind}`.")  # fmt: skip
        blocks.append(("p", caption + (_ROOFLINE_KEY if kind == "roofline" else "")))
    return blocks, paths


def write_report(
    results_dir: str | Path,
    out_dir: str | Path,
    *,
    spec_dir: str | Path = "sweeps",
    include_contended: bool = True,
    filters: list[str] | None = None,
) -> list[Path]:
    """Write index.md, index.html and plots/ under out_dir from one machine's results folder.

    Args:
        results_dir: results/<sku-id>/ (its *.jsonl and machine.json).
        out_dir: where the page and its plots go (created).
        spec_dir: where sweep files are looked up by name, for plot settings and descriptions.
        include_contended: keep points measured under contention (they are marked in the tables).
        filters: KEY=VALUE strings, as `dlrmbench sweep --filter`.
    Returns:
        The files written, the Markdown page first.
    """
    results = load_results(results_dir, include_contended=include_contended)
    rows = select(results.rows, filters)
    if filters and results.rows and not rows:  # as plot: an empty report would look like a finished one
        raise ValueError(f"{results_dir}: no points left after --filter {','.join(filters)}")
    if len(results.machines) != 1:
        raise ValueError(f"{results_dir}: a report covers one machine; found {sorted(results.machines)}")
    machine = next(iter(results.machines.values()))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    blocks: list[Block] = [
        ("h1", f"dlrmbench report: {machine.name}"),
        ("h2", "Machine"),
        ("ul", machine_lines(machine)),
    ]
    blocks.append(("h2", "Ceilings"))
    if machine.ceilings:
        blocks.append(("table", *ceiling_rows(machine)))
    else:
        blocks.append(("p", "No ceilings stored; run `dlrmbench machine --ceilings` for the roofline."))
    if results.torn_lines:
        blocks.append(("p", f"Skipped {results.torn_summary()} (a crash mid-write, or an edit)."))
    paths: list[Path] = []
    for sweep in dict.fromkeys(r["sweep"] for r in rows):
        sweep_blocks, sweep_paths = _sweep_blocks(
            sweep, [r for r in rows if r["sweep"] == sweep], results.machines, out_dir, spec_dir
        )
        blocks += sweep_blocks
        paths += sweep_paths
    md, page = out_dir / "index.md", out_dir / "index.html"
    write_text_atomic(md, render_markdown(blocks))
    write_text_atomic(page, render_html(blocks, title=f"dlrmbench report: {machine.name}"))
    return [md, page, *paths]


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def render_markdown(blocks: list[Block]) -> str:
    """The blocks as GitHub-flavoured Markdown."""
    out: list[str] = []
    for b in blocks:
        if b[0] in ("h1", "h2"):
            out.append(f"{'#' * int(b[0][1])} {b[1]}\n")
        elif b[0] == "p":
            out.append(f"{b[1]}\n")
        elif b[0] == "ul":
            out.append("\n".join(f"- {item}" for item in b[1]) + "\n")
        elif b[0] == "pre":
            out.append(f"```\n{b[1]}\n```\n")
        elif b[0] == "img":
            out.append(f"![{b[2]}]({b[1]})\n")
        elif b[0] == "table":
            lines = ["| " + " | ".join(map(_md_cell, b[1])) + " |", "|" + "---|" * len(b[1])]
            lines += ["| " + " | ".join(map(_md_cell, row)) + " |" for row in b[2]]
            out.append("\n".join(lines) + "\n")
    return "\n".join(out)


def render_html(blocks: list[Block], *, title: str) -> str:
    """The blocks as one self-contained HTML page (images linked relatively)."""
    e = html.escape
    body: list[str] = []
    for b in blocks:
        if b[0] in ("h1", "h2", "p"):
            text = e(b[1]).replace("`", "")
            body.append(f"<{b[0]}>{text}</{b[0]}>")
        elif b[0] == "ul":
            body.append("<ul>" + "".join(f"<li>{e(i).replace('`', '')}</li>" for i in b[1]) + "</ul>")
        elif b[0] == "pre":
            body.append(f"<pre>{e(b[1])}</pre>")
        elif b[0] == "img":
            body.append(f'<p><img src="{e(b[1])}" alt="{e(b[2])}"></p>')
        elif b[0] == "table":
            head = "".join(f"<th>{e(h)}</th>" for h in b[1])
            rows = "".join("<tr>" + "".join(f"<td>{e(str(c))}</td>" for c in row) + "</tr>" for row in b[2])
            body.append(f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>")
    style = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;padding:0 1em}"
             "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ccc;padding:2px 6px}"
             "th{background:#f0f0f0}img{max-width:100%}pre{background:#f6f6f6;padding:8px}")  # fmt: skip
    return (f"<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>{e(title)}</title>"
            f"<style>{style}</style></head>\n<body>\n" + "\n".join(body) + "\n</body></html>\n")  # fmt: skip


def _cmd(args: argparse.Namespace) -> int:
    filters = [f for part in args.filter for f in part.split(",") if f]
    paths = write_report(args.results, args.out, spec_dir=args.spec_dir,
                         include_contended=not args.exclude_contended, filters=filters)  # fmt: skip
    print(f"wrote {paths[0]} and {paths[1]} ({len(paths) - 2} plot files under {Path(args.out) / 'plots'})")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "report",
        help="Markdown + HTML page of one machine's results: fingerprint, ceilings, per-sweep tables and plots",
        description="Read results/<sku-id>/ and write DIR/index.md, DIR/index.html and DIR/plots/. Nothing is "
        "measured.",
    )
    p.add_argument("results", metavar="RESULTS_DIR", help="results/<sku-id>/")
    p.add_argument("--out", required=True, metavar="DIR")
    add_shared_options(p)
    p.set_defaults(func=_cmd)
