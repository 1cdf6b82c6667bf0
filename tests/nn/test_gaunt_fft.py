"""Gaunt product by FFT (``molequi.nn.gaunt_fft``) against an independent quadrature of Y Y Y, e3nn's
``o3.TensorProduct`` and the S2-grid version; equivariance, gradients, and its use in the 'gaunt' edge
product and MACE (``gaunt_backend: fft``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from e3nn import o3

from molequi.errors import ConfigError
from molequi.nn.gaunt_fft import GauntFFT
from molequi.nn.s2 import GauntProduct
from molequi.nn.tensor_products import build_conv_tensor_product

DT = torch.float64


def built_in_float64(build, *args, **kw):
    """build(*args, **kw) with float64 as the default dtype (the S2-grid matrices take the default)."""
    default = torch.get_default_dtype()
    torch.set_default_dtype(DT)
    try:
        return build(*args, **kw)
    finally:
        torch.set_default_dtype(default)


def gaunt_tensor(L1: int, L2: int, Lo: int) -> torch.Tensor:
    """G[k1, k2, k3] = (1/4pi) int Y_k1 Y_k2 Y_k3 dOmega by product quadrature: Gauss-Legendre in cos(beta)
    and a uniform rule in alpha, both exact for the polynomial of degree L1 + L2 + Lo (no molequi code)."""
    deg = L1 + L2 + Lo
    c, wc = np.polynomial.legendre.leggauss(deg // 2 + 2)
    na = deg + 2
    a = np.arange(na) * 2 * np.pi / na
    C, A = np.meshgrid(c, a, indexing="ij")
    S = np.sqrt(1 - C**2)
    xyz = torch.tensor(np.stack([S * np.sin(A), C, S * np.cos(A)], -1).reshape(-1, 3))  # e3nn: y polar
    w = torch.tensor((wc[:, None] * np.ones(na) / na / 2).reshape(-1))  # sums to 1 = (1/4pi) dOmega
    L = max(L1, L2, Lo)
    Y = o3.spherical_harmonics(list(range(L + 1)), xyz, normalize=True, normalization="component")
    return torch.einsum(
        "g,gi,gj,gk->ijk", w, Y[:, : (L1 + 1) ** 2], Y[:, : (L2 + 1) ** 2], Y[:, : (Lo + 1) ** 2]
    )


SIZES = [(1, 1, 1), (1, 1, 2), (2, 2, 2), (2, 1, 3), (3, 3, 3), (3, 2, 1), (4, 4, 4), (4, 2, 4), (0, 3, 3)]


@pytest.mark.parametrize("L1,L2,Lo", SIZES)
def test_fft_equals_quadrature_reference_and_grid(L1, L2, Lo):
    torch.manual_seed(L1 * 100 + L2 * 10 + Lo)
    x, y = torch.randn(3, 2, (L1 + 1) ** 2, 5, dtype=DT), torch.randn(3, 2, (L2 + 1) ** 2, 5, dtype=DT)
    ref = torch.einsum("ijk,...ic,...jc->...kc", gaunt_tensor(L1, L2, Lo), x, y)
    fft = GauntFFT(L1, L2, Lo)(x, y)
    dft = GauntFFT(L1, L2, Lo, transform="dft")(x, y)
    grid = built_in_float64(GauntProduct, L1, L2, Lo)(x, y)
    scale = ref.abs().max()
    assert fft.shape == ref.shape == dft.shape
    for got in (fft, dft, grid):
        assert (got - ref).abs().max() < 1e-10 * scale


@pytest.mark.parametrize("L", [1, 2, 3, 4])
def test_fft_equals_e3nn_tensor_product_with_gaunt_path_weights(L):
    """e3nn's channel-wise ('uuu') TensorProduct over all parity-allowed paths, each path's weight the
    ratio of the quadrature Gaunt coefficient to e3nn's Wigner 3j (one nonzero entry read per path; passed
    as e3nn's weights, since e3nn applies sqrt(path_weight) and some ratios are negative)."""
    torch.manual_seed(L)
    C = 3
    irreps = o3.Irreps([(C, (l, (-1) ** l)) for l in range(L + 1)])
    G = gaunt_tensor(L, L, L)
    instr, weights = [], []
    for i1 in range(L + 1):
        for i2 in range(L + 1):
            for io in range(abs(i1 - i2), min(i1 + i2, L) + 1):
                if (i1 + i2 + io) % 2:
                    continue
                w3j = o3.wigner_3j(i1, i2, io, dtype=DT)
                g = G[i1 * i1 : (i1 + 1) ** 2, i2 * i2 : (i2 + 1) ** 2, io * io : (io + 1) ** 2]
                j = w3j.abs().flatten().argmax()
                instr.append((i1, i2, io, "uuu", True, 1.0))
                ratio = float(g.flatten()[j] / w3j.flatten()[j])
                weights.append(torch.full((C,), ratio, dtype=DT))
    tp = built_in_float64(
        o3.TensorProduct,
        irreps,
        irreps,
        irreps,
        instr,
        irrep_normalization="none",
        path_normalization="none",
        internal_weights=False,
        shared_weights=True,
    )
    x, y = irreps.randn(4, -1, dtype=DT), irreps.randn(4, -1, dtype=DT)
    ref = tp(x, y, torch.cat(weights))

    def stack(t):  # e3nn mul_ir layout -> (N, K, C)
        return torch.cat(
            [
                t[:, s].reshape(4, C, 2 * l + 1).transpose(1, 2)
                for s, (_, (l, _)) in zip(irreps.slices(), irreps)
            ],
            dim=1,
        )

    for transform in ("fft", "dft"):
        out = GauntFFT(L, L, L, transform=transform)(stack(x), stack(y))
        assert (out - stack(ref)).abs().max() < 1e-10 * ref.abs().max()


@pytest.mark.parametrize("transform", ["fft", "dft"])
@pytest.mark.parametrize("L1,L2,Lo", [(2, 3, 4), (4, 4, 4)])
def test_fft_is_equivariant(L1, L2, Lo, transform):
    torch.manual_seed(7)
    R = o3.rand_matrix(dtype=DT)

    def wigner(L, Q):  # e3nn's D of 0e + 1o + ... + L, in float64
        return built_in_float64(o3.Irreps([(1, (l, (-1) ** l)) for l in range(L + 1)]).D_from_matrix, Q)

    D = {L: wigner(L, R) for L in {L1, L2, Lo}}
    D_ref = {L: wigner(L, -R) for L in {L1, L2, Lo}}
    tp = GauntFFT(L1, L2, Lo, transform=transform)
    x, y = torch.randn(6, (L1 + 1) ** 2, 4, dtype=DT), torch.randn(6, (L2 + 1) ** 2, 4, dtype=DT)
    out = tp(x, y)
    for Dm in (D, D_ref):  # rotation, and rotation times inversion
        rot = tp(Dm[L1] @ x, Dm[L2] @ y)
        assert (rot - Dm[Lo] @ out).abs().max() < 1e-10 * out.abs().max()


@pytest.mark.parametrize("transform", ["fft", "dft"])
def test_fft_gradients_match_grid_and_finite_differences(transform):
    torch.manual_seed(3)
    x = torch.randn(2, 9, 2, requires_grad=True, dtype=DT)
    y = torch.randn(2, 16, 2, requires_grad=True, dtype=DT)
    fft, grid = GauntFFT(2, 3, 3, transform=transform), built_in_float64(GauntProduct, 2, 3, 3)
    assert torch.autograd.gradcheck(fft, (x, y))
    probe = torch.randn(2, 16, 2, dtype=DT)
    ga = torch.autograd.grad((fft(x, y) * probe).sum(), (x, y))
    gb = torch.autograd.grad((grid(x, y) * probe).sum(), (x, y))
    for a, b in zip(ga, gb):
        assert (a - b).abs().max() < 1e-10 * b.abs().max()


def test_gaunt_edge_product_fft_backend_equals_grid():
    torch.manual_seed(4)
    irreps, ir_sh, target = "3x0e+3x1o+3x2e", o3.Irreps.spherical_harmonics(3), "3x0e+3x1o+3x2e+3x3o"
    grid = built_in_float64(build_conv_tensor_product, "gaunt", irreps, ir_sh, target)
    E = 7
    sh = o3.spherical_harmonics(ir_sh, torch.randn(E, 3, dtype=DT), True, normalization="component")
    x, w = torch.randn(E, o3.Irreps(irreps).dim, dtype=DT), torch.randn(E, grid.weight_numel, dtype=DT)
    a = grid(x, sh, w)
    for backend in ("fft", "dft"):
        fft = build_conv_tensor_product("gaunt", irreps, ir_sh, target, gaunt_backend=backend)
        assert fft.irreps_out == grid.irreps_out and fft.weight_numel == grid.weight_numel
        assert (a - fft(x, sh, w)).abs().max() < 1e-11 * a.abs().max()
    with pytest.raises(ConfigError, match="unknown gaunt_backend 'fast'; valid: grid, fft, dft"):
        build_conv_tensor_product("gaunt", irreps, ir_sh, target, gaunt_backend="fast")
    with pytest.raises(ConfigError, match="applies to the 'gaunt' kind only"):
        build_conv_tensor_product("e3nn", irreps, ir_sh, target, gaunt_backend="fft")
    with pytest.raises(ConfigError, match="unknown Gaunt transform 'fast'; valid: fft, dft"):
        GauntFFT(1, 1, 1, transform="fast")
    with pytest.raises(ConfigError, match="degrees must be 0..12"):
        GauntFFT(13, 1, 1)
