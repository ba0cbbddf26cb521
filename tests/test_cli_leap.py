"""python -m vscene_engine leap / tiny-model: the CLI on a tiny model in the real folder layout; clean failures."""
import json

import pytest
import torch

from vscene_engine.tools.cli import main
from vscene_engine.io.images import load_image, save_image
from vscene_engine.video.leap import leap_sample
from vscene_engine.video.loading import load_video_model
from vscene_engine.io.video_files import read_frames, write_video


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("leapcli")
    assert main(["tiny-model", "--models-dir", str(d / "models"), "--name", "tiny", "--frames", "9"]) == 0
    g = torch.Generator().manual_seed(0)
    video = (torch.rand(9, 40, 60, 3, generator=g) * 255).round() / 255
    write_video(video, d / "coarse.mp4")
    save_image(video[0], d / "a.png")
    save_image(video[-1], d / "b.png")
    return d


def _args(d, out, **over):
    a = {"--model": d / "models/CogVideo/tiny", "--weights": d / "models/videoscene/tiny/model.safetensors",
         "--prompt-embeds": d / "models/videoscene/tiny/prompt_embeds.pt", "--image-a": d / "a.png",
         "--image-b": d / "b.png", "--video": d / "coarse.mp4", "--out": out, "--device": "cpu"}
    a.update(over)
    return ["leap"] + [str(x) for kv in a.items() for x in kv if x is not None]


def test_leap_cli_writes_video_and_matches_engine(setup):
    d = setup
    out = d / "out"
    assert main(_args(d, out) + ["--seed", "5", "--teacher-steps", "2"]) == 0
    frames = read_frames(out / "video.mp4")
    assert frames.shape == (9, 40, 60, 3)
    rep = json.loads((out / "leap_report.json").read_text())
    assert rep["video.mp4"]["timesteps"] == [549] and rep["teacher.mp4"]["timesteps"] == [999, 499]
    assert rep["model"]["weights"]["missing"] == 0
    # same frames as the engine called directly (up to the video codec)
    m = load_video_model(d / "models/CogVideo/tiny", weights=d / "models/videoscene/tiny/model.safetensors",
                         prompt_embeds=d / "models/videoscene/tiny/prompt_embeds.pt")
    src = read_frames(d / "coarse.mp4")
    a, b = load_image(d / "a.png"), load_image(d / "b.png")
    ref = leap_sample(m, a, b, src, seed=5).frames
    other = leap_sample(m, a, b, src, seed=6).frames
    err, err_other = (frames - ref).abs().mean(), (frames - other).abs().mean()
    assert err < 0.5 * err_other  # h264 (yuv420) blurs the tiny model's noisy output, so not exact


@pytest.mark.parametrize("bad,needle", [
    ({"--model": "nonexistent-folder"}, "does not exist"),
    ({"--weights": "VAE"}, "no key of"),
    ({"--video": "SHORT"}, "exactly 9 frames"),
])
def test_leap_cli_bad_input_writes_nothing(setup, capsys, bad, needle):
    d = setup
    if bad.get("--weights") == "VAE":
        bad = {"--weights": d / "models/CogVideo/tiny/vae/diffusion_pytorch_model.safetensors"}
    if bad.get("--video") == "SHORT":
        write_video(torch.rand(13, 40, 60, 3), d / "short.mp4")
        bad = {"--video": d / "short.mp4"}
    out = d / ("bad_" + needle.split()[0])
    assert main(_args(d, out, **bad)) == 2
    assert needle in capsys.readouterr().err
    assert not out.exists()


def test_train_ddpnet_cli_and_distill_delegation(setup, capsys):
    from vscene_engine.policy.ddpnet import load_ddpnet, save_training_sample

    d = setup
    g = torch.Generator().manual_seed(3)
    for i in range(3):
        r = torch.randn(1, 3, 16, 8, 12, generator=g)
        save_training_sample(d / "ddp_data" / f"s{i}.safetensors", r, r + 0.1 * torch.randn(r.shape, generator=g),
                             torch.randn(r.shape, generator=g))
    out = d / "ddpnet.safetensors"
    assert main(["train-ddpnet", "--model", str(d / "models/CogVideo/tiny"), "--weights",
                 str(d / "models/videoscene/tiny/model.safetensors"), "--prompt-embeds",
                 str(d / "models/videoscene/tiny/prompt_embeds.pt"), "--data", str(d / "ddp_data"), "--out", str(out),
                 "--steps", "6", "--bins", "4", "--device", "cpu"]) == 0
    net = load_ddpnet(out)
    assert net.config.in_channels == 16 and len(net.config.bins()) == 4
    assert main(["train-ddpnet", "--model", str(d / "models/CogVideo/tiny"), "--prompt-embeds",
                 str(d / "models/videoscene/tiny/prompt_embeds.pt"), "--data", str(d / "empty"), "--out",
                 str(d / "x.safetensors"), "--device", "cpu"]) == 2
    assert "no" in capsys.readouterr().err.lower() and not (d / "x.safetensors").exists()
    with pytest.raises(SystemExit) as e:
        main(["distill", "--help"])
    assert e.value.code == 0 and "--t-max" in capsys.readouterr().out
