"""Relative pose of two photos (the "two-photo" pipeline, step 1), with known or unknown intrinsics. Entry point:
:func:`estimate_relative_pose`. Focal priors: :func:`focal_from_fov`, :func:`exif_focal_35mm`, :func:`fov_from_35mm`.

Conventions (binding, see DESIGN.md):

* Cameras are OpenCV camera-to-world (+x right, +y down, +z forward). ``K`` is in pixels for the image it belongs to;
  image coordinates are continuous with the top-left image *corner* at ``(0, 0)`` and the centre of pixel
  (column ``i``, row ``j``) at ``(i + 0.5, j + 0.5)``. OpenCV keypoints put pixel centres at integer coordinates, so
  every keypoint is shifted by ``+0.5`` (and rescaled from the detection size to the input size as
  ``u = (u_cv + 0.5) / s``) before it meets ``K``.
* Images are float tensors ``[H,W,3]`` (or ``[H,W]`` / ``[H,W,1]`` / ``[H,W,4]``, or a ComfyUI batch of one
  ``[1,H,W,C]``) with values in ``0..1``.
* The result lives in the frame of camera A: camera A has the identity camera-to-world, camera B sits at distance 1
  (the baseline is normalised to 1; two photos cannot tell the absolute scale).

Algorithm:

1. Greyscale ``uint8``, resized for detection so that the longer side is ``max_side`` (area filter when shrinking;
   small images are enlarged bilinearly, at most ``max_upscale`` = 2x: on 504x378 LLFF photos this doubles the
   essential-matrix inliers and fixes the pairs that otherwise fail). Keypoints are mapped back to the input pixel
   grid (pixel-centre consistent, per-axis scale).
2. SIFT (``cv2.SIFT``, up to ``max_features`` per image, contrast threshold 0.02 instead of OpenCV's 0.04), exact
   brute-force L2 matching (torch matmuls, deterministic; FLANN is approximate and randomised) with Lowe's ratio test
   *and* a mutual-nearest-neighbour check.
3. Intrinsics. Given ``K_a``/``K_b`` are used as they are (``focal_source = "user"``), never re-estimated. Without
   them (square pixels, principal point at the image centre) the focal length is **self-calibrated** with PoseLib's
   shared-focal relative pose (``poselib.estimate_shared_focal_relative_pose``: the 6-point minimal solver of
   Stewenius et al. in LO-RANSAC, then joint non-linear refinement of focal and pose on the epipolar error;
   ``n_trials`` seeds, the best model score wins; PoseLib 2.0 has no radial term for it). Two views determine a
   shared focal only in general position (Sturm 1997; Bougnoux 1998), so the estimate is trusted only when every
   check of :func:`_selfcal_checks` passes: >= 100 inliers, a relative rotation >= 5 deg (axes nearly parallel:
   undetermined), optical axes that do not meet (coplanarity sine >= 0.03; fixating cameras orbiting an object
   are the textbook degenerate case), Bougnoux's closed-form focal on an independently estimated fundamental matrix
   within 25%, a focal stable over the RANSAC seeds (5%) and under the matches' noise (covariance, 5%), fewer than
   80% of the inliers explained by one homography (plane / pure rotation), a field of view in 10..140 deg and a
   combined conditioning score >= 0.2. Otherwise the prior is used: the EXIF 35 mm-equivalent focal when the
   caller read one (``focal_source = "exif"``; preferred even over a well-conditioned self-calibration, which then
   only cross-checks it), else the default 60 deg horizontal field of view (``"default-fov"``, with a warning).
   ``report`` says which source was used, a confidence and the reason. Measured with ``benchmarks/bench_pose.py``
   (intrinsics withheld): on LLFF fern (13 pairs 4-19 frames apart) self-calibration without the guard is off by
   6.0% median, 60% worst (4 pairs > 10%); the guard trusts 4 pairs (errors -4.8 .. +12.1%) and gives the other 9
   the 60 deg guess (+7.1%); rotation error median / max 0.20 / 1.78 deg (0.44 / 1.78 with the 60 deg guess on all
   pairs). On NeRF-synthetic lego (fixating orbit, 12 pairs rotated 10-40 deg) unguarded self-calibration is 74%
   off median (up to 300%); the guard rejects all of them (fixating cameras) and warns.
4. Keypoints -> normalised camera coordinates with each image's own ``K`` (so the two photos may have different
   intrinsics and sizes); essential matrix with ``cv2.findEssentialMat`` and ``cv2.UsacParams`` set up as
   ``method=cv2.USAC_MAGSAC`` (MAGSAC++ scoring, sigma-consensus local optimisation and polishing) on those
   coordinates with the pixel threshold divided by the mean focal length. The random state is
   ``UsacParams.randomGeneratorState`` (derived from ``seed``): the ``method=cv2.USAC_MAGSAC`` shortcut ignores
   ``cv2.setRNGSeed`` (it always starts from state 0; on the fern pairs checked it gives the same result as these
   params with state 0), so ``cv2.setRNGSeed`` would not make different seeds resample. Nothing touches OpenCV's
   global RNG. The result is deterministic for a seed. Steps 4-6 run
   ``n_trials`` times with different random states; the refined hypothesis with the lowest MSAC score over all matches
   is kept (guards against the occasional worse local solution of a single run).
5. ``cv2.recoverPose`` picks the one of the four (R, t) decompositions that puts the points in front of both cameras
   (cheirality). OpenCV's ``(R, t)`` maps camera-A coordinates to camera-B coordinates, ``x_b = R x_a + t``, i.e. it
   is B's world-to-camera with A as the world; B's camera-to-world is therefore ``[R^T | -R^T t]``.
6. Refinement: ``scipy.optimize.least_squares`` on the Sampson error in pixels (of the fundamental matrix
   ``K_b^-T [t]x R K_a^-1``) over the MAGSAC inliers, soft-L1 loss at ``ransac_px``, rotation as an axis-angle update
   and translation on the unit sphere (two tangent coordinates). Then twice: the inliers are re-selected among all
   matches (``|Sampson| < ransac_px`` under the refined pose) and refined again. Each refinement is kept only if it
   lowers the RMS Sampson error of its inlier set. On LLFF fern (31 pairs 4-6 frames apart, one MAGSAC run) this
   took the median / worst rotation error from 0.61 / 1.51 deg (MAGSAC + recoverPose alone) to 0.19 / 0.82 deg and
   the translation-direction error from 1.3 / 7.1 deg to 0.5 / 3.5 deg; the best-of-4 runs bring the worst
   translation-direction error to ~2.9 deg for every seed tried (0-4).
7. Degeneracy checks (see :class:`DegeneratePairError`), triangulation of the inliers (DLT), and a sparse point
   cloud from the points in front of both cameras with low reprojection error and a non-vanishing triangulation
   angle; ``near = 0.8 x`` the 2nd percentile and ``far = 1.25 x`` the 98th percentile of their depths in both
   cameras. Point colours are sampled (bilinear) from image A.

Refusals (:class:`DegeneratePairError`) about the pair end with :data:`BETTER_METHODS_HINT`, which names the
learned alternatives for hard pairs: Depth Anything 3 cameras (LoadViewPair ``cameras_from = da3``) and the
NoPoSplat prior (CoarseSplatPrior ``method = noposplat``).

Why OpenCV and not kornia: OpenCV's C++ SIFT, USAC MAGSAC++ and ``recoverPose`` are the robust, fast and weight-free
standard for this job, and ComfyUI installs often ship ``cv2`` already (many node packs depend on it). kornia's
pure-torch equivalents (``SIFTFeature``, ``find_essential``/``RANSAC``) are slower on CPU (detection and description
in Python-level torch ops) and have no MAGSAC; the learned matchers (LoFTR, LightGlue ...) need weights downloads.
``cv2`` is imported lazily, so the rest of the engine works without it.

Images of different sizes: every pixel quantity of image B (keypoints, ``K_b``) is in B's own pixels. The returned
:class:`~vscene_engine.core.cameras.Cameras` share one image size (that is the type's contract), which is **image A's**
size: camera 1's ``K`` is ``K_b`` scaled per axis to A's size, i.e. it describes image B *resized to A's size*.
``est.cameras[1].resized(W_b, H_b)`` gives back exactly ``K_b`` for B at its own size (``report["size_b"]``).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor

from ..core.cameras import Cameras

__all__ = ["estimate_relative_pose", "PoseEstimate", "DegeneratePairError", "focal_from_fov", "fov_from_35mm",
           "exif_focal_35mm", "DEFAULT_FOV_DEG", "BETTER_METHODS_HINT"]

MIN_SIDE = 64  # smallest accepted image side in pixels


class DegeneratePairError(ValueError):
    """The two images do not determine a relative pose (identical, pure rotation / too little parallax, no overlap,
    too small or invalid). The message says what was measured and what to do about it."""


@dataclass(eq=False)
class PoseEstimate:
    """Result of :func:`estimate_relative_pose`.

    Fields:
        cameras:  :class:`Cameras` with 2 cameras (A, B), float32, size = image A's size. Camera A is the identity
                  c2w; camera B has its centre at distance 1 from A. ``near``/``far`` are set on both cameras.
                  Camera B's ``K`` is scaled to A's size when the images differ in size (see the module docstring).
        points3d: ``[P,3]`` float32 triangulated inlier points in camera A's frame (= the world frame).
        colors:   ``[P,3]`` float32 RGB in 0..1 sampled from image A at the keypoints.
        near, far: depth bounds (floats) covering the points in both cameras.
        report:   diagnostics, see :func:`estimate_relative_pose`.
    """

    cameras: Cameras
    points3d: Tensor
    colors: Tensor
    near: float
    far: float
    report: dict = field(default_factory=dict)

    @property
    def R(self) -> Tensor:
        """``[3,3]`` float64 rotation taking camera-A coordinates to camera-B coordinates (OpenCV ``R``)."""
        return self.cameras.w2c[1, :3, :3].double()

    @property
    def t(self) -> Tensor:
        """``[3]`` float64 unit translation of ``x_b = R x_a + t`` (OpenCV ``t``)."""
        return self.cameras.w2c[1, :3, 3].double()


# ---------------------------------------------------------------------------------------------------------- helpers
def focal_from_fov(width: int, height: int, fov_deg: float, axis: str = "horizontal") -> float:
    """Focal length in pixels for an image of ``width x height`` whose field of view along ``axis`` is ``fov_deg``.

    ``axis``: ``"horizontal"`` (spans ``width``), ``"vertical"`` (``height``) or ``"diagonal"`` (``hypot(w, h)``;
    e.g. a 35 mm-equivalent focal ``f35`` gives ``fov_diag = 2 atan(43.27 / (2 f35))``). Use it when the intrinsics are
    unknown: ``K = [[f, 0, W/2], [0, f, H/2], [0, 0, 1]]`` (square pixels, centred principal point).
    """
    width, height, fov = float(width), float(height), float(fov_deg)
    if not (width > 0 and height > 0):
        raise ValueError(f"focal_from_fov: image size must be positive, got {width:g}x{height:g}")
    if not (0.0 < fov < 180.0) or not math.isfinite(fov):
        raise ValueError(f"focal_from_fov: fov_deg must be in (0, 180) degrees, got {fov_deg!r}")
    sizes = {"horizontal": width, "vertical": height, "diagonal": math.hypot(width, height)}
    if axis not in sizes:
        raise ValueError(f"focal_from_fov: axis must be 'horizontal', 'vertical' or 'diagonal', got {axis!r}")
    return sizes[axis] / (2.0 * math.tan(math.radians(fov) / 2.0))


def _import_cv2():
    try:
        import cv2  # noqa: F401
    except ImportError as e:  # pragma: no cover - depends on the install
        raise ImportError(
            "estimate_relative_pose needs OpenCV: pip install opencv-python-headless (or opencv-python)"
        ) from e
    if not hasattr(cv2, "SIFT_create") or not hasattr(cv2, "USAC_MAGSAC"):  # pragma: no cover
        raise ImportError(f"estimate_relative_pose needs OpenCV >= 4.5 with SIFT and USAC (found {cv2.__version__})")
    return cv2


def _as_image(img, name: str) -> np.ndarray:
    """-> float32 numpy [H,W,C] (C = 1 or 3), validated."""
    t = img if isinstance(img, Tensor) else torch.as_tensor(np.asarray(img))
    t = t.detach().to("cpu")
    if t.ndim == 4 and t.shape[0] == 1:
        t = t[0]
    if t.ndim == 2:
        t = t[..., None]
    if t.ndim != 3 or t.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"{name}: expected an image [H,W,3] (or [H,W] / [H,W,1] / [H,W,4] / [1,H,W,C]) with values 0..1, "
            f"got shape {tuple(t.shape)}"
        )
    if t.shape[-1] == 4:
        t = t[..., :3]
    t = t.float() if t.is_floating_point() else t.float() / (255.0 if t.dtype == torch.uint8 else 1.0)
    H, W = t.shape[:2]
    if min(H, W) < MIN_SIDE:
        raise DegeneratePairError(
            f"{name} is {W}x{H} pixels; pose estimation needs at least {MIN_SIDE} px on each side (a few hundred to "
            f"~1000 px works best). Use the original, larger photo."
        )
    if not bool(torch.isfinite(t).all()):
        raise DegeneratePairError(f"{name} contains NaN or inf values; fix the upstream image (e.g. a failed decode "
                                  f"or a division by zero) before estimating the pose.")
    return t.numpy()


def _as_K(K, name: str) -> np.ndarray:
    k = K.detach().cpu().double().numpy() if isinstance(K, Tensor) else np.asarray(K, dtype=np.float64)
    if k.shape == (1, 3, 3):
        k = k[0]
    if k.shape != (3, 3) or not np.isfinite(k).all():
        raise ValueError(f"{name} must be a finite 3x3 intrinsics matrix in pixels, got shape {k.shape}")
    if k[0, 0] <= 0 or k[1, 1] <= 0 or abs(k[2, 2] - 1) > 1e-6 or np.abs(k[2, :2]).max() > 1e-9 or k[1, 0] != 0:
        raise ValueError(f"{name} must be [[fx,s,cx],[0,fy,cy],[0,0,1]] with fx, fy > 0, got {k.tolist()}")
    return k


def _gray_u8(img: np.ndarray) -> np.ndarray:
    if img.shape[-1] == 3:
        g = img @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    else:
        g = img[..., 0]
    return np.clip(np.rint(g * 255.0), 0, 255).astype(np.uint8)


def _detect(cv2, gray: np.ndarray, max_side: int, max_upscale: float, max_features: int, contrast: float):
    """SIFT keypoints (engine pixel coordinates of the input image, [N,2] float64) and descriptors [N,128].

    Detection runs on the image resized so that its longer side is ``max_side`` (area filter when shrinking, bilinear
    when enlarging, at most ``max_upscale`` times); the keypoints are mapped back per axis with the pixel-centre
    convention ``u = (u_cv + 0.5) / s``."""
    H, W = gray.shape
    s = 1.0
    if max_side and max_side > 0:
        s = min(float(max_side) / max(H, W), max(1.0, float(max_upscale)))
    sx = sy = 1.0
    if abs(s - 1.0) > 1e-6:
        w, h = max(1, round(W * s)), max(1, round(H * s))
        gray = cv2.resize(gray, (w, h), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
        sx, sy = w / W, h / H
    sift = cv2.SIFT_create(nfeatures=int(max_features), contrastThreshold=float(contrast))
    kps, desc = sift.detectAndCompute(gray, None)
    if not kps or desc is None:
        return np.zeros((0, 2)), np.zeros((0, 128), np.float32)
    uv = np.array([kp.pt for kp in kps], dtype=np.float64) + 0.5  # OpenCV pixel centres are integers
    uv[:, 0] /= sx
    uv[:, 1] /= sy
    return uv, desc.astype(np.float32)


def _match(da: np.ndarray, db: np.ndarray, ratio: float, chunk: int = 2048) -> np.ndarray:
    """[M,2] index pairs (a, b): exact L2 nearest neighbours with Lowe's ratio test (a -> b) and a mutual check
    (b's nearest neighbour in A is a). Brute force with torch matmuls in row chunks: exact, deterministic and ~3x
    faster on CPU than ``cv2.BFMatcher.knnMatch`` + Python loops."""
    if len(da) < 2 or len(db) < 2:
        return np.zeros((0, 2), np.int64)
    a, b = torch.from_numpy(np.ascontiguousarray(da)), torch.from_numpy(np.ascontiguousarray(db))
    a2, b2 = (a * a).sum(1), (b * b).sum(1)
    top = torch.empty(len(a), 2)
    nn_ab = torch.empty(len(a), dtype=torch.long)
    col_min = torch.full((len(b),), float("inf"))
    nn_ba = torch.zeros(len(b), dtype=torch.long)
    for s0 in range(0, len(a), chunk):
        d2 = (a2[s0:s0 + chunk, None] + b2[None] - 2.0 * (a[s0:s0 + chunk] @ b.T)).clamp_min(0)
        v, i = d2.topk(2, dim=1, largest=False)
        top[s0:s0 + chunk], nn_ab[s0:s0 + chunk] = v, i[:, 0]
        cmin, carg = d2.min(0)
        upd = cmin < col_min
        col_min[upd], nn_ba[upd] = cmin[upd], carg[upd] + s0
    dist = top.sqrt()
    ok = (dist[:, 0] < ratio * dist[:, 1]) & (nn_ba[nn_ab] == torch.arange(len(a)))
    ia = torch.nonzero(ok)[:, 0]
    return np.stack([ia.numpy(), nn_ab[ia].numpy()], 1).astype(np.int64).reshape(-1, 2)


def _usac_params(cv2, threshold: float, max_iters: int, seed: int):
    """``cv2.UsacParams`` equivalent to ``method=cv2.USAC_MAGSAC`` but with an explicit random state."""
    p = cv2.UsacParams()
    p.confidence = 0.9999
    p.maxIterations = int(max_iters)
    p.threshold = float(threshold)
    p.score = cv2.SCORE_METHOD_MAGSAC
    p.sampler = cv2.SAMPLING_UNIFORM
    p.loMethod = cv2.LOCAL_OPTIM_SIGMA
    p.final_polisher = cv2.MAGSAC
    p.randomGeneratorState = int(seed) & 0x7FFFFFFF
    return p


def _normalize(uv: np.ndarray, K: np.ndarray) -> np.ndarray:
    h = np.concatenate([uv, np.ones((len(uv), 1))], 1)
    return (np.linalg.solve(K, h.T).T)[:, :2]


def _skew(v: np.ndarray) -> np.ndarray:
    return np.array([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]])


def _rodrigues(w: np.ndarray) -> np.ndarray:
    th = float(np.linalg.norm(w))
    if th < 1e-12:
        return np.eye(3) + _skew(w)
    k = _skew(w / th)
    return np.eye(3) + math.sin(th) * k + (1 - math.cos(th)) * (k @ k)


def _sampson_px(R, t, ua, ub, Ka, Kb) -> np.ndarray:
    """Signed Sampson distance in pixels of correspondences ua (A pixels) <-> ub (B pixels)."""
    F = np.linalg.inv(Kb).T @ _skew(t) @ R @ np.linalg.inv(Ka)
    xa = np.concatenate([ua, np.ones((len(ua), 1))], 1)
    xb = np.concatenate([ub, np.ones((len(ub), 1))], 1)
    Fxa = xa @ F.T
    Ftxb = xb @ F
    num = np.sum(xb * Fxa, 1)
    den = np.sqrt(Fxa[:, 0] ** 2 + Fxa[:, 1] ** 2 + Ftxb[:, 0] ** 2 + Ftxb[:, 1] ** 2) + 1e-300
    return num / den


def _refine(R0, t0, ua, ub, Ka, Kb, ransac_px):
    """Nonlinear refinement of (R, t) on the Sampson error; returns (R, t, rms_before, rms_after, used)."""
    from scipy.optimize import least_squares

    t0 = t0 / np.linalg.norm(t0)
    # tangent basis of the unit sphere at t0
    a = np.eye(3)[int(np.argmin(np.abs(t0)))]
    e1 = np.cross(t0, a)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(t0, e1)

    def unpack(p):
        R = _rodrigues(p[:3]) @ R0
        t = t0 + p[3] * e1 + p[4] * e2
        return R, t / np.linalg.norm(t)

    def fun(p):
        return _sampson_px(*unpack(p), ua, ub, Ka, Kb)

    rms0 = float(np.sqrt(np.mean(fun(np.zeros(5)) ** 2)))
    try:
        sol = least_squares(fun, np.zeros(5), loss="soft_l1", f_scale=max(float(ransac_px), 1e-3), method="trf",
                            x_scale=1e-3, max_nfev=100)
    except Exception:  # pragma: no cover - numerical trouble: keep the MAGSAC pose
        return R0, t0, rms0, rms0, False
    R1, t1 = unpack(sol.x)
    rms1 = float(np.sqrt(np.mean(fun(sol.x) ** 2)))
    if np.isfinite(rms1) and rms1 < rms0:
        return R1, t1, rms0, rms1, True
    return R0, t0, rms0, rms0, False


def _hypothesis(cv2, ua, ub, na, nb, Ka, Kb, ransac_px, f_mean, min_inliers, state):
    """One MAGSAC++ run + cheirality + refinement. Returns a dict (R, t, inl, n_magsac, rms0, rms, refined, msac) or,
    when there are too few inliers, the inlier count (int)."""
    I3, no_dist = np.eye(3), np.zeros(5)
    E, mask = cv2.findEssentialMat(na, nb, I3, I3, no_dist, no_dist,
                                   _usac_params(cv2, ransac_px / f_mean, 10000, state))
    if E is not None and E.ndim == 2 and E.shape[0] > 3 and E.shape[1] == 3:
        E = E[:3]  # several stacked solutions: the first is the best one
    n_e = 0 if mask is None or E is None else int(mask.sum())
    if E is None or E.shape != (3, 3) or n_e < min_inliers:
        return n_e
    inl = mask.ravel().astype(bool)
    # 4. cheirality: the decomposition of E with the points in front of both cameras
    _, R, t, _ = cv2.recoverPose(E, na[inl], nb[inl], I3)
    R, t = R.astype(np.float64), t.reshape(3).astype(np.float64)
    t = t / np.linalg.norm(t)
    # 5. refine on the MAGSAC inliers, then twice: re-select the inliers among all matches (|Sampson| < ransac_px
    #    under the refined pose) and refine again; each refinement is kept only if it lowers the RMS Sampson error.
    R, t, rms0, _, used = _refine(R, t, ua[inl], ub[inl], Ka, Kb, ransac_px)
    for _ in range(2):
        new_inl = np.abs(_sampson_px(R, t, ua, ub, Ka, Kb)) < ransac_px
        if int(new_inl.sum()) < min_inliers:
            break
        inl = new_inl
        R, t, _, _, u = _refine(R, t, ua[inl], ub[inl], Ka, Kb, ransac_px)
        used = used or u
    e = _sampson_px(R, t, ua, ub, Ka, Kb)
    return dict(R=R, t=t, inl=inl, n_magsac=n_e, rms0=rms0, rms=float(np.sqrt(np.mean(e[inl] ** 2))),
                refined=bool(used), msac=float(np.minimum(e * e, ransac_px ** 2).sum()))


def _triangulate(cv2, na, nb, R, t):
    """DLT triangulation from normalised coordinates; returns X in A's frame [N,3]."""
    P1 = np.hstack([np.eye(3), np.zeros((3, 1))])
    P2 = np.hstack([R, t.reshape(3, 1)])
    Xh = cv2.triangulatePoints(P1, P2, na.T.astype(np.float64), nb.T.astype(np.float64))
    w = Xh[3]
    w = np.where(np.abs(w) < 1e-12, np.copysign(1e-12, w), w)
    return (Xh[:3] / w).T


def _project(X, K):
    x = X @ K.T
    return x[:, :2] / x[:, 2:3], X[:, 2]


def _bilinear(img: np.ndarray, uv: np.ndarray) -> np.ndarray:
    """Sample img [H,W,C] at engine pixel coordinates uv [N,2] (pixel centres at +0.5), clamped at the border."""
    H, W, C = img.shape
    x = np.clip(uv[:, 0] - 0.5, 0, W - 1)
    y = np.clip(uv[:, 1] - 0.5, 0, H - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, W - 1), np.minimum(y0 + 1, H - 1)
    fx, fy = (x - x0)[:, None], (y - y0)[:, None]
    out = (img[y0, x0] * (1 - fx) * (1 - fy) + img[y0, x1] * fx * (1 - fy)
           + img[y1, x0] * (1 - fx) * fy + img[y1, x1] * fx * fy)
    if C == 1:
        out = np.repeat(out, 3, 1)
    return np.clip(out, 0, 1)


def _smoothstep(x, lo, hi):
    u = min(max((x - lo) / (hi - lo), 0.0), 1.0)
    return u * u * (3 - 2 * u)


# --------------------------------------------------------------------------------------------- focal length
DEFAULT_FOV_DEG = 60.0  # horizontal field of view assumed when nothing better is known (the old default)
FOCAL_SOURCES = ("user", "exif", "self-calibrated", "default-fov")
BETTER_METHODS_HINT = (
    "For pairs this hard use learned cameras instead: LoadViewPair cameras_from 'da3' (Depth Anything 3 geometry "
    "from core ComfyUI), or CoarseSplatPrior method 'noposplat' (pose-free NoPoSplat prior)."
)
_FULL_FRAME_DIAG_MM = math.hypot(36.0, 24.0)  # 43.27 mm: the diagonal a 35 mm-equivalent focal length refers to

# Thresholds of the self-calibration guard (see _selfcal_checks). Chosen on LLFF fern (~30 pairs) and NeRF-synthetic
# lego (orbit pairs 10-40 deg apart): fern pairs rotating < 5 deg had self-calibrated focal errors up to 60%, the lego
# pairs with enough inliers (fixating cameras) had an axis coplanarity below 0.01 and focal errors of 30-430%.
SELFCAL_MIN_INLIERS = 100
SELFCAL_MIN_ROTATION_DEG = 5.0
SELFCAL_MIN_AXIS_COPLANARITY = 0.03
SELFCAL_MAX_BOUGNOUX_DEV = 0.25
SELFCAL_MAX_TRIAL_SPREAD = 0.05
SELFCAL_MAX_HOMOGRAPHY_RATIO = 0.8
SELFCAL_FOV_RANGE_DEG = (10.0, 140.0)
SELFCAL_MAX_FOCAL_SIGMA = 0.05
SELFCAL_MIN_CONFIDENCE = 0.2


def fov_from_35mm(focal_35mm: float) -> float:
    """Diagonal field of view (deg) of a 35 mm-equivalent focal length (the equivalence is defined on the diagonal
    of the 36 x 24 mm frame, 43.27 mm): ``2 atan(43.27 / (2 f35))``. Use with ``axis="diagonal"``."""
    f = float(focal_35mm)
    if not (f > 0 and math.isfinite(f)):
        raise ValueError(f"35 mm-equivalent focal length must be positive, got {focal_35mm!r}")
    return math.degrees(2.0 * math.atan(_FULL_FRAME_DIAG_MM / (2.0 * f)))


def exif_focal_35mm(source) -> float | None:
    """35 mm-equivalent focal length (mm) of a photo from its EXIF, or ``None`` when the file has none.

    ``source``: a path, a binary file object or a ``PIL.Image``. Reads EXIF tag ``FocalLengthIn35mmFilm`` (41989)
    when present and non-zero; otherwise ``FocalLength`` (37386, mm) with the sensor size from
    ``FocalPlaneXResolution`` / ``FocalPlaneYResolution`` (41486 / 41487, pixels per ``FocalPlaneResolutionUnit``
    41488: 2 = inch, 3 = cm, 4 = mm) and the image size the resolution refers to (``ExifImageWidth`` /
    ``ExifImageHeight``, else the image's own size): ``f35 = f_mm * 43.27 / sensor_diagonal_mm``. Unreadable or
    implausible values (outside 5..2000 mm) give ``None``. Turn it into intrinsics with
    ``focal_from_fov(w, h, fov_from_35mm(f35), axis="diagonal")``. Note: a photo cropped after capture keeps the
    EXIF of the full frame, so its true field of view is narrower than this says.
    """
    from PIL import Image

    img = source if isinstance(source, Image.Image) else None
    try:
        if img is None:
            img = Image.open(source)
        exif = img.getexif()
        sub = exif.get_ifd(0x8769)  # Exif sub-IFD: the focal-length tags live there
    except Exception:  # unreadable / no EXIF: no prior
        return None

    def get(tag):
        v = sub.get(tag, exif.get(tag))
        try:
            return None if v is None else float(v)
        except (TypeError, ValueError, ZeroDivisionError):
            return None

    f35 = get(41989)
    if f35 is not None and 5.0 <= f35 <= 2000.0:
        return f35
    f_mm, xres, yres, unit = get(37386), get(41486), get(41487), get(41488)
    mm_per_unit = {2.0: 25.4, 3.0: 10.0, 4.0: 1.0, 5.0: 0.001}.get(unit if unit is not None else 2.0)
    w, h = get(40962) or float(img.size[0]), get(40963) or float(img.size[1])
    if not (f_mm and xres and mm_per_unit and f_mm > 0 and xres > 0):
        return None
    yres = yres if yres and yres > 0 else xres
    diag_mm = math.hypot(w / xres * mm_per_unit, h / yres * mm_per_unit)
    f35 = f_mm * _FULL_FRAME_DIAG_MM / diag_mm if diag_mm > 0 else None
    return f35 if f35 is not None and 5.0 <= f35 <= 2000.0 else None


def _K_from_focal(f: float, w: int, h: int) -> np.ndarray:
    return np.array([[f, 0.0, w / 2.0], [0.0, f, h / 2.0], [0.0, 0.0, 1.0]])


def _import_poselib():
    try:
        import poselib
    except ImportError:  # pragma: no cover - depends on the install
        return None
    return poselib if hasattr(poselib, "estimate_shared_focal_relative_pose") else None


def _self_calibrate(poselib, ua, ub, W, H, ransac_px, n_trials, seed) -> dict | None:
    """Shared-focal relative pose with PoseLib (6-point minimal solver in LO-RANSAC, then joint non-linear refinement
    of the focal and the pose), principal point at the image centre. ``ua`` / ``ub`` in one pixel grid of size
    ``W x H``. ``n_trials`` seeds (at most 10000 iterations each); the best model score wins, the spread of the
    focals is kept as a diagnostic.
    Returns ``None`` when no trial found a model."""
    pp = np.array([W / 2.0, H / 2.0])
    best, focals = None, []
    for k in range(max(1, int(n_trials))):
        ropt = {"max_epipolar_error": float(ransac_px), "seed": (int(seed) + 7919 * k) & 0x7FFFFFFF,
                "max_iterations": 10000}  # as the calibrated path: bounds the time on low inlier ratios
        try:
            pair, info = poselib.estimate_shared_focal_relative_pose(ua, ub, pp, ropt, {})
        except Exception:  # pragma: no cover - PoseLib refused the input
            continue
        f = float(pair.camera1.focal())
        if not (math.isfinite(f) and f > 0) or int(info.get("num_inliers", 0)) < 7:
            continue
        focals.append(f)
        if best is None or info["model_score"] < best[1]["model_score"]:
            best = (pair, info)
    if best is None:
        return None
    pair, info = best
    return dict(f=float(pair.camera1.focal()), R=np.asarray(pair.pose.R, dtype=np.float64),
                t=np.asarray(pair.pose.t, dtype=np.float64), inl=np.asarray(info["inliers"], dtype=bool),
                focals=focals, pp=pp)


def _focal_sigma(sc: dict, ua, ub, W, H) -> float:
    """Relative standard deviation of the self-calibrated focal from the Gauss-Newton covariance of the Sampson
    residuals (pixels) over the inliers, parameters (rotation update [3], translation on the unit sphere [2],
    log focal), residual scale from their median absolute value (robust). Random matching noise only: a lower
    bound on the real error (systematic errors are not in it)."""
    f, R0, t0, inl, pp = sc["f"], sc["R"], sc["t"], sc["inl"], sc["pp"]
    if int(inl.sum()) < 8:
        return float("inf")
    t0 = t0 / np.linalg.norm(t0)
    a = np.eye(3)[int(np.argmin(np.abs(t0)))]
    e1 = np.cross(t0, a)
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(t0, e1)
    xa, xb = ua[inl], ub[inl]

    def res(p):
        t = t0 + p[3] * e1 + p[4] * e2
        K = _K_from_focal(f * math.exp(p[5]), W, H)
        return _sampson_px(_rodrigues(p[:3]) @ R0, t / np.linalg.norm(t), xa, xb, K, K)

    r0, h = res(np.zeros(6)), 1e-6
    J = np.stack([(res(h * np.eye(6)[k]) - r0) / h for k in range(6)], 1)
    s2 = (1.4826 * float(np.median(np.abs(r0)))) ** 2
    try:
        cov = np.linalg.inv(J.T @ J) * s2
    except np.linalg.LinAlgError:
        return float("inf")
    v = float(cov[5, 5])
    return math.sqrt(v) if v >= 0 and math.isfinite(v) else float("inf")


def _selfcal_checks(poselib, sc: dict, ua, ub, W, H, ransac_px, seed) -> tuple[dict, list[str], float]:
    """Conditioning of a two-view self-calibration; returns (measurements, failed-check reasons, confidence 0..1).

    Two views fix a shared focal only when the geometry is general (Sturm 1997, Bougnoux 1998): the focal is
    undetermined when the optical axes are coplanar (they meet: fixating cameras orbiting an object; or they are
    parallel: little rotation), when a homography explains the matches (plane or pure rotation), and unreliable with
    few inliers. Measured here:

    * ``rotation_deg``: angle of the relative rotation (small = axes nearly parallel);
    * ``axis_coplanarity``: ``|b . (z_a x z_b)| / (|b| |z_a x z_b|)``, the sine of the angle between the baseline
      ``b`` and the plane of the two optical axes; 0 = the axes meet (fixation);
    * ``bougnoux_ratio``: focal from Bougnoux's closed form (``poselib.focals_from_fundamental``) on a fundamental
      matrix estimated independently (``poselib.estimate_fundamental``) divided by the self-calibrated focal; NaN
      (no real solution) or far from 1 = ill-conditioned;
    * ``trial_spread``: (max - min) / focal over the LO-RANSAC runs with different seeds;
    * ``homography_ratio``: fraction of the inliers one homography explains within ``2 ransac_px``;
    * ``focal_sigma``: relative standard deviation of the focal from the refinement's covariance
      (:func:`_focal_sigma`);
    * ``fov_deg``: the self-calibrated horizontal field of view (must be plausible).

    Every check must pass and the combined score (``confidence``) must reach ``SELFCAL_MIN_CONFIDENCE``.
    """
    f, R, t, inl, pp = sc["f"], sc["R"], sc["t"], sc["inl"], sc["pp"]
    n_inl = int(inl.sum())
    rot = math.degrees(math.acos(float(np.clip((np.trace(R) - 1.0) / 2.0, -1.0, 1.0))))
    za, zb, b = np.array([0.0, 0.0, 1.0]), R.T @ np.array([0.0, 0.0, 1.0]), -R.T @ t
    cr = np.cross(za, zb)
    ncr = float(np.linalg.norm(cr))
    cop = abs(float(b @ cr)) / (float(np.linalg.norm(b)) * ncr) if ncr > 1e-9 else 0.0
    ratio = float("nan")
    try:
        Fm, _ = poselib.estimate_fundamental(ua, ub, {"max_epipolar_error": float(ransac_px), "seed": int(seed)}, {})
        c1, c2 = poselib.focals_from_fundamental(np.asarray(Fm, dtype=np.float64), pp, pp)
        fb = math.sqrt(float(c1.focal()) * float(c2.focal()))
        ratio = fb / f if math.isfinite(fb) and fb > 0 else float("nan")
    except Exception:  # no fundamental matrix / no real focal: stays NaN (counted as ill-conditioned)
        pass
    fs = sc["focals"]
    spread = (max(fs) - min(fs)) / f if len(fs) > 1 else 0.0
    h_ratio = 0.0
    if n_inl >= 8:
        try:
            _, hinfo = poselib.estimate_homography(ua[inl], ub[inl], {"max_reproj_error": 2.0 * float(ransac_px),
                                                                      "seed": int(seed)}, {})
            h_ratio = float(hinfo["num_inliers"]) / n_inl
        except Exception:  # pragma: no cover
            pass
    fov = math.degrees(2.0 * math.atan(W / (2.0 * f)))
    sig = _focal_sigma(sc, ua, ub, W, H)
    m = dict(focal_px=f, fov_deg=fov, n_inliers=n_inl, rotation_deg=rot, axis_coplanarity=cop,
             bougnoux_ratio=ratio, trial_spread=spread, homography_ratio=h_ratio, focal_sigma=sig)
    bad = []
    if n_inl < SELFCAL_MIN_INLIERS:
        bad.append(f"only {n_inl} inliers (need >= {SELFCAL_MIN_INLIERS})")
    if rot < SELFCAL_MIN_ROTATION_DEG:
        bad.append(f"little rotation between the views ({rot:.1f} deg < {SELFCAL_MIN_ROTATION_DEG:g}): the optical "
                   f"axes are nearly parallel")
    if cop < SELFCAL_MIN_AXIS_COPLANARITY:
        bad.append(f"fixating cameras (the optical axes meet: coplanarity {cop:.3f} < "
                   f"{SELFCAL_MIN_AXIS_COPLANARITY:g}), e.g. an orbit around an object")
    if not (math.isfinite(ratio) and abs(math.log(ratio)) <= math.log1p(SELFCAL_MAX_BOUGNOUX_DEV)):
        bad.append(f"Bougnoux's closed-form focal disagrees (ratio {ratio:.2f})")
    if spread > SELFCAL_MAX_TRIAL_SPREAD:
        bad.append(f"unstable focal over RANSAC runs (spread {100 * spread:.0f}%)")
    if h_ratio >= SELFCAL_MAX_HOMOGRAPHY_RATIO:
        bad.append(f"{100 * h_ratio:.0f}% of the inliers fit one homography (planar scene or pure rotation)")
    if not (SELFCAL_FOV_RANGE_DEG[0] <= fov <= SELFCAL_FOV_RANGE_DEG[1]):
        bad.append(f"implausible field of view {fov:.0f} deg")
    if not sig <= SELFCAL_MAX_FOCAL_SIGMA:
        bad.append(f"the focal is poorly constrained (+-{100 * sig:.0f}% from the matches' noise)")
    conf = ((1.0 - math.exp(-n_inl / 150.0))
            * _smoothstep(rot, SELFCAL_MIN_ROTATION_DEG, 2.5 * SELFCAL_MIN_ROTATION_DEG)
            * _smoothstep(cop, SELFCAL_MIN_AXIS_COPLANARITY, 3.0 * SELFCAL_MIN_AXIS_COPLANARITY)
            * (1.0 - _smoothstep(abs(math.log(ratio)) if math.isfinite(ratio) else 9.0, 0.05,
                                 math.log1p(SELFCAL_MAX_BOUGNOUX_DEV)))
            * (1.0 - _smoothstep(spread, 0.01, SELFCAL_MAX_TRIAL_SPREAD))
            * (1.0 - _smoothstep(h_ratio, 0.6, SELFCAL_MAX_HOMOGRAPHY_RATIO))
            * (1.0 - _smoothstep(sig if math.isfinite(sig) else 9.0, 0.01, SELFCAL_MAX_FOCAL_SIGMA)))
    if not bad and conf < SELFCAL_MIN_CONFIDENCE:
        bad.append(f"the checks pass only marginally (conditioning score {conf:.2f} < {SELFCAL_MIN_CONFIDENCE:g})")
    m["score"] = float(conf)
    return m, bad, (0.0 if bad else float(conf))


def _choose_focal(ua, ub, size_a, size_b, prior_fov_deg, prior_fov_axis, prior_source, self_calibrate, ransac_px,
                  n_trials, seed, guard=True) -> tuple[np.ndarray, np.ndarray, dict]:
    """Intrinsics for two photos without given ``K`` (square pixels, centred principal point): the self-calibrated
    focal when it is well-conditioned, otherwise the prior. Returns ``(K_a, K_b, info)`` with ``info`` keys
    ``focal_source``, ``focal_confidence``, ``focal_reason``, ``fov_deg`` (horizontal, image A), ``self_calibration``
    (the measurements, or ``None`` when it did not run)."""
    (Wa, Ha), (Wb, Hb) = size_a, size_b
    prior_a = focal_from_fov(Wa, Ha, prior_fov_deg, prior_fov_axis)
    prior_b = focal_from_fov(Wb, Hb, prior_fov_deg, prior_fov_axis)
    same_frame = abs((Wb / Hb) / (Wa / Ha) - 1.0) <= 0.01
    info: dict = {"self_calibration": None}
    reasons: list[str] = []
    sc_conf, f_self = 0.0, None
    poselib = _import_poselib() if self_calibrate else None
    if not self_calibrate:
        reasons.append("self-calibration disabled")
    elif poselib is None:
        reasons.append("PoseLib is not installed (pip install poselib)")
    elif not same_frame:
        reasons.append(f"the photos have different aspect ratios ({Wa}x{Ha} vs {Wb}x{Hb}): not one camera framing")
    else:
        ub_a = ub * np.array([Wa / Wb, Ha / Hb])  # B's keypoints in A's pixel grid (uniform scale)
        sc = _self_calibrate(poselib, ua, ub_a, Wa, Ha, ransac_px, n_trials, seed)
        if sc is None:
            reasons.append("the shared-focal solver found no model")
        else:
            m, bad, sc_conf = _selfcal_checks(poselib, sc, ua, ub_a, Wa, Ha, ransac_px, seed)
            # NaN / inf -> None: the report goes into JSON (strict parsers, e.g. the browser's, reject NaN)
            clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in m.items()}
            info["self_calibration"] = dict(clean, trusted=not bad, failed_checks=bad)
            reasons += bad
            if not bad or not guard:
                f_self = m["focal_px"]
                sc_conf = sc_conf if not bad else 0.0
    if prior_source == "exif":
        # a reading of the lens beats a two-view estimate (on LLFF fern, well-conditioned self-calibration still
        # scatters by ~5-15%); the self-calibration stays in the report as a cross-check
        fa, fb = prior_a, prior_b
        info.update(focal_source="exif", focal_confidence=0.9,
                    focal_reason=f"EXIF 35 mm-equivalent focal ({prior_fov_deg:.1f} deg {prior_fov_axis} FOV)")
        if f_self is not None and abs(math.log(f_self / prior_a)) > math.log(1.2):
            info["focal_warning"] = (f"the well-conditioned self-calibrated focal ({f_self:.0f} px) differs from the "
                                     f"EXIF focal ({prior_a:.0f} px) by more than 20%: was the photo cropped?")
    elif f_self is not None:
        fa, fb = f_self, f_self * Wb / Wa
        info.update(focal_source="self-calibrated", focal_confidence=sc_conf,
                    focal_reason="shared-focal self-calibration is well-conditioned" if not reasons else
                    "self-calibration guard disabled; failed checks: " + "; ".join(reasons))
    else:
        fa, fb = prior_a, prior_b
        what = {"default-fov": "assumed", "user": "given"}.get(prior_source, "prior")
        info.update(focal_source=prior_source, focal_confidence=0.1 if prior_source == "default-fov" else 0.9,
                    focal_reason=f"{what} {prior_fov_deg:g} deg {prior_fov_axis} FOV; self-calibration not used: "
                                 + "; ".join(reasons))
        if prior_source == "default-fov":
            info["focal_warning"] = (f"focal length unknown and not measurable from this pair ({'; '.join(reasons)}); "
                                     f"assumed a {prior_fov_deg:g} deg {prior_fov_axis} field of view. Set the "
                                     f"field of view if you know it. " + BETTER_METHODS_HINT)
    info["fov_deg"] = math.degrees(2.0 * math.atan(Wa / (2.0 * fa)))
    return _K_from_focal(fa, Wa, Ha), _K_from_focal(fb, Wb, Hb), info


def _calibrated(cv2, A, ua, ub, Ka, Kb, size_b, report, *, ransac_px, min_inliers, min_parallax_deg, n_trials,
                seed) -> PoseEstimate:
    """Steps 4-7 of the module docstring with known ``Ka`` (image A's pixels) and ``Kb`` (image B's pixels) on the
    matched keypoints ``ua`` / ``ub`` ([M,2] engine pixel coordinates of each image). Fills ``report``."""
    Ha, Wa = A.shape[:2]
    Wb, Hb = size_b
    n_pairs = len(ua)
    # 3-5. essential matrix (MAGSAC++), cheirality, refinement; n_trials independent MAGSAC runs, the refined
    #      hypothesis with the lowest MSAC score over all matches wins.
    na, nb = _normalize(ua, Ka), _normalize(ub, Kb)
    f_mean = float(np.mean([Ka[0, 0], Ka[1, 1], Kb[0, 0], Kb[1, 1]]))
    best, best_n_e = None, 0
    for k in range(max(1, int(n_trials))):
        hyp = _hypothesis(cv2, ua, ub, na, nb, Ka, Kb, float(ransac_px), f_mean, min_inliers,
                          int(seed) + 1000003 * k)
        if isinstance(hyp, int):
            best_n_e = max(best_n_e, hyp)
            continue
        if best is None or hyp["msac"] < best["msac"]:
            best = dict(hyp, trial=k)
    if best is None:
        raise DegeneratePairError(
            f"only {best_n_e} of {n_pairs} matches agree with one camera motion (need >= {min_inliers}): the "
            f"images do not overlap enough, show different scenes, or the scene moved between the shots. Use two "
            f"photos of the same static subject from nearby positions; check that the intrinsics are plausible."
        )
    R, t, inl = best["R"], best["t"], best["inl"]
    ia, ib, nia, nib = ua[inl], ub[inl], na[inl], nb[inl]
    report.update(n_inliers=int(inl.sum()), n_inliers_magsac=best["n_magsac"],
                  inlier_ratio=float(inl.sum()) / n_pairs, sampson_error_px=best["rms"],
                  sampson_error_before_refine_px=best["rms0"], refined=best["refined"], trial=best["trial"])

    # parallax: angle between the two viewing rays of each inlier (independent of |t|)
    ra = np.concatenate([nia, np.ones((len(nia), 1))], 1)
    rb = np.concatenate([nib, np.ones((len(nib), 1))], 1) @ R  # R^T rb: B's ray in A's frame
    cosang = np.sum(ra * rb, 1) / (np.linalg.norm(ra, axis=1) * np.linalg.norm(rb, axis=1))
    ang = np.degrees(np.arccos(np.clip(cosang, -1, 1)))
    parallax = float(np.median(ang))
    report["median_parallax_deg"] = parallax

    # homography check: a single homography explaining the inliers = plane or pure rotation
    Hm, hmask = cv2.findHomography(ia, ib, _usac_params(cv2, 2.0 * float(ransac_px), 5000, seed))
    h_ratio = float(hmask.sum()) / len(ia) if Hm is not None and hmask is not None else 0.0
    report["homography_inlier_ratio"] = h_ratio

    if parallax < min_parallax_deg or (h_ratio >= 0.9 and parallax < 2.0 * min_parallax_deg):
        raise DegeneratePairError(
            f"too little parallax between the images (median triangulation angle {parallax:.2f} deg, "
            f"{100 * h_ratio:.0f}% of the matches fit a single homography): the camera rotated in place (or barely "
            f"moved), so depth cannot be recovered. Move the camera sideways between the shots (a step of ~5-15% "
            f"of the subject distance) instead of only turning it."
        )

    # 6. triangulation and the sparse cloud
    X = _triangulate(cv2, nia, nib, R, t)
    Xb = X @ R.T + t
    pa, za = _project(X, Ka)
    pb, zb = _project(Xb, Kb)
    err = 0.5 * (np.linalg.norm(pa - ia, axis=1) + np.linalg.norm(pb - ib, axis=1))
    finite = np.isfinite(X).all(1) & np.isfinite(err)
    keep = finite & (za > 0) & (zb > 0) & (err < max(2.0, 3.0 * float(ransac_px))) & (ang > 0.25 * min_parallax_deg)
    if int(keep.sum()) < 8:
        raise DegeneratePairError(
            f"only {int(keep.sum())} matched points triangulate in front of both cameras: the relative pose is "
            f"unreliable (wrong intrinsics or too little parallax). Check the focal length / field of view and move "
            f"the camera sideways between the shots."
        )
    report["n_points"] = int(keep.sum())
    report["reproj_error_px"] = float(np.median(err[keep]))
    depths = np.concatenate([za[keep], zb[keep]])
    near = 0.8 * float(np.percentile(depths, 2))
    far = 1.25 * float(np.percentile(depths, 98))
    if not far > near:  # pragma: no cover - percentiles are ordered
        far = near * 2.0

    conf = ((1.0 - math.exp(-report["n_inliers"] / 100.0))
            * _smoothstep(parallax, min_parallax_deg, 4.0 * min_parallax_deg)
            * (0.5 + 0.5 * min(1.0, report["inlier_ratio"] / 0.5))
            * (1.0 - 0.5 * _smoothstep(h_ratio, 0.8, 1.0)))
    report["confidence"] = float(conf)

    # cameras: A = identity, B = inverse of [R | t]; both at A's image size
    c2w = np.tile(np.eye(4), (2, 1, 1))
    c2w[1, :3, :3] = R.T
    c2w[1, :3, 3] = -R.T @ t
    Kb_a = Kb.copy()
    Kb_a[0] *= Wa / Wb
    Kb_a[1] *= Ha / Hb
    cams = Cameras(
        c2w=torch.from_numpy(c2w).float(), K=torch.from_numpy(np.stack([Ka, Kb_a])).float(), width=Wa, height=Ha,
        near=near, far=far, names=["a", "b"],
    )
    colors = _bilinear(A, ia[keep])
    return PoseEstimate(
        cameras=cams,
        points3d=torch.from_numpy(X[keep]).float(),
        colors=torch.from_numpy(colors).float(),
        near=near,
        far=far,
        report=report,
    )


# ---------------------------------------------------------------------------------------------------------- main
def estimate_relative_pose(
    img_a,
    img_b,
    K_a=None,
    K_b=None,
    *,
    prior_fov_deg: float = DEFAULT_FOV_DEG,
    prior_fov_axis: str = "horizontal",
    prior_source: str = "default-fov",
    self_calibrate: bool = True,
    selfcal_guard: bool = True,
    max_features: int = 8000,
    ratio: float = 0.8,
    ransac_px: float = 1.0,
    max_side: int = 1024,
    max_upscale: float = 2.0,
    contrast_threshold: float = 0.02,
    min_inliers: int = 40,
    min_parallax_deg: float = 1.0,
    n_trials: int = 4,
    seed: int = 0,
) -> PoseEstimate:
    """Relative pose of two photos of a static scene, with known intrinsics or self-calibrated.

    Args:
        img_a, img_b: float tensors ``[H,W,3]`` (or ``[H,W]``) in 0..1; the sizes may differ.
        K_a, K_b: ``[3,3]`` pixel intrinsics of each image at its own size, both or neither. ``None``: unknown
            intrinsics (square pixels, principal point at the image centre): the focal length is self-calibrated when
            the pair allows it, otherwise it comes from the prior field of view (see the module docstring, step 3).
        prior_fov_deg, prior_fov_axis: the prior field of view (see :func:`focal_from_fov`) used when ``K`` is
            unknown and self-calibration is ill-conditioned.
        prior_source: where the prior comes from: ``"default-fov"`` (a guess; used only when self-calibration is
            ill-conditioned, with a warning in the report) or ``"exif"`` (the photo's EXIF 35 mm-equivalent focal,
            see :func:`exif_focal_35mm`; preferred over self-calibration, which is then only a cross-check).
        self_calibrate: ``False`` skips self-calibration (the prior is used as is).
        selfcal_guard: ``False`` trusts the self-calibrated focal whenever the solver returns one (the checks are
            still measured and reported); for benchmarks that show what the guard is for, never for real use.
        max_features: SIFT keypoints kept per image (strongest first).
        ratio: Lowe ratio-test threshold (lower = stricter).
        ransac_px: RANSAC threshold in pixels (epipolar distance), also the refinement's robust-loss scale.
        max_side: detection size: images are resized so that their longer side is ``max_side`` (shrunk with an
            area filter, or enlarged by at most ``max_upscale``); keypoints are mapped back to the input pixels.
        max_upscale: largest enlargement factor for small images (1 disables enlarging).
        contrast_threshold: SIFT contrast threshold (OpenCV default 0.04; lower = more, weaker keypoints).
        min_inliers: fewer matches / essential-matrix inliers than this -> :class:`DegeneratePairError`.
        min_parallax_deg: median triangulation angle below this -> :class:`DegeneratePairError` (pure rotation).
        n_trials: independent MAGSAC++ runs (random states ``seed + 1000003 k``); each is refined and the one with
            the lowest MSAC score (``sum min(sampson^2, ransac_px^2)`` over all matches) is kept. On LLFF fern a single
            run lands on a visibly worse local solution for ~1 pair in 30 (e.g. 1.0 deg / 4.4 deg instead of
            0.15 deg / 0.35 deg); a run costs ~15-300 ms on CPU (more with a low inlier ratio), small next to detection
            and matching. Self-calibration also runs ``n_trials`` PoseLib LO-RANSACs (seeds ``seed + 7919 k``).
        seed: random state of the RANSAC sampling; the result is deterministic for a given seed.

    Returns:
        :class:`PoseEstimate`. ``report`` keys: ``n_keypoints_a``, ``n_keypoints_b``, ``n_matches``, ``n_inliers``
        (final inliers: matches with Sampson error < ``ransac_px`` under the refined pose), ``n_inliers_magsac``
        (MAGSAC++'s inlier count), ``inlier_ratio`` (n_inliers / n_matches), ``median_parallax_deg`` (median angle
        between the two viewing rays of the inliers), ``reproj_error_px`` (median reprojection error of the kept
        3D points, mean of both views), ``sampson_error_px`` (RMS over the inliers, after refinement),
        ``sampson_error_before_refine_px`` (MAGSAC's pose on MAGSAC's inliers), ``refined`` (whether a refinement
        was kept), ``trial`` (which MAGSAC run won), ``n_points`` (kept 3D points),
        ``homography_inlier_ratio`` (fraction of the essential inliers that one homography also explains within
        ``2 * ransac_px``; near 1 means a planar scene or pure rotation), ``confidence`` (0..1, see below),
        ``size_a``/``size_b`` ((W, H) of each input), ``median_displacement_px``.
        Focal length: ``focal_source`` (``"user"`` when ``K`` is given, ``"exif"``, ``"self-calibrated"`` or
        ``"default-fov"``), ``focal_px`` (image A's focal in its pixels), ``fov_deg`` (image A's horizontal field of
        view), ``focal_confidence`` (0..1: 1 for given intrinsics, 0.9 for EXIF, the self-calibration's conditioning
        score, 0.1 for the default guess), ``focal_reason`` (why), ``self_calibration`` (its measurements and
        failed checks, or ``None``), and ``focal_warning`` when the focal is a guess or disagrees with EXIF.

        ``confidence = (1 - exp(-n_inliers / 100)) * smoothstep(parallax, min_parallax_deg, 4 * min_parallax_deg)
        * (0.5 + 0.5 * min(1, inlier_ratio / 0.5)) * (1 - 0.5 * smoothstep(h_ratio, 0.8, 1.0))``: many inliers,
        a wide triangulation angle, a clean match set and a non-planar configuration all push it towards 1.

    Raises:
        DegeneratePairError (a ``ValueError``): images smaller than 64 px or containing NaN, too few matches (no
        overlap / unrelated images), identical or nearly identical images (median match displacement < 0.5 px),
        pure rotation / too little parallax, or no triangulable points. Messages about the pair (not the image
        files) end with :data:`BETTER_METHODS_HINT`, naming the learned alternatives.
        ValueError: malformed ``K``, only one of ``K_a`` / ``K_b``, or an invalid prior.
        ImportError: OpenCV missing.
    """
    cv2 = _import_cv2()
    A = _as_image(img_a, "image A")
    B = _as_image(img_b, "image B")
    if (K_a is None) != (K_b is None):
        raise ValueError("give both K_a and K_b (known intrinsics) or neither (self-calibration / prior FOV)")
    Ka = Kb = None
    if K_a is not None:
        Ka, Kb = _as_K(K_a, "K_a"), _as_K(K_b, "K_b")
    else:
        focal_from_fov(64, 64, prior_fov_deg, prior_fov_axis)  # validates the prior early
        if prior_source not in ("default-fov", "exif", "user"):
            raise ValueError(f"prior_source must be 'default-fov', 'exif' or 'user', got {prior_source!r}")
    Ha, Wa = A.shape[:2]
    Hb, Wb = B.shape[:2]
    if min_inliers < 8:
        raise ValueError(f"min_inliers must be >= 8, got {min_inliers}")
    try:
        return _estimate(cv2, A, B, Ka, Kb, prior_fov_deg=float(prior_fov_deg), prior_fov_axis=prior_fov_axis,
                         prior_source=prior_source, self_calibrate=bool(self_calibrate),
                         selfcal_guard=bool(selfcal_guard), max_features=max_features,
                         ratio=ratio, ransac_px=float(ransac_px), max_side=max_side, max_upscale=max_upscale,
                         contrast_threshold=contrast_threshold, min_inliers=min_inliers,
                         min_parallax_deg=min_parallax_deg, n_trials=n_trials, seed=seed)
    except DegeneratePairError as e:
        raise DegeneratePairError(f"{e} {BETTER_METHODS_HINT}") from None


def _estimate(cv2, A, B, Ka, Kb, *, prior_fov_deg, prior_fov_axis, prior_source, self_calibrate, selfcal_guard,
              max_features, ratio, ransac_px, max_side, max_upscale, contrast_threshold, min_inliers, min_parallax_deg, n_trials,
              seed) -> PoseEstimate:
    Ha, Wa = A.shape[:2]
    Hb, Wb = B.shape[:2]
    # 1-2. features and matches
    uva, da = _detect(cv2, _gray_u8(A), max_side, max_upscale, max_features, contrast_threshold)
    uvb, db = _detect(cv2, _gray_u8(B), max_side, max_upscale, max_features, contrast_threshold)
    report: dict = {"n_keypoints_a": int(len(uva)), "n_keypoints_b": int(len(uvb)),
                    "size_a": (int(Wa), int(Ha)), "size_b": (int(Wb), int(Hb))}
    for name, n in (("image A", len(uva)), ("image B", len(uvb))):
        if n < min_inliers:
            raise DegeneratePairError(
                f"{name} has only {n} SIFT features (need >= {min_inliers}): it is too flat, blurry, dark or small. "
                f"Use a sharper, well-exposed photo of a textured scene."
            )
    pairs = _match(da, db, ratio)
    report["n_matches"] = int(len(pairs))
    if len(pairs) < min_inliers:
        raise DegeneratePairError(
            f"only {len(pairs)} feature matches between the images (need >= {min_inliers}): the photos do not show "
            f"the same scene or overlap too little. Take the second photo of the same subject from a nearby position "
            f"(keep most of the subject in both frames)."
        )
    ua, ub = uva[pairs[:, 0]], uvb[pairs[:, 1]]

    # identical / near-identical images (compare in A's pixel grid)
    ub_in_a = ub * np.array([Wa / Wb, Ha / Hb])
    disp = float(np.median(np.linalg.norm(ub_in_a - ua, axis=1)))
    report["median_displacement_px"] = disp
    if disp < 0.5:
        raise DegeneratePairError(
            f"the two images are identical or nearly identical (median feature displacement {disp:.2f} px): "
            f"a 3D reconstruction needs two photos taken from different positions. Move the camera sideways by "
            f"roughly 5-15% of the distance to the subject between the shots."
        )

    # 3. intrinsics: given, or self-calibrated / prior
    if Ka is None:
        Ka, Kb, finfo = _choose_focal(ua, ub, (Wa, Ha), (Wb, Hb), prior_fov_deg, prior_fov_axis, prior_source,
                                      self_calibrate, ransac_px, n_trials, seed, guard=selfcal_guard)
    else:
        finfo = dict(focal_source="user", focal_confidence=1.0, focal_reason="intrinsics given",
                     fov_deg=math.degrees(2.0 * math.atan(Wa / (2.0 * Ka[0, 0]))), self_calibration=None)
    finfo["focal_px"] = float(Ka[0, 0])
    report.update(finfo)
    if "focal_warning" in finfo:
        warnings.warn(finfo["focal_warning"], stacklevel=3)
    return _calibrated(cv2, A, ua, ub, Ka, Kb, (Wb, Hb), report, ransac_px=ransac_px, min_inliers=min_inliers,
                       min_parallax_deg=min_parallax_deg, n_trials=n_trials, seed=seed)
