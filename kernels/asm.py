"""What vector ISA a compiled numba kernel really uses: xmm/ymm/zmm in its assembly, and narrower-ISA presets.

numba compiles for the host CPU unless NUMBA_CPU_NAME / NUMBA_CPU_FEATURES say otherwise, and
reads them once, at import; so a narrower ISA needs a fresh process, which the CLI starts with
`isa_env(name)` added to its environment. Both are recorded (`isa_in_force`) beside results.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

__all__ = ["ISA_PRESETS", "VectorUsage", "isa_env", "isa_in_force", "kernel_vector_usage", "vector_usage"]

# name -> (NUMBA_CPU_NAME, what it allows). An empty feature string makes LLVM use exactly the
# named CPU's features; without it numba adds the host's, and AVX-512 would leak into "avx2".
ISA_PRESETS: dict[str, tuple[str, str]] = {
    "native": ("", "the host CPU's full ISA (numba's default)"),
    "x86-64-v4": ("x86-64-v4", "AVX-512 (F, BW, CD, DQ, VL)"),
    "x86-64-v3": ("x86-64-v3", "AVX2 + FMA, no AVX-512"),
    "x86-64-v2": ("x86-64-v2", "SSE4.2, no AVX"),
    "x86-64": ("x86-64", "SSE2 only"),
}
_REG = re.compile(r"%([xyz])mm\d+")
_FP_ARITH = re.compile(r"^\s*v?(?:add|sub|mul|div|fmadd\d*|fnmadd\d*|fmsub\d*)([ps])s\b")
_FUNC = re.compile(r"^([^\s.][^\s:]*):\s*$")


@dataclass(frozen=True)
class VectorUsage:
    """Per register class (x, y, z): distinct registers named, instructions naming one, float add/mul/fma
    on one (`arithmetic`), and of those the packed ones (`packed`; the rest are scalar, ss)."""

    registers: dict[str, int] = field(default_factory=dict)
    instructions: dict[str, int] = field(default_factory=dict)
    arithmetic: dict[str, int] = field(default_factory=dict)
    packed: dict[str, int] = field(default_factory=dict)

    def widest_arithmetic(self) -> str:
        """'zmm', 'ymm', 'xmm' or 'none': the widest register class any float add/mul/fma uses."""
        for cls in "zyx":
            if self.arithmetic.get(cls):
                return f"{cls}mm"
        return "none"


def _kernel_bodies(asm: str) -> list[str]:
    """Lines of the numba-ABI functions only; the cpython./cfunc. wrappers just marshal arguments."""
    keep, out = False, []
    for line in asm.splitlines():
        m = _FUNC.match(line)
        if m:
            name = m.group(1)
            keep = not (name.startswith(("cpython.", "cfunc.", "_ZN7cpython")) or name.startswith("."))
        elif keep:
            out.append(line)
    return out


def vector_usage(asm: str) -> VectorUsage:
    """Count xmm/ymm/zmm use in the kernel functions of an assembly listing (AT&T syntax, as numba prints)."""
    regs: dict[str, set[str]] = {c: set() for c in "xyz"}
    instr = dict.fromkeys("xyz", 0)
    arith = dict.fromkeys("xyz", 0)
    packed = dict.fromkeys("xyz", 0)
    for line in _kernel_bodies(asm):
        found = _REG.findall(line)
        if not found:
            continue
        for m in re.finditer(r"%([xyz])mm(\d+)", line):
            regs[m.group(1)].add(m.group(2))
        for cls in set(found):
            instr[cls] += 1
        op = _FP_ARITH.match(line)
        if op:
            cls = max(found, key="xyz".index)  # the widest operand is the operation's width
            arith[cls] += 1
            packed[cls] += op.group(1) == "p"
    return VectorUsage({c: len(r) for c, r in regs.items()}, instr, arith, packed)


def kernel_vector_usage(name: str, index_bits: int = 64) -> tuple[VectorUsage, str]:
    """Compile registry kernel `name` (numba_w*) afresh and count its vector registers; also return the asm."""
    import torch

    from kernels.numba_bag import get_numba_bag

    asm = get_numba_bag(name).asm(torch.int64 if index_bits == 64 else torch.int32)
    return vector_usage(asm), asm


def isa_env(name: str) -> dict[str, str]:
    """Environment variables that make numba target preset `name` in a new process ({} for native)."""
    if name not in ISA_PRESETS:
        raise ValueError(f"unknown ISA {name!r}; choose one of: {', '.join(ISA_PRESETS)}")
    cpu = ISA_PRESETS[name][0]
    return {"NUMBA_CPU_NAME": cpu, "NUMBA_CPU_FEATURES": ""} if cpu else {}


def isa_in_force() -> dict[str, str]:
    """The CPU name and features numba compiles for in this process, as recorded beside results."""
    import numba
    from llvmlite import binding

    cpu = numba.config.CPU_NAME or binding.get_host_cpu_name()
    features = numba.config.CPU_FEATURES
    shown = "host" if features is None else (features or "that cpu model's default features")
    return {"numba_cpu_name": cpu, "numba_cpu_features": shown}
