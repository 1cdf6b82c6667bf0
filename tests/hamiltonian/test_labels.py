"""PySCF labels and the on-disk store: stored H and S reproduce PySCF's energies and orbitals."""

import json
import pickle

import numpy as np
import pytest

from molequi.data.hamiltonian import (
    HamiltonianRecord,
    HamiltonianStore,
    HamiltonianStoreWriter,
    read_md17_hamiltonian,
    read_qh9_lmdb,
    write_store,
)
from molequi.errors import DatasetError


@pytest.mark.qm
def test_stored_fock_reproduces_pyscf_energy(water_labels, tmp_path):
    from pyscf import dft, gto

    from molequi.qc.scf import density_from_fock

    write_store(tmp_path / "w", water_labels, basis="def2-svp", xc="pbe", shard_size=2)
    store = HamiltonianStore(tmp_path / "w")
    assert len(store) == 3 and len(store.meta["shards"]) == 2
    rec = store[2]
    np.testing.assert_array_equal(rec.fock, water_labels[2].fock)
    mol = gto.M(atom=list(zip(rec.numbers.tolist(), map(tuple, rec.pos))), basis="def2-svp", verbose=0)
    mf = dft.RKS(mol)
    mf.xc = "pbe"
    dm = density_from_fock(rec.fock, rec.overlap, rec.n_elec)
    assert abs(mf.energy_tot(dm) - rec.energy) < 1e-6
    e = np.linalg.eigvalsh(
        np.linalg.inv(np.linalg.cholesky(rec.overlap))
        @ rec.fock
        @ np.linalg.inv(np.linalg.cholesky(rec.overlap)).T
    )
    assert np.abs(e - rec.mo_energy).max() < 1e-5


def test_store_is_atomic_and_refuses_overwrite(tmp_path):
    rec = HamiltonianRecord(
        numbers=[1, 1], pos=[[0, 0, 0], [0, 0, 0.74]], fock=np.eye(10), overlap=np.eye(10)
    )
    w = HamiltonianStoreWriter(tmp_path / "s", basis="def2-svp", xc="pbe", shard_size=2)
    w.append(rec)
    assert json.loads((tmp_path / "s" / "index.json").read_text())["n_records"] == 0  # nothing half-written
    w.append(rec)
    assert len(HamiltonianStore(tmp_path / "s")) == 2
    assert not list((tmp_path / "s").glob(".shard*"))
    with pytest.raises(DatasetError, match="already holds"):
        HamiltonianStoreWriter(tmp_path / "s", basis="def2-svp", xc="pbe")
    with pytest.raises(DatasetError, match="index.json"):
        HamiltonianStore(tmp_path / "missing")


@pytest.mark.qm
def test_md17_schnorb_layout_reader(water_labels, tmp_path):
    """A SchNOrb-style ASE db (ORCA order, data={'hamiltonian', 'overlap'}) is read back in PySCF order."""
    import ase
    from ase.db import connect

    from molequi.so3.basis import OrbitalBasis

    rec = water_labels[0]
    perm, _ = OrbitalBasis("def2-svp").orca_to_pyscf(rec.numbers)
    inv = np.argsort(perm)
    h_orca = rec.fock[np.ix_(inv, inv)]
    s_orca = rec.overlap[np.ix_(inv, inv)]
    with connect(str(tmp_path / "water.db")) as db:
        db.write(
            ase.Atoms(numbers=rec.numbers, positions=rec.pos),
            data={"hamiltonian": h_orca, "overlap": s_orca.reshape(-1), "energy": np.array([rec.energy])},
        )
    out = list(read_md17_hamiltonian(tmp_path / "water.db"))
    assert len(out) == 1
    np.testing.assert_allclose(out[0].fock, rec.fock)
    np.testing.assert_allclose(out[0].overlap, rec.overlap)


@pytest.mark.qm
def test_qh9_lmdb_layout_reader(water_labels, tmp_path):
    import lmdb

    rec = water_labels[1]
    env = lmdb.open(str(tmp_path / "QH9Stable.lmdb"), map_size=1 << 24)
    with env.begin(write=True) as txn:
        value = {
            "id": 0,
            "num_nodes": 3,
            "atoms": rec.numbers.astype(np.int32).tobytes(),
            "pos": rec.pos.astype(np.float64).tobytes(),
            "Ham": rec.fock.astype(np.float64).tobytes(),
        }
        txn.put((0).to_bytes(length=4, byteorder="big"), pickle.dumps(value))
        txn.put(b"length", pickle.dumps(1))
    env.close()
    out = list(read_qh9_lmdb(tmp_path / "QH9Stable.lmdb"))
    assert len(out) == 1
    np.testing.assert_allclose(out[0].fock, rec.fock)
    np.testing.assert_allclose(out[0].overlap, rec.overlap, atol=1e-12)  # recomputed with PySCF
