"""eSCN as fairchem-core 1.10.0 defines it (Passaro & Zitnick, "Reducing SO(3) Convolutions to SO(2) for
Efficient Equivariant GNNs", ICML 2023; ``fairchem.core.models.escn.escn.eSCN``), in molequi's interface.

Node features x_i are real spherical-harmonic coefficients up to ``lmax`` (e3nn order, index l^2 + l + m) with
C = ``sphere_channels`` channels, (n, (L+1)^2, C). Edge e = (j -> i) (molequi's sender j, receiver i; fairchem's
edge_index[0] = j, edge_index[1] = i) has the vector v_e = x_j - x_i (fairchem's ``edge_distance_vec``, the
negative of molequi's ``edge_vectors``) and distance d_e.

Architecture::

    Embedding      x_i^{l=0} = emb(z_i), all l > 0 coefficients zero.
    Edge scalars   h_e = silu(Lin(silu(Lin(smear(d_e)) + emb_s(z_j) + emb_t(z_i))))        (EdgeBlock)
    Message        (MessageBlock, per layer)
        y_e  = SO2_src(D_e x_j ; h_e) + SO2_tgt(D_e x_i ; h_e)        (edge frame, coefficients |m| <= mmax)
        y_e  = S2^-1 silu(S2 y_e)                                     (grid of the (lmax, mmax) coefficients)
        m_i  = sum_{e -> i} D_e^T y_e
      SO2 (SO2Block): m = 0: W2 (W1 x_0 * silu(Lin h_e)); m > 0: the complex product of (fc1_r, fc1_i) and
      (fc2_r, fc2_i) with the edge modulation silu(Lin h_e) between them (fairchem's SO2Conv).
    Layer          x_i <- [x_i +] S2^-1 W3 silu(W2 silu(W1 [S2 x_i || S2 m_i]))   (pointwise on the (lmax, lmax)
                   grid; no residual in the first layer)
    Heads          x_i(p) = sum_k Y_k(p) x_ik on ``num_sphere_samples`` weighted Fibonacci points p (fairchem's
                   ``CalcSpherePoints``; Y evaluated unnormalised on the weighted points, as fairchem does);
                   E = 0.001 sum_i mean_p MLP_E(x_i(p));  F_i = mean_p MLP_F(x_i(p)) p   (direct forces)

The grids are e3nn's ``ToS2Grid`` / ``FromS2Grid`` ('integral' normalisation) at 2(L+1) latitudes and 2 mmax + 1
longitudes (2 mmax + 3 when mmax = L), or ``grid_resolution`` for both, as in fairchem's ``SO3_Grid``.

Edge frames. D_e is the Wigner matrix of fairchem's edge rotation R_e (R_e v_e / |v_e| = e_y): molequi's
``EdgeFrame`` rotation (roll 0) followed by a roll gamma_e about the edge. ``edge_roll``:

* ``"random"`` (fairchem): the roll comes from a random reference vector drawn per edge and per call with
  ``torch.rand`` (fairchem's ``_init_edge_rot_mat``, replicated draw for draw: the same seed and edge order give
  the same frames), so the model is a random function of the positions at the level of the grid error below.
* ``"fixed"`` (molequi's option): roll 0, a deterministic frame; needed by gradient forces.

Equivariance. Rotations only: fairchem's SO(2) convolutions have independent "imaginary" weights (fc1_i,
fc2_i), so a message is not symmetric under a mirror through its edge and eSCN is chiral (a reflected
structure gets other messages, tested). Under rotations, everything but the grids is exact (frames, SO(2)
convolutions, rotations back, aggregation: 1e-10 in float64, tested with the edge-frame SiLU off); the pointwise
SiLUs on the S2 grids and the heads' sums over the ``num_sphere_samples`` points are not rotation invariant
(as in fairchem), and the strict neighbour cut picks among neighbours tied to float32 precision by sort
order, which a rotation can change. Measured on a 14-atom OC20 slab, tiny model with linear maps x3, no cut:
forces 0.21 / energy 8.8e-4 relative at 16 sphere samples and the default grid, 6.6e-4 / 1.4e-6 at 512 samples
and ``grid_resolution: 48`` (2.7e-5 energy with an 8-neighbour cut); OC20 size with random weights, frame 0 of
``data/oc20/oc20_real.extxyz``: forces 9.9e-3, energy 4.2e-7 relative.

Forces. ``direct_forces=True`` (fairchem's only mode, the default): forces from the sphere (above); the model is
not conservative (no stress; ``molequi md`` refuses it without ``--allow-nonconservative``). ``direct_forces=False`` (molequi's option): forces and
stress are -dE/dx and the strain derivative (``molequi.response``); requires ``edge_roll: fixed``.

Energies. E_i = E0[z_i] + scale * 0.001 * y_i + shift with y_i = mean_p MLP_E(x_i(p)) (``AtomicEnergyHead``);
an imported fairchem checkpoint has E0 = 0, scale = 1, shift = 0, i.e. fairchem's model output. The direct
forces are multiplied by ``statistics.force_rms`` (1 for an import).

Graph. fairchem's eSCN builds its graph with ``radius_graph_pbc`` and keeps the ``max_neighbors`` nearest
neighbours of every atom (``enforce_max_neighbors_strictly``, True for eSCN: ties broken by fairchem's sort);
the model applies the same cut to the radius graph it is given, after putting the edges in fairchem's order
(centre atom, neighbour, cell offset), which is also the order the random frame draws follow.

Defaults are fairchem's OC20 S2EF All+MD configuration ``configs/s2ef/all/escn/eSCN-L6-M2-Lay12-All-MD.yml``
(12 layers, lmax 6, mmax 2, 128 sphere / 256 hidden channels, cutoff 12 Å, 20 neighbours, Gaussian basis of
width 2.0) with the constructor's defaults for the rest (edge_channels 128, distance_resolution 0.02, 128
sphere samples, 90 element rows). One resolution only (fairchem's lmax_list / mmax_list of length 1).
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
from molequi.graph.neighbors import edge_vectors
from molequi.models.base import AtomicEnergyHead, ElementTable, EnergyModel
from molequi.response import batch_vector
from molequi.so3.rotations import EdgeFrame, cos_sin_multiples

DISTANCE_FUNCTIONS = ("gaussian", "sigmoid", "linearsigmoid", "silu")
EDGE_ROLLS = ("random", "fixed")


# ----------------------------------------------------------------------------------------- fixed tables
def _in_float64(fn):
    """Run ``fn`` with float64 as torch's default dtype (e3nn builds its grids in the default dtype)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        return fn()
    finally:
        torch.set_default_dtype(old)


def grid_shape(lmax: int, mmax: int, resolution: int | None) -> tuple[int, int]:
    """(latitudes, longitudes) of fairchem's ``SO3_Grid(lmax, mmax, resolution)``."""
    if resolution:
        return resolution, resolution
    return 2 * (lmax + 1), (2 * (mmax + 1) + 1 if lmax == mmax else 2 * mmax + 1)


def reduced_index(lmax: int, mmax: int) -> torch.Tensor:
    """Indices (e3nn order) of the coefficients with |m| <= mmax: fairchem's ``coefficient_idx(lmax, mmax)``."""
    return torch.tensor([l * l + l + m for l in range(lmax + 1) for m in range(-min(l, mmax), min(l, mmax) + 1)],
                        dtype=torch.long)


def grid_matrices(lmax: int, mmax: int, resolution: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """to-grid (lat, long, K_r) and from-grid (lat, long, K_r) matrices in float64 on the coefficients with
    |m| <= mmax, built from e3nn's ``ToS2Grid`` / ``FromS2Grid`` ('integral') as fairchem's ``SO3_Grid``."""
    res = grid_shape(lmax, mmax, resolution)

    def build():
        to = o3.ToS2Grid(lmax, res, normalization="integral")
        fr = o3.FromS2Grid(res, lmax, normalization="integral")
        return torch.einsum("mbi,am->bai", to.shb, to.sha), torch.einsum("am,mbi->bai", fr.sha, fr.shb)

    to_mat, from_mat = _in_float64(build)
    idx = reduced_index(lmax, mmax)
    return to_mat[:, :, idx].contiguous(), from_mat[:, :, idx].contiguous()


def sphere_points(num_points: int) -> torch.Tensor:
    """fairchem's ``CalcSpherePoints``: a Fibonacci sphere whose points are scaled by their inverse local
    density (mean scale 1), (P, 3), float64."""
    golden = (1 + 5**0.5) / 2
    i = torch.arange(num_points, dtype=torch.float64).view(-1, 1)
    theta = 2 * math.pi * i / golden
    phi = torch.arccos(1 - 2 * (i + 0.5) / num_points)
    pts = torch.cat([torch.cos(theta) * torch.sin(phi), torch.sin(theta) * torch.sin(phi), torch.cos(phi)], 1)
    d2 = torch.sum((pts.view(1, -1, 3) - pts.view(-1, 1, 3)) ** 2, dim=2)
    scalar = 1.0 / torch.sum(torch.exp(-d2 / (0.5 * 0.3)), dim=1)
    scalar = num_points * scalar / torch.sum(scalar)
    return pts * scalar.view(-1, 1)


class DistanceExpansion(nn.Module):
    """fairchem's smearings of the edge distance (``scn/smearing.py``) on [0, cutoff], ``num`` functions."""

    def __init__(self, kind: str, cutoff: float, num: int, width: float):
        super().__init__()
        self.kind, self.width, self.num_output = kind, float(width), int(num)
        self.register_buffer("offset", torch.linspace(0.0, cutoff, num, dtype=torch.float64))
        if kind == "silu":
            self.fc1 = nn.Linear(2, num)

    def forward(self, d: torch.Tensor) -> torch.Tensor:
        step = float(self.offset[1] - self.offset[0])  # fairchem's coefficient comes from the stored offsets
        x = d.view(-1, 1) - self.offset.to(d.dtype).view(1, -1)
        if self.kind == "gaussian":
            return torch.exp(-0.5 / (self.width * step) ** 2 * x.pow(2))
        if self.kind == "sigmoid":
            return torch.sigmoid(self.width / step * x)
        if self.kind == "linearsigmoid":
            x = self.width / step * x
            return torch.sigmoid(x) + 0.001 * x
        h = d.view(-1, 1)
        return nn.functional.silu(self.fc1(torch.cat([h, torch.ones_like(h)], dim=1)))


# ---------------------------------------------------------------------------------------------- blocks
class EdgeBlock(nn.Module):
    """(d (E,), z_j (E,), z_i (E,)) -> invariant edge features h (E, edge_channels)."""

    def __init__(self, edge_channels: int, distance_expansion: DistanceExpansion, max_num_elements: int):
        super().__init__()
        self.distance_expansion = distance_expansion  # shared with the model (one set of offsets)
        self.fc1_dist = nn.Linear(distance_expansion.num_output, edge_channels)
        self.source_embedding = nn.Embedding(max_num_elements, edge_channels)
        self.target_embedding = nn.Embedding(max_num_elements, edge_channels)
        nn.init.uniform_(self.source_embedding.weight.data, -0.001, 0.001)
        nn.init.uniform_(self.target_embedding.weight.data, -0.001, 0.001)
        self.fc1_edge_attr = nn.Linear(edge_channels, edge_channels)

    def forward(self, d, z_source, z_target):
        h = self.fc1_dist(self.distance_expansion(d))
        h = nn.functional.silu(self.source_embedding(z_source) + self.target_embedding(z_target) + h)
        return nn.functional.silu(self.fc1_edge_attr(h))


class SO2Conv(nn.Module):
    """fairchem's SO(2) convolution of order m > 0 on (E, 2, (L - m + 1) C) (real part = +m, imaginary = -m)."""

    def __init__(self, m: int, lmax: int, channels: int, hidden: int, edge_channels: int):
        super().__init__()
        n = (lmax - m + 1) * channels
        self.hidden = hidden
        self.fc1_dist = nn.Linear(edge_channels, 2 * hidden)
        self.fc1_r = nn.Linear(n, hidden, bias=False)
        self.fc2_r = nn.Linear(hidden, n, bias=False)
        self.fc1_i = nn.Linear(n, hidden, bias=False)
        self.fc2_i = nn.Linear(hidden, n, bias=False)

    def forward(self, x_m: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        w = nn.functional.silu(self.fc1_dist(h)).view(-1, 2, self.hidden)
        x_r = self.fc2_r(self.fc1_r(x_m) * w[:, 0:1])
        x_i = self.fc2_i(self.fc1_i(x_m) * w[:, 1:2])
        return torch.stack((x_r[:, 0] - x_i[:, 1], x_r[:, 1] + x_i[:, 0]), dim=1)


class SO2Block(nn.Module):
    """SO(2) convolutions of every order on edge-frame coefficients (E, K_r, C) with |m| <= mmax."""

    def __init__(self, lmax: int, mmax: int, channels: int, hidden: int, edge_channels: int):
        super().__init__()
        self.lmax, self.mmax, self.channels = lmax, mmax, channels
        self.fc1_dist0 = nn.Linear(edge_channels, hidden)
        self.fc1_m0 = nn.Linear((lmax + 1) * channels, hidden, bias=False)
        self.fc2_m0 = nn.Linear(hidden, (lmax + 1) * channels, bias=False)
        self.so2_conv = nn.ModuleList([SO2Conv(m, lmax, channels, hidden, edge_channels)
                                       for m in range(1, mmax + 1)])
        # positions in the reduced (|m| <= mmax, e3nn-ordered) stack of order +m and -m, l = |m|..L
        red = {(l, m): i for i, (l, m) in enumerate((l, m) for l in range(lmax + 1)
                                                     for m in range(-min(l, mmax), min(l, mmax) + 1))}
        self._pos = {m: [red[(l, m)] for l in range(abs(m), lmax + 1)] for m in range(-mmax, mmax + 1)}
        order = self._pos[0] + [i for m in range(1, mmax + 1) for i in self._pos[m] + self._pos[-m]]
        self.register_buffer("m_order", torch.tensor(order, dtype=torch.long), persistent=False)
        self.register_buffer("l_order", torch.argsort(torch.tensor(order)), persistent=False)

    def forward(self, x: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        E, C = x.shape[0], self.channels
        x = x.index_select(1, self.m_order)  # m-major: m = 0, then (+1, -1), (+2, -2), ...
        n0 = self.lmax + 1
        w0 = nn.functional.silu(self.fc1_dist0(h))
        parts = [self.fc2_m0(self.fc1_m0(x[:, :n0].reshape(E, n0 * C)) * w0).view(E, n0, C)]
        k = n0
        for m, conv in enumerate(self.so2_conv, start=1):
            size = self.lmax - m + 1
            y = conv(x[:, k:k + 2 * size].reshape(E, 2, size * C), h)
            parts.append(y.reshape(E, 2 * size, C))
            k += 2 * size
        return torch.cat(parts, dim=1).index_select(1, self.l_order)


class MessageBlock(nn.Module):
    def __init__(self, cfg: ESCN.Config, distance_expansion: DistanceExpansion):
        super().__init__()
        L, M, C = cfg.lmax, cfg.mmax, cfg.sphere_channels
        self.edge_block = EdgeBlock(cfg.edge_channels, distance_expansion, cfg.max_num_elements)
        self.so2_block_source = SO2Block(L, M, C, cfg.hidden_channels, cfg.edge_channels)
        self.so2_block_target = SO2Block(L, M, C, cfg.hidden_channels, cfg.edge_channels)

    def forward(self, x, z, d, sender, receiver, rot: EdgeRotation, grid: SphereGrid, grid_act: bool = True):
        h = self.edge_block(d, z[sender], z[receiver])
        y = self.so2_block_source(rot.to_edge(x[sender]), h) + self.so2_block_target(rot.to_edge(x[receiver]), h)
        if grid_act:
            y = grid.act(y)
        y = rot.from_edge(y)
        return torch.zeros_like(x).index_add_(0, receiver, y)


class LayerBlock(nn.Module):
    def __init__(self, cfg: ESCN.Config, distance_expansion: DistanceExpansion):
        super().__init__()
        C = cfg.sphere_channels
        self.message_block = MessageBlock(cfg, distance_expansion)
        self.fc1_sphere = nn.Linear(2 * C, C, bias=False)
        self.fc2_sphere = nn.Linear(C, C, bias=False)
        self.fc3_sphere = nn.Linear(C, C, bias=False)

    def forward(self, x, z, d, sender, receiver, rot, edge_grid, node_grid, grid_act: bool = True):
        m = self.message_block(x, z, d, sender, receiver, rot, edge_grid, grid_act)
        g = torch.cat([node_grid.to_grid(x), node_grid.to_grid(m)], dim=-1)
        g = self.fc3_sphere(nn.functional.silu(self.fc2_sphere(nn.functional.silu(self.fc1_sphere(g)))))
        return node_grid.from_grid(g)


class SphereMLP(nn.Module):
    """fairchem's EnergyBlock / ForceBlock MLP on the sphere samples: (n, P, C) -> (n, P)."""

    def __init__(self, channels: int):
        super().__init__()
        self.fc1 = nn.Linear(channels, channels)
        self.fc2 = nn.Linear(channels, channels)
        self.fc3 = nn.Linear(channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc3(nn.functional.silu(self.fc2(nn.functional.silu(self.fc1(x))))).squeeze(-1)


# ----------------------------------------------------------------------------------- grids and frames
class SphereGrid:
    """Projection of (.., K_r, C) coefficients (|m| <= mmax) to fairchem's S2 grid and back, and the pointwise
    SiLU there; the float64 matrices are cast once per (device, dtype)."""

    def __init__(self, lmax: int, mmax: int, resolution: int | None):
        self._to64, self._from64 = grid_matrices(lmax, mmax, resolution)
        self._cache: dict = {}

    def _mats(self, like: torch.Tensor):
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = (self._to64.to(device=like.device, dtype=like.dtype),
                                self._from64.to(device=like.device, dtype=like.dtype))
        return self._cache[key]

    def to_grid(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bai,zic->zbac", self._mats(x)[0], x)

    def from_grid(self, g: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bai,zbac->zic", self._mats(g)[1], g)

    def act(self, x: torch.Tensor) -> torch.Tensor:
        return self.from_grid(nn.functional.silu(self.to_grid(x)))


def fairchem_edge_rotation(v: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """fairchem's ``eSCN._init_edge_rot_mat``: the rotation R (E, 3, 3) with R v/|v| = e_y, its roll set by the
    reference vectors ``noise`` - 0.5 (E, 3) (``torch.rand``) or one of two 90-degree turns of them."""
    norm_x = v / torch.sqrt(torch.sum(v**2, dim=1)).view(-1, 1)
    v2 = noise - 0.5
    v2 = v2 / torch.sqrt(torch.sum(v2**2, dim=1)).view(-1, 1)
    v2b, v2c = v2.clone(), v2.clone()
    v2b[:, 0], v2b[:, 1] = -v2[:, 1], v2[:, 0]
    v2c[:, 1], v2c[:, 2] = -v2[:, 2], v2[:, 1]
    dot_b = torch.abs(torch.sum(v2b * norm_x, dim=1)).view(-1, 1)
    dot_c = torch.abs(torch.sum(v2c * norm_x, dim=1)).view(-1, 1)
    dot = torch.abs(torch.sum(v2 * norm_x, dim=1)).view(-1, 1)
    v2 = torch.where(torch.gt(dot, dot_b), v2b, v2)
    dot = torch.abs(torch.sum(v2 * norm_x, dim=1)).view(-1, 1)
    v2 = torch.where(torch.gt(dot, dot_c), v2c, v2)
    if v.shape[0] and float(torch.abs(torch.sum(v2 * norm_x, dim=1)).max()) >= 0.99:
        raise ModelError("eSCN edge frame: a reference vector is aligned with its edge (fairchem asserts the "
                         "same); call the model again (the reference vectors are random)")
    norm_z = torch.cross(norm_x, v2, dim=1)
    norm_z = norm_z / torch.sqrt(torch.sum(norm_z**2, dim=1, keepdim=True))
    norm_z = norm_z / torch.sqrt(torch.sum(norm_z**2, dim=1)).view(-1, 1)
    norm_y = torch.cross(norm_x, norm_z, dim=1)
    norm_y = norm_y / torch.sqrt(torch.sum(norm_y**2, dim=1, keepdim=True))
    return torch.stack([norm_z, norm_x, -norm_y], dim=1)  # rows z, x, -y


class EdgeRotation:
    """Per-edge rotation of coefficient stacks into fairchem's edge frame (keeping |m| <= mmax) and back.

    D_e = Dy(-gamma_e) D(R_u)^T with R_u molequi's ``EdgeFrame`` rotation (R_u e_y = u) and gamma_e the roll
    that turns it into the frame asked for (R_e^T = R_u R_y(gamma_e)); gamma = 0 for ``edge_roll: fixed``.
    The rows |m| <= mmax of D_e, (E, K_r, K), are formed once per call (``EdgeFrame`` applied to the identity,
    differentiable in the edge vectors); each rotation is then one batched product, as in fairchem."""

    def __init__(self, frame: EdgeFrame, vec: torch.Tensor, reduced: torch.Tensor, rotation: torch.Tensor | None):
        K = frame.layout.dim
        eye = torch.eye(K, dtype=vec.dtype, device=vec.device).expand(vec.shape[0], K, K)
        D = frame.to_edge(eye, frame.angles(vec))  # (E, K, K): D(R_u)^T
        if rotation is not None:
            M = frame.edge_rotation(vec).transpose(1, 2) @ rotation.transpose(1, 2)  # = R_y(gamma)
            D = frame._rot_y(D, *cos_sin_multiples(M[:, 0, 0], M[:, 0, 2], frame.layout.lmax), inverse=True)
        self.D = D.index_select(1, reduced)  # (E, K_r, K)
        self.Dt = self.D.transpose(1, 2)  # (E, K, K_r): D_e^T restricted to |m| <= mmax

    def to_edge(self, x: torch.Tensor) -> torch.Tensor:
        return torch.bmm(self.D, x)

    def from_edge(self, y: torch.Tensor) -> torch.Tensor:
        return torch.bmm(self.Dt, y)


def fairchem_edge_order(sender: torch.Tensor, receiver: torch.Tensor, unit_shifts: torch.Tensor) -> torch.Tensor:
    """The permutation that puts edges in the order of fairchem's ``radius_graph_pbc``: by centre atom
    (receiver), then neighbour (sender), then cell offset lexicographically (fairchem's offset is minus molequi's
    unit shift). The random edge-frame draws go to the edges in this order."""
    order = torch.arange(receiver.numel(), device=receiver.device)
    keys = [-unit_shifts[:, 2], -unit_shifts[:, 1], -unit_shifts[:, 0], sender, receiver]  # least significant first
    for key in keys:
        order = order[torch.argsort(key[order], stable=True)]
    return order


def fairchem_squared_distances(pos, edge_index, unit_shifts, cell, batch) -> torch.Tensor:
    """Squared edge lengths (E,) as fairchem's ``radius_graph_pbc`` ranks neighbours: in float32 (the only
    precision it runs in), |x_i - (x_j + offset)|^2 with offset = (-unit shift) @ cell. Computing the ranking the
    same way keeps the same neighbours where two distances agree to float32 precision (ties are common in
    slabs: an atom and its images at +-a)."""
    sender, receiver = edge_index[0], edge_index[1]
    pos32 = pos.detach().float()
    cells = cell.detach().float().reshape(-1, 3, 3)
    uc = (-unit_shifts).float()
    if cells.shape[0] == 1:
        off = torch.matmul(uc, cells[0])
    else:
        off = torch.bmm(uc.unsqueeze(1), cells[batch[receiver]]).squeeze(1)
    diff = pos32[receiver] - (pos32[sender] + off)
    return torch.sum(diff**2, dim=1)


def max_neighbors_mask(receiver: torch.Tensor, d2: torch.Tensor, n_nodes: int, k: int) -> torch.Tensor:
    """fairchem's neighbour cut as eSCN's graph uses it (``get_max_neighbors_mask`` with
    ``enforce_max_strictly=True``, ``generate_graph``'s default for eSCN): every receiver keeps its k nearest
    edges; the edges must be in fairchem's order (``fairchem_edge_order``), ties go as fairchem's ``torch.sort``
    of the same (receiver, slot) table sends them. d2: squared distances (E,)."""
    keep = torch.ones_like(receiver, dtype=torch.bool)
    if k <= 0 or receiver.numel() == 0:
        return keep
    counts = torch.bincount(receiver, minlength=n_nodes)
    width = int(counts.max())
    if width <= k:
        return keep
    start = torch.cumsum(counts, 0) - counts
    slot = receiver * width + torch.arange(receiver.numel(), device=receiver.device) - start[receiver]
    table = torch.full((n_nodes * width,), float("inf"), dtype=d2.dtype, device=d2.device)
    table.index_copy_(0, slot, d2)
    dist, idx = torch.sort(table.view(n_nodes, width), dim=1)
    dist, idx = dist[:, :k], idx[:, :k] + start.view(-1, 1)
    keep = torch.zeros_like(keep)
    keep[torch.masked_select(idx, torch.isfinite(dist))] = True
    return keep


# ----------------------------------------------------------------------------------------------- model
class ESCN(EnergyModel):
    """eSCN (fairchem-core 1.10.0's ``escn``) with molequi's model interface (module docstring)."""

    @dataclass
    class Config:
        r_max: float = 12.0
        """Cutoff radius, Å (fairchem's ``cutoff``; OC20 S2EF All+MD: 12)."""
        max_neighbors: int = 20
        """Neighbours kept per atom (the nearest, fairchem's strict cut); 0 keeps all."""
        max_num_elements: int = 90
        """Rows of the atomic-number embeddings (atomic numbers must be below it)."""
        num_layers: int = 12
        """Layer blocks (message passing + pointwise grid MLP)."""
        lmax: int = 6
        """Highest degree (fairchem's ``lmax_list: [6]``)."""
        mmax: int = 2
        """Highest order kept in the edge frame (fairchem's ``mmax_list: [2]``)."""
        sphere_channels: int = 128
        """Channels per spherical-harmonic coefficient of the node features."""
        hidden_channels: int = 256
        """Hidden width of the SO(2) convolutions."""
        edge_channels: int = 128
        """Width of the invariant edge features (distance basis + atomic-number embeddings)."""
        num_sphere_samples: int = 128
        """Points on the sphere the energy and force heads sample."""
        distance_function: str = "gaussian"
        """'gaussian', 'sigmoid', 'linearsigmoid' or 'silu' (fairchem's smearings)."""
        basis_width_scalar: float = 2.0
        """Width of each distance function in units of their spacing (OC20 S2EF All+MD: 2.0)."""
        distance_resolution: float = 0.02
        """Spacing of the distance basis, Å (int(r_max / distance_resolution) functions)."""
        grid_resolution: int | None = None
        """Points per angle of every S2 grid (fairchem's ``resolution``); None: fairchem's 2(lmax+1) latitudes x
        2m+1 longitudes (2m+3 when m = lmax), m = mmax on the edge grid, lmax on the node grid."""
        direct_forces: bool = True
        """fairchem's force head from the sphere (not conservative); False: forces = -dE/dx (molequi)."""
        edge_roll: str = "random"
        """'random' (fairchem: a random roll of each edge frame per call) or 'fixed' (molequi: roll 0)."""

        def validate(self) -> None:
            if self.r_max <= 0 or self.distance_resolution <= 0:
                raise ConfigError(f"eSCN r_max and distance_resolution must be positive, got {self.r_max}, "
                                  f"{self.distance_resolution}")
            if not 1 <= self.lmax <= 12:
                raise ConfigError(f"eSCN lmax must be in 1..12, got {self.lmax}")
            if not 1 <= self.mmax <= self.lmax:
                raise ConfigError(f"eSCN mmax must be in 1..lmax={self.lmax}, got {self.mmax}")
            if self.distance_function not in DISTANCE_FUNCTIONS:
                raise ConfigError(f"eSCN distance_function must be one of {', '.join(DISTANCE_FUNCTIONS)}, "
                                  f"got '{self.distance_function}'")
            if self.edge_roll not in EDGE_ROLLS:
                raise ConfigError(f"eSCN edge_roll must be 'random' or 'fixed', got '{self.edge_roll}'")
            if min(self.num_layers, self.sphere_channels, self.hidden_channels, self.edge_channels,
                   self.num_sphere_samples, self.max_num_elements) < 1 or self.max_neighbors < 0:
                raise ConfigError("eSCN sizes (layers, channels, sphere samples, elements) must be >= 1 and "
                                  "max_neighbors >= 0")
            if int(self.r_max / self.distance_resolution) < 2:
                raise ConfigError("eSCN needs r_max / distance_resolution >= 2 distance functions")
            if not self.direct_forces and self.edge_roll != "fixed":
                raise ConfigError("eSCN with direct_forces: false (gradient forces) needs edge_roll: fixed; a "
                                  "random roll per call makes the energy a random function of the positions, "
                                  "whose gradient does not conserve energy in MD")

    def __init__(self, cfg: ESCN.Config, statistics: Statistics):
        super().__init__()
        cfg.validate()
        self.config, self.statistics = cfg, statistics
        self.elements = [int(z) for z in statistics.elements]
        if max(self.elements) >= cfg.max_num_elements:
            raise ConfigError(f"eSCN max_num_elements {cfg.max_num_elements} must exceed the largest atomic "
                              f"number of the elements ({max(self.elements)})")
        self.r_max = float(cfg.r_max)
        self.conservative = not cfg.direct_forces
        self.generator: torch.Generator | None = None  # draws of edge_roll 'random' (None: torch's default)
        L, C = cfg.lmax, cfg.sphere_channels
        self.element_table = ElementTable(self.elements)
        self.sphere_embedding = nn.Embedding(cfg.max_num_elements, C)
        num = int(cfg.r_max / cfg.distance_resolution)
        self.distance_expansion = DistanceExpansion(cfg.distance_function, cfg.r_max, num, cfg.basis_width_scalar)
        self.layer_blocks = nn.ModuleList([LayerBlock(cfg, self.distance_expansion) for _ in range(cfg.num_layers)])
        self.energy_block = SphereMLP(C)
        if cfg.direct_forces:
            self.force_block = SphereMLP(C)
            self.register_buffer("force_scale", torch.tensor(float(statistics.force_rms), dtype=torch.float64))
        pts = sphere_points(cfg.num_sphere_samples)
        self.register_buffer("sphere_points", pts)
        self.register_buffer("sphharm_weights",
                             _in_float64(lambda: o3.spherical_harmonics(list(range(L + 1)), pts, False)))
        self.head = AtomicEnergyHead(statistics, self.elements)
        self.frame = EdgeFrame(list(range(L + 1)), tilt=True)
        self.register_buffer("reduced", reduced_index(L, cfg.mmax), persistent=False)
        self.edge_grid = SphereGrid(L, cfg.mmax, cfg.grid_resolution)
        self.node_grid = SphereGrid(L, L, cfg.grid_resolution)

    @classmethod
    def from_config(cls, cfg: ESCN.Config, statistics: Statistics) -> ESCN:
        return cls(cfg, statistics)

    def config_dict(self) -> dict:
        return asdict(self.config)

    # -- graph --------------------------------------------------------------------------------------------
    def edges(self, data, pos: torch.Tensor, cell: torch.Tensor):
        """(sender, receiver, v) of the edges the model uses, in fairchem's order, the ``max_neighbors`` nearest
        per receiver; v = x_sender - x_receiver (+ shift) (fairchem's ``edge_distance_vec``), (E, 3) Å."""
        ei, shifts = data[K.EDGE_INDEX], data[K.UNIT_SHIFTS]
        order = fairchem_edge_order(ei[0], ei[1], shifts)
        ei = ei[:, order]
        shifts = shifts[order]
        vec = -edge_vectors(pos, ei, shifts, cell, batch_vector(data))
        with torch.no_grad():
            keep = max_neighbors_mask(ei[1], fairchem_squared_distances(pos, ei, shifts, cell, batch_vector(data)),
                                      pos.shape[0], self.config.max_neighbors)
        if not bool(keep.all()):
            ei, vec = ei[:, keep], vec[keep]
        return ei[0], ei[1], vec

    def rotation(self, vec: torch.Tensor) -> EdgeRotation:
        """The edge rotations of this call (a fresh random roll per call for ``edge_roll: random``)."""
        R = None
        if self.config.edge_roll == "random":
            noise = torch.rand(vec.shape, generator=self.generator, dtype=vec.dtype, device=vec.device)
            R = fairchem_edge_rotation(vec, noise)
        return EdgeRotation(self.frame, vec, self.reduced, R)

    # -- trunk ----------------------------------------------------------------------------------------------
    def features(self, data, pos: torch.Tensor, cell: torch.Tensor, grid_act: bool = True):
        """Node features after the last layer (n, (L+1)^2, C); ``grid_act=False`` skips the edge-frame SiLU
        (an exactly equivariant variant, for tests)."""
        numbers = data[K.NUMBERS].reshape(-1).long()
        self.element_table(numbers)  # unknown elements are a ModelError
        sender, receiver, vec = self.edges(data, pos, cell)
        d = torch.sqrt(torch.sum(vec**2, dim=1))
        rot = self.rotation(vec)
        n, L, C = pos.shape[0], self.config.lmax, self.config.sphere_channels
        x = pos.new_zeros(n, (L + 1) ** 2, C)
        x = torch.cat([self.sphere_embedding(numbers).to(pos.dtype)[:, None], x[:, 1:]], dim=1)
        for i, block in enumerate(self.layer_blocks):
            out = block(x, numbers, d, sender, receiver, rot, self.edge_grid, self.node_grid, grid_act)
            x = out if i == 0 else x + out
        return x

    def sphere_values(self, x: torch.Tensor) -> torch.Tensor:
        """x_i(p) (n, P, C): the node functions at the sphere points of the heads."""
        return torch.einsum("abc,pb->apc", x, self.sphharm_weights.to(x.dtype))

    def _energies(self, numbers, xp: torch.Tensor) -> torch.Tensor:
        y = self.energy_block(xp).sum(dim=1) / self.config.num_sphere_samples
        return self.head(self.element_table(numbers), 0.001 * y)

    def atomic_energies(self, data, pos: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """Per-atom energies (n,) in eV from positions (n, 3) Å and cells (B, 3, 3) Å."""
        return self._energies(data[K.NUMBERS].reshape(-1).long(), self.sphere_values(self.features(data, pos, cell)))

    def forward(self, data, compute_forces: bool = True, compute_stress: bool = False,
                grid_act: bool = True) -> dict[str, torch.Tensor]:
        if self.conservative:
            return super().forward(data, compute_forces, compute_stress)
        if compute_stress:
            raise ModelError("an eSCN with direct_forces: true has no stress (its forces are not the gradient "
                             "of its energy); use direct_forces: false, edge_roll: fixed for stress")
        pos = data[K.POS]
        cell = data[K.CELL].reshape(-1, 3, 3).to(pos.dtype)
        xp = self.sphere_values(self.features(data, pos, cell, grid_act))
        energies = self._energies(data[K.NUMBERS].reshape(-1).long(), xp)
        batch = batch_vector(data)
        n_graphs = int(batch.max()) + 1 if batch.numel() else 1
        out = {K.ENERGY: torch.zeros(n_graphs, dtype=energies.dtype, device=energies.device)
               .index_add_(0, batch, energies), K.ENERGIES: energies}
        if compute_forces:
            pts = self.sphere_points.to(xp.dtype)
            f = torch.einsum("np,pk->nk", self.force_block(xp), pts) / self.config.num_sphere_samples
            out[K.FORCES] = self.force_scale.to(f.dtype) * f
        return out


__all__ = ["ESCN", "fairchem_edge_rotation", "fairchem_edge_order", "fairchem_squared_distances", "max_neighbors_mask", "grid_matrices", "sphere_points"]
