"""profiler.breakdown on the tiny preset: structure only (every part, rows sum to the step, trace, hooks gone)."""

from __future__ import annotations

import json

import pytest
import torch

from model.data import RandomData
from model.dlrm import DLRM
from model.presets import get_preset
from profiler.breakdown import PARTS, Breakdown, profile_training_step


def test_breakdown_structure(tmp_path) -> None:
    preset = get_preset("tiny")
    cfg = preset.config
    model = DLRM(cfg, torch.Generator().manual_seed(0))
    batch = RandomData(cfg.table_rows, cfg.num_dense, 8, 8, preset.pooling_factor).batch(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    trace = tmp_path / "trace.json"
    bd = profile_training_step(model, batch, torch.nn.BCELoss(), opt, steps=2, warmup_steps=1, trace_path=str(trace))
    assert list(bd.parts_s) == list(PARTS)
    assert sum(bd.parts_s.values()) == pytest.approx(bd.step_s, rel=1e-9)
    assert all(v >= 0 for v in bd.parts_s.values())
    for part in ("embedding_fwd", "embedding_bwd", "bottom_mlp_fwd", "bottom_mlp_bwd", "top_mlp_fwd", "optimizer"):
        assert bd.parts_s[part] > 0, part
    assert "traceEvents" in json.loads(trace.read_text())
    assert not model.bottom._forward_hooks and not model.embeddings._forward_pre_hooks
    assert Breakdown.from_dict(json.loads(json.dumps(bd.to_dict()))) == bd
    assert "named parts cover" in bd.table()
