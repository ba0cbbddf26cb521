"""python -m vscene_engine render: PLY + cameras in several formats -> PNG per camera; clean failures."""
import json
import subprocess
import sys
from pathlib import Path

from PIL import Image

from vscene_engine.io.camera_formats import save_cameras, to_nerf
from vscene_engine.tools.cli import main
from vscene_engine.io.images import load_image
from vscene_engine.io.ply import write_ply
from vscene_engine.render.rasterize import render
from vscene_engine.tools.synthetic import demo_cameras, procedural_scene

ROOT = Path(__file__).resolve().parents[1]


def _setup(tmp_path):
    scene = procedural_scene(2000, seed=2)
    ply = write_ply(scene, tmp_path / "scene.ply")
    cams = demo_cameras(48, 32)
    return scene, ply, cams


def test_render_vscene_json_names_and_pixels(tmp_path):
    scene, ply, cams = _setup(tmp_path)
    cam_file = save_cameras(cams, tmp_path / "cams.json")
    out = tmp_path / "out"
    assert main(["render", "--ply", str(ply), "--cameras", str(cam_file), "--out", str(out), "--background", "1,1,1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["view_a.png", "view_b.png"]
    ref = render(scene, cams, background=(1, 1, 1)).rgb[0].clamp(0, 1)
    img = load_image(out / "view_a.png")
    assert img.shape == (32, 48, 3) and float((img - ref).abs().max()) <= 1.0 / 255 + 1e-6


def test_render_transforms_json_select_and_max_size(tmp_path):
    scene, ply, cams = _setup(tmp_path)
    data = to_nerf(cams)
    for i, fr in enumerate(data["frames"]):
        fr["file_path"] = f"./train/r_{i}"
    (tmp_path / "transforms.json").write_text(json.dumps(data))
    out = tmp_path / "out"
    assert main(["render", "--ply", str(ply), "--cameras", str(tmp_path / "transforms.json"), "--out", str(out),
                 "--select", "r_1", "--max-size", "24"]) == 0
    files = list(out.iterdir())
    assert [p.name for p in files] == ["r_1.png"]
    assert Image.open(files[0]).size == (24, 16)


def test_bad_inputs_exit_2_and_write_nothing(tmp_path):
    _, ply, cams = _setup(tmp_path)
    cam_file = save_cameras(cams, tmp_path / "cams.json")
    bad_ply = tmp_path / "bad.ply"
    bad_ply.write_bytes(b"ply\nformat binary_little_endian 1.0\nelement vertex 10\nproperty float x\nend_header\n12")
    out = tmp_path / "out"
    assert main(["render", "--ply", str(bad_ply), "--cameras", str(cam_file), "--out", str(out)]) == 2
    assert main(["render", "--ply", str(ply), "--cameras", str(tmp_path / "missing.json"), "--out", str(out)]) == 2
    assert not out.exists()


def test_module_entry_point_runs():
    r = subprocess.run([sys.executable, "-m", "vscene_engine", "render", "--help"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0 and "--cameras" in r.stdout
