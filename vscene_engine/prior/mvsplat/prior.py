"""MVSplat as VideoScene's coarse prior: two posed photos -> pixel-aligned Gaussians with the official input conventions.

Entry point: :func:`mvsplat_prior` ``(encoder, images [V,H,W,3], cams) -> MVSplatPrior``.

Input conventions of the official RealEstate10K model (donydchen/mvsplat ``config/experiment/re10k.yaml`` and its
dataset shims), reproduced here:

* images are resized so that the SHORT side is ``size`` (256) and centre-cropped to ``size x size`` (``fit="crop"``,
  the official ``apply_crop_shim``: rescale, then crop the centre). ``fit="full"`` keeps the whole photo instead: the
  short side becomes ``size`` and the long side the nearest multiple of the encoder's size rule, i.e. a slight
  anisotropic scale; the network was trained on square crops, so ``crop`` is the faithful choice;
* intrinsics follow every resize / crop exactly (:meth:`Cameras.resized` / :meth:`Cameras.cropped`, continuous pixel
  coordinates, pixel centres at +0.5) and are then NORMALIZED (row 0 / width, row 1 / height), as the official code;
* cameras: OpenCV camera-to-world (+x right, +y down, +z forward), world units of the caller's poses;
* near / far: the plane-sweep range in those units, RealEstate10K: 1 and 100 (``near``, ``far`` arguments).

The Gaussians come out in world space at the network's resolution (one per pixel of each view's crop) with SH degree 4
(the official model), as a :class:`vscene_engine.core.gaussians.GaussianScene` (see :func:`.encoder.to_gaussian_scene` for
the SH basis note). Parts of the photos outside a ``crop`` are not represented: a camera path rendered at the full
photo size shows the background there.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from ...core.cameras import Cameras
from ...core.gaussians import GaussianScene
from .encoder import MVSplatEncoder, to_gaussian_scene

__all__ = ["MVSplatPrior", "FITS", "network_inputs", "mvsplat_prior"]

FITS = ("crop", "full")


@dataclass
class MVSplatPrior:
    """scene: world-space Gaussians (V * h * w of them, float32, on the images' device); depth / opacity: ``[V, h, w]``
    at the network resolution; cameras: the ``Cameras`` of the network's input images (pixel intrinsics, h x w);
    info: method, size, fit, crop boxes, near / far, n_gaussians, time_s."""

    scene: GaussianScene
    depth: torch.Tensor
    opacity: torch.Tensor
    cameras: Cameras
    info: dict = field(default_factory=dict)


def _round_to(x: float, m: int) -> int:
    return max(m, int(round(x / m)) * m)


def network_inputs(images: torch.Tensor, cams: Cameras, size: int = 256, fit: str = "crop", multiple: int = 16):
    """Resize / crop the photos for the encoder and keep the intrinsics right.

    images ``[V, H, W, 3]`` in 0..1 with ``cams`` of ``W x H`` -> ``(x [V, 3, h, w], cams_net, boxes)`` where
    ``cams_net`` are pixel cameras of the ``w x h`` network images and ``boxes[i] = (x0, y0, w, h)`` the crop in the
    resized image (see the module docstring for ``fit``). ``size`` must be a multiple of ``multiple``.
    """
    if fit not in FITS:
        raise ValueError(f"fit must be one of {FITS}, got {fit!r}")
    size = int(size)
    if size < multiple or size % multiple:
        raise ValueError(f"size must be a positive multiple of {multiple} (the encoder's size rule), got {size}; "
                         f"the official model uses 256")
    if images.dim() != 4 or images.shape[-1] != 3:
        raise ValueError(f"images must be [V, H, W, 3] in 0..1, got {tuple(images.shape)}")
    V, H, W, _ = images.shape
    if (W, H) != (cams.width, cams.height) or len(cams) != V:
        raise ValueError(f"the {len(cams)} cameras are for {cams.width}x{cams.height} images but the {V} photos are "
                         f"{W}x{H}")
    s = size / min(H, W)
    if fit == "crop":
        rw, rh = max(size, round(W * s)), max(size, round(H * s))
        x0, y0 = (rw - size) // 2, (rh - size) // 2
        ow, oh = size, size
    else:
        rw, rh = (size, _round_to(H * s, multiple)) if W <= H else (_round_to(W * s, multiple), size)
        x0 = y0 = 0
        ow, oh = rw, rh
    x = images.permute(0, 3, 1, 2).float()
    if (rh, rw) != (H, W):
        x = F.interpolate(x, size=(rh, rw), mode="bilinear", align_corners=False, antialias=True)
    x = x[:, :, y0:y0 + oh, x0:x0 + ow].clamp(0, 1).contiguous()
    cams_net = cams.resized(rw, rh).cropped(x0, y0, ow, oh)
    return x, cams_net, [(x0, y0, ow, oh)] * V


def mvsplat_prior(encoder: MVSplatEncoder, images: torch.Tensor, cams: Cameras, *, size: int = 256,
                  fit: str = "crop", near: float = 1.0, far: float = 100.0) -> MVSplatPrior:
    """Run the MVSplat encoder on posed photos (module docstring for the conventions).

    encoder: an :class:`MVSplatEncoder` (e.g. from :func:`.encoder.load_mvsplat`); its device and dtype are used.
    images ``[V, H, W, 3]`` float 0..1 (V = the encoder's ``num_views``, 2 for the official model); cams: ``Cameras``
    of those photos. Returns :class:`MVSplatPrior`. Raises ValueError (clear message) on bad sizes / ranges.
    """
    t0 = time.perf_counter()
    if not isinstance(encoder, MVSplatEncoder):
        raise ValueError(f"encoder must be an MVSplatEncoder (load it with load_mvsplat), got {type(encoder).__name__}")
    if not (math.isfinite(near) and math.isfinite(far) and 0 < near < far):
        raise ValueError(f"near / far must satisfy 0 < near < far, got {near} / {far} (RealEstate10K model: 1 / 100)")
    p = next(encoder.parameters())
    x, cams_net, boxes = network_inputs(images, cams, size, fit, encoder.cfg.size_multiple)
    V, _, h, w = x.shape
    c = cams_net.to(device=p.device, dtype=torch.float32)
    Kn = c.K.clone()
    Kn[:, 0] /= w
    Kn[:, 1] /= h
    full = lambda v: torch.full((1, V), float(v), device=p.device, dtype=p.dtype)  # noqa: E731
    with torch.no_grad():
        out = encoder(x[None].to(device=p.device, dtype=p.dtype), c.c2w[None].to(p.dtype), Kn[None].to(p.dtype),
                      full(near), full(far))
    out = {k: v.float() for k, v in out.items()}
    scene = to_gaussian_scene(out, 0).to(device=images.device)
    depth = out["depths"][0].to(images.device)
    opacity = out["opacities"][0].reshape(V, h, w).to(images.device)
    info = {"method": "mvsplat", "size": [h, w], "fit": fit, "crop_boxes": boxes, "near": float(near),
            "far": float(far), "n_gaussians": [h * w] * V, "sh_degree": encoder.cfg.sh_degree,
            "time_s": time.perf_counter() - t0}
    return MVSplatPrior(scene, depth, opacity, cams_net, info)
