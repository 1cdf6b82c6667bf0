"""One training run from a ``Config``: data -> statistics -> model -> task -> Lightning ``Trainer``.

Run directory (``trainer.output``)::

    config.yaml                 the validated config of the run
    checkpoints/last.ckpt       latest state (weights, EMA, optimiser, scheduler, loops, RNG, data position);
                                ``--resume`` / ``--resume auto``
    checkpoints/best.ckpt       lowest validation loss so far
    logs/version_N/metrics.csv  per-step training and per-epoch validation metrics (CSV logger)
    tb/                         TensorBoard event files (trainer.loggers: [csv, tensorboard])
    model.pt                    final model payload for inference (EMA weights) -> ``load_model``
    metrics.json                final validation (and test) metrics

Lightning does distribution (``trainer.strategy``/``devices``/``num_nodes``), checkpoint scheduling,
early stopping and progress bars; checkpoints go through ``AtomicCheckpointIO`` (temp file + os.replace).
"""

from __future__ import annotations

import json
import os
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from molequi import keys as K
from molequi.checkpoint import load_weights, read_checkpoint, save_model
from molequi.config import Config, parse_max_time, to_plain
from molequi.errors import CheckpointError, ConfigError
from molequi.io import atomic_write_text, atomic_write_torch
from molequi.nn.heap import retained_heap
from molequi.tasks import get_task_class


def _step_checkpoint(**kwargs):
    """``ModelCheckpoint`` every n training steps that, at a step followed by a validation round, saves after
    that round instead of before it.

    Lightning resumed from a checkpoint written at the end of a training step does not run the validation that
    was due after that step, so a run killed during that validation would lose the round (its metrics, the
    plateau scheduler's step, early stopping). Saved after the round, a kill inside it resumes from the
    previous checkpoint and repeats both the step and the round.

    The step's logged row (``trainer.loggers``) is written before its checkpoint, not after as Lightning
    orders it: a run killed between the two would resume past a step whose metrics were never written.
    """
    from lightning.pytorch.callbacks import ModelCheckpoint

    class StepCheckpoint(ModelCheckpoint):
        _after_validation = False
        _row_written = False

        def setup(self, trainer, pl_module, stage) -> None:
            super().setup(trainer, pl_module, stage)
            connector = trainer._logger_connector
            if getattr(connector, "_molequi_row_once", False):
                return
            write_row = connector.update_train_step_metrics

            def update_train_step_metrics() -> None:
                if self._row_written:  # this batch's row was written before its checkpoint
                    self._row_written = False
                    return
                write_row()

            connector.update_train_step_metrics = update_train_step_metrics
            connector._molequi_row_once = True
            self._write_row = write_row

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            loop = trainer.fit_loop.epoch_loop
            if trainer.enable_validation and loop._should_check_val_fx(trainer.fit_loop._data_fetcher):
                self._after_validation = True  # the same test Lightning makes right after this hook
                return
            # Lightning writes a step's logged row after this hook; written first, a run killed between
            # the checkpoint and the row would resume past a step whose metrics are nowhere
            if hasattr(self, "_write_row"):
                self._write_row()
                self._row_written = True
            super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)

        def on_validation_end(self, trainer, pl_module) -> None:
            if self._after_validation and not trainer.sanity_checking:
                self._after_validation = False
                if not self._should_skip_saving_checkpoint(trainer):
                    candidates = self._monitor_candidates(trainer)
                    self._save_topk_checkpoint(trainer, candidates)
                    self._save_last_checkpoint(trainer, candidates)
                return
            super().on_validation_end(trainer, pl_module)

    return StepCheckpoint(**kwargs)


def _checkpoint_io():
    from lightning.pytorch.plugins.io import TorchCheckpointIO

    class AtomicCheckpointIO(TorchCheckpointIO):
        """Lightning checkpoint I/O that never leaves a torn file and loads with ``weights_only=True``."""

        def save_checkpoint(self, checkpoint, path, storage_options=None):
            atomic_write_torch(path, checkpoint)

        def load_checkpoint(self, path, map_location=None, weights_only=None):
            return torch.load(path, map_location=map_location or "cpu", weights_only=True)

    return AtomicCheckpointIO()


@dataclass
class RunResult:
    """What a finished run produced."""

    output: Path
    model_path: Path
    metrics: dict[str, dict[str, float]]
    global_step: int
    module: Any


def _dtype(cfg: Config) -> torch.dtype:
    return torch.float64 if cfg.trainer.precision == "float64" else torch.float32


def build_task(cfg: Config, statistics):
    """The model (from ``cfg.model`` + ``statistics``) wrapped in the task ``cfg.task``."""
    from molequi.models import build_model

    model = build_model(cfg.model, statistics)
    return get_task_class(cfg.task.name).from_config(cfg.task.config, model)


def read_init_payload(path: str | os.PathLike) -> dict:
    """The model payload (``molequi.checkpoint``) that ``model.init_from`` names: a molequi checkpoint, or
    a mace-torch ``*.model`` file imported through ``molequi.interop.mace`` (needs the peer Python)."""
    from molequi.errors import ForeignModelError

    path = Path(path)
    try:
        return read_checkpoint(path)
    except CheckpointError as exc:
        if not path.exists():
            raise
        from molequi.interop.mace import inspect_model_file, mace_payload

        try:
            inspect_model_file(path)  # reads the pickle's globals without executing it
        except ForeignModelError as mace_exc:
            raise CheckpointError(f"model.init_from: {exc}; nor is it a mace-torch model ({mace_exc})"
                                  ) from exc
        return mace_payload(path)


def resolve_init_from(cfg: Config, payload: dict) -> Config:
    """``cfg`` with its model architecture taken from ``payload`` (``model.init_from``'s checkpoint).

    Model keys the YAML gave explicitly must equal the checkpoint's (``ConfigError`` listing the ones that
    differ), except the model's ``Config.objective_keys`` (training objective, not architecture), which the
    YAML sets; the others are taken from the checkpoint. ``init_from`` and ``freeze`` are kept.
    """
    import dataclasses

    from molequi.config import ModelSection, model_section_from_dict

    source = cfg.model.init_from
    raw = dict(payload["config"].get("model") or {})
    for key in ("init_from", "freeze"):
        raw.pop(key, None)
    name = str(raw.get("name", "")).lower()
    if name != cfg.model.name:
        raise ConfigError(f"model.init_from {source} holds a '{name}' model but model.name is "
                          f"'{cfg.model.name}'; set model.name: {name} (or drop init_from)")
    try:
        ckpt = model_section_from_dict(raw)
    except ConfigError as exc:
        raise CheckpointError(f"model.init_from {source}: its model config cannot be used: {exc}") from exc
    # keys that set the training objective, not the architecture (a model's Config.objective_keys, e.g.
    # GeoLDM's train_diffusion / trainable_ae: its autoencoder stage, then the latent diffusion on top)
    objective = {k: getattr(cfg.model.config, k) for k in getattr(cfg.model.config, "objective_keys", ())
                 if k in cfg.model.given}
    if objective:
        ckpt = dataclasses.replace(ckpt, config=dataclasses.replace(ckpt.config, **objective))
    conflicts = [f"{k}: {getattr(cfg.model.config, k)!r} (checkpoint: {getattr(ckpt.config, k)!r})"
                 for k in cfg.model.given
                 if to_plain(getattr(cfg.model.config, k)) != to_plain(getattr(ckpt.config, k))]
    if conflicts:
        raise ConfigError(f"model.init_from {source}: the architecture comes from the checkpoint, but these "
                          f"model keys differ from it: {'; '.join(conflicts)}. Remove them from the model "
                          "section (or set them as the checkpoint has them)")
    section = ModelSection(name=cfg.model.name, config=ckpt.config, init_from=cfg.model.init_from,
                           freeze=list(cfg.model.freeze), given=cfg.model.given)
    return dataclasses.replace(cfg, model=section)


def model_keys_from_run(cfg: Config, payload: dict) -> Config:
    """On ``--resume``: the model keys the YAML does not give are the run's own, read from its checkpoint
    (``payload``, migrated by ``read_checkpoint``), not today's defaults -- a run started before a default
    changed (MACE's ``first_interaction`` / ``envelope`` / ``scaling`` / ``shift``) continues as it began.
    Keys the YAML gives are kept as given."""
    import dataclasses

    from molequi.config import model_section_from_dict

    raw = dict(payload["config"].get("model") or {})
    for key in ("init_from", "freeze"):
        raw.pop(key, None)
    if str(raw.get("name", "")).lower() != cfg.model.name:
        return cfg
    try:
        stored = model_section_from_dict(raw).config
    except ConfigError:
        return cfg
    names = [f.name for f in dataclasses.fields(stored) if f.init and f.name not in cfg.model.given]
    config = dataclasses.replace(cfg.model.config, **{k: getattr(stored, k) for k in names})
    return dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, config=config))


def apply_freeze(model: torch.nn.Module, patterns: list[str]) -> list[str]:
    """Set ``requires_grad = False`` on the parameters of ``model`` whose names match a glob pattern of
    ``patterns`` (``fnmatch``); return their names. A pattern matching nothing is a ``ConfigError``."""
    from fnmatch import fnmatchcase

    names = [n for n, _ in model.named_parameters()]
    unmatched = [pat for pat in patterns if not any(fnmatchcase(n, pat) for n in names)]
    if unmatched:
        raise ConfigError(f"model.freeze: {', '.join(map(repr, unmatched))} match(es) no parameter; "
                          f"parameter names look like {', '.join(names[:6])}")
    frozen = []
    for n, p in model.named_parameters():
        if any(fnmatchcase(n, pat) for pat in patterns):
            p.requires_grad_(False)
            frozen.append(n)
    return frozen


def _check_init_elements(records, elements, source) -> None:
    """The fine-tuning data may hold only elements the ``init_from`` model knows (``ConfigError`` naming the
    first training frame that has another)."""
    known = {int(z) for z in elements}
    for i, record in enumerate(records):
        extra = sorted({int(z) for z in record.numbers.tolist()} - known)
        if extra:
            raise ConfigError(f"model.init_from {source} knows elements {sorted(known)}, but training frame "
                              f"{i} holds {extra}: fine-tuning cannot add elements; drop those frames or "
                              "train from scratch")


RESUME_MODES = ("no", "yes", "auto")
# the training loop's heap (molequi.nn.heap): freed memory kept for the next step, and tensors up to 8 MB from
# the heap rather than fresh mappings. MACE 64x0e+64x1o force training (288 ethanol atoms, 1 thread): 426 ->
# 371 CPU ms a step in f32, 781 -> 725 in f64, same peak RSS
TRAIN_HEAP_PAD = 512 << 20
TRAIN_MMAP_THRESHOLD = 8 << 20


def slurm_requeued() -> bool:
    """True inside a SLURM job that was requeued (``SLURM_RESTART_COUNT`` >= 1 with ``SLURM_JOB_ID`` set)."""
    if not os.environ.get("SLURM_JOB_ID"):
        return False
    try:
        return int(os.environ.get("SLURM_RESTART_COUNT", "0") or 0) > 0
    except ValueError:
        return False


def resolve_resume(resume: bool | str, last: Path) -> bool:
    """Whether to continue from ``last`` (``checkpoints/last.ckpt``) for ``resume`` = no / yes / auto.

    - ``"yes"`` (or True): continue; no checkpoint is a ``CheckpointError``.
    - ``"no"`` (or False): start fresh; an existing checkpoint is a ``ConfigError`` (nothing is overwritten
      by accident) -- except in a requeued SLURM job (``slurm_requeued``), which repeats the command line
      that started the run and therefore behaves as ``"auto"``.
    - ``"auto"``: continue when ``last`` exists, start fresh when it does not.
    """
    mode = ("yes" if resume else "no") if isinstance(resume, bool) else resume
    if mode not in RESUME_MODES:
        raise ConfigError(f"resume must be one of {', '.join(RESUME_MODES)} (or a bool), got {resume!r}")
    if mode == "no" and slurm_requeued():
        mode = "auto"
    if mode == "auto":
        return last.exists()
    if mode == "yes" and not last.exists():
        raise CheckpointError(f"--resume: no checkpoint at {last}; start the run without --resume "
                              "(or use --resume auto)")
    if mode == "no" and last.exists():
        raise ConfigError(f"{last.parent.parent} already holds a run ({last}); continue it with --resume "
                          "(or --resume auto) or choose another trainer.output")
    return mode == "yes"


def train(cfg: Config, *, resume: bool | str = False, splits: dict[str, list] | None = None,
          callbacks: list | None = None, enable_summary: bool = True) -> RunResult:
    """Train as ``cfg`` says. ``splits`` ({"train", "valid", "test"} record lists) bypasses ``cfg.data``.

    ``resume`` (see ``resolve_resume``): ``"yes"``/True continues ``<output>/checkpoints/last.ckpt`` (step,
    optimiser, scheduler, EMA, RNG, position in the epoch's data order); ``"no"``/False starts fresh and
    refuses a directory that already holds checkpoints; ``"auto"`` does whichever applies.
    Run files (``config.yaml``, ``model.pt``, ``metrics.json``) are written by the global rank 0 only, as
    Lightning's cluster environment reports it (``torchrun``, ``srun``, Lightning's own launcher).
    """
    import lightning as L
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
    from lightning.pytorch.utilities import rank_zero_info

    from molequi.data.statistics import Statistics, compute_statistics, statistics_sample
    from molequi.train.data import (
        RecordsDataModule,
        is_lazy,
        lazy_graphs,
        load_splits,
        statistics_records,
        with_graphs,
    )
    from molequi.train.e0s import check_e0s, output_scaling, prepare_e0s
    from molequi.train.loggers import LineProgress, build_loggers, check_loggers, show_bar, wants_lines
    from molequi.train.module import TaskModule
    from molequi.train.sampling import sampling_callbacks

    t = cfg.trainer
    check_loggers(t.loggers)  # a missing logger package fails before any data is read
    if cfg.data.dispersion is not None:  # and so do a bad dispersion setting and a missing D3 package
        from molequi.calculators.dispersion import D3

        D3.from_spec(cfg.data.dispersion)
    out = Path(t.output)
    ckpt_dir = out / "checkpoints"
    last = ckpt_dir / "last.ckpt"
    resume = resolve_resume(resume, last)
    init_payload = None
    if cfg.model.init_from is not None:
        # on resume the run's own checkpoint holds the (already resolved) architecture and the weights
        init_payload = read_checkpoint(last) if resume else read_init_payload(cfg.model.init_from)
        cfg = resolve_init_from(cfg, init_payload)
    elif resume:
        cfg = model_keys_from_run(cfg, read_checkpoint(last))
    L.seed_everything(t.seed, workers=True, verbose=False)

    if splits is None:
        splits = load_splits(cfg.data)
    else:  # given splits get the same label correction as read ones
        from molequi.train.data import apply_dispersion

        splits = apply_dispersion(splits, cfg.data.dispersion)
    # task.E0s: average / isolated_atoms take MACE's IsolatedAtom frames out of the data
    splits, given_e0s = prepare_e0s(getattr(cfg.task.config, "E0s", "fit"), splits)
    dtype = _dtype(cfg)
    monitor = f"val/{get_task_class(cfg.task.name).monitor}"
    has_valid = len(splits.get("valid") or []) > 0
    cbs = list(callbacks or [])
    cbs += sampling_callbacks(cfg, out)  # task diffusion: sample_every / sample_every_steps
    cbs.append(_step_checkpoint(dirpath=ckpt_dir, filename="step{step:08d}", auto_insert_metric_name=False,
                               every_n_train_steps=t.checkpoint_every or None, save_top_k=1, save_last=True,
                               save_on_train_epoch_end=None if t.checkpoint_every else not has_valid))
    if has_valid:
        cbs.append(ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=monitor, mode="min",
                                   save_top_k=1,
                                   auto_insert_metric_name=False, enable_version_counter=False))
        if t.patience is not None:
            cbs.append(EarlyStopping(monitor=monitor, patience=t.patience, mode="min", strict=False,
                                     check_on_train_epoch_end=False))
    # no LearningRateMonitor: TaskModule logs ``lr`` at every logged step (its epoch-start entry was also
    # skipped by a run resumed from an epoch-end checkpoint, so logs of resumed runs differed)
    loggers = build_loggers(t.loggers, out)
    if wants_lines(t.progress_bar):
        cbs.append(LineProgress(t.log_every))

    precision = "64-true" if dtype == torch.float64 else "32-true"
    trainer = L.Trainer(
        accelerator=t.accelerator, devices=t.devices, strategy=t.strategy, num_nodes=t.num_nodes,
        precision=precision, max_epochs=t.max_epochs if t.max_epochs is not None else (-1 if (
            t.max_steps > 0 or t.max_time is not None) else None),
        max_steps=t.max_steps, max_time=parse_max_time(t.max_time),
        gradient_clip_val=None if cfg.optim.grad_clip == "edm_adaptive" else cfg.optim.grad_clip,
        gradient_clip_algorithm="norm",
        check_val_every_n_epoch=None if t.val_every_steps else t.val_every,
        val_check_interval=t.val_every_steps or None, log_every_n_steps=t.log_every, callbacks=cbs,
        logger=loggers,
        inference_mode=False, num_sanity_val_steps=0, enable_progress_bar=show_bar(t.progress_bar),
        enable_model_summary=enable_summary, plugins=[_checkpoint_io()], deterministic=False,
        limit_val_batches=1.0 if has_valid else 0, use_distributed_sampler=False,
    )
    # the Trainer knows the rank (LOCAL_RANK/NODE_RANK, SLURM_PROCID under srun, torchrun's RANK, ...)
    rank0 = trainer.is_global_zero
    cutoff = cfg.model.config.r_max  # None: the model builds no neighbour graph (generative models)
    progress = show_bar(t.progress_bar) and rank0
    # several processes: each builds (and keeps) only the graphs its own shard reads
    lazy = lazy_graphs(cfg.data.graphs, trainer.world_size)
    if lazy and cutoff is not None and not is_lazy(splits["train"]):  # (LMDB graphs are never kept)
        rank_zero_info(f"neighbour graphs: built on first access, kept per process ({trainer.world_size} "
                       "processes)")
    train_records = with_graphs(splits["train"], cutoff, progress, lazy)
    valid_records = with_graphs(splits.get("valid") or [], cutoff, progress, lazy)
    test_records = with_graphs(splits.get("test") or [], cutoff, progress, lazy)

    if resume:
        statistics = Statistics.from_dict(read_checkpoint(last)["statistics"])
    elif init_payload is not None:  # fine-tuning keeps the checkpoint's elements, E0s, scale and shift
        statistics = Statistics.from_dict(init_payload["statistics"])
        _check_init_elements(statistics_sample(statistics_records(train_records)), statistics.elements,
                             cfg.model.init_from)
    else:
        sample = statistics_sample(statistics_records(train_records))
        if given_e0s is not None:
            elements = sorted({int(z) for d in sample for z in d[K.NUMBERS].tolist()})
            given_e0s = check_e0s(given_e0s, elements, str(getattr(cfg.task.config, "E0s", "")))
        statistics = output_scaling(compute_statistics(sample, cutoff, e0s=given_e0s),
                                    getattr(cfg.model.config, "scaling", "std"),
                                    getattr(cfg.model.config, "shift", "mean"))
    torch.manual_seed(t.seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        task = build_task(cfg, statistics)
    finally:
        torch.set_default_dtype(previous)
    if init_payload is not None and not resume:
        load_weights(task.model, init_payload, f"model.init_from {cfg.model.init_from}: weights do not fit "
                     "the model")
    if cfg.model.freeze:
        frozen = apply_freeze(task.model, cfg.model.freeze)
        rank_zero_info(f"model.freeze: {len(frozen)} parameter tensors frozen")
    module = TaskModule(task, cfg, statistics)

    if rank0:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.yaml", cfg.to_yaml())

    data = RecordsDataModule(train_records, valid_records, test_records, t.batch_size, t.valid_batch_size,
                             shuffle=cfg.data.shuffle, num_workers=cfg.data.num_workers, seed=t.seed)
    t_fit = time.perf_counter()
    with warnings.catch_warnings():
        # RecordsDataModule restores the position in the epoch itself (state_dict / ResumableSampler);
        # Lightning only looks for that interface on the DataLoader and would warn otherwise
        warnings.filterwarnings("ignore", message=".*your dataloader is not resumable.*")
        # each step frees its autograd graph; keep those pages for the next step (see molequi.nn.heap)
        with retained_heap(TRAIN_HEAP_PAD, mmap_threshold=TRAIN_MMAP_THRESHOLD):
            trainer.fit(module, datamodule=data, ckpt_path=str(last) if resume else None)
    fit_seconds = time.perf_counter() - t_fit

    metrics: dict[str, dict[str, float]] = {}
    if has_valid:
        trainer.validate(module, datamodule=data, verbose=False)
        metrics["valid"] = dict(module.last_metrics.get("val", {}))
    if test_records:
        trainer.test(module, datamodule=data, verbose=False)
        metrics["test"] = dict(module.last_metrics.get("test", {}))

    model_path = out / "model.pt"
    if trainer.is_global_zero:
        save_model(module.payload(), model_path)
        summary = {"global_step": int(trainer.global_step), "epoch": int(trainer.current_epoch),
                   "fit_seconds": fit_seconds, **metrics}
        atomic_write_text(out / "metrics.json", json.dumps(summary, indent=2) + "\n")
    return RunResult(output=out, model_path=model_path, metrics=metrics, global_step=int(trainer.global_step),
                     module=module)


__all__ = ["train", "build_task", "read_init_payload", "resolve_init_from", "model_keys_from_run",
           "apply_freeze",
           "parse_max_time", "resolve_resume", "slurm_requeued", "RESUME_MODES",
           "RunResult"]
