"""Every unit constant molequi uses, defined once, with its source.

Internal units: energy eV, length Å, force eV/Å, stress eV/Å^3, time fs, charge e, mass amu.
All conversions *into* those units live here; no other module writes a conversion factor.

Sources:

- CODATA 2018 (NIST SP 961, https://physics.nist.gov/cuu/Constants/): Hartree energy
  27.211386245988 eV, Bohr radius 0.529177210903 Å, elementary charge, Avogadro constant.
- Thermochemical calorie: 1 cal = 4.184 J exactly (NIST SP 811, B.8).
- 1 kcal/mol = 4184 J / N_A / e = 0.0433641 eV (CODATA 2018 N_A = 6.02214076e23, e = 1.602176634e-19 C).
"""

from __future__ import annotations

# CODATA 2018
HARTREE_TO_EV: float = 27.211386245988
BOHR_TO_ANGSTROM: float = 0.529177210903
ELEMENTARY_CHARGE_C: float = 1.602176634e-19
AVOGADRO: float = 6.02214076e23

# Thermochemical calorie, exact
CAL_TO_J: float = 4.184
KCAL_PER_MOL_TO_EV: float = 1000.0 * CAL_TO_J / AVOGADRO / ELEMENTARY_CHARGE_C  # 0.0433641043...
KCAL_PER_MOL_PER_ANGSTROM_TO_EV_PER_ANGSTROM: float = KCAL_PER_MOL_TO_EV

HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM: float = HARTREE_TO_EV / BOHR_TO_ANGSTROM
DEBYE_TO_E_ANGSTROM: float = 0.20819433  # 1 D = 3.33564e-30 C m (CODATA 2018 derived)
GHZ_TO_CM1: float = 1.0 / 29.9792458  # speed of light, exact

MEV: float = 1e-3  # eV per meV, for metrics reported in meV and meV/Å
MICRO_HARTREE: float = 1e-6  # Hartree per micro-Hartree (Hamiltonian metrics)

__all__ = [
    "HARTREE_TO_EV",
    "BOHR_TO_ANGSTROM",
    "KCAL_PER_MOL_TO_EV",
    "KCAL_PER_MOL_PER_ANGSTROM_TO_EV_PER_ANGSTROM",
    "HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM",
    "DEBYE_TO_E_ANGSTROM",
    "GHZ_TO_CM1",
    "CAL_TO_J",
    "AVOGADRO",
    "ELEMENTARY_CHARGE_C",
    "MEV",
    "MICRO_HARTREE",
]
