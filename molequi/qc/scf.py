"""SCF acceleration: start PySCF from the density of a predicted Fock matrix (QH9's protocol).

    H C = S C e  (generalised eigenproblem, H in Hartree, PySCF AO order)
    D = 2 C_occ C_occ^T      (closed shell, n_occ = n_elec / 2)
    mf.kernel(dm0=D)

``run_scf`` reports SCF cycles and wall time so a predicted guess can be compared with PySCF's own
``minao`` (or ``1e``, ``atom``, ``huckel``) initial guess, or with a given density (``dm0``: e.g. the
previous MD frame's converged density, ``return_dm=True``), at identical settings.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

import numpy as np

from molequi.errors import InputError
from molequi.qc.pyscf_labels import build_mol, make_rks


def density_from_fock(fock: np.ndarray, overlap: np.ndarray, n_elec: int) -> np.ndarray:
    """Closed-shell AO density matrix (nao, nao) from a Fock matrix (Hartree) and the overlap."""
    import scipy.linalg

    if n_elec % 2:
        raise InputError(f"{n_elec} electrons: a closed-shell density needs an even count")
    f = 0.5 * (fock + fock.T)
    _, c = scipy.linalg.eigh(f, overlap)
    occ = c[:, : n_elec // 2]
    return 2.0 * occ @ occ.T


def run_scf(
    numbers: Sequence[int],
    pos_angstrom: np.ndarray,
    *,
    xc: str = "pbe",
    basis: str = "def2-svp",
    fock: np.ndarray | None = None,
    dm0: np.ndarray | None = None,
    init_guess: str = "minao",
    conv_tol: float = 1e-9,
    charge: int = 0,
    grids_level: int = 3,
    return_dm: bool = False,
) -> dict:
    """Run PySCF RKS from ``fock`` (a predicted Fock matrix, PySCF AO order, Hartree), from a density
    ``dm0`` (nao, nao), or from PySCF's ``init_guess``.

    Returns {"cycles", "seconds" (SCF wall time, guess included), "e_tot" (Hartree), "converged",
    "guess"} and, with ``return_dm``, "dm" (the converged density). ``cycles`` is PySCF's ``mf.cycles``
    (number of Fock builds after the guess).
    """
    if fock is not None and dm0 is not None:
        raise InputError("give a predicted Fock matrix or a starting density, not both")
    mol = build_mol(numbers, pos_angstrom, basis, charge)
    mf = make_rks(mol, xc, conv_tol=conv_tol, grids_level=grids_level)
    mf.grids.build()  # grid set-up is the same for every guess; keep it out of the comparison
    t0 = time.perf_counter()
    if fock is not None:
        fock = np.asarray(fock, dtype=np.float64)
        if fock.shape != (mol.nao, mol.nao):
            raise InputError(
                f"predicted Fock matrix has shape {fock.shape}, the molecule has {mol.nao} AOs in {basis}"
            )
        dm0 = density_from_fock(fock, mol.intor("int1e_ovlp"), mol.nelectron)
        e = mf.kernel(dm0=dm0)
        guess = "predicted"
    elif dm0 is not None:
        dm0 = np.asarray(dm0, dtype=np.float64)
        if dm0.shape != (mol.nao, mol.nao):
            raise InputError(
                f"starting density has shape {dm0.shape}, the molecule has {mol.nao} AOs in {basis}"
            )
        e = mf.kernel(dm0=dm0)
        guess = "dm0"
    else:
        mf.init_guess = init_guess
        e = mf.kernel()
        guess = init_guess
    out = {
        "cycles": int(mf.cycles),
        "seconds": time.perf_counter() - t0,
        "e_tot": float(e),
        "converged": bool(mf.converged),
        "guess": guess,
    }
    if return_dm:
        out["dm"] = mf.make_rdm1()
    return out


def predict_fock(model, numbers: Sequence[int], pos_angstrom: np.ndarray) -> np.ndarray:
    """The model's Fock matrix (nao, nao) for one molecule, float64 numpy, Hartree, PySCF order."""
    import ase
    import torch
    from torch_geometric.data import Batch

    from molequi.data.records import atoms_to_data

    dtype = next(model.parameters()).dtype
    d = atoms_to_data(ase.Atoms(numbers=list(numbers), positions=np.asarray(pos_angstrom)), dtype=dtype)
    with torch.no_grad():
        out = model(Batch.from_data_list([d]))
    nao = int(out["nao"][0])
    return out["fock"].detach().double().cpu().numpy().reshape(nao, nao)


__all__ = ["density_from_fock", "run_scf", "predict_fock"]
