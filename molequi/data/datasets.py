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
    "rmd17_npz": "molequi.data.rmd17_npz:build_rmd17_npz",  # one rMD17 npz, no split files (shipped sample)
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
def random_split(
    n: int, sizes: Sequence[int | float | None], seed: int = 0
) -> list[np.ndarray]:
    """Seeded random split of ``range(n)``; ``sizes``: counts, fractions (< 1) or one ``None`` (the rest).

    Fractions are floats in [0, 1]; a float 1.0 means the whole set. With ``sizes=(110000, 10000, None)`` and
    QM9's 130,831 characterised molecules this is PyG/DimeNet's split.
    """
    counts = []
    for s in sizes:
        if s is None:
            counts.append(None)
        elif isinstance(s, float) and 0 <= s <= 1:
            counts.append(int(round(s * n)))
        else:
            counts.append(int(s))
    if counts.count(None) > 1:
        raise DatasetError("at most one split size may be None (the rest)")
    fixed = sum(c for c in counts if c is not None)
    if fixed > n:
        raise DatasetError(
            f"split sizes {list(sizes)} ask for {fixed} items but the dataset has {n}",
            hint="give smaller counts or fractions such as (0.8, 0.1, 0.1)",
        )
    counts = [n - fixed if c is None else c for c in counts]
    perm = np.random.default_rng(seed).permutation(n)
    out, start = [], 0
    for c in counts:
        out.append(np.sort(perm[start : start + c]))
        start += c
    return out


def read_index_file(path: str | os.PathLike, n: int | None = None) -> np.ndarray:
    """Read integer indices (one per line, or whitespace/comma separated; 0-based); checks range if ``n``."""
    p = Path(path)
    if not p.exists():
        raise DatasetError("split index file not found", source=str(p),
                           hint="check the path of the split file")
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

    def __init__(self, records: Sequence, cutoff: float, progress: bool = False,
                 dtype: torch.dtype | None = None):
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
