"""The declared model interfaces: every registered force field satisfies ``ForceField`` with the values its
config and statistics give, generative models satisfy ``GenerativeModel`` and name themselves in their config,
and what is not a force field is refused by the calculator by name."""

import pytest
import torch

from molequi.config import ModelSection, model_section_from_dict
from molequi.data.statistics import Statistics
from molequi.errors import ModelError
from molequi.models import MODELS, build_model, get_model_class
from molequi.models.base import ForceField, GenerativeModel

STATS = Statistics(elements=[1, 6, 8], avg_num_neighbors=6.0)
FORCE_FIELDS = ["mace", "egnn", "lj", "equiformer_v2_molequi", "faenet", "frame_averaging", "escn", "equiformer_v2",
                "equiformer_v2_fairchem", "scn"]
GENERATIVE = ["edm", "geoldm", "eqgat_diff", "egnn_categorical"]


def test_every_registered_model_is_classified():
    shipped = {name for name, entry in MODELS.items() if entry.startswith("molequi.")}  # not test plug-ins
    assert set(FORCE_FIELDS) | set(GENERATIVE) | {"qhnet", "hamiltonian_conv"} == shipped


@pytest.mark.parametrize("name", FORCE_FIELDS)
def test_registered_force_fields_satisfy_the_protocol(name):
    section = model_section_from_dict({"name": name, "r_max": 4.25})
    model = build_model(section, STATS)
    assert isinstance(model, ForceField)
    assert model.r_max == 4.25  # the cutoff written in the config, in Å
    assert list(model.elements) == [1, 6, 8]  # the elements of the statistics it was built with
    # frame averaging is not conservative at degenerate frames (tests/models/test_frame_averaging.py); eSCN's,
    # SCN's (its only mode) and EquiformerV2's (equiformer_v2, alias equiformer_v2_fairchem) default is
    # fairchem's direct force head
    assert model.conservative is (name not in ("faenet", "frame_averaging", "escn", "equiformer_v2",
                                                 "equiformer_v2_fairchem", "scn"))
    assert not isinstance(model, GenerativeModel)


def test_direct_force_head_declares_itself_nonconservative():
    for name in ("equiformer_v2_molequi", "equiformer_v2"):
        section = model_section_from_dict({"name": name, "direct_forces": True})
        assert build_model(section, STATS).conservative is False


@pytest.mark.parametrize("name", GENERATIVE)
def test_generative_models_declare_their_registry_name(name):
    cls = get_model_class(name)
    model = build_model(ModelSection(name, cls.Config(hidden=8, layers=1)), None)
    assert isinstance(model, GenerativeModel) and not isinstance(model, ForceField)
    assert model.config.name == name and get_model_class(model.config.name) is cls
    assert cls.Config.r_max is None  # fully connected: no neighbour graph to build


def test_calculator_refuses_a_module_that_is_not_a_force_field():
    from molequi.calculators.calculator import MolequiCalculator

    with pytest.raises(ModelError, match="not a force field.*r_max"):
        MolequiCalculator(torch.nn.Linear(3, 1))
