"""Benchmark of the 3D-aware step (vscene_engine.compose.aware3d): a toy, and the miniature replication models.

    python benchmarks/bench_aware3d.py                                   # toy only (~1-2 min on 2 CPU cores)
    python benchmarks/bench_aware3d.py --replicate-dir /tmp/rep_full     # + student vs student + refine_3d
    python benchmarks/bench_aware3d.py --replicate-dir DIR --n-test 4 --teacher-scenes 2 --out out.json

Toy: a procedural scene rendered along a VideoScene camera path (9 frames, 48x32, white background). A "denoiser"
returns the true views with independent per-view sub-pixel shifts (+-2 px) and colour jitter (gain +-15 %, bias
+-0.05): view-inconsistent outputs. Reported for one application of the hook to those frames (random
initialisation, ``init_iters`` fit iterations): the inconsistency measure (``aware3d.inconsistency``: RMS residual of
one static 3DGS fit in grey levels, self-fit PSNR and held-out-view PSNR), PSNR to the truth, time.
``--sampler-toy``: also a 50-step DDIM run (``compose.compose_sample``, V views x 1 frame, video weight only) whose
denoiser is the posterior mean under an isotropic Gaussian prior N(perturbed view, prior_std^2) per view, plain vs
with the hook at steps 20, 30, 40. Caveat: with such a prior the DDIM output is that prior's sample (prior_std noise
included) and only part of an x0 correction made at t ~ 600 / 400 / 200 survives the remaining steps, so this shows
the wiring, not the benefit a real model's sharper prior gives.

Replication (``--replicate-dir``: a finished ``python -m vscene_engine replicate`` folder with results.json,
student.safetensors, teacher.safetensors): nothing is trained. The held-out scenes are regenerated with
``replicate.make_samples(n, cfg, seed0=cfg.seed * 100000 + 50000)`` exactly as ``replicate.replicate`` does, and their
path cameras are rebuilt the same way (``_camera_pair`` at the render size -> ``make_path`` -> resized to the
output size). Per scene (seed cfg.seed + 1000 + j, as ``replicate.evaluate``): the plain one-step student at the
run's best fixed t, the 3DGS render of its output, and ``aware3d.refine_3d`` at t_small 100 / 200 (one fit, the second
t via the documented equivalence refine_3d = leap_sample(render, t_small)); PSNR / SSIM / TDE via
``replicate.metrics`` and the inconsistency measure. ``--teacher-scenes k``: also the 50-step teacher with and without
the 3D-aware hook (model_codec) on the first k scenes.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vscene_engine.compose import aware3d as A  # noqa: E402
from vscene_engine.video import leap  # noqa: E402
from vscene_engine.render.losses import psnr  # noqa: E402

BG = (1.0, 1.0, 1.0)


# ============================================================================================ toy
def toy_data(width=48, height=32, frames=9, seed=3):
    from vscene_engine.pipeline import make_path
    from vscene_engine.render.rasterize import render
    from vscene_engine.tools.replicate import _camera_pair
    from vscene_engine.tools.synthetic import procedural_scene
    from vscene_engine.views.pair import ViewPair

    cams = _camera_pair(seed, width, height)
    path = make_path(ViewPair(torch.zeros(2, height, width, 3), cams, 0.5, 10.0), frames=frames)
    with torch.no_grad():
        truth = render(procedural_scene(n=6000, seed=seed), path, background=BG).rgb.clamp(0, 1)
    return path, truth


def enc(frames):
    return F.pixel_unshuffle(frames.permute(0, 3, 1, 2) * 2 - 1, 2)


def dec(z):
    return (F.pixel_shuffle(z, 2) / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)


def measure(frames, path, args):
    r = A.inconsistency(frames, path, iters=args.measure_iters, n_init=2000, background=BG, seed=0, holdout=3)
    return {"inconsistency": r.inconsistency, "self_psnr": r.psnr, "holdout_psnr": r.holdout_psnr}


def run_toy(args) -> dict:
    path, truth = toy_data()
    bad = A.jitter_views(truth, seed=0)
    out = {"truth": measure(truth, path, args)}
    out["perturbed"] = {**measure(bad, path, args), "psnr_to_truth": float(psnr(bad, truth))}
    cfg = A.Aware3DConfig(iters=args.iters, init_iters=args.init_iters, background=BG)
    hook = A.make_3d_aware_hook(dec, enc, path, cfg)
    t0 = time.perf_counter()
    fixed = dec(hook(20, 50, 0, enc(bad)))
    dt = time.perf_counter() - t0
    out["one application"] = {**measure(fixed, path, args), "psnr_to_truth": float(psnr(fixed, truth)),
                              "seconds": dt}
    if args.sampler_toy:
        out.update(run_sampler_toy(args, path, truth, bad, cfg))
    return out


def run_sampler_toy(args, path, truth, bad, cfg) -> dict:
    """50-step DDIM with a posterior-mean denoiser that believes in its own (perturbed) views."""
    from vscene_engine.compose.diffusion2 import Batching, WeightSchedule, compose_sample

    from vscene_engine.video.loading import COGVIDEOX_5B_SCHEDULER_CONFIG
    from vscene_engine.video.schedule import NoiseSchedule

    acp = NoiseSchedule.from_config(COGVIDEOX_5B_SCHEDULER_CONFIG).alphas_cumprod.double()
    m = enc(bad).unsqueeze(1)  # [V, 1, C, h, w]
    s2 = args.prior_std ** 2

    def row(x, t, cond):
        a = float(acp[int(t)])
        mv = m[: x.shape[0]] if cond is None else m[cond]
        gain = a ** 0.5 * s2 / (a * s2 + (1 - a))
        return mv + gain * (x - a ** 0.5 * mv)

    noise = torch.randn(m.shape, generator=torch.Generator().manual_seed(1))
    res = {}
    for name, hk in (("DDIM 50, plain", None),
                     ("DDIM 50, 3D-aware (steps 20/30/40)", A.make_3d_aware_hook(dec, enc, path, cfg))):
        t0 = time.perf_counter()
        r = compose_sample(noise, row, None, sampler="ddim", steps=50, weights=WeightSchedule(s0=0.0),
                           row_cond=lambda ix: ix, batching=Batching(batch=m.shape[0]), x0_hook=hk)
        frames = dec(r.samples[:, 0])
        res[name] = {**measure(frames, path, args), "psnr_to_truth": float(psnr(frames, truth)),
                     "seconds": time.perf_counter() - t0}
        if hk is not None:
            res[name]["applications"] = [dict(step=h["step"], iters=h["iters"], fit_psnr=round(h["fit_psnr"], 2),
                                              seconds=round(h["seconds"], 1)) for h in hk.history]
    return res


# ============================================================================================ replication models
def load_replication(d: Path):
    from safetensors.torch import load_file

    from vscene_engine.tools.replicate import ReplicateConfig, tiny_model

    res = json.loads((d / "results.json").read_text())
    c = dict(res["config"])
    c["eval_teacher_steps"] = tuple(c.get("eval_teacher_steps", (1, 4, 50)))
    cfg = ReplicateConfig(**{k: v for k, v in c.items() if k in {f.name for f in dataclasses.fields(ReplicateConfig)}})
    models = {}
    for name in ("teacher", "student"):
        m = tiny_model(cfg, seed=cfg.seed)
        m.transformer.load_state_dict(load_file(str(d / f"{name}.safetensors")), strict=True)
        m.transformer.eval().requires_grad_(False)
        models[name] = dataclasses.replace(m, name=name)
    return cfg, res, models


def path_cameras(cfg, s):
    """The path cameras of held-out sample seed ``s`` at the output size (as make_samples builds them)."""
    from vscene_engine.pipeline import make_path
    from vscene_engine.tools.replicate import _camera_pair
    from vscene_engine.views.pair import ViewPair

    W, H = cfg.width * cfg.render_scale, cfg.height * cfg.render_scale
    cams = _camera_pair(s, W, H)
    return make_path(ViewPair(torch.zeros(2, H, W, 3), cams, 0.5, 10.0), frames=cfg.frames).resized(cfg.width,
                                                                                                    cfg.height)


def run_replication(args) -> dict:
    from vscene_engine.tools.replicate import make_samples, metrics

    cfg, res, models = load_replication(Path(args.replicate_dir))
    student, teacher = models["student"], models["teacher"]
    best_t = int(res.get("best_fixed_t", 100))
    n = int(args.n_test or cfg.n_test)
    t0 = time.perf_counter()
    test = make_samples(n, cfg, seed0=cfg.seed * 100_000 + 50_000)
    t_data = time.perf_counter() - t0
    rcfg = A.Aware3DConfig(iters=args.iters, init_iters=args.init_iters, background=BG)
    rows: dict[str, list] = {}
    fits = []

    def add(name, video, gt, path, with_measure=True):
        r = metrics(video, gt)
        if with_measure:
            r["inconsistency"] = A.inconsistency(video.clamp(0, 1), path, iters=args.measure_iters, n_init=2000,
                                                 background=BG, seed=0).inconsistency
        rows.setdefault(name, []).append(r)

    for j, s in enumerate(test):
        path = path_cameras(cfg, s["seed"])
        a, b, gt, coarse = s["gt"][0], s["gt"][-1], s["gt"], s["coarse"]
        seed = cfg.seed + 1000 + j
        add("ground truth", gt, gt, path)
        add("coarse render (3DGS prior)", coarse, gt, path)
        plain = leap.leap_sample(student, a, b, coarse, timestep=best_t, seed=seed)
        add(f"student, 1 step, t={best_t}", plain.frames, gt, path)
        t1 = time.perf_counter()
        ref = A.refine_3d(student, plain, path, t_small=200, seed=seed, cfg=rcfg, first=a, last=b)
        fits.append(time.perf_counter() - t1)
        add("3DGS fit of the student output, rendered (no re-noise)", ref.render, gt, path)
        add("student + refine_3d, t_small=200", ref.frames, gt, path)
        r100 = leap.leap_sample(student, a, b, ref.render, timestep=100, seed=seed)
        add("student + refine_3d, t_small=100", r100.frames, gt, path)
        if j < args.teacher_scenes:
            t2 = time.perf_counter()
            tp = leap.teacher_sample(teacher, a, b, coarse, steps=50, seed=seed)
            add("teacher, 50 steps (from noise), plain", tp.frames, gt, path)
            d, e = A.model_codec(teacher)
            hook = A.make_3d_aware_hook(d, e, path, rcfg)
            th = leap.teacher_sample(teacher, a, b, coarse, steps=50, seed=seed, x0_hook=hook)
            add("teacher, 50 steps (from noise), 3D-aware hook 20/30/40", th.frames, gt, path)
            rows.setdefault("_teacher_seconds", []).append({"s": time.perf_counter() - t2})
        print(f"[replication] scene {j + 1}/{n} done ({time.perf_counter() - t0:.0f}s)", flush=True)

    def mean(v):
        return {k: sum(r[k] for r in v) / len(v) for k in v[0]}

    table = {k: {**mean(v), "n": len(v)} for k, v in rows.items() if not k.startswith("_")}
    return {"replicate_dir": str(args.replicate_dir), "n_test": n, "best_fixed_t": best_t, "rows": table,
            "refine_fit_seconds_mean": sum(fits) / len(fits), "data_seconds": t_data,
            "total_seconds": time.perf_counter() - t0}


# ============================================================================================ report
def md_toy(toy: dict) -> str:
    lines = ["| toy | inconsistency (grey levels) ↓ | self-fit PSNR ↑ | held-out-view PSNR ↑ | PSNR to truth ↑ "
             "| time (s) |", "|---|---|---|---|---|---|"]
    for k, v in toy.items():
        pt = f"{v['psnr_to_truth']:.2f}" if "psnr_to_truth" in v else "∞"
        sec = f"{v['seconds']:.1f}" if "seconds" in v else ""
        lines.append(f"| {k} | {v['inconsistency']:.2f} | {v['self_psnr']:.2f} | {v['holdout_psnr']:.2f} | {pt} | "
                     f"{sec} |")
    return "\n".join(lines)


def md_rep(rep: dict) -> str:
    lines = ["| method | PSNR ↑ | SSIM ↑ | TDE ×100 ↓ | inconsistency ↓ | scenes |", "|---|---|---|---|---|---|"]
    for k, v in rep["rows"].items():
        lines.append(f"| {k} | {v['psnr']:.2f} | {v['ssim']:.3f} | {v['tde']:.2f} | {v['inconsistency']:.2f} | "
                     f"{v['n']} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--replicate-dir", default=None, help="finished `python -m vscene_engine replicate` folder")
    p.add_argument("--n-test", type=int, default=None, help="held-out scenes (default: the run's n_test)")
    p.add_argument("--teacher-scenes", type=int, default=0, help="also the 50-step teacher +- hook on k scenes")
    p.add_argument("--iters", type=int, default=100, help="fit iterations of a warm-started application")
    p.add_argument("--init-iters", type=int, default=300, help="fit iterations from a random initialisation")
    p.add_argument("--measure-iters", type=int, default=200, help="fit iterations of the inconsistency measure")
    p.add_argument("--sampler-toy", action="store_true", help="also the 50-step DDIM toy (Gaussian-prior denoiser)")
    p.add_argument("--prior-std", type=float, default=0.3, help="sampler toy: denoiser prior std (latent units)")
    p.add_argument("--skip-toy", action="store_true")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", default=None, help="write the numbers as JSON here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    report = {"threads": torch.get_num_threads(), "settings": {k: getattr(args, k) for k in
                                                               ("iters", "init_iters", "measure_iters")}}
    if not args.skip_toy:
        report["toy"] = run_toy(args)
        print(md_toy(report["toy"]), flush=True)
    if args.replicate_dir:
        report["replication"] = run_replication(args)
        print(md_rep(report["replication"]))
        print(f"mean refine_3d fit time {report['replication']['refine_fit_seconds_mean']:.1f}s per scene; "
              f"total {report['replication']['total_seconds']:.0f}s")
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
