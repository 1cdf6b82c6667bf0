"""The random train/validation/test split saved with a Hamiltonian store (QHNet's protocol), the dataset
option that reads it, the independence measure of the sampler, and the generator script end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from ase import Atoms

from molequi.data.hamiltonian import (
    HamiltonianRecord,
    HamiltonianStore,
    random_split,
    write_split,
    write_store,
)
from molequi.errors import DatasetError, FormatError

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "data" / "hamiltonian" / "water_random_sample"


def _store(tmp_path, n=10):
    recs = [HamiltonianRecord(numbers=np.array([1, 1]), pos=np.array([[0.0, 0, 0], [0.74 + 0.01 * k, 0, 0]]),
                              fock=np.eye(2) * k, overlap=np.eye(2), energy=-1.0 - k, n_elec=2)
            for k in range(n)]
    return write_store(tmp_path / "s", recs, basis="sto-3g", xc="pbe")


def test_random_split_is_numpys_permutation_partitioned():
    split = random_split(20, 3, 5, seed=7)
    perm = np.random.default_rng(7).permutation(20)
    assert split["valid"] == sorted(perm[:3].tolist()) and split["test"] == sorted(perm[3:8].tolist())
    assert sorted(split["train"] + split["valid"] + split["test"]) == list(range(20))
    assert split["train"] != list(range(12))  # random, not the first records
    with pytest.raises(DatasetError, match="keep some for training"):
        random_split(8, 4, 4)


def test_split_round_trip_and_dataset_option(tmp_path):
    from molequi.data.datasets import DataConfig
    from molequi.data.hamiltonian import build_hamiltonian_dataset

    root = _store(tmp_path)
    assert HamiltonianStore(root).split() is None
    split = random_split(10, 2, 3, seed=1)
    write_split(root, split, seed=1)
    assert HamiltonianStore(root).split() == split
    cfg = DataConfig(name="hamiltonian", root=str(root), options={"split": "test"})
    data = build_hamiltonian_dataset(cfg)
    # record k has fock = k * I: the dataset holds exactly the test records, in order
    assert [int(d.fock[0]) for d in data] == split["test"]
    with pytest.raises(DatasetError, match="no such part"):
        build_hamiltonian_dataset(DataConfig(name="hamiltonian", root=str(root), options={"split": "tests"}))


@pytest.mark.parametrize("bad", [
    {"train": [0, 1], "valid": [1], "test": [2]},      # overlapping
    {"train": [0], "valid": [1], "test": [10]},        # out of range
    {"train": [0], "valid": [1]},                      # missing part
    {"train": [0.0], "valid": [1], "test": [2]},       # not integers
])
def test_bad_split_file_is_a_format_error(tmp_path, bad):
    root = _store(tmp_path)
    (root / "split.json").write_text(json.dumps(bad))
    with pytest.raises(FormatError, match="split.json"):
        HamiltonianStore(root).split()


def test_lag1_correlation_matches_numpy_corrcoef():
    from molequi.qc.xtb import lag1_correlation

    rng = np.random.default_rng(0)
    # an AR(1) series of bond lengths with coefficient 0.8 (correlated) and independent draws
    x = np.empty(400)
    x[0] = 0
    for t in range(1, 400):
        x[t] = 0.8 * x[t - 1] + rng.normal()
    frames = [Atoms("H2", positions=[[0, 0, 0], [1.0 + 0.01 * v, 0, 0]]) for v in x]
    assert lag1_correlation(frames) == pytest.approx(np.corrcoef(x[:-1], x[1:])[0, 1], abs=1e-9)
    indep = [Atoms("H2", positions=[[0, 0, 0], [1.0 + 0.01 * v, 0, 0]]) for v in rng.normal(size=400)]
    assert abs(lag1_correlation(indep)) < 0.15


@pytest.mark.parametrize("name, smallest_part, n_atoms", [("water_random_sample", 4, 3),
                                                        ("ethanol_random_sample", 1, 9)])
def test_shipped_sample_is_a_labelled_random_split(name, smallest_part, n_atoms):
    sample = SAMPLE.parent / name
    store = HamiltonianStore(sample)
    split = store.split()
    assert sorted(split["train"] + split["valid"] + split["test"]) == list(range(len(store)))
    assert min(len(v) for v in split.values()) >= smallest_part
    assert (store.xc, store.basis) == ("pbe", "def2-svp")
    assert store.meta["sampler"] == "xtb-md" and store.meta["temperature_K"] == 500.0
    assert abs(store.meta["lag1_distance_correlation"]) < 0.2  # independent geometries, not an MD sequence
    assert all(len(store[i].numbers) == n_atoms for i in range(len(store)))
    assert (sample / "ORIGIN.md").exists()
    size = sum(f.stat().st_size for f in sample.rglob("*") if f.is_file())
    assert size < 1_000_000


@pytest.mark.qm
@pytest.mark.slow
def test_generator_script_writes_labelled_split_store(tmp_path):
    """scripts/make_hamiltonian_dataset.py end to end on 5 waters; labels checked against PySCF run here."""
    from pyscf import dft, gto

    out = tmp_path / "water"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "make_hamiltonian_dataset.py"), "--n", "5",
                    "--interval", "20", "--equilibrate", "20", "--n-valid", "1", "--n-test", "1", "--out",
                    str(out), "--sample-out", str(tmp_path / "sample"), "--sample-n", "3", "--no-progress"],
                   check=True, capture_output=True, timeout=600)
    store = HamiltonianStore(out)
    assert len(store) == 5 and len(store.split()["train"]) == 3
    assert "lag1_distance_correlation" in store.meta
    rec = store[store.split()["test"][0]]
    mol = gto.M(atom=[(int(z), tuple(p)) for z, p in zip(rec.numbers, rec.pos)], basis="def2-svp",
                unit="Angstrom", verbose=0)
    mf = dft.RKS(mol)
    mf.xc, mf.conv_tol = "pbe", 1e-10
    assert mf.kernel() == pytest.approx(rec.energy, abs=1e-8)
    np.testing.assert_allclose(mf.get_fock(), rec.fock, atol=1e-6)
    sample = HamiltonianStore(tmp_path / "sample")
    assert len(sample) == 3 and sum(map(len, sample.split().values())) == 3
