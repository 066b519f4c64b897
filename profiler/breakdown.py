"""Per-operator breakdown of one DLRM training step with torch.profiler, as a table and a Chrome trace.

Method: forward hooks on `model.bottom`, `model.embeddings` and `model.top` open and close
record_function regions (the interaction is the region between the embeddings' end and the top
MLP's start); the step itself wraps loss, zero_grad, backward and optimizer.step in regions. Each
forward op carries an autograd sequence number, and the backward node it creates carries the same
one, so every `autograd::engine::evaluate_function` event in the backward pass is attributed to the
forward region that made its node (AccumulateGrad, which has none, goes with the node before it).
Region times are exclusive of nested regions; 'other' is the step's remaining time, so the rows
sum to the measured (profiled) step. Nothing in model/ changes; hooks are removed afterwards.

On CUDA the step is synchronised at its end, so the step time is right, but the split is by CPU-side
time (launches), not by kernel time; read the trace for kernel times.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.autograd.profiler import record_function

__all__ = ["PARTS", "Breakdown", "profile_training_step"]

_PREFIX = "dlrm::"
_FORWARD_REGIONS = ("bottom_mlp", "embedding", "interaction", "top_mlp", "loss")
# Rows of the table, in step order; 'other' closes it so the rows sum to the step.
PARTS = (
    "bottom_mlp_fwd", "embedding_fwd", "interaction_fwd", "top_mlp_fwd", "loss_fwd",
    "loss_bwd", "top_mlp_bwd", "interaction_bwd", "embedding_bwd", "bottom_mlp_bwd",
    "zero_grad", "optimizer", "other",
)  # fmt: skip


@dataclass(frozen=True)
class Breakdown:
    """Mean seconds per step of each part (PARTS), the measured step, and where the trace went."""

    parts_s: dict[str, float]
    step_s: float  # mean profiled step (sum of parts_s)
    steps: int
    unprofiled_step_s: float | None = None  # the same step timed without the profiler
    trace_path: str | None = None
    device: str = "cpu"
    notes: list[str] = field(default_factory=list)

    def validate(self) -> Breakdown:
        missing = set(PARTS) - set(self.parts_s)
        if missing or self.steps < 1:
            raise ValueError(f"breakdown needs every part ({sorted(missing)} missing) and steps >= 1")
        return self

    @property
    def shares(self) -> dict[str, float]:
        return {k: (v / self.step_s if self.step_s > 0 else 0.0) for k, v in self.parts_s.items()}

    @property
    def named_share(self) -> float:
        """Share of the step covered by named parts (everything but 'other')."""
        return 1.0 - self.shares["other"]

    def table(self) -> str:
        lines = [f"{'part':18s} {'ms/step':>9s} {'share':>7s}"]
        for name in PARTS:
            lines.append(f"{name:18s} {self.parts_s[name] * 1e3:9.3f} {self.shares[name]:7.1%}")
        lines.append(f"{'step (profiled)':18s} {self.step_s * 1e3:9.3f} {1:7.1%}")
        if self.unprofiled_step_s:
            lines.append(f"{'step (no profiler)':18s} {self.unprofiled_step_s * 1e3:9.3f}")
        lines.append(f"named parts cover {self.named_share:.1%} of the step ({self.steps} steps, {self.device})")
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        return {
            "parts_s": dict(self.parts_s),
            "shares": self.shares,
            "step_s": self.step_s,
            "steps": self.steps,
            "unprofiled_step_s": self.unprofiled_step_s,
            "named_share": self.named_share,
            "trace_path": self.trace_path,
            "device": self.device,
            "notes": list(self.notes),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Breakdown:
        return cls(
            parts_s={k: float(v) for k, v in d["parts_s"].items()},
            step_s=float(d["step_s"]),
            steps=int(d["steps"]),
            unprofiled_step_s=d.get("unprofiled_step_s"),
            trace_path=d.get("trace_path"),
            device=d.get("device", "cpu"),
            notes=list(d.get("notes", [])),
        ).validate()


class _Regions:
    """Forward hooks that open/close record_function regions around the DLRM submodules."""

    def __init__(self, model: nn.Module) -> None:
        self._open: dict[str, Any] = {}
        self._handles = []
        for attr, region in (("bottom", "bottom_mlp"), ("embeddings", "embedding"), ("top", "top_mlp")):
            module = getattr(model, attr)
            self._handles.append(module.register_forward_pre_hook(self._pre(region)))
            self._handles.append(module.register_forward_hook(self._post(region)))

    def enter(self, region: str) -> None:
        rf = record_function(_PREFIX + region)
        rf.__enter__()
        self._open[region] = rf

    def exit(self, region: str) -> None:
        rf = self._open.pop(region, None)
        if rf is not None:
            rf.__exit__(None, None, None)

    def _pre(self, region: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any) -> None:
            if region == "top_mlp":
                self.exit("interaction")
            self.enter(region)

        return hook

    def _post(self, region: str) -> Callable[..., None]:
        def hook(_module: nn.Module, _inputs: Any, _output: Any) -> None:
            self.exit(region)
            if region == "embedding":
                self.enter("interaction")

        return hook

    def close(self) -> None:
        for region in list(self._open):
            self.exit(region)
        for h in self._handles:
            h.remove()


def _step(model: nn.Module, batch: Any, loss_fn: Callable[..., torch.Tensor], optimizer: Any, regions: _Regions | None):
    def region(name: str) -> Any:
        return record_function(_PREFIX + name) if regions is not None else _Null()

    out = model(batch.dense, batch.indices, batch.offsets)
    if regions is not None:
        regions.exit("interaction")  # in case the model skipped the top MLP
    with region("loss"):
        loss = loss_fn(out, batch.labels)
    with region("zero_grad"):
        optimizer.zero_grad(set_to_none=True)
    with region("backward"):
        loss.backward()
    with region("optimizer"):
        optimizer.step()
    return loss


class _Null:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


def _region_of(event: Any) -> str | None:
    """The nearest enclosing dlrm:: region of a profiler event (itself included)."""
    e = event
    while e is not None:
        if e.name.startswith(_PREFIX):
            return e.name[len(_PREFIX) :]
        e = e.cpu_parent
    return None


def _attribute(events: list[Any], steps: int) -> tuple[dict[str, float], float]:
    """Per-part seconds per step and the mean step, from profiler FunctionEvents (times in µs)."""
    total_us = dict.fromkeys(PARTS, 0.0)
    regions = [e for e in events if e.name.startswith(_PREFIX)]
    step_us = sum(e.time_range.elapsed_us() for e in regions if e.name == _PREFIX + "step")
    exclusive: dict[str, float] = {}
    for e in regions:
        nested = sum(c.time_range.elapsed_us() for c in _child_regions(e))
        name = e.name[len(_PREFIX) :]
        exclusive[name] = exclusive.get(name, 0.0) + e.time_range.elapsed_us() - nested
    for name in _FORWARD_REGIONS:
        total_us[f"{name}_fwd"] += exclusive.get(name, 0.0)
    total_us["zero_grad"] += exclusive.get("zero_grad", 0.0)
    total_us["optimizer"] += exclusive.get("optimizer", 0.0)
    seq_region = {}
    for e in events:
        if e.sequence_nr >= 0 and not e.name.startswith("autograd::") and "Backward" not in e.name:
            r = _region_of(e)
            if r in _FORWARD_REGIONS:
                seq_region.setdefault((e.thread, e.sequence_nr), r)
    backward_nodes = sorted(
        (e for e in events if e.name.startswith("autograd::engine::evaluate_function")),
        key=lambda e: e.time_range.start,
    )
    last = None
    for e in backward_nodes:
        r = seq_region.get((e.fwd_thread if e.fwd_thread is not None else e.thread, e.sequence_nr))
        if r is None and e.sequence_nr < 0:
            r = last  # AccumulateGrad: its parameter belongs to the node just evaluated
        if r is not None:
            total_us[f"{r}_bwd"] += e.time_range.elapsed_us()
        last = r if e.sequence_nr >= 0 else last
    named = sum(v for k, v in total_us.items() if k != "other")
    total_us["other"] = max(0.0, step_us - named)
    step_total = max(step_us, named)
    return {k: v / 1e6 / steps for k, v in total_us.items()}, step_total / 1e6 / steps


def _child_regions(event: Any) -> list[Any]:
    """dlrm:: regions nested in `event`, outermost only."""
    out, stack = [], list(event.cpu_children)
    while stack:
        c = stack.pop()
        if c.name.startswith(_PREFIX):
            out.append(c)
        else:
            stack.extend(c.cpu_children)
    return out


def profile_training_step(
    model: nn.Module,
    batch: Any,
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    optimizer: torch.optim.Optimizer,
    *,
    steps: int = 5,
    warmup_steps: int = 2,
    trace_path: str | None = None,
) -> Breakdown:
    """Profile `steps` training steps of a DLRM on one batch and split the mean step into PARTS.

    Args:
        model: a model.dlrm.DLRM (anything with .bottom, .embeddings, .top submodules), in train mode.
        batch: a model.data.Batch already on the model's device.
        loss_fn: loss_fn(probabilities, labels) -> scalar.
        optimizer: stepped once per step (the model's weights do change).
        steps: profiled steps, averaged; warmup_steps: run first, unprofiled and untimed.
        trace_path: where to write the Chrome/Perfetto trace (JSON), or None.
    Returns:
        A Breakdown: seconds per step of each part, summing to the profiled step.
    """
    if steps < 1 or warmup_steps < 0:
        raise ValueError(f"steps={steps}, warmup_steps={warmup_steps}: need steps >= 1, warmup_steps >= 0")
    device = next(model.parameters()).device
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup_steps):
        _step(model, batch, loss_fn, optimizer, None)
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        _step(model, batch, loss_fn, optimizer, None)
    sync()
    unprofiled_s = (time.perf_counter() - t0) / steps
    activities = [torch.profiler.ProfilerActivity.CPU]
    if device.type == "cuda":
        activities.append(torch.profiler.ProfilerActivity.CUDA)
    regions = _Regions(model)
    try:
        with torch.profiler.profile(activities=activities) as prof:
            for _ in range(steps):
                with record_function(_PREFIX + "step"):
                    _step(model, batch, loss_fn, optimizer, regions)
                    sync()
    finally:
        regions.close()
    if trace_path:
        os.makedirs(os.path.dirname(os.path.abspath(trace_path)), exist_ok=True)
        prof.export_chrome_trace(trace_path)
    parts, step_s = _attribute(list(prof.events()), steps)
    notes = ["split by CPU-side time; see the trace for kernel times"] if device.type == "cuda" else []
    return Breakdown(parts, step_s, steps, unprofiled_s, trace_path, str(device), notes).validate()
