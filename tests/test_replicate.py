"""Smoke run of the miniature replication (every stage runs; losses fall) and its pieces."""
import dataclasses
import json

import pytest
import torch

from vscene_engine import leap
from vscene_engine import replicate as R


def test_space_to_depth_vae_is_lossless_and_interface_compatible():
    vae = R.SpaceToDepthVAE()
    x = torch.rand(1, 3, 5, 8, 12) * 2 - 1
    z = vae.encode(x).latent_dist.sample(generator=torch.Generator())
    assert z.shape == (1, 12, 5, 4, 6)
    assert torch.equal(vae.decode(z).sample, x)


def test_metrics_direction():
    g = torch.Generator().manual_seed(0)
    gt = torch.rand(5, 8, 8, 3, generator=g)
    noisy = (gt + 0.1 * torch.randn(gt.shape, generator=g)).clamp(0, 1)
    m_same, m_noisy = R.metrics(gt, gt), R.metrics(noisy, gt)
    assert m_same["tde"] == 0 and m_same["ssim"] == pytest.approx(1.0)
    assert m_noisy["psnr"] < 40 and m_noisy["tde"] > 1


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("replicate")
    cfg = dataclasses.replace(R.ReplicateConfig.smoke(), n_train=3, n_test=1, gaussians=3000, render_scale=1,
                              teacher_steps=30, distill_steps=16, ddpnet_steps=8, eval_teacher_steps=(1, 2),
                              ddpnet_bins=4, layers=1)
    torch.set_num_threads(1)
    res = R.replicate(out, cfg, log=lambda s: None)
    return out, cfg, res


def test_smoke_every_stage_runs_and_losses_fall(smoke_run):
    out, cfg, res = smoke_run
    for f in ("table.md", "results.json", "teacher.safetensors", "student.safetensors", "ddpnet.safetensors"):
        assert (out / f).is_file(), f
    assert not list(out.glob(".*tmp*"))
    assert res["teacher_loss"]["last10"] < res["teacher_loss"]["first10"]
    assert res["distill_loss"]["last10"] < res["distill_loss"]["first10"]
    rows = res["rows"]
    names = set(rows)
    assert {"coarse render (3DGS prior)", "teacher, 1 step (from noise)", "teacher, 2 steps (from noise)",
            "student, 1 step, from noise (no leap)", "student, 1 step, leap + DDPNet (full)"} <= names
    for v in rows.values():
        assert all(map(lambda x: x == x, v.values()))  # no NaN
    assert len(res["ddpnet_t"]) == cfg.n_test and all(100 <= t <= cfg.t_max for t in res["ddpnet_t"])
    assert {c["claim"][:20] for c in res["directions"]} and all("holds" in c for c in res["directions"])
    assert json.loads((out / "results.json").read_text())["best_fixed_t"] == res["best_fixed_t"]


def test_student_checkpoint_reloads(smoke_run):
    from safetensors.torch import load_file

    out, cfg, res = smoke_run
    m = R.tiny_model(cfg)
    m.transformer.load_state_dict(load_file(str(out / "student.safetensors")))
    test = R.make_samples(1, cfg, seed0=cfg.seed * 100_000 + 50_000)[0]
    r = leap.leap_sample(m, test["gt"][0], test["gt"][-1], test["coarse"], timestep=cfg.fixed_t, seed=cfg.seed + 1000)
    row = res["rows"][f"student, 1 step, leap t={cfg.fixed_t} (no DDPNet)"]
    assert R.metrics(r.frames, test["gt"])["psnr"] == pytest.approx(row["psnr"], abs=1e-3)
