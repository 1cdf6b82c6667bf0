"""Fuzz: mutated files fed to every reader either load or raise a named molequi error, nothing else.

Every fuzzer is derandomised (the same examples on every run and machine), so a crash found once is found
again; inputs that once crashed a reader are kept as explicit regression tests below.
"""

import os
import subprocess
import sys

import ase.db
import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io.trajectory import Trajectory
from fuzz_helpers import FUZZ, mutated, scratch_dir
from hypothesis import given, settings

from molequi.data.readers import read_ase_db, read_structures, read_trajectory, write_extxyz
from molequi.errors import MolequiError

TMP = str(scratch_dir("molequi-fuzz-"))


def _seed_files():
    frames = []
    for i in range(2):
        atoms = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)
        atoms.rattle(0.05, seed=i)
        atoms.calc = EMT()
        atoms.get_potential_energy()
        atoms.get_stress()
        frames.append(atoms)
    write_extxyz(os.path.join(TMP, "seed.xyz"), frames)
    db = ase.db.connect(os.path.join(TMP, "seed.db"))
    with Trajectory(os.path.join(TMP, "seed.traj"), "w") as traj:
        for a in frames:
            db.write(a)
            traj.write(a)
    return {ext: open(os.path.join(TMP, f"seed.{ext}"), "rb").read() for ext in ("xyz", "db", "traj")}


SEEDS = _seed_files()
TOKENS = [b"nan", b"inf", b"-", b"Xx", b"0", b"1e400", b'"', b"=", b":", b"\n", b" ", b"\t", b"T", b"F",
          b"Properties=", b"Lattice=", b"energy=", b"R:3", b"S:1", b"*^-6", b"99999999999"]


def _feed(reader, ext, payload):
    path = os.path.join(TMP, f"case.{ext}")
    if os.path.exists(path):
        os.unlink(path)
    with open(path, "wb") as fh:
        fh.write(payload)
    try:
        records = reader(path)
    except MolequiError:
        return
    for r in records:  # what loads is usable: finite positions and labels of the right shape
        assert np.isfinite(r.pos.numpy()).all()
        if "forces" in r:
            assert r.forces.shape == r.pos.shape


@settings(FUZZ, max_examples=2000)
@given(mutated(SEEDS["xyz"], TOKENS))
def test_fuzz_extxyz(payload):
    _feed(read_structures, "xyz", payload)


@FUZZ
@given(mutated(SEEDS["traj"], TOKENS))
def test_fuzz_trajectory(payload):
    _feed(read_trajectory, "traj", payload)


@FUZZ
@given(mutated(SEEDS["db"], TOKENS))
def test_fuzz_ase_db(payload):
    _feed(read_ase_db, "db", payload)


# A delete of 23 bytes found by the (then random) extxyz fuzzer: ``pos:R:3`` ran into the digits of the
# energy, ``pos:R:32692780545036``, and ASE built one numpy field per declared column (24 GB, OOM-killed).
HUGE_COLUMNS = (
    b'2\nLattice="0.0 3.6 3.6 1.8 0.0 1.8 1.8 1.8 0.0" Properties=species:S:1:pos:R:32692780545036 '
    b'free_energy=0.0015092692780545036 stress="0.0017880223464154278 0.0007597441795802058 '
    b'0.004121704916686409 0.0007597441795802058 0.0074270112249026085 -0.0005587722087519936 '
    b'0.004121704916686409 -0.0005587722087519936 0.005029549277187765" pbc="T T T"\n'
    b"Cu       0.08820262       0.02000786       0.04893690       0.00075463       0.15045521       "
    b"0.00857516      -0.26274184\n"
    b"Cu       0.11204466       1.89337790       1.75113611       0.00075463      -0.15045521      "
    b"-0.00857516       0.26274184\n"
)


def test_huge_property_column_count_is_a_named_error_not_an_allocation(tmp_path):
    """Run in a child limited to 3 GB of address space: before the guard this input was a MemoryError there
    (an OOM kill of the test worker without the limit); now it is a FormatError naming file and line."""
    path = tmp_path / "huge_columns.xyz"
    path.write_bytes(HUGE_COLUMNS)
    code = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))\n"
        "from molequi.data.readers import read_structures\n"
        "from molequi.errors import FormatError\n"
        "try:\n"
        "    read_structures(sys.argv[1])\n"
        "except FormatError as exc:\n"
        "    print(exc)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    message = out.stdout.strip()
    assert message.startswith(f"{path}, frame 0, line 2: Properties declares 32692780545037 columns"), message
    assert "at most 8" in message
