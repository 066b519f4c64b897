"""Quality metrics: exact rank AUC with ties against hand-computed cases and a brute-force pair count."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from model.quality import LOGLOSS_EPS, accuracy, log_loss, quality, roc_auc


def test_auc_with_ties_by_hand():
    # positives score 0.4, 0.8, 0.9; negatives 0.1, 0.4, 0.8. Pairs won (tie = 1/2):
    #   0.4: beats 0.1, ties 0.4, loses to 0.8   -> 1.5
    #   0.8: beats 0.1 and 0.4, ties 0.8         -> 2.5
    #   0.9: beats all three                     -> 3
    # AUC = 7 / 9
    labels = [0, 0, 1, 1, 0, 1]
    scores = [0.1, 0.4, 0.4, 0.8, 0.8, 0.9]
    assert roc_auc(labels, scores) == pytest.approx(7 / 9, abs=1e-12)


@pytest.mark.parametrize(
    ("labels", "scores", "expected"),
    [
        ([0, 1, 0, 1], [0.2, 0.2, 0.2, 0.2], 0.5),  # all tied
        ([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], 1.0),
        ([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4], 0.0),
        ([0, 1, 1], [0.5, 0.5, 0.9], 0.75),  # one tie of two pairs
    ],
)
def test_auc_simple_cases(labels, scores, expected):
    assert roc_auc(labels, scores) == pytest.approx(expected, abs=1e-12)


def test_auc_equals_pair_count_on_random_ties():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300), 1)  # many ties
    pos, neg = p[y == 1], p[y == 0]
    brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (pos.size * neg.size)
    assert roc_auc(y, p) == pytest.approx(brute, abs=1e-12)


def test_auc_of_one_class_is_nan_and_json_null():
    assert math.isnan(roc_auc([1, 1], [0.3, 0.4]))
    d = quality([1, 1], [0.3, 0.4]).to_dict()
    assert d["auc"] is None and d["samples"] == 2
    json.dumps(d, allow_nan=False)


def test_log_loss_and_accuracy_by_hand():
    assert log_loss([1, 0], [0.8, 0.4]) == pytest.approx(-(math.log(0.8) + math.log(0.6)) / 2)
    assert log_loss([0], [1.0]) == pytest.approx(-math.log(LOGLOSS_EPS), rel=1e-6)  # clipped, finite
    assert accuracy([1, 0, 1, 0], [0.9, 0.5, 0.5, 0.1]) == 0.75  # 0.5 rounds down, as np.round


def test_length_mismatch_is_an_error():
    with pytest.raises(ValueError, match="differ in length"):
        roc_auc([0, 1], [0.5])
