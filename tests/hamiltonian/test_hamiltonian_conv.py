"""hamiltonian_conv (the former 'qhnet'): symmetric output, rotation equivariance of H (block Wigner-D),
permutation of identical atoms."""

import numpy as np
import pytest
import torch
from e3nn import o3
from torch_geometric.data import Batch, Data

pytestmark = pytest.mark.qm  # the orbital basis comes from PySCF

WATER = np.array([[0.0, 0.0, 0.117], [0.0, 0.757, -0.469], [0.0, -0.757, -0.469]])  # Å


def _predict(model, numbers, pos):
    out = model(Batch.from_data_list([Data(numbers=torch.tensor(numbers), pos=torch.as_tensor(pos))]))
    n = int(out["nao"][0])
    return out["fock"].detach().numpy().reshape(n, n)


def _ethanolish():
    rng = np.random.default_rng(3)
    return [6, 6, 8, 1, 1, 1], rng.normal(0, 1.0, (6, 3))


def test_symmetric_and_equivariant_float64(tiny_model):
    z, pos = _ethanolish()
    h = _predict(tiny_model, z, pos)
    assert h.shape == (14 * 3 + 5 * 3,) * 2
    assert np.abs(h - h.T).max() == 0.0
    torch.manual_seed(0)
    for _ in range(2):
        r = o3.rand_matrix(dtype=torch.float64).numpy()
        d = tiny_model.basis.wigner_D(z, r)
        h_rot = _predict(tiny_model, z, pos @ r.T + np.array([0.3, -1.0, 2.0]))
        assert np.abs(h_rot - d @ h @ d.T).max() < 1e-8 * max(1.0, np.abs(h).max())


def test_swapping_identical_atoms_permutes_blocks(tiny_model):
    z = [8, 1, 1]
    h = _predict(tiny_model, z, WATER + 0.05 * np.arange(9).reshape(3, 3) / 9)
    perm = [0, 2, 1]
    pos = (WATER + 0.05 * np.arange(9).reshape(3, 3) / 9)[perm]
    h_swapped = _predict(tiny_model, [z[p] for p in perm], pos)
    p = tiny_model.basis.atom_permutation(z, perm)
    assert np.abs(h_swapped - h[np.ix_(p, p)]).max() < 1e-10


def test_batch_equals_single(tiny_model):
    z1, p1 = _ethanolish()
    z2, p2 = [8, 1, 1], WATER
    out = tiny_model(
        Batch.from_data_list(
            [
                Data(numbers=torch.tensor(z1), pos=torch.as_tensor(p1)),
                Data(numbers=torch.tensor(z2), pos=torch.as_tensor(p2)),
            ]
        )
    )
    n1 = 57
    assert out["nao"].tolist() == [57, 24]
    np.testing.assert_allclose(
        out["fock"][: n1 * n1].detach().numpy().reshape(n1, n1), _predict(tiny_model, z1, p1), atol=1e-12
    )
    np.testing.assert_allclose(
        out["fock"][n1 * n1 :].detach().numpy().reshape(24, 24), _predict(tiny_model, z2, p2), atol=1e-12
    )


def test_reference_blocks_are_fitted_on_first_training_batch(water_labels):
    from molequi.data.hamiltonian import record_to_data
    from molequi.models.hamiltonian import HamiltonianConv, HamiltonianConvConfig

    torch.manual_seed(0)
    cfg = HamiltonianConvConfig(channels=4, num_layers=1, num_radial=4, radial_hidden=4)
    model = HamiltonianConv(cfg).train()
    batch = Batch.from_data_list([record_to_data(r) for r in water_labels])
    model(batch)
    assert model.ref_fitted[[1, 8]].all() and not model.ref_fitted[6]
    # the O 1s reference is the mean O 1s diagonal element (about -18.7 Ha in PBE/def2-SVP)
    mean_1s = np.mean([r.fock[0, 0] for r in water_labels])
    assert abs(float(model.ref_blocks[8, 0, 0]) - mean_1s) < 1e-5
