"""SMILES -> 3D conformer with hydrogens, as ``ase.Atoms`` (RDKit ETKDG embedding, force-field relaxation).

1. RDKit parses the SMILES and adds explicit hydrogens.
2. ETKDGv3 embeds a 3D geometry with ``randomSeed=seed``; if that fails, once more from random
   coordinates (``useRandomCoords``), which embeds strained or large molecules ETKDG's default start misses.
3. MMFF94 relaxes it for at most ``max_iters`` iterations (UFF when MMFF has no parameters for an atom).
"""

from __future__ import annotations

from molequi.errors import InputError


def molecule_from_smiles(smiles: str, seed: int = 0, *, max_iters: int = 200):
    """An ``ase.Atoms`` (positions Å) with hydrogens and a relaxed RDKit conformer of ``smiles``.

    ``atoms.info`` holds ``smiles`` and ``charge`` (the total formal charge, for the quantum-chemistry
    calculator). Raises ``InputError`` when RDKit cannot parse or embed the molecule.
    """
    import ase
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.MolFromSmiles(smiles)
    if mol is None:
        raise InputError(f"cannot parse SMILES {smiles!r}", hint="check the SMILES string")
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    if AllChem.EmbedMolecule(mol, params) != 0:
        params.useRandomCoords = True
        if AllChem.EmbedMolecule(mol, params) != 0:
            raise InputError(f"RDKit could not embed a 3D geometry for {smiles!r}", hint="try another seed")
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMolecule(mol, maxIters=max_iters)
    else:
        AllChem.UFFOptimizeMolecule(mol, maxIters=max_iters)
    atoms = ase.Atoms(
        numbers=[a.GetAtomicNum() for a in mol.GetAtoms()], positions=mol.GetConformer().GetPositions()
    )
    atoms.info.update(smiles=smiles, charge=int(Chem.GetFormalCharge(mol)))
    return atoms


__all__ = ["molecule_from_smiles"]
