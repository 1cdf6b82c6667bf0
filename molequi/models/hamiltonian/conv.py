"""``hamiltonian_conv``: a fast QHNet-style SE(3)-equivariant predictor of Kohn-Sham / Fock matrices.

Registered as ``hamiltonian_conv`` (it was ``qhnet`` before the reference architecture arrived in
``molequi.models.hamiltonian.qhnet``; checkpoints that say ``qhnet`` with this model's fields still load,
see ``molequi.models.hamiltonian.legacy_qhnet_section``). Kept because it is cheaper: at the defaults
(3.2M parameters vs QHNet's 20.2M) a float32 training step takes 0.11 / 0.46 CPU s on 10 waters / 5
ethanols against QHNet's 0.85 / 4.2 (one thread; ``scripts/parity/check.py qhnet --timing``), and it was
the model of the published water numbers; their accuracies on the same data were not compared. It is not
QHNet: its pair block is linear in the node features and its expansion is element-agnostic.

Design (what QHNet does, and what is done differently here for speed):

1. Node interaction layers. Atom features are stacks (n, D, C), D = (lmax+1)^2 components in e3nn order,
   channels last (every linear map is one batched matmul). A layer sends messages along
   every ordered pair (i != j) of a molecule (the full graph, as QHNet does for MD17)::

       m_ij[l3, w] = sum_{(l1, lf, l3), u} W_path[u, w] rad_ij[l1, u] CG(l1, lf, l3).(x_j[l1, u], Y^lf(r_ij))

   with radial modulation rad_ij = MLP(Gaussian basis of |r_ij|), sums them over j, mixes channels per l
   (o3.Linear-like, one weight per l), gates l > 0 by sigmoid(scalars) and adds the residual.
   QHNet evaluates the edge tensor product with e3nn ``TensorProduct`` kernels (O(L^6) per edge); here it
   is an eSCN SO(2) convolution in each edge's frame (``molequi.nn.so2``), the same fully connected
   product with the edge harmonics at O(L^3), which is where most of the speed comes from.
2. Diagonal (self) blocks from node features: a channel-wise product x_i (x) x_i over all CG paths
   (``SparseTP``: the ~2000 non-zero CG entries of lmax 4 as one sparse matrix) plus a linear map of x_i.
   Off-diagonal (pair) blocks from ordered pairs: two SO(2) convolutions of [x_i, x_j] in the pair frame
   with a radial filter and a gate between them (QHNet uses a TP of x_i and x_j with radial weights).
3. Expansion. A block between orbital shells (l1, l2) is a sum over L = |l1-l2|..l1+l2 of Clebsch-Gordan
   coefficients times degree-L features:  B[m1, m2] = sum_{L, M} CG(l1, l2, L)[m1, m2, M] f_L[M].
   The per-L channel reduction (C -> number of shell pairs) is a learnt linear map; the CG contraction,
   the padding of every element into one union layout, and the change from e3nn's real harmonics to
   PySCF's AO order (``OrbitalBasis.pyscf_to_e3nn``) are folded into one fixed matrix G, so a whole
   (padded x padded) atom-pair block is one matmul:  block_flat = concat_L f_L  @  G.
4. Symmetry: H_ij = (B_ij + B_ji^T) / 2, so the assembled H is exactly symmetric.
5. Output: ``fock`` (sum over molecules of nao^2,) in Hartree, row-major flattened full AO matrices in
   **PySCF AO order**, concatenated over the batch in the same layout as the labels
   (``molequi.data.hamiltonian.record_to_data``); ``nao`` (B,).

Equivariance: rotating the molecule by R maps H -> D(R) H D(R)^T with D the block Wigner-D matrix in
PySCF order (``OrbitalBasis.wigner_D``). Like QHNet the model is SE(3)- (not E(3)-) equivariant: it
keeps every rotation-equivariant path, including parity-odd ones such as the cross product.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from molequi import keys as K
from molequi.errors import ConfigError
from molequi.models.hamiltonian.blocks import (
    AOBlockLayout,
    CompiledPredict,
    batch_ptr,
    molecule_pairs,
    structure_of,
)


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass
class HamiltonianConvConfig:
    basis: str = _help("PySCF basis name of the predicted matrices", default="def2-svp")
    elements: list[int] = _help("atomic numbers the model handles", default_factory=lambda: [1, 6, 7, 8, 9])
    channels: int = _help("channels per degree l of the node features", default=64)
    lmax: int = _help("largest degree of node features (>= 2 * basis lmax to reach d-d blocks)", default=4)
    num_layers: int = _help("node interaction layers", default=4)
    num_radial: int = _help("Gaussian radial basis functions", default=32)
    radial_hidden: int = _help("hidden width of the radial MLPs", default=64)
    r_max: float = _help("largest distance covered by the radial basis, Å", default=8.0)
    avg_neighbors: float = _help("message normalisation (sum / sqrt(avg_neighbors))", default=8.0)

    def validate(self) -> None:
        """ConfigError unless node features reach every block: lmax >= 2 x the basis' largest l."""
        from molequi.so3.basis import OrbitalBasis

        basis_lmax = OrbitalBasis(self.basis, tuple(self.elements)).lmax
        if self.lmax < 2 * basis_lmax:
            raise ConfigError(
                f"lmax={self.lmax} cannot express {self.basis} blocks between l={basis_lmax} "
                f"shells; set lmax >= {2 * basis_lmax}"
            )


def _cg_paths(lmax_in: int, lmax_f: int, lmax_out: int):
    return [
        (l1, lf, l3)
        for l1 in range(lmax_in + 1)
        for lf in range(lmax_f + 1)
        for l3 in range(abs(l1 - lf), min(l1 + lf, lmax_out) + 1)
    ]


def _wigner_3j(l1, l2, l3, dtype):
    from e3nn import o3

    # component normalisation: ||CG . (u, v)|| ~ ||u|| ||v||
    return (o3.wigner_3j(l1, l2, l3, dtype=torch.float64) * math.sqrt(2 * l3 + 1)).to(dtype)


class GaussianRBF(nn.Module):
    """Gaussians on a grid over [0, r_max] Å: (E,) distances -> (E, num) features."""

    def __init__(self, num: int, r_max: float):
        super().__init__()
        self.register_buffer("centers", torch.linspace(0.0, r_max, num))
        self.gamma = 0.5 / (r_max / (num - 1)) ** 2

    def forward(self, r):
        return torch.exp(-self.gamma * (r.unsqueeze(-1) - self.centers) ** 2)


class RadialMLP(nn.Module):
    def __init__(self, n_in: int, hidden: int, n_out: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, n_out)
        )

    def forward(self, x):
        return self.net(x)


def _degree_of_rows(lmax: int) -> torch.Tensor:
    """(D,) degree l of each component row of a (lmax+1)^2 feature."""
    return torch.cat([torch.full((2 * l + 1,), l, dtype=torch.long) for l in range(lmax + 1)])


class LinearL(nn.Module):
    """Per-degree channel mixing of x (n, D, C_in): y[:, rows of l] = x[:, rows of l] @ W_l (+ bias, l=0).

    Equivariant (acts on channels only). One batched matmul over the D = (lmax+1)^2 component rows.
    """

    def __init__(self, lmax: int, c_in: int, c_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(lmax + 1, c_in, c_out) / math.sqrt(c_in))
        self.bias = nn.Parameter(torch.zeros(c_out))
        self.register_buffer("rows", _degree_of_rows(lmax), persistent=False)

    def forward(self, x):
        y = torch.bmm(x.transpose(0, 1), self.weight[self.rows]).transpose(0, 1)  # (n, D, C_out)
        return torch.cat([y[:, :1] + self.bias, y[:, 1:]], dim=1)


class SparseTP(nn.Module):
    """Channel-wise tensor product of two equivariant features with per-(row, path, channel) weights.

        out[K3, r, c] = sum_{p = (l1, l2, l3)} w[r, p, c] sum_{a, b} CG_p[a, b, K3] x[a, r, c] y[b, r, c]

    x: (Dx, R, C), y: (Dy, R, C) or (Dy, R, 1) (e.g. spherical harmonics, broadcast over channels),
    w: (R, n_paths, C). All paths with l1 <= lx, l2 <= ly, l3 <= lout (SO(3): parity is not restricted).
    The 65 CG blocks of lmax 4 have only ~2000 non-zeros, so they are one sparse (rows, Dx*Dy) matrix:
    the product is an outer product, a gather of the non-zeros' columns times their values summed into
    their rows (an index_add, the sparse matmul written with dense ops that ``torch.compile`` traces), a
    weight multiply and an index_add into l3 rows.
    """

    def __init__(self, lx: int, ly: int, lout: int):
        super().__init__()
        self.paths = _cg_paths(lx, ly, lout)
        dx, dy = (lx + 1) ** 2, (ly + 1) ** 2
        idx, val, row_path, row_out = [], [], [], []
        r0 = 0
        for k, (l1, l2, l3) in enumerate(self.paths):
            cg = _wigner_3j(l1, l2, l3, torch.float64)
            nz = torch.nonzero(cg.abs() > 1e-12)
            for a, b, m in nz.tolist():
                idx.append((r0 + m, (l1 * l1 + a) * dy + (l2 * l2 + b)))
                val.append(float(cg[a, b, m]))
            row_path.extend([k] * (2 * l3 + 1))
            row_out.extend(range(l3 * l3, l3 * l3 + 2 * l3 + 1))
            r0 += 2 * l3 + 1
        index = torch.tensor(idx, dtype=torch.long).T
        cg = torch.sparse_coo_tensor(index, torch.tensor(val), (r0, dx * dy), check_invariants=True)
        cg = cg.coalesce()
        self.register_buffer("cg_row", cg.indices()[0].clone(), persistent=False)  # sorted by (row, column)
        self.register_buffer("cg_col", cg.indices()[1].clone(), persistent=False)
        self.register_buffer("cg_val", cg.values().to(torch.get_default_dtype()).clone(), persistent=False)
        self.rows = r0
        self.register_buffer("row_path", torch.tensor(row_path), persistent=False)
        self.register_buffer("row_out", torch.tensor(row_out), persistent=False)
        self.dout = (lout + 1) ** 2

    @property
    def num_paths(self) -> int:
        return len(self.paths)

    def forward(self, x, y, w):
        dx, r, c = x.shape
        outer = (x.unsqueeze(1) * y.unsqueeze(0)).reshape(dx * y.shape[0], r * c)  # (Dx*Dy, R*C)
        terms = outer[self.cg_col] * self.cg_val.unsqueeze(1)  # (nnz, R*C)
        z = terms.new_zeros(self.rows, r * c).index_add_(0, self.cg_row, terms).view(-1, r, c)  # (rows, R, C)
        z = z * w.permute(1, 0, 2)[self.row_path]  # per-path weights
        return z.new_zeros(self.dout, r, c).index_add_(0, self.row_out, z)  # (Dout, R, C)


class Gate(nn.Module):
    """SiLU on l = 0; the rows of degree l > 0 multiplied by sigmoid of learnt linear maps of the scalars."""

    def __init__(self, lmax: int, channels: int):
        super().__init__()
        self.gates = nn.Linear(channels, lmax * channels)
        self.lmax, self.channels = lmax, channels
        self.register_buffer("rows", _degree_of_rows(lmax)[1:] - 1, persistent=False)

    def forward(self, x):
        """x (n, D, C) -> (n, D, C)."""
        g = torch.sigmoid(self.gates(x[:, 0])).view(-1, self.lmax, self.channels)  # (n, L, C)
        return torch.cat([torch.nn.functional.silu(x[:, :1]), x[:, 1:] * g[:, self.rows]], dim=1)


class InteractionLayer(nn.Module):
    """One node interaction layer (module docstring, item 1). Features (n, D, C).

    The edge convolution x_j (x) Y(r_ij) with radial weights is evaluated as an eSCN SO(2) convolution
    (``molequi.nn.so2.SO2Linear`` in the edge frame, ``molequi.so3.rotations.EdgeFrame``), which equals a
    fully connected SO(3) tensor product with the edge spherical harmonics at O(L^3) instead of O(L^6).
    """

    def __init__(self, cfg: HamiltonianConvConfig):
        super().__init__()
        from molequi.nn.so2 import SO2Linear

        L, C = cfg.lmax, cfg.channels
        self.pre = LinearL(L, C, C)
        self.conv = SO2Linear(L, C, L, C, radial=True)
        self.radial = RadialMLP(cfg.num_radial, cfg.radial_hidden, self.conv.radial_dim)
        self.post = LinearL(L, C, C)
        self.gate = Gate(L, C)
        self.norm = 1.0 / math.sqrt(cfg.avg_neighbors)

    def forward(self, x, edge_frame, frame, rbf, sender, receiver):
        h = self.pre(x)
        y = self.conv(edge_frame.to_edge(h[sender], frame), self.radial(rbf))  # (E, D, C), edge frame
        msg = edge_frame.from_edge(y, frame)
        agg = torch.zeros_like(h).index_add_(0, receiver, msg * self.norm)  # (n, D, C)
        return x + self.gate(self.post(agg))


class PairBlock(nn.Module):
    """Features of ordered pairs (i, j): two SO(2) convolutions of [x_i, x_j] in the pair's frame with a
    gate between them (both in the edge frame; the gate only uses invariant scalars). (E, D, C)."""

    def __init__(self, cfg: HamiltonianConvConfig):
        super().__init__()
        from molequi.nn.so2 import SO2Linear

        L, C = cfg.lmax, cfg.channels
        self.conv1 = SO2Linear(L, 2 * C, L, C, radial=True)
        self.radial = RadialMLP(cfg.num_radial, cfg.radial_hidden, self.conv1.radial_dim)
        self.gate = Gate(L, C)
        self.conv2 = SO2Linear(L, C, L, C)

    def forward(self, xi, xj, edge_frame, frame, rbf):
        e = edge_frame.to_edge(torch.cat([xi, xj], dim=-1), frame)
        y = self.conv2(self.gate(self.conv1(e, self.radial(rbf))))
        return edge_frame.from_edge(y, frame)


class BlockExpansion(nn.Module):
    """Degree-L features -> (P, P) orbital blocks in PySCF order (P = padded orbitals per atom).

    f: (R, D, C). A learnt per-L map C -> n_L (number of shell pairs whose product contains L), then the
    fixed matrix G (sum_L (2L+1) n_L, P*P) holding CG(l1, l2, L) rotated into PySCF's real harmonics and
    placed at the shell pair's position in the padded block. Returns (R, P, P), Hartree.
    """

    def __init__(self, basis, lmax: int, channels: int):
        super().__init__()
        from molequi.so3.basis import pyscf_to_e3nn

        shells = basis.padded_shells
        P = basis.padded_dim
        starts = np.concatenate([[0], np.cumsum([2 * l + 1 for l in shells])])
        slots: dict[int, list] = {L: [] for L in range(lmax + 1)}  # L -> [(s1, s2)]
        for s1, l1 in enumerate(shells):
            for s2, l2 in enumerate(shells):
                for L in range(abs(l1 - l2), l1 + l2 + 1):
                    if L > lmax:
                        raise ConfigError(
                            f"lmax={lmax} is too small for basis {basis.name}: shells l={l1}, "
                            f"l={l2} need degree {l1 + l2}; set lmax >= {2 * basis.lmax}"
                        )
                    slots[L].append((s1, s2))
        self.Ls = [L for L in range(lmax + 1) if slots[L]]
        self.reduce = nn.ParameterList(
            [nn.Parameter(torch.randn(channels, len(slots[L])) / math.sqrt(channels)) for L in self.Ls]
        )
        rows = sum((2 * L + 1) * len(slots[L]) for L in self.Ls)
        g = np.zeros((rows, P, P))
        r0 = 0
        for L in self.Ls:
            n_L = len(slots[L])
            for k, (s1, s2) in enumerate(slots[L]):
                l1, l2 = shells[s1], shells[s2]
                cg = _wigner_3j(l1, l2, L, torch.float64).numpy()  # (2l1+1, 2l2+1, 2L+1), e3nn basis
                t1, t2 = pyscf_to_e3nn(l1), pyscf_to_e3nn(l2)  # v_e3nn = T v_pyscf
                cg_p = np.einsum("am,bn,abk->mnk", t1, t2, cg)  # PySCF basis for the orbital indices
                for M in range(2 * L + 1):
                    # feature (L, M, slot k) sits at row r0 + M * n_L + k   (M-major, as f_L @ W flattens)
                    g[r0 + M * n_L + k, starts[s1] : starts[s1 + 1], starts[s2] : starts[s2 + 1]] = cg_p[
                        :, :, M
                    ]
            r0 += (2 * L + 1) * n_L
        self.register_buffer("G", torch.as_tensor(g.reshape(rows, P * P), dtype=torch.get_default_dtype()))
        self.P = P

    def forward(self, f):
        """f (R, D, C) -> (R, P, P)."""
        parts = [(f[:, L * L : (L + 1) ** 2] @ w).flatten(1) for L, w in zip(self.Ls, self.reduce)]
        return (torch.cat(parts, dim=1) @ self.G).view(-1, self.P, self.P)


class HamiltonianConv(CompiledPredict, nn.Module):
    """Predicts the Fock matrix (Hartree, PySCF AO order) of each molecule in a batch. See module docstring.

    ``forward(data) -> {"fock": (sum nao^2,), "nao": (B,), "blocks": (pairs, P, P)}``.
    """

    Config = HamiltonianConvConfig

    def __init__(self, cfg: HamiltonianConvConfig | None = None):
        super().__init__()
        from molequi.so3.basis import OrbitalBasis

        cfg = cfg or HamiltonianConvConfig()
        cfg.validate()
        self.cfg = cfg
        self.basis = OrbitalBasis(cfg.basis, tuple(cfg.elements))
        L, C = cfg.lmax, cfg.channels
        zmax = max(self.basis.elements)
        self.embed = nn.Embedding(zmax + 1, C)
        self.layout = AOBlockLayout(self.basis)
        self.rbf = GaussianRBF(cfg.num_radial, cfg.r_max)
        self.layers = nn.ModuleList([InteractionLayer(cfg) for _ in range(cfg.num_layers)])
        # diagonal blocks
        self.diag_a, self.diag_b, self.diag_lin = LinearL(L, C, C), LinearL(L, C, C), LinearL(L, C, C)
        self.diag_tp = SparseTP(L, L, L)
        self.diag_w = nn.Parameter(torch.ones(self.diag_tp.num_paths, C))
        self.diag_out = BlockExpansion(self.basis, L, C)
        # off-diagonal blocks
        from molequi.so3.rotations import EdgeFrame

        self.edge_frame = EdgeFrame(list(range(L + 1)))
        self.pair = PairBlock(cfg)
        self.pair_out = BlockExpansion(self.basis, L, C)
        P = self.basis.padded_dim
        # per-element invariant reference of the diagonal block (data-dependent initialisation, see
        # ``fit_reference``): saved with the weights
        self.register_buffer("ref_blocks", torch.zeros(zmax + 1, P, P))
        self.register_buffer("ref_fitted", torch.zeros(zmax + 1, dtype=torch.bool))
        starts = np.concatenate([[0], np.cumsum([2 * l + 1 for l in self.basis.padded_shells])])
        self._same_l_pairs = [
            (int(starts[a]), int(starts[b]), 2 * la + 1)
            for a, la in enumerate(self.basis.padded_shells)
            for b, lb in enumerate(self.basis.padded_shells)
            if la == lb
        ]

    @classmethod
    def from_config(cls, cfg, statistics=None):
        return cls(cfg)

    #: the key under which ``prepare_batch`` stores the batch's elements (a list of Python ints)
    ELEMENTS_KEY = "elements_present"

    def prepare_batch(self, data):
        """``data`` with its pair structure and its elements (as Python ints, ``ELEMENTS_KEY``) computed on the
        CPU batch before the device transfer: the reference check of a training step is then made on the host."""
        data = super().prepare_batch(data)
        data[self.ELEMENTS_KEY] = sorted(set(data[K.NUMBERS].tolist()))
        return data

    def forward(self, data) -> dict[str, torch.Tensor]:
        z = data[K.NUMBERS]
        structure = structure_of(data, self.layout)  # integer indices (blocks.structure_of): not compiled
        if self.training and "fock" in data:
            present = data[self.ELEMENTS_KEY] if self.ELEMENTS_KEY in data else None
            self._fit_missing_references(z, batch_ptr(data, z), data.fock, present)
        return self.run_predict(z, data[K.POS], structure)

    def predict(self, z, pos, structure: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model on atomic numbers (n,), positions (n, 3) Å and the batch's pair structure
        (``AOBlockLayout.pair_structure``): tensor operations only, no data-dependent size, no host sync."""
        s_idx, r_idx = structure["pair_j"], structure["pair_i"]  # message from j (sender) to i (receiver)
        C, L = self.cfg.channels, self.cfg.lmax
        n = z.shape[0]
        D = (L + 1) ** 2
        x = torch.cat([self.embed(z).unsqueeze(1), pos.new_zeros(n, D - 1, C)], dim=1)  # (n, D, C)
        vec = pos[r_idx] - pos[s_idx]  # pos[receiver] - pos[sender], Å
        rbf = self.rbf(vec.norm(dim=-1))  # (E, num_radial)
        frame = self.edge_frame.angles(vec)
        for layer in self.layers:
            x = layer(x, self.edge_frame, frame, rbf, s_idx, r_idx)
        # diagonal blocks (one per atom): channel-wise x (x) x over all CG paths, plus x
        d = self.diag_tp(
            self.diag_a(x).transpose(0, 1),
            self.diag_b(x).transpose(0, 1),
            self.diag_w.unsqueeze(0).expand(n, -1, -1),
        ).transpose(0, 1)
        diag = self.diag_out(d + self.diag_lin(x)) + self.ref_blocks[z]  # (n, P, P)
        # off-diagonal blocks (one per ordered pair i != j), from the same pair list as the messages
        offd = self.pair_out(self.pair(x[r_idx], x[s_idx], self.edge_frame, frame, rbf))  # (E, P, P)
        # all pairs in molequi order, symmetrised: H_ij = (B_ij + B_ji^T) / 2
        P = self.basis.padded_dim
        reverse = structure["reverse"]
        blocks = pos.new_zeros(reverse.shape[0], P, P)
        blocks = blocks.index_copy(0, structure["diag"], diag).index_copy(0, structure["off"], offd)
        blocks = 0.5 * (blocks + blocks[reverse].transpose(1, 2))
        return {"fock": blocks.reshape(-1)[structure["ao"]], "nao": structure["nao"], "blocks": blocks}

    def _fit_missing_references(self, z, ptr, fock, present: list[int] | None = None) -> None:
        """``fit_reference`` for the elements of ``z`` without a reference yet. The fitted elements are kept on
        the host (read from ``ref_fitted`` once, and again after a load), so with ``present``, the
        batch's elements as Python ints (``prepare_batch``), a batch whose elements all have a reference costs
        no host sync, even when an element of the basis never comes; without it, one read of ``z`` per step
        until every element of the basis has a reference."""
        fitted = getattr(self, "_fitted_elements", None)
        if fitted is None:
            fitted = self._fitted_elements = set(torch.nonzero(self.ref_fitted).flatten().tolist())
        if fitted >= set(self.basis.elements) or (present is not None and fitted >= set(present)):
            return
        if present is None and bool(self.ref_fitted[z].all()):
            return
        i, j, mol, _ = molecule_pairs(ptr)
        self.fit_reference(z, fock, self.layout.scatter_index(z, ptr, i, j, mol), i == j)
        self._fitted_elements = fitted | set(torch.unique(z).tolist() if present is None else present)

    def _load_from_state_dict(self, *args, **kwargs):
        self._fitted_elements = None  # the loaded ref_fitted decides again
        super()._load_from_state_dict(*args, **kwargs)

    @torch.no_grad()
    def fit_reference(self, z, fock, index, is_diag) -> None:
        """Set the reference diagonal block of every element of ``z`` not fitted yet from labels ``fock``.

        The reference is the rotation-invariant part of the element's mean diagonal block: on each pair of
        shells of equal l the block c * I with c = trace / (2l+1) (D (c I) D^T = c I, so equivariance holds).
        Called once per element from the first training batch that contains it (like a data-dependent
        initialisation); afterwards the network only learns the deviation from it.
        """
        flat, valid, _, _ = index
        flat, valid = flat[is_diag], valid[is_diag]
        target = torch.zeros(valid.shape, dtype=self.ref_blocks.dtype, device=z.device)
        target[valid] = fock[flat[valid]].to(target.dtype)
        for el in torch.unique(z).tolist():
            if bool(self.ref_fitted[el]):
                continue
            mean = target[z == el].mean(0)
            ref = torch.zeros_like(mean)
            for a, b, d in self._same_l_pairs:
                c = torch.diagonal(mean[a : a + d, b : b + d]).sum() / d
                ref[a : a + d, b : b + d] = c * torch.eye(d, dtype=ref.dtype, device=ref.device)
            self.ref_blocks[el] = ref * self.padded_mask(el)
            self.ref_fitted[el] = True

    def padded_mask(self, el: int) -> torch.Tensor:
        m = (self.layout.slot_table[el] >= 0).to(self.ref_blocks.dtype)
        return m.unsqueeze(1) * m.unsqueeze(0)


def build_conv_for_params(target: float = 20e6, **kw) -> HamiltonianConvConfig:
    """A config with about ``target`` parameters (channels scaled), for speed comparisons with QHNet."""
    lo, hi = 8, 1024
    while hi - lo > 4:
        mid = (lo + hi) // 2
        n = sum(p.numel() for p in HamiltonianConv(HamiltonianConvConfig(channels=mid, **kw)).parameters())
        lo, hi = (mid, hi) if n < target else (lo, mid)
    return HamiltonianConvConfig(channels=lo, **kw)


__all__ = ["HamiltonianConv", "HamiltonianConvConfig", "BlockExpansion", "SparseTP"]
