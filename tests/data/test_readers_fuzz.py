"""Fuzz: mutated files fed to every reader either load or raise a named molequi error, nothing else."""

import os
import tempfile

import ase.db
import numpy as np
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io.trajectory import Trajectory
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from molequi.data.readers import read_ase_db, read_structures, read_trajectory, write_extxyz
from molequi.errors import MolequiError

TMP = tempfile.mkdtemp(prefix="molequi-fuzz-")


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


@st.composite
def mutated(draw, ext):
    data = bytearray(SEEDS[ext])
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "delete", "insert", "truncate", "token"]))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 40))]
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=12))
        elif op == "truncate":
            del data[pos:]
        else:
            data[pos:pos] = draw(st.sampled_from(TOKENS))
    return bytes(data)


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


@settings(max_examples=2000, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutated("xyz"))
def test_fuzz_extxyz(payload):
    _feed(read_structures, "xyz", payload)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutated("traj"))
def test_fuzz_trajectory(payload):
    _feed(read_trajectory, "traj", payload)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(mutated("db"))
def test_fuzz_ase_db(payload):
    _feed(read_ase_db, "db", payload)
