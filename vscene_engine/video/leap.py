"""VideoScene's one-step "leap" student sampler, multi-step consistency sampling and a DDIM teacher sampler.

Entry points: :func:`leap_sample` (the VideoScene student) and :func:`teacher_sample` (the multi-step base model).
Both take a :class:`~vscene_engine.video.model.VideoModel`, the two input views and the coarse video rendered from
the 3DGS prior, and return a :class:`SampleResult`.

What the reference does (hanyang-21/VideoScene ``videoscene/pipeline.py::video_gen``), reproduced exactly:

1. coarse video (49 frames) resized to 480 x 720, mapped to [-1, 1], VAE-encoded, ``latent_dist.sample()`` x scale;
2. first / last views resized to 480 x 720 (diffusers ``VideoProcessor.preprocess`` on tensors = nearest-neighbour
   ``F.interpolate``), noised in pixel space with sigma = exp(N(-3, 0.5)), VAE-encoded (sample x scale);
3. image latents = [first, zeros x (T-2), last] along time, concatenated to the video latents on channels;
4. ``add_noise(video_latents, eps, t)`` at the leap timestep t (MVSplat path: 549; the demo: 459);
5. ONE transformer call (no CFG, fixed prompt embedding) predicting v; x0 = sqrt(a_t) x_t - sqrt(1 - a_t) v;
6. x0 / scale decoded by the VAE, mapped to [0, 1] and resized back to the input size.

The reference calls ``video_gen(..., noise_timestep=550)``, which draws ``randint(549, 550)`` = 549: our ``timestep``
is that actual diffusion timestep (``schedule.REFERENCE_TIMESTEP`` = 549 by default). The noise math is the model's
:class:`~vscene_engine.video.schedule.NoiseSchedule` (``model.schedule``): coefficients cast to the sample dtype before the
square roots, as diffusers' ``add_noise`` / ``get_velocity`` do (this matters in bf16).

Randomness: everything comes from ONE ``torch.Generator(seed)`` on the CPU, drawn in the reference's order (video
posterior sample, sigma, first-view pixel noise, first posterior sample, last-view pixel noise, last posterior sample,
latent noise, then one fresh noise per extra consistency step), so a seed gives the same result on CPU and GPU
up to floating-point differences.

Differences from the reference, on purpose: frames arrive as float tensors (the reference round-trips the coarse
video through an mp4 and uint8 PIL frames); the output stays float; the output resize is bicubic with antialias
(torch) instead of PIL bicubic on uint8; a wrong frame count raises instead of looping forever.

Layouts: images [H, W, 3] and videos [F, H, W, 3] float in [0, 1] (ComfyUI IMAGE); latents returned in ComfyUI
LATENT order [1, C, T, h, w] in VAE space (divided by the scaling factor: what ``vae.decode`` takes).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F

from .schedule import REFERENCE_TIMESTEP
from ..core.runtime import Progress, as_progress
from .model import VideoModel

__all__ = ["SampleResult", "leap_timesteps", "prepare_inputs", "encode_conditioning", "video_latents",
           "rotary_embedding", "transformer_output", "decode_latents", "set_vae_tiling", "aspect_plan", "leap_sample",
           "teacher_sample", "ASPECT_MODES"]

ASPECT_MODES = ("stretch", "crop", "pad")


@dataclass
class SampleResult:
    """frames [F, H, W, 3] float32 cpu in [0, 1] (restored to the input geometry, see ``aspect``);
    latents [1, C, T, h, w] float32 cpu, VAE space (x0 / scaling_factor); timesteps used; info (timings, sizes)."""

    frames: torch.Tensor
    latents: torch.Tensor
    timesteps: list
    info: dict = field(default_factory=dict)


# =========================================================================================== student timesteps
def leap_timesteps(t: int, steps: int) -> list[int]:
    """Student timesteps: ``[t]`` for one step; for ``steps`` > 1 evenly spaced ``round(t (steps - i) / steps)``."""
    t, steps = int(t), int(steps)
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    ts = [int(round(t * (steps - i) / steps)) for i in range(steps)]
    if len(set(ts)) != len(ts) or ts[-1] < 1:
        raise ValueError(f"{steps} steps from timestep {t} repeat a timestep; use fewer steps or a larger timestep")
    return ts


# =========================================================================================== geometry
def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    """x [N, C, H, W] -> [N, C, *size]. ``nearest`` = torch default (diffusers); others antialiased when shrinking."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=size)
    return F.interpolate(x, size=size, mode=mode, align_corners=False, antialias=True)


def aspect_plan(h: int, w: int, H: int, W: int, aspect: str) -> dict:
    """How an h x w input maps to the model's H x W: crop box or padding, and the output geometry."""
    if aspect == "stretch":
        return {"crop": (0, 0, h, w), "pad": (0, 0, 0, 0), "out": (h, w)}
    target = W / H
    if aspect == "crop":
        if w / h > target:  # too wide: crop width
            cw, ch = max(1, int(round(h * target))), h
        else:
            cw, ch = w, max(1, int(round(w / target)))
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        return {"crop": (y0, x0, ch, cw), "pad": (0, 0, 0, 0), "out": (ch, cw)}
    if aspect == "pad":
        if w / h > target:
            ph, pw = int(round(w / target)), w
        else:
            ph, pw = h, int(round(h * target))
        top, left = (ph - h) // 2, (pw - w) // 2
        return {"crop": (0, 0, h, w), "pad": (left, pw - w - left, top, ph - h - top), "out": (h, w)}
    raise ValueError(f"aspect must be one of {ASPECT_MODES}, got {aspect!r}")


def _apply_plan(x: torch.Tensor, plan: dict, size: tuple[int, int], mode: str) -> torch.Tensor:
    """x [N, C, h, w] in [0, 1] -> [N, C, H, W] following ``plan`` (crop, pad by reflection, resize)."""
    y0, x0, ch, cw = plan["crop"]
    x = x[..., y0:y0 + ch, x0:x0 + cw]
    l, r, t, b = plan["pad"]
    if any(plan["pad"]):
        pmode = "reflect" if max(l, r) < x.shape[-1] and max(t, b) < x.shape[-2] else "replicate"
        x = F.pad(x, (l, r, t, b), mode=pmode)
    return _resize(x, size, mode)


def _restore(x: torch.Tensor, plan: dict) -> torch.Tensor:
    """Model-size frames [N, C, H, W] -> the output geometry of ``plan`` (un-pad for "pad")."""
    l, r, t, b = plan["pad"]
    if any(plan["pad"]):
        oh, ow = plan["out"]
        ph, pw = oh + t + b, ow + l + r
        x = _resize(x, (ph, pw), "bicubic")
        return x[..., t:t + oh, l:l + ow]
    return _resize(x, plan["out"], "bicubic")


def _check_image(x, name: str, ndim: int) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"{name} must be a torch tensor, got {type(x).__name__}")
    if x.ndim != ndim or x.shape[-1] != 3:
        want = "[H, W, 3]" if ndim == 3 else "[F, H, W, 3]"
        raise ValueError(f"{name} must be {want} (RGB in 0..1), got shape {tuple(x.shape)}")
    if x.numel() == 0:
        raise ValueError(f"{name} is empty (shape {tuple(x.shape)})")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf values")
    return x.float()


def prepare_inputs(model: VideoModel, first: torch.Tensor, last: torch.Tensor, video: torch.Tensor,
                   aspect: str = "stretch", view_filter: str = "nearest", video_filter: str = "bicubic") -> dict:
    """Validate and resize the inputs to the model's native size.

    first, last: [H, W, 3]; video: [F, H', W', 3] (views may differ in size from the video; each is fitted alone).
    Returns dict(video [1, 3, F, H, W] and first/last [1, 3, 1, H, W] in [-1, 1] float32 cpu, plan (to restore the
    video geometry), size (H, W)). ``view_filter="nearest"`` reproduces the reference's diffusers preprocessing.
    """
    first = _check_image(first, "first view", 3)
    last = _check_image(last, "last view", 3)
    video = _check_image(video, "rendered video", 4)
    model.check_frames(video.shape[0])
    H, W = model.native_size
    plan = aspect_plan(video.shape[1], video.shape[2], H, W, aspect)
    vid = _apply_plan(video.permute(0, 3, 1, 2), plan, (H, W), video_filter)  # [F,3,H,W]
    out = {"video": (vid.clamp(0, 1) * 2 - 1).permute(1, 0, 2, 3).unsqueeze(0), "plan": plan, "size": (H, W)}
    for key, img in (("first", first), ("last", last)):
        p = aspect_plan(img.shape[0], img.shape[1], H, W, aspect)
        x = _apply_plan(img.permute(2, 0, 1).unsqueeze(0), p, (H, W), view_filter)
        out[key] = (x * 2 - 1).unsqueeze(2)  # [1,3,1,H,W]
    return out


# =========================================================================================== model calls
def _vae_encode_sample(vae, x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """x [1, 3, F, H, W] in model dtype/device -> posterior sample [1, C, T, h, w] (diffusers ``sample(generator)``)."""
    return vae.encode(x).latent_dist.sample(generator=gen)


def _randn(shape, gen: torch.Generator, like: torch.Tensor) -> torch.Tensor:
    return torch.randn(tuple(shape), generator=gen, dtype=like.dtype).to(like.device)


def encode_conditioning(model: VideoModel, inputs: dict, gen: torch.Generator, vae_tiling: bool = False,
                        encode_video: bool = True) -> dict:
    """VAE stage. Returns dict(video_latents [1, T, C, h, w] x scale (None if not ``encode_video``),
    image_latents [1, T, C, h, w] = [first, 0.., last], sigma (float)). Random draws in the reference's order."""
    dev, dt = model.device, model.dtype
    sf = model.scaling_factor
    with model.placer.use("vae", model.vae) as vae, torch.no_grad():
        set_vae_tiling(vae, vae_tiling)
        vid_lat = None
        if encode_video:
            v = inputs["video"].to(dev, dt)
            vid_lat = _vae_encode_sample(vae, v, gen) * sf
            want = (model.latent_frames(v.shape[2]), v.shape[3] // model.vae_scale_spatial,
                    v.shape[4] // model.vae_scale_spatial)
            if tuple(vid_lat.shape[2:]) != want:
                raise ValueError(f"the VAE returned latents of size {tuple(vid_lat.shape[2:])} instead of {want}"
                                 + (" with VAE tiling on: tiling is made for the 480x720 CogVideoX VAE; turn "
                                    "vae_tiling off for this model" if vae_tiling else ""))
        first = inputs["first"].to(dev, dt)
        last = inputs["last"].to(dev, dt)
        sigma = torch.exp(torch.normal(mean=-3.0, std=0.5, size=(1,), generator=gen)).to(dt)
        s = sigma.to(dev)[:, None, None, None, None]
        first_n = first + _randn(first.shape, gen, first) * s
        first_lat = _vae_encode_sample(vae, first_n, gen) * sf
        last_n = last + _randn(last.shape, gen, last) * s
        last_lat = _vae_encode_sample(vae, last_n, gen) * sf
    T = model.latent_frames(inputs["video"].shape[2])
    first_lat = first_lat.permute(0, 2, 1, 3, 4)
    last_lat = last_lat.permute(0, 2, 1, 3, 4)
    pad = first_lat.new_zeros((1, T - 2, *first_lat.shape[2:]))
    image_lat = torch.cat([first_lat, pad, last_lat], dim=1)
    if vid_lat is not None:
        vid_lat = vid_lat.permute(0, 2, 1, 3, 4)
    return {"video_latents": vid_lat, "image_latents": image_lat, "sigma": float(sigma.float().item())}


def video_latents(model: VideoModel, video: torch.Tensor, aspect: str = "stretch", vae_tiling: bool = False):
    """VAE latents of a video [F, H, W, 3] 0..1 at the model's native size: [1, C, T, h, w] (ComfyUI LATENT order,
    x scaling factor like the sampler's latents; the posterior mean, so deterministic). For DDPNet inputs."""
    video = _check_image(video, "video", 4)
    model.check_frames(video.shape[0])
    H, W = model.native_size
    plan = aspect_plan(video.shape[1], video.shape[2], H, W, aspect)
    x = _apply_plan(video.permute(0, 3, 1, 2), plan, (H, W), "bicubic").clamp(0, 1) * 2 - 1
    x = x.permute(1, 0, 2, 3).unsqueeze(0).to(model.device, model.dtype)
    with model.placer.use("vae", model.vae) as vae, torch.no_grad():
        set_vae_tiling(vae, vae_tiling)
        z = vae.encode(x).latent_dist.mean * model.scaling_factor
    return z.float().cpu()


def set_vae_tiling(vae, on: bool) -> None:
    """VAE tiling (spatial tiles: the memory saver at 480x720) and slicing (batch items one by one) on or off."""
    for name in (("enable_tiling", "enable_slicing") if on else ("disable_tiling", "disable_slicing")):
        if hasattr(vae, name):
            getattr(vae, name)()


def _crop_region(grid_hw: tuple[int, int], base_w: int, base_h: int):
    """CogVideoX 1.0 RoPE crop region of a grid inside the base grid (resize-and-centre, as in the reference)."""
    h, w = grid_hw
    if h / w > base_h / base_w:
        rh, rw = base_h, int(round(base_h / h * w))
    else:
        rw, rh = base_w, int(round(base_w / w * h))
    top, left = int(round((base_h - rh) / 2.0)), int(round((base_w - rw) / 2.0))
    return (top, left), (top + rh, left + rw)


def rotary_embedding(model: VideoModel, T: int, h: int, w: int, device) -> tuple | None:
    """3D RoPE (cos, sin) for a latent video of T x h x w, or None when the transformer has no RoPE."""
    cfg = model.transformer.config
    if not getattr(cfg, "use_rotary_positional_embeddings", False):
        return None
    from diffusers.models.embeddings import get_3d_rotary_pos_embed
    p = int(cfg.patch_size)
    gh, gw = h // p, w // p
    region = _crop_region((gh, gw), int(cfg.sample_width) // p, int(cfg.sample_height) // p)
    cos, sin = get_3d_rotary_pos_embed(embed_dim=int(cfg.attention_head_dim), crops_coords=region,
                                       grid_size=(gh, gw), temporal_size=T)
    return cos.to(device), sin.to(device)


def transformer_output(tr, x_t, image_lat, t: int, embeds, rope) -> torch.Tensor:
    """One transformer call: x_t, image_lat [B, T, C, h, w] -> model output [B, T, C, h, w]."""
    inp = torch.cat([x_t, image_lat], dim=2)
    ts = torch.full((inp.shape[0],), int(t), dtype=torch.long, device=inp.device)
    return tr(hidden_states=inp, encoder_hidden_states=embeds, timestep=ts, image_rotary_emb=rope,
              return_dict=False)[0]


def decode_latents(model: VideoModel, x0: torch.Tensor, vae_tiling: bool) -> torch.Tensor:
    """x0 [1, T, C, h, w] (scaled) -> frames [F, 3, H, W] float32 cpu in [0, 1]."""
    z = (1 / model.scaling_factor) * x0.permute(0, 2, 1, 3, 4)
    with model.placer.use("vae", model.vae) as vae, torch.no_grad():
        set_vae_tiling(vae, vae_tiling)
        px = vae.decode(z.to(model.device, model.dtype)).sample
    return (px[0].float().cpu() / 2 + 0.5).clamp(0, 1).permute(1, 0, 2, 3)


class _Held:
    """``model.placer.use(name, module)`` held open, releasable and re-acquirable (for x0 hooks that need the VAE)."""

    def __init__(self, model: VideoModel, name: str):
        self.model, self.name, self.cm, self.module = model, name, None, None

    def acquire(self):
        if self.cm is None:
            self.cm = self.model.placer.use(self.name, getattr(self.model, self.name))
            self.module = self.cm.__enter__()
        return self.module

    def release(self) -> None:
        if self.cm is not None:
            cm, self.cm, self.module = self.cm, None, None
            cm.__exit__(None, None, None)

    def __enter__(self):
        self.acquire()
        return self

    def __exit__(self, *exc):
        if self.cm is not None:
            cm, self.cm, self.module = self.cm, None, None
            return cm.__exit__(*exc)
        return False


def _call_x0_hook(hook, held: _Held, step: int, n_steps: int, level, x0: torch.Tensor) -> torch.Tensor:
    """x0_hook(step, n_steps, level, x0) with shape / dtype checks; the transformer is released while a hook that
    ``selects`` this step runs."""
    release = hasattr(hook, "selects") and bool(hook.selects(step, n_steps))
    if release:
        held.release()
    try:
        out = hook(step, n_steps, level, x0)
    finally:
        if release:
            held.acquire()
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != tuple(x0.shape):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"x0_hook must return a tensor shaped like x0 {tuple(x0.shape)}, got {got}")
    return out.to(device=x0.device, dtype=x0.dtype)


def _sync(device) -> None:
    """Wait for queued GPU work so stage timings are real (no-op on CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


# =========================================================================================== samplers
def leap_sample(model: VideoModel, first: torch.Tensor, last: torch.Tensor, video: torch.Tensor,
                timestep: int = REFERENCE_TIMESTEP, seed: int = 0, steps: int = 1, aspect: str = "stretch",
                view_filter: str = "nearest", vae_tiling: bool = False,
                progress: Progress | None = None) -> SampleResult:
    """VideoScene student: noise the coarse video's latents to ``timestep`` and leap to x0.

    first, last: [H, W, 3]; video: [F, H', W', 3] float 0..1 (F must suit the model: 49 for CogVideoX-5B I2V).
    steps = 1 is the reference; steps > 1 re-noises x0 to each of :func:`leap_timesteps` (consistency sampling).
    aspect: "stretch" (reference), "crop" (centre crop; output at the crop size) or "pad" (reflect-pad; output at
    the input size). progress (:class:`~vscene_engine.core.runtime.Progress`): ``update(done, total, stage=)`` after the
    stages "encode" / "denoise" / "decode", ``check_interrupt()`` between them.
    """
    progress = as_progress(progress)
    sched = model.schedule
    ts = leap_timesteps(sched.check_timestep(timestep), steps)
    total = 2 + len(ts)
    times = {}
    t0 = time.perf_counter()
    inputs = prepare_inputs(model, first, last, video, aspect, view_filter)
    progress.check_interrupt()
    gen = torch.Generator("cpu").manual_seed(int(seed))
    cond = encode_conditioning(model, inputs, gen, vae_tiling)
    _sync(model.device)
    times["encode_s"] = time.perf_counter() - t0
    progress.update(1, total, stage="encode")
    progress.check_interrupt()
    lat = cond["video_latents"]
    noise = _randn(lat.shape, gen, lat)
    x = sched.add_noise(lat, noise, ts[0])
    t1 = time.perf_counter()
    with model.placer.use("transformer", model.transformer) as tr, torch.no_grad():
        embeds = model.prompt_embeds.to(model.device, model.dtype)
        T, _, h, w = lat.shape[1:]
        rope = rotary_embedding(model, T, h, w, model.device)
        img = cond["image_latents"].to(model.dtype)
        for i, t in enumerate(ts):
            out = transformer_output(tr, x.to(model.dtype), img, t, embeds, rope)
            x0 = sched.x0_from_output(out, x.to(out.dtype), t)
            progress.update(2 + i, total, stage="denoise")
            progress.check_interrupt()
            if i + 1 < len(ts):
                x = sched.add_noise(x0, _randn(x0.shape, gen, x0), ts[i + 1])
        _sync(model.device)
    times["transformer_s"] = time.perf_counter() - t1
    t2 = time.perf_counter()
    frames = decode_latents(model, x0, vae_tiling)
    times["decode_s"] = time.perf_counter() - t2
    progress.update(total, total, stage="decode")
    out = _restore(frames, inputs["plan"]).clamp(0, 1).permute(0, 2, 3, 1).contiguous()
    latents = (x0.float().cpu() / model.scaling_factor).permute(0, 2, 1, 3, 4).contiguous()
    info = dict(times, sigma=cond["sigma"], model_size=inputs["size"], aspect=aspect, seed=int(seed),
                total_s=time.perf_counter() - t0)
    return SampleResult(frames=out, latents=latents, timesteps=ts, info=info)


def teacher_sample(model: VideoModel, first: torch.Tensor, last: torch.Tensor, video: torch.Tensor | None = None,
                   steps: int = 50, guidance: float = 1.0, seed: int = 0, init: str = "noise",
                   start_timestep: int | None = None, aspect: str = "stretch", view_filter: str = "nearest",
                   vae_tiling: bool = False, frames: int | None = None,
                   progress: Progress | None = None, x0_hook: Callable | None = None) -> SampleResult:
    """Multi-step DDIM (eta = 0) sampler of the base model on the student's conditioning.

    init="noise": start from pure noise at the first timestep of the schedule (the base model's own generation;
    ``video`` only gives the output geometry, or pass ``frames``). init="video": SDEdit - noise the coarse video's
    latents to ``start_timestep`` (e.g. 549) and run the DDIM steps below it. guidance > 1 enables classifier-free
    guidance with ``model.negative_prompt_embeds`` (required then). Same seed -> same image-latent noise as
    :func:`leap_sample` (the draws happen in the same order).

    x0_hook(step, n_steps, t, x0) -> x0' (optional, e.g. ``aware3d.make_3d_aware_hook``) is called at every DDIM step
    (step = 0-based index, n_steps = len(timesteps), t = the int timestep) with the x0 estimate [1, T, C, h, w]
    (VAE latents x scaling factor, float32, on the model's device; ``aware3d.model_codec(model)`` decodes / encodes
    this layout) before the update, which then uses the returned x0 (eps is implied by x_t and x0, as in VideoMV).
    A hook with a ``selects(step, n_steps)`` method is called with the transformer's placement released on the
    steps it selects (so it may use the VAE under an offloading placer). x0_hook=None: unchanged sampler.
    progress: as in :func:`leap_sample`.
    """
    progress = as_progress(progress)
    if init not in ("noise", "video"):
        raise ValueError(f"init must be 'noise' or 'video', got {init!r}")
    if init == "video" and (video is None or start_timestep is None):
        raise ValueError("init='video' needs the rendered video and start_timestep (e.g. 549)")
    cfg_on = float(guidance) > 1.0
    if cfg_on and model.negative_prompt_embeds is None:
        raise ValueError("classifier-free guidance (guidance > 1) needs a negative prompt embedding; load one "
                         "(negative_prompt_embeds) or use guidance = 1")
    if video is None:
        H, W = model.native_size
        n = int(frames or model.native_frames)
        video = torch.zeros(n, H, W, 3)
    t0 = time.perf_counter()
    inputs = prepare_inputs(model, first, last, video, aspect, view_filter)
    gen = torch.Generator("cpu").manual_seed(int(seed))
    cond = encode_conditioning(model, inputs, gen, vae_tiling, encode_video=(init == "video"))
    _sync(model.device)
    progress.update(1, steps + 2, stage="encode")
    progress.check_interrupt()
    sched = model.schedule
    ts = sched.timesteps(steps, start=start_timestep if init == "video" else None)
    img = cond["image_latents"].to(model.dtype)
    T, C, h, w = img.shape[1], model.latent_channels, img.shape[3], img.shape[4]
    if init == "video":
        lat = cond["video_latents"]
        x = sched.add_noise(lat, _randn(lat.shape, gen, lat), ts[0])
    else:
        x = _randn((1, T, C, h, w), gen, img)
    t1 = time.perf_counter()
    with _Held(model, "transformer") as held, torch.no_grad():
        tr = held.module
        emb = model.prompt_embeds.to(model.device, model.dtype)
        if cfg_on:
            emb = torch.cat([model.negative_prompt_embeds.to(model.device, model.dtype), emb], 0)
            img2 = torch.cat([img, img], 0)
        rope = rotary_embedding(model, T, h, w, model.device)
        for i, t in enumerate(ts):
            xin = x.to(model.dtype)
            if cfg_on:
                out = transformer_output(tr, torch.cat([xin, xin], 0), img2, t, emb, rope).float()
                u, c = out.chunk(2)
                out = u + float(guidance) * (c - u)
            else:
                out = transformer_output(tr, xin, img, t, emb, rope).float()
            # DDIM step (eta = 0) as diffusers' CogVideoXDDIMScheduler.step: scalar coefficients in the schedule's
            # precision, tensors in the (float32) output's precision
            x_t = x.to(out.dtype)
            x0 = sched.ddim_x0(out, x_t, t)
            if x0_hook is not None:
                x0 = _call_x0_hook(x0_hook, held, i, len(ts), int(t), x0)
                tr = held.module
            x = sched.ddim_update(x_t, x0, t, steps).to(model.dtype)
            progress.update(2 + i, len(ts) + 2, stage="denoise")
            progress.check_interrupt()
        _sync(model.device)
    t2 = time.perf_counter()
    frames_out = decode_latents(model, x, vae_tiling)
    t3 = time.perf_counter()
    progress.update(len(ts) + 2, len(ts) + 2, stage="decode")
    out = _restore(frames_out, inputs["plan"]).clamp(0, 1).permute(0, 2, 3, 1).contiguous()
    latents = (x.float().cpu() / model.scaling_factor).permute(0, 2, 1, 3, 4).contiguous()
    info = {"encode_s": t1 - t0, "transformer_s": t2 - t1, "decode_s": t3 - t2, "total_s": t3 - t0,
            "sigma": cond["sigma"], "guidance": float(guidance), "init": init, "seed": int(seed)}
    return SampleResult(frames=out, latents=latents, timesteps=ts, info=info)
