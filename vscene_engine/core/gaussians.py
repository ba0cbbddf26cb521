"""3D Gaussian scenes: the :class:`GaussianScene` container plus quaternion helpers.

Entry point: :class:`GaussianScene`.

Conventions (binding, see DESIGN.md). All attributes are *activated* values, one row per Gaussian:

* ``means      [N, 3]``   world-space centres
* ``scales     [N, 3]``   linear standard deviations along the local axes (> 0)
* ``quats      [N, 4]``   rotation quaternions, **wxyz**, normalized (local -> world rotation)
* ``opacities  [N]``      in [0, 1]
* ``sh         [N, K, 3]`` SH coefficients, ``K = (d+1)**2``, ``d <= 4``; ``sh[:, 0]`` is the DC term
  (3DGS constants, see :mod:`vscene_engine.core.sh`).

The covariance of Gaussian i is ``R_i S_i S_i^T R_i^T`` with ``R_i = quat_to_rotmat(quats[i])`` and
``S_i = diag(scales[i])``. All tensors share one device and one floating dtype. Methods never modify a scene in
place; they return new scenes (tensors may be shared with the input where nothing changed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from .sh import MAX_SH_DEGREE, num_sh_coeffs, rgb_to_sh_dc, rotate_sh, sh_dc_to_rgb, sh_degree_from_coeffs

__all__ = [
    "GaussianScene", "quat_to_rotmat", "rotmat_to_quat", "quat_multiply", "quat_normalize", "all_finite",
]

_FIELDS = ("means", "scales", "quats", "opacities", "sh")


def all_finite(t: torch.Tensor) -> bool:
    """True when every element of ``t`` is finite (True for an empty tensor).

    The same answer as ``torch.isfinite(t).all()`` from one reduction pass that allocates nothing of ``t``'s size
    (``torch.aminmax``, which propagates NaN), instead of a boolean tensor of ``t``'s size and a second pass: the
    per-render check of a large scene. Never part of an autograd graph."""
    if t.numel() == 0 or not t.is_floating_point():
        return True
    with torch.no_grad():
        lo, hi = torch.aminmax(t.detach())
        return bool(torch.isfinite(lo) & torch.isfinite(hi))


# ------------------------------------------------------------------------------------------------ quaternions

def quat_normalize(q: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Normalize quaternions ``q [..., 4]`` (a zero quaternion stays zero instead of becoming NaN)."""
    return q / q.norm(dim=-1, keepdim=True).clamp_min(eps)


def quat_multiply(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamilton product ``a * b`` of wxyz quaternions ``[..., 4]`` (broadcast). Rotation by the result equals
    rotation by ``b`` followed by rotation by ``a``: ``R(a*b) = R(a) @ R(b)``."""
    aw, ax, ay, az = a.unbind(-1)
    bw, bx, by, bz = b.unbind(-1)
    return torch.stack([
        aw * bw - ax * bx - ay * by - az * bz,
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
    ], dim=-1)


def quat_to_rotmat(q: torch.Tensor) -> torch.Tensor:
    """wxyz quaternions ``[..., 4]`` -> rotation matrices ``[..., 3, 3]`` (input is normalized first)."""
    w, x, y, z = quat_normalize(q).unbind(-1)
    m = torch.stack([
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ], dim=-1)
    return m.reshape(q.shape[:-1] + (3, 3))


def rotmat_to_quat(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices ``[..., 3, 3]`` -> normalized wxyz quaternions ``[..., 4]`` with ``w >= 0``.

    Numerically stable for every rotation (picks the best-conditioned of the four standard formulas).
    """
    if R.shape[-2:] != (3, 3):
        raise ValueError(f"R must have shape [..., 3, 3], got {tuple(R.shape)}")
    m00, m01, m02 = R[..., 0, 0], R[..., 0, 1], R[..., 0, 2]
    m10, m11, m12 = R[..., 1, 0], R[..., 1, 1], R[..., 1, 2]
    m20, m21, m22 = R[..., 2, 0], R[..., 2, 1], R[..., 2, 2]
    # 4*w^2, 4*x^2, 4*y^2, 4*z^2
    d = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    cands = torch.stack([
        torch.stack([d[..., 0], m21 - m12, m02 - m20, m10 - m01], -1),
        torch.stack([m21 - m12, d[..., 1], m10 + m01, m02 + m20], -1),
        torch.stack([m02 - m20, m10 + m01, d[..., 2], m12 + m21], -1),
        torch.stack([m10 - m01, m02 + m20, m12 + m21, d[..., 3]], -1),
    ], -2)  # [..., 4 candidates, 4]; candidate i is 4*q_i*q (up to sign)
    best = d.argmax(-1)
    q = torch.gather(cands, -2, best[..., None, None].expand(best.shape + (1, 4))).squeeze(-2)
    q = quat_normalize(q)
    return torch.where(q[..., :1] < 0, -q, q)


def _check_rotation(R: torch.Tensor, atol: float = 1e-4) -> None:
    if R.shape != (3, 3):
        raise ValueError(f"R must be a single 3x3 rotation matrix, got shape {tuple(R.shape)}")
    if not torch.isfinite(R).all():
        raise ValueError("R contains NaN/inf")
    Rd = R.detach().to(torch.float64)
    err = (Rd @ Rd.T - torch.eye(3, dtype=torch.float64, device=R.device)).abs().max().item()
    if err > atol:
        raise ValueError(f"R is not orthonormal (max |R R^T - I| = {err:.3g}); pass a pure rotation and use `s` "
                         f"for uniform scaling")
    if torch.linalg.det(Rd).item() < 0:
        raise ValueError("R has determinant -1 (a reflection); Gaussians with quaternion rotations cannot be "
                         "mirrored, pass a proper rotation")


# ------------------------------------------------------------------------------------------------ scene

@dataclass(eq=False)
class GaussianScene:
    """A set of N 3D Gaussians with activated attributes (see module docstring for shapes and conventions).

    Construction does not validate; call :meth:`validate` (or use :meth:`random`, :meth:`from_points`,
    :meth:`empty`, :func:`vscene_engine.io.ply.read_ply`).
    """

    means: torch.Tensor      # [N, 3]
    scales: torch.Tensor     # [N, 3] linear, > 0
    quats: torch.Tensor      # [N, 4] wxyz, normalized
    opacities: torch.Tensor  # [N] in [0, 1]
    sh: torch.Tensor         # [N, K, 3]

    # ---------------------------------------------------------------- basic properties
    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def num_gaussians(self) -> int:
        return len(self)

    @property
    def sh_degree(self) -> int:
        """SH degree d (0..4) from ``K = sh.shape[1] = (d+1)**2``."""
        return sh_degree_from_coeffs(self.sh.shape[1])

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def dtype(self) -> torch.dtype:
        return self.means.dtype

    def _replace(self, **kw) -> "GaussianScene":
        vals = {f: getattr(self, f) for f in _FIELDS}
        vals.update(kw)
        return GaussianScene(**vals)

    def to(self, device=None, dtype: torch.dtype | None = None) -> "GaussianScene":
        """Move/cast every tensor (``dtype`` must be floating)."""
        if dtype is not None and not dtype.is_floating_point:
            raise ValueError(f"GaussianScene dtype must be floating point, got {dtype}")
        return self._replace(**{f: getattr(self, f).to(device=device, dtype=dtype) for f in _FIELDS})

    def clone(self) -> "GaussianScene":
        return self._replace(**{f: getattr(self, f).clone() for f in _FIELDS})

    def detach(self) -> "GaussianScene":
        return self._replace(**{f: getattr(self, f).detach() for f in _FIELDS})

    # ---------------------------------------------------------------- validation
    def validate(self, strict: bool = True) -> "GaussianScene":
        """Check shapes, dtypes and value ranges; return ``self``.

        Raises ValueError naming the field for: wrong shapes/mismatched N, non-floating or mixed dtypes/devices,
        NaN/inf, non-positive scales, opacities outside [0, 1], zero quaternions, unsupported SH size.
        With ``strict=True`` quaternions must also be unit length (|‖q‖-1| <= max(1e-5, 10*eps(dtype)));
        ``strict=False`` accepts unnormalized ones (fix them with :meth:`normalized`).
        """
        n = None
        expected = {"means": (3,), "scales": (3,), "quats": (4,), "opacities": (), "sh": None}
        for f in _FIELDS:
            t = getattr(self, f)
            if not isinstance(t, torch.Tensor):
                raise ValueError(f"GaussianScene.{f} must be a torch.Tensor, got {type(t).__name__}")
            if not t.is_floating_point():
                raise ValueError(f"GaussianScene.{f} must be a floating point tensor, got {t.dtype}")
            if f == "sh":
                if t.dim() != 3 or t.shape[2] != 3:
                    raise ValueError(f"GaussianScene.sh must have shape [N, K, 3], got {tuple(t.shape)}")
                k = t.shape[1]
                if k not in (1, 4, 9, 16, 25):
                    raise ValueError(f"GaussianScene.sh has K={k} coefficients per channel; K must be "
                                     f"(d+1)^2 for an SH degree d in 0..{MAX_SH_DEGREE} (1, 4, 9, 16, 25)")
            else:
                tail = expected[f]
                if t.dim() != 1 + len(tail) or tuple(t.shape[1:]) != tail:
                    want = "[N]" if not tail else f"[N, {tail[0]}]"
                    raise ValueError(f"GaussianScene.{f} must have shape {want}, got {tuple(t.shape)}")
            if n is None:
                n = t.shape[0]
            elif t.shape[0] != n:
                raise ValueError(f"GaussianScene.{f} has {t.shape[0]} rows but means has {n}")
            if t.dtype != self.means.dtype:
                raise ValueError(f"GaussianScene.{f} has dtype {t.dtype} but means has {self.means.dtype}")
            if t.device != self.means.device:
                raise ValueError(f"GaussianScene.{f} is on {t.device} but means is on {self.means.device}")
            bad = (~torch.isfinite(t)).sum().item()
            if bad:
                raise ValueError(f"GaussianScene.{f} contains {bad} NaN/inf value(s)")
        if n == 0:
            return self
        bad = (self.scales <= 0).sum().item()
        if bad:
            raise ValueError(f"GaussianScene.scales must be > 0 (linear std-devs); {bad} value(s) are <= 0 "
                             f"(min {self.scales.min().item():.4g})")
        bad = ((self.opacities < 0) | (self.opacities > 1)).sum().item()
        if bad:
            raise ValueError(f"GaussianScene.opacities must be in [0, 1] (activated, not logits); {bad} value(s) "
                             f"outside (range {self.opacities.min().item():.4g}..{self.opacities.max().item():.4g})")
        qn = self.quats.norm(dim=-1)
        bad = (qn == 0).sum().item()
        if bad:
            raise ValueError(f"GaussianScene.quats has {bad} zero quaternion(s); they define no rotation")
        if strict:
            tol = max(1e-5, 10 * torch.finfo(self.quats.dtype).eps)
            dev = (qn - 1).abs().max().item()
            if dev > tol:
                raise ValueError(f"GaussianScene.quats are not normalized (max |‖q‖-1| = {dev:.3g}); call "
                                 f".normalized() or validate(strict=False)")
        return self

    def normalized(self) -> "GaussianScene":
        """Copy with unit quaternions (zero quaternions stay zero and still fail :meth:`validate`)."""
        return self._replace(quats=quat_normalize(self.quats))

    # ---------------------------------------------------------------- constructors
    @classmethod
    def empty(cls, sh_degree: int = 0, device=None, dtype: torch.dtype = torch.float32) -> "GaussianScene":
        """A scene with 0 Gaussians and ``K = (sh_degree+1)**2`` SH coefficients."""
        k = num_sh_coeffs(sh_degree)
        z = lambda *s: torch.zeros(s, device=device, dtype=dtype)
        return cls(z(0, 3), z(0, 3), z(0, 4), z(0), z(0, k, 3))

    @classmethod
    def random(cls, n: int, sh_degree: int = 0, generator: torch.Generator | None = None, device=None,
               dtype: torch.dtype = torch.float32, extent: float = 1.0,
               scale_range: tuple[float, float] = (0.01, 0.1)) -> "GaussianScene":
        """Random valid scene for tests/demos.

        means uniform in ``[-extent, extent]^3``; scales log-uniform in ``scale_range`` (times ``extent``);
        random unit quaternions; opacities uniform in [0.05, 0.95]; base colours uniform in [0, 1] and
        higher SH bands N(0, 0.1^2). Deterministic for a seeded ``generator`` (sampled on CPU in float64).
        """
        k = num_sh_coeffs(sh_degree)
        g = generator
        f64 = torch.float64
        means = (torch.rand(n, 3, generator=g, dtype=f64) * 2 - 1) * extent
        lo, hi = torch.log(torch.tensor(scale_range, dtype=f64))
        scales = torch.exp(lo + (hi - lo) * torch.rand(n, 3, generator=g, dtype=f64)) * extent
        quats = quat_normalize(torch.randn(n, 4, generator=g, dtype=f64))
        opac = 0.05 + 0.9 * torch.rand(n, generator=g, dtype=f64)
        sh = torch.cat([rgb_to_sh_dc(torch.rand(n, 1, 3, generator=g, dtype=f64)),
                        0.1 * torch.randn(n, k - 1, 3, generator=g, dtype=f64)], dim=1)
        return cls(means, scales, quats, opac, sh).to(device=device, dtype=dtype).normalized()

    @classmethod
    def from_points(cls, xyz: torch.Tensor, rgb: torch.Tensor | None = None, scale=0.01, opacity=1.0,
                    sh_degree: int = 0) -> "GaussianScene":
        """Isotropic Gaussians at points ``xyz [N, 3]``.

        ``rgb [N, 3]`` base colours in [0, 1] (None -> grey 0.5) stored as the SH DC term, higher bands zero;
        ``scale``: float, ``[N]`` or ``[N, 3]`` linear std-dev; ``opacity``: float or ``[N]`` in [0, 1];
        identity rotations. dtype/device follow ``xyz`` (float32 if it is not floating point).
        """
        xyz = torch.as_tensor(xyz)
        if not xyz.is_floating_point():
            xyz = xyz.to(torch.float32)
        if xyz.dim() != 2 or xyz.shape[1] != 3:
            raise ValueError(f"xyz must have shape [N, 3], got {tuple(xyz.shape)}")
        n, dt, dev = xyz.shape[0], xyz.dtype, xyz.device
        k = num_sh_coeffs(sh_degree)
        sh = torch.zeros(n, k, 3, dtype=dt, device=dev)
        if rgb is not None:
            rgb = torch.as_tensor(rgb, device=dev).to(dt)
            if rgb.shape != (n, 3):
                raise ValueError(f"rgb must have shape [N, 3] = [{n}, 3], got {tuple(rgb.shape)}")
            sh[:, 0] = rgb_to_sh_dc(rgb)
        scale_t = torch.as_tensor(scale, dtype=dt, device=dev)
        if scale_t.dim() == 1:
            scale_t = scale_t[:, None]
        scales = scale_t.expand(n, 3).clone()
        opac = torch.as_tensor(opacity, dtype=dt, device=dev).expand(n).clone()
        quats = torch.zeros(n, 4, dtype=dt, device=dev)
        quats[:, 0] = 1
        return cls(xyz, scales, quats, opac, sh)

    @classmethod
    def cat(cls, scenes: Sequence["GaussianScene"]) -> "GaussianScene":
        """Concatenate scenes; SH is zero-padded to the largest degree. Result uses the first scene's
        device/dtype."""
        scenes = list(scenes)
        if not scenes:
            raise ValueError("GaussianScene.cat needs at least one scene")
        d = max(s.sh_degree for s in scenes)
        dev, dt = scenes[0].device, scenes[0].dtype
        parts = [s.with_sh_degree(d).to(device=dev, dtype=dt) for s in scenes]
        return cls(**{f: torch.cat([getattr(p, f) for p in parts], dim=0) for f in _FIELDS})

    # ---------------------------------------------------------------- selection
    def subset(self, index_or_mask) -> "GaussianScene":
        """Select Gaussians by a bool mask ``[N]``, an index tensor/list, a slice or an int (kept as 1 row)."""
        idx = index_or_mask
        if isinstance(idx, int):
            idx = slice(idx, idx + 1) if idx != -1 else slice(-1, None)
        elif not isinstance(idx, slice):
            idx = torch.as_tensor(idx, device=self.device)
            if idx.dtype == torch.bool:
                if idx.shape != (len(self),):
                    raise ValueError(f"boolean mask must have shape [{len(self)}], got {tuple(idx.shape)}")
            elif idx.dtype.is_floating_point or idx.dim() != 1:
                if idx.numel() == 0 and idx.dim() == 1:
                    idx = idx.long()
                else:
                    raise ValueError("index must be a 1-D integer tensor/list, a bool mask, a slice or an int")
        return self._replace(**{f: getattr(self, f)[idx] for f in _FIELDS})

    def prune(self, min_opacity: float = 0.005, max_scale: float | None = None) -> "GaussianScene":
        """Keep Gaussians with ``opacity >= min_opacity`` and (if given) ``max(scales) <= max_scale``."""
        keep = self.opacities >= min_opacity
        if max_scale is not None:
            keep &= self.scales.amax(dim=-1) <= max_scale
        return self.subset(keep)

    def with_sh_degree(self, degree: int) -> "GaussianScene":
        """Truncate (drop high bands) or zero-pad the SH coefficients to ``degree``."""
        k = num_sh_coeffs(degree)
        cur = self.sh.shape[1]
        if k == cur:
            return self
        if k < cur:
            return self._replace(sh=self.sh[:, :k])
        pad = self.sh.new_zeros(self.sh.shape[0], k - cur, 3)
        return self._replace(sh=torch.cat([self.sh, pad], dim=1))

    # ---------------------------------------------------------------- geometry
    def covariances(self) -> torch.Tensor:
        """World covariances ``[N, 3, 3] = R S S^T R^T`` (R from quats, S = diag(scales))."""
        M = quat_to_rotmat(self.quats) * self.scales[:, None, :]  # R @ diag(s)
        return M @ M.transpose(-1, -2)

    def rotmats(self) -> torch.Tensor:
        """Rotation matrices ``[N, 3, 3]`` of the Gaussians."""
        return quat_to_rotmat(self.quats)

    def base_rgb(self) -> torch.Tensor:
        """View-independent colour ``[N, 3]`` from the DC term, clamped to [0, 1]."""
        return sh_dc_to_rgb(self.sh[:, 0]).clamp(0, 1)

    def transformed(self, R: torch.Tensor | None = None, t: torch.Tensor | None = None,
                    s: float = 1.0) -> "GaussianScene":
        """Apply the similarity transform ``x -> s * R @ x + t`` to the whole scene.

        ``R [3, 3]`` proper rotation (default identity; reflections and non-orthonormal matrices raise
        ValueError), ``t [3]`` (default 0), ``s > 0`` uniform scale. Means are mapped, quaternions are
        left-multiplied by the quaternion of R, scales are multiplied by s (covariances become
        ``s^2 R Σ R^T``) and SH bands 1..4 are rotated with :func:`vscene_engine.core.sh.rotate_sh`, so the
        transformed scene seen from the transformed camera looks exactly like the original.
        """
        s = float(s)
        if not s > 0:
            raise ValueError(f"scale factor s must be > 0, got {s}")
        means, quats, sh = self.means, self.quats, self.sh
        if R is not None:
            R = torch.as_tensor(R, device=self.device).to(self.dtype)
            _check_rotation(R)
            means = means @ R.T
            qr = rotmat_to_quat(R)
            quats = quat_multiply(qr.expand_as(quats), quats)
            if self.sh.shape[1] > 1:
                sh = rotate_sh(sh, R)
        if s != 1.0:
            means = means * s
        if t is not None:
            t = torch.as_tensor(t, device=self.device).to(self.dtype).reshape(3)
            means = means + t
        return self._replace(means=means, quats=quats, scales=self.scales * s, sh=sh)

    def bounds(self, quantile: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """Axis-aligned bounds of the means: ``(lo [3], hi [3])``. ``quantile`` q in [0, 0.5) ignores outliers:
        per axis the q and 1-q quantiles (q=0: exact min/max). Raises ValueError for an empty scene."""
        if len(self) == 0:
            raise ValueError("empty GaussianScene has no bounds")
        if quantile <= 0:
            return self.means.amin(0), self.means.amax(0)
        if not quantile < 0.5:
            raise ValueError(f"quantile must be in [0, 0.5), got {quantile}")
        m = self.means
        lim = 1 << 24  # torch.quantile input limit
        if m.numel() > lim:
            m = m[:: m.shape[0] // (lim // 3) + 1]
        q = torch.tensor([quantile, 1 - quantile], dtype=m.dtype, device=m.device)
        qs = torch.quantile(m, q, dim=0)
        return qs[0], qs[1]

    def center(self, quantile: float = 0.0) -> torch.Tensor:
        """Centre ``[3]`` of :meth:`bounds`."""
        lo, hi = self.bounds(quantile)
        return (lo + hi) / 2

    def extent(self, quantile: float = 0.0) -> torch.Tensor:
        """Side lengths ``[3]`` of :meth:`bounds` (``hi - lo``)."""
        lo, hi = self.bounds(quantile)
        return hi - lo

    def radius(self, quantile: float = 0.0) -> float:
        """Half the diagonal of :meth:`bounds` (a bounding-sphere radius around :meth:`center`)."""
        return float(self.extent(quantile).norm().item() / 2)
