"""Hamiltonian metrics on known inputs, the task's loss, and the SCF guess from an exact Fock matrix."""

import pytest
import torch

from molequi.tasks.hamiltonian import HamiltonianTask, hamiltonian_metrics, split_matrices


class _Echo(torch.nn.Module):
    """Returns the label plus a fixed offset, so metrics are known."""

    def __init__(self, offset: float):
        super().__init__()
        self.offset = offset
        self.w = torch.nn.Parameter(torch.zeros(()))

    def forward(self, batch):
        return {"fock": batch.fock + self.offset + self.w, "nao": batch.nao}


def _batch(water_labels):
    from torch_geometric.data import Batch

    from molequi.data.hamiltonian import record_to_data

    return Batch.from_data_list([record_to_data(r, dtype=torch.float64) for r in water_labels])


@pytest.mark.qm
def test_perfect_prediction_scores_zero_and_100(water_labels):
    task = HamiltonianTask(_Echo(0.0))
    b = _batch(water_labels)
    out = task(b)
    loss, logs = task.loss(b, out)
    assert float(loss.detach()) == 0.0
    task.update_metrics(b, out)
    m = task.compute_metrics()
    assert m["h_mae_uha"] == 0.0 and m["eps_mae_uha"] < 1e-6 and m["homo_mae_mev"] < 1e-6
    assert abs(m["psi_cos_x100"] - 100.0) < 1e-8


@pytest.mark.qm
def test_constant_shift_metrics(water_labels):
    # H + c S shifts every orbital energy by c and keeps the orbitals: eps MAE = c, psi = 100, gap unchanged
    rec = water_labels[0]
    c = 1e-3
    m = hamiltonian_metrics(rec.fock + c * rec.overlap, rec.fock, rec.overlap, rec.n_elec)
    assert abs(m["eps_abs"] / m["eps_n"] - c) < 1e-9
    assert abs(m["psi_cos"] / m["eps_n"] - 1.0) < 1e-9
    assert m["gap_abs"] < 1e-9
    # a constant added to every element: H MAE is exactly that constant (in micro-Hartree)
    task = HamiltonianTask(_Echo(2e-6))
    b = _batch(water_labels)
    task.update_metrics(b, task(b))
    assert abs(task.compute_metrics()["h_mae_uha"] - 2.0) < 1e-9


def test_split_matrices():
    flat = torch.arange(4 + 9, dtype=torch.float64)
    a, b = split_matrices(flat, torch.tensor([2, 3]))
    assert a.shape == (2, 2) and b.shape == (3, 3) and float(b[2, 2]) == 12.0


@pytest.mark.qm
def test_scf_from_exact_fock_converges_in_one_cycle(water_labels):
    from molequi.qc.scf import run_scf

    rec = water_labels[0]
    pred = run_scf(rec.numbers, rec.pos, fock=rec.fock, conv_tol=1e-9)
    ref = run_scf(rec.numbers, rec.pos, init_guess="minao", conv_tol=1e-9)
    assert pred["converged"] and ref["converged"]
    assert pred["cycles"] <= 2 < ref["cycles"]
    assert abs(pred["e_tot"] - ref["e_tot"]) < 1e-7
