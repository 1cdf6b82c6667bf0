"""Fuzz the Hamiltonian store reader (``molequi.data.hamiltonian.HamiltonianStore``): a store whose
``index.json`` or shard arrays are corrupted either reads usable records or raises a named molequi error
naming the file. Derandomised; ``fuzz_helpers.MIN_EXAMPLES`` examples each."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import numpy as np
from fuzz_helpers import FUZZ, mutated, scratch_dir
from hypothesis import given
from hypothesis import strategies as st

from molequi.data.hamiltonian import HamiltonianStore
from molequi.data.hamiltonian.store import write_store
from molequi.errors import MolequiError

REAL = Path(__file__).resolve().parents[2] / "data" / "hamiltonian" / "water"  # PySCF PBE/def2-SVP labels
TMP = scratch_dir("molequi-hstore-fuzz-")
SEED = TMP / "seed"
write_store(SEED, [HamiltonianStore(REAL)[i] for i in range(3)], basis="def2-svp", xc="pbe", shard_size=2)
FILES = sorted(p.relative_to(SEED).as_posix() for p in SEED.rglob("*") if p.is_file())
CASE = TMP / "case"


def _reset(only: str | None = None) -> Path:
    """The case store equal to the seed again: all of it, or (cheaper) the one file ``only`` an example
    changed."""
    if only is not None and CASE.exists():
        shutil.copyfile(SEED / only, CASE / only)
        return CASE
    if CASE.exists():
        shutil.rmtree(CASE)
    shutil.copytree(SEED, CASE)
    return CASE


def _read_all(root: Path) -> None:
    try:
        store = HamiltonianStore(root)
        records = list(store)
    except MolequiError as exc:
        assert str(root) in str(exc), exc
        return
    for r in records:  # what loads is usable: consistent shapes, finite matrices and geometry
        n, nao = len(r.numbers), r.nao
        assert nao > 0 and r.fock.shape == r.overlap.shape == (nao, nao) and r.pos.shape == (n, 3)
        assert np.isfinite(r.fock).all() and np.isfinite(r.overlap).all() and np.isfinite(r.pos).all()
        assert ((r.numbers >= 1) & (r.numbers <= 118)).all()


def test_seed_store_reads():
    store = HamiltonianStore(_reset())
    assert len(store) == 3 and store[2].nao == 24
    assert np.array_equal(store[1].fock, HamiltonianStore(REAL)[1].fock)


@FUZZ
@given(st.sampled_from(FILES), st.data())
def test_fuzz_store_bytes(name, data):
    """One file of the store (index.json or a shard's .npy) with random byte edits."""
    root = _reset(name)
    (root / name).write_bytes(data.draw(mutated((SEED / name).read_bytes())))
    _read_all(root)


def _broken(draw, a: np.ndarray) -> np.ndarray:
    kind = draw(st.sampled_from(["shape", "scalar", "empty", "dtype", "value", "nan", "2d"]))
    if kind == "shape":
        return a.reshape(-1)[: draw(st.integers(0, max(0, a.size - 1)))]
    if kind == "scalar":
        return np.asarray(draw(st.integers(-5, 10**6)))
    if kind == "empty":
        return a.reshape(-1)[:0]
    if kind == "dtype":
        return np.asarray(["x"] * max(1, a.size))
    if kind == "2d":
        return a.reshape(1, -1)
    b = a.astype(float).copy() if kind == "nan" else a.copy()
    if b.size:
        at = draw(st.integers(0, b.size - 1))
        b.reshape(-1)[at] = np.nan if kind == "nan" else draw(st.sampled_from([-1, 0, 10**9, 2**62, 7]))
    return b


@FUZZ
@given(st.sampled_from([f for f in FILES if f.endswith(".npy")]), st.data())
def test_fuzz_store_arrays(name, data):
    """One shard array replaced by one of a wrong shape, dtype or value (pointers out of range, NaN, ...)."""
    root = _reset(name)
    buf = io.BytesIO()
    np.save(buf, _broken(data.draw, np.load(SEED / name)))
    (root / name).write_bytes(buf.getvalue())
    _read_all(root)


@FUZZ
@given(st.sampled_from(["format", "basis", "xc", "shards", "name", "count"]),
       st.sampled_from([None, -1, 0, 10**12, "x", [], {}, [{"name": "shard_00000"}], "../seed"]))
def test_fuzz_store_index_values(key, value):
    import json

    root = _reset("index.json")
    meta = json.loads((root / "index.json").read_text())
    if key in ("name", "count"):
        meta["shards"][0][key] = value
    else:
        meta[key] = value
    (root / "index.json").write_text(json.dumps(meta))
    _read_all(root)


# ---- inputs the fuzzers above found crashing the reader (before the checks of the index and shards)
def _fails(edit, match: str) -> None:
    root = _reset()
    edit(root)
    try:
        list(HamiltonianStore(root))
    except MolequiError as exc:
        assert str(root) in str(exc) and match in str(exc), exc
        return
    finally:
        _reset()  # whole store again: the fuzzers above restore only the file they change
    raise AssertionError("the corrupted store loaded")


def _save(root: Path, name: str, array) -> None:
    np.save(root / name, np.asarray(array))


def test_index_not_json():
    _fails(lambda r: (r / "index.json").write_bytes(b"{\x80"), "not valid JSON")


def test_shard_name_leaving_the_store():
    def edit(root):
        text = (root / "index.json").read_text().replace('"shard_00000"', '"../seed/shard_00000"')
        (root / "index.json").write_text(text)
    _fails(edit, "index.json needs")


def test_npy_header_that_numpy_cannot_tokenize():
    """A cut dict in the .npy header raised tokenize.TokenError from inside numpy."""
    header = b"\x93NUMPY\x01\x00v\x00\x00'descr': '<i8', 'fortran_order': False, 'shape': (3,), }" + b" " * 60
    _fails(lambda r: (r / "shard_00000" / "atom_ptr.npy").write_bytes(header + b"\n" + b"\x00" * 24),
           "not a readable .npy")


def test_pointer_past_the_arrays():
    _fails(lambda r: _save(r, "shard_00000/atom_ptr.npy", [0, 3, 10**9]), "atom_ptr / nao")
    _fails(lambda r: _save(r, "shard_00000/nao.npy", [24, 0]), "atom_ptr / nao")


def test_nan_in_a_fock_matrix_names_the_record():
    def edit(root):
        fock = np.load(SEED / "shard_00001" / "fock.npy").copy()
        fock[5] = np.nan
        _save(root, "shard_00001/fock.npy", fock)
    _fails(edit, "frame 2: record 0 holds NaN")
