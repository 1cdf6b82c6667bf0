"""Task ``diffusion``: train a generative model of 3D molecules (EDM, or categorical diffusion: EQGAT-diff).

The model owns its objective (``model.training_loss(batch) -> (loss, logs)``: EDM's eps-MSE, or the
categorical model's weighted MSE + cross-entropies), because the objective *is* the model definition for
diffusion models; the task adapts it to the trainer and accumulates the validation loss as sums.

Validation metric ``loss`` is the same stochastic objective (random t and noise per molecule) averaged over
molecules: a noisy but unbiased estimate. Sample quality (stability, validity, ...) is measured by sampling,
which is too slow for every validation round; ``sample_every`` / ``sample_every_steps`` make the trainer
sample ``sample_n`` molecules with the EMA weights now and then, as EDM's training does (its
``analyze_and_save`` every ``test_epochs``), and log atom / molecule stability and validity as
``sample/<metric>`` with a PNG of them over training (``molequi.train.sampling``). Otherwise use
``molequi generate`` on a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field

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
        """The objective's settings live in the model's Config (schedule, weights); these say how often the
        trainer measures sample quality during training."""

        sample_every: int | None = field(default=None, metadata={
            "help": "sample molecules every this many epochs and log their stability (null: never)"})
        sample_every_steps: int | None = field(default=None, metadata={
            "help": "the same every this many optimiser steps (null: never)"})
        sample_n: int = field(default=100, metadata={"help": "molecules sampled each time"})
        sample_steps: int | None = field(default=None, metadata={
            "help": "denoising steps of those samples (null: the model's timesteps)"})
        sample_batch_size: int = field(default=100, metadata={"help": "molecules per sampling batch"})
        sample_seed: int = field(default=0, metadata={
            "help": "seed of the sampling noise (the same every time, so rounds differ by the weights only; "
                    "training's random state is left untouched)"})

    def __init__(self, model: torch.nn.Module, config=None):
        if not isinstance(model, GenerativeModel):
            raise ConfigError(f"task 'diffusion' needs a generative model with training_loss(batch) "
                              f"(edm, eqgat_diff, egnn_categorical), got {type(model).__name__}")
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
        # keys starting with "_" are the trainer's own sums (its loss total), not metrics of this task
        return {k: self.running.mean(k) for k in self.running.totals if not k.startswith("_")}


__all__ = ["DiffusionTask"]
