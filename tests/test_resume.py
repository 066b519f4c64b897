"""A training run stopped by Ctrl-C (or saved every --save-freq steps) goes on with --load-model as if never stopped."""

from __future__ import annotations

import json
import os
import random
import signal
from pathlib import Path

import pytest
import torch

import model.train
from model.checkpoint import load_checkpoint
from model.criteo import CriteoData
from profiler.cli import main


def _criteo(path: Path, rows: int = 96) -> Path:
    rng = random.Random(0)
    lines = []
    for _ in range(rows):
        dense = [str(rng.randint(0, 50)) for _ in range(13)]
        cats = [f"{rng.randint(0, 6):x}" for _ in range(26)]
        lines.append("\t".join([str(rng.randint(0, 1)), *dense, *cats]))
    path.write_text("\n".join(lines) + "\n")
    return path


def _argv(tmp_path: Path, name: str, *extra: str) -> list[str]:
    # split optimizer (Adagrad state on the MLPs), a shuffled epoch order, a schedule, an average, evaluations
    return ["train", "--data-generation=dataset", f"--raw-data-file={tmp_path / 'c.txt'}", "--test-fraction=0.25",
            f"--processed-data-file={tmp_path / 'cache'}", "--arch-sparse-feature-size=4", "--arch-mlp-bot=13-8-4",
            "--arch-mlp-top=8-1", "--mini-batch-size=8", "--nepochs=3", "--data-shuffle", "--optimizer=adagrad",
            "--learning-rate=0.05", "--embedding-optimizer=sgd", "--embedding-learning-rate=0.3",
            "--lr-num-warmup-steps=4", "--ema-decay=0.9", "--test-freq=5", "--print-freq=100",
            f"--save-model={tmp_path / name}.pt", f"--json-out={tmp_path / name}.json", "--threads=1",
            *extra]  # fmt: skip


def _interrupt_at_step(monkeypatch: pytest.MonkeyPatch, k: int) -> None:
    """Ctrl-C arrives inside the k-th optimizer step (as a real SIGINT to this process)."""
    make = model.train.make_optimizer

    def make_interrupting(*args, **kwargs):
        opt = make(*args, **kwargs)
        step, calls = opt.step, [0]

        def interrupted_step(*a, **kw):
            calls[0] += 1
            if calls[0] == k:
                os.kill(os.getpid(), signal.SIGINT)
            return step(*a, **kw)

        opt.step = interrupted_step
        return opt

    monkeypatch.setattr(model.train, "make_optimizer", make_interrupting)


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path, torch.device("cpu"))["state_dict"]


@pytest.mark.parametrize("stop_at", [3, 13])  # inside the first epoch; inside the second, after evaluations
def test_a_run_stopped_by_ctrl_c_goes_on_as_if_never_stopped(tmp_path, monkeypatch, capsys, stop_at):
    _criteo(tmp_path / "c.txt")
    assert main(_argv(tmp_path, "whole")) == 0  # the reference: the same run, not stopped
    whole = json.loads((tmp_path / "whole.json").read_text())
    assert whole["iterations"] == 27  # 72 training rows / 8 = 9 batches x 3 epochs

    with monkeypatch.context() as m:
        _interrupt_at_step(m, stop_at)
        assert main(_argv(tmp_path, "cut")) == 130
    out = capsys.readouterr().out
    assert f"interrupted after iteration {stop_at} (epoch {(stop_at - 1) // 9}" in out
    assert f"--load-model {tmp_path / 'cut.pt'} goes on" in out
    ckpt = load_checkpoint(tmp_path / "cut.pt", torch.device("cpu"))
    assert ckpt["resume"]["iterations"] == stop_at and not (tmp_path / "cut.json").exists()

    built = []  # the training batches the resumed run builds: only those it has still to train
    build = CriteoData.batch

    def counted(self, i):
        if self.start == 0:  # the training rows; the test split starts after them
            built.append(i)
        return build(self, i)

    monkeypatch.setattr(CriteoData, "batch", counted)
    assert main([*_argv(tmp_path, "cut"), f"--load-model={tmp_path / 'cut.pt'}"]) == 0
    assert len(built) == 27 - stop_at
    out = capsys.readouterr().out
    assert f"going on from {tmp_path / 'cut.pt'}: iteration {stop_at}" in out
    assert f"training: 27 it ({27 - stop_at} in this run, resumed at {stop_at}), " in out  # its ms/it are this run's
    resumed = json.loads((tmp_path / "cut.json").read_text())
    assert resumed["iterations"] == 27 and resumed["resumed_at_iteration"] == stop_at
    assert [h["iteration"] for h in resumed["test_history"]] == [h["iteration"] for h in whole["test_history"]]
    for a, b in zip(resumed["test_history"], whole["test_history"], strict=True):
        assert a["logloss"] == pytest.approx(b["logloss"], rel=1e-6) and a["auc"] == pytest.approx(b["auc"])
    assert resumed["train_loss"] == pytest.approx(whole["train_loss"], rel=1e-6)
    got, want = _weights(tmp_path / "cut.pt"), _weights(tmp_path / "whole.pt")  # the moving averages, saved
    for name in want:
        torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-7)
    assert "resume" not in load_checkpoint(tmp_path / "cut.pt", torch.device("cpu"))  # finished: weights only


def test_save_freq_leaves_a_resumable_checkpoint_and_settings_are_checked(tmp_path, monkeypatch, capsys):
    _criteo(tmp_path / "c.txt")
    saved = []
    real = model.train.save_checkpoint

    def recording(m, path, *, iterations=0, resume=None):
        saved.append((iterations, resume is not None))
        real(m, path, iterations=iterations, resume=resume)

    monkeypatch.setattr(model.train, "save_checkpoint", recording)
    assert main(_argv(tmp_path, "f", "--save-freq=10", "--nepochs=2")) == 0
    assert saved == [(10, True), (18, False)]  # every 10 steps; the finished model last, without resume state

    bad = tmp_path / "bad.pt"
    torch.save({**load_checkpoint(tmp_path / "f.pt", torch.device("cpu"))}, bad)  # finished: no resume state
    assert main([*_argv(tmp_path, "g", "--nepochs=2"), f"--load-model={bad}", "--inference-only"]) == 0

    _interrupt_at_step(monkeypatch, 4)
    assert main(_argv(tmp_path, "h", "--nepochs=1")) == 130
    monkeypatch.undo()
    capsys.readouterr()
    h = str(tmp_path / "h.pt")
    assert main([*_argv(tmp_path, "h", "--nepochs=1", "--optimizer=sgd"), f"--load-model={h}"]) == 2
    assert "was trained with --optimizer 'adagrad', not 'sgd'" in capsys.readouterr().err
    assert main([*_argv(tmp_path, "h", "--nepochs=1", "--learning-rate=0.01"), f"--load-model={h}"]) == 0
    assert "note: going on with --learning-rate 0.01 where the saved run had 0.05" in capsys.readouterr().out
    assert main([*_argv(tmp_path, "h", "--nepochs=1", "--save-freq=-1")]) == 2
    assert "--save-freq -1: give N >= 1 iterations" in capsys.readouterr().err


def test_a_stop_at_the_last_step_ends_the_run_and_a_shorter_run_has_nothing_left(tmp_path, monkeypatch, capsys):
    _criteo(tmp_path / "c.txt")
    with monkeypatch.context() as m:
        _interrupt_at_step(m, 9)  # the last step of the only epoch: the run is done, nothing to go on with
        assert main(_argv(tmp_path, "n", "--nepochs=1")) == 0
    assert json.loads((tmp_path / "n.json").read_text())["iterations"] == 9
    assert "resume" not in load_checkpoint(tmp_path / "n.pt", torch.device("cpu"))
    with monkeypatch.context() as m:
        _interrupt_at_step(m, 9)  # the end of epoch 0 of 2: saved as "epoch 1, no batch done"
        assert main(_argv(tmp_path, "e", "--nepochs=2")) == 130
    ckpt = load_checkpoint(tmp_path / "e.pt", torch.device("cpu"))["resume"]
    assert (ckpt["epoch"], ckpt["batch"], ckpt["iterations"]) == (1, 0, 9)
    capsys.readouterr()
    assert main([*_argv(tmp_path, "e", "--nepochs=1"), f"--load-model={tmp_path / 'e.pt'}"]) == 2
    assert "the saved run had done its 1 epoch(s) (9 iterations): raise --nepochs" in capsys.readouterr().err
    assert main([*_argv(tmp_path, "e", "--nepochs=2"), f"--load-model={tmp_path / 'e.pt'}"]) == 0
    assert json.loads((tmp_path / "e.json").read_text())["iterations"] == 18


def test_a_second_ctrl_c_stops_at_once(tmp_path, monkeypatch, capsys):
    _criteo(tmp_path / "c.txt")
    handler = signal.getsignal(signal.SIGINT)
    make, done = model.train.make_optimizer, []

    def make_twice_interrupted(*args, **kwargs):  # two Ctrl-Cs inside the 4th step, before its update
        opt = make(*args, **kwargs)
        step = opt.step

        def interrupted_step(*a, **kw):
            if len(done) == 3:
                os.kill(os.getpid(), signal.SIGINT)  # the first asks the loop to stop after this step...
                os.kill(os.getpid(), signal.SIGINT)  # ...the second stops it here
            out = step(*a, **kw)
            done.append(True)
            return out

        opt.step = interrupted_step
        return opt

    monkeypatch.setattr(model.train, "make_optimizer", make_twice_interrupted)
    assert main(_argv(tmp_path, "x")) == 130
    captured = capsys.readouterr()
    assert len(done) == 3  # the 4th step's update never ran
    assert "interrupted after iteration" not in captured.out and "dlrmbench train: interrupted" in captured.err
    assert not (tmp_path / "x.pt").exists() and not (tmp_path / "x.json").exists()  # no checkpoint of a half step
    assert signal.getsignal(signal.SIGINT) is handler  # the run's handler is gone again


def test_a_process_started_with_ctrl_c_ignored_keeps_ignoring_it(tmp_path, monkeypatch):
    from model.checkpoint import interrupt_between_steps

    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # as `cmd &` from a script
    try:
        with interrupt_between_steps(True) as stop:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
            assert not stop.requested
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_finished_model_reloads_with_the_same_command_and_its_bias_prior(tmp_path, monkeypatch, capsys):
    _criteo(tmp_path / "c.txt")
    argv = [*_argv(tmp_path, "p", "--nepochs=1"), "--output-bias-init=prior"]
    assert main(argv) == 0
    finished = _weights(tmp_path / "p.pt")
    capsys.readouterr()
    assert main([*argv, f"--load-model={tmp_path / 'p.pt'}", "--learning-rate=0", "--embedding-learning-rate=0",
                 "--ema-decay=0"]) == 0  # fmt: skip
    assert "--output-bias-init prior not applied" in capsys.readouterr().out
    again = _weights(tmp_path / "p.pt")  # nothing learnt at rate 0: the loaded weights, not a fresh prior
    for name in finished:
        torch.testing.assert_close(again[name], finished[name])
    _interrupt_at_step(monkeypatch, 3)  # a run stopped mid-way goes on from its checkpoint's bias, and says so
    assert main(argv) == 130
    monkeypatch.undo()
    capsys.readouterr()
    assert main([*argv, f"--load-model={tmp_path / 'p.pt'}"]) == 0
    out = capsys.readouterr().out
    assert "output bias: the checkpoint's (the run being resumed started it at " in out
    assert "output bias starts at" not in out


def test_restoring_takes_the_saved_optimizer_state_but_keeps_this_runs_rates():
    from model.checkpoint import Resume, restore_training_state
    from model.optim import Adagrad

    p = torch.nn.Parameter(torch.tensor([1.0, 2.0]))
    saved = Adagrad([p], lr=0.5)
    p.grad = torch.tensor([3.0, -4.0])
    saved.step()
    q = torch.nn.Parameter(p.detach().clone())
    now = Adagrad([q], lr=0.1)  # the resumed run asks for another rate
    resume = Resume(0, 1, 1, saved.state_dict(), {})
    restore_training_state(now, None, resume, None, [("p", q)], torch.device("cpu"))
    assert now.param_groups[0]["lr"] == 0.1
    torch.testing.assert_close(now.state[q]["sum"], torch.tensor([9.0, 16.0]))  # g^2 of the saved step
