"""Quality metrics: exact rank AUC with ties against hand-computed cases and a brute-force pair count."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from model.quality import (
    LOGLOSS_EPS,
    accuracy,
    auc_difference,
    calibration,
    log_loss,
    logloss_difference,
    normalized_entropy,
    quality,
    roc_auc,
)


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


def _delong_by_pairs(y, a, b):
    """DeLong's variance from the pair matrix psi(x, y) = 1, 1/2, 0, by explicit loops over pairs."""
    pos, neg = [i for i in range(len(y)) if y[i] == 1], [i for i in range(len(y)) if y[i] == 0]

    def psi(s, i, j):
        return 1.0 if s[i] > s[j] else 0.5 if s[i] == s[j] else 0.0

    v10 = [[sum(psi(s, i, j) for j in neg) / len(neg) for i in pos] for s in (a, b)]
    v01 = [[sum(psi(s, i, j) for i in pos) / len(pos) for j in neg] for s in (a, b)]

    def cov(u, v):
        mu, mv = sum(u) / len(u), sum(v) / len(v)
        return sum((x - mu) * (z - mv) for x, z in zip(u, v, strict=True)) / (len(u) - 1)

    var = sum((cov(v[0], v[0]) + cov(v[1], v[1]) - 2 * cov(v[0], v[1])) / len(v[0]) for v in (v10, v01))
    aucs = [sum(v) / len(v) for v in v10]
    return aucs[0] - aucs[1], math.sqrt(var)


def test_auc_difference_matches_delong_by_pairs_with_ties():
    rng = np.random.default_rng(7)
    y = (rng.random(60) < 0.3).astype(int)
    a = np.round(rng.random(60) + 0.5 * y, 1)  # rounded: many ties within and across labels
    b = np.round(rng.random(60) + 0.2 * y, 1)
    diff, se = _delong_by_pairs(y.tolist(), a.tolist(), b.tolist())
    got = auc_difference(y, a, b)
    assert got.diff == pytest.approx(diff, abs=1e-12) and got.se == pytest.approx(se, rel=1e-9)
    assert got.a == pytest.approx(roc_auc(y, a), abs=1e-12) and got.b == pytest.approx(roc_auc(y, b), abs=1e-12)
    assert got.p_value == pytest.approx(math.erfc(abs(diff) / se / math.sqrt(2)), rel=1e-9)


def test_auc_difference_standard_error_matches_the_spread_over_draws():
    # two noisy scorers of the same rows, one better: DeLong's SE should match the SD of the difference
    rng = np.random.default_rng(3)
    diffs, ses = [], []
    for _ in range(300):
        y = (rng.random(300) < 0.25).astype(int)
        latent = y + rng.normal(0, 1.0, 300)
        a = latent + rng.normal(0, 0.7, 300)
        b = latent + rng.normal(0, 1.2, 300)
        d = auc_difference(y, a, b)
        diffs.append(d.diff)
        ses.append(d.se)
    assert np.mean(diffs) > 0.02  # a is the better scorer
    assert np.std(diffs, ddof=1) == pytest.approx(np.mean(ses), rel=0.15)


def test_auc_difference_of_one_model_with_itself_is_zero():
    y = np.array([0, 1, 0, 1, 1, 0])
    p = np.array([0.1, 0.8, 0.4, 0.35, 0.9, 0.2])
    d = auc_difference(y, p, p)
    assert (d.diff, d.se, d.p_value) == (0.0, 0.0, 1.0)


def test_auc_difference_rejects_too_few_rows_of_a_label():
    with pytest.raises(ValueError, match="two rows of each label"):
        auc_difference([0, 0, 1], [0.1, 0.2, 0.3], [0.3, 0.2, 0.1])
    with pytest.raises(ValueError, match="differ in length: 4 vs 3"):
        auc_difference([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], [0.3, 0.2, 0.1])


def test_logloss_difference_by_hand():
    y = [1, 0, 1, 0]
    a = [0.9, 0.2, 0.6, 0.5]
    b = [0.7, 0.1, 0.8, 0.5]
    d = [
        -math.log(pa) + math.log(pb) if t else -math.log(1 - pa) + math.log(1 - pb)
        for t, pa, pb in zip(y, a, b, strict=True)
    ]
    mean = sum(d) / 4
    se = math.sqrt(sum((x - mean) ** 2 for x in d) / 3 / 4)
    got = logloss_difference(y, a, b)
    assert got.diff == pytest.approx(mean, abs=1e-12) and got.se == pytest.approx(se, abs=1e-12)
    assert got.a == pytest.approx(log_loss(y, a), abs=1e-12) and got.b == pytest.approx(log_loss(y, b), abs=1e-12)


def test_normalized_entropy_and_calibration_by_hand():
    y = [1, 0, 0, 0]
    p = [0.6, 0.2, 0.1, 0.3]
    ll = -(math.log(0.6) + math.log(0.8) + math.log(0.9) + math.log(0.7)) / 4
    h = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75))
    assert normalized_entropy(y, p) == pytest.approx(ll / h, rel=1e-12)
    assert normalized_entropy(y, [0.25] * 4) == pytest.approx(1.0, rel=1e-12)  # the positive rate everywhere
    assert calibration(y, p) == pytest.approx(1.2, rel=1e-12)
    assert math.isnan(normalized_entropy([1, 1], [0.5, 0.6])) and math.isnan(calibration([0, 0], [0.1, 0.2]))


def test_accuracy_rounds_a_probability_of_one_half_to_label_0():
    # a 0.5 prediction counts as 0 (np.round): right for the label-0 row, wrong for the label-1 row
    assert accuracy([0, 0], [0.5, 0.5]) == 1.0
    assert accuracy([1, 1], [0.5, 0.5]) == 0.0
    assert accuracy([1, 0, 0], [0.51, 0.5, 0.49]) == 1.0


def test_log_loss_clips_a_zero_probability_of_a_positive():
    # p = 0 for a label-1 row is clipped to LOGLOSS_EPS: finite, -log(eps) for that row
    assert log_loss([1], [0.0]) == pytest.approx(-math.log(LOGLOSS_EPS), rel=1e-6)
    assert log_loss([1, 0], [0.0, 0.0]) == pytest.approx(-(math.log(LOGLOSS_EPS) + math.log1p(-LOGLOSS_EPS)) / 2)
    d = logloss_difference([1, 0], [0.0, 1.0], [0.5, 0.5])  # a: both rows certain and wrong, clipped
    assert d.a == pytest.approx(-math.log(LOGLOSS_EPS), rel=1e-6) and math.isfinite(d.diff)
    assert d.diff == pytest.approx(-math.log(LOGLOSS_EPS) + math.log(0.5), rel=1e-6)


def test_a_soft_label_of_one_half_counts_as_negative_in_the_auc():
    # labels above 0.5 are positive: 0.5 is a negative, so the positive 0.9 outscores both negatives
    assert roc_auc([0.5, 0.0, 1.0], [0.2, 0.1, 0.9]) == 1.0
    assert roc_auc([0.5, 1.0, 0.0], [0.95, 0.9, 0.1]) == pytest.approx(0.5)  # 1.0 beats 0.0, loses to 0.5


def test_a_difference_with_no_spread_at_all_is_certain():
    # a separates the labels perfectly (AUC 1), b scores every row alike (AUC 0.5): every structural
    # component is constant, so the standard error is 0 and a nonzero difference has p-value 0
    y = [0, 0, 1, 1]
    d = auc_difference(y, [0.1, 0.2, 0.8, 0.9], [0.5, 0.5, 0.5, 0.5])
    assert (d.a, d.b, d.diff, d.se, d.p_value) == (1.0, 0.5, 0.5, 0.0, 0.0)
