"""`dlrmbench train` and `dlrmbench presets`: the reference's flags, parsed once at the edge."""

from __future__ import annotations

import argparse
import math
import os
import sys
from collections.abc import Callable
from dataclasses import replace
from typing import Any, NoReturn

import psutil

from kernels import get as get_kernel
from model.checkpoint import RESUME_SETTINGS, Resume
from model.config import DLRMConfig, EmbeddingGrad, Interaction, parse_sizes
from model.data_cli import add_data_arguments, build_sources, fit_tables
from model.dlrm import DLRM
from model.optim import check_optimizers
from model.presets import MEMORY_FRACTION, PRESETS, get_preset, scale_rows, scale_to_fit
from model.train import LossFunction, TrainConfig, load_checkpoint, resolve_device, run
from profiler.bench_bag_cli import parse_float, parse_threads
from profiler.cli import check_output_path

__all__ = ["add_commands", "add_train_arguments", "parse_bool", "print_presets", "train_main"]

# flag -> the DLRMConfig field it sets
_ARCH_FLAGS = {"arch_sparse_feature_size": "embedding_dim", "arch_embedding_size": "table_rows",
               "arch_mlp_bot": "bottom_mlp", "arch_mlp_top": "top_mlp", "arch_interaction_op": "interaction",
               "arch_interaction_itself": "interaction_itself"}  # fmt: skip


def parse_bool(text: str) -> bool:
    """The reference's `--flag=True` / `--flag=False` form (and 1/0, yes/no)."""
    value = text.strip().lower()
    if value in ("true", "1", "yes", "on"):
        return True
    if value in ("false", "0", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def _flag_bool(parser: argparse._ActionsContainer, name: str, help: str) -> None:
    parser.add_argument(name, nargs="?", const=True, default=None, type=parse_bool, metavar="BOOL", help=help)


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    arch = p.add_argument_group("architecture (reference flags; defaults are the reference's)")
    arch.add_argument("--preset", help=f"named configuration: {', '.join(PRESETS)} (see `dlrmbench presets`)")
    arch.add_argument(
        "--scale", type=parse_float(), default=1.0, help="divide every table's rows by this (presets too big)"
    )
    arch.add_argument("--arch-sparse-feature-size", type=int, help="embedding dim D (default 2)")
    arch.add_argument("--arch-embedding-size", help="rows per table, e.g. 1000-1000-1000 or 100000x26 (default 4-3-2)")
    arch.add_argument("--arch-mlp-bot", help="bottom MLP, dense features first, D last (default 4-3-2)")
    arch.add_argument("--arch-mlp-top", help="top MLP after its input, which the interaction sets (default 4-2-1)")
    arch.add_argument("--arch-interaction-op", choices=[str(i) for i in Interaction], help="default dot")
    _flag_bool(arch, "--arch-interaction-itself", "dot: include self-interaction terms")
    arch.add_argument("--kernel", default="torch", help="embedding-bag kernel (see `dlrmbench kernels`)")
    arch.add_argument(
        "--embedding-grad",
        choices=[str(g) for g in EmbeddingGrad],
        default="sparse",
        help="sparse (the reference's), dense, or fused: SGD applied inside the backward as FBGEMM does",
    )

    add_data_arguments(p, _flag_bool)

    tr = p.add_argument_group("training")
    tr.add_argument("--nepochs", type=int, default=1)
    tr.add_argument("--learning-rate", type=parse_float(0), default=0.01)
    tr.add_argument(
        "--embedding-learning-rate",
        type=parse_float(0),
        default=0.0,
        help="the embedding tables' learning rate (default 0: --learning-rate, as the reference)",
    )
    tr.add_argument(
        "--optimizer",
        choices=["sgd", "adagrad", "rwsadagrad"],
        default="sgd",
        help="as the reference (default sgd); rwsadagrad: Adagrad with one accumulator per table row, FBGEMM's",
    )
    tr.add_argument(
        "--embedding-optimizer",
        choices=["sgd", "adagrad", "rwsadagrad", "none"],
        default="",
        help="the embedding tables' own optimizer, as TorchRec and FBGEMM allow (default: --optimizer's); none: "
        "the tables keep their starting values (with --embedding-init lr: the fitted LR's weights; no gradient, "
        "no --weight-decay on them)",
    )
    tr.add_argument(
        "--weight-decay",
        type=parse_float(0),
        default=0.0,
        help="L2 strength (sgd): MLP weights every step, embedding rows when a step touches them (default 0)",
    )
    tr.add_argument(
        "--lr-num-warmup-steps",
        type=int,
        default=0,
        help="the reference's LRPolicyScheduler, in updates counted from 1: lr rises linearly from 0 to "
        "--learning-rate over this many (default 0: no warmup)",
    )
    tr.add_argument("--lr-decay-start-step", type=int, default=0, help="the update the decay starts at, after warmup")
    tr.add_argument(
        "--lr-num-decay-steps",
        type=int,
        default=0,
        help="lr falls as (1 - t)^2 towards 0 over this many updates, then holds (default 0: no decay)",
    )
    tr.add_argument(
        "--output-bias-init",
        choices=["reference", "prior"],
        default="reference",
        help="the last layer's starting bias: reference (drawn from N(0, 1), as the reference) or prior "
        "(the log-odds of the training rows' positive rate; --data-generation dataset)",
    )
    tr.add_argument(
        "--embedding-init",
        choices=["reference", "lr"],
        default="reference",
        help="reference (uniform within 1/sqrt(rows), as the reference) or lr: fit `dlrmbench baseline`'s one-hot "
        "logistic regression on the training rows and start DLRM at its logit (one table coordinate holds each "
        "row's LR weight; FNN's warm start; --data-generation dataset, --arch-interaction-op cat; with --load-model "
        "the loaded weights are kept, nothing is fitted)",
    )
    tr.add_argument(
        "--embedding-init-rest-scale",
        type=parse_float(0),
        default=0.1,
        help="--embedding-init lr: the output's weights on the top MLP's other, randomly started units are "
        "scaled by this (0: the model starts exactly at the LR; default %(default)s)",
    )
    tr.add_argument(
        "--ema-decay",
        type=parse_float(0),
        default=0.0,
        help="evaluate and save an exponential moving average of all weights with this decay, e.g. 0.99 "
        "(default 0: off, the trained weights)",
    )
    tr.add_argument(
        "--loss-function",
        choices=[str(x) for x in LossFunction],
        default="bce",
        help="default bce (the reference defaults to mse)",
    )
    tr.add_argument("--loss-weights", default="1.0-1.0", help="wbce: weights of label 0 and label 1")
    _flag_bool(tr, "--inference-only", "forward passes only, no update")
    tr.add_argument(
        "--save-model", default="", help="write the trained model here (Ctrl-C saves where the run stopped)"
    )
    tr.add_argument("--save-freq", type=int, default=0, metavar="N",
                    help="with --save-model: also save a resumable checkpoint every N iterations (0: off)")  # fmt: skip
    tr.add_argument("--load-model", default="",
                    help="start from this saved model (its architecture); one saved by Ctrl-C or --save-freq "
                    "goes on where it stopped")  # fmt: skip

    run_ = p.add_argument_group("run")
    _flag_bool(run_, "--use-gpu", "run on the first CUDA device")
    run_.add_argument("--device", help="cpu, cuda or cuda:N (default cpu)")
    run_.add_argument("--threads", type=parse_threads, default=0, help="torch intra-op threads (default 0: torch's)")
    run_.add_argument("--print-freq", type=int, default=1)
    _flag_bool(run_, "--print-time", "print ms/it on each progress line")
    run_.add_argument("--json-out", default="", help="write throughput, losses and config as JSON")
    run_.add_argument(
        "--dist-backend",
        default="",
        choices=["", "gloo", "nccl"],
        help="hybrid parallel across torchrun processes: tables model-parallel, MLPs data-parallel",
    )
    run_.add_argument(
        "--dist-timeout",
        type=parse_float(0, above=True),
        default=60.0,
        help="seconds a collective waits for a peer before the rank gives up",
    )
    _flag_bool(run_, "--profile", "after training, split a step into operators (table + Chrome trace)")
    run_.add_argument(
        "--profile-trace", default="results/dlrm_trace.json", help="--profile's trace (default %(default)s)"
    )


def _model_config(args: argparse.Namespace) -> tuple[DLRMConfig, int, list[str]]:
    """Reference defaults < preset < explicit flags. Returns (config, pooling factor, notes)."""
    notes: list[str] = []
    base, pooling = DLRMConfig(), 10
    if args.preset:
        preset = get_preset(args.preset)
        base, pooling = preset.config, preset.pooling_factor
        notes.append(f"preset {preset.name}: {preset.source}")
    cfg = base
    if args.arch_sparse_feature_size is not None:
        cfg = replace(cfg, embedding_dim=args.arch_sparse_feature_size)
    if args.arch_embedding_size:
        cfg = replace(cfg, table_rows=parse_sizes(args.arch_embedding_size, "--arch-embedding-size"))
    if args.arch_mlp_bot:
        cfg = replace(cfg, bottom_mlp=parse_sizes(args.arch_mlp_bot, "--arch-mlp-bot"))
    if args.arch_mlp_top:
        cfg = replace(cfg, top_mlp=parse_sizes(args.arch_mlp_top, "--arch-mlp-top"))
    if args.arch_interaction_op:
        cfg = replace(cfg, interaction=Interaction(args.arch_interaction_op))
    if args.arch_interaction_itself is not None:
        cfg = replace(cfg, interaction_itself=args.arch_interaction_itself)
    cfg = replace(cfg, kernel=args.kernel, embedding_grad=EmbeddingGrad(args.embedding_grad))
    if args.scale != 1:
        before = cfg.table_bytes()
        cfg = scale_rows(cfg, args.scale)
        notes.append(
            f"scaled down: table rows divided by {args.scale:g}, {_gib(before)} -> {_gib(cfg.table_bytes())} "
            "of embedding tables"
        )
    if args.num_indices_per_lookup is not None:
        pooling = args.num_indices_per_lookup
    return cfg.validate(), pooling, notes


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def _check_memory(cfg: DLRMConfig, scaled_by: float) -> None:
    """Refuse tables past MEMORY_FRACTION of available memory, suggesting the --scale `dlrmbench presets` shows."""
    need, avail = cfg.table_bytes(), psutil.virtual_memory().available
    if need > MEMORY_FRACTION * avail:
        scale = f"{scaled_by * scale_to_fit(cfg, avail):g}"  # cfg's rows are already divided by scaled_by
        raise ValueError(
            f"the embedding tables need {_gib(need)} but only {_gib(avail)} of memory is available: "
            f"run it scaled down, e.g. --scale {scale} (rows divided by {scale})"
        )


def train_main(args: argparse.Namespace) -> dict[str, Any]:
    if args.mini_batch_size < 1 or args.print_freq < 1 or args.nepochs < 1 or args.num_batches < 0:
        raise ValueError("--mini-batch-size, --print-freq and --nepochs must be >= 1, --num-batches >= 0")
    device = args.device or ("cuda" if args.use_gpu else "cpu")
    if args.use_gpu and device == "cpu":
        raise ValueError("--use-gpu conflicts with --device cpu")
    if args.profile and args.inference_only:
        raise ValueError("--profile splits a training step into operators; --inference-only runs none: drop one")
    resolve_device(device)
    for flag, path in _output_paths(args).items():
        check_output_path(flag, path)
    if args.test_predictions_out and not (args.test_fraction or args.test_raw_data_file):
        raise ValueError("--test-predictions-out needs test data (--test-fraction or --test-raw-data-file)")
    cfg, pooling, notes = _model_config(args)
    try:
        get_kernel(cfg.kernel)
    except ValueError as exc:
        raise ValueError(f"--kernel: {exc}") from None
    check_optimizers(args.optimizer, args.embedding_optimizer, cfg.embedding_grad, args.weight_decay)  # before the data
    if args.embedding_optimizer == "none" and args.embedding_learning_rate:
        raise ValueError(f"--embedding-learning-rate {args.embedding_learning_rate:g} with --embedding-optimizer none: "
                         "frozen tables take no rate; drop one")  # fmt: skip
    if args.save_freq < 0 or (args.save_freq and not args.save_model):
        raise ValueError(f"--save-freq {args.save_freq}: give N >= 1 iterations, with --save-model PATH")
    if args.save_freq and (args.inference_only or args.dist_backend):
        raise ValueError("--save-freq saves a training run to go on with: not with --inference-only or --dist-backend")
    state, resume = None, None
    if args.load_model:
        import torch

        try:
            ckpt = load_checkpoint(args.load_model, torch.device("cpu"))
        except ValueError as exc:  # "PATH: not a dlrmbench checkpoint: why"
            raise ValueError(f"--load-model {exc}") from None
        except OSError as exc:
            raise ValueError(f"--load-model {args.load_model}: {exc.strerror or exc}") from None
        saved = DLRMConfig.from_dict(ckpt["config"])
        given = {f for f in _ARCH_FLAGS if getattr(args, f) not in (None, "")}
        differ = sorted(f for f in given if getattr(saved, _ARCH_FLAGS[f]) != getattr(cfg, _ARCH_FLAGS[f]))
        if differ:
            raise ValueError(
                f"--load-model {args.load_model} holds a different architecture from the flags given "
                f"({', '.join('--' + g.replace('_', '-') for g in differ)}); drop them to use the saved one"
            )
        cfg = replace(saved, kernel=cfg.kernel, embedding_grad=cfg.embedding_grad)
        state = ckpt["state_dict"]
        if "resume" in ckpt and not args.inference_only:
            resume = Resume.from_dict(ckpt["resume"])
            notes.append(f"going on from {args.load_model}: iteration {resume.iterations}, epoch {resume.epoch}, "
                         f"{resume.batch} batch(es) of it done")  # fmt: skip
        else:
            notes.append(f"loaded model from {args.load_model}")
    weights = parse_sizes_float(args.loss_weights)
    sources = build_sources(args, cfg, pooling)
    notes += sources.notes
    if sources.pooling_factor is not None:
        if args.num_indices_per_lookup not in (None, sources.pooling_factor):
            notes.append(f"--num-indices-per-lookup {args.num_indices_per_lookup} ignored: the data has "
                         f"{sources.pooling_factor} lookup(s) per bag")  # fmt: skip
        pooling = sources.pooling_factor
    if sources.table_rows is not None:
        given_by = f"--load-model {args.load_model}" if args.load_model else "--arch-embedding-size"
        cfg, note = fit_tables(cfg, sources.table_rows, bool(args.arch_embedding_size or args.load_model), given_by)
        notes.append(note)
    _check_memory(cfg, args.scale)
    if state is not None and resume is None and args.output_bias_init == "prior":
        # a finished model's weights, its bias among them, replace the prior: the same command reloads it
        notes.append(f"--output-bias-init prior not applied: {args.load_model}'s weights (its bias too) are loaded")
        output_bias = None
    else:
        output_bias = _output_bias(args, sources.train, notes, resumed=resume is not None)
    init = _embedding_init(args, cfg, sources.train, notes)
    say = print if not args.dist_backend or os.environ.get("RANK", "0") == "0" else (lambda *_a: None)
    for note in notes:
        say(note)
    say(
        f"model: {cfg.num_tables} tables, D={cfg.embedding_dim}, rows {sum(cfg.table_rows):,} "
        f"({_gib(cfg.table_bytes())}), bottom {'-'.join(map(str, cfg.bottom_mlp))}, "
        f"top {'-'.join(map(str, cfg.top_mlp_full))}, interaction {cfg.interaction}"
        f"{' with self terms' if cfg.interaction_itself else ''}, {cfg.num_parameters():,} parameters, "
        f"L={pooling}{' fixed' if args.num_indices_per_lookup_fixed or sources.pooling_factor else ''}, "
        f"kernel {cfg.kernel}"
    )
    train = TrainConfig(
        learning_rate=args.learning_rate,
        embedding_learning_rate=args.embedding_learning_rate,
        optimizer=args.optimizer,
        embedding_optimizer=args.embedding_optimizer,
        weight_decay=args.weight_decay,
        nepochs=args.nepochs,
        num_batches=args.num_batches,
        loss_function=LossFunction(args.loss_function),
        loss_weights=weights,
        inference_only=bool(args.inference_only),
        device=device,
        threads=args.threads,
        seed=args.numpy_rand_seed,
        print_freq=args.print_freq,
        print_time=bool(args.print_time),
        save_model=args.save_model,
        save_freq=args.save_freq,
        json_out=args.json_out,
        profile_trace=args.profile_trace if args.profile else "",
        test_freq=max(args.test_freq, 0),
        lr_num_warmup_steps=args.lr_num_warmup_steps,
        lr_decay_start_step=args.lr_decay_start_step,
        lr_num_decay_steps=args.lr_num_decay_steps,
        ema_decay=args.ema_decay,
        output_bias=output_bias,
        test_predictions_out=args.test_predictions_out,
        extra={
            "batch_size": args.mini_batch_size,
            "pooling_factor": pooling,
            "preset": args.preset,
            "notes": notes,
            "data": sources.record,
        },
    )
    if resume is not None:
        for note in _check_resume(args.load_model, resume, train):
            say(note)
    if not args.dist_backend:
        return run(cfg, train, sources.train, state_dict=state, resume=resume, test_data=sources.test, init=init)
    return _run_distributed(args, cfg, train, sources, state, pooling)


def _check_resume(path: str, resume: Resume, train: TrainConfig) -> list[str]:
    """Notes on the settings that differ from the saved run's; an optimizer that differs cannot go on."""
    notes = []
    for key in RESUME_SETTINGS:
        saved, now = resume.settings.get(key), getattr(train, key)
        if saved == now:
            continue
        flag = "--" + key.replace("_", "-").replace("seed", "numpy-rand-seed")
        if key in ("optimizer", "embedding_optimizer"):
            raise ValueError(f"--load-model {path} was trained with {flag} {saved!r}, not {now!r}: its optimizer "
                             "state cannot go on under another optimizer")  # fmt: skip
        notes.append(f"note: going on with {flag} {now} where the saved run had {saved}")
    return notes


def _output_paths(args: argparse.Namespace) -> dict[str, str]:
    """flag -> path of every file this run will write, so a bad one is refused before training."""
    paths = {"--save-model": args.save_model, "--test-predictions-out": args.test_predictions_out,
             "--json-out": args.json_out, "--profile-trace": args.profile_trace if args.profile else ""}  # fmt: skip
    return {flag: path for flag, path in paths.items() if path}


def _output_bias(args: argparse.Namespace, data: Any, notes: list[str], resumed: bool = False) -> float | None:
    """--output-bias-init prior: the log-odds of the training rows' positive rate (None: the reference's draw)."""
    if args.output_bias_init == "reference":
        return None
    if not hasattr(data, "positive_rate"):
        raise ValueError(
            f"--output-bias-init prior needs labelled training rows (--data-generation dataset), "
            f"not --data-generation {args.data_generation}"
        )
    rate = data.positive_rate()
    if not 0.0 < rate < 1.0:
        raise ValueError(
            f"--output-bias-init prior: the training rows' positive rate is {rate:g}; it needs both labels"
        )
    logit = math.log(rate / (1.0 - rate))
    prior = f"{logit:.4f}, the log-odds of the training rows' positive rate {rate:.4f}"
    if resumed:  # model.train applies it to a fresh model only; the checkpoint's bias is loaded
        notes.append(f"output bias: the checkpoint's (the run being resumed started it at {prior})")
    else:
        notes.append(f"output bias starts at {prior}")
    return logit


def _embedding_init(
    args: argparse.Namespace, cfg: DLRMConfig, data: Any, notes: list[str]
) -> Callable[[DLRM], None] | None:
    """--embedding-init lr: fit the baseline on the training rows now; the function that starts a model at it.

    With --load-model the loaded weights replace any init: nothing is fitted (as --output-bias-init prior),
    so the command that was stopped goes on with --load-model added.
    """
    if args.embedding_init == "reference":
        return None
    from model.criteo import CriteoData
    from model.criteo_format import NUM_DENSE
    from model.warm_start import check_warm_start, fit_baseline, logistic_warm_start

    if not isinstance(data, CriteoData):
        raise ValueError(f"--embedding-init lr needs Criteo training rows (--data-generation dataset), "
                         f"not --data-generation {args.data_generation}")  # fmt: skip
    if args.dist_backend:
        raise NotImplementedError("--embedding-init lr with --dist-backend: run it on one process")
    if args.load_model:
        notes.append(f"--embedding-init lr not applied: {args.load_model}'s weights are loaded")
        return None
    check_warm_start(cfg, data.table_rows, NUM_DENSE)  # before the fit: refused at once
    lr, held_back = fit_baseline(data, NUM_DENSE)
    notes.append(f"--embedding-init lr: logistic regression fitted on the {data.samples:,} training rows, l2 "
                 f"{lr.l2:g} (held-back log loss {held_back[lr.l2]:.5f}); DLRM starts at its logit "
                 f"(other top units' output weights x {args.embedding_init_rest_scale:g})")  # fmt: skip
    if args.output_bias_init == "prior":
        notes.append("--output-bias-init prior: replaced by the LR's bias under --embedding-init lr")
    scale = args.embedding_init_rest_scale

    def init(model: DLRM) -> None:
        logistic_warm_start(model, lr, rest_scale=scale)

    return init


def _run_distributed(args: argparse.Namespace, cfg: DLRMConfig, train: TrainConfig, sources: Any, state: Any,
                     pooling: int) -> NoReturn:  # fmt: skip
    """One rank of a torchrun job: RANK / WORLD_SIZE / MASTER_ADDR come from torchrun's environment.
    The process ends here (exit status 0) once every rank has finished."""
    import torch.distributed as dist

    from model.distributed import DistributedFailure, init_distributed

    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:
        raise ValueError(
            "--dist-backend needs a launcher that sets RANK and WORLD_SIZE, e.g. "
            "torchrun --nproc_per_node 2 --no-python dlrmbench train ... --dist-backend gloo"
        )
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    log = print if rank == 0 else (lambda _line: None)
    try:  # the rendezvous too: a rank that dies before joining leaves the others timing out in it
        ctx = init_distributed(args.dist_backend, rank, world, args.dist_timeout)
        ctx.pooling_factor = pooling
        run(cfg, train, sources.train, state_dict=state, test_data=sources.test, log=log, dist_ctx=ctx)
        # Leave together and let process exit close the group: with gloo, destroy_process_group
        # aborted one rank in about one exit of five here ("terminate called without an active
        # exception"); without it, none in 20.
        dist.barrier()
    except (RuntimeError, dist.DistBackendError) as exc:
        if isinstance(exc, (DistributedFailure, NotImplementedError)):  # a refusal is not a peer's failure
            raise
        raise DistributedFailure(f"rank {rank}: a peer rank failed or a collective timed out: {exc}") from None
    # Even so, a gloo rank still aborted at interpreter teardown in 2 of 25 loaded runs (the same
    # message, after all its output was written). Everything is written now: leave without the teardown.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def parse_sizes_float(text: str) -> tuple[float, float]:
    parts = text.split("-")
    try:
        w0, w1 = (float(p) for p in parts)
    except ValueError:
        raise ValueError(f"--loss-weights {text!r}: expected two numbers, e.g. 1.0-1.0") from None
    return w0, w1


def print_presets() -> None:
    avail = psutil.virtual_memory().available
    header = f"{'preset':<8} {'T':>3} {'D':>4} {'L':>4} {'rows':>14} {'parameters':>15} {'tables':>10}  fits here"
    print(header)
    print("-" * len(header))
    for p in PRESETS.values():
        c = p.config
        scale = scale_to_fit(c, avail)
        fits = "yes" if scale == 1 else f"no: --scale {scale}"
        print(
            f"{p.name:<8} {c.num_tables:>3} {c.embedding_dim:>4} {p.pooling_factor:>4} {sum(c.table_rows):>14,} "
            f"{c.num_parameters():>15,} {_gib(c.table_bytes()):>10}  {fits}"
        )
    print(f"fits here: tables within {MEMORY_FRACTION:.0%} of the {_gib(avail)} of memory available now")
    print()
    for p in PRESETS.values():
        c = p.config
        print(
            f"{p.name}: {p.source}\n    bottom {'-'.join(map(str, c.bottom_mlp))}, "
            f"top {'-'.join(map(str, c.top_mlp_full))}"
        )


def add_commands(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "train",
        help="train or run inference on DLRM (the reference's flags)",
        description="Train DLRM (Naumov et al. 2019). Flags follow the reference dlrm_s_pytorch.py; "
        "--loss-function defaults to bce (the reference's default is mse).",
    )
    add_train_arguments(p)
    p.set_defaults(func=lambda a: train_main(a) and 0)
    sub.add_parser("presets", help="list named model configurations").set_defaults(func=lambda a: print_presets())
