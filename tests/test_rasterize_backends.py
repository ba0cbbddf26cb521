"""Backend-specific checks beyond the shared exactness tests of test_rasterize.py: the numba compositing kernel's
hand-written backward (gradcheck on the kernel itself, and every Gaussian parameter's gradient against the torch
backend's autograd on a scene that terminates pixels), independence from the thread count, and the float32 path's
gradients."""
import pytest
import torch

from test_rasterize import _camera, _scene
from vscene_engine.render import raster_numba
from vscene_engine.core.gaussians import GaussianScene
from vscene_engine.render.rasterize import render

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


# ---------------------------------------------------------------------------------------------------------------
# The numba backend has two forward paths: with autograd (projection + SH in torch, then the compiled compositing)
# and without (raster_numba.render_nograd: projection, SH, culling, depth sort and binning compiled too). Inputs
# that do not require grad take the second one, so every numba case of test_rasterize.py runs it; the tests below
# also run the first one (inputs requiring grad) against the brute-force reference and compare the two directly.
def _with_grad(scene):
    return GaussianScene(*[getattr(scene, k).detach().clone().requires_grad_(True) for k in NAMES])


@needs_numba
@pytest.mark.parametrize("deg", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("antialiased", [False, True])
@pytest.mark.parametrize("tile", [None, 5])
def test_numba_nograd_path_equals_autograd_path_and_reference(deg, antialiased, tile):
    from raster_reference import render_dense

    from test_rasterize import _ok, _cmp
    from vscene_engine.core.cameras import look_at

    scene = _scene(160, deg, seed=30 + deg)
    c2w = look_at(torch.tensor([0.7, -0.3, -0.4], dtype=F64), torch.tensor([0.0, 0.0, 3.0], dtype=F64))
    cam = _camera(W=41, H=29, c2w=c2w)
    ref = render_dense(scene, cam.c2w[0], cam.K[0], 41, 29, bg=(0.2, 0.5, 0.9), antialiased=antialiased)
    kw = dict(background=(0.2, 0.5, 0.9), backend="numba", antialiased=antialiased, tile=tile)
    grad_path = render(_with_grad(scene), cam, **kw)
    assert grad_path.rgb.requires_grad  # really the autograd path
    with torch.no_grad():
        nograd = render(_with_grad(scene), cam, **kw)
    with torch.inference_mode():
        inf = render(scene, cam, **kw)
    assert not nograd.rgb.requires_grad
    grad_path = type(grad_path)(grad_path.rgb.detach(), grad_path.alpha.detach(), grad_path.depth.detach())
    for out in (grad_path, nograd, inf):
        assert _ok(out, ref, "numba"), _cmp(out, ref)
    for a, b in ((grad_path.rgb, nograd.rgb), (grad_path.alpha, nograd.alpha), (grad_path.depth, nograd.depth)):
        assert float((a - b).abs().max()) <= 1e-9
    assert torch.equal(nograd.rgb, inf.rgb)


@needs_numba
def test_numba_nograd_depth_ties_keep_scene_order():
    """Equal depths composite in scene order (a stable sort), as in the torch backend: pairs of Gaussians at the
    same depth with different colours."""
    base = _scene(40, 1, seed=8, kind="plain")
    means = torch.cat([base.means, base.means + torch.tensor([0.05, -0.03, 0.0], dtype=F64)])  # same z
    sc = GaussianScene(means, torch.cat([base.scales, base.scales.flip(0)]), torch.cat([base.quats, base.quats]),
                       torch.cat([base.opacities, base.opacities.flip(0)]).clamp(0.3, 0.95),
                       torch.cat([base.sh, -base.sh]))
    cam = _camera(W=32, H=24)
    with torch.no_grad():
        a = render(sc, cam, backend="numba")
        b = render(sc, cam, backend="torch")
    assert float((a.rgb - b.rgb).abs().max()) <= 1e-9 and float((a.depth - b.depth).abs().max()) <= 1e-8


@needs_numba
def test_numba_nograd_degenerate_scenes():
    """Everything culled at projection (opacity below 1/255, all behind the camera, all off screen), one Gaussian,
    and 0 Gaussians: the same images as the torch backend."""
    cam = _camera()
    sc = _scene(30, 2, seed=9)
    faint = GaussianScene(sc.means, sc.scales, sc.quats, torch.full_like(sc.opacities, 1e-3), sc.sh)
    behind = GaussianScene(sc.means * torch.tensor([1.0, 1.0, -1.0], dtype=F64), sc.scales, sc.quats, sc.opacities,
                           sc.sh)
    off = GaussianScene(sc.means + torch.tensor([50.0, 0.0, 0.0], dtype=F64), sc.scales * 0.01, sc.quats,
                        sc.opacities, sc.sh)
    one = GaussianScene(*[getattr(sc, k)[5:6] for k in NAMES])
    empty = GaussianScene.empty(sh_degree=2, dtype=F64)
    for s in (faint, behind, off, one, empty):
        with torch.no_grad():
            a = render(s, cam, background=(0.1, 0.2, 0.3), backend="numba")
        b = render(s, cam, background=(0.1, 0.2, 0.3), backend="torch")
        assert float((a.rgb - b.rgb).abs().max()) <= 1e-12 and float((a.alpha - b.alpha).abs().max()) <= 1e-12
    assert float(a.alpha.abs().max()) == 0.0  # the empty scene


@needs_numba
@pytest.mark.parametrize("field,value,msg", [("means", float("nan"), "non-finite"), ("scales", 0.0, "positive"),
                                             ("quats", 0.0, "all zero")])
def test_numba_nograd_bad_values_raise_as_before(field, value, msg):
    scene = _scene(10, 1, seed=0)
    getattr(scene, field)[3] = value
    with torch.no_grad(), pytest.raises(ValueError, match=msg):
        render(scene, _camera(), backend="numba")


@needs_numba
def test_numba_nograd_work_buffers_reused_and_released():
    """render_nograd keeps its per-Gaussian work arrays between calls: a smaller scene after a larger one renders as
    from fresh arrays, and release_buffers frees them."""
    big, small, cam = _scene(300, 1, seed=12), _scene(40, 3, seed=13), _camera()
    raster_numba.release_buffers()
    fresh = render(small, cam, backend="numba")
    render(big, cam, backend="numba")
    assert raster_numba._BUFFERS["n"] == 300
    again = render(small, cam, backend="numba")
    assert torch.equal(fresh.rgb, again.rgb) and torch.equal(fresh.depth, again.depth)
    raster_numba.release_buffers()
    assert not raster_numba._BUFFERS


def test_compiled_projection_probe_and_fallback(monkeypatch):
    """The compiled no-grad path has its own guarded first call; when it fails (here: forced), no-grad renders fall
    back to the torch projection + compiled compositing and stay exact."""
    if raster_numba.numba is None:
        pytest.skip("numba not installed")
    monkeypatch.delitem(raster_numba._STATE, "nograd_ok", raising=False)
    assert raster_numba.nograd_usable(), raster_numba._STATE.get("nograd_reason")
    scene, cams = _scene(30, 2, 1), _camera()
    ref = render(scene, cams, backend="torch")
    with torch.no_grad():
        fast = render(scene, cams, backend="numba")
        monkeypatch.setitem(raster_numba._STATE, "nograd_ok", False)
        slow = render(scene, cams, backend="numba")
    for out in (fast, slow):
        assert torch.allclose(out.rgb, ref.rgb, atol=1e-9) and torch.allclose(out.alpha, ref.alpha, atol=1e-9)


# ---------------------------------------------------------------------------------------------------------------
# The compiled autograd path (raster_numba.render_grad): projection, SH, sort, binning and compositing compiled, with
# the hand-written projection backward (_project_backward) chained to the tile backward in one autograd Function.
needs_grad_path = pytest.mark.skipif(not (raster_numba.usable() and raster_numba.grad_usable()),
                                     reason="numba compiled autograd path unavailable")


def _edge_scene(deg, seed):
    """_scene plus Gaussians whose centre is outside 1.3x the field of view but whose footprint reaches the image
    (the Jacobian's clamp binds: its x/y derivative is cut), and a few near the optical axis' direction singularity."""
    s = _scene(120, deg, seed=seed)
    g = torch.Generator().manual_seed(seed + 100)
    n = 10
    means = torch.stack([torch.full((n,), 2.6, dtype=F64) + torch.rand(n, generator=g, dtype=F64),
                         torch.rand(n, generator=g, dtype=F64) - 0.5, torch.full((n,), 2.0, dtype=F64)], 1)
    edge = GaussianScene(means=means, scales=torch.full((n, 3), 0.6, dtype=F64),
                         quats=torch.randn(n, 4, generator=g, dtype=F64),
                         opacities=torch.full((n,), 0.9, dtype=F64),
                         sh=torch.randn(n, s.sh.shape[1], 3, generator=g, dtype=F64) * 0.4)
    return GaussianScene.cat([s, edge])


def _graph_names(t):
    """Names of the autograd nodes behind ``t``."""
    names, seen, stack = set(), set(), [t.grad_fn]
    while stack:
        f = stack.pop()
        if f is not None and id(f) not in seen:
            seen.add(id(f))
            names.add(type(f).__name__)
            stack.extend(nf for nf, _ in f.next_functions)
    return names


@needs_grad_path
@pytest.mark.parametrize("deg", [0, 1, 2, 3, 4])
def test_compiled_grad_path_equals_torch_autograd(deg):
    """Every scene input's gradient (means incl. the view-direction term of SH, raw quats, scales, opacities, all SH
    coefficients) equals the torch backend's autograd to 1e-8 relative, with clamped Jacobians, culled, tiny, huge
    and terminating Gaussians; and the render really went through the compiled autograd Function."""
    from vscene_engine.core.cameras import look_at

    scene = _edge_scene(deg, seed=40 + deg)
    c2w = look_at(torch.tensor([0.4, -0.2, -0.3], dtype=F64), torch.tensor([0.0, 0.0, 3.0], dtype=F64))
    cam = _camera(W=43, H=31, c2w=c2w)
    names = _graph_names(render(_with_grad(scene), cam, backend="numba").rgb)
    assert "_RenderGradBackward" in names and "_ProjectFewThreadsBackward" not in names, names
    gn = _grads(scene, cam, "numba")
    gt = _grads(scene, cam, "torch")
    for k, a, b in zip(NAMES, gn, gt):
        scale = float(b.abs().max())
        assert scale > 0, k
        assert float((a - b).abs().max()) <= 1e-8 * scale, (k, float((a - b).abs().max()) / scale)


@needs_grad_path
def test_compiled_grad_path_gradcheck():
    """render_grad against finite differences in every scene input (float64, SH degree 2, a clamped Jacobian)."""
    g = torch.Generator().manual_seed(7)
    n = 6
    means = torch.randn(n, 3, generator=g, dtype=F64) * torch.tensor([0.4, 0.3, 0.2], dtype=F64) + torch.tensor(
        [0.0, 0.0, 2.5], dtype=F64)
    means[0] = torch.tensor([2.3, 0.1, 2.0], dtype=F64)  # centre outside 1.3x the FOV, footprint on screen
    scales = torch.rand(n, 3, generator=g, dtype=F64) * 0.15 + 0.08
    scales[0] = 0.7
    quats = torch.randn(n, 4, generator=g, dtype=F64)
    opac = torch.rand(n, generator=g, dtype=F64) * 0.5 + 0.3
    sh = torch.randn(n, 9, 3, generator=g, dtype=F64) * 0.3
    c2w = torch.eye(4, dtype=F64)
    K = torch.tensor([[12.0, 0, 6.3], [0, 11.0, 5.2], [0, 0, 1]], dtype=F64)
    wc = torch.rand(11, 12, 3, generator=g, dtype=F64)
    wd = torch.rand(11, 12, generator=g, dtype=F64)

    def f(m, s, q, o, c):
        C, D, T = raster_numba.render_grad(GaussianScene(m, s, q, o, c), c2w, K, 12, 11, 4)
        return (C * wc).sum() + 0.1 * (D * wd).sum() + T.sum()

    inputs = [t.clone().requires_grad_(True) for t in (means, scales, quats, opac, sh)]
    assert torch.autograd.gradcheck(f, inputs, eps=1e-6, atol=1e-6, rtol=1e-5)


@needs_grad_path
def test_compiled_grad_path_falls_back_when_probe_fails(monkeypatch):
    """A failed guarded first call keeps the torch projection + compiled compositing (same image and gradients)."""
    scene = _scene(60, 1, seed=9)
    cam = _camera(W=30, H=20)
    g_fast = _grads(scene, cam, "numba")
    monkeypatch.setitem(raster_numba._STATE, "grad_ok", False)
    names = _graph_names(render(_with_grad(scene), cam, backend="numba").rgb)
    assert "_ProjectFewThreadsBackward" in names and "_RenderGradBackward" not in names, names
    g_slow = _grads(scene, cam, "numba")
    for k, a, b in zip(NAMES, g_fast, g_slow):
        assert float((a - b).abs().max()) <= 1e-8 * float(b.abs().max()), k



@needs_numba
def test_vector_exp_within_an_ulp_of_math_exp():
    """The branch-free exp of the vectorised tile kernels against libm's exp on 10^6 arguments in its range (and its
    ends): within 2 ulp everywhere, equal on most."""
    import numba
    import numpy as np

    @numba.njit
    def vec(s):
        out = np.empty_like(s)
        for i in range(s.shape[0]):
            out[i] = raster_numba._exp_neg(s[i])
        return out

    s = np.concatenate([np.random.default_rng(0).uniform(0.0, raster_numba.S_CLAMP, 10**6),
                        [0.0, 1e-300, 0.5 * np.log(2.0), np.log(255.0), raster_numba.S_CLAMP]])
    ours, ref = vec(s), np.exp(-s)
    ulp = np.abs(ours - ref) / np.spacing(ref)
    assert float(ulp.max()) <= 2.0, float(ulp.max())
    assert float((ulp == 0).mean()) > 0.8


@needs_numba
@pytest.mark.parametrize("deg", [0, 2])
def test_vectorised_tiles_equal_scalar_tiles(deg):
    """Tiles of <= 16 px run the vectorised kernels, larger ones the scalar loops: the same image to ~1e-15 and the
    same gradients to 1e-12 relative (forward and backward, SH view term, clamped and terminating Gaussians). An
    absurd opacity (> O_FAST) sends every tile size to the scalar kernels: the vectorised ones' σ clamp would not
    hold for it."""
    scene = _edge_scene(deg, seed=50 + deg)
    op = scene.opacities.clone()
    op[3] = 1e15
    cam = _camera(W=53, H=37)
    outs = {}
    for tile in (16, 7, 24):
        with torch.no_grad():
            img = render(scene, cam, background=(0.3, 0.6, 0.1), backend="numba", tile=tile)
            odd = render(GaussianScene(scene.means, scene.scales, scene.quats, op, scene.sh), cam, backend="numba",
                         tile=tile)
        outs[tile] = (img, odd, _grads(scene, cam, "numba", tile=tile))
    ref_img, ref_odd, ref_g = outs[24]  # scalar kernels
    for tile in (16, 7):
        img, odd, g = outs[tile]
        for a, b in ((img.rgb, ref_img.rgb), (img.alpha, ref_img.alpha), (img.depth, ref_img.depth),
                     (odd.rgb, ref_odd.rgb), (odd.alpha, ref_odd.alpha)):
            assert float((a - b).abs().max()) <= 1e-13
        for k, a, b in zip(NAMES, g, ref_g):
            scale = float(b.abs().max())
            assert scale > 0, k
            assert float((a - b).abs().max()) <= 1e-12 * scale, (k, float((a - b).abs().max()) / scale)
    gp = torch.rand(5, 10, dtype=F64).numpy()
    ids = torch.tensor([0, 2, 4]).numpy()
    assert raster_numba._fast_ok(gp, ids, 16) and not raster_numba._fast_ok(gp, ids, 17)
    gp[1, 5] = float("nan")  # a row no tile uses
    assert raster_numba._fast_ok(gp, ids, 16)
    for bad in (float("nan"), 1e15):
        gp[2, 5] = bad
        assert not raster_numba._fast_ok(gp, ids, 16)
