"""QM9 readers on the real samples shipped in data/qm9 (figshare xyz, PyG sdf + csv)."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from molequi.data import qm9
from molequi.errors import DatasetError, FormatError

DATA = Path(__file__).resolve().parents[2] / "data" / "qm9"
XYZ = DATA / "crescendo"
SDF = DATA / "deepchem" / "qm9_mini.sdf"
TARBALL = Path(__file__).resolve().parents[2] / "data" / "qm9" / "ppqm_first20.tar.gz"  # real ppqm members

# formats.md: gdb_1 (methane), the 19-target vector in molequi units (eV, D, a0^3, a0^2, cal/(mol K), GHz)
METHANE_HEAD = [0.0, 13.21, -10.5499, 3.1865, 13.7363, 35.3641, 1.2177, -1101.4878]
METHANE_TAIL = [157.7118, 157.7100, 157.7070]


def test_methane_targets_from_figshare_xyz():
    (mol,) = qm9.parse_qm9_xyz((XYZ / "dsgdb9nsd_000001.xyz").read_text())
    y = mol.targets()
    assert y.shape == (19,)
    np.testing.assert_allclose(y[:8], METHANE_HEAD, atol=1e-4)
    np.testing.assert_allclose(y[-3:], METHANE_TAIL, atol=1e-4)
    # U0_atom: U0 minus the B3LYP energies of C + 4 H, in eV
    assert y[qm9.target_index("U0_atom")] == pytest.approx(
        (-40.47893 + 37.846772 + 4 * 0.500273) * 27.211386245988
    )
    assert mol.index == 1 and mol.smiles == "C"
    np.testing.assert_allclose(mol.charges, [-0.535689, 0.133921, 0.133922, 0.133923, 0.133923])


def test_methane_targets_from_sdf_csv_match_xyz():
    records = qm9.read_qm9_sdf(SDF)
    assert len(records) == 21
    y = records[0].y.reshape(-1).double().numpy()
    np.testing.assert_allclose(y[:8], METHANE_HEAD, atol=1e-3)
    np.testing.assert_allclose(y[-3:], METHANE_TAIL, atol=1e-3)
    (mol,) = qm9.parse_qm9_xyz((XYZ / "dsgdb9nsd_000001.xyz").read_text())
    # csv *_atom columns are kcal/mol, xyz gives Hartree: the two conversions agree to < 1 meV
    np.testing.assert_allclose(y, mol.targets(), atol=2e-3, rtol=1e-6)
    # SDF keeps 4 decimals of the xyz coordinates
    np.testing.assert_allclose(records[0].pos.numpy(), mol.positions, atol=6e-5)
    assert records[0].numbers.tolist() == [6, 1, 1, 1, 1]


def test_all_twenty_crescendo_files_and_mathematica_exponent():
    records = qm9.read_qm9_xyz(XYZ)
    assert len(records) == 20
    assert sorted(int(r.idx) for r in records)[:3] == [1, 2, 3]
    (mol,) = qm9.parse_qm9_xyz((XYZ / "dsgdb9nsd_005005.xyz").read_text())
    assert mol.positions[7, 2] == pytest.approx(7.9254e-6)
    assert all(r.y.shape == (1, 19) and r.charges.shape == (r.num_nodes,) for r in records)


def test_joined_records_and_exclusion(tmp_path):
    joined = tmp_path / "joined.xyz"
    joined.write_text("".join((XYZ / f"dsgdb9nsd_00000{i}.xyz").read_text() for i in (1, 2, 3)))
    mols = qm9.parse_qm9_xyz(joined.read_text())
    assert [m.index for m in mols] == [1, 2, 3]
    unc = tmp_path / "uncharacterized.txt"
    unc.write_text("\n\n Indices of molecules\n   2   C   blah\n  ---\n")
    assert qm9.read_uncharacterized(unc) == {2}
    assert [int(d.idx) for d in qm9.read_qm9_xyz(joined, exclude={2})] == [1, 3]


def test_tarball_and_geometry_only(tmp_path):
    tar_path = tmp_path / "qm9.tar.gz"
    with tarfile.open(tar_path, "w:gz") as tar:
        for name in ("dsgdb9nsd_000001.xyz", "dsgdb9nsd_005005.xyz"):
            tar.add(XYZ / name, arcname=f"xyz/{name}")
        plain = b"3\n\nO 0.0 0.0 0.1\nH 0.0 0.75 -0.45\nH 0.0 -0.75 -0.45\n"
        info = tarfile.TarInfo("xyz/dsgdb9nsd_000042.xyz")
        info.size = len(plain)
        tar.addfile(info, io.BytesIO(plain))
    mols = list(qm9.iter_qm9_xyz(tar_path))
    assert [m.index for m in mols] == [1, 5005, 42]
    assert mols[2].props is None and mols[2].targets() is None
    d = mols[2].to_data()
    assert "y" not in d and d.numbers.tolist() == [8, 1, 1]


def test_dataset_cache_and_split(tmp_path):
    ds = qm9.QM9Dataset(tmp_path, source=XYZ)
    assert len(ds) == 20
    processed = list((tmp_path / "processed").glob("qm9_*.pt"))
    assert len(processed) == 1 and not list((tmp_path / "processed").glob("*.tmp"))
    again = qm9.QM9Dataset(tmp_path, source=XYZ)  # served from the cache
    assert torch.equal(again[3].y, ds[3].y)
    tr, va, te = ds.split((0.7, 0.15, None), seed=1)
    assert (len(tr), len(va), len(te)) == (14, 3, 3)
    tr2, _, _ = ds.split((0.7, 0.15, None), seed=1)
    assert [int(d.idx) for d in tr] == [int(d.idx) for d in tr2]
    with pytest.raises(DatasetError, match="ask for 120000 items"):
        ds.split()


def test_dimenet_split_sizes():
    tr, va, te = qm9.random_split(130831, qm9.DIMENET_SPLIT, seed=0)
    assert (len(tr), len(va), len(te)) == (110000, 10000, 10831)
    assert len(np.intersect1d(tr, te)) == 0


def test_bad_records_raise_named_errors(tmp_path):
    text = (XYZ / "dsgdb9nsd_000001.xyz").read_text()
    head = "\n".join(text.split("\n")[:2])
    with pytest.raises(FormatError, match="cut.xyz, line 1: record truncated"):
        qm9.parse_qm9_xyz(head + "\nC\t0.0\n", source="cut.xyz")
    with pytest.raises(FormatError, match="cut.xyz, line 3: atom row 1 has 2 fields"):
        qm9.parse_qm9_xyz(head + "\nC\t0.0\n" * 6, source="cut.xyz")
    with pytest.raises(FormatError, match="17"):
        qm9.parse_qm9_xyz("1\ngdb 1 2 3\nC 0 0 0 0\n")
    with pytest.raises(DatasetError, match="valid targets"):
        qm9.target_index("U00")
    with pytest.raises(DatasetError, match="no QM9 raw files"):
        qm9.QM9Dataset(tmp_path, source=tmp_path)


def test_first_molecules_of_ppqm_tarball_match_originals():
    it = qm9.iter_qm9_xyz(TARBALL)
    first = [next(it) for _ in range(3)]
    assert [m.index for m in first] == [1, 2, 3]
    (orig,) = qm9.parse_qm9_xyz((XYZ / "dsgdb9nsd_000001.xyz").read_text())
    np.testing.assert_array_equal(first[0].positions, orig.positions)


def test_dataset_excludes_uncharacterized_and_caches_separately(tmp_path):
    import shutil

    raw = tmp_path / "raw"
    shutil.copytree(XYZ, raw)
    (raw / "uncharacterized.txt").write_text("\n\n Index  Name\n  5000  gdb 5000\n    3  x\n")
    ds = qm9.QM9Dataset(tmp_path)
    assert len(ds) == 18 and {int(d.idx) for d in ds}.isdisjoint({3, 5000})
    full = qm9.QM9Dataset(tmp_path, exclude_uncharacterized=False)
    assert len(full) == 20
    assert len(list((tmp_path / "processed").glob("qm9_*.pt"))) == 2
