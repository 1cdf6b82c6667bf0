"""The sharded on-disk store of ``HamiltonianRecord`` s (``molequi data hamiltonian`` writes it).

Layout, a directory::

    index.json                       {"format": "molequi-hamiltonian/1", "basis", "xc", "shards": [...], ...}
    shard_00000/numbers.npy          (sum n,) int64        all atoms of the shard, concatenated
    shard_00000/pos.npy              (sum n, 3)            Å
    shard_00000/forces.npy           (sum n, 3)            Hartree/Bohr
    shard_00000/atom_ptr.npy         (m + 1,) offsets into the atom arrays
    shard_00000/fock.npy             (sum nao^2,) flattened matrices, Hartree, PySCF AO order
    shard_00000/overlap.npy          (sum nao^2,)
    shard_00000/mo_energy.npy        (sum nao,)            Hartree
    shard_00000/nao.npy, mat_ptr.npy, orb_ptr.npy, energy.npy, n_elec.npy
    split.json                       optional {"train": [i, ...], "valid": [...], "test": [...], "seed": s}

Arrays are opened with ``np.load(mmap_mode="r")``, so a record is read by slicing without loading the
shard. Every shard is written to a temporary directory and renamed into place; ``index.json`` is written
to a temporary file and renamed, so an interrupted run leaves a readable store of the finished shards.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from molequi.data.hamiltonian.record import HamiltonianRecord
from molequi.errors import DatasetError, FormatError
from molequi.io import atomic_write_text

FORMAT = "molequi-hamiltonian/1"
SPLIT_FILE = "split.json"
SPLIT_NAMES = ("train", "valid", "test")


_SHARD_ARRAYS = ("numbers", "pos", "forces", "atom_ptr", "nao", "mat_ptr", "orb_ptr", "fock", "overlap",
                 "mo_energy", "energy", "n_elec")


def _check_shard(a: dict[str, np.ndarray], count: int, where: Path) -> None:
    """FormatError unless the shard's arrays have the layout of the module docstring for ``count`` records
    (kinds, shapes, pointers that start at 0, step by 1 / nao / nao^2 and end at the array lengths)."""

    def bad(what: str):
        return FormatError(what, source=str(where), hint="the shard is corrupt; rewrite the store")

    ints = ("numbers", "atom_ptr", "nao", "mat_ptr", "orb_ptr", "n_elec")
    for key, arr in a.items():
        if arr.dtype.kind not in ("iu" if key in ints else "iuf") or arr.dtype.kind == "b":
            raise bad(f"{key}.npy holds {arr.dtype}, not {'integers' if key in ints else 'numbers'}")
    shapes = {"atom_ptr": (count + 1,), "mat_ptr": (count + 1,), "orb_ptr": (count + 1,), "nao": (count,),
              "energy": (count,), "n_elec": (count,)}
    for key, shape in shapes.items():
        if a[key].shape != shape:
            raise bad(f"{key}.npy has shape {a[key].shape}, expected {shape} for {count} records")
    nao, ap, mp, op = (np.asarray(a[k], dtype=np.int64) for k in ("nao", "atom_ptr", "mat_ptr", "orb_ptr"))
    n_atoms = a["numbers"].shape[0] if a["numbers"].ndim == 1 else -1
    if (nao < 1).any() or ap[0] != 0 or (np.diff(ap) < 1).any() or ap[-1] != n_atoms:
        raise bad("atom_ptr / nao are not valid offsets into numbers.npy")
    if mp[0] != 0 or op[0] != 0 or (np.diff(mp) != nao**2).any() or (np.diff(op) != nao).any():
        raise bad("mat_ptr / orb_ptr do not step by nao^2 / nao")
    for key, shape in (("pos", (n_atoms, 3)), ("forces", (n_atoms, 3)), ("fock", (int(mp[-1]),)),
                       ("overlap", (int(mp[-1]),)), ("mo_energy", (int(op[-1]),))):
        if a[key].shape != shape:
            raise bad(f"{key}.npy has shape {a[key].shape}, expected {shape}")
    z = np.asarray(a["numbers"])
    if z.size and (z.min() < 1 or z.max() > 118):
        raise bad("numbers.npy holds atomic numbers outside 1..118")


class HamiltonianStore:
    """Random-access reader over a store directory (see module docstring). ``len``, ``store[i]``."""

    def __init__(self, root: str | os.PathLike):
        self.root = Path(root)
        index = self.root / "index.json"
        if not index.exists():
            raise DatasetError(
                f"no index.json in {self.root}", hint="create the store with `molequi data hamiltonian`"
            )
        try:
            self.meta = json.loads(index.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FormatError(f"not valid JSON ({exc})", source=str(index),
                              hint="the index is corrupt; rewrite the store with `molequi data hamiltonian`",
                              ) from None
        if not isinstance(self.meta, dict) or self.meta.get("format") != FORMAT:
            got = self.meta.get("format") if isinstance(self.meta, dict) else type(self.meta).__name__
            raise FormatError(f"format {got!r}, expected {FORMAT!r}", source=str(index))
        self.shards = self.meta.get("shards")
        ok = isinstance(self.shards, list) and isinstance(self.meta.get("basis"), str) \
            and isinstance(self.meta.get("xc"), str)
        for sh in self.shards if ok else ():
            ok = ok and isinstance(sh, dict) and isinstance(sh.get("name"), str) \
                and Path(sh["name"]).name == sh["name"] and sh["name"] not in ("", ".", "..") \
                and type(sh.get("count")) is int and 0 <= sh["count"] <= 10**9
        if not ok:
            raise FormatError("index.json needs 'basis', 'xc' and 'shards': [{'name': <folder>, 'count': n}]",
                              source=str(index), hint="the store's index is corrupt")
        counts = [s["count"] for s in self.shards]
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._cache: dict[int, dict[str, np.ndarray]] = {}

    @property
    def basis(self) -> str:
        return self.meta["basis"]

    @property
    def xc(self) -> str:
        return self.meta["xc"]

    def __len__(self) -> int:
        return int(self._starts[-1])

    def _shard(self, s: int) -> dict[str, np.ndarray]:
        if s not in self._cache:
            d = self.root / self.shards[s]["name"]
            arrays = {}
            for key in _SHARD_ARRAYS:
                f = d / f"{key}.npy"
                try:
                    arrays[key] = np.load(f, mmap_mode="r", allow_pickle=False)
                except FileNotFoundError:
                    raise FormatError("shard file missing", source=str(f),
                                      hint="the store is incomplete; rewrite it") from None
                except Exception as exc:  # noqa: BLE001 - numpy's header parser fails in many ways
                    # (ValueError, SyntaxError, tokenize.TokenError, EOFError ...); no pickles: nothing ran
                    raise FormatError(f"not a readable .npy ({type(exc).__name__}: {exc})", source=str(f),
                                      hint="the shard is corrupt; rewrite the store") from None
            _check_shard(arrays, int(self.shards[s]["count"]), d)
            self._cache[s] = arrays
        return self._cache[s]

    def __getitem__(self, i: int) -> HamiltonianRecord:
        n = len(self)
        if not -n <= i < n:
            raise IndexError(f"record {i} out of range for a store of {n}")
        i %= n
        s = int(np.searchsorted(self._starts, i, side="right") - 1)
        j = i - int(self._starts[s])
        a = self._shard(s)
        a0, a1 = int(a["atom_ptr"][j]), int(a["atom_ptr"][j + 1])
        m0, m1 = int(a["mat_ptr"][j]), int(a["mat_ptr"][j + 1])
        o0, o1 = int(a["orb_ptr"][j]), int(a["orb_ptr"][j + 1])
        nao = int(a["nao"][j])
        fock = np.array(a["fock"][m0:m1]).reshape(nao, nao)
        overlap = np.array(a["overlap"][m0:m1]).reshape(nao, nao)
        pos = np.array(a["pos"][a0:a1])
        if not (np.isfinite(fock).all() and np.isfinite(overlap).all() and np.isfinite(pos).all()):
            raise FormatError(f"record {j} holds NaN or inf in its Fock / overlap matrix or positions",
                              source=str(self.root / self.shards[s]["name"]), frame=i,
                              hint="the shard is corrupt; rewrite the store")
        return HamiltonianRecord(
            numbers=np.array(a["numbers"][a0:a1]),
            pos=pos,
            forces=np.array(a["forces"][a0:a1]),
            fock=fock,
            overlap=overlap,
            mo_energy=np.array(a["mo_energy"][o0:o1]),
            energy=float(a["energy"][j]),
            n_elec=int(a["n_elec"][j]),
        )

    def __iter__(self):
        for i in range(len(self)):
            yield self[i]

    def split(self) -> dict[str, list[int]] | None:
        """The store's saved train/valid/test record indices (``split.json``), or None if it has none.

        FormatError if the file is not disjoint lists of in-range indices named train, valid, test."""
        path = self.root / SPLIT_FILE
        if not path.exists():
            return None
        try:
            raw = json.loads(path.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise FormatError(f"not valid JSON ({exc})", source=str(path),
                              hint="rewrite it with molequi.data.hamiltonian.write_split") from None
        ok = isinstance(raw, dict) and all(
            isinstance(raw.get(k), list) and all(type(i) is int and 0 <= i < len(self) for i in raw[k])
            for k in SPLIT_NAMES)
        if ok:
            seen = [i for k in SPLIT_NAMES for i in raw[k]]
            ok = len(seen) == len(set(seen))
        if not ok:
            raise FormatError(f"needs disjoint lists 'train', 'valid', 'test' of record indices in "
                              f"[0, {len(self)})", source=str(path),
                              hint="rewrite it with molequi.data.hamiltonian.write_split")
        return {k: list(raw[k]) for k in SPLIT_NAMES}


class HamiltonianStoreWriter:
    """Append records, flushed into shards of ``shard_size`` records, each written atomically."""

    def __init__(
        self,
        root: str | os.PathLike,
        *,
        basis: str,
        xc: str,
        shard_size: int = 100,
        extra_meta: dict | None = None,
        overwrite: bool = False,
    ):
        self.root = Path(root)
        if (self.root / "index.json").exists() and not overwrite:
            raise DatasetError(
                f"{self.root} already holds a store", hint="choose another --out or pass --overwrite"
            )
        if overwrite and self.root.exists():
            for p in self.root.glob("shard_*"):
                shutil.rmtree(p)
        self.root.mkdir(parents=True, exist_ok=True)
        self.meta = {
            "format": FORMAT,
            "basis": basis,
            "xc": xc,
            "units": {
                "fock": "Hartree",
                "overlap": "1",
                "energy": "Hartree",
                "forces": "Hartree/Bohr",
                "pos": "Angstrom",
                "mo_energy": "Hartree",
            },
            "ao_order": "pyscf",
            "shards": [],
            **(extra_meta or {}),
        }
        self.shard_size = int(shard_size)
        self._buffer: list[HamiltonianRecord] = []
        self._write_index()

    def append(self, rec: HamiltonianRecord) -> None:
        self._buffer.append(rec)
        if len(self._buffer) >= self.shard_size:
            self.flush()

    def extend(self, recs: Iterable[HamiltonianRecord]) -> None:
        for r in recs:
            self.append(r)

    def flush(self) -> None:
        if not self._buffer:
            return
        recs, self._buffer = self._buffer, []
        name = f"shard_{len(self.meta['shards']):05d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=self.root))
        natoms = [len(r.numbers) for r in recs]
        naos = [r.nao for r in recs]
        arrays = {
            "numbers": np.concatenate([r.numbers for r in recs]),
            "pos": np.concatenate([r.pos for r in recs]),
            "forces": np.concatenate([r.forces for r in recs]),
            "atom_ptr": np.concatenate([[0], np.cumsum(natoms)]).astype(np.int64),
            "nao": np.asarray(naos, dtype=np.int64),
            "mat_ptr": np.concatenate([[0], np.cumsum(np.square(naos))]).astype(np.int64),
            "orb_ptr": np.concatenate([[0], np.cumsum(naos)]).astype(np.int64),
            "fock": np.concatenate([r.fock.reshape(-1) for r in recs]),
            "overlap": np.concatenate([r.overlap.reshape(-1) for r in recs]),
            "mo_energy": np.concatenate([r.mo_energy for r in recs]),
            "energy": np.asarray([r.energy for r in recs], dtype=np.float64),
            "n_elec": np.asarray([r.n_elec for r in recs], dtype=np.int64),
        }
        for k, v in arrays.items():
            np.save(tmp / f"{k}.npy", v)
        os.replace(tmp, self.root / name)
        self.meta["shards"].append({"name": name, "count": len(recs)})
        self._write_index()

    def close(self) -> None:
        self.flush()
        self._write_index()  # metadata set after the last flush (timings) must reach index.json too

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _write_index(self) -> None:
        self.meta["n_records"] = int(sum(s["count"] for s in self.meta["shards"]))
        atomic_write_text(self.root / "index.json", json.dumps(self.meta, indent=1))


def write_store(
    root,
    records: Iterable[HamiltonianRecord],
    *,
    basis: str,
    xc: str,
    shard_size: int = 100,
    overwrite: bool = False,
    extra_meta: dict | None = None,
) -> Path:
    with HamiltonianStoreWriter(
        root, basis=basis, xc=xc, shard_size=shard_size, overwrite=overwrite, extra_meta=extra_meta
    ) as w:
        w.extend(records)
    return Path(root)


def random_split(n: int, n_valid: int, n_test: int, seed: int = 0) -> dict[str, list[int]]:
    """A random partition of ``range(n)``: ``n_valid`` validation, ``n_test`` test, the rest training
    indices, each list sorted; the permutation is ``numpy.random.default_rng(seed).permutation(n)``."""
    if n_valid < 0 or n_test < 0 or n_valid + n_test >= n:
        raise DatasetError(f"cannot take {n_valid} validation and {n_test} test records out of {n} "
                           "and keep some for training", hint="lower the validation / test counts")
    perm = np.random.default_rng(seed).permutation(n)
    parts = {"valid": perm[:n_valid], "test": perm[n_valid : n_valid + n_test],
             "train": perm[n_valid + n_test :]}
    return {k: sorted(int(i) for i in parts[k]) for k in SPLIT_NAMES}


def write_split(root, split: dict[str, list[int]], **meta) -> Path:
    """Save ``split`` (train/valid/test index lists) as ``root/split.json`` (atomically), with ``meta``
    (e.g. the seed); ``HamiltonianStore(root).split()`` reads and checks it."""
    path = Path(root) / SPLIT_FILE
    atomic_write_text(path, json.dumps({**meta, **{k: list(map(int, split[k])) for k in SPLIT_NAMES}}))
    HamiltonianStore(root).split()  # refuse to leave an inconsistent file behind silently
    return path


__all__ = ["FORMAT", "HamiltonianStore", "HamiltonianStoreWriter", "write_store", "random_split",
           "write_split"]
