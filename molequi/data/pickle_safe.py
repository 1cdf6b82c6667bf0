"""A restricted unpickler for the pickled PyG ``Data`` objects stored in OC20/fairchem LMDB files.

``pickle.loads`` runs whatever callable a file names (``os.system`` via ``__reduce__``), so molequi never
calls it on a dataset file. ``safe_loads`` admits only the globals these files need:

- ``torch_geometric.data`` ``Data`` / storage classes (PyG 2 objects carry ``_store``; PyG 1.x objects are
  plain ``__dict__`` states, rebuilt by ``rebuild_pyg_data``),
- torch tensor rebuild functions and dtypes; ``torch.storage._load_from_bytes`` (which would run a full,
  unrestricted ``torch.load`` on the embedded bytes) is swapped for a direct parser of the legacy storage
  blob that checks every size against the bytes present,
- numpy array / dtype / scalar reconstruction, ``collections.OrderedDict`` and a few builtins.

Anything else raises ``UnsafePickleError`` (a ``FormatError``) before it is called.
"""

from __future__ import annotations

import io
import pickle
from typing import Any

import numpy as np
import torch

from molequi.errors import FormatError


class UnsafePickleError(FormatError):
    """A pickle names a global outside the allow-list; it was refused, nothing was executed."""


_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # torch.serialization.MAGIC_NUMBER of the legacy (non-zip) format
_STORAGE_DTYPES = {
    "FloatStorage": torch.float32,
    "DoubleStorage": torch.float64,
    "HalfStorage": torch.float16,
    "BFloat16Storage": torch.bfloat16,
    "LongStorage": torch.int64,
    "IntStorage": torch.int32,
    "ShortStorage": torch.int16,
    "CharStorage": torch.int8,
    "ByteStorage": torch.uint8,
    "BoolStorage": torch.bool,
    "ComplexFloatStorage": torch.complex64,
    "ComplexDoubleStorage": torch.complex128,
}


class _StorageHeader(pickle.Unpickler):
    """Unpickles the header of a legacy ``torch.save(storage)`` blob: storage classes only."""

    def find_class(self, module: str, name: str):
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        raise UnsafePickleError(f"refused global {module}.{name} inside a tensor storage")

    def persistent_load(self, pid):
        return pid


def _load_storage_from_bytes(b: bytes):
    """Replacement for ``torch.storage._load_from_bytes`` (which runs an unrestricted ``torch.load``).

    Parses the legacy ``torch.save(storage)`` blob these files hold (CPU, little endian) directly, with
    every size checked against the bytes present, so a corrupt entry can neither run code nor make us
    allocate more memory than the entry's own size. Other layouts raise ``ValueError`` (-> ``FormatError``).
    """
    f = io.BytesIO(b)
    if _StorageHeader(f).load() != _LEGACY_MAGIC or _StorageHeader(f).load() != 1001:
        raise ValueError("tensor storage is not in torch's legacy serialisation format")
    sys_info = _StorageHeader(f).load()
    if not isinstance(sys_info, dict) or not sys_info.get("little_endian", False):
        raise ValueError("big-endian tensor storage is not supported")
    pid = _StorageHeader(f).load()
    if not (
        isinstance(pid, tuple)
        and len(pid) >= 5
        and pid[0] == "storage"
        and isinstance(pid[1], torch.dtype)
        and pid[3] == "cpu"
        and isinstance(pid[4], int)
    ):
        raise ValueError(f"unexpected tensor storage header {str(pid)[:80]}")
    keys = _StorageHeader(f).load()
    if not isinstance(keys, list) or len(keys) != 1 or (len(pid) > 5 and pid[5] is not None):
        raise ValueError("tensor storage blob holds views or several storages")
    dtype, numel = pid[1], pid[4]
    stored = int.from_bytes(f.read(8), "little", signed=True)
    itemsize = torch.empty((), dtype=dtype).element_size()
    if stored != numel or stored < 0 or stored * itemsize != len(b) - f.tell():
        raise ValueError(
            f"tensor storage says {stored} elements of {itemsize} bytes, blob holds {len(b) - f.tell()}"
        )
    if stored == 0:
        flat = torch.empty(0, dtype=dtype)
    else:
        flat = torch.from_numpy(np.frombuffer(b, dtype=np.uint8, offset=f.tell()).copy()).view(dtype)
    return torch.storage.TypedStorage(wrap_storage=flat.untyped_storage(), dtype=dtype, _internal=True)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding not in ("latin1", "latin-1"):
        raise UnsafePickleError(f"refused codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _empty_bytes(*args) -> bytes:
    """``bytes()`` as protocol 2 spells ``b""`` (e.g. the data of an empty numpy array). Only the empty
    call is admitted: ``bytes(n)`` would allocate ``n`` bytes from a number in the file."""
    if args:
        raise UnsafePickleError(f"refused bytes(...) with arguments {type(args[0]).__name__}")
    return b""


def _allowed() -> dict[tuple[str, str], Any]:
    import collections
    import copyreg

    import numpy as np
    from torch_geometric.data import data as pyg_data
    from torch_geometric.data import storage as pyg_storage

    table: dict[tuple[str, str], Any] = {
        ("torch_geometric.data.data", "Data"): pyg_data.Data,
        ("torch_geometric.data.data", "DataEdgeAttr"): pyg_data.DataEdgeAttr,
        ("torch_geometric.data.data", "DataTensorAttr"): pyg_data.DataTensorAttr,
        ("torch._utils", "_rebuild_tensor"): torch._utils._rebuild_tensor,
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch._utils", "_rebuild_parameter"): torch._utils._rebuild_parameter,
        ("torch.storage", "_load_from_bytes"): _load_storage_from_bytes,
        ("torch", "Size"): torch.Size,
        ("collections", "OrderedDict"): collections.OrderedDict,
        ("copyreg", "_reconstructor"): copyreg._reconstructor,
        ("copy_reg", "_reconstructor"): copyreg._reconstructor,  # protocol 0/1 spelling
        ("__builtin__", "object"): object,
        ("_codecs", "encode"): _latin1_encode,  # protocol 0/1 write bytes as codecs.encode(str, "latin1")
        ("builtins", "object"): object,
        ("builtins", "set"): set,
        ("builtins", "frozenset"): frozenset,
        ("builtins", "slice"): slice,
        ("builtins", "complex"): complex,
        ("builtins", "bytes"): _empty_bytes,
        ("__builtin__", "bytes"): _empty_bytes,
    }
    for name in ("GlobalStorage", "NodeStorage", "EdgeStorage", "BaseStorage"):
        table[("torch_geometric.data.storage", name)] = getattr(pyg_storage, name)
    for name in (
        "float16",
        "bfloat16",
        "float32",
        "float64",
        "complex64",
        "complex128",
        "uint8",
        "int8",
        "int16",
        "int32",
        "int64",
        "bool",
    ):
        table[("torch", name)] = getattr(torch, name)
    core = np._core if hasattr(np, "_core") else np.core
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        table[(mod, "_reconstruct")] = core.multiarray._reconstruct
        table[(mod, "scalar")] = core.multiarray.scalar
    for mod in ("numpy.core.numeric", "numpy._core.numeric"):  # protocol 5 arrays
        table[(mod, "_frombuffer")] = core.numeric._frombuffer
    table[("numpy", "ndarray")] = np.ndarray
    table[("numpy", "dtype")] = np.dtype
    for name in (
        "Float64DType",
        "Float32DType",
        "Int64DType",
        "Int32DType",
        "UInt8DType",
        "BoolDType",
        "Int8DType",
        "Int16DType",
        "Float16DType",
    ):
        if hasattr(np.dtypes, name):
            table[("numpy.dtypes", name)] = getattr(np.dtypes, name)
    return table


_TABLE: dict[tuple[str, str], Any] | None = None


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` whose ``find_class`` only returns allow-listed globals."""

    def __init__(self, file, *, source: str | None = None, frame: int | None = None):
        super().__init__(file)
        self.source, self.frame = source, frame

    def find_class(self, module: str, name: str):
        global _TABLE
        if _TABLE is None:
            _TABLE = _allowed()
        try:
            return _TABLE[(module, name)]
        except KeyError:
            raise UnsafePickleError(
                f"refused to unpickle global {module}.{name}: not a class these dataset files "
                "need (nothing was executed)",
                source=self.source,
                frame=self.frame,
                hint="the file is not an OC20/fairchem LMDB, or it was tampered with",
            ) from None

    def persistent_load(self, pid):
        raise UnsafePickleError("persistent ids are not allowed", source=self.source, frame=self.frame)


def safe_loads(data: bytes, *, source: str | None = None, frame: int | None = None) -> Any:
    """Unpickle ``data`` with ``RestrictedUnpickler``; corrupt bytes raise ``FormatError``."""
    try:
        return RestrictedUnpickler(io.BytesIO(data), source=source, frame=frame).load()
    except UnsafePickleError as exc:
        if exc.source is None and source is not None:  # raised inside a nested tensor blob: add where
            raise UnsafePickleError(str(exc), source=source, frame=frame) from None
        raise
    except Exception as exc:  # noqa: BLE001 - malformed bytes fail in many ways; nothing ran
        raise FormatError(
            f"cannot unpickle the entry ({type(exc).__name__}: {exc})",
            source=source,
            frame=frame,
            hint="the value is truncated or not a pickled PyG Data",
        ) from None


def rebuild_pyg_data(obj: Any):
    """Return a working PyG ``Data``: PyG 2 objects unchanged, PyG 1.x objects (no ``_store``) rebuilt
    from their ``__dict__`` (``__num_nodes__`` becomes ``num_nodes``)."""
    from torch_geometric.data import Data

    if not isinstance(obj, Data):
        return obj
    state = obj.__dict__
    if "_store" in state:
        return obj
    fields = {k: v for k, v in state.items() if v is not None and not k.startswith("_")}
    d = Data(**fields)
    if state.get("__num_nodes__") is not None:
        d.num_nodes = int(state["__num_nodes__"])
    return d


__all__ = ["RestrictedUnpickler", "UnsafePickleError", "safe_loads", "rebuild_pyg_data"]
