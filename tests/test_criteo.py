"""Criteo loading: raw TSV / CSV / gzip parsing, bad lines, the memmap cache, row mapping, `train` on it."""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from model import criteo_cache
from model.criteo import EMPTY_ROW, UNSEEN_ROW, CategoryIndex, CriteoData, split_rows
from model.criteo_cache import preprocess
from profiler.cli import main

SHARED = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "criteo"
_needs_shared = pytest.mark.skipif(not SHARED.is_dir(), reason=f"real Criteo samples absent: {SHARED}")


def _line(label="0", dense=None, cats=None, sep="\t"):
    dense = dense if dense is not None else [str(k) for k in range(13)]
    cats = cats if cats is not None else [f"{k:08x}" for k in range(26)]
    return sep.join([label, *dense, *cats])


#   line 1: every field present           line 3: negative / empty integers, empty and max categoricals
#   line 2: trailing empty fields stripped (C24..C26 gone)
_LINES = [
    _line("1"),
    "\t".join(_line("0").split("\t")[:37]),
    _line("0", ["-2", "", "5", *["0"] * 10], ["ffffffff", "", *[f"{k:x}" for k in range(24)]]),
]


def _write(path: Path, lines: list[str], end: str = "\n") -> Path:
    path.write_text(end.join(lines) + end)
    return path


def test_raw_tsv_parsed_and_transformed(tmp_path):
    cache, built = preprocess(_write(tmp_path / "t.txt", _LINES), tmp_path / "c")
    assert built and len(cache) == 3 and cache.manifest["format"] == "tsv"
    np.testing.assert_array_equal(cache.labels, [1, 0, 0])
    np.testing.assert_allclose(cache.dense[0], np.log1p(np.arange(13)), rtol=1e-6)
    np.testing.assert_allclose(cache.dense[2, :3], [0.0, 0.0, np.log1p(5)], rtol=1e-6)  # log(1 + max(x, 0))
    assert cache.cats[2, 0] == 0xFFFFFFFF  # the full 32-bit range, no overflow
    assert cache.cat_empty[0] == 0
    assert cache.cat_empty[1] == (1 << 23) | (1 << 24) | (1 << 25)  # stripped trailing fields are empty
    assert cache.cat_empty[2] == 1 << 1


def test_gzip_and_csv_variants_read_the_same(tmp_path):
    plain, _ = preprocess(_write(tmp_path / "t.txt", _LINES), tmp_path / "c0")
    gz = tmp_path / "t.txt.gz"
    gz.write_bytes(gzip.compress((tmp_path / "t.txt").read_bytes()))
    header = ",".join(["label", *(f"I{k}" for k in range(1, 14)), *(f"C{k}" for k in range(1, 27))])
    csv_lines = [line.replace("\t", ",") for line in _LINES[:1]] + [
        _line("0", [f"{k}.0" for k in range(13)], sep=",")  # float-formatted integers
    ]
    csv, _ = preprocess(_write(tmp_path / "t.csv", [header, *csv_lines]), tmp_path / "c1")
    kaggle_header = "Id,Label," + header.split(",", 1)[1]
    kaggle = [kaggle_header, *(f"{10000000 + i},{line}" for i, line in enumerate(csv_lines))]
    kg, _ = preprocess(_write(tmp_path / "k.csv", kaggle, "\r\n"), tmp_path / "c2")
    g, _ = preprocess(gz, tmp_path / "c3")
    for other in (g,):
        for name in ("labels", "dense", "cats", "cat_empty"):
            np.testing.assert_array_equal(getattr(other, name), getattr(plain, name))
    assert (csv.manifest["format"], kg.manifest["format"]) == ("csv", "kaggle-csv")
    for c in (csv, kg):
        assert len(c) == 2
        np.testing.assert_array_equal(c.dense[0], plain.dense[0])
        np.testing.assert_array_equal(c.dense[1], plain.dense[0])
        np.testing.assert_array_equal(c.cats[0], plain.cats[0])


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        ("\t".join([*_line().split("\t"), "x"]), "41 fields, expected 40"),
        ("\t".join(_line().split("\t")[:10]), "10 field(s), expected 40"),
        (_line("0", ["1.5", *["0"] * 12]), "I1 = '1.5' is not an integer"),
        (_line("0", ["abc", *["0"] * 12]), "I1 = 'abc' is not an integer"),
        (_line("0", None, ["zz", *["0"] * 25]), "C1 = 'zz' is not a hex value"),
        (_line("0", None, ["123456789", *["0"] * 25]), "C1 = '123456789' is not a hex value"),
        (_line("2"), "label '2' is not 0 or 1"),
        (  # a test.txt line: no label, so the first categorical sits where I13 should
            "\t".join(_line("0", None, ["68fd1e64", *["0"] * 25]).split("\t")[1:]),
            "I13 = '68fd1e64' is not an integer; 39 fields and a hex value here: an unlabelled line",
        ),
    ],
)
def test_bad_lines_error_with_file_and_line_or_skip(tmp_path, bad, reason):
    path = _write(tmp_path / "b.txt", [_LINES[0], bad, _LINES[2]])
    with pytest.raises(ValueError) as exc:
        preprocess(path, tmp_path / "c")
    assert f"{path}:2: bad line: {reason}" in str(exc.value)
    cache, _ = preprocess(path, tmp_path / "c", "skip")
    assert len(cache) == 2 and cache.manifest["bad_lines"] == 1
    assert cache.manifest["bad_line_examples"][0]["line"] == 2
    np.testing.assert_array_equal(cache.labels, [1, 0])


def test_unusable_files_give_one_clear_message(tmp_path):
    (tmp_path / "empty.txt").write_bytes(b"")
    (tmp_path / "bin.dat").write_bytes(b"\x00\x01\x02" * 100)
    (tmp_path / "unlabelled.csv").write_text("Id," + ",".join(f"I{k}" for k in range(1, 14)) + ","
                                             + ",".join(f"C{k}" for k in range(1, 27)) + "\n")  # fmt: skip
    (tmp_path / "words.txt").write_text("hello world\n")
    cases = {
        "empty.txt": "empty file",
        "bin.dat": "binary file",
        "missing.txt": "no such file",
        ".": "is a directory",
        "unlabelled.csv": "has no Label column",
        "words.txt": "not Criteo data",
    }
    for name, message in cases.items():
        with pytest.raises(ValueError, match=message):
            preprocess(tmp_path / name, tmp_path / "c")


def test_cli_errors_exit_2_without_traceback(tmp_path, capsys):
    (tmp_path / "empty.txt").write_bytes(b"")
    for name in ("empty.txt", "missing.txt"):
        argv = ["train", "--data-generation=dataset", f"--raw-data-file={tmp_path / name}",
                f"--processed-data-file={tmp_path / 'c'}", "--arch-mlp-bot=13-4-2"]  # fmt: skip
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "error:" in err and "Traceback" not in err


def test_cache_reused_until_source_or_options_change(tmp_path):
    path = _write(tmp_path / "t.txt", _LINES)
    assert preprocess(path, tmp_path / "c")[1] is True
    assert preprocess(path, tmp_path / "c")[1] is False
    assert preprocess(path, tmp_path / "c", "skip")[1] is True  # options are part of the key
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    _cache, built = preprocess(path, tmp_path / "c", "skip")
    assert built and json.loads((tmp_path / "c" / "manifest.json").read_text())["rows"] == 3
    assert not list((tmp_path / "c").glob("*.pkl"))


def test_vocabulary_of_every_table_matches_a_count_by_hand(tmp_path):
    rng = np.random.default_rng(5)
    rows = [[f"{v:x}" if v >= 0 else "" for v in rng.integers(-2, 4 + 3 * t, size=26)] for t in range(200)]
    rows = [[(f"{int(c, 16) * 7919 + t:x}" if c else "") for t, c in enumerate(r)] for r in rows]  # tables differ
    cache, _ = preprocess(_write(tmp_path / "t.txt", [_line("0", None, r) for r in rows]), tmp_path / "c")
    for min_count in (1, 3):
        vocab = cache.vocabulary(150, min_count)
        for t in range(26):
            counts: dict[int, int] = {}
            for r in rows[:150]:
                if r[t]:
                    counts[int(r[t], 16)] = counts.get(int(r[t], 16), 0) + 1
            assert vocab[t].tolist() == sorted(v for v, n in counts.items() if n >= min_count), (t, min_count)


def test_vocabulary_counted_in_many_chunks_matches_np_unique(tmp_path, monkeypatch):
    monkeypatch.setattr(criteo_cache, "_VOCAB_CHUNK_ROWS", 16)  # 190 training rows: 12 chunks, the last of 14
    monkeypatch.setattr(criteo_cache, "_TRANSPOSE_ROWS", 5)  # blocks that straddle chunk ends
    rng = np.random.default_rng(11)
    sizes = [1 + t * t // 2 for t in range(26)]  # 1 to 289 distinct: chunks that repeat values, chunks of new ones
    ids = rng.integers(-1, sizes, size=(220, 26))  # -1: empty
    ids[:, 25] = -1  # a table never seen
    values = (ids * 2654435761 + np.arange(26)) % 2**32  # spread over the 32-bit range, tables differ
    rows = [[f"{v:x}" if i >= 0 else "" for i, v in zip(r, vs, strict=True)] for r, vs in zip(ids, values, strict=True)]
    rows[3][0] = "ffffffff"
    cache, _ = preprocess(_write(tmp_path / "t.txt", [_line("0", None, r) for r in rows]), tmp_path / "c")
    cats, empty = cache.cats[:190], cache.cat_empty[:190]
    for min_count in (1, 3):
        vocab = cache.vocabulary(190, min_count)
        for t in range(26):
            seen, counts = np.unique(cats[(empty >> t) & 1 == 0, t], return_counts=True)
            assert vocab[t].dtype == np.uint32
            np.testing.assert_array_equal(vocab[t], seen[counts >= min_count], err_msg=f"{t} {min_count}")
        assert len(vocab[25]) == 0 and (0xFFFFFFFF in vocab[0]) == (min_count == 1)


def test_vocabulary_and_modulo_rows(tmp_path):
    lines = [_line("0", None, [f"{v:x}"] + [""] * 25) for v in (7, 9, 7)] + [_line("1", None, ["5"] + [""] * 25)]
    cache, _ = preprocess(_write(tmp_path / "t.txt", lines), tmp_path / "c")
    n_train = split_rows(len(cache), 0.25)
    assert n_train == 3
    index = CategoryIndex(cache.vocabulary(n_train))
    assert index.table_rows[0] == 2 + 2 and index.table_rows[1] == 2  # {7, 9} + empty + unseen
    rows = index.rows(cache.cats[:], cache.cat_empty[:])  # (26, 4)
    assert rows[0].tolist() == [2, 3, 2, UNSEEN_ROW]  # 5 is only in the test row
    assert (rows[1:] == EMPTY_ROW).all()
    assert CategoryIndex(cache.vocabulary(n_train, min_count=2)).rows(cache.cats[:], cache.cat_empty[:])[0].tolist() \
        == [2, UNSEEN_ROW, 2, UNSEEN_ROW]  # fmt: skip
    mod = CategoryIndex(max_ind_range=4)
    assert mod.rows(cache.cats[:], cache.cat_empty[:])[0].tolist() == [3, 1, 3, 1]
    data = CriteoData(cache, index, 2, 0, n_train)
    batches = list(data)
    assert [b.batch_size for b in batches] == [2, 1]
    assert batches[0].offsets.tolist() == list(range(26 * 2 + 1))
    assert batches[0].indices[:2].tolist() == [2, 3]


def test_train_on_a_dataset_reports_test_metrics(tmp_path, capsys):
    rng = np.random.default_rng(0)
    lines = []
    for _ in range(200):
        y = int(rng.random() < 0.3)
        cats = [f"{int(rng.integers(0, 5)) + 10 * y:x}", *(f"{int(rng.integers(0, 50)):x}" for _ in range(25))]
        lines.append(_line(str(y), [str(int(rng.integers(0, 100))) for _ in range(13)], cats))
    raw = _write(tmp_path / "train.txt", lines)
    out = tmp_path / "r.json"
    argv = ["train", "--data-generation=dataset", f"--raw-data-file={raw}", "--test-fraction=0.25",
            f"--processed-data-file={tmp_path / 'c'}", "--arch-mlp-bot=13-8-4", "--arch-sparse-feature-size=4",
            "--arch-mlp-top=8-1", "--mini-batch-size=16",
            "--nepochs=8", "--learning-rate=0.5", "--arch-interaction-op=cat",
            "--test-freq=5", "--print-freq=100", f"--json-out={out}"]  # fmt: skip
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "table sizes from the data" in text and "Testing at - it 5/10 of epoch 0: auc " in text
    assert "L=1 fixed, kernel torch" in text  # one lookup per Criteo bag, not --num-indices-per-lookup's 10
    record = json.loads(out.read_text())
    assert record["pooling_factor"] == 1
    assert set(record["test"]) == {"auc", "accuracy", "logloss", "samples"}
    assert record["test"]["samples"] == 50 and record["data"]["train_rows"] == 150
    assert record["test"]["auc"] > 0.8  # C1 gives the label away
    assert len(record["config"]["table_rows"]) == 26
    assert main([*argv, "--arch-embedding-size=3x26"]) == 2
    assert "omit --arch-embedding-size" in capsys.readouterr().err
    assert main([*argv, "--nepochs=1", "--num-indices-per-lookup=5"]) == 0
    text = capsys.readouterr().out
    assert "--num-indices-per-lookup 5 ignored: the data has 1 lookup(s) per bag" in text and "L=1 fixed," in text
    assert json.loads(out.read_text())["pooling_factor"] == 1
    assert main([*argv, "--nepochs=2", "--test-freq=4"]) == 0
    # the reference's schedule: every 4 batches of an epoch (j counted within it) and at each epoch's end
    tested = [line.split(":")[0] for line in capsys.readouterr().out.splitlines() if line.startswith("Testing at")]
    assert tested == [f"Testing at - it {j}/10 of epoch {e}" for e in range(2) for j in (4, 8, 10)]


def test_test_predictions_out_holds_every_test_row(tmp_path, capsys):
    rng = np.random.default_rng(3)
    labels = [int(rng.random() < 0.4) for _ in range(80)]
    raw = _write(
        tmp_path / "t.txt", [_line(str(y), cats=[f"{y + int(rng.integers(0, 2)):x}", *["a"] * 25]) for y in labels]
    )
    out, preds = tmp_path / "r.json", tmp_path / "p.csv"
    argv = ["train", "--data-generation=dataset", f"--raw-data-file={raw}", "--test-fraction=0.25",
            f"--processed-data-file={tmp_path / 'c'}", "--arch-mlp-bot=13-4", "--arch-sparse-feature-size=4",
            "--arch-mlp-top=8-1", "--arch-interaction-op=cat", "--mini-batch-size=8", "--nepochs=3",
            "--learning-rate=0.2", f"--json-out={out}", f"--test-predictions-out={preds}"]  # fmt: skip
    assert main(argv) == 0
    lines = preds.read_text().splitlines()
    assert lines[0] == "label,probability" and len(lines) == 21
    y = np.array([int(x.split(",")[0]) for x in lines[1:]])
    p = np.array([float(x.split(",")[1]) for x in lines[1:]])
    assert y.tolist() == labels[60:] and ((p > 0) & (p < 1)).all()
    pos, neg = p[y == 1], p[y == 0]  # AUC by counting pairs, ties half
    auc = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert json.loads(out.read_text())["test"]["auc"] == pytest.approx(auc, abs=1e-6)
    capsys.readouterr()
    assert main(["train", "--num-batches=1", f"--test-predictions-out={preds}"]) == 2
    assert "--test-predictions-out needs test data" in capsys.readouterr().err


@_needs_shared
def test_every_bundled_sample_loads_or_says_why(tmp_path):
    files = sorted(p for p in SHARED.rglob("*") if p.is_file())
    assert files
    for k, path in enumerate(files):
        if path.name == "test.tiny.csv":
            with pytest.raises(ValueError, match="no Label column"):
                preprocess(path, tmp_path / f"c{k}")
            continue
        cache, _ = preprocess(path, tmp_path / f"c{k}")
        assert len(cache) >= 100 and cache.manifest["bad_lines"] == 0, path
    wide, _ = preprocess(SHARED / "wide-resdnn" / "train.txt", tmp_path / "w")
    assert (len(wide), wide.manifest["positives"]) == (8000, 1728)


def test_output_bias_prior_starts_at_the_training_log_odds(tmp_path, capsys):
    labels = [1] * 10 + [0] * 20 + [1] * 10  # training rows: the first 30 (10 positive); the last 10 are test rows
    raw = _write(tmp_path / "train.txt", [_line(str(y)) for y in labels])
    argv = ["train", "--data-generation=dataset", f"--raw-data-file={raw}", "--test-fraction=0.25",
            f"--processed-data-file={tmp_path / 'c'}", "--arch-mlp-bot=13-4", "--arch-sparse-feature-size=4",
            "--arch-mlp-top=8-1", "--arch-interaction-op=cat", "--mini-batch-size=10", "--learning-rate=0",
            "--print-freq=100"]  # fmt: skip
    logits = {}
    for init in ("prior", "reference"):
        out = tmp_path / f"{init}.pt"
        assert main([*argv, f"--output-bias-init={init}", f"--save-model={out}"]) == 0
        logits[init] = torch.load(out, weights_only=True)["state_dict"]["top.2.bias"].item()
    assert logits["prior"] == pytest.approx(math.log((10 / 30) / (20 / 30)), abs=1e-6)
    assert logits["reference"] != pytest.approx(logits["prior"], abs=1e-3)
    assert "log-odds of the training rows' positive rate 0.3333" in capsys.readouterr().out
    assert main(["train", "--output-bias-init=prior", "--num-batches=1"]) == 2
    assert "needs labelled training rows (--data-generation dataset)" in capsys.readouterr().err
    single = _write(tmp_path / "ones.txt", [_line("1")] * 8)
    assert main([*argv[:2], f"--raw-data-file={single}", *argv[3:], "--output-bias-init=prior"]) == 2
    assert "positive rate is 1; it needs both labels" in capsys.readouterr().err


def _criteo_cv():
    spec = importlib.util.spec_from_file_location(
        "criteo_cv", Path(__file__).resolve().parents[1] / "scripts" / "criteo_cv.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_criteo_cv_holds_out_each_fold_once(tmp_path, capsys):
    cv = _criteo_cv()
    lines = [f"{i}\n" for i in range(7)]  # folds of 7 rows in 3: rows 0-1, 2-4, 5-6
    assert cv.fold_lines(lines, 3, 0) == [lines[i] for i in (2, 3, 4, 5, 6, 0, 1)]
    assert cv.fold_lines(lines, 3, 1) == [lines[i] for i in (0, 1, 5, 6, 2, 3, 4)]
    assert cv.fold_lines(lines, 3, 2) == lines
    assert cv.fold_lines(lines, 3, 1, "forward") == lines[:5]  # only the rows before fold 1, then it
    rng = np.random.default_rng(1)
    rows = []
    for _ in range(60):
        y = int(rng.random() < 0.4)
        rows.append(_line(str(y), cats=[f"{int(rng.integers(0, 3)) + 4 * y:x}", *(f"{k:x}" for k in range(25))]))
    raw = _write(tmp_path / "t.txt", rows)
    out = tmp_path / "cv.json"
    flags = ["--arch-sparse-feature-size=2", "--arch-mlp-bot=13-2", "--arch-mlp-top=4-1", "--arch-interaction-op=cat",
             "--mini-batch-size=10", "--learning-rate=0.1", "--nepochs=2"]  # fmt: skip
    assert (
        cv.main([f"--raw-data-file={raw}", "--rows=50", "--folds=2", "--seeds=1,2", f"--json-out={out}", "--", *flags])
        == 0
    )
    record = json.loads(out.read_text())
    assert [f["rows"] for f in record["folds"]] == [[1, 25], [26, 50]] and record["rows"] == 50
    assert all(len(f["dlrm"]) == 2 and f["dlrm"][0]["samples"] == 25 for f in record["folds"])
    assert record["folds"][0]["baseline"]["auc"] > 0.9  # C1 gives the label away
    assert "mean" in capsys.readouterr().out
    folds = record["folds"]
    d = [sum(r["auc"] for r in f["dlrm"]) / 2 - f["baseline"]["auc"] for f in folds]  # two folds: se = |d0 - d1| / 2
    assert record["paired_difference"]["auc"] == pytest.approx({"mean": (d[0] + d[1]) / 2, "se": abs(d[0] - d[1]) / 2})
    e = [f["ensemble"]["logloss"] - f["baseline"]["logloss"] for f in folds]
    assert record["paired_difference"]["ensemble_logloss"]["se"] == pytest.approx(abs(e[0] - e[1]) / 2)
    with pytest.raises(SystemExit):
        cv.main([f"--raw-data-file={raw}", "--seeds=1,two"])  # a traceback (ValueError from int()) before
    assert "--seeds '1,two': give whole numbers, comma-separated" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cv.main([f"--raw-data-file={raw}", "--", "--numpy-rand-seed=3"])
    assert "sets the data, seed and output flags itself" in capsys.readouterr().err
    forward = tmp_path / "fw.json"
    argv = [
        f"--raw-data-file={raw}",
        "--rows=60",
        "--folds=3",
        "--seeds=1",
        "--scheme=forward",
        f"--json-out={forward}",
    ]
    assert cv.main([*argv, "--", *flags]) == 0
    record = json.loads(forward.read_text())
    assert [f["rows"] for f in record["folds"]] == [[21, 40], [41, 60]] and record["scheme"] == "forward"
    assert [f["baseline"]["samples"] for f in record["folds"]] == [20, 20]


def test_criteo_cv_external_tests_on_other_files(tmp_path, capsys):
    cv = _criteo_cv()
    rng = np.random.default_rng(2)

    def rows(n):
        out = []
        for _ in range(n):
            y = int(rng.random() < 0.4)
            out.append(_line(str(y), cats=[f"{int(rng.integers(0, 3)) + 4 * y:x}", *(f"{k:x}" for k in range(25))]))
        return out

    train = _write(tmp_path / "train.txt", rows(50))
    test_a, test_b = rows(12), rows(9)
    a = _write(tmp_path / "a.txt", test_a)
    b = tmp_path / "b.txt"
    b.write_text("\n".join(test_b))  # no final newline: joining must not run its last row into the next file's first
    joined = cv.join_test_files([a, b], tmp_path / "j")
    assert joined.read_text() == "".join(f"{r}\n" for r in test_a + test_b)
    flags = ["--arch-sparse-feature-size=2", "--arch-mlp-bot=13-2", "--arch-mlp-top=4-1", "--arch-interaction-op=cat",
             "--mini-batch-size=10", "--learning-rate=0.1", "--nepochs=2"]  # fmt: skip
    out = tmp_path / "ext.json"
    argv = [f"--raw-data-file={train}", "--scheme=external", f"--test-file={a}", f"--test-file={b}", "--seeds=1,2"]
    assert cv.main([*argv, f"--json-out={out}", "--", *flags]) == 0
    record = json.loads(out.read_text())
    assert record["train_rows"] == 50 and record["samples"] == 21 and len(record["dlrm"]) == 2
    assert record["baseline"]["samples"] == 21 and record["baseline"]["auc"] > 0.9  # C1 gives the label away
    for q in [*record["dlrm"], record["ensemble"]]:
        assert q["auc_difference"]["diff"] == pytest.approx(q["auc"] - record["baseline"]["auc"])
        assert q["logloss_difference"]["diff"] == pytest.approx(q["logloss"] - record["baseline"]["logloss"])
    assert "ensemble" in capsys.readouterr().out
    assert cv.main([*argv[:-1], "--rows=30", "--seeds=1", "--", *flags]) == 0  # the first 30 rows train
    assert "trained on 30 rows" in capsys.readouterr().out
    bad = _write(tmp_path / "bad.txt", [*test_a[:2], "2" + test_a[2][1:]])
    with pytest.raises(SystemExit):
        cv.main([*argv[:2], f"--test-file={a}", f"--test-file={bad}", "--", *flags])
    assert f"{bad}:3" in capsys.readouterr().err  # the file and line of its own, not of the joined copy
    csv = tmp_path / "h.csv"
    csv.write_text("label," + ",".join([f"I{k}" for k in range(1, 14)] + [f"C{k}" for k in range(1, 27)]) + "\n"
                   + ",".join(_line("1").split("\t")) + "\n")  # fmt: skip
    with pytest.raises(SystemExit):
        cv.main([*argv[:2], f"--test-file={a}", f"--test-file={csv}", "--", *flags])
    assert "a headered CSV; only raw TSV files can be joined" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cv.main([f"--raw-data-file={train}", f"--test-file={a}"])
    assert "--test-file is for --scheme external" in capsys.readouterr().err


def test_a_folder_that_is_not_a_cache_is_refused_untouched(tmp_path, capsys):
    path = _write(tmp_path / "t.txt", _LINES)
    mine = tmp_path / "mine"
    mine.mkdir()
    files = {"labels.npy": b"my labels", "vocab-mine.npy": b"my vocabulary", "notes.txt": b"my notes"}
    for name, data in files.items():
        (mine / name).write_bytes(data)
    with pytest.raises(ValueError, match=f"{mine}: not a dlrmbench cache .* holds other files \\(notes.txt, "):
        preprocess(path, mine)
    argv = ["train", "--data-generation=dataset", f"--raw-data-file={path}", f"--processed-data-file={mine}",
            "--arch-mlp-bot=13-4-2"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "not a dlrmbench cache" in err and "Traceback" not in err
    assert {p.name: p.read_bytes() for p in mine.iterdir()} == files
    with pytest.raises(ValueError, match="bad line"):  # a build that fails leaves a folder still known as ours
        preprocess(_write(tmp_path / "b.txt", [_LINES[0], "x"]), tmp_path / "c")
    assert len(preprocess(tmp_path / "b.txt", tmp_path / "c", "skip")[0]) == 1
    legacy = tmp_path / "legacy"  # a build cut short by an older version: only our files, no manifest
    (legacy / ".build-1").mkdir(parents=True)
    (legacy / "cats.npy").write_bytes(b"partial")
    assert len(preprocess(path, legacy)[0]) == len(_LINES)


def test_a_build_removes_what_dead_builds_left_but_not_live_ones(tmp_path):
    path = _write(tmp_path / "t.txt", _LINES)
    folder = tmp_path / "c"
    preprocess(path, folder)
    done = subprocess.Popen([sys.executable, "-c", ""])
    done.wait()  # its pid is now free: a build killed mid-way
    live = os.getppid()
    left = [folder / f".build-{done.pid}", folder / f".build-{live}"]
    for d in left:
        d.mkdir()
        (d / "cats.npy").write_bytes(b"partial")
    (folder / f"vocab-3-1.npy.tmp{done.pid}.npy").write_bytes(b"partial")
    assert preprocess(path, folder, "skip")[1] is True
    assert sorted(p.name for p in folder.iterdir() if p.name.startswith(".") or ".tmp" in p.name) == [f".build-{live}"]
    assert (folder / f".build-{live}" / "cats.npy").read_bytes() == b"partial"


def test_cache_files_cut_short_are_built_again(tmp_path):
    path = _write(tmp_path / "t.txt", _LINES)
    folder = tmp_path / "c"

    def cut(name: str) -> None:  # its last 8 bytes lost
        (folder / name).write_bytes((folder / name).read_bytes()[:-8])

    cache, _ = preprocess(path, folder)
    by_hand = [[t] for t in range(26)]  # rows 0 and 1 hold value t in table t, or nothing
    assert [v.tolist() for v in cache.vocabulary(2)] == by_hand
    want = np.array(cache.cats)
    cut("vocab-2-1.npy")
    cache, built = preprocess(path, folder)
    assert not built and [v.tolist() for v in cache.vocabulary(2)] == by_hand
    del cache
    cut("cats.npy")
    with pytest.raises(ValueError, match=f"{folder / 'cats.npy'}: unreadable cache file .*; delete the folder"):
        criteo_cache.CriteoCache(folder, json.loads((folder / "manifest.json").read_text()))
    cache, built = preprocess(path, folder)
    assert built
    np.testing.assert_array_equal(cache.cats, want)


def test_a_loaded_model_too_small_for_the_data_says_so(tmp_path, capsys):
    few = _write(tmp_path / "few.txt", [_line(str(i % 2), cats=[f"{i % 2:x}"] * 26) for i in range(8)])
    many = _write(tmp_path / "many.txt", [_line(str(i % 2), cats=[f"{i:x}"] * 26) for i in range(8)])
    base = ["train", "--data-generation=dataset", "--arch-sparse-feature-size=4", "--arch-mlp-bot=13-4",
            "--arch-mlp-top=4-1", "--mini-batch-size=4", "--nepochs=1"]  # fmt: skip
    model = tmp_path / "m.pt"
    assert (
        main([*base, f"--raw-data-file={few}", f"--processed-data-file={tmp_path / 'c1'}", f"--save-model={model}"])
        == 0
    )
    capsys.readouterr()
    # 2 values + the empty and unseen rows = 4 rows a table; the other file has 8 values: 10 rows needed
    assert main([*base, f"--raw-data-file={many}", f"--processed-data-file={tmp_path / 'c2'}",
                 f"--load-model={model}"]) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert f"table 0 has 4 rows but the data needs 10 (26 table(s) too small) in --load-model {model}" in err
    assert "omit --arch-embedding-size" not in err


def test_the_test_split_is_the_rounded_share_of_the_rows():
    # 9 rows x 0.3 = 2.7 -> 3 test rows (6 train); 7 x 0.3 = 2.1 -> 2 (5 train); no test split at 0
    assert split_rows(9, 0.3) == 6
    assert split_rows(7, 0.3) == 5
    assert split_rows(9, 0.0) == 9


def test_modulo_rows_send_empty_fields_to_row_0():
    # two samples; sample 1 has categorical 1 empty (bit 1) and a value that is not 0 mod 4 stored there
    cats = np.array([[7] * 26, [13] * 26], dtype=np.uint32)
    rows = CategoryIndex(max_ind_range=4).rows(cats, np.array([0, 0b10], dtype=np.uint32))
    want = np.array([[3, 1]] * 26)  # 7 % 4, 13 % 4
    want[1, 1] = EMPTY_ROW
    assert rows.tolist() == want.tolist()
