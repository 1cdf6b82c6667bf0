"""The SchNOrb MD17-Hamiltonian reader against the reference tooling.

The real SchNOrb databases (quantum-machine.org) cannot be downloaded here. A SchNOrb-layout ASE database
(``ase.db`` rows with ``data = {hamiltonian, overlap, energy, forces}`` in ORCA AO order, what schnetpack
0.3's ``AtomsData`` writes) is written from a real PySCF PBE/def2-SVP water label, with the ORCA order
defined by the reference code itself: QHNet's ``ori_dataset.hamiltonian_transform`` (peer
divelab/AIRS OpenDFT/QHNet, commit 4a16c68a7da707c521019067dec51c227c10de45, at ../shared/peers/qhnet).
Then (1) QHNet's own ``MD17_DFT.get_mol`` reads the file and (2) molequi's ``read_md17_hamiltonian`` must
return exactly the PySCF matrices, whose generalised eigenvalues are the label's orbital energies.
QHNet keeps p functions in e3nn order (y, z, x) where PySCF has (x, y, z); that permutation comes from
PySCF's own AO labels here, not from molequi.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import scipy.linalg

REPO = Path(__file__).resolve().parents[2]
PEER = REPO.parent / "shared" / "peers" / "qhnet"
SAMPLE = REPO / "data" / "hamiltonian" / "water_random_sample"
BOHR_PER_ANGSTROM = 1.8897261258369282  # the factor QHNet's get_mol uses


def _reference_module():
    spec = importlib.util.spec_from_file_location("qhnet_ori_dataset", PEER / "ori_dataset.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _pyscf_to_qhnet(numbers, pos) -> np.ndarray:
    """Index array q with H_qhnet = H_pyscf[q][:, q]: every p shell (x, y, z) -> (y, z, x), from PySCF's
    AO labels."""
    from pyscf import gto

    mol = gto.M(atom=[(int(z), tuple(p)) for z, p in zip(numbers, pos)], basis="def2-svp", unit="Angstrom",
                verbose=0)
    labels = mol.ao_labels()
    q, i = [], 0
    while i < len(labels):
        if labels[i].rstrip().endswith("px"):
            assert [s.rstrip()[-2:] for s in labels[i:i + 3]] == ["px", "py", "pz"]
            q += [i + 1, i + 2, i]
            i += 3
        else:
            q.append(i)
            i += 1
    return np.array(q)


@pytest.mark.qm
@pytest.mark.skipif(not (PEER / "ori_dataset.py").is_file(),
                    reason="QHNet reference code (divelab/AIRS OpenDFT/QHNet @ "
                           "4a16c68a7da707c521019067dec51c227c10de45) is not at ../shared/peers/qhnet")
def test_schnorb_db_read_like_the_reference_code(tmp_path):
    from ase import Atoms
    from ase.db import connect

    from molequi.data.hamiltonian import HamiltonianStore, read_md17_hamiltonian

    ref = _reference_module()
    store = HamiltonianStore(SAMPLE)
    rec = store[0]
    symbols = "".join(Atoms(numbers=rec.numbers).get_chemical_symbols())  # 'OHH', as MD17_DFT.atom_types
    n = rec.nao
    # the reference transform is a permutation (all signs +1 for def2-SVP): its index array is on the diagonal
    idx = np.rint(np.diag(ref.hamiltonian_transform(np.diag(np.arange(n, dtype=float)), symbols))).astype(int)
    assert sorted(idx) == list(range(n))
    inv = np.argsort(idx)
    q = _pyscf_to_qhnet(rec.numbers, rec.pos)
    h_qhnet, s_qhnet = rec.fock[np.ix_(q, q)], rec.overlap[np.ix_(q, q)]
    h_orca, s_orca = h_qhnet[np.ix_(inv, inv)], s_qhnet[np.ix_(inv, inv)]

    with connect(tmp_path / "schnorb_hamiltonian_water.db") as db:
        db.write(Atoms(numbers=rec.numbers, positions=rec.pos),
                 data={"hamiltonian": h_orca, "overlap": s_orca, "energy": np.array([rec.energy]),
                       "forces": rec.forces})

    # (1) the reference reader
    with connect(tmp_path / "schnorb_hamiltonian_water.db") as db:
        row = next(db.select())
        got = ref.MD17_DFT.get_mol(SimpleNamespace(atom_types=symbols), row)
    np.testing.assert_array_equal(got.hamiltonian.numpy(), h_qhnet)
    np.testing.assert_allclose(got.pos.numpy(), rec.pos * BOHR_PER_ANGSTROM, rtol=1e-15)

    # (2) molequi's reader: back to PySCF order exactly, and physically the same matrices
    (out,) = list(read_md17_hamiltonian(tmp_path / "schnorb_hamiltonian_water.db"))
    np.testing.assert_array_equal(out.fock, rec.fock)
    np.testing.assert_array_equal(out.overlap, rec.overlap)
    np.testing.assert_allclose(out.pos, rec.pos, atol=1e-12)
    assert out.energy == rec.energy
    np.testing.assert_allclose(scipy.linalg.eigh(out.fock, out.overlap, eigvals_only=True), rec.mo_energy,
                               atol=1e-6)
