"""The task: what a model is trained to do (loss) and how it is judged (metrics), kept apart from the model.

A ``Task`` is a ``torch.nn.Module`` that holds the model (``task.model``), so the trainer optimises and
checkpoints ``task.parameters()``; inference code only ever needs ``task.model``.

The trainer (``molequi.train``) calls, per batch (a PyG ``Batch`` of records, see ``molequi.keys``)::

    training:    outputs = task(batch);  loss, logs = task.loss(batch, outputs);  loss.backward()
    validation:  with torch.set_grad_enabled(task.needs_grad_in_eval):
                     outputs = task(batch);  loss, logs = task.loss(batch, outputs)
                 task.update_metrics(batch, outputs)                 # once per batch
    epoch end:   metrics = task.compute_metrics();  task.reset_metrics()

Metrics are accumulated as *sums* in ``task.running`` (a ``RunningSums``), so they add exactly across
batches and across processes (``RunningSums.sync`` all-reduces them under DDP before ``compute_metrics``);
a metric is then a ratio of sums (MAE = sum|err| / count, RMSE = sqrt(sum err^2 / count)), never a mean of
per-batch means.

Writing a task::

    class MyTask(Task):
        name = "my_task"
        needs_grad_in_eval = False

        @dataclass
        class Config:
            weight: float = 1.0          # documented field; YAML key ``task.weight``

        def forward(self, batch):        return {"y": self.model(batch)}
        def loss(self, batch, outputs):  l = ((outputs["y"] - batch.y) ** 2).mean(); return l, {"mse": l}
        def update_metrics(self, batch, outputs):
            self.running.add("y_abs", (outputs["y"] - batch.y).abs().sum(), count=batch.y.numel())
        def compute_metrics(self):       return {"y_mae": self.running.mean("y_abs")}

and register it by name in ``molequi.tasks.TASKS`` (``"my_task": "my.module:MyTask"``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

Logs = dict[str, torch.Tensor | float]


class RunningSums:
    """Named running sums with counts, in float64 on the CPU, that add across batches and processes.

    ``add(name, total, count)`` accumulates ``total`` (a scalar or a fixed-shape tensor, e.g. a (119,)
    per-element vector) and ``count`` (same shape or scalar). ``mean(name)`` = total / count;
    ``rms(name)`` = sqrt(total / count) for sums of squares.
    """

    def __init__(self) -> None:
        self.totals: dict[str, torch.Tensor] = {}
        self.counts: dict[str, torch.Tensor] = {}

    def add(self, name: str, total: torch.Tensor | float, count: torch.Tensor | float = 1) -> None:
        total = torch.as_tensor(total).detach().to("cpu", torch.float64)
        count = torch.as_tensor(count).detach().to("cpu", torch.float64)
        if name in self.totals:
            self.totals[name] = self.totals[name] + total
            self.counts[name] = self.counts[name] + count
        else:
            self.totals[name] = total.clone()
            same = count.shape == total.shape
            self.counts[name] = count.clone() if same else count.expand_as(total).clone()

    def __contains__(self, name: str) -> bool:
        return name in self.totals

    def mean(self, name: str) -> float:
        """total / count for a scalar sum (NaN if nothing was added)."""
        if name not in self.totals:
            return math.nan
        c = float(self.counts[name].sum())
        return float(self.totals[name].sum()) / c if c > 0 else math.nan

    def rms(self, name: str) -> float:
        """sqrt(total / count): the RMS of a quantity whose squares were summed under ``name``."""
        m = self.mean(name)
        return math.sqrt(m) if m == m else math.nan

    def elementwise_mean(self, name: str) -> dict[int, float]:
        """{index: total[i] / count[i]} for the entries of a vector sum that received any count."""
        if name not in self.totals:
            return {}
        t, c = self.totals[name].reshape(-1), self.counts[name].reshape(-1)
        return {i: float(t[i] / c[i]) for i in torch.nonzero(c > 0).reshape(-1).tolist()}

    def reset(self) -> None:
        self.totals.clear()
        self.counts.clear()

    def sync(self) -> None:
        """Sum the running totals over all processes of an initialised ``torch.distributed`` group.

        Processes may have seen different names (one rank got no stress label, say), so the dicts are
        exchanged as Python objects first; they are a few numbers, so the cost is negligible.
        """
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
            return
        gathered: list[Any] = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (self.totals, self.counts))
        totals: dict[str, torch.Tensor] = {}
        counts: dict[str, torch.Tensor] = {}
        for t_part, c_part in gathered:
            for name, value in t_part.items():
                totals[name] = totals[name] + value if name in totals else value.clone()
                counts[name] = counts[name] + c_part[name] if name in counts else c_part[name].clone()
        self.totals, self.counts = totals, counts


class Task(torch.nn.Module):
    """Base class of every task: a model plus its loss and metrics.

    Subclasses set ``name``, define a nested ``Config`` dataclass (fields documented with a comment or
    ``field(metadata={"help": ...})``, so ``molequi init-config`` can print them) and implement
    ``forward``, ``loss``, ``update_metrics`` and ``compute_metrics``.

    Attributes::

      model                 the wrapped ``torch.nn.Module`` (what a checkpoint exports for inference)
      config                the task's ``Config`` instance
      running               ``RunningSums`` for validation / test metrics
      needs_grad_in_eval    True when ``forward`` differentiates (forces by autograd), so the trainer keeps
                            autograd enabled during validation and test
      monitor               the metric name (from ``compute_metrics``) that early stopping, the plateau
                            schedule and "best" checkpoints watch (lower is better)
    """

    name: ClassVar[str] = "task"
    needs_grad_in_eval: ClassVar[bool] = False
    monitor: ClassVar[str] = "loss"

    @dataclass
    class Config:
        pass

    def __init__(self, model: torch.nn.Module, config: Any | None = None) -> None:
        super().__init__()
        self.model = model
        self.config = config if config is not None else type(self).Config()
        self.running = RunningSums()

    @classmethod
    def from_config(cls, cfg: Any, model: torch.nn.Module) -> Task:
        """Build the task around ``model`` from its ``Config`` (``None`` means the defaults)."""
        return cls(model, cfg if cfg is not None else cls.Config())

    # ---- per batch -------------------------------------------------------------------------------------
    def forward(self, batch) -> dict[str, torch.Tensor]:
        """Model outputs for ``batch`` (a dict of tensors; keys from ``molequi.keys`` where they apply)."""
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def loss(self, batch, outputs: dict[str, torch.Tensor]) -> tuple[torch.Tensor, Logs]:
        """Return ``(scalar loss to minimise, {name: value to log})`` for one batch."""
        raise NotImplementedError(f"{type(self).__name__}.loss")

    # ---- metrics ---------------------------------------------------------------------------------------
    def update_metrics(self, batch, outputs: dict[str, torch.Tensor]) -> None:
        """Add this batch's errors to ``self.running`` (sums and counts, never means)."""
        raise NotImplementedError(f"{type(self).__name__}.update_metrics")

    def compute_metrics(self) -> dict[str, float]:
        """Metrics from ``self.running`` (already synchronised across processes by the trainer)."""
        raise NotImplementedError(f"{type(self).__name__}.compute_metrics")

    def reset_metrics(self) -> None:
        self.running.reset()

    def sync_metrics(self) -> None:
        """Sum running metrics over DDP processes (the trainer calls this before ``compute_metrics``)."""
        self.running.sync()

    # ---- export ----------------------------------------------------------------------------------------
    def export_model(self) -> torch.nn.Module:
        """The module inference needs (default: ``self.model``)."""
        return self.model


__all__ = ["Task", "RunningSums", "Logs"]
