"""MACE's cuEquivariance backend (``model.backend: cueq``, issue 20 item 6) on the CPU, through
cuEquivariance's pure-torch reference path (``method="naive"``): NVIDIA's channel-wise tensor product and
symmetric contraction give the native backend's energies, forces and stress (float64 1e-10, float32 1e-5
relative) with the same state dict, for a small MACE and for the foundation-size hyperparameters (max_ell 3,
correlation 3) at tiny channel counts; molequi's channels-last features are cuEquivariance's ``ir_mul``."""

from __future__ import annotations

import cuequivariance as cue  # the dev extra installs it (pyproject.toml: cueq)
import cuequivariance_torch as cuet
import pytest
import torch
from ase.build import bulk, molecule
from e3nn import o3
from torch_geometric.data import Batch

from molequi import keys as K
from molequi.calculators.predict import build_records
from molequi.data.statistics import Statistics
from molequi.errors import ConfigError
from molequi.models.mace import MACE
from molequi.nn.cueq import CueqConvolution, CueqSymmetricContraction, cue_irreps
from molequi.nn.equivariant import ChannelIrreps, EquivariantConvolution
from molequi.nn.symmetric_contraction import SymmetricContraction
from molequi.so3.rotations import stack_to_irreps_blocks

R_MAX = 4.0
STATS = Statistics(elements=[1, 6, 8, 29], e0s={}, energy_shift=0.0, energy_scale=1.0, avg_num_neighbors=8.0)
SMALL = dict(hidden_irreps="4x0e+4x1o", max_ell=2, correlation=2, radial_MLP=[8, 8], MLP_irreps="4x0e")
# MACE-MP "medium" hyperparameters (128x0e+128x1o, max_ell 3, correlation 3) at 2 channels
FOUNDATION = dict(hidden_irreps="2x0e+2x1o", max_ell=3, correlation=3, radial_MLP=[8], MLP_irreps="2x0e")
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}


def test_channels_last_is_ir_mul():
    """(n, dim, c) flattened is cuEquivariance's ir_mul: its own transpose to mul_ir gives e3nn's layout."""
    irreps = ChannelIrreps.parse("3x0e+3x1o+3x2e+3x3o")
    x = torch.randn(5, irreps.dim, 3, dtype=torch.float64)
    to_mul_ir = cuet.TransposeIrrepsLayout(cue_irreps(irreps), source=cue.ir_mul, target=cue.mul_ir,
                                           use_fallback=True)
    e3nn_layout = stack_to_irreps_blocks(x, o3.Irreps(str(irreps)))
    assert torch.equal(to_mul_ir(x.reshape(5, -1)), e3nn_layout)
    assert not torch.equal(x.reshape(5, -1), e3nn_layout)  # and it is not e3nn's mul_ir


@pytest.mark.parametrize("hidden,lmax,correlation,dtype", [("3x0e+3x1o", 2, 2, torch.float64),
                                                           ("2x0e+2x1o", 3, 3, torch.float64),
                                                           ("2x0e+2x1o", 3, 3, torch.float32)])
@torch.no_grad()
def test_modules_equal_native(hidden, lmax, correlation, dtype):
    torch.manual_seed(0)
    h = ChannelIrreps.parse(hidden)
    c, target = h.channels, ChannelIrreps.spherical(h.channels, lmax)
    conv = EquivariantConvolution(h, lmax, target).to(dtype)
    n, edges = 9, 40
    x, sh = torch.randn(n, h.dim, c, dtype=dtype), torch.randn(edges, (lmax + 1) ** 2, dtype=dtype)
    w = torch.randn(edges, conv.num_paths, c, dtype=dtype)
    sender, receiver = torch.randint(0, n, (edges,)), torch.randint(0, n, (edges,))
    ref = conv(x, sh, w, sender, receiver)
    got = CueqConvolution(conv)(x, sh, w, sender, receiver)
    assert float((got - ref).abs().max()) < TOL[dtype] * float(ref.abs().max())
    for out in (h, ChannelIrreps(c, ((0, 1),))):  # a hidden layer's and the last layer's product
        sc = SymmetricContraction(target, out, correlation, 3).to(dtype)
        a, element = torch.randn(n, target.dim, c, dtype=dtype), torch.randint(0, 3, (n,))
        ref = sc(a, element)
        got = CueqSymmetricContraction(sc)(a, element)
        assert got.dtype == dtype
        assert float((got - ref).abs().max()) < TOL[dtype] * float(ref.abs().max())


def structures():
    cu = bulk("Cu", "fcc", a=3.7) * (2, 2, 1)  # triclinic cell, smaller than the cutoff (periodic images)
    cu.rattle(0.05, seed=3)
    cu[1].symbol = "C"
    methanol = molecule("CH3OH")
    methanol.rattle(0.1, seed=4)
    return [cu, methanol]


def evaluate(model, batch, train=False):
    model.train(train)
    out = model(batch.clone(), compute_forces=True, compute_stress=True)
    result = {k: out[k].detach() for k in (K.ENERGY, K.FORCES, K.STRESS)}
    if train:  # the parameter gradients of a force-training loss (double backward through cuEquivariance)
        model.zero_grad(set_to_none=True)
        ((out[K.ENERGY] ** 2).sum() + (out[K.FORCES] ** 2).sum()).backward()
        result.update({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})
    return result


@pytest.mark.parametrize("sizes,dtype,train", [(SMALL, torch.float64, True), (SMALL, torch.float32, False),
                                               (FOUNDATION, torch.float64, False),
                                               (FOUNDATION, torch.float32, False)])
def test_mace_cueq_equals_native(sizes, dtype, train):
    torch.manual_seed(0)
    native = MACE.from_config(MACE.Config(r_max=R_MAX, num_interactions=2, **sizes), STATS).to(dtype)
    cueq = MACE.from_config(MACE.Config(r_max=R_MAX, num_interactions=2, backend="cueq", **sizes), STATS)
    cueq.load_state_dict(native.state_dict(), strict=True)  # the same parameters under the same keys
    cueq.to(dtype)
    assert isinstance(cueq.layers[0].conv, CueqConvolution)
    assert cueq.layers[0]._messages.conv is cueq.layers[0].conv
    assert isinstance(cueq.layers[1].product, CueqSymmetricContraction)
    batch = Batch.from_data_list(build_records(structures(), R_MAX, dtype, validate=False))
    ref, got = evaluate(native, batch, train), evaluate(cueq, batch, train)
    assert ref.keys() == got.keys()
    for key, value in ref.items():
        scale = max(float(value.abs().max()), 1e-3)
        assert float((got[key] - value).abs().max()) < TOL[dtype] * scale, key


def test_backend_validated():
    with pytest.raises(ConfigError, match="backend"):
        MACE.Config(backend="cuda").validate()
    with pytest.raises(ConfigError, match="tensor_product"):
        MACE.Config(backend="cueq", tensor_product="e3nn").validate()
