import math

import numpy as np
import pytest
import torch

from vscene_engine.core import sh as S


def _quadrature(n_z=12, n_phi=26):
    """Product Gauss-Legendre x uniform-azimuth rule: exact on the sphere for polynomials of degree <= 2*n_z-1."""
    zs, wz = np.polynomial.legendre.leggauss(n_z)
    phi = np.arange(n_phi) * (2 * np.pi / n_phi) + 0.1
    z = np.repeat(zs, n_phi)
    r = np.sqrt(1 - z * z)
    p = np.tile(phi, n_z)
    pts = np.stack([r * np.cos(p), r * np.sin(p), z], -1)
    w = np.repeat(wz, n_phi) * 2 * np.pi / n_phi
    return torch.tensor(pts), torch.tensor(w)


def _random_rotation(gen, dtype=torch.float64):
    q, _ = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    if torch.det(q) < 0:
        q[:, 0] = -q[:, 0]
    return q.to(dtype)


def _basis_via_eval(dirs, degree):
    """Basis functions obtained only through eval_sh (one-hot coefficients)."""
    k = (degree + 1) ** 2
    out = []
    for i in range(k):
        sh = torch.zeros(k, 3, dtype=dirs.dtype)
        sh[i, 0] = 1.0
        out.append(S.eval_sh(sh.expand(dirs.shape[0], k, 3), dirs)[:, 0])
    return torch.stack(out, -1)


def test_basis_orthonormal_on_sphere():
    pts, w = _quadrature()
    Y = _basis_via_eval(pts, 4)  # [Q, 25]
    gram = torch.einsum("q,qi,qj->ij", w, Y, Y)
    assert torch.allclose(gram, torch.eye(25, dtype=gram.dtype), atol=1e-10), (gram - torch.eye(25)).abs().max()


def test_basis_orthonormal_monte_carlo_float32():
    g = torch.Generator().manual_seed(0)
    d = torch.randn(200_000, 3, generator=g)  # unnormalized on purpose
    Y = S.sh_basis(d, 4)
    gram = 4 * math.pi * (Y.T @ Y) / d.shape[0]
    assert (gram - torch.eye(25)).abs().max() < 3e-2


def test_constants_closed_forms_and_signs():
    pi = math.pi
    expected = {
        "C0": 1 / (2 * math.sqrt(pi)),
        "C1": math.sqrt(3 / (4 * pi)),
        "C2": [math.sqrt(15 / pi) / 2, -math.sqrt(15 / pi) / 2, math.sqrt(5 / pi) / 4, -math.sqrt(15 / pi) / 2,
               math.sqrt(15 / pi) / 4],
        "C3": [-math.sqrt(35 / (2 * pi)) / 4, math.sqrt(105 / pi) / 2, -math.sqrt(21 / (2 * pi)) / 4,
               math.sqrt(7 / pi) / 4, -math.sqrt(21 / (2 * pi)) / 4, math.sqrt(105 / pi) / 4,
               -math.sqrt(35 / (2 * pi)) / 4],
        "C4": [3 * math.sqrt(35 / pi) / 4, -3 * math.sqrt(35 / (2 * pi)) / 4, 3 * math.sqrt(5 / pi) / 4,
               -3 * math.sqrt(5 / (2 * pi)) / 4, 3 / (16 * math.sqrt(pi)), -3 * math.sqrt(5 / (2 * pi)) / 4,
               3 * math.sqrt(5 / pi) / 8, -3 * math.sqrt(35 / (2 * pi)) / 4, 3 * math.sqrt(35 / pi) / 16],
    }
    for name, val in expected.items():
        np.testing.assert_allclose(np.atleast_1d(getattr(S, name)), np.atleast_1d(val), rtol=1e-12)


def test_degree1_explicit_3dgs_formula():
    g = torch.Generator().manual_seed(1)
    sh = torch.randn(50, 4, 3, generator=g, dtype=torch.float64)
    d = torch.randn(50, 3, generator=g, dtype=torch.float64) * 3.0
    u = d / d.norm(dim=-1, keepdim=True)
    x, y, z = u[:, 0:1], u[:, 1:2], u[:, 2:3]
    ref = S.C0 * sh[:, 0] - S.C1 * y * sh[:, 1] + S.C1 * z * sh[:, 2] - S.C1 * x * sh[:, 3]
    torch.testing.assert_close(S.eval_sh(sh, d), ref, rtol=0, atol=1e-12)
    # evaluating only band 0 of a degree-1 sh
    torch.testing.assert_close(S.eval_sh(sh, d, degree=0), S.C0 * sh[:, 0], rtol=0, atol=1e-12)


def test_explicit_values_on_axes():
    # a few hand-evaluated basis values at +z and +x
    Y = S.sh_basis(torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64), 4)
    assert Y[0, 2].item() == pytest.approx(S.C1)
    assert Y[1, 3].item() == pytest.approx(-S.C1)
    assert Y[0, 6].item() == pytest.approx(2 * S.C2[2])
    assert Y[1, 8].item() == pytest.approx(S.C2[4])
    assert Y[0, 12].item() == pytest.approx(2 * S.C3[3])
    assert Y[1, 15].item() == pytest.approx(S.C3[6])
    assert Y[0, 20].item() == pytest.approx(8 * S.C4[4])
    assert Y[1, 24].item() == pytest.approx(S.C4[8])


def test_eval_broadcast_and_zero_direction():
    sh = torch.randn(2, 1, 9, 3, dtype=torch.float64)
    d = torch.randn(5, 3, dtype=torch.float64)
    out = S.eval_sh(sh, d[None])
    assert out.shape == (2, 5, 3)
    z = S.eval_sh(torch.randn(3, 25, 3), torch.zeros(3, 3))
    assert torch.isfinite(z).all()


def test_gradients_flow():
    sh = torch.randn(10, 16, 3, dtype=torch.float64, requires_grad=True)
    d = torch.randn(10, 3, dtype=torch.float64)
    d[0] = 0.0
    d.requires_grad_(True)
    S.sh_to_rgb(sh, d).sum().backward()
    assert sh.grad is not None and torch.isfinite(sh.grad).all() and sh.grad.abs().sum() > 0
    assert d.grad is not None and torch.isfinite(d.grad).all() and d.grad[1:].abs().sum() > 0
    sh2 = torch.randn(4, 25, 3, dtype=torch.float64, requires_grad=True)
    R = _random_rotation(torch.Generator().manual_seed(3))
    S.eval_sh(S.rotate_sh(sh2, R), torch.randn(4, 3, dtype=torch.float64)).sum().backward()
    assert torch.isfinite(sh2.grad).all() and sh2.grad[:, 1:].abs().sum() > 0
    assert torch.autograd.gradcheck(lambda s: S.eval_sh(s, d.detach()[:3]), (sh.detach()[:3].requires_grad_(),))


@pytest.mark.parametrize("degree", [0, 1, 2, 3, 4])
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-5)])
def test_rotate_sh_invariance(degree, dtype, tol):
    g = torch.Generator().manual_seed(10 + degree)
    k = (degree + 1) ** 2
    sh = torch.randn(64, k, 3, generator=g, dtype=torch.float64).to(dtype)
    d = torch.randn(64, 3, generator=g, dtype=torch.float64).to(dtype)
    R = _random_rotation(g, dtype)
    rot = S.rotate_sh(sh, R)
    lhs = S.eval_sh(rot, d @ R.T)
    rhs = S.eval_sh(sh, d)
    assert (lhs - rhs).abs().max().item() < tol
    assert torch.equal(rot[:, 0], sh[:, 0])


def test_rotate_sh_batched_and_composition():
    g = torch.Generator().manual_seed(5)
    sh = torch.randn(6, 25, 3, generator=g, dtype=torch.float64)
    Rs = torch.stack([_random_rotation(g) for _ in range(6)])
    d = torch.randn(6, 3, generator=g, dtype=torch.float64)
    out = S.rotate_sh(sh, Rs)
    torch.testing.assert_close(S.eval_sh(out, torch.einsum("nij,nj->ni", Rs, d)), S.eval_sh(sh, d))
    R1, R2 = Rs[0], Rs[1]
    torch.testing.assert_close(S.rotate_sh(S.rotate_sh(sh, R1), R2), S.rotate_sh(sh, R2 @ R1))
    torch.testing.assert_close(S.rotate_sh(sh, torch.eye(3, dtype=torch.float64)), sh)


def test_coefficient_helpers():
    assert [S.num_sh_coeffs(d) for d in range(5)] == [1, 4, 9, 16, 25]
    assert [S.sh_degree_from_coeffs(k) for k in (1, 4, 9, 16, 25)] == [0, 1, 2, 3, 4]
    for bad in (0, 2, 3, 5, 10, 24, 36):
        with pytest.raises(ValueError):
            S.sh_degree_from_coeffs(bad)
    with pytest.raises(ValueError):
        S.num_sh_coeffs(5)
    with pytest.raises(ValueError):
        S.eval_sh(torch.zeros(3, 5, 3), torch.zeros(3, 3))
    rgb = torch.rand(7, 3, dtype=torch.float64)
    torch.testing.assert_close(S.sh_dc_to_rgb(S.rgb_to_sh_dc(rgb)), rgb)
    # sh_to_rgb of a pure DC term is the base colour (and clamps negatives)
    dc = S.rgb_to_sh_dc(torch.tensor([[0.2, 0.5, -0.3]], dtype=torch.float64))
    out = S.sh_to_rgb(dc[:, None, :], torch.tensor([[0.0, 0.0, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(out, torch.tensor([[0.2, 0.5, 0.0]], dtype=torch.float64))
