"""Output flags are checked before the work whose result they hold; a write that still fails exits cleanly."""

from __future__ import annotations

import errno
import json

import pytest

import model.bench
import model.cli
import model.train
import profiler.bench_bag
from profiler.cli import check_output_path, main


def _error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.count("\n") == 1, err
    return err


@pytest.fixture
def rfile(tmp_path):
    path = tmp_path / "rfile"
    path.write_text("a regular file, not a folder\n")
    return path


def _never(what: str):
    def fail(*_a, **_k):
        raise AssertionError(f"{what} ran: the bad output path should have been refused first")

    return fail


# --- the check itself -------------------------------------------------------------------------------


def test_missing_parents_are_fine_and_nothing_is_created(tmp_path):
    check_output_path("--json-out", tmp_path / "a" / "b" / "x.json")
    check_output_path("--out", tmp_path / "a" / "b", directory=True)
    check_output_path("--out", tmp_path, directory=True)  # an existing folder
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("under", ["", "sub", "sub/deeper"])
def test_a_file_where_a_folder_should_be_is_named(rfile, under):
    path = rfile / under / "x.json"
    with pytest.raises(ValueError) as info:
        check_output_path("--json-out", path)
    assert str(info.value) == f"--json-out {path}: {rfile} is not a directory"


def test_an_existing_folder_is_not_a_file_and_a_file_is_not_a_folder(tmp_path, rfile):
    with pytest.raises(ValueError, match=f"^--save-model {tmp_path}: is a directory; give a file path$"):
        check_output_path("--save-model", tmp_path)
    with pytest.raises(ValueError, match=f"^--out {rfile}: exists and is not a directory$"):
        check_output_path("--out", rfile, directory=True)


def test_a_folder_that_cannot_be_written_is_named(tmp_path, monkeypatch):
    # root may write anywhere, so the permission bits cannot be tested here: stand in for access(2)
    monkeypatch.setattr("profiler.cli.os.access", lambda path, mode: str(path) != str(tmp_path))
    with pytest.raises(ValueError, match=f"^--json-out {tmp_path}/new/x.json: {tmp_path} is not writable$"):
        check_output_path("--json-out", tmp_path / "new" / "x.json")


# --- each command refuses before its work -------------------------------------------------------------


def test_train_refuses_a_folder_as_save_model_before_training(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(model.cli, "run", _never("training"))
    assert main(["train", "--preset=tiny", "--num-batches=2", f"--save-model={tmp_path}"]) == 2
    assert _error(capsys) == f"dlrmbench train: error: --save-model {tmp_path}: is a directory; give a file path\n"


@pytest.mark.parametrize("flag", ["--save-model", "--json-out", "--test-predictions-out", "--profile-trace"])
def test_train_refuses_every_output_under_a_file_before_training(rfile, monkeypatch, capsys, flag):
    monkeypatch.setattr(model.cli, "run", _never("training"))
    monkeypatch.setattr(model.cli, "build_sources", _never("data loading"))
    extra = ["--profile"] if flag == "--profile-trace" else []
    assert main(["train", "--preset=tiny", "--num-batches=2", *extra, flag, str(rfile / "m")]) == 2
    assert _error(capsys) == f"dlrmbench train: error: {flag} {rfile}/m: {rfile} is not a directory\n"


def test_bench_embedding_bag_refuses_json_out_before_timing(rfile, monkeypatch, capsys):
    monkeypatch.setattr(profiler.bench_bag, "alloc_table", _never("the benchmark"))
    argv = ["bench", "embedding-bag", "--kernels=torch", "--num-rows=100", f"--json-out={rfile}/x.json"]
    assert main(argv) == 2
    want = f"dlrmbench bench embedding-bag: error: --json-out {rfile}/x.json: {rfile} is not a directory\n"
    assert _error(capsys) == want


def test_bench_dlrm_refuses_a_folder_as_json_out(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(model.bench, "bench_dlrm", _never("the benchmark"))
    assert main(["bench", "dlrm", "--steps=1", f"--json-out={tmp_path}"]) == 2
    assert _error(capsys) == f"dlrmbench bench dlrm: error: --json-out {tmp_path}: is a directory; give a file path\n"


def test_compare_refuses_out_under_a_file_before_reading_results(rfile, monkeypatch, capsys):
    monkeypatch.setattr("profiler.compare.load_results", _never("reading results"))
    assert main(["compare", "a", "b", "--out", f"{rfile}/cmp"]) == 2
    assert _error(capsys) == f"dlrmbench compare: error: --out {rfile}/cmp: {rfile} is not a directory\n"


def test_quality_refuses_a_folder_as_json_out_before_printing(tmp_path, capsys):
    csv = tmp_path / "p.csv"
    csv.write_text("label,probability\n1,0.9\n0,0.2\n")
    assert main(["quality", str(csv), f"--json-out={tmp_path}"]) == 2
    out_err = capsys.readouterr()
    assert out_err.out == ""  # no metrics table, then a failure
    assert out_err.err == f"dlrmbench quality: error: --json-out {tmp_path}: is a directory; give a file path\n"


@pytest.mark.parametrize("flag", ["--test-predictions-out", "--json-out"])
def test_baseline_refuses_its_outputs_before_reading_data(rfile, tmp_path, capsys, flag):
    # the raw file does not exist: the output path is looked at first
    argv = ["baseline", f"--raw-data-file={tmp_path}/none.tsv", "--test-fraction=0.2", flag, f"{rfile}/o"]
    assert main(argv) == 2
    assert _error(capsys) == f"dlrmbench baseline: error: {flag} {rfile}/o: {rfile} is not a directory\n"


# --- a write that fails anyway ------------------------------------------------------------------------


def test_any_os_error_exits_cleanly_naming_its_file(monkeypatch, capsys):
    def fail(_args):
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", "/data/rfile/x")

    monkeypatch.setattr(model.cli, "train_main", fail)
    assert main(["train"]) == 2
    assert _error(capsys) == "dlrmbench train: error: /data/rfile/x: Not a directory\n"


def test_a_failed_save_still_writes_the_json_and_exits_cleanly(tmp_path, monkeypatch, capsys):
    def disk_full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(model.train, "save_checkpoint", disk_full)
    out = tmp_path / "r.json"
    argv = ["train", "--preset=tiny", "--num-batches=2", f"--save-model={tmp_path}/m.pt", f"--json-out={out}"]
    assert main(argv) == 2
    assert json.loads(out.read_text())["iterations"] == 2
    assert _error(capsys) == (
        f"dlrmbench train: error: the run finished, but --save-model {tmp_path}/m.pt: could not write it "
        "(No space left on device)\n"
    )
