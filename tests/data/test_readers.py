"""Readers: labels under configurable keys (MACE's REF_*), ASE db/traj, and a named error for each bad input."""

import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.emt import EMT
from ase.io import write

from molequi.data.readers import read_ase_db, read_structures, read_trajectory, write_extxyz
from molequi.errors import FormatError, MissingKeyError, ValueRangeError

WATER = """3
Properties=species:S:1:pos:R:3:REF_forces:R:3 REF_energy=-14.2 pbc="F F F"
O 0.0 0.0 0.0 0.1 0.0 0.0
H 0.96 0.0 0.0 -0.05 0.0 0.0
H -0.24 0.93 0.0 -0.05 0.0 0.0
"""


def frames(n=3):
    out = []
    for i in range(n):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.rattle(0.05, seed=i)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        atoms.get_stress()
        out.append(atoms)
    return out


def test_extxyz_with_ase_keys_round_trip(tmp_path):
    ref = frames()
    write_extxyz(tmp_path / "cu.xyz", ref)
    records = read_structures(tmp_path / "cu.xyz")
    assert len(records) == 3
    for r, a in zip(records, ref):
        assert float(r.energy) == pytest.approx(a.get_potential_energy())
        np.testing.assert_allclose(r.forces.numpy(), a.get_forces(), atol=1e-6)
        np.testing.assert_allclose(r.stress.numpy()[0], a.get_stress(voigt=False), atol=1e-6)


def test_mace_ref_keys_are_found_by_default_and_by_name(tmp_path):
    p = tmp_path / "water.xyz"
    p.write_text(WATER * 2)
    r = read_structures(p)
    assert float(r[1].energy) == pytest.approx(-14.2)
    assert float(r[0].forces[0, 0]) == pytest.approx(0.1)
    r = read_structures(p, energy_key="REF_energy", forces_key="REF_forces")
    assert len(r) == 2


def test_misnamed_key_suggests_the_right_one(tmp_path):
    p = tmp_path / "water.xyz"
    p.write_text(WATER)
    with pytest.raises(MissingKeyError, match=r"energy key 'REF_Energy' not found.*did you mean 'REF_energy'"):
        read_structures(p, energy_key="REF_Energy")


def test_label_missing_on_a_later_frame(tmp_path):
    p = tmp_path / "mixed.xyz"
    p.write_text(WATER + WATER.replace(" REF_energy=-14.2", ""))
    with pytest.raises(MissingKeyError, match=r"mixed.xyz, frame 1, line 6: energy key 'REF_energy' not found"):
        read_structures(p)


def test_required_label_absent(tmp_path):
    p = tmp_path / "nolabel.xyz"
    write(p, molecule("H2O"), format="extxyz")
    assert "energy" not in read_structures(p)[0]
    with pytest.raises(MissingKeyError, match="no energy found"):
        read_structures(p, required=["energy"])


@pytest.mark.parametrize("text, error, message", [
    ("3\ncomment\nO 0 0 0\nH 1 0 0\n", FormatError, r"frame 0, line 1: truncated frame: expected 3 atom lines, found 2"),
    ("x\ncomment\n", FormatError, "line 1: expected the number of atoms"),
    ("2\n\nO 0 0 0\nXx 1 0 0\n", ValueRangeError, r"line 4: unknown element symbol 'Xx'"),
    ("2\n\nO 0 0 0\nH 1 0 zero\n", FormatError, "malformed frame"),
    ("0\n\n", ValueRangeError, "empty structure"),
    ("2\nProperties=species:S:1:pos:R:3:forces:R:3 energy=1.0\nO 0 0 0 1 1\nH 1 0 0 1 1 1\n", FormatError,
     "malformed frame"),
    ("2\nenergy=nan\nO 0 0 0\nH 1 0 0\n", ValueRangeError, "energy contains NaN"),
    ("2\n\nO 0 0 0\nH 0 0 0.01\n", ValueRangeError, "atoms closer than 0.1"),
    ('1\nLattice="2 0 0 0 2 0 0 0 0" pbc="T T T"\nH 0 0 0\n', ValueRangeError, "singular cell"),
    ("1\n\nH inf 0 0\n", ValueRangeError, "positions contains NaN or inf"),
])
def test_bad_extxyz_inputs(tmp_path, text, error, message):
    p = tmp_path / "bad.xyz"
    p.write_text(text)
    with pytest.raises(error, match=message) as info:
        read_structures(p)
    assert "bad.xyz" in str(info.value)


def test_wrong_force_shape_in_db(tmp_path):
    import ase.db

    db = ase.db.connect(str(tmp_path / "x.db"))
    db.write(molecule("H2O"), data={"my_forces": np.zeros((2, 3))}, my_energy=-1.0)
    records = read_ase_db(tmp_path / "x.db")
    assert "energy" not in records[0]
    from molequi.data.readers import LabelKeys

    r = read_ase_db(tmp_path / "x.db", LabelKeys(energy="my_energy"))
    assert float(r[0].energy) == -1.0
    with pytest.raises(FormatError, match=r"frame 0: forces have shape \(2, 3\), expected \(3, 3\)"):
        read_ase_db(tmp_path / "x.db", LabelKeys(energy="my_energy", forces="my_forces"))


def test_ase_db_and_trajectory(tmp_path):
    import ase.db
    from ase.io.trajectory import Trajectory

    ref = frames(2)
    db = ase.db.connect(str(tmp_path / "cu.db"))
    with Trajectory(str(tmp_path / "cu.traj"), "w") as traj:
        for a in ref:
            db.write(a)
            traj.write(a)
    for reader, name in ((read_ase_db, "cu.db"), (read_trajectory, "cu.traj")):
        r = reader(tmp_path / name)
        assert len(r) == 2
        assert float(r[1].energy) == pytest.approx(ref[1].get_potential_energy())
        np.testing.assert_allclose(r[1].stress.numpy()[0], ref[1].get_stress(voigt=False), atol=1e-10)


def test_foreign_files_are_format_errors(tmp_path):
    p = tmp_path / "junk.traj"
    p.write_bytes(b"\x00\x01not a trajectory")
    with pytest.raises(FormatError, match="not a readable ASE trajectory"):
        read_trajectory(p)
    p = tmp_path / "junk.db"
    p.write_bytes(b"SQLite format 3\x00garbage" * 10)
    with pytest.raises(FormatError, match="not a readable ASE database"):
        read_ase_db(p)
    with pytest.raises(FormatError, match="unknown format"):
        read_structures(tmp_path / "file.pdf")


def test_real_oc20_frames_from_fairchem():
    from pathlib import Path

    traj = Path(__file__).resolve().parents[2] / "data" / "oc20" / "source" / "random1000156.traj"
    records = read_trajectory(traj)
    assert len(records) == 36 and records[0].num_nodes == 49
    assert float(records[0].energy) == pytest.approx(-67.09131622314453)


def test_failed_write_leaves_no_file(tmp_path):
    class Boom(Exception):
        pass

    from molequi.io import atomic_open

    with pytest.raises(Boom):
        with atomic_open(tmp_path / "out.xyz") as fh:
            fh.write("partial")
            raise Boom
    assert list(tmp_path.iterdir()) == []
