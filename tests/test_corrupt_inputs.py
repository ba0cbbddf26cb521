"""Truncated and corrupt input files: every image / video / camera / PLY reader turns them into ONE ValueError that
names the file, says what is wrong and what to do - never a raw PIL / PyAV / json / numpy / struct traceback - and
the CLI prints one `error:` line, exits 2 and writes nothing."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from vscene_engine.io import camera_formats as cf
from vscene_engine.io.images import load_image, save_image
from vscene_engine.io.ply import read_ply, write_ply
from vscene_engine.tools.synthetic import demo_cameras, procedural_scene
from vscene_engine.io.video_files import read_frames, write_video

ROOT = Path(__file__).resolve().parents[1]


def _truncate(src: Path, dst: Path, keep: int) -> Path:
    dst.write_bytes(src.read_bytes()[:keep])
    return dst


def _image(h=40, w=56, seed=0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(h, w, 3, generator=g)


def _raises_clear(fn, path: Path, *words: str) -> str:
    """Call fn(path); it must raise ValueError naming the file (and `words`); returns the message."""
    with pytest.raises(ValueError) as info:
        fn(path)
    msg = str(info.value)
    assert path.name in msg, msg
    for w in words:
        assert w in msg, (w, msg)
    assert info.value.__cause__ is None or isinstance(info.value.__cause__, ValueError), msg
    return msg


# ------------------------------------------------------------------------------------------------ images

@pytest.mark.parametrize("ext", ["png", "jpg"])
def test_truncated_image_is_one_clear_error(tmp_path, ext):
    ok = save_image(_image(), tmp_path / f"ok.{ext}")
    assert load_image(ok).shape == (40, 56, 3)
    size = ok.stat().st_size
    for keep in (size // 2, size - 30, 40, 8):  # (a PNG missing only its 12-byte IEND is complete)
        bad = _truncate(ok, tmp_path / f"cut{keep}.{ext}", keep)
        _raises_clear(load_image, bad, "truncated or corrupt")
    empty = tmp_path / f"empty.{ext}"
    empty.write_bytes(b"")
    _raises_clear(load_image, empty)
    garbage = tmp_path / f"garbage.{ext}"
    garbage.write_bytes(os.urandom(2000))
    _raises_clear(load_image, garbage)


def test_truncated_image_raises_even_when_pil_is_told_to_load_truncated_images(tmp_path):
    """Another library (a ComfyUI node pack) may switch PIL's global LOAD_TRUNCATED_IMAGES on; PIL then fills the
    missing rows with grey silently. load_image still refuses, and leaves the global as it found it."""
    from PIL import ImageFile

    ok = save_image(_image(), tmp_path / "ok.png")
    bad = _truncate(ok, tmp_path / "cut.png", ok.stat().st_size // 2)
    prev = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True
    try:
        _raises_clear(load_image, bad, "truncated or corrupt")
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True
        assert load_image(ok).shape == (40, 56, 3)
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = prev


# ------------------------------------------------------------------------------------------------ video

def test_truncated_video_is_one_clear_error(tmp_path):
    ok = write_video(torch.rand(6, 32, 48, 3, generator=torch.Generator().manual_seed(1)), tmp_path / "ok.mp4")
    assert read_frames(ok).shape == (6, 32, 48, 3)
    size = Path(ok).stat().st_size
    # (cutting only the trailing metadata atom, ~50 bytes, leaves every frame decodable: that file is complete)
    for keep in (size // 2, size - 400, 100, 0):
        bad = _truncate(Path(ok), tmp_path / f"cut{keep}.mp4", keep)
        _raises_clear(read_frames, bad, "truncated")
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(os.urandom(5000))
    _raises_clear(read_frames, garbage)
    # a frame folder with one truncated frame
    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        save_image(_image(seed=i), folder / f"{i:03d}.png")
    _truncate(folder / "001.png", folder / "001.png", 60)
    with pytest.raises(ValueError, match="001.png.*truncated or corrupt"):
        read_frames(folder)


def test_video_cut_after_its_index_is_refused(tmp_path):
    """An mp4 with its index at the front ("faststart") cut in the middle: FFmpeg may decode the frames before the cut
    and stop quietly; read_frames must not return the shorter clip as if it were whole."""
    av = pytest.importorskip("av")
    path = tmp_path / "fs.mp4"
    g = np.random.default_rng(0)
    with av.open(str(path), "w", format="mp4", options={"movflags": "faststart"}) as c:
        s = c.add_stream("libx264", rate=8)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        for _ in range(24):
            frame = av.VideoFrame.from_ndarray((g.random((64, 64, 3)) * 255).astype(np.uint8), format="rgb24")
            for pk in s.encode(frame):
                c.mux(pk)
        for pk in s.encode():
            c.mux(pk)
    assert read_frames(path).shape[0] == 24
    size = path.stat().st_size
    for frac in (0.3, 0.6, 0.9, 0.98):  # a cut inside a packet: FFmpeg itself reports invalid data
        bad = _truncate(path, tmp_path / f"fs_{frac}.mp4", int(size * frac))
        _raises_clear(read_frames, bad, "truncated")
    with av.open(str(path)) as c:  # a cut exactly between packets: FFmpeg decodes the first frames without a word
        ends = [pk.pos + pk.size for pk in c.demux(c.streams.video[0]) if pk.pos is not None]
    for keep in (ends[0], ends[11], ends[-2]):
        bad = _truncate(path, tmp_path / f"fs_at{keep}.mp4", keep)
        _raises_clear(read_frames, bad, "truncated", "declares 24 frames")


# ------------------------------------------------------------------------------------------------ cameras

def test_corrupt_camera_json_is_one_clear_error(tmp_path):
    cams = demo_cameras(32, 24)
    for name, data in (("cameras.json", cf.to_vscene(cams)), ("transforms.json", cf.to_nerf(cams))):
        text = json.dumps(data)
        bad = tmp_path / name
        bad.write_text(text[: len(text) // 2])
        _raises_clear(cf.load_cameras, bad, "not valid JSON", "truncated or corrupt")
    folder = tmp_path / "scene"
    folder.mkdir()
    (folder / "cameras.json").write_text("{\"format\": \"vscene-cam")
    with pytest.raises(ValueError, match=r"cameras\.json: not valid JSON"):
        cf.load_cameras(folder)
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\xff\xfe\x00garbage")
    _raises_clear(cf.load_cameras, binary)
    re10k = tmp_path / "cams.txt"
    re10k.write_bytes(b"\x00\xff\xfe binary \x80\x81")
    _raises_clear(cf.load_cameras, re10k, "not UTF-8")
    text = cf.to_re10k(cams, url="https://example.invalid/v")
    assert len(cf.load_cameras(text, width=32, height=24)) == len(cams)
    cut = tmp_path / "cut_re10k.txt"
    cut.write_text(text.rstrip()[:-25])
    with pytest.raises(ValueError) as info:
        cf.load_cameras(cut, width=32, height=24)
    assert "cut_re10k.txt" in str(info.value) and "truncated" in str(info.value), info.value
    with pytest.raises(ValueError, match="camera JSON text: not valid JSON"):
        cf.load_cameras('{"format": "vscene-cameras", "cameras": [')


def test_corrupt_poses_bounds_is_one_clear_error(tmp_path):
    cams = demo_cameras(32, 24)
    arr = cf.to_llff(cams)
    ok = tmp_path / "ok.npy"
    np.save(ok, arr)
    assert len(cf.load_cameras(ok, width=32, height=24)) == len(cams)
    size = ok.stat().st_size
    for keep in (size - 8, 140, 30, 5):
        _raises_clear(cf.load_cameras, _truncate(ok, tmp_path / f"cut{keep}.npy", keep), "truncated or corrupt")
    wrong = tmp_path / "wrong.npy"
    np.save(wrong, arr[:, :15])
    _raises_clear(cf.load_cameras, wrong, "[N, 17]", "(2, 15)")
    flat = tmp_path / "flat.npy"
    np.save(flat, arr.reshape(-1))
    _raises_clear(cf.load_cameras, flat, "[N, 17]")
    pickled = tmp_path / "pickled.npy"
    np.save(pickled, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _raises_clear(cf.load_cameras, pickled)
    text = tmp_path / "text.npy"
    text.write_text("not numpy at all")
    _raises_clear(cf.load_cameras, text)


@pytest.mark.parametrize("which", ["cameras.bin", "images.bin"])
def test_truncated_colmap_binary_is_one_clear_error(tmp_path, which):
    cams = demo_cameras(32, 24)
    ok = tmp_path / "ok"
    cf.to_colmap(cams, ok, binary=True)
    assert len(cf.load_cameras(ok)) == len(cams)
    full = (ok / which).read_bytes()
    for keep in range(0, len(full), max(1, len(full) // 23)):  # cuts everywhere: counts, records, names
        d = tmp_path / f"cut{keep}"
        cf.to_colmap(cams, d, binary=True)
        (d / which).write_bytes(full[:keep])
        with pytest.raises(ValueError) as info:
            cf.load_cameras(d)
        msg = str(info.value)
        assert which in msg and "truncated or corrupt" in msg, (keep, msg)


def test_malformed_colmap_text_is_one_clear_error(tmp_path):
    cams = demo_cameras(32, 24)
    d = tmp_path / "txt"
    cf.to_colmap(cams, d)
    lines = (d / "cameras.txt").read_text().splitlines()
    cut = [l if l.startswith("#") else " ".join(l.split()[:3]) for l in lines]
    (d / "cameras.txt").write_text("\n".join(cut))
    with pytest.raises(ValueError, match=r"cameras\.txt: malformed line"):
        cf.load_cameras(d)
    cf.to_colmap(cams, d)
    text = (d / "images.txt").read_text()
    (d / "images.txt").write_text(text.replace(" 1 ", " x ", 1))
    with pytest.raises(ValueError, match=r"images\.txt: malformed line"):
        cf.load_cameras(d)


# ------------------------------------------------------------------------------------------------ PLY

def test_truncated_ply_is_one_clear_error(tmp_path):
    ok = Path(write_ply(procedural_scene(200, seed=0), tmp_path / "ok.ply"))
    assert len(read_ply(ok)) == 200
    size = ok.stat().st_size
    for keep in (size - 1, size // 2, 200, 10, 0):
        _raises_clear(read_ply, _truncate(ok, tmp_path / f"cut{keep}.ply", keep))


# ------------------------------------------------------------------------------------------------ CLI

def test_cli_prior_with_truncated_photo_prints_one_error_line(tmp_path):
    ok = save_image(_image(64, 96, 0), tmp_path / "a.png")
    save_image(_image(64, 96, 1), tmp_path / "b.png")
    _truncate(ok, tmp_path / "a.png", ok.stat().st_size // 2)
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, "-m", "vscene_engine", "prior", "--image-a", str(tmp_path / "a.png"),
                           "--image-b", str(tmp_path / "b.png"), "--frames", "4", "--out", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), proc.stderr
    assert "a.png" in lines[0] and "truncated or corrupt" in lines[0] and "Traceback" not in proc.stderr
    assert not out.exists()


@pytest.mark.parametrize("kind", ["json", "npy", "colmap"])
def test_cli_prior_with_corrupt_cameras_prints_one_error_line(tmp_path, capsys, kind):
    from vscene_engine.tools.cli import main

    save_image(_image(24, 32, 0), tmp_path / "r_0.png")
    save_image(_image(24, 32, 1), tmp_path / "r_1.png")
    cams = demo_cameras(32, 24)
    if kind == "json":
        src = tmp_path / "cameras.json"
        src.write_text(json.dumps(cf.to_vscene(cams))[:100])
    elif kind == "npy":
        src = tmp_path / "poses_bounds.npy"
        np.save(src, cf.to_llff(cams))
        src.write_bytes(src.read_bytes()[:-20])
    else:
        src = tmp_path / "sparse"
        cf.to_colmap(cams, src, binary=True)
        (src / "images.bin").write_bytes((src / "images.bin").read_bytes()[:-7])
    out = tmp_path / "out"
    rc = main(["prior", "--image-a", str(tmp_path / "r_0.png"), "--image-b", str(tmp_path / "r_1.png"),
               "--cameras", str(src), "--frames", "4", "--out", str(out)])
    err = capsys.readouterr().err
    lines = [l for l in err.splitlines() if l.strip()]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert "truncated or corrupt" in lines[0], err
    assert not out.exists()


def test_cli_unreadable_file_is_one_error_line(tmp_path, capsys):
    from vscene_engine.tools.cli import main

    if hasattr(os, "geteuid") and os.geteuid() == 0:
        folder = tmp_path / "a_folder.png"  # root reads anything: use a folder where a file is expected instead
        folder.mkdir()
        target = folder
    else:
        target = save_image(_image(), tmp_path / "locked.png")
        target.chmod(0)
    save_image(_image(seed=1), tmp_path / "b.png")
    rc = main(["prior", "--image-a", str(target), "--image-b", str(tmp_path / "b.png"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


