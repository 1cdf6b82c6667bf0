"""MD17 (sGDML) and revised MD17 (rMD17): ab-initio MD trajectories of small molecules, energies and forces.

Layouts read (``docs/formats.md``)

- sGDML npz (MD17): ``R`` (F, n, 3) Å, ``z`` (n,), ``E`` (F, 1) kcal/mol, ``F`` (F, n, 3) kcal/mol/Å.
- sGDML xyz: per frame the atom count, the bare energy (kcal/mol), rows ``sym x y z fx fy fz`` (kcal/mol/Å).
- rMD17 npz: ``nuclear_charges`` (n,) uint8, ``coords`` Å, ``energies`` kcal/mol, ``forces`` kcal/mol/Å
  (+ ``old_*``), with split files ``splits/index_{train,test}_0{1..5}.csv`` (one frame index per line).

Energies are converted once to eV and forces to eV/Å with ``molequi.units.KCAL_PER_MOL_TO_EV``.
Frames are kept as arrays (``MD17Frames``) and turned into graph records on access, so a 100,000-frame
trajectory costs its arrays only.

The rMD17 benchmark protocol: 1000 training frames from ``index_train_0N.csv`` (950 train + 50 validation,
seeded), test on all other frames (or on ``index_test_0N.csv`` with ``test="index"``).
"""

from __future__ import annotations

import os
import zipfile
import zlib
from collections.abc import Sequence
from pathlib import Path

import ase
import numpy as np
import torch
from ase.data import atomic_numbers
from torch.utils.data import Dataset
from torch_geometric.data import Data

from molequi.errors import DatasetError, FormatError, MissingKeyError, suggest
from molequi.units import KCAL_PER_MOL_PER_ANGSTROM_TO_EV_PER_ANGSTROM, KCAL_PER_MOL_TO_EV

# molecule name -> file name in the sGDML release (as PyG's md17.py)
MD17_FILES: dict[str, str] = {
    "aspirin": "md17_aspirin.npz",
    "benzene": "md17_benzene2017.npz",
    "ethanol": "md17_ethanol.npz",
    "malonaldehyde": "md17_malonaldehyde.npz",
    "naphthalene": "md17_naphthalene.npz",
    "salicylic": "md17_salicylic.npz",
    "toluene": "md17_toluene.npz",
    "uracil": "md17_uracil.npz",
    "paracetamol": "paracetamol_dft.npz",
    "azobenzene": "azobenzene_dft.npz",
}
RMD17_MOLECULES: tuple[str, ...] = (
    "aspirin",
    "azobenzene",
    "benzene",
    "ethanol",
    "malonaldehyde",
    "naphthalene",
    "paracetamol",
    "salicylic",
    "toluene",
    "uracil",
)
_ALIASES = {"salicylic acid": "salicylic", "naphtalene": "naphthalene"}

RMD17_N_TRAIN, RMD17_N_VAL = 950, 50


def check_molecule(name: str, revised: bool) -> str:
    """Normalise a molecule name; ``DatasetError`` listing the valid names for an unknown one."""
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    valid = RMD17_MOLECULES if revised else tuple(MD17_FILES)
    if key not in valid:
        which = "rMD17" if revised else "MD17"
        raise DatasetError(
            f"unknown {which} molecule '{name}'",
            hint=f"valid names: {', '.join(valid)}. {suggest(key, valid)}".strip(),
        )
    return key


class MD17Frames(Dataset):
    """Frames of one molecule as arrays; ``__getitem__`` builds the record (energy eV, forces eV/Å).

    numbers (n,), positions (F, n, 3) Å, energy (F,) eV, forces (F, n, 3) eV/Å.
    """

    def __init__(
        self,
        numbers: np.ndarray,
        positions: np.ndarray,
        energy: np.ndarray | None,
        forces: np.ndarray | None,
        source: str = "<arrays>",
        frame_ids: np.ndarray | None = None,
    ):
        self.numbers = np.asarray(numbers, dtype=np.int64).reshape(-1)
        if self.numbers.size == 0 or self.numbers.min() < 1 or self.numbers.max() > 118:
            raise FormatError("atomic numbers must be 1..118 and at least one atom", source=source)
        self.positions = np.asarray(positions, dtype=float)
        n = self.numbers.shape[0]
        if self.positions.ndim != 3 or self.positions.shape[1:] != (n, 3):
            raise FormatError(
                f"positions have shape {self.positions.shape}, expected (frames, {n}, 3)", source=source
            )
        n_frames = self.positions.shape[0]
        self.energy = None if energy is None else np.asarray(energy, dtype=float).reshape(-1)
        self.forces = None if forces is None else np.asarray(forces, dtype=float)
        if self.energy is not None and self.energy.shape[0] != n_frames:
            raise FormatError(f"{self.energy.shape[0]} energies for {n_frames} frames", source=source)
        if self.forces is not None and self.forces.shape != self.positions.shape:
            raise FormatError(
                f"forces have shape {self.forces.shape}, expected {self.positions.shape}", source=source
            )
        for name, arr in (("positions", self.positions), ("energies", self.energy), ("forces", self.forces)):
            if arr is not None and not np.all(np.isfinite(arr)):
                bad = int(np.nonzero((~np.isfinite(arr.reshape(n_frames, -1))).any(1))[0][0])
                raise FormatError(f"{name} contain NaN or inf", source=source, frame=bad)
        self.source = source
        self.frame_ids = np.arange(n_frames) if frame_ids is None else np.asarray(frame_ids)

    def __len__(self) -> int:
        return self.positions.shape[0]

    def __getitem__(self, i: int) -> Data:
        from molequi.data.records import atoms_to_data

        i = int(i)
        if i < 0:
            i += len(self)
        atoms = ase.Atoms(numbers=self.numbers, positions=self.positions[i])
        return atoms_to_data(
            atoms,
            energy=None if self.energy is None else self.energy[i],
            forces=None if self.forces is None else self.forces[i],
            source=self.source,
            frame=int(self.frame_ids[i]),
            validate=False,
            dtype=torch.float32,
        )

    def subset(self, index: Sequence[int]) -> MD17Frames:
        ix = np.asarray(index, dtype=np.int64)
        if ix.size and (ix.min() < 0 or ix.max() >= len(self)):
            raise DatasetError(
                f"frame index out of range (0..{len(self) - 1}): {int(ix.min())}..{int(ix.max())}",
                source=self.source,
                hint="the split file does not belong to this trajectory",
            )
        return MD17Frames(
            self.numbers,
            self.positions[ix],
            None if self.energy is None else self.energy[ix],
            None if self.forces is None else self.forces[ix],
            self.source,
            self.frame_ids[ix],
        )

    def to_list(self) -> list[Data]:
        return [self[i] for i in range(len(self))]


def _get(z, keys: Sequence[str], path) -> np.ndarray:
    for k in keys:
        if k in z:
            return z[k]
    raise MissingKeyError(
        f"none of the keys {list(keys)} in the npz (keys: {sorted(z.keys())})",
        source=str(path),
        hint="expected an sGDML MD17 npz (R, z, E, F) or an rMD17 npz (nuclear_charges, coords, "
        "energies, forces)",
    )


def load_md17_npz(path: str | os.PathLike) -> MD17Frames:
    """sGDML MD17 or rMD17 npz (detected from the keys) -> ``MD17Frames`` in eV and eV/Å."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            keys = set(z.files)
            if not keys:
                raise FormatError("empty npz", source=str(path))
            arrays = {
                k: z[k]
                for k in keys
                if k in {"R", "z", "E", "F", "nuclear_charges", "coords", "energies", "forces"}
            }
    except FormatError:
        raise
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError, NotImplementedError, RuntimeError,
            zlib.error) as exc:  # zipfile: unknown compression / "encrypted" flag bits of a corrupt header
        raise FormatError(
            f"cannot read the npz ({exc})", source=str(path), hint="the file is corrupt or not a numpy .npz"
        ) from None
    numbers = _get(arrays, ("nuclear_charges", "z"), path)
    pos = _get(arrays, ("coords", "R"), path)
    energy, forces = _get(arrays, ("energies", "E"), path), _get(arrays, ("forces", "F"), path)
    for name, arr in (("atomic numbers", numbers), ("coordinates", pos), ("energies", energy),
                      ("forces", forces)):
        if arr.dtype.kind not in "biuf":
            raise FormatError(f"{name} are not numbers (dtype {arr.dtype})", source=str(path))
    energy = energy * KCAL_PER_MOL_TO_EV
    forces = forces * KCAL_PER_MOL_PER_ANGSTROM_TO_EV_PER_ANGSTROM
    frames = MD17Frames(numbers, pos, energy, forces, source=str(path))
    if len(frames) == 0:
        raise FormatError("no frames (the coordinate array is empty)", source=str(path))
    return frames


def read_rmd17_npz(path: str | os.PathLike) -> list[Data]:
    """An rMD17 (or sGDML MD17) npz as a list of records (energy eV, forces eV/Å)."""
    return load_md17_npz(path).to_list()


def load_md17_xyz(path: str | os.PathLike) -> MD17Frames:
    """sGDML xyz: count, bare energy (kcal/mol), ``sym x y z fx fy fz`` rows (kcal/mol/Å)."""
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as exc:
        raise FormatError(f"not a text file ({exc.reason} at byte {exc.start})", source=str(path),
                          hint="sGDML xyz is plain text; an .npz goes to the npz reader") from None
    except OSError as exc:
        raise DatasetError(f"cannot read {path}: {exc.strerror}") from None
    numbers_ref = None
    pos, energy, forces = [], [], []
    i, frame = 0, 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        try:
            n = int(lines[i].split()[0])
            if n <= 0:
                raise ValueError
        except ValueError:
            raise FormatError(
                f"expected the atom count, got {lines[i][:40]!r}", source=str(path), line=i + 1, frame=frame
            ) from None
        if i + 1 + n > len(lines) - 1:
            raise FormatError(
                f"frame truncated: {n} atoms announced, file ends first",
                source=str(path),
                line=i + 1,
                frame=frame,
            )
        try:
            energy.append(float(lines[i + 1].split()[0]))
        except (ValueError, IndexError):
            raise FormatError(
                f"line 2 of a frame must be the bare energy in kcal/mol, got {lines[i + 1][:40]!r}",
                source=str(path),
                line=i + 2,
                frame=frame,
            ) from None
        rows = [lines[i + 2 + a].split() for a in range(n)]
        if any(len(r) != 7 for r in rows):
            a = next(a for a, r in enumerate(rows) if len(r) != 7)
            raise FormatError(
                f"atom row has {len(rows[a])} fields, expected 7 (sym x y z fx fy fz)",
                source=str(path),
                line=i + 3 + a,
                frame=frame,
            )
        try:
            z = np.array([atomic_numbers[r[0]] for r in rows])
            arr = np.array([[float(v) for v in r[1:]] for r in rows])
        except (KeyError, ValueError) as exc:
            raise FormatError(
                f"unreadable atom row ({exc})", source=str(path), line=i + 3, frame=frame
            ) from None
        if numbers_ref is None:
            numbers_ref = z
        elif not np.array_equal(z, numbers_ref):
            raise FormatError(
                "elements differ from the first frame",
                source=str(path),
                frame=frame,
                hint="an MD17 trajectory holds one molecule",
            )
        pos.append(arr[:, :3])
        forces.append(arr[:, 3:])
        i += 2 + n
        frame += 1
    if numbers_ref is None:
        raise FormatError("no frames", source=str(path))
    return MD17Frames(
        numbers_ref,
        np.stack(pos),
        np.array(energy) * KCAL_PER_MOL_TO_EV,
        np.stack(forces) * KCAL_PER_MOL_PER_ANGSTROM_TO_EV_PER_ANGSTROM,
        source=str(path),
    )


def read_md17_xyz(path: str | os.PathLike) -> list[Data]:
    return load_md17_xyz(path).to_list()


def read_split_index(path: str | os.PathLike) -> np.ndarray:
    """One integer frame index per line (rMD17 ``index_*.csv``); ``DatasetError`` if missing."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(
            f"split file {path} is missing",
            hint="rMD17 ships splits/index_train_0N.csv and index_test_0N.csv (N = 1..5) beside "
            "npz_data/; point root at the unpacked rmd17 folder",
        )
    out = []
    for ln, line in enumerate(path.read_text().splitlines(), start=1):
        tok = line.strip().split(",")[0].strip()
        if not tok:
            continue
        try:
            out.append(int(float(tok)))
        except ValueError:
            raise FormatError(f"not an integer index: {line[:40]!r}", source=str(path), line=ln) from None
    return np.array(out, dtype=np.int64)


def _find(root: Path, names: Sequence[str]) -> Path:
    for sub in ("", "npz_data", "raw", "rmd17/npz_data"):
        for name in names:
            p = root / sub / name
            if p.exists():
                return p
    raise DatasetError(
        f"none of {list(names)} found under {root} (or its npz_data/, raw/)",
        hint="download the sGDML / rMD17 files and point root at their folder",
    )


def rmd17_splits(
    frames: MD17Frames, split_dir: str | os.PathLike, split_id: int = 1, seed: int = 0, test: str = "rest"
) -> dict[str, MD17Frames]:
    """rMD17 protocol: the 1000 indices of ``index_train_0N.csv`` -> 950 train + 50 val (seeded);
    test = every other frame (``test="rest"``) or ``index_test_0N.csv`` (``test="index"``)."""
    split_dir = Path(split_dir)
    train_ix = read_split_index(split_dir / f"index_train_{split_id:02d}.csv")
    perm = np.random.default_rng(seed).permutation(train_ix)
    n_val = min(RMD17_N_VAL, len(perm) // 20 or 1)
    val_ix, tr_ix = perm[:n_val], perm[n_val:]
    if test == "index":
        test_ix = read_split_index(split_dir / f"index_test_{split_id:02d}.csv")
    elif test == "rest":
        test_ix = np.setdiff1d(np.arange(len(frames)), train_ix)
    else:
        raise DatasetError(f"unknown test choice '{test}'", hint="use 'rest' or 'index'")
    return {
        "train": frames.subset(np.sort(tr_ix)),
        "val": frames.subset(np.sort(val_ix)),
        "test": frames.subset(test_ix),
    }


def _molecule(cfg) -> str:
    from molequi.data.datasets import dataset_option as opt

    mol = opt(cfg, "molecule") or getattr(cfg, "target", None)
    if not mol:
        raise DatasetError(
            "no molecule named",
            hint="set dataset target (or options.molecule) to one of: " + ", ".join(RMD17_MOLECULES),
        )
    return mol


def build_md17(cfg) -> dict[str, MD17Frames]:
    """Registry entry for sGDML MD17: ``cfg.target`` (or option ``molecule``) names the molecule
    (or ``cfg.root`` is an npz / xyz file);
    seeded split ``cfg.split`` (default 950 / 50 / rest)."""
    from molequi.data.datasets import dataset_option as opt
    from molequi.data.datasets import random_split

    root = Path(cfg.root)
    if root.is_file():
        frames = load_md17_xyz(root) if root.suffix == ".xyz" else load_md17_npz(root)
    else:
        mol = check_molecule(_molecule(cfg), revised=False)
        frames = load_md17_npz(_find(root, [MD17_FILES[mol]]))
    sizes = opt(cfg, "split") or (RMD17_N_TRAIN, RMD17_N_VAL, None)
    tr, va, te = random_split(len(frames), sizes, seed=opt(cfg, "seed", 0))
    return {"train": frames.subset(tr), "val": frames.subset(va), "test": frames.subset(te)}


def build_rmd17(cfg) -> dict[str, MD17Frames]:
    """Registry entry for rMD17: ``cfg.target`` (or option ``molecule``) e.g. 'ethanol',
    ``cfg.root`` the rmd17 folder
    (``npz_data/rmd17_<mol>.npz`` + ``splits/``) or an npz file; options ``split_id`` 1..5, ``seed``,
    ``test`` ('rest' | 'index'), ``split_dir``. A lone npz file without a ``splits/`` folder beside it (and no
    ``split_id`` asked for) gets a seeded 950 / 50 / rest split instead."""
    from molequi.data.datasets import dataset_option as opt

    root = Path(cfg.root)
    if root.is_file():
        path, base = root, root.parent
    else:
        mol = check_molecule(_molecule(cfg), revised=True)
        path = _find(root, [f"rmd17_{mol}.npz"])
        base = root
    frames = load_md17_npz(path)
    split_dir = opt(cfg, "split_dir")
    if split_dir is None:
        found = next((d for d in (base / "splits", base.parent / "splits") if d.exists()), None)
        if found is None and root.is_file() and opt(cfg, "split_id") is None:
            # a lone npz (e.g. a 1000-frame subset) without the release's split folder: seeded 950 / 50 / rest
            from molequi.data.datasets import random_split

            n_train = min(RMD17_N_TRAIN, max(len(frames) - 2 * RMD17_N_VAL, 1))
            tr, va, te = random_split(
                len(frames),
                (n_train, min(RMD17_N_VAL, len(frames) - n_train), None),
                seed=opt(cfg, "seed", 0),
            )
            return {"train": frames.subset(tr), "val": frames.subset(va), "test": frames.subset(te)}
        split_dir = found if found is not None else base / "splits"
    return rmd17_splits(
        frames,
        split_dir,
        split_id=int(opt(cfg, "split_id", 1)),
        seed=opt(cfg, "seed", 0),
        test=opt(cfg, "test", "rest"),
    )


__all__ = [
    "MD17_FILES",
    "RMD17_MOLECULES",
    "MD17Frames",
    "check_molecule",
    "load_md17_npz",
    "load_md17_xyz",
    "read_rmd17_npz",
    "read_md17_xyz",
    "read_split_index",
    "rmd17_splits",
    "build_md17",
    "build_rmd17",
]
