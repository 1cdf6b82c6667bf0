"""Task ``diffusion``: train a generative model of 3D molecules (EDM or the categorical EQGAT-diff variant).

The model owns its objective (``model.training_loss(batch) -> (loss, logs)``: EDM's eps-MSE, or the
categorical model's weighted MSE + cross-entropies), because the objective *is* the model definition for
diffusion models; the task adapts it to the trainer and accumulates the validation loss as sums.

Validation metric ``loss`` is the same stochastic objective (random t and noise per molecule) averaged over
molecules: a noisy but unbiased estimate. Sample quality (stability, validity, ...) is measured by sampling,
which is far too slow for every validation round: use ``molequi generate`` on a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from molequi.errors import ConfigError
from molequi.models.base import GenerativeModel
from molequi.tasks.base import Logs, Task


class DiffusionTask(Task):
    name = "diffusion"
    needs_grad_in_eval = False
    monitor = "loss"

    @dataclass
    class Config:
        pass  # the objective's settings live in the model's Config (schedule, weights)

    def __init__(self, model: torch.nn.Module, config=None):
        if not isinstance(model, GenerativeModel):
            raise ConfigError(f"task 'diffusion' needs a generative model with training_loss(batch) "
                              f"(edm, eqgat_diff), got {type(model).__name__}")
        super().__init__(model, config)

    def forward(self, batch) -> dict[str, torch.Tensor]:
        loss, logs = self.model.training_loss(batch)
        return {"loss": loss, **logs}

    def loss(self, batch, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Logs]:
        logs: Logs = {k: v.detach() for k, v in outputs.items()}
        return outputs["loss"], logs

    def update_metrics(self, batch, outputs: dict[str, torch.Tensor]) -> None:
        b = int(getattr(batch, "num_graphs", 1) or 1)
        for k, v in outputs.items():
            self.running.add(k, v.detach() * b, count=b)

    def compute_metrics(self) -> dict[str, float]:
        return {k: self.running.mean(k) for k in self.running.totals}


__all__ = ["DiffusionTask"]
