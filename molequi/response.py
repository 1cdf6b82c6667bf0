"""Forces, stress and virials from an energy by autograd: the one response module every model uses.

Given per-atom energies E_i(pos, cell), the structure energy is E = sum_i E_i and

    forces  F = -dE/dpos                              (eV/Å)
    virial  W = -dE/d(eps)                            (eV), eps a symmetric strain applied to pos and cell
    stress  sigma = -W / V = (1/V) dE/d(eps)          (eV/Å^3, ASE's sign convention)

The strain is applied as pos' = pos (1 + eps), cell' = cell (1 + eps), so models must build edge vectors
from ``pos`` and ``cell`` as given (``molequi.graph.edge_vectors``), never from stored ``shifts``.
Stress is zero for structures with zero cell volume (isolated molecules).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

import torch
from torch_geometric.utils import scatter

from molequi import keys as K

AtomicEnergyFn = Callable[[object, torch.Tensor, torch.Tensor], torch.Tensor]


def num_graphs(data) -> int:
    return int(data.num_graphs) if hasattr(data, "num_graphs") and data.batch is not None else 1


def batch_vector(data) -> torch.Tensor:
    b = getattr(data, K.BATCH, None)
    if b is None:
        b = torch.zeros(data[K.POS].shape[0], dtype=torch.long, device=data[K.POS].device)
    return b


def stress_from_virials(virials: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
    """-virials / volume (B, 3, 3); zero where the cell has zero volume (a molecule)."""
    volume = torch.linalg.det(cell).abs().detach()  # (B,)
    safe = torch.where(volume > 1e-8, volume, torch.ones_like(volume))
    return torch.where((volume > 1e-8)[:, None, None], -virials / safe[:, None, None],
                       torch.zeros_like(virials))


def strained(pos: torch.Tensor, cell: torch.Tensor, strain: torch.Tensor,
              batch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions and cells under the symmetric part of ``strain`` (B, 3, 3): the variable whose gradient at
    zero is minus the virial."""
    sym = 0.5 * (strain + strain.transpose(1, 2))
    return pos + torch.einsum("ni,nij->nj", pos, sym[batch]), cell + torch.bmm(cell, sym)


@contextlib.contextmanager
def frozen_parameters(modules: Iterable[torch.nn.Module]) -> Iterator[None]:
    """Parameters of ``modules`` without ``requires_grad`` inside the block (restored after): for inference,
    whose forces and stress differentiate the energy by positions and strain only. Autograd then keeps for
    the backward pass only what those need: an activation times a weight keeps the weight, not the
    (edges x channels) activation it would need for the weight's gradient (mace-torch's calculator, too,
    freezes its parameters)."""
    params = [p for m in modules for p in m.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def energy_response(atomic_energies: AtomicEnergyFn, data, *, compute_forces: bool = True,
                    compute_stress: bool = False, create_graph: bool = False) -> dict[str, torch.Tensor]:
    """Evaluate ``atomic_energies(data, pos, cell) -> (n,)`` and its derivatives.

    Returns ``{"energy": (B,), "energies": (n,), "forces": (n, 3)?, "stress": (B, 3, 3)?, "virials": (B, 3, 3)?}``.
    ``create_graph=True`` keeps the graph of the derivatives (needed to train on forces).
    """
    batch = batch_vector(data)
    n_graphs = int(batch.max()) + 1 if batch.numel() else 1
    pos = data[K.POS]
    cell = data[K.CELL].reshape(-1, 3, 3).to(pos.dtype)
    inputs = []
    if compute_forces or compute_stress:
        if not pos.requires_grad:
            pos = pos.detach().requires_grad_(True)
        inputs.append(pos)
    strain = None
    if compute_stress:
        strain = torch.zeros((n_graphs, 3, 3), dtype=pos.dtype, device=pos.device, requires_grad=True)
        pos, cell = strained(pos, cell, strain, batch)
        inputs.append(strain)

    energies = atomic_energies(data, pos, cell)  # (n,)
    energy = scatter(energies, batch, dim=0, dim_size=n_graphs, reduce="sum")
    out = {K.ENERGY: energy, K.ENERGIES: energies}
    if inputs:
        grads = torch.autograd.grad(energy.sum(), inputs, create_graph=create_graph, allow_unused=True)
        if compute_forces:
            g = grads[0]
            out[K.FORCES] = -g if g is not None else torch.zeros_like(pos)
        if compute_stress:
            g = grads[-1]
            virials = -g if g is not None else torch.zeros_like(strain)
            out[K.VIRIALS] = virials
            out[K.STRESS] = stress_from_virials(virials, cell)
    return out


def functional_energy_response(atomic_energies: AtomicEnergyFn, data, n_graphs: int, *,
                                compute_forces: bool = True,
                                compute_stress: bool = False) -> dict[str, torch.Tensor]:
    """``energy_response`` with the derivatives taken by ``torch.func.grad`` inside the function, so that
    forces and stress are ordinary outputs of one forward computation, differentiable in the parameters by
    a single backward (force training). This is the form ``torch.compile`` traces into one graph
    (``EnergyModel.compile_training``, ``trainer.compile``): Dynamo does not trace ``torch.autograd.grad``,
    and a compiled graph has no double backward. ``n_graphs`` is given (``num_graphs(data)``), so nothing
    here reads a tensor on the host. Same outputs as ``energy_response``."""
    batch = batch_vector(data)
    pos = data[K.POS]
    cell = data[K.CELL].reshape(-1, 3, 3).to(pos.dtype)
    strain = torch.zeros((n_graphs, 3, 3), dtype=pos.dtype, device=pos.device)

    def energy(pos, strain):
        c = cell
        if compute_stress:
            pos, c = strained(pos, cell, strain, batch)
        energies = atomic_energies(data, pos, c)
        return energies.sum(), energies

    if compute_forces or compute_stress:
        grads, energies = torch.func.grad(energy, argnums=(0, 1), has_aux=True)(pos, strain)
    else:
        grads, energies = None, energy(pos, strain)[1]
    out = {K.ENERGY: energies.new_zeros(n_graphs).index_add(0, batch, energies), K.ENERGIES: energies}
    if compute_forces:
        out[K.FORCES] = -grads[0]
    if compute_stress:
        out[K.VIRIALS] = -grads[1]
        out[K.STRESS] = stress_from_virials(-grads[1], cell)
    return out


__all__ = ["energy_response", "frozen_parameters", "functional_energy_response", "strained", "stress_from_virials", "batch_vector",
           "num_graphs"]
