"""The Lightning wiring around a ``Task``: optimisation, schedules, EMA, validation metrics, checkpoints.

``TaskModule`` holds the task (which holds the model) and, when ``optim.ema_decay`` is set, an
``ExponentialMovingAverage`` kept outside the module's parameters and buffers (DDP does not broadcast it)
and saved under ``"ema"`` in Lightning's checkpoints, so they carry weights, EMA, optimiser and scheduler
state together and ``Trainer.fit(ckpt_path=...)`` resumes the same run.

Validation and test run with the EMA weights swapped in, and with autograd on when the task
differentiates (forces): the trainer is built with ``inference_mode=False`` and each step opens
``torch.enable_grad()``. Metrics are summed over batches and over DDP processes (``Task.sync_metrics``)
and logged once per validation round as ``val/<name>`` (``test/<name>`` for test).

``optim.stage_two`` mirrors mace-torch's stage two (``mace/tools/train.py``, ``get_swa`` in
``mace/tools/scripts_utils.py``, 0.3.16): from its start (``stage_two_start``) the loss weights of energy and
forces become the stage-two ones (for training and validation loss alike), the learning rate of every
parameter group becomes ``stage_two.lr`` (mace-torch's ``SWALR`` with ``anneal_epochs=1``, which reaches
``swa_lr`` at the first stage-two epoch) and the lr schedule is no longer stepped; the best-checkpoint and
early-stopping records restart (mace-torch resets ``lowest_loss``). Not mirrored: mace-torch's
``AveragedModel`` (updated, but never used for the saved or evaluated model in 0.3.16) and its separate
``*_stagetwo.model`` file. The step at which stage two began is saved in checkpoints, so a resumed run
continues in it.
"""

from __future__ import annotations

import math
import random
from typing import Any

import lightning as L
import numpy as np
import torch

from molequi.checkpoint import make_payload
from molequi.config import Config, parse_max_time
from molequi.data.statistics import Statistics
from molequi.nn.ema import ExponentialMovingAverage
from molequi.train.clipping import EDMGradClip
from molequi.train.compile import compile_for_training
from molequi.tasks.base import Task
from molequi.train.param_groups import build_param_groups

_LOSS_SUM = "_loss_sum"


class TaskModule(L.LightningModule):
    """LightningModule over ``task``; ``config`` and ``statistics`` travel into every checkpoint."""

    def __init__(self, task: Task, config: Config, statistics: Statistics):
        super().__init__()
        self.task = task
        self.config = config
        self.statistics = statistics
        decay = config.optim.ema_decay
        # a plain attribute, not a submodule: its shadows are no buffers of the (DDP-wrapped) module, so DDP
        # does not broadcast them every step (every process computes the same average of the same weights);
        # checkpoints carry it under "ema" (on_save_checkpoint), and it follows the module's device
        self.__dict__["ema"] = (ExponentialMovingAverage(task.model, decay, warmup=config.optim.ema_warmup)
                                if decay else None)
        # optim.grad_clip: edm_adaptive keeps a queue of recent gradient norms (saved in checkpoints)
        self.grad_clipper = EDMGradClip() if config.optim.grad_clip == "edm_adaptive" else None
        # trainer.compile: the model runs under torch.compile (force fields: forces inside the graph)
        compile_for_training(task.model, config.trainer.compile)
        self.last_metrics: dict[str, dict[str, float]] = {}
        self._train_sums: dict[str, torch.Tensor | float] = {}  # this epoch's sums of batch-size x logged value
        self._train_count = 0
        self._time_cosine = False  # set by configure_optimizers when the cosine runs over trainer.max_time
        self.cosine_start: float | None = None  # training seconds at which the time cosine began (its 1st step)
        self.stage_two_step: int | None = None  # optimiser step at which optim.stage_two began (None: not)
        self._stage_one_task_config = task.config
        if config.optim.stage_two is not None:
            weights = getattr(task.config, "weights", None)
            if not (hasattr(weights, "energy") and hasattr(weights, "forces")):
                from molequi.errors import ConfigError

                raise ConfigError(f"optim.stage_two raises the energy / force loss weights, but task "
                                  f"'{config.task.name}' has no such weights; remove optim.stage_two")

    # ---- data ------------------------------------------------------------------------------------------
    def on_before_batch_transfer(self, batch, dataloader_idx: int):
        """The model's integer work on the CPU batch before it moves to the device (a Hamiltonian model's pair
        structure, ``prepare_batch``), so that a step on a GPU has no host sync for it."""
        prepare = getattr(self.task.model, "prepare_batch", None)
        return batch if prepare is None else prepare(batch)

    def on_after_batch_transfer(self, batch, dataloader_idx: int):
        """Cast floating-point fields to the module's precision (float64 training reads float32 records)."""
        for key, value in batch.items():
            if isinstance(value, torch.Tensor) and value.is_floating_point() and value.dtype != self.dtype:
                batch[key] = value.to(self.dtype)
        return batch

    def forward(self, batch):
        return self.task(batch)

    @staticmethod
    def _batch_size(batch) -> int:
        return int(getattr(batch, "num_graphs", 1) or 1)

    # ---- training --------------------------------------------------------------------------------------
    def training_step(self, batch, batch_idx: int):
        outputs = self.task(batch)
        loss, logs = self.task.loss(batch, outputs)
        bs = self._batch_size(batch)
        # the epoch means are summed here (no device sync, no Lightning call per step) and logged at the
        # epoch's end; the step values only on the steps the loggers write. Same names and values as
        # self.log(on_step=True, on_epoch=True) gives (train/<k>_step, train/<k>_epoch, batch-size
        # weighted), at a fraction of its per-step cost (about 3 ms per key and step)
        for k, v in logs.items():
            total = self._train_sums.get(k)
            value = v.detach() * bs if torch.is_tensor(v) else float(v) * bs
            self._train_sums[k] = value if total is None else total + value
        self._train_count += bs
        if self._step_logged():
            self.log_dict({f"train/{k}_step": float(v) for k, v in logs.items()}, on_step=True, on_epoch=False,
                          batch_size=bs, prog_bar=False)
            self.log("lr", self.optimizers().param_groups[0]["lr"], on_step=True, on_epoch=False, batch_size=bs)
        return loss

    def on_train_epoch_start(self) -> None:
        # a resumed epoch averages only its resumed part, as Lightning's own epoch means did
        self._train_sums, self._train_count = {}, 0

    def on_train_epoch_end(self) -> None:
        if self._train_count:
            self.log_dict({f"train/{k}_epoch": float(v) / self._train_count for k, v in self._train_sums.items()},
                          on_step=False, on_epoch=True, prog_bar=False)

    def on_before_optimizer_step(self, optimizer) -> None:
        warmup = self.config.optim.warmup_steps
        if self.stage_two_step is not None:
            return  # stage two holds its own constant lr
        if warmup and self.config.optim.scheduler == "plateau" and self.global_step <= warmup:
            scale = min(1.0, (self.global_step + 1) / warmup)
            for group in optimizer.param_groups:
                group["lr"] = self.config.optim.lr * scale

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None):
        """``optim.grad_clip: edm_adaptive``: EDM's adaptive clip (``molequi.train.clipping``), logging the
        norm before clipping and the limit as device tensors (no host read; Lightning reads them only on the
        steps it writes); a number: Lightning's norm clipping."""
        if self.grad_clipper is None:
            return super().configure_gradient_clipping(optimizer, gradient_clip_val, gradient_clip_algorithm)
        params = [p for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        norm, limit = self.grad_clipper.clip(params)
        if self._step_logged():
            self.log_dict({"train/grad_norm": norm, "train/grad_limit": limit}, on_step=True, on_epoch=False)

    def _step_logged(self) -> bool:
        """Whether the loggers write this step's on_step values (every ``trainer.log_every`` steps). Values
        only logged per step are logged on those steps alone: each ``self.log`` costs Lightning about 3 ms
        (a sizeable share of a small model's step), and values of other steps are never written."""
        connector = getattr(self._trainer, "_logger_connector", None) if self._trainer is not None else None
        return connector is None or bool(connector.should_update_logs)

    def optimizer_step(self, *args, **kwargs) -> None:
        """The optimiser step, then the EMA update of the new weights.

        Done here rather than in ``on_train_batch_end``: Lightning calls callbacks' ``on_train_batch_end``
        (``ModelCheckpoint`` saving step k) before the module's, so an update there would be missing from
        the checkpoint of its own step and a resumed run would lose it.
        """
        super().optimizer_step(*args, **kwargs)
        if self.ema is not None:
            self.ema.update(self.task.model)

    # ---- validation / test -----------------------------------------------------------------------------
    def _eval_start(self) -> None:
        self.task.reset_metrics()
        self._ema_context = None
        if self.ema is not None:
            self._ema_context = self.ema.swapped_into(self.task.model)
            self._ema_context.__enter__()

    def _eval_step(self, batch) -> None:
        with torch.enable_grad() if self.task.needs_grad_in_eval else torch.no_grad():
            outputs = self.task(batch)
            loss, _ = self.task.loss(batch, outputs)
        bs = self._batch_size(batch)
        self.task.running.add(_LOSS_SUM, loss.detach() * bs, bs)
        self.task.update_metrics(batch, {k: v.detach() for k, v in outputs.items()})

    def _eval_end(self, prefix: str) -> dict[str, float]:
        try:
            self.task.sync_metrics()
            metrics = self.task.compute_metrics()
            metrics["loss"] = self.task.running.mean(_LOSS_SUM)
        finally:
            if self._ema_context is not None:
                self._ema_context.__exit__(None, None, None)
                self._ema_context = None
            self.task.reset_metrics()
        # values are identical on every process after sync_metrics, so no further reduction
        self.log_dict({f"{prefix}/{k}": float(v) for k, v in metrics.items()}, on_step=False, on_epoch=True,
                      prog_bar=False, sync_dist=False, rank_zero_only=False)
        self.last_metrics[prefix] = metrics
        return metrics

    def on_validation_epoch_start(self) -> None:
        self._eval_start()

    def validation_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_validation_epoch_end(self) -> None:
        m = self._eval_end("val")
        if not self.trainer.sanity_checking and self.trainer.is_global_zero:
            shown = {k: v for k, v in m.items() if not k.startswith("forces_mae_meV_A_")}
            self.print(f"epoch {self.current_epoch} step {self.global_step}: " +
                       ", ".join(f"{k} {v:.4g}" for k, v in shown.items()))

    def on_test_epoch_start(self) -> None:
        self._eval_start()

    def test_step(self, batch, batch_idx: int) -> None:
        self._eval_step(batch)

    def on_test_epoch_end(self) -> None:
        self._eval_end("test")

    # ---- optimisation ----------------------------------------------------------------------------------
    def configure_optimizers(self):
        o = self.config.optim
        cls = torch.optim.AdamW if o.optimizer == "adamw" else torch.optim.Adam
        params = build_param_groups(self.task, o)  # optim.param_groups (one group when none is given)
        optimizer = cls(params, lr=o.lr, amsgrad=o.amsgrad, weight_decay=o.weight_decay)
        if o.scheduler == "none" and not o.warmup_steps:
            return optimizer
        if o.scheduler == "plateau":
            sched = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=o.plateau_factor,
                                                               patience=o.plateau_patience, min_lr=o.min_lr)
            return {"optimizer": optimizer,
                    "lr_scheduler": {"scheduler": sched, "monitor": f"val/{self.task.monitor}",
                                     "interval": "step" if self.config.trainer.val_every_steps else "epoch",
                                     "frequency": (self.config.trainer.val_every_steps
                                                   or self.config.trainer.val_every),
                                     "strict": False}}
        if o.scheduler == "cosine" and self._time_budget() is not None and not self._known_length():
            self._time_cosine = True  # annealed over the wall-time budget in on_train_batch_start
            return optimizer
        total = self._schedule_length() if o.scheduler == "cosine" else None
        lr_lambda = _LRLambda(o.warmup_steps, total, o.min_lr / o.lr if o.lr > 0 else 0.0)
        sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": sched, "interval": "step"}}

    def _known_length(self) -> bool:
        o, t = self.config.optim, self.config.trainer
        return bool(o.cosine_steps or (t.max_steps and t.max_steps > 0) or t.max_epochs)

    def _time_budget(self) -> float | None:
        budget = parse_max_time(self.config.trainer.max_time)
        return None if budget is None else budget.total_seconds()

    def on_train_batch_start(self, batch, batch_idx: int) -> None:
        """Cosine schedule over the wall-time budget (``trainer.max_time``) when no step count is known:
        ``cosine_lr`` of the training time so far (kept on resume), counted from the end of the first
        optimiser step: a compiled run's first step is its compilation (~1-2 min on a CPU), which would
        otherwise spend the high-lr start of the schedule without a step. With ``optim.stage_two``: starts
        stage two when it is due, and holds its lr from then on."""
        if self.config.optim.stage_two is not None:
            if self.stage_two_step is None and self._stage_two_due():
                self.start_stage_two()
            if self.stage_two_step is not None:
                self._apply_stage_two()
                return
        if not self._time_cosine:
            return
        from lightning.pytorch.callbacks import Timer

        timer = next((c for c in self.trainer.callbacks if isinstance(c, Timer)), None)
        if timer is None:
            return
        o = self.config.optim
        elapsed = timer.time_elapsed("train")
        if self.cosine_start is None and self.global_step >= 1:
            self.cosine_start = elapsed if self.global_step == 1 else 0.0  # 0: resumed from an older checkpoint
        scale = 1.0
        if o.warmup_steps and self.global_step < o.warmup_steps:
            scale = (self.global_step + 1) / o.warmup_steps
        lr = cosine_lr(elapsed, self._time_budget(), self.cosine_start or 0.0, o.lr, o.min_lr) * scale
        for group in self.optimizers().optimizer.param_groups if hasattr(self.optimizers(), "optimizer") \
                else self.optimizers().param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)

    # ---- stage two (optim.stage_two) --------------------------------------------------------------------
    def stage_two_start(self) -> tuple[str, float] | None:
        """Where stage two starts: ("step", s) for a run with ``trainer.max_steps``, else ("epoch", e) with
        ``max_epochs``, else ("seconds", t) of training time (Lightning's ``Timer``) with ``max_time``; None
        when the run has none of them (stage two then starts only when ``start_stage_two`` is called)."""
        s, t = self.config.optim.stage_two, self.config.trainer
        if s is None:
            return None
        if t.max_steps and t.max_steps > 0:
            return "step", round(s.start_fraction * t.max_steps)
        if t.max_epochs:
            return "epoch", round(s.start_fraction * t.max_epochs)
        budget = self._time_budget()
        return None if budget is None else ("seconds", s.start_fraction * budget)

    def _stage_two_due(self) -> bool:
        start = self.stage_two_start()
        if start is None:
            return False
        kind, value = start
        if kind == "step":
            return self.global_step >= value
        if kind == "epoch":
            return self.current_epoch >= value
        from lightning.pytorch.callbacks import Timer

        timer = next((c for c in self.trainer.callbacks if isinstance(c, Timer)), None)
        return timer is not None and timer.time_elapsed("train") >= value

    def start_stage_two(self) -> None:
        """Enter stage two now (before the next optimiser step): new loss weights and lr, schedule stopped,
        best-checkpoint / early-stopping records restarted. Called when ``stage_two_start`` is reached; a
        driver with its own budget (e.g. CPU time) may call it itself."""
        if self.config.optim.stage_two is None or self.stage_two_step is not None:
            return
        self.stage_two_step = int(self.global_step)
        self._apply_stage_two()
        from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

        for cb in self.trainer.callbacks if self._trainer is not None else []:
            if isinstance(cb, ModelCheckpoint) and cb.monitor is not None:
                # mace-torch: lowest_loss = inf at the switch; stage-two losses weigh energy differently
                cb.best_k_models, cb.kth_best_model_path, cb.best_model_score = {}, "", None
                cb.kth_value = torch.tensor(math.inf if cb.mode == "min" else -math.inf)
            elif isinstance(cb, EarlyStopping):
                cb.wait_count = 0
                cb.best_score = torch.tensor(math.inf if cb.mode == "min" else -math.inf)
        if self._trainer is not None and self.trainer.is_global_zero:
            s = self.config.optim.stage_two
            self.print(f"stage two from step {self.stage_two_step} (epoch {self.current_epoch}): energy "
                       f"weight {s.energy_weight}, forces weight {s.forces_weight}, lr {s.lr}")

    def _apply_stage_two_weights(self) -> None:
        """The stage-two loss weights on the task (a copy of its config: ``self.config`` keeps the run's
        own)."""
        import dataclasses

        s = self.config.optim.stage_two
        base = self._stage_one_task_config
        if self.task.config is base:
            self.task.config = dataclasses.replace(base, weights=dataclasses.replace(
                base.weights, energy=s.energy_weight, forces=s.forces_weight))

    def _apply_stage_two(self) -> None:
        """Stage-two loss weights, and the stage-two lr on every parameter group (as mace-torch's SWALR sets
        one swa_lr for all groups)."""
        self._apply_stage_two_weights()
        optimizer = self.optimizers()
        for group in getattr(optimizer, "optimizer", optimizer).param_groups:
            group["lr"] = self.config.optim.stage_two.lr

    def lr_scheduler_step(self, scheduler, metric) -> None:
        if self.stage_two_step is not None:
            return  # mace-torch steps no lr scheduler in stage two (SWALR holds swa_lr)
        super().lr_scheduler_step(scheduler, metric)

    def _schedule_length(self) -> int:
        o, t = self.config.optim, self.config.trainer
        if o.cosine_steps:
            return o.cosine_steps
        if t.max_steps and t.max_steps > 0:
            return t.max_steps
        if t.max_epochs and self.trainer is not None:
            return max(1, int(self.trainer.estimated_stepping_batches))
        from molequi.errors import ConfigError

        raise ConfigError("the cosine schedule needs its length: set optim.cosine_steps, trainer.max_steps "
                          "or trainer.max_epochs")

    # ---- checkpoints -----------------------------------------------------------------------------------
    def payload(self) -> dict:
        """The molequi model payload (see ``molequi.checkpoint``) of the current state."""
        model = self.task.export_model()
        ema_state = self.ema.averaged_state_dict(model) if self.ema is not None else None
        metrics = self.last_metrics.get("val", {})
        return make_payload(config=self.config.to_dict(), statistics=self.statistics.to_dict(),
                            model_state=model.state_dict(), ema_state=ema_state, dtype=self.dtype,
                            step=self.global_step, epoch=self.current_epoch,
                            metrics={k: v for k, v in metrics.items() if math.isfinite(v)})

    def _move_ema(self) -> None:
        if self.ema is not None:
            self.ema.to(self.device)

    def on_fit_start(self) -> None:
        self._move_ema()

    def on_validation_start(self) -> None:
        self._move_ema()

    def on_test_start(self) -> None:
        self._move_ema()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["molequi"] = self.payload()
        checkpoint["rng"] = _rng_state()
        if self.ema is not None:
            checkpoint["ema"] = {k: v.detach().clone() for k, v in self.ema.state_dict().items()}
        if self.grad_clipper is not None:
            checkpoint["grad_clip"] = self.grad_clipper.state_dict()
        if self.stage_two_step is not None:
            checkpoint["stage_two_step"] = self.stage_two_step
        if self.cosine_start is not None:
            checkpoint["cosine_start"] = self.cosine_start

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "rng" in checkpoint:
            _set_rng_state(checkpoint["rng"])
        # checkpoints written while the EMA was a submodule hold it as "ema.*" entries of the state_dict
        state = checkpoint.get("state_dict", {})
        legacy = {k.removeprefix("ema."): state.pop(k) for k in [k for k in state if k.startswith("ema.")]}
        if self.ema is not None and (checkpoint.get("ema") or legacy):
            self.ema.load_state_dict(checkpoint.get("ema") or legacy)
        if self.grad_clipper is not None and "grad_clip" in checkpoint:
            self.grad_clipper.load_state_dict(checkpoint["grad_clip"])
        if checkpoint.get("cosine_start") is not None:
            self.cosine_start = float(checkpoint["cosine_start"])
        if checkpoint.get("stage_two_step") is not None and self.config.optim.stage_two is not None:
            # the weights now; the lr comes back with the optimiser state and is held from the next batch
            self.stage_two_step = int(checkpoint["stage_two_step"])
            self._apply_stage_two_weights()


def cosine_lr(t: float, end: float, start: float, lr: float, min_lr: float) -> float:
    """The cosine schedule at ``t`` (seconds of the wall-time cosine, or optimiser steps): lr before ``start``,
    then min_lr + (lr - min_lr) (1 + cos(pi f)) / 2 with f = (t - start) / (end - start), min_lr from ``end``
    on."""
    frac = min(max(t - start, 0.0) / max(end - start, 1e-9), 1.0)
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * frac))


class _LRLambda:
    """Linear warm-up over ``warmup`` steps, then cosine from 1 to ``floor`` over ``total`` steps (or
    flat)."""

    def __init__(self, warmup: int, total: int | None, floor: float):
        self.warmup, self.total, self.floor = warmup, total, floor

    def __call__(self, step: int) -> float:
        if self.warmup and step < self.warmup:
            return (step + 1) / self.warmup
        if self.total is None:
            return 1.0
        return cosine_lr(step, self.total, self.warmup, 1.0, self.floor)


def _rng_state() -> dict:
    """Torch, NumPy and Python RNG states as tensors and plain values (``weights_only``-loadable)."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {"torch": torch.get_rng_state(),
            "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                      "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
            "python": [py_state[0], list(py_state[1]), py_state[2]]}


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    keys = n["keys"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, n["pos"], n["has_gauss"], n["gauss"]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


__all__ = ["TaskModule"]
