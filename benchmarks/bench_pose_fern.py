"""Relative-pose accuracy of ``vscene_engine.views.pose.estimate_relative_pose`` on LLFF fern (images_8, 504x378).

Ground truth: the LLFF ``poses_bounds.npy`` cameras (COLMAP). For each pair (i, j) the estimate is compared with the
true relative motion ``w2c_j @ c2w_i``: rotation error = angle of ``R_est R_true^T``; translation-direction error =
angle between the unit translations (the scale is unobservable from two photos).

    python benchmarks/bench_pose_fern.py [--data ../shared/data/llff_fern] [--out pose_fern.json] [--all]

Exits 0 and prints "skipped" when the data are absent.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_DATA = ROOT.parent / "shared" / "data" / "llff_fern"
# spans of 4, 5, 6, 8, 10 and 19 frames over the whole capture
DEFAULT_PAIRS = [(0, 4), (3, 7), (6, 10), (9, 13), (12, 16), (15, 19), (1, 6), (2, 8), (7, 13), (11, 17),
                 (4, 12), (5, 15), (0, 19)]


def rotation_error_deg(R_est, R_true) -> float:
    import numpy as np

    c = (np.trace(R_est @ R_true.T) - 1.0) / 2.0
    return math.degrees(math.acos(float(np.clip(c, -1.0, 1.0))))


def direction_error_deg(t_est, t_true) -> float:
    import numpy as np

    c = float(t_est @ t_true / (np.linalg.norm(t_est) * np.linalg.norm(t_true)))
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="LLFF fern folder (poses_bounds.npy, images_8/)")
    ap.add_argument("--out", type=Path, default=None, help="write the per-pair results as JSON here")
    ap.add_argument("--all", action="store_true", help="all pairs 4 and 6 frames apart plus (0, 19) (31 pairs)")
    ap.add_argument("--max-features", type=int, default=8000)
    ap.add_argument("--ransac-px", type=float, default=1.0)
    args = ap.parse_args(argv)

    img_dir = args.data / "images_8"
    if not (args.data / "poses_bounds.npy").is_file() or not img_dir.is_dir():
        print(f"skipped: LLFF fern not found at {args.data}")
        return 0

    import numpy as np
    import torch

    from vscene_engine.io.camera_formats import load_cameras
    from vscene_engine.io.images import load_image
    from vscene_engine.views.pose import DegeneratePairError, estimate_relative_pose

    files = sorted(p for p in img_dir.iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
    w, h = load_image(files[0]).shape[1], load_image(files[0]).shape[0]
    cams = load_cameras(args.data / "poses_bounds.npy", width=w, height=h, dtype=torch.float64)
    if len(cams) != len(files):
        print(f"error: {len(cams)} poses but {len(files)} images in {img_dir}")
        return 1
    pairs = DEFAULT_PAIRS
    if args.all:
        pairs = [(i, i + k) for k in (4, 6) for i in range(len(files) - k)] + [(0, len(files) - 1)]
    images = {}

    def img(i):
        if i not in images:
            images[i] = load_image(files[i])
        return images[i]

    rows = []
    print(f"LLFF fern {w}x{h}, {len(pairs)} pairs, torch threads {torch.get_num_threads()}")
    hdr = f"{'pair':>7} {'rot_err':>8} {'t_err':>7} {'inl':>5} {'match':>6} {'parlx':>6} {'H':>5} {'conf':>5} " \
          f"{'reproj':>6} {'near':>6} {'far':>6} {'time':>6}"
    print(hdr)
    print("-" * len(hdr))
    for i, j in pairs:
        t0 = time.perf_counter()
        row = {"pair": [i, j]}
        try:
            est = estimate_relative_pose(img(i), img(j), cams.K[i], cams.K[j], max_features=args.max_features,
                                         ransac_px=args.ransac_px)
        except DegeneratePairError as e:
            row.update(error=str(e), time_s=time.perf_counter() - t0)
            rows.append(row)
            print(f"{i:>3}-{j:<3} DegeneratePairError: {str(e)[:90]}")
            continue
        dt = time.perf_counter() - t0
        M = (cams.w2c[j] @ cams.c2w[i]).numpy()
        r_err = rotation_error_deg(est.R.numpy(), M[:3, :3])
        t_err = direction_error_deg(est.t.numpy(), M[:3, 3])
        rep = est.report
        row.update(rot_err_deg=r_err, t_dir_err_deg=t_err, n_inliers=rep["n_inliers"], n_matches=rep["n_matches"],
                   n_keypoints=[rep["n_keypoints_a"], rep["n_keypoints_b"]],
                   median_parallax_deg=rep["median_parallax_deg"],
                   homography_inlier_ratio=rep["homography_inlier_ratio"], confidence=rep["confidence"],
                   reproj_error_px=rep["reproj_error_px"], sampson_error_px=rep["sampson_error_px"],
                   near=est.near, far=est.far, n_points=rep["n_points"], time_s=dt,
                   true_rotation_deg=rotation_error_deg(M[:3, :3], np.eye(3)))
        rows.append(row)
        print(f"{i:>3}-{j:<3} {r_err:8.3f} {t_err:7.2f} {rep['n_inliers']:5d} {rep['n_matches']:6d} "
              f"{rep['median_parallax_deg']:6.2f} {rep['homography_inlier_ratio']:5.2f} {rep['confidence']:5.2f} "
              f"{rep['reproj_error_px']:6.2f} {est.near:6.2f} {est.far:6.2f} {dt:6.2f}")
    ok = [r for r in rows if "rot_err_deg" in r]
    summary = {"n_pairs": len(rows), "n_ok": len(ok)}
    if ok:
        re_ = np.array([r["rot_err_deg"] for r in ok])
        te_ = np.array([r["t_dir_err_deg"] for r in ok])
        tt_ = np.array([r["time_s"] for r in ok])
        summary.update(rot_err_median=float(np.median(re_)), rot_err_max=float(re_.max()),
                       t_dir_err_median=float(np.median(te_)), t_dir_err_max=float(te_.max()),
                       time_median_s=float(np.median(tt_)))
        print("-" * len(hdr))
        print(f"ok {len(ok)}/{len(rows)}  rotation err median {summary['rot_err_median']:.3f} max "
              f"{summary['rot_err_max']:.3f} deg  translation-direction err median {summary['t_dir_err_median']:.2f} "
              f"max {summary['t_dir_err_max']:.2f} deg  time median {summary['time_median_s']:.2f} s/pair")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"dataset": str(args.data), "size": [w, h], "summary": summary,
                                        "pairs": rows}, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
