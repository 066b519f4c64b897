"""The GPU tooling's logic, on CPU: the cuda kernel's availability, build and lock handling, the update's
routing and checks, and gpu_bench's check against torch. What needs a device is in test_cuda_kernel.py."""

from __future__ import annotations

import importlib.util
import os
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

import kernels

kernels.list_kernels()  # register every backend in its usual order before importing one of them directly
from kernels import cuda_bag, registry, update  # noqa: E402

_SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
_HAS_PROC = Path("/proc/self/fd").is_dir()


# --- kernels/cuda_bag.py: why it is unavailable, a failed build, a stale lock, int32 offsets -----------------------


@pytest.fixture
def gpu_machine(monkeypatch, tmp_path):
    """A machine as unavailable_reason sees it: a device, torch built with CUDA 13.0, a toolkit, ninja.

    Returns a function that writes the toolkit's nvcc, answering `--version` with the given release.
    """
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.version, "cuda", "13.0")
    monkeypatch.setattr("torch.utils.cpp_extension.CUDA_HOME", str(tmp_path / "cuda"))
    monkeypatch.setattr(shutil, "which", lambda name: f"/usr/bin/{name}")

    def nvcc(release: str) -> None:
        path = tmp_path / "cuda" / "bin" / "nvcc"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f'#!/bin/sh\necho "Cuda compilation tools, release {release}, V{release}.1"\n')
        path.chmod(0o755)

    return nvcc


def test_unavailable_reason_on_a_machine_that_can_build(gpu_machine):
    gpu_machine("13.1")  # a minor version apart builds (torch only warns)
    assert cuda_bag.unavailable_reason() == ""


def test_unavailable_reason_names_a_missing_nvcc_or_ninja(gpu_machine, monkeypatch, tmp_path):
    assert cuda_bag.unavailable_reason().startswith(f"nvcc not found at {tmp_path}/cuda/bin/nvcc: set CUDA_HOME")
    gpu_machine("13.0")
    monkeypatch.setattr(shutil, "which", lambda name: None)
    assert cuda_bag.unavailable_reason() == (
        "ninja not found on PATH: torch.utils.cpp_extension builds kernels/cuda/ with it (pip install ninja)"
    )


def test_unavailable_reason_names_a_cuda_major_mismatch(gpu_machine, tmp_path):
    gpu_machine("12.4")
    reason = cuda_bag.unavailable_reason()
    assert reason.startswith(f"{tmp_path}/cuda/bin/nvcc is CUDA 12.4 but torch ")
    assert reason.endswith("built with CUDA 13.0: the major versions must match; set CUDA_HOME to a CUDA 13.x toolkit")


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="no nvcc on PATH")
def test_nvcc_release_reads_the_real_nvcc():
    release = cuda_bag._nvcc_release(shutil.which("nvcc"))
    assert release is not None and release.replace(".", "").isdigit() and release.count(".") == 1, release


@pytest.fixture
def fresh_build_state(monkeypatch, tmp_path):
    """No extension loaded, no remembered failure, builds under tmp_path; all put back afterwards."""
    monkeypatch.setattr(cuda_bag, "_extension", None)
    monkeypatch.setattr(cuda_bag, "_build_error", None)
    monkeypatch.setattr(cuda_bag, "unavailable_reason", lambda: "")
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "ext"))
    return tmp_path / "ext" / cuda_bag.EXTENSION_NAME


def test_a_failed_build_is_remembered_not_retried(fresh_build_state, monkeypatch):
    calls = []

    def load(**kw):
        calls.append(kw["build_directory"])
        raise RuntimeError("Error building extension 'dlrmbench_embedding_bag': nvcc fatal: boom")

    monkeypatch.setattr("torch.utils.cpp_extension.load", load)
    messages = set()
    for _ in range(3):
        with pytest.raises(RuntimeError, match=r"^building the cuda embedding-bag from .* failed: .*boom$") as e:
            cuda_bag.extension()
        messages.add(str(e.value))
    assert len(calls) == 1  # built once; the later calls raised the same error at once
    assert len(messages) == 1
    assert Path(calls[0]) == fresh_build_state  # the folder whose lock was checked is the one built in


@pytest.mark.skipif(not _HAS_PROC, reason="needs Linux /proc to see who holds the lock")
def test_a_stale_build_lock_is_removed_before_loading(fresh_build_state, monkeypatch):
    fresh_build_state.mkdir(parents=True)
    (fresh_build_state / "lock").touch()  # left by a build that was killed: nobody holds it
    module = SimpleNamespace()

    def load(**kw):
        assert not (Path(kw["build_directory"]) / "lock").exists()  # torch's builder would wait on it forever
        return module

    monkeypatch.setattr("torch.utils.cpp_extension.load", load)
    with pytest.warns(UserWarning, match=r"removed a stale build lock .*/lock .*no process holds it"):
        assert cuda_bag.extension() is module


@pytest.mark.skipif(not _HAS_PROC, reason="needs Linux /proc to see who holds the lock")
def test_a_held_build_lock_is_kept(tmp_path, recwarn):
    lock = tmp_path / "lock"
    fd = os.open(lock, os.O_CREAT | os.O_EXCL)  # as torch's FileBaton holds it during a build
    try:
        assert cuda_bag._lock_held(lock) is True
        cuda_bag._clear_stale_lock(tmp_path)
        assert lock.exists()
    finally:
        os.close(fd)
    assert cuda_bag._lock_held(lock) is False
    assert not recwarn.list


def test_without_proc_a_lock_is_stale_by_age(tmp_path, monkeypatch):
    monkeypatch.setattr(cuda_bag, "_lock_held", lambda lock: None)
    lock = tmp_path / "lock"
    lock.touch()
    cuda_bag._clear_stale_lock(tmp_path, max_age_s=3600)
    assert lock.exists()  # young: maybe a build still running
    old = time.time() - 7200
    os.utime(lock, (old, old))
    with pytest.warns(UserWarning, match=r"removed a stale build lock .* \(7\d\d\ds old"):
        cuda_bag._clear_stale_lock(tmp_path, max_age_s=3600)
    assert not lock.exists()


def test_int32_offsets_that_would_wrap_are_refused():
    offsets = torch.tensor([0, 2, 5])
    assert cuda_bag._offsets("forward", offsets, torch.int32, 5).dtype == torch.int32
    assert cuda_bag._offsets("forward", offsets, torch.int32, 2**31 - 1).dtype == torch.int32  # fits
    assert cuda_bag._offsets("sgd", offsets, torch.int64, 2**31).dtype == torch.int64
    with pytest.raises(NotImplementedError, match=r"cuda sgd: 2,147,483,648 int32 indices: .* pass int64 indices"):
        cuda_bag._offsets("sgd", offsets, torch.int32, 2**31)


# --- kernels/update.py: which update a table takes, and the checks before a compiled one -----------------------


def _table(device: str = "cuda", dtype: torch.dtype = torch.float32, contiguous: bool = True) -> SimpleNamespace:
    """What _use_cuda_update reads of a weight, for a device this machine may not have."""
    return SimpleNamespace(device=torch.device(device), dtype=dtype, is_contiguous=lambda: contiguous)


def test_only_kernel_cuda_takes_the_cuda_update():
    assert update._use_cuda_update(_table(), cuda_kernel=True)
    assert update._use_cuda_update(_table(dtype=torch.float64), cuda_kernel=True)
    assert not update._use_cuda_update(_table(), cuda_kernel=False)  # kernel torch: index_add_, no build needed
    assert not update._use_cuda_update(_table("cpu"), cuda_kernel=True)
    assert not update._use_cuda_update(_table(contiguous=False), cuda_kernel=True)
    for dtype in (torch.float16, torch.bfloat16):  # not the kernel's types: index_add_, not NotImplementedError
        assert not update._use_cuda_update(_table(dtype=dtype), cuda_kernel=True)


def test_the_fused_backward_asks_for_the_cuda_update_only_for_kernel_cuda(monkeypatch):
    import kernels

    asked: list[bool] = []
    monkeypatch.setattr(update, "sgd_from_bags", lambda *a, cuda_kernel=False, checked=False: asked.append(cuda_kernel))
    torch_fn = kernels.get("torch").fn

    def cuda_like(*args, **kwargs):  # what kernels/cuda_bag.py registers carries the mark
        return torch_fn(*args, **kwargs)

    cuda_like.cuda_sgd = True
    weight, rows, offsets = torch.zeros(5, 2, requires_grad=True), torch.tensor([4, 1, 1]), torch.tensor([0, 2, 3])
    for fn in (torch_fn, cuda_like):
        kernels.fused_sgd_bag(fn, weight, rows, offsets, 0.1).sum().backward()
    assert asked == [False, True]


# Two bags over a 5-row table:  bag 0 = rows [4, 1], bag 1 = rows [1]
#   rows    = [4, 1, 1]
#   offsets = [0, 2, 3]
_ROWS, _OFFSETS = torch.tensor([4, 1, 1]), torch.tensor([0, 2, 3])


@pytest.mark.parametrize(
    ("rows", "offsets", "message"),
    [
        ([4, 1, 5], [0, 2, 3], r"index 5 at position 2 \(bag 1\) is out of range \[0, 5\)"),
        ([4, -1, 1], [0, 2, 3], r"index -1 at position 1 \(bag 0\) is out of range \[0, 5\)"),
        ([4, 1, 1], [0, 2, 4], r"offsets\[-1\] = 4 overruns the 3 indices"),
        ([4, 1, 1], [1, 2, 3], r"offsets\[0\] must be 0, got 1"),
        ([4, 1, 1], [0, 3, 2, 3], r"offsets decrease at position 2 \(bag 1\): offsets\[1\] = 3 > offsets\[2\] = 2"),
        ([4, 1, 1], [0], r"offsets\[-1\] = 0 stops short of the 3 indices"),
    ],
)
def test_the_cuda_update_refuses_rows_and_offsets_it_would_overrun(monkeypatch, rows, offsets, message):
    calls = []
    monkeypatch.setattr(update, "_use_cuda_update", lambda weight, cuda_kernel: cuda_kernel)  # as on a GPU
    monkeypatch.setattr(cuda_bag, "sgd_from_bags", lambda *args: calls.append(args))
    weight = torch.zeros(5, 2)
    for dtype in (torch.int32, torch.int64):
        r, o = torch.tensor(rows, dtype=dtype), torch.tensor(offsets, dtype=dtype)
        with pytest.raises(ValueError, match=rf"^sgd_from_bags: {message}"):
            update.sgd_from_bags(weight, r, o, torch.ones(o.numel() - 1, 2), None, 0.1, cuda_kernel=True)
    assert calls == []


def test_the_cuda_update_is_called_only_after_rows_and_offsets_are_checked(monkeypatch):
    calls = []
    monkeypatch.setattr(update, "_use_cuda_update", lambda weight, cuda_kernel: cuda_kernel)  # as on a GPU
    monkeypatch.setattr(cuda_bag, "sgd_from_bags", lambda *args: calls.append(args))
    weight, grad_out = torch.zeros(5, 2), torch.ones(2, 2)
    with pytest.raises(ValueError, match=r"offsets\[-1\] = 4"):
        update.sgd_from_bags(weight, _ROWS, torch.tensor([0, 2, 4]), grad_out, None, 0.1, cuda_kernel=True)
    assert calls == []
    update.sgd_from_bags(weight, _ROWS, _OFFSETS, grad_out, None, 0.1, cuda_kernel=True)
    assert len(calls) == 1
    update.sgd_from_bags(weight, _ROWS, _OFFSETS, grad_out, None, 0.1)  # kernel torch: not the CUDA update
    assert len(calls) == 1


def test_sgd_from_bags_equals_torch_sgd_on_the_sparse_gradient():
    # independent reference: autograd through F.embedding_bag, then torch.optim.SGD
    g = torch.Generator().manual_seed(0)
    weight, grad_out, psw = torch.randn(5, 3, generator=g), torch.randn(2, 3, generator=g), torch.rand(3, generator=g)
    ref = weight.clone().requires_grad_()
    F.embedding_bag(_ROWS, ref, _OFFSETS, mode="sum", per_sample_weights=psw, include_last_offset=True).backward(
        grad_out
    )
    torch.optim.SGD([ref], lr=0.1).step()
    for cuda_kernel in (False, True):  # a CPU table ignores cuda_kernel
        mine = weight.clone()
        update.sgd_from_bags(mine, _ROWS, _OFFSETS, grad_out, psw, 0.1, cuda_kernel=cuda_kernel)
        torch.testing.assert_close(mine, ref.detach())


# --- scripts/gpu_bench.py: a result that differs from torch's fails the run ----------------------------------------


@pytest.fixture(scope="module")
def gpu_bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", _SCRIPTS / "gpu_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_check_allows_summation_order_and_refuses_wrong_values(gpu_bench):
    ref = torch.rand(64, 16) * 80  # L = 80 rows of U[0, 1) per bag
    assert gpu_bench._check("cuda", ref * (1 + 5e-6), ref, "D=16 L=80") < 1e-3  # another order's rounding
    wrong = ref.clone()
    wrong[3, 7] += 1.0  # one lane read the wrong row
    with pytest.raises(gpu_bench.KernelMismatch, match=r"^cuda at D=16 L=80: 1 of 1,024 values differ from torch"):
        gpu_bench._check("cuda", wrong, ref, "D=16 L=80")
    wrong[3, 7] = float("nan")
    with pytest.raises(gpu_bench.KernelMismatch, match=r"1 of 1,024 values .* \(max abs err inf\)"):
        gpu_bench._check("cuda", wrong, ref, "D=16 L=80")
    with pytest.raises(gpu_bench.KernelMismatch, match=r"result has shape \(63, 16\), torch's \(64, 16\)"):
        gpu_bench._check("cuda", ref[1:], ref, "D=16 L=80")


def test_bench_point_stops_at_a_kernel_that_differs_from_torch(gpu_bench, monkeypatch):
    kernels.list_kernels()  # the real backends first

    def garbage(weight, indices, offsets, per_sample_weights=None, mode="sum", sparse=True):
        return torch.zeros(offsets.numel() - 1, weight.shape[1])

    entry = registry.KernelEntry("garbage", garbage, registry.Backend.TORCH, ("cpu",))
    monkeypatch.setitem(registry._REGISTRY, "garbage", entry)
    monkeypatch.setattr(gpu_bench, "_time", lambda *a: pytest.fail("a kernel was timed"))
    weight = torch.rand(100, 8)
    with pytest.raises(gpu_bench.KernelMismatch, match=r"^garbage at B=4 E=100 D=8 L=3: 32 of 32 values differ"):
        gpu_bench._bench_point(["garbage"], weight, 4, 3, copy=1.0)


def test_bench_point_times_a_kernel_that_matches_torch(gpu_bench, monkeypatch):
    timed = []
    monkeypatch.setattr(gpu_bench, "_time", lambda fn, device: timed.append(device) or SimpleNamespace(
        median_s=1e-5, iqr_s=1e-6))  # fmt: skip
    (record,) = gpu_bench._bench_point(["torch_naive"], torch.rand(100, 8), 4, 3, copy=1.0)
    assert timed == ["cpu"]
    assert record["kernel"] == "torch_naive" and float(record["max_abs_err"]) < 1e-5


def test_gpu_bench_exits_1_naming_the_kernel_when_a_result_differs(gpu_bench, monkeypatch, tmp_path, capsys):
    def run_grid(*args, **kw):
        raise gpu_bench.KernelMismatch("cuda at B=2048 E=1000000 D=64 L=20: 9 of 131,072 values differ")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: "fake GPU")
    monkeypatch.setattr(gpu_bench, "_gpu_kernels", lambda names: names)
    monkeypatch.setattr(gpu_bench, "copy_gbps", lambda: 1000.0)
    monkeypatch.setattr(gpu_bench, "run_grid", run_grid)
    assert gpu_bench.main(["--out", str(tmp_path / "out"), "--kernels", "torch,cuda"]) == 1
    err = capsys.readouterr().err
    assert err == "gpu_bench: FAILED: cuda at B=2048 E=1000000 D=64 L=20: 9 of 131,072 values differ\n"
    assert not (tmp_path / "out").exists()


def test_gpu_bench_without_a_gpu_says_why_and_exits_0(gpu_bench, capsys):
    if torch.cuda.is_available():
        pytest.skip("a CUDA device is visible")
    assert gpu_bench.main([]) == 0
    assert capsys.readouterr().out.startswith("gpu_bench: skipped: no CUDA device visible")
