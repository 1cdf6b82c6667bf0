"""MD17 (sGDML xyz / npz) and rMD17 (npz + split files) on the real samples shipped in data/md17."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from molequi.data import md17
from molequi.errors import DatasetError, FormatError, MissingKeyError
from molequi.units import KCAL_PER_MOL_TO_EV

DATA = Path(__file__).resolve().parents[2] / "data" / "md17"
SNIP = DATA / "ethanol_snip.xyz"
RMD17 = DATA / "rmd17_ethanol_train_01.npz"


def test_sgdml_xyz_energy_and_forces_in_ev():
    frames = md17.load_md17_xyz(SNIP)
    assert len(frames) == 3
    assert frames.energy[0] == pytest.approx(-97208.40600498248 * KCAL_PER_MOL_TO_EV, rel=1e-12)
    assert KCAL_PER_MOL_TO_EV == pytest.approx(0.0433641, rel=1e-6)
    assert frames.energy[0] == pytest.approx(-4215.355, abs=1e-3)
    d = frames[0]
    assert d.numbers.tolist() == [6, 6, 8, 1, 1, 1, 1, 1, 1]
    assert d.forces[0, 0].item() == pytest.approx(1.4517297437249999 * KCAL_PER_MOL_TO_EV, rel=1e-6)
    assert d.pos[3].tolist() == pytest.approx([0.0392, -1.1972, 0.89])


def test_rmd17_npz_first_energy_in_ev():
    frames = md17.load_md17_npz(RMD17)
    assert len(frames) == 1000
    assert frames.energy[0] == pytest.approx(-97079.92222179 * KCAL_PER_MOL_TO_EV, rel=1e-9)
    assert frames.energy[0] == pytest.approx(-4209.7839, abs=1e-3)
    records = md17.read_rmd17_npz(RMD17)
    assert len(records) == 1000 and records[0].forces.shape == (9, 3)
    assert records[0].forces[0, 0].item() == pytest.approx(-17.64730699 * KCAL_PER_MOL_TO_EV, rel=1e-5)


def test_sgdml_npz_keys(tmp_path):
    path = tmp_path / "md17_ethanol.npz"
    frames = md17.load_md17_xyz(SNIP)
    np.savez(
        path,
        R=frames.positions,
        z=frames.numbers,
        E=(frames.energy / KCAL_PER_MOL_TO_EV)[:, None],
        F=frames.forces / KCAL_PER_MOL_TO_EV,
        name="ethanol",
        theory="PBE+TS",
    )
    again = md17.load_md17_npz(path)
    np.testing.assert_allclose(again.energy, frames.energy)
    splits = md17.build_md17(SimpleNamespace(root=str(tmp_path), molecule="ethanol", split=(1, 1, None)))
    assert [len(splits[k]) for k in ("train", "val", "test")] == [1, 1, 1]


def _rmd17_tree(tmp_path, train=None, test=None):
    (tmp_path / "npz_data").mkdir()
    (tmp_path / "npz_data" / "rmd17_ethanol.npz").symlink_to(RMD17)
    (tmp_path / "splits").mkdir()
    if train is not None:
        (tmp_path / "splits" / "index_train_01.csv").write_text("\n".join(map(str, train)) + "\n")
    if test is not None:
        (tmp_path / "splits" / "index_test_01.csv").write_text("\n".join(map(str, test)) + "\n")
    return tmp_path


def test_rmd17_protocol_with_split_files(tmp_path):
    root = _rmd17_tree(tmp_path, train=range(0, 400, 2), test=range(1, 101, 2))
    out = md17.build_rmd17(SimpleNamespace(root=str(root), molecule="ethanol", split_id=1, seed=0))
    assert len(out["train"]) + len(out["val"]) == 200 and len(out["val"]) == 10
    assert len(out["test"]) == 800  # the rest
    assert set(out["train"].frame_ids) | set(out["val"].frame_ids) == set(range(0, 400, 2))
    idx = md17.build_rmd17(SimpleNamespace(root=str(root), molecule="ethanol", split_id=1, test="index"))
    assert len(idx["test"]) == 50 and idx["test"][0].energy.item() == pytest.approx(
        md17.load_md17_npz(RMD17).energy[1], rel=1e-6
    )


def test_missing_split_file_is_named(tmp_path):
    root = _rmd17_tree(tmp_path)
    with pytest.raises(DatasetError, match=r"index_train_03.csv is missing"):
        md17.build_rmd17(SimpleNamespace(root=str(root), molecule="ethanol", split_id=3))


def test_unknown_molecule_lists_valid_names():
    with pytest.raises(
        DatasetError, match="unknown rMD17 molecule 'ethenol'.*aspirin, azobenzene.*did you mean 'ethanol'"
    ):
        md17.check_molecule("ethenol", revised=True)
    with pytest.raises(DatasetError, match="valid names: aspirin"):
        md17.build_md17(SimpleNamespace(root="/nonexistent", molecule="water"))
    assert md17.check_molecule("Salicylic Acid", revised=False) == "salicylic"


def test_bad_files(tmp_path):
    bad = tmp_path / "x.npz"
    bad.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(FormatError, match="cannot read the npz"):
        md17.load_md17_npz(bad)
    other = tmp_path / "other.npz"
    np.savez(other, foo=np.zeros(3))
    with pytest.raises(MissingKeyError, match="nuclear_charges"):
        md17.load_md17_npz(other)
    lines = SNIP.read_text().splitlines()
    cut = tmp_path / "cut.xyz"
    cut.write_text("\n".join(lines[:6]) + "\n")
    with pytest.raises(FormatError, match="frame 0"):
        md17.load_md17_xyz(cut)


def test_lone_npz_without_split_folder_gets_seeded_split():
    out = md17.build_rmd17(SimpleNamespace(root=str(RMD17)))
    assert [len(out[k]) for k in ("train", "val", "test")] == [900, 50, 50]
    with pytest.raises(DatasetError, match="index_train_02.csv is missing"):
        md17.build_rmd17(SimpleNamespace(root=str(RMD17), split_id=2))
