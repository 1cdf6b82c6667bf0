"""ASE side of molequi: the calculator, batched prediction, MD and relaxation.

- ``MolequiCalculator``: ASE calculator over an injected model or a committee (``from_checkpoint``).
- ``predict``: many structures in PyG batches.
- ``run_md`` / ``quickstart_md``: guarded MD with ASE integrators, CSV log, appended trajectory.
- ``relax``: BFGS / FIRE / LBFGS, optionally with ``FrechetCellFilter``.
"""

from molequi.calculators.calculator import MolequiCalculator, NeighborCache
from molequi.calculators.md import MDResult, SimulationBlowUp, quickstart_md, run_md
from molequi.calculators.predict import predict
from molequi.calculators.relax import RelaxResult, relax

__all__ = [
    "MolequiCalculator",
    "NeighborCache",
    "predict",
    "run_md",
    "quickstart_md",
    "MDResult",
    "SimulationBlowUp",
    "relax",
    "RelaxResult",
]
