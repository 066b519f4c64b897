"""The `cuda` embedding-bag: hand-written CUDA C++ (kernels/cuda/), built on first use and cached.

Sources: `embedding_bag_kernels.cuh` holds the kernels (device code only), `embedding_bag.cu` their
launchers (vector width, warps per bag), `binding.cpp` the torch binding. The first call builds them
with `torch.utils.cpp_extension.load` into torch's extension cache (`$TORCH_EXTENSIONS_DIR`, else
`~/.cache/torch_extensions`), which takes a minute or so; later processes reuse the build. Importing
this module builds nothing: without a CUDA device, nvcc, ninja, or with an nvcc whose CUDA major
version differs from torch's, it registers `cuda` as unavailable, with the reason. A failed build is
remembered: later calls in the process raise its error again instead of rebuilding.

The wrappers are unchecked like every kernel: callers validate indices and offsets first
(`kernels.validate_bags`); they only check device, dtype and layout, which are cheap.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import shutil
import subprocess
import threading
import time
import warnings
from pathlib import Path
from types import ModuleType

import torch

from kernels.autograd import differentiable
from kernels.registry import Backend, register, register_unavailable
from kernels.validate import INT32_MAX

__all__ = [
    "EXTENSION_NAME",
    "SOURCES",
    "SOURCE_DIR",
    "backward_values",
    "extension",
    "forward",
    "launch_plan",
    "psw_grad",
    "sgd_from_bags",
    "unavailable_reason",
]

SOURCE_DIR = Path(__file__).resolve().parent / "cuda"
SOURCES = ("embedding_bag.cu", "binding.cpp")  # compiled; the kernels are in embedding_bag_kernels.cuh
EXTENSION_NAME = "dlrmbench_embedding_bag"
_DTYPES = (torch.float32, torch.float64)  # the kernels' scalar types: float4 / double2 row loads
_REQUIRES = "a CUDA device, torch built with CUDA, nvcc (CUDA_HOME) of torch's CUDA major version, and ninja"

_extension: ModuleType | None = None
_build_error: str | None = None  # a failed build's message: raised again instead of rebuilding
_lock = threading.Lock()


def unavailable_reason() -> str:
    """Why the kernel cannot run here, or "" when it can. Builds nothing."""
    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}" + (
            f", CUDA {torch.version.cuda}" if torch.version.cuda else " built without CUDA"
        )
        return f"no CUDA device visible ({build})"
    forced = os.environ.get("DLRMBENCH_CUDA_UNAVAILABLE", "")
    if forced:  # scripts/gpu_check.sh, after a failed build: later processes do not build it again
        return forced
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None:
        return "nvcc not found: set CUDA_HOME to a CUDA toolkit so kernels/cuda/ can be built"
    nvcc = os.path.join(CUDA_HOME, "bin", "nvcc")  # the compiler torch's builder runs
    if not os.path.exists(nvcc):
        return f"nvcc not found at {nvcc}: set CUDA_HOME to a CUDA toolkit so kernels/cuda/ can be built"
    if shutil.which("ninja") is None:
        return "ninja not found on PATH: torch.utils.cpp_extension builds kernels/cuda/ with it (pip install ninja)"
    release = _nvcc_release(nvcc)
    if release and torch.version.cuda and release.split(".")[0] != torch.version.cuda.split(".")[0]:
        return (
            f"{nvcc} is CUDA {release} but torch {torch.__version__} was built with CUDA {torch.version.cuda}: "
            f"the major versions must match; set CUDA_HOME to a CUDA {torch.version.cuda.split('.')[0]}.x toolkit"
        )
    return ""


@functools.cache
def _nvcc_release(nvcc: str) -> str | None:
    """`nvcc --version`'s "release X.Y", or None when it does not run or say (the build then decides)."""
    try:
        out = subprocess.run([nvcc, "--version"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"release (\d+\.\d+)", out)
    return m.group(1) if m else None


def _lock_held(lock: Path) -> bool | None:
    """Whether a process has `lock` open, read from /proc; None where there is no /proc to read."""
    proc = Path("/proc")
    if not (proc / "self" / "fd").is_dir():
        return None
    target = os.path.realpath(lock)
    for fds in proc.glob("[0-9]*/fd"):
        try:
            entries = list(fds.iterdir())
        except OSError:  # exited, or another user's process: not readable
            continue
        for fd in entries:
            try:
                if os.readlink(fd) == target:
                    return True
            except OSError:  # closed meanwhile: the builder opens and closes pipes as it runs
                continue
    return False


def _clear_stale_lock(build_dir: Path, max_age_s: float = 3600.0) -> None:
    """Remove torch's `<build_dir>/lock` when no build holds it, so the next load does not wait forever.

    torch's builder creates the lock, keeps it open while it compiles and deletes it when done; a build
    killed mid-way (gpu_check's time cap) leaves it, and every later load then waits on it. It is stale
    when no process has it open (Linux /proc; a build by another user or machine sharing the folder is
    not seen), or, without /proc, when it is older than `max_age_s`.
    """
    lock = build_dir / "lock"
    try:
        age_s = time.time() - lock.stat().st_mtime
    except FileNotFoundError:
        return
    held = _lock_held(lock)
    if held or (held is None and age_s < max_age_s):
        return
    lock.unlink(missing_ok=True)
    warnings.warn(
        f"removed a stale build lock {lock} ({age_s:.0f}s old, no process holds it): "
        "an earlier build of the cuda embedding-bag was killed mid-way; building again",
        stacklevel=3,
    )


def _build_dir() -> Path | None:
    """The folder torch's `load` builds the extension in (created), or None if this torch cannot say."""
    try:
        from torch.utils.cpp_extension import _get_build_directory

        return Path(_get_build_directory(EXTENSION_NAME, False))
    except (ImportError, TypeError):  # a private helper: without it, load picks the folder, no lock is checked
        return None


def _sources_digest() -> str:
    """Hash of every file in kernels/cuda/: torch's builder hashes only the listed sources, not headers."""
    h = hashlib.sha256()
    for path in sorted(SOURCE_DIR.iterdir()):
        if path.suffix in (".cu", ".cuh", ".h", ".cpp"):
            h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def extension(verbose: bool = False) -> ModuleType:
    """The compiled extension: built on the first call in a machine's life (minutes), then loaded from cache.

    Args:
        verbose: print the compiler's commands and output.
    Returns:
        The module with `forward`, `backward_values`, `psw_grad`, `sgd` and `plan`.
    """
    global _extension, _build_error
    if _extension is not None:
        return _extension
    with _lock:
        if _extension is None:
            if _build_error is not None:  # one attempt per process: a failing build takes minutes
                raise RuntimeError(_build_error)
            reason = unavailable_reason()
            if reason:
                raise ValueError(f"the cuda embedding-bag cannot be built here: {reason}; use kernel 'torch'")
            from torch.utils.cpp_extension import load

            digest = f"-DDLRMBENCH_SOURCES_DIGEST={_sources_digest()}"  # a header edit changes the build args
            try:
                build_dir = _build_dir()
                if build_dir is not None:
                    _clear_stale_lock(build_dir)
                _extension = load(
                    name=EXTENSION_NAME,
                    sources=[str(SOURCE_DIR / s) for s in SOURCES],
                    extra_include_paths=[str(SOURCE_DIR)],
                    extra_cflags=["-O3", digest],
                    extra_cuda_cflags=["-O3", "-lineinfo", digest],
                    build_directory=None if build_dir is None else str(build_dir),
                    verbose=verbose,
                )
            except Exception as exc:  # compiler output is in the message; keep it, say what was built
                _build_error = f"building the cuda embedding-bag from {SOURCE_DIR} failed: {exc}"
                raise RuntimeError(_build_error) from exc
    return _extension


def _check(where: str, **tensors: torch.Tensor | None) -> None:
    """The first tensor's dtype (testable anywhere), then every tensor's device: CUDA only."""
    name, first = next(iter(tensors.items()))
    if first is not None and first.dtype not in _DTYPES:
        allowed = ", ".join(str(d).removeprefix("torch.") for d in _DTYPES)
        raise NotImplementedError(f"cuda {where}: {name} is {first.dtype}, not implemented ({allowed}); use 'torch'")
    for name, t in tensors.items():
        if t is not None and t.device.type != "cuda":
            raise ValueError(f"cuda {where}: {name} is on {t.device}; the cuda kernel needs CUDA tensors")


def _psw(psw: torch.Tensor | None, like: torch.Tensor) -> torch.Tensor | None:
    return None if psw is None else psw.detach().to(like.dtype).contiguous()


def _offsets(where: str, offsets: torch.Tensor, index_dtype: torch.dtype, num_indices: int) -> torch.Tensor:
    """Offsets in the indices' dtype (the kernels take one index type); refused where int32 would wrap."""
    if index_dtype == torch.int32 and num_indices > INT32_MAX:
        raise NotImplementedError(
            f"cuda {where}: {num_indices:,} int32 indices: offsets up to that overflow int32; pass int64 indices"
        )
    return offsets.to(index_dtype).contiguous()


def forward(
    weight: torch.Tensor,
    indices: torch.Tensor,
    offsets: torch.Tensor,
    per_sample_weights: torch.Tensor | None = None,
    warps_per_bag: int = 0,
) -> torch.Tensor:
    """Sum-pooled bags: (B, D), B = len(offsets) - 1. Not differentiable (the registry entry is).

    Args:
        weight: (R, D) float32/float64 CUDA table.
        indices: (N,) int32/int64 row ids; offsets: (B + 1,) CSR bags (cast to the indices' dtype).
        per_sample_weights: optional (N,), cast to the weight's dtype.
        warps_per_bag: 1, 2, 4 or 8 warps per bag, or 0 to let the launcher choose.
    """
    _check("forward", weight=weight, indices=indices, offsets=offsets, per_sample_weights=per_sample_weights)
    offsets = _offsets("forward", offsets, indices.dtype, indices.numel())
    return extension().forward(
        weight.detach().contiguous(),
        indices.contiguous(),
        offsets,
        _psw(per_sample_weights, weight),
        warps_per_bag,
    )


def backward_values(
    grad_out: torch.Tensor,
    indices: torch.Tensor,
    offsets: torch.Tensor,
    per_sample_weights: torch.Tensor | None = None,
    warps_per_bag: int = 0,
) -> torch.Tensor:
    """Per-lookup weight gradient (N, D): row i is psw[i] * grad_out[bag(i)], the registry's backward."""
    _check("backward", grad_out=grad_out, indices=indices, offsets=offsets, per_sample_weights=per_sample_weights)
    offsets = _offsets("backward", offsets, indices.dtype, indices.numel())
    return extension().backward_values(
        grad_out.contiguous(),
        offsets,
        _psw(per_sample_weights, grad_out),
        indices.numel(),
        warps_per_bag,
    )


def psw_grad(
    weight: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, grad_out: torch.Tensor
) -> torch.Tensor:
    """Gradient of the per-sample weights (N,): <weight[indices[i]], grad_out[bag(i)]>."""
    _check("psw_grad", weight=weight, indices=indices, offsets=offsets, grad_out=grad_out)
    offsets = _offsets("psw_grad", offsets, indices.dtype, indices.numel())
    return extension().psw_grad(
        weight.detach().contiguous(),
        indices.contiguous(),
        offsets,
        grad_out.to(weight.dtype).contiguous(),
    )


def sgd_from_bags(
    weight: torch.Tensor,
    rows: torch.Tensor,
    offsets: torch.Tensor,
    grad_out: torch.Tensor,
    per_sample_weights: torch.Tensor | None,
    lr: float,
) -> None:
    """`kernels.update.sgd_from_bags` on the GPU: weight[rows[i]] -= lr * psw[i] * grad_out[bag(i)], in place.

    Repeated rows are accumulated with atomics (see bag_sgd_kernel for why not a sorted segment sum).

    Args:
        weight: (R, D) contiguous CUDA table, updated in place.
        rows: (N,) int32/int64 row ids; offsets: (B + 1,) CSR bags.
        grad_out: (B, D) gradient of the pooled output.
        per_sample_weights: optional (N,).
        lr: learning rate.
    """
    _check("sgd", weight=weight, rows=rows, offsets=offsets, grad_out=grad_out, per_sample_weights=per_sample_weights)
    if not weight.is_contiguous():
        raise ValueError("cuda sgd: weight must be contiguous, it is updated in place")
    offsets = _offsets("sgd", offsets, rows.dtype, rows.numel())
    extension().sgd(
        weight.detach(),
        rows.contiguous(),
        offsets,
        grad_out.detach().to(weight.dtype).contiguous(),
        _psw(per_sample_weights, weight),
        float(lr),
    )


def launch_plan(
    num_bags: int, num_indices: int, dim: int, dtype: torch.dtype = torch.float32, warps_per_bag: int = 0
) -> dict[str, int]:
    """The thread mapping the forward picks for these sizes: {"vec", "lanes", "warps_per_bag"}."""
    element_size = torch.empty((), dtype=dtype).element_size()
    vec, lanes, wpb = extension().plan(num_bags, num_indices, dim, element_size, warps_per_bag)
    return {"vec": vec, "lanes": lanes, "warps_per_bag": wpb}


def _forward(
    weight: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, psw: torch.Tensor | None
) -> torch.Tensor:
    return forward(weight, indices, offsets, psw)


def _backward(
    grad_out: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, psw: torch.Tensor | None
) -> torch.Tensor:
    return backward_values(grad_out, indices, offsets, psw)


_forward.__doc__ = "Hand-written CUDA embedding-bag (kernels/cuda/); sum pooling, optional per-sample weights."

_REASON = unavailable_reason()
if _REASON:
    register_unavailable("cuda", backend=Backend.CUDA, reason=_REASON, requires=_REQUIRES)
else:
    register(
        "cuda",
        backend=Backend.CUDA,
        devices=("cuda",),
        requires=_REQUIRES,
        description="hand-written CUDA C++: warps per bag, float4 row loads, a forward without atomics "
        "(the fused SGD update adds with atomics); built on first use",
    )(_fn := differentiable(_forward, _backward))
    _fn.cuda_sgd = True  # type: ignore[attr-defined]  # fused_sgd_bag: this kernel's update is kernels/cuda's
