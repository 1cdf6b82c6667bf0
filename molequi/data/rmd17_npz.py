"""rMD17 npz files (``nuclear_charges``, ``coords`` Å, ``energies`` kcal/mol, ``forces`` kcal/mol/Å) as records.

The conversion (kcal/mol -> eV and kcal/mol/Å -> eV/Å with ``molequi.units.KCAL_PER_MOL_TO_EV``) lives in
one place, ``molequi.data.md17.load_md17_npz``; this module is the stable name the quickstart and the
shipped data (``data/rmd17/``) use.
"""

from __future__ import annotations

from molequi.data.md17 import read_rmd17_npz

__all__ = ["read_rmd17_npz"]
