"""Tile-kernel benchmark: the vectorised compositing kernels of ``render/raster_numba.py`` against the scalar ones, on
the real fern stereo prior (photos 0 and 4 of ``../shared/data/llff_fern``, skipped when absent), and numba's
first-use compile time.

For each of 4 path cameras: the scene is projected, sorted and binned once, then ``_forward_fast`` / ``_forward_ref``
and ``_backward_fast`` / ``_backward_ref`` (random dL/dC, dL/dD, dL/dT) run alternately; the minimum of ``--repeats``
runs of each is reported with their ratio and the largest differences (colour, depth, transmittance, gradient rows;
stop positions must be identical). ``--compile`` also times, in a fresh process with an empty numba cache folder
(``NUMBA_CACHE_DIR``), the guarded first calls that compile the kernels (``usable``, ``nograd_usable``,
``grad_usable``).

    python benchmarks/bench_tile_kernels.py [--size 384] [--threads 1,2] [--repeats 12] [--compile]

Run it alone on the machine: a second job on 2 cores changes the numbers several times over.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

_PROBE = """
import sys, time
sys.path.insert(0, {root!r})
from vscene_engine.render import raster_numba as R
for name in ("usable", "nograd_usable", "grad_usable"):
    t0 = time.perf_counter()
    ok = getattr(R, name)()
    print(f"{{name}} {{time.perf_counter() - t0:.1f}} {{ok}}")
"""


def _min_time(fn, args, repeats):
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn(*args)
        best = min(best, time.perf_counter() - t0)
    return best


def kernels(size: int, threads: list[int], repeats: int) -> int:
    import numba
    import torch

    from bench_rasterize import fern_views, scene_fern
    from vscene_engine.pipeline import make_path
    from vscene_engine.render import raster_numba as R

    got = scene_fern(size)
    if got is None:
        print("skipped: fern data not found")
        return 0
    scene = got[0].to(dtype=torch.float64)
    path = make_path(fern_views(size), frames=49)
    arr = [np.ascontiguousarray(getattr(scene, k).detach().numpy()) for k in ("means", "scales", "quats",
                                                                               "opacities", "sh")]
    W, H, tile = path.width, path.height, R.TILE
    tx, ty = (W + tile - 1) // tile, (H + tile - 1) // tile
    R.configure_threads()
    rng = np.random.default_rng(0)
    print(f"fern {size}: {len(scene)} Gaussians, {W}x{H}, tile {tile}, min of {repeats}")
    print("| threads | camera | intersections | forward scalar s | vectorised s | × | backward scalar s | vectorised s "
          "| × | max diff C / D / T / grad rows |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in threads:
        numba.set_num_threads(n)
        for ci in (0, 16, 32, 48):
            cam = R._camera_record(path.c2w[ci], path.K[ci])
            N = arr[0].shape[0]
            rec, rect, keep = np.empty((N, 10)), np.empty((N, 4), np.int64), np.empty(N, np.int64)
            R._project(*arr, scene.sh_degree, cam, W, H, 0.3, False, 0.01, 1e10, rec, rect, keep)
            offsets, ids = R._bin_tiles_par(rect, R._depth_order(rec, keep), tile, tx, tx * ty)
            outs = {k: [np.empty((H, W, 3)), np.empty((H, W)), np.empty((H, W)), np.empty((H, W), np.int64)]
                    for k in ("ref", "fast")}
            gc, gd, gt = rng.standard_normal((H, W, 3)), rng.standard_normal((H, W)), rng.standard_normal((H, W))
            gi = {k: np.empty((ids.shape[0], 10)) for k in ("ref", "fast")}
            t = {}
            for k, fwd in (("ref", R._forward_ref), ("fast", R._forward_fast)):
                fwd(rec, rect, offsets, ids, W, H, tile, tx, *outs[k])  # compile / warm
                t["f" + k] = _min_time(fwd, (rec, rect, offsets, ids, W, H, tile, tx, *outs[k]), repeats)
            c, d, tt, stop = outs["ref"]
            for k, bwd in (("ref", R._backward_ref), ("fast", R._backward_fast)):
                bwd(rec, rect, offsets, ids, W, H, tile, tx, tt, stop, gc, gd, gt, gi[k])
                t["b" + k] = _min_time(bwd, (rec, rect, offsets, ids, W, H, tile, tx, tt, stop, gc, gd, gt, gi[k]),
                                       repeats)
            if not np.array_equal(outs["ref"][3], outs["fast"][3]):
                print(f"stop positions differ at camera {ci}")
                return 1
            diffs = [float(np.abs(a - b).max()) for a, b in zip(outs["ref"][:3], outs["fast"][:3])]
            diffs.append(float(np.abs(gi["ref"] - gi["fast"]).max()))
            print(f"| {n} | {ci} | {ids.shape[0]} | {t['fref']:.4f} | {t['ffast']:.4f} | {t['fref'] / t['ffast']:.2f} "
                  f"| {t['bref']:.4f} | {t['bfast']:.4f} | {t['bref'] / t['bfast']:.2f} | "
                  + " / ".join(f"{x:.1e}" for x in diffs) + " |")
    return 0


def compile_times() -> None:
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", _PROBE.format(root=str(ROOT))], env=env, capture_output=True,
                             text=True, check=True).stdout
        total = time.perf_counter() - t0
    print("\nfirst-use compile, empty numba cache (seconds, result of the guarded first call):")
    print(out.strip())
    print(f"process total {total:.1f}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=384)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=12)
    ap.add_argument("--compile", action="store_true", help="also time the first-use compile in a fresh process")
    args = ap.parse_args(argv)
    rc = kernels(args.size, [int(x) for x in args.threads.split(",")], args.repeats)
    if args.compile:
        compile_times()
    return rc


if __name__ == "__main__":
    raise SystemExit(main())
