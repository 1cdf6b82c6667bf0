"""PySCF labels: converged Kohn-Sham (Fock) and overlap matrices, energy and forces at one geometry.

fock = mf.get_fock()   at the converged density, Hartree, PySCF AO order
eigh(fock, overlap)    reproduces mf.mo_energy
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from molequi.data.hamiltonian.record import HamiltonianRecord
from molequi.errors import InputError


def build_mol(numbers: Sequence[int], pos_angstrom: np.ndarray, basis: str, charge: int = 0):
    """A ``pyscf.gto.Mole`` of atoms ``numbers`` at ``pos_angstrom`` (n, 3) Å in ``basis``."""
    from pyscf import gto

    return gto.M(
        atom=[(int(z), tuple(map(float, p))) for z, p in zip(numbers, np.asarray(pos_angstrom))],
        basis=basis,
        charge=charge,
        unit="Angstrom",
        verbose=0,
    )


def make_rks(mol, xc: str, *, conv_tol: float, grids_level: int = 3):
    """A restricted Kohn-Sham object (``pyscf.dft.RKS``) with functional ``xc``, energy convergence
    threshold ``conv_tol`` (Hartree) and integration grid ``grids_level``; not yet run."""
    from pyscf import dft

    mf = dft.RKS(mol)
    mf.xc = xc
    mf.conv_tol = conv_tol
    mf.grids.level = grids_level
    return mf


def pyscf_label(
    numbers: Sequence[int],
    pos_angstrom: np.ndarray,
    *,
    xc: str = "pbe",
    basis: str = "def2-svp",
    charge: int = 0,
    forces: bool = True,
    conv_tol: float = 1e-10,
    dm0: np.ndarray | None = None,
    grids_level: int = 3,
) -> HamiltonianRecord:
    """Run PySCF RKS at one geometry and return its converged Fock (Hartree) and overlap matrices.

    ``fock = mf.get_fock()`` at the converged density, so ``eigh(fock, overlap)`` reproduces
    ``mf.mo_energy``. Forces from ``mf.nuc_grad_method()`` (Hartree/Bohr, sign -dE/dR).
    Raises ``InputError`` if the SCF does not converge.
    """
    mol = build_mol(numbers, pos_angstrom, basis, charge)
    mf = make_rks(mol, xc, conv_tol=conv_tol, grids_level=grids_level)
    e = mf.kernel(dm0=dm0)
    if not mf.converged:
        raise InputError(f"PySCF {xc}/{basis} SCF did not converge", hint="check the geometry")
    grad = mf.nuc_grad_method().kernel() if forces else None
    return HamiltonianRecord(
        numbers=np.asarray(numbers),
        pos=np.asarray(pos_angstrom),
        fock=mf.get_fock(),
        overlap=mf.get_ovlp(),
        energy=float(e),
        forces=None if grad is None else -np.asarray(grad),
        mo_energy=mf.mo_energy,
        n_elec=int(mol.nelectron),
        cycles=int(getattr(mf, "cycles", -1)),
    )


__all__ = ["build_mol", "make_rks", "pyscf_label"]
