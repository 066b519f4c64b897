"""Compiled numba embedding-bag loops whose arithmetic is explicit W-lane LLVM vectors (float32, or float64).

Why explicit vectors: numba turns SLP vectorisation off, so W scalar accumulators stay
scalar, and the loop vectoriser picks its own width. Here each vector operation is an
intrinsic that emits `<W x float>` IR, so `W` is the width in the machine code (xmm for
4 lanes, ymm for 8, zmm for 16 on AVX-512; a narrower ISA splits wide vectors). A tile
holds U such vectors, U independent accumulators, so the add latency is hidden.

Everything that shapes the generated code lives in this file: numba's on-disk cache
checks only the defining file's timestamp. The kernels take raw addresses (ints), not
arrays, so a call costs the dispatcher a few integer checks; callers own the memory and
its validity (indices in range, offsets CSR), as for every unchecked kernel.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from llvmlite import ir
from numba import carray, literally, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["MAX_TILE", "NumbaKernels", "Op", "build", "inspect_asm"]

MAX_TILE = 8  # vectors per tile, at most; and at most _TILE_MAX_BYTES of a row
# A tile of 512 B (D=128 float32 as 8 zmm) ran slower than two passes of 256 B, whose second pass finds the rows'
# other lines fetched by the hardware prefetcher: numba_w16, 1 thread, L=20, no prefetch, medians of 7 interleaved
# rounds, 256 against 512 B: 1e4 x 128 uniform 284 against 315 us (B=2048), 36.6 against 41.0 (B=256), Zipf 1.15
# 178 against 192; 1e3 x 128 198 against 205. 128 B tiles (4 passes) ran level with 256 at D=128, and -4% to +2%
# at D=64. Narrower widths keep 8 vectors (numba_w8: 256 B; measured on numba_w16 only).
_TILE_MAX_BYTES = 256
_I32 = ir.IntType(32)
_LINE_BYTES = 64  # cache line, the prefetch step
# Rows of at most this many bytes prefetch whole in a rolled loop per lookup; longer rows prefetch each tile's lines,
# unrolled, in the pass that reads them. Measured on a 32 MiB-L3 Zen 4 (numba_w16, 1 thread, B=2048, L=20, medians
# of 5-7 interleaved rounds), the unrolled form against the rolled one: D=64 Zipf 1.15 over 1M rows 253 against
# 324 us, D=128 Zipf 483 against 682, D=64 over 1e5 rows (L3) 280 against 317, D=64 DRAM 743 against 791, D=128 DRAM
# 1,413 against 1,741; but D=16 DRAM 298 against 249 and D=32 DRAM 393 against 317 (small random rows run faster
# with the slower issue of the rolled loop).
_WHOLE_ROW_MAX_BYTES = 2 * _LINE_BYTES


def _literal(t: types.Type) -> int | None:
    """A compile-time constant's value; None asks numba to retype the call with literals."""
    if isinstance(t, types.IntegerLiteral | types.BooleanLiteral):
        return int(t.literal_value)
    return None


@intrinsic
def _ptr(typingctx, addr, dtype_code):
    """An address (int) as a typed pointer; dtype_code 0 = float32, 1 = int32, 2 = int64, 3 = float64."""
    code = _literal(dtype_code)
    if code is None:
        return None
    target = (types.float32, types.int32, types.int64, types.float64)[code]

    def codegen(context, builder, sig, args):
        return builder.inttoptr(args[0], context.get_value_type(sig.return_type))

    return types.CPointer(target)(addr, dtype_code), codegen


@intrinsic
def _at(typingctx, arr, i):
    """arr[i] with no wraparound or bounds check (the index is known valid)."""

    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        return builder.load(builder.gep(ary.data, [context.cast(builder, args[1], sig.args[1], types.intp)]))

    return arr.dtype(arr, i), codegen


def _elem_ptr(context, builder, aryty, aryval, row, rowty, col, colty, extra=0):
    """Address of arr2d[row, col + extra] for a C-contiguous array, no checks."""
    ary = context.make_array(aryty)(context, builder, aryval)
    intp = cgutils.intp_t
    size = ir.Constant(intp, context.get_abi_sizeof(context.get_data_type(aryty.dtype)))
    r = context.cast(builder, row, rowty, types.intp)
    c = builder.add(context.cast(builder, col, colty, types.intp), ir.Constant(intp, extra))
    offset = builder.add(builder.mul(r, builder.extract_value(ary.strides, 0)), builder.mul(c, size))
    return builder.inttoptr(builder.add(builder.ptrtoint(ary.data, intp), offset), ary.data.type)


def _vec(context, dtype, width):
    """<width x float> or <width x double>: the vector type of `width` lanes of a numba float dtype."""
    return ir.VectorType(context.get_data_type(dtype), width)


def _vectors(context, builder, sig, args, arr_pos, width, count):
    """Pointers to `count` consecutive width-lane vectors starting at arr[row, col]."""
    vec = _vec(context, sig.args[arr_pos].dtype, width).as_pointer()
    a, r, c = arr_pos, arr_pos + 1, arr_pos + 2
    return [
        builder.bitcast(
            _elem_ptr(context, builder, sig.args[a], args[a], args[r], sig.args[r], args[c], sig.args[c], u * width),
            vec,
        )
        for u in range(count)
    ]


def _slots(builder, acc, vec, count):
    t = builder.bitcast(acc, ir.ArrayType(vec, count).as_pointer())
    return [builder.gep(t, [_I32(0), _I32(u)]) for u in range(count)]


def _splat(context, builder, value, valty, dtype, width):
    vec = _vec(context, dtype, width)
    one = builder.insert_element(ir.Constant(vec, None), context.cast(builder, value, valty, dtype), _I32(0))
    return builder.shuffle_vector(one, one, ir.Constant(ir.VectorType(_I32, width), None))


def _fma(builder, vec):
    suffix = f"v{vec.count}f{64 if isinstance(vec.element, ir.DoubleType) else 32}"
    return cgutils.get_or_insert_function(builder.module, ir.FunctionType(vec, [vec] * 3), f"llvm.fma.{suffix}")


@intrinsic
def _tile_zero(typingctx, like, width, count):
    """A zeroed tile of `count` width-lane accumulators of like.dtype (a stack slot LLVM keeps in registers)."""
    w, u = _literal(width), _literal(count)
    if w is None or u is None:
        return None

    def codegen(context, builder, sig, args):
        tile = ir.ArrayType(_vec(context, like.dtype, w), u)
        slot = cgutils.alloca_once(builder, tile)
        builder.store(ir.Constant(tile, None), slot)
        return builder.bitcast(slot, context.get_value_type(sig.return_type))

    return types.CPointer(like.dtype)(like, width, count), codegen


@intrinsic
def _tile_acc(typingctx, acc, scale, arr, row, col, width, count, weighted):
    """acc[u] += (scale *) arr[row, col + u*width : ... + width] for u < count; fadd, or FMA when weighted."""
    w, u, weighted_ = _literal(width), _literal(count), _literal(weighted)
    if w is None or u is None or weighted_ is None:
        return None

    def codegen(context, builder, sig, args):
        vec = _vec(context, arr.dtype, w)
        s = _splat(context, builder, args[1], sig.args[1], arr.dtype, w)
        for slot, src in zip(
            _slots(builder, args[0], vec, u), _vectors(context, builder, sig, args, 2, w, u), strict=True
        ):
            x = builder.load(src, align=4)
            a = builder.load(slot)
            builder.store(builder.call(_fma(builder, vec), [s, x, a]) if weighted_ else builder.fadd(a, x), slot)
        return context.get_dummy_value()

    return types.void(acc, scale, arr, row, col, width, count, weighted), codegen


@intrinsic
def _tile_store(typingctx, acc, arr, row, col, width, count):
    """arr[row, col + u*width : ... + width] = acc[u] for u < count."""
    w, u = _literal(width), _literal(count)
    if w is None or u is None:
        return None

    def codegen(context, builder, sig, args):
        vec = _vec(context, arr.dtype, w)
        for slot, dst in zip(
            _slots(builder, args[0], vec, u), _vectors(context, builder, sig, args, 1, w, u), strict=True
        ):
            builder.store(builder.load(slot), dst, align=4)
        return context.get_dummy_value()

    return types.void(acc, arr, row, col, width, count), codegen


@intrinsic
def _vec_axpy(typingctx, dst, drow, src, srow, col, scale, width, accumulate):
    """dst[drow, col:col+width] = scale * src[srow, col:col+width] (+ dst[...] when accumulate)."""
    w, acc = _literal(width), _literal(accumulate)
    if w is None or acc is None:
        return None

    def codegen(context, builder, sig, args):
        vec = _vec(context, dst.dtype, w)
        s = _splat(context, builder, args[5], sig.args[5], dst.dtype, w)
        d, x = (
            builder.bitcast(
                _elem_ptr(context, builder, sig.args[i], args[i], args[i + 1], sig.args[i + 1], args[4], sig.args[4]),
                vec.as_pointer(),
            )
            for i in (0, 2)
        )
        xv = builder.load(x, align=4)
        out = builder.call(_fma(builder, vec), [s, xv, builder.load(d, align=4)]) if acc else builder.fmul(s, xv)
        builder.store(out, d, align=4)
        return context.get_dummy_value()

    return types.void(dst, drow, src, srow, col, scale, width, accumulate), codegen


@intrinsic
def _prefetch_tile(typingctx, arr, row, col, width, count):
    """Software prefetch of the cache lines of arr[row, col : col + count*width] (at least one), unrolled, into L2
    (llvm.prefetch read, locality 2 = prefetcht1; t0 measured worse); returns the columns those lines span."""
    w, u = _literal(width), _literal(count)
    if w is None or u is None:
        return None
    itemsize = arr.dtype.bitwidth // 8
    lines = max(1, w * u * itemsize // _LINE_BYTES)

    def codegen(context, builder, sig, args):
        i8p = ir.IntType(8).as_pointer()
        p = builder.bitcast(
            _elem_ptr(context, builder, sig.args[0], args[0], args[1], sig.args[1], args[2], sig.args[2]), i8p
        )
        fnty = ir.FunctionType(ir.VoidType(), [i8p, _I32, _I32, _I32])
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch.p0i8")
        for j in range(lines):
            builder.call(fn, [builder.gep(p, [_I32(j * _LINE_BYTES)]), _I32(0), _I32(2), _I32(1)])
        return ir.Constant(cgutils.intp_t, lines * _LINE_BYTES // itemsize)

    return types.intp(arr, row, col, width, count), codegen


@njit(inline="always", _nrt=False)
def _prefetch_row(w, row):  # pragma: no cover - compiled
    """Prefetch all of w[row], one cache line per iteration."""
    for c in range(0, w.shape[1], _LINE_BYTES // w.itemsize):
        _prefetch_tile(w, row, c, 1, 1)


@njit(inline="always", _nrt=False)
def _pass(w, idx, psw, has_psw, out, b, start, end, d0, dist, kend, width, count, whole):  # pragma: no cover
    """out[b, d0 : d0 + count*width] = sum over the bag's lookups; prefetches `dist` lookups ahead: whole rows
    when `whole`, else the lines of this tile's columns."""
    acc = _tile_zero(w, width, count)
    split = start  # lookups [start, split) prefetch; the chunk's last `dist` lookups have nothing left to
    if dist > 0 and whole:
        split, last = end, kend - 1
        for k in range(start, end):
            _prefetch_row(w, _at(idx, min(k + dist, last)))
            if has_psw:
                _tile_acc(acc, _at(psw, k), w, _at(idx, k), d0, width, count, True)
            else:
                _tile_acc(acc, 1.0, w, _at(idx, k), d0, width, count, False)
    elif dist > 0:  # no clamp per lookup: the loop stops where k + dist would leave the chunk
        split = max(start, min(end, kend - dist))
        if has_psw:
            for k in range(start, split):
                _prefetch_tile(w, _at(idx, k + dist), d0, width, count)
                _tile_acc(acc, _at(psw, k), w, _at(idx, k), d0, width, count, True)
        else:
            for k in range(start, split):
                _prefetch_tile(w, _at(idx, k + dist), d0, width, count)
                _tile_acc(acc, 1.0, w, _at(idx, k), d0, width, count, False)
    if has_psw:
        for k in range(split, end):
            _tile_acc(acc, _at(psw, k), w, _at(idx, k), d0, width, count, True)
    else:
        for k in range(split, end):
            _tile_acc(acc, 1.0, w, _at(idx, k), d0, width, count, False)
    _tile_store(acc, out, b, d0, width, count)


@njit(inline="always", _nrt=False)
def _tile_dist(w, d0, dist, whole):  # pragma: no cover - compiled
    """Prefetch distance of the pass starting at column d0: whole rows in the first pass; else each pass that starts
    a cache line fetches the lines its tile covers (tiles shrink by halves, so together they cover the row)."""
    if whole:
        return dist if d0 == 0 else 0
    return dist if d0 % (_LINE_BYTES // w.itemsize) == 0 else 0


@njit(inline="always", _nrt=False)
def _forward_bags(w, idx, off, psw, has_psw, out, b0, b1, dist, width, tile):  # pragma: no cover - compiled
    """Bags [b0, b1): D in tiles of `tile` (8 at most), 4, 2, 1 vectors of `width` lanes, then single lanes."""
    dim = w.shape[1]
    kend = _at(off, b1)
    whole = dim * w.itemsize <= _WHOLE_ROW_MAX_BYTES
    for b in range(b0, b1):
        start, end = _at(off, b), _at(off, b + 1)
        d0 = 0
        while d0 + tile * width <= dim:
            pf = _tile_dist(w, d0, dist, whole)
            _pass(w, idx, psw, has_psw, out, b, start, end, d0, pf, kend, width, tile, whole)
            d0 += tile * width
        if d0 + 4 * width <= dim:
            _pass(w, idx, psw, has_psw, out, b, start, end, d0, _tile_dist(w, d0, dist, whole), kend, width, 4, whole)
            d0 += 4 * width
        if d0 + 2 * width <= dim:
            _pass(w, idx, psw, has_psw, out, b, start, end, d0, _tile_dist(w, d0, dist, whole), kend, width, 2, whole)
            d0 += 2 * width
        if d0 + width <= dim:
            _pass(w, idx, psw, has_psw, out, b, start, end, d0, _tile_dist(w, d0, dist, whole), kend, width, 1, whole)
            d0 += width
        while d0 < dim:
            _pass(w, idx, psw, has_psw, out, b, start, end, d0, _tile_dist(w, d0, dist, whole), kend, 1, 1, whole)
            d0 += 1


@njit(inline="always", _nrt=False)
def _row_axpy(dst, drow, src, srow, s, width, accumulate):  # pragma: no cover - compiled
    """dst[drow] = s * src[srow] (+ dst[drow] when accumulate), in width-lane vectors, then single lanes."""
    dim = dst.shape[1]
    d0 = 0
    while d0 + width <= dim:
        _vec_axpy(dst, drow, src, srow, d0, s, width, accumulate)
        d0 += width
    while d0 < dim:
        _vec_axpy(dst, drow, src, srow, d0, s, 1, accumulate)
        d0 += 1


@njit(inline="always", _nrt=False)
def _lookup_grads(g, off, psw, has_psw, vals, b0, b1, width):  # pragma: no cover - compiled
    """vals[k] = psw[k] * g[bag(k)] for the lookups of bags [b0, b1)."""
    for b in range(b0, b1):
        for k in range(_at(off, b), _at(off, b + 1)):
            _row_axpy(vals, k, g, b, _at(psw, k) if has_psw else 1.0, width, False)


@njit(inline="always", _nrt=False)
def _owner(row, parts):  # pragma: no cover - compiled
    """Which of `parts` threads updates `row`: a multiplicative hash, so hot (Zipf) rows spread evenly."""
    return (((row * 2654435761) & 0xFFFFFFFF) * parts) >> 32


@njit(inline="always", _nrt=False)
def _sgd_rows(w, idx, off, psw, has_psw, g, lr, part, parts, dist, width):  # pragma: no cover - compiled
    """w[r] -= lr * psw[k] * g[bag(k)] for every lookup k whose row r this part owns, in lookup order."""
    last = idx.shape[0] - 1
    for b in range(off.shape[0] - 1):
        for k in range(_at(off, b), _at(off, b + 1)):
            r = _at(idx, k)
            if parts > 1 and _owner(r, parts) != part:
                continue
            if dist > 0:
                ahead = _at(idx, min(k + dist, last))
                if parts == 1 or _owner(ahead, parts) == part:
                    _prefetch_row(w, ahead)
            _row_axpy(w, r, g, b, -lr * _at(psw, k) if has_psw else -lr, width, True)


@njit(inline="always", _nrt=False)
def _chunk_start(off, c, chunks):  # pragma: no cover - compiled
    """First bag of chunk c when B bags are cut into `chunks` runs of about equal lookups."""
    nbags = off.shape[0] - 1
    if c >= chunks:
        return nbags
    return min(np.searchsorted(off, (off[nbags] * c) // chunks), nbags)


@njit(cache=True)
def _run_chunk(
    op,
    w_a,
    E,
    D,
    idx_a,
    N,
    off_a,
    B,
    psw_a,
    has_psw,
    bd_a,
    nd_a,
    lr,
    dist,
    c,
    chunks,
    width,
    tile,
    idx_code,
    float_code,
):  # pragma: no cover
    """Chunk c of `chunks` of one Op; compiled once per (width, tile, idx_code, float_code), all literals."""
    literally(width)
    literally(tile)
    literally(idx_code)
    literally(float_code)
    w, bd = carray(_ptr(w_a, float_code), (E, D)), carray(_ptr(bd_a, float_code), (B, D))
    idx, off = carray(_ptr(idx_a, idx_code), N), carray(_ptr(off_a, idx_code), B + 1)
    psw = carray(_ptr(psw_a, float_code), N)
    b0, b1 = _chunk_start(off, c, chunks), _chunk_start(off, c + 1, chunks)
    if op == 0:
        _forward_bags(w, idx, off, psw, has_psw, bd, b0, b1, dist, width, tile)
    elif op == 1:
        _lookup_grads(bd, off, psw, has_psw, carray(_ptr(nd_a, float_code), (N, D)), b0, b1, width)
    else:
        _sgd_rows(w, idx, off, psw, has_psw, bd, lr, c, chunks, dist, width)


class Op:
    """What a `parallel` call does (an int, so one compiled parallel region serves all three)."""

    FORWARD = 0  # out (B, D) = pooled rows; work split into `chunks` runs of bags with equal lookups
    LOOKUP_GRADS = 1  # vals (N, D) = psw * grad_out[bag]; split like FORWARD
    SGD = 2  # w[r] -= lr * psw * grad_out[bag]; thread `part` owns the rows that hash to it


class NumbaKernels(NamedTuple):
    """The compiled entry points for one (width, index dtype, float dtype); every argument is an int, float or bool.

    Addresses: w (E, D); idx (N,) and off (B + 1,) of the index dtype; psw (N,), read only when
    has_psw; bd (B, D), the output (FORWARD) or grad_out (LOOKUP_GRADS, SGD); nd (N, D), the
    per-lookup gradients (LOOKUP_GRADS). All float arrays have the float dtype.
    """

    serial: object  # (op, w, E, D, idx, N, off, B, psw, has_psw, bd, nd, lr, dist, chunks): chunks in turn
    parallel: object  # the same arguments; chunks run in parallel (numba threads)


def _tile(width: int, float_bits: int) -> int:
    """Vectors per forward tile: MAX_TILE, or fewer where the tile would pass _TILE_MAX_BYTES."""
    return max(1, min(MAX_TILE, _TILE_MAX_BYTES * 8 // (width * float_bits)))


def _codes(index_bits: int, float_bits: int) -> tuple[int, int]:
    if index_bits not in (32, 64):
        raise ValueError(f"index_bits {index_bits} is not 32 or 64")
    if float_bits not in (32, 64):
        raise ValueError(f"float_bits {float_bits} is not 32 or 64")
    return (1 if index_bits == 32 else 2), (0 if float_bits == 32 else 3)


def build(width: int, index_bits: int, float_bits: int = 32) -> NumbaKernels:
    """Compile-on-first-call kernels working in blocks of `width` lanes, for int32/int64 indices.

    Args:
        width: lanes per vector, 1, 4, 8 or 16.
        index_bits: 32 or 64, the dtype of indices and offsets.
        float_bits: 32 (the benchmarked case) or 64 (for gradcheck), the dtype of tables and gradients.
    Returns:
        NumbaKernels whose dispatchers cache their machine code on disk.
    """
    if width not in (1, 4, 8, 16):
        raise ValueError(f"width {width} is not one of 1, 4, 8, 16")
    W, TILE, (IDX, FLT) = width, _tile(width, float_bits), _codes(index_bits, float_bits)

    @njit(cache=True)
    def serial(op, w_a, E, D, idx_a, N, off_a, B, psw_a, has_psw, bd_a, nd_a, lr, dist, chunks):  # pragma: no cover
        for c in range(chunks):
            _run_chunk(
                op, w_a, E, D, idx_a, N, off_a, B, psw_a, has_psw, bd_a, nd_a, lr, dist, c, chunks, W, TILE, IDX, FLT
            )

    @njit(cache=True, parallel=True)
    def parallel(op, w_a, E, D, idx_a, N, off_a, B, psw_a, has_psw, bd_a, nd_a, lr, dist, chunks):  # pragma: no cover
        for c in prange(chunks):
            i = np.int64(c)
            _run_chunk(
                op, w_a, E, D, idx_a, N, off_a, B, psw_a, has_psw, bd_a, nd_a, lr, dist, i, chunks, W, TILE, IDX, FLT
            )

    return NumbaKernels(serial, parallel)


def inspect_asm(width: int, index_bits: int, float_bits: int = 32) -> str:
    """Assembly of the chunk loops (all three ops) for this width and these dtypes.

    Compiled afresh, without the disk cache: numba cannot disassemble code it loaded from there.
    """
    codes = (width, _tile(width, float_bits), *_codes(index_bits, float_bits))
    for sig in _run_chunk.signatures:  # compiled in this process (not loaded from disk): reuse it
        if tuple(t.literal_value for t in sig[-4:]) == codes and not _run_chunk.stats.cache_hits[sig]:
            return _run_chunk.inspect_asm(sig)
    fresh = njit(_run_chunk.py_func)
    off = np.zeros(1, np.int32 if index_bits == 32 else np.int64)  # zero bags: the call only compiles
    fresh(0, 0, 0, 0, 0, 0, off.ctypes.data, 0, 0, False, 0, 0, 0.0, 0, 0, 1, *codes)
    return fresh.inspect_asm(fresh.signatures[0])
