"""Fuzz the restricted unpickler (``molequi.data.pickle_safe.safe_loads``) that reads upstream pickles.

Two properties, each over ``fuzz_helpers.MIN_EXAMPLES`` derandomised examples:
- every value an allowed pickle can hold (nested containers, numpy arrays, torch tensors, PyG ``Data``) at
  every protocol round-trips exactly;
- any opcode stream built from allowed and forbidden globals (``builtins.open`` of a marker file,
  ``os.system``, ``builtins.eval`` ...), random arguments and random bytes either loads or raises a named
  molequi error, and the marker file is never created (nothing outside the allow-list runs).
"""

from __future__ import annotations

import pickle

import numpy as np
import torch
from fuzz_helpers import FUZZ, scratch_dir
from hypothesis import given
from hypothesis import strategies as st
from torch_geometric.data import Data

from molequi.data.pickle_safe import safe_loads
from molequi.errors import MolequiError

TMP = scratch_dir("molequi-pickle-fuzz-")
MARKER = TMP / "executed"

_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70),
                     st.floats(allow_nan=False), st.text(max_size=8), st.binary(max_size=8))
_arrays = st.builds(lambda v, dt: np.asarray(v).astype(dt), st.lists(st.floats(0, 200), max_size=6),
                    st.sampled_from(["float64", "float32", "int64", "int32", "uint8"]))
_tensors = _arrays.map(torch.from_numpy)
_leaves = st.one_of(_scalars, _arrays, _tensors)
VALUES = st.recursive(_leaves, lambda inner: st.one_of(
    st.lists(inner, max_size=4), st.tuples(inner, inner),
    st.dictionaries(st.text(max_size=5), inner, max_size=4)), max_leaves=12)


def _equal(a, b) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, np.ndarray):
        return isinstance(b, np.ndarray) and a.dtype == b.dtype and np.array_equal(a, b)
    if isinstance(a, list | tuple):
        return type(a) is type(b) and len(a) == len(b) and all(_equal(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@FUZZ
@given(VALUES, st.integers(2, 5), st.booleans())
def test_allowed_values_round_trip(value, protocol, as_data):
    if as_data:  # the OC20 case: a PyG Data holding tensors
        data = Data(pos=torch.as_tensor(np.arange(6.0).reshape(2, 3)), extra=value)  # PyG drops a None
        back = safe_loads(pickle.dumps(data, protocol=protocol), source="rt.lmdb", frame=0)
        assert torch.equal(back.pos, data.pos) and _equal(value, getattr(back, "extra", None))
        return
    assert _equal(value, safe_loads(pickle.dumps(value, protocol=protocol), source="rt.lmdb", frame=0))


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


FORBIDDEN = [_global("builtins", "open"), _global("__builtin__", "open"), _global("io", "open"),
             _global("os", "system"), _global("builtins", "eval"), _global("builtins", "exec"),
             _global("subprocess", "Popen"), _global("torch", "load"), _global("numpy", "load"),
             _global("pickle", "loads"), _global("torch.storage", "_load_from_bytes_original")]
ALLOWED = [_global("numpy", "ndarray"), _global("numpy", "dtype"), _global("torch", "Size"),
           _global("torch._utils", "_rebuild_tensor_v2"), _global("torch.storage", "_load_from_bytes"),
           _global("collections", "OrderedDict"), _global("copyreg", "_reconstructor"),
           _global("builtins", "set"), _global("builtins", "slice"), _global("builtins", "complex"),
           _global("_codecs", "encode"), _global("torch_geometric.data.data", "Data"),
           _global("builtins", "bytes"), _global("__builtin__", "bytes")]
MARKER_ARGS = b"(V" + str(MARKER).encode() + b"\nVw\ntR"  # (path, "w") then call: open(MARKER, "w")
FRAGMENTS = [b"(", b")", b"t", b"R", b"l", b"d", b"s", b"a", b"b", b"0", b"2", b"N", b"\x88", b"\x89",
             b"I0\n", b"I-1\n", b"I99999999999\n", b"F1e308\n", b"Vlatin1\n", b"Vx\n", b"U\x03abc",
             b"C\x04\x00\x00\x00\xff", b"K\x05", b"J\xff\xff\xff\x7f", b"}", b"]", b"\x93", b"\x94", b"h\x00",
             b"\x85", b"\x86", b"\x87", b"q\x00", b"\x81", b"o", b"i", b"c", MARKER_ARGS]


@st.composite
def opcode_streams(draw) -> bytes:
    parts = [b"\x80" + bytes([draw(st.integers(0, 5))])] if draw(st.booleans()) else []
    for _ in range(draw(st.integers(1, 14))):
        kind = draw(st.sampled_from(["forbidden", "allowed", "fragment", "fragment", "bytes"]))
        if kind == "forbidden":
            parts.append(draw(st.sampled_from(FORBIDDEN)) + MARKER_ARGS)
        elif kind == "allowed":
            parts.append(draw(st.sampled_from(ALLOWED)))
        elif kind == "fragment":
            parts.append(draw(st.sampled_from(FRAGMENTS)))
        else:
            parts.append(draw(st.binary(min_size=1, max_size=6)))
    return b"".join(parts) + (b"." if draw(st.booleans()) else b"")


def test_the_marker_payload_really_executes_unrestricted():
    """The evil fragment is live: plain pickle creates the marker, so its absence below means something."""
    pickle.loads(_global("builtins", "open") + MARKER_ARGS + b".")
    assert MARKER.exists()
    MARKER.unlink()


@FUZZ
@given(opcode_streams())
def test_opcode_streams_run_nothing(stream):
    try:
        safe_loads(stream, source="fuzz.lmdb", frame=3)
    except MolequiError as exc:
        assert "fuzz.lmdb" in str(exc) and "frame 3" in str(exc), exc
    assert not MARKER.exists()


def test_empty_numpy_array_at_protocol_2():
    """Found by the round trip above: protocol 2 writes an empty array's data as ``__builtin__.bytes()``,
    which the allow-list refused; the empty call is admitted now, ``bytes(n)`` (an n-byte allocation
    named by the file) still is not."""
    value = {"fixed": np.zeros(0, dtype=np.int64), "pos": np.zeros((0, 3))}
    back = safe_loads(pickle.dumps(value, protocol=2), source="empty.lmdb", frame=0)
    assert _equal(value, back)
    try:
        safe_loads(_global("builtins", "bytes") + b"(I100000000000\ntR.", source="bomb.lmdb", frame=1)
    except MolequiError as exc:
        assert "bomb.lmdb, frame 1" in str(exc) and "refused bytes" in str(exc)
    else:
        raise AssertionError("bytes(10**11) was called")
