"""Fit a Gaussian scene to posed images (3D Gaussian Splatting optimisation, pure torch).

Entry point: :func:`fit_scene` ``(images, cameras, init=None, ...) -> FitResult``.

What it does (3DGS, Kerbl et al. 2023, simplified where noted):

* Trainable raw parameters (:class:`GaussianParams`): ``means``, ``log_scales``, ``quats`` (raw, normalised in the
  forward pass), ``opacity_logits``, ``sh_dc [N,1,3]`` and ``sh_rest [N,K-1,3]``, each its own
  ``torch.optim.Adam`` parameter group (``eps=1e-15`` as in 3DGS; the fused implementation on CPU and CUDA).
* Loss :func:`vscene_engine.render.losses.photometric_loss` ``(1-λ)·L1 + λ·(1-SSIM)/2`` of the rendered views
  (:func:`vscene_engine.render.rasterize.render`) against the targets, composited over ``background``.
* Learning rates (:data:`DEFAULT_LR`, 3DGS defaults): means ``1.6e-4·extent`` decaying log-linearly to
  ``1.6e-6·extent`` over ``iters``; sh_dc 2.5e-3; sh_rest sh_dc/20; opacity 5e-2; scale 5e-3; rotation 1e-3.
  ``extent`` is 3DGS's camera extent: 1.1 x the largest distance of a camera centre from their mean.
* Active SH degree starts at 0 and rises by one every ``sh_every`` iterations up to ``sh_degree``.
* Views are visited in seeded random permutations (``batch_views`` per iteration); all randomness (init, view
  order, split sampling) comes from one ``torch.Generator`` seeded with ``seed``.
* Optional densification (``densify=dict(...)``, keys in :data:`DEFAULT_DENSIFY`): every ``densify_every``
  iterations in ``[densify_from, densify_until)``, Gaussians whose mean view-space positional gradient exceeds
  ``grad_threshold`` are cloned (small: max scale <= ``percent_dense·extent``) or split in two (large; children
  sampled from the parent Gaussian, scales / 1.6); Gaussians with opacity < ``min_opacity`` or a max scale above
  ``max_world_scale·extent`` are pruned; opacities are optionally reset to <= 0.01 every ``opacity_reset_every``.
  Criterion (our rasterizer does not expose the 2D means): the per-view gradient of the 3D mean is rotated into the
  camera frame and its x/y components are mapped to NDC units, ``g_ndc = (g_x·z/fx·W/2, g_y·z/fy·H/2)`` — the
  first-order projection of the 3DGS screen-space gradient; its norm is averaged over the views in whose (1.3x
  widened) frustum the Gaussian's centre lies. The optimiser is rebuilt on every change of the parameter set:
  kept Gaussians carry their Adam moments, new ones start from zeros (as 3DGS does).
* A non-finite loss or parameter raises RuntimeError (lower the learning rates).

Random initialisation (:func:`random_init`): ``n_init`` points uniform in a box (``bbox=(lo, hi)`` or
:func:`default_bbox`: a cube centred on the point nearest to all optical axes, half-size
``min(0.5·mean camera distance, median over cameras of distance·sin(half-FOV))`` — the latter is the radius of the
sphere around that point that every camera sees, the cameras' common view region), random colours, opacity 0.1,
identity rotations, isotropic scale ``(box volume / n)^(1/3)`` times ``init_scale`` (default 0.7, the expected mean
distance to the 3 nearest neighbours of uniformly random points, which is what 3DGS initialises from).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Optional, Sequence, Union

import torch
import torch.nn as nn

from ..core.cameras import Cameras
from ..core.gaussians import GaussianScene, all_finite, quat_normalize, quat_to_rotmat
from ..render.losses import photometric_loss, psnr
from ..render.rasterize import render
from ..core.runtime import Progress, as_progress
from ..core.sh import MAX_SH_DEGREE, num_sh_coeffs, rgb_to_sh_dc

__all__ = [
    "fit_scene", "FitConfig", "FitResult", "GaussianParams", "DEFAULT_LR", "DEFAULT_DENSIFY", "default_bbox", "random_init",
    "camera_extent",
]

#: 3DGS learning rates. ``means``/``means_final`` are multiplied by the camera extent; ``sh_rest=None`` -> sh_dc/20.
DEFAULT_LR = {
    "means": 1.6e-4,
    "means_final": 1.6e-6,
    "sh_dc": 2.5e-3,
    "sh_rest": None,
    "opacity": 5e-2,
    "scale": 5e-3,
    "rot": 1e-3,
}

#: Densification defaults (3DGS values; iteration numbers refer to a 30k-iteration schedule, scale them for short
#: fits). ``max_gaussians`` caps the count (None: no cap); when more candidates qualify the highest gradients win.
DEFAULT_DENSIFY = {
    "densify_from": 500,
    "densify_until": 15000,
    "densify_every": 100,
    "grad_threshold": 2e-4,
    "percent_dense": 0.01,
    "min_opacity": 0.005,
    "max_world_scale": 0.1,
    "opacity_reset_every": 3000,
    "max_gaussians": None,
}

_GROUPS = ("means", "log_scales", "quats", "opacity_logits", "sh_dc", "sh_rest")
_LR_KEY = {"means": "means", "log_scales": "scale", "quats": "rot", "opacity_logits": "opacity", "sh_dc": "sh_dc",
           "sh_rest": "sh_rest"}
_MOMENT_KEYS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


# ------------------------------------------------------------------------------------------------ settings
@dataclass(frozen=True)
class FitConfig:
    """Settings of :func:`fit_scene` (defaults: 3DGS's).

    iters: optimisation steps. lr: overrides of :data:`DEFAULT_LR` keys (None: the defaults).
    lambda_dssim: SSIM weight of :func:`~vscene_engine.render.losses.photometric_loss`.
    sh_degree: final SH degree (0..4); the active degree rises by 1 every ``sh_every`` iterations (3DGS: 1000).
    batch_views: views per iteration (their losses are averaged). seed: seeds all randomness.
    densify: None (off), True (:data:`DEFAULT_DENSIFY`) or a dict overriding some of its keys.
    n_init, bbox, init_scale: the random initialisation when no ``init`` scene is given: :func:`random_init` with
        ``n_init`` points in ``bbox`` (``(lo, hi)`` or :func:`default_bbox`), scale
        ``init_scale·(box volume/n)^(1/3)``.
    eval_every: every this many iterations (and at the last one) also measure the mean PSNR on the evaluation views
        -> ``history[i]["eval_psnr"]`` (0: never).
    scene_extent: overrides :func:`camera_extent` (scales the means lr and the densify size thresholds).
    """

    iters: int = 3000
    lr: Optional[dict] = None
    lambda_dssim: float = 0.2
    sh_degree: int = 3
    sh_every: int = 1000
    batch_views: int = 1
    seed: int = 0
    densify: Union[None, bool, dict] = None
    n_init: int = 20000
    bbox: Optional[tuple] = None
    init_scale: float = 0.7
    eval_every: int = 0
    scene_extent: Optional[float] = None


# ------------------------------------------------------------------------------------------------ results
@dataclass
class FitResult:
    """Result of :func:`fit_scene`.

    scene: fitted :class:`GaussianScene` (activated values, detached). history: one dict per iteration with
    ``iter`` (1-based), ``loss``, ``psnr`` (of that iteration's training views), ``n_gaussians``, ``sh_degree``;
    iterations at which an evaluation ran also have ``eval_psnr``. psnr_per_view: final PSNR of every training view
    (rendered after the last iteration). wall_time_s: seconds spent in fit_scene.
    """

    scene: GaussianScene
    history: list = field(default_factory=list)
    psnr_per_view: list = field(default_factory=list)
    wall_time_s: float = 0.0


# ------------------------------------------------------------------------------------------------ geometry helpers
def camera_extent(cameras: Cameras) -> float:
    """3DGS's scene extent: 1.1 x the largest distance of a camera centre from the mean centre (1.0 if that is 0)."""
    c = cameras.centers.detach().double()
    r = float((c - c.mean(0)).norm(dim=-1).max()) * 1.1 if len(cameras) else 0.0
    return r if r > 1e-8 else 1.0


def default_bbox(cameras: Cameras) -> tuple[torch.Tensor, torch.Tensor]:
    """Default init box ``(lo [3], hi [3])`` (float64, CPU) from the cameras (see the module docstring).

    Centre: least-squares point nearest to all optical axes. When the axes are (nearly) parallel — a
    forward-facing capture — that point is ill-defined; then the centre is the mean camera centre moved along the
    mean viewing direction by the middle of the cameras' near/far range (far capped at 100·near).
    """
    if len(cameras) == 0:
        raise ValueError("default_bbox: no cameras")
    c = cameras.centers.detach().double().cpu()
    d = cameras.forward.detach().double().cpu()
    d = d / d.norm(dim=-1, keepdim=True)
    P = torch.eye(3, dtype=torch.float64) - d[:, :, None] * d[:, None, :]  # [N,3,3] projectors orthogonal to axes
    A = P.sum(0)
    b = (P @ c[:, :, None]).sum(0).squeeze(-1)
    ev = torch.linalg.eigvalsh(A)
    if len(cameras) >= 2 and float(ev[0]) > 1e-3 * float(ev[-1]):
        center = torch.linalg.solve(A, b)
    else:
        near = cameras.near.detach().double().cpu()
        far = torch.minimum(cameras.far.detach().double().cpu(), near * 100)
        depth = float(((near + far) / 2).mean())
        fwd = d.mean(0)
        fwd = fwd / fwd.norm().clamp_min(1e-12)
        center = c.mean(0) + fwd * depth
    dist = (c - center).norm(dim=-1)
    K = cameras.K.detach().double().cpu()
    half_fov = torch.minimum(torch.atan(cameras.width / (2 * K[:, 0, 0])),
                             torch.atan(cameras.height / (2 * K[:, 1, 1])))
    seen = float((dist * torch.sin(half_fov)).median())
    r = min(0.5 * float(dist.mean()), seen)
    if not r > 0:
        r = 1.0
    return center - r, center + r


def random_init(cameras: Cameras, n: int, *, bbox=None, sh_degree: int = 0, init_scale: float = 0.7,
                opacity: float = 0.1, generator: torch.Generator | None = None,
                dtype: torch.dtype = torch.float32) -> GaussianScene:
    """``n`` random Gaussians in ``bbox`` (``(lo, hi)`` 3-vectors; default :func:`default_bbox`), on the CPU."""
    if n < 1:
        raise ValueError(f"random_init: n must be >= 1, got {n}")
    if bbox is None:
        lo, hi = default_bbox(cameras)
    else:
        try:
            lo, hi = (torch.as_tensor(v, dtype=torch.float64).reshape(3).cpu() for v in bbox)
        except Exception:
            raise ValueError(f"bbox must be (lo, hi) with two 3-vectors, got {bbox!r}") from None
    if not bool((hi > lo).all()) or not bool(torch.isfinite(lo).all() & torch.isfinite(hi).all()):
        raise ValueError(f"bbox must satisfy lo < hi (finite) on every axis, got lo={lo.tolist()}, hi={hi.tolist()}")
    g = generator
    f64 = torch.float64
    means = lo + (hi - lo) * torch.rand(n, 3, generator=g, dtype=f64)
    vol = float((hi - lo).prod())
    scale = init_scale * (vol / n) ** (1.0 / 3.0)
    rgb = torch.rand(n, 3, generator=g, dtype=f64)
    sh = torch.zeros(n, num_sh_coeffs(sh_degree), 3, dtype=f64)
    sh[:, 0] = rgb_to_sh_dc(rgb)
    quats = torch.zeros(n, 4, dtype=f64)
    quats[:, 0] = 1
    scales = torch.full((n, 3), scale, dtype=f64)
    opac = torch.full((n,), float(opacity), dtype=f64)
    return GaussianScene(means, scales, quats, opac, sh).to(dtype=dtype)


# ------------------------------------------------------------------------------------------------ trainable params
def _adam(groups: list, device: torch.device) -> torch.optim.Adam:
    """Adam with 3DGS's ``eps=1e-15``; on CPU and CUDA the fused single-kernel implementation (the same update rule,
    ~4x faster than the per-tensor one on a CPU at 221k Gaussians), elsewhere torch's default."""
    if device.type in ("cpu", "cuda"):
        try:
            return torch.optim.Adam(groups, lr=0.0, eps=1e-15, fused=True)
        except (RuntimeError, TypeError, ValueError):  # a torch without fused Adam for this device
            pass
    return torch.optim.Adam(groups, lr=0.0, eps=1e-15)


class GaussianParams:
    """Raw trainable parameters of a Gaussian scene plus their Adam optimiser.

    ``params[name]`` for ``name`` in ``means, log_scales, quats, opacity_logits, sh_dc, sh_rest`` (``sh_rest`` has
    ``K-1`` rows per Gaussian; it is left out of the optimiser when ``K == 1``). ``lrs`` maps the same names to
    learning rates. Structural changes go through :meth:`rebuild`, which keeps the optimiser consistent.
    """

    def __init__(self, scene: GaussianScene, lrs: dict, device=None):
        scene = scene.to(device=device, dtype=torch.float32)
        eps = 1e-7
        raw = {
            "means": scene.means,
            "log_scales": torch.log(scene.scales.clamp_min(1e-12)),
            "quats": quat_normalize(scene.quats),
            "opacity_logits": torch.logit(scene.opacities.clamp(eps, 1 - eps)),
            "sh_dc": scene.sh[:, :1],
            "sh_rest": scene.sh[:, 1:],
        }
        self.params = {k: nn.Parameter(v.detach().clone().contiguous()) for k, v in raw.items()}
        groups = [{"params": [self.params[k]], "lr": float(lrs[k]), "name": k}
                  for k in _GROUPS if k != "sh_rest" or self.params[k].shape[1] > 0]
        self.optimizer = _adam(groups, self.params["means"].device)

    def __len__(self) -> int:
        return int(self.params["means"].shape[0])

    def scene(self) -> GaussianScene:
        """Activated, differentiable scene (quaternions normalised)."""
        p = self.params
        return GaussianScene(p["means"], torch.exp(p["log_scales"]), quat_normalize(p["quats"]),
                             torch.sigmoid(p["opacity_logits"]), torch.cat([p["sh_dc"], p["sh_rest"]], 1))

    def export(self) -> GaussianScene:
        """Detached activated scene."""
        with torch.no_grad():
            return self.scene().detach().clone()

    def set_lr(self, name: str, lr: float) -> None:
        for g in self.optimizer.param_groups:
            if g["name"] == name:
                g["lr"] = float(lr)

    def all_finite(self) -> bool:
        """True when every raw parameter and the activated scene are finite with positive scales."""
        if not all(all_finite(p) for p in self.params.values()):
            return False
        with torch.no_grad():
            s = torch.exp(self.params["log_scales"])
            return all_finite(s) and (s.numel() == 0 or float(s.amin()) > 0)

    def rebuild(self, keep: torch.Tensor, extra: Optional[dict] = None) -> None:
        """Replace the parameter set by ``params[keep]`` followed by ``extra`` rows.

        ``keep``: long index (or bool mask) of the Gaussians kept, in their new order. ``extra``: raw values of new
        Gaussians, a dict with every name of :attr:`params` (same trailing shapes), or None. Adam moments of kept
        Gaussians are carried over; new Gaussians start with zero moments; the step counter is kept.
        """
        dev = self.params["means"].device
        keep = torch.as_tensor(keep, device=dev)
        if keep.dtype == torch.bool:
            keep = keep.nonzero().squeeze(1)
        keep = keep.long()
        n_new = 0 if extra is None else int(extra["means"].shape[0])
        new_params = {}
        for name, p in self.params.items():
            data = p.detach()[keep]
            if n_new:
                add = extra[name].to(device=dev, dtype=data.dtype)
                if tuple(add.shape[1:]) != tuple(data.shape[1:]) or add.shape[0] != n_new:
                    raise ValueError(f"rebuild: extra[{name!r}] has shape {tuple(add.shape)}, expected "
                                     f"[{n_new}, {', '.join(map(str, data.shape[1:]))}]")
                data = torch.cat([data, add], 0)
            new_params[name] = nn.Parameter(data.contiguous())
        for g in self.optimizer.param_groups:
            old = g["params"][0]
            name = g["name"]
            newp = new_params[name]
            st = self.optimizer.state.pop(old, None)
            if st:
                ns = {}
                for k, v in st.items():
                    if k in _MOMENT_KEYS and torch.is_tensor(v) and v.shape == old.shape:
                        v = v[keep]
                        if n_new:
                            v = torch.cat([v, v.new_zeros((n_new,) + tuple(v.shape[1:]))], 0)
                        ns[k] = v.contiguous()
                    else:
                        ns[k] = v
                self.optimizer.state[newp] = ns
            g["params"][0] = newp
        self.params = new_params

    def reset_opacity(self, max_opacity: float = 0.01) -> None:
        """3DGS opacity reset: ``opacity <- min(opacity, max_opacity)``; the opacity Adam moments are zeroed."""
        p = self.params["opacity_logits"]
        with torch.no_grad():
            p.copy_(torch.minimum(p, torch.logit(torch.tensor(max_opacity, dtype=p.dtype, device=p.device))))
        st = self.optimizer.state.get(p)
        if st:
            for k in _MOMENT_KEYS:
                if k in st:
                    st[k].zero_()


# ------------------------------------------------------------------------------------------------ densification
class _DensifyStats:
    """Accumulated view-space gradient norms (NDC units) and visibility counts per Gaussian."""

    def __init__(self, n: int, device):
        self.grad = torch.zeros(n, device=device, dtype=torch.float64)
        self.count = torch.zeros(n, device=device, dtype=torch.float64)

    def add(self, g_means: torch.Tensor, means: torch.Tensor, cam: Cameras) -> None:
        """Add one view: ``g_means [N,3]`` is the gradient of that view's loss w.r.t. the 3D means."""
        c2w = cam.c2w[0].to(means)
        K = cam.K[0].to(means)
        R = c2w[:3, :3]
        p_cam = (means - c2w[:3, 3]) @ R  # R^T (x - t)
        g_cam = g_means @ R
        z = p_cam[:, 2]
        W, H = cam.width, cam.height
        fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
        zc = z.clamp_min(1e-6)
        u = fx * p_cam[:, 0] / zc + cx
        v = fy * p_cam[:, 1] / zc + cy
        vis = (z > 0.2) & (u > -0.15 * W) & (u < 1.15 * W) & (v > -0.15 * H) & (v < 1.15 * H)
        gx = g_cam[:, 0] * zc / fx * (W / 2)
        gy = g_cam[:, 1] * zc / fy * (H / 2)
        gn = torch.sqrt(gx * gx + gy * gy).double()
        self.grad += torch.where(vis, gn, torch.zeros_like(gn))
        self.count += vis.double()

    def mean(self) -> torch.Tensor:
        return self.grad / self.count.clamp_min(1)


def _last_densify_step(cfg: dict, iters: int) -> int:
    """The last iteration <= ``iters`` at which :func:`fit_scene` densifies (0: none, e.g. a 150-iteration fit with
    the default ``densify_from`` 500): the statistics are only collected up to it."""
    every = int(cfg["densify_every"])
    last = min(int(iters), int(cfg["densify_until"]) - 1) // every * every
    return last if last >= int(cfg["densify_from"]) and last >= 1 else 0


def _densify_and_prune(model: GaussianParams, stats: _DensifyStats, cfg: dict, extent: float,
                       generator: torch.Generator) -> dict:
    """One 3DGS densify + prune step on ``model``; returns counts ``{cloned, split, pruned}``."""
    p = model.params
    dev = p["means"].device
    with torch.no_grad():
        n = len(model)
        grads = stats.mean()
        scales = torch.exp(p["log_scales"])
        smax = scales.amax(1)
        opac = torch.sigmoid(p["opacity_logits"])
        prune = opac < cfg["min_opacity"]
        if cfg.get("max_world_scale"):
            prune |= smax > cfg["max_world_scale"] * extent
        high = (grads >= cfg["grad_threshold"]) & ~prune
        small = smax <= cfg["percent_dense"] * extent
        clone = high & small
        split = high & ~small
        cap = cfg.get("max_gaussians")
        if cap is not None:
            # net growth: +1 per clone, +1 per split (2 children replace 1); pruning frees room
            room = max(int(cap) - (n - int(prune.sum())), 0)
            cand = (clone | split).nonzero().squeeze(1)
            if cand.numel() > room:
                top = cand[torch.argsort(grads[cand], descending=True)[:room]]
                sel = torch.zeros_like(clone)
                sel[top] = True
                clone &= sel
                split &= sel
        ci = clone.nonzero().squeeze(1)
        si = split.nonzero().squeeze(1)
        extra = {k: torch.cat([v[ci], v[si], v[si]], 0) for k, v in p.items()}
        if si.numel():
            s = scales[si].repeat(2, 1)
            noise = torch.randn(s.shape, generator=generator, dtype=torch.float32).to(dev) * s
            Rm = quat_to_rotmat(p["quats"][si]).repeat(2, 1, 1)
            nc = ci.numel()
            extra["means"][nc:] = p["means"][si].repeat(2, 1) + (Rm @ noise[:, :, None]).squeeze(-1)
            extra["log_scales"][nc:] = torch.log(s / (0.8 * 2))
        keep = (~prune & ~split).nonzero().squeeze(1)
        model.rebuild(keep, extra)
    return {"cloned": int(ci.numel()), "split": int(si.numel()), "pruned": int(prune.sum())}


# ------------------------------------------------------------------------------------------------ validation
def _check_inputs(images, cameras) -> torch.Tensor:
    if not isinstance(cameras, Cameras):
        raise ValueError(f"cameras must be a vscene_engine Cameras batch, got {type(cameras).__name__}")
    if not isinstance(images, torch.Tensor):
        try:
            images = torch.as_tensor(images)
        except Exception:
            raise ValueError(f"images must be a tensor [V,H,W,3] in 0..1, got {type(images).__name__}") from None
    if images.dim() == 3 and images.shape[-1] in (3, 4):
        images = images[None]
    if images.dim() != 4:
        raise ValueError(f"images must have shape [V,H,W,3] (one image per camera), got {tuple(images.shape)}")
    if images.shape[-1] == 4:
        raise ValueError("images have 4 channels (RGBA); composite them over the fit background first: "
                         "rgb * a + background * (1 - a), and pass the same background= to fit_scene")
    if images.shape[-1] != 3:
        raise ValueError(f"images must have 3 colour channels in the last axis [V,H,W,3], got {tuple(images.shape)}")
    if images.numel() == 0:
        raise ValueError(f"images is empty (shape {tuple(images.shape)}); give at least one non-empty view")
    if not images.is_floating_point():
        if images.dtype == torch.uint8:
            raise ValueError("images are uint8; convert to float in 0..1 first (images.float() / 255)")
        images = images.float()
    if images.shape[0] != len(cameras):
        raise ValueError(f"got {images.shape[0]} images but {len(cameras)} cameras; give exactly one camera per "
                         f"image, in the same order")
    H, W = int(images.shape[1]), int(images.shape[2])
    if (W, H) != (int(cameras.width), int(cameras.height)):
        raise ValueError(f"images are {W}x{H} (WxH) but the cameras are {cameras.width}x{cameras.height}; resize "
                         f"the images or use cameras.resized({W}, {H}) so both describe the same pixels")
    if not bool(torch.isfinite(images).all()):
        raise ValueError("images contain NaN/inf values")
    lo, hi = float(images.min()), float(images.max())
    if lo < -1e-3 or hi > 1 + 1e-3:
        hint = " (they look like 0..255 values: divide by 255)" if hi > 1.5 else ""
        raise ValueError(f"images must be in 0..1, got range {lo:.4g}..{hi:.4g}{hint}")
    cameras.validate()
    return images.clamp(0, 1)


def _merge_lr(lr: Optional[dict], extent: float) -> tuple[dict, float, float]:
    cfg = dict(DEFAULT_LR)
    if lr:
        unknown = set(lr) - set(cfg)
        if unknown:
            raise ValueError(f"unknown lr key(s) {sorted(unknown)}; valid keys: {sorted(cfg)}")
        cfg.update({k: v for k, v in lr.items()})
    if cfg["sh_rest"] is None:
        cfg["sh_rest"] = cfg["sh_dc"] / 20.0
    for k, v in cfg.items():
        if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
            raise ValueError(f"lr[{k!r}] must be a finite number >= 0, got {v!r}")
    m0, m1 = cfg["means"] * extent, cfg["means_final"] * extent
    lrs = {g: cfg[_LR_KEY[g]] for g in _GROUPS}
    lrs["means"] = m0
    return lrs, m0, m1


def _merge_densify(densify) -> Optional[dict]:
    if densify is None or densify is False:
        return None
    cfg = dict(DEFAULT_DENSIFY)
    if isinstance(densify, dict):
        unknown = set(densify) - set(cfg)
        if unknown:
            raise ValueError(f"unknown densify key(s) {sorted(unknown)}; valid keys: {sorted(cfg)}")
        cfg.update(densify)
    elif densify is not True:
        raise ValueError(f"densify must be None, True or a dict of {sorted(cfg)}, got {densify!r}")
    if int(cfg["densify_every"]) < 1:
        raise ValueError("densify['densify_every'] must be >= 1")
    return cfg


# ------------------------------------------------------------------------------------------------ the fit
def _torch_glue_threads(dev: torch.device):
    """On a CPU where the compiled (numba) rasterizer is used: torch ops on ``raster_numba.TORCH_GLUE_THREADS``
    intra-op threads for the duration (the rasterizer's own kernels keep torch's thread setting). torch's OpenMP pool
    spin-waits at every op's barrier, so with a CPU-bound neighbour (a browser) the fit's many small ops — loss, SSIM,
    Adam, densify statistics — ran 2-10x slower on 2 threads than on 1 (measured, 221k Gaussians, 2 busy cores).
    Elsewhere (GPU, or the torch rasterizer) nothing changes."""
    from contextlib import nullcontext

    from ..render import raster_numba

    if dev.type == "cpu" and raster_numba.usable():
        return raster_numba.torch_threads(raster_numba.TORCH_GLUE_THREADS)
    return nullcontext()


def fit_scene(
    images: torch.Tensor,
    cameras: Cameras,
    init: Optional[GaussianScene] = None,
    config: Optional[FitConfig] = None,
    *,
    background: Sequence[float] = (0.0, 0.0, 0.0),
    eval_images: Optional[torch.Tensor] = None,
    eval_cameras: Optional[Cameras] = None,
    final_eval: bool = True,
    history_out: Optional[list] = None,
    progress: Optional[Progress] = None,
    device=None,
) -> FitResult:
    """Optimise a Gaussian scene so that its renders match ``images`` from ``cameras``.

    Args:
        images: ``[V,H,W,3]`` float in 0..1, one per camera (RGBA must be composited over ``background`` first).
        cameras: :class:`Cameras` with ``V`` views of ``width x height == W x H``.
        init: starting scene; None -> a random initialisation (``config.n_init`` points, see :class:`FitConfig`).
        config: :class:`FitConfig` (None: its defaults).
        background: RGB the renders are composited over (use the images' background: (1,1,1) for NeRF-synthetic).
        eval_images, eval_cameras: the views of ``config.eval_every`` (default: all training views). Renders are
            clamped to 0..1 before every PSNR.
        final_eval: render every training view at the end for :attr:`FitResult.psnr_per_view`.
        history_out: optional list that receives the history records live (before ``progress.update``); it is
            also the list returned as :attr:`FitResult.history`.
        progress: :class:`~vscene_engine.core.runtime.Progress`; ``update(it, iters, stage="fit", loss=, preview=)``
            after every iteration (``it`` 1-based, ``preview [H,W,3]`` the detached render of the iteration's first
            view, clamped to 0..1); ``check_interrupt()`` every iteration and inside rendering (raising aborts).
        device: torch device (default: the images' device).

    Returns:
        :class:`FitResult` (scene with activated, detached values on ``device``).

    Raises:
        ValueError for inconsistent inputs; RuntimeError when the loss or a parameter becomes non-finite.
    """
    c = config if config is not None else FitConfig()
    if not isinstance(c, FitConfig):
        raise ValueError(f"config must be a FitConfig, got {type(c).__name__}")
    iters, lr, lambda_dssim, sh_degree, sh_every, batch_views, seed, densify = (
        c.iters, c.lr, c.lambda_dssim, c.sh_degree, c.sh_every, c.batch_views, c.seed, c.densify)
    n_init, bbox, init_scale, eval_every, scene_extent = c.n_init, c.bbox, c.init_scale, c.eval_every, c.scene_extent
    t_start = time.perf_counter()
    progress = as_progress(progress)
    images = _check_inputs(images, cameras)
    iters = int(iters)
    if iters < 1:
        raise ValueError(f"iters must be >= 1, got {iters}")
    V = images.shape[0]
    batch_views = int(batch_views)
    if not 1 <= batch_views <= V:
        raise ValueError(f"batch_views must be in 1..{V} (the number of views), got {batch_views}")
    if not 0 <= int(sh_degree) <= MAX_SH_DEGREE:
        raise ValueError(f"sh_degree must be in 0..{MAX_SH_DEGREE}, got {sh_degree}")
    sh_degree = int(sh_degree)
    if int(sh_every) < 1:
        raise ValueError(f"sh_every must be >= 1, got {sh_every}")
    if (eval_images is None) != (eval_cameras is None):
        raise ValueError("give both eval_images and eval_cameras, or neither")
    if eval_images is not None:
        eval_images = _check_inputs(eval_images, eval_cameras)
    dcfg = _merge_densify(densify)

    dev = torch.device(device) if device is not None else images.device
    gen = torch.Generator().manual_seed(int(seed))
    extent = float(scene_extent) if scene_extent is not None else camera_extent(cameras)
    lrs, lr_m0, lr_m1 = _merge_lr(lr, extent)

    if init is None:
        if int(n_init) < 1:
            raise ValueError(f"n_init must be >= 1, got {n_init}")
        scene0 = random_init(cameras, int(n_init), bbox=bbox, sh_degree=sh_degree, init_scale=init_scale,
                             generator=gen)
        active = 0
    else:
        if not isinstance(init, GaussianScene):
            raise ValueError(f"init must be a GaussianScene or None, got {type(init).__name__}")
        init.validate(strict=False)
        if len(init) == 0:
            raise ValueError("init scene has no Gaussians; pass init=None for a random initialisation")
        active = min(init.sh_degree, sh_degree)
        scene0 = init.with_sh_degree(sh_degree)

    model = GaussianParams(scene0, lrs, device=dev)
    images = images.to(dev)
    cams = cameras.to(device=dev, dtype=torch.float32)
    views = [cams[i] for i in range(V)]
    bg = torch.as_tensor(background, dtype=torch.float32).reshape(-1)
    if bg.numel() == 1:
        bg = bg.expand(3)
    if bg.numel() != 3 or not bool(torch.isfinite(bg).all()):
        raise ValueError(f"background must be 3 finite numbers (RGB in 0..1), got {background!r}")
    bg = bg.to(dev)
    if eval_images is not None:
        ev_imgs, ev_cams = eval_images.to(dev), eval_cameras.to(device=dev, dtype=torch.float32)
    else:
        ev_imgs, ev_cams = images, cams
    stats = _DensifyStats(len(model), dev) if dcfg else None
    last_densify = _last_densify_step(dcfg, iters) if dcfg else 0  # statistics after it are never used

    def render_views(scene, cam, deg):
        return render(scene, cam, bg, sh_degree=deg, progress=progress).rgb

    def evaluate(cam_batch, imgs, deg) -> torch.Tensor:
        with torch.no_grad():
            sc = model.scene()
            vals = [psnr(render_views(sc, cam_batch[i], deg).clamp(0, 1), imgs[i:i + 1])
                    for i in range(len(cam_batch))]
        return torch.stack(vals)

    history = history_out if history_out is not None else []
    # torch ops of the loop (loss, SSIM, autograd glue, Adam, densify statistics) on TORCH_GLUE_THREADS threads
    # when the compiled rasterizer runs (it keeps torch's thread setting for its own kernels): see _torch_glue_threads
    with _torch_glue_threads(dev):
        order = torch.zeros(0, dtype=torch.long)
        for it in range(1, iters + 1):
            progress.check_interrupt()
            # learning-rate schedule of the means (log-linear, 3DGS get_expon_lr_func without delay)
            t = (it - 1) / max(iters - 1, 1)
            model.set_lr("means", math.exp((1 - t) * math.log(max(lr_m0, 1e-30)) + t * math.log(max(lr_m1, 1e-30)))
                         if lr_m0 > 0 else 0.0)
            if it > 1 and (it - 1) % int(sh_every) == 0 and active < sh_degree:
                active += 1
            if order.numel() < batch_views:
                order = torch.cat([order, torch.randperm(V, generator=gen)])
            batch, order = order[:batch_views], order[batch_views:]

            scene = model.scene()
            loss_sum, psnr_sum, preview = 0.0, 0.0, None
            for vi in batch.tolist():
                g_before = None
                collect = stats is not None and it <= last_densify
                if collect and model.params["means"].grad is not None:
                    g_before = model.params["means"].grad.detach().clone()
                pred = render_views(scene, views[vi], active)
                target = images[vi:vi + 1]
                loss = photometric_loss(pred, target, lambda_dssim)
                if not bool(torch.isfinite(loss)):
                    raise RuntimeError(
                        f"fit_scene: the loss became non-finite at iteration {it}; the optimisation diverged. Lower "
                        f"the learning rates (e.g. lr={{'means': {DEFAULT_LR['means'] / 10:g}, 'opacity': "
                        f"{DEFAULT_LR['opacity'] / 10:g}}}) or check the inputs/cameras.")
                (loss / batch_views).backward(retain_graph=len(batch) > 1)
                if collect:
                    g = model.params["means"].grad.detach()
                    g_view = (g if g_before is None else g - g_before) * batch_views
                    stats.add(g_view, model.params["means"].detach(), views[vi])
                loss_sum += float(loss.detach())
                with torch.no_grad():
                    psnr_sum += float(psnr(pred.detach().clamp(0, 1), target))
                if preview is None:
                    preview = pred.detach()[0].clamp(0, 1)
            model.optimizer.step()
            model.optimizer.zero_grad(set_to_none=True)
            if not model.all_finite():
                raise RuntimeError(
                    f"fit_scene: a parameter became non-finite at iteration {it}; the optimisation diverged. Lower the "
                    f"learning rates (lr=...) and retry.")

            rec = {"iter": it, "loss": loss_sum / len(batch), "psnr": psnr_sum / len(batch), "n_gaussians": len(model),
                   "sh_degree": active}

            if dcfg is not None:
                if dcfg["densify_from"] <= it < dcfg["densify_until"] and it % int(dcfg["densify_every"]) == 0:
                    rec["densify"] = _densify_and_prune(model, stats, dcfg, extent, gen)
                    stats = _DensifyStats(len(model), dev)
                    rec["n_gaussians"] = len(model)
                    if len(model) == 0:
                        raise RuntimeError(
                            f"fit_scene: densification pruned every Gaussian at iteration {it} (all opacities < "
                            f"{dcfg['min_opacity']}); lower densify['min_opacity'], start densifying later or check "
                            f"that background= matches the images' background")
                reset = dcfg.get("opacity_reset_every")
                if reset and it % int(reset) == 0 and it < dcfg["densify_until"]:
                    model.reset_opacity(0.01)
                    rec["opacity_reset"] = True

            if eval_every and (it % int(eval_every) == 0 or it == iters):
                rec["eval_psnr"] = float(evaluate(ev_cams, ev_imgs, active).mean())
            history.append(rec)
            progress.update(it, iters, stage="fit", loss=rec["loss"], preview=preview)

        per_view = evaluate(cams, images, active).tolist() if final_eval else []
    return FitResult(model.export(), history, per_view, time.perf_counter() - t_start)
