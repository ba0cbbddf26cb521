"""3D-aware denoising: make a sampler's x0 estimate multi-view consistent by fitting Gaussians to it.

Entry point: :func:`make_3d_aware_hook` ``(decode, encode, cameras, cfg) -> hook(step, n_steps, level, x0) -> x0'``.

What it does (the VideoMV "3D-aware denoising" step, alibaba/VideoMV ``tools/modules/diffusions/diffusion_ddim.py``:
``ddim_sample_loop`` passes the autoencoder to the model at steps 20, 30 and 40 of 50; there the predicted x0 is
decoded, Gaussians are reconstructed from the known cameras, every view is rendered back and re-encoded, and that
replaces x0 before the DDIM update recomputes eps from (x_t, x0)). Read, re-implemented here with this engine's
3DGS (:func:`vscene_engine.recon.fit.fit_scene`, :func:`vscene_engine.render.rasterize.render`):

1. ``frames = decode(x0)``: [N, H, W, 3] in 0..1, one frame per camera (clamped to 0..1; N must equal the cameras);
2. Gaussians are fitted to all N frames at ``cameras`` (warm-started from the previous application's scene, the first
   time from ``init_scene`` or a seeded random initialisation), optionally at a reduced resolution (``fit_scale``);
3. every view is rendered at full resolution and encoded: ``z = encode(renders)`` must have x0's shape;
4. ``x0' = blend * z + (1 - blend) * x0`` in x0's dtype/device (blend 1 = VideoMV's replacement).

Steps it acts on (:func:`select_steps`): by default every ``every`` = 10 steps from ``ceil(start * n)`` with start =
0.4, i.e. steps 20, 30, 40 of 50 (VideoMV's choice), 10 and 20 of 25, 2 of 4; or an explicit list (negative indices
count from the end). On all other steps the hook returns x0 itself (the same tensor object).

Inference mode: ComfyUI runs nodes under ``torch.inference_mode()``. The hook leaves it (``inference_mode(False)``,
``enable_grad``) for the fit, clones x0 / frames / cameras / scenes into ordinary tensors first, and calls
``decode`` / ``encode`` under ``no_grad``.

Where the hook is called:

- ``leap.teacher_sample(..., x0_hook=hook)``: x0 = [1, T, C, h, w] VAE latents x scaling factor (float32, on the
  model's device) at every DDIM step, before the update; :func:`model_codec` builds the matching decode / encode for a
  :class:`~vscene_engine.video.model.VideoModel` (frames at the model's native size).
- ``compose.compose_sample(..., x0_hook=hook)``: the composed x0 grid [V, F, C, H, W] flattened view-major to
  [V * F, C, H, W] (item v * F + f = view v, frame f, the ComfyUI latent-batch order), so ``cameras`` (and ``decode``'s
  output) have V * F entries in that order; :func:`grid_groups` splits them into separately fitted scenes (e.g. one
  per frame for a dynamic scene).
- :func:`refine_3d`: the one-step student's 3D-aware refine (calls ``leap.leap_sample``; leap never imports this
  module: the 3D-aware hook reaches the samplers as a callable, ``x0_hook``).

Cross-view consistency measure :func:`inconsistency`: see its docstring.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from ..core.cameras import Cameras
from ..core.gaussians import GaussianScene
from ..core.runtime import Progress

__all__ = ["jitter_views", "FAST_LR", "Aware3DConfig", "Aware3DHook", "ConsistencyReport", "select_steps", "make_3d_aware_hook",
           "model_codec", "grid_groups", "fit_views", "inconsistency", "refine_3d"]

#: Learning rates of the fast (60-300 iteration) fits: ~10x the 3DGS defaults, which are tuned for 30k iterations
#: (keys as :data:`vscene_engine.recon.fit.DEFAULT_LR`; the means rates are multiplied by the camera extent).
FAST_LR = {"means": 1e-3, "means_final": 1e-5, "sh_dc": 0.03, "opacity": 0.1, "scale": 0.02, "rot": 0.002}

# =========================================================================================== configuration
@dataclass
class Aware3DConfig:
    """Settings of the 3D-aware step.

    steps: explicit step indices (0-based, negative from the end) or None for the rule ``every`` / ``start``:
        every ``every`` steps from ``ceil(start * n_steps)`` (default 10 and 0.4: steps 20, 30, 40 of 50).
    iters: fit iterations of a warm-started application (60-150 is the fast mode); init_iters: iterations of an
        application that starts from a random initialisation (None: 3 x iters); an ``init_scene`` counts as warm.
    n_init: Gaussians of the random initialisation (in :func:`~vscene_engine.recon.fit.default_bbox` of the cameras).
    sh_degree: SH degree of the fit (0 = one colour per Gaussian: view-dependent colour cannot absorb per-view
        colour drift, which is what the step should remove; 1 allows mild view dependence).
    background: RGB the renders are composited over (the frames' background where nothing is seen).
    blend: 1 = replace x0 with the re-encoded render (VideoMV), b < 1 = b * render + (1 - b) * x0, 0 = no change.
    warm_start: start each application from the previous one's scene (per group).
    fit_scale: fit at this fraction of the frame size (area-downsampled frames, resized cameras); the renders are
        always made at full size. lambda_dssim, lr (default :data:`FAST_LR`), batch_views (views per iteration),
        densify (None / True / dict, see ``fit_scene``): passed to ``fit_scene``.
    seed: the fit of application k, group g uses seed + 1000 k + g.
    device: where to fit (None: the decoded frames' device). render_batch: views rendered per call.
    """

    steps: Optional[Sequence[int]] = None
    every: int = 10
    start: float = 0.4
    iters: int = 100
    init_iters: Optional[int] = None
    n_init: int = 3000
    sh_degree: int = 0
    background: Sequence[float] = (0.0, 0.0, 0.0)
    blend: float = 1.0
    warm_start: bool = True
    fit_scale: float = 1.0
    lambda_dssim: float = 0.2
    lr: Optional[dict] = None
    batch_views: int = 1
    densify: object = None
    seed: int = 0
    device: object = None
    render_batch: int = 8

    def validate(self) -> "Aware3DConfig":
        def _int(name, lo):
            v = getattr(self, name)
            if isinstance(v, bool) or int(v) != v or int(v) < lo:
                raise ValueError(f"Aware3DConfig.{name} must be an integer >= {lo}, got {v!r}")

        for name, lo in (("every", 1), ("iters", 1), ("n_init", 1), ("batch_views", 1), ("render_batch", 1)):
            _int(name, lo)
        if self.init_iters is not None:
            _int("init_iters", 1)
        if not 0 <= int(self.sh_degree) <= 4 or int(self.sh_degree) != self.sh_degree:
            raise ValueError(f"Aware3DConfig.sh_degree must be an integer in 0..4, got {self.sh_degree!r}")
        for name in ("start", "blend"):
            v = float(getattr(self, name))
            if not (math.isfinite(v) and 0.0 <= v <= 1.0):
                raise ValueError(f"Aware3DConfig.{name} must be a number in [0, 1], got {getattr(self, name)!r}")
        fs = float(self.fit_scale)
        if not (math.isfinite(fs) and 0.0 < fs <= 1.0):
            raise ValueError(f"Aware3DConfig.fit_scale must be in (0, 1], got {self.fit_scale!r}")
        bg = torch.as_tensor(self.background, dtype=torch.float32).reshape(-1)
        if bg.numel() not in (1, 3) or not bool(torch.isfinite(bg).all()):
            raise ValueError(f"Aware3DConfig.background must be 3 finite numbers (RGB 0..1), got {self.background!r}")
        if self.steps is not None:
            for s in self.steps:
                if isinstance(s, bool) or int(s) != s:
                    raise ValueError(f"Aware3DConfig.steps must be integers (step indices), got {list(self.steps)!r}")
        return self

    @property
    def first_iters(self) -> int:
        return int(self.init_iters) if self.init_iters is not None else 3 * int(self.iters)


def select_steps(n_steps: int, cfg: Aware3DConfig | None = None) -> list[int]:
    """The 0-based step indices (ascending) the hook acts on in a sampler of ``n_steps`` steps."""
    cfg = cfg or Aware3DConfig()
    n = int(n_steps)
    if n < 1:
        return []
    if cfg.steps is not None:
        return sorted({int(s) + n if int(s) < 0 else int(s) for s in cfg.steps} & set(range(n)))
    first = int(math.ceil(float(cfg.start) * n - 1e-9))
    return list(range(first, n, int(cfg.every)))


# =========================================================================================== helpers
def _plain_cameras(cams: Cameras) -> Cameras:
    """Cameras with ordinary (non-inference) float32 tensors."""
    if not isinstance(cams, Cameras):
        raise ValueError(f"cameras must be a vscene_engine Cameras batch, got {type(cams).__name__}")
    return Cameras(cams.c2w.detach().clone().float(), cams.K.detach().clone().float(), cams.width, cams.height,
                   cams.near.detach().clone().float(), cams.far.detach().clone().float(),
                   None if cams.names is None else list(cams.names))


def _plain_scene(scene: GaussianScene | None, device) -> GaussianScene | None:
    if scene is None:
        return None
    if not isinstance(scene, GaussianScene):
        raise ValueError(f"init_scene must be a GaussianScene or None, got {type(scene).__name__}")
    return scene.detach().to(device=device, dtype=torch.float32).clone()


def _check_frames(frames, n: int, what: str) -> torch.Tensor:
    """``what`` names the tensor in messages ("decode's output", "frames", ...)."""
    if not isinstance(frames, torch.Tensor):
        raise ValueError(f"{what} must be a tensor [N, H, W, 3] in 0..1, got {type(frames).__name__}")
    if frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"{what} must be frames [N, H, W, 3] (RGB last, 0..1), got shape {tuple(frames.shape)}")
    if frames.shape[0] != n:
        raise ValueError(f"{what} has {frames.shape[0]} frames but there are {n} cameras; give one camera per "
                         "frame, in the same order")
    if not frames.is_floating_point():
        raise ValueError(f"{what} must be float frames in 0..1, got {frames.dtype}")
    if not bool(torch.isfinite(frames).all()):
        raise ValueError(f"{what} contains NaN or inf values")
    return frames


def _cams_for(frames: torch.Tensor, cams: Cameras) -> Cameras:
    """The cameras at the frames' size (K rescaled when the sizes differ: exact for a stretch resize)."""
    H, W = int(frames.shape[1]), int(frames.shape[2])
    return cams if (cams.width, cams.height) == (W, H) else cams.resized(W, H)


def fit_views(frames: torch.Tensor, cameras: Cameras, cfg: Aware3DConfig | None = None,
              init: GaussianScene | None = None, *, iters: int | None = None, seed: int | None = None,
              progress: Progress | None = None) -> tuple[GaussianScene, torch.Tensor, list]:
    """Fit Gaussians to ``frames`` [N, H, W, 3] (0..1) seen from ``cameras`` (N views; rescaled to the frames' size
    if needed) and render every view at full size -> (scene, renders [N, H, W, 3] in 0..1, per-view PSNR of the
    renders against the frames). ``iters``: default ``cfg.iters`` with ``init``, ``cfg.first_iters`` without.
    progress: :class:`~vscene_engine.core.runtime.Progress` handed to the fit (stage "fit") and the renders.
    Grad-enabled and outside inference mode whatever the caller's mode."""
    from ..render.losses import psnr
    from ..recon.fit import FitConfig, fit_scene
    from ..render.rasterize import render

    cfg = (cfg or Aware3DConfig()).validate()
    with torch.inference_mode(False), torch.enable_grad():
        frames = _check_frames(frames, len(cameras), "frames").detach().clone().float().clamp(0, 1)
        dev = torch.device(cfg.device) if cfg.device is not None else frames.device
        frames = frames.to(dev)
        cams = _cams_for(frames, _plain_cameras(cameras)).to(device=dev)
        init = _plain_scene(init, dev)
        n_it = int(iters) if iters is not None else (cfg.iters if init is not None else cfg.first_iters)
        fit_imgs, fit_cams = frames, cams
        if float(cfg.fit_scale) < 1.0:
            h = max(1, int(round(frames.shape[1] * float(cfg.fit_scale))))
            w = max(1, int(round(frames.shape[2] * float(cfg.fit_scale))))
            fit_imgs = F.interpolate(frames.permute(0, 3, 1, 2), size=(h, w), mode="area").permute(0, 2, 3, 1)
            fit_cams = cams.resized(w, h)
        bg = [float(v) for v in torch.as_tensor(cfg.background, dtype=torch.float32).reshape(-1).expand(3)]
        fit_cfg = FitConfig(iters=n_it, lr=dict(FAST_LR if cfg.lr is None else cfg.lr),
                            lambda_dssim=float(cfg.lambda_dssim), sh_degree=int(cfg.sh_degree),
                            sh_every=max(1, n_it // (int(cfg.sh_degree) + 1)),
                            batch_views=min(int(cfg.batch_views), len(cams)),
                            seed=int(cfg.seed if seed is None else seed), densify=cfg.densify, n_init=int(cfg.n_init))
        fit = fit_scene(fit_imgs.contiguous(), fit_cams, init, fit_cfg, background=bg, progress=progress,
                        final_eval=False, device=dev)
        scene = fit.scene
        with torch.no_grad():
            outs = []
            for i in range(0, len(cams), int(cfg.render_batch)):
                sub = cams[i:i + int(cfg.render_batch)]
                outs.append(render(scene, sub, background=bg, progress=progress).rgb.clamp(0, 1))
            renders = torch.cat(outs)
            per_view = psnr(renders, frames, reduction="none").tolist()
    return scene, renders, per_view


# =========================================================================================== the hook
class Aware3DHook:
    """The callable returned by :func:`make_3d_aware_hook` (see the module docstring).

    ``hook(step, n_steps, level, x0) -> x0'``. Attributes: ``cfg``, ``cameras``, ``groups`` (lists of frame indices
    fitted as one scene each), ``scenes`` (the last fitted scene of each group: GaussianScene list, None before the
    first application), ``history`` (one dict per application: step, n_steps, level, iters, fit_psnr, change = RMS of
    z - x0, seconds), ``calls`` (how often the hook was called). ``selects(step, n_steps)`` tells whether a step is
    acted on (samplers use it to release the denoiser's device memory first); ``apply(x0)`` acts unconditionally.
    """

    def __init__(self, decode, encode, cameras: Cameras, cfg: Aware3DConfig | None = None,
                 init_scene=None, progress: Progress | None = None, groups=None):
        if not callable(decode) or not callable(encode):
            raise ValueError("decode and encode must be callables (latents -> frames [N, H, W, 3], frames -> latents)")
        self.cfg = (cfg or Aware3DConfig()).validate()
        self.cameras = _plain_cameras(cameras)
        n = len(self.cameras)
        if n < 1:
            raise ValueError("the 3D-aware step needs at least one camera")
        self.cameras.validate()
        if groups is None:
            groups = [list(range(n))]
        groups = [[int(i) for i in g] for g in groups]
        flat = sorted(i for g in groups for i in g)
        if flat != list(range(n)) or any(len(g) == 0 for g in groups):
            raise ValueError(f"groups must split the {n} frames into non-empty groups, each frame exactly once "
                             f"(got {len(flat)} entries over {len(groups)} groups)")
        self.groups = groups
        if isinstance(init_scene, (list, tuple)):
            if len(init_scene) != len(groups):
                raise ValueError(f"init_scene: {len(init_scene)} scenes for {len(groups)} groups")
            self._init = list(init_scene)
        else:
            self._init = [init_scene] * len(groups)
        for s in self._init:
            if s is not None and not isinstance(s, GaussianScene):
                raise ValueError(f"init_scene must be a GaussianScene (or one per group) or None, got "
                                 f"{type(s).__name__}")
        self.decode, self.encode = decode, encode
        self.progress = progress
        self.scenes: list = [None] * len(groups)
        self.history: list = []
        self.calls = 0

    def selects(self, step: int, n_steps: int) -> bool:
        return float(self.cfg.blend) > 0 and int(step) in select_steps(n_steps, self.cfg)

    def __call__(self, step: int, n_steps: int, level, x0: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if not self.selects(step, n_steps):
            return x0
        return self.apply(x0, step=step, n_steps=n_steps, level=level)

    def apply(self, x0: torch.Tensor, *, step=None, n_steps=None, level=None) -> torch.Tensor:
        if not isinstance(x0, torch.Tensor) or not x0.is_floating_point():
            raise ValueError(f"x0 must be a floating-point tensor, got "
                             f"{x0.dtype if isinstance(x0, torch.Tensor) else type(x0).__name__}")
        t0 = time.perf_counter()
        cfg, k = self.cfg, len(self.history)
        n = len(self.cameras)
        with torch.inference_mode(False):
            xin = x0.detach().clone()
            with torch.no_grad():
                frames = self.decode(xin)
            frames = _check_frames(frames, n, "decode's output").detach().clone().float()
            renders = torch.empty_like(frames)
            fit_psnr, iters = [], []
            for g, idx in enumerate(self.groups):
                warm = self.scenes[g] if cfg.warm_start and self.scenes[g] is not None else self._init[g]
                it = cfg.iters if warm is not None else cfg.first_iters
                ix = torch.tensor(idx, dtype=torch.long)
                scene, r, pv = fit_views(frames[ix.to(frames.device)], self.cameras[ix], cfg, init=warm, iters=it,
                                         seed=int(cfg.seed) + 1000 * k + g, progress=self.progress)
                renders[ix.to(frames.device)] = r.to(frames.device)
                self.scenes[g] = scene
                fit_psnr += pv
                iters.append(it)
            with torch.no_grad():
                z = self.encode(renders)
            if not isinstance(z, torch.Tensor):
                raise ValueError(f"encode must return a latent tensor shaped like x0 {tuple(x0.shape)}, got "
                                 f"{type(z).__name__}")
            if tuple(z.shape) != tuple(x0.shape):
                raise ValueError(f"encode returned latents of shape {tuple(z.shape)} but x0 has shape "
                                 f"{tuple(x0.shape)}; decode / encode must be inverse layouts")
            z = z.detach().to(device=x0.device, dtype=torch.float32)
            change = float((z - xin.float()).pow(2).mean().sqrt())
        b = float(cfg.blend)
        out = z.to(x0.dtype) if b == 1.0 else (b * z + (1 - b) * x0.float()).to(x0.dtype)
        self.history.append({"step": step, "n_steps": n_steps, "level": None if level is None else float(level),
                             "iters": iters, "fit_psnr": sum(fit_psnr) / len(fit_psnr), "change": change,
                             "seconds": time.perf_counter() - t0})
        return out


def make_3d_aware_hook(decode: Callable[[torch.Tensor], torch.Tensor], encode: Callable[[torch.Tensor], torch.Tensor],
                       cameras: Cameras, cfg: Aware3DConfig | None = None, init_scene=None,
                       progress: Progress | None = None, groups=None) -> Aware3DHook:
    """The 3D-aware x0 hook: ``hook(step, n_steps, t_or_sigma, x0) -> x0'`` (module docstring).

    decode(x0 latents) -> frames [N, H, W, 3] in 0..1 (N = len(cameras); cameras of another image size are rescaled,
    which is exact for a stretch resize - for crop / pad give cameras of the decoded frames); encode(frames
    [N, H, W, 3]) -> latents of x0's shape (cast to x0's dtype / device). init_scene: a GaussianScene (e.g. the coarse
    prior) for the first application, or one per group. groups: lists of frame indices fitted as separate scenes
    (default: all frames one static scene; :func:`grid_groups` for a Diffusion² grid). progress: a
    :class:`~vscene_engine.core.runtime.Progress` (``update`` per fit iteration, ``check_interrupt()`` every iteration).
    Raises ValueError (clear message) when decode returns a wrong shape / frame count or encode a wrong shape.
    """
    return Aware3DHook(decode, encode, cameras, cfg, init_scene=init_scene, progress=progress, groups=groups)


def grid_groups(views: int, frames: int, mode: str = "all") -> list[list[int]]:
    """Frame groups of a Diffusion² grid flattened view-major (item v * F + f): "all" = one static scene,
    "per_frame" = one scene per frame f (its V views; for a dynamic scene), "per_view" = one per view's video."""
    V, Fr = int(views), int(frames)
    if V < 1 or Fr < 1:
        raise ValueError(f"views and frames must be >= 1, got {views} x {frames}")
    if mode == "all":
        return [list(range(V * Fr))]
    if mode == "per_frame":
        return [[v * Fr + f for v in range(V)] for f in range(Fr)]
    if mode == "per_view":
        return [[v * Fr + f for f in range(Fr)] for v in range(V)]
    raise ValueError(f"mode must be 'all', 'per_frame' or 'per_view', got {mode!r}")


def model_codec(model, vae_tiling: bool = False):
    """(decode, encode) for ``leap.teacher_sample``'s x0: latents [1, T, C, h, w] x scaling factor <-> frames
    [F, H, W, 3] in 0..1 at the model's native size, on the model's device (the VAE posterior mean is used to
    encode: deterministic). Cameras passed to the hook are rescaled to the native size (exact for aspect="stretch")."""
    from ..video import leap

    def decode(x0: torch.Tensor) -> torch.Tensor:
        return leap.decode_latents(model, x0, vae_tiling).permute(0, 2, 3, 1).to(model.device)

    def encode(frames: torch.Tensor) -> torch.Tensor:
        x = (frames.float().clamp(0, 1) * 2 - 1).permute(3, 0, 1, 2).unsqueeze(0)
        with model.placer.use("vae", model.vae) as vae, torch.no_grad():
            leap.set_vae_tiling(vae, vae_tiling)
            z = vae.encode(x.to(model.device, model.dtype)).latent_dist.mean * model.scaling_factor
        return z.float().permute(0, 2, 1, 3, 4).contiguous()

    return decode, encode


# =========================================================================================== consistency measure
@dataclass
class ConsistencyReport:
    """inconsistency: RMS residual (0..255 grey levels) between the fitted frames and their re-render by ONE static
    3DGS fitted to them - lower = more 3D-consistent; psnr: mean per-view PSNR of the same (higher = more
    consistent); psnr_per_view; holdout_psnr: mean PSNR of the held-out views rendered from the fit (None without
    ``holdout``); fit_views / holdout_views: the indices; seconds; scene: the fitted GaussianScene."""

    inconsistency: float
    psnr: float
    psnr_per_view: list
    holdout_psnr: Optional[float] = None
    fit_views: list = field(default_factory=list)
    holdout_views: list = field(default_factory=list)
    seconds: float = 0.0
    scene: Optional[GaussianScene] = None


def inconsistency(frames: torch.Tensor, cameras: Cameras, *, iters: int = 200, n_init: int = 2000,
                  sh_degree: int = 0, background: Sequence[float] = (0.0, 0.0, 0.0), seed: int = 0,
                  lr: dict | None = None, holdout: int = 0, init: GaussianScene | None = None,
                  fit_scale: float = 1.0, device=None) -> ConsistencyReport:
    """How far ``frames`` [N, H, W, 3] (0..1) seen from ``cameras`` are from being renders of one static 3D scene.

    Measure: fit ONE Gaussian scene (SH degree ``sh_degree``, default 0 = view-independent colour) to the frames with
    a fixed budget (``iters`` iterations of :func:`~vscene_engine.recon.fit.fit_scene` at :data:`FAST_LR` from a seeded
    random initialisation of ``n_init`` Gaussians, or from ``init``) and re-render every view. Multi-view-consistent
    frames are explained well (high PSNR, small residual); per-view shifts, colour drift, flicker or content that
    changes between views cannot all be explained at once. ``inconsistency`` = RMS residual over all pixels of the
    fitted views in 8-bit grey levels; ``psnr`` = mean per-view PSNR (the "reprojection PSNR").
    ``holdout`` = k > 0 leaves views k // 2, k // 2 + k, ... (not the first / last) out of the fit and reports
    their PSNR as ``holdout_psnr`` (cross-view prediction: a view must follow from the others, not just be fitted).
    Both favour smooth content (a blurred or 3DGS-rendered video is easy to fit), so read them beside a fidelity
    metric (PSNR to a reference). Numbers are comparable only at equal settings, sizes and frame counts
    (deterministic for a seed on the CPU).
    """
    t0 = time.perf_counter()
    frames = _check_frames(frames, len(cameras), "frames")
    n = frames.shape[0]
    held: list[int] = []
    if holdout:
        k = int(holdout)
        if k < 2:
            raise ValueError(f"holdout must be 0 (off) or >= 2 (every k-th view held out), got {holdout}")
        held = [i for i in range(k // 2, n, k) if 0 < i < n - 1]
        if not held or n - len(held) < 2:
            raise ValueError(f"holdout={k} leaves no held-out view or fewer than 2 fitted views for {n} frames")
    fit_ix = [i for i in range(n) if i not in held]
    cfg = Aware3DConfig(iters=int(iters), init_iters=int(iters), n_init=int(n_init), sh_degree=int(sh_degree),
                        background=tuple(background), lr=lr, seed=int(seed), fit_scale=fit_scale, device=device)
    ix = torch.tensor(fit_ix, dtype=torch.long)
    scene, renders, per_view = fit_views(frames[ix.to(frames.device)], cameras[ix], cfg, init=init, iters=int(iters))
    f = frames[ix.to(frames.device)].detach().float().clamp(0, 1).to(renders.device)
    mse = float((renders - f).pow(2).mean())
    hp = None
    if held:
        from ..render.losses import psnr
        from ..render.rasterize import render

        hx = torch.tensor(held, dtype=torch.long)
        with torch.no_grad():
            cams = _cams_for(frames, _plain_cameras(cameras[hx])).to(device=renders.device)
            bg = [float(v) for v in torch.as_tensor(background, dtype=torch.float32).reshape(-1).expand(3)]
            rh = render(scene, cams, background=bg).rgb.clamp(0, 1)
            hp = float(psnr(rh, frames[hx.to(frames.device)].float().clamp(0, 1).to(rh.device)))
    return ConsistencyReport(inconsistency=255.0 * math.sqrt(mse), psnr=sum(per_view) / len(per_view),
                             psnr_per_view=per_view, holdout_psnr=hp, fit_views=fit_ix, holdout_views=held,
                             seconds=time.perf_counter() - t0, scene=scene)


# =========================================================================================== student refine
def refine_3d(model, result, cameras: Cameras, t_small: int = 200, seed: int = 0, cfg: Aware3DConfig | None = None,
              *, first: torch.Tensor | None = None, last: torch.Tensor | None = None,
              init_scene: GaussianScene | None = None, aspect: str = "stretch", view_filter: str = "nearest",
              vae_tiling: bool = False, progress: Progress | None = None):
    """VideoScene / VideoMV-style 3D-aware refine of a one-step student result.

    1. Gaussians are fitted to ``result.frames`` [F, H, W, 3] at ``cameras`` (F cameras; rescaled to the frames'
       size if needed), ``cfg.first_iters`` iterations from a random init or ``cfg.iters`` from ``init_scene``;
    2. every camera is rendered: R [F, H, W, 3]; with ``cfg.blend`` b < 1 the video is b R + (1 - b) frames;
    3. one more student step from that video at the small timestep: exactly
       ``leap_sample(model, first, last, video, timestep=t_small, seed=seed, steps=1, aspect=...)``, i.e. the video is
       VAE-encoded, noised to ``t_small`` with the seed's noise (the conditioning draws are those of the original
       sample when ``seed`` is the same), one transformer call gives x0, which is decoded.
    ``first`` / ``last``: the two input views (default: the first and last frame of ``result.frames``).
    ``progress``: :class:`~vscene_engine.core.runtime.Progress` of the fit (stage "fit") and the student step.
    Returns a ``leap.SampleResult`` (frames, latents, timesteps [t_small]) whose ``info["aware3d"]`` holds the fit
    PSNR, iterations and seconds; ``info["render_psnr_vs_input"]`` is the PSNR of R against the student frames.
    The fitted scene and R are attached as ``result.scene`` / ``result.render``.
    """
    from ..video import leap

    cfg = (cfg or Aware3DConfig()).validate()
    frames = result.frames if hasattr(result, "frames") else result
    frames = _check_frames(frames, len(cameras), "result.frames")
    t0 = time.perf_counter()
    scene, R, per_view = fit_views(frames, cameras, cfg, init=init_scene, seed=int(cfg.seed),
                                   progress=progress)
    t_fit = time.perf_counter() - t0
    R = R.detach().float().cpu()
    f = frames.detach().float().cpu().clamp(0, 1)
    b = float(cfg.blend)
    video = R if b == 1.0 else (b * R + (1 - b) * f)
    a = f[0] if first is None else first
    z = f[-1] if last is None else last
    out = leap.leap_sample(model, a, z, video, timestep=int(t_small), seed=int(seed), steps=1, aspect=aspect,
                           view_filter=view_filter, vae_tiling=vae_tiling,
                           progress=progress)
    it = cfg.iters if init_scene is not None else cfg.first_iters
    out.info["aware3d"] = {"fit_psnr": sum(per_view) / len(per_view), "iters": it, "fit_s": t_fit,
                           "t_small": int(t_small), "blend": b, "sh_degree": int(cfg.sh_degree)}
    out.info["total_s"] = time.perf_counter() - t0
    out.scene = scene
    out.render = R
    return out


def jitter_views(x: torch.Tensor, seed: int, shift: float = 2.0, gain: float = 0.15, bias: float = 0.05):
    """Toy view-inconsistent "denoiser" for benchmarks and tests: x [N, H, W, 3] 0..1 -> the same views with an
    independent per-view sub-pixel shift (+-shift px) and per-channel gain / bias jitter (seeded)."""
    g = torch.Generator().manual_seed(seed)
    n, h, w, _ = x.shape
    out = []
    for i in range(n):
        dx, dy = [float(v) for v in (torch.rand(2, generator=g) * 2 - 1) * shift]
        th = torch.tensor([[1, 0, -dx * 2 / w], [0, 1, -dy * 2 / h]], dtype=torch.float32)[None]
        grid = F.affine_grid(th, (1, 3, h, w), align_corners=False)
        y = F.grid_sample(x[i].permute(2, 0, 1)[None], grid, padding_mode="border", align_corners=False)[0]
        gn = 1 + (torch.rand(3, generator=g) * 2 - 1) * gain
        bs = (torch.rand(3, generator=g) * 2 - 1) * bias
        out.append((y.permute(1, 2, 0) * gn + bs).clamp(0, 1))
    return torch.stack(out)
