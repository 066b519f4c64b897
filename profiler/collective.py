"""Time DLRM's embedding all-to-all as an operator: the model's own `_AllToAll` on W local gloo processes.

Each rank is a spawned process with one torch thread, on a gloo group over 127.0.0.1. It holds
the tables `place_tables` gives it (T equal tables), a random (T_local, B, D) float32 tensor of
pooled vectors for the global batch, and calls `_AllToAll.apply` exactly as DistributedDLRM does
(train: forward then backward with a random output gradient). A barrier precedes every call, so
the ranks start each sample together; a sample is the slowest rank's time (all_reduce MAX over the
per-rank sample vectors). Rank 0 writes the samples to a JSON file in a temporary folder, and the
parent turns them into a Measurement.

World size 1 runs one process on a gloo group of one: the same code path as `dlrmbench train
--dist-backend gloo` with WORLD_SIZE=1, where the all-to-all is a local copy and no byte crosses
ranks (all_to_all_bytes is 0).

Failures: a rank that raises writes its traceback beside the results and exits; one that dies
without a word (a signal, os._exit) is seen by its exit code; one that hangs is caught by the
deadline. Each becomes a CollectiveFailure in the parent, naming the rank and its error, within
timeout_s, and every child still alive is terminated, then killed.
"""

from __future__ import annotations

import datetime
import json
import os
import signal
import tempfile
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from profiler.timer import Measurement, clock_overhead_s

__all__ = [
    "CollectiveFailure",
    "RankOutput",
    "all_to_all_bytes",
    "all_to_all_once",
    "nccl_tests_bandwidths",
    "time_all_to_all",
]

_MODES = ("forward", "train")
_BACKENDS = ("gloo",)
_POLL_S = 0.02  # how often the parent looks at its children
_ELEMENT_BYTES = 4  # float32 pooled vectors, as the model's


class CollectiveFailure(RuntimeError):
    """A rank of a collective measurement crashed, exited early or hung past the timeout."""


def _check_args(world_size: int, batch_size: int, num_tables: int, embedding_dim: int) -> None:
    if world_size < 1:
        raise ValueError(f"world_size={world_size}: must be >= 1")
    if num_tables < world_size:
        raise ValueError(f"num_tables={num_tables}: must be >= world_size={world_size} (a table at least per rank)")
    if batch_size < world_size:
        raise ValueError(f"batch_size={batch_size}: must be >= world_size={world_size} (a sample at least per rank)")
    if embedding_dim < 1:
        raise ValueError(f"embedding_dim={embedding_dim}: must be >= 1")


def nccl_tests_bandwidths(
    world_size: int, batch_size: int, num_tables: int, embedding_dim: int, seconds: float, *, mode: str = "forward"
) -> tuple[float, float]:
    """(algbw, busbw) in GB/s as nccl-tests define them for all-to-all, to compare with its tables.

    algbw = the send buffer of a rank (its chunk for itself included) / time; busbw = algbw * (W - 1) / W,
    the share that crosses between ranks. Tables and samples may split unevenly here, so the busiest
    rank's buffer is taken: forward, its T_r tables for all B samples, T_r * B * D * 4 bytes; train
    adds the backward exchange's, every table's gradient for its b_r samples, T * b_r * D * 4.
    """
    from model.distributed import batch_slices, place_tables

    _check_args(world_size, batch_size, num_tables, embedding_dim)
    if mode not in _MODES:
        raise ValueError(f"mode={mode!r}: allowed: {', '.join(_MODES)}")
    tables = place_tables((1,) * num_tables, 1, world_size).tables
    samples = batch_slices(batch_size, world_size)
    buffer = max(
        (len(tables[r]) * batch_size + (num_tables * samples[r] if mode != "forward" else 0))
        * embedding_dim * _ELEMENT_BYTES
        for r in range(world_size)
    )  # fmt: skip
    algbw = buffer / seconds / 1e9
    return algbw, algbw * (world_size - 1) / world_size


def all_to_all_bytes(
    world_size: int, batch_size: int, num_tables: int, embedding_dim: int, *, mode: str = "forward"
) -> list[tuple[int, int]]:
    """Bytes each rank sends to and receives from the other ranks in one call, as (sent, received) per rank.

    With T_r the tables rank r holds (place_tables over T equal tables) and b_r its samples
    (batch_slices of B), a forward call moves float32 pooled vectors:
        sent_r     = T_r * (B - b_r) * D * 4      its tables, for every other rank's samples
        received_r = (T - T_r) * b_r * D * 4      every other rank's tables, for its own samples
    The chunk a rank keeps for itself is a local copy and is not counted, so W = 1 moves 0 bytes.
    Train adds the backward all-to-all, the same exchange reversed: sent and received are each
    sent_r + received_r, twice the forward's total. Summed over ranks, sent equals received.

    Example: W=2, T=4, B=6, D=3: each rank holds 2 tables and 3 samples, and sends and receives
    2 * 3 * 3 * 4 = 72 bytes forward, 144 and 144 in train.
    """
    from model.distributed import batch_slices, place_tables

    _check_args(world_size, batch_size, num_tables, embedding_dim)
    if mode not in _MODES:
        raise ValueError(f"mode={mode!r}: allowed: {', '.join(_MODES)}")
    T, B, D = num_tables, batch_size, embedding_dim
    placement = place_tables((1,) * T, 1, world_size)
    sizes = batch_slices(B, world_size)
    out = []
    for r in range(world_size):
        T_r, b_r = len(placement.tables[r]), sizes[r]
        sent, received = T_r * (B - b_r) * D * _ELEMENT_BYTES, (T - T_r) * b_r * D * _ELEMENT_BYTES
        out.append((sent, received) if mode == "forward" else (sent + received, sent + received))
    return out


def time_all_to_all(
    world_size: int,
    batch_size: int,
    num_tables: int,
    embedding_dim: int,
    mode: str = "forward",
    backend: str = "gloo",
    warmup: int = 3,
    reps: int = 20,
    timeout_s: float = 60.0,
) -> Measurement:
    """Time the model's all-to-all on `world_size` local processes (the module docstring has the method).

    Args:
        world_size: W, ranks (processes, one torch thread each); 1 runs one process on a group of one.
        batch_size: B, the global batch; ranks take batch_slices(B, W) samples each.
        num_tables: T equal tables, spread over the ranks by place_tables.
        embedding_dim: D.
        mode: "forward", or "train" (forward + backward with a random output gradient).
        backend: "gloo" (CPU tensors).
        warmup: untimed calls first.
        reps: timed calls, one sample each.
        timeout_s: the whole launch, start-up included; also each collective's timeout inside the ranks.
    Returns:
        A Measurement of `reps` samples, each the slowest rank's seconds for one call; threads is per rank.
    Raises:
        ValueError: a bad argument, named. CollectiveFailure: a rank crashed or the run passed timeout_s.
    """
    _check_args(world_size, batch_size, num_tables, embedding_dim)
    if mode not in _MODES:
        raise ValueError(f"mode={mode!r}: allowed: {', '.join(_MODES)}")
    if backend not in _BACKENDS:
        raise NotImplementedError(f"backend={backend!r}: only gloo is wired here (CPU tensors); use gloo")
    if warmup < 0 or reps < 1:
        raise ValueError(f"warmup={warmup}, reps={reps}: need warmup >= 0 and reps >= 1")
    if timeout_s <= 0:
        raise ValueError(f"timeout_s={timeout_s}: must be > 0")
    from profiler.contention import Contention
    from profiler.timer import from_samples

    job = {"B": batch_size, "T": num_tables, "D": embedding_dim, "mode": mode, "warmup": warmup, "reps": reps}
    result = _launch(world_size, _time_worker, job, timeout_s)[0]
    assert result is not None and len(result["samples_s"]) == reps
    contention = result.get("contention")
    return from_samples(
        [float(s) for s in result["samples_s"]],
        threads=1,
        warmup_calls=warmup,
        clock_overhead_s=float(result["clock_overhead_s"]),
        contention=Contention.from_dict(contention) if contention else None,
    )


@dataclass(frozen=True)
class RankOutput:
    """What one rank's all-to-all produced: output (T, b_r, D) and the gradient of its input (T_r, B, D)."""

    rank: int
    tables: tuple[int, ...]
    output: torch.Tensor
    grad_input: torch.Tensor


def all_to_all_once(
    world_size: int, batch_size: int, num_tables: int, embedding_dim: int, *, seed: int = 0, timeout_s: float = 60.0
) -> list[RankOutput]:
    """One forward and backward of the model's all-to-all on deterministic inputs, for checking it.

    Every rank builds full = torch.randn(T, B, D, generator=torch.Generator().manual_seed(seed)) and
    grad = torch.randn(T, B, D) from the generator seeded with seed + 1; its input is full[its tables]
    and its output gradient grad[:, its samples]. A correct exchange gives rank r full[:, its samples]
    and hands back grad[its tables] / W (the model's 1/W scaling).
    """
    _check_args(world_size, batch_size, num_tables, embedding_dim)
    job = {"B": batch_size, "T": num_tables, "D": embedding_dim, "seed": seed}
    results = _launch(world_size, _once_worker, job, timeout_s)
    out = []
    for r, res in enumerate(results):
        assert res is not None
        output, grad_input = (torch.tensor(res[k], dtype=torch.float32) for k in ("output", "grad_input"))
        out.append(RankOutput(r, tuple(res["tables"]), output, grad_input))
    return out


# ---- worker side: runs in each spawned rank ----


def _rank_setup(world_size: int, job: dict[str, Any]) -> tuple[Any, list[int], Any]:
    from model.distributed import CommStats, batch_slices, place_tables

    placement = place_tables((1,) * job["T"], 1, world_size)  # equal tables: only their count matters
    return placement, batch_slices(job["B"], world_size), CommStats()


def _time_worker(rank: int, world_size: int, job: dict[str, Any]) -> dict[str, Any] | None:
    import torch.distributed as dist

    from model.distributed import _AllToAll
    from profiler.contention import assess, snapshot

    placement, sizes, comm = _rank_setup(world_size, job)
    train = job["mode"] == "train"
    g = torch.Generator().manual_seed(rank)
    local = torch.randn(len(placement.tables[rank]), job["B"], job["D"], generator=g)  # (T_local, B, D)
    local.requires_grad_(train)
    grad = torch.randn(job["T"], sizes[rank], job["D"], generator=g)  # (T, B_rank, D)
    group = dist.group.WORLD

    def call() -> None:
        out = _AllToAll.apply(local, placement, sizes, rank, group, comm)  # (T, B_rank, D)
        if train:
            torch.autograd.grad(out, local, grad)  # backward without accumulating into local.grad

    samples = []
    before = snapshot()
    for i in range(job["warmup"] + job["reps"]):
        dist.barrier(group)
        t0 = time.perf_counter()
        call()
        t1 = time.perf_counter()
        if i >= job["warmup"]:
            samples.append(t1 - t0)
    after = snapshot()
    slowest = torch.tensor(samples, dtype=torch.float64)
    dist.all_reduce(slowest, op=dist.ReduceOp.MAX, group=group)  # each sample: the slowest rank's time
    if rank != 0:
        return None
    return {
        "samples_s": slowest.tolist(),
        "clock_overhead_s": clock_overhead_s(time.perf_counter),
        "contention": assess(before, after, threads=world_size, processes=world_size).to_dict(),
    }


def _once_worker(rank: int, world_size: int, job: dict[str, Any]) -> dict[str, Any]:
    import torch.distributed as dist

    from model.distributed import _AllToAll

    placement, sizes, comm = _rank_setup(world_size, job)
    shape = (job["T"], job["B"], job["D"])
    full = torch.randn(shape, generator=torch.Generator().manual_seed(job["seed"]))
    grad = torch.randn(shape, generator=torch.Generator().manual_seed(job["seed"] + 1))
    start = sum(sizes[:rank])
    local = full[list(placement.tables[rank])].clone().requires_grad_(True)
    out = _AllToAll.apply(local, placement, sizes, rank, dist.group.WORLD, comm)
    (grad_input,) = torch.autograd.grad(out, local, grad[:, start : start + sizes[rank]].contiguous())
    return {"tables": list(placement.tables[rank]), "output": out.tolist(), "grad_input": grad_input.tolist()}


def _entry(
    rank: int,
    world_size: int,
    port: int,
    work: Callable[[int, int, dict[str, Any]], dict[str, Any] | None],
    job: dict[str, Any],
    folder: str,
    timeout_s: float,
) -> None:
    """A rank's life: join the group, do the work, leave its result and a done mark (or its traceback)."""
    out = Path(folder)
    try:
        import torch.distributed as dist

        torch.set_num_threads(1)
        dist.init_process_group(
            "gloo",
            init_method=f"tcp://127.0.0.1:{port}",
            rank=rank,
            world_size=world_size,
            timeout=datetime.timedelta(seconds=timeout_s),
        )
        result = work(rank, world_size, job)
        if result is not None:
            tmp = out / f"result.{rank}.json.tmp"
            tmp.write_text(json.dumps(result))
            tmp.replace(out / f"result.{rank}.json")
        (out / f"done.{rank}").touch()
    except BaseException:
        (out / f"error.{rank}").write_text(traceback.format_exc()[-4000:])
        os._exit(1)  # at once: the peers may be blocked in a collective with this rank
    # Everything is on disk. Skip the interpreter's teardown: gloo's process group, destroyed at exit,
    # sometimes aborts with "terminate called without an active exception" (see model/cli.py).
    os._exit(0)


# ---- parent side ----


def _exit_text(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code}"


def _failure(world_size: int, folder: Path, codes: list[int | None], why: str) -> CollectiveFailure:
    """The ranks' errors, the first written first (usually the cause; the peers' errors follow from it)."""
    errors = sorted(folder.glob("error.*"), key=lambda p: p.stat().st_mtime)
    lines = []
    for path in errors:
        rank = int(path.suffix[1:])
        text = path.read_text().strip().splitlines()
        lines.append(f"rank {rank} {_exit_text(codes[rank])}: {text[-1] if text else 'no message'}")
    seen = {int(p.suffix[1:]) for p in errors}
    for rank, code in enumerate(codes):
        if rank not in seen and not (folder / f"done.{rank}").exists():
            lines.append(f"rank {rank} {_exit_text(code)}" + ("" if code is None else " (no Python error recorded)"))
    detail = "; ".join(lines)
    if errors:
        detail += f"\nfirst traceback (rank {errors[0].suffix[1:]}):\n{errors[0].read_text().rstrip()}"
    return CollectiveFailure(f"all-to-all on {world_size} gloo rank(s) {why}: {detail}")


def _stop(procs: list[Any]) -> None:
    for p in procs:
        if p.is_alive():
            p.terminate()
    deadline = time.monotonic() + 2.0
    for p in procs:
        p.join(max(0.0, deadline - time.monotonic()))
        if p.is_alive():
            p.kill()
            p.join()


def _launch(
    world_size: int,
    work: Callable[[int, int, dict[str, Any]], dict[str, Any] | None],
    job: dict[str, Any],
    timeout_s: float,
) -> list[dict[str, Any] | None]:
    """Run `work` on `world_size` spawned gloo ranks; each rank's returned dict (None where it returned none)."""
    import torch.multiprocessing as mp

    from model.distributed import free_port

    ctx = mp.get_context("spawn")
    procs: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="dlrmbench-collective-") as tmp:
        folder = Path(tmp)
        deadline = time.monotonic() + timeout_s
        try:
            port = free_port()
            for rank in range(world_size):
                p = ctx.Process(target=_entry, args=(rank, world_size, port, work, job, tmp, timeout_s), daemon=True)
                p.start()
                procs.append(p)
            while True:
                done = [(folder / f"done.{r}").exists() for r in range(world_size)]
                if all(done):
                    break
                codes = [p.exitcode for p in procs]
                # a rank that exits without a done mark failed (the mark is written before the exit)
                if any(c is not None and not (folder / f"done.{r}").exists() for r, c in enumerate(codes)):
                    time.sleep(0.2)  # let the peers' errors land: the first written names the cause
                    raise _failure(world_size, folder, [p.exitcode for p in procs], "failed")
                if time.monotonic() > deadline:
                    raise _failure(world_size, folder, codes, f"timed out after {timeout_s:g} s")
                time.sleep(_POLL_S)
            results = []
            for r in range(world_size):
                path = folder / f"result.{r}.json"
                results.append(json.loads(path.read_text()) if path.exists() else None)
            return results  # the ranks are done; _stop ends them rather than wait ~1 s for torch's exit
        finally:
            _stop(procs)
