"""Leap-flow distillation (vscene_engine.train.distill) on a tiny random CogVideoX I2V model built from diffusers classes.

The by-hand reference (``_reference_step``) re-derives VideoScene Algorithm 1 for one step with ``leap``'s helpers and
plain formulas (add_noise, teacher x0, DDIM, LCM boundary condition, pseudo-Huber, AdamW, EMA); only the randomness
contract (``sample_index`` / ``draw_step_noise``: which sample, t_{n+1} and eps per global position) is shared.
"""
from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import pytest
import torch
from tiny_cogvideo_fixtures import FRAMES, H, SCHED_5B, W
from tiny_cogvideo_fixtures import tiny_modules as _tiny_modules

from vscene_engine.train import distill as D
from vscene_engine.video import leap
from vscene_engine.video import schedule
from vscene_engine.video.loading import apply_weights
from vscene_engine.video.model import VideoModel
from progress_util import Recorder  # noqa: E402


LAT = (1, 3, 16, H // 8, W // 8)  # [1, T, C, h, w]


def _make_model() -> VideoModel:
    tr, vae = _tiny_modules()
    for p in tr.parameters():
        p.requires_grad_(False)
    emb = torch.randn(1, 12, 24, generator=torch.Generator().manual_seed(5))
    neg = torch.randn(1, 12, 24, generator=torch.Generator().manual_seed(6))
    return VideoModel(transformer=tr, vae=vae, scheduler_config=dict(SCHED_5B), prompt_embeds=emb,
                      negative_prompt_embeds=neg, name="tiny")


def _samples(n=3, seed=3) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        first, last = torch.randn(1, 1, *LAT[2:], generator=g), torch.randn(1, 1, *LAT[2:], generator=g)
        out.append({"render_latents": torch.randn(LAT, generator=g),
                    "image_latents": torch.cat([first, torch.zeros(1, LAT[1] - 2, *LAT[2:]), last], 1),
                    "name": f"s{i}"})
    return out


def _dataset(n=3) -> D.LatentDataset:
    return D.LatentDataset(_samples(n))


@pytest.fixture(scope="module")
def model():
    return _make_model()


@pytest.fixture(scope="module")
def teacher_state(model):
    return {k: v.clone() for k, v in model.transformer.state_dict().items()}


@pytest.fixture(autouse=True)
def _teacher_untouched(model, teacher_state):
    """Every test: the frozen teacher must come out bit-identical."""
    yield
    for k, v in model.transformer.state_dict().items():
        assert torch.equal(v, teacher_state[k]), f"teacher tensor {k} changed"


def _trained(res) -> dict:
    p = dict(res.student.named_parameters())
    return {n: p[n].detach().clone() for n in res.trainable}


# =========================================================================================== maths
def test_boundary_condition():
    c_skip, c_out = D.boundary_coefs(torch.tensor([0, 1, 20, 999]))
    assert c_skip[0].item() == 1.0 and c_out[0].item() == 0.0
    assert torch.all(c_skip[1:] < c_skip[:-1]) and torch.all(c_out[1:] > c_out[:-1])
    assert c_skip[2] < 1e-5 and abs(c_out[3].item() - 1) < 1e-6
    x, x0 = torch.randn(2, 3, 4, 2, 2), torch.randn(2, 3, 4, 2, 2)
    assert torch.equal(D.consistency_fn(x, x0, torch.tensor([0, 0])), x)  # f(x, 0) = x exactly
    s, o = D.boundary_coefs(torch.tensor([7]), sigma_data=1.0, timestep_scaling=2.0)
    assert math.isclose(s.item(), 1 / (14 ** 2 + 1)) and math.isclose(o.item(), 14 / math.sqrt(14 ** 2 + 1))
    a, b = torch.zeros(1, 5), torch.full((1, 5), 2.0)
    assert math.isclose(D.pseudo_huber(a, b, 0.5).item(), math.sqrt(4 + 0.25) - 0.5, rel_tol=1e-6)


def _reference_step(model, data, seed, k, t_max, cfg_scale, lr):
    """One step of Algorithm 1 by hand: returns (loss, params after AdamW, ema after the update) of the 'all'
    selection, with one sample (batch 1)."""
    s = data[D.sample_index(seed, len(data), 0)]
    t1, eps = D.draw_step_noise(seed, 0, LAT, k, t_max)
    t0 = t1 - k
    acp = schedule.alphas_cumprod(SCHED_5B)
    tr = model.transformer
    rope = leap.rotary_embedding(model, LAT[1], LAT[3], LAT[4], "cpu")
    x0r, img, emb = s["render_latents"], s["image_latents"], model.prompt_embeds

    def x0_of(net, x, t, guided=False):
        out = leap.transformer_output(net, x, img, t, emb, rope)
        if guided:
            u = leap.transformer_output(net, x, img, t, model.negative_prompt_embeds, rope)
            out = u + cfg_scale * (out - u)
        return schedule.x0_from_output(out, x, t, acp, "v_prediction")

    def f(x, x0, t):
        ts = 10.0 * t
        return 0.25 / (ts ** 2 + 0.25) * x + ts / math.sqrt(ts ** 2 + 0.25) * x0

    x_t1 = schedule.add_noise(x0r, eps, t1, acp)
    with torch.no_grad():
        x0_teacher = x0_of(tr, x_t1, t1, guided=cfg_scale > 1)
        a_t, a_p = acp[t1], acp[t0]
        at = ((1 - a_p) / (1 - a_t)) ** 0.5
        x_t0 = at * x_t1 + (a_p ** 0.5 - a_t ** 0.5 * at) * x0_teacher
        target = f(x_t0, x0_of(tr, x_t0, t0), t0)  # the EMA equals the teacher before the first update
    student = copy.deepcopy(tr).train()
    for p in student.parameters():
        p.requires_grad_(True)
    pred = f(x_t1, x0_of(student, x_t1, t1), t1)
    loss = torch.sqrt(((pred - target) ** 2).mean() + 1e-3 ** 2) - 1e-3
    loss.backward()
    torch.nn.utils.clip_grad_norm_(list(student.parameters()), 1.0)
    torch.optim.AdamW(student.parameters(), lr=lr, weight_decay=0.0).step()
    new = {n: p.detach().clone() for n, p in student.named_parameters()}
    old = dict(tr.named_parameters())
    ema = {n: 0.95 * old[n] + 0.05 * new[n] for n in new}
    return loss.item(), new, ema


@pytest.mark.parametrize("cfg_scale", [1.0, 3.0])
def test_first_step_matches_hand_computation(model, cfg_scale):
    data = _dataset(2)
    ref_loss, ref_params, ref_ema = _reference_step(model, data, seed=7, k=20, t_max=900, cfg_scale=cfg_scale,
                                                    lr=1e-3)
    res = D.distill(model, data, steps=1, lr=1e-3, seed=7, train_params="all", cfg_scale=cfg_scale)
    assert res.losses[0] == pytest.approx(ref_loss, rel=1e-5, abs=1e-9)
    got = _trained(res)
    # Adam's first step is ~lr x sign(grad): allow 1 % of lr where a near-zero gradient meets float noise (the
    # batched CFG forward here vs two forwards in the reference)
    for n in got:
        torch.testing.assert_close(got[n], ref_params[n], rtol=0, atol=1e-5)
        torch.testing.assert_close(res.ema[n], ref_ema[n], rtol=0, atol=1e-6)
    assert sum(not torch.equal(got[n], model.transformer.state_dict()[n]) for n in got) == len(got)


# =========================================================================================== training behaviour
def test_loss_falls_and_ema_tracks(model):
    data = _dataset(3)
    kw = dict(steps=60, lr=3e-3, train_params="all", t_max=200, batch_size=2, seed=0)
    res = D.distill(model, data, **kw)
    base = D.distill(model, data, **dict(kw, lr=1e-12))  # same samples and noise, (almost) no learning
    first, last = sum(res.losses[:10]) / 10, sum(res.losses[-10:]) / 10
    assert last < 0.75 * first, (first, last)
    assert last < 0.85 * sum(base.losses[-10:]) / 10
    init = dict(model.transformer.named_parameters())
    stud = _trained(res)
    d_ema = sum((res.ema[n] - stud[n]).pow(2).sum() for n in stud).sqrt()
    d_init = sum((init[n] - stud[n]).pow(2).sum() for n in stud).sqrt()
    d_ema_init = sum((res.ema[n] - init[n]).pow(2).sum() for n in stud).sqrt()
    assert d_ema > 0 and d_ema_init > 0.5 * d_init  # the EMA lags the student but left the initial weights
    assert d_ema < 0.5 * d_init  # ... and moved toward the student


def test_attention_only_changes_attention(model):
    res = D.distill(model, _dataset(2), steps=4, lr=1e-2, train_params="attention")
    assert res.trainable and all("attn" in n for n in res.trainable)
    before = dict(model.transformer.named_parameters())
    changed = 0
    for n, p in res.student.named_parameters():
        if "attn" in n:
            assert p.requires_grad
            changed += not torch.equal(p, before[n])
        else:
            assert not p.requires_grad and torch.equal(p, before[n]), n
    assert changed == len(res.trainable)
    for n, b in res.student.named_buffers():
        assert torch.equal(b, dict(model.transformer.named_buffers())[n])


def test_progress_interrupt_and_checkpointing_passthrough(model, tmp_path):
    rec = Recorder()
    res = D.distill(model, _dataset(2), steps=3, lr=1e-3, progress=rec)
    seen = [(s, t, loss) for _, s, t, loss, _ in rec.updates]
    assert [(s, t) for s, t, _ in seen] == [(1, 3), (2, 3), (3, 3)] and [x for *_, x in seen] == res.losses
    ck = D.distill(model, _dataset(2), steps=3, lr=1e-3, gradient_checkpointing=True)
    assert ck.student.gradient_checkpointing and ck.losses == res.losses
    assert all(torch.equal(a, b) for a, b in zip(_trained(ck).values(), _trained(res).values()))

    out = tmp_path / "i.safetensors"
    with pytest.raises(KeyboardInterrupt):
        D.distill(model, _dataset(2), out, steps=5, lr=1e-3, save_every=1,
                  progress=Recorder(stop_after=2, exc=KeyboardInterrupt))
    assert D.read_checkpoint(out)["step"] == 2


# =========================================================================================== checkpoints
def _ck_tensors(path) -> dict:
    from safetensors.torch import load_file
    return load_file(str(path))


def test_resume_is_bit_identical(model, tmp_path):
    data = _dataset(3)
    kw = dict(lr=2e-3, train_params="attention", seed=3, batch_size=2)
    straight = D.distill(model, data, tmp_path / "a.safetensors", steps=20, save_every=10, **kw)
    half = D.distill(model, data, tmp_path / "b.safetensors", steps=10, **kw)
    assert half.saved == [10]
    resumed = D.distill(model, data, tmp_path / "b.safetensors", steps=20, resume=tmp_path / "b.safetensors", **kw)
    a, b = _ck_tensors(tmp_path / "a.safetensors"), _ck_tensors(tmp_path / "b.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("optim.") for k in a)
    for key in a:
        assert torch.equal(a[key], b[key]), key
    assert resumed.losses == straight.losses and len(resumed.losses) == 20
    ck = D.read_checkpoint(tmp_path / "b.safetensors")
    assert ck["step"] == 20 and ck["config"]["seed"] == 3 and ck["losses"] == straight.losses
    with pytest.raises(ValueError, match="lr"):  # other settings -> refused, listing the difference
        D.distill(model, data, tmp_path / "b.safetensors", steps=30, resume=tmp_path / "b.safetensors",
                  **dict(kw, lr=1e-3))
    with pytest.raises(ValueError, match="already exists"):  # no silent overwrite of a run
        D.distill(model, data, tmp_path / "b.safetensors", steps=30, **kw)


def test_checkpoint_write_is_atomic(model, tmp_path, monkeypatch):
    data = _dataset(2)
    out = tmp_path / "run.safetensors"
    D.distill(model, data, out, steps=2, lr=1e-3)
    before = out.read_bytes()
    calls = []

    def failing_save(tensors, filename, metadata=None):
        calls.append(filename)
        with open(filename, "wb") as fh:
            fh.write(b"\x00" * 100)  # half-written file
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(D, "save_file", failing_save)
    with pytest.raises(OSError, match="disk full"):
        D.distill(model, data, out, steps=4, lr=1e-3, resume=out)
    assert calls and out.read_bytes() == before  # previous checkpoint intact
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.safetensors"]  # no temp files left
    assert D.read_checkpoint(out)["step"] == 2


def test_nonfinite_loss_raises_and_writes_nothing(model, tmp_path):
    out = tmp_path / "nan.safetensors"
    with pytest.raises(ValueError, match=r"non-finite .* step 2.*lr=1e\+30"):
        D.distill(model, _dataset(2), out, steps=5, lr=1e30, grad_clip=0.0, save_every=1)
    assert D.read_checkpoint(out)["step"] == 1  # the step-1 checkpoint, nothing from step 2
    # a poisoned sample on disk (bypassing save_sample's check) fails when it is used, naming the file
    from safetensors.torch import save_file
    folder = tmp_path / "data"
    folder.mkdir()
    s = _samples(1)[0]
    bad = s["render_latents"].clone()
    bad[0, 0, 0, 0, 0] = float("nan")
    save_file({"render_latents": bad, "image_latents": s["image_latents"]}, str(folder / "poison.safetensors"))
    with pytest.raises(ValueError, match="poison.safetensors.*NaN"):
        D.distill(model, folder, tmp_path / "p.safetensors", steps=2)
    assert not (tmp_path / "p.safetensors").exists()
    with pytest.raises(ValueError, match="NaN"):  # in memory: refused at construction
        D.LatentDataset([{"render_latents": bad, "image_latents": s["image_latents"]}])


def test_dataset_errors_and_roundtrip(tmp_path):
    for folder in (tmp_path / "absent", tmp_path):
        with pytest.raises(ValueError, match=r"no training samples in .*render_latents, image_latents"):
            D.LatentDataset(folder)
    with pytest.raises(ValueError, match="no training samples"):
        D.LatentDataset([])
    s = _samples(2)
    small = dict(s[1], render_latents=torch.randn(1, 3, 16, 8, 10), image_latents=torch.randn(1, 3, 16, 8, 10))
    with pytest.raises(ValueError, match="inconsistent sample shapes"):
        D.LatentDataset([s[0], small])
    with pytest.raises(ValueError, match="inconsistent sample shapes"):
        D.LatentDataset([dict(s[0], image_latents=torch.randn(1, 3, 16, 8, 10))])
    folder = tmp_path / "ds"
    for i, x in enumerate(s):
        D.save_sample(folder / f"{i}.safetensors", x["render_latents"], x["image_latents"],
                      gt_latents=x["render_latents"] * 2)
    ds = D.LatentDataset(folder)
    assert len(ds) == 2 and ds.shape == LAT[1:] and ds.names == ["0.safetensors", "1.safetensors"]
    assert torch.equal(ds[1]["image_latents"], s[1]["image_latents"]) and ds[1]["gt_latents"] is not None
    D.save_sample(folder / "2.safetensors", small["render_latents"], small["image_latents"])
    with pytest.raises(ValueError, match="inconsistent sample shapes"):
        D.LatentDataset(folder)
    from safetensors.torch import save_file
    (folder / "2.safetensors").unlink()
    save_file({"render_latents": s[0]["render_latents"]}, str(folder / "3.safetensors"))
    with pytest.raises(ValueError, match="lacks image_latents"):
        D.LatentDataset(folder)


def test_geometry_and_settings_are_checked(model):
    wrong = D.LatentDataset([{"render_latents": torch.randn(1, 3, 16, 8, 10),
                              "image_latents": torch.randn(1, 3, 16, 8, 10)}])
    with pytest.raises(ValueError, match="learned positional embeddings"):
        D.distill(model, wrong, steps=1)
    for bad in (dict(k=0), dict(t_max=1000), dict(ema=1.0), dict(train_params="mlp"), dict(lr=-1.0)):
        with pytest.raises(ValueError):
            D.distill(model, _dataset(1), steps=1, **bad)


def test_encode_sample_with_the_vae(model, tmp_path):
    g = torch.Generator().manual_seed(0)
    video = torch.rand(FRAMES, H, W, 3, generator=g)
    s = D.encode_sample(model, video[0], video[-1], video, gt_video=video.flip(0))
    assert s["render_latents"].shape == LAT and s["image_latents"].shape == LAT and s["gt_latents"].shape == LAT
    assert torch.all(s["image_latents"][:, 1:-1] == 0)
    D.save_sample(tmp_path / "x.safetensors", **s)
    assert D.LatentDataset(tmp_path).shape == LAT[1:]


# =========================================================================================== export
def test_export_loads_with_apply_weights(model, tmp_path):
    ck = tmp_path / "ck.safetensors"
    res = D.distill(model, _dataset(2), ck, steps=3, lr=1e-2, train_params="attention")
    for which in ("ema", "student"):
        path = D.export_student(ck, tmp_path / which / "model.safetensors", which=which, base=model.transformer)
        fresh = copy.deepcopy(model.transformer)
        rep = apply_weights(fresh, path)
        n_keys = len(fresh.state_dict())
        assert (len(rep.matched), rep.missing, rep.unexpected) == (n_keys, [], [])
        want = res.ema if which == "ema" else _trained(res)
        got, base = fresh.state_dict(), model.transformer.state_dict()
        for key in got:
            assert torch.equal(got[key], want[key] if key in want else base[key]), key
        if which == "student":
            sd = res.student.state_dict()
            assert all(torch.equal(got[key], sd[key]) for key in got)
    part = D.export_student(ck, tmp_path / "partial.safetensors")
    rep = apply_weights(copy.deepcopy(model.transformer), part)
    assert sorted(rep.matched) == sorted(res.trainable) and rep.unexpected == []
    with pytest.raises(ValueError, match="not a distillation checkpoint"):
        D.export_student(path, tmp_path / "again.safetensors")


def test_command_line_on_a_tiny_model_folder(tmp_path):
    """python -m vscene_engine.train.distill on the real folder format: train, checkpoint, export, reload."""
    from vscene_engine.video.loading import load_video_model
    from vscene_engine.tools.tiny_model import write_tiny_model

    paths = write_tiny_model(tmp_path / "m", layers=1)
    g = torch.Generator().manual_seed(1)
    for i in range(2):
        D.save_sample(tmp_path / "data" / f"{i}.safetensors", torch.randn(LAT, generator=g),
                      torch.randn(LAT, generator=g))
    args = ["--model", str(paths["base"]), "--data", str(tmp_path / "data"), "--out", str(tmp_path / "ck.safetensors"),
            "--prompt-embeds", str(paths["prompt_embeds"]), "--steps", "2", "--lr", "1e-3", "--seed", "4"]
    assert D.main(args + ["--export", str(tmp_path / "model.safetensors")]) == 0
    assert D.read_checkpoint(tmp_path / "ck.safetensors")["step"] == 2
    m = load_video_model(paths["base"], weights=tmp_path / "model.safetensors", prompt_embeds=paths["prompt_embeds"])
    w = m.report["weights"]
    assert (w["missing"], w["unexpected"], w["mismatched"]) == (0, 0, 0) and w["matched"] > 0
    assert D.main(args[:-6] + ["--steps", "3", "--resume"] + args[-4:]) == 0  # continue to step 3 from --out
    assert D.read_checkpoint(tmp_path / "ck.safetensors")["step"] == 3
    assert D.main(args[:3] + [str(tmp_path / "nothing")] + args[4:] + ["--overwrite"]) == 2


# =========================================================================================== DDP
def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    from gloo_util import gloo_group

    with gloo_group(rank, world, init_file):
        res = D.distill(_make_model(), _dataset(3), Path(out_dir) / "ddp.safetensors", steps=3, save_every=2,
                        lr=2e-3, train_params="attention", seed=11)
        torch.save({"trained": _trained(res), "ema": res.ema, "losses": res.losses, "local": res.local_losses,
                    "saved": res.saved, "world": res.world_size}, Path(out_dir) / f"rank{rank}.pt")


def test_ddp_two_ranks_equal_single_process(model, tmp_path):
    import torch.multiprocessing as mp

    out = tmp_path / "out"
    out.mkdir()
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "pg_init"), str(out)), nprocs=2, join=True)
    r0, r1 = (torch.load(out / f"rank{r}.pt") for r in (0, 1))
    assert r0["world"] == r1["world"] == 2
    assert r0["saved"] == [2, 3] and r1["saved"] == []  # only rank 0 writes
    assert sorted(p.name for p in out.iterdir()) == ["ddp.safetensors", "rank0.pt", "rank1.pt"]
    for n in r0["trained"]:
        assert torch.equal(r0["trained"][n], r1["trained"][n]) and torch.equal(r0["ema"][n], r1["ema"][n])
    assert r0["losses"] == r1["losses"]  # the logged loss is the rank average
    assert r0["local"] != r1["local"]
    for g, a, b in zip(r0["losses"], r0["local"], r1["local"]):
        assert g == pytest.approx((a + b) / 2, rel=1e-6)
    # one process, same global batch (2 = 1 sample x 2 micro-batches): same samples, noise and gradients
    from gloo_util import torch_threads

    with torch_threads(1):  # as the ranks: bit equality needs the same summation order
        single = D.distill(model, _dataset(3), steps=3, grad_accum=2, lr=2e-3, train_params="attention", seed=11)
    assert single.losses == pytest.approx(r0["losses"], rel=1e-6)
    ck = D.read_checkpoint(out / "ddp.safetensors")
    assert ck["step"] == 3 and ck["config"]["global_batch"] == 2
    for n, v in _trained(single).items():
        assert torch.equal(v, r0["trained"][n]), n  # bit-identical (power-of-two averaging is exact)
        assert torch.equal(ck["student"][n], v) and torch.equal(ck["ema"][n], single.ema[n])
