"""nodes/host.py without ComfyUI: every fallback branch (CI has no ComfyUI importable)."""
import os

os.environ.setdefault("VSCENE_NO_HOST", "1")  # stay on the fallback branch even where ComfyUI is importable

import importlib.util  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
PACK = "videoscene_pack_under_test"  # same name as tests/test_pack.py: one shared pack (and host) instance


def _load_host():
    """nodes/host.py as the pack's nodes see it (pack loaded like ComfyUI does: a package from the repo folder,
    never as a top-level ``nodes`` module); if the pack cannot be imported, host.py alone under a private name."""
    try:
        if PACK not in sys.modules:
            spec = importlib.util.spec_from_file_location(PACK, ROOT / "__init__.py",
                                                          submodule_search_locations=[str(ROOT)])
            mod = importlib.util.module_from_spec(spec)
            sys.modules[PACK] = mod
            try:
                spec.loader.exec_module(mod)
            except BaseException:
                sys.modules.pop(PACK, None)
                raise
        return importlib.import_module(PACK + ".nodes.host")
    except Exception:
        name = "videoscene_host_under_test"
        spec = importlib.util.spec_from_file_location(name, ROOT / "nodes" / "host.py")
        mod = importlib.util.module_from_spec(spec)
        sys.modules[name] = mod
        spec.loader.exec_module(mod)
        return mod


host = _load_host()
from vscene_engine.core import runtime  # noqa: E402  (after the pack registered the engine)

pytestmark = pytest.mark.skipif(host.HOST_AVAILABLE, reason="nodes.host was imported with ComfyUI present")


# ----------------------------------------------------------------------------------------------- progress
def test_progress_counts_and_previews():
    p = host.progress(3, "test")
    assert isinstance(p, runtime.Progress)  # the engine's protocol, implemented once here
    p.update(1, 3, stage="fit", loss=0.5)
    prev = torch.rand(8, 6, 3)
    p.update(2, 3, stage="fit", preview=prev)
    assert (p.n, p.total, p.stage, p.loss) == (2, 3, "fit", None)
    assert p.previews == 1 and p.last_preview is prev
    p.update(5, 3, stage="fit")  # clamped at total
    assert p.n == 3
    p.update(1, 10, stage="render")  # a new stage: the bar follows its total
    assert (p.n, p.total, p.stage) == (1, 10, "render")
    p.check_interrupt()  # nothing pending
    p.close()
    p.close()  # idempotent
    with host.progress(2, "ctx") as q:
        q.update(1, 2)
        assert q.n == 1


def test_progress_preview_every():
    p = host.progress(10, "thin", preview_every=4)
    for i in range(1, 11):
        p.update(i, 10, preview=torch.full((4, 4, 3), i / 10))
    assert p.previews == 3 and float(p.last_preview[0, 0, 0]) == 1.0  # 4, 8 and the last (10)
    p.close()


def test_preview_conversion_shapes():
    pytest.importorskip("PIL")
    for t in (torch.rand(10, 12, 3), torch.rand(1, 10, 12, 3), torch.rand(10, 12, 4), torch.rand(3, 10, 12),
              torch.rand(10, 12, 1)):
        im = host._preview_to_pil(t)
        assert im.mode == "RGB" and im.size == (12, 10)
    im = host._preview_to_pil(torch.full((2, 2, 3), 2.0))  # clamped
    assert im.getpixel((0, 0)) == (255, 255, 255)
    with pytest.raises(ValueError):
        host._preview_to_pil(torch.rand(5))


def test_progress_zero_total():
    p = host.progress(0, "empty")
    p.update(0, 0)
    p.close()


# ---------------------------------------------------------------------------------------------- interrupt
def test_interrupt_flag_raises_once():
    host.check_interrupt()  # nothing pending
    host._interrupt_flag.set()
    with pytest.raises(host.Interrupted):
        host.check_interrupt()
    assert not host._interrupt_flag.is_set()
    host.check_interrupt()  # consumed


def test_interrupted_is_not_swallowed_by_except_exception():
    assert issubclass(host.Interrupted, BaseException) and not issubclass(host.Interrupted, Exception)
    host._interrupt_flag.set()
    with pytest.raises(host.Interrupted):
        try:
            host.check_interrupt()
        except Exception:  # pragma: no cover - must not catch it
            pytest.fail("Interrupted was caught by 'except Exception'")


class _StubBar:
    """comfy.utils.ProgressBar as the host sees it: update_absolute(value, total, preview)."""
    made = []

    def __init__(self, total, node_id=None):
        self.total, self.calls = total, []
        _StubBar.made.append(self)

    def update_absolute(self, value, total=None, preview=None):
        self.calls.append((value, total, preview))


class _StubMM:
    """comfy.model_management's interrupt flag: raises ComfyUI-style after ``after`` checks."""

    class InterruptProcessingException(BaseException):
        pass

    def __init__(self, after):
        self.after, self.checks = after, 0

    def throw_exception_if_processing_interrupted(self):
        self.checks += 1
        if self.checks > self.after:
            raise self.InterruptProcessingException()


@pytest.fixture
def stub_host(monkeypatch):
    """The host branch of nodes/host.py on stub ComfyUI modules (ProgressBar + interrupt flag)."""
    import types

    mm = _StubMM(after=10**9)
    _StubBar.made.clear()
    monkeypatch.setattr(host, "HOST_AVAILABLE", True)
    monkeypatch.setattr(host, "_cutils", types.SimpleNamespace(ProgressBar=_StubBar))
    monkeypatch.setattr(host, "_mm", mm)
    return mm


def _tiny_fit_inputs():
    from vscene_engine.tools.synthetic import demo_cameras, procedural_scene
    from vscene_engine.render.rasterize import render

    cams = demo_cameras(24, 16)
    with torch.no_grad():
        imgs = render(procedural_scene(seed=0), cams, background=(1.0, 1.0, 1.0)).rgb.clamp(0, 1)
    return imgs, cams


def test_stub_host_bar_gets_progress_and_previews_from_the_engine(stub_host):
    from vscene_engine.recon.fit import FitConfig, fit_scene

    imgs, cams = _tiny_fit_inputs()
    with host.progress(6, "fit", preview_every=3) as bar:
        fit_scene(imgs, cams, None, FitConfig(n_init=100, iters=6, sh_degree=0), background=(1.0, 1.0, 1.0),
                  final_eval=False, progress=bar)
    (pb,) = _StubBar.made
    assert [(v, t) for v, t, _ in pb.calls] == [(i, 6) for i in range(1, 7)]
    sent = [p for _, _, p in pb.calls]
    assert [p is not None for p in sent] == [False, False, True, False, False, True]
    kind, im, size = sent[2]
    assert kind == "JPEG" and im.size == (24, 16) and im.mode == "RGB" and size == 512
    assert stub_host.checks >= 6  # the engine checked for Cancel through the host


def test_stub_host_cancel_stops_a_long_engine_loop(stub_host):
    from vscene_engine.recon.fit import FitConfig, fit_scene

    imgs, cams = _tiny_fit_inputs()
    stub_host.after = 5
    bar = host.progress(10_000, "fit")
    with pytest.raises(_StubMM.InterruptProcessingException):
        fit_scene(imgs, cams, None, FitConfig(n_init=100, iters=10_000, sh_degree=0), final_eval=False, progress=bar)
    bar.close()
    assert 0 < bar.n < 10 and stub_host.checks == 6


def test_interrupt_checks_only_checks(stub_host):
    p = host.interrupt_checks()
    p.update(1, 2, preview=torch.rand(4, 4, 3))  # shows nothing
    assert _StubBar.made == []
    stub_host.after = 0
    with pytest.raises(_StubMM.InterruptProcessingException):
        p.check_interrupt()


# ------------------------------------------------------------------------------------------------ devices
def test_devices_and_dtype():
    assert isinstance(host.torch_device(), torch.device)
    assert host.offload_device() == torch.device("cpu")
    assert host.intermediate_device() == torch.device("cpu")
    assert host.preferred_dtype("cpu") == torch.float32
    assert host.preferred_dtype(torch.device("cpu"), model_params=10**9) == torch.float32
    host.soft_empty_cache()


def test_device_env_override(monkeypatch):
    monkeypatch.setenv("VSCENE_DEVICE", "cpu")
    assert host.torch_device() == torch.device("cpu")


def test_managed_module_moves():
    lin = torch.nn.Linear(3, 2)
    mm = host.ManagedModule(lin, load_device="cpu", offload_device="cpu")
    assert mm.patcher is None
    assert mm.load_to_gpu(extra_memory=1024) is lin
    assert mm.device == torch.device("cpu")
    assert mm.offload() is lin
    assert host.ManagedModule(torch.nn.Identity()).device == host.offload_device()


# ------------------------------------------------------------------------------------------------- output
@pytest.fixture
def outdir(tmp_path, monkeypatch):
    out = tmp_path / "out"
    monkeypatch.setenv("VSCENE_OUTPUT_DIR", str(out))
    return out


def test_output_path_fresh_and_inside(outdir):
    assert host.output_dir() == str(outdir)
    p1 = host.output_path("videoscene", "render", "png")
    assert p1 == str(outdir / "videoscene" / "render_00001_.png")
    host.atomic_write_bytes(p1, b"x")
    p2 = host.output_path("videoscene", "render", ".png")
    assert p2.endswith("render_00002_.png") and p2 != p1
    p3 = host.output_path("", "a/b/clip", "mp4")
    assert p3 == str(outdir / "a" / "b" / "clip_00001_.mp4")
    assert host.output_ui_entry(p3) == {"filename": "clip_00001_.mp4", "subfolder": "a/b", "type": "output"}
    assert host.output_ui_entry(p1)["subfolder"] == "videoscene"


@pytest.mark.parametrize("sub,prefix", [
    ("/etc", "x"), ("", "/tmp/x"), ("..", "x"), ("", "../x"), ("a/../../b", "x"), ("", "a/../../x"),
    ("", "..\\x"), ("C:\\temp", "x"), ("", "x\x00y"), ("", ""), ("", "a/"),
])
def test_output_path_rejects_escapes(outdir, sub, prefix):
    with pytest.raises(ValueError):
        host.output_path(sub, prefix, "png")


def test_output_path_rejects_symlink_escape(outdir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    outdir.mkdir(parents=True, exist_ok=True)
    try:
        os.symlink(elsewhere, outdir / "link", target_is_directory=True)
    except (OSError, NotImplementedError):
        pytest.skip("symlinks not supported here")
    with pytest.raises(ValueError, match="outside"):
        host.output_path("link", "x", "png")
    with pytest.raises(ValueError, match="outside"):
        host.output_path("", "link/deeper/x", "png")
    assert list(elsewhere.iterdir()) == []  # nothing created through the link


def test_output_path_rejects_bad_ext(outdir):
    for ext in ("../png", "", "a/b", "x" * 40):
        with pytest.raises(ValueError):
            host.output_path("", "x", ext)


def test_output_ui_entry_outside(outdir, tmp_path):
    with pytest.raises(ValueError):
        host.output_ui_entry(str(tmp_path / "not_there.png"))


# ------------------------------------------------------------------------------------------------- atomic
def test_atomic_write_and_error_leaves_nothing(tmp_path):
    target = tmp_path / "d" / "f.bin"
    assert host.atomic_write_bytes(target, b"old") == str(target)
    assert target.read_bytes() == b"old"
    with pytest.raises(RuntimeError):
        with host.atomic_path(target) as tmp:
            assert os.path.dirname(tmp) == str(target.parent) and tmp.endswith(".bin")
            with open(tmp, "wb") as f:
                f.write(b"new")
            raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old"
    assert sorted(os.listdir(target.parent)) == ["f.bin"]

    fresh = tmp_path / "d" / "g.mp4"
    with pytest.raises(KeyboardInterrupt):
        with host.atomic_path(fresh) as tmp:
            assert tmp.endswith(".mp4")
            raise KeyboardInterrupt
    assert not fresh.exists() and sorted(os.listdir(target.parent)) == ["f.bin"]

    with host.atomic_path(fresh) as tmp:
        with open(tmp, "wb") as f:
            f.write(b"video")
    assert fresh.read_bytes() == b"video"
    assert sorted(os.listdir(target.parent)) == ["f.bin", "g.mp4"]


# -------------------------------------------------------------------------------------------------- SPLAT
def test_splat_round_trip():
    gs = pytest.importorskip("vscene_engine.core.gaussians")
    g = torch.Generator().manual_seed(0)
    a = gs.GaussianScene.random(5, sh_degree=1, generator=g)
    b = gs.GaussianScene.random(3, sh_degree=0, generator=g)
    splat = host.scene_to_splat([a, b])
    assert isinstance(splat, host.SPLAT_CLASS)
    assert splat.positions.shape == (2, 5, 3) and splat.scales.shape == (2, 5, 3)
    assert splat.rotations.shape == (2, 5, 4) and splat.opacities.shape == (2, 5, 1)
    assert splat.sh.shape == (2, 5, 4, 3)
    assert splat.counts.tolist() == [5, 3] and splat.counts.dtype == torch.int64
    assert splat.positions.dtype == torch.float32 and splat.positions.device == host.intermediate_device()
    assert torch.count_nonzero(splat.positions[1, 3:]) == 0 and torch.count_nonzero(splat.sh[1, :, 1:]) == 0

    a2, b2 = host.splat_to_scenes(splat)
    for src, dst in ((a, a2), (b, b2)):
        assert len(dst) == len(src)
        torch.testing.assert_close(dst.means, src.means)
        torch.testing.assert_close(dst.scales, src.scales)
        torch.testing.assert_close(dst.quats, src.quats)
        torch.testing.assert_close(dst.opacities, src.opacities)
        torch.testing.assert_close(dst.sh[:, : src.sh.shape[1]], src.sh)
    assert b2.sh.shape == (3, 4, 3) and torch.count_nonzero(b2.sh[:, 1:]) == 0

    one = host.scene_to_splat(a)
    assert one.counts is None and one.positions.shape == (1, 5, 3)
    (a3,) = host.splat_to_scenes(one)
    torch.testing.assert_close(a3.sh, a.sh)


def test_splat_to_scenes_accepts_core_like_objects():
    pytest.importorskip("vscene_engine.core.gaussians")
    # what core File3DToSplat produces: batch 1, counts None, K=1
    splat = host.LocalSPLAT(torch.zeros(1, 2, 3), torch.ones(1, 2, 3) * 0.1,
                            torch.tensor([[[1.0, 0, 0, 0]] * 2]), torch.full((1, 2, 1), 0.5), torch.zeros(1, 2, 1, 3))
    (s,) = host.splat_to_scenes(splat)
    assert s.opacities.shape == (2,) and s.sh.shape == (2, 1, 3)
    odd = host.LocalSPLAT(torch.zeros(1, 2, 3), torch.ones(1, 2, 3), torch.tensor([[[1.0, 0, 0, 0]] * 2]),
                          torch.ones(1, 2, 1), torch.ones(1, 2, 3, 3))  # K=3 is not (d+1)^2
    (s,) = host.splat_to_scenes(odd)
    assert s.sh.shape == (2, 4, 3) and torch.count_nonzero(s.sh[:, 3]) == 0


def test_scene_to_splat_empty_list():
    with pytest.raises(ValueError):
        host.scene_to_splat([])


# -------------------------------------------------------------------------------------------------- VIDEO
def test_frames_to_video_fallback():
    frames = torch.rand(4, 6, 8, 3) * 1.5
    v = host.frames_to_video(frames, 12)
    assert isinstance(v, host.LocalVideo)
    assert v.frames.shape == (4, 6, 8, 3) and float(v.frames.max()) <= 1.0 and v.frames.dtype == torch.float32
    assert v.fps == 12.0 and v.get_dimensions() == (8, 6) and v.get_duration() == pytest.approx(4 / 12)
    assert v.frame_rate == 12 and host.frames_to_video(frames, 29.97).frame_rate.denominator <= 1001
    for bad in (torch.rand(6, 8, 3), torch.rand(2, 6, 8, 4), torch.rand(0, 6, 8, 3), "x"):
        with pytest.raises(ValueError):
            host.frames_to_video(bad, 10)
    for fps in (0, -1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            host.frames_to_video(frames, fps)


# ------------------------------------------------------------------------------------------- model folders
@pytest.fixture
def models(tmp_path, monkeypatch):
    root = tmp_path / "models"
    monkeypatch.setenv("VSCENE_MODELS_DIR", str(root))
    return root


def test_model_path_errors_and_listing(models):
    d = models / "mvsplat"
    assert host.model_dirs("mvsplat") == [str(d)]
    assert host.list_models("mvsplat") == []
    with pytest.raises(FileNotFoundError) as ei:
        host.model_path("mvsplat", "re10k.ckpt")
    msg = str(ei.value)
    assert "re10k.ckpt" in msg and str(d) in msg and "VSCENE_MODELS_DIR" in msg
    (d / "sub").mkdir(parents=True)
    (d / "re10k.ckpt").write_bytes(b"0")
    (d / "sub" / "acid.safetensors").write_bytes(b"0")
    (d / "notes.txt").write_text("not a model")
    assert host.list_models("mvsplat") == ["re10k.ckpt", "sub/acid.safetensors"]
    assert host.model_path("mvsplat", "sub/acid.safetensors") == str(d / "sub" / "acid.safetensors")
    with pytest.raises(FileNotFoundError) as ei:
        host.model_path("mvsplat", "missing.ckpt")
    assert "re10k.ckpt" in str(ei.value)  # lists what is available
    for bad in ("../x.ckpt", "/abs/x.ckpt", "", "a/../../x.ckpt"):
        with pytest.raises(ValueError):
            host.model_path("mvsplat", bad)
    with pytest.raises(KeyError):
        host.list_models("no_such_folder")


def test_model_dirs_default_without_env(monkeypatch, tmp_path):
    monkeypatch.delenv("VSCENE_MODELS_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    assert host.model_dirs("videoscene") == [str(tmp_path / "models" / "videoscene")]


def test_cogvideo_diffusers_folders(models):
    cv = models / "CogVideo"
    (cv / "CogVideoX-5b-I2V").mkdir(parents=True)
    (cv / "CogVideoX-5b-I2V" / "model_index.json").write_text("{}")
    (cv / "CogVideoX-5b-1.5" / "transformer_I2V").mkdir(parents=True)
    (cv / "THUDM" / "CogVideoX-2b" / "transformer").mkdir(parents=True)
    (cv / "loras").mkdir()
    (cv / "loras" / "orbit.safetensors").write_bytes(b"0")
    assert host.list_models("CogVideo") == ["CogVideoX-5b-1.5", "CogVideoX-5b-I2V", "THUDM/CogVideoX-2b"]
    assert host.model_path("CogVideo", "THUDM/CogVideoX-2b") == str(cv / "THUDM" / "CogVideoX-2b")
    with pytest.raises(FileNotFoundError, match="diffusers model folder"):
        host.model_path("CogVideo", "CogVideoX-5b")


def test_register_custom_folder(models):
    dirs = host.register_model_folder("vscene_test_folder", "vtest", ["pt", ".BIN"])
    assert dirs == [str(models / "vtest")]
    (models / "vtest").mkdir(parents=True)
    (models / "vtest" / "a.pt").write_bytes(b"0")
    (models / "vtest" / "b.bin").write_bytes(b"0")
    (models / "vtest" / "c.safetensors").write_bytes(b"0")
    assert host.list_models("vscene_test_folder") == ["a.pt", "b.bin"]
    with pytest.raises(ValueError):
        host.register_model_folder("x", "x", [], kind="weird")


def test_describe():
    d = host.describe()
    assert d["host_available"] is False and d["splat_class"].endswith("LocalSPLAT")


def test_scene_to_splat_caps_sh_degree_for_core_viewers():
    from vscene_engine.core.gaussians import GaussianScene

    host = _load_host()
    s4 = GaussianScene.random(10, sh_degree=4, generator=torch.Generator().manual_seed(0))
    capped = host.scene_to_splat(s4)
    assert capped.sh.shape[-2] == 16 and torch.equal(capped.sh[0], s4.sh[:, :16])
    full = host.scene_to_splat(s4, max_sh_degree=None)
    assert full.sh.shape[-2] == 25
