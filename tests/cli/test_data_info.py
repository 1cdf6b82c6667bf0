"""``molequi data info``: counts and statistics in eV / eV/Å, table and --json."""

import json

import numpy as np
import pytest
from ase.build import bulk
from ase.calculators.emt import EMT

from molequi.cli.main import main
from molequi.data.readers import write_extxyz


@pytest.fixture
def cu_file(tmp_path):
    frames = []
    for i, reps in enumerate([(1, 1, 1), (2, 1, 1)]):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True) * reps
        atoms.rattle(0.05, seed=i)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        frames.append(atoms)
    path = tmp_path / "cu.xyz"
    write_extxyz(path, frames)
    return path, frames


def test_json_summary(cu_file, capsys):
    path, frames = cu_file
    assert main(["data", "info", str(path), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    energies = np.array([a.get_potential_energy() for a in frames])
    forces = np.concatenate([a.get_forces() for a in frames])
    assert info["n_structures"] == 2 and info["elements"] == ["Cu"]
    assert (info["atoms_min"], info["atoms_max"]) == (4, 8)
    assert info["energy_mean"] == pytest.approx(energies.mean(), rel=1e-6)
    assert info["energy_std"] == pytest.approx(energies.std(), rel=1e-6)
    assert info["force_rms"] == pytest.approx(np.sqrt((forces**2).mean()), rel=1e-5)
    assert info["mean_neighbors"] > 40  # fcc Cu within 5 Å: 12 + 6 + 24 = 42 plus rattling


def test_table_and_named_error(cu_file, capsys, tmp_path):
    path, _ = cu_file
    assert main(["data", "info", str(path)]) == 0
    out = capsys.readouterr().out
    assert "n_structures" in out and "eV/Å" in out
    bad = tmp_path / "bad.xyz"
    bad.write_text("2\n\nO 0 0 0\n")
    assert main(["data", "info", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "FormatError" in err and "bad.xyz, frame 0, line 1: truncated frame" in err


def test_help_lists_every_option(capsys):
    with pytest.raises(SystemExit):
        main(["data", "info", "--help"])
    out = capsys.readouterr().out
    for option in ("--format", "--cutoff", "--energy-key", "--forces-key", "--json"):
        assert option in out
