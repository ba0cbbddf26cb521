"""NoPoSplat as VideoScene's pose-free prior: two unposed photos -> Gaussians in camera A's frame + both cameras.

Entry point: :func:`noposplat_prior` ``(net, img_a, img_b, K=None) -> NoPoSplatPrior``.

Conventions reproduced from the official release (cvg/NoPoSplat; VideoScene's demo feeds it the same way):

* each photo is centre-cropped to a square (side = its short side) and resized to the model's training size
  (``net.cfg.image_size``: 256, or 512 for mixRe10kDl3dv_512x512), with antialiasing when shrinking (the training
  data were resized with PIL Lanczos; the demo's plain bilinear resize aliases); colours 0..1 (normalised inside
  the network);
* intrinsics are NORMALISED on that square (row 0 / width, row 1 / height). ``K=None``: the demo's default
  ``fx = fy = 0.8``, ``cx = cy = 0.5`` for both views; otherwise the given pixel intrinsics of the photos (e.g. our
  estimate) follow the crop and resize exactly;
* the network predicts both views' Gaussians in camera A's frame (A = identity). Camera B is recovered like the
  release's pose evaluation (src/misc/cam_utils.py ``get_pnp_pose``): PnP-RANSAC (OpenCV SQPnP, 100 iterations,
  5 px reprojection threshold) from view B's Gaussian centres (opacity > 0.3) to B's pixels. One deliberate
  difference: pixel centres are at +0.5 (the network's own ray grid), where the release passes integer pixel indices;
* optional photometric refinement (``refine_steps > 0``; the release's pose evaluation and VideoScene's demo run 200
  Adam steps, lr 0.005, on an se(3) update of the world-to-camera, src/evaluation/pose_evaluator.py and VideoScene's
  noposplat ``ModelWrapper.predict``): the Gaussians are rendered at the camera with
  :func:`vscene_engine.render.rasterize.render` and compared with the photo by MSE + (1 - SSIM). The demo refines camera B
  and camera A (from its own PnP); here camera A starts at the identity (the network predicts in its frame) and is
  refined too (``refine_a``), then the world is re-expressed in its frame. The release's loss also has an LPIPS
  term, omitted here (it needs VGG weights, which this project never downloads), and its SSIM term is the structure
  component only, here the full SSIM;
* finally the scene and the cameras are scaled so that the baseline |C_B - C_A| is 1, like the project's estimated
  poses (:mod:`vscene_engine.views.pose`, :mod:`vscene_engine.views.pair`).

Cameras are OpenCV camera-to-world (+x right, +y down, +z forward), K in pixels with pixel centres at +0.5.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from ...core.cameras import Cameras
from ...core.gaussians import GaussianScene
from ...core.runtime import Progress, as_progress
from .model import NoPoSplatNet, to_gaussian_scene

__all__ = ["NoPoSplatPrior", "NoPoSplatPoseError", "noposplat_prior", "square_crop", "pnp_pose", "refine_pose",
           "DEFAULT_FOCAL"]

DEFAULT_FOCAL = 0.8          # normalised fx = fy of VideoScene's / NoPoSplat's demo when the lens is unknown


class NoPoSplatPoseError(ValueError):
    """Camera B could not be recovered from the predicted Gaussians (too few confident points or PnP failed)."""


@dataclass
class NoPoSplatPrior:
    """Result of :func:`noposplat_prior`.

    scene:        GaussianScene in camera A's frame, baseline 1 (``2 * S * S`` Gaussians, SH degree 4).
    cameras:      Cameras of the two network images (``S x S``), A = identity, B from PnP (+ refinement).
    input_cameras: one single-camera Cameras per input photo (its own size; the same poses, K mapped back from the
                  square crop: outside the crop the photo is not represented).
    depth:        ``[2, S, S]`` z of each view's Gaussians in its own camera; opacity ``[2, S, S]``.
    images:       ``[2, S, S, 3]`` the network's input crops (0..1).
    info:         method, image_size, crop boxes ``(x0, y0, side)``, intrinsics source, PnP inliers, refinement
                  losses, baseline before normalisation, time_s.
    """

    scene: GaussianScene
    cameras: Cameras
    input_cameras: list
    depth: torch.Tensor
    opacity: torch.Tensor
    images: torch.Tensor
    info: dict = field(default_factory=dict)


def square_crop(img: torch.Tensor, size: int) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """img ``[H, W, 3]`` 0..1 -> (``[3, size, size]`` centre square resized with antialiasing, box ``(x0, y0, side)``
    of the square in the photo's pixels)."""
    H, W = img.shape[:2]
    m = min(H, W)
    x0, y0 = (W - m) // 2, (H - m) // 2
    x = img[y0:y0 + m, x0:x0 + m].permute(2, 0, 1)[None].float()
    if m != size:
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=m > size)
    return x[0].clamp(0, 1), (x0, y0, m)


def _normalised_K(K: torch.Tensor, box) -> torch.Tensor:
    """Pixel K of a photo -> normalised K of its square crop ``box = (x0, y0, side)`` (resizing keeps it)."""
    x0, y0, m = box
    Kn = K.detach().double().clone()
    Kn[0, 2] -= x0
    Kn[1, 2] -= y0
    Kn[:2] /= m
    Kn[2] = torch.tensor([0.0, 0.0, 1.0], dtype=Kn.dtype)
    return Kn


def _photo_K(Kn: torch.Tensor, box) -> torch.Tensor:
    """Inverse of :func:`_normalised_K`: pixel K of the full photo."""
    x0, y0, m = box
    K = Kn.double().clone()
    K[:2] *= m
    K[0, 2] += x0
    K[1, 2] += y0
    return K


def pnp_pose(points: torch.Tensor, opacity: torch.Tensor, K_pix: torch.Tensor, opacity_threshold: float = 0.3,
             reproj_px: float = 5.0, iterations: int = 100, seed: int = 0) -> tuple[torch.Tensor, dict]:
    """Camera-to-world pose of a view from its pixel-aligned 3D points (PnP-RANSAC, OpenCV SQPnP).

    points ``[S, S, 3]`` (one per pixel, world frame = camera A), opacity ``[S, S]``, K_pix ``[3, 3]`` pixel
    intrinsics of the ``S x S`` image (pixel centres at +0.5). When fewer than max(6, 1 %) of the points have
    ``opacity > opacity_threshold``, the most opaque half is used instead (``info["pnp_low_opacity_fallback"]``).
    Returns (``c2w [4, 4]`` float64, info with the number
    of candidate points and RANSAC inliers). Raises :class:`NoPoSplatPoseError`.
    """
    import cv2

    H, W = points.shape[:2]
    ys, xs = torch.meshgrid(torch.arange(H, dtype=torch.float64), torch.arange(W, dtype=torch.float64),
                            indexing="ij")
    pix = torch.stack((xs + 0.5, ys + 0.5), -1)
    finite = torch.isfinite(points).all(-1)
    mask = (opacity > opacity_threshold) & finite
    n = int(mask.sum())
    fallback = False
    if n < max(6, H * W // 100) and int(finite.sum()) >= 6:
        # too few confident Gaussians: use the most opaque half instead (reported in the info)
        thr = torch.quantile(opacity[finite].float(), 0.5)
        mask = (opacity >= thr) & finite
        n, fallback = int(mask.sum()), True
    if n < 6:
        raise NoPoSplatPoseError(f"only {n} of {H * W} predicted 3D points of photo B are usable, too few to find "
                                 f"camera B; the network does not recognise this pair (check that the weights are a "
                                 f"real NoPoSplat release and that both photos show the same scene), or use another "
                                 f"prior method")
    obj = points[mask].detach().double().cpu().numpy()
    img = pix[mask].numpy()
    cv2.setRNGSeed(int(seed))
    ok, rvec, tvec, inl = cv2.solvePnPRansac(obj, img, K_pix.detach().double().cpu().numpy(), None,
                                             iterationsCount=int(iterations), reprojectionError=float(reproj_px),
                                             flags=cv2.SOLVEPNP_SQPNP)
    if not ok or inl is None or len(inl) < 6:
        raise NoPoSplatPoseError(f"PnP found no camera for photo B consistent with its {n} confident Gaussians "
                                 f"({0 if inl is None else len(inl)} inliers within {reproj_px} px); the prediction "
                                 f"is unreliable for this pair, use another prior method")
    R = cv2.Rodrigues(rvec)[0]
    w2c = np.eye(4)
    w2c[:3, :3], w2c[:3, 3] = R, tvec.reshape(3)
    return torch.from_numpy(np.linalg.inv(w2c)), {"pnp_points": n, "pnp_inliers": int(len(inl)),
                                                "pnp_low_opacity_fallback": fallback}


def _se3_exp(xi: torch.Tensor) -> torch.Tensor:
    """xi ``[6]`` = (translation rho, rotation omega) -> ``[4, 4]`` (SE(3) exponential, differentiable)."""
    rho, w = xi[:3], xi[3:]
    th2 = (w * w).sum()
    th = torch.sqrt(th2 + 1e-24)
    O = torch.zeros(3, 3, dtype=xi.dtype, device=xi.device)
    O = O + torch.stack((torch.stack((0 * w[0], -w[2], w[1])), torch.stack((w[2], 0 * w[0], -w[0])),
                         torch.stack((-w[1], w[0], 0 * w[0]))))
    small = th2 < 1e-10
    a = torch.where(small, 1 - th2 / 6, torch.sin(th) / th)
    b = torch.where(small, 0.5 - th2 / 24, (1 - torch.cos(th)) / (th2 + 1e-24))
    c = torch.where(small, 1.0 / 6 - th2 / 120, (th - torch.sin(th)) / (th2 * th + 1e-36))
    I = torch.eye(3, dtype=xi.dtype, device=xi.device)
    R = I + a * O + b * (O @ O)
    V = I + b * O + c * (O @ O)
    top = torch.cat((R, (V @ rho)[:, None]), dim=1)
    return torch.cat((top, torch.tensor([[0.0, 0, 0, 1]], dtype=xi.dtype, device=xi.device)), dim=0)


def refine_pose(scene: GaussianScene, c2w: torch.Tensor, K_pix: torch.Tensor, target: torch.Tensor, steps: int = 200,
                lr: float = 0.005, progress: Progress | None = None) -> tuple[torch.Tensor, list]:
    """Photometric refinement of one camera (the release's test-time pose alignment, without LPIPS).

    scene: Gaussians in the world frame; c2w ``[4, 4]`` start pose; K_pix ``[3, 3]`` for ``target [S, S, 3]``.
    Each step renders the scene at the camera, takes MSE + (1 - SSIM) against ``target``, and applies an Adam step
    to a left se(3) update of the world-to-camera (then folded into the pose and reset, as the release does).
    Returns (c2w ``[4, 4]`` float64, losses per step); stops early, keeping the pose, when no Gaussian is in view
    (the render does not depend on the pose). progress: :class:`~vscene_engine.core.runtime.Progress`
    (``update(step, steps, stage="refine pose", loss=)``, ``check_interrupt()`` before each step).
    """
    progress = as_progress(progress)
    from ...render.losses import ssim
    from ...render.rasterize import render

    # ComfyUI runs nodes under torch.inference_mode(): leave it and work on ordinary copies of the inputs
    with torch.inference_mode(False), torch.enable_grad():
        S_h, S_w = target.shape[:2]
        dev = scene.means.device
        sc = scene.detach().to(dtype=torch.float32).clone()
        tgt = target.detach().to(device=dev, dtype=torch.float32).clone()
        w2c = torch.linalg.inv(c2w.detach().double().clone()).to(dev)
        xi = torch.zeros(6, dtype=torch.float64, device=dev, requires_grad=True)
        opt = torch.optim.Adam([xi], lr=float(lr))
        K32 = K_pix.detach().to(device=dev, dtype=torch.float32).clone()
        losses = []
        for step in range(int(steps)):
            progress.check_interrupt()
            opt.zero_grad()
            pose = torch.linalg.inv(_se3_exp(xi) @ w2c).float()
            cam = Cameras(pose[None], K32[None], S_w, S_h, 0.01, 1e4)
            out = render(sc, cam, backend="torch").rgb[0]
            loss = F.mse_loss(out, tgt) + (1 - ssim(out[None], tgt[None]))
            if not loss.requires_grad:      # no Gaussian in view: nothing to align, keep the pose
                break
            loss.backward()
            opt.step()
            with torch.no_grad():
                w2c = _se3_exp(xi.detach()) @ w2c
                xi.zero_()
            losses.append(float(loss.detach()))
            progress.update(step + 1, int(steps), stage="refine pose", loss=losses[-1])
    return torch.linalg.inv(w2c.detach()).cpu(), losses


def _as_photo(img, name):
    from ...views.pair import prepare_image
    return prepare_image(img, name)


def noposplat_prior(net: NoPoSplatNet, img_a: torch.Tensor, img_b: torch.Tensor, K=None, *,
                    refine_steps: int = 0, refine_lr: float = 0.005, refine_a: bool = True,
                    opacity_threshold: float = 0.3, progress: Progress | None = None) -> NoPoSplatPrior:
    """Run NoPoSplat on two unposed photos (module docstring for the conventions).

    net: a :class:`NoPoSplatNet` (e.g. from :func:`vscene_engine.prior.noposplat.load_noposplat`); its device and dtype
    are used. img_a, img_b: ``[H, W, C]`` or ``[1, H, W, C]`` float 0..1 (C = 1, 3 or 4; sizes may differ).
    K: None (fx = fy = 0.8 normalised on the square crops), a ``[3, 3]`` pixel K shared by both photos (same size
    only), ``[2, 3, 3]`` one per photo, or a :class:`Cameras` with 2 cameras of the photos (its K is used, its poses
    are not). refine_steps: photometric refinement steps (0 = PnP only; the release uses 200) of camera B and, with
    ``refine_a`` (default, as VideoScene's demo), of camera A too, after which the world is re-expressed in the
    refined camera A's frame (A stays the identity). progress: :class:`~vscene_engine.core.runtime.Progress` (interrupt
    checks; the refinement's steps).
    Returns :class:`NoPoSplatPrior`; raises ValueError (bad input) or :class:`NoPoSplatPoseError`.
    """
    t0 = time.perf_counter()
    if not isinstance(net, NoPoSplatNet):
        raise ValueError(f"net must be a NoPoSplatNet (load it with load_noposplat), got {type(net).__name__}")
    photos = [_as_photo(img_a, "image A"), _as_photo(img_b, "image B")]
    S = int(net.cfg.image_size)
    crops, boxes = zip(*(square_crop(p, S) for p in photos))
    if K is None:
        Kn = torch.tensor([[DEFAULT_FOCAL, 0, 0.5], [0, DEFAULT_FOCAL, 0.5], [0, 0, 1]], dtype=torch.float64)
        Kn = Kn[None].repeat(2, 1, 1)
        k_source = f"default fx = fy = {DEFAULT_FOCAL} (normalised)"
    else:
        if isinstance(K, Cameras):
            if len(K) != 2:
                raise ValueError(f"K: expected the 2 cameras of the photos, got {len(K)}")
            if any((K.width, K.height) != (p.shape[1], p.shape[0]) for p in photos):
                raise ValueError(f"K: the cameras are for {K.width}x{K.height} images but the photos are "
                                 f"{photos[0].shape[1]}x{photos[0].shape[0]} and {photos[1].shape[1]}x"
                                 f"{photos[1].shape[0]}")
            Kp = K.K
        else:
            Kp = torch.as_tensor(K, dtype=torch.float64)
            if Kp.shape == (3, 3):
                if photos[0].shape != photos[1].shape:
                    raise ValueError("K: one [3,3] K is only valid for two photos of the same size; give [2,3,3]")
                Kp = Kp[None].repeat(2, 1, 1)
        if tuple(Kp.shape) != (2, 3, 3) or not torch.isfinite(Kp).all() or not (Kp[:, 0, 0] > 0).all() \
                or not (Kp[:, 1, 1] > 0).all():
            raise ValueError(f"K must be None, [3,3], [2,3,3] pixel intrinsics with positive focal lengths, or "
                             f"Cameras; got {tuple(Kp.shape)}")
        Kn = torch.stack([_normalised_K(Kp[i].cpu(), boxes[i]) for i in range(2)])
        k_source = "given"
    p = next(net.parameters())
    x = torch.stack(crops)[None].to(device=p.device, dtype=p.dtype)
    as_progress(progress).check_interrupt()
    with torch.no_grad():
        out = net(x, Kn[None].to(device=p.device, dtype=p.dtype))
    out = {k: v.float() for k, v in out.items()}
    points = out["points"][0].cpu()                                   # [2, S, S, 3] camera A frame
    opac = out["opacity_map"][0].cpu()                                # [2, S, S]
    Kpix = Kn.clone()
    Kpix[:, :2] *= S
    c2w_b, pinfo = pnp_pose(points[1], opac[1], Kpix[1], opacity_threshold)
    scene = to_gaussian_scene(out, 0).to(device="cpu")
    losses, losses_a = [], []
    if refine_steps and int(refine_steps) > 0:
        target = torch.stack(crops).permute(0, 2, 3, 1)
        c2w_b, losses = refine_pose(scene, c2w_b, Kpix[1], target[1], int(refine_steps), refine_lr, progress)
        if refine_a:
            # as VideoScene's demo: camera A is aligned to photo A as well; the world is then re-expressed in the
            # refined camera A's frame, so A stays the identity
            c2w_a, losses_a = refine_pose(scene, torch.eye(4, dtype=torch.float64), Kpix[0], target[0],
                                          int(refine_steps), refine_lr, progress)
            to_a = torch.linalg.inv(c2w_a)
            scene = scene.transformed(R=to_a[:3, :3].float(), t=to_a[:3, 3].float())
            points = points @ to_a[:3, :3].float().T + to_a[:3, 3].float()
            c2w_b = to_a @ c2w_b
    base = float(c2w_b[:3, 3].norm())
    extent = float(points[0].reshape(-1, 3)[:, 2].abs().median())
    if not math.isfinite(base) or base <= 1e-6 * max(extent, 1e-12):
        raise NoPoSplatPoseError(f"camera B came out at camera A's position (baseline {base:.3g} against a median "
                                 f"depth of {extent:.3g}): the pair has no usable parallax for NoPoSplat; use photos "
                                 f"taken from different positions or another prior method")
    s = 1.0 / base
    scene = scene.transformed(s=s)
    c2w = torch.eye(4, dtype=torch.float64).repeat(2, 1, 1)
    c2w[1] = c2w_b
    c2w[:, :3, 3] *= s
    # per-view depth in each view's own camera, and a depth range from the confident Gaussians
    depth = torch.empty(2, S, S)
    zs = []
    for v in range(2):
        w2c = torch.linalg.inv(c2w[v]).float()
        pv = points[v] * s
        z = pv @ w2c[:3, :3].T[:, 2] + w2c[2, 3]
        depth[v] = z
        keep = (opac[v] > opacity_threshold) & (z > 0)
        zs.append(z[keep] if bool(keep.any()) else z[z > 0])
    zall = torch.cat(zs)
    if zall.numel() == 0:
        raise NoPoSplatPoseError("no predicted Gaussian lies in front of the cameras; the prediction is unusable for "
                                 "this pair, use another prior method")
    near = max(float(torch.quantile(zall, 0.01)) * 0.5, 1e-3)
    far = max(float(torch.quantile(zall, 0.99)) * 2.0, near * 10)
    cams = Cameras(c2w.float(), Kpix.float(), S, S, near, far, ["view_a", "view_b"])
    input_cams = []
    for v, (ph, box) in enumerate(zip(photos, boxes)):
        input_cams.append(Cameras(c2w[v:v + 1].float(), _photo_K(Kn[v], box)[None].float(), ph.shape[1],
                                  ph.shape[0], near, far, [("view_a", "view_b")[v]]))
    info = {"method": "noposplat", "image_size": S, "crop_boxes": [list(b) for b in boxes], "intrinsics": k_source,
            "focal_normalised": [float(Kn[0, 0, 0]), float(Kn[1, 0, 0])], **pinfo,
            "refine_steps": int(refine_steps or 0), "refine_loss": [losses[0], losses[-1]] if losses else None,
            "refine_loss_a": [losses_a[0], losses_a[-1]] if losses_a else None,
            "refine_steps_done": [len(losses), len(losses_a)],
            "baseline_network_units": base, "near": near, "far": far, "n_gaussians": [S * S, S * S],
            "sh_degree": net.cfg.sh_degree, "time_s": time.perf_counter() - t0}
    return NoPoSplatPrior(scene, cams, input_cams, depth, opac, torch.stack(crops).permute(0, 2, 3, 1), info)
