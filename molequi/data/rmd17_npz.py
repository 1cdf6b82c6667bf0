"""rMD17 npz files as records.

Keys: ``nuclear_charges``, ``coords`` Å, ``energies`` kcal/mol, ``forces`` kcal/mol/Å.

The conversion (kcal/mol -> eV and kcal/mol/Å -> eV/Å with ``molequi.units.KCAL_PER_MOL_TO_EV``) lives in
one place, ``molequi.data.md17.load_md17_npz``; this module is the stable name the quickstart and the
shipped data (``molequi/resources/rmd17/``) use, plus ``build_rmd17_npz``: the dataset entry ``rmd17_npz``
(one npz file, all frames, split by the trainer), for files that come without rMD17's split folder.
"""

from __future__ import annotations

from molequi.data.md17 import load_md17_npz, read_rmd17_npz


def build_rmd17_npz(cfg):
    """Dataset entry: every frame of the npz file ``cfg.root`` (an ``MD17Frames``, records on access)."""
    return load_md17_npz(cfg.root)


__all__ = ["read_rmd17_npz", "build_rmd17_npz"]
