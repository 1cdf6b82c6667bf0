"""Typed run configuration, mapped from YAML and validated as it is read.

A run is described by one ``Config`` with five sections (YAML keys in brackets)::

    model    [model]           name + the chosen model's own ``Config`` fields (r_max, channels, ...)
    data     [data | dataset]  ``molequi.data.datasets.DataConfig``: which dataset, how to read and split it
    task     [task]            name + the task's ``Config`` fields (weights, loss, ...)
    optim    [optim]           optimiser, learning rate, schedule, EMA, gradient clipping
    trainer  [trainer]         epochs / steps / time budget, batch sizes, precision, devices, output

Every section is a dataclass; ``Config.from_dict`` checks each key against the fields (an unknown key is a
``ConfigError`` that names the nearest valid key) and each value against the field's type (``1e-3``, which
YAML reads as a string, is accepted for a float), then runs the model config's own ``validate()``, so a bad
model setting fails here, before any data is read. ``load_config(path, overrides)`` applies dotted
``section.key=value`` overrides (values parsed as YAML scalars) before validation.

Field documentation lives in ``field(metadata={"help": ...})`` or in an attribute docstring / trailing
comment; ``default_yaml(model)`` prints it as comments (``molequi init-config``).
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import inspect
import io
import re
import types
import typing
from dataclasses import MISSING, dataclass, field
from pathlib import Path
from typing import Any, Literal, Union

import yaml

from molequi.data.datasets import RENAMED_KEYS, DataConfig
from molequi.errors import ConfigError, suggest
from molequi.tasks import TASKS, get_task_class


def _help(text: str, **kw) -> Any:
    return field(metadata={"help": text}, **kw)


# ------------------------------------------------------------------------------------------------ sections
@dataclass
class ParamGroup:
    """One optimiser parameter group (``optim.param_groups``; ``molequi.train.param_groups``)."""

    pattern: str | list[str] = _help("glob pattern(s) (fnmatch) of model parameter names, e.g. 'readouts.*' "
                                     "(a pattern matching no trainable parameter is an error)")
    lr: float | None = _help("learning rate of this group (null: optim.lr x lr_factor)", default=None)
    lr_factor: float | None = _help("this group's learning rate as a multiple of optim.lr (mace-torch's "
                                    "--lr_params_factors)", default=None)
    weight_decay: float | None = _help("weight decay of this group (null: optim.weight_decay)", default=None)

    def __post_init__(self):
        if self.lr is not None and self.lr_factor is not None:
            raise ValueError("give lr or lr_factor, not both")
        for name in ("lr", "lr_factor", "weight_decay"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0, got {value}")

    @property
    def patterns(self) -> list[str]:
        return [self.pattern] if isinstance(self.pattern, str) else list(self.pattern)


@dataclass
class StageTwo:
    """mace-torch's stage two (``mace_run_train --stage_two``, formerly ``--swa``): from the start of stage
    two to the end of the run the energy_forces loss weights become ``energy_weight`` / ``forces_weight``,
    every parameter group's learning rate becomes ``lr`` and the lr schedule stops
    (``molequi.train.module``)."""

    start_fraction: float = _help(
        "stage two starts at this fraction of the run: round(f x trainer.max_steps) optimiser steps, or else "
        "the epoch round(f x trainer.max_epochs) (mace-torch's --start_stage_two, whose default is "
        "max_epochs // 4 x 3), or else f x trainer.max_time of training time", default=0.75)
    energy_weight: float = _help("energy loss weight in stage two (mace-torch's --stage_two_energy_weight)",
                                 default=1000.0)
    forces_weight: float = _help("force loss weight in stage two (mace-torch's --stage_two_forces_weight)",
                                 default=100.0)
    lr: float = _help("learning rate of every parameter group in stage two (mace-torch's --stage_two_lr)",
                      default=1.0e-3)

    def __post_init__(self):
        if not 0.0 < self.start_fraction < 1.0:
            raise ValueError(f"start_fraction must lie in (0, 1), got {self.start_fraction}")
        if self.energy_weight < 0 or self.forces_weight < 0 or self.lr <= 0:
            raise ValueError("energy_weight and forces_weight must be >= 0 and lr > 0, got "
                             f"{self.energy_weight}, {self.forces_weight}, {self.lr}")


@dataclass
class OptimConfig:
    """Optimiser, learning-rate schedule, exponential moving average of weights, gradient clipping."""

    optimizer: Literal["adam", "adamw"] = _help("adam or adamw (decoupled weight decay)", default="adam")
    lr: float = _help("initial learning rate", default=0.01)
    amsgrad: bool = _help("use the AMSGrad variant (as MACE does)", default=True)
    weight_decay: float = _help("weight decay (L2 for adam, decoupled for adamw)", default=0.0)
    scheduler: Literal["plateau", "cosine", "none"] = _help(
        "plateau: multiply lr by plateau_factor when the validation metric stalls; cosine: anneal to "
        "min_lr over the run (over trainer.max_time when no step or epoch count is given); none: constant",
        default="plateau")
    plateau_factor: float = _help("lr multiplier of the plateau schedule", default=0.8)
    plateau_patience: int = _help("validation rounds without improvement before the plateau schedule "
                                  "lowers lr", default=50)
    min_lr: float = _help("lower bound of the learning rate (plateau and cosine)", default=0.0)
    cosine_steps: int | None = _help("length of the cosine schedule in optimiser steps (null: "
                                     "trainer.max_steps, or max_epochs x steps per epoch, or the "
                                     "trainer.max_time wall-time budget)",
                                     default=None)
    warmup_steps: int = _help("linear learning-rate warm-up over this many optimiser steps", default=0)
    ema_decay: float | None = _help("decay of the exponential moving average of the weights used for "
                                    "validation, test and export (null: no EMA)", default=0.99)
    ema_warmup: bool = _help("warm the EMA decay up as min(ema_decay, (1 + t) / (10 + t)) at step t (MACE, "
                             "torch_ema); false: ema_decay from the first step, as EDM does", default=True)
    grad_clip: float | Literal["edm_adaptive"] | None = _help(
        "clip the gradient norm to this value (null: no clipping); edm_adaptive: EDM's rule, 1.5 x mean + "
        "2 x std of the last 50 (clipped) norms, starting from [3000] (molequi.train.clipping)", default=10.0)
    param_groups: list[ParamGroup] = _help(
        "per-parameter-group learning rates, e.g. [{pattern: 'readouts.*', lr: 1.0e-3}] (heads vs body): "
        "each parameter goes to the first group whose pattern matches its name, the others to optim.lr; "
        "schedules scale every group alike", default_factory=list)
    stage_two: StageTwo | None = _help(
        "mace-torch's stage two: {start_fraction, energy_weight, forces_weight, lr} (null: off): higher "
        "energy weight and a constant lower lr for the end of the run", default=None)


@dataclass
class TrainerConfig:
    """How long, on what, in which precision, and where the run writes."""

    max_epochs: int | None = _help("stop after this many epochs (null: no epoch limit)", default=None)
    max_steps: int = _help("stop after this many optimiser steps (-1: no step limit)", default=-1)
    max_time: float | str | None = _help("stop after this wall time: seconds, or 'DD:HH:MM:SS' "
                                         "(null: no time limit)", default=None)
    batch_size: int = _help("training structures per optimiser step and process", default=5)
    valid_batch_size: int = _help("structures per validation / test batch", default=10)
    precision: Literal["float32", "float64"] = _help("floating-point precision of weights and data",
                                                     default="float32")
    patience: int | None = _help("early stopping: validation rounds without improvement of the monitored "
                                 "metric before stopping (null: never stop early)", default=None)
    val_every: int = _help("validate every this many epochs", default=1)
    val_every_steps: int | None = _help("validate every this many optimiser steps instead (null: use "
                                        "val_every epochs)", default=None)
    devices: int | str = _help("number of devices per node, or 'auto'", default="auto")
    accelerator: str = _help("cpu, gpu, cuda, mps or auto", default="auto")
    strategy: str = _help("auto, ddp, ddp_spawn, ... (Lightning strategies)", default="auto")
    num_nodes: int = _help("number of nodes (multi-node DDP)", default=1)
    seed: int = _help("seed of weights initialisation and data order", default=0)
    output: str = _help("run directory: checkpoints/, logs, config.yaml and model.pt are written here",
                        default="runs/molequi")
    log_every: int = _help("log training loss every this many optimiser steps", default=50)
    checkpoint_every: int | None = _help("also checkpoint every this many optimiser steps (null: once "
                                         "per validation round)", default=None)
    progress_bar: bool | Literal["auto"] = _help(
        "auto: a progress bar on a terminal, otherwise one line every log_every steps; true: always the bar; "
        "false: no progress output", default="auto")
    loggers: list[str] = _help("Lightning loggers, written under the run directory: csv, tensorboard, wandb "
                               "(offline), mlflow (file store); see molequi.train.loggers",
                               default_factory=lambda: ["csv"])
    compile: bool | Literal["inductor", "aot_eager", "eager"] = _help(
        "torch.compile the model for training and validation (molequi.train.compile): true or inductor "
        "(generated code), aot_eager (traced, no code generation), eager (Dynamo only); force fields take "
        "forces by torch.func inside the compiled graph; false: eager", default=False)


#: model-section keys that belong to every model (fine-tuning), not to the model's own ``Config``
FINETUNE_KEYS = ("init_from", "freeze")

INIT_FROM_HELP = (
    "fine-tuning: start from the weights of this checkpoint (a molequi model.pt / .ckpt, or a mace-torch "
    "*.model file, imported on the fly; EMA weights when present; null: random initialisation). The "
    "architecture is taken from the checkpoint (a conflicting explicit model key is an error), and so are "
    "the element set, E0s, scale and shift: they are NOT recomputed from the new data")
FREEZE_HELP = ("fine-tuning: glob patterns (fnmatch) of parameter names to freeze (e.g. "
               "['embedding.*', 'layers.0.*']; a pattern matching nothing is an error): no gradient, not in "
               "the optimiser")


@dataclass
class ModelSection:
    """``name`` selects the model in ``molequi.models.MODELS``; ``config`` is that model's ``Config``;
    ``init_from`` / ``freeze`` (every model) fine-tune from a checkpoint (``molequi.train.run``)."""

    name: str = "mace"
    config: Any = None
    init_from: str | None = None
    freeze: list[str] = field(default_factory=list)
    #: the model keys the YAML gave explicitly (the others may be taken from ``init_from``'s checkpoint)
    given: tuple[str, ...] = field(default=(), compare=False, repr=False)

    def to_dict(self) -> dict:
        """``name`` + the model's fields (+ ``init_from`` / ``freeze`` when set), as written in YAML."""
        out = {"name": self.name, **to_plain(self.config)}
        if self.init_from is not None:
            out["init_from"] = self.init_from
        if self.freeze:
            out["freeze"] = list(self.freeze)
        return out


@dataclass
class TaskSection:
    """``name`` selects the task in ``TASKS``; ``config`` is that task's ``Config``."""

    name: str = "energy_forces"
    config: Any = None


@dataclass
class Config:
    model: ModelSection = field(default_factory=ModelSection)
    data: DataConfig = field(default_factory=DataConfig)
    task: TaskSection = field(default_factory=TaskSection)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)

    # ---- from / to plain dicts ------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict | None) -> Config:
        raw = dict(raw or {})
        if "dataset" in raw:
            if "data" in raw:
                raise ConfigError("give either 'data' or 'dataset', not both")
            raw["data"] = raw.pop("dataset")
        _check_keys(raw, ["model", "data", "task", "optim", "trainer"], "")
        model = model_section_from_dict(raw.get("model"))
        task = _section_with_name(raw.get("task"), "task", "energy_forces",
                                  lambda n: get_task_class(n).Config)
        data = _data_from_dict(raw.get("data") or {})
        optim = from_dict(OptimConfig, raw.get("optim") or {}, "optim")
        trainer = from_dict(TrainerConfig, raw.get("trainer") or {}, "trainer")
        return cls(model=model, data=data, task=TaskSection(*task), optim=optim,
                   trainer=trainer)

    def to_dict(self) -> dict:
        """Plain dict (YAML / checkpoint safe) that ``from_dict`` maps back to an equal ``Config``."""
        return {
            "model": self.model.to_dict(),
            "data": to_plain(self.data),
            "task": {"name": self.task.name, **to_plain(self.task.config)},
            "optim": to_plain(self.optim),
            "trainer": to_plain(self.trainer),
        }

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)


def _model_config_class(name: str):
    from molequi.models import get_model_class

    return get_model_class(name).Config


def model_section_from_dict(raw: dict | None) -> ModelSection:
    """The ``model`` section (``name`` + that model's fields) as a ``ModelSection`` whose config has passed
    the model's own ``Config.validate()`` (so ``max_ell: -1`` fails here, before any data is read).

    ``init_from`` (str or null) and ``freeze`` (list of glob patterns) are read here for every model; the
    checkpoint is not opened here (``molequi.train.run.resolve_init_from`` does that when training starts).
    """
    raw = dict(raw or {}) if isinstance(raw, dict) or raw is None else raw
    raw = _renamed_model_section(raw)
    extra = {}
    if isinstance(raw, dict):
        for key in FINETUNE_KEYS:
            if key in raw:
                extra[key] = raw.pop(key)
    if isinstance(raw, dict) and isinstance(raw.get("name", "mace"), str):
        valid = [f.name for f in dataclasses.fields(_model_config_class(raw.get("name", "mace")))]
        _check_keys(raw, ["name", *valid, *FINETUNE_KEYS], "model")
    init_from = _convert(extra.get("init_from"), str | None, "model.init_from")
    freeze = _convert(extra.get("freeze", []), list[str], "model.freeze")
    given = tuple(k for k in raw if k != "name") if isinstance(raw, dict) else ()
    section = ModelSection(*_section_with_name(raw, "model", "mace", _model_config_class),
                           init_from=init_from, freeze=list(freeze or []), given=given)
    try:
        section.config.validate()
    except ConfigError as exc:
        raise ConfigError(f"model '{section.name}': {exc}") from exc
    return section


def _renamed_model_section(raw, stored: bool = False):
    """A model section under today's model names, else ``raw`` unchanged: the one place that lists every model
    whose name changed meaning. ``qhnet`` with the old model's fields is ``hamiltonian_conv``, ``faenet`` with
    the frame-averaging wrapper's fields is ``frame_averaging``, ``equiformer_v2`` with molequi's variant's
    fields is ``equiformer_v2_molequi`` and the alias ``equiformer_v2_fairchem`` is ``equiformer_v2``; in a
    config stored in a checkpoint (``stored``) also ``eqgat_diff`` with ``coords_range`` (which only the EGNN
    denoiser has) is ``egnn_categorical``."""
    if not isinstance(raw, dict):
        return raw
    name = str(raw.get("name", "")).lower()
    if name == "qhnet":
        from molequi.models.hamiltonian import legacy_qhnet_section

        return legacy_qhnet_section(raw)
    if name == "faenet":
        from molequi.models.faenet import legacy_faenet_section

        return legacy_faenet_section(raw)
    if name in ("equiformer_v2", "equiformer_v2_fairchem"):
        from molequi.models.equiformer_v2 import legacy_equiformer_v2_section

        return legacy_equiformer_v2_section(raw)
    if stored and raw.get("name") == "eqgat_diff" and "coords_range" in raw:
        return {**raw, "name": "egnn_categorical"}
    return raw


def migrate_stored_config(config: dict, version: int) -> dict:
    """A run config stored in a checkpoint of format ``version`` (``molequi.checkpoint``), as this molequi
    reads it: before version 2, model keys that were absent took defaults that have changed since, so each
    absent key of the model ``Config``'s ``LEGACY_DEFAULTS`` is set to its old value (an explicit key is
    kept). Configs read from YAML are not migrated: they get today's defaults.

    A stored model whose name changed meaning is read under its name today (``_renamed_model_section``:
    e.g. ``eqgat_diff`` with ``coords_range`` is ``egnn_categorical``, ``equiformer_v2`` with molequi's
    variant's fields is ``equiformer_v2_molequi``)."""
    model = config.get("model") if isinstance(config, dict) else None
    renamed = _renamed_model_section(model, stored=True)
    if renamed is not model:
        model, config = renamed, {**config, "model": renamed}
    if version >= 2 or not isinstance(model, dict) or not isinstance(model.get("name", "mace"), str):
        return config
    try:
        legacy = getattr(_model_config_class(model.get("name", "mace")), "LEGACY_DEFAULTS", {})
    except ConfigError:  # an unknown model name is reported when the section is read
        return config
    return {**config, "model": {**{k: v for k, v in legacy.items() if k not in model}, **model}}


def _section_with_name(raw, section: str, default: str, config_class_of) -> tuple[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"'{section}' must be a mapping, got {type(raw).__name__}")
    raw = dict(raw)
    name = raw.pop("name", default)
    if not isinstance(name, str):
        raise ConfigError(f"'{section}.name' must be a string, got {name!r}")
    cfg_cls = config_class_of(name)
    return name.lower(), from_dict(cfg_cls, raw, section)


def _data_from_dict(raw) -> DataConfig:
    if not isinstance(raw, dict):
        raise ConfigError(f"'data' must be a mapping, got {type(raw).__name__}")
    for key, message in RENAMED_KEYS.items():
        if key in raw:
            raise ConfigError(message)
    return from_dict(DataConfig, raw, "data")


# ------------------------------------------------------------------------------------------ typed mapping
def _type_hints(cls) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception:  # unresolvable forward references: fall back to no checking for those fields
        return {f.name: (f.type if not isinstance(f.type, str) else Any) for f in dataclasses.fields(cls)}


def _unknown(key: str, valid, where: str):
    hint = suggest(str(key), valid)
    prefix = f"{where}." if where else ""
    raise ConfigError(f"unknown key '{prefix}{key}'" + (f"; {hint}" if hint else "")
                      + f" (valid keys in '{where or 'config'}': {', '.join(sorted(valid))})")


def _check_keys(raw: dict, valid, where: str) -> None:
    for key in raw:
        if key not in valid:
            _unknown(key, valid, where)


def from_dict(cls, raw: dict, where: str = ""):
    """Build dataclass ``cls`` from ``raw``, rejecting unknown keys and values of the wrong type."""
    if raw is None:
        raw = {}
    if dataclasses.is_dataclass(raw) and isinstance(raw, cls):
        return raw
    if not isinstance(raw, dict):
        raise ConfigError(f"'{where}' must be a mapping, got {type(raw).__name__} ({raw!r})")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    _check_keys(raw, fields, where)
    hints = _type_hints(cls)
    kwargs = {}
    for key, value in raw.items():
        kwargs[key] = _convert(value, hints.get(key, Any), f"{where}.{key}" if where else key)
    missing = [n for n, f in fields.items() if n not in kwargs and f.default is MISSING
               and f.default_factory is MISSING]
    if missing:
        raise ConfigError(f"'{where}' is missing required keys: {', '.join(missing)}")
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"'{where}': {exc}") from exc


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value, tp, where: str):
    """Check / convert one YAML value to annotation ``tp``."""
    if tp is Any or tp is object:
        return value
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Union or origin is types.UnionType:
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"'{where}' must not be null (expected {_type_name(tp)})")
        errors = []
        # exact-type matches first, so "auto" stays a string for `int | str` and 3 stays an int
        for arg in sorted((a for a in args if a is not type(None)), key=lambda a: a is not type(value)):
            try:
                return _convert(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(f"'{where}' = {value!r} does not fit {_type_name(tp)}")
    if origin is Literal:
        if value in args:
            return value
        hint = suggest(str(value), [str(a) for a in args])
        raise ConfigError(f"'{where}' = {value!r} is not one of {', '.join(map(repr, args))}"
                          + (f"; {hint}" if hint else ""))
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if value is None:
        raise ConfigError(f"'{where}' must not be null (expected {_type_name(tp)})")
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"'{where}' must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise ConfigError(f"'{where}' must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads "1e-3" as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise ConfigError(f"'{where}' must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"'{where}' must be a string, got {value!r}")
    if origin in (list, tuple, typing.Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"'{where}' must be a list, got {value!r}")
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"'{where}' must have {len(args)} entries, got {len(value)}")
            return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(args, value)))
        inner = args[0] if args else Any
        out = [_convert(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple or tp is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"'{where}' must be a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_convert(k, kt, where): _convert(v, vt, f"{where}.{k}") for k, v in value.items()}
    if isinstance(tp, type):
        if isinstance(value, tp):
            return value
        raise ConfigError(f"'{where}' must be {_type_name(tp)}, got {value!r}")
    return value


def to_plain(obj) -> Any:
    """Dataclasses / tuples -> dicts / lists of plain Python values (YAML and ``weights_only`` safe)."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_plain(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {to_plain(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_plain(v) for v in obj]
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    raise ConfigError(f"cannot store {type(obj).__name__} {obj!r} in a configuration")


# ------------------------------------------------------------------------------------------------- loading
def parse_override(text: str) -> tuple[list[str], Any]:
    """``"optim.lr=1e-3"`` -> (["optim", "lr"], 1e-3); the value is read as a YAML scalar / flow value."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like section.key=value")
    key, value = text.split("=", 1)
    path = [p for p in key.strip().split(".")]
    if not all(path):
        raise ConfigError(f"override '{text}' has an empty key component")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{text}': value is not valid YAML ({exc})") from exc
    return path, parsed


def apply_overrides(raw: dict, overrides: list[str] | None) -> dict:
    """Return a copy of ``raw`` with each ``a.b.c=value`` override set (sections created as needed)."""
    import copy

    raw = copy.deepcopy(raw or {})
    if "dataset" in raw and "data" not in raw:
        raw["data"] = raw.pop("dataset")
    for text in overrides or []:
        path, value = parse_override(text)
        if path[0] == "dataset":
            path[0] = "data"
        node = raw
        for i, part in enumerate(path[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            if not isinstance(nxt, dict):
                raise ConfigError(f"override '{text}': '{'.'.join(path[: i + 1])}' is not a section")
            node = nxt
        node[path[-1]] = value
    return raw


def parse_max_time(value) -> _dt.timedelta | None:
    """Seconds (number) or 'DD:HH:MM:SS' / 'HH:MM:SS' / '10min' / '90s' -> timedelta."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return _dt.timedelta(seconds=float(value))
    text = str(value).strip()
    m = re.fullmatch(r"([\d.]+)\s*(s|sec|m|min|h|hr)?", text)
    if m:
        scale = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hr": 3600, None: 1}[m.group(2)]
        return _dt.timedelta(seconds=float(m.group(1)) * scale)
    parts = text.split(":")
    if 2 <= len(parts) <= 4 and all(p.strip().isdigit() for p in parts):
        nums = [int(p) for p in parts]
        while len(nums) < 4:
            nums.insert(0, 0)
        d, h, mi, s = nums
        return _dt.timedelta(days=d, hours=h, minutes=mi, seconds=s)
    raise ConfigError(f"trainer.max_time '{value}' is not seconds, '10min', '2h' or 'DD:HH:MM:SS'")


def read_yaml_sections(path: str | Path, missing_hint: str = "") -> dict:
    """The mapping of sections in the YAML file ``path`` (``{}`` for an empty file); ``ConfigError`` naming
    the file when it is missing (``missing_hint`` says how to get one), not YAML, or not a mapping."""
    path = Path(path)
    if not path.exists():
        hint = f" ({missing_hint})" if missing_hint else ""
        raise ConfigError(f"config file {path} does not exist{hint}")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    return raw


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Read a YAML config (or start from defaults when ``path`` is None), apply overrides, validate."""
    raw = {} if path is None else read_yaml_sections(path, "write one with `molequi init-config mace`")
    return Config.from_dict(apply_overrides(raw, overrides))


# ------------------------------------------------------------------------------------- commented defaults
def _field_comments(cls) -> dict[str, str]:
    """Field documentation written in the class source: a trailing ``# comment`` on the field's line, or
    a string literal on the line after it (attribute docstring)."""
    import ast
    import textwrap

    try:
        src = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    out = {}
    lines = src.splitlines()
    try:
        body = ast.parse(src).body[0].body
    except (SyntaxError, IndexError, AttributeError):
        body = []
    for stmt, nxt in zip(body, body[1:] + [None]):
        if isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name):
            name = stmt.target.id
            if isinstance(nxt, ast.Expr) and isinstance(getattr(nxt, "value", None), ast.Constant) \
                    and isinstance(nxt.value.value, str):
                out[name] = " ".join(nxt.value.value.split())
                continue
            m = re.search(r"#\s*(.+)$", lines[stmt.end_lineno - 1])
            if m:
                out[name] = m.group(1).strip()
    return out


def _field_docs(cls) -> dict[str, str]:
    comments = {}
    for klass in reversed(cls.__mro__):  # fields a dataclass inherits are documented in its base's source
        if dataclasses.is_dataclass(klass):
            comments.update(_field_comments(klass))
    docs = {}
    for f in dataclasses.fields(cls):
        docs[f.name] = f.metadata.get("help") or f.metadata.get("doc") or comments.get(f.name, "")
    return docs


def _scalar(value) -> str:
    text = yaml.safe_dump(value, default_flow_style=True, width=10_000).strip()
    return text[:-4].strip() if text.endswith("\n...") or text.endswith(" ...") else text.removesuffix("...")


def _emit(out: io.StringIO, obj, indent: int) -> None:
    pad = " " * indent
    docs = _field_docs(type(obj))
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        doc = docs.get(f.name)
        if doc:
            out.write(f"{pad}# {doc}\n")
        if dataclasses.is_dataclass(value):
            out.write(f"{pad}{f.name}:\n")
            _emit(out, value, indent + 2)
        else:
            out.write(f"{pad}{f.name}: {_scalar(to_plain(value))}\n")


def default_yaml(model: str = "mace", task: str = "energy_forces") -> str:
    """A complete default config for ``model`` as commented YAML (what ``molequi init-config`` prints)."""
    model_cfg = _model_config_class(model)()
    task_cfg = get_task_class(task).Config()
    out = io.StringIO()
    out.write(f"# molequi configuration: {model} model, {task} task.\n"
              "# Units: eV, Å, eV/Å, fs. Override any key on the command line: "
              "molequi train THIS.yaml optim.lr=1e-3\n\n")
    out.write(f"model:\n  # model name ({', '.join(sorted(_models()))})\n  name: {model}\n")
    _emit(out, model_cfg, 2)
    out.write(f"  # {INIT_FROM_HELP}\n  init_from: null\n  # {FREEZE_HELP}\n  freeze: []\n")
    out.write("\n# which dataset (name, root, reader keys, family options) and how to split it\ndata:\n")
    _emit(out, DataConfig(root="train.xyz"), 2)
    out.write(f"\ntask:\n  # task name ({', '.join(sorted(TASKS))})\n  name: {task}\n")
    _emit(out, task_cfg, 2)
    out.write("\noptim:\n")
    _emit(out, OptimConfig(), 2)
    out.write("\ntrainer:\n")
    _emit(out, TrainerConfig(), 2)
    return out.getvalue()


def _models():
    from molequi.models import MODELS

    return MODELS


__all__ = ["Config", "DataConfig", "OptimConfig", "ParamGroup", "TrainerConfig", "ModelSection",
           "TaskSection", "TASKS",
           "get_task_class", "load_config", "read_yaml_sections", "apply_overrides", "parse_override",
           "from_dict", "to_plain",
           "default_yaml", "parse_max_time", "migrate_stored_config"]
