"""vesin-torch's neighbour list (molequi.graph.vesin) equals ASE's, as sets of (i, j, shift), and molequi's
numpy list edge for edge, on periodic (triclinic, cells smaller than the cutoff), slab, wire and molecular
systems."""

import ase
import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.neighborlist import neighbor_list as ase_neighbor_list
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from molequi.errors import ValueRangeError
from molequi.graph.neighbors import NeighborOverflowError, neighbor_list
from molequi.graph.vesin import torch_neighbor_list


def as_set(i, j, S):
    return set(zip(np.asarray(i).tolist(), np.asarray(j).tolist(), map(tuple, np.asarray(S).tolist())))


def check(atoms, cutoff, dtype=torch.float64, numpy_list=True):
    positions = torch.tensor(atoms.positions, dtype=dtype)
    cell = torch.tensor(atoms.cell[:], dtype=dtype)
    edge_index, unit_shifts, shifts = torch_neighbor_list(positions, cell, torch.tensor(atoms.pbc), cutoff)
    assert edge_index.dtype == unit_shifts.dtype == torch.long and shifts.dtype == dtype
    ours = as_set(edge_index[0], edge_index[1], unit_shifts)
    assert len(ours) == edge_index.shape[1], "duplicate edges"
    if dtype == torch.float64:
        assert ours == as_set(*ase_neighbor_list("ijS", atoms, cutoff))
    if dtype == torch.float64 and numpy_list:
        # molequi's numpy list (vesin on numpy arrays): the same edges, compared as sorted arrays
        ref_index, ref_shifts, _ = neighbor_list(atoms.positions, atoms.cell[:], atoms.pbc, cutoff)
        key = np.lexsort((*ref_shifts.T[::-1], ref_index[1], ref_index[0]))
        ours_sorted = np.lexsort((*unit_shifts.numpy().T[::-1], edge_index[1].numpy(), edge_index[0].numpy()))
        assert np.array_equal(edge_index.numpy()[:, ours_sorted], ref_index[:, key])
        assert np.array_equal(unit_shifts.numpy()[ours_sorted], ref_shifts[key])
    assert bool((edge_index[0][1:] >= edge_index[0][:-1]).all()), "grouped by sender"
    assert torch.allclose(shifts, unit_shifts.to(dtype) @ cell)
    d = (positions[edge_index[1]] - positions[edge_index[0]] + shifts).norm(dim=1)
    assert bool((d > 0).all()) and bool((d <= cutoff * (1 + 1e-6)).all())
    return len(ours)


@st.composite
def structures(draw):
    kind = draw(st.sampled_from(["periodic", "slab", "wire", "molecule"]))
    n = draw(st.integers(1, 10))
    rng = np.random.default_rng(draw(st.integers(0, 2**31 - 1)))
    cutoff = draw(st.floats(0.8, 5.0))
    lengths = rng.uniform(1.2, 7.0, size=3)
    cell = np.diag(lengths) + rng.uniform(-0.45, 0.45, size=(3, 3)) * lengths[:, None]  # triclinic
    pbc = {"periodic": [True] * 3, "slab": [True, True, False], "wire": [False, False, True],
           "molecule": [False] * 3}[kind]
    positions = rng.uniform(0, 1, size=(n, 3)) @ cell
    if kind == "molecule":
        positions = rng.normal(size=(n, 3)) * 2.0
    return ase.Atoms(numbers=np.ones(n, dtype=int), positions=positions, cell=cell, pbc=pbc), cutoff


@settings(max_examples=50, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
@given(structures())
def test_equals_ase_and_numpy_list_on_random_structures(case):
    check(*case)


def test_named_systems():
    cu = bulk("Cu", "fcc", a=3.6)  # one atom, cell far smaller than the cutoff: many self-images
    assert check(cu, 5.0) == len(ase_neighbor_list("i", cu, 5.0)) == 42  # 12 + 6 + 24 shells
    assert check(bulk("Cu", "fcc", a=3.6, cubic=True).repeat(2), 4.0) > 0
    ethanol = molecule("CH3CH2OH")
    assert check(ethanol, 3.0) == len(ase_neighbor_list("i", ethanol, 3.0))
    slab = bulk("Cu", "fcc", a=3.6, cubic=True).repeat((2, 2, 1))
    slab.pbc = [True, True, False]
    check(slab, 4.0)
    slab.cell[2] = 0.0  # no vector along the open direction (which neighbor_list refuses): completed by _box
    check(slab, 4.0, numpy_list=False)
    check(ethanol, 3.0, dtype=torch.float32)


def test_errors_and_empty():
    cu = bulk("Cu", "fcc", a=3.6)
    pos, cell = torch.tensor(cu.positions), torch.tensor(cu.cell[:])
    with pytest.raises(NeighborOverflowError):
        torch_neighbor_list(pos, cell, [True] * 3, 5.0, max_edges=10)
    with pytest.raises(ValueRangeError):
        torch_neighbor_list(pos, torch.zeros(3, 3, dtype=torch.float64), [True] * 3, 5.0)
    with pytest.raises(ValueRangeError):
        torch_neighbor_list(pos, cell, [True] * 3, 0.0)
    edge_index, unit_shifts, shifts = torch_neighbor_list(torch.zeros(0, 3), torch.zeros(3, 3), [False] * 3,
                                                          3.0)
    assert edge_index.shape == (2, 0) and unit_shifts.shape == shifts.shape == (0, 3)
