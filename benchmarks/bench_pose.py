"""Relative-pose accuracy of ``vscene_engine.pose.estimate_relative_pose`` with the intrinsics given and withheld.

Data (skipped cleanly when absent): LLFF fern (``images_8``, 504x378, ``poses_bounds.npy``; 13 pairs 4-19 frames
apart) and NeRF-synthetic lego (800x800 RGBA composited over white as ``views.prepare_image`` does,
``transforms_train.json``; pairs whose relative rotation is 10-40 deg, one per 8th frame).

Methods (one row each in the summary table):

* ``given``: the dataset's intrinsics (calibrated path);
* ``60deg``: intrinsics withheld, the old behaviour: a 60 deg horizontal field of view;
* ``selfcal``: intrinsics withheld, the self-calibrated focal trusted whenever PoseLib returns one (guard off);
* ``auto``: intrinsics withheld, the shipped behaviour: self-calibration behind the conditioning guard, else the
  60 deg prior (``focal_source`` says which).

Errors per pair against the ground truth ``w2c_j @ c2w_i``: rotation (angle of ``R_est R_true^T``), translation
direction (angle between unit translations; scale is unobservable), focal (``f_est / f_true - 1``). A refusal is a
:class:`DegeneratePairError`. ``trusted`` counts pairs whose focal came from self-calibration; ``warned`` counts pairs
that fell back to the 60 deg guess (the report carries ``focal_warning``).

    python benchmarks/bench_pose.py [--data ../shared/data] [--only fern|lego] [--pairs] [--out bench_pose.json]

Prints markdown tables (summary per dataset and method; with ``--pairs`` one row per pair and method).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DEFAULT_DATA = ROOT.parent / "shared" / "data"
FERN_PAIRS = [(0, 4), (3, 7), (6, 10), (9, 13), (12, 16), (15, 19), (1, 6), (2, 8), (7, 13), (11, 17),
              (4, 12), (5, 15), (0, 19)]
METHODS_WITHHELD = ("60deg", "selfcal", "auto")


def rotation_error_deg(R_est, R_true) -> float:
    import numpy as np

    c = (np.trace(R_est @ R_true.T) - 1.0) / 2.0
    return math.degrees(math.acos(float(np.clip(c, -1.0, 1.0))))


def direction_error_deg(t_est, t_true) -> float:
    import numpy as np

    c = float(t_est @ t_true / (np.linalg.norm(t_est) * np.linalg.norm(t_true)))
    return math.degrees(math.acos(max(-1.0, min(1.0, c))))


def lego_pairs(cams, step: int = 8, lo: float = 10.0, hi: float = 40.0):
    """One pair per ``step``-th frame i: the later frame j whose relative rotation (angle of ``R_i^T R_j``) is
    lo..hi deg, closest to a target angle cycling through 12, 20, 28, 36 deg (so the set spans the range)."""
    import numpy as np

    R = cams.c2w[:, :3, :3].double().numpy()
    targets = (12.0, 20.0, 28.0, 36.0)
    pairs = []
    for k, i in enumerate(range(0, len(R), step)):
        c = (np.einsum("nji,jk->nik", R, R[i]).trace(axis1=1, axis2=2) - 1.0) / 2.0
        ang = np.degrees(np.arccos(np.clip(c, -1.0, 1.0)))
        cand = [j for j in range(i + 1, len(R)) if lo <= ang[j] <= hi]
        if cand:
            j = min(cand, key=lambda j: abs(ang[j] - targets[k % len(targets)]))
            pairs.append((i, j, float(ang[j])))
    return pairs


def run_method(method, img_a, img_b, K_a, K_b, W, H):
    from vscene_engine.pose import estimate_relative_pose, focal_from_fov

    if method == "given":
        return estimate_relative_pose(img_a, img_b, K_a, K_b)
    if method == "60deg":
        import torch

        f = focal_from_fov(W, H, 60.0)
        K = torch.tensor([[f, 0, W / 2], [0, f, H / 2], [0, 0, 1.0]], dtype=torch.float64)
        return estimate_relative_pose(img_a, img_b, K, K)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return estimate_relative_pose(img_a, img_b, selfcal_guard=(method == "auto"))


def evaluate(name, pairs, load, cams, methods, W, H):
    """-> rows: one dict per (pair, method)."""
    import numpy as np

    from vscene_engine.pose import DegeneratePairError

    rows = []
    for i, j in pairs:
        ia, ib = load(i), load(j)
        M = (cams.w2c[j].double() @ cams.c2w[i].double()).numpy()
        f_true = float(cams.K[i, 0, 0])
        for m in methods:
            t0 = time.perf_counter()
            row = {"dataset": name, "pair": [i, j], "method": m,
                   "true_rotation_deg": rotation_error_deg(M[:3, :3], np.eye(3))}
            try:
                est = run_method(m, ia, ib, cams.K[i], cams.K[j], W, H)
            except DegeneratePairError as e:
                row.update(refused=True, error=str(e), time_s=time.perf_counter() - t0)
                rows.append(row)
                continue
            r = est.report
            sc = r.get("self_calibration") or {}
            row.update(refused=False, rot_err_deg=rotation_error_deg(est.R.numpy(), M[:3, :3]),
                       t_dir_err_deg=direction_error_deg(est.t.numpy(), M[:3, 3]),
                       focal_err=r["focal_px"] / f_true - 1.0, focal_source=r["focal_source"],
                       focal_confidence=r["focal_confidence"], failed_checks=sc.get("failed_checks"),
                       selfcal_focal_err=(sc["focal_px"] / f_true - 1.0) if sc else None,
                       warned="focal_warning" in r, n_inliers=r["n_inliers"], time_s=time.perf_counter() - t0)
            rows.append(row)
    return rows


def summarize(rows, methods):
    import numpy as np

    out = []
    for m in methods:
        rs = [r for r in rows if r["method"] == m]
        ok = [r for r in rs if not r["refused"]]
        s = {"method": m, "pairs": len(rs), "refused": len(rs) - len(ok)}
        if ok:
            re_ = np.array([r["rot_err_deg"] for r in ok])
            te_ = np.array([r["t_dir_err_deg"] for r in ok])
            fe_ = np.abs(np.array([r["focal_err"] for r in ok]))
            s.update(rot_med=float(np.median(re_)), rot_max=float(re_.max()), t_med=float(np.median(te_)),
                     t_max=float(te_.max()), f_med=float(np.median(fe_)), f_max=float(fe_.max()),
                     trusted=sum(r["focal_source"] == "self-calibrated" for r in ok),
                     warned=sum(bool(r["warned"]) for r in ok),
                     within=sum(r["rot_err_deg"] <= 1.0 and r["t_dir_err_deg"] <= 3.0 and abs(r["focal_err"]) <= 0.05
                                for r in ok),
                     within2=sum(r["rot_err_deg"] <= 2.0 for r in ok),
                     confident_wrong=sum(r["focal_source"] == "self-calibrated" and abs(r["focal_err"]) > 0.10
                                         for r in ok),
                     time_med=float(np.median([r["time_s"] for r in ok])))
        out.append(s)
    return out


def print_summary(name, summ):
    print(f"\n### {name}\n")
    print("| method | pairs | refused | rot med / max (deg) | t-dir med / max (deg) | |focal err| med / max | "
          "self-cal trusted | warned (60 deg guess) | rot<=1, t<=3, f<=5% | rot<=2 | self-cal >10% off | s/pair |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for s in summ:
        if "rot_med" not in s:
            print(f"| {s['method']} | {s['pairs']} | {s['refused']} | - | - | - | - | - | - | - | - | - |")
            continue
        print(f"| {s['method']} | {s['pairs']} | {s['refused']} | {s['rot_med']:.2f} / {s['rot_max']:.2f} | "
              f"{s['t_med']:.2f} / {s['t_max']:.2f} | {100 * s['f_med']:.1f}% / {100 * s['f_max']:.1f}% | "
              f"{s['trusted']} | {s['warned']} | {s['within']} | {s['within2']} | {s['confident_wrong']} | "
              f"{s['time_med']:.1f} |")


def print_pairs(rows):
    print("\n| data | pair | true rot | method | rot err | t-dir err | focal err | source (conf) | self-cal f err | "
          "failed checks |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        head = f"| {r['dataset']} | {r['pair'][0]}-{r['pair'][1]} | {r['true_rotation_deg']:.1f} | {r['method']} |"
        if r["refused"]:
            print(f"{head} refused | | | | | {r['error'][:80]} |")
            continue
        sc = "" if r["selfcal_focal_err"] is None else f"{100 * r['selfcal_focal_err']:+.1f}%"
        fc = "; ".join(c.split(" (")[0] for c in (r["failed_checks"] or []))
        print(f"{head} {r['rot_err_deg']:.2f} | {r['t_dir_err_deg']:.2f} | {100 * r['focal_err']:+.1f}% | "
              f"{r['focal_source']} ({r['focal_confidence']:.2f}) | {sc} | {fc} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder holding llff_fern/ and nerf_synthetic_lego/")
    ap.add_argument("--only", choices=["fern", "lego"], default=None)
    ap.add_argument("--pairs", action="store_true", help="also print one row per pair and method")
    ap.add_argument("--lego-step", type=int, default=8, help="one lego pair per this many frames (default 8)")
    ap.add_argument("--out", type=Path, default=None, help="write all rows and summaries as JSON here")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from vscene_engine.camera_formats import load_cameras
    from vscene_engine.imageio import load_image
    from vscene_engine.views import prepare_image

    all_rows, summaries, ran = [], {}, False
    fern = args.data / "llff_fern"
    if args.only in (None, "fern"):
        if (fern / "poses_bounds.npy").is_file() and (fern / "images_8").is_dir():
            files = sorted(p for p in (fern / "images_8").iterdir() if p.suffix.lower() in (".png", ".jpg", ".jpeg"))
            img0 = load_image(files[0])
            W, H = int(img0.shape[1]), int(img0.shape[0])
            cams = load_cameras(fern / "poses_bounds.npy", width=W, height=H, dtype=torch.float64)
            cache = {}

            def load_fern(i):
                if i not in cache:
                    cache[i] = load_image(files[i])
                return cache[i]

            methods = METHODS_WITHHELD
            rows = evaluate("fern", FERN_PAIRS, load_fern, cams, methods, W, H)
            summaries["fern"] = summarize(rows, methods)
            print_summary(f"LLFF fern {W}x{H}, intrinsics withheld, {len(FERN_PAIRS)} pairs 4-19 frames apart",
                          summaries["fern"])
            all_rows += rows
            ran = True
        else:
            print(f"skipped fern: not found at {fern}")
    lego = args.data / "nerf_synthetic_lego"
    if args.only in (None, "lego"):
        if (lego / "transforms_train.json").is_file():
            from PIL import Image

            cams = load_cameras(lego / "transforms_train.json").to(dtype=torch.float64)
            W, H = cams.width, cams.height
            pairs = lego_pairs(cams, step=args.lego_step)
            cache = {}

            def load_lego(i):
                if i not in cache:
                    rgba = np.asarray(Image.open(lego / "train" / f"{cams.names[i]}.png").convert("RGBA"), np.float32)
                    cache[i] = prepare_image(torch.from_numpy(rgba / 255.0))  # composited over white
                return cache[i]

            methods = ("given",) + METHODS_WITHHELD
            rows = evaluate("lego", [(i, j) for i, j, _ in pairs], load_lego, cams, methods, W, H)
            summaries["lego"] = summarize(rows, methods)
            print_summary(f"NeRF-synthetic lego {W}x{H}, {len(pairs)} pairs rotated 10-40 deg",
                          summaries["lego"])
            all_rows += rows
            ran = True
        else:
            print(f"skipped lego: not found at {lego}")
    if not ran:
        return 0
    if args.pairs:
        print_pairs(all_rows)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"summaries": summaries, "rows": all_rows}, indent=1))
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
