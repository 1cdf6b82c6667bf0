"""``molequi data info`` on QM9 as a ``.zip`` (how some mirrors ship the figshare tarball's content)."""

from __future__ import annotations

import io
import json
import tarfile
import zipfile
from pathlib import Path

import ase.io
import numpy as np

from molequi.cli.main import main
from molequi.data.info import detect_format

TARBALL = Path(__file__).resolve().parents[2] / "data" / "qm9" / "ppqm_first20.tar.gz"  # 20 real members


def test_data_info_reads_a_qm9_zip(tmp_path, capsys):
    members = {}
    with tarfile.open(TARBALL) as tar:
        for m in tar:
            if m.isfile():
                members[m.name] = tar.extractfile(m).read()
    path = tmp_path / "dsgdb9nsd.xyz.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    # the reference: ASE's own xyz reader on each member
    molecules = [ase.io.read(io.StringIO(data.decode()), format="xyz") for data in members.values()]
    sizes = np.array([len(a) for a in molecules])
    elements = sorted({s for a in molecules for s in a.get_chemical_symbols()},
                      key=lambda s: ase.data.atomic_numbers[s])

    assert detect_format(path) == "qm9"
    assert main(["data", "info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["format"] == "qm9" and info["n_structures"] == len(members) == 20
    assert info["n_atoms_total"] == sizes.sum()
    assert (info["atoms_min"], info["atoms_max"]) == (sizes.min(), sizes.max())
    assert info["elements"] == elements


def test_data_info_names_a_corrupt_zip(tmp_path, capsys):
    path = tmp_path / "qm9.zip"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("dsgdb9nsd_000001.xyz", "5\n\nC 0 0 0\n")  # announces 5 atoms, has 1
    assert main(["data", "info", str(path), "--format", "qm9"]) == 1
    err = capsys.readouterr().err
    assert "qm9.zip:dsgdb9nsd_000001.xyz, line 1: record truncated" in err
