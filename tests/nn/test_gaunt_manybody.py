"""The Gaunt many-body product basis (``molequi.nn.gaunt_manybody``) against an independent quadrature, its
backends against each other, and MACE with ``product_basis: gaunt`` (symmetry, forces, config errors)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from ase.build import molecule
from e3nn import o3

from molequi import keys as K
from molequi.checkpoint import load_model, make_payload, save_model
from molequi.config import default_yaml
from molequi.data.statistics import Statistics
from molequi.errors import ConfigError
from molequi.models.mace import MACE
from molequi.nn.equivariant import ChannelIrreps
from molequi.nn.gaunt_manybody import GauntManyBody
from molequi.testing import assert_equivariant, check_forces_fd, predict

R_MAX = 4.0
STATS = Statistics(elements=[1, 6, 8], e0s={}, energy_shift=0.0, energy_scale=1.0, avg_num_neighbors=4.0)


def quadrature(degree: int):
    """Gauss-Legendre in cos(beta) x uniform alpha: exact for (1/4pi) int of polynomials of ``degree``
    (numpy's nodes and e3nn's angles; no molequi S2 code). Returns points (G, 3) and weights (G,), sum 1."""
    z, wz = np.polynomial.legendre.leggauss(degree // 2 + 1)
    n_alpha = degree + 1
    alpha = np.arange(n_alpha) * 2 * math.pi / n_alpha
    beta = np.arccos(z)
    B, A = np.meshgrid(beta, alpha, indexing="ij")
    xyz = o3.angles_to_xyz(torch.from_numpy(A), torch.from_numpy(B)).reshape(-1, 3)
    w = torch.from_numpy(np.repeat(wz / 2, n_alpha) / n_alpha)
    return xyz, w


def reference(module: GauntManyBody, a: torch.Tensor, element: torch.Tensor) -> torch.Tensor:
    """The module's function evaluated on an exact quadrature, one power at a time (truncated to Lh)."""
    L, Lh, nu = module.lmax_in, module.lmax_hidden, module.correlation
    xyz, w = quadrature(L + 2 * Lh)  # every product: degrees <= Lh (power) + L (factor) + Lh (projection)
    Y = o3.spherical_harmonics(list(range(Lh + 1)), xyz, normalize=True, normalization="component")  # (G, Kh)
    Yin = Y[:, : (L + 1) ** 2]
    deg_in = torch.tensor([l for l in range(L + 1) for _ in range(2 * l + 1)])
    u = module.factor_weights.detach()[:, element][:, :, deg_in]  # (nu, n, K, c)
    factors = [torch.einsum("gk,nkc->ngc", Yin, a * u[t]) for t in range(nu)]  # functions on the points
    powers = [factors[0]]
    for t in range(1, nu):
        coeff = torch.einsum("g,gk,ngc->nkc", w, Y, powers[-1] * factors[t])  # truncate to degree Lh
        powers.append(torch.einsum("gk,nkc->ngc", Y, coeff))
    out = []
    for i, (l, _) in enumerate(module.irreps_out.irreps):
        block = 0
        for t in range(nu):
            coeff = torch.einsum("g,gk,ngc->nkc", w, Y[:, l * l: (l + 1) ** 2], powers[t])
            block = block + module.weights.detach()[t, element, i][:, None, :] * coeff
        out.append(block)
    return torch.cat(out, dim=1)


def random_module(backend: str, lmax: int, out: str, correlation: int = 3) -> GauntManyBody:
    torch.manual_seed(3)
    module = GauntManyBody(ChannelIrreps.spherical(4, lmax), ChannelIrreps.parse(out), correlation, 2,
                           backend=backend).double()
    with torch.no_grad():  # factor weights away from their initial 1
        module.factor_weights.copy_(torch.randn_like(module.factor_weights))
    return module


@pytest.mark.parametrize("backend", ["grid", "fft", "dft"])
@pytest.mark.parametrize("lmax,out", [(2, "4x0e+4x1o+4x2e"), (1, "4x0e+4x1o+4x2e+4x3o")])
def test_matches_independent_quadrature(backend, lmax, out):
    module = random_module(backend, lmax, out)
    a = torch.randn(5, (lmax + 1) ** 2, 4, dtype=torch.float64)
    element = torch.tensor([0, 1, 1, 0, 1])
    got = module(a, element)
    want = reference(module, a, element)
    assert got.shape == (5, ChannelIrreps.parse(out).dim, 4)
    assert (got - want).abs().max() / want.abs().max() < 1e-12
    if lmax == 1:  # l = 3 is reached by the powers only (A has l <= 1): nonzero, so the test can fail
        assert want[:, -7:].abs().max() > 1e-3


def wigner_d(lmax: int, R: torch.Tensor) -> torch.Tensor:
    """Block-diagonal D(R) of 0e + 1o + ... + lmax in float64, from e3nn's harmonics (Y(R x) = D Y(x)) by
    least squares on random points (e3nn's D_from_matrix is only float32-accurate unless float64 is the
    default dtype)."""
    x = torch.randn(200, 3, dtype=torch.float64)
    ls = list(range(lmax + 1))
    Y = o3.spherical_harmonics(ls, x, normalize=True)
    YR = o3.spherical_harmonics(ls, x @ R.T, normalize=True)
    return torch.linalg.lstsq(Y, YR).solution.T


def test_backends_equal_and_equivariant_under_o3():
    grid, fft = random_module("grid", 3, "4x0e+4x1o+4x2e"), random_module("fft", 3, "4x0e+4x1o+4x2e")
    fft.load_state_dict(grid.state_dict())
    a = torch.randn(6, 16, 4, dtype=torch.float64)
    element = torch.tensor([0, 1, 0, 1, 1, 0])
    out = grid(a, element)
    assert (fft(a, element) - out).abs().max() / out.abs().max() < 1e-10
    torch.manual_seed(0)
    for R in (o3.rand_matrix(dtype=torch.float64), -o3.rand_matrix(dtype=torch.float64)):
        D_in = wigner_d(3, R)
        D_out = D_in[:9, :9]
        rotated = grid(torch.einsum("ij,njc->nic", D_in, a), element)
        assert (rotated - torch.einsum("ij,njc->nic", D_out, out)).abs().max() / out.abs().max() < 1e-12


def test_refuses_pseudo_tensors_and_bad_inputs():
    with pytest.raises(ConfigError, match="natural-parity outputs only.*1e"):
        GauntManyBody(ChannelIrreps.spherical(4, 2), ChannelIrreps.parse("4x0e+4x1e"), 2, 1)
    with pytest.raises(ConfigError, match="atomic basis 0e"):
        GauntManyBody(ChannelIrreps.parse("4x0e+4x1e"), ChannelIrreps.parse("4x0e"), 2, 1)
    with pytest.raises(ConfigError, match="unknown Gaunt backend 'x'"):
        GauntManyBody(ChannelIrreps.spherical(4, 2), ChannelIrreps.parse("4x0e"), 2, 1, backend="x")


def mace(**kw) -> MACE:
    base = dict(r_max=R_MAX, hidden_irreps="6x0e+6x1o", max_ell=2, radial_MLP=[8], MLP_irreps="4x0e",
                correlation=3, num_interactions=2, product_basis="gaunt")
    base.update(kw)
    torch.manual_seed(1)
    model = MACE.from_config(MACE.Config(**base), STATS)
    with torch.no_grad():
        for layer in model.layers:
            layer.product.factor_weights.copy_(torch.randn_like(layer.product.factor_weights))
    return model


def molecules():
    out = [molecule("CH3OH"), molecule("H2O")]
    for seed, atoms in enumerate(out):
        atoms.rattle(0.1, seed=20 + seed)
    return out


def test_mace_gaunt_product_basis_equivariant_forces_and_backends():
    model = mace()
    assert all(isinstance(layer.product, GauntManyBody) for layer in model.layers)
    report = assert_equivariant(model, molecules(), R_MAX, dtype=torch.float64, reflections=True,
                                n_rotations=2)
    assert report.worst() < 1e-10
    assert check_forces_fd(model, molecules()[0], R_MAX, dtype=torch.float64) < 1e-6
    fft = mace(gaunt_backend="fft").double()
    fft.load_state_dict(model.state_dict())
    e_grid = predict(model, molecules(), R_MAX, dtype=torch.float64)
    e_fft = predict(fft, molecules(), R_MAX, dtype=torch.float64)
    for key in e_grid:
        assert np.abs(e_fft[key] - e_grid[key]).max() <= 1e-10 * np.abs(e_grid[key]).max()


def test_mace_config_product_basis():
    assert MACE.Config().product_basis == "symmetric_contraction"
    with pytest.raises(ConfigError, match="unknown product_basis 'x'"):
        MACE.Config(product_basis="x").validate()
    with pytest.raises(ConfigError, match="product_basis 'gaunt' has only natural-parity"):
        MACE.Config(product_basis="gaunt", hidden_irreps="8x0e+8x1e").validate()
    with pytest.raises(ConfigError, match="backend 'cueq'"):
        MACE.Config(product_basis="gaunt", backend="cueq").validate()
    MACE.Config(product_basis="gaunt", gaunt_backend="fft").validate()  # the backend of either Gaunt product


def test_mace_gaunt_product_basis_checkpoint_round_trip(tmp_path):
    """A float32 checkpoint with product_basis gaunt loads (strict state dict) as the same function in
    float64, and the yaml template documents the option."""
    model = mace(gaunt_backend="dft")
    save_model(make_payload(config={"model": {"name": "mace", **dataclasses.asdict(model.config)}},
                            statistics=STATS.to_dict(), model_state=model.state_dict(), dtype=torch.float32),
               tmp_path / "model.pt")
    loaded = load_model(tmp_path / "model.pt", dtype=torch.float64)
    assert loaded.config.product_basis == "gaunt" and loaded.config.gaunt_backend == "dft"
    a = predict(model.double(), molecules(), R_MAX, dtype=torch.float64)
    b = predict(loaded, molecules(), R_MAX, dtype=torch.float64)
    np.testing.assert_allclose(b[K.ENERGY], a[K.ENERGY], rtol=1e-12)  # float32 weights: stored exactly
    assert "  product_basis: symmetric_contraction" in default_yaml("mace")
