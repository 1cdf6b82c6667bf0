"""Simulations with a model behind an ASE calculator: molecular dynamics and relaxation.

Modules::

    ``md``          ``run_md(atoms, calc, MDSettings(...))``: guarded MD with ASE integrators (NVE / NVT /
                    NPT); ``MDSettings`` holds the ensemble and its blow-up guard (``BlowUpGuard``)
    ``relax``       ``relax``: BFGS / FIRE / LBFGS, optionally with ``FrechetCellFilter``
    ``writers``     ``FrameWriter`` (whole extended-XYZ frames) and ``CSVLog``
    ``plots``       ``plot_energies``: energy-versus-time PNG of MD runs
    ``quickstart``  ``quickstart_md``: NVT then NVE with files, the MD step of ``molequi quickstart``

Units: eV, Å, fs, K, bar (GPa for the relaxation pressure).
"""

from molequi.simulate.md import BlowUpGuard, MDResult, MDSettings, SimulationBlowUp, run_md
from molequi.simulate.quickstart import quickstart_md
from molequi.simulate.relax import RelaxResult, relax

__all__ = [
    "run_md",
    "MDSettings",
    "BlowUpGuard",
    "MDResult",
    "SimulationBlowUp",
    "quickstart_md",
    "relax",
    "RelaxResult",
]
