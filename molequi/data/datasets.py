"""Datasets by name, splits, and graph datasets ready for a model.

``DatasetConfig`` is the ``dataset:`` section of a training config. ``build_dataset(cfg)`` looks the name
up in ``DATASETS`` (lazy "module:function" entries taking the config) and returns a sequence of records.
Generic formats: ``xyz`` (extended XYZ), ``db`` (ASE database), ``traj`` (ASE trajectory); benchmark
families (qm9, md17, rmd17, oc20_s2ef, oc20_is2re) register themselves here too.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from molequi.errors import ConfigError, DatasetError, suggest


@dataclass
class DatasetConfig:
    """Where the data is and how to read it."""

    name: str = "xyz"
    """dataset or format name: xyz | db | traj | qm9 | md17 | rmd17 | oc20_s2ef | oc20_is2re"""
    root: str = ""
    """file or folder holding the data (for xyz/db/traj: the file)"""
    target: str | None = None
    """property to learn for property datasets (e.g. QM9 'U0', 'gap'); molecule name for md17/rmd17"""
    energy_key: str | None = None
    """extended XYZ / db key of the energy (default: energy, REF_energy, free_energy)"""
    forces_key: str | None = None
    """key of the forces (default: forces, REF_forces)"""
    stress_key: str | None = None
    """key of the stress (default: stress, REF_stress)"""
    options: dict = field(default_factory=dict)
    """dataset-specific options (e.g. {'subtract_reference': true} for OC20)"""


def _read_generic(fmt: str):
    def build(cfg: DatasetConfig):
        from molequi.data.readers import read_structures

        required = ("energy",) if cfg.energy_key else ()
        return read_structures(cfg.root, fmt, energy_key=cfg.energy_key, forces_key=cfg.forces_key,
                               stress_key=cfg.stress_key, required=required)

    return build


# name -> "module:function(cfg) -> Sequence[Data]" or a callable
DATASETS: dict[str, object] = {
    "xyz": _read_generic("extxyz"),
    "extxyz": _read_generic("extxyz"),
    "db": _read_generic("db"),
    "traj": _read_generic("traj"),
    "hamiltonian": "molequi.data.hamiltonian:build_hamiltonian_dataset",
    # benchmark families (molequi.data.qm9 / md17 / oc20); each returns {"train", "val", "test"}
    "qm9": "molequi.data.qm9:build_qm9",
    "md17": "molequi.data.md17:build_md17",
    "rmd17": "molequi.data.md17:build_rmd17",
    "oc20_s2ef": "molequi.data.oc20:build_oc20_s2ef",
    "oc20_is2re": "molequi.data.oc20:build_oc20_is2re",
}


def build_dataset(cfg: DatasetConfig):
    """Build the dataset named by ``cfg.name`` (``ConfigError`` listing valid names otherwise)."""
    name = cfg.name.lower()
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset '{cfg.name}'; valid names: {', '.join(sorted(DATASETS))}. "
                          f"{suggest(name, DATASETS)}".strip())
    if not cfg.root:
        raise ConfigError(f"dataset '{cfg.name}' needs a root (the file or folder holding the data)")
    entry = DATASETS[name]
    if isinstance(entry, str):
        module, fn = entry.split(":")
        entry = getattr(importlib.import_module(module), fn)
    return entry(cfg)


# ------------------------------------------------------------------------------------------------ splits
def random_split(n: int, fractions: Sequence[float], seed: int = 0) -> list[np.ndarray]:
    """Split ``range(n)`` into disjoint index arrays of the given fractions (the last may take the rest).

    Fractions must sum to at most 1; with a sum < 1 the remainder is unused. Seeded permutation.
    """
    if any(f < 0 for f in fractions) or sum(fractions) > 1 + 1e-9:
        raise ConfigError(f"split fractions {list(fractions)} must be >= 0 and sum to at most 1")
    perm = np.random.default_rng(seed).permutation(n)
    sizes = [int(round(f * n)) for f in fractions]
    if abs(sum(fractions) - 1) < 1e-9:
        sizes[-1] = n - sum(sizes[:-1])
    out, start = [], 0
    for size in sizes:
        out.append(np.sort(perm[start:start + size]))
        start += size
    return out


def read_index_file(path: str | os.PathLike, n: int | None = None) -> np.ndarray:
    """Read integer indices (one per line, or whitespace/comma separated; 0-based); checks range if ``n``."""
    p = Path(path)
    if not p.exists():
        raise DatasetError("split index file not found", source=str(p), hint="check the path of the split file")
    values = []
    for lineno, line in enumerate(p.read_text().splitlines(), 1):
        for tok in line.replace(",", " ").split():
            try:
                values.append(int(tok))
            except ValueError:
                raise DatasetError(f"'{tok}' is not an integer index", source=str(p), line=lineno) from None
    idx = np.asarray(values, dtype=np.int64)
    if n is not None and idx.size and (idx.min() < 0 or idx.max() >= n):
        raise DatasetError(f"index {int(idx.max()) if idx.max() >= n else int(idx.min())} out of range for "
                           f"{n} structures", source=str(p))
    if len(np.unique(idx)) != len(idx):
        raise DatasetError("duplicate indices", source=str(p))
    return idx


class GraphDataset(Dataset):
    """Records with their neighbour graphs built once (``RadiusGraph(cutoff)``), kept in memory."""

    def __init__(self, records: Sequence, cutoff: float, progress: bool = False, dtype: torch.dtype | None = None):
        from tqdm.auto import tqdm

        from molequi.graph.neighbors import RadiusGraph

        graph = RadiusGraph(cutoff)
        it = tqdm(records, desc="neighbour lists", disable=not progress, leave=False)
        self.records = []
        for r in it:
            g = graph(r)
            if dtype is not None:
                for key, value in g.items():
                    if isinstance(value, torch.Tensor) and value.is_floating_point():
                        g[key] = value.to(dtype)
            self.records.append(g)
        self.cutoff = cutoff

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]


__all__ = ["DatasetConfig", "DATASETS", "build_dataset", "random_split", "read_index_file", "GraphDataset"]
