"""Quality metrics of generated 3D molecules, defined exactly as EDM (Hoogeboom et al. 2022) defines them.

Bonds come from distances with EDM's tabulated lengths and margins (``molequi.data.bonds``).

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

import numpy as np
from ase.data import chemical_symbols

from molequi.data.bonds import bond_order_matrix, build_rdkit_molecule
from molequi.data.molecules import Molecule
from molequi.errors import InputError

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


def molecule_report(molecules: Sequence[Molecule], training_smiles: set[str] | None = None) -> dict:
    """All metrics, in percent, for a list of ``Molecule``.

    Returns atom_stability, molecule_stability, validity (EDM, largest fragment), validity_strict (single
    fragment), uniqueness (among valid), valid_x_unique, uniqueness_strict and valid_x_unique_strict (the same
    among the single-fragment valid ones, as EQGAT-diff / MiDi count), novelty (among unique, when
    ``training_smiles`` is given), plus counts and the list of valid SMILES.
    """
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")
    if len(molecules) == 0:
        raise InputError("no molecules to evaluate")
    n_atoms = n_stable_atoms = n_stable_mols = 0
    valid, strict = [], []
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
            if single:
                strict.append(smiles)
    n = len(molecules)
    unique = set(valid)
    report = {
        "n_molecules": n,
        "atom_stability": 100.0 * n_stable_atoms / max(n_atoms, 1),
        "molecule_stability": 100.0 * n_stable_mols / n,
        "validity": 100.0 * len(valid) / n,
        "validity_strict": 100.0 * len(strict) / n,
        "uniqueness": 100.0 * len(unique) / len(valid) if valid else 0.0,
        "valid_x_unique": 100.0 * len(unique) / n,
        # EQGAT-diff's (MiDi's) definitions: valid = sanitises and is one fragment, unique among those
        "uniqueness_strict": 100.0 * len(set(strict)) / len(strict) if strict else 0.0,
        "valid_x_unique_strict": 100.0 * len(set(strict)) / n,
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


__all__ = ["VALENCES", "CHARGED_VALENCES", "atom_stability", "sanitized_smiles", "validity", "canonical_smiles_set",
           "load_training_smiles", "smiles_of_geometries", "molecule_report", "format_report"]
