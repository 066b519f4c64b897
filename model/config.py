"""The DLRM architecture as a frozen, validated config; sizes parsed once from reference-style strings.

Letters: B batch, T tables, E rows per table, D embedding dim, L pooling factor.
"""

from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass, fields
from enum import StrEnum, unique
from typing import Any, Self

__all__ = ["DLRMConfig", "EmbeddingGrad", "Interaction", "parse_sizes"]


@unique
class EmbeddingGrad(StrEnum):
    SPARSE = "sparse"  # a sparse COO gradient, applied by the optimizer (the reference's way)
    DENSE = "dense"  # a dense (E, D) gradient: ~10x slower on a 1M-row table
    FUSED = "fused"  # SGD applied inside the backward, no gradient built (FBGEMM's way)


@unique
class Interaction(StrEnum):
    DOT = "dot"
    CAT = "cat"


def parse_sizes(text: str, flag: str) -> tuple[int, ...]:
    """Parse "13-512-256" (or "100000x26" for 26 equal entries) into ints; ValueError names `flag`."""
    text = text.strip()
    if "x" in text and "-" not in text:
        value, _, count = text.partition("x")
        parts = [value] * _positive(count, flag, text)
    else:
        parts = text.split("-")
    return tuple(_positive(p, flag, text) for p in parts)


def _positive(part: str, flag: str, text: str) -> int:
    try:
        value = int(float(part)) if "e" in part.lower() else int(part)
    except ValueError:
        raise ValueError(f"{flag}: {part!r} in {text!r} is not an integer") from None
    if value < 1:
        raise ValueError(f"{flag}: sizes must be positive, got {value} in {text!r}")
    return value


@dataclass(frozen=True)
class DLRMConfig:
    """DLRM architecture (Naumov et al. 2019). Defaults are the reference implementation's."""

    embedding_dim: int = 2  # D, --arch-sparse-feature-size
    table_rows: tuple[int, ...] = (4, 3, 2)  # E of each of the T tables, --arch-embedding-size
    bottom_mlp: tuple[int, ...] = (4, 3, 2)  # dense features first, D last, --arch-mlp-bot
    top_mlp: tuple[int, ...] = (4, 2, 1)  # layers after the interaction, --arch-mlp-top
    interaction: Interaction = Interaction.DOT
    interaction_itself: bool = False  # dot: include each vector's dot with itself
    kernel: str = "torch"  # embedding-bag implementation, by registry name
    embedding_grad: EmbeddingGrad = EmbeddingGrad.SPARSE  # as the reference

    @property
    def num_tables(self) -> int:
        return len(self.table_rows)

    @property
    def num_dense(self) -> int:
        return self.bottom_mlp[0]

    @property
    def interaction_width(self) -> int:
        """Width of the top MLP's input: interaction output concatenated with the bottom MLP output."""
        n = self.num_tables + 1  # vectors interacting: the bottom output and one per table
        if self.interaction == Interaction.CAT:
            return n * self.embedding_dim
        pairs = n * (n + 1) // 2 if self.interaction_itself else n * (n - 1) // 2
        return pairs + self.embedding_dim

    @property
    def top_mlp_full(self) -> tuple[int, ...]:
        return (self.interaction_width, *self.top_mlp)

    def validate(self) -> Self:
        if self.embedding_dim < 1:
            raise ValueError(f"--arch-sparse-feature-size must be >= 1, got {self.embedding_dim}")
        if not self.table_rows or min(self.table_rows) < 1:
            raise ValueError(f"--arch-embedding-size needs >= 1 table of >= 1 row, got {self.table_rows}")
        if len(self.bottom_mlp) < 2:
            raise ValueError(f"--arch-mlp-bot needs an input and an output size, got {self.bottom_mlp}")
        if self.bottom_mlp[-1] != self.embedding_dim:
            raise ValueError(
                f"--arch-mlp-bot ends in {self.bottom_mlp[-1]} but --arch-sparse-feature-size is "
                f"{self.embedding_dim}: the bottom MLP's output must equal the embedding dim "
                f"(end --arch-mlp-bot in {self.embedding_dim}, or set --arch-sparse-feature-size="
                f"{self.bottom_mlp[-1]})"
            )
        if self.top_mlp[-1] != 1:
            raise ValueError(f"--arch-mlp-top must end in 1 (the click probability), got {self.top_mlp}")
        if self.interaction not in tuple(Interaction):
            raise ValueError(f"--arch-interaction-op {self.interaction!r}: allowed: dot, cat")
        return self

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["interaction"] = str(self.interaction)
        d["embedding_grad"] = str(self.embedding_grad)
        d.update(
            num_tables=self.num_tables,
            top_mlp_input=self.interaction_width,
            num_parameters=self.num_parameters(),
            table_bytes=self.table_bytes(),
        )
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Self:
        names = {f.name for f in fields(cls)}
        kw = {k: v for k, v in d.items() if k in names}
        for k in ("table_rows", "bottom_mlp", "top_mlp"):
            if k in kw:
                kw[k] = tuple(int(v) for v in kw[k])
        if "interaction" in kw:
            kw["interaction"] = Interaction(kw["interaction"])
        if "embedding_grad" in kw:
            kw["embedding_grad"] = EmbeddingGrad(kw["embedding_grad"])
        return cls(**kw).validate()

    def table_bytes(self, bytes_per_value: int = 4) -> int:
        return sum(self.table_rows) * self.embedding_dim * bytes_per_value

    def num_parameters(self) -> int:
        mlp = 0
        for layers in (self.bottom_mlp, self.top_mlp_full):
            mlp += sum(n_in * n_out + n_out for n_in, n_out in itertools.pairwise(layers))
        return sum(self.table_rows) * self.embedding_dim + mlp
