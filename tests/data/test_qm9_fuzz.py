"""Fuzz the QM9 readers: xyz files, tarballs (plain and gzip), zips, SDF and its CSV. Any input loads usable
records or raises a named molequi error naming the file. Derandomised; ``fuzz_helpers.MIN_EXAMPLES`` each."""

from __future__ import annotations

import io
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from fuzz_helpers import FUZZ, mutated, scratch_dir
from hypothesis import given
from hypothesis import strategies as st

from molequi.data.qm9 import read_qm9_csv, read_qm9_sdf, read_qm9_xyz
from molequi.errors import MolequiError

DATA = Path(__file__).resolve().parents[2] / "data" / "qm9"
MEMBERS = {p.name: p.read_bytes() for p in sorted((DATA / "crescendo").glob("dsgdb9nsd_00000[127].xyz"))}
XYZ_SEED = MEMBERS["dsgdb9nsd_000001.xyz"] + MEMBERS["dsgdb9nsd_000007.xyz"]  # two full records, one file
SDF_TEXT = (DATA / "deepchem" / "qm9_mini.sdf").read_text()
SDF_SEED = ("$$$$\n".join(SDF_TEXT.split("$$$$\n")[:3]) + "$$$$\n").encode()  # gdb_1..3
CSV_SEED = ("\n".join((DATA / "deepchem" / "qm9_mini.sdf.csv").read_text().splitlines()[:4]) + "\n").encode()
TMP = scratch_dir("molequi-qm9-fuzz-")


def _tar(compress: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode=f"w:{compress}") as tar:
        for name, data in MEMBERS.items():
            info = tarfile.TarInfo(f"xyz/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in MEMBERS.items():
            z.writestr(f"xyz/{name}", data)
    return buf.getvalue()


TAR_SEED, TGZ_SEED, ZIP_SEED = _tar(), _tar("gz"), _zip()


def _usable(records) -> None:
    for r in records:
        n = r.numbers.shape[0]
        assert n > 0 and r.pos.shape == (n, 3) and np.isfinite(r.pos.numpy()).all()
        assert ((r.numbers >= 1) & (r.numbers <= 118)).all()
        if "y" in r:
            assert r.y.shape == (1, 19) and np.isfinite(r.y.numpy()).all()


def _check(read, path: Path, payload: bytes) -> None:
    path.write_bytes(payload)
    try:
        records = read(path)
    except MolequiError as exc:
        assert path.name in str(exc), exc
        return
    _usable(records)


def test_seeds_load():
    """The unmutated seeds load as the real records they are (3 molecules each, 2 for the joined xyz)."""
    for name, payload, n in (("seed.xyz", XYZ_SEED, 2), ("seed.tar", TAR_SEED, 3),
                             ("seed.tar.gz", TGZ_SEED, 3), ("seed.zip", ZIP_SEED, 3)):
        (TMP / name).write_bytes(payload)
        records = read_qm9_xyz(TMP / name)
        assert len(records) == n and "y" in records[0]
    (TMP / "seed.sdf").write_bytes(SDF_SEED)
    (TMP / "seed.sdf.csv").write_bytes(CSV_SEED)
    assert [int(r.y.shape[1]) for r in read_qm9_sdf(TMP / "seed.sdf")] == [19, 19, 19]


@pytest.mark.parametrize("name, seed", [("case.xyz", XYZ_SEED), ("case.tar", TAR_SEED),
                                        ("case.tar.gz", TGZ_SEED), ("case.zip", ZIP_SEED)])
@FUZZ
@given(data=st.data())
def test_fuzz_qm9_xyz_file_tar_zip(name, seed, data):
    _check(read_qm9_xyz, TMP / name, data.draw(mutated(seed)))


@FUZZ
@given(mutated(SDF_SEED))
def test_fuzz_qm9_sdf(payload):
    (TMP / "case.sdf.csv").write_bytes(CSV_SEED)
    _check(read_qm9_sdf, TMP / "case.sdf", payload)


@FUZZ
@given(mutated(CSV_SEED))
def test_fuzz_qm9_csv(payload):
    path = TMP / "case_csv.csv"
    path.write_bytes(payload)
    try:
        targets = read_qm9_csv(path)
    except MolequiError as exc:
        assert path.name in str(exc), exc
        return
    for index, y in targets.items():
        assert isinstance(index, int) and y.shape == (19,) and np.isfinite(y).all()


# ---- inputs the fuzzers above found crashing the readers (or loading unusable records), kept as regressions
def _fails(read, name: str, payload: bytes, match: str, **kw) -> None:
    path = TMP / name
    path.write_bytes(payload)
    try:
        read(path, **kw)
    except MolequiError as exc:
        assert name in str(exc) and match in str(exc), exc
        return
    raise AssertionError(f"{name} loaded")


def test_overflowing_property_is_refused():
    """``157.1e40070997`` parsed to inf and became target B; now the property line is refused."""
    _fails(read_qm9_xyz, "inf.xyz", XYZ_SEED.replace(b"157.70997", b"157.1e40070997", 1),
           "line 2: property B")


def test_gzip_cut_inside_its_header():
    _fails(read_qm9_xyz, "cut.tar.gz", b"\x1f\x8b\x08", "cannot read the tarball")


def test_member_not_utf8():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("dsgdb9nsd_000001.xyz")
        info.size = 4
        tar.addfile(info, io.BytesIO(b"\x805\n\n"))
    _fails(read_qm9_xyz, "latin.tar", buf.getvalue(), "dsgdb9nsd_000001.xyz: member is not text")


def test_zip_member_not_utf8_and_empty_zip():
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("dsgdb9nsd_000001.xyz", b"\x805\n\n")
    _fails(read_qm9_xyz, "latin.zip", buf.getvalue(), "member is not text")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("readme.txt", b"no molecules here")
    _fails(read_qm9_xyz, "empty.zip", buf.getvalue(), "no .xyz members")


def test_sdf_not_utf8_and_empty():
    (TMP / "latin.sdf.csv").write_bytes(CSV_SEED)
    _fails(read_qm9_sdf, "latin.sdf", b"\x80" + SDF_SEED, "not UTF-8")
    _fails(read_qm9_sdf, "empty.sdf", b"", "cannot open the SDF")


def test_csv_short_row_and_binary():
    short = CSV_SEED.decode().splitlines()
    short[2] = ",".join(short[2].split(",")[:12])
    _fails(read_qm9_csv, "short.csv", ("\n".join(short) + "\n").encode(),
           "line 3: expected gdb_<index> and 19")
    _fails(read_qm9_csv, "binary.csv", b"\x80" + CSV_SEED, "not a readable CSV")
    _fails(read_qm9_csv, "nan.csv", CSV_SEED.replace(b"157.7118", b"nan", 1), "line 2: NaN or inf")


def test_zip_equals_tarball():
    """A zip of the real ppqm tarball's members reads to the same molecules as the tarball itself."""
    tgz = DATA / "ppqm_first20.tar.gz"
    buf = io.BytesIO()
    with tarfile.open(tgz) as tar, zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for member in tar:
            if member.isfile():
                z.writestr(member.name, tar.extractfile(member).read())
    (TMP / "ppqm.zip").write_bytes(buf.getvalue())
    from_zip, from_tar = read_qm9_xyz(TMP / "ppqm.zip"), read_qm9_xyz(tgz)
    assert len(from_zip) == len(from_tar) == 20
    for a, b in zip(from_zip, from_tar):
        assert np.array_equal(a.numbers.numpy(), b.numbers.numpy())
        assert np.array_equal(a.pos.numpy(), b.pos.numpy())
