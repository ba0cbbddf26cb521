"""``python -m vscene_engine demo [--out DIR]``: the whole weight-free path on a scene the engine makes itself.

No downloads, no data set: :func:`vscene_engine.tools.synthetic.procedural_scene` is the ground truth.
1. render two "photos" of the truth scene (two cameras ~1 unit apart);
2. estimate the cameras from the photos alone (features + essential matrix; FOV known) and compare with the truth;
3. coarse 3DGS prior (plane-sweep stereo) rendered along VideoScene's 49-frame path -> DIR/coarse.mp4;
4. reconstruct a scene from the prior video + the two photos -> DIR/scene.ply (loads in ComfyUI's Preview Splat);
5. DIR/report.json: timings, pose errors, PSNR/SSIM of the coarse and reconstructed videos against the truth
   rendered along the true path (every 2nd frame), coverage; DIR/compare.png: truth / coarse / reconstructed at three
   frames; DIR/reconstructed.mp4 (the evaluated frames).
Files are written only after everything succeeded (atomic writes).
"""
from __future__ import annotations

import json
import math
import time
from pathlib import Path


def add_parser(sub) -> None:
    d = sub.add_parser("demo", help="run the whole two-photo path on a scene the engine generates (no data needed)")
    d.add_argument("--out", default="demo_out", help="output folder (default: ./demo_out)")
    d.add_argument("--frames", type=int, default=49, help="frames of the camera path (default 49, as VideoScene)")
    d.add_argument("--width", type=int, default=256)
    d.add_argument("--height", type=int, default=192)
    d.add_argument("--recon-iters", type=int, default=100, help="reconstruction steps (default 100)")
    d.add_argument("--recon-scale", type=float, default=0.5, help="reconstruction resolution relative to frames")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(func=run)


def _angle_deg(R):
    import torch

    c = ((torch.diagonal(R, dim1=-2, dim2=-1).sum(-1) - 1) / 2).clamp(-1, 1)
    return math.degrees(float(torch.acos(c)))


def run(args) -> int:
    import torch

    from ..core.atomic import atomic_write_bytes
    from ..io.images import resize_image, save_image
    from ..render.losses import psnr, ssim
    from ..pipeline import coarse_video, make_path, reconstruct
    from ..io.ply import write_ply
    from ..render.rasterize import render
    from ..core.runtime import TqdmProgress
    from .synthetic import demo_cameras, procedural_scene
    from ..io.video_files import write_video
    from ..views.pair import ViewPair, make_view_pair

    if args.frames < 2:
        raise ValueError("--frames must be at least 2 (a camera path needs two ends)")
    torch.manual_seed(args.seed)
    white = (1.0, 1.0, 1.0)
    t_all = time.perf_counter()
    timings = {}

    # 1. truth and photos
    t0 = time.perf_counter()
    truth = procedural_scene(seed=args.seed)
    true_views = demo_cameras(args.width, args.height)
    with torch.no_grad():
        photos = render(truth, true_views, background=white).rgb.clamp(0, 1)
    timings["photos_s"] = time.perf_counter() - t0

    # 2. cameras from the photos alone
    t0 = time.perf_counter()
    fov = math.degrees(2 * math.atan(args.width / 2 / float(true_views.K[0, 0, 0])))
    views = make_view_pair(photos[0], photos[1], None, fov_deg=fov, size=max(args.width, args.height))
    timings["pose_s"] = time.perf_counter() - t0
    rel_true = true_views.w2c[1] @ true_views.c2w[0]
    rel_est = views.cameras.w2c[1].double() @ views.cameras.c2w[0].double()
    rot_err = _angle_deg(rel_true[:3, :3].double().T @ rel_est[:3, :3])
    t_t, t_e = rel_true[:3, 3].double(), rel_est[:3, 3]
    dir_err = math.degrees(math.acos(float((t_t @ t_e) / (t_t.norm() * t_e.norm())).__round__(12)))

    # 3. coarse prior video along the path (and the truth along the true path, for the metrics)
    t0 = time.perf_counter()
    path = make_path(views, frames=args.frames)
    cv = coarse_video(views, path, background=white, progress=TqdmProgress("coarse video"))
    timings["coarse_video_s"] = time.perf_counter() - t0
    true_path = make_path(ViewPair(photos, true_views, float(true_views.near[0]), float(true_views.far[0])),
                          frames=args.frames)
    eval_idx = list(range(0, len(path), 2)) + ([len(path) - 1] if (len(path) - 1) % 2 else [])
    with torch.no_grad():  # metrics on every 2nd frame (and the last): keeps the demo within ~3 minutes on 2 cores
        gt = torch.stack([render(truth, true_path[i], background=white).rgb[0].clamp(0, 1) for i in eval_idx])

    # 4. reconstruction from the coarse video + the photos (reduced resolution)
    t0 = time.perf_counter()
    rw = max(16, int(round(args.width * args.recon_scale / 8)) * 8)
    rh = max(16, int(round(args.height * args.recon_scale / 8)) * 8)
    small_views = ViewPair(resize_image(views.images, rw, rh), views.cameras.resized(rw, rh), views.near, views.far)
    rec = reconstruct(resize_image(cv.frames, rw, rh), path.resized(rw, rh), small_views, cv.scene,
                      iters=args.recon_iters, background=white, seed=args.seed,
                      progress=TqdmProgress("reconstruct"))
    timings["reconstruct_s"] = time.perf_counter() - t0
    with torch.no_grad():
        recon_frames = torch.stack([render(rec.scene, path[i], background=white).rgb[0].clamp(0, 1)
                                    for i in eval_idx])

    def metrics(pred):
        p = [float(psnr(pred[i : i + 1], gt[i : i + 1])) for i in range(len(gt))]
        s = [float(ssim(pred[i : i + 1], gt[i : i + 1])) for i in range(len(gt))]
        return {"psnr_mean": sum(p) / len(p), "ssim_mean": sum(s) / len(s), "psnr_per_frame": p}

    timings["total_s"] = time.perf_counter() - t_all
    report = {
        "what": "procedural scene -> 2 photos -> estimated cameras -> stereo prior -> 49-frame path video -> "
                "reconstruction; metrics vs the truth rendered along the true path",
        "size": [args.width, args.height], "frames": len(path),
        "pose": {"rotation_error_deg": rot_err, "translation_direction_error_deg": dir_err,
                 **{k: views.provenance["pose"][k] for k in ("n_inliers", "confidence") if k in
                    views.provenance.get("pose", {})}},
        "gaussians": {"truth": len(truth), "prior": len(cv.scene), "reconstructed": len(rec.scene)},
        "eval_frames": eval_idx,
        "coarse_video_vs_truth": metrics(cv.frames[eval_idx]), "reconstructed_video_vs_truth": metrics(recon_frames),
        "mean_coverage": float(cv.coverage.mean()), "timings": timings, "seed": args.seed,
    }
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_video(cv.frames, out / "coarse.mp4", fps=8)
    write_video(recon_frames, out / "reconstructed.mp4", fps=4)  # the evaluated frames (every 2nd)
    write_ply(rec.scene, out / "scene.ply")
    write_ply(cv.scene, out / "prior.ply")
    k = [len(eval_idx) // 4, len(eval_idx) // 2, 3 * len(eval_idx) // 4]
    strip = torch.cat([torch.cat([gt[i], cv.frames[eval_idx[i]], recon_frames[i]], 0) for i in k], 1)
    save_image(strip, out / "compare.png")
    atomic_write_bytes(out / "report.json", json.dumps(report, indent=2).encode())
    summary = {"pose_rot_err_deg": round(rot_err, 3), "pose_dir_err_deg": round(dir_err, 3),
               "coarse_psnr": round(report["coarse_video_vs_truth"]["psnr_mean"], 2),
               "reconstructed_psnr": round(report["reconstructed_video_vs_truth"]["psnr_mean"], 2),
               "total_s": round(timings["total_s"], 1)}
    print(json.dumps(summary))
    print(f"wrote {out}/coarse.mp4, reconstructed.mp4, scene.ply, prior.ply, compare.png, report.json")
    return 0
