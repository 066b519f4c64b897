"""Sweep files (sweeps/*.toml) -> validated specs -> points: expansion is a pure function.

A spec names the target, fixed arguments and axes; `expand` takes their cartesian
product, except axes listed together under `zip`, which advance in lockstep (as
triton.testing's Benchmark allows several x names). Example:

    name = "cache_footprint"
    target = "embedding_bag"            # or "dlrm", "all_to_all"
    [fixed]
    batch_size = 2048
    embedding_dim = 64
    [axes]
    kernel = ["torch", "numba_w16"]
    working_set = ["0.25*L1", "2*L3", "64*L3"]
    [plot]
    x = "working_set_bytes"
    y = "gbps"
"""

from __future__ import annotations

import hashlib
import itertools
import json
import math
import re
import tomllib
from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum, unique
from pathlib import Path
from typing import Any, Self

__all__ = [
    "Point",
    "SweepSpec",
    "Target",
    "cache_sizes",
    "check_sizes",
    "expand",
    "format_bytes",
    "level_of",
    "load_spec",
    "parse_spec",
    "resolve_bytes",
]


@unique
class Target(StrEnum):
    EMBEDDING_BAG = "embedding_bag"
    DLRM = "dlrm"
    ALL_TO_ALL = "all_to_all"  # the model's embedding all-to-all on world_size local gloo processes


# fields an all-to-all point does not use: an axis over one would measure the same thing again
_NOT_ALL_TO_ALL = ("kernel", "num_rows", "pooling_factor", "distribution", "working_set", "embedding_grad",
                   "bottom_mlp", "top_mlp")  # fmt: skip


@dataclass(frozen=True)
class Point:
    """One measurement. B batch, T tables, E rows per table, D dim, L pooling factor, W world size.

    working_set: the hot set the indices are drawn from, as bytes ("1048576"), a cache multiple
    ("0.5*L2", "16*L3", resolved against the fingerprint) or "all" (every row).
    """

    target: str = "embedding_bag"
    kernel: str = "torch"
    batch_size: int = 2048  # B
    num_rows: int = 1_000_000  # E per table
    embedding_dim: int = 64  # D
    pooling_factor: int = 20  # L, fixed per bag
    num_tables: int = 1  # T
    distribution: str = "uniform"  # uniform | zipf:S | sd:PATH (a stack-distance profile, relative to the cwd)
    working_set: str = "all"
    threads: int = 0  # 0: torch's default
    world_size: int = 1  # all_to_all: ranks (processes, one thread each)
    device: str = "cpu"
    mode: str = "forward"  # embedding_bag: forward | backward (fwd+bwd+fused SGD); dlrm, all_to_all: forward | train
    embedding_grad: str = "sparse"  # dlrm: sparse | dense | fused
    bottom_mlp: str = "13-512-256-64"  # dlrm: dense features first; D is appended
    top_mlp: str = "512-256-1"  # dlrm: after the interaction
    sweep: str = ""

    def key(self) -> str:
        """A stable id of what is measured: the same point in any run of any sweep file."""
        d = asdict(self)
        d.pop("sweep")
        if d["world_size"] == 1:  # added later: points of one process keep the keys they had before
            d.pop("world_size")
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def label(self, keys: list[str] | None = None) -> str:
        """key=value of the given fields (a sweep's axes), or of those that differ from the defaults."""
        d = asdict(self)
        shown = {k: d[k] for k in keys} if keys else _differing(self)
        return " ".join(f"{k}={v}" for k, v in shown.items())


_POINT_FIELDS = {f.name: f.type for f in fields(Point)}
_AXES = tuple(k for k in _POINT_FIELDS if k not in ("target", "sweep"))
_INT_FIELDS = {"batch_size", "num_rows", "embedding_dim", "pooling_factor", "num_tables", "threads", "world_size"}
_CHOICES = {
    "mode": {"forward", "backward", "train"},
    "embedding_grad": {"sparse", "dense", "fused"},
}
_TOP_KEYS = {"name", "target", "description", "fixed", "axes", "zip", "plot", "timing"}
_PLOT_KEYS = {"x", "y", "line", "logx", "logy", "kinds", "title"}
_TIMING_KEYS = {"warmup_ms", "rep_ms", "flush_bytes"}


def _differing(p: Point) -> dict[str, Any]:
    default = Point()
    return {k: v for k, v in asdict(p).items() if v != asdict(default)[k] and k != "sweep"}


@dataclass(frozen=True)
class SweepSpec:
    name: str
    target: Target
    fixed: dict[str, Any]
    axes: dict[str, list[Any]]
    zip: tuple[tuple[str, ...], ...] = ()
    description: str = ""
    plot: dict[str, Any] = field(default_factory=dict)
    timing: dict[str, float] = field(default_factory=dict)  # warmup_ms, rep_ms, flush_bytes
    source: str = ""  # the file it came from

    def validate(self) -> Self:
        where = self.source or self.name
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", self.name):
            raise ValueError(f"{where}: name {self.name!r} must be letters, digits, '_', '-' or '.'")
        for key, value in [*self.fixed.items(), *((k, v) for k, vs in self.axes.items() for v in vs)]:
            _check_value(key, value, where)
        overlap = set(self.fixed) & set(self.axes)
        if overlap:
            raise ValueError(f"{where}: {sorted(overlap)} appear in both [fixed] and [axes]")
        for key, values in self.axes.items():
            if not isinstance(values, list) or not values:
                raise ValueError(f"{where}: axes.{key} must be a non-empty list")
            seen = [_coerce(key, v) for v in values]
            twice = sorted({str(v) for v in seen if seen.count(v) > 1})
            if twice:
                raise ValueError(f"{where}: axes.{key} lists {', '.join(twice)} more than once")
        for group in self.zip:
            missing = [k for k in group if k not in self.axes]
            if missing:
                raise ValueError(f"{where}: zip names {missing}, which are not in [axes]")
            lengths = {k: len(self.axes[k]) for k in group}
            if len(set(lengths.values())) != 1:
                raise ValueError(f"{where}: zipped axes must have equal lengths, got {lengths}")
        zipped = [k for g in self.zip for k in g]
        if len(zipped) != len(set(zipped)):
            raise ValueError(f"{where}: an axis appears in two zip groups: {zipped}")
        sizes = [self.fixed.get("world_size", 1), *self.axes.get("world_size", [])]
        if self.target != Target.ALL_TO_ALL and any(w != 1 for w in sizes):
            raise ValueError(f"{where}: world_size applies to target all_to_all only (got {self.target})")
        if self.target == Target.ALL_TO_ALL:
            moot = sorted(k for k in (*self.axes, *self.fixed) if k in _NOT_ALL_TO_ALL)
            if moot:
                raise ValueError(f"{where}: {', '.join(moot)} do(es) not apply to target all_to_all (it moves "
                                 "pooled vectors: batch_size, num_tables, embedding_dim, world_size and mode shape "
                                 "it)")  # fmt: skip
        _check_keys(self.plot, _PLOT_KEYS, "plot", where)
        _check_keys(self.timing, _TIMING_KEYS, "timing", where)
        for key, value in self.timing.items():
            number = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
            if not number or value < 0 or (key == "flush_bytes" and value != int(value)):
                kind = "a non-negative integer" if key == "flush_bytes" else "a non-negative number of milliseconds"
                raise ValueError(f"{where}: timing.{key} = {value!r} must be {kind}")
        return self


def _check_keys(d: dict[str, Any], allowed: set[str], section: str, where: str) -> None:
    unknown = sorted(set(d) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown} in [{section}]; allowed: {sorted(allowed)}")


def check_sizes(point: Point, where: str = "point") -> None:
    """The spec's checks of a point's sizes (integers >= 1; threads >= 0), for points built by hand."""
    for key in sorted(_INT_FIELDS):
        _check_value(key, getattr(point, key), where)


def _check_value(key: str, value: Any, where: str) -> None:
    if key not in _AXES:
        raise ValueError(f"{where}: unknown axis or argument {key!r}; allowed: {', '.join(_AXES)}")
    if key in _INT_FIELDS:
        if (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or value != int(value)
        ):
            raise ValueError(f"{where}: {key} = {value!r} must be an integer")
        if int(value) < (0 if key == "threads" else 1):
            raise ValueError(f"{where}: {key} = {value!r} must be >= {0 if key == 'threads' else 1}")
    elif key in _CHOICES and value not in _CHOICES[key]:
        raise ValueError(f"{where}: {key} = {value!r}; allowed: {sorted(_CHOICES[key])}")
    elif key == "distribution" and str(value).startswith("sd:"):
        from model.traces import StackDistanceProfile

        try:  # read at load: a missing or malformed profile fails the spec, not each point as it runs
            StackDistanceProfile.read(str(value)[3:])
        except (OSError, ValueError) as exc:
            raise ValueError(f"{where}: distribution = {value!r}: {exc}") from None
    elif key == "distribution" and not (value == "uniform" or re.fullmatch(r"zipf:\d+(\.\d+)?", str(value))):
        raise ValueError(
            f"{where}: distribution = {value!r}; allowed: uniform, zipf:S (e.g. zipf:1.15), sd:PATH (a stack-distance "
            "profile)"
        )
    elif key == "working_set":
        resolve_bytes(str(value), {"L1": 1, "L1d": 1, "L2": 1, "L3": 1}, where=where)
    elif key == "device" and not re.fullmatch(r"cpu|cuda(:\d+)?", str(value)):
        raise ValueError(f"{where}: device = {value!r}; allowed: cpu, cuda, cuda:N")
    elif key in ("bottom_mlp", "top_mlp"):  # checked here, not only when each dlrm point runs
        from model.config import parse_sizes

        parse_sizes(str(value), f"{where}: {key}")


_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([KMG]i?B?)?", re.I)
_MULT = re.compile(r"(\d+(?:\.\d+)?)\s*\*\s*(L1d?|L2|L3|LLC)", re.I)


_BYTE_UNITS = (("B", 1), ("KiB", 1 << 10), ("MiB", 1 << 20), ("GiB", 1 << 30), ("TiB", 1 << 40))


def format_bytes(n: float) -> str:
    """32768 -> '32 KiB', 3e7 -> '28.6 MiB', 1 << 20 -> '1 MiB'.

    The unit is the largest one the value reaches, moved up one where the shown number would round to
    1024 or more (1023.9 KiB -> '1 MiB', never '1024 KiB'), so one size always reads the same.
    """

    def shown(i: int) -> str:
        v = n / _BYTE_UNITS[i][1]
        return f"{v:.0f}" if i == 0 or abs(v) >= 100 else f"{v:.3g}"

    i = max((j for j, (_unit, size) in enumerate(_BYTE_UNITS) if abs(n) >= size), default=0)
    if abs(float(shown(i))) >= 1024 and i + 1 < len(_BYTE_UNITS):
        i += 1
    return f"{shown(i)} {_BYTE_UNITS[i][0]}"


def cache_sizes(fingerprint: dict[str, Any]) -> dict[str, int]:
    """Level -> bytes one thread sees, from a fingerprint: one instance of each (L1d and L2 per core, L3 per
    socket / CCD). A core allocates only into its own L3 instance, so instances do not add up for a thread."""
    return {
        level: int(c["size_bytes"])
        for level, c in fingerprint.get("caches", {}).items()
        if level in ("L1d", "L2", "L3") and c.get("size_bytes")
    }


def level_of(ws_bytes: int | None, caches: dict[str, int]) -> str:
    """The memory level a hot set of `ws_bytes` is placed in: the smallest cache (L1d, L2, L3 of `caches`,
    as cache_sizes() gives them) it fits, else DRAM (also for None, the whole tables)."""
    if ws_bytes is not None:
        for level in ("L1d", "L2", "L3"):
            if level in caches and ws_bytes <= caches[level]:
                return level
    return "DRAM"


def resolve_bytes(expr: str, caches: dict[str, int], *, where: str = "working_set") -> int | None:
    """'0.5*L2' -> half the L2 size; '64K', '2M', '1048576' -> bytes; 'all' -> None (every row).

    Args:
        expr: the working-set expression.
        caches: level -> bytes (keys L1 or L1d, L2, L3); LLC is the largest.
    """
    text = expr.strip()
    if text.lower() == "all":
        return None
    if m := _MULT.fullmatch(text):
        level = m.group(2).upper()
        sizes = {k.upper().replace("L1D", "L1"): v for k, v in caches.items()}
        if level == "LLC":
            size = max(sizes.values(), default=0)
        else:
            size = sizes.get(level.replace("L1D", "L1"), 0)
        if not size:
            raise ValueError(f"{where}: {expr!r} names {level}, whose size is unknown here (known: {sorted(caches)})")
        if float(m.group(1)) <= 0:  # '0*L2' used to become a 1-byte working set, silently
            raise ValueError(f"{where}: {expr!r} is 0 bytes; a working set holds at least one byte (or use all)")
        return max(1, int(float(m.group(1)) * size))
    if m := _SIZE.fullmatch(text):
        unit = (m.group(2) or "").upper()[:1]
        return _positive(expr, int(float(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[unit]), where)
    raise ValueError(f"{where}: {expr!r} is not a size; use bytes (1048576, 64K, 2M), N*L1|L2|L3|LLC, or all")


def _positive(expr: str, size: int, where: str) -> int:
    if size < 1:  # '0' used to become a 1-byte working set, silently
        raise ValueError(f"{where}: {expr!r} is {size} bytes; a working set holds at least one byte (or use all)")
    return size


def parse_spec(data: dict[str, Any], source: str = "") -> SweepSpec:
    """Validate a parsed TOML document into a SweepSpec; ValueError names the file and key."""
    where = source or "sweep"
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(_TOP_KEYS)}")
    for required in ("name", "target"):
        if required not in data:
            raise ValueError(f"{where}: missing required key {required!r}")
    try:
        target = Target(data["target"])
    except ValueError:
        raise ValueError(f"{where}: target = {data['target']!r}; allowed: {', '.join(Target)}") from None
    for section in ("fixed", "axes", "plot", "timing"):
        if not isinstance(data.get(section, {}), dict):
            raise ValueError(f"{where}: [{section}] must be a table (key = value lines), got {data[section]!r}")
    zips = data.get("zip", [])
    if not isinstance(zips, list) or not all(isinstance(g, list) for g in zips):
        raise ValueError(f'{where}: zip must be a list of lists of axis names, e.g. [["batch_size", "pooling_factor"]]')
    return SweepSpec(
        name=str(data["name"]),
        target=target,
        fixed=dict(data.get("fixed", {})),
        axes={k: v if isinstance(v, list) else [v] for k, v in data.get("axes", {}).items()},
        zip=tuple(tuple(g) for g in zips),
        description=str(data.get("description", "")),
        plot=dict(data.get("plot", {})),
        timing=dict(data.get("timing", {})),
        source=source,
    ).validate()


def load_spec(path: str | Path) -> SweepSpec:
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        bad = exc.object[exc.start]
        raise ValueError(f"{path}: not UTF-8 text (TOML is UTF-8): byte {exc.start} is {bad:#04x}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(f"{path}: not valid TOML: {exc}") from None
    return parse_spec(data, str(path))


def expand(spec: SweepSpec, available_kernels: list[str] | None = None) -> list[Point]:
    """All points of a spec, in axis order (the first axis varies slowest).

    Args:
        spec: a validated spec.
        available_kernels: what `kernel = "all"` (or a "numba_*"-style glob) expands to.
    """
    axes = dict(spec.axes)
    if "kernel" in axes and available_kernels is not None:
        axes["kernel"] = _expand_kernels(axes["kernel"], available_kernels)
    groups: list[list[dict[str, Any]]] = []
    zipped = {k for g in spec.zip for k in g}
    seen_groups: set[tuple[str, ...]] = set()
    for key in axes:
        if key not in zipped:
            groups.append([{key: v} for v in axes[key]])
            continue
        group = next(g for g in spec.zip if key in g)
        if group not in seen_groups:
            seen_groups.add(group)
            groups.append([dict(zip(group, vals, strict=True)) for vals in zip(*(axes[k] for k in group), strict=True)])
    base = Point(target=str(spec.target), sweep=spec.name)
    base = replace(base, **{k: _coerce(k, v) for k, v in spec.fixed.items()})
    points = []
    for combo in itertools.product(*groups):
        values = {k: _coerce(k, v) for part in combo for k, v in part.items()}
        points.append(replace(base, **values))
    return points


def _expand_kernels(values: list[Any], available: list[str]) -> list[str]:
    out: list[str] = []
    for v in values:
        if v == "all":
            out += available
        elif isinstance(v, str) and v.endswith("*"):
            out += [k for k in available if k.startswith(v[:-1])]
        else:
            out.append(str(v))
    return list(dict.fromkeys(out))


def _coerce(key: str, value: Any) -> Any:
    return int(value) if key in _INT_FIELDS else str(value)
