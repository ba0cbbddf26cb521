"""NoiseSchedule parity with diffusers' CogVideoXDDIMScheduler (ᾱ, defaults, set_timesteps, add_noise, get_velocity,
step) and the REFERENCE_TIMESTEP constant."""
import pytest
import torch

from vscene_engine.video.loading import COGVIDEOX_5B_SCHEDULER_CONFIG as SCHED_5B
from vscene_engine.video.schedule import DIFFUSERS_DEFAULTS, REFERENCE_TIMESTEP, NoiseSchedule

diffusers = pytest.importorskip("diffusers")
from diffusers import CogVideoXDDIMScheduler  # noqa: E402

CONFIGS = {
    "5b": dict(SCHED_5B),
    "defaults": {},
    "snr3_zero_snr": dict(SCHED_5B, snr_shift_scale=3.0),
    "linear_eps": dict(SCHED_5B, beta_schedule="linear", rescale_betas_zero_snr=False, prediction_type="epsilon"),
    "cosine_sample": dict(SCHED_5B, beta_schedule="squaredcos_cap_v2", rescale_betas_zero_snr=False,
                          prediction_type="sample", set_alpha_to_one=False),
    "leading_offset": dict(SCHED_5B, timestep_spacing="leading", steps_offset=1),
}


def _ref(cfg):
    return CogVideoXDDIMScheduler(**{k: v for k, v in cfg.items() if not k.startswith("_")})


def test_defaults_are_diffusers_defaults():
    ref = CogVideoXDDIMScheduler()
    for k, v in DIFFUSERS_DEFAULTS.items():
        assert ref.config[k] == v, k
    s = NoiseSchedule.from_config(None)
    assert s.prediction_type == "epsilon" and s.config["snr_shift_scale"] == 3.0
    assert s.timestep_spacing == "leading" and s.config["rescale_betas_zero_snr"] is False
    # a partial config keeps what it says and takes diffusers' defaults for the rest
    p = NoiseSchedule.from_config({"prediction_type": "v_prediction"})
    assert p.prediction_type == "v_prediction" and p.config["snr_shift_scale"] == 3.0


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_alphas_cumprod_match_diffusers(name):
    cfg = CONFIGS[name]
    ours, ref = NoiseSchedule.from_config(cfg).alphas_cumprod, _ref(cfg).alphas_cumprod
    assert ours.dtype == ref.dtype and ours.shape == ref.shape
    assert torch.allclose(ours, ref, atol=1e-7, rtol=0)
    if name not in ("5b", "leading_offset"):  # these differ from the 5B schedule: the test can tell them apart
        assert not torch.allclose(ours.double(), NoiseSchedule.from_config(SCHED_5B).alphas_cumprod, atol=1e-4)


@pytest.mark.parametrize("name", sorted(CONFIGS))
@pytest.mark.parametrize("steps", [1, 7, 50])
def test_timesteps_match_diffusers(name, steps):
    cfg = CONFIGS[name]
    ref = _ref(cfg)
    ref.set_timesteps(steps)
    assert NoiseSchedule.from_config(cfg).timesteps(steps) == ref.timesteps.tolist()


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_ddim_step_matches_diffusers(name):
    cfg = CONFIGS[name]
    s, ref = NoiseSchedule.from_config(cfg), _ref(cfg)
    steps = 10
    ref.set_timesteps(steps)
    g = torch.Generator().manual_seed(0)
    for t in ref.timesteps.tolist():
        if s.prediction_type == "epsilon" and float(s.alpha_bar(t)) == 0.0:
            continue  # x0 from epsilon is undefined at zero terminal SNR
        x_t, out = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g)
        want_prev, want_x0 = ref.step(out, t, x_t, return_dict=False)
        prev, x0 = s.ddim_step(out, x_t, t, steps)
        assert torch.allclose(x0, want_x0, atol=1e-6) and torch.allclose(prev, want_prev, atol=1e-6)
        assert torch.allclose(s.x0_from_output(out, x_t, t), want_x0, atol=1e-5)


def test_add_noise_and_velocity_match_diffusers():
    s, ref = NoiseSchedule.from_config(SCHED_5B), _ref(SCHED_5B)
    g = torch.Generator().manual_seed(1)
    x0, eps = torch.randn(3, 2, 4, 4, generator=g), torch.randn(3, 2, 4, 4, generator=g)
    ts = torch.tensor([REFERENCE_TIMESTEP, 10, 999])
    assert torch.allclose(s.add_noise(x0, eps, ts), ref.add_noise(x0, eps, ts), atol=1e-6)
    assert torch.allclose(s.velocity(x0, eps, ts), ref.get_velocity(x0, eps, ts), atol=1e-6)
    one = torch.tensor([REFERENCE_TIMESTEP] * 3)
    assert torch.allclose(s.add_noise(x0, eps, REFERENCE_TIMESTEP), ref.add_noise(x0, eps, one), atol=1e-6)
    bf = x0.bfloat16()  # coefficients cast to the sample dtype before the square roots, as diffusers
    assert torch.equal(s.add_noise(bf, eps.bfloat16(), ts), ref.add_noise(bf, eps.bfloat16(), ts))


def test_sigma_levels_and_checks():
    s = NoiseSchedule.from_config(SCHED_5B)
    a = float(s.alphas_cumprod[REFERENCE_TIMESTEP])
    assert REFERENCE_TIMESTEP == 549
    assert float(s.sigma(REFERENCE_TIMESTEP)) == pytest.approx(((1 - a) / a) ** 0.5, rel=1e-12)
    sig = s.sigmas(s.timesteps(5))
    assert sig.dtype == torch.float64 and bool((sig[:-1] > sig[1:]).all())  # decreasing along the DDIM steps
    assert torch.isinf(s.sigma(999))  # zero terminal SNR
    assert s.check_timestep(REFERENCE_TIMESTEP) == 549
    with pytest.raises(ValueError, match="1..999"):
        s.check_timestep(1000)
    with pytest.raises(ValueError, match="prediction_type"):
        NoiseSchedule.from_config({"prediction_type": "flow"})
    with pytest.raises(ValueError, match="timestep_spacing"):
        NoiseSchedule.from_config({"timestep_spacing": "karras"})
    assert s.fingerprint() != NoiseSchedule.from_config({}).fingerprint()


def test_loader_report_and_samplers_share_one_schedule(tmp_path):
    """The loader builds the model's one schedule: its report and the samplers agree on a key the config omits
    (diffusers' default), and a config diffusers would refuse is refused at load with the file named."""
    import json

    from vscene_engine.video.loading import load_video_model
    from vscene_engine.tools.tiny_model import write_tiny_model

    tiny = write_tiny_model(tmp_path / "tiny", frames=5, height=32, width=48, layers=1)
    cfg_path = tiny["base"] / "scheduler" / "scheduler_config.json"
    cfg = json.loads(cfg_path.read_text())
    vm = load_video_model(tiny["base"], prompt_embeds=tiny["prompt_embeds"])
    assert vm.schedule.prediction_type == vm.report["prediction_type"] == "v_prediction"
    assert torch.equal(vm.schedule.alphas_cumprod, NoiseSchedule.from_config(SCHED_5B).alphas_cumprod)
    del cfg["prediction_type"], cfg["snr_shift_scale"]
    cfg_path.write_text(json.dumps(cfg))
    vm = load_video_model(tiny["base"], prompt_embeds=tiny["prompt_embeds"])
    ref = _ref(cfg)
    assert vm.schedule.prediction_type == vm.report["prediction_type"] == ref.config.prediction_type == "epsilon"
    assert torch.allclose(vm.schedule.alphas_cumprod, ref.alphas_cumprod, atol=1e-7, rtol=0)
    cfg_path.write_text(json.dumps(dict(cfg, prediction_type="flow")))
    with pytest.raises(ValueError, match="scheduler_config.json.*prediction_type 'flow'"):
        load_video_model(tiny["base"], prompt_embeds=tiny["prompt_embeds"])
