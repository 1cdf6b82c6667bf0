"""Neighbour lists with periodic shifts, built on vesin.

Convention (shared by every model, see ``molequi.keys``)::

    edge_index = [sender, receiver]
    edge vector r = pos[receiver] - pos[sender] + unit_shifts @ cell        (Å)

The list is *full* (both i->j and j->i) and contains every pair with 0 < |r| <= cutoff, including an
atom's own periodic images when the cell is smaller than the cutoff. Nothing is truncated: an optional
``max_edges`` raises ``NeighborOverflowError`` instead of dropping neighbours.
"""

from __future__ import annotations

import numpy as np
import torch
from torch.fx.experimental.symbolic_shapes import statically_known_true
from vesin import NeighborList

from molequi import keys as K
from molequi.errors import MolequiError, ValueRangeError


class NeighborOverflowError(MolequiError, RuntimeError):
    """More edges than an explicitly requested ``max_edges``; raised instead of silently truncating."""


def _box(cell: np.ndarray, pbc: np.ndarray, positions: np.ndarray, cutoff: float) -> np.ndarray:
    """vesin needs a full-rank box when any direction is periodic; fill non-periodic, empty directions.

    A lattice vector of a non-periodic direction never produces a shift, so any vector keeps the result
    exact as long as the box stays full rank. We replace zero / degenerate ones by orthogonal vectors.
    """
    cell = np.array(cell, dtype=np.float64).reshape(3, 3)
    if not pbc.any():
        return np.zeros((3, 3))
    if abs(np.linalg.det(cell)) > 1e-8:
        return cell
    periodic_vecs = [cell[a] for a in range(3) if pbc[a]]
    span = np.ptp(positions, axis=0).max() if len(positions) else 0.0
    length = float(span + 2 * cutoff + 1.0)
    basis = list(periodic_vecs)
    new = cell.copy()
    for a in range(3):
        if pbc[a]:
            continue
        # a direction orthogonal to everything chosen so far
        if len(basis) == 2:
            v = np.cross(basis[0], basis[1])
        elif len(basis) == 1:
            trial = np.eye(3)[np.argmin(np.abs(basis[0]))]
            v = np.cross(basis[0], trial)
        else:
            v = np.eye(3)[a]
        v = v / np.linalg.norm(v) * length
        new[a] = v
        basis.append(v)
    return new


# vesin's cell list bins space by the cutoff; past ~1e5 bins along one axis it dies with SIGFPE (seen
# with a 1e5 Å span at 1 Å) and huge periodic cells hang. We stay well below that.
MAX_BINS_PER_AXIS = 5000
MAX_PERIODIC_IMAGES = 200_000


def _pairs(positions: np.ndarray, cell: np.ndarray, pbc: np.ndarray, cutoff: float, quantities: str,
           full_list: bool):
    """vesin's pairs within ``cutoff`` (``quantities`` a subset of "ijSd"), guarded against inputs that would
    crash or hang it: isolated structures spread over many bins go through scipy's k-d tree instead, and
    periodic cells that are absurdly large or small for the cutoff raise ``ValueRangeError``."""
    span = np.ptp(positions, axis=0) if len(positions) else np.zeros(3)
    if not pbc.any():
        if span.max() / cutoff > MAX_BINS_PER_AXIS:
            return _kdtree_pairs(positions, cutoff, quantities, full_list)
        box, periodic = np.zeros((3, 3)), False
    else:
        heights = _heights(cell)
        for a in range(3):
            extent = heights[a] if pbc[a] else span[a]
            if extent / cutoff > MAX_BINS_PER_AXIS:
                what = f"lattice vector {a} spans {extent:.3g} Å" if pbc[a] else f"atoms span {extent:.3g} Å"
                raise ValueRangeError(f"{what} in a periodic structure, over {MAX_BINS_PER_AXIS} times the "
                                      f"cutoff {cutoff} Å", hint="check the units of the cell and positions")
        images = np.prod([2 * np.ceil(cutoff / heights[a]) + 1 for a in range(3) if pbc[a]])
        if images > MAX_PERIODIC_IMAGES:
            raise ValueRangeError(f"cell too small for a cutoff of {cutoff} Å: {images:.3g} periodic images "
                                  "would be searched", hint="check the cell (units?) or use a supercell")
        box, periodic = _box(cell, pbc, positions, cutoff), pbc.tolist()
    nl = NeighborList(cutoff=float(cutoff), full_list=full_list)
    return nl.compute(points=positions, box=box, periodic=periodic, quantities=quantities)


def _heights(cell: np.ndarray) -> np.ndarray:
    """Distances between opposite faces of the cell along each lattice vector (inf for a zero vector)."""
    volume = abs(np.linalg.det(cell))
    out = np.full(3, np.inf)
    for a in range(3):
        area = np.linalg.norm(np.cross(cell[(a + 1) % 3], cell[(a + 2) % 3]))
        if area > 0 and volume > 0:
            out[a] = volume / area
    return out


def _kdtree_pairs(positions: np.ndarray, cutoff: float, quantities: str, full_list: bool):
    from scipy.spatial import cKDTree

    pairs = cKDTree(positions).query_pairs(cutoff, output_type="ndarray").astype(np.int64).reshape(-1, 2)
    if full_list:
        pairs = np.concatenate([pairs, pairs[:, ::-1]])
    pairs = pairs[np.lexsort((pairs[:, 1], pairs[:, 0]))]
    i, j = pairs[:, 0], pairs[:, 1]
    values = {"i": i, "j": j, "S": np.zeros((len(i), 3), dtype=np.int64),
              "d": np.linalg.norm(positions[j] - positions[i], axis=1)}
    return [values[q] for q in quantities]


def neighbor_list(positions: np.ndarray, cell: np.ndarray, pbc, cutoff: float,
                  max_edges: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(edge_index (2, E), unit_shifts (E, 3) int, shifts (E, 3) Å)`` for one structure.

    Pairs are grouped by sender, each (i, j, S) appearing once.
    """
    positions = np.ascontiguousarray(positions, dtype=np.float64).reshape(-1, 3)
    pbc = np.asarray(pbc, dtype=bool).reshape(3)
    cell = np.asarray(cell, dtype=np.float64).reshape(3, 3)
    if cutoff <= 0:
        raise ValueRangeError(f"cutoff must be positive, got {cutoff}")
    n = len(positions)
    if n == 0:
        return np.zeros((2, 0), dtype=np.int64), np.zeros((0, 3), dtype=np.int64), np.zeros((0, 3))
    if pbc.any():
        periodic_cell = cell[pbc]
        if np.linalg.matrix_rank(periodic_cell, tol=1e-8) < pbc.sum():
            raise ValueRangeError(f"singular cell with periodic boundaries {pbc.tolist()}",
                                  hint="give a full-rank cell or set pbc to False")
    i, j, S, d = _pairs(positions, cell, pbc, float(cutoff), "ijSd", full_list=True)
    S = np.asarray(S, dtype=np.int64).reshape(-1, 3)
    i = np.asarray(i, dtype=np.int64)
    j = np.asarray(j, dtype=np.int64)
    d = np.asarray(d)
    # vesin never returns a pair with zero shift and i == j, but be explicit about the contract
    keep = (d > 0) & (d <= cutoff)
    if not keep.all():
        i, j, S = i[keep], j[keep], S[keep]
    if len(i) > 1 and not np.all(i[1:] >= i[:-1]):  # vesin returns pairs grouped by sender; keep it so
        order = np.argsort(i, kind="stable")
        i, j, S = i[order], j[order], S[order]
    if max_edges is not None and len(i) > max_edges:
        raise NeighborOverflowError(f"{len(i)} edges within {cutoff} Å exceed max_edges={max_edges}; "
                                    "raise max_edges or lower the cutoff")
    shifts = S.astype(np.float64) @ cell
    return np.stack([i, j]), S, shifts


def minimum_distance(atoms, threshold: float) -> float:
    """Smallest interatomic distance in ``atoms`` (periodic images included) if it is below ``threshold``.

    Returns ``inf`` when no pair is closer than ``threshold``. The search radius is at least 1 Å: vesin's
    cell list has bins of the cutoff's size, so a 0.1 Å search in a cell with 20 Å of vacuum would build
    millions of bins; at 1 Å there are few bins and few pairs (bonds to H are ~1 Å).
    """
    pbc = np.asarray(atoms.pbc, dtype=bool)
    positions = np.asarray(atoms.positions, dtype=np.float64)
    cell = np.asarray(atoms.cell[:], dtype=np.float64)
    if pbc.any() and np.linalg.matrix_rank(cell[pbc], tol=1e-8) < pbc.sum():
        pbc = np.zeros(3, dtype=bool)  # singular cells are reported by the caller
    radius = max(float(threshold), 1.0)
    (d,) = _pairs(positions, cell, pbc, radius, "d", full_list=False)
    d = np.asarray(d)
    dmin = float(d.min()) if len(d) else float("inf")
    return dmin if dmin < threshold else float("inf")


class RadiusGraph:
    """A transform that adds ``edge_index``, ``unit_shifts`` and ``shifts`` within ``cutoff`` to a record."""

    def __init__(self, cutoff: float, max_edges: int | None = None):
        self.cutoff = float(cutoff)
        self.max_edges = max_edges

    def __call__(self, data):
        pos = data[K.POS].detach().cpu().double().numpy()
        cell = data[K.CELL].detach().cpu().double().numpy().reshape(3, 3)
        pbc = data[K.PBC].cpu().numpy().reshape(3)
        edge_index, unit_shifts, shifts = neighbor_list(pos, cell, pbc, self.cutoff, self.max_edges)
        data = data.clone()
        data[K.EDGE_INDEX] = torch.as_tensor(edge_index, dtype=torch.long)
        data[K.UNIT_SHIFTS] = torch.as_tensor(unit_shifts, dtype=torch.long)
        data[K.SHIFTS] = torch.as_tensor(shifts, dtype=data[K.POS].dtype)
        return data

    def __repr__(self) -> str:
        return f"RadiusGraph(cutoff={self.cutoff})"


def edge_vectors(pos: torch.Tensor, edge_index: torch.Tensor, unit_shifts: torch.Tensor, cell: torch.Tensor,
                 batch: torch.Tensor | None) -> torch.Tensor:
    """Edge vectors (E, 3) in Å, differentiable in ``pos`` and ``cell`` (for forces and stress).

    ``cell`` is (B, 3, 3); the shift of edge e is ``unit_shifts[e] @ cell[batch[sender[e]]]``. With one cell
    (one structure: MD, relaxation) that is one (E, 3) @ (3, 3) product; only batches of several structures
    gather a (E, 3, 3) cell per edge (autograd keeps it for the stress, 36 bytes an edge in float32).
    """
    sender, receiver = edge_index[0], edge_index[1]
    vec = pos[receiver] - pos[sender]
    if unit_shifts.numel():
        cells = cell.reshape(-1, 3, 3)
        # statically_known_true: a compiled function with a symbolic structure count takes the general path
        # rather than specialising (and recompiling) on a first batch of one structure
        if statically_known_true(cells.shape[0] == 1):
            return vec + unit_shifts.to(pos.dtype) @ cells[0]
        if batch is None:
            batch = torch.zeros(pos.shape[0], dtype=torch.long, device=pos.device)
        edge_cell = cells[batch[sender]]  # (E, 3, 3)
        vec = vec + torch.einsum("ei,eij->ej", unit_shifts.to(pos.dtype), edge_cell)
    return vec


__all__ = ["neighbor_list", "RadiusGraph", "edge_vectors", "minimum_distance", "NeighborOverflowError"]
