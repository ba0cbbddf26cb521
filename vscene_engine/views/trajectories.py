"""Camera trajectories (camera paths for rendering / video conditioning).

Entry point: :func:`make_trajectory` ``(kind, cams, frames=49, **opts) -> Cameras``.

All poses are OpenCV camera-to-world ``[...,4,4]`` (x right, y down, z forward), intrinsics ``K [...,3,3]`` in
pixels (see DESIGN.md). Internally everything is computed in float64; the result has the dtype/device of the input
cameras. The first and last frame of every two-camera path reproduce the input cameras exactly.

Kinds:

* ``"interpolate"`` - the pixelSplat / MVSplat / NoPoSplat / VideoScene camera interpolation between two cameras
  (:func:`interpolate_pivot`), with cosine easing and 49 frames by default exactly like VideoScene's
  ``ModelWrapper.render_video``. Reference (read, re-implemented, not copied):
  ``src/visualization/camera_trajectory/interpolation.py`` (``interpolate_extrinsics``,
  ``interpolate_intrinsics``) in dcharatan/pixelsplat and in hanyang-21/VideoScene
  (``noposplat/src/visualization/camera_trajectory/interpolation.py``), and the callers
  ``noposplat/src/model/model_wrapper.py`` (``render_video``: ``num_frames = 49``,
  ``t = linspace(0, 1, 49)``, ``t = (cos(pi (t + 1)) + 1) / 2`` which equals ``(1 - cos(pi t)) / 2``, near/far
  of the first context camera) and ``mvsplat/src/model/model_wrapper.py``.

  The math ("pivot" interpolation): let ``a``, ``b`` be the two viewing directions (camera +z).
  1. Pivot point ``p``: the least-squares intersection of the two optical axes (the point minimizing the summed
     squared distance to both lines, i.e. solve ``sum_i (d_i d_i^T - I) p = sum_i (d_i d_i^T - I) o_i``); if the
     axes are parallel (``||a.b| - 1| < 1e-4``) the midpoint of the two camera centres.
  2. Pivot frame ``F = [n x a, n, a]`` (columns) with ``n = normalize(a x b)`` the normal of the plane spanned by
     the two viewing directions (for parallel views ``b`` is replaced by world ``z``, then world ``y``).
  3. Each camera ``(R, o)`` becomes pivot parameters: Euler angles of ``F^T R`` in intrinsic ``YXZ`` order
     (yaw ``theta`` about the plane normal, pitch ``beta``, twist ``phi`` about the viewing axis; the reference
     keeps only yaw and twist - 5 parameters - because pitch is identically 0 for both input cameras; we keep it
     so endpoints stay exact even with float32 round-off) and the offset of the pivot from
     the camera centre expressed in the camera's yawed frame ``T = F Ry(theta) = [n x look, n, look]``:
     ``s = T^T (p - o)``.
  4. ``s`` is interpolated linearly, the angles along the shorter arc (circular interpolation), and the pose is
     rebuilt: ``R = F Ry(theta) Rx(beta) Rz(phi)``, ``o = p - F Ry(theta) s``. The camera therefore swings around
     the pivot (an arc in the plane of the two viewing directions) while its distance/offset to the pivot changes
     linearly, instead of moving on a straight line.
  Intrinsics are interpolated linearly (entry-wise), like the reference; near/far linearly (the reference
  repeats the first camera's bounds).

* ``"se3"`` - straight interpolation: rotation by quaternion slerp (the SO(3) geodesic), camera centre linearly
  (i.e. the geodesic of SO(3) x R^3, not the screw motion of SE(3)).
* ``"orbit"`` - rigid rotation of the first camera about an axis through a look-at centre.
* ``"keyframes"`` - a path through ``N >= 2`` cameras (e.g. several LOAD3D_CAMERA dicts), one of the above
  two-camera interpolations per segment.

Easing: ``"linear"`` (``t' = t``) or ``"cosine"`` (``t' = (1 - cos(pi t)) / 2``, zero velocity at both ends).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core.cameras import Cameras, look_at, quat_to_rotmat, rotmat_to_quat

__all__ = [
    "make_trajectory",
    "KINDS",
    "EASINGS",
    "ease",
    "interpolate_pivot",
    "interpolate_se3",
    "interpolate_intrinsics",
    "focus_point",
    "rotation_about_axis",
]

KINDS = ("interpolate", "se3", "orbit", "keyframes")
EASINGS = ("linear", "cosine")
_F64 = torch.float64


# ---------------------------------------------------------------------- small math helpers
def ease(t: Tensor, easing: str = "linear") -> Tensor:
    """Apply an easing curve to times ``t`` (any shape): ``"linear"`` -> ``t``; ``"cosine"`` ->
    ``(1 - cos(pi t)) / 2`` (maps 0->0, 1->1 exactly, zero slope at both ends)."""
    if easing == "linear":
        return t
    if easing == "cosine":
        return (1 - torch.cos(math.pi * t)) / 2
    raise ValueError(f"unknown easing {easing!r}; use one of {EASINGS}")


def _wrap_angle(x: Tensor) -> Tensor:
    """Wrap to [-pi, pi)."""
    return torch.remainder(x + math.pi, 2 * math.pi) - math.pi


def _normalize(v: Tensor) -> Tensor:
    return v / v.norm(dim=-1, keepdim=True).clamp_min(1e-300)


def _rot_x(a: Tensor) -> Tensor:
    c, s = torch.cos(a), torch.sin(a)
    o, z = torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([o, z, z, z, c, -s, z, s, c], -1).reshape(*a.shape, 3, 3)


def _rot_y(a: Tensor) -> Tensor:
    c, s = torch.cos(a), torch.sin(a)
    o, z = torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([c, z, s, z, o, z, -s, z, c], -1).reshape(*a.shape, 3, 3)


def _rot_z(a: Tensor) -> Tensor:
    c, s = torch.cos(a), torch.sin(a)
    o, z = torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([c, -s, z, s, c, z, z, z, o], -1).reshape(*a.shape, 3, 3)


def rotation_about_axis(axis: Tensor, angle: Tensor) -> Tensor:
    """Rodrigues: rotation matrices ``[T,3,3]`` by ``angle [T]`` (radians, right-handed) about unit ``axis [3]``."""
    axis = _normalize(axis.to(_F64))
    angle = angle.to(_F64)
    x, y, z = axis.tolist()
    Kx = torch.tensor([[0.0, -z, y], [z, 0.0, -x], [-y, x, 0.0]], dtype=_F64, device=axis.device)
    eye = torch.eye(3, dtype=_F64, device=axis.device)
    s, c = torch.sin(angle)[:, None, None], torch.cos(angle)[:, None, None]
    return eye + s * Kx + (1 - c) * (Kx @ Kx)


def _lines_closest_point(origins: Tensor, dirs: Tensor) -> Tensor:
    """Least-squares point closest to the lines ``o_i + s d_i`` (``[M,3]`` each, d unit): solves
    ``sum (I - d d^T) p = sum (I - d d^T) o``."""
    eye = torch.eye(3, dtype=origins.dtype, device=origins.device)
    P = eye - dirs[:, :, None] * dirs[:, None, :]  # [M,3,3]
    A = P.sum(0)
    b = (P @ origins[:, :, None]).sum(0)[:, 0]
    return torch.linalg.lstsq(A, b[:, None]).solution[:, 0]


def focus_point(cams: Cameras, *, min_angle_deg: float = 0.5) -> Tensor:
    """The world point closest (least squares) to the optical axes of all cameras: ``[3]`` (dtype of ``cams``).

    For two cameras this is the midpoint of the shortest segment between the two axes. Raises ``ValueError`` if
    fewer than 2 cameras are given or the axes are (nearly) parallel (max angle between viewing directions below
    ``min_angle_deg``), because the point is then undefined - pass an explicit centre instead.
    """
    if len(cams) < 2:
        raise ValueError("focus_point needs at least 2 cameras; pass an explicit centre for a single camera")
    d = _normalize(cams.forward.to(_F64))
    cosmin = (d @ d.T).clamp(-1, 1).min()
    if float(torch.rad2deg(torch.acos(cosmin))) < min_angle_deg:
        raise ValueError(
            "focus_point: the optical axes are (nearly) parallel, so they have no common focus point; "
            "pass centre=[x, y, z] explicitly"
        )
    return _lines_closest_point(cams.centers.to(_F64), d).to(cams.dtype)


def interpolate_intrinsics(K0: Tensor, K1: Tensor, t: Tensor) -> Tensor:
    """Entry-wise linear interpolation ``K0 + (K1 - K0) t``: ``[3,3]``, ``[3,3]``, ``[T]`` -> ``[T,3,3]``
    (same as the pixelSplat/VideoScene ``interpolate_intrinsics``; valid for pixel or normalized K)."""
    t = t.to(K0.dtype)
    return K0[None] + (K1 - K0)[None] * t[:, None, None]


# ---------------------------------------------------------------------- two-camera interpolations
def _pivot_params(R: Tensor, o: Tensor, F: Tensor, p: Tensor) -> Tensor:
    """(R [3,3], o [3]) -> [6] = (s_x, s_y, s_z, theta, beta, phi) relative to pivot frame F and point p."""
    rel = F.T @ R
    theta = torch.atan2(rel[0, 2], rel[2, 2])
    beta = torch.atan2(-rel[1, 2], torch.hypot(rel[1, 0], rel[1, 1]))
    phi = torch.atan2(rel[1, 0], rel[1, 1])
    T = F @ _rot_y(theta)
    s = T.T @ (p - o)
    return torch.cat([s, torch.stack([theta, beta, phi])])


def interpolate_pivot(
    c2w0: Tensor,
    c2w1: Tensor,
    t: Tensor,
    *,
    pivot: Tensor | None = None,
    eps: float = 1e-4,
) -> Tensor:
    """pixelSplat/VideoScene "pivot" interpolation of two OpenCV c2w poses (see the module docstring).

    Args:
        c2w0, c2w1: ``[4,4]`` OpenCV camera-to-world.
        t: ``[T]`` times; 0 gives ``c2w0``, 1 gives ``c2w1`` (already eased; values outside [0, 1] extrapolate,
           as the reference's "exaggerated" video does).
        pivot: optional ``[3]`` world point to swing around instead of the least-squares axis intersection.
        eps: parallel-view threshold on ``||a.b| - 1|`` (reference value 1e-4).
    Returns:
        ``[T,4,4]`` float64 poses.
    """
    A = c2w0.to(_F64)
    B = c2w1.to(_F64)
    t = torch.as_tensor(t, dtype=_F64, device=A.device).reshape(-1)
    a, b = A[:3, 2], B[:3, 2]
    oa, ob = A[:3, 3], B[:3, 3]
    parallel = abs(abs(float(a @ b)) - 1) < eps
    if pivot is not None:
        p = torch.as_tensor(pivot, dtype=_F64, device=A.device).reshape(3)
    elif parallel:
        p = 0.5 * (oa + ob)
    else:
        p = _lines_closest_point(torch.stack([oa, ob]), torch.stack([_normalize(a), _normalize(b)]))
    # Pivot frame: y = normal of the plane of the two viewing directions, z = first viewing direction.
    bb = b
    for alt in ((0.0, 0.0, 1.0), (0.0, 1.0, 0.0)):
        if abs(abs(float(a @ bb)) - 1) < eps:
            bb = torch.tensor(alt, dtype=_F64, device=A.device)
    n = _normalize(torch.linalg.cross(a, bb))
    F = torch.stack([torch.linalg.cross(n, a), n, a], dim=-1)
    q0 = _pivot_params(A[:3, :3], oa, F, p)
    q1 = _pivot_params(B[:3, :3], ob, F, p)
    s = q0[None, :3] + (q1 - q0)[None, :3] * t[:, None]
    ang = q0[None, 3:] + _wrap_angle(q1[3:] - q0[3:])[None] * t[:, None]
    Ry = _rot_y(ang[:, 0])
    R = F[None] @ Ry @ _rot_x(ang[:, 1]) @ _rot_z(ang[:, 2])
    o = p[None] - ((F[None] @ Ry) @ s[:, :, None])[:, :, 0]
    out = torch.zeros(t.shape[0], 4, 4, dtype=_F64, device=A.device)
    out[:, :3, :3] = R
    out[:, :3, 3] = o
    out[:, 3, 3] = 1
    return _snap_endpoints(out, t, A, B)


def interpolate_se3(c2w0: Tensor, c2w1: Tensor, t: Tensor) -> Tensor:
    """Straight interpolation of two OpenCV c2w poses: rotation by quaternion slerp along the shorter arc, camera
    centre linearly. ``[4,4]``, ``[4,4]``, ``[T]`` -> ``[T,4,4]`` float64. Every output rotation is orthonormal."""
    A = c2w0.to(_F64)
    B = c2w1.to(_F64)
    t = torch.as_tensor(t, dtype=_F64, device=A.device).reshape(-1)
    q0 = rotmat_to_quat(A[:3, :3])
    q1 = rotmat_to_quat(B[:3, :3])
    d = float(q0 @ q1)
    if d < 0:
        q1, d = -q1, -d
    d = min(d, 1.0)
    omega = math.acos(d)
    if omega < 1e-8:
        q = q0[None] + (q1 - q0)[None] * t[:, None]
    else:
        so = math.sin(omega)
        q = (torch.sin((1 - t) * omega) / so)[:, None] * q0[None] + (torch.sin(t * omega) / so)[:, None] * q1[None]
    R = quat_to_rotmat(q)
    o = A[None, :3, 3] + (B[:3, 3] - A[:3, 3])[None] * t[:, None]
    out = torch.zeros(t.shape[0], 4, 4, dtype=_F64, device=A.device)
    out[:, :3, :3] = R
    out[:, :3, 3] = o
    out[:, 3, 3] = 1
    return _snap_endpoints(out, t, A, B)


def _snap_endpoints(out: Tensor, t: Tensor, A: Tensor, B: Tensor) -> Tensor:
    """Return the inputs bit-exactly where t == 0 / t == 1 (removes float round-off at the endpoints)."""
    out[t == 0] = A
    out[t == 1] = B
    return out


_PAIR_METHODS = {"interpolate": interpolate_pivot, "se3": interpolate_se3}


def _pair(cams: Cameras, i: int, j: int, t: Tensor, method: str, pivot=None):
    """Interpolate cameras i -> j at times t: returns (c2w [T,4,4], K [T,3,3], near [T], far [T]) in float64."""
    c2w0, c2w1 = cams.c2w[i], cams.c2w[j]
    if method == "interpolate":
        c2w = interpolate_pivot(c2w0, c2w1, t, pivot=pivot)
    elif method == "se3":
        c2w = interpolate_se3(c2w0, c2w1, t)
    else:
        raise ValueError(f"unknown interpolation {method!r}; use 'interpolate' or 'se3'")
    K0, K1 = cams.K[i].to(_F64), cams.K[j].to(_F64)
    K = interpolate_intrinsics(K0, K1, t)
    n0, n1 = cams.near[i].to(_F64), cams.near[j].to(_F64)
    f0, f1 = cams.far[i].to(_F64), cams.far[j].to(_F64)
    near = n0 + (n1 - n0) * t
    far = f0 + (f1 - f0) * t
    # exact endpoints for the non-pose quantities too
    for mask, k in ((t == 0, i), (t == 1, j)):
        K[mask] = cams.K[k].to(_F64)
        near[mask] = cams.near[k].to(_F64)
        far[mask] = cams.far[k].to(_F64)
    return c2w, K, near, far


# ---------------------------------------------------------------------- entry point
def make_trajectory(kind: str, cams: Cameras, frames: int = 49, **opts) -> Cameras:
    """Build a camera path of ``frames`` cameras (same ``width``/``height``, dtype and device as ``cams``).

    Args:
        kind: ``"interpolate"`` | ``"se3"`` | ``"orbit"`` | ``"keyframes"`` (see the module docstring).
        cams: input cameras: exactly 2 for ``interpolate``/``se3`` (use ``cams[[i, j]]`` to pick two), >= 1 for
            ``orbit`` (the first is the start pose), >= 2 for ``keyframes``.
        frames: number of output cameras, >= 2 (VideoScene/CogVideoX uses 49).

    Options (keyword):
        easing: ``"linear"`` | ``"cosine"``. Default ``"cosine"`` for interpolate/se3/keyframes (as VideoScene),
            ``"linear"`` for orbit (constant angular speed). For keyframes it is applied to the whole path.
        pivot (interpolate): ``[3]`` world point to swing around instead of the optical-axis intersection.
        interp (keyframes): per-segment method ``"interpolate"`` (default) or ``"se3"``.
        segment_easing (keyframes): easing inside every segment, default ``"linear"`` (``"cosine"`` stops briefly
            at every keyframe). Frames are spread uniformly over the segments (keyframe ``k`` of ``M`` sits at
            path parameter ``k / (M - 1)``).
        centre (orbit): ``[3]`` look-at centre. Default: :func:`focus_point` of the cameras' optical axes
            (needs >= 2 non-parallel cameras); with one camera pass ``centre`` or ``distance`` (centre =
            first camera centre + ``distance`` * viewing direction).
        axis (orbit): ``[3]`` rotation axis / world up. Default: the cameras' mean "up" (= -mean of their +y
            axes, since OpenCV y points down). Rotation is right-handed about ``axis`` (counter-clockwise seen
            from its tip); negative ``turns`` go the other way.
        turns (orbit): number of revolutions, default 1.0 (the last frame then equals the first).
        radius (orbit): distance to the centre; elevation (orbit): degrees above the plane normal to ``axis``.
            If either is given the start camera is replaced by a look-at camera (at the first camera's azimuth,
            with the given/current radius and elevation, up = ``axis``, no roll); otherwise the first camera is
            rotated rigidly (keeping its exact orientation relative to the centre, so frame 0 == cams[0]).

    Returns:
        ``Cameras`` with ``frames`` cameras named ``"<kind>_000"`` ...

    Raises:
        ValueError: unknown kind/option, fewer than 2 frames, wrong number of input cameras.
    """
    if not isinstance(cams, Cameras):
        raise TypeError(f"make_trajectory: cams must be a Cameras batch, got {type(cams).__name__}")
    if isinstance(frames, bool) or int(frames) != frames:
        raise ValueError(f"frames must be an integer, got {frames!r}")
    frames = int(frames)
    if frames < 2:
        raise ValueError(f"a trajectory needs at least 2 frames (got frames={frames})")
    if kind not in KINDS:
        raise ValueError(f"unknown trajectory kind {kind!r}; use one of {KINDS}")
    allowed = {
        "interpolate": {"easing", "pivot"},
        "se3": {"easing"},
        "orbit": {"easing", "centre", "center", "axis", "turns", "radius", "elevation", "distance"},
        "keyframes": {"easing", "interp", "segment_easing"},
    }[kind]
    unknown = set(opts) - allowed
    if unknown:
        raise ValueError(f"make_trajectory({kind!r}): unknown option(s) {sorted(unknown)}; allowed: {sorted(allowed)}")
    dev = cams.device
    u = torch.linspace(0, 1, frames, dtype=_F64, device=dev)

    if kind in ("interpolate", "se3"):
        if len(cams) != 2:
            raise ValueError(
                f"trajectory kind {kind!r} interpolates between exactly 2 cameras, got {len(cams)}; "
                f"pick two with cams[[i, j]] or use kind='keyframes' to pass through all of them"
            )
        t = ease(u, opts.get("easing", "cosine"))
        c2w, K, near, far = _pair(cams, 0, 1, t, kind, pivot=opts.get("pivot"))
    elif kind == "keyframes":
        m = len(cams)
        if m < 2:
            raise ValueError(f"trajectory kind 'keyframes' needs at least 2 cameras, got {m}")
        method = opts.get("interp", "interpolate")
        if method not in _PAIR_METHODS:
            raise ValueError(f"keyframes: unknown interp {method!r}; use 'interpolate' or 'se3'")
        g = ease(u, opts.get("easing", "cosine")) * (m - 1)
        seg = g.floor().clamp(0, m - 2).long()
        local = ease(g - seg.to(_F64), opts.get("segment_easing", "linear"))
        c2w = torch.zeros(frames, 4, 4, dtype=_F64, device=dev)
        K = torch.zeros(frames, 3, 3, dtype=_F64, device=dev)
        near = torch.zeros(frames, dtype=_F64, device=dev)
        far = torch.zeros(frames, dtype=_F64, device=dev)
        for k in range(m - 1):
            sel = seg == k
            if bool(sel.any()):
                c2w[sel], K[sel], near[sel], far[sel] = _pair(cams, k, k + 1, local[sel], method)
    else:
        c2w, K, near, far = _orbit(cams, u, **opts)

    names = [f"{kind}_{i:03d}" for i in range(frames)]
    out = Cameras(c2w, K, cams.width, cams.height, near, far, names)
    return out.to(dtype=cams.dtype)


def _orbit(
    cams: Cameras,
    u: Tensor,
    easing: str = "linear",
    centre=None,
    center=None,
    axis=None,
    turns: float = 1.0,
    radius: float | None = None,
    elevation: float | None = None,
    distance: float | None = None,
):
    dev = cams.device
    c2w0 = cams.c2w[0].to(_F64)
    if centre is None:
        centre = center
    if centre is not None:
        c = torch.as_tensor(centre, dtype=_F64, device=dev).reshape(3)
    elif distance is not None or (len(cams) < 2 and radius is not None):
        dist = float(distance if distance is not None else radius)
        c = c2w0[:3, 3] + dist * c2w0[:3, 2]
    elif len(cams) >= 2:
        c = focus_point(cams.to(dtype=_F64))
    else:
        raise ValueError(
            "orbit with a single camera needs a look-at point: pass centre=[x, y, z] or distance=<units along "
            "the viewing direction>"
        )
    if axis is None:
        up = -cams.c2w[:, :3, 1].to(_F64).mean(0)
        if float(up.norm()) < 1e-6:
            up = -c2w0[:3, 1]
    else:
        up = torch.as_tensor(axis, dtype=_F64, device=dev).reshape(3)
        if float(up.norm()) < 1e-12:
            raise ValueError("orbit: axis must be a non-zero vector")
    up = _normalize(up)
    base = c2w0.clone()
    if radius is not None or elevation is not None:
        v = c2w0[:3, 3] - c
        h = v - (v @ up) * up
        if float(h.norm()) < 1e-9 * max(1.0, float(v.norm())):  # camera on the axis: use its right vector
            h = c2w0[:3, 0] - (c2w0[:3, 0] @ up) * up
        e = _normalize(h)
        el = math.radians(float(elevation)) if elevation is not None else math.atan2(float(v @ up), float(h.norm()))
        r = float(radius) if radius is not None else float(v.norm())
        if r <= 0:
            raise ValueError(f"orbit: radius must be > 0, got {r}")
        eye = c + r * (math.cos(el) * e + math.sin(el) * up)
        base = look_at(eye, c, up)
    angles = 2 * math.pi * float(turns) * ease(u, easing)
    Rot = rotation_about_axis(up, angles)  # [T,3,3]
    T = u.shape[0]
    c2w = torch.zeros(T, 4, 4, dtype=_F64, device=dev)
    c2w[:, :3, :3] = Rot @ base[:3, :3]
    c2w[:, :3, 3] = c[None] + (Rot @ (base[:3, 3] - c)[:, None])[:, :, 0]
    c2w[:, 3, 3] = 1
    c2w[angles == 0] = base
    K = cams.K[0].to(_F64).expand(T, 3, 3).clone()
    near = cams.near[0].to(_F64).expand(T).clone()
    far = cams.far[0].to(_F64).expand(T).clone()
    return c2w, K, near, far
