"""Tests for vscene_engine.core.cameras, camera_formats and trajectories (fast: a few seconds on CPU)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vscene_engine.core.cameras import Cameras, CropBox, look_at, quat_to_rotmat, rotmat_to_quat
from vscene_engine.io import camera_formats as cf
from vscene_engine.io.camera_formats import load_cameras, save_cameras
from vscene_engine.views.trajectories import (
    ease,
    focus_point,
    interpolate_pivot,
    interpolate_se3,
    make_trajectory,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
F64 = torch.float64


# ---------------------------------------------------------------------- fixtures / helpers
def random_rotations(n: int, gen: torch.Generator) -> torch.Tensor:
    q = torch.randn(n, 4, generator=gen, dtype=F64)
    return quat_to_rotmat(q)


def make_cams(n=5, width=320, height=240, seed=0, dtype=F64, square=False, names=True) -> Cameras:
    """Cameras on a ring looking roughly at the origin, with varied intrinsics."""
    g = torch.Generator().manual_seed(seed)
    ang = torch.linspace(0, 1.5, n, dtype=F64)
    eye = torch.stack([3 * torch.sin(ang), -0.5 + 0.2 * torch.randn(n, generator=g, dtype=F64), -3 * torch.cos(ang)], -1)
    target = 0.1 * torch.randn(n, 3, generator=g, dtype=F64)
    c2w = look_at(eye, target)
    # add some roll
    roll = 0.2 * torch.randn(n, generator=g, dtype=F64)
    Rz = torch.zeros(n, 3, 3, dtype=F64)
    Rz[:, 0, 0], Rz[:, 0, 1], Rz[:, 1, 0], Rz[:, 1, 1], Rz[:, 2, 2] = roll.cos(), -roll.sin(), roll.sin(), roll.cos(), 1
    c2w[:, :3, :3] = c2w[:, :3, :3] @ Rz
    f = 300 + 20 * torch.rand(n, generator=g, dtype=F64)
    K = torch.zeros(n, 3, 3, dtype=F64)
    K[:, 0, 0] = f
    K[:, 1, 1] = f if square else f * (1 + 0.05 * torch.rand(n, generator=g, dtype=F64))
    K[:, 0, 2] = width / 2 if square else width / 2 + 5 * torch.randn(n, generator=g, dtype=F64)
    K[:, 1, 2] = height / 2 if square else height / 2 + 5 * torch.randn(n, generator=g, dtype=F64)
    K[:, 2, 2] = 1
    near = 0.1 + torch.rand(n, generator=g, dtype=F64)
    far = 50 + torch.rand(n, generator=g, dtype=F64)
    nm = [f"img_{i:03d}" for i in range(n)] if names else None
    return Cameras(c2w, K, width, height, near, far, nm).to(dtype=dtype)


def assert_cams_close(a: Cameras, b: Cameras, atol=1e-5, names=True):
    assert (a.width, a.height) == (b.width, b.height)
    assert len(a) == len(b)
    torch.testing.assert_close(a.c2w.double(), b.c2w.double(), atol=atol, rtol=0)
    torch.testing.assert_close(a.K.double(), b.K.double(), atol=atol * 100, rtol=atol)  # pixels: relative
    if names:
        assert a.names == b.names


def rot_angle(Ra: torch.Tensor, Rb: torch.Tensor) -> torch.Tensor:
    c = ((Ra.transpose(-1, -2) @ Rb).diagonal(dim1=-2, dim2=-1).sum(-1) - 1) / 2
    return torch.acos(c.clamp(-1, 1))


def dlt_triangulate(cams: Cameras, uv: torch.Tensor) -> torch.Tensor:
    """Linear (DLT) triangulation of one point from its pixels uv [N,2] in N cameras."""
    P = cams.K.double() @ cams.w2c.double()[:, :3, :]  # [N,3,4]
    u, v = uv[:, 0:1].double(), uv[:, 1:2].double()
    A = torch.cat([u * P[:, 2] - P[:, 0], v * P[:, 2] - P[:, 1]], 0)  # [2N,4]
    # normalize rows for conditioning
    A = A / A.norm(dim=1, keepdim=True)
    _, _, Vh = torch.linalg.svd(A)
    X = Vh[-1]
    return X[:3] / X[3]


# ====================================================================== Cameras
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_basic_properties(dtype):
    cams = make_cams(dtype=dtype).validate()
    assert len(cams) == 5 and cams.dtype == dtype
    eye = torch.eye(4, dtype=dtype).expand(5, 4, 4)
    torch.testing.assert_close(cams.w2c @ cams.c2w, eye, atol=1e-5, rtol=0)
    torch.testing.assert_close(cams.centers, cams.c2w[:, :3, 3])
    Kn = cams.K_normalized
    torch.testing.assert_close(Kn[:, 0, 2] * cams.width, cams.K[:, 0, 2])
    back = Cameras.from_normalized(cams.c2w, Kn, cams.width, cams.height, cams.near, cams.far, cams.names)
    torch.testing.assert_close(back.K, cams.K)
    # broadcasting constructors
    c = Cameras(torch.eye(4, dtype=dtype), torch.eye(3, dtype=dtype) * 100 + torch.tensor([[0, 0, 50], [0, 0, 40], [0, 0, -99]], dtype=dtype), 100, 80, 0.1, 10.0)
    assert c.c2w.shape == (1, 4, 4) and c.near.shape == (1,) and c.K.dtype == dtype
    c.validate()
    c34 = Cameras(cams.c2w[:, :3, :], cams.K, 320, 240, cams.near, cams.far)
    torch.testing.assert_close(c34.c2w, cams.c2w)


def test_getitem_and_to_and_cat():
    cams = make_cams(6)
    assert len(cams[2]) == 1 and cams[2].names == ["img_002"]
    assert cams[-1].names == ["img_005"]
    assert cams[1:4].names == ["img_001", "img_002", "img_003"]
    assert cams[[5, 0]].names == ["img_005", "img_000"]
    assert cams[torch.tensor([1, 2])].names == ["img_001", "img_002"]
    mask = torch.tensor([True, False, True, False, False, True])
    sub = cams[mask]
    assert sub.names == ["img_000", "img_002", "img_005"]
    torch.testing.assert_close(sub.c2w, cams.c2w[mask])
    with pytest.raises(IndexError):
        cams[6]
    f32 = cams.to(dtype=torch.float32)
    assert f32.K.dtype == torch.float32 and f32.near.dtype == torch.float32
    both = Cameras.cat([cams[:2], cams[2:]])
    torch.testing.assert_close(both.c2w, cams.c2w)
    assert both.names == cams.names
    with pytest.raises(ValueError, match="resized"):
        Cameras.cat([cams, cams.resized(100, 100)])


def test_project_matches_manual_pinhole():
    cams = make_cams(3)
    pts = torch.tensor([[0.1, 0.2, -0.3], [0.0, 0.0, 0.0], [0.5, -0.2, 0.4]], dtype=F64)
    uv, depth = cams.project(pts)
    assert uv.shape == (3, 3, 2) and depth.shape == (3, 3)
    for n in range(3):
        w2c = torch.linalg.inv(cams.c2w[n])
        for p in range(3):
            xc = w2c[:3, :3] @ pts[p] + w2c[:3, 3]
            pix = cams.K[n] @ xc
            torch.testing.assert_close(uv[n, p], pix[:2] / pix[2])
            torch.testing.assert_close(depth[n, p], xc[2])
    # unproject inverts project
    back = cams.unproject(uv, depth)
    torch.testing.assert_close(back, pts[None].expand(3, 3, 3), atol=1e-9, rtol=0)
    # a point straight ahead on the optical axis lands on the principal point
    ahead = cams.centers[0] + 2.0 * cams.forward[0]
    uv0, d0 = cams[0].project(ahead[None])
    torch.testing.assert_close(uv0[0, 0], cams.K[0, :2, 2])
    assert abs(float(d0) - 2.0) < 1e-9


def test_resize_and_crop_keep_projection_consistent():
    cams = make_cams(4)
    pts = 0.3 * torch.randn(10, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    uv, d = cams.project(pts)
    r = cams.resized(640, 360)
    uv_r, d_r = r.project(pts)
    torch.testing.assert_close(uv_r[..., 0], uv[..., 0] * 640 / 320)
    torch.testing.assert_close(uv_r[..., 1], uv[..., 1] * 360 / 240)
    torch.testing.assert_close(d_r, d)
    # continuous coordinates scale with the image (corner-aligned resize): the principal point too
    assert float(r.K[0, 0, 2]) == pytest.approx(float(cams.K[0, 0, 2]) * 2)
    assert float(r.K[0, 1, 2]) == pytest.approx(float(cams.K[0, 1, 2]) * 1.5)
    c = cams.cropped(10, 20, 100, 50)
    uv_c, _ = c.project(pts)
    torch.testing.assert_close(uv_c, uv - torch.tensor([10.0, 20.0], dtype=F64))
    assert (c.width, c.height) == (100, 50)
    torch.testing.assert_close(c.K[:, :2, :2], cams.K[:, :2, :2])  # focal lengths unchanged
    with pytest.raises(ValueError):
        cams.resized(0, 10)


@pytest.mark.parametrize("mode", ["crop", "pad", "stretch"])
@pytest.mark.parametrize("target", [(256, 256), (480, 270), (100, 300)])
def test_fit_modes(mode, target):
    cams = make_cams(3)  # 320x240 source
    tw, th = target
    out, box = cams.fit(tw, th, mode)
    assert isinstance(box, CropBox)
    assert (out.width, out.height) == (tw, th)
    W, H = cams.width, cams.height
    if mode == "crop":
        assert 0 <= box.x0 and 0 <= box.y0 and box.x0 + box.width <= W and box.y0 + box.height <= H
        assert abs(box.width / box.height - tw / th) < 2.0 / min(box.width, box.height) + 1e-9
        assert box.width == W or box.height == H
    elif mode == "pad":
        assert box.x0 <= 0 and box.y0 <= 0 and box.x0 + box.width >= W and box.y0 + box.height >= H
        assert abs(box.width / box.height - tw / th) < 2.0 / min(box.width, box.height) + 1e-9
        # symmetric padding (within one pixel)
        assert abs((-box.x0) - (box.x0 + box.width - W)) <= 1 and abs((-box.y0) - (box.y0 + box.height - H)) <= 1
    else:
        assert box == (0, 0, W, H)
    # projection consistency: output pixel = (source pixel - box origin) * target / box size
    pts = 0.3 * torch.randn(7, 3, generator=torch.Generator().manual_seed(2), dtype=F64)
    uv, _ = cams.project(pts)
    uv_o, _ = out.project(pts)
    expect = (uv - torch.tensor([box.x0, box.y0], dtype=F64)) * torch.tensor([tw / box.width, th / box.height], dtype=F64)
    torch.testing.assert_close(uv_o, expect)
    ref = cams.cropped(*box).resized(tw, th)
    torch.testing.assert_close(out.K, ref.K)
    with pytest.raises(ValueError, match="mode"):
        cams.fit(10, 10, "zoom")


def test_fit_crop_matches_image_crop_resize():
    """A bright pixel at a projected point ends up at the re-projected point after crop+resize of the image."""
    cams = make_cams(1, width=64, height=48)
    out, box = cams.fit(32, 32, "crop")
    # pick a point that projects to the centre of some source pixel inside the box
    src_px = torch.tensor([box.x0 + 9 + 0.5, box.y0 + 13 + 0.5], dtype=F64)
    ray = cams.unproject(src_px[None, None], torch.tensor([[2.0]], dtype=F64))[0]
    uv_o, _ = out.project(ray)
    # image side: crop then exact 1.5x (48 -> 32) downscale maps continuous coords by the same affine map
    img = torch.zeros(1, 1, 48, 64)
    img[0, 0, box.y0 + 13, box.x0 + 9] = 1.0
    crop = img[..., box.y0:box.y0 + box.height, box.x0:box.x0 + box.width]
    res = torch.nn.functional.interpolate(crop, size=(32, 32), mode="bilinear", align_corners=False, antialias=True)
    ys, xs = torch.meshgrid(torch.arange(32) + 0.5, torch.arange(32) + 0.5, indexing="ij")
    w = res[0, 0]
    centroid = torch.stack([(w * xs).sum() / w.sum(), (w * ys).sum() / w.sum()]).double()
    torch.testing.assert_close(centroid, uv_o[0, 0], atol=0.05, rtol=0)


def _bad(cams: Cameras, **changes) -> Cameras:
    c = cams.clone()
    for k, v in changes.items():
        setattr(c, k, v)
    return c


def test_validate_errors():
    cams = make_cams(3)
    cams.validate()
    c2w = cams.c2w.clone(); c2w[1, 0, 3] = float("nan")
    with pytest.raises(ValueError, match=r"NaN/inf.*camera\(s\) \[1\]"):
        _bad(cams, c2w=c2w).validate()
    K = cams.K.clone(); K[0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match="NaN/inf"):
        _bad(cams, K=K).validate()
    c2w = cams.c2w.clone(); c2w[2, :3, :3] *= 1.1
    with pytest.raises(ValueError, match="not orthonormal"):
        _bad(cams, c2w=c2w).validate()
    c2w = cams.c2w.clone(); c2w[0, :3, 1] *= -1
    with pytest.raises(ValueError, match="det < 0.*OpenGL"):
        _bad(cams, c2w=c2w).validate()
    K = cams.K.clone(); K[1, 1, 1] = -5
    with pytest.raises(ValueError, match="fx, fy must be > 0"):
        _bad(cams, K=K).validate()
    K = cams.K.clone(); K[1, 0, 0] = 0
    with pytest.raises(ValueError, match="must be > 0"):
        _bad(cams, K=K).validate()
    with pytest.raises(ValueError, match="image size must be positive"):
        _bad(cams, width=0).validate()
    with pytest.raises(ValueError, match="image size must be positive"):
        _bad(cams, height=-3).validate()
    with pytest.raises(ValueError, match="near must be < far"):
        _bad(cams, near=cams.far.clone()).validate()
    with pytest.raises(ValueError, match="near must be > 0"):
        _bad(cams, near=torch.zeros(3, dtype=F64)).validate()
    K = cams.K.clone(); K[0, 2, 2] = 2
    with pytest.raises(ValueError, match="from_normalized"):
        _bad(cams, K=K).validate()
    with pytest.raises(ValueError, match=r"\[N,4,4\]"):
        Cameras(torch.zeros(3, 3), torch.eye(3), 10, 10, 0.1, 1.0)
    with pytest.raises(ValueError, match="names"):
        Cameras(cams.c2w, cams.K, 320, 240, cams.near, cams.far, ["a"])
    # float32 rounding noise is accepted
    make_cams(3, dtype=torch.float32).validate()


def test_quaternion_helpers():
    g = torch.Generator().manual_seed(3)
    R = random_rotations(50, g)
    q = rotmat_to_quat(R)
    assert (q[:, 0] >= 0).all()
    torch.testing.assert_close(quat_to_rotmat(q), R, atol=1e-12, rtol=0)
    # near-180-degree rotations are stable
    R180 = torch.diag(torch.tensor([1.0, -1.0, -1.0], dtype=F64))
    torch.testing.assert_close(quat_to_rotmat(rotmat_to_quat(R180)), R180, atol=1e-12, rtol=0)


# ====================================================================== formats: round trips
def test_vscene_roundtrip(tmp_path):
    cams = make_cams(4)
    back = cf.from_vscene(cf.to_vscene(cams), dtype=F64)
    assert_cams_close(back, cams, atol=1e-12)
    torch.testing.assert_close(back.near, cams.near)
    p = save_cameras(cams, tmp_path / "sub" / "cams.json")
    assert p.is_file() and not list(p.parent.glob(".*.tmp"))
    back = load_cameras(p, dtype=F64)
    assert_cams_close(back, cams, atol=1e-12)
    torch.testing.assert_close(back.far, cams.far)
    data = json.loads(p.read_text())
    assert data["format"] == "vscene-cameras" and data["convention"] == "opencv_c2w"
    # JSON string / dict sources, select and resize
    s = load_cameras(p.read_text(), select=["img_003", 1], dtype=F64)
    assert s.names == ["img_003", "img_001"]
    r = load_cameras(data, width=160, dtype=F64)
    assert (r.width, r.height) == (160, 120)
    torch.testing.assert_close(r.K, cams.resized(160, 120).K)


def test_nerf_roundtrip(tmp_path):
    cams = make_cams(4)
    d = cf.to_nerf(cams)
    # OpenGL convention in the file: the camera looks down its -z axis
    gl = np.array(d["frames"][0]["transform_matrix"])
    np.testing.assert_allclose(-gl[:3, 2], cams.forward[0].numpy(), atol=1e-12)
    back = cf.from_nerf(d, dtype=F64)
    assert_cams_close(back, cams)
    torch.testing.assert_close(back.near, cams.near)
    p = save_cameras(cams, tmp_path / "transforms.json", fmt="nerf")
    back = load_cameras(tmp_path, dtype=F64)
    assert_cams_close(back, cams)
    # select by name with folder / extension
    d2 = json.loads(p.read_text())
    for i, f in enumerate(d2["frames"]):
        f["file_path"] = f"./train/{cams.names[i]}"
    assert load_cameras(d2, select="img_002").names == ["img_002"]
    assert load_cameras(d2, select=["./train/img_001.png"]).names == ["img_001"]
    with pytest.raises(ValueError, match="no camera named"):
        load_cameras(d2, select="r_99")


def test_nerf_camera_angle_only():
    # classic Blender file: camera_angle_x only, identity-ish pose (camera at +z looking at the origin, GL)
    M = np.eye(4); M[2, 3] = 4.0
    d = {"camera_angle_x": 0.6911112070083618, "frames": [{"file_path": "./train/r_0", "transform_matrix": M.tolist()}]}
    with pytest.raises(ValueError, match="width= and height="):
        load_cameras(d)
    c = load_cameras(d, width=800, height=800)
    assert c.names == ["r_0"]
    fx = 400 / math.tan(0.6911112070083618 / 2)
    assert float(c.K[0, 0, 0]) == pytest.approx(fx, rel=1e-6) and float(c.K[0, 1, 1]) == pytest.approx(fx, rel=1e-6)
    uv, depth = c.project(torch.zeros(1, 3))
    torch.testing.assert_close(uv[0, 0], torch.tensor([400.0, 400.0]))
    assert float(depth) == pytest.approx(4.0)
    # a point above the origin (world +y, Blender/GL "up" for this camera) appears in the upper image half
    uv, _ = c.project(torch.tensor([[0.0, 0.5, 0.0]]))
    assert float(uv[0, 0, 1]) < 400


def test_llff_roundtrip_and_layout(tmp_path):
    cams = make_cams(4, width=504, height=378, square=True)
    arr = cf.to_llff(cams)
    assert arr.shape == (4, 17)
    P = arr[0, :15].reshape(3, 5)
    # LLFF columns: [down, right, backwards]
    np.testing.assert_allclose(P[:, 0], cams.c2w[0, :3, 1].numpy(), atol=1e-12)
    np.testing.assert_allclose(P[:, 1], cams.c2w[0, :3, 0].numpy(), atol=1e-12)
    np.testing.assert_allclose(P[:, 2], -cams.c2w[0, :3, 2].numpy(), atol=1e-12)
    np.testing.assert_allclose(P[:, 4], [378, 504, float(cams.K[0, 0, 0])])
    back = cf.from_llff(arr, names=cams.names, dtype=F64)
    assert_cams_close(back, cams)
    torch.testing.assert_close(back.near, cams.near)
    torch.testing.assert_close(back.far, cams.far)
    # target width rescales (LLFF images_8 are 1/8 of the stored size)
    small = cf.from_llff(arr, width=63, dtype=F64)
    assert (small.width, small.height) == (63, 47)  # 378 / 8 = 47.25 -> 47
    torch.testing.assert_close(small.K[:, 0, 0], cams.K[:, 0, 0] / 8)
    save_cameras(cams, tmp_path / "poses_bounds.npy", fmt="llff")
    back = load_cameras(tmp_path, dtype=F64)
    assert_cams_close(back, cams, names=False)
    assert back.names == ["0", "1", "2", "3"]


@pytest.mark.parametrize("binary", [False, True])
def test_colmap_roundtrip(tmp_path, binary):
    cams = make_cams(5)
    out = save_cameras(cams, tmp_path / "sparse" / "0", fmt="colmap", binary=binary)
    assert (out / ("cameras.bin" if binary else "cameras.txt")).is_file()
    back = load_cameras(tmp_path, near=0.5, far=20.0, dtype=F64)  # finds sparse/0
    assert_cams_close(back, cams, atol=1e-9)
    assert torch.all(back.near == 0.5) and torch.all(back.far == 20.0)
    # images.txt stores w2c: check one line by hand
    if not binary:
        lines = [l for l in (out / "images.txt").read_text().splitlines() if l and not l.startswith("#")]
        tok = lines[0].split()
        q = torch.tensor([float(v) for v in tok[1:5]], dtype=F64)
        t = torch.tensor([float(v) for v in tok[5:8]], dtype=F64)
        torch.testing.assert_close(quat_to_rotmat(q), cams.w2c[0, :3, :3])
        torch.testing.assert_close(t, cams.w2c[0, :3, 3])


def test_colmap_models_and_distortion_warning(tmp_path):
    d = tmp_path / "model"
    d.mkdir()
    (d / "cameras.txt").write_text(
        "# comment\n1 SIMPLE_RADIAL 200 100 150.0 100.0 50.0 0.01\n2 OPENCV 400 200 300 310 200 100 0.1 0 0 0\n"
    )
    (d / "images.txt").write_text(
        "# IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME\n"
        "1 1 0 0 0 0 0 0 1 a/b.jpg\n\n"
        "2 0.7071067811865476 0 0.7071067811865476 0 1 2 3 2 c.png\n1.0 2.0 -1\n"
    )
    with pytest.raises(ValueError, match="different image sizes"):
        load_cameras(d)
    with pytest.warns(UserWarning, match="distortion"):
        c = load_cameras(d, width=200, height=100, dtype=F64)
    assert c.names == ["a/b", "c"]
    torch.testing.assert_close(c.K[0], torch.tensor([[150.0, 0, 100], [0, 150, 50], [0, 0, 1]], dtype=F64))
    torch.testing.assert_close(c.K[1], torch.tensor([[150.0, 0, 100], [0, 155, 50], [0, 0, 1]], dtype=F64))
    torch.testing.assert_close(c.c2w[0], torch.eye(4, dtype=F64))
    # camera 2: w2c rotation of +90 degrees about y; centre = -R^T t
    R = quat_to_rotmat(torch.tensor([0.7071067811865476, 0, 0.7071067811865476, 0], dtype=F64))
    torch.testing.assert_close(c.centers[1], -R.T @ torch.tensor([1.0, 2, 3], dtype=F64))
    (d / "cameras.txt").write_text("1 OPENCV_FISHEYE 200 100 150 150 100 50 0 0 0 0\n2 PINHOLE 200 100 150 150 100 50\n")
    with pytest.raises(ValueError, match="image_undistorter"):
        load_cameras(d)


def test_re10k_roundtrip(tmp_path):
    cams = make_cams(4, width=640, height=360)
    cams.names = ["1000", "1033", "1066", "1100"]
    txt = cf.to_re10k(cams, url="https://www.youtube.com/watch?v=abc")
    lines = txt.splitlines()
    assert lines[0].startswith("https://") and len(lines[1].split()) == 19
    row = [float(v) for v in lines[1].split()]
    assert row[1] == pytest.approx(float(cams.K[0, 0, 0]) / 640)  # normalized fx
    back = cf.from_re10k(txt, width=640, height=360, dtype=F64)
    assert_cams_close(back, cams)
    p = save_cameras(cams, tmp_path / "seq.txt", fmt="re10k")
    back = load_cameras(p, dtype=F64)  # default 640x360
    assert_cams_close(back, cams)
    assert float(back.near[0]) == pytest.approx(0.1) and float(back.far[0]) == 1000.0
    back2 = load_cameras(p, width=256, height=144, dtype=F64)
    torch.testing.assert_close(back2.K, cams.resized(256, 144).K)
    with pytest.raises(ValueError, match="both width= and height="):
        load_cameras(p, width=256)


def test_load3d_roundtrip_and_convention(tmp_path):
    cams = make_cams(3, width=512, height=384, square=True)
    infos = cf.to_load3d(cams)
    assert set(infos[0]) >= {"position", "target", "zoom", "cameraType", "quaternion", "fov", "aspect"}
    back = cf.from_load3d(infos, width=512, height=384, dtype=F64)
    assert_cams_close(back, cams, names=False)
    # saved as JSON list and re-loaded through the generic loader
    p = save_cameras(cams, tmp_path / "cams_load3d.json", fmt="load3d")
    back = load_cameras(p, width=512, height=384, dtype=F64)
    assert_cams_close(back, cams, names=False)
    # without flip the three.js world is used as is; still a lossless pair
    back = cf.from_load3d(cf.to_load3d(cams, flip_world=False), width=512, height=384, flip_world=False, dtype=F64)
    assert_cams_close(back, cams, names=False)
    # a hand-written ComfyUI camera_info: three.js camera at +5 z looking at the origin (no quaternion)
    info = {"position": {"x": 0, "y": 0, "z": 5}, "target": {"x": 0, "y": 0, "z": 0}, "zoom": 1,
            "cameraType": "perspective", "fov": 60}
    c = load_cameras(info, width=400, height=300, dtype=F64)
    f = 150 / math.tan(math.radians(30))
    torch.testing.assert_close(c.K[0], torch.tensor([[f, 0, 200], [0, f, 150], [0, 0, 1]], dtype=F64))
    # flip_world: scene = (x, -y, -z) of three.js -> the camera sits at z = -5 and looks along +z
    torch.testing.assert_close(c.centers[0], torch.tensor([0.0, 0, -5], dtype=F64))
    torch.testing.assert_close(c.forward[0], torch.tensor([0.0, 0, 1], dtype=F64))
    # three.js world +y (up) is scene -y, which must appear in the upper half of the image
    uv, d = c.project(torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0]], dtype=F64))
    assert float(uv[0, 0, 1]) < 150 and float(uv[0, 1, 0]) > 200 and (d > 0).all()
    # zoom 2 doubles the focal length; quaternion of three.js lookAt gives the same camera
    z2 = load_cameras({**info, "zoom": 2}, width=400, height=300, dtype=F64)
    assert float(z2.K[0, 0, 0]) == pytest.approx(2 * f)
    q = rotmat_to_quat(torch.eye(3, dtype=F64))  # three.js camera at +z looking at origin = identity rotation
    cq = load_cameras({**info, "quaternion": {"x": float(q[1]), "y": float(q[2]), "z": float(q[3]), "w": float(q[0])}},
                      width=400, height=300, dtype=F64)
    torch.testing.assert_close(cq.c2w, c.c2w)
    # LOAD_3D dict wrapper and default size from aspect
    d = load_cameras({"camera_info": {**info, "aspect": 1.5}})
    assert (d.width, d.height) == (1536, 1024)
    with pytest.warns(UserWarning, match="orthographic"):
        load_cameras({**info, "cameraType": "orthographic"}, width=64, height=64)


def test_detect_format_errors(tmp_path):
    with pytest.raises(ValueError, match="cannot tell"):
        load_cameras({"foo": 1})
    with pytest.raises(ValueError, match="no camera file found"):
        load_cameras(tmp_path)
    with pytest.raises(ValueError, match="not found"):
        load_cameras(str(tmp_path / "missing.json"))
    with pytest.raises(ValueError, match="unknown camera format"):
        save_cameras(make_cams(2), tmp_path / "x", fmt="fbx")


# ====================================================================== trajectories
def two_cams(dtype=F64) -> Cameras:
    return make_cams(5, dtype=dtype)[[0, 4]]


def test_trajectory_frames_and_kind_errors():
    cams = two_cams()
    for bad in (0, 1):
        with pytest.raises(ValueError, match="at least 2 frames"):
            make_trajectory("interpolate", cams, frames=bad)
    with pytest.raises(ValueError, match="unknown trajectory kind"):
        make_trajectory("spiral", cams)
    with pytest.raises(ValueError, match="keyframes"):
        make_trajectory("interpolate", make_cams(3))
    with pytest.raises(ValueError, match="unknown option"):
        make_trajectory("se3", cams, radius=2)
    with pytest.raises(ValueError, match="easing"):
        make_trajectory("se3", cams, easing="bounce")


@pytest.mark.parametrize("kind", ["interpolate", "se3"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_two_camera_endpoints_and_smoothness(kind, dtype):
    cams = two_cams(dtype)
    tr = make_trajectory(kind, cams)  # 49 frames, cosine easing
    assert len(tr) == 49 and tr.dtype == dtype and (tr.width, tr.height) == (cams.width, cams.height)
    torch.testing.assert_close(tr.c2w[0], cams.c2w[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(tr.c2w[-1], cams.c2w[1], atol=1e-6, rtol=0)
    torch.testing.assert_close(tr.K[0], cams.K[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(tr.K[-1], cams.K[1], atol=1e-6, rtol=0)
    tr.validate()
    R = tr.c2w.double()[:, :3, :3]
    eye = torch.eye(3, dtype=F64)
    assert (R.transpose(-1, -2) @ R - eye).abs().max() < (1e-12 if dtype == F64 else 1e-6)
    assert (torch.linalg.det(R) > 0).all()
    # monotonic: rotation angle from the start grows, and towards the end shrinks
    a0 = rot_angle(R[:1], R)
    assert (a0[1:] - a0[:-1] >= -1e-9).all()
    # smooth: no jumps - steps are bounded by (pi/2) x the mean step of the linear path
    steps = (tr.centers[1:] - tr.centers[:-1]).double().norm(dim=-1)
    assert steps.max() < (math.pi / 2) * steps.sum() / 48 * 1.05
    # cosine easing starts/ends slower than linear and is symmetric in time
    lin = make_trajectory(kind, cams, easing="linear")
    lsteps = (lin.centers[1:] - lin.centers[:-1]).double().norm(dim=-1)
    assert steps[0] < 0.1 * lsteps[0] and steps[-1] < 0.1 * lsteps[-1]
    if kind == "se3":  # constant-speed path + symmetric easing -> symmetric step sizes
        torch.testing.assert_close(steps, steps.flip(0), atol=1e-4, rtol=1e-3)
    # intrinsics are linear in the eased time
    t = ease(torch.linspace(0, 1, 49, dtype=F64), "cosine")
    Kexp = cams.K[0].double() + (cams.K[1] - cams.K[0]).double() * t[:, None, None]
    torch.testing.assert_close(tr.K.double(), Kexp, atol=1e-4, rtol=1e-6)


def _reference_pivot_interp(c0: torch.Tensor, c1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Independent re-derivation of the pixelSplat/VideoScene pivot interpolation with scipy YXZ Euler angles."""
    from scipy.spatial.transform import Rotation

    a, b = c0[:3, 2], c1[:3, 2]
    o = torch.stack([c0[:3, 3], c1[:3, 3]])
    d = torch.stack([a, b])
    n = d[:, :, None] * d[:, None, :] - torch.eye(3, dtype=F64)
    p = torch.linalg.lstsq(n.sum(0), (n @ o[:, :, None]).sum(0)).solution[:, 0]
    y = torch.linalg.cross(a, b); y = y / y.norm()
    F = torch.stack([torch.linalg.cross(y, a), y, a], -1)

    def params(E):
        tf = torch.stack([torch.linalg.cross(y, E[:3, 2]), y, E[:3, 2]], -1)
        tr = tf.T @ (p - E[:3, 3])
        e = Rotation.from_matrix((F.T @ E[:3, :3]).numpy()).as_euler("YXZ")
        return tr, np.array([e[0], e[2]])

    t0, e0 = params(c0)
    t1, e1 = params(c1)
    out = []
    for tt in t.tolist():
        tr = t0 + (t1 - t0) * tt
        de = (e1 - e0 + np.pi) % (2 * np.pi) - np.pi
        yz = e0 + de * tt
        R = F @ torch.tensor(Rotation.from_euler("YXZ", [yz[0], 0.0, yz[1]]).as_matrix())
        tf = torch.stack([torch.linalg.cross(y, R[:3, 2]), y, R[:3, 2]], -1)
        M = torch.eye(4, dtype=F64)
        M[:3, :3], M[:3, 3] = R, p - tf @ tr
        out.append(M)
    return torch.stack(out)


def test_interpolate_matches_reference_math():
    cams = two_cams()
    t = ease(torch.linspace(0, 1, 49, dtype=F64), "cosine")
    ref = _reference_pivot_interp(cams.c2w[0], cams.c2w[1], t)
    mine = interpolate_pivot(cams.c2w[0], cams.c2w[1], t)
    torch.testing.assert_close(mine, ref, atol=1e-9, rtol=0)
    # and the trajectory entry point with default options is exactly that
    tr = make_trajectory("interpolate", cams, frames=49)
    torch.testing.assert_close(tr.c2w, ref, atol=1e-9, rtol=0)
    # the camera swings around the pivot: distance to the focus point varies linearly in eased time
    p = focus_point(cams)
    dist = (tr.centers - p).norm(dim=-1)
    assert float(dist.min()) > 0.9 * min(float(dist[0]), float(dist[-1]))


def test_interpolate_parallel_views_is_straight():
    c0 = look_at(torch.tensor([0.0, 0, 0], dtype=F64), torch.tensor([0.0, 0, 1], dtype=F64))
    c1 = c0.clone(); c1[:3, 3] = torch.tensor([1.0, 0.5, 0.2], dtype=F64)
    t = torch.linspace(0, 1, 11, dtype=F64)
    out = interpolate_pivot(c0, c1, t)
    torch.testing.assert_close(out[:, :3, 3], t[:, None] * c1[:3, 3], atol=1e-12, rtol=0)
    torch.testing.assert_close(out[:, :3, :3], c0[:3, :3].expand(11, 3, 3), atol=1e-12, rtol=0)


def test_se3_is_geodesic():
    cams = two_cams()
    t = torch.linspace(0, 1, 21, dtype=F64)
    out = interpolate_se3(cams.c2w[0], cams.c2w[1], t)
    total = rot_angle(cams.c2w[0, :3, :3], cams.c2w[1, :3, :3])
    ang = rot_angle(cams.c2w[0, :3, :3][None], out[:, :3, :3])
    torch.testing.assert_close(ang, t * total, atol=1e-9, rtol=0)  # constant angular speed
    torch.testing.assert_close(out[:, :3, 3], cams.centers[0] + t[:, None] * (cams.centers[1] - cams.centers[0]))


def test_orbit():
    cams = two_cams()
    centre = focus_point(cams)
    tr = make_trajectory("orbit", cams, frames=25)
    torch.testing.assert_close(tr.c2w[0], cams.c2w[0], atol=1e-12, rtol=0)
    torch.testing.assert_close(tr.c2w[-1], cams.c2w[0], atol=1e-9, rtol=0)  # one full turn
    dist = (tr.centers - centre).norm(dim=-1)
    torch.testing.assert_close(dist, dist[:1].expand(25), atol=1e-9, rtol=0)
    uv, depth = tr.project(centre[None])
    torch.testing.assert_close(uv[:, 0], uv[:1, 0].expand(25, 2), atol=1e-6, rtol=0)  # centre stays put
    tr.validate()
    # explicit radius/elevation: look-at camera on the requested sphere, looking at the centre
    up = torch.tensor([0.0, -1.0, 0.0], dtype=F64)
    o = make_trajectory("orbit", cams[:1], frames=9, centre=[0, 0, 0], axis=up, radius=2.0, elevation=30.0, turns=0.5)
    torch.testing.assert_close(o.centers.norm(dim=-1), torch.full((9,), 2.0, dtype=F64))
    elev = torch.rad2deg(torch.asin((o.centers @ up) / 2.0))
    torch.testing.assert_close(elev, torch.full((9,), 30.0, dtype=F64))
    uv, _ = o.project(torch.zeros(1, 3, dtype=F64))
    torch.testing.assert_close(uv[:, 0], o.K[:, :2, 2], atol=1e-6, rtol=0)
    with pytest.raises(ValueError, match="centre"):
        make_trajectory("orbit", cams[:1])


def test_keyframes_through_load3d_cameras():
    infos = [
        {"position": {"x": 0, "y": 1, "z": 5}, "target": {"x": 0, "y": 0, "z": 0}, "fov": 50, "zoom": 1, "cameraType": "perspective"},
        {"position": {"x": 4, "y": 1, "z": 3}, "target": {"x": 0, "y": 0, "z": 0}, "fov": 50, "zoom": 1, "cameraType": "perspective"},
        {"position": {"x": 5, "y": 2, "z": -1}, "target": {"x": 0, "y": 0, "z": 0}, "fov": 40, "zoom": 1, "cameraType": "perspective"},
    ]
    keys = load_cameras(infos, width=320, height=240, dtype=F64)
    for interp in ("interpolate", "se3"):
        tr = make_trajectory("keyframes", keys, frames=21, interp=interp, easing="linear")
        torch.testing.assert_close(tr.c2w[0], keys.c2w[0], atol=1e-9, rtol=0)
        torch.testing.assert_close(tr.c2w[10], keys.c2w[1], atol=1e-9, rtol=0)  # keyframe 1 at u = 0.5
        torch.testing.assert_close(tr.c2w[-1], keys.c2w[2], atol=1e-9, rtol=0)
        torch.testing.assert_close(tr.K[-1], keys.K[2])
        tr.validate()
        # the look-at target (scene origin) stays near the image centre along the whole path
        uv, d = tr.project(torch.zeros(1, 3, dtype=F64))
        assert (d > 0).all() and ((uv[:, 0] - torch.tensor([160.0, 120.0], dtype=F64)).abs() < 20).all()
    tr = make_trajectory("keyframes", keys, frames=21)  # default global cosine easing
    torch.testing.assert_close(tr.c2w[-1], keys.c2w[2], atol=1e-9, rtol=0)


# ====================================================================== real data
LEGO = DATA / "nerf_synthetic_lego"
FERN = DATA / "llff_fern"


@pytest.mark.skipif(not (LEGO / "transforms_train.json").is_file(), reason="shared/data/nerf_synthetic_lego absent")
def test_real_lego_origin_projects_into_all_views():
    cams = load_cameras(LEGO / "transforms_train.json")
    assert (cams.width, cams.height) == (800, 800) and len(cams) == 100  # size read from the PNG header
    assert cams.names[0] == "r_0"
    uv, depth = cams.project(torch.zeros(1, 3))
    assert (depth > 0).all()
    assert ((uv >= 0) & (uv[..., :1] < 800) & (uv[..., 1:] < 800)).all()
    # the synthetic cameras all aim at the origin: it lands on the image centre
    assert (uv - 400).abs().max() < 1.0
    sub = load_cameras(LEGO, select=["r_0", "./train/r_10.png"])
    assert sub.names == ["r_0", "r_10"]


@pytest.mark.skipif(not (FERN / "poses_bounds.npy").is_file(), reason="shared/data/llff_fern absent")
def test_real_fern_focus_point_and_triangulation():
    cams = load_cameras(FERN, dtype=F64)
    assert (cams.width, cams.height) == (504, 378) and len(cams) == 20  # images_8
    assert cams.names[0] == "image000"
    X = focus_point(cams)
    uv, depth = cams.project(X[None])
    assert (depth[:, 0] > cams.near).all() and (depth[:, 0] < cams.far).all()
    assert ((uv[:, 0, 0] >= 0) & (uv[:, 0, 0] < 504) & (uv[:, 0, 1] >= 0) & (uv[:, 0, 1] < 378)).all()
    Xt = dlt_triangulate(cams, uv[:, 0])
    assert float((Xt - X).norm() / X.norm()) < 1e-4
    # float32 loading gives the same geometry
    c32 = load_cameras(FERN / "poses_bounds.npy")
    torch.testing.assert_close(c32.c2w.double(), cams.c2w, atol=1e-6, rtol=0)
    # a VideoScene-style path between two fern views keeps the focus point in view
    tr = make_trajectory("interpolate", cams[[0, 19]])
    uv, depth = tr.project(X[None])
    assert (depth > 0).all() and ((uv[..., 0] >= 0) & (uv[..., 0] < 504)).all()
