"""E(n)-equivariant graph neural network (Satorras, Hoogeboom & Welling, ICML 2021) and an EGNN force field.

``EGNNLayer`` is the reusable layer (also the building block of EDM's denoiser, Hoogeboom et al. 2022).
For an edge j -> i (``edge_index = [sender j, receiver i]``) with d_ij = x_i - x_j (+ periodic shift)::

    m_ij  = w_ij phi_e(h_i, h_j, |d_ij|^2, a_ij)                 (E, hidden)     messages
    m_ij <- m_ij sigmoid(phi_att(m_ij))                          if attention
    h_i'  = h_i + phi_h(h_i, agg_j m_ij)                         (n, hidden)     features (residual)
    x_i'  = x_i + agg_j d~_ij w_ij s_ij                          (n, 3)          coordinates, if update_coords
            s_ij = phi_x(m_ij), or coords_range tanh(phi_x(m_ij)) if tanh
            d~_ij = d_ij, or d_ij / (|d_ij| + norm_constant) if norm_diff (EDM)

agg is a sum divided by ``normalization_factor`` or a (weighted) mean over
neighbours; w_ij an optional edge weight (a cutoff envelope, or an edge mask for padded fully-connected
graphs). h' is E(3)-invariant and x' is
E(3)-equivariant: rotations, reflections and translations of x act on x' and leave h' unchanged.

``EGNN`` is the force field: atoms embedded by element, edges within r_max of a radius graph (periodic
shifts included) carrying a Bessel basis, every message weighted by a polynomial cutoff envelope so the
energy is smooth, per-atom energies from an MLP of the final h. Forces / stress come from
``molequi.response``; distances only, so the energy is E(3)-invariant with or without coordinate updates.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from molequi import keys as K
from molequi.data.statistics import Statistics
from molequi.errors import ConfigError
from molequi.graph.neighbors import edge_vectors
from molequi.models.base import AtomicEnergyHead, ElementTable, EnergyModel
from molequi.nn.radial import BesselBasis, PolynomialCutoff
from molequi.nn.readout import ElementEmbedding
from molequi.response import batch_vector


def _aggregate(
    values: torch.Tensor,
    receiver: torch.Tensor,
    n: int,
    how: str,
    factor: float,
    weight: torch.Tensor | None = None,
) -> torch.Tensor:
    """Sum (divided by ``factor``) or mean of edge values (E, ...) over each receiver -> (n, ...).

    The mean divides by the number of incoming edges, or by the sum of their weights (E, 1) when given, so
    that an edge of weight 0 counts as absent.
    """
    out = values.new_zeros((n,) + values.shape[1:]).index_add_(0, receiver, values)
    if how == "sum":
        return out / factor
    ones = torch.ones_like(receiver, dtype=values.dtype) if weight is None else weight.reshape(-1)
    count = torch.zeros(n, dtype=values.dtype, device=values.device).index_add_(0, receiver, ones)
    count = torch.where(count > 0, count, torch.ones_like(count))
    return out / count.view((n,) + (1,) * (values.dim() - 1))


class EGNNLayer(nn.Module):
    """One E(n)-equivariant layer: ``forward(h, x, edge_index, ...) -> (h', x')``.

    Args:
        hidden: feature width of h (in and out).
        edge_dim: width of the optional edge attributes a_ij (0 for none).
        update_coords: update x (otherwise x is returned unchanged).
        coords_agg: "sum" (divided by ``normalization_factor``) or "mean" over neighbours, for x.
        messages_agg: the same choice for the messages that update h.
        normalization_factor: divisor of the sums (EDM uses 1 or 100; a force field the mean neighbour count).
        tanh: bound the coordinate weights, s = coords_range * tanh(phi_x(m)) (EDM).
        coords_range: the bound used with ``tanh``.
        norm_diff: use d / (|d| + norm_constant) instead of d in the coordinate update (EDM).
        norm_constant: see ``norm_diff``.
        attention: gate each message by sigmoid(phi_att(m_ij)).
        residual: h' = h + phi_h(...) (else h' = phi_h(...)).

    Forward:
        h (n, hidden), x (n, 3) Å or any length unit, edge_index (2, E) long [sender j, receiver i],
        edge_attr (E, edge_dim) or None, shifts (E, 3) or None (added to x_i - x_j: periodic images),
        edge_weight (E,) or (E, 1) or None (multiplies messages and coordinate weights),
        node_mask (n,) or (n, 1) or None (zeroes the updates of padding nodes).
        Returns h' (n, hidden), x' (n, 3).
    """

    def __init__(
        self,
        hidden: int,
        edge_dim: int = 0,
        *,
        update_coords: bool = True,
        coords_agg: str = "mean",
        messages_agg: str = "sum",
        normalization_factor: float = 1.0,
        tanh: bool = False,
        coords_range: float = 15.0,
        norm_diff: bool = False,
        norm_constant: float = 1.0,
        attention: bool = False,
        residual: bool = True,
    ):
        super().__init__()
        for name, value in (("coords_agg", coords_agg), ("messages_agg", messages_agg)):
            if value not in ("sum", "mean"):
                raise ConfigError(f"{name} must be 'sum' or 'mean', got '{value}'")
        if hidden < 1 or edge_dim < 0 or normalization_factor <= 0:
            raise ConfigError("EGNNLayer needs hidden >= 1, edge_dim >= 0 and normalization_factor > 0")
        self.hidden, self.edge_dim = hidden, edge_dim
        self.update_coords, self.coords_agg, self.messages_agg = update_coords, coords_agg, messages_agg
        self.normalization_factor = float(normalization_factor)
        self.tanh, self.coords_range = tanh, float(coords_range)
        self.norm_diff, self.norm_constant = norm_diff, float(norm_constant)
        self.residual = residual
        act = nn.SiLU
        self.phi_e = nn.Sequential(
            nn.Linear(2 * hidden + 1 + edge_dim, hidden), act(), nn.Linear(hidden, hidden), act()
        )
        self.phi_h = nn.Sequential(nn.Linear(2 * hidden, hidden), act(), nn.Linear(hidden, hidden))
        self.phi_att = nn.Sequential(nn.Linear(hidden, 1), nn.Sigmoid()) if attention else None
        if update_coords:
            last = nn.Linear(hidden, 1, bias=False)
            nn.init.xavier_uniform_(last.weight, gain=0.001)  # start close to the identity map (EGNN / EDM)
            self.phi_x = nn.Sequential(nn.Linear(hidden, hidden), act(), last)
        else:
            self.phi_x = None

    def forward(
        self,
        h: torch.Tensor,
        x: torch.Tensor,
        edge_index: torch.Tensor,
        edge_attr: torch.Tensor | None = None,
        shifts: torch.Tensor | None = None,
        edge_weight: torch.Tensor | None = None,
        node_mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        sender, receiver = edge_index[0], edge_index[1]
        n = h.shape[0]
        diff = x[receiver] - x[sender]  # [E, 3], x_i - x_j
        if shifts is not None:
            diff = diff + shifts
        d2 = (diff * diff).sum(-1, keepdim=True)  # [E, 1]
        parts = [h[receiver], h[sender], d2]
        if self.edge_dim:
            if edge_attr is None or edge_attr.shape[-1] != self.edge_dim:
                raise ConfigError(f"EGNNLayer was built for edge attributes of width {self.edge_dim}")
            parts.append(edge_attr)
        m = self.phi_e(torch.cat(parts, dim=-1))  # [E, hidden]
        if self.phi_att is not None:
            m = m * self.phi_att(m)
        weight = None if edge_weight is None else edge_weight.reshape(-1, 1).to(m.dtype)
        if weight is not None:
            m = m * weight
        agg = _aggregate(m, receiver, n, self.messages_agg, self.normalization_factor, weight)  # [n, hidden]
        update = self.phi_h(torch.cat([h, agg], dim=-1))
        mask = None if node_mask is None else node_mask.reshape(-1, 1).to(h.dtype)
        if mask is not None:
            update = update * mask
        h_new = h + update if self.residual else update
        if self.phi_x is None:
            return h_new, x
        s = self.phi_x(m)  # [E, 1]
        if self.tanh:
            s = self.coords_range * torch.tanh(s)
        if weight is not None:
            s = s * weight
        if self.norm_diff:
            diff = diff / (torch.sqrt(d2 + 1e-8) + self.norm_constant)
        dx = _aggregate(diff * s, receiver, n, self.coords_agg, self.normalization_factor, weight)  # [n, 3]
        if mask is not None:
            dx = dx * mask
        return h_new, x + dx


class EGNN(EnergyModel):
    """EGNN force field with molequi's model interface (see ``molequi.models``)."""

    @dataclass
    class Config:
        r_max: float = 5.0
        """Cutoff radius, Å (graphs must be built with at least this cutoff)."""
        hidden_channels: int = 64
        """Width of the node features h and of every MLP."""
        num_layers: int = 4
        """Number of EGNN layers."""
        num_bessel: int = 8
        """Bessel radial functions given to phi_e as edge attributes (0: squared distance only)."""
        num_polynomial_cutoff: int = 5
        """Power p of the cutoff envelope that weights every message."""
        update_coords: bool = False
        """Also update coordinates inside the network (the energy stays invariant either way)."""
        attention: bool = False
        """Gate messages by sigmoid(phi_att(m))."""
        tanh: bool = True
        """Bound the coordinate updates (only with update_coords)."""
        avg_num_neighbors: float | None = None
        """Divisor of the message sums; None takes it from the statistics."""

        def validate(self) -> None:
            if self.r_max <= 0 or self.hidden_channels < 1 or self.num_layers < 1 or self.num_bessel < 0:
                raise ConfigError(
                    "EGNN needs r_max > 0, hidden_channels >= 1, num_layers >= 1, num_bessel >= 0"
                )

    def __init__(self, cfg: EGNN.Config, statistics: Statistics):
        super().__init__()
        cfg.validate()
        self.config = cfg
        self.statistics = statistics
        self.elements = [int(z) for z in statistics.elements]
        self.r_max = float(cfg.r_max)
        avg = cfg.avg_num_neighbors if cfg.avg_num_neighbors is not None else statistics.avg_num_neighbors
        self.element_table = ElementTable(self.elements)
        self.embedding = ElementEmbedding(len(self.elements), cfg.hidden_channels)
        self.bessel = BesselBasis(cfg.r_max, cfg.num_bessel) if cfg.num_bessel else None
        self.cutoff = PolynomialCutoff(cfg.r_max, cfg.num_polynomial_cutoff)
        self.layers = nn.ModuleList(
            [
                EGNNLayer(
                    cfg.hidden_channels,
                    cfg.num_bessel,
                    update_coords=cfg.update_coords,
                    coords_agg="sum",
                    normalization_factor=max(float(avg), 1.0),
                    tanh=cfg.tanh,
                    coords_range=1.0,
                    attention=cfg.attention,
                )
                for _ in range(cfg.num_layers)
            ]
        )
        self.readout = nn.Sequential(
            nn.Linear(cfg.hidden_channels, cfg.hidden_channels), nn.SiLU(), nn.Linear(cfg.hidden_channels, 1)
        )
        self.head = AtomicEnergyHead(statistics, self.elements)

    @classmethod
    def from_config(cls, cfg: EGNN.Config, statistics: Statistics) -> EGNN:
        return cls(cfg, statistics)

    def atomic_energies(self, data, pos: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """Per-atom energies (n,) in eV from positions (n, 3) Å and cells (B, 3, 3) Å."""
        element = self.element_table(data[K.NUMBERS])
        edge_index = data[K.EDGE_INDEX]
        vectors = edge_vectors(pos, edge_index, data[K.UNIT_SHIFTS], cell, batch_vector(data))  # [E, 3]
        shifts = vectors - (pos[edge_index[1]] - pos[edge_index[0]])  # periodic part, differentiable in cell
        lengths = torch.linalg.vector_norm(vectors, dim=-1)  # [E]
        envelope = self.cutoff(lengths)  # [E, 1]
        edge_attr = self.bessel(lengths) * envelope if self.bessel is not None else None  # [E, num_bessel]
        h = self.embedding(element).to(pos.dtype)  # [n, hidden]
        x = pos
        for layer in self.layers:
            h, x = layer(h, x, edge_index, edge_attr=edge_attr, shifts=shifts, edge_weight=envelope)
        return self.head(element, self.readout(h).squeeze(-1))


__all__ = ["EGNN", "EGNNLayer"]
