import io
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from vscene_engine.io import ply as P
from vscene_engine.core.gaussians import GaussianScene
from vscene_engine.io.ply import ply_bytes, read_ply, write_ply
from vscene_engine.core.sh import C0

# ------------------------------------------------------------------------------------------------ helpers


def _scene(n, d, seed=0, dtype=torch.float32):
    return GaussianScene.random(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def reference_ply_bytes(scene: GaussianScene) -> bytes:
    """Independent writer built from the INRIA 3DGS spec with a numpy structured array, field by field.

    float32 scenes: float32 arithmetic with opacity clipped to [1e-6, 1-1e-6] and scales to >= 1e-8 (the
    semantics of ComfyUI's SplatToFile3D writer); float64 scenes: float64 arithmetic, rounded at the end.
    """
    n, k = len(scene), scene.sh.shape[1]
    names = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
             + ["f_rest_%d" % i for i in range(3 * (k - 1))]
             + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    rec = np.zeros(n, dtype=np.dtype([(name, "<f4") for name in names]))
    wide = scene.dtype == torch.float64
    ft = np.float64 if wide else np.float32
    means = scene.means.numpy().astype(ft)
    sh = scene.sh.numpy().astype(ft)
    op = scene.opacities.numpy().astype(ft)
    sc = scene.scales.numpy().astype(ft)
    q = scene.quats.numpy().astype(ft)
    for i, a in enumerate("xyz"):
        rec[a] = means[:, i]
    for c in range(3):
        rec["f_dc_%d" % c] = sh[:, 0, c]
        for j in range(1, k):
            rec["f_rest_%d" % (c * (k - 1) + j - 1)] = sh[:, j, c]
    if wide:
        p = np.minimum(np.maximum(op, np.finfo(np.float64).tiny), 1.0 - 2.0 ** -53)
        rec["opacity"] = np.log(p) - np.log1p(-p)
        logs = np.log(np.maximum(sc, np.finfo(np.float64).tiny))
    else:
        p = np.minimum(np.maximum(op, np.float32(1e-6)), np.float32(1 - 1e-6))
        rec["opacity"] = np.log(p / (np.float32(1.0) - p))
        logs = np.log(np.maximum(sc, np.float32(1e-8)))
    for i in range(3):
        rec["scale_%d" % i] = logs[:, i]
    for i in range(4):
        rec["rot_%d" % i] = q[:, i]
    header = "ply\nformat binary_little_endian 1.0\nelement vertex %d\n" % n
    header += "".join("property float %s\n" % name for name in names) + "end_header\n"
    return header.encode("ascii") + rec.tobytes()


_NP = {"float": "f4", "double": "f8", "uchar": "u1", "int": "i4", "short": "i2", "ushort": "u2", "char": "i1"}


def build_ply(props, cols, fmt="binary_little_endian", pre=(), post=b"", extra_header="", newline="\n",
              comment=True):
    """Generic PLY builder for other-tool files.

    props: [(name, ply type)], cols: {name: array}; pre: [(element name, [(prop, type)], {prop: array})] placed
    before the vertex element; post: raw bytes appended after the vertex data (declared via extra_header).
    """
    n = len(next(iter(cols.values())))
    lines = ["ply", f"format {fmt} 1.0"] + (["comment built by test_ply"] if comment else [])
    for name, pp, cc in pre:
        lines.append(f"element {name} {len(next(iter(cc.values())))}")
        lines += [f"property {t} {p}" for p, t in pp]
    lines.append(f"element vertex {n}")
    lines += [f"property {t} {p}" for p, t in props]
    if extra_header:
        lines.append(extra_header)
    lines.append("end_header")
    head = newline.join(lines).encode("ascii") + newline.encode("ascii")

    def pack(pp, cc, m):
        if fmt == "ascii":
            out = []
            for r in range(m):
                vals = []
                for p, t in pp:
                    v = cc[p][r]
                    vals.append(repr(float(np.float64(v))) if t in ("float", "double") else str(int(v)))
                out.append(" ".join(vals))
            return ("\n".join(out) + ("\n" if m else "")).encode("ascii")
        order = "<" if fmt == "binary_little_endian" else ">"
        rec = np.zeros(m, dtype=np.dtype([(p, order + _NP[t]) for p, t in pp]))
        for p, _t in pp:
            rec[p] = cc[p]
        return rec.tobytes()

    body = b""
    for name, pp, cc in pre:
        body += pack(pp, cc, len(next(iter(cc.values()))))
    body += pack(props, cols, n)
    return head + body + post


def _inria_cols(n, d, seed=0, rot_norm=1.0):
    rng = np.random.default_rng(seed)
    k = (d + 1) ** 2
    cols = {a: rng.normal(size=n).astype(np.float32) for a in "xyz"}
    for a in ("nx", "ny", "nz"):
        cols[a] = np.zeros(n, np.float32)
    for i in range(3):
        cols[f"f_dc_{i}"] = rng.normal(size=n).astype(np.float32)
    for i in range(3 * (k - 1)):
        cols[f"f_rest_{i}"] = (0.1 * rng.normal(size=n)).astype(np.float32)
    cols["opacity"] = rng.normal(scale=3, size=n).astype(np.float32)
    for i in range(3):
        cols[f"scale_{i}"] = rng.uniform(-6, -1, size=n).astype(np.float32)
    q = rng.normal(size=(n, 4))
    q = q / np.linalg.norm(q, axis=1, keepdims=True) * rot_norm
    for i in range(4):
        cols[f"rot_{i}"] = q[:, i].astype(np.float32)
    return cols


def _expected(cols, d):
    """Activated float64 values from raw INRIA columns (reference decoding)."""
    n = len(cols["x"])
    k = (d + 1) ** 2
    g = lambda a: np.asarray(cols[a], np.float64)
    sh = np.zeros((n, k, 3))
    for c in range(3):
        sh[:, 0, c] = g(f"f_dc_{c}")
        for j in range(1, k):
            sh[:, j, c] = g(f"f_rest_{c * (k - 1) + j - 1}")
    q = np.stack([g(f"rot_{i}") for i in range(4)], 1)
    return dict(
        means=np.stack([g(a) for a in "xyz"], 1),
        sh=sh,
        opacities=1 / (1 + np.exp(-g("opacity"))),
        scales=np.exp(np.stack([g(f"scale_{i}") for i in range(3)], 1)),
        quats=q / np.linalg.norm(q, axis=1, keepdims=True),
    )


def _check(scene, exp, rtol=1e-6, atol=1e-6):
    for f, v in exp.items():
        np.testing.assert_allclose(getattr(scene, f).numpy(), v, rtol=rtol, atol=atol, err_msg=f)


def _inria_props(d):
    k = (d + 1) ** 2
    names = (["x", "y", "z", "nx", "ny", "nz"] + [f"f_dc_{i}" for i in range(3)]
             + [f"f_rest_{i}" for i in range(3 * (k - 1))] + ["opacity"] + [f"scale_{i}" for i in range(3)]
             + [f"rot_{i}" for i in range(4)])
    return [(a, "float") for a in names]


# ------------------------------------------------------------------------------------------------ writing


@pytest.mark.parametrize("degree", [0, 1, 2, 3, 4])
def test_round_trip_bytes(degree, tmp_path):
    s = _scene(300, degree, seed=degree)
    data = ply_bytes(s)
    path = write_ply(s, tmp_path / f"d{degree}.ply")
    assert Path(path).read_bytes() == data
    assert data.startswith(b"ply\nformat binary_little_endian 1.0\nelement vertex 300\nproperty float x\n")
    r64 = read_ply(path, dtype=torch.float64)
    assert r64.sh_degree == degree and r64.dtype == torch.float64
    assert ply_bytes(r64) == data
    write_ply(r64, tmp_path / "again.ply")
    assert (tmp_path / "again.ply").read_bytes() == data
    assert sorted(os.listdir(tmp_path)) == sorted([f"d{degree}.ply", "again.ply"])
    # float32 default: values within 1e-6
    r32 = read_ply(data)
    assert r32.dtype == torch.float32
    r32.validate()
    for f in ("means", "sh", "quats"):
        torch.testing.assert_close(getattr(r32, f), getattr(s, f), rtol=0, atol=0)
    torch.testing.assert_close(r32.scales, s.scales, rtol=1e-6, atol=0)
    torch.testing.assert_close(r32.opacities, s.opacities, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("degree", [0, 1, 2, 3, 4])
def test_reference_writer_agrees(degree):
    s = _scene(257, degree, seed=10 + degree)
    # extremes that exercise the clipping rules
    s.opacities[:4] = torch.tensor([0.0, 1.0, 1e-9, 0.5])
    s.scales[0, 0] = 1e-12
    assert ply_bytes(s) == reference_ply_bytes(s)
    s64 = _scene(257, degree, seed=20 + degree, dtype=torch.float64)
    s64.opacities[:3] = torch.tensor([0.0, 1.0, 1e-12], dtype=torch.float64)
    assert ply_bytes(s64) == reference_ply_bytes(s64)


def test_inria_file_round_trips_exactly():
    cols = _inria_cols(200, 3, seed=1)
    data = build_ply(_inria_props(3), cols, comment=False)
    r = read_ply(data, dtype=torch.float64)
    assert ply_bytes(r) == data
    _check(read_ply(data), _expected(cols, 3))


def test_write_errors_leave_no_file(tmp_path):
    target = tmp_path / "out.ply"
    with pytest.raises(ValueError, match="empty"):
        write_ply(GaussianScene.empty(3), target)
    bad = _scene(5, 1)
    bad.means[2, 1] = float("nan")
    with pytest.raises(ValueError, match="means"):
        write_ply(bad, target)
    bad = _scene(5, 1)
    bad.opacities[0] = 2.0
    with pytest.raises(ValueError, match="opacities"):
        write_ply(bad, tmp_path / "sub" / "out.ply")
    with pytest.raises(ValueError):
        write_ply("not a scene", target)
    assert os.listdir(tmp_path) == []
    # an existing file survives a failed write untouched
    write_ply(_scene(3, 0), target)
    before = target.read_bytes()
    with pytest.raises(ValueError):
        write_ply(GaussianScene.empty(), target)
    assert target.read_bytes() == before and os.listdir(tmp_path) == ["out.ply"]


def test_atomic_write_cleans_temp_on_io_error(tmp_path, monkeypatch):
    target = tmp_path / "scene.ply"
    write_ply(_scene(3, 0, seed=1), target)
    before = target.read_bytes()

    def boom(*a, **k):
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(P.os, "fsync", boom)
    with pytest.raises(OSError, match="simulated"):
        write_ply(_scene(50, 2, seed=2), target)
    assert os.listdir(tmp_path) == ["scene.ply"]
    assert target.read_bytes() == before
    monkeypatch.undo()
    monkeypatch.setattr(P.os, "replace", boom)
    with pytest.raises(OSError):
        write_ply(_scene(50, 2, seed=2), tmp_path / "new.ply")
    assert os.listdir(tmp_path) == ["scene.ply"]


def test_write_creates_parent_and_float64_scene(tmp_path):
    s = _scene(10, 2, dtype=torch.float64)
    p = write_ply(s, tmp_path / "a" / "b" / "s.ply")
    r = read_ply(p, dtype=torch.float64)
    for f in ("means", "sh", "scales", "opacities", "quats"):
        torch.testing.assert_close(getattr(r, f), getattr(s, f), rtol=2e-7, atol=1e-7)
    # unnormalized quaternions are written as given (readers normalize)
    s2 = _scene(4, 0)
    s2.quats = s2.quats * 2
    r2 = read_ply(ply_bytes(s2))
    torch.testing.assert_close(r2.quats.norm(dim=-1), torch.ones(4))


# ------------------------------------------------------------------------------------------------ other tools


def test_degree0_only_fdc_no_normals():
    cols = _inria_cols(50, 0, seed=2)
    props = [(a, "float") for a in ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1",
                                     "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]]
    s = read_ply(build_ply(props, cols))
    assert s.sh_degree == 0 and len(s) == 50
    _check(s, _expected(cols, 0))


def test_degree3_shuffled_with_extra_properties():
    cols = _inria_cols(80, 3, seed=3)
    rng = np.random.default_rng(0)
    cols["filter_3D"] = rng.normal(size=80).astype(np.float32)
    cols["semantic_id"] = rng.integers(0, 100, size=80).astype(np.int32)
    cols["nx"] = np.full(80, np.nan, np.float32)  # unused properties may hold anything
    props = _inria_props(3) + [("filter_3D", "float"), ("semantic_id", "int")]
    order = rng.permutation(len(props))
    s = read_ply(build_ply([props[i] for i in order], cols))
    assert s.sh_degree == 3
    _check(s, _expected(cols, 3))


def test_double_precision_properties():
    cols = {k: v.astype(np.float64) for k, v in _inria_cols(40, 1, seed=4).items()}
    q = np.stack([cols[f"rot_{i}"] for i in range(4)], 1)
    q /= np.linalg.norm(q, axis=1, keepdims=True)  # unit in float64, so no renormalization on read
    cols.update({f"rot_{i}": q[:, i] for i in range(4)})
    props = [(a, "double") for a, _ in _inria_props(1)]
    s = read_ply(build_ply(props, cols), dtype=torch.float64)
    _check(s, _expected(cols, 1), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_ascii(newline):
    cols = _inria_cols(25, 2, seed=5)
    props = _inria_props(2)
    s = read_ply(build_ply(props, cols, fmt="ascii", newline=newline))
    _check(s, _expected(cols, 2))
    # ascii values are rounded to the declared float type: same scene as the binary file
    b = read_ply(build_ply(props, cols), dtype=torch.float64)
    a = read_ply(build_ply(props, cols, fmt="ascii", newline=newline), dtype=torch.float64)
    assert ply_bytes(a) == ply_bytes(b)


def test_big_endian():
    cols = _inria_cols(30, 4, seed=6)
    le = read_ply(build_ply(_inria_props(4), cols), dtype=torch.float64)
    be = read_ply(build_ply(_inria_props(4), cols, fmt="binary_big_endian"), dtype=torch.float64)
    assert be.sh_degree == 4
    for f in ("means", "scales", "quats", "opacities", "sh"):
        assert torch.equal(getattr(le, f), getattr(be, f)), f


def test_colour_only_point_cloud_with_faces_and_leading_element():
    rng = np.random.default_rng(7)
    n = 20
    cols = {a: rng.normal(size=n).astype(np.float32) for a in "xyz"}
    for a in ("red", "green", "blue"):
        cols[a] = rng.integers(0, 256, size=n).astype(np.uint8)
    props = [("x", "float"), ("y", "float"), ("z", "float"), ("red", "uchar"), ("green", "uchar"),
             ("blue", "uchar")]
    pre = [("camera", [("view_px", "float"), ("view_py", "float")],
            {"view_px": np.array([1.0, 2.0]), "view_py": np.array([3.0, 4.0])})]
    face = b"\x03" + np.array([0, 1, 2], "<i4").tobytes()
    data = build_ply(props, cols, pre=pre, post=face,
                     extra_header="element face 1\nproperty list uchar int vertex_indices")
    s = read_ply(data).validate()
    assert s.sh_degree == 0 and len(s) == n
    rgb = np.stack([cols[a] for a in ("red", "green", "blue")], 1) / 255.0
    np.testing.assert_allclose(s.sh[:, 0].numpy(), (rgb - 0.5) / C0, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(s.base_rgb().numpy(), rgb, atol=1e-6)
    assert torch.all(s.scales == 0.01) and torch.all(s.opacities == 1.0)
    assert torch.equal(s.quats, torch.tensor([[1.0, 0, 0, 0]]).expand(n, 4))
    s2 = read_ply(data, default_scale=0.2, default_opacity=0.5)
    assert torch.all(s2.scales == 0.2) and torch.all(s2.opacities == 0.5)
    # ascii colour cloud, no colours at all -> grey
    s3 = read_ply(build_ply(props[:3], {a: cols[a] for a in "xyz"}, fmt="ascii"))
    np.testing.assert_allclose(s3.base_rgb().numpy(), 0.5)


def test_quaternion_renormalization_rule():
    cols = _inria_cols(10, 0, seed=8)
    q = np.stack([cols[f"rot_{i}"] for i in range(4)], 1).astype(np.float64)
    q[0] *= 2.0            # far from unit: renormalized
    q[1] *= 1 + 5e-7       # within 1e-6: kept bit-exactly
    for i in range(4):
        cols[f"rot_{i}"] = q[:, i].astype(np.float32)
    s = read_ply(build_ply(_inria_props(0), cols), dtype=torch.float64)
    assert abs(s.quats[0].norm().item() - 1) < 1e-12
    np.testing.assert_array_equal(s.quats[1].numpy(), q[1].astype(np.float32).astype(np.float64))


def test_sources_path_bytes_fileobj(tmp_path):
    s = _scene(7, 1)
    p = tmp_path / "x.ply"
    write_ply(s, str(p))
    a, b, c = read_ply(p), read_ply(p.read_bytes()), read_ply(io.BytesIO(p.read_bytes()))
    assert torch.equal(a.sh, b.sh) and torch.equal(b.sh, c.sh)


def test_zero_vertices_reads_empty():
    s = read_ply(build_ply(_inria_props(1), {k: v[:0] for k, v in _inria_cols(1, 1).items()}))
    assert len(s) == 0 and s.sh_degree == 1


# ------------------------------------------------------------------------------------------------ bad input


def _good(d=1, n=6):
    return build_ply(_inria_props(d), _inria_cols(n, d))


def _header_swap(data, old, new):
    i = data.index(b"end_header")
    return data[:i].replace(old, new) + data[i:]


def _corrupt_ascii():
    head, body = build_ply(_inria_props(0), _inria_cols(2, 0), fmt="ascii").split(b"end_header\n")
    first, rest = body.split(b" ", 1)
    return head + b"end_header\n" + b"abc " + rest


BAD_CASES = {
    "not_ply": (lambda: b"GIF89a" + bytes(100), "not a PLY"),
    "no_end_header": (lambda: b"ply\nformat binary_little_endian 1.0\nelement vertex 3\nproperty float x\n",
                      "end_header"),
    "truncated": (lambda: _good()[:-5], "truncated"),
    "truncated_ascii": (lambda: build_ply(_inria_props(0), _inria_cols(4, 0), fmt="ascii").rsplit(b"\n", 2)[0],
                        "truncated"),
    "missing_xyz": (lambda: _header_swap(_good(), b"property float y\n", b"property float why\n"),
                    "missing the position property 'y'"),
    "no_vertex": (lambda: _header_swap(_good(), b"element vertex", b"element point"), "no 'vertex' element"),
    "list_in_vertex": (lambda: _header_swap(_good(), b"property float nz\n",
                                            b"property float nz\nproperty list uchar int idx\n"), "list"),
    "unknown_type": (lambda: _header_swap(_good(), b"property float x\n", b"property half x\n"), "unknown type"),
    "bad_format": (lambda: _header_swap(_good(), b"binary_little_endian", b"binary_middle_endian"), "format"),
    "f_rest_count": (lambda: build_ply(_inria_props(1)[:-9] + [("f_rest_9", "float")] + _inria_props(1)[-8:],
                                       {**_inria_cols(6, 1), "f_rest_9": np.zeros(6, np.float32)}), "f_rest"),
    "f_rest_wrong_count": (lambda: build_ply(_inria_props(1) + [("f_rest_9", "float")],
                                             {**_inria_cols(6, 1), "f_rest_9": np.zeros(6, np.float32)}),
                           "10 f_rest_.*expected 0, 9, 24, 45 or 72"),
    "f_rest_without_dc": (lambda: _header_swap(_good(), b"property float f_dc_", b"property float g_dc_"),
                          "no f_dc"),
    "comment_mentions_end_header": (lambda: _good().replace(b"comment built by test_ply",
                                                            b"comment no end_header here", 1)[:-3], "truncated"),
    "partial_fdc": (lambda: _header_swap(_good(), b"property float f_dc_2\n", b"property float f_dc_x\n"),
                    "f_dc_2"),
    "nan": (lambda: build_ply(_inria_props(1), {**_inria_cols(6, 1),
                                                "scale_1": np.array([0, np.nan, 0, np.inf, 0, 0], np.float32)}),
            r"scale_1: 2 NaN/inf"),
    "zero_quat": (lambda: build_ply(_inria_props(0), {**_inria_cols(6, 0), **{f"rot_{i}": np.zeros(6, np.float32)
                                                                                 for i in range(4)}}),
                  "zero quaternion"),
    "overflow_scale": (lambda: build_ply(_inria_props(0), {**_inria_cols(6, 0),
                                                           "scale_0": np.full(6, 200.0, np.float32)}), "too large"),
    "bad_ascii_token": (lambda: _corrupt_ascii(), "not a number"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_input_raises_helpful_error_and_writes_nothing(case, tmp_path):
    make, msg = BAD_CASES[case]
    data = make()
    with pytest.raises(ValueError, match=msg):
        read_ply(data)
    src = tmp_path / "in.ply"
    src.write_bytes(data)
    out = tmp_path / "out.ply"
    with pytest.raises(ValueError, match="in.ply"):  # errors name the file
        write_ply(read_ply(src), out)
    assert not out.exists() and os.listdir(tmp_path) == ["in.ply"]


def test_on_invalid_drop():
    cols = _inria_cols(6, 1)
    cols["x"] = np.array([0, np.nan, 0, 0, 0, 0], np.float32)
    cols["f_rest_3"] = np.array([0, 0, 0, np.inf, 0, 0], np.float32)
    data = build_ply(_inria_props(1), cols)
    with pytest.raises(ValueError, match=r"x: 1 NaN/inf.*f_rest_3: 1 NaN/inf|on_invalid='drop'"):
        read_ply(data)
    with pytest.warns(UserWarning, match="dropped 2 of 6"):
        s = read_ply(data, on_invalid="drop")
    assert len(s) == 4
    s.validate()
    with pytest.raises(ValueError, match="on_invalid"):
        read_ply(data, on_invalid="ignore")


def test_no_warning_on_clean_file():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_ply(_good(3, 50))
