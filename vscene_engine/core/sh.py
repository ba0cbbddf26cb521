"""Real spherical harmonics (degrees 0..4) in the convention of INRIA 3D Gaussian Splatting.

Entry point: :func:`eval_sh`.

Conventions (binding, see DESIGN.md):

* SH coefficients are stored as ``sh [..., K, 3]`` with ``K = (d + 1) ** 2`` for degree ``d <= 4``;
  ``sh[..., 0, :]`` is the DC term, the last axis is RGB.
* Basis functions, their order and signs and the constants ``C0..C4`` are exactly those of
  ``utils/sh_utils.py`` of graphdeco-inria/gaussian-splatting (as also used by gsplat), e.g. band 1 is
  ``(-C1*y, C1*z, -C1*x)``. The basis is orthonormal over the unit sphere (integral of Y_i*Y_j = delta_ij).
* The colour of a Gaussian seen along ``dir = normalize(mean - camera_centre)`` is
  ``max(eval_sh(sh, dir) + 0.5, 0)`` (:func:`sh_to_rgb`).
* Directions need not be normalized; they are normalized inside (a zero direction is safe: it yields no NaN
  and a finite gradient).

Everything here is differentiable plain torch and works on any device/dtype.
"""

from __future__ import annotations

import math

import numpy as np
import torch

__all__ = [
    "C0", "C1", "C2", "C3", "C4", "MAX_SH_DEGREE",
    "num_sh_coeffs", "sh_degree_from_coeffs", "sh_basis", "eval_sh", "sh_to_rgb",
    "rgb_to_sh_dc", "sh_dc_to_rgb", "rotate_sh", "sh_rotation_matrices",
]

MAX_SH_DEGREE = 4

C0 = 0.28209479177387814
C1 = 0.4886025119029199
C2 = (
    1.0925484305920792,
    -1.0925484305920792,
    0.31539156525252005,
    -1.0925484305920792,
    0.5462742152960396,
)
C3 = (
    -0.5900435899266435,
    2.890611442640554,
    -0.4570457994644658,
    0.3731763325901154,
    -0.4570457994644658,
    1.445305721320277,
    -0.5900435899266435,
)
C4 = (
    2.5033429417967046,
    -1.7701307697799304,
    0.9461746957575601,
    -0.6690465435572892,
    0.10578554691520431,
    -0.6690465435572892,
    0.47308734787878004,
    -1.7701307697799304,
    0.6258357354491761,
)


def num_sh_coeffs(degree: int) -> int:
    """Number of SH coefficients per colour channel for ``degree`` (0..4): ``(degree + 1) ** 2``."""
    degree = int(degree)
    if not 0 <= degree <= MAX_SH_DEGREE:
        raise ValueError(f"SH degree must be in 0..{MAX_SH_DEGREE}, got {degree}")
    return (degree + 1) ** 2


def sh_degree_from_coeffs(k: int) -> int:
    """Inverse of :func:`num_sh_coeffs`: SH degree for ``k`` coefficients per channel (1, 4, 9, 16 or 25).

    Raises ValueError if ``k`` is not a perfect square or the degree would exceed 4.
    """
    k = int(k)
    d = math.isqrt(k) - 1 if k > 0 else -1
    if k <= 0 or (d + 1) ** 2 != k:
        raise ValueError(f"number of SH coefficients must be a perfect square (1, 4, 9, 16, 25), got {k}")
    if d > MAX_SH_DEGREE:
        raise ValueError(f"SH degree {d} (K={k}) is not supported; the maximum degree is {MAX_SH_DEGREE}")
    return d


def _normalize_dirs(dirs: torch.Tensor) -> torch.Tensor:
    # clamp_min keeps both the value and the gradient finite for a zero direction.
    eps = torch.finfo(dirs.dtype).tiny ** 0.5 if dirs.is_floating_point() else 1e-18
    n2 = (dirs * dirs).sum(-1, keepdim=True)
    return dirs * torch.rsqrt(n2.clamp_min(eps))


def sh_basis(dirs: torch.Tensor, degree: int, normalize: bool = True) -> torch.Tensor:
    """SH basis functions at ``dirs [..., 3]`` -> ``[..., (degree+1)**2]`` (3DGS order, signs and constants).

    ``normalize=True`` normalizes ``dirs`` first (the degree-4 formulas assume unit vectors).
    """
    num_sh_coeffs(degree)
    if dirs.shape[-1] != 3:
        raise ValueError(f"dirs must have shape [..., 3], got {tuple(dirs.shape)}")
    if normalize:
        dirs = _normalize_dirs(dirs)
    x, y, z = dirs.unbind(-1)
    out = [torch.full_like(x, C0)]
    if degree > 0:
        out += [-C1 * y, C1 * z, -C1 * x]
    if degree > 1:
        xx, yy, zz = x * x, y * y, z * z
        xy, yz, xz = x * y, y * z, x * z
        out += [
            C2[0] * xy,
            C2[1] * yz,
            C2[2] * (2.0 * zz - xx - yy),
            C2[3] * xz,
            C2[4] * (xx - yy),
        ]
    if degree > 2:
        out += [
            C3[0] * y * (3.0 * xx - yy),
            C3[1] * xy * z,
            C3[2] * y * (4.0 * zz - xx - yy),
            C3[3] * z * (2.0 * zz - 3.0 * xx - 3.0 * yy),
            C3[4] * x * (4.0 * zz - xx - yy),
            C3[5] * z * (xx - yy),
            C3[6] * x * (xx - 3.0 * yy),
        ]
    if degree > 3:
        out += [
            C4[0] * xy * (xx - yy),
            C4[1] * yz * (3.0 * xx - yy),
            C4[2] * xy * (7.0 * zz - 1.0),
            C4[3] * yz * (7.0 * zz - 3.0),
            C4[4] * (zz * (35.0 * zz - 30.0) + 3.0),
            C4[5] * xz * (7.0 * zz - 3.0),
            C4[6] * (xx - yy) * (7.0 * zz - 1.0),
            C4[7] * xz * (xx - 3.0 * yy),
            C4[8] * (xx * (xx - 3.0 * yy) - yy * (3.0 * xx - yy)),
        ]
    return torch.stack(out, dim=-1)


def eval_sh(sh: torch.Tensor, dirs: torch.Tensor, degree: int | None = None) -> torch.Tensor:
    """Evaluate SH radiance: ``sh [..., K, 3]``, ``dirs [..., 3]`` (broadcastable batch dims) -> ``[..., 3]``.

    ``K`` must be 1, 4, 9, 16 or 25. ``degree`` (optional) evaluates only the bands ``0..degree``
    (``degree <= sh_degree_from_coeffs(K)``). Does not add the +0.5 offset (see :func:`sh_to_rgb`).
    """
    if sh.dim() < 2 or sh.shape[-1] != 3:
        raise ValueError(f"sh must have shape [..., K, 3], got {tuple(sh.shape)}")
    d_full = sh_degree_from_coeffs(sh.shape[-2])
    d = d_full if degree is None else int(degree)
    if not 0 <= d <= d_full:
        raise ValueError(f"degree {degree} is outside 0..{d_full} for sh with K={sh.shape[-2]}")
    k = (d + 1) ** 2
    basis = sh_basis(dirs.to(sh.dtype), d)  # [..., k]
    return (basis.unsqueeze(-2) @ sh[..., :k, :]).squeeze(-2)  # [...,1,k] @ [...,k,3]


def sh_to_rgb(sh: torch.Tensor, dirs: torch.Tensor, degree: int | None = None) -> torch.Tensor:
    """View-dependent colour ``clamp_min(eval_sh(sh, dirs) + 0.5, 0)`` -> ``[..., 3]`` (3DGS convention)."""
    return (eval_sh(sh, dirs, degree) + 0.5).clamp_min(0.0)


def rgb_to_sh_dc(rgb):
    """Base colour ``rgb`` (in [0,1], any shape) -> DC coefficient ``(rgb - 0.5) / C0``. Tensor or ndarray."""
    return (rgb - 0.5) / C0


def sh_dc_to_rgb(dc):
    """DC coefficient -> base colour ``dc * C0 + 0.5`` (unclamped). Tensor or ndarray."""
    return dc * C0 + 0.5


# ----------------------------------------------------------------------------------------------------------
# Rotation of SH coefficients.
#
# For band l let Y_l(d) be the row vector of its 2l+1 basis functions. Each band is closed under rotation, so
# Y_l(R^T d) = Y_l(d) M_l for a (2l+1)x(2l+1) matrix M_l, and because the basis is orthonormal
#     M_l = integral over the sphere of Y_l(d)^T Y_l(R^T d) dd.
# The integrand is a polynomial of degree <= 2l <= 8 in d, so a product quadrature (Gauss-Legendre in z,
# uniform in azimuth) integrates it exactly. Coefficients rotate as c'_l = M_l c_l, which gives
#     eval_sh(rotate_sh(sh, R), R d) == eval_sh(sh, d)   for every direction d.
# ----------------------------------------------------------------------------------------------------------

_QUAD_CACHE: dict = {}


def _sphere_quadrature(device, dtype):
    key = (str(device), dtype)
    if key not in _QUAD_CACHE:
        zs, wz = np.polynomial.legendre.leggauss(8)  # exact for polynomials in z up to degree 15
        n_phi = 18  # exact for trigonometric polynomials in phi up to frequency 17
        phi = (np.arange(n_phi) + 0.5) * (2.0 * np.pi / n_phi)
        z = np.repeat(zs, n_phi)
        r = np.sqrt(np.clip(1.0 - z * z, 0.0, None))
        p = np.tile(phi, len(zs))
        pts = np.stack([r * np.cos(p), r * np.sin(p), z], axis=-1)
        w = np.repeat(wz, n_phi) * (2.0 * np.pi / n_phi)
        _QUAD_CACHE[key] = (
            torch.as_tensor(pts, dtype=dtype, device=device),
            torch.as_tensor(w, dtype=dtype, device=device),
        )
    return _QUAD_CACHE[key]


def sh_rotation_matrices(R: torch.Tensor, degree: int) -> list[torch.Tensor]:
    """Per-band SH rotation matrices for rotation(s) ``R [..., 3, 3]``.

    Returns ``[M_1, ..., M_degree]`` with ``M_l [..., 2l+1, 2l+1]`` such that the band-l coefficients rotate as
    ``c'_l = M_l @ c_l``. Computed in float64 (then cast to ``R.dtype``); differentiable in ``R``.
    """
    num_sh_coeffs(degree)
    if R.shape[-2:] != (3, 3):
        raise ValueError(f"R must have shape [..., 3, 3], got {tuple(R.shape)}")
    if degree == 0:
        return []
    Rd = R.to(torch.float64)
    pts, w = _sphere_quadrature(R.device, torch.float64)  # [Q,3], [Q]
    y = sh_basis(pts, degree, normalize=False)  # [Q,K]
    # rows of pts @ R are (R^T d)^T
    y_rot = sh_basis(torch.matmul(pts, Rd), degree, normalize=False)  # [..., Q, K]
    mats = []
    for l in range(1, degree + 1):
        a, b = l * l, (l + 1) * (l + 1)
        m = torch.einsum("q,qi,...qj->...ij", w, y[:, a:b], y_rot[..., a:b])
        mats.append(m.to(R.dtype))
    return mats


def rotate_sh(sh: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """Rotate SH coefficients ``sh [..., K, 3]`` by the rotation ``R [3, 3]`` (or ``[..., 3, 3]``, broadcast).

    The result satisfies ``eval_sh(rotate_sh(sh, R), R @ d) == eval_sh(sh, d)``: a scene whose Gaussians were
    rotated by ``R`` renders the same from a camera rotated by ``R``. The DC term is unchanged; bands 1..4 are
    mixed within each band. ``R`` must be a proper rotation (orthonormal, det +1; not checked here).
    Exact to float rounding; differentiable in ``sh`` and ``R``.
    """
    if sh.dim() < 2 or sh.shape[-1] != 3:
        raise ValueError(f"sh must have shape [..., K, 3], got {tuple(sh.shape)}")
    degree = sh_degree_from_coeffs(sh.shape[-2])
    if degree == 0:
        return sh.clone()
    mats = sh_rotation_matrices(R.to(device=sh.device, dtype=torch.promote_types(R.dtype, sh.dtype)), degree)
    parts = [sh[..., :1, :]]
    for l, m in enumerate(mats, start=1):
        a, b = l * l, (l + 1) * (l + 1)
        parts.append(torch.matmul(m.to(sh.dtype), sh[..., a:b, :]))
    return torch.cat(parts, dim=-2)
