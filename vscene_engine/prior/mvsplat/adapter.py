"""MVSplat's Gaussian adapter: raw per-pixel predictions -> 3D Gaussians in world space (official
src/model/encoder/common/gaussian_adapter.py, common/gaussians.py and src/geometry/projection.py).

Per pixel and Gaussian, the raw channels after the two xy-offset channels are split as (3 scale, 4 quaternion,
3 * d_sh colour SH, channel-major: all d_sh coefficients of R, then G, then B):

* scale = (scale_min + (scale_max - scale_min) * sigmoid(raw)) * depth * footprint, with
  footprint = 0.1 * sum(K[:2, :2]^-1 @ (1/W, 1/H)) (K normalized) -- roughly 0.1 pixel at that depth;
* quaternion = raw / (|raw| + 1e-8), **xyzw** order (the official ``quaternion_to_matrix`` reads i, j, k, r), in the
  camera frame; the world covariance is ``R_c2w (R_q S S^T R_q^T) R_c2w^T``;
* SH = raw * mask (1 for the DC term, 0.1 * 0.25**l for degree l), rotated to world with the e3nn Wigner-D of
  ``R_c2w`` (see :mod:`.wigner`);
* mean = camera origin + depth * unit ray direction through the (offset) pixel centre; the official code uses the
  predicted depth (z-depth in its cost volume) as the distance along the ray here, and so does this port.

The module has no parameters (``sh_mask`` is a non-persistent buffer).
"""

from __future__ import annotations

import torch
from torch import nn

from .wigner import rotate_sh_coefficients

__all__ = ["GaussianAdapter", "quaternion_xyzw_to_matrix", "build_covariance"]


def quaternion_xyzw_to_matrix(q: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """xyzw quaternions ``[..., 4]`` (need not be unit) -> rotation matrices ``[..., 3, 3]`` (official formula)."""
    i, j, k, r = q.unbind(-1)
    two_s = 2 / ((q * q).sum(-1) + eps)
    m = torch.stack([
        1 - two_s * (j * j + k * k), two_s * (i * j - k * r), two_s * (i * k + j * r),
        two_s * (i * j + k * r), 1 - two_s * (i * i + k * k), two_s * (j * k - i * r),
        two_s * (i * k - j * r), two_s * (j * k + i * r), 1 - two_s * (i * i + j * j),
    ], -1)
    return m.reshape(*q.shape[:-1], 3, 3)


def build_covariance(scale: torch.Tensor, rotation_xyzw: torch.Tensor) -> torch.Tensor:
    """``R S S^T R^T`` for scales ``[..., 3]`` and xyzw quaternions ``[..., 4]``."""
    s = torch.diag_embed(scale)
    r = quaternion_xyzw_to_matrix(rotation_xyzw)
    return r @ s @ s.transpose(-1, -2) @ r.transpose(-1, -2)


class GaussianAdapter(nn.Module):
    """See the module docstring. ``forward`` arguments broadcast against each other:

    extrinsics ``[..., 4, 4]`` camera-to-world (OpenCV), intrinsics ``[..., 3, 3]`` normalized, coordinates
    ``[..., 2]`` normalized image xy in 0..1, depths ``[...]``, opacities ``[...]``, raw ``[..., 7 + 3 d_sh]``,
    image_shape (H, W). Returns a dict of means, covariances, scales, rotations (xyzw, camera frame), harmonics
    ``[..., 3, d_sh]`` (world), opacities.
    """

    def __init__(self, gaussian_scale_min: float = 0.5, gaussian_scale_max: float = 15.0, sh_degree: int = 4):
        super().__init__()
        self.gaussian_scale_min = float(gaussian_scale_min)
        self.gaussian_scale_max = float(gaussian_scale_max)
        self.sh_degree = int(sh_degree)
        mask = torch.ones(self.d_sh, dtype=torch.float32)
        for degree in range(1, self.sh_degree + 1):
            mask[degree ** 2:(degree + 1) ** 2] = 0.1 * 0.25 ** degree
        self.register_buffer("sh_mask", mask, persistent=False)

    @property
    def d_sh(self) -> int:
        return (self.sh_degree + 1) ** 2

    @property
    def d_in(self) -> int:
        return 7 + 3 * self.d_sh

    def scale_multiplier(self, intrinsics: torch.Tensor, pixel_size: torch.Tensor, multiplier: float = 0.1):
        xy = multiplier * torch.einsum("...ij,j->...i", intrinsics[..., :2, :2].inverse(), pixel_size)
        return xy.sum(dim=-1)

    def forward(self, extrinsics, intrinsics, coordinates, depths, opacities, raw, image_shape, eps: float = 1e-8):
        scales, rotations, sh = raw.split((3, 4, 3 * self.d_sh), dim=-1)
        scales = self.gaussian_scale_min + (self.gaussian_scale_max - self.gaussian_scale_min) * scales.sigmoid()
        h, w = image_shape
        pixel_size = 1 / torch.tensor((w, h), dtype=torch.float32, device=raw.device)
        mult = self.scale_multiplier(intrinsics, pixel_size.to(intrinsics.dtype))
        scales = scales * depths[..., None] * mult[..., None]

        rotations = rotations / (rotations.norm(dim=-1, keepdim=True) + eps)

        sh = sh.reshape(*sh.shape[:-1], 3, self.d_sh)
        sh = sh.broadcast_to((*opacities.shape, 3, self.d_sh)) * self.sh_mask.to(sh.dtype)

        cov = build_covariance(scales, rotations)
        c2w = extrinsics[..., :3, :3]
        cov = c2w @ cov @ c2w.transpose(-1, -2)

        # rays through the pixel: unproject with K^-1, normalize, rotate to world (homogeneous 4x4 as official)
        hom = torch.cat([coordinates, torch.ones_like(coordinates[..., :1])], dim=-1)
        dirs = torch.einsum("...ij,...j->...i", intrinsics.inverse(), hom)
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        dirs = torch.cat([dirs, torch.zeros_like(dirs[..., :1])], dim=-1)
        dirs = torch.einsum("...ij,...j->...i", extrinsics, dirs)[..., :-1]
        origins = extrinsics[..., :-1, -1].broadcast_to(dirs.shape)
        means = origins + dirs * depths[..., None]

        return {
            "means": means,
            "covariances": cov,
            "harmonics": rotate_sh_coefficients(sh, c2w[..., None, :, :]),
            "opacities": opacities,
            "scales": scales,
            "rotations": rotations.broadcast_to((*scales.shape[:-1], 4)),
        }
