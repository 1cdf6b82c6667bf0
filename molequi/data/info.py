"""Summaries of a dataset: counts, elements, atoms per structure, energy / force statistics (eV, eV/Å)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from ase.data import chemical_symbols

from molequi import keys as K
from molequi.data.datasets import DATASETS, DataConfig, build_dataset
from molequi.data.statistics import compute_statistics
from molequi.errors import FormatError


def detect_format(path: str | os.PathLike) -> str:
    """The dataset name for ``path``: the benchmark-format sniffer first, then the file suffix."""
    try:
        from molequi.data.sniff import sniff_format
    except ImportError:  # the benchmark adapters are optional in a minimal install
        sniff_format = None
    if sniff_format is not None:
        name = sniff_format(path)
        if name:
            return name
    from molequi.data.readers import guess_format

    fmt = guess_format(path)
    if fmt is None:
        raise FormatError("cannot tell the format of this file", source=str(path),
                          hint=f"pass --format, one of {', '.join(sorted(DATASETS))}")
    return "xyz" if fmt == "extxyz" else fmt


def summarize(records: Sequence, cutoff: float | None = 5.0) -> dict:
    """Statistics of ``records`` as plain JSON-able values."""
    n_atoms = np.array([int(r[K.NUMBERS].shape[0]) for r in records])
    energies = np.array([float(r[K.ENERGY].reshape(-1)[0]) for r in records if K.ENERGY in r])
    natoms_e = np.array([int(r[K.NUMBERS].shape[0]) for r in records if K.ENERGY in r])
    forces = [r[K.FORCES].double().numpy() for r in records if K.FORCES in r]
    stats = compute_statistics(records, cutoff=cutoff)
    out = {
        "n_structures": len(records),
        "elements": [chemical_symbols[z] for z in stats.elements],
        "n_atoms_total": int(n_atoms.sum()),
        "atoms_min": int(n_atoms.min()),
        "atoms_max": int(n_atoms.max()),
        "atoms_mean": float(n_atoms.mean()),
        "periodic": int(sum(bool(r[K.PBC].any()) for r in records)),
        "n_with_energy": int(len(energies)),
        "n_with_forces": len(forces),
        "n_with_stress": int(sum(K.STRESS in r for r in records)),
    }
    if len(energies):
        per_atom = energies / natoms_e
        out.update(energy_mean=float(energies.mean()), energy_std=float(energies.std()),
                   energy_min=float(energies.min()), energy_max=float(energies.max()),
                   energy_per_atom_mean=float(per_atom.mean()), energy_per_atom_std=float(per_atom.std()),
                   e0s={chemical_symbols[z]: v for z, v in stats.e0s.items()},
                   residual_energy_per_atom_std=stats.energy_scale)
    if forces:
        allf = np.concatenate(forces)
        out.update(force_rms=float(np.sqrt((allf**2).mean())), force_max=float(np.abs(allf).max()))
    if cutoff is not None:
        out.update(cutoff=cutoff, mean_neighbors=stats.avg_num_neighbors)
    return out


def dataset_info(source: str, format: str | None = None, cutoff: float | None = 5.0, **options) -> dict:
    """Summary of everything in ``source``; a dataset that comes split reports the split sizes too."""
    name = format or detect_format(source)
    if name in WHOLE_SET_SPLIT:  # describe the whole file, not the default benchmark split of it
        options.setdefault("options", {}).setdefault("split", WHOLE_SET_SPLIT[name])
    cfg = DataConfig(name=name, root=str(source), **options)
    built = build_dataset(cfg)
    info = {"source": str(Path(source)), "format": name}
    if isinstance(built, dict):  # benchmark families return {"train", "val", "test"}
        info["splits"] = {part: len(records) for part, records in built.items()}
        records = [r for part in built.values() for r in part]
    else:
        records = list(built)
    if len(records) == 0:
        raise FormatError("no structures found", source=str(source))
    info.update(summarize(records, cutoff=cutoff))
    return info


# datasets whose builder splits by sizes: ask for everything in one part
WHOLE_SET_SPLIT = {"qm9": [None, 0, 0], "md17": [None, 0, 0]}


__all__ = ["dataset_info", "summarize", "detect_format"]
