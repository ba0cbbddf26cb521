"""Rasterizer benchmark: forward / backward seconds per frame and peak memory, per backend, on real and synthetic scenes.

Scenes (each skipped cleanly when its data is absent):

* ``fern384`` / ``fern512``: the engine's own stereo prior of the real LLFF fern pair (photos 0 and 4 of
  ``../shared/data/llff_fern/images_8`` with the poses of ``poses_bounds.npy``; ``coarse_prior`` as in
  ``cli prior --size N``: one Gaussian per pixel of both views, 221,184 at 384), rendered from the middle camera of the
  49-frame coarse-video path;
* ``lego``: NeRF-synthetic lego fitted by ``fit_scene`` for ``--lego-iters`` iterations at ``--lego-res`` (0: skip;
  it costs minutes), rendered at a held-out camera;
* ``wall``: MVSplat-shaped synthetic scene, one Gaussian per pixel of two 256x256 depth maps of the engine's
  procedural scene (131,072 Gaussians), middle camera of the interpolation path.

Backends: ``--backends`` (default: every one usable on the device: numba, torch32, torch on CPU; + gsplat on CUDA;
``numba-torchproj`` is the numba backend with its previous autograd path: projection and its backward in torch
autograd, only the compositing compiled).
``--comfyui DIR`` also times core ComfyUI's RenderSplat renderer (``comfy_extras/nodes_gaussian_splat.py``, called
in-process on the same scene and camera; that ComfyUI's requirements must be importable). ``--busy`` re-runs every
forward/backward with one CPU-bound background process and reports busy/quiet ratios.

    python benchmarks/bench_rasterize.py [--threads 2] [--repeats 5] [--scenes fern384,fern512,wall] [--busy]
        [--comfyui /path/to/ComfyUI] [--device cpu|cuda|mps] [--lego-iters 300] [--out results.json]

Prints a markdown table (and JSON with --out). On a shared machine report ratios from one run, not absolute times.
Peak memory: CUDA ``max_memory_allocated``; CPU the growth of the resident set during one call (Linux /proc sampling,
every 2 ms) — a lower bound, since memory freed by earlier calls is reused; "–" where unavailable.
Rough numbers from one run on the shared 2-core development machine (load 6-8, so only the contrast means anything):
wall forward numba 0.42 s, torch 1.06 s, core RenderSplat 2.18 s; with --busy numba 0.7x/1.6x (fwd/bwd), torch
12.7x/10.2x, core 28x.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vscene_engine.core.gaussians import GaussianScene  # noqa: E402
from vscene_engine.render.rasterize import available_backends, render  # noqa: E402

DATA = ROOT.parent / "shared" / "data"


# ------------------------------------------------------------------------------------------------ scenes
def scene_wall(size: int = 256, seed: int = 0):
    """131,072 Gaussians (2 x size^2) and the middle camera of the path; float32."""
    from vscene_engine.prior.depth import depth_to_gaussians
    from vscene_engine.tools.synthetic import demo_cameras, procedural_scene
    from vscene_engine.views.trajectories import make_trajectory

    truth = procedural_scene(40000, seed=seed)
    views = demo_cameras(size, size)
    parts = []
    for i in range(2):
        with torch.no_grad():
            out = render(truth, views[i], background=(0.55, 0.7, 0.9))
        a = out.alpha[0, ..., 0]
        depth = torch.where(a > 0.5, out.depth[0, ..., 0], torch.full_like(a, 9.0))  # sky -> a far backdrop
        parts.append(depth_to_gaussians(depth, out.rgb[0].clamp(0, 1), views[i], opacity=0.25 + 0.7 * a,
                                        scale_mult=1.0, thickness=0.5, sh_degree=0))
    return GaussianScene.cat(parts), make_trajectory("interpolate", views, frames=49)[24]


def fern_views(size: int):
    """ViewPair of fern photos 0 and 4 with their LLFF cameras at ``size`` (longer side); None when the data is absent."""
    from vscene_engine.io.camera_formats import load_cameras
    from vscene_engine.io.images import load_image
    from vscene_engine.views.pair import make_view_pair

    d = DATA / "llff_fern"
    paths = [d / "images_8" / "image000.png", d / "images_8" / "image004.png"]
    if not all(p.is_file() for p in paths) or not (d / "poses_bounds.npy").is_file():
        return None
    cams = load_cameras(d / "poses_bounds.npy")
    return make_view_pair(load_image(paths[0]), load_image(paths[1]), cams[[0, 4]], size=size)


def scene_fern(size: int):
    """The engine's stereo prior of fern photos 0 and 4 at ``size`` (longer side) and the middle path camera."""
    from vscene_engine.pipeline import make_path
    from vscene_engine.prior.coarse import coarse_prior

    views = fern_views(size)
    if views is None:
        return None
    prior = coarse_prior(views.images, views.cameras)
    return prior.scene, make_path(views, frames=49)[24]


def scene_lego(iters: int, res: int):
    """lego fitted from a random init for ``iters`` iterations on 20 views, and a held-out camera."""
    if iters <= 0 or not (DATA / "nerf_synthetic_lego" / "transforms_train.json").is_file():
        return None
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from fit_lego import load_lego, split_views
    from vscene_engine.recon.fit import FitConfig, fit_scene

    train, held = split_views(100, 20, 4)
    cams, imgs = load_lego(DATA / "nerf_synthetic_lego", train, res)
    cams_ho, _ = load_lego(DATA / "nerf_synthetic_lego", held[:1], res)
    fit = fit_scene(imgs, cams, None, FitConfig(n_init=3000, iters=iters, sh_degree=1, seed=0),
                    background=(1.0, 1.0, 1.0), final_eval=False)
    return fit.scene, cams_ho[0]


# ------------------------------------------------------------------------------------------------ measuring
class PeakRSS:
    """Peak resident-set growth (MiB) while the block runs; Linux only (None elsewhere)."""

    def __enter__(self):
        self.ok = os.path.exists("/proc/self/statm")
        self.peak = self.base = self._rss() if self.ok else 0
        self.stop = False
        if self.ok:
            self.t = threading.Thread(target=self._poll, daemon=True)
            self.t.start()
        return self

    def _rss(self):
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def _poll(self):
        while not self.stop:
            self.peak = max(self.peak, self._rss())
            time.sleep(0.002)

    def __exit__(self, *exc):
        self.stop = True
        if self.ok:
            self.t.join()
            self.peak = max(self.peak, self._rss())

    @property
    def mib(self):
        return (self.peak - self.base) / 2**20 if self.ok else None


def measure(fn, repeats, dev):
    """Median seconds over ``repeats`` calls after one warm-up, and peak memory (MiB) of one call."""
    fn()
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
        base = torch.cuda.memory_allocated(dev)
        fn()
        mem = (torch.cuda.max_memory_allocated(dev) - base) / 2**20
    else:
        with PeakRSS() as m:
            fn()
        mem = m.mib
    return statistics.median(ts), mem


def bench_backend(scene, cam, backend, repeats, dev, sync):
    if backend == "numba-torchproj":  # the numba backend's previous autograd path (projection in torch autograd)
        from vscene_engine.render import raster_numba

        raster_numba.grad_usable()  # the probe has run, so its answer can be restored
        old = raster_numba._STATE.get("grad_ok")
        raster_numba._STATE["grad_ok"] = False
        try:
            return bench_backend(scene, cam, "numba", repeats, dev, sync)
        finally:
            raster_numba._STATE["grad_ok"] = old

    def fwd():
        with torch.no_grad():
            o = render(scene, cam, backend=backend)
        sync()
        return o

    t_fwd, m_fwd = measure(fwd, repeats, dev)
    image = fwd().rgb[0].float().cpu()
    params = [t.detach().clone().requires_grad_(True) for t in (scene.means, scene.scales, scene.quats,
                                                                scene.opacities, scene.sh)]
    target = image.to(dev) * 0.9
    split = {"f": [], "b": []}

    def fwd_bwd():
        t0 = time.perf_counter()
        o = render(GaussianScene(*params), cam, backend=backend)
        loss = (o.rgb[0] - target).abs().mean()
        sync()
        t1 = time.perf_counter()
        loss.backward()
        sync()
        split["f"].append(t1 - t0)
        split["b"].append(time.perf_counter() - t1)
        for p in params:
            p.grad = None

    _, m_fb = measure(fwd_bwd, repeats, dev)
    return {"forward_s": t_fwd, "forward_with_grad_s": statistics.median(split["f"][1:]),
            "backward_s": statistics.median(split["b"][1:]), "peak_mem_fwd_MiB": m_fwd, "peak_mem_fwd_bwd_MiB": m_fb,
            "image": image}


def camera_info_for_core(cam):
    """Our OpenCV camera -> a LOAD3D_CAMERA dict that core RenderSplat projects identically (fx = fy, centred)."""
    from vscene_engine.core.gaussians import rotmat_to_quat

    c2w = cam.c2w[0].double()
    M = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    R3 = M @ c2w[:3, :3] @ M
    pos = M @ c2w[:3, 3]
    q = rotmat_to_quat(R3)
    tgt = pos - R3[:, 2]
    fov = math.degrees(2 * math.atan(min(cam.width, cam.height) / 2 / float(cam.K[0, 0, 0])))
    xyz = lambda v: {"x": float(v[0]), "y": float(v[1]), "z": float(v[2])}  # noqa: E731
    return {"position": xyz(pos), "target": xyz(tgt), "zoom": 1.0, "cameraType": "perspective", "fov": fov,
            "quaternion": {"x": float(q[1]), "y": float(q[2]), "z": float(q[3]), "w": float(q[0])}}


def bench_core(comfyui, scene, cam, repeats, dev, sync):
    """Core ComfyUI RenderSplat's renderer on the same scene and camera (forward only; it has no backward)."""
    if str(Path(comfyui).resolve()) not in sys.path:
        sys.path.insert(0, str(Path(comfyui).resolve()))
    from comfy.cli_args import args as comfy_args

    comfy_args.cpu = dev.type != "cuda"
    from comfy_extras import nodes_gaussian_splat as ngs

    ci = camera_info_for_core(cam.to(device="cpu"))
    rgb_dc = (scene.sh[:, 0] * 0.28209479177387814 + 0.5).clamp(0, 1)

    def core():
        with torch.no_grad():
            img, _ = ngs._render_gaussian(scene.means, rgb_dc, scene.opacities, scene.scales, scene.quats,
                                          cam.width, cam.height, 1.0, (0.0, 0.0, 0.0), ci, sharpen=1.0,
                                          headlight_shading=0.0, render_style="color")
        sync()
        return img

    t, mem = measure(core, repeats, dev)
    return {"forward_s": t, "peak_mem_fwd_MiB": mem, "image": core().float().cpu().reshape(cam.height, cam.width, -1)}


_BUSY = "import time\nwhile True:\n    pass\n"


def run_all(scenes, backends, args, dev, sync):
    rows = {}
    for sname, (scene, cam) in scenes.items():
        for b in backends:
            r = bench_backend(scene, cam, b, args.repeats, dev, sync)
            rows[(sname, b)] = r
            print(f"  {sname:8s} {b:8s} fwd {r['forward_s']:.3f}s  fwd (grad) {r['forward_with_grad_s']:.3f}s  "
                  f"bwd {r['backward_s']:.3f}s  bwd/fwd {r['backward_s'] / r['forward_s']:.2f}", flush=True)
        if args.comfyui:
            rows[(sname, "core")] = bench_core(args.comfyui, scene, cam, args.repeats, dev, sync)
            print(f"  {sname:8s} core     fwd {rows[(sname, 'core')]['forward_s']:.3f}s", flush=True)
    return rows


def fmt(v, spec=".3f"):
    return "–" if v is None else format(v, spec)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=2, help="torch (and numba) CPU threads")
    ap.add_argument("--scenes", default="fern384,fern512,lego,wall")
    ap.add_argument("--backends", default="", help="comma list (default: every backend usable on the device)")
    ap.add_argument("--comfyui", default=None, help="path to a ComfyUI checkout: also time core RenderSplat")
    ap.add_argument("--busy", action="store_true", help="also run with one CPU-bound background process")
    ap.add_argument("--lego-iters", type=int, default=0, help="fit lego for N iterations (0: skip the lego scene)")
    ap.add_argument("--lego-res", type=int, default=200)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    torch.set_num_threads(max(1, args.threads))
    dev = torch.device(args.device)
    sync = {"cuda": lambda: torch.cuda.synchronize(dev),
            "mps": lambda: torch.mps.synchronize()}.get(dev.type, lambda: None)
    backends = [b for b in args.backends.split(",") if b] or [
        b for b in ["gsplat", "numba", "torch32", "torch"] if b in available_backends(dev)]

    scenes = {}
    for name in [s for s in args.scenes.split(",") if s]:
        t0 = time.perf_counter()
        if name.startswith("fern"):
            got = scene_fern(int(name[4:]))
        elif name == "lego":
            got = scene_lego(args.lego_iters, args.lego_res)
        elif name == "wall":
            got = scene_wall()
        else:
            raise SystemExit(f"unknown scene {name!r}")
        if got is None:
            print(f"skipped {name}: data absent (or --lego-iters 0)")
            continue
        scene, cam = got
        scenes[name] = (scene.to(device=dev, dtype=torch.float32), cam.to(device=dev, dtype=torch.float32))
        print(f"scene {name}: {len(scene)} Gaussians, {cam.width}x{cam.height} (built in "
              f"{time.perf_counter() - t0:.0f}s)", flush=True)

    info = {"device": str(dev), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "repeats": args.repeats, "backends": backends}
    try:
        from vscene_engine.render import raster_numba

        info["numba_threading_layer"] = raster_numba.configure_threads() or None
        info["numba_threads"] = raster_numba.num_threads() if raster_numba.numba is not None else None
    except Exception:
        pass
    quiet = run_all(scenes, backends, args, dev, sync)
    busy = {}
    if args.busy:
        proc = subprocess.Popen([sys.executable, "-c", _BUSY])
        try:
            time.sleep(1.0)
            print("with one CPU-bound background process:", flush=True)
            busy = run_all(scenes, backends, args, dev, sync)
        finally:
            proc.kill()
            proc.wait()

    # ---- table
    lines = [f"device {dev}, {info['threads']} threads, torch {torch.__version__}, median of {args.repeats}",
             "", "forward: no-grad render; forward (grad): the render that records for backward; bwd/fwd: backward over "
             "the no-grad forward", "",
             "| scene | Gaussians | size | backend | forward s | forward (grad) s | backward s | bwd/fwd | vs core fwd | "
             "max abs vs torch | peak MiB fwd / fwd+bwd |" + (" busy fwd × | busy bwd × |" if busy else ""),
             "|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if busy else "")]
    results = {"info": info, "rows": []}
    for sname, (scene, cam) in scenes.items():
        ref = quiet.get((sname, "torch"))
        core = quiet.get((sname, "core"))
        for b in backends + (["core"] if core else []):
            r = quiet[(sname, b)]
            bwd = r.get("backward_s")
            speed = core["forward_s"] / r["forward_s"] if core and b != "core" else None
            diff = float((r["image"][..., :3] - ref["image"]).abs().max()) if ref is not None and b != "core" else None
            row = {"scene": sname, "gaussians": len(scene), "size": [cam.width, cam.height], "backend": b,
                   "forward_s": r["forward_s"], "forward_with_grad_s": r.get("forward_with_grad_s"), "backward_s": bwd,
                   "backward_over_forward": bwd / r["forward_s"] if bwd else None, "speedup_vs_core_forward": speed,
                   "max_abs_vs_torch": diff, "peak_mem_fwd_MiB": r.get("peak_mem_fwd_MiB"),
                   "peak_mem_fwd_bwd_MiB": r.get("peak_mem_fwd_bwd_MiB")}
            if busy:
                rb = busy[(sname, b)]
                row["busy_forward_ratio"] = rb["forward_s"] / r["forward_s"]
                row["busy_backward_ratio"] = rb["backward_s"] / bwd if bwd else None
            results["rows"].append(row)
            lines.append(
                f"| {sname} | {len(scene):,} | {cam.width}x{cam.height} | {b} | {fmt(r['forward_s'])} | "
                f"{fmt(r.get('forward_with_grad_s'))} | {fmt(bwd)} | "
                f"{fmt(row['backward_over_forward'], '.2f')} | {fmt(speed, '.2f')} | {fmt(diff, '.1e')} | "
                f"{fmt(row['peak_mem_fwd_MiB'], '.0f')} / {fmt(row['peak_mem_fwd_bwd_MiB'], '.0f')} |"
                + (f" {fmt(row['busy_forward_ratio'], '.2f')} | {fmt(row.get('busy_backward_ratio'), '.2f')} |"
                   if busy else ""))
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
