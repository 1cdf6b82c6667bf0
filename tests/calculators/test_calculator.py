"""MolequiCalculator: equals direct model calls; stress, neighbour-list reuse, committees, checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.constraints import FixAtoms
from calc_helpers import ar_cluster, ar_fcc, save_lj_checkpoint

from molequi import keys as K
from molequi.calculators import MolequiCalculator
from molequi.data.records import atoms_to_data
from molequi.errors import CheckpointError, ModelError
from molequi.graph.neighbors import RadiusGraph
from molequi.models.lj import LennardJones
from molequi.simulate import MDSettings, relax, run_md


@pytest.mark.parametrize("periodic", [True, False])
def test_results_equal_direct_model_call(periodic):
    atoms = ar_fcc(2, rattle=0.1, seed=2) if periodic else ar_cluster(13)
    model = LennardJones()
    atoms.calc = MolequiCalculator(model)
    data = RadiusGraph(model.r_max)(atoms_to_data(atoms, dtype=torch.float64))
    out = model(data, compute_forces=True, compute_stress=periodic)
    assert atoms.get_potential_energy() == pytest.approx(float(out[K.ENERGY][0]), abs=1e-12)
    assert atoms.get_potential_energy() == atoms.get_potential_energy(force_consistent=True)
    np.testing.assert_allclose(atoms.get_forces(), out[K.FORCES].detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(atoms.get_potential_energies(), out[K.ENERGIES].detach().numpy(), atol=1e-12)
    if periodic:
        s = out[K.STRESS][0].detach().numpy()
        voigt = [s[0, 0], s[1, 1], s[2, 2], s[1, 2], s[0, 2], s[0, 1]]
        np.testing.assert_allclose(atoms.get_stress(), voigt, atol=1e-14)
    else:
        assert "stress" not in atoms.calc.results


def test_stress_matches_finite_difference_of_strain():
    atoms = ar_fcc(2, a=5.0, rattle=0.1, seed=4)  # compressed: sizeable stress
    atoms.set_cell(atoms.cell[:] @ np.array([[1, 0.03, 0], [0, 1, 0.02], [0, 0, 1]]), scale_atoms=True)
    calc = MolequiCalculator(LennardJones(), skin=0.0)
    atoms.calc = calc
    s = atoms.get_stress()
    num = calc.calculate_numerical_stress(atoms, d=1e-5)
    assert np.abs(s).max() > 1e-3
    np.testing.assert_allclose(s, num, atol=1e-9)


def test_unknown_element_is_a_model_error():
    atoms = ar_cluster(4)
    atoms.numbers[1] = 29
    atoms.calc = MolequiCalculator(LennardJones(elements=[18]))
    with pytest.raises(ModelError, match=r"Cu \(Z=29\).*not trained on"):
        atoms.get_potential_energy()


def test_neighbor_reuse_equals_rebuild_across_md():
    """Two NVE runs from the same state, skin 0.3 Å (reused list) vs 0 (rebuilt every step): identical."""
    runs = []
    for skin in (0.3, 0.0):
        atoms = ar_fcc(2, rattle=0.05, seed=5)
        calc = MolequiCalculator(LennardJones(), skin=skin)
        run_md(atoms, calc, MDSettings(ensemble="nve", temperature=300, timestep=5.0, steps=60, seed=1))
        runs.append((atoms, calc))
    (a, ca), (b, cb) = runs
    assert cb.neighbors.n_builds == cb.neighbors.n_calls
    assert 1 < ca.neighbors.n_builds < ca.neighbors.n_calls  # reused, and rebuilt when atoms moved
    np.testing.assert_allclose(a.positions, b.positions, rtol=0, atol=1e-12)
    np.testing.assert_allclose(a.get_forces(), b.get_forces(), rtol=0, atol=1e-12)
    assert abs(a.get_potential_energy() - b.get_potential_energy()) < 1e-12


def test_neighbor_list_rebuilt_when_cell_or_numbers_change():
    atoms = ar_fcc(2)
    calc = MolequiCalculator(LennardJones(), skin=1.0)
    atoms.calc = calc
    atoms.get_potential_energy()
    atoms.positions[0] += 0.1  # within skin / 2: reused
    atoms.get_potential_energy()
    assert calc.neighbors.n_builds == 1
    atoms.set_cell(atoms.cell[:] * 1.01, scale_atoms=True)
    e_reused = atoms.get_potential_energy()
    assert calc.neighbors.n_builds == 2
    fresh = atoms.copy()
    fresh.calc = MolequiCalculator(LennardJones(), skin=0.0)
    assert e_reused == pytest.approx(fresh.get_potential_energy(), abs=1e-12)
    del atoms[-1]
    atoms.get_potential_energy()
    assert calc.neighbors.n_builds == 3


def test_wrapped_atoms_keep_the_list_and_equal_a_fresh_one():
    """Atoms moved across the cell's faces and wrapped back (as torch-sim's integrators do each step): no
    rebuild, and energy, forces and stress equal a calculator that rebuilds (skin 0) to round-off."""
    atoms = ar_fcc(2, rattle=0.05, seed=7)
    atoms.set_cell(atoms.cell[:] @ np.array([[1, 0.1, 0], [0, 1, 0.05], [0, 0, 1]]), scale_atoms=True)  # skewed
    calc = MolequiCalculator(LennardJones(), skin=1.0)
    atoms.calc = calc
    atoms.get_potential_energy()
    rng = np.random.default_rng(0)
    for _ in range(3):
        atoms.positions += rng.normal(scale=0.04, size=atoms.positions.shape)  # within skin / 2 in total
        atoms.positions[:5] += rng.integers(-2, 3, size=(5, 3)) @ atoms.cell[:]  # whole lattice vectors
        atoms.wrap()
        fresh = atoms.copy()
        fresh.calc = MolequiCalculator(LennardJones(), skin=0.0)
        assert atoms.get_potential_energy() == pytest.approx(fresh.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(atoms.get_forces(), fresh.get_forces(), atol=1e-10)
        np.testing.assert_allclose(atoms.get_stress(), fresh.get_stress(), atol=1e-12)
    assert calc.neighbors.n_builds == 1 and calc.neighbors.n_wraps > 5
    atoms.positions[0] += 0.6  # past skin / 2 (with the wraps taken out): rebuilt
    atoms.get_potential_energy()
    assert calc.neighbors.n_builds == 2


def test_committee_spread():
    atoms = ar_fcc(2, rattle=0.1, seed=6)
    same = MolequiCalculator(models=[LennardJones(), LennardJones()])
    atoms.calc = same
    atoms.get_stress()
    r = same.results
    assert r["energy_std"] == 0.0 and np.all(r["forces_std"] == 0) and np.all(r["stress_std"] == 0)
    assert r["forces_std"].shape == (len(atoms), 3) and r["forces_std_norm"].shape == (len(atoms),)
    members = [LennardJones(sigma=3.40), LennardJones(sigma=3.45), LennardJones(sigma=3.35, r_max=8.0)]
    diff = MolequiCalculator(models=members)
    atoms.calc = diff
    e, f = atoms.get_potential_energy(), atoms.get_forces()
    singles = []
    for m in members:
        b = atoms.copy()
        b.calc = MolequiCalculator(m)
        singles.append((b.get_potential_energy(), b.get_forces()))
    es = np.array([s[0] for s in singles])
    fs = np.stack([s[1] for s in singles])
    assert e == pytest.approx(es.mean(), abs=1e-12)
    np.testing.assert_allclose(f, fs.mean(0), atol=1e-12)
    assert diff.results["energy_std"] == pytest.approx(es.std(), abs=1e-12) and diff.results["energy_std"] > 0
    np.testing.assert_allclose(diff.results["forces_std"], fs.std(0), atol=1e-12)
    np.testing.assert_allclose(diff.results["forces_std_norm"], np.sqrt(fs.var(0).sum(-1)), atol=1e-12)
    assert np.all(diff.results["stress_std"] > 0)


def test_from_checkpoint_single_and_committee(tmp_path):
    p1 = save_lj_checkpoint(tmp_path / "a.pt", elements=[18])
    p2 = save_lj_checkpoint(tmp_path / "b.pt", elements=[18], sigma=3.45)
    atoms = ar_cluster(8)
    atoms.calc = MolequiCalculator.from_checkpoint(p1)
    ref = atoms.copy()
    ref.calc = MolequiCalculator(LennardJones(elements=[18]))
    assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(), abs=1e-12)
    atoms.calc = MolequiCalculator.from_checkpoint([p1, p2])
    atoms.get_potential_energy()
    assert atoms.calc.is_committee and atoms.calc.results["energy_std"] > 0
    with pytest.raises(CheckpointError):
        MolequiCalculator.from_checkpoint(tmp_path / "missing.pt")
    # the precision by name, as the constructor and from_mace take it (a TypeError inside load_model before)
    atoms.calc = MolequiCalculator.from_checkpoint(p1, dtype="float32")
    assert atoms.get_potential_energy() == pytest.approx(ref.get_potential_energy(), rel=1e-5)


def test_float32_dtype():
    atoms = ar_fcc(2, rattle=0.1, seed=2)
    atoms.calc = MolequiCalculator(LennardJones(), dtype=torch.float32)
    e32 = atoms.get_potential_energy()
    ref = atoms.copy()
    ref.calc = MolequiCalculator(LennardJones())
    assert e32 == pytest.approx(ref.get_potential_energy(), rel=1e-5)
    named = atoms.copy()
    named.calc = MolequiCalculator(LennardJones(), dtype="float32")  # as ASE users write it (MACECalculator)
    assert named.calc.dtype == torch.float32 and named.get_potential_energy() == e32
    with pytest.raises(ModelError, match="float64"):
        MolequiCalculator(LennardJones(), dtype="half")


def test_fixatoms_honoured_in_md_and_relax():
    atoms = ar_cluster(13)
    fixed = [0, 3, 7]
    atoms.set_constraint(FixAtoms(indices=fixed))
    start = atoms.positions.copy()
    atoms.calc = MolequiCalculator(LennardJones())
    run_md(atoms, settings=MDSettings(ensemble="nvt", temperature=100, timestep=2.0, steps=20, seed=0))
    np.testing.assert_array_equal(atoms.positions[fixed], start[fixed])
    assert np.abs(atoms.positions - start).max() > 1e-3
    res = relax(atoms, optimizer="fire", fmax=0.01, steps=300)
    np.testing.assert_array_equal(atoms.positions[fixed], start[fixed])
    assert res.converged and res.fmax < 0.01


@pytest.mark.slow
def test_cell_relax_with_frechet_filter_reduces_stress():
    atoms = ar_fcc(2, a=5.0, rattle=0.02, seed=7)  # compressed argon: large positive-pressure stress
    atoms.calc = MolequiCalculator(LennardJones())
    s0 = np.abs(atoms.get_stress()).max()
    v0 = atoms.get_volume()
    res = relax(atoms, optimizer="bfgs", fmax=0.005, steps=200, cell=True)
    s1 = np.abs(atoms.get_stress()).max()
    assert res.converged
    assert s1 < 0.05 * s0 and atoms.get_volume() > v0


def _small_mace():
    from molequi.data.statistics import Statistics
    from molequi.models.mace import MACE

    torch.manual_seed(0)
    cfg = MACE.Config(
        r_max=4.0, max_ell=1, hidden_irreps="8x0e+8x1o", correlation=2, radial_MLP=[8], MLP_irreps="4x0e"
    )
    return MACE.from_config(cfg, Statistics(elements=[29], avg_num_neighbors=12.0)).double().eval()


def test_mace_through_calculator_equals_model_and_fd_stress():
    from ase.build import bulk

    model = _small_mace()
    atoms = bulk("Cu", "fcc", a=3.61).repeat(2)
    atoms.rattle(0.05, seed=0)
    calc = MolequiCalculator(model)
    atoms.calc = calc
    data = RadiusGraph(model.r_max)(atoms_to_data(atoms, dtype=torch.float64))
    out = model(data, compute_forces=True, compute_stress=True)
    assert atoms.get_potential_energy() == pytest.approx(float(out[K.ENERGY][0]), abs=1e-10)
    np.testing.assert_allclose(atoms.get_forces(), out[K.FORCES].detach().numpy(), atol=1e-10)
    np.testing.assert_allclose(atoms.get_stress(), calc.calculate_numerical_stress(atoms, d=1e-5), atol=1e-8)
