"""Geometry (and cell) relaxation with ASE optimisers.

    result = relax(atoms, calc, optimizer="bfgs", fmax=0.05, cell=True)

``cell=True`` wraps the atoms in ``ase.filters.FrechetCellFilter`` so the lattice relaxes too (towards
``pressure``, in GPa); convergence then also requires the stress term of the filter below ``fmax``.
Constraints on ``atoms`` (``FixAtoms``...) are honoured by ASE. ``atoms`` is modified in place.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ase import units

from molequi.errors import ConfigError
from molequi.registry import Registry
from molequi.simulate.writers import FrameWriter

# name -> ASE optimiser class, imported when asked for
OPTIMIZERS = Registry("optimizer", {"bfgs": "ase.optimize:BFGS", "fire": "ase.optimize:FIRE",
                                    "lbfgs": "ase.optimize:LBFGS"})


@dataclass
class RelaxResult:
    converged: bool
    steps: int
    energy: float  # eV
    fmax: float  # eV/Å, largest (constrained) atomic force at the end
    stress: list[float] | None = None  # eV/Å^3, Voigt, for periodic structures


def relax(
    atoms,
    calc=None,
    *,
    optimizer: str = "bfgs",
    fmax: float = 0.05,
    steps: int = 1000,
    cell: bool = False,
    pressure: float = 0.0,
    traj: str | Path | None = None,
    logfile: str | None = None,
) -> RelaxResult:
    """Relax ``atoms`` until every force (and, with ``cell``, the cell force) is below ``fmax`` eV/Å.

    ``traj``: an extended-XYZ file that gets one whole frame per step (appended with flush).
    ``logfile``: ASE optimiser log (``"-"`` for stdout, ``None`` for silence).
    """
    if calc is not None:
        atoms.calc = calc
    if atoms.calc is None:
        raise ConfigError("relax needs a calculator (calc=... or atoms.calc)")
    if fmax <= 0 or steps < 0:
        raise ConfigError(f"need fmax > 0 and steps >= 0, got {fmax}, {steps}")
    target = atoms
    if cell:
        if not np.any(atoms.pbc):
            raise ConfigError("cell relaxation needs a periodic structure")
        from ase.filters import FrechetCellFilter

        target = FrechetCellFilter(atoms, scalar_pressure=pressure * units.GPa)
    opt = OPTIMIZERS.load(optimizer)(target, logfile=logfile)
    writer = None
    if traj is not None:
        writer = FrameWriter(traj)
        opt.attach(lambda: writer.write(atoms), interval=1)
    try:
        converged = bool(opt.run(fmax=fmax, steps=steps))
    finally:
        if writer is not None:
            writer.close()
    forces = atoms.get_forces()
    stress = None
    if np.any(atoms.pbc) and "stress" in atoms.calc.results:
        stress = [float(x) for x in atoms.get_stress()]
    return RelaxResult(
        converged=converged,
        steps=int(opt.nsteps),
        energy=float(atoms.get_potential_energy()),
        fmax=float(np.sqrt((forces**2).sum(1)).max(initial=0.0)),
        stress=stress,
    )


__all__ = ["relax", "RelaxResult", "OPTIMIZERS"]
