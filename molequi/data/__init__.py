"""Data: records (ase.Atoms <-> graph records), readers per format, datasets, statistics."""

from molequi.data.records import atoms_to_data, data_to_atoms, validate_atoms
from molequi.data.statistics import Statistics, compute_statistics, fit_e0s

__all__ = ["atoms_to_data", "data_to_atoms", "validate_atoms", "Statistics", "compute_statistics", "fit_e0s"]
