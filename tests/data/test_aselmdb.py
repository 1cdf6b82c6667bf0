"""fairchem's ASE-LMDB files (issue 19 item 5), written here by the package that defines them
(``ase-db-backends``' LMDBDatabase, which fairchem uses for OMat24 / OMol25): read lazily as a dataset name."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator

pytest.importorskip("ase_db_backends", reason="ase-db-backends is in molequi's dev extra")
from ase_db_backends.aselmdb import LMDBDatabase  # noqa: E402

from molequi import keys as K  # noqa: E402
from molequi.data.aselmdb import AseLmdbDataset  # noqa: E402
from molequi.data.datasets import DataConfig, build_dataset  # noqa: E402
from molequi.errors import DatasetError, FormatError  # noqa: E402


def crystals(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        a = bulk("Cu", "fcc", a=3.6 + 0.01 * i, cubic=True)
        a.numbers[0] = 8
        a.rattle(0.05, seed=seed * 100 + i)
        a.calc = SinglePointCalculator(a, energy=float(rng.normal()), forces=rng.normal(size=(len(a), 3)),
                                       stress=rng.normal(size=6))
        out.append(a)
    return out


def write(path, frames, **data):
    with LMDBDatabase(path) as db:
        for a in frames:
            db.write(a, data=data or None)
    return path


def test_rows_become_records_with_their_labels(tmp_path):
    frames = crystals(3, 0) + crystals(2, 1)
    write(tmp_path / "a.aselmdb", frames[:3])
    write(tmp_path / "b.aselmdb", frames[3:])
    ds = AseLmdbDataset(tmp_path)
    assert len(ds) == 5 and ds.lazy
    for i, ref in enumerate(frames):
        rec = ds[i]
        np.testing.assert_allclose(rec[K.POS].numpy(), ref.positions, atol=1e-6)  # float32 records
        np.testing.assert_array_equal(rec[K.NUMBERS].numpy(), ref.numbers)
        assert float(rec[K.ENERGY]) == pytest.approx(ref.get_potential_energy(), abs=1e-6)
        np.testing.assert_allclose(rec[K.FORCES].numpy(), ref.get_forces(), atol=1e-6)
        s = ref.get_stress()
        expect = np.array([[s[0], s[5], s[4]], [s[5], s[1], s[3]], [s[4], s[3], s[2]]])
        np.testing.assert_allclose(rec[K.STRESS].numpy().reshape(3, 3), expect, atol=1e-6)
    assert ds[-1][K.ENERGY] == ds[4][K.ENERGY]
    copy = pickle.loads(pickle.dumps(ds))  # DataLoader workers get a handle-free copy
    assert float(copy[2][K.ENERGY]) == float(ds[2][K.ENERGY])


def test_molecules_and_other_label_keys(tmp_path):
    m = molecule("CH3CH2OH")
    m.calc = SinglePointCalculator(m, energy=-1.5, forces=np.ones((len(m), 3)))
    write(tmp_path / "mol.aselmdb", [m], dft_energy=-7.25)
    rec = AseLmdbDataset(tmp_path / "mol.aselmdb")[0]
    assert float(rec[K.ENERGY]) == pytest.approx(-1.5) and K.STRESS not in rec
    other = AseLmdbDataset(tmp_path / "mol.aselmdb", energy_key="dft_energy")[0]
    assert float(other[K.ENERGY]) == pytest.approx(-7.25)
    with pytest.raises(DatasetError, match="no field 'nope'"):
        AseLmdbDataset(tmp_path / "mol.aselmdb", energy_key="nope")[0]


def test_dataset_name_flat_and_fairchem_split_folders(tmp_path):
    write(tmp_path / "flat.aselmdb", crystals(4, 2))
    flat = build_dataset(DataConfig(name="aselmdb", root=str(tmp_path / "flat.aselmdb")))
    assert isinstance(flat, AseLmdbDataset) and len(flat) == 4
    (tmp_path / "omat" / "train").mkdir(parents=True)
    (tmp_path / "omat" / "val").mkdir()
    write(tmp_path / "omat" / "train" / "data.0000.aselmdb", crystals(3, 3))
    write(tmp_path / "omat" / "val" / "data.0000.aselmdb", crystals(1, 4))
    splits = build_dataset(DataConfig(name="aselmdb", root=str(tmp_path / "omat")))
    assert len(splits["train"]) == 3 and len(splits["val"]) == 1 and "test" not in splits


def test_training_reads_on_access(tmp_path):
    """A flat .aselmdb trains through molequi.train with lazy splits (index views, nothing read up front)."""
    from molequi.config import Config
    from molequi.train.data import load_splits
    from molequi.train.run import train

    write(tmp_path / "d.aselmdb", crystals(6, 5))
    cfg = Config.from_dict({
        "model": {"name": "mace", "r_max": 3.0, "hidden_irreps": "4x0e+4x1o", "max_ell": 1, "correlation": 1,
                  "num_interactions": 1, "radial_MLP": [4], "MLP_irreps": "2x0e"},
        "data": {"name": "aselmdb", "root": str(tmp_path / "d.aselmdb"), "n_valid": 2},
        "optim": {"scheduler": "none"},
        "trainer": {"max_steps": 2, "batch_size": 2, "accelerator": "cpu", "devices": 1,
                    "output": str(tmp_path / "run"), "progress_bar": False},
    })
    splits = load_splits(cfg.data)
    assert isinstance(splits["train"], torch.utils.data.Subset) and len(splits["train"]) == 4
    assert getattr(splits["valid"], "lazy", False) and len(splits["valid"]) == 2
    result = train(cfg, enable_summary=False)
    assert result.global_step == 2


def test_not_an_aselmdb_is_named(tmp_path):
    bad = tmp_path / "x.aselmdb"
    bad.write_bytes(b"not lmdb at all" * 10)
    with pytest.raises(FormatError, match="x.aselmdb"):
        AseLmdbDataset(bad)
    with pytest.raises(DatasetError, match="no \\*.aselmdb files"):
        AseLmdbDataset(_empty(tmp_path))


def _empty(tmp_path):
    d = tmp_path / "empty"
    d.mkdir()
    return d
