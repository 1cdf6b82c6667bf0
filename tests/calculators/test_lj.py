"""The Lennard-Jones reference model: smooth at the cutoff, consistent derivatives, known values."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.calculators.lj import LennardJones as AseLJ
from ase.neighborlist import neighbor_list as ase_neighbor_list
from calc_helpers import ar_cluster, ar_fcc

from molequi.calculators import MolequiCalculator
from molequi.data.statistics import Statistics
from molequi.errors import ConfigError
from molequi.models.lj import LennardJones


def test_pair_energy_and_force_vanish_at_cutoff():
    m = LennardJones(r_max=8.5)
    eps, sig = torch.tensor(0.0104, dtype=torch.float64), torch.tensor(3.4, dtype=torch.float64)
    r = torch.tensor([8.5 - 1e-6, 8.5, 9.0], dtype=torch.float64, requires_grad=True)
    v = m.pair_energy(r, eps, sig)
    (g,) = torch.autograd.grad(v.sum(), r)
    assert abs(float(v[0])) < 1e-14 and float(v[1]) == 0.0 and float(v[2]) == 0.0
    assert abs(float(g[0])) < 1e-10 and float(g[2]) == 0.0
    # at the minimum of the plain potential, 2^(1/6) sigma: -epsilon - V(rc) - (r0 - rc) V'(rc)
    r0, rc, e, s = 2 ** (1 / 6) * 3.4, 8.5, 0.0104, 3.4
    v_c = 4 * e * ((s / rc) ** 12 - (s / rc) ** 6)
    dv_c = 4 * e * (-12 * (s / rc) ** 12 + 6 * (s / rc) ** 6) / rc
    expected = -e - v_c - (r0 - rc) * dv_c
    assert float(m.pair_energy(torch.tensor([r0], dtype=torch.float64), eps, sig)) == pytest.approx(
        expected, abs=1e-15
    )


def test_matches_ase_lj_plus_force_shift():
    """E_sf = E_ase(shifted energy) - sum over pairs (r - rc) V'(rc), on a rattled periodic crystal."""
    atoms = ar_fcc(2, rattle=0.1, seed=3)
    eps, sig, rc = 0.0104, 3.4, 8.5
    ref = atoms.copy()
    ref.calc = AseLJ(epsilon=eps, sigma=sig, rc=rc, smooth=False)
    d = ase_neighbor_list("d", atoms, rc)
    src6 = (sig / rc) ** 6
    dv_c = 4 * eps * (-12 * src6**2 + 6 * src6) / rc
    expected = ref.get_potential_energy() - 0.5 * np.sum((d - rc) * dv_c)
    atoms.calc = MolequiCalculator(LennardJones(epsilon=eps, sigma=sig, r_max=rc))
    assert atoms.get_potential_energy() == pytest.approx(expected, abs=1e-10)


def test_forces_and_stress_are_derivatives():
    atoms = ar_fcc(1, rattle=0.1, seed=1)  # 4 atoms; the cell is smaller than the cutoff (many images)
    calc = MolequiCalculator(LennardJones())
    atoms.calc = calc
    f, s = atoms.get_forces(), atoms.get_stress()
    assert np.abs(calc.calculate_numerical_forces(atoms, d=1e-4) - f).max() < 1e-8
    assert np.abs(calc.calculate_numerical_stress(atoms, d=1e-5) - s).max() < 1e-9


def test_pair_parameters_override_mixing():
    m = LennardJones(per_element={1: [0.01, 2.0], 18: [0.04, 3.0]}, pairs=[[1, 6, 0.5, 1.5]])
    assert float(m.epsilon[1, 18]) == pytest.approx(0.02)  # sqrt(0.01 * 0.04)
    assert float(m.sigma[1, 18]) == pytest.approx(2.5)
    assert float(m.epsilon[6, 1]) == 0.5 and float(m.sigma[1, 6]) == 1.5
    assert float(m.epsilon[6, 6]) == pytest.approx(0.0104)


def test_config_validation_and_from_config():
    with pytest.raises(ConfigError):
        LennardJones(r_max=-1.0)
    with pytest.raises(ConfigError):
        LennardJones(pairs=[[1, 2, 0.1]])
    m = LennardJones.from_config(LennardJones.Config(), Statistics(elements=[1, 8]))
    assert m.elements == [1, 8] and m.r_max == 8.5
    assert LennardJones().elements == list(range(1, 119))


def test_isolated_cluster_energy_sums_per_atom_energies():
    atoms = ar_cluster(13)
    atoms.calc = MolequiCalculator(LennardJones())
    assert atoms.get_potential_energies().sum() == pytest.approx(atoms.get_potential_energy(), abs=1e-12)
    assert np.abs(atoms.get_forces().sum(0)).max() < 1e-12  # Newton's third law
