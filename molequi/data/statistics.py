"""Dataset statistics that models need for normalisation, computed once from the training split.

- per-element reference energies E0[Z] (eV) by least squares:  E_s ~ sum_Z count_s(Z) * E0[Z]
- energy shift / scale: mean and std of the per-atom residual energy (E - sum E0) / n  (eV/atom)
- force RMS (eV/Å), the natural scale of a force-trained model
- mean number of neighbours within the cutoff (normalises message sums, as in MACE)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from molequi import keys as K


@dataclass
class Statistics:
    elements: list[int]
    e0s: dict[int, float] = field(default_factory=dict)  # eV per atom of element Z
    energy_shift: float = 0.0  # eV/atom, mean residual per-atom energy
    energy_scale: float = 1.0  # eV/atom, std of residual per-atom energy
    force_rms: float = 1.0  # eV/Å
    avg_num_neighbors: float = 1.0
    n_structures: int = 0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["e0s"] = {int(k): float(v) for k, v in self.e0s.items()}
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Statistics:
        d = dict(d)
        d["e0s"] = {int(k): float(v) for k, v in d.get("e0s", {}).items()}
        d["elements"] = [int(z) for z in d["elements"]]
        return cls(**d)

    def reference_energy(self, numbers: Sequence[int]) -> float:
        return float(sum(self.e0s.get(int(z), 0.0) for z in numbers))


def fit_e0s(records: Iterable, elements: Sequence[int]) -> dict[int, float]:
    """Per-element reference energies by linear least squares on structure energies (eV)."""
    elements = list(elements)
    col = {z: i for i, z in enumerate(elements)}
    rows, energies = [], []
    for d in records:
        if K.ENERGY not in d:
            continue
        counts = np.zeros(len(elements))
        for z in d[K.NUMBERS].tolist():
            counts[col[z]] += 1
        rows.append(counts)
        energies.append(float(d[K.ENERGY].reshape(-1)[0]))
    if not rows:
        return {z: 0.0 for z in elements}
    A, y = np.asarray(rows), np.asarray(energies)
    # minimum-norm solution: stable when compositions are collinear (MD of a single molecule)
    sol, *_ = np.linalg.lstsq(A, y, rcond=None)
    return {z: float(sol[col[z]]) for z in elements}


def compute_statistics(records: Sequence, cutoff: float | None = None, elements: Sequence[int] | None = None,
                       e0s: dict[int, float] | None = None) -> Statistics:
    """Compute ``Statistics`` over ``records`` (graph records; neighbours counted from their edges, or within
    ``cutoff`` when they have none)."""
    records = list(records)
    if elements is None:
        elements = sorted({int(z) for d in records for z in d[K.NUMBERS].tolist()})
    elements = [int(z) for z in elements]
    if e0s is None:
        e0s = fit_e0s(records, elements)
    per_atom, force_sq, n_force, n_neigh, n_atoms = [], 0.0, 0, 0, 0
    for d in records:
        z = d[K.NUMBERS].tolist()
        n = len(z)
        n_atoms += n
        if K.ENERGY in d:
            ref = sum(e0s.get(int(a), 0.0) for a in z)
            per_atom.append((float(d[K.ENERGY].reshape(-1)[0]) - ref) / n)
        if K.FORCES in d:
            f = d[K.FORCES].double()
            force_sq += float((f**2).sum())
            n_force += f.numel()
        if K.EDGE_INDEX in d:
            n_neigh += int(d[K.EDGE_INDEX].shape[1])
        elif cutoff is not None:
            from molequi.graph.neighbors import neighbor_list

            ei, _, _ = neighbor_list(d[K.POS].double().numpy(), d[K.CELL].double().numpy().reshape(3, 3),
                                     d[K.PBC].numpy().reshape(3), cutoff)
            n_neigh += ei.shape[1]
    shift = float(np.mean(per_atom)) if per_atom else 0.0
    scale = float(np.std(per_atom)) if len(per_atom) > 1 else 1.0
    force_rms = float(np.sqrt(force_sq / n_force)) if n_force else 1.0
    return Statistics(
        elements=elements,
        e0s={int(k): float(v) for k, v in e0s.items()},
        energy_shift=shift,
        energy_scale=scale if scale > 1e-12 else 1.0,
        force_rms=force_rms if force_rms > 1e-12 else 1.0,
        avg_num_neighbors=(n_neigh / n_atoms) if n_atoms and n_neigh else 1.0,
        n_structures=len(records),
    )


def statistics_sample(records, limit: int = 20_000, seed: int = 0):
    """``records`` itself when it is small or in memory; a seeded sample of ``limit`` items of a lazy dataset
    (an OC20 LMDB of millions of frames), so that statistics never load the whole dataset."""
    if not getattr(records, "lazy", False) or len(records) <= limit:
        return records
    idx = np.sort(np.random.default_rng(seed).choice(len(records), size=limit, replace=False))
    return [records[int(i)] for i in idx]


def as_tensor_e0s(stats: Statistics, dtype: torch.dtype | None = None) -> torch.Tensor:
    """E0 as a (118 + 1,) lookup table indexed by atomic number (``dtype`` defaults to torch's default)."""
    table = torch.zeros(119, dtype=dtype or torch.get_default_dtype())
    for z, v in stats.e0s.items():
        table[int(z)] = v
    return table


__all__ = ["Statistics", "fit_e0s", "compute_statistics", "statistics_sample", "as_tensor_e0s"]
