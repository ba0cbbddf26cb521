import math

import pytest
import torch

from vscene_engine.core.gaussians import GaussianScene, quat_multiply, quat_to_rotmat, rotmat_to_quat
from vscene_engine.core.sh import eval_sh


def _rot(gen, dtype=torch.float64):
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.to(dtype)


def _scene(n=20, d=2, seed=0, dtype=torch.float64):
    return GaussianScene.random(n, d, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def test_random_is_valid_and_properties():
    s = _scene(30, 3, dtype=torch.float32)
    assert s.validate() is s
    assert len(s) == 30 and s.sh_degree == 3 and s.sh.shape == (30, 16, 3)
    assert s.dtype == torch.float32 and s.device.type == "cpu"
    s64 = s.to(dtype=torch.float64)
    assert s64.dtype == torch.float64 and s64.quats.dtype == torch.float64
    # deterministic for a seeded generator
    assert torch.equal(_scene(5, 1, seed=3).means, _scene(5, 1, seed=3).means)
    e = GaussianScene.empty(2)
    assert len(e) == 0 and e.sh_degree == 2
    e.validate()


def _broken(field, value_fn):
    s = _scene(8, 1)
    setattr(s, field, value_fn(getattr(s, field).clone()))
    return s


@pytest.mark.parametrize("field,fn,msg", [
    ("means", lambda t: t[:, :2], "means"),
    ("scales", lambda t: t[:5], "scales"),
    ("quats", lambda t: t[:, :3], "quats"),
    ("opacities", lambda t: t[:, None], "opacities"),
    ("sh", lambda t: t[:, :3], "sh"),
    ("means", lambda t: t.index_fill(0, torch.tensor([2]), float("nan")), "means"),
    ("sh", lambda t: t.index_fill(0, torch.tensor([1]), float("inf")), "sh"),
    ("scales", lambda t: t.index_fill(0, torch.tensor([1]), 0.0), "scales"),
    ("scales", lambda t: -t, "scales"),
    ("opacities", lambda t: t + 1.0, "opacities"),
    ("opacities", lambda t: t - 1.0, "opacities"),
    ("quats", lambda t: t.index_fill(0, torch.tensor([4]), 0.0), "quats"),
    ("means", lambda t: t.to(torch.float32), "means"),
])
def test_validate_errors_name_field(field, fn, msg):
    s = _broken(field, fn)
    with pytest.raises(ValueError, match=msg):
        s.validate()


def test_unnormalized_quats():
    s = _scene(8, 0)
    s.quats = s.quats * 3.0
    with pytest.raises(ValueError, match="normalized"):
        s.validate()
    s.validate(strict=False)
    n = s.normalized().validate()
    torch.testing.assert_close(n.quats.norm(dim=-1), torch.ones(8, dtype=torch.float64))


def test_cat_pads_sh():
    a, b, c = _scene(3, 0, 1), _scene(4, 2, 2), _scene(5, 1, 3)
    s = GaussianScene.cat([a, b, c]).validate()
    assert len(s) == 12 and s.sh_degree == 2
    torch.testing.assert_close(s.sh[:3, 0], a.sh[:, 0])
    assert (s.sh[:3, 1:] == 0).all()
    torch.testing.assert_close(s.sh[3:7], b.sh)
    torch.testing.assert_close(s.sh[7:, :4], c.sh)
    assert (s.sh[7:, 4:] == 0).all()
    torch.testing.assert_close(s.means[7:], c.means)
    with pytest.raises(ValueError):
        GaussianScene.cat([])


def test_subset_and_prune():
    s = _scene(10, 1)
    mask = torch.zeros(10, dtype=torch.bool)
    mask[[1, 4, 7]] = True
    a = s.subset(mask)
    b = s.subset([1, 4, 7])
    c = s.subset(torch.tensor([1, 4, 7]))
    for x in (a, b, c):
        assert len(x) == 3
        torch.testing.assert_close(x.sh, s.sh[[1, 4, 7]])
    assert len(s.subset(2)) == 1 and len(s.subset(slice(2, 5))) == 3 and len(s.subset([])) == 0
    with pytest.raises(ValueError):
        s.subset(torch.ones(3, dtype=torch.bool))
    s.opacities = torch.linspace(0, 1, 10, dtype=torch.float64)
    p = s.prune(min_opacity=0.5)
    assert len(p) == 5 and (p.opacities >= 0.5).all()
    s.scales[9] = 10.0
    assert len(s.prune(min_opacity=0.5, max_scale=1.0)) == 4


def test_with_sh_degree():
    s = _scene(4, 2)
    t = s.with_sh_degree(1)
    assert t.sh_degree == 1 and torch.equal(t.sh, s.sh[:, :4])
    u = s.with_sh_degree(4)
    assert u.sh.shape == (4, 25, 3) and torch.equal(u.sh[:, :9], s.sh) and (u.sh[:, 9:] == 0).all()
    assert s.with_sh_degree(2) is s


def test_covariances():
    s = _scene(6, 0)
    cov = s.covariances()
    R = quat_to_rotmat(s.quats)
    ref = R @ torch.diag_embed(s.scales ** 2) @ R.transpose(-1, -2)
    torch.testing.assert_close(cov, ref)
    torch.testing.assert_close(cov, cov.transpose(-1, -2))
    assert (torch.linalg.eigvalsh(cov) > 0).all()


def test_transformed_similarity():
    g = torch.Generator().manual_seed(7)
    s = _scene(40, 4, seed=7)
    R = _rot(g)
    t = torch.tensor([0.3, -1.0, 2.0], dtype=torch.float64)
    k = 1.7
    o = s.transformed(R, t, k).validate()
    torch.testing.assert_close(o.means, k * s.means @ R.T + t)
    torch.testing.assert_close(o.covariances(), k * k * R @ s.covariances() @ R.T)
    torch.testing.assert_close(o.scales, k * s.scales)
    torch.testing.assert_close(o.opacities, s.opacities)
    # view-dependent colour: seen from the transformed camera it matches the original
    cam = torch.tensor([0.5, 2.0, -3.0], dtype=torch.float64)
    d = s.means - cam
    d2 = o.means - (k * R @ cam + t)
    torch.testing.assert_close(eval_sh(o.sh, d2), eval_sh(s.sh, d), atol=1e-10, rtol=0)
    # float32 works too
    o32 = s.to(dtype=torch.float32).transformed(R.float(), t.float(), k)
    assert (eval_sh(o32.sh, d2.float()) - eval_sh(s.sh, d).float()).abs().max() < 1e-5
    # defaults are the identity
    i = s.transformed()
    torch.testing.assert_close(i.means, s.means)
    torch.testing.assert_close(i.sh, s.sh)


def test_transformed_rejects_bad_rotation():
    s = _scene(3, 1)
    with pytest.raises(ValueError, match="reflection|determinant"):
        s.transformed(torch.diag(torch.tensor([1.0, 1.0, -1.0], dtype=torch.float64)))
    with pytest.raises(ValueError, match="orthonormal"):
        s.transformed(2 * torch.eye(3, dtype=torch.float64))
    with pytest.raises(ValueError):
        s.transformed(s=0.0)


def test_quat_rotmat_round_trip():
    g = torch.Generator().manual_seed(11)
    q = torch.randn(500, 4, generator=g, dtype=torch.float64)
    q = q / q.norm(dim=-1, keepdim=True)
    # special cases: identity, 180 degree turns about each axis (w = 0), near-180
    special = torch.tensor([[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [1e-9, 0.6, 0.8, 0]],
                           dtype=torch.float64)
    q = torch.cat([q, special / special.norm(dim=-1, keepdim=True)])
    R = quat_to_rotmat(q)
    torch.testing.assert_close(R @ R.transpose(-1, -2), torch.eye(3, dtype=torch.float64).expand_as(R))
    torch.testing.assert_close(torch.linalg.det(R), torch.ones(len(q), dtype=torch.float64))
    q2 = rotmat_to_quat(R)
    sign = torch.where((q * q2).sum(-1, keepdim=True) < 0, -1.0, 1.0)
    torch.testing.assert_close(q2 * sign, q)
    assert (q2[:, 0] >= 0).all()
    torch.testing.assert_close(quat_to_rotmat(q2), R)
    # known matrix: 90 degrees about z
    Rz = torch.tensor([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]], dtype=torch.float64)
    c = math.sqrt(0.5)
    torch.testing.assert_close(rotmat_to_quat(Rz), torch.tensor([c, 0, 0, c], dtype=torch.float64))
    torch.testing.assert_close(quat_to_rotmat(torch.tensor([c, 0, 0, c], dtype=torch.float64)), Rz)


def test_quat_multiply_matches_matrix_product():
    g = torch.Generator().manual_seed(12)
    a = torch.randn(50, 4, generator=g, dtype=torch.float64)
    b = torch.randn(50, 4, generator=g, dtype=torch.float64)
    torch.testing.assert_close(quat_to_rotmat(quat_multiply(a, b)), quat_to_rotmat(a) @ quat_to_rotmat(b))


def test_from_points_and_bounds():
    xyz = torch.tensor([[0.0, 0, 0], [2, 1, 0], [1, -1, 4]])
    rgb = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0.5, 0.5, 0.5]])
    s = GaussianScene.from_points(xyz, rgb, scale=0.05, opacity=0.8).validate()
    torch.testing.assert_close(s.base_rgb(), rgb)
    assert torch.allclose(s.scales, torch.full((3, 3), 0.05)) and torch.allclose(s.opacities, torch.full((3,), 0.8))
    assert s.sh_degree == 0
    s2 = GaussianScene.from_points(xyz, None, scale=torch.tensor([0.1, 0.2, 0.3]), sh_degree=2).validate()
    assert s2.sh.shape == (3, 9, 3) and torch.allclose(s2.scales[:, 0], torch.tensor([0.1, 0.2, 0.3]))
    torch.testing.assert_close(s.center(), torch.tensor([1.0, 0.0, 2.0]))
    torch.testing.assert_close(s.extent(), torch.tensor([2.0, 2.0, 4.0]))
    assert s.radius() == pytest.approx(math.sqrt(24) / 2)
    big = _scene(1000, 0)
    lo, hi = big.bounds(quantile=0.05)
    assert (lo > big.means.amin(0)).all() and (hi < big.means.amax(0)).all()
    with pytest.raises(ValueError):
        GaussianScene.empty().center()


def test_all_finite_agrees_with_isfinite():
    from vscene_engine.core.gaussians import all_finite

    base = torch.randn(1000, 3)
    cases = [base, base.double(), base[:0], torch.arange(5), base.clone().requires_grad_(True)]
    for bad in (float("nan"), float("inf"), -float("inf")):
        for pos in (0, 1234, 2999):
            t = base.clone()
            t.view(-1)[pos] = bad
            cases.append(t)
    t = base.clone()
    t[7, 1], t[9, 2] = float("inf"), -float("inf")  # min -inf and max +inf at once
    cases.append(t)
    for t in cases:
        assert all_finite(t) == bool(torch.isfinite(t).all()), t.flatten()[:3]
