"""The `cuda` kernel: its sources compile (nvcc, no GPU needed); on a GPU it equals torch's embedding_bag."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_kernels import CASES

import kernels
from kernels import cuda_bag
from model.config import DLRMConfig, EmbeddingGrad
from model.data import RandomData
from model.train import TrainConfig, run


def _cuda_home() -> Path | None:
    """A CUDA toolkit with nvcc and headers: $CUDA_HOME, nvcc's own folder, or /usr/local/cuda*."""
    found = shutil.which("nvcc")
    candidates = [os.environ.get("CUDA_HOME", ""), str(Path(found).resolve().parents[1]) if found else ""]
    candidates += [str(p) for p in sorted(Path("/usr/local").glob("cuda*"))]
    for home in filter(None, candidates):
        if (Path(home) / "bin/nvcc").exists() and (Path(home) / "include/cuda_runtime.h").exists():
            return Path(home)
    return None


CUDA_HOME = _cuda_home()
NVCC = str(CUDA_HOME / "bin/nvcc") if CUDA_HOME else None
HAS_GPU = torch.cuda.is_available()
UNAVAILABLE = cuda_bag.unavailable_reason()  # no device, or a device but no nvcc to build with
gpu = pytest.mark.skipif(bool(UNAVAILABLE), reason=UNAVAILABLE)

# --- what runs anywhere: the registry entry, the wrappers' checks, the sources compiling -------------


def test_registry_entry_says_why_it_is_unavailable():
    entry = next(e for e in kernels.list_kernels() if e.name == "cuda")
    assert entry.backend == kernels.Backend.CUDA
    if HAS_GPU and not entry.reason:
        assert entry.available and entry.devices == ("cuda",)
        return
    assert not entry.available
    assert entry.reason == cuda_bag.unavailable_reason()
    if not HAS_GPU:
        assert entry.reason.startswith("no CUDA device visible (torch ")
        with pytest.raises(ValueError, match=r"kernel 'cuda' is unavailable here: no CUDA device visible"):
            kernels.get("cuda")


def test_wrappers_check_dtype_and_device_before_building():
    w, idx, offs = torch.zeros(4, 8), torch.tensor([0, 3]), torch.tensor([0, 2])
    with pytest.raises(NotImplementedError, match=r"forward: weight is torch.float16, not implemented .* use 'torch'"):
        cuda_bag.forward(w.half(), idx, offs)
    with pytest.raises(ValueError, match=r"cuda forward: weight is on cpu; the cuda kernel needs CUDA tensors"):
        cuda_bag.forward(w, idx, offs)
    with pytest.raises(ValueError, match=r"cuda sgd: weight is on cpu"):
        cuda_bag.sgd_from_bags(w, idx, offs, torch.zeros(1, 8), None, 0.1)
    with pytest.raises(ValueError, match=r"cuda backward: grad_out is on cpu"):
        cuda_bag.backward_values(torch.zeros(1, 8), idx, offs)
    if not HAS_GPU:
        assert cuda_bag._extension is None  # nothing was built, at import or by the calls above
        with pytest.raises(ValueError, match=r"cannot be built here: no CUDA device visible"):
            cuda_bag.extension()


def _nvcc_ptx(tmp_path: Path, arch: str, std: str) -> str:
    out = tmp_path / f"embedding_bag_{arch}.ptx"
    cmd = [NVCC, "--ptx", f"-arch={arch}", f"-std={std}", "-O3", str(cuda_bag.SOURCE_DIR / "embedding_bag.cu")]
    result = subprocess.run([*cmd, "-o", str(out)], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{' '.join(cmd)}\n{result.stderr}"
    return out.read_text()


def _entries(ptx: str) -> dict[str, str]:
    """Kernel (mangled) name -> its PTX body."""
    starts = [(m.start(), m.group(1)) for m in re.finditer(r"\.entry\s+(\w+)\(", ptx)]
    return {name: ptx[s:e] for (s, name), (e, _) in zip(starts, [*starts[1:], (len(ptx), "")], strict=True)}


@pytest.mark.skipif(NVCC is None, reason="no CUDA toolkit (nvcc): looked at $CUDA_HOME, PATH and /usr/local/cuda*")
@pytest.mark.parametrize(("arch", "std"), [("sm_80", "c++17"), ("sm_90", "c++20")])
def test_kernels_compile_to_ptx(tmp_path, arch, std):
    entries = _entries(_nvcc_ptx(tmp_path, arch, std))
    atomics = re.compile(r"^\s*(?:atom|red)\.global", re.M)
    for kind in ("forward", "backward_values", "psw_grad", "sgd"):
        # every kernel for float (f) and double (d) with int32 (i) and int64 (l) indices
        for scalar in "fd":
            for index in "il":
                assert any(re.search(rf"\d+bag_{kind}_kernelI{scalar}{index}Li", n) for n in entries), (kind, scalar)
    forward = {n: body for n, body in entries.items() if "bag_forward_kernel" in n}
    for name, body in forward.items():
        assert not atomics.search(body), f"{name}: the forward must not use atomics"
        assert "shfl.sync" in body
        if "kernelIfiLi4" in name or "kernelIflLi4" in name:  # float, 4 wide: one 16-byte load per lane
            assert "ld.global.nc.v4.f32" in body and "st.global.v4.f32" in body, name
    sgd = [body for n, body in entries.items() if "bag_sgd_kernel" in n]
    assert sgd and all(atomics.search(body) for body in sgd)


@pytest.mark.skipif(CUDA_HOME is None or shutil.which("g++") is None, reason="needs a CUDA toolkit's headers and g++")
def test_torch_binding_compiles(tmp_path):
    """binding.cpp through the host compiler (-fsyntax-only): type errors against torch's API show here."""
    from torch.utils.cpp_extension import include_paths

    includes = [*include_paths(), sysconfig.get_paths()["include"], str(CUDA_HOME / "include")]
    includes.append(str(cuda_bag.SOURCE_DIR))
    macros = Path(include_paths()[0]) / "c10/cuda/impl/cuda_cmake_macros.h"
    if not macros.exists():  # CPU wheels leave out this generated header; an empty one stands in
        (tmp_path / "c10/cuda/impl").mkdir(parents=True)
        (tmp_path / "c10/cuda/impl/cuda_cmake_macros.h").write_text("#pragma once\n")
        includes.append(str(tmp_path))
    cmd = ["g++", "-std=c++20", "-fsyntax-only", "-DTORCH_EXTENSION_NAME=dlrmbench_embedding_bag"]
    cmd += [f"-I{p}" for p in includes] + [str(cuda_bag.SOURCE_DIR / "binding.cpp")]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]


def test_gpu_check_script_parses():
    script = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.sh"
    result = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


# --- on a GPU: equal to torch's embedding_bag ---------------------------------------------------------


def _reference(weight, indices, offsets, psw):
    return F.embedding_bag(
        indices.long(), weight, offsets.long(), mode="sum", per_sample_weights=psw, include_last_offset=True
    )


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("dim", [1, 3, 16, 64, 128, 130, 256])  # vec 1/2/4, one or several column chunks
def test_forward_and_gradients_match_torch_on_gpu(case, index_dtype, weighted, dim):
    rows, idx, offs = CASES[case]
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(rows, dim, generator=g).cuda()
    indices = torch.tensor(idx, dtype=index_dtype).cuda()
    offsets = torch.tensor(offs, dtype=index_dtype).cuda()
    psw = torch.rand(len(idx), generator=g).cuda() if weighted else None
    grad_out = torch.randn(len(offs) - 1, dim, generator=g).cuda()

    w_ref = weight.clone().requires_grad_()
    p_ref = psw.clone().requires_grad_() if weighted else None
    _reference(w_ref, indices, offsets, p_ref).backward(grad_out)
    for sparse in (True, False):
        w = weight.clone().requires_grad_()
        p = psw.clone().requires_grad_() if weighted else None
        out = kernels.embedding_bag("cuda", w, indices, offsets, p, sparse=sparse)
        torch.testing.assert_close(out, _reference(weight, indices, offsets, psw))
        out.backward(grad_out)
        assert w.grad.is_sparse == sparse
        torch.testing.assert_close(w.grad.to_dense(), w_ref.grad)
        if weighted:
            torch.testing.assert_close(p.grad, p_ref.grad)
            torch.testing.assert_close(cuda_bag.psw_grad(weight, indices, offsets, grad_out), p_ref.grad)


def _random_bags(B: int, rows: int, max_len: int, seed: int, device: str = "cuda"):
    """Bags of 0..max_len lookups (some empty), rows repeating within and across bags."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(0, max_len + 1, (B,), generator=g)
    offsets = torch.cat([torch.zeros(1, dtype=torch.int64), lengths.cumsum(0)])
    indices = torch.randint(0, rows, (int(offsets[-1]),), generator=g)
    return indices.to(device), offsets.to(device)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("dim", [4, 16, 64, 128, 200])
@pytest.mark.parametrize("warps_per_bag", [0, 1, 2, 4, 8])
def test_long_bags_every_warp_split_and_misaligned_rows(dim, warps_per_bag):
    indices, offsets = _random_bags(67, 500, 300, seed=dim)
    g = torch.Generator().manual_seed(1)
    psw = torch.rand(indices.numel(), generator=g).cuda()
    flat = torch.randn(500 * dim + 1, generator=g).cuda()
    for weight in (flat[:-1].view(500, dim), flat[1:].view(500, dim)):  # 16-byte aligned, then 4-byte only
        for p in (None, psw):
            out = cuda_bag.forward(weight, indices, offsets, p, warps_per_bag=warps_per_bag)
            torch.testing.assert_close(out, _reference(weight, indices, offsets, p), rtol=1e-5, atol=1e-4)


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("index_dtype", [torch.int32, torch.int64])
def test_fused_sgd_equals_torch_sgd_on_the_sparse_gradient(weighted, index_dtype):
    indices, offsets = _random_bags(300, 50, 40, seed=3)  # 50 rows: most repeat, within and across bags
    indices, offsets = indices.to(index_dtype), offsets.to(index_dtype)
    g = torch.Generator().manual_seed(4)
    weight = torch.randn(50, 64, generator=g).cuda()
    psw = torch.rand(indices.numel(), generator=g).cuda() if weighted else None
    grad_out = torch.randn(300, 64, generator=g).cuda()

    ref = weight.clone().requires_grad_()
    _reference(ref, indices, offsets, psw).backward(grad_out)
    torch.optim.SGD([ref], lr=0.05).step()
    mine = weight.clone()
    cuda_bag.sgd_from_bags(mine, indices, offsets, grad_out, psw, 0.05)
    torch.testing.assert_close(mine, ref.detach(), rtol=1e-5, atol=1e-5)


class _Calls:
    """Wraps cuda_bag.sgd_from_bags, counting the calls: which update a path took."""

    def __init__(self, monkeypatch):
        self.count, real = 0, cuda_bag.sgd_from_bags

        def spy(*args, **kw):
            self.count += 1
            return real(*args, **kw)

        monkeypatch.setattr(cuda_bag, "sgd_from_bags", spy)


@pytest.mark.gpu
@gpu
def test_update_takes_the_cuda_kernel_only_when_asked_and_matches_the_cpu_path(monkeypatch):
    from kernels.update import sgd_from_bags

    indices, offsets = _random_bags(200, 40, 30, seed=6, device="cpu")
    g = torch.Generator().manual_seed(8)
    weight = torch.randn(40, 16, generator=g)
    grad_out = torch.randn(200, 16, generator=g)
    on_cpu = weight.clone()
    sgd_from_bags(on_cpu, indices, offsets, grad_out, None, 0.1)
    calls = _Calls(monkeypatch)
    cases = ((False, torch.float32, 0), (True, torch.float32, 1), (True, torch.half, 1))  # calls so far
    for cuda_kernel, dtype, expected_calls in cases:
        on_gpu = weight.to("cuda", dtype)  # half: torch's index_add_, not the kernel (float32/64 only)
        grad = grad_out.to("cuda", dtype)
        sgd_from_bags(on_gpu, indices.cuda(), offsets.cuda(), grad, None, 0.1, cuda_kernel=cuda_kernel)
        assert calls.count == expected_calls, (cuda_kernel, dtype)
        rtol, atol = (1e-2, 5e-2) if dtype == torch.half else (1e-5, 1e-5)  # half: ~75 rounded adds per row
        torch.testing.assert_close(on_gpu.float().cpu(), on_cpu, rtol=rtol, atol=atol)
    on_gpu = weight.cuda()
    # validate_bags' messages (kernels/validate.py), raised before the kernel
    with pytest.raises(ValueError, match=r"^sgd_from_bags: index 40 at position 0 \(bag \d+\) is out of range"):
        bad_rows = torch.full_like(indices, 40).cuda()
        sgd_from_bags(on_gpu, bad_rows, offsets.cuda(), grad_out.cuda(), None, 0.1, cuda_kernel=True)
    long_offsets = offsets.clone()
    long_offsets[-1] += 1  # the last bag runs past the rows
    n = indices.numel()
    with pytest.raises(ValueError, match=rf"^sgd_from_bags: offsets\[-1\] = {n + 1} overruns the {n} indices"):
        sgd_from_bags(on_gpu, indices.cuda(), long_offsets.cuda(), grad_out.cuda(), None, 0.1, cuda_kernel=True)
    assert calls.count == 1  # refused before the kernel
    torch.testing.assert_close(on_gpu, weight.cuda(), rtol=0, atol=0)


@pytest.mark.gpu
@gpu
def test_gradcheck_float64_on_gpu():
    g = torch.Generator().manual_seed(1)
    weight = torch.randn(7, 6, dtype=torch.float64, generator=g).cuda().requires_grad_()
    psw = torch.rand(6, dtype=torch.float64, generator=g).cuda().requires_grad_()
    indices = torch.tensor([0, 6, 6, 2, 3, 0]).cuda()
    offsets = torch.tensor([0, 2, 2, 5, 6]).cuda()
    fn = kernels.get("cuda", "cuda").fn
    assert torch.autograd.gradcheck(lambda w, p: fn(w, indices, offsets, p, "sum", False), (weight, psw))


@pytest.mark.gpu
@gpu
@pytest.mark.parametrize("grad", ["sparse", "dense", "fused"])
def test_dlrm_trains_on_gpu_with_cuda_as_with_torch(grad, monkeypatch):
    cfg = DLRMConfig(16, (50, 7, 300, 1), (6, 32, 16), (16, 1), embedding_grad=EmbeddingGrad(grad))
    data = RandomData(cfg.table_rows, 6, 32, 256, pooling_factor=8, seed=5)
    train = TrainConfig(learning_rate=0.1, seed=7, device="cuda")
    calls = _Calls(monkeypatch)
    losses = {}
    for kernel in ("torch", "cuda"):
        losses[kernel] = run(replace(cfg, kernel=kernel), train, data, log=lambda s: None)["train_loss"]
        if kernel == "torch":  # torch's side is independent: its fused update is index_add_, never the kernel
            assert calls.count == 0
    assert len(losses["cuda"]) == 8
    np.testing.assert_allclose(losses["cuda"], losses["torch"], rtol=1e-4)


@pytest.mark.gpu
@gpu
def test_cli_trains_on_gpu_with_the_cuda_kernel(tmp_path):
    out = tmp_path / "train.json"
    cmd = [sys.executable, "-m", "profiler.cli", "train", "--use-gpu", "--kernel", "cuda"]
    cmd += ["--arch-sparse-feature-size=16", "--arch-mlp-bot=13-32-16", "--arch-mlp-top=32-1"]
    cmd += ["--arch-embedding-size=1000-1000", "--mini-batch-size=64", "--num-batches=4", f"--json-out={out}"]
    result = subprocess.run(cmd, capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    assert result.returncode == 0, result.stderr
    assert '"device": "cuda' in out.read_text()
