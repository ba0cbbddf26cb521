"""``python -m vscene_engine demo [--out DIR]``: the engine end to end on a scene it makes itself.

No downloads and no data set: :func:`vscene_engine.synthetic.procedural_scene` is the ground truth.
1. two "photo" cameras and VideoScene's 49-frame interpolated camera path between them (cosine easing);
2. render the ground-truth scene along the path (exact pure-torch rasterizer) -> DIR/frames/frame_XXXX.png;
3. fit a new Gaussian scene from random initialisation to every 4th frame (L1 + D-SSIM, Adam);
4. evaluate the fitted scene on the frames it never saw (PSNR/SSIM) -> DIR/report.json;
5. write DIR/scene_truth.ply, DIR/scene.ply (3DGS PLY, loads in ComfyUI's Preview Splat) and DIR/compare.png.
Everything is written only after all computation succeeded (atomic files).
"""
from __future__ import annotations

import json
import time
from pathlib import Path


def add_parser(sub) -> None:
    d = sub.add_parser("demo", help="run the engine on a scene it generates itself (no data needed)")
    d.add_argument("--out", default="demo_out", help="output folder (default: ./demo_out)")
    d.add_argument("--frames", type=int, default=49, help="frames of the camera path (default 49, as VideoScene)")
    d.add_argument("--width", type=int, default=192)
    d.add_argument("--height", type=int, default=144)
    d.add_argument("--fit-iters", type=int, default=500, help="optimisation steps of the fit (default 500)")
    d.add_argument("--fit-scale", type=float, default=0.5, help="fit/eval resolution relative to the frames")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=run)


def run(args) -> int:
    import torch

    from .imageio import atomic_write, resize_image, save_image
    from .losses import psnr, ssim
    from .optimize import fit_scene
    from .ply import write_ply
    from .rasterize import render
    from .synthetic import demo_cameras, procedural_scene
    from .trajectories import make_trajectory

    try:
        from tqdm import tqdm
    except ImportError:  # pragma: no cover
        tqdm = None

    if args.frames < 2:
        raise ValueError("--frames must be at least 2 (a camera path needs two ends)")
    torch.manual_seed(args.seed)
    out = Path(args.out)
    timings = {}
    t0 = time.perf_counter()
    truth = procedural_scene(seed=args.seed)
    views = demo_cameras(args.width, args.height)
    path = make_trajectory("interpolate", views, frames=args.frames)
    timings["scene_s"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    frames = []
    it = range(len(path))
    bar = tqdm(it, desc="render path", unit="frame") if tqdm else it
    for i in bar:
        frames.append(render(truth, path[i], background=(1.0, 1.0, 1.0)).rgb[0])
    frames = torch.stack(frames)
    timings["render_s"] = time.perf_counter() - t0
    timings["render_s_per_frame"] = timings["render_s"] / len(path)

    # fit from random init on every 4th frame (always incl. both ends), evaluate on the rest
    train_idx = sorted(set(range(0, len(path), 4)) | {len(path) - 1})
    test_idx = [i for i in range(len(path)) if i not in train_idx]
    fw, fh = max(8, round(args.width * args.fit_scale)), max(8, round(args.height * args.fit_scale))
    small = resize_image(frames, fw, fh)
    cams_small = path.resized(fw, fh)
    t0 = time.perf_counter()
    pbar = tqdm(total=args.fit_iters, desc="fit scene", unit="it") if tqdm else None

    def progress(i, loss, preview=None):
        if pbar is not None:
            pbar.update(1)
            pbar.set_postfix(loss=f"{loss:.4f}")

    fit = fit_scene(small[train_idx], cams_small[train_idx], n_init=12000, iters=args.fit_iters,
                    background=(1.0, 1.0, 1.0), sh_degree=1, sh_every=max(1, args.fit_iters // 2), seed=args.seed,
                    progress=progress)
    if pbar is not None:
        pbar.close()
    timings["fit_s"] = time.perf_counter() - t0

    with torch.no_grad():
        pred = render(fit.scene, cams_small[test_idx], background=(1.0, 1.0, 1.0)).rgb
        gt = small[test_idx]
        p = [float(psnr(pred[i : i + 1], gt[i : i + 1])) for i in range(len(test_idx))]
        s = [float(ssim(pred[i : i + 1], gt[i : i + 1])) for i in range(len(test_idx))]
    report = {
        "what": "procedural scene -> 49-frame path render -> fit from random init on every 4th frame -> held-out eval",
        "frames": len(path), "frame_size": [args.width, args.height], "fit_size": [fw, fh],
        "train_frames": train_idx, "heldout_frames": test_idx,
        "gaussians_truth": len(truth), "gaussians_fit": len(fit.scene),
        "heldout_psnr_mean": sum(p) / len(p), "heldout_ssim_mean": sum(s) / len(s),
        "heldout_psnr": p, "heldout_ssim": s, "timings": timings, "seed": args.seed,
    }
    # write only now, when everything succeeded
    out.mkdir(parents=True, exist_ok=True)
    for i, f in enumerate(frames):
        save_image(f, out / "frames" / f"frame_{i:04d}.png")
    write_ply(truth, out / "scene_truth.ply")
    write_ply(fit.scene, out / "scene.ply")
    k = [test_idx[len(test_idx) // 4], test_idx[len(test_idx) // 2], test_idx[3 * len(test_idx) // 4]]
    strip = torch.cat([torch.cat([small[i], pred[test_idx.index(i)]], 0) for i in k], 1)
    save_image(strip, out / "compare.png")
    atomic_write(out / "report.json", lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2)))
    print(json.dumps({k: report[k] for k in ("heldout_psnr_mean", "heldout_ssim_mean", "gaussians_fit")}))
    print(f"wrote {out}/frames/*.png, scene_truth.ply, scene.ply, compare.png, report.json")
    return 0
