"""Wigner-D matrices for real spherical harmonics, numerically compatible with e3nn (``e3nn.o3.matrix_to_angles``
and ``e3nn.o3.wigner_D``), in plain torch. MVSplat (src/misc/sh_rotation.py) rotates its SH coefficients with these.

e3nn conventions reproduced here:

* Euler angles are Y-X-Y: ``R = Ry(alpha) @ Rx(beta) @ Ry(gamma)``;
* the real SH basis of degree l is indexed m = -l..l and is obtained from the complex one by the standard
  real<->complex change of basis times the phase ``(-i)**l``, with **y as the polar axis**. The textbook real basis
  of degree 1, ordered m = -1, 0, 1 as (y, z, x) about a z polar axis, becomes (x, y, z) after e3nn's relabelling of
  the axes, so ``wigner_D(1, *matrix_to_angles(R)) == R`` exactly (checked against e3nn 0.5.1);
* consequence for MVSplat: the 3DGS/INRIA basis used by its renderer orders band 1 as (-y, z, -x) (times C1), so
  applying e3nn's D to those coefficients is *not* the geometric rotation of the colour function (for degree >= 1);
  it is nevertheless exactly what the official model does (and was trained with), and it is reproduced here;
* ``wigner_D(l, a, b, c) = expm(a Jy) @ expm(b Jx) @ expm(c Jy)`` with the real so(3) generators Jx, Jy of degree l.

The generators are built once per degree in float64 (cached); ``wigner_D`` evaluates in float64 and returns the
dtype of the angles.
"""

from __future__ import annotations

import functools
import math

import torch

__all__ = ["matrix_to_angles", "angles_to_matrix", "wigner_D", "so3_generators", "rotate_sh_coefficients"]


def _rot_x(a: torch.Tensor) -> torch.Tensor:
    c, s, o, z = a.cos(), a.sin(), torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([torch.stack([o, z, z], -1), torch.stack([z, c, -s], -1), torch.stack([z, s, c], -1)], -2)


def _rot_y(a: torch.Tensor) -> torch.Tensor:
    c, s, o, z = a.cos(), a.sin(), torch.ones_like(a), torch.zeros_like(a)
    return torch.stack([torch.stack([c, z, s], -1), torch.stack([z, o, z], -1), torch.stack([-s, z, c], -1)], -2)


def angles_to_matrix(alpha: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """``Ry(alpha) @ Rx(beta) @ Ry(gamma)``, ``[..., 3, 3]``."""
    alpha, beta, gamma = torch.broadcast_tensors(alpha, beta, gamma)
    return _rot_y(alpha) @ _rot_x(beta) @ _rot_y(gamma)


def matrix_to_angles(R: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Y-X-Y Euler angles ``(alpha, beta, gamma)`` of rotation matrices ``R [..., 3, 3]`` (e3nn's algorithm: the image
    of the y axis gives alpha and beta, the remaining rotation about y gives gamma).

    Raises ValueError if a determinant differs from 1 (e3nn asserts the same)."""
    det = torch.linalg.det(R)
    if not torch.allclose(det, det.new_tensor(1.0), rtol=1e-5, atol=1e-4):
        raise ValueError(f"matrix_to_angles needs proper rotations (det = 1); got determinants in "
                         f"[{det.min().item():.6g}, {det.max().item():.6g}]")
    y = R @ R.new_tensor([0.0, 1.0, 0.0])
    y = torch.nn.functional.normalize(y, p=2.0, dim=-1).clamp(-1, 1)
    beta = torch.acos(y[..., 1])
    alpha = torch.atan2(y[..., 0], y[..., 2])
    rest = angles_to_matrix(alpha, beta, torch.zeros_like(alpha)).transpose(-1, -2) @ R
    gamma = torch.atan2(rest[..., 0, 2], rest[..., 0, 0])
    return alpha, beta, gamma


@functools.lru_cache(maxsize=None)
def _generators_f64(l: int) -> torch.Tensor:
    # complex angular-momentum matrices in the |l, m> basis (m = -l..l)
    m = torch.arange(-l, l, dtype=torch.float64)
    raise_ = torch.diag(-torch.sqrt(l * (l + 1) - m * (m + 1)), diagonal=-1).to(torch.complex128)
    m = torch.arange(-l + 1, l + 1, dtype=torch.float64)
    lower = torch.diag(torch.sqrt(l * (l + 1) - m * (m - 1)), diagonal=1).to(torch.complex128)
    m = torch.arange(-l, l + 1, dtype=torch.float64)
    gens = torch.stack([0.5 * (raise_ + lower), torch.diag(1j * m.to(torch.complex128)),
                        -0.5j * (raise_ - lower)], 0)
    # real <-> complex change of basis (rows: complex m, columns: real m), times (-i)^l
    q = torch.zeros(2 * l + 1, 2 * l + 1, dtype=torch.complex128)
    r2 = 1 / math.sqrt(2)
    for mm in range(-l, 0):
        q[l + mm, l + abs(mm)] = r2
        q[l + mm, l - abs(mm)] = -1j * r2
    q[l, l] = 1
    for mm in range(1, l + 1):
        q[l + mm, l + mm] = (-1) ** mm * r2
        q[l + mm, l - mm] = 1j * (-1) ** mm * r2
    q = (-1j) ** l * q
    real = q.conj().T @ gens @ q
    assert real.imag.abs().max() < 1e-9
    return real.real.contiguous()


def so3_generators(l: int, dtype=torch.float64, device=None) -> torch.Tensor:
    """Real generators ``[3, 2l+1, 2l+1]`` of degree ``l`` (index 0: rotation about x, 1: about y, 2: about z with
    e3nn's sign convention), as e3nn's ``so3_generators``."""
    return _generators_f64(int(l)).to(dtype=dtype, device=device)


def wigner_D(l: int, alpha: torch.Tensor, beta: torch.Tensor, gamma: torch.Tensor) -> torch.Tensor:
    """Wigner-D matrix ``[..., 2l+1, 2l+1]`` of degree ``l`` for Y-X-Y Euler angles (e3nn ``wigner_D``)."""
    alpha, beta, gamma = torch.broadcast_tensors(alpha, beta, gamma)
    out_dtype = alpha.dtype if alpha.is_floating_point() else torch.get_default_dtype()
    X = so3_generators(l, torch.float64, alpha.device)
    a = (alpha.double() % (2 * math.pi))[..., None, None]
    b = (beta.double() % (2 * math.pi))[..., None, None]
    c = (gamma.double() % (2 * math.pi))[..., None, None]
    D = torch.matrix_exp(a * X[1]) @ torch.matrix_exp(b * X[0]) @ torch.matrix_exp(c * X[1])
    return D.to(out_dtype)


def rotate_sh_coefficients(sh: torch.Tensor, R: torch.Tensor) -> torch.Tensor:
    """MVSplat's ``rotate_sh``: ``sh [..., n]`` (n = (d+1)^2, degree-major, broadcast against ``R [..., 3, 3]``)
    -> per degree ``D^l(R) @ sh[l^2:(l+1)^2]`` with e3nn's Wigner-D (see the module docstring)."""
    n = sh.shape[-1]
    deg = math.isqrt(n)
    if deg * deg != n:
        raise ValueError(f"SH size {n} is not a square")
    alpha, beta, gamma = matrix_to_angles(R)
    parts = []
    for l in range(deg):
        D = wigner_D(l, alpha, beta, gamma).to(sh.dtype)
        parts.append(torch.einsum("...ij,...j->...i", D, sh[..., l * l:(l + 1) ** 2]))
    return torch.cat(parts, dim=-1)
