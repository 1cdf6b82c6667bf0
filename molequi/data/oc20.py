"""OC20 (Open Catalyst 2020): S2EF raw extxyz + txt pairs, S2EF / IS2RE LMDBs, registry builders.

S2EF raw (``docs/formats.md``): ``N.extxyz`` + ``N.txt`` (each optionally ``.xz``), same frame
order. The extxyz comment line is
``Lattice="..." Properties=species:S:1:pos:R:3:move_mask:L:1:tags:I:1:forces:R:3 energy=... free_energy=...
pbc="T T T"``; ``move_mask`` F marks a fixed atom, tags are 0 subsurface / 1 surface / 2 adsorbate. The txt
holds ``random<sid>,frame<fid>,<reference_energy>`` per frame. With ``subtract_reference=True`` the record's
energy is the adsorption-energy target ``energy - reference_energy`` (eV).

Records carry molequi's keys plus ``tags`` (n,) long, ``fixed`` (n,) bool, ``sid``, ``fid``, ``ref_energy``.
LMDBs are read through ``molequi.data.lmdb.LmdbDataset`` (restricted unpickling, lazy, DDP-ready).
"""

from __future__ import annotations

import io
import lzma
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import ase
import numpy as np
import torch
from ase.constraints import FixAtoms
from torch_geometric.data import Data

from molequi import keys as K
from molequi.errors import DatasetError, FormatError

S2EF_PROPERTIES = "species:S:1:pos:R:3:move_mask:L:1:tags:I:1:forces:R:3"


@dataclass(frozen=True)
class FrameRef:
    """One line of an S2EF txt: system id, frame id, reference energy (eV)."""

    sid: int
    fid: int
    ref_energy: float


def _open_text(path: Path):
    if path.suffix == ".xz":
        return io.TextIOWrapper(lzma.open(path, "rb"), encoding="utf-8")
    return open(path, encoding="utf-8")


def _read_all(path: Path) -> str:
    """The text of ``path`` (transparently ``.xz``); corrupt compression -> ``FormatError``."""
    if not path.exists():
        raise DatasetError(f"{path} does not exist")
    try:
        with _open_text(path) as fh:
            return fh.read()
    except (lzma.LZMAError, EOFError) as exc:
        raise FormatError(
            f"corrupt .xz stream ({exc})",
            source=str(path),
            hint="the download is truncated or damaged; fetch the file again",
        ) from None
    except UnicodeDecodeError as exc:
        raise FormatError(f"not a text file ({exc})", source=str(path)) from None


def read_s2ef_txt(path: str | os.PathLike) -> list[FrameRef]:
    """Parse ``random<sid>,frame<fid>,<reference_energy>`` lines."""
    path = Path(path)
    out = []
    for ln, line in enumerate(_read_all(path).splitlines(), start=1):
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        try:
            if len(parts) != 3 or not parts[0].startswith("random") or not parts[1].startswith("frame"):
                raise ValueError
            out.append(FrameRef(int(parts[0][6:]), int(parts[1][5:]), float(parts[2])))
        except ValueError:
            raise FormatError(
                f"expected 'random<sid>,frame<fid>,<reference_energy>', got {line[:60]!r}",
                source=str(path),
                line=ln,
            ) from None
    return out


def find_txt(extxyz: str | os.PathLike) -> Path | None:
    """The txt beside an S2EF extxyz: ``N.txt`` or ``N.txt.xz`` for ``N.extxyz`` / ``N.extxyz.xz``."""
    p = Path(extxyz)
    stem = p.name
    for suffix in (".xz", ".extxyz", ".xyz"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    for name in (stem + ".txt", stem + ".txt.xz"):
        if (p.parent / name).exists():
            return p.parent / name
    return None


def iter_s2ef_atoms(extxyz: str | os.PathLike) -> Iterator[ase.Atoms]:
    """Frames of an S2EF extxyz (plain or ``.xz``) as ``ase.Atoms`` with tags, FixAtoms and a calculator."""
    from ase.io.extxyz import read_xyz

    path = Path(extxyz)
    text = _read_all(path)
    try:
        yield from read_xyz(io.StringIO(text), index=slice(None))
    except (ValueError, IndexError, KeyError) as exc:
        raise FormatError(f"malformed extended XYZ ({exc})", source=str(path)) from None


def fixed_mask(atoms: ase.Atoms) -> np.ndarray:
    """(n,) bool, True for atoms fixed by a ``FixAtoms`` constraint."""
    fixed = np.zeros(len(atoms), dtype=bool)
    for c in atoms.constraints:
        if isinstance(c, FixAtoms):
            fixed[c.get_indices()] = True
    return fixed


def atoms_to_s2ef_record(
    atoms: ase.Atoms,
    ref: FrameRef | None,
    *,
    subtract_reference: bool = False,
    source: str | None = None,
    frame: int | None = None,
) -> Data:
    """One S2EF frame -> molequi record with OC20 extras."""
    from molequi.data.checks import validate_structure
    from molequi.data.records import atoms_to_data

    energy = forces = None
    if atoms.calc is not None:
        res = atoms.calc.results
        energy = res.get("energy", res.get("free_energy"))
        forces = res.get("forces")
    if energy is not None and subtract_reference:
        if ref is None:
            raise DatasetError(
                "reference-energy subtraction asked for but no txt was given",
                source=source,
                frame=frame,
                hint="put N.txt beside N.extxyz or pass txt=",
            )
        energy = energy - ref.ref_energy
    validate_structure(atoms, source=source, frame=frame)
    d = atoms_to_data(
        atoms, energy=energy, forces=forces, source=source, frame=frame, dtype=torch.float32, validate=False
    )
    d[K.TAGS] = torch.as_tensor(atoms.get_tags(), dtype=torch.long)
    d[K.FIXED] = torch.as_tensor(fixed_mask(atoms))
    if ref is not None:
        d.sid = torch.tensor([ref.sid])
        d.fid = torch.tensor([ref.fid])
        d.ref_energy = torch.tensor([ref.ref_energy], dtype=torch.float32)
    return d


def iter_s2ef_pairs(
    extxyz: str | os.PathLike, txt: str | os.PathLike | None = None
) -> Iterator[tuple[int, ase.Atoms, FrameRef | None]]:
    """Yield (frame index, atoms, txt line) of an extxyz + txt pair, checking that the counts match."""
    extxyz = Path(extxyz)
    txt = Path(txt) if txt is not None else find_txt(extxyz)
    refs = read_s2ef_txt(txt) if txt is not None else None
    i = -1
    for i, atoms in enumerate(iter_s2ef_atoms(extxyz)):
        if refs is not None and i >= len(refs):
            n = sum(1 for _ in iter_s2ef_atoms(extxyz))
            raise FormatError(
                f"the txt has {len(refs)} lines but the extxyz has {n} frames",
                source=str(txt),
                hint=f"{txt.name} and {extxyz.name} must list the same frames in the same order",
            )
        yield i, atoms, None if refs is None else refs[i]
    if refs is not None and i + 1 != len(refs):
        raise FormatError(
            f"the txt has {len(refs)} lines but the extxyz has {i + 1} frames",
            source=str(txt),
            hint=f"{txt.name} and {extxyz.name} must list the same frames in the same order",
        )


def read_s2ef(
    extxyz: str | os.PathLike, txt: str | os.PathLike | None = None, *, subtract_reference: bool = False
) -> list[Data]:
    """An S2EF extxyz (+ its txt, found beside it when not given) as records."""
    return [
        atoms_to_s2ef_record(a, r, subtract_reference=subtract_reference, source=str(extxyz), frame=i)
        for i, a, r in iter_s2ef_pairs(extxyz, txt)
    ]


def s2ef_pairs_in(folder: str | os.PathLike) -> list[tuple[Path, Path | None]]:
    """Every ``*.extxyz`` / ``*.extxyz.xz`` of a folder with its txt (sorted by name)."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.name.endswith((".extxyz", ".extxyz.xz")))
    if not files:
        raise DatasetError(f"no *.extxyz or *.extxyz.xz files in {folder}")
    return [(p, find_txt(p)) for p in files]


def write_s2ef(
    frames: Sequence[ase.Atoms],
    refs: Sequence[FrameRef],
    extxyz: str | os.PathLike,
    txt: str | os.PathLike | None = None,
) -> None:
    """Write frames in the exact S2EF raw layout (extxyz + txt), each file atomically."""
    from molequi.io import atomic_write_text

    if len(frames) != len(refs):
        raise DatasetError(f"{len(frames)} frames but {len(refs)} txt entries")
    lines = []
    for atoms in frames:
        cell = atoms.cell[:].reshape(-1)
        energy = atoms.get_potential_energy()
        free = atoms.calc.results.get("free_energy", energy)
        forces = atoms.get_forces(apply_constraint=False)  # OC20 stores forces on fixed atoms too
        move = ~fixed_mask(atoms)
        tags = atoms.get_tags()
        pbc = " ".join("T" if p else "F" for p in atoms.pbc)
        lines.append(str(len(atoms)))
        lines.append(
            f'Lattice="{" ".join(f"{v:.8f}" for v in cell)}" Properties={S2EF_PROPERTIES} '
            f'energy={energy:.8f} free_energy={free:.8f} pbc="{pbc}"'
        )
        for s, p, m, t, f in zip(atoms.get_chemical_symbols(), atoms.positions, move, tags, forces):
            lines.append(
                f"{s:2s} {p[0]:15.8f} {p[1]:15.8f} {p[2]:15.8f} {'T' if m else 'F'} {int(t):d} "
                f"{f[0]:15.8f} {f[1]:15.8f} {f[2]:15.8f}"
            )
    extxyz = Path(extxyz)
    txt = Path(txt) if txt is not None else extxyz.with_suffix(".txt")
    atomic_write_text(extxyz, "\n".join(lines) + "\n")
    atomic_write_text(txt, "".join(f"random{r.sid},frame{r.fid},{r.ref_energy:.8f}\n" for r in refs))


def s2ef_to_fairchem(atoms: ase.Atoms, ref: FrameRef | None, *, subtract_reference: bool = False) -> Data:
    """One S2EF frame -> fairchem's LMDB ``Data`` (``atomic_numbers``, ``pos``, ``cell``, ``energy``,
    ``forces``,
    ``tags``, ``fixed``, ``sid``, ``fid``, ``natoms``; ``ref_energy`` when known)."""
    from molequi.data.lmdb import fairchem_data

    res = atoms.calc.results if atoms.calc is not None else {}
    energy = res.get("energy", res.get("free_energy"))
    if energy is not None and subtract_reference and ref is not None:
        energy = energy - ref.ref_energy
    extra = {"ref_energy": float(ref.ref_energy)} if ref is not None else {}
    return fairchem_data(
        atoms.numbers,
        atoms.positions,
        atoms.cell[:],
        energy=energy,
        forces=res.get("forces"),
        tags=atoms.get_tags(),
        fixed=fixed_mask(atoms),
        sid=None if ref is None else ref.sid,
        fid=None if ref is None else ref.fid,
        extra=extra,
    )


# --------------------------------------------------------------------------- registry builders


class S2EFFrames(torch.utils.data.Dataset):
    """In-memory records of S2EF extxyz + txt pairs (for small sets; convert large ones with
    ``molequi data to-lmdb``)."""

    def __init__(self, paths: Sequence[tuple[Path, Path | None]], subtract_reference: bool = False):
        self.records: list[Data] = []
        for extxyz, txt in paths:
            self.records += read_s2ef(extxyz, txt, subtract_reference=subtract_reference)

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> Data:
        return self.records[int(i)]


def _split_paths(cfg) -> dict[str, Path]:
    """OC20 ships predefined splits: ``cfg.root`` with ``train/``, ``val/`` (``val_id`` ...), ``test/``
    folders, or explicit ``cfg.train`` / ``cfg.val`` / ``cfg.test`` paths, or one path used for train only."""
    from molequi.data.datasets import dataset_option as opt

    root = Path(cfg.root)
    out = {}
    for split, names in (
        ("train", ("train",)),
        ("val", ("val", "val_id", "valid")),
        ("test", ("test", "test_id")),
    ):
        explicit = opt(cfg, split)
        if explicit:
            out[split] = Path(explicit)
            continue
        for name in names:
            if (root / name).exists():
                out[split] = root / name
                break
    if not out:
        if not root.exists():
            raise DatasetError(
                f"{root} does not exist",
                hint="point root at an OC20 LMDB, a folder of shards, or a folder with train/ val/ test/",
            )
        out["train"] = root
    return out


def _open_split(path: Path, target: str | None, subtract_reference: bool):
    from molequi.data.lmdb import LmdbDataset, is_lmdb_file

    if path.is_file() and is_lmdb_file(path) or path.is_dir() and any(path.glob("*.lmdb")):
        return LmdbDataset(path, target=target)
    if path.is_dir():
        return S2EFFrames(s2ef_pairs_in(path), subtract_reference=subtract_reference)
    if path.name.endswith((".extxyz", ".extxyz.xz")):
        return S2EFFrames([(path, find_txt(path))], subtract_reference=subtract_reference)
    from molequi.data.lmdb import LmdbDataset  # let it raise the named "not an LMDB" error

    return LmdbDataset(path, target=target)


def build_oc20_s2ef(cfg) -> dict[str, torch.utils.data.Dataset]:
    """Registry entry ``oc20_s2ef``: LMDB files / shard folders or raw extxyz + txt folders per split.
    ``cfg.subtract_reference`` (raw files) gives adsorption energies."""
    from molequi.data.datasets import dataset_option as opt

    sub = bool(opt(cfg, "subtract_reference", False))
    return {k: _open_split(p, None, sub) for k, p in _split_paths(cfg).items()}


def build_oc20_is2re(cfg) -> dict[str, torch.utils.data.Dataset]:
    """Registry entry ``oc20_is2re``: IS2RE LMDBs; ``energy`` := ``cfg.target`` (default ``y_relaxed``)."""
    from molequi.data.datasets import dataset_option as opt

    target = opt(cfg, "target") or "y_relaxed"
    if target == "energy":
        target = "y_relaxed"
    return {k: _open_split(p, target, False) for k, p in _split_paths(cfg).items()}


__all__ = [
    "FrameRef",
    "read_s2ef_txt",
    "find_txt",
    "iter_s2ef_atoms",
    "iter_s2ef_pairs",
    "read_s2ef",
    "write_s2ef",
    "s2ef_to_fairchem",
    "atoms_to_s2ef_record",
    "fixed_mask",
    "s2ef_pairs_in",
    "S2EFFrames",
    "build_oc20_s2ef",
    "build_oc20_is2re",
    "S2EF_PROPERTIES",
]
