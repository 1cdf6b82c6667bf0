"""MACE's edge chunks (``max_edges_per_chunk``, issue 23 item 1): the chunked message computation with
recomputation in backward gives the unchunked energies, forces, stress and training gradients (float64,
1e-10), its forces and stress are -dE/dx and dE/deps by finite differences, and the option is validated."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from torch_geometric.data import Batch

from molequi import keys as K
from molequi.calculators.predict import build_records
from molequi.config import Config
from molequi.data.statistics import Statistics
from molequi.errors import ConfigError
from molequi.models.mace import MACE, MACELayer
from molequi.testing import check_forces_fd, check_stress_fd

R_MAX = 4.0
STATS = Statistics(elements=[1, 6, 8, 29], e0s={}, energy_shift=0.0, energy_scale=1.0, avg_num_neighbors=8.0)


def make_model(tensor_product: str = "native", **kw) -> MACE:
    torch.manual_seed(0)
    cfg = MACE.Config(r_max=R_MAX, hidden_irreps="4x0e+4x1o", max_ell=2, radial_MLP=[8, 8], MLP_irreps="4x0e",
                      correlation=2, num_interactions=2, tensor_product=tensor_product, **kw)
    return MACE.from_config(cfg, STATS).double()


def structures():
    cu = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 1)
    cu.set_cell(cu.cell[:] + np.array([[0.0, 0.1, 0.2], [0.1, 0.0, -0.1], [0.0, 0.2, 0.0]]), scale_atoms=True)
    cu.rattle(0.05, seed=1)
    cu[0].symbol = "O"
    mol = molecule("CH3CH2OH")
    mol.rattle(0.1, seed=2)
    return [cu, mol]


def batch_of(atoms_list):
    return Batch.from_data_list(build_records(atoms_list, R_MAX, torch.float64, validate=False))


def outputs(model: MACE, chunk, batch, train: bool = False) -> dict[str, torch.Tensor]:
    """Energy, forces, stress; with ``train`` also the parameter gradients of a force-training loss."""
    model.set_max_edges_per_chunk(chunk)
    model.train(train)
    out = model(batch.clone(), compute_forces=True, compute_stress=True)
    result = {k: out[k].detach() for k in (K.ENERGY, K.FORCES, K.STRESS)}
    if train:
        model.zero_grad(set_to_none=True)
        loss = (out[K.ENERGY] ** 2).sum() + 10.0 * (out[K.FORCES] ** 2).sum() + (out[K.STRESS] ** 2).sum()
        loss.backward()
        result.update({n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None})
    return result


@pytest.mark.parametrize("tensor_product,envelope", [("native", "basis"), ("e3nn", "weights")])
def test_chunked_equals_unchunked_inference_and_training(tensor_product, envelope):
    model = make_model(tensor_product, envelope=envelope)
    batch = batch_of(structures())
    n_edges = int(batch[K.EDGE_INDEX].shape[1])
    assert n_edges > 100 and n_edges % 37 != 0  # 37 does not divide the edge count: a short last chunk
    for train in (False, True):
        ref = outputs(model, None, batch, train)
        assert len(ref) > 3 if train else len(ref) == 3
        for chunk in (37, n_edges // 3, n_edges - 1, n_edges, 10 * n_edges):
            got = outputs(model, chunk, batch, train)
            for key, value in ref.items():
                err = float((got[key] - value).abs().max())
                assert err < 1e-10, (tensor_product, train, chunk, key, err)


def test_chunked_derivatives_match_finite_differences():
    """The recomputed backward is the derivative of the energy: forces = -dE/dx, stress = (1/V) dE/deps."""
    model = make_model(max_edges_per_chunk=97).eval()
    cu = structures()[0]
    assert check_forces_fd(model, cu, R_MAX, n_atoms=4) < 1e-6
    assert check_stress_fd(model, cu, R_MAX) < 1e-6


def test_auto_chunk_size_from_the_memory_budget(monkeypatch):
    model = make_model().eval()
    layer: MACELayer = model.layers[1]
    x = torch.zeros(1, dtype=torch.float64)
    assert layer.max_edges_per_chunk == "auto"
    assert layer.edges_per_chunk(10**6, x) == (1 << 30) // (layer.floats_per_edge() * 8)
    monkeypatch.setattr("molequi.models.mace.AUTO_CHUNK_BYTES", 8 * layer.floats_per_edge() * 50)
    assert layer.edges_per_chunk(10**6, x) == 50
    assert layer.edges_per_chunk(10**6, x.float()) == 100
    model.train()
    assert layer.edges_per_chunk(10**6, x) == 50
    model.eval()  # the neighbour table in inference keeps less per slot (test_mace_chunk_estimate.py)
    assert layer.edges_per_chunk(10**6, x, k=10) > 50
    # "auto" with a budget of 50 edges per chunk agrees with no chunking
    batch = batch_of(structures())
    auto = outputs(model, "auto", batch)
    ref = outputs(model, None, batch)
    assert all(float((auto[k] - ref[k]).abs().max()) < 1e-10 for k in ref)
    # a budget of 7 atoms' product-basis intermediates: the symmetric contraction runs over blocks of atoms
    # too (inference), the last one shorter
    per_node = max(layer.floats_per_node for layer in model.layers)
    monkeypatch.setattr("molequi.models.mace.AUTO_CHUNK_BYTES", 8 * per_node * 7)
    assert int(batch[K.NUMBERS].shape[0]) % 7 != 0
    auto = outputs(model, "auto", batch)
    assert all(float((auto[k] - ref[k]).abs().max()) < 1e-10 for k in ref)


def test_option_is_validated_and_read_from_yaml_config():
    for bad in (0, -3, "fast", 2.5, True):
        with pytest.raises(ConfigError, match="max_edges_per_chunk"):
            MACE.Config(max_edges_per_chunk=bad).validate()
    def read(**kw):
        return Config.from_dict({"model": {"name": "mace", **kw}}).model.config.max_edges_per_chunk

    assert read(max_edges_per_chunk=4096) == 4096
    assert read(max_edges_per_chunk=None) is None
    assert read(max_edges_per_chunk="auto") == read() == "auto"
    with pytest.raises(ConfigError, match="max_edges_per_chunk"):
        read(max_edges_per_chunk="fast")
