"""Fuzz the text parsers of the benchmark formats: any input either parses or raises a named FormatError."""

from __future__ import annotations

from pathlib import Path

from fuzz_helpers import FUZZ
from hypothesis import given, settings
from hypothesis import strategies as st

from molequi.data import oc20, qm9
from molequi.errors import MolequiError

METHANE = (
    Path(__file__).resolve().parents[2] / "data" / "qm9" / "crescendo" / "dsgdb9nsd_000001.xyz"
).read_text()


@settings(FUZZ)
@given(cut=st.integers(0, len(METHANE)), junk=st.text(alphabet="0123456789.-eE*^ \t\nCHgdb", max_size=30))
def test_qm9_parser_cut_or_corrupted(cut, junk):
    text = METHANE[:cut] + junk + METHANE[cut + len(junk) :]
    try:
        mols = qm9.parse_qm9_xyz(text, source="fuzz.xyz")
    except MolequiError as exc:
        assert "fuzz.xyz" in str(exc)
        return
    for m in mols:
        assert m.positions.shape == (len(m.numbers), 3)


@settings(FUZZ)
@given(lines=st.lists(st.text(alphabet="random,frame0123456789.-e", max_size=25), max_size=5))
def test_s2ef_txt_parser(tmp_path_factory, lines):
    path = tmp_path_factory.mktemp("txt") / "f.txt"
    path.write_text("\n".join(lines))
    try:
        refs = oc20.read_s2ef_txt(path)
    except MolequiError as exc:
        assert "f.txt" in str(exc)
        return
    assert all(isinstance(r.sid, int) for r in refs)


def _real_entry() -> bytes:
    from molequi.data.lmdb import _open_env  # the process-wide env (lmdb allows one per file and process)

    path = Path(__file__).resolve().parents[2] / "data" / "oc20" / "oc20_real.lmdb"
    with _open_env(path).begin() as txn:
        return bytes(txn.get(b"0"))


REAL_ENTRY = None


@settings(FUZZ)
@given(pos=st.integers(0, 10_000), junk=st.binary(min_size=1, max_size=16), cut=st.booleans())
def test_restricted_unpickler_on_mutated_entries(pos, junk, cut):
    """Mutated or cut LMDB values give a named error (or a value), never another exception type."""
    from molequi.data.pickle_safe import safe_loads

    global REAL_ENTRY
    if REAL_ENTRY is None:
        REAL_ENTRY = _real_entry()
    pos = pos % len(REAL_ENTRY)
    data = REAL_ENTRY[:pos] if cut else REAL_ENTRY[:pos] + junk + REAL_ENTRY[pos + len(junk) :]
    try:
        safe_loads(data, source="fuzz.lmdb", frame=0)
    except MolequiError as exc:
        assert "fuzz.lmdb" in str(exc)
