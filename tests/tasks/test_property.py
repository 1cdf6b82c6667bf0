"""Property task on real QM9 molecules: target lookup, readouts, units, a short run through the trainer."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from torch_geometric.data import Batch

from molequi.config import Config
from molequi.data.qm9 import read_qm9_xyz
from molequi.errors import DatasetError
from molequi.tasks.property import PropertyTask

QM9 = Path(__file__).resolve().parents[2] / "data" / "qm9" / "crescendo"


class SumOfOnes(torch.nn.Module):
    """Per-atom output 1 (so the sum readout counts atoms), plus a learnable bias."""

    def __init__(self):
        super().__init__()
        self.b = torch.nn.Parameter(torch.zeros(()))

    def forward(self, batch, compute_forces=False, compute_stress=False):
        e = torch.ones(batch.pos.shape[0]) + self.b
        return {"energies": e, "energy": torch.zeros(int(batch.num_graphs))}


@pytest.fixture(scope="module")
def molecules():
    return read_qm9_xyz(QM9)


def test_target_columns_units_and_readouts(molecules):
    batch = Batch.from_data_list(molecules[:4])
    t = PropertyTask(SumOfOnes(), PropertyTask.Config(target="U0", shift=0.0, scale=2.0))
    assert t.readout == "sum" and t.unit == "eV" and t.index == 7
    assert torch.allclose(t.target(batch), batch.y[:, 7])
    n = torch.bincount(batch.batch).float()
    assert torch.allclose(t(batch)["property"], 2.0 * n)  # scale * sum(1)
    g = PropertyTask(SumOfOnes(), PropertyTask.Config(target="gap", shift=1.0, scale=3.0))
    assert g.readout == "mean" and g.index == 4
    assert torch.allclose(g(batch)["property"], torch.full((4,), 4.0))
    mu = PropertyTask(SumOfOnes(), PropertyTask.Config(target="mu"))
    assert mu.unit == "D" and mu.index == 0
    g.update_metrics(batch, {"property": batch.y[:, 4] + 0.01})
    m = g.compute_metrics()
    assert m["gap_mae_eV"] == pytest.approx(0.01, rel=1e-3) and m["gap_mae_meV"] == pytest.approx(
        10.0, rel=1e-3
    )
    with pytest.raises(DatasetError, match="valid targets"):
        PropertyTask(SumOfOnes(), PropertyTask.Config(target="bandgap"))


def test_first_batch_sets_normalisation(molecules):
    batch = Batch.from_data_list(molecules[:8])
    t = PropertyTask(SumOfOnes(), PropertyTask.Config(target="U0"))
    t.train()
    t(batch)
    # per-element references fitted on the batch reproduce U0 to within a few eV (QM9 atom energies:
    # H -13.6 eV, C -1029.9 eV, N -1485.3 eV, O -2042.6 eV)
    refs = torch.stack([t.ref[d.numbers].sum() for d in molecules[:8]])
    assert (refs.double() - batch.y[:, 7].double()).abs().max() < 5.0
    assert -1040 < float(t.ref[6]) < -1020 and float(t.scale) < 1.0
    assert {"ref", "scale", "initialised"} <= set(t.state_dict())


def test_egnn_trains_on_qm9_u0_through_the_trainer(tmp_path, molecules):
    from molequi.train.run import train

    cfg = Config.from_dict(
        {
            "model": {"name": "egnn", "r_max": 4.0, "hidden_channels": 16, "num_layers": 2},
            "task": {"name": "property", "target": "U0"},
            "optim": {"lr": 0.005, "scheduler": "none", "ema_decay": 0.0, "grad_clip": None},
            "trainer": {
                "max_steps": 30,
                "batch_size": 8,
                "accelerator": "cpu",
                "devices": 1,
                "output": str(tmp_path / "run"),
                "progress_bar": False,
                "log_every": 5,
                "val_every_steps": 15,
            },
        }
    )
    result = train(
        cfg, splits={"train": molecules[:16], "valid": molecules[16:], "test": []}, enable_summary=False
    )
    metrics = result.metrics["valid"]
    assert result.global_step == 30
    assert "U0_mae_eV" in metrics and "U0_mae_meV" in metrics and math.isfinite(metrics["U0_mae_eV"])
    # U0 spans -1101 eV (methane) .. about -11000 eV; the per-element references put it within eV
    assert metrics["U0_mae_eV"] < 5.0
