"""Coarse 3D Gaussian prior from two posed photos, and rendering it along a camera path.

Entry points: :func:`coarse_prior` ``(images [2,H,W,3], cams) -> PriorResult`` and :func:`render_trajectory`
``(scene, traj_cams) -> (frames [F,H,W,3], coverage [F,H,W])``.

``method="stereo"`` (the weight-free path): :func:`vscene_engine.stereo.stereo_depth` gives a depth map, a confidence
and a validity mask for each photo; every valid pixel becomes one Gaussian (the pixel-aligned layout of MVSplat /
pixelSplat, built with :func:`vscene_engine.synthetic.depth_to_gaussians`):

* centre: the pixel's ray at its estimated depth (view z);
* scale: isotropic, ``scale_mult * depth / fx`` (the pixel footprint, so neighbouring Gaussians just overlap),
  ``thickness`` times that along the optical axis; rotation = the camera orientation;
* colour: the pixel colour as the SH DC term (higher bands zero, ``sh_degree`` sets their number);
* opacity: ``opacity`` (default 0.95); with ``opacity_from_confidence`` it is scaled by
  ``0.25 + 0.75 * clamp(confidence / confidence_full, 0, 1)``, so weakly supported pixels are fainter.

Pixels that are invalid (failed the stereo checks) or below ``min_confidence`` are dropped; the two per-view sets are
fused by concatenation (:meth:`GaussianScene.cat`), i.e. a surface seen in both photos carries both views' samples.
``method="mvsplat"`` is reserved for a later release (feed-forward MVSplat) and raises NotImplementedError.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor

from .cameras import Cameras
from .gaussians import GaussianScene
from .stereo import stereo_depth
from .synthetic import depth_to_gaussians

__all__ = ["coarse_prior", "PriorResult", "render_trajectory", "PRIOR_METHODS"]

PRIOR_METHODS = ("stereo", "mvsplat")


@dataclass
class PriorResult:
    """Result of :func:`coarse_prior`.

    scene:      fused :class:`GaussianScene` (float32, CPU or the images' device), one Gaussian per kept pixel.
    depth:      ``[2,H,W]`` per-view depth (view z) from the stereo step (estimate everywhere).
    confidence: ``[2,H,W]`` in 0..1.
    valid:      ``[2,H,W]`` bool, the pixels that became Gaussians.
    info:       dict: ``method``, ``n_gaussians`` per view, ``stereo`` (the stereo info dict), ``time_s``.
    """

    scene: GaussianScene
    depth: Tensor
    confidence: Tensor
    valid: Tensor
    info: dict = field(default_factory=dict)


def coarse_prior(
    images: Tensor,
    cams: Cameras,
    *,
    method: str = "stereo",
    opacity: float = 0.95,
    opacity_from_confidence: bool = True,
    confidence_full: float = 0.3,
    min_confidence: float = 0.0,
    scale_mult: float = 1.0,
    thickness: float = 1.0,
    sh_degree: int = 0,
    stereo_kwargs: Optional[dict] = None,
    progress: Optional[Callable] = None,
    check_interrupt: Optional[Callable] = None,
) -> PriorResult:
    """Pixel-aligned Gaussian scene from two posed photos (see the module docstring).

    Args:
        images: ``[2,H,W,3]`` float in 0..1.
        cams: :class:`Cameras` with the 2 cameras of the photos (``W x H``), OpenCV c2w.
        method: ``"stereo"`` (plane-sweep stereo); ``"mvsplat"`` is reserved (raises NotImplementedError).
        opacity: opacity of a fully confident Gaussian (0..1].
        opacity_from_confidence: scale opacities by the stereo confidence (see the module docstring).
        confidence_full: confidence at and above which a Gaussian gets the full ``opacity``.
        min_confidence: additionally drop pixels below this confidence (the stereo step has its own
            ``min_confidence`` in ``stereo_kwargs``).
        scale_mult: Gaussian size in units of the pixel footprint ``depth / fx``.
        thickness: extent along the optical axis relative to the in-plane scale.
        sh_degree: SH degree of the scene (colour in the DC term only).
        stereo_kwargs: extra keyword arguments of :func:`vscene_engine.stereo.stereo_depth`.
        progress: ``progress(done, total)`` forwarded to the stereo step.
        check_interrupt: callable raising to abort; forwarded to the stereo step.

    Returns:
        :class:`PriorResult`.

    Raises:
        NotImplementedError: ``method="mvsplat"``. ValueError: unknown method, bad images/cameras/options (see
        :func:`~vscene_engine.stereo.stereo_depth`), or no pixel survived the checks.
    """
    t0 = time.perf_counter()
    if method == "mvsplat":
        raise NotImplementedError(
            "coarse_prior: method='mvsplat' (feed-forward MVSplat Gaussians) is not available in this version; a "
            "later release adds MVSplat; use method='stereo'")
    if method not in PRIOR_METHODS:
        raise ValueError(f"coarse_prior: unknown method {method!r}; use 'stereo' (or 'mvsplat' in a later release)")
    if not 0 < float(opacity) <= 1:
        raise ValueError(f"coarse_prior: opacity must be in (0, 1], got {opacity}")
    if not float(scale_mult) > 0 or not float(thickness) > 0:
        raise ValueError(f"coarse_prior: scale_mult and thickness must be > 0, got {scale_mult}, {thickness}")
    if not float(confidence_full) > 0:
        raise ValueError(f"coarse_prior: confidence_full must be > 0, got {confidence_full}")
    if not 0 <= int(sh_degree) <= 4:
        raise ValueError(f"coarse_prior: sh_degree must be in 0..4, got {sh_degree}")
    st = stereo_depth(images, cams, progress=progress, check_interrupt=check_interrupt, **(stereo_kwargs or {}))
    if check_interrupt is not None:
        check_interrupt()
    imgs = images.detach().float().cpu().clamp(0, 1)
    depth, conf = st.depth.cpu(), st.confidence.cpu()
    keep = st.valid.cpu() & (conf >= float(min_confidence))
    cams32 = cams.to(device="cpu", dtype=torch.float32)
    parts, counts = [], []
    for i in range(2):
        if opacity_from_confidence:
            op = float(opacity) * (0.25 + 0.75 * (conf[i] / float(confidence_full)).clamp(0, 1))
        else:
            op = torch.full_like(conf[i], float(opacity))
        g = depth_to_gaussians(depth[i], imgs[i], cams32[i], opacity=op, scale_mult=float(scale_mult),
                               thickness=float(thickness), sh_degree=int(sh_degree))
        g = g.subset(keep[i].reshape(-1))
        parts.append(g)
        counts.append(len(g))
    if sum(counts) == 0:
        raise ValueError("coarse_prior: no pixel passed the stereo checks, so there is nothing to build a scene from. "
                         "Check the cameras (poses must match the photos) and the depth range (near/far), or relax "
                         "stereo_kwargs (min_confidence, lr_check_rel)")
    scene = GaussianScene.cat(parts).to(device=images.device)
    info = {"method": method, "n_gaussians": counts, "stereo": st.info, "time_s": time.perf_counter() - t0}
    dev = images.device
    return PriorResult(scene, st.depth.to(dev), st.confidence.to(dev), keep.to(dev), info)


def render_trajectory(
    scene: GaussianScene,
    traj_cams: Cameras,
    background: Sequence[float] = (0.0, 0.0, 0.0),
    progress: Optional[Callable] = None,
    check_interrupt: Optional[Callable] = None,
) -> tuple[Tensor, Tensor]:
    """Render ``scene`` at every camera of ``traj_cams``, one frame at a time (bounded memory).

    Args:
        scene: the Gaussians (e.g. :attr:`PriorResult.scene`).
        traj_cams: :class:`Cameras` of the path (e.g. from :func:`vscene_engine.trajectories.make_trajectory`).
        background: RGB in 0..1 composited where the scene does not cover a pixel.
        progress: ``progress(done, total, frame [H,W,3])`` after each frame.
        check_interrupt: callable raising to abort; called before each frame and inside the rasterizer.

    Returns:
        ``frames [F,H,W,3]`` in 0..1 and ``coverage [F,H,W]`` (accumulated opacity, 0 = hole), on the scene's device.
    """
    from .rasterize import render

    if not isinstance(traj_cams, Cameras):
        raise ValueError(f"render_trajectory: traj_cams must be a Cameras batch, got {type(traj_cams).__name__}")
    if not isinstance(scene, GaussianScene):
        raise ValueError(f"render_trajectory: scene must be a GaussianScene, got {type(scene).__name__}")
    n = len(traj_cams)
    frames, cover = [], []
    with torch.no_grad():
        for i in range(n):
            if check_interrupt is not None:
                check_interrupt()
            out = render(scene, traj_cams[i], background=background, check_interrupt=check_interrupt)
            frames.append(out.rgb[0].clamp(0, 1))
            cover.append(out.alpha[0, ..., 0])
            if progress is not None:
                progress(i + 1, n, frames[-1])
    dev, dt = scene.means.device, scene.means.dtype
    if n == 0:
        return (torch.zeros(0, traj_cams.height, traj_cams.width, 3, device=dev, dtype=dt),
                torch.zeros(0, traj_cams.height, traj_cams.width, device=dev, dtype=dt))
    return torch.stack(frames), torch.stack(cover)
