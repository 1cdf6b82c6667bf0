"""Hamiltonian task: loss on Fock-matrix elements and the QHNet metrics (H, epsilon, psi, HOMO/LUMO/gap).

Batch fields (``molequi.data.hamiltonian.record_to_data``): ``fock`` (sum nao^2,) Hartree and ``overlap``
(sum nao^2,), row-major flattened PySCF-ordered AO matrices concatenated over molecules; ``nao`` (B,);
``n_elec`` (B,). Model outputs: ``fock`` in the same layout (``molequi.models.hamiltonian.QHNet``).

Loss (QHNet):  L = w_mse * mean((H_pred - H)^2) + w_mae * mean(|H_pred - H|)   over all elements, Hartree.

Metrics (QHNet's definitions, Yu et al. 2023; n_occ = n_elec / 2, closed shell):
    h_mae_uha        MAE over all matrix elements, micro-Hartree
    eps_mae_uha      MAE of occupied orbital energies from H C = S C e (scipy ``eigh(H, S)``), micro-Hartree
    psi_cos_x100     mean over occupied orbitals of |cos(c_pred, c_true)| (AO coefficient vectors), x100
    homo/lumo/gap_mae_mev  MAE of HOMO, LUMO energies and HOMO-LUMO gap, meV
    h_diag_mae_uha / h_offdiag_mae_uha   MAE on the atom-diagonal / atom-off-diagonal blocks are not split
    here (the layout does not carry atoms); use ``hamiltonian_metrics`` with ``ao_offsets`` for that.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from molequi.errors import InputError
from molequi.tasks.base import Task
from molequi.units import HARTREE_TO_EV, MEV, MICRO_HARTREE


def split_matrices(flat: torch.Tensor, nao) -> list[torch.Tensor]:
    """(sum nao^2,) -> list of (nao_b, nao_b) matrices."""
    sizes = [int(k) for k in torch.as_tensor(nao).reshape(-1).tolist()]
    parts = torch.split(flat, [k * k for k in sizes])
    return [p.view(k, k) for p, k in zip(parts, sizes)]


def orbitals(h: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Solve H C = S C e (float64). Returns (e (nao,) Hartree ascending, C (nao, nao) columns = orbitals)."""
    import scipy.linalg

    h = 0.5 * (np.asarray(h, dtype=np.float64) + np.asarray(h, dtype=np.float64).T)
    return scipy.linalg.eigh(h, np.asarray(s, dtype=np.float64))


def hamiltonian_metrics(
    h_pred: np.ndarray, h_true: np.ndarray, s: np.ndarray, n_elec: int
) -> dict[str, float]:
    """Per-molecule errors (sums and counts are returned so callers can aggregate exactly).

    Returns {"h_abs": sum |dH| (Ha), "h_n": nao^2, "eps_abs": sum |de_occ| (Ha), "eps_n": n_occ,
    "psi_cos": sum |cos| over occupied, "homo_abs", "lumo_abs", "gap_abs" (Ha)}.
    """
    if n_elec % 2:
        raise InputError(f"open-shell molecule with {n_elec} electrons; the metrics assume closed shells")
    n_occ = n_elec // 2
    e_p, c_p = orbitals(h_pred, s)
    e_t, c_t = orbitals(h_true, s)
    occ = slice(0, n_occ)
    cos = np.abs(np.sum(c_p[:, occ] * c_t[:, occ], axis=0)) / (
        np.linalg.norm(c_p[:, occ], axis=0) * np.linalg.norm(c_t[:, occ], axis=0)
    )
    out = {
        "h_abs": float(np.abs(h_pred - h_true).sum()),
        "h_n": float(h_true.size),
        "eps_abs": float(np.abs(e_p[occ] - e_t[occ]).sum()),
        "eps_n": float(n_occ),
        "psi_cos": float(cos.sum()),
        "homo_abs": float(abs(e_p[n_occ - 1] - e_t[n_occ - 1])),
    }
    if n_occ < len(e_t):
        out["lumo_abs"] = float(abs(e_p[n_occ] - e_t[n_occ]))
        out["gap_abs"] = float(abs((e_p[n_occ] - e_p[n_occ - 1]) - (e_t[n_occ] - e_t[n_occ - 1])))
    return out


class HamiltonianTask(Task):
    """Fit predicted Fock matrices (Hartree) to PySCF labels; QHNet metrics (see module docstring)."""

    name = "hamiltonian"
    needs_grad_in_eval = False
    monitor = "h_mae_uha"

    @dataclass
    class Config:
        mse_weight: float = field(default=1.0, metadata={"help": "weight of the mean squared error (Ha^2)"})
        mae_weight: float = field(default=1.0, metadata={"help": "weight of the mean absolute error (Ha)"})
        orbital_metrics: bool = field(
            default=True,
            metadata={"help": "diagonalise H with S in validation for epsilon / psi / HOMO-LUMO metrics"},
        )

    def forward(self, batch):
        return self.model(batch)

    def loss(self, batch, outputs):
        diff = outputs["fock"] - batch.fock.to(outputs["fock"].dtype)
        mse = (diff**2).mean()
        mae = diff.abs().mean()
        loss = self.config.mse_weight * mse + self.config.mae_weight * mae
        return loss, {
            "h_mae_uha": mae.detach() / MICRO_HARTREE,
            "h_rmse_uha": mse.detach().sqrt() / MICRO_HARTREE,
        }

    @torch.no_grad()
    def update_metrics(self, batch, outputs):
        pred = outputs["fock"].detach().double().cpu()
        true = batch.fock.detach().double().cpu()
        self.running.add("h_abs", (pred - true).abs().sum(), count=true.numel())
        if not self.config.orbital_metrics:
            return
        nao = batch.nao.cpu()
        hp, ht = split_matrices(pred, nao), split_matrices(true, nao)
        ss = split_matrices(batch.overlap.detach().double().cpu(), nao)
        for a, b, s, ne in zip(hp, ht, ss, batch.n_elec.reshape(-1).tolist()):
            m = hamiltonian_metrics(a.numpy(), b.numpy(), s.numpy(), int(ne))
            self.running.add("eps_abs", m["eps_abs"], count=m["eps_n"])
            self.running.add("psi_cos", m["psi_cos"], count=m["eps_n"])
            self.running.add("homo_abs", m["homo_abs"], count=1)
            if "lumo_abs" in m:
                self.running.add("lumo_abs", m["lumo_abs"], count=1)
                self.running.add("gap_abs", m["gap_abs"], count=1)

    def compute_metrics(self):
        out = {"h_mae_uha": self.running.mean("h_abs") / MICRO_HARTREE}
        if "eps_abs" in self.running:
            out["eps_mae_uha"] = self.running.mean("eps_abs") / MICRO_HARTREE
            out["psi_cos_x100"] = 100.0 * self.running.mean("psi_cos")
            ha_to_mev = HARTREE_TO_EV / MEV
            out["homo_mae_mev"] = self.running.mean("homo_abs") * ha_to_mev
            out["lumo_mae_mev"] = self.running.mean("lumo_abs") * ha_to_mev
            out["gap_mae_mev"] = self.running.mean("gap_abs") * ha_to_mev
        return out


def evaluate_hamiltonian(model, data, *, batch_size: int = 16, indices=None) -> dict[str, float]:
    """Metrics of a Hamiltonian model on a ``HamiltonianStore`` path (or store): what ``molequi eval`` prints.

    Returns ``HamiltonianTask.compute_metrics()`` plus ``n_structures``.
    """
    from torch_geometric.loader import DataLoader

    from molequi.data.hamiltonian import HamiltonianDataset

    dtype = next(model.parameters()).dtype
    ds = HamiltonianDataset(data, indices=indices, dtype=dtype)
    task = HamiltonianTask(model).eval()
    with torch.no_grad():
        for batch in DataLoader([ds[i] for i in range(len(ds))], batch_size=batch_size):
            task.update_metrics(batch, task(batch))
    return {**task.compute_metrics(), "n_structures": len(ds)}


__all__ = ["HamiltonianTask", "evaluate_hamiltonian", "hamiltonian_metrics", "orbitals", "split_matrices"]
