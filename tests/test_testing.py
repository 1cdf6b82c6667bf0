"""The shipped symmetry helpers pass a correct model, catch a broken one, and agree with finite differences."""

import ase
import numpy as np
import pytest
import torch
from ase.build import bulk

from molequi.graph.neighbors import edge_vectors
from molequi.response import energy_response
from molequi.testing import (
    assert_equivariant,
    check_forces_fd,
    check_stress_fd,
    random_rotation,
)


class PairModel(torch.nn.Module):
    """E = sum over edges of a smooth pair term; optionally broken by an x-dependent term."""

    def __init__(self, cutoff=3.0, broken=False):
        super().__init__()
        self.cutoff, self.broken = cutoff, broken

    def forward(self, data, compute_forces=True, compute_stress=False):
        def atomic(data, pos, cell):
            vec = edge_vectors(pos, data.edge_index, data.unit_shifts, cell, data.batch)
            r = vec.norm(dim=-1)
            pair = (1 - r / self.cutoff) ** 3 * torch.cos(r)
            if self.broken:
                pair = pair + 0.1 * vec[:, 0] ** 2  # depends on orientation
            return torch.zeros(pos.shape[0], dtype=pos.dtype).index_add(0, data.edge_index[1], 0.5 * pair)

        return energy_response(atomic, data, compute_forces=compute_forces, compute_stress=compute_stress)


def _molecule(seed=0, n=6):
    rng = np.random.default_rng(seed)
    return ase.Atoms(numbers=[1, 6, 8, 1, 7, 6][:n], positions=rng.normal(size=(n, 3)) * 1.2)


def test_random_rotation_is_haar_and_proper():
    rng = np.random.default_rng(1)
    rots = np.array([random_rotation(rng) for _ in range(2000)])
    assert np.allclose(np.einsum("nij,nkj->nik", rots, rots), np.eye(3), atol=1e-12)
    assert np.allclose(np.linalg.det(rots), 1.0)
    # Haar measure: E[R] = 0 and E[trace R] = 0
    assert np.abs(rots.mean(axis=0)).max() < 0.05
    assert np.linalg.det(random_rotation(rng, reflection=True)) == pytest.approx(-1.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_pair_model_is_equivariant(dtype):
    crystal = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)
    crystal.rattle(0.1, seed=2)
    rep = assert_equivariant(PairModel(), [_molecule(0), _molecule(1, 4)], cutoff=3.0, dtype=dtype,
                             reflections=True)
    assert rep.worst() < (1e-10 if dtype == torch.float64 else 1e-5)
    rep = assert_equivariant(PairModel(), [crystal], cutoff=3.0, dtype=dtype)
    assert rep.stress < (1e-10 if dtype == torch.float64 else 1e-5)


def test_broken_model_is_caught():
    with pytest.raises(AssertionError, match="not equivariant"):
        assert_equivariant(PairModel(broken=True), [_molecule(0)], cutoff=3.0)


def test_finite_differences():
    err = check_forces_fd(PairModel(), _molecule(3), cutoff=3.0)
    assert err < 1e-7
    crystal = bulk("Cu", "fcc", a=3.6, cubic=True)
    crystal.rattle(0.05, seed=4)
    crystal.set_cell(crystal.cell[:] @ np.array([[1, 0.05, 0], [0, 1, 0.02], [0, 0, 1]]), scale_atoms=True)
    assert check_stress_fd(PairModel(), crystal, cutoff=3.0) < 1e-7


def test_wrong_forces_are_caught():
    class Wrong(PairModel):
        def forward(self, data, compute_forces=True, compute_stress=False):
            out = super().forward(data, compute_forces, compute_stress)
            out["forces"] = 1.1 * out["forces"]
            return out

    with pytest.raises(AssertionError, match="forces differ"):
        check_forces_fd(Wrong(), _molecule(3), cutoff=3.0)


class OffsetModel(PairModel):
    """PairModel plus a constant -2000 eV per structure and, optionally, ``tilt`` eV x (direction of the
    first edge along x)^2: a rotation-dependent energy far below |E|."""

    def __init__(self, tilt=0.0):
        super().__init__()
        self.tilt = tilt

    def forward(self, data, compute_forces=True, compute_stress=False):
        out = super().forward(data, compute_forces, compute_stress)
        vec = edge_vectors(data.pos, data.edge_index, data.unit_shifts, data.cell, data.batch)
        first = torch.zeros(int(data.batch.max()) + 1, dtype=torch.long).scatter_reduce(
            0, data.batch[data.edge_index[1]], torch.arange(vec.shape[0]), "amin", include_self=False)
        direction = vec[first] / vec[first].norm(dim=-1, keepdim=True)
        out["energy"] = out["energy"] - 2000.0 + self.tilt * direction[:, 0] ** 2
        return out


def test_energy_tolerance_is_absolute_in_ev():
    """At |E| ~ 2000 eV a rotation-dependent 1e-8 eV is caught: the old max(1, |E|)-relative check let up to
    2e-7 eV through at "1e-10". The energy error is reported in eV."""
    structures = [_molecule(0), _molecule(1, 4)]
    rep = assert_equivariant(OffsetModel(), structures, cutoff=3.0, permutations=False)
    assert rep.energy < 1e-9  # the offset alone is invariant, to float64 resolution at 2000 eV
    with pytest.raises(AssertionError, match=r"energy changes by [0-9.e-]+ eV \(tolerance 1e-09 eV\)"):
        assert_equivariant(OffsetModel(tilt=1e-8), structures, cutoff=3.0, permutations=False)
    # ... and what the old relative measure would have said about the same model: within 1e-10
    rep = assert_equivariant(OffsetModel(tilt=1e-8), structures, cutoff=3.0, permutations=False,
                             energy_atol=1.0)
    assert 1e-9 < rep.energy < 1e-8 and rep.energy / 2000.0 < 1e-10
