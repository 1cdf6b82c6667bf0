"""OC20 / fairchem LMDB datasets: random access, lazy, memory flat with the dataset size, DDP-ready.

Layout (``docs/formats.md``): a file ``data.NNNN.lmdb`` opened with ``subdir=False``; keys
``str(i).encode("ascii")`` for i = 0..N-1 and optionally ``b"length"`` (a pickled int; without it the
entries are counted). Values are pickled PyG ``Data`` (PyG 2 with ``_store`` or PyG 1.x without), read
with ``molequi.data.pickle_safe.safe_loads`` only (never plain ``pickle.loads``).

``LmdbDataset`` is a map-style ``torch.utils.data.Dataset``: it holds only the shard paths and a cumulative
length array; each process (DataLoader worker, DDP rank) opens its own read-only environments on first
access, so the object pickles cheaply into workers. Any ``Sampler`` works, including
``torch.utils.data.DistributedSampler`` and the one Lightning injects with ``use_distributed_sampler=True``.

Records are returned in molequi's keys (``numbers``, ``pos``, ``cell``, ``pbc``, ``energy``, ``forces``)
with the
OC20 extras kept: ``tags`` (0 subsurface, 1 surface, 2 adsorbate), ``fixed`` (1 = fixed), ``sid``, ``fid``,
``natoms`` and, for IS2RE, ``y_init``, ``y_relaxed``, ``pos_relaxed``. Old target names ``y`` / ``force`` are
mapped to ``energy`` / ``forces``. Stored edges (``edge_index``, ``cell_offsets``) are dropped: the cutoff
is a model choice and graphs are built by ``molequi.graph``.

``write_lmdb`` writes fairchem's layout (``atomic_numbers``, ``pos``, ``cell``, ``energy``, ``forces``, ...)
plus ``b"length"`` into a temporary file and renames it into place.
"""

from __future__ import annotations

import os
import pickle
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset
from torch_geometric.data import Data

from molequi import keys as K
from molequi.data.pickle_safe import rebuild_pyg_data, safe_loads
from molequi.errors import DatasetError, FormatError

LMDB_MAGIC = b"\xde\xc0\xef\xbe"  # MDB_MAGIC 0xBEEFC0DE, little endian, at byte 16 of the meta page
LENGTH_KEY = b"length"
MAP_SIZE = 1 << 40  # address space only; the file grows with what is written (sparse on Linux)

# per-structure fields copied as they are; per-atom fields handled explicitly
_SCALARS = ("sid", "fid", "natoms", "y_init", "y_relaxed", "oc_id", "ref_energy")
_DROP = {
    "edge_index",
    "cell_offsets",
    "distances",
    "offsets",
    "neighbors",
    "atomic_numbers",
    "pos",
    "cell",
    "y",
    "energy",
    "force",
    "forces",
    "tags",
    "fixed",
    "pos_relaxed",
    "stress",
}


def is_lmdb_file(path: str | os.PathLike) -> bool:
    """True when ``path`` is a file with LMDB's meta-page magic number."""
    try:
        with open(path, "rb") as fh:
            head = fh.read(20)
    except OSError:
        return False
    return len(head) == 20 and head[16:20] == LMDB_MAGIC


def lmdb_shards(path: str | os.PathLike) -> list[Path]:
    """A ``.lmdb`` file, or every ``*.lmdb`` file of a folder (sorted, e.g. ``data.0000.lmdb`` ...)."""
    path = Path(path)
    if path.is_dir():
        shards = sorted(p for p in path.glob("*.lmdb") if p.is_file())
        if not shards:
            raise DatasetError(
                f"no *.lmdb files in {path}", hint="point at an LMDB file or a folder of shards"
            )
        return shards
    if not path.exists():
        raise DatasetError(f"{path} does not exist")
    return [path]


def check_lmdb_size(path: Path) -> None:
    """Refuse a truncated LMDB before it is memory-mapped (reading past the end of a mapping is SIGBUS).

    The two meta pages (offsets 0 and page size) hold, for 64-bit LMDB: the page size at byte 40
    (``mm_dbs[FREE_DBI].md_pad``), the last used page at byte 136 (``mm_last_pg``) and the transaction id at
    byte 144; the newer meta page says how long the file must be: ``(last_pg + 1) * page_size``.
    """
    import struct

    size = path.stat().st_size
    with open(path, "rb") as fh:
        first = fh.read(152)
        if len(first) < 152 or first[16:20] != LMDB_MAGIC:
            raise FormatError(
                "not an LMDB file (no LMDB magic number)",
                source=str(path),
                hint="expected a fairchem/OC20 data.NNNN.lmdb written with subdir=False",
            )
        psize = struct.unpack_from("<I", first, 40)[0]
        metas = [first]
        if psize >= 512 and size >= psize + 152:
            fh.seek(psize)
            second = fh.read(152)
            if second[16:20] == LMDB_MAGIC:
                metas.append(second)
    if psize < 512 or psize & (psize - 1):
        raise FormatError(f"implausible LMDB page size {psize}", source=str(path), hint="the file is corrupt")
    meta = max(metas, key=lambda m: struct.unpack_from("<Q", m, 144)[0])
    last_pg = struct.unpack_from("<Q", meta, 136)[0]
    need = (last_pg + 1) * psize
    if size < need:
        raise FormatError(
            f"LMDB truncated: {size} bytes on disk, its header needs {need}",
            source=str(path),
            hint="the copy or download was cut short; copy the file again",
        )


_ENVS: dict[tuple[int, str], Any] = {}  # (pid, real path) -> open read-only env; lmdb allows one per process


def _open_env(path: Path):
    """The process's read-only environment for ``path`` (opened once per process and shared)."""
    import lmdb

    pid = os.getpid()
    key = (pid, os.path.realpath(path))
    env = _ENVS.get(key)
    if env is not None:
        return env
    for inherited in [k for k in _ENVS if k[0] != pid]:  # forked worker: drop the parent's handles, open ours
        try:
            _ENVS.pop(inherited).close()
        except Exception:  # noqa: BLE001 - a handle the parent still owns; ours is opened below either way
            pass

    check_lmdb_size(path)
    try:
        env = lmdb.open(
            str(path), subdir=False, readonly=True, lock=False, readahead=False, meminit=False, max_readers=1
        )
    except lmdb.Error as exc:
        raise FormatError(
            f"cannot open the LMDB ({exc})",
            source=str(path),
            hint="the file is truncated or corrupt; copy it again",
        ) from None
    _ENVS[key] = env
    return env


def close_envs() -> None:
    """Close every environment this process opened (e.g. before rewriting a file)."""
    for key in [k for k in _ENVS if k[0] == os.getpid()]:
        _ENVS.pop(key).close()


def _shard_length(path: Path) -> int:
    import lmdb

    env = _open_env(path)
    try:
        with env.begin() as txn:
            raw = txn.get(LENGTH_KEY)
            if raw is not None:
                n = safe_loads(raw, source=str(path))
                if not isinstance(n, (int, np.integer)) or n < 0:
                    raise FormatError(f"'length' entry is {n!r}, not a count", source=str(path))
                n = int(n)
            else:
                n = env.stat()["entries"]
            if n and txn.get(str(n - 1).encode("ascii")) is None:
                raise FormatError(
                    f"key b'{n - 1}' is missing although the file holds {n} entries",
                    source=str(path),
                    hint="keys must be str(i) for i = 0..N-1 (fairchem layout)",
                )
    except lmdb.Error as exc:
        raise FormatError(
            f"cannot read the LMDB ({exc})",
            source=str(path),
            hint="the file is truncated or corrupt; copy it again",
        ) from None
    return n


def to_record(obj: Any, *, source: str | None = None, frame: int | None = None) -> Data:
    """A fairchem ``Data`` (old or new target names) -> molequi record (``molequi.keys``) + OC20 extras."""
    d = rebuild_pyg_data(obj)
    if not isinstance(d, Data):
        raise FormatError(f"entry is a {type(obj).__name__}, not a PyG Data", source=source, frame=frame)
    keys = set(d.keys())
    for need in ("atomic_numbers", "pos"):
        if need not in keys:
            from molequi.errors import MissingKeyError

            raise MissingKeyError(
                f"entry has no '{need}' (fields: {sorted(keys)})", source=source, frame=frame
            )
    out = Data()
    pos = torch.as_tensor(d.pos, dtype=torch.float32)
    n = pos.shape[0]
    out[K.NUMBERS] = torch.as_tensor(d.atomic_numbers).round().long().reshape(-1)
    out[K.POS] = pos
    cell = (
        torch.as_tensor(d.cell, dtype=torch.float32).reshape(1, 3, 3)
        if "cell" in keys
        else torch.zeros(1, 3, 3)
    )
    out[K.CELL] = cell
    out[K.PBC] = (cell.abs().sum(-1) > 0).reshape(1, 3)
    out.num_nodes = n
    energy = d.energy if "energy" in keys else (d.y if "y" in keys else None)
    if energy is not None:
        out[K.ENERGY] = torch.as_tensor(energy, dtype=torch.float32).reshape(1)
    forces = d.forces if "forces" in keys else (d.force if "force" in keys else None)
    if forces is not None:
        out[K.FORCES] = torch.as_tensor(forces, dtype=torch.float32).reshape(n, 3)
    if "stress" in keys:
        out[K.STRESS] = torch.as_tensor(d.stress, dtype=torch.float32).reshape(1, 3, 3)
    if "tags" in keys:
        out[K.TAGS] = torch.as_tensor(d.tags).long().reshape(n)
    if "fixed" in keys:
        out[K.FIXED] = torch.as_tensor(d.fixed).bool().reshape(n)
    if "pos_relaxed" in keys:
        out["pos_relaxed"] = torch.as_tensor(d.pos_relaxed, dtype=torch.float32).reshape(n, 3)
    for name in _SCALARS:
        if name in keys and d[name] is not None:
            v = torch.as_tensor(d[name])
            out[name] = v.to(torch.float32).reshape(1) if v.is_floating_point() else v.long().reshape(1)
    if out[K.NUMBERS].shape[0] != n:
        raise FormatError(
            f"{out[K.NUMBERS].shape[0]} atomic numbers for {n} positions", source=source, frame=frame
        )
    return out


class LmdbDataset(Dataset):
    """Random access over one LMDB file or a folder of shards; environments opened lazily per process.

    ``target``: ``"energy"`` (S2EF: ``energy``/``y``), or an IS2RE field such as ``"y_relaxed"`` copied into
    ``energy`` so that energy tasks train on it. ``transform`` is applied to each record.
    """

    lazy = True  # read on access: the trainer keeps it as it is and builds graphs per item

    def __init__(
        self, path: str | os.PathLike, *, target: str | None = None, transform=None, raw: bool = False
    ):
        self.path = Path(path)
        self.shards = lmdb_shards(path)
        lengths = [_shard_length(p) for p in self.shards]
        self._offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        self.target, self.transform, self.raw = target, transform, raw
        self._envs: list | None = None
        self._pid: int | None = None

    def __len__(self) -> int:
        return int(self._offsets[-1])

    def _env(self, shard: int):
        if self._envs is None or self._pid != os.getpid():  # a forked worker opens its own handles
            self._envs = [None] * len(self.shards)
            self._pid = os.getpid()
        if self._envs[shard] is None:
            self._envs[shard] = _open_env(self.shards[shard])
        return self._envs[shard]

    def locate(self, i: int) -> tuple[int, int]:
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {i} out of range for {n} entries")
        shard = int(np.searchsorted(self._offsets, i, side="right") - 1)
        return shard, int(i - self._offsets[shard])

    def get_raw(self, i: int) -> Data:
        """The stored object (restricted unpickling, PyG 1.x rebuilt), without conversion."""
        shard, local = self.locate(int(i))
        key = str(local).encode("ascii")
        with self._env(shard).begin(buffers=True) as txn:
            buf = txn.get(key)
            if buf is None:
                raise FormatError(
                    f"key {key!r} is missing",
                    source=str(self.shards[shard]),
                    frame=local,
                    hint="keys must be str(i) for i = 0..N-1",
                )
            raw = bytes(buf)
        return rebuild_pyg_data(safe_loads(raw, source=str(self.shards[shard]), frame=local))

    def __getitem__(self, i: int) -> Data:
        obj = self.get_raw(i)
        if self.raw:
            return obj
        shard, local = self.locate(int(i))
        d = to_record(obj, source=str(self.shards[shard]), frame=local)
        if self.target not in (None, "energy"):
            if self.target not in d:
                raise DatasetError(
                    f"entry has no target '{self.target}'",
                    source=str(self.shards[shard]),
                    frame=local,
                    hint=f"fields: {sorted(d.keys())}",
                )
            d[K.ENERGY] = d[self.target].to(torch.float32).reshape(1)
        return self.transform(d) if self.transform is not None else d

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_envs"], state["_pid"] = None, None  # lmdb handles never cross process boundaries
        return state

    def close(self) -> None:
        """Forget this dataset's handles (shared per process; ``close_envs`` closes them)."""
        self._envs = None


def fairchem_data(
    atoms_numbers: np.ndarray,
    positions: np.ndarray,
    cell: np.ndarray,
    *,
    energy: float | None,
    forces: np.ndarray | None,
    tags: np.ndarray | None,
    fixed: np.ndarray | None,
    sid: int | None = None,
    fid: int | None = None,
    extra: dict | None = None,
) -> Data:
    """A PyG ``Data`` in fairchem's S2EF layout (what ``write_lmdb`` stores)."""
    n = len(atoms_numbers)
    d = Data(
        pos=torch.as_tensor(np.asarray(positions), dtype=torch.float32),
        cell=torch.as_tensor(np.asarray(cell), dtype=torch.float32).reshape(1, 3, 3),
        atomic_numbers=torch.as_tensor(np.asarray(atoms_numbers), dtype=torch.float32),
        natoms=n,
        tags=torch.as_tensor(np.zeros(n) if tags is None else np.asarray(tags), dtype=torch.long),
        fixed=torch.as_tensor(np.zeros(n) if fixed is None else np.asarray(fixed), dtype=torch.float32),
    )
    if energy is not None:
        d.energy = float(energy)
    if forces is not None:
        d.forces = torch.as_tensor(np.asarray(forces), dtype=torch.float32)
    if sid is not None:
        d.sid = int(sid)
    if fid is not None:
        d.fid = int(fid)
    for k, v in (extra or {}).items():
        d[k] = v
    return d


def write_lmdb(items: Iterable[Data | bytes], path: str | os.PathLike, *, length_key: bool = True) -> int:
    """Write ``items`` (PyG ``Data`` or pickled bytes) under keys ``b"0"``, ``b"1"``, ... (+ ``b"length"``)
    into ``path`` atomically: a temporary file in the same folder, renamed when complete.

    Returns the number of items written.
    """
    import lmdb

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.unlink(tmp)
    n = 0
    env = lmdb.open(tmp, subdir=False, map_size=MAP_SIZE, meminit=False, map_async=True, lock=False)
    try:
        txn = env.begin(write=True)
        for item in items:
            value = item if isinstance(item, (bytes, bytearray)) else pickle.dumps(item, protocol=4)
            txn.put(str(n).encode("ascii"), value)
            n += 1
            if n % 5000 == 0:
                txn.commit()
                txn = env.begin(write=True)
        if length_key:
            txn.put(LENGTH_KEY, pickle.dumps(n, protocol=4))
        txn.commit()
        env.sync(True)
        env.close()
        os.replace(tmp, path)
    except BaseException:
        env.close()
        for p in (tmp, tmp + "-lock"):
            if os.path.exists(p):
                os.unlink(p)
        raise
    if os.path.exists(tmp + "-lock"):
        os.unlink(tmp + "-lock")
    return n


__all__ = [
    "LmdbDataset",
    "write_lmdb",
    "fairchem_data",
    "to_record",
    "is_lmdb_file",
    "lmdb_shards",
    "LMDB_MAGIC",
    "check_lmdb_size",
    "close_envs",
]
