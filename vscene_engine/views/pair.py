"""Two input photos -> a ready-to-use view pair. Entry point: :func:`make_view_pair` -> :class:`ViewPair`.

Input images are float tensors in [0,1]: [H,W,C] or [1,H,W,C] with C in {1 (gray), 3 (RGB), 4 (RGBA, composited over
white)}; the two may differ in size. Cameras (OpenCV camera-to-world, +x right, +y down, +z forward; K in pixels) are

* estimated (``cameras=None``): relative pose from features (:mod:`vscene_engine.views.pose`), baseline normalised to 1,
  near/far from the triangulated points. Intrinsics: a given field of view (``fov_deg`` over ``fov_axis``) is used
  as is; ``fov_deg=None`` / ``0`` / ``"auto"`` means unknown: the focal length is self-calibrated from the pair when
  that is well-conditioned, otherwise it comes from ``fov_prior`` (e.g. the photo's EXIF, see
  :func:`vscene_engine.views.pose.exif_focal_35mm`) or the default 60 deg horizontal FOV. ``provenance["focal_source"]``
  says which (``user``, ``exif``, ``self-calibrated``, ``default-fov``) and ``provenance["pose"]`` how confident;
* given: a :class:`~vscene_engine.core.cameras.Cameras` with 2 cameras, or anything
  :func:`~vscene_engine.io.camera_formats.load_cameras` reads (path, JSON text, parsed JSON, LOAD3D_CAMERA dicts).
  A camera's image size may differ from its photo only by a uniform scale (same aspect within 1%); K is rescaled.

Optionally per-view ``depth`` (view z, in the cameras' world units) and ``confidence`` (0..1) maps at the photos' sizes
(e.g. Depth Anything 3's, :mod:`vscene_engine.views.da3`) travel with the pair: they are cropped/resized with the same box
as their photo (area average when shrinking, bilinear when growing; padding gets depth 0 = no data, confidence 0).

Both views are then brought to one output size with a resize policy that keeps K consistent with the pixels
(``Cameras.fit``): the output aspect is image A's, the longer side ``size`` pixels rounded to a multiple of 8
(video codecs and latent grids want that); view B is centre-cropped ("crop"), letterboxed ("pad") or stretched
("stretch") to it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

from ..core.cameras import Cameras

__all__ = ["ViewPair", "make_view_pair", "prepare_image", "apply_box"]

MIN_SIDE = 64


@dataclass
class ViewPair:
    """images [2,H,W,3] float 0..1; cameras: Cameras (2, H x W); near/far: scene depth range (world units);
    scale: world units per unit of the pair's baseline (1.0 for estimated poses); provenance: how it was made;
    depth / confidence: optional [2,H,W] per-view depth (view z, world units; 0 = no data) and confidence (0..1)
    at the working size, e.g. from Depth Anything 3."""

    images: torch.Tensor
    cameras: Cameras
    near: float
    far: float
    scale: float = 1.0
    provenance: dict = field(default_factory=dict)
    depth: Optional[torch.Tensor] = None
    confidence: Optional[torch.Tensor] = None

    @property
    def width(self) -> int:
        return self.cameras.width

    @property
    def height(self) -> int:
        return self.cameras.height


def prepare_image(img: torch.Tensor, name: str = "image") -> torch.Tensor:
    """[H,W,C] or [1,H,W,C] (C = 1, 3 or 4) -> [H,W,3] float32 in [0,1]; clear ValueError otherwise."""
    if not isinstance(img, torch.Tensor):
        raise ValueError(f"{name}: expected an image tensor, got {type(img).__name__}")
    t = img
    if t.dim() == 4:
        if t.shape[0] < 1:
            raise ValueError(f"{name}: the image batch is empty")
        t = t[0]
    if t.dim() == 2:
        t = t[..., None]
    if t.dim() != 3 or t.shape[-1] not in (1, 3, 4):
        raise ValueError(f"{name}: expected [H,W,C] with C in 1/3/4, got shape {tuple(img.shape)}")
    t = t.detach().to(torch.float32)
    if t.shape[0] < MIN_SIDE or t.shape[1] < MIN_SIDE:
        raise ValueError(f"{name} is {t.shape[1]}x{t.shape[0]} px; both sides must be at least {MIN_SIDE} px "
                         "for reliable matching — use a larger photo")
    if not torch.isfinite(t).all():
        raise ValueError(f"{name} contains NaN/inf pixel values")
    if t.shape[-1] == 1:
        t = t.expand(-1, -1, 3)
    elif t.shape[-1] == 4:
        a = t[..., 3:4]
        t = t[..., :3] * a + (1 - a)
    return t.clamp(0, 1).contiguous()


def apply_box(img: torch.Tensor, box, width: int, height: int, pad_value: float = 0.0) -> torch.Tensor:
    """Take source region ``box`` (x0, y0, w, h; may extend past the image = padding) of [H,W,3] and resize it to
    width x height (area when shrinking, bilinear when growing) — the image side of ``Cameras.fit``."""
    from ..io.images import resize_image

    H, W = img.shape[:2]
    x0, y0, bw, bh = (int(v) for v in box)
    canvas = torch.full((bh, bw, img.shape[2]), pad_value, dtype=img.dtype)
    sx0, sy0 = max(0, x0), max(0, y0)
    sx1, sy1 = min(W, x0 + bw), min(H, y0 + bh)
    if sx1 > sx0 and sy1 > sy0:
        canvas[sy0 - y0 : sy1 - y0, sx0 - x0 : sx1 - x0] = img[sy0:sy1, sx0:sx1]
    return resize_image(canvas, width, height)


def _output_size(w: int, h: int, size: int) -> tuple[int, int]:
    if size < MIN_SIDE:
        raise ValueError(f"size must be at least {MIN_SIDE} px, got {size}")
    s = size / max(w, h)
    ow, oh = max(8, int(round(w * s / 8)) * 8), max(8, int(round(h * s / 8)) * 8)
    return ow, oh


def _cams_for_image(cams: Cameras, i: int, w: int, h: int, name: str) -> Cameras:
    """Camera i rescaled to the photo's size (uniform scale only)."""
    c = cams[i]
    if (c.width, c.height) == (w, h):
        return c
    if abs(c.width / c.height - w / h) > 0.01 * (w / h):
        raise ValueError(f"{name}: the camera describes a {c.width}x{c.height} image but the photo is {w}x{h} "
                         "(different aspect ratio); give the cameras of these photos or crop the photo to match")
    return c.resized(w, h)


def _is_auto(fov_deg) -> bool:
    if fov_deg is None:
        return True
    if isinstance(fov_deg, str):
        if fov_deg.strip().lower() == "auto":
            return True
        raise ValueError(f"fov_deg must be a number of degrees or 'auto', got {fov_deg!r}")
    return float(fov_deg) == 0.0


def placeholder_cameras(width: int, height: int, fov_deg: float = 60.0) -> Cameras:
    """Two stand-in cameras for an image of ``width x height``: K from a horizontal ``fov_deg`` (principal point at the
    centre), camera A at the origin, camera B at +1 x, both looking down +z (OpenCV camera-to-world).

    For priors that find the poses themselves (NoPoSplat): they let a :class:`ViewPair` be built without feature
    matching, and must be replaced by the prior's cameras before anything is rendered from them.
    """
    from .pose import focal_from_fov

    f = focal_from_fov(int(width), int(height), float(fov_deg))
    c2w = torch.eye(4).repeat(2, 1, 1)
    c2w[1, 0, 3] = 1.0
    K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    return Cameras(c2w, K, int(width), int(height), 0.1, 100.0, ["view_a", "view_b"])


def make_view_pair(img_a: torch.Tensor, img_b: torch.Tensor, cameras=None, *, fov_deg=None,
                   fov_axis: str = "horizontal", size: int = 512, resize: str = "crop", near=None, far=None,
                   fov_prior: tuple | None = None, pose_kwargs: dict | None = None, depth=None,
                   confidence=None) -> ViewPair:
    """Build a :class:`ViewPair` (see the module docstring). ``near``/``far`` override the depth range.

    ``fov_deg``: the field of view in degrees over ``fov_axis`` when the cameras are estimated and the lens is known
    (never overridden), or ``None`` / ``0`` / ``"auto"`` (default) for unknown intrinsics. ``fov_prior``:
    ``(fov_deg, axis, source)`` used when the intrinsics are unknown and the pair cannot self-calibrate, e.g.
    ``(fov_from_35mm(f35), "diagonal", "exif")``; ``None`` = the default 60 deg horizontal guess.
    ``depth`` / ``confidence``: optional pair of per-view maps ``[H_i,W_i]`` at the photos' sizes (or a ``[2,H,W]``
    tensor when both photos have one size), carried into :attr:`ViewPair.depth` / :attr:`ViewPair.confidence`."""
    a = prepare_image(img_a, "image A")
    b = prepare_image(img_b, "image B")
    (ha, wa), (hb, wb) = a.shape[:2], b.shape[:2]
    prov: dict = {"input_sizes": [[wa, ha], [wb, hb]], "resize": resize}
    if resize not in ("crop", "pad", "stretch"):
        raise ValueError(f"resize must be 'crop', 'pad' or 'stretch', got {resize!r}")
    scale = 1.0
    if cameras is None:
        from .pose import DEFAULT_FOV_DEG, estimate_relative_pose, focal_from_fov

        kw = dict(pose_kwargs or {})
        if _is_auto(fov_deg):
            p_fov, p_axis, p_src = fov_prior if fov_prior is not None else (DEFAULT_FOV_DEG, "horizontal",
                                                                             "default-fov")
            est = estimate_relative_pose(a, b, None, None, prior_fov_deg=float(p_fov), prior_fov_axis=p_axis,
                                         prior_source=p_src, **kw)
        else:
            if not (1.0 <= float(fov_deg) <= 170.0):
                raise ValueError(f"fov_deg must be in 1..170 degrees (or 0 / 'auto' for unknown intrinsics), "
                                 f"got {fov_deg}")

            def K_of(w, h):
                f = focal_from_fov(w, h, float(fov_deg), axis=fov_axis)
                return torch.tensor([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]], dtype=torch.float64)

            est = estimate_relative_pose(a, b, K_of(wa, ha), K_of(wb, hb), **kw)
        Ka = est.cameras.K[0].to(torch.float32)
        Kb = est.cameras[1].resized(wb, hb).K[0].to(torch.float32)  # camera B's K is stored at A's size
        c2w = est.cameras.c2w.to(torch.float32)
        cam_a = Cameras(c2w[0], Ka, wa, ha, est.near, est.far, ["view_a"])
        cam_b = Cameras(c2w[1], Kb, wb, hb, est.near, est.far, ["view_b"])
        n0, f0 = float(est.near), float(est.far)
        auto = _is_auto(fov_deg)
        prov.update(cameras="estimated", fov_deg=float(est.report["fov_deg"]) if auto else float(fov_deg),
                    fov_axis="horizontal" if auto else fov_axis,
                    focal_source=est.report["focal_source"], focal_confidence=est.report["focal_confidence"],
                    pose=est.report)
    else:
        from ..io.camera_formats import load_cameras

        cams = cameras if isinstance(cameras, Cameras) else load_cameras(cameras)
        if len(cams) != 2:
            raise ValueError(f"expected cameras for exactly 2 views, got {len(cams)}; select the two cameras of "
                             "these photos")
        cams = cams.to(dtype=torch.float32)
        cams.validate()
        cam_a = _cams_for_image(cams, 0, wa, ha, "image A")
        cam_b = _cams_for_image(cams, 1, wb, hb, "image B")
        n0, f0 = float(cams.near.min()), float(cams.far.max())
        base = float((cams.centers[0] - cams.centers[1]).norm())
        if base < 1e-9:
            raise ValueError("the two given cameras share one centre (no baseline): the scene's depth cannot be "
                             "recovered from them; use two photos taken from different positions")
        scale = base
        prov.update(cameras="given", camera_names=cams.names)
    if near is not None:
        n0 = float(near)
    if far is not None:
        f0 = float(far)
    if not (0 < n0 < f0) or not math.isfinite(f0):
        raise ValueError(f"invalid depth range near={n0} far={f0}: need 0 < near < far")
    W, H = _output_size(wa, ha, size)
    ca, box_a = cam_a.fit(W, H, resize)
    cb, box_b = cam_b.fit(W, H, resize)
    images = torch.stack([apply_box(a, box_a, W, H), apply_box(b, box_b, W, H)])
    cams_out = Cameras(torch.cat([ca.c2w, cb.c2w]), torch.cat([ca.K, cb.K]), W, H,
                       torch.tensor([n0, n0]), torch.tensor([f0, f0]), ["view_a", "view_b"])
    prov.update(output_size=[W, H], boxes=[list(box_a), list(box_b)])
    maps = {}
    for key, m in (("depth", depth), ("confidence", confidence)):
        if m is not None:
            maps[key] = torch.stack([_fit_map(m[i], box, W, H, (hw[0], hw[1]), f"{key} of view {'AB'[i]}")
                                     for i, (box, hw) in enumerate(((box_a, (ha, wa)), (box_b, (hb, wb))))])
    return ViewPair(images=images, cameras=cams_out, near=n0, far=f0, scale=scale, provenance=prov, **maps)


def _fit_map(m: torch.Tensor, box, width: int, height: int, hw: tuple[int, int], name: str) -> torch.Tensor:
    """A per-view map [h,w] at its photo's size -> [height,width] with the photo's box (non-finite -> 0)."""
    if not isinstance(m, torch.Tensor) or m.dim() != 2 or tuple(m.shape) != tuple(hw):
        shape = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
        raise ValueError(f"{name}: expected a [H,W] map of the photo's size {hw[1]}x{hw[0]}, got {shape}")
    m = torch.nan_to_num(m.detach().to(torch.float32), nan=0.0, posinf=0.0, neginf=0.0)
    return apply_box(m[..., None], box, width, height, pad_value=0.0)[..., 0]
