"""Rasterizer benchmark: forward / backward time per 256x256 frame for 131,072 Gaussians.

Scene: MVSplat-shaped output — one Gaussian per pixel of two 256x256 depth maps. The depth maps and colours are
rendered by the engine from its own procedural scene (vscene_engine.synthetic) at the two "photo" cameras; each pixel
becomes a Gaussian on its ray at its depth with the pixel footprint as scale (depth_to_gaussians). The frame is rendered
from the middle of VideoScene's 49-frame camera path between the two views.

    python benchmarks/bench_rasterize.py [--repeats 5] [--device cpu|cuda] [--tile 8] [--out results.json]
    python benchmarks/bench_rasterize.py --comfyui /path/to/ComfyUI   # + core RenderSplat, same scene & camera

The --comfyui variant must run in a Python environment where that ComfyUI's own requirements are installed.
Report ratios from one run on CPU (the machine is shared); absolute times only on a GPU machine.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vscene_engine.gaussians import GaussianScene  # noqa: E402
from vscene_engine.rasterize import render  # noqa: E402
from vscene_engine.synthetic import demo_cameras, depth_to_gaussians, procedural_scene  # noqa: E402
from vscene_engine.trajectories import make_trajectory  # noqa: E402


def build_scene(size: int = 256, seed: int = 0):
    """131,072 Gaussians (2 x size^2) and the middle camera of the path; float32."""
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
    scene = GaussianScene.cat(parts)
    cam = make_trajectory("interpolate", views, frames=49)[24]
    return scene, cam


def timeit(fn, repeats):
    fn()  # warm-up
    ts = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return ts


def camera_info_for_core(cam):
    """Our OpenCV camera -> a LOAD3D_CAMERA dict that core RenderSplat projects identically (fx = fy, centred)."""
    c2w = cam.c2w[0].double()
    M = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64))
    R3 = M @ c2w[:3, :3] @ M
    pos = M @ c2w[:3, 3]
    from vscene_engine.gaussians import rotmat_to_quat

    q = rotmat_to_quat(R3)
    tgt = pos - R3[:, 2]
    fov = math.degrees(2 * math.atan(min(cam.width, cam.height) / 2 / float(cam.K[0, 0, 0])))
    xyz = lambda v: {"x": float(v[0]), "y": float(v[1]), "z": float(v[2])}  # noqa: E731
    return {"position": xyz(pos), "target": xyz(tgt), "zoom": 1.0, "cameraType": "perspective", "fov": fov,
            "quaternion": {"x": float(q[1]), "y": float(q[2]), "z": float(q[3]), "w": float(q[0])}}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tile", type=int, default=None, help="torch backend tile size (default: render()'s)")
    ap.add_argument("--backends", default="torch", help="comma list: torch,gsplat (gsplat needs CUDA)")
    ap.add_argument("--comfyui", default=None, help="path to a ComfyUI checkout: also time core RenderSplat")
    ap.add_argument("--save-images", default=None, help="folder to write the rendered frames (PNG)")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)

    torch.manual_seed(0)
    if args.threads:
        torch.set_num_threads(args.threads)
    dev = torch.device(args.device)
    scene, cam = build_scene()
    scene, cam = scene.to(device=dev), cam.to(device=dev, dtype=torch.float32)
    res = {"gaussians": len(scene), "size": [cam.width, cam.height], "device": str(dev),
           "threads": torch.get_num_threads(), "torch": torch.__version__, "repeats": args.repeats}
    kw = {} if args.tile is None else {"tile": args.tile}
    sync = (lambda: torch.cuda.synchronize(dev)) if dev.type == "cuda" else (lambda: None)
    images = {}
    for backend in [b for b in args.backends.split(",") if b]:
        def fwd():
            with torch.no_grad():
                o = render(scene, cam, backend=backend, **kw)
            sync()
            return o

        ts = timeit(fwd, args.repeats)
        images[backend] = fwd().rgb[0].float().cpu()
        params = [t.clone().requires_grad_(True) for t in (scene.means, scene.scales, scene.quats, scene.opacities,
                                                           scene.sh)]
        target = images[backend].to(dev) * 0.9

        fb_f, fb_b = [], []

        def fwd_bwd():
            t0 = time.perf_counter()
            o = render(GaussianScene(*params), cam, backend=backend, **kw)
            loss = (o.rgb[0] - target).abs().mean()
            sync()
            t1 = time.perf_counter()
            loss.backward()
            sync()
            fb_f.append(t1 - t0)
            fb_b.append(time.perf_counter() - t1)

        timeit(fwd_bwd, args.repeats)
        fb_f, fb_b = fb_f[1:], fb_b[1:]  # drop the warm-up
        res[backend] = {
            "forward_s_median": statistics.median(ts), "forward_s_min": min(ts),
            "forward_with_grad_s_median": statistics.median(fb_f), "backward_s_median": statistics.median(fb_b),
        }
        if dev.type == "cuda":
            res[backend]["peak_mem_MiB"] = torch.cuda.max_memory_allocated(dev) / 2**20
    if "torch" in images and "gsplat" in images:
        res["torch_vs_gsplat_max_abs"] = float((images["torch"] - images["gsplat"]).abs().max())

    if args.comfyui:
        sys.path.insert(0, str(Path(args.comfyui).resolve()))
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

        ts = timeit(core, args.repeats)
        images["core_rendersplat"] = core().float().cpu()
        res["core_rendersplat"] = {"forward_s_median": statistics.median(ts), "forward_s_min": min(ts)}
        res["speedup_torch_vs_core_forward"] = res["core_rendersplat"]["forward_s_median"] / res["torch"][
            "forward_s_median"]
        res["core_vs_ours_mean_abs_diff"] = float((images["core_rendersplat"] - images["torch"]).abs().mean())
    if args.save_images:
        from vscene_engine.imageio import save_image

        for k, v in images.items():
            save_image(v, Path(args.save_images) / f"bench_{k}.png")
    text = json.dumps(res, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text)


if __name__ == "__main__":
    main()
