"""Tests of vscene_engine.compose.diffusion2 (Diffusion² score composition of a video model and a multi-view model)."""
from __future__ import annotations

import pytest
import torch

from vscene_engine.video.loading import COGVIDEOX_5B_SCHEDULER_CONFIG
from vscene_engine.compose.diffusion2 import (Batching, GridConditioning, WeightSchedule, compose_sample, compose_x0,
                                   composition_weights, orbit_view_weights, schedule_values, sigmas_karras,
                                   step_index)
from vscene_engine.video.schedule import alphas_cumprod
from vscene_engine.core.runtime import Interrupted
from progress_util import Recorder  # noqa: E402

# ============================================================================ analytic Gaussian grid (Theorem 3.1)
V3 = F3 = 3
K_V = torch.tensor([[1.0, 0.8, 0.5], [0.8, 1.0, 0.7], [0.5, 0.7, 1.0]], dtype=torch.float64)  # across views
K_F = torch.tensor([[1.0, 0.7, 0.3], [0.7, 1.0, 0.6], [0.3, 0.6, 1.0]], dtype=torch.float64)  # across frames
MEAN = torch.arange(9, dtype=torch.float64).reshape(3, 3) / 4 - 1
JOINT = torch.kron(K_V, K_F)                      # Cov(vec X), view-major
_ACP = alphas_cumprod(COGVIDEOX_5B_SCHEDULER_CONFIG).to(torch.float64)  # the CogVideoX-5B schedule


def _signal_noise(level) -> tuple[float, float]:
    """x = alpha x0 + beta eps: EDM (float sigma) -> (1, sigma); DDIM (int t) -> (sqrt a_t, sqrt(1 - a_t))."""
    if isinstance(level, int):
        a = float(_ACP[level])
        return a ** 0.5, (1 - a) ** 0.5
    return 1.0, float(level)


def _posterior_mean(x: torch.Tensor, m: torch.Tensor, S: torch.Tensor, level) -> torch.Tensor:
    """E[x0 | x] for x0 ~ N(m, S): m + alpha S (alpha^2 S + beta^2 I)^-1 (x - alpha m).
    x [B, n, N] (N i.i.d. replicas on the last axis), m [B, n], S [B, n, n]."""
    al, be = _signal_noise(level)
    n = S.shape[-1]
    gain = al * S @ torch.linalg.inv(al * al * S + be * be * torch.eye(n, dtype=S.dtype))
    return m[..., None] + gain @ (x - al * m[..., None])


def _row_x0(x, level, idx):      # video model: row v ~ N(MEAN[v], K_V[v, v] K_F); x [B, F, N, 1, 1]
    S = torch.stack([K_V[v, v] * K_F for v in idx.tolist()])
    return _posterior_mean(x[..., 0, 0], MEAN[idx], S, level)[..., None, None]


def _col_x0(x, level, idx):      # multi-view model: column f ~ N(MEAN[:, f], K_F[f, f] K_V); x [B, V, N, 1, 1]
    S = torch.stack([K_F[f, f] * K_V for f in idx.tolist()])
    return _posterior_mean(x[..., 0, 0], MEAN[:, idx].T, S, level)[..., None, None]


def _ind_x0(x, level, idx):      # single-image model: X[v, f] ~ N(MEAN[v, f], K_V[v, v] K_F[f, f]); x [B, N, 1, 1]
    v, f = idx // F3, idx % F3
    S = (K_V[v, v] * K_F[f, f])[:, None, None]
    return _posterior_mean(x[:, None, :, 0, 0], MEAN.reshape(-1)[idx][:, None], S, level)[:, 0, :, None, None]


def _gauss_sample(noise: torch.Tensor, **kw):
    ar = torch.arange
    return compose_sample(noise, _row_x0, _col_x0, row_cond=ar(V3), col_cond=ar(F3), ind_cond=ar(V3 * F3),
                          batching=Batching(batch=3), **kw).samples


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.norm(a - b) / torch.linalg.norm(b))


def _mpow(K: torch.Tensor, p: float) -> torch.Tensor:
    lam, U = torch.linalg.eigh(K)
    return U @ torch.diag(lam ** p) @ U.T


def _exact_moments(**kw) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [9] and covariance [9, 9] of the sampler's output, exactly: with linear denoisers the deterministic
    sampler is an affine map of its noise, so 9 basis vectors + the zero vector give it completely."""
    basis = torch.cat([torch.eye(9, dtype=torch.float64), torch.zeros(9, 1, dtype=torch.float64)], 1)
    out = _gauss_sample(basis.reshape(V3, F3, 10, 1, 1), **kw)[..., 0, 0].reshape(9, 10)
    b = out[:, 9]
    A = out[:, :9] - b[:, None]
    return b, A @ A.T


def test_theorem_3_1_composed_sampler_reaches_the_joint():
    """Theorem 3.1 on a Gaussian grid, with exact denoisers, checked on samples.

    Theorem (Bayes): if, for an image x = X[v, f], its row-mates R = X[v, !f] and column-mates C = X[!v, f] are
    conditionally independent given x, then p(x | R, C) = p(x | R) p(x | C) / p(x) * p(R) p(C) / p(R, C), so
        grad_x log p(x | R, C) = grad_x log p(x | R) + grad_x log p(x | C) - grad_x log p(x),
    and grad_x log p(row) = grad_x log p(x | R) (same for the column): in x0 form x0 = row + col - ind, weights
    (1, 1, -1) summing to one. compose_sample uses this form when given ``ind_fn`` (a single-image model).

    Distribution: the matrix normal X = MEAN + noise with Cov(vec X) = K_V (x) K_F, K_V / K_F correlation matrices.
    It meets the assumption for every image: Cov(X[v,g], X[w,f] | X[v,f]) = K_V[v,w] K_F[g,f]
    - (K_V[v,v] K_F[g,f]) (K_V[v,w] K_F[f,f]) / (K_V[v,v] K_F[f,f]) = 0 (checked below). Marginals: a row
    N(MEAN[v], K_F), a column N(MEAN[:, f], K_V), an image N(MEAN[v, f], 1); the x0-denoisers at any noise level
    are the Gaussian posterior means (closed form, EDM sigma and DDIM a_t alike).

    What holds exactly: applying the theorem at every noise level is NOT the joint's noisy score (asserted below at
    sigma = 1), but its probability-flow ODE ends at the joint. All covariances share the eigenbasis u_i (x) w_j
    (eigenvalues: joint l_i m_j, rows m_j, columns l_i, images 1). On a mode, with x0 - m = sum_k c_k
    v_k / (v_k + sigma^2) (x - m) and sum_k c_k = 1, dx/dsigma = (x - x0) / sigma gives
    d ln|x - m| = sum_k c_k d ln sqrt(v_k + sigma^2): the final variance is sigma_max^2 prod_k
    (v_k / (v_k + sigma_max^2))^c_k -> prod_k v_k^c_k = m_j l_i / 1, the joint's (mean -> m likewise).
    The release's convex form x0 = (1 - s) row + s col gives m_j^(1-s) l_i^s instead, i.e. the matrix normal
    K_V^s (x) K_F^(1-s): no s reproduces the joint here (s = 0 is the row-only sampler, I (x) K_F; s = 1 the
    column-only one, K_V (x) I), so the exact check needs the third (single-image) term; the convex form is the
    release's approximation grad log p(x) ~ s row + (1 - s) col (tested in the next test). The endpoint identity
    needs the shared eigenbasis (constant-diagonal factors); with unequal per-view variances the exact form is
    only approximately the joint.

    Checked: 20000 samples (Heun, 40 steps, sigma_max 80): relative Frobenius error of the covariance <= 5 % and
    of the mean <= 3 %; row-only and column-only sampling are off by more than 50 %.
    """
    # the assumption, on the full sets R and C of every image: Cov(R, C | x) = 0
    for v in range(V3):
        for f in range(F3):
            i = v * F3 + f
            R = [v * F3 + g for g in range(F3) if g != f]
            C = [w * F3 + f for w in range(V3) if w != v]
            cross = JOINT[R][:, C] - JOINT[R][:, [i]] @ JOINT[[i]][:, C] / JOINT[i, i]
            assert cross.abs().max() < 1e-12
    # ... and the per-level composition is not the noisy joint score (precision form at sigma = 1)
    eye = torch.eye(9, dtype=torch.float64)
    lhs = torch.linalg.inv(JOINT + eye)
    rhs = torch.linalg.inv(torch.kron(eye[:3, :3], K_F) + eye) + torch.linalg.inv(
        torch.kron(K_V, eye[:3, :3]) + eye) - eye / 2
    assert _rel(rhs, lhs) > 0.05

    n = 20000
    noise = torch.randn(V3, F3, n, 1, 1, generator=torch.Generator().manual_seed(0), dtype=torch.float64)

    def moments(samples):
        flat = samples[..., 0, 0].reshape(9, n)
        return flat.mean(1), torch.cov(flat)

    mean_c, cov_c = moments(_gauss_sample(noise, sampler="heun", steps=40, ind_fn=_ind_x0))
    err = _rel(cov_c, JOINT)
    assert err <= 0.05
    assert float((mean_c - MEAN.reshape(-1)).norm() / MEAN.norm()) <= 0.03
    _, cov_r = moments(_gauss_sample(noise, sampler="heun", steps=40, weights=WeightSchedule(s0=0.0)))  # video only
    _, cov_k = moments(_gauss_sample(noise, sampler="heun", steps=40, weights=WeightSchedule(s0=1.0)))  # views only
    assert _rel(cov_r, JOINT) > 0.5 and _rel(cov_k, JOINT) > 0.5
    assert min(_rel(cov_r, JOINT), _rel(cov_k, JOINT)) > 8 * err


@pytest.mark.parametrize("sampler,steps,tol", [("heun", 60, 0.01), ("euler", 300, 0.03), ("ddim", 200, 0.02)])
def test_theorem_exact_moments_all_samplers(sampler, steps, tol):
    """The same statement without Monte-Carlo noise (exact output moments of the affine sampler map): the exact
    form converges to the joint (error = discretisation only, Heun 2nd order, Euler / DDIM 1st order); the convex
    form with s gives K_V^s (x) K_F^(1-s) and stays far from the joint."""
    mean, cov = _exact_moments(sampler=sampler, steps=steps, ind_fn=_ind_x0)
    assert _rel(cov, JOINT) <= tol
    assert float((mean - MEAN.reshape(-1)).norm() / MEAN.norm()) <= 0.015
    for s in (0.0, 0.5, 1.0):
        _, cov_s = _exact_moments(sampler=sampler, steps=steps, weights=WeightSchedule(s0=s))
        assert _rel(cov_s, torch.kron(_mpow(K_V, s), _mpow(K_F, 1 - s))) <= tol + 0.01
        assert _rel(cov_s, JOINT) > 0.4


def test_theorem_convergence_order():
    """Heun: doubling the steps cuts the exact-form error by > 3x (it goes to 0: the endpoint identity is exact)."""
    e1 = _rel(_exact_moments(sampler="heun", steps=30, ind_fn=_ind_x0)[1], JOINT)
    e2 = _rel(_exact_moments(sampler="heun", steps=60, ind_fn=_ind_x0)[1], JOINT)
    assert e2 < e1 / 3 and e2 < 0.01


# ============================================================================ schedules
def test_schedule_shapes_and_directions():
    for kind in ("constant", "linear", "cosine", "logistic"):
        v = schedule_values(kind, 7, s0=0.6, s1=0.2)
        assert v.shape == (7,) and v.dtype == torch.float64
        assert bool(((v >= 0) & (v <= 1)).all())
    assert torch.equal(schedule_values("constant", 4), torch.full((4,), 0.6, dtype=torch.float64))
    lin = schedule_values("linear", 5, s0=0.9, s1=0.1)
    assert lin[0] == pytest.approx(0.9) and lin[-1] == pytest.approx(0.1)
    cos = schedule_values("cosine", 9, s_min=0.1, s_max=0.9)
    assert cos[0] == pytest.approx(0.9) and cos[-1] == pytest.approx(0.1) and bool((cos.diff() < 0).all())
    # logistic, released sign: decreasing; midpoint at x = s0 is (s_min + s_max) / 2
    lg = schedule_values("logistic", 11, s0=0.5, k=15.0, s_min=0.2, s_max=0.8)
    assert bool((lg.diff() < 0).all())
    assert lg[0] > 0.79 and lg[-1] < 0.21 and lg[5] == pytest.approx(0.5)
    x = torch.arange(11, dtype=torch.float64) / 10
    assert torch.allclose(lg, 0.2 + 0.6 * (1 - 1 / (1 + torch.exp(-15 * (x - 0.5)))))
    assert schedule_values("logistic", 1).shape == (1,)          # n = 1: no division by zero


@pytest.mark.parametrize("kw,match", [
    (dict(kind="nope", n=3), "unknown schedule"), (dict(kind="constant", n=0), "integer >= 1"),
    (dict(kind="constant", n=3, s0=1.2), "s0"), (dict(kind="linear", n=3), "needs s1"),
    (dict(kind="linear", n=3, s1=-0.1), "s1"), (dict(kind="logistic", n=3, k=0), "steepness"),
    (dict(kind="cosine", n=3, s_min=0.7, s_max=0.3), "must not exceed"),
    (dict(kind="logistic", n=3, s_max=float("nan")), "s_max")])
def test_schedule_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        schedule_values(**kw)


def test_sigmas_and_view_weights_and_step_index():
    sig = sigmas_karras(10, 0.002, 80.0, 7.0)
    assert sig.shape == (11,) and sig[0] == pytest.approx(80) and sig[-2] == pytest.approx(0.002) and sig[-1] == 0
    assert bool((sig.diff() < 0).all())
    with pytest.raises(ValueError, match="sigma_min < sigma_max"):
        sigmas_karras(5, 1.0, 0.5)
    w = orbit_view_weights(21)    # the release's 21 constants: 1 - 0.75 * (1 - [0.91311939, 0.68267051, ...])
    ref = torch.tensor([0.91311939, 0.68267051, 0.38873953, 0.13347406, 0.00558459, 0.04951557, 0.25, 0.53736505,
                        0.8117449, 0.9777864, 0.9777864, 0.8117449, 0.53736505, 0.25, 0.04951557, 0.00558459,
                        0.13347406, 0.38873953, 0.68267051, 0.91311939, 1.0], dtype=torch.float64)
    assert torch.allclose(w, 1 - 0.75 * (1 - ref), atol=1e-8)
    r = composition_weights(torch.tensor([0.6, 0.6, 0.6]), [1.0, 0.5], row_only_from=0.6, n_views=2)
    assert torch.allclose(r, torch.tensor([[0.4, 0.2], [0.4, 0.2], [1.0, 1.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="2 entries but the grid has V = 3"):
        composition_weights(torch.tensor([0.5]), [1.0, 1.0], n_views=3)
    assert step_index(sig, 80.0) == 0 and step_index(sig, float(sig[3]) * 1.001) == 3 and step_index(sig, 0.0) == 9
    assert step_index([999, 979, 959], 961) == 2


# ============================================================================ generic (nonlinear) denoisers
V, F, CH, H, W = 3, 4, 2, 2, 3
_g = torch.Generator().manual_seed(1)
A_F = torch.randn(F, F, generator=_g) / F
A_V = torch.randn(V, V, generator=_g) / V


def _lvl(level) -> float:
    return float(level) / 1000 if isinstance(level, int) else float(level)


def row_nl(x, level, cond):      # [B, F, C, H, W]; cond = the rows' view indices
    y = torch.tanh(torch.einsum("fg,bgchw->bfchw", A_F.to(x.dtype), x) / (1 + _lvl(level)))
    return y + 0.05 * cond.to(x.dtype)[:, None, None, None, None]


def col_nl(x, level, cond):      # [B, V, C, H, W]; cond = the columns' frame indices
    y = torch.sin(torch.einsum("vw,bwchw->bvchw", A_V.to(x.dtype), x) / (1 + _lvl(level)))
    return y - 0.03 * cond.to(x.dtype)[:, None, None, None, None]


def _noise(seed=0, shape=(V, F, CH, H, W), dtype=torch.float32):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _run(noise, **kw):
    kw.setdefault("row_cond", torch.arange(noise.shape[0]))
    kw.setdefault("col_cond", torch.arange(noise.shape[1]))
    return compose_sample(noise, row_nl, col_nl, **kw)


@pytest.mark.parametrize("sampler", ["euler", "heun", "ddim"])
def test_batch_size_invariance(sampler):
    """Same result for any row / column batch sizes (float64: float32 einsum may round differently per batch
    size, ~1e-6 after Heun at sigma 80, which is the denoiser's business, not the composition's)."""
    kw = dict(sampler=sampler, steps=6, weights=WeightSchedule("logistic", s0=0.5, view_weights=[1.0, 0.5, 0.8]))
    noise = _noise(dtype=torch.float64)
    ref = _run(noise, batching=Batching(batch=1, col_batch=1), **kw).samples
    for b, cb in [(2, 3), (3, 1), (100, 100)]:
        out = _run(noise, batching=Batching(batch=b, col_batch=cb), **kw).samples
        assert torch.allclose(out, ref, atol=1e-12, rtol=0)
    assert bool(torch.isfinite(ref).all())


@pytest.mark.parametrize("sampler", ["euler", "ddim"])
def test_conditioning_is_clamped(sampler):
    noise = _noise(2)
    crow = torch.randn(F, CH, H, W, generator=torch.Generator().manual_seed(3))
    ccol = torch.randn(V, CH, H, W, generator=torch.Generator().manual_seed(4))
    ccol[1] = crow[2]                                    # they cross at (view 1, frame 2)
    seen = []

    def row_spy(x, level, cond):
        seen.append((cond.clone(), x.clone(), level))
        return row_nl(x, level, cond)

    res = compose_sample(noise, row_spy, col_nl, sampler=sampler, steps=5,
                         conditioning=GridConditioning(crow, 1, ccol, 2), row_cond=torch.arange(V),
                         col_cond=torch.arange(F))
    out = res.samples
    assert torch.equal(out[1], crow) and torch.equal(out[:, 2], ccol)
    assert not torch.allclose(out[0], torch.zeros_like(out[0]))
    # the fully known row 1 is never evaluated; the known column entry of row 0 is forward-noised from the noise
    assert all(1 not in c.tolist() for c, _, _ in seen) and res.info["row_calls"] == 5 * 2
    c, x, level = seen[0]
    if sampler == "euler":
        expect = ccol[int(c[0])] + level * noise[int(c[0]), 2]
    else:
        a = float(alphas_cumprod(COGVIDEOX_5B_SCHEDULER_CONFIG)[level])
        expect = a ** 0.5 * ccol[int(c[0])] + (1 - a) ** 0.5 * noise[int(c[0]), 2]
    assert torch.allclose(x[0, 2], expect, atol=1e-4)
    bad = ccol.clone()
    bad[1] += 1
    with pytest.raises(ValueError, match="disagree where they cross"):
        compose_sample(noise, row_nl, col_nl, conditioning=GridConditioning(crow, 1, bad, 2),
                       row_cond=torch.arange(V), col_cond=torch.arange(F))


def test_single_model_paths_and_calls():
    # s = 0: the video model only (columns never called), works with one view; s = 1 with one frame
    r0 = _run(_noise(5, (1, F, CH, H, W)), steps=3, weights=WeightSchedule(s0=0.0))
    assert r0.info["col_calls"] == 0 and r0.info["row_calls"] == 3
    r1 = _run(_noise(5, (V, 1, CH, H, W)), steps=3, weights=WeightSchedule(s0=1.0))
    assert r1.info["row_calls"] == 0 and r1.info["col_calls"] == 3
    # row_only_from: the last steps skip the multi-view model
    r = _run(_noise(), steps=5, weights=WeightSchedule(s0=0.6, row_only_from=0.5),
             batching=Batching(batch=3, col_batch=4))
    assert r.info["col_calls"] == 3 and r.info["row_calls"] == 5
    assert torch.allclose(r.s, torch.tensor([0.6, 0.6, 0.6, 0, 0], dtype=torch.float64))
    # compose_x0 = the convex combination of the two models' x0
    x = _noise(6)
    got = compose_x0(x, 2.0, row_nl, col_nl, s=0.3, row_cond=torch.arange(V), col_cond=torch.arange(F))
    rows = row_nl(x, 2.0, torch.arange(V))
    cols = col_nl(x.transpose(0, 1), 2.0, torch.arange(F)).transpose(0, 1)
    assert torch.allclose(got, 0.7 * rows + 0.3 * cols, atol=1e-6)


def test_progress_and_interrupt():
    rec = Recorder()
    _run(_noise(), steps=4, progress=rec)
    assert [(i, n) for _, i, n, _, _ in rec.updates] == [(1, 4), (2, 4), (3, 4), (4, 4)]
    stop = Recorder(stop_after=1)
    with pytest.raises(Interrupted):
        _run(_noise(), steps=4, progress=stop)
    assert stop.checks == 2 and len(stop.updates) == 1

    class Cancel(Exception):
        pass

    with pytest.raises(Cancel):
        _run(_noise(), steps=4, progress=Recorder(stop_after=0, exc=Cancel))


def test_bad_inputs():
    with pytest.raises(ValueError, match="5-D"):
        _run(torch.zeros(3, 4, 2, 2))
    with pytest.raises(ValueError, match=r"row_fn returned shape \(3, 4, 2, 2\) for an input of shape "
                                         r"\(3, 4, 2, 2, 3\)"):
        compose_sample(_noise(), lambda x, t, c: x[..., 0], col_nl, batching=Batching(batch=3),
                       col_cond=torch.arange(F))
    with pytest.raises(ValueError, match="col_fn returned shape"):
        compose_sample(_noise(), row_nl, lambda x, t, c: x[:, :1], row_cond=torch.arange(V))
    with pytest.raises(ValueError, match="row_fn returned NaN"):
        compose_sample(_noise(), lambda x, t, c: x * float("nan"), col_nl, col_cond=torch.arange(F))
    with pytest.raises(ValueError, match="needs V >= 2 views and F >= 2 frames, got V = 1"):
        _run(_noise(0, (1, F, CH, H, W)))
    with pytest.raises(ValueError, match="F = 1"):
        _run(_noise(0, (V, 1, CH, H, W)), weights=WeightSchedule("linear", s0=1.0, s1=0.5))
    with pytest.raises(ValueError, match="s0 must be a number in"):
        _run(_noise(), weights=WeightSchedule(s0=1.5))
    with pytest.raises(ValueError, match="logistic steepness"):
        _run(_noise(), weights=WeightSchedule("logistic", k=-1))
    with pytest.raises(ValueError, match="2 entries but the grid has V = 3"):
        _run(_noise(), weights=WeightSchedule(view_weights=[1.0, 1.0]))
    with pytest.raises(ValueError, match=r"cond_row .* must have shape \(4, 2, 2, 3\)"):
        _run(_noise(), conditioning=GridConditioning(cond_row=torch.zeros(3, 2, 2, 3)))
    with pytest.raises(ValueError, match="row_cond must have one entry per item"):
        _run(_noise(), row_cond=torch.arange(V + 1))
    with pytest.raises(ValueError, match="unknown sampler"):
        _run(_noise(), sampler="dpm")
    with pytest.raises(ValueError, match="batch must be an integer"):
        _run(_noise(), batching=Batching(batch=0))
    with pytest.raises(ValueError, match="NaN or inf"):
        _run(_noise() * float("inf"))


# ============================================================================ torch.distributed (2 gloo ranks)
def _dist_kwargs():
    crow = torch.randn(F, CH, H, W, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    return dict(sampler="heun", steps=4, weights=WeightSchedule("linear", s0=0.8, s1=0.3, view_weights=[1.0, 0.6, 0.9]),
                conditioning=GridConditioning(cond_row=crow, cond_row_index=0), row_cond=torch.arange(V),
                col_cond=torch.arange(F), batching=Batching(batch=1, col_batch=2))


def _dist_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from gloo_util import gloo_group

    with gloo_group(rank, world, init_file):
        res = compose_sample(_noise(11, dtype=torch.float64), row_nl, col_nl, **_dist_kwargs())
        torch.save({"samples": res.samples, "info": res.info}, f"{out_dir}/rank{rank}.pt")


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed unavailable")
def test_two_gloo_ranks_equal_single_process(tmp_path):
    import torch.multiprocessing as mp
    mp.spawn(_dist_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    single = compose_sample(_noise(11, dtype=torch.float64), row_nl, col_nl, **_dist_kwargs())
    outs = [torch.load(tmp_path / f"rank{r}.pt") for r in range(2)]
    for o in outs:
        assert o["info"]["world_size"] == 2
        assert torch.allclose(o["samples"], single.samples, atol=1e-12, rtol=0)
    # the work was split: rows 1, 2 (row 0 is known) one per rank, columns 0..3 two per rank; Heun evaluates
    # 2 + 2 + 2 + 1 times in 4 steps (no correction into sigma = 0)
    assert [o["info"]["row_calls"] for o in outs] == [7, 7] and single.info["row_calls"] == 14
    assert [o["info"]["col_calls"] for o in outs] == [7, 7] and single.info["col_calls"] == 14
    assert sorted(o["info"]["rank"] for o in outs) == [0, 1]


def test_orbit_cameras_and_grid_select():
    import math

    from vscene_engine.compose.diffusion2 import grid_select, orbit_cameras

    cams = orbit_cameras(5, elevation_deg=10.0, radius=2.0, width=64, height=48)
    assert len(cams) == 5 and cams.width == 64
    centers = cams.centers
    assert torch.allclose(centers.norm(dim=-1), torch.full((5,), 2.0), atol=1e-5)
    assert torch.allclose(centers[0], centers[-1], atol=1e-5)  # 0 and 360 degrees, as SV3D_Conditioning
    uv, depth = cams.project(torch.zeros(1, 3))
    assert torch.allclose(uv[:, 0], torch.tensor([32.0, 24.0]).expand(5, 2), atol=1e-3) and (depth > 0).all()
    assert math.isclose(float(cams.K[0, 0, 0]), 0.5 * 64 / math.tan(math.radians(33.8) / 2), rel_tol=1e-6)
    imgs = torch.arange(2 * 3).float().view(6, 1, 1, 1).expand(6, 2, 2, 3)
    assert grid_select(imgs, 2, 3, "frame", 1)[:, 0, 0, 0].tolist() == [1.0, 4.0]
    assert grid_select(imgs, 2, 3, "view", 1)[:, 0, 0, 0].tolist() == [3.0, 4.0, 5.0]
    with pytest.raises(ValueError, match="views x frames"):
        grid_select(imgs[:5], 2, 3, "frame", 0)


def test_denoiser_and_samplers_used_directly():
    """The k-diffusion pieces on their own give compose_sample's grid; the hook runs once per step (Heun: on the
    step's first estimate, not on the correction) and again after reset()."""
    from vscene_engine.compose.diffusion2 import ComposedDenoiser, KarrasSigmas, sample_heun

    w = WeightSchedule("logistic", s0=0.4, view_weights=[1.0, 0.7, 0.9])
    seen = []

    def hook(step, n, level, x0):
        seen.append(step)
        return x0 * 0.9

    noise = _noise(8, dtype=torch.float64)
    ref = _run(noise, sampler="heun", steps=4, weights=w, x0_hook=hook)
    assert seen == [0, 1, 2, 3]
    model = ComposedDenoiser(row_nl, col_nl, w.row_weights(4, V), row_cond=torch.arange(V),
                             col_cond=torch.arange(F), x0_hook=hook)
    sig = KarrasSigmas().sigmas(4)
    for _ in range(2):
        seen.clear()
        out = sample_heun(model, noise * float(sig[0]), sig)
        assert torch.equal(out, ref.samples) and seen == [0, 1, 2, 3]
        assert model.stats["row_fn"] == ref.info["row_calls"]
        model.reset()
