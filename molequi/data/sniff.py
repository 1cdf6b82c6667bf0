"""Recognise the formats of ``qm9``, ``md17``, ``rmd17``, ``oc20_s2ef`` and ``oc20_is2re`` from a path.

``sniff_format(path)`` returns the registry name (``molequi.data.datasets.DATASETS``) or ``None`` when the
path is none of these (the generic readers then take over). It reads only a few bytes or lines:

- ``rmd17``: an npz with ``nuclear_charges`` and ``coords``; ``md17``: an npz with ``R``, ``z``, ``E``,
  ``F``, or an
  sGDML xyz (line 2 a bare number, 7-column atom rows)
- ``oc20_s2ef``: an ``*.extxyz[.xz]`` whose first comment line declares ``move_mask`` and ``tags`` and
  which has
  its ``N.txt[.xz]`` beside it; an LMDB (file with LMDB's magic, or a folder of ``*.lmdb``) whose first entry
  has no ``y_relaxed``
- ``oc20_is2re``: an LMDB whose first entry has ``y_relaxed``
- ``qm9``: an xyz whose line 2 starts with ``gdb``, a ``gdb9.sdf``-style SDF (first title ``gdb_N``), a
  tarball or zip of ``dsgdb9nsd_*.xyz`` or a folder of them
"""

from __future__ import annotations

import lzma
import os
import zipfile
from pathlib import Path


def _head_lines(path: Path, n: int = 12) -> list[str]:
    try:
        opener = lzma.open if path.suffix == ".xz" else open
        with opener(path, "rt", errors="replace") as fh:
            return [fh.readline() for _ in range(n)]
    except (OSError, lzma.LZMAError, EOFError):
        return []


def _npz_keys(path: Path) -> set[str]:
    try:
        with zipfile.ZipFile(path) as z:
            return {name[:-4] if name.endswith(".npy") else name for name in z.namelist()}
    except (zipfile.BadZipFile, OSError):
        return set()


def _lmdb_kind(path: Path) -> str | None:
    from molequi.data.lmdb import LmdbDataset

    try:
        ds = LmdbDataset(path, raw=True)
        if len(ds) == 0:
            return "oc20_s2ef"
        first = ds.get_raw(0)
    except Exception:  # noqa: BLE001 - any failure means "not an LMDB we can read"; the reader explains later
        return None
    keys = set(first.keys()) if hasattr(first, "keys") else set()
    return "oc20_is2re" if "y_relaxed" in keys else "oc20_s2ef"


def _is_qm9_xyz_text(lines: list[str]) -> bool:
    if len(lines) < 3 or not lines[0].strip().isdigit():
        return False
    return lines[1].split()[:1] == ["gdb"]


def _is_sgdml_xyz(lines: list[str]) -> bool:
    if len(lines) < 3 or not lines[0].strip().isdigit():
        return False
    try:
        float(lines[1].strip())
    except ValueError:
        return False
    return len(lines[2].split()) == 7


def sniff_format(path: str | os.PathLike) -> str | None:
    """Name of the dataset format at ``path`` (a registry key) or ``None``."""
    from molequi.data.lmdb import is_lmdb_file

    path = Path(path)
    if not path.exists():
        return None
    name = path.name.lower()
    if path.is_dir():
        if any(path.glob("*.lmdb")):
            return _lmdb_kind(path)
        if any(path.glob("dsgdb9nsd_*.xyz")) or (path / "gdb9.sdf").exists():
            return "qm9"
        s2ef = sorted(p for p in path.iterdir() if p.name.endswith((".extxyz", ".extxyz.xz")))
        if s2ef and sniff_format(s2ef[0]) == "oc20_s2ef":
            return "oc20_s2ef"
        return None
    if is_lmdb_file(path):
        return _lmdb_kind(path)
    if name.endswith(".npz"):
        keys = _npz_keys(path)
        if {"nuclear_charges", "coords"} <= keys:
            return "rmd17"
        if {"R", "z", "E", "F"} <= keys:
            return "md17"
        return None
    if name.endswith((".extxyz", ".extxyz.xz")):
        from molequi.data.oc20 import find_txt

        lines = _head_lines(path, 2)
        if len(lines) == 2 and "move_mask" in lines[1] and "tags" in lines[1] and find_txt(path) is not None:
            return "oc20_s2ef"
        return None
    if name.endswith(".sdf"):
        lines = _head_lines(path, 1)
        return "qm9" if lines and lines[0].startswith("gdb_") else None
    if name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")):
        import tarfile

        try:
            with tarfile.open(path, "r|*") as tar:
                for member in tar:
                    if member.isfile():
                        return "qm9" if member.name.rsplit("/", 1)[-1].startswith("dsgdb9nsd_") else None
        except (tarfile.TarError, OSError, EOFError):
            return None
        return None
    if name.endswith(".zip"):  # some mirrors ship QM9's dsgdb9nsd_*.xyz files as a zip
        try:
            with zipfile.ZipFile(path) as z:
                names = [n.rsplit("/", 1)[-1] for n in z.namelist() if not n.endswith("/")]
        except (zipfile.BadZipFile, OSError):
            return None
        return "qm9" if names and names[0].startswith("dsgdb9nsd_") else None
    if name.endswith(".xyz"):
        lines = _head_lines(path)
        if _is_qm9_xyz_text(lines) or (
            name.startswith("dsgdb9nsd_") and lines and lines[0].strip().isdigit()
        ):
            return "qm9"
        if _is_sgdml_xyz(lines):
            return "md17"
        return None
    return None


__all__ = ["sniff_format"]
