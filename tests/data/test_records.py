"""ase.Atoms <-> record conversion, batching, statistics, splits."""

import ase
import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from torch_geometric.loader import DataLoader

from molequi.data.datasets import GraphDataset, random_split, read_index_file
from molequi.data.records import atoms_to_data, data_to_atoms
from molequi.data.statistics import compute_statistics, fit_e0s
from molequi.errors import DatasetError, FormatError, ValueRangeError


def test_round_trip_keeps_everything():
    atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
    atoms.rattle(0.05, seed=0)
    atoms.calc = EMT()
    e, f, s = atoms.get_potential_energy(), atoms.get_forces(), atoms.get_stress()
    d = atoms_to_data(atoms, energy=e, forces=f, stress=s, charges=np.arange(4) * 0.1,
                      extras={"tags": np.array([0, 1, 1, 2]), "dipole": np.array([0.1, 0.2, 0.3])},
                      dtype=torch.float64)
    assert d.stress.shape == (1, 3, 3) and d.cell.shape == (1, 3, 3) and d.pbc.shape == (1, 3)
    assert d.tags.shape == (4,) and d.dipole.shape == (1, 3)
    back = data_to_atoms(d)
    np.testing.assert_allclose(back.positions, atoms.positions)
    np.testing.assert_allclose(back.cell[:], atoms.cell[:])
    assert back.pbc.tolist() == [True] * 3
    assert back.get_potential_energy() == pytest.approx(e)
    np.testing.assert_allclose(back.get_forces(), f)
    np.testing.assert_allclose(back.get_stress(), s, atol=1e-14)  # Voigt in, Voigt out
    np.testing.assert_allclose(back.get_initial_charges(), np.arange(4) * 0.1)


def test_batching_through_pyg_dataloader():
    mols = [molecule(n) for n in ("H2O", "CH4", "C2H6")]
    records = [atoms_to_data(m, energy=-float(i), forces=np.zeros((len(m), 3))) for i, m in enumerate(mols)]
    batch = next(iter(DataLoader(GraphDataset(records, cutoff=3.0), batch_size=3)))
    assert batch.num_graphs == 3
    assert batch.energy.tolist() == [0.0, -1.0, -2.0]
    assert batch.cell.shape == (3, 3, 3) and batch.pbc.shape == (3, 3)
    assert batch.pos.shape == (3 + 5 + 8, 3)
    # edges of the second molecule point into its own atoms
    second = batch.batch[batch.edge_index[0]] == 1
    assert batch.edge_index[:, second].min() >= 3 and batch.edge_index[:, second].max() < 8


@pytest.mark.parametrize("bad, error, message", [
    (dict(forces=np.zeros((2, 3))), FormatError, r"forces have shape \(2, 3\), expected \(3, 3\)"),
    (dict(energy=[1.0, 2.0]), FormatError, "energy must be one number"),
    (dict(energy=float("nan")), ValueRangeError, "energy contains NaN"),
    (dict(forces=np.full((3, 3), np.inf)), ValueRangeError, "forces contains NaN or inf"),
    (dict(stress=np.zeros(5)), FormatError, "stress has shape"),
])
def test_bad_labels_are_named_errors(bad, error, message):
    with pytest.raises(error, match=message) as info:
        atoms_to_data(molecule("H2O"), source="water.xyz", frame=7, **bad)
    assert "water.xyz, frame 7" in str(info.value)


def test_bad_structures_are_named_errors():
    with pytest.raises(ValueRangeError, match="empty structure"):
        atoms_to_data(ase.Atoms())
    with pytest.raises(ValueRangeError, match="atoms closer than 0.1 Å"):
        atoms_to_data(ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.05]]))
    with pytest.raises(ValueRangeError, match=r"minimum distance 0 Å"):  # exact duplicates
        atoms_to_data(ase.Atoms("H2", positions=[[1, 1, 1], [1, 1, 1]]))
    with pytest.raises(ValueRangeError, match="atoms closer than"):  # through a periodic image
        atoms_to_data(ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 2.96]], cell=np.eye(3) * 3, pbc=True))
    with pytest.raises(ValueRangeError, match="singular cell"):
        atoms_to_data(ase.Atoms("H", cell=np.diag([2.0, 2.0, 0.0]), pbc=True))
    with pytest.raises(ValueRangeError, match="positions contains NaN"):
        atoms_to_data(ase.Atoms("H", positions=[[np.nan, 0, 0]]))
    with pytest.raises(ValueRangeError, match="positions overflow torch.float32"):
        atoms_to_data(ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 1e39]]), dtype=torch.float32)
    # a slab with a zero vacuum vector is fine when that direction is not periodic
    atoms_to_data(ase.Atoms("H", cell=np.diag([2.0, 2.0, 0.0]), pbc=[True, True, False]))
    # the threshold is a parameter
    atoms_to_data(ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.05]]), min_distance=0.01)


def test_e0s_by_least_squares_recover_known_references():
    rng = np.random.default_rng(0)
    e0 = {1: -13.6, 6: -1030.0, 8: -2040.0}
    records = []
    for _ in range(20):
        n = rng.integers(1, 5, size=3)
        numbers = [1] * n[0] + [6] * n[1] + [8] * n[2]
        atoms = ase.Atoms(numbers=numbers, positions=np.arange(len(numbers))[:, None] * [1.0, 0, 0])
        energy = sum(e0[z] for z in numbers) + rng.normal() * 1e-3
        records.append(atoms_to_data(atoms, energy=energy, forces=np.ones((len(numbers), 3))))
    fitted = fit_e0s(records, [1, 6, 8])
    for z in e0:
        assert fitted[z] == pytest.approx(e0[z], abs=2e-3)
    stats = compute_statistics(records, cutoff=1.5)
    assert stats.force_rms == pytest.approx(1.0)
    assert stats.energy_shift == pytest.approx(0.0, abs=1e-3)
    # atoms on a line 1 Å apart: interior atoms have 2 neighbours within 1.5 Å, the ends 1
    n_atoms = sum(r.num_nodes for r in records)
    assert stats.avg_num_neighbors == pytest.approx(2 * (n_atoms - len(records)) / n_atoms)
    assert stats.from_dict(stats.to_dict()) == stats


def test_splits_by_fraction_and_by_index_file(tmp_path):
    train, valid, test = random_split(100, [0.8, 0.1, 0.1], seed=3)
    assert (len(train), len(valid), len(test)) == (80, 10, 10)
    assert len(set(train) | set(valid) | set(test)) == 100
    again = random_split(100, [0.8, 0.1, 0.1], seed=3)
    assert all(np.array_equal(a, b) for a, b in zip((train, valid, test), again))
    assert not np.array_equal(train, random_split(100, [0.8, 0.1, 0.1], seed=4)[0])
    p = tmp_path / "index_train_01.csv"
    p.write_text("3\n1\n4\n")
    assert read_index_file(p, n=10).tolist() == [3, 1, 4]
    with pytest.raises(DatasetError, match="out of range"):
        read_index_file(p, n=4)
    with pytest.raises(DatasetError, match="split index file not found"):
        read_index_file(tmp_path / "missing.csv")
    p.write_text("1\nx\n")
    with pytest.raises(DatasetError, match="line 2"):
        read_index_file(p)
