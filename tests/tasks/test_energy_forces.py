"""EnergyForcesTask: the loss it states, metrics that are exact over batches, per-element force MAE."""

import math

import numpy as np
import pytest
import torch
from ase import Atoms
from torch_geometric.data import Batch

from molequi import keys as K
from molequi.data.records import atoms_to_data
from molequi.tasks.base import RunningSums, Task
from molequi.tasks.energy_forces import EnergyForcesTask, LossWeights


class FixedOutputs(torch.nn.Module):
    """A stand-in model returning the labels plus known offsets."""

    def __init__(self, de: float, df: float):
        super().__init__()
        self.de, self.df = de, df
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, data, compute_forces=True, compute_stress=False):
        n = data[K.ENERGY].shape[0]
        return {K.ENERGY: data[K.ENERGY].reshape(-1) + self.de + self.w, K.ENERGIES: torch.zeros(n),
                K.FORCES: data[K.FORCES] + self.df}


def batch_of(sizes, seed=0):
    rng = np.random.default_rng(seed)
    recs = []
    for n in sizes:
        atoms = Atoms(numbers=[1] * (n - 1) + [8], positions=rng.normal(size=(n, 3)) * 3)
        recs.append(atoms_to_data(atoms, energy=float(rng.normal()), forces=rng.normal(size=(n, 3)),
                                  validate=False))
    return Batch.from_data_list(recs)


def test_mse_loss_matches_its_definition():
    batch = batch_of([3, 5])
    task = EnergyForcesTask(FixedOutputs(0.3, 0.1), EnergyForcesTask.Config(weights=LossWeights(2.0, 10.0)))
    loss, logs = task.loss(batch, task(batch))
    e_term = np.mean([(0.3 / 3) ** 2, (0.3 / 5) ** 2])
    assert float(logs["loss_energy"]) == pytest.approx(e_term, rel=1e-5)
    assert float(logs["loss_forces"]) == pytest.approx(0.01, rel=1e-5)
    assert float(loss) == pytest.approx(2 * e_term + 10 * 0.01, rel=1e-5)


def test_huber_loss_is_linear_beyond_delta():
    batch = batch_of([4])
    cfg = EnergyForcesTask.Config(weights=LossWeights(0.0, 1.0), loss="huber", huber_delta=0.01)
    task = EnergyForcesTask(FixedOutputs(0.0, 0.5), cfg)
    loss, _ = task.loss(batch, task(batch))
    assert float(loss) == pytest.approx(0.01 * (0.5 - 0.5 * 0.01), rel=1e-5)
    with pytest.raises(ValueError, match="mse' or 'huber"):
        EnergyForcesTask.Config(loss="l1")


def test_metrics_are_exact_over_batches_and_units_are_meV():
    task = EnergyForcesTask(FixedOutputs(0.002, -0.004))
    for seed, sizes in enumerate([[3, 5], [4]]):
        b = batch_of(sizes, seed)
        task.update_metrics(b, task(b))
    m = task.compute_metrics()
    assert m["energy_mae_meV"] == pytest.approx(2.0, rel=1e-4)
    assert m["energy_rmse_meV"] == pytest.approx(2.0, rel=1e-4)
    assert m["energy_mae_meV_atom"] == pytest.approx(np.mean([2 / 3, 2 / 5, 2 / 4]), rel=1e-4)
    assert m["forces_mae_meV_A"] == pytest.approx(4.0, rel=1e-3)
    assert m["forces_mae_meV_A_H"] == pytest.approx(4.0, rel=1e-3)
    assert m["forces_mae_meV_A_O"] == pytest.approx(4.0, rel=1e-3)
    assert "stress_mae_meV_A3" not in m
    task.reset_metrics()
    assert task.compute_metrics() == {}


def test_running_sums_ratio_of_sums_not_mean_of_means():
    r = RunningSums()
    r.add("x", torch.tensor(10.0), 10)
    r.add("x", torch.tensor(1.0), 1)
    assert r.mean("x") == pytest.approx(1.0)
    assert math.isnan(r.mean("missing"))
    r.add("v", torch.tensor([1.0, 0.0, 4.0]), torch.tensor([1.0, 0.0, 2.0]))
    assert r.elementwise_mean("v") == {0: 1.0, 2: 2.0}
    r.sync()  # no process group: a no-op
    assert r.mean("x") == pytest.approx(1.0)


def test_base_task_contract():
    t = Task(torch.nn.Linear(1, 1))
    assert isinstance(t.config, Task.Config) and t.export_model() is t.model
    with pytest.raises(NotImplementedError):
        t(None)
    assert EnergyForcesTask.needs_grad_in_eval and EnergyForcesTask.name == "energy_forces"
    assert isinstance(EnergyForcesTask.from_config(None, FixedOutputs(0, 0)).config, EnergyForcesTask.Config)
