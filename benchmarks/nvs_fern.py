"""Two-photo novel-view synthesis on LLFF "fern": the stereo prior vs. a plain 2-view fit, on 18 held-out photos.

Usage (from the repository root)::

    python benchmarks/nvs_fern.py [--width 252] [--iters 300] [--variants a,b,c] [--out FILE.json]

Data: ``../shared/data/llff_fern`` (``poses_bounds.npy`` + ``images_8/*.png``, 504x378). When it is absent the script
prints a "skipped" line and exits with code 0.

Protocol:

* Cameras: :func:`vscene_engine.io.camera_formats.load_cameras` on ``poses_bounds.npy`` (names = image stems of
  ``images_8``, intrinsics scaled from the stored full-resolution ``h, w, f`` to the 504x378 images, near/far from the
  file's per-image bounds), then ``Cameras.resized`` to the working size (``--width``, height keeps the aspect).
  Images are area (box) downsampled to the same size.
* Inputs: the first and the last image (sorted by name) with their TRUE cameras. Held out: the other 18.
* Variants, every one evaluated by rendering at the 18 held-out cameras (background black) against the photos,
  PSNR and SSIM (3DGS SSIM: 11x11 Gaussian window, zero "same" padding) averaged over the views:

  - ``a``:  the coarse prior (:func:`vscene_engine.prior.coarse.coarse_prior`, stereo, default settings: pixels rejected by
    the stereo checks get a filled-in depth);
  - ``a0``: the same with ``fill_holes=False`` (rejected pixels dropped: novel views have holes);
  - ``b``:  prior + reconstruction: :func:`vscene_engine.recon.fit.fit_scene` initialised from the prior scene, on
    the 49-frame camera path between the inputs (``make_trajectory("interpolate", inputs, 49)``) rendered from the
    prior, plus the two real photos repeated ``--input-weight`` times;
  - ``b0``: as ``b`` but from the ``fill_holes=False`` prior (its frames and its scene);
  - ``c``:  baseline: ``fit_scene`` from a random initialisation on the two input photos alone;
  - ``d``:  ``fit_scene`` initialised from the prior on the two input photos alone (isolates the initialisation).

  ``b``/``b0``/``c``/``d`` use the same iterations, learning rates, SH degree and densification schedule.
* Output: a table on stdout and a JSON report (``--out``) with per-view numbers, timings and the exact command.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from vscene_engine.io.camera_formats import load_cameras  # noqa: E402
from vscene_engine.core.cameras import Cameras  # noqa: E402
from vscene_engine.render.losses import psnr, ssim  # noqa: E402
from vscene_engine.recon.fit import DEFAULT_DENSIFY, FitConfig, fit_scene  # noqa: E402
from vscene_engine.prior.coarse import PriorConfig, coarse_prior, render_trajectory  # noqa: E402
from vscene_engine.core.runtime import Progress  # noqa: E402
from vscene_engine.prior.stereo import StereoConfig  # noqa: E402
from vscene_engine.views.trajectories import make_trajectory  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "llff_fern"
VARIANTS = ("a", "a0", "b", "b0", "c", "d")
LABELS = {
    "a": "(a) stereo prior",
    "a0": "(a0) stereo prior, holes not filled",
    "b": "(b) prior + reconstruction",
    "b0": "(b0) unfilled prior + reconstruction",
    "c": "(c) random init, 2 views",
    "d": "(d) prior init, 2 views",
}


def load_fern(data: Path, width: int) -> tuple[Cameras, torch.Tensor, list[str]]:
    """All 20 cameras (resized to ``width`` x aspect) and images ``[20,H,W,3]``, sorted by image name."""
    img_dir = data / "images_8"
    files = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    cams = load_cameras(data / "poses_bounds.npy")  # names from images_8, size 504x378 from the images
    stems = [f.stem for f in files]
    if cams.names != stems:
        raise RuntimeError(f"camera names {cams.names[:3]}... do not match the image files {stems[:3]}...")
    height = int(round(width * cams.height / cams.width))
    cams = cams.resized(width, height)
    imgs = []
    for f in files:
        im = Image.open(f).convert("RGB")
        if im.size != (width, height):
            im = im.resize((width, height), Image.BOX)
        imgs.append(np.asarray(im, dtype=np.float32) / 255.0)
    return cams, torch.from_numpy(np.stack(imgs)), stems


def evaluate(scene, cams: Cameras, truth: torch.Tensor, background) -> dict:
    with torch.no_grad():
        frames, cover = render_trajectory(scene, cams, background=background)
        p = psnr(frames, truth, reduction="none")
        s = ssim(frames, truth, reduction="none")
    return {"psnr": float(p.mean()), "ssim": float(s.mean()), "coverage": float(cover.mean()),
            "psnr_per_view": [float(v) for v in p], "ssim_per_view": [float(v) for v in s], "_frames": frames}


def save_strip(rows: list[torch.Tensor], path: Path) -> None:
    img = torch.cat([torch.cat(list(r), 1) for r in rows], 0)
    Image.fromarray((img.clamp(0, 1) * 255 + 0.5).byte().numpy()).save(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--width", type=int, default=252, help="working width (height keeps the 4:3 aspect); default 252")
    ap.add_argument("--iters", type=int, default=300, help="fit iterations of (b), (b0), (c) and (d)")
    ap.add_argument("--variants", default="a,a0,b,b0,c,d", help=f"comma list of {','.join(VARIANTS)}")
    ap.add_argument("--frames", type=int, default=49, help="path frames rendered from the prior for (b)")
    ap.add_argument("--input-weight", type=int, default=24,
                    help="times the 2 real photos are repeated in (b): 24 makes them ~half of the 97 training views "
                         "(6 gave 16.73 dB vs 17.33 dB held-out PSNR)")
    ap.add_argument("--n-init", type=int, default=20000, help="random Gaussians of (c)")
    ap.add_argument("--sh-degree", type=int, default=0)
    ap.add_argument("--no-densify", action="store_true")
    ap.add_argument("--max-gaussians", type=int, default=120000)
    ap.add_argument("--max-world-scale", type=float, default=None,
                    help="densify pruning of Gaussians larger than this x extent (default: off; fit_scene's 0.1 "
                         "assumes a scene about as large as the camera spread, while fern's depth is 17-80 units for "
                         "a 3.5-unit baseline, so it would prune the far prior Gaussians and the random init)")
    ap.add_argument("--scene-extent", type=float, default=None,
                    help="fit_scene scene_extent (means lr and densify thresholds); default: camera extent")
    ap.add_argument("--prior", default="{}", help="JSON dict of PriorConfig fields (\"stereo\": a dict of "
                    "StereoConfig fields)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: on a shared 2-core machine more threads spin and slow down)")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "nvs_fern.json")
    ap.add_argument("--strip", type=Path, default=None, help="optional PNG: held-out renders of every variant")
    args = ap.parse_args(argv)
    command = "python benchmarks/nvs_fern.py " + " ".join(sys.argv[1:] if argv is None else argv)

    if not ((args.data / "poses_bounds.npy").is_file() and (args.data / "images_8").is_dir()):
        print(f"skipped: LLFF fern data not found at {args.data} (expected poses_bounds.npy and images_8/)")
        return 0
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    bad = [v for v in variants if v not in VARIANTS]
    if bad:
        ap.error(f"unknown variant(s) {bad}; choose from {VARIANTS}")
    torch.set_num_threads(max(1, args.threads))
    prior_kw = json.loads(args.prior)
    prior_cfg = PriorConfig(**{k: v for k, v in prior_kw.items() if k != "stereo"},
                            stereo=StereoConfig(**prior_kw.get("stereo", {})))
    bg = (0.0, 0.0, 0.0)

    t0 = time.perf_counter()
    cams, imgs, names = load_fern(args.data, args.width)
    inp = [0, len(names) - 1]
    held = [i for i in range(len(names)) if i not in inp]
    cams_in, imgs_in = cams[inp], imgs[inp]
    cams_ho, imgs_ho = cams[held], imgs[held]
    print(f"fern: {len(names)} images at {cams.width}x{cams.height}; inputs {[names[i] for i in inp]}, "
          f"{len(held)} held out; near {float(cams_in.near.min()):.2f} far {float(cams_in.far.max()):.2f}", flush=True)

    iters = int(args.iters)
    densify = None
    if not args.no_densify:
        densify = dict(DEFAULT_DENSIFY)
        densify.update(densify_from=max(1, iters // 6), densify_until=max(2, iters // 2),
                       densify_every=max(1, iters // 30), opacity_reset_every=0, max_gaussians=args.max_gaussians,
                       max_world_scale=args.max_world_scale if args.max_world_scale is not None else 1e9)
    t_fit0 = [time.perf_counter()]

    class FitLog(Progress):
        def update(self, it, total, *, stage=None, loss=None, preview=None):
            if it == 1:
                t_fit0[0] = time.perf_counter()
            if it % 50 == 0 or it == iters:
                print(f"    it {it:5d}/{iters}  loss {loss:.4f}  {time.perf_counter() - t_fit0[0]:7.1f}s", flush=True)

    fit_cfg = FitConfig(iters=iters, sh_degree=args.sh_degree, sh_every=max(1, iters // (args.sh_degree + 1)),
                        densify=densify, seed=args.seed, scene_extent=args.scene_extent)
    fit_kw = dict(background=bg, final_eval=False, progress=FitLog())

    results: dict = {}
    timings: dict = {"load_s": time.perf_counter() - t0}
    priors: dict = {}
    strips = [imgs_ho[[0, 8, 17]]]

    def get_prior(fill: bool):
        if fill not in priors:
            t = time.perf_counter()
            priors[fill] = coarse_prior(imgs_in, cams_in, dataclasses.replace(prior_cfg, fill_holes=fill))
            key = "prior_fill_s" if fill else "prior_s"
            timings[key] = time.perf_counter() - t
            st = priors[fill].info["stereo"]
            print(f"  prior (fill_holes={fill}): {sum(priors[fill].info['n_gaussians'])} Gaussians, "
                  f"{st['num_depths']} planes, valid {st['valid_fraction'][0]:.2f}/{st['valid_fraction'][1]:.2f}, "
                  f"{timings[key]:.1f}s", flush=True)
        return priors[fill]

    def record(key: str, scene, extra: dict) -> None:
        t = time.perf_counter()
        ev = evaluate(scene, cams_ho, imgs_ho, bg)
        frames = ev.pop("_frames")
        strips.append(frames[[0, 8, 17]])
        ev.update(extra)
        ev["eval_s"] = time.perf_counter() - t
        ev["n_gaussians"] = len(scene)
        results[key] = ev
        print(f"  {LABELS[key]:<36} PSNR {ev['psnr']:6.2f} dB  SSIM {ev['ssim']:.4f}  coverage {ev['coverage']:.3f}",
              flush=True)

    for key in variants:
        t = time.perf_counter()
        if key in ("a", "a0"):
            pr = get_prior(key == "a")
            record(key, pr.scene, {"time_s": time.perf_counter() - t, "prior_info": _jsonable(pr.info)})
        elif key in ("b", "b0"):
            pr = get_prior(key == "b")
            path = make_trajectory("interpolate", cams_in, frames=args.frames)
            t_r = time.perf_counter()
            frames, cover = render_trajectory(pr.scene, path, background=bg)
            t_render = time.perf_counter() - t_r
            k = max(1, int(args.input_weight))
            train_imgs = torch.cat([frames, imgs_in.repeat(k, 1, 1, 1)])
            train_cams = Cameras.cat([path.to(dtype=torch.float32)] + [cams_in] * k)
            t_f = time.perf_counter()
            fit = fit_scene(train_imgs, train_cams, pr.scene, fit_cfg, **fit_kw)
            t_fit = time.perf_counter() - t_f
            record(key, fit.scene, {"time_s": time.perf_counter() - t, "render_path_s": t_render, "fit_s": t_fit,
                                    "path_coverage": float(cover.mean()), "train_views": len(train_cams),
                                    "final_train_loss": fit.history[-1]["loss"]})
        else:  # c: random init / d: prior init, on the two photos alone
            t_f = time.perf_counter()
            init = get_prior(True).scene if key == "d" else None
            fit = fit_scene(imgs_in, cams_in, init, dataclasses.replace(fit_cfg, n_init=args.n_init), **fit_kw)
            t_fit = time.perf_counter() - t_f
            record(key, fit.scene, {"time_s": time.perf_counter() - t, "fit_s": t_fit,
                                    "final_train_loss": fit.history[-1]["loss"]})

    total = time.perf_counter() - t0
    print()
    print(f"{'variant':<38}{'PSNR':>8}{'SSIM':>9}{'cover':>8}{'time':>9}")
    for key in variants:
        r = results[key]
        print(f"{LABELS[key]:<38}{r['psnr']:8.2f}{r['ssim']:9.4f}{r['coverage']:8.3f}{r['time_s']:8.0f}s")
    if "c" in results:
        for key in ("a", "b"):
            if key in results:
                print(f"{LABELS[key]} - baseline (c): PSNR {results[key]['psnr'] - results['c']['psnr']:+.2f} dB, "
                      f"SSIM {results[key]['ssim'] - results['c']['ssim']:+.4f}")
    report = {
        "command": command,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "size": [cams.width, cams.height],
        "inputs": [names[i] for i in inp],
        "heldout": [names[i] for i in held],
        "fit": {**dataclasses.asdict(fit_cfg), "background": bg, "final_eval": False},
        "results": results,
        "timings": timings,
        "total_s": total,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=1, default=str))
    if args.strip is not None:
        save_strip(strips, args.strip)
    print(f"total {total:.0f}s; wrote {args.out}")
    return 0


def _jsonable(d):
    if isinstance(d, dict):
        return {str(k): _jsonable(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_jsonable(v) for v in d]
    if isinstance(d, (int, float, str, bool)) or d is None:
        return d
    return str(d)


if __name__ == "__main__":
    sys.exit(main())
