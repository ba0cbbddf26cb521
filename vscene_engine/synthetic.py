"""Scenes the engine makes itself (demo, tests, benchmarks). Entry point: :func:`procedural_scene`.

World convention of these scenes: OpenCV-like, +y is *down* (the ground is the plane y = +1, objects stand above it at
negative y), cameras look along +z towards the objects. Cameras are OpenCV camera-to-world (+x right, +y down,
+z forward) as everywhere in the engine.

Also :func:`depth_to_gaussians`: one Gaussian per pixel of a depth map (the MVSplat output layout) — centre on the
pixel's ray at its depth, scale = pixel footprint (depth / focal), colour from the pixel.
"""
from __future__ import annotations

import math

import torch

from .cameras import Cameras, look_at
from .gaussians import GaussianScene, rotmat_to_quat
from .sh import rgb_to_sh_dc

__all__ = ["procedural_scene", "demo_cameras"]


def _frame_from_normals(n: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [N,3,3] whose third column is the unit normal n [N,3]."""
    n = n / n.norm(dim=-1, keepdim=True)
    helper = torch.where(n[:, :1].abs() < 0.9, torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 0]))
    t = torch.linalg.cross(helper, n)
    t = t / t.norm(dim=-1, keepdim=True)
    b = torch.linalg.cross(n, t)
    return torch.stack([t, b, n], -1)


def _surfels(points, normals, colors, size, thickness=0.15, opacity=0.95):
    R = _frame_from_normals(normals)
    n = points.shape[0]
    scales = torch.stack([torch.full((n,), size), torch.full((n,), size), torch.full((n,), size * thickness)], -1)
    return points, scales, rotmat_to_quat(R), torch.full((n,), opacity), colors


def procedural_scene(n: int = 40000, seed: int = 0, sh_degree: int = 1, texture: float = 0.8) -> GaussianScene:
    """A small tabletop: checkered ground, three shaded spheres and a box, as ~n surfel Gaussians (float32).

    ``texture``: strength of a per-surfel brightness speckle (0 = smooth) — real photos have texture, and feature
    matching / stereo need it. Degree-1 SH carry a mild view-dependent tint so view dependence is exercised.
    Deterministic for a seed.
    """
    g = torch.Generator().manual_seed(seed)
    rnd = lambda *s: torch.rand(*s, generator=g)  # noqa: E731
    parts = []
    # ground: plane y = 1, x in [-2.5, 2.5], z in [0.5, 6]
    ng = n // 2
    x = rnd(ng) * 5.0 - 2.5
    z = rnd(ng) * 5.5 + 0.5
    pts = torch.stack([x, torch.ones(ng), z], -1)
    checker = ((torch.floor(x * 2) + torch.floor(z * 2)) % 2 == 0).float()[:, None]
    col = checker * torch.tensor([0.85, 0.82, 0.75]) + (1 - checker) * torch.tensor([0.25, 0.3, 0.35])
    parts.append(_surfels(pts, torch.tensor([0.0, -1.0, 0.0]).expand(ng, 3), col, 0.7 * math.sqrt(5.0 * 5.5 / ng)))
    # spheres
    ns = n // 8
    for centre, radius, base in (
        ((-0.9, 0.45, 3.2), 0.55, (0.85, 0.25, 0.2)),
        ((0.6, 0.3, 3.6), 0.7, (0.2, 0.45, 0.85)),
        ((0.1, 0.65, 2.3), 0.35, (0.95, 0.8, 0.2)),
    ):
        d = torch.randn(ns, 3, generator=g)
        d = d / d.norm(dim=-1, keepdim=True)
        c = torch.tensor(centre)
        pts = c + radius * d
        shade = (0.55 + 0.45 * (d @ torch.tensor([-0.4, -0.8, -0.45])).clamp_min(0))[:, None]
        stripes = 0.85 + 0.15 * torch.sin(d[:, 1:2] * 12.0)
        col = torch.tensor(base) * shade * stripes
        parts.append(_surfels(pts, d, col, 0.7 * radius * math.sqrt(4 * math.pi / ns)))
    # box: axis-aligned, centre (1.3, 0.6, 2.4), half size 0.4
    nb = n - ng - 3 * ns
    hs, ctr = 0.4, torch.tensor([1.3, 0.6, 2.4])
    face = torch.randint(0, 6, (nb,), generator=g)
    uv = rnd(nb, 2) * 2 - 1
    axis = face // 2
    sign = (face % 2).float() * 2 - 1
    pts = torch.zeros(nb, 3)
    nrm = torch.zeros(nb, 3)
    for a in range(3):
        m = axis == a
        others = [i for i in range(3) if i != a]
        pts[m, a] = sign[m] * hs
        pts[m, others[0]] = uv[m, 0] * hs
        pts[m, others[1]] = uv[m, 1] * hs
        nrm[m, a] = sign[m]
    pts = pts + ctr
    col = torch.tensor([0.3, 0.75, 0.35]) * (0.6 + 0.4 * (nrm @ torch.tensor([-0.4, -0.8, -0.45])).clamp_min(0))[:, None]
    edge = ((uv.abs() > 0.9).any(-1)).float()[:, None]
    col = col * (1 - 0.6 * edge)
    parts.append(_surfels(pts, nrm, col, 0.7 * hs * math.sqrt(6 * 4.0 / nb)))

    means, scales, quats, opac, cols = (torch.cat(t) for t in zip(*parts))
    if texture > 0:  # multi-scale 3D texture: a sum of random plane waves of the world position (blobs for SIFT)
        k = 32
        dirs = torch.randn(k, 3, generator=g)
        freq = torch.exp(torch.rand(k, generator=g) * math.log(40.0 / 5.0)) * 5.0  # 5..40 cycles per unit
        omega = dirs / dirs.norm(dim=-1, keepdim=True) * freq[:, None] * 2 * math.pi
        phase = torch.rand(k, generator=g) * 2 * math.pi
        amp = 1.0 / torch.sqrt(freq)
        noise = (torch.sin(means @ omega.T + phase) * amp).sum(-1) / amp.norm()
        cols = cols * (1.0 + texture * noise.clamp(-2, 2)[:, None] / 2)
    K = (sh_degree + 1) ** 2
    sh = torch.zeros(means.shape[0], K, 3)
    sh[:, 0] = rgb_to_sh_dc(cols.clamp(0, 1))
    if sh_degree >= 1:
        sh[:, 1:4] = 0.08 * torch.randn(means.shape[0], 3, 3, generator=g)
    return GaussianScene(means=means, scales=scales, quats=quats, opacities=opac, sh=sh)


def demo_cameras(width: int = 256, height: int = 192, fov_deg: float = 55.0) -> Cameras:
    """Two views of :func:`procedural_scene`, ~0.7 units apart (~3 units from the objects), both looking at them (the
    'two photos')."""
    f = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
    target = torch.tensor([0.0, 0.35, 3.0])
    eyes = torch.tensor([[-0.35, -0.35, 0.0], [0.35, -0.28, 0.1]])
    c2w = look_at(eyes, target.expand(2, 3))
    K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    return Cameras(c2w=c2w, K=K, width=width, height=height, near=0.5, far=10.0, names=["view_a", "view_b"])
