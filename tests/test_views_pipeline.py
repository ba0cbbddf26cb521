"""LoadViewPair engine (views.py), the pipeline steps, the pipeline nodes and the prior/reconstruct CLI."""
import json
import math

import pytest
import torch


from vscene_engine.core.cameras import Cameras
from vscene_engine.tools.cli import main
from vscene_engine.io.images import save_image
from vscene_engine.pipeline import make_path, reconstruct
from vscene_engine.render.rasterize import render
from vscene_engine.tools.synthetic import demo_cameras, procedural_scene
from vscene_engine.views.pair import make_view_pair

W, H = 128, 96


@pytest.fixture(scope="module")
def photos():
    scene = procedural_scene(12000, seed=3)
    cams = demo_cameras(W, H)
    with torch.no_grad():
        imgs = render(scene, cams, background=(1.0, 1.0, 1.0)).rgb.clamp(0, 1)
    return scene, cams, imgs


def test_given_cameras_sizes_and_intrinsics_follow_resize(photos):
    _, cams, imgs = photos
    vp = make_view_pair(imgs[0], imgs[1], cams, size=64)
    assert vp.images.shape == (2, 48, 64, 3) and (vp.width, vp.height) == (64, 48)
    assert torch.allclose(vp.cameras.K[0, 0, 0], cams.K[0, 0, 0] / 2)
    assert vp.provenance["cameras"] == "given" and math.isclose(vp.scale, float((cams.centers[0] - cams.centers[1]).norm()), rel_tol=1e-5)
    # B given at another size and as grayscale / RGBA: a defined result at A's size
    b_big = torch.nn.functional.interpolate(imgs[1].permute(2, 0, 1)[None], size=(192, 256), mode="bilinear")[0]
    gray = b_big.mean(0, keepdim=True).permute(1, 2, 0)  # [H,W,1]
    cams_b = Cameras.cat([cams[0], cams[1].resized(256, 192).resized(W, H)])
    vp2 = make_view_pair(imgs[0], gray, cams_b, size=128)
    assert vp2.images.shape == (2, 96, 128, 3)
    rgba = torch.cat([imgs[0], torch.ones(H, W, 1)], -1)
    vp3 = make_view_pair(rgba[None], imgs[1][None], cams, size=128)  # [1,H,W,4] batch like ComfyUI
    assert torch.allclose(vp3.images[0], imgs[0], atol=1e-6)


@pytest.mark.parametrize("mode", ["crop", "pad"])
def test_crop_and_pad_keep_intrinsics_consistent(photos, mode):
    """A photo of another aspect, brought to 128x96 by apply_box, equals a render at the fitted camera."""
    from vscene_engine.views.pair import apply_box

    scene, cams, _ = photos
    cam_b = cams[1].cropped(16, 0, 96, 96).resized(192, 192)  # a square 192x192 photo
    with torch.no_grad():
        photo = render(scene, cam_b, background=(1.0, 1.0, 1.0)).rgb[0].clamp(0, 1)
        fitted, box = cam_b.fit(128, 96, mode)
        direct = render(scene, fitted, background=(1.0, 1.0, 1.0)).rgb[0].clamp(0, 1)
    got = apply_box(photo, box, 128, 96, pad_value=-1.0)
    valid = (got >= 0).all(-1)
    assert valid.float().mean() > (0.99 if mode == "crop" else 0.7)
    assert float((got - direct).abs()[valid].mean()) < 0.03


@pytest.mark.parametrize("bad,msg", [
    ("tiny", "at least 64"),
    ("nan_img", "NaN"),
    ("same_centre", "baseline"),
    ("nan_cam", "NaN|finite"),
    ("three", "exactly 2"),
    ("aspect", "aspect"),
])
def test_view_pair_bad_inputs(photos, bad, msg):
    _, cams, imgs = photos
    a, b, c = imgs[0], imgs[1], cams
    if bad == "tiny":
        a = a[:40, :50]
    elif bad == "nan_img":
        b = b.clone()
        b[3, 3, 0] = float("nan")
    elif bad == "same_centre":
        c2w = cams.c2w.clone()
        c2w[1, :3, 3] = c2w[0, :3, 3]
        c = Cameras(c2w, cams.K, W, H, 0.5, 10.0)
    elif bad == "nan_cam":
        c2w = cams.c2w.clone()
        c2w[1, 0, 3] = float("nan")
        c = Cameras(c2w, cams.K, W, H, 0.5, 10.0)
    elif bad == "three":
        c = Cameras.cat([cams, cams[0]])
    elif bad == "aspect":
        b = b[:, :64]
    with pytest.raises(ValueError, match=msg):
        make_view_pair(a, b, c, size=128)


def test_path_needs_two_frames(photos):
    _, cams, imgs = photos
    vp = make_view_pair(imgs[0], imgs[1], cams, size=128)
    with pytest.raises(ValueError, match="at least 2 frames"):
        make_path(vp, frames=1)
    p = make_path(vp, frames=5)
    assert len(p) == 5 and torch.allclose(p.c2w[0], vp.cameras.c2w[0], atol=1e-5)
    assert torch.allclose(p.c2w[-1], vp.cameras.c2w[1], atol=1e-5)


def test_reconstruct_checks_and_improves(photos):
    scene, cams, imgs = photos
    vp = make_view_pair(imgs[0], imgs[1], cams, size=64)
    path = make_path(vp, frames=5)
    with torch.no_grad():
        frames = render(scene, path, background=(1.0, 1.0, 1.0)).rgb.clamp(0, 1)
    with pytest.raises(ValueError, match="path cameras"):
        reconstruct(frames[:4], path, vp)
    res = reconstruct(frames, path, vp, None, iters=60, background=(1.0, 1.0, 1.0), n_init=3000, densify=False)
    assert set(res.psnr_per_view) == {f"frame_{i:04d}" for i in range(5)} | {"view_a", "view_b"}
    start = float(-10 * torch.log10(((frames - 1.0) ** 2).mean()))  # PSNR of an empty white render
    assert min(res.psnr_per_view.values()) > start + 1.0


def test_cli_prior_and_reconstruct_with_transforms_json(tmp_path, photos):
    """prior: cameras picked by file name from a transforms.json; reconstruct from its outputs."""
    from vscene_engine.io.camera_formats import load_cameras, to_nerf
    from vscene_engine.io.video_files import read_frames

    _, cams, imgs = photos
    save_image(imgs[0], tmp_path / "r_0.png")
    save_image(imgs[1], tmp_path / "r_7.png")
    data = to_nerf(Cameras.cat([cams[1], cams[0]]))  # stored in the other order: selection is by name
    data["frames"][0]["file_path"] = "./r_7"
    data["frames"][1]["file_path"] = "./r_0"
    (tmp_path / "transforms.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    rc = main(["prior", "--image-a", str(tmp_path / "r_0.png"), "--image-b", str(tmp_path / "r_7.png"),
               "--cameras", str(tmp_path / "transforms.json"), "--frames", "5", "--size", "64", "--num-depths", "16",
               "--out", str(out)])
    assert rc == 0
    assert {p.name for p in out.iterdir()} >= {"cameras.json", "trajectory.json", "prior.ply", "coarse.mp4"}
    got = load_cameras(out / "cameras.json")
    assert torch.allclose(got.c2w[0], cams.c2w[0], atol=1e-5) and torch.allclose(got.c2w[1], cams.c2w[1], atol=1e-5)
    assert read_frames(out / "coarse.mp4").shape[0] == 5
    out2 = tmp_path / "rec"
    assert main(["reconstruct", "--frames", str(out / "coarse.mp4"), "--trajectory", str(out / "trajectory.json"),
                 "--init", str(out / "prior.ply"), "--iters", "5", "--out", str(out2)]) == 0
    assert (out2 / "scene.ply").is_file() and (out2 / "renders.mp4").is_file()


def test_cli_prior_bad_input_writes_nothing(tmp_path, photos):
    _, _, imgs = photos
    save_image(imgs[0][:40, :40], tmp_path / "a.png")
    save_image(imgs[1], tmp_path / "b.png")
    out = tmp_path / "out"
    assert main(["prior", "--image-a", str(tmp_path / "a.png"), "--image-b", str(tmp_path / "b.png"),
                 "--out", str(out)]) == 2
    save_image(imgs[0], tmp_path / "a.png")
    assert main(["prior", "--image-a", str(tmp_path / "a.png"), "--image-b", str(tmp_path / "a.png"),
                 "--out", str(out)]) == 2  # identical photos: a clear refusal
    assert main(["prior", "--image-a", str(tmp_path / "a.png"), "--image-b", str(tmp_path / "b.png"),
                 "--frames", "1", "--out", str(out)]) == 2
    assert not out.exists()


def test_reconstruct_same_on_compiled_and_torch_projection_paths(photos, monkeypatch):
    """SplatReconstruct's engine call on the compiled autograd path (numba projection + backward) against the torch
    projection path: every per-view PSNR within 0.02 dB (the tolerance of test_optimize's path test; the two differ by
    float32 rounding, amplified only where Adam meets near-zero gradients)."""
    from vscene_engine.render import raster_numba

    if not (raster_numba.usable() and raster_numba.grad_usable()):
        pytest.skip("numba compiled autograd path unavailable")
    scene, cams, imgs = photos
    vp = make_view_pair(imgs[0], imgs[1], cams, size=64)
    path = make_path(vp, frames=5)
    with torch.no_grad():
        frames = render(scene, path, background=(1.0, 1.0, 1.0)).rgb.clamp(0, 1)
    kw = dict(iters=40, background=(1.0, 1.0, 1.0), n_init=3000, densify=True, sh_degree=1)
    fast = reconstruct(frames, path, vp, None, **kw)
    monkeypatch.setitem(raster_numba._STATE, "grad_ok", False)
    slow = reconstruct(frames, path, vp, None, **kw)
    diffs = {k: abs(fast.psnr_per_view[k] - slow.psnr_per_view[k]) for k in slow.psnr_per_view}
    assert max(diffs.values()) <= 0.02, diffs
    assert fast.history[0]["loss"] == pytest.approx(slow.history[0]["loss"], rel=1e-6)
