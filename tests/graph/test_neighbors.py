"""The neighbour list equals ASE's exactly, as sets of (i, j, shift), on random periodic, slab and molecular cases."""

import ase
import numpy as np
import pytest
import torch
from ase.neighborlist import neighbor_list as ase_neighbor_list
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from molequi.data.records import atoms_to_data
from molequi.errors import ValueRangeError
from molequi.graph.neighbors import NeighborOverflowError, RadiusGraph, edge_vectors, neighbor_list


def as_set(i, j, S):
    return set(zip(np.asarray(i).tolist(), np.asarray(j).tolist(), map(tuple, np.asarray(S).tolist())))


def assert_same_as_ase(atoms, cutoff):
    i, j, S = ase_neighbor_list("ijS", atoms, cutoff)
    edge_index, unit_shifts, shifts = neighbor_list(atoms.positions, atoms.cell[:], atoms.pbc, cutoff)
    ours = as_set(edge_index[0], edge_index[1], unit_shifts)
    assert len(ours) == edge_index.shape[1], "duplicate edges"
    assert ours == as_set(i, j, S)
    # shift vectors and distances consistent
    assert np.allclose(shifts, unit_shifts @ atoms.cell[:])
    d = np.linalg.norm(atoms.positions[edge_index[1]] - atoms.positions[edge_index[0]] + shifts, axis=1)
    assert np.all(d <= cutoff + 1e-12) and np.all(d > 0)
    return len(ours)


@st.composite
def structures(draw):
    kind = draw(st.sampled_from(["periodic", "slab", "wire", "molecule"]))
    n = draw(st.integers(1, 12))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    cutoff = draw(st.floats(0.8, 6.0))
    # non-orthogonal cells, some smaller than the cutoff (several images)
    lengths = rng.uniform(1.2, 7.0, size=3)
    cell = np.diag(lengths) + rng.uniform(-0.45, 0.45, size=(3, 3)) * lengths[:, None]
    pbc = {"periodic": [True] * 3, "slab": [True, True, False], "wire": [False, False, True],
           "molecule": [False] * 3}[kind]
    if kind != "molecule" and draw(st.booleans()):
        pbc = list(rng.permutation(pbc))
    frac = rng.uniform(0, 1, size=(n, 3))
    positions = frac @ cell
    if kind == "molecule":
        positions = rng.normal(size=(n, 3)) * 2.0
        cell = np.zeros((3, 3)) if draw(st.booleans()) else cell
    return ase.Atoms(numbers=rng.integers(1, 30, size=n), positions=positions, cell=cell, pbc=pbc), cutoff


@settings(max_examples=300, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(structures())
def test_equals_ase_on_random_structures(case):
    atoms, cutoff = case
    assert_same_as_ase(atoms, cutoff)


def test_cell_much_smaller_than_cutoff_gives_many_images():
    atoms = ase.Atoms("Cu", positions=[[0, 0, 0]], cell=[[1.5, 0, 0], [0.7, 1.4, 0], [0.3, 0.2, 1.6]], pbc=True)
    n = assert_same_as_ase(atoms, 5.0)
    assert n > 100  # one atom, many periodic images of itself


def test_one_atom_molecule_and_isolated_pair():
    assert assert_same_as_ase(ase.Atoms("H", positions=[[0, 0, 0]]), 3.0) == 0
    assert assert_same_as_ase(ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 0.74]]), 3.0) == 2
    assert assert_same_as_ase(ase.Atoms("H2", positions=[[0, 0, 0], [0, 0, 3.5]]), 3.0) == 0


def test_slab_has_no_shift_along_vacuum():
    from ase.build import add_adsorbate, fcc111

    slab = fcc111("Cu", size=(2, 2, 3), vacuum=3.0)
    add_adsorbate(slab, "O", 1.5, "fcc")
    assert slab.pbc.tolist() == [True, True, False]
    edge_index, unit_shifts, _ = neighbor_list(slab.positions, slab.cell[:], slab.pbc, 6.0)
    assert np.all(unit_shifts[:, 2] == 0)
    assert_same_as_ase(slab, 6.0)


def test_overflow_is_reported_not_truncated():
    atoms = ase.Atoms("Cu", positions=[[0, 0, 0]], cell=np.eye(3) * 2.0, pbc=True)
    with pytest.raises(NeighborOverflowError, match="exceed max_edges=10"):
        neighbor_list(atoms.positions, atoms.cell[:], atoms.pbc, 5.0, max_edges=10)


def test_singular_periodic_cell_is_an_error():
    with pytest.raises(ValueRangeError, match="singular cell"):
        neighbor_list(np.zeros((1, 3)), np.diag([2.0, 2.0, 0.0]), [True, True, True], 3.0)


def test_radius_graph_and_edge_vectors_match_ase_distances():
    from ase.build import bulk
    from torch_geometric.data import Batch

    crystal = bulk("NaCl", "rocksalt", a=5.64) * (1, 1, 2)
    crystal.rattle(0.05, seed=0)
    mol = ase.Atoms("H2O", positions=[[0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]])
    graphs = [RadiusGraph(4.0)(atoms_to_data(a, dtype=torch.float64)) for a in (crystal, mol)]
    batch = Batch.from_data_list(graphs)
    vec = edge_vectors(batch.pos, batch.edge_index, batch.unit_shifts, batch.cell, batch.batch)
    ours = np.sort(vec.norm(dim=1).numpy())
    ref = np.sort(np.concatenate([ase_neighbor_list("d", a, 4.0) for a in (crystal, mol)]))
    np.testing.assert_allclose(ours, ref, atol=1e-12)


def test_far_apart_fragments_use_the_tree_path_and_stay_exact():
    # vesin's cell list would need 1e11 bins here (it crashes); the k-d tree path gives the exact pairs
    rng = np.random.default_rng(5)
    positions = np.concatenate([rng.normal(size=(6, 3)), rng.normal(size=(6, 3)) + [1e11, 0, 0]])
    edge_index, unit_shifts, _ = neighbor_list(positions, np.zeros((3, 3)), [False] * 3, 1.5)
    d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    brute = {(i, j) for i in range(12) for j in range(12) if i != j and d[i, j] <= 1.5}
    assert set(zip(edge_index[0].tolist(), edge_index[1].tolist())) == brute
    assert not unit_shifts.any()


def test_absurd_periodic_cells_are_named_errors_not_crashes():
    positions = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.5]])
    with pytest.raises(ValueRangeError, match="lattice vector 0 spans 1e\\+11 Å"):
        neighbor_list(positions, np.diag([1e11, 2.0, 2.0]), [True] * 3, 1.0)
    with pytest.raises(ValueRangeError, match="cell too small for a cutoff of 5.0 Å"):
        neighbor_list(positions, np.diag([0.01, 0.01, 2.0]), [True] * 3, 5.0)


@pytest.mark.parametrize("n_structures", [1, 2])
def test_edge_vectors_equal_ase_vectors_one_cell_and_batched(n_structures):
    """One structure takes the (E, 3) @ (3, 3) path, several the per-edge cell gather: both give ASE's edge
    vectors edge by edge, and their derivative in the cell (the stress) passes a finite-difference check."""
    from ase.build import bulk
    from torch_geometric.data import Batch

    frames = []
    for k in range(n_structures):
        a = bulk("Cu", "fcc", a=3.61 + 0.1 * k) * (2, 1, 1)
        a.set_cell(a.cell[:] @ np.array([[1, 0.08, 0], [0, 1, 0.05], [0, 0, 1]]), scale_atoms=True)
        a.rattle(0.05, seed=k)
        frames.append(a)
    batch = Batch.from_data_list([RadiusGraph(3.0)(atoms_to_data(a, dtype=torch.float64)) for a in frames])
    vec = edge_vectors(batch.pos, batch.edge_index, batch.unit_shifts, batch.cell, batch.batch)
    start = 0
    for k, a in enumerate(frames):
        i, j, S, D = ase_neighbor_list("ijSD", a, 3.0)
        ref = {(x, y, tuple(s)): d for x, y, s, d in zip(i, j, S.tolist(), D)}
        mine = (batch.batch[batch.edge_index[0]] == k).numpy()
        ei, us = batch.edge_index[:, mine].numpy() - start, batch.unit_shifts[mine].numpy()
        assert len(ref) == mine.sum()
        for e, (x, y, s) in enumerate(zip(ei[0], ei[1], us.tolist())):
            np.testing.assert_allclose(vec[mine][e].numpy(), ref[(x, y, tuple(s))], atol=1e-12)
        start += len(a)
    cell = batch.cell.clone().requires_grad_(True)
    weights = torch.randn(vec.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.autograd.gradcheck(lambda c: (edge_vectors(batch.pos, batch.edge_index, batch.unit_shifts, c,
                                                     batch.batch) * weights).sum(), (cell,))
