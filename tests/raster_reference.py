"""Independent brute-force Gaussian-splat renderer used only by the tests.

Written separately from vscene_engine.render.rasterize: no tiles, no footprint bounds, no log-space scans. Every Gaussian is
evaluated at every pixel. Two variants:

* ``render_loop``: literal per-pixel Python loop in float64 following the 3DGS/gsplat kernel step by step
  (tiny images only);
* ``render_dense``: the same rules vectorised as [G, H*W] with ``torch.cumprod`` (medium images).

Shared rules (the definition of the image): OpenCV c2w cameras, pixel centres at +0.5, EWA Jacobian with x/y clamped to
1.3x the field of view, dilation eps2d, alpha = min(0.999, o exp(-sigma)), skip alpha < 1/255, stop before T <= 1e-4,
colour max(SH + 0.5, 0) with SH evaluated by vscene_engine.core.sh.eval_sh (that function is tested on its own against the
orthonormality of the basis).
"""
from __future__ import annotations

import torch

from vscene_engine.core.sh import eval_sh


def _hamilton(p, q):
    pw, px, py, pz = p.unbind(-1)
    qw, qx, qy, qz = q.unbind(-1)
    return torch.stack(
        [
            pw * qw - px * qx - py * qy - pz * qz,
            pw * qx + px * qw + py * qz - pz * qy,
            pw * qy - px * qz + py * qw + pz * qx,
            pw * qz + px * qy - py * qx + pz * qw,
        ],
        -1,
    )


def _rot_from_quat(q):
    """Rotation matrix columns = q e_i q^* (Hamilton products), q wxyz of any norm."""
    q = q / q.norm(dim=-1, keepdim=True)
    conj = q * torch.tensor([1.0, -1.0, -1.0, -1.0], dtype=q.dtype)
    cols = []
    for i in range(3):
        e = torch.zeros(q.shape[:-1] + (4,), dtype=q.dtype)
        e[..., i + 1] = 1.0
        cols.append(_hamilton(_hamilton(q, e), conj)[..., 1:])
    return torch.stack(cols, -1)


def _screen_space(means, scales, quats, opac, sh, c2w, K, W, H, eps2d, near, antialiased):
    w2c = torch.linalg.inv(c2w)
    pc = (w2c[:3, :3] @ means.T).T + w2c[:3, 3]
    R = _rot_from_quat(quats)
    cov = R @ torch.diag_embed(scales**2) @ R.transpose(-1, -2)
    cov_c = w2c[:3, :3] @ cov @ w2c[:3, :3].T
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    out = []
    for g in range(means.shape[0]):
        x, y, z = pc[g]
        if z < near:
            out.append(None)
            continue
        limx = (float((W - cx) / fx) + 0.3 * float(W / (2 * fx)), float(cx / fx) + 0.3 * float(W / (2 * fx)))
        limy = (float((H - cy) / fy) + 0.3 * float(H / (2 * fy)), float(cy / fy) + 0.3 * float(H / (2 * fy)))
        u = min(max(float(x / z), -limx[1]), limx[0])
        v = min(max(float(y / z), -limy[1]), limy[0])
        J = torch.tensor([[float(fx / z), 0.0, -float(fx) * u / float(z)], [0.0, float(fy / z), -float(fy) * v / float(z)]],
                         dtype=means.dtype)
        c2 = J @ cov_c[g] @ J.T
        c2b = c2 + eps2d * torch.eye(2, dtype=means.dtype)
        det = torch.linalg.det(c2b)
        if det <= 0:
            out.append(None)
            continue
        o = opac[g]
        if antialiased:
            o = o * torch.sqrt(torch.clamp(torch.linalg.det(c2) / det, min=0))
        inv = torch.linalg.inv(c2b)
        mean2 = torch.stack([fx * x / z + cx, fy * y / z + cy])
        col = torch.clamp(eval_sh(sh[g : g + 1], (means[g] - c2w[:3, 3])[None])[0] + 0.5, min=0)
        out.append((float(z), mean2, inv, o, col))
    return out


def render_loop(scene, c2w, K, W, H, bg=(0.0, 0.0, 0.0), eps2d=0.3, near=0.01, antialiased=False):
    """Literal per-pixel loop. Returns rgb [H,W,3], alpha [H,W], depth [H,W] in float64."""
    d = torch.float64
    args = [t.detach().to(d) for t in (scene.means, scene.scales, scene.quats, scene.opacities, scene.sh)]
    ss = _screen_space(*args, c2w.to(d), K.to(d), W, H, eps2d, near, antialiased)
    items = sorted([(s[0], i, s) for i, s in enumerate(ss) if s is not None], key=lambda t: (t[0], t[1]))
    rgb = torch.zeros(H, W, 3, dtype=d)
    alpha = torch.zeros(H, W, dtype=d)
    depth = torch.zeros(H, W, dtype=d)
    bgt = torch.tensor(bg, dtype=d)
    for j in range(H):
        for i in range(W):
            T = 1.0
            c = torch.zeros(3, dtype=d)
            dz = 0.0
            for z, _, (_, m, inv, o, col) in items:
                dlt = torch.tensor([i + 0.5, j + 0.5], dtype=d) - m
                sigma = 0.5 * float(dlt @ inv @ dlt)
                if sigma < 0:
                    continue
                a = min(0.999, float(o) * torch.exp(torch.tensor(-sigma, dtype=d)).item())
                if a < 1.0 / 255.0:
                    continue
                nT = T * (1 - a)
                if nT <= 1e-4:
                    break
                c = c + a * T * col
                dz += a * T * z
                T = nT
            rgb[j, i] = c + T * bgt
            alpha[j, i] = 1 - T
            depth[j, i] = dz / (1 - T) if T < 1 else 0.0
    return rgb, alpha, depth


def render_dense(scene, c2w, K, W, H, bg=(0.0, 0.0, 0.0), eps2d=0.3, near=0.01, antialiased=False):
    """Vectorised brute force over [G, H*W] with cumprod. Returns rgb [H,W,3], alpha [H,W], depth [H,W] float64."""
    d = torch.float64
    args = [t.detach().to(d) for t in (scene.means, scene.scales, scene.quats, scene.opacities, scene.sh)]
    ss = _screen_space(*args, c2w.to(d), K.to(d), W, H, eps2d, near, antialiased)
    items = sorted([(s[0], i, s) for i, s in enumerate(ss) if s is not None], key=lambda t: (t[0], t[1]))
    bgt = torch.tensor(bg, dtype=d)
    if not items:
        return bgt.expand(H, W, 3).clone(), torch.zeros(H, W, dtype=d), torch.zeros(H, W, dtype=d)
    z = torch.tensor([it[0] for it in items], dtype=d)
    m = torch.stack([it[2][1] for it in items])
    inv = torch.stack([it[2][2] for it in items])
    o = torch.stack([torch.as_tensor(it[2][3], dtype=d) for it in items])
    col = torch.stack([it[2][4] for it in items])
    jj, ii = torch.meshgrid(torch.arange(H, dtype=d) + 0.5, torch.arange(W, dtype=d) + 0.5, indexing="ij")
    pix = torch.stack([ii.reshape(-1), jj.reshape(-1)], -1)  # [P,2]
    dl = pix[None] - m[:, None]  # [G,P,2]
    sigma = 0.5 * torch.einsum("gpi,gij,gpj->gp", dl, inv, dl)
    a = torch.clamp(o[:, None] * torch.exp(-sigma), max=0.999)
    a = torch.where((sigma >= 0) & (a >= 1.0 / 255.0), a, torch.zeros_like(a))
    T_incl = torch.cumprod(1 - a, 0)
    T_excl = torch.cat([torch.ones_like(T_incl[:1]), T_incl[:-1]], 0)
    keep = T_incl > 1e-4
    keep = torch.cumprod(keep.to(d), 0)  # once stopped, stays stopped
    w = a * T_excl * keep
    T_fin = 1 - w.sum(0)
    rgb = (w[..., None] * col[:, None]).sum(0) + T_fin[:, None] * bgt
    acc = w.sum(0)
    dep = torch.where(acc > 0, (w * z[:, None]).sum(0) / acc.clamp_min(1e-300), torch.zeros_like(acc))
    return rgb.reshape(H, W, 3), acc.reshape(H, W), dep.reshape(H, W)
