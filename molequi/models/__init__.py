"""Models behind one interface, selected by name and built in one place.

Every force field is a ``torch.nn.Module`` satisfying ``molequi.models.base.ForceField``::

    forward(data, compute_forces=True, compute_stress=False) -> {"energy" (B,), "energies" (n,),
                                                                  "forces" (n, 3)?, "stress" (B, 3, 3)?}

(energies in eV, forces eV/Å, stress eV/Å^3) with attributes ``r_max`` (Å), ``elements`` (atomic numbers)
and ``conservative``. Every model has a nested ``Config`` dataclass (with ``validate()`` where values can be
wrong) and ``from_config(cfg, statistics)``.

Models are registered by name in ``MODELS`` (a lazy ``molequi.registry.Registry``: the module is imported
only when the model is asked for, so inference never imports the training stack). ``build_model`` is the
one way the library turns a model section (name + config) and ``Statistics`` into a model.
"""

from __future__ import annotations

from typing import Any

from molequi.registry import Registry

# name -> "module:Class"; add a line here to register a model
MODELS = Registry("model", {
    "mace": "molequi.models.mace:MACE",
    "egnn": "molequi.models.egnn:EGNN",
    "lj": "molequi.models.lj:LennardJones",
    "qhnet": "molequi.models.hamiltonian.qhnet:QHNet",
    "hamiltonian_conv": "molequi.models.hamiltonian.conv:HamiltonianConv",
    # EquiformerV2 as fairchem defines it; equiformer_v2_fairchem: its former name, an alias read as
    # equiformer_v2 (molequi.models.equiformer_v2.legacy_equiformer_v2_section)
    "equiformer_v2": "molequi.models.equiformer_v2_fairchem:EquiformerV2Fairchem",
    "equiformer_v2_fairchem": "molequi.models.equiformer_v2_fairchem:EquiformerV2Fairchem",
    # molequi's own EquiformerV2-style variant (configs and checkpoints that say equiformer_v2 with its
    # fields, written when that name meant it, load as this)
    "equiformer_v2_molequi": "molequi.models.equiformer_v2:EquiformerV2Molequi",
    "escn": "molequi.models.escn:ESCN",
    "scn": "molequi.models.scn:SCN",
    "faenet": "molequi.models.faenet:FAENet",
    "frame_averaging": "molequi.models.frame_averaging:FrameAveraging",
    "edm": "molequi.models.generative.edm:EDM",
    "geoldm": "molequi.models.generative.geoldm:GeoLDM",
    "eqgat_diff": "molequi.models.generative.categorical:EQGATDiffusion",
    "egnn_categorical": "molequi.models.generative.categorical:CategoricalDiffusion",
})

# the model class registered under a name (ConfigError listing the valid names otherwise)
get_model_class = MODELS.load


def build_model(model_config: Any, statistics: Any):
    """The (untrained) model a model section describes: ``MODELS[model_config.name].from_config(...)``.

    Arguments::

        model_config  a ``molequi.config.ModelSection``: ``name`` (registry key) and ``config`` (that model's
                      ``Config``, already validated when the run config was read)
        statistics    ``molequi.data.statistics.Statistics`` (elements, E0s, shift, scale, avg neighbours)
    """
    cls = get_model_class(model_config.name)
    return cls.from_config(model_config.config, statistics)


__all__ = ["MODELS", "get_model_class", "build_model"]
