"""Coarse 3D Gaussian prior from two posed photos, and rendering it along a camera path.

Entry points: :func:`coarse_prior` ``(images [2,H,W,3], cams) -> PriorResult`` and :func:`render_trajectory`
``(scene, traj_cams) -> (frames [F,H,W,3], coverage [F,H,W])``.

``method="stereo"`` (the weight-free path): :func:`vscene_engine.prior.stereo.stereo_depth` gives a depth map, a confidence
and a validity mask for each photo; every valid pixel becomes one Gaussian (by default the rejected pixels too, at a
filled-in depth, see below), in the pixel-aligned layout of MVSplat / pixelSplat, built with
:func:`vscene_engine.prior.depth.depth_to_gaussians`:

* centre: the pixel's ray at its estimated depth (view z);
* scale: isotropic, ``scale_mult * depth / fx`` (the pixel footprint, so neighbouring Gaussians just overlap),
  ``thickness`` times that along the optical axis; rotation = the camera orientation;
* colour: the pixel colour as the SH DC term (higher bands zero, ``sh_degree`` sets their number);
* opacity: ``opacity`` (default 0.95); with ``opacity_from_confidence`` it is scaled by
  ``0.25 + 0.75 * clamp(confidence / confidence_full, 0, 1)``, so weakly supported pixels are fainter.

Pixels that are invalid (failed the stereo checks) or below ``min_confidence`` get a depth filled in from the valid
pixels (``fill_holes=True``, the default; :func:`fill_depth_holes`: the farther of the nearest valid pixels to the left
and right in the same row, i.e. the background side, as occlusion holes are background seen by one camera only; then
the same vertically; what is left gets the median depth) and opacity ``fill_opacity``, so a novel view shows the
photo's colours at a plausible depth instead of an empty hole. ``fill_holes=False`` drops them instead (the scene then
holds only the stereo-validated pixels; novel views have holes where they were rejected: on LLFF fern ~35 % of the
pixels, costing ~4.5 dB held-out PSNR, see benchmarks/nvs_fern.py; ~1.5 dB on the procedural test scene, whose
rejected pixels are mostly white sky in front of a white background). The two per-view sets are fused by
concatenation (:meth:`GaussianScene.cat`), i.e. a surface seen in both photos carries both views' samples.
``method="mvsplat"``: the feed-forward MVSplat encoder (VideoScene's own prior; :mod:`vscene_engine.prior.mvsplat`, weights
from the user's official ``re10k.ckpt`` or its converted ``.safetensors``) with the official input conventions
(256 x 256 centre crops, normalized intrinsics kept right through the resize and crop, near 1 / far 100 for
RealEstate10K; :func:`vscene_engine.prior.mvsplat.prior.mvsplat_prior`). Its depth / confidence / valid maps are at the
network resolution (``info["size"]``): confidence = the predicted opacity, every pixel valid.
``method="depth"``: per-pixel Gaussians from given depth maps + confidence (Depth Anything 3's, carried by the
ViewPair, or any depth map), :func:`vscene_engine.prior.depth.depth_prior` (``depth``, ``confidence``,
``min_confidence``, ``align_depth_scale``).
``method="noposplat"``: the pose-free feed-forward NoPoSplat network (VideoScene's demo prior for unposed photos;
:mod:`vscene_engine.prior.noposplat`, weights: the release's ``re10k.ckpt`` / ``acid.ckpt`` / ``mixRe10kDl3dv*.ckpt`` or a
``.safetensors``). The given cameras' poses are NOT used: it predicts the Gaussians in camera A's frame and finds
camera B by PnP on them (optionally refined photometrically), scaled to baseline 1
(:func:`vscene_engine.prior.noposplat.prior.noposplat_prior`). ``noposplat_intrinsics="cameras"`` feeds it the given
cameras' K, ``"default"`` the demo's fx = fy = 0.8. The cameras it found are :attr:`PriorResult.cameras` (for the
photos' size); depth / confidence are at the network resolution (square centre crops).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import Tensor

from ..core.cameras import Cameras
from ..core.gaussians import GaussianScene
from ..core.runtime import Progress, as_progress
from .stereo import StereoConfig, stereo_depth
from .depth import PriorResult, depth_to_gaussians

__all__ = ["coarse_prior", "PriorConfig", "PriorResult", "render_trajectory", "fill_depth_holes", "PRIOR_METHODS"]

PRIOR_METHODS = ("stereo", "mvsplat", "depth", "noposplat")


@dataclass(frozen=True)
class PriorConfig:
    """Options of :func:`coarse_prior`; each group applies to the methods named.

    method: ``"stereo"`` (plane-sweep stereo), ``"mvsplat"`` (feed-forward MVSplat), ``"noposplat"`` (NoPoSplat,
        finds the cameras too) or ``"depth"`` (given depth maps, e.g. Depth Anything 3's).
    stereo, depth -- Gaussians from depth:
        opacity: opacity of a fully confident Gaussian (0..1]. opacity_from_confidence: scale opacities by the
        confidence (see the module docstring). confidence_full: confidence at and above which a Gaussian gets the
        full ``opacity`` (stereo). min_confidence: additionally drop pixels below this confidence (the stereo step
        has its own ``stereo.min_confidence``). scale_mult: Gaussian size in units of the pixel footprint
        ``depth / fx``. thickness: extent along the optical axis relative to the in-plane scale. sh_degree: SH
        degree of the scene (colour in the DC term only).
    stereo: fill_holes: also make Gaussians for the rejected pixels, at a depth filled in from the kept ones (see
        the module docstring), with opacity ``fill_opacity`` (False: drop them). stereo: the
        :class:`~vscene_engine.prior.stereo.StereoConfig` of the stereo step.
    mvsplat: mvsplat_size, mvsplat_fit: network input size (short side, multiple of 16) and ``"crop"`` (official
        centre crop) or ``"full"`` (whole photo); near / far: MVSplat's plane-sweep range in world units (RE10K: 1,
        100).
    noposplat: noposplat_intrinsics: ``"cameras"`` (feed the given cameras' K) or ``"default"`` (fx = fy = 0.8
        normalised); noposplat_refine_steps: photometric refinement steps of camera B (0: PnP only; the release
        uses 200).
    depth: align_depth_scale: fit a per-view depth scale photometrically (for depth of unknown scale); edge_snap:
        relative 3x3 depth spread above which a pixel snaps to the nearer side of the edge (0 = off).
    """

    method: str = "stereo"
    opacity: float = 0.95
    opacity_from_confidence: bool = True
    confidence_full: float = 0.3
    min_confidence: float = 0.0
    scale_mult: float = 1.0
    thickness: float = 1.0
    sh_degree: int = 0
    fill_holes: bool = True
    fill_opacity: float = 0.5
    stereo: StereoConfig = field(default_factory=StereoConfig)
    mvsplat_size: int = 256
    mvsplat_fit: str = "crop"
    near: float = 1.0
    far: float = 100.0
    noposplat_intrinsics: str = "cameras"
    noposplat_refine_steps: int = 0
    align_depth_scale: bool = False
    edge_snap: float = 0.1


def coarse_prior(
    images: Tensor,
    cams: Cameras,
    config: Optional[PriorConfig] = None,
    *,
    mvsplat=None,
    noposplat=None,
    depth: Optional[Tensor] = None,
    confidence: Optional[Tensor] = None,
    progress: Optional[Progress] = None,
) -> PriorResult:
    """Pixel-aligned Gaussian scene from two posed photos (see the module docstring).

    Args:
        images: ``[2,H,W,3]`` float in 0..1.
        cams: :class:`Cameras` with the 2 cameras of the photos (``W x H``), OpenCV c2w.
        config: :class:`PriorConfig` (None: its defaults, method "stereo").
        mvsplat: method "mvsplat": an ``MVSplatEncoder`` or the path of its weights (``.ckpt`` / ``.safetensors``).
        noposplat: method "noposplat": a ``NoPoSplatNet`` or the path of its weights (``.ckpt`` / ``.safetensors``).
        depth, confidence: method "depth": ``[2,H,W]`` view-z depth in the cameras' units (0 = no data) and
            ``[2,H,W]`` confidence in 0..1 (None: all 1; pixels below ``config.min_confidence`` are dropped).
        progress: :class:`~vscene_engine.core.runtime.Progress`, forwarded to the method's step (stereo: ``update``
            per batch of planes; every method: ``check_interrupt()``).

    Returns:
        :class:`PriorResult`.

    Raises:
        ValueError: unknown method, bad images/cameras/options (see :func:`~vscene_engine.prior.stereo.stereo_depth`),
        no pixel survived the checks, or method "mvsplat" / "noposplat" without weights (or NoPoSplat found no
        camera B: :class:`vscene_engine.prior.noposplat.prior.NoPoSplatPoseError`, a ValueError).
    """
    c = config if config is not None else PriorConfig()
    if not isinstance(c, PriorConfig):
        raise ValueError(f"coarse_prior: config must be a PriorConfig, got {type(c).__name__}")
    (method, opacity, opacity_from_confidence, confidence_full, min_confidence, scale_mult, thickness, sh_degree,
     fill_holes, fill_opacity) = (c.method, c.opacity, c.opacity_from_confidence, c.confidence_full,
                                  c.min_confidence, c.scale_mult, c.thickness, c.sh_degree, c.fill_holes,
                                  c.fill_opacity)
    mvsplat_size, mvsplat_fit, near, far = c.mvsplat_size, c.mvsplat_fit, c.near, c.far
    noposplat_intrinsics, noposplat_refine_steps = c.noposplat_intrinsics, c.noposplat_refine_steps
    align_depth_scale, edge_snap = c.align_depth_scale, c.edge_snap
    t0 = time.perf_counter()
    progress = as_progress(progress)
    if method not in PRIOR_METHODS:
        raise ValueError(f"coarse_prior: unknown method {method!r}; use one of {', '.join(PRIOR_METHODS)}")
    if method == "mvsplat":
        return _mvsplat(images, cams, mvsplat, mvsplat_size, mvsplat_fit, near, far, progress, t0)
    if method == "depth":
        from .depth import depth_prior

        if depth is None:
            raise ValueError("coarse_prior: method 'depth' needs depth maps: Depth Anything 3's (LoadViewPair with "
                             "cameras_from = da3) or a depth image; without them use method 'stereo'")
        return depth_prior(images, cams, depth, confidence, min_confidence=min_confidence, opacity=opacity,
                           opacity_from_confidence=opacity_from_confidence, scale_mult=scale_mult,
                           thickness=thickness, sh_degree=sh_degree, align_scale=align_depth_scale,
                           edge_snap=edge_snap, progress=progress)
    if method == "noposplat":
        return _noposplat(images, cams, noposplat, noposplat_intrinsics, noposplat_refine_steps, progress, t0)
    if not 0 < float(opacity) <= 1:
        raise ValueError(f"coarse_prior: opacity must be in (0, 1], got {opacity}")
    if not float(scale_mult) > 0 or not float(thickness) > 0:
        raise ValueError(f"coarse_prior: scale_mult and thickness must be > 0, got {scale_mult}, {thickness}")
    if not float(confidence_full) > 0:
        raise ValueError(f"coarse_prior: confidence_full must be > 0, got {confidence_full}")
    if not 0 <= int(sh_degree) <= 4:
        raise ValueError(f"coarse_prior: sh_degree must be in 0..4, got {sh_degree}")
    st = stereo_depth(images, cams, c.stereo, progress=progress)
    progress.check_interrupt()
    imgs = images.detach().float().cpu().clamp(0, 1)
    depth, conf = st.depth.cpu(), st.confidence.cpu()
    keep = st.valid.cpu() & (conf >= float(min_confidence))
    cams32 = cams.to(device="cpu", dtype=torch.float32)
    if not 0 < float(fill_opacity) <= 1:
        raise ValueError(f"coarse_prior: fill_opacity must be in (0, 1], got {fill_opacity}")
    parts, counts, n_filled = [], [], []
    for i in range(2):
        if opacity_from_confidence:
            op = float(opacity) * (0.25 + 0.75 * (conf[i] / float(confidence_full)).clamp(0, 1))
        else:
            op = torch.full_like(conf[i], float(opacity))
        d = depth[i]
        use = keep[i]
        if fill_holes and bool(keep[i].any()):
            d = fill_depth_holes(depth[i], keep[i])
            op = torch.where(keep[i], op, torch.full_like(op, float(fill_opacity)))
            use = torch.ones_like(keep[i])
        g = depth_to_gaussians(d, imgs[i], cams32[i], opacity=op, scale_mult=float(scale_mult),
                               thickness=float(thickness), sh_degree=int(sh_degree))
        g = g.subset(use.reshape(-1))
        parts.append(g)
        counts.append(len(g))
        n_filled.append(int((use & ~keep[i]).sum()))
    if sum(counts) == 0:
        raise ValueError("coarse_prior: no pixel passed the stereo checks, so there is nothing to build a scene from. "
                         "Check the cameras (poses must match the photos) and the depth range (near/far), or relax "
                         "the stereo settings (StereoConfig min_confidence, lr_check_rel)")
    scene = GaussianScene.cat(parts).to(device=images.device)
    info = {"method": method, "n_gaussians": counts, "n_filled": n_filled, "stereo": st.info,
            "time_s": time.perf_counter() - t0}
    dev = images.device
    return PriorResult(scene, st.depth.to(dev), st.confidence.to(dev), keep.to(dev), info)


def _mvsplat(images, cams, model, size, fit, near, far, progress, t0) -> PriorResult:
    from .mvsplat import MVSplatEncoder, load_mvsplat
    from .mvsplat.prior import mvsplat_prior

    if model is None:
        raise ValueError("coarse_prior: method 'mvsplat' needs the MVSplat weights: the official re10k.ckpt "
                         "(donydchen/mvsplat) or its .safetensors from `python -m vscene_engine convert-mvsplat`; "
                         "without them use method 'stereo'")
    if not isinstance(model, MVSplatEncoder):
        model = load_mvsplat(model, device=images.device)
    progress.check_interrupt()
    r = mvsplat_prior(model, images, cams, size=size, fit=fit, near=near, far=far)
    info = dict(r.info, time_s=time.perf_counter() - t0)
    return PriorResult(r.scene, r.depth, r.opacity, torch.ones_like(r.depth, dtype=torch.bool), info)


def _noposplat(images, cams, model, intrinsics, refine_steps, progress, t0) -> PriorResult:
    from .noposplat import NoPoSplatNet, load_noposplat
    from .noposplat.prior import noposplat_prior

    if model is None:
        raise ValueError("coarse_prior: method 'noposplat' needs the NoPoSplat weights: the release's re10k.ckpt, "
                         "acid.ckpt or mixRe10kDl3dv*.ckpt (cvg/NoPoSplat) or a .safetensors of it; without them use "
                         "method 'stereo'")
    if intrinsics not in ("cameras", "default"):
        raise ValueError(f"coarse_prior: noposplat_intrinsics must be 'cameras' or 'default', got {intrinsics!r}")
    if images.dim() != 4 or images.shape[0] != 2:
        raise ValueError(f"coarse_prior: images must be [2,H,W,3], got {tuple(images.shape)}")
    if not isinstance(model, NoPoSplatNet):
        model = load_noposplat(model, device=images.device)
    r = noposplat_prior(model, images[0], images[1], K=cams if intrinsics == "cameras" else None,
                        refine_steps=int(refine_steps), progress=progress)
    dev = images.device
    found = Cameras.cat(r.input_cameras)
    info = dict(r.info, time_s=time.perf_counter() - t0)
    return PriorResult(r.scene.to(device=dev), r.depth.to(dev), r.opacity.to(dev),
                       torch.ones_like(r.depth, dtype=torch.bool, device=dev), info, cameras=found)


def _fill_rows(inv: Tensor, known: Tensor) -> tuple[Tensor, Tensor]:
    """Fill unknown entries of ``inv [R,C]`` (inverse depth) from the nearest known ones in the same row: the smaller
    inverse depth (farther point) of the left and right neighbours, or the one that exists."""
    R, C = inv.shape
    col = torch.arange(C).expand(R, C)
    left = torch.where(known, col, torch.full_like(col, -1)).cummax(1).values
    rcol = torch.where(known, C - 1 - col, torch.full_like(col, -1)).flip(1).cummax(1).values.flip(1)
    right = torch.where(rcol >= 0, C - 1 - rcol, torch.full_like(rcol, -1))
    vl = inv.gather(1, left.clamp(min=0))
    vr = inv.gather(1, right.clamp(min=0))
    has_l, has_r = left >= 0, right >= 0
    big = torch.full_like(inv, float("inf"))
    fill = torch.minimum(torch.where(has_l, vl, big), torch.where(has_r, vr, big))
    ok = known | has_l | has_r
    return torch.where(known, inv, torch.where(ok, fill, inv)), ok


def fill_depth_holes(depth: Tensor, valid: Tensor) -> Tensor:
    """Fill the invalid pixels of a depth map ``[H,W]`` from the valid ones (background-favouring scanline fill).

    Each invalid pixel takes the farther of the nearest valid pixels to its left and right in the same row (the
    background side of an occlusion hole); pixels with no valid pixel in their row are filled the same way along
    their column; anything left gets the median valid depth. Works on inverse depth; returns ``[H,W]`` depth
    (valid pixels unchanged). Raises ValueError when no pixel is valid.
    """
    if depth.shape != valid.shape or depth.dim() != 2:
        raise ValueError(f"fill_depth_holes: depth and valid must both be [H,W], got {tuple(depth.shape)} and "
                         f"{tuple(valid.shape)}")
    valid = valid.bool()
    if not bool(valid.any()):
        raise ValueError("fill_depth_holes: no valid pixel to fill from")
    inv = 1.0 / depth.clamp(min=1e-12)
    inv1, ok1 = _fill_rows(inv, valid)
    inv2, ok2 = _fill_rows(inv1.T, ok1.T)
    inv2, ok2 = inv2.T, ok2.T
    med = inv[valid].median()
    inv2 = torch.where(ok2, inv2, med)
    return torch.where(valid, depth, 1.0 / inv2)


def render_trajectory(
    scene: GaussianScene,
    traj_cams: Cameras,
    background: Sequence[float] = (0.0, 0.0, 0.0),
    progress: Optional[Progress] = None,
) -> tuple[Tensor, Tensor]:
    """Render ``scene`` at every camera of ``traj_cams``, one frame at a time (bounded memory).

    Args:
        scene: the Gaussians (e.g. :attr:`PriorResult.scene`).
        traj_cams: :class:`Cameras` of the path (e.g. from :func:`vscene_engine.views.trajectories.make_trajectory`).
        background: RGB in 0..1 composited where the scene does not cover a pixel.
        progress: :class:`~vscene_engine.core.runtime.Progress`; ``update(done, total, stage="render", preview=frame)``
            after each frame, ``check_interrupt()`` before each frame and inside the rasterizer.

    Returns:
        ``frames [F,H,W,3]`` in 0..1 and ``coverage [F,H,W]`` (accumulated opacity, 0 = hole), on the scene's device.
    """
    from ..render.rasterize import render

    if not isinstance(traj_cams, Cameras):
        raise ValueError(f"render_trajectory: traj_cams must be a Cameras batch, got {type(traj_cams).__name__}")
    if not isinstance(scene, GaussianScene):
        raise ValueError(f"render_trajectory: scene must be a GaussianScene, got {type(scene).__name__}")
    n = len(traj_cams)
    progress = as_progress(progress)
    frames, cover = [], []
    with torch.no_grad():
        for i in range(n):
            progress.check_interrupt()
            out = render(scene, traj_cams[i], background=background, progress=progress)
            frames.append(out.rgb[0].clamp(0, 1))
            cover.append(out.alpha[0, ..., 0])
            progress.update(i + 1, n, stage="render", preview=frames[-1])
    dev, dt = scene.means.device, scene.means.dtype
    if n == 0:
        return (torch.zeros(0, traj_cams.height, traj_cams.width, 3, device=dev, dtype=dt),
                torch.zeros(0, traj_cams.height, traj_cams.width, device=dev, dtype=dt))
    return torch.stack(frames), torch.stack(cover)
