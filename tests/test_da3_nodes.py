"""LoadViewPair (cameras_from = da3) and CoarseSplatPrior (method = depth) with a DA3_GEOMETRY built from our renders
(the layout of core's DA3Inference multiview output; see tests/test_da3.py). Runs the nodes through the pack as
ComfyUI loads it, with the host fallback (no ComfyUI)."""
import importlib
import json

import pytest
import torch

from test_da3 import H, W, make_geometry, normalised, truth  # noqa: F401  (fixtures; one_thread comes from conftest)
from test_host_fallback import PACK, _load_host

host = _load_host()
pytestmark = pytest.mark.skipif(host.HOST_AVAILABLE, reason="nodes.host was imported with ComfyUI present")


@pytest.fixture(scope="module")
def pn():
    return importlib.import_module(PACK + ".nodes.pipeline_nodes")


def test_node_inputs_declare_da3(pn):
    spec = pn.LoadViewPair.INPUT_TYPES()
    assert "da3" in spec["required"]["cameras_from"][0]
    assert spec["optional"]["da3_geometry"][0] == "DA3_GEOMETRY"
    cs = pn.CoarseSplatPrior.INPUT_TYPES()
    assert "depth" in cs["required"]["method"][0]
    assert cs["optional"]["depth"][0] == "IMAGE" and cs["optional"]["confidence"][0] == "MASK"


def test_load_view_pair_da3_and_depth_prior(pn, truth):
    geom, _, _ = make_geometry(truth)
    rgb = truth["rgb"]
    node = pn.LoadViewPair()
    with pytest.raises(ValueError, match="needs da3_geometry"):
        node.load(rgb[:1], rgb[1:2], "da3", "", 60.0, W, "crop")
    with pytest.raises(ValueError, match="multiview"):
        node.load(rgb[:1], rgb[1:2], "da3", "", 60.0, W, "crop",
                  da3_geometry={"depth": geom["depth"], "image": geom["image"], "mode": "mono"})
    views, images, report = node.load(rgb[:1], rgb[1:2], "da3", "", 60.0, W, "crop", da3_geometry=geom)
    rep = json.loads(report)
    assert rep["cameras"] == "da3" and rep["da3"]["process_size"] == [504, 378] and rep["scale"] == 1.0
    assert images.shape == (2, H, W, 3)
    assert (views.cameras.c2w.double() - normalised(truth["cams"][[0, 1]])).abs().max() < 2e-5
    prior = pn.CoarseSplatPrior()
    with pytest.raises(ValueError, match="needs depth maps"):
        prior.run(views.__class__(views.images, views.cameras, views.near, views.far), "depth", 3, "interpolate",
                  "linear", 8, "#ffffff")
    splat, frames, cover, traj = prior.run(views, "depth", 3, "interpolate", "linear", 8, "#ffffff",
                                           min_confidence=0.5)[:4]
    assert frames.shape == (3, H, W, 3) and cover.shape == (3, H, W) and len(traj) == 3
    n = len(host.splat_to_scenes(splat)[0])
    assert n == int((views.confidence >= 0.5).sum())
    # frame 0 is photo A's camera: the prior re-renders the photo (see test_da3: ~17 dB with the footprint blur)
    err = (frames[0] - rgb[0]).abs().mean()
    assert err < 0.08, err
    # a depth IMAGE + MASK given to the node instead (scale unknown -> fitted)
    depth_img = (views.depth / views.depth.max())[..., None].expand(2, H, W, 3).contiguous()
    frames2 = prior.run(views, "depth", 3, "interpolate", "linear", 8, "#ffffff", depth=depth_img,
                        confidence=views.confidence, min_confidence=0.5)[1]
    assert (frames2 - frames).abs().mean() < 0.01
