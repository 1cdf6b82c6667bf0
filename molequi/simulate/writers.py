"""Trajectory and log writers of the simulations: whole extended-XYZ frames and line-flushed CSV."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np


class FrameWriter:
    """Appends whole extended-XYZ frames to ``path`` (format in memory, one write, flush)."""

    def __init__(self, path: str | Path, append: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a" if append else "w")
        self.count = 0

    def write(self, atoms, extra_info: dict | None = None, extra_arrays: dict | None = None) -> None:
        from ase.calculators.singlepoint import SinglePointCalculator
        from ase.io import write

        snap = atoms.copy()  # keeps momenta and constraints
        res = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
        standard = {k: res[k] for k in ("energy", "free_energy", "forces", "stress", "energies") if k in res}
        if standard:
            snap.calc = SinglePointCalculator(snap, **standard)
        snap.info.update(extra_info or {})
        for k, v in (extra_arrays or {}).items():
            snap.arrays[k] = np.asarray(v)
        buf = io.StringIO()
        write(buf, snap, format="extxyz")
        self.file.write(buf.getvalue())
        self.file.flush()
        self.count += 1

    def close(self) -> None:
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class CSVLog:
    """A CSV file written a line at a time with flush."""

    def __init__(self, path: str | Path, columns: list[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "w")
        self.columns = columns
        self.file.write(",".join(columns) + "\n")
        self.file.flush()

    def write(self, row: dict) -> None:
        self.file.write(",".join(_fmt(row.get(c)) for c in self.columns) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return repr(float(v))


__all__ = ["FrameWriter", "CSVLog"]
