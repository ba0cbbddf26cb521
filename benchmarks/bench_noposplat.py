"""NoPoSplat prior: network forward time at the release's input size, PnP time, one refinement step, fern smoke run.

Usage (from the repository root)::

    python benchmarks/bench_noposplat.py [--device cpu|cuda] [--size 256|512] [--runs 3] [--threads N]
                                         [--weights re10k.ckpt|.safetensors] [--refine-steps 0] [--fern]
                                         [--out FILE.json]

Timing: the released architecture (:meth:`NoPoSplatConfig.release`, ViT-L encoder + two ViT-B decoders + four DPT
heads; ``--weights`` loads a real checkpoint instead of PyTorch's default random initialisation), 2 views of
``--size`` pixels square, batch 1, ``no_grad``; one warm-up forward, then ``--runs`` timed forwards (CUDA:
synchronised), median / min / max in ms. Then :func:`noposplat_prior` end to end on the same input (crop, network,
PnP-RANSAC, optional refinement), with its PnP time derived from the total minus the forward.

``--fern`` (needs ``../shared/data/llff_fern``): the first and the last photo -> ``noposplat_prior`` with the demo's
default intrinsics and with the LLFF intrinsics; the rotation angle between the found camera B and the true relative
pose is printed. With random weights it only shows that the path runs on real photos (a SMOKE run: the angle is
meaningless); the real numbers come with ``--weights``.
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from vscene_engine.prior.noposplat import NoPoSplatConfig, NoPoSplatNet, load_noposplat, noposplat_prior  # noqa: E402


def _sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


def _angle(Ra, Rb) -> float:
    c = ((Ra.T @ Rb).trace() - 1) / 2
    return math.degrees(math.acos(max(-1.0, min(1.0, float(c)))))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--weights", default=None)
    ap.add_argument("--refine-steps", type=int, default=0)
    ap.add_argument("--fern", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    dev = torch.device(a.device)
    torch.manual_seed(0)
    net = (load_noposplat(a.weights, device=dev, image_size=a.size) if a.weights
           else NoPoSplatNet(NoPoSplatConfig.release(a.size)).to(dev).eval())
    S = net.cfg.image_size
    g = torch.Generator().manual_seed(0)
    x = torch.rand(1, 2, 3, S, S, generator=g).to(dev)
    K = torch.tensor([[0.8, 0, 0.5], [0, 0.8, 0.5], [0, 0, 1.0]]).repeat(1, 2, 1, 1).to(dev)
    times = []
    with torch.no_grad():
        net(x, K)
        for _ in range(a.runs):
            _sync(dev)
            t0 = time.perf_counter()
            net(x, K)
            _sync(dev)
            times.append((time.perf_counter() - t0) * 1000)
    imgs = torch.rand(2, S * 3 // 4, S, 3, generator=g)
    t0 = time.perf_counter()
    r = noposplat_prior(net, imgs[0], imgs[1], refine_steps=a.refine_steps)
    total = (time.perf_counter() - t0) * 1000
    res = {"device": str(dev), "platform": platform.processor() or platform.machine(), "threads":
           torch.get_num_threads(), "size": S, "weights": a.weights or "random init",
           "forward_ms": {"median": statistics.median(times), "min": min(times), "max": max(times)},
           "prior_total_ms": total, "refine_steps": a.refine_steps,
           "pnp": {k: r.info[k] for k in ("pnp_points", "pnp_inliers", "pnp_low_opacity_fallback")}}
    if a.fern:
        fern = ROOT.parent / "shared" / "data" / "llff_fern"
        if not fern.is_dir():
            print(f"--fern: {fern} not found, skipped")
        else:
            import numpy as np

            from vscene_engine.io.images import load_image
            files = sorted((fern / "images_8").glob("*.png"))
            pb = np.load(fern / "poses_bounds.npy")
            # LLFF: [R | t | hwf] in (down, right, back) axes -> OpenCV (right, down, forward)
            P = pb[:, :15].reshape(-1, 3, 5)
            c2w = np.concatenate([P[:, :, 1:2], P[:, :, 0:1], -P[:, :, 2:3], P[:, :, 3:4]], 2)
            ia, ib = 0, len(files) - 1
            rel = np.linalg.inv(np.vstack([c2w[ia], [0, 0, 0, 1]])) @ np.vstack([c2w[ib], [0, 0, 0, 1]])
            a_img, b_img = load_image(files[ia]), load_image(files[ib])
            h, w = a_img.shape[:2]
            f = float(P[0, 2, 4]) * w / float(P[0, 1, 4])
            Kf = torch.tensor([[f, 0, w / 2], [0, f, h / 2], [0, 0, 1.0]])
            out = {}
            for name, k in (("default_K", None), ("llff_K", Kf)):
                rr = noposplat_prior(net, a_img, b_img, K=k, refine_steps=a.refine_steps)
                out[name] = {"rotation_error_deg": _angle(rr.cameras.c2w[1, :3, :3].double(),
                                                          torch.from_numpy(rel[:3, :3])),
                             "pnp_inliers": rr.info["pnp_inliers"]}
            res["fern"] = out
            res["fern_note"] = "SMOKE run (random weights)" if not a.weights else "real weights"
    print(json.dumps(res, indent=1))
    if a.out:
        Path(a.out).write_text(json.dumps(res, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
