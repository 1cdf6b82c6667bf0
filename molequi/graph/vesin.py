"""Neighbour lists of torch tensors on their own device (CPU or GPU), with vesin's torch package.

``torch_neighbor_list(positions, cell, pbc, cutoff)`` returns what ``molequi.graph.neighbors.neighbor_list``
returns, ``(edge_index (2, E), unit_shifts (E, 3), shifts (E, 3) Å)``, with the same convention::

    edge_index = [sender, receiver]
    edge vector r = pos[receiver] - pos[sender] + unit_shifts @ cell        (Å)

a full list (i -> j and j -> i), every pair with 0 < |r| <= cutoff (an atom's own periodic images included),
grouped by sender, but as tensors on ``positions.device``: on a GPU the list is built there by vesin-torch
(``pip install vesin-torch``), with no copy of the positions to the host. The numpy path
(``neighbor_list``) also uses vesin, on the CPU; both are compared with ASE's ``neighbor_list`` in
``tests/graph/test_vesin.py``. Cells with a zero lattice vector in a non-periodic direction are completed as
``neighbor_list`` completes them (``molequi.graph.neighbors._box``); ``max_edges`` raises
``NeighborOverflowError`` instead of truncating.
"""

from __future__ import annotations

import numpy as np
import torch

from molequi.errors import InputError, ValueRangeError
from molequi.graph.neighbors import NeighborOverflowError, _box


def _vesin_torch():
    try:
        from vesin_torch import NeighborList
    except ImportError as exc:  # pragma: no cover - the message is the point
        raise InputError("torch_neighbor_list needs vesin's torch package",
                         hint="pip install vesin-torch (or molequi[cueq])") from exc
    return NeighborList


def torch_neighbor_list(positions: torch.Tensor, cell: torch.Tensor, pbc, cutoff: float,
                        max_edges: int | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(edge_index (2, E) long, unit_shifts (E, 3) long, shifts (E, 3))`` on ``positions.device``.

    ``positions`` (n, 3) Å, ``cell`` (3, 3) Å (rows are lattice vectors), ``pbc`` three booleans. ``shifts``
    has the dtype of ``positions`` and is ``unit_shifts @ cell``.
    """
    if cutoff <= 0:
        raise ValueRangeError(f"cutoff must be positive, got {cutoff}")
    device, dtype = positions.device, positions.dtype
    positions = positions.detach().reshape(-1, 3)
    cell = torch.as_tensor(cell, dtype=dtype, device=device).detach().reshape(3, 3)
    pbc_np = np.asarray(torch.as_tensor(pbc).cpu(), dtype=bool).reshape(3)
    n = positions.shape[0]
    if n == 0:
        empty = torch.zeros((0, 3), dtype=torch.long, device=device)
        return torch.zeros((2, 0), dtype=torch.long, device=device), empty, empty.to(dtype)
    if pbc_np.any():
        cell_np = cell.cpu().double().numpy()
        if np.linalg.matrix_rank(cell_np[pbc_np], tol=1e-8) < pbc_np.sum():
            raise ValueRangeError(f"singular cell with periodic boundaries {pbc_np.tolist()}",
                                  hint="give a full-rank cell or set pbc to False")
        box = torch.as_tensor(_box(cell_np, pbc_np, positions.cpu().double().numpy(), float(cutoff)),
                              dtype=dtype, device=device)
    else:
        box = torch.zeros((3, 3), dtype=dtype, device=device)
    periodic = torch.as_tensor(pbc_np, device=device)
    calculator = _vesin_torch()(cutoff=float(cutoff), full_list=True, sorted=True)
    i, j, unit_shifts, d = calculator.compute(points=positions, box=box, periodic=periodic, quantities="ijSd")
    keep = (d > 0) & (d <= cutoff)  # vesin never returns i == j with zero shift; the contract, explicitly
    i, j, unit_shifts = i[keep].long(), j[keep].long(), unit_shifts[keep].long()
    if max_edges is not None and i.shape[0] > max_edges:
        raise NeighborOverflowError(f"{i.shape[0]} edges within {cutoff} Å exceed max_edges={max_edges}; "
                                    "raise max_edges or lower the cutoff")
    return torch.stack([i, j]), unit_shifts, unit_shifts.to(dtype) @ cell


__all__ = ["torch_neighbor_list"]
