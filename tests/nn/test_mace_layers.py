"""MACE's layers: radial basis and cutoff, the symmetric-contraction basis and its fast evaluation, the
equivariant convolution, and float64 constants surviving a float32 round trip."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from e3nn import o3

from molequi.errors import ConfigError
from molequi.nn.equivariant import (
    ChannelIrreps,
    ElementIrrepsLinear,
    EquivariantConvolution,
    IrrepsLinear,
    spherical_harmonics,
)
from molequi.nn.radial import BesselBasis, PolynomialCutoff, RadialMLP
from molequi.nn.symmetric_contraction import SymmetricContraction, symmetric_basis


@pytest.fixture(autouse=True)
def float64_default():
    """Every tensor in these tests is float64 (exact checks); the default is restored afterwards."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def wigner(irreps: ChannelIrreps, rot: torch.Tensor) -> torch.Tensor:
    """Block-diagonal representation matrix (dim, dim) of ``irreps`` for the O(3) matrix ``rot``."""
    text = "+".join(f"1x{l}{'e' if p == 1 else 'o'}" for l, p in irreps.irreps)
    return o3.Irreps(text).D_from_matrix(rot)


def random_o3(seed: int, reflect: bool) -> torch.Tensor:
    torch.manual_seed(seed)
    r = o3.rand_matrix()
    return -r if reflect else r


# ------------------------------------------------------------------------------------------------ radial
def test_bessel_basis_values():
    b = BesselBasis(r_max=5.0, num_basis=3)
    r = torch.tensor([0.7, 2.0, 4.9])
    expected = torch.stack([math.sqrt(2 / 5) * torch.sin(n * math.pi * r / 5) / r for n in (1, 2, 3)], dim=-1)
    torch.testing.assert_close(b(r), expected)


def test_polynomial_cutoff_is_smooth_and_vanishes():
    f = PolynomialCutoff(r_max=5.0, p=5)
    r = torch.tensor([0.0, 2.5, 4.999999, 5.0, 6.0], requires_grad=True)
    y = f(r).squeeze(-1)
    assert y[0].item() == pytest.approx(1.0)
    assert 0 < y[1].item() < 1
    assert abs(y[2].item()) < 1e-12 and y[3].item() == 0.0 and y[4].item() == 0.0
    (dy,) = torch.autograd.grad(y.sum(), r, create_graph=True)
    assert abs(dy[2].item()) < 1e-8 and dy[4].item() == 0.0
    with pytest.raises(ConfigError):
        PolynomialCutoff(r_max=-1.0)


def test_radial_mlp_keeps_unit_scale():
    torch.manual_seed(0)
    mlp = RadialMLP([8, 64, 64, 64, 32])
    out = mlp(torch.randn(4000, 8))
    assert 0.5 < float(out.detach().pow(2).mean()) < 2.0


# ------------------------------------------------------------------------------ symmetric contraction
@pytest.mark.parametrize(
    "target,nu,count",
    [((0, 1), 1, 1), ((0, 1), 2, 4), ((0, 1), 3, 8), ((1, -1), 2, 3), ((1, -1), 3, 12), ((2, 1), 3, 14)],
)
def test_symmetric_basis_counts_and_symmetry(target, nu, count):
    irreps = ChannelIrreps.spherical(1, 3).irreps  # 0e + 1o + 2e + 3o
    u = symmetric_basis(irreps, target, nu)
    # the number of independent O(3)-equivariant symmetric maps Sym^nu(0e+1o+2e+3o) -> target
    assert u.shape[0] == count
    for perm in ([1, 0], [0, 2, 1], [2, 1, 0])[: nu - 1] if nu > 1 else []:
        axes = (0, 1) + tuple(2 + np.array(perm)) + tuple(range(2 + len(perm), u.ndim))
        np.testing.assert_allclose(np.transpose(u, axes), u, atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(u.reshape(count, -1), axis=1), math.sqrt(2 * target[0] + 1))
    # equivariance: D_L(R) U = U D_in(R)^{(x) nu}, reflections included
    rot = random_o3(0, reflect=True)
    d_in = wigner(ChannelIrreps(1, irreps), rot).numpy()
    d_out = wigner(ChannelIrreps(1, (target,)), rot).numpy()
    lhs = np.einsum("mn,kn...->km...", d_out, u)
    rhs = u
    for axis in range(nu):
        rhs = np.moveaxis(np.tensordot(rhs, d_in, axes=([2 + axis], [0])), -1, 2 + axis)
    np.testing.assert_allclose(lhs, rhs, atol=1e-10)


def test_symmetric_basis_may_be_empty():
    """1e at nu = 2 from 0e + 1o + 2e + 3o: every coupling (1o x 1o, 2e x 2e, ...) is antisymmetric."""
    u = symmetric_basis(ChannelIrreps.spherical(1, 3).irreps, (1, 1), 2)
    assert u.shape == (0, 3, 16, 16)
    a, b = ChannelIrreps.spherical(2, 3), ChannelIrreps(2, ((0, 1), (1, 1)))
    with pytest.raises(ConfigError, match="up to correlation 2 gives 1e"):  # a clear error, not a crash
        SymmetricContraction(a, b, 2, 1)
    out = SymmetricContraction(a, b, 3, 1)(torch.randn(4, 16, 2), torch.zeros(4, dtype=torch.long))
    assert out.shape == (4, 4, 2) and out[:, 1:].abs().max() > 0  # 1e from nu = 3 (1o x 2e x 3o)


def dense_reference(sc: SymmetricContraction, x: torch.Tensor, element: torch.Tensor) -> torch.Tensor:
    """B[n, M, c] = sum_nu sum_k w[k, z_n, c] U[k, M, a1..] x[n, a1, c] ... x[n, anu, c] from full tensors."""
    blocks = []
    letters = "pqrst"
    for target, entries in zip(sc.irreps_out.irreps, sc._plan):
        out = 0
        for nu, _, _, w_index, _ in entries:
            u = torch.from_numpy(symmetric_basis(sc.irreps_in.irreps, target, nu))  # [K, M, dim^nu]
            w = sc.weights[w_index][:, element, :]  # [K, n, c]
            idx = letters[:nu]
            expr = f"kM{idx}," + ",".join(f"n{a}c" for a in idx) + ",knc->nMc"
            out = out + torch.einsum(expr, u, *([x] * nu), w)
        blocks.append(out)
    return torch.cat(blocks, dim=1)


@pytest.mark.parametrize("out", ["3x0e+3x1o", "3x0e"])
def test_symmetric_contraction_matches_dense_reference(out):
    torch.manual_seed(1)
    irreps_in = ChannelIrreps.spherical(3, 2)
    sc = SymmetricContraction(irreps_in, ChannelIrreps.parse(out), correlation=3, num_elements=2)
    x = torch.randn(5, irreps_in.dim, 3)
    element = torch.tensor([0, 1, 1, 0, 1])
    torch.testing.assert_close(sc(x, element), dense_reference(sc, x, element), atol=1e-12, rtol=1e-10)


def test_symmetric_contraction_is_equivariant():
    torch.manual_seed(2)
    irreps_in, irreps_out = ChannelIrreps.spherical(2, 3), ChannelIrreps.parse("2x0e+2x1o+2x2e")
    sc = SymmetricContraction(irreps_in, irreps_out, correlation=3, num_elements=1)
    x = torch.randn(4, irreps_in.dim, 2)
    element = torch.zeros(4, dtype=torch.long)
    rot = random_o3(3, reflect=True)
    d_in, d_out = wigner(irreps_in, rot), wigner(irreps_out, rot)
    torch.testing.assert_close(
        sc(torch.einsum("ij,njc->nic", d_in, x), element),
        torch.einsum("ij,njc->nic", d_out, sc(x, element)),
        atol=1e-12,
        rtol=0,
    )


# --------------------------------------------------------------------------------- convolution, linears
def test_convolution_is_equivariant_and_sums_neighbours():
    torch.manual_seed(4)
    irreps_in, irreps_out = ChannelIrreps.parse("3x0e+3x1o"), ChannelIrreps.spherical(3, 3)
    conv = EquivariantConvolution(irreps_in, 3, irreps_out)
    assert conv.num_paths == 10  # 0e x (0..3) -> 4 paths, 1o x (0..3) -> 6 paths within 0e..3o
    n, e = 4, 9
    x = torch.randn(n, irreps_in.dim, 3)
    vec = torch.randn(e, 3)
    sender, receiver = torch.randint(0, n, (e,)), torch.randint(0, n, (e,))
    w = torch.randn(e, conv.num_paths, 3)
    out = conv(x, spherical_harmonics(3, vec), w, sender, receiver)
    rot = random_o3(5, reflect=True)
    x_rot = torch.einsum("ij,njc->nic", wigner(irreps_in, rot), x)
    out_rot = conv(x_rot, spherical_harmonics(3, vec @ rot.T), w, sender, receiver)
    torch.testing.assert_close(
        out_rot, torch.einsum("ij,njc->nic", wigner(irreps_out, rot), out), atol=1e-12, rtol=0
    )
    # the neighbour sum is linear: splitting the edges in two and adding gives the same result
    half = torch.arange(e) < 5
    a = conv(x, spherical_harmonics(3, vec[half]), w[half], sender[half], receiver[half])
    b = conv(x, spherical_harmonics(3, vec[~half]), w[~half], sender[~half], receiver[~half])
    torch.testing.assert_close(a + b, out)


def test_linears_act_per_irrep():
    torch.manual_seed(6)
    irreps = ChannelIrreps.parse("4x0e+4x1o")
    lin = IrrepsLinear(irreps, irreps.with_channels(2))
    x = torch.randn(3, 4, 4)
    y = lin(x)
    torch.testing.assert_close(y[:, 1:], x[:, 1:] @ lin.weights[1] / 2.0)
    skip = ElementIrrepsLinear(irreps, ChannelIrreps.parse("2x0e"), num_elements=2)
    element = torch.tensor([0, 1, 1])
    y = skip(x, element)
    assert y.shape == (3, 1, 2)
    torch.testing.assert_close(y[1, 0], x[1, 0] @ skip.weights[0][1] / 2.0)


def test_symmetric_contraction_in_blocks_of_atoms_equals_the_dense_reference(monkeypatch):
    """Atoms processed in blocks (``BLOCK_BYTES``, here a few atoms each, the last one shorter): the values
    and the first and second derivatives (forces and the force loss's weight gradients) equal the dense
    formula."""
    import molequi.nn.symmetric_contraction as module

    torch.manual_seed(2)
    irreps_in = ChannelIrreps.spherical(3, 2)
    sc = SymmetricContraction(irreps_in, ChannelIrreps.parse("3x0e+3x1o"), correlation=3, num_elements=2)
    x = torch.randn(11, irreps_in.dim, 3, requires_grad=True)
    element = torch.randint(0, 2, (11,))
    monkeypatch.setattr(module, "BLOCK_BYTES", 3 * 3 * 8 * 60)  # 3 atoms of <= 60 monomials x 3 channels
    results = []
    for fn in (lambda: sc(x, element), lambda: dense_reference(sc, x, element)):
        out = fn()
        (g,) = torch.autograd.grad((out ** 2).sum(), x, create_graph=True)
        second = torch.autograd.grad((g ** 2).sum(), list(sc.weights))
        results.append((out, g, second))
    (out, g, second), (ref, ref_g, ref_second) = results
    torch.testing.assert_close(out, ref, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(g, ref_g, atol=1e-11, rtol=1e-10)
    for a, b in zip(second, ref_second):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("num_elements", [3, 9])  # one matmul with every element's map / per-atom bmm
def test_element_linear_equals_per_atom_formula_with_gradients(num_elements):
    """out_l[i] = x_l[i] W_l[z_i] / sqrt(c_in) and its gradients, against a loop over atoms; an output irrep
    absent from the input is zero."""
    torch.manual_seed(3)
    irreps_in, irreps_out = ChannelIrreps.parse("4x0e+4x1o"), ChannelIrreps.parse("4x0e+4x1o+4x2e")
    lin = ElementIrrepsLinear(irreps_in, irreps_out, num_elements)
    x = torch.randn(7, irreps_in.dim, 4, requires_grad=True)
    element = torch.randint(0, num_elements, (7,))
    element[0] = num_elements - 1
    out = lin(x, element)
    ref = torch.zeros(7, irreps_out.dim, 4)
    for i in range(7):
        ref[i, 0:1] = x[i, 0:1] @ lin.weights[0][element[i]] / 2.0
        ref[i, 1:4] = x[i, 1:4] @ lin.weights[1][element[i]] / 2.0
    torch.testing.assert_close(out, ref, atol=1e-13, rtol=1e-12)
    grads = torch.autograd.grad((out * ref.detach()).sum(), [x, *lin.weights])
    ref_grads = torch.autograd.grad((ref * ref.detach()).sum(), [x, *lin.weights])
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-12)


def test_channel_irreps_validation():
    assert ChannelIrreps.parse("8x0e+8x1o+8x2e").dim == 9
    with pytest.raises(ConfigError):
        ChannelIrreps.parse("8x0e+4x1o")
    with pytest.raises(ConfigError):
        ChannelIrreps(4, ((1, -1), (1, -1)))


def test_constants_survive_float32_round_trip():
    """A layer built, moved to float32 and back to float64 is still exact (constants are kept in float64)."""
    torch.manual_seed(7)
    irreps_in = ChannelIrreps.spherical(2, 3)
    sc = SymmetricContraction(irreps_in, ChannelIrreps.parse("2x0e+2x1o"), correlation=3, num_elements=1)
    sc.to(torch.float32).to(torch.float64)
    x = torch.randn(3, irreps_in.dim, 2)
    element = torch.zeros(3, dtype=torch.long)
    torch.testing.assert_close(sc(x, element), dense_reference(sc, x, element), atol=1e-12, rtol=1e-10)
