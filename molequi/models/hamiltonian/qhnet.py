"""QHNet (Yu, Xu, Qian, Ji, ICML 2023): Kohn-Sham / Fock matrices from node-pair interactions.

The architecture of the reference code (divelab/AIRS ``OpenDFT/QHNet/models/QHNet.py``; MD17 sizes from
its ``models/__init__.py``), written here from its equations with e3nn modules; ``molequi import qhnet``
reads the reference's checkpoints and ``scripts/parity/check.py qhnet`` checks the two programs agree.

Notation: x_i node features, Y(r_ij) the real spherical harmonics (component normalisation) of
r_ij = pos_i - pos_j evaluated on the permuted vector (y, z, x) as the reference does, rbf_ij the radial
basis, "Linear" an e3nn ``o3.Linear`` (channel mixing per degree l, bias on scalars), "MLP" an e3nn
``FullyConnectedNet`` with the shifted softplus, (x)_uvu / (x)_uuu e3nn tensor products of those modes.

1. Radial basis: exponential Bernstein polynomials with a smooth cutoff c (PhiSNet)::

       b_k(r) = C(K-1, k) e^{-(K-1-k) r} (1 - e^{-r})^k f(r),   f(r) = exp(-r^2 / ((c - r)(c + r))), r < c.

2. Node embedding x_i = E[Z_i] (hidden_size scalars).
3. ``num_layers`` node layers (NodeInteraction) on the radius graph (|r_ij| < max_radius)::

       g = NormGate(x); s_ij = [x'_i^0, x'_j^0, <x'_i, x'_j>_{l>=1}] with x' = Linear(x) (scalars of both
       ends and per-channel inner products); m_ij = (Linear(g)_j (x)_uvu Y(r_ij)) weighted by
       MLP(rbf_ij) * MLP(s_ij);  x_i <- x_i + Linear(sum_j m_ij + Linear(g)_i)

   (no gate, scalar invariants of x itself, and no residuals in the first layer, whose input is scalar).
   NormGate(x): scalars -> MLP([scalars, |x^l| per channel]); every l >= 1 channel multiplied by its own
   output of that MLP (sigmoid-free gate on norms).

4. From layer ``start_layer + 1`` on, diagonal features f_i and off-diagonal features f_ij grow layer by
   layer from the current node features (progressive construction)::

       f_i  <- f_i + Linear(NormGate(Linear(NormGate(x_i)) (x)_uuu Linear(NormGate(x_i)) + x_i))
       f_ij <- f_ij + Linear(NormGate((Linear(NormGate(x))_j (x)_uuu Linear(NormGate(x))_i)
                                       weighted by MLP(rbf_ij) * MLP([x'^0_i, x'^0_j, <x'_i, x'_j>])))

   over all ordered pairs i != j of a molecule (the full graph). The uuu products are channel-wise
   x_i (x) x_j products over every path l1 (x) l2 -> l3 <= lmax: QHNet's node-pair interaction.
5. Expansion with element-dependent weights: for shells a, b of the padded basis and every degree L in
   l_a (x) l_b::

       B[a m, b n] = (1/C) sum_{w, M} CG(l_a, l_b, L)[m, n, M] (W_{L a b}[w] f_L[w, M] + beta_{ab} d_{L0}),

   W = MLP(E[Z_i]) for diagonal blocks, MLP([E[Z_i], E[Z_j]]) for pair blocks, biases beta likewise
   (the reference's "with bias" model, the one its MD17 config trains). f is first reduced to
   ``bottle_hidden_size`` channels by a Linear.
6. H_ii = B_ii + B_ii^T, H_ij = B_ij + B_ji^T (exactly symmetric), blocks moved from the permuted
   harmonics to PySCF's AO order and scattered into the (sum nao^2,) layout of the labels (Hartree).

Symmetry. As in the reference, the diagonal / pair layers and the expansion label every degree as even
(``parity_paths: false``): they keep the parity-odd paths (l1 + l2 + l3 odd, e.g. the cross product), so
the model is rotation- but not reflection-equivariant. ``parity_paths: true`` uses the true parities
(l odd = odd) in those layers, drops those paths and is E(3)-equivariant; it cannot load reference weights.

Differences from the reference code: the radius graph has no neighbour cap (torch_cluster's default keeps
32 neighbours per atom, which only matters above 33 atoms within max_radius); ``receiver_scalars: true``
reproduces the original "with bias" model's node-layer invariants [x'^0_i, x'^0_i, ...] (the receiver's
scalars twice, fixed upstream in divelab/AIRS issue 23), which its published checkpoints were trained with.
The pair layers' invariant MLP uses SiLU (the node layers' MLPs the shifted softplus), as the reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from molequi import keys as K
from molequi.errors import ConfigError
from molequi.models.hamiltonian.blocks import AOBlockLayout, CompiledPredict, structure_of


def _help(text: str, **kw):
    return field(metadata={"help": text}, **kw)


@dataclass
class QHNetConfig:
    basis: str = _help("PySCF basis name of the predicted matrices", default="def2-svp")
    elements: list[int] = _help("atomic numbers the model handles", default_factory=lambda: [1, 6, 7, 8, 9])
    hidden_size: int = _help("channels per degree of the node features (QHNet MD17: 128)", default=128)
    bottle_hidden_size: int = _help("channels per degree entering the expansion (QHNet: 32)", default=32)
    num_layers: int = _help("node interaction layers (QHNet: 5)", default=5)
    start_layer: int = _help("diagonal / pair features are built from layers start_layer+1 on (QHNet: 2)",
                             default=2)
    lmax: int = _help("largest degree of features and edge harmonics (QHNet: 4; >= 2 x basis lmax)",
                      default=4)
    max_radius: float = _help("radius graph and radial cutoff, Å (QHNet MD17: 15)", default=15.0)
    num_radial: int = _help("exponential Bernstein radial functions (QHNet MD17: 16)", default=16)
    num_embeddings: int = _help("rows of the atomic-number embedding (Z < this; QHNet: 10)", default=10)
    receiver_scalars: bool = _help(
        "node-layer invariants use the receiver's scalars twice, as the original 'with bias' QHNet "
        "(set by `molequi import qhnet`); false = the fixed form with both ends' scalars", default=False)
    parity_paths: bool = _help(
        "true parities in the diagonal/pair layers and expansion (E(3)-equivariant); false = QHNet's "
        "all-even labels, rotation-equivariant only", default=False)
    r_max: ClassVar[float | None] = None  # no trainer-built neighbour graph: the model lists its own pairs

    def validate(self) -> None:
        """ConfigError for sizes the architecture cannot take."""
        from molequi.so3.basis import OrbitalBasis

        basis_lmax = OrbitalBasis(self.basis, tuple(self.elements)).lmax
        if self.lmax < 2 * basis_lmax:
            raise ConfigError(f"lmax={self.lmax} cannot express {self.basis} blocks between l={basis_lmax} "
                              f"shells; set lmax >= {2 * basis_lmax}")
        if not 0 <= self.start_layer < self.num_layers - 1:
            raise ConfigError(f"start_layer={self.start_layer} leaves no diagonal/pair layer among "
                              f"num_layers={self.num_layers}; need 0 <= start_layer <= num_layers - 2")
        if max(self.elements) >= self.num_embeddings:
            raise ConfigError(f"num_embeddings={self.num_embeddings} has no row for Z={max(self.elements)}")
        for name in ("hidden_size", "bottle_hidden_size", "num_radial"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1")
        if self.max_radius <= 0:
            raise ConfigError("max_radius must be > 0")


# ----------------------------------------------------------------------------------------------- irreps


def _degrees(mul: int, lmax: int, natural: bool):
    """mul x (0, 1, ..., lmax) with parity (-1)^l (``natural``) or all even."""
    from e3nn import o3

    return o3.Irreps([(mul, (l, (-1) ** l if natural else 1)) for l in range(lmax + 1)])


def _products(irreps1, irreps2, target, mode: str):
    """Irreps and e3nn instructions of the tensor product paths irreps1 (x) irreps2 that land in ``target``.

    Every output irrep appears once with its multiplicity in ``target``; each path is weighted by
    sqrt(dim(out) / (N * fan)), N the number of paths and fan the channels summed per output channel
    (``mode`` uvu: mul of irreps2; uuu: 1), then outputs are sorted as e3nn sorts irreps."""
    from e3nn import o3

    target = o3.Irreps(target)
    outs, paths = [], []
    for a, (_, ir1) in enumerate(irreps1):
        for b, (_, ir2) in enumerate(irreps2):
            for ir in ir1 * ir2:
                if ir not in target:
                    continue
                entry = (target.count(ir), ir)
                if entry not in outs:
                    outs.append(entry)
                paths.append((a, b, outs.index(entry)))
    fan = {"uvu": lambda a, b: irreps2[b].mul, "uuu": lambda a, b: 1}[mode]
    weights = [math.sqrt(outs[k][1].dim / (len(paths) * fan(a, b))) for a, b, k in paths]
    out, perm, _ = o3.Irreps(outs).sort()
    return out, [(a, b, perm[k], mode, True, w) for (a, b, k), w in zip(paths, weights)]


def _shifted_softplus(x):
    return torch.nn.functional.softplus(x) - math.log(2.0)


def _mlp(sizes):
    """e3nn FullyConnectedNet with the shifted softplus (second-moment normalised, no biases)."""
    from e3nn.nn import FullyConnectedNet

    return FullyConnectedNet(list(sizes), _shifted_softplus)


def _silu_mlp(n_in: int, hidden: int, n_out: int):
    return nn.Sequential(nn.Linear(n_in, hidden), nn.SiLU(), nn.Linear(hidden, n_out))


def _linear(irreps_in, irreps_out, biases: bool = True):
    from e3nn import o3

    return o3.Linear(irreps_in, irreps_out, internal_weights=True, shared_weights=True, biases=biases)


class BernsteinRadial(nn.Module):
    """Exponential Bernstein radial basis with a smooth cutoff (module docstring, item 1): (E,) -> (E, K)."""

    def __init__(self, num: int, cutoff: float):
        super().__init__()
        k = np.arange(num)
        log_binom = [math.lgamma(num) - math.lgamma(v + 1) - math.lgamma(num - v) for v in k]
        self.register_buffer("cutoff", torch.tensor(float(cutoff)))
        self.register_buffer("log_binomial", torch.tensor(log_binom))
        self.register_buffer("decay", torch.tensor(num - 1 - k, dtype=torch.float64))
        self.register_buffer("rise", torch.tensor(k, dtype=torch.float64))
        for name in ("cutoff", "log_binomial", "decay", "rise"):
            setattr(self, name, getattr(self, name).to(torch.get_default_dtype()))
        # forward reads the cutoff as a Python number: torch.compile turns a 0-d buffer into a symbolic float
        # (cutoff.item()) and then restarts its whole analysis to specialise it, twice the compile time
        self._cutoff = float(cutoff)

    def forward(self, r):
        r = r.unsqueeze(-1)
        c = self._cutoff
        inside = r < c
        rc = torch.where(inside, r, torch.zeros_like(r))
        smooth = torch.where(inside, torch.exp(-rc**2 / ((c - rc) * (c + rc))),
                             torch.zeros_like(r))
        log_b = self.log_binomial - self.decay * r + self.rise * torch.log(-torch.expm1(-r))
        return smooth * torch.exp(log_b)


class NormGate(nn.Module):
    """Scalars -> MLP([scalars, channel norms of l >= 1]); each l >= 1 channel times its MLP output."""

    def __init__(self, irreps):
        super().__init__()
        from e3nn import o3

        self.irreps = o3.Irreps(irreps)
        self.n0 = self.irreps[0].dim  # the leading scalars
        channels = self.irreps.num_irreps
        self.norm = o3.Norm(self.irreps)
        self.mlp = _silu_mlp(channels, channels, channels)
        self.scale = o3.ElementwiseTensorProduct(self.irreps[1:], o3.Irreps(f"{channels - self.n0}x0e"))

    def forward(self, x):
        s = torch.cat([x[:, : self.n0], self.norm(x)[:, self.n0:]], dim=-1)
        g = self.mlp(s)
        return torch.cat([g[:, : self.n0], self.scale(x[:, self.n0:], g[:, self.n0:])], dim=-1)


class PairInvariants(nn.Module):
    """[x_a scalars, x_b scalars, per-channel inner products of the l >= 1 parts]: rotation invariants."""

    def __init__(self, irreps):
        super().__init__()
        from e3nn import o3

        irreps = o3.Irreps(irreps).simplify()
        self.n0 = irreps[0].dim
        self.tp = o3.TensorProduct(
            irreps, irreps, o3.Irreps([(mul, "0e") for mul, _ in irreps]),
            [(k, k, k, "uuu", False, 1.0 / ir.dim) for k, (_, ir) in enumerate(irreps)],
            irrep_normalization="component")
        self.dim = irreps.num_irreps + self.n0

    def forward(self, xa, xb, xc):
        """Scalars of xa and xc, inner products of xa and xb."""
        return torch.cat([xa[:, : self.n0], xc[:, : self.n0], self.tp(xa, xb)[:, self.n0:]], dim=-1)


class NodeInteraction(nn.Module):
    """Message passing on the radius graph (module docstring, item 3)."""

    def __init__(self, irreps_in, irreps_hidden, sh_irreps, num_radial: int, first: bool,
                 receiver_scalars: bool):
        super().__init__()
        from e3nn import o3

        self.irreps_in = o3.Irreps(irreps_in)
        self.first, self.receiver_scalars = first, receiver_scalars
        mid, paths = _products(self.irreps_in, sh_irreps, irreps_hidden, "uvu")
        self.tp = o3.TensorProduct(self.irreps_in, sh_irreps, mid, paths, shared_weights=False,
                                   internal_weights=False)
        self.radial_mlp = _mlp([num_radial, 32, self.tp.weight_numel])
        self.invariants = PairInvariants(self.irreps_in)
        self.scalar_mlp = _mlp([self.invariants.dim, 32, self.tp.weight_numel])
        self.out = _linear(mid, irreps_hidden)
        self.gate = NormGate(self.irreps_in)
        self.mix = _linear(self.irreps_in, self.irreps_in)
        self.pre = _linear(self.irreps_in, self.irreps_in)
        self.residual = self.irreps_in == o3.Irreps(irreps_hidden)

    def forward(self, x, sh, rbf, receiver, sender, near):
        """Messages along the pairs (receiver, sender) where ``near`` (E,) is true; the others add exact
        zeros (the radius graph as a mask)."""
        h = x if self.first else self.pre(x)
        s = self.invariants(h[receiver], h[sender], h[receiver] if self.receiver_scalars else h[sender])
        if not self.first:
            x_in, x = x, self.mix(self.gate(x))
        else:
            x_in = x
        msg = self.tp(x[sender], sh, self.radial_mlp(rbf) * self.scalar_mlp(s))
        msg = torch.where(near.unsqueeze(1), msg, torch.zeros_like(msg))
        agg = msg.new_zeros(len(x), msg.shape[1]).index_add_(0, receiver, msg)
        if self.residual:
            return x_in + self.out(agg + x)
        return self.out(agg)


class DiagonalInteraction(nn.Module):
    """Diagonal features from x_i (x)_uuu x_i (module docstring, item 4)."""

    def __init__(self, irreps):
        super().__init__()
        from e3nn import o3

        mid, paths = _products(irreps, irreps, irreps, "uuu")
        self.gate_a, self.lin_a = NormGate(irreps), _linear(irreps, irreps)
        self.gate_b, self.lin_b = NormGate(irreps), _linear(irreps, irreps)
        self.tp = o3.TensorProduct(irreps, irreps, mid, paths, shared_weights=True, internal_weights=True)
        self.gate_out, self.lin_out = NormGate(irreps), _linear(mid, irreps)

    def forward(self, x, f):
        y = self.tp(self.lin_a(self.gate_a(x)), self.lin_b(self.gate_b(x))) + x
        y = self.lin_out(self.gate_out(y))
        return y if f is None else f + y


class PairInteraction(nn.Module):
    """Pair features from x_j (x)_uuu x_i weighted by radial and inner-product invariants (item 4)."""

    def __init__(self, irreps, num_radial: int, hidden: int):
        super().__init__()
        from e3nn import o3

        mid, paths = _products(irreps, irreps, irreps, "uuu")
        self.pre = _linear(irreps, irreps)
        self.invariants = PairInvariants(irreps)
        self.gate_in, self.lin_in = NormGate(mid), _linear(irreps, irreps)
        self.tp = o3.TensorProduct(irreps, irreps, mid, paths, shared_weights=False, internal_weights=False)
        self.radial_mlp = _mlp([num_radial, hidden, self.tp.weight_numel])
        n0 = o3.Irreps(irreps)[0].dim
        self.scalar_mlp = _silu_mlp(self.invariants.dim, n0, self.tp.weight_numel)
        self.gate_out, self.lin_out = NormGate(mid), _linear(mid, irreps)

    def forward(self, x, f, rbf, i, j):
        h = self.pre(x)
        s = self.invariants(h[i], h[j], h[j])
        x = self.lin_in(self.gate_in(x))
        y = self.tp(x[j], x[i], self.radial_mlp(rbf) * self.scalar_mlp(s))
        y = self.lin_out(self.gate_out(y))
        return y if f is None else f + y


class Expansion(nn.Module):
    """Degree-L features -> (P, P) blocks over the padded shells with per-row weights and biases (item 5).

    forward(f (R, irreps dim), weights (R, num_weights), biases (R, num_biases)) -> (R, P, P) in the
    internal harmonics order (padded shells grouped by l, ascending)."""

    def __init__(self, irreps_in, shell_irreps):
        super().__init__()
        from e3nn import o3

        self.irreps_in, self.shells = o3.Irreps(irreps_in), o3.Irreps(shell_irreps)
        offsets = np.concatenate([[0], np.cumsum([m.dim for m in self.shells])])
        self.paths = []  # (input block, row shell group, col shell group, weight offset, bias offset | -1)
        nw = nb = 0
        for a, (mul, ir) in enumerate(self.irreps_in):
            for b, (mb, irb) in enumerate(self.shells):
                for c, (mc, irc) in enumerate(self.shells):
                    if ir not in irb * irc:
                        continue
                    self.paths.append((a, b, c, nw, nb if ir.l == 0 else -1))
                    nw += mul * mb * mc
                    nb += mb * mc if ir.l == 0 else 0
                    cg = o3.wigner_3j(irb.l, irc.l, ir.l, dtype=torch.float64)
                    self.register_buffer(f"cg_{a}_{b}_{c}", cg.to(torch.get_default_dtype()),
                                         persistent=False)
        self.num_weights, self.num_biases = nw, nb
        self.offsets = offsets.tolist()
        self.dim = int(offsets[-1])
        # plain ints for forward (torch.compile cannot guard on e3nn's Irrep, whose len() raises)
        self._blocks_in = [(s.start, s.stop, mul, ir.dim) for s, (mul, ir) in
                           zip(self.irreps_in.slices(), self.irreps_in)]
        self._shell_muls = [mul for mul, _ in self.shells]

    def forward(self, f, weights, biases):
        R = f.shape[0]
        blocks = f.new_zeros(R, self.dim, self.dim)
        feats = [f[:, start:stop].reshape(R, mul, dim) for start, stop, mul, dim in self._blocks_in]
        for a, b, c, w0, b0 in self.paths:
            mul = self._blocks_in[a][2]
            mb, mc = self._shell_muls[b], self._shell_muls[c]
            w = weights[:, w0: w0 + mul * mb * mc].reshape(R, mul, mb, mc)
            t = torch.einsum("rwuv,rwk->ruvk", w, feats[a])
            if b0 >= 0:
                t = t + biases[:, b0: b0 + mb * mc].reshape(R, mb, mc, 1)
            blk = torch.einsum("ijk,ruvk->ruivj", getattr(self, f"cg_{a}_{b}_{c}"), t) / mul
            rows = slice(self.offsets[b], self.offsets[b + 1])
            cols = slice(self.offsets[c], self.offsets[c + 1])
            blocks[:, rows, cols] = blocks[:, rows, cols] + blk.reshape(R, rows.stop - rows.start, -1)
        return blocks


def harmonics_to_pyscf(basis) -> np.ndarray:
    """(P, P) orthogonal Q with v_internal = Q v_pyscf over the padded shells of ``basis``: the internal
    harmonics are e3nn's of the permuted vector (y, z, x), i.e. D_l(P) T_l with T_l = ``pyscf_to_e3nn(l)``
    and P the cyclic permutation (a proper rotation)."""
    from e3nn import o3

    from molequi.so3.basis import pyscf_to_e3nn

    perm = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # e3nn builds Wigner-D from default-dtype constants
    try:
        blocks = [o3.Irrep(l, 1).D_from_matrix(perm).numpy() @ pyscf_to_e3nn(l) for l in basis.padded_shells]
    finally:
        torch.set_default_dtype(previous)
    q = np.zeros((basis.padded_dim,) * 2)
    k = 0
    for blk in blocks:
        q[k: k + len(blk), k: k + len(blk)] = blk
        k += len(blk)
    return np.where(np.abs(q) < 1e-12, 0.0, q)


class QHNet(CompiledPredict, nn.Module):
    """QHNet (module docstring). ``forward(data) -> {"fock": (sum nao^2,), "nao": (B,),
    "blocks": (Pn, P, P)}``
    with ``blocks`` the symmetrised blocks of every ordered atom pair (``molecule_pairs`` order) in PySCF's
    padded AO layout, Hartree."""

    Config = QHNetConfig

    def __init__(self, cfg: QHNetConfig | None = None):
        super().__init__()
        from e3nn import o3

        from molequi.so3.basis import OrbitalBasis

        cfg = cfg or QHNetConfig()
        cfg.validate()
        self.cfg = cfg
        self.basis = OrbitalBasis(cfg.basis, tuple(cfg.elements))
        self.layout = AOBlockLayout(self.basis)
        hs, L = cfg.hidden_size, cfg.lmax
        self.sh_irreps = o3.Irreps.spherical_harmonics(L)
        self._sh_ls = list(range(L + 1))
        hidden = _degrees(hs, L, natural=True)
        inner = _degrees(hs, L, natural=cfg.parity_paths)  # QHNet's all-even labels by default
        bottle = _degrees(cfg.bottle_hidden_size, L, natural=cfg.parity_paths)
        bottle_out = _degrees(cfg.bottle_hidden_size, L, natural=True)
        shells = self.basis.padded_shells
        shell_irreps = o3.Irreps([(shells.count(l), (l, (-1) ** l if cfg.parity_paths else 1))
                                  for l in sorted(set(shells))])
        self.embedding = nn.Embedding(cfg.num_embeddings, hs)
        self.radial = BernsteinRadial(cfg.num_radial, cfg.max_radius)
        self.interactions = nn.ModuleList([
            NodeInteraction(o3.Irreps(f"{hs}x0e") if k == 0 else hidden, hidden, self.sh_irreps,
                            cfg.num_radial, first=k == 0, receiver_scalars=cfg.receiver_scalars)
            for k in range(cfg.num_layers)
        ])
        n_prog = cfg.num_layers - cfg.start_layer - 1
        self.diag_layers = nn.ModuleList([DiagonalInteraction(inner) for _ in range(n_prog)])
        self.pair_layers = nn.ModuleList([PairInteraction(inner, cfg.num_radial, hs) for _ in range(n_prog)])
        self.diag_out = _linear(hidden, bottle_out, biases=False)
        self.pair_out = _linear(hidden, bottle_out, biases=False)
        self.diag_expand, self.pair_expand = Expansion(bottle, shell_irreps), Expansion(bottle, shell_irreps)
        self.diag_weights = _silu_mlp(hs, hs, self.diag_expand.num_weights)
        self.diag_biases = _silu_mlp(hs, hs, self.diag_expand.num_biases)
        self.pair_weights = _silu_mlp(2 * hs, hs, self.pair_expand.num_weights)
        self.pair_biases = _silu_mlp(2 * hs, hs, self.pair_expand.num_biases)
        q = torch.as_tensor(harmonics_to_pyscf(self.basis), dtype=torch.float64)
        self.register_buffer("to_pyscf", q.to(torch.get_default_dtype()), persistent=False)

    @classmethod
    def from_config(cls, cfg, statistics=None):
        return cls(cfg)

    def forward(self, data) -> dict[str, torch.Tensor]:
        z = data[K.NUMBERS]
        structure = structure_of(data, self.layout)  # integer indices (blocks.structure_of): not compiled
        return self.run_predict(z, data[K.POS], structure)

    def predict(self, z, pos, structure: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """The model on atomic numbers (n,), positions (n, 3) Å and the batch's pair structure
        (``AOBlockLayout.pair_structure``): tensor operations only, no data-dependent size, no host sync.

        The radius graph of the node layers is a mask on the full pair list (pairs at or beyond
        ``max_radius`` send exact zeros), not a list of its own, whose length would depend on positions."""
        from e3nn import o3

        pi, pj = structure["pair_i"], structure["pair_j"]  # every ordered pair i != j: the full graph
        vec = pos[pi] - pos[pj]
        dist = vec.norm(dim=-1)
        rbf = self.radial(dist)
        near = dist < self.cfg.max_radius  # the radius graph of the node layers
        sh = o3.spherical_harmonics(self._sh_ls, vec[:, [1, 2, 0]], normalize=True, normalization="component")
        emb = self.embedding(z)
        x, f_ii, f_ij = emb, None, None
        for k, layer in enumerate(self.interactions):
            x = layer(x, sh, rbf, pi, pj, near)
            if k > self.cfg.start_layer:
                f_ii = self.diag_layers[k - self.cfg.start_layer - 1](x, f_ii)
                f_ij = self.pair_layers[k - self.cfg.start_layer - 1](x, f_ij, rbf, pi, pj)
        diag = self.diag_expand(self.diag_out(f_ii), self.diag_weights(emb), self.diag_biases(emb))
        pair_emb = torch.cat([emb[pi], emb[pj]], dim=-1)
        offd = self.pair_expand(self.pair_out(f_ij), self.pair_weights(pair_emb), self.pair_biases(pair_emb))
        P = self.basis.padded_dim
        reverse = structure["reverse"]
        raw = pos.new_zeros(reverse.shape[0], P, P)
        raw = raw.index_copy(0, structure["diag"], diag).index_copy(0, structure["off"], offd)
        blocks = raw + raw[reverse].transpose(1, 2)
        blocks = self.to_pyscf.T @ blocks @ self.to_pyscf  # internal harmonics -> PySCF order
        return {"fock": blocks.reshape(-1)[structure["ao"]], "nao": structure["nao"], "blocks": blocks}


__all__ = ["QHNet", "QHNetConfig", "Expansion", "BernsteinRadial", "harmonics_to_pyscf"]
