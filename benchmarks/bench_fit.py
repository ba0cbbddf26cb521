"""Fit benchmark: seconds per ``fit_scene`` iteration at the reconstruct workflow's settings, split into stages.

Scene: the reconstruct template (``workflows/two_photos_reconstruct.json``) on the real LLFF fern pair (photos 0 and 4
of ``../shared/data/llff_fern/images_8``, skipped when absent) at ``--size`` (384: 221,184 Gaussians, 384x288): the
stereo prior rendered along the 49-frame path over a white background is the video; ``pipeline.reconstruct`` fits
the path frames plus the two photos (x4) from the prior, SH degree 1, densify on (its statistics are collected; the
first densify step is at iteration 500), batch of one view.

Stages (``--profile``; timers wrap the engine's functions, so they add a little overhead of their own):
projection forward / backward, tile forward / backward, loss (L1 + D-SSIM) forward, rest of backward (loss, SSIM,
activations), densify statistics, optimizer step. ``--paths`` times the whole fit for each training path
(``compiled``: numba projection + tiles in one autograd function; ``torch-proj``: the projection in torch autograd;
``previous``: torch-proj plus the fit loop as it was, per-tensor Adam on torch's thread count) in the same run, and reports their ratio and the largest difference of the fitted scenes.

    python benchmarks/bench_fit.py [--threads 2] [--size 384] [--iters 20] [--paths compiled,torch-proj] [--profile]

On a shared machine report ratios from one run, not absolute times.
"""
from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

DATA = ROOT.parent / "shared" / "data"
WHITE = (1.0, 1.0, 1.0)


def fern_inputs(size: int):
    """(frames [49,H,W,3], path Cameras, views ViewPair, prior scene) for the fern pair at ``size``; None if absent."""
    from bench_rasterize import fern_views
    from vscene_engine.pipeline import coarse_video, make_path

    views = fern_views(size)
    if views is None:
        return None
    path = make_path(views, frames=49)
    cv = coarse_video(views, path, background=WHITE)
    return cv.frames, path, views, cv.scene.to(dtype=torch.float32)


class Timers:
    def __init__(self):
        self.t = defaultdict(float)

    @contextmanager
    def __call__(self, name):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.t[name] += time.perf_counter() - t0


@contextmanager
def patched(obj, name, wrapper):
    old = getattr(obj, name)
    setattr(obj, name, wrapper(old))
    try:
        yield
    finally:
        setattr(obj, name, old)


def timed(T, label):
    def wrap(fn):
        def inner(*a, **k):
            with T(label):
                return fn(*a, **k)
        return inner
    return wrap


def timed_static(T, label):
    return lambda fn: staticmethod(timed(T, label)(fn))


@contextmanager
def profiling(T):
    """Wrap the engine's stages with timers (both training paths)."""
    from contextlib import ExitStack

    from vscene_engine.recon import fit as optimize
    from vscene_engine.render import raster_numba
    from vscene_engine.render import rasterize

    with ExitStack() as st:
        st.enter_context(patched(rasterize, "_project_few_threads", timed(T, "projection fwd")))
        st.enter_context(patched(rasterize._ProjectFewThreads, "backward",
                                 lambda f: staticmethod(timed(T, "projection bwd")(f))))
        st.enter_context(patched(raster_numba._Composite, "forward", timed_static(T, "tile fwd")))
        st.enter_context(patched(raster_numba._Composite, "backward", timed_static(T, "tile bwd")))
        for cls in [getattr(raster_numba, n) for n in ("_RenderGrad",) if hasattr(raster_numba, n)]:
            st.enter_context(patched(cls, "forward", timed_static(T, "projection+tile fwd (compiled)")))
            st.enter_context(patched(cls, "backward", timed_static(T, "tile+projection bwd (compiled)")))
        st.enter_context(patched(optimize, "photometric_loss", timed(T, "loss fwd")))
        st.enter_context(patched(optimize._DensifyStats, "add", timed(T, "densify stats")))
        st.enter_context(patched(torch.optim.Adam, "step", timed(T, "optimizer")))
        st.enter_context(patched(torch.Tensor, "backward", timed(T, "backward (all)")))
        yield


@contextmanager
def training_path(name):
    """``compiled``: the default; ``torch-proj``: the projection in torch autograd (the previous rasterizer path);
    ``previous``: that and the fit as it was before (per-tensor Adam, the fit's torch ops on torch's thread count)."""
    from vscene_engine.render import raster_numba

    if name == "compiled":
        yield
        return
    if name not in ("torch-proj", "previous"):
        raise SystemExit(f"unknown path {name!r}")
    from contextlib import ExitStack, nullcontext

    from vscene_engine.recon import fit as optimize

    st = raster_numba._STATE
    raster_numba.grad_usable()
    old = st["grad_ok"]
    st["grad_ok"] = False  # the probe's answer: take the torch-projection path
    try:
        with ExitStack() as es:
            if name == "previous":  # also the per-tensor Adam and torch's own thread count for the fit's torch ops
                es.enter_context(patched(optimize, "_adam", lambda f: lambda groups, dev: torch.optim.Adam(
                    groups, lr=0.0, eps=1e-15)))
                es.enter_context(patched(optimize, "_torch_glue_threads", lambda f: lambda dev: nullcontext()))
            yield
    finally:
        st["grad_ok"] = old


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--iters", type=int, default=20, help="iterations per timed fit (the workflow runs 150)")
    ap.add_argument("--paths", default="compiled,previous")
    ap.add_argument("--profile", action="store_true", help="split the iteration into stages")
    args = ap.parse_args(argv)
    torch.set_num_threads(max(1, args.threads))

    from vscene_engine.pipeline import reconstruct

    t0 = time.perf_counter()
    got = fern_inputs(args.size)
    if got is None:
        print("skipped: fern data absent")
        return
    frames, path, views, prior = got
    print(f"fern {args.size}: {len(prior)} Gaussians, {path.width}x{path.height}, 49 frames + 2 photos x4 "
          f"(inputs built in {time.perf_counter() - t0:.0f}s)", flush=True)
    kw = dict(iters=args.iters, densify=True, input_view_weight=4, sh_degree=1, seed=0, background=WHITE)
    reconstruct(frames, path, views, prior.clone(), **dict(kw, iters=2))  # warm-up (compiles)

    results = {}
    for name in [p for p in args.paths.split(",") if p]:
        T = Timers()
        with training_path(name), (profiling(T) if args.profile else _null()):
            t = time.perf_counter()
            res = reconstruct(frames, path, views, prior.clone(), **kw)
            wall = time.perf_counter() - t
        results[name] = (wall, res, T)
        print(f"\n{name}: whole reconstruct ({args.iters} iterations + re-render of 49 frames) {wall:.2f} s, "
              f"mean PSNR {sum(res.psnr_per_view.values()) / len(res.psnr_per_view):.3f} dB", flush=True)
        if args.profile:
            for k, v in sorted(T.t.items(), key=lambda kv: -kv[1]):
                print(f"  {k:34s} {v / args.iters * 1000:8.1f} ms/iter")
    items = list(results.items())
    for b, (wb, rb, _) in items[1:]:
        a, (wa, ra, _) = items[0]
        print(f"\nwhole reconstruct {b} / {a}: {wb / wa:.2f}x")
        for f in ("means", "scales", "opacities", "sh"):
            d = (getattr(ra.scene, f) - getattr(rb.scene, f)).abs().max()
            print(f"  max |{f} {a} - {b}| = {float(d):.2e}")
        print(f"  max |renders {a} - {b}| = {float((ra.renders - rb.renders).abs().max()):.2e}")


@contextmanager
def _null():
    yield


if __name__ == "__main__":
    main()
