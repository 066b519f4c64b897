"""The logistic baseline against Newton's method, `dlrmbench baseline` and `dlrmbench quality` end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_criteo import _line, _write

from model.baseline import fit_logistic
from model.data import Batch
from profiler.cli import main


def _newton(X: np.ndarray, y: np.ndarray, l2: float, penalised: np.ndarray) -> np.ndarray:
    """argmin mean log loss + l2/2 ||w[penalised]||^2 by Newton's method (the problem is strictly convex)."""
    w = np.zeros(X.shape[1])
    reg = l2 * penalised.astype(float)
    for _ in range(50):
        p = 1 / (1 + np.exp(-X @ w))
        grad = X.T @ (p - y) / len(y) + reg * w
        hess = (X.T * (p * (1 - p))) @ X / len(y) + np.diag(reg)
        w -= np.linalg.solve(hess, grad)
    return w


def test_fit_logistic_reaches_the_newton_optimum():
    rng = np.random.default_rng(5)
    table_rows, N, F, B = (4, 3, 6), 300, 2, 50
    dense = rng.normal(size=(N, F))
    rows = np.stack([rng.integers(0, r, N) for r in table_rows], 1)  # (N, T)
    y = (rng.random(N) < 1 / (1 + np.exp(-(dense[:, 0] + (rows[:, 0] == 1) - 0.5)))).astype(float)
    batches = [
        Batch(torch.tensor(dense[i : i + B], dtype=torch.float32).double().float(),
              torch.tensor(rows[i : i + B].T.reshape(-1)), torch.arange(len(table_rows) * B + 1),
              torch.tensor(y[i : i + B], dtype=torch.float32))
        for i in range(0, N, B)
    ]  # fmt: skip
    l2 = 0.01
    model = fit_logistic(batches, table_rows, F, l2, max_iter=500)
    starts = np.cumsum((0, *table_rows))[:-1]
    X = np.zeros((N, sum(table_rows) + F + 1))
    for t in range(len(table_rows)):
        X[np.arange(N), starts[t] + rows[:, t]] = 1.0
    X[:, sum(table_rows) : -1] = dense.astype(np.float32)
    X[:, -1] = 1.0
    penalised = np.r_[np.ones(sum(table_rows) + F), 0.0]  # the bias is not penalised
    w = _newton(X, y, l2, penalised)
    _, probs = model.predict(batches)
    np.testing.assert_allclose(probs.numpy(), 1 / (1 + np.exp(-X @ w)), atol=1e-5)  # L-BFGS stops within ~1e-6


def _criteo_file(tmp_path: Path, n: int = 120) -> tuple[Path, list[int]]:
    rng = np.random.default_rng(11)
    labels = [int(rng.random() < 0.35) for _ in range(n)]
    lines = []
    for y in labels:  # C1 gives the label away; the rest is noise
        cats = [f"{y * 3 + int(rng.integers(0, 3)):x}", *(f"{int(rng.integers(0, 9)):x}" for _ in range(25))]
        lines.append(_line(str(y), cats=cats))
    return _write(tmp_path / "t.txt", lines), labels


def _pair_auc(y: np.ndarray, p: np.ndarray) -> float:
    pos, neg = p[y == 1], p[y == 0]
    return float(
        ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (pos.size * neg.size)
    )


def _read_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    lines = path.read_text().splitlines()
    assert lines[0] == "label,probability"
    table = np.array([[float(v) for v in line.split(",")] for line in lines[1:]])
    return table[:, 0], table[:, 1]


def test_baseline_command_writes_the_test_rows_predictions(tmp_path, capsys):
    raw, labels = _criteo_file(tmp_path)
    preds, out = tmp_path / "lr.csv", tmp_path / "lr.json"
    argv = ["baseline", f"--raw-data-file={raw}", "--test-fraction=0.25", f"--processed-data-file={tmp_path / 'c'}",
            "--l2-grid=0.001,0.01", f"--test-predictions-out={preds}", f"--json-out={out}"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "logistic regression (l2 " in printed
    assert "is at the edge of --l2-grid" in printed  # a two-value grid: either choice is an edge
    y, p = _read_csv(preds)
    assert y.tolist() == labels[90:]  # the last quarter, in file order
    record = json.loads(out.read_text())
    assert record["l2"] in (0.001, 0.01) and set(record["held_back_logloss"]) == {"0.001", "0.01"}
    assert record["test"]["samples"] == 30 and record["data"]["train_rows"] == 90
    assert record["test"]["auc"] == pytest.approx(_pair_auc(y, p), abs=1e-6)
    assert record["test"]["auc"] > 0.9  # C1 gives the label away


def test_baseline_command_needs_test_rows_and_a_good_grid(tmp_path, capsys):
    raw, _ = _criteo_file(tmp_path)
    assert main(["baseline", f"--raw-data-file={raw}", f"--processed-data-file={tmp_path / 'c'}"]) == 2
    assert "the baseline needs test rows" in capsys.readouterr().err
    assert main(["baseline", f"--raw-data-file={raw}", "--test-fraction=0.2", "--l2-grid=0.1,-1"]) == 2
    assert "--l2-grid '0.1,-1'" in capsys.readouterr().err
    assert main(["baseline", f"--raw-data-file={raw}", "--test-fraction=0.2", "--l2-grid=0.1,x"]) == 2
    assert "--l2-grid '0.1,x': give non-negative numbers" in capsys.readouterr().err


def _csv(path: Path, y, p) -> Path:
    path.write_text("label,probability\n" + "".join(f"{int(a)},{float(b)!r}\n" for a, b in zip(y, p, strict=True)))
    return path


def test_quality_compares_files_on_the_same_rows(tmp_path, capsys):
    rng = np.random.default_rng(2)
    y = (rng.random(400) < 0.3).astype(int)
    a = 1 / (1 + np.exp(-(1.5 * y + rng.normal(0, 1, 400))))  # the better model
    b = 1 / (1 + np.exp(-(0.5 * y + rng.normal(0, 1, 400))))
    fa, fb, out = _csv(tmp_path / "a.csv", y, a), _csv(tmp_path / "b.csv", y, b), tmp_path / "q.json"
    assert main(["quality", str(fa), str(fb), f"--json-out={out}"]) == 0
    text = capsys.readouterr().out
    diff = _pair_auc(y, b) - _pair_auc(y, a)
    assert f"AUC       {diff:+.4f} +- " in text and "significant (p < 0.05)" in text
    record = json.loads(out.read_text())
    assert [f["auc"] for f in record["files"]] == pytest.approx([_pair_auc(y, a), _pair_auc(y, b)], abs=1e-12)
    assert record["files"][1]["calibration"] == pytest.approx(b.sum() / y.sum(), rel=1e-12)
    rate = y.mean()
    ll_b = -(y * np.log(b) + (1 - y) * np.log(1 - b)).mean()
    assert record["files"][1]["normalized_entropy"] == pytest.approx(
        ll_b / -(rate * np.log(rate) + (1 - rate) * np.log(1 - rate)), rel=1e-9
    )
    d = record["against_first"][0]
    assert d["file"] == str(fb) and d["auc"]["diff"] == pytest.approx(diff, abs=1e-12) and d["auc"]["p_value"] < 0.05
    per_row = -(y * np.log(b) + (1 - y) * np.log(1 - b)) + (y * np.log(a) + (1 - y) * np.log(1 - a))
    assert d["logloss"]["diff"] == pytest.approx(per_row.mean(), abs=1e-12)


@pytest.mark.parametrize(
    "text, message",
    [
        ("", "1: expected the header 'label,probability', got '(empty file)'"),
        ("y,p\n1,0.5\n", "1: expected the header"),
        ("label,probability\n", "no predictions after the header"),
        ("label,probability\n1,0.5\n0,0.2,3\n", ":3: expected 'label,probability', got '0,0.2,3'"),
        ("label,probability\n1,0.5\n2,0.2\n", ":3: label '2' is not 0 or 1"),
        ("label,probability\n1,1.5\n", ":2: probability '1.5' is not in [0, 1]"),
        ("label,probability\n1,nan\n", ":2: probability 'nan' is not in [0, 1]"),
        ("label,probability\n1,x\n", ":2: expected 'label,probability', got '1,x'"),
    ],
)
def test_quality_names_the_file_and_line_of_bad_input(tmp_path, capsys, text, message):
    f = tmp_path / "p.csv"
    f.write_text(text)
    assert main(["quality", str(f)]) == 2
    err = capsys.readouterr().err
    assert f"{f}" in err and message in err


def test_quality_refuses_files_of_different_rows(tmp_path, capsys):
    a = _csv(tmp_path / "a.csv", [0, 1, 1, 0], [0.1, 0.9, 0.6, 0.3])
    b = _csv(tmp_path / "b.csv", [0, 1, 0, 0], [0.2, 0.8, 0.5, 0.3])
    c = _csv(tmp_path / "c.csv", [0, 1, 1], [0.2, 0.8, 0.5])
    assert main(["quality", str(a), str(b)]) == 2
    assert f"{b}:4: label 0 differs from {a}'s (1 rows differ)" in capsys.readouterr().err
    assert main(["quality", str(a), str(c)]) == 2
    assert f"{c}: 3 rows, but {a} has 4" in capsys.readouterr().err
    assert main(["quality", str(tmp_path / "none.csv")]) == 2
    assert "none.csv: no such file" in capsys.readouterr().err


def test_baseline_refuses_more_rows_than_memory_holds(tmp_path, capsys, monkeypatch):
    import psutil

    raw, _ = _criteo_file(tmp_path)

    class Tiny:
        available = 1000  # bytes: 90 training rows need more

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tiny())
    assert (
        main(["baseline", f"--raw-data-file={raw}", "--test-fraction=0.25", f"--processed-data-file={tmp_path / 'c'}"])
        == 2
    )
    assert "fits all 90 training rows at once" in capsys.readouterr().err


def test_cv_refits_with_the_l2_of_the_lowest_held_back_log_loss():
    from model.baseline import fit_logistic_cv

    # one table of 4 rows; rows 2 and 3 click, with 10% of labels flipped. l2 = 10 holds every weight near 0
    # (about the base rate everywhere, log loss ~0.69); l2 = 1e-3 learns the rows (~0.33): 1e-3 must win
    rng = np.random.default_rng(2)
    N, B = 400, 50
    rows = rng.integers(0, 4, N)
    y = ((rows >= 2) ^ (rng.random(N) < 0.1)).astype(np.float32)
    batches = [Batch(torch.zeros(B, 1), torch.tensor(rows[i : i + B]), torch.arange(B + 1), torch.tensor(y[i : i + B]))
               for i in range(0, N, B)]  # fmt: skip
    model, scores = fit_logistic_cv(batches, (4,), 1, l2_grid=(10.0, 1e-3), max_iter=100)
    assert set(scores) == {10.0, 1e-3} and scores[1e-3] < 0.5 < scores[10.0]
    assert model.l2 == 1e-3
