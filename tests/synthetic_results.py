"""Synthetic results folders for the plot, compare and report tests: written through the real store.

Numbers are chosen by hand so the tests can check them: a point's bytes and FLOPs come from
profiler.metrics, its time is given, and its GB/s, GFLOP/s and fraction of ceiling follow.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

from profiler.ceilings import Ceiling
from profiler.metrics import embedding_bag_cost, rates
from profiler.store import ResultFile
from profiler.sweep_spec import Point

__all__ = ["CACHES", "CEILINGS", "bag_point", "write_sku"]

CACHES = {
    "L1d": {"size_bytes": 32 << 10, "instances": 2},
    "L2": {"size_bytes": 1 << 20, "instances": 2},
    "L3": {"size_bytes": 32 << 20, "instances": 1},
}
CEILINGS = [
    Ceiling("triad", "bandwidth", "measured", level="L1d", threads=1, gbps=200.0),
    Ceiling("triad", "bandwidth", "measured", level="L2", threads=1, gbps=100.0),
    Ceiling("triad", "bandwidth", "measured", level="DRAM", threads=1, gbps=20.0),
    Ceiling("gather", "bandwidth", "measured", level="DRAM", threads=1, gbps=10.0, shape=(1 << 20, 64, 32)),
    Ceiling("gemm", "compute", "measured", threads=1, gflops=100.0, shape=(1024, 1024, 1024)),
    Ceiling("fma_peak", "compute", "derived", threads=1, gflops=400.0, method="synthetic"),
]


def bag_point(kernel: str = "torch", **fields: Any) -> Point:
    """A small embedding-bag point (B=64, L=4, D=16) with the given fields replaced."""
    base = Point(kernel=kernel, batch_size=64, num_rows=1000, embedding_dim=16, pooling_factor=4, sweep="synth")
    return replace(base, **fields)


def _record(point: Point, median_s: float | None, ceiling: Ceiling | None, contended: bool) -> dict[str, Any]:
    if median_s is None:
        return {"key": point.key(), "point": point.to_dict(), "status": "failed", "reason": "ValueError: synthetic"}
    B, L, D = point.batch_size, point.pooling_factor, point.embedding_dim
    cost = embedding_bag_cost(B * point.num_tables, B * L * point.num_tables, D)
    r = rates(cost, median_s, bandwidth_gbps=ceiling.value if ceiling else None)
    samples = [median_s * 0.9, median_s, median_s * 1.2]
    measurement = {"samples_s": samples, "threads": 1, "p25_s": median_s * 0.95, "p75_s": median_s * 1.1,
                   "median_s": median_s, "iqr_s": median_s * 0.15, "n_samples": 3, "contended": contended,
                   "warnings": ["contended: synthetic"] if contended else []}  # fmt: skip
    ws = {"all": None, "8K": 8 << 10, "512K": 512 << 10, "256M": 256 << 20}[point.working_set]
    derived = {**cost.to_dict(), **r.to_dict(), "working_set_bytes": ws,
               "memory_level": "DRAM" if ceiling is None or ceiling.level == "DRAM" else ceiling.level,
               "ceiling": ceiling.key if ceiling else None, "ceiling_value": ceiling.value if ceiling else None,
               "frac_of_ceiling": r.frac_of_bandwidth, "lookups_per_s": B * L / median_s}  # fmt: skip
    return {"key": point.key(), "point": point.to_dict(), "status": "ok", "reason": "", "median_s": median_s,
            "iqr_s": median_s * 0.15, "measurement": measurement, "derived": derived,
            "warnings": measurement["warnings"]}  # fmt: skip


def write_sku(
    root: Path,
    sku_id: str,
    cpu: str,
    points: list[tuple[Point, float | None, Ceiling | None]],
    *,
    contended_keys: frozenset[str] = frozenset(),
    sweep: str = "synth",
    ceilings: list[Ceiling] | None = None,
) -> Path:
    """results/<sku_id>/ with machine.json and <sweep>.jsonl; each point is (Point, median_s or None
    for a failure, the ceiling it is judged against). Returns the folder."""
    folder = root / sku_id
    folder.mkdir(parents=True, exist_ok=True)
    fp = {"cpu_brand": cpu, "logical_cpus": 2, "affinity_cpus": 2, "caches": CACHES, "sku_id": sku_id}
    cs = CEILINGS if ceilings is None else ceilings
    machine = {"schema_version": 1, "sku_id": sku_id, "fingerprint": fp, "ceilings": [c.to_dict() for c in cs]}
    (folder / "machine.json").write_text(json.dumps(machine))
    store = ResultFile(folder / f"{sweep}.jsonl", {"sweep": sweep, "sku_id": sku_id, "fingerprint": fp})
    for point, median_s, ceiling in points:
        store.append(_record(replace(point, sweep=sweep), median_s, ceiling, point.key() in contended_keys))
    return folder
