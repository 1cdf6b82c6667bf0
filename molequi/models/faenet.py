"""FAENet (Duval et al., "FAENet: Frame Averaging Equivariant GNN for Materials Modeling", ICML 2023) as its
authors define it in their package ``faenet`` 0.1.3 (``faenet/model.py``, ``frame_averaging.py``,
``fa_forward.py``), with molequi's model interface.

Architecture (the package's module and parameter names, so its state dict maps one to one)::

    embedding      h_i = act(lin_2(act(lin([emb(z_i), tag_emb(t_i), phys(z_i), period_emb, group_emb]))))
                   e_ij = act(lin_e2(act([lin_e1(r_ij), lin_e12(Gauss(|r_ij|))])))   r_ij = x_j - x_i + shift
    interaction k  (mp_type updownscale_base) e' = act(lin_geom([e_ij, h_j, h_i]));
                   m_i = sum_j act(lin_down(h_j)) * e'_ij;  h_i <- h_i + act(lin_up(act(GraphNorm(m))))
    output         y_i = lin2(act(lin1(h_i)))  (x alpha_i for the weighted-average energy heads)
    energy         skip_co 'concat': E = Linear(K+1 -> 1)([sum_i y_i^(0), ..., sum_i y_i^(K)])
    forces         'direct': F_i = decoder(h_i) (the package's ForceDecoder, 'mlp' by default)

Frame averaging (the package's ``frame_averaging_3D`` / ``_2D``): per structure, C = sum_i x_i x_i^T of the
centred positions (2D: the (x, y) columns only, for slabs), eigenvectors sorted by *descending* eigenvalue
(molequi's ``FrameAveraging`` sorts ascending and weights by Z, so its frames differ; this model follows the
package), frames R_s = U diag(s) for s in itertools.product([1, -1], repeat=d) (in that order); the model sees
x R_s and cell R_s, its direct forces are rotated back F R_s^T, energies and forces are averaged over the
frames used: ``fa_method`` 'all' (full FA: 8 frames in 3D, 4 in 2D), 'stochastic' (one random frame per
structure and call), 'det' (the signs making each axis' component sum >= 0), and ``se3-*`` (only det R = +1).

Where molequi differs from the package (each is a strict generalisation that gives the package's numbers on
one structure in eval mode, which is what ``scripts/parity/check.py faenet`` checks):

- GraphNorm is per structure (the package calls it without ``batch``, so it normalises over every atom of a
  batch and a structure's energy depends on what it is batched with);
- all frames of a batch are evaluated in one call (the package loops over frames); the force decoder's
  BatchNorm in training then takes its statistics over all frames;
- all neighbours within ``r_max`` are used (the package reads the graph it is given; its ``max_num_neighbors``
  only applies to its non-periodic ``base_preprocess``, keeping an arbitrary subset);
- energies are per atom (the skip connection's bias is split equally over a structure's atoms) and pass
  through molequi's ``AtomicEnergyHead`` (E0 + scale * y + shift), direct forces are multiplied by the
  training set's force RMS; with E0 = 0, scale = 1, shift = 0, force_rms = 1 they are the package's outputs;
- ``fa_method_eval`` (default 'all'): the frames used in eval mode (the package uses ``fa_method`` always), so
  that predictions and MD are deterministic.

Physics-aware atom embeddings (``phys_embeds``, period / group embeddings) read the package's element table,
computed by the package from mendeleev and shipped in ``molequi/resources/faenet/elements.json`` (see its
ORIGIN.md), so molequi does not depend on mendeleev / pandas.

Defaults are the package's constructor defaults (``FAENet.__init__``: cutoff 6, hidden 128, 4 interactions,
updownscale_base, GraphNorm, second-layer MLPs, concat skip connection, 'mlp' force decoder of width 128),
with ``forces: direct`` (FAENet's S2EF setting, the package's ``regress_forces='direct'``) and 3D frame
averaging, stochastic in training.

Not conservative: direct forces are not -dE/dx (``molequi md`` refuses the model unless asked);
``forces: gradient`` with ``frame_averaging: none`` gives a conservative model.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import asdict, dataclass, replace

import torch
from torch import nn
from torch_geometric.nn.norm import GraphNorm
from torch_geometric.utils import scatter

from molequi import keys as K
from molequi.data.statistics import Statistics
from molequi.errors import ConfigError, ModelError
from molequi.graph.neighbors import edge_vectors
from molequi.models.base import AtomicEnergyHead, ElementTable, EnergyModel
from molequi.models.frame_averaging import FrameAveraging, SafeEigh
from molequi.response import batch_vector

MP_TYPES = ("base", "simple", "updownscale", "updownscale_base", "updown_local_env")
SKIP_CO = ("", "add", "concat", "concat_atom")
ENERGY_HEADS = ("", "weighted-av-initial-embeds", "weighted-av-final-embeds")
DECODERS = ("simple", "mlp", "res", "res_updown")
DECODER_NORMS = ("batch1d", "layer", "")
FA_METHODS = ("all", "stochastic", "det", "se3-all", "se3-stochastic", "se3-det")
NUM_Z = 85  # the package's atom embedding has 85 rows (atomic numbers 0..84)


def _activation(name: str):
    if name == "swish":
        return nn.functional.silu
    fn = getattr(nn.functional, name, None)
    if not callable(fn):
        raise ConfigError(f"FAENet act '{name}' is neither 'swish' nor a function of torch.nn.functional")
    return fn


def element_table() -> dict:
    """The package's element table: ``properties`` (86, P) normalised mendeleev properties (row 0 = padding),
    ``period`` and ``group`` (101,) and the embedding sizes (molequi/resources/faenet/elements.json)."""
    from importlib.resources import files

    return json.loads(files("molequi.resources").joinpath("faenet/elements.json").read_text())


class PhysEmbedding(nn.Module):
    """The package's fixed (or, with ``props_grad``, learnable) physics-aware atom properties and period /
    group indices as buffers / a parameter (values from ``element_table()``)."""

    def __init__(self, props: bool, props_grad: bool, pg: bool):
        super().__init__()
        table = element_table()
        self.n_properties = len(table["properties"][0]) if props else 0
        self.period_size = table["period_size"] if pg else 0
        self.group_size = table["group_size"] if pg else 0
        self.register_buffer("group", torch.tensor(table["group"], dtype=torch.long) if pg else None)
        self.register_buffer("period", torch.tensor(table["period"], dtype=torch.long) if pg else None)
        if props:
            properties = torch.tensor(table["properties"], dtype=torch.get_default_dtype())
            if props_grad:
                self.properties = nn.Parameter(properties)
            else:
                self.register_buffer("properties", properties)


class EmbeddingBlock(nn.Module):
    def __init__(self, cfg: FAENet.Config, act):
        super().__init__()
        self.act, self.cfg = act, cfg
        self.use_tag = cfg.tag_hidden_channels > 0
        self.use_pg = cfg.pg_hidden_channels > 0
        self.use_mlp_phys = cfg.phys_hidden_channels > 0 and cfg.phys_embeds
        self.phys_emb = PhysEmbedding(cfg.phys_embeds, cfg.phys_hidden_channels > 0, self.use_pg)
        phys = cfg.phys_hidden_channels if self.use_mlp_phys else self.phys_emb.n_properties
        if self.use_mlp_phys:
            self.phys_lin = nn.Linear(self.phys_emb.n_properties, cfg.phys_hidden_channels)
        if self.use_pg:
            self.period_embedding = nn.Embedding(self.phys_emb.period_size, cfg.pg_hidden_channels)
            self.group_embedding = nn.Embedding(self.phys_emb.group_size, cfg.pg_hidden_channels)
        if self.use_tag:
            self.tag_embedding = nn.Embedding(3, cfg.tag_hidden_channels)
        H, Fl = cfg.hidden_channels, cfg.num_filters
        width = H - cfg.tag_hidden_channels - phys - 2 * cfg.pg_hidden_channels
        if width < 1:
            raise ConfigError(
                f"FAENet hidden_channels {H} must exceed tag ({cfg.tag_hidden_channels}) + physics "
                f"({phys}) + 2 x period/group ({cfg.pg_hidden_channels}) embedding widths"
            )
        self.emb = nn.Embedding(NUM_Z, width)
        self.lin = nn.Linear(H, H)
        if cfg.second_layer_MLP:
            self.lin_2 = nn.Linear(H, H)
        self.lin_e1 = nn.Linear(3, Fl // 2)
        self.lin_e12 = nn.Linear(cfg.num_gaussians, Fl - Fl // 2)
        if cfg.second_layer_MLP:
            self.lin_e2 = nn.Linear(Fl, Fl)
        for lin in (
            self.lin,
            self.lin_e1,
            getattr(self, "lin_2", None),
            getattr(self, "lin_e2", None),
            getattr(self, "phys_lin", None),
        ):
            if lin is not None:
                nn.init.xavier_uniform_(lin.weight)
                nn.init.zeros_(lin.bias)

    def forward(self, z, rel_pos, edge_attr, tag):
        e = self.act(torch.cat((self.lin_e1(rel_pos), self.lin_e12(edge_attr)), dim=1))
        if self.cfg.second_layer_MLP:
            e = self.act(self.lin_e2(e))
        dtype = rel_pos.dtype
        parts = [self.emb(z).to(dtype)]
        if self.use_tag:
            parts.append(self.tag_embedding(tag).to(dtype))
        if self.phys_emb.n_properties > 0:
            p = self.phys_emb.properties[z].to(dtype)
            parts.append(self.phys_lin(p) if self.use_mlp_phys else p)
        if self.use_pg:
            parts += [
                self.period_embedding(self.phys_emb.period[z]).to(dtype),
                self.group_embedding(self.phys_emb.group[z]).to(dtype),
            ]
        h = self.act(self.lin(torch.cat(parts, dim=1)))
        if self.cfg.second_layer_MLP:
            h = self.act(self.lin_2(h))
        return h, e


class InteractionBlock(nn.Module):
    def __init__(self, cfg: FAENet.Config, act):
        super().__init__()
        self.act, self.mp_type, self.complex_mp = act, cfg.mp_type, cfg.complex_mp
        H, Fl = cfg.hidden_channels, cfg.num_filters
        self.graph_norm = GraphNorm(H if "updown" not in cfg.mp_type else Fl) if cfg.graph_norm else None
        if cfg.mp_type == "simple":
            self.lin_h = nn.Linear(H, H)
        elif cfg.mp_type == "updownscale":
            self.lin_geom, self.lin_down, self.lin_up = nn.Linear(Fl, Fl), nn.Linear(H, Fl), nn.Linear(Fl, H)
        elif cfg.mp_type == "updownscale_base":
            self.lin_geom = nn.Linear(Fl + 2 * H, Fl)
            self.lin_down, self.lin_up = nn.Linear(H, Fl), nn.Linear(Fl, H)
        elif cfg.mp_type == "updown_local_env":
            self.lin_down, self.lin_geom, self.lin_up = (
                nn.Linear(H, Fl),
                nn.Linear(Fl, Fl),
                nn.Linear(2 * Fl, H),
            )
        else:  # base
            self.lin_geom, self.lin_h = nn.Linear(Fl + 2 * H, H), nn.Linear(H, H)
        if cfg.complex_mp:
            self.other_mlp = nn.Linear(H, H)
        for name in ("lin_geom", "lin_h", "lin_down", "lin_up", "other_mlp"):
            lin = getattr(self, name, None)
            if lin is not None:
                nn.init.xavier_uniform_(lin.weight)
                nn.init.zeros_(lin.bias)

    def _norm(self, h, batch, n_graphs):
        return self.act(self.graph_norm(h, batch, n_graphs)) if self.graph_norm is not None else h

    def forward(self, h, e, sender, receiver, batch, n_graphs):
        n = h.shape[0]

        def propagate(x, w):  # sum_j x_j * w_ij at receiver i (PyG source_to_target, aggr add)
            return scatter(x[sender] * w, receiver, dim=0, dim_size=n, reduce="sum")

        if self.mp_type in ("base", "updownscale_base"):
            e = torch.cat([e, h[sender], h[receiver]], dim=1)
        if self.mp_type in ("updownscale", "base", "updownscale_base"):
            e = self.act(self.lin_geom(e))
        if self.mp_type in ("updownscale", "updownscale_base"):
            h = self.act(self.lin_down(h))
            h = self._norm(propagate(h, e), batch, n_graphs)
            h = self.act(self.lin_up(h))
        elif self.mp_type == "updown_local_env":
            h = self.act(self.lin_down(h))
            chi = scatter(e, receiver, dim=0, dim_size=n, reduce="sum")
            h = self._norm(propagate(h, self.lin_geom(e)), batch, n_graphs)
            h = self.lin_up(torch.cat((h, chi), dim=1))
        else:  # base, simple
            h = self.act(self.lin_h(self._norm(propagate(h, e), batch, n_graphs)))
        if self.complex_mp:
            h = self.act(self.other_mlp(h))
        return h


class OutputBlock(nn.Module):
    """Per-atom readout y_i (n, 1); the package sums it per structure."""

    def __init__(self, energy_head: str, hidden: int, act):
        super().__init__()
        self.energy_head, self.act = energy_head, act
        self.lin1, self.lin2 = nn.Linear(hidden, hidden // 2), nn.Linear(hidden // 2, 1)
        if energy_head == "weighted-av-final-embeds":
            self.w_lin = nn.Linear(hidden, 1)

    def forward(self, h, alpha):
        if self.energy_head == "weighted-av-final-embeds":
            alpha = self.w_lin(h)
        y = self.lin2(self.act(self.lin1(h)))
        return y * alpha if self.energy_head else y


class _Act(nn.Module):
    def __init__(self, act):
        super().__init__()
        self.act = act

    def forward(self, x):
        return self.act(x)


class ForceDecoder(nn.Module):
    """The package's ForceDecoder (per-atom force vector from the final atom features)."""

    def __init__(self, kind: str, hidden_in: int, hidden: int, norm: str, act):
        super().__init__()
        self.kind = kind

        def nrm(n):
            return (
                nn.BatchNorm1d(n)
                if norm == "batch1d"
                else nn.LayerNorm(n)
                if norm == "layer"
                else nn.Identity()
            )

        def block(a, b):
            return nn.Sequential(nn.Linear(a, b), nrm(b), _Act(act))

        if kind == "simple":
            self.model = nn.Sequential(nn.Linear(hidden_in, hidden), _Act(act), nn.Linear(hidden, 3))
        elif kind == "mlp":
            self.model = nn.Sequential(
                nn.Linear(hidden_in, hidden), nrm(hidden), _Act(act), nn.Linear(hidden, 3)
            )
        elif kind == "res":
            self.mlp_1, self.mlp_2 = block(hidden_in, hidden_in), block(hidden_in, hidden_in)
            self.mlp_3 = nn.Sequential(*block(hidden_in, hidden), nn.Linear(hidden, 3))
        else:  # res_updown
            self.mlp_1, self.mlp_2, self.mlp_3 = (
                block(hidden_in, hidden),
                block(hidden, hidden),
                block(hidden, hidden_in),
            )
            self.mlp_4 = nn.Sequential(*block(hidden_in, hidden), nn.Linear(hidden, 3))

    def forward(self, h):
        if self.kind == "res":
            return self.mlp_3(self.mlp_2(self.mlp_1(h)) + h)
        if self.kind == "res_updown":
            return self.mlp_4(self.mlp_3(self.mlp_2(self.mlp_1(h))) + h)
        return self.model(h)


def pca_frames(pos: torch.Tensor, batch: torch.Tensor, n_graphs: int, mode: str, tol: float = 1e-4):
    """The package's frames: centres (B, 3) and frames (B, F, 3, 3) (columns = axes, F = 8 in '3D', 4 in
    '2D' with z kept), eigenvectors of sum_i x_i x_i^T by descending eigenvalue times the sign patterns
    ``itertools.product([1, -1], repeat=d)`` in that order; differentiable (``SafeEigh``)."""
    d = 3 if mode == "3D" else 2
    centre = scatter(pos, batch, dim=0, dim_size=n_graphs, reduce="mean")
    x = (pos - centre[batch])[:, :d]
    cov = scatter(x[:, :, None] * x[:, None, :], batch, dim=0, dim_size=n_graphs, reduce="sum")
    _, U = SafeEigh.apply(cov, tol)
    U = U.flip(-1)  # descending eigenvalues (the package's argsort(descending=True))
    signs = torch.tensor(list(itertools.product([1.0, -1.0], repeat=d)), dtype=U.dtype, device=U.device)
    frames = U[:, None] * signs[None, :, None, :]  # [B, F, d, d]
    if d == 2:
        full = torch.zeros(*frames.shape[:2], 3, 3, dtype=U.dtype, device=U.device)
        full[..., :2, :2] = frames
        full[..., 2, 2] = 1.0
        frames = full
    return centre, frames


class FAENet(EnergyModel):
    """FAENet (the authors' ``faenet`` package) with frame averaging; see the module docstring."""

    @dataclass
    class Config:
        r_max: float = 6.0
        """Cutoff radius, Å (the package's ``cutoff``); also the range of the Gaussian distance basis."""
        num_gaussians: int = 50
        """Gaussians of the distance expansion on [0, r_max]."""
        num_filters: int = 128
        """Width of the edge features (``mp_type: simple`` sets it to ``hidden_channels``, as the package
        does)."""
        hidden_channels: int = 128
        """Width of the atom features."""
        tag_hidden_channels: int = 32
        """Width of the OC20 tag embedding (0 sub-surface, 1 surface, 2 adsorbate; 0 when data has no
        tags)."""
        pg_hidden_channels: int = 32
        """Width of each of the period and group embeddings (0: none)."""
        phys_hidden_channels: int = 0
        """>0: learnable linear map of the physics properties to this width; 0: the fixed properties as is."""
        phys_embeds: bool = True
        """Concatenate the physics-aware element properties (the package's mendeleev table)."""
        num_interactions: int = 4
        """Interaction (message-passing) blocks."""
        mp_type: str = "updownscale_base"
        """'base', 'simple', 'updownscale', 'updownscale_base' or 'updown_local_env' (written from the
        package's source but not checked against it: its own code fails under torch_geometric 2.8.1;
        the others are)."""
        graph_norm: bool = True
        """GraphNorm after each aggregation (per structure)."""
        complex_mp: bool = False
        """A second linear layer at the end of each interaction."""
        second_layer_MLP: bool = True
        """Second linear layer in the atom and edge embeddings."""
        skip_co: str = "concat"
        """Energy skip connections: 'concat' (Linear over the K+1 energies), 'add', 'concat_atom' or ''."""
        energy_head: str = ""
        """'' (sum), 'weighted-av-initial-embeds' or 'weighted-av-final-embeds'."""
        act: str = "swish"
        """'swish' (SiLU) or the name of a torch.nn.functional activation."""
        forces: str = "direct"
        """'direct' (the force decoder; not conservative) or 'gradient' (-dE/dx)."""
        force_decoder_type: str = "mlp"
        """'simple', 'mlp', 'res' or 'res_updown' (the package's ForceDecoder)."""
        force_decoder_hidden: int = 128
        """Hidden width of the force decoder."""
        force_decoder_norm: str = "batch1d"
        """Norm in the force decoder: 'batch1d', 'layer' or ''."""
        frame_averaging: str = "3D"
        """'3D' (PCA frames of all coordinates), '2D' (slabs: (x, y) frames, z kept) or 'none'."""
        fa_method: str = "stochastic"
        """Frames in training: 'stochastic', 'all', 'det', 'se3-stochastic', 'se3-all' or 'se3-det'."""
        fa_method_eval: str = "all"
        """Frames in eval mode (predictions, MD); the package uses ``fa_method`` for both."""

        def validate(self) -> None:
            if self.r_max <= 0:
                raise ConfigError(f"FAENet r_max must be positive, got {self.r_max}")
            for name, value, valid in (
                ("mp_type", self.mp_type, MP_TYPES),
                ("skip_co", self.skip_co, SKIP_CO),
                ("energy_head", self.energy_head, ENERGY_HEADS),
                ("forces", self.forces, ("direct", "gradient")),
                ("force_decoder_type", self.force_decoder_type, DECODERS),
                ("force_decoder_norm", self.force_decoder_norm, DECODER_NORMS),
                ("frame_averaging", self.frame_averaging, ("3D", "2D", "none")),
                ("fa_method", self.fa_method, FA_METHODS),
                ("fa_method_eval", self.fa_method_eval, FA_METHODS),
            ):
                if value not in valid:
                    raise ConfigError(
                        f"FAENet {name} must be one of {', '.join(repr(v) for v in valid)}, got {value!r}"
                    )
            if (
                min(
                    self.num_gaussians,
                    self.num_filters,
                    self.hidden_channels,
                    self.num_interactions,
                    self.force_decoder_hidden,
                )
                < 1
                or min(self.tag_hidden_channels, self.pg_hidden_channels, self.phys_hidden_channels) < 0
            ):
                raise ConfigError(
                    "FAENet sizes (gaussians, filters, hidden channels, interactions, force decoder) "
                    "must be >= 1 and the tag / period-group / physics widths >= 0"
                )
            if self.num_gaussians < 2:
                raise ConfigError("FAENet needs num_gaussians >= 2")
            _activation(self.act)

    def __init__(self, cfg: FAENet.Config, statistics: Statistics):
        super().__init__()
        cfg.validate()
        if cfg.mp_type == "simple":  # messages h_j * e_ij: edges as wide as atoms (as the package sets it)
            cfg = replace(cfg, num_filters=cfg.hidden_channels)
        self.config, self.statistics = cfg, statistics
        self.elements = [int(z) for z in statistics.elements]
        if max(self.elements) >= NUM_Z:
            raise ConfigError(
                f"FAENet embeds atomic numbers below {NUM_Z}; the elements include {max(self.elements)}"
            )
        self.r_max = float(cfg.r_max)
        self.conservative = cfg.forces == "gradient" and cfg.frame_averaging == "none"
        # draws of the stochastic frames (None: torch's default generator)
        self.generator: torch.Generator | None = None
        act = _activation(cfg.act)
        self.act = act
        self.element_table = ElementTable(self.elements)
        self.distance_expansion = nn.Module()
        self.distance_expansion.register_buffer("offset", torch.linspace(0.0, cfg.r_max, cfg.num_gaussians))
        self.embed_block = EmbeddingBlock(cfg, act)
        if self.embed_block.use_pg:
            bad = [
                z
                for z in self.elements
                if int(self.embed_block.phys_emb.group[z]) >= self.embed_block.phys_emb.group_size
                or int(self.embed_block.phys_emb.period[z]) >= self.embed_block.phys_emb.period_size
            ]
            if bad:
                raise ConfigError(
                    f"FAENet period / group embeddings have no row for atomic numbers {bad} "
                    "(lanthanides / actinides); set pg_hidden_channels: 0"
                )
        self.interaction_blocks = nn.ModuleList(
            [InteractionBlock(cfg, act) for _ in range(cfg.num_interactions)]
        )
        self.output_block = OutputBlock(cfg.energy_head, cfg.hidden_channels, act)
        if cfg.energy_head == "weighted-av-initial-embeds":
            self.w_lin = nn.Linear(cfg.hidden_channels, 1)
        if cfg.forces == "direct":
            self.decoder = ForceDecoder(
                cfg.force_decoder_type,
                cfg.hidden_channels,
                cfg.force_decoder_hidden,
                cfg.force_decoder_norm,
                act,
            )
            self.register_buffer(
                "force_scale", torch.tensor(float(statistics.force_rms), dtype=torch.float64)
            )
        if cfg.skip_co == "concat":
            self.mlp_skip_co = nn.Linear(cfg.num_interactions + 1, 1)
        elif cfg.skip_co == "concat_atom":
            self.mlp_skip_co = nn.Linear(
                (cfg.num_interactions + 1) * cfg.hidden_channels, cfg.hidden_channels
            )
        self.head = AtomicEnergyHead(statistics, self.elements)

    @classmethod
    def from_config(cls, cfg: FAENet.Config, statistics: Statistics) -> FAENet:
        return cls(cfg, statistics)

    def config_dict(self) -> dict:
        return asdict(self.config)

    # -- one frame (or no frame) ----------------------------------------------------------------------------
    def network(self, z, tag, rel_pos, sender, receiver, batch, n_graphs):
        """The package's ``energy_forward`` per atom: readouts y (n,) whose per-structure sums are its
        energies, and the final atom features h (n, hidden). ``rel_pos`` = x_sender - x_receiver (+ shift),
        (E, 3) Å."""
        offset = self.distance_expansion.offset.to(rel_pos.dtype)
        coeff = -0.5 / float(offset[1] - offset[0]) ** 2
        dist = torch.linalg.vector_norm(rel_pos, dim=-1)
        edge_attr = torch.exp(coeff * (dist[:, None] - offset[None, :]) ** 2)
        h, e = self.embed_block(z, rel_pos, edge_attr, tag)
        alpha = self.w_lin(h) if self.config.energy_head == "weighted-av-initial-embeds" else None
        skip = []
        for block in self.interaction_blocks:
            skip.append(h if self.config.skip_co == "concat_atom" else self.output_block(h, alpha))
            h = h + block(h, e, sender, receiver, batch, n_graphs)
        if self.config.skip_co == "concat_atom":
            h = self.act(self.mlp_skip_co(torch.cat(skip + [h], dim=1)))
        y = self.output_block(h, alpha)  # [n, 1]
        if self.config.skip_co == "concat":
            # Linear over the per-structure energies = per-atom weighted sum + the bias split over the atoms
            counts = torch.bincount(batch, minlength=n_graphs).to(y.dtype)
            y = (
                torch.cat(skip + [y], dim=1) @ self.mlp_skip_co.weight.to(y.dtype).T
                + self.mlp_skip_co.bias.to(y.dtype) / counts[batch][:, None]
            )
        elif self.config.skip_co == "add":
            y = sum(skip) + y
        return y.squeeze(-1), h

    # -- frames ----------------------------------------------------------------------------------------------
    def _frames(self, pos, batch, n_graphs):
        method = self.config.fa_method if self.training else self.config.fa_method_eval
        centre, frames = pca_frames(pos, batch, n_graphs, self.config.frame_averaging)
        if method.startswith("se3-"):
            keep = torch.linalg.det(frames.detach()) > 0  # half of the sign patterns of every structure
            frames = frames[keep].view(n_graphs, -1, 3, 3)
            method = method[4:]
        if method == "det":  # the sign pattern making each axis' component sum >= 0 (package: 'det')
            d = 3 if self.config.frame_averaging == "3D" else 2
            axes = frames[:, 0]  # any sign pattern: the column sums only change sign
            s = torch.where(axes[:, :d, :d].sum(dim=1) >= 0, 1.0, -1.0).to(axes.dtype)  # [B, d]
            sign = torch.ones(n_graphs, 3, dtype=axes.dtype, device=axes.device)
            sign[:, :d] = s
            # se3-det: the package keeps this frame also when det = -1 (its fallback when no frame is proper)
            frames = (axes * sign[:, None, :])[:, None]
        elif method == "stochastic":
            pick = torch.randint(frames.shape[1], (n_graphs,), generator=self.generator).to(frames.device)
            frames = frames[torch.arange(n_graphs, device=frames.device), pick][:, None]
        return centre, frames

    def _evaluate(self, data, pos: torch.Tensor, cell: torch.Tensor, forces: bool):
        """(per-atom energies (n,) eV, direct forces (n, 3) eV/Å or None), averaged over the frames used."""
        numbers = data[K.NUMBERS].reshape(-1).long()
        element = self.element_table(numbers)
        batch = batch_vector(data)
        n, n_graphs = pos.shape[0], cell.shape[0]
        tag = data[K.TAGS].reshape(-1).long() if K.TAGS in data else torch.zeros_like(numbers)
        if self.config.frame_averaging == "none":
            ei = data[K.EDGE_INDEX]
            rel = -edge_vectors(pos, ei, data[K.UNIT_SHIFTS], cell, batch)
            y, h = self.network(numbers, tag, rel, ei[0], ei[1], batch, n_graphs)
            f = self.decoder(h) if forces else None
        else:
            centre, frames = self._frames(pos, batch, n_graphs)  # [B, F, 3, 3]
            F = frames.shape[1]
            x = pos - centre[batch]
            pos_f = torch.einsum("ni,fnij->fnj", x, frames[batch].transpose(0, 1)).reshape(-1, 3)  # [F n, 3]
            cell_f = torch.einsum("bij,bfjk->fbik", cell, frames).reshape(-1, 3, 3)  # [F B, 3, 3]
            stacked = FrameAveraging._stack(data, F, n, n_graphs)  # frame f of structure b is graph f B + b
            ei_f, batch_f = stacked[K.EDGE_INDEX], stacked[K.BATCH]
            rel = -edge_vectors(pos_f, ei_f, stacked[K.UNIT_SHIFTS], cell_f, batch_f)
            y, h = self.network(
                numbers.repeat(F), tag.repeat(F), rel, ei_f[0], ei_f[1], batch_f, F * n_graphs
            )
            y = y.view(F, n).mean(dim=0)
            f = None
            if forces:
                f_frame = self.decoder(h).view(F, n, 3)
                f = torch.einsum("fnj,fnij->ni", f_frame, frames[batch].transpose(0, 1)) / F  # F R^T
        energies = self.head(element, y)
        if f is not None:
            f = self.force_scale.to(f.dtype) * f
        return energies, f

    def atomic_energies(self, data, pos: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """Per-atom energies (n,) in eV from positions (n, 3) Å and cells (B, 3, 3) Å."""
        return self._evaluate(data, pos, cell, forces=False)[0]

    def forward(
        self, data, compute_forces: bool = True, compute_stress: bool = False
    ) -> dict[str, torch.Tensor]:
        if self.config.forces == "gradient":
            return super().forward(data, compute_forces, compute_stress)
        if compute_stress:
            raise ModelError(
                "a FAENet with forces: direct has no stress (its forces are not the gradient of its "
                "energy); use forces: gradient"
            )
        pos = data[K.POS]
        cell = data[K.CELL].reshape(-1, 3, 3).to(pos.dtype)
        energies, f = self._evaluate(data, pos, cell, forces=compute_forces)
        batch = batch_vector(data)
        out = {
            K.ENERGY: torch.zeros(cell.shape[0], dtype=energies.dtype, device=energies.device).index_add_(
                0, batch, energies
            ),
            K.ENERGIES: energies,
        }
        if compute_forces:
            out[K.FORCES] = f
        return out


def legacy_faenet_section(raw: dict) -> dict:
    """A model section ``name: faenet`` written before FAENet existed (molequi's frame-averaging wrapper,
    whose fields include ``backbone`` / ``mode`` / ``frames``) renamed to ``frame_averaging``, so old configs
    and checkpoints still load; any other section is returned as is."""
    if raw.get("name") == "faenet" and {
        "backbone",
        "mode",
        "frames",
        "frames_train",
        "weighting",
        "degeneracy_tol",
    } & set(raw):
        return {**raw, "name": "frame_averaging"}
    return raw


__all__ = ["FAENet", "pca_frames", "element_table", "legacy_faenet_section"]
