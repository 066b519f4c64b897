"""The `cuda` embedding-bag: hand-written CUDA C++ (kernels/cuda/), built on first use and cached.

Sources: `embedding_bag_kernels.cuh` holds the kernels (device code only), `embedding_bag.cu` their
launchers (vector width, warps per bag), `binding.cpp` the torch binding. The first call builds them
with `torch.utils.cpp_extension.load` into torch's extension cache (`$TORCH_EXTENSIONS_DIR`, else
`~/.cache/torch_extensions`), which takes a minute or so; later processes reuse the build. Importing
this module builds nothing: without a CUDA device (or without nvcc) it registers `cuda` as
unavailable, with the reason.

The wrappers are unchecked like every kernel: callers validate indices and offsets first
(`kernels.validate_bags`); they only check device, dtype and layout, which are cheap.
"""

from __future__ import annotations

import hashlib
import threading
from pathlib import Path
from types import ModuleType

import torch

from kernels.autograd import differentiable
from kernels.registry import Backend, register, register_unavailable

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
_REQUIRES = "a CUDA device, torch built with CUDA, and nvcc (CUDA_HOME)"

_extension: ModuleType | None = None
_lock = threading.Lock()


def unavailable_reason() -> str:
    """Why the kernel cannot run here, or "" when it can. Builds nothing."""
    if not torch.cuda.is_available():
        build = f"torch {torch.__version__}" + (
            f", CUDA {torch.version.cuda}" if torch.version.cuda else " built without CUDA"
        )
        return f"no CUDA device visible ({build})"
    from torch.utils.cpp_extension import CUDA_HOME

    if CUDA_HOME is None:
        return "nvcc not found: set CUDA_HOME to a CUDA toolkit so kernels/cuda/ can be built"
    return ""


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
    global _extension
    if _extension is not None:
        return _extension
    with _lock:
        if _extension is None:
            reason = unavailable_reason()
            if reason:
                raise ValueError(f"the cuda embedding-bag cannot be built here: {reason}; use kernel 'torch'")
            from torch.utils.cpp_extension import load

            digest = f"-DDLRMBENCH_SOURCES_DIGEST={_sources_digest()}"  # a header edit changes the build args
            try:
                _extension = load(
                    name=EXTENSION_NAME,
                    sources=[str(SOURCE_DIR / s) for s in SOURCES],
                    extra_include_paths=[str(SOURCE_DIR)],
                    extra_cflags=["-O3", digest],
                    extra_cuda_cflags=["-O3", "-lineinfo", digest],
                    verbose=verbose,
                )
            except Exception as exc:  # compiler output is in the message; keep it, say what was built
                raise RuntimeError(f"building the cuda embedding-bag from {SOURCE_DIR} failed: {exc}") from exc
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
    return extension().forward(
        weight.detach().contiguous(),
        indices.contiguous(),
        offsets.to(indices.dtype).contiguous(),
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
    return extension().backward_values(
        grad_out.contiguous(),
        offsets.to(indices.dtype).contiguous(),
        _psw(per_sample_weights, grad_out),
        indices.numel(),
        warps_per_bag,
    )


def psw_grad(
    weight: torch.Tensor, indices: torch.Tensor, offsets: torch.Tensor, grad_out: torch.Tensor
) -> torch.Tensor:
    """Gradient of the per-sample weights (N,): <weight[indices[i]], grad_out[bag(i)]>."""
    _check("psw_grad", weight=weight, indices=indices, offsets=offsets, grad_out=grad_out)
    return extension().psw_grad(
        weight.detach().contiguous(),
        indices.contiguous(),
        offsets.to(indices.dtype).contiguous(),
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
    extension().sgd(
        weight.detach(),
        rows.contiguous(),
        offsets.to(rows.dtype).contiguous(),
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
        description="hand-written CUDA C++: warps per bag, float4 row loads, no atomics; built on first use",
    )(differentiable(_forward, _backward))
