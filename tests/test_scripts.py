"""The scripts/ command lines: bad flags are one clear argparse error (exit 2) before any slow work, and the edges."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from model import criteo_fast

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _run(script: str, *args: str, cwd: Path | None = None, env: dict[str, str] | None = None):
    cmd = [str(SCRIPTS / script), *args] if script.endswith(".sh") else [sys.executable, str(SCRIPTS / script), *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=60)


def _assert_flag_error(result, prog: str, flag: str, bad: str) -> None:
    """Exit 2, no traceback, and the last line names the flag and the bad value."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"{prog}: error:") and flag in last and bad in last, last


# --- vs_reference.py ----------------------------------------------------------------------------------------------

_FAKE_REFERENCE = """\
import pathlib, sys
pathlib.Path(sys.argv[0]).with_name("ran").write_text("")  # the tests of bad flags check this never happens
import stubmod  # from --extra-pythonpath, as the real reference imports its stubs
print("Finished training it 2/2 of epoch 0, 1.50 ms/it")
"""


@pytest.fixture
def fake_reference(tmp_path: Path) -> Path:
    """tmp_path/ref/dlrm_s_pytorch.py, which imports `stubmod` from tmp_path/w/stubs."""
    (tmp_path / "ref").mkdir()
    (tmp_path / "ref" / "dlrm_s_pytorch.py").write_text(_FAKE_REFERENCE)
    (tmp_path / "w" / "stubs").mkdir(parents=True)
    (tmp_path / "w" / "stubs" / "stubmod.py").write_text("")
    return tmp_path / "ref"


@pytest.mark.parametrize(
    ("flag", "value", "bad"),
    [
        ("--batch-sizes", "1x8", "'1x8'"),
        ("--batch-sizes", "128,0", "'0'"),
        ("--optimizer", "adam", "'adam'"),
        ("--kernels", "torch,torchh", "'torchh'"),
        ("--rounds", "0", "'0'"),
        ("--extra-pythonpath", "no/such/stubs", "no/such/stubs"),
    ],
)
def test_vs_reference_refuses_bad_flags_before_running(fake_reference, flag, value, bad):
    result = _run("vs_reference.py", "--reference-dir", str(fake_reference), flag, value)
    _assert_flag_error(result, "vs_reference.py", flag, bad)
    assert not (fake_reference / "ran").exists(), "the reference ran before the flags were checked"


def test_vs_reference_resolves_relative_paths_against_the_callers_folder(fake_reference, monkeypatch, capsys):
    # The reference runs in its own folder, so a relative w/stubs handed on as is would not be found there.
    spec = importlib.util.spec_from_file_location("vs_reference", SCRIPTS / "vs_reference.py")
    vs_reference = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vs_reference)
    real_run = vs_reference.run

    def run(cmd, cwd, env, what):  # the reference for real (fast: it is the fake), dlrmbench train faked
        return real_run(cmd, cwd, env, what) if what == "reference" else 3.0

    monkeypatch.setattr(vs_reference, "run", run)
    monkeypatch.chdir(fake_reference.parent)
    argv = ["vs_reference.py", "--reference-dir", "ref", "--extra-pythonpath", "w/stubs", "--batch-sizes", "8",
            "--rounds", "1", "--kernels", "torch"]  # fmt: skip
    monkeypatch.setattr(sys, "argv", argv)
    assert vs_reference.main() == 0
    assert "B=    8  reference 1.50; dlrmbench torch 3.00 (0.50x)" in capsys.readouterr().out


# --- bench_criteo_parse.py ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("flag", "value"), [("--lines", "0"), ("--rounds", "0"), ("--formats", "plain,xz")])
def test_bench_criteo_parse_names_each_bad_flag(flag, value):
    result = _run("bench_criteo_parse.py", flag, value)
    bad = "'xz'" if flag == "--formats" else f"'{value}'"
    _assert_flag_error(result, "bench_criteo_parse.py", f"argument {flag}:", bad)
    last = result.stderr.strip().splitlines()[-1]
    assert all(other not in last for other in {"--lines", "--rounds", "--formats"} - {flag}), last


def test_bench_criteo_parse_refuses_a_sample_that_is_not_criteo_data(tmp_path):
    sample = tmp_path / "notes.txt"
    sample.write_text("hello\n")
    result = _run("bench_criteo_parse.py", "--sample", str(sample))
    _assert_flag_error(result, "bench_criteo_parse.py", "--sample", "not Criteo data")


@pytest.mark.skipif(not criteo_fast.AVAILABLE, reason="numba is not installed")
def test_bench_criteo_parse_repeats_a_headered_csv_below_one_header(tmp_path):
    # header + 3 samples, repeated to 10 lines: header, s1 s2 s3 s1 s2 s3 s1 s2 s3
    header = ",".join(["Label", *(f"I{k}" for k in range(1, 14)), *(f"C{k}" for k in range(1, 27))])
    rows = [",".join([str(r % 2), *(str(r + k) for k in range(13)), *(f"{r * 100 + k:08x}" for k in range(26))])
            for r in range(3)]  # fmt: skip
    sample = tmp_path / "tiny.csv"
    sample.write_text("\n".join([header, *rows]) + "\n")
    out = tmp_path / "out.json"
    result = _run("bench_criteo_parse.py", "--sample", str(sample), "--lines", "10", "--rounds", "1",
                  "--formats", "plain", "--json-out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    assert json.loads(out.read_text())["results"][0]["lines"] == 10


# --- gpu_check.sh -------------------------------------------------------------------------------------------------

# A stand-in for $PYTHON: answers gpu_check.sh's probes at once, and its steps as FAKE_* say.
_FAKE_PYTHON = """\
#!/usr/bin/env bash
case "$1 ${2:-}" in
  "-c import torch; print(int(torch.cuda.is_available()))") echo "$FAKE_GPU" ;;
  "-c "*"cuda_bag.extension()"*) echo "$FAKE_BUILD"; exit "${FAKE_BUILD_RC:-0}" ;;
  "-c "*) ;;
  "- ") cat >/dev/null; echo "torch 0.0 (fake)" ;;
  "-m pytest") echo "$FAKE_PYTEST"; echo "pytest args: $*"; echo "cuda forced off: ${DLRMBENCH_CUDA_UNAVAILABLE:-no}"
    exit "${FAKE_PYTEST_RC:-0}" ;;
  "scripts/gpu_bench.py "*) echo "$FAKE_BENCH"; exit "${FAKE_BENCH_RC:-0}" ;;
  "-m profiler.cli") echo "training" ;;
  *) echo "fake python: unexpected $*" >&2; exit 3 ;;
esac
"""


_NO_GPU = {
    "FAKE_GPU": "0",
    "FAKE_BUILD": "cuda build: skipped: no CUDA device visible",
    "FAKE_BENCH": "gpu_bench: skipped: no CUDA device visible",
}


def _gpu_check(tmp_path: Path, python: str, cwd: Path | None = None, **fake: str):
    env = dict(os.environ, PYTHON=python, OUT=str(tmp_path / "out"), **fake)
    return _run("gpu_check.sh", cwd=cwd, env=env)


@pytest.fixture
def fake_python(tmp_path: Path) -> Path:
    path = tmp_path / "bin" / "python"
    path.parent.mkdir()
    path.write_text(_FAKE_PYTHON)
    path.chmod(0o755)
    return path


def test_gpu_check_without_a_gpu_says_nothing_was_checked(tmp_path, fake_python):
    result = _gpu_check(tmp_path, str(fake_python), FAKE_PYTEST="178 skipped, 922 deselected", **_NO_GPU)
    assert result.returncode == 0, result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-1]
    assert "all steps passed" not in last
    assert "nothing was checked, no CUDA device is visible" in last
    assert "0 passed, 4 skipped (cuda build, GPU tests, benchmark, DLRM training), 0 failed" in last


def test_gpu_check_with_a_gpu_counts_the_steps(tmp_path, fake_python):
    result = _gpu_check(tmp_path, str(fake_python), FAKE_GPU="1", FAKE_BUILD="cuda build: ready after 40s",
                        FAKE_PYTEST="5 passed, 2 skipped in 1.0s", FAKE_BENCH="D=64 L=20 cuda 10 us")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    last = result.stdout.strip().splitlines()[-1]
    steps = "cuda build, GPU tests, benchmark, DLRM training (--kernel cuda), DLRM training (--kernel torch)"
    assert f"5 passed ({steps})" in last
    assert "0 skipped, 0 failed" in last
    # the GPU tests stop at the first failure, so its output shows (not 175 of them, or a time-out)
    assert "pytest args: -m pytest -q -x " in result.stdout


def test_gpu_check_takes_a_relative_python_from_the_callers_folder(tmp_path, fake_python):
    # The script changes to the repository root; bin/python is tmp_path's.
    result = _gpu_check(tmp_path, "bin/python", cwd=tmp_path, FAKE_PYTEST="1 passed", **_NO_GPU)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "1 passed (GPU tests), 3 skipped (cuda build, benchmark, DLRM training), 0 failed" in result.stdout


def test_gpu_check_reports_a_failed_step(tmp_path, fake_python):
    result = _gpu_check(tmp_path, str(fake_python), FAKE_PYTEST="1 failed", FAKE_PYTEST_RC="1", **_NO_GPU)
    assert result.returncode == 1
    expected = "a step FAILED: 0 passed, 3 skipped (cuda build, benchmark, DLRM training), 1 failed (GPU tests)"
    assert expected in result.stdout


def test_gpu_check_shows_a_failed_build_and_a_benchmark_mismatch(tmp_path, fake_python):
    build_error = "cuda build: FAILED: building the cuda embedding-bag from kernels/cuda failed: nvcc fatal: boom"
    result = _gpu_check(tmp_path, str(fake_python), FAKE_GPU="1", FAKE_BUILD=build_error, FAKE_BUILD_RC="1",
                        FAKE_PYTEST="3 passed", FAKE_BENCH="gpu_bench: FAILED: cuda at B=2048 ...",
                        FAKE_BENCH_RC="1")  # fmt: skip
    assert result.returncode == 1
    assert build_error in result.stdout
    last = result.stdout.strip().splitlines()[-1]
    assert "2 failed (cuda build, benchmark)" in last
    # the later steps do not build it again (minutes each): kernel cuda is off for them, saying why
    assert "cuda forced off: its build failed in gpu_check's first step" in result.stdout
    assert "DLRM training (--kernel cuda): skipped: the cuda build failed" in result.stdout
    assert "2 passed (GPU tests, DLRM training (--kernel torch))" in last


def test_gpu_check_fits_its_steps_in_the_budget(tmp_path, fake_python):
    result = _gpu_check(tmp_path, str(fake_python), FAKE_GPU="1", FAKE_BUILD="cuda build: ready after 40s",
                        FAKE_PYTEST="5 passed", FAKE_BENCH="ok", GPU_CHECK_BUDGET_S="10")  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count("out of time: ") == 5  # under 20 s left at each step: skipped, not cut off mid-way
    result = _gpu_check(tmp_path, str(fake_python), FAKE_GPU="1", FAKE_BUILD="cuda build: ready after 40s",
                        FAKE_PYTEST="5 passed", FAKE_BENCH="ok", GPU_CHECK_BUDGET_S="100")  # fmt: skip
    assert "cuda build (at most 100s)" in result.stdout  # its own cap, 300 s, shrunk to what is left


def test_gpu_check_stops_at_once_when_python_lacks_torch(tmp_path):
    no_torch = tmp_path / "python-without-site"  # the real interpreter, without site-packages: no torch
    no_torch.write_text(f'#!/usr/bin/env bash\nexec {sys.executable} -S "$@"\n')
    no_torch.chmod(0o755)
    result = _gpu_check(tmp_path, str(no_torch))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "cannot import torch (ModuleNotFoundError: No module named 'torch')" in result.stderr
    assert ".venv/bin/python" in result.stderr
    assert not (tmp_path / "out").exists()
