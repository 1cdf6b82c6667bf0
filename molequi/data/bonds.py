"""Bonds of a 3D molecule from its geometry, as EDM (Hoogeboom et al. 2022, ``qm9/bond_analyze.py``) defines
them, and the RDKit molecule they make.

With d the interatomic distance in pm and L1, L2, L3 the tabulated single / double / triple bond lengths of
the element pair (pm), the bond order is

    order = 0                           if d >= L1 + 10
          = 1                           if d <  L1 + 10   (and not shorter than the double threshold)
          = 2                           if d <  L2 + 5    (and not shorter than the triple threshold)
          = 3                           if d <  L3 + 3

where a missing L2 / L3 entry means that order does not exist for the pair.  The margins 10 / 5 / 3 pm are
EDM's, tuned by its authors to maximise the stability of real QM9 molecules. Positions are in Å.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from ase.data import atomic_numbers

from molequi.errors import InputError, ValueRangeError

# --- tabulated bond lengths (pm), EDM bond_analyze.py (wiredchemist.com / chemistry-reference.com tables) ---
BOND_LENGTHS_SINGLE: dict[str, dict[str, int]] = {
    "H": {"H": 74, "C": 109, "N": 101, "O": 96, "F": 92, "B": 119, "Si": 148, "P": 144, "As": 152, "S": 134,
          "Cl": 127, "Br": 141, "I": 161},
    "C": {"H": 109, "C": 154, "N": 147, "O": 143, "F": 135, "Si": 185, "P": 184, "S": 182, "Cl": 177, "Br": 194,
          "I": 214},
    "N": {"H": 101, "C": 147, "N": 145, "O": 140, "F": 136, "Cl": 175, "Br": 214, "S": 168, "I": 222, "P": 177},
    "O": {"H": 96, "C": 143, "N": 140, "O": 148, "F": 142, "Br": 172, "S": 151, "P": 163, "Si": 163, "Cl": 164,
          "I": 194},
    "F": {"H": 92, "C": 135, "N": 136, "O": 142, "F": 142, "S": 158, "Si": 160, "Cl": 166, "Br": 178, "P": 156,
          "I": 187},
    "B": {"H": 119, "Cl": 175},
    "Si": {"Si": 233, "H": 148, "C": 185, "O": 163, "S": 200, "F": 160, "Cl": 202, "Br": 215, "I": 243},
    "Cl": {"Cl": 199, "H": 127, "C": 177, "N": 175, "O": 164, "P": 203, "S": 207, "B": 175, "Si": 202, "F": 166,
           "Br": 214},
    "S": {"H": 134, "C": 182, "N": 168, "O": 151, "S": 204, "F": 158, "Cl": 207, "Br": 225, "Si": 200, "P": 210,
          "I": 234},
    "Br": {"Br": 228, "H": 141, "C": 194, "O": 172, "N": 214, "Si": 215, "S": 225, "F": 178, "Cl": 214, "P": 222},
    "P": {"P": 221, "H": 144, "C": 184, "O": 163, "Cl": 203, "S": 210, "F": 156, "N": 177, "Br": 222},
    "I": {"H": 161, "C": 214, "Si": 243, "N": 222, "O": 194, "S": 234, "F": 187, "I": 266},
    "As": {"H": 152},
}
BOND_LENGTHS_DOUBLE: dict[str, dict[str, int]] = {
    "C": {"C": 134, "N": 129, "O": 120, "S": 160},
    "N": {"C": 129, "N": 125, "O": 121},
    "O": {"C": 120, "N": 121, "O": 121, "P": 150},
    "P": {"O": 150, "S": 186},
    "S": {"P": 186},
}
BOND_LENGTHS_TRIPLE: dict[str, dict[str, int]] = {
    "C": {"C": 120, "N": 116, "O": 113},
    "N": {"C": 116, "N": 110},
    "O": {"C": 113},
}
MARGINS_PM = (10.0, 5.0, 3.0)  # single, double, triple (EDM margin1/2/3)

_NZ = 100  # lookup tables cover Z < 100


def _table(lengths: dict[str, dict[str, int]]) -> np.ndarray:
    """(Z, Z) array of lengths in pm, -inf where the pair has no entry (so ``d < -inf + margin`` is False)."""
    t = np.full((_NZ, _NZ), -np.inf)
    for a, row in lengths.items():
        for b, v in row.items():
            t[atomic_numbers[a], atomic_numbers[b]] = v
    return t


_L1, _L2, _L3 = _table(BOND_LENGTHS_SINGLE), _table(BOND_LENGTHS_DOUBLE), _table(BOND_LENGTHS_TRIPLE)


def bond_order(symbol1: str, symbol2: str, distance: float) -> int:
    """EDM's ``get_bond_order`` for one pair: ``distance`` in Å, returns 0 (none), 1, 2 or 3."""
    z1, z2 = atomic_numbers[symbol1], atomic_numbers[symbol2]
    return int(bond_order_matrix(np.array([z1, z2]), np.array([[0.0, 0, 0], [distance, 0, 0]]))[0, 1])


def bond_order_matrix(numbers: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Distance-based bond orders of all pairs.

    numbers (n,) int, positions (n, 3) Å -> (n, n) int matrix with zeros on the diagonal. Vectorised form of
    EDM's nested thresholds: order = [d < L1+10] * (1 + [d < L2+5] * (1 + [d < L3+3])).
    Pairs without a tabulated single bond are never bonded (EDM ``check_exists=True``).
    """
    z = np.asarray(numbers, dtype=int)
    pos = np.asarray(positions, dtype=float)
    if pos.ndim != 2 or pos.shape != (len(z), 3):
        raise InputError(f"positions have shape {pos.shape}, expected ({len(z)}, 3)")
    if len(z) and (z.min() <= 0 or z.max() >= _NZ):
        raise ValueRangeError(f"atomic numbers must lie in 1..{_NZ - 1}, got {sorted(set(z.tolist()))}")
    d = 100.0 * np.sqrt(((pos[:, None, :] - pos[None, :, :]) ** 2).sum(-1))  # pm
    zi, zj = z[:, None], z[None, :]
    m1, m2, m3 = MARGINS_PM
    single = d < _L1[zi, zj] + m1
    double = d < _L2[zi, zj] + m2
    triple = d < _L3[zi, zj] + m3
    order = single * (1 + double * (1 + triple))
    np.fill_diagonal(order, 0)
    return order.astype(int)


def build_rdkit_molecule(numbers: Sequence[int], positions: np.ndarray | None = None, *,
                         bonds: np.ndarray | None = None, charges: Sequence[int] | None = None):
    """An (unsanitised) ``Chem.RWMol`` with bonds from distances (EDM ``build_molecule``) or from ``bonds``.

    Bond orders 1/2/3 map to SINGLE/DOUBLE/TRIPLE and 4 (or 1.5) to AROMATIC. With ``positions`` a conformer
    is attached so the molecule can be written to SDF.
    """
    from rdkit import Chem
    from rdkit.Geometry import Point3D

    z = np.asarray(numbers, dtype=int)
    if bonds is None:
        if positions is None:
            raise InputError("build_rdkit_molecule needs positions or a bond matrix")
        bonds = bond_order_matrix(z, positions)
    types = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE,
             4: Chem.BondType.AROMATIC}
    mol = Chem.RWMol()
    for i, zi in enumerate(z):
        atom = Chem.Atom(int(zi))
        if charges is not None and int(charges[i]) != 0:
            atom.SetFormalCharge(int(charges[i]))
        mol.AddAtom(atom)
    b = np.asarray(bonds, dtype=float)
    for i, j in zip(*np.nonzero(np.triu(b, 1))):
        order = 4 if abs(b[i, j] - 1.5) < 1e-6 else int(round(b[i, j]))
        mol.AddBond(int(i), int(j), types[order])
    if positions is not None:
        conf = Chem.Conformer(len(z))
        for i, p in enumerate(np.asarray(positions, dtype=float)):
            conf.SetAtomPosition(i, Point3D(*map(float, p)))
        mol.AddConformer(conf, assignId=True)
    return mol


__all__ = ["BOND_LENGTHS_SINGLE", "BOND_LENGTHS_DOUBLE", "BOND_LENGTHS_TRIPLE", "MARGINS_PM", "bond_order",
           "bond_order_matrix", "build_rdkit_molecule"]
