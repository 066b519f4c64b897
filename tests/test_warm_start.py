"""`--embedding-init lr`: DLRM started at the fitted logistic regression, checked against the LR's own predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from test_criteo import _line, _write

from model.baseline import fit_logistic
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


# --- held-out rows cannot reach the model (issue #6's claim rests on it) -----------------------------------------

_TRAIN = 180  # of _raw's 240 rows; --test-fraction=0.25 holds out the last 60
_FROZEN = ["--data-generation=dataset", "--arch-sparse-feature-size=4", "--arch-mlp-bot=13-8-4",
           "--arch-mlp-top=8-1", "--arch-interaction-op=cat", "--mini-batch-size=32", "--optimizer=adagrad",
           "--learning-rate=0.05", "--embedding-init=lr", "--embedding-optimizer=none", "--nepochs=3",
           "--data-shuffle", "--threads=1"]  # fmt: skip


def _flip(line: str) -> str:
    label, rest = line.split("\t", 1)
    return f"{1 - int(label)}\t{rest}"


def _novel(line: str, i: int) -> str:
    """The label flipped, every dense value changed and every categorical a value no other row has."""
    fields = _flip(line).split("\t")
    dense = [str(7919 * (i + 1) + k) for k in range(13)]
    cats = [f"{0xA0000000 + 26 * i + t:x}" for t in range(26)]
    return "\t".join([fields[0], *dense, *cats])


def _variants(tmp_path: Path) -> dict[str, list[str]]:
    lines = _raw(tmp_path).read_text().splitlines()
    train, test = lines[:_TRAIN], lines[_TRAIN:]
    return {"original": lines, "flipped": train + [_flip(x) for x in test],
            "novel": train + [_novel(x, i) for i, x in enumerate(test)], "train only": train}  # fmt: skip


def _state(path: Path) -> dict[str, torch.Tensor]:
    from model.checkpoint import load_checkpoint

    return load_checkpoint(path, torch.device("cpu"))["state_dict"]


def _assert_same_weights(got: dict[str, torch.Tensor], want: dict[str, torch.Tensor]) -> None:
    assert got.keys() == want.keys()
    for name in want:
        assert torch.equal(got[name], want[name]), name  # bitwise


def test_held_out_rows_reach_neither_the_vocabulary_nor_the_lr_fit(tmp_path):
    variants = _variants(tmp_path)
    fits, sources = {}, {}
    for name, lines in variants.items():
        raw = _write(tmp_path / f"{name}.txt", lines)
        fraction = 0.0 if name == "train only" else 0.25
        src = criteo_sources(str(raw), test_fraction=fraction, processed_data_file=str(tmp_path / f"c-{name}"),
                             batch_size=32)  # fmt: skip
        assert src.train.samples == _TRAIN
        sources[name], fits[name] = src, fit_baseline(src.train, NUM_DENSE)
    # the reference: a file that never held the held-out rows
    want_src, (want_lr, want_scores) = sources.pop("train only"), fits.pop("train only")
    for name, src in sources.items():
        assert src.table_rows == want_src.table_rows, name
        for got_v, want_v in zip(src.train.index.vocab, want_src.train.index.vocab, strict=True):
            np.testing.assert_array_equal(got_v, want_v)
        lr, scores = fits[name]
        assert lr.l2 == want_lr.l2 and scores == want_scores, name  # the l2 choice, and every held-back loss
        for attr in ("cat_w", "dense_w", "bias"):
            assert torch.equal(getattr(lr, attr), getattr(want_lr, attr)), (name, attr)
    # the test can fail: fitted on all 240 rows, the flipped labels do move the LR
    whole = {n: criteo_sources(str(tmp_path / f"{n}.txt"), processed_data_file=str(tmp_path / f"c-{n}"))
             for n in ("original", "flipped")}  # fmt: skip
    moved = [fit_logistic(list(baseline_batches(s.train)), s.table_rows, NUM_DENSE, 0.01) for s in whole.values()]
    assert (moved[0].cat_w - moved[1].cat_w).abs().max() > 1e-3


@pytest.mark.parametrize("split", ["--test-fraction", "--test-raw-data-file"])
def test_held_out_rows_cannot_change_what_the_warm_started_frozen_model_learns(tmp_path, split):
    """Trained with evaluations on the held-out rows every 2 batches: the weights are bitwise those of a run
    on the training rows alone; flipping the held-out labels flips the test labels and nothing else."""
    variants = _variants(tmp_path)
    train_file = _write(tmp_path / "train.txt", variants.pop("train only"))
    assert main(["train", *_FROZEN, f"--raw-data-file={train_file}", f"--processed-data-file={tmp_path / 'c'}",
                 f"--save-model={tmp_path / 'alone.pt'}"]) == 0  # fmt: skip
    want = _state(tmp_path / "alone.pt")
    assert not torch.equal(want["top.0.weight"], DLRM(_cfg_of(tmp_path / "alone.pt")).top[0].weight)  # it trained
    predictions = {}
    for name, lines in variants.items():
        if split == "--test-fraction":
            data = [f"--raw-data-file={_write(tmp_path / f'{name}.txt', lines)}", "--test-fraction=0.25"]
        else:
            test_file = _write(tmp_path / f"{name}-test.txt", lines[_TRAIN:])
            data = [f"--raw-data-file={train_file}", f"--test-raw-data-file={test_file}"]
        out = tmp_path / name
        assert main(["train", *_FROZEN, *data, f"--processed-data-file={tmp_path / f'c-{name}'}", "--test-freq=2",
                     f"--save-model={out}.pt", f"--test-predictions-out={out}.csv"]) == 0  # fmt: skip
        _assert_same_weights(_state(Path(f"{out}.pt")), want)
        predictions[name] = _csv(Path(f"{out}.csv"))
    original, flipped = predictions["original"], predictions["flipped"]
    np.testing.assert_array_equal(flipped[:, 0], 1 - original[:, 0])
    np.testing.assert_array_equal(flipped[:, 1], original[:, 1])


def _cfg_of(path: Path) -> DLRMConfig:
    from model.checkpoint import load_checkpoint

    return DLRMConfig.from_dict(load_checkpoint(path, torch.device("cpu"))["config"])


# --- the LR's rows are DLRM's rows, whatever the row mapping ------------------------------------------------------


@pytest.mark.parametrize("mapping", [[], ["--min-category-count=14"], ["--max-ind-range=7"], ["--max-ind-range=1000"]])
def test_warm_start_reproduces_the_baseline_command_under_every_row_mapping(tmp_path, mapping):
    raw, cache = _raw(tmp_path), tmp_path / "c"
    data = [f"--raw-data-file={raw}", "--test-fraction=0.25", f"--processed-data-file={cache}", *mapping]
    src = criteo_sources(**_flags(data), batch_size=32)
    train_rows = torch.cat([b.indices for b in src.train])
    if mapping == ["--min-category-count=14"]:
        assert (train_rows == UNSEEN_ROW).any()  # rare training values share row 1, which the LR fits
    if mapping == ["--max-ind-range=7"]:
        assert src.table_rows == (7,) * 26 and (train_rows == 0).float().mean() > 0.15  # empty and value 0, 7, ...
    assert main(["baseline", *data, "--test-predictions-out", str(tmp_path / "lr.csv")]) == 0
    argv = ["train", *data, "--data-generation=dataset", "--arch-sparse-feature-size=4", "--arch-mlp-bot=13-8-4",
            "--arch-mlp-top=8-4-1", "--arch-interaction-op=cat", "--mini-batch-size=32", "--threads=1",
            "--embedding-init=lr", "--embedding-init-rest-scale=0", "--inference-only",
            f"--test-predictions-out={tmp_path / 'd.csv'}"]  # fmt: skip
    assert main(argv) == 0
    np.testing.assert_allclose(_csv(tmp_path / "d.csv"), _csv(tmp_path / "lr.csv"), atol=2e-6)


def _flags(argv: list[str]) -> dict[str, object]:
    out: dict[str, object] = {}
    for a in argv:
        key, value = a[2:].split("=", 1)
        key = key.replace("-", "_")
        out[key] = float(value) if key == "test_fraction" else int(value) if key.endswith(("count", "range")) else value
    return out


def test_the_carrier_unit_stays_positive_for_extreme_dense_values_and_unseen_or_empty_fields(tmp_path):
    """I = 2**31 - 1 and 10**300 (log(1 + x) = 21.5 and 690.8), every field empty, every value unseen: the first
    top unit's pre-activation stays >= 1 (K's bound), so the model still computes the LR's probability."""
    lines = _raw(tmp_path).read_text().splitlines()
    big, huge = str(2**31 - 1), str(10**300)
    extreme = [
        _line("1", [big] * 13, [f"{k:x}" for k in range(26)]),
        _line("0", [huge, big, *[""] * 11], [""] * 26),  # every categorical empty: row 0 of each table
        _line("1", [huge] * 13, [f"{0xFFFFFFF0 - t:x}" for t in range(26)]),  # every value unseen: row 1
        _line("0", ["-5"] * 13, [""] * 26),
    ]
    raw = _write(tmp_path / "x.txt", [*lines[:170], *extreme[:2], *lines[170:228], *extreme])  # 180 train + 64 test
    src = criteo_sources(str(raw), test_fraction=64 / 244, processed_data_file=str(tmp_path / "c"), batch_size=16)
    lr, _ = fit_baseline(src.train, NUM_DENSE, l2_grid=(1e-2,))
    assert (lr.dense_w > 0).any() and (lr.dense_w < 0).any()  # both carriers are used
    cfg = DLRMConfig(4, src.table_rows, (13, 8, 4), (16, 8, 1), Interaction.CAT)
    model = DLRM(cfg, torch.Generator().manual_seed(1))
    k = logistic_warm_start(model, lr, rest_scale=0.0)
    seen: list[torch.Tensor] = []
    model.top[0].register_forward_hook(lambda _m, _i, out: seen.append(out[:, 0].detach().clone()))
    for data in (src.test, baseline_batches(src.train)):
        _, probs = predict(model, data, torch.device("cpu"))
        _, lr_probs = lr.predict(data)
        np.testing.assert_allclose(probs, lr_probs.numpy(), atol=1e-5)
    pre = torch.cat(seen)
    dense = torch.cat([b.dense for b in src.test])
    assert dense.max() > 690  # the extremes are in
    assert pre.min() >= 1 - 1e-4 and k > 1


# --- with other flags ---------------------------------------------------------------------------------------------


def test_a_stopped_warm_started_frozen_run_goes_on_with_the_same_command(tmp_path, monkeypatch, capsys):
    """Ctrl-C, then the same command with --load-model: the LR is not refitted, the tables stay the LR's, and the
    run ends as one never stopped (Adagrad's accumulators, the schedule, the average and the order come back)."""
    from test_resume import _interrupt_at_step

    import model.warm_start

    raw = _raw(tmp_path)
    argv = ["train", *_FROZEN, f"--raw-data-file={raw}", "--test-fraction=0.25", f"--processed-data-file={tmp_path}/c",
            "--lr-num-warmup-steps=4", "--ema-decay=0.9", "--test-freq=4", "--print-freq=100"]  # fmt: skip

    def run(name: str, *extra: str) -> int:
        return main([*argv, f"--save-model={tmp_path / name}.pt", f"--json-out={tmp_path / name}.json", *extra])

    assert run("start", "--inference-only") == 0  # the step-0 model: the LR's tables
    assert run("whole") == 0
    with monkeypatch.context() as m:
        _interrupt_at_step(m, 8)  # inside the second epoch (6 batches each)
        assert run("cut") == 130
    capsys.readouterr()

    def no_refit(*_a, **_k):
        raise AssertionError("the LR was refitted for a resumed run")

    monkeypatch.setattr(model.warm_start, "fit_baseline", no_refit)
    assert run("cut", f"--load-model={tmp_path / 'cut.pt'}") == 0
    out = capsys.readouterr().out
    assert "--embedding-init lr not applied" in out and "going on from" in out
    got, want = _state(tmp_path / "cut.pt"), _state(tmp_path / "whole.pt")
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-6, atol=1e-7, msg=name)
    start = _state(tmp_path / "start.pt")["embeddings.weight"]
    assert torch.equal(got["embeddings.weight"], start) and torch.equal(want["embeddings.weight"], start)
    assert not torch.equal(got["top.0.weight"], _state(tmp_path / "start.pt")["top.0.weight"])  # the MLPs trained
    import json

    cut, whole = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("cut", "whole"))
    assert cut["resumed_at_iteration"] == 8 and cut["iterations"] == whole["iterations"] == 18
    assert [h["logloss"] for h in cut["test_history"]] == pytest.approx([h["logloss"] for h in whole["test_history"]])


def test_frozen_random_tables_with_synthetic_data_stay_as_drawn(tmp_path):
    argv = ["train", "--data-generation=synthetic", "--arch-sparse-feature-size=4", "--arch-mlp-bot=4-8-4",
            "--arch-mlp-top=8-1", "--arch-embedding-size=50-40-30", "--mini-batch-size=16", "--num-batches=6",
            "--embedding-optimizer=none", "--optimizer=adagrad", "--learning-rate=0.1", "--numpy-rand-seed=7",
            "--threads=1", f"--save-model={tmp_path / 'm.pt'}"]  # fmt: skip
    assert main(argv) == 0
    drawn = DLRM(_cfg_of(tmp_path / "m.pt"), torch.Generator().manual_seed(7))  # the reference's init, seed 7
    saved = _state(tmp_path / "m.pt")
    assert torch.equal(saved["embeddings.weight"], drawn.embeddings.weight.detach())
    assert not torch.equal(saved["bottom.0.weight"], drawn.bottom[0].weight.detach())  # the MLPs trained


def test_refusals_come_before_the_lr_is_fitted(tmp_path, monkeypatch, capsys):
    import model.warm_start

    def no_fit(*_a, **_k):
        raise AssertionError("the LR was fitted for a run that is refused")

    monkeypatch.setattr(model.warm_start, "fit_baseline", no_fit)
    raw = _raw(tmp_path)
    argv = ["train", *_FROZEN, f"--raw-data-file={raw}", "--test-fraction=0.25", f"--processed-data-file={tmp_path}/c"]
    assert main([*argv, "--arch-embedding-size=" + "-".join(["50"] * 26)]) == 2
    err = capsys.readouterr().err
    assert "--embedding-init lr needs the tables the data gives (omit --arch-embedding-size): table 0: 50 rows" in err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert main([*argv, "--arch-interaction-op=dot", "--arch-mlp-top=8-1"]) == 2
    assert "needs --arch-interaction-op cat" in capsys.readouterr().err
    assert main([*argv, "--arch-mlp-top=1-1"]) == 2
    assert "hidden layer >= 2 units wide" in capsys.readouterr().err
    assert main([*argv, "--embedding-grad=fused"]) == 2
    err = capsys.readouterr().err
    assert "--embedding-optimizer none with --embedding-grad fused" in err and err.count("\n") == 1


def test_embedding_init_lr_refuses_a_fit_past_the_memory_available(tmp_path, capsys, monkeypatch):
    import model.warm_start

    raw = _raw(tmp_path)
    monkeypatch.setattr(model.warm_start.psutil, "virtual_memory", lambda: type("M", (), {"available": 100_000})())
    argv = ["train", "--data-generation=dataset", f"--raw-data-file={raw}", "--test-fraction=0.25",
            f"--processed-data-file={tmp_path / 'c'}", "--arch-sparse-feature-size=4", "--arch-mlp-bot=13-8-4",
            "--arch-mlp-top=8-1", "--arch-interaction-op=cat", "--embedding-init=lr", "--threads=1"]  # fmt: skip
    assert main(argv) == 2  # the tables fit in 100 KB, the full-batch fit of 180 rows (~170 KB) does not
    assert "fits all 180 training rows at once" in capsys.readouterr().err
