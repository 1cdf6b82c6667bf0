"""SCN as fairchem-core 1.10.0 defines it (Zitnick et al., "Spherical Channels for Modeling Atomic Interactions",
NeurIPS 2022; ``fairchem.core.models.scn.scn.SphericalChannelNetwork``), in molequi's interface.

Node features x_i: real spherical-harmonic coefficients up to ``lmax`` (e3nn order) with C = ``sphere_channels``
channels, (n, (L+1)^2, C). Edge e = (j -> i), v_e = x_j - x_i (fairchem's ``edge_distance_vec``), d_e = |v_e|.

Architecture::

    Graph           fairchem's radius graph with the strict ``max_neighbors`` cut, in fairchem's order (as eSCN,
                    ``molequi.models.escn.ESCN.edges``). Each edge is ranked among its receiver's edges by
                    distance (``_rank_edge_distances``); with ``num_resolutions: 2`` ranks 0..11 use the first
                    resolution (lmax L) and the others the second (lmax max(4, L - 2), hidden_channels / 4); edges
                    are regrouped by resolution (fairchem's ``cutoff_index``), the order the random frames follow.
    Embedding       x_i^{l=0} = emb(z_i), l > 0 zero.
    Edge scalars    h_e = silu(Lin(silu(Lin(smear(d_e)) + emb_s(z_j) + emb_t(z_i))))      (DistanceBlock, per layer)
    Message         (MessageBlock, per resolution r, on x' = Lin_down x truncated to l <= L_r)
        for each tap t (rotations by 0, 90, 180, 270 degrees about the edge when mmax = 1 and num_taps = -1):
            a_et = D_{e,t} x'_j || D_{e,t} x'_i      (rows |m| <= mmax of the Wigner matrix of the tapped frame)
            b_et = silu(W2 silu(W1 (silu(P a_et) * silu(Lin h_e))))
        y_e = sum_t M_t b_et  (fairchem's ``CombineYRotations``: the taps' m = +-1 parts turned back, averaged)
        m_i = sum_{e -> i} D_{e,0}^T y_e
    Layer           with ``use_grid``: m_i <- S2^-1 W3 silu(W2 silu(W1 [S2_bands x'_i || S2_bands m_i])) (pointwise
                    on a 2(L+1) x (2(L+1)+1) grid; ``num_bands`` grids of x truncated to l <= L, L-1, ..); then
                    Lin_up; x_i <- x_i + m_i (no residual in the first layer)
    Heads           x_i(p) on ``num_sphere_samples`` weighted Fibonacci points (as eSCN);
                    E = sum_i mean_p MLP_E(x_i(p)) (no 0.001 factor, unlike eSCN); F_i = mean_p MLP_F(x_i(p)) p.

Wigner matrices: fairchem builds them from e3nn 0.4's ``_Jd`` tables (``Jd.pt``, float64) and Euler angles of
the 3x3 edge rotation; molequi forms the same matrices (the Wigner matrix of a rotation does not depend on how
it is computed) with ``EdgeRotation`` (``molequi.so3.rotations.EdgeFrame`` plus the roll about the edge). The
random roll per edge and call is fairchem's ``_init_edge_rot_mat`` (``edge_roll: random``, replicated draw for
draw from ``model.generator``) or roll 0 (``edge_roll: fixed``, molequi's deterministic option).

Forces. ``direct_forces: true`` (fairchem's only mode for SCN, the default): forces from the sphere
(above); the model is not conservative (no stress; ``molequi md`` refuses it without
``--allow-nonconservative``). ``direct_forces: false`` (molequi's option, the same as eSCN's and fairchem
EquiformerV2's): no force head; forces and stress are -dE/dx and the strain derivative (``molequi.response``);
requires ``edge_roll: fixed`` (a random roll per call makes E a random function of the positions). The edges'
split by neighbour rank and the ``max_neighbors`` cut are piecewise constant in the positions, so E (and
-dE/dx) jumps where two neighbours swap rank across a cut, as in fairchem.

Defaults are fairchem's OC20 S2EF All+MD configuration ``configs/s2ef/all/scn/scn-all-md.yml`` (16 interactions,
lmax 6, mmax 1 (constructor default), 2 bands, 2 resolutions, 4 taps, 128 sphere / 1024 hidden channels,
cutoff 8 Å, 40 neighbours, Gaussian basis of width 2.0 at 0.02 Å, 128 basis functions, 128 sphere samples).
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
from molequi.models.escn import (DISTANCE_FUNCTIONS, EDGE_ROLLS, DistanceExpansion, EdgeRotation, ESCN,
                                 EdgeBlock as DistanceBlock,
                                 _in_float64, fairchem_edge_rotation, reduced_index, sphere_points)
from molequi.response import batch_vector
from molequi.so3.rotations import EdgeFrame


def y_rotation(theta: float) -> torch.Tensor:
    """fairchem's ``RotationMatrix(0, theta, 0)`` (3, 3), float64."""
    c, s = math.cos(theta), math.sin(theta)
    return torch.tensor([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]], dtype=torch.float64)


def tap_angles(mmax: int, num_taps: int) -> list[float]:
    return [0.0] if mmax == 0 or num_taps == 1 else [0.0, 0.5 * math.pi, math.pi, 1.5 * math.pi]


def tap_mapping(lmax: int, mmax: int, num_taps: int) -> torch.Tensor:
    """fairchem's ``InitYRotMapping``: (taps * K_r, K_r) combining the taps' reduced coefficients."""
    kr = len(reduced_index(lmax, mmax))
    ys = tap_angles(mmax, num_taps)
    if len(ys) == 1:
        return torch.eye(kr, dtype=torch.float64)
    n = len(ys)
    m = torch.zeros(n * kr, kr, dtype=torch.float64)
    for l in range(lmax + 1):  # m = 0
        off = 0 if l == 0 else (l - 1) * 3 + 2
        for y in range(n):
            m[off + y * kr, off] = 1.0 / n
    for l in range(1, lmax + 1):  # m = -1 and m = +1
        lo, hi = (l - 1) * 3 + 1, (l - 1) * 3 + 3
        for y in range(n):
            m[lo + y * kr, lo] = math.cos(ys[y]) / n
            m[lo + 2 + y * kr, lo] = math.sin(ys[y]) / n
            m[hi + y * kr, hi] = math.cos(ys[y]) / n
            m[hi - 2 + y * kr, hi] = -math.sin(ys[y]) / n
    return m


def band_grids(lmax: int, num_bands: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fairchem's ``ToGrid`` (bands, lat, long, K) - band b the grid of the coefficients l <= lmax - b - and
    ``FromGrid`` (lat, long, K) matrices, from e3nn's ``ToS2Grid`` / ``FromS2Grid`` ('integral') on a
    2(L+1) x (2(L+1)+1) grid, float64."""
    res = (2 * (lmax + 1), 2 * (lmax + 1) + 1)
    K_ = (lmax + 1) ** 2

    def build():
        tos = []
        for b in range(num_bands):
            to = o3.ToS2Grid(lmax - b, res, normalization="integral")
            t = torch.einsum("mbi,am->bai", to.shb, to.sha)
            tos.append(torch.cat([t, t.new_zeros(*t.shape[:2], K_ - t.shape[2])], dim=2))
        fr = o3.FromS2Grid(res, lmax, normalization="integral")
        return torch.stack(tos), torch.einsum("am,mbi->bai", fr.sha, fr.shb)

    return _in_float64(build)


class Resolution:
    """The fixed tables of one resolution: reduced indices, tap rotations and their mapping."""

    def __init__(self, lmax: int, mmax: int, num_taps: int):
        self.lmax, self.mmax = lmax, mmax
        self.frame = EdgeFrame(list(range(lmax + 1)), tilt=True)
        self.reduced = reduced_index(lmax, mmax)
        self.taps = [y_rotation(t) for t in tap_angles(mmax, num_taps)]
        self.mapping = tap_mapping(lmax, mmax, num_taps)
        self.basis, self.basis_reduce = (lmax + 1) ** 2, len(self.reduced)

    def wigner(self, vec: torch.Tensor, rot: torch.Tensor | None):
        """(D (E * taps, K_r, K) edge-major, D_0^T (E, K, K_r))."""
        red = self.reduced.to(vec.device)
        Ds = []
        for t, ry in enumerate(self.taps):
            r = rot
            if t > 0 or rot is not None:
                base = rot if rot is not None else self.frame.edge_rotation(vec).transpose(1, 2)
                r = ry.to(vec) @ base
            Ds.append(EdgeRotation(self.frame, vec, red, r).D)
        D = torch.stack(Ds, dim=1)
        return D.reshape(-1, *D.shape[2:]), Ds[0].transpose(1, 2)


class MessageBlock(nn.Module):
    def __init__(self, channels: int, hidden: int, num_basis: int, res: Resolution):
        super().__init__()
        self.hidden, self.channels, self.res = hidden, channels, res
        self.fc1_dist = nn.Linear(num_basis, hidden)
        self.fc1_edge_proj = nn.Linear(2 * res.basis_reduce * channels, hidden)
        self.fc1_edge = nn.Linear(hidden, hidden)
        self.fc2_edge = nn.Linear(hidden, res.basis_reduce * channels)

    def forward(self, x, h, sender, receiver, D, Dt0, n_taps):
        act = nn.functional.silu
        h = act(self.fc1_dist(h))
        C = self.channels

        def rot(xs):
            xs = xs.unsqueeze(1).expand(-1, n_taps, -1, -1).reshape(-1, *xs.shape[1:])
            return torch.bmm(D, xs).reshape(xs.shape[0], -1)

        m = act(self.fc1_edge_proj(torch.cat([rot(x[sender]), rot(x[receiver])], dim=1)))
        m = (m.view(-1, n_taps, self.hidden) * h.view(-1, 1, self.hidden)).view(-1, self.hidden)
        m = act(self.fc2_edge(act(self.fc1_edge(m))))
        m = m.view(-1, n_taps * self.res.basis_reduce, C)
        m = torch.einsum("abc,bd->adc", m, self.res.mapping.to(m))
        return torch.bmm(Dt0, m)


class EdgeBlock(nn.Module):
    def __init__(self, cfg: SCN.Config, resolutions, hidden_list, distance_expansion):
        super().__init__()
        C, Cr, nb = cfg.sphere_channels, cfg.sphere_channels_reduce, cfg.num_bands
        self.cfg = cfg
        self.distance_expansion = distance_expansion  # shared, as fairchem's (its offsets appear under each block)
        # fairchem's DistanceBlock: the same maps and names as eSCN's EdgeBlock
        self.dist_block = DistanceBlock(cfg.num_basis_functions, distance_expansion, cfg.max_num_elements)
        self.message_blocks = nn.ModuleList([MessageBlock(Cr, h, cfg.num_basis_functions, r)
                                             for h, r in zip(hidden_list, resolutions)])
        if C != Cr:
            self.downsample = nn.Linear(C, Cr, bias=False)
            self.upsample = nn.Linear(Cr, C, bias=False)
        if cfg.use_grid:
            self.fc1_sphere = nn.Linear(nb * 2 * Cr, nb * 2 * Cr)
            self.fc2_sphere = nn.Linear(nb * 2 * Cr, 2 * Cr)
            self.fc3_sphere = nn.Linear(2 * Cr, Cr)

    def forward(self, x, z, d, sender, receiver, cut, rots, grids):
        cfg = self.cfg
        h = self.dist_block(d, z[sender], z[receiver])
        x_down = self.downsample(x) if cfg.sphere_channels != cfg.sphere_channels_reduce else x
        x_new = torch.zeros_like(x_down)
        for r, blk in enumerate(self.message_blocks):
            a, b = cut[r], cut[r + 1]
            if b == a:
                continue
            kb = blk.res.basis
            D, Dt0, nt = rots[r]
            msg = blk(x_down[:, :kb], h[a:b], sender[a:b], receiver[a:b], D, Dt0, nt)
            x_new[:, :kb] = x_new[:, :kb].index_add(0, receiver[a:b], msg)
        if cfg.use_grid:
            to, fr = grids
            g = torch.cat([self._to_grid(to, x_down), self._to_grid(to, x_new)], dim=-1)
            act = nn.functional.silu
            g = self.fc3_sphere(act(self.fc2_sphere(act(self.fc1_sphere(g)))))
            x_new = torch.einsum("bai,zbac->zic", fr, g)
        if cfg.sphere_channels != cfg.sphere_channels_reduce:
            x_new = self.upsample(x_new)
        return x_new

    @staticmethod
    def _to_grid(to, x):  # (z, lat, long, bands * C), band-major channels as fairchem's ToGrid
        g = torch.einsum("nbai,zic->zbanc", to, x)
        return g.reshape(*g.shape[:3], -1)


def rank_edges(receiver: torch.Tensor, d: torch.Tensor, k: int) -> torch.Tensor:
    """fairchem's ``_rank_edge_distances``: the rank (0 = nearest) of each edge among its receiver's edges
    (edges grouped by receiver, at most k per receiver); ties as fairchem's ``torch.sort`` sends them."""
    if receiver.numel() == 0:
        return receiver.clone()
    _, counts = torch.unique(receiver, return_counts=True)
    offset = torch.repeat_interleave(torch.cumsum(counts, 0) - counts, counts)
    slot = receiver * k + torch.arange(receiver.numel(), device=receiver.device) - offset
    n = int(receiver.max()) + 1
    table = torch.full([n * k], float("inf"), dtype=d.dtype, device=d.device)
    table.index_copy_(0, slot, d)
    table = table.view(n, k)
    _, idx = torch.sort(table, dim=1)
    idx = idx + (torch.arange(n, device=d.device) * k).view(-1, 1)
    rank = torch.zeros(n * k, dtype=torch.long, device=d.device)
    rank.index_copy_(0, idx.reshape(-1), torch.arange(k, device=d.device).repeat(n))
    return torch.masked_select(rank.view(n, k), table.lt(1000.0))


class SCN(EnergyModel):
    """SCN (fairchem-core 1.10.0's ``scn``) with molequi's model interface (module docstring)."""

    @dataclass
    class Config:
        r_max: float = 8.0
        """Cutoff radius, Å (fairchem's ``cutoff``)."""
        max_neighbors: int = 40
        """Neighbours kept per atom, the nearest (fairchem's ``max_num_neighbors``, strict cut)."""
        max_num_elements: int = 90
        """Rows of the atomic-number embeddings."""
        num_layers: int = 16
        """Interaction (edge) blocks (fairchem's ``num_interactions``)."""
        lmax: int = 6
        """Highest degree of the node features."""
        mmax: int = 1
        """Highest order kept in the edge frame (0 or 1)."""
        num_resolutions: int = 2
        """1, or 2: edges of neighbour rank >= 12 use lmax max(4, lmax - 2) and hidden_channels / 4."""
        sphere_channels: int = 128
        """Channels per coefficient."""
        sphere_channels_reduce: int = 128
        """Channels during message passing (down / up projections when different)."""
        hidden_channels: int = 1024
        """Hidden width of the message MLPs."""
        num_taps: int = -1
        """1, or -1: 4 rotations about each edge when mmax = 1."""
        use_grid: bool = True
        """Pointwise MLP on the sphere combining a node's features and messages."""
        num_bands: int = 2
        """Bands of that grid MLP's input (grids of l <= lmax, lmax - 1, ...)."""
        num_sphere_samples: int = 128
        """Points on the sphere the heads sample."""
        num_basis_functions: int = 128
        """Width of the invariant edge features."""
        distance_function: str = "gaussian"
        """'gaussian', 'sigmoid', 'linearsigmoid' or 'silu'."""
        basis_width_scalar: float = 2.0
        """Width of each distance function in units of their spacing."""
        distance_resolution: float = 0.02
        """Spacing of the distance basis, Å."""
        direct_forces: bool = True
        """fairchem's force head from the sphere (not conservative); False: forces = -dE/dx (molequi)."""
        edge_roll: str = "random"
        """'random' (fairchem) or 'fixed' (molequi: roll 0)."""

        def validate(self) -> None:
            if self.r_max <= 0 or self.distance_resolution <= 0 or int(self.r_max / self.distance_resolution) < 2:
                raise ConfigError("SCN r_max and distance_resolution must be positive with r_max / "
                                  "distance_resolution >= 2")
            if not 1 <= self.lmax <= 10 or self.mmax not in (0, 1) or self.num_resolutions not in (1, 2):
                raise ConfigError(f"SCN needs lmax in 1..10, mmax 0 or 1, num_resolutions 1 or 2; got "
                                  f"{self.lmax}, {self.mmax}, {self.num_resolutions}")
            if self.num_resolutions == 2 and self.lmax < 4:
                raise ConfigError(f"SCN with num_resolutions 2 needs lmax >= 4 (its second resolution has lmax "
                                  f"max(4, lmax - 2)), got {self.lmax}")
            if not 1 <= self.num_bands <= self.lmax + 1:
                raise ConfigError(f"SCN num_bands must be in 1..lmax+1, got {self.num_bands}")
            if self.distance_function not in DISTANCE_FUNCTIONS or self.edge_roll not in EDGE_ROLLS:
                raise ConfigError(f"SCN distance_function must be one of {DISTANCE_FUNCTIONS} and edge_roll one "
                                  f"of {EDGE_ROLLS}")
            if not self.direct_forces and self.edge_roll != "fixed":
                raise ConfigError("SCN with direct_forces: false (gradient forces) needs edge_roll: fixed; a "
                                  "random roll per call makes the energy a random function of the positions")
            if min(self.num_layers, self.sphere_channels, self.sphere_channels_reduce, self.hidden_channels,
                   self.num_sphere_samples, self.num_basis_functions, self.max_neighbors) < 1:
                raise ConfigError("SCN sizes and max_neighbors must be >= 1")

    def __init__(self, cfg: SCN.Config, statistics: Statistics):
        super().__init__()
        cfg.validate()
        self.config, self.statistics = cfg, statistics
        self.elements = [int(z) for z in statistics.elements]
        if max(self.elements) >= cfg.max_num_elements:
            raise ConfigError(f"SCN max_num_elements {cfg.max_num_elements} must exceed the largest atomic number "
                              f"of the elements ({max(self.elements)})")
        self.r_max = float(cfg.r_max)
        self.conservative = not cfg.direct_forces
        self.generator: torch.Generator | None = None
        L, C = cfg.lmax, cfg.sphere_channels
        if cfg.num_resolutions == 1:
            hidden, lmaxes, self.cutoff_list = [cfg.hidden_channels], [L], [cfg.max_neighbors - 0.01]
        else:
            hidden, lmaxes = [cfg.hidden_channels, cfg.hidden_channels // 4], [L, max(4, L - 2)]
            self.cutoff_list = [12 - 0.01, cfg.max_neighbors - 0.01]
        self.resolutions = [Resolution(lm, cfg.mmax, cfg.num_taps) for lm in lmaxes]
        self.element_table = ElementTable(self.elements)
        self.sphere_embedding = nn.Embedding(cfg.max_num_elements, C)
        num = int(cfg.r_max / cfg.distance_resolution)
        self.distance_expansion = DistanceExpansion(cfg.distance_function, cfg.r_max, num, cfg.basis_width_scalar)
        self.edge_blocks = nn.ModuleList([EdgeBlock(cfg, self.resolutions, hidden, self.distance_expansion)
                                          for _ in range(cfg.num_layers)])
        self.energy_fc1 = nn.Linear(C, C)
        self.energy_fc2 = nn.Linear(C, cfg.sphere_channels_reduce)
        self.energy_fc3 = nn.Linear(cfg.sphere_channels_reduce, 1)
        if cfg.direct_forces:
            self.force_fc1 = nn.Linear(C, C)
            self.force_fc2 = nn.Linear(C, cfg.sphere_channels_reduce)
            self.force_fc3 = nn.Linear(cfg.sphere_channels_reduce, 1)
            self.register_buffer("force_scale", torch.tensor(float(statistics.force_rms), dtype=torch.float64))
        pts = sphere_points(cfg.num_sphere_samples)
        self.register_buffer("sphere_points", pts, persistent=False)
        self.register_buffer("sphharm_weights",
                             _in_float64(lambda: o3.spherical_harmonics(list(range(L + 1)), pts, False)),
                             persistent=False)
        to, fr = band_grids(L, cfg.num_bands)
        self.register_buffer("to_grid_mat", to, persistent=False)
        self.register_buffer("from_grid_mat", fr, persistent=False)
        self.head = AtomicEnergyHead(statistics, self.elements)

    @classmethod
    def from_config(cls, cfg: SCN.Config, statistics: Statistics) -> SCN:
        return cls(cfg, statistics)

    def config_dict(self) -> dict:
        return asdict(self.config)

    @property
    def blocks(self) -> nn.ModuleList:
        """The interaction blocks (per-layer hooks of the parity check)."""
        return self.edge_blocks

    def edges(self, data, pos, cell):
        """(sender, receiver, v) in fairchem's order after the strict neighbour cut (as eSCN's graph)."""
        return ESCN.edges(self, data, pos, cell)

    def grouped_edges(self, data, pos, cell):
        """(sender, receiver, v, cut): the edges regrouped by resolution (fairchem's ``cutoff_index`` cut)."""
        sender, receiver, vec = self.edges(data, pos, cell)
        d = torch.sqrt(torch.sum(vec**2, dim=1))
        with torch.no_grad():
            rank = rank_edges(receiver, d.detach(), self.config.max_neighbors)
        order, cut, last = [], [0], -0.1
        for c in self.cutoff_list:
            sel = torch.nonzero((rank > last) & (rank <= c)).view(-1)
            order.append(sel)
            cut.append(cut[-1] + sel.numel())
            last = c
        order = torch.cat(order)
        return sender[order], receiver[order], vec[order], cut

    def features(self, data, pos, cell):
        numbers = data[K.NUMBERS].reshape(-1).long()
        self.element_table(numbers)
        sender, receiver, vec, cut = self.grouped_edges(data, pos, cell)
        d = torch.sqrt(torch.sum(vec**2, dim=1))
        R = None
        if self.config.edge_roll == "random":
            noise = torch.rand(vec.shape, generator=self.generator, dtype=vec.dtype, device=vec.device)
            if vec.shape[0]:
                R = fairchem_edge_rotation(vec, noise)
        rots = []
        for r, res in enumerate(self.resolutions):
            a, b = cut[r], cut[r + 1]
            D, Dt0 = res.wigner(vec[a:b], None if R is None else R[a:b])
            rots.append((D, Dt0, len(res.taps)))
        n, L, C = pos.shape[0], self.config.lmax, self.config.sphere_channels
        x = pos.new_zeros(n, (L + 1) ** 2, C)
        x = torch.cat([self.sphere_embedding(numbers).to(pos.dtype)[:, None], x[:, 1:]], dim=1)
        grids = (self.to_grid_mat.to(pos.dtype), self.from_grid_mat.to(pos.dtype))
        for i, block in enumerate(self.edge_blocks):
            out = block(x, numbers, d, sender, receiver, cut, rots, grids)
            x = out if i == 0 else x + out
        return x

    sphere_values = ESCN.sphere_values  # x_i(p) (n, P, C): the node functions at the heads' sphere points

    def _energies(self, numbers, xp: torch.Tensor) -> torch.Tensor:
        act = nn.functional.silu
        y = self.energy_fc3(act(self.energy_fc2(act(self.energy_fc1(xp))))).squeeze(-1).sum(dim=1)
        return self.head(self.element_table(numbers), y / self.config.num_sphere_samples)

    def atomic_energies(self, data, pos: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """Per-atom energies (n,) in eV from positions (n, 3) Å and cells (B, 3, 3) Å."""
        xp = self.sphere_values(self.features(data, pos, cell))
        return self._energies(data[K.NUMBERS].reshape(-1).long(), xp)

    def forward(self, data, compute_forces: bool = True,
                compute_stress: bool = False) -> dict[str, torch.Tensor]:
        if self.conservative:  # direct_forces: false: -dE/dx and stress by molequi.response
            return super().forward(data, compute_forces, compute_stress)
        if compute_stress:
            raise ModelError("an SCN with direct_forces: true has no stress (its forces are not the gradient "
                             "of its energy); use direct_forces: false, edge_roll: fixed for stress")
        act = nn.functional.silu
        pos = data[K.POS]
        cell = data[K.CELL].reshape(-1, 3, 3).to(pos.dtype)
        xp = self.sphere_values(self.features(data, pos, cell))
        energies = self._energies(data[K.NUMBERS].reshape(-1).long(), xp)
        batch = batch_vector(data)
        n_graphs = int(batch.max()) + 1 if batch.numel() else 1
        out = {K.ENERGY: torch.zeros(n_graphs, dtype=energies.dtype, device=energies.device)
               .index_add_(0, batch, energies), K.ENERGIES: energies}
        if compute_forces:
            fp = self.force_fc3(act(self.force_fc2(act(self.force_fc1(xp))))).squeeze(-1)
            f = torch.einsum("np,pk->nk", fp, self.sphere_points.to(fp.dtype))
            f = f / self.config.num_sphere_samples
            out[K.FORCES] = self.force_scale.to(f.dtype) * f
        return out


__all__ = ["SCN", "rank_edges", "tap_mapping", "band_grids"]
