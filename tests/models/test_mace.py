"""MACE: symmetry, force / stress consistency, locality, dtypes, errors, rebuild from config + state dict."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule
from torch_geometric.data import Batch

from molequi import keys as K
from molequi.data.records import atoms_to_data
from molequi.data.statistics import Statistics
from molequi.errors import ModelError
from molequi.graph.neighbors import RadiusGraph
from molequi.models import get_model_class
from molequi.models.mace import MACE
from molequi.testing import assert_equivariant, check_forces_fd, check_stress_fd, predict

R_MAX = 4.0
# zero E0 / shift so that energy comparisons test the network, not the reference energies
STATS = Statistics(elements=[1, 6, 8, 14], e0s={}, energy_shift=0.0, energy_scale=1.0, avg_num_neighbors=6.0)


def tiny_config(**kw) -> MACE.Config:
    base = dict(
        r_max=R_MAX,
        hidden_irreps="4x0e+4x1o",
        max_ell=2,
        radial_MLP=[8, 8],
        MLP_irreps="4x0e",
        correlation=3,
        num_interactions=2,
    )
    base.update(kw)
    return MACE.Config(**base)


@pytest.fixture(scope="module")
def model() -> MACE:
    torch.manual_seed(0)
    return MACE.from_config(tiny_config(), STATS).double()


def molecules() -> list[Atoms]:
    out = []
    for name, seed in (("CH3CH2OH", 1), ("CH4", 2), ("H2O", 3)):
        a = molecule(name)
        a.rattle(0.1, seed=seed)
        out.append(a)
    return out


def crystal() -> Atoms:
    si = bulk("Si", "diamond", a=5.43)
    si.set_cell(si.cell[:] + np.array([[0.0, 0.2, 0.1], [0.1, 0.0, -0.2], [0.0, 0.1, 0.0]]), scale_atoms=True)
    si.rattle(0.05, seed=4)
    return si


def test_registered():
    assert get_model_class("mace") is MACE


@pytest.mark.parametrize("reflections", [False, True])
def test_equivariance_float64(model, reflections):
    report = assert_equivariant(model, molecules(), R_MAX, dtype=torch.float64, reflections=reflections)
    assert report.worst() < 1e-10
    report = assert_equivariant(
        model, [crystal()], R_MAX, dtype=torch.float64, reflections=reflections, n_rotations=2
    )
    assert report.worst() < 1e-10
    assert report.stress < 1e-10


def test_equivariance_float32():
    torch.manual_seed(1)
    m = MACE.from_config(tiny_config(), STATS)
    report = assert_equivariant(
        m, molecules() + [crystal()], R_MAX, dtype=torch.float32, n_rotations=2, compute_stress=False
    )
    assert report.worst() < 1e-5


def test_forces_match_finite_differences(model):
    err = check_forces_fd(model, molecules()[0], R_MAX, dtype=torch.float64, n_atoms=4)
    assert err < 1e-6


def test_stress_matches_strain_derivative(model):
    err = check_stress_fd(model, crystal(), R_MAX, dtype=torch.float64)
    assert err < 1e-6
    out = predict(model, [crystal()], R_MAX, compute_stress=True)
    assert np.abs(out[K.STRESS]).max() > 1e-4  # a real, nonzero stress was compared
    np.testing.assert_allclose(out[K.STRESS][0], out[K.STRESS][0].T, atol=1e-12)


def test_outputs_shapes_and_additivity(model):
    mols = molecules()
    out = predict(model, mols, R_MAX)
    n = sum(len(a) for a in mols)
    assert out[K.ENERGY].shape == (3,) and out[K.ENERGIES].shape == (n,) and out[K.FORCES].shape == (n, 3)
    offsets = np.cumsum([0] + [len(a) for a in mols])
    for s in range(3):
        assert out[K.ENERGY][s] == pytest.approx(
            out[K.ENERGIES][offsets[s] : offsets[s + 1]].sum(), abs=1e-10
        )
        alone = predict(model, [mols[s]], R_MAX)
        assert alone[K.ENERGY][0] == pytest.approx(out[K.ENERGY][s], abs=1e-10)
        np.testing.assert_allclose(alone[K.FORCES], out[K.FORCES][offsets[s] : offsets[s + 1]], atol=1e-10)
    # net force of an isolated molecule vanishes (translation invariance)
    np.testing.assert_allclose(out[K.FORCES][: offsets[1]].sum(0), 0.0, atol=1e-10)


def test_locality_fragments_beyond_cutoff_add_up(model):
    a, b = molecules()[1], molecules()[2]
    b = b.copy()
    b.positions += np.array([R_MAX + 6.0, 0.0, 0.0])
    together = predict(model, [a + b], R_MAX)[K.ENERGY][0]
    apart = predict(model, [a], R_MAX)[K.ENERGY][0] + predict(model, [b], R_MAX)[K.ENERGY][0]
    assert together == pytest.approx(apart, abs=1e-10)


def test_energy_head_uses_statistics():
    stats = Statistics(
        elements=[1, 8], e0s={1: -13.6, 8: -2040.0}, energy_shift=0.5, energy_scale=2.0, avg_num_neighbors=3.0
    )
    torch.manual_seed(2)
    m = MACE.from_config(tiny_config(), stats).double()
    water = molecules()[2]
    out = predict(m, [water], R_MAX)
    # same network with E0 = 0, scale 1, shift 0 gives the readout y: E_i = E0 + 2 y_i + 0.5
    stats0 = Statistics(elements=[1, 8], avg_num_neighbors=3.0)
    m0 = MACE.from_config(tiny_config(), stats0).double()
    m0.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("head.")}, strict=False)
    y = predict(m0, [water], R_MAX)[K.ENERGIES]
    e0 = np.array([{1: -13.6, 8: -2040.0}[z] for z in water.numbers])
    np.testing.assert_allclose(out[K.ENERGIES], e0 + 2.0 * y + 0.5, atol=1e-9)


def test_float32_close_to_float64():
    torch.manual_seed(3)
    m = MACE.from_config(tiny_config(), STATS)
    e32 = predict(m, molecules(), R_MAX, dtype=torch.float32)
    e64 = predict(m.double(), molecules(), R_MAX, dtype=torch.float64)
    np.testing.assert_allclose(e32[K.ENERGY], e64[K.ENERGY], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(e32[K.FORCES], e64[K.FORCES], atol=1e-4)


def test_unknown_element_raises_model_error(model):
    gold = Atoms("AuH", positions=[[0, 0, 0], [0, 0, 1.5]])
    with pytest.raises(ModelError, match="Au"):
        predict(model, [gold], R_MAX)


def test_rebuild_from_config_and_state_dict(model):
    clone = MACE.from_config(model.config, model.statistics).double()
    clone.load_state_dict(model.state_dict())
    a, b = predict(model, molecules(), R_MAX), predict(clone, molecules(), R_MAX)
    np.testing.assert_array_equal(a[K.ENERGY], b[K.ENERGY])
    assert clone.r_max == R_MAX and clone.elements == [1, 6, 8, 14]


def test_training_mode_gives_differentiable_forces():
    torch.manual_seed(4)
    m = MACE.from_config(tiny_config(), STATS).double().train()
    batch = Batch.from_data_list(
        [RadiusGraph(R_MAX)(atoms_to_data(a, dtype=torch.float64)) for a in molecules()]
    )
    out = m(batch, compute_forces=True)
    loss = (out[K.FORCES] ** 2).sum()
    loss.backward()
    grads = [p.grad for p in m.parameters() if p.grad is not None]
    assert len(grads) > 0 and sum(float(g.abs().sum()) for g in grads) > 0


def test_default_config_matches_mace_hyperparameters():
    cfg = MACE.Config()
    assert (
        cfg.r_max,
        cfg.num_bessel,
        cfg.num_polynomial_cutoff,
        cfg.max_ell,
        cfg.correlation,
        cfg.num_interactions,
    ) == (5.0, 8, 5, 3, 3, 2)
    assert cfg.hidden_irreps == "64x0e+64x1o" and cfg.MLP_irreps == "16x0e" and cfg.radial_MLP == [64, 64, 64]
    # max_ell = 3 builds and is equivariant (few channels)
    torch.manual_seed(5)
    m = MACE.from_config(MACE.Config(hidden_irreps="2x0e+2x1o", radial_MLP=[4], MLP_irreps="2x0e"), STATS)
    report = assert_equivariant(m, molecules()[:1], 5.0, dtype=torch.float64, n_rotations=1)
    assert report.worst() < 1e-10


def test_invalid_config():
    from molequi.errors import ConfigError

    with pytest.raises(ConfigError):
        MACE.from_config(tiny_config(hidden_irreps="4x0e+8x1o"), STATS)
    with pytest.raises(ConfigError):
        MACE.from_config(tiny_config(hidden_irreps="4x1o"), STATS)


MACE_TORCH_OPTIONS = [
    dict(first_interaction="nonresidual", envelope="basis"),
    dict(radial_type="gaussian", distance_transform="agnesi", pair_repulsion=True),
    dict(distance_transform="soft", envelope="basis", first_interaction="nonresidual"),
    # T_n of the plain distance grows like (2r)^n (mace-torch's definition); of the Agnesi one it is bounded
    dict(radial_type="chebyshev", distance_transform="agnesi"),
]


@pytest.mark.parametrize("options", MACE_TORCH_OPTIONS, ids=["nonresidual-basis", "gaussian-agnesi-zbl",
                                                              "soft-nonresidual", "chebyshev-agnesi"])
def test_mace_torch_options_are_symmetric_and_conservative(options):
    """The options imported from mace-torch (values checked against it by scripts/parity/check.py) keep
    E(3) symmetry, forces = -dE/dx and stress = dE/d(eps)/V."""
    torch.manual_seed(7)
    m = MACE.from_config(tiny_config(**options), STATS).double()
    report = assert_equivariant(m, molecules()[:2] + [crystal()], R_MAX, dtype=torch.float64, reflections=True,
                                n_rotations=2)
    assert report.worst() < 1e-9
    assert check_forces_fd(m, molecules()[0], R_MAX, dtype=torch.float64, n_atoms=3) < 1e-6
    assert check_stress_fd(m, crystal(), R_MAX, dtype=torch.float64) < 1e-6


def test_zbl_pair_repulsion_is_the_zbl_formula_for_a_dimer():
    """ZBL energy of an isolated O-H pair against the universal ZBL potential written out here."""
    from ase.data import covalent_radii

    torch.manual_seed(3)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # the ZBL constants are buffers: keep them unrounded
    try:
        m = MACE.from_config(tiny_config(pair_repulsion=True, r_max=3.0), STATS)
        plain = MACE.from_config(tiny_config(r_max=3.0), STATS)
    finally:
        torch.set_default_dtype(previous)
    plain.load_state_dict({k: v for k, v in m.state_dict().items() if not k.startswith("zbl.")})
    r = 0.6
    dimer = Atoms("OH", positions=[[0, 0, 0], [r, 0, 0]])
    e_zbl = predict(m, [dimer], 3.0)[K.ENERGY][0] - predict(plain, [dimer], 3.0)[K.ENERGY][0]
    a = 0.4543 * 0.529 / (8**0.3 + 1**0.3)
    x = r / a
    phi = 0.1818 * np.exp(-3.2 * x) + 0.5099 * np.exp(-0.9423 * x) + 0.2802 * np.exp(-0.4028 * x) \
        + 0.02817 * np.exp(-0.2016 * x)
    u = r / (covalent_radii[8] + covalent_radii[1])
    p = 5
    env = 1 - (p + 1) * (p + 2) / 2 * u**p + p * (p + 2) * u ** (p + 1) - p * (p + 1) / 2 * u ** (p + 2)
    assert e_zbl == pytest.approx(14.3996 * 8 / r * phi * env, rel=1e-10)  # scale 1: STATS


def test_defaults_are_mace_run_train_defaults_and_old_ones_are_kept_for_old_checkpoints():
    # mace-torch 0.3.16: --radial_type bessel, --distance_transform None, --apply_cutoff True, --model MACE
    # (which forces interaction_first RealAgnosticInteractionBlock and atomic_inter_shift 0),
    # --scaling rms_forces_scaling, --pair_repulsion off (mace/tools/arg_parser.py,
    # mace/tools/model_script_utils.py _build_model)
    cfg = MACE.Config()
    assert (cfg.radial_type, cfg.distance_transform, cfg.envelope, cfg.first_interaction, cfg.pair_repulsion,
            cfg.scaling, cfg.shift) == ("bessel", "none", "basis", "nonresidual", False, "rms_forces", "none")
    # what molequi built before (checkpoint format 1 without these keys): tests/train/test_mace_defaults.py
    assert MACE.Config.LEGACY_DEFAULTS == {"first_interaction": "residual", "envelope": "weights",
                                           "scaling": "std", "shift": "mean"}
    with pytest.raises(Exception, match="unknown radial_type"):
        MACE.from_config(tiny_config(radial_type="legendre"), STATS)
