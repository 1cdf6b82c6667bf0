"""Sample quality during training of a generative model (task ``diffusion``: ``sample_every`` /
``sample_every_steps``).

``SampleQuality`` samples ``sample_n`` molecules with the EMA weights (the model EDM's training samples with,
``analyze_and_save`` on ``model_ema``) every ``sample_every`` epochs and / or ``sample_every_steps``
optimiser steps, measures them with ``molequi.tasks.generation_metrics.molecule_report`` (atom and molecule
stability, RDKit validity, uniqueness) and

- logs ``sample/atom_stability``, ``sample/molecule_stability``, ``sample/validity``, ``sample/uniqueness``
  (percent) and ``sample/seconds`` to the run's loggers at the current step,
- writes ``sample_quality.png`` (the metrics over optimiser steps) and ``sample_quality.json`` (the history)
  into the run directory, atomically.

The sampling noise comes from its own generator seeded with ``sample_seed`` each time, inside
``torch.random.fork_rng``: training's random state is the same with or without sampling, and so is a
resumed run. The history is part of the callback's state in Lightning checkpoints. Only the global rank 0
samples.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback

from molequi.errors import ConfigError
from molequi.io import atomic_write_text

METRICS = ("atom_stability", "molecule_stability", "validity", "uniqueness")


class SampleQuality(Callback):
    """Periodic sampling and stability metrics; see the module docstring."""

    def __init__(self, output: str | os.PathLike, *, every_epochs: int | None = None,
                 every_steps: int | None = None, n: int = 100, steps: int | None = None,
                 batch_size: int = 100, seed: int = 0):
        for name, value in (("sample_every", every_epochs), ("sample_every_steps", every_steps)):
            if value is not None and value < 1:
                raise ConfigError(f"task.{name} must be a positive integer or null, got {value}")
        if n < 1 or batch_size < 1:
            raise ConfigError(f"task.sample_n and task.sample_batch_size must be >= 1, got {n}, {batch_size}")
        self.output = Path(output)
        self.every_epochs, self.every_steps = every_epochs, every_steps
        self.n, self.steps, self.batch_size, self.seed = int(n), steps, int(batch_size), int(seed)
        self.history: list[dict] = []

    # ---- when ------------------------------------------------------------------------------------------
    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self.every_steps and trainer.global_step % self.every_steps == 0 and not self._done(trainer):
            self.sample_now(trainer, pl_module)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if (self.every_epochs and (trainer.current_epoch + 1) % self.every_epochs == 0
                and not self._done(trainer)):
            self.sample_now(trainer, pl_module)

    def _done(self, trainer) -> bool:
        """This step was measured already (epoch and step schedules falling on the same step)."""
        return bool(self.history) and self.history[-1]["step"] == trainer.global_step

    # ---- what ------------------------------------------------------------------------------------------
    def sample_now(self, trainer, pl_module) -> dict | None:
        """Sample, measure, log and plot once; returns the history entry (None on other ranks)."""
        if not trainer.is_global_zero:
            return None
        from molequi.tasks.generation_metrics import molecule_report

        model = pl_module.task.model
        if getattr(model.config, "context_dim", 0):
            raise ConfigError("task.sample_every: periodic sampling of a property-conditioned model is not "
                              "supported (it needs context values); sample it with molequi generate --context")
        device = next(model.parameters()).device
        ema = getattr(pl_module, "ema", None)
        t0 = time.perf_counter()
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), torch.no_grad(), \
                (ema.swapped_into(model) if ema is not None else contextlib.nullcontext()):
            generator = torch.Generator(device=device).manual_seed(self.seed)
            molecules = model.sample(self.n, steps=self.steps, batch_size=self.batch_size, generator=generator)
        report = molecule_report(molecules)
        entry = {"step": int(trainer.global_step), "epoch": int(trainer.current_epoch),
                 **{k: float(report[k]) for k in METRICS}, "seconds": time.perf_counter() - t0}
        self.history.append(entry)
        for logger in trainer.loggers:
            logger.log_metrics({f"sample/{k}": entry[k] for k in (*METRICS, "seconds")}, step=entry["step"])
        pl_module.print(f"step {entry['step']}: sampled {self.n} molecules in {entry['seconds']:.1f} s: "
                        + ", ".join(f"{k} {entry[k]:.1f}%" for k in METRICS))
        self.write(self.output)
        return entry

    def write(self, folder: Path) -> None:
        """``sample_quality.json`` and ``sample_quality.png`` of the history into ``folder``."""
        folder.mkdir(parents=True, exist_ok=True)
        atomic_write_text(folder / "sample_quality.json", json.dumps(self.history, indent=2) + "\n")
        plot_history(self.history, folder / "sample_quality.png")

    # ---- checkpoints -----------------------------------------------------------------------------------
    def state_dict(self) -> dict:
        return {"history": [dict(h) for h in self.history]}

    def load_state_dict(self, state_dict: dict) -> None:
        self.history = [dict(h) for h in state_dict.get("history", [])]


def plot_history(history: list[dict], path: Path) -> None:
    """Sample metrics (percent) against optimiser steps, written atomically as a PNG."""
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure registry is touched

    fig = Figure(figsize=(6.0, 3.6), dpi=100)
    ax = fig.add_subplot()
    steps = [h["step"] for h in history]
    for key in METRICS:
        ax.plot(steps, [h[key] for h in history], marker="o", label=key.replace("_", " "))
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("percent of sampled molecules / atoms")
    ax.set_ylim(-2, 102)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".png")
    os.close(fd)
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def sampling_callbacks(cfg, output: str | os.PathLike) -> list[Callback]:
    """``[SampleQuality]`` when the task config asks for periodic sampling, else ``[]``."""
    tc = cfg.task.config
    every_epochs, every_steps = getattr(tc, "sample_every", None), getattr(tc, "sample_every_steps", None)
    if not every_epochs and not every_steps:
        return []
    return [SampleQuality(output, every_epochs=every_epochs, every_steps=every_steps, n=tc.sample_n,
                          steps=tc.sample_steps, batch_size=tc.sample_batch_size, seed=tc.sample_seed)]


__all__ = ["SampleQuality", "plot_history", "sampling_callbacks", "METRICS"]
