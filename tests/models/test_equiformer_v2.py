"""molequi's EquiformerV2-style model (equiformer_v2_molequi): interface, SE(3) equivariance, conservative
forces/stress, direct-force mode; the names (equiformer_v2 is fairchem's model, equiformer_v2_fairchem its alias)
and old checkpoints that said equiformer_v2 for this variant."""

from dataclasses import asdict

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from molequi import keys as K
from molequi.data.statistics import Statistics
from molequi.errors import ConfigError, ModelError
from molequi.models import get_model_class
from molequi.models.equiformer_v2 import EquiformerV2Molequi
from molequi.testing import _batch, assert_equivariant, check_forces_fd, check_stress_fd

CUTOFF = 3.0


def stats():
    return Statistics(
        elements=[1, 6, 8, 29],
        e0s={1: -13.6, 6: -1030.0, 8: -2040.0, 29: -3.0},
        energy_shift=0.1,
        energy_scale=0.5,
        force_rms=1.2,
        avg_num_neighbors=4.0,
    )


def tiny(**kw):
    cfg = EquiformerV2Molequi.Config(
        r_max=CUTOFF,
        lmax=2,
        mmax=1,
        channels=6,
        num_layers=1,
        num_heads=2,
        hidden_channels=6,
        attn_channels=4,
        value_channels=3,
        ffn_channels=6,
        radial_hidden=8,
        element_channels=4,
        readout_hidden=6,
        **kw,
    )
    torch.manual_seed(0)
    return EquiformerV2Molequi.from_config(cfg, stats()).double()


def molecule():
    rng = np.random.default_rng(3)
    pos = np.array([[0.0, 0, 0], [1.2, 0.1, 0], [-0.6, 1.0, 0.2], [0.3, -0.9, 0.8], [1.9, 0.9, -0.4]])
    return Atoms("COHHH", positions=pos + 0.05 * rng.normal(size=pos.shape))


def crystal():
    a = bulk("Cu", "fcc", a=3.6, cubic=True)  # bonds along lattice directions
    a.rattle(0.05, seed=1)
    return a


def test_registry_and_interface():
    assert get_model_class("equiformer_v2_molequi") is EquiformerV2Molequi
    model = tiny(activation="gate")
    out = model(_batch([molecule(), crystal()], CUTOFF, torch.float64), compute_forces=True)
    assert out[K.ENERGY].shape == (2,) and out[K.ENERGIES].shape == (9,) and out[K.FORCES].shape == (9, 3)
    assert model.conservative
    assert torch.isfinite(out[K.FORCES]).all()


def test_equivariance_float64_gate_exact():
    assert_equivariant(
        tiny(activation="gate"),
        [molecule(), crystal()],
        CUTOFF,
        dtype=torch.float64,
        n_rotations=2,
        atol=1e-10,
    )


def test_s2_activation_equivariance_error_falls_with_grid_to_1e10():
    """The S2 activation is equivariant up to the grid's aliasing: the error falls fast with the resolution
    (measured: forces 1.8e-5, 6.7e-9, 1.1e-11 at 12, 24, 48 points per angle) and is ~1e-10 at 48."""
    errors = []
    for resolution in (12, 24, 48):
        rep = assert_equivariant(
            tiny(activation="s2", grid_resolution=resolution),
            [molecule()],
            CUTOFF,
            dtype=torch.float64,
            n_rotations=2,
            atol=1e-3,
            compute_stress=False,
        )
        errors.append(max(rep.energy, rep.forces))
    assert errors[1] < errors[0] / 100 and errors[2] < errors[1] / 100, errors
    assert errors[2] < 1e-10, errors


def test_forces_and_stress_match_finite_differences():
    model = tiny(activation="gate")
    check_forces_fd(model, molecule(), CUTOFF, dtype=torch.float64, n_atoms=2)
    check_stress_fd(model, crystal(), CUTOFF, dtype=torch.float64)


def test_direct_force_mode_is_flagged_and_equivariant():
    model = tiny(activation="gate", direct_forces=True)
    assert model.conservative is False
    batch = _batch([molecule()], CUTOFF, torch.float64)
    out = model(batch)
    assert out[K.FORCES].shape == (5, 3)
    with pytest.raises(ModelError, match="no stress"):
        model(batch, compute_stress=True)
    assert_equivariant(
        model, [molecule()], CUTOFF, dtype=torch.float64, n_rotations=2, atol=1e-10, compute_stress=False
    )


def test_bad_config_is_named():
    with pytest.raises(ConfigError, match="mmax"):
        EquiformerV2Molequi.Config(lmax=2, mmax=3).validate()
    with pytest.raises(ConfigError, match="activation"):
        EquiformerV2Molequi.Config(activation="relu").validate()


def test_lmax6_mmax2_equivariant():
    """EquiformerV2's OC20 setting (L = 6, m_max = 2), tiny channels."""
    cfg = EquiformerV2Molequi.Config(
        r_max=CUTOFF,
        lmax=6,
        mmax=2,
        channels=2,
        num_layers=1,
        num_heads=1,
        hidden_channels=2,
        attn_channels=2,
        value_channels=2,
        ffn_channels=2,
        radial_hidden=4,
        element_channels=2,
        readout_hidden=2,
        activation="gate",
    )
    torch.manual_seed(0)
    model = EquiformerV2Molequi.from_config(cfg, stats()).double()
    assert_equivariant(model, [molecule()], CUTOFF, dtype=torch.float64, n_rotations=1, atol=1e-10)


# -- names: equiformer_v2 is fairchem's EquiformerV2; this variant was called equiformer_v2 before ----------------

#: the model section an older molequi wrote into its checkpoints for ``tiny()`` when this variant was registered
#: as ``equiformer_v2`` (ModelSection.to_dict: the name and every field of its Config, as of that version)
OLD_SECTION = {"name": "equiformer_v2", "r_max": CUTOFF, "num_bessel": 8, "num_polynomial_cutoff": 5, "lmax": 2,
               "mmax": 1, "channels": 6, "num_layers": 1, "num_heads": 2, "hidden_channels": 6,
               "attn_channels": 4, "value_channels": 3, "ffn_channels": 6, "radial_hidden": 8,
               "element_channels": 4, "readout_hidden": 6, "activation": "s2", "grid_resolution": None,
               "direct_forces": False, "avg_num_neighbors": None}


def save_old_style(path, section, model, version=2):
    """A checkpoint as ``molequi train`` wrote it: the whole run config, statistics, weights (torch.save of
    plain values and tensors), without today's molequi.checkpoint helpers."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    torch.save({"format": "molequi", "version": version,
                "config": {"model": section, "data": {"name": "extxyz"}, "task": {"name": "energy_forces"},
                           "optim": {}, "trainer": {}},
                "statistics": stats().to_dict(), "elements": [1, 6, 8, 29], "model_state": state,
                "ema_state": None, "dtype": "float64", "step": 10, "epoch": 1, "metrics": {}}, path)


def outputs(model, structures):
    batch = _batch(structures, CUTOFF, torch.float64)
    return model(batch, compute_forces=True, compute_stress=True)


@pytest.mark.parametrize("version", [1, 2])
def test_old_equiformer_v2_checkpoint_loads_as_the_variant_with_identical_outputs(tmp_path, version):
    from molequi.checkpoint import load_model, read_checkpoint

    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # fixed tables built in float64, as load_model builds a float64 model
    try:
        model = tiny().eval()
    finally:
        torch.set_default_dtype(previous)
    want = outputs(model, [molecule(), crystal()])
    save_old_style(tmp_path / "old.pt", OLD_SECTION, model, version)
    assert read_checkpoint(tmp_path / "old.pt")["config"]["model"]["name"] == "equiformer_v2_molequi"
    loaded = load_model(tmp_path / "old.pt")
    assert type(loaded) is EquiformerV2Molequi
    got = outputs(loaded, [molecule(), crystal()])
    for key in (K.ENERGY, K.FORCES, K.STRESS):
        torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)


def test_new_equiformer_v2_checkpoint_and_the_alias_load_as_fairchems_model(tmp_path):
    from molequi.checkpoint import load_model
    from molequi.config import model_section_from_dict
    from molequi.models import build_model
    from molequi.models.equiformer_v2_fairchem import EquiformerV2Fairchem

    small = {"r_max": CUTOFF, "max_neighbors": 6, "num_layers": 1, "lmax": 2, "mmax": 1, "sphere_channels": 4,
             "attn_hidden_channels": 4, "num_heads": 2, "attn_alpha_channels": 4, "attn_value_channels": 2,
             "ffn_hidden_channels": 4, "edge_channels": 4, "grid_resolution": None, "edge_roll": "fixed",
             "direct_forces": False}
    for name in ("equiformer_v2", "equiformer_v2_fairchem"):
        section = model_section_from_dict({"name": name, **small})
        assert section.name == "equiformer_v2"  # the alias is read as the model's name
        torch.manual_seed(0)
        model = build_model(section, stats()).double().eval()
        assert type(model) is EquiformerV2Fairchem
        want = outputs(model, [molecule(), crystal()])
        save_old_style(tmp_path / f"{name}.pt", {"name": name, **asdict(section.config)}, model)
        loaded = load_model(tmp_path / f"{name}.pt")
        assert type(loaded) is EquiformerV2Fairchem
        got = outputs(loaded, [molecule(), crystal()])
        for key in (K.ENERGY, K.FORCES, K.STRESS):
            torch.testing.assert_close(got[key], want[key], rtol=0, atol=0)


def test_model_names_in_configs():
    from molequi.config import model_section_from_dict
    from molequi.models.equiformer_v2_fairchem import EquiformerV2Fairchem

    assert get_model_class("equiformer_v2") is EquiformerV2Fairchem
    assert get_model_class("equiformer_v2_fairchem") is EquiformerV2Fairchem
    plain = model_section_from_dict({"name": "equiformer_v2"})
    assert plain.name == "equiformer_v2" and plain.config == EquiformerV2Fairchem.Config()  # fairchem's OC20 31M
    assert model_section_from_dict({"name": "equiformer_v2", "sphere_channels": 8}).name == "equiformer_v2"
    old = model_section_from_dict({"name": "equiformer_v2", "channels": 8})  # a config written for the variant
    assert old.name == "equiformer_v2_molequi" and old.config == EquiformerV2Molequi.Config(channels=8)
    with pytest.raises(ConfigError, match="sphere_channels"):  # mixing the two models' fields is an error
        model_section_from_dict({"name": "equiformer_v2", "channels": 8, "sphere_channels": 8})
