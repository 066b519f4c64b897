"""STREAM-style copy/triad loops and a random-gather (embedding-bag-shaped) loop, compiled with numba.

Each loop is parallel over `nchunks` private chunks (one per thread) and repeats its sweep `reps`
times inside the compiled code, so a cache-resident working set is timed without Python or
thread-pool overhead per sweep. Compiled on first use and cached on disk by numba.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

__all__ = ["kernels"]


@functools.cache
def kernels() -> dict[str, Callable[..., Any]]:
    """{'copy', 'triad', 'gather'}: numba-compiled loops (imports numba on first call)."""
    import numpy as np
    from numba import njit, prange

    # The sweep over one chunk is its own function taking slices: with plain index ranges inside the
    # prange body LLVM does not vectorise the loop (measured: 5 GB/s instead of ~200 GB/s in L1).
    @njit(fastmath=True, cache=True, inline="never")
    def _copy_chunk(a, b, reps):
        for _ in range(reps):
            for i in range(a.shape[0]):
                b[i] = a[i]

    @njit(fastmath=True, cache=True, inline="never")
    def _triad_chunk(a, b, c, s, reps):
        for r in range(reps):
            q = s + np.float32(r)  # a different scalar per sweep: no sweep is a provable repeat of the last
            for i in range(a.shape[0]):
                a[i] = b[i] + q * c[i]

    @njit(parallel=True, fastmath=True, cache=True)
    def copy(a, b, nchunks, reps):  # b = a, per chunk, reps times; chunk t is [t*n//k, (t+1)*n//k): all of it
        n = a.shape[0]
        for t in prange(nchunks):
            lo, hi = t * n // nchunks, (t + 1) * n // nchunks
            _copy_chunk(a[lo:hi], b[lo:hi], reps)

    @njit(parallel=True, fastmath=True, cache=True)
    def triad(a, b, c, s, nchunks, reps):  # a = b + s * c, per chunk, reps times
        n = a.shape[0]
        for t in prange(nchunks):
            lo, hi = t * n // nchunks, (t + 1) * n // nchunks
            _triad_chunk(a[lo:hi], b[lo:hi], c[lo:hi], s, reps)

    @njit(parallel=True, fastmath=True, cache=True)
    def gather(table, idx, out, pooling, nchunks):  # out[b] = sum of table rows idx[b*L : (b+1)*L]
        nbags, dim = out.shape
        for t in prange(nchunks):
            for b in range(t * nbags // nchunks, (t + 1) * nbags // nchunks):
                for d in range(dim):
                    out[b, d] = 0.0
                for j in range(b * pooling, (b + 1) * pooling):
                    row = idx[j]
                    for d in range(dim):
                        out[b, d] += table[row, d]

    return {"copy": copy, "triad": triad, "gather": gather}
