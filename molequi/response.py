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

from collections.abc import Callable

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
        sym = 0.5 * (strain + strain.transpose(1, 2))
        pos = pos + torch.einsum("ni,nij->nj", pos, sym[batch])
        cell = cell + torch.bmm(cell, sym)
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
            volume = torch.linalg.det(cell).abs().detach()  # (B,)
            safe = torch.where(volume > 1e-8, volume, torch.ones_like(volume))
            stress = torch.where((volume > 1e-8)[:, None, None], -virials / safe[:, None, None],
                                 torch.zeros_like(virials))
            out[K.VIRIALS] = virials
            out[K.STRESS] = stress
    return out


__all__ = ["energy_response", "batch_vector", "num_graphs"]
