"""``molequi data to-lmdb``: S2EF extxyz + txt -> LMDB, with worker processes, atomic output."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from molequi.cli.main import main
from molequi.data.lmdb import LmdbDataset
from molequi.data.oc20 import read_s2ef

DATA = Path(__file__).resolve().parents[2] / "data" / "oc20"


@pytest.mark.slow
def test_cli_converts_two_pairs_with_workers(tmp_path, capsys):
    src = tmp_path / "raw"
    src.mkdir()
    shutil.copy(DATA / "oc20_real_xz.extxyz.xz", src / "0.extxyz.xz")
    shutil.copy(DATA / "oc20_real_xz.txt.xz", src / "0.txt.xz")
    shutil.copy(DATA / "emt_slabs.extxyz", src / "1.extxyz")
    shutil.copy(DATA / "emt_slabs.txt", src / "1.txt")
    out = tmp_path / "train" / "data.0000.lmdb"
    rc = main(
        [
            "data",
            "to-lmdb",
            str(src),
            "-o",
            str(out),
            "--workers",
            "2",
            "--subtract-reference",
            "--no-progress",
        ]
    )
    assert rc == 0 and "wrote 280 frames" in capsys.readouterr().out
    ds = LmdbDataset(out)
    assert len(ds) == 37 + 243
    emt = read_s2ef(DATA / "emt_slabs.extxyz", subtract_reference=True)
    d = ds[37 + 5]
    assert d.energy.item() == pytest.approx(
        emt[5].energy.item(), abs=1e-4
    )  # adsorption energy, input order kept
    assert d.tags.tolist() == emt[5].tags.tolist() and d.fixed.tolist() == emt[5].fixed.tolist()
    assert (d.sid.item(), d.fid.item()) == (emt[5].sid.item(), emt[5].fid.item())
    assert [p.name for p in out.parent.iterdir()] == ["data.0000.lmdb"]  # no temporary or lock file left


def test_cli_reports_a_mismatched_txt_and_writes_nothing(tmp_path, capsys):
    shutil.copy(DATA / "oc20_real.extxyz", tmp_path / "a.extxyz")
    lines = (DATA / "oc20_real.txt").read_text().splitlines()[:10]
    (tmp_path / "a.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out" / "x.lmdb"
    rc = main(
        ["data", "to-lmdb", str(tmp_path / "a.extxyz"), "-o", str(out), "--workers", "0", "--no-progress"]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "FormatError" in err and "the txt has 10 lines but the extxyz has 37 frames" in err
    assert not out.exists() and list(out.parent.iterdir()) == []
    rc = main(["data", "to-lmdb", str(tmp_path / "missing.extxyz"), "-o", str(out), "--no-progress"])
    assert rc == 1 and "does not exist" in capsys.readouterr().err
