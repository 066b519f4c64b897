"""Run one sweep point (an embedding-bag call, a DLRM step or the model's all-to-all) and turn its timing into a record.

Every point allocates its own inputs, is timed by profiler.timer.measure, and yields a
record with the raw measurement and derived rates. A point that cannot run (kernel
unavailable, out of memory, timeout, invalid combination) yields a failed record with
the reason instead of stopping the sweep. An all-to-all point has no ceiling (none is measured
for gloo over loopback), so its frac_of_ceiling is None.
"""

from __future__ import annotations

import itertools
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

import kernels
from profiler.ceilings import Ceiling
from profiler.collective import CollectiveFailure
from profiler.metrics import Cost, dlrm_step_cost, embedding_bag_cost, fused_sgd_cost, rates
from profiler.sweep_spec import Point, cache_sizes, check_sizes, format_bytes, level_of, resolve_bytes
from profiler.timer import measure
from profiler.workload import check_memory, hot_rows, make_bag_inputs, profile_digest

__all__ = ["PointTimeout", "cache_sizes", "pick_ceiling", "run_point"]


class PointTimeout(Exception):
    pass


def pick_ceiling(
    ceilings: list[Ceiling], *, level: str, dim: int, threads: int, compute: bool = False
) -> Ceiling | None:
    """The measured ceiling a point is judged against: for DRAM-resident lookups the random-gather
    bandwidth of the nearest row width, for cache-resident ones the triad bandwidth of that level,
    for compute-bound work the largest measured float32 GEMM rate; the closest thread count wins."""
    measured = [c for c in ceilings if c.source == "measured" and c.device == "cpu" and c.dtype == "float32"]
    if compute:
        pool = [c for c in measured if c.name == "gemm"]
    elif level == "DRAM":
        pool = [c for c in measured if c.name == "gather"] or [c for c in measured if c.level == "DRAM"]
    else:
        pool = [c for c in measured if c.name == "triad" and c.level == level]
    if not pool:
        return None
    best_threads = min({c.threads for c in pool}, key=lambda t: (abs(t - threads), -t))
    pool = [c for c in pool if c.threads == best_threads]
    if compute:
        return max(pool, key=lambda c: c.value)
    return min(pool, key=lambda c: abs((c.row_dim if c.row_dim is not None else dim) - dim))


_MAX_ALARM_S = 1e8  # about 3 years; setitimer overflows its time_t past ~9.2e9 s


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    """Raise PointTimeout in the main thread after `seconds` (checked between Python bytecodes)."""
    if seconds <= 0 or seconds > _MAX_ALARM_S or not hasattr(signal, "setitimer"):
        yield  # past _MAX_ALARM_S (or inf) setitimer raises OverflowError: no deadline, as years would be
        return

    def _fire(signum: int, frame: Any) -> None:
        raise PointTimeout(f"timed out after {seconds:g} s (--point-timeout)")

    old = signal.signal(signal.SIGALRM, _fire)
    try:
        signal.setitimer(signal.ITIMER_REAL, seconds)
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def run_point(
    point: Point,
    *,
    fingerprint: dict[str, Any],
    ceilings: list[Ceiling],
    timing: dict[str, float] | None = None,
    timeout_s: float = 0.0,
) -> dict[str, Any]:
    """Measure `point`; returns {status, reason, measurement, derived, elapsed_s} (status ok|failed)."""
    t0 = time.perf_counter()
    caches = cache_sizes(fingerprint)
    notes: list[str] = []
    requested: dict[str, int] = {}
    try:
        check_sizes(point)  # a Point built by hand skips the spec's checks; zero rows divide by zero below
        ws = resolve_bytes(point.working_set, caches)
        table_bytes = point.num_tables * point.num_rows * point.embedding_dim * 4
        if ws is not None and ws > table_bytes and point.target == "embedding_bag":
            # The hot set cannot hold more rows than the tables have: record what was measured.
            notes.append(
                f"working_set {point.working_set} is {format_bytes(ws)}, more than the tables' "
                f"{format_bytes(table_bytes)}: the hot set is every row, recorded as {format_bytes(table_bytes)}"
            )
            requested["working_set_requested_bytes"] = ws
            ws = table_bytes
        if point.target not in _RUNS:
            raise ValueError(f"target={point.target!r}; allowed: {', '.join(_RUNS)}")
        if point.world_size != 1 and point.target != "all_to_all":
            raise NotImplementedError(
                f"world_size={point.world_size} with target {point.target}: only all_to_all points run on several "
                "processes (DLRM across processes: torchrun ... dlrmbench train --dist-backend gloo)"
            )
        with _deadline(timeout_s):
            m, cost, extra = _RUNS[point.target](point, ws, timing or {}, timeout_s)
    except (
        ValueError,
        NotImplementedError,
        MemoryError,
        PointTimeout,
        CollectiveFailure,
        torch.OutOfMemoryError,
    ) as exc:
        kind = "out of memory" if isinstance(exc, (MemoryError, torch.OutOfMemoryError)) else type(exc).__name__
        return {"status": "failed", "reason": f"{kind}: {exc}", "elapsed_s": time.perf_counter() - t0}
    threads = m.threads
    compute_bound = point.target == "dlrm"
    level: str | None = None
    ceiling: Ceiling | None = None
    if point.target != "all_to_all":
        # "all": the whole tables are the working set (they may still fit in a cache)
        footprint = ws if ws is not None else table_bytes
        touched = extra.get("touched_bytes")
        if touched is not None and touched < 0.5 * footprint:
            # calls too small to sweep the hot set within the rotation's caps: the cache sees what is read
            # (a uniform rotation that does sweep it twice still misses ~14% of its rows: placed by the hot set)
            notes.append(
                f"the index batches touch {format_bytes(touched)} of the {format_bytes(footprint)} hot set: "
                "placed by what they touch"
            )
            footprint = touched
        level = level_of(footprint, caches)
        ceiling = pick_ceiling(ceilings, level=level, dim=point.embedding_dim, threads=threads, compute=compute_bound)
    r = rates(
        cost,
        m.median_s,
        bandwidth_gbps=ceiling.value if ceiling and not compute_bound else None,
        peak_gflops=ceiling.value if ceiling and compute_bound else None,
    )
    derived = {
        **cost.to_dict(),
        **r.to_dict(),
        "working_set_bytes": ws,
        **requested,
        "memory_level": level,
        "ceiling": ceiling.key if ceiling else None,
        "ceiling_value": ceiling.value if ceiling else None,
        "frac_of_ceiling": (r.frac_of_flops if compute_bound else r.frac_of_bandwidth),
        **extra,
    }
    return {
        "status": "ok",
        "reason": "",
        "measurement": m.to_dict(),
        "median_s": m.median_s,
        "iqr_s": m.iqr_s,
        "derived": derived,
        "warnings": [*notes, *m.warnings],
        "elapsed_s": time.perf_counter() - t0,
    }


def _timed(fn: Callable[[], object], point: Point, timing: dict[str, float]) -> Any:
    return measure(
        fn,
        warmup_ms=float(timing.get("warmup_ms", 30.0)),
        rep_ms=float(timing.get("rep_ms", 150.0)),
        flush_bytes=int(timing.get("flush_bytes", 0)),
        threads=point.threads or None,
        device=point.device,
    )


def _run_bag(
    point: Point, ws: int | None, timing: dict[str, float], timeout_s: float
) -> tuple[Any, Cost, dict[str, Any]]:
    del timeout_s  # in-process: run_point's alarm bounds it
    if point.mode not in ("forward", "backward"):
        raise ValueError(f"mode={point.mode!r} is not valid for embedding_bag; allowed: forward, backward")
    entry = kernels.get(point.kernel, torch.device(point.device).type)
    bags = make_bag_inputs(point, ws, flush_bytes=int(timing.get("flush_bytes", 0)))
    weight, offsets = bags.weight.to(point.device), bags.offsets.to(point.device)
    batches = [b.to(point.device) for b in bags.batches]
    # the timed calls below run unchecked: every batch shares the offsets and the length, so one full check
    # and one range check over all of them (65,536 batches one by one took 1.7 s)
    kernels.validate_bags(weight.shape[0], batches[0], offsets)
    if any(b.shape != batches[0].shape for b in batches):
        raise ValueError("index batches of unequal lengths: each must match the offsets' last entry")
    if len(batches) > 1:
        every = torch.cat(batches)
        kernels.validate_bags(weight.shape[0], every, torch.tensor([0, every.numel()], device=every.device))
    rotation = itertools.cycle(batches)  # a new batch each call, so the hot set is what stays in cache
    n_bags, n = offsets.numel() - 1, batches[0].numel()
    cost = embedding_bag_cost(n_bags, n, point.embedding_dim)
    if point.mode == "forward":
        with torch.no_grad():
            m = _timed(lambda: entry.fn(weight, next(rotation), offsets, None, "sum", True), point, timing)
    else:
        weight.requires_grad_(True)
        grad = torch.full((n_bags, point.embedding_dim), 1e-3, device=weight.device)

        def step() -> None:
            # checked=True: every rotated batch was validated above, as the forward mode times no check either
            kernels.fused_sgd_bag(entry.fn, weight, next(rotation), offsets, 0.01, checked=True).backward(grad)

        m = _timed(step, point, timing)
        cost = cost + fused_sgd_cost(n_bags, n, point.embedding_dim)
    extra = {
        "lookups_per_s": n / m.median_s,
        "hot_rows": bags.hot_rows,
        "index_batches": len(batches),
        "touched_bytes": bags.touched_rows * point.embedding_dim * 4,
    }
    if (digest := profile_digest(point.distribution)) is not None:
        extra["profile_sha256"] = digest
    return m, cost, extra


def _run_dlrm(
    point: Point, ws: int | None, timing: dict[str, float], timeout_s: float
) -> tuple[Any, Cost, dict[str, Any]]:
    del timeout_s  # in-process: run_point's alarm bounds it
    from model.config import DLRMConfig, EmbeddingGrad, parse_sizes
    from model.data import RandomData
    from model.dlrm import DLRM
    from model.optim import SGD

    if point.mode not in ("forward", "train"):
        raise ValueError(f"mode={point.mode!r} is not valid for dlrm; allowed: forward, train")
    if ws is not None:
        raise NotImplementedError("working_set applies to embedding_bag points; dlrm points draw uniform rows")
    check_memory(point, hot_rows(point, ws), flush_bytes=int(timing.get("flush_bytes", 0)))
    bottom = (*parse_sizes(point.bottom_mlp, "bottom_mlp"), point.embedding_dim)
    config = DLRMConfig(
        point.embedding_dim,
        (point.num_rows,) * point.num_tables,
        bottom,
        parse_sizes(point.top_mlp, "top_mlp"),
        kernel=point.kernel,
        embedding_grad=EmbeddingGrad(point.embedding_grad),
    ).validate()
    kernels.get(point.kernel, torch.device(point.device).type)
    model = DLRM(config, torch.Generator().manual_seed(0)).to(point.device)
    B = point.batch_size
    data = RandomData(config.table_rows, config.num_dense, B, 8 * B, point.pooling_factor, fixed=True, seed=0)
    batches = [data.batch(i).to(point.device) for i in range(8)]
    loss_fn = torch.nn.BCELoss()
    opt = SGD(model.parameters(), lr=0.01)
    model.embeddings.fused_lr = 0.01
    state = {"i": 0}

    def step() -> None:
        b = batches[state["i"] % len(batches)]
        state["i"] += 1
        if point.mode == "forward":
            with torch.no_grad():
                model(b.dense, b.indices, b.offsets)
            return
        loss = loss_fn(model(b.dense, b.indices, b.offsets), b.labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    m = _timed(step, point, timing)
    cost = dlrm_step_cost(B, point.pooling_factor, config.table_rows, point.embedding_dim, config.bottom_mlp,
                          config.top_mlp_full, interaction=str(config.interaction),
                          interaction_itself=config.interaction_itself, top_pad=model.top_pad, mode=point.mode,
                          embedding_grad=point.embedding_grad)  # fmt: skip
    return m, cost, {"samples_per_s": B / m.median_s}


def _run_all_to_all(
    point: Point, ws: int | None, timing: dict[str, float], timeout_s: float
) -> tuple[Any, Cost, dict[str, Any]]:
    """The model's all-to-all on point.world_size gloo processes; [timing]'s ms budgets do not apply (counts do).

    timeout_s (--point-timeout; 0: the collective's default) bounds the launch and each rank's collectives:
    run_point's alarm interrupts only this process.
    """
    from profiler.collective import all_to_all_bytes, nccl_tests_bandwidths, time_all_to_all

    if point.mode not in ("forward", "train"):
        raise ValueError(f"mode={point.mode!r} is not valid for all_to_all; allowed: forward, train")
    if ws is not None:
        raise NotImplementedError("working_set applies to embedding_bag points; all_to_all moves pooled vectors")
    if point.device != "cpu":
        raise NotImplementedError(f"device={point.device!r}: all_to_all points run gloo on CPU; use device = cpu")
    if point.threads not in (0, 1):
        raise ValueError(f"threads={point.threads}: all_to_all ranks run one thread each; leave threads at 0 or 1")
    if int(timing.get("flush_bytes", 0)):
        raise NotImplementedError("flush_bytes: the all-to-all is timed in its ranks, without a cache flush")
    check_memory(point, 0)
    args = (point.world_size, point.batch_size, point.num_tables, point.embedding_dim)
    m = time_all_to_all(*args, mode=point.mode, **({"timeout_s": timeout_s} if timeout_s > 0 else {}))
    per_rank = all_to_all_bytes(*args, mode=point.mode)  # (sent, received) per rank
    sent, received = max(per_rank, key=sum)  # the busiest rank: the slowest one sets each sample
    extra = {
        "backend": "gloo",
        "bytes_sent_per_rank": [s for s, _ in per_rank],
        "bytes_received_per_rank": [r for _, r in per_rank],
        "samples_per_s": point.batch_size / m.median_s,
    }
    algbw, busbw = nccl_tests_bandwidths(*args, m.median_s, mode=point.mode)
    extra |= {"algbw_gbps": algbw, "busbw_gbps": busbw}  # nccl-tests' figures; gbps counts what crosses, both ways
    return m, Cost(sent, received, 0), extra


# (point, working set, [timing], --point-timeout s) -> (measurement, cost, derived extras)
_RUNS: dict[str, Callable[[Point, int | None, dict[str, float], float], tuple[Any, Cost, dict[str, Any]]]] = {
    "embedding_bag": _run_bag,
    "dlrm": _run_dlrm,
    "all_to_all": _run_all_to_all,
}
