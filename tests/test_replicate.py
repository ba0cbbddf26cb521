"""Smoke run of the miniature replication (every stage runs; losses fall) and its pieces."""
import dataclasses
import json

import pytest
import torch

from vscene_engine.video import leap
from vscene_engine.tools import replicate as R


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
    assert m_same["sharp"] == pytest.approx(1.0)


def test_sharpness_tells_blur_from_noise():
    gt = _smooth_video()
    noisy = (gt + 0.05 * torch.randn(gt.shape, generator=torch.Generator().manual_seed(1))).clamp(0, 1)
    blurred = torch.nn.functional.avg_pool2d(gt.permute(0, 3, 1, 2), 5, 1, 2, count_include_pad=False)
    assert R.metrics(noisy, gt)["sharp"] > 1.5
    assert R.metrics(blurred.permute(0, 2, 3, 1), gt)["sharp"] < 0.7


def _smooth_video(seed=0, F=9, H=32, W=48):
    g = torch.Generator().manual_seed(seed)
    v = torch.rand(F, 3, H // 4, W // 4, generator=g)
    return torch.nn.functional.interpolate(v, size=(H, W), mode="bilinear").permute(0, 2, 3, 1).contiguous()


def test_damage_video_grows_with_level_and_is_seeded():
    from vscene_engine.render.losses import psnr
    from vscene_engine.tools.synthetic import damage_video

    v = _smooth_video()
    assert torch.allclose(damage_video(v, 0.0, seed=3), v, atol=1e-5)
    assert torch.equal(damage_video(v, 0.5, seed=3), damage_video(v, 0.5, seed=3))
    assert not torch.equal(damage_video(v, 0.5, seed=3), damage_video(v, 0.5, seed=4))
    p = [float(psnr(damage_video(v, lv, seed=3), v)) for lv in (0.1, 0.4, 0.7, 1.0)]
    assert all(a > b for a, b in zip(p, p[1:])), p
    d = damage_video(v, 1.0, seed=3)
    err = (d - v).abs().mean(dim=(1, 2, 3))
    assert err[0] < err[4] and err[-1] < err[4]  # least damage next to the input views
    with pytest.raises(ValueError, match="level"):
        damage_video(v, 1.5)


def test_damage_levels_stratified_cover_every_bucket():
    cfg = R.ReplicateConfig()
    lv = cfg.damage_levels(6, seed=1, stratified=True)
    assert all(cfg.damage_min <= x <= cfg.damage_max for x in lv)
    assert [cfg.damage_bucket(x) for x in lv] == ["light", "light", "medium", "medium", "heavy", "heavy"]
    assert cfg.damage_levels(6, 1, False) == cfg.damage_levels(6, 1, False)


def _fake_ev(student_heavy, coarse_heavy, ddpnet, best, oracle_ts, t1_sharp=0.5, t50_sharp=0.9):
    m = lambda p, sharp=1.0: {"psnr": p, "ssim": 0.5, "tde": 1.0, "sharp": sharp}  # noqa: E731
    rows = {R.ROW_COARSE: m(15.0), R.row_teacher(1): m(17.0, t1_sharp), R.row_teacher(50): m(16.5, t50_sharp),
            R.ROW_NOISE: m(14.0), R.row_fixed(549): m(15.0), R.row_best(300): m(best), R.ROW_ORACLE: m(best + 1),
            R.ROW_DDPNET: m(ddpnet)}
    heavy = dict(rows, **{R.ROW_COARSE: m(coarse_heavy), R.ROW_DDPNET: m(student_heavy)})
    scenes = [{"oracle_t": t, "bucket": "heavy" if t > 300 else "light", "ddpnet_t": 300} for t in oracle_ts]
    return {"rows": rows, "by_level": {"light": rows, "heavy": heavy}, "scenes": scenes,
            "ddpnet_t": [300] * len(oracle_ts)}


def test_directions_are_computed_from_the_numbers():
    cfg = R.ReplicateConfig()
    good = {c["claim"][:30]: c for c in R.directions(_fake_ev(14.0, 12.0, 16.3, 15.9, [100, 700]), cfg, 300)}
    bad = {c["claim"][:30]: c for c in R.directions(_fake_ev(11.0, 12.0, 15.0, 15.9, [300, 300], 0.9, 0.5), cfg,
                                                    300)}
    assert good.keys() == bad.keys()
    for k in good:
        assert good[k]["why_not"] == "" or not good[k]["holds"]
    flips = [k for k in good if good[k]["holds"] != bad[k]["holds"]]
    assert {k[:10] for k in flips} >= {"the best l", "DDPNet bea", "student 1-", "teacher 1-"}
    assert all(bad[k]["why_not"] for k in flips)


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("replicate")
    cfg = dataclasses.replace(R.ReplicateConfig.smoke(), n_train=3, n_test=3, gaussians=3000, render_scale=1,
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
    assert {R.ROW_COARSE, R.row_teacher(1), R.row_teacher(2), R.ROW_NOISE, R.ROW_DDPNET, R.ROW_ORACLE,
            R.row_fixed(cfg.fixed_t), R.row_best(res["best_fixed_t"])} == names
    for v in rows.values():
        assert all(map(lambda x: x == x, v.values()))  # no NaN
    assert len(res["ddpnet_t"]) == cfg.n_test and all(100 <= t <= cfg.t_max for t in res["ddpnet_t"])
    # held-out levels are stratified: one scene per damage level; the oracle is the best bin of each scene's sweep
    assert [sc["bucket"] for sc in res["scenes"]] == ["light", "medium", "heavy"]
    assert set(res["by_level"]) == {"light", "medium", "heavy"}
    for sc in res["scenes"]:
        assert sc["oracle_t"] == max(sc["sweep_psnr"], key=sc["sweep_psnr"].get)
        assert sc["rows"][R.ROW_ORACLE]["psnr"] >= sc["rows"][R.ROW_DDPNET]["psnr"] - 1e-9
        assert sc["rows"][R.ROW_ORACLE]["psnr"] >= sc["rows"][R.row_best(res["best_fixed_t"])]["psnr"] - 1e-9
    coarse_by_level = [res["by_level"][b][R.ROW_COARSE]["psnr"] for b in ("light", "medium", "heavy")]
    assert coarse_by_level[0] > coarse_by_level[1] > coarse_by_level[2]
    assert {c["claim"][:20] for c in res["directions"]} and all("holds" in c for c in res["directions"])
    assert json.loads((out / "results.json").read_text())["best_fixed_t"] == res["best_fixed_t"]


def test_student_checkpoint_reloads(smoke_run):
    from safetensors.torch import load_file

    out, cfg, res = smoke_run
    m = R.tiny_model(cfg)
    m.transformer.load_state_dict(load_file(str(out / "student.safetensors")))
    test = R.make_samples(cfg.n_test, cfg, seed0=cfg.seed * 100_000 + 50_000, stratified=True)[0]
    r = leap.leap_sample(m, test["gt"][0], test["gt"][-1], test["coarse"], timestep=cfg.fixed_t, seed=cfg.seed + 1000)
    row = res["scenes"][0]["rows"][R.row_fixed(cfg.fixed_t)]
    assert R.metrics(r.frames, test["gt"])["psnr"] == pytest.approx(row["psnr"], abs=1e-3)


def test_report_rebuilds_from_results_json(smoke_run, tmp_path):
    """--report-only recomputes table.md (tables and directions) from results.json alone, equal to the run's own."""
    import shutil

    out, cfg, res = smoke_run
    copy = tmp_path / "run"
    copy.mkdir()
    shutil.copy(out / "results.json", copy / "results.json")
    assert R.rebuild_report(copy) == (out / "table.md").read_text()
    assert (copy / "table.md").read_text() == (out / "table.md").read_text()
    with pytest.raises(ValueError, match="cannot read the results"):
        R.rebuild_report(tmp_path / "missing")
