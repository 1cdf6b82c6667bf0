"""MACE's neighbour table (issue 23 item 2): the native convolution sums over neighbours as one batched
product per atom on edges laid out by ``NeighbourLayout``. Checked against e3nn's 'uvu' tensor product
(``tensor_product: e3nn``, same parameters, edge list and scatter): energies, forces, stress and the
parameter gradients of a force-training loss (second derivatives) in float64, with and without chunks; and
the layout itself against a direct construction."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from torch_geometric.data import Batch

from molequi import keys as K
from molequi.calculators.predict import build_records
from molequi.data.statistics import Statistics
from molequi.models import mace as mace_module
from molequi.models.mace import MACE
from molequi.nn.scatter import NeighbourLayout

R_MAX = 4.0
STATS = Statistics(elements=[1, 6, 8, 29], e0s={}, energy_shift=0.0, energy_scale=1.0, avg_num_neighbors=8.0)


def make_model(kind: str, **kw) -> MACE:
    torch.manual_seed(0)
    cfg = MACE.Config(r_max=R_MAX, hidden_irreps="4x0e+4x1o", max_ell=2, radial_MLP=[8, 8], MLP_irreps="4x0e",
                      correlation=2, num_interactions=2, tensor_product=kind, **kw)
    return MACE.from_config(cfg, STATS).double()


def structures() -> list[Atoms]:
    """A sheared Cu/O cell (periodic images), ethanol and an isolated atom: uneven neighbour counts."""
    cu = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 1)
    cu.set_cell(cu.cell[:] + np.array([[0.0, 0.1, 0.2], [0.1, 0.0, -0.1], [0.0, 0.2, 0.0]]), scale_atoms=True)
    cu.rattle(0.05, seed=1)
    cu[0].symbol = "O"
    mol = molecule("CH3CH2OH")
    mol.rattle(0.1, seed=2)
    return [cu, mol, Atoms("H", positions=[[0.0, 0.0, 0.0]])]


def outputs(model: MACE, batch, chunk=None, train: bool = False) -> dict[str, torch.Tensor]:
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


@pytest.mark.parametrize("envelope", ["basis", "weights"])
def test_neighbour_table_equals_e3nn_edge_list(envelope, monkeypatch):
    native, e3nn = make_model("native", envelope=envelope), make_model("e3nn", envelope=envelope)
    e3nn.load_state_dict(native.state_dict())
    batch = Batch.from_data_list(build_records(structures(), R_MAX, torch.float64, validate=False))
    n = int(batch[K.NUMBERS].shape[0])
    layout = native.neighbour_layout(batch[K.EDGE_INDEX][1], n)
    assert layout is not None and layout.rows > layout.n_edges  # a table with empty slots is in use
    calls = []
    monkeypatch.setattr(type(native.layers[0].conv), "forward",
                        lambda *a, **kw: calls.append(1) or pytest.fail("edge-list path used"))
    for train in (False, True):
        ref = outputs(e3nn, batch, train=train)
        assert len(ref) > 3 if train else len(ref) == 3
        for chunk in (None, 2 * layout.k + 1):  # whole table, and chunks of two receiving atoms
            got = outputs(native, batch, chunk, train)
            assert set(got) == set(ref)
            for key, value in ref.items():
                err = float((got[key] - value).abs().max())
                assert err < 1e-10, (envelope, train, chunk, key, err)
    assert not calls


def test_uneven_neighbour_counts_fall_back_to_the_edge_list(monkeypatch):
    """Above MAX_PADDING slots per edge the table is not built and the edge list gives the same numbers."""
    native, e3nn = make_model("native"), make_model("e3nn")
    e3nn.load_state_dict(native.state_dict())
    batch = Batch.from_data_list(build_records(structures(), R_MAX, torch.float64, validate=False))
    receiver, n = batch[K.EDGE_INDEX][1], int(batch[K.NUMBERS].shape[0])
    assert native.neighbour_layout(receiver, n) is not None
    monkeypatch.setattr(mace_module, "MAX_PADDING", 0.5)
    assert native.neighbour_layout(receiver, n) is None
    ref, got = outputs(e3nn, batch), outputs(native, batch)
    assert all(float((got[k] - ref[k]).abs().max()) < 1e-10 for k in ref)


def test_layout_slots_against_a_direct_construction():
    torch.manual_seed(3)
    n = 7
    receiver = torch.tensor([3, 0, 3, 5, 3, 0, 6, 6, 3])  # atoms 1, 2, 4 receive nothing
    values = torch.randn(receiver.shape[0], 2, dtype=torch.float64, requires_grad=True)
    layout = NeighbourLayout(receiver, n)
    assert layout.k == 4 and layout.rows == n * 4
    table = torch.zeros(n, 4, 2, dtype=torch.float64)
    filled = [0] * n
    for e, i in enumerate(receiver.tolist()):  # edges in their order, each receiver's slots filled in turn
        table[i, filled[i]] = values[e].detach()
        filled[i] += 1
    padded = layout.pad(values)
    assert torch.equal(padded.detach().reshape(n, 4, 2), table)
    weight = torch.randn_like(padded).requires_grad_(True)
    (grad,) = torch.autograd.grad((padded * weight).sum(), values, create_graph=True)
    assert torch.equal(grad, weight[layout.slots])  # the adjoint of the table is a gather
    (second,) = torch.autograd.grad((grad * padded.detach()[layout.slots]).sum(), weight)
    assert torch.equal(second[layout.slots], padded.detach()[layout.slots])
    empty = NeighbourLayout(torch.zeros(0, dtype=torch.long), 3)
    assert empty.k == 1 and empty.pad(torch.zeros(0, 5)).shape == (3, 5)
