"""EDM's distance-bond metrics on hand-built molecules with known answers."""

import numpy as np
import pytest

from molequi.data.bonds import bond_order, bond_order_matrix, build_rdkit_molecule
from molequi.data.molecules import Molecule
from molequi.errors import InputError
from molequi.tasks.generation_metrics import atom_stability, molecule_report, validity

# methane: C-H 1.09 Å along tetrahedral directions
_TET = np.array([[1, 1, 1], [1, -1, -1], [-1, 1, -1], [-1, -1, 1]]) / np.sqrt(3)
METHANE = (np.array([6, 1, 1, 1, 1]), np.vstack([[0, 0, 0], 1.09 * _TET]))


def ethylene():
    # C=C 1.33 Å, C-H 1.087 Å, HCH 117.4 deg, planar
    a = np.deg2rad(121.3)
    pos = [[0, 0, 0.665], [0, 0, -0.665]]
    for c, s in ((0.665, 1), (-0.665, -1)):
        for sign in (1, -1):
            pos.append([sign * 1.087 * np.sin(np.pi - a), 0, c + s * 1.087 * np.cos(np.pi - a)])
    return np.array([6, 6, 1, 1, 1, 1]), np.array(pos)


def test_bond_order_thresholds():
    # C-C: single < 1.64, double < 1.39, triple < 1.23 Å (154+10, 134+5, 120+3 pm)
    assert bond_order("C", "C", 1.54) == 1
    assert bond_order("C", "C", 1.63) == 1
    assert bond_order("C", "C", 1.65) == 0
    assert bond_order("C", "C", 1.34) == 2
    assert bond_order("C", "C", 1.20) == 3
    assert bond_order("C", "O", 1.21) == 2  # C=O: 120 + 5 pm
    assert bond_order("C", "O", 1.12) == 3  # 113 + 3 pm
    assert bond_order("H", "H", 0.74) == 1
    assert bond_order("C", "H", 1.09) == 1
    assert bond_order("H", "C", 1.20) == 0  # 109 + 10 pm
    assert bond_order("C", "F", 1.30) == 1  # no C=F entry: never double


def test_methane_stable():
    z, pos = METHANE
    b = bond_order_matrix(z, pos)
    assert b.sum(1).tolist() == [4, 1, 1, 1, 1]
    assert atom_stability(z, pos).all()
    r = molecule_report([Molecule(z, pos)])
    assert r["atom_stability"] == 100.0 and r["molecule_stability"] == 100.0
    assert r["validity"] == 100.0 and r["smiles"] == ["C"]


def test_stretched_bond_unstable():
    z, pos = METHANE
    pos = pos.copy()
    pos[1] *= 1.25 / 1.09  # C-H 1.25 Å > 1.19 Å: no bond
    st = atom_stability(z, pos)
    assert st.tolist() == [False, False, True, True, True]
    r = molecule_report([Molecule(z, pos), Molecule(*METHANE)])
    assert r["atom_stability"] == pytest.approx(100 * 8 / 10)
    assert r["molecule_stability"] == 50.0
    # EDM keeps the largest fragment (CH3 radical sanitises): valid but not strictly valid
    assert r["validity"] == 100.0 and r["validity_strict"] == 50.0


def test_ethylene_double_bond():
    z, pos = ethylene()
    b = bond_order_matrix(z, pos)
    assert b[0, 1] == 2 and b[1, 0] == 2
    assert atom_stability(z, pos).all()
    smiles, single = validity(build_rdkit_molecule(z, pos))
    assert smiles == "C=C" and single


def test_uniqueness_and_novelty():
    z, pos = METHANE
    ze, pe = ethylene()
    mols = [Molecule(z, pos), Molecule(z, pos + 1.0), Molecule(ze, pe)]
    r = molecule_report(mols, training_smiles={"C"})
    assert r["uniqueness"] == pytest.approx(200 / 3)
    assert r["novelty"] == 50.0  # of {C, C=C} only C=C is new


def test_strict_uniqueness_counts_single_fragments_only():
    """EQGAT-diff's uniqueness: among molecules that sanitise as one fragment. Methane twice (one copy
    shifted), ethylene, and methane + a far H2 (valid as EDM counts it, largest fragment C; not strictly)."""
    z, pos = METHANE
    ze, pe = ethylene()
    far = (np.append(z, [1, 1]), np.vstack([pos, [[10, 0, 0], [10.74, 0, 0]]]))
    r = molecule_report([Molecule(z, pos), Molecule(z, pos + 1.0), Molecule(ze, pe), Molecule(*far)])
    assert r["validity"] == 100.0 and r["validity_strict"] == 75.0
    assert r["uniqueness"] == 50.0 and r["valid_x_unique"] == 50.0  # {C, C=C} of 4 valid
    assert r["uniqueness_strict"] == pytest.approx(200 / 3) and r["valid_x_unique_strict"] == 50.0  # of 3


def test_predicted_bonds_and_charges():
    # ammonium from predicted bonds: N+ with 4 single bonds is stable under the charge-aware table
    z = np.array([7, 1, 1, 1, 1])
    bonds = np.zeros((5, 5), dtype=int)
    bonds[0, 1:] = bonds[1:, 0] = 1
    charges = np.array([1, 0, 0, 0, 0])
    assert atom_stability(z, bonds=bonds, charges=charges).all()
    assert not atom_stability(z, bonds=bonds).all()  # neutral table: N with 4 bonds is unstable
    r = molecule_report([Molecule(z, np.zeros((5, 3)), bonds=bonds, charges=charges)])
    assert r["validity_strict"] == 100.0 and r["smiles"] == ["[NH4+]"]


def test_bad_input_named():
    with pytest.raises(InputError):
        bond_order_matrix(np.array([6, 1]), np.zeros((3, 3)))
    with pytest.raises(InputError):
        molecule_report([])


def test_novelty_reference_from_geometries():
    from molequi.tasks.generation_metrics import smiles_of_geometries

    class A:
        def __init__(self, z, p):
            self.numbers, self.positions = z, p

    z, pos = METHANE
    ze, pe = ethylene()
    assert smiles_of_geometries([A(z, pos), A(ze, pe)]) == {"C", "C=C"}
