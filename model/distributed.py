"""DLRM's hybrid parallelism on torch.distributed: tables model-parallel, MLPs data-parallel.

Each rank holds whole tables (placed greedily by rows x pooling factor) and looks them up
for the global batch; an all-to-all then hands every rank the pooled vectors of all tables
for its slice of the batch, and its backward returns the gradients to the tables' owners.
The MLPs are replicated and wrapped in DistributedDataParallel. With the same seed and
global batch, a run on W ranks matches a single process step for step (tested with gloo).
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from model.config import DLRMConfig
from model.data import Batch
from model.dlrm import Embeddings, aligned_pad, interact, make_mlp

__all__ = [
    "CommStats",
    "DistContext",
    "DistributedDLRM",
    "DistributedFailure",
    "Placement",
    "batch_slices",
    "free_port",
    "local_batch",
    "place_tables",
]


def free_port() -> int:
    """A TCP port free on this host now, for a process group's rendezvous (MASTER_PORT)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass(frozen=True)
class Placement:
    """tables[r]: the global ids of the tables rank r holds, ascending."""

    tables: tuple[tuple[int, ...], ...]

    def owner(self, table: int) -> int:
        return next(r for r, ts in enumerate(self.tables) if table in ts)

    def describe(self, config: DLRMConfig) -> str:
        lines = []
        for r, ts in enumerate(self.tables):
            rows = sum(config.table_rows[t] for t in ts)
            lines.append(
                f"rank {r}: tables {list(ts)} ({rows:,} rows, {rows * config.embedding_dim * 4 / 2**20:.1f} MiB)"
            )
        return "\n".join(lines)


def place_tables(table_rows: tuple[int, ...], pooling_factor: int, world_size: int) -> Placement:
    """Greedy: largest cost (rows x pooling factor) first, each to the least loaded rank."""
    if world_size < 1:
        raise ValueError(f"world size must be >= 1, got {world_size}")
    if len(table_rows) < world_size:
        raise ValueError(f"{len(table_rows)} tables cannot be spread over {world_size} ranks (one table at least each)")
    load = [0] * world_size
    owned: list[list[int]] = [[] for _ in range(world_size)]
    for t in sorted(range(len(table_rows)), key=lambda t: (-table_rows[t] * pooling_factor, t)):
        r = min(range(world_size), key=lambda r: (load[r], len(owned[r]), r))
        owned[r].append(t)
        load[r] += table_rows[t] * pooling_factor
    return Placement(tuple(tuple(sorted(ts)) for ts in owned))


def batch_slices(batch_size: int, world_size: int) -> list[int]:
    """Samples per rank: the global batch split as evenly as possible, earlier ranks taking the extra."""
    base, extra = divmod(batch_size, world_size)
    return [base + (r < extra) for r in range(world_size)]


@dataclass
class CommStats:
    """Seconds spent in communication: the all-to-all (forward and backward) and DDP's all-reduce
    (timed from launch to completion; it overlaps the backward pass)."""

    all_to_all_s: float = 0.0
    all_reduce_s: float = 0.0

    def reset(self) -> None:
        self.all_to_all_s = self.all_reduce_s = 0.0


class _AllToAll(torch.autograd.Function):
    """(T_local, B, D) pooled for the global batch -> (T, B_rank, D) for this rank's samples."""

    @staticmethod
    def forward(ctx, local, placement, sizes, rank, group, comm):  # type: ignore[override]
        t0 = time.perf_counter()
        world = len(sizes)
        D = local.shape[2]
        ctx.meta = (placement, sizes, rank, group, local.shape, comm)
        send = torch.cat([c.reshape(-1) for c in local.split(sizes, dim=1)])  # per destination, (T_loc, b_w, D)
        recv_counts = [len(placement.tables[s]) * sizes[rank] * D for s in range(world)]
        recv = local.new_empty(sum(recv_counts))
        send_counts = [local.shape[0] * sizes[w] * D for w in range(world)]
        dist.all_to_all_single(recv, send, recv_counts, send_counts, group=group)
        out = local.new_empty(sum(len(ts) for ts in placement.tables), sizes[rank], D)
        for s, chunk in enumerate(recv.split(recv_counts)):
            ids = torch.tensor(placement.tables[s], dtype=torch.long, device=out.device)  # index_copy_: same device
            out.index_copy_(0, ids, chunk.view(len(placement.tables[s]), sizes[rank], D))
        comm.all_to_all_s += time.perf_counter() - t0
        return out

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        t0 = time.perf_counter()
        placement, sizes, rank, group, local_shape, comm = ctx.meta
        world, D = len(sizes), grad.shape[2]
        ids = [torch.tensor(ts, dtype=torch.long, device=grad.device) for ts in placement.tables]
        send = torch.cat([grad.index_select(0, i).reshape(-1) for i in ids])  # per owner, (T_s, b_rank, D)
        send_counts = [len(placement.tables[s]) * sizes[rank] * D for s in range(world)]
        recv_counts = [local_shape[0] * sizes[w] * D for w in range(world)]
        recv = grad.new_empty(sum(recv_counts))
        dist.all_to_all_single(recv, send.contiguous(), recv_counts, send_counts, group=group)
        parts = [c.view(local_shape[0], sizes[w], D) for w, c in enumerate(recv.split(recv_counts))]
        # Each rank's loss is a mean over its own samples and DDP averages the MLP gradients
        # over ranks; the tables' gradients get the same 1/W so both match one process.
        out = torch.cat(parts, dim=1) / world
        comm.all_to_all_s += time.perf_counter() - t0
        return out, None, None, None, None, None


class DistributedDLRM(nn.Module):
    """forward(dense_local (B_rank, F), indices, offsets (this rank's tables, global batch)) -> (B_rank,)."""

    def __init__(
        self,
        config: DLRMConfig,
        placement: Placement,
        rank: int,
        generator_seed: int,
        group: dist.ProcessGroup | None = None,
    ):
        super().__init__()
        self.config, self.placement, self.rank, self.group = config.validate(), placement, rank, group
        self.comm = CommStats()
        g = torch.Generator().manual_seed(generator_seed)  # the MLPs exactly as DLRM draws them
        self.bottom = make_mlp(config.bottom_mlp, g, sigmoid_last=False)
        self.top = make_mlp(config.top_mlp_full, g, sigmoid_last=True, padded_input=True)
        self.top_pad = aligned_pad(config.interaction_width)
        mine = placement.tables[rank]
        self.embeddings = Embeddings(
            tuple(config.table_rows[t] for t in mine),
            config.embedding_dim,
            config.kernel,
            config.embedding_grad,
            torch.Generator().manual_seed(generator_seed),
            table_ids=mine,
        )
        n = config.num_tables + 1
        rows, cols = torch.tril_indices(n, n, offset=0 if config.interaction_itself else -1)
        self.register_buffer("pairs", rows * n + cols, persistent=False)

    def forward(self, dense: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """dense: this rank's samples; indices/offsets: this rank's tables for the whole global batch."""
        world = len(self.placement.tables)
        global_batch = (offsets.numel() - 1) // max(len(self.placement.tables[self.rank]), 1)
        sizes = batch_slices(global_batch, world)
        if dense.shape[0] != sizes[self.rank]:
            raise ValueError(f"rank {self.rank}: dense has {dense.shape[0]} samples, its slice is {sizes[self.rank]}")
        x = self.bottom(dense)  # (B_rank, D)
        local = self.embeddings(indices, offsets, global_batch)  # (T_loc, B, D)
        ly = _AllToAll.apply(local, self.placement, sizes, self.rank, self.group, self.comm)  # (T, B_rank, D)
        z = interact(x, ly, self.config.interaction, self.pairs, pad=self.top_pad)
        return self.top(z).squeeze(1)

    def wrap_ddp(self) -> None:
        """Make the MLPs data-parallel (call once the process group is up)."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        self.bottom = DDP(self.bottom, process_group=self.group)
        self.top = DDP(self.top, process_group=self.group)
        for ddp in (self.bottom, self.top):
            ddp.register_comm_hook(self, _timed_allreduce)


def _timed_allreduce(model, bucket):
    """DDP's default all-reduce (mean over ranks), timed into model.comm."""
    t0 = time.perf_counter()
    world = dist.get_world_size(model.group)
    fut = dist.all_reduce(bucket.buffer(), group=model.group, async_op=True).get_future()

    def done(f):
        model.comm.all_reduce_s += time.perf_counter() - t0
        return f.value()[0] / world

    return fut.then(done)


def train_steps(
    model: DistributedDLRM,
    batches: list[Batch],
    *,
    lr: float,
    loss_fn: torch.nn.Module | None = None,
) -> list[float]:
    """SGD steps on global batches; returns the global-batch loss of each (the same on every rank)."""
    from model.optim import SGD

    loss_fn = loss_fn or torch.nn.BCELoss()
    model.embeddings.fused_lr = lr
    opt = SGD(model.parameters(), lr=lr)
    world = len(model.placement.tables)
    losses = []
    for batch in batches:
        B = batch.batch_size
        mine = local_batch(batch, model.placement, model.rank)
        local_loss = loss_fn(model(mine.dense, mine.indices, mine.offsets), mine.labels)
        # Weighted so that DDP's average over ranks is the global batch's mean, whatever the split.
        (local_loss * (mine.batch_size * world / B)).backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        total = (local_loss.detach() * mine.batch_size).reshape(1)
        dist.all_reduce(total, group=model.group)
        losses.append(float(total) / B)
    return losses


def local_batch(batch: Batch, placement: Placement, rank: int) -> Batch:
    """This rank's share of a global batch: its tables' bags for every sample, its slice of the samples."""
    B = batch.batch_size
    sizes = batch_slices(B, len(placement.tables))
    start = sum(sizes[:rank])
    parts = batch.tables(placement.tables[rank])
    indices = torch.cat([i for i, _ in parts]) if parts else batch.indices[:0]
    lengths = torch.cat([o.diff() for _, o in parts])
    offsets = torch.zeros(lengths.numel() + 1, dtype=batch.offsets.dtype, device=lengths.device)  # cumsum's out
    torch.cumsum(lengths, 0, out=offsets[1:])
    end = start + sizes[rank]
    return Batch(batch.dense[start:end], indices, offsets, batch.labels[start:end])


class DistributedFailure(RuntimeError):
    """A peer rank died or a collective timed out; the CLI exits with this code and message."""

    exit_code = 3


@dataclass
class DistContext:
    """This process's place in the job, and what the training loop needs from it."""

    rank: int
    world_size: int
    backend: str
    group: dist.ProcessGroup | None = None
    pooling_factor: int = 1  # L, for placing tables
    placement: Placement | None = None
    model: DistributedDLRM | None = None

    def build_model(self, config: DLRMConfig, seed: int, log: Callable[[str], None]) -> DistributedDLRM:
        self.placement = place_tables(config.table_rows, self.pooling_factor, self.world_size)
        log("table placement (greedy by rows x pooling factor):\n" + self.placement.describe(config))
        self.model = DistributedDLRM(config, self.placement, self.rank, seed, self.group)
        self.model.wrap_ddp()
        return self.model

    def local(self, batch: Batch) -> Batch:
        assert self.placement is not None
        return local_batch(batch, self.placement, self.rank)

    def loss_scale(self, local_samples: int, global_samples: int) -> float:
        """Makes DDP's mean over ranks equal the global batch's mean loss, however the batch splits."""
        return local_samples * self.world_size / global_samples

    def all_sum(self, *values: float) -> list[float]:
        # NCCL reduces CUDA tensors only
        t = torch.tensor(values, dtype=torch.float64, device="cuda" if self.backend == "nccl" else "cpu")
        try:
            dist.all_reduce(t, group=self.group)
        except (RuntimeError, dist.DistBackendError) as exc:
            raise DistributedFailure(f"rank {self.rank}: a peer rank failed or timed out: {exc}") from None
        return t.tolist()


def init_distributed(backend: str, rank: int, world_size: int, timeout_s: float) -> DistContext:
    """Join the process group (torchrun's env:// rendezvous); collectives give up after timeout_s."""
    import datetime

    if backend not in ("gloo", "nccl"):
        raise ValueError(f"--dist-backend {backend!r}: allowed: gloo, nccl")
    if backend == "nccl" and not torch.cuda.is_available():
        raise ValueError("--dist-backend nccl needs CUDA devices; use gloo on CPU")
    if backend == "nccl":  # one GPU per rank (torchrun's LOCAL_RANK): NCCL refuses two ranks on one device
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", rank)) % torch.cuda.device_count())
    dist.init_process_group(backend, rank=rank, world_size=world_size, timeout=datetime.timedelta(seconds=timeout_s))
    return DistContext(rank, world_size, backend, dist.group.WORLD)
