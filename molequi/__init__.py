"""molequi: equivariant neural networks for molecules and materials.

Flow: data files -> records (``molequi.data``) -> graphs (``molequi.graph``) -> models (``molequi.models``)
-> tasks and trainer (``molequi.tasks``, ``molequi.train``); checkpoint -> model -> ASE calculator
(``molequi.calculators``) -> simulation. Units everywhere: eV, Å, eV/Å, fs (``molequi.units``).
"""

__version__ = "0.1.0"

from molequi import keys, units  # noqa: E402
from molequi.data.records import atoms_to_data, data_to_atoms  # noqa: E402
from molequi.errors import MolequiError  # noqa: E402
from molequi.graph.neighbors import RadiusGraph, neighbor_list  # noqa: E402

__all__ = ["__version__", "keys", "units", "atoms_to_data", "data_to_atoms", "neighbor_list", "RadiusGraph",
           "MolequiError"]
