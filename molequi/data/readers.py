"""Readers for the formats users bring: extended XYZ, ASE databases, ASE trajectories.

Each reader returns ``list[torch_geometric.data.Data]`` records (see ``molequi.data.records``) in eV, Å,
eV/Å and eV/Å^3. Labels are looked up under configurable keys; by default ``energy``/``REF_energy``/
``free_energy``, ``forces``/``REF_forces`` and ``stress``/``REF_stress`` (MACE's ``REF_*`` convention).
The key found on the first labelled frame must be present on every frame.

MACE's other extended-XYZ conventions are read as mace-torch 0.3.16 reads them (``mace.data.utils.
config_from_atoms``): a frame without stress but with ``REF_virials`` (or ``virials``; 3x3, Voigt 6 or 9
numbers) gets stress = -virials / volume; ``config_type`` (default "Default"), ``config_weight`` and the
per-property weights ``config_energy_weight``, ``config_forces_weight``, ``config_stress_weight`` (and
``config_virials_weight`` for a stress that came from virials) become the record fields
``keys.CONFIG_TYPE``, ``keys.WEIGHT``, ``keys.ENERGY_WEIGHT``, ``keys.FORCES_WEIGHT``, ``keys.STRESS_WEIGHT``
(default 1), which the energy_forces loss multiplies in; the head key (``head``) becomes ``keys.HEAD``. Each
of these fields is set on every frame of a file when any frame has it, and on none otherwise.

Every problem is a named error (``molequi.errors``) that says which file, frame and line.
"""

from __future__ import annotations

import io
import os
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import ase
import numpy as np
import torch
from ase.data import chemical_symbols

from molequi import keys as K
from molequi.data.records import MIN_DISTANCE, atoms_to_data, voigt_to_matrix
from molequi.errors import FormatError, InputError, MissingKeyError, ValueRangeError, suggest

_SYMBOLS = set(chemical_symbols[1:])


@dataclass(frozen=True)
class LabelKeys:
    """Where to find labels in a frame; ``None`` means "try the defaults, labels optional"."""

    energy: str | None = None
    forces: str | None = None
    stress: str | None = None
    charges: str | None = None
    required: tuple[str, ...] = ()  # of "energy", "forces", "stress": raise if absent
    virials: str | None = None  # read on each frame without stress: stress = -virials / volume
    head: str = "head"  # MACE's --head_key


def _available(atoms: ase.Atoms) -> list[str]:
    names = set(atoms.info) | set(atoms.arrays) - {"numbers", "positions"}
    if atoms.calc is not None:
        names |= set(getattr(atoms.calc, "results", {}))
    return sorted(names)


def _lookup(atoms: ase.Atoms, key: str):
    if key in atoms.info:
        return atoms.info[key]
    if key in atoms.arrays:
        return atoms.arrays[key]
    results = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
    if key in results:
        return results[key]
    return None


class _KeyResolver:
    """Resolves each label's key once (on the first frame that has it) and enforces it afterwards."""

    DEFAULTS = {"energy": K.DEFAULT_ENERGY_KEYS, "forces": K.DEFAULT_FORCES_KEYS,
                "stress": K.DEFAULT_STRESS_KEYS, "charges": ("charges",)}

    def __init__(self, keys: LabelKeys, source: str):
        self.keys, self.source = keys, source
        self.chosen: dict[str, str | None] = {}

    def get(self, atoms: ase.Atoms, label: str, frame: int, line: int | None):
        explicit = getattr(self.keys, label)
        required = label in self.keys.required
        if explicit is not None or label in self.chosen:
            key = explicit if explicit is not None else self.chosen[label]
            if key is None:
                return None
            value = _lookup(atoms, key)
            if value is None:
                hint = suggest(key, _available(atoms))
                what = f"{label} key '{key}' not found; keys present: {', '.join(_available(atoms)) or 'none'}"
                raise MissingKeyError(what, source=self.source, frame=frame, line=line,
                                      hint=hint or f"set the {label} key to one of the keys present")
            return value
        for key in self.DEFAULTS[label]:
            value = _lookup(atoms, key)
            if value is not None:
                self.chosen[label] = key
                return value
        if required:
            raise MissingKeyError(f"no {label} found (looked for {', '.join(self.DEFAULTS[label])}); keys "
                                  f"present: {', '.join(_available(atoms)) or 'none'}", source=self.source,
                                  frame=frame, line=line, hint=f"pass the {label} key explicitly")
        self.chosen[label] = None if frame == 0 else self.chosen.get(label)
        return None


def _to_record(atoms: ase.Atoms, resolver: _KeyResolver, frame: int, line: int | None,
               min_distance: float | None, extras_keys: Sequence[str] = ()):
    source = resolver.source
    labels = {}
    for label in ("energy", "forces", "stress", "charges"):
        value = resolver.get(atoms, label, frame, line)
        if value is not None:
            try:
                labels[label] = np.asarray(value, dtype=float)
            except (TypeError, ValueError) as exc:
                raise FormatError(f"{label} is not numeric ({exc})", source=source, frame=frame, line=line) from None
    from_virials = False
    if "stress" not in labels:  # frame by frame, as mace-torch reads them
        names = (resolver.keys.virials,) if resolver.keys.virials else K.DEFAULT_VIRIALS_KEYS
        virials = next((v for v in (_lookup(atoms, k) for k in names) if v is not None), None)
        if virials is not None:
            labels["stress"], from_virials = _stress_from_virials(atoms, virials, source, frame, line), True
    extras = {}
    for key in extras_keys:
        value = _lookup(atoms, key)
        if value is None:
            raise MissingKeyError(f"extra key '{key}' not found", source=source, frame=frame, line=line,
                                  hint=suggest(key, _available(atoms)) or None)
        extras[key] = value
    extras.update(_mace_weights(atoms, from_virials, source, frame, line))
    try:
        record = atoms_to_data(atoms, energy=labels.get("energy"), forces=labels.get("forces"),
                               stress=labels.get("stress"), charges=labels.get("charges"), extras=extras,
                               source=source, frame=frame, min_distance=min_distance)
    except InputError as exc:
        if exc.line is None and line is not None:
            raise type(exc)(str(exc).split(": ", 1)[-1], source=source, frame=frame, line=line) from None
        raise
    for field, key in ((K.CONFIG_TYPE, "config_type"), (K.HEAD, resolver.keys.head)):
        if key in atoms.info:
            record[field] = str(atoms.info[key])
    return record


# (record field, extended-XYZ info key) of MACE's per-frame loss weights; the stress weight is
# config_virials_weight instead when the frame's stress came from its virials
_WEIGHT_KEYS = ((K.WEIGHT, "config_weight"), (K.ENERGY_WEIGHT, "config_energy_weight"),
                (K.FORCES_WEIGHT, "config_forces_weight"), (K.STRESS_WEIGHT, "config_stress_weight"))
_CONVENTION_DEFAULTS = {K.WEIGHT: 1.0, K.ENERGY_WEIGHT: 1.0, K.FORCES_WEIGHT: 1.0, K.STRESS_WEIGHT: 1.0,
                        K.CONFIG_TYPE: "Default", K.HEAD: "Default"}


def _mace_weights(atoms: ase.Atoms, from_virials: bool, source, frame, line) -> dict[str, float]:
    out = {}
    for field, key in _WEIGHT_KEYS:
        if field == K.STRESS_WEIGHT and from_virials:
            key = "config_virials_weight"
        if key not in atoms.info:
            continue
        try:
            value = float(atoms.info[key])
        except (TypeError, ValueError):
            raise FormatError(f"{key} = {atoms.info[key]!r} is not a number", source=source, frame=frame,
                              line=line) from None
        if not np.isfinite(value) or value < 0:
            raise ValueRangeError(f"{key} = {value} must be a finite number >= 0", source=source, frame=frame,
                                  line=line)
        out[field] = value
    return out


def _stress_from_virials(atoms: ase.Atoms, virials, source, frame, line) -> np.ndarray:
    """stress = -virials / volume (eV/Å^3), as mace-torch relates them; virials 3x3, Voigt 6 or 9 numbers."""
    try:
        v = np.asarray(virials, dtype=float)
    except (TypeError, ValueError) as exc:
        raise FormatError(f"virials are not numeric ({exc})", source=source, frame=frame, line=line) from None
    if v.shape == (9,):
        v = v.reshape(3, 3)
    elif v.shape == (6,):
        v = voigt_to_matrix(v)
    if v.shape != (3, 3):
        raise FormatError(f"virials have shape {v.shape}, expected (3, 3), 6 Voigt or 9 numbers",
                          source=source, frame=frame, line=line)
    volume = abs(float(np.linalg.det(atoms.cell[:]))) if atoms.pbc.all() else 0.0
    if volume <= 1e-12:
        raise ValueRangeError("virials given for a structure without a periodic cell (no volume to divide "
                              "by)", source=source, frame=frame, line=line,
                              hint="virials need Lattice= and pbc")
    return -v / volume


def _complete_conventions(records: list) -> list:
    """Set each MACE convention field (weights, config_type, head) that some record has on every record,
    with mace-torch's default, so that records batch together."""
    for field, default in _CONVENTION_DEFAULTS.items():
        if any(field in r for r in records):
            for r in records:
                if field not in r:
                    r[field] = default if isinstance(default, str) else torch.tensor([default],
                                                                                     dtype=r[K.POS].dtype)
    return records


# ----------------------------------------------------------------------------------------------- extxyz
def _split_xyz_frames(text: str, source: str):
    """Yield ``(frame, first_line (1-based), frame_text)``; checks counts and element symbols per line."""
    lines = text.splitlines()
    i, frame = 0, 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        head = lines[i].strip()
        try:
            n = int(head.split()[0])
            if len(head.split()) != 1 or n < 0:
                raise ValueError
        except ValueError:
            raise FormatError(f"expected the number of atoms, found '{head[:40]}'", source=source, frame=frame,
                              line=i + 1, hint="each frame starts with an atom count line") from None
        if n == 0:
            raise ValueRangeError("empty structure (atom count 0)", source=source, frame=frame, line=i + 1)
        if i + 2 + n > len(lines):
            got = max(0, len(lines) - i - 2)
            raise FormatError(f"truncated frame: expected {n} atom lines, found {got}", source=source,
                              frame=frame, line=i + 1, hint="the file ends early")
        for k in range(i + 2, i + 2 + n):
            tokens = lines[k].split()
            if not tokens:
                raise FormatError("blank line inside the atom block", source=source, frame=frame, line=k + 1)
            sym = tokens[0]
            if sym.isalpha() and sym.capitalize() not in _SYMBOLS:
                raise ValueRangeError(f"unknown element symbol '{sym}'", source=source, frame=frame, line=k + 1,
                                      hint="use chemical symbols such as H, C, O")
        yield frame, i + 1, "\n".join(lines[i:i + 2 + n]) + "\n"
        i += 2 + n
        frame += 1


def read_extxyz(path: str | os.PathLike, keys: LabelKeys = LabelKeys(), *, index: slice | None = None,
                min_distance: float | None = MIN_DISTANCE, extras: Sequence[str] = ()) -> list:
    """Read an extended XYZ file (ASE's dialect; MACE's ``REF_*`` keys accepted) into records."""
    source = str(path)
    try:
        text = Path(path).read_text()
    except UnicodeDecodeError:
        raise FormatError("not a text file", source=source, hint="extended XYZ is plain text") from None
    except OSError as exc:
        raise FormatError(f"cannot read: {exc.strerror}", source=source) from None
    resolver = _KeyResolver(keys, source)
    frames = list(_split_xyz_frames(text, source))
    if not frames:
        raise FormatError("no frames found", source=source, hint="is the file empty?")
    selected = frames[index] if index is not None else frames
    records = []
    for frame, line, chunk in selected:
        atoms = _parse_frame(chunk, source, frame, line)
        records.append(_to_record(atoms, resolver, frame, line, min_distance, extras))
    return _complete_conventions(records)


def _check_property_columns(chunk: str, source: str, frame: int, line: int) -> None:
    """Reject a ``Properties=`` string that declares more columns than the atom lines hold.

    ASE builds one numpy field per declared column in a Python loop before it reads a single atom, so
    ``pos:R:399999999999`` (a stray digit run in a 2-atom file) would allocate tens of GB. A row with
    fewer values than declared columns can never be read, so such a frame is a format error anyway.
    """
    from ase.io.extxyz import key_val_str_to_dict

    lines = chunk.splitlines()
    if len(lines) < 2 or "Properties" not in lines[1]:
        return
    try:
        info = key_val_str_to_dict(lines[1])
    except Exception:  # noqa: BLE001 - a broken comment line is reported by the full parse below
        return
    prop = info.get("Properties")
    if not isinstance(prop, str):
        return
    fields = prop.split(":")
    try:
        declared = sum(int(c) for c in fields[2::3])
    except ValueError:
        return  # not an integer column count: the full parse reports it
    widest = max((len(x.split()) for x in lines[2:]), default=0)
    if declared > widest:
        raise FormatError(f"Properties declares {declared} columns per atom but the atom lines have at most "
                          f"{widest}", source=source, frame=frame, line=line + 1,
                          hint="fix the column counts in Properties=name:type:count to match the atom lines")


def _parse_frame(chunk: str, source: str, frame: int, line: int) -> ase.Atoms:
    from ase.io.extxyz import read_xyz

    _check_property_columns(chunk, source, frame, line)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return next(read_xyz(io.StringIO(chunk), index=0))
    except (ValueError, KeyError, IndexError, TypeError, AttributeError, RuntimeError, StopIteration,
            SyntaxError, OverflowError, UnicodeError, AssertionError) as exc:
        msg = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise FormatError(f"malformed frame ({type(exc).__name__}: {msg})", source=source, frame=frame,
                          line=line, hint="check the comment line (Lattice, Properties) and the columns") from None


def write_extxyz(path: str | os.PathLike, frames: Sequence[ase.Atoms]) -> None:
    """Write frames as extended XYZ, atomically."""
    from ase.io import write

    from molequi.io import atomic_path

    with atomic_path(path) as tmp:
        write(tmp, list(frames), format="extxyz")


# ------------------------------------------------------------------------------------------- ASE db/traj
def read_ase_db(path: str | os.PathLike, keys: LabelKeys = LabelKeys(), *, selection=None,
                min_distance: float | None = MIN_DISTANCE, extras: Sequence[str] = ()) -> list:
    """Read an ASE database (``.db`` SQLite or ``.json``); ``selection`` is passed to ``db.select``."""
    import ase.db

    source = str(path)
    if not Path(path).exists():
        raise FormatError("file not found", source=source)
    try:
        db = ase.db.connect(str(path))
        rows = list(db.select(selection) if selection is not None else db.select())
    except Exception as exc:  # sqlite3 / json errors vary by backend; reported as a format error
        raise FormatError(f"not a readable ASE database ({type(exc).__name__}: {exc})", source=source) from None
    resolver = _KeyResolver(keys, source)
    records = []
    for frame, row in enumerate(rows):
        atoms = row.toatoms(add_additional_information=True)
        info = atoms.info
        for k, v in (info.pop("key_value_pairs", None) or {}).items():
            info.setdefault(k, v)
        for k, v in (info.pop("data", None) or {}).items():
            info.setdefault(k, v)
        records.append(_to_record(atoms, resolver, frame, None, min_distance, extras))
    if not records:
        raise FormatError("database holds no rows", source=source)
    return _complete_conventions(records)


def read_trajectory(path: str | os.PathLike, keys: LabelKeys = LabelKeys(), *,
                    min_distance: float | None = MIN_DISTANCE, extras: Sequence[str] = ()) -> list:
    """Read an ASE binary trajectory (``.traj``) with its stored energies / forces / stress."""
    from ase.io.trajectory import Trajectory

    source = str(path)
    try:
        with Trajectory(str(path)) as traj:
            frames = [traj[i] for i in range(len(traj))]
    except Exception as exc:  # ulm raises several types on foreign or truncated files
        raise FormatError(f"not a readable ASE trajectory ({type(exc).__name__}: {exc})", source=source) from None
    resolver = _KeyResolver(keys, source)
    return _complete_conventions([_to_record(a, resolver, i, None, min_distance, extras)
                                  for i, a in enumerate(frames)])


# -------------------------------------------------------------------------------------------- dispatch
READERS = {"extxyz": read_extxyz, "db": read_ase_db, "traj": read_trajectory}
_EXTENSIONS = {".xyz": "extxyz", ".extxyz": "extxyz", ".db": "db", ".json": "db", ".traj": "traj"}


def guess_format(path: str | os.PathLike) -> str | None:
    return _EXTENSIONS.get(Path(path).suffix.lower())


def read_structures(path: str | os.PathLike, format: str | None = None, *, energy_key: str | None = None,
                    forces_key: str | None = None, stress_key: str | None = None,
                    charges_key: str | None = None, required: Sequence[str] = (),
                    min_distance: float | None = MIN_DISTANCE, extras: Sequence[str] = (),
                    virials_key: str | None = None, head_key: str = "head") -> list:
    """Read any generic structure file into records; ``format`` in ``READERS`` or guessed from the suffix."""
    fmt = format or guess_format(path)
    if fmt not in READERS:
        raise FormatError(f"unknown format '{fmt or Path(path).suffix}'", source=str(path),
                          hint=f"give --format as one of {', '.join(READERS)}")
    keys = LabelKeys(energy_key, forces_key, stress_key, charges_key, tuple(required), virials_key, head_key)
    return READERS[fmt](path, keys, min_distance=min_distance, extras=extras)


__all__ = ["LabelKeys", "read_extxyz", "read_ase_db", "read_trajectory", "read_structures", "write_extxyz",
           "guess_format", "READERS"]
