"""LMDB datasets: restricted unpickling, PyG 1.x pickles, shards, length key, workers, DDP sampling."""

from __future__ import annotations

import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import torch_geometric.data.data as pyg_data_module
from torch.utils.data import DistributedSampler
from torch_geometric.data import Data
from torch_geometric.loader import DataLoader

from molequi.data.lmdb import LmdbDataset, close_envs, write_lmdb
from molequi.data.pickle_safe import UnsafePickleError, safe_loads
from molequi.errors import DatasetError, FormatError

DATA = Path(__file__).resolve().parents[2] / "data" / "oc20"
IS2RE = DATA / "is2re_kurniawan_not_oc20.lmdb"
S2EF = DATA / "oc20_real.lmdb"


def test_real_is2re_lmdb_without_length_key():
    ds = LmdbDataset(IS2RE)
    assert len(ds) == 68
    d = ds[0]
    assert d.numbers.tolist() == [21] * 20 + [19] and d.numbers.dtype == torch.long
    assert ds[67].numbers.tolist()[:5] == [8, 19, 73, 8, 8]
    assert d.pos.shape == (21, 3) and d.cell.shape == (1, 3, 3) and d.pbc.all()
    assert d.y_relaxed.item() == pytest.approx(-0.8713222080618858)
    assert d.y_init.item() == pytest.approx(-2.555855710100681)
    assert "edge_index" not in d and "tags" in d and "fixed" in d  # stored edges dropped, OC20 extras kept
    assert ds[-1].sid.item() == ds.get_raw(67).sid


def test_s2ef_lmdb_new_keys_and_length():
    ds = LmdbDataset(S2EF)
    assert len(ds) == 37
    assert ds[0].energy.item() == pytest.approx(-135.66393572, abs=1e-4)
    assert ds[0].forces.shape == (34, 3) and int(ds[0].fixed.sum()) == 24


def _pyg1_pickle(**fields) -> bytes:
    """Pickle a PyG 1.x-style Data (attributes in __dict__, no _store), as fairchem's old LMDBs hold."""

    class Data1x:
        def __init__(self, **kw):
            self.__dict__.update(kw)

    Data1x.__module__, Data1x.__name__, Data1x.__qualname__ = "torch_geometric.data.data", "Data", "Data"
    original = pyg_data_module.Data
    pyg_data_module.Data = Data1x
    try:
        return pickle.dumps(Data1x(**fields), protocol=4)
    finally:
        pyg_data_module.Data = original


def test_pyg1_pickles_with_old_target_names(tmp_path):
    items = [
        _pyg1_pickle(
            pos=torch.rand(3, 3) * 3,
            cell=torch.eye(3).view(1, 3, 3) * 10,
            atomic_numbers=torch.tensor([8.0, 1.0, 1.0]),
            natoms=3,
            tags=torch.tensor([2, 2, 2]),
            fixed=torch.zeros(3),
            y=-1.5 - i,
            force=torch.ones(3, 3) * i,
            sid=7,
            fid=i,
            __num_nodes__=None,
            edge_index=None,
        )
        for i in range(4)
    ]
    write_lmdb(items, tmp_path / "old.lmdb", length_key=False)
    ds = LmdbDataset(tmp_path / "old.lmdb")
    assert len(ds) == 4
    assert "_store" in ds.get_raw(2).__dict__
    d = ds[2]
    assert d.energy.item() == -3.5 and torch.equal(d.forces, torch.full((3, 3), 2.0))
    assert d.tags.tolist() == [2, 2, 2] and d.fid.item() == 2


def test_malicious_pickle_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    with pytest.raises(UnsafePickleError, match="refused to unpickle global posix.system"):
        safe_loads(pickle.dumps(Evil()))
    write_lmdb(
        [pickle.dumps(Data(pos=torch.zeros(1, 3), atomic_numbers=torch.ones(1))), pickle.dumps(Evil())],
        tmp_path / "evil.lmdb",
    )
    ds = LmdbDataset(tmp_path / "evil.lmdb")
    assert ds[0].numbers.tolist() == [1]
    with pytest.raises(UnsafePickleError, match=r"evil.lmdb, frame 1: refused"):
        ds[1]
    assert not marker.exists()
    import builtins

    class EvalAttack:
        def __reduce__(self):
            return (builtins.eval, ("1+1",))

    with pytest.raises(UnsafePickleError, match="builtins.eval"):
        safe_loads(pickle.dumps(EvalAttack()))


def test_shards_and_workers(tmp_path):
    raw = LmdbDataset(IS2RE, raw=True)
    write_lmdb((raw[i] for i in range(30)), tmp_path / "data.0000.lmdb")
    write_lmdb((raw[i] for i in range(30, 68)), tmp_path / "data.0001.lmdb", length_key=False)
    ds = LmdbDataset(tmp_path)
    assert len(ds) == 68 and [p.name for p in ds.shards] == ["data.0000.lmdb", "data.0001.lmdb"]
    assert ds.locate(30) == (1, 0)
    assert ds[45].sid.item() == LmdbDataset(IS2RE)[45].sid.item()
    sids = []
    for batch in DataLoader(ds, batch_size=16, num_workers=2):
        sids += batch.sid.tolist()
    assert sids == [LmdbDataset(IS2RE).get_raw(i).sid for i in range(68)]
    state = pickle.loads(pickle.dumps(ds))  # what a spawned worker receives: no lmdb handle inside
    assert state._envs is None and len(state) == 68


def test_distributed_sampler_partitions_the_dataset():
    ds = LmdbDataset(IS2RE)
    seen = []
    for rank in range(3):
        sampler = DistributedSampler(ds, num_replicas=3, rank=rank, shuffle=True, seed=0, drop_last=False)
        sampler.set_epoch(1)
        seen.append(list(sampler))
    assert all(len(s) == 23 for s in seen)  # ceil(68 / 3), padded
    assert set().union(*map(set, seen)) == set(range(68))


def test_truncated_and_foreign_files(tmp_path):
    cut = tmp_path / "cut.lmdb"
    cut.write_bytes(IS2RE.read_bytes()[:20000])
    with pytest.raises(FormatError, match="cut.lmdb: LMDB truncated: 20000 bytes on disk"):
        LmdbDataset(cut)  # refused before mmap: reading past the end of a mapping would be SIGBUS
    foreign = tmp_path / "foreign.lmdb"
    foreign.write_bytes(b"SQLite format 3\x00" + bytes(4096))
    with pytest.raises(FormatError, match="not an LMDB file"):
        LmdbDataset(foreign)
    with pytest.raises(DatasetError, match="no \\*.lmdb files"):
        LmdbDataset(tmp_path / "empty") if (tmp_path / "empty").mkdir() is None else None
    write_lmdb([b"\x80\x04not a pickle"], tmp_path / "junk.lmdb")
    with pytest.raises(FormatError, match="junk.lmdb, frame 0: cannot unpickle"):
        LmdbDataset(tmp_path / "junk.lmdb")[0]
    write_lmdb([pickle.dumps({"a": 1})], tmp_path / "dict.lmdb")
    with pytest.raises(FormatError, match="not a PyG Data"):
        LmdbDataset(tmp_path / "dict.lmdb")[0]


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    def items():
        yield Data(pos=torch.zeros(1, 3), atomic_numbers=torch.ones(1))
        raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError):
        write_lmdb(items(), tmp_path / "x.lmdb")
    assert list(tmp_path.iterdir()) == []
    close_envs()
    shutil.copy(S2EF, tmp_path / "s.lmdb")
    np.testing.assert_allclose(
        LmdbDataset(tmp_path / "s.lmdb")[3].energy.numpy(), LmdbDataset(S2EF)[3].energy
    )
