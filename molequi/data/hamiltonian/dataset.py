"""Graph records of Hamiltonian stores for training (``molequi.tasks.hamiltonian``)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

from molequi.data.hamiltonian.record import HamiltonianRecord
from molequi.data.hamiltonian.store import HamiltonianStore
from molequi.units import HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM, HARTREE_TO_EV


class HamiltonianDataset:
    """Map-style dataset of graph records over a ``HamiltonianStore`` (or any indexable of records).

    Each item is ``atoms_to_data(...)`` (pos Å, energy eV, forces eV/Å) plus, in PySCF AO order::

        ``fock``    (nao*nao,) Hartree, row-major flattened, so PyG batching concatenates molecules
        ``overlap`` (nao*nao,)
        ``nao``     (1,) long;  ``n_elec`` (1,) long

    ``molequi.tasks.hamiltonian.split_matrices`` turns a batch back into a list of (nao, nao) matrices.
    """

    def __init__(self, store, indices: Sequence[int] | None = None, dtype=None):
        self.store = HamiltonianStore(store) if isinstance(store, (str, os.PathLike)) else store
        self.indices = list(range(len(self.store))) if indices is None else list(indices)
        self.dtype = dtype

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        return record_to_data(self.store[self.indices[i]], dtype=self.dtype)


def build_hamiltonian_dataset(cfg) -> list:
    """``molequi.data.datasets`` entry ``hamiltonian``: every record of the store at ``cfg.root`` as graph
    records (``record_to_data``). ``cfg.options``: ``split`` (``train``, ``valid`` or ``test``: only the
    records of that part of the store's saved ``split.json``), ``limit`` (first N records only)."""
    from molequi.errors import DatasetError

    store = HamiltonianStore(cfg.root)
    options = getattr(cfg, "options", None) or {}
    ids = list(range(len(store)))
    if options.get("split") is not None:
        split = store.split()
        if split is None or options["split"] not in split:
            raise DatasetError(f"data.options.split={options['split']!r}: {cfg.root} has "
                              f"{'no split.json' if split is None else 'no such part'}",
                              hint="use train, valid or test with a store made by "
                                   "scripts/make_hamiltonian_dataset.py")
        ids = split[options["split"]]
    if options.get("limit") is not None:
        ids = ids[: int(options["limit"])]
    return [record_to_data(store[i]) for i in ids]


def record_to_data(rec: HamiltonianRecord, dtype=None):
    """Graph record of one ``HamiltonianRecord`` (see ``HamiltonianDataset``)."""
    import ase
    import torch

    from molequi.data.records import atoms_to_data

    dtype = dtype or torch.get_default_dtype()
    atoms = ase.Atoms(numbers=rec.numbers, positions=rec.pos)
    energy = rec.energy * HARTREE_TO_EV if np.isfinite(rec.energy) else None
    forces = rec.forces * HARTREE_PER_BOHR_TO_EV_PER_ANGSTROM if np.all(np.isfinite(rec.forces)) else None
    d = atoms_to_data(atoms, energy=energy, forces=forces, dtype=dtype)
    d.fock = torch.as_tensor(rec.fock, dtype=dtype).reshape(-1)
    d.overlap = torch.as_tensor(rec.overlap, dtype=dtype).reshape(-1)
    d.nao = torch.tensor([rec.nao], dtype=torch.long)
    d.n_elec = torch.tensor([rec.n_elec], dtype=torch.long)
    return d


__all__ = ["HamiltonianDataset", "record_to_data", "build_hamiltonian_dataset"]
