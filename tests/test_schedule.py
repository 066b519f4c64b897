"""The reference's learning-rate schedule, the tables' own rate and the weights' moving average: hand-computed
values, and the trainer against a hand-written loop that sets the rates and averages itself."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from model.config import DLRMConfig, EmbeddingGrad
from model.data import RandomData
from model.dlrm import DLRM
from model.optim import LRSchedule, WeightEMA, make_optimizer
from model.train import TrainConfig, evaluate, load_checkpoint, make_loss, run

#   update s:  1    2    3    4   5   6     7       8     9       10 ...
#   phase:     warmup (W=4)   |  flat | decay from D=6 over N=4  | held
#   lr / base: 1/4  2/4  3/4  1   1   1  (3/4)^2 (2/4)^2 (1/4)^2 (1/4)^2
_HAND = {1: 0.25, 2: 0.5, 3: 0.75, 4: 1.0, 5: 1.0, 6: 1.0, 7: 0.5625, 8: 0.25, 9: 0.0625, 10: 0.0625, 500: 0.0625}


@pytest.mark.parametrize("step", sorted(_HAND))
def test_warmup_flat_decay_then_hold(step):
    assert LRSchedule(4, 6, 4).validate().lr(2.0, step) == pytest.approx(2.0 * _HAND[step])


def test_no_flags_is_a_constant_rate():
    s = LRSchedule()
    assert s.constant and [s.lr(0.3, k) for k in (1, 2, 1000)] == [0.3, 0.3, 0.3]
    assert not LRSchedule(num_warmup_steps=2).constant and not LRSchedule(0, 5, 3).constant


def test_decay_without_warmup_starts_at_its_step_and_floors_at_1e_7():
    s = LRSchedule(0, 3, 10)
    assert [s.lr(1.0, k) for k in (1, 2, 3)] == [1.0, 1.0, 1.0]
    assert s.lr(1.0, 4) == pytest.approx(0.81)  # ((10 - 1) / 10)^2
    assert LRSchedule(0, 0, 1000).lr(1e-3, 999) == 1e-7  # 1e-3 / 1000^2 = 1e-9, under the floor


def test_bad_schedules_are_refused_with_the_flag():
    with pytest.raises(ValueError, match="--lr-num-warmup-steps must be >= 0, got -1"):
        LRSchedule(-1).validate()
    with pytest.raises(ValueError, match="--lr-decay-start-step 5 is inside the warmup"):
        LRSchedule(10, 5, 3).validate()
    LRSchedule(10, 0, 0).validate()  # no decay: its start does not matter


def test_weight_ema_matches_the_formula_and_applied_restores():
    p = torch.nn.Parameter(torch.tensor([4.0, -2.0]))
    ema = WeightEMA([p], 0.75)
    values = [torch.tensor([0.0, 2.0]), torch.tensor([8.0, 6.0])]
    want = p.detach().clone()
    for v in values:
        with torch.no_grad():
            p.copy_(v)
        ema.update()
        want = 0.75 * want + 0.25 * v
    # by hand: [4, -2] -> [3, -1] -> [4.25, 0.75]
    torch.testing.assert_close(want, torch.tensor([4.25, 0.75]))
    torch.testing.assert_close(ema.average[0], want)
    with ema.applied():
        torch.testing.assert_close(p.detach(), want)
    torch.testing.assert_close(p.detach(), values[-1])
    with pytest.raises(ValueError, match=r"--ema-decay must be in \[0, 1\), got 1.0"):
        WeightEMA([p], 1.0)


_CFG = DLRMConfig(4, (50, 7, 30, 1), (6, 8, 4), (16, 1))
_DATA = RandomData(_CFG.table_rows, 6, 8, 40, pooling_factor=4, seed=5, round_targets=True)  # 5 batches


def _by_hand(optimizer_name: str, rates: list[float], ema_decay: float = 0.0, emb_scale: float = 1.0) -> DLRM:
    """The training loop written out: rate set before each update (the tables' times `emb_scale`),
    average taken after it."""
    model = DLRM(_CFG, torch.Generator().manual_seed(7))
    mlps = [p for name, p in model.named_parameters() if not name.startswith("embeddings.")]
    opt = make_optimizer(optimizer_name, [{"params": model.embeddings.parameters()}, {"params": mlps}], 1.0, _CFG)
    loss_fn = make_loss(TrainConfig().loss_function, (1.0, 1.0))
    average = [p.detach().clone() for p in model.parameters()]
    for lr, batch in zip(rates, _DATA, strict=True):
        opt.param_groups[0]["lr"] = lr * emb_scale
        opt.param_groups[1]["lr"] = lr
        loss = loss_fn(model(batch.dense, batch.indices, batch.offsets), batch.labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        with torch.no_grad():
            for a, p in zip(average, model.parameters(), strict=True):
                a.copy_(ema_decay * a + (1 - ema_decay) * p)
    if ema_decay:
        with torch.no_grad():
            for a, p in zip(average, model.parameters(), strict=True):
                p.copy_(a)
    return model


def _trained(tmp_path, cfg: DLRMConfig = _CFG, **kw) -> tuple[DLRM, dict]:
    path = tmp_path / "m.pt"
    train = TrainConfig(learning_rate=0.2, seed=7, save_model=str(path), **kw)
    record = run(cfg, train, _DATA, test_data=_DATA, log=lambda s: None)
    model = DLRM(_CFG)
    model.load_state_dict(load_checkpoint(path, torch.device("cpu"))["state_dict"])
    return model, record


def _assert_same_weights(a: DLRM, b: DLRM) -> None:
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values(), strict=True):
        torch.testing.assert_close(x, y, msg=name)


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_trainer_sets_the_scheduled_rate_before_each_update(tmp_path, optimizer):
    # W=2, D=3, N=2 with base 0.2: updates 1..5 at 0.1, 0.2, 0.2, 0.05, 0.05
    model, _ = _trained(tmp_path, optimizer=optimizer, lr_num_warmup_steps=2, lr_decay_start_step=3,
                        lr_num_decay_steps=2)  # fmt: skip
    _assert_same_weights(model, _by_hand(optimizer, [0.1, 0.2, 0.2, 0.05, 0.05]))
    constant, _ = _trained(tmp_path, optimizer=optimizer)
    _assert_same_weights(constant, _by_hand(optimizer, [0.2] * 5))


def test_fused_embedding_update_follows_the_schedule(tmp_path):
    kw = {"lr_num_warmup_steps": 3, "lr_decay_start_step": 3, "lr_num_decay_steps": 3}
    sparse, _ = _trained(tmp_path, **kw)
    fused, _ = _trained(tmp_path, replace(_CFG, embedding_grad=EmbeddingGrad.FUSED), **kw)
    _assert_same_weights(sparse, fused)


def test_ema_weights_are_evaluated_and_saved(tmp_path):
    model, record = _trained(tmp_path, ema_decay=0.6)
    _assert_same_weights(model, _by_hand("sgd", [0.2] * 5, ema_decay=0.6))
    assert record["test"] == evaluate(model, _DATA, torch.device("cpu")).to_dict()
    plain, _ = _trained(tmp_path)
    assert not torch.equal(plain.embeddings.weight, model.embeddings.weight)


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_embedding_learning_rate_applies_to_the_tables_only_and_is_scheduled(tmp_path, optimizer):
    model, _ = _trained(tmp_path, optimizer=optimizer, embedding_learning_rate=0.05)
    _assert_same_weights(model, _by_hand(optimizer, [0.2] * 5, emb_scale=0.25))
    model, _ = _trained(tmp_path, optimizer=optimizer, embedding_learning_rate=0.05, lr_num_warmup_steps=2)
    _assert_same_weights(model, _by_hand(optimizer, [0.1] + [0.2] * 4, emb_scale=0.25))
    plain, _ = _trained(tmp_path, optimizer=optimizer)
    assert not torch.equal(plain.embeddings.weight, model.embeddings.weight)


def _hand_losses_and_model(batches: list, lr: float) -> tuple[list[tuple[float, int]], DLRM]:
    """Plain SGD written out over `batches` in turn: each batch's mean BCE before its update, and its size."""
    model = DLRM(_CFG, torch.Generator().manual_seed(7))
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    out = []
    for batch in batches:
        p = model(batch.dense, batch.indices, batch.offsets)
        loss = torch.nn.functional.binary_cross_entropy(p, batch.labels)
        out.append((loss.item(), batch.batch_size))
        opt.zero_grad()
        loss.backward()
        for param in model.parameters():  # torch's SGD takes no sparse gradient: densify the tables'
            if param.grad is not None and param.grad.is_sparse:
                param.grad = param.grad.to_dense()
        opt.step()
    return out, model


def test_num_batches_cuts_every_epoch_and_printed_losses_are_per_sample_means(tmp_path):
    # 20 samples in batches of 8: sizes 8, 8, 4; --num-batches 2 over 2 epochs trains batches 0, 1, 0, 1 only
    data = RandomData(_CFG.table_rows, 6, 8, 20, pooling_factor=4, seed=5, round_targets=True)
    batches = list(data)
    assert [b.batch_size for b in batches] == [8, 8, 4]
    path = tmp_path / "m.pt"
    train = TrainConfig(learning_rate=0.2, seed=7, num_batches=2, nepochs=2, print_freq=3, save_model=str(path))
    record = run(_CFG, train, data, log=lambda s: None)
    assert record["iterations"] == 4 and record["samples"] == 32
    hand, model = _hand_losses_and_model(batches[:2] * 2, 0.2)
    # printed at each epoch's last batch (j + 1 == num_batches): the mean over that window's samples
    want = [(hand[0][0] + hand[1][0]) / 2, (hand[2][0] + hand[3][0]) / 2]
    assert record["train_loss"] == pytest.approx(want, rel=1e-5)
    trained = DLRM(_CFG)
    trained.load_state_dict(load_checkpoint(path, torch.device("cpu"))["state_dict"])
    _assert_same_weights(trained, model)
