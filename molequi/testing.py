"""Symmetry and consistency assertions, shipped to users so they can check any model the way molequi does.

All helpers take a model with molequi's interface,
``model(batch, compute_forces=True, compute_stress=False) -> {"energy", "forces"?, "stress"?, ...}``,
a list of ``ase.Atoms`` and the model's cutoff; they build the graphs themselves (so the neighbour list is
part of what is tested) and compare in the dtype asked for.

- ``assert_equivariant``: Haar-random rotations (and reflections for O(3) models), translations and atom
  permutations. Energy invariant; forces (and any per-atom vector output) rotate as vectors; stress
  rotates as a rank-2 tensor, sigma' = R sigma R^T.
- ``check_forces_fd``: forces against central finite differences of the energy.
- ``check_stress_fd``: stress against central finite differences of the energy under a cell strain.

Tolerances (per dtype; every check takes its own override):

- energy: an *absolute* bound on |E(g x) - E(x)| per structure, in eV (``ENERGY_ATOL``: float64 1e-9 eV,
  float32 1e-3 eV; ``energy_atol=``). Absolute because total energies are large: a bound relative to |E|
  would let a -2000 eV structure change by 2e-7 eV under rotation at "1e-10". float64 resolves 4.5e-13 eV
  at 2000 eV, float32 1.2e-4 eV, so the defaults hold for sums of a few hundred atomic energies; give a
  larger ``energy_atol`` for float32 models of very large systems.
- forces / stress: *relative*, max |F' - R F| / max(max |F|, 1 eV/Å) (stress alike with 1 eV/Å^3)
  (``EQUIVARIANCE_TOL``: float64 1e-10, float32 1e-5; ``atol=``).
- finite differences (``FD_TOL``: float64 1e-6, float32 1e-2), relative to the size of forces / stress.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import ase
import numpy as np
import torch
from torch_geometric.data import Batch

from molequi import keys as K
from molequi.calculators.predict import build_records, model_outputs
from molequi.so3.rotations import haar_rotation

EQUIVARIANCE_TOL = {torch.float64: 1e-10, torch.float32: 1e-5}  # relative, forces and stress
ENERGY_ATOL = {torch.float64: 1e-9, torch.float32: 1e-3}  # eV per structure, |E(g x) - E(x)|
FD_TOL = {torch.float64: 1e-6, torch.float32: 1e-2}


@dataclass
class SymmetryReport:
    """Largest errors found: ``energy`` absolute in eV (max over structures of |E' - E|); ``forces`` and
    ``stress`` relative to the scale of the compared quantity (max |value|, at least 1)."""

    energy: float = 0.0
    forces: float = 0.0
    stress: float = 0.0

    def worst(self) -> float:
        return max(self.energy, self.forces, self.stress)


def random_rotation(rng: np.random.Generator, reflection: bool = False) -> np.ndarray:
    """Haar-uniform random rotation (3, 3) by QR of a Gaussian matrix with sign correction (Mezzadri 2007).

    With ``reflection=True`` the result has determinant -1 (an improper rotation).
    """
    q = haar_rotation(gaussian=torch.as_tensor(rng.standard_normal((3, 3)))).numpy()
    if reflection:
        q = -q
    return q


def _batch(structures: Sequence[ase.Atoms], cutoff: float, dtype: torch.dtype, device="cpu") -> Batch:
    return Batch.from_data_list(build_records(structures, cutoff, dtype, validate=False)).to(device)


def predict(model, structures: Sequence[ase.Atoms], cutoff: float, *, dtype: torch.dtype = torch.float64,
            compute_stress: bool = False, device="cpu") -> dict[str, np.ndarray]:
    """Run ``model`` on ``structures`` as one batch (``molequi.calculators.predict.model_outputs``); return
    numpy arrays (energy (B,), forces (n, 3), ...)."""
    records = build_records(structures, cutoff, dtype, validate=False)
    ((_, out, _),) = model_outputs(model, records, batch_size=max(1, len(records)), device=device,
                                   compute_stress=compute_stress)
    return {k: v.detach().cpu().double().numpy() for k, v in out.items() if isinstance(v, torch.Tensor)}


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    scale = max(1.0, float(np.abs(b).max()) if b.size else 1.0)
    return float(np.abs(a - b).max() / scale) if a.size else 0.0


def _transform(atoms: ase.Atoms, rot: np.ndarray, shift: np.ndarray, perm: np.ndarray) -> ase.Atoms:
    new = atoms[perm]
    new.positions = atoms.positions[perm] @ rot.T + shift
    new.cell = atoms.cell[:] @ rot.T
    return new


def assert_equivariant(model, structures: Sequence[ase.Atoms], cutoff: float, *,
                       dtype: torch.dtype = torch.float64, reflections: bool = False, n_rotations: int = 3,
                       translations: bool = True, permutations: bool = True, compute_stress: bool | None = None,
                       atol: float | None = None, energy_atol: float | None = None, seed: int = 0,
                       device="cpu") -> SymmetryReport:
    """Assert that ``model`` is E(3)/SE(3)-equivariant and permutation-equivariant on ``structures``.

    For each of ``n_rotations`` Haar-random rotations R (plus reflections if ``reflections``), a random
    translation t and a random permutation P of every structure: positions x -> P(x R^T + t), cell -> cell R^T.
    Checks E' = E, F' = P(F R^T), sigma' = R sigma R^T (stress only for fully periodic structures, on by
    default when every structure is periodic). Energies must agree within ``energy_atol`` eV (absolute;
    default ``ENERGY_ATOL[dtype]``), forces and stress within ``atol`` relative (default
    ``EQUIVARIANCE_TOL[dtype]``; an ``atol`` above ``ENERGY_ATOL`` given without ``energy_atol`` loosens the
    energy bound to ``atol`` eV too). Raises ``AssertionError`` with the worst errors; returns a
    ``SymmetryReport``.
    """
    rng = np.random.default_rng(seed)
    tol = atol if atol is not None else EQUIVARIANCE_TOL.get(dtype, 1e-5)
    e_tol = ENERGY_ATOL.get(dtype, 1e-3) if energy_atol is None else energy_atol
    if energy_atol is None and atol is not None:  # a looser atol alone loosens the energy bound to atol eV
        e_tol = max(e_tol, atol)
    if compute_stress is None:
        compute_stress = all(np.asarray(a.pbc).all() for a in structures)
    model = model.to(dtype=dtype) if isinstance(model, torch.nn.Module) else model
    ref = predict(model, structures, cutoff, dtype=dtype, compute_stress=compute_stress, device=device)
    report = SymmetryReport()
    transforms = [(random_rotation(rng), "rotation") for _ in range(n_rotations)]
    if reflections:
        transforms += [(random_rotation(rng, reflection=True), "reflection") for _ in range(n_rotations)]
    for rot, kind in transforms:
        moved, perms = [], []
        for atoms in structures:
            perm = rng.permutation(len(atoms)) if permutations else np.arange(len(atoms))
            shift = rng.normal(size=3) * 3.0 if translations else np.zeros(3)
            moved.append(_transform(atoms, rot, shift, perm))
            perms.append(perm)
        out = predict(model, moved, cutoff, dtype=dtype, compute_stress=compute_stress, device=device)
        e_err = float(np.abs(out[K.ENERGY] - ref[K.ENERGY]).max())  # eV, absolute
        report.energy = max(report.energy, e_err)
        if K.FORCES in ref:
            offsets = np.cumsum([0] + [len(a) for a in structures])
            expected = np.concatenate([ref[K.FORCES][offsets[s]:offsets[s + 1]][p] @ rot.T
                                       for s, p in enumerate(perms)])
            report.forces = max(report.forces, _rel(out[K.FORCES], expected))
        if compute_stress and K.STRESS in ref:
            expected = np.einsum("ij,bjk,lk->bil", rot, ref[K.STRESS], rot)
            report.stress = max(report.stress, _rel(out[K.STRESS], expected))
        if report.energy > e_tol or max(report.forces, report.stress) > tol:
            raise AssertionError(f"model is not equivariant under a {kind} ({dtype}): energy changes by "
                                 f"{report.energy:.3g} eV (tolerance {e_tol:.1g} eV); relative errors forces "
                                 f"{report.forces:.3g}, stress {report.stress:.3g} (tolerance {tol:.1g})")
    return report


def check_forces_fd(model, atoms: ase.Atoms, cutoff: float, *, dtype: torch.dtype = torch.float64,
                    delta: float | None = None, atol: float | None = None, n_atoms: int | None = None,
                    seed: int = 0, device="cpu") -> float:
    """Compare forces with -dE/dx by central differences; return the max abs error (eV/Å).

    ``n_atoms`` limits the check to that many random atoms (all three components each).
    """
    delta = delta if delta is not None else (1e-5 if dtype == torch.float64 else 1e-2)
    tol = atol if atol is not None else FD_TOL.get(dtype, 1e-2)
    model = model.to(dtype=dtype) if isinstance(model, torch.nn.Module) else model
    forces = predict(model, [atoms], cutoff, dtype=dtype, device=device)[K.FORCES]
    rng = np.random.default_rng(seed)
    idx = np.arange(len(atoms)) if n_atoms is None else rng.choice(len(atoms), min(n_atoms, len(atoms)),
                                                                     replace=False)
    worst = 0.0
    for i in idx:
        for c in range(3):
            energies = []
            for sign in (+1, -1):
                moved = atoms.copy()
                moved.positions[i, c] += sign * delta
                energies.append(predict(model, [moved], cutoff, dtype=dtype, device=device)[K.ENERGY][0])
            fd = -(energies[0] - energies[1]) / (2 * delta)
            worst = max(worst, abs(fd - forces[i, c]))
    scale = max(1.0, float(np.abs(forces).max()))
    if worst > tol * scale:
        raise AssertionError(f"forces differ from -dE/dx by {worst:.3g} eV/Å (tolerance {tol * scale:.1g})")
    return worst


def check_stress_fd(model, atoms: ase.Atoms, cutoff: float, *, dtype: torch.dtype = torch.float64,
                    delta: float | None = None, atol: float | None = None, device="cpu") -> float:
    """Compare stress with (1/V) dE/d(eps) by central differences of a symmetric strain; return max abs error.

    Atoms and cell are strained together: x -> x (1 + eps), cell -> cell (1 + eps). Units eV/Å^3.
    """
    if not np.asarray(atoms.pbc).all():
        raise ValueError("check_stress_fd needs a fully periodic structure")
    delta = delta if delta is not None else (1e-6 if dtype == torch.float64 else 1e-3)
    tol = atol if atol is not None else FD_TOL.get(dtype, 1e-2)
    model = model.to(dtype=dtype) if isinstance(model, torch.nn.Module) else model
    stress = predict(model, [atoms], cutoff, dtype=dtype, compute_stress=True, device=device)[K.STRESS][0]
    volume = atoms.get_volume()
    fd = np.zeros((3, 3))
    for a in range(3):
        for b in range(3):
            energies = []
            for sign in (+1, -1):
                eps = np.zeros((3, 3))
                eps[a, b] += sign * delta / 2
                eps[b, a] += sign * delta / 2
                strained = atoms.copy()
                strained.set_cell(atoms.cell[:] @ (np.eye(3) + eps), scale_atoms=True)
                energies.append(predict(model, [strained], cutoff, dtype=dtype, device=device)[K.ENERGY][0])
            fd[a, b] = (energies[0] - energies[1]) / (2 * delta) / volume
    worst = float(np.abs(fd - stress).max())
    scale = max(1e-2, float(np.abs(stress).max()))
    if worst > tol * scale:
        raise AssertionError(f"stress differs from (1/V) dE/d(strain) by {worst:.3g} eV/Å^3 "
                             f"(tolerance {tol * scale:.1g})")
    return worst


__all__ = ["assert_equivariant", "check_forces_fd", "check_stress_fd", "random_rotation", "predict",
           "SymmetryReport", "EQUIVARIANCE_TOL", "ENERGY_ATOL", "FD_TOL"]
