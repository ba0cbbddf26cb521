"""Read and write Gaussian-splat PLY files (INRIA 3DGS layout).

Entry points: :func:`read_ply` and :func:`write_ply` (atomic). :func:`ply_bytes` returns the encoded file.

File layout written (exactly the INRIA 3DGS / ComfyUI ``SplatToFile3D`` layout)::

    ply
    format binary_little_endian 1.0
    element vertex N
    property float x, y, z, nx, ny, nz, f_dc_0..2, f_rest_0..(3*(K-1)-1), opacity, scale_0..2, rot_0..3
    end_header
    N records of little-endian float32

* ``f_rest`` is channel-major: all R coefficients 1..K-1, then all G, then all B.
* ``opacity`` is stored as a logit, ``scale_*`` as natural logs, ``rot_*`` as the wxyz quaternion as given
  (readers normalize), normals are written as zeros.
* float32 scenes (and float16/bfloat16, converted to float32 first) are encoded with float32 numpy arithmetic,
  exactly like ComfyUI's own writer (opacity clipped to [1e-6, 1-1e-6] before the logit, scales clipped to
  >= 1e-8 before the log), so the bytes are identical to what ComfyUI would write for the same scene.
* float64 scenes are encoded with float64 arithmetic and only then rounded to float32 (opacity clipped to
  [tiny, 1-2^-53], logit = log(p) - log1p(-p)). With ``read_ply(..., dtype=torch.float64)`` this makes
  ``write_ply(read_ply(f))`` reproduce ``f`` byte for byte for every file in exactly this layout (written by this
  module from a float32 scene, by ComfyUI, by INRIA 3DGS with normalized quaternions) whose normals are zero,
  whose quaternions have |‖q‖-1| <= 1e-6 and whose opacity logits lie in [-700, 22] (a logit above 22 or with
  0 < |logit| < 1e-7 may change in its last bit: a float64 sigmoid cannot carry it).

Reading is tolerant: any property order, extra properties ignored, any scalar PLY type, ``ascii``,
``binary_little_endian`` and ``binary_big_endian``, other elements before/after the vertex element, SH degree
0..4 inferred from the number of ``f_rest_*`` properties (0, 9, 24, 45, 72), missing normals. Plain point
clouds (``red/green/blue`` colours and no ``f_dc_*``) are accepted: colours become the SH DC term (integer
colours are divided by the type's maximum, float colours are taken as [0, 1]); missing ``scale_*`` /
``opacity`` / ``rot_*`` get ``default_scale`` (linear, isotropic), ``default_opacity`` and the identity rotation.
Activations (exp, sigmoid, quaternion normalization) are computed in float64 before casting to ``dtype``.
Quaternions are renormalized only where |‖q‖-1| > 1e-6, so unit quaternions survive bit-exactly. Log-scales
so small that exp underflows to 0 in ``dtype`` are clamped to the smallest normal number of ``dtype``.
Every malformed input raises ValueError saying what was wrong and what to do.
"""

from __future__ import annotations

import os
import re
import warnings
from typing import BinaryIO, Union

import numpy as np
import torch

from ..core.gaussians import GaussianScene
from ..core.atomic import atomic_write_bytes
from ..core.sh import rgb_to_sh_dc

__all__ = ["read_ply", "write_ply", "ply_bytes", "PLY_TYPES", "F_REST_COUNT_TO_DEGREE"]

PathOrBytes = Union[str, os.PathLike, bytes, bytearray, memoryview, BinaryIO]

#: PLY scalar type names -> numpy type codes (without byte order)
PLY_TYPES = {
    "char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1",
    "short": "i2", "int16": "i2", "ushort": "u2", "uint16": "u2",
    "int": "i4", "int32": "i4", "uint": "u4", "uint32": "u4",
    "float": "f4", "float32": "f4", "double": "f8", "float64": "f8",
}

#: number of f_rest_* properties -> SH degree
F_REST_COUNT_TO_DEGREE = {0: 0, 9: 1, 24: 2, 45: 3, 72: 4}

_FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}
_QUAT_RENORM_TOL = 1e-6
_END_HEADER = re.compile(rb"(^|[\r\n])end_header[ \t]*(\r\n|\n|\r|$)")




# ============================================================================================== writing

def _attr_names(k: int) -> list[str]:
    return (["x", "y", "z", "nx", "ny", "nz"] + [f"f_dc_{i}" for i in range(3)]
            + [f"f_rest_{i}" for i in range(3 * (k - 1))]
            + ["opacity"] + [f"scale_{i}" for i in range(3)] + [f"rot_{i}" for i in range(4)])


def ply_bytes(scene: GaussianScene) -> bytes:
    """Encode ``scene`` as a binary little-endian INRIA-3DGS PLY (see module docstring for the exact layout
    and float32/float64 arithmetic). Raises ValueError for an empty or invalid scene."""
    if not isinstance(scene, GaussianScene):
        raise ValueError(f"write_ply expects a GaussianScene, got {type(scene).__name__}")
    scene.validate(strict=False)
    n = len(scene)
    if n == 0:
        raise ValueError("cannot write an empty GaussianScene (0 Gaussians) to PLY: a splat file needs at least "
                         "one Gaussian; check the upstream pruning/filtering")
    k = scene.sh.shape[1]
    if scene.dtype == torch.float64:
        g = {f: getattr(scene, f).detach().cpu().numpy() for f in ("means", "scales", "quats", "opacities", "sh")}
        p = np.clip(g["opacities"].reshape(n, 1), np.finfo(np.float64).tiny, 1.0 - 2.0 ** -53)
        with np.errstate(divide="ignore"):
            op = (np.log(p) - np.log1p(-p)).astype(np.float32)
        scale = np.log(np.clip(g["scales"], np.finfo(np.float64).tiny, None)).astype(np.float32)
        xyz = g["means"].astype(np.float32)
        f = g["sh"].astype(np.float32)
        rot = g["quats"].astype(np.float32)
    else:
        # float32 arithmetic, identical to ComfyUI's SplatToFile3D PLY writer
        g = {f: getattr(scene, f).detach().to(torch.float32).cpu().numpy()
             for f in ("means", "scales", "quats", "opacities", "sh")}
        op = g["opacities"].reshape(n, 1).clip(1e-6, 1 - 1e-6)
        op = np.log(op / (1.0 - op))
        scale = np.log(g["scales"].clip(min=1e-8))
        xyz, f, rot = g["means"], g["sh"], g["quats"]
    f_dc = f[:, 0, :]
    f_rest = f[:, 1:, :].transpose(0, 2, 1).reshape(n, 3 * (k - 1))  # channel-major
    normals = np.zeros((n, 3), np.float32)
    body = np.concatenate([xyz, normals, f_dc, f_rest, op, scale, rot], axis=1).astype("<f4", copy=False)
    header = ("ply\nformat binary_little_endian 1.0\n" + f"element vertex {n}\n"
              + "".join(f"property float {a}\n" for a in _attr_names(k)) + "end_header\n")
    return header.encode("ascii") + np.ascontiguousarray(body).tobytes()


def write_ply(scene: GaussianScene, path: Union[str, os.PathLike]) -> str:
    """Write ``scene`` to ``path`` as an INRIA-3DGS binary PLY, atomically; return the path as str.

    The file is encoded fully in memory first (invalid/empty scenes raise ValueError before anything touches the
    disk), written to a temporary file in the destination folder, fsynced and moved into place with
    ``os.replace``: ``path`` either keeps its old content or gets the complete new file, never a partial one,
    and no temporary file is left behind on error. Missing parent folders are created.
    """
    data = ply_bytes(scene)
    path = os.fspath(path)
    if os.path.isdir(path):
        raise ValueError(f"write_ply: {path!r} is a directory; pass a file path such as {path!r}/scene.ply")
    atomic_write_bytes(path, data)
    return path


# ============================================================================================== reading

class _Element:
    __slots__ = ("name", "count", "props")

    def __init__(self, name: str, count: int):
        self.name, self.count, self.props = name, count, []  # props: (name, type code | None for list)

    def has_list(self) -> bool:
        return any(t is None for _, t in self.props)


def _parse_header(data: bytes):
    if not data.startswith(b"ply"):
        raise ValueError("not a PLY file (it does not start with the 'ply' magic line); expected a Gaussian splat "
                         ".ply such as the point_cloud.ply written by 3D Gaussian Splatting")
    m = _END_HEADER.search(data)
    if m is None:
        raise ValueError("PLY header is incomplete (no 'end_header' line); the file is truncated or not a PLY")
    try:
        text = data[: m.end(1)].decode("ascii")
    except UnicodeDecodeError:
        raise ValueError("PLY header contains non-ASCII bytes; the file is corrupt or not a PLY") from None
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines[0].strip() != "ply":
        raise ValueError("not a PLY file (first line is not exactly 'ply')")
    fmt = None
    elements: list[_Element] = []
    for ln, line in enumerate(lines[1:], start=2):
        p = line.split()
        if not p or p[0] in ("comment", "obj_info"):
            continue
        if p[0] == "format":
            if len(p) < 2 or p[1] not in _FORMATS:
                raise ValueError(f"unsupported PLY format line {line.strip()!r} (header line {ln}); supported: "
                                 f"ascii, binary_little_endian, binary_big_endian")
            fmt = p[1]
        elif p[0] == "element":
            try:
                count = int(p[2])
                if count < 0:
                    raise ValueError
            except (IndexError, ValueError):
                raise ValueError(f"malformed PLY element line {line.strip()!r} (header line {ln}); expected "
                                 f"'element <name> <count>'") from None
            elements.append(_Element(p[1], count))
        elif p[0] == "property":
            if not elements:
                raise ValueError(f"PLY property before any element (header line {ln}: {line.strip()!r})")
            el = elements[-1]
            if len(p) >= 2 and p[1] == "list":
                if len(p) != 5:
                    raise ValueError(f"malformed PLY list property {line.strip()!r} (header line {ln})")
                for t in (p[2], p[3]):
                    if t not in PLY_TYPES:
                        raise ValueError(f"PLY list property {p[4]!r} of element {el.name!r} has unknown type "
                                         f"{t!r}; supported types: {', '.join(sorted(PLY_TYPES))}")
                el.props.append((p[4], None))
            else:
                if len(p) != 3:
                    raise ValueError(f"malformed PLY property line {line.strip()!r} (header line {ln}); expected "
                                     f"'property <type> <name>'")
                if p[1] not in PLY_TYPES:
                    raise ValueError(f"PLY property {p[2]!r} of element {el.name!r} has unknown type {p[1]!r}; "
                                     f"supported types: {', '.join(sorted(PLY_TYPES))}")
                if any(q == p[2] for q, _ in el.props):
                    raise ValueError(f"PLY element {el.name!r} declares property {p[2]!r} twice")
                el.props.append((p[2], PLY_TYPES[p[1]]))
        # other keywords are ignored
    if fmt is None:
        raise ValueError("PLY header has no 'format' line; the file is corrupt")
    return fmt, elements, m.end()


def _vertex_columns(data: bytes, fmt: str, elements: list[_Element], body: int) -> tuple[int, dict]:
    """Return (N, {property name: numpy array of its declared type}) for the vertex element."""
    names = [e.name for e in elements]
    if "vertex" not in names:
        raise ValueError(f"PLY has no 'vertex' element (elements: {', '.join(names) or 'none'}); a Gaussian "
                         f"splat/point cloud PLY stores one vertex per point")
    vi = names.index("vertex")
    vert = elements[vi]
    lists = [n for n, t in vert.props if t is None]
    if lists:
        raise ValueError(f"PLY vertex element has list properties ({', '.join(lists)}); Gaussian splat PLYs use "
                         f"only scalar vertex properties")
    n = vert.count
    if fmt == "ascii":
        text = data[body:].decode("ascii", errors="replace")
        lines = [ln for ln in text.splitlines() if ln.strip()]
        skip = sum(e.count for e in elements[:vi])
        rows = lines[skip: skip + n]
        if len(rows) < n:
            raise ValueError(f"PLY body is truncated: the header declares {n} vertices but only {len(rows)} vertex "
                             f"lines follow; the file is incomplete")
        nprop = len(vert.props)
        try:
            vals = np.array(" ".join(rows).split(), dtype=np.float64)
        except ValueError:
            raise ValueError("PLY ascii vertex data contains a token that is not a number") from None
        if vals.size != n * nprop:
            raise ValueError(f"PLY ascii vertex data has {vals.size} numbers but {n} vertices x {nprop} properties "
                             f"= {n * nprop} were declared; every vertex line needs one value per property")
        vals = vals.reshape(n, nprop)
        with np.errstate(invalid="ignore", over="ignore"):
            cols = {name: vals[:, i].astype(t) for i, (name, t) in enumerate(vert.props)}
        return n, cols
    order = _FORMATS[fmt]
    offset = body
    for e in elements[:vi]:
        if e.has_list():
            raise ValueError(f"PLY element {e.name!r} with list properties precedes the vertex element in a binary "
                             f"file; this layout is not supported (put the vertex element first)")
        offset += e.count * int(np.dtype([(q, order + t) for q, t in e.props]).itemsize) if e.props else 0
    dt = np.dtype([(q, order + t) for q, t in vert.props])
    need = n * dt.itemsize
    have = max(len(data) - offset, 0)
    if have < need:
        raise ValueError(f"PLY body is truncated: the header declares {n} vertices x {dt.itemsize} bytes = {need} "
                         f"bytes but only {have} bytes follow; the file is incomplete (interrupted download or "
                         f"copy?)")
    arr = np.frombuffer(data, dtype=dt, count=n, offset=offset)
    return n, {q: arr[q] for q, _ in vert.props}


def _names_preview(cols, limit: int = 12) -> str:
    names = list(cols)
    if not names:
        return "none"
    more = f", ... ({len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def _group(cols: dict, names: list[str], what: str) -> list[str] | None:
    present = [c for c in names if c in cols]
    if not present:
        return None
    if len(present) != len(names):
        missing = [c for c in names if c not in cols]
        raise ValueError(f"PLY has {', '.join(present)} but not {', '.join(missing)}; {what} needs all of "
                         f"{', '.join(names)}")
    return names


def _sigmoid(x: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def _load(data: bytes, dtype: torch.dtype, device, on_invalid: str, default_scale: float,
          default_opacity: float) -> GaussianScene:
    fmt, elements, body = _parse_header(data)
    n, cols = _vertex_columns(data, fmt, elements, body)
    f64 = lambda k: np.asarray(cols[k], dtype=np.float64)

    xyz_names = ["x", "y", "z"]
    missing = [k for k in xyz_names if k not in cols]
    if missing:
        raise ValueError(f"PLY vertex element is missing the position propert{'y' if len(missing) == 1 else 'ies'} "
                         f"{', '.join(repr(k) for k in missing)} (found: {_names_preview(cols)}); a point "
                         f"cloud or Gaussian splat PLY needs x, y and z")
    dc_names = _group(cols, ["f_dc_0", "f_dc_1", "f_dc_2"], "the SH DC colour")
    rest = [k for k in cols if k.startswith("f_rest_")]
    if len(rest) not in F_REST_COUNT_TO_DEGREE:
        raise ValueError(f"PLY has {len(rest)} f_rest_* properties; expected 0, 9, 24, 45 or 72 (SH degree 0..4, "
                         f"3*((d+1)^2-1) values); the file is not a standard 3DGS PLY")
    rest_names = [f"f_rest_{i}" for i in range(len(rest))]
    if sorted(rest) != sorted(rest_names):
        raise ValueError(f"PLY f_rest_* properties must be numbered f_rest_0..f_rest_{len(rest) - 1}, got "
                         f"{', '.join(sorted(rest, key=lambda s: (len(s), s)))}")
    if rest and dc_names is None:
        raise ValueError("PLY has f_rest_* properties but no f_dc_0/1/2; the SH DC term is required")
    scale_names = _group(cols, ["scale_0", "scale_1", "scale_2"], "the scale")
    rot_names = _group(cols, ["rot_0", "rot_1", "rot_2", "rot_3"], "the rotation")
    op_names = ["opacity"] if "opacity" in cols else None
    colour_names = None
    if dc_names is None:
        for cand in (["red", "green", "blue"], ["diffuse_red", "diffuse_green", "diffuse_blue"]):
            colour_names = _group(cols, cand, "the colour")
            if colour_names is not None:
                break

    used = xyz_names + (dc_names or []) + rest_names + (scale_names or []) + (rot_names or []) \
        + (op_names or []) + (colour_names or [])
    invalid = np.zeros(n, dtype=bool)
    problems = []
    for k in used:
        col = cols[k]
        if col.dtype.kind == "f":
            bad = ~np.isfinite(col)
            if bad.any():
                problems.append(f"{k}: {int(bad.sum())} NaN/inf")
                invalid |= bad

    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        xyz = np.stack([f64(k) for k in xyz_names], 1)
        if dc_names is not None:
            dc = np.stack([f64(k) for k in dc_names], 1)
            kk = len(rest_names) // 3 + 1
            if rest_names:
                r = np.stack([f64(k) for k in rest_names], 1).reshape(n, 3, kk - 1).transpose(0, 2, 1)
                sh = np.concatenate([dc[:, None, :], r], 1)
            else:
                sh = dc[:, None, :]
        elif colour_names is not None:
            rgb = np.stack([f64(k) for k in colour_names], 1)
            kind = cols[colour_names[0]].dtype
            if kind.kind in "ui":
                rgb = rgb / float(np.iinfo(kind).max)
            sh = rgb_to_sh_dc(rgb)[:, None, :]
        else:
            sh = np.zeros((n, 1, 3))
        if scale_names is not None:
            scales = np.exp(np.stack([f64(k) for k in scale_names], 1))
        else:
            scales = np.full((n, 3), float(default_scale))
        if op_names is not None:
            opac = _sigmoid(f64("opacity"))
        else:
            opac = np.full(n, float(default_opacity))
        if rot_names is not None:
            quats = np.stack([f64(k) for k in rot_names], 1)
            qn = np.sqrt((quats * quats).sum(1))
            zero = qn == 0
            if zero.any():
                problems.append(f"rot_0..3: {int(zero.sum())} zero quaternion(s)")
                invalid |= zero
            fix = np.abs(qn - 1.0) > _QUAT_RENORM_TOL
            quats = np.where(fix[:, None], quats / np.where(qn > 0, qn, 1.0)[:, None], quats)
        else:
            quats = np.zeros((n, 4))
            quats[:, 0] = 1.0

    np_dt = np.dtype(np.float64) if dtype == torch.float64 else np.dtype(np.float32)
    with np.errstate(over="ignore", invalid="ignore"):
        scales_t = scales.astype(np_dt)
    if scale_names is not None:
        over = ~np.isfinite(scales_t).all(1) & ~invalid  # finite log-scale whose exp overflows
        if over.any():
            problems.append(f"scale_0..2: {int(over.sum())} log-scale(s) too large (exp overflows {np_dt})")
            invalid |= over
        scales_t = np.where(scales_t > 0, scales_t, np.finfo(np_dt).tiny)

    if invalid.any():
        if on_invalid == "error":
            raise ValueError(f"PLY contains invalid values in {int(invalid.sum())} of {n} vertices ("
                             f"{'; '.join(problems)}); fix the file or read it with on_invalid='drop' to discard "
                             f"those Gaussians")
        warnings.warn(f"read_ply: dropped {int(invalid.sum())} of {n} Gaussians with invalid values "
                      f"({'; '.join(problems)})", stacklevel=3)
        keep = ~invalid
        xyz, sh, scales_t, opac, quats = xyz[keep], sh[keep], scales_t[keep], opac[keep], quats[keep]

    t = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype)
    return GaussianScene(t(xyz), t(scales_t), t(quats), t(opac), t(sh)).validate(strict=False)


def read_ply(source: PathOrBytes, dtype: torch.dtype = torch.float32, device=None, *,
             on_invalid: str = "error", default_scale: float = 0.01,
             default_opacity: float = 1.0) -> GaussianScene:
    """Read a Gaussian-splat (or plain point-cloud) PLY into a :class:`GaussianScene` with activated values.

    ``source``: a path, the file's bytes, or a binary file object. ``dtype`` must be floating (float64 for
    bit-exact round trips, see module docstring). ``on_invalid``: ``"error"`` (default) raises ValueError naming
    each offending property and its count for NaN/inf values, zero quaternions and log-scales whose exp
    overflows; ``"drop"`` discards those Gaussians with a warning. ``default_scale`` / ``default_opacity`` fill
    in for files without ``scale_*`` / ``opacity`` (plain point clouds). Malformed files raise ValueError.
    """
    if on_invalid not in ("error", "drop"):
        raise ValueError(f"on_invalid must be 'error' or 'drop', got {on_invalid!r}")
    if not dtype.is_floating_point:
        raise ValueError(f"dtype must be a floating point torch dtype, got {dtype}")
    label = None
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        label = os.fspath(source)
        with open(label, "rb") as fh:
            data = fh.read()
    elif hasattr(source, "read"):
        data = source.read()
        if not isinstance(data, (bytes, bytearray)):
            raise ValueError("read_ply: file object must be opened in binary mode")
        data = bytes(data)
    else:
        raise ValueError(f"read_ply expects a path, bytes or a binary file object, got {type(source).__name__}")
    try:
        return _load(data, dtype, device, on_invalid, default_scale, default_opacity)
    except ValueError as e:
        if label is None:
            raise
        raise ValueError(f"{label}: {e}") from None
