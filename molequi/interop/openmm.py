"""molequi models in OpenMM through openmm-ml: ``MLPotential('molequi', modelPath='model.pt')``.

    from openmmml import MLPotential

    potential = MLPotential("molequi", modelPath="runs/mace/model.pt")     # as openmm-ml's MACE takes a file
    system = potential.createSystem(topology)                               # everything with the model
    mixed = potential.createMixedSystem(topology, mm_system, ml_atoms)       # ML/MM: a subset of atoms

molequi registers this potential through openmm-ml's entry point group ``openmmml.potentials`` (pyproject.toml),
so installing molequi is enough. The force is an OpenMM ``PythonForce`` (OpenMM >= 8.3) that evaluates the model
through ``MolequiCalculator`` (neighbour-list cache with a Verlet skin, committees, D3 from the checkpoint), on
the particles of the ML subset only. Keyword arguments of ``createSystem`` / ``createMixedSystem``:

    precision   "single" | "double" | None (the checkpoint's)
    device      torch device (default "cpu")
    dispersion  as ``MolequiCalculator.from_checkpoint`` (default "checkpoint")
    skin        Verlet skin of the neighbour list in Å (default the calculator's)

Units: OpenMM's nm and kJ/mol at the boundary; the model works in Å and eV.
"""

from __future__ import annotations

from functools import partial

import numpy as np

from molequi.errors import InputError

try:
    import openmm
    from openmm import unit
except ImportError as exc:  # pragma: no cover - the message is the point
    raise InputError("molequi.interop.openmm needs OpenMM >= 8.3 and openmm-ml",
                     hint="pip install openmm openmmml (or molequi[openmm])") from exc

from ase.units import kJ, mol  # noqa: E402

_EV_TO_KJ_PER_MOL = 1.0 / (kJ / mol)  # 1 eV in kJ/mol, as ASE (and openmm-ml's ASE potential) converts


class MolequiPotentialImplFactory:
    """Creates the molequi potential for ``MLPotential('molequi', modelPath=...)``.

    openmm-ml loads its entry points (this class) while ``openmmml.mlpotential`` is itself being imported, so
    this module must not import openmm-ml at the top: the factory is duck-typed (openmm-ml only calls
    ``createImpl``) and the ``MLPotentialImpl`` subclass is made on first use (``potential_impl_class``)."""

    def createImpl(self, name: str, modelPath: str | None = None, **args):
        return potential_impl_class()(name, modelPath)


_IMPL = None


def potential_impl_class():
    """``MolequiPotentialImpl``, a subclass of openmm-ml's ``MLPotentialImpl`` (made once, on first use)."""
    global _IMPL
    if _IMPL is None:
        try:
            from openmmml.mlpotential import MLPotentialImpl
        except ImportError as exc:
            raise InputError("the molequi OpenMM potential needs openmm-ml", hint="pip install openmmml") from exc
        _IMPL = type("MolequiPotentialImpl", (_MolequiPotential, MLPotentialImpl),
                     {"__doc__": _MolequiPotential.__doc__, "__module__": __name__})
    return _IMPL


class _MolequiPotential:
    """A molequi checkpoint (or a committee: a list of checkpoints) as an openmm-ml potential."""

    def __init__(self, name: str, modelPath):
        if modelPath is None:
            raise InputError("MLPotential('molequi') needs modelPath=PATH to a molequi checkpoint (model.pt), or "
                             "a list of checkpoints for a committee")
        self.name = name
        self.modelPath = modelPath

    def getMLLongRange(self) -> bool:
        return False  # every molequi force field has a finite cut-off (r_max)

    def addForces(self, topology, system, atoms, forceGroup: int, precision: str | None = None,
                  device: str = "cpu", dispersion="checkpoint", skin: float | None = None, **args):
        import ase

        from molequi.calculators.calculator import DEFAULT_SKIN, MolequiCalculator

        if not hasattr(openmm, "PythonForce"):
            raise InputError(f"OpenMM {openmm.__version__} has no PythonForce; the molequi potential needs "
                             "OpenMM >= 8.3 (pip install -U openmm)")
        if args:
            raise InputError(f"MLPotential('molequi'): unknown arguments {sorted(args)}; valid: precision, "
                             "device, dispersion, skin")
        import torch

        dtypes = {None: None, "single": torch.float32, "double": torch.float64}
        if precision not in dtypes:
            raise InputError(f"precision must be 'single', 'double' or None, got {precision!r}")
        included = list(topology.atoms())
        if atoms is not None:
            included = [included[i] for i in atoms]
        if any(a.element is None for a in included):
            raise InputError("every atom of the Topology needs an element for the molequi potential")
        calc = MolequiCalculator.from_checkpoint(self.modelPath, device=device, dtype=dtypes[precision],
                                                 dispersion=dispersion,
                                                 skin=DEFAULT_SKIN if skin is None else skin)
        periodic = topology.getPeriodicBoxVectors() is not None
        structure = ase.Atoms(numbers=[a.element.atomic_number for a in included], pbc=periodic)
        structure.calc = calc
        force = openmm.PythonForce(partial(_compute, atoms=structure))
        force.setForceGroup(forceGroup)
        force.setUsesPeriodicBoundaryConditions(periodic)
        if atoms is not None:
            force.setParticles(list(atoms))
        system.addForce(force)


def _compute(state, atoms):
    """Energy (kJ/mol) and forces (kJ/mol/nm) of the ML particles at ``state``'s positions."""
    atoms.set_positions(state.getPositions(asNumpy=True).value_in_unit(unit.angstrom))
    if atoms.pbc.any():
        atoms.set_cell(np.asarray(state.getPeriodicBoxVectors(asNumpy=True).value_in_unit(unit.angstrom)))
    energy = atoms.get_potential_energy()
    forces = atoms.get_forces()
    return energy * _EV_TO_KJ_PER_MOL, forces * (10.0 * _EV_TO_KJ_PER_MOL)


__all__ = ["MolequiPotentialImplFactory", "potential_impl_class"]
