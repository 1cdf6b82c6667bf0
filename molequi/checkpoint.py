"""Checkpoints: a typed config plus weights, written atomically and read with ``weights_only=True``.

Two files, one payload. The *model payload* is a dict of plain Python values and tensors::

    {"format": "molequi", "version": 2,
     "config": Config.to_dict(),            # the whole run config (model.name selects the class)
     "statistics": Statistics.to_dict(),    # normalisation (E0s, shift, scale, avg neighbours)
     "elements": [1, 6, 8],                 # atomic numbers the model was trained on
     "model_state": {...}, "ema_state": {...} | None,
     "dtype": "float32", "step": 1234, "epoch": 5, "metrics": {...}}

- ``model.pt`` (written at the end of a run by ``save_model``) is the payload alone: what inference needs.
- Lightning's training checkpoints (``checkpoints/last.ckpt``, ``best.ckpt``) carry the same payload under
  the key ``"molequi"``, next to optimiser, scheduler, EMA, loop and RNG state, so ``--resume`` continues the
  same run and ``load_model`` reads either file.

Every write goes to a temporary file in the same directory, is flushed to disk, then ``os.replace``-d onto
the target, so a process killed at any moment leaves the previous file intact.
"""

from __future__ import annotations

from pathlib import Path

import torch

from molequi.errors import CheckpointError, ConfigError
from molequi.io import atomic_write_torch

FORMAT = "molequi"
#: 2: MACE's defaults became mace_run_train's; a version-1 config is read with the old defaults
#: (``molequi.config.migrate_stored_config``)
VERSION = 2


def make_payload(*, config: dict, statistics: dict, model_state: dict, ema_state: dict | None = None,
                 dtype: torch.dtype = torch.float32, step: int = 0, epoch: int = 0,
                 metrics: dict | None = None) -> dict:
    """Assemble the model payload (see the module docstring); tensors are detached copies on the CPU."""
    def cpu(state):
        return None if state is None else {k: v.detach().to("cpu").clone() for k, v in state.items()}

    return {
        "format": FORMAT,
        "version": VERSION,
        "config": config,
        "statistics": statistics,
        "elements": [int(z) for z in statistics.get("elements", [])],
        "model_state": cpu(model_state),
        "ema_state": cpu(ema_state),
        "dtype": str(dtype).removeprefix("torch."),
        "step": int(step),
        "epoch": int(epoch),
        "metrics": {k: float(v) for k, v in (metrics or {}).items()},
    }


def save_model(payload: dict, path: str | Path) -> None:
    """Write a model payload (``make_payload``) atomically to ``path``."""
    atomic_write_torch(path, payload)


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict:
    """Return the model payload of ``model.pt`` or of a Lightning training checkpoint.

    Loaded with ``weights_only=True``: a checkpoint can only hold tensors and plain Python values.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated file, pickle of a class, not a torch file, ...
        raise CheckpointError(f"{path}: cannot be read as a molequi checkpoint ({type(exc).__name__}: {exc})",
                              ) from exc
    if isinstance(obj, dict) and isinstance(obj.get("molequi"), dict):
        obj = obj["molequi"]
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a molequi checkpoint (no 'format: {FORMAT}' payload); "
                              "was it written by another program?")
    version = obj.get("version", 0)
    if isinstance(version, bool) or not isinstance(version, int):
        raise CheckpointError(f"{path}: checkpoint format version {version!r} is not an integer; the file is "
                              "damaged or was not written by molequi")
    if version > VERSION:
        raise CheckpointError(f"{path}: checkpoint version {obj['version']} is newer than this molequi "
                              f"understands ({VERSION}); upgrade molequi")
    for key in ("config", "statistics", "model_state"):
        if key not in obj:
            raise CheckpointError(f"{path}: checkpoint lacks '{key}'")
    from molequi.config import migrate_stored_config

    return {**obj, "config": migrate_stored_config(obj["config"], version)}


def build_model_from_payload(payload: dict) -> torch.nn.Module:
    """Build (untrained) the model that ``payload`` describes, with ``molequi.models.build_model``."""
    from molequi.config import model_section_from_dict
    from molequi.data.statistics import Statistics
    from molequi.models import build_model

    model_raw = payload["config"].get("model", {})
    if not isinstance(model_raw, dict) or model_raw.get("name") is None:
        raise CheckpointError("checkpoint config has no model name")
    try:
        section = model_section_from_dict(model_raw)
    except ConfigError as exc:
        raise CheckpointError(f"checkpoint's model config cannot be used: {exc}") from exc
    return build_model(section, Statistics.from_dict(payload["statistics"]))


def load_weights(model: torch.nn.Module, payload: dict, what: str, use_ema: bool = True) -> None:
    """Load ``payload``'s EMA weights (the raw ones when it has none, or with ``use_ema=False``) into
    ``model``, each cast to the dtype of the model's own tensor; exact fit required (``CheckpointError``
    starting with ``what`` otherwise)."""
    state = payload.get("ema_state") if use_ema and payload.get("ema_state") is not None \
        else payload["model_state"]
    ref = model.state_dict()
    state = {k: (v.to(ref[k].dtype) if k in ref and v.is_floating_point() else v) for k, v in state.items()}
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{what}: {exc}") from exc


def load_model(path: str | Path, device: str | torch.device | None = None, dtype: torch.dtype | None = None,
               use_ema: bool = True) -> torch.nn.Module:
    """The trained model of a checkpoint, in eval mode, ready for inference.

    Arguments::

        path     ``model.pt`` or a Lightning ``.ckpt`` written by ``molequi train``
        device   where to put it (default: CPU)
        dtype    torch.float32 / torch.float64 (default: the precision it was trained in)
        use_ema  take the exponential-moving-average weights when the checkpoint has them (the default, and
                 what validation used); False gives the raw last weights
    """
    return model_from_payload(read_checkpoint(path), path, device=device, dtype=dtype, use_ema=use_ema)


def model_from_payload(payload: dict, path: str | Path, device: str | torch.device | None = None,
                       dtype: torch.dtype | None = None, use_ema: bool = True) -> torch.nn.Module:
    """``load_model``'s model from a payload already read with ``read_checkpoint(path)`` (for callers that
    need the payload too, so the file is read once); ``path`` names it in errors."""
    trained_dtype = getattr(torch, payload.get("dtype", "float32"))
    previous = torch.get_default_dtype()
    if trained_dtype in (torch.float32, torch.float64):  # fixed constants (e3nn's Clebsch-Gordan tables,
        torch.set_default_dtype(trained_dtype)  # normalisations) built in the checkpoint's precision
    try:
        model = build_model_from_payload(payload)
    finally:
        torch.set_default_dtype(previous)
    model = model.to(trained_dtype)
    load_weights(model, payload, f"{path}: weights do not fit the model its config describes",
                 use_ema=use_ema)
    model = model.to(device=torch.device(device) if device is not None else torch.device("cpu"),
                     dtype=dtype if dtype is not None else trained_dtype)
    model.eval()
    return model


__all__ = ["make_payload", "save_model",
           "read_checkpoint",
           "build_model_from_payload", "load_weights", "load_model",
           "model_from_payload", "FORMAT", "VERSION"]
