"""Invariant property regression (QM9 U0, gap, dipole magnitude mu, ...) with any ``molequi.models`` model.

The model's per-atom invariant output ``energies`` (n,) is read out per structure and rescaled::

    sum readout  (extensive targets: U0, U, H, G, *_atom, zpve, Cv, alpha, r2)
        p_b = scale * sum_{i in b} e_i + sum_{i in b} ref[Z_i]
    mean readout (intensive targets: homo, lumo, gap, mu, A, B, C)
        p_b = scale * (1 / n_b) sum_{i in b} e_i + shift

``ref[Z]`` (per-element references, target units; the role QM9's atom energies play for U0) comes from a
least-squares fit y_b ~ sum_Z count_b(Z) ref[Z] on the first training batch (ridge 1e-6); ``scale`` is the
std of the per-atom residual. For ``mean``, ``shift``/``scale`` are the target's mean and std over that
batch. Config values of ``shift`` (a uniform per-atom reference for ``sum``) and ``scale`` take precedence;
all are buffers saved with the checkpoint. The target is ``batch[key][:, index]``: for QM9 records
(``molequi.data.qm9``) ``key="y"`` and ``index`` follows from the target name (``TARGETS``), in the units of
``TARGET_UNITS`` (energies in eV).

Loss: MSE (or L1) of ``(p - y) / scale``. Metrics, in the target's units (``<target>_mae_<unit>``,
``<target>_rmse_<unit>``; for eV targets also in meV): exact ratios of sums over the whole split.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch_geometric.utils import scatter

from molequi import keys as K
from molequi.errors import ConfigError, MissingKeyError
from molequi.response import batch_vector
from molequi.tasks.base import Logs, Task
from molequi.units import MEV

EXTENSIVE = {"U0", "U", "H", "G", "U0_atom", "U_atom", "H_atom", "G_atom", "zpve", "Cv", "alpha", "r2"}


def _resolve(target: str, key: str, index: int | None) -> tuple[int | None, str]:
    """Column index in ``batch[key]`` and the unit of ``target`` (QM9 names known; others: index as given)."""
    from molequi.data.qm9 import TARGET_UNITS, TARGETS, target_index

    if key == "y" and index is None:
        i = target_index(target)
        return i, TARGET_UNITS[TARGETS[i]]
    name = target if target in TARGET_UNITS else None
    return index, TARGET_UNITS.get(name, "") if name else ""


class PropertyTask(Task):
    """Regress one invariant per-structure property from the model's per-atom outputs."""

    name = "property"
    needs_grad_in_eval = False
    monitor = "mae"

    @dataclass
    class Config:
        target: str = field(
            default="U0",
            metadata={
                "help": "property name (QM9: mu, alpha, homo, lumo, gap, r2, "
                "zpve, U0, U, H, G, Cv, U0_atom, ..., A, B, C)"
            },
        )
        key: str = field(
            default="y", metadata={"help": "record field holding the property (QM9: y, 19 columns)"}
        )
        index: int | None = field(default=None, metadata={"help": "column of key (null: from the QM9 name)"})
        readout: str = field(
            default="auto", metadata={"help": "sum | mean | auto (sum for extensive targets)"}
        )
        loss: str = field(default="mse", metadata={"help": "mse or l1, on the standardised target"})
        shift: float | None = field(
            default=None, metadata={"help": "output shift (null: from the first batch)"}
        )
        scale: float | None = field(
            default=None, metadata={"help": "output scale (null: from the first batch)"}
        )
        unit: str | None = field(
            default=None, metadata={"help": "unit label of the metrics (null: known QM9 unit)"}
        )

        def __post_init__(self):
            if self.readout not in ("auto", "sum", "mean"):
                raise ConfigError(f"task.readout must be sum, mean or auto, got {self.readout!r}")
            if self.loss not in ("mse", "l1"):
                raise ConfigError(f"task.loss must be mse or l1, got {self.loss!r}")

    def __init__(self, model: torch.nn.Module, config: Config | None = None) -> None:
        super().__init__(model, config)
        c = self.config
        self.index, unit = _resolve(c.target, c.key, c.index)
        self.unit = c.unit if c.unit is not None else unit
        self.readout = c.readout if c.readout != "auto" else ("sum" if c.target in EXTENSIVE else "mean")
        self.register_buffer("shift", torch.tensor(0.0 if c.shift is None else float(c.shift)))
        self.register_buffer("scale", torch.tensor(1.0 if c.scale is None else float(c.scale)))
        self.register_buffer("ref", torch.zeros(119))  # per-element reference (sum readout), target units
        if c.shift is not None:
            self.ref.fill_(float(c.shift))
        self.register_buffer("initialised", torch.tensor(c.shift is not None and c.scale is not None))

    # ---- helpers ---------------------------------------------------------------------------------------
    def target(self, batch) -> torch.Tensor:
        """(B,) property of each structure."""
        key = self.config.key
        if key not in batch:
            raise MissingKeyError(
                f"batch has no '{key}' field for property '{self.config.target}'",
                hint="use a dataset that stores it (e.g. qm9) or set task.key",
            )
        y = batch[key]
        n_graphs = int(batch.num_graphs) if hasattr(batch, "num_graphs") else 1
        y = y.reshape(n_graphs, -1)
        return y[:, self.index] if self.index is not None else y[:, 0]

    @staticmethod
    def _atoms(batch) -> tuple[torch.Tensor, torch.Tensor]:
        b = batch_vector(batch)
        n_graphs = int(batch.num_graphs) if hasattr(batch, "num_graphs") else 1
        return b, torch.bincount(b, minlength=n_graphs)

    @torch.no_grad()
    def _initialise(self, batch) -> None:
        y = self.target(batch).double()
        b, n = self._atoms(batch)
        if self.readout == "sum":
            z = batch[K.NUMBERS].long()
            counts = torch.zeros(n.numel(), 119, dtype=torch.float64)
            counts.index_put_((b, z), torch.ones_like(z, dtype=torch.float64), accumulate=True)
            if self.config.shift is None:
                used = counts.sum(0) > 0
                a = counts[:, used]
                ref = torch.linalg.solve(a.T @ a + 1e-6 * torch.eye(a.shape[1], dtype=a.dtype), a.T @ y)
                self.ref.zero_()
                self.ref[used] = ref.to(self.ref.dtype)
            resid = (y - counts @ self.ref.double()) / n.double()
        else:
            if self.config.shift is None:
                self.shift.fill_(float(y.mean()))
            resid = y - float(self.shift)
        if self.config.scale is None:
            std = float(resid.std()) if resid.numel() > 1 else 0.0
            self.scale.fill_(std if std > 1e-8 else max(float(resid.abs().mean()), 1.0))
        self.initialised.fill_(True)

    # ---- per batch -------------------------------------------------------------------------------------
    def forward(self, batch) -> dict[str, torch.Tensor]:
        if self.training and not bool(self.initialised):
            self._initialise(batch)
        out = self.model(batch, compute_forces=False)
        b, n = self._atoms(batch)
        if K.ENERGIES in out:
            raw = scatter(out[K.ENERGIES], b, dim=0, dim_size=n.numel(), reduce="sum")
        else:
            raw = out[K.ENERGY].reshape(-1)
        n = n.to(raw.dtype)
        if self.readout == "sum":
            refs = scatter(
                self.ref.to(raw.dtype)[batch[K.NUMBERS].long()], b, dim=0, dim_size=n.numel(), reduce="sum"
            )
            pred = self.scale * raw + refs
        else:
            pred = self.scale * raw / n + self.shift
        return {"property": pred}

    def loss(self, batch, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Logs]:
        y = self.target(batch).to(outputs["property"].dtype)
        err = (outputs["property"] - y) / self.scale
        value = (err**2).mean() if self.config.loss == "mse" else err.abs().mean()
        return value, {"loss": value.detach()}

    def update_metrics(self, batch, outputs: dict[str, torch.Tensor]) -> None:
        d = outputs["property"].detach().double() - self.target(batch).double()
        self.running.add("abs", d.abs().sum(), d.numel())
        self.running.add("sq", (d**2).sum(), d.numel())

    def compute_metrics(self) -> dict[str, float]:
        t, u = self.config.target, self.unit or "units"
        mae, rmse = self.running.mean("abs"), self.running.rms("sq")
        out = {"mae": mae, f"{t}_mae_{u}": mae, f"{t}_rmse_{u}": rmse}
        if u == "eV":
            out[f"{t}_mae_meV"] = mae / MEV
            out[f"{t}_rmse_meV"] = rmse / MEV
        return out


__all__ = ["PropertyTask", "EXTENSIVE"]
