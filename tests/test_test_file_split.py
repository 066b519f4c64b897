"""--test-raw-data-file: `train` and `baseline` evaluate on that held-out file, with the training file's vocabulary."""

from __future__ import annotations

import json
import math
import random
from pathlib import Path

import numpy as np
import pytest

from model.criteo import EMPTY_ROW, UNSEEN_ROW
from model.data_cli import criteo_sources
from profiler.cli import main

_ONLY_IN_TEST = 0xABCDEF01  # a C1 value no training row has


def _tsv(path: Path, labels: list[int], c1: list[str], seed: int) -> Path:
    """A raw Criteo TSV: label, 13 integers, 26 hex categoricals; C1 as given, the rest small random values."""
    rng = random.Random(seed)
    lines = []
    for y, first in zip(labels, c1, strict=True):
        dense = [str(rng.randint(0, 50)) for _ in range(13)]
        cats = [first, *(f"{rng.randint(0, 6):x}" for _ in range(25))]
        lines.append("\t".join([str(y), *dense, *cats]))
    path.write_text("\n".join(lines) + "\n")
    return path


def _files(tmp_path: Path) -> tuple[Path, Path, list[int], list[str], list[str]]:
    rng = random.Random(3)
    train_labels = [int(rng.random() < 0.3) for _ in range(120)]
    train_c1 = [f"{rng.randint(1, 5):x}" for _ in range(120)]  # C1 in 1..5 only
    # 23 rows, 16 positive, in an order no slice of the training file shares: C1 seen, unseen, or empty
    test_labels = [1, 1, 0, 1, 1, 1, 0, 0, 1, 1, 1, 0, 1, 1, 0, 1, 1, 1, 0, 1, 0, 1, 1]
    test_c1 = [["3", f"{_ONLY_IN_TEST:x}", "", "5", "1"][i % 5] for i in range(23)]
    train = _tsv(tmp_path / "train.txt", train_labels, train_c1, seed=1)
    test = _tsv(tmp_path / "test.txt", test_labels, test_c1, seed=2)
    return train, test, test_labels, train_c1, test_c1


def _read_csv(path: Path) -> tuple[list[int], list[float]]:
    lines = path.read_text().splitlines()
    assert lines[0] == "label,probability"
    rows = [line.split(",") for line in lines[1:]]
    return [int(y) for y, _ in rows], [float(p) for _, p in rows]


def _logloss(y: list[int], p: list[float]) -> float:
    return -sum(math.log(q) if t else math.log(1 - q) for t, q in zip(y, p, strict=True)) / len(y)


def test_train_evaluates_on_the_test_file(tmp_path):
    train, test, test_labels, _, _ = _files(tmp_path)
    preds, out = tmp_path / "p.csv", tmp_path / "r.json"
    argv = ["train", "--data-generation=dataset", f"--raw-data-file={train}", f"--test-raw-data-file={test}",
            f"--processed-data-file={tmp_path / 'cache'}", "--arch-sparse-feature-size=4", "--arch-mlp-bot=13-8-4",
            "--arch-mlp-top=8-1", "--mini-batch-size=16", "--test-mini-batch-size=7", "--print-freq=100",
            "--threads=1", f"--test-predictions-out={preds}", f"--json-out={out}"]  # fmt: skip
    assert main(argv) == 0
    record = json.loads(out.read_text())
    assert record["iterations"] == 8  # 120 training rows / 16: every row of the training file trains
    assert record["test"]["samples"] == len(test_labels)
    y, p = _read_csv(preds)
    assert y == test_labels  # the test file's rows, in its order
    assert all(0 < q < 1 for q in p)
    assert record["test"]["logloss"] == pytest.approx(_logloss(y, p), rel=1e-5)
    right = sum((q > 0.5) == t for t, q in zip(y, p, strict=True))
    assert record["test"]["accuracy"] == pytest.approx(right / len(y), abs=1e-9)


def test_baseline_evaluates_on_the_test_file(tmp_path):
    train, test, test_labels, _, _ = _files(tmp_path)
    preds, out = tmp_path / "lr.csv", tmp_path / "lr.json"
    argv = ["baseline", f"--raw-data-file={train}", f"--test-raw-data-file={test}",
            f"--processed-data-file={tmp_path / 'cache'}", "--l2-grid=0.01", f"--test-predictions-out={preds}",
            f"--json-out={out}"]  # fmt: skip
    assert main(argv) == 0
    record = json.loads(out.read_text())
    assert record["test"]["samples"] == len(test_labels)
    assert record["data"]["train_rows"] == 120 and record["data"]["test_rows"] == len(test_labels)
    y, p = _read_csv(preds)
    assert y == test_labels
    assert record["test"]["logloss"] == pytest.approx(_logloss(y, p), rel=1e-5)


def test_the_vocabulary_comes_from_the_training_file_only(tmp_path):
    train, test, test_labels, train_c1, test_c1 = _files(tmp_path)
    sources = criteo_sources(str(train), test_raw_data_file=str(test), processed_data_file=str(tmp_path / "cache"),
                             batch_size=120, test_batch_size=23)  # fmt: skip
    assert sources.train.samples == 120 and sources.test.samples == 23
    seen = sorted({int(v, 16) for v in train_c1})
    assert sources.table_rows[0] == len(seen) + 2  # the training file's C1 values, plus empty and unseen
    # table 0 (C1) of the one test batch; each training value keeps the row it has in training
    train_rows = sources.train.batch(0).indices[:120].tolist()
    row_of = {int(v, 16): r for v, r in zip(train_c1, train_rows, strict=True)}
    assert all(row_of[int(v, 16)] == r for v, r in zip(train_c1, train_rows, strict=True))  # one row per value
    assert len(set(row_of.values())) == len(seen) and not {EMPTY_ROW, UNSEEN_ROW} & set(row_of.values())
    test_batch = sources.test.batch(0)
    np.testing.assert_array_equal(test_batch.labels.numpy(), test_labels)
    want = [EMPTY_ROW if v == "" else row_of.get(int(v, 16), UNSEEN_ROW) for v in test_c1]
    assert test_batch.indices[:23].tolist() == want
    assert want.count(UNSEEN_ROW) == 5 and want.count(EMPTY_ROW) == 5  # the test-only value reads the unseen row
