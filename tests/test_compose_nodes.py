"""ScoreComposeMultiView / GridSelect / OrbitTrajectory node layer without the host (the guider itself runs under
core SamplerCustomAdvanced in a real ComfyUI; see the issue notes), and the guider's per-view condition split."""
import importlib

import pytest
import torch

from test_host_fallback import PACK, _load_host

host = _load_host()
compose_nodes = importlib.import_module(PACK + ".nodes.compose_nodes")
guider = importlib.import_module(PACK + ".nodes.guider")


def _raw(t, **extra):
    return {"cross_attn": t, "model_conds": {}, "uuid": 0, **extra}


def test_split_conds_shared_and_per_item():
    V, F = 3, 4
    shared = {"positive": [_raw(torch.randn(1, 7, 5), fps=6)], "negative": None}
    assert guider._split_conds(shared, V, "video", "views", F) is None
    t = torch.randn(V, 7, 5)
    concat = torch.randn(1, 4, 2, 2)
    per = {"positive": [_raw(t, concat_latent_image=concat, elevation=[1.0] * F)], "negative": None}
    items = guider._split_conds(per, V, "video", "views", F)
    assert len(items) == V
    for v, it in enumerate(items):
        c = it["positive"][0]
        assert torch.equal(c["cross_attn"], t[v:v + 1])
        assert c["concat_latent_image"] is concat            # batch 1: shared, not copied
        assert c["elevation"] == [1.0] * F                    # lists (SV3D angles) are left alone
        assert it["negative"] == []
    assert per["positive"][0]["cross_attn"] is t              # the caller's conds are not modified


def test_split_conds_refuses_other_batches():
    V, F = 2, 3
    with pytest.raises(ValueError, match=r"batch \[3\].*one per view.*other model"):
        guider._split_conds({"positive": [_raw(torch.randn(F, 7, 5))]}, V, "video", "views", F)
    with pytest.raises(ValueError, match=r"batch \[5\]: give batch 1 .* or 3 \(one per frame"):
        guider._split_conds({"positive": [_raw(torch.randn(5, 7, 5))]}, F, "multi-view", "frames", V)


def test_guider_node_3d_aware_needs_vae_and_trajectory():
    node = compose_nodes.ScoreComposeMultiView()
    kw = dict(video_model=None, video_positive=[], multiview_model=None, multiview_positive=[], views=2, frames=3,
              schedule="constant", s0=0.6, s1=0.2, k=15.0, video_cfg=1.0, multiview_cfg=1.0)
    with pytest.raises(ValueError, match="needs the vae and the trajectory"):
        node.get_guider(**kw, aware3d_every=5)
    if not host.HOST_AVAILABLE:
        with pytest.raises(RuntimeError, match="inside ComfyUI"):
            node.get_guider(**kw)
    opt = compose_nodes.ScoreComposeMultiView.INPUT_TYPES()["optional"]
    for name in ("vae", "trajectory", "aware3d_every", "aware3d_start", "aware3d_iters", "aware3d_groups"):
        assert opt[name][1]["tooltip"]


def test_grid_select_and_orbit_nodes():
    V, F = 3, 2
    imgs = torch.arange(V * F, dtype=torch.float32).reshape(V * F, 1, 1, 1).expand(V * F, 4, 4, 3).contiguous()
    (col,) = compose_nodes.GridSelect().run(imgs, V, F, "frame", 1)
    assert col[:, 0, 0, 0].tolist() == [1.0, 3.0, 5.0]
    (row,) = compose_nodes.GridSelect().run(imgs, V, F, "view", 2)
    assert row[:, 0, 0, 0].tolist() == [4.0, 5.0]
    (cams,) = compose_nodes.OrbitTrajectory().run(V, 10.0, 33.8, 2.0, 64, 48)
    assert len(cams) == V
    centres = cams.c2w[:, :3, 3]
    assert torch.allclose(centres.norm(dim=-1), torch.full((V,), 2.0), atol=1e-5)
