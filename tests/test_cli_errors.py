"""Bad `dlrmbench train` / `presets` inputs: one line naming the flag, exit status 2, no traceback."""

from __future__ import annotations

import pickle
import re
import warnings
from types import SimpleNamespace

import pytest
import torch

import model.cli
import profiler.bench_bag
import profiler.workload
from model.config import DLRMConfig
from model.presets import scale_to_fit
from model.train import resolve_device
from profiler.cli import main


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


def _write(path, what):
    if what == "text":
        path.write_text("epoch 1 loss 0.51\n")
    elif what == "empty":
        path.write_bytes(b"")
    elif what == "pickle":  # torch.load warned about the pickle protocol before refusing it
        path.write_bytes(pickle.dumps({"version": 1}, protocol=4))
    elif what == "list":
        torch.save([1, 2], path)
    elif what == "old version":
        torch.save({"version": 99, "config": {}, "state_dict": {}}, path)


@pytest.mark.parametrize(
    ("what", "why"),
    [
        ("text", "it is not the zip archive torch.save writes"),
        ("empty", "the file is empty"),
        ("pickle", "it is not the zip archive torch.save writes"),
        ("list", "it holds a list, not a dict"),
        ("old version", "its version is 99; this dlrmbench reads version 1"),
    ],
)
def test_load_model_that_is_not_a_checkpoint_names_the_flag_and_why(tmp_path, capsys, what, why):
    path = tmp_path / "d.log"
    _write(path, what)
    with warnings.catch_warnings(record=True) as warned:  # nothing printed beside the error, torch's warnings neither
        warnings.simplefilter("always")
        assert main(["train", "--num-batches", "5", "--load-model", str(path)]) == 2
    assert [str(w.message) for w in warned] == []
    err = _one_line_error(capsys)
    assert f"--load-model {path}: not a dlrmbench checkpoint: {why}\n" in err


def test_load_model_missing_file_names_the_flag(tmp_path, capsys):
    path = tmp_path / "nosuch.pt"
    assert main(["train", "--num-batches", "5", "--load-model", str(path)]) == 2
    assert _one_line_error(capsys) == f"dlrmbench train: error: --load-model {path}: No such file or directory\n"


@pytest.mark.parametrize("device", ["tpu", "cuda:x", "CPU", "cuda:-1"])
def test_bad_device_form_names_the_flag_and_the_allowed_forms(capsys, device):
    assert main(["train", "--preset", "tiny", "--num-batches", "3", "--device", device]) == 2
    assert _one_line_error(capsys) == (
        f"dlrmbench train: error: --device {device!r}: expected cpu, cuda or cuda:N "
        "(N a CUDA device index, e.g. cuda:0)\n"
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present, so cuda:0 is valid")
def test_device_cuda_without_gpu_keeps_its_message(capsys):
    assert main(["train", "--preset", "tiny", "--num-batches", "3", "--device", "cuda:0"]) == 2
    assert "--use-gpu / --device cuda:0: no CUDA device is visible" in _one_line_error(capsys)


def test_device_index_past_the_last_gpu_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("cuda:1") == torch.device("cuda:1")
    with pytest.raises(ValueError, match=re.escape("--device cuda:2: 2 CUDA device(s) are visible, cuda:0 to cuda:1")):
        resolve_device("cuda:2")


def test_scale_to_fit_rounds_rows_up():
    # two tables of 5 rows, D=1: 10 rows x 4 bytes = 40 bytes. Available 15, so 0.8 x 15 = 12 bytes may be used.
    # 40 / 12 = 3.3 -> 4, but ceil(5 / 4) = 2 rows each is 16 bytes; at 5 each table has 1 row: 8 bytes.
    cfg = DLRMConfig(1, (5, 5), (4, 1), (2, 1))
    assert scale_to_fit(cfg, 15) == 5
    assert scale_to_fit(cfg, 50) == 1  # 40 <= 0.8 x 50
    assert scale_to_fit(cfg, 49) == 2  # 40 > 39.2; halved: 3 + 3 rows = 24 bytes


def test_presets_and_train_suggest_the_same_scale(monkeypatch, capsys):
    # mlperf: 187,767,399 rows x D=128 x 4 bytes = 96,136,908,288 bytes (89.53 GiB). With 20 GiB available the
    # tables may take 16 GiB = 17,179,869,184 bytes: 96.14e9 / 17.18e9 = 5.6, so --scale 6 (ceil adds at most 26
    # rows: 31,294,593 x 512 bytes = 16.02e9, which fits). The old rule, need / half of available, said 9.
    monkeypatch.setattr(model.cli.psutil, "virtual_memory", lambda: SimpleNamespace(available=20 * 2**30))
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"^mlperf .* 89\.53 GiB  no: --scale 6$", out, re.M)
    assert "fits here: tables within 80% of the 20.00 GiB of memory available now" in out
    assert main(["train", "--preset", "mlperf"]) == 2
    assert _one_line_error(capsys) == (
        "dlrmbench train: error: the embedding tables need 89.53 GiB but only 20.00 GiB of memory is available: "
        "run it scaled down, e.g. --scale 6 (rows divided by 6)\n"
    )


def test_train_scale_hint_counts_the_scale_already_given(monkeypatch, capsys):
    # --scale 2 halves mlperf to 48.07e9 bytes; 3 more fit in 16 GiB (16.02e9), so the whole scale to ask for is 6
    monkeypatch.setattr(model.cli.psutil, "virtual_memory", lambda: SimpleNamespace(available=20 * 2**30))
    assert main(["train", "--preset", "mlperf", "--scale", "2"]) == 2
    assert "e.g. --scale 6 (rows divided by 6)" in _one_line_error(capsys)


def test_locality_and_profile_mistakes_name_their_flags(capsys):
    base = ["train", "--preset=tiny", "--num-batches=1"]
    assert main([*base, "--data-generation=synthetic", "--locality=zipf:-1"]) == 2
    assert "--locality 'zipf:-1': the Zipf exponent must be a finite number >= 0" in capsys.readouterr().err
    assert main([*base, "--profile", "--inference-only"]) == 2  # it used to run and profile nothing, silently
    assert "--profile splits a training step into operators; --inference-only runs none" in capsys.readouterr().err


def test_bench_embedding_bag_refuses_a_table_past_memory_before_allocating(monkeypatch, capsys):
    def never(*_a, **_k):
        raise AssertionError("the table was allocated")

    monkeypatch.setattr(profiler.bench_bag, "alloc_table", never)
    monkeypatch.setattr(profiler.workload.psutil, "virtual_memory", lambda: SimpleNamespace(available=2**30))
    # E=1e9, D=64, B=L=1: table 1e9 x 256 bytes, 65,536 index batches (the cap) + 1 of 8 bytes, outputs 3 x 256
    # bytes, two int64 sampling tables of E (permutation, hot rows); no touched-rows mask (the sweep's alone):
    # 256e9 + 524,296 + 768 + 16e9 = 272,000,525,064 bytes = 253.32 GiB. 80% of 1 GiB is 858,993,459.2 bytes;
    # (858,993,459.2 - 525,064) / 272 = 3,156,133.8 rows fit.
    argv = ["bench", "embedding-bag", "--kernels=torch", "--num-rows=1e9", "--embedding-dim=64", "--batch-size=1",
            "--pooling-factor=1"]  # fmt: skip
    assert main(argv) == 2
    assert _one_line_error(capsys) == (
        "dlrmbench bench embedding-bag: error: --num-rows 1000000000 "
        "(with --embedding-dim 64, --batch-size 1, --pooling-factor 1) "
        "needs about 253.32 GiB but 1.00 GiB is available; refused before allocating: at most 3156133 rows fit\n"
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--preset=tiny", "--threads", "-3"], "argument --threads: '-3' is not a whole number >= 0"),
        (["bench", "dlrm", "--threads", "-1"], "argument --threads: '-1' is not a whole number >= 0"),
        (["bench", "timer", "--threads", "0"], "argument --threads: '0' is not a whole number >= 1"),
        (["train", "--preset=tiny", "--test-predictions-out", "p.csv"], "--test-predictions-out needs test data"),
        (
            ["sweep", "sweeps/quickstart.toml", "--point-timeout", "-5", "--dry-run"],
            "argument --point-timeout: '-5': expected a finite number > 0",
        ),
        (  # inf reached setitimer: an OverflowError traceback at the first point
            ["sweep", "sweeps/quickstart.toml", "--point-timeout", "inf", "--dry-run"],
            "argument --point-timeout: 'inf': expected a finite number > 0",
        ),
        # float flags: nan and inf passed `x < 0` checks and became a NaN loss (a traceback) or a cryptic error
        (
            ["train", "--preset=tiny", "--learning-rate", "nan"],
            "argument --learning-rate: 'nan': expected a finite number >= 0",
        ),
        (
            ["train", "--preset=tiny", "--embedding-learning-rate", "-1"],
            "argument --embedding-learning-rate: '-1': expected a finite number >= 0",
        ),
        (
            ["train", "--preset=tiny", "--weight-decay", "inf"],
            "argument --weight-decay: 'inf': expected a finite number >= 0",
        ),
        (
            ["train", "--preset=tiny", "--ema-decay", "nan"],
            "argument --ema-decay: 'nan': expected a finite number >= 0",
        ),
        (
            ["train", "--preset=tiny", "--dist-timeout", "0"],
            "argument --dist-timeout: '0': expected a finite number > 0",
        ),
        (["train", "--preset=tiny", "--scale", "nan"], "argument --scale: 'nan': expected a finite number"),
        (["bench", "dist", "--timeout", "nan"], "argument --timeout: 'nan': expected a finite number > 0"),
        (
            ["bench", "embedding-bag", "--warmup-ms", "nan"],
            "argument --warmup-ms: 'nan': expected a finite number >= 0",
        ),
        (["bench", "embedding-bag", "--rep-ms", "-1"], "argument --rep-ms: '-1': expected a finite number > 0"),
        (["bench", "embedding-bag", "--lr", "x"], "argument --lr: 'x': expected a finite number >= 0"),
        (
            ["plot", "r", "--kind", "roofline", "--out", "o", "--tolerance", "inf"],
            "argument --tolerance: 'inf': expected a finite number >= 0",
        ),
        (["sweep", "quickstart", "--filter", "working_set=0.5L2", "--dry-run"], "8*L3 here, not '0.5L2'"),
    ],
)
def test_bad_counts_numbers_and_missing_inputs_are_refused_before_any_work(capsys, argv, message):
    try:
        code = main(argv)
    except SystemExit as exc:  # argparse refuses a bad value while parsing
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err  # argparse's own errors add the usage lines
    assert message in err and "Traceback" not in err


@pytest.mark.parametrize(
    "argv",
    [
        ["trace", "profile", "TRACE", "--json-out", "DIR"],
        ["trace", "dump", "CRITEO", "--table", "3", "--out", "DIR"],
        ["bench", "timer", "--rounds", "1", "--target-us", "50", "--json-out", "DIR"],
        ["machine", "--json-out", "DIR"],
    ],
)
def test_a_folder_given_as_an_output_file_is_refused_before_the_work(tmp_path, capsys, argv):
    (tmp_path / "t.log").write_text("1, 2, 1\n")
    (tmp_path / "c.txt").write_text("\t".join(["1", *["1"] * 13, *["a"] * 26]) + "\n")
    subs = {"TRACE": str(tmp_path / "t.log"), "CRITEO": str(tmp_path / "c.txt"), "DIR": str(tmp_path)}
    assert main([subs.get(a, a) for a in argv]) == 2
    out = capsys.readouterr()
    assert f"{tmp_path}: is a directory; give a file path" in out.err
    assert out.out == ""  # nothing measured or printed first


def test_a_sweep_is_found_by_its_name(capsys):
    assert main(["sweep", "quickstart", "--dry-run"]) == 0
    by_name = capsys.readouterr().out
    assert main(["sweep", "sweeps/quickstart.toml", "--dry-run"]) == 0
    assert by_name == capsys.readouterr().out and "working_set=0.5*L2" in by_name
    assert main(["sweep", "no_such_sweep", "--dry-run"]) == 2
    assert "no_such_sweep" in capsys.readouterr().err  # the name as given, not a guessed path


def test_scale_to_fit_goes_past_a_one_row_table():
    # tables of 1, 5 and 5 rows, D=1: 44 bytes; 0.8 x 15 = 12 bytes may be used. 44 / 12 -> 4, but at 4 the
    # tables keep 1 + 2 + 2 rows (20 bytes); at 5, 1 + 1 + 1 rows (12 bytes) fit
    assert scale_to_fit(DLRMConfig(1, (1, 5, 5), (4, 1), (2, 1)), 15) == 5
