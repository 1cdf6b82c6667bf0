import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tiny_model  # noqa: E402

from molequi.resources import rmd17_ethanol  # noqa: E402

ETHANOL = str(rmd17_ethanol("train"))


@pytest.fixture(autouse=True)
def _tiny_registered():
    tiny_model.register()


@pytest.fixture(scope="session")
def ethanol():
    from molequi.data.rmd17_npz import read_rmd17_npz

    return read_rmd17_npz(ETHANOL)[:40]


def morse_structures(n=5, seed=0):
    """``n`` random H4O2 clusters labelled by ASE's Morse potential (smooth and cheap: a small model fits
    it)."""
    import numpy as np
    from ase import Atoms
    from ase.calculators.morse import MorsePotential

    from molequi.data.records import atoms_to_data

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        while True:
            pos = rng.uniform(0, 3.2, size=(6, 3))
            d = np.linalg.norm(pos[:, None] - pos[None], axis=-1)[np.triu_indices(6, 1)]
            if d.min() > 0.9:
                break
        atoms = Atoms("H4O2", positions=pos)
        atoms.calc = MorsePotential(epsilon=1.0, r0=1.2, rho0=4.0, rcut1=2.5, rcut2=3.5)
        out.append(atoms_to_data(atoms, energy=atoms.get_potential_energy(), forces=atoms.get_forces()))
    return out


@pytest.fixture(scope="session")
def morse_five():
    return morse_structures(5)
