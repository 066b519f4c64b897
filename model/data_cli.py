"""The data flags of `dlrmbench train` and the data sources they build: random, synthetic with locality, Criteo."""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from model.config import DLRMConfig
from model.criteo import CategoryIndex, CriteoData, split_rows
from model.criteo_cache import BadLinePolicy, CriteoCache, default_cache_dir, preprocess
from model.criteo_format import NUM_CAT, NUM_DENSE
from model.data import Batch, RandomData
from model.synthetic import SyntheticData, parse_locality

__all__ = ["DataSources", "add_data_arguments", "build_sources", "criteo_flags", "criteo_sources", "fit_tables"]

_GENERATIONS = ("random", "synthetic", "dataset")


@dataclass(frozen=True)
class DataSources:
    train: Iterable[Batch]
    test: Iterable[Batch] | None
    table_rows: tuple[int, ...] | None  # what the data needs (dataset only)
    notes: list[str] = field(default_factory=list)
    record: dict[str, Any] = field(default_factory=dict)  # for --json-out
    pooling_factor: int | None = None  # L when the data fixes it (Criteo: one lookup per bag), else the flag's


def add_data_arguments(p: argparse.ArgumentParser, flag_bool: Any) -> None:
    """Add the data flag group to `p`; `flag_bool(group, name, help)` adds a reference-style boolean."""
    data = p.add_argument_group("data")
    data.add_argument("--data-generation", default="random", choices=_GENERATIONS,
                      help="random (uniform rows), synthetic (rows with locality, see --locality) or dataset "
                           "(Criteo, see --raw-data-file)")  # fmt: skip
    data.add_argument("--data-size", type=int, default=1, help="samples in the random / synthetic data set")
    data.add_argument("--mini-batch-size", type=int, default=1)
    data.add_argument("--num-batches", type=int, default=0, help="batches per epoch (0: the whole data set)")
    data.add_argument("--num-indices-per-lookup", type=int, help="pooling factor L (default 10, or the preset's)")
    flag_bool(data, "--num-indices-per-lookup-fixed", "every bag has exactly L lookups")
    flag_bool(data, "--round-targets", "labels in {0, 1} instead of U[0, 1)")
    data.add_argument("--numpy-rand-seed", type=int, default=123, help="seed of the data and the weights")

    syn = p.add_argument_group("synthetic data with locality (--data-generation synthetic)")
    syn.add_argument("--locality", default="",
                     help="per-table row distribution: uniform, zipf[:S] (default S 1.15), or sd:PATH (a "
                          "stack-distance profile; {t} in PATH becomes the table index); one spec for all "
                          "tables or a comma-separated spec per table")  # fmt: skip
    syn.add_argument(
        "--data-trace-file",
        default="",
        help="the reference's flag: a stack-distance profile for every table (= --locality sd:PATH)",
    )

    ds = p.add_argument_group("Criteo data (--data-generation dataset)")
    ds.add_argument("--data-set", default="kaggle", choices=("kaggle", "terabyte"),
                    help="which Criteo release; both use the same raw format (one file: Kaggle's train.txt or "
                         "a Terabyte day_N)")  # fmt: skip
    ds.add_argument("--raw-data-file", default="", help="raw TSV (or headered CSV), plain or .gz")
    ds.add_argument("--test-raw-data-file", default="", help="held-out rows in a separate file")
    ds.add_argument(
        "--test-fraction",
        type=float,
        default=0.0,
        help="hold out the last F of --raw-data-file's rows as the test split",
    )
    ds.add_argument("--max-ind-range", type=int, default=-1,
                    help="rows per table: categorical value mod N (default: a vocabulary of the training rows, "
                         "plus one row for empty and one for unseen)")  # fmt: skip
    ds.add_argument(
        "--min-category-count",
        type=int,
        default=1,
        help="vocabulary: values seen fewer times in training share the unseen row",
    )
    ds.add_argument("--processed-data-file", default="",
                    help="cache folder for the preprocessed data (default: beside the raw file, or "
                         "~/.cache/dlrmbench when that folder is read-only)")  # fmt: skip
    ds.add_argument(
        "--on-bad-line",
        default="error",
        choices=[str(x) for x in BadLinePolicy],
        help="error: stop at the first bad line, showing it; skip: drop bad lines and count them",
    )
    flag_bool(ds, "--data-shuffle", "visit the training batches in a new order each epoch")
    ds.add_argument("--test-mini-batch-size", type=int, default=-1, help="default: --mini-batch-size")
    ds.add_argument(
        "--test-freq",
        type=int,
        default=-1,
        help="evaluate on the test split every N batches of an epoch and at each epoch's end, as the reference "
        "(default: only at the end of the run, which is always evaluated)",
    )
    ds.add_argument(
        "--test-predictions-out",
        default="",
        metavar="PATH",
        help="write the final evaluation's labels and click probabilities here (CSV label,probability)",
    )


_CRITEO_FLAGS = ("test_raw_data_file", "test_fraction", "processed_data_file", "on_bad_line", "min_category_count",
                 "max_ind_range")  # fmt: skip


def criteo_flags(args: argparse.Namespace) -> dict[str, Any]:
    """criteo_sources' file, split and vocabulary arguments from the flags of the same names."""
    return {"raw_data_file": args.raw_data_file, **{k: getattr(args, k) for k in _CRITEO_FLAGS}}


def _criteo(args: argparse.Namespace) -> DataSources:
    return criteo_sources(
        **criteo_flags(args),
        batch_size=args.mini_batch_size,
        test_batch_size=args.test_mini_batch_size if args.test_mini_batch_size > 0 else args.mini_batch_size,
        shuffle=bool(args.data_shuffle),
        seed=args.numpy_rand_seed,
        data_set=args.data_set,
    )


def criteo_sources(
    raw_data_file: str,
    *,
    test_raw_data_file: str = "",
    test_fraction: float = 0.0,
    processed_data_file: str = "",
    on_bad_line: str = "error",
    min_category_count: int = 1,
    max_ind_range: int = -1,
    batch_size: int = 128,
    test_batch_size: int = 1024,
    shuffle: bool = False,
    seed: int = 0,
    data_set: str = "kaggle",
) -> DataSources:
    """A Criteo file's training (and test) batches as the `dlrmbench train` flags of the same names build them."""
    if not raw_data_file:
        raise ValueError("--data-generation dataset needs --raw-data-file PATH")
    if test_raw_data_file and test_fraction:
        raise ValueError("give --test-raw-data-file or --test-fraction, not both")
    if min_category_count < 1:
        raise ValueError(f"--min-category-count must be >= 1, got {min_category_count}")
    cache_dir = Path(processed_data_file) if processed_data_file else default_cache_dir(raw_data_file)
    notes: list[str] = []
    train_cache = _open_cache(raw_data_file, cache_dir, on_bad_line, notes)
    n = len(train_cache)
    n_train = split_rows(n, test_fraction)
    if max_ind_range > 0:
        index = CategoryIndex(max_ind_range=max_ind_range)
    else:
        index = CategoryIndex(train_cache.vocabulary(n_train, min_category_count))
    train = CriteoData(train_cache, index, batch_size, 0, n_train, shuffle, seed)
    test: CriteoData | None = None
    if test_raw_data_file:
        test_dir = (cache_dir.with_name(cache_dir.name + "-test") if processed_data_file
                    else default_cache_dir(test_raw_data_file))  # fmt: skip
        test_cache = _open_cache(test_raw_data_file, test_dir, on_bad_line, notes)
        test = CriteoData(test_cache, index, test_batch_size)
    elif n_train < n:
        test = CriteoData(train_cache, index, test_batch_size, n_train, n)
    split = f", test {test.samples:,} rows" if test else ", no test split"
    notes.append(f"data: Criteo {data_set}, train {n_train:,} rows{split}; {index.describe()}")
    record = {
        "data_generation": "dataset",
        "data_set": data_set,
        "raw_data_file": raw_data_file,
        "train_rows": n_train,
        "test_rows": test.samples if test else 0,
        "cache": str(train_cache.folder),
    }
    return DataSources(train, test, index.table_rows, notes, record, pooling_factor=1)  # one value per feature


def _open_cache(path: str, folder: Path, on_bad_line: str, notes: list[str]) -> CriteoCache:
    cache, built = preprocess(path, folder, on_bad_line)
    m = cache.manifest
    verb = "preprocessed" if built else "reusing the cache of"
    notes.append(f"{verb} {path}: {m['rows']:,} samples ({m['format']}), {m['positives'] / m['rows']:.3f} "
                 f"positive, cache {cache.folder}")  # fmt: skip
    if m["bad_lines"]:
        first = m["bad_line_examples"][0]
        notes.append(f"skipped {m['bad_lines']:,} bad line(s) of {path}; first at line {first['line']}: "
                     f"{first['reason']}")  # fmt: skip
    return cache


def build_sources(args: argparse.Namespace, cfg: DLRMConfig, pooling: int) -> DataSources:
    """The training (and test) data the flags ask for.

    Args:
        args: parsed `dlrmbench train` flags.
        cfg: the model config (random / synthetic data take its table sizes).
        pooling: L.
    Returns:
        DataSources; table_rows is set when the data fixes the table sizes (Criteo).
    """
    gen = args.data_generation
    if gen != "dataset" and (args.test_raw_data_file or args.test_fraction or args.raw_data_file):
        raise ValueError("--raw-data-file, --test-raw-data-file and --test-fraction need --data-generation dataset")
    if gen != "synthetic" and (args.locality or args.data_trace_file):
        raise ValueError("--locality and --data-trace-file need --data-generation synthetic")
    if gen == "dataset":
        return _criteo(args)
    random = RandomData(
        cfg.table_rows,
        cfg.num_dense,
        args.mini_batch_size,
        max(args.data_size, args.mini_batch_size * args.num_batches),
        pooling,
        bool(args.num_indices_per_lookup_fixed),
        args.numpy_rand_seed,
        bool(args.round_targets),
    )
    if gen == "random":
        return DataSources(random, None, None, [], {"data_generation": "random"})
    if args.locality and args.data_trace_file:
        raise ValueError("give --locality or --data-trace-file, not both")
    spec = args.locality or (f"sd:{_trace_path(args.data_trace_file)}" if args.data_trace_file else "uniform")
    data = SyntheticData(random, parse_locality(spec, cfg.num_tables))
    short = data.shortfalls(args.mini_batch_size * args.num_batches if args.num_batches else None)
    if len(short) > 3:  # one line per table would bury the rest; name the first few
        short = [*short[:2], f"... and {len(short) - 2} more tables like them (give larger tables)"]
    return DataSources(data, None, None, [f"data: synthetic, {data.describe()}", *(f"note: {s}" for s in short)],
                       {"data_generation": "synthetic", "locality": spec})  # fmt: skip


def _trace_path(path: str) -> str:
    """--data-trace-file's path, `{t}` standing for the table. The reference's own convention, a `j`
    for the table (its default is ./input/dist_emb_j.log), is taken too when the file as named is
    absent: every `j` of the file's name (not its folders, as the reference does) becomes `{t}`."""
    p = Path(path)
    if "{t}" in path or p.exists() or "j" not in p.name:
        return path
    templated = p.with_name(p.name.replace("j", "{t}"))
    # only when table 0's file is there: else the error should name the path as given, not a rewritten one
    return str(templated) if Path(str(templated).replace("{t}", "0")).exists() else path


def fit_tables(
    cfg: DLRMConfig, need: tuple[int, ...], explicit: bool, given_by: str = "--arch-embedding-size"
) -> tuple[DLRMConfig, str]:
    """Table sizes for data that fixes them: the data's unless given explicitly, which must then cover it.

    Args:
        cfg: the model config so far.
        need: rows each table needs.
        explicit: whether the sizes were given (--arch-embedding-size or a loaded model).
        given_by: what gave them, for the message when they are too small.
    Returns:
        (config with the sizes, a note).
    """
    if cfg.num_dense != NUM_DENSE:
        raise ValueError(
            f"--arch-mlp-bot starts with {cfg.num_dense} but Criteo has {NUM_DENSE} dense features: "
            f"start it with {NUM_DENSE}, e.g. --arch-mlp-bot={NUM_DENSE}-64-{cfg.embedding_dim}"
        )
    if not explicit:
        return replace(cfg, table_rows=need).validate(), f"table sizes from the data: {'-'.join(map(str, need))}"
    if cfg.num_tables != NUM_CAT:
        raise ValueError(f"the model has {cfg.num_tables} tables but Criteo has {NUM_CAT} categorical features")
    short = [t for t in range(NUM_CAT) if cfg.table_rows[t] < need[t]]
    if short:
        t = short[0]
        raise ValueError(
            f"table {t} has {cfg.table_rows[t]} rows but the data needs {need[t]} ({len(short)} table(s) too "
            + (
                "small): omit --arch-embedding-size to take the sizes from the data"
                if given_by == "--arch-embedding-size"
                else f"small) in {given_by}: a model trained on this data (or with --max-ind-range) fits it"
            )
        )
    return cfg, "table sizes as given (they cover the data)"
