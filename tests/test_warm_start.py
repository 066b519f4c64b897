"""`--embedding-init lr`: DLRM started at the fitted logistic regression, checked against the LR's own predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_criteo import _line, _write

from model.config import DLRMConfig, Interaction
from model.criteo import EMPTY_ROW, UNSEEN_ROW
from model.criteo_format import NUM_DENSE
from model.data_cli import criteo_sources
from model.dlrm import DLRM
from model.train import predict
from model.warm_start import baseline_batches, fit_baseline, logistic_warm_start
from profiler.cli import main


def _raw(tmp_path: Path, n: int = 240) -> Path:
    """Labels that depend on C1, C2 and I1; empty fields here and there; the last rows bring values unseen before."""
    rng = np.random.default_rng(3)
    lines = []
    for i in range(n):
        c1, c2 = int(rng.integers(0, 6)), int(rng.integers(0, 4))
        y = int(rng.random() < 1 / (1 + np.exp(-(c1 - 3 + 0.8 * (c2 == 1) + 0.1 * (i % 7)))))
        dense = [str(int(rng.integers(-3, 200))) if rng.random() > 0.2 else "" for _ in range(13)]
        cats = [f"{c1:x}", f"{c2:x}", *(f"{int(rng.integers(0, 12 if i < 180 else 30)):x}" for _ in range(24))]
        cats = [c if rng.random() > 0.1 else "" for c in cats]
        lines.append(_line(str(y), dense, cats))
    return _write(tmp_path / "t.txt", lines)


@pytest.mark.parametrize(
    "bottom, top", [((13, 6, 4), (16, 1)), ((13, 8, 5, 4), (16, 8, 1)), ((13, 2), (1,)), ((13, 4), (2, 2, 1))]
)
def test_warm_started_dlrm_predicts_what_the_logistic_regression_does(tmp_path, bottom, top):
    src = criteo_sources(str(_raw(tmp_path)), test_fraction=0.25, processed_data_file=str(tmp_path / "c"),
                         batch_size=32, shuffle=True, seed=5)  # fmt: skip
    lr, _ = fit_baseline(src.train, NUM_DENSE, l2_grid=(1e-3, 1e-2))
    test_rows = torch.cat([b.indices for b in src.test])
    assert (test_rows == UNSEEN_ROW).any() and (test_rows == EMPTY_ROW).any()  # both reserved rows are read
    assert lr.cat_w.abs().max() > 0.1 and lr.dense_w.abs().max() > 0.01  # not a near-constant model
    cfg = DLRMConfig(bottom[-1], src.table_rows, bottom, top, Interaction.CAT)
    model = DLRM(cfg, torch.Generator().manual_seed(0))
    logistic_warm_start(model, lr, rest_scale=0.0)
    labels, probs = predict(model, src.test, torch.device("cpu"))
    lr_labels, lr_probs = lr.predict(src.test)
    np.testing.assert_array_equal(labels, lr_labels.numpy())
    np.testing.assert_allclose(probs, lr_probs.numpy(), atol=2e-6)
    in_order = baseline_batches(src.train)  # the training rows too, in file order
    np.testing.assert_allclose(predict(model, in_order, torch.device("cpu"))[1], lr.predict(in_order)[1], atol=2e-6)
    # the other units start as the reference's draw, scaled: the model is near the LR, not at it (where any are read)
    near = DLRM(cfg, torch.Generator().manual_seed(0))
    logistic_warm_start(near, lr, rest_scale=0.1)
    _, near_probs = predict(near, src.test, torch.device("cpu"))
    gap = np.abs(near_probs - lr_probs.numpy()).max()
    assert gap < 0.2 and (gap > 1e-5 or min(top[:-1]) == 2)


def _csv(path: Path) -> np.ndarray:
    return np.loadtxt(path, delimiter=",", skiprows=1)


def test_train_embedding_init_lr_starts_at_the_baseline_command(tmp_path, capsys):
    raw, cache = _raw(tmp_path), tmp_path / "c"
    data = [f"--raw-data-file={raw}", "--test-fraction=0.25", f"--processed-data-file={cache}"]
    assert main(["baseline", *data, "--test-predictions-out", str(tmp_path / "lr.csv")]) == 0
    arch = ["--data-generation=dataset", "--arch-sparse-feature-size=4", "--arch-mlp-bot=13-8-4",
            "--arch-mlp-top=8-1", "--arch-interaction-op=cat", "--mini-batch-size=32", "--threads=1"]  # fmt: skip
    start = ["train", *data, *arch, "--embedding-init=lr", "--embedding-init-rest-scale=0", "--inference-only"]
    assert main([*start, "--test-predictions-out", str(tmp_path / "d.csv")]) == 0
    assert "--embedding-init lr: logistic regression fitted on the 180 training rows, l2 " in capsys.readouterr().out
    np.testing.assert_allclose(_csv(tmp_path / "d.csv"), _csv(tmp_path / "lr.csv"), atol=2e-6)
    trained = ["train", *data, *arch, "--embedding-init=lr", "--nepochs=2", "--data-shuffle",
               "--embedding-optimizer=sgd", "--optimizer=adagrad", "--output-bias-init=prior"]  # fmt: skip
    assert main([*trained, "--test-predictions-out", str(tmp_path / "t.csv")]) == 0
    assert "replaced by the LR's bias" in capsys.readouterr().out
    assert np.isfinite(_csv(tmp_path / "t.csv")).all()


def test_embedding_init_lr_refuses_what_cannot_carry_it(tmp_path, capsys):
    raw = _raw(tmp_path)
    data = ["train", "--data-generation=dataset", f"--raw-data-file={raw}", "--test-fraction=0.25",
            f"--processed-data-file={tmp_path / 'c'}", "--embedding-init=lr",
            "--arch-sparse-feature-size=4"]  # fmt: skip
    assert main([*data, "--arch-mlp-bot=13-4", "--arch-interaction-op=dot", "--arch-mlp-top=8-1"]) == 2
    assert "needs --arch-interaction-op cat" in capsys.readouterr().err
    assert main([*data, "--arch-mlp-bot=13-1-4", "--arch-interaction-op=cat", "--arch-mlp-top=8-1"]) == 2
    assert "hidden layer >= 2 units wide" in capsys.readouterr().err
    assert main(["train", "--embedding-init=lr", "--arch-interaction-op=cat"]) == 2
    assert "--embedding-init lr needs Criteo training rows" in capsys.readouterr().err
