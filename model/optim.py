"""Optimizer pieces: SGD as the reference trains DLRM (no momentum), with a parallel path for sparse
embedding gradients; Adagrad (row-wise on tables too); a tables/MLPs split; the reference's learning-rate
schedule; an exponential moving average of the weights; and make_optimizer, which picks among them."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import torch

from kernels.update import adagrad_rows, scatter_add_rows
from model.config import DLRMConfig, EmbeddingGrad

__all__ = [
    "SGD",
    "Adagrad",
    "Frozen",
    "LRSchedule",
    "SplitOptimizer",
    "WeightEMA",
    "check_optimizers",
    "make_optimizer",
    "param_groups",
]

_MIN_DECAYED_LR = 1e-7  # the reference's floor while (and after) the rate decays


class SGD(torch.optim.Optimizer):
    """p -= lr * (grad + weight_decay * p). Dense gradients go through torch's foreach kernels;
    sparse COO ones (embedding tables) through `scatter_add_rows`, which need not coalesce them.

    Weight decay on a sparse gradient is lazy: only the rows the step touched decay (once each),
    as sparse optimizers do, so a step costs the batch's rows, not the table's.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], lr: float, weight_decay: float = 0.0):
        if lr < 0:
            raise ValueError(f"learning rate must be >= 0, got {lr}")
        if weight_decay < 0:
            raise ValueError(f"weight decay must be >= 0, got {weight_decay}")
        super().__init__(params, {"lr": lr, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            lr, wd = group["lr"], group["weight_decay"]
            dense_p, dense_g = [], []
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                if g.is_sparse and g.sparse_dim() == 1 and g.dense_dim() == 1:
                    if wd:
                        rows = g._indices()[0].unique()
                        p.index_copy_(0, rows, p.index_select(0, rows) * (1.0 - lr * wd))
                    scatter_add_rows(p, g._indices()[0], g._values(), -lr)
                elif g.is_sparse:
                    if wd:
                        g = g.coalesce()
                        rows = g._indices()[0]
                        p.index_copy_(0, rows, p.index_select(0, rows) * (1.0 - lr * wd))
                    p.add_(g, alpha=-lr)
                else:
                    dense_p.append(p)
                    dense_g.append(g)
            if dense_p:
                if wd:
                    torch._foreach_mul_(dense_p, 1.0 - lr * wd)
                torch._foreach_add_(dense_p, dense_g, alpha=-lr)
        return None


class Adagrad(torch.optim.Optimizer):
    """torch.optim.Adagrad's update (lr_decay 0, no initial accumulator), or with `row_wise_tables`
    FBGEMM's exact row-wise Adagrad on the tables (the reference's `--optimizer rwsadagrad`).

    Row-wise: a row's one accumulator adds the mean of its squared gradient and the whole row steps
    by -lr * g / (sqrt(accumulator) + eps), one float of state per row instead of D; it applies to
    sparse gradients and to groups marked `tables` (whatever form their gradient takes). Either
    way, duplicate rows of a sparse gradient are summed first (the update is not linear in g), and
    a sparse gradient on a CPU table is applied by one compiled pass (kernels.update.adagrad_rows)
    instead of torch's sort (coalesce) and gathers.
    """

    def __init__(self, params: Iterable[Any], lr: float, eps: float = 1e-10, row_wise_tables: bool = False):
        if lr < 0:
            raise ValueError(f"learning rate must be >= 0, got {lr}")
        super().__init__(params, {"lr": lr, "eps": eps, "tables": False})
        self.row_wise_tables = row_wise_tables

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for group in self.param_groups:
            lr, eps = group["lr"], group["eps"]
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                row_wise = self.row_wise_tables and (g.is_sparse or group["tables"])
                if row_wise and p.dim() != 2:
                    raise ValueError(f"row-wise Adagrad needs a 2-D table, got a parameter of shape {tuple(p.shape)}")
                state = self.state[p]
                if "sum" not in state:
                    shape = p.shape[:1] if row_wise else p.shape
                    state["sum"] = torch.zeros(shape, dtype=p.dtype, device=p.device)
                acc = state["sum"]
                if g.is_sparse and g.sparse_dim() == 1 and adagrad_rows(p, acc, g._indices()[0], g._values(), lr, eps):
                    continue
                if g.is_sparse:
                    g = g.coalesce()
                    rows, values = g.indices()[0], g.values()
                    acc.index_add_(0, rows, values.square().mean(1) if row_wise else values.square())
                    denom = acc[rows].sqrt() + eps
                    p.index_add_(0, rows, values / (denom.unsqueeze(1) if row_wise else denom), alpha=-lr)
                elif row_wise:
                    acc.add_(g.square().mean(1))
                    p.addcdiv_(g, (acc.sqrt() + eps).unsqueeze(1), value=-lr)
                else:
                    acc.addcmul_(g, g)
                    p.addcdiv_(g, acc.sqrt().add_(eps), value=-lr)
        return None


class SplitOptimizer(torch.optim.Optimizer):
    """The tables' optimizer and the MLPs', stepped as one (--embedding-optimizer).

    As TorchRec and FBGEMM give embedding tables an optimizer of their own: sparse, rarely seen
    rows and dense, always-updated MLP weights need not want the same update rule. param_groups
    are the two optimizers' own group dicts (tables first), so a schedule's rates reach both.
    """

    def __init__(self, tables: torch.optim.Optimizer, rest: torch.optim.Optimizer):
        super().__init__([p for opt in (tables, rest) for g in opt.param_groups for p in g["params"]], {})
        self.parts = (tables, rest)
        self.param_groups = [*tables.param_groups, *rest.param_groups]

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[override]
        for opt in self.parts:
            opt.step()
        return None

    def state_dict(self) -> dict[str, Any]:
        return {"parts": [opt.state_dict() for opt in self.parts]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        parts = state_dict.get("parts") if isinstance(state_dict, dict) else None
        if not isinstance(parts, list) or len(parts) != len(self.parts):
            raise ValueError("the saved optimizer state is not a split (tables + MLPs) optimizer's")
        for opt, state in zip(self.parts, parts, strict=True):
            opt.load_state_dict(state)
        self.param_groups = [*self.parts[0].param_groups, *self.parts[1].param_groups]  # loading made new dicts


class Frozen(torch.optim.Optimizer):
    """--embedding-optimizer none: the tables keep their starting values (e.g. --embedding-init lr's).

    Constructing it turns `requires_grad` off on its parameters, so the backward computes no gradient
    for them (and no sparse gradient is built); step() does nothing. Its state is empty, so a resumed
    run (model.checkpoint) builds it afresh and loads nothing but its rate. No weight decay either.
    """

    def __init__(self, params: Iterable[Any], lr: float) -> None:
        super().__init__(params, {"lr": lr})
        for group in self.param_groups:
            for p in group["params"]:
                p.requires_grad_(False)

    def step(self, closure: Callable[[], float] | None = None) -> None:  # type: ignore[override]
        return None


@dataclass(frozen=True)
class LRSchedule:
    """The reference's LRPolicyScheduler (--lr-num-warmup-steps, --lr-decay-start-step, --lr-num-decay-steps).

    Steps count optimizer updates from 1. With W warmup steps, D the decay start and N decay steps:
    step s < W runs at lr * s / W; D <= s < D + N at lr * ((N - (s - D)) / N) ** 2 (never under 1e-7);
    after that the last decayed rate, lr / N**2, holds; every other step runs at lr. All zero: constant lr.
    One difference: between warmup and decay the reference holds its last warmup rate, lr * (W - 1) / W
    (and fails when W <= 1 < D); here the rate there is lr.
    """

    num_warmup_steps: int = 0
    decay_start_step: int = 0
    num_decay_steps: int = 0  # 0: no decay

    def validate(self) -> LRSchedule:
        for name in ("num_warmup_steps", "decay_start_step", "num_decay_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"--lr-{name.replace('_', '-')} must be >= 0, got {getattr(self, name)}")
        if self.num_decay_steps and self.decay_start_step < self.num_warmup_steps:
            raise ValueError(
                f"--lr-decay-start-step {self.decay_start_step} is inside the warmup "
                f"(--lr-num-warmup-steps {self.num_warmup_steps}): the warmup must finish before the decay starts"
            )
        return self

    @property
    def constant(self) -> bool:
        return self.num_warmup_steps <= 1 and self.num_decay_steps == 0

    def lr(self, base_lr: float, step: int) -> float:
        """The learning rate of optimizer step `step` (1 = the first update) for a base rate `base_lr`."""
        W, D, N = self.num_warmup_steps, self.decay_start_step, self.num_decay_steps
        if step < W:
            return base_lr * step / W
        if N and step >= D:
            left = max(N - (step - D), 1)  # past the decay: frozen at its last value
            return max(_MIN_DECAYED_LR, base_lr * (left / N) ** 2)
        return base_lr


class WeightEMA:
    """An exponential moving average of every parameter, embedding tables included, for evaluation:
    after each update, avg = decay * avg + (1 - decay) * p, starting from the initial weights.

    Each update reads and writes every row of every table, so on big tables it costs a dense pass.
    """

    def __init__(self, params: Iterable[torch.nn.Parameter], decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"--ema-decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.params = list(params)
        self.average = [p.detach().clone() for p in self.params]

    @torch.no_grad()
    def update(self) -> None:
        torch._foreach_lerp_(self.average, [p.detach() for p in self.params], 1.0 - self.decay)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """Within the block the parameters hold the averages; the trained weights come back after."""
        with torch.no_grad():
            saved = [p.detach().clone() for p in self.params]
            torch._foreach_copy_([p.data for p in self.params], self.average)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_([p.data for p in self.params], saved)


def check_optimizers(name: str, embedding: str, embedding_grad: EmbeddingGrad | str, weight_decay: float) -> str:
    """The tables' optimizer (`embedding` or `name`); ValueError or NotImplementedError for a combination
    make_optimizer cannot build. `dlrmbench train` calls it before any data is read or model fitted."""
    embedding_grad = EmbeddingGrad(embedding_grad)
    for flag, opt, allowed in (("--optimizer", name, _OPTIMIZERS), ("--embedding-optimizer", embedding,
                                                                         (*_OPTIMIZERS, "none"))):  # fmt: skip
        if opt and opt not in allowed:
            raise ValueError(f"{flag} {opt!r}: allowed: {', '.join(allowed)}")
    table_opt = embedding or name
    if embedding_grad == EmbeddingGrad.FUSED:
        if weight_decay:
            raise NotImplementedError("--weight-decay with --embedding-grad fused: the fused update has no decay term")
        if table_opt == "none":
            raise NotImplementedError("--embedding-optimizer none with --embedding-grad fused: a fused update steps "
                                      "the tables inside the backward; frozen tables take --embedding-grad sparse "
                                      "(the default) or dense")  # fmt: skip
        if table_opt != "sgd":
            flag = "--embedding-optimizer" if embedding else "--optimizer"
            raise NotImplementedError(f"{flag} {table_opt} with --embedding-grad fused: fused updates are SGD only")
    if weight_decay and (name != "sgd" or table_opt not in ("sgd", "none")):  # none: the MLPs decay, the tables not
        raise NotImplementedError("--weight-decay is implemented for --optimizer sgd only (tables and MLPs)")
    return table_opt


def make_optimizer(
    name: str,
    params: Iterable[Any],
    lr: float,
    config: DLRMConfig,
    weight_decay: float = 0.0,
    embedding: str = "",
) -> torch.optim.Optimizer:
    """SGD or Adagrad (ours, both with parallel sparse updates); rwsadagrad is Adagrad row-wise on
    the tables (groups marked `tables`, see model.optim.Adagrad). `embedding`, when it names another
    optimizer, steps the tables (the first of `params`, param_groups' layout) and `name` the rest."""
    table_opt = check_optimizers(name, embedding, config.embedding_grad, weight_decay)
    if table_opt == name:
        return _optimizer(name, params, lr, weight_decay)
    groups = list(params)
    if not (groups and isinstance(groups[0], dict) and groups[0].get("tables")):
        raise ValueError("--embedding-optimizer: the parameters must come as param_groups lays them out, tables first")
    tables = Frozen(groups[:1], lr) if table_opt == "none" else _optimizer(table_opt, groups[:1], lr, weight_decay)
    return SplitOptimizer(tables, _optimizer(name, groups[1:], lr, weight_decay))


_OPTIMIZERS = ("sgd", "adagrad", "rwsadagrad")


def _optimizer(name: str, params: Iterable[Any], lr: float, weight_decay: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return SGD(params, lr=lr, weight_decay=weight_decay)
    return Adagrad(params, lr=lr, row_wise_tables=name == "rwsadagrad")


def param_groups(model: torch.nn.Module, table_lr: float) -> list[dict[str, Any]]:
    """The tables (their own rate; marked `tables`, which model.optim.Adagrad reads) and everything else."""
    tables = list(model.embeddings.parameters())  # type: ignore[union-attr]
    ids = {id(p) for p in tables}
    return [
        {"params": tables, "lr": table_lr, "tables": True},
        {"params": [p for p in model.parameters() if id(p) not in ids]},
    ]
