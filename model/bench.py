"""`dlrmbench bench dlrm`: whole-model training step time and wall-clock throughput, kernels side by side.

Configurations run round-robin, one step each in turn on the same batch, so a noisy
neighbour slows them all alike and the ratios stay meaningful on a shared machine.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from typing import Any

import numpy as np
import torch

from kernels import get as get_kernel
from model.config import DLRMConfig, EmbeddingGrad, parse_sizes
from model.data import RandomData
from model.dlrm import DLRM
from model.optim import make_optimizer, param_groups
from model.train import LossFunction, make_loss
from profiler.bench_bag_cli import parse_choice_list, parse_int_list, parse_list, parse_threads
from profiler.cli import check_output_path
from profiler.contention import assess, snapshot
from profiler.store import write_json_atomic
from profiler.timer import Measurement

__all__ = ["add_bench_targets", "bench_dlrm"]


_REFERENCE_OPTIMIZERS = {"sgd": torch.optim.SGD, "adagrad": torch.optim.Adagrad}  # what the reference-style run uses


def bench_dlrm(
    config: DLRMConfig,
    batch_sizes: list[int],
    kernels: list[str],
    grads: list[EmbeddingGrad],
    *,
    pooling_factor: int = 10,
    fixed: bool = False,
    steps: int = 50,
    warmup: int = 5,
    seed: int = 123,
    learning_rate: float = 0.01,
    reference_style: bool = False,
    optimizer: str = "sgd",
    records: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Time training steps (forward, BCE, backward, optimizer) of each (kernel, gradient mode) per batch size.

    Returns one record per (batch size, kernel, gradient mode) with raw step and data-generation
    samples, their medians, and samples/s by step time and by wall clock (step + data).
    With `reference_style`, the same model computed the reference implementation's way
    (model.reference_style) runs first, as the baseline of the comparison, with torch's own
    optimizer (torch.optim.SGD or Adagrad, as the reference); `optimizer` is a --optimizer name.
    Records go into `records` (returned) as each batch size finishes, so a Ctrl-C keeps those done.
    """
    if reference_style and optimizer not in _REFERENCE_OPTIMIZERS:
        raise ValueError(
            f"--reference-style with --optimizer {optimizer}: the reference's row-wise Adagrad lives in its own "
            "repository; compare against it with scripts/vs_reference.py --optimizer rwsadagrad"
        )
    loss_fn = make_loss(LossFunction.BCE, (1.0, 1.0))
    records = [] if records is None else records
    for B in batch_sizes:
        data = RandomData(config.table_rows, config.num_dense, B, B * (steps + warmup), pooling_factor, fixed, seed)
        runs = []
        if reference_style:
            from model.reference_style import ReferenceStyleDLRM

            ref = ReferenceStyleDLRM(DLRM(config, torch.Generator().manual_seed(seed)))
            ref_opt = _REFERENCE_OPTIMIZERS[optimizer](ref.parameters(), lr=learning_rate)
            runs.append(("reference-style", EmbeddingGrad.SPARSE, ref, ref_opt, []))
        for kernel in kernels:
            for grad in grads:
                cfg = replace(config, kernel=kernel, embedding_grad=grad)
                model = DLRM(cfg, torch.Generator().manual_seed(seed))
                model.embeddings.fused_lr = learning_rate
                opt = make_optimizer(optimizer, param_groups(model, learning_rate), learning_rate, cfg)
                runs.append((kernel, grad, model, opt, []))
        data_s = []
        before = snapshot()  # the configurations interleave: one contention verdict covers them all
        # torch's Adagrad builds sparse tensors; off, as by default, but said so: torch warns when left implicit
        with torch.sparse.check_sparse_tensor_invariants(enable=False):
            for i in range(steps + warmup):
                t0 = time.perf_counter()
                batch = data.batch(i)
                if i >= warmup:
                    data_s.append(time.perf_counter() - t0)
                for *_, model, opt, step_s in runs:
                    t0 = time.perf_counter()
                    loss = loss_fn(model(batch.dense, batch.indices, batch.offsets), batch.labels)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if i >= warmup:
                        step_s.append(time.perf_counter() - t0)
        verdict = assess(before, snapshot(), threads=torch.get_num_threads())
        data_m = Measurement(data_s, threads=torch.get_num_threads())
        for kernel, grad, _, _, step_s in runs:
            step_m = Measurement(step_s, threads=torch.get_num_threads(), contention=verdict)
            wall_m = Measurement([a + b for a, b in zip(step_s, data_s, strict=True)], threads=step_m.threads)
            records.append(
                {
                    "kernel": kernel,
                    "embedding_grad": str(grad),
                    "optimizer": optimizer,
                    "batch_size": B,
                    "threads": step_m.threads,
                    "step_ms": step_m.median_s * 1e3,
                    "step_iqr_ms": step_m.iqr_s * 1e3,
                    "data_ms": data_m.median_s * 1e3,
                    "data_share": data_m.median_s / wall_m.median_s,
                    "step_samples_per_s": B / step_m.median_s,
                    "samples_per_s": B / wall_m.median_s,
                    "contended": step_m.contended,
                    "step": step_m.to_dict(),
                    "data": data_m.to_dict(),
                    "config": config.to_dict(),
                    "pooling_factor": pooling_factor,
                    "fixed": fixed,
                }
            )
    return records


def _print_table(records: list[dict[str, Any]]) -> None:
    head = (f"{'B':>5} {'kernel':<15} {'grad':<7} {'step ms':>8} {'IQR ms':>7} {'step samples/s':>15} "
            f"{'data ms':>8} {'data %':>6} {'wall samples/s':>15} {'speedup':>8}")  # fmt: skip
    print(head)
    print("-" * len(head))
    # speedup: step samples/s over the first row of the batch size (reference-style when timed)
    base: dict[int, float] = {}
    for r in records:
        first = base.setdefault(r["batch_size"], r["step_samples_per_s"])
        print(
            f"{r['batch_size']:>5} {r['kernel']:<15} {r['embedding_grad']:<7} {r['step_ms']:>8.2f} "
            f"{r['step_iqr_ms']:>7.2f} {r['step_samples_per_s']:>15,.0f} {r['data_ms']:>8.2f} "
            f"{100 * r['data_share']:>5.1f}% {r['samples_per_s']:>15,.0f} {r['step_samples_per_s'] / first:>7.2f}x"
            + ("  contended" if r.get("contended") else "")
        )
    reasons = {r["batch_size"]: r["step"]["contention"]["reasons"] for r in records if r.get("contended")}
    for B, why in reasons.items():
        print(f"warning: B={B} ran under contention ({'; '.join(why)}): its times understate this machine")


def _cmd(args: argparse.Namespace) -> int:
    if args.json_out:
        check_output_path("--json-out", args.json_out)
    if args.threads:
        torch.set_num_threads(args.threads)
    config = DLRMConfig(
        embedding_dim=args.arch_sparse_feature_size,
        table_rows=parse_sizes(args.arch_embedding_size, "--arch-embedding-size"),
        bottom_mlp=parse_sizes(args.arch_mlp_bot, "--arch-mlp-bot"),
        top_mlp=parse_sizes(args.arch_mlp_top, "--arch-mlp-top"),
    ).validate()
    for name in args.kernels:
        try:
            get_kernel(name)
        except ValueError as exc:
            raise ValueError(f"--kernels: {exc}") from None
    print(
        f"DLRM training step: {config.num_tables} tables x {config.table_rows[0]:,} rows, D={config.embedding_dim}, "
        f"bottom {args.arch_mlp_bot}, top {'-'.join(map(str, config.top_mlp_full))}, L={args.num_indices_per_lookup}"
        f"{' fixed' if args.num_indices_per_lookup_fixed else ' (random, as the reference)'}, "
        f"{torch.get_num_threads()} threads, {args.steps} timed steps after {args.warmup} warm-up, "
        f"optimizer {args.optimizer}"
    )
    records: list[dict[str, Any]] = []  # filled batch size by batch size: a Ctrl-C keeps those finished
    stopped = "did not finish"  # until it does: a Ctrl-C or an error keeps, prints and writes what finished
    try:
        bench_dlrm(
            config, args.batch_size, args.kernels, [EmbeddingGrad(g) for g in args.embedding_grad],
            pooling_factor=args.num_indices_per_lookup, fixed=args.num_indices_per_lookup_fixed, steps=args.steps,
            warmup=args.warmup, reference_style=args.reference_style, optimizer=args.optimizer, records=records,
        )  # fmt: skip
        stopped = ""
    except KeyboardInterrupt:
        stopped = "interrupted"
        raise
    finally:
        if records:
            _print_table(records)
            if args.json_out:
                meta = {"torch": torch.__version__, "numpy": np.__version__}
                write_json_atomic(args.json_out, {"versions": meta, "records": records,
                                                  **({"interrupted": True} if stopped else {})})  # fmt: skip
                sizes = ", ".join(str(b) for b in sorted({r["batch_size"] for r in records}))
                print(f"{stopped}: wrote the batch sizes measured ({sizes}) to {args.json_out}" if stopped
                      else f"wrote {args.json_out}")  # fmt: skip
    return 0


def add_bench_targets(bench_sub: argparse._SubParsersAction) -> None:
    p = bench_sub.add_parser(
        "dlrm",
        help="DLRM training throughput per kernel and batch size",
        description="Time DLRM training steps (random data as the reference generates it), configurations "
        "interleaved step by step. Defaults: the Kaggle shape with 100k rows per table.",
    )
    p.add_argument("--kernels", type=parse_list, default=["torch", "torch_naive"],
                   help="comma-separated registry names (default torch,torch_naive)")  # fmt: skip
    p.add_argument("--batch-size", "--mini-batch-size", dest="batch_size", type=parse_int_list, default=[128, 2048],
                   help="comma-separated (default 128,2048)")  # fmt: skip
    p.add_argument("--embedding-grad", type=parse_choice_list(str(g) for g in EmbeddingGrad), default=["sparse"],
                   help="comma-separated: sparse, dense, fused (default sparse)")  # fmt: skip
    p.add_argument("--arch-sparse-feature-size", type=int, default=16)
    p.add_argument("--arch-embedding-size", default="100000x26")
    p.add_argument("--arch-mlp-bot", default="13-512-256-64-16")
    p.add_argument("--arch-mlp-top", default="512-256-1")
    p.add_argument("--num-indices-per-lookup", type=int, default=10)
    p.add_argument("--num-indices-per-lookup-fixed", action="store_true")
    p.add_argument("--reference-style", action="store_true",
                   help="also time the model computed the reference's way (per-table EmbeddingBag loop, "
                   "Z[:, li, lj], torch.optim.SGD) as the baseline")  # fmt: skip
    p.add_argument("--optimizer", choices=["sgd", "adagrad", "rwsadagrad"], default="sgd",
                   help="as train's (default sgd); --reference-style uses torch's SGD or Adagrad")  # fmt: skip
    p.add_argument("--steps", type=int, default=50, help="timed steps per configuration")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    p.add_argument("--threads", type=parse_threads, default=0, help="torch threads (default 0: torch's)")
    p.add_argument("--json-out", default="", help="write every record, raw samples included")
    p.set_defaults(func=_cmd)
