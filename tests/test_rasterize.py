"""Every rasterizer backend against the independent brute-force renderer in raster_reference.py, plus gradients.

Tolerances per backend (``TOL``):
* "torch" and "numba" compute alpha and transmittance in float64 (numba: direct products per pixel, torch: a log-space
  scan); against the float64 brute force they agree to ~1e-12, so 1e-9 leaves three orders of margin and still
  catches any wrong Gaussian, order or termination (each is >= 1/255 * T ~ 1e-3 or more).
* "torch32" evaluates alpha in float32 (no float64 on MPS / slow float64 on consumer GPUs). sigma is a sum of terms
  of at most ~1e2 (conic entries <= 1/eps2d = 3.3 times squared offsets within a tile), so its rounding is
  <= ~1e2 * 6e-8 = 6e-6 absolute, i.e. a relative alpha error <= 6e-6; T is scanned exactly in int64 fixed point
  (2^-32 per step) and colours carry float32 rounding (6e-8). A pixel sums a handful of significant layers before
  T <= 1e-4, so 5e-5 is a bound with margin (measured: ~1e-6) while one wrong Gaussian (>= 1/255 * T) still fails.
  Depth is compared relative to the largest depth (same argument).
"""
import math

import pytest
import torch

from raster_reference import render_dense, render_loop
from vscene_engine.core.cameras import Cameras, look_at
from vscene_engine.core.gaussians import GaussianScene
from vscene_engine.render import raster_numba
from vscene_engine.render.rasterize import available_backends, render

F64 = torch.float64
TOL = {"torch": 1e-9, "numba": 1e-9, "torch32": 5e-5}
_needs_numba = pytest.mark.skipif(not raster_numba.usable(), reason="numba not installed")
BACKENDS = ["torch", "torch32", pytest.param("numba", marks=_needs_numba)]


def _camera(W=40, H=30, f=36.0, c2w=None, dtype=F64, cx=None, cy=None):
    K = torch.tensor([[f, 0, W / 2 + 0.3 if cx is None else cx], [0, f * 0.95, H / 2 - 0.2 if cy is None else cy],
                      [0, 0, 1]], dtype=dtype)
    return Cameras(c2w=torch.eye(4, dtype=dtype) if c2w is None else c2w, K=K, width=W, height=H, near=0.1, far=100.0)


def _scene(n, deg, seed, dtype=F64, kind="mixed"):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=dtype)  # noqa: E731
    means = r(n, 3) * torch.tensor([1.2, 0.9, 1.0], dtype=dtype) + torch.tensor([0.0, 0.0, 3.0], dtype=dtype)
    log_s = r(n, 3) * 1.0 - 2.2  # strongly anisotropic mix
    if kind == "mixed":
        log_s[: n // 8] = math.log(1e-4)  # tiny: sub-pixel, only the low-pass dilation is left
        log_s[n // 8 : n // 6] = math.log(3.0)  # huge: covers the whole image
        means[n // 6 : n // 5, 2] = -1.0 - torch.rand(n // 5 - n // 6, generator=g, dtype=dtype)  # behind camera
        means[n // 5 : n // 4, 0] += 8.0  # off screen (right)
        means[n // 4 : n // 4 + 2, 2] = 0.005  # in front of the camera but inside the near plane
    quats = r(n, 4)  # unnormalised on purpose
    op = torch.rand(n, generator=g, dtype=dtype) * 0.98 + 0.01
    sh = r(n, (deg + 1) ** 2, 3) * 0.4
    return GaussianScene(means=means, scales=log_s.exp(), quats=quats, opacities=op, sh=sh)


def _cmp(out, ref, i=0):
    rgb, alpha, depth = ref
    return (
        float((out.rgb[i].double() - rgb).abs().max()),
        float((out.alpha[i, ..., 0].double() - alpha).abs().max()),
        float((out.depth[i, ..., 0].double() - depth).abs().max()),
    )


def _ok(out, ref, backend, i=0):
    err_rgb, err_a, err_d = _cmp(out, ref, i)
    tol = TOL[backend]
    return err_rgb <= tol and err_a <= tol and err_d <= tol * max(1.0, float(ref[2].max()))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("deg", [0, 1, 2, 3, 4])
def test_matches_literal_loop_small(deg, backend):
    scene = _scene(24, deg, seed=deg)
    cam = _camera(W=13, H=9, f=12.0)
    out = render(scene, cam, background=(0.2, 0.5, 0.9), backend=backend, tile=4)
    assert out.backend == backend
    ref = render_loop(scene, cam.c2w[0], cam.K[0], 13, 9, bg=(0.2, 0.5, 0.9))
    assert _ok(out, ref, backend), _cmp(out, ref)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("deg", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("tile,chunk", [(8, 1 << 19), (4, 64), (16, 1 << 19), (5, 300)])
def test_matches_bruteforce_random(deg, tile, chunk, backend):
    scene = _scene(160, deg, seed=10 + deg)
    cam = _camera(W=41, H=29)
    out = render(scene, cam, backend=backend, tile=tile, chunk=chunk)
    ref = render_dense(scene, cam.c2w[0], cam.K[0], 41, 29)
    assert _ok(out, ref, backend), _cmp(out, ref)
    # the scene really exercises termination and coverage
    assert float(ref[1].max()) > 0.9998  # some pixels reach early termination (T <= 1e-4 stop)
    assert float(ref[1].max() - ref[1].min()) > 0.02


@pytest.mark.parametrize("backend", BACKENDS)
def test_float32_within_1e4_and_rotated_camera(backend):
    scene64 = _scene(300, 3, seed=3)
    c2w = look_at(torch.tensor([1.5, -0.5, -0.5], dtype=F64), torch.tensor([0.0, 0.0, 3.0], dtype=F64))
    cam = _camera(W=48, H=36, c2w=c2w)
    ref = render_dense(scene64, cam.c2w[0], cam.K[0], 48, 36, bg=(1.0, 1.0, 1.0))
    scene32 = GaussianScene(**{k: getattr(scene64, k).float() for k in ("means", "scales", "quats", "opacities", "sh")})
    out = render(scene32, cam.to(dtype=torch.float32), background=(1.0, 1.0, 1.0), backend=backend)
    assert out.rgb.dtype == torch.float32
    err_rgb, err_a, err_d = _cmp(out, ref)
    assert err_rgb <= 1e-4 and err_a <= 1e-4
    assert err_d <= 1e-4 * float(ref[2].max())


@pytest.mark.parametrize("backend", BACKENDS)
def test_antialiased_mode_matches_reference(backend):
    scene = _scene(120, 1, seed=7)
    cam = _camera(W=32, H=24)
    out = render(scene, cam, backend=backend, antialiased=True)
    ref = render_dense(scene, cam.c2w[0], cam.K[0], 32, 24, antialiased=True)
    assert _ok(out, ref, backend), _cmp(out, ref)


@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_of_cameras_and_empty_scene(backend):
    scene = _scene(80, 2, seed=5)
    c2ws = torch.stack([torch.eye(4, dtype=F64), look_at(torch.tensor([0.5, 0.0, 0.0], dtype=F64),
                                                          torch.tensor([0.0, 0.0, 3.0], dtype=F64))])
    cams = Cameras(c2w=c2ws, K=_camera().K[0], width=40, height=30, near=0.1, far=100.0)
    out = render(scene, cams, backend=backend)
    assert out.rgb.shape == (2, 30, 40, 3) and out.alpha.shape == (2, 30, 40, 1) and out.depth.shape == (2, 30, 40, 1)
    for i in range(2):
        ref = render_dense(scene, cams.c2w[i], cams.K[i], 40, 30)
        assert _ok(out, ref, backend, i), _cmp(out, ref, i)
    empty = GaussianScene.empty(sh_degree=2, dtype=F64)
    out = render(empty, cams, background=(0.1, 0.2, 0.3), backend=backend)
    assert torch.allclose(out.rgb, torch.tensor([0.1, 0.2, 0.3], dtype=F64).expand(2, 30, 40, 3))
    assert float(out.alpha.abs().max()) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_everything_culled_gives_background(backend):
    scene = _scene(20, 0, seed=1)
    scene.means[:, 2] = -5.0  # all behind the camera
    out = render(scene, _camera(), background=(0.3, 0.3, 0.3), backend=backend)
    assert float((out.rgb - 0.3).abs().max()) == 0.0 and float(out.depth.abs().max()) == 0.0


@pytest.mark.parametrize("backend", BACKENDS)
def test_unnormalised_quaternions_are_normalised(backend):
    scene = _scene(60, 1, seed=2)
    a = render(scene, _camera(), backend=backend)
    scene2 = GaussianScene(scene.means, scene.scales, scene.quats * 7.3, scene.opacities, scene.sh)
    b = render(scene2, _camera(), backend=backend)
    assert float((a.rgb - b.rgb).abs().max()) < (1e-6 if backend == "torch32" else 1e-12)  # float32: rounding only


@pytest.mark.parametrize("backend", ["torch", pytest.param("numba", marks=_needs_numba)])
def test_gradients_match_finite_differences(backend):
    scene = _scene(7, 2, seed=4, kind="plain")
    scene.opacities.clamp_(0.05, 0.9)  # away from the 0.999 clamp
    cam = _camera(W=10, H=8, f=9.0)
    names = ("means", "scales", "quats", "opacities", "sh")

    def f(*params):
        sc = GaussianScene(*params)
        out = render(sc, cam, background=(0.3, 0.6, 0.1), backend=backend, tile=4)
        return out.rgb, out.alpha, out.depth

    params = tuple(getattr(scene, k).clone().requires_grad_(True) for k in names)
    assert torch.autograd.gradcheck(f, params, eps=1e-6, atol=1e-5, rtol=1e-4)
    # every parameter actually receives gradient
    out = f(*params)
    (out[0].sum() + out[2].sum()).backward()
    for k, p in zip(names, params):
        assert p.grad is not None and float(p.grad.abs().sum()) > 0, k


@pytest.mark.parametrize(
    "field,value,msg",
    [
        ("means", float("nan"), "non-finite"),
        ("sh", float("inf"), "non-finite"),
        ("scales", -1.0, "positive"),
        ("scales", 0.0, "positive"),
        ("quats", 0.0, "all zero"),
    ],
)
@pytest.mark.parametrize("backend", ["auto"] + BACKENDS)
def test_bad_scene_values_raise_clear_errors(field, value, msg, backend):
    scene = _scene(10, 1, seed=0)
    getattr(scene, field)[3] = value
    with pytest.raises(ValueError, match=msg):
        render(scene, _camera(), backend=backend)


def test_bad_camera_inputs_raise_clear_errors():
    scene = _scene(10, 1, seed=0)
    cam = _camera()
    cam.c2w[0, 0, 3] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        render(scene, cam)
    with pytest.raises(ValueError, match="image size"):
        render(scene, Cameras(torch.eye(4, dtype=F64), _camera().K[0], 0, 10, 0.1, 10.0))
    with pytest.raises(ValueError, match="background"):
        render(scene, _camera(), background=(1.0, 2.0))
    with pytest.raises(ValueError, match="backend"):
        render(scene, _camera(), backend="vulkan")


def test_backend_selection_on_cpu(monkeypatch):
    scene = _scene(10, 0, seed=0)
    with pytest.raises(RuntimeError, match="gsplat"):
        render(scene, _camera(), backend="gsplat")
    if raster_numba.usable():
        assert available_backends("cpu") == ["torch", "torch32", "numba"]
        assert render(scene, _camera(), backend="auto").backend == "numba"
    # without a usable numba (not installed, or its guarded first call failed) "auto" is the torch reference
    monkeypatch.setitem(raster_numba._STATE, "checked", True)
    monkeypatch.setitem(raster_numba._STATE, "ok", False)
    monkeypatch.setitem(raster_numba._STATE, "reason", "ImportError: no numba")
    assert available_backends("cpu") == ["torch", "torch32"]
    assert render(scene, _camera(), backend="auto").backend == "torch"
    with pytest.raises(RuntimeError, match="pip install numba"):
        render(scene, _camera(), backend="numba")
