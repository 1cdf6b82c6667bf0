"""Overfitting the ten smallest QM9 molecules (ids 1-10, shipped in data/qm9_geometries) regenerates valid
molecules from that set. Tiny models and few steps keep each test well under a minute on two cores."""

from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch

from molequi.data.molecules import GeometryDataset, read_molecules
from molequi.tasks.generation_metrics import canonical_smiles_set, molecule_report

DATA = Path(__file__).resolve().parents[2] / "data" / "qm9_geometries" / "qm9_geometries.extxyz"
TRAIN_SMILES = canonical_smiles_set(["C", "N", "O", "C#C", "C#N", "C=O", "CC", "CO", "C#CC", "CC#N"])


def _batch(with_bonds=False):
    mols = read_molecules(str(DATA), limit=10)
    ds = GeometryDataset(mols, with_bonds=with_bonds)
    return Batch.from_data_list([ds[i] for i in range(10)] * 4)


def _train(model, batch, iters, lr):
    torch.manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr)
    model.train()
    for _ in range(iters):
        loss, _ = model.training_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return float(loss.detach())


@pytest.mark.slow
def test_edm_overfits_ten_molecules():
    from molequi.models.generative.edm import EDM

    batch = _batch()
    torch.manual_seed(0)
    model = EDM(EDM.Config(hidden=32, layers=3, timesteps=100))
    _train(model, batch, 700, 3e-3)
    r = molecule_report(model.sample(30, generator=torch.Generator().manual_seed(1)), TRAIN_SMILES)
    assert r["validity"] >= 50.0
    # what is valid is (nearly all) one of the ten training molecules
    known = [s for s in r["smiles"] if s in TRAIN_SMILES]
    assert len(known) >= 0.8 * len(r["smiles"])


@pytest.mark.slow
def test_categorical_overfits_ten_molecules():
    from molequi.models.generative.categorical import CategoricalDiffusion

    batch = _batch(with_bonds=True)
    torch.manual_seed(0)
    cfg = CategoricalDiffusion.Config(hidden=32, edge_hidden=16, layers=3, timesteps=100)
    model = CategoricalDiffusion(cfg)
    _train(model, batch, 400, 3e-3)
    r = molecule_report(model.sample(30, generator=torch.Generator().manual_seed(1)), TRAIN_SMILES)
    assert r["validity_strict"] >= 50.0 and r["molecule_stability"] >= 40.0
    known = [s for s in r["smiles"] if s in TRAIN_SMILES]
    assert len(known) >= 0.8 * len(r["smiles"])
