"""Fit the NeRF-synthetic "lego" scene from a random initialisation on the CPU and report held-out quality.

Usage (from the repository root)::

    python benchmarks/fit_lego.py [--res 100] [--iters N] [--train 80 --heldout 20] [--out DIR]

Data: ``../shared/data/nerf_synthetic_lego`` (``transforms_train.json`` + ``train/r_*.png``, 800x800 RGBA). When it
is absent the script prints a "skipped" line and exits with code 0.

Protocol: the 100 views are split into ``--heldout`` evenly spaced held-out views and ``--train`` training views
(evenly spaced among the rest). Images are composited over white at full resolution (NeRF's convention) and
downsampled with an area (box) filter; intrinsics are scaled with ``Cameras.resized``. The scene is fitted with
:func:`vscene_engine.recon.fit.fit_scene` from a random init (``background=(1,1,1)``), then every held-out view is
rendered and compared: PSNR and SSIM (3DGS definition: 11x11 Gaussian window, zero "same" padding) per view and
mean (the mean SSIM with "valid" padding, the scikit-image convention, is reported too). Writes
``DIR/report.json`` and ``DIR/heldout_strip.png`` (top row prediction, bottom row ground truth, 4 held-out views).
"""
from __future__ import annotations

import argparse
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
from vscene_engine.render.losses import psnr, ssim  # noqa: E402
from vscene_engine.recon.fit import DEFAULT_DENSIFY, FitConfig, fit_scene  # noqa: E402
from vscene_engine.render.rasterize import render  # noqa: E402
from vscene_engine.core.runtime import Progress  # noqa: E402

DATA = ROOT.parent / "shared" / "data" / "nerf_synthetic_lego"


def split_views(n_total: int, n_train: int, n_heldout: int) -> tuple[list[int], list[int]]:
    """Evenly spaced held-out views, and ``n_train`` evenly spaced training views among the others."""
    if n_train < 1 or n_heldout < 1 or n_train + n_heldout > n_total:
        raise ValueError(f"need 1 <= train, 1 <= heldout and train + heldout <= {n_total}, got {n_train} + {n_heldout}")
    held = sorted({int(round(x)) for x in np.linspace(0, n_total - 1, n_heldout + 2)[1:-1]})
    rest = [i for i in range(n_total) if i not in set(held)]
    pick = np.linspace(0, len(rest) - 1, n_train).round().astype(int)
    train = [rest[i] for i in pick]
    return train, held


def load_lego(data_dir: Path, indices: list[int], res: int, background=(1.0, 1.0, 1.0)):
    """Cameras and images ``[V,res,res,3]`` (composited over ``background``, area-downsampled) for ``indices``."""
    cams = load_cameras(data_dir / "transforms_train.json")
    names = cams.names
    bg = np.asarray(background, dtype=np.float32)
    imgs = []
    for i in indices:
        path = data_dir / "train" / f"{names[i]}.png"
        a = np.asarray(Image.open(path).convert("RGBA"), dtype=np.float32) / 255.0
        rgb = a[..., :3] * a[..., 3:] + bg * (1.0 - a[..., 3:])
        if rgb.shape[0] != res or rgb.shape[1] != res:
            rgb = np.stack([np.asarray(Image.fromarray(rgb[..., c], mode="F").resize((res, res), Image.BOX))
                            for c in range(3)], -1)
        imgs.append(np.clip(rgb, 0, 1))
    sub = cams[indices]
    return sub.resized(res, res), torch.from_numpy(np.stack(imgs)).float()


def save_strip(pred: torch.Tensor, truth: torch.Tensor, path: Path, scale: int = 2) -> None:
    top = torch.cat(list(pred), 1)
    bottom = torch.cat(list(truth), 1)
    img = (torch.cat([top, bottom], 0).clamp(0, 1) * 255 + 0.5).byte().numpy()
    im = Image.fromarray(img)
    if scale > 1:
        im = im.resize((im.width * scale, im.height * scale), Image.NEAREST)
    im.save(path)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--res", type=int, default=100, help="square training/eval resolution (default 100)")
    ap.add_argument("--iters", type=int, default=2500,
                    help="optimisation iterations (default 2500: ~5 CPU-minutes, ~7 min wall on a busy 2-core machine)")
    ap.add_argument("--train", type=int, default=80, help="number of training views")
    ap.add_argument("--heldout", type=int, default=20, help="number of held-out views")
    ap.add_argument("--n-init", type=int, default=3000, help="random initial Gaussians")
    ap.add_argument("--sh-degree", type=int, default=3)
    ap.add_argument("--sh-every", type=int, default=None, help="raise the SH degree every N iters (default iters/6)")
    ap.add_argument("--no-densify", action="store_true", help="disable densification/pruning")
    ap.add_argument("--max-gaussians", type=int, default=30000, help="densification cap (CPU time bound)")
    ap.add_argument("--init-scale", type=float, default=0.7, help="initial scale / (box volume / n)^(1/3)")
    ap.add_argument("--eval-every", type=int, default=500, help="held-out PSNR every N iters (0: only at the end)")
    ap.add_argument("--densify-from", type=int, default=None)
    ap.add_argument("--densify-until", type=int, default=None)
    ap.add_argument("--densify-every", type=int, default=None)
    ap.add_argument("--grad-threshold", type=float, default=DEFAULT_DENSIFY["grad_threshold"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: on a shared 2-core machine more threads spin and slow down)")
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--out", type=Path, default=ROOT / "bench_out" / "fit_lego",
                    help="output folder (default bench_out/fit_lego, git-ignored)")
    args = ap.parse_args(argv)

    if not (args.data / "transforms_train.json").is_file():
        print(f"skipped: lego data not found at {args.data} (expected transforms_train.json and train/r_*.png)")
        return 0
    torch.set_num_threads(max(1, args.threads))
    t0 = time.perf_counter()
    train_idx, held_idx = split_views(100, args.train, args.heldout)
    cams_tr, imgs_tr = load_lego(args.data, train_idx, args.res)
    cams_ho, imgs_ho = load_lego(args.data, held_idx, args.res)
    t_load = time.perf_counter() - t0
    print(f"loaded {len(train_idx)} train + {len(held_idx)} held-out views at {args.res}x{args.res} "
          f"in {t_load:.1f}s", flush=True)

    iters = args.iters
    sh_every = args.sh_every or max(1, iters // 6)
    densify = None
    if not args.no_densify:
        # the 3DGS schedule compressed to `iters`: densify from 1/6 to 1/2 of the run
        densify = dict(DEFAULT_DENSIFY)
        densify.update(densify_from=args.densify_from or max(1, iters // 6),
                       densify_until=args.densify_until or iters // 2,
                       densify_every=args.densify_every or max(1, iters // 30),
                       grad_threshold=args.grad_threshold, opacity_reset_every=0, max_gaussians=args.max_gaussians)
    t_fit0 = time.perf_counter()

    class Log(Progress):
        def update(self, it, total, *, stage=None, loss=None, preview=None):
            if it % 100 == 0 or it == iters:
                h = hist[-1] if hist else {}
                ev = f"  held-out PSNR {h['eval_psnr']:.2f}" if "eval_psnr" in h else ""
                dt = time.perf_counter() - t_fit0
                print(f"  it {it:5d}  loss {loss:.4f}  n {h.get('n_gaussians', 0):6d}  {dt:7.1f}s{ev}", flush=True)

    hist = []
    cfg = FitConfig(iters=iters, sh_degree=args.sh_degree, sh_every=sh_every, seed=args.seed, densify=densify,
                    n_init=args.n_init, init_scale=args.init_scale, eval_every=args.eval_every)
    result = fit_scene(imgs_tr, cams_tr, None, cfg, background=(1.0, 1.0, 1.0), progress=Log(), final_eval=False,
                       eval_images=imgs_ho, eval_cameras=cams_ho, history_out=hist)
    t_fit = time.perf_counter() - t_fit0

    with torch.no_grad():
        preds = torch.cat([render(result.scene, cams_ho[i], (1.0, 1.0, 1.0)).rgb for i in range(len(cams_ho))])
        preds = preds.clamp(0, 1)
        p = psnr(preds, imgs_ho, reduction="none")
        s = ssim(preds, imgs_ho, reduction="none")
        s_valid = ssim(preds, imgs_ho, padding="valid", reduction="none") if args.res >= 11 else s
        tr_last = [h["psnr"] for h in result.history[-len(train_idx):]]
    names = [cams_ho.names[i] for i in range(len(cams_ho))]
    per_view = [{"view": n, "psnr": float(a), "ssim": float(b)} for n, a, b in zip(names, p, s)]
    report = {
        "command": "python benchmarks/fit_lego.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "train_views": [cams_tr.names[i] for i in range(len(cams_tr))],
        "heldout_views": names,
        "heldout_psnr_mean": float(p.mean()),
        "heldout_ssim_mean": float(s.mean()),
        "heldout_ssim_valid_mean": float(s_valid.mean()),
        "heldout_per_view": per_view,
        "train_psnr_last_epoch_mean": float(np.mean(tr_last)),
        "n_gaussians": len(result.scene),
        "fit_wall_time_s": t_fit,
        "total_wall_time_s": time.perf_counter() - t0,
        "densify": densify,
        "history": [h for h in result.history if h["iter"] % 50 == 0 or "densify" in h],
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    pick = np.linspace(0, len(held_idx) - 1, min(4, len(held_idx))).round().astype(int).tolist()
    save_strip(preds[pick], imgs_ho[pick], args.out / "heldout_strip.png")
    for v in per_view:
        print(f"  {v['view']:>6}  PSNR {v['psnr']:6.2f} dB  SSIM {v['ssim']:.4f}")
    print(f"held-out mean PSNR {report['heldout_psnr_mean']:.2f} dB, SSIM {report['heldout_ssim_mean']:.4f}; "
          f"{report['n_gaussians']} Gaussians; fit {t_fit:.0f}s, total {report['total_wall_time_s']:.0f}s; "
          f"wrote {args.out / 'report.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
