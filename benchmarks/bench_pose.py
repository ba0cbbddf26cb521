"""Relative-pose accuracy of ``vscene_engine.views.pose.estimate_relative_pose`` with the intrinsics given and withheld.

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

``--bound`` (fern only, instead of the comparison) measures how well two views *can* fix the focal: per pair, at the
ground-truth geometry (LLFF poses and focal scaled to ``images_8``), with the estimator's own self-calibration
inliers and the match noise measured there (residual std after fitting the points to the true cameras), the
Cramer-Rao lower bound on ``sigma_f / f`` of a two-view shared-focal bundle adjustment (:func:`focal_crlb`); next to
it the estimator's focal error, the focal at the real matches' cost minimum reached from the truth
(:func:`data_optimum_focal`), and a Monte-Carlo of the estimator on synthetic matches with the same geometry and
noise (``--mc`` runs per pair). ``tests/test_pose_bound.py`` checks the bound on a synthetic scene.
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
sys.path.insert(0, str(ROOT / "benchmarks"))
from bench_pose_fern import DEFAULT_PAIRS as FERN_PAIRS  # noqa: E402  (the same 13 fern pairs, 4-19 frames apart)
from bench_pose_fern import direction_error_deg, rotation_error_deg  # noqa: E402

METHODS_WITHHELD = ("60deg", "selfcal", "auto")


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
    from vscene_engine.views.pose import estimate_relative_pose, focal_from_fov

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

    from vscene_engine.views.pose import DegeneratePairError

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


# ------------------------------------------------------------------ Cramer-Rao bound of the focal (--bound)
def _skew_rows(v):
    """[N,3] -> [N,3,3] cross-product matrices."""
    import numpy as np

    S = np.zeros(v.shape[:-1] + (3, 3))
    S[..., 0, 1], S[..., 0, 2], S[..., 1, 2] = -v[..., 2], v[..., 1], -v[..., 0]
    return S - np.swapaxes(S, -1, -2)


def _project_jac(Y, f):
    """Pinhole ``u = f Y[:2] / Y[2] + pp`` of camera-frame points ``Y`` [N,3]: returns ``u - pp`` [N,2] and
    ``du/dY`` [N,2,3]."""
    import numpy as np

    z = Y[:, 2]
    p = Y[:, :2] / z[:, None]
    J = np.zeros((len(Y), 2, 3))
    J[:, 0, 0] = J[:, 1, 1] = f / z
    J[:, :, 2] = -f * p / z[:, None]
    return f * p, J


def fit_points(ua, ub, R, t, f, pp, iters: int = 10):
    """Points ``X`` [N,3] (camera A's frame) minimising the reprojection error of matches ``ua``/``ub`` [N,2] in two
    fixed cameras (A = identity, B: ``x_b = R x_a + t``, shared focal ``f``, principal point ``pp``): linear
    triangulation, then ``iters`` Gauss-Newton steps per point. Returns ``(X, residuals [N,4])`` (pixels)."""
    import numpy as np

    na, nb = (ua - pp) / f, (ub - pp) / f
    P1, P2 = np.eye(3, 4), np.hstack([R, t.reshape(3, 1)])
    A = np.stack([na[:, :1] * P1[2] - P1[0], na[:, 1:] * P1[2] - P1[1],
                  nb[:, :1] * P2[2] - P2[0], nb[:, 1:] * P2[2] - P2[1]], 1)  # DLT, [N,4,4]
    Xh = np.linalg.svd(A)[2][:, -1]
    X = Xh[:, :3] / Xh[:, 3:]
    for _ in range(iters):
        pa, Ja = _project_jac(X, f)
        pb, Jb = _project_jac(X @ R.T + t, f)
        r = np.concatenate([pa + pp - ua, pb + pp - ub], 1)
        J = np.concatenate([Ja, Jb @ R], 1)
        H = np.einsum("nki,nkj->nij", J, J) + 1e-12 * np.eye(3)
        X = X - np.linalg.solve(H, np.einsum("nki,nk->ni", J, r)[..., None])[..., 0]
    pa, _ = _project_jac(X, f)
    pb, _ = _project_jac(X @ R.T + t, f)
    return X, np.concatenate([pa + pp - ua, pb + pp - ub], 1)


def match_noise(res, clip: float = 3.0):
    """Matching noise sigma (pixels per coordinate) from the residuals [N,4] of :func:`fit_points`: each point leaves
    4 - 3 = 1 degree of freedom, so ``e_i = |r_i|^2 ~ sigma^2 chi2(1)``. Robust start ``median(e) / 0.455``
    (the median of chi2(1)), then the mean of ``e`` over the points within ``clip`` sigma.
    Returns (sigma, kept mask)."""
    import numpy as np

    e = (res ** 2).sum(1)
    s2 = float(np.median(e)) / 0.455
    keep = e < clip ** 2 * s2
    return float(np.sqrt(e[keep].mean())), keep


def camera_jacobians(X, R, t, f):
    """Jacobians of the 4 pixel coordinates of each point (A's u, v, then B's) in the two-view shared-focal bundle
    adjustment. Camera parameters (6): log f, a rotation update ``w`` (``R <- exp([w]x) R``, 3) and the unit
    translation's two tangent coordinates; A is the identity and |t| = 1 (the gauge). Point parameters: ``X`` (3).
    Returns ``Jc`` [N,4,6] and ``Jp`` [N,4,3]."""
    import numpy as np

    t = t / np.linalg.norm(t)
    e1 = np.cross(t, np.eye(3)[int(np.argmin(np.abs(t)))])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(t, e1)
    RX = X @ R.T
    pa, Ja = _project_jac(X, f)
    pb, Jb = _project_jac(RX + t, f)
    Jc = np.zeros((len(X), 4, 6))
    Jc[:, :2, 0], Jc[:, 2:, 0] = pa, pb  # d u / d log f = u - pp
    Jc[:, 2:, 1:4] = -Jb @ _skew_rows(RX)  # d(RX) = w x RX = -[RX]x w
    Jc[:, 2:, 4], Jc[:, 2:, 5] = Jb @ e1, Jb @ e2
    return Jc, np.concatenate([Ja, Jb @ R], 1)


def focal_crlb(X, R, t, f, sigma) -> float:
    """Cramer-Rao lower bound on the relative standard deviation of the focal (``sigma_f / f`` = std of log f) of any
    unbiased two-view shared-focal estimator, for points ``X`` [N,3] (A's frame) seen by A (identity) and B
    (``x_b = R x_a + t``) with i.i.d. Gaussian pixel noise ``sigma`` on every coordinate, principal point known.
    Fisher information ``J^T J / sigma^2`` over (camera (6), points (3 N)); the points are eliminated by the Schur
    complement ``S = sum_i Jc_i^T Jc_i - Jc_i^T Jp_i (Jp_i^T Jp_i)^-1 Jp_i^T Jc_i``; the bound is
    ``sigma sqrt((S^-1)_00)`` (inf when S is singular: the focal is not determined)."""
    import numpy as np

    Jc, Jp = camera_jacobians(X, R, t, f)
    W = np.einsum("nki,nkj->nij", Jc, Jp)
    V = np.einsum("nki,nkj->nij", Jp, Jp)
    S = np.einsum("nki,nkj->ij", Jc, Jc) - np.einsum("nij,njk->ik", W, np.linalg.solve(V, W.transpose(0, 2, 1)))
    try:
        v = float(np.linalg.inv(S)[0, 0])
    except np.linalg.LinAlgError:
        return float("inf")
    return sigma * math.sqrt(v) if v > 0 and math.isfinite(v) else float("inf")


def axis_angle_deg(R) -> float:
    """Angle between the two optical axes (z of A and z of B, i.e. ``acos(R[2,2])``)."""
    return math.degrees(math.acos(max(-1.0, min(1.0, float(R[2, 2])))))


def selfcal_matches(img_a, img_b):
    """The matches and the self-calibration of ``estimate_relative_pose`` with its default settings (intrinsics
    withheld, same-size images): SIFT, mutual ratio-test matching, PoseLib shared-focal LO-RANSAC. Uses the pose
    module's private steps so the bound sees exactly the estimator's inliers. Returns (ua, ub, sc) (``sc`` as
    ``pose._self_calibrate`` returns it: f, R, t, inl, focals, pp) or (ua, ub, None)."""
    import inspect

    from vscene_engine.views import pose

    d = {k: v.default for k, v in inspect.signature(pose.estimate_relative_pose).parameters.items()}
    cv2 = pose._import_cv2()
    A, B = pose._as_image(img_a, "image A"), pose._as_image(img_b, "image B")
    H, W = A.shape[:2]
    det = [pose._detect(cv2, pose._gray_u8(im), d["max_side"], d["max_upscale"], d["max_features"],
                        d["contrast_threshold"]) for im in (A, B)]
    m = pose._match(det[0][1], det[1][1], d["ratio"])
    ua, ub = det[0][0][m[:, 0]], det[1][0][m[:, 1]]
    sc = pose._self_calibrate(pose._import_poselib(), ua, ub, W, H, d["ransac_px"], d["n_trials"], d["seed"])
    return ua, ub, sc


def monte_carlo_focal(X, R, t, f, pp, sigma, W, H, n: int, seed: int = 0):
    """The estimator's self-calibration (``pose._self_calibrate`` with ``estimate_relative_pose``'s default threshold
    and seeds) on ``n`` synthetic match sets: points ``X`` [N,3] projected into A (identity) and B
    (``x_b = R x_a + t``) with focal ``f``, plus Gaussian pixel noise ``sigma``. Returns the log focal errors [n]
    (NaN where no model was found)."""
    import inspect

    import numpy as np

    from vscene_engine.views import pose

    d = {k: v.default for k, v in inspect.signature(pose.estimate_relative_pose).parameters.items()}
    poselib, g = pose._import_poselib(), np.random.default_rng(seed)
    pa, _ = _project_jac(X, f)
    pb, _ = _project_jac(X @ R.T + t, f)
    out = np.full(n, np.nan)
    for k in range(n):
        ua, ub = pa + pp + sigma * g.standard_normal(pa.shape), pb + pp + sigma * g.standard_normal(pb.shape)
        sc = pose._self_calibrate(poselib, ua, ub, W, H, d["ransac_px"], d["n_trials"], d["seed"] + k)
        if sc is not None:
            out[k] = math.log(sc["f"] / f)
    return out


def data_optimum_focal(R0, t0, f0, ua, ub, W, H) -> float:
    """Focal at the minimum of the summed squared Sampson error (pixels) of matches ``ua``/``ub`` over (focal,
    rotation, translation direction), principal point at the centre, found by Levenberg-Marquardt from
    ``(R0, t0, f0)``. Started at the ground truth it tells whether the real matches' optimum sits at the truth."""
    import numpy as np
    from scipy.optimize import least_squares

    from vscene_engine.views import pose

    t0 = t0 / np.linalg.norm(t0)
    e1 = np.cross(t0, np.eye(3)[int(np.argmin(np.abs(t0)))])
    e1 /= np.linalg.norm(e1)
    e2 = np.cross(t0, e1)

    def res(p):
        t = t0 + p[3] * e1 + p[4] * e2
        K = pose._K_from_focal(f0 * math.exp(p[5]), W, H)
        return pose._sampson_px(pose._rodrigues(p[:3]) @ R0, t / np.linalg.norm(t), ua, ub, K, K)

    return f0 * math.exp(float(least_squares(res, np.zeros(6), method="lm", x_scale=1e-3).x[5]))


def bound_rows(pairs, load, cams, W, H, n_mc: int = 0):
    """One dict per pair: the true geometry (rotation, optical-axis angle), the estimator's self-calibrated focal error
    and inliers, the match noise at the ground truth and the focal's CRLB there (:func:`focal_crlb`)."""
    import numpy as np

    rows = []
    for i, j in pairs:
        M = (cams.w2c[j].double() @ cams.c2w[i].double()).numpy()
        R, t = M[:3, :3], M[:3, 3] / np.linalg.norm(M[:3, 3])  # the bound is for the gauge |t| = 1
        f = float(cams.K[i, 0, 0])
        pp = np.array([W / 2.0, H / 2.0])
        ua, ub, sc = selfcal_matches(load(i), load(j))
        row = {"pair": [i, j], "rotation_deg": rotation_error_deg(R, np.eye(3)), "axis_angle_deg": axis_angle_deg(R),
               "n_matches": int(len(ua))}
        if sc is None:
            rows.append(dict(row, n_inliers=0))
            continue
        inl = sc["inl"]
        X, res = fit_points(ua[inl], ub[inl], R, t, f, pp)
        sigma, keep = match_noise(res)
        keep &= (X[:, 2] > 0) & ((X @ R.T + t)[:, 2] > 0)
        crlb = focal_crlb(X[keep], R, t, f, sigma)
        err = sc["f"] / f - 1.0
        row["optimum_from_truth_err"] = data_optimum_focal(R, t, f, ua[inl], ub[inl], W, H) / f - 1.0
        row.update(n_inliers=int(inl.sum()), n_used=int(keep.sum()), sigma_px=sigma, crlb=crlb,
                   selfcal_focal_err=err, err_over_crlb=abs(math.log1p(err)) / crlb,
                   reach_5pct=bool(2.0 * crlb <= 0.05))  # an unbiased estimator at the bound: 95% within 5%
        if n_mc:
            mc = monte_carlo_focal(X[keep], R, t, f, pp, sigma, W, H, n_mc, seed=i * 100 + j)
            row.update(mc_std=float(np.nanstd(mc, ddof=1)),
                       mc_within_5pct=float(np.mean(np.abs(np.expm1(mc)) <= 0.05)))  # NaN (no model) counts as a miss
        rows.append(row)
    return rows


def print_bound(rows):
    print("\n| pair | rotation deg | axis angle deg | inliers (used) | noise px | CRLB sigma_f/f | 2 sigma <= 5%? | "
          "self-cal focal err | err / CRLB | optimum refined from the truth | MC std (synthetic, same geometry + "
          "noise) | MC within 5% |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        head = f"| {r['pair'][0]}-{r['pair'][1]} | {r['rotation_deg']:.1f} | {r['axis_angle_deg']:.1f} |"
        if not r["n_inliers"]:
            print(f"{head} 0 | | | | no self-calibration | |")
            continue
        print(f"{head} {r['n_inliers']} ({r['n_used']}) | {r['sigma_px']:.2f} | {100 * r['crlb']:.1f}% | "
              f"{'yes' if r['reach_5pct'] else 'no'} | {100 * r['selfcal_focal_err']:+.1f}% | "
              f"{r['err_over_crlb']:.1f} | {100 * r['optimum_from_truth_err']:+.1f}% |"
              + (f" {100 * r['mc_std']:.1f}% | {100 * r['mc_within_5pct']:.0f}% |" if "mc_std" in r else " | |"))


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
    ap.add_argument("--bound", action="store_true",
                    help="instead of the method comparison: per fern pair, the Cramer-Rao bound of the focal at the "
                         "ground truth with the estimator's inliers and the measured match noise")
    ap.add_argument("--mc", type=int, default=40, help="with --bound: Monte-Carlo runs of the self-calibration on "
                                                        "synthetic matches per pair (0 = none)")
    args = ap.parse_args(argv)

    import numpy as np
    import torch

    from vscene_engine.io.camera_formats import load_cameras
    from vscene_engine.io.images import load_image
    from vscene_engine.views.pair import prepare_image

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

            if args.bound:
                rows = bound_rows(FERN_PAIRS, load_fern, cams, W, H, n_mc=args.mc)
                print(f"\n### LLFF fern {W}x{H}: Cramer-Rao bound of the self-calibrated focal at the ground truth")
                print_bound(rows)
                if args.out is not None:
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(json.dumps({"bound": rows}, indent=1))
                return 0
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
