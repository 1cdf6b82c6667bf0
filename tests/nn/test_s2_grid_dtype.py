"""S2Grid's matrices are exact in float64 whatever the dtype the module was built in (issue 19 item 4): the
'gaunt' edge product on the grid, built in float32 and moved to float64, equals the FFT backend (float64
Gaunt constants, an independent evaluation of the same product) to 1e-10; it was ~1e-7 off while the grid
matrices were float32 buffers rounded at construction. MACE with ``tensor_product: gaunt`` was already exact
this way (TensorProductConvolution keeps float64 masters of its product's buffers); its test guards that."""

from __future__ import annotations

import numpy as np
import torch
from ase.build import molecule

from molequi.data.statistics import Statistics
from molequi.models.mace import MACE
from e3nn import o3

from molequi.nn.s2 import S2Grid
from molequi.nn.tensor_products import build_conv_tensor_product
from molequi.testing import predict

R_MAX = 4.0
STATS = Statistics(elements=[1, 6, 8], e0s={}, energy_shift=0.0, energy_scale=1.0, avg_num_neighbors=4.0)


def _mace(gaunt_backend: str) -> MACE:
    assert torch.get_default_dtype() == torch.float32  # built as usual: in float32
    cfg = MACE.Config(r_max=R_MAX, hidden_irreps="4x0e+4x1o", max_ell=2, radial_MLP=[8], MLP_irreps="4x0e",
                      correlation=2, num_interactions=2, tensor_product="gaunt", gaunt_backend=gaunt_backend)
    torch.manual_seed(3)
    return MACE.from_config(cfg, STATS)


def test_mace_gaunt_grid_built_in_float32_is_exact_in_float64():
    grid = _mace("grid")
    fft = _mace("fft")
    fft.load_state_dict(grid.state_dict())
    grid, fft = grid.double(), fft.double()
    atoms = [molecule("CH3OH"), molecule("H2O")]
    for seed, a in enumerate(atoms):
        a.rattle(0.1, seed=seed)
    a = predict(grid, atoms, R_MAX, dtype=torch.float64)
    b = predict(fft, atoms, R_MAX, dtype=torch.float64)
    for key in a:
        assert np.abs(a[key] - b[key]).max() <= 1e-10 * np.abs(b[key]).max(), key
    # and back: float32 rounds the buffers, float64 restores them exactly
    grid.float().double()
    c = predict(grid, atoms, R_MAX, dtype=torch.float64)
    for key in a:
        np.testing.assert_array_equal(c[key], a[key])


def test_gaunt_edge_product_built_in_float32_is_exact_in_float64():
    irreps, ir_sh, target = "3x0e+3x1o+3x2e", o3.Irreps.spherical_harmonics(3), "3x0e+3x1o+3x2e+3x3o"
    grid = build_conv_tensor_product("gaunt", irreps, ir_sh, target).double()
    fft = build_conv_tensor_product("gaunt", irreps, ir_sh, target, gaunt_backend="fft").double()
    torch.manual_seed(4)
    E = 7
    sh = o3.spherical_harmonics(ir_sh, torch.randn(E, 3, dtype=torch.float64), True, normalization="component")
    x = torch.randn(E, o3.Irreps(irreps).dim, dtype=torch.float64)
    w = torch.randn(E, grid.weight_numel, dtype=torch.float64)
    a, b = grid(x, sh, w), fft(x, sh, w)
    assert (a - b).abs().max() < 1e-10 * b.abs().max()


def test_grid_matrices_follow_the_module_dtype_from_float64_values():
    """The buffers of a float32-built S2Grid moved to float64 are the float64 matrices of one built in float64;
    a float64 input to the float32 module is projected with the exact matrices too."""
    grid32 = S2Grid(3, 8, 8, lmax_out=2)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        grid64 = S2Grid(3, 8, 8, lmax_out=2)
    finally:
        torch.set_default_dtype(previous)
    assert grid32.to_mat.dtype == torch.float32
    x = torch.randn(5, 16, 2, dtype=torch.float64)
    assert torch.equal(grid32.to_grid(x), grid64.to_grid(x))
    grid32.double()
    assert torch.equal(grid32.to_mat, grid64.to_mat) and torch.equal(grid32.from_mat, grid64.from_mat)
    assert not torch.equal(grid64.to_mat.float().double(), grid64.to_mat)  # float32 does round them
