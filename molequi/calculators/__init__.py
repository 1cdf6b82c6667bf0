"""ASE side of molequi: the calculator and batched prediction.

- ``MolequiCalculator``: ASE calculator over an injected model or a committee (``from_checkpoint``).
- ``predict``: many structures in PyG batches.

MD and relaxation with the calculator live in ``molequi.simulate``.
"""

from molequi.calculators.calculator import MolequiCalculator, NeighborCache
from molequi.calculators.predict import predict

__all__ = [
    "MolequiCalculator",
    "NeighborCache",
    "predict",
]
