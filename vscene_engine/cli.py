"""``python -m vscene_engine`` commands. Entry point: :func:`main` (returns an exit code).

render  PLY scene + cameras (any format camera_formats reads) -> one PNG per camera, named after the camera.
demo    the engine on a scene it makes itself (no downloads, no data): see :mod:`vscene_engine.demo`.

Errors in the user's input print one clear line (``error: ...``) and exit with code 2; nothing partial is written.
"""
from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path


def _safe_name(name: str, i: int) -> str:
    stem = Path(str(name)).name  # drop folders such as "./train/"
    stem = re.sub(r"\.(png|jpe?g|webp|exr)$", "", stem, flags=re.I)
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem).strip("._")
    return stem or f"cam_{i:04d}"


def cmd_render(args) -> int:
    import torch

    from .camera_formats import load_cameras
    from .imageio import save_image
    from .ply import read_ply
    from .rasterize import render

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


def build_parser() -> argparse.ArgumentParser:
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

    from . import demo

    demo.add_parser(sub)
    return p


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
