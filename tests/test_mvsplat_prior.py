"""MVSplat as the coarse prior: official input conventions (crop / resize with the intrinsics kept right,
normalized intrinsics, near / far), coarse_prior(method "mvsplat") from a weights file, and the CoarseSplatPrior node."""
from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from test_mvsplat import fill_weights, small_config
from vscene_engine.core.cameras import Cameras
from vscene_engine.prior.mvsplat import MVSplatEncoder
from vscene_engine.prior.mvsplat.prior import mvsplat_prior, network_inputs
from vscene_engine.prior.coarse import PriorConfig, coarse_prior


pytestmark = pytest.mark.usefixtures("one_thread")  # float32 depths near the far plane: see conftest


def _cams(W, H, n=2):
    c2w = torch.eye(4).repeat(n, 1, 1)
    c2w[1, 0, 3] = 0.3
    K = torch.tensor([[0.8 * W, 0, W / 2 + 3.0], [0, 0.8 * W, H / 2 - 2.0], [0, 0, 1]]).repeat(n, 1, 1)
    return Cameras(c2w, K, W, H, torch.full((n,), 0.5), torch.full((n,), 50.0))


def _smooth_images(W, H, n=2):
    v, u = torch.meshgrid((torch.arange(H) + 0.5) / H, (torch.arange(W) + 0.5) / W, indexing="ij")
    img = torch.stack([0.5 + 0.4 * torch.sin(3 * u + 1), 0.5 + 0.4 * torch.cos(2 * v), 0.3 + 0.5 * u * v], -1)
    return img.expand(n, H, W, 3).clone(), (lambda uu, vv: torch.stack([0.5 + 0.4 * torch.sin(3 * uu + 1),
                                                                       0.5 + 0.4 * torch.cos(2 * vv),
                                                                       0.3 + 0.5 * uu * vv], -1))


@pytest.mark.parametrize("fit,W,H,out", [("crop", 120, 80, (64, 64)), ("crop", 80, 120, (64, 64)),
                                         ("full", 120, 80, (64, 96)), ("full", 80, 120, (96, 64))])
def test_network_inputs_keep_intrinsics_right(fit, W, H, out):
    imgs, f = _smooth_images(W, H)
    cams = _cams(W, H)
    x, cn, boxes = network_inputs(imgs, cams, 64, fit, 16)
    assert tuple(x.shape) == (2, 3, *out) and (cn.height, cn.width) == out
    # A 3D point projects to corresponding places: original pixel u -> network pixel (u * s - x0)
    pts = torch.tensor([[0.3, -0.2, 4.0], [-0.5, 0.4, 7.0], [0.0, 0.0, 2.0]])
    uv0, _ = cams.project(pts)
    uv1, _ = cn.project(pts)
    x0, y0, _, _ = boxes[0]
    rw, rh = (out[1], out[0]) if fit == "full" else (round(W * 64 / min(W, H)), round(H * 64 / min(W, H)))
    exp = torch.stack([uv0[..., 0] * rw / W - x0, uv0[..., 1] * rh / H - y0], -1)
    assert torch.allclose(uv1, exp, atol=1e-4)
    # the image content at a network pixel centre is the photo at the matching continuous position
    hh, ww = out
    v, u = torch.meshgrid(torch.arange(hh) + 0.5, torch.arange(ww) + 0.5, indexing="ij")
    ref = f((u + x0) / rw, (v + y0) / rh)
    assert (x[0].permute(1, 2, 0) - ref).abs()[4:-4, 4:-4].max() < 0.02


def test_network_inputs_bad_input():
    imgs, _ = _smooth_images(64, 64)
    with pytest.raises(ValueError, match="multiple of 16"):
        network_inputs(imgs, _cams(64, 64), 100, "crop", 16)
    with pytest.raises(ValueError, match="fit must be"):
        network_inputs(imgs, _cams(64, 64), 64, "stretch", 16)
    with pytest.raises(ValueError, match="cameras are for 80x64"):
        network_inputs(imgs, _cams(80, 64), 64, "crop", 16)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory):
    torch.manual_seed(0)
    enc = fill_weights(MVSplatEncoder(small_config())).eval()
    p = tmp_path_factory.mktemp("mv") / "small.safetensors"
    save_file({"encoder." + k: v.contiguous() for k, v in enc.state_dict().items()}, str(p))
    return p, enc


def test_mvsplat_prior_equals_the_encoder_on_official_inputs(weights_file):
    path, enc = weights_file
    W, H = 96, 64
    imgs, _ = _smooth_images(W, H)
    cams = _cams(W, H)
    res = coarse_prior(imgs, cams, PriorConfig(method="mvsplat", mvsplat_size=64, near=1.0, far=100.0),
                       mvsplat=str(path))
    assert res.info["method"] == "mvsplat" and res.info["n_gaussians"] == [64 * 64] * 2
    assert res.depth.shape == (2, 64, 64) and res.valid.all()
    assert len(res.scene) == 2 * 64 * 64 and res.scene.sh.shape[1] == 25
    res.scene.validate()
    # by hand: crop 96x64 -> centre 64x64 (x0 = 16), normalized intrinsics, the encoder itself
    K = cams.K.clone()
    K[:, 0, 2] -= 16
    Kn = K.clone()
    Kn[:, 0] /= 64
    Kn[:, 1] /= 64
    x = imgs.permute(0, 3, 1, 2)[:, :, :, 16:80]
    with torch.no_grad():
        out = enc(x[None], cams.c2w[None], Kn[None], torch.ones(1, 2), torch.full((1, 2), 100.0))
    assert torch.allclose(res.scene.means, out["means"][0], atol=1e-4, rtol=1e-4)
    assert torch.allclose(res.depth, out["depths"][0], atol=1e-4, rtol=1e-4)
    assert torch.equal(res.confidence, out["opacities"][0].reshape(2, 64, 64))
    # Gaussian centres lie on rays through their own pixels (MVSplat moves each ray by a predicted offset of at most
    # half a pixel): project view 0's means with the network cameras
    r = mvsplat_prior(enc, imgs, cams, size=64)
    uv, z = r.cameras[0:1].project(r.scene.means[: 64 * 64])
    v, u = torch.meshgrid(torch.arange(64) + 0.5, torch.arange(64) + 0.5, indexing="ij")
    ok = z[0] > 1e-3
    assert ok.float().mean() > 0.99
    err = (uv[0][ok] - torch.stack([u, v], -1).reshape(-1, 2)[ok]).abs()
    assert err.max() <= 0.5 + 1e-3 and err.mean() > 1e-3


def test_mvsplat_prior_bad_input(weights_file):
    _, enc = weights_file
    imgs, _ = _smooth_images(64, 64)
    with pytest.raises(ValueError, match="0 < near < far"):
        mvsplat_prior(enc, imgs, _cams(64, 64), size=64, near=5.0, far=1.0)
    with pytest.raises(ValueError, match="MVSplatEncoder"):
        mvsplat_prior(object(), imgs, _cams(64, 64), size=64)
    with pytest.raises(FileNotFoundError):
        coarse_prior(imgs, _cams(64, 64), PriorConfig(method="mvsplat"), mvsplat="/nonexistent/re10k.ckpt")


def test_coarse_splat_prior_node_mvsplat(weights_file, tmp_path, monkeypatch):
    import importlib

    from test_host_fallback import PACK, _load_host
    from vscene_engine.views.pair import ViewPair

    host = _load_host()
    pn = importlib.import_module(PACK + ".nodes.pipeline_nodes")
    path, _ = weights_file
    (tmp_path / "mvsplat").mkdir()
    (tmp_path / "mvsplat" / "small.safetensors").write_bytes(path.read_bytes())
    monkeypatch.setenv("VSCENE_MODELS_DIR", str(tmp_path))
    spec = pn.CoarseSplatPrior.INPUT_TYPES()
    assert "mvsplat" in spec["required"]["method"][0]
    assert "small.safetensors" in spec["optional"]["mvsplat_weights"][0]
    imgs, _ = _smooth_images(96, 64)
    views = ViewPair(imgs, _cams(96, 64), 0.5, 50.0)
    node = pn.CoarseSplatPrior()
    with pytest.raises(ValueError, match="needs mvsplat_weights"):
        node.run(views, "mvsplat", 3, "interpolate", "linear", 8, "#ffffff")
    out = node.run(views, "mvsplat", 3, "interpolate", "linear", 8, "#ffffff", mvsplat_weights="small.safetensors",
                   mvsplat_size=64)
    splat, frames, cover, traj = out[:4]
    assert out[-1] is views                                                 # mvsplat keeps the given cameras
    assert frames.shape == (3, 64, 96, 3) and cover.shape == (3, 64, 96) and len(traj) == 3
    scenes = host.splat_to_scenes(splat)
    assert len(scenes[0]) == 2 * 64 * 64 and scenes[0].sh.shape[1] == 16   # degree 4 -> 3 for core viewers
    # the centre crop is covered, the columns outside it (16 px each side) are not: official crop convention
    assert cover[0, :, 24:72].mean() > 0.5 and cover[0, :, :8].mean() < cover[0, :, 24:72].mean()
