"""CogVideoX I2V loading: tiny real-format folders, student weights, prompt embeddings, dtype policy, 5B layout."""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from vscene_engine.video.loading import (
    COGVIDEOX_5B_I2V_TRANSFORMER_CONFIG, COGVIDEOX_5B_VAE_CONFIG, apply_weights, build_on_meta, inspect_base_folder,
    load_component, load_prompt_embeds, load_video_model, manifest_of_files, plan_state_dict, real_layout_check,
    resolve_dtype,
)
from vscene_engine.tools.tiny_model import main as tiny_main
from vscene_engine.tools.tiny_model import write_tiny_model

diffusers = pytest.importorskip("diffusers")
from diffusers import AutoencoderKLCogVideoX, CogVideoXTransformer3DModel  # noqa: E402

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A tiny CogVideoX I2V folder (9 frames, 64x96) with videoscene/ student weights, written once."""
    return write_tiny_model(tmp_path_factory.mktemp("models") / "CogVideoX-tiny-I2V", frames=9, height=64, width=96)


@pytest.fixture(scope="module")
def base_transformer(tiny):
    info = inspect_base_folder(tiny["base"])
    return load_component(CogVideoXTransformer3DModel, info["transformer"], torch.float32)


def _file_tensors(path) -> dict:
    with safe_open(str(path), "pt") as fh:
        return {k: fh.get_tensor(k) for k in fh.keys()}


def _clone_sd(module) -> dict:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _sd_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def _value_diffs(a: dict, b: dict) -> list[str]:
    """Keys whose values differ (b cast to a's dtype: diffusers without accelerate keeps pos_embedding in float64)."""
    assert a.keys() == b.keys()
    return [k for k in a if not torch.equal(a[k], b[k].to(a[k].dtype))]


def _copy_base(tiny, dst: Path) -> Path:
    shutil.copytree(tiny["base"], dst)
    return dst


def _transformer_inputs(frames=9, h=8, w=12, D=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = (frames - 1) // 4 + 1
    x = torch.randn(1, T, 32, h, w, generator=g)
    text = torch.randn(1, 226, D, generator=g)
    return x, text, torch.tensor([500])


# --------------------------------------------------------------------------------------------- folder layout


def test_inspect_tiny_folder(tiny):
    info = inspect_base_folder(tiny["base"])
    assert info["transformer"]["files"] == [tiny["transformer"] / "diffusion_pytorch_model.safetensors"]
    assert info["vae"]["format"] == "safetensors" and info["vae"]["variant"] is None
    assert info["scheduler"]["config"] == tiny["scheduler"]
    assert info["text_encoder"] is None and info["tokenizer"] is None
    idx = json.loads(tiny["model_index"].read_text())
    assert idx["_class_name"] == "CogVideoXImageToVideoPipeline" and idx["text_encoder"] == [None, None]


def test_missing_folder_message(tmp_path):
    missing = tmp_path / "CogVideoX-5b-I2V"
    with pytest.raises(ValueError) as ei:
        inspect_base_folder(missing)
    msg = str(ei.value)
    assert str(missing) in msg and "does not exist" in msg
    assert "transformer/" in msg and "scheduler_config.json" in msg and "diffusion_pytorch_model" in msg


def test_missing_vae_message(tiny, tmp_path):
    base = _copy_base(tiny, tmp_path / "m")
    shutil.rmtree(base / "vae")
    (base / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(ValueError) as ei:
        inspect_base_folder(base)
    msg = str(ei.value)
    assert str(base) in msg and "missing folder vae/" in msg and "missing scheduler/scheduler_config.json" in msg
    assert "transformer/" in msg and "config.json" in msg  # the expected tree is shown


def test_missing_weights_and_component_hint(tiny, tmp_path):
    base = _copy_base(tiny, tmp_path / "m")
    (base / "vae" / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(ValueError, match=r"missing vae/diffusion_pytorch_model\.safetensors"):
        inspect_base_folder(base)
    with pytest.raises(ValueError, match="single component folder"):
        inspect_base_folder(base / "transformer")
    with pytest.raises(ValueError, match="contains model folders: m"):
        inspect_base_folder(tmp_path)


def test_variant_file_name(tiny, tmp_path):
    base = _copy_base(tiny, tmp_path / "m")
    t = base / "transformer"
    os.replace(t / "diffusion_pytorch_model.safetensors", t / "diffusion_pytorch_model.bf16.safetensors")
    info = inspect_base_folder(base)
    assert info["transformer"]["variant"] == "bf16"
    m = load_component(CogVideoXTransformer3DModel, info["transformer"], torch.float32)
    assert _sd_equal(_clone_sd(m), _file_tensors(t / "diffusion_pytorch_model.bf16.safetensors"))


# --------------------------------------------------------------------------------------------- base loading


def test_roundtrip_matches_diffusers_from_pretrained(tiny):
    vm = load_video_model(tiny["base"], prompt_embeds=tiny["prompt_embeds"])
    ref_t = CogVideoXTransformer3DModel.from_pretrained(str(tiny["transformer"])).eval()
    ref_v = AutoencoderKLCogVideoX.from_pretrained(str(tiny["vae"])).eval()
    assert _value_diffs(vm.transformer.state_dict(), ref_t.state_dict()) == []
    assert _sd_equal(vm.vae.state_dict(), ref_v.state_dict())
    assert {t.dtype for t in vm.transformer.state_dict().values()} == {torch.float32}
    assert _sd_equal(vm.transformer.state_dict(), _file_tensors(tiny["transformer"] /
                                                                "diffusion_pytorch_model.safetensors"))
    assert not vm.transformer.training and not any(p.requires_grad for p in vm.transformer.parameters())
    assert vm.transformer.patch_embed.pos_embedding.dtype == torch.float32
    x, text, ts = _transformer_inputs()
    with torch.no_grad():
        a = vm.transformer(x, text, ts, return_dict=False)[0]
        b = ref_t(x, text, ts, return_dict=False)[0]
        assert a.shape == (1, 3, 16, 8, 12) and a.abs().mean() > 0
        assert torch.equal(a, b)
        img = torch.rand(1, 3, 5, 32, 48, generator=torch.Generator().manual_seed(1)) * 2 - 1
        za = vm.vae.encode(img).latent_dist.mean
        zb = ref_v.encode(img).latent_dist.mean
        assert za.shape == (1, 16, 2, 4, 6) and torch.equal(za, zb)
        assert torch.equal(vm.vae.decode(za).sample, ref_v.decode(zb).sample)
    # VideoModel fields
    assert vm.dtype == torch.float32 and vm.device == torch.device("cpu") and vm.name == "CogVideoX-tiny-I2V"
    assert vm.scheduler_config["prediction_type"] == "v_prediction" and vm.report["prediction_type"] == "v_prediction"
    assert vm.prompt_embeds.shape == (1, 226, 32) and vm.prompt_embeds.dtype == torch.float32
    assert vm.native_size == (64, 96) and vm.native_frames == 9 and vm.latent_channels == 16
    assert vm.report["weights"] is None and vm.report["prompt"]["prompt_embeds"] == str(tiny["prompt_embeds"])


def test_bf16_casting(tiny):
    vm = load_video_model(tiny["base"], prompt_embeds=tiny["prompt_embeds"], weights=tiny["student"], dtype="bf16")
    assert vm.dtype == torch.bfloat16 and vm.report["dtype"] == "bfloat16"
    for mod in (vm.transformer, vm.vae):
        tensors = list(mod.parameters()) + list(mod.buffers())
        assert tensors and all(t.dtype == torch.bfloat16 for t in tensors if t.is_floating_point())
        assert all(t.device.type == "cpu" for t in tensors)
    student = _file_tensors(tiny["student"])
    sd = vm.transformer.state_dict()
    assert all(torch.equal(sd[k], student[k].to(torch.bfloat16)) for k in student)
    assert vm.prompt_embeds.dtype == torch.float32


def test_sharded_checkpoint(tiny, tmp_path):
    base = _copy_base(tiny, tmp_path / "m")
    ref = CogVideoXTransformer3DModel.from_pretrained(str(tiny["transformer"]))
    shutil.rmtree(base / "transformer")
    ref.save_pretrained(str(base / "transformer"), max_shard_size="20KB")
    info = inspect_base_folder(base)
    assert info["transformer"]["index"] is not None and len(info["transformer"]["files"]) > 2
    m = load_component(CogVideoXTransformer3DModel, info["transformer"], torch.float32)
    assert _value_diffs(_clone_sd(m), ref.state_dict()) == []
    # a shard listed in the index but missing -> clear error
    info["transformer"]["files"][1].unlink()
    with pytest.raises(ValueError, match="missing"):
        inspect_base_folder(base)


def test_truncated_base_weights(tiny, tmp_path):
    base = _copy_base(tiny, tmp_path / "m")
    f = base / "vae" / "diffusion_pytorch_model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ValueError, match="corrupt or truncated safetensors file .*re-download") as ei:
        load_video_model(base, prompt_embeds=tiny["prompt_embeds"])
    assert str(f) in str(ei.value)


def test_incomplete_base_names_missing_keys(tiny, tmp_path):
    base = _copy_base(tiny, tmp_path / "m")
    f = base / "transformer" / "diffusion_pytorch_model.safetensors"
    sd = _file_tensors(f)
    del sd["proj_out.weight"]
    save_file(sd, str(f))
    with pytest.raises(ValueError, match=r"1 missing keys.*proj_out\.weight") as ei:
        load_video_model(base, prompt_embeds=tiny["prompt_embeds"])
    assert str(f) in str(ei.value)


def test_t2v_refused(tiny, tmp_path):
    base = _copy_base(tiny, tmp_path / "m")
    cfg_path = base / "transformer" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["in_channels"] = 16
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=r"not an image-to-video CogVideoX model \(in_channels=16"):
        load_video_model(base, prompt_embeds=tiny["prompt_embeds"])


def test_needs_prompt_source(tiny):
    with pytest.raises(ValueError, match="need prompt_embeds or a prompt with a text encoder"):
        load_video_model(tiny["base"])
    with pytest.raises(ValueError, match="prompt_embeds") as ei:
        load_video_model(tiny["base"], prompt="a living room")
    assert "text_encoder" in str(ei.value)


def test_text_encoder_path(tiny, tmp_path, monkeypatch):
    import vscene_engine.video.loading as cl

    base = _copy_base(tiny, tmp_path / "m")
    (base / "text_encoder").mkdir()
    (base / "text_encoder" / "config.json").write_text("{}")
    (base / "tokenizer").mkdir()
    (base / "tokenizer" / "spiece.model").write_bytes(b"x")
    info = inspect_base_folder(base)
    assert info["text_encoder"] == base / "text_encoder" and info["tokenizer"] == base / "tokenizer"
    # an embedding file wins: the T5 is never touched even when a prompt is given too
    def boom(*a, **k):
        raise AssertionError("T5 loaded although prompt_embeds was given")

    monkeypatch.setattr(cl, "encode_prompt", boom)
    vm = load_video_model(base, prompt_embeds=tiny["prompt_embeds"], prompt="a room", negative_prompt_embeds=
                          tiny["prompt_embeds"], negative_prompt="blurry")
    assert vm.report["prompt"] == {"prompt_embeds": str(tiny["prompt_embeds"]),
                                   "negative_prompt_embeds": str(tiny["prompt_embeds"])}
    monkeypatch.undo()
    if importlib.util.find_spec("transformers") is None:
        with pytest.raises(ValueError, match="'transformers' package is not installed.*prompt_embeds"):
            load_video_model(base, prompt="a room")
    with pytest.raises(ValueError, match="no text_encoder/ \\+ tokenizer/.*prompt_embeds"):
        cl.encode_prompt(tiny["base"], "a room")


# --------------------------------------------------------------------------------------------- student weights


def test_apply_student_weights(tiny, base_transformer):
    m = base_transformer
    before = _clone_sd(m)
    rep = apply_weights(m, tiny["student"])
    n = len(before)
    assert (len(rep.matched), len(rep.missing), len(rep.unexpected), len(rep.mismatched)) == (n, 0, 0, 0)
    assert rep.summary() == f"{n} matched, 0 missing, 0 unexpected"
    student = _file_tensors(tiny["student"])
    assert _sd_equal(_clone_sd(m), student)
    assert not _sd_equal(before, student)
    # manifest from headers only
    man = manifest_of_files(tiny["student"])
    assert set(man) == set(student) and man["proj_out.weight"] == (tuple(student["proj_out.weight"].shape), "F32")


def test_prefixed_and_partial_weights(tiny, base_transformer, tmp_path):
    student = _file_tensors(tiny["student"])
    f = tmp_path / "prefixed.safetensors"
    save_file({"module.transformer." + k: v + 1 for k, v in student.items()}, str(f))
    rep = apply_weights(base_transformer, f)
    assert len(rep.matched) == len(student) and rep.prefix_stripped == "module.transformer."
    assert torch.equal(base_transformer.state_dict()["proj_out.weight"], student["proj_out.weight"] + 1)
    partial = tmp_path / "partial.safetensors"
    save_file({"proj_out.weight": student["proj_out.weight"], "extra.weight": torch.zeros(2)}, str(partial))
    rep = apply_weights(base_transformer, partial)
    assert (len(rep.matched), len(rep.missing), len(rep.unexpected)) == (1, len(student) - 1, 1)
    assert rep.to_dict()["unexpected_keys"] == ["extra.weight"]


@pytest.mark.parametrize("case", ["unrelated", "lora", "mismatch", "truncated"])
def test_refused_files_leave_module_unchanged(case, tiny, base_transformer, tmp_path):
    student = _file_tensors(tiny["student"])
    f = tmp_path / f"{case}.safetensors"
    if case == "unrelated":
        save_file({f"encoder.layer.{i}.weight": torch.zeros(3) for i in range(5)}, str(f))
        expect = r"(?i)no key of .*unrelated\.safetensors.*5 keys.*is this a CogVideoX transformer checkpoint"
    elif case == "lora":
        save_file({"transformer_blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 16),
                   "transformer_blocks.0.attn1.to_q.lora_B.weight": torch.zeros(16, 4)}, str(f))
        expect = "LoRA"
    elif case == "mismatch":
        bad = dict(student)
        bad["proj_out.weight"] = torch.zeros(3, 3)
        save_file(bad, str(f))
        expect = r"wrong shape.*proj_out\.weight"
    else:
        data = tiny["student"].read_bytes()
        f.write_bytes(data[: len(data) // 2])
        expect = "corrupt or truncated safetensors file .*truncated.safetensors.*re-download"
    before = _clone_sd(base_transformer)
    with pytest.raises(ValueError, match=expect):
        apply_weights(base_transformer, f)
    assert _sd_equal(before, _clone_sd(base_transformer))


def test_plan_state_dict_bookkeeping():
    rep = plan_state_dict({"a": (2, 3), "b": (4,), "c": (1,)}, {"a": ((2, 3), "BF16"), "b": (5,), "d": (1,)})
    assert rep.matched == ["a"] and rep.missing == ["c"] and rep.unexpected == ["d"]
    assert rep.mismatched == [("b", (4,), (5,))]


# --------------------------------------------------------------------------------------------- prompt embeds


def _make_marker(path):  # pragma: no cover - must never run
    Path(path).write_text("pwned")
    return torch.zeros(1)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (_make_marker, (self.marker,))


def test_prompt_embeds_forms(tmp_path):
    t = torch.randn(1, 226, 32)
    forms = {"a.pt": t, "b.pt": t[0], "c.pt": {"prompt_embeds": t}, "d.pth": {"whatever": t[0].double()}}
    for name, obj in forms.items():
        torch.save(obj, tmp_path / name)
        got = load_prompt_embeds(tmp_path / name, text_embed_dim=32, max_len=226)
        assert got.shape == (1, 226, 32) and got.dtype == torch.float32 and got.device.type == "cpu"
        assert torch.allclose(got, t)
    save_file({"prompt_embeds": t}, str(tmp_path / "e.safetensors"))
    assert torch.equal(load_prompt_embeds(tmp_path / "e.safetensors", 32, 226), t)
    with pytest.raises(ValueError, match=r"D=32 but the transformer expects text_embed_dim=4096"):
        load_prompt_embeds(tmp_path / "a.pt", text_embed_dim=4096)
    with pytest.raises(ValueError, match=r"L=226 tokens but this CogVideoX needs exactly 300"):
        load_prompt_embeds(tmp_path / "a.pt", max_len=300)
    torch.save({"a": t, "b": t}, tmp_path / "two.pt")
    with pytest.raises(ValueError, match="expected a single tensor or the key 'prompt_embeds'"):
        load_prompt_embeds(tmp_path / "two.pt")
    with pytest.raises(ValueError, match="does not exist"):
        load_prompt_embeds(tmp_path / "nope.pt")
    data = (tmp_path / "a.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.pt.*corrupt or truncated"):
        load_prompt_embeds(tmp_path / "cut.pt")
    with pytest.raises(ValueError, match=r"shape \[2, 226, 32\]"):
        load_prompt_embeds(torch.zeros(2, 226, 32))


def test_prompt_embeds_pickle_not_executed(tmp_path):
    marker = tmp_path / "marker.txt"
    f = tmp_path / "evil.pt"
    torch.save({"prompt_embeds": _Evil(str(marker))}, f)
    assert not marker.exists()
    with pytest.raises(ValueError, match="need pickle code"):
        load_prompt_embeds(f)
    assert not marker.exists()


# --------------------------------------------------------------------------------------------- dtype policy


def test_dtype_policy():
    assert resolve_dtype("cpu") == torch.float32 and resolve_dtype("cpu", "auto") == torch.float32
    assert resolve_dtype("cpu", "bf16") == torch.bfloat16 and resolve_dtype("cpu", torch.float32) == torch.float32
    assert resolve_dtype("cpu", "fp16", n_params=10**8) == torch.float16
    n5b = 5_570_479_680  # CogVideoX-5b-I2V transformer (see test_real_5b_layout_on_meta)
    with pytest.raises(ValueError, match="fp16 gives NaNs/black frames on CogVideoX-5B; use bf16"):
        resolve_dtype("cuda", "fp16", n_params=n5b)
    with pytest.warns(UserWarning, match="fp16 gives NaNs"):
        assert resolve_dtype("cpu", torch.float16, n_params=n5b, allow_fp16=True) == torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("cpu", "int8")


# --------------------------------------------------------------------------------------------- real 5B layout


def test_real_5b_layout_on_meta():
    import resource

    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    r = real_layout_check(COGVIDEOX_5B_I2V_TRANSFORMER_CONFIG, COGVIDEOX_5B_VAE_CONFIG)
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss0) < 2 * 1024 ** 2  # KiB: no 11-22 GB alloc
    assert r["devices"] == ["meta"]
    t, v = r["transformer"], r["vae"]
    assert t["n_keys"] >= 1000 and 5.5e9 <= t["n_params"] <= 5.7e9
    for plan in (t["self"], t["download"], t["prefixed_download"], v["self"], v["download"]):
        assert plan["missing"] == plan["unexpected"] == plan["mismatched"] == 0
    assert t["download"]["matched"] == t["n_keys"] and v["download"]["matched"] == v["n_keys"]
    assert 2e8 < v["n_params"] < 2.3e8 and t["n_shards"] >= 2
    assert r["t2v_against_i2v"]["mismatched_keys"] == ["patch_embed.proj.weight"]
    g = r["geometry"]
    assert (g["frames"], g["height"], g["width"]) == (49, 480, 720)
    assert tuple(g["latent"]) == (13, 60, 90) and g["tokens"] == 13 * 30 * 45 == 17550
    assert tuple(g["pos_embedding"]) == (1, 226 + 17550, 3072) and g["consistent"]
    # fp16 policy on the real parameter count
    with pytest.raises(ValueError, match="fp16 gives NaNs"):
        resolve_dtype("cpu", "fp16", n_params=t["n_params"])


def test_build_on_meta_ignores_unknown_keys():
    cfg = dict(COGVIDEOX_5B_I2V_TRANSFORMER_CONFIG, num_layers=1, _class_name="CogVideoXTransformer3DModel",
               _diffusers_version="0.30.0", not_a_real_key=3)
    m = build_on_meta(CogVideoXTransformer3DModel, cfg)
    assert all(p.is_meta for p in m.parameters())


# --------------------------------------------------------------------------------------------- tiny writer


def test_tiny_writer_deterministic_and_validated(tmp_path):
    a = write_tiny_model(tmp_path / "a", frames=5, height=32, width=48, seed=3, layers=1)
    b = write_tiny_model(tmp_path / "b", frames=5, height=32, width=48, seed=3, layers=1)
    for key in ("student", "prompt_embeds"):
        assert a[key].read_bytes() == b[key].read_bytes()
    for comp in ("transformer", "vae"):
        f = "diffusion_pytorch_model.safetensors"
        assert (a[comp] / f).read_bytes() == (b[comp] / f).read_bytes()
    cfg = json.loads((a["transformer"] / "config.json").read_text())
    assert (cfg["sample_frames"], cfg["sample_height"], cfg["sample_width"], cfg["in_channels"]) == (5, 4, 6, 32)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp leftovers
    # rewriting over an earlier tiny model works; over a foreign folder is refused
    write_tiny_model(tmp_path / "a", frames=5, height=32, width=48, seed=4, layers=1, with_student=False)
    assert not (tmp_path / "a" / "videoscene").exists()
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "x.txt").write_text("keep")
    with pytest.raises(ValueError, match="not an earlier tiny model"):
        write_tiny_model(tmp_path / "foreign", frames=5, height=32, width=48, layers=1)
    assert (tmp_path / "foreign" / "x.txt").read_text() == "keep"
    with pytest.raises(ValueError, match="4k\\+1"):
        write_tiny_model(tmp_path / "c", frames=8)
    with pytest.raises(ValueError, match="multiples of 16"):
        write_tiny_model(tmp_path / "c", height=40)


def test_tiny_cli(tmp_path, capsys):
    with pytest.raises(SystemExit) as ei:
        tiny_main(["--help"])
    assert ei.value.code == 0 and "--frames" in capsys.readouterr().out
    assert tiny_main(["--out", str(tmp_path / "m"), "--frames", "5", "--height", "32", "--width", "48",
                      "--layers", "1"]) == 0
    assert inspect_base_folder(tmp_path / "m")["transformer"]["files"]
    assert tiny_main(["--out", str(tmp_path / "n"), "--frames", "6"]) == 2


def test_loader_warning_free(tiny):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_video_model(tiny["base"], prompt_embeds=tiny["prompt_embeds"], weights=tiny["student"])
