"""`dlrmbench baseline`: one-hot logistic regression on a Criteo split, the yardstick DLRM is held to (issue #6).

It reads the data as `dlrmbench train --data-generation dataset` does (the same cache, split and
dense transform), gives every table row its own weight (one-hot), picks the L2 strength by log
loss on the last fifth of the training rows, refits on all of them and evaluates on the test
rows. `--test-predictions-out` writes the CSV `dlrmbench quality` compares with DLRM's.
"""

from __future__ import annotations

import argparse
import math

from model.baseline import DEFAULT_L2_GRID
from model.criteo import CriteoData
from model.criteo_cache import BadLinePolicy
from model.criteo_format import NUM_DENSE
from model.data_cli import criteo_flags, criteo_sources
from model.quality import quality
from model.train import write_predictions
from model.warm_start import BASELINE_BATCH, fit_baseline
from profiler.cli import check_output_path
from profiler.store import write_json_atomic

__all__ = ["add_commands", "baseline_command"]


def baseline_command(args: argparse.Namespace) -> int:
    try:
        grid = tuple(float(x) for x in args.l2_grid.split(","))
    except ValueError:
        grid = ()
    if not grid or any(not (math.isfinite(x) and x >= 0) for x in grid):
        raise ValueError(f"--l2-grid {args.l2_grid!r}: give non-negative numbers, comma-separated")
    for flag, path in (("--test-predictions-out", args.test_predictions_out), ("--json-out", args.json_out)):
        if path:
            check_output_path(flag, path)
    sources = criteo_sources(**criteo_flags(args), batch_size=BASELINE_BATCH, test_batch_size=1024)
    for note in sources.notes:
        print(note)
    if sources.test is None:
        raise ValueError("the baseline needs test rows: give --test-fraction F or --test-raw-data-file PATH")
    assert sources.table_rows is not None and isinstance(sources.train, CriteoData)
    model, held_back = fit_baseline(sources.train, NUM_DENSE, l2_grid=grid)  # as --embedding-init lr fits it
    for l2, loss in held_back.items():
        print(f"l2 {l2:g}: log loss {loss:.5f} on the last fifth of the training rows")
    if len(grid) > 1 and model.l2 in (min(grid), max(grid)):
        print(f"note: the chosen l2 {model.l2:g} is at the edge of --l2-grid; a wider grid may fit better")
    labels, probs = model.predict(sources.test)
    q = quality(labels.numpy(), probs.numpy())
    print(f"logistic regression (l2 {model.l2:g}) test: {q.line()}")
    if args.test_predictions_out:
        write_predictions(args.test_predictions_out, labels.numpy(), probs.numpy())
        print(f"wrote {q.samples:,} test predictions to {args.test_predictions_out}")
    if args.json_out:
        record = {"model": "logistic_regression", "l2": model.l2, "held_back_logloss": held_back,
                  "data": sources.record, "test": q.to_dict()}  # fmt: skip
        write_json_atomic(args.json_out, record)
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "baseline",
        help="one-hot logistic regression on a Criteo split (the yardstick for DLRM's test metrics)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--raw-data-file", required=True, help="raw TSV (or headered CSV), plain or .gz")
    p.add_argument("--test-raw-data-file", default="", help="held-out rows in a separate file")
    p.add_argument("--test-fraction", type=float, default=0.0, help="hold out the last F of the rows")
    p.add_argument("--processed-data-file", default="", help="cache folder (as for train)")
    p.add_argument("--on-bad-line", default="error", choices=[str(x) for x in BadLinePolicy])
    p.add_argument("--min-category-count", type=int, default=1, help="rarer values share the unseen row")
    p.add_argument("--max-ind-range", type=int, default=-1, help="ids modulo N instead of a vocabulary")
    p.add_argument("--l2-grid", default=",".join(f"{x:g}" for x in DEFAULT_L2_GRID), help="L2 strengths to pick from")
    p.add_argument("--test-predictions-out", default="", help="write labels and probabilities (CSV) here")
    p.add_argument("--json-out", default="", help="write the test metrics and the chosen l2 as JSON")
    p.set_defaults(func=baseline_command)
