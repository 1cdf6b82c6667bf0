"""``HamiltonianRecord``: one labelled geometry (matrices in PySCF AO order, Hartree; positions Å)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from molequi.errors import FormatError


@dataclass
class HamiltonianRecord:
    """One labelled geometry. Matrices in PySCF AO order, Hartree; positions Å; forces Hartree/Bohr."""

    numbers: np.ndarray
    pos: np.ndarray
    fock: np.ndarray
    overlap: np.ndarray
    energy: float = float("nan")
    forces: np.ndarray | None = None
    mo_energy: np.ndarray | None = None
    n_elec: int = -1
    cycles: int = -1

    def __post_init__(self):
        self.numbers = np.asarray(self.numbers, dtype=np.int64).reshape(-1)
        n = len(self.numbers)
        self.pos = np.asarray(self.pos, dtype=np.float64).reshape(n, 3)
        self.fock = np.asarray(self.fock, dtype=np.float64)
        self.overlap = np.asarray(self.overlap, dtype=np.float64)
        nao = self.fock.shape[0]
        if self.fock.shape != (nao, nao) or self.overlap.shape != (nao, nao):
            raise FormatError(
                f"fock {self.fock.shape} and overlap {self.overlap.shape} must be equal squares"
            )
        if self.forces is None:
            self.forces = np.full((n, 3), np.nan)
        self.forces = np.asarray(self.forces, dtype=np.float64).reshape(n, 3)
        if self.mo_energy is None:
            self.mo_energy = np.full(nao, np.nan)
        self.mo_energy = np.asarray(self.mo_energy, dtype=np.float64).reshape(nao)
        if self.n_elec < 0:
            self.n_elec = int(self.numbers.sum())

    @property
    def nao(self) -> int:
        return self.fock.shape[0]


__all__ = ["HamiltonianRecord"]
