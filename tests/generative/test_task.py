"""Task 'diffusion' and the registries: the trainer's contract for the generative models."""

import pytest
import torch
from torch_geometric.data import Batch, Data

from molequi.config import get_task_class
from molequi.errors import ConfigError
from molequi.models import get_model_class


def _batch():
    recs = []
    for n in (3, 4, 5):
        d = Data(numbers=torch.tensor([6] + [1] * (n - 1)), pos=torch.randn(n, 3))
        d.num_nodes = n
        recs.append(d)
    return Batch.from_data_list(recs)


@pytest.mark.parametrize("name", ["edm", "eqgat_diff", "egnn_categorical"])
def test_task_contract(name):
    cls = get_model_class(name)
    cfg = cls.Config(hidden=8, layers=1, timesteps=10)
    model = cls.from_config(cfg, None)
    task = get_task_class("diffusion").from_config(None, model)
    batch = _batch()
    task.train()
    out = task(batch)
    loss, logs = task.loss(batch, out)
    loss.backward()
    assert loss.ndim == 0 and torch.isfinite(loss)
    task.eval()
    with torch.no_grad():
        task.update_metrics(batch, task(batch))
    metrics = task.compute_metrics()
    assert "loss" in metrics and metrics["loss"] == metrics["loss"]
    assert model.size_counts[3:6].tolist() == [1.0, 1.0, 1.0]  # only training batches count


def test_task_rejects_force_field():
    with pytest.raises(ConfigError):
        get_task_class("diffusion")(torch.nn.Linear(2, 2))
