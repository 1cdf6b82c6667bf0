"""Datasets by name, splits, and graph datasets ready for a model.

``DataConfig`` is the ``data:`` section of a training config. ``build_dataset(cfg)`` looks the name up in
``DATASETS`` (lazy "module:function" entries taking the config) and returns a sequence of records (or a
dict of ``train`` / ``val`` / ``test`` ones); builders read family-specific options with ``dataset_option``.
Generic formats: ``xyz`` (extended XYZ), ``db`` (ASE database), ``traj`` (ASE trajectory); benchmark
families (qm9, md17, rmd17, oc20_s2ef, oc20_is2re) register themselves here too.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch.utils.data import Dataset

from molequi.errors import ConfigError, DatasetError
from molequi.registry import Registry


@dataclass
class DataConfig:
    """The ``data`` section of a run: which dataset, how to read it, and how to split it.

    One flat mapping in YAML (``data: {name: xyz, root: train.xyz, n_valid: 50}``). ``name`` and ``root``
    select the dataset in ``DATASETS``; ``options`` holds the options only one dataset family understands
    (``split``, ``split_id``, ``molecule``, ``subtract_reference``, ...); the split fields apply to datasets
    that come as one flat list of structures (the benchmark families bring their own splits).
    """

    name: str = "xyz"
    """dataset or format name in molequi.data.datasets.DATASETS (xyz, db, traj, rmd17_npz, rmd17, qm9, ...)"""
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
    options: dict[str, Any] = field(default_factory=dict)
    """dataset-specific options (e.g. {split: [1000, 100, null]} for qm9, {subtract_reference: true} for
    OC20)"""
    valid_fraction: float = 0.05
    """fraction of the training file held out for validation (ignored when n_valid or valid_indices is set)"""
    n_train: int | None = None
    """number of training structures (null: all that are not validation)"""
    n_valid: int | None = None
    """number of validation structures (null: use valid_fraction)"""
    seed: int = 0
    """seed of the random train/validation split"""
    train_indices: str | None = None
    """file of training indices (one integer per line); overrides the random split"""
    valid_indices: str | None = None
    """file of validation indices (one integer per line)"""
    test: str | None = None
    """separate test file (same reader as the training data); null: no test set"""
    shuffle: bool = True
    """shuffle the training set every epoch"""
    num_workers: int = 0
    """data-loader worker processes (0: load in the training process)"""
    graphs: Literal["auto", "eager", "lazy"] = "auto"
    """when in-memory training/validation/test structures get their neighbour graphs: eager (all of them
    before training, with a progress bar), lazy (each on first access, then kept by the process that read
    it: under DDP a process holds the graphs of its own shard only), auto (eager on one process, lazy when
    the run has several). Datasets read on access (LMDB) always build graphs on access, without keeping
    them"""
    dispersion: Any = None
    """D3 correction subtracted from the energy / force / stress labels before training and added back by
    ``MolequiCalculator.from_checkpoint``: null, "d3bj", or {method: d3bj, functional: pbe, three_body: false}
    (``molequi.calculators.dispersion``; needs molequi[d3])"""


# keys earlier versions accepted in the data section -> what to write instead
RENAMED_KEYS = {
    "path": "'data.path' is now 'data.root'",
    "dataset": "'data.dataset' is no longer a nested mapping: write its keys (root, energy_key, ...) "
               "directly under 'data'",
}

# the fields that say which dataset and how to read it (the rest of DataConfig is about splitting)
_DATASET_FIELDS = ("name", "root", "target", "energy_key", "forces_key", "stress_key")


def dataset_option(cfg, name: str, default=None):
    """A dataset builder's option ``name``: ``cfg.options[name]`` of a ``DataConfig`` (or its ``target`` /
    ``root`` / ``*_key`` field); a builder called directly with a plain namespace reads ``cfg.<name>``."""
    if isinstance(cfg, DataConfig):
        value = cfg.options.get(name)
        if value is None and name in _DATASET_FIELDS:
            value = getattr(cfg, name)
    else:
        value = getattr(cfg, name, None)
    return default if value is None else value


def _read_generic(fmt: str):
    def build(cfg: DataConfig):
        from molequi.data.readers import read_structures

        required = ("energy",) if cfg.energy_key else ()
        return read_structures(cfg.root, fmt, energy_key=cfg.energy_key, forces_key=cfg.forces_key,
                               stress_key=cfg.stress_key, required=required,
                               virials_key=dataset_option(cfg, "virials_key"),  # MACE's --virials_key
                               head_key=dataset_option(cfg, "head_key", "head"))  # and --head_key

    return build


# name -> "module:function(cfg) -> Sequence[Data]" or a callable
DATASETS = Registry("dataset", valid_label="names", entries={
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
    # fairchem's ASE-LMDB files (OMat24, OMol25, fairchem v2 OC20), read on access
    "aselmdb": "molequi.data.aselmdb:build_aselmdb",
})


def build_dataset(cfg: DataConfig):
    """Build the dataset named by ``cfg.name`` (``ConfigError`` listing valid names otherwise)."""
    DATASETS.key(cfg.name)
    if not cfg.root:
        raise ConfigError(f"dataset '{cfg.name}' needs a root (the file or folder holding the data)")
    return DATASETS.load(cfg.name)(cfg)


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


__all__ = ["DataConfig", "RENAMED_KEYS", "dataset_option", "DATASETS", "build_dataset", "random_split",
           "read_index_file", "GraphDataset"]
