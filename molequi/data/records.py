"""Conversion between ``ase.Atoms`` and molequi's graph record (a PyG ``Data``), with validation.

A record carries the fields named in ``molequi.keys``; labels are optional. Per-structure arrays get a
leading dimension of 1 so that PyG's DataLoader stacks them into (B, ...) tensors.

Validation (``validate_atoms``) rejects what would make training or simulation silently wrong: an empty
structure, unknown elements, NaN/inf positions or labels, a singular cell with periodic boundaries, and
atoms closer than ``min_distance`` (default 0.1 Å).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import ase
import numpy as np
import torch
from ase.data import chemical_symbols
from torch_geometric.data import Data

from molequi import keys as K
from molequi.errors import FormatError, ValueRangeError

MIN_DISTANCE = 0.1  # Å, default threshold for "atoms on top of each other"

_RESERVED = {K.NUMBERS, K.POS, K.CELL, K.PBC, K.ENERGY, K.FORCES, K.STRESS, K.CHARGES}


def _where(source, frame):
    return {"source": source, "frame": frame}


def check_finite(name: str, value: np.ndarray, source=None, frame=None) -> None:
    if not np.all(np.isfinite(value)):
        raise ValueRangeError(f"{name} contains NaN or inf", **_where(source, frame),
                              hint="remove or fix this frame")


def validate_atoms(atoms: ase.Atoms, *, source: str | None = None, frame: int | None = None,
                   min_distance: float | None = MIN_DISTANCE) -> None:
    """Raise a ``ValueRangeError`` if ``atoms`` cannot be a valid input structure."""
    where = _where(source, frame)
    n = len(atoms)
    if n == 0:
        raise ValueRangeError("empty structure (no atoms)", **where, hint="every frame needs at least one atom")
    z = atoms.numbers
    if np.any(z <= 0) or np.any(z >= len(chemical_symbols)):
        bad = sorted(set(int(v) for v in z if v <= 0 or v >= len(chemical_symbols)))
        raise ValueRangeError(f"unknown atomic numbers {bad}", **where, hint="use real elements (Z = 1..118)")
    pos = atoms.positions
    check_finite("positions", pos, source, frame)
    cell = np.asarray(atoms.cell[:], dtype=float)
    check_finite("cell", cell, source, frame)
    pbc = np.asarray(atoms.pbc, dtype=bool)
    if pbc.any() and np.linalg.matrix_rank(cell[pbc], tol=1e-6) < pbc.sum():
        # only the periodic lattice vectors must be independent (a slab may have a zero vacuum vector)
        raise ValueRangeError(f"singular cell (volume {abs(np.linalg.det(cell)):.3g} Å^3) with periodic "
                              f"boundaries {pbc.tolist()}", **where,
                              hint="give independent lattice vectors for the periodic directions or set pbc "
                                   "to False there")
    if min_distance is not None and n > 1:
        from molequi.graph.neighbors import minimum_distance

        dmin = minimum_distance(atoms, min_distance)
        if dmin < min_distance:
            raise ValueRangeError(f"atoms closer than {min_distance} Å (minimum distance {dmin:.4g} Å)", **where,
                                  hint="duplicate atoms or wrong units (Bohr vs Å?)")


def atoms_to_data(atoms: ase.Atoms, *, energy: float | None = None, forces: np.ndarray | None = None,
                  stress: np.ndarray | None = None, charges: np.ndarray | None = None,
                  extras: Mapping[str, Any] | None = None, source: str | None = None,
                  frame: int | None = None, validate: bool = True,
                  min_distance: float | None = MIN_DISTANCE, dtype: torch.dtype | None = None) -> Data:
    """Build a record from ``atoms`` and optional labels (eV, eV/Å, eV/Å^3, e).

    ``stress`` may be a Voigt 6-vector (xx, yy, zz, yz, xz, xy, ASE order) or a 3x3 matrix.
    ``extras`` maps names to per-atom arrays (leading dim = n atoms) or per-structure values; per-structure
    values get a leading dimension of 1.
    """
    if validate:
        validate_atoms(atoms, source=source, frame=frame, min_distance=min_distance)
    dtype = dtype or torch.get_default_dtype()
    n = len(atoms)
    where = _where(source, frame)
    d = Data()
    d[K.NUMBERS] = torch.as_tensor(np.asarray(atoms.numbers), dtype=torch.long)
    d[K.POS] = _tensor("positions", atoms.positions, dtype, source, frame)
    d[K.CELL] = _tensor("cell", atoms.cell[:], dtype, source, frame).reshape(1, 3, 3)
    d[K.PBC] = torch.as_tensor(np.asarray(atoms.pbc, dtype=bool)).reshape(1, 3)
    d.num_nodes = n
    if energy is not None:
        e = np.asarray(energy, dtype=float).reshape(-1)
        if e.size != 1:
            raise FormatError(f"energy must be one number, got shape {np.shape(energy)}", **where)
        check_finite("energy", e, source, frame)
        d[K.ENERGY] = _tensor("energy", e, dtype, source, frame)
    if forces is not None:
        f = np.asarray(forces, dtype=float)
        if f.shape != (n, 3):
            raise FormatError(f"forces have shape {f.shape}, expected ({n}, 3)", **where,
                              hint="one (fx, fy, fz) row per atom")
        check_finite("forces", f, source, frame)
        d[K.FORCES] = _tensor("forces", f, dtype, source, frame)
    if stress is not None:
        s = np.asarray(stress, dtype=float)
        if s.shape == (6,):
            s = voigt_to_matrix(s)
        if s.shape != (3, 3):
            raise FormatError(f"stress has shape {s.shape}, expected (6,) Voigt or (3, 3)", **where)
        check_finite("stress", s, source, frame)
        d[K.STRESS] = _tensor("stress", s, dtype, source, frame).reshape(1, 3, 3)
    if charges is not None:
        q = np.asarray(charges, dtype=float).reshape(-1)
        if q.shape != (n,):
            raise FormatError(f"charges have shape {q.shape}, expected ({n},)", **where)
        check_finite("charges", q, source, frame)
        d[K.CHARGES] = _tensor("charges", q, dtype, source, frame)
    for name, value in (extras or {}).items():
        if name in _RESERVED:
            raise FormatError(f"extra field '{name}' clashes with a reserved key", **where)
        d[name] = _extra_tensor(value, n, dtype)
    return d


def _tensor(name: str, value, dtype: torch.dtype, source, frame) -> torch.Tensor:
    """``value`` as a tensor of ``dtype``; finite in float64 is not enough when the record is float32."""
    t = torch.as_tensor(np.asarray(value, dtype=float), dtype=dtype)
    if not torch.isfinite(t).all():
        raise ValueRangeError(f"{name} overflow {dtype} (largest |value| {np.abs(np.asarray(value)).max():.3g})",
                              **_where(source, frame), hint="check the units or use float64 records")
    return t


def _extra_tensor(value: Any, n: int, dtype: torch.dtype) -> torch.Tensor:
    arr = np.asarray(value)
    if arr.dtype.kind in "fc":
        t = torch.as_tensor(arr.astype(float), dtype=dtype)
    elif arr.dtype.kind in "iub":
        t = torch.as_tensor(arr)
    else:
        raise FormatError(f"extra value of dtype {arr.dtype} cannot be stored as a tensor")
    if t.dim() >= 1 and t.shape[0] == n and n > 1:
        return t  # per atom
    return t.reshape(1, *t.shape)  # per structure


def voigt_to_matrix(v: np.ndarray) -> np.ndarray:
    xx, yy, zz, yz, xz, xy = np.asarray(v, dtype=float)
    return np.array([[xx, xy, xz], [xy, yy, yz], [xz, yz, zz]])


def data_to_atoms(d: Data) -> ase.Atoms:
    """Inverse of ``atoms_to_data`` for one structure; labels go to a ``SinglePointCalculator``."""
    from ase.calculators.singlepoint import SinglePointCalculator

    atoms = ase.Atoms(numbers=d[K.NUMBERS].cpu().numpy(), positions=d[K.POS].detach().cpu().double().numpy(),
                      cell=d[K.CELL].detach().cpu().double().numpy().reshape(3, 3),
                      pbc=d[K.PBC].cpu().numpy().reshape(3))
    results = {}
    if K.ENERGY in d:
        results["energy"] = float(d[K.ENERGY].reshape(-1)[0])
    if K.FORCES in d:
        results["forces"] = d[K.FORCES].detach().cpu().double().numpy()
    if K.STRESS in d:
        results["stress"] = d[K.STRESS].detach().cpu().double().numpy().reshape(3, 3)
    if K.CHARGES in d:
        atoms.set_initial_charges(d[K.CHARGES].detach().cpu().double().numpy())
    if results:
        atoms.calc = SinglePointCalculator(atoms, **results)
    return atoms


__all__ = ["atoms_to_data", "data_to_atoms", "validate_atoms", "voigt_to_matrix", "MIN_DISTANCE"]
