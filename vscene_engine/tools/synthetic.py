"""Scenes the engine makes itself (demo, tests, benchmarks). Entry point: :func:`procedural_scene`.

World convention of these scenes: OpenCV-like, +y is *down* (the ground is the plane y = +1, objects stand above it at
negative y), cameras look along +z towards the objects. Cameras are OpenCV camera-to-world (+x right, +y down,
+z forward) as everywhere in the engine.

Also :func:`depth_to_gaussians`: one Gaussian per pixel of a depth map (the MVSplat output layout) — centre on the
pixel's ray at its depth, scale = pixel footprint (depth / focal), colour from the pixel; and :func:`damage_video`:
a coarse prior's artefacts (misregistration, blur, exposure shift, disocclusion holes, floaters) applied to a video at
a chosen strength, so a replication can draw prior quality per scene.
"""
from __future__ import annotations

import math

import torch

from ..core.cameras import Cameras, look_at
from ..core.gaussians import GaussianScene, rotmat_to_quat
from ..core.sh import rgb_to_sh_dc

__all__ = ["procedural_scene", "demo_cameras", "damage_video"]


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


# ============================================================================================ simulated prior damage
DAMAGE_SHIFT_PX = 3.0  # misregistration (pose error): largest in-plane shift, pixels, at level 1 mid-path
DAMAGE_ROT_DEG = 3.0  # ... and largest in-plane rotation, degrees
DAMAGE_BLUR_PX = 1.5  # blur: Gaussian sigma in pixels at level 1 mid-path
DAMAGE_GAIN = 0.25  # exposure shift: std of the global gain at level 1 (per channel: a fifth of it)
DAMAGE_OFFSET = 0.06  # ... and std of the global offset
DAMAGE_HOLES = 0.25  # disocclusion holes: image fraction at level 1 mid-path (filled with the white background)
DAMAGE_FLOATERS = 10  # floaters: number of opaque blobs at level 1


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """x [F, 3, H, W] blurred per frame with a separable Gaussian of std ``sigma`` [F] pixels (0 = unchanged)."""
    r = 4
    k = torch.arange(-r, r + 1, dtype=x.dtype)
    w = torch.exp(-0.5 * (k[None] / sigma.clamp_min(1e-3)[:, None]) ** 2)  # [F, 2r+1]
    w = torch.where(sigma[:, None] > 1e-3, w, (k[None] == 0).to(x.dtype))
    w = w / w.sum(-1, keepdim=True)
    Fr, C, H, W = x.shape
    y = torch.nn.functional.pad(x, (r, r, r, r), mode="replicate")
    y = sum(w[:, i, None, None, None] * y[..., :, i:i + W] for i in range(2 * r + 1))
    return sum(w[:, i, None, None, None] * y[..., i:i + H, :] for i in range(2 * r + 1))


def damage_video(video: torch.Tensor, level: float, seed: int = 0) -> torch.Tensor:
    """A coarse prior's artefacts at strength ``level`` in [0, 1] (0 = unchanged): video [F, H, W, 3] 0..1 -> same.

    The artefacts grow with the distance from the nearest input view, w(f) = 0.25 + 0.75 sin(pi f / (F - 1)) (a
    3D prior reproduces its input photos best), and are, in order: misregistration (a per-frame in-plane shift and
    rotation, a pose error), blur (Gaussian), exposure shift (global gain / offset, a slight per-channel tint),
    disocclusion holes (blobs of a smooth random field, drifting with the camera, filled with the white background)
    and floaters (small opaque blobs of random colour crossing the view). Deterministic for (level, seed).
    """
    if video.ndim != 4 or video.shape[-1] != 3:
        raise ValueError(f"damage_video: video must be [F, H, W, 3], got {tuple(video.shape)}")
    if not 0.0 <= level <= 1.0:
        raise ValueError(f"damage_video: level must be in [0, 1], got {level}")
    g = torch.Generator().manual_seed(seed)
    Fr, H, W, _ = video.shape
    d = float(level)
    f = torch.arange(Fr, dtype=torch.float32)
    w = 0.25 + 0.75 * torch.sin(math.pi * f / max(Fr - 1, 1))  # [F]
    x = video.permute(0, 3, 1, 2).float()
    # 1. misregistration: one random direction per scene, amplitude ~ w(f)
    direction = torch.randn(2, generator=g)
    direction = direction / direction.norm()
    rot_sign = float(torch.randn(1, generator=g).sign())
    shift = d * DAMAGE_SHIFT_PX * w[:, None] * direction  # [F, 2] pixels
    ang = rot_sign * d * math.radians(DAMAGE_ROT_DEG) * w
    theta = torch.zeros(Fr, 2, 3)
    theta[:, 0, 0], theta[:, 0, 1] = torch.cos(ang), -torch.sin(ang) * H / W
    theta[:, 1, 0], theta[:, 1, 1] = torch.sin(ang) * W / H, torch.cos(ang)
    theta[:, 0, 2], theta[:, 1, 2] = shift[:, 0] * 2 / W, shift[:, 1] * 2 / H
    grid = torch.nn.functional.affine_grid(theta, list(x.shape), align_corners=False)
    x = torch.nn.functional.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    # 2. blur
    x = _gaussian_blur(x, d * DAMAGE_BLUR_PX * w)
    # 3. exposure shift (the same for the whole video: the prior's colours are off)
    gain = 1 + d * DAMAGE_GAIN * (torch.randn(1, generator=g) + 0.2 * torch.randn(3, generator=g))
    offset = d * DAMAGE_OFFSET * torch.randn(1, generator=g)
    x = x * gain[None, :, None, None] + offset
    # 4. disocclusion holes: the top quantile of a smooth random field, drifting across the frames
    field = torch.randn(1, 1, 6, 8, generator=g)
    field = torch.nn.functional.interpolate(field, size=(H + 8, W + 16), mode="bicubic", align_corners=False)[0, 0]
    drift = (f / max(Fr - 1, 1) * 16).round().long()
    for i in range(Fr):
        frac = d * DAMAGE_HOLES * float(torch.sin(math.pi * f[i] / max(Fr - 1, 1)))
        if frac <= 0:
            continue
        crop = field[4:4 + H, int(drift[i]):int(drift[i]) + W]
        hole = crop > torch.quantile(crop.flatten(), 1 - frac)
        x[i][:, hole] = 1.0
    # 5. floaters
    n_fl = int(round(d * DAMAGE_FLOATERS))
    yy, xx = torch.meshgrid(torch.arange(H, dtype=torch.float32), torch.arange(W, dtype=torch.float32), indexing="ij")
    for _ in range(n_fl):
        p0 = torch.rand(2, generator=g) * torch.tensor([W, H])
        vel = (torch.rand(2, generator=g) - 0.5) * torch.tensor([W, H]) * 0.5 / max(Fr - 1, 1)
        rad = 0.8 + 1.7 * float(torch.rand(1, generator=g))
        col = torch.rand(3, generator=g)
        for i in range(Fr):
            c = p0 + vel * i
            a = 0.9 * torch.exp(-((xx - c[0]) ** 2 + (yy - c[1]) ** 2) / (2 * rad ** 2))
            x[i] = x[i] * (1 - a) + col[:, None, None] * a
    return x.clamp(0, 1).permute(0, 2, 3, 1).contiguous()
