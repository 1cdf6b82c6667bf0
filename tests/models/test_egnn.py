"""EGNN: the standalone layer's E(3) equivariance with every option, and the force field's contract."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from molequi import keys as K
from molequi.data.statistics import Statistics
from molequi.errors import ConfigError, ModelError
from molequi.models import get_model_class
from molequi.models.egnn import EGNN, EGNNLayer
from molequi.testing import assert_equivariant, check_forces_fd, check_stress_fd, predict, random_rotation

R_MAX = 4.0
STATS = Statistics(elements=[1, 6, 8, 14], avg_num_neighbors=6.0)


def fully_connected(n: int) -> torch.Tensor:
    i, j = torch.meshgrid(torch.arange(n), torch.arange(n), indexing="ij")
    keep = i != j
    return torch.stack([i[keep], j[keep]])


LAYER_OPTIONS = [
    dict(),
    dict(coords_agg="sum", normalization_factor=4.0, tanh=True, coords_range=2.0),
    dict(norm_diff=True, attention=True, messages_agg="mean"),
    dict(update_coords=False, residual=False),
]


@pytest.mark.parametrize("options", LAYER_OPTIONS)
@pytest.mark.parametrize("reflection", [False, True])
def test_layer_is_e3_equivariant(options, reflection):
    torch.manual_seed(0)
    n, hidden, edge_dim = 7, 8, 3
    layer = EGNNLayer(hidden, edge_dim, **options).double()
    with torch.no_grad():  # make the coordinate update large enough to be a real test
        if layer.phi_x is not None:
            layer.phi_x[-1].weight.mul_(1000.0)
    h = torch.randn(n, hidden, dtype=torch.float64)
    x = torch.randn(n, 3, dtype=torch.float64)
    edge_index = fully_connected(n)
    edge_attr = torch.randn(edge_index.shape[1], edge_dim, dtype=torch.float64)
    h1, x1 = layer(h, x, edge_index, edge_attr=edge_attr)
    rot = torch.as_tensor(random_rotation(np.random.default_rng(1), reflection=reflection))
    t = torch.randn(3, dtype=torch.float64)
    perm = torch.randperm(n)
    inv = torch.argsort(perm)
    # permuting nodes relabels edges: edge (a, b) becomes (inv[a], inv[b])
    h2, x2 = layer(h[perm], x[perm] @ rot.T + t, inv[edge_index], edge_attr=edge_attr)
    torch.testing.assert_close(h2, h1[perm], atol=1e-12, rtol=0)
    torch.testing.assert_close(x2, x1[perm] @ rot.T + t, atol=1e-12, rtol=0)
    if options.get("update_coords", True):
        assert (x1 - x).abs().max() > 1e-3  # coordinates really moved
    else:
        assert torch.equal(x1, x)


def test_layer_coordinate_update_formula():
    """Two nodes, sum aggregation: x_i' = x_i + (x_i - x_j) phi_x(m_ij)."""
    torch.manual_seed(1)
    layer = EGNNLayer(4, coords_agg="sum").double()
    h = torch.randn(2, 4, dtype=torch.float64)
    x = torch.tensor([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]], dtype=torch.float64)
    edge_index = torch.tensor([[1, 0], [0, 1]])  # 1 -> 0 and 0 -> 1
    _, x1 = layer(h, x, edge_index)
    d2 = torch.tensor([[9.0]], dtype=torch.float64)
    m10 = layer.phi_e(torch.cat([h[0:1], h[1:2], d2], dim=-1))  # message to 0 from 1
    expected0 = x[0] + (x[0] - x[1]) * layer.phi_x(m10)[0]
    torch.testing.assert_close(x1[0], expected0)


def test_layer_masks_and_edge_weights():
    torch.manual_seed(2)
    layer = EGNNLayer(4).double()
    h = torch.randn(3, 4, dtype=torch.float64)
    x = torch.randn(3, 3, dtype=torch.float64)
    ei = fully_connected(3)
    h1, x1 = layer(h, x, ei, node_mask=torch.tensor([1.0, 1.0, 0.0], dtype=torch.float64))
    torch.testing.assert_close(h1[2], h[2])
    torch.testing.assert_close(x1[2], x[2])
    # zero edge weight == edge absent
    keep = ~((ei[0] == 2) | (ei[1] == 2))
    w = keep.to(torch.float64)
    ha, xa = layer(h, x, ei, edge_weight=w)
    hb, xb = layer(h, x, ei[:, keep])
    torch.testing.assert_close(ha, hb)
    torch.testing.assert_close(xa, xb)
    with pytest.raises(ConfigError):
        EGNNLayer(4, coords_agg="max")


# ------------------------------------------------------------------------------------------- force field
def molecules() -> list[Atoms]:
    out = []
    for name, seed in (("CH3CH2OH", 1), ("H2O", 3)):
        a = molecule(name)
        a.rattle(0.1, seed=seed)
        out.append(a)
    return out


def crystal() -> Atoms:
    si = bulk("Si", "diamond", a=5.43)
    si.set_cell(si.cell[:] + np.array([[0.0, 0.2, 0.1], [0.1, 0.0, -0.2], [0.0, 0.1, 0.0]]), scale_atoms=True)
    si.rattle(0.05, seed=4)
    return si


def make(update_coords: bool, dtype=torch.float64, seed=0) -> EGNN:
    torch.manual_seed(seed)
    cfg = EGNN.Config(r_max=R_MAX, hidden_channels=8, num_layers=2, update_coords=update_coords)
    return EGNN.from_config(cfg, STATS).to(dtype)


def test_registered():
    assert get_model_class("egnn") is EGNN


@pytest.mark.parametrize("update_coords", [False, True])
def test_equivariance_float64(update_coords):
    m = make(update_coords)
    report = assert_equivariant(m, molecules(), R_MAX, reflections=True, n_rotations=2)
    assert report.worst() < 1e-10
    report = assert_equivariant(m, [crystal()], R_MAX, reflections=True, n_rotations=1)
    assert report.worst() < 1e-10


def test_equivariance_float32():
    m = make(True, torch.float32)
    report = assert_equivariant(
        m, molecules() + [crystal()], R_MAX, dtype=torch.float32, compute_stress=False
    )
    assert report.worst() < 1e-5


@pytest.mark.parametrize("update_coords", [False, True])
def test_forces_and_stress_finite_differences(update_coords):
    m = make(update_coords)
    assert check_forces_fd(m, molecules()[0], R_MAX, n_atoms=3) < 1e-6
    assert check_stress_fd(m, crystal(), R_MAX) < 1e-6
    stress = predict(m, [crystal()], R_MAX, compute_stress=True)[K.STRESS][0]
    assert np.abs(stress).max() > 1e-5


def test_outputs_and_locality():
    m = make(False)
    a, b = molecules()
    out = predict(m, [a, b], R_MAX)
    assert out[K.ENERGY].shape == (2,) and out[K.FORCES].shape == (len(a) + len(b), 3)
    far = b.copy()
    far.positions += np.array([R_MAX + 5.0, 0.0, 0.0])
    together = predict(m, [a + far], R_MAX)[K.ENERGY][0]
    assert together == pytest.approx(out[K.ENERGY].sum(), abs=1e-10)
    np.testing.assert_allclose(out[K.FORCES][: len(a)].sum(0), 0.0, atol=1e-10)


def test_unknown_element_and_rebuild():
    m = make(False)
    with pytest.raises(ModelError, match="Au"):
        predict(m, [Atoms("AuH", positions=[[0, 0, 0], [0, 0, 1.5]])], R_MAX)
    clone = EGNN.from_config(m.config, m.statistics).double()
    clone.load_state_dict(m.state_dict())
    np.testing.assert_array_equal(
        predict(m, molecules(), R_MAX)[K.ENERGY], predict(clone, molecules(), R_MAX)[K.ENERGY]
    )
