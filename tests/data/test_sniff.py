"""Format sniffing for the benchmark families, and the registry path into them (DatasetConfig)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from molequi.data.datasets import DataConfig as DatasetConfig
from molequi.data.datasets import build_dataset
from molequi.data.sniff import sniff_format
from molequi.errors import DatasetError

DATA = Path(__file__).resolve().parents[2] / "data"


@pytest.mark.parametrize(
    "path, expected",
    [
        ("md17/rmd17_ethanol_train_01.npz", "rmd17"),
        ("md17/ethanol_snip.xyz", "md17"),
        ("qm9/crescendo/dsgdb9nsd_000001.xyz", "qm9"),
        ("qm9/crescendo", "qm9"),
        ("qm9/deepchem/qm9_mini.sdf", "qm9"),
        ("oc20/oc20_real.extxyz", "oc20_s2ef"),
        ("oc20/oc20_real_xz.extxyz.xz", "oc20_s2ef"),
        ("oc20/oc20_real.lmdb", "oc20_s2ef"),
        ("oc20/is2re_kurniawan_not_oc20.lmdb", "oc20_is2re"),
        ("qm9/ORIGIN.md", None),
    ],
)
def test_sniff_shipped_samples(path, expected):
    assert sniff_format(DATA / path) == expected


def test_s2ef_extxyz_needs_its_txt(tmp_path):
    shutil.copy(DATA / "oc20" / "oc20_real.extxyz", tmp_path / "a.extxyz")
    assert sniff_format(tmp_path / "a.extxyz") is None
    shutil.copy(DATA / "oc20" / "oc20_real.txt", tmp_path / "a.txt")
    assert sniff_format(tmp_path / "a.extxyz") == "oc20_s2ef"
    (tmp_path / "x.lmdb").write_bytes(b"not an lmdb at all, just text" * 10)
    assert sniff_format(tmp_path / "x.lmdb") is None
    assert sniff_format(tmp_path / "missing.npz") is None


def test_registry_qm9_md17_oc20(tmp_path):
    shutil.copytree(DATA / "qm9" / "crescendo", tmp_path / "raw")
    out = build_dataset(
        DatasetConfig(
            name="qm9", root=str(tmp_path), target="U0", options={"split": (0.8, 0.1, None), "seed": 0}
        )
    )
    assert [len(out[k]) for k in ("train", "val", "test")] == [16, 2, 2]
    assert (tmp_path / "processed").exists()
    with pytest.raises(DatasetError, match="valid targets"):
        build_dataset(DatasetConfig(name="qm9", root=str(tmp_path), target="energy"))
    md = build_dataset(
        DatasetConfig(
            name="md17", root=str(DATA / "md17" / "ethanol_snip.xyz"), options={"split": (1, 1, None)}
        )
    )
    assert [len(md[k]) for k in ("train", "val", "test")] == [1, 1, 1]
    with pytest.raises(DatasetError, match="valid names: aspirin"):
        build_dataset(DatasetConfig(name="rmd17", root=str(tmp_path), target="ethanoll"))
    oc = build_dataset(
        DatasetConfig(name="oc20_is2re", root=str(DATA / "oc20" / "is2re_kurniawan_not_oc20.lmdb"))
    )
    assert len(oc["train"]) == 68
