"""Video-model nodes without ComfyUI: LoadVideoSceneModel -> LeapFlowStudent / VideoSceneTeacher on a tiny model
written in the real folder layout into a temporary models folder (VSCENE_MODELS_DIR)."""
import os

os.environ.setdefault("VSCENE_NO_HOST", "1")

import importlib  # noqa: E402
import json  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from test_host_fallback import PACK, _load_host  # noqa: E402
from vscene_engine.tools.tiny_model import install_tiny_model  # noqa: E402


@pytest.fixture(scope="module")
def nodes(tmp_path_factory):
    models = tmp_path_factory.mktemp("models")
    install_tiny_model(models, name="tiny", frames=9, height=64, width=96)
    old = os.environ.get("VSCENE_MODELS_DIR")
    os.environ["VSCENE_MODELS_DIR"] = str(models)
    _load_host()
    vn = importlib.import_module(PACK + ".nodes.video_nodes")
    yield vn
    if old is None:
        os.environ.pop("VSCENE_MODELS_DIR", None)
    else:
        os.environ["VSCENE_MODELS_DIR"] = old


def _load(vn, **kw):
    args = dict(base_model="tiny", weights="tiny/model.safetensors", prompt_embeds="tiny/prompt_embeds.pt",
                precision="auto", memory_mode="offload", vae_tiling=False)
    args.update(kw)
    return vn.LoadVideoSceneModel().load(**args)


def test_registered_and_input_types(nodes):
    pack = importlib.import_module(PACK)
    for name in ("LoadVideoSceneModel", "LeapFlowStudent", "VideoSceneTeacher"):
        assert name in pack.NODE_CLASS_MAPPINGS
    it = nodes.LoadVideoSceneModel.INPUT_TYPES()["required"]
    assert it["base_model"][0] == ["tiny"]
    assert "tiny/model.safetensors" in it["weights"][0] and it["weights"][0][0] == "none"
    assert "tiny/prompt_embeds.pt" in it["prompt_embeds"][0]
    for cls in (nodes.LoadVideoSceneModel, nodes.LeapFlowStudent, nodes.VideoSceneTeacher):
        for group in cls.INPUT_TYPES().values():
            for name, spec in group.items():
                assert spec[1].get("tooltip"), f"{cls.__name__}.{name} has no tooltip"
    lf = nodes.LeapFlowStudent.INPUT_TYPES()["required"]
    assert lf["timestep"][1]["default"] == 549 and lf["steps"][1]["default"] == 1


def test_load_and_leap(nodes):
    model, report = _load(nodes)
    rep = json.loads(report)
    n_matched = int(rep["weights"]["summary"].split(" matched")[0])
    assert n_matched == len(model.transformer.state_dict()) and ", 0 missing" in rep["weights"]["summary"]
    assert rep["native"] == {"frames": 9, "height": 64, "width": 96}
    g = torch.Generator().manual_seed(0)
    frames = torch.rand(9, 48, 80, 3, generator=g)
    out, latent, info = nodes.LeapFlowStudent().run(model, frames, 549, 3, 1, "stretch",
                                                    first_image=frames[:1], last_image=frames[-1:])
    assert out.shape == (9, 48, 80, 3) and 0 <= out.min() and out.max() <= 1
    assert latent["samples"].shape == (1, 16, 3, 8, 12)
    assert json.loads(info)["timesteps"] == [549]
    # same as calling the engine directly with the same seed
    from vscene_engine.video.leap import leap_sample
    direct = leap_sample(model, frames[0], frames[-1], frames, timestep=549, seed=3)
    assert torch.equal(direct.frames, out)
    t_out, _, t_info = nodes.VideoSceneTeacher().run(model, frames, 3, 1.0, "noise", 549, 0, "stretch",
                                                     first_image=frames[:1], last_image=frames[-1:])
    assert t_out.shape == out.shape and json.loads(t_info)["timesteps"] == [999, 666, 332]


def test_bad_inputs(nodes):
    model, _ = _load(nodes, memory_mode="default")
    frames = torch.rand(13, 48, 80, 3)
    with pytest.raises(ValueError, match="exactly 9 frames"):
        nodes.LeapFlowStudent().run(model, frames, 549, 0, 1, "stretch", first_image=frames[:1],
                                    last_image=frames[-1:])
    with pytest.raises(ValueError, match="views"):
        nodes.LeapFlowStudent().run(model, frames[:9], 549, 0, 1, "stretch")
    with pytest.raises(FileNotFoundError, match="not found"):
        _load(nodes, base_model="missing-model")
    with pytest.raises(ValueError, match="no CogVideoX model folder"):
        _load(nodes, base_model=nodes._MISSING_BASE)
    with pytest.raises(ValueError, match="memory mode"):
        _load(nodes, memory_mode="bogus")


def test_ddpnet_timestep_feeds_leap(nodes):
    dn = importlib.import_module(PACK + ".nodes.ddpnet_nodes")
    it = dn.DDPNetTimestep.INPUT_TYPES()
    assert "tiny/ddpnet.safetensors" in it["required"]["weights"][0]
    t, plot, info = dn.DDPNetTimestep().run("none", "greedy", 0)
    assert t == 549 and plot.shape[0] == 1 and "reference constant" in info
    model, _ = _load(nodes)
    frames = torch.rand(9, 48, 80, 3, generator=torch.Generator().manual_seed(1))
    t, plot, info = dn.DDPNetTimestep().run("tiny/ddpnet.safetensors", "greedy", 0, frames=frames, video_model=model)
    rep = json.loads(info)
    assert t in rep["bins"] and abs(sum(rep["probs"]) - 1) < 1e-3 and plot.shape[-1] == 3
    assert rep["probs"][rep["bins"].index(t)] == max(rep["probs"])
    out, _, li = nodes.LeapFlowStudent().run(model, frames, t, 0, 1, "stretch", first_image=frames[:1],
                                             last_image=frames[-1:])
    assert json.loads(li)["timesteps"] == [t]
    with pytest.raises(ValueError, match="latents"):
        dn.DDPNetTimestep().run("tiny/ddpnet.safetensors", "greedy", 0, frames=frames)


def test_leap_refine_3d_option(nodes):
    from vscene_engine.tools.synthetic import demo_cameras
    from vscene_engine.views.trajectories import make_trajectory

    model, _ = _load(nodes)
    frames = torch.rand(9, 48, 80, 3, generator=torch.Generator().manual_seed(2))
    traj = make_trajectory("interpolate", demo_cameras(80, 48), frames=9)
    out, latent, info = nodes.LeapFlowStudent().run(model, frames, 549, 0, 1, "stretch", first_image=frames[:1],
                                                    last_image=frames[-1:], refine_3d=True, refine_t=100,
                                                    trajectory=traj)
    rep = json.loads(info)
    assert rep["timesteps"] == [549] and rep["refine_3d"]["timesteps"] == [100]
    assert out.shape == (9, 48, 80, 3) and latent["samples"].shape == (1, 16, 3, 8, 12)
    plain, _, _ = nodes.LeapFlowStudent().run(model, frames, 549, 0, 1, "stretch", first_image=frames[:1],
                                              last_image=frames[-1:])
    assert (plain - out).abs().max() > 1e-3  # the refine step changed the result
    with pytest.raises(ValueError, match="trajectory"):
        nodes.LeapFlowStudent().run(model, frames, 549, 0, 1, "stretch", first_image=frames[:1],
                                    last_image=frames[-1:], refine_3d=True)
    with pytest.raises(ValueError, match="9 frames|cameras"):
        nodes.LeapFlowStudent().run(model, frames, 549, 0, 1, "stretch", first_image=frames[:1],
                                    last_image=frames[-1:], refine_3d=True, trajectory=traj[:5])
