"""Gaussian-splat rasterizer: one entry point, :func:`render`.

``render(scene, cameras)`` renders a :class:`~vscene_engine.core.gaussians.GaussianScene` from a batch of
:class:`~vscene_engine.core.cameras.Cameras` and returns a :class:`RenderOutput` with

* ``rgb``   [N,H,W,3]  composited colour (background added where transmittance is left),
* ``alpha`` [N,H,W,1]  accumulated opacity ``1 - T_final``,
* ``depth`` [N,H,W,1]  expected depth ``sum(w z) / sum(w)`` (0 where nothing was hit),

differentiable (torch autograd) in every Gaussian parameter: means, scales, quaternions, opacities, SH.

Conventions. Cameras are OpenCV camera-to-world (+x right, +y down, +z forward), K in pixels; the centre of pixel
(col i, row j) is at (i+0.5, j+0.5). Gaussians carry activated values (linear scales, wxyz quaternions — normalised
here, so unnormalised input is accepted — opacities in [0,1], SH [N,K,3] up to degree 4).

Image formation (identical to 3DGS / gsplat "classic" mode, which is what makes the two backends agree):

1. EWA projection: camera-space covariance ``W Σ Wᵀ``, Jacobian of the pinhole projection evaluated at the mean with
   its x/y clamped to 1.3× the field of view (gsplat's guard against blow-up at the frustum edge), low-pass dilation
   ``Σ2d + eps2d·I`` (eps2d = 0.3 px²). ``antialiased=True`` also scales opacity by ``sqrt(det Σ2d / det Σ2d')``
   (Mip-Splatting / gsplat "antialiased" mode). Gaussians with depth outside ``[near_plane, far_plane]`` are dropped.
2. Colour: ``max(SH(dir) + 0.5, 0)`` with ``dir = mean - camera_centre`` (world space).
3. Per pixel, front-to-back in exact view-depth order (ties: scene order):
   ``alpha = min(0.999, o · exp(-½ dᵀ Σ2d'⁻¹ d))``; contributions with ``alpha < 1/255`` are skipped; a pixel stops
   *before* the Gaussian that would bring its transmittance to ``T ≤ 1e-4`` (early termination).

Backends (all produce the image above; ``RenderOutput.backend`` says which one ran):

* ``"torch"``: the exact pure-torch tiled rasterizer below (alpha and transmittance in float64), any device. It never
  truncates a Gaussian's footprint: the tile/pixel range of each Gaussian is the exact extent where ``alpha ≥ 1/255``
  can hold (an opacity-aware ellipse bound, padded), so it equals a brute-force evaluation of every Gaussian at every
  pixel. The reference the others are tested against.
* ``"numba"``: projection, SH, culling, depth sort, binning and the per-tile, per-pixel front-to-back loop compiled
  for the CPU (:mod:`vscene_engine.render.raster_numba`: float64 whatever the scene dtype, parallel over tiles), with a
  hand-written backward of all of it (``raster_numba.render_grad``; without autograd ``render_nograd``). Equal to
  ``"torch"`` to ~1e-12 (images) / ~1e-8 relative (gradients). With ``antialiased=True``, cameras that require grad,
  or when the compiled autograd path's guarded first call fails, the projection runs in torch autograd and only the
  compositing is compiled. Its thread policy
  (non-spinning pool, ``torch.get_num_threads()`` threads) is documented there.
* ``"torch32"``: the torch rasterizer with no float64 anywhere (MPS has none, consumer NVIDIA cards run it at 1/64
  speed): alpha in float32, transmittance scanned in int64 fixed point. Equal to the reference to float32 rounding
  (~1e-6, tested at 5e-5).
* ``"gsplat"``: the CUDA rasterizer of the gsplat package. gsplat caps footprints at 3σ, so it agrees with the others
  to ~1e-3, not bit for bit.

``"auto"`` picks gsplat on CUDA after a guarded first call succeeds (gsplat JIT-compiles on first use, so a successful
import proves nothing) → ``"torch32"`` on CUDA/MPS → ``"numba"`` on CPU when numba imports and its guarded first call
(compile + a two-Gaussian render checked against closed form) succeeds → ``"torch"``; a failed guarded call warns once.

How the torch backend works (all vectorised, no Python loop over Gaussians or pixels):
Gaussians are sorted by depth and processed in depth-ordered chunks. For a chunk, each Gaussian's tile range is
expanded to (Gaussian, tile) intersections, stably sorted by tile (so each tile's list is depth-ordered). Alpha is
evaluated densely for the tile's ``tile×tile`` pixels in a pixel-major layout ``[P, n_isect]``; the surviving
(alpha ≥ 1/255, pixel not yet terminated) entries, read out in row-major order, come grouped per pixel and in depth
order, so one flat float64 cumulative sum of ``log(1-alpha)`` gives every pixel's transmittance (segmented scan).
Per-pixel state (log-transmittance, termination) carries across chunks, so pixels that are done cost nothing in
later chunks and fully-terminated tiles are skipped.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from . import raster_numba
from .projection import Projected, project_gaussians
from ..core.gaussians import all_finite
from ..core.runtime import Progress, as_progress

ALPHA_MIN = 1.0 / 255.0
ALPHA_MAX = 0.999
T_MIN = 1e-4
_LOG_T_MIN = math.log(T_MIN)

__all__ = ["render", "RenderOutput", "project_gaussians", "Projected", "available_backends"]


@dataclass
class RenderOutput:
    """Rendered images. rgb [N,H,W,3], alpha [N,H,W,1], depth [N,H,W,1] (expected view depth, 0 where alpha==0)."""

    rgb: torch.Tensor
    alpha: torch.Tensor
    depth: torch.Tensor
    backend: str = "torch"


_DONE = 1.0e4  # offset subtracted from a terminated pixel's log-transmittance (exact to ~1e-12, see below)
_FX = float(1 << 32)  # float32 path: log-transmittance in int64 fixed point, 2^-32 per unit (exact segmented sums)
_DONE_FX = int(_DONE * _FX)
_LOG_T_MIN_FX = int(round(_LOG_T_MIN * _FX))


def _render_one_torch(
    proj: Projected,
    width: int,
    height: int,
    background: torch.Tensor,
    tile: int,
    chunk: int,
    check_interrupt=None,
    exact64: bool = True,
):
    """Exact tiled compositing of one view; returns rgb [H,W,3], alpha [H,W,1], depth [H,W,1].

    Per-pixel state is one float64 ``log_T`` array. A terminated pixel gets ``_DONE`` subtracted once, so every later
    entry for it fails the ``T > 1e-4`` test without a second lookup; the offset is added back at the end.

    ``exact64=False`` is the float32 path for CUDA/MPS (no float64 anywhere): alpha is evaluated in float32, and the
    transmittance scan runs on ``log(1-alpha)`` rounded to int64 fixed point (2^-32), so the flat segmented cumsum
    has no cancellation (a float32 flat cumsum over millions of entries would lose every digit); gradients flow through
    a float32 copy of the same scan (values from the integers, derivatives from the floats).
    """
    dev, dtype = proj.means2d.device, proj.means2d.dtype
    cdt = torch.float64 if exact64 else torch.float32  # compute dtype of alpha
    need_grad = torch.is_grad_enabled() and any(
        t.requires_grad for t in (proj.means2d, proj.conic, proj.opacity, proj.depth, proj.color))
    tiles_x, tiles_y = (width + tile - 1) // tile, (height + tile - 1) // tile
    n_tiles, P = tiles_x * tiles_y, tile * tile
    n_pix = n_tiles * P  # pixel id = tile_id * P + p  (tile-major layout, converted at the end)

    order = torch.argsort(proj.depth.detach(), stable=True)
    # packed per-Gaussian record, depth order: mx, my, conic a b c, opacity, depth, r g b
    gp = torch.cat(
        [proj.means2d, proj.conic, proj.opacity[:, None], proj.depth[:, None], proj.color], 1
    ).index_select(0, order)
    gpd = gp.detach()
    ext = proj.extent.index_select(0, order)

    # Tile range of each Gaussian: tiles holding pixel centres within [m - e, m + e] (e pads the exact bound).
    px0 = torch.ceil(gpd[:, 0] - ext[:, 0] - 0.5).clamp(0, width - 1)
    px1 = torch.floor(gpd[:, 0] + ext[:, 0] - 0.5).clamp(0, width - 1)
    py0 = torch.ceil(gpd[:, 1] - ext[:, 1] - 0.5).clamp(0, height - 1)
    py1 = torch.floor(gpd[:, 1] + ext[:, 1] - 0.5).clamp(0, height - 1)
    tx0 = torch.div(px0, tile, rounding_mode="floor").long()
    ty0 = torch.div(py0, tile, rounding_mode="floor").long()
    ntx = (torch.div(px1, tile, rounding_mode="floor").long() + 1 - tx0).clamp_min(0)
    nty = (torch.div(py1, tile, rounding_mode="floor").long() + 1 - ty0).clamp_min(0)
    counts = ntx * nty

    # Pixel offsets (ox, oy) of the P pixel centres of a tile from the tile centre, as the monomial basis of
    # sigma - log(o) (see the chunk loop); alpha >= 1/255  <=>  sigma - log(o) <= log(255).
    pr = torch.arange(P, device=dev)
    ox = (pr % tile).to(cdt) + 0.5 - tile / 2.0
    oy = torch.div(pr, tile, rounding_mode="floor").to(cdt) + 0.5 - tile / 2.0
    basis = torch.stack([torch.ones_like(ox), ox, oy, ox * ox, ox * oy, oy * oy], 1)  # [P,6]
    log255 = math.log(255.0)

    # Pixels of partial border tiles that lie outside the image never take contributions.
    tid = torch.arange(n_tiles, device=dev)
    gx = ((tid % tiles_x) * tile).repeat_interleave(P) + (pr % tile).repeat(n_tiles)
    gy = (torch.div(tid, tiles_x, rounding_mode="floor") * tile).repeat_interleave(P) + torch.div(
        pr, tile, rounding_mode="floor").repeat(n_tiles)
    outside = (gx >= width) | (gy >= height)
    if exact64:
        log_T = torch.where(outside, -_DONE, 0.0).to(torch.float64)
        done_lvl = -0.5 * _DONE
    else:
        log_T = torch.where(outside, -_DONE_FX, 0).to(torch.int64)  # values (fixed point)
        log_T_g = torch.zeros(n_pix, device=dev, dtype=cdt)  # the same sums in float32, for gradients only
        done_lvl = -(_DONE_FX // 2)
    acc = torch.zeros(n_pix, 4, device=dev, dtype=dtype)  # depth, r, g, b (= columns 6:10 of the record)

    G = gp.shape[0]
    csum = torch.cumsum(counts, 0)
    start = 0
    while start < G:
        if check_interrupt is not None:
            check_interrupt()
        base = int(csum[start - 1]) if start > 0 else 0
        end = int(torch.searchsorted(csum, torch.tensor(base + chunk, device=dev), right=True))
        end = min(max(end, start + 1), G)
        cnt = counts[start:end]
        n_is = int(cnt.sum())
        g0 = start
        start = end
        if n_is == 0:
            continue
        gi = torch.repeat_interleave(torch.arange(g0, end, device=dev), cnt)  # Gaussian per intersection, depth order
        k = torch.arange(n_is, device=dev) - torch.repeat_interleave(torch.cumsum(cnt, 0) - cnt, cnt)
        w_t = ntx.index_select(0, gi)
        t_x = tx0.index_select(0, gi) + k % w_t
        t_y = ty0.index_select(0, gi) + torch.div(k, w_t, rounding_mode="floor")
        t_id = t_y * tiles_x + t_x
        tile_done = (log_T.view(n_tiles, P) < done_lvl).all(1)
        live = ~tile_done.index_select(0, t_id)
        if not bool(live.all()):
            keep = live.nonzero().squeeze(1)
            gi, t_id, t_x, t_y = gi[keep], t_id[keep], t_x[keep], t_y[keep]
            if gi.numel() == 0:
                continue
        srt = torch.argsort(t_id, stable=True)  # group by tile, keep depth order inside a tile
        gi, t_id, t_x, t_y = gi[srt], t_id[srt], t_x[srt], t_y[srt]
        n = gi.numel()

        # --- -log(alpha) of every (pixel, intersection) of the chunk as one float64 matmul, differentiable:
        # sigma - log(o) = c0 + c1 ox + c2 oy + c3 ox^2 + c4 ox oy + c5 oy^2 with (ox, oy) the pixel offset from the
        # tile centre; exact algebra (float64 keeps the expansion's rounding ~1e-13 relative).
        q = gp.index_select(0, gi)  # [n,10]: mx, my, a, b, c, opacity, depth, r, g, b
        q64 = q[:, :6].to(cdt)
        bx = (t_x * tile).to(cdt) + tile / 2.0 - q64[:, 0]
        by = (t_y * tile).to(cdt) + tile / 2.0 - q64[:, 1]
        a, b, c = q64[:, 2], q64[:, 3], q64[:, 4]
        coef = torch.stack(
            [0.5 * a * bx * bx + b * bx * by + 0.5 * c * by * by - torch.log(q64[:, 5]), a * bx + b * by,
             b * bx + c * by, 0.5 * a, b, 0.5 * c], 1)  # [n,6]
        nla = basis @ coef.T  # [P, n]  = -log(unclamped alpha)
        live_px = log_T.view(n_tiles, P) > done_lvl  # pixels not terminated by earlier chunks
        cand = (nla.detach() <= log255) & live_px.index_select(0, t_id).T
        nz = cand.nonzero()  # row-major: grouped by (p, tile) == by pixel, depth-ordered inside
        if nz.numel() == 0:
            continue
        p, j = nz[:, 0].contiguous(), nz[:, 1].contiguous()
        pix = (t_id * P).index_select(0, j) + p
        alpha = torch.clamp_max(torch.exp(-nla.view(-1).index_select(0, p * n + j)), ALPHA_MAX)  # cdt

        # --- segmented front-to-back scan: entries are grouped per pixel, depth-ordered inside a group
        l = torch.log1p(-alpha)
        new_seg = torch.ones_like(pix, dtype=torch.bool)
        new_seg[1:] = pix[1:] != pix[:-1]
        pos = torch.arange(pix.numel(), device=dev)
        seg_start = torch.where(new_seg, pos, torch.zeros_like(pos)).cummax(0).values
        if exact64:
            excl = torch.cumsum(l, 0) - l
            log_T_excl = log_T.index_select(0, pix) + (excl - excl.index_select(0, seg_start))
            include = (log_T_excl + l) > _LOG_T_MIN
            lte = log_T_excl
            l_v, stop_v = l, -_DONE
        else:
            l_v = torch.round(l.detach() * _FX).to(torch.int64)  # exact: l * 2^32 only shifts the exponent
            excl = torch.cumsum(l_v, 0) - l_v
            log_T_excl = log_T.index_select(0, pix) + (excl - excl.index_select(0, seg_start))
            include = (log_T_excl + l_v) > _LOG_T_MIN_FX
            lte = log_T_excl.to(cdt) / _FX
            stop_v = -_DONE_FX
            if need_grad:
                excl_g = torch.cumsum(l, 0) - l
                lte_g = log_T_g.index_select(0, pix) + (excl_g - excl_g.index_select(0, seg_start))
                lte = lte_g + (lte - lte_g).detach()
                log_T_g = log_T_g.index_add(0, pix, torch.where(include, l, torch.zeros_like(l)))
        w = alpha * torch.exp(lte)
        upd = l_v
        if not bool(include.all()):
            w = torch.where(include, w, torch.zeros_like(w))
            # the first excluded entry of a live pixel terminates it: add the _DONE offset once
            prev_in = torch.ones_like(include)
            prev_in[1:] = include[:-1]
            stop = ~include & (new_seg | prev_in) & (log_T_excl > done_lvl)
            upd = torch.where(include, l_v, torch.where(stop, torch.full_like(l_v, stop_v), torch.zeros_like(l_v)))
        acc = acc.index_add(0, pix, w.to(dtype)[:, None] * q[:, 6:10].index_select(0, j))
        log_T = log_T.index_add(0, pix, upd)

    done = log_T < done_lvl
    if exact64:
        T = torch.exp(torch.where(done, log_T + _DONE, log_T)).to(dtype)
    else:
        lt = torch.where(done, log_T + _DONE_FX, log_T).to(cdt) / _FX
        if need_grad:
            lt = log_T_g + (lt - log_T_g).detach()
        T = torch.exp(lt).to(dtype)
    T = torch.where(outside, torch.zeros_like(T), T)
    alpha_img = 1.0 - T
    rgb = acc[:, 1:4] + T[:, None] * background.to(dtype)
    dep = torch.where(alpha_img > 0, acc[:, 0] / alpha_img.clamp_min(1e-12), torch.zeros_like(alpha_img))

    def to_img(v: torch.Tensor) -> torch.Tensor:  # [n_pix, C] tile-major -> [H, W, C]
        C = v.shape[-1]
        v = v.view(tiles_y, tiles_x, tile, tile, C).permute(0, 2, 1, 3, 4).reshape(tiles_y * tile, tiles_x * tile, C)
        return v[:height, :width]

    return to_img(rgb), to_img(alpha_img[:, None]), to_img(dep[:, None])


# ----------------------------------------------------------------------------------------------------------------
# backends
_GSPLAT_STATE = {"checked": False, "ok": False, "reason": ""}


def _gsplat_usable(device: torch.device) -> bool:
    """Guarded first call: gsplat is used only after a tiny real render on ``device`` succeeded."""
    if device.type != "cuda":
        return False
    st = _GSPLAT_STATE
    if not st["checked"]:
        st["checked"] = True
        try:
            from gsplat import rasterization  # noqa: F401

            means = torch.tensor([[0.0, 0.0, 2.0]], device=device)
            quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]], device=device)
            scales = torch.full((1, 3), 0.1, device=device)
            Ks = torch.tensor([[[16.0, 0, 8], [0, 16.0, 8], [0, 0, 1]]], device=device)
            out, _, _ = rasterization(
                means, quats, scales, torch.ones(1, device=device), torch.ones(1, 3, device=device),
                torch.eye(4, device=device)[None], Ks, 16, 16,
            )
            torch.cuda.synchronize(device)
            st["ok"] = bool(torch.isfinite(out).all())
            if not st["ok"]:
                st["reason"] = "test render returned non-finite values"
        except Exception as e:  # any failure (missing package, JIT compile error, driver) -> torch backend
            st["ok"] = False
            st["reason"] = f"{type(e).__name__}: {e}"
        if not st["ok"]:
            warnings.warn(f"gsplat backend unavailable ({st['reason']}); using the pure-torch rasterizer.")
    return st["ok"]


BACKENDS = ("auto", "torch", "torch32", "numba", "gsplat")


def available_backends(device: torch.device | str = "cpu") -> list[str]:
    """Backends usable on ``device`` (runs the guarded first calls of gsplat on CUDA and of numba on CPU)."""
    device = torch.device(device)
    out = ["torch", "torch32"]
    if device.type == "cpu" and raster_numba.usable():
        out.append("numba")
    if _gsplat_usable(device):
        out.append("gsplat")
    return out


def _choose_backend(backend: str, device: torch.device) -> str:
    """Resolve ``backend`` on ``device``; "auto": gsplat (CUDA, guarded first call) -> torch32 on CUDA/MPS ->
    numba on CPU (guarded first call) -> torch."""
    if backend not in BACKENDS:
        raise ValueError(f"render: unknown backend {backend!r}; use one of {', '.join(BACKENDS)}.")
    if backend == "gsplat" and not _gsplat_usable(device):
        raise RuntimeError(
            f"render: backend='gsplat' requested but unusable on {device} "
            f"({_GSPLAT_STATE['reason'] or 'needs CUDA'}); use backend='torch32', 'torch' or 'auto'."
        )
    if backend == "numba" and not raster_numba.usable():
        raise RuntimeError(
            f"render: backend='numba' requested but unusable ({raster_numba.unusable_reason()}); "
            "install it with `pip install numba`, or use backend='torch' or 'auto'."
        )
    if backend != "auto":
        return backend
    if _gsplat_usable(device):
        return "gsplat"
    if device.type in ("cuda", "mps"):
        return "torch32"
    if device.type == "cpu" and raster_numba.usable():
        return "numba"
    return "torch"


def _render_gsplat(scene, c2w, K, width, height, background, eps2d, antialiased, near_plane, far_plane, sh_degree):
    from gsplat import rasterization

    deg = scene.sh_degree if sh_degree is None else min(sh_degree, scene.sh_degree)
    viewmats = torch.linalg.inv(c2w)
    out, alphas, _ = rasterization(
        scene.means, scene.quats / scene.quats.norm(dim=-1, keepdim=True), scene.scales, scene.opacities,
        scene.sh[:, : (deg + 1) ** 2], viewmats, K, width, height, sh_degree=deg, near_plane=near_plane,
        far_plane=far_plane, eps2d=eps2d, render_mode="RGB+ED", backgrounds=None,
        rasterize_mode="antialiased" if antialiased else "classic",
    )
    rgb, depth = out[..., :3], out[..., 3:4]
    rgb = rgb + (1.0 - alphas) * background.to(rgb)
    return rgb, alphas, torch.where(alphas > 0, depth, torch.zeros_like(depth))


def render(
    scene,
    cameras,
    background: Optional[Sequence[float] | torch.Tensor] = None,
    *,
    backend: str = "auto",
    eps2d: float = 0.3,
    antialiased: bool = False,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    sh_degree: Optional[int] = None,
    tile: Optional[int] = None,
    chunk: int = 1 << 16,
    progress: Progress | None = None,
) -> RenderOutput:
    """Render ``scene`` (GaussianScene) from every camera in ``cameras`` (Cameras, OpenCV c2w).

    background: RGB in [0,1] (default black). backend: "auto" | "torch" | "torch32" | "numba" | "gsplat" (see the
    module docstring). eps2d: low-pass dilation in px².
    antialiased: opacity compensation for the dilation. near_plane/far_plane: view-depth culling of Gaussian centres
    (independent of ``cameras.near/far``, which describe the scene). sh_degree: use at most this SH degree.
    tile: tile edge in pixels (torch backends default: from the mean footprint, 4 for pixel-sized Gaussians,
    8 / 16 for larger ones; numba: 16; any value gives the same image); chunk: max (Gaussian, tile) intersections processed at once
    (bounds memory). progress: a :class:`~vscene_engine.core.runtime.Progress`; only its ``check_interrupt()`` is called
    (once per view and once per chunk).
    Returns RenderOutput(rgb [N,H,W,3], alpha [N,H,W,1], depth [N,H,W,1]).
    """
    check_interrupt = as_progress(progress).check_interrupt
    W, H = int(cameras.width), int(cameras.height)
    if W <= 0 or H <= 0:
        raise ValueError(f"render: image size must be positive, got {W}x{H}; give cameras with a real image size.")
    if tile is not None and tile < 1:
        raise ValueError(f"render: tile must be >= 1, got {tile}")
    n_cam = len(cameras)
    dev, dtype = scene.means.device, scene.means.dtype
    if background is None:
        bg = torch.zeros(3, device=dev, dtype=dtype)
    else:
        bg = torch.as_tensor(background, device=dev, dtype=dtype).reshape(-1)
        if bg.numel() == 1:
            bg = bg.expand(3)
        if bg.numel() != 3 or not torch.isfinite(bg).all():
            raise ValueError("render: background must be 3 finite numbers (RGB in 0..1).")
    _check_scene(scene)
    c2ws, Ks = cameras.c2w.to(device=dev, dtype=dtype), cameras.K.to(device=dev, dtype=dtype)
    if not (torch.isfinite(c2ws).all() and torch.isfinite(Ks).all()):
        raise ValueError("render: cameras contain NaN/inf; fix the camera poses/intrinsics (Cameras.validate()).")

    name = _choose_backend(backend, dev)
    rgbs, alphas, depths = [], [], []
    if len(scene) == 0 or n_cam == 0:
        rgb = bg.expand(n_cam, H, W, 3).clone()
        z = torch.zeros(n_cam, H, W, 1, device=dev, dtype=dtype)
        return RenderOutput(rgb, z, z.clone(), name)
    if name == "gsplat":
        rgb, alpha, depth = _render_gsplat(
            scene, c2ws, Ks, W, H, bg, eps2d, antialiased, near_plane, far_plane, sh_degree
        )
        return RenderOutput(rgb, alpha, depth, "gsplat")
    for i in range(n_cam):
        if check_interrupt is not None:
            check_interrupt()
        if name == "numba":
            kw = dict(eps2d=eps2d, antialiased=antialiased, near_plane=near_plane, far_plane=far_plane,
                      sh_degree=sh_degree)
            with raster_numba.torch_threads(raster_numba.TORCH_GLUE_THREADS):  # see raster_numba.torch_threads
                if not _needs_grad(scene, c2ws[i], Ks[i]) and raster_numba.nograd_usable():  # compiled projection too
                    C, D, T = raster_numba.render_nograd(scene, c2ws[i], Ks[i], W, H, tile or raster_numba.TILE, **kw)
                    rgb, alpha, depth = _finish_numba(C, D, T, bg)
                elif (not antialiased and not c2ws.requires_grad and not Ks.requires_grad
                      and raster_numba.grad_usable()):  # projection and its backward compiled too
                    C, D, T = raster_numba.render_grad(scene, c2ws[i], Ks[i], W, H, tile or raster_numba.TILE,
                                                       eps2d=eps2d, near_plane=near_plane, far_plane=far_plane,
                                                       sh_degree=sh_degree)
                    rgb, alpha, depth = _finish_numba(C, D, T, bg)
                else:
                    proj = _project_few_threads(scene, c2ws[i], Ks[i], W, H, kw)
                    rgb, alpha, depth = _render_one_numba(proj, W, H, bg, tile or raster_numba.TILE)
        else:
            proj = project_gaussians(
                scene, c2ws[i], Ks[i], W, H, eps2d=eps2d, antialiased=antialiased, near_plane=near_plane,
                far_plane=far_plane, sh_degree=sh_degree,
            )
            t = tile
            if t is None:
                e = float(proj.extent.mean()) if proj.extent.numel() else 0.0
                t = 4 if e <= 6.0 else (8 if e <= 16.0 else 16)
            rgb, alpha, depth = _render_one_torch(proj, W, H, bg, t, chunk, check_interrupt, exact64=name == "torch")
        rgbs.append(rgb)
        alphas.append(alpha)
        depths.append(depth)
    return RenderOutput(torch.stack(rgbs), torch.stack(alphas), torch.stack(depths), name)


class _ProjectFewThreads(torch.autograd.Function):
    """``project_gaussians`` whose backward also runs on ``raster_numba.TORCH_GLUE_THREADS`` torch threads.

    The forward records the projection's own small graph on detached leaves; the backward replays it with
    ``torch.autograd.grad`` inside :class:`raster_numba.torch_threads` (autograd would otherwise run it on all of
    torch's spin-waiting threads, see there). Inputs: means, scales, quats, opacities, sh, c2w, K; outputs: the
    differentiable fields of :class:`Projected` (means2d, conic, depth, opacity, color) then extent and index."""

    @staticmethod
    def forward(ctx, sh_degree_scene, W, H, kw, *tensors):
        import types

        with torch.enable_grad():
            leaves = [t.detach().requires_grad_(t.requires_grad) for t in tensors]
            sc = types.SimpleNamespace(means=leaves[0], scales=leaves[1], quats=leaves[2], opacities=leaves[3],
                                       sh=leaves[4], sh_degree=sh_degree_scene)
            proj = project_gaussians(sc, leaves[5], leaves[6], W, H, **kw)
        outs = (proj.means2d, proj.conic, proj.depth, proj.opacity, proj.color)
        ctx.inner = (leaves, outs)
        ctx.mark_non_differentiable(proj.extent, proj.index)
        return tuple(o.detach() for o in outs) + (proj.extent, proj.index)

    @staticmethod
    def backward(ctx, *grads):
        leaves, outs = ctx.inner
        want = [i for i, t in enumerate(leaves) if t.requires_grad]
        pairs = [(o, g) for o, g in zip(outs, grads[:5]) if g is not None and o.requires_grad]
        res = [None] * len(leaves)
        if want and pairs:
            with raster_numba.torch_threads(raster_numba.TORCH_GLUE_THREADS):
                got = torch.autograd.grad([o for o, _ in pairs], [leaves[i] for i in want], [g for _, g in pairs],
                                          allow_unused=True, retain_graph=True)  # freed with ctx
            for i, g in zip(want, got):
                res[i] = g
        return (None, None, None, None, *res)


def _project_few_threads(scene, c2w, K, W, H, kw) -> Projected:
    t = (scene.means, scene.scales, scene.quats, scene.opacities, scene.sh, c2w.to(scene.means), K.to(scene.means))
    if not (torch.is_grad_enabled() and any(x.requires_grad for x in t)):
        return project_gaussians(scene, c2w, K, W, H, **kw)
    m2, conic, depth, opac, color, ext, index = _ProjectFewThreads.apply(scene.sh_degree, W, H, kw, *t)
    return Projected(m2, conic, depth, opac, color, ext, index)


def _render_one_numba(proj: Projected, width: int, height: int, background: torch.Tensor, tile: int):
    """One view through the compiled compositing loop (:mod:`vscene_engine.render.raster_numba`); same outputs as
    :func:`_render_one_torch`."""
    order = torch.argsort(proj.depth.detach(), stable=True)  # exact depth order, ties in scene order
    gp = torch.cat(
        [proj.means2d, proj.conic, proj.opacity[:, None], proj.depth[:, None], proj.color], 1
    ).index_select(0, order)
    C, D, T = raster_numba.composite(gp, proj.extent.index_select(0, order), width, height, tile)
    return _finish_numba(C, D, T, background)


def _needs_grad(scene, c2w, K) -> bool:
    """Whether autograd must see this render (grad mode on and some input requires grad)."""
    return torch.is_grad_enabled() and any(
        t.requires_grad for t in (scene.means, scene.scales, scene.quats, scene.opacities, scene.sh, c2w, K))


def _finish_numba(C, D, T, background):
    """C [H,W,3] = Σ w c, D [H,W] = Σ w z, T [H,W] -> rgb [H,W,3], alpha [H,W,1], depth [H,W,1]."""
    alpha = 1.0 - T
    rgb = C + T[..., None] * background.to(C)
    depth = torch.where(alpha > 0, D / alpha.clamp_min(1e-12), torch.zeros_like(alpha))
    return rgb, alpha[..., None], depth[..., None]


def _check_scene(scene) -> None:
    n = scene.means.shape[0]
    for name in ("means", "scales", "quats", "opacities", "sh"):
        t = getattr(scene, name)
        if t.shape[0] != n:
            raise ValueError(f"render: scene.{name} has {t.shape[0]} rows but means has {n}.")
        if not all_finite(t):
            bad = int((~torch.isfinite(t)).reshape(n, -1).any(1).sum()) if n else 0
            raise ValueError(
                f"render: scene.{name} has non-finite values in {bad} Gaussians; drop them first "
                "(GaussianScene.validate() names them) or re-run the step that produced the scene."
            )
    if not n:
        return
    with torch.no_grad():  # one reduction each; no autograd graph over the scene
        if float(scene.quats.detach().norm(dim=-1).amin()) == 0:
            raise ValueError("render: some quaternions are all zero; they encode no rotation. Use (1,0,0,0) instead.")
        if float(scene.scales.detach().amin()) <= 0:
            raise ValueError("render: scales must be positive (linear std-devs, not log-scales).")
