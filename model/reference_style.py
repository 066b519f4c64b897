"""DLRM computed the way the reference dlrm_s_pytorch.py computes it, as an in-run baseline.

Same model and weights as model.dlrm.DLRM, with the reference's structure: one
nn.EmbeddingBag (sparse=True) per table called in a Python loop, the interaction's lower
triangle taken by advanced indexing Z[:, li, lj], and torch.optim.SGD applying the T
sparse gradients. `dlrmbench bench dlrm --reference-style` times it beside our kernels on
the same batches, so the comparison holds whatever the shared machine's speed that minute.
"""

from __future__ import annotations

import torch
from torch import nn

from model.config import Interaction
from model.dlrm import DLRM

__all__ = ["ReferenceStyleDLRM"]


class ReferenceStyleDLRM(nn.Module):
    """forward(dense, indices, offsets) like DLRM's; built from (a copy of) a DLRM's weights."""

    def __init__(self, model: DLRM):
        super().__init__()
        cfg = model.config
        self.config = cfg
        self.bottom = _copy(model.bottom)
        self.top = _copy(model.top)
        self.emb_l = nn.ModuleList()
        start = 0
        for rows in cfg.table_rows:
            bag = nn.EmbeddingBag(rows, cfg.embedding_dim, mode="sum", sparse=True)
            with torch.no_grad():
                bag.weight.copy_(model.embeddings.weight[start : start + rows])
            self.emb_l.append(bag)
            start += rows
        n = cfg.num_tables + 1
        offset = 1 if cfg.interaction_itself else 0
        self.li = torch.tensor([i for i in range(n) for j in range(i + offset)])
        self.lj = torch.tensor([j for i in range(n) for j in range(i + offset)])

    def forward(self, dense: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        B = dense.shape[0]
        x = self.bottom(dense)
        ly = []
        for t, bag in enumerate(self.emb_l):  # the reference's per-table loop
            offs = offsets[t * B : (t + 1) * B + 1]
            idx = indices[offs[0] : offs[-1]]
            ly.append(bag(idx, offs[:-1] - offs[0]))
        if self.config.interaction == Interaction.CAT:
            z = torch.cat([x, *ly], dim=1)
        else:
            T = torch.cat([x, *ly], dim=1).view((B, -1, self.config.embedding_dim))
            Z = torch.bmm(T, torch.transpose(T, 1, 2))
            z = torch.cat([x, Z[:, self.li, self.lj]], dim=1)
        return self.top(z).squeeze(1)


def _copy(seq: nn.Sequential) -> nn.Sequential:
    import copy

    return copy.deepcopy(seq)
