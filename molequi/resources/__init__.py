"""Data files shipped inside the package, found through ``importlib.resources``.

They travel with every install (wheel, sdist, editable), so code that needs them never guesses a path
relative to a source checkout. Each folder has an ``ORIGIN.md`` (source repository, commit, licence):

- ``rmd17/``: rMD17 ethanol, split 01 (``rmd17_ethanol_train_01.npz`` and ``rmd17_ethanol_test_01.npz``,
  1000 frames of 9 atoms each, kcal/mol and kcal/mol/Å, CC0): the data of ``molequi quickstart``.
- ``qm9/``: the 3054 indices of QM9's ``uncharacterized.txt`` (CC0), which fix EDM's QM9 split
  (``molequi.data.qm9.edm_qm9_split``) when the raw data comes without that file.
- ``faenet/``: FAENet's element table (``elements.json``: the physics-aware properties and period / group
  indices its embedding reads, as the authors' ``faenet`` package computes them from mendeleev, MIT).

    >>> from molequi.resources import shipped_path
    >>> shipped_path("rmd17", "rmd17_ethanol_test_01.npz").name
    'rmd17_ethanol_test_01.npz'
"""

from __future__ import annotations

import atexit
import contextlib
from importlib.resources import as_file, files
from pathlib import Path

from molequi.errors import DatasetError

_EXTRACTED = contextlib.ExitStack()  # files copied out of a zip import live until the process ends
atexit.register(_EXTRACTED.close)


def shipped_path(*parts: str) -> Path:
    """The filesystem path of the shipped file ``molequi/resources/<parts...>``.

    Installed packages (wheels, editable installs) are plain folders, so this is the file itself; from a
    zipped import the file is copied to a temporary path that lives until the process ends.
    Raises ``DatasetError`` when the file is not part of this install.
    """
    resource = files(__name__).joinpath(*parts)
    if not resource.is_file():
        raise DatasetError(f"molequi/resources/{'/'.join(parts)} is not in this installation of molequi",
                           hint="reinstall molequi, or pass the file's path explicitly")
    if isinstance(resource, Path):
        return resource
    return _EXTRACTED.enter_context(as_file(resource))


def rmd17_ethanol(split: str) -> Path:
    """The shipped rMD17 ethanol file of ``split`` ('train' or 'test'; split 01, 1000 frames each)."""
    if split not in ("train", "test"):
        raise DatasetError(f"rMD17 ethanol split '{split}' is not shipped; use 'train' or 'test'")
    return shipped_path("rmd17", f"rmd17_ethanol_{split}_01.npz")


__all__ = ["shipped_path", "rmd17_ethanol"]
