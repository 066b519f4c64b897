"""--loss-function bce | mse | wbce (with --loss-weights) against hand-written losses and torch's functional ops."""

from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F

from model.train import LossFunction, make_loss
from profiler.cli import main


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(7)
    p = torch.rand(16, generator=g) * 0.9 + 0.05  # click probabilities away from 0 and 1
    y = torch.tensor([0, 1, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 0], dtype=torch.float32)
    return p, y


@pytest.mark.parametrize("weights", [(1.0, 1.0), (0.25, 4.0), (3.0, 0.5)])
def test_wbce_weighs_label_0_by_w0_and_label_1_by_w1(weights):
    p, y = _batch()
    w0, w1 = weights
    # the reference's wbce: mean over samples of w[label] * binary cross-entropy, written out by hand
    want = sum(
        -(w1 * math.log(q) if t == 1 else w0 * math.log(1 - q)) for q, t in zip(p.tolist(), y.tolist(), strict=True)
    ) / len(y)
    got = make_loss(LossFunction.WBCE, weights)(p, y)
    assert got.item() == pytest.approx(want, rel=1e-5)


def test_wbce_gradient_is_the_weighted_bce_gradient():
    p, y = _batch()
    w0, w1 = 0.25, 4.0
    a = p.clone().requires_grad_()
    make_loss(LossFunction.WBCE, (w0, w1))(a, y).backward()
    # d/dp of -(w1 y log p + w0 (1 - y) log(1 - p)) / N
    want = (-w1 * y / p + w0 * (1 - y) / (1 - p)) / len(y)
    torch.testing.assert_close(a.grad, want, rtol=1e-5, atol=1e-7)


def test_bce_and_mse_are_torchs():
    p, y = _batch()
    torch.testing.assert_close(make_loss(LossFunction.BCE, (5.0, 7.0))(p, y), F.binary_cross_entropy(p, y))
    torch.testing.assert_close(make_loss(LossFunction.MSE, (5.0, 7.0))(p, y), F.mse_loss(p, y))
    soft = torch.rand(16, generator=torch.Generator().manual_seed(1))  # random data's labels are U[0, 1)
    torch.testing.assert_close(make_loss(LossFunction.BCE, (1.0, 1.0))(p, soft), F.binary_cross_entropy(p, soft))


def test_the_flags_reach_the_run(tmp_path):
    out = tmp_path / "r.json"
    argv = ["train", "--arch-sparse-feature-size=4", "--arch-mlp-bot=3-4", "--arch-mlp-top=4-1",
            "--arch-embedding-size=5-5", "--mini-batch-size=4", "--num-batches=2", "--round-targets",
            "--loss-function=wbce", "--loss-weights=0.25-4.0", "--threads=1", f"--json-out={out}"]  # fmt: skip
    assert main(argv) == 0
    cfg = json.loads(out.read_text())["train_config"]
    assert cfg["loss_function"] == "wbce" and cfg["loss_weights"] == [0.25, 4.0]
    # and the run's loss is the weighted one: weights 0-0 zero every sample's loss, 1-1 is plain BCE
    for weights, zero in (("0-0", True), ("1-1", False)):
        assert (
            main([*argv[:-3], f"--loss-weights={weights}", "--print-freq=1", "--threads=1", f"--json-out={out}"]) == 0
        )
        losses = json.loads(out.read_text())["train_loss"]
        assert len(losses) == 2 and all((x == 0.0) == zero for x in losses)
