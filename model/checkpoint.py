"""--save-model / --load-model files: the weights, and for a run cut short, what it needs to go on.

A checkpoint is a dict of tensors and plain types (torch.save; read back with weights_only, so
no pickled code ever runs). A finished run stores the config and the weights (the moving
average with --ema-decay). A run stopped by Ctrl-C, or saved every --save-freq iterations,
also stores `resume`: where it stopped (epoch, batches of that epoch done, iterations), the
optimizer's state (Adagrad's accumulators), the trained weights when the saved ones are the
--ema-decay average, the evaluations and losses so far, and the settings it ran with.
`--load-model` on such a file continues the run; the reference's --load-model does the same
(its optimizer state included).
"""

from __future__ import annotations

import contextlib
import enum
import os
import signal
import threading
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

import numpy as np
import torch

from model.dlrm import DLRM
from model.optim import WeightEMA
from profiler.store import replace_atomic

__all__ = [
    "CHECKPOINT_VERSION",
    "RESUME_SETTINGS",
    "Resume",
    "StopRequest",
    "interrupt_between_steps",
    "load_checkpoint",
    "restore_training_state",
    "save_checkpoint",
]

# 1: {"version", "config", "state_dict", "iterations"[, "resume"]}
CHECKPOINT_VERSION = 1

# TrainConfig fields a resumed run is compared on: a different optimizer cannot take the saved
# state; the others change what the remaining iterations do, and are named when they differ.
RESUME_SETTINGS = ("optimizer", "embedding_optimizer", "learning_rate", "embedding_learning_rate", "weight_decay",
                   "seed", "nepochs", "num_batches", "lr_num_warmup_steps", "lr_decay_start_step",
                   "lr_num_decay_steps", "ema_decay", "loss_function")  # fmt: skip


@dataclass
class Resume:
    """Where a training run stopped, and the state it needs to go on as if it had not."""

    epoch: int  # the epoch in hand
    batch: int  # batches of that epoch already trained
    iterations: int  # optimizer steps so far
    optimizer: dict[str, Any]  # optimizer.state_dict()
    settings: dict[str, Any]  # RESUME_SETTINGS as the run had them
    weights: dict[str, torch.Tensor] | None = None  # the trained weights, when the checkpoint's are the average
    history: list[dict[str, Any]] | None = None  # evaluations so far
    losses: list[float] | None = None  # printed training losses so far
    window: tuple[float, int, int] = (0.0, 0, 0)  # loss sum, samples, steps since the last printed loss

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: Any) -> Resume:
        """ValueError when `d` is not what to_dict writes."""
        names = {f.name for f in fields(cls)}
        required = {"epoch", "batch", "iterations", "optimizer", "settings"}
        if not isinstance(d, dict) or not required <= d.keys() <= names:
            raise ValueError("its resume state is not one this dlrmbench writes")
        return cls(**d)


def save_checkpoint(
    model: DLRM, path: str | os.PathLike[str], *, iterations: int = 0, resume: Resume | None = None
) -> None:
    """Write config + weights (+ `resume`), atomically: a kill mid-write leaves the previous file."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    ckpt: dict[str, Any] = {
        "version": CHECKPOINT_VERSION,
        "config": model.config.to_dict(),
        "state_dict": state,
        "iterations": iterations,
    }
    if resume is not None:
        ckpt["resume"] = _to_cpu(resume.to_dict())
    replace_atomic(path, lambda tmp: torch.save(ckpt, tmp))


def load_checkpoint(path: str | os.PathLike[str], device: torch.device) -> dict[str, Any]:
    """Read a --save-model file (weights_only: no pickled code is ever run).

    Raises:
        ValueError: "PATH: not a dlrmbench checkpoint: WHY" for a file save_checkpoint did not write.
        OSError: the file cannot be opened (missing, a directory, no permission).
    """
    if os.path.isfile(path) and not zipfile.is_zipfile(path):  # refused before torch.load warns about its pickle
        raise ValueError(f"{path}: not a dlrmbench checkpoint: {_unloadable_reason(path, None)}")
    try:
        ckpt = torch.load(path, map_location=device, weights_only=True)
    except OSError:
        raise
    except Exception as exc:  # on a foreign file torch.load raises whatever its unpickler hit first
        raise ValueError(f"{path}: not a dlrmbench checkpoint: {_unloadable_reason(path, exc)}") from exc
    if not isinstance(ckpt, dict):
        why = f"it holds a {type(ckpt).__name__}, not a dict"
    elif ckpt.get("version") != CHECKPOINT_VERSION:
        why = f"its version is {ckpt.get('version')!r}; this dlrmbench reads version {CHECKPOINT_VERSION}"
    elif not {"config", "state_dict"} <= ckpt.keys():
        why = "it lacks the config or the state_dict"
    else:
        try:
            if "resume" in ckpt:
                Resume.from_dict(ckpt["resume"])
            return ckpt
        except ValueError as exc:
            why = str(exc)
    raise ValueError(f"{path}: not a dlrmbench checkpoint: {why}")


def _to_cpu(obj: Any) -> Any:
    """Tensors on the CPU; enums and numpy scalars as the plain values weights_only loading accepts."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _to_cpu(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_to_cpu(v) for v in obj)
    return obj


def _unloadable_reason(path: str | os.PathLike[str], exc: Exception | None) -> str:
    """Why torch.load failed, in a few words (its own messages run to paragraphs)."""
    if os.path.getsize(path) == 0:
        return "the file is empty"
    if not zipfile.is_zipfile(path):
        return "it is not the zip archive torch.save writes"
    if type(exc).__name__ == "UnpicklingError":  # weights_only refusing a class (named, not imported: no pickle here)
        return "it holds objects other than tensors and plain types, which weights_only loading refuses"
    return f"torch.load cannot read it, truncated or damaged? ({type(exc).__name__})"


def restore_training_state(
    optimizer: torch.optim.Optimizer,
    ema: WeightEMA | None,
    resume: Resume,
    average: dict[str, torch.Tensor] | None,
    named: list[tuple[str, torch.nn.Parameter]],
    device: torch.device,
) -> None:
    """The saved optimizer state and average (`average`: the checkpoint's state_dict); the rates and other
    settings stay this run's. `named`: the model's named parameters, in WeightEMA's order."""
    settings = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    try:
        optimizer.load_state_dict(resume.optimizer)
    except (ValueError, KeyError, TypeError, RuntimeError) as exc:
        raise ValueError(f"the saved optimizer state does not fit this model and optimizer ({exc})") from None
    for group, own in zip(optimizer.param_groups, settings, strict=True):
        group.update(own)
    if ema is not None:  # the checkpoint's weights are the average; resume.weights the trained ones
        if resume.weights is None:
            raise ValueError("--ema-decay: the saved run kept no moving average to go on with")
        ema.average = [average[name].to(device) for name, _ in named]


class StopRequest:
    """Set by the first Ctrl-C: the training loop stops, and saves, after the step in hand."""

    requested = False


@contextlib.contextmanager
def interrupt_between_steps(enabled: bool) -> Iterator[StopRequest]:
    """While enabled, a first Ctrl-C (SIGINT) only asks the loop to stop after the step in hand, so
    the checkpoint it saves holds whole steps; a second one interrupts at once. A process that started
    with SIGINT ignored (`cmd &` from a script, shielding it from the terminal's Ctrl-C) keeps ignoring it."""
    stop = StopRequest()
    main_thread = threading.current_thread() is threading.main_thread()
    if not enabled or not main_thread or signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
        yield stop
        return

    def ask(signum: int, frame: Any) -> None:
        stop.requested = True
        signal.signal(signal.SIGINT, previous)

    previous = signal.signal(signal.SIGINT, ask)
    try:
        yield stop
    finally:
        signal.signal(signal.SIGINT, previous)
