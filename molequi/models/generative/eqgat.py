"""EQGAT-diff's denoiser (Le et al. 2024, "Navigating the design space of equivariant diffusion-based generative
models for de novo 3D molecule generation"): equivariant graph attention over the fully connected molecule
with scalar, vector, position and edge (bond) features, as its reference code ``DenoisingEdgeNetwork`` with
``EQGATGlobalEdgeConvFinal`` layers defines it (github.com/jule-c/eqgat_diff, ``e3moldiffusion/``).

Per atom i: scalars s_i (S), vectors v_i (3, V), position p_i (3); per directed edge j -> i: bond features
e_ij (D). Geometry of each edge, recomputed from the positions after every layer::

    r_ij = p_i - p_j,   d_ij = max(|r_ij|^2, 1e-6)^(1/2),   a_ij = p_i . p_j,   u_ij = r_ij / (1 + d_ij)

(a_ij and |p_i| are taken about the molecule's centre of mass: the input positions are centred first).

One layer (S -> S, V -> V, D -> D), after a per-molecule norm of s and v (``EQGATNorm``)::

    e'     = W_pre e_ij
    [alpha, c, f, g] = MLP([s_i, s_j, d_ij, a_ij, e', |p_i|, |p_j|])    (S, k V, D, 1 outputs)
    s_i   += sum_j softmax_j(alpha)_ij * (W_s s_j)                        (softmax over i's senders, per channel)
    v_i   += mean_j [ u_ij c0_ij + c1_ij (W_v v_j) + c2_ij (v_i x v_j) ]  (c1 from layer 2 on, c2 with
                                                                          ``cross_product``)
    m_i    = mean_j g_ij u_ij;   p_i += w m_i / (mean_{k in mol} |m_k| + 1e-5)
    e_ij   = W_post silu(f_ij + e')
    s, v  += gated update (s, v)                                         (``GatedUpdate``)

The first layer has no vector input (v = 0): k = 1. The norm divides the centred scalars by their
per-molecule *variance* (not its square root) and the vectors by their per-molecule mean squared norm, as
the reference's ``LayerNorm`` does.

Input embedding: s = W_a2(W_a [types, charges] + W_ta t), e = W_b2(W_b bonds + W_tb t) with t in [0, 1].
Output head::

    x0_i   = p_i + W_x v_i, centred per molecule
    h_i    = silu(W_h s_i);   [type, charge] logits = W_o h_i
    bond logits_ij = W_2 silu(W_1 [h_i + h_j + W_e (e_ij + e_ji) / 2, |x0_i - x0_j|^2])

Symmetry: translations (the input is centred) and rotations. Reflections too without ``cross_product``:
v_i x v_j is a pseudovector (under an improper R it maps to -R (v_i x v_j)), so with cross products the
network is SE(3)- but not E(3)-equivariant; the reference's default (``--use-cross-product`` off) is E(3).
"""

from __future__ import annotations

import torch
from torch import nn

from molequi.models.generative.graph import remove_mean, scatter_mean
from molequi.nn.scatter import scatter_sum


def segment_softmax(x: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Softmax of x (E, C) over the rows sharing an ``index`` (E,) entry, per column; n groups."""
    top = x.new_full((n, x.shape[1]), float("-inf")).scatter_reduce(
        0, index.unsqueeze(-1).expand_as(x), x, reduce="amax", include_self=True)
    w = torch.exp(x - top[index])
    return w / scatter_sum(w, index, n)[index]


def edge_geometry(p: torch.Tensor, edge_index: torch.Tensor):
    """(d (E,), a (E,), u (E, 3)) of each edge j -> i: distance, p_i . p_j and (p_i - p_j) / (1 + d)."""
    src, dst = edge_index
    r = p[dst] - p[src]
    d = (r * r).sum(-1).clamp_min(1e-6).sqrt()
    return d, (p[dst] * p[src]).sum(-1), r / (1.0 + d.unsqueeze(-1))


class EQGATNorm(nn.Module):
    """Per-molecule norm of scalars (n, S) and vectors (n, 3, V) (module docstring), affine on scalars."""

    def __init__(self, scalars: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(scalars))
        self.bias = nn.Parameter(torch.zeros(scalars))

    def forward(self, s, v, batch, num_graphs: int):
        s = s - scatter_mean(s.mean(-1, keepdim=True), batch, num_graphs)[batch]
        var = scatter_mean((s * s).mean(-1, keepdim=True), batch, num_graphs).clamp_min(self.eps)
        s = s / var[batch] * self.weight + self.bias
        sq = scatter_mean((v * v).sum(1).mean(-1, keepdim=True), batch, num_graphs).clamp_min(self.eps)
        return s, v / sq[batch].unsqueeze(1)


class GatedUpdate(nn.Module):
    """Gated scalar / vector update: [n2, w] = W_in v; [g, s'] = MLP([s, |n2|^2]); v' = W_out (g w).

    With ``mlp`` False (EQGAT-diff's last layer) the MLP is one linear map and there is no W_out.
    """

    def __init__(self, scalars: int, vectors: int, mlp: bool, eps: float = 1e-6):
        super().__init__()
        self.vectors, self.eps = vectors, eps
        self.vector_in = nn.Linear(vectors, 2 * vectors, bias=False)
        width = scalars + vectors
        self.scalar_mlp = (nn.Sequential(nn.Linear(width, scalars), nn.SiLU(), nn.Linear(scalars, width)) if mlp
                           else nn.Linear(width, width))
        self.vector_out = nn.Linear(vectors, vectors, bias=False) if mlp else None

    def forward(self, s, v):
        sq, w = self.vector_in(v).split([self.vectors, self.vectors], -1)
        gate, s = self.scalar_mlp(torch.cat([s, (sq * sq).sum(1).clamp_min(self.eps)], -1)).split(
            [self.vectors, s.shape[-1]], -1)
        v = gate.unsqueeze(1) * w
        return s, (v if self.vector_out is None else self.vector_out(v))


class EQGATLayer(nn.Module):
    """One EQGAT attention layer on a fully connected molecule (module docstring).

    forward(s (n, S), v (n, 3, V), p (n, 3), e (E, D), geometry (d, a, u), edge_index (2, E) [sender,
    receiver], batch (n,), num_graphs) -> (s, v, p, e).
    """

    def __init__(self, scalars: int, vectors: int, edge_dim: int, first: bool, mlp_update: bool = True,
                 cross_product: bool = False):
        super().__init__()
        self.scalars, self.vectors, self.edge_dim = scalars, vectors, edge_dim
        self.first, self.cross_product = first, cross_product and not first
        self.vector_terms = 1 if first else (3 if cross_product else 2)
        self.edge_pre = nn.Linear(edge_dim, edge_dim)
        self.message = nn.Sequential(nn.Linear(2 * scalars + edge_dim + 4, scalars), nn.SiLU(),
                                     nn.Linear(scalars, scalars + self.vector_terms * vectors + edge_dim + 1))
        self.scalar_values = nn.Linear(scalars, scalars)
        self.vector_values = None if first else nn.Linear(vectors, vectors, bias=False)
        self.edge_post = nn.Linear(edge_dim, edge_dim)
        self.position_scale = nn.Parameter(torch.ones(1, 1))
        self.update = GatedUpdate(scalars, vectors, mlp_update)

    def forward(self, s, v, p, e, geometry, edge_index, batch, num_graphs: int):
        d, a, u = geometry
        src, dst = edge_index
        n, V = s.shape[0], self.vectors
        e = self.edge_pre(e)
        radius = (p * p).sum(-1, keepdim=True).clamp_min(1e-6).sqrt()
        inputs = torch.cat([s[dst], s[src], d.unsqueeze(-1), a.unsqueeze(-1), e, radius[dst], radius[src]], -1)
        alpha, c, f, g = self.message(inputs).split([self.scalars, self.vector_terms * V, self.edge_dim, 1], -1)
        ds = scatter_sum(segment_softmax(alpha, dst, n) * self.scalar_values(s)[src], dst, n)
        c = c.unsqueeze(1)  # (E, 1, k V)
        dv = u.unsqueeze(-1) * c[..., :V]
        if self.vector_values is not None:
            dv = dv + c[..., V:2 * V] * self.vector_values(v)[src]
        if self.cross_product:
            dv = dv + c[..., 2 * V:] * torch.linalg.cross(v[dst], v[src], dim=1)
        s, v = s + ds, v + scatter_mean(dv, dst, n)
        m = scatter_mean(g * u, dst, n)
        scale = scatter_mean(m.norm(dim=-1, keepdim=True), batch, num_graphs)[batch] + 1e-5
        p = p + self.position_scale * m / scale
        e = self.edge_post(nn.functional.silu(f + e))
        ds, dv = self.update(s, v)
        return s + ds, v + dv, p, e


class EQGATDenoiser(nn.Module):
    """EQGAT-diff's x0 denoiser: positions (n, 3), type logits (n, K), charge logits (n, C), bond logits (E, 5).

    forward(x, a, q, b, t, batch, edge_index, rev) with one-hot a (n, K), q (n, C), b (E, n_bonds), t (B,) in
    [0, 1], edge_index the fully connected directed edges (2, E) [sender, receiver] and rev (E,) each edge's
    reverse (the interface of ``categorical.CategoricalDenoiser``).
    """

    def __init__(self, n_types: int, n_charges: int, n_bonds: int = 5, scalars: int = 256, vectors: int = 64,
                 edge_dim: int = 32, layers: int = 7, cross_product: bool = False):
        super().__init__()
        self.n_types, self.vectors = n_types, vectors
        self.time_atoms = nn.Linear(1, scalars)
        self.time_bonds = nn.Linear(1, edge_dim)
        self.atom_in = nn.Linear(n_types + n_charges, scalars)
        self.bond_in = nn.Linear(n_bonds, edge_dim)
        self.atom_mix = nn.Linear(scalars, scalars)
        self.bond_mix = nn.Linear(edge_dim, edge_dim)
        self.norms = nn.ModuleList([EQGATNorm(scalars) for _ in range(layers)])
        self.layers = nn.ModuleList([EQGATLayer(scalars, vectors, edge_dim, first=k == 0,
                                                mlp_update=k < layers - 1, cross_product=cross_product)
                                     for k in range(layers)])
        self.coords_out = nn.Linear(vectors, 1, bias=False)
        self.node_out = nn.Linear(scalars, scalars)
        self.atom_out = nn.Linear(scalars, n_types + n_charges)
        self.pair_edge = nn.Linear(edge_dim, scalars)
        self.bond_hidden = nn.Linear(scalars + 1, scalars)
        self.bond_out = nn.Linear(scalars, n_bonds)

    def forward(self, x, a, q, b, t, batch, edge_index, rev):
        num_graphs = t.shape[0]
        src, dst = edge_index
        p = remove_mean(x, batch, num_graphs)
        tt = t.to(x.dtype).unsqueeze(-1)
        s = self.atom_mix(self.atom_in(torch.cat([a, q], -1)) + self.time_atoms(tt)[batch])
        e = self.bond_mix(self.bond_in(b) + self.time_bonds(tt)[batch[src]])
        v = p.new_zeros(p.shape[0], 3, self.vectors)
        for norm, layer in zip(self.norms, self.layers):
            s, v = norm(s, v, batch, num_graphs)
            s, v, p, e = layer(s, v, p, e, edge_geometry(p, edge_index), edge_index, batch, num_graphs)
        h = nn.functional.silu(self.node_out(s))
        x0 = remove_mean(p + self.coords_out(v).squeeze(-1), batch, num_graphs)
        logits = self.atom_out(h)
        d2 = ((x0[dst] - x0[src]) ** 2).sum(-1, keepdim=True)
        pair = h[dst] + h[src] + self.pair_edge(0.5 * (e + e[rev]))
        bonds = self.bond_out(nn.functional.silu(self.bond_hidden(torch.cat([pair, d2], -1))))
        return x0, logits[:, :self.n_types], logits[:, self.n_types:], bonds


__all__ = ["EQGATDenoiser", "EQGATLayer", "EQGATNorm", "GatedUpdate", "edge_geometry", "segment_softmax"]
