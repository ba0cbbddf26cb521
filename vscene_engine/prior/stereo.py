"""Two-view dense stereo by plane sweeping: depth, confidence and a validity mask for both photos.

Entry point: :func:`stereo_depth` ``(images [2,H,W,3], cams) -> StereoResult``. Pure torch, vectorised, CPU friendly.

Conventions (DESIGN.md): images float ``[N,H,W,3]`` in 0..1; cameras OpenCV camera-to-world (+x right, +y down,
+z forward), ``K`` in pixels, pixel centres at ``+0.5``. Depth is the view-space ``z`` of the reference camera
(not the distance along the ray).

Algorithm (each view is the *reference* once, the other one is the *source*):

1. **Working resolution.** Images and cameras are scaled (``Cameras.resized``, antialiased bilinear image resize) so
   that the longer side is at most ``max_side`` pixels; nothing is upscaled.
2. **Depth hypotheses.** ``D`` fronto-parallel planes of the reference camera, uniform in *inverse* depth between
   ``1/near`` and ``1/far`` (plane ``k`` has ``1/z_k = 1/near + k (1/far - 1/near) / (D - 1)``), so consecutive
   planes move a reference pixel by roughly the same number of pixels along its epipolar line in the source image.
   ``D = num_depths`` unless the median displacement between consecutive planes would exceed ``plane_step_px``;
   then ``D`` is raised (up to ``max_depths``) to keep the sweep dense enough for a matching-cost minimum to be
   sampled at all.
3. **Warping.** For a reference pixel ``x = (u, v, 1)`` and inverse depth ``rho`` the source pixel is
   ``K_s (R x_r / rho + t)``, i.e. ``(a + rho b)`` de-homogenised with ``a = K_s R K_r^-1 x`` and ``b = K_s t``
   (``R, t``: reference camera -> source camera). This is the plane-induced homography, evaluated per pixel for a
   batch of ``batch_planes`` planes at once; the source image is sampled with ``grid_sample`` (bilinear, border
   padding). A sample is *invalid* where the warped point is behind the source camera or outside its image.
4. **Matching cost** per pixel and plane, in ``[0, 1]`` (0 = perfect match), ``cost=``

   * ``"ad"``: truncated absolute difference ``min(mean_RGB |I_r - I_s|, ad_trunc) / ad_trunc``;
   * ``"census"``: soft census: for every offset ``o`` of a ``(2 census_radius + 1)^2`` window (centre excluded)
     the bit ``tanh((g(q + o) - g(q)) / census_eps)`` of the grey image ``g``, computed on the reference image and
     on the *warped* source image (so the window is the reference window carried by the plane), cost = mean
     ``|bit_r - bit_s| / 2`` (a Hamming distance of soft bits, robust to gain/bias changes);
   * ``"census+ad"`` (default): ``census_weight * census + (1 - census_weight) * ad``.

   Invalid samples get the maximal cost 1.
5. **Aggregation** over a ``window x window`` neighbourhood of every plane slice: ``aggregation="guided"``
   (default; the guided filter of He et al. with the reference grey image as guide, ``guided_eps`` its
   regulariser: edge preserving, the cost-volume filtering of Hosni et al.), ``"box"`` (mean) or ``"none"``.
6. **Winner takes all** over the planes, with **parabolic sub-plane refinement** in inverse depth: the parabola
   through the costs of the winner and its two neighbours gives the offset
   ``(c[k-1] - c[k+1]) / (2 (c[k-1] - 2 c[k] + c[k+1]))`` (clamped to ``+-0.5`` plane).
7. **Confidence** ``(c_second - c_best) / max(c_second, confidence_floor)`` (clamped to 0..1; the "peak ratio"
   measure ``1 - c_best / c_second``, with a floor so that near-zero costs everywhere, e.g. on a uniform white wall,
   give ~0 instead of a ratio of two tiny numbers): ``c_second`` is the lowest cost of the planes more than
   ``exclusion_px`` pixels of epipolar displacement away from the winner. 0 means an ambiguous match (textureless or
   repetitive surface, or occlusion), values near 1 a unique sharp minimum.
8. **Validity.** A pixel is invalid when its winner is the first or last plane (its depth is probably outside
   ``[near, far]``), when its winning point is not seen by the source camera (behind it or outside its image: the
   cost there was the out-of-view penalty), when its confidence is below ``min_confidence``, or when it fails the
   **left-right consistency check**: its 3D point is projected into the
   other view and its depth there must agree with the other view's own estimate at that pixel (any of the 2x2
   nearest pixels, which must themselves have passed the checks above): ``|z_proj - z_other| < lr_check_rel *
   z_other``. Occluded pixels (seen only by the reference) and pixels whose point leaves the other image fail it.
9. **Upsampling** (only when the working resolution is below the input): inverse depth and confidence are upsampled
   with a joint bilateral filter over the 2x2 nearest working-resolution pixels (bilinear weights times a colour
   similarity weight to the full-resolution pixel, valid pixels only), so depth edges follow image edges instead of
   being blurred; a full-resolution pixel is valid when its nearest working-resolution pixel is valid.

``depth`` holds the estimate at every pixel, also invalid ones; use ``valid`` to select the trustworthy pixels.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..core.cameras import Cameras
from ..core.runtime import Progress, as_progress

__all__ = ["stereo_depth", "StereoConfig", "StereoResult", "COSTS", "AGGREGATIONS"]

COSTS = ("census+ad", "census", "ad")
AGGREGATIONS = ("guided", "box", "none")


@dataclass
class StereoResult:
    """Result of :func:`stereo_depth`, at the input resolution.

    depth:      ``[2,H,W]`` view-space z of each view's pixels (the estimate everywhere, also where invalid).
    confidence: ``[2,H,W]`` in 0..1 (peak-ratio confidence of the matching-cost curve, see the module docstring).
    valid:      ``[2,H,W]`` bool: passed the range, confidence and left-right consistency checks.
    info:       dict with the settings actually used (``work_size``, ``num_depths``, ``near``, ``far``,
                ``plane_step_px``, ``valid_fraction`` per view, ``lr_fail_fraction`` per view, ``time_s``).
    """

    depth: Tensor
    confidence: Tensor
    valid: Tensor
    info: dict = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------- small helpers
def _box(x: Tensor, r: int) -> Tensor:
    """Mean over a (2r+1)^2 window of ``x [B,H,W]`` (separable; windows are clipped at the border)."""
    if r <= 0:
        return x
    k = 2 * r + 1
    y = F.avg_pool2d(x[:, None], (1, k), stride=1, padding=(0, r), count_include_pad=False)
    y = F.avg_pool2d(y, (k, 1), stride=1, padding=(r, 0), count_include_pad=False)
    return y[:, 0]


def _grey(rgb: Tensor) -> Tensor:
    """``[...,3,H,W]`` -> ``[...,H,W]`` luma."""
    return 0.299 * rgb[..., 0, :, :] + 0.587 * rgb[..., 1, :, :] + 0.114 * rgb[..., 2, :, :]


def _offsets(radius: int) -> list[tuple[int, int]]:
    return [(dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1) if (dy, dx) != (0, 0)]


def _shift(x: Tensor, dy: int, dx: int, r: int) -> Tensor:
    """``x_padded`` is ``[B,H+2r,W+2r]`` (replicate padded); return the ``[B,H,W]`` view shifted by (dy, dx)."""
    H, W = x.shape[-2] - 2 * r, x.shape[-1] - 2 * r
    return x[..., r + dy: r + dy + H, r + dx: r + dx + W]


def _census_bits(g: Tensor, radius: int, eps: float) -> list[Tensor]:
    """Soft census bits of a grey image ``g [B,H,W]``: one ``[B,H,W]`` tensor per window offset."""
    gp = F.pad(g[:, None], (radius,) * 4, mode="replicate")[:, 0]
    return [torch.tanh((_shift(gp, dy, dx, radius) - g) / eps) for dy, dx in _offsets(radius)]


def _check_images(images, cams) -> Tensor:
    if not isinstance(cams, Cameras):
        raise ValueError(f"stereo: cams must be a vscene_engine Cameras batch with 2 cameras, got "
                         f"{type(cams).__name__}")
    if len(cams) != 2:
        raise ValueError(f"stereo: need exactly 2 cameras (one per photo), got {len(cams)}")
    if not isinstance(images, Tensor):
        raise ValueError(f"stereo: images must be a float tensor [2,H,W,3] in 0..1, got {type(images).__name__}")
    if images.dim() != 4 or images.shape[0] != 2 or images.shape[-1] != 3:
        raise ValueError(f"stereo: images must have shape [2,H,W,3] (two RGB photos of one size), got "
                         f"{tuple(images.shape)}")
    if not images.is_floating_point():
        raise ValueError(f"stereo: images must be floating point in 0..1, got {images.dtype} (use .float() / 255)")
    H, W = int(images.shape[1]), int(images.shape[2])
    if H < 8 or W < 8:
        raise ValueError(f"stereo: images are too small ({W}x{H}); need at least 8x8 pixels")
    if (W, H) != (cams.width, cams.height):
        raise ValueError(f"stereo: images are {W}x{H} but the cameras are {cams.width}x{cams.height}; use "
                         f"cams.resized({W}, {H}) or resize the images")
    if not bool(torch.isfinite(images).all()):
        raise ValueError("stereo: images contain NaN/inf values")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        raise ValueError(f"stereo: images must be in 0..1, got range {lo:.4g}..{hi:.4g}"
                         + (" (0..255 values? divide by 255)" if hi > 1.5 else ""))
    cams.validate()
    return images.clamp(0, 1)


def _relative_pose(cams: Cameras, r: int, s: int) -> tuple[Tensor, Tensor]:
    """Rotation ``R [3,3]`` and translation ``t [3]`` mapping reference-camera coordinates to source-camera ones."""
    Rr, cr = cams.c2w[r, :3, :3], cams.c2w[r, :3, 3]
    Rs, cs = cams.c2w[s, :3, :3], cams.c2w[s, :3, 3]
    return Rs.T @ Rr, Rs.T @ (cr - cs)


def _warp_terms(cams: Cameras, r: int, s: int) -> tuple[Tensor, Tensor]:
    """``a [H,W,3]`` and ``b [3]`` such that reference pixel (u,v) at inverse depth rho lands at the source pixel
    ``(a + rho b)[:2] / (a + rho b)[2]`` (homogeneous, pixels)."""
    H, W = cams.height, cams.width
    dt = cams.dtype
    v, u = torch.meshgrid(torch.arange(H, dtype=dt) + 0.5, torch.arange(W, dtype=dt) + 0.5, indexing="ij")
    pix = torch.stack([u, v, torch.ones_like(u)], -1)
    R, t = _relative_pose(cams, r, s)
    M = cams.K[s] @ R @ torch.linalg.inv(cams.K[r])
    return pix @ M.T, cams.K[s] @ t


def _project_planes(a: Tensor, b: Tensor, rho: Tensor) -> tuple[Tensor, Tensor]:
    """Source pixels ``uv [B,H,W,2]`` and source depths-sign ``w [B,H,W]`` (> 0: in front) for inverse depths
    ``rho [B]``."""
    p = a[None] + rho[:, None, None, None] * b  # [B,H,W,3]
    w = p[..., 2]
    uv = p[..., :2] / torch.where(w.abs() > 1e-12, w, torch.full_like(w, 1e-12))[..., None]
    return uv, w


def _project_winner(cams: Cameras, r: int, s: int, inv: Tensor) -> tuple[Tensor, Tensor]:
    """Source pixels ``[h,w,2]`` and homogeneous depth ``[h,w]`` of every reference pixel at its own inverse depth."""
    a, b = _warp_terms(cams, r, s)
    p = a.to(inv.dtype) + inv[..., None] * b.to(inv.dtype)
    wz = p[..., 2]
    return p[..., :2] / torch.where(wz.abs() > 1e-12, wz, torch.full_like(wz, 1e-12))[..., None], wz


def _plane_count(cams: Cameras, inv_near: float, inv_far: float, num_depths: int, plane_step_px: Optional[float],
                 max_depths: int) -> tuple[int, float]:
    """Number of planes and the median epipolar span (pixels) of the sweep range (max over both directions)."""
    span = 0.0
    for r, s in ((0, 1), (1, 0)):
        a, b = _warp_terms(cams, r, s)
        a = a[::4, ::4]
        rho = torch.tensor([inv_near, inv_far], dtype=a.dtype)
        uv, w = _project_planes(a, b, rho)
        ok = (w > 0).all(0)
        if bool(ok.any()):
            d = (uv[0] - uv[1]).norm(dim=-1)[ok]
            span = max(span, float(d.median()))
    n = int(num_depths)
    if plane_step_px is not None and plane_step_px > 0 and span > 0:
        n = max(n, min(int(max_depths), int(math.ceil(span / plane_step_px)) + 1))
    return n, span


def _guided_prep(guide: Tensor, r: int, eps: float):
    mean_i = _box(guide[None], r)[0]
    var_i = _box((guide * guide)[None], r)[0] - mean_i * mean_i
    return mean_i, var_i + eps


def _aggregate(cost: Tensor, method: str, r: int, guide: Tensor, gprep) -> Tensor:
    """Aggregate a cost slab ``[B,H,W]``."""
    if method == "none" or r <= 0:
        return cost
    if method == "box":
        return _box(cost, r)
    mean_i, var_eps = gprep
    mean_p = _box(cost, r)
    mean_ip = _box(cost * guide, r)
    a = (mean_ip - mean_i * mean_p) / var_eps
    b = mean_p - a * mean_i
    return _box(a, r) * guide + _box(b, r)


def _resize_images(img: Tensor, h: int, w: int) -> Tensor:
    """``[N,H,W,3]`` -> ``[N,h,w,3]`` (antialiased bilinear, corner aligned)."""
    if img.shape[1:3] == (h, w):
        return img
    x = img.permute(0, 3, 1, 2)
    x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    return x.permute(0, 2, 3, 1).clamp(0, 1)


# ---------------------------------------------------------------------------------------------- one sweep
def _sweep(ref: Tensor, src: Tensor, cams: Cameras, r: int, s: int, rho: Tensor, *, cost: str, census_radius: int,
           census_eps: float, census_weight: float, ad_trunc: float, aggregation: str, agg_radius: int,
           guided_eps: float, batch_planes: int, tick: Callable[[], None]) -> Tensor:
    """Aggregated cost volume ``[D,h,w]`` of reference view ``r`` (plane-major).

    ``ref``/``src`` are ``[3,h,w]`` images at the working resolution."""
    h, w = ref.shape[-2:]
    D = rho.shape[0]
    a, b = _warp_terms(cams, r, s)
    a, b = a.to(ref.dtype), b.to(ref.dtype)
    g_ref = _grey(ref)
    use_census = cost in ("census", "census+ad")
    use_ad = cost in ("ad", "census+ad")
    wc = 1.0 if cost == "census" else (0.0 if cost == "ad" else float(census_weight))
    bits_ref = _census_bits(g_ref[None], census_radius, census_eps) if use_census else None
    src4 = torch.cat([src, _grey(src)[None]], 0)[None]  # [1,4,h,w]
    gprep = _guided_prep(g_ref, agg_radius, guided_eps) if aggregation == "guided" else None
    volume = torch.empty(D, h, w, dtype=ref.dtype)
    scale = torch.tensor([2.0 / w, 2.0 / h], dtype=ref.dtype)
    for k0 in range(0, D, batch_planes):
        tick()
        rb = rho[k0: k0 + batch_planes]
        B = rb.shape[0]
        uv, wz = _project_planes(a, b, rb)
        inside = (wz > 0) & (uv[..., 0] >= 0) & (uv[..., 0] <= w) & (uv[..., 1] >= 0) & (uv[..., 1] <= h)
        grid = (uv * scale - 1).clamp(-2, 2).reshape(1, B * h, w, 2)
        warped = F.grid_sample(src4, grid, mode="bilinear", padding_mode="border", align_corners=False)
        warped = warped.reshape(4, B, h, w)
        c = torch.zeros(B, h, w, dtype=ref.dtype)
        if use_ad:
            ad = (warped[:3] - ref[:, None]).abs().mean(0)
            c = c + (1 - wc) * (ad / ad_trunc).clamp(max=1.0)
        if use_census:
            bits_src = _census_bits(warped[3], census_radius, census_eps)
            ham = torch.zeros(B, h, w, dtype=ref.dtype)
            for br, bs in zip(bits_ref, bits_src):
                ham += (br - bs).abs()
            c = c + wc * ham / (2.0 * len(bits_src))
        c = torch.where(inside, c, torch.ones_like(c))
        volume[k0: k0 + B] = _aggregate(c, aggregation, agg_radius, g_ref, gprep)
    return volume


def _wta(volume: Tensor, rho: Tensor, excl: int, cost_floor: float) -> tuple[Tensor, Tensor, Tensor]:
    """Winner-take-all with parabolic refinement: inverse depth ``[h,w]``, confidence ``[h,w]``, winner index."""
    D = volume.shape[0]
    c1, k = volume.min(0)
    km = (k - 1).clamp(min=0)
    kp = (k + 1).clamp(max=D - 1)
    cm = volume.gather(0, km[None])[0]
    cp = volume.gather(0, kp[None])[0]
    den = cm - 2 * c1 + cp
    off = torch.where(den > 1e-9, (cm - cp) / (2 * den.clamp(min=1e-9)), torch.zeros_like(den)).clamp(-0.5, 0.5)
    off = torch.where((k > 0) & (k < D - 1), off, torch.zeros_like(off))
    step = (rho[-1] - rho[0]) / max(D - 1, 1)
    inv = rho[0] + (k.to(rho.dtype) + off) * step
    idx = torch.arange(D)[:, None, None]
    far_away = (idx - k[None]).abs() > excl
    c2 = torch.where(far_away, volume, torch.full_like(volume, float("inf"))).amin(0)
    conf = ((c2 - c1) / c2.clamp(min=cost_floor)).clamp(0, 1)
    conf = torch.where(torch.isfinite(c2), conf, torch.zeros_like(conf))
    return inv, conf, k


def _lr_consistent(depth: Tensor, ok: Tensor, cams: Cameras, rel: float) -> Tensor:
    """Left-right check: ``depth [2,h,w]``, ``ok [2,h,w]`` (pre-check validity) -> ``[2,h,w]`` bool."""
    _, h, w = depth.shape
    dt = depth.dtype
    v, u = torch.meshgrid(torch.arange(h, dtype=dt) + 0.5, torch.arange(w, dtype=dt) + 0.5, indexing="ij")
    uv = torch.stack([u, v], -1).reshape(1, -1, 2)
    out = []
    for r, s in ((0, 1), (1, 0)):
        pts = cams[r].to(dtype=dt).unproject(uv, depth[r].reshape(1, -1))[0]
        puv, pz = cams[s].to(dtype=dt).project(pts)
        puv, pz = puv[0], pz[0]
        best = torch.full((h * w,), float("inf"), dtype=dt)
        base = torch.floor(puv - 0.5)  # top-left of the 2x2 pixel centres around puv
        for dy in (0, 1):
            for dx in (0, 1):
                ix = (base[:, 0] + dx).long()
                iy = (base[:, 1] + dy).long()
                inb = (ix >= 0) & (ix < w) & (iy >= 0) & (iy < h) & (pz > 0) & torch.isfinite(puv).all(-1)
                ixc, iyc = ix.clamp(0, w - 1), iy.clamp(0, h - 1)
                d_o = depth[s][iyc, ixc]
                good = inb & ok[s][iyc, ixc]
                err = (pz - d_o).abs() / d_o.clamp(min=1e-12)
                best = torch.where(good, torch.minimum(best, err), best)
        out.append((best < rel).reshape(h, w))
    return torch.stack(out)


def _joint_upsample(inv: Tensor, conf: Tensor, valid: Tensor, guide_lo: Tensor, guide_hi: Tensor,
                    sigma_color: float = 0.1) -> tuple[Tensor, Tensor, Tensor]:
    """Joint bilateral upsampling of ``inv``/``conf``/``valid`` ``[h,w]`` to the size of ``guide_hi [H,W,3]``."""
    h, w = inv.shape
    H, W = guide_hi.shape[:2]
    dt = inv.dtype
    y = (torch.arange(H, dtype=dt) + 0.5) * (h / H) - 0.5
    x = (torch.arange(W, dtype=dt) + 0.5) * (w / W) - 0.5
    y0, x0 = torch.floor(y), torch.floor(x)
    fy, fx = (y - y0)[:, None], (x - x0)[None, :]
    num_i = torch.zeros(H, W, dtype=dt)
    num_c = torch.zeros(H, W, dtype=dt)
    den = torch.zeros(H, W, dtype=dt)
    for dy in (0, 1):
        for dx in (0, 1):
            iy = (y0.long() + dy).clamp(0, h - 1)[:, None].expand(H, W)
            ix = (x0.long() + dx).clamp(0, w - 1)[None, :].expand(H, W)
            wb = (fy if dy else 1 - fy) * (fx if dx else 1 - fx)
            col = guide_lo[iy, ix]
            wr = torch.exp(-((col - guide_hi) ** 2).sum(-1) / (2 * sigma_color ** 2))
            wgt = wb * wr * valid[iy, ix].to(dt) + 1e-12 * wb
            num_i += wgt * inv[iy, ix]
            num_c += wgt * conf[iy, ix]
            den += wgt
    ny = ((torch.arange(H, dtype=dt) + 0.5) * (h / H)).long().clamp(0, h - 1)
    nx = ((torch.arange(W, dtype=dt) + 0.5) * (w / W)).long().clamp(0, w - 1)
    v_hi = valid[ny[:, None], nx[None, :]]
    return num_i / den, num_c / den, v_hi


# ---------------------------------------------------------------------------------------------- entry point
@dataclass(frozen=True)
class StereoConfig:
    """Options of :func:`stereo_depth` (defaults are the coarse prior's).

    num_depths: number of inverse-depth planes (a minimum: raised up to ``max_depths`` when consecutive planes
        would be more than ``plane_step_px`` pixels apart along the epipolar lines; ``plane_step_px=None`` uses
        exactly ``num_depths``).
    max_side: longest image side of the working resolution (the result is upsampled back to ``H x W``).
    cost: ``"census+ad"`` | ``"census"`` | ``"ad"``; ``census_radius`` (window ``2r+1``), ``census_eps`` (softness
        of the census bits, grey levels), ``census_weight`` (census share of ``"census+ad"``), ``ad_trunc``
        (truncation of the mean absolute RGB difference).
    aggregation: ``"guided"`` | ``"box"`` | ``"none"`` over a ``window x window`` neighbourhood (odd; ``guided_eps``
        regularises the guided filter).
    exclusion_px: planes within this epipolar displacement of the winner are ignored when looking for the
        second-best cost of the confidence ratio; ``confidence_floor``: the ratio's lower bound on ``c_second``.
    lr_check_rel: relative depth tolerance of the left-right consistency check.
    min_confidence: pixels with a lower confidence are invalid.
    batch_planes: planes warped at once (memory ~ ``batch_planes * h * w * 30`` floats).
    """

    num_depths: int = 64
    max_side: int = 384
    cost: str = "census+ad"
    census_radius: int = 2
    census_eps: float = 0.02
    census_weight: float = 0.6
    ad_trunc: float = 0.1
    aggregation: str = "guided"
    window: int = 3
    guided_eps: float = 1e-3
    plane_step_px: Optional[float] = 1.0
    max_depths: int = 256
    exclusion_px: float = 2.0
    confidence_floor: float = 0.05
    lr_check_rel: float = 0.05
    min_confidence: float = 0.05
    batch_planes: int = 8


def stereo_depth(
    images: Tensor,
    cams: Cameras,
    config: Optional[StereoConfig] = None,
    *,
    near: Optional[float] = None,
    far: Optional[float] = None,
    progress: Optional[Progress] = None,
) -> StereoResult:
    """Dense depth for both of two calibrated photos by plane-sweep stereo (see the module docstring).

    Args:
        images: ``[2,H,W,3]`` float in 0..1, the two photos (same size).
        cams: :class:`Cameras` with the 2 cameras of the photos (``width x height == W x H``), OpenCV c2w.
        config: :class:`StereoConfig` (None: its defaults).
        near, far: depth range of the sweep (view z); default ``min(cams.near)`` / ``max(cams.far)``.
        progress: :class:`~vscene_engine.core.runtime.Progress`; ``update(done, total, stage="stereo")`` after each batch
            of planes, ``check_interrupt()`` before each batch (raising aborts).

    Returns:
        :class:`StereoResult` with ``depth``, ``confidence`` and ``valid`` ``[2,H,W]`` (float32/float32/bool).

    Raises:
        ValueError: images not ``[2,H,W,3]`` in 0..1 or containing NaN, a camera/image size mismatch, invalid
        cameras (NaN, non-rigid ...), cameras that do not have 2 distinct centres (no parallax: no depth),
        a bad near/far or option value.
    """
    c = config if config is not None else StereoConfig()
    if not isinstance(c, StereoConfig):
        raise ValueError(f"stereo: config must be a StereoConfig, got {type(c).__name__}")
    progress = as_progress(progress)
    (num_depths, max_side, cost, census_radius, census_eps, census_weight, ad_trunc, aggregation, window, guided_eps,
     plane_step_px, max_depths, exclusion_px, confidence_floor, lr_check_rel, min_confidence, batch_planes) = (
        c.num_depths, c.max_side, c.cost, c.census_radius, c.census_eps, c.census_weight, c.ad_trunc, c.aggregation,
        c.window, c.guided_eps, c.plane_step_px, c.max_depths, c.exclusion_px, c.confidence_floor, c.lr_check_rel,
        c.min_confidence, c.batch_planes)
    t0 = time.perf_counter()
    images = _check_images(images, cams)
    if cost not in COSTS:
        raise ValueError(f"stereo: unknown cost {cost!r}; use one of {COSTS}")
    if aggregation not in AGGREGATIONS:
        raise ValueError(f"stereo: unknown aggregation {aggregation!r}; use one of {AGGREGATIONS}")
    if int(num_depths) < 3:
        raise ValueError(f"stereo: num_depths must be >= 3, got {num_depths}")
    if int(window) < 1 or int(window) % 2 == 0:
        raise ValueError(f"stereo: window must be an odd number >= 1, got {window}")
    if int(max_side) < 8:
        raise ValueError(f"stereo: max_side must be >= 8, got {max_side}")
    if not lr_check_rel > 0:
        raise ValueError(f"stereo: lr_check_rel must be > 0, got {lr_check_rel}")
    if int(census_radius) < 1 and cost != "ad":
        raise ValueError(f"stereo: census_radius must be >= 1, got {census_radius}")
    cams64 = cams.to(device="cpu", dtype=torch.float64)
    near_v = float(cams64.near.min()) if near is None else float(near)
    far_v = float(cams64.far.max()) if far is None else float(far)
    if not (math.isfinite(near_v) and math.isfinite(far_v) and 0 < near_v < far_v):
        raise ValueError(f"stereo: need 0 < near < far (finite), got near={near_v}, far={far_v}")
    baseline = float((cams64.centers[0] - cams64.centers[1]).norm())
    if not baseline > 1e-6 * near_v:
        raise ValueError(
            f"stereo: the two cameras have the same centre (baseline {baseline:.3g}); a pure rotation / identical "
            f"cameras give no parallax, so depth cannot be triangulated. Use two photos taken from different "
            f"positions (or check that the second camera's pose was not copied from the first)")

    H, W = int(images.shape[1]), int(images.shape[2])
    sc = min(1.0, float(max_side) / max(H, W))
    w, h = max(8, int(round(W * sc))), max(8, int(round(H * sc)))
    wcams = cams64.resized(w, h) if (w, h) != (W, H) else cams64
    imgs = _resize_images(images.detach().float().cpu(), h, w)
    inv_near, inv_far = 1.0 / near_v, 1.0 / far_v
    D, span = _plane_count(wcams, inv_near, inv_far, int(num_depths), plane_step_px, int(max_depths))
    rho = torch.linspace(inv_near, inv_far, D, dtype=torch.float32)
    step_px = span / max(D - 1, 1)
    excl = max(1, int(math.ceil(exclusion_px / max(step_px, 1e-6))))
    bp = max(1, int(batch_planes))
    total = 2 * ((D + bp - 1) // bp)
    done = [0]

    def tick():
        progress.check_interrupt()
        if done[0] > 0:
            progress.update(done[0], total, stage="stereo")
        done[0] += 1

    ref_imgs = imgs.permute(0, 3, 1, 2).contiguous()  # [2,3,h,w]
    inv_l, conf_l, pre_ok = [], [], []
    for r, s in ((0, 1), (1, 0)):
        vol = _sweep(ref_imgs[r], ref_imgs[s], wcams, r, s, rho, cost=cost, census_radius=int(census_radius),
                              census_eps=float(census_eps), census_weight=float(census_weight),
                              ad_trunc=float(ad_trunc), aggregation=aggregation, agg_radius=int(window) // 2,
                              guided_eps=float(guided_eps), batch_planes=bp, tick=tick)
        inv, conf, k = _wta(vol, rho, excl, float(confidence_floor))
        # the winning plane must be seen by the source camera (its cost was not the out-of-view penalty)
        uv_k, w_k = _project_winner(wcams, r, s, inv)
        seen = (w_k > 0) & (uv_k[..., 0] >= 0) & (uv_k[..., 0] <= w) & (uv_k[..., 1] >= 0) & (uv_k[..., 1] <= h)
        ok = (k > 0) & (k < D - 1) & seen & (conf >= min_confidence)
        inv_l.append(inv)
        conf_l.append(conf)
        pre_ok.append(ok)
        del vol
    progress.check_interrupt()
    inv = torch.stack(inv_l)
    conf = torch.stack(conf_l)
    ok = torch.stack(pre_ok)
    depth_lo = 1.0 / inv.clamp(min=1e-12)
    lr_ok = _lr_consistent(depth_lo.double(), ok, wcams, float(lr_check_rel))
    valid_lo = ok & lr_ok
    if (w, h) != (W, H):
        outs = [_joint_upsample(inv[i], conf[i], valid_lo[i], imgs[i], images[i].detach().float().cpu())
                for i in range(2)]
        inv_hi = torch.stack([o[0] for o in outs])
        conf_hi = torch.stack([o[1] for o in outs])
        valid_hi = torch.stack([o[2] for o in outs])
    else:
        inv_hi, conf_hi, valid_hi = inv, conf, valid_lo
    depth = (1.0 / inv_hi.clamp(min=1e-12)).float()
    progress.update(total, total, stage="stereo")
    dev = images.device
    info = {
        "work_size": (w, h),
        "num_depths": D,
        "near": near_v,
        "far": far_v,
        "plane_step_px": step_px,
        "sweep_span_px": span,
        "valid_fraction": [float(v) for v in valid_hi.float().mean((1, 2))],
        "lr_fail_fraction": [float(v) for v in (ok & ~lr_ok).float().mean((1, 2))],
        "time_s": time.perf_counter() - t0,
    }
    return StereoResult(depth.to(dev), conf_hi.float().clamp(0, 1).to(dev), valid_hi.to(dev), info)
