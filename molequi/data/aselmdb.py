"""fairchem's ASE-LMDB datasets (``*.aselmdb``: OMat24, OMol25, fairchem v2's OC20), read lazily.

An ``.aselmdb`` file is an ASE database in LMDB (``ase_db_backends.aselmdb.LMDBDatabase``, the
``ase-db-backends`` package): one row per structure, stored as compressed JSON (no pickle), with the
calculator's ``energy``, ``forces`` and ``stress`` and any ``data`` / key-value pairs. ``data.name: aselmdb``
reads

- ``data.root`` = one ``.aselmdb`` file or a folder of them (a flat dataset the trainer splits with
  ``n_valid`` / ``valid_fraction``, lazily), or
- a folder with ``train/``, ``val/`` (or ``valid/``) and optionally ``test/`` sub-folders of ``.aselmdb``
  files,
  fairchem's layout for OMat24 / OMol25, used as the splits.

Rows are read on access (``lazy = True``): memory stays flat with the dataset size, each process
(DataLoader worker, DDP rank) opens its own read-only environments. ``energy_key`` / ``forces_key`` /
``stress_key`` pick other row fields (``row.data[...]`` or key-value pairs) instead of the calculator's.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from torch.utils.data import Dataset

from molequi.errors import DatasetError, FormatError, InputError

SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid"), "test": ("test",)}


def _backend():
    try:
        from ase_db_backends.aselmdb import LMDBDatabase
    except ImportError as exc:
        raise InputError("reading .aselmdb files needs the ase-db-backends package",
                         hint="pip install ase-db-backends (or molequi[fairchem-data])") from exc
    return LMDBDatabase


# (process id, resolved path) -> read-only database: LMDB allows one environment per file and process, so
# every dataset (and every unpickled copy of one) in a process shares it; a forked worker opens its own
_DBS: dict[tuple[int, str], object] = {}


def _open_db(path: Path):
    key = (os.getpid(), str(Path(path).resolve()))
    db = _DBS.get(key)
    if db is None:
        try:
            db = _backend()(path, readonly=True)
        except InputError:
            raise
        except Exception as exc:
            raise FormatError(f"cannot open as an ASE LMDB database ({type(exc).__name__}: {exc})",
                              source=str(path), hint="expected a fairchem *.aselmdb file") from exc
        _DBS[key] = db
    return db


def aselmdb_files(path: str | os.PathLike) -> list[Path]:
    """One ``.aselmdb`` file, or every ``*.aselmdb`` of a folder (sorted)."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.aselmdb") if p.is_file())
        if not files:
            raise DatasetError(f"no *.aselmdb files in {path}",
                               hint="point at an .aselmdb file or a folder of them")
        return files
    if not path.exists():
        raise DatasetError(f"{path} does not exist")
    return [path]


class AseLmdbDataset(Dataset):
    """Random access over ``.aselmdb`` files; rows become molequi records on access."""

    lazy = True  # read on access: the trainer keeps it as it is and builds graphs per item

    def __init__(self, path: str | os.PathLike, *, energy_key: str | None = None, forces_key: str | None = None,
                 stress_key: str | None = None):
        self.files = aselmdb_files(path)
        self.keys = (energy_key, forces_key, stress_key)
        lengths = [len(_open_db(f).ids) for f in self.files]
        self._offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _db(self, k: int):
        return _open_db(self.files[k])

    def locate(self, i: int) -> tuple[int, int]:
        n = len(self)
        i = i + n if i < 0 else i
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for {n} structures")
        k = int(np.searchsorted(self._offsets, i, side="right") - 1)
        return k, int(i - self._offsets[k])

    def atoms(self, i: int):
        """The ``ase.Atoms`` of structure ``i`` (calculator results attached as ASE stores them)."""
        k, local = self.locate(int(i))
        try:
            return self._db(k)._get_row_by_index(local).toatoms(add_additional_information=True)
        except Exception as exc:
            raise FormatError(f"cannot read row {local} ({type(exc).__name__}: {exc})", source=str(self.files[k]),
                              frame=local) from exc

    def __getitem__(self, i: int):
        from molequi.data.records import atoms_to_data

        atoms = self.atoms(i)
        k, local = self.locate(int(i))
        labels = {}
        for name, key in zip(("energy", "forces", "stress"), self.keys):
            labels[name] = _label(atoms, name, key)
        if labels["stress"] is not None and not atoms.pbc.all():
            labels["stress"] = None  # molecules (OMol25) have no stress
        return atoms_to_data(atoms, energy=labels["energy"], forces=labels["forces"], stress=labels["stress"],
                             source=str(self.files[k]), frame=local)



def _label(atoms, name: str, key: str | None):
    if key is None:
        results = getattr(atoms.calc, "results", {}) or {}
        return results.get(name)
    for store in (atoms.info.get("data", {}), atoms.info.get("key_value_pairs", {}), atoms.info):
        if key in store:
            return np.asarray(store[key], dtype=float)
    raise DatasetError(f"no field {key!r} in the row", hint=f"fields: {sorted(atoms.info)}")


def build_aselmdb(cfg):
    """Registry entry ``aselmdb``: a flat dataset, or ``{"train", "val", "test"}`` from fairchem's split folders."""
    root = Path(cfg.root)
    keys = dict(energy_key=cfg.energy_key, forces_key=cfg.forces_key, stress_key=cfg.stress_key)
    if root.is_dir() and not list(root.glob("*.aselmdb")):
        splits = {}
        for split, names in SPLIT_DIRS.items():
            for name in names:
                if (root / name).is_dir():
                    splits[split] = AseLmdbDataset(root / name, **keys)
                    break
        if "train" not in splits:
            raise DatasetError(f"{root} has neither *.aselmdb files nor a train/ folder of them")
        return splits
    return AseLmdbDataset(root, **keys)


__all__ = ["AseLmdbDataset", "aselmdb_files", "build_aselmdb"]
