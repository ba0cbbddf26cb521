"""Depth Anything 3 geometry (ComfyUI core's ``DA3_GEOMETRY``) -> our cameras, depth and confidence.

Entry point: :func:`cameras_from_da3` ``(geometry) -> DA3Views``.

What core's ``DA3Inference`` (multiview mode) puts in the dict (comfy_extras/nodes_depth_anything_3.py), for ``S``
views given as one IMAGE batch ``[S,H,W,3]`` (``H x W`` = the *input* size, shared by the batch):

* ``"image"``       ``[S,H,W,3]`` float 0..1, the input batch (CPU);
* ``"depth"``       ``[S,H,W]`` float32, the model's raw depth (view z along the optical axis, arbitrary units shared
  with the extrinsics' translations), predicted at the *processing* size and bilinearly resized back to ``H x W``;
* ``"confidence"``  ``[S,H,W]`` raw confidence (``exp(x) + 1``, so >= 1; Small/Base models only), resized likewise;
* ``"extrinsics"``  ``[1,S,3,4]`` world-to-camera ``[R|t]`` (OpenCV axes: x right, y down, z forward); the world frame
  is the model's own (not necessarily view 0);
* ``"intrinsics"``  ``[1,S,3,3]`` pixel intrinsics **of the processing size** ``H' x W'`` (not of the input size):
  the input is resized (Lanczos, corner-aligned) to ``H' x W'``, each side a multiple of 14 (longest side =
  ``resolution`` for ``upper_bound_resize``, shortest side for ``lower_bound_resize``; :func:`da3_target_size`).
  With ``pose_method="cam_dec"`` the principal point is exactly ``(W'/2, H'/2)``; with ``"ray_pose"`` it is
  estimated (near the centre);
* ``"mode"``        ``"multiview"`` (``"mono"`` has no extrinsics/intrinsics: no cameras).

The processing size is not stored in the dict. :func:`da3_process_size` recovers it from the principal point: the
candidate sizes (every resolution 140..2520 in steps of 14, both resize methods, and the input size itself) are
compared with ``(2 cx, 2 cy)``; with ``cam_dec`` the match is exact. With ``ray_pose`` the principal point is an
estimate: the default resolution (504, upper_bound_resize) is assumed when it is within 5 %, and
``info["warning"]`` says so (use cam_dec with another resolution).

Conversion (:func:`cameras_from_da3`), views ``a, b`` of the batch (default 0 and 1):

* ``c2w_i = inverse(extrinsics_i)``; the world is re-based on camera A (``c2w_A = I``) and scaled so that the
  baseline ``|C_B - C_A|`` is 1 (as our estimated poses); the depth maps are divided by the same baseline, so depth
  and cameras stay consistent (``info["baseline_da3"]`` keeps the original baseline in DA3 units);
* ``K`` is rescaled from ``W' x H'`` to the input ``W x H`` (row 0 times ``W / W'``, row 1 times ``H / H'``; our
  pixel convention, centres at +0.5, in which DA3's centred principal point ``W'/2`` is the image centre);
* confidence is normalised per view to 0..1 with core's rule ``(c - min) / (max - min)`` (all ones when constant),
  so a threshold means what core's ``confidence_threshold`` means.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..core.cameras import Cameras

__all__ = ["DA3Views", "cameras_from_da3", "da3_view_pair", "da3_target_size", "da3_process_size",
           "normalize_confidence", "DA3_PATCH"]

DA3_PATCH = 14  # DA3's ViT patch size: both sides of the processing size are multiples of it
_RESOLUTIONS = range(140, 2521, 14)  # the DA3Inference `resolution` widget's range
_METHODS = ("upper_bound_resize", "lower_bound_resize")


@dataclass
class DA3Views:
    """Two views out of a DA3_GEOMETRY, in our conventions.

    cameras:    :class:`Cameras` (2, input ``W x H``), OpenCV c2w, camera A = identity, baseline 1.
    depth:      ``[2,H,W]`` view-z depth in the same (baseline = 1) units.
    confidence: ``[2,H,W]`` in 0..1 (per-view min-max of DA3's raw confidence), or ``None`` when absent.
    images:     ``[2,H,W,3]`` the pixels DA3 saw (``geometry["image"]``), or ``None`` when absent.
    info:       dict: ``views``, ``num_views``, ``input_size`` [W,H], ``process_size`` [W',H'],
                ``process_size_exact``, ``baseline_da3``, ``focal_px`` and ``fov_x_deg`` (at the input size), and
                ``warning`` when the field of view is implausible (outside 1..170 degrees).
    """

    cameras: Cameras
    depth: Tensor
    confidence: Tensor | None
    images: Tensor | None
    info: dict = field(default_factory=dict)


def _round_to_patch(x: int) -> int:
    down = (x // DA3_PATCH) * DA3_PATCH
    up = down + DA3_PATCH
    return up if abs(up - x) <= abs(x - down) else down


def da3_target_size(h: int, w: int, resolution: int = 504, method: str = "upper_bound_resize") -> tuple[int, int]:
    """DA3's processing size ``(h', w')`` for an ``h x w`` input: scale the longest (upper_bound_resize) or shortest
    (lower_bound_resize) side to ``resolution``, then round each side to the nearest multiple of 14."""
    if method not in _METHODS:
        raise ValueError(f"unknown DA3 resize method {method!r}; use one of {', '.join(_METHODS)}")
    s = resolution / float(max(h, w) if method == "upper_bound_resize" else min(h, w))
    return max(1, _round_to_patch(int(round(h * s)))), max(1, _round_to_patch(int(round(w * s))))


def da3_process_size(K: Tensor, h: int, w: int) -> tuple[tuple[int, int], bool]:
    """The processing size ``((h', w'), exact)`` of an ``h x w`` input from the principal points of ``K [S,3,3]``
    (pixels of the processing size).

    ``exact``: a candidate's centre ``(w'/2, h'/2)`` is within 0.5 px (pose_method cam_dec). Otherwise (ray_pose: an
    estimated principal point) the DA3Inference default (resolution 504, upper_bound_resize) is assumed when its
    centre is within 5 % of the principal point, else the candidate with the nearest centre is taken."""
    cx, cy = float(K[:, 0, 2].mean()), float(K[:, 1, 2].mean())
    cands = {(h, w)}
    for r in _RESOLUTIONS:
        for m in _METHODS:
            cands.add(da3_target_size(h, w, r, m))

    def err(hw):
        return max(abs(hw[1] - 2 * cx), abs(hw[0] - 2 * cy)) / 2

    best = min(cands, key=lambda hw: (err(hw), hw))
    if err(best) <= 0.5:
        return best, True
    default = da3_target_size(h, w)
    if err(default) <= 0.05 * max(default) / 2:
        return default, False
    return best, False


def normalize_confidence(conf: Tensor) -> Tensor:
    """``[S,H,W]`` raw confidence -> per-view ``(c - min) / (max - min)`` in 0..1 (ones where constant)."""
    lo = conf.amin(dim=(-2, -1), keepdim=True)
    hi = conf.amax(dim=(-2, -1), keepdim=True)
    rng = hi - lo
    return torch.where(rng > 0, (conf - lo) / torch.where(rng > 0, rng, torch.ones_like(rng)), torch.ones_like(conf))


def _tensor(geometry: dict, key: str, what: str) -> Tensor:
    v = geometry.get(key)
    if not isinstance(v, torch.Tensor):
        raise ValueError(f"DA3 geometry: '{key}' ({what}) is missing; got keys {sorted(geometry)}. Run 'Run Depth "
                         "Anything 3' (DA3Inference) with mode = multiview and a Small/Base model on a batch of "
                         "the two photos")
    return v.detach().to("cpu", torch.float64)


def _check_geometry(geometry) -> tuple[Tensor, Tensor, Tensor, int, int, int]:
    if not isinstance(geometry, dict):
        raise ValueError(f"DA3 geometry: expected the DA3_GEOMETRY dict of core's DA3Inference node, got "
                         f"{type(geometry).__name__}")
    if geometry.get("mode", "multiview") != "multiview" or "extrinsics" not in geometry:
        raise ValueError("DA3 geometry has no cameras (mode = "
                         f"{geometry.get('mode', '?')!r}): set DA3Inference's mode to multiview (Small/Base models; "
                         "the Mono/Metric models give no cameras) and batch the two photos into its image input")
    depth = _tensor(geometry, "depth", "[S,H,W] depth")
    E = _tensor(geometry, "extrinsics", "[1,S,3,4] world-to-camera")
    K = _tensor(geometry, "intrinsics", "[1,S,3,3] pixel intrinsics")
    if depth.dim() != 3:
        raise ValueError(f"DA3 geometry: depth must be [S,H,W], got {tuple(depth.shape)}")
    S, H, W = depth.shape
    if E.dim() == 3:
        E = E[None]
    if K.dim() == 3:
        K = K[None]
    if E.dim() != 4 or E.shape[0] != 1 or E.shape[-2:] not in ((3, 4), (4, 4)) or E.shape[1] != S:
        raise ValueError(f"DA3 geometry: extrinsics must be [1,S,3,4] with S = {S} (the depth batch), got "
                         f"{tuple(E.shape)}")
    if K.dim() != 4 or K.shape[0] != 1 or K.shape[-2:] != (3, 3) or K.shape[1] != S:
        raise ValueError(f"DA3 geometry: intrinsics must be [1,S,3,3] with S = {S}, got {tuple(K.shape)}")
    if S < 2:
        raise ValueError(f"DA3 geometry holds {S} view; it needs at least 2. Batch the two photos (e.g. 'Batch "
                         "Images') before DA3Inference, with mode = multiview")
    return depth, E[0, :, :3, :], K[0], S, H, W


def cameras_from_da3(geometry: dict, views: tuple[int, int] = (0, 1)) -> DA3Views:
    """Views ``views = (a, b)`` of a DA3_GEOMETRY as :class:`DA3Views` (see the module docstring for the
    conventions). Raises ValueError naming what is wrong (no cameras/mono mode, fewer than 2 views, wrong shapes,
    non-finite or degenerate poses/intrinsics, non-positive depth everywhere)."""
    depth, E, K, S, H, W = _check_geometry(geometry)
    a, b = (int(v) for v in views)
    if not (0 <= a < S and 0 <= b < S and a != b):
        raise ValueError(f"DA3 geometry: views {views} must be two different indices below {S}")
    if not (torch.isfinite(E).all() and torch.isfinite(K).all()):
        raise ValueError("DA3 geometry: the extrinsics/intrinsics contain NaN/inf (DA3's pose estimate failed); try "
                         "the other pose_method (cam_dec / ray_pose) or cameras_from = estimate")
    (hp, wp), exact = da3_process_size(K, H, W)
    w2c = torch.eye(4, dtype=torch.float64).repeat(S, 1, 1)
    w2c[:, :3, :] = E
    R = w2c[:, :3, :3]
    if float((R.transpose(-1, -2) @ R - torch.eye(3, dtype=R.dtype)).abs().max()) > 1e-3:
        raise ValueError("DA3 geometry: an extrinsic rotation is not orthonormal; this is not DA3's output")
    c2w = torch.linalg.inv(w2c[[a, b]])
    c2w = torch.linalg.inv(c2w[0]) @ c2w  # world = camera A
    base = float(c2w[1, :3, 3].norm())
    if not base > 1e-9 * max(1.0, float(depth[[a, b]].abs().max())):
        raise ValueError("DA3 geometry: the two cameras share one centre (no baseline), so the depth cannot be "
                         "scaled like our poses; use two photos taken from different positions")
    c2w[:, :3, 3] /= base
    Ks = K[[a, b]].clone()
    Ks[:, 0, :] *= W / wp
    Ks[:, 1, :] *= H / hp
    if not bool(((Ks[:, 0, 0] > 0) & (Ks[:, 1, 1] > 0)).all()):
        raise ValueError(f"DA3 geometry: non-positive focal length in the intrinsics {Ks[:, :2, :2].tolist()}")
    d = depth[[a, b]] / base
    ok = torch.isfinite(d) & (d > 0)
    if not bool(ok.any()):
        raise ValueError("DA3 geometry: no pixel has a positive finite depth")
    near = max(float(d[ok].min()) * 0.8, 1e-6)  # the depth range of the two maps, with a margin
    far = max(float(d[ok].max()) * 1.25, near * 1.01)
    cams = Cameras(c2w.float(), Ks.float(), W, H, near, far, ["view_a", "view_b"])
    conf = None
    if isinstance(geometry.get("confidence"), torch.Tensor):
        c = geometry["confidence"].detach().to("cpu", torch.float32)
        if tuple(c.shape) != (S, H, W):
            raise ValueError(f"DA3 geometry: confidence must be [S,H,W] = {(S, H, W)} like depth, got "
                             f"{tuple(c.shape)}")
        conf = normalize_confidence(torch.nan_to_num(c[[a, b]], nan=0.0))
    imgs = None
    if isinstance(geometry.get("image"), torch.Tensor):
        im = geometry["image"]
        if im.dim() != 4 or tuple(im.shape[:3]) != (S, H, W) or im.shape[-1] < 3:
            raise ValueError(f"DA3 geometry: image must be [S,H,W,3] = {(S, H, W, 3)}, got {tuple(im.shape)}")
        imgs = im[[a, b], ..., :3].detach().to("cpu", torch.float32).clamp(0, 1)
    info = {"views": [a, b], "num_views": S, "input_size": [W, H], "process_size": [wp, hp],
            "process_size_exact": exact, "baseline_da3": base,
            "focal_px": [[float(Ks[i, 0, 0]), float(Ks[i, 1, 1])] for i in range(2)],
            "fov_x_deg": [math.degrees(2 * math.atan(W / (2 * float(Ks[i, 0, 0])))) for i in range(2)]}
    if not exact:
        info["warning"] = (f"DA3's principal point is not at the centre of its processing size (pose_method "
                           f"ray_pose?): assumed DA3 ran at {wp}x{hp}; with a non-default resolution use pose_method "
                           "cam_dec")
    if not all(1.0 <= f <= 170.0 for f in info["fov_x_deg"]):  # e.g. untrained weights; real DA3 gives ~20-120
        fov = ", ".join(f"{f:.3g}" for f in info["fov_x_deg"])
        msg = (f"DA3's field of view {fov} deg is implausible: check the DA3 weights (a Small/Base checkpoint) or "
               "use cameras_from = estimate")
        info["warning"] = info["warning"] + "; " + msg if "warning" in info else msg
    return DA3Views(cams, torch.where(ok, d, torch.zeros_like(d)).float(), conf, imgs, info)


def da3_view_pair(img_a: Tensor, img_b: Tensor, geometry: dict, *, size: int = 512, resize: str = "crop",
                  views: tuple[int, int] = (0, 1)):
    """A :class:`~vscene_engine.views.pair.ViewPair` whose cameras, depth and confidence come from a DA3_GEOMETRY.

    Each photo is used when it has DA3's input size or the same aspect (K is rescaled uniformly); a photo of another
    aspect (the batching node centre-cropped/stretched it to photo A's size before DA3 saw it) is replaced by the
    pixels DA3 saw (``geometry["image"]``), which is what the cameras describe (``provenance["da3"]["images"]``
    says which). Cameras: camera A = identity, baseline 1 (:func:`cameras_from_da3`); ``scale`` is 1.
    """
    from .pair import make_view_pair, prepare_image

    g = cameras_from_da3(geometry, views)
    W, H = g.cameras.width, g.cameras.height
    photos, used = [], []
    for i, img in enumerate((img_a, img_b)):
        p = prepare_image(img, f"image {'AB'[i]}")
        h, w = p.shape[:2]
        if (w, h) == (W, H) or abs(w / h - W / H) <= 0.01 * (W / H):
            photos.append(p)
            used.append("photo")
        elif g.images is not None:
            photos.append(g.images[i])
            used.append(f"da3 input (the photo is {w}x{h}, DA3 saw {W}x{H})")
        else:
            raise ValueError(f"image {'AB'[i]} is {w}x{h} but DA3 ran on {W}x{H} images (another aspect ratio) "
                             "and the geometry has no image to use instead; give LoadViewPair the photos DA3 saw")
    dmaps, cmaps = [], []
    for i, p in enumerate(photos):
        h, w = p.shape[:2]
        d, c = g.depth[i], g.confidence[i] if g.confidence is not None else None
        if (w, h) != (W, H):  # same aspect: resize the maps like the camera (corner-aligned)
            d = torch.nn.functional.interpolate(d[None, None], size=(h, w), mode="bilinear", align_corners=False)[0, 0]
            if c is not None:
                c = torch.nn.functional.interpolate(c[None, None], size=(h, w), mode="bilinear",
                                                    align_corners=False)[0, 0]
        dmaps.append(d)
        cmaps.append(c)
    conf = None if g.confidence is None else cmaps
    vp = make_view_pair(photos[0], photos[1], g.cameras, size=size, resize=resize, depth=dmaps, confidence=conf)
    vp.provenance.update(cameras="da3", da3=dict(g.info, images=used))
    return vp
