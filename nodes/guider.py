"""The Diffusion² GUIDER: core's ``CFGGuider`` sampling a V x F grid with ``vscene_engine.compose.diffusion2.ComposedDenoiser``.

Entry point: :func:`make_compose_guider` (used by the ScoreComposeMultiView node). The class
:class:`Guider_ScoreCompose` subclasses what ``host.CFGGuider`` is (core's class inside ComfyUI, a stand-in with the
same interface otherwise) and overrides as little as core's ``Guider_DualModel``: ``outer_sample`` prepares the
second (multi-view) model and calls super(); ``inner_sample`` prepares each model's conditions for the batch it sees
and calls super() for the sampling loop; ``predict_noise`` evaluates the composed denoiser. The sampled latent is a
batch of V*F images, view-major (index v*F + f); at every step the video model denoises each view's F frames (rows),
the multi-view model each frame's V views (columns), and the two x0 estimates are mixed with the weights of the
step (``compose.WeightSchedule``), exactly as ``compose.compose_sample`` does with the engine's own samplers.
"""
from __future__ import annotations

import logging
import math

import torch

from vscene_engine.compose.diffusion2 import Batching, ComposedDenoiser, WeightSchedule, step_index

from . import host

log = logging.getLogger("videoscene.guider")


class Guider_ScoreCompose(host.CFGGuider):
    """Diffusion² guider over ``model_patcher`` (the video model, rows) and ``col_patcher`` (the multi-view model,
    columns). Conditions: ``inner_set_conds`` for the video model (positive / negative), ``col_conds`` (converted
    conds, :func:`host.convert_cond`) for the multi-view model; ``row_cfg`` / ``col_cfg`` their CFG scales.
    ``make_hook(guider)`` (optional) returns a fresh ``x0_hook(step, n_steps, sigma, x0_flat)`` for each sampling run
    (the VideoMV 3D-aware step), applied on the first evaluation of each step."""

    def __init__(self, model_patcher, col_patcher, views: int, frames: int, weights: WeightSchedule,
                 row_cfg: float = 1.0, col_cfg: float = 1.0, col_conds: dict | None = None, make_hook=None):
        super().__init__(model_patcher)
        self.col_patcher, self.col_conds = col_patcher, dict(col_conds or {})
        self.views, self.frames, self.weights = int(views), int(frames), weights
        self.row_cfg, self.col_cfg, self.make_hook = float(row_cfg), float(col_cfg), make_hook
        self.col_inner = None
        self.denoiser = None

    def outer_sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None,
                     disable_pbar=False, seed=None, latent_shapes=None):
        V, F = self.views, self.frames
        if noise.shape[0] != V * F:
            raise ValueError(f"the latent batch has {noise.shape[0]} images but the grid is {V} views x {F} "
                             f"frames = {V * F}: make the latent batch {V * F} (view-major: view v, frame f at "
                             f"index v*{F}+f) or change views/frames")
        self.sigmas_seen = sigmas.detach().float().cpu()
        self.row_weights = self.weights.row_weights(max(1, len(self.sigmas_seen) - 1), V)
        cc = {k: [c.copy() for c in v] for k, v in self.col_conds.items()}
        self.col_inner, self._col_raw, self.col_loaded = host.prepare_sampling(self.col_patcher, noise.shape, cc,
                                                                               self.col_patcher.model_options)
        self.col_patcher.pre_run()
        self.hook = self.make_hook(self) if self.make_hook is not None else None
        try:
            return super().outer_sample(noise, latent_image, sampler, sigmas, denoise_mask, callback, disable_pbar,
                                        seed, latent_shapes=latent_shapes)
        finally:
            self.col_patcher.cleanup()
            host.cleanup_models(self._col_raw, self.col_loaded)
            self.col_inner = self.denoiser = None

    def inner_sample(self, noise, latent_image, device, sampler, sigmas, denoise_mask, callback, disable_pbar, seed,
                     latent_shapes=None):
        # Conditions for the batch each model really sees: F frames for the video model, V views for the
        # multi-view model (video models read their frame count from the batch, e.g. SVD's num_video_frames).
        V, F = self.views, self.frames
        self.inner_model.latent_shapes = latent_shapes
        prep = (noise, latent_image, device, denoise_mask, seed, latent_shapes)
        self._row_conds, row_items = _prepare_conds(self.inner_model, self.conds, V, "video", "views", F, *prep)
        self._col_conds, col_items = _prepare_conds(self.col_inner, self._col_raw, F, "multi-view", "frames", V,
                                                    *prep)
        self.denoiser = ComposedDenoiser(self._rows, self._cols, self.row_weights, row_cond=row_items,
                                         col_cond=col_items, x0_hook=self.hook, batching=Batching(distributed=False))
        return super().inner_sample(noise, latent_image, device, sampler, sigmas, denoise_mask, callback,
                                    disable_pbar, seed, latent_shapes=latent_shapes)

    def predict_noise(self, x, timestep, model_options={}, seed=None):
        sigma = timestep.reshape(-1)[:1]
        self._call = (sigma, model_options, {k: v for k, v in model_options.items() if k != "multigpu_clones"})
        i = step_index(self.sigmas_seen, float(sigma))
        seen = len(getattr(self.hook, "history", ()))
        x0 = self.denoiser(x.reshape(self.views, self.frames, *x.shape[1:]), float(sigma), i).reshape(x.shape)
        if len(getattr(self.hook, "history", ())) > seen:
            h = self.hook.history[-1]
            log.info("VideoScene 3D-aware step %d/%d (sigma %.4g): fit PSNR %.2f dB, x0 change (RMS) %.4g, %.1f s",
                     i, self.denoiser.n_steps, float(sigma), h["fit_psnr"], h["change"], h["seconds"])
        return x0

    # the two models as compose row / column denoisers: x [B, F or V, C, H, W], cond = per-item conds or None
    def _rows(self, xr, level, cond):
        sigma, opts, _ = self._call
        return torch.stack([_guided_x0(self.inner_model, self._row_conds if cond is None else cond[b], self.row_cfg,
                                       xr[b], sigma.expand(self.frames), opts) for b in range(xr.shape[0])])

    def _cols(self, xc, level, cond):
        sigma, _, opts = self._call
        return torch.stack([_guided_x0(self.col_inner, self._col_conds if cond is None else cond[b], self.col_cfg,
                                       xc[b], sigma.expand(self.views), opts) for b in range(xc.shape[0])])


def _guided_x0(inner, conds: dict, cfg: float, x, t, model_options: dict):
    """x0 of one model with its positive / negative conds and CFG scale (negative unused at cfg 1)."""
    pos, neg = conds.get("positive"), conds.get("negative")
    use_neg = neg is not None and not math.isclose(cfg, 1.0)
    out = host.calc_cond_batch(inner, [pos, neg] if use_neg else [pos], x, t, model_options)
    if not use_neg:
        return out[0]
    return host.cfg_function(inner, out[0], out[1], cfg, x, t, model_options=model_options, cond=pos, uncond=neg)


def _prepare_conds(inner, raw: dict, n: int, label: str, per: str, m: int, noise, latent_image, device,
                   denoise_mask, seed, latent_shapes):
    """(shared processed conds or the raw ones, per-item processed conds or None) for a model that sees batches of
    m (F for the video model, V for the multi-view model); n = the number of items (rows V / columns F)."""
    lat = latent_image
    if lat is not None and torch.count_nonzero(lat) > 0:
        lat = inner.process_latent_in(lat)

    def proc(c):
        return host.process_conds(inner, noise[:m], {k: list(v) for k, v in c.items()}, device,
                                  None if lat is None else lat[:m],
                                  None if denoise_mask is None else denoise_mask[:m], seed,
                                  latent_shapes=latent_shapes)

    items = _split_conds(raw, n, label, per, m)
    return (raw, [proc(c) for c in items]) if items is not None else (proc(raw), None)


def _split_conds(conds: dict, n: int, label: str, per: str, other: int) -> list | None:
    """Per-item copies of raw (converted) conditions: ``None`` when every tensor in them has batch 1 (shared), else a
    list of n condition dicts, item i holding entry i of each batch-n tensor (batch-1 tensors are shared)."""
    sizes = set()
    for lst in conds.values():
        for c in lst or []:
            for k, v in c.items():
                if isinstance(v, torch.Tensor) and v.ndim > 0 and k != "model_conds":
                    sizes.add(int(v.shape[0]))
    sizes.discard(1)
    if not sizes:
        return None
    if sizes != {n}:
        hint = (f"; batch {other} would be one per {'frame' if per == 'views' else 'view'}, which is the other "
                "model's conditioning" if other in sizes else "")
        raise ValueError(f"the {label} conditioning has batch {sorted(sizes)}: give batch 1 (shared by all) or {n} "
                         f"(one per {per[:-1]}: the grid has {n} {per}){hint}")

    def one(c, i):
        out = dict(c)
        for k, v in c.items():
            if isinstance(v, torch.Tensor) and v.ndim > 0 and k != "model_conds" and v.shape[0] == n:
                out[k] = v[i:i + 1]
        return out

    return [{k: [one(c, i) for c in (lst or [])] for k, lst in conds.items()} for i in range(n)]


def make_compose_guider(row_model, col_model, views: int, frames: int, row_conds: dict, col_conds: dict,
                        row_cfg: float, col_cfg: float, weights: WeightSchedule, aware3d: dict | None = None):
    """A :class:`Guider_ScoreCompose` composing a video MODEL (rows: each view's F frames) and a multi-view MODEL
    (columns: each frame's V views). ``row_conds`` / ``col_conds``: {"positive": CONDITIONING, "negative":
    CONDITIONING or None}; ``weights``: the mixing per step and view. Both models must share the latent format and
    the noise parametrisation (e.g. SVD + SV3D).

    Per-view / per-frame conditioning: a video conditioning whose tensors have batch V (e.g. SVD_img2vid_Conditioning
    of a batch of V images, one start image per view) conditions row v with entry v; a multi-view conditioning with
    batch F (e.g. SV3D_Conditioning of F images, one per frame) conditions column f with entry f; batch 1 is shared
    by all rows / columns; any other batch is refused with a clear message.

    ``aware3d`` (optional, VideoMV 3D-aware denoising): {"vae": the core VAE of the latent format, "cameras":
    ``Cameras`` of the V views, "cfg": ``aware3d.Aware3DConfig``, "groups": ``aware3d.grid_groups`` mode ("per_frame":
    one scene per frame, "all": one static scene)}. On the steps the config selects, the composed x0 grid is decoded
    with the VAE, Gaussians are fitted to each group at the grid's cameras (item v*F+f: camera of view v), rendered,
    re-encoded and used as x0 (once per step: a second-order sampler's extra evaluation is left alone).
    Needs ComfyUI (core samplers drive it); raises RuntimeError without the host.
    """
    if not host.HOST_AVAILABLE:
        raise RuntimeError("the ScoreComposeMultiView guider runs inside ComfyUI (core SamplerCustomAdvanced drives "
                           "it); outside ComfyUI use vscene_engine.compose.diffusion2.compose_sample")
    V, F = int(views), int(frames)
    if V < 1 or F < 1:
        raise ValueError(f"views and frames must be >= 1, got {V} x {F}")
    _check_compatible(row_model, col_model)
    g = Guider_ScoreCompose(row_model, col_model, V, F, weights, row_cfg, col_cfg,
                            col_conds={k: host.convert_cond(v) for k, v in col_conds.items() if v is not None},
                            make_hook=(lambda guider: _grid_hook(aware3d, V, F, guider)) if aware3d else None)
    g.inner_set_conds({k: v for k, v in row_conds.items() if v is not None})
    return g


def _grid_hook(aware3d: dict, V: int, F: int, guider):
    """The VideoMV 3D-aware x0 hook of a composed V x F grid, decoding / encoding with a core VAE."""
    from vscene_engine.compose.aware3d import Aware3DConfig, grid_groups, make_3d_aware_hook

    vae, cams = aware3d.get("vae"), aware3d.get("cameras")
    if vae is None or cams is None:
        raise ValueError("3D-aware denoising needs the VAE (connect the models' VAE) and the cameras of the V views "
                         "(connect Orbit Trajectory)")
    if len(cams) != V:
        raise ValueError(f"3D-aware denoising: the trajectory has {len(cams)} cameras but the grid has {V} views; "
                         f"make Orbit Trajectory's views {V}")
    grid_cams = cams[torch.arange(V).repeat_interleave(F)]

    def decode(z):
        img = vae.decode(guider.inner_model.process_latent_out(z.to(torch.float32)))
        return img.reshape(-1, *img.shape[-3:])[..., :3]

    def encode(frames):
        return guider.inner_model.process_latent_in(vae.encode(frames[..., :3]))

    # no progress bar of its own: the sampler's bar is the node's bar; interrupts are checked every fit iteration
    return make_3d_aware_hook(decode, encode, grid_cams, aware3d.get("cfg") or Aware3DConfig(),
                              groups=grid_groups(V, F, aware3d.get("groups", "per_frame")),
                              progress=host.interrupt_checks())


def _check_compatible(row_model, col_model) -> None:
    """Both MODELs must share latent format and noise parametrisation (sigma scale); clear ValueError otherwise."""
    a, b = row_model.model, col_model.model
    la, lb = type(a.latent_format).__name__, type(b.latent_format).__name__
    if la != lb:
        raise ValueError(f"the video model's latent format is {la} but the multi-view model's is {lb}: Diffusion² "
                         "composes their estimates on one latent grid, so both must use the same VAE/latent format "
                         "(e.g. SVD + SV3D)")
    ma, mb = a.model_sampling, b.model_sampling
    for attr in ("sigma_min", "sigma_max"):
        va, vb = float(getattr(ma, attr)), float(getattr(mb, attr))
        if abs(va - vb) > 0.01 * max(abs(va), abs(vb), 1e-6):
            raise ValueError(f"the two models use different noise scales ({attr} {va:g} vs {vb:g}): both must share "
                             "the sampler's sigmas (e.g. SVD + SV3D, both EDM)")
