"""MACE inference keeps no per-path edge tensor for the backward pass (issue 23 item 1): in eval mode the
neighbour-table convolution runs through ``_FusedPathSums``, whose backward recomputes the per-path weights
w_p = hidden @ W_p, the gathered sender features and the products z_p. Checked in float64 against finite
differences (forces, stress, a second derivative in positions and derivatives in the parameters, i.e. the
backward differentiated again), against the plain operations of training mode, and by what autograd keeps;
the ASE calculator evaluates with frozen parameters and gives them back trainable."""

from __future__ import annotations

import numpy as np
import torch
from ase.build import bulk
from torch_geometric.data import Batch

from molequi import keys as K
from molequi.calculators.calculator import MolequiCalculator
from molequi.calculators.predict import build_records
from molequi.data.statistics import Statistics
from molequi.models.mace import MACE
from molequi.response import energy_response
from molequi.testing import check_forces_fd, check_stress_fd

R_MAX = 4.0
STATS = Statistics(elements=[8, 29], e0s={}, energy_shift=0.0, energy_scale=1.0, avg_num_neighbors=8.0)


def make_model() -> MACE:
    torch.manual_seed(0)
    cfg = MACE.Config(r_max=R_MAX, hidden_irreps="4x0e+4x1o", max_ell=2, radial_MLP=[8, 8], MLP_irreps="4x0e",
                      correlation=2, num_interactions=2)
    model = MACE.from_config(cfg, STATS).double().eval()
    with torch.no_grad():  # larger last radial layers, so that the messages matter in every derivative
        for layer in model.layers:
            layer.radial.weights[-1].mul_(3.0)
    return model


def cu_cell():
    cu = bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 1, 1)
    cu.set_cell(cu.cell[:] + np.array([[0.0, 0.1, 0.2], [0.1, 0.0, -0.1], [0.0, 0.2, 0.0]]), scale_atoms=True)
    cu.rattle(0.05, seed=1)
    cu[0].symbol = "O"
    return cu


def record(atoms):
    return Batch.from_data_list(build_records([atoms], R_MAX, torch.float64, validate=False))


def test_fused_path_is_used_and_matches_finite_differences():
    model, cu = make_model(), cu_cell()
    data = record(cu)
    assert model.neighbour_layout(data[K.EDGE_INDEX][1], len(cu)) is not None  # the table, so the fused path
    assert check_forces_fd(model, cu, R_MAX) < 1e-6
    assert check_stress_fd(model, cu, R_MAX) < 1e-6


def _force_projection(model, data, v):
    """(F . v, positions): the forces keep their graph, so F . v can be differentiated again."""
    pos = data[K.POS].detach().clone().requires_grad_(True)
    data[K.POS] = pos
    out = energy_response(model.atomic_energies, data, compute_forces=True, create_graph=True)
    return (out[K.FORCES] * v).sum(), pos


def test_second_derivatives_through_the_fused_backward_match_finite_differences():
    """d(F . v)/dx (the Hessian times v) and d(F . v)/dtheta for the radial MLP's last weight (``hidden`` @ W in
    the fused Function) and the sender features' linear map, against central differences of F . v."""
    model, cu = make_model(), cu_cell()
    gen = torch.Generator().manual_seed(3)
    v = torch.randn(len(cu), 3, generator=gen, dtype=torch.float64)
    s, pos = _force_projection(model, record(cu), v)
    params = [model.layers[1].radial.weights[-1], model.layers[1].linear_up.weights[1],
              model.layers[0].radial.weights[-1]]
    grads = torch.autograd.grad(s, [pos, *params])
    assert all(float(g.abs().max()) > 1e-3 for g in grads)  # every derivative is there and not negligible
    h = 1e-5
    u = torch.randn(len(cu), 3, generator=gen, dtype=torch.float64)
    moved = []
    for sign in (1.0, -1.0):
        atoms = cu.copy()
        atoms.positions = cu.positions + sign * h * u.numpy()
        moved.append(float(_force_projection(model, record(atoms), v)[0].detach()))
    fd = (moved[0] - moved[1]) / (2 * h)
    assert abs(float((grads[0] * u).sum()) - fd) < 1e-6 * max(1.0, abs(fd)), (float((grads[0] * u).sum()), fd)
    for p, g in zip(params, grads[1:]):
        direction = torch.randn(p.shape, generator=gen, dtype=torch.float64)
        values = []
        for sign in (1.0, -1.0):
            with torch.no_grad():
                p.add_(sign * h * direction)
            values.append(float(_force_projection(model, record(cu), v)[0].detach()))
            with torch.no_grad():
                p.sub_(sign * h * direction)
        fd = (values[0] - values[1]) / (2 * h)
        assert abs(float((g * direction).sum()) - fd) < 1e-6 * max(1.0, abs(fd)), (float((g * direction).sum()), fd)


def test_inference_equals_training_operations_and_keeps_less():
    """Eval mode (fused) and training mode (autograd of the plain operations) compute the same energy, forces
    and stress to 1e-10; eval keeps fewer bytes for the backward pass."""
    model, cu = make_model(), cu_cell()
    results, kept = {}, {}
    for train in (False, True):
        model.train(train)
        sizes: dict[int, int] = {}

        def pack(t, sizes=sizes):
            sizes[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            out = energy_response(model.atomic_energies, record(cu), compute_forces=True, compute_stress=True)
        results[train] = {k: out[k].detach() for k in (K.ENERGY, K.FORCES, K.STRESS)}
        kept[train] = sum(sizes.values())
    for key in results[False]:
        assert float((results[False][key] - results[True][key]).abs().max()) < 1e-10, key
    assert kept[False] < 0.8 * kept[True], kept


def test_calculator_freezes_parameters_only_while_it_evaluates():
    model = make_model()
    seen = []
    hook = model.layers[0].register_forward_pre_hook(
        lambda module, args: seen.append(any(p.requires_grad for p in model.parameters())))
    atoms = cu_cell()
    atoms.calc = MolequiCalculator(model)
    forces = atoms.get_forces()
    hook.remove()
    assert seen == [False]
    assert all(p.requires_grad for p in model.parameters())
    assert np.abs(forces).max() > 1e-3
