"""Models behind one interface.

Every model is a ``torch.nn.Module`` with
    ``forward(data, compute_forces=True, compute_stress=False) -> {"energy" (B,), "energies" (n,),
    "forces" (n, 3)?, "stress" (B, 3, 3)?}``
(energies in eV, forces eV/Å, stress eV/Å^3), a nested ``Config`` dataclass and
``from_config(cfg, statistics)``. Models are selected by name through ``MODELS``; the import happens only
when a model is asked for, so inference never imports the training stack.
"""

from __future__ import annotations

import importlib

from molequi.errors import ConfigError, suggest

# name -> "module:Class"; add a line here to register a model
MODELS: dict[str, str] = {
    "mace": "molequi.models.mace:MACE",
    "egnn": "molequi.models.egnn:EGNN",
    "lj": "molequi.models.lj:LennardJones",
    "qhnet": "molequi.models.hamiltonian.qhnet:QHNet",
    "equiformer_v2": "molequi.models.equiformer_v2:EquiformerV2",
    "faenet": "molequi.models.frame_averaging:FrameAveraging",
    "frame_averaging": "molequi.models.frame_averaging:FrameAveraging",
    "edm": "molequi.models.generative.edm:EDM",
    "eqgat_diff": "molequi.models.generative.categorical:CategoricalDiffusion",
}


def get_model_class(name: str):
    """Return the model class registered under ``name`` (ConfigError listing valid names otherwise)."""
    key = name.lower()
    if key not in MODELS:
        raise ConfigError(f"unknown model '{name}'; valid models: {', '.join(sorted(MODELS))}. "
                          f"{suggest(key, MODELS)}".strip())
    module, cls = MODELS[key].split(":")
    return getattr(importlib.import_module(module), cls)


__all__ = ["MODELS", "get_model_class"]
