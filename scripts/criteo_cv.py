"""DLRM against one-hot logistic regression by K-fold cross-validation on the training rows (issue #6).

    python scripts/criteo_cv.py [--raw-data-file F] [--rows 6400] [--folds 5] [--seeds 1,2,3] \
        [--scheme kfold|forward] [--json-out cv.json] -- [dlrmbench train flags]

One held-out split of 1,600 rows measures AUC to about +-0.012 (one standard error), more
than the differences between the settings worth comparing; seeds move DLRM by as much again.
This splits the first `--rows` rows (the README's training rows; the held-out tail is never
read) into K contiguous folds. For each fold it writes a copy of the rows with that fold last
into a temporary folder, trains DLRM on the others with the given `dlrmbench train` flags once
per seed (`--test-fraction 1/K` holds the fold out, so the vocabulary comes from the training
folds only), fits the baseline of tests/test_real_data.py on the same rows, and prints per
fold and overall: DLRM's mean over seeds, the seeds' spread, the mean of the seeds'
predictions (an ensemble), the baseline, and the paired difference, with its standard error
over folds. Without train flags it uses the README's Criteo command.

`--scheme forward` validates as the held-out split tests, forward in time (Criteo's rows are in
time order): fold k (k >= 1) is predicted from the rows before it only, never from later ones.
Values that first appear late in the training rows, seen only a few times, matter more then.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

from model.presets import CRITEO_SAMPLE_FLAGS
from model.quality import quality
from model.quality_cli import read_predictions
from profiler.cli import main as dlrmbench
from profiler.store import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / ".." / "shared" / "data" / "criteo" / "wide-resdnn" / "train.txt"
_OWN = ("--raw-data-file", "--test-fraction", "--test-raw-data-file", "--numpy-rand-seed", "--json-out",
        "--processed-data-file", "--save-model", "--test-predictions-out")  # fmt: skip


def fold_bounds(n: int, folds: int, k: int) -> tuple[int, int]:
    """Rows [lo, hi) of fold k, the k-th of `folds` contiguous, near-equal parts of n rows."""
    bounds = np.linspace(0, n, folds + 1).round().astype(int)
    return int(bounds[k]), int(bounds[k + 1])


def paired(diffs: np.ndarray | list[float]) -> dict[str, float]:
    """Mean and standard error (sample standard deviation / sqrt(K)) of K per-fold differences."""
    d = np.asarray(diffs, dtype=np.float64)
    return {"mean": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(len(d)))}


def fold_lines(lines: list[str], folds: int, k: int, scheme: str = "kfold") -> list[str]:
    """The rows split k trains and tests on, fold k last: kfold, all rows; forward, those before the fold."""
    lo, hi = fold_bounds(len(lines), folds, k)
    if scheme == "forward":
        return lines[:hi]
    return lines[:lo] + lines[hi:] + lines[lo:hi]


def _dlrm_scores(argv: list[str], predictions: Path) -> tuple[np.ndarray, np.ndarray]:
    """Run `dlrmbench train` quietly; the labels and probabilities of its final evaluation."""
    with contextlib.redirect_stdout(io.StringIO()) as out:
        code = dlrmbench([*argv, f"--test-predictions-out={predictions}"])
    if code != 0:
        raise SystemExit(f"dlrmbench train {' '.join(argv)} failed ({code}):\n{out.getvalue()[-2000:]}")
    return read_predictions(predictions)


def _baseline(raw: Path, cache_dir: Path, test_fraction: float, out: Path) -> dict:
    """`dlrmbench baseline` on the same split, quietly; its test metrics and chosen l2."""
    argv = ["baseline", f"--raw-data-file={raw}", f"--test-fraction={test_fraction}",
            f"--processed-data-file={cache_dir}", f"--json-out={out}"]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()) as log:
        code = dlrmbench(argv)
    if code != 0:
        raise SystemExit(f"dlrmbench {' '.join(argv)} failed ({code}):\n{log.getvalue()[-2000:]}")
    record = json.loads(out.read_text())
    return record["test"] | {"l2": record["l2"]}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ours, flags = (argv[: argv.index("--")], argv[argv.index("--") + 1 :]) if "--" in argv else (argv, [])
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        usage="%(prog)s [options] [-- dlrmbench train flags ...]",
        epilog="Flags after -- go to `dlrmbench train` (default: the README's Criteo command's model and "
        "training flags); the data, seed and output flags (--raw-data-file, --test-fraction, --numpy-rand-seed, "
        "--json-out, ...) are this script's own and refused there.",
    )
    p.add_argument("--raw-data-file", type=Path, default=RAW)
    p.add_argument("--rows", type=int, default=6400, help="the first this many rows are cross-validated")
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--seeds", default="1,2,3", help="DLRM seeds (--numpy-rand-seed) per fold")
    p.add_argument(
        "--scheme",
        choices=("kfold", "forward"),
        default="kfold",
        help="kfold: train on all other folds; forward: on the folds before only (fold 0 is not tested)",
    )
    p.add_argument("--json-out", type=Path)
    args = p.parse_args(ours)
    flags = flags or list(CRITEO_SAMPLE_FLAGS)
    clash = [f for f in flags if f.split("=")[0] in _OWN]
    if clash:
        p.error(f"{', '.join(clash)}: this script sets the data, seed and output flags itself")
    seeds = [int(s) for s in args.seeds.split(",")]
    if not args.raw_data_file.is_file():
        p.error(f"--raw-data-file {args.raw_data_file}: no such file")
    lines = args.raw_data_file.read_text().splitlines(keepends=True)[: args.rows]
    least = 3 if args.scheme == "forward" else 2  # forward tests folds 1.. only; a standard error needs two
    if args.folds < least or len(lines) < 10 * args.folds:
        p.error(f"{len(lines)} rows in {args.folds} folds: need --folds >= {least} ({args.scheme}) and 10 rows a fold")
    record: dict = {"raw_data_file": str(args.raw_data_file), "rows": len(lines), "folds": [], "flags": flags,
                    "seeds": seeds, "scheme": args.scheme}  # fmt: skip
    print(f"{'fold':>4} {'rows':>11} {'DLRM auc':>9} {'(seeds)':>15} {'ens auc':>8} {'LR auc':>7} {'d auc':>7} "
          f"{'DLRM ll':>8} {'ens ll':>7} {'LR ll':>7} {'d ll':>7}")  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="dlrmbench-cv-") as tmp:
        for k in range(1 if args.scheme == "forward" else 0, args.folds):
            raw = Path(tmp) / f"fold{k}.txt"
            split = fold_lines(lines, args.folds, k, args.scheme)
            raw.write_text("".join(split))
            lo, hi = fold_bounds(len(lines), args.folds, k)
            frac = (hi - lo) / len(split)  # exactly this fold's rows: split_rows rounds n * frac
            runs, scores = [], []
            for seed in seeds:
                labels, s = _dlrm_scores(["train", "--data-generation=dataset", f"--raw-data-file={raw}",
                                               f"--test-fraction={frac}", f"--processed-data-file={tmp}/c{k}",
                                               f"--numpy-rand-seed={seed}", *flags], Path(tmp) / "p.csv")  # fmt: skip
                runs.append(quality(labels, s).to_dict())
                scores.append(s)
            ens = quality(labels, np.mean(scores, 0)).to_dict()
            lr = _baseline(raw, Path(tmp) / f"c{k}", frac, Path(tmp) / "lr.json")
            auc = [r["auc"] for r in runs]
            ll = [r["logloss"] for r in runs]
            assert runs[0]["samples"] == hi - lo, "the held-out split must be exactly the fold"
            fold = {"fold": k, "rows": [lo + 1, hi], "samples": hi - lo, "dlrm": runs, "ensemble": ens, "baseline": lr}
            record["folds"].append(fold)
            print(f"{k:>4} {lo + 1:>5}-{hi:<5} {np.mean(auc):9.4f} "
                  f"{min(auc):7.4f}-{max(auc):.4f} {ens['auc']:8.4f} {lr['auc']:7.4f} "
                  f"{np.mean(auc) - lr['auc']:+7.4f} {np.mean(ll):8.4f} {ens['logloss']:7.4f} "
                  f"{lr['logloss']:7.4f} {np.mean(ll) - lr['logloss']:+7.4f}", flush=True)  # fmt: skip
    per_fold = {}  # each model's metric per fold; DLRM's is the mean over its seeds
    for m in ("auc", "logloss"):
        per_fold[f"dlrm_{m}"] = np.array([np.mean([r[m] for r in f["dlrm"]]) for f in record["folds"]])
        per_fold[f"ensemble_{m}"] = np.array([f["ensemble"][m] for f in record["folds"]])
        per_fold[f"baseline_{m}"] = np.array([f["baseline"][m] for f in record["folds"]])
    mean = record["mean"] = {k: float(v.mean()) for k, v in per_fold.items()}
    record["paired_difference"] = {  # DLRM (mean over seeds) or the seeds' ensemble minus the baseline
        k: paired(per_fold[f"{who}_{m}"] - per_fold[f"baseline_{m}"])
        for k, who, m in (("auc", "dlrm", "auc"), ("logloss", "dlrm", "logloss"),
                          ("ensemble_auc", "ensemble", "auc"), ("ensemble_logloss", "ensemble", "logloss"))
    }  # fmt: skip
    print(f"mean {'':>11} {mean['dlrm_auc']:9.4f} {'':>15} {mean['ensemble_auc']:8.4f} {mean['baseline_auc']:7.4f} "
          f"{mean['dlrm_auc'] - mean['baseline_auc']:+7.4f} {mean['dlrm_logloss']:8.4f} "
          f"{mean['ensemble_logloss']:7.4f} {mean['baseline_logloss']:7.4f} "
          f"{mean['dlrm_logloss'] - mean['baseline_logloss']:+7.4f}")  # fmt: skip
    d = record["paired_difference"]
    print("paired difference from the baseline, mean +- standard error over folds: "
          + ", ".join(f"{k.replace('_', ' ')} {d[k]['mean']:+.4f} +- {d[k]['se']:.4f}" for k in d)
          + " (the folds share training rows, so this understates the uncertainty)")  # fmt: skip
    if args.json_out:
        write_json_atomic(args.json_out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
