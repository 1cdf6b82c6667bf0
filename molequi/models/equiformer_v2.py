"""molequi's EquiformerV2-style force field (``model.name: equiformer_v2_molequi``), after Liao, Wood, Das &
Smidt (ICLR 2024), on molequi's SO(2) convolutions. It is NOT EquiformerV2 as its authors define it: that
model is ``model.name: equiformer_v2`` (``molequi.models.equiformer_v2_fairchem``, equal to fairchem-core
1.10.0's code to 1e-14). This variant was named ``equiformer_v2`` before; a config or checkpoint that says
``equiformer_v2`` with this model's fields (``channels``, ``num_bessel``, ...:
``legacy_equiformer_v2_section``) still loads as this model, with the same outputs.

How it differs from fairchem's EquiformerV2 (``equiformer_v2``):

* attention logits: a Linear + LayerNorm + SiLU of the l = 0 outputs of the first SO(2) convolution, dotted
  with a vector per head; fairchem: extra m = 0 output channels of that convolution, LayerNorm and
  SmoothLeakyReLU(0.2);
* softmax weighted by the cutoff envelope (smooth when a neighbour crosses the cutoff; molequi's addition);
  fairchem: a plain softmax over neighbours, whose weights jump at the cutoff;
* radial features: Bessel basis times a polynomial cutoff envelope and one element embedding shared by all
  blocks; fairchem: 600 Gaussians without envelope and source / target atom embeddings per block;
* separable S2 activation gated by the message's own l = 0 channels; fairchem: separate gating channels;
  feed-forward Linear - S2 activation - Linear; fairchem's OC20 configs: the grid MLP;
* ``layer_norm_sh`` only (fairchem also ``rms_norm_sh``, its constructor default); no dropout / drop path;
* every neighbour within ``r_max`` (fairchem: the ``max_neighbors`` nearest), edge frames from one fixed tilt
  (fairchem: a random roll per edge and call);
* energy: an MLP of the l = 0 features per atom (fairchem: a feed-forward on the sphere divided by
  ``avg_num_nodes``); forces by default -dE/dx with stress (fairchem: its direct force head only);
* small defaults (2 layers, 32 channels) instead of fairchem's 31M-parameter OC20 configuration.

Node features x_i are real spherical-harmonic coefficients up to ``lmax`` with C channels, (n, (L+1)^2, C).
Edges j -> i carry u = r_ij / |r_ij| and the radial features rho_ij = [Bessel(r_ij), emb(z_i), emb(z_j)].

Embedding
    x_i^{l=0} = emb(z_i)
    x_i += (1/avg_nb) sum_j D(R_ij) [MLP_l(rho_ij) f_cut(r_ij)]_{m=0}     (edge-degree embedding)
Block (repeated ``num_layers`` times), all in pre-norm residual form
    attention:
        m_ij  = SO2Conv_1( D(R_ij)^T [norm(x_j) || norm(x_i)] ; rad(rho_ij) )  (edge frame, m <= m_max)
        a_ij^h = w_h . act(LayerNorm(Linear(m_ij^{l=0})))  (attention re-normalisation)
        alpha_ij^h = f_cut(r_ij) exp(a_ij^h) / sum_k f_cut(r_ik) exp(a_ik^h)  (envelope-weighted softmax)
        v_ij  = D(R_ij) SO2Conv_2( act_S2(m_ij) )  (heads x C_v channels)
        x_i  += Linear_l( sum_j alpha_ij^h v_ij^h )
    feed-forward:
        x_i  += Linear_l( act_S2( Linear_l( norm(x_i) ) ) )
Readout
    E_i = E0[z_i] + scale * MLP(norm(x_i)^{l=0}) + shift            (``molequi.models.base``)

* ``norm`` is the separable layer norm of EquiformerV2: LayerNorm over channels for l = 0; for l > 0 one RMS
  over all l > 0 coefficients and channels (each degree weighted equally), with a learned scale per (l, C).
* ``act_S2`` is the separable S2 activation: SiLU on l = 0; for l > 0 the coefficients are projected to an
  S2 grid (e3nn grid, ``molequi.nn.s2``), passed through SiLU pointwise and projected back. It is equivariant
  only up to the grid's aliasing error (as in EquiformerV2; ~1e-3 relative at the default resolution,
  falling fast with ``grid_resolution``: force errors 1.8e-5, 6.7e-9, 1.1e-11 at 12, 24, 48 points per
  angle for lmax 2, tested). ``activation="gate"`` instead uses a scalar-gated SiLU, which is exactly
  equivariant (used by the float64 equivariance tests).
* The envelope-weighted softmax keeps the energy smooth when a neighbour crosses the cutoff, which
  conservative forces (and MD) need; a plain softmax jumps there.
* Edge frames use ``molequi.so3.rotations.EdgeFrame``. Edge vectors are tilted once by a fixed generic
  rotation P0 (the model is equivariant, so this changes nothing but moves the frames' polar singularity
  to an irrational direction that lattice bonds do not hit); direct forces are rotated back by P0.

Forces. ``direct_forces=False`` (default): forces and stress are -dE/dpos and the strain derivative from
``molequi.response`` (conservative). ``direct_forces=True`` adds the OC20-style force head (an attention block
whose l = 1 output per atom is the force, in eV/Å, through ``statistics.force_rms``) and the energy is not
differentiated: cheaper, but the forces are NOT the gradient of any energy, so MD does not conserve energy.
Such a model has ``model.conservative == False`` and cannot return stress.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch_geometric.utils import scatter

from molequi import keys as K
from molequi.data.statistics import Statistics
from molequi.errors import ConfigError, ModelError
from molequi.graph.neighbors import edge_vectors
from molequi.models.base import AtomicEnergyHead, ElementTable, EnergyModel
from molequi.nn.radial import BesselBasis, PolynomialCutoff
from molequi.nn.s2 import SeparableS2Activation
from molequi.nn.so2 import SO2Linear
from molequi.response import batch_vector
from molequi.so3.rotations import EdgeFrame, tilt_matrix


def _degree_of_coefficient(lmax: int) -> torch.Tensor:
    return torch.tensor([l for l in range(lmax + 1) for _ in range(2 * l + 1)], dtype=torch.long)


class SO3Linear(nn.Module):
    """Per-degree channel mixing y^l = x^l W_l (+ b on l = 0): (n, (L+1)^2, C_in) -> (n, (L+1)^2, C_out)."""

    def __init__(self, lmax: int, c_in: int, c_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(lmax + 1, c_in, c_out) / math.sqrt(c_in))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.register_buffer("degree", _degree_of_coefficient(lmax), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.einsum("nkc,kcd->nkd", x, self.weight[self.degree].to(x.dtype))
        return torch.cat([y[:, :1] + self.bias.to(x.dtype), y[:, 1:]], dim=1)


class SeparableLayerNorm(nn.Module):
    """EquiformerV2's separable layer norm over (n, (L+1)^2, C).

    l = 0: (x - mean_c x) / sqrt(var_c + eps) * g_0 + b
    l > 0: x / sqrt(mean_{l>0} mean_{m,c} x^2 + eps) * g_l
    """

    def __init__(self, lmax: int, channels: int, eps: float = 1e-5):
        super().__init__()
        self.lmax, self.eps = lmax, eps
        self.weight = nn.Parameter(torch.ones(lmax + 1, channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        deg = _degree_of_coefficient(lmax)
        # balanced degree weights: each l > 0 contributes equally, i.e. 1 / ((2l+1) L) per coefficient
        w = torch.tensor([0.0] + [1.0 / ((2 * int(l) + 1) * max(lmax, 1)) for l in deg[1:]])
        self.register_buffer("degree", deg, persistent=False)
        self.register_buffer("balance", w, persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = x[:, :1]
        x0 = x0 - x0.mean(dim=-1, keepdim=True)
        x0 = x0 / torch.sqrt(x0.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        x0 = x0 * self.weight[0].to(x.dtype) + self.bias.to(x.dtype)
        if self.lmax == 0:
            return x0
        xl = x[:, 1:]
        ms = torch.einsum("nkc,k->n", xl.pow(2), self.balance[1:].to(x.dtype)) / x.shape[-1]  # [n]
        xl = xl / torch.sqrt(ms + self.eps)[:, None, None] * self.weight[self.degree[1:]].to(x.dtype)
        return torch.cat([x0, xl], dim=1)


class GateActivation(nn.Module):
    """Exactly equivariant alternative to the S2 activation: y_0 = silu(x_0), y_l = sigmoid(x_0 W_l) * x_l."""

    def __init__(self, lmax: int, channels: int):
        super().__init__()
        self.lmax = lmax
        self.gate = nn.Linear(channels, lmax * channels) if lmax > 0 else None
        self.register_buffer("degree", _degree_of_coefficient(lmax), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = x[:, :1]
        if self.lmax == 0:
            return nn.functional.silu(x0)
        g = torch.sigmoid(self.gate(x0[:, 0]).view(x.shape[0], self.lmax, -1))  # [n, L, C]
        return torch.cat([nn.functional.silu(x0), x[:, 1:] * g[:, self.degree[1:] - 1]], dim=1)


def _activation(kind: str, lmax: int, channels: int, res: int | None) -> nn.Module:
    return SeparableS2Activation(lmax, res) if kind == "s2" else GateActivation(lmax, channels)


class RadialMLP(nn.Module):
    """rho (E, d_in) -> (E, d_out): Linear, LayerNorm, SiLU, Linear (EquiformerV2's radial function)."""

    def __init__(self, d_in: int, hidden: int, d_out: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(d_in, hidden), nn.LayerNorm(hidden), nn.SiLU(), nn.Linear(hidden, d_out)
        )

    def forward(self, rho: torch.Tensor) -> torch.Tensor:
        return self.net(rho)


class EdgeDegreeEmbedding(nn.Module):
    """x_i += (1/avg_nb) sum_j D(R_ij) [MLP(rho_ij) f_cut]_{m=0}: initial l > 0 features from neighbours."""

    def __init__(self, lmax: int, channels: int, d_rho: int, hidden: int, avg_num_neighbors: float):
        super().__init__()
        self.lmax, self.channels = lmax, channels
        self.mlp = RadialMLP(d_rho, hidden, (lmax + 1) * channels)
        self.register_buffer("m0", torch.tensor([l * l + l for l in range(lmax + 1)]), persistent=False)
        self.inv_avg = 1.0 / avg_num_neighbors

    def forward(self, rho, envelope, frame_mod: EdgeFrame, frame, receiver, n_nodes):
        E = rho.shape[0]
        coeff = (self.mlp(rho) * envelope).view(E, self.lmax + 1, self.channels)
        y = rho.new_zeros(E, (self.lmax + 1) ** 2, self.channels)
        y[:, self.m0] = coeff
        y = frame_mod.from_edge(y, frame)
        return scatter(y, receiver, dim=0, dim_size=n_nodes, reduce="sum") * self.inv_avg


class EquivariantGraphAttention(nn.Module):
    """EquiformerV2's SO(2) equivariant graph attention (module docstring): (n, K, C) -> (n, K, C_out)."""

    @classmethod
    def from_config(cls, cfg, c_out: int, d_rho: int, avg_num_neighbors: float) -> EquivariantGraphAttention:
        """The attention of an ``EquiformerV2Molequi.Config`` with ``c_out`` output channels per coefficient.
        """
        return cls(cfg.lmax, cfg.mmax, cfg.channels, cfg.hidden_channels, cfg.num_heads, cfg.attn_channels,
                   cfg.value_channels, c_out, d_rho, cfg.radial_hidden, cfg.activation, cfg.grid_resolution,
                   avg_num_neighbors)

    def __init__(
        self,
        lmax: int,
        mmax: int,
        channels: int,
        hidden: int,
        heads: int,
        attn_channels: int,
        value_channels: int,
        c_out: int,
        d_rho: int,
        radial_hidden: int,
        activation: str,
        grid_resolution: int | None,
        avg_num_neighbors: float,
    ):
        super().__init__()
        self.heads, self.value_channels, self.hidden = heads, value_channels, hidden
        self.so2_1 = SO2Linear(lmax, 2 * channels, lmax, hidden, mmax, radial=True)
        self.radial = RadialMLP(d_rho, radial_hidden, self.so2_1.radial_dim)
        self.alpha_in = nn.Linear(hidden, heads * attn_channels)
        self.alpha_norm = nn.LayerNorm(attn_channels)  # attention re-normalisation
        self.alpha_dot = nn.Parameter(torch.randn(heads, attn_channels) / math.sqrt(attn_channels))
        self.act = _activation(activation, lmax, hidden, grid_resolution)
        self.so2_2 = SO2Linear(lmax, hidden, lmax, heads * value_channels, mmax, radial=False)
        self.proj = SO3Linear(lmax, heads * value_channels, c_out)
        self.inv_avg = 1.0 / avg_num_neighbors

    def forward(self, x, rho, envelope, frame_mod: EdgeFrame, frame, sender, receiver):
        n, E = x.shape[0], sender.shape[0]
        msg = torch.cat([x[sender], x[receiver]], dim=-1)  # [E, K, 2C]
        msg = frame_mod.to_edge(msg, frame)
        m = self.so2_1(msg, self.radial(rho))  # [E, K, hidden]
        a = self.alpha_in(m[:, 0]).view(E, self.heads, -1)
        a = nn.functional.silu(self.alpha_norm(a))
        logits = torch.einsum("ehc,hc->eh", a, self.alpha_dot.to(x.dtype))  # [E, H]
        # envelope-weighted softmax over the senders of each receiver (smooth at the cutoff)
        shift = scatter(logits.detach(), receiver, dim=0, dim_size=n, reduce="max")[receiver]
        w = envelope * torch.exp(logits - shift)  # [E, H]
        denom = scatter(w, receiver, dim=0, dim_size=n, reduce="sum")[receiver]
        alpha = w / (denom + 1e-12)
        v = self.so2_2(self.act(m))  # [E, K, H * Cv]
        v = frame_mod.from_edge(v, frame)
        v = (v.view(E, v.shape[1], self.heads, self.value_channels) * alpha[:, None, :, None]).flatten(2)
        out = scatter(v, receiver, dim=0, dim_size=n, reduce="sum")  # [n, K, H * Cv]
        return self.proj(out)


class FeedForward(nn.Module):
    def __init__(self, lmax: int, channels: int, hidden: int, activation: str, grid_resolution: int | None):
        super().__init__()
        self.lin1 = SO3Linear(lmax, channels, hidden)
        self.act = _activation(activation, lmax, hidden, grid_resolution)
        self.lin2 = SO3Linear(lmax, hidden, channels)

    def forward(self, x):
        return self.lin2(self.act(self.lin1(x)))


class EquiformerV2Block(nn.Module):
    def __init__(self, cfg: EquiformerV2Molequi.Config, d_rho: int, avg: float):
        super().__init__()
        L, C = cfg.lmax, cfg.channels
        self.norm1 = SeparableLayerNorm(L, C)
        self.attn = EquivariantGraphAttention.from_config(cfg, C, d_rho, avg)
        self.norm2 = SeparableLayerNorm(L, C)
        self.ffn = FeedForward(L, C, cfg.ffn_channels, cfg.activation, cfg.grid_resolution)

    def forward(self, x, rho, envelope, frame_mod, frame, sender, receiver):
        x = x + self.attn(self.norm1(x), rho, envelope, frame_mod, frame, sender, receiver)
        return x + self.ffn(self.norm2(x))


class EquiformerV2Molequi(EnergyModel):
    """molequi's EquiformerV2-style force field (``equiformer_v2_molequi``; module docstring: how it differs
    from fairchem's EquiformerV2) with molequi's model interface (see ``molequi.models``)."""

    @dataclass
    class Config:
        r_max: float = 5.0
        """Cutoff radius, Å."""
        num_bessel: int = 8
        """Bessel radial basis size."""
        num_polynomial_cutoff: int = 5
        """Power p of the polynomial cutoff envelope."""
        lmax: int = 4
        """Highest degree of the node features (fairchem's EquiformerV2 OC20 configs: 4 or 6)."""
        mmax: int = 2
        """Highest order m kept by the SO(2) convolutions (fairchem's EquiformerV2 OC20 configs: 2)."""
        channels: int = 32
        """Channels per coefficient of the node features."""
        num_layers: int = 2
        """Number of attention + feed-forward blocks."""
        num_heads: int = 4
        hidden_channels: int = 32
        """Channels of the message after the first SO(2) convolution."""
        attn_channels: int = 16
        """Channels per head of the attention MLP."""
        value_channels: int = 8
        """Channels per head of the attention values."""
        ffn_channels: int = 32
        radial_hidden: int = 32
        element_channels: int = 16
        """Size of the element embeddings that enter the radial functions."""
        readout_hidden: int = 32
        activation: str = "s2"
        """'s2' (EquiformerV2's separable S2 activation, equivariant up to grid aliasing) or 'gate'."""
        grid_resolution: int | None = None
        """S2 grid points per angle for 's2' (default 2 (lmax + 1))."""
        direct_forces: bool = False
        """OC20-style direct force head (NOT energy conserving; model.conservative becomes False)."""
        avg_num_neighbors: float | None = None
        """Normaliser of neighbour sums; None takes it from the statistics."""

        def validate(self) -> None:
            if self.r_max <= 0:
                raise ConfigError(f"equiformer_v2_molequi r_max must be positive, got {self.r_max}")
            if not 0 <= self.lmax <= 8:
                raise ConfigError(f"equiformer_v2_molequi lmax must be in 0..8, got {self.lmax}")
            if not 0 <= self.mmax <= self.lmax:
                raise ConfigError(f"equiformer_v2_molequi mmax must be in 0..lmax={self.lmax}, "
                                  f"got {self.mmax}")
            if self.activation not in ("s2", "gate"):
                raise ConfigError(f"equiformer_v2_molequi activation must be 's2' or 'gate', "
                                  f"got '{self.activation}'")
            if (
                min(
                    self.channels,
                    self.num_layers,
                    self.num_heads,
                    self.hidden_channels,
                    self.attn_channels,
                    self.value_channels,
                    self.ffn_channels,
                )
                < 1
            ):
                raise ConfigError("equiformer_v2_molequi sizes (channels, layers, heads, ...) must be >= 1")
            if self.direct_forces and self.lmax < 1:
                raise ConfigError("equiformer_v2_molequi direct_forces needs lmax >= 1 "
                                  "(forces are the l = 1 output)")

    def __init__(self, cfg: EquiformerV2Molequi.Config, statistics: Statistics):
        super().__init__()
        cfg.validate()
        self.config, self.statistics = cfg, statistics
        self.elements = [int(z) for z in statistics.elements]
        self.r_max = float(cfg.r_max)
        self.conservative = not cfg.direct_forces
        avg = float(
            cfg.avg_num_neighbors if cfg.avg_num_neighbors is not None else statistics.avg_num_neighbors
        )
        L, C = cfg.lmax, cfg.channels
        self.element_table = ElementTable(self.elements)
        n_el = len(self.elements)
        self.embedding = nn.Embedding(n_el, C)
        self.edge_embedding = nn.Embedding(n_el, 2 * cfg.element_channels)
        self.bessel = BesselBasis(cfg.r_max, cfg.num_bessel)
        self.cutoff = PolynomialCutoff(cfg.r_max, cfg.num_polynomial_cutoff)
        d_rho = cfg.num_bessel + 2 * cfg.element_channels
        self.frame = EdgeFrame(list(range(L + 1)), tilt=False)  # inputs are tilted once instead
        self.degree_embedding = EdgeDegreeEmbedding(L, C, d_rho, cfg.radial_hidden, avg)
        self.blocks = nn.ModuleList([EquiformerV2Block(cfg, d_rho, avg) for _ in range(cfg.num_layers)])
        self.norm = SeparableLayerNorm(L, C)
        self.readout = nn.Sequential(
            nn.Linear(C, cfg.readout_hidden), nn.SiLU(), nn.Linear(cfg.readout_hidden, 1)
        )
        self.head = AtomicEnergyHead(statistics, self.elements)
        if cfg.direct_forces:
            self.force_block = EquivariantGraphAttention.from_config(cfg, 1, d_rho, avg)
            self.register_buffer("force_scale", torch.tensor(float(statistics.force_rms)))
        self._p0 = tilt_matrix()

    @classmethod
    def from_config(cls, cfg: EquiformerV2Molequi.Config, statistics: Statistics) -> EquiformerV2Molequi:
        return cls(cfg, statistics)

    def config_dict(self) -> dict:
        return asdict(self.config)

    def _features(self, data, pos: torch.Tensor, cell: torch.Tensor):
        """Run the trunk: (element (n,), features (n, K, C), edge context), in the tilted frame."""
        element = self.element_table(data[K.NUMBERS])
        ei = data[K.EDGE_INDEX]
        sender, receiver = ei[0], ei[1]
        vec = edge_vectors(pos, ei, data[K.UNIT_SHIFTS], cell, batch_vector(data))  # [E, 3] Å
        vec = vec @ self._p0.to(
            device=vec.device, dtype=vec.dtype
        )  # tilt: rows P0^T r (see module docstring)
        r = torch.linalg.vector_norm(vec, dim=-1)  # [E]
        envelope = self.cutoff(r)  # [E, 1]
        emb = self.edge_embedding(element).to(pos.dtype)
        half = emb.shape[1] // 2
        rho = torch.cat([self.bessel(r), emb[sender, :half], emb[receiver, half:]], dim=-1)  # [E, d_rho]
        frame = self.frame.angles(vec)
        n = pos.shape[0]
        L, C = self.config.lmax, self.config.channels
        x = pos.new_zeros(n, (L + 1) ** 2, C)
        x = torch.cat([self.embedding(element).to(pos.dtype)[:, None], x[:, 1:]], dim=1)
        x = x + self.degree_embedding(rho, envelope, self.frame, frame, receiver, n)
        for block in self.blocks:
            x = block(x, rho, envelope, self.frame, frame, sender, receiver)
        return element, x, (rho, envelope, frame, sender, receiver)

    def atomic_energies(self, data, pos: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """Per-atom energies (n,) in eV from positions (n, 3) Å and cells (B, 3, 3) Å."""
        element, x, _ = self._features(data, pos, cell)
        y = self.readout(self.norm(x)[:, 0]).squeeze(-1)  # [n]
        return self.head(element, y)

    def forward(
        self, data, compute_forces: bool = True, compute_stress: bool = False
    ) -> dict[str, torch.Tensor]:
        if self.conservative:
            return super().forward(data, compute_forces, compute_stress)
        if compute_stress:
            raise ModelError(
                "an equiformer_v2_molequi with direct_forces=True has no stress (its forces are not the "
                "gradient of its energy); use direct_forces=False for stress"
            )
        pos = data[K.POS]
        cell = data[K.CELL].reshape(-1, 3, 3).to(pos.dtype)
        element, x, (rho, envelope, frame, sender, receiver) = self._features(data, pos, cell)
        xn = self.norm(x)
        energies = self.head(element, self.readout(xn[:, 0]).squeeze(-1))
        batch = batch_vector(data)
        n_graphs = int(batch.max()) + 1 if batch.numel() else 1
        out = {
            K.ENERGY: scatter(energies, batch, dim=0, dim_size=n_graphs, reduce="sum"),
            K.ENERGIES: energies,
        }
        if compute_forces:
            f = self.force_block(xn, rho, envelope, self.frame, frame, sender, receiver)[
                :, 1:4, 0
            ]  # [n, 3] tilted
            # e3nn's l = 1 coefficients are (x, y, z); undo the tilt: F = P0 F'
            out[K.FORCES] = self.force_scale.to(f.dtype) * f @ self._p0.to(device=f.device, dtype=f.dtype).T
        return out


#: fields of this variant that fairchem's EquiformerV2 has not: a model section ``name: equiformer_v2`` with
#: any of them was written when that name meant this variant (its checkpoints store every field)
LEGACY_FIELDS = frozenset({"num_bessel", "num_polynomial_cutoff", "channels", "hidden_channels",
                           "attn_channels", "value_channels", "ffn_channels", "radial_hidden",
                           "element_channels", "readout_hidden", "activation", "avg_num_neighbors"})


def legacy_equiformer_v2_section(raw: dict) -> dict:
    """A model section (YAML or stored in a checkpoint) under today's names: ``equiformer_v2`` with a field
    of ``LEGACY_FIELDS`` is this variant (named so before ``equiformer_v2`` meant fairchem's model) and is
    read as ``equiformer_v2_molequi``; ``equiformer_v2_fairchem`` (fairchem's model's former name, still
    accepted) is read as ``equiformer_v2``. Any other section is returned as is."""
    name = str(raw.get("name", "")).lower()
    if name == "equiformer_v2_fairchem":
        return {**raw, "name": "equiformer_v2"}
    if name == "equiformer_v2" and LEGACY_FIELDS & set(raw):
        return {**raw, "name": "equiformer_v2_molequi"}
    return raw


__all__ = ["EquiformerV2Molequi", "legacy_equiformer_v2_section", "LEGACY_FIELDS", "SO3Linear",
           "SeparableLayerNorm", "EquivariantGraphAttention", "GateActivation"]
