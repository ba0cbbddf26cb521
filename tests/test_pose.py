"""Relative pose from two photos (vscene_engine.pose): synthetic renders with known cameras, degenerate pairs, and
real LLFF fern pairs (skipped when ../shared/data/llff_fern is absent)."""
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("cv2")
pytest.importorskip("scipy")

from vscene_engine.cameras import Cameras  # noqa: E402
from vscene_engine.pose import (  # noqa: E402
    DegeneratePairError,
    PoseEstimate,
    estimate_relative_pose,
    focal_from_fov,
)

FERN = Path(__file__).resolve().parents[2] / "shared" / "data" / "llff_fern"


def rot_err_deg(R_est, R_true):
    c = (np.trace(np.asarray(R_est) @ np.asarray(R_true).T) - 1) / 2
    return math.degrees(math.acos(float(np.clip(c, -1, 1))))


def dir_err_deg(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    c = a @ b / (np.linalg.norm(a) * np.linalg.norm(b))
    return math.degrees(math.acos(float(np.clip(c, -1, 1))))


def true_relative(c2w_a, c2w_b):
    """OpenCV (R, t) with x_b = R x_a + t."""
    M = torch.linalg.inv(c2w_b.double()) @ c2w_a.double()
    return M[:3, :3].numpy(), M[:3, 3].numpy()


# ---------------------------------------------------------------------------------------------- synthetic scene
@pytest.fixture(scope="module")
def synth():
    """Renders of the procedural scene at 256x192 on white: views 0, 1 = the two demo cameras (the 'two photos' of
    the demo); view 2 = camera 0's centre turned 10 deg (yaw)."""
    from vscene_engine.rasterize import render
    from vscene_engine.synthetic import demo_cameras, procedural_scene

    demo = demo_cameras(256, 192)
    a = math.radians(10.0)
    yaw = torch.tensor([[math.cos(a), 0, math.sin(a)], [0, 1, 0], [-math.sin(a), 0, math.cos(a)]])
    rot = demo.c2w[0].clone()
    rot[:3, :3] = demo.c2w[0, :3, :3] @ yaw
    cams = Cameras(torch.cat([demo.c2w, rot[None]]), demo.K[0], 256, 192, 0.5, 10.0)
    out = render(procedural_scene(), cams, background=(1.0, 1.0, 1.0))
    return out.rgb, out.depth, cams


def _check_contract(est: PoseEstimate, width, height):
    cams = est.cameras
    assert isinstance(cams, Cameras) and len(cams) == 2
    assert (cams.width, cams.height) == (width, height)
    cams.validate()
    assert torch.allclose(cams.c2w[0], torch.eye(4), atol=1e-6)
    assert abs(float(cams.centers[1].norm()) - 1.0) < 1e-5  # baseline normalised
    assert 0 < est.near < est.far
    assert torch.allclose(cams.near, torch.tensor(est.near)) and torch.allclose(cams.far, torch.tensor(est.far))
    P = est.points3d
    assert P.ndim == 2 and P.shape[1] == 3 and P.shape[0] >= 8
    assert est.colors.shape == P.shape and float(est.colors.min()) >= 0 and float(est.colors.max()) <= 1
    uv, depth = cams.project(P)
    assert bool((depth > 0).all())  # in front of both cameras
    r = est.report
    for k in ("n_keypoints_a", "n_keypoints_b", "n_matches", "n_inliers", "inlier_ratio", "median_parallax_deg",
              "reproj_error_px", "confidence", "homography_inlier_ratio"):
        assert k in r, k
    assert 0.0 <= r["confidence"] <= 1.0 and 0.0 <= r["inlier_ratio"] <= 1.0
    assert r["n_inliers"] <= r["n_matches"] <= min(r["n_keypoints_a"], r["n_keypoints_b"])
    json.dumps(r)  # plain Python values (the report goes into JSON provenance)


@pytest.mark.parametrize("a,b", [(0, 1), (1, 0)])
def test_synthetic_pair_recovers_relative_pose(synth, a, b):
    rgb, depth, cams = synth
    est = estimate_relative_pose(rgb[a], rgb[b], cams.K[a], cams.K[b])
    _check_contract(est, 256, 192)
    R_true, t_true = true_relative(cams.c2w[a], cams.c2w[b])
    assert rot_err_deg(est.R.numpy(), R_true) < 1.0
    assert dir_err_deg(est.t.numpy(), t_true) < 5.0
    # camera B's centre in A's frame points the right way, at unit distance
    c_true = (torch.linalg.inv(cams.c2w[a].double()) @ cams.c2w[b].double())[:3, 3].numpy()
    assert dir_err_deg(est.cameras.centers[1].numpy(), c_true) < 5.0
    # scaled by the true baseline, the points sit on the rendered surface (depth map of view a)
    scale = float(np.linalg.norm(t_true))
    P = est.points3d.double() * scale
    # the points are in camera A's frame: project with K_a only
    K = cams.K[a].double()
    pix = (P @ K.T)[:, :2] / P[:, 2:3]
    ij = pix.floor().long()
    inside = (ij[:, 0] >= 0) & (ij[:, 0] < 256) & (ij[:, 1] >= 0) & (ij[:, 1] < 192)
    d_render = depth[a, ij[inside, 1], ij[inside, 0], 0].double()
    rel = ((P[inside, 2] - d_render).abs() / d_render)
    assert inside.float().mean() > 0.9
    assert float(rel.median()) < 0.05
    assert est.report["confidence"] > 0.3


def test_different_image_sizes(synth):
    """B enlarged to another size and aspect, with its own K: the pose is unchanged, camera B's K refers to A's size
    and .resized() to B's size gives back K_b."""
    from vscene_engine.imageio import resize_image

    rgb, _, cams = synth
    wb, hb = 320, 256
    img_b = resize_image(rgb[1], wb, hb)
    K_b = cams.resized(wb, hb).K[1]
    est = estimate_relative_pose(rgb[0], img_b, cams.K[0], K_b)
    assert (est.cameras.width, est.cameras.height) == (256, 192)
    assert tuple(est.report["size_b"]) == (wb, hb)
    assert torch.allclose(est.cameras[1].resized(wb, hb).K[0], K_b, atol=1e-4)
    R_true, t_true = true_relative(cams.c2w[0], cams.c2w[1])
    assert rot_err_deg(est.R.numpy(), R_true) < 1.0
    assert dir_err_deg(est.t.numpy(), t_true) < 5.0


def test_grayscale_input_and_determinism(synth):
    rgb, _, cams = synth
    gray_a, gray_b = rgb[0].mean(-1), rgb[1].mean(-1)
    e1 = estimate_relative_pose(gray_a, gray_b, cams.K[0], cams.K[1], seed=3)
    e2 = estimate_relative_pose(gray_a, gray_b, cams.K[0], cams.K[1], seed=3)
    assert torch.equal(e1.cameras.c2w, e2.cameras.c2w)
    assert e1.report["n_inliers"] == e2.report["n_inliers"]
    R_true, _ = true_relative(cams.c2w[0], cams.c2w[1])
    assert rot_err_deg(e1.R.numpy(), R_true) < 1.0


def test_identical_images_raise(synth):
    rgb, _, cams = synth
    with pytest.raises(DegeneratePairError, match="identical"):
        estimate_relative_pose(rgb[0], rgb[0], cams.K[0], cams.K[0])
    g = torch.Generator().manual_seed(0)
    noisy = (rgb[0] + 0.01 * torch.randn(rgb[0].shape, generator=g)).clamp(0, 1)
    with pytest.raises(DegeneratePairError, match="identical"):
        estimate_relative_pose(rgb[0], noisy, cams.K[0], cams.K[0])


def test_pure_rotation_raises(synth):
    rgb, _, cams = synth
    with pytest.raises(DegeneratePairError, match="parallax"):
        estimate_relative_pose(rgb[0], rgb[2], cams.K[0], cams.K[2])


def test_unrelated_images_raise(synth):
    import torch.nn.functional as F

    rgb, _, cams = synth
    g = torch.Generator().manual_seed(0)
    noise = torch.rand(192, 256, 3, generator=g)
    with pytest.raises(DegeneratePairError, match="matches"):
        estimate_relative_pose(rgb[0], noise, cams.K[0], cams.K[0])
    # an upside-down (mirrored) crop of another view, blown up to full size: not a view of the same scene
    crop = rgb[1][40:, 30:].flip(0).permute(2, 0, 1)[None]
    crop = F.interpolate(crop, size=(192, 256), mode="bilinear", align_corners=False)[0].permute(1, 2, 0)
    with pytest.raises(DegeneratePairError, match="matches"):
        estimate_relative_pose(rgb[0], crop.contiguous(), cams.K[0], cams.K[0])


def test_small_and_invalid_images_raise(synth):
    rgb, _, cams = synth
    with pytest.raises(DegeneratePairError, match="64 px"):
        estimate_relative_pose(rgb[0][:48, :60], rgb[1][:48, :60], cams.K[0], cams.K[1])
    bad = rgb[1].clone()
    bad[5, 5, 0] = float("nan")
    with pytest.raises(DegeneratePairError, match="NaN"):
        estimate_relative_pose(rgb[0], bad, cams.K[0], cams.K[1])
    assert issubclass(DegeneratePairError, ValueError)
    with pytest.raises(ValueError):
        estimate_relative_pose(rgb[0], rgb[1], torch.zeros(3, 3), cams.K[1])


def test_focal_from_fov():
    assert focal_from_fov(200, 100, 90.0) == pytest.approx(100.0)
    assert focal_from_fov(200, 100, 90.0, axis="vertical") == pytest.approx(50.0)
    assert focal_from_fov(300, 400, 90.0, axis="diagonal") == pytest.approx(250.0)
    f = focal_from_fov(640, 480, 60.0)
    assert 2 * math.degrees(math.atan(320 / f)) == pytest.approx(60.0)
    with pytest.raises(ValueError):
        focal_from_fov(640, 480, 60.0, axis="sideways")
    with pytest.raises(ValueError):
        focal_from_fov(640, 480, 180.0)
    with pytest.raises(ValueError):
        focal_from_fov(0, 480, 60.0)


# ---------------------------------------------------------------------------------------------- real data
FERN_PAIRS = [(0, 4), (2, 8), (5, 11), (9, 13), (13, 19)]


@pytest.fixture(scope="module")
def fern():
    if not (FERN / "poses_bounds.npy").is_file() or not (FERN / "images_8").is_dir():
        pytest.skip(f"LLFF fern not found at {FERN}")
    from vscene_engine.camera_formats import load_cameras
    from vscene_engine.imageio import load_image

    files = sorted((FERN / "images_8").glob("*.png"))
    img0 = load_image(files[0])
    assert tuple(img0.shape[:2]) == (378, 504)
    cams = load_cameras(FERN / "poses_bounds.npy", width=504, height=378, dtype=torch.float64)
    assert len(cams) == len(files)
    return files, cams, load_image


@pytest.mark.parametrize("i,j", FERN_PAIRS)
def test_fern_pairs(fern, i, j):
    files, cams, load_image = fern
    est = estimate_relative_pose(load_image(files[i]), load_image(files[j]), cams.K[i], cams.K[j])
    _check_contract(est, 504, 378)
    R_true, t_true = true_relative(cams.c2w[i], cams.c2w[j])
    assert rot_err_deg(est.R.numpy(), R_true) <= 1.0
    assert dir_err_deg(est.t.numpy(), t_true) <= 5.0
    # near bound in LLFF units (baseline-scaled) is below the dataset's own near bound, and of the same order
    near_llff = est.near * float(np.linalg.norm(t_true))
    assert 0.3 * float(cams.near[i]) < near_llff < 1.0 * float(cams.near[i])


def test_fern_mirrored_pair_raises(fern):
    files, cams, load_image = fern
    with pytest.raises(DegeneratePairError, match="agree with one camera motion|matches"):
        estimate_relative_pose(load_image(files[0]), load_image(files[4]).flip(0), cams.K[0], cams.K[4],
                               max_features=2000)
