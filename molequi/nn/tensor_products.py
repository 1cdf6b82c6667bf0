"""Edge tensor products behind one interface: e3nn reference, SO(2) (eSCN) and Gaunt (S2 grid).

A message-passing convolution (MACE's ``InteractionBlock``) calls::

    tp = build_conv_tensor_product(kind, irreps_node, irreps_sh, target_irreps)
    # (E, irreps_in1.dim), (E, irreps_in2.dim), (E, tp.weight_numel)
    msg = tp(node_feats[sender], edge_sh, weights)
                                                        # -> (E, tp.irreps_out.dim)

and sizes its radial MLP by ``tp.weight_numel`` and its next linear by ``tp.irreps_out``. Kinds::

    ``"e3nn"``  reference: ``o3.TensorProduct`` with MACE's 'uvu' instructions (every allowed
                (l1, l2) -> lo in ``target_irreps``, one weight per channel and path, per edge),
                irreps_out sorted. Cost per edge ~ sum_paths (2l1+1)(2l2+1)(2lo+1) C = O(L^6 C).
    ``"so2"``   the *same* function (same irreps_out, same weight layout, equal outputs to round-off),
                evaluated in each edge's frame where Y(u) has only m = 0 (eSCN). Per path and order m,
                a path l1 (x) l2 -> lo acts as y_{+-m} = a x_{+-m} -+ b x_{-+m} (``molequi.nn.so2``), so
                the cost is O(L^3 C) for rotating the input plus O(sum_paths min(l1, lo)) = O(L^4 C) for
                applying independent per-path weights, plus rotating the output back: O(L^3 C) with
                ``merge_paths=True`` (one block per l), O(L^5 C) in MACE's one-block-per-path layout, whose
                output alone has O(L^4 C) numbers. (The eSCN layer itself, with per-order weights that mix
                channels, is O(L^3 C^2): ``molequi.nn.so2.SO2Convolution``.)
    ``"gaunt"`` the Gaunt product (Luo et al. 2024): per edge and channel the filter
                F_u(s) = sum_{l2} w[l2, u] Y^{l2}(u)(s) is multiplied pointwise with the node function on an
                exact S2 grid and projected back. Equal to the parity-allowed CG paths (l1 + l2 + lo even)
                with weights w[l2, u] * ``gaunt_path_weight(l1, l2, lo)``; it has fewer free weights
                (weight_numel = n_sh_blocks * C) and only natural-parity outputs.
                Cost O(L^4 C) with dense grid projections (``gaunt_backend="grid"``, default), or O(L^3 C)
                through the 2D Fourier basis and the FFT (``gaunt_backend="fft"``,
                ``molequi.nn.gaunt_fft``, Luo et al.'s route; ``"dft"``: the same route with the DFTs as
                matrix products). The same function to round-off, but both are slower than the grid on the
                CPU at L <= 8: ``scripts/bench/gaunt.py``.

``merge_paths=True`` sums the paths that end in the same irrep before returning (one block per (l, p)),
which is what molequi's MACE convolution and eSCN produce; the default keeps MACE's (mace-torch's) layout.

The "so2" and "gaunt" kinds need ``edge_sh`` to be the spherical harmonics of the edge direction, with e3nn's
y-polar convention in any normalisation (MACE: ``o3.SphericalHarmonics(..., normalize=True,
normalization='component')``). The direction is read from the l = 1 block (or passed as ``edge_vectors``).
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import nn

from molequi.errors import ConfigError, ModelError
from molequi.nn.gaunt_fft import GauntFFT
from molequi.nn.s2 import S2Grid
from molequi.nn.scatter import gather, scatter_sum
from molequi.nn.so2 import edge_frame_path_terms
from molequi.registry import Registry
from molequi.so3.rotations import EdgeFrame, irreps_blocks_to_stack, stack_to_irreps_blocks

KINDS = ("e3nn", "so2", "gaunt")
GAUNT_BACKENDS = ("grid", "fft", "dft")


def uvu_instructions(
    irreps_in1: o3.Irreps, irreps_in2: o3.Irreps, target_irreps: o3.Irreps, merge_paths: bool = False
) -> tuple[o3.Irreps, list[tuple[int, int, int, str, bool]]]:
    """MACE's ``tp_out_irreps_with_instructions``: all (i1, i2) -> ir_out in ``target_irreps``, 'uvu', sorted.

    With ``merge_paths`` the paths that end in the same irrep are summed into one output block
    (irreps_out = one block per (l, p), sorted), as MACE's own convolution and eSCN do before mixing channels.
    """
    target = o3.Irreps(target_irreps)
    if merge_paths:
        mul = irreps_in1[0].mul
        found = sorted(
            {
                ir_out
                for _, ir_in in irreps_in1
                for _, ir_edge in irreps_in2
                for ir_out in ir_in * ir_edge
                if ir_out in target
            }
        )
        irreps_out = o3.Irreps([(mul, ir) for ir in found])
        instructions = [
            (i, j, found.index(ir_out), "uvu", True)
            for i, (_, ir_in) in enumerate(irreps_in1)
            for j, (_, ir_edge) in enumerate(irreps_in2)
            for ir_out in ir_in * ir_edge
            if ir_out in target
        ]
        return irreps_out, sorted(instructions, key=lambda x: x[2])
    out, instructions = [], []
    for i, (mul, ir_in) in enumerate(irreps_in1):
        for j, (_, ir_edge) in enumerate(irreps_in2):
            for ir_out in ir_in * ir_edge:
                if ir_out in target:
                    k = len(out)
                    out.append((mul, ir_out))
                    instructions.append((i, j, k, "uvu", True))
    irreps_out = o3.Irreps(out)
    irreps_out, permut, _ = irreps_out.sort()
    instructions = [(i1, i2, permut[io], mode, train) for i1, i2, io, mode, train in instructions]
    instructions = sorted(instructions, key=lambda x: x[2])
    return irreps_out, instructions


def _edge_direction(edge_sh: torch.Tensor, irreps_sh: o3.Irreps, edge_vectors: torch.Tensor | None):
    if edge_vectors is not None:
        return edge_vectors
    for s, (_, ir) in zip(irreps_sh.slices(), irreps_sh):
        if ir.l == 1:
            return edge_sh[:, s]  # e3nn's l = 1 harmonics are proportional to (x, y, z)
    raise ModelError(
        "this tensor product needs the edge direction: give edge_sh with an l = 1 block or pass edge_vectors="
    )


class E3nnConvTP(nn.Module):
    """Reference: e3nn 'uvu' tensor product with per-edge weights (exactly MACE's convolution)."""

    def __init__(self, irreps_in1, irreps_in2, target_irreps, merge_paths: bool = False):
        super().__init__()
        self.irreps_in1, self.irreps_in2 = o3.Irreps(irreps_in1), o3.Irreps(irreps_in2)
        self.irreps_out, self.instructions = uvu_instructions(
            self.irreps_in1, self.irreps_in2, target_irreps, merge_paths
        )
        self.tp = o3.TensorProduct(
            self.irreps_in1,
            self.irreps_in2,
            self.irreps_out,
            self.instructions,
            shared_weights=False,
            internal_weights=False,
        )
        self.weight_numel = self.tp.weight_numel

    def forward(self, x, edge_sh, weights, edge_vectors=None):
        return self.tp(x, edge_sh, weights)


class SO2ConvTP(nn.Module):
    """The e3nn 'uvu' convolution evaluated in edge frames (irreps_out and weight layout of ``E3nnConvTP``).

    Per edge: x' = D(R_u)^T x (stacked (E, K1, C)); s_{l2} = |edge_sh^{l2}| (= Y^{l2}_0(e_y), edge frame);
    out'[o, +-m] = sum_paths w_p s_{l2} pw_p (a x'[i, +-m] -+ b x'[i, -+m]); out = D(R_u) out'.
    pw_p is e3nn's path normalisation ('component' irreps, 'element' paths: sqrt((2lo+1) / n_paths(lo))).
    """

    def __init__(self, irreps_in1, irreps_in2, target_irreps, merge_paths: bool = False):
        super().__init__()
        self.irreps_in1, self.irreps_in2 = o3.Irreps(irreps_in1), o3.Irreps(irreps_in2)
        muls = {mul for mul, _ in self.irreps_in1}
        if len(muls) != 1 or any(mul != 1 for mul, _ in self.irreps_in2):
            raise ConfigError(
                f"the 'so2' tensor product needs one multiplicity in irreps_in1 (got "
                f"{self.irreps_in1}) and multiplicity 1 in irreps_in2 (got {self.irreps_in2})"
            )
        self.channels = muls.pop()
        self.irreps_out, self.instructions = uvu_instructions(
            self.irreps_in1, self.irreps_in2, target_irreps, merge_paths
        )
        self.weight_numel = len(self.instructions) * self.channels
        ls_in = [ir.l for _, ir in self.irreps_in1]
        ls_out = [ir.l for _, ir in self.irreps_out]
        self.frame_in = EdgeFrame(ls_in, tilt=True)
        self.frame_out = EdgeFrame(ls_out, tilt=True)
        start_in, start_out = self.frame_in.layout.start, self.frame_out.layout.start
        n_into = [0] * len(self.irreps_out)
        for ins in self.instructions:
            n_into[ins[2]] += 1
        out_idx, in_idx, coef, path = [], [], [], []
        for p, (i1, i2, io, _, _) in enumerate(self.instructions):
            l1, l2, lo = self.irreps_in1[i1].ir.l, self.irreps_in2[i2].ir.l, self.irreps_out[io].ir.l
            pw = math.sqrt((2 * lo + 1) / n_into[io])
            # centre (m = 0) indices of the input and output blocks
            for o, i, c in edge_frame_path_terms(l1, l2, lo, start_in[i1] + l1, start_out[io] + lo, pw):
                out_idx.append(o)
                in_idx.append(i)
                coef.append(c)
                path.append(p)
        self.register_buffer("out_idx", torch.tensor(out_idx, dtype=torch.long), persistent=False)
        self.register_buffer("in_idx", torch.tensor(in_idx, dtype=torch.long), persistent=False)
        self.register_buffer("path_idx", torch.tensor(path, dtype=torch.long), persistent=False)
        self._coef64 = torch.tensor(coef, dtype=torch.float64)
        self.register_buffer(
            "sh_of_path",
            torch.tensor([ins[1] for ins in self.instructions], dtype=torch.long),
            persistent=False,
        )
        self.sh_slices = [s for s in self.irreps_in2.slices()]

    def forward(self, x, edge_sh, weights, edge_vectors=None):
        E, C = x.shape[0], self.channels
        vec = _edge_direction(edge_sh, self.irreps_in2, edge_vectors)
        frame = (
            self.frame_in if self.frame_in.layout.lmax >= self.frame_out.layout.lmax else self.frame_out
        ).angles(vec)
        xr = self.frame_in.to_edge(irreps_blocks_to_stack(x, self.irreps_in1), frame)  # [E, K1, C]
        s = torch.stack([edge_sh[:, sl].norm(dim=-1) for sl in self.sh_slices], dim=-1)  # [E, n_sh]
        w = weights.reshape(E, -1, C) * s[:, self.sh_of_path].unsqueeze(-1)  # [E, P, C]
        coef = self._coef64.to(device=x.device, dtype=x.dtype)
        src = xr.index_select(1, self.in_idx) * w.index_select(1, self.path_idx) * coef[:, None]  # [E, T, C]
        out = x.new_zeros(E, self.frame_out.layout.dim, C).index_add_(1, self.out_idx, src)
        return stack_to_irreps_blocks(self.frame_out.from_edge(out, frame), self.irreps_out)


class GauntConvTP(nn.Module):
    """Gaunt product of node functions with a radially weighted edge filter, on an exact S2 grid or by FFT.

    out_u = from_grid( to_grid(x_u) * sum_{l2} w[l2, u] to_grid(Y^{l2}(u)) ), for every channel u.
    irreps_out = C x (lo, (-1)^lo) for the natural-parity lo <= max(l1) + max(l2) in ``target_irreps``.
    ``backend``: "grid" (dense S2-grid projections, O(L^4) per channel), "fft" (``GauntFFT``: 2D Fourier
    basis and FFT convolution, O(L^3)) or "dft" (the same Fourier route with the DFTs as matrix products);
    the same function.
    """

    def __init__(
        self, irreps_in1, irreps_in2, target_irreps, merge_paths: bool = True, backend: str = "grid"
    ):
        super().__init__()
        if backend not in GAUNT_BACKENDS:
            raise ConfigError(f"unknown gaunt_backend '{backend}'; valid: {', '.join(GAUNT_BACKENDS)}")
        self.backend = backend
        self.irreps_in1, self.irreps_in2 = o3.Irreps(irreps_in1), o3.Irreps(irreps_in2)
        muls = {mul for mul, _ in self.irreps_in1}
        natural = all(ir.p == (-1) ** ir.l for _, ir in self.irreps_in1 + self.irreps_in2)
        ls1 = [ir.l for _, ir in self.irreps_in1]
        ls2 = [ir.l for _, ir in self.irreps_in2]
        if len(muls) != 1 or not natural or ls1 != list(range(len(ls1))) or ls2 != list(range(len(ls2))):
            raise ConfigError(
                "the 'gaunt' tensor product needs irreps_in1 = C x (0e + 1o + ... + Lp) with one "
                f"multiplicity and natural parity, and irreps_in2 = 0e + 1o + ...; got "
                f"{self.irreps_in1} and {self.irreps_in2}"
            )
        self.channels = muls.pop()
        L1, L2 = max(ls1), max(ls2)
        target = o3.Irreps(target_irreps)
        lo = [l for l in range(L1 + L2 + 1) if o3.Irrep(l, (-1) ** l) in target]
        if lo != list(range(len(lo))) or not lo:
            raise ConfigError(
                f"'gaunt' needs target irreps 0e + 1o + ... (consecutive natural parity), got {target}"
            )
        Lo = max(lo)
        self.irreps_out = o3.Irreps([(self.channels, (l, (-1) ** l)) for l in lo])
        self.weight_numel = len(ls2) * self.channels
        if backend != "grid":
            self.fft = GauntFFT(L1, L2, Lo, transform=backend)
        else:
            rb, ra = S2Grid.exact_for(L1 + L2 + Lo)
            self.grid_x = S2Grid(L1, rb, ra, lmax_out=Lo)
            self.grid_y = S2Grid(L2, rb, ra, lmax_out=Lo)
        self.L2 = L2
        self.register_buffer(
            "sh_degree", torch.tensor([l for l in ls2 for _ in range(2 * l + 1)]), persistent=False
        )

    def forward(self, x, edge_sh, weights, edge_vectors=None):
        E, C = x.shape[0], self.channels
        w = weights.reshape(E, self.L2 + 1, C)[:, self.sh_degree]  # [E, K2, C]
        if self.backend != "grid":
            out = self.fft(irreps_blocks_to_stack(x, self.irreps_in1), edge_sh.unsqueeze(-1) * w)
            return stack_to_irreps_blocks(out, self.irreps_out)
        fx = self.grid_x.to_grid(irreps_blocks_to_stack(x, self.irreps_in1))  # [E, G, C]
        fy = self.grid_y.to_grid(edge_sh.unsqueeze(-1) * w)  # [E, G, C]
        out = self.grid_x.from_grid(fx * fy)  # [E, Ko, C]
        return stack_to_irreps_blocks(out, self.irreps_out)


def build_conv_tensor_product(
    kind: str, irreps_in1, irreps_in2, target_irreps, merge_paths: bool = False, gaunt_backend: str = "grid"
) -> nn.Module:
    """Build the edge tensor product of ``kind`` in ``KINDS`` (see the module docstring for the contract).

    ``merge_paths=True`` sums the paths that end in the same irrep (one output block per (l, p)); the
    'gaunt' kind always produces one block per l. ``gaunt_backend`` ("grid" | "fft" | "dft") is how the
    'gaunt' kind evaluates its product (the same function); other kinds refuse all but "grid".
    """
    kinds = Registry("tensor product kind", {"e3nn": E3nnConvTP, "so2": SO2ConvTP, "gaunt": GauntConvTP},
                     valid_label="kinds")
    cls = kinds.load(kind)
    if kind == "gaunt":
        return cls(irreps_in1, irreps_in2, target_irreps, merge_paths=merge_paths, backend=gaunt_backend)
    if gaunt_backend != "grid":
        raise ConfigError(f"gaunt_backend '{gaunt_backend}' applies to the 'gaunt' kind only, not '{kind}'")
    return cls(irreps_in1, irreps_in2, target_irreps, merge_paths=merge_paths)


__all__ = [
    "build_conv_tensor_product", "E3nnConvTP", "SO2ConvTP", "GauntConvTP", "uvu_instructions", "KINDS",
    "GAUNT_BACKENDS",
]


class SO2EquivariantConvolution(nn.Module):
    """Drop-in for ``molequi.nn.equivariant.EquivariantConvolution`` (MACE's interaction), in edge frames.

    Same constructor ``(irreps_in: ChannelIrreps, sh_lmax, irreps_out: ChannelIrreps)``, same ``paths`` /
    ``num_paths``, same parameters (``mix``, identical state-dict keys) and same
    ``forward(x (n, in.dim, c), sh (E, (lmax+1)^2), weights (E, num_paths, c), sender, receiver)
    -> (n, out.dim, c_out)``, equal to round-off. Per edge the sender's features are rotated into the edge
    frame, every path l1 (x) l2 -> l3 acts on the orders (+-m) with two coefficients (``molequi.nn.so2``), the
    per-path messages are rotated back, then summed over neighbours and mixed exactly as in the reference.
    MACE can switch with one line: build this class instead of ``EquivariantConvolution``.
    """

    def __init__(self, irreps_in, sh_lmax: int, irreps_out):
        super().__init__()
        from molequi.nn.equivariant import EquivariantConvolution

        if sh_lmax < 1:
            raise ConfigError(
                "SO2EquivariantConvolution needs sh_lmax >= 1 (the edge direction comes from l = 1)"
            )
        ref = EquivariantConvolution(irreps_in, sh_lmax, irreps_out)
        self.irreps_in, self.irreps_out, self.sh_lmax = irreps_in, irreps_out, sh_lmax
        self.paths, self.num_paths, self._groups, self.dim_mid = (
            ref.paths,
            ref.num_paths,
            ref._groups,
            ref.dim_mid,
        )
        self.mix = ref.mix
        ls_in = [l for l, _ in irreps_in.irreps]
        ls_out = [l for l, _ in irreps_out.irreps]
        ls_mid, mid_start = [], {}
        row = 0
        for _, first, n_paths, d3, _ in self._groups:
            for k in range(first, first + n_paths):
                mid_start[k] = row
                ls_mid.append((d3 - 1) // 2)
                row += d3
        self.frame_in = EdgeFrame(ls_in, tilt=True)
        self.frame_mid = EdgeFrame(ls_mid, tilt=True)
        start_in = self.frame_in.layout.start
        out_idx, in_idx, coef, path, sh_l = [], [], [], [], []
        for k, p in enumerate(self.paths):
            l1, l2, l3 = ls_in[p.i_in], p.l_edge, ls_out[p.i_out]
            norm = math.sqrt(2 * l3 + 1)  # molequi's clebsch_gordan = w3j sqrt(2 l3 + 1)
            for o, i, c in edge_frame_path_terms(l1, l2, l3, start_in[p.i_in] + l1, mid_start[k] + l3, norm):
                out_idx.append(o)
                in_idx.append(i)
                coef.append(c)
                path.append(k)
                sh_l.append(l2)
        self.register_buffer("out_idx", torch.tensor(out_idx, dtype=torch.long), persistent=False)
        self.register_buffer("in_idx", torch.tensor(in_idx, dtype=torch.long), persistent=False)
        self.register_buffer("path_idx", torch.tensor(path, dtype=torch.long), persistent=False)
        self.register_buffer("sh_idx", torch.tensor(sh_l, dtype=torch.long), persistent=False)
        self._coef64 = torch.tensor(coef, dtype=torch.float64)

    def forward(self, x, sh, weights, sender, receiver):
        n, c = x.shape[0], x.shape[2]
        E = sh.shape[0]
        big = self.frame_in if self.frame_in.layout.lmax >= self.frame_mid.layout.lmax else self.frame_mid
        frame = big.angles(sh[:, 1:4])  # e3nn's l = 1 harmonics are proportional to (x, y, z)
        xr = self.frame_in.to_edge(x.index_select(0, sender), frame)  # [E, in, c]
        s = torch.stack([sh[:, l * l : (l + 1) ** 2].norm(dim=-1) for l in range(self.sh_lmax + 1)], -1)
        coef = self._coef64.to(device=x.device, dtype=x.dtype)
        scale = (s[:, self.sh_idx] * coef).unsqueeze(-1)  # [E, T, 1]
        src = xr.index_select(1, self.in_idx) * weights.index_select(1, self.path_idx) * scale  # [E, T, c]
        mid = x.new_zeros(E, self.dim_mid, c).index_add_(1, self.out_idx, src)
        mid = self.frame_mid.from_edge(mid, frame)  # [E, mid, c], rows (output irrep, path, m3)
        out_blocks = {}
        for (row, _, n_paths, d3, i_out), mix in zip(self._groups, self.mix):
            m = mid[:, row : row + n_paths * d3].reshape(E, n_paths, d3, c)
            agg = x.new_zeros(n, n_paths, d3, c).index_add_(0, receiver, m)
            agg = agg.transpose(1, 2).reshape(n, d3, n_paths * c)
            out_blocks[i_out] = agg @ (mix / math.sqrt(n_paths * c))
        blocks = [
            out_blocks[i] if i in out_blocks else x.new_zeros(n, 2 * l + 1, self.irreps_out.channels)
            for i, (l, _) in enumerate(self.irreps_out.irreps)
        ]
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)


__all__ += ["SO2EquivariantConvolution"]


class TensorProductConvolution(nn.Module):
    """MACE's interaction with the edge tensor product of ``kind`` (``build_conv_tensor_product``).

    Constructor as ``molequi.nn.equivariant.EquivariantConvolution``: ``(kind, irreps_in: ChannelIrreps,
    sh_lmax, irreps_out: ChannelIrreps)``. ``forward(x (n, in.dim, c), sh (E, (sh_lmax+1)^2),
    weights (E, weight_numel), sender (E,), receiver (E,)) -> (n, irreps_out.dim, c_out)``::

        m_ji  = tp(x_j, Y(r_ji), w_ji)                              per edge, e3nn layout (tp.irreps_out)
        out_i[l m, v] = sum_{b, u} (sum_{j in N(i)} m_ji)[b, u, m] W_l[(b, u), v] / sqrt(nb c)
                                      (b: the nb blocks of tp.irreps_out with the irrep (l, p))

    i.e. mace-torch's ``conv_tp`` -> scatter -> ``linear`` (the neighbour sum is not normalised here). With
    ``kind`` "e3nn" or "so2" (one output block per path) this is the function of ``EquivariantConvolution``,
    with its path order and parameter shapes (MACE's state dicts load across the three); "gaunt" has one
    weight per (l of the harmonics, channel) and one block per output l. Fixed tensors of the product
    (e3nn's Wigner 3j, the S2 grid matrices) are built in float64 and kept out of the state dict; each
    ``.to(dtype)`` re-derives them from the float64 copies, so a model built in float32 and moved to float64
    keeps exact equivariance.
    """

    def __init__(self, kind: str, irreps_in, sh_lmax: int, irreps_out, gaunt_backend: str = "grid"):
        super().__init__()
        c = irreps_in.channels
        self.kind, self.irreps_in, self.irreps_out, self.sh_lmax = kind, irreps_in, irreps_out, sh_lmax
        self.irreps_in_e3nn = o3.Irreps(str(irreps_in))
        default = torch.get_default_dtype()
        torch.set_default_dtype(torch.float64)
        try:
            tp = build_conv_tensor_product(
                kind,
                self.irreps_in_e3nn,
                o3.Irreps.spherical_harmonics(sh_lmax),
                str(irreps_out.with_channels(c)),
                gaunt_backend=gaunt_backend,
            )
        finally:
            torch.set_default_dtype(default)
        self._float64 = {n: b.detach().clone() for n, b in tp.named_buffers() if b.is_floating_point()}
        for module in tp.modules():  # derived from the configuration: no place in a state dict
            module._non_persistent_buffers_set.update(module._buffers)
        self.tp = tp.to(default)
        self.weight_numel = tp.weight_numel
        # per output irrep: the columns of the e3nn-layout message, as (2l+1, blocks * c), and the mixing
        self._plan: list[tuple[int, int]] = []  # (index buffer number or -1, 2l+1)
        self.mix = nn.ParameterList()
        offsets = [s.start for s in tp.irreps_out.slices()]
        for l, p in irreps_out.irreps:
            d = 2 * l + 1
            blocks = [k for k, (_, ir) in enumerate(tp.irreps_out) if (ir.l, ir.p) == (l, p)]
            if not blocks:
                self._plan.append((-1, d))
                continue
            cols = torch.tensor(
                [[offsets[k] + u * d + m for k in blocks for u in range(c)] for m in range(d)],
                dtype=torch.long,
            )
            self.register_buffer(f"_cols{len(self.mix)}", cols.reshape(-1), persistent=False)
            self._plan.append((len(self.mix), d))
            self.mix.append(nn.Parameter(torch.randn(len(blocks) * c, irreps_out.channels)))
        if not self.mix:
            raise ConfigError(
                f"no '{kind}' tensor-product path from {irreps_in} x Y(l<={sh_lmax}) to {irreps_out}"
            )

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        for name, master in self._float64.items():
            path, _, buffer = name.rpartition(".")
            module = self.tp.get_submodule(path)
            now = module._buffers[buffer]
            module._buffers[buffer] = master.to(device=now.device, dtype=now.dtype)
        return out

    def forward(self, x, sh, weights, sender, receiver):
        n = x.shape[0]
        xf = stack_to_irreps_blocks(x, self.irreps_in_e3nn)  # [n, D_in], e3nn layout
        msg = self.tp(gather(xf, sender), sh, weights)  # [E, D_mid]
        agg = scatter_sum(msg, receiver, n)  # [n, D_mid]
        blocks = []
        for k, d in self._plan:
            if k < 0:
                blocks.append(x.new_zeros(n, d, self.irreps_out.channels))
                continue
            mix = self.mix[k]
            g = agg.index_select(1, getattr(self, f"_cols{k}")).reshape(n, d, -1)  # [n, 2l+1, blocks * c]
            blocks.append(g @ (mix / math.sqrt(mix.shape[0])))
        return blocks[0] if len(blocks) == 1 else torch.cat(blocks, dim=1)


__all__ += ["TensorProductConvolution"]
