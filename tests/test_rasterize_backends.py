"""Backend-specific checks beyond the shared exactness tests of test_rasterize.py: the numba compositing kernel's
hand-written backward (gradcheck on the kernel itself, and every Gaussian parameter's gradient against the torch
backend's autograd on a scene that terminates pixels), independence from the thread count, and the float32 path's
gradients."""
import pytest
import torch

from test_rasterize import _camera, _scene
from vscene_engine import raster_numba
from vscene_engine.gaussians import GaussianScene
from vscene_engine.rasterize import render

F64 = torch.float64
NAMES = ("means", "scales", "quats", "opacities", "sh")
needs_numba = pytest.mark.skipif(not raster_numba.usable(), reason="numba not installed")


def _grads(scene, cam, backend, **kw):
    params = [getattr(scene, k).clone().requires_grad_(True) for k in NAMES]
    out = render(GaussianScene(*params), cam, background=(0.3, 0.6, 0.1), backend=backend, **kw)
    g = torch.Generator().manual_seed(0)
    wr = torch.rand(out.rgb.shape, generator=g, dtype=F64)
    wa = torch.rand(out.alpha.shape, generator=g, dtype=F64)
    wd = torch.rand(out.depth.shape, generator=g, dtype=F64)
    loss = (out.rgb.double() * wr).sum() + (out.alpha.double() * wa).sum() + 0.1 * (out.depth.double() * wd).sum()
    loss.backward()
    return [p.grad for p in params]


@needs_numba
def test_numba_kernel_gradcheck():
    """The kernel alone (means2d, conic, opacity, depth, colour -> C, D, T) against finite differences, with pixels
    that terminate (opaque Gaussians stacked) and alphas below 1/255 at the footprint's edge."""
    g = torch.Generator().manual_seed(3)
    G = 14
    mx = torch.rand(G, generator=g, dtype=F64) * 4 + 2
    my = torch.rand(G, generator=g, dtype=F64) * 3 + 2
    a = torch.rand(G, generator=g, dtype=F64) * 0.4 + 0.2
    c = torch.rand(G, generator=g, dtype=F64) * 0.4 + 0.2
    b = (torch.rand(G, generator=g, dtype=F64) - 0.5) * 0.2
    o = torch.rand(G, generator=g, dtype=F64) * 0.25 + 0.7  # several reach T <= 1e-4 when stacked
    z = torch.arange(G, dtype=F64) + 1.0
    col = torch.rand(G, 3, generator=g, dtype=F64)
    gp = torch.cat([torch.stack([mx, my, a, b, c, o, z], 1), col], 1).requires_grad_(True)
    ext = torch.full((G, 2), 20.0, dtype=F64)

    def f(x):
        return raster_numba.composite(x, ext, 8, 7, 4)

    C, D, T = f(gp)
    stop, offsets = C.grad_fn.geom[9], C.grad_fn.geom[2]  # per-pixel stop position vs. the tile's list length
    assert int((stop < (offsets[1:] - offsets[:-1]).max()).sum()) >= 4  # early termination is exercised
    assert torch.autograd.gradcheck(f, (gp,), eps=1e-6, atol=1e-6, rtol=1e-5)


@needs_numba
@pytest.mark.parametrize("antialiased", [False, True])
def test_numba_gradients_equal_torch_autograd(antialiased):
    scene = _scene(160, 2, seed=21)
    cam = _camera(W=41, H=29)
    gn = _grads(scene, cam, "numba", antialiased=antialiased)
    gt = _grads(scene, cam, "torch", antialiased=antialiased)
    for k, a, b in zip(NAMES, gn, gt):
        scale = float(b.abs().max())
        assert scale > 0, k
        assert float((a - b).abs().max()) <= 1e-8 * scale, k


@needs_numba
def test_numba_result_independent_of_thread_count():
    scene = _scene(300, 1, seed=5)
    cam = _camera(W=64, H=48)
    n0 = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = render(scene, cam, backend="numba")
        g1 = _grads(scene, cam, "numba")
        torch.set_num_threads(2)
        two = render(scene, cam, backend="numba")
        g2 = _grads(scene, cam, "numba")
    finally:
        torch.set_num_threads(n0)
    assert torch.equal(one.rgb, two.rgb) and torch.equal(one.depth, two.depth)
    assert all(torch.equal(a, b) for a, b in zip(g1, g2))  # fixed-order reduction: bitwise deterministic


def test_float32_path_gradients_close_to_torch():
    """torch32's gradients come from a float32 copy of the transmittance scan: relative error at float32 level."""
    scene = _scene(160, 2, seed=22)
    cam = _camera(W=41, H=29)
    g32 = _grads(scene, cam, "torch32")
    g64 = _grads(scene, cam, "torch")
    for k, a, b in zip(NAMES, g32, g64):
        scale = float(b.abs().max())
        assert float((a - b).abs().max()) <= 1e-3 * scale, (k, float((a - b).abs().max()) / scale)


@needs_numba
def test_numba_keeps_float32_dtype_and_no_grad():
    scene = _scene(50, 1, seed=6)
    s32 = GaussianScene(**{k: getattr(scene, k).float() for k in NAMES})
    with torch.no_grad():
        out = render(s32, _camera().to(dtype=torch.float32), backend="numba")
    assert out.rgb.dtype == torch.float32 and out.depth.dtype == torch.float32 and not out.rgb.requires_grad


@needs_numba
def test_thread_policy(monkeypatch):
    """Non-spinning pool unless the user chose one; numba threads follow torch.set_num_threads (also while the glue
    runs on one torch thread), and the glue restores torch's setting."""
    import os

    layer = raster_numba.configure_threads()
    if not os.environ.get("NUMBA_THREADING_LAYER"):
        assert layer == "workqueue"
    n0 = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        assert raster_numba.num_threads() == min(2, raster_numba.numba.config.NUMBA_NUM_THREADS,
                                                 len(os.sched_getaffinity(0)))
        with raster_numba.torch_threads(1):
            assert torch.get_num_threads() == 1
            assert raster_numba.num_threads() == min(2, raster_numba.numba.config.NUMBA_NUM_THREADS,
                                                     len(os.sched_getaffinity(0)))
        assert torch.get_num_threads() == 2
        torch.set_num_threads(1)
        assert raster_numba.num_threads() == 1
        render(_scene(20, 0, seed=1), _camera(), backend="numba")
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(n0)


def test_numba_probe_and_render_inside_inference_mode(monkeypatch):
    """ComfyUI runs every node under torch.inference_mode(): the guarded first call must still pass there (it once
    failed, silently sending ComfyUI users to the slow torch backend), and auto then renders with numba."""
    if raster_numba.numba is None:
        pytest.skip("numba not installed")
    monkeypatch.setitem(raster_numba._STATE, "checked", False)
    monkeypatch.setitem(raster_numba._STATE, "ok", False)
    scene, cams = _scene(20, 1, 0), _camera()
    with torch.inference_mode():
        assert raster_numba.usable(), raster_numba._STATE["reason"]
        out = render(scene, cams, backend="auto")
    assert out.backend == "numba"
    ref = render(scene, cams, backend="torch")
    assert torch.allclose(out.rgb.double(), ref.rgb.double(), atol=1e-6)
