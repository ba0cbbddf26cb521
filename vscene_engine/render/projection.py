"""Projection of 3D Gaussians into one camera: the screen-space quantities every rasterizer backend composites.

Entry point: :func:`project_gaussians` ``(scene, c2w [4,4], K [3,3], width, height, ...) -> Projected`` (EWA
splatting as 3DGS / gsplat: 3D covariance from linear scales and wxyz quaternions, Jacobian of the pinhole
projection, 0.3-pixel dilation (``eps2d``), optional antialias compensation, colour from SH at the view direction).
Cameras are OpenCV camera-to-world (+x right, +y down, +z forward), K in pixels, pixel centres at +0.5. The torch
backends of :mod:`vscene_engine.render.rasterize` composite its output; the compiled backend
(:mod:`vscene_engine.render.raster_numba`) re-implements the same math and is tested equal to it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch

from ..core.gaussians import quat_multiply, quat_to_rotmat, rotmat_to_quat
from ..core.sh import eval_sh

__all__ = ["Projected", "project_gaussians"]


@dataclass
class Projected:
    """Per-Gaussian screen-space quantities for one camera (only the visible Gaussians, ``index`` into the scene).

    means2d [M,2] pixels, conic [M,3] (a, b, c) of the inverse dilated 2D covariance (σ = ½(a dx² + c dy²) + b dx dy),
    depth [M] view-space z, opacity [M] (after antialias compensation), color [M,3], extent [M,2] half-widths in pixels of
    the region where alpha ≥ 1/255 is possible, index [M] long.
    """

    means2d: torch.Tensor
    conic: torch.Tensor
    depth: torch.Tensor
    opacity: torch.Tensor
    color: torch.Tensor
    extent: torch.Tensor
    index: torch.Tensor


def project_gaussians(
    scene,
    c2w: torch.Tensor,
    K: torch.Tensor,
    width: int,
    height: int,
    *,
    eps2d: float = 0.3,
    antialiased: bool = False,
    near_plane: float = 0.01,
    far_plane: float = 1e10,
    sh_degree: Optional[int] = None,
) -> Projected:
    """EWA-project ``scene`` into one camera (c2w [4,4] OpenCV, K [3,3] pixels). See the module docstring."""

    means, dtype = scene.means, scene.means.dtype
    c2w = c2w.to(means)
    K = K.to(means)
    R_cw = c2w[:3, :3].transpose(0, 1)  # world -> camera rotation
    t_cw = -R_cw @ c2w[:3, 3]
    p_cam = means @ R_cw.T + t_cw
    z = p_cam[:, 2]
    vis = (z >= near_plane) & (z <= far_plane)
    index = vis.nonzero().squeeze(1)
    take = (lambda t: t) if index.numel() == vis.numel() else (lambda t: t[index])  # skip no-op gathers
    p_cam, z = take(p_cam), take(z)
    x, y = p_cam[:, 0], p_cam[:, 1]

    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    # Camera-space factor of the 3D covariance: M = R_cw R_g diag(s), so Σ_cam = M Mᵀ. The rotation is composed
    # as a quaternion product (elementwise; avoids batched 3x3 matmuls, which are slow for millions of tiny matrices).
    q_cw = rotmat_to_quat(R_cw).to(means)
    Rc = quat_to_rotmat(quat_multiply(q_cw.expand(index.shape[0], 4), take(scene.quats)))
    M = Rc * take(scene.scales).unsqueeze(-2)  # columns scaled

    tan_fovx, tan_fovy = 0.5 * width / fx, 0.5 * height / fy
    lim_x_pos, lim_x_neg = (width - cx) / fx + 0.3 * tan_fovx, cx / fx + 0.3 * tan_fovx
    lim_y_pos, lim_y_neg = (height - cy) / fy + 0.3 * tan_fovy, cy / fy + 0.3 * tan_fovy
    rz = 1.0 / z
    tx = z * torch.minimum(torch.maximum(x * rz, -lim_x_neg), lim_x_pos)
    ty = z * torch.minimum(torch.maximum(y * rz, -lim_y_neg), lim_y_pos)
    # Jacobian J = [[fx/z, 0, -fx tx/z²], [0, fy/z, -fy ty/z²]]; T = J M (two rows), Σ2d = T Tᵀ
    T0 = (fx * rz)[:, None] * M[:, 0] - (fx * tx * rz * rz)[:, None] * M[:, 2]
    T1 = (fy * rz)[:, None] * M[:, 1] - (fy * ty * rz * rz)[:, None] * M[:, 2]
    a0, b0, c0 = (T0 * T0).sum(-1), (T0 * T1).sum(-1), (T1 * T1).sum(-1)
    a, b, c = a0 + eps2d, b0, c0 + eps2d
    det = a * c - b * b
    opac = take(scene.opacities).to(dtype)
    if antialiased:
        det0 = a0 * c0 - b0 * b0
        opac = opac * torch.sqrt((det0 / det.clamp_min(1e-30)).clamp_min(0.0))
    # visibility: positive-definite footprint and an alpha that can reach 1/255 somewhere
    level = torch.log((opac * 255.0).clamp_min(1e-30))  # alpha >= 1/255  <=>  sigma <= log(255 o)
    keep = (det > 0) & (level > 0)
    means2d = torch.stack([fx * x * rz + cx, fy * y * rz + cy], -1)
    ext = torch.sqrt((2.0 * level.clamp_min(0)).unsqueeze(-1) * torch.stack([a, c], -1).clamp_min(0))
    ext = ext * (1.0 + 1e-4) + 1e-3  # pad: the per-pixel alpha test stays the exact criterion
    onscreen = (
        (means2d[:, 0] + ext[:, 0] > 0) & (means2d[:, 0] - ext[:, 0] < width)
        & (means2d[:, 1] + ext[:, 1] > 0) & (means2d[:, 1] - ext[:, 1] < height)
    )
    keep = keep & onscreen & torch.isfinite(means2d).all(-1)
    sel = keep.nonzero().squeeze(1)
    det_s = det[sel]
    conic = torch.stack([c[sel] / det_s, -b[sel] / det_s, a[sel] / det_s], -1)

    idx = index[sel]
    deg = scene.sh_degree if sh_degree is None else min(sh_degree, scene.sh_degree)
    sh = scene.sh[:, : (deg + 1) ** 2][idx]
    dirs = scene.means[idx] - c2w[:3, 3]
    color = torch.clamp_min(eval_sh(sh, dirs) + 0.5, 0.0)
    return Projected(means2d[sel], conic, z[sel], opac[sel], color, ext[sel].detach(), idx)

