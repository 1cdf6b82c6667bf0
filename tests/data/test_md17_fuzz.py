"""Fuzz the MD17 readers (sGDML xyz, sGDML/rMD17 npz): any input loads usable records or raises a named
molequi error that names the file. Derandomised; counts in ``fuzz_helpers.MIN_EXAMPLES``."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from fuzz_helpers import FUZZ, mutated, scratch_dir
from hypothesis import given
from hypothesis import strategies as st

from molequi.data.md17 import read_md17_xyz, read_rmd17_npz
from molequi.errors import MolequiError

DATA = Path(__file__).resolve().parents[2] / "data" / "md17"
XYZ_SEED = "\n".join((DATA / "ethanol_snip.xyz").read_text().splitlines()[:22]).encode() + b"\n"  # 2 frames
with np.load(DATA / "rmd17_ethanol_train_01.npz") as _z:
    NPZ_ARRAYS = {k: _z[k][:3] if _z[k].ndim and _z[k].shape[0] == 1000 else _z[k]
                  for k in ("nuclear_charges", "coords", "energies", "forces")}
_buf = io.BytesIO()
np.savez(_buf, **NPZ_ARRAYS)
NPZ_SEED = _buf.getvalue()
TMP = scratch_dir("molequi-md17-fuzz-")


def _check(reader, path: Path, payload: bytes) -> None:
    path.write_bytes(payload)
    try:
        records = reader(path)
    except MolequiError as exc:
        assert str(path) in str(exc), exc
        return
    assert records
    n = records[0].pos.shape[0]
    for r in records:  # what loads is usable: finite, consistent shapes, real elements
        assert r.pos.shape == (n, 3) and r.forces.shape == (n, 3)
        assert np.isfinite(r.pos.numpy()).all() and np.isfinite(r.forces.numpy()).all()
        assert np.isfinite(float(r.energy))
        z = r.z.numpy() if hasattr(r, "z") else r.numbers.numpy()
        assert ((z >= 1) & (z <= 118)).all()


def test_seeds_load():
    """The unmutated seeds load: 2 xyz frames of ethanol, 3 npz frames (the fuzzers start from real files)."""
    (TMP / "seed.xyz").write_bytes(XYZ_SEED)
    (TMP / "seed.npz").write_bytes(NPZ_SEED)
    assert len(read_md17_xyz(TMP / "seed.xyz")) == 2
    assert len(read_rmd17_npz(TMP / "seed.npz")) == 3


@FUZZ
@given(mutated(XYZ_SEED))
def test_fuzz_md17_xyz(payload):
    _check(read_md17_xyz, TMP / "case.xyz", payload)


@FUZZ
@given(mutated(NPZ_SEED, tokens=[b"\x00" * 8, b"\xff" * 8, b"PK\x03\x04", b"\x93NUMPY"]))
def test_fuzz_md17_npz_bytes(payload):
    _check(read_rmd17_npz, TMP / "case_bytes.npz", payload)


def _array(draw, original: np.ndarray):
    """The original array, or one with a broken shape, dtype or value."""
    kind = draw(st.sampled_from(["keep", "drop", "nan", "inf", "shape", "scalar", "empty", "dtype", "huge"]))
    a = original.copy()
    if kind == "drop":
        return None
    if kind in ("nan", "inf") and a.size:
        a = a.astype(float)
        a.reshape(-1)[draw(st.integers(0, a.size - 1))] = np.nan if kind == "nan" else np.inf
    elif kind == "shape" and a.size:
        a = a.reshape(-1)[: draw(st.integers(0, a.size))]
    elif kind == "scalar":
        a = np.array(draw(st.floats(allow_nan=True, allow_infinity=True)))
    elif kind == "empty":
        a = np.zeros((0,) + a.shape[1:], dtype=a.dtype)
    elif kind == "dtype":
        a = np.array(["x"] * max(1, a.size)).reshape(a.shape if a.size else (1,))
    elif kind == "huge":
        a = np.full_like(a, draw(st.sampled_from([0, -1, 255, 10**6, 2**31])), dtype=np.int64)
    return a


@st.composite
def npz_arrays(draw):
    out = {}
    for key, original in NPZ_ARRAYS.items():
        a = _array(draw, original)
        if a is not None:
            out[draw(st.sampled_from([key, key, key, {"nuclear_charges": "z", "coords": "R", "energies": "E",
                                                       "forces": "F"}[key]]))] = a
    return out


@FUZZ
@given(npz_arrays())
def test_fuzz_md17_npz_arrays(arrays):
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    _check(read_rmd17_npz, TMP / "case_arrays.npz", buf.getvalue())


# ---- inputs the fuzzers above found crashing the readers, kept as named regressions
def _lines(edit) -> bytes:
    lines = XYZ_SEED.decode().splitlines()
    edit(lines)
    return ("\n".join(lines) + "\n").encode()


def _fails(reader, name: str, payload: bytes, match: str) -> str:
    path = TMP / name
    path.write_bytes(payload)
    try:
        reader(path)
    except MolequiError as exc:
        assert str(path) in str(exc) and match in str(exc), exc
        return str(exc)
    raise AssertionError(f"{name} loaded")


def test_binary_bytes_in_xyz():
    _fails(read_md17_xyz, "binary.xyz", b"\x80" + XYZ_SEED[1:], "not a text file")


def test_non_positive_atom_count():
    _fails(read_md17_xyz, "neg.xyz", _lines(lambda ls: ls.__setitem__(0, "-1")), "atom count")


def test_overflowing_coordinate_names_its_frame():
    """``-0.1e4005687`` parses to -inf; the frame finder inverted the mask before ``any`` and crashed."""
    message = _fails(read_md17_xyz, "inf.xyz",
                     _lines(lambda ls: ls.__setitem__(13, ls[13].replace("0.01091438", "0.1e4005687"))),
                     "positions contain NaN or inf")
    assert "frame 1" in message


def _npz(**changes) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **{**NPZ_ARRAYS, **changes})
    return buf.getvalue()


def test_npz_text_arrays():
    _fails(read_rmd17_npz, "text.npz", _npz(energies=np.array(["x"] * 3)), "energies are not numbers")


def test_npz_atomic_number_out_of_range():
    _fails(read_rmd17_npz, "z0.npz", _npz(nuclear_charges=np.zeros(9, dtype=np.uint8)), "atomic numbers")
    _fails(read_rmd17_npz, "z255.npz", _npz(nuclear_charges=np.full(9, 255, dtype=np.uint8)),
           "atomic numbers")


def test_npz_scalar_coordinates_and_no_frames():
    _fails(read_rmd17_npz, "scalar.npz", _npz(coords=np.array(1.0)), "positions have shape")
    _fails(read_rmd17_npz, "empty.npz", _npz(coords=np.zeros((0, 9, 3)), energies=np.zeros(0),
                                             forces=np.zeros((0, 9, 3))), "no frames")


def test_npz_zip_header_claims_encryption():
    """A flipped flag bit in the zip central directory made ``zipfile`` raise RuntimeError ("encrypted")."""
    data = bytearray(NPZ_SEED)
    at = data.find(b"PK\x01\x02")  # first central-directory entry; its general-purpose flags are at +8
    data[at + 8] |= 1
    _fails(read_rmd17_npz, "encrypted.npz", bytes(data), "cannot read the npz")
