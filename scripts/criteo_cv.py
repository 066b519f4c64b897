"""DLRM against one-hot logistic regression by K-fold cross-validation on the training rows (issue #6).

    python scripts/criteo_cv.py [--raw-data-file F] [--rows 6400] [--folds 5] [--seeds 1,2,3] \
        [--scheme kfold|forward|external] [--test-file F] [--json-out cv.json] -- [dlrmbench train flags]

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

`--scheme external` trains on all the rows (or the first `--rows`) and tests on other files'
rows (`--test-file`, repeatable; by default the 400 PaddleRec rows of ../shared/data, which
share no row with the training file). One split, so the differences come with DeLong's
standard error per seed instead of a spread over folds.
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

from model.criteo_cache import preprocess
from model.criteo_format import detect_layout, iter_lines, open_raw
from model.presets import CRITEO_SAMPLE_FLAGS
from model.quality import auc_difference, logloss_difference, quality
from model.quality_cli import read_predictions
from profiler.cli import main as dlrmbench
from profiler.store import write_json_atomic

ROOT = Path(__file__).resolve().parents[1]
RAW = ROOT / ".." / "shared" / "data" / "criteo" / "wide-resdnn" / "train.txt"
PADDLEREC = [
    RAW.parents[1] / "paddlerec" / name
    for name in (
        "sample_train.txt",
        "sample_test.txt",
        "ctr_dnn_2020-03-31/sample_train.txt",
        "tools_dataset_utils/part-0",
    )
]
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


def join_test_files(files: list[Path], tmp: Path) -> Path:
    """One raw file holding every test file's rows, in order.

    Each file is first read by the loader on its own, so a bad line is reported with its own
    file and line number, and a headered CSV is refused (its header would land mid-file); a
    last line without its newline gets one. A single file is used as it is.
    """
    if len(files) == 1:
        return files[0]
    tmp.mkdir(parents=True, exist_ok=True)
    joined = tmp / "test-rows.txt"
    with joined.open("w") as out:
        for i, path in enumerate(files):
            preprocess(path, tmp / f"check{i}")
            with open_raw(path) as f:
                for lineno, line, _ in iter_lines(f, path):
                    if lineno == 1 and detect_layout(line, path).has_header:
                        raise ValueError(f"{path}: a headered CSV; only raw TSV files can be joined, give it alone")
                    out.write(line + "\n")
    return joined


def _baseline(raw: Path, cache_dir: Path, test_fraction: float, out: Path, test_file: Path | None = None) -> dict:
    """`dlrmbench baseline` on the same split, quietly; its test metrics and chosen l2."""
    split = f"--test-raw-data-file={test_file}" if test_file else f"--test-fraction={test_fraction}"
    argv = ["baseline", f"--raw-data-file={raw}", split, f"--processed-data-file={cache_dir}",
            f"--json-out={out}", f"--test-predictions-out={out.with_suffix('.csv')}"]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()) as log:
        code = dlrmbench(argv)
    if code != 0:
        raise SystemExit(f"dlrmbench {' '.join(argv)} failed ({code}):\n{log.getvalue()[-2000:]}")
    record = json.loads(out.read_text())
    return record["test"] | {"l2": record["l2"], "train_rows": record["data"]["train_rows"]}


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
    p.add_argument("--raw-data-file", type=Path, default=RAW, help="(default: the bundled sample, %(default)s)")
    p.add_argument("--rows", type=int, help="the first this many rows are used (default 6400; external: all)")
    p.add_argument("--folds", type=int, default=5, help="(default 5)")
    p.add_argument("--seeds", default="1,2,3", help="DLRM seeds (--numpy-rand-seed) per fold (default 1,2,3)")
    p.add_argument(
        "--scheme",
        choices=("kfold", "forward", "external"),
        default="kfold",
        help="kfold: train on all other folds; forward: on the folds before only (fold 0 is not tested); "
        "external: on all the rows, tested on --test-file",
    )
    p.add_argument(
        "--test-file",
        type=Path,
        action="append",
        help="external: a raw file of held-out rows (repeatable; default: the PaddleRec samples)",
    )
    p.add_argument("--json-out", type=Path)
    args = p.parse_args(ours)
    if args.test_file and args.scheme != "external":
        p.error("--test-file is for --scheme external")
    if args.rows is None:
        args.rows = None if args.scheme == "external" else 6400
    flags = flags or list(CRITEO_SAMPLE_FLAGS)
    clash = [f for f in flags if f.split("=")[0] in _OWN]
    if clash:
        p.error(f"{', '.join(clash)}: this script sets the data, seed and output flags itself")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds {args.seeds!r}: give whole numbers, comma-separated (e.g. 1,2,3)")
    if not args.raw_data_file.is_file():
        p.error(f"--raw-data-file {args.raw_data_file}: no such file")
    if args.scheme == "external":
        return _external(args, flags, seeds, p)
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


def _external(args: argparse.Namespace, flags: list[str], seeds: list[int], p: argparse.ArgumentParser) -> int:
    """Train on the training file's rows, test on other files' rows: DLRM per seed, their ensemble, the baseline."""
    tests = args.test_file or PADDLEREC
    missing = [str(t) for t in tests if not t.is_file()]
    if missing:
        p.error(f"--test-file {', '.join(missing)}: no such file")
    record: dict = {"raw_data_file": str(args.raw_data_file), "test_files": [str(t) for t in tests], "flags": flags,
                    "seeds": seeds, "scheme": "external"}  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="dlrmbench-cv-") as tmp:
        raw = args.raw_data_file
        if args.rows is not None:
            raw = Path(tmp) / "train.txt"
            raw.write_text("".join(args.raw_data_file.read_text().splitlines(keepends=True)[: args.rows]))
        try:
            test = join_test_files(tests, Path(tmp))
        except ValueError as exc:
            p.error(str(exc))
        cache = Path(tmp) / "cache"
        scores = []
        for seed in seeds:
            labels, s = _dlrm_scores(["train", "--data-generation=dataset", f"--raw-data-file={raw}",
                                      f"--test-raw-data-file={test}", f"--processed-data-file={cache}",
                                      f"--numpy-rand-seed={seed}", *flags], Path(tmp) / "p.csv")  # fmt: skip
            scores.append(s)
        lr = _baseline(raw, cache, 0.0, Path(tmp) / "lr.json", test)
        lr_labels, lr_scores = read_predictions(Path(tmp) / "lr.csv")
        assert np.array_equal(labels, lr_labels), "DLRM and the baseline must score the same rows"
    record["train_rows"], record["samples"] = lr["train_rows"], len(labels)
    print(f"trained on {lr['train_rows']} rows of {args.raw_data_file}, tested on {len(labels)} rows of "
          f"{len(tests)} other file(s); the baseline: auc {lr['auc']:.4f}, logloss {lr['logloss']:.4f} "
          f"(l2 {lr['l2']:g})")  # fmt: skip
    print(f"{'model':>10} {'auc':>7} {'logloss':>8} {'d auc (DeLong se), p':>24} {'d logloss (se)':>17}")
    named = [*((f"seed {seed}", s) for seed, s in zip(seeds, scores, strict=True)), ("ensemble", np.mean(scores, 0))]
    rows = [(name, quality(labels, s).to_dict(), s) for name, s in named]
    for name, q, s in rows:
        da, dl = auc_difference(labels, s, lr_scores), logloss_difference(labels, s, lr_scores)
        q |= {"auc_difference": da.to_dict(), "logloss_difference": dl.to_dict()}
        print(f"{name:>10} {q['auc']:7.4f} {q['logloss']:8.4f} {da.diff:+8.4f} ({da.se:.4f}) p {da.p_value:.2f} "
              f"{dl.diff:+8.4f} ({dl.se:.4f})")  # fmt: skip
    record["dlrm"] = [q for _, q, _ in rows[:-1]]
    record["ensemble"], record["baseline"] = rows[-1][1], lr
    mean_auc = float(np.mean([q["auc"] for q in record["dlrm"]]))
    print(f"DLRM mean over seeds: auc {mean_auc:.4f}, {mean_auc - lr['auc']:+.4f} against the baseline")
    if args.json_out:
        write_json_atomic(args.json_out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
