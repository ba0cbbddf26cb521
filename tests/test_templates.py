"""The shipped templates (workflows/*.json) and what they need to open clean in a fresh ComfyUI: the example photos
(shipped, copied to the input folder without overwriting anything), a layout without overlapping nodes, model
metadata for the Missing Models panel, links that fit the nodes' slots, Preview Splat's camera_info."""
import json
import logging
import os

os.environ.setdefault("VSCENE_NO_HOST", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
from PIL import Image  # noqa: E402

from test_host_fallback import PACK, _load_host  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = sorted((ROOT / "workflows").glob("*.json"))
EXAMPLES = ("videoscene_view_a.png", "videoscene_view_b.png")
TITLE_H = 30  # LiteGraph NODE_TITLE_HEIGHT: the title bar is drawn above a node's pos
MODEL_EXTS = (".safetensors", ".sft", ".ckpt", ".pt", ".pth", ".bin", ".onnx", ".gguf")  # what the frontend scans


def _wf(path):
    return json.loads(path.read_text())


def _pack_nodes():
    _load_host()
    import importlib

    return importlib.import_module(PACK + ".nodes").NODE_CLASS_MAPPINGS


def test_templates_exist():
    names = {p.stem for p in WORKFLOWS}
    assert {"two_photos_coarse_video", "two_photos_reconstruct", "two_photos_leap_student",
            "diffusion2_svd_sv3d_grid"} <= names


# ------------------------------------------------------------------------------------------------ example photos
def test_example_photos_ship_small_and_readable():
    host = _load_host()
    for name in EXAMPLES:
        p = Path(host.EXAMPLE_INPUTS_DIR) / name
        assert p.is_file(), f"{p} missing: run scripts/make_example_photos.py"
        assert p.stat().st_size <= 150 * 1024
        with Image.open(p) as im:
            assert im.size == (512, 384)
            rgb = im.convert("RGB")
            lo, hi = zip(*rgb.getextrema())
            assert min(lo) < 60 and max(hi) > 200  # a real picture, not a flat fill


def test_every_loadimage_uses_a_shipped_example():
    for p in WORKFLOWS:
        for n in _wf(p)["nodes"]:
            if n["type"] == "LoadImage":
                assert n["widgets_values"][0] in EXAMPLES, f"{p.name}: LoadImage {n['widgets_values'][0]!r} does not ship"


def test_install_example_inputs_copies_once_and_never_overwrites(tmp_path, caplog):
    host = _load_host()
    inp = tmp_path / "input"
    inp.mkdir()
    mine = b"the user's own photo"
    (inp / EXAMPLES[1]).write_bytes(mine)
    with caplog.at_level(logging.INFO, logger="videoscene.host"):
        copied = host.install_example_inputs(str(inp))
    assert copied == [EXAMPLES[0]]
    assert (inp / EXAMPLES[0]).read_bytes() == (Path(host.EXAMPLE_INPUTS_DIR) / EXAMPLES[0]).read_bytes()
    assert (inp / EXAMPLES[1]).read_bytes() == mine  # never overwritten
    assert sorted(os.listdir(inp)) == sorted(EXAMPLES)  # no temporary file left behind
    assert sum("copied" in r.getMessage() for r in caplog.records) == 1
    assert host.install_example_inputs(str(inp)) == []  # second start: nothing to do


def test_install_example_inputs_never_raises(tmp_path, caplog, monkeypatch):
    host = _load_host()
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"x")
    with caplog.at_level(logging.WARNING, logger="videoscene.host"):
        assert host.install_example_inputs(str(not_a_dir)) == []
        assert host.install_example_inputs(str(tmp_path / "missing")) == []
    assert sum("could not copy example photos" in r.getMessage() for r in caplog.records) == 2

    # a read-only input folder (simulated: root ignores permission bits): every write refused
    inp = tmp_path / "ro"
    inp.mkdir()
    real_open = open

    def refuse(path, mode="r", *a, **k):
        if str(path).startswith(str(inp)) and any(c in mode for c in "wxa"):
            raise PermissionError(13, "Read-only file system", str(path))
        return real_open(path, mode, *a, **k)

    monkeypatch.setattr("builtins.open", refuse)
    assert host.install_example_inputs(str(inp)) == []
    monkeypatch.undo()
    assert os.listdir(inp) == []


def test_install_example_inputs_without_hard_links(tmp_path, monkeypatch):
    host = _load_host()

    def no_link(a, b):
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr(host.os, "link", no_link)
    inp = tmp_path / "input"
    inp.mkdir()
    assert host.install_example_inputs(str(inp)) == list(EXAMPLES)
    assert sorted(os.listdir(inp)) == sorted(EXAMPLES)


# ---------------------------------------------------------------------------------------------------------- layout
def _rects(wf):
    out = []
    for n in wf["nodes"]:
        x, y = n["pos"]
        w, h = n["size"]
        out.append((n["id"], n["type"], x, y - TITLE_H, x + w, y + h))
    return out


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_no_two_nodes_overlap(path):
    rects = _rects(_wf(path))
    bad = []
    for i, a in enumerate(rects):
        for b in rects[i + 1:]:
            if a[2] < b[4] and b[2] < a[4] and a[3] < b[5] and b[3] < a[5]:
                bad.append(f"{a[0]} {a[1]} / {b[0]} {b[1]}")
    assert not bad, f"{path.name}: overlapping nodes (title bar included): {bad}"


def test_overlap_check_can_fail():
    wf = {"nodes": [{"id": 1, "type": "A", "pos": [0, 0], "size": [100, 100]},
                    {"id": 2, "type": "B", "pos": [50, 120], "size": [100, 100]}]}  # title bar of B hits A
    rects = _rects(wf)
    a, b = rects
    assert a[2] < b[4] and b[2] < a[4] and a[3] < b[5] and b[3] < a[5]


# ----------------------------------------------------------------------------------------------- links and slots
@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_links_fit_our_nodes_slots(path):
    mappings = _pack_nodes()
    wf = _wf(path)
    nodes = {n["id"]: n for n in wf["nodes"]}
    for lid, src, sslot, dst, dslot, typ in wf["links"]:
        s = nodes[src]
        assert s["outputs"][sslot]["type"] == typ and lid in (s["outputs"][sslot].get("links") or [])
        assert nodes[dst]["inputs"][dslot]["link"] == lid
        if s["type"] in mappings:
            cls = mappings[s["type"]]
            assert cls.RETURN_TYPES[sslot] == typ, f"{path.name}: link {lid} from {s['type']} slot {sslot}"
            assert len(s["outputs"]) == len(cls.RETURN_TYPES)
            assert [o["name"] for o in s["outputs"]] == list(cls.RETURN_NAMES)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_splat_viewers_open_at_photo_a(path):
    wf = _wf(path)
    nodes = {n["id"]: n for n in wf["nodes"]}
    links = {l[0]: l for l in wf["links"]}
    for n in wf["nodes"]:
        if n["type"] in ("PreviewGaussianSplat", "SaveGaussianSplat"):
            cam = [i for i in n["inputs"] if i["name"] == "camera_info"]
            assert cam and cam[0]["link"] is not None, f"{path.name}: {n['type']} {n['id']} camera_info not wired"
            src = nodes[links[cam[0]["link"]][1]]
            assert src["type"] in ("CoarseSplatPrior", "SplatReconstruct")
            assert links[cam[0]["link"]][5] == "LOAD3D_CAMERA"


# ------------------------------------------------------------------------------------------ Missing Models panel
FOLDERS = {"LoadVideoSceneModel": {"base_model": "CogVideo", "weights": "videoscene", "prompt_embeds": "videoscene"},
           "DDPNetTimestep": {"weights": "videoscene"},
           "ImageOnlyCheckpointLoader": {"ckpt_name": "checkpoints"}}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_model_widgets_carry_folder_and_download_page(path):
    """The frontend (1.49) files a missing model under ``properties.models[i].directory`` of the node whose widget
    value equals ``name`` (else under "Unknown") and offers ``url``; the folder must be the one our nodes register."""
    wf = _wf(path)
    mappings = _pack_nodes()
    for n in wf["nodes"]:
        models = (n.get("properties") or {}).get("models") or []
        for m in models:
            assert set(m) >= {"name", "url", "directory"} and m["url"].startswith("https://")
            assert m["name"] in n["widgets_values"], f"{path.name}: {m['name']} is no widget value of {n['type']}"
        if n["type"] not in FOLDERS:
            continue
        spec = mappings[n["type"]].INPUT_TYPES()["required"] if n["type"] in mappings else None
        names = list(spec) if spec else ["ckpt_name"]
        for widget, folder in FOLDERS[n["type"]].items():
            value = n["widgets_values"][names.index(widget)]
            if value == "none":
                continue
            entry = [m for m in models if m["name"] == value]
            assert entry and entry[0]["directory"] == folder, f"{path.name}: {n['type']}.{widget} {value!r}"
        for m in models:
            if m["name"].lower().endswith(MODEL_EXTS):
                assert m["directory"] in ("videoscene", "CogVideo", "mvsplat", "checkpoints")


# --------------------------------------------------------------------------------------------- weights dropdowns
def _write_safetensors(path, tensors, metadata=None):
    import torch
    from safetensors.torch import save_file

    save_file({k: torch.zeros(s) for k, s in tensors.items()}, str(path), metadata=metadata)


def test_weights_dropdowns_offer_what_each_input_accepts(tmp_path, monkeypatch):
    import importlib

    import torch

    folder = tmp_path / "models" / "videoscene"
    folder.mkdir(parents=True)
    _write_safetensors(folder / "model.safetensors", {"transformer_blocks.0.attn1.to_q.weight": (4, 4),
                                                      "patch_embed.proj.weight": (4, 4, 1, 1),
                                                      "norm_out.linear.bias": (8,)})
    _write_safetensors(folder / "ddpnet.safetensors", {"conv.weight": (2, 2)},
                       {"format": "videoscene-ddpnet", "config": "{}"})
    _write_safetensors(folder / "ddpnet_step100.safetensors", {"conv.weight": (2, 2)},
                       {"format": "videoscene-ddpnet-checkpoint"})
    _write_safetensors(folder / "embeds.safetensors", {"prompt_embeds": (1, 8, 16)})
    torch.save(torch.zeros(1, 8, 16), folder / "prompt_embeds.pt")
    (folder / "broken.safetensors").write_bytes(b"\xff" * 16)
    (folder / "notes.json").write_text("{}")
    monkeypatch.setenv("VSCENE_MODELS_DIR", str(tmp_path / "models"))
    host = _load_host()
    assert host.weights_kind(str(folder / "ddpnet.safetensors")) == "ddpnet"
    assert host.weights_kind(str(folder / "model.safetensors")) == "transformer"
    assert host.weights_kind(str(folder / "embeds.safetensors")) == "prompt_embeds"
    assert host.weights_kind(str(folder / "broken.safetensors")) == "unreadable"
    vn = importlib.import_module(PACK + ".nodes.video_nodes")
    dn = importlib.import_module(PACK + ".nodes.ddpnet_nodes")
    req = vn.LoadVideoSceneModel.INPUT_TYPES()["required"]
    assert req["weights"][0] == ["none", "broken.safetensors", "model.safetensors"]
    assert req["prompt_embeds"][0] == ["none", "embeds.safetensors", "prompt_embeds.pt"]
    assert vn.LoadVideoSceneModel.INPUT_TYPES()["optional"]["negative_prompt_embeds"][0] == req["prompt_embeds"][0]
    assert dn.DDPNetTimestep.INPUT_TYPES()["required"]["weights"][0] == ["none", "ddpnet.safetensors",
                                                                         "ddpnet_step100.safetensors"]
    # the header is read once per file version: a rewritten file is classified again
    before = len(host._HEADER_CACHE)
    host.weights_kind(str(folder / "model.safetensors"))
    assert len(host._HEADER_CACHE) == before
    st = os.stat(folder / "model.safetensors")
    _write_safetensors(folder / "model.safetensors", {"conv.weight": (2, 2)}, {"format": "videoscene-ddpnet"})
    os.utime(folder / "model.safetensors", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert host.weights_kind(str(folder / "model.safetensors")) == "ddpnet"


# ------------------------------------------------------------------------------------------- camera_info output
def test_camera_info_opens_the_viewer_at_photo_a():
    import importlib

    import torch

    from vscene_engine.io.camera_formats import from_load3d
    from vscene_engine.tools.synthetic import demo_cameras, procedural_scene

    _load_host()
    sn = importlib.import_module(PACK + ".nodes.splat_nodes")
    cams = demo_cameras(512, 384, 55.0).to(dtype=torch.float64)
    scene = procedural_scene(n=4000)
    info = sn.camera_info(cams, scene)
    assert set(info) >= {"position", "target", "zoom", "cameraType", "quaternion", "fov"}
    assert info["fov"] == sn.PREVIEW_VIEWER_FOV and info["cameraType"] == "perspective"
    # three.js world = ours with y and z negated: the camera position of photo A
    p = cams.c2w[0, :3, 3]
    assert [info["position"][k] for k in "xyz"] == pytest.approx([float(p[0]), -float(p[1]), -float(p[2])])
    # target on the optical axis (the viewer's OrbitControls look at it) at the scene's median depth (~3 units)
    pos = torch.tensor([info["position"][k] for k in "xyz"], dtype=torch.float64)
    tgt = torch.tensor([info["target"][k] for k in "xyz"], dtype=torch.float64)
    fwd_gl = torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64) * cams.c2w[0, :3, 2]
    d = tgt - pos
    assert torch.allclose(d / d.norm(), fwd_gl, atol=1e-9)
    assert 2.0 < float(d.norm()) < 4.5
    # the viewer's fixed-fov camera with this zoom has photo A's focal length: reading it back gives camera A
    back = from_load3d([info], width=512, height=384, dtype=torch.float64)
    assert torch.allclose(back.c2w[0], cams.c2w[0], atol=1e-9)
    assert torch.allclose(back.K[0], cams.K[0], atol=1e-9)


def test_to_load3d_viewer_fov_round_trip():
    import math

    import torch

    from vscene_engine.io.camera_formats import from_load3d, to_load3d
    from vscene_engine.tools.synthetic import demo_cameras

    cams = demo_cameras(640, 360, 70.0).to(dtype=torch.float64)
    for vf in (None, 35.0, 75.0):
        infos = to_load3d(cams, viewer_fov=vf)
        if vf is not None:
            assert all(i["fov"] == vf for i in infos)
            fov_v = math.degrees(2 * math.atan(180 / float(cams.K[0, 1, 1])))
            assert infos[0]["zoom"] == pytest.approx(math.tan(math.radians(vf) / 2) / math.tan(math.radians(fov_v) / 2))
        back = from_load3d(infos, width=640, height=360, dtype=torch.float64)
        assert torch.allclose(back.c2w, cams.c2w, atol=1e-9) and torch.allclose(back.K, cams.K, atol=1e-9)
    with pytest.raises(ValueError, match="viewer_fov"):
        to_load3d(cams, viewer_fov=0)
