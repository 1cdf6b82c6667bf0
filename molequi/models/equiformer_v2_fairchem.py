"""EquiformerV2 as fairchem-core 1.10.0 defines it (Liao, Wood, Das & Smidt, "EquiformerV2: Improved Equivariant
Transformer for Scaling to Higher-Degree Representations", ICLR 2024; ``fairchem.core.models.equiformer_v2``:
``EquiformerV2Backbone`` with ``EqV2ScalarHead`` (energy) and ``EqV2VectorHead`` (direct forces)), in molequi's
interface. Model name ``equiformer_v2`` (``equiformer_v2_fairchem``, its former name, is an alias of it); molequi's
own EquiformerV2-style variant is ``equiformer_v2_molequi`` (``molequi.models.equiformer_v2``).

Node features x_i: real spherical-harmonic coefficients up to ``lmax`` (e3nn order, index l^2 + l + m), C =
``sphere_channels`` channels, (n, (L+1)^2, C). Edge e = (j -> i): fairchem's edge_index[0] = j (source),
edge_index[1] = i (target), vector v_e = x_j - x_i (fairchem's ``edge_distance_vec``), distance d_e.

Architecture::

    Edge scalars    h_e = [G(d_e) (600 Gaussians on [0, cutoff], width 2 spacings) || emb_s(z_j) || emb_t(z_i)]
                    (the atom embeddings are per block: edge-degree embedding, every attention block, force head)
    Embedding       x_i = [emb(z_i), 0, ...] + (1/avg_degree) sum_{e -> i} D_e^T [Rad(h_e)]_{m=0}
                    (Rad: Linear-LayerNorm-SiLU-Linear-LayerNorm-SiLU-Linear; D_e^T with fairchem's rescale
                    sqrt((2l+1)/(2 mmax+1)) of degrees l > mmax)
    Block (x num_layers)   y = x + Attn(Norm_1(x));  x = y + FFN(Norm_2(y))
      Attn: m_e = SO2Conv_1(D_e [x_j || x_i] ; Rad(h_e))  (edge frame, |m| <= mmax; its m = 0 part has
            heads * alpha + H extra channels: attention logits and gating scalars)
            m_e = SepS2Act(gate_e, m_e) (SiLU of the gating scalars as l = 0; SiLU on the (lmax, mmax) S2 grid for
            l > 0);  v_e = SO2Conv_2(m_e)  (heads x value channels)
            a_e^h = alpha_dot_h . SmoothLeakyReLU_0.2(LayerNorm(logits_e^h));  alpha = softmax over e -> i
            (dropout ``alpha_drop`` in training);  out_i = Lin_l( sum_{e -> i} D_e^T alpha_e^h v_e^h )
      FFN:  ``use_grid_mlp``: gate = SiLU(Lin(x^{l=0})); z = Lin_l(x) on the (lmax, lmax) grid through
            Lin-SiLU-Lin-SiLU-Lin (no bias), back, its l = 0 replaced by gate; out = Lin_l(z)
            else: z = SepS2Act(Lin(x^{l=0}), Lin_l(x)) on the (lmax, lmax) grid; out = Lin_l(z)
      Norm: ``layer_norm_sh`` (LayerNorm on l = 0; one RMS over the l > 0 coefficients with each degree weighted
            equally, a learned scale per (l, C)) or ``rms_norm_sh`` (centred l = 0, one RMS over all degrees).
      Drop path (``drop_path_rate``, per structure) on both residual branches in training only.
    Output   x = Norm(x);  E = sum_i FFN_E(x_i)^{l=0} / avg_num_nodes;  F_i = Attn_F(x)_i^{l=1} (one channel, read
             as (x, y, z) in fairchem's component order (e3nn's l = 1 order y, z, x), as fairchem reads it)

SO(2) convolutions (``SO2_Convolution``): m = 0: fc_m0 (bias) on the m = 0 coefficients of all degrees (times the
radial weights); m > 0: one bias-free fc producing real and imaginary parts (the complex product
(x_r[+m] - x_i[-m], x_r[-m] + x_i[+m])). Grids: e3nn ``ToS2Grid`` / ``FromS2Grid`` ('component'), fairchem's
``SO3_Grid`` sizes (2(L+1) x 2m+1 or 2m+3 when m = L, or ``grid_resolution`` for both) and its rescale of degrees
l > mmax; an imported checkpoint brings fairchem's own (float32-built) grid matrices.

Edge frames: fairchem's ``init_edge_rot_mat`` (a random roll per edge and call, ``torch.rand``; replicated draw
for draw, shared with eSCN: ``molequi.models.escn``), or ``edge_roll: fixed`` (molequi's option, roll 0).
Graph: fairchem's order and strict ``max_neighbors`` cut (as eSCN, ``enforce_max_neighbors_strictly``).

Defaults are fairchem's OC20 S2EF All+MD configuration ``configs/s2ef/all/equiformer_v2/
equiformer_v2_N@8_L@4_M@2_31M.yml`` (8 layers, lmax 4, mmax 2, 128 sphere channels, attention 64 hidden, 8 heads x
64 alpha / 16 value channels, FFN 128, ``layer_norm_sh``, grid resolution 18, cutoff 12 Å, 20 neighbours, grid
MLP FFN, alpha dropout 0.1, drop path 0.1) with fairchem's constructor defaults for the rest (edge channels 128,
90 elements, avg_num_nodes 77.81317, avg_degree 23.395238876342773). Not implemented (refused by the importer):
several resolutions, gate / plain S2 activations, ``use_m_share_rad``, shared atom-edge embeddings,
``use_s2_act_attn``, ``proj_drop`` > 0, energy linear references.

Equivariance: rotations only, up to the S2 grids' error (everything else is exact; measured on a rattled 18-atom
OC20 slab, float64, tiny model: energy 3e-4 / 3e-8 / 5e-14, forces 5e-2 / 5e-5 / 8e-9 relative at the default
grid / 16 / 32 points per angle). Reflections are not a symmetry: the SO(2) maps have independent "imaginary"
weights, so the model is chiral (as fairchem's; energy 2e-3, forces O(1) relative under a mirror). Tested.

Forces: ``direct_forces`` (fairchem's only mode) is not conservative (``molequi md`` refuses it without
``--allow-nonconservative``); ``direct_forces: false`` (molequi's option) gives -dE/dx and stress and needs
``edge_roll: fixed``. Energies E_i = E0[z_i] + scale * y_i / avg_num_nodes + shift; an import has E0 = 0, scale 1,
shift 0 (fairchem's model output); direct forces are multiplied by ``statistics.force_rms`` (1 for an import).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from e3nn import o3
from torch import nn

from molequi import keys as K
from molequi.data.statistics import Statistics
from molequi.errors import ConfigError, ModelError
from molequi.models.base import AtomicEnergyHead, ElementTable, EnergyModel
from molequi.models.escn import ESCN, EdgeRotation, _in_float64, fairchem_edge_rotation, reduced_index
from molequi.response import batch_vector
from molequi.so3.rotations import EdgeFrame

NORM_TYPES = ("layer_norm_sh", "rms_norm_sh")
EDGE_ROLLS = ("random", "fixed")
AVG_NUM_NODES = 77.81317
AVG_DEGREE = 23.395238876342773
NUM_GAUSSIANS = 600


def _degree_index(lmax: int) -> torch.Tensor:
    return torch.tensor([l for l in range(lmax + 1) for _ in range(2 * l + 1)], dtype=torch.long)


def _rescale(lmax: int, mmax: int) -> torch.Tensor:
    """fairchem's factor sqrt((2l+1)/(2 mmax+1)) for degrees l > mmax (1 otherwise), per e3nn coefficient."""
    return torch.tensor([math.sqrt((2 * l + 1) / (2 * mmax + 1)) if l > mmax else 1.0
                         for l in range(lmax + 1) for _ in range(2 * l + 1)], dtype=torch.float64)


def eqv2_grid(lmax: int, mmax: int, resolution: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """fairchem EquiformerV2's ``SO3_Grid(lmax, mmax, resolution, normalization='component')`` matrices,
    (lat, long, K_r) each, float64, on the coefficients |m| <= mmax, with its rescale of degrees l > mmax."""
    if resolution:
        res = (resolution, resolution)
    else:
        res = (2 * (lmax + 1), 2 * (mmax + 1) + 1 if lmax == mmax else 2 * mmax + 1)

    def build():
        to = o3.ToS2Grid(lmax, res, normalization="component")
        fr = o3.FromS2Grid(res, lmax, normalization="component")
        return torch.einsum("mbi,am->bai", to.shb, to.sha), torch.einsum("am,mbi->bai", fr.sha, fr.shb)

    to_mat, from_mat = _in_float64(build)
    scale = _rescale(lmax, mmax)
    idx = reduced_index(lmax, mmax)
    return (to_mat * scale)[:, :, idx].contiguous(), (from_mat * scale)[:, :, idx].contiguous()


class Grid(nn.Module):
    """S2 grid of one (lmax, mmax): buffers ``to_grid_mat`` / ``from_grid_mat`` (fairchem's names)."""

    def __init__(self, lmax: int, mmax: int, resolution: int | None):
        super().__init__()
        to_mat, from_mat = eqv2_grid(lmax, mmax, resolution)
        self.register_buffer("to_grid_mat", to_mat)
        self.register_buffer("from_grid_mat", from_mat)

    def to_grid(self, x):
        return torch.einsum("bai,zic->zbac", self.to_grid_mat.to(x.dtype), x)

    def from_grid(self, g):
        return torch.einsum("bai,zbac->zic", self.from_grid_mat.to(g.dtype), g)

    def act(self, x):
        return self.from_grid(nn.functional.silu(self.to_grid(x)))


def sep_s2_act(gate: torch.Tensor, x: torch.Tensor, grid: Grid) -> torch.Tensor:
    """fairchem's ``SeparableS2Activation``: SiLU(gate) as l = 0, the grid SiLU of x for the rest."""
    y = grid.act(x)
    return torch.cat([nn.functional.silu(gate).unsqueeze(1), y[:, 1:]], dim=1)


def smooth_leaky_relu(x: torch.Tensor, slope: float = 0.2) -> torch.Tensor:
    return (1 + slope) / 2 * x + (1 - slope) / 2 * x * (2 * torch.sigmoid(x) - 1)


def drop_path(x: torch.Tensor, batch: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """fairchem's ``GraphDropPath``: the whole branch of a structure dropped with probability p (training)."""
    if p == 0.0 or not training:
        return x
    keep = 1 - p
    n_graphs = int(batch.max()) + 1
    mask = torch.floor(keep + torch.rand((n_graphs,) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device))
    return x * (mask / keep)[batch]


class RadialFunction(nn.Module):
    """fairchem's ``RadialFunction``: Linear (-> LayerNorm -> SiLU -> Linear)* on the edge scalars."""

    def __init__(self, channels: list[int]):
        super().__init__()
        mods: list[nn.Module] = []
        for i in range(1, len(channels)):
            mods.append(nn.Linear(channels[i - 1], channels[i]))
            if i < len(channels) - 1:
                mods += [nn.LayerNorm(channels[i]), nn.SiLU()]
        self.net = nn.Sequential(*mods)

    def forward(self, x):
        return self.net(x)


class SO3Linear(nn.Module):
    """fairchem's ``SO3_LinearV2``: one (out, in) map per degree, bias on l = 0."""

    def __init__(self, in_features: int, out_features: int, lmax: int):
        super().__init__()
        bound = 1 / math.sqrt(in_features)
        self.weight = nn.Parameter(torch.empty(lmax + 1, out_features, in_features).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.zeros(out_features))
        self.register_buffer("expand_index", _degree_index(lmax), persistent=False)

    def forward(self, x):
        out = torch.einsum("bmi,moi->bmo", x, self.weight.index_select(0, self.expand_index))
        return torch.cat([out[:, :1] + self.bias, out[:, 1:]], dim=1)


class LayerNormSH(nn.Module):
    """fairchem's ``EquivariantLayerNormArraySphericalHarmonics`` ('component', balanced degrees)."""

    def __init__(self, lmax: int, channels: int, eps: float = 1e-5):
        super().__init__()
        self.lmax, self.eps = lmax, eps
        self.norm_l0 = nn.LayerNorm(channels, eps=eps)
        self.affine_weight = nn.Parameter(torch.ones(lmax, channels))
        w = torch.tensor([1.0 / (2 * l + 1) for l in range(1, lmax + 1) for _ in range(2 * l + 1)],
                         dtype=torch.float64).view(-1, 1) / lmax
        self.register_buffer("balance_degree_weight", w)
        self.register_buffer("expand_index", _degree_index(lmax)[1:] - 1, persistent=False)

    def forward(self, x):
        out = self.norm_l0(x[:, :1])
        if self.lmax == 0:
            return out
        f = x[:, 1:]
        norm = torch.einsum("nic,ia->nac", f.pow(2), self.balance_degree_weight.to(x.dtype))
        norm = (norm.mean(dim=2, keepdim=True) + self.eps).pow(-0.5)
        w = self.affine_weight.index_select(0, self.expand_index).unsqueeze(0)
        return torch.cat([out, f * (norm * w)], dim=1)


class RMSNormSH(nn.Module):
    """fairchem's ``EquivariantRMSNormArraySphericalHarmonicsV2`` (centred l = 0, 'component', balanced)."""

    def __init__(self, lmax: int, channels: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.affine_weight = nn.Parameter(torch.ones(lmax + 1, channels))
        self.affine_bias = nn.Parameter(torch.zeros(channels))
        self.register_buffer("expand_index", _degree_index(lmax), persistent=False)
        w = torch.tensor([1.0 / (2 * l + 1) for l in range(lmax + 1) for _ in range(2 * l + 1)],
                         dtype=torch.float64).view(-1, 1) / (lmax + 1)
        self.register_buffer("balance_degree_weight", w)

    def forward(self, x):
        f0 = x[:, :1]
        f = torch.cat([f0 - f0.mean(dim=2, keepdim=True), x[:, 1:]], dim=1)
        norm = torch.einsum("nic,ia->nac", f.pow(2), self.balance_degree_weight.to(x.dtype))
        norm = (norm.mean(dim=2, keepdim=True) + self.eps).pow(-0.5)
        out = f * (norm * self.affine_weight.index_select(0, self.expand_index).unsqueeze(0))
        return torch.cat([out[:, :1] + self.affine_bias, out[:, 1:]], dim=1)


def make_norm(kind: str, lmax: int, channels: int) -> nn.Module:
    return LayerNormSH(lmax, channels) if kind == "layer_norm_sh" else RMSNormSH(lmax, channels)


class SO2mConv(nn.Module):
    """fairchem's ``SO2_m_Convolution``: (E, 2, (L-m+1) C_in) -> (E, 2, (L-m+1) C_out)."""

    def __init__(self, m: int, lmax: int, c_in: int, c_out: int):
        super().__init__()
        n = (lmax - m + 1) * c_in
        self.fc = nn.Linear(n, 2 * c_out * (lmax - m + 1), bias=False)
        self.fc.weight.data.mul_(1 / math.sqrt(2))

    def forward(self, x):
        x = self.fc(x)
        half = x.shape[2] // 2
        x_r, x_i = x[..., :half], x[..., half:]
        return torch.stack([x_r[:, 0] - x_i[:, 1], x_r[:, 1] + x_i[:, 0]], dim=1)


class SO2Convolution(nn.Module):
    """fairchem's ``SO2_Convolution`` on edge-frame coefficients (E, K_r, C_in) (|m| <= mmax, e3nn order);
    returns (E, K_r, C_out) and, with ``extra``, the extra m = 0 outputs (E, extra)."""

    def __init__(self, lmax: int, mmax: int, c_in: int, c_out: int, edge_channels: list[int] | None,
                 extra: int | None = None):
        super().__init__()
        self.lmax, self.mmax, self.c_out, self.extra = lmax, mmax, c_out, extra
        n0 = (lmax + 1) * c_in
        self.fc_m0 = nn.Linear(n0, c_out * (lmax + 1) + (extra or 0))
        self.so2_m_conv = nn.ModuleList([SO2mConv(m, lmax, c_in, c_out) for m in range(1, mmax + 1)])
        self.sizes = [n0] + [conv.fc.in_features for conv in self.so2_m_conv]
        self.rad_func = RadialFunction(list(edge_channels) + [sum(self.sizes)]) if edge_channels else None
        red = {(l, m): i for i, (l, m) in enumerate((l, m) for l in range(lmax + 1)
                                                     for m in range(-min(l, mmax), min(l, mmax) + 1))}
        pos = {m: [red[(l, m)] for l in range(abs(m), lmax + 1)] for m in range(-mmax, mmax + 1)}
        order = pos[0] + [i for m in range(1, mmax + 1) for i in pos[m] + pos[-m]]
        self.register_buffer("m_order", torch.tensor(order, dtype=torch.long), persistent=False)
        self.register_buffer("l_order", torch.argsort(torch.tensor(order)), persistent=False)

    def forward(self, x, h):
        E = x.shape[0]
        x = x.index_select(1, self.m_order)
        w = self.rad_func(h) if self.rad_func is not None else None
        n0 = self.lmax + 1
        x0 = x[:, :n0].reshape(E, -1)
        if w is not None:
            x0 = x0 * w[:, :self.sizes[0]]
        x0 = self.fc_m0(x0)
        extra = None
        if self.extra is not None:
            extra, x0 = x0[:, :self.extra], x0[:, self.extra:]
        parts = [x0.reshape(E, -1, self.c_out)]
        k, off = n0, self.sizes[0]
        for m, conv in enumerate(self.so2_m_conv, start=1):
            size = self.lmax - m + 1
            xm = x[:, k:k + 2 * size].reshape(E, 2, -1)
            if w is not None:
                xm = xm * w[:, off:off + self.sizes[m]].unsqueeze(1)
            parts.append(conv(xm).reshape(E, -1, self.c_out))
            k += 2 * size
            off += self.sizes[m]
        out = torch.cat(parts, dim=1).index_select(1, self.l_order)
        return out if self.extra is None else (out, extra)


class EdgeContext:
    """What every block needs of the edges of one call: sources, targets, edge scalars, rotations."""

    def __init__(self, sender, receiver, numbers, gauss, rot: EdgeRotation, rescale: torch.Tensor, n_nodes: int):
        self.sender, self.receiver, self.numbers, self.gauss = sender, receiver, numbers, gauss
        self.rot, self.n_nodes = rot, n_nodes
        self.rescale = rescale.to(gauss.dtype).view(1, -1, 1)

    def to_edge(self, x):
        return self.rot.to_edge(x)

    def from_edge_sum(self, y):
        """sum over e -> i of D_e^T y_e with fairchem's rescale of degrees l > mmax, (n, K, C)."""
        y = self.rot.from_edge(y) * self.rescale
        return y.new_zeros(self.n_nodes, y.shape[1], y.shape[2]).index_add_(0, self.receiver, y)


class EdgeEmbeddings(nn.Module):
    """Per-block atom embeddings of the edge scalars: [G(d) || emb_s(z_j) || emb_t(z_i)]."""

    def __init__(self, max_num_elements: int, channels: int):
        super().__init__()
        self.source_embedding = nn.Embedding(max_num_elements, channels)
        self.target_embedding = nn.Embedding(max_num_elements, channels)
        nn.init.uniform_(self.source_embedding.weight.data, -0.001, 0.001)
        nn.init.uniform_(self.target_embedding.weight.data, -0.001, 0.001)

    def edge_scalars(self, ctx: EdgeContext):
        return torch.cat([ctx.gauss, self.source_embedding(ctx.numbers[ctx.sender]).to(ctx.gauss.dtype),
                          self.target_embedding(ctx.numbers[ctx.receiver]).to(ctx.gauss.dtype)], dim=1)


class EdgeDegreeEmbedding(EdgeEmbeddings):
    def __init__(self, cfg: EquiformerV2Fairchem.Config):
        super().__init__(cfg.max_num_elements, cfg.edge_channels)
        self.lmax, self.channels, self.avg_degree = cfg.lmax, cfg.sphere_channels, cfg.avg_degree
        self.rad_func = RadialFunction([NUM_GAUSSIANS + 2 * cfg.edge_channels, cfg.edge_channels,
                                        cfg.edge_channels, (cfg.lmax + 1) * cfg.sphere_channels])
        red = [(l, m) for l in range(cfg.lmax + 1) for m in range(-min(l, cfg.mmax), min(l, cfg.mmax) + 1)]
        self.register_buffer("m0_pos", torch.tensor([red.index((l, 0)) for l in range(cfg.lmax + 1)]),
                             persistent=False)
        self.k_r = len(red)

    def forward(self, ctx: EdgeContext):
        w = self.rad_func(self.edge_scalars(ctx)).view(-1, self.lmax + 1, self.channels)
        y = w.new_zeros(w.shape[0], self.k_r, self.channels).index_copy_(1, self.m0_pos, w)
        return ctx.from_edge_sum(y) / self.avg_degree


class GraphAttention(EdgeEmbeddings):
    """fairchem's ``SO2EquivariantGraphAttention`` (separable S2 activation, attention from extra m = 0
    channels); ``output_channels`` 1 for the force head."""

    def __init__(self, cfg: EquiformerV2Fairchem.Config, output_channels: int, alpha_drop: float):
        super().__init__(cfg.max_num_elements, cfg.edge_channels)
        L, M, C = cfg.lmax, cfg.mmax, cfg.sphere_channels
        self.heads, self.alpha_ch, self.value_ch = cfg.num_heads, cfg.attn_alpha_channels, cfg.attn_value_channels
        n_alpha = self.heads * self.alpha_ch
        self.so2_conv_1 = SO2Convolution(L, M, 2 * C, cfg.attn_hidden_channels,
                                         [NUM_GAUSSIANS + 2 * cfg.edge_channels, cfg.edge_channels,
                                          cfg.edge_channels], extra=n_alpha + cfg.attn_hidden_channels)
        self.alpha_norm = nn.LayerNorm(self.alpha_ch)
        self.alpha_dot = nn.Parameter(torch.empty(self.heads, self.alpha_ch).uniform_(
            -1 / math.sqrt(self.alpha_ch), 1 / math.sqrt(self.alpha_ch)))
        self.alpha_dropout = nn.Dropout(alpha_drop) if alpha_drop else None
        self.so2_conv_2 = SO2Convolution(L, M, cfg.attn_hidden_channels, self.heads * self.value_ch, None)
        self.proj = SO3Linear(self.heads * self.value_ch, output_channels, L)

    def forward(self, x, ctx: EdgeContext, edge_grid: Grid):
        h = self.edge_scalars(ctx)
        m = ctx.to_edge(torch.cat([x[ctx.sender], x[ctx.receiver]], dim=2))
        m, extra = self.so2_conv_1(m, h)
        n_alpha = self.heads * self.alpha_ch
        m = sep_s2_act(extra[:, n_alpha:], m, edge_grid)
        v = self.so2_conv_2(m, h)
        a = smooth_leaky_relu(self.alpha_norm(extra[:, :n_alpha].reshape(-1, self.heads, self.alpha_ch)))
        a = torch.einsum("bik,ik->bi", a, self.alpha_dot)
        a = segment_softmax(a, ctx.receiver, ctx.n_nodes)
        if self.alpha_dropout is not None:
            a = self.alpha_dropout(a)
        v = (v.reshape(v.shape[0], v.shape[1], self.heads, self.value_ch) * a.view(-1, 1, self.heads, 1))
        return self.proj(ctx.from_edge_sum(v.reshape(v.shape[0], v.shape[1], -1)))


def segment_softmax(a: torch.Tensor, index: torch.Tensor, n: int) -> torch.Tensor:
    """Softmax of a (E, H) over the edges of each target (as torch_geometric.utils.softmax)."""
    idx = index.view(-1, 1).expand_as(a)
    amax = a.new_zeros(n, a.shape[1]).scatter_reduce(0, idx, a.detach(), reduce="amax", include_self=False)
    e = (a - amax.index_select(0, index)).exp()
    s = a.new_zeros(n, a.shape[1]).index_add_(0, index, e) + 1e-16
    return e / s.index_select(0, index)


class FeedForward(nn.Module):
    """fairchem's ``FeedForwardNetwork`` (grid MLP or separable S2 activation)."""

    def __init__(self, cfg: EquiformerV2Fairchem.Config, output_channels: int):
        super().__init__()
        C, H, L = cfg.sphere_channels, cfg.ffn_hidden_channels, cfg.lmax
        self.use_grid_mlp = cfg.use_grid_mlp
        self.so3_linear_1 = SO3Linear(C, H, L)
        if self.use_grid_mlp:
            self.scalar_mlp = nn.Sequential(nn.Linear(C, H), nn.SiLU())
            self.grid_mlp = nn.Sequential(nn.Linear(H, H, bias=False), nn.SiLU(), nn.Linear(H, H, bias=False),
                                          nn.SiLU(), nn.Linear(H, H, bias=False))
        else:
            self.gating_linear = nn.Linear(C, H)
        self.so3_linear_2 = SO3Linear(H, output_channels, L)

    def forward(self, x, node_grid: Grid):
        if self.use_grid_mlp:
            gate = self.scalar_mlp(x[:, :1])
            z = self.so3_linear_1(x)
            z = node_grid.from_grid(self.grid_mlp(node_grid.to_grid(z)))
            z = torch.cat([gate, z[:, 1:]], dim=1)
        else:
            gate = self.gating_linear(x[:, 0])
            z = sep_s2_act(gate, self.so3_linear_1(x), node_grid)
        return self.so3_linear_2(z)


class TransBlock(nn.Module):
    def __init__(self, cfg: EquiformerV2Fairchem.Config):
        super().__init__()
        self.norm_1 = make_norm(cfg.norm_type, cfg.lmax, cfg.sphere_channels)
        self.ga = GraphAttention(cfg, cfg.sphere_channels, cfg.alpha_drop)
        self.norm_2 = make_norm(cfg.norm_type, cfg.lmax, cfg.sphere_channels)
        self.ffn = FeedForward(cfg, cfg.sphere_channels)
        self.drop_path_rate = cfg.drop_path_rate

    def forward(self, x, ctx: EdgeContext, batch, edge_grid: Grid, node_grid: Grid):
        y = drop_path(self.ga(self.norm_1(x), ctx, edge_grid), batch, self.drop_path_rate, self.training) + x
        return drop_path(self.ffn(self.norm_2(y), node_grid), batch, self.drop_path_rate, self.training) + y


class GaussianSmearing(nn.Module):
    """fairchem's ``GaussianSmearing(0, cutoff, 600, 2.0)`` (the coefficient from the stored offsets)."""

    def __init__(self, cutoff: float):
        super().__init__()
        self.register_buffer("offset", torch.linspace(0.0, cutoff, NUM_GAUSSIANS, dtype=torch.float64))

    def forward(self, d):
        coeff = -0.5 / (2.0 * float(self.offset[1] - self.offset[0])) ** 2
        return torch.exp(coeff * (d.view(-1, 1) - self.offset.to(d.dtype).view(1, -1)) ** 2)


class EquiformerV2Fairchem(EnergyModel):
    """EquiformerV2 (fairchem-core 1.10.0's backbone + energy / force heads), module docstring."""

    compile_refusal = ("its graph has data-dependent sizes: fairchem's strict max_neighbors cut (shared with "
                       "eSCN, molequi.models.escn.max_neighbors_mask: bincount, max, boolean masks) and the "
                       "'all edges kept?' branch read tensor values, so torch._dynamo finds graph breaks (8-11 "
                       "in a 1-layer model, torch 2.13) and fullgraph=True fails")

    @dataclass
    class Config:
        r_max: float = 12.0
        """Cutoff radius, Å (fairchem's ``max_radius``; OC20 S2EF All: 12)."""
        max_neighbors: int = 20
        """Neighbours kept per atom (the nearest, fairchem's strict cut); 0 keeps all."""
        max_num_elements: int = 90
        """Rows of the atomic-number embeddings (atomic numbers must be below it)."""
        num_layers: int = 8
        """Transformer blocks (attention + feed-forward)."""
        sphere_channels: int = 128
        """Channels per spherical-harmonic coefficient of the node features."""
        attn_hidden_channels: int = 64
        """Hidden channels of the attention's SO(2) convolutions."""
        num_heads: int = 8
        """Attention heads."""
        attn_alpha_channels: int = 64
        """Channels per head of the attention logits (extra m = 0 outputs)."""
        attn_value_channels: int = 16
        """Channels per head of the attention values."""
        ffn_hidden_channels: int = 128
        """Hidden channels of the feed-forward networks (blocks and energy head)."""
        norm_type: str = "layer_norm_sh"
        """'layer_norm_sh' (OC20 configs) or 'rms_norm_sh' (fairchem's constructor default)."""
        lmax: int = 4
        """Highest degree (fairchem's ``lmax_list: [4]``)."""
        mmax: int = 2
        """Highest order kept in the edge frame (fairchem's ``mmax_list: [2]``)."""
        grid_resolution: int | None = 18
        """Points per angle of the S2 grids; None: fairchem's 2(lmax+1) x 2m+1 (2m+3 when m = lmax)."""
        edge_channels: int = 128
        """Width of the radial functions and of the atom embeddings of the edge scalars."""
        use_grid_mlp: bool = True
        """FFN on the S2 grid (OC20 configs); False: separable S2 activation."""
        alpha_drop: float = 0.1
        """Dropout of the attention weights (training only)."""
        drop_path_rate: float = 0.1
        """Drop path of the residual branches per structure (training only)."""
        avg_num_nodes: float = AVG_NUM_NODES
        """Energy = sum of atom outputs / avg_num_nodes (fairchem's default: IS2RE 100k statistics)."""
        avg_degree: float = AVG_DEGREE
        """Edge-degree embedding = sum over neighbours / avg_degree."""
        direct_forces: bool = True
        """fairchem's force head (not conservative); False: forces = -dE/dx (molequi; needs edge_roll fixed)."""
        edge_roll: str = "random"
        """'random' (fairchem: a random roll of each edge frame per call) or 'fixed' (molequi: roll 0)."""

        def validate(self) -> None:
            if self.r_max <= 0:
                raise ConfigError(f"equiformer_v2 r_max must be positive, got {self.r_max}")
            if not 1 <= self.lmax <= 12 or not 1 <= self.mmax <= self.lmax:
                raise ConfigError(f"equiformer_v2 needs 1 <= mmax <= lmax <= 12, got lmax {self.lmax}, "
                                  f"mmax {self.mmax}")
            if self.norm_type not in NORM_TYPES:
                raise ConfigError(f"equiformer_v2 norm_type must be one of {', '.join(NORM_TYPES)}, got "
                                  f"'{self.norm_type}'")
            if self.edge_roll not in EDGE_ROLLS:
                raise ConfigError(f"equiformer_v2 edge_roll must be 'random' or 'fixed', got "
                                  f"'{self.edge_roll}'")
            if min(self.num_layers, self.sphere_channels, self.attn_hidden_channels, self.num_heads,
                   self.attn_alpha_channels, self.attn_value_channels, self.ffn_hidden_channels,
                   self.edge_channels, self.max_num_elements) < 1 or self.max_neighbors < 0:
                raise ConfigError("equiformer_v2 sizes must be >= 1 and max_neighbors >= 0")
            if not (0 <= self.alpha_drop < 1 and 0 <= self.drop_path_rate < 1):
                raise ConfigError("equiformer_v2 alpha_drop and drop_path_rate must be in [0, 1)")
            if self.avg_num_nodes <= 0 or self.avg_degree <= 0:
                raise ConfigError("equiformer_v2 avg_num_nodes and avg_degree must be positive")
            if not self.direct_forces and self.edge_roll != "fixed":
                raise ConfigError("equiformer_v2 with direct_forces: false (gradient forces) needs "
                                  "edge_roll: fixed; a random roll per call makes the energy a random function "
                                  "of the positions")

    def __init__(self, cfg: EquiformerV2Fairchem.Config, statistics: Statistics):
        super().__init__()
        cfg.validate()
        self.config, self.statistics = cfg, statistics
        self.elements = [int(z) for z in statistics.elements]
        if max(self.elements) >= cfg.max_num_elements:
            raise ConfigError(f"equiformer_v2 max_num_elements {cfg.max_num_elements} must exceed the "
                              f"largest atomic number of the elements ({max(self.elements)})")
        self.r_max = float(cfg.r_max)
        self.conservative = not cfg.direct_forces
        self.generator: torch.Generator | None = None
        L = cfg.lmax
        self.element_table = ElementTable(self.elements)
        self.sphere_embedding = nn.Embedding(cfg.max_num_elements, cfg.sphere_channels)
        self.distance_expansion = GaussianSmearing(cfg.r_max)
        self.edge_degree_embedding = EdgeDegreeEmbedding(cfg)
        self.blocks = nn.ModuleList([TransBlock(cfg) for _ in range(cfg.num_layers)])
        self.norm = make_norm(cfg.norm_type, L, cfg.sphere_channels)
        self.energy_block = FeedForward(cfg, 1)
        if cfg.direct_forces:
            self.force_block = GraphAttention(cfg, 1, 0.0)
            self.register_buffer("force_scale", torch.tensor(float(statistics.force_rms), dtype=torch.float64))
        self.edge_grid = Grid(L, cfg.mmax, cfg.grid_resolution)
        self.node_grid = Grid(L, L, cfg.grid_resolution)
        self.head = AtomicEnergyHead(statistics, self.elements)
        self.frame = EdgeFrame(list(range(L + 1)), tilt=True)
        self.register_buffer("reduced", reduced_index(L, cfg.mmax), persistent=False)
        self.register_buffer("rescale", _rescale(L, cfg.mmax), persistent=False)

    @classmethod
    def from_config(cls, cfg: EquiformerV2Fairchem.Config, statistics: Statistics) -> EquiformerV2Fairchem:
        return cls(cfg, statistics)

    def config_dict(self) -> dict:
        return asdict(self.config)

    edges = ESCN.edges  # fairchem's edge order and strict max_neighbors cut, as eSCN's graph

    def features(self, data, pos, cell):
        """Node features after the final norm (n, (L+1)^2, C) and the edge context of this call."""
        numbers = data[K.NUMBERS].reshape(-1).long()
        self.element_table(numbers)
        sender, receiver, vec = self.edges(data, pos, cell)
        d = torch.sqrt(torch.sum(vec**2, dim=1))
        R = None
        if self.config.edge_roll == "random":
            noise = torch.rand(vec.shape, generator=self.generator, dtype=vec.dtype, device=vec.device)
            R = fairchem_edge_rotation(vec, noise)
        rot = EdgeRotation(self.frame, vec, self.reduced, R)
        n = pos.shape[0]
        ctx = EdgeContext(sender, receiver, numbers, self.distance_expansion(d), rot, self.rescale, n)
        C, L = self.config.sphere_channels, self.config.lmax
        x = torch.cat([self.sphere_embedding(numbers).to(pos.dtype)[:, None],
                       pos.new_zeros(n, (L + 1) ** 2 - 1, C)], dim=1)
        x = x + self.edge_degree_embedding(ctx)
        batch = batch_vector(data)
        for block in self.blocks:
            x = block(x, ctx, batch, self.edge_grid, self.node_grid)
        return self.norm(x), ctx

    def _energies(self, numbers, x):
        y = self.energy_block(x, self.node_grid)[:, 0, 0]
        return self.head(self.element_table(numbers), y / self.config.avg_num_nodes)

    def atomic_energies(self, data, pos, cell):
        return self._energies(data[K.NUMBERS].reshape(-1).long(), self.features(data, pos, cell)[0])

    def forward(self, data, compute_forces: bool = True, compute_stress: bool = False) -> dict[str, torch.Tensor]:
        if self.conservative:
            return super().forward(data, compute_forces, compute_stress)
        if compute_stress:
            raise ModelError("an equiformer_v2 with direct_forces: true has no stress (its forces are not "
                             "the gradient of its energy); use direct_forces: false, edge_roll: fixed")
        pos = data[K.POS]
        cell = data[K.CELL].reshape(-1, 3, 3).to(pos.dtype)
        x, ctx = self.features(data, pos, cell)
        energies = self._energies(data[K.NUMBERS].reshape(-1).long(), x)
        batch = batch_vector(data)
        n_graphs = int(batch.max()) + 1 if batch.numel() else 1
        out = {K.ENERGY: torch.zeros(n_graphs, dtype=energies.dtype, device=energies.device)
               .index_add_(0, batch, energies), K.ENERGIES: energies}
        if compute_forces:
            f = self.force_block(x, ctx, self.edge_grid)[:, 1:4, 0]
            out[K.FORCES] = self.force_scale.to(f.dtype) * f
        return out


__all__ = ["EquiformerV2Fairchem", "eqv2_grid"]
