"""``python -m vscene_engine`` commands. Entry point: :func:`main` (returns an exit code).

render       PLY scene + cameras (any format camera_formats reads) -> one PNG per camera, named after the camera.
prior        two photos (+ optional cameras) -> cameras.json, trajectory.json, prior.ply, coarse.mp4.
reconstruct  frames (video or image folder) + trajectory.json [+ init PLY] -> scene.ply, renders.mp4, report.json.
leap         VideoScene's one-step student on a coarse video: CogVideoX I2V folder + weights + prompt embedding ->
             video.mp4 (optionally also the multi-step teacher: teacher.mp4).
distill      leap-flow consistency distillation (VideoScene Algorithm 1) of a CogVideoX I2V teacher into a student;
             runs under torchrun (DDP); see ``python -m vscene_engine distill --help``.
train-ddpnet train DDPNet (the timestep policy) as a contextual bandit against a frozen student.
replicate    miniature replication of the paper's tables on synthetic scenes (CPU, <= 60 min; --smoke for CI).
tiny-model   write a tiny random CogVideoX I2V model in the real folder layout (tests, demos, CPU workflows).
demo         the whole path on a scene the engine makes itself (no downloads, no data): see :mod:`vscene_engine.tools.demo`.
convert-mvsplat  MVSplat/Lightning .ckpt -> .safetensors, read without running pickled code (:mod:`.safe_ckpt`).

Errors in the user's input print one clear line (``error: ...``) and exit with code 2; nothing partial is written.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

from ..core.runtime import TqdmProgress


def _safe_name(name: str, i: int) -> str:
    stem = Path(str(name)).name  # drop folders such as "./train/"
    stem = re.sub(r"\.(png|jpe?g|webp|exr)$", "", stem, flags=re.I)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")
    return stem or f"cam_{i:04d}"


def cmd_render(args) -> int:
    import torch

    from ..io.camera_formats import load_cameras
    from ..io.images import save_image
    from ..io.ply import read_ply
    from ..render.rasterize import render

    scene = read_ply(args.ply)
    select = [s for s in args.select.split(",") if s] if args.select else None
    cams = load_cameras(args.cameras, select=select)
    if args.max_size:
        s = args.max_size / max(cams.width, cams.height)
        if s < 1:
            cams = cams.resized(max(1, round(cams.width * s)), max(1, round(cams.height * s)))
    names = cams.names or [f"cam_{i:04d}" for i in range(len(cams))]
    files = [_safe_name(n, i) + ".png" for i, n in enumerate(names)]
    if len(set(files)) != len(files):
        files = [f"{i:04d}_{f}" for i, f in enumerate(files)]
    device = torch.device(args.device)
    scene = scene.to(device=device)
    bg = [float(v) for v in args.background.split(",")]
    out_dir = Path(args.out)
    # render everything first so a failure leaves no partial output set
    images = []
    for i in range(len(cams)):
        res = render(scene, cams[i].to(device=device, dtype=scene.means.dtype), background=bg, backend=args.backend)
        images.append(res.rgb[0].cpu())
        print(f"[{i + 1}/{len(cams)}] {files[i]}", file=sys.stderr)
    out_dir.mkdir(parents=True, exist_ok=True)
    for img, f in zip(images, files):
        save_image(img, out_dir / f)
    print(f"wrote {len(files)} images to {out_dir}")
    return 0


def _pick_cameras(cams_source, path_a: Path, path_b: Path):
    """Cameras of the two photos from a camera file: by file name when the format names its cameras (transforms.json,
    LLFF, COLMAP ...), else the first two in order."""
    from ..io.camera_formats import load_cameras

    cams = load_cameras(cams_source)
    if cams.names:
        def find(p: Path) -> int:
            stem = p.stem
            hits = [i for i, n in enumerate(cams.names) if Path(str(n)).stem == stem or Path(str(n)).name == p.name]
            if not hits:
                raise ValueError(f"no camera named like {p.name!r} in {cams_source} (names: "
                                 f"{', '.join(map(str, cams.names[:8]))}{' ...' if len(cams.names) > 8 else ''})")
            return hits[0]

        if len(cams) == 2 and not any(Path(str(n)).stem in (path_a.stem, path_b.stem) for n in cams.names):
            return cams
        return cams[[find(path_a), find(path_b)]]
    if len(cams) < 2:
        raise ValueError(f"{cams_source} holds {len(cams)} camera(s); two are needed")
    return cams[[0, 1]]


def _placeholder_cameras(img_a, fov_deg: float):
    """Stand-in cameras for photo A's size, used only to build the view pair when the prior (NoPoSplat) finds the
    real poses itself."""
    from ..views.pair import placeholder_cameras

    return placeholder_cameras(int(img_a.shape[-2]), int(img_a.shape[-3]), fov_deg)


def exif_fov_prior(path_a: Path, path_b: Path):
    """Focal prior ``(fov_deg, "diagonal", "exif")`` from the photos' EXIF 35 mm-equivalent focal lengths, or
    ``None`` when either photo has none or they differ by more than 2% (zoomed between the shots: no shared focal)."""
    from ..views.pose import exif_focal_35mm, fov_from_35mm

    fa, fb = exif_focal_35mm(path_a), exif_focal_35mm(path_b)
    if fa is None or fb is None or abs(fa / fb - 1.0) > 0.02:
        return None
    return (fov_from_35mm(0.5 * (fa + fb)), "diagonal", "exif")


def cmd_prior(args) -> int:
    from ..core.atomic import atomic_write_bytes
    from ..io.camera_formats import save_cameras
    from ..io.images import load_image
    from ..pipeline import coarse_video, make_path
    from ..io.ply import write_ply
    from ..prior.coarse import PriorConfig
    from ..prior.stereo import StereoConfig
    from ..io.video_files import write_video
    from ..views.pair import make_view_pair

    a, b = Path(args.image_a), Path(args.image_b)
    img_a, img_b = load_image(a, keep_alpha=True), load_image(b, keep_alpha=True)
    cams = _pick_cameras(args.cameras, a, b) if args.cameras else None
    nops = getattr(args, "noposplat", None)
    prior = None
    if nops and cams is None:
        # NoPoSplat finds the poses itself: no feature matching (K from --fov, else the demo's default below)
        cams = _placeholder_cameras(img_a, args.fov or 60.0)
    fov_prior = None if cams is not None or args.fov else exif_fov_prior(a, b)
    views = make_view_pair(img_a, img_b, cams, fov_deg=args.fov, size=args.size, resize=args.resize,
                           fov_prior=fov_prior)
    if cams is None:
        p = views.provenance
        print(f"focal length: {p['focal_source']} ({p['fov_deg']:.1f} deg horizontal FOV, confidence "
              f"{p['focal_confidence']:.2f}): {p['pose'].get('focal_reason', '')}")
    if nops:
        import dataclasses

        from ..prior.coarse import coarse_prior

        cfg = PriorConfig(method="noposplat", noposplat_intrinsics="cameras" if (args.cameras or args.fov) else
                          "default", noposplat_refine_steps=args.noposplat_refine_steps)
        prior = coarse_prior(views.images, views.cameras, cfg, noposplat=nops, progress=TqdmProgress("NoPoSplat"))
        c = prior.cameras
        views = dataclasses.replace(views, cameras=c, near=float(c.near.min()), far=float(c.far.max()), scale=1.0,
                                    provenance=dict(views.provenance, cameras="noposplat", noposplat=prior.info))
    path = make_path(views, frames=args.frames, kind=args.path, easing=args.easing)
    bg = [float(v) for v in args.background.split(",")]
    cfg = PriorConfig(stereo=StereoConfig(num_depths=args.num_depths))
    res = coarse_video(views, path, background=bg, config=cfg, progress=TqdmProgress("coarse video"), prior=prior)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    save_cameras(views.cameras, out / "cameras.json")
    save_cameras(path, out / "trajectory.json")
    write_ply(res.scene, out / "prior.ply")
    write_video(res.frames, out / "coarse.mp4", fps=args.fps)
    import json

    info = {"views": {"near": views.near, "far": views.far, "scale": views.scale, **views.provenance},
            "gaussians": len(res.scene), "frames": len(path), "mean_coverage": float(res.coverage.mean())}
    atomic_write_bytes(out / "prior_report.json", json.dumps(info, indent=1, default=str).encode())
    print(f"wrote {out}/cameras.json, trajectory.json, prior.ply ({len(res.scene)} Gaussians), coarse.mp4 "
          f"({len(path)} frames), prior_report.json")
    return 0


def cmd_reconstruct(args) -> int:
    import json

    from ..core.atomic import atomic_write_bytes
    from ..io.camera_formats import load_cameras
    from ..io.images import resize_image
    from ..pipeline import reconstruct
    from ..io.ply import read_ply, write_ply
    from ..io.video_files import read_frames, write_video

    frames = read_frames(args.frames)
    path = load_cameras(args.trajectory)
    if (frames.shape[2], frames.shape[1]) != (path.width, path.height):
        # codecs may pad odd sizes: crop back, or resize when only the scale differs
        if frames.shape[2] >= path.width and frames.shape[1] >= path.height and \
                frames.shape[2] - path.width <= 1 and frames.shape[1] - path.height <= 1:
            frames = frames[:, : path.height, : path.width]
        else:
            frames = resize_image(frames, path.width, path.height)
    init = read_ply(args.init) if args.init else None
    bg = [float(v) for v in args.background.split(",")]
    res = reconstruct(frames, path, None, init, iters=args.iters, densify=not args.no_densify, background=bg,
                      seed=args.seed, progress=TqdmProgress("reconstruct"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    write_ply(res.scene, out / "scene.ply")
    write_video(res.renders, out / "renders.mp4", fps=args.fps)
    vals = list(res.psnr_per_view.values())
    rep = {"mean_psnr": sum(vals) / len(vals), "per_view_psnr": res.psnr_per_view, "gaussians": len(res.scene),
           "iterations": args.iters}
    atomic_write_bytes(out / "report.json", json.dumps(rep, indent=1).encode())
    print(f"wrote {out}/scene.ply ({len(res.scene)} Gaussians), renders.mp4, report.json "
          f"(mean PSNR {rep['mean_psnr']:.2f} dB)")
    return 0


def cmd_leap(args) -> int:
    import json

    from ..core.atomic import atomic_write_bytes
    from ..video.loading import load_video_model
    from ..io.images import load_image
    from ..video.leap import leap_sample, teacher_sample
    from ..io.video_files import read_frames, write_video
    from ..video.model import DevicePlacer, StreamingPlacer

    video = read_frames(args.video)
    img_a, img_b = load_image(args.image_a), load_image(args.image_b)
    device = args.device
    placer = {"default": DevicePlacer(device), "offload": DevicePlacer(device, offload_to="cpu"),
              "sequential": StreamingPlacer(device, offload_to="cpu")}[args.memory]
    model = load_video_model(args.model, weights=args.weights, prompt_embeds=args.prompt_embeds,
                             prompt=args.prompt, negative_prompt_embeds=args.negative_prompt_embeds,
                             device=device, dtype=args.dtype, placer=placer)
    model.check_frames(video.shape[0])
    print(f"loaded {args.model} ({model.n_params / 1e6:.1f}M parameters, {str(model.dtype).replace('torch.', '')})"
          + (f"; weights: {model.report['weights']['summary']}" if model.report.get("weights") else ""),
          file=sys.stderr)
    res = leap_sample(model, img_a, img_b, video, timestep=args.t, seed=args.seed, steps=args.steps,
                      aspect=args.aspect, vae_tiling=args.vae_tiling, progress=TqdmProgress("leap"))
    results = {"video.mp4": res}
    if args.teacher_steps:
        results["teacher.mp4"] = teacher_sample(
            model, img_a, img_b, video, steps=args.teacher_steps, guidance=args.guidance, seed=args.seed,
            init=args.teacher_init, start_timestep=args.t if args.teacher_init == "video" else None,
            aspect=args.aspect, vae_tiling=args.vae_tiling, progress=TqdmProgress("teacher"))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = {}
    for name, r in results.items():
        write_video(r.frames, out / name, fps=args.fps)
        info[name] = {"timesteps": r.timesteps, **r.info}
    info["model"] = {"base": str(args.model), "dtype": str(model.dtype), **model.report}
    atomic_write_bytes(out / "leap_report.json", json.dumps(info, indent=1, default=str).encode())
    print(f"wrote {', '.join(str(out / n) for n in results)} and leap_report.json "
          f"({res.frames.shape[0]} frames, {res.frames.shape[2]}x{res.frames.shape[1]})")
    return 0


def cmd_train_ddpnet(args) -> int:
    import os

    from ..video.loading import load_video_model
    from ..policy.ddpnet import train_from_folder

    rank0 = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 reports
    device = args.device
    if device == "cuda" and "LOCAL_RANK" in os.environ:
        device = f"cuda:{int(os.environ['LOCAL_RANK'])}"
    model = load_video_model(args.model, weights=args.weights, prompt_embeds=args.prompt_embeds,
                             device=device, dtype=args.dtype)
    res = train_from_folder(args.data, args.out, model=model, steps=args.steps, lr=args.lr, batch=args.batch,
                            grad_accum=args.grad_accum, explore=args.explore, seed=args.seed, n_bins=args.bins,
                            t_min=args.t_min, t_max=args.t_max, checkpoint=args.checkpoint,
                            progress=TqdmProgress(enabled=rank0))
    if rank0:
        print(f"wrote {res['path']} ({res['n_samples']} samples, bins {res['bins']}, "
              f"{res['transformer_calls']} student calls)")
    return 0


def cmd_tiny_model(args) -> int:
    from .tiny_model import install_tiny_model, write_tiny_model

    if bool(args.out) == bool(args.models_dir):
        raise ValueError("give exactly one of --out DIR or --models-dir DIR")
    kw = dict(frames=args.frames, height=args.height, width=args.width, seed=args.seed)
    paths = (write_tiny_model(args.out, **kw) if args.out else
             install_tiny_model(args.models_dir, name=args.name, **kw))
    for k, v in paths.items():
        print(f"{k}: {v}")
    return 0




def _cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:  # pragma: no cover
        return False


def build_parser() -> argparse.ArgumentParser:
    from ..video.schedule import REFERENCE_TIMESTEP

    p = argparse.ArgumentParser(prog="python -m vscene_engine", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("render", help="render a 3DGS PLY at given cameras to PNGs")
    r.add_argument("--ply", required=True, help="INRIA-layout 3DGS .ply (ours, ComfyUI's, or other 3DGS tools')")
    r.add_argument("--cameras", required=True,
                   help="cameras: transforms.json, poses_bounds.npy, COLMAP sparse folder, RealEstate10K .txt, "
                        "LOAD3D_CAMERA json, or our vscene cameras json")
    r.add_argument("--out", required=True, help="output folder (one PNG per camera, named after the camera)")
    r.add_argument("--select", default="", help="comma-separated camera/frame names to render (e.g. r_0,r_5)")
    r.add_argument("--max-size", type=int, default=0, help="downscale so the longer image side is at most N px")
    r.add_argument("--background", default="0,0,0", help="background RGB in 0..1, e.g. 1,1,1")
    r.add_argument("--backend", default="auto", choices=["auto", "torch", "gsplat"])
    r.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda")
    r.set_defaults(func=cmd_render)

    pr = sub.add_parser("prior", help="two photos -> cameras, coarse 3DGS prior and its camera-path video")
    pr.add_argument("--image-a", required=True, help="first photo (start of the path)")
    pr.add_argument("--image-b", required=True, help="second photo (end of the path)")
    pr.add_argument("--cameras", default=None,
                    help="camera file/folder (transforms.json, poses_bounds.npy, COLMAP, vscene json ...); the two "
                         "cameras are picked by the photos' file names. Absent: estimated from the photos.")
    pr.add_argument("--frames", type=int, default=49, help="frames of the camera path (default 49)")
    pr.add_argument("--path", default="interpolate", choices=["interpolate", "se3", "orbit"])
    pr.add_argument("--easing", default="cosine", choices=["cosine", "linear"])
    pr.add_argument("--size", type=int, default=512, help="longer side of the working images (default 512)")
    pr.add_argument("--fov", type=float, default=None,
                    help="horizontal FOV (deg) of the photos when --cameras is absent; default: auto (EXIF focal "
                         "when both photos have it, else self-calibrated from the pair, else 60 deg)")
    pr.add_argument("--resize", default="crop", choices=["crop", "pad", "stretch"])
    pr.add_argument("--num-depths", type=int, default=64, help="depth planes of the stereo sweep")
    pr.add_argument("--noposplat", default=None, metavar="WEIGHTS",
                    help="use the pose-free NoPoSplat prior with these weights (release .ckpt or .safetensors): it "
                         "finds the cameras itself (no feature matching); intrinsics from --cameras if given, else "
                         "the demo's fx = fy = 0.8")
    pr.add_argument("--noposplat-refine-steps", type=int, default=0,
                    help="photometric refinement steps of camera B after PnP (release: 200; 0 = PnP only)")
    pr.add_argument("--background", default="0,0,0")
    pr.add_argument("--fps", type=float, default=8.0)
    pr.add_argument("--out", required=True)
    pr.set_defaults(func=cmd_prior)

    rc = sub.add_parser("reconstruct", help="fit a 3DGS scene to frames with known cameras")
    rc.add_argument("--frames", required=True, help="video file or folder of frames (sorted by name)")
    rc.add_argument("--trajectory", required=True, help="trajectory.json written by 'prior' (one camera per frame)")
    rc.add_argument("--init", default=None, help="initial scene (e.g. prior.ply); random when absent")
    rc.add_argument("--iters", type=int, default=600)
    rc.add_argument("--no-densify", action="store_true")
    rc.add_argument("--background", default="0,0,0")
    rc.add_argument("--seed", type=int, default=0)
    rc.add_argument("--fps", type=float, default=8.0)
    rc.add_argument("--out", required=True)
    rc.set_defaults(func=cmd_reconstruct)

    lp = sub.add_parser("leap", help="VideoScene one-step student: coarse video + two views -> video.mp4")
    lp.add_argument("--model", required=True, help="CogVideoX image-to-video diffusers folder (transformer/, vae/, "
                                                   "scheduler/), e.g. models/CogVideo/CogvideoX-Interpolation")
    lp.add_argument("--weights", default=None, help="VideoScene student weights (model.safetensors); absent: the "
                                                    "base model as is")
    lp.add_argument("--prompt-embeds", default=None, help="fixed prompt embedding (prompt_embeds.pt)")
    lp.add_argument("--prompt", default=None, help="prompt (only without --prompt-embeds; needs the folder's T5)")
    lp.add_argument("--negative-prompt-embeds", default=None, help="negative embedding (teacher CFG)")
    lp.add_argument("--image-a", required=True, help="first view (first frame condition)")
    lp.add_argument("--image-b", required=True, help="second view (last frame condition)")
    lp.add_argument("--video", required=True, help="coarse video rendered along the path (e.g. prior's coarse.mp4; "
                                                   "49 frames for CogVideoX-5B) or a folder of frames")
    lp.add_argument("--t", type=int, default=REFERENCE_TIMESTEP,
                    help=f"leap timestep (VideoScene: {REFERENCE_TIMESTEP}; its demo: 459)")
    lp.add_argument("--seed", type=int, default=0)
    lp.add_argument("--steps", type=int, default=1, help="student steps (1 = VideoScene)")
    lp.add_argument("--teacher-steps", type=int, default=0, help="also run the DDIM teacher with N steps")
    lp.add_argument("--teacher-init", default="noise", choices=["noise", "video"])
    lp.add_argument("--guidance", type=float, default=1.0, help="teacher CFG scale (>1 needs a negative embedding)")
    lp.add_argument("--aspect", default="stretch", choices=["stretch", "crop", "pad"])
    lp.add_argument("--device", default="cuda" if _cuda() else "cpu")
    lp.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32", "fp16"])
    lp.add_argument("--memory", default="default", choices=["default", "offload", "sequential"])
    lp.add_argument("--vae-tiling", action="store_true")
    lp.add_argument("--fps", type=float, default=8.0)
    lp.add_argument("--out", required=True, help="output folder: video.mp4 (+ teacher.mp4), leap_report.json")
    lp.set_defaults(func=cmd_leap)

    sub.add_parser("distill", add_help=False,
                   help="VideoScene Algorithm 1 distillation (own options: python -m vscene_engine distill --help)")

    td = sub.add_parser("train-ddpnet", help="train DDPNet (timestep policy) against a frozen student (also under "
                                             "torchrun --nproc_per_node N -m vscene_engine train-ddpnet ...)")
    td.add_argument("--model", required=True, help="CogVideoX I2V diffusers folder")
    td.add_argument("--weights", default=None, help="the student's weights (model.safetensors)")
    td.add_argument("--prompt-embeds", required=True)
    td.add_argument("--data", required=True, help="folder of *.safetensors samples with render_latents, gt_latents, "
                                                  "image_latents [1,T,C,h,w]")
    td.add_argument("--out", required=True, help="DDPNet weights to write (.safetensors)")
    td.add_argument("--steps", type=int, default=300)
    td.add_argument("--lr", type=float, default=1e-3)
    td.add_argument("--batch", type=int, default=4, help="samples per step per process")
    td.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step (global batch = processes x "
                                                               "batch x grad-accum)")
    td.add_argument("--explore", default="sample", choices=["sample", "egreedy"])
    td.add_argument("--bins", type=int, default=10)
    td.add_argument("--t-min", type=int, default=100)
    td.add_argument("--t-max", type=int, default=900)
    td.add_argument("--seed", type=int, default=0)
    td.add_argument("--checkpoint", default=None, help="resumable training checkpoint (.safetensors)")
    td.add_argument("--device", default="cuda" if _cuda() else "cpu")
    td.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32", "fp16"])
    td.set_defaults(func=cmd_train_ddpnet)

    tm = sub.add_parser("tiny-model", help="write a tiny random CogVideoX I2V model in the real folder layout")
    tm.add_argument("--out", default=None, help="folder to create (diffusers layout + videoscene/ weights)")
    tm.add_argument("--models-dir", default=None, help="or: a ComfyUI models folder; writes CogVideo/<name>/ and "
                                                       "videoscene/<name>/ (model.safetensors, prompt_embeds.pt)")
    tm.add_argument("--name", default="tiny-cogvideox-i2v")
    tm.add_argument("--frames", type=int, default=49)
    tm.add_argument("--height", type=int, default=64)
    tm.add_argument("--width", type=int, default=96)
    tm.add_argument("--seed", type=int, default=0)
    tm.set_defaults(func=cmd_tiny_model)

    from . import demo
    from . import replicate
    from ..io import checkpoints as safe_ckpt

    demo.add_parser(sub)
    replicate.add_parser(sub)
    safe_ckpt.add_parser(sub)
    return p


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "distill":  # own parser (also runnable as python -m vscene_engine.train.distill under torchrun)
        from ..train.distill import main as distill_main

        return distill_main(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # a file the user named cannot be read or written (permissions, a folder, a full disk)
        if e.filename is None:
            raise
        print(f"error: {e.filename}: {e.strerror or e}", file=sys.stderr)
        return 2
