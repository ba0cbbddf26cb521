"""Tests of vscene_engine.compose.aware3d (3D-aware x0 hook, consistency measure, student refine) and its wiring into
leap.teacher_sample and compose.compose_sample.

Toy: a small engine-rendered scene seen along a VideoScene camera path; a "denoiser" returns the true views with
independent per-view sub-pixel shifts and colour jitter (view-inconsistent outputs). Latents = 2x2 space-to-depth of
[-1, 1] pixels (a lossless stand-in VAE).
"""
from __future__ import annotations

import contextlib

import pytest
import torch
import torch.nn.functional as F

from vscene_engine.compose import aware3d as A
from vscene_engine.video import leap
from vscene_engine.compose.diffusion2 import GridConditioning, WeightSchedule, compose_sample
from vscene_engine.render.losses import psnr

W, H, NF = 32, 24, 7
BG = (1.0, 1.0, 1.0)


def _path(w=W, h=H, frames=NF, seed=3):
    from vscene_engine.pipeline import make_path
    from vscene_engine.tools.replicate import _camera_pair
    from vscene_engine.views.pair import ViewPair

    cams = _camera_pair(seed, w, h)
    return make_path(ViewPair(torch.zeros(2, h, w, 3), cams, 0.5, 10.0), frames=frames)


def encode(frames):  # [N, H, W, 3] 0..1 -> [N, 12, H/2, W/2]
    return F.pixel_unshuffle(frames.permute(0, 3, 1, 2) * 2 - 1, 2)


def decode(z):
    return (F.pixel_shuffle(z, 2) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)


@pytest.fixture(scope="module")
def toy():
    from vscene_engine.render.rasterize import render
    from vscene_engine.tools.synthetic import procedural_scene

    torch.set_num_threads(1)
    path = _path()
    with torch.no_grad():
        truth = render(procedural_scene(n=5000, seed=3), path, background=BG).rgb.clamp(0, 1)
    return {"path": path, "truth": truth, "bad": A.jitter_views(truth, seed=0)}


MEASURE = dict(iters=150, n_init=1000, background=BG, seed=0)
ROW_ONLY = WeightSchedule(s0=0.0)  # the video (row) model only


# ------------------------------------------------------------------------------------------------ the 3D step
def test_hook_makes_views_consistent_and_closer_to_truth(toy):
    path, truth, bad = toy["path"], toy["truth"], toy["bad"]
    cfg = A.Aware3DConfig(iters=60, init_iters=200, n_init=1000, background=BG, seed=0)
    with torch.inference_mode():  # as under ComfyUI: inference tensors in, the hook leaves inference mode itself
        x0 = encode(bad.clone())
        cams = path.clone()
        hook = A.make_3d_aware_hook(decode, encode, cams, cfg)
        out = hook(20, 50, 500, x0)
    assert out.shape == x0.shape and out.dtype == x0.dtype and hook.calls == 1 and len(hook.history) == 1
    fixed = decode(out.clone())
    p_before, p_after = float(psnr(bad, truth)), float(psnr(fixed, truth))
    m_bad = A.inconsistency(bad, path, **MEASURE, holdout=3)
    m_fix = A.inconsistency(fixed, path, **MEASURE, holdout=3)
    m_true = A.inconsistency(truth, path, **MEASURE)
    print(f"psnr to truth {p_before:.2f} -> {p_after:.2f}; inconsistency truth {m_true.inconsistency:.2f}, "
          f"perturbed {m_bad.inconsistency:.2f} (holdout {m_bad.holdout_psnr:.2f} dB), after hook "
          f"{m_fix.inconsistency:.2f} (holdout {m_fix.holdout_psnr:.2f} dB)")
    # the measure ranks the true views above the perturbed ones (measured ~9 vs ~24 grey levels)
    assert m_true.inconsistency < 0.7 * m_bad.inconsistency
    # the hook removes most of the inconsistency (measured ~24 -> ~3) and the held-out views agree (~19 -> ~35 dB)
    assert m_fix.inconsistency < 0.4 * m_bad.inconsistency
    assert m_fix.holdout_psnr > m_bad.holdout_psnr + 5.0
    assert m_fix.psnr > m_bad.psnr + 5.0
    # and gets closer to the truth (measured +2.5 dB)
    assert p_after > p_before + 1.0
    assert hook.scenes[0] is not None and hook.history[0]["iters"] == [200]

    # second application: warm-started from the first scene with the fast iteration count
    hook2 = A.make_3d_aware_hook(decode, encode, path, cfg)
    hook2.scenes = [hook.scenes[0]]
    hook2(30, 50, 300, encode(bad))
    assert hook2.history[0]["iters"] == [60] and hook2.history[0]["fit_psnr"] > 18.0


def test_hook_identity_on_unselected_steps_and_step_rule(toy):
    calls = []

    def dec(z):
        calls.append(1)
        return decode(z)

    hook = A.make_3d_aware_hook(dec, encode, toy["path"], A.Aware3DConfig())
    x0 = encode(toy["bad"])
    for i in range(50):
        if i not in (20, 30, 40):
            assert hook(i, 50, 999 - 20 * i, x0) is x0
    assert not calls and hook.calls == 47 and not hook.history
    assert [i for i in range(50) if hook.selects(i, 50)] == [20, 30, 40]
    assert A.select_steps(50) == [20, 30, 40]          # VideoMV's steps 20, 30, 40 of 50
    assert A.select_steps(25) == [10, 20]
    assert A.select_steps(10) == [4]
    assert A.select_steps(4) == [2]
    assert A.select_steps(50, A.Aware3DConfig(every=5, start=0.8)) == [40, 45]
    assert A.select_steps(5, A.Aware3DConfig(steps=[0, -1, 9])) == [0, 4]
    assert not A.make_3d_aware_hook(decode, encode, toy["path"], A.Aware3DConfig(blend=0.0)).selects(20, 50)


def test_blend_mixes_latents(toy):
    cfg = A.Aware3DConfig(steps=[0], iters=5, init_iters=5, n_init=200, background=BG)
    x0 = encode(toy["bad"])
    full = A.make_3d_aware_hook(decode, encode, toy["path"], cfg)(0, 1, 0, x0)
    half = A.make_3d_aware_hook(decode, encode, toy["path"], A.Aware3DConfig(**{**cfg.__dict__, "blend": 0.5}))(
        0, 1, 0, x0)
    torch.testing.assert_close(half, 0.5 * full + 0.5 * x0, rtol=1e-5, atol=1e-5)


def test_bad_inputs_raise(toy):
    path, x0 = toy["path"], encode(toy["bad"])
    cfg = A.Aware3DConfig(steps=[0], iters=2, init_iters=2, n_init=50)
    with pytest.raises(ValueError, match="cameras"):  # 7 frames, 6 cameras
        A.make_3d_aware_hook(decode, encode, path[:6], cfg)(0, 1, 0, x0)
    with pytest.raises(ValueError, match=r"\[N, H, W, 3\]"):  # decode returns channels-first frames
        A.make_3d_aware_hook(lambda z: decode(z).permute(0, 3, 1, 2), encode, path, cfg)(0, 1, 0, x0)
    with pytest.raises(ValueError, match="shape"):  # encode returns another layout
        A.make_3d_aware_hook(decode, lambda f: encode(f)[:, :6], path, cfg)(0, 1, 0, x0)
    with pytest.raises(ValueError, match="NaN"):
        A.make_3d_aware_hook(lambda z: decode(z) * float("nan"), encode, path, cfg)(0, 1, 0, x0)
    with pytest.raises(ValueError, match="blend"):
        A.Aware3DConfig(blend=1.5).validate()
    with pytest.raises(ValueError, match="groups"):
        A.make_3d_aware_hook(decode, encode, path, cfg, groups=[[0, 1, 2], [2, 3, 4, 5, 6]])
    with pytest.raises(ValueError, match="cameras"):
        A.inconsistency(toy["bad"], path[:5])
    with pytest.raises(ValueError, match="holdout"):
        A.inconsistency(toy["bad"], path, holdout=1)


def test_grid_groups():
    assert A.grid_groups(2, 3) == [[0, 1, 2, 3, 4, 5]]
    assert A.grid_groups(2, 3, "per_frame") == [[0, 3], [1, 4], [2, 5]]
    assert A.grid_groups(2, 3, "per_view") == [[0, 1, 2], [3, 4, 5]]
    with pytest.raises(ValueError):
        A.grid_groups(2, 3, "rows")


# ------------------------------------------------------------------------------------------------ teacher wiring
@pytest.fixture(scope="module")
def tiny():
    from test_leap import SCHED_5B, _tiny_modules

    from vscene_engine.video.model import VideoModel

    tr, vae = _tiny_modules()
    emb = torch.randn(1, 12, 24, generator=torch.Generator().manual_seed(5))
    return VideoModel(transformer=tr, vae=vae, scheduler_config=dict(SCHED_5B), prompt_embeds=emb, name="tiny")


def _views(seed=11):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(64, 96, 3, generator=g), torch.rand(64, 96, 3, generator=g)


def test_teacher_hook_calls_identity_and_effect(tiny):
    a, b = _views()
    base = leap.teacher_sample(tiny, a, b, steps=5, seed=3)
    seen = []

    def ident(step, n, t, x0):
        seen.append((step, n, t, tuple(x0.shape), x0.dtype))
        return x0

    same = leap.teacher_sample(tiny, a, b, steps=5, seed=3, x0_hook=ident)
    assert torch.equal(same.frames, base.frames) and torch.equal(same.latents, base.latents)
    assert [s[0] for s in seen] == list(range(5)) and all(s[1] == 5 for s in seen)
    assert [s[2] for s in seen] == base.timesteps
    T = tiny.latent_frames(9)
    assert seen[0][3] == (1, T, 16, 8, 12) and seen[0][4] == torch.float32

    def zero_at_2(step, n, t, x0):
        return torch.zeros_like(x0) if step == 2 else x0

    changed = leap.teacher_sample(tiny, a, b, steps=5, seed=3, x0_hook=zero_at_2)
    assert not torch.equal(changed.latents, base.latents)
    with pytest.raises(ValueError, match="x0_hook"):
        leap.teacher_sample(tiny, a, b, steps=2, seed=3, x0_hook=lambda s, n, t, x: x[:, :1])


class _RecordingPlacer:
    def __init__(self):
        self.events = []

    @contextlib.contextmanager
    def use(self, name, module):
        self.events.append(("in", name))
        try:
            yield module
        finally:
            self.events.append(("out", name))


def test_teacher_with_3d_hook_releases_transformer(tiny):
    import dataclasses

    placer = _RecordingPlacer()
    model = dataclasses.replace(tiny, placer=placer)
    a, b = _views()
    path = _path(96, 64, 9)
    dec, enc = A.model_codec(model)
    cfg = A.Aware3DConfig(iters=5, init_iters=8, n_init=300)
    hook = A.make_3d_aware_hook(dec, enc, path.resized(48, 32), cfg)  # cameras at another size: rescaled
    res = leap.teacher_sample(model, a, b, steps=4, seed=1, x0_hook=hook)
    assert hook.calls == 4 and [h["step"] for h in hook.history] == [2] and hook.history[0]["iters"] == [8]
    assert res.frames.shape == (9, 64, 96, 3) and torch.isfinite(res.latents).all()
    ev = placer.events
    i = ev.index(("in", "transformer"))
    # the transformer is released for the 3D step (decode, fit, encode use the VAE) and taken again
    assert ev[i:i + 7] == [("in", "transformer"), ("out", "transformer"), ("in", "vae"), ("out", "vae"),
                           ("in", "vae"), ("out", "vae"), ("in", "transformer")]
    assert ev.count(("in", "transformer")) == ev.count(("out", "transformer")) == 2


# ------------------------------------------------------------------------------------------------ compose wiring
def test_compose_hook_layout_and_known_clamp():
    V, Fr = 3, 2
    g = torch.Generator().manual_seed(0)
    noise = torch.randn(V, Fr, 4, 2, 2, generator=g)
    row = lambda x, lv, c: x * 0 + 0.5  # noqa: E731  (a "video model" that always predicts 0.5)
    seen = []

    def hook(step, n, level, x0):
        seen.append((step, n, level, tuple(x0.shape)))
        out = x0.clone()
        out[1 * Fr + 0] = 7.0   # view 1, frame 0 (view-major)
        return out

    known = torch.full((Fr, 4, 2, 2), -1.0)
    for sampler in ("ddim", "euler"):
        seen.clear()
        res = compose_sample(noise, row, None, sampler=sampler, steps=4, weights=ROW_ONLY,
                             conditioning=GridConditioning(cond_row=known, cond_row_index=0), x0_hook=hook)
        assert [s[0] for s in seen] == [0, 1, 2, 3] and all(s[1] == 4 and s[3] == (V * Fr, 4, 2, 2) for s in seen)
        assert torch.allclose(res.samples[1, 0], torch.full((4, 2, 2), 7.0), atol=1e-5)  # the hook's x0 is used
        assert torch.equal(res.samples[0], known)                                         # known row clamped
        assert torch.allclose(res.samples[2], torch.full((Fr, 4, 2, 2), 0.5), atol=1e-5)
    plain = compose_sample(noise, row, None, sampler="ddim", steps=4, weights=ROW_ONLY)
    ident = compose_sample(noise, row, None, sampler="ddim", steps=4, weights=ROW_ONLY,
                           x0_hook=lambda i, n, lv, x: x)
    assert torch.equal(plain.samples, ident.samples)
    with pytest.raises(ValueError, match="x0_hook"):
        compose_sample(noise, row, None, sampler="ddim", steps=2, weights=ROW_ONLY,
                       x0_hook=lambda i, n, lv, x: x[:1])


# ------------------------------------------------------------------------------------------------ student refine
def test_refine_3d_is_fit_render_then_one_student_step():
    from vscene_engine.tools.replicate import ReplicateConfig, tiny_model

    rc = ReplicateConfig(width=32, height=24, frames=NF, layers=1, heads=2)
    model = tiny_model(rc, seed=0)
    path = _path()
    g = torch.Generator().manual_seed(4)
    video = torch.rand(NF, H, W, 3, generator=g)
    a, b = video[0], video[-1]
    res = leap.leap_sample(model, a, b, video, timestep=549, seed=5)
    cfg = A.Aware3DConfig(iters=10, init_iters=20, n_init=300, background=BG)
    ref = A.refine_3d(model, res, path, t_small=200, seed=5, cfg=cfg, first=a, last=b)
    assert ref.frames.shape == res.frames.shape and ref.timesteps == [200]
    assert ref.info["aware3d"]["iters"] == 20 and ref.render.shape == res.frames.shape
    again = leap.leap_sample(model, a, b, ref.render, timestep=200, seed=5)
    assert torch.equal(again.frames, ref.frames)  # exactly one student step from the render
    with pytest.raises(ValueError, match="cameras"):
        A.refine_3d(model, res, path[:3], cfg=cfg)
