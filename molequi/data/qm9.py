"""QM9: 134k small organic molecules (C, H, N, O, F; up to 9 heavy atoms) with 19 B3LYP/6-31G(2df,p) targets.

Layouts read (see ``docs/formats.md``)

- original figshare xyz (``dsgdb9nsd_NNNNNN.xyz``): one record per file, records joined in one file, a
  directory of them, or a tarball (``.tar``, ``.tar.gz``, ``.tar.bz2``) read member by member without
  unpacking. Tab-separated, trailing tabs, Mathematica exponents (``7.9254*^-6``). Line 2 holds
  ``gdb <index> A B C mu alpha homo lumo gap r2 zpve U0 U H G Cv``; atom rows add the Mulliken charge.
- geometry-only copies (line 2 empty, rows ``sym x y z``), e.g. the ppqm/dataset-qm9 tarball: positions and
  elements only, no targets.
- PyG's ``gdb9.sdf`` + ``gdb9.sdf.csv`` (RDKit, ``removeHs=False, sanitize=False``).

Target vector ``y`` (1, 19), in the order of ``TARGETS`` (PyG / DimeNet order) and the units of
``TARGET_UNITS``: energies in eV (Hartree and kcal/mol converted with ``molequi.units``), mu in Debye, alpha
in a0^3, r2 in a0^2, Cv in cal/(mol K), rotational constants in GHz. The ``*_atom`` targets are the
atomisation energies: the molecule's U0/U/H/G minus the B3LYP energies of its free atoms (``ATOM_REFS``).

``QM9Dataset`` follows PyG's contract: raw files under ``root/raw`` (or a ``source`` path) -> ``process`` ->
one cached file under ``root/processed``, written atomically (temporary file + ``os.replace``).
"""

from __future__ import annotations

import csv
import itertools
import logging
import os
import re
import tarfile
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from ase.data import atomic_numbers
from torch_geometric.data import Data, InMemoryDataset

from molequi.data.datasets import random_split
from molequi.errors import DatasetError, FormatError
from molequi.io import atomic_write_torch
from molequi.units import HARTREE_TO_EV, KCAL_PER_MOL_TO_EV

TARGETS: tuple[str, ...] = (
    "mu",
    "alpha",
    "homo",
    "lumo",
    "gap",
    "r2",
    "zpve",
    "U0",
    "U",
    "H",
    "G",
    "Cv",
    "U0_atom",
    "U_atom",
    "H_atom",
    "G_atom",
    "A",
    "B",
    "C",
)
TARGET_UNITS: dict[str, str] = {
    "mu": "D",
    "alpha": "a0^3",
    "homo": "eV",
    "lumo": "eV",
    "gap": "eV",
    "r2": "a0^2",
    "zpve": "eV",
    "U0": "eV",
    "U": "eV",
    "H": "eV",
    "G": "eV",
    "Cv": "cal/(mol K)",
    "U0_atom": "eV",
    "U_atom": "eV",
    "H_atom": "eV",
    "G_atom": "eV",
    "A": "GHz",
    "B": "GHz",
    "C": "GHz",
}
# the 15 numbers after ``gdb <index>`` on line 2 of a figshare record
XYZ_FIELDS: tuple[str, ...] = (
    "A",
    "B",
    "C",
    "mu",
    "alpha",
    "homo",
    "lumo",
    "gap",
    "r2",
    "zpve",
    "U0",
    "U",
    "H",
    "G",
    "Cv",
)
# columns of gdb9.sdf.csv after mol_id
CSV_FIELDS: tuple[str, ...] = (
    "A",
    "B",
    "C",
    "mu",
    "alpha",
    "homo",
    "lumo",
    "gap",
    "r2",
    "zpve",
    "u0",
    "u298",
    "h298",
    "g298",
    "cv",
    "u0_atom",
    "u298_atom",
    "h298_atom",
    "g298_atom",
)

# B3LYP/6-31G(2df,p) energies of the free atoms, Hartree: (U0, U, H, G). Source: QM9 ``atomref.txt``
# (Ramakrishnan et al., Sci. Data 1, 140022 (2014), figshare 978904); PyG's qm9.py holds the same
# values in eV.
ATOM_REFS: dict[int, tuple[float, float, float, float]] = {
    1: (-0.500273, -0.498857, -0.497912, -0.510927),
    6: (-37.846772, -37.845355, -37.844411, -37.861317),
    7: (-54.583861, -54.582445, -54.581501, -54.598897),
    8: (-75.064579, -75.063162, -75.062219, -75.079532),
    9: (-99.718730, -99.717314, -99.716370, -99.733544),
}

N_QM9 = 133885
N_UNCHARACTERIZED = 3054
DIMENET_SPLIT = (110000, 10000, None)  # train, validation, test = rest (PyG example / DimeNet)
# data.options.split names -> what to do with a molecule of EDM's split that the data lacks
EDM_SPLITS = {"edm": "drop", "edm_strict": "raise"}
_LOG = logging.getLogger(__name__)

_NAME_INDEX = re.compile(r"(\d+)\D*$")


def target_index(name: str) -> int:
    """Column of ``name`` in ``y`` (DatasetError listing the valid names otherwise)."""
    if name in TARGETS:
        return TARGETS.index(name)
    lowered = {t.lower(): i for i, t in enumerate(TARGETS)}
    if name.lower() in lowered:
        return lowered[name.lower()]
    raise DatasetError(f"unknown QM9 target '{name}'", hint=f"valid targets: {', '.join(TARGETS)}")


@dataclass
class QM9Molecule:
    """One parsed QM9 record, in the file's units (Å, e, Hartree, ...); ``props`` is None without line 2."""

    index: int | None
    numbers: np.ndarray  # (n,) int
    positions: np.ndarray  # (n, 3) Å
    charges: np.ndarray | None = None  # (n,) Mulliken, e
    props: np.ndarray | None = None  # (15,) XYZ_FIELDS, file units
    frequencies: np.ndarray | None = None  # cm^-1
    smiles: str | None = None  # GDB-17 SMILES
    smiles_relaxed: str | None = None
    inchi: str | None = None

    def targets(self) -> np.ndarray | None:
        """The 19-target vector in molequi units (eV, ...), order ``TARGETS``."""
        return None if self.props is None else xyz_props_to_targets(self.props, self.numbers)

    def to_data(self, source: str | None = None, validate: bool = True) -> Data:
        import ase

        from molequi.data.checks import validate_structure
        from molequi.data.records import atoms_to_data

        atoms = ase.Atoms(numbers=self.numbers, positions=self.positions)
        extras = {"idx": np.int64(self.index if self.index is not None else -1)}
        if validate:
            validate_structure(atoms, source=source, frame=self.index)
        d = atoms_to_data(
            atoms,
            charges=self.charges,
            extras=extras,
            source=source,
            frame=self.index,
            validate=False,
            dtype=torch.float32,
        )
        y = self.targets()
        if y is not None:  # set directly: extras would read a 19-atom molecule's (19,) vector as per-atom
            d.y = torch.as_tensor(y, dtype=torch.float32).reshape(1, -1)
        if self.smiles is not None:
            d.smiles = self.smiles
        return d


def xyz_props_to_targets(props: np.ndarray, numbers: np.ndarray) -> np.ndarray:
    """Map line-2 values (``XYZ_FIELDS``, file units) to the 19 targets in molequi units."""
    p = dict(zip(XYZ_FIELDS, np.asarray(props, dtype=float)))
    refs = np.zeros(4)
    for z in np.asarray(numbers):
        try:
            refs += ATOM_REFS[int(z)]
        except KeyError as exc:
            raise FormatError(
                f"element Z={int(z)} has no QM9 atom reference", hint="QM9 holds H C N O F only"
            ) from exc
    h = HARTREE_TO_EV
    atom = [(p[k] - refs[j]) * h for j, k in enumerate(("U0", "U", "H", "G"))]
    return np.array(
        [
            p["mu"],
            p["alpha"],
            p["homo"] * h,
            p["lumo"] * h,
            p["gap"] * h,
            p["r2"],
            p["zpve"] * h,
            p["U0"] * h,
            p["U"] * h,
            p["H"] * h,
            p["G"] * h,
            p["Cv"],
            *atom,
            p["A"],
            p["B"],
            p["C"],
        ]
    )


def csv_row_to_targets(row: Sequence[float]) -> np.ndarray:
    """Map a ``gdb9.sdf.csv`` row (``CSV_FIELDS``, without mol_id) to the 19 targets in molequi units."""
    r = dict(zip(CSV_FIELDS, np.asarray(row, dtype=float)))
    h, kc = HARTREE_TO_EV, KCAL_PER_MOL_TO_EV
    return np.array(
        [
            r["mu"],
            r["alpha"],
            r["homo"] * h,
            r["lumo"] * h,
            r["gap"] * h,
            r["r2"],
            r["zpve"] * h,
            r["u0"] * h,
            r["u298"] * h,
            r["h298"] * h,
            r["g298"] * h,
            r["cv"],
            r["u0_atom"] * kc,
            r["u298_atom"] * kc,
            r["h298_atom"] * kc,
            r["g298_atom"] * kc,
            r["A"],
            r["B"],
            r["C"],
        ]
    )


# --------------------------------------------------------------------------- xyz


def _float(tok: str) -> float:
    return float(tok.replace("*^", "e"))


def parse_qm9_xyz(text: str, source: str = "<string>", index: int | None = None) -> list[QM9Molecule]:
    """Parse one or more QM9 xyz records joined in ``text``.

    ``index`` is used for geometry-only records (no ``gdb N`` line), e.g. taken from the file name.
    Raises ``FormatError`` naming ``source`` and the line for a malformed or truncated record.
    """
    lines = text.split("\n")
    out: list[QM9Molecule] = []
    i, n_lines = 0, len(lines)
    while i < n_lines:
        if not lines[i].strip():
            i += 1
            continue
        head = lines[i].split()
        if len(head) != 1 or not head[0].isdigit():
            raise FormatError(
                f"expected the atom count, got {lines[i].strip()[:60]!r}",
                source=source,
                line=i + 1,
                hint="a QM9 record starts with its number of atoms",
            )
        na = int(head[0])
        if i + 1 + na > n_lines - 1:
            raise FormatError(
                f"record truncated: {na} atoms announced, file ends first",
                source=source,
                line=i + 1,
                hint="the file is cut short; re-extract or re-download it",
            )
        comment = lines[i + 1].split()
        full = bool(comment) and comment[0] == "gdb"
        props = mol_index = None
        if full:
            if len(comment) != 17:
                raise FormatError(
                    f"property line has {len(comment)} fields, expected 17 "
                    "(gdb, index, A B C mu alpha homo lumo gap r2 zpve U0 U H G Cv)",
                    source=source,
                    line=i + 2,
                )
            try:
                mol_index = int(comment[1])
                props = np.array([_float(t) for t in comment[2:]])
            except ValueError as exc:
                raise FormatError(
                    f"unreadable number on the property line ({exc})", source=source, line=i + 2
                ) from None
            if not np.isfinite(props).all():
                raise FormatError(
                    f"property {XYZ_FIELDS[int(np.argmin(np.isfinite(props)))]} is NaN or inf",
                    source=source, line=i + 2, hint="the record is corrupt; re-extract or re-download it",
                )
        numbers = np.empty(na, dtype=np.int64)
        pos = np.empty((na, 3))
        charges = np.empty(na) if full else None
        for a in range(na):
            ln = i + 2 + a
            parts = lines[ln].split()
            if len(parts) < (5 if full else 4):
                raise FormatError(
                    f"atom row {a + 1} has {len(parts)} fields, expected "
                    f"{'element x y z charge' if full else 'element x y z'}",
                    source=source,
                    line=ln + 1,
                    hint="the record may be truncated",
                )
            try:
                numbers[a] = atomic_numbers[parts[0]]
            except KeyError:
                raise FormatError(
                    f"unknown element symbol {parts[0]!r}", source=source, line=ln + 1
                ) from None
            try:
                pos[a] = (_float(parts[1]), _float(parts[2]), _float(parts[3]))
                if full:
                    charges[a] = _float(parts[4])
            except ValueError as exc:
                raise FormatError(
                    f"unreadable number in atom row ({exc})", source=source, line=ln + 1
                ) from None
        i += 2 + na
        mol = QM9Molecule(
            index=mol_index if full else index, numbers=numbers, positions=pos, charges=charges, props=props
        )
        if full:
            if i + 1 >= n_lines:
                raise FormatError(
                    "record truncated after the atom rows (frequencies, SMILES, InChI expected)",
                    source=source,
                    line=i + 1,
                )
            try:
                mol.frequencies = np.array([_float(t) for t in lines[i].split()])
            except ValueError:
                raise FormatError("unreadable frequency line", source=source, line=i + 1) from None
            smi = lines[i + 1].split()
            inchi = lines[i + 2].split() if i + 2 < n_lines else []
            mol.smiles = smi[0] if smi else None
            mol.smiles_relaxed = smi[1] if len(smi) > 1 else mol.smiles
            mol.inchi = inchi[0] if inchi else None
            i += 3
        out.append(mol)
    return out


def _index_from_name(name: str) -> int | None:
    m = _NAME_INDEX.search(Path(name).stem)
    return int(m.group(1)) if m else None


def is_tarball(path: str | os.PathLike) -> bool:
    name = str(path).lower()
    return name.endswith((".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz"))


def is_zip(path: str | os.PathLike) -> bool:
    """A ``.zip`` of ``dsgdb9nsd_*.xyz`` files, as some mirrors distribute the tarball's content."""
    return str(path).lower().endswith(".zip")


def is_archive(path: str | os.PathLike) -> bool:
    return is_tarball(path) or is_zip(path)


# a QM9 record is under 3 kB; a member announcing more than this is not one (and would be read into memory)
MAX_MEMBER_BYTES = 1 << 20


def _member_text(data: bytes, source: str) -> str:
    try:
        return data.decode()
    except UnicodeDecodeError as exc:
        raise FormatError(f"member is not text ({exc.reason} at byte {exc.start})", source=source,
                          hint="the archive is corrupt, or this is not a QM9 xyz member") from None


def _iter_zip(path: Path) -> Iterator[QM9Molecule]:
    """Members ``*.xyz`` of a zip in name order, read one at a time (never unpacked to disk)."""
    import zipfile
    import zlib

    try:
        with zipfile.ZipFile(path) as archive:
            members = sorted((m for m in archive.infolist() if m.filename.endswith(".xyz")),
                             key=lambda m: m.filename)
            if not members:
                raise DatasetError(f"no .xyz members in {path}", hint="expected dsgdb9nsd_*.xyz files")
            for member in members:
                where = f"{path}:{member.filename}"
                with archive.open(member) as fh:
                    data = fh.read(MAX_MEMBER_BYTES + 1)
                if len(data) > MAX_MEMBER_BYTES:
                    raise FormatError(f"member larger than {MAX_MEMBER_BYTES} bytes", source=where,
                                      hint="a QM9 xyz record is a few kB; this is not one")
                yield from parse_qm9_xyz(_member_text(data, where), source=where,
                                         index=_index_from_name(member.filename))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, EOFError, OSError, NotImplementedError,
            RuntimeError, ValueError) as exc:
        if isinstance(exc, FormatError | DatasetError):
            raise
        raise FormatError(f"cannot read the zip ({type(exc).__name__}: {exc})", source=str(path),
                          hint="the archive is corrupt or truncated") from None


def iter_qm9_xyz(path: str | os.PathLike) -> Iterator[QM9Molecule]:
    """Yield the records of a QM9 xyz file, a directory of them, or a tarball / zip (streamed, never
    unpacked)."""
    path = Path(path)
    if not path.exists():
        raise DatasetError(f"{path} does not exist", hint="give a QM9 xyz file, directory or tarball")
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".xyz")
        if not files:
            raise DatasetError(f"no .xyz files in directory {path}")
        for p in files:
            yield from parse_qm9_xyz(_member_text(p.read_bytes(), str(p)), source=str(p),
                                     index=_index_from_name(p.name))
        return
    if is_tarball(path):
        try:
            with tarfile.open(path, "r|*") as tar:
                for member in tar:
                    if not member.isfile() or not member.name.endswith(".xyz"):
                        continue
                    where = f"{path}:{member.name}"
                    if member.size > MAX_MEMBER_BYTES:
                        raise FormatError(f"member of {member.size} bytes", source=where,
                                          hint="a QM9 xyz record is a few kB; this is not one")
                    text = _member_text(tar.extractfile(member).read(), where)
                    yield from parse_qm9_xyz(text, source=where, index=_index_from_name(member.name))
        except (tarfile.TarError, EOFError, OSError, zlib.error, TypeError) as exc:
            # TypeError: tarfile's gzip reader on a header cut inside its fixed fields (``ord('')``)
            raise FormatError(
                f"cannot read the tarball ({type(exc).__name__}: {exc})",
                source=str(path),
                hint="the archive is corrupt or truncated",
            ) from None
        return
    if is_zip(path):
        yield from _iter_zip(path)
        return
    yield from parse_qm9_xyz(_member_text(path.read_bytes(), str(path)), source=str(path),
                             index=_index_from_name(path.name))


def read_qm9_xyz(path: str | os.PathLike, exclude: Iterable[int] = (), validate: bool = True) -> list[Data]:
    """Records of ``path`` (file, directory or tarball) as graph records, skipping indices in ``exclude``."""
    skip = set(exclude)
    return [
        m.to_data(source=str(path), validate=validate)
        for m in iter_qm9_xyz(path)
        if m.index is None or m.index not in skip
    ]


def read_uncharacterized(path: str | os.PathLike) -> set[int]:
    """1-based indices listed in QM9's ``uncharacterized.txt`` (lines whose first token is an integer)."""
    out = set()
    for line in Path(path).read_text().splitlines():
        tok = line.split()
        if tok and tok[0].isdigit():
            out.add(int(tok[0]))
    return out


# --------------------------------------------------------------------------- sdf + csv


def read_qm9_csv(path: str | os.PathLike) -> dict[int, np.ndarray]:
    """``gdb9.sdf.csv`` -> {gdb index: 19 targets in molequi units}."""
    out = {}
    ln = 1
    try:
        with open(path, newline="") as fh:
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or [h.strip() for h in header[1:20]] != list(CSV_FIELDS):
                raise FormatError(
                    f"unexpected header {header}",
                    source=str(path),
                    line=1,
                    hint="expected mol_id," + ",".join(CSV_FIELDS) + " (PyG gdb9.sdf.csv layout)",
                )
            for ln, row in enumerate(reader, start=2):
                if not row:
                    continue
                idx = _index_from_name(row[0])
                if idx is None or len(row) < 1 + len(CSV_FIELDS):
                    raise FormatError(f"expected gdb_<index> and {len(CSV_FIELDS)} values, got {len(row)} "
                                      f"fields starting {row[0][:20]!r}", source=str(path), line=ln)
                try:
                    values = [float(v) for v in row[1:20]]
                except ValueError as exc:
                    raise FormatError(f"unreadable row ({exc})", source=str(path), line=ln) from None
                if not np.isfinite(values).all():
                    raise FormatError("NaN or inf in the row", source=str(path), line=ln)
                out[idx] = csv_row_to_targets(values)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise FormatError(f"not a readable CSV ({type(exc).__name__}: {exc})", source=str(path),
                          line=ln + 1, hint="expected PyG's gdb9.sdf.csv (UTF-8 text)") from None
    return out


def read_qm9_sdf(
    sdf: str | os.PathLike,
    csv_path: str | os.PathLike | None = None,
    exclude: Iterable[int] = (),
    validate: bool = True,
) -> list[Data]:
    """PyG's layout: ``gdb9.sdf`` (+ ``gdb9.sdf.csv`` for targets; default: the sdf's name + ``.csv``)."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    sdf = Path(sdf)
    if csv_path is None and Path(str(sdf) + ".csv").exists():
        csv_path = Path(str(sdf) + ".csv")
    targets = read_qm9_csv(csv_path) if csv_path is not None else {}
    skip = set(exclude)
    out = []
    try:
        supplier = iter(Chem.SDMolSupplier(str(sdf), removeHs=False, sanitize=False))
    except OSError as exc:  # RDKit: "Invalid input file" for a missing or empty file
        raise FormatError(f"cannot open the SDF ({exc})", source=str(sdf),
                          hint="the file is missing or empty") from None
    for i in itertools.count():
        try:
            mol = next(supplier)
            if mol is None:
                raise FormatError("unreadable SDF block", source=str(sdf), frame=i,
                                  hint="the block is malformed")
            name = mol.GetProp("_Name") if mol.HasProp("_Name") else None
        except StopIteration:
            break
        except UnicodeDecodeError as exc:  # RDKit decodes titles and properties as UTF-8
            raise FormatError(f"SDF block is not UTF-8 text ({exc.reason})", source=str(sdf), frame=i,
                              hint="the file is corrupt") from None
        idx = _index_from_name(name) if name is not None else i + 1
        if idx is None:
            idx = i + 1
        if idx in skip:
            continue
        numbers = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], dtype=np.int64)
        pos = mol.GetConformer().GetPositions()
        m = QM9Molecule(index=idx, numbers=numbers, positions=pos)
        d = m.to_data(source=str(sdf), validate=validate)
        if targets:
            if idx not in targets:
                raise DatasetError(
                    f"gdb_{idx} has no row in {csv_path}",
                    source=str(sdf),
                    frame=i,
                    hint="the sdf and csv must come from the same release",
                )
            d.y = torch.as_tensor(targets[idx], dtype=torch.float32).reshape(1, -1)
        try:
            d.smiles = Chem.MolToSmiles(mol, isomericSmiles=False)
        except Exception:  # unsanitised molecules RDKit cannot write
            pass
        out.append(d)
    return out


# --------------------------------------------------------------------------- splits and dataset


def find_qm9_raw(folder: str | os.PathLike) -> tuple[str, list[Path], Path | None]:
    """Find QM9 raw files in ``folder`` -> (layout 'sdf' | 'xyz', files, uncharacterized.txt or None)."""
    folder = Path(folder)
    if folder.is_file():
        unc = folder.parent / "uncharacterized.txt"
        layout = "sdf" if folder.suffix == ".sdf" else "xyz"
        return layout, [folder], unc if unc.exists() else None
    if not folder.is_dir():
        raise DatasetError(
            f"QM9 raw folder {folder} does not exist",
            hint="put gdb9.sdf + gdb9.sdf.csv, or dsgdb9nsd.xyz.tar.bz2 / *.xyz files, there",
        )
    unc = folder / "uncharacterized.txt"
    unc = unc if unc.exists() else None
    sdfs = sorted(folder.glob("*.sdf"))
    if sdfs:
        return "sdf", sdfs, unc
    tars = sorted(p for p in folder.iterdir() if is_archive(p))
    if tars:
        return "xyz", tars, unc
    xyz = sorted(folder.glob("*.xyz"))
    if xyz:
        return "xyz", xyz, unc
    raise DatasetError(
        f"no QM9 raw files in {folder}",
        hint="expected gdb9.sdf (+ gdb9.sdf.csv), a figshare tarball, or dsgdb9nsd_*.xyz files; "
        "download them from https://figshare.com/collections/978904 or PyG's QM9 URLs",
    )


EDM_N_TRAIN = 100000  # EDM / Cormorant: 100k train, int(0.1 N) test, the rest validation


def shipped_uncharacterized() -> set[int]:
    """The 3054 indices of QM9's ``uncharacterized.txt`` shipped with molequi (``molequi/resources/qm9``)."""
    from molequi.resources import shipped_path

    return read_uncharacterized(shipped_path("qm9", "uncharacterized_indices.txt"))


def edm_qm9_split(excluded: Iterable[int] | None = None, n_gdb9: int = N_QM9) -> dict[str, np.ndarray]:
    """EDM's QM9 split (``qm9/data/prepare/qm9.py: gen_splits_gdb9``, inherited from Cormorant) as 1-based
    GDB-9 indices (the ``idx`` of molequi's QM9 records).

    excluded  1-based indices of QM9's ``uncharacterized.txt`` (``read_uncharacterized``; EDM asserts there
              are 3054); None: the list shipped with molequi (``shipped_uncharacterized``)

    The N = n_gdb9 - len(excluded) remaining molecules, in index order, are permuted with
    ``np.random.seed(0); np.random.permutation(N)``; the first 100000 are train, the last int(0.1 N) test and
    the rest validation (100000 / 17748 / 13083 for the full QM9). Returns {"train", "valid", "test"}.
    """
    excluded0 = {int(i) - 1 for i in (shipped_uncharacterized() if excluded is None else excluded)}
    included = np.array(sorted(set(range(n_gdb9)) - excluded0))
    n_mols = len(included)
    n_train, n_test = EDM_N_TRAIN, int(0.1 * n_mols)
    n_valid = n_mols - (n_train + n_test)
    if n_valid < 0:
        raise DatasetError(f"EDM's QM9 split needs more than {n_train + n_test} molecules, got {n_mols}")
    perm = np.random.RandomState(0).permutation(n_mols)  # the legacy global generator np.random.seed(0) sets
    train, valid, test = np.split(perm, [n_train, n_train + n_valid])
    return {"train": included[train] + 1, "valid": included[valid] + 1, "test": included[test] + 1}


def edm_qm9_subsets(record_idx, excluded: Iterable[int] | None = None, missing: str = "raise"):
    """Positions in a dataset whose records carry 1-based GDB-9 indices ``record_idx`` (n,) that fall in EDM's
    train / valid / test split (``edm_qm9_split``), in the split's order; records outside the split (e.g.
    uncharacterised ones a dataset kept) are in none.

    missing  "raise": a ``DatasetError`` when a molecule of the split is not in the dataset; "drop": it is
             left out of its subset (e.g. the F molecules of a geometry subset without fluorine)

    Returns ``(positions, dropped)``: ``{"train", "valid", "test"} -> positions`` and the number of split
    molecules absent from the dataset per subset.
    """
    if missing not in ("raise", "drop"):
        raise ValueError(f"missing must be 'raise' or 'drop', got {missing!r}")
    record_idx = np.asarray(record_idx, dtype=np.int64)
    if (record_idx < 1).any():
        raise DatasetError("EDM's QM9 split needs every record's GDB-9 index (idx >= 1); some records have none",
                           hint="read QM9 from figshare xyz files / tarball or gdb9.sdf, which carry the index")
    position = np.full(N_QM9 + 1, -1, dtype=np.int64)
    inside = record_idx <= N_QM9
    position[record_idx[inside]] = np.nonzero(inside)[0]
    positions, dropped = {}, {}
    for name, ids in edm_qm9_split(excluded).items():
        pos = position[ids]
        absent = pos < 0
        if absent.any() and missing == "raise":
            raise DatasetError(f"{int(absent.sum())} molecules of EDM's {name} split are not in the dataset "
                               f"(first: gdb_{int(ids[absent][0])}); EDM's split needs the whole of QM9",
                               hint="split: edm (not edm_strict) drops them from their subsets")
        positions[name], dropped[name] = pos[~absent], int(absent.sum())
    return positions, dropped


class QM9Dataset(InMemoryDataset):
    """QM9 as an in-memory PyG dataset, processed once and cached.

    ``root/raw`` (or ``source``: a file, folder or tarball) holds the raw files; the processed file
    ``root/processed/qm9_<layout>_<excl>.pt`` is written atomically. Each record has ``numbers``, ``pos``,
    ``y`` (1, 19) in ``TARGET_UNITS``, ``charges`` (xyz layout), ``idx`` and ``smiles``.
    ``exclude_uncharacterized`` drops the indices listed in ``uncharacterized.txt`` (when present).
    """

    def __init__(
        self,
        root: str | os.PathLike,
        source: str | os.PathLike | None = None,
        exclude_uncharacterized: bool = True,
        transform=None,
        pre_transform=None,
        force_reload=False,
    ):
        self._source = Path(source) if source is not None else Path(root) / "raw"
        self.layout, self._files, self._unc = find_qm9_raw(self._source)
        self.exclude_uncharacterized = exclude_uncharacterized
        super().__init__(str(root), transform, pre_transform, force_reload=force_reload)
        self.load(self.processed_paths[0])

    @property
    def raw_dir(self) -> str:
        return str(self._source if self._source.is_dir() else self._source.parent)

    @property
    def raw_file_names(self) -> list[str]:
        return [p.name for p in self._files]

    @property
    def processed_file_names(self) -> list[str]:
        excl = "excl" if (self.exclude_uncharacterized and self._unc is not None) else "all"
        stem = (
            "_".join(p.name.split(".")[0] for p in self._files)[:60]
            if len(self._files) < 4
            else f"{len(self._files)}files"
        )
        return [f"qm9_{self.layout}_{stem}_{excl}.pt"]

    def download(self) -> None:  # raw files are found in __init__ or a DatasetError says what is missing
        raise DatasetError(f"QM9 raw files missing in {self.raw_dir}")

    def process(self) -> None:
        exclude = read_uncharacterized(self._unc) if (self.exclude_uncharacterized and self._unc) else set()
        data_list: list[Data] = []
        if self.layout == "sdf":
            for sdf in self._files:
                data_list += read_qm9_sdf(sdf, exclude=exclude)
        else:
            for f in self._files:
                data_list += read_qm9_xyz(f, exclude=exclude)
        if not data_list:
            raise DatasetError(f"no QM9 molecules read from {self._source}")
        if self.pre_transform is not None:
            data_list = [self.pre_transform(d) for d in data_list]
        data, slices = self.collate(data_list)
        atomic_write_torch(self.processed_paths[0], (data.to_dict(), slices, data.__class__))

    def split(self, sizes: Sequence[int | float | None] = DIMENET_SPLIT, seed: int = 0):
        """Seeded (train, val, test) subsets; see ``random_split``."""
        return [
            self.index_select(torch.as_tensor(ix, dtype=torch.long))
            for ix in random_split(len(self), sizes, seed)
        ]

    def uncharacterized(self) -> set[int]:
        """Indices of ``uncharacterized.txt`` next to the raw files, else the list shipped with molequi."""
        return read_uncharacterized(self._unc) if self._unc is not None else shipped_uncharacterized()

    def edm_split(self, missing: str = "raise"):
        """EDM's (train, val, test) subsets (``edm_qm9_subsets``) and the molecules of each that the data lacks."""
        positions, dropped = edm_qm9_subsets(self._data.idx.numpy(), self.uncharacterized(), missing=missing)
        subsets = [self.index_select(torch.as_tensor(positions[k], dtype=torch.long))
                   for k in ("train", "valid", "test")]
        return subsets, dropped


def build_qm9(cfg):
    """Registry entry: DataConfig -> {'train', 'val', 'test'} subsets of ``QM9Dataset``.

    ``cfg.root``: a folder with ``raw/`` (PyG style), a folder of raw files, or one raw file / tarball.
    ``cfg.target`` (optional) is checked against ``TARGETS``. Options: ``split`` (sizes, default 110k / 10k /
    rest; or ``edm``: EDM's 100k / 17,748 / 13,083 permutation less the molecules the data lacks, e.g. the F
    molecules of a geometry subset, counted in the returned ``dropped`` and logged; ``edm_strict``: the same,
    but a missing molecule is a ``DatasetError``), ``seed`` (0, random sizes only), ``exclude_uncharacterized`` (True),
    ``cache_dir`` (default: next to the raw files).
    """
    from molequi.data.datasets import dataset_option as opt

    if getattr(cfg, "target", None):
        target_index(cfg.target)
    root = Path(cfg.root)
    if opt(cfg, "source"):
        source = Path(opt(cfg, "source"))
    elif root.is_dir() and (root / "raw").exists():
        source = root / "raw"
    else:
        source = root
    cache = Path(
        opt(cfg, "cache_dir")
        or (
            root
            if root.is_dir() and (root / "raw").exists()
            else (source.parent if source.is_file() else source)
        )
    )
    ds = QM9Dataset(cache, source=source, exclude_uncharacterized=opt(cfg, "exclude_uncharacterized", True))
    sizes = opt(cfg, "split") or DIMENET_SPLIT
    if isinstance(sizes, str):
        if sizes not in EDM_SPLITS:
            raise DatasetError(f"QM9 split '{sizes}' is not known",
                               hint=f"give sizes [train, val, test] or one of {', '.join(EDM_SPLITS)}")
        (train, val, test), dropped = ds.edm_split(missing=EDM_SPLITS[sizes])
        if any(dropped.values()):
            _LOG.warning("QM9 split %s: %s molecules of EDM's train / valid / test split are not in %s and were "
                         "dropped; kept %d / %d / %d", sizes, " / ".join(str(dropped[k]) for k in dropped),
                         source, len(train), len(val), len(test))
        return {"train": train, "val": val, "test": test, "dropped": dropped}
    train, val, test = ds.split(sizes, seed=opt(cfg, "seed", 0))
    return {"train": train, "val": val, "test": test}


__all__ = [
    "TARGETS",
    "TARGET_UNITS",
    "ATOM_REFS",
    "QM9Molecule",
    "QM9Dataset",
    "parse_qm9_xyz",
    "iter_qm9_xyz",
    "read_qm9_xyz",
    "read_qm9_sdf",
    "read_qm9_csv",
    "read_uncharacterized",
    "random_split",
    "edm_qm9_split",
    "edm_qm9_subsets",
    "shipped_uncharacterized",
    "EDM_SPLITS",
    "target_index",
    "build_qm9",
    "atomic_write_torch",
    "xyz_props_to_targets",
    "csv_row_to_targets",
]
