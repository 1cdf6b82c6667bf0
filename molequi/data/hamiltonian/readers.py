"""Readers of public Hamiltonian datasets, yielding ``HamiltonianRecord`` s in PySCF AO order.

``read_md17_hamiltonian``: SchNOrb MD17 ASE databases (ORCA AO order, converted);
``read_qh9_lmdb``: QH9 LMDB files (already PySCF order).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from molequi.data.hamiltonian.record import HamiltonianRecord
from molequi.errors import DatasetError, FormatError, MissingKeyError


def read_md17_hamiltonian(path: str | os.PathLike, *, indices: Sequence[int] | None = None):
    """Yield ``HamiltonianRecord`` s from a SchNOrb MD17-Hamiltonian ASE database (``*.db``).

    Layout (SchNOrb, Schütt et al. 2019, schnetpack 0.3 ``AtomsData``): each row is an ``ase.Atoms``
    (positions Å) with ``row.data`` holding ``hamiltonian`` and ``overlap`` (nao x nao, Hartree, ORCA AO
    order, def2-SVP), ``energy`` (Hartree) and ``forces`` (Hartree/Bohr). Matrices are converted to PySCF
    AO order with ``OrbitalBasis.orca_to_pyscf`` (ORCA differs in its p order (pz, px, py) and in the sign
    of some f/g functions; QHNet's ``convention_dict['pyscf_def2svp']`` does the same). Rows may also hold
    a flat matrix (nao*nao,), which is reshaped.
    """
    from ase.db import connect

    from molequi.so3.basis import OrbitalBasis

    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path} does not exist", hint="download the SchNOrb MD17 database (*.db)")
    basis = OrbitalBasis("def2-svp")
    with connect(str(path)) as db:
        rows = db.select() if indices is None else (db.get(id=int(i) + 1) for i in indices)
        for row in rows:
            data = row.data
            for key in ("hamiltonian", "overlap"):
                if key not in data:
                    raise MissingKeyError(f"row {row.id} has no '{key}' in its data", source=str(path))
            numbers = np.asarray(row.numbers)
            h = _square(np.asarray(data["hamiltonian"], dtype=np.float64))
            s = _square(np.asarray(data["overlap"], dtype=np.float64))
            perm, sign = basis.orca_to_pyscf(numbers)
            h = (h * np.outer(sign, sign))[np.ix_(perm, perm)]
            s = (s * np.outer(sign, sign))[np.ix_(perm, perm)]
            energy = float(np.asarray(data.get("energy", np.nan)).reshape(-1)[0])
            forces = data.get("forces")
            yield HamiltonianRecord(
                numbers=numbers,
                pos=row.positions,
                fock=h,
                overlap=s,
                energy=energy,
                forces=None if forces is None else np.asarray(forces).reshape(-1, 3),
            )


def _square(m: np.ndarray) -> np.ndarray:
    m = np.squeeze(m)
    if m.ndim == 1:
        k = int(round(np.sqrt(m.size)))
        if k * k != m.size:
            raise FormatError(f"flat matrix of {m.size} elements is not square")
        m = m.reshape(k, k)
    return m


def read_qh9_lmdb(path: str | os.PathLike, *, indices: Sequence[int] | None = None):
    """Yield ``HamiltonianRecord`` s from a QH9 LMDB (``QH9Stable.lmdb`` / ``QH9Dynamic*.lmdb``).

    Layout (QH9, Yu et al. 2023, the PyG ``QH9Stable`` / ``QH9Dynamic`` ``get``): keys are
    ``int(i).to_bytes(length=4, byteorder='big')`` (an optional ``b'length'`` key holds the pickled count);
    each value is a pickled dict with ``id``, ``num_nodes`` (int), ``atoms`` (bytes of int32 Z), ``pos``
    (bytes of float64, (num_nodes, 3); Å -- QH9's own tools pass them unconverted to ``ase.Atoms``) and
    ``Ham`` (bytes of float64, nao x nao, Hartree, PySCF def2-SVP AO order, B3LYP). Some derived copies
    add ``overlap``; it is read when present, otherwise recomputed with PySCF from the geometry, as
    QH9's evaluation does. Assumption to check on the real files: no unit conversion of ``pos``.
    """
    import lmdb

    from molequi.data.pickle_safe import safe_loads

    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path} does not exist", hint="download QH9 (QH9Stable.lmdb) first")
    env = lmdb.open(str(path), readonly=True, lock=False, subdir=path.is_dir(), readahead=False)
    try:
        with env.begin() as txn:
            if indices is None:
                raw = txn.get(b"length")
                n = safe_loads(raw, source=str(path)) if raw is not None else txn.stat()["entries"]
                indices = range(int(n))
            for i in indices:
                value = txn.get(int(i).to_bytes(length=4, byteorder="big"))
                if value is None:
                    raise MissingKeyError(f"no entry {i}", source=str(path))
                d = safe_loads(value, source=str(path), frame=int(i))
                for key in ("num_nodes", "atoms", "pos", "Ham"):
                    if key not in d:
                        raise MissingKeyError(f"entry {i} lacks '{key}'", source=str(path))
                n_at = int(d["num_nodes"])
                numbers = np.frombuffer(d["atoms"], np.int32).astype(np.int64)[:n_at]
                pos = np.frombuffer(d["pos"], np.float64).reshape(n_at, 3)
                h = _square(np.frombuffer(d["Ham"], np.float64).copy())
                if "overlap" in d:
                    s = _square(np.frombuffer(d["overlap"], np.float64).copy())
                else:
                    s = _pyscf_overlap(numbers, pos, "def2-svp")
                yield HamiltonianRecord(numbers=numbers, pos=pos, fock=h, overlap=s)
    finally:
        env.close()


def _pyscf_overlap(numbers, pos_angstrom, basis: str) -> np.ndarray:
    """AO overlap matrix (PySCF order) at one geometry."""
    from pyscf import gto

    mol = gto.M(
        atom=[(int(z), tuple(map(float, p))) for z, p in zip(numbers, np.asarray(pos_angstrom))],
        basis=basis,
        unit="Angstrom",
        verbose=0,
        spin=int(np.sum(numbers)) % 2,
    )
    return mol.intor("int1e_ovlp")


__all__ = ["read_md17_hamiltonian", "read_qh9_lmdb"]
