"""Compiled CPU compositing for :mod:`vscene_engine.rasterize` (numba). Entry point: :func:`composite`.

Only the per-tile, per-pixel front-to-back loop is compiled; EWA projection and SH stay in torch (and differentiable
there). ``composite(gp, extent, width, height, tile)`` takes the projected Gaussians already in exact depth order
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

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
TILE = 16  # tile edge in pixels
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


@_jit
def _bin_tiles(rect, tile, tiles_x, n_tiles):
    """Per-tile Gaussian lists in depth order: offsets [n_tiles+1], ids [n_isect] (serial, so order is kept)."""
    G = rect.shape[0]
    counts = np.zeros(n_tiles + 1, np.int64)
    for g in range(G):
        if rect[g, 0] > rect[g, 1] or rect[g, 2] > rect[g, 3]:
            continue
        for ty in range(rect[g, 2] // tile, rect[g, 3] // tile + 1):
            for tx in range(rect[g, 0] // tile, rect[g, 1] // tile + 1):
                counts[ty * tiles_x + tx + 1] += 1
    offsets = np.cumsum(counts)
    fill = offsets[:-1].copy()
    ids = np.empty(offsets[-1], np.int64)
    for g in range(G):
        if rect[g, 0] > rect[g, 1] or rect[g, 2] > rect[g, 3]:
            continue
        for ty in range(rect[g, 2] // tile, rect[g, 3] // tile + 1):
            for tx in range(rect[g, 0] // tile, rect[g, 1] // tile + 1):
                t = ty * tiles_x + tx
                ids[fill[t]] = g
                fill[t] += 1
    return offsets, ids


@_jit(parallel=True)
def _forward(gp, rect, offsets, ids, width, height, tile, tiles_x, out_c, out_d, out_t, out_stop):
    """Front-to-back compositing. gp [G,10] float64 (mx, my, a, b, c, o, z, r, g, b) in depth order.

    Writes out_c [H,W,3], out_d [H,W], out_t [H,W] and out_stop [H,W] (position, in the tile's list, of the Gaussian
    before which the pixel stopped; the list length if it never did)."""
    n_tiles = offsets.shape[0] - 1
    for t in prange(n_tiles):
        X0, Y0 = (t % tiles_x) * tile, (t // tiles_x) * tile
        X1, Y1 = min(X0 + tile, width), min(Y0 + tile, height)
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


@_jit(parallel=True)
def _backward(gp, rect, offsets, ids, width, height, tile, tiles_x, t_final, stop_all, g_c, g_d, g_t, g_isect):
    """Back-to-front pass (3DGS): re-derives Tᵢ = Tᵢ₊₁/(1-αᵢ) and writes one gradient row per intersection,
    g_isect [n_isect, 10] = dL/d(mx, my, a, b, c, o, z, r, g, b), given dL/dC [H,W,3], dL/dD [H,W], dL/dT [H,W].

    With S = Σ_{j>i} w_j (c_j, z_j):  dL/dαᵢ = Tᵢ (cᵢ·gC + zᵢ gD) - (S·(gC, gD) + T_final gT) / (1 - αᵢ)."""
    n_tiles = offsets.shape[0] - 1
    for t in prange(n_tiles):
        X0, Y0 = (t % tiles_x) * tile, (t // tiles_x) * tile
        X1, Y1 = min(X0 + tile, width), min(Y0 + tile, height)
        tw, th = X1 - X0, Y1 - Y0
        s, e = offsets[t], offsets[t + 1]
        T = t_final[Y0:Y1, X0:X1].copy()
        S = np.zeros((th, tw, 4))
        for k in range(e - 1, s - 1, -1):
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


@_jit
def _reduce(ids, g_isect, n_gauss):
    """Sum the per-intersection gradient rows into per-Gaussian rows (fixed order: deterministic)."""
    out = np.zeros((n_gauss, g_isect.shape[1]))
    for k in range(ids.shape[0]):
        out[ids[k]] += g_isect[k]
    return out


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
    configure_threads()
    with _LOCK:
        numba.set_num_threads(num_threads())
        if hasattr(numba, "set_parallel_chunksize"):
            old = numba.set_parallel_chunksize(_CHUNK_TILES)
            try:
                return fn(*args)
            finally:
                numba.set_parallel_chunksize(old)
        return fn(*args)


# ------------------------------------------------------------------------------------------------ autograd
class _Composite(torch.autograd.Function):
    """gp [G,10] (mx, my, a, b, c, o, z, r, g, b) depth-ordered, ext [G,2] (no grad) -> C [H,W,3], D [H,W], T [H,W]."""

    @staticmethod
    def forward(ctx, gp, ext, width, height, tile):
        gp64 = np.ascontiguousarray(gp.detach().to("cpu", torch.float64).numpy())
        ext64 = np.ascontiguousarray(ext.detach().to("cpu", torch.float64).numpy())
        tiles_x, tiles_y = (width + tile - 1) // tile, (height + tile - 1) // tile
        rect = _pixel_rects(gp64, ext64, width, height)
        offsets, ids = _bin_tiles(rect, tile, tiles_x, tiles_x * tiles_y)
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
