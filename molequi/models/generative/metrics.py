"""Quality metrics of generated 3D molecules, defined exactly as EDM (Hoogeboom et al. 2022) defines them.

Bonds from distances (EDM ``qm9/bond_analyze.py``). With d the interatomic distance in pm and L1, L2, L3 the
tabulated single / double / triple bond lengths of the element pair (pm), the bond order is

    order = 0                           if d >= L1 + 10
          = 1                           if d <  L1 + 10   (and not shorter than the double threshold)
          = 2                           if d <  L2 + 5    (and not shorter than the triple threshold)
          = 3                           if d <  L3 + 3

where a missing L2 / L3 entry means that order does not exist for the pair.  The margins 10 / 5 / 3 pm are
EDM's, tuned by its authors to maximise the stability of real QM9 molecules.

* Atom stability: an atom is stable when the sum of the orders of its bonds equals its valence
  (H 1, C 4, N 3, O 2, F 1; P 3 or 5, ... as EDM's ``allowed_bonds``). Reported as the fraction of all atoms.
* Molecule stability: fraction of molecules whose atoms are all stable.
* Validity (EDM, lenient): the distance-bond molecule passes ``Chem.SanitizeMol``; the largest fragment is
  kept and written as canonical SMILES. Strict validity additionally requires one connected fragment.
* Uniqueness: |set(valid SMILES)| / |valid|.  Novelty: fraction of unique SMILES not in the training SMILES.

For models that predict bonds and formal charges (EQGAT-diff / MiDi) ``molecule_report`` also accepts the
predicted bond-order matrix and charges; then stability uses those bonds and the charge-aware valence table
``CHARGED_VALENCES`` (MiDi's), and validity builds the RDKit molecule from them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
from ase.data import atomic_numbers, chemical_symbols

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

# valences counted as stable (EDM allowed_bonds); a list means any of these
VALENCES: dict[str, int | list[int]] = {
    "H": 1, "C": 4, "N": 3, "O": 2, "F": 1, "B": 3, "Al": 3, "Si": 4, "P": [3, 5], "S": 4, "Cl": 1, "As": 3,
    "Br": 1, "I": 1, "Hg": [1, 2], "Bi": [3, 5],
}
# charge-aware valences (MiDi), used when a model predicts formal charges: element -> {charge: valence(s)}
CHARGED_VALENCES: dict[str, dict[int, int | list[int]]] = {
    "H": {0: 1, 1: 0, -1: 0},
    "C": {0: [3, 4], 1: 3, -1: 3},
    "N": {0: [2, 3], 1: [2, 3, 4], -1: 2},
    "O": {0: 2, 1: 3, -1: 1},
    "F": {0: 1, -1: 0},
    "B": 3, "Al": 3, "Si": 4, "P": {0: [3, 5], 1: 4}, "S": {0: [2, 6], 1: [2, 3], 2: 4, 3: 5, -1: 3},
    "Cl": 1, "As": 3, "Br": {0: 1, 1: 2}, "I": 1, "Hg": [1, 2], "Bi": [3, 5], "Se": [2, 4, 6],
}

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


def _allowed(symbol: str, charge: int | None) -> list[int]:
    if charge is None:
        v = VALENCES.get(symbol)
    else:
        v = CHARGED_VALENCES.get(symbol)
        if isinstance(v, dict):
            v = v.get(int(charge), [])
        elif charge != 0:
            v = []
    if v is None:
        return []
    return [v] if isinstance(v, int) else list(v)


def atom_stability(numbers: np.ndarray, positions: np.ndarray | None = None, *,
                   bonds: np.ndarray | None = None, charges: np.ndarray | None = None) -> np.ndarray:
    """(n,) bool: whether each atom's summed bond order equals an allowed valence.

    Bonds come from distances (``bond_order_matrix``) unless a bond-order matrix ``bonds`` (n, n) is given
    (aromatic bonds, given as 1.5 or as class 4, count 1.5). With ``charges`` (n,) the charge-aware table is used.
    """
    z = np.asarray(numbers, dtype=int)
    if bonds is None:
        if positions is None:
            raise InputError("atom_stability needs positions or a bond matrix")
        bonds = bond_order_matrix(z, positions)
    b = np.asarray(bonds, dtype=float)
    valence = np.where(b == 4, 1.5, b).sum(1)  # class 4 = aromatic
    stable = np.zeros(len(z), dtype=bool)
    for i, (zi, v) in enumerate(zip(z, valence)):
        q = None if charges is None else int(charges[i])
        stable[i] = any(abs(v - a) < 1e-6 for a in _allowed(chemical_symbols[zi], q))
    return stable


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


def sanitized_smiles(mol) -> str | None:
    """Canonical SMILES after ``Chem.SanitizeMol``, or None when sanitisation fails (EDM ``mol2smiles``).

    Non-isomeric (no stereo marks). Explicit hydrogen atoms are folded into their heavy atoms (``Chem.RemoveHs``) so that the SMILES compare
    with ordinary dataset SMILES for novelty; uniqueness is unaffected (the H atoms are implied).
    """
    from rdkit import Chem

    try:
        Chem.SanitizeMol(mol)
        return Chem.MolToSmiles(Chem.RemoveHs(mol), isomericSmiles=False)
    except (ValueError, RuntimeError):  # RDKit raises subclasses of ValueError (AtomValenceException, ...)
        return None


def validity(mol) -> tuple[str | None, bool]:
    """(largest-fragment SMILES or None, is_single_fragment) for one molecule, EDM style."""
    from rdkit import Chem

    smiles = sanitized_smiles(mol)
    if smiles is None:
        return None, False
    frags = Chem.rdmolops.GetMolFrags(mol, asMols=True, sanitizeFrags=False)
    largest = max(frags, default=mol, key=lambda m: m.GetNumAtoms())
    return sanitized_smiles(largest), len(frags) == 1


def canonical_smiles_set(smiles: Iterable[str]) -> set[str]:
    """RDKit-canonicalise ``smiles`` without stereo (unparsable entries are skipped), for novelty checks.

    Stereo is dropped because SMILES built from distance bonds carry none (the lapool QM9 CSV has E/Z marks).
    """
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    out = set()
    for s in smiles:
        m = Chem.MolFromSmiles(s)
        if m is not None:
            out.add(Chem.MolToSmiles(m, isomericSmiles=False))
    return out


def load_training_smiles(path: str) -> set[str]:
    """Canonical SMILES from a CSV with a ``smiles`` column (e.g. valence-discovery/lapool ``qm9.csv``)."""
    import csv

    with open(path, newline="") as fh:
        reader = csv.DictReader(fh)
        if reader.fieldnames is None or "smiles" not in [f.strip().lower() for f in reader.fieldnames]:
            raise InputError("no 'smiles' column", source=str(path), hint="give a CSV whose header has 'smiles'")
        col = next(f for f in reader.fieldnames if f.strip().lower() == "smiles")
        return canonical_smiles_set(row[col] for row in reader)


def smiles_of_geometries(molecules: Iterable) -> set[str]:
    """Training SMILES the way EDM builds its novelty reference: each training geometry (anything with
    ``numbers`` and ``positions``, e.g. ``ase.Atoms``) through the same distance-bond pipeline."""
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")
    out = set()
    for a in molecules:
        z = np.asarray(a.numbers)
        smiles, _ = validity(build_rdkit_molecule(z, np.asarray(a.positions)))
        if smiles is not None:
            out.add(smiles)
    return out


@dataclass
class Molecule:
    """One generated molecule: numbers (n,), positions (n, 3) Å, optional predicted bonds (n, n) / charges (n,)."""

    numbers: np.ndarray
    positions: np.ndarray
    bonds: np.ndarray | None = None
    charges: np.ndarray | None = None


def molecule_report(molecules: Sequence[Molecule], training_smiles: set[str] | None = None) -> dict:
    """All metrics, in percent, for a list of ``Molecule``.

    Returns atom_stability, molecule_stability, validity (EDM, largest fragment), validity_strict (single
    fragment), uniqueness (among valid), valid_x_unique, novelty (among unique, when ``training_smiles`` is
    given), plus counts and the list of valid SMILES.
    """
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")
    if len(molecules) == 0:
        raise InputError("no molecules to evaluate")
    n_atoms = n_stable_atoms = n_stable_mols = 0
    valid, n_strict = [], 0
    for m in molecules:
        z = np.asarray(m.numbers, dtype=int)
        stable = atom_stability(z, m.positions, bonds=m.bonds, charges=m.charges)
        n_atoms += len(z)
        n_stable_atoms += int(stable.sum())
        n_stable_mols += int(stable.all())
        mol = build_rdkit_molecule(z, None if m.bonds is not None else m.positions, bonds=m.bonds,
                                   charges=m.charges)
        smiles, single = validity(mol)
        if smiles is not None:
            valid.append(smiles)
            n_strict += int(single)
    n = len(molecules)
    unique = set(valid)
    report = {
        "n_molecules": n,
        "atom_stability": 100.0 * n_stable_atoms / max(n_atoms, 1),
        "molecule_stability": 100.0 * n_stable_mols / n,
        "validity": 100.0 * len(valid) / n,
        "validity_strict": 100.0 * n_strict / n,
        "uniqueness": 100.0 * len(unique) / len(valid) if valid else 0.0,
        "valid_x_unique": 100.0 * len(unique) / n,
    }
    if training_smiles is not None:
        novel = [s for s in unique if s not in training_smiles]
        report["novelty"] = 100.0 * len(novel) / len(unique) if unique else 0.0
    report["smiles"] = valid
    return report


def format_report(report: dict) -> str:
    """One line per metric, in percent."""
    keys = ["atom_stability", "molecule_stability", "validity", "validity_strict", "uniqueness",
            "valid_x_unique", "novelty"]
    return "\n".join(f"{k:>20s}: {report[k]:6.2f} %" for k in keys if k in report)


__all__ = ["BOND_LENGTHS_SINGLE", "BOND_LENGTHS_DOUBLE", "BOND_LENGTHS_TRIPLE", "MARGINS_PM", "VALENCES",
           "CHARGED_VALENCES", "bond_order", "bond_order_matrix", "atom_stability", "build_rdkit_molecule",
           "sanitized_smiles", "validity", "canonical_smiles_set", "load_training_smiles", "smiles_of_geometries", "Molecule",
           "molecule_report", "format_report"]
