"""`dlrmbench quickstart`: the workbench end to end in a few minutes, as the commands a user would type.

Fingerprint and quick ceilings, a small embedding-bag sweep over every available kernel and
three working sets, a short DLRM training, then the report. Each step prints the command it
runs, so the quickstart doubles as a tour of the CLI.
"""

from __future__ import annotations

import argparse
import importlib.util
import time
from pathlib import Path

__all__ = ["add_commands", "quickstart_steps"]

_REPO = Path(__file__).resolve().parents[1]
_CRITEO_SAMPLE = _REPO.parent / "shared" / "data" / "criteo" / "wide-resdnn" / "train.txt"


def quickstart_steps(results_dir: Path, sku_id: str, criteo: Path | None) -> list[tuple[str, list[str]]]:
    """(title, dlrmbench argv) of each step."""
    sku_dir = results_dir / sku_id
    train = [
        "train", "--arch-sparse-feature-size=16", "--arch-mlp-bot=13-512-256-64-16", "--arch-mlp-top=512-256-1",
        "--mini-batch-size=128", "--print-freq=50", "--print-time", f"--json-out={sku_dir / 'quickstart_train.json'}",
    ]  # fmt: skip
    if criteo is not None:
        train_title = f"DLRM training on the bundled Criteo sample ({criteo})"
        train += [
            "--data-generation=dataset", "--data-set=kaggle", f"--raw-data-file={criteo}", "--test-fraction=0.2",
            "--max-ind-range=100000", "--nepochs=2", "--learning-rate=0.1",
        ]  # fmt: skip
    else:
        train_title = "DLRM training on random data (Kaggle shape, 26 tables x 100k rows)"
        train += ["--arch-embedding-size=100000x26", "--num-batches=300"]
    steps = [
        (
            "machine fingerprint and quick ceilings",
            ["machine", "--ceilings", "--quick", f"--results-dir={results_dir}"],
        ),
        (
            "embedding-bag sweep: every kernel, hot set in L2 / L3 / DRAM",
            ["sweep", str(_REPO / "sweeps" / "quickstart.toml"), f"--results-dir={results_dir}"],
        ),
        (train_title, train),
    ]
    if importlib.util.find_spec("profiler.report") is not None:
        steps.append(("report with plots", ["report", str(sku_dir), f"--out={sku_dir / 'report'}"]))
    return steps


def _criteo_supported() -> bool:
    """Whether `dlrmbench train` takes the reference's dataset flags (the Criteo loader)."""
    from profiler.cli import build_parser

    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return "--raw-data-file" in sub.choices["train"]._option_string_actions


def _cmd(args: argparse.Namespace) -> int:
    from profiler import fingerprint
    from profiler.cli import main

    results_dir = Path(args.results_dir)
    sku = fingerprint.sku_id(fingerprint.collect(use_py_cpuinfo=False))
    criteo = _CRITEO_SAMPLE if (_CRITEO_SAMPLE.exists() and _criteo_supported() and not args.random_data) else None
    if criteo is None and not args.random_data:
        print(f"note: {_CRITEO_SAMPLE} is absent (or the Criteo loader is not built): training on random data")
    t_start = time.perf_counter()
    steps = quickstart_steps(results_dir, sku, criteo)
    for i, (title, argv) in enumerate(steps, 1):
        print(f"\n[{i}/{len(steps)}] {title}\n$ dlrmbench {' '.join(argv)}", flush=True)
        t0 = time.perf_counter()
        rc = main(argv)
        if rc != 0:
            print(f"quickstart: step {i} failed (exit {rc})")
            return rc
        print(f"({time.perf_counter() - t0:.1f} s)")
    print(f"\nquickstart done in {time.perf_counter() - t_start:.0f} s; results in {results_dir / sku}")
    report = results_dir / sku / "report"
    if report.exists():
        pngs = sorted(report.glob("plots/*.png"))
        print(f"report: {report / 'index.md'} ({len(pngs)} plots: {', '.join(p.name for p in pngs[:6])})")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="fingerprint, ceilings, a small sweep, a short training, the report")
    p.add_argument(
        "--results-dir", default="results", help="where results go, under <dir>/<sku-id>/ (default %(default)s)"
    )
    p.add_argument("--random-data", action="store_true", help="train on random data even if Criteo is there")
    p.set_defaults(func=_cmd)
