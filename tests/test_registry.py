"""The one name -> object table (``molequi.registry.Registry``) behind models, tasks, datasets, relaxation
optimisers and tensor-product kinds: lazy imports, one error message with a suggestion."""

import sys

import pytest

from molequi.errors import ConfigError
from molequi.registry import Registry


def test_lookup_is_lazy_case_insensitive_and_suggests():
    reg = Registry("widget", {"fraction": "fractions:Fraction", "local": len})
    sys.modules.pop("fractions", None)
    assert "fraction" in reg and sorted(reg) == ["fraction", "local"]
    assert "fractions" not in sys.modules  # listing and membership import nothing
    from fractions import Fraction

    assert reg.load("FRACTION") is Fraction and reg.load("local") is len
    with pytest.raises(ConfigError, match=r"unknown widget 'fractoin'; valid widgets: fraction, local\. "
                                          r"did you mean 'fraction'\?"):
        reg.load("fractoin")
    reg["plugin"] = "molequi_plugin_not_installed:Widget"  # a plug-in registers itself by assignment
    message = ("widget 'plugin' is registered as molequi_plugin_not_installed:Widget but the module "
               "molequi_plugin_not_installed cannot be imported")
    with pytest.raises(ConfigError, match=message):
        reg.load("plugin")


def test_every_registry_in_the_package_speaks_the_same_way():
    from molequi.data.datasets import DATASETS
    from molequi.models import MODELS
    from molequi.nn.tensor_products import build_conv_tensor_product
    from molequi.simulate.relax import OPTIMIZERS
    from molequi.tasks import TASKS

    for reg, wrong, right in [(MODELS, "macee", "mace"), (TASKS, "energy_force", "energy_forces"),
                              (DATASETS, "rmd71", "rmd17"), (OPTIMIZERS, "fier", "fire")]:
        with pytest.raises(ConfigError, match=f"unknown {reg.kind} '{wrong}'.*did you mean '{right}'"):
            reg.load(wrong)
    from ase.optimize import FIRE

    assert OPTIMIZERS.load("fire") is FIRE
    with pytest.raises(ConfigError, match="unknown tensor product kind 'so3'; valid kinds: e3nn, gaunt, so2"):
        build_conv_tensor_product("so3", None, None, None)
