"""`dlrmbench sweep FILE`: expand a sweep spec and run its points, appending each to the results store."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from profiler.store import ResultFile, latest_per_key
from profiler.sweep_spec import Point, SweepSpec, expand, load_spec
from profiler.workload import profile_digest

__all__ = ["add_commands", "load_machine", "matches", "run_sweep"]


def matches(point: Point, filters: list[str]) -> bool:
    """`--filter kernel=torch,batch_size=2048`: every key=value must equal the point's field."""
    d = point.to_dict()
    for f in filters:
        key, sep, value = f.partition("=")
        if not sep or key not in d:
            raise ValueError(f"--filter {f!r}: expected KEY=VALUE with KEY one of {', '.join(d)}")
        if str(d[key]) != value:
            return False
    return True


def _no_match(spec_path: str, points: list[Point], filters: list[str]) -> str:
    """Why `--filter` left no point: each value no point has, beside the values the sweep has for its key."""
    fields = [p.to_dict() for p in points]
    wrong = []
    for f in filters:
        key, _, value = f.partition("=")
        have = list(dict.fromkeys(str(d[key]) for d in fields))
        if value not in have:
            wrong.append(f"{key} is {', '.join(have)} here, not {value!r}")
    if wrong:
        return f"--filter {','.join(filters)} matches no point of {spec_path}: {'; '.join(wrong)}"
    return f"--filter {','.join(filters)} matches no point of {spec_path}: no point has all of these values"


def load_machine(results_dir: Path, *, quick_ceilings: bool = False) -> tuple[dict[str, Any], list[Any], Path]:
    """The fingerprint of this machine and its stored ceilings (measured quickly if asked and missing)."""
    from profiler import fingerprint
    from profiler.ceilings import Ceiling
    from profiler.machine_cli import SCHEMA_VERSION
    from profiler.store import ensure_folder, write_json_atomic

    fp = fingerprint.collect()
    path = results_dir / fp["sku_id"] / "machine.json"
    ensure_folder(path.parent)
    stored: dict[str, Any] = {}
    ceilings: list[Any] = []
    if path.exists():
        try:
            stored = json.loads(path.read_text())
            if not isinstance(stored, dict) or not isinstance(stored.get("ceilings", []), list):
                raise ValueError("expected an object whose 'ceilings' is a list")
            ceilings = [Ceiling.from_dict(c) for c in stored.get("ceilings", [])]
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise ValueError(
                f"{path}: not a machine record ({exc}); delete it and run `dlrmbench machine --ceilings`"
            ) from None
    if not ceilings and quick_ceilings:
        from profiler.ceilings import measure_ceilings

        ceilings = measure_ceilings(fp, quick=True)
        stored = {"mode": "quick", "ceilings": [c.to_dict() for c in ceilings]}
    record = {**stored, "schema_version": SCHEMA_VERSION, "sku_id": fp["sku_id"], "fingerprint": fp}
    write_json_atomic(path, record)
    return fp, ceilings, path


def run_sweep(
    spec_path: str,
    *,
    results_dir: Path,
    filters: list[str] | None = None,
    force: bool = False,
    dry_run: bool = False,
    point_timeout_s: float = 0.0,
    progress: bool = True,
) -> dict[str, int]:
    """Run (or list) a sweep's points; returns counts of ok, failed, skipped points."""
    import kernels

    spec = load_spec(spec_path)
    entries = kernels.list_kernels()
    _check_kernel_names(spec_path, spec, {e.name for e in entries})
    available = [e.name for e in entries if e.available]
    every = expand(spec, available)
    points = [p for p in every if matches(p, filters or [])]
    if filters and every and not points:
        raise ValueError(_no_match(spec_path, every, filters))
    if dry_run:
        for i, p in enumerate(points, 1):
            print(f"{i:4d}  {p.key()}  {p.label(list(spec.axes))}")
        print(f"{len(points)} points")
        return {"points": len(points)}
    fp, ceilings, machine_path = load_machine(results_dir)
    if not ceilings:
        print(f"note: no ceilings in {machine_path}; run `dlrmbench machine --ceilings` for fractions of the roofline")
    store = ResultFile(
        results_dir / fp["sku_id"] / f"{spec.name}.jsonl",
        {"sweep": spec.name, "spec_file": spec.source, "sku_id": fp["sku_id"], "fingerprint": fp},
    )
    with store.exclusive(f"dlrmbench sweep {spec_path}"):
        return _run_points(spec, points, store, fp, ceilings, force=force, point_timeout_s=point_timeout_s,
                           progress=progress)  # fmt: skip


def _run_points(
    spec: SweepSpec,
    points: list[Point],
    store: ResultFile,
    fp: dict[str, Any],
    ceilings: list[Any],
    *,
    force: bool,
    point_timeout_s: float,
    progress: bool,
) -> dict[str, int]:
    latest = [] if force else latest_per_key(store)  # one read of the file
    status = {r["key"]: str(r.get("status")) for r in latest}
    flush = int(spec.timing.get("flush_bytes", 0))
    stale = {  # stored ok at another cache state ([timing] flush_bytes changed): measured again, not kept
        r["key"]
        for r in latest
        if r.get("status") == "ok" and int((r.get("measurement") or {}).get("flush_bytes") or 0) != flush
    }
    again = stale & {p.key() for p in points}
    if again:
        print(f"note: measuring again {len(again)} point(s) stored with another flush_bytes than [timing]'s {flush}",
              flush=True)  # fmt: skip
    # a point keyed by its profile's path: measured again when the file's contents changed since it was stored
    by_file = {dist: profile_digest(dist) for dist in {p.distribution for p in points}}  # each file read once
    digests = {p.key(): by_file[p.distribution] for p in points if by_file[p.distribution] is not None}
    changed = {
        r["key"]
        for r in latest
        if r.get("status") == "ok"
        and r["key"] in digests
        and (r.get("derived") or {}).get("profile_sha256") != digests[r["key"]]
    } - stale
    if changed:
        print(f"note: measuring again {len(changed)} point(s) whose stack-distance profile changed since stored",
              flush=True)  # fmt: skip
    stale |= changed
    done = {k for k, v in status.items() if v == "ok"} - stale
    retry = sum(status.get(p.key()) not in (None, "ok") for p in points)
    if retry:
        print(f"note: measuring again {retry} point(s) stored as failed", flush=True)
    counts = {"ok": 0, "failed": 0, "skipped": 0}
    contended: list[str] = []
    from tqdm import tqdm

    # A bar redraws one line with carriage returns: on a terminal only. Piped into a log (CI, nohup,
    # a batch job) each point gets one plain line instead, as it finishes.
    plain = progress and not sys.stderr.isatty()
    bar = tqdm(points, desc=spec.name, unit="pt", disable=not progress or plain, file=sys.stderr, dynamic_ncols=True)
    try:
        _measure_points(spec, points, store, fp, ceilings, bar, done, counts, plain, point_timeout_s, contended)
    except KeyboardInterrupt:
        bar.close()
        print(
            f"{spec.name}: interrupted after {counts['ok']} ok, {counts['failed']} failed in this run, stored in "
            f"{store.path}; the same command resumes (stored ok points are skipped)",
            file=sys.stderr,
        )
        raise
    bar.close()
    print(
        f"{spec.name}: {counts['ok']} ok, {counts['failed']} failed, {counts['skipped']} already stored -> {store.path}"
    )
    if contended:  # a summary of "ok" alone hid that a neighbour had slowed them (their notes scroll past)
        print(f"note: {len(contended)} of the {counts['ok']} ok point(s) ran under contention (CPU pressure or "
              f"steal; first: {contended[0]}); plot and report take --exclude-contended to leave them out, and "
              "`--force` on a quieter machine measures every point again")  # fmt: skip
    return counts


def _measure_points(
    spec: SweepSpec,
    points: list[Point],
    store: ResultFile,
    fp: dict[str, Any],
    ceilings: list[Any],
    bar: Any,
    done: set[str],
    counts: dict[str, int],
    plain: bool,
    point_timeout_s: float,
    contended: list[str],
) -> None:
    for i, point in enumerate(bar, 1):
        key = point.key()
        label = point.label(list(spec.axes))
        if key in done:
            counts["skipped"] += 1
            if plain:
                print(f"[{i}/{len(points)}] {label}: already stored", flush=True)
            continue
        bar.set_postfix_str(label[:80])
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        from profiler.runner import run_point

        t0 = time.perf_counter()
        rec = run_point(point, fingerprint=fp, ceilings=ceilings, timing=spec.timing, timeout_s=point_timeout_s)
        store.append({"key": key, "point": point.to_dict(), "started": started, **rec})
        done.add(key)
        counts[rec["status"]] += 1
        if rec["status"] == "ok" and (rec.get("measurement") or {}).get("contended"):
            contended.append(label)
        if plain:
            print(f"[{i}/{len(points)}] {label}: {rec['status']} ({time.perf_counter() - t0:.1f} s)", flush=True)
        if rec["status"] == "failed":
            bar.write(f"failed: {label}: {rec['reason']}")
        for warning in rec.get("warnings", []):
            bar.write(f"note: {label}: {warning}")


def _check_kernel_names(spec_path: str, spec: SweepSpec, registered: set[str]) -> None:
    """A kernel no build of dlrmbench has is a typo: refuse it before any point runs. One registered
    but unavailable here (no GPU, no fbgemm) stays a point that fails with its reason."""
    for where, values in (("[fixed] kernel", [spec.fixed["kernel"]] if "kernel" in spec.fixed else []),
                          ("[axes] kernel", list(spec.axes.get("kernel", [])))):  # fmt: skip
        unknown = [str(v) for v in values if v != "all" and not str(v).endswith("*") and v not in registered]
        if unknown:
            raise ValueError(
                f"{spec_path}: {where}: unknown kernel {', '.join(map(repr, unknown))}; "
                f"registered: {', '.join(sorted(registered))} (or 'all', or a prefix ending in '*')"
            )


def _spec_file(name: str) -> str:
    """A sweep file as given, or by its name in sweeps/ ('quickstart' -> sweeps/quickstart.toml), as plot finds it."""
    if Path(name).exists() or Path(name).suffix:
        return name
    shipped = Path("sweeps") / f"{name}.toml"
    return str(shipped) if shipped.is_file() else name


def _parse_timeout(text: str) -> float:
    """--point-timeout: finite seconds > 0 ('inf' reached setitimer, whose OverflowError was a traceback)."""
    from profiler.bench_bag_cli import parse_float

    return parse_float(0, above=True)(text)


def _cmd(args: argparse.Namespace) -> int:
    filters = [f for part in args.filter for f in part.split(",") if f]
    run_sweep(
        _spec_file(args.file),
        results_dir=Path(args.results_dir),
        filters=filters,
        force=args.force,
        dry_run=args.dry_run,
        point_timeout_s=args.point_timeout,
        progress=not args.no_progress,
    )
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "sweep",
        help="run a sweep spec (sweeps/*.toml), appending each point to results/<sku-id>/<sweep>.jsonl",
        description="Expand a sweep file and measure each point. Finished points are appended one JSON line "
        "each (flushed, fsynced, under a file lock); re-running skips points stored as ok and measures failed "
        "ones again; --force measures every point again (readers take each point's last record).",
    )
    p.add_argument(
        "file", help="a sweep spec, e.g. sweeps/cache_footprint.toml, or its name in sweeps/ (cache_footprint)"
    )
    p.add_argument("--dry-run", action="store_true", help="list the points and exit")
    p.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE[,...]",
        help="run only points whose fields equal these values, as written in the spec (e.g. kernel=torch,"
        "working_set=0.5*L2); comma-separated or repeated, all must match",
    )
    p.add_argument("--force", action="store_true", help="measure again points already stored as ok")
    p.add_argument("--results-dir", default="results", help="replaces results/")
    p.add_argument(
        "--point-timeout",
        type=_parse_timeout,
        default=300.0,
        help="seconds before a point is abandoned and stored as failed (default %(default)g)",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress bar (or, when stderr is not a terminal, no line per point)",
    )
    p.set_defaults(func=_cmd)
