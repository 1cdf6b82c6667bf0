"""MACE with each edge tensor product (``MACE.Config.tensor_product``): symmetry, forces, equal functions
where the kinds span the same space, config validation and checkpoints."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from molequi import keys as K
from molequi.config import default_yaml, from_dict
from molequi.data.statistics import Statistics
from molequi.errors import ConfigError
from molequi.models.mace import MACE, TENSOR_PRODUCTS
from molequi.nn.tensor_products import TensorProductConvolution
from molequi.testing import assert_equivariant, check_forces_fd, predict
from molequi.checkpoint import build_model_from_payload, load_model, make_payload, save_model

R_MAX = 4.0
STATS = Statistics(elements=[1, 6, 8, 14], e0s={}, energy_shift=0.0, energy_scale=1.0, avg_num_neighbors=6.0)


def molecules() -> list[Atoms]:
    """Rattled methanol and water (no symmetry left to hide an error)."""
    out = [molecule("CH3OH"), molecule("H2O")]
    for seed, atoms in enumerate(out):
        atoms.rattle(0.1, seed=10 + seed)
    return out


def crystal() -> Atoms:
    """Two-atom silicon in a sheared cell, rattled: every atom sees periodic images."""
    si = bulk("Si", "diamond", a=5.43)
    si.set_cell(
        si.cell[:] @ np.array([[1.0, 0.05, 0.0], [0.0, 1.0, -0.04], [0.03, 0.0, 1.0]]), scale_atoms=True
    )
    si.rattle(0.05, seed=12)
    return si


def config(kind: str, **kw) -> MACE.Config:
    base = dict(
        r_max=R_MAX,
        hidden_irreps="8x0e+8x1o",
        max_ell=3,
        radial_MLP=[8],
        MLP_irreps="4x0e",
        correlation=2,
        num_interactions=2,
        tensor_product=kind,
    )
    base.update(kw)
    return MACE.Config(**base)


def build(kind: str, seed: int = 0, **kw) -> MACE:
    """Built in float32 (the default dtype), like a trained model; the checks move it to float64."""
    torch.manual_seed(seed)
    return MACE.from_config(config(kind, **kw), STATS)


def test_kinds_listed():
    assert TENSOR_PRODUCTS == ("native", "e3nn", "so2", "gaunt")
    assert MACE.Config().tensor_product == "native"


@pytest.mark.parametrize("kind", ["e3nn", "so2", "gaunt"])
def test_equivariant_float64_and_forces_match_finite_differences(kind):
    model = build(kind, max_ell=2)
    assert all(isinstance(layer.conv, TensorProductConvolution) for layer in model.layers)
    report = assert_equivariant(
        model, molecules(), R_MAX, dtype=torch.float64, reflections=True, n_rotations=2
    )
    assert report.worst() < 1e-10
    report = assert_equivariant(model, [crystal()], R_MAX, dtype=torch.float64, n_rotations=1)
    assert report.worst() < 1e-10 and report.stress < 1e-10
    assert check_forces_fd(model, molecules()[0], R_MAX, dtype=torch.float64, n_atoms=3) < 1e-6
    out = predict(model, molecules()[:1], R_MAX)
    assert np.abs(out[K.FORCES]).max() > 1e-3  # the checks compared real, nonzero forces


@pytest.mark.parametrize(
    "hidden,correlation",
    [("8x0e+8x1o", 2), ("4x0e+4x1o+4x1e", 3)],  # the second has pseudo-vector paths
)
def test_so2_e3nn_and_native_are_one_function(hidden, correlation):
    """Same parameters (names, shapes, path order); with the same weights, the same energies and forces."""
    models = {
        kind: build(kind, seed=i, hidden_irreps=hidden, correlation=correlation).double()
        for i, kind in enumerate(TENSOR_PRODUCTS[:3])
    }
    ref = models["e3nn"].state_dict()
    for kind, m in models.items():
        assert {k: v.shape for k, v in m.state_dict().items()} == {k: v.shape for k, v in ref.items()}, kind
        m.load_state_dict(ref)
    structures = molecules() + [crystal()]
    a = predict(models["e3nn"], structures, R_MAX, dtype=torch.float64, compute_stress=False)
    assert np.abs(a[K.FORCES]).max() > 1e-3
    for kind in ("so2", "native"):
        b = predict(models[kind], structures, R_MAX, dtype=torch.float64, compute_stress=False)
        np.testing.assert_allclose(b[K.ENERGY], a[K.ENERGY], rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(b[K.FORCES], a[K.FORCES], rtol=0, atol=1e-10 * np.abs(a[K.FORCES]).max())


def test_gaunt_has_one_radial_weight_per_harmonic_degree_and_channel():
    model = build("gaunt")
    for layer in model.layers:
        assert layer.conv.weight_numel == (3 + 1) * 8  # (max_ell + 1) x channels
        assert layer.radial.sizes[-1] == layer.conv.weight_numel
    e3nn = build("e3nn")
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in e3nn.parameters())


def test_invalid_choices_raise_config_error():
    with pytest.raises(ConfigError, match="native, e3nn, so2, gaunt"):
        MACE.from_config(config("cg"), STATS)
    with pytest.raises(ConfigError, match="natural-parity"):
        MACE.from_config(config("gaunt", hidden_irreps="8x0e+8x1e"), STATS)
    with pytest.raises(ConfigError, match="natural-parity"):
        MACE.from_config(config("gaunt", hidden_irreps="8x0e+8x2e"), STATS)
    with pytest.raises(ConfigError, match="max_ell >= 1"):
        MACE.from_config(config("so2", max_ell=0), STATS)
    raw = {k: v for k, v in dataclasses.asdict(config("native")).items()}
    raw["tensor_product"] = "fast"
    with pytest.raises(ConfigError, match="valid: native, e3nn, so2, gaunt"):
        from_dict(MACE.Config, raw, "model").validate()


def test_init_config_documents_the_option():
    text = default_yaml("mace")
    assert "  tensor_product: native" in text
    assert "gaunt (S2 grid; natural-parity hidden irreps only)" in text


def _payload(model: MACE, drop: tuple[str, ...] = ()) -> dict:
    cfg = {k: v for k, v in dataclasses.asdict(model.config).items() if k not in drop}
    return make_payload(
        config={"model": {"name": "mace", **cfg}},
        statistics=STATS.to_dict(),
        model_state=model.state_dict(),
        dtype=torch.float32,
    )


@pytest.mark.parametrize("kind", ["e3nn", "so2", "gaunt"])
def test_checkpoint_round_trip_keeps_kind_and_exact_float64_constants(kind, tmp_path):
    model = build(kind, max_ell=2)
    path = tmp_path / "model.pt"
    save_model(_payload(model), path)
    loaded = load_model(path, dtype=torch.float64)
    assert loaded.config.tensor_product == kind
    structures = molecules()
    a = predict(model.double(), structures, R_MAX, dtype=torch.float64)
    b = predict(loaded, structures, R_MAX, dtype=torch.float64)
    np.testing.assert_array_equal(a[K.ENERGY], b[K.ENERGY])
    # the float32 checkpoint did not round the product's fixed tensors
    assert assert_equivariant(loaded, structures, R_MAX, dtype=torch.float64, n_rotations=1).worst() < 1e-10


def test_checkpoint_without_the_field_loads_as_native(tmp_path):
    model = build("native", max_ell=2)
    payload = _payload(model, drop=("tensor_product",))
    assert "tensor_product" not in payload["config"]["model"]
    assert build_model_from_payload(payload).config.tensor_product == "native"
    save_model(payload, tmp_path / "old.pt")
    loaded = load_model(tmp_path / "old.pt", dtype=torch.float64)  # strict state-dict load
    a = predict(model.double(), molecules()[:1], R_MAX, dtype=torch.float64)
    # equal to rounding: BLAS may sum in another order for differently aligned copies of the same weights
    energy = predict(loaded, molecules()[:1], R_MAX)[K.ENERGY]
    np.testing.assert_allclose(energy, a[K.ENERGY], rtol=1e-14, atol=0)


@pytest.mark.parametrize("backend", ["fft", "dft"])
def test_gaunt_backends_same_function_and_parameters(backend):
    """gaunt_backend fft / dft (molequi.nn.gaunt_fft) = the grid: one state dict, equal outputs."""
    grid = build("gaunt", max_ell=2).double()
    other = build("gaunt", seed=1, max_ell=2, gaunt_backend=backend).double()
    other.load_state_dict(grid.state_dict())
    structures = molecules()
    a = predict(grid, structures, R_MAX, dtype=torch.float64)
    b = predict(other, structures, R_MAX, dtype=torch.float64)
    for key in (K.ENERGY, K.FORCES):
        assert np.abs(a[key] - b[key]).max() < 1e-10 * max(1.0, np.abs(a[key]).max())
    assert np.abs(a[K.FORCES]).max() > 0
    with pytest.raises(ConfigError, match=f"gaunt_backend '{backend}' needs tensor_product 'gaunt'"):
        config("e3nn", gaunt_backend=backend).validate()
    with pytest.raises(ConfigError, match="unknown gaunt_backend 'x'; valid: grid, fft, dft"):
        config("gaunt", gaunt_backend="x").validate()
