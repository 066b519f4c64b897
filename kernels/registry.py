"""Name -> embedding-bag implementation, so models and sweeps pick kernels by string."""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum, unique

import torch

__all__ = ["Backend", "KernelEntry", "get", "list_kernels", "register", "register_unavailable"]


@unique
class Backend(StrEnum):
    TORCH = "torch"
    NUMBA = "numba"
    CUDA = "cuda"
    FBGEMM = "fbgemm"


# Each backend lives in its own module, imported on first lookup; a module that
# fails to import registers its kernels as unavailable instead of breaking listing.
_BACKEND_MODULES: tuple[str, ...] = ("kernels.reference", "kernels.numba_bag", "kernels.cuda_bag", "kernels.fbgemm_bag")


@dataclass(frozen=True)
class KernelEntry:
    """One implementation of the embedding-bag contract.

    `fn(weight, indices, offsets, per_sample_weights=None, mode="sum", sparse=True) -> (B, D)`
    with CSR offsets (B + 1 entries, offsets[-1] == len(indices)). `fn` is unchecked:
    callers validate with `kernels.validate_bags` first. It is differentiable with
    respect to `weight` (a sparse COO gradient when `sparse`, else dense) and
    `per_sample_weights`.
    """

    name: str
    fn: Callable[..., torch.Tensor] | None
    backend: Backend
    devices: tuple[str, ...]  # device types it runs on, e.g. ("cpu",) or ("cpu", "cuda")
    requires: str = ""  # human-readable requirement, e.g. "numba>=0.60"
    reason: str = ""  # why it is unavailable; empty when available
    description: str = ""

    @property
    def available(self) -> bool:
        return self.fn is not None and not self.reason


_REGISTRY: dict[str, KernelEntry] = {}
_loaded = False


def register(
    name: str,
    *,
    backend: Backend,
    devices: tuple[str, ...] = ("cpu",),
    requires: str = "",
    description: str = "",
) -> Callable[[Callable[..., torch.Tensor]], Callable[..., torch.Tensor]]:
    """Decorator: register `fn` under `name`."""

    def deco(fn: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
        _add(KernelEntry(name, fn, backend, devices, requires, "", description))
        return fn

    return deco


def register_unavailable(name: str, *, backend: Backend, reason: str, requires: str = "") -> None:
    """Record a kernel that cannot run here, with the reason, so listing still shows it."""
    _add(KernelEntry(name, None, backend, (), requires, reason))


def _add(entry: KernelEntry) -> None:
    old = _REGISTRY.get(entry.name)
    if old is not None and old.available:
        raise ValueError(f"kernel {entry.name!r} is already registered (backend {old.backend})")
    _REGISTRY[entry.name] = entry


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in _BACKEND_MODULES:
        importlib.import_module(module)


def list_kernels() -> list[KernelEntry]:
    """Every registered kernel, available or not, in registration order."""
    _load()
    return list(_REGISTRY.values())


def get(name: str, device: str | None = None) -> KernelEntry:
    """Look up an available kernel by name; ValueError names the allowed ones.

    With `device` ("cpu", "cuda"), also checks the kernel runs on that device type.
    """
    _load()
    entry = _REGISTRY.get(name)
    if entry is None:
        allowed = ", ".join(_REGISTRY)
        raise ValueError(f"unknown kernel {name!r}; registered kernels: {allowed}")
    if not entry.available:
        raise ValueError(f"kernel {name!r} is unavailable here: {entry.reason}")
    if device is not None and device not in entry.devices:
        raise ValueError(f"kernel {name!r} does not run on {device}; it supports: {', '.join(entry.devices)}")
    return entry
