"""profiler.breakdown: structure on the tiny preset, attribution of hand-timed profiler events, and a slowed model."""

from __future__ import annotations

import json
import time

import pytest
import torch
from torch.autograd.profiler_util import FunctionEvent

import model.dlrm
from model.data import RandomData
from model.dlrm import DLRM
from model.presets import get_preset
from profiler.breakdown import PARTS, Breakdown, _attribute, profile_training_step


def _tiny(seed: int = 0):
    preset = get_preset("tiny")
    cfg = preset.config
    dlrm = DLRM(cfg, torch.Generator().manual_seed(seed))
    batch = RandomData(cfg.table_rows, cfg.num_dense, 8, 8, preset.pooling_factor).batch(0)
    return dlrm, batch


def test_breakdown_structure(tmp_path) -> None:
    dlrm, batch = _tiny()
    opt = torch.optim.SGD(dlrm.parameters(), lr=0.01)
    trace = tmp_path / "trace.json"
    bd = profile_training_step(dlrm, batch, torch.nn.BCELoss(), opt, steps=2, warmup_steps=1, trace_path=str(trace))
    assert list(bd.parts_s) == list(PARTS)
    assert all(v >= 0 for v in bd.parts_s.values())
    for part in ("embedding_fwd", "embedding_bwd", "bottom_mlp_fwd", "bottom_mlp_bwd", "top_mlp_fwd", "optimizer"):
        assert bd.parts_s[part] > 0, part
    # The step is the mean of the profiled dlrm::step regions, read here from the exported trace (µs).
    events = json.loads(trace.read_text())["traceEvents"]
    steps_us = [e["dur"] for e in events if e.get("name") == "dlrm::step" and e.get("ph") == "X"]
    assert len(steps_us) == 2
    assert bd.step_s == pytest.approx(sum(steps_us) / 2 / 1e6, rel=1e-3, abs=2e-6)
    assert not dlrm.bottom._forward_hooks and not dlrm.embeddings._forward_pre_hooks
    assert Breakdown.from_dict(json.loads(json.dumps(bd.to_dict()))) == bd
    assert "named parts cover" in bd.table()


class _Events:
    """Builds profiler FunctionEvents (times in µs) with their parent/child links, as torch.profiler reports them."""

    def __init__(self) -> None:
        self.events: list[FunctionEvent] = []

    def add(self, name: str, start: int, end: int, parent: FunctionEvent | None = None, seq: int = -1,
            thread: int = 1, fwd_thread: int | None = None) -> FunctionEvent:  # fmt: skip
        e = FunctionEvent(len(self.events), name, thread, start, end, fwd_thread=fwd_thread, sequence_nr=seq)
        if parent is not None:
            e.set_cpu_parent(parent)
            parent.append_cpu_child(e)
        self.events.append(e)
        return e


# One step by hand (µs). Every part gets a different time, so crediting any part with another's shows.
FWD = {"bottom_mlp": 100, "embedding": 150, "interaction": 80, "top_mlp": 70, "loss": 20}
BWD = {"loss": 15, "top_mlp": 60 + 7, "interaction": 90, "embedding": 120 + 13, "bottom_mlp": 150 + 5}
ZERO_GRAD, OPTIMIZER, STEP = 10, 60, 1000


def _one_step(ev: _Events, t0: int, seq0: int) -> None:
    """Forward regions with an op each (sequence numbers seq0+1..seq0+5), zero_grad, a backward on another
    thread that evaluates the nodes in reverse (AccumulateGrad after some), the optimizer, and 40 µs in none."""
    step = ev.add("dlrm::step", t0, t0 + STEP)
    t = t0
    for i, (region, dur) in enumerate(FWD.items()):
        r = ev.add(f"dlrm::{region}", t, t + dur, step)
        ev.add("aten::op", t + 2, t + dur - 2, r, seq=seq0 + i + 1)  # the op whose backward node has its number
        ev.add("aten::view", t + dur - 2, t + dur - 1, r)  # no sequence number, no node
        t += dur
    ev.add("dlrm::zero_grad", t, t + ZERO_GRAD, step)
    t += ZERO_GRAD
    backward = ev.add("dlrm::backward", t, t + 470, step)
    node_us = [("loss", 15, None), ("top_mlp", 60, 7), ("interaction", 90, None), ("embedding", 120, 13),
               ("bottom_mlp", 150, 5)]  # fmt: skip
    seq_of = {region: seq0 + i + 1 for i, region in enumerate(FWD)}
    for region, dur, accumulate in node_us:
        node = ev.add("autograd::engine::evaluate_function: XBackward0", t, t + dur, backward, seq=seq_of[region],
                      thread=2, fwd_thread=1)  # fmt: skip
        ev.add("XBackward0", t + 1, t + dur - 1, node, seq=seq_of[region], thread=2, fwd_thread=1)
        t += dur
        if accumulate:
            ev.add("autograd::engine::evaluate_function: torch::autograd::AccumulateGrad", t, t + accumulate,
                   backward, thread=2)  # fmt: skip
            t += accumulate
    t += 10  # 10 µs of the backward region outside any node
    ev.add("dlrm::optimizer", t, t + OPTIMIZER, step)


def test_attribute_credits_each_part_with_its_own_time() -> None:
    ev = _Events()
    _one_step(ev, 0, 0)
    _one_step(ev, 5000, 100)  # a second step, identical: the parts are means per step
    parts, step_s = _attribute(ev.events, steps=2)
    expected = {f"{r}_fwd": us for r, us in FWD.items()} | {f"{r}_bwd": us for r, us in BWD.items()}
    expected |= {"zero_grad": ZERO_GRAD, "optimizer": OPTIMIZER}
    expected["other"] = 40 + 10  # after the optimizer, and the backward's time outside its nodes
    assert STEP == sum(expected.values())  # the hand-set step is fully accounted for
    assert list(parts) == list(PARTS)
    assert parts == pytest.approx({k: v / 1e6 for k, v in expected.items()}, rel=1e-12, abs=1e-15)
    assert step_s == pytest.approx(STEP / 1e6)


class _Slow(torch.autograd.Function):
    """Identity that sleeps `s` seconds in forward and in backward: a part made slow by a known amount."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, s: float) -> torch.Tensor:
        ctx.s = s if torch.autograd._profiler_enabled() else 0.0  # only the profiled steps are slowed
        time.sleep(ctx.s)
        return x.view_as(x)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        time.sleep(ctx.s)
        return g, None


def test_a_slowed_part_gets_its_own_sleep_forward_and_backward(monkeypatch) -> None:
    """Each part sleeps a different time inside its own region, forward and backward; each part's row must
    hold at least its own sleep. A sleep lasts at least as long as asked, so this bound holds on any host."""
    dlrm, batch = _tiny()
    sleep_s = {"bottom_mlp": 0.010, "embedding": 0.030, "interaction": 0.060, "top_mlp": 0.100}  # gaps >= 20 ms

    def slowed(fn, region: str, after: bool):
        def wrapped(*args, **kw):
            if after:
                return _Slow.apply(fn(*args, **kw), sleep_s[region])
            return fn(_Slow.apply(args[0], sleep_s[region]), *args[1:], **kw)

        return wrapped

    monkeypatch.setattr(dlrm.bottom, "forward", slowed(dlrm.bottom.forward, "bottom_mlp", after=True))
    monkeypatch.setattr(dlrm.embeddings, "forward", slowed(dlrm.embeddings.forward, "embedding", after=True))
    monkeypatch.setattr(model.dlrm, "interact", slowed(model.dlrm.interact, "interaction", after=True))
    monkeypatch.setattr(dlrm.top, "forward", slowed(dlrm.top.forward, "top_mlp", after=False))
    opt = torch.optim.SGD(dlrm.parameters(), lr=0.01)
    bd = profile_training_step(dlrm, batch, torch.nn.BCELoss(), opt, steps=1, warmup_steps=3)
    for region, s in sleep_s.items():
        assert bd.parts_s[f"{region}_fwd"] >= s, (region, bd.parts_s)
        assert bd.parts_s[f"{region}_bwd"] >= s, (region, bd.parts_s)
