"""Named DLRM configurations from the literature, scaled down only when asked and said so."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from model.config import DLRMConfig

__all__ = ["CRITEO_SAMPLE_FLAGS", "MEMORY_FRACTION", "PRESETS", "Preset", "get_preset", "scale_rows", "scale_to_fit"]

MEMORY_FRACTION = 0.8  # of available memory the tables may take; the rest is for the MLPs, batches and the OS

# Criteo Kaggle (Display Advertising Challenge) rows per categorical feature, as counted
# by the reference's preprocessing of train.txt.
_KAGGLE_ROWS = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)  # fmt: skip
# Criteo Terabyte rows per feature with ids capped at 40M, as in MLPerf's DLRM benchmark.
_TERABYTE_40M_ROWS = (
    39884406, 39043, 17289, 7420, 20263, 3, 7120, 1543, 63, 38532951, 2953546, 403346, 10,
    2208, 11938, 155, 4, 976, 14, 39979771, 25641295, 39664984, 585935, 12972, 108, 36,
)  # fmt: skip


@dataclass(frozen=True)
class Preset:
    name: str
    config: DLRMConfig
    pooling_factor: int  # L, lookups per table per sample (--num-indices-per-lookup)
    source: str


# The README's Criteo command less its data and output flags: the settings for the bundled 8000-row
# sample, chosen on validation rows (issue #6). tests/test_real_data.py and scripts/criteo_cv.py run them.
CRITEO_SAMPLE_FLAGS: tuple[str, ...] = (
    "--min-category-count=1", "--arch-sparse-feature-size=8", "--arch-mlp-bot=13-128-64-32-8",
    "--arch-mlp-top=64-1", "--arch-interaction-op=cat", "--mini-batch-size=256", "--optimizer=adagrad",
    "--learning-rate=0.001", "--embedding-init=lr", "--embedding-optimizer=none", "--nepochs=20", "--data-shuffle",
)  # fmt: skip

PRESETS: dict[str, Preset] = {
    p.name: p
    for p in (
        Preset(
            "tiny",
            DLRMConfig(4, (10, 7, 5), (5, 8, 4), (8, 1)),
            3,
            "for tests: three small tables, every code path in milliseconds",
        ),
        Preset(
            "demo",
            DLRMConfig(2, (4, 3, 2), (4, 3, 2), (4, 2, 1)),
            10,
            "the reference README's demo (its default flags)",
        ),
        Preset(
            "kaggle",
            DLRMConfig(16, _KAGGLE_ROWS, (13, 512, 256, 64, 16), (512, 256, 1)),
            1,
            "Criteo Kaggle shape: 26 tables (real row counts), D=16, bottom 13-512-256-64-16, "
            "top 512-256-1, as the reference's Kaggle benchmark script",
        ),
        Preset(
            "rm1",
            DLRMConfig(32, (4_000_000,) * 8, (128, 64, 32), (256, 64, 1)),
            80,
            "DeepRecSys RM1 (Gupta et al. 2020): 8 tables x 4M rows, D=32, 80 lookups",
        ),
        Preset(
            "rm2",
            DLRMConfig(64, (500_000,) * 32, (256, 128, 64), (128, 64, 1)),
            120,
            "DeepRecSys RM2: 32 tables x 500k rows, D=64, 120 lookups",
        ),
        Preset(
            "rm3",
            DLRMConfig(32, (2_000_000,) * 10, (2560, 1024, 256, 32), (512, 256, 1)),
            20,
            "DeepRecSys RM3: 10 tables x 2M rows, D=32, 20 lookups",
        ),
        Preset(
            "mlperf",
            DLRMConfig(128, _TERABYTE_40M_ROWS, (13, 512, 256, 128), (1024, 1024, 512, 256, 1)),
            1,
            "MLPerf DLRM (Criteo Terabyte, ids capped at 40M rows), D=128; about 90 GiB of tables",
        ),
    )
}


def get_preset(name: str) -> Preset:
    try:
        return PRESETS[name]
    except KeyError:
        raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}") from None


def scale_rows(config: DLRMConfig, scale: float) -> DLRMConfig:
    """Divide every table's rows by `scale` (rounding up, at least one row)."""
    if scale < 1:
        raise ValueError(f"--scale must be >= 1 (it divides table rows), got {scale}")
    if scale == 1:
        return config
    return replace(config, table_rows=tuple(max(1, math.ceil(e / scale)) for e in config.table_rows))


def scale_to_fit(config: DLRMConfig, available_bytes: int, fraction: float = MEMORY_FRACTION) -> int:
    """The smallest whole --scale whose tables take at most `fraction` of `available_bytes` (1: they fit as is).

    `dlrmbench presets` and `dlrmbench train`'s refusal both suggest this one number. It stops at the
    largest table's row count (every table one row), which may still not fit.
    """
    budget = fraction * available_bytes
    scale = max(1, math.ceil(config.table_bytes() / budget))  # a lower bound: scale_rows rounds rows up
    while scale < max(config.table_rows) and scale_rows(config, scale).table_bytes() > budget:
        scale += 1
    return scale
