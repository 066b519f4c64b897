"""`dlrmbench quality A.csv [B.csv ...]`: held-out metrics of saved predictions, and whether two models differ.

The files are `dlrmbench train --test-predictions-out` CSVs (`label,probability`, one line per
test row in data order), of models evaluated on the same rows. Each file's AUC, log loss,
normalized entropy (log loss over the entropy of the rows' positive rate: 1 is the constant
predictor), calibration (predicted over actual clicks) and accuracy are printed; every file
after the first is compared with the first on the same rows: the AUC difference with DeLong's
standard error and the log-loss difference with the standard error of its per-row mean, each
with a two-sided p-value.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from model.quality import auc_difference, calibration, logloss_difference, normalized_entropy, quality
from profiler.cli import check_output_path
from profiler.store import write_json_atomic

__all__ = ["add_commands", "quality_command", "read_predictions"]

_HEADER = "label,probability"


def read_predictions(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(labels, probabilities) of a `label,probability` CSV; ValueError naming the file and line of bad input."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    if path.is_dir():
        raise IsADirectoryError(f"{path}: is a directory, not a predictions CSV")
    try:
        text = path.read_text()
    except UnicodeDecodeError:
        raise ValueError(f"{path}: not text (a binary file?); expected a {_HEADER!r} CSV") from None
    lines = text.splitlines()
    if not lines or lines[0].strip() != _HEADER:
        first = lines[0][:60] if lines else "(empty file)"
        raise ValueError(f"{path}:1: expected the header {_HEADER!r}, got {first!r}")
    labels, probs = np.empty(len(lines) - 1), np.empty(len(lines) - 1)
    for i, line in enumerate(lines[1:]):
        fields = line.split(",")
        try:
            if len(fields) != 2:
                raise ValueError(f"{len(fields)} fields")
            y, p = float(fields[0]), float(fields[1])
        except ValueError as exc:
            raise ValueError(f"{path}:{i + 2}: expected 'label,probability', got {line[:60]!r} ({exc})") from None
        if y not in (0.0, 1.0):
            raise ValueError(f"{path}:{i + 2}: label {fields[0]!r} is not 0 or 1")
        if not 0.0 <= p <= 1.0:  # NaN fails too
            raise ValueError(f"{path}:{i + 2}: probability {fields[1]!r} is not in [0, 1]")
        labels[i], probs[i] = y, p
    if labels.size == 0:
        raise ValueError(f"{path}: no predictions after the header")
    return labels, probs


def _star(p: float) -> str:
    return "significant (p < 0.05)" if p < 0.05 else "not significant"


def quality_command(args: argparse.Namespace) -> int:
    if args.json_out:
        check_output_path("--json-out", args.json_out)
    files = [read_predictions(f) for f in args.files]
    y0 = files[0][0]
    for name, (y, _) in zip(args.files[1:], files[1:], strict=True):
        if y.size != y0.size:
            raise ValueError(f"{name}: {y.size} rows, but {args.files[0]} has {y0.size}: not the same test rows")
        bad = np.flatnonzero(y != y0)
        if bad.size:
            raise ValueError(
                f"{name}:{bad[0] + 2}: label {int(y[bad[0]])} differs from {args.files[0]}'s "
                f"({bad.size} rows differ): not the same test rows in the same order"
            )
    width = max(len("predictions"), *(len(f) for f in args.files))
    print(
        f"{'predictions':<{width}}  {'rows':>7}  {'AUC':>7}  {'log loss':>9}  {'NE':>7}  {'calib.':>6}  {'accuracy':>9}"
    )
    per_file: list[dict[str, object]] = []
    against: list[dict[str, object]] = []
    for name, (y, p) in zip(args.files, files, strict=True):
        q, ne, cal = quality(y, p), normalized_entropy(y, p), calibration(y, p)
        print(f"{name:<{width}}  {q.samples:>7}  {q.auc:>7.4f}  {q.logloss:>9.5f}  {ne:>7.4f}  {cal:>6.3f}  "
              f"{100 * q.accuracy:>8.2f}%")  # fmt: skip
        per_file.append({"file": name, **q.to_dict(), "normalized_entropy": ne, "calibration": cal})
    for name, (_, p) in zip(args.files[1:], files[1:], strict=True):
        auc = auc_difference(y0, p, files[0][1])
        ll = logloss_difference(y0, p, files[0][1])
        print(f"{name} - {args.files[0]}:")
        print(f"  AUC       {auc.diff:+.4f} +- {auc.se:.4f} (DeLong), p = {auc.p_value:.3g}: {_star(auc.p_value)}")
        print(f"  log loss  {ll.diff:+.5f} +- {ll.se:.5f} (paired rows), p = {ll.p_value:.3g}: {_star(ll.p_value)}")
        against.append({"file": name, "auc": auc.to_dict(), "logloss": ll.to_dict()})
    if args.json_out:
        write_json_atomic(args.json_out, {"files": per_file, "against_first": against})
        print(f"wrote {args.json_out}")
    return 0


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "quality",
        help="AUC, log loss, accuracy of saved test predictions; paired differences (DeLong) against the first",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="+", help="--test-predictions-out CSVs of models evaluated on the same rows")
    p.add_argument("--json-out", default="", help="write the metrics and differences as JSON")
    p.set_defaults(func=quality_command)
