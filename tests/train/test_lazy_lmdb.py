"""An OC20 LMDB trains lazily: never a list, graphs built per item, statistics from a sample."""

import os

import numpy as np

from molequi.config import Config
from molequi.data.lmdb import LmdbDataset
from molequi.data.statistics import statistics_sample
from molequi.train.data import LazyGraphs, RecordsDataModule, load_splits, with_graphs
from molequi.train.run import train

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SLABS = os.path.join(ROOT, "data", "oc20", "emt_slabs.lmdb")


def config(tmp_path):
    return Config.from_dict({
        "model": {"name": "tiny", "r_max": 4.0, "hidden": 8},
        "data": {"name": "oc20_s2ef", "root": SLABS, "valid_fraction": 0.0},
        "optim": {"lr": 0.005, "scheduler": "none", "ema_decay": None, "grad_clip": None},
        "trainer": {"max_steps": 3, "batch_size": 4, "accelerator": "cpu", "devices": 1,
                    "output": str(tmp_path / "run"), "progress_bar": False, "log_every": 1},
    })


def test_lmdb_stays_lazy_from_loading_to_the_loader(tmp_path):
    splits = load_splits(config(tmp_path).data)
    train_set = splits["train"]
    assert isinstance(train_set, LmdbDataset) and len(train_set) == 243
    graphs = with_graphs(train_set, 4.0)
    assert isinstance(graphs, LazyGraphs) and "edge_index" in graphs[5] and graphs[5].num_nodes >= 28
    loader = RecordsDataModule(graphs, [], [], 4, 4).train_dataloader()
    assert loader.dataset is graphs  # no list was made
    batch = next(iter(loader))
    assert batch.num_graphs == 4 and batch.edge_index.shape[0] == 2
    sample = statistics_sample(train_set, limit=10)
    assert len(sample) == 10 and isinstance(sample, list)


def test_training_from_an_lmdb(tmp_path):
    from torch_geometric.data import Batch

    from molequi.checkpoint import load_model

    result = train(config(tmp_path), enable_summary=False)
    assert result.global_step == 3
    model = load_model(result.model_path)
    slab = Batch.from_data_list([with_graphs(LmdbDataset(SLABS), 4.0)[0]])
    out = model(slab)
    assert out["forces"].shape == (slab.num_nodes, 3)
    assert np.isfinite(out["energy"].detach().numpy()).all()
