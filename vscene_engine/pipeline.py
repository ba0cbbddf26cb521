"""The weight-free two-photo path, as three steps shared by the ComfyUI nodes, the CLI and the demo.

1. :func:`make_path` — the camera path between the two views (VideoScene's 49-frame interpolation with cosine
   easing by default; also straight SE(3), an orbit, or keyframes such as Load3D cameras).
2. :func:`coarse_video` — the coarse 3DGS prior from the two views (stereo, MVSplat, or depth maps such as Depth
   Anything 3's carried by the views; :mod:`vscene_engine.prior.coarse`) rendered along the path: the video the one-step
   student later refines.
3. :func:`reconstruct` — fit a Gaussian scene to frames with known cameras (the path frames plus the two real
   views, which are weighted by repetition), initialised from a scene or at random; L1 + D-SSIM, densify/prune.

Cameras are OpenCV camera-to-world (+x right, +y down, +z forward), images float [N,H,W,3] in 0..1.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

import torch

from .core.cameras import Cameras
from .core.gaussians import GaussianScene
from .core.runtime import Progress, as_progress
from .views.pair import ViewPair

if TYPE_CHECKING:
    from .prior.coarse import PriorConfig

__all__ = ["make_path", "coarse_video", "reconstruct", "CoarseVideo", "Reconstruction", "PATH_KINDS"]

PATH_KINDS = ("interpolate", "se3", "orbit", "keyframes")


def make_path(views: ViewPair, frames: int = 49, kind: str = "interpolate", easing: str = "cosine",
              keyframes: Optional[Cameras] = None, **opts) -> Cameras:
    """Cameras of the output video, at the views' image size. ``keyframes`` (for kind "keyframes"): Cameras to pass
    through (their intrinsics are replaced by view A's). ``frames`` >= 2."""
    from .views.trajectories import make_trajectory

    if frames < 2:
        raise ValueError(f"a camera path needs at least 2 frames, got {frames}")
    if kind not in PATH_KINDS:
        raise ValueError(f"unknown path kind {kind!r}; use one of {', '.join(PATH_KINDS)}")
    cams = views.cameras
    if kind == "keyframes":
        if keyframes is None or len(keyframes) < 2:
            raise ValueError("path 'keyframes' needs at least 2 keyframe cameras (e.g. Load3D cameras)")
        kf = Cameras(keyframes.c2w.to(cams.c2w), cams.K[:1].expand(len(keyframes), 3, 3), cams.width, cams.height,
                     cams.near[:1].expand(len(keyframes)), cams.far[:1].expand(len(keyframes)))
        return make_trajectory("keyframes", kf, frames=frames, easing=easing, **opts)
    if kind == "orbit":
        return make_trajectory("orbit", cams, frames=frames, **opts)
    return make_trajectory(kind, cams, frames=frames, easing=easing, **opts)


@dataclass
class CoarseVideo:
    """scene: the coarse prior (GaussianScene); frames [F,H,W,3]; coverage [F,H,W] (accumulated opacity);
    path: Cameras of the frames; depth/confidence [2,H,W] of the two views."""

    scene: GaussianScene
    frames: torch.Tensor
    coverage: torch.Tensor
    path: Cameras
    depth: torch.Tensor
    confidence: torch.Tensor


def coarse_video(views: ViewPair, path: Cameras, *, background: Sequence[float] = (0, 0, 0),
                 config: Optional[PriorConfig] = None, mvsplat=None, depth: Optional[torch.Tensor] = None,
                 confidence: Optional[torch.Tensor] = None, progress: Optional[Progress] = None,
                 prior=None) -> CoarseVideo:
    """Coarse prior from the two views, rendered at every camera of ``path``.

    ``config`` (:class:`~vscene_engine.prior.coarse.PriorConfig`, default method "stereo"), ``mvsplat``, ``depth`` and
    ``confidence`` go to :func:`~vscene_engine.prior.coarse.coarse_prior`; method "depth" without ``depth`` uses the views'
    own depth and confidence (e.g. Depth Anything 3's).
    progress (:class:`~vscene_engine.core.runtime.Progress`): the prior's stages, then ``update(done, total,
    stage="render", preview=frame)`` per rendered frame; ``check_interrupt()`` in every loop. ``prior``: an already computed
    :class:`vscene_engine.prior.coarse.PriorResult` to render instead of computing one (e.g. method "noposplat", whose
    cameras define the path); ``config`` / ``mvsplat`` / ``depth`` / ``confidence`` are then unused.
    """
    from .prior.coarse import coarse_prior
    from .render.rasterize import render

    progress = as_progress(progress)
    if (path.width, path.height) != (views.width, views.height):
        raise ValueError(f"path cameras are {path.width}x{path.height} but the views are {views.width}x{views.height}")
    if prior is None:
        if config is not None and config.method == "depth" and depth is None:  # the views' own depth (e.g. DA3's)
            depth, confidence = views.depth, views.confidence if confidence is None else confidence
        prior = coarse_prior(views.images, views.cameras, config, mvsplat=mvsplat, depth=depth,
                             confidence=confidence, progress=progress)
    frames, cover = [], []
    with torch.no_grad():
        for i in range(len(path)):
            progress.check_interrupt()
            out = render(prior.scene, path[i], background=background, progress=progress)
            frames.append(out.rgb[0].clamp(0, 1))
            cover.append(out.alpha[0, ..., 0])
            progress.update(i + 1, len(path), stage="render", preview=frames[-1])
    return CoarseVideo(prior.scene, torch.stack(frames), torch.stack(cover), path, prior.depth, prior.confidence)


@dataclass
class Reconstruction:
    """scene: fitted GaussianScene; renders [F,H,W,3] at the path cameras; psnr_per_view: dict name -> dB for the
    path frames ("frame_0000"...) and the two input views ("view_a", "view_b"); history: fit log."""

    scene: GaussianScene
    renders: torch.Tensor
    psnr_per_view: dict
    history: list


def reconstruct(frames: torch.Tensor, path: Cameras, views: Optional[ViewPair] = None,
                init: Optional[GaussianScene] = None, *, iters: int = 600, densify: bool = True,
                input_view_weight: int = 4, lambda_dssim: float = 0.2, background: Sequence[float] = (0, 0, 0),
                sh_degree: int = 1, n_init: int = 20000, seed: int = 0,
                progress: Optional[Progress] = None) -> Reconstruction:
    """Fit a scene to ``frames`` [F,H,W,3] seen from ``path`` (+ the two real views of ``views``, each repeated
    ``input_view_weight`` times so the photos outweigh single synthetic frames). ``init``: starting scene (e.g. the
    coarse prior) or None for random initialisation. progress: :class:`~vscene_engine.core.runtime.Progress`, handed
    to :func:`~vscene_engine.recon.fit.fit_scene` (``update(it, iters, stage="fit", loss=, preview=)``)."""
    from .render.losses import psnr
    from .recon.fit import FitConfig, fit_scene
    from .render.rasterize import render

    if not isinstance(frames, torch.Tensor) or frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError("frames must be an image batch [F,H,W,3]")
    if frames.shape[0] != len(path):
        raise ValueError(f"{frames.shape[0]} frames but {len(path)} path cameras: give the trajectory the frames "
                         "were rendered with")
    if (frames.shape[2], frames.shape[1]) != (path.width, path.height):
        raise ValueError(f"frames are {frames.shape[2]}x{frames.shape[1]} but the path cameras are "
                         f"{path.width}x{path.height}")
    if iters < 1:
        raise ValueError("iters must be >= 1")
    imgs, cams = [frames.float()], [path]
    names = [f"frame_{i:04d}" for i in range(len(path))]
    if views is not None:
        if (views.width, views.height) != (path.width, path.height):
            raise ValueError("the views and the path have different image sizes")
        k = max(1, int(input_view_weight))
        imgs.append(views.images.repeat(k, 1, 1, 1))
        cams.append(Cameras.cat([views.cameras] * k))
    all_imgs = torch.cat(imgs)
    all_cams = Cameras.cat([c.to(dtype=torch.float32) for c in cams])

    cfg = FitConfig(iters=iters, lambda_dssim=lambda_dssim, sh_degree=sh_degree,
                    sh_every=max(1, iters // (sh_degree + 1)), seed=seed, densify=True if densify else None,
                    n_init=n_init)
    fit = fit_scene(all_imgs, all_cams, init, cfg, background=background, progress=progress, final_eval=False)
    with torch.no_grad():
        renders = render(fit.scene, path.to(dtype=torch.float32), background=background).rgb.clamp(0, 1)
        per = {n: float(psnr(renders[i : i + 1], frames[i : i + 1].float())) for i, n in enumerate(names)}
        if views is not None:
            vr = render(fit.scene, views.cameras, background=background).rgb.clamp(0, 1)
            for i, n in enumerate(("view_a", "view_b")):
                per[n] = float(psnr(vr[i : i + 1], views.images[i : i + 1]))
    return Reconstruction(fit.scene, renders, per, fit.history)
