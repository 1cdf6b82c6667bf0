"""OC20 S2EF raw files (extxyz + txt, plain and .xz) on the shipped real frames and the EMT slab set."""

from __future__ import annotations

import lzma
import shutil
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import ase.io
import numpy as np
import pytest

from molequi.data import oc20
from molequi.errors import DatasetError, FormatError

DATA = Path(__file__).resolve().parents[2] / "data" / "oc20"
REAL = DATA / "oc20_real.extxyz"
REAL_XZ = DATA / "oc20_real_xz.extxyz.xz"
EMT = DATA / "emt_slabs.extxyz"
SRC = Path(__file__).resolve().parents[2] / "data" / "oc20" / "source"  # the FAIR-Chem files, unchanged


def test_real_frames_keep_energy_forces_tags_fixed():
    recs = oc20.read_s2ef(REAL)
    assert len(recs) == 37
    first = recs[0]  # atoms.json: CO on Al8Cu8Se16
    assert first.energy.item() == pytest.approx(-135.66393572, abs=1e-5)
    assert first.tags.tolist()[:3] == [1, 1, 0] and int(first.fixed.sum()) == 24
    assert first.pbc.all() and first.cell[0, 2, 2].item() == pytest.approx(39.37850739, abs=1e-5)
    assert recs[1].energy.item() == pytest.approx(-67.0913157, abs=1e-5)
    assert recs[-1].energy.item() == pytest.approx(-67.47374173, abs=1e-5)
    assert (recs[1].sid.item(), recs[1].fid.item(), recs[-1].fid.item()) == (1000156, 0, 35)
    assert int(recs[1].fixed.sum()) == 36


def test_real_frames_match_their_ase_sources():
    traj = ase.io.read(SRC / "random1000156.traj", ":")
    recs = oc20.read_s2ef(REAL)
    np.testing.assert_allclose(recs[7].forces.numpy(), traj[6].get_forces(apply_constraint=False), atol=1e-6)
    np.testing.assert_allclose(recs[7].pos.numpy(), traj[6].positions, atol=1e-6)


def test_xz_pair_equals_plain():
    a, b = oc20.read_s2ef(REAL), oc20.read_s2ef(REAL_XZ)
    assert oc20.find_txt(REAL_XZ).name == "oc20_real_xz.txt.xz"
    assert len(a) == len(b) and all(np.array_equal(x.pos, y.pos) for x, y in zip(a, b))


def test_emt_slabs_reference_subtraction():
    raw = oc20.read_s2ef(EMT)
    ads = oc20.read_s2ef(EMT, subtract_reference=True)
    refs = oc20.read_s2ef_txt(EMT.with_suffix(".txt"))
    assert len(raw) == len(ads) == len(refs) == 243
    assert len({r.sid for r in refs}) == 27
    for r, a, ref in zip(raw[:20], ads[:20], refs[:20]):
        assert a.energy.item() == pytest.approx(r.energy.item() - ref.ref_energy, abs=1e-3)
    counts = Counter(raw[0].tags.tolist())
    assert counts == {0: 18, 1: 9, 2: 2}  # CO on a 3x3x3 slab
    assert int(raw[0].fixed.sum()) == 18 and not raw[0].fixed[raw[0].tags == 2].any()
    # forces on fixed atoms are stored (not zeroed), energies relax downhill within a system
    e = [d.energy.item() for d in raw if d.sid.item() == 0]
    assert e[-1] < e[0]


def test_txt_line_count_mismatch(tmp_path):
    shutil.copy(REAL, tmp_path / "a.extxyz")
    lines = (DATA / "oc20_real.txt").read_text().splitlines()
    (tmp_path / "a.txt").write_text("\n".join(lines[:30]) + "\n")
    with pytest.raises(FormatError, match="the txt has 30 lines but the extxyz has 37 frames"):
        oc20.read_s2ef(tmp_path / "a.extxyz")
    (tmp_path / "a.txt").write_text("\n".join(lines + ["random1,frame1,0.0"]) + "\n")
    with pytest.raises(FormatError, match="the txt has 38 lines but the extxyz has 37 frames"):
        oc20.read_s2ef(tmp_path / "a.extxyz")


def test_bad_txt_line_and_corrupt_xz(tmp_path):
    bad = tmp_path / "b.txt"
    bad.write_text("random1,frame0,-1.0\nsystem2;frame1\n")
    with pytest.raises(FormatError, match=r"b.txt, line 2: expected 'random<sid>,frame<fid>"):
        oc20.read_s2ef_txt(bad)
    data = REAL_XZ.read_bytes()
    corrupt = tmp_path / "c.extxyz.xz"
    corrupt.write_bytes(data[: len(data) // 2])
    with pytest.raises(FormatError, match="corrupt .xz stream"):
        oc20.read_s2ef(corrupt, DATA / "oc20_real_xz.txt.xz")
    garbage = tmp_path / "d.extxyz.xz"
    garbage.write_bytes(b"\xfd7zXZ\x00" + b"\x00" * 64)
    with pytest.raises(FormatError, match=r"d.extxyz.xz: corrupt .xz"):
        oc20.read_s2ef(garbage)
    assert lzma.decompress(data)  # the shipped file itself is fine


def test_subtract_reference_needs_txt(tmp_path):
    shutil.copy(REAL, tmp_path / "a.extxyz")
    with pytest.raises(DatasetError, match="no txt was given"):
        oc20.read_s2ef(tmp_path / "a.extxyz", subtract_reference=True)


def test_registry_builders_on_folders(tmp_path):
    (tmp_path / "train").mkdir()
    (tmp_path / "val").mkdir()
    shutil.copy(EMT, tmp_path / "train" / "0.extxyz")
    shutil.copy(EMT.with_suffix(".txt"), tmp_path / "train" / "0.txt")
    shutil.copy(DATA / "oc20_real.lmdb", tmp_path / "val" / "data.0000.lmdb")
    out = oc20.build_oc20_s2ef(SimpleNamespace(root=str(tmp_path), subtract_reference=True))
    assert len(out["train"]) == 243 and len(out["val"]) == 37 and "test" not in out
    is2re = oc20.build_oc20_is2re(SimpleNamespace(root=str(DATA / "is2re_kurniawan_not_oc20.lmdb")))
    d = is2re["train"][0]
    assert d.energy.item() == pytest.approx(d.y_relaxed.item()) and "forces" not in d
