"""`dlrmbench bench dist`: hybrid-parallel DLRM training on 1, 2, 4 processes, compute vs communication.

Each world size is a real torchrun job of `dlrmbench train --dist-backend gloo` (1 process:
a plain run); rank 0's --json-out gives step time and the time spent in the all-to-all and
in DDP's all-reduce. Strong scaling: the global batch stays fixed, so the ideal is W times
the one-process samples/s, and efficiency = samples/s / (W x one-process samples/s).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from profiler.bench_bag_cli import parse_float, parse_int_list, parse_threads
from profiler.cli import check_output_path
from profiler.contention import usable_cpus
from profiler.store import write_json_atomic

__all__ = ["add_bench_targets", "bench_dist"]


def bench_dist(
    world_sizes: list[int],
    train_args: list[str],
    *,
    threads: int,
    timeout_s: float,
    records: list[dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Run `dlrmbench train` with each world size; returns rank 0's records with the split.

    Records go into `records` (returned) as each world size finishes, so a failure or Ctrl-C keeps
    those measured. `ms_per_iter`, `all_to_all_ms` and `compute_ms` are means over the steps (as
    train records them); `step_ms_median` and the samples/s and efficiency from it are robust to
    one slow step. Efficiency is against the first world size's.
    """
    from model.distributed import free_port  # torch: only when a benchmark runs

    records = [] if records is None else records
    cpus = usable_cpus()
    with tempfile.TemporaryDirectory() as tmp:
        for world in world_sizes:
            out = Path(tmp) / f"w{world}.json"
            per_proc = threads or max(1, cpus // world)
            args = [*train_args, f"--json-out={out}", f"--threads={per_proc}"]
            if world == 1:
                cmd = [sys.executable, "-m", "profiler.cli", *args]
            else:
                cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={world}",
                       f"--master_port={free_port()}", f"--log-dir={tmp}",  # else torchrun leaves a /tmp dir per run
                       "-m", "profiler.cli", *args, "--dist-backend=gloo"]  # fmt: skip
            env = {**os.environ, "OMP_NUM_THREADS": str(per_proc)}
            code, stderr = _run_group(cmd, env, timeout_s, f"{world} process(es)")
            if code != 0:
                said = [ln for ln in stderr.splitlines() if "error:" in ln and "ChildFailedError" not in ln]
                raise ValueError(f"{world} process(es): dlrmbench train failed (exit {code})"
                                 + (f": {said[0].split('error:', 1)[1].strip()}" if said else "")
                                 + f"\n{stderr[-1500:]}")  # fmt: skip
            rec = json.loads(out.read_text())
            dist_rec = rec.get("distributed", {})
            a2a, ar = dist_rec.get("all_to_all_ms_per_iter", 0.0), dist_rec.get("all_reduce_ms_per_iter", 0.0)
            median_ms = rec.get("step_ms_median", rec["ms_per_iter"])
            batch = rec["samples"] / rec["iterations"]
            records.append({  # means as train records them, and the median step the table and efficiency use
                "world_size": world, "threads_per_process": per_proc, "ms_per_iter": rec["ms_per_iter"],
                "step_ms_median": median_ms, "all_to_all_ms": a2a, "all_reduce_ms": ar,
                "compute_ms": rec["ms_per_iter"] - a2a, "step_samples_per_s": 1000.0 * batch / median_ms,
                "samples_per_s": rec["samples_per_s"], "placement": dist_rec.get("placement"),
                "contended": bool(rec.get("contention", {}).get("contended")), "contention": rec.get("contention"),
            })  # fmt: skip
            base = records[0]["step_samples_per_s"] / records[0]["world_size"]
            for r in records:
                r["scaling_efficiency"] = r["step_samples_per_s"] / (r["world_size"] * base)
    return records


def _run_group(cmd: list[str], env: dict[str, str], timeout_s: float, what: str) -> tuple[int, str]:
    """Run cmd in a process group of its own; on a timeout or Ctrl-C stop the whole group, ranks included
    (killing torchrun alone leaves its workers running, on the CPUs the next measurement needs)."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)  # fmt: skip
    try:
        _, stderr = proc.communicate(timeout=timeout_s)
        return proc.returncode, stderr
    except subprocess.TimeoutExpired:
        said = _stop_group(proc)
        raise ValueError(f"{what}: dlrmbench train did not finish in --timeout {timeout_s:g} s; "
                         f"its processes were stopped" + (f"; its last output:\n{said[-1500:]}" if said.strip() else "")
                         ) from None  # fmt: skip
    except BaseException:
        _stop_group(proc)
        raise


def _stop_group(proc: subprocess.Popen) -> str:
    """SIGTERM, then SIGKILL, the whole group; returns what it wrote to stderr (often why it hung)."""
    for sig, wait_s in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            return proc.communicate(timeout=wait_s)[1] or ""
        except subprocess.TimeoutExpired:
            continue
    return ""


def _cmd(args: argparse.Namespace) -> int:
    train_args = [
        "train", f"--arch-sparse-feature-size={args.dim}", f"--arch-embedding-size={args.rows}x{args.tables}",
        f"--arch-mlp-bot=13-512-256-64-{args.dim}", "--arch-mlp-top=512-256-1",
        f"--mini-batch-size={args.batch_size}", f"--num-batches={args.num_batches}", "--print-freq=1000000",
    ]  # fmt: skip
    too_many = [w for w in args.nprocs if w > args.tables or w < 1]
    if too_many:
        raise ValueError(f"--nprocs {','.join(map(str, too_many))}: each process owns whole tables, so a world "
                         f"size must be 1 to --num-tables ({args.tables})")  # fmt: skip
    if args.json_out:
        check_output_path("--json-out", args.json_out)
    records: list[dict[str, Any]] = []
    stopped = "did not finish"  # until it does: any exception leaves the file marked incomplete
    try:
        bench_dist(args.nprocs, train_args, threads=args.threads, timeout_s=args.timeout, records=records)
        stopped = ""
    except KeyboardInterrupt:
        stopped = "interrupted"
        raise
    except ValueError as exc:
        stopped = str(exc).splitlines()[0]
        raise
    finally:
        _keep(args, records, stopped)
    return 0


def _keep(args: argparse.Namespace, records: list[dict[str, Any]], stopped: str) -> None:
    """Print and write what was measured; when the run stopped early, say so in both."""
    if not records:
        return
    if stopped:
        print(f"kept the world sizes measured before it stopped: {', '.join(str(r['world_size']) for r in records)}")
    _print_table(args, records)
    if args.json_out:
        done = {r["world_size"] for r in records}
        early = {"stopped": stopped, "not_measured": [w for w in args.nprocs if w not in done]} if stopped else {}
        write_json_atomic(args.json_out, {"records": records, "complete": not stopped, **early})
        print(f"wrote {args.json_out}")


def _print_table(args: argparse.Namespace, records: list[dict[str, Any]]) -> None:
    print(f"hybrid-parallel DLRM training, {args.tables} tables x {args.rows:,} rows, D={args.dim}, "
          f"global batch {args.batch_size}, gloo on this machine ({os.cpu_count()} CPUs)")  # fmt: skip
    head = (f"{'procs':>5} {'threads':>7} {'median ms':>9} {'mean ms':>8} {'compute':>8} {'all-to-all':>10} "
            f"{'all-reduce*':>11} {'samples/s':>10} {'efficiency':>10}")  # fmt: skip
    print(head)
    print("-" * len(head))
    for r in records:
        print(f"{r['world_size']:>5} {r['threads_per_process']:>7} {r['step_ms_median']:>9.2f} "
              f"{r['ms_per_iter']:>8.2f} {r['compute_ms']:>8.2f} {r['all_to_all_ms']:>10.2f} "
              f"{r['all_reduce_ms']:>11.2f} {r['step_samples_per_s']:>10,.0f} "
              f"{r['scaling_efficiency']:>9.0%}")  # fmt: skip
    print(
        "rank 0's step: median and mean; compute = mean step - mean all-to-all; samples/s and efficiency (over W x "
        "the first row's) from the median"
    )
    print("* DDP's all-reduce overlaps the backward pass: its time is launch to completion, not all added to the step")
    for r in records:
        if r.get("contended"):
            why = "; ".join((r.get("contention") or {}).get("reasons", []))
            print(f"warning: {r['world_size']} process(es) ran under contention ({why}): its times understate this "
                  "machine")  # fmt: skip


def add_bench_targets(bench_sub: argparse._SubParsersAction) -> None:
    p = bench_sub.add_parser("dist", help="hybrid-parallel training on 1, 2, 4 processes: compute vs communication")
    p.add_argument("--nprocs", type=parse_int_list, default=[1, 2, 4],
                   help="comma-separated world sizes, the first the baseline (default 1,2,4)")  # fmt: skip
    # named as in bench embedding-bag; the short names stay as aliases
    p.add_argument("--num-tables", "--tables", dest="tables", type=int, default=26, help="T")
    p.add_argument("--num-rows", "--rows", dest="rows", type=int, default=100_000, help="rows per table E")
    p.add_argument("--embedding-dim", "--dim", dest="dim", type=int, default=16, help="D")
    p.add_argument("--batch-size", type=int, default=2048, help="global batch")
    p.add_argument("--num-batches", type=int, default=20)
    p.add_argument("--threads", type=parse_threads, default=0, help="per process (default 0: CPUs / processes)")
    p.add_argument("--timeout", type=parse_float(0, above=True), default=600.0, help="seconds per world size")
    p.add_argument("--json-out", default="")
    p.set_defaults(func=_cmd)
