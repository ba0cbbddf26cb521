"""Miniature replication of VideoScene's Tables 1 and 3 at a scale two CPU cores can train.

Entry point: :func:`replicate` (CLI: ``python -m vscene_engine replicate --out DIR [--smoke]``).

1. Data: procedural tabletop scenes the engine renders itself (a small family: one layout, random texture, random
   camera pair), so a tiny model can learn the ground truth. Per sample: the ground-truth video along the VideoScene
   path between the two views (rendered at 2x and downsampled), a damage level d drawn per scene over
   [damage_min, damage_max], and the coarse-prior video = ``synthetic.damage_video(gt, d)``: misregistration (pose
   error), blur, exposure shift, disocclusion holes and floaters, all growing with d, so the prior's quality (and the
   best leap timestep) differs between scenes as it does for real priors.
2. Teacher: a tiny CogVideoX image-to-video transformer (diffusers ``CogVideoXTransformer3DModel``: 3D RoPE, expert
   adaptive norms, full attention) over a lossless "VAE" (2x2 space-to-depth, 12 latent channels, no temporal
   compression), trained with v-prediction on the ground-truth videos, conditioned on [first, zeros, last] image
   latents exactly as the real model (CogVideoX-5B zero-SNR scheduler).
3. Student: leap-flow consistency distillation of the teacher (Algorithm 1, ``distill.py``) on the coarse renders.
4. DDPNet: contextual-bandit policy over leap timesteps (``ddpnet.py``), reward = -MSE to the ground truth.
5. Evaluation on held-out scenes (levels stratified over the range), overall and per damage level (light / medium /
   heavy thirds of the range): PSNR / SSIM against the ground-truth video, a cross-frame consistency error (TDE:
   mean |(x[f+1]-x[f]) - (gt[f+1]-gt[f])| x 100, lower is better) and a perceptual-free sharpness (gradient energy
   relative to the ground truth's: 1 = as sharp, < 1 blurrier, > 1 noisier). Leap timesteps: the oracle per-scene
   best bin (a sweep on each test scene), DDPNet's choice, the best single fixed bin (chosen on training scenes) and
   t = 549.

Everything is seeded; the report computes which of the paper's directions hold at this scale from the numbers.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import torch
import torch.nn.functional as F

from ..video import leap
from ..core.runtime import Progress, as_progress
from ..video.model import VideoModel

__all__ = ["ReplicateConfig", "SpaceToDepthVAE", "make_samples", "train_teacher", "evaluate", "replicate"]


@dataclass
class ReplicateConfig:
    """Sizes and budgets. Defaults: the full miniature run (<= 40 min at 1 thread); :meth:`smoke` for CI.

    damage_min / damage_max: range of the per-scene damage level of the coarse prior (``synthetic.damage_video``);
    training levels are drawn uniformly, held-out levels stratified over the range. n_val: training scenes the best
    single fixed leap timestep is chosen on.
    """

    n_train: int = 48
    n_test: int = 12
    frames: int = 9
    width: int = 48
    height: int = 32
    render_scale: int = 2
    gaussians: int = 16000
    damage_min: float = 0.0
    damage_max: float = 1.0
    teacher_steps: int = 2500
    teacher_lr: float = 5e-4
    batch: int = 4
    distill_steps: int = 1200
    distill_lr: float = 1e-4
    distill_k: int = 20
    t_max: int = 900
    ddpnet_steps: int = 300
    ddpnet_bins: int = 9
    ddpnet_baseline: str = "per_sample"
    n_val: int = 16
    eval_teacher_steps: tuple = (1, 4, 50)
    fixed_t: int = 549
    layers: int = 4
    heads: int = 4
    head_dim: int = 16
    seed: int = 0

    @classmethod
    def smoke(cls) -> "ReplicateConfig":
        return cls(n_train=6, n_test=3, gaussians=6000, teacher_steps=40, distill_steps=30, ddpnet_steps=20,
                   eval_teacher_steps=(1, 4), layers=2, heads=2, n_val=6)

    def damage_levels(self, n: int, seed: int, stratified: bool) -> list[float]:
        """n damage levels in [damage_min, damage_max]: uniform draws, or one per stratum (j + u) / n."""
        g = torch.Generator().manual_seed(seed)
        u = torch.rand(n, generator=g)
        if stratified:
            u = (torch.arange(n) + u) / n
        return [self.damage_min + float(x) * (self.damage_max - self.damage_min) for x in u]

    def damage_bucket(self, level: float) -> str:
        """'light' / 'medium' / 'heavy': the third of [damage_min, damage_max] the level lies in."""
        r = (level - self.damage_min) / max(self.damage_max - self.damage_min, 1e-9)
        return DAMAGE_BUCKETS[min(2, max(0, int(r * 3)))]


DAMAGE_BUCKETS = ("light", "medium", "heavy")  # thirds of the damage range, lowest first


# ============================================================================================ "VAE"
class _Posterior:
    def __init__(self, z):
        self.mean = z

    def sample(self, generator=None):
        return self.mean

    def mode(self):
        return self.mean


class SpaceToDepthVAE(torch.nn.Module):
    """Lossless stand-in for the CogVideoX VAE with the same interface: pixels [B, 3, F, H, W] in [-1, 1] <->
    latents [B, 12, F, H/2, W/2] (2x2 space-to-depth; no temporal compression; scaling factor 1)."""

    def __init__(self):
        super().__init__()
        self.config = SimpleNamespace(block_out_channels=[12, 12], temporal_compression_ratio=1, latent_channels=12,
                                      scaling_factor=1.0)

    def encode(self, x: torch.Tensor):
        B, C, Fr, H, W = x.shape
        z = F.pixel_unshuffle(x.permute(0, 2, 1, 3, 4).reshape(B * Fr, C, H, W), 2)
        z = z.reshape(B, Fr, C * 4, H // 2, W // 2).permute(0, 2, 1, 3, 4)
        return SimpleNamespace(latent_dist=_Posterior(z))

    def decode(self, z: torch.Tensor):
        B, C, Fr, h, w = z.shape
        x = F.pixel_shuffle(z.permute(0, 2, 1, 3, 4).reshape(B * Fr, C, h, w), 2)
        return SimpleNamespace(sample=x.reshape(B, Fr, C // 4, h * 2, w * 2).permute(0, 2, 1, 3, 4))


def tiny_model(cfg: ReplicateConfig, seed: int = 0) -> VideoModel:
    """A tiny CogVideoX I2V transformer of the real family (RoPE, no learned positional embeddings) + the
    space-to-depth VAE + the CogVideoX-5B scheduler config."""
    from diffusers import CogVideoXTransformer3DModel

    from ..video.loading import COGVIDEOX_5B_SCHEDULER_CONFIG

    torch.manual_seed(seed)
    tr = CogVideoXTransformer3DModel(
        num_attention_heads=cfg.heads, attention_head_dim=cfg.head_dim, in_channels=24, out_channels=12,
        time_embed_dim=64, text_embed_dim=16, num_layers=cfg.layers, sample_width=cfg.width // 2,
        sample_height=cfg.height // 2, sample_frames=cfg.frames, temporal_compression_ratio=1,
        max_text_seq_length=1, use_rotary_positional_embeddings=True, use_learned_positional_embeddings=False)
    emb = torch.zeros(1, 1, 16)
    return VideoModel(transformer=tr.eval(), vae=SpaceToDepthVAE(), scheduler_config=dict(COGVIDEOX_5B_SCHEDULER_CONFIG),
                      prompt_embeds=emb, name="replication-tiny")


# ============================================================================================ data
def _camera_pair(seed: int, width: int, height: int):
    from ..core.cameras import Cameras, look_at

    g = torch.Generator().manual_seed(10_000 + seed)
    f = 0.5 * width / math.tan(math.radians(55.0) / 2)
    target = torch.tensor([0.0, 0.35, 3.0]) + torch.randn(3, generator=g) * torch.tensor([0.3, 0.1, 0.3])
    base = 0.5 + 0.4 * float(torch.rand(1, generator=g))
    eye_a = torch.tensor([-base / 2, -0.35, 0.0]) + torch.randn(3, generator=g) * 0.1
    eye_b = torch.tensor([base / 2, -0.3, 0.1]) + torch.randn(3, generator=g) * 0.1
    c2w = look_at(torch.stack([eye_a, eye_b]), target.expand(2, 3))
    K = torch.tensor([[f, 0, width / 2], [0, f, height / 2], [0, 0, 1.0]])
    return Cameras(c2w=c2w, K=K, width=width, height=height, near=0.5, far=10.0)


def make_samples(n: int, cfg: ReplicateConfig, seed0: int, stratified: bool = False,
                 progress: Progress | None = None) -> list[dict]:
    """n samples {gt, coarse: [F, H, W, 3] in 0..1, level, seed}: the ground-truth video along the path and the
    coarse prior = the ground truth damaged at the scene's level (``synthetic.damage_video``).
    progress: :class:`~vscene_engine.core.runtime.Progress` (``update(i, n, stage="samples")`` per sample)."""
    progress = as_progress(progress)
    from ..pipeline import make_path
    from ..render.rasterize import render
    from .synthetic import damage_video, procedural_scene
    from ..views.pair import ViewPair

    W, H = cfg.width * cfg.render_scale, cfg.height * cfg.render_scale
    white = (1.0, 1.0, 1.0)
    levels = cfg.damage_levels(n, seed0 + 77, stratified)
    out = []
    for i in range(n):
        s = seed0 + i
        scene = procedural_scene(n=cfg.gaussians, seed=s)
        cams = _camera_pair(s, W, H)
        with torch.no_grad():
            photos = render(scene, cams, background=white).rgb.clamp(0, 1)
            path = make_path(ViewPair(photos, cams, 0.5, 10.0), frames=cfg.frames)
            gt = render(scene, path, background=white).rgb.clamp(0, 1)
        gt = F.interpolate(gt.permute(0, 3, 1, 2), size=(cfg.height, cfg.width), mode="area").permute(0, 2, 3, 1)
        gt = gt.contiguous()
        out.append({"gt": gt, "coarse": damage_video(gt, levels[i], seed=s), "level": levels[i], "seed": s})
        progress.update(i + 1, n, stage="samples")
    return out


def latents_of(model: VideoModel, video: torch.Tensor) -> torch.Tensor:
    """video [F, H, W, 3] 0..1 -> latents [1, T, C, h, w] (scaled; the sampler's layout) via ``leap.video_latents``."""
    return leap.video_latents(model, video).permute(0, 2, 1, 3, 4).contiguous()


def condition_of(model: VideoModel, sample: dict, gen: torch.Generator) -> torch.Tensor:
    """Image latents [1, T, C, h, w] = [first, 0.., last] from the path's end frames (= the two photos), with the
    reference's pixel noise sigma = exp(N(-3, 0.5)) drawn from ``gen`` (as ``leap.encode_conditioning``)."""
    inputs = {"video": sample["gt"].permute(3, 0, 1, 2).unsqueeze(0) * 2 - 1,
              "first": (sample["gt"][0].permute(2, 0, 1)[None, :, None] * 2 - 1),
              "last": (sample["gt"][-1].permute(2, 0, 1)[None, :, None] * 2 - 1)}
    return leap.encode_conditioning(model, inputs, gen, encode_video=False)["image_latents"]


# ============================================================================================ teacher
def train_teacher(model: VideoModel, samples: list[dict], steps: int, lr: float, batch: int, seed: int,
                  progress: Progress | None = None) -> list[float]:
    """v-prediction training of ``model.transformer`` on the ground-truth videos (t ~ U{0..999}, zero-SNR schedule,
    conditioning with fresh pixel noise each step). Returns the loss per step. progress:
    ``update(step, steps, stage="teacher", loss=)`` after each step, ``check_interrupt()`` before it."""
    progress = as_progress(progress)
    if not samples:
        raise ValueError("no training samples")
    tr = model.transformer
    tr.train().requires_grad_(True)
    g = torch.Generator().manual_seed(seed)
    sched = model.schedule
    x0_all = torch.cat([latents_of(model, s["gt"]) for s in samples])  # [N,T,C,h,w]
    T, h, w = x0_all.shape[1], x0_all.shape[3], x0_all.shape[4]
    rope = leap.rotary_embedding(model, T, h, w, "cpu")
    emb = model.prompt_embeds
    opt = torch.optim.AdamW([p for p in tr.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    losses = []
    for step in range(steps):
        progress.check_interrupt()
        idx = torch.randint(0, len(samples), (batch,), generator=g).tolist()
        x0 = x0_all[idx]
        cond = torch.cat([condition_of(model, samples[i], g) for i in idx])
        t = torch.randint(0, 1000, (batch,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        x_t = sched.add_noise(x0, eps, t)
        v = sched.velocity(x0, eps, t)
        out = tr(hidden_states=torch.cat([x_t, cond], 2), encoder_hidden_states=emb.expand(batch, -1, -1),
                 timestep=t, image_rotary_emb=rope, return_dict=False)[0]
        loss = F.mse_loss(out, v)
        if not torch.isfinite(loss):
            raise ValueError(f"teacher loss is {loss.item()} at step {step}; lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tr.parameters(), 1.0)
        opt.step()
        losses.append(float(loss.detach()))
        progress.update(step + 1, steps, stage="teacher", loss=losses[-1])
    tr.eval().requires_grad_(False)
    return losses


# ============================================================================================ metrics
def _grad_energy(v: torch.Tensor) -> torch.Tensor:
    """Mean squared finite difference along x and y of a video [F, H, W, 3]."""
    return (v[:, :, 1:] - v[:, :, :-1]).pow(2).mean() + (v[:, 1:] - v[:, :-1]).pow(2).mean()


def metrics(pred: torch.Tensor, gt: torch.Tensor) -> dict:
    """PSNR (dB), SSIM, TDE (x100, lower better) and sharpness (gradient energy / the ground truth's: 1 = as sharp,
    < 1 blurrier, > 1 noisier) of a video [F, H, W, 3] against the ground truth."""
    from ..render.losses import psnr, ssim

    pred, gt = pred.float().clamp(0, 1), gt.float()
    tde = ((pred[1:] - pred[:-1]) - (gt[1:] - gt[:-1])).abs().mean() * 100
    sharp = _grad_energy(pred) / _grad_energy(gt).clamp_min(1e-12)
    return {"psnr": float(psnr(pred, gt)), "ssim": float(ssim(pred, gt)), "tde": float(tde), "sharp": float(sharp)}


def _mean(rows: list[dict]) -> dict:
    return {k: sum(r[k] for r in rows) / len(rows) for k in rows[0]}


# ============================================================================================ evaluation
def _student_model(model: VideoModel, transformer) -> VideoModel:
    import dataclasses

    return dataclasses.replace(model, transformer=transformer.eval(), name="student")


def leap_sweep(student: VideoModel, sample: dict, bins: list[int], seed: int) -> dict:
    """{t: metrics} of the one-step student leaping from each timestep in ``bins`` on one sample."""
    a, b = sample["gt"][0], sample["gt"][-1]
    return {int(t): metrics(leap.leap_sample(student, a, b, sample["coarse"], timestep=int(t), seed=seed).frames,
                            sample["gt"]) for t in bins}


def fixed_t_sweep(student: VideoModel, samples: list[dict], bins: list[int], seed: int) -> dict:
    """Mean PSNR of the one-step student at each fixed timestep over ``samples`` -> {t: psnr}."""
    per = [leap_sweep(student, s, bins, seed + j) for j, s in enumerate(samples)]
    return {int(t): sum(p[t]["psnr"] for p in per) / len(per) for t in bins}


ROW_COARSE = "coarse render (damaged prior)"
ROW_NOISE = "student, 1 step, from noise (no leap)"
ROW_DDPNET = "student, 1 step, leap + DDPNet (full)"
ROW_ORACLE = "student, 1 step, leap oracle per-scene t"


def row_teacher(n: int) -> str:
    return f"teacher, {n} step{'s' if n > 1 else ''} (from noise)"


def row_fixed(t: int) -> str:
    return f"student, 1 step, leap t={t}"


def row_best(t: int) -> str:
    return f"student, 1 step, leap best fixed t={t}"


def evaluate(teacher: VideoModel, student: VideoModel, test: list[dict], cfg: ReplicateConfig, best_t: int,
             bins: list[int], ddpnet=None, progress: Progress | None = None) -> dict:
    """Per held-out scene: every row's metrics, the student's sweep over ``bins`` (-> the oracle per-scene t) and
    DDPNet's choice. Returns {rows: name -> mean metrics, by_level: bucket -> name -> mean metrics, scenes: [...]}.
    progress: ``update(j, n, stage="evaluate")`` per held-out sample."""
    progress = as_progress(progress)
    from ..policy.ddpnet import choose_timestep

    scenes = []
    for j, s in enumerate(test):
        a, b, gt, coarse = s["gt"][0], s["gt"][-1], s["gt"], s["coarse"]
        seed = cfg.seed + 1000 + j
        rows = {ROW_COARSE: metrics(coarse, gt)}
        for n in cfg.eval_teacher_steps:
            rows[row_teacher(n)] = metrics(leap.teacher_sample(teacher, a, b, coarse, steps=n, seed=seed).frames, gt)
        rows[ROW_NOISE] = metrics(leap.leap_sample(student, a, b, coarse, timestep=999, seed=seed).frames, gt)
        sweep = leap_sweep(student, s, sorted(set(bins) | {cfg.fixed_t, best_t}), seed)
        rows[row_fixed(cfg.fixed_t)] = sweep[cfg.fixed_t]
        rows[row_best(best_t)] = sweep[best_t]
        oracle_t = max(bins, key=lambda t: sweep[t]["psnr"])
        rows[ROW_ORACLE] = sweep[oracle_t]
        scene = {"seed": s["seed"], "level": s["level"], "bucket": cfg.damage_bucket(s["level"]), "oracle_t": oracle_t,
                 "sweep_psnr": {t: sweep[t]["psnr"] for t in bins}}
        if ddpnet is not None:
            x = latents_of(student, coarse).permute(0, 2, 1, 3, 4)  # [1,C,T,h,w]
            t, _, _ = choose_timestep(ddpnet, x, mode="greedy")
            t = int(t[0]) if isinstance(t, (list, tuple)) else int(t)
            rows[ROW_DDPNET] = sweep[t] if t in sweep else metrics(
                leap.leap_sample(student, a, b, coarse, timestep=t, seed=seed).frames, gt)
            scene["ddpnet_t"] = t
        scene["rows"] = rows
        scenes.append(scene)
        progress.update(j + 1, len(test), stage="evaluate")
    names = list(scenes[0]["rows"])
    by_level = {}
    for bucket in DAMAGE_BUCKETS:
        sel = [sc for sc in scenes if sc["bucket"] == bucket]
        if sel:
            by_level[bucket] = {k: _mean([sc["rows"][k] for sc in sel]) for k in names}
    return {"rows": {k: _mean([sc["rows"][k] for sc in scenes]) for k in names}, "by_level": by_level,
            "scenes": scenes, "ddpnet_t": [sc.get("ddpnet_t") for sc in scenes if "ddpnet_t" in sc]}


def _claim(claim: str, holds: bool, detail: str, why_not: str = "") -> dict:
    return {"claim": claim, "holds": bool(holds), "detail": detail, "why_not": "" if holds else why_not}


def directions(ev: dict, cfg: ReplicateConfig, best_t: int) -> list[dict]:
    """The paper's claims checked on the held-out numbers: each {claim, holds, detail, why_not} (why_not: the
    reason the numbers give when it does not hold)."""
    rows, by = ev["rows"], ev["by_level"]
    p = lambda name, src=rows: src[name]["psnr"]  # noqa: E731
    n_max = max(cfg.eval_teacher_steps)
    t1, tN = rows[row_teacher(1)], rows[row_teacher(n_max)]
    best, noise = p(row_best(best_t)), p(ROW_NOISE)
    oracle = p(ROW_ORACLE)
    oracle_ts = [sc["oracle_t"] for sc in ev["scenes"]]
    out = []
    per_bucket = {b: sorted({sc["oracle_t"] for sc in ev["scenes"] if sc["bucket"] == b}) for b in by}
    out.append(_claim("the best leap t differs between scenes (prior quality varies)", len(set(oracle_ts)) > 1,
                      "oracle t per level: " + "; ".join(f"{b} {v}" for b, v in per_bucket.items()),
                      "every held-out scene is best at the same t: nothing to learn per input"))
    if ROW_DDPNET in rows:
        full = p(ROW_DDPNET)
        gain = oracle - best
        hist = {t: ev["ddpnet_t"].count(t) for t in sorted(set(ev["ddpnet_t"]))}
        why = (f"{full - best:+.2f} dB against the best fixed t and {oracle - full:.2f} dB short of the oracle, "
               f"whose per-scene choice gains {gain:.2f} dB over the best fixed t; DDPNet chose {hist} "
               f"(oracle {sorted(oracle_ts)})")
        if gain < 0.1:
            why += "; the per-scene gain is too small to learn"
        elif len(hist) == 1:
            why += ("; the policy collapsed to one bin for every held-out scene: it does not read the damage level "
                    "from the coarse latents")
        out.append(_claim("DDPNet beats the best single fixed t (by more than 0.1 dB)", full > best + 0.1,
                          f"{full:.2f} vs {best:.2f} dB (oracle {oracle:.2f}, t=549 {p(row_fixed(cfg.fixed_t)):.2f})",
                          why))
        if "heavy" in by:
            h_full, h_coarse = p(ROW_DDPNET, by["heavy"]), p(ROW_COARSE, by["heavy"])
            out.append(_claim("student 1-step repairs heavily damaged priors (>= coarse render, heavy level)",
                              h_full >= h_coarse, f"{h_full:.2f} vs {h_coarse:.2f} dB",
                              f"the student is {h_coarse - h_full:.2f} dB below the damaged render it starts from"))
        out.append(_claim(f"student 1-step (leap + DDPNet) close to teacher {n_max}-step (within 1 dB or better)",
                          full >= tN["psnr"] - 1.0, f"{full:.2f} vs {tN['psnr']:.2f} dB",
                          f"the student is {tN['psnr'] - full:.2f} dB below its teacher"))
    blur1 = t1["sharp"] < min(1.0, tN["sharp"])
    out.append(_claim(f"teacher 1-step blurry: sharper than neither the ground truth nor teacher {n_max}-step "
                      f"(sharpness = gradient energy / ground truth)", blur1,
                      f"{t1['sharp']:.2f} vs {tN['sharp']:.2f}",
                      "sharpness >= 1: the 1-step output is noisy, not blurred" if t1["sharp"] >= 1 else
                      f"the {n_max}-step output is blurrier still"))
    pn_why = (f"{t1['psnr']:.2f} vs {tN['psnr']:.2f} dB: the 1-step sample is the posterior mean, which PSNR rewards "
              f"(its blur shows in sharpness {t1['sharp']:.2f} vs {tN['sharp']:.2f}); the paper's gap is perceptual"
              if blur1 else f"{t1['psnr']:.2f} vs {tN['psnr']:.2f} dB")
    out.append(_claim(f"teacher 1-step worse than teacher {n_max}-step in PSNR (>= 1 dB)", t1["psnr"] <= tN["psnr"] - 1.0,
                      f"{t1['psnr']:.2f} vs {tN['psnr']:.2f} dB", pn_why))
    out.append(_claim("leap (from the render) beats the student from pure noise", best > noise,
                      f"{best:.2f} vs {noise:.2f} dB", "the render adds nothing the noise start lacks"))
    return out


def table_markdown(ev: dict) -> str:
    """One row per method: PSNR overall and per damage level, then SSIM, TDE and sharpness overall."""
    levels = [b for b in DAMAGE_BUCKETS if b in ev["by_level"]]
    counts = {b: sum(sc["bucket"] == b for sc in ev["scenes"]) for b in levels}
    head = "| method | PSNR (dB) ↑ | " + " | ".join(f"PSNR {b} ({counts[b]})" for b in levels) + \
        " | SSIM ↑ | TDE ×100 ↓ | sharpness (1 = GT) |"
    lines = [head, "|---" * (5 + len(levels)) + "|"]
    for k, v in ev["rows"].items():
        lv = " | ".join(f"{ev['by_level'][b][k]['psnr']:.2f}" for b in levels)
        lines.append(f"| {k} | {v['psnr']:.2f} | {lv} | {v['ssim']:.3f} | {v['tde']:.2f} | {v['sharp']:.2f} |")
    return "\n".join(lines)


def scenes_markdown(ev: dict) -> str:
    """Per held-out scene: damage level, coarse PSNR, the oracle t, DDPNet's t and the student's PSNR at each."""
    lines = ["| scene | damage | coarse PSNR | oracle t (PSNR) | DDPNet t (PSNR) |", "|---|---|---|---|---|"]
    for sc in ev["scenes"]:
        o, d = sc["oracle_t"], sc.get("ddpnet_t")
        dd = f"{d} ({sc['rows'][ROW_DDPNET]['psnr']:.2f})" if d is not None else "-"
        lines.append(f"| {sc['seed']} | {sc['level']:.2f} ({sc['bucket']}) | {sc['rows'][ROW_COARSE]['psnr']:.2f} | "
                     f"{o} ({sc['sweep_psnr'][o]:.2f}) | {dd} |")
    return "\n".join(lines)


# ============================================================================================ the whole run
class _LogProgress(Progress):
    """``[stage] done/total loss`` through ``log`` every ``every`` updates."""

    def __init__(self, log: Callable[[str], None], every: int):
        self.log, self.every = log, max(1, int(every))

    def update(self, done, total, *, stage=None, loss=None, preview=None) -> None:
        if done % self.every == 0:
            self.log(f"[{stage}] {done}/{total}" + ("" if loss is None else f" loss {loss:.5f}"))


def replicate(out_dir, cfg: ReplicateConfig | None = None, log: Callable[[str], None] = print) -> dict:
    """Data -> teacher -> distilled student -> DDPNet -> evaluation; writes ``out_dir``/{table.md, results.json,
    teacher.safetensors, student.safetensors, ddpnet.safetensors, montage.png}. Returns the results dict."""
    from safetensors.torch import save_file

    from ..core.atomic import atomic_write, atomic_write_bytes
    from ..policy.ddpnet import DDPNet, DDPNetConfig, make_leap_reward, save_ddpnet, train_ddpnet
    from ..train.distill import LatentDataset, distill

    cfg = cfg or ReplicateConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    timings, t0 = {}, time.perf_counter()

    def stage(name):
        now = time.perf_counter()
        timings[name] = now - stage.t
        stage.t = now
        log(f"[replicate] {name}: {timings[name]:.1f}s")
    stage.t = t0

    every = max(1, cfg.teacher_steps // 10)
    log(f"[replicate] rendering {cfg.n_train} training + {cfg.n_test} test scenes ({cfg.frames} frames, "
        f"{cfg.width}x{cfg.height})")
    train = make_samples(cfg.n_train, cfg, seed0=cfg.seed * 100_000)
    test = make_samples(cfg.n_test, cfg, seed0=cfg.seed * 100_000 + 50_000, stratified=True)
    stage("data")

    teacher = tiny_model(cfg, seed=cfg.seed)
    tl = train_teacher(teacher, train, cfg.teacher_steps, cfg.teacher_lr, cfg.batch, cfg.seed,
                       progress=_LogProgress(log, every))
    atomic_write(out / "teacher.safetensors", lambda p: save_file(
        {k: v.contiguous() for k, v in teacher.transformer.state_dict().items()}, p))
    stage("teacher")

    g = torch.Generator().manual_seed(cfg.seed + 7)
    render_l = [latents_of(teacher, s["coarse"]) for s in train]
    gt_l = [latents_of(teacher, s["gt"]) for s in train]
    image_l = [condition_of(teacher, s, g) for s in train]
    data = LatentDataset.from_tensors(render_l, image_l, gt_l)
    dev = max(1, cfg.distill_steps // 10)
    res = distill(teacher, data, out / "distill_ckpt.safetensors", overwrite=True, steps=cfg.distill_steps,
                  lr=cfg.distill_lr, k=cfg.distill_k, t_max=cfg.t_max, train_params="all", batch_size=cfg.batch,
                  seed=cfg.seed, progress=_LogProgress(log, dev))
    import copy

    ema_tr = copy.deepcopy(res.student)
    with torch.no_grad():
        params = dict(ema_tr.named_parameters())
        for k, v in res.ema.items():
            params[k].copy_(v)
    student = _student_model(teacher, ema_tr.requires_grad_(False))
    atomic_write(out / "student.safetensors", lambda p: save_file(
        {k: v.contiguous() for k, v in student.transformer.state_dict().items()}, p))
    stage("distill")

    dcfg = DDPNetConfig(in_channels=teacher.latent_channels, n_bins=cfg.ddpnet_bins, t_min=100, t_max=cfg.t_max,
                        input_size=(cfg.frames, cfg.height // 2, cfg.width // 2))
    bins = dcfg.bins()
    n_val = max(1, min(len(train), cfg.n_val))
    sweep = fixed_t_sweep(student, train[:n_val], bins, cfg.seed + 500)
    best_t = max(sweep, key=sweep.get)
    net = DDPNet(dcfg, seed=cfg.seed)
    reward = make_leap_reward(student, render_l, gt_l, image_l, seed=cfg.seed)
    hist = train_ddpnet(net, [r[0].permute(1, 0, 2, 3) for r in render_l], reward, cfg.ddpnet_steps,
                        batch=cfg.batch, seed=cfg.seed, baseline=cfg.ddpnet_baseline)
    save_ddpnet(net, out / "ddpnet.safetensors")
    stage("ddpnet")

    ev = evaluate(teacher, student, test, cfg, best_t, bins, ddpnet=net)
    stage("evaluate")
    checks = directions(ev, cfg, best_t)
    mean10 = lambda xs, tail: _avg(xs[-10:] if tail else xs[:10])  # noqa: E731
    results = {"config": asdict(cfg), "rows": ev["rows"], "by_level": ev["by_level"], "scenes": ev["scenes"],
               "ddpnet_t": ev["ddpnet_t"], "fixed_t_sweep": sweep, "best_fixed_t": best_t, "directions": checks,
               "timings_s": timings,
               "teacher_loss": {"first10": mean10(tl, False), "last10": mean10(tl, True)},
               "distill_loss": {"first10": mean10(res.losses, False), "last10": mean10(res.losses, True)},
               "ddpnet": {k: v for k, v in hist.items() if not isinstance(v, list) or len(v) < 50},
               "ddpnet_reward": {"first10": mean10(hist.get("reward", []), False),
                                 "last10": mean10(hist.get("reward", []), True)}}
    md = report_markdown(results, cfg)
    atomic_write_bytes(out / "results.json", json.dumps(results, indent=1, default=str).encode())
    atomic_write_bytes(out / "table.md", md.encode())
    log(md)
    return results


def report_markdown(results: dict, cfg: ReplicateConfig) -> str:
    """table.md of a run from its results.json dict: the tables and the paper's directions, recomputed from the
    numbers (``python -m vscene_engine replicate --out DIR --report-only`` rebuilds it)."""
    ev = {k: results[k] for k in ("rows", "by_level", "scenes", "ddpnet_t")}
    best_t, sweep = int(results["best_fixed_t"]), {int(t): v for t, v in results["fixed_t_sweep"].items()}
    checks = directions(ev, cfg, best_t)
    results["directions"] = checks
    n_val = max(1, min(cfg.n_train, cfg.n_val))
    minutes = sum(results["timings_s"].values()) / 60
    md = ["# Miniature replication (VideoScene Tables 1 and 3, tiny scale)", "",
          f"{cfg.n_train} training / {cfg.n_test} held-out procedural scenes, {cfg.frames} frames at "
          f"{cfg.width}x{cfg.height}, prior damage level {cfg.damage_min:g}..{cfg.damage_max:g} per scene; seed "
          f"{cfg.seed}; total {minutes:.1f} min.", "",
          table_markdown(ev), "", f"Best fixed t on {n_val} training scenes: {best_t} "
          f"(sweep: {', '.join(f'{t}: {v:.2f}' for t, v in sweep.items())}).", "", scenes_markdown(ev), "",
          "| paper's direction | holds here | numbers | why not |", "|---|---|---|---|"]
    md += [f"| {c['claim']} | {'yes' if c['holds'] else 'NO'} | {c['detail']} | {c['why_not']} |" for c in checks]
    return "\n".join(md) + "\n"


def rebuild_report(out_dir) -> str:
    """Rewrite ``out_dir``/table.md (and the directions in results.json) from ``out_dir``/results.json."""
    from ..core.atomic import atomic_write_bytes

    out = Path(out_dir)
    try:
        results = json.loads((out / "results.json").read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{out / 'results.json'}: cannot read the results of a replicate run ({e}); run "
                         f"`python -m vscene_engine replicate --out {out}` first") from None
    for sc in results.get("scenes", []):  # JSON made the timestep keys strings
        if isinstance(sc.get("sweep_psnr"), dict):
            sc["sweep_psnr"] = {int(t): v for t, v in sc["sweep_psnr"].items()}
    known = {f.name for f in fields(ReplicateConfig)}
    cfg = ReplicateConfig(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in results["config"].items()
                             if k in known})
    md = report_markdown(results, cfg)
    atomic_write_bytes(out / "results.json", json.dumps(results, indent=1, default=str).encode())
    atomic_write_bytes(out / "table.md", md.encode())
    return md


def _avg(xs) -> float | None:
    xs = [float(x) for x in xs]
    return sum(xs) / len(xs) if xs else None


def add_parser(sub) -> None:
    p = sub.add_parser("replicate", help="miniature replication of VideoScene's tables (synthetic scenes, CPU)")
    p.add_argument("--out", required=True, help="output folder (table.md, results.json, checkpoints)")
    p.add_argument("--smoke", action="store_true", help="tiny budgets (CI): checks every stage runs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--teacher-steps", type=int, default=None)
    p.add_argument("--distill-steps", type=int, default=None)
    p.add_argument("--ddpnet-steps", type=int, default=None)
    p.add_argument("--n-train", type=int, default=None)
    p.add_argument("--n-test", type=int, default=None)
    p.add_argument("--report-only", action="store_true",
                   help="rebuild table.md from the results.json already in --out (no training)")
    p.set_defaults(func=run_cli)


def run_cli(args) -> int:
    import dataclasses

    if args.report_only:
        print(rebuild_report(args.out))
        return 0
    cfg = ReplicateConfig.smoke() if args.smoke else ReplicateConfig()
    over = {k: getattr(args, k) for k in ("teacher_steps", "distill_steps", "ddpnet_steps", "n_train", "n_test")
            if getattr(args, k) is not None}
    cfg = dataclasses.replace(cfg, seed=args.seed, **over)
    replicate(args.out, cfg)
    return 0
