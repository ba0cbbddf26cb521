"""nodes/guider.py with a stub host: the Diffusion² GUIDER body (core's CFGGuider call order, host.CFGGuider stand-in,
tiny models) gives the same grid as the engine's compose sampler with the same denoisers."""
import importlib

import pytest
import torch

from test_host_fallback import PACK, _load_host
from vscene_engine.compose.diffusion2 import (Batching, KarrasSigmas, WeightSchedule, compose_sample, sample_euler,
                                   sample_heun, sigmas_karras)

host = _load_host()
guider = importlib.import_module(PACK + ".nodes.guider")

V, F, C, H, W = 3, 4, 2, 2, 3
_g = torch.Generator().manual_seed(3)
A_F = torch.randn(F, F, generator=_g) / F
A_V = torch.randn(V, V, generator=_g) / V
LATENT_SCALE = 2.0  # process_latent_out of the tiny models (core: the latent format's scale)


def _row_x0(x, sigma, c):     # video model on one view's frames: x [F, C, H, W], sigma [F], c = the cond scalar
    y = torch.tanh(torch.einsum("fg,gchw->fchw", A_F, x) / (1 + sigma[:, None, None, None]))
    return y + 0.05 * c


def _col_x0(x, sigma, c):     # multi-view model on one frame's views: x [V, C, H, W]
    return torch.sin(torch.einsum("vw,wchw->vchw", A_V, x) / (1 + sigma[:, None, None, None])) - 0.03 * c


class _Inner:
    """The stand-in contract's inner model: apply_model(x, sigma, cond_list) -> x0, latent in / out."""

    def __init__(self, fn):
        self.fn, self.calls = fn, 0

    def apply_model(self, x, sigma, conds):
        self.calls += 1
        return self.fn(x, sigma, float(conds[0]["cross_attn"].reshape(-1)[0]))

    def process_latent_in(self, z):
        return z / LATENT_SCALE

    def process_latent_out(self, z):
        return z * LATENT_SCALE


class _Patcher:
    def __init__(self, fn):
        self.model, self.model_options, self.load_device = _Inner(fn), {}, torch.device("cpu")
        self.runs = 0

    def pre_run(self):
        self.runs += 1

    def cleanup(self):
        pass


class _EngineSampler:
    """A core-like SAMPLER (sample(guider, sigmas, extra_args, callback, noise, latent, mask, disable_pbar)) that
    runs an engine sampler with the guider as its denoiser, calling it like core does: guider(x, sigma [B])."""

    def __init__(self, fn):
        self.fn = fn

    def sample(self, model, sigmas, extra_args, callback, noise, latent_image, denoise_mask, disable_pbar):
        class Grid:
            def __call__(self, x, sigma, step):
                flat = x.reshape(V * F, *x.shape[2:])
                return model(flat, torch.full((V * F,), sigma), **extra_args).reshape(x.shape)

            def renoise_known(self, x, alpha, beta):
                return x

        x = noise.reshape(V, F, C, H, W) * float(sigmas[0])
        return self.fn(Grid(), x, sigmas.tolist()).reshape(noise.shape)


ROW_POS = torch.arange(V, dtype=torch.float32).reshape(V, 1) + 1   # one per view (batch V)
ROW_NEG = torch.zeros(1, 1)
COL_POS, COL_NEG = torch.full((1, 1), 0.5), torch.full((1, 1), -0.5)  # shared by every frame (batch 1)
ROW_CFG, COL_CFG = 2.0, 1.5


def _cfg(fn, x, sigma, pos, neg, scale):
    u = fn(x, sigma, neg)
    return u + (fn(x, sigma, pos) - u) * scale


def _engine_rows(xr, level, cond):   # cond: the rows' view indices
    s = torch.full((F,), level)     # the sigma tensor the guider hands its model (float32)
    return torch.stack([_cfg(_row_x0, xr[b], s, float(ROW_POS[int(cond[b])]), 0.0, ROW_CFG)
                        for b in range(xr.shape[0])])


def _engine_cols(xc, level, cond):
    s = torch.full((V,), level)
    return torch.stack([_cfg(_col_x0, xc[b], s, 0.5, -0.5, COL_CFG) for b in range(xc.shape[0])])


def _guider(weights, make_hook=None):
    g = guider.Guider_ScoreCompose(_Patcher(_row_x0), _Patcher(_col_x0), V, F, weights, ROW_CFG, COL_CFG,
                                   col_conds={"positive": host.convert_cond([[COL_POS, {}]]),
                                              "negative": host.convert_cond([[COL_NEG, {}]])},
                                   make_hook=make_hook)
    g.inner_set_conds({"positive": [[ROW_POS, {}]], "negative": [[ROW_NEG, {}]]})
    return g


def _hook(step, n, level, x0):
    return x0 * 0.8 + 0.1 * torch.cos(x0) if step in (1, 3) else x0


@pytest.mark.parametrize("sampler,weights,hooked", [
    ("euler", WeightSchedule("logistic", s0=0.5, k=8.0, view_weights=[1.0, 0.5, 0.8]), True),
    ("euler", WeightSchedule("linear", s0=0.9, s1=0.2, row_only_from=0.6), False),
    ("heun", WeightSchedule(s0=0.6), False)])
def test_guider_equals_engine_compose_sampler(sampler, weights, hooked):
    assert host.CFGGuider is host._StandInCFGGuider and issubclass(guider.Guider_ScoreCompose, host.CFGGuider)
    fn = {"euler": sample_euler, "heun": sample_heun}[sampler]
    steps, smax = 5, 30.0
    noise = torch.randn(V * F, C, H, W, generator=torch.Generator().manual_seed(0))
    sigmas = sigmas_karras(steps, 0.01, smax)
    seen = []

    def hook(step, n, level, x0):
        seen.append(step)
        return _hook(step, n, level, x0)

    g = _guider(weights, (lambda gd: hook) if hooked else None)
    out = g.sample(noise, torch.zeros_like(noise), _EngineSampler(fn), sigmas, seed=0)
    ref = compose_sample(noise.reshape(V, F, C, H, W), _engine_rows, _engine_cols, sampler=sampler, steps=steps,
                         weights=weights, sigmas=KarrasSigmas(0.01, smax), row_cond=torch.arange(V),
                         col_cond=torch.arange(F),
                         batching=Batching(), x0_hook=_hook if hooked else None)
    assert out.shape == noise.shape
    assert torch.allclose(out, LATENT_SCALE * ref.samples.reshape(noise.shape), atol=1e-5, rtol=1e-5)
    assert float(ref.samples.std()) > 0.05                      # not a trivial grid
    if hooked:
        assert seen == list(range(steps))                       # once per step, on its first evaluation
    # the models saw their own batches: each call is one view's F frames / one frame's V views, with CFG 2 calls
    rows, cols = g.model_patcher.model.calls, g.col_patcher.model.calls
    assert rows > 0 and cols > 0 and rows % 2 == 0 and cols % 2 == 0
    assert g.col_patcher.runs == 1 and g.col_inner is None      # prepared once, released after sampling


def test_guider_refuses_wrong_batches():
    g = _guider(WeightSchedule())
    noise = torch.zeros(V * F + 1, C, H, W)
    with pytest.raises(ValueError, match=r"latent batch has 13 images but the grid is 3 views x 4 frames"):
        g.sample(noise, noise, _EngineSampler(sample_euler), sigmas_karras(2))
    g = _guider(WeightSchedule())
    g.inner_set_conds({"positive": [[torch.zeros(F, 1), {}]]})   # batch F given to the video model
    noise = torch.zeros(V * F, C, H, W)
    with pytest.raises(ValueError, match=r"video conditioning has batch \[4\].*one per frame"):
        g.sample(noise, noise, _EngineSampler(sample_euler), sigmas_karras(2))


def test_compose_guider_needs_the_host():
    if host.HOST_AVAILABLE:
        pytest.skip("ComfyUI importable here")
    with pytest.raises(RuntimeError, match="inside ComfyUI"):
        guider.make_compose_guider(None, None, 2, 3, {}, {}, 1.0, 1.0, WeightSchedule())
