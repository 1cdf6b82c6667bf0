"""Hamiltonian (Fock / Kohn-Sham matrix) datasets: the record type, an on-disk store, foreign readers.

Stored quantities, per geometry (all matrices in **PySCF AO order** and **Hartree**)::

    numbers   (n,) int           atomic numbers
    pos       (n, 3) float64     positions, Å
    fock      (nao, nao) float64 converged Kohn-Sham matrix ``mf.get_fock()``, Hartree
    overlap   (nao, nao) float64 AO overlap ``mf.get_ovlp()`` (dimensionless)
    energy    float              total energy ``mf.e_tot``, Hartree
    forces    (n, 3) float64     -dE/dR, Hartree/Bohr
    mo_energy (nao,) float64     converged orbital energies, Hartree
    n_elec    int                number of electrons

Conversion into molequi's eV / Å happens once, in ``record_to_data`` (energies, forces); H stays in
Hartree because every Hamiltonian metric in the literature is in (micro-)Hartree.

Modules::

    ``record``   ``HamiltonianRecord``, one labelled geometry
    ``store``    ``HamiltonianStore`` / ``HamiltonianStoreWriter`` / ``write_store``, the sharded store,
                 and its saved random split (``random_split``, ``write_split``, ``HamiltonianStore.split``)
    ``readers``  ``read_md17_hamiltonian`` (SchNOrb ASE db) and ``read_qh9_lmdb`` (QH9 LMDB)
    ``dataset``  ``HamiltonianDataset``, ``record_to_data`` and the ``hamiltonian`` dataset entry

Labels are computed by ``molequi.qc`` (PySCF labelling, xTB samplers, the multiprocess driver
``molequi.qc.driver.label_dataset``).
"""

from molequi.data.hamiltonian.dataset import HamiltonianDataset, build_hamiltonian_dataset, record_to_data
from molequi.data.hamiltonian.readers import read_md17_hamiltonian, read_qh9_lmdb
from molequi.data.hamiltonian.record import HamiltonianRecord
from molequi.data.hamiltonian.store import (
    FORMAT,
    HamiltonianStore,
    HamiltonianStoreWriter,
    random_split,
    write_split,
    write_store,
)

__all__ = [
    "FORMAT",
    "HamiltonianRecord",
    "HamiltonianStore",
    "HamiltonianStoreWriter",
    "HamiltonianDataset",
    "write_store",
    "random_split",
    "write_split",
    "read_md17_hamiltonian",
    "read_qh9_lmdb",
    "record_to_data",
    "build_hamiltonian_dataset",
]
