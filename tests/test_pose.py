"""Relative pose from two photos (vscene_engine.views.pose): synthetic renders with known cameras, degenerate pairs,
self-calibration of the focal length and its guard, EXIF focal priors, and real LLFF fern pairs (skipped when
../shared/data/llff_fern is absent)."""
import io
import json
import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("cv2")
pytest.importorskip("scipy")

from vscene_engine.core.cameras import Cameras  # noqa: E402
from vscene_engine.views.pose import (  # noqa: E402
    SELFCAL_MIN_AXIS_COPLANARITY,
    SELFCAL_MIN_ROTATION_DEG,
    DegeneratePairError,
    PoseEstimate,
    estimate_relative_pose,
    exif_focal_35mm,
    focal_from_fov,
    fov_from_35mm,
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
    from vscene_engine.render.rasterize import render
    from vscene_engine.tools.synthetic import demo_cameras, procedural_scene

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
    json.dumps(r, allow_nan=False)  # plain Python values, strict JSON (the report goes into JSON provenance)


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
    from vscene_engine.io.images import resize_image

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
    with pytest.raises(DegeneratePairError, match="matches") as info:
        estimate_relative_pose(rgb[0], noise, cams.K[0], cams.K[0])
    # the refusal names the learned alternatives for hard pairs
    assert "'da3'" in str(info.value) and "'noposplat'" in str(info.value)
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
    from vscene_engine.io.camera_formats import load_cameras
    from vscene_engine.io.images import load_image

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


# ---------------------------------------------------------------------------------------------- self-calibration
SC_W, SC_H, SC_FOV = 320, 240, 55.0


@pytest.fixture(scope="module")
def synth_general():
    """Two renders (320x240, 55 deg FOV) of the procedural scene in general position for self-calibration: ~12.6 deg
    of rotation, optical axes that do not meet (each camera looks at a different point)."""
    from vscene_engine.core.cameras import look_at
    from vscene_engine.render.rasterize import render
    from vscene_engine.tools.synthetic import procedural_scene

    f = focal_from_fov(SC_W, SC_H, SC_FOV)
    eyes = torch.tensor([[0.4, -0.15, 0.15], [0.6, -0.1, 0.3]])
    targets = torch.tensor([[-0.5, 0.5, 3.2], [0.4, 0.3, 3.0]])
    K = torch.tensor([[f, 0, SC_W / 2], [0, f, SC_H / 2], [0, 0, 1.0]])
    cams = Cameras(look_at(eyes, targets), K, SC_W, SC_H, 0.5, 10.0)
    return render(procedural_scene(), cams, background=(1.0, 1.0, 1.0)).rgb, cams


def test_self_calibration_recovers_focal_synthetic(synth_general):
    rgb, cams = synth_general
    f_true = float(cams.K[0, 0, 0])
    est = estimate_relative_pose(rgb[0], rgb[1])  # intrinsics withheld
    _check_contract(est, SC_W, SC_H)
    r = est.report
    assert r["focal_source"] == "self-calibrated", r["focal_reason"]
    assert r["self_calibration"]["trusted"] and not r["self_calibration"]["failed_checks"]
    assert abs(r["focal_px"] / f_true - 1) < 0.03
    assert r["focal_confidence"] >= 0.2
    assert abs(r["fov_deg"] - SC_FOV) < 2.0
    # the cameras carry the self-calibrated focal, principal point at the image centre
    assert torch.allclose(est.cameras.K[:, 0, 0], torch.tensor(r["focal_px"], dtype=torch.float32))
    assert torch.allclose(est.cameras.K[0, :2, 2], torch.tensor([SC_W / 2, SC_H / 2]))
    R_true, t_true = true_relative(cams.c2w[0], cams.c2w[1])
    assert rot_err_deg(est.R.numpy(), R_true) < 1.0
    assert dir_err_deg(est.t.numpy(), t_true) < 5.0
    json.dumps(r)


def test_fixating_cameras_detected_never_confident_wrong_focal(synth):
    """The demo pair looks at one point (an orbit around the objects): the textbook degenerate case of two-view
    self-calibration. The guard must reject it and fall back to the prior with a warning."""
    rgb, _, cams = synth
    with pytest.warns(UserWarning, match="field of view"):
        est = estimate_relative_pose(rgb[0], rgb[1])
    r = est.report
    sc = r["self_calibration"]
    assert sc is not None and not sc["trusted"]
    assert sc["axis_coplanarity"] < SELFCAL_MIN_AXIS_COPLANARITY
    assert any("fixating" in c for c in sc["failed_checks"])
    assert r["focal_source"] == "default-fov" and r["focal_confidence"] <= 0.1
    assert r["focal_px"] == pytest.approx(focal_from_fov(256, 192, 60.0))
    assert "fixating" in r["focal_reason"] and "noposplat" in r["focal_warning"]
    # the prior gives a usable pose (the demo's true FOV is 55 deg)
    R_true, _ = true_relative(cams.c2w[0], cams.c2w[1])
    assert rot_err_deg(est.R.numpy(), R_true) < 2.0


def test_given_intrinsics_never_overridden(synth_general):
    """A user FOV (here 50 deg; the pair self-calibrates to 55) is used exactly as given."""
    from vscene_engine.views.pair import make_view_pair

    rgb, _ = synth_general
    f50 = focal_from_fov(SC_W, SC_H, 50.0)
    K = torch.tensor([[f50, 0, SC_W / 2], [0, f50, SC_H / 2], [0, 0, 1.0]])
    est = estimate_relative_pose(rgb[0], rgb[1], K, K)
    assert est.report["focal_source"] == "user" and est.report["self_calibration"] is None
    assert torch.equal(est.cameras.K, torch.stack([K, K]))
    views = make_view_pair(rgb[0], rgb[1], fov_deg=50.0, size=SC_W)
    assert views.provenance["focal_source"] == "user" and views.provenance["fov_deg"] == 50.0
    assert torch.allclose(views.cameras.K[:, 0, 0], torch.tensor(f50))
    # fov 0 = auto: self-calibrated
    auto = make_view_pair(rgb[0], rgb[1], fov_deg=0, size=SC_W)
    assert auto.provenance["focal_source"] == "self-calibrated"
    assert abs(float(auto.cameras.K[0, 0, 0]) / focal_from_fov(SC_W, SC_H, SC_FOV) - 1) < 0.03


def test_exif_prior_is_used_and_self_calibration_cross_checks(synth_general):
    rgb, _ = synth_general
    fov = fov_from_35mm(50.0)  # wrong on purpose (the renders are 55 deg wide): EXIF still wins, with a warning
    with pytest.warns(UserWarning, match="cropped"):
        est = estimate_relative_pose(rgb[0], rgb[1], prior_fov_deg=fov, prior_fov_axis="diagonal",
                                     prior_source="exif")
    r = est.report
    assert r["focal_source"] == "exif" and r["focal_confidence"] == pytest.approx(0.9)
    assert r["focal_px"] == pytest.approx(focal_from_fov(SC_W, SC_H, fov, "diagonal"))
    assert r["self_calibration"]["trusted"]


def test_view_pair_auto_values():
    from vscene_engine.views.pair import _is_auto

    assert _is_auto(None) and _is_auto(0) and _is_auto(0.0) and _is_auto("auto") and _is_auto(" Auto ")
    assert not _is_auto(60.0)
    with pytest.raises(ValueError, match="auto"):
        _is_auto("wide")


def _jpeg_with_exif(tags: dict, size=(64, 48)) -> io.BytesIO:
    from PIL import Image

    img = Image.new("RGB", size, (120, 90, 60))
    exif = Image.Exif()
    sub = exif.get_ifd(0x8769)
    sub.update(tags)
    buf = io.BytesIO()
    img.save(buf, "JPEG", exif=exif)
    buf.seek(0)
    return buf


def test_exif_focal_35mm():
    from PIL.TiffImagePlugin import IFDRational

    assert exif_focal_35mm(_jpeg_with_exif({41989: 28})) == pytest.approx(28.0)
    # FocalLength 4.25 mm on a 6.17 x 4.55 mm sensor (focal-plane resolution in pixels per cm): 24.0 mm equivalent
    tags = {37386: IFDRational(425, 100), 41486: IFDRational(4000000, 617), 41487: IFDRational(3000000, 455),
            41488: 3, 40962: 4000, 40963: 3000}
    assert exif_focal_35mm(_jpeg_with_exif(tags)) == pytest.approx(4.25 * math.hypot(36, 24) / math.hypot(6.17, 4.55))
    # FocalLengthIn35mmFilm = 0 means unknown: falls through to FocalLength (absent here) -> None
    assert exif_focal_35mm(_jpeg_with_exif({41989: 0})) is None
    assert exif_focal_35mm(_jpeg_with_exif({})) is None
    assert exif_focal_35mm(io.BytesIO(b"not an image")) is None
    # 35 mm equivalent -> diagonal FOV -> focal: a 36 x 24 mm frame at 100 px/mm with a 50 mm lens is 5000 px
    assert focal_from_fov(3600, 2400, fov_from_35mm(50.0), "diagonal") == pytest.approx(5000.0)
    assert fov_from_35mm(28.0) == pytest.approx(75.38, abs=0.01)
    with pytest.raises(ValueError):
        fov_from_35mm(0)


def test_cli_exif_prior(tmp_path):
    from vscene_engine.tools.cli import exif_fov_prior

    a, b, c = tmp_path / "a.jpg", tmp_path / "b.jpg", tmp_path / "c.jpg"
    a.write_bytes(_jpeg_with_exif({41989: 26}).getvalue())
    b.write_bytes(_jpeg_with_exif({41989: 26}).getvalue())
    c.write_bytes(_jpeg_with_exif({41989: 52}).getvalue())  # zoomed: no shared focal
    assert exif_fov_prior(a, b) == (pytest.approx(fov_from_35mm(26.0)), "diagonal", "exif")
    assert exif_fov_prior(a, c) is None


FERN_SELFCAL_PAIRS = [(0, 4), (3, 9)]


@pytest.mark.parametrize("i,j", FERN_SELFCAL_PAIRS)
def test_fern_self_calibration(fern, i, j):
    """Intrinsics withheld on well-conditioned fern pairs: the focal is self-calibrated within 5%."""
    files, cams, load_image = fern
    est = estimate_relative_pose(load_image(files[i]), load_image(files[j]))
    r = est.report
    assert r["focal_source"] == "self-calibrated", r["focal_reason"]
    assert abs(r["focal_px"] / float(cams.K[i, 0, 0]) - 1) <= 0.05
    R_true, t_true = true_relative(cams.c2w[i], cams.c2w[j])
    assert rot_err_deg(est.R.numpy(), R_true) <= 1.0
    assert dir_err_deg(est.t.numpy(), t_true) <= 3.0


def test_fern_little_rotation_falls_back(fern):
    """Frames 12 and 16 rotate ~3.5 deg: the focal is not trusted (the prior is used) and the pose stays good."""
    files, cams, load_image = fern
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        est = estimate_relative_pose(load_image(files[12]), load_image(files[16]))
    sc = est.report["self_calibration"]
    assert sc["rotation_deg"] < SELFCAL_MIN_ROTATION_DEG and not sc["trusted"]
    assert est.report["focal_source"] == "default-fov"
    R_true, t_true = true_relative(cams.c2w[12], cams.c2w[16])
    assert rot_err_deg(est.R.numpy(), R_true) <= 1.0
