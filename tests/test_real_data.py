"""The real-data goal: DLRM against one-hot logistic regression on held-out Criteo rows (wide-resdnn, 8000 rows).

Split: the first 6400 rows train, the last 1600 are held out (--test-fraction 0.2). The
baseline (`dlrmbench baseline`) sees the same rows, the same dense transform and the same
vocabulary (every categorical value of the training rows: a one-hot weight each, an embedding
row each for DLRM); its L2 strength is picked on the last fifth of the training rows. `dlrmbench quality` prints the
difference with its standard error (DeLong for AUC).
DLRM's settings were picked by scripts/criteo_cv.py on the training rows, never on the test rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.criteo_cache import preprocess
from model.presets import CRITEO_SAMPLE_FLAGS
from model.quality import auc_difference, log_loss
from model.quality_cli import read_predictions
from profiler.cli import main

RAW = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "criteo" / "wide-resdnn" / "train.txt"
pytestmark = pytest.mark.skipif(not RAW.is_file(), reason=f"real Criteo sample absent: {RAW}")

DLRM_FLAGS = [  # the README's command
    "--data-generation=dataset", f"--raw-data-file={RAW}", "--test-fraction=0.2", *CRITEO_SAMPLE_FLAGS,
    "--print-freq=1000",
]  # fmt: skip


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("real")
    cache = tmp / "cache"
    out, preds = tmp / "dlrm.json", tmp / "dlrm.csv"
    argv = [
        "train",
        *DLRM_FLAGS,
        f"--processed-data-file={cache}",
        f"--json-out={out}",
        f"--test-predictions-out={preds}",
    ]
    assert main(argv) == 0
    dlrm = json.loads(out.read_text())["test"]
    lr_out, lr_preds = tmp / "lr.json", tmp / "lr.csv"
    assert main(["baseline", f"--raw-data-file={RAW}", "--test-fraction=0.2", f"--processed-data-file={cache}",
                 f"--json-out={lr_out}", f"--test-predictions-out={lr_preds}"]) == 0  # fmt: skip
    lr = json.loads(lr_out.read_text())
    baseline = lr["test"]
    labels, _ = read_predictions(lr_preds)
    n_train = lr["data"]["train_rows"]
    prior = np.asarray(preprocess(RAW, cache)[0].labels[:n_train]).mean()
    constant = log_loss(labels, np.full_like(labels, prior))
    print(f"\nDLRM {dlrm}\nlogistic regression (l2 {lr['l2']:g}) {baseline}\nconstant log loss {constant:.4f}")
    assert main(["quality", str(lr_preds), str(preds)]) == 0  # prints DLRM - baseline with standard errors
    paired = auc_difference(labels, read_predictions(preds)[1], read_predictions(lr_preds)[1])
    return dlrm, baseline, constant, paired


def test_both_models_learn(results):
    dlrm, baseline, constant, _ = results
    assert dlrm["samples"] == baseline["samples"] == 1600
    assert baseline["auc"] > 0.72 and baseline["logloss"] < constant - 0.03
    assert dlrm["auc"] > 0.70 and dlrm["logloss"] < constant - 0.03


def test_dlrm_is_not_significantly_behind_the_baseline(results):
    # DLRM losing by more than two paired (DeLong) standard errors, about 0.0025 AUC on these rows with the
    # LR warm start (0.008 trained from scratch), is a regression, not noise
    dlrm, baseline, _, paired = results
    assert paired.a == pytest.approx(dlrm["auc"]) and paired.b == pytest.approx(baseline["auc"])
    assert paired.diff > -2 * paired.se


def test_dlrm_beats_logistic_regression(results):
    """The issue's goal, on the README's split and seed: DLRM 0.7451 / 0.45105 against 0.7444 / 0.45133.
    The margin is under one standard error (+0.0007 +- 0.0012 AUC); seeds 1-4 are ahead on both too."""
    dlrm, baseline, _, _ = results
    assert dlrm["auc"] > baseline["auc"] and dlrm["logloss"] < baseline["logloss"]
