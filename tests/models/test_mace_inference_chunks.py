"""MACE inference over chunks of the neighbour table with frozen parameters (``_InferenceChunks``, issue 23
item 3: the chunks' gradients share one buffer per input, so the cost per atom does not grow with the system):
energy, forces and stress equal the unchunked evaluation to 1e-10 (float64) for chunk sizes with a short last
chunk, forces and stress equal finite differences, and a second derivative through the chunked backward
(Hessian times a vector) equals central differences of the forces."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk
from torch_geometric.data import Batch

from molequi import keys as K
from molequi.calculators.predict import build_records
from molequi.data.statistics import Statistics
from molequi.models import mace as mace_module
from molequi.models.mace import MACE
from molequi.response import energy_response
from molequi.testing import check_forces_fd, check_stress_fd

R_MAX = 4.0
STATS = Statistics(elements=[8, 29], e0s={}, energy_shift=0.0, energy_scale=1.0, avg_num_neighbors=8.0)


def frozen_model(chunk, frozen: bool = True) -> MACE:
    torch.manual_seed(0)
    cfg = MACE.Config(r_max=R_MAX, hidden_irreps="4x0e+4x1o", max_ell=2, radial_MLP=[8, 8], MLP_irreps="4x0e",
                      correlation=2, num_interactions=2, max_edges_per_chunk=chunk)
    model = MACE.from_config(cfg, STATS).double().eval()
    with torch.no_grad():  # larger last radial layers, so that the messages matter in every derivative
        for layer in model.layers:
            layer.radial.weights[-1].mul_(3.0)
    return model.requires_grad_(not frozen)  # frozen: as the calculators evaluate it


def cu_cell():
    cu = bulk("Cu", "fcc", a=3.6, cubic=True) * (3, 1, 1)
    cu.set_cell(cu.cell[:] + np.array([[0.0, 0.1, 0.2], [0.1, 0.0, -0.1], [0.0, 0.2, 0.0]]), scale_atoms=True)
    cu.rattle(0.05, seed=1)
    cu[0].symbol = "O"
    cu[5].symbol = "O"
    return cu


def record(atoms):
    return Batch.from_data_list(build_records([atoms], R_MAX, torch.float64, validate=False))


@pytest.fixture
def applied(monkeypatch):
    """Counts the calls of ``_InferenceChunks`` (so a test knows the chunked path ran)."""
    calls = []
    original = mace_module._InferenceChunks.apply

    def counted(*args):
        calls.append(args[1])  # the chunk size
        return original(*args)

    monkeypatch.setattr(mace_module._InferenceChunks, "apply", counted)
    return calls


def outputs(model, atoms):
    out = energy_response(model.atomic_energies, record(atoms), compute_forces=True, compute_stress=True)
    return {k: out[k].detach() for k in (K.ENERGY, K.FORCES, K.STRESS)}


@pytest.mark.parametrize("frozen", [True, False])
def test_chunked_inference_equals_unchunked(applied, frozen):
    """Frozen parameters: ``_InferenceChunks``; trainable ones (eval mode): a checkpoint per chunk."""
    cu = cu_cell()
    ref = outputs(frozen_model(None), cu)
    assert not applied
    k = frozen_model(None).neighbour_layout(record(cu)[K.EDGE_INDEX][1], len(cu)).k
    for atoms_per_chunk in (1, 5, len(cu) - 1):  # 5 does not divide 12 atoms: a short last chunk
        model = frozen_model(atoms_per_chunk * k, frozen)
        assert [r["rows_per_chunk"] for r in model.chunk_rows(record(cu))] == [atoms_per_chunk * k] * 2
        got = outputs(model, cu)
        assert applied[-1:] == ([atoms_per_chunk * k] if frozen else [])
        for key, value in ref.items():
            err = float((got[key] - value).abs().max())
            assert err < 1e-10, (atoms_per_chunk, key, err)
    assert float(ref[K.FORCES].abs().max()) > 1e-2 and float(ref[K.STRESS].abs().max()) > 1e-4


def test_chunked_inference_matches_finite_differences(applied):
    model, cu = frozen_model(40), cu_cell()
    assert check_forces_fd(model, cu, R_MAX, n_atoms=4) < 1e-6
    assert check_stress_fd(model, cu, R_MAX) < 1e-6
    assert applied


def _force_projection(model, atoms, v):
    data = record(atoms)
    pos = data[K.POS].detach().clone().requires_grad_(True)
    data[K.POS] = pos
    out = energy_response(model.atomic_energies, data, compute_forces=True, create_graph=True)
    return (out[K.FORCES] * v).sum(), pos


def test_second_derivative_through_the_chunked_backward(applied):
    """d(F . v)/dx . u (the differentiable per-chunk backward) against central differences of F . v."""
    model, cu = frozen_model(40), cu_cell()
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(len(cu), 3, generator=gen, dtype=torch.float64)
    u = torch.randn(len(cu), 3, generator=gen, dtype=torch.float64)
    s, pos = _force_projection(model, cu, v)
    (hv,) = torch.autograd.grad(s, pos)
    assert applied and float(hv.abs().max()) > 1e-3
    h, moved = 1e-5, []
    for sign in (1.0, -1.0):
        atoms = cu.copy()
        atoms.positions = cu.positions + sign * h * u.numpy()
        moved.append(float(_force_projection(model, atoms, v)[0].detach()))
    fd = (moved[0] - moved[1]) / (2 * h)
    assert abs(float((hv * u).sum()) - fd) < 1e-6 * max(1.0, abs(fd)), (float((hv * u).sum()), fd)


def test_predict_evaluates_with_frozen_parameters(applied):
    """``molequi.calculators.predict`` (and so ``molequi predict`` / ``eval``) runs the frozen-parameter chunks
    on a trainable model, gives the parameters back trainable, and equals the unchunked evaluation."""
    from molequi.calculators.predict import predict

    cu = cu_cell()
    ref = outputs(frozen_model(None), cu)
    model = frozen_model(40, frozen=False)
    (got,) = predict(model, [cu], dtype=torch.float64)
    assert applied and all(p.requires_grad for p in model.parameters())
    assert float(np.abs(got["forces"] - ref[K.FORCES].numpy()).max()) < 1e-10
    assert abs(got["energy"] - float(ref[K.ENERGY][0])) < 1e-10
