"""molequi models inside torch-sim (issue 20 item 4): one batched torch-sim call equals the ASE calculator
structure by structure; torch-sim's batched FIRE relaxation and NVE run with a molequi model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

ts = pytest.importorskip("torch_sim", reason="torch-sim-atomistic is in molequi's dev extra; "
                         "pip install torch-sim-atomistic")

from molequi.calculators import MolequiCalculator  # noqa: E402
from molequi.data.statistics import Statistics  # noqa: E402
from molequi.errors import ModelError  # noqa: E402
from molequi.interop.torch_sim import MolequiTorchSimModel  # noqa: E402
from molequi.models.mace import MACE  # noqa: E402


def small_mace(elements):
    torch.manual_seed(0)
    cfg = MACE.Config(r_max=4.0, max_ell=1, hidden_irreps="8x0e+8x1o", correlation=2, radial_MLP=[8],
                      MLP_irreps="4x0e")
    return MACE.from_config(cfg, Statistics(elements=elements, avg_num_neighbors=8.0)).double().eval()


def _compare(model, frames, stress):
    wrapped = MolequiTorchSimModel(model, dtype=torch.float64)
    state = ts.initialize_state(frames, torch.device("cpu"), torch.float64)
    out = wrapped(state)
    assert out["energy"].shape == (len(frames),)
    start = 0
    for b, atoms in enumerate(frames):
        a = atoms.copy()
        a.calc = MolequiCalculator(model)
        n = len(a)
        assert float(out["energy"][b]) == pytest.approx(a.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(out["forces"][start:start + n].numpy(), a.get_forces(), atol=1e-10)
        if stress:
            from ase.stress import full_3x3_to_voigt_6_stress

            np.testing.assert_allclose(full_3x3_to_voigt_6_stress(out["stress"][b].numpy()), a.get_stress(),
                                       atol=1e-10)
        start += n
    return out


def test_periodic_batch_equals_ase_calculator():
    model = small_mace([8, 29])
    frames = []
    for i, rep in enumerate([(2, 2, 2), (3, 2, 2), (2, 2, 1)]):
        a = bulk("Cu", "fcc", a=3.61, cubic=True).repeat(rep)
        a.numbers[0] = 8
        a.rattle(0.05, seed=i)
        frames.append(a)
    out = _compare(model, frames, stress=True)
    assert "stress" in out


def test_molecule_batch_equals_ase_calculator():
    model = small_mace([1, 6, 8])
    frames = [molecule(name) for name in ("CH3CH2OH", "H2O", "C6H6", "CH4")]
    for a in frames:
        a.rattle(0.02, seed=1)
    out = _compare(model, frames, stress=False)
    assert "stress" not in out


def test_batched_fire_relaxation_reaches_ase_minima():
    """torch-sim's FIRE on 3 clusters at once ends where ASE's FIRE with the ASE calculator ends."""
    from ase.optimize import FIRE

    model = small_mace([1, 6, 8])
    frames = [molecule(name) for name in ("CH3CH2OH", "H2O", "CH4")]
    for a in frames:
        a.rattle(0.05, seed=2)
    wrapped = MolequiTorchSimModel(model, dtype=torch.float64, compute_stress=False)
    final = ts.optimize(system=frames, model=wrapped, optimizer=ts.optimizers.fire,
                        convergence_fn=ts.generate_force_convergence_fn(force_tol=1e-4, include_cell_forces=False),
                        max_steps=3000)
    energies = wrapped(final)["energy"]
    for b, atoms in enumerate(frames):
        a = atoms.copy()
        a.calc = MolequiCalculator(model)
        FIRE(a, logfile=None).run(fmax=1e-4, steps=3000)
        assert float(energies[b]) == pytest.approx(a.get_potential_energy(), abs=1e-6)


def test_batched_nve_conserves_energy():
    model = small_mace([8, 29])
    frames = [bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2)) for _ in range(2)]
    for i, a in enumerate(frames):
        a.rattle(0.05, seed=i)
    wrapped = MolequiTorchSimModel(model, dtype=torch.float64, compute_stress=False)
    reporter_energies = []
    state = ts.initialize_state(frames, torch.device("cpu"), torch.float64)
    init_fn, step_fn = ts.nve(model=wrapped, dt=torch.tensor(0.001 * ts.units.MetalUnits.time),
                             kT=torch.tensor(300 * ts.units.MetalUnits.temperature))
    md = init_fn(state, seed=0)
    for _ in range(50):
        md = step_fn(md, dt=torch.tensor(0.001 * ts.units.MetalUnits.time))
        kinetic = ts.calc_kinetic_energy(masses=md.masses, momenta=md.momenta, system_idx=md.system_idx)
        reporter_energies.append((md.energy + kinetic).numpy())
    total = np.array(reporter_energies)  # (steps, systems)
    assert np.all(np.abs(total - total[0]) < 2e-3), np.abs(total - total[0]).max()
    assert np.abs(md.positions.numpy() - np.concatenate([a.positions for a in frames])).max() > 1e-3


def test_unknown_element_is_named():
    wrapped = MolequiTorchSimModel(small_mace([1, 8]), dtype=torch.float64)
    with pytest.raises(ModelError, match=r"elements \[6\]"):
        wrapped(ts.initialize_state([molecule("CH4")], torch.device("cpu"), torch.float64))


def test_batched_nve_reuses_neighbor_lists_across_wraps():
    """torch-sim wraps positions into the cell every step; the Verlet-skin list follows the wrapped atoms
    instead of rebuilding, and the trajectory equals one with a list rebuilt every call (skin 0)."""
    model = small_mace([29])
    frames = [bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2)) for _ in range(2)]
    for i, a in enumerate(frames):
        a.rattle(0.05, seed=i)
        a.positions[:4] -= 0.02  # atoms at the origin start outside the cell: wrapped at the first step
    dt = torch.tensor(0.002 * ts.units.MetalUnits.time)
    runs = []
    for skin in (0.5, 0.0):
        wrapped = MolequiTorchSimModel(model, dtype=torch.float64, skin=skin)
        init_fn, step_fn = ts.nve(model=wrapped, dt=dt, kT=torch.tensor(600 * ts.units.MetalUnits.temperature))
        md = init_fn(ts.initialize_state(frames, torch.device("cpu"), torch.float64), seed=0)
        for _ in range(20):
            md = step_fn(md, dt=dt)
        runs.append((md, wrapped.neighbor_caches))
    (a, caches), (b, fresh) = runs
    assert all(c.n_wraps > 0 and c.n_builds < c.n_calls for c in caches)
    assert all(c.n_builds == c.n_calls for c in fresh)
    np.testing.assert_allclose(a.positions.numpy(), b.positions.numpy(), atol=1e-10)
    np.testing.assert_allclose(a.forces.numpy(), b.forces.numpy(), atol=1e-9)
