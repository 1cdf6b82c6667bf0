"""Fit energies, forces and (optionally) stress of a force field.

Loss (per batch of B structures with n_b atoms each, N atoms in total)::

    L = w_E * mean_b rho((E_b^pred - E_b) / n_b)                    per-atom energy, eV/atom
      + w_F * mean_{i,a} rho(F_ia^pred - F_ia)                       force components, eV/Å
      + w_S * mean_{b,a,c} rho(sigma_bac^pred - sigma_bac)           stress components, eV/Å^3

with rho(x) = x^2 (``loss: mse``) or the Huber function with threshold ``huber_delta`` (``loss: huber``).
Terms whose labels are absent from the batch, or whose weight is 0, are skipped. Records with MACE's
per-frame weights (``keys.WEIGHT`` x ``keys.ENERGY_WEIGHT`` / ``FORCES_WEIGHT`` / ``STRESS_WEIGHT``, read from
extended XYZ's config_weight and config_<property>_weight) multiply each frame's (each atom's) rho by them
inside the mean, as mace-torch's weighted losses do.

Metrics (exact over the whole validation / test set; "component" MAE as MACE and NequIP report it)::

    energy_mae_meV, energy_rmse_meV                 |E^pred - E|, meV per structure
    energy_mae_meV_atom, energy_rmse_meV_atom       |E^pred - E| / n, meV/atom
    forces_mae_meV_A, forces_rmse_meV_A             over all force components, meV/Å
    forces_mae_meV_A_<symbol>                       the same restricted to atoms of one element
    stress_mae_meV_A3, stress_rmse_meV_A3           over all stress components (when labelled)
    loss                                            the weighted loss above, averaged over structures
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from ase.data import chemical_symbols
from torch.nn import functional as F
from torch_geometric.utils import scatter

from molequi import keys as K
from molequi.response import batch_vector
from molequi.tasks.base import Logs, Task
from molequi.units import MEV

E0_MODES = ("fit", "average", "isolated_atoms")


@dataclass
class LossWeights:
    energy: float = field(default=1.0, metadata={"help": "weight of the per-atom energy term (eV/atom)^2"})
    forces: float = field(default=100.0, metadata={"help": "weight of the force term (eV/Å)^2"})
    stress: float = field(default=0.0, metadata={"help": "weight of the stress term (eV/Å^3)^2"})


class EnergyForcesTask(Task):
    """Energy + forces (+ stress) regression for a model with the ``molequi.models`` interface."""

    name = "energy_forces"
    needs_grad_in_eval = True  # forces are -dE/dpos
    monitor = "loss"

    @dataclass
    class Config:
        weights: LossWeights = field(default_factory=LossWeights,
                                     metadata={"help": "loss weights of energy, forces and stress"})
        loss: str = field(default="mse", metadata={"help": "mse or huber"})
        huber_delta: float = field(default=0.01, metadata={"help": "threshold of the Huber loss "
                                                                     "(in the units of each term)"})
        E0s: str | dict[int | str, float] = field(default="fit", metadata={"help": (
            "per-element reference energies E0 of a new run (mace-torch's --E0s; molequi.train.e0s): fit "
            "(least squares over the training frames with an energy, all of which stay in training), "
            "average (mace-torch's compute_average_E0s: the same least squares once the single-atom "
            "config_type=IsolatedAtom frames are removed from the data), isolated_atoms (the energies of "
            "those IsolatedAtom frames, which are removed from the data), or a mapping {Z or symbol: eV} "
            "such as {1: -13.6, 8: -2041.3}; an element without E0 is a MissingE0Error. Fine-tuning "
            "(model.init_from) keeps the checkpoint's E0s")})

        def __post_init__(self):
            if self.loss not in ("mse", "huber"):
                raise ValueError(f"loss must be 'mse' or 'huber', got {self.loss!r}")
            if isinstance(self.E0s, str) and self.E0s not in E0_MODES:
                raise ValueError(f"E0s must be one of {', '.join(E0_MODES)} or a mapping {{Z: eV}}, "
                                 f"got {self.E0s!r}")

    def _rho(self, pred: torch.Tensor, target: torch.Tensor,
             weight: torch.Tensor | None = None) -> torch.Tensor:
        """mean rho(pred - target), each row multiplied by ``weight`` (rows,) when given (MACE's weights)."""
        reduction = "mean" if weight is None else "none"
        if self.config.loss == "huber":
            r = F.huber_loss(pred, target, delta=self.config.huber_delta, reduction=reduction)
        else:
            r = F.mse_loss(pred, target, reduction=reduction)
        if weight is None:
            return r
        return (weight.to(r.dtype).reshape(-1, *([1] * (r.dim() - 1))) * r).mean()

    def _wants_stress(self, batch) -> bool:
        return self.config.weights.stress > 0 and K.STRESS in batch

    def forward(self, batch) -> dict[str, torch.Tensor]:
        return self.model(batch, compute_forces=True, compute_stress=self._wants_stress(batch))

    def loss(self, batch, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Logs]:
        w = self.config.weights
        n_atoms = _atoms_per_structure(batch).to(outputs[K.ENERGY].dtype)
        total = outputs[K.ENERGY].new_zeros(())
        logs: Logs = {}
        if w.energy > 0 and K.ENERGY in batch:
            e = self._rho(outputs[K.ENERGY] / n_atoms, batch[K.ENERGY].reshape(-1) / n_atoms,
                          _frame_weights(batch, K.ENERGY_WEIGHT))
            total = total + w.energy * e
            logs["loss_energy"] = e.detach()
        if w.forces > 0 and K.FORCES in batch and K.FORCES in outputs:
            fw = _frame_weights(batch, K.FORCES_WEIGHT)
            f = self._rho(outputs[K.FORCES], batch[K.FORCES], None if fw is None else fw[batch_vector(batch)])
            total = total + w.forces * f
            logs["loss_forces"] = f.detach()
        if w.stress > 0 and K.STRESS in batch and K.STRESS in outputs:
            s = self._rho(outputs[K.STRESS], batch[K.STRESS].reshape(-1, 3, 3),
                          _frame_weights(batch, K.STRESS_WEIGHT))
            total = total + w.stress * s
            logs["loss_stress"] = s.detach()
        logs["loss"] = total.detach()
        return total, logs

    def update_metrics(self, batch, outputs: dict[str, torch.Tensor]) -> None:
        r = self.running
        n_atoms = _atoms_per_structure(batch).double()
        if K.ENERGY in batch:
            de = (outputs[K.ENERGY].detach().double() - batch[K.ENERGY].reshape(-1).double())
            r.add("e_abs", de.abs().sum(), de.numel())
            r.add("e_sq", (de**2).sum(), de.numel())
            r.add("ea_abs", (de / n_atoms).abs().sum(), de.numel())
            r.add("ea_sq", ((de / n_atoms) ** 2).sum(), de.numel())
        if K.FORCES in batch and K.FORCES in outputs:
            df = outputs[K.FORCES].detach().double() - batch[K.FORCES].double()
            r.add("f_abs", df.abs().sum(), df.numel())
            r.add("f_sq", (df**2).sum(), df.numel())
            z = batch[K.NUMBERS]
            per_z = scatter(df.abs().sum(dim=1), z, dim=0, dim_size=len(chemical_symbols), reduce="sum")
            cnt_z = scatter(torch.full_like(df[:, 0], 3.0), z, dim=0, dim_size=len(chemical_symbols),
                            reduce="sum")
            r.add("f_abs_z", per_z, cnt_z)
        if K.STRESS in batch and K.STRESS in outputs:
            ds = outputs[K.STRESS].detach().double() - batch[K.STRESS].reshape(-1, 3, 3).double()
            r.add("s_abs", ds.abs().sum(), ds.numel())
            r.add("s_sq", (ds**2).sum(), ds.numel())

    def compute_metrics(self) -> dict[str, float]:
        r = self.running
        out: dict[str, float] = {}
        if "e_abs" in r:
            out["energy_mae_meV"] = r.mean("e_abs") / MEV
            out["energy_rmse_meV"] = r.rms("e_sq") / MEV
            out["energy_mae_meV_atom"] = r.mean("ea_abs") / MEV
            out["energy_rmse_meV_atom"] = r.rms("ea_sq") / MEV
        if "f_abs" in r:
            out["forces_mae_meV_A"] = r.mean("f_abs") / MEV
            out["forces_rmse_meV_A"] = r.rms("f_sq") / MEV
            for z, v in sorted(r.elementwise_mean("f_abs_z").items()):
                out[f"forces_mae_meV_A_{chemical_symbols[z]}"] = v / MEV
        if "s_abs" in r:
            out["stress_mae_meV_A3"] = r.mean("s_abs") / MEV
            out["stress_rmse_meV_A3"] = r.rms("s_sq") / MEV
        return out


def _frame_weights(batch, field: str) -> torch.Tensor | None:
    """(B,) loss weights of one term: MACE's config_weight x config_<property>_weight (records read from
    extended XYZ that gives them, ``molequi.data.readers``); None when the batch has neither."""
    weights = [batch[k].reshape(-1) for k in (K.WEIGHT, field) if k in batch]
    if not weights:
        return None
    return weights[0] * weights[1] if len(weights) == 2 else weights[0]


def _atoms_per_structure(batch) -> torch.Tensor:
    """(B,) number of atoms of each structure in the batch."""
    b = batch_vector(batch)
    n_graphs = int(b.max()) + 1 if b.numel() else 1
    return torch.bincount(b, minlength=n_graphs)


__all__ = ["EnergyForcesTask", "LossWeights"]
