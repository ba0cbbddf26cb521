"""Compiled CPU rendering for :mod:`vscene_engine.render.rasterize` (numba). Entry points: :func:`render_grad`
(differentiable, everything compiled), :func:`render_nograd` (forward only) and :func:`composite` (differentiable
compositing of an already projected scene: the fallback when :func:`grad_usable`'s guarded first call fails, and for
``antialiased`` or cameras that require grad, where the projection stays in torch autograd).

:func:`render_grad` (fitting): the forward of :func:`render_nograd` plus a compiled backward — the tile pass
:func:`_backward`, the fixed-order reduction :func:`_reduce_pos` (parallel over Gaussians) and
:func:`_project_backward`, the hand-written derivative of the projection (quaternion/scale -> camera-space factor ->
EWA 2D covariance -> conic, 2D mean, depth, SH colour incl. its view-direction term, opacity) — in one
``torch.autograd.Function``, so no torch graph is built over the
Gaussians; equal to the torch backend's autograd to ~1e-8 relative (tests). Without autograd (no input requires
grad, or grad mode off: the coarse video, previews), :func:`render_nograd` compiles: :func:`_project` (EWA
projection, SH colour and culling, float64, the math of ``projection.project_gaussians``, parallel over blocks of
Gaussians), :func:`_depth_order` (a stable radix sort of the depths: exact depth order, ties in scene order),
:func:`_bin_tiles_par` (parallel binning, per-tile lists in depth order) and the same :func:`_forward` kernel. Its output equals the torch backend to ~1e-12 on float64 scenes;
on float32 scenes it is closer to the float64 reference than the float32 torch projection (it projects in float64).

``composite(gp, extent, width, height, tile)`` takes the projected Gaussians already in exact depth order
(ties in scene order) and returns, per pixel, the composited colour ``C [H,W,3] = Σ wᵢ cᵢ``, depth moment
``D [H,W] = Σ wᵢ zᵢ`` and final transmittance ``T [H,W] = Π (1 - αᵢ)`` with ``wᵢ = αᵢ Tᵢ`` — as a
``torch.autograd.Function`` whose backward is hand-written (3DGS / gsplat: a back-to-front pass that re-derives
``Tᵢ = Tᵢ₊₁ / (1 - αᵢ)``).

Image formation (the same rules as the torch backend and the brute-force reference in the tests):
``σ = ½(a dx² + c dy²) + b dx dy`` with ``(dx, dy) = pixel centre - mean``; ``α = min(0.999, o·exp(-σ))``;
contributions with ``σ < 0`` or ``α < 1/255`` are skipped; a pixel stops *before* the Gaussian that would bring its
transmittance to ``T ≤ 1e-4``. A Gaussian is visited only at the pixels of its exact opacity-aware extent (the padded
``extent`` half-widths from projection: outside it ``α < 1/255`` holds exactly), so nothing is truncated.
All arithmetic is float64 whatever the input dtype (the per-pixel work is scalar, float64 costs the same as float32
here); outputs are cast back to the input dtype.

Parallelism: ``prange`` over 16×16 tiles (dynamic chunks of a few tiles, so uneven tiles balance); each tile keeps its
pixel state locally. The backward writes one gradient row per (Gaussian, tile) intersection, reduced afterwards in a
fixed order, so results do not depend on the thread count.

Thread policy (a browser or another CPU-bound neighbour should cost us only its share of the cores):

* numba's ``workqueue`` layer (:func:`configure_threads`): idle workers sleep on a condition variable, they never
  spin; calls are serialised by a lock (that layer is not re-entrant). A user's ``NUMBA_THREADING_LAYER`` wins.
* threads per call (:func:`num_threads`): ``torch.get_num_threads()`` — one knob for the whole engine — capped by the
  CPUs this process may use (``os.sched_getaffinity``) and ``NUMBA_NUM_THREADS``; tiles are handed out dynamically
  (``set_parallel_chunksize``), so a worker slowed by a neighbour just takes fewer tiles.
* the torch glue around the kernel (projection, SH, sort, and their backward) runs on ``TORCH_GLUE_THREADS`` = 1
  torch thread (:class:`torch_threads`): torch's OpenMP pool spin-waits at every op's barrier, which under load costs
  5x on the projection's ~50 small ops.
* on-disk compile cache: ``cache=True`` (next to this file, else numba's per-user cache folder); where neither is
  writable the kernels compile in memory on first use (tens of seconds on a busy 2-core machine, once per process).
"""
from __future__ import annotations

import math
import os
import threading
import warnings

import numpy as np
import torch

from ..core import sh as _sh

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
TILE = 16  # tile edge in pixels
_FAST_TILE = 16  # tiles up to this edge run the vectorised kernels (a row's pixels are bits of an int64 mask)
_CHUNK_TILES = 4  # tiles handed to a worker at a time (dynamic scheduling)
TORCH_GLUE_THREADS = 1  # torch intra-op threads for the projection around the compiled loop (see torch_threads)

try:  # numba is optional: without it render() uses the torch backend
    import numba
    from numba import prange

    _IMPORT_ERROR = ""
except Exception as e:  # pragma: no cover - exercised only where numba is absent
    numba = None
    prange = range
    _IMPORT_ERROR = f"{type(e).__name__}: {e}"


def _jit(fn=None, *, parallel=False):
    """``numba.njit`` with the on-disk cache when a cache folder is writable, without it otherwise.

    numba caches next to this file or, when that is read-only, in the user's cache folder; where neither works the
    decorator raises and we compile in memory instead (a few seconds on the first call of each session)."""
    if numba is None:
        return fn if fn is not None else (lambda f: f)

    def wrap(f):
        try:
            return numba.njit(cache=True, parallel=parallel, fastmath=False, nogil=True)(f)
        except Exception:
            return numba.njit(cache=False, parallel=parallel, fastmath=False, nogil=True)(f)

    return wrap(fn) if fn is not None else wrap


# ------------------------------------------------------------------------------------------------ vector helpers
if numba is not None:
    from llvmlite import ir as _ir
    from numba.core import types as _types
    from numba.extending import intrinsic as _intrinsic

    @_intrinsic
    def _f64_bits(typingctx, x):
        """The IEEE bits of a float64 as an int64 (a bit cast)."""
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], _ir.IntType(64))
        return _types.int64(_types.float64), codegen

    @_intrinsic
    def _bits_f64(typingctx, x):
        """The float64 whose IEEE bits are the int64 ``x`` (a bit cast)."""
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], _ir.DoubleType())
        return _types.float64(_types.int64), codegen

    @_intrinsic
    def _ctz64(typingctx, x):
        """Number of trailing zero bits of ``x`` (x != 0): ``llvm.cttz``."""
        def codegen(context, builder, signature, args):
            i64 = _ir.IntType(64)
            fn = builder.module.declare_intrinsic("llvm.cttz", [i64], _ir.FunctionType(i64, [i64, _ir.IntType(1)]))
            return builder.call(fn, [args[0], _ir.Constant(_ir.IntType(1), 1)])
        return _types.int64(_types.int64), codegen
else:  # pragma: no cover - numba absent: nothing below is compiled or called
    _f64_bits = _bits_f64 = _ctz64 = None

_LOG2E = 1.4426950408889634
_ROUND = 6755399441055744.0  # 1.5 * 2**52: x + _ROUND - _ROUND rounds x to the nearest integer (|x| < 2**51)
_LN2_HI = 6.93147180369123816490e-01  # ln 2 in two parts (fdlibm): kf * _LN2_HI is exact for |kf| < 2**11
_LN2_LO = 1.90821492927058770002e-10
_Q2, _Q3, _Q4, _Q5, _Q6, _Q7, _Q8, _Q9, _Q10, _Q11, _Q12, _Q13 = [1.0 / math.factorial(n) for n in range(2, 14)]
S_CLAMP = 40.0  # σ is clamped to [0, S_CLAMP] before the vector exp: o·exp(-40) < 1/255 for every o <= O_FAST
O_FAST = 1e14  # a scene with a larger (or NaN) opacity is rendered by the scalar kernels


def _inline(f):
    return numba.njit(inline="always", fastmath=False, nogil=True)(f) if numba is not None else f


@_inline
def _exp_neg(s):
    """exp(-s) for s in [0, S_CLAMP], branch-free so that LLVM vectorises the loops that call it (numba's
    ``math.exp`` is a libm call, which stops vectorisation): s = k·ln2 - r with |r| <= ln2/2 (two-part ln 2),
    exp(-r) by its degree-13 Taylor polynomial (Estrin for the high terms, Horner for the last four; truncation
    < 1e-17 relative), times 2^k built from its exponent bits. Within ~1 ulp of ``math.exp`` (checked in the tests
    on 10^6 arguments)."""
    x = -s
    t = x * _LOG2E + _ROUND
    kf = t - _ROUND
    r = (x - kf * _LN2_HI) - kf * _LN2_LO
    r2 = r * r
    r4 = r2 * r2
    a0 = _Q4 + _Q5 * r
    a1 = _Q6 + _Q7 * r
    a2 = _Q8 + _Q9 * r
    a3 = _Q10 + _Q11 * r
    a4 = _Q12 + _Q13 * r
    h = (a0 + a1 * r2) + ((a2 + a3 * r2) + a4 * r4) * r4
    p = h * r + _Q3
    p = p * r + _Q2
    p = p * r + 1.0
    p = p * r + 1.0
    return p * _bits_f64((_f64_bits(t) + 1023) << 52)  # the low bits of t hold k (two's complement)


# ------------------------------------------------------------------------------------------------ kernels
@_jit
def _cut(o):
    """σ above which ``o·exp(-σ) < 1/255`` is certain (skips the exp); the margin keeps the exact alpha test the
    decision everywhere near the boundary."""
    return math.log(max(o, 1e-300) * 255.0) + 1e-6


@_jit
def _pixel_rects(gp, ext, width, height):
    """Inclusive pixel rectangle [x0, x1, y0, y1] of each Gaussian's extent, clipped to the image (x0 > x1: none)."""
    G = gp.shape[0]
    rect = np.empty((G, 4), np.int64)
    for g in range(G):
        mx, my, ex, ey = gp[g, 0], gp[g, 1], ext[g, 0], ext[g, 1]
        fx0, fx1 = math.ceil(mx - ex - 0.5), math.floor(mx + ex - 0.5)
        fy0, fy1 = math.ceil(my - ey - 0.5), math.floor(my + ey - 0.5)
        if not (fx0 <= width - 1 and fx1 >= 0 and fy0 <= height - 1 and fy1 >= 0):  # also catches NaN
            rect[g, 0], rect[g, 1], rect[g, 2], rect[g, 3] = 1, 0, 1, 0
            continue
        rect[g, 0] = int(max(fx0, 0.0))
        rect[g, 1] = int(min(fx1, width - 1.0))
        rect[g, 2] = int(max(fy0, 0.0))
        rect[g, 3] = int(min(fy1, height - 1.0))
    return rect




@_inline
def _tile_box(t, tiles_x, tile, width, height):
    """Pixels [X0, X1) x [Y0, Y1) of tile ``t`` (row-major tiles of ``tile`` px, the last ones clipped)."""
    X0, Y0 = (t % tiles_x) * tile, (t // tiles_x) * tile
    return X0, Y0, min(X0 + tile, width), min(Y0 + tile, height)


def _fast_ok(gp, ids, tile) -> bool:
    """Whether the vectorised kernels apply: tiles of <= _FAST_TILE px (a row's pixels are bits of an int64) and
    every opacity the tiles use <= O_FAST (their σ clamp at S_CLAMP relies on it; NaN fails the test too).
    Otherwise the scalar kernels render the whole image."""
    return tile <= _FAST_TILE and _opacities_at_most(gp, ids, O_FAST)


@_jit
def _opacities_at_most(gp, ids, limit):
    """True when ``gp[g, 5] <= limit`` for every g in ``ids`` (False on NaN); rows not in ``ids`` are not read."""
    for k in range(ids.shape[0]):
        if not gp[ids[k], 5] <= limit:
            return False
    return True


def _forward(gp, rect, offsets, ids, width, height, tile, tiles_x, out_c, out_d, out_t, out_stop):
    """Front-to-back compositing. gp [G,10] float64 (mx, my, a, b, c, o, z, r, g, b) in depth order.

    Writes out_c [H,W,3], out_d [H,W], out_t [H,W] and out_stop [H,W] (position, in the tile's list, of the Gaussian
    before which the pixel stopped; the list length if it never did). The vectorised :func:`_forward_fast` where
    :func:`_fast_ok`, else the scalar :func:`_forward_ref` (the same image to ~1 ulp)."""
    kernel = _forward_fast if _fast_ok(gp, ids, tile) else _forward_ref  # only the one used is compiled
    kernel(gp, rect, offsets, ids, width, height, tile, tiles_x, out_c, out_d, out_t, out_stop)


@_jit(parallel=True)
def _forward_ref(gp, rect, offsets, ids, width, height, tile, tiles_x, out_c, out_d, out_t, out_stop):
    """:func:`_forward` with scalar loops (any tile size): each Gaussian of a tile's list visits the pixels of its
    rectangle."""
    n_tiles = offsets.shape[0] - 1
    for t in prange(n_tiles):
        X0, Y0, X1, Y1 = _tile_box(t, tiles_x, tile, width, height)
        tw, th = X1 - X0, Y1 - Y0
        s, e = offsets[t], offsets[t + 1]
        T = np.ones((th, tw))
        C = np.zeros((th, tw, 3))
        D = np.zeros((th, tw))
        stop = np.full((th, tw), e - s, np.int64)
        live = tw * th
        for k in range(s, e):
            g = ids[k]
            mx, my, a, b, c, o, z = gp[g, 0], gp[g, 1], gp[g, 2], gp[g, 3], gp[g, 4], gp[g, 5], gp[g, 6]
            cut = _cut(o)
            for j in range(max(rect[g, 2], Y0), min(rect[g, 3], Y1 - 1) + 1):
                dy = j + 0.5 - my
                for i in range(max(rect[g, 0], X0), min(rect[g, 1], X1 - 1) + 1):
                    jj, ii = j - Y0, i - X0
                    if stop[jj, ii] != e - s:
                        continue
                    dx = i + 0.5 - mx
                    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                    if sigma < 0.0 or sigma > cut:
                        continue
                    alpha = min(ALPHA_MAX, o * math.exp(-sigma))
                    if alpha < ALPHA_MIN:
                        continue
                    t_new = T[jj, ii] * (1.0 - alpha)
                    if t_new <= T_MIN:
                        stop[jj, ii] = k - s
                        live -= 1
                        continue
                    w = alpha * T[jj, ii]
                    C[jj, ii, 0] += w * gp[g, 7]
                    C[jj, ii, 1] += w * gp[g, 8]
                    C[jj, ii, 2] += w * gp[g, 9]
                    D[jj, ii] += w * z
                    T[jj, ii] = t_new
            if live == 0:
                break
        out_c[Y0:Y1, X0:X1] = C
        out_d[Y0:Y1, X0:X1] = D
        out_t[Y0:Y1, X0:X1] = T
        out_stop[Y0:Y1, X0:X1] = stop


@_inline
def _fwd_window(st, jj, i0, xf0, mwin, mx, a, b, dy, cyy, o, cr, cg, cb, z, kf):
    """Four pixels (i0..i0+3 of tile row jj, lanes with bit l of ``mwin`` set) of one Gaussian in
    :func:`_forward_fast`, branch-free: a lane that is masked, has σ < 0 or α < 1/255 changes nothing (its
    weight is an exact 0); a lane whose transmittance would fall to <= T_MIN records the stop instead. The updates
    are selects, not masked stores, so LLVM vectorises the loop (4 x float64). Returns the bits of the lanes that
    stopped."""
    stopped = 0
    for l in range(4):
        i = i0 + l
        dx = ((xf0 + float(l)) + 0.5) - mx
        sigma = 0.5 * (a * dx * dx + cyy) + b * dx * dy
        alpha = min(ALPHA_MAX, o * _exp_neg(min(max(sigma, 0.0), S_CLAMP)))
        t_i = st[0, jj, i]
        t_new = t_i * (1.0 - alpha)
        ok = (((mwin >> l) & 1) != 0) & (sigma >= 0.0) & (alpha >= ALPHA_MIN)
        stp = ok & (t_new <= T_MIN)
        ae = alpha if (ok & (not stp)) else 0.0
        w = ae * t_i
        st[1, jj, i] += w * cr
        st[2, jj, i] += w * cg
        st[3, jj, i] += w * cb
        st[4, jj, i] += w * z
        st[0, jj, i] = t_i * (1.0 - ae)
        s5 = st[5, jj, i]
        st[5, jj, i] = s5 - (s5 - kf) * (1.0 if stp else 0.0)  # stop position (an exact integer in a float)
        stopped += np.int64(stp) << l
    return stopped


@_jit(parallel=True)
def _forward_fast(gp, rect, offsets, ids, width, height, tile, tiles_x, out_c, out_d, out_t, out_stop):
    """:func:`_forward` for tiles of <= 16 px, vectorised. The pixel state (T, C, D, stop) lives in one local
    array with 4 padding columns; a 16-bit mask per row holds the pixels still compositing. For each Gaussian and
    row, the mask of its x-range is walked in 4-pixel windows starting at the lowest live pixel (trailing-zero
    count), each window a branch-free :func:`_fwd_window`. The σ cut is left to the α >= 1/255 test (σ clamped to
    [0, S_CLAMP] for the exp, see :func:`_fast_ok`). Same decisions and stop positions as the scalar loop; colours
    and depths within a few ulp (the exp)."""
    n_tiles = offsets.shape[0] - 1
    for t in prange(n_tiles):
        X0, Y0, X1, Y1 = _tile_box(t, tiles_x, tile, width, height)
        tw, th = X1 - X0, Y1 - Y0
        s, e = offsets[t], offsets[t + 1]
        nsf = float(e - s)
        X0f = float(X0)
        st = np.zeros((6, _FAST_TILE, _FAST_TILE + 4))  # T, C (3), D, stop
        for jj in range(_FAST_TILE):
            for i in range(_FAST_TILE + 4):
                st[0, jj, i] = 1.0
                st[5, jj, i] = nsf
        rowmask = np.zeros(_FAST_TILE, np.int64)  # live pixels of each row (bit i: pixel X0 + i)
        for jj in range(th):
            rowmask[jj] = (1 << tw) - 1
        live = tw * th
        for k in range(s, e):
            g = ids[k]
            mx, my, a, b, c, o, z = gp[g, 0], gp[g, 1], gp[g, 2], gp[g, 3], gp[g, 4], gp[g, 5], gp[g, 6]
            cr, cg, cb = gp[g, 7], gp[g, 8], gp[g, 9]
            kf = float(k - s)
            xa = max(rect[g, 0], X0) - X0
            xb = min(rect[g, 1], X1 - 1) - X0
            ya = max(rect[g, 2], Y0)
            yb = min(rect[g, 3], Y1 - 1)
            span = ((1 << (xb + 1)) - 1) & ~((1 << xa) - 1)
            for j in range(ya, yb + 1):
                jj = j - Y0
                m = rowmask[jj] & span
                if m == 0:
                    continue
                dy = j + 0.5 - my
                cyy = c * dy * dy
                stopped = 0
                while m != 0:
                    i0 = min(max(_ctz64(m), 0), _FAST_TILE - 1)
                    mwin = (m >> i0) & 15
                    m &= ~(15 << i0)
                    stopped |= _fwd_window(st, jj, i0, X0f + float(i0), mwin, mx, a, b, dy, cyy, o, cr, cg, cb, z,
                                           kf) << i0
                if stopped != 0:
                    rowmask[jj] &= ~stopped
                    while stopped != 0:
                        stopped &= stopped - 1
                        live -= 1
            if live == 0:
                break
        for jj in range(th):
            for ii in range(tw):
                out_t[Y0 + jj, X0 + ii] = st[0, jj, ii]
                out_c[Y0 + jj, X0 + ii, 0] = st[1, jj, ii]
                out_c[Y0 + jj, X0 + ii, 1] = st[2, jj, ii]
                out_c[Y0 + jj, X0 + ii, 2] = st[3, jj, ii]
                out_d[Y0 + jj, X0 + ii] = st[4, jj, ii]
                out_stop[Y0 + jj, X0 + ii] = np.int64(st[5, jj, ii])


def _backward(gp, rect, offsets, ids, width, height, tile, tiles_x, t_final, stop_all, g_c, g_d, g_t, g_isect):
    """Back-to-front pass (3DGS): re-derives Tᵢ = Tᵢ₊₁/(1-αᵢ) and writes one gradient row per intersection,
    g_isect [n_isect, 10] = dL/d(mx, my, a, b, c, o, z, r, g, b), given dL/dC [H,W,3], dL/dD [H,W], dL/dT [H,W].

    With S = Σ_{j>i} w_j (c_j, z_j):  dL/dαᵢ = Tᵢ (cᵢ·gC + zᵢ gD) - (S·(gC, gD) + T_final gT) / (1 - αᵢ).
    The vectorised :func:`_backward_fast` where :func:`_fast_ok`, else the scalar :func:`_backward_ref`."""
    kernel = _backward_fast if _fast_ok(gp, ids, tile) else _backward_ref  # only the one used is compiled
    kernel(gp, rect, offsets, ids, width, height, tile, tiles_x, t_final, stop_all, g_c, g_d, g_t, g_isect)


@_jit(parallel=True)
def _backward_ref(gp, rect, offsets, ids, width, height, tile, tiles_x, t_final, stop_all, g_c, g_d, g_t, g_isect):
    """:func:`_backward` with scalar loops (any tile size)."""
    n_tiles = offsets.shape[0] - 1
    for t in prange(n_tiles):
        X0, Y0, X1, Y1 = _tile_box(t, tiles_x, tile, width, height)
        tw, th = X1 - X0, Y1 - Y0
        s, e = offsets[t], offsets[t + 1]
        T = t_final[Y0:Y1, X0:X1].copy()
        S = np.zeros((th, tw, 4))
        # entries at or behind every pixel's stop position took no part (the forward left the tile there): zero rows
        last = 0
        for j in range(Y0, Y1):
            for i in range(X0, X1):
                last = max(last, stop_all[j, i])
        for k in range(s + last, e):
            g_isect[k, :] = 0.0
        for k in range(s + last - 1, s - 1, -1):
            g = ids[k]
            mx, my, a, b, c, o, z = gp[g, 0], gp[g, 1], gp[g, 2], gp[g, 3], gp[g, 4], gp[g, 5], gp[g, 6]
            cr, cg, cb = gp[g, 7], gp[g, 8], gp[g, 9]
            cut = _cut(o)
            d_mx = d_my = d_a = d_b = d_c = d_o = d_z = d_r = d_g = d_b2 = 0.0
            for j in range(max(rect[g, 2], Y0), min(rect[g, 3], Y1 - 1) + 1):
                dy = j + 0.5 - my
                for i in range(max(rect[g, 0], X0), min(rect[g, 1], X1 - 1) + 1):
                    jj, ii = j - Y0, i - X0
                    if k - s >= stop_all[j, i]:
                        continue
                    dx = i + 0.5 - mx
                    sigma = 0.5 * (a * dx * dx + c * dy * dy) + b * dx * dy
                    if sigma < 0.0 or sigma > cut:
                        continue
                    gauss = math.exp(-sigma)
                    raw = o * gauss
                    alpha = min(ALPHA_MAX, raw)
                    if alpha < ALPHA_MIN:
                        continue
                    one_m = 1.0 - alpha
                    t_i = T[jj, ii] / one_m
                    w = alpha * t_i
                    gr, gg, gb, gd = g_c[j, i, 0], g_c[j, i, 1], g_c[j, i, 2], g_d[j, i]
                    d_r += w * gr
                    d_g += w * gg
                    d_b2 += w * gb
                    d_z += w * gd
                    after = S[jj, ii, 0] * gr + S[jj, ii, 1] * gg + S[jj, ii, 2] * gb + S[jj, ii, 3] * gd
                    dl_da = t_i * (cr * gr + cg * gg + cb * gb + z * gd) - (after + t_final[j, i] * g_t[j, i]) / one_m
                    S[jj, ii, 0] += w * cr
                    S[jj, ii, 1] += w * cg
                    S[jj, ii, 2] += w * cb
                    S[jj, ii, 3] += w * z
                    T[jj, ii] = t_i
                    if raw < ALPHA_MAX:  # the clamp passes no gradient
                        d_o += dl_da * gauss
                        dl_ds = -dl_da * alpha
                        d_a += 0.5 * dl_ds * dx * dx
                        d_b += dl_ds * dx * dy
                        d_c += 0.5 * dl_ds * dy * dy
                        d_mx -= dl_ds * (a * dx + b * dy)
                        d_my -= dl_ds * (b * dx + c * dy)
            row = g_isect[k]
            row[0], row[1], row[2], row[3], row[4] = d_mx, d_my, d_a, d_b, d_c
            row[5], row[6], row[7], row[8], row[9] = d_o, d_z, d_r, d_g, d_b2


    # planes of the local state of _backward_fast: T, S (4), dL/dC (3), dL/dD, T_final·dL/dT, then the 10 terms of
    # the window's lanes (the gradient rows' columns)
_PT, _PS, _PG, _PGD, _PTG, _PA = 0, 1, 5, 8, 9, 10


@_inline
def _bwd_window(st, jj, i0, xf0, mwin, mx, a, b, c, dy, cyy, o, z, cr, cg, cb):
    """Four pixels of one Gaussian in :func:`_backward_fast`, branch-free: every lane computes its 10
    gradient terms into planes _PA.._PA+9 (exact zeros for a lane that is masked, has σ < 0 or α < 1/255, and for
    the α terms where α is clamped at ALPHA_MAX) and un-composites its pixel (T /= 1 - α, S += w (c, z))."""
    for l in range(4):
        i = i0 + l
        dx = ((xf0 + float(l)) + 0.5) - mx
        sigma = 0.5 * (a * dx * dx + cyy) + b * dx * dy
        gauss = _exp_neg(min(max(sigma, 0.0), S_CLAMP))
        raw = o * gauss
        alpha = min(ALPHA_MAX, raw)
        ok = (((mwin >> l) & 1) != 0) & (sigma >= 0.0) & (alpha >= ALPHA_MIN)
        ae = alpha if ok else 0.0
        one_m = 1.0 - ae
        t_i = st[jj, _PT, i] / one_m
        w = ae * t_i
        gr, gg, gb, gd = st[jj, _PG, i], st[jj, _PG + 1, i], st[jj, _PG + 2, i], st[jj, _PGD, i]
        s0, s1, s2, s3 = st[jj, _PS, i], st[jj, _PS + 1, i], st[jj, _PS + 2, i], st[jj, _PS + 3, i]
        st[jj, _PA + 7, i] = w * gr
        st[jj, _PA + 8, i] = w * gg
        st[jj, _PA + 9, i] = w * gb
        st[jj, _PA + 6, i] = w * gd
        after = s0 * gr + s1 * gg + s2 * gb + s3 * gd
        dl_da = t_i * (cr * gr + cg * gg + cb * gb + z * gd) - (after + st[jj, _PTG, i]) / one_m
        st[jj, _PS, i] = s0 + w * cr
        st[jj, _PS + 1, i] = s1 + w * cg
        st[jj, _PS + 2, i] = s2 + w * cb
        st[jj, _PS + 3, i] = s3 + w * z
        st[jj, _PT, i] = t_i
        dm = dl_da if (ok & (raw < ALPHA_MAX)) else 0.0  # the clamp passes no gradient
        st[jj, _PA + 5, i] = dm * gauss
        dl_ds = -dm * alpha
        st[jj, _PA + 2, i] = 0.5 * dl_ds * dx * dx
        st[jj, _PA + 3, i] = dl_ds * dx * dy
        st[jj, _PA + 4, i] = 0.5 * dl_ds * dy * dy
        st[jj, _PA + 0, i] = dl_ds * (a * dx + b * dy)
        st[jj, _PA + 1, i] = dl_ds * (b * dx + c * dy)


@_jit(parallel=True)
def _backward_fast(gp, rect, offsets, ids, width, height, tile, tiles_x, t_final, stop_all, g_c, g_d, g_t, g_isect):
    """:func:`_backward` for tiles of <= 16 px, vectorised as :func:`_forward_fast`: the tile's T_final,
    dL/dC, dL/dD and T_final·dL/dT are copied into local planes; a pixel joins its row's live mask when the
    back-to-front walk reaches its stop position (pixels sorted by stop); each window's lane terms are then added in
    the scalar loop's pixel order, up to the window's last live lane, so every gradient row is summed in the same
    order as :func:`_backward_ref` (to ~1 ulp: the exp)."""
    n_tiles = offsets.shape[0] - 1
    for t in prange(n_tiles):
        X0, Y0, X1, Y1 = _tile_box(t, tiles_x, tile, width, height)
        tw, th = X1 - X0, Y1 - Y0
        s, e = offsets[t], offsets[t + 1]
        X0f = float(X0)
        st = np.zeros((_FAST_TILE, _PA + 10, _FAST_TILE + 4))
        npx = tw * th
        pstop = np.empty(npx, np.int64)
        last = 0
        for jj in range(th):
            for ii in range(tw):
                j, i = Y0 + jj, X0 + ii
                st[jj, _PT, ii] = t_final[j, i]
                st[jj, _PG, ii] = g_c[j, i, 0]
                st[jj, _PG + 1, ii] = g_c[j, i, 1]
                st[jj, _PG + 2, ii] = g_c[j, i, 2]
                st[jj, _PGD, ii] = g_d[j, i]
                st[jj, _PTG, ii] = t_final[j, i] * g_t[j, i]
                sv = stop_all[j, i]
                pstop[jj * tw + ii] = sv
                last = max(last, sv)
        by_stop = np.argsort(-pstop, kind="mergesort")  # pixels by stop, descending: the order they join the walk in
        p = 0
        rowmask = np.zeros(_FAST_TILE, np.int64)
        # entries at or behind every pixel's stop position took no part (the forward left the tile there): zero rows
        for k in range(s + last, e):
            g_isect[k, :] = 0.0
        for k in range(s + last - 1, s - 1, -1):
            kk = k - s
            while p < npx and pstop[by_stop[p]] > kk:
                q = by_stop[p]
                rowmask[q // tw] |= 1 << (q % tw)
                p += 1
            g = ids[k]
            mx, my, a, b, c, o, z = gp[g, 0], gp[g, 1], gp[g, 2], gp[g, 3], gp[g, 4], gp[g, 5], gp[g, 6]
            cr, cg, cb = gp[g, 7], gp[g, 8], gp[g, 9]
            d_mx = d_my = d_a = d_b = d_c = d_o = d_z = d_r = d_g = d_b2 = 0.0
            xa = max(rect[g, 0], X0) - X0
            xb = min(rect[g, 1], X1 - 1) - X0
            span = ((1 << (xb + 1)) - 1) & ~((1 << xa) - 1)
            for j in range(max(rect[g, 2], Y0), min(rect[g, 3], Y1 - 1) + 1):
                jj = j - Y0
                m = rowmask[jj] & span
                if m == 0:
                    continue
                dy = j + 0.5 - my
                cyy = c * dy * dy
                while m != 0:
                    i0 = min(max(_ctz64(m), 0), _FAST_TILE - 1)
                    mwin = (m >> i0) & 15
                    m &= ~(15 << i0)
                    _bwd_window(st, jj, i0, X0f + float(i0), mwin, mx, a, b, c, dy, cyy, o, z, cr, cg, cb)
                    lanes = 4 if mwin >= 8 else (3 if mwin >= 4 else (2 if mwin >= 2 else 1))
                    for i in range(i0, i0 + lanes):
                        d_r += st[jj, _PA + 7, i]
                        d_g += st[jj, _PA + 8, i]
                        d_b2 += st[jj, _PA + 9, i]
                        d_z += st[jj, _PA + 6, i]
                        d_o += st[jj, _PA + 5, i]
                        d_a += st[jj, _PA + 2, i]
                        d_b += st[jj, _PA + 3, i]
                        d_c += st[jj, _PA + 4, i]
                        d_mx -= st[jj, _PA + 0, i]
                        d_my -= st[jj, _PA + 1, i]
            row = g_isect[k]
            row[0], row[1], row[2], row[3], row[4] = d_mx, d_my, d_a, d_b, d_c
            row[5], row[6], row[7], row[8], row[9] = d_o, d_z, d_r, d_g, d_b2


@_jit
def _reduce(ids, g_isect, n_gauss):
    """Sum the per-intersection gradient rows into per-Gaussian rows (fixed order: deterministic)."""
    return _reduce_into(ids, g_isect, np.empty((n_gauss, g_isect.shape[1])))


@_jit
def _reduce_into(ids, g_isect, out):
    """:func:`_reduce` into ``out`` [n_gauss, C] (zeroed here); returns ``out``."""
    out[:] = 0.0
    for k in range(ids.shape[0]):
        out[ids[k]] += g_isect[k]
    return out


# ------------------------------------------------------------------------------------------------ no-grad path
# SH constants of vscene_engine.core.sh (3DGS), unpacked so the compiled kernel sees plain floats.
_C0, _C1 = _sh.C0, _sh.C1
_C20, _C21, _C22, _C23, _C24 = _sh.C2
_C30, _C31, _C32, _C33, _C34, _C35, _C36 = _sh.C3
_C40, _C41, _C42, _C43, _C44, _C45, _C46, _C47, _C48 = _sh.C4
_PROJ_BLOCK = 1024  # Gaussians per parallel work item of the projection
_BIN_BLOCKS = 16  # depth-ordered blocks binned in parallel (fixed: the result never depends on the thread count)
_DIR_EPS = float(np.finfo(np.float64).tiny) ** 0.5  # as sh._normalize_dirs in float64


@_jit
def _sh_color(sh, n, deg, dx, dy, dz, rec):
    """rec[n, 7:10] = max(SH(dir) + 0.5, 0) with dir = (dx, dy, dz), as sh.eval_sh (3DGS constants)."""
    # colour: max(SH(dir) + 0.5, 0), dir = mean - camera centre (normalised as sh._normalize_dirs)
    inv = 1.0 / math.sqrt(max(dx * dx + dy * dy + dz * dz, _DIR_EPS))
    dx, dy, dz = dx * inv, dy * inv, dz * inv
    for ch in range(3):
        v = _C0 * sh[n, 0, ch]
        if deg > 0:
            v += -_C1 * dy * sh[n, 1, ch] + _C1 * dz * sh[n, 2, ch] - _C1 * dx * sh[n, 3, ch]
        if deg > 1:
            xx, yy, zz = dx * dx, dy * dy, dz * dz
            xy, yz, xz = dx * dy, dy * dz, dx * dz
            v += (_C20 * xy * sh[n, 4, ch] + _C21 * yz * sh[n, 5, ch]
                  + _C22 * (2.0 * zz - xx - yy) * sh[n, 6, ch] + _C23 * xz * sh[n, 7, ch]
                  + _C24 * (xx - yy) * sh[n, 8, ch])
            if deg > 2:
                v += (_C30 * dy * (3.0 * xx - yy) * sh[n, 9, ch] + _C31 * xy * dz * sh[n, 10, ch]
                      + _C32 * dy * (4.0 * zz - xx - yy) * sh[n, 11, ch]
                      + _C33 * dz * (2.0 * zz - 3.0 * xx - 3.0 * yy) * sh[n, 12, ch]
                      + _C34 * dx * (4.0 * zz - xx - yy) * sh[n, 13, ch]
                      + _C35 * dz * (xx - yy) * sh[n, 14, ch] + _C36 * dx * (xx - 3.0 * yy) * sh[n, 15, ch])
            if deg > 3:
                v += (_C40 * xy * (xx - yy) * sh[n, 16, ch] + _C41 * yz * (3.0 * xx - yy) * sh[n, 17, ch]
                      + _C42 * xy * (7.0 * zz - 1.0) * sh[n, 18, ch]
                      + _C43 * yz * (7.0 * zz - 3.0) * sh[n, 19, ch]
                      + _C44 * (zz * (35.0 * zz - 30.0) + 3.0) * sh[n, 20, ch]
                      + _C45 * xz * (7.0 * zz - 3.0) * sh[n, 21, ch]
                      + _C46 * (xx - yy) * (7.0 * zz - 1.0) * sh[n, 22, ch]
                      + _C47 * xz * (xx - 3.0 * yy) * sh[n, 23, ch]
                      + _C48 * (xx * (xx - 3.0 * yy) - yy * (3.0 * xx - yy)) * sh[n, 24, ch])
        rec[n, 7 + ch] = max(v + 0.5, 0.0)


@_inline
def _camera_fields(cam, width, height):
    """The 23 entries of the camera record (see :func:`_project`) followed by the EWA Jacobian's clamp limits of x/z
    and y/z (3DGS: 1.3x the half field of view on each side)."""
    fx, fy, cx, cy = cam[19], cam[20], cam[21], cam[22]
    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    return (cam[0], cam[1], cam[2], cam[3], cam[4], cam[5], cam[6], cam[7], cam[8], cam[9], cam[10], cam[11],
            cam[12], cam[13], cam[14], cam[15], cam[16], cam[17], cam[18], fx, fy, cx, cy,
            (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx,
            (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy)


@_jit(parallel=True)
def _project(means, scales, quats, opac, sh, deg, cam, width, height, eps2d, antialiased, near, far,
             rec, rect, keep):
    """EWA projection + SH colour + culling of every Gaussian (float64), exactly the math of
    ``projection.project_gaussians``. cam [23]: R_cw (9, row-major), t_cw (3), q_cw (4, wxyz), camera centre (3),
    fx, fy, cx, cy. Writes rec [N,10] (mx, my, conic a b c, o, z, r, g, b), rect [N,4] (as _pixel_rects)
    and keep [N] (1: visible and covering at least one pixel centre)."""
    N = means.shape[0]
    (r00, r01, r02, r10, r11, r12, r20, r21, r22, t0, t1, t2, aw, ax, ay, az, ox, oy, oz, fx, fy, cx, cy,
     lim_x_pos, lim_x_neg, lim_y_pos, lim_y_neg) = _camera_fields(cam, width, height)
    n_blk = (N + _PROJ_BLOCK - 1) // _PROJ_BLOCK
    for blk in prange(n_blk):
        for n in range(blk * _PROJ_BLOCK, min(N, (blk + 1) * _PROJ_BLOCK)):
            keep[n] = 0
            px, py, pz = means[n, 0], means[n, 1], means[n, 2]
            x = r00 * px + r01 * py + r02 * pz + t0
            y = r10 * px + r11 * py + r12 * pz + t1
            z = r20 * px + r21 * py + r22 * pz + t2
            if not (z >= near and z <= far):
                continue
            # rotation camera <- local: q_cw * q (Hamilton product), normalised, as a matrix
            bw, bx, by, bz = quats[n, 0], quats[n, 1], quats[n, 2], quats[n, 3]
            qw = aw * bw - ax * bx - ay * by - az * bz
            qx = aw * bx + ax * bw + ay * bz - az * by
            qy = aw * by - ax * bz + ay * bw + az * bx
            qz = aw * bz + ax * by - ay * bx + az * bw
            qn = max(math.sqrt(qw * qw + qx * qx + qy * qy + qz * qz), 1e-12)
            qw, qx, qy, qz = qw / qn, qx / qn, qy / qn, qz / qn
            s0, s1, s2 = scales[n, 0], scales[n, 1], scales[n, 2]
            m00 = (1 - 2 * (qy * qy + qz * qz)) * s0
            m01 = (2 * (qx * qy - qw * qz)) * s1
            m02 = (2 * (qx * qz + qw * qy)) * s2
            m10 = (2 * (qx * qy + qw * qz)) * s0
            m11 = (1 - 2 * (qx * qx + qz * qz)) * s1
            m12 = (2 * (qy * qz - qw * qx)) * s2
            m20 = (2 * (qx * qz - qw * qy)) * s0
            m21 = (2 * (qy * qz + qw * qx)) * s1
            m22 = (1 - 2 * (qx * qx + qy * qy)) * s2
            rz = 1.0 / z
            tx = z * min(max(x * rz, -lim_x_neg), lim_x_pos)
            ty = z * min(max(y * rz, -lim_y_neg), lim_y_pos)
            j0, j2 = fx * rz, fx * tx * rz * rz
            j1, j3 = fy * rz, fy * ty * rz * rz
            u0, u1, u2 = j0 * m00 - j2 * m20, j0 * m01 - j2 * m21, j0 * m02 - j2 * m22
            v0, v1, v2 = j1 * m10 - j3 * m20, j1 * m11 - j3 * m21, j1 * m12 - j3 * m22
            a0 = u0 * u0 + u1 * u1 + u2 * u2
            b0 = u0 * v0 + u1 * v1 + u2 * v2
            c0 = v0 * v0 + v1 * v1 + v2 * v2
            a, b, c = a0 + eps2d, b0, c0 + eps2d
            det = a * c - b * b
            o = opac[n]
            if antialiased:
                det0 = a0 * c0 - b0 * b0
                o = o * math.sqrt(max(det0 / max(det, 1e-30), 0.0))
            level = math.log(max(o * 255.0, 1e-30))
            if not (det > 0 and level > 0):
                continue
            mx, my = fx * x * rz + cx, fy * y * rz + cy
            ex = math.sqrt(2.0 * level * max(a, 0.0)) * (1.0 + 1e-4) + 1e-3
            ey = math.sqrt(2.0 * level * max(c, 0.0)) * (1.0 + 1e-4) + 1e-3
            if not (mx + ex > 0 and mx - ex < width and my + ey > 0 and my - ey < height):
                continue
            if not (math.isfinite(mx) and math.isfinite(my)):
                continue
            # as _pixel_rects; clipped before the integer conversion (a huge extent cannot overflow it)
            ix0 = max(int(math.ceil(max(mx - ex - 0.5, -1.0))), 0)
            ix1 = min(int(math.floor(min(mx + ex - 0.5, width + 0.0))), width - 1)
            iy0 = max(int(math.ceil(max(my - ey - 0.5, -1.0))), 0)
            iy1 = min(int(math.floor(min(my + ey - 0.5, height + 0.0))), height - 1)
            if ix0 > ix1 or iy0 > iy1:  # covers no pixel centre: contributes nothing anywhere
                continue
            _sh_color(sh, n, deg, px - ox, py - oy, pz - oz, rec)
            rec[n, 0], rec[n, 1] = mx, my
            rec[n, 2], rec[n, 3], rec[n, 4] = c / det, -b / det, a / det
            rec[n, 5], rec[n, 6] = o, z
            rect[n, 0], rect[n, 1], rect[n, 2], rect[n, 3] = ix0, ix1, iy0, iy1
            keep[n] = 1


@_jit
def _depth_order(rec, keep):
    """Indices of the kept Gaussians in exact depth order, ties in scene order: a stable LSD radix sort (11-bit
    digits) of the order-preserving integer image of the float64 depth; passes whose digit is constant are skipped.
    A stable sort has one result, the same as ``torch.argsort(depth, stable=True)``."""
    N = keep.shape[0]
    n = 0
    for i in range(N):
        n += keep[i]
    src = np.empty(n, np.int64)
    key = np.empty(n, np.uint64)
    sign = np.uint64(1) << np.uint64(63)
    k = 0
    for i in range(N):
        if keep[i]:
            src[k] = i
            z = rec[i, 6] + 0.0  # -0.0 -> +0.0 (equal depths must get equal keys)
            b = np.uint64(np.int64(np.float64(z).view(np.int64)))
            key[k] = ~b if b & sign else b | sign  # IEEE order -> unsigned integer order
            k += 1
    dst = np.empty(n, np.int64)
    key2 = np.empty(n, np.uint64)
    cnt = np.empty(2049, np.int64)
    for shift in range(0, 64, 11):
        sh = np.uint64(shift)
        cnt[:] = 0
        for i in range(n):
            cnt[((key[i] >> sh) & np.uint64(2047)) + 1] += 1
        if cnt.max() == n:  # this digit is the same everywhere
            continue
        for d in range(2048):
            cnt[d + 1] += cnt[d]
        for i in range(n):
            d = (key[i] >> sh) & np.uint64(2047)
            j = cnt[d]
            dst[j] = src[i]
            key2[j] = key[i]
            cnt[d] = j + 1
        src, dst = dst, src
        key, key2 = key2, key
    return src


@_jit
def _bin_tiles_par(rect, order, tile, tiles_x, n_tiles):
    """Per-tile Gaussian lists (offsets [n_tiles+1], ids [n_isect]) for the Gaussians ``order`` (depth order; ids are entries of ``order``), with
    _BIN_BLOCKS depth-ordered blocks counted and filled in parallel (each block writes its own slice of every tile's
    list, blocks in order, so every list is in depth order)."""
    offsets, ids, _, _ = _bin_tiles_core(rect, order, tile, tiles_x, n_tiles, False)
    return offsets, ids


@_jit
def _bin_tiles_pos(rect, order, tile, tiles_x, n_tiles):
    """:func:`_bin_tiles_par` plus where each Gaussian's intersections went: the intersections of ``order[r]`` are
    ``pos[start[r]:start[r+1]]`` (positions in ``ids``, tiles in row-major order, i.e. ascending), for
    :func:`_reduce_pos`."""
    return _bin_tiles_core(rect, order, tile, tiles_x, n_tiles, True)


@_jit(parallel=True)
def _bin_tiles_core(rect, order, tile, tiles_x, n_tiles, with_pos):
    G = order.shape[0]
    nb = _BIN_BLOCKS
    bs = (G + nb - 1) // nb
    cnt = np.zeros((nb, n_tiles), np.int64)
    per = np.zeros(G + 1, np.int64)  # intersections of order[r] at per[r + 1] (with_pos), then their prefix sum
    for blk in prange(nb):
        for r in range(blk * bs, min(G, (blk + 1) * bs)):
            g = order[r]
            if rect[g, 0] > rect[g, 1] or rect[g, 2] > rect[g, 3]:
                continue
            for ty in range(rect[g, 2] // tile, rect[g, 3] // tile + 1):
                for tx in range(rect[g, 0] // tile, rect[g, 1] // tile + 1):
                    cnt[blk, ty * tiles_x + tx] += 1
            if with_pos:
                per[r + 1] = ((rect[g, 3] // tile - rect[g, 2] // tile + 1)
                              * (rect[g, 1] // tile - rect[g, 0] // tile + 1))
    offsets = np.empty(n_tiles + 1, np.int64)
    start = np.empty((nb, n_tiles), np.int64)
    acc = 0
    for t in range(n_tiles):
        offsets[t] = acc
        for blk in range(nb):
            start[blk, t] = acc
            acc += cnt[blk, t]
    offsets[n_tiles] = acc
    ids = np.empty(acc, np.int64)
    if with_pos:
        for r in range(G):
            per[r + 1] += per[r]
    pos = np.empty(acc if with_pos else 0, np.int64)
    for blk in prange(nb):
        fill = start[blk].copy()
        for r in range(blk * bs, min(G, (blk + 1) * bs)):
            g = order[r]
            if rect[g, 0] > rect[g, 1] or rect[g, 2] > rect[g, 3]:
                continue
            m = per[r]
            for ty in range(rect[g, 2] // tile, rect[g, 3] // tile + 1):
                for tx in range(rect[g, 0] // tile, rect[g, 1] // tile + 1):
                    t = ty * tiles_x + tx
                    ids[fill[t]] = g
                    if with_pos:
                        pos[m] = fill[t]
                        m += 1
                    fill[t] += 1
    return offsets, ids, per, pos


@_jit(parallel=True)
def _reduce_pos(order, start, pos, g_isect, out):
    """:func:`_reduce_into` in parallel over Gaussians, from :func:`_bin_tiles_pos`'s positions: each row of
    ``out`` [n_gauss, C] sums its intersections in ascending position, the order :func:`_reduce_into` adds them in
    (the same bits). Only the rows of ``order`` are written."""
    G = order.shape[0]
    C = g_isect.shape[1]
    n_blk = (G + _PROJ_BLOCK - 1) // _PROJ_BLOCK
    for blk in prange(n_blk):
        for r in range(blk * _PROJ_BLOCK, min(G, (blk + 1) * _PROJ_BLOCK)):
            g = order[r]
            for col in range(C):
                out[g, col] = 0.0
            for m in range(start[r], start[r + 1]):
                k = pos[m]
                for col in range(C):
                    out[g, col] += g_isect[k, col]
    return out


_BUFFERS = {}  # work arrays of render_nograd and of the compiled backward, kept between calls (see release_buffers)


def release_buffers() -> None:
    """Free the per-Gaussian work arrays :func:`render_nograd` and the compiled backward keep between calls (~100
    bytes per Gaussian of the largest scene rendered, and ~250 per Gaussian after a backward, plus 80 per
    intersection; re-using them saves the page faults of fresh allocations, ~20-80 ms at 221k Gaussians)."""
    with _LOCK:
        _BUFFERS.clear()


def _buffers(N):
    """rec [N,10], rect [N,4], keep [N]: views of arrays grown to the largest N seen (callers hold _LOCK)."""
    if _BUFFERS.get("n", -1) < N:
        _BUFFERS.update(n=N, rec=np.empty((N, 10)), rect=np.empty((N, 4), np.int64), keep=np.empty(N, np.int64))
    return _BUFFERS["rec"][:N], _BUFFERS["rect"][:N], _BUFFERS["keep"][:N]


def _render_nograd_arrays(means, scales, quats, opac, sh, deg, cam, width, height, tile, eps2d, antialiased, near,
                          far):
    N = means.shape[0]
    rec, rect, keep = _buffers(N)  # every entry read later is written by _project first
    _project(means, scales, quats, opac, sh, deg, cam, width, height, eps2d, antialiased, near, far, rec, rect, keep)
    order = _depth_order(rec, keep)
    tiles_x, tiles_y = (width + tile - 1) // tile, (height + tile - 1) // tile
    offsets, ids = _chunked(0, _bin_tiles_par, rect, order, tile, tiles_x, tiles_x * tiles_y)
    c = np.empty((height, width, 3))
    d = np.empty((height, width))
    t = np.empty((height, width))
    stop = np.empty((height, width), np.int64)
    _forward(rec, rect, offsets, ids, width, height, tile, tiles_x, c, d, t, stop)  # ids index rec directly
    return c, d, t


def render_nograd(scene, c2w: torch.Tensor, K: torch.Tensor, width: int, height: int, tile: int = TILE, *,
                  eps2d: float = 0.3, antialiased: bool = False, near_plane: float = 0.01, far_plane: float = 1e10,
                  sh_degree=None):
    """Forward-only render of one view, everything compiled (no autograd): EWA projection, SH colour and culling
    (:func:`_project`, parallel over Gaussians, the math of ``projection.project_gaussians`` in float64), a parallel
    stable depth sort, parallel tile binning and the compositing kernel. Returns C [H,W,3], D [H,W], T [H,W] in the
    scene's dtype, as :func:`composite` does for the projected scene. ``scene`` on the CPU (OpenCV c2w [4,4],
    K [3,3] pixels)."""
    cam = _camera_record(c2w, K)
    deg = scene.sh_degree if sh_degree is None else min(int(sh_degree), scene.sh_degree)
    f64 = _np_view  # float32 / float64 arrays go in as they are (the kernel computes in float64)
    c, d, t = _run(_render_nograd_arrays, f64(scene.means), f64(scene.scales), f64(scene.quats),
                   f64(scene.opacities), f64(scene.sh), int(deg), cam, int(width), int(height), int(tile),
                   float(eps2d), bool(antialiased), float(near_plane), float(far_plane))
    cast = lambda a: torch.from_numpy(a).to(device=scene.means.device, dtype=scene.means.dtype)  # noqa: E731
    return cast(c), cast(d), cast(t)



# ------------------------------------------------------------------------------------------------ autograd path
# With autograd (fitting), :func:`render_grad` runs the same compiled forward as :func:`render_nograd` (projection,
# SH, culling, depth sort, binning, compositing) and a compiled backward: the tile pass :func:`_backward`, the
# fixed-order reduction :func:`_reduce_pos` and :func:`_project_backward` (the projection's hand-written derivative), as
# one ``torch.autograd.Function`` (:class:`_RenderGrad`), so no torch graph is built over the Gaussians.


@_jit
def _sh_basis_grad(x, y, z, deg, b, gx, gy, gz):
    """SH basis b[k] (3DGS order and constants, as :func:`_sh_color`) at the unit direction (x, y, z) and its partial
    derivatives gx, gy, gz [k] (the polynomials of ``sh.sh_basis`` differentiated term by term)."""
    b[0] = _C0
    gx[0], gy[0], gz[0] = 0, 0, 0
    if deg > 0:
        b[1] = -_C1*y
        gx[1], gy[1], gz[1] = 0, -_C1, 0
        b[2] = _C1*z
        gx[2], gy[2], gz[2] = 0, 0, _C1
        b[3] = -_C1*x
        gx[3], gy[3], gz[3] = -_C1, 0, 0
    if deg > 1:
        b[4] = _C20*x*y
        gx[4], gy[4], gz[4] = _C20*y, _C20*x, 0
        b[5] = _C21*y*z
        gx[5], gy[5], gz[5] = 0, _C21*z, _C21*y
        b[6] = -_C22*x**2 - _C22*y**2 + 2*_C22*z**2
        gx[6], gy[6], gz[6] = -2*_C22*x, -2*_C22*y, 4*_C22*z
        b[7] = _C23*x*z
        gx[7], gy[7], gz[7] = _C23*z, 0, _C23*x
        b[8] = _C24*x**2 - _C24*y**2
        gx[8], gy[8], gz[8] = 2*_C24*x, -2*_C24*y, 0
    if deg > 2:
        b[9] = 3*_C30*x**2*y - _C30*y**3
        gx[9], gy[9], gz[9] = 6*_C30*x*y, 3*_C30*x**2 - 3*_C30*y**2, 0
        b[10] = _C31*x*y*z
        gx[10], gy[10], gz[10] = _C31*y*z, _C31*x*z, _C31*x*y
        b[11] = -_C32*x**2*y - _C32*y**3 + 4*_C32*y*z**2
        gx[11], gy[11], gz[11] = -2*_C32*x*y, -_C32*x**2 - 3*_C32*y**2 + 4*_C32*z**2, 8*_C32*y*z
        b[12] = -3*_C33*x**2*z - 3*_C33*y**2*z + 2*_C33*z**3
        gx[12], gy[12], gz[12] = -6*_C33*x*z, -6*_C33*y*z, -3*_C33*x**2 - 3*_C33*y**2 + 6*_C33*z**2
        b[13] = -_C34*x**3 - _C34*x*y**2 + 4*_C34*x*z**2
        gx[13], gy[13], gz[13] = -3*_C34*x**2 - _C34*y**2 + 4*_C34*z**2, -2*_C34*x*y, 8*_C34*x*z
        b[14] = _C35*x**2*z - _C35*y**2*z
        gx[14], gy[14], gz[14] = 2*_C35*x*z, -2*_C35*y*z, _C35*x**2 - _C35*y**2
        b[15] = _C36*x**3 - 3*_C36*x*y**2
        gx[15], gy[15], gz[15] = 3*_C36*x**2 - 3*_C36*y**2, -6*_C36*x*y, 0
    if deg > 3:
        b[16] = _C40*x**3*y - _C40*x*y**3
        gx[16], gy[16], gz[16] = 3*_C40*x**2*y - _C40*y**3, _C40*x**3 - 3*_C40*x*y**2, 0
        b[17] = 3*_C41*x**2*y*z - _C41*y**3*z
        gx[17], gy[17], gz[17] = 6*_C41*x*y*z, 3*_C41*x**2*z - 3*_C41*y**2*z, 3*_C41*x**2*y - _C41*y**3
        b[18] = 7*_C42*x*y*z**2 - _C42*x*y
        gx[18], gy[18], gz[18] = 7*_C42*y*z**2 - _C42*y, 7*_C42*x*z**2 - _C42*x, 14*_C42*x*y*z
        b[19] = 7*_C43*y*z**3 - 3*_C43*y*z
        gx[19], gy[19], gz[19] = 0, 7*_C43*z**3 - 3*_C43*z, 21*_C43*y*z**2 - 3*_C43*y
        b[20] = 35*_C44*z**4 - 30*_C44*z**2 + 3*_C44
        gx[20], gy[20], gz[20] = 0, 0, 140*_C44*z**3 - 60*_C44*z
        b[21] = 7*_C45*x*z**3 - 3*_C45*x*z
        gx[21], gy[21], gz[21] = 7*_C45*z**3 - 3*_C45*z, 0, 21*_C45*x*z**2 - 3*_C45*x
        b[22] = 7*_C46*x**2*z**2 - _C46*x**2 - 7*_C46*y**2*z**2 + _C46*y**2
        gx[22], gy[22], gz[22] = 14*_C46*x*z**2 - 2*_C46*x, -14*_C46*y*z**2 + 2*_C46*y, 14*_C46*x**2*z - 14*_C46*y**2*z
        b[23] = _C47*x**3*z - 3*_C47*x*y**2*z
        gx[23], gy[23], gz[23] = 3*_C47*x**2*z - 3*_C47*y**2*z, -6*_C47*x*y*z, _C47*x**3 - 3*_C47*x*y**2
        b[24] = _C48*x**4 - 6*_C48*x**2*y**2 + _C48*y**4
        gx[24], gy[24], gz[24] = 4*_C48*x**3 - 12*_C48*x*y**2, -12*_C48*x**2*y + 4*_C48*y**3, 0


@_jit(parallel=True)
def _project_backward(means, scales, quats, sh, deg, cam, width, height, eps2d, rec, keep, g_rec,
                      g_means, g_scales, g_quats, g_opac, g_sh):
    """Derivative of :func:`_project` (antialiased=False): given g_rec [N,10] = dL/d(mx, my, conic a b c, o, z, r, g,
    b) of the kept Gaussians, writes dL/d means [N,3], scales [N,3], quats [N,4] (the raw, unnormalised input),
    opacities [N] and sh [N,K,3] (rows of Gaussians that were culled stay zero; the caller zeroes the outputs).

    Chain (forward in :func:`_project`): p_cam = R p + t; q' = q_cw ⊗ q, q̂ = q'/|q'|; M = rot(q̂) diag(s);
    Jacobian rows (j0, 0, -j2), (0, j1, -j3) with j0 = fx/z, j2 = fx·tx/z², tx = z·clamp(x/z) (the clamp passes
    no gradient to x/z where it binds); u = j0 M₀ - j2 M₂, v = j1 M₁ - j3 M₂; (a, b, c) = (u·u + ε, u·v, v·v + ε);
    conic = (c, -b, a)/det; mean2d = (fx x/z + cx, fy y/z + cy); colour = max(SH(dir/|dir|) + 0.5, 0)."""
    N = means.shape[0]
    (r00, r01, r02, r10, r11, r12, r20, r21, r22, t0, t1, t2, aw, ax, ay, az, ox, oy, oz, fx, fy, cx, cy,
     lim_x_pos, lim_x_neg, lim_y_pos, lim_y_neg) = _camera_fields(cam, width, height)
    n_blk = (N + _PROJ_BLOCK - 1) // _PROJ_BLOCK
    nk = min((deg + 1) * (deg + 1), sh.shape[1])
    for blk in prange(n_blk):
        bb = np.zeros(25)
        bgx = np.zeros(25)
        bgy = np.zeros(25)
        bgz = np.zeros(25)
        for n in range(blk * _PROJ_BLOCK, min(N, (blk + 1) * _PROJ_BLOCK)):
            if keep[n] == 0:
                continue
            g_mx, g_my, g_A, g_B, g_C = g_rec[n, 0], g_rec[n, 1], g_rec[n, 2], g_rec[n, 3], g_rec[n, 4]
            g_opac[n] = g_rec[n, 5]
            g_z = g_rec[n, 6]
            # ---- recompute the forward (as _project)
            px, py, pz = means[n, 0], means[n, 1], means[n, 2]
            x = r00 * px + r01 * py + r02 * pz + t0
            y = r10 * px + r11 * py + r12 * pz + t1
            z = r20 * px + r21 * py + r22 * pz + t2
            bw, bx, by, bz = quats[n, 0], quats[n, 1], quats[n, 2], quats[n, 3]
            qw = aw * bw - ax * bx - ay * by - az * bz
            qx = aw * bx + ax * bw + ay * bz - az * by
            qy = aw * by - ax * bz + ay * bw + az * bx
            qz = aw * bz + ax * by - ay * bx + az * bw
            qnorm = math.sqrt(qw * qw + qx * qx + qy * qy + qz * qz)
            qn = max(qnorm, 1e-12)
            qw, qx, qy, qz = qw / qn, qx / qn, qy / qn, qz / qn
            R00, R01, R02 = 1 - 2 * (qy * qy + qz * qz), 2 * (qx * qy - qw * qz), 2 * (qx * qz + qw * qy)
            R10, R11, R12 = 2 * (qx * qy + qw * qz), 1 - 2 * (qx * qx + qz * qz), 2 * (qy * qz - qw * qx)
            R20, R21, R22 = 2 * (qx * qz - qw * qy), 2 * (qy * qz + qw * qx), 1 - 2 * (qx * qx + qy * qy)
            s0, s1, s2 = scales[n, 0], scales[n, 1], scales[n, 2]
            m00, m01, m02 = R00 * s0, R01 * s1, R02 * s2
            m10, m11, m12 = R10 * s0, R11 * s1, R12 * s2
            m20, m21, m22 = R20 * s0, R21 * s1, R22 * s2
            rz = 1.0 / z
            ux_raw, uy_raw = x * rz, y * rz
            ux = min(max(ux_raw, -lim_x_neg), lim_x_pos)
            uy = min(max(uy_raw, -lim_y_neg), lim_y_pos)
            tx, ty = z * ux, z * uy
            j0, j2 = fx * rz, fx * tx * rz * rz
            j1, j3 = fy * rz, fy * ty * rz * rz
            u0, u1, u2 = j0 * m00 - j2 * m20, j0 * m01 - j2 * m21, j0 * m02 - j2 * m22
            v0, v1, v2 = j1 * m10 - j3 * m20, j1 * m11 - j3 * m21, j1 * m12 - j3 * m22
            a = u0 * u0 + u1 * u1 + u2 * u2 + eps2d
            b = u0 * v0 + u1 * v1 + u2 * v2
            c = v0 * v0 + v1 * v1 + v2 * v2 + eps2d
            det = a * c - b * b
            # ---- conic (c, -b, a)/det -> (a, b, c)
            g_det = -(g_A * c - g_B * b + g_C * a) / (det * det)
            g_a = g_C / det + g_det * c
            g_c = g_A / det + g_det * a
            g_b = -g_B / det - 2.0 * g_det * b
            # ---- (a, b, c) -> u, v
            gu0, gu1, gu2 = 2 * g_a * u0 + g_b * v0, 2 * g_a * u1 + g_b * v1, 2 * g_a * u2 + g_b * v2
            gv0, gv1, gv2 = 2 * g_c * v0 + g_b * u0, 2 * g_c * v1 + g_b * u1, 2 * g_c * v2 + g_b * u2
            # ---- u, v -> Jacobian entries and M
            g_j0 = gu0 * m00 + gu1 * m01 + gu2 * m02
            g_j2 = -(gu0 * m20 + gu1 * m21 + gu2 * m22)
            g_j1 = gv0 * m10 + gv1 * m11 + gv2 * m12
            g_j3 = -(gv0 * m20 + gv1 * m21 + gv2 * m22)
            gm00, gm01, gm02 = gu0 * j0, gu1 * j0, gu2 * j0
            gm10, gm11, gm12 = gv0 * j1, gv1 * j1, gv2 * j1
            gm20 = -(gu0 * j2 + gv0 * j3)
            gm21 = -(gu1 * j2 + gv1 * j3)
            gm22 = -(gu2 * j2 + gv2 * j3)
            # ---- Jacobian -> camera-space position
            g_rz = fx * g_j0 + fy * g_j1
            g_tx, g_ty = fx * rz * rz * g_j2, fy * rz * rz * g_j3
            g_rz += 2.0 * fx * tx * rz * g_j2 + 2.0 * fy * ty * rz * g_j3
            g_zc = g_z + ux * g_tx + uy * g_ty
            g_x = fx * rz * g_mx
            g_y = fy * rz * g_my
            g_rz += fx * x * g_mx + fy * y * g_my
            if ux_raw > -lim_x_neg and ux_raw < lim_x_pos:
                g_x += rz * z * g_tx
                g_rz += x * z * g_tx
            if uy_raw > -lim_y_neg and uy_raw < lim_y_pos:
                g_y += rz * z * g_ty
                g_rz += y * z * g_ty
            g_zc -= rz * rz * g_rz
            gpx = r00 * g_x + r10 * g_y + r20 * g_zc
            gpy = r01 * g_x + r11 * g_y + r21 * g_zc
            gpz = r02 * g_x + r12 * g_y + r22 * g_zc
            # ---- M = rot(q̂) diag(s) -> scales, rotation
            g_scales[n, 0] = gm00 * R00 + gm10 * R10 + gm20 * R20
            g_scales[n, 1] = gm01 * R01 + gm11 * R11 + gm21 * R21
            g_scales[n, 2] = gm02 * R02 + gm12 * R12 + gm22 * R22
            G00, G01, G02 = gm00 * s0, gm01 * s1, gm02 * s2
            G10, G11, G12 = gm10 * s0, gm11 * s1, gm12 * s2
            G20, G21, G22 = gm20 * s0, gm21 * s1, gm22 * s2
            gqw = 2 * (-qz * G01 + qy * G02 + qz * G10 - qx * G12 - qy * G20 + qx * G21)
            gqx = 2 * (qy * G01 + qz * G02 + qy * G10 - 2 * qx * G11 - qw * G12 + qz * G20 + qw * G21 - 2 * qx * G22)
            gqy = 2 * (-2 * qy * G00 + qx * G01 + qw * G02 + qx * G10 + qz * G12 - qw * G20 + qz * G21 - 2 * qy * G22)
            gqz = 2 * (-2 * qz * G00 - qw * G01 + qx * G02 + qw * G10 - 2 * qz * G11 + qy * G12 + qx * G20 + qy * G21)
            # normalisation q̂ = q'/max(|q'|, 1e-12) (the clamp passes no gradient to the norm)
            if qnorm > 1e-12:
                dot = qw * gqw + qx * gqx + qy * gqy + qz * gqz
                gqw, gqx, gqy, gqz = gqw - qw * dot, gqx - qx * dot, gqy - qy * dot, gqz - qz * dot
            gqw, gqx, gqy, gqz = gqw / qn, gqx / qn, gqy / qn, gqz / qn
            # Hamilton product q' = q_cw ⊗ q is linear in q: dL/dq = L(q_cw)ᵀ dL/dq'
            g_quats[n, 0] = aw * gqw + ax * gqx + ay * gqy + az * gqz
            g_quats[n, 1] = -ax * gqw + aw * gqx + az * gqy - ay * gqz
            g_quats[n, 2] = -ay * gqw - az * gqx + aw * gqy + ax * gqz
            g_quats[n, 3] = -az * gqw + ay * gqx - ax * gqy + aw * gqz
            # ---- colour: SH coefficients and the view direction (normalised as sh._normalize_dirs)
            dx, dy, dz = px - ox, py - oy, pz - oz
            n2 = dx * dx + dy * dy + dz * dz
            inv = 1.0 / math.sqrt(max(n2, _DIR_EPS))
            hx, hy, hz = dx * inv, dy * inv, dz * inv
            _sh_basis_grad(hx, hy, hz, deg, bb, bgx, bgy, bgz)
            ghx = ghy = ghz = 0.0
            for ch in range(3):
                gcol = g_rec[n, 7 + ch]
                if rec[n, 7 + ch] <= 0.0:  # max(v + 0.5, 0) clamped
                    continue
                for k in range(nk):
                    g_sh[n, k, ch] = bb[k] * gcol
                    ghx += bgx[k] * sh[n, k, ch] * gcol
                    ghy += bgy[k] * sh[n, k, ch] * gcol
                    ghz += bgz[k] * sh[n, k, ch] * gcol
            if n2 > _DIR_EPS:
                dot = hx * ghx + hy * ghy + hz * ghz
                ghx, ghy, ghz = ghx - hx * dot, ghy - hy * dot, ghz - hz * dot
            g_means[n, 0] = gpx + ghx * inv
            g_means[n, 1] = gpy + ghy * inv
            g_means[n, 2] = gpz + ghz * inv


def _forward_grad_arrays(means, scales, quats, opac, sh, deg, cam, width, height, tile, eps2d, near, far):
    """Compiled forward of :class:`_RenderGrad`; returns the images and everything its backward needs."""
    N = means.shape[0]
    rec, rect, keep = np.empty((N, 10)), np.empty((N, 4), np.int64), np.empty(N, np.int64)
    _project(means, scales, quats, opac, sh, deg, cam, width, height, eps2d, False, near, far, rec, rect, keep)
    order = _depth_order(rec, keep)
    tiles_x, tiles_y = (width + tile - 1) // tile, (height + tile - 1) // tile
    offsets, ids, start, pos = _chunked(0, _bin_tiles_pos, rect, order, tile, tiles_x, tiles_x * tiles_y)
    c = np.empty((height, width, 3))
    d = np.empty((height, width))
    t = np.empty((height, width))
    stop = np.empty((height, width), np.int64)
    _forward(rec, rect, offsets, ids, width, height, tile, tiles_x, c, d, t, stop)
    return c, d, t, (rec, rect, keep, offsets, ids, t, stop, order, start, pos)


def _grad_buffer(name, shape):
    """A work array of :func:`_backward_grad_arrays` kept between calls in ``_BUFFERS`` (fresh
    arrays of this size cost ~20-80 ms of page faults per backward at 221k Gaussians); callers hold ``_LOCK``."""
    n = int(np.prod(np.array(shape, np.int64)))
    buf = _BUFFERS.get(name)
    if buf is None or buf.size < n:
        buf = _BUFFERS[name] = np.empty(max(n, 1))
    return buf[:n].reshape(shape)


def _backward_grad_arrays(means, scales, quats, sh, deg, cam, width, height, tile, eps2d, saved, gc, gd, gt, finish):
    """Compiled backward of :class:`_RenderGrad` into reused work arrays; ``finish(g_means, g_scales, g_quats, g_opac,
    g_sh)`` copies them out while the lock is still held."""
    rec, rect, keep, offsets, ids, t, stop, order, start, pos = saved
    tiles_x = (width + tile - 1) // tile
    N = means.shape[0]
    g_isect = _grad_buffer("g_isect", (ids.shape[0], 10))
    _backward(rec, rect, offsets, ids, width, height, tile, tiles_x, t, stop, gc, gd, gt, g_isect)
    # rows of the kept Gaussians (the only ones _project_backward reads) in parallel, as _reduce_into would add them
    g_rec = _reduce_pos(order, start, pos, g_isect, _grad_buffer("g_rec", (N, 10)))
    outs = [_grad_buffer(k, shp) for k, shp in (("g_means", (N, 3)), ("g_scales", (N, 3)), ("g_quats", (N, 4)),
                                                 ("g_opac", (N,)), ("g_sh", sh.shape))]
    for o in outs:
        o[...] = 0.0
    _project_backward(means, scales, quats, sh, deg, cam, width, height, eps2d, rec, keep, g_rec, *outs)
    return finish(*outs)


def _np64(t):
    """CPU float64 contiguous numpy view/copy of a tensor (float32 is converted)."""
    return np.ascontiguousarray(t.detach().to("cpu", torch.float64).numpy())


def _np_view(t):
    """CPU contiguous numpy array of a float32 / float64 tensor without a dtype conversion (a view where the tensor
    already is one; other dtypes become float64). The kernels read either and compute in float64, so the results
    are the same as from a float64 copy, without the copy."""
    t = t.detach().cpu()
    if t.dtype not in (torch.float32, torch.float64):
        t = t.double()
    return np.ascontiguousarray(t.numpy())


def _camera_record(c2w: torch.Tensor, K: torch.Tensor) -> np.ndarray:
    """cam [23] of :func:`_project`: R_cw (row-major), t_cw, q_cw (wxyz), camera centre, fx, fy, cx, cy (float64)."""
    from ..core.gaussians import rotmat_to_quat

    c2w64 = c2w.detach().to("cpu", torch.float64)
    K64 = K.detach().to("cpu", torch.float64)
    R_cw = c2w64[:3, :3].T.contiguous()
    t_cw = -R_cw @ c2w64[:3, 3]
    q_cw = rotmat_to_quat(R_cw)
    return np.ascontiguousarray(torch.cat([R_cw.reshape(-1), t_cw, q_cw, c2w64[:3, 3], K64[0, 0:1], K64[1, 1:2],
                                           K64[0, 2:3], K64[1, 2:3]]).numpy())


class _RenderGrad(torch.autograd.Function):
    """(means [N,3], scales [N,3], quats [N,4], opacities [N], sh [N,K,3]) -> C [H,W,3], D [H,W], T [H,W]; forward
    and backward compiled (see :func:`render_grad`)."""

    @staticmethod
    def forward(ctx, cfg, means, scales, quats, opacities, sh):
        cam, deg, width, height, tile, eps2d, near, far = cfg
        arrs = [_np_view(x) for x in (means, scales, quats, opacities, sh)]
        c, d, t, saved = _run(_forward_grad_arrays, *arrs, deg, cam, width, height, tile, eps2d, near, far)
        ctx.save_for_backward(means, scales, quats, opacities, sh)  # autograd checks they are not changed meanwhile
        ctx.cfg, ctx.saved = cfg, saved
        ctx.meta = [(x.dtype, x.device) for x in (means, scales, quats, opacities, sh)]
        cast = lambda a: torch.from_numpy(a).to(device=means.device, dtype=means.dtype)  # noqa: E731
        return cast(c), cast(d), cast(t)

    @staticmethod
    def backward(ctx, g_c, g_d, g_t):
        cam, deg, width, height, tile, eps2d, near, far = ctx.cfg
        means, scales, quats, opacities, sh = [_np_view(x) for x in ctx.saved_tensors]
        as64 = lambda g, shape: np.zeros(shape) if g is None else _np64(g)  # noqa: E731
        gc = as64(g_c, (height, width, 3))
        gd = as64(g_d, (height, width))
        gt = as64(g_t, (height, width))
        def finish(*grads):  # copies: the arrays are reused by the next backward
            return [torch.from_numpy(g).to(device=dev, dtype=dt, copy=True) if need else None
                    for g, (dt, dev), need in zip(grads, ctx.meta, ctx.needs_input_grad[1:])]

        out = _run(_backward_grad_arrays, means, scales, quats, sh, deg, cam, width, height, tile, eps2d,
                   ctx.saved, gc, gd, gt, finish)
        return (None, *out)


def render_grad(scene, c2w: torch.Tensor, K: torch.Tensor, width: int, height: int, tile: int = TILE, *,
                eps2d: float = 0.3, near_plane: float = 0.01, far_plane: float = 1e10, sh_degree=None):
    """Differentiable render of one view, compiled forward and backward (:class:`_RenderGrad`): the image of
    :func:`render_nograd`, with gradients for the scene's means, scales, quats (as given, unnormalised), opacities
    and sh. Not for ``antialiased`` or cameras that require grad (the caller keeps the torch projection there).
    Returns C [H,W,3], D [H,W], T [H,W] in the scene's dtype."""
    deg = scene.sh_degree if sh_degree is None else min(int(sh_degree), scene.sh_degree)
    cfg = (_camera_record(c2w, K), int(deg), int(width), int(height), int(tile), float(eps2d), float(near_plane),
           float(far_plane))
    return _RenderGrad.apply(cfg, scene.means, scene.scales, scene.quats, scene.opacities, scene.sh)


# ------------------------------------------------------------------------------------------------ threads
_LOCK = threading.Lock()  # the workqueue layer must not be entered from two Python threads at once
_STATE = {"configured": False, "layer": None, "checked": False, "ok": False, "reason": "", "user_threads": None}


def configure_threads() -> str:
    """Choose numba's threading layer once per process, before its first parallel launch; returns the layer.

    Policy: ``workqueue`` (numba's own pool) — its idle workers sleep on a condition variable instead of spinning, so
    a CPU-bound neighbour (a browser) gets its share of the cores; it is always available (no TBB/OpenMP runtime
    needed) and our calls are serialised by a lock because that layer is not re-entrant. Also the GNU OpenMP runtime
    that torch already loaded cannot be switched to a passive wait policy after start-up, so ``omp`` is avoided.
    A user's explicit ``NUMBA_THREADING_LAYER`` is respected, and so is a layer another package already started.
    """
    if numba is None:
        return ""
    if not _STATE["configured"]:
        _STATE["configured"] = True
        from numba.np.ufunc import parallel as _par

        if not os.environ.get("NUMBA_THREADING_LAYER") and not getattr(_par, "_is_initialized", False):
            numba.config.THREADING_LAYER = "workqueue"
    try:
        _STATE["layer"] = numba.threading_layer()
    except ValueError:  # not launched yet
        _STATE["layer"] = numba.config.THREADING_LAYER
    return _STATE["layer"]


def num_threads() -> int:
    """Threads per call: torch's setting (one knob for the whole engine: ``torch.set_num_threads``), capped by the
    CPUs this process may run on and by numba's pool size (``NUMBA_NUM_THREADS``)."""
    n = _STATE["user_threads"] or torch.get_num_threads()
    try:
        n = min(n, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS / Windows
        n = min(n, os.cpu_count() or 1)
    return max(1, min(n, numba.config.NUMBA_NUM_THREADS))


class torch_threads:
    """``with torch_threads(1):`` runs torch ops on that many intra-op threads, restoring the setting after.

    Used around the torch glue of the numba backend (projection, sort): torch's OpenMP pool spin-waits at the barrier
    of every parallel op, so with a CPU-bound neighbour each of the ~50 small elementwise ops of the projection waits
    for a descheduled thread (measured on 2 busy cores, 218k Gaussians: 1.6 s with 2 threads, 0.3 s with 1)."""

    def __init__(self, n: int):
        self.n = n

    def __enter__(self):
        self.old = torch.get_num_threads()
        self.outer = _STATE["user_threads"]
        _STATE["user_threads"] = self.outer or self.old  # what num_threads() reads meanwhile
        if self.n < self.old:
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        _STATE["user_threads"] = self.outer
        if torch.get_num_threads() != self.old:
            torch.set_num_threads(self.old)


def _run(fn, *args):
    """``fn(*args)`` under the lock, on :func:`num_threads` numba threads, parallel loops handing out their work
    items dynamically, _CHUNK_TILES at a time (tiles differ in cost, and a worker slowed by a neighbour takes fewer)."""
    configure_threads()
    with _LOCK:
        numba.set_num_threads(num_threads())
        return _chunked(_CHUNK_TILES, fn, *args)


def _chunked(n, fn, *args):
    """``fn(*args)`` with numba's parallel chunk size ``n`` (0: even static split; restored after); callers hold
    _LOCK. Binning runs with 0: its 16 blocks in chunks of 4 are only 4 work items, which left a thread idle in a
    one-off timing on 2 threads."""
    if not hasattr(numba, "set_parallel_chunksize"):
        return fn(*args)
    old = numba.set_parallel_chunksize(n)
    try:
        return fn(*args)
    finally:
        numba.set_parallel_chunksize(old)


# ------------------------------------------------------------------------------------------------ autograd
class _Composite(torch.autograd.Function):
    """gp [G,10] (mx, my, a, b, c, o, z, r, g, b) depth-ordered, ext [G,2] (no grad) -> C [H,W,3], D [H,W], T [H,W]."""

    @staticmethod
    def forward(ctx, gp, ext, width, height, tile):
        gp64 = np.ascontiguousarray(gp.detach().to("cpu", torch.float64).numpy())
        ext64 = np.ascontiguousarray(ext.detach().to("cpu", torch.float64).numpy())
        tiles_x, tiles_y = (width + tile - 1) // tile, (height + tile - 1) // tile
        rect = _pixel_rects(gp64, ext64, width, height)
        offsets, ids = _run(_chunked, 0, _bin_tiles_par, rect, np.arange(rect.shape[0]), tile, tiles_x,
                            tiles_x * tiles_y)
        c = np.empty((height, width, 3))
        d = np.empty((height, width))
        t = np.empty((height, width))
        stop = np.empty((height, width), np.int64)
        _run(_forward, gp64, rect, offsets, ids, width, height, tile, tiles_x, c, d, t, stop)
        ctx.geom = (gp64, rect, offsets, ids, width, height, tile, tiles_x, t, stop)
        ctx.gp_meta = (gp.dtype, gp.device, gp.shape[0])
        cast = lambda a: torch.from_numpy(a).to(device=gp.device, dtype=gp.dtype)  # noqa: E731
        return cast(c), cast(d), cast(t)

    @staticmethod
    def backward(ctx, g_c, g_d, g_t):
        gp64, rect, offsets, ids, width, height, tile, tiles_x, t, stop = ctx.geom
        dtype, device, G = ctx.gp_meta
        as64 = lambda g, shape: (np.zeros(shape) if g is None else  # noqa: E731
                                 np.ascontiguousarray(g.detach().to("cpu", torch.float64).numpy()))
        gc = as64(g_c, (height, width, 3))
        gd = as64(g_d, (height, width))
        gt = as64(g_t, (height, width))
        g_isect = np.empty((ids.shape[0], 10))
        _run(_backward, gp64, rect, offsets, ids, width, height, tile, tiles_x, t, stop, gc, gd, gt, g_isect)
        grad = _reduce(ids, g_isect, G)
        return torch.from_numpy(grad).to(device=device, dtype=dtype), None, None, None, None


def composite(gp: torch.Tensor, ext: torch.Tensor, width: int, height: int, tile: int = TILE):
    """Differentiable compositing. gp [G,10] depth-ordered (mx, my, a, b, c, o, z, r, g, b); ext [G,2] half-widths in
    px of the alpha ≥ 1/255 region. Returns C [H,W,3] (Σ w c), D [H,W] (Σ w z), T [H,W] (final transmittance)."""
    return _Composite.apply(gp, ext, int(width), int(height), int(tile))


def nograd_usable() -> bool:
    """Guarded first call of the fully compiled forward (:func:`render_nograd`): it compiles and renders a
    two-Gaussian scene equal to the :func:`composite` path. When it fails, the caller keeps the torch projection +
    :func:`composite` (warned once) instead of raising on a user's machine."""
    st = _STATE
    if "nograd_ok" not in st:
        st["nograd_ok"] = False
        try:
            from ..core.gaussians import GaussianScene
            from .projection import project_gaussians

            with torch.inference_mode(False), torch.no_grad():
                sc = GaussianScene(means=torch.tensor([[0.0, 0.0, 2.0], [0.1, -0.05, 3.0]], dtype=torch.float64),
                                   scales=torch.tensor([[0.05, 0.08, 0.05], [0.1, 0.06, 0.07]], dtype=torch.float64),
                                   quats=torch.tensor([[1.0, 0, 0, 0], [0.9, 0.1, 0.2, 0.3]], dtype=torch.float64),
                                   opacities=torch.tensor([0.8, 0.6], dtype=torch.float64),
                                   sh=torch.tensor([[[0.5, 0.1, -0.2]], [[-0.3, 0.4, 0.2]]], dtype=torch.float64))
                c2w = torch.eye(4, dtype=torch.float64)
                K = torch.tensor([[10.0, 0, 8], [0, 10.0, 8], [0, 0, 1]], dtype=torch.float64)
                C, D, T = render_nograd(sc, c2w, K, 16, 16, 8)
                p = project_gaussians(sc, c2w, K, 16, 16)
                gp = torch.cat([p.means2d, p.conic, p.opacity[:, None], p.depth[:, None], p.color], 1)
                order = torch.argsort(p.depth, stable=True)
                C2, D2, T2 = composite(gp[order], p.extent[order], 16, 16, 8)
            st["nograd_ok"] = bool(torch.allclose(C, C2, atol=1e-9) and torch.allclose(T, T2, atol=1e-9))
            if not st["nograd_ok"]:
                st["nograd_reason"] = "test render differs from the composite path"
        except Exception as e:  # compile error, missing symbol ... -> the torch projection path
            st["nograd_reason"] = f"{type(e).__name__}: {e}"
        if not st["nograd_ok"]:
            warnings.warn(f"numba compiled projection unavailable ({st.get('nograd_reason')}); projecting in torch.")
    return st["nograd_ok"]


def grad_usable() -> bool:
    """Guarded first call of the compiled autograd path (:func:`render_grad`): it compiles, and a two-Gaussian scene
    (SH degree 1) gives the image and the gradients of every scene input of the torch projection + :func:`composite`
    path (to 1e-8). When it fails, fitting keeps that path (warned once) instead of raising on a user's machine."""
    st = _STATE
    if "grad_ok" not in st:
        st["grad_ok"] = False
        try:
            from ..core.gaussians import GaussianScene
            from .projection import project_gaussians

            with torch.inference_mode(False), torch.enable_grad():
                vals = [torch.tensor([[0.0, 0.0, 2.0], [0.1, -0.05, 3.0]]),
                        torch.tensor([[0.05, 0.08, 0.05], [0.1, 0.06, 0.07]]),
                        torch.tensor([[1.0, 0, 0, 0], [0.9, 0.1, 0.2, 0.3]]), torch.tensor([0.8, 0.6]),
                        torch.tensor([[[0.5, 0.1, -0.2], [0.1, 0.0, 0.2], [0.0, 0.3, 0.1], [-0.2, 0.1, 0.0]],
                                      [[-0.3, 0.4, 0.2], [0.2, -0.1, 0.0], [0.1, 0.1, 0.1], [0.0, 0.2, -0.3]]])]
                c2w = torch.eye(4, dtype=torch.float64)
                K = torch.tensor([[10.0, 0, 8], [0, 10.0, 8], [0, 0, 1]], dtype=torch.float64)
                outs = []
                for compiled in (True, False):
                    leaves = [v.double().requires_grad_(True) for v in vals]
                    sc = GaussianScene(*leaves)
                    if compiled:
                        C, D, T = render_grad(sc, c2w, K, 16, 16, 8)
                    else:
                        p = project_gaussians(sc, c2w, K, 16, 16)
                        gp = torch.cat([p.means2d, p.conic, p.opacity[:, None], p.depth[:, None], p.color], 1)
                        order = torch.argsort(p.depth.detach(), stable=True)
                        C, D, T = composite(gp[order], p.extent[order], 16, 16, 8)
                    (C.sum() + 0.3 * D.sum() + T.sum()).backward()
                    outs.append([C.detach(), T.detach()] + [x.grad for x in leaves])
            st["grad_ok"] = all(a is not None and b is not None and bool(torch.allclose(a, b, atol=1e-8, rtol=1e-6))
                                for a, b in zip(*outs)) and float(outs[0][2].abs().sum()) > 0
            if not st["grad_ok"]:
                st["grad_reason"] = "test render or its gradients differ from the torch projection path"
        except Exception as e:  # compile error, missing symbol ... -> the torch projection path
            st["grad_reason"] = f"{type(e).__name__}: {e}"
        if not st["grad_ok"]:
            warnings.warn(f"numba compiled autograd path unavailable ({st.get('grad_reason')}); projecting in torch "
                          f"autograd.")
    return st["grad_ok"]


def unusable_reason() -> str:
    """Why :func:`usable` said no ("" when it said yes or has not run)."""
    return _STATE["reason"]


def usable() -> bool:
    """Guarded first call: numba imports, compiles and renders a two-Gaussian scene correctly (forward + backward)."""
    st = _STATE
    if not st["checked"]:
        st["checked"] = True
        try:
            if numba is None:
                raise ImportError(_IMPORT_ERROR or "numba is not installed")
            # the probe may run inside a caller's no_grad block or ComfyUI's torch.inference_mode(), where tensors
            # made here could not take part in autograd: leave both for the probe
            with torch.inference_mode(False), torch.enable_grad():
                gp = torch.tensor([[4.0, 4.0, 0.5, 0.0, 0.5, 0.8, 2.0, 1.0, 0.5, 0.2],
                                   [4.5, 3.5, 0.3, 0.1, 0.4, 0.6, 3.0, 0.1, 0.9, 0.3]], dtype=torch.float64,
                                  requires_grad=True)
                ext = torch.full((2, 2), 8.0, dtype=torch.float64)
                c, d, t = composite(gp, ext, 8, 8, 4)
                (c.sum() + d.sum() + t.sum()).backward()
            # pixel (3, 3), centre (3.5, 3.5): Gaussian 0 (z = 2) at σ = 0.125 first, then Gaussian 1 at σ = 0.15
            a0, a1 = 0.8 * math.exp(-0.125), 0.6 * math.exp(-0.15)
            want_r, want_t = a0 * 1.0 + (1 - a0) * a1 * 0.1, (1 - a0) * (1 - a1)
            st["ok"] = bool(abs(float(c.detach()[3, 3, 0]) - want_r) < 1e-12 and abs(float(t.detach()[3, 3]) - want_t) < 1e-12
                            and bool(torch.isfinite(gp.grad).all()) and float(gp.grad.abs().sum()) > 0)
            if not st["ok"]:
                st["reason"] = "test render returned wrong values"
        except Exception as e:  # any failure (missing package, compile error) -> the torch backend
            st["ok"] = False
            st["reason"] = f"{type(e).__name__}: {e}"
        if not st["ok"]:
            warnings.warn(f"numba backend unavailable ({st['reason']}); using the pure-torch rasterizer.")
    return st["ok"]
