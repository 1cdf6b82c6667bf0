"""Checkpoints of generative models (EDM, categorical diffusion), written and read through the package's one
checkpoint module ``molequi.checkpoint`` (atomic writes, ``weights_only=True`` loads). Generated molecules
are written by ``molequi.data.molecules.write_sdf`` / ``write_extxyz``.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from molequi.errors import CheckpointError
from molequi.models.base import GenerativeModel


def save_checkpoint(model: torch.nn.Module, path: str | Path, *, metrics: dict | None = None, step: int = 0,
                    extra_config: dict | None = None) -> None:
    """Write ``model`` as a molequi model payload (config + weights), loadable with
    ``molequi.checkpoint.load_model`` and ``molequi generate``."""
    from molequi.checkpoint import make_payload, save_model

    if not isinstance(model, GenerativeModel):
        raise CheckpointError(f"cannot save a {type(model).__name__} as a generative checkpoint")
    cfg = {"model": {"name": model.config.name, **dataclasses.asdict(model.config)}, **(extra_config or {})}
    dtype = next(model.parameters()).dtype
    payload = make_payload(config=cfg, statistics={"elements": list(model.config.elements)},
                           model_state=model.state_dict(), dtype=dtype, step=step, metrics=metrics)
    save_model(payload, path)


def load_generative(path: str | Path, device: str = "cpu") -> torch.nn.Module:
    """A generative model (EDM or categorical) from a checkpoint of ``molequi train`` or ``save_checkpoint``."""
    from molequi.checkpoint import load_model

    model = load_model(path, device=device)
    if not isinstance(model, GenerativeModel):
        raise CheckpointError(f"{path} holds a {type(model).__name__}, not a generative model "
                              "(edm, eqgat_diff, egnn_categorical)")
    return model


__all__ = ["save_checkpoint", "load_generative"]
