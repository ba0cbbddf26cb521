"""Read and write camera files in the common multi-view formats.

Entry points: :func:`load_cameras` ``(source, ...) -> Cameras`` (format auto-detected) and
:func:`save_cameras` ``(cams, path, fmt="vscene")`` (atomic write). Every format also has an explicit
``from_<fmt>`` / ``to_<fmt>`` pair.

Whatever the source convention, the result is always the engine convention (DESIGN.md): OpenCV camera-to-world
``c2w [N,4,4]`` (x right, y down, z forward), ``K [N,3,3]`` in pixels of a ``width x height`` image with pixel
centres at +0.5.

Formats
-------
``"vscene"``  (our own JSON; :func:`from_vscene` / :func:`to_vscene`)::

    {"format": "vscene-cameras", "version": 1, "convention": "opencv_c2w",
     "width": W, "height": H,
     "cameras": [{"name": "r_0" | null, "c2w": [[4 floats] x 4], "K": [[3 floats] x 3],
                  "near": float, "far": float}, ...]}

    ``c2w`` is OpenCV camera-to-world (x right, y down, z forward); ``K`` in pixels of ``W x H`` with pixel centres
    at +0.5 (a centred principal point is (W/2, H/2)). Floats are written with full float64 precision.

``"nerf"``  NeRF / Blender / instant-ngp / nerfstudio ``transforms*.json`` (:func:`from_nerf` / :func:`to_nerf`):
    ``transform_matrix`` is an OpenGL/Blender camera-to-world (x right, y up, camera looks down -z); we convert with
    ``c2w_cv = c2w_gl @ diag(1, -1, -1, 1)`` (negate camera y and z). Intrinsics: ``fl_x/fl_y/cx/cy`` if present,
    else ``camera_angle_x`` (horizontal FOV, rad; ``fx = w / (2 tan(angle_x / 2))``) and ``camera_angle_y`` if
    present (else ``fy = fx``); the principal point defaults to the image centre. Any of these and ``w``/``h`` may
    be overridden per frame. The image size comes from ``w``/``h``, else from the header of the first image file
    (PIL), else from ``width``/``height``. Names are the file stems (``"./train/r_0"`` -> ``"r_0"``).

``"llff"``  ``poses_bounds.npy`` (:func:`from_llff` / :func:`to_llff`): ``[N,17]`` rows = a flattened 3x5
    ``[R | t | (h, w, f)]`` followed by the near and far depth bounds. LLFF rotation columns are
    ``[down, right, backwards]``; the OpenCV columns are ``[right, down, forward] = [col1, col0, -col2]``.
    ``h, w, f`` refer to the full-resolution photos; the cameras are rescaled to the actual image folder
    (``images/`` or else the highest-resolution ``images_<k>/`` next to the file, e.g. ``images_8`` = 1/8) or to
    ``width``/``height``. Names are the image file stems of that folder (else ``"0"``, ``"1"`` ...).

``"colmap"``  a COLMAP sparse model folder (``sparse/0``) with ``cameras.txt`` + ``images.txt`` or
    ``cameras.bin`` + ``images.bin`` (:func:`from_colmap` / :func:`to_colmap`). Images store the *world-to-camera*
    rotation as a quaternion ``qw qx qy qz`` and translation ``tx ty tz`` (OpenCV axes already). Camera models
    SIMPLE_PINHOLE, PINHOLE, SIMPLE_RADIAL, RADIAL, OPENCV, FULL_OPENCV are read as pinholes; distortion
    coefficients are ignored with a warning (undistort first with ``colmap image_undistorter`` for exact results);
    fisheye models are refused. COLMAP's pixel convention equals ours (pixel centre at +0.5). Images are sorted by
    name; names are the image paths without extension.

``"re10k"``  RealEstate10K camera files (:func:`from_re10k` / :func:`to_re10k`): one ``.txt`` per sequence, first
    line the video URL, then one row per frame ``timestamp fx fy cx cy 0 0 <w2c 3x4 row-major, 12 numbers>`` with
    **normalized** intrinsics (``fx``, ``cx`` in units of the width; ``fy``, ``cy`` of the height) and an OpenCV
    world-to-camera matrix. The files do not store the frame size: pass ``width``/``height`` of the frames you
    use. The default is 640x360 (the 16:9 size of most RealEstate10K YouTube downloads at 360p); the 256x256
    used by pixelSplat/MVSplat is a centre-cropped and resized version, for which you must call
    :meth:`Cameras.fit` yourself. Default bounds ``near=0.1, far=1000`` are those of MVSplat/VideoScene's
    ``mvsplat/src/dataset/dataset_re10k.py`` (which also rescales the world so the two context cameras are 1 unit
    apart; we do not rescale). Names are the timestamps.

``"load3d"``  ComfyUI ``LOAD3D_CAMERA`` dicts (:func:`from_load3d` / :func:`to_load3d`). Notes from
    ComfyUI (``comfy_api/latest/_io.py`` class ``Load3DCamera``, ``comfy_extras/nodes_load_3d.py`` and
    ``comfy_extras/nodes_gaussian_splat.py``)::

        CameraInfo (TypedDict), "Coordinate system: right-handed, Y-up, camera looks down -Z" (three.js):
          position:   {"x","y","z"}  camera position, scene units
          target:     {"x","y","z"}  OrbitControls focus point, scene units
          zoom:       float          three.js digital zoom (1 = 100%): scales the focal length
          cameraType: "perspective" | "orthographic"
          quaternion: {"x","y","z","w"} optional, the camera's world rotation (three.js: local -Z = view
                      direction, local +Y = image up); includes roll
          fov:        optional, degrees, *vertical* FOV (perspective only)
          aspect:     optional, width / height of the viewer canvas
          near, far:  optional, scene units
          frustum:    optional, orthographic only {left, right, top, bottom}
        The Load3D node outputs it as "camera_info" (also inside the LOAD_3D dict under "camera_info").
        ComfyUI's own splat renderer (RenderSplat in nodes_gaussian_splat.py) maps the three.js world to the
        3DGS/PLY frame by a 180 degree rotation about X, (x, y, z) -> (x, -y, -z); uses the quaternion if present,
        else a roll-free look-at of target with world +Y up; defaults fov to 35 degrees; and computes
        f = (min(W, H) / 2) / tan(fov / 2) * zoom.

    Our conversion: rotation from ``quaternion`` if present, else three.js ``lookAt(target)`` with up = +Y;
    ``c2w_cv = [R_gl @ diag(1, -1, -1) | position]`` in three.js world; then (``flip_world=True``, default, same as
    ComfyUI's RenderSplat) world ``(x, y, z) -> (x, -y, -z)`` so that the scene/PLY coordinates are used directly
    (Y-down 3DGS/COLMAP scenes look upright in the three.js viewer). ``flip_world=False`` keeps three.js world
    coordinates. ``fy = fx = (H / 2) / tan(fov / 2) * zoom`` (vertical FOV as in three.js; ``fov_axis="min"``
    reproduces RenderSplat, which differs only for portrait images), principal point at the image centre, square
    pixels. Orthographic cameras are approximated by a perspective camera with the same fov (warning).

Defaults: missing near/far bounds are ``DEFAULT_NEAR = 0.1`` and ``DEFAULT_FAR = 100.0`` scene units unless the
format says otherwise; ``near=``/``far=`` override any source.
"""

from __future__ import annotations

import json
import math
import os
import re
import struct
import warnings
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch import Tensor

from ..core.cameras import Cameras, quat_to_rotmat, rotmat_to_quat
from ..core.atomic import atomic_write_bytes

__all__ = [
    "load_cameras",
    "save_cameras",
    "detect_format",
    "FORMATS",
    "DEFAULT_NEAR",
    "DEFAULT_FAR",
    "from_vscene", "to_vscene",
    "from_nerf", "to_nerf",
    "from_llff", "to_llff", "load_llff",
    "from_colmap", "to_colmap",
    "from_re10k", "to_re10k",
    "from_load3d", "to_load3d",
]

FORMATS = ("vscene", "nerf", "llff", "colmap", "re10k", "load3d")
DEFAULT_NEAR = 0.1
DEFAULT_FAR = 100.0
RE10K_DEFAULT_SIZE = (640, 360)
RE10K_NEAR, RE10K_FAR = 0.1, 1000.0
LOAD3D_DEFAULT_FOV = 35.0
LOAD3D_DEFAULT_SIZE = 1024
IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".exr", ".gif", ".heic")

_GL_TO_CV = np.diag([1.0, -1.0, -1.0, 1.0])  # flips camera y and z (self-inverse)
_WORLD_FLIP = np.diag([1.0, -1.0, -1.0])  # three.js world <-> scene (ComfyUI RenderSplat), self-inverse


# ====================================================================== small helpers
def _strip_image_ext(name: str) -> str:
    """Drop a known image extension (``a/r_0.png`` -> ``a/r_0``); other dots are kept."""
    root, ext = os.path.splitext(name)
    return root if ext.lower() in IMAGE_EXTS else name


def _norm_name(name: str) -> str:
    n = str(name).replace("\\", "/")
    while n.startswith("./"):
        n = n[2:]
    return _strip_image_ext(n)


def _stem(name: str) -> str:
    return _norm_name(name).rsplit("/", 1)[-1]


def _target_size(stored_w: int, stored_h: int, width: int | None, height: int | None) -> tuple[int, int]:
    """Output size: the requested one; if only one side is given keep the stored aspect ratio."""
    if width is None and height is None:
        return int(stored_w), int(stored_h)
    if width is None:
        return max(1, round(stored_w * height / stored_h)), int(height)
    if height is None:
        return int(width), max(1, round(stored_h * width / stored_w))
    return int(width), int(height)


def _scale_K(K: np.ndarray, sx: float, sy: float) -> np.ndarray:
    K = np.array(K, dtype=np.float64, copy=True)
    K[..., 0, :] *= sx
    K[..., 1, :] *= sy
    return K


def _K(fx, fy, cx, cy) -> np.ndarray:
    return np.array([[fx, 0.0, cx], [0.0, fy, cy], [0.0, 0.0, 1.0]], dtype=np.float64)


def _rigid_inverse(M: np.ndarray) -> np.ndarray:
    """Inverse of rigid ``[...,4,4]`` (or ``[...,3,4]``) transforms as ``[R^T | -R^T t]``, returns ``[...,4,4]``."""
    R = M[..., :3, :3]
    t = M[..., :3, 3]
    out = np.zeros(M.shape[:-2] + (4, 4))
    Rt = np.swapaxes(R, -1, -2)
    out[..., :3, :3] = Rt
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", Rt, t)
    out[..., 3, 3] = 1
    return out


def _bounds(n: int, near, far, src_near=None, src_far=None, def_near=DEFAULT_NEAR, def_far=DEFAULT_FAR):
    """near/far [N]: explicit argument > source values > defaults."""
    def pick(arg, src, default):
        if arg is not None:
            v = np.asarray(arg, dtype=np.float64)
            return np.broadcast_to(v, (n,)).copy() if v.ndim == 0 or v.size == 1 else v.reshape(n)
        if src is not None:
            return np.asarray(src, dtype=np.float64).reshape(n)
        return np.full(n, default, dtype=np.float64)
    return pick(near, src_near, def_near), pick(far, src_far, def_far)


def _make(c2w, K, width, height, near, far, names, dtype) -> Cameras:
    t = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64)).to(dtype)
    return Cameras(t(c2w), t(K), int(width), int(height), t(near), t(far), names)


def _read_image_size(path: Path) -> tuple[int, int] | None:
    """(width, height) from an image header (PIL), or None if unreadable."""
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - PIL is a ComfyUI dependency
        return None
    try:
        with Image.open(path) as im:
            return int(im.size[0]), int(im.size[1])
    except Exception:
        return None


def _find_image(base: Path, file_path: str) -> Path | None:
    p = base / file_path
    cands = [p] + [Path(str(p) + e) for e in (".png", ".jpg", ".jpeg", ".PNG", ".JPG", ".JPEG", ".webp")]
    for c in cands:
        if c.is_file():
            return c
    return None


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def _xyz(d, name: str) -> np.ndarray:
    if isinstance(d, dict):
        try:
            return np.array([float(d.get("x", 0.0)), float(d.get("y", 0.0)), float(d.get("z", 0.0))])
        except (TypeError, ValueError):
            raise ValueError(f"LOAD3D_CAMERA {name} must hold numbers x, y, z; got {d!r}") from None
    v = np.asarray(d, dtype=np.float64).reshape(-1)
    if v.shape != (3,):
        raise ValueError(f"LOAD3D_CAMERA {name} must be {{'x','y','z'}} or [x, y, z]; got {d!r}")
    return v


def _np(t: Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def _warn(msg: str) -> None:
    warnings.warn(msg, stacklevel=3)


# ====================================================================== selection
def _select(cams: Cameras, select) -> Cameras:
    """Pick cameras by name (str, flexible matching) or index (int), keeping the order of ``select``."""
    if select is None:
        return cams
    items = [select] if isinstance(select, (str, int)) else list(select)
    if not items:
        raise ValueError("select is empty; pass None to keep all cameras")
    names = cams.names if cams.names is not None else [str(i) for i in range(len(cams))]
    norm = [_norm_name(n) for n in names]
    stems = [_stem(n) for n in names]
    idx = []
    for q in items:
        if isinstance(q, (int, np.integer)) and not isinstance(q, bool):
            if not -len(cams) <= int(q) < len(cams):
                raise ValueError(f"select index {q} out of range for {len(cams)} cameras")
            idx.append(int(q) % len(cams))
            continue
        qn = _norm_name(str(q))
        hits = [i for i, n in enumerate(norm) if n == qn]
        if not hits:
            qs = _stem(str(q))
            hits = [i for i, s in enumerate(stems) if s == qs]
        if not hits:
            preview = ", ".join(repr(n) for n in names[:10]) + (" ..." if len(names) > 10 else "")
            raise ValueError(f"select: no camera named {q!r}; available names: {preview}")
        if len(hits) > 1:
            raise ValueError(
                f"select: {q!r} is ambiguous, it matches {[names[i] for i in hits]}; give the folder too"
            )
        idx.append(hits[0])
    return cams[idx]


# ====================================================================== vscene
def to_vscene(cams: Cameras) -> dict:
    """Cameras -> our JSON-able dict (see the module docstring for the layout)."""
    c2w, K = _np(cams.c2w), _np(cams.K)
    near, far = _np(cams.near), _np(cams.far)
    entries = []
    for i in range(len(cams)):
        entries.append({
            "name": None if cams.names is None else cams.names[i],
            "c2w": c2w[i].tolist(),
            "K": K[i].tolist(),
            "near": float(near[i]),
            "far": float(far[i]),
        })
    return {"format": "vscene-cameras", "version": 1, "convention": "opencv_c2w",
            "width": int(cams.width), "height": int(cams.height), "cameras": entries}


def from_vscene(data: dict, *, dtype: torch.dtype = torch.float32) -> Cameras:
    """Our JSON dict -> Cameras (no rescaling; use :func:`load_cameras` for ``width``/``height``/``select``)."""
    if data.get("format") != "vscene-cameras":
        raise ValueError(f"not a vscene camera file: 'format' is {data.get('format')!r}, expected 'vscene-cameras'")
    if int(data.get("version", 1)) > 1:
        raise ValueError(f"vscene camera file version {data['version']} is newer than this reader (1); update videoscene")
    conv = data.get("convention", "opencv_c2w")
    if conv != "opencv_c2w":
        raise ValueError(f"vscene camera file convention {conv!r} is not supported (only 'opencv_c2w')")
    entries = data.get("cameras") or []
    if not entries:
        raise ValueError("vscene camera file has no cameras")
    try:
        c2w = np.array([e["c2w"] for e in entries], dtype=np.float64)
        K = np.array([e["K"] for e in entries], dtype=np.float64)
    except KeyError as err:
        raise ValueError(f"vscene camera entry misses key {err}; each needs 'c2w' (4x4) and 'K' (3x3)") from None
    near = [e.get("near", DEFAULT_NEAR) for e in entries]
    far = [e.get("far", DEFAULT_FAR) for e in entries]
    raw = [e.get("name") for e in entries]
    names = None if all(n is None for n in raw) else [str(n) if n is not None else str(i) for i, n in enumerate(raw)]
    return _make(c2w, K, data["width"], data["height"], near, far, names, dtype)


# ====================================================================== NeRF / Blender
def from_nerf(
    data: dict,
    *,
    base_dir: str | os.PathLike | None = None,
    width: int | None = None,
    height: int | None = None,
    near=None,
    far=None,
    dtype: torch.dtype = torch.float32,
) -> Cameras:
    """NeRF/Blender ``transforms.json`` dict -> Cameras (see module docstring).

    ``base_dir``: folder of the json, used to read the first image's size when ``w``/``h`` are missing.
    ``width``/``height``: output size; intrinsics are rescaled per axis from the stored size.
    """
    frames = data.get("frames")
    if not isinstance(frames, list) or not frames:
        raise ValueError("NeRF transforms: 'frames' must be a non-empty list")
    top = {k: v for k, v in data.items() if k != "frames"}
    for key in ("k1", "k2", "k3", "k4", "p1", "p2"):
        if float(top.get(key, 0) or 0) != 0:
            _warn(f"NeRF transforms: distortion '{key}' is ignored (pinhole model); undistort the images for exact results")
            break
    merged = [{**top, **f} for f in frames]
    base = Path(base_dir) if base_dir is not None else None

    # Stored image size, per frame.
    fallback: tuple[int, int] | None = None
    if any("w" not in m or "h" not in m for m in merged):
        if base is not None:
            fp = next((m.get("file_path") for m in merged if m.get("file_path")), None)
            img = _find_image(base, fp) if fp else None
            if img is not None:
                fallback = _read_image_size(img)
        if fallback is None and width is not None and height is not None:
            fallback = (int(width), int(height))
        if fallback is None:
            raise ValueError(
                "NeRF transforms have no 'w'/'h' and the first image could not be read to get its size; "
                "pass width= and height= (e.g. 800, 800 for the Blender synthetic scenes)"
            )
    sizes = [(int(m.get("w", fallback[0] if fallback else 0)), int(m.get("h", fallback[1] if fallback else 0)))
             for m in merged]
    if len(set(sizes)) > 1 and width is None and height is None:
        raise ValueError(
            f"NeRF transforms: frames have different image sizes {sorted(set(sizes))[:4]}; a Cameras batch shares one "
            f"size: pass width= and height= to rescale all, or select= frames of one size"
        )
    tw, th = _target_size(sizes[0][0], sizes[0][1], width, height)

    c2w, K, names, src_near, src_far = [], [], [], [], []
    for i, (m, (sw, sh)) in enumerate(zip(merged, sizes)):
        if "transform_matrix" not in m:
            raise ValueError(f"NeRF transforms: frame {i} has no 'transform_matrix'")
        M = np.asarray(m["transform_matrix"], dtype=np.float64)
        if M.shape == (3, 4):
            M = np.vstack([M, [0, 0, 0, 1]])
        if M.shape != (4, 4):
            raise ValueError(f"NeRF transforms: frame {i} transform_matrix must be 4x4, got shape {M.shape}")
        c2w.append(M @ _GL_TO_CV)
        if "fl_x" in m:
            fx = float(m["fl_x"])
        elif "camera_angle_x" in m:
            fx = 0.5 * sw / math.tan(0.5 * float(m["camera_angle_x"]))
        else:
            raise ValueError(f"NeRF transforms: frame {i} has neither 'fl_x' nor 'camera_angle_x'; cannot get the focal length")
        if "fl_y" in m:
            fy = float(m["fl_y"])
        elif "camera_angle_y" in m and "fl_x" not in m:
            fy = 0.5 * sh / math.tan(0.5 * float(m["camera_angle_y"]))
        else:
            fy = fx
        cx = float(m.get("cx", sw / 2.0))
        cy = float(m.get("cy", sh / 2.0))
        K.append(_scale_K(_K(fx, fy, cx, cy), tw / sw, th / sh))
        fp = m.get("file_path")
        names.append(_stem(fp) if fp else str(i))
        src_near.append(float(m.get("near", DEFAULT_NEAR)))
        src_far.append(float(m.get("far", DEFAULT_FAR)))
    nr, fr = _bounds(len(c2w), near, far, src_near, src_far)
    return _make(np.stack(c2w), np.stack(K), tw, th, nr, fr, names, dtype)


def to_nerf(cams: Cameras) -> dict:
    """Cameras -> NeRF ``transforms.json`` dict (OpenGL c2w; ``camera_angle_x``/``w``/``h``/``fl_x``... at the top
    level from camera 0, exact per-frame ``fl_x, fl_y, cx, cy``, plus non-standard ``near``/``far`` per frame).
    ``file_path`` is ``"./<name>"``. Skew is not representable and dropped (warning)."""
    c2w, K = _np(cams.c2w), _np(cams.K)
    if np.abs(K[:, 0, 1]).max(initial=0) > 1e-9:
        _warn("to_nerf: non-zero skew in K is not representable in transforms.json and is dropped")
    W, H = cams.width, cams.height
    frames = []
    for i in range(len(cams)):
        name = cams.names[i] if cams.names is not None else f"{i:04d}"
        frames.append({
            "file_path": f"./{name}",
            "transform_matrix": (c2w[i] @ _GL_TO_CV).tolist(),
            "fl_x": float(K[i, 0, 0]), "fl_y": float(K[i, 1, 1]),
            "cx": float(K[i, 0, 2]), "cy": float(K[i, 1, 2]),
            "near": float(cams.near[i]), "far": float(cams.far[i]),
        })
    return {
        "camera_angle_x": 2 * math.atan(W / (2 * K[0, 0, 0])),
        "camera_angle_y": 2 * math.atan(H / (2 * K[0, 1, 1])),
        "fl_x": float(K[0, 0, 0]), "fl_y": float(K[0, 1, 1]),
        "cx": float(K[0, 0, 2]), "cy": float(K[0, 1, 2]),
        "w": int(W), "h": int(H),
        "frames": frames,
    }


# ====================================================================== LLFF
def from_llff(
    poses_bounds: np.ndarray,
    *,
    width: int | None = None,
    height: int | None = None,
    image_size: tuple[int, int] | None = None,
    names: Sequence[str] | None = None,
    near=None,
    far=None,
    dtype: torch.dtype = torch.float32,
) -> Cameras:
    """LLFF ``poses_bounds`` array ``[N,17]`` -> Cameras.

    The stored ``h, w, f`` describe the full-resolution photos. Output size: ``width``/``height`` if given (one
    of them keeps the aspect), else ``image_size`` (the real image folder, e.g. ``(504, 378)`` for
    ``images_8``), else the stored size. K is scaled per axis: ``fx = f * W/w``, ``cx = W/2`` ...
    """
    arr = np.asarray(poses_bounds, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 17:
        raise ValueError(f"LLFF poses_bounds must have shape [N,17], got {arr.shape}")
    n = arr.shape[0]
    P = arr[:, :15].reshape(n, 3, 5)
    R_llff, t, hwf = P[:, :, :3], P[:, :, 3], P[:, :, 4]
    R = np.stack([R_llff[:, :, 1], R_llff[:, :, 0], -R_llff[:, :, 2]], axis=-1)  # [right, down, forward]
    c2w = np.zeros((n, 4, 4))
    c2w[:, :3, :3], c2w[:, :3, 3], c2w[:, 3, 3] = R, t, 1
    sh, sw = float(hwf[0, 0]), float(hwf[0, 1])
    if np.abs(hwf[:, :2] - hwf[:1, :2]).max() > 1e-6:
        raise ValueError("LLFF poses_bounds: rows have different image sizes (h, w); this is not supported")
    if width is None and height is None and image_size is not None:
        width, height = image_size
        if abs(width / height - sw / sh) > 0.01 * sw / sh:
            _warn(f"LLFF: images are {width}x{height} but poses_bounds says {sw:g}x{sh:g} (different aspect); "
                  f"intrinsics are scaled per axis")
    tw, th = _target_size(sw, sh, width, height)
    K = np.stack([_scale_K(_K(f, f, sw / 2, sh / 2), tw / sw, th / sh) for f in hwf[:, 2]])
    nr, fr = _bounds(n, near, far, arr[:, 15], arr[:, 16])
    if names is not None and len(names) != n:
        _warn(f"LLFF: {len(names)} images but {n} poses; using indices as names")
        names = None
    names = [str(s) for s in names] if names is not None else [str(i) for i in range(n)]
    return _make(c2w, K, tw, th, nr, fr, names, dtype)


def _llff_image_dir(folder: Path) -> Path | None:
    """``images/`` if present, else the ``images_<k>`` with the smallest k that contains images."""
    cands = []
    for p in folder.iterdir() if folder.is_dir() else []:
        if not p.is_dir():
            continue
        if p.name == "images":
            cands.append((0, p))
        else:
            m = re.fullmatch(r"images_(\d+)", p.name)
            if m:
                cands.append((int(m.group(1)), p))
    for _, p in sorted(cands):
        if _list_images(p):
            return p
    return None


def load_llff(path: str | os.PathLike, **kw) -> Cameras:
    """Read ``poses_bounds.npy`` (or a folder holding it) with names and image size from the image folder next to
    it (see :func:`from_llff` for ``width``, ``height``, ``near``, ``far``, ``dtype``)."""
    path = Path(path)
    npy = path / "poses_bounds.npy" if path.is_dir() else path
    if not npy.is_file():
        raise FileNotFoundError(f"LLFF poses_bounds.npy not found: {npy}")
    try:
        arr = np.load(npy, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:  # truncated data / header, pickled or non-.npy content
        raise ValueError(f"{npy}: cannot read as a NumPy array ({e}); poses_bounds.npy is truncated or corrupt - "
                         "re-create it (LLFF imgs2poses / COLMAP) or copy it again") from None
    if not isinstance(arr, np.ndarray) or arr.ndim != 2 or arr.shape[1] != 17 or arr.shape[0] < 1:
        got = f"shape {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
        raise ValueError(f"{npy}: LLFF poses_bounds.npy must hold a float array [N, 17] (3x5 pose + 2 bounds per "
                         f"image), got {got}; this is not an LLFF poses_bounds file")
    img_dir = _llff_image_dir(npy.parent)
    names, size = None, None
    if img_dir is not None:
        files = _list_images(img_dir)
        names = [_strip_image_ext(f.name) for f in files]
        size = _read_image_size(files[0])
    return from_llff(arr, image_size=size, names=names, **kw)


def to_llff(cams: Cameras) -> np.ndarray:
    """Cameras -> LLFF ``poses_bounds`` ``[N,17]`` (float64). LLFF stores one focal ``f`` and assumes a centred
    principal point: ``fy`` and ``cx, cy`` are dropped (warning if they differ from ``fx`` / the centre)."""
    c2w, K = _np(cams.c2w), _np(cams.K)
    W, H = cams.width, cams.height
    if (np.abs(K[:, 0, 0] - K[:, 1, 1]) > 1e-6 * K[:, 0, 0]).any():
        _warn("to_llff: fx != fy; LLFF stores one focal length, fy is dropped")
    if (np.abs(K[:, 0, 2] - W / 2) > 1e-3).any() or (np.abs(K[:, 1, 2] - H / 2) > 1e-3).any():
        _warn("to_llff: principal point is not the image centre; LLFF cannot store it and it is dropped")
    n = len(cams)
    R = c2w[:, :3, :3]
    P = np.zeros((n, 3, 5))
    P[:, :, 0], P[:, :, 1], P[:, :, 2] = R[:, :, 1], R[:, :, 0], -R[:, :, 2]  # [down, right, backwards]
    P[:, :, 3] = c2w[:, :3, 3]
    P[:, 0, 4], P[:, 1, 4], P[:, 2, 4] = H, W, K[:, 0, 0]
    return np.concatenate([P.reshape(n, 15), _np(cams.near)[:, None], _np(cams.far)[:, None]], axis=1)


# ====================================================================== COLMAP
# model id -> (name, number of params)
_COLMAP_MODELS = {
    0: ("SIMPLE_PINHOLE", 3), 1: ("PINHOLE", 4), 2: ("SIMPLE_RADIAL", 4), 3: ("RADIAL", 5),
    4: ("OPENCV", 8), 5: ("OPENCV_FISHEYE", 8), 6: ("FULL_OPENCV", 12), 7: ("FOV", 5),
    8: ("SIMPLE_RADIAL_FISHEYE", 4), 9: ("RADIAL_FISHEYE", 5), 10: ("THIN_PRISM_FISHEYE", 12),
    11: ("RAD_TAN_THIN_PRISM_FISHEYE", 16),
}
_COLMAP_IDS = {name: (i, n) for i, (name, n) in _COLMAP_MODELS.items()}


def _colmap_K(model: str, params: Sequence[float], where: str) -> tuple[np.ndarray, bool]:
    """(K, has_distortion) for a COLMAP camera model."""
    p = [float(v) for v in params]
    if model in ("SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL"):
        K, dist = _K(p[0], p[0], p[1], p[2]), p[3:]
    elif model in ("PINHOLE", "OPENCV", "FULL_OPENCV"):
        K, dist = _K(p[0], p[1], p[2], p[3]), p[4:]
    else:
        raise ValueError(
            f"COLMAP {where}: camera model {model} is a fisheye/FOV model and cannot be used as a pinhole; "
            f"undistort the images first (colmap image_undistorter) and load the undistorted sparse model"
        )
    return K, any(abs(d) > 0 for d in dist)


def _colmap_find(folder: Path) -> Path:
    for sub in ("", "sparse/0", "sparse", "colmap/sparse/0", "distorted/sparse/0"):
        d = folder / sub if sub else folder
        if ((d / "cameras.txt").is_file() and (d / "images.txt").is_file()) or (
            (d / "cameras.bin").is_file() and (d / "images.bin").is_file()
        ):
            return d
    raise ValueError(
        f"no COLMAP model in {folder}: expected cameras.txt + images.txt (or .bin) in it or in sparse/0"
    )


def _read_colmap_text(d: Path):
    def bad(path: Path, line: str, expected: str) -> ValueError:
        return ValueError(f"{path}: malformed line {line[:120]!r}: expected {expected}; the file is truncated or "
                          "corrupt - re-export the model (COLMAP model_converter) or copy it again")

    def read(path: Path) -> list[str]:
        try:
            return path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError:
            raise ValueError(f"{path}: not a text file (not UTF-8); a COLMAP .txt model is corrupt, or a binary "
                             "model was named .txt") from None

    cams = {}
    path = d / "cameras.txt"
    for line in read(path):
        s = line.strip()
        if not s or s.startswith("#"):
            continue
        tok = s.split()
        try:
            cams[int(tok[0])] = (tok[1], int(tok[2]), int(tok[3]), [float(v) for v in tok[4:]])
        except (IndexError, ValueError):
            raise bad(path, s, "CAMERA_ID MODEL WIDTH HEIGHT PARAMS[]") from None
    images = []
    path = d / "images.txt"
    lines = [l for l in read(path) if not l.startswith("#")]
    i = 0
    while i < len(lines):
        tok = lines[i].split()
        if not tok:  # blank line where an image line was expected
            i += 1
            continue
        try:
            if len(tok) < 10:
                raise ValueError
            images.append((int(tok[0]), [float(v) for v in tok[1:5]], [float(v) for v in tok[5:8]], int(tok[8]),
                           " ".join(tok[9:])))
        except ValueError:
            raise bad(path, lines[i], "IMAGE_ID QW QX QY QZ TX TY TZ CAMERA_ID NAME") from None
        i += 2  # skip the POINTS2D line (may be empty)
    return cams, images


def _colmap_corrupt(path: Path, what: str) -> ValueError:
    return ValueError(f"{path}: COLMAP binary file is truncated or corrupt ({what}); re-export the model (COLMAP "
                      "model_converter) or copy it again")


def _unpack_exact(f, fmt: str, path: Path, what: str):
    size = struct.calcsize(fmt)
    buf = f.read(size)
    if len(buf) != size:
        raise _colmap_corrupt(path, f"the file ends inside {what}: {len(buf)} of {size} bytes")
    return struct.unpack(fmt, buf)


def _read_colmap_binary(d: Path):
    cams = {}
    path = d / "cameras.bin"
    with open(path, "rb") as f:
        (n,) = _unpack_exact(f, "<Q", path, "the camera count")
        for i in range(n):
            cid, mid, w, h = _unpack_exact(f, "<iiQQ", path, f"camera {i + 1} of {n}")
            if mid not in _COLMAP_MODELS:
                raise _colmap_corrupt(path, f"camera {i + 1} has unknown camera model id {mid}")
            name, npar = _COLMAP_MODELS[mid]
            params = _unpack_exact(f, f"<{npar}d", path, f"the parameters of camera {i + 1} of {n}")
            cams[cid] = (name, int(w), int(h), list(params))
    images = []
    path = d / "images.bin"
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        (n,) = _unpack_exact(f, "<Q", path, "the image count")
        for i in range(n):
            iid, qw, qx, qy, qz, tx, ty, tz, cid = _unpack_exact(f, "<idddddddi", path, f"image {i + 1} of {n}")
            name = bytearray()
            while True:
                c = f.read(1)
                if c == b"":
                    raise _colmap_corrupt(path, f"the file ends inside the name of image {i + 1} of {n}")
                if c == b"\x00":
                    break
                name += c
            (npts,) = _unpack_exact(f, "<Q", path, f"the point count of image {i + 1} of {n}")
            if f.tell() + 24 * npts > size:
                raise _colmap_corrupt(path, f"image {i + 1} of {n} declares {npts} 2D points, more than the file holds")
            f.seek(24 * npts, os.SEEK_CUR)
            try:
                images.append((iid, [qw, qx, qy, qz], [tx, ty, tz], cid, name.decode("utf-8")))
            except UnicodeDecodeError:
                raise _colmap_corrupt(path, f"the name of image {i + 1} is not UTF-8") from None
    return cams, images


def from_colmap(
    folder: str | os.PathLike,
    *,
    width: int | None = None,
    height: int | None = None,
    near=None,
    far=None,
    dtype: torch.dtype = torch.float32,
) -> Cameras:
    """COLMAP sparse model folder (or its parent with ``sparse/0``) -> Cameras, sorted by image name.

    Text files are preferred over binary when both exist. All cameras must have one size unless
    ``width``/``height`` are given (then each is rescaled per axis).
    """
    d = _colmap_find(Path(folder))
    if (d / "cameras.txt").is_file() and (d / "images.txt").is_file():
        cams, images = _read_colmap_text(d)
    else:
        cams, images = _read_colmap_binary(d)
    if not images:
        raise ValueError(f"COLMAP model in {d} has no registered images")
    images.sort(key=lambda r: r[4])
    sizes = set()
    for iid, _, _, cid, name in images:
        if cid not in cams:
            raise ValueError(f"COLMAP image {name!r} refers to camera id {cid}, which is not in cameras.txt/.bin")
        sizes.add(cams[cid][1:3])
    if len(sizes) > 1 and width is None and height is None:
        raise ValueError(
            f"COLMAP cameras have different image sizes {sorted(sizes)[:4]}; pass width= and height= to rescale "
            f"them to one size"
        )
    sw0, sh0 = next(iter(sizes))
    tw, th = _target_size(sw0, sh0, width, height)
    c2w, K, names = [], [], []
    distorted = False
    for iid, q, t, cid, name in images:
        model, sw, sh, params = cams[cid]
        k, dist = _colmap_K(model, params, f"camera {cid}")
        distorted |= dist
        K.append(_scale_K(k, tw / sw, th / sh))
        w2c = np.eye(4)
        w2c[:3, :3] = quat_to_rotmat(torch.tensor(q, dtype=torch.float64)).numpy()
        w2c[:3, 3] = t
        c2w.append(_rigid_inverse(w2c))
        names.append(_strip_image_ext(name))
    if distorted:
        _warn("COLMAP: lens distortion coefficients are ignored (pinhole model); undistort the images with "
              "`colmap image_undistorter` for exact results")
    nr, fr = _bounds(len(c2w), near, far)
    return _make(np.stack(c2w), np.stack(K), tw, th, nr, fr, names, dtype)


def to_colmap(cams: Cameras, folder: str | os.PathLike, *, binary: bool = False, image_ext: str = ".png") -> Path:
    """Write a COLMAP sparse model (one PINHOLE camera per image, no points) into ``folder`` (created); returns it.

    Image names are ``<name><image_ext>`` (unless the name already has an image extension). Each file is written
    atomically. Skew is dropped (warning). Note COLMAP does not store near/far.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    K, w2c = _np(cams.K), _np(cams.w2c)
    if np.abs(K[:, 0, 1]).max(initial=0) > 1e-9:
        _warn("to_colmap: non-zero skew in K is not representable in COLMAP and is dropped")
    q = rotmat_to_quat(torch.as_tensor(w2c[:, :3, :3])).numpy()
    n = len(cams)
    names = []
    for i in range(n):
        nm = cams.names[i] if cams.names is not None else f"{i:05d}"
        names.append(nm if _strip_image_ext(nm) != nm else nm + image_ext)
    W, H = cams.width, cams.height
    if binary:
        cb = bytearray(struct.pack("<Q", n))
        ib = bytearray(struct.pack("<Q", n))
        for i in range(n):
            cb += struct.pack("<iiQQ4d", i + 1, 1, W, H, K[i, 0, 0], K[i, 1, 1], K[i, 0, 2], K[i, 1, 2])
            ib += struct.pack("<idddddddi", i + 1, *q[i].tolist(), *w2c[i, :3, 3].tolist(), i + 1)
            ib += names[i].encode("utf-8") + b"\x00" + struct.pack("<Q", 0)
        atomic_write_bytes(folder / "cameras.bin", bytes(cb))
        atomic_write_bytes(folder / "images.bin", bytes(ib))
        atomic_write_bytes(folder / "points3D.bin", struct.pack("<Q", 0))
    else:
        cl = ["# Camera list with one line of data per camera:",
              "#   CAMERA_ID, MODEL, WIDTH, HEIGHT, PARAMS[]", f"# Number of cameras: {n}"]
        il = ["# Image list with two lines of data per image:",
              "#   IMAGE_ID, QW, QX, QY, QZ, TX, TY, TZ, CAMERA_ID, NAME",
              "#   POINTS2D[] as (X, Y, POINT3D_ID)", f"# Number of images: {n}"]
        for i in range(n):
            pars = " ".join(repr(float(v)) for v in (K[i, 0, 0], K[i, 1, 1], K[i, 0, 2], K[i, 1, 2]))
            cl.append(f"{i + 1} PINHOLE {W} {H} {pars}")
            vals = " ".join(repr(float(v)) for v in (*q[i], *w2c[i, :3, 3]))
            il.append(f"{i + 1} {vals} {i + 1} {names[i]}")
            il.append("")
        atomic_write_bytes(folder / "cameras.txt", ("\n".join(cl) + "\n").encode())
        atomic_write_bytes(folder / "images.txt", ("\n".join(il) + "\n").encode())
        atomic_write_bytes(folder / "points3D.txt", b"# 3D point list (empty)\n")
    return folder


# ====================================================================== RealEstate10K
def from_re10k(
    text: str,
    *,
    width: int | None = None,
    height: int | None = None,
    near=None,
    far=None,
    dtype: torch.dtype = torch.float32,
) -> Cameras:
    """RealEstate10K sequence text (URL line + rows) -> Cameras for ``width x height`` frames
    (default 640x360, see the module docstring; bounds default to MVSplat's 0.1 / 1000)."""
    if width is None and height is None:
        width, height = RE10K_DEFAULT_SIZE
    elif width is None or height is None:
        raise ValueError("RealEstate10K: pass both width= and height= (the files do not store the frame size)")
    rows, names = [], []
    for ln, line in enumerate(text.splitlines()):
        tok = line.split()
        if not tok:
            continue
        if len(tok) == 1 and not rows:  # the URL line
            continue
        try:
            if len(tok) != 19:
                raise ValueError
            row = [float(v) for v in tok[1:]]
        except ValueError:
            raise ValueError(f"RealEstate10K line {ln + 1}: expected 19 numbers (timestamp fx fy cx cy 0 0 + 12 of a "
                             f"3x4 w2c), got {len(tok)} tokens {' '.join(tok)[:80]!r}; a short last line means the "
                             f"file is truncated - copy or export it again") from None
        names.append(tok[0])
        rows.append(row)
    if not rows:
        raise ValueError("RealEstate10K: no camera rows found")
    a = np.array(rows)
    W, H = int(width), int(height)
    K = np.stack([_K(r[0] * W, r[1] * H, r[2] * W, r[3] * H) for r in a])
    w2c = a[:, 6:].reshape(-1, 3, 4)
    c2w = _rigid_inverse(w2c)
    nr, fr = _bounds(len(a), near, far, def_near=RE10K_NEAR, def_far=RE10K_FAR)
    return _make(c2w, K, W, H, nr, fr, names, dtype)


def to_re10k(cams: Cameras, *, url: str = "") -> str:
    """Cameras -> RealEstate10K text (normalized intrinsics, OpenCV w2c). Timestamps are the camera names when
    they are all integers, else the indices. near/far and skew are not stored."""
    K = _np(cams.K_normalized)
    w2c = _np(cams.w2c)
    names = cams.names
    if names is None or not all(re.fullmatch(r"-?\d+", n) for n in names):
        names = [str(i) for i in range(len(cams))]
    lines = [url or "https://www.youtube.com/watch?v=unknown"]
    for i in range(len(cams)):
        vals = [K[i, 0, 0], K[i, 1, 1], K[i, 0, 2], K[i, 1, 2], 0.0, 0.0, *w2c[i, :3, :4].reshape(-1)]
        lines.append(names[i] + " " + " ".join(repr(float(v)) for v in vals))
    return "\n".join(lines) + "\n"


# ====================================================================== ComfyUI LOAD3D_CAMERA
def _threejs_lookat_rotation(position: np.ndarray, target: np.ndarray) -> np.ndarray:
    """three.js ``camera.lookAt(target)`` with up = +Y: columns = camera local x (right), y (up), z (backwards)."""
    z = position - target
    nz = np.linalg.norm(z)
    if nz < 1e-12:
        raise ValueError("LOAD3D_CAMERA: position equals target and there is no quaternion; the view direction is undefined")
    z = z / nz
    up = np.array([0.0, 1.0, 0.0])
    if abs(z @ up) > 0.999:  # looking straight up/down (same fallback as ComfyUI's RenderSplat)
        up = np.array([0.0, 0.0, 1.0])
    x = np.cross(up, z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return np.stack([x, y, z], axis=1)


def from_load3d(
    info: dict | Sequence[dict],
    *,
    width: int | None = None,
    height: int | None = None,
    near=None,
    far=None,
    flip_world: bool = True,
    fov_axis: str = "vertical",
    dtype: torch.dtype = torch.float32,
) -> Cameras:
    """ComfyUI ``LOAD3D_CAMERA`` dict (or a list of them, or a ``LOAD_3D`` dict with ``"camera_info"``) -> Cameras.

    ``width``/``height``: render size; default 1024 high and ``1024 * aspect`` wide when ``aspect`` is given
    (else 1024x1024, the Load3D node default); if only one is given the other follows ``aspect`` (or square).
    ``flip_world``: map three.js world (Y-up) to scene coordinates by ``(x, y, z) -> (x, -y, -z)`` like ComfyUI's
    RenderSplat (default) - see the module docstring. ``fov_axis``: ``"vertical"`` (three.js) or ``"min"`` (the FOV
    spans the smaller image side, as ComfyUI's RenderSplat).
    """
    infos = [info] if isinstance(info, dict) else list(info)
    if not infos:
        raise ValueError("LOAD3D_CAMERA: empty list")
    infos = [i.get("camera_info", i) if isinstance(i, dict) else i for i in infos]
    if fov_axis not in ("vertical", "min"):
        raise ValueError(f"fov_axis must be 'vertical' or 'min', got {fov_axis!r}")
    aspect = infos[0].get("aspect")
    aspect = float(aspect) if aspect else None
    if width is None and height is None:
        height = LOAD3D_DEFAULT_SIZE
        width = max(1, round(height * aspect)) if aspect else LOAD3D_DEFAULT_SIZE
    elif width is None:
        width = max(1, round(height * aspect)) if aspect else int(height)
    elif height is None:
        height = max(1, round(width / aspect)) if aspect else int(width)
    W, H = int(width), int(height)
    c2w, K, src_near, src_far, names = [], [], [], [], []
    for k, d in enumerate(infos):
        if not isinstance(d, dict) or "position" not in d:
            raise ValueError(f"LOAD3D_CAMERA {k}: expected a dict with 'position' (and 'target' or 'quaternion'), got {d!r:.200}")
        pos = _xyz(d["position"], "position")
        q = d.get("quaternion")
        if q:
            qq = [float(q.get("w", 1.0)), float(q.get("x", 0.0)), float(q.get("y", 0.0)), float(q.get("z", 0.0))] \
                if isinstance(q, dict) else [float(v) for v in q]
            if not isinstance(q, dict):  # a list: three.js Quaternion.toArray order is x, y, z, w
                qq = [qq[3], qq[0], qq[1], qq[2]]
            R_gl = quat_to_rotmat(torch.tensor(qq, dtype=torch.float64)).numpy()
        else:
            if "target" not in d:
                raise ValueError(f"LOAD3D_CAMERA {k}: needs 'target' or 'quaternion' to know where it looks")
            R_gl = _threejs_lookat_rotation(pos, _xyz(d["target"], "target"))
        ctype = str(d.get("cameraType", "perspective")).lower()
        if ctype.startswith("ortho"):
            _warn("LOAD3D_CAMERA: orthographic camera approximated by a perspective camera with the same fov")
        fov = float(d.get("fov") or LOAD3D_DEFAULT_FOV)
        if not 0 < fov < 180:
            raise ValueError(f"LOAD3D_CAMERA {k}: fov must be in (0, 180) degrees, got {fov}")
        zoom = float(d.get("zoom") or 1.0)
        size = H if fov_axis == "vertical" else min(W, H)
        f = size / 2 / math.tan(math.radians(fov) / 2) * zoom
        M = np.eye(4)
        M[:3, :3] = R_gl @ np.diag([1.0, -1.0, -1.0])
        M[:3, 3] = pos
        if flip_world:
            M[:3, :] = _WORLD_FLIP @ M[:3, :]
        c2w.append(M)
        K.append(_K(f, f, W / 2, H / 2))
        src_near.append(float(d["near"]) if d.get("near") else DEFAULT_NEAR)
        src_far.append(float(d["far"]) if d.get("far") else DEFAULT_FAR)
        names.append(str(d.get("name", f"load3d_{k}")))
    nr, fr = _bounds(len(c2w), near, far, src_near, src_far)
    return _make(np.stack(c2w), np.stack(K), W, H, nr, fr, names, dtype)


def to_load3d(
    cams: Cameras,
    *,
    flip_world: bool = True,
    fov_axis: str = "vertical",
    target_distance: float = 1.0,
    target=None,
    viewer_fov: float | None = None,
) -> list[dict]:
    """Cameras -> list of ComfyUI ``LOAD3D_CAMERA`` dicts (perspective, exact ``quaternion``).

    Output convention (three.js / OpenGL): right-handed world with +Y up, the camera looks down its local -Z with
    local +Y = image up; ``position``/``target`` in that world. With ``flip_world=True`` (default) our OpenCV world
    (+y down, +z forward) maps to it by ``(x, y, z) -> (x, -y, -z)``, which is how ComfyUI's Preview Splat shows a
    3DGS PLY (its splat mesh gets a 180 degree rotation about X) and how RenderSplat maps back; the camera
    rotation is ``R_gl = F @ R_cv @ diag(1, -1, -1)`` with ``F = diag(1, -1, -1)``.

    ``target`` (a world point, our coordinates) is written as every camera's OrbitControls target; default: the
    point ``target_distance`` along each viewing direction (a viewer's OrbitControls turn the camera to look at the
    target, so keep it on the optical axis to keep the view). ``fov``: the *vertical* field of view from ``fy``
    (``fov_axis="min"``: from the shorter side), ``zoom`` 1. ``viewer_fov`` (degrees): write this fov instead and put
    the camera's focal length into ``zoom = tan(viewer_fov / 2) / tan(fov / 2)`` (three.js zoom scales the focal
    length) — for viewers that keep their own fov and apply only position / target / zoom (ComfyUI's Preview Splat:
    35 degrees); :func:`from_load3d` reads either form back to the same K. Lossy: three.js has square pixels and a
    centred principal point, so ``fx != fy`` or an off-centre principal point produce a warning (the fov is taken
    from ``fy``). ``flip_world``/``fov_axis`` as in :func:`from_load3d`.
    """
    if viewer_fov is not None and not 0 < float(viewer_fov) < 180:
        raise ValueError(f"to_load3d: viewer_fov must be in (0, 180) degrees, got {viewer_fov}")
    c2w, K = _np(cams.c2w), _np(cams.K)
    W, H = cams.width, cams.height
    if (np.abs(K[:, 0, 0] - K[:, 1, 1]) > 1e-4 * K[:, 1, 1]).any():
        _warn("to_load3d: fx != fy cannot be represented by a three.js camera; using fy")
    if (np.abs(K[:, 0, 2] - W / 2) > 1e-2).any() or (np.abs(K[:, 1, 2] - H / 2) > 1e-2).any():
        _warn("to_load3d: off-centre principal point cannot be represented by a three.js camera; it is dropped")
    size = H if fov_axis == "vertical" else min(W, H)
    out = []
    for i in range(len(cams)):
        M = c2w[i].copy()
        if flip_world:
            M[:3, :] = _WORLD_FLIP @ M[:3, :]
        R_gl = M[:3, :3] @ np.diag([1.0, -1.0, -1.0])
        pos = M[:3, 3]
        if target is not None:
            tw = np.asarray(target, dtype=np.float64).reshape(3)
            tgt = _WORLD_FLIP @ tw if flip_world else tw
        else:
            tgt = pos - R_gl[:, 2] * float(target_distance)
        qw, qx, qy, qz = rotmat_to_quat(torch.as_tensor(R_gl)).tolist()
        fov = math.degrees(2 * math.atan(size / (2 * K[i, 1, 1])))
        zoom = 1.0
        if viewer_fov is not None:
            zoom = math.tan(math.radians(float(viewer_fov)) / 2) / math.tan(math.radians(fov) / 2)
            fov = float(viewer_fov)
        xyz = lambda v: {"x": float(v[0]), "y": float(v[1]), "z": float(v[2])}
        out.append({
            "position": xyz(pos), "target": xyz(tgt),
            "quaternion": {"x": qx, "y": qy, "z": qz, "w": qw},
            "zoom": zoom, "cameraType": "perspective", "fov": fov, "aspect": W / H,
            "near": float(cams.near[i]), "far": float(cams.far[i]),
        })
    return out


# ====================================================================== detection + entry points
def _detect_dict(data: Any) -> str:
    if isinstance(data, dict):
        if data.get("format") == "vscene-cameras":
            return "vscene"
        if "frames" in data:
            return "nerf"
        if "camera_info" in data or "position" in data:
            return "load3d"
        raise ValueError(
            f"cannot tell the camera format of a dict with keys {sorted(data)[:12]}: expected a vscene file "
            f"('format': 'vscene-cameras'), NeRF transforms ('frames') or a LOAD3D_CAMERA ('position', 'target')"
        )
    if isinstance(data, (list, tuple)) and data and all(isinstance(d, dict) for d in data):
        if all("position" in d or "camera_info" in d for d in data):
            return "load3d"
    raise ValueError(
        "cannot tell the camera format of this JSON value: expected a dict (vscene / NeRF transforms / "
        "LOAD3D_CAMERA) or a list of LOAD3D_CAMERA dicts"
    )


def _nerf_json_in(folder: Path) -> Path | None:
    if (folder / "transforms.json").is_file():
        return folder / "transforms.json"
    splits = sorted(folder.glob("transforms_*.json"))
    if not splits:
        return None
    for p in splits:
        if p.name == "transforms_train.json":
            if len(splits) > 1:
                _warn(f"{folder}: several transforms_*.json; using transforms_train.json (pass the file path to "
                      f"choose another)")
            return p
    if len(splits) == 1:
        return splits[0]
    raise ValueError(f"{folder}: several transforms files {[p.name for p in splits]}; pass the one you want")


def _text_file(p: Path) -> str:
    """A text camera file's content; bytes that are not UTF-8 are a ValueError naming the file."""
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{p}: not a text file (it is not UTF-8); the camera file is corrupt or not a camera file "
                         "- re-export it") from None


def _json_file(p: Path):
    """Parse a JSON camera file; a truncated / corrupt file is a ValueError naming the file and the place."""
    return _json_text(_text_file(p), str(p))


def _json_text(text: str, where: str = "camera JSON text"):
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where}: not valid JSON ({e.msg}: line {e.lineno}, column {e.colno}); the file is "
                         f"truncated or corrupt - re-export it or pass another camera file") from None


def _looks_like_re10k(text: str) -> bool:
    lines = [l.split() for l in text.splitlines() if l.strip()]
    rows = lines[1:] if lines and len(lines[0]) == 1 else lines
    # the last row may be cut short (a truncated file): detected here, reported by from_re10k with its line number
    return bool(rows) and len(rows[0]) == 19 and all(len(r) == 19 for r in rows[:3] if r is not rows[-1])


def detect_format(source) -> str:
    """Name of the camera format of ``source`` (one of :data:`FORMATS`), or ``ValueError`` saying what was expected.

    ``source``: a path (file or folder), an already-parsed JSON value (dict/list) or a JSON / RealEstate10K
    string."""
    if isinstance(source, (dict, list, tuple)):
        return _detect_dict(source)
    if isinstance(source, str):
        s = source.lstrip()
        if s.startswith("{") or s.startswith("["):
            return _detect_dict(_json_text(s))
        if "\n" in s and _looks_like_re10k(s):
            return "re10k"
    p = Path(source)
    if p.is_dir():
        if (p / "poses_bounds.npy").is_file():
            return "llff"
        if _nerf_json_in(p) is not None:
            return "nerf"
        if (p / "cameras.json").is_file():
            return _detect_dict(_json_file(p / "cameras.json"))
        try:
            _colmap_find(p)
            return "colmap"
        except ValueError:
            pass
        raise ValueError(
            f"no camera file found in folder {p}: looked for poses_bounds.npy (LLFF), transforms*.json (NeRF), "
            f"cameras.json (vscene) and a COLMAP model (cameras/images .txt/.bin, also in sparse/0)"
        )
    if p.is_file():
        suf = p.suffix.lower()
        if suf == ".npy":
            return "llff"
        if suf == ".json":
            return _detect_dict(_json_file(p))
        if p.name in ("cameras.txt", "images.txt", "points3D.txt", "cameras.bin", "images.bin", "points3D.bin"):
            return "colmap"
        if suf == ".txt":
            if _looks_like_re10k(_text_file(p)):
                return "re10k"
            raise ValueError(f"{p}: a .txt that is neither a COLMAP file nor a RealEstate10K camera file")
        raise ValueError(f"{p}: unknown camera file type {suf!r} (expected .json, .npy, .txt or a folder)")
    raise ValueError(f"camera source not found: {str(source)[:200]!r} is neither an existing path nor JSON text")


def load_cameras(
    source,
    *,
    width: int | None = None,
    height: int | None = None,
    select=None,
    near=None,
    far=None,
    dtype: torch.dtype = torch.float32,
) -> Cameras:
    """Load cameras from any supported format (auto-detected, see :func:`detect_format`).

    Args:
        source: a file or folder path, a parsed JSON value (dict/list), a JSON string, a RealEstate10K text, or a
            ``Cameras`` (returned after select/resize).
        width, height: output image size. For formats that store a size (NeRF w/h, LLFF, COLMAP, vscene) the
            intrinsics are rescaled per axis to it (give one to keep the aspect ratio); for RealEstate10K (required
            for real data, default 640x360) and LOAD3D_CAMERA (default 1024) it *is* the render size.
        select: camera name(s) or index(es) to keep, in that order; names match with or without folder and
            extension (``"r_0"`` matches ``"./train/r_0"``).
        near, far: override the depth bounds of all cameras.
        dtype: tensor dtype of the result (float32 default).
    Returns:
        validated :class:`Cameras` (OpenCV c2w, pixel K).
    """
    kw = dict(near=near, far=far, dtype=dtype)
    if isinstance(source, Cameras):
        cams = source.to(dtype=dtype)
        if width is not None or height is not None:
            cams = cams.resized(*_target_size(cams.width, cams.height, width, height))
        if near is not None or far is not None:
            nr, fr = _bounds(len(cams), near, far, _np(cams.near), _np(cams.far))
            cams = Cameras(cams.c2w, cams.K, cams.width, cams.height, torch.as_tensor(nr), torch.as_tensor(fr), cams.names)
        return _select(cams, select).validate()
    fmt = detect_format(source)
    data, base = None, None
    if isinstance(source, (dict, list, tuple)):
        data = source
    elif isinstance(source, str) and source.lstrip()[:1] in ("{", "["):
        data = _json_text(source)
    elif isinstance(source, str) and fmt == "re10k" and "\n" in source:
        data = source
    else:
        p = Path(source)
        if fmt in ("nerf", "vscene", "load3d"):
            if p.is_dir():
                p = _nerf_json_in(p) if fmt == "nerf" else p / "cameras.json"
            data, base = _json_file(p), p.parent
        elif fmt == "re10k":
            data = _text_file(p)
        elif fmt == "llff":
            cams = load_llff(p, width=width, height=height, **kw)
            return _select(cams, select).validate()
        elif fmt == "colmap":
            cams = from_colmap(p.parent if p.is_file() else p, width=width, height=height, **kw)
            return _select(cams, select).validate()
    if fmt == "nerf":
        cams = from_nerf(data, base_dir=base, width=width, height=height, **kw)
    elif fmt == "vscene":
        cams = from_vscene(data, dtype=dtype)
        if width is not None or height is not None:
            cams = cams.resized(*_target_size(cams.width, cams.height, width, height))
        if near is not None or far is not None:
            nr, fr = _bounds(len(cams), near, far, _np(cams.near), _np(cams.far))
            cams = _make(_np(cams.c2w), _np(cams.K), cams.width, cams.height, nr, fr, cams.names, dtype)
    elif fmt == "load3d":
        cams = from_load3d(data, width=width, height=height, **kw)
    elif fmt == "re10k":
        try:
            cams = from_re10k(data, width=width, height=height, **kw)
        except ValueError as e:
            if base is None and not (isinstance(source, str) and "\n" in source):  # read from a file: name it
                raise ValueError(f"{source}: {e}") from None
            raise
    else:  # pragma: no cover - detect_format only returns known names
        raise ValueError(f"unsupported format {fmt!r}")
    return _select(cams, select).validate()


def save_cameras(cams: Cameras, path: str | os.PathLike, fmt: str = "vscene", **kw) -> Path:
    """Write ``cams`` to ``path`` in format ``fmt`` atomically (temporary file in the same folder + ``os.replace``).

    ``fmt``: ``"vscene"`` (JSON, lossless), ``"nerf"`` (transforms JSON), ``"llff"`` (``poses_bounds.npy``),
    ``"colmap"`` (``path`` is a folder; ``binary=True`` for .bin), ``"re10k"`` (txt; ``url=``), ``"load3d"``
    (JSON list of LOAD3D_CAMERA dicts; ``flip_world=``, ``target=``...). Returns the written path.
    """
    path = Path(path)
    if fmt == "vscene":
        data = json.dumps(to_vscene(cams), indent=1).encode()
    elif fmt == "nerf":
        data = json.dumps(to_nerf(cams), indent=1).encode()
    elif fmt == "load3d":
        data = json.dumps(to_load3d(cams, **kw), indent=1).encode()
    elif fmt == "re10k":
        data = to_re10k(cams, **kw).encode()
    elif fmt == "llff":
        import io
        buf = io.BytesIO()
        np.save(buf, to_llff(cams))
        data = buf.getvalue()
    elif fmt == "colmap":
        return to_colmap(cams, path, **kw)
    else:
        raise ValueError(f"unknown camera format {fmt!r}; use one of {FORMATS}")
    if kw and fmt not in ("load3d", "re10k"):
        raise ValueError(f"save_cameras: format {fmt!r} takes no options, got {sorted(kw)}")
    atomic_write_bytes(path, data)
    return path
