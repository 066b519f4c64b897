"""The training / inference loop: reference-style progress lines, throughput by step and by wall clock."""

from __future__ import annotations

import contextlib
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from enum import StrEnum, unique
from typing import Any

import numpy as np
import torch

import kernels
from model.checkpoint import (
    RESUME_SETTINGS,
    Resume,
    interrupt_between_steps,
    load_checkpoint,
    restore_training_state,
    save_checkpoint,
)
from model.config import DLRMConfig
from model.data import Batch, RandomData
from model.distributed import DistContext
from model.dlrm import DLRM
from model.optim import LRSchedule, WeightEMA, make_optimizer, param_groups
from model.quality import Quality, quality
from profiler.contention import assess, snapshot
from profiler.store import write_json_atomic, write_text_atomic

__all__ = [
    "LossFunction",
    "TrainConfig",
    "evaluate",
    "load_checkpoint",
    "make_loss",
    "predict",
    "resolve_device",
    "run",
    "save_checkpoint",
    "write_predictions",
]


@unique
class LossFunction(StrEnum):
    MSE = "mse"
    BCE = "bce"
    WBCE = "wbce"


@dataclass(frozen=True)
class TrainConfig:
    learning_rate: float = 0.01  # the reference's default
    embedding_learning_rate: float = 0.0  # the embedding tables' rate; 0: learning_rate, as the reference
    optimizer: str = "sgd"  # sgd | adagrad | rwsadagrad (the reference's --optimizer names)
    embedding_optimizer: str = ""  # the tables' own (same names); "": --optimizer's
    weight_decay: float = 0.0  # L2; sgd only (lazy on embedding rows)
    nepochs: int = 1
    num_batches: int = 0  # 0: one pass over the data
    loss_function: LossFunction = LossFunction.BCE  # the reference defaults to mse
    loss_weights: tuple[float, float] = (1.0, 1.0)  # wbce: weight of label 0 and of label 1
    inference_only: bool = False
    device: str = "cpu"
    threads: int = 0  # 0: leave torch's default
    seed: int = 123
    print_freq: int = 1
    print_time: bool = False
    save_model: str = ""
    save_freq: int = 0  # with save_model: also save a resumable checkpoint every this many iterations (0: off)
    json_out: str = ""
    profile_trace: str = ""  # non-empty: after training, profile a few steps, write this Chrome trace
    test_freq: int = 0  # with test data: every this many batches of an epoch and at its end (0: at the end)
    lr_num_warmup_steps: int = 0  # the reference's LRPolicyScheduler flags (model.optim.LRSchedule); 0: none
    lr_decay_start_step: int = 0
    lr_num_decay_steps: int = 0
    ema_decay: float = 0.0  # > 0: evaluate and save an exponential moving average of the weights (0: off)
    output_bias: float | None = None  # the last layer's starting bias (log-odds); None: the reference's N(0, 1) draw
    test_predictions_out: str = ""  # non-empty: write the final evaluation's labels and probabilities (CSV) here
    extra: dict[str, Any] = field(default_factory=dict)  # recorded in --json-out as given


_DEVICE_FORM = re.compile(r"cpu|cuda(:[0-9]+)?")  # what --device's help promises


def resolve_device(device: str) -> torch.device:
    """'cpu', 'cuda' or 'cuda:N'; ValueError with the reason for any other form, or a CUDA device that is absent."""
    if not _DEVICE_FORM.fullmatch(device):
        raise ValueError(f"--device {device!r}: expected cpu, cuda or cuda:N (N a CUDA device index, e.g. cuda:0)")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        build = f"torch {torch.__version__}" + ("" if torch.version.cuda else ", built without CUDA")
        raise ValueError(f"--use-gpu / --device {device}: no CUDA device is visible ({build})")
    count = torch.cuda.device_count() if dev.type == "cuda" else 0
    if dev.index is not None and dev.index >= count:
        raise ValueError(f"--device {device}: {count} CUDA device(s) are visible, cuda:0 to cuda:{count - 1}")
    return dev


def make_loss(kind: LossFunction, weights: tuple[float, float]) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """Loss on probabilities, as the reference computes it (BCELoss on the sigmoid output)."""
    if kind == LossFunction.MSE:
        return torch.nn.MSELoss()
    if kind == LossFunction.BCE:
        return torch.nn.BCELoss()
    bce = torch.nn.BCELoss(reduction="none")
    w = torch.tensor(weights)

    def wbce(p: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return (w.to(p.device)[y.round().long()] * bce(p, y)).mean()

    return wbce


def warm_up(config: DLRMConfig, train: TrainConfig, device: torch.device) -> float:
    """One step of a throwaway DLRM with 4-row tables and the same kernel, gradient mode,
    interaction and optimizer, so compiled kernels load (numba's disk cache: ~0.3 s in all) before
    the first timed iteration; the real model is not touched. Returns seconds spent."""
    t0 = time.perf_counter()
    tiny = replace(
        config,
        table_rows=(4,) * config.num_tables,
        bottom_mlp=(config.num_dense, config.embedding_dim),
        top_mlp=(1,),
    )
    model = DLRM(tiny, torch.Generator().manual_seed(0)).to(device)
    emb_lr = train.embedding_learning_rate or train.learning_rate
    model.embeddings.fused_lr = emb_lr
    batch = RandomData(tiny.table_rows, tiny.num_dense, 2, 2, 2, False, 0).batch(0).to(device)
    loss_fn = make_loss(train.loss_function, train.loss_weights)
    if train.inference_only:
        with torch.no_grad():
            model.eval()(batch.dense, batch.indices, batch.offsets)
    else:
        groups = param_groups(model, emb_lr)  # as run() does: rwsadagrad's row-wise tables, their own rate
        optimizer = make_optimizer(
            train.optimizer, groups, train.learning_rate, tiny, train.weight_decay, train.embedding_optimizer
        )
        loss_fn(model(batch.dense, batch.indices, batch.offsets), batch.labels).backward()
        optimizer.step()
    _sync(device)
    return time.perf_counter() - t0


@torch.no_grad()
def predict(model: DLRM, data: Iterable[Batch], device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """(labels, click probabilities) of every sample of `data`, float32 (the model is left in its mode)."""
    was_training = model.training
    model.eval()
    labels, scores = [], []
    try:
        for batch in data:
            batch = batch.to(device)
            scores.append(model(batch.dense, batch.indices, batch.offsets).float().cpu())
            labels.append(batch.labels.float().cpu())
    finally:
        model.train(was_training)
    if not labels:
        raise ValueError("the test data holds no batch")
    return torch.cat(labels).numpy(), torch.cat(scores).numpy()


def evaluate(model: DLRM, data: Iterable[Batch], device: torch.device) -> Quality:
    """AUC, accuracy and log loss of `model` on every batch of `data` (the model is left in its mode)."""
    return quality(*predict(model, data, device))


def write_predictions(path: str | os.PathLike[str], labels: np.ndarray, scores: np.ndarray) -> None:
    """CSV `label,probability`, one line per test sample in data order, written atomically."""
    rows = (f"{int(y)},{p:.9g}\n" for y, p in zip(labels.tolist(), scores.tolist(), strict=True))
    write_text_atomic(path, "label,probability\n" + "".join(rows))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(
    config: DLRMConfig,
    train: TrainConfig,
    data: Iterable[Batch],
    *,
    state_dict: dict[str, torch.Tensor] | None = None,
    resume: Resume | None = None,
    test_data: Iterable[Batch] | None = None,
    log: Callable[[str], None] = print,
    dist_ctx: DistContext | None = None,
    init: Callable[[DLRM], None] | None = None,
) -> dict[str, Any]:
    """Train (or with inference_only, evaluate) DLRM on `data`; returns the --json-out record.

    `init`, when given, sets the fresh model's weights after the reference's init and the output
    bias (e.g. model.warm_start's logistic-regression start); not with a loaded or resumed model.

    With `test_data`, the model is evaluated on it every `train.test_freq` batches of an epoch
    and at each epoch's end, as the reference (`j` counting within the epoch), and always at the
    end of the run (also with test_freq 0, where the reference never evaluates); the record then
    holds "test" (auc, accuracy, logloss, samples) and "test_history".
    Evaluation time is left out of every throughput figure.

    With `dist_ctx` (torch.distributed is up), the model is the hybrid-parallel one: each
    batch is the global batch, sliced per rank; printed losses are the global batch's.

    With `train.ema_decay`, every evaluation and the saved model use the moving average of the
    weights (model.optim.WeightEMA), not the last trained weights.

    With `train.save_model`, Ctrl-C stops at the end of the step in hand and saves a checkpoint
    that `resume` (model.checkpoint.Resume) continues from, as does one saved every
    `train.save_freq` iterations; a resumed run's steps, evaluations and weights are those of
    the run not stopped. A data source with `set_epoch` is told each epoch (its order may depend
    on it), so a resumed epoch replays the same batches; one with `batches_from(j)` starts the
    resumed epoch at batch j without building those before it.
    """
    if train.test_predictions_out and test_data is None:
        raise ValueError("--test-predictions-out needs test data (--test-fraction or --test-raw-data-file)")
    device = resolve_device(train.device)
    schedule = LRSchedule(train.lr_num_warmup_steps, train.lr_decay_start_step, train.lr_num_decay_steps).validate()
    kernels.get(config.kernel, device.type)
    if train.threads:
        torch.set_num_threads(train.threads)
    if dist_ctx is not None:
        asked = {
            "--load-model": state_dict is not None,
            "--save-model": train.save_model,
            "a test split": test_data is not None,
            "--profile": train.profile_trace,
            "--ema-decay": train.ema_decay,
            "--output-bias-init prior": train.output_bias is not None,
            "--embedding-init": init is not None,
        }
        unsupported = [name for name, given in asked.items() if given]
        if unsupported:
            raise NotImplementedError(f"{', '.join(unsupported)} with --dist-backend: run those on one process")
        model: torch.nn.Module = dist_ctx.build_model(config, train.seed, log)
    else:
        model = DLRM(config, torch.Generator().manual_seed(train.seed))
        if train.output_bias is not None and resume is None:  # a resumed run started with it
            if state_dict is not None:
                raise ValueError("--output-bias-init prior with --load-model: the loaded weights replace it")
            model.set_output_bias(train.output_bias)
        if init is not None:
            if state_dict is not None or resume is not None:
                raise ValueError("a weight init (--embedding-init) with --load-model: the loaded weights replace it")
            init(model)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    if resume is not None and resume.weights is not None:
        model.load_state_dict(resume.weights)  # the trained weights (state_dict held their average)
    model.to(device)
    loss_fn = make_loss(train.loss_function, train.loss_weights)
    emb_lr = train.embedding_learning_rate or train.learning_rate
    model.embeddings.fused_lr = emb_lr
    groups = param_groups(model, emb_lr)
    optimizer = make_optimizer(
        train.optimizer, groups, train.learning_rate, config, train.weight_decay, train.embedding_optimizer
    )
    base_lrs = [group["lr"] for group in optimizer.param_groups]  # the schedule scales each group's rate
    ema = WeightEMA(model.parameters(), train.ema_decay) if train.ema_decay else None
    if resume is not None:
        restore_training_state(optimizer, ema, resume, state_dict, list(model.named_parameters()), device)

    def averaged() -> contextlib.AbstractContextManager[Any]:
        """The weights evaluations and the saved model use: the moving average with --ema-decay."""
        return ema.applied() if ema is not None else contextlib.nullcontext()

    model.train(not train.inference_only)
    mode = "inference" if train.inference_only else "training"

    losses: list[float] = list(resume.losses or []) if resume else []
    step_s = data_s = 0.0
    step_times: list[float] = []  # this process's steps, for a median robust to a slow one
    samples = 0
    iters = iters0 = resume.iterations if resume else 0
    start = (resume.epoch, resume.batch) if resume else (0, 0)
    progress = start  # (epoch, batches of it done) after the latest step
    window_loss = torch.full((), resume.window[0] if resume else 0.0, device=device)
    window_samples, window_iters = resume.window[1:] if resume else (0, 0)
    window_step_s = 0.0
    test_s = 0.0
    last = (0, 0)  # (epoch, j) of the latest step
    history: list[dict[str, Any]] = list(resume.history or []) if resume else []

    predictions: tuple[np.ndarray, np.ndarray] | None = None  # of the latest evaluation

    def test(epoch: int, j: int) -> None:
        nonlocal test_s, predictions
        t = time.perf_counter()
        with averaged():
            predictions = predict(model, test_data, device)  # type: ignore[arg-type]
        q = quality(*predictions)
        test_s += time.perf_counter() - t
        history.append({"epoch": epoch, "iteration": iters, **q.to_dict()})
        log(f"Testing at - it {j + 1}/{nbatches} of epoch {epoch}: {q.line()}")

    def save_resumable() -> None:
        resumable = not train.inference_only and dist_ctx is None
        raw = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()} if ema is not None else None
        state = Resume(*progress, iters, optimizer.state_dict(), {k: getattr(train, k) for k in RESUME_SETTINGS},
                       raw, history, losses, (float(window_loss), window_samples, window_iters))  # fmt: skip
        with averaged():
            save_checkpoint(model, train.save_model, iterations=iters, resume=state if resumable else None)

    nbatches = len(data) if train.num_batches == 0 else train.num_batches  # type: ignore[arg-type]
    warmup_s = warm_up(config, train, device)
    neighbours = snapshot()  # CPU pressure, steal and load around the timed loop (profiler.contention)
    wall0 = time.perf_counter()
    per_epoch = min(nbatches, len(data))  # type: ignore[arg-type]
    with interrupt_between_steps(bool(train.save_model) and not train.inference_only and dist_ctx is None) as stop:
        for epoch in range(start[0], train.nepochs):
            if hasattr(data, "set_epoch"):
                data.set_epoch(epoch)
            t_data = time.perf_counter()
            skip = start[1] if epoch == start[0] and hasattr(data, "batches_from") else 0
            for j, batch in enumerate(data.batches_from(skip) if skip else data, skip):
                if j >= nbatches:
                    break
                if (epoch, j) < start:  # a source that cannot skip builds the batches it trained before
                    t_data = time.perf_counter()
                    continue  # trained before the run was stopped
                batch = batch.to(device)
                B = batch.batch_size  # the global batch
                if dist_ctx is not None:
                    batch = dist_ctx.local(batch)
                _sync(device)
                t0 = time.perf_counter()
                data_s += t0 - t_data
                if train.inference_only:
                    with torch.no_grad():
                        loss = loss_fn(model(batch.dense, batch.indices, batch.offsets), batch.labels)
                else:
                    if not schedule.constant:  # before the forward: a fused update takes its rate there
                        for group, base_lr in zip(optimizer.param_groups, base_lrs, strict=True):
                            group["lr"] = schedule.lr(base_lr, iters + 1)
                        model.embeddings.fused_lr = optimizer.param_groups[0]["lr"]
                    loss = loss_fn(model(batch.dense, batch.indices, batch.offsets), batch.labels)
                    optimizer.zero_grad(set_to_none=True)
                    scale = dist_ctx.loss_scale(batch.batch_size, B) if dist_ctx is not None else 1.0
                    (loss * scale if scale != 1.0 else loss).backward()
                    optimizer.step()
                    if ema is not None:
                        ema.update()
                _sync(device)
                dt = time.perf_counter() - t0
                step_s += dt
                step_times.append(dt)
                samples += B
                iters += 1
                if batch.batch_size:  # a rank whose slice is empty has a NaN mean loss (of nothing): it adds none
                    window_loss += loss.detach() * batch.batch_size
                window_samples += batch.batch_size
                window_iters += 1
                window_step_s += dt
                if (j + 1) % train.print_freq == 0 or j + 1 == nbatches:
                    if dist_ctx is not None:
                        total, count = dist_ctx.all_sum(float(window_loss), window_samples)
                        mean_loss = total / count
                    else:
                        mean_loss = float(window_loss) / window_samples
                    losses.append(mean_loss)
                    ms = 1000.0 * window_step_s / window_iters if train.print_time else -1.0
                    log(f"Finished {mode} it {j + 1}/{nbatches} of epoch {epoch}, {ms:.2f} ms/it, loss {mean_loss:.6f}")
                    window_loss.zero_()
                    window_samples = window_iters = 0
                    window_step_s = 0.0
                last, progress = (epoch, j), ((epoch, j + 1) if j + 1 < per_epoch else (epoch + 1, 0))
                if test_data is not None and train.test_freq and ((j + 1) % train.test_freq == 0 or j + 1 == per_epoch):
                    test(*last)  # as the reference: every test_freq batches of an epoch, and at its end
                if progress[0] == train.nepochs:
                    continue  # the last step: a stop asked now finds the run done, and it ends as usual
                if stop.requested or (train.save_model and train.save_freq and iters % train.save_freq == 0):
                    save_resumable()
                if stop.requested:
                    where = f"iteration {iters} (epoch {epoch}, batch {j + 1}/{nbatches})"
                    log(f"interrupted after {where}; saved {train.save_model}: the same command with "
                        f"--load-model {train.save_model} goes on")  # fmt: skip
                    raise KeyboardInterrupt
                t_data = time.perf_counter()
    if iters == iters0:
        if resume is not None:
            raise ValueError(f"the saved run had done its {train.nepochs} epoch(s) ({iters} iterations): raise "
                             "--nepochs (or --num-batches) to train on")  # fmt: skip
        raise ValueError("no batches were run: check --num-batches, --data-size and --mini-batch-size")
    if test_data is not None and (not history or history[-1]["iteration"] != iters):
        test(*last)
    wall_s = time.perf_counter() - wall0 - test_s
    processes = dist_ctx.world_size if dist_ctx is not None else 1
    contention = assess(neighbours, snapshot(), threads=torch.get_num_threads() * processes, processes=processes)

    result = {
        "mode": mode,
        "kernel": config.kernel,
        "device": str(device),
        "threads": torch.get_num_threads(),
        "iterations": iters,
        **({"resumed_at_iteration": iters0} if resume is not None else {}),
        "samples": samples,
        "samples_per_s": samples / wall_s,
        "step_samples_per_s": samples / step_s,
        "ms_per_iter": 1000.0 * step_s / (iters - iters0),
        "step_ms_median": 1000.0 * float(np.median(step_times)),
        "data_ms_per_iter": 1000.0 * data_s / (iters - iters0),
        "wall_s": wall_s,
        "warmup_s": warmup_s,
        "contention": contention.to_dict(),
        "train_loss": losses,
        **_test_record(history, test_s),
        "config": config.to_dict(),
        "train_config": {k: v for k, v in asdict(train).items() if k != "extra"},
        **train.extra,
        "versions": {"torch": torch.__version__, "numpy": np.__version__},
    }
    if dist_ctx is not None:
        assert dist_ctx.model is not None and dist_ctx.placement is not None
        comm = dist_ctx.model.comm
        result["distributed"] = {
            "world_size": dist_ctx.world_size,
            "rank": dist_ctx.rank,
            "backend": dist_ctx.backend,
            "placement": [list(t) for t in dist_ctx.placement.tables],
            "all_to_all_ms_per_iter": 1000.0 * comm.all_to_all_s / iters,
            "all_reduce_ms_per_iter": 1000.0 * comm.all_reduce_s / iters,
        }
    log(
        f"{mode}: {iters} it{f' ({iters - iters0} in this run, resumed at {iters0})' if resume else ''}, "
        f"{result['ms_per_iter']:.2f} ms/it (step), "
        f"{result['step_samples_per_s']:,.0f} samples/s by step time, "
        f"{result['samples_per_s']:,.0f} samples/s by wall clock "
        f"(data {result['data_ms_per_iter']:.2f} ms/it), kernel {config.kernel}, {device}, "
        f"{result['threads']} threads; untimed warm-up of a 4-row copy {warmup_s:.2f} s"
    )
    if contention.contended:
        log(
            f"warning: the timed loop ran under contention ({'; '.join(contention.reasons)}): other work "
            "competed for the CPUs, so these rates understate this machine"
        )
    if train.profile_trace and not train.inference_only:
        from profiler.breakdown import profile_training_step

        breakdown = profile_training_step(model, batch, loss_fn, optimizer, steps=5, trace_path=train.profile_trace)
        log("per-operator breakdown of one training step (torch.profiler, last batch):\n" + breakdown.table())
        log(f"Chrome/Perfetto trace: {train.profile_trace}")
        result["breakdown"] = breakdown.to_dict()
    unwritten: list[str] = []  # an output that cannot be written does not cost the others
    if train.save_model:
        with averaged():
            saved = _write_output("--save-model", train.save_model, unwritten,
                                  lambda: save_checkpoint(model, train.save_model, iterations=iters))  # fmt: skip
        if saved:
            log(f"saved model to {train.save_model}" + (" (moving-average weights)" if ema is not None else ""))
    if train.test_predictions_out and predictions is not None:
        out, (labels, scores) = train.test_predictions_out, predictions
        if _write_output("--test-predictions-out", out, unwritten, lambda: write_predictions(out, labels, scores)):
            log(f"wrote {len(labels):,} test predictions to {out}")
    if train.json_out and (dist_ctx is None or dist_ctx.rank == 0):
        _write_output("--json-out", train.json_out, unwritten, lambda: write_json_atomic(train.json_out, result))
    if unwritten:
        raise OSError(f"the run finished, but {'; '.join(unwritten)}")
    return result


def _write_output(flag: str, path: str, unwritten: list[str], write: Callable[[], object]) -> bool:
    """`write()`; when it fails, note "FLAG PATH: could not write it (why)" in `unwritten` and return False."""
    try:
        write()
    except OSError as exc:
        unwritten.append(f"{flag} {path}: could not write it ({exc.strerror or exc})")
        return False
    return True


def _test_record(history: list[dict[str, Any]], test_s: float) -> dict[str, Any]:
    """The --json-out keys of the evaluations: the last one as "test", all of them as "test_history"."""
    if not history:
        return {}
    final = {k: v for k, v in history[-1].items() if k not in ("epoch", "iteration")}
    return {"test": final, "test_history": history, "test_wall_s": test_s}
