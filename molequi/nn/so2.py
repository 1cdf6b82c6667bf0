"""SO(2) convolutions in edge frames (eSCN: Passaro & Zitnick, ICML 2023).

Why it works. Let x be node features (real spherical-harmonic coefficients, e3nn basis, degrees 0..L) and
u an edge direction. A full SO(3) tensor product with the edge's spherical harmonics,

    out^lo_{w,mo} = sum_{l1,l2,u} pw_p w_p[u,w] sum_{m1,m2} C^{l1 l2 lo}_{m1 m2 mo} x^l1_{u,m1} Y^l2_{m2}(u)

is equivariant, so it can be evaluated in the edge frame (rotate x by D(R_u)^T, rotate the result back by
D(R_u)). There Y^{l2}(e_y) = s_{l2} delta_{m2, 0}, and the map x -> out commutes with rotations about the
edge axis, hence it is block diagonal in |m|: on each pair (-m, +m) (m > 0)

    y_{-m} = W1_m x_{-m} + W2_m x_{+m},     y_{+m} = W1_m x_{+m} - W2_m x_{-m},      y_0 = W0 x_0,

where W_m are matrices over (l, channel). The weight mapping (derived in ``so2_weights_from_tensor_product``):

    W1_m[(l1,u),(lo,w)] = sum_{l2} pw_p s_{l2} C_p[l1+m, l2, lo+m] w_p[u, w]
    W2_m[(l1,u),(lo,w)] = sum_{l2} pw_p s_{l2} C_p[l1+m, l2, lo-m] w_p[u, w]        (= -C_p[l1-m, l2, lo+m])

(C_p = ``o3.wigner_3j(l1, l2, lo)`` with the centre index l2 of the m2 axis). Paths with l1 + l2 + lo even
(parity-allowed for natural-parity features) only feed W1; odd paths (pseudo-tensor outputs) only feed W2.
Cost per edge: O(L^3 C) for the rotations plus sum_m (n_m C)^2 for the SO(2) linear instead of the
O(L^6 C) of the Clebsch-Gordan contraction; ``m_max < L`` truncates the orders kept (EquiformerV2 uses
L = 6, m_max = 2).

Layout: coefficient stacks (E, K, C) with K = (L+1)^2 in e3nn order (index l^2 + l + m), channels last.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import nn

from molequi.errors import ConfigError
from molequi.so3.rotations import EdgeFrame


def m_indices(lmax: int, m: int, sign: int) -> list[int]:
    """Stack indices of the coefficients (l, sign*m) for l = |m|..lmax (e3nn order l^2 + l + m)."""
    return [l * l + l + sign * m for l in range(m, lmax + 1)]


class SO2Linear(nn.Module):
    """The per-order linear map of an SO(2) convolution, in the edge frame.

    x (E, (L_in+1)^2, C_in) -> y (E, (L_out+1)^2, C_out); orders |m| > m_max are dropped (zero output).
    ``radial`` (E, n_radial) optionally modulates the inputs per (m, l, channel) (eSCN: the distance-dependent
    part of the filter): x_m <- x_m * rad_m with rad = ``radial`` sliced per order (size ``radial_dim``).

    Parameters: W0 (n_0 C_in, n_0' C_out); for 1 <= m <= m_max W1_m, W2_m (n_m C_in, n_m' C_out), with
    n_m = L_in - m + 1, n_m' = L_out - m + 1. A bias is added to the l = 0 output only.
    """

    def __init__(
        self,
        lmax_in: int,
        c_in: int,
        lmax_out: int,
        c_out: int,
        m_max: int | None = None,
        bias: bool = True,
        radial: bool = False,
    ):
        super().__init__()
        m_max = min(lmax_in, lmax_out) if m_max is None else int(m_max)
        if not 0 <= m_max <= min(lmax_in, lmax_out):
            raise ConfigError(
                f"SO2Linear: m_max={m_max} must lie in 0..min(lmax_in, lmax_out)={min(lmax_in, lmax_out)}"
            )
        self.lmax_in, self.lmax_out, self.c_in, self.c_out, self.m_max = lmax_in, lmax_out, c_in, c_out, m_max
        self.w1 = nn.ParameterList()
        self.w2 = nn.ParameterList()
        self.radial_sizes = []
        for m in range(m_max + 1):
            n_in, n_out = (lmax_in - m + 1) * c_in, (lmax_out - m + 1) * c_out
            self.w1.append(nn.Parameter(torch.randn(n_in, n_out) / math.sqrt(n_in)))
            if m > 0:
                self.w2.append(nn.Parameter(torch.randn(n_in, n_out) / math.sqrt(n_in)))
            self.radial_sizes.append(n_in)
        self.radial_dim = sum(self.radial_sizes) if radial else 0
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        # one gather into the m-major layout [m=0 | +1 | -1 | +2 | -2 | ...] and one gather back
        gather_in, self.sizes_in = [], []
        out_pos = {}
        k_out = 0
        for m in range(m_max + 1):
            for sgn in (1,) if m == 0 else (1, -1):
                idx_in = m_indices(lmax_in, m, sgn)
                gather_in += idx_in
                self.sizes_in.append(len(idx_in))
                for k in m_indices(lmax_out, m, sgn):
                    out_pos[k] = k_out
                    k_out += 1
        zero_slot = k_out  # components with |m| > m_max read an appended zero row
        self.register_buffer("gather_in", torch.tensor(gather_in, dtype=torch.long), persistent=False)
        self.register_buffer(
            "scatter_out",
            torch.tensor([out_pos.get(k, zero_slot) for k in range((lmax_out + 1) ** 2)], dtype=torch.long),
            persistent=False,
        )

    def forward(self, x: torch.Tensor, radial: torch.Tensor | None = None) -> torch.Tensor:
        E = x.shape[0]
        parts = torch.split(x[:, self.gather_in], self.sizes_in, dim=1)  # m-major views
        rads = torch.split(radial, self.radial_sizes, dim=-1) if radial is not None else None
        ys = []
        for m in range(self.m_max + 1):
            xp = parts[0 if m == 0 else 2 * m - 1].reshape(E, -1)  # [E, n_m C_in]
            if rads is not None:
                xp = xp * rads[m]
            w1 = self.w1[m].to(x.dtype)
            if m == 0:
                ys.append(xp @ w1)
                continue
            xn = parts[2 * m].reshape(E, -1)
            if rads is not None:
                xn = xn * rads[m]
            w2 = self.w2[m - 1].to(x.dtype)
            both = torch.cat([xp, xn], dim=0) @ torch.cat([w1, w2], dim=1)  # [2E, 2 n_m' C_out]
            a, b = both.split(w1.shape[1], dim=1)
            ys.append(a[:E] - b[E:])  # y_+ = W1 x_+ - W2 x_-
            ys.append(a[E:] + b[:E])  # y_- = W1 x_- + W2 x_+
        y = torch.cat(ys + [x.new_zeros(E, self.c_out)], dim=1).reshape(E, -1, self.c_out)  # m-major + zero row
        if self.bias is not None:
            y = torch.cat([y[:, :1] + self.bias.to(x.dtype), y[:, 1:]], dim=1)  # row 0 is (l=0, m=0)
        return y[:, self.scatter_out]


class SO2Convolution(nn.Module):
    """Rotate into the edge frame, apply ``SO2Linear``, rotate back: an equivariant edge convolution.

    forward(x (E, (L_in+1)^2, C_in) node features gathered on edges, vec (E, 3), radial (E, radial_dim)?)
    -> (E, (L_out+1)^2, C_out) in the global frame. Equals a full SO(3) tensor product with the edge
    spherical harmonics (see module docstring; ``tests/nn/test_so2.py`` checks it to round-off).
    """

    def __init__(
        self,
        lmax_in: int,
        c_in: int,
        lmax_out: int,
        c_out: int,
        m_max: int | None = None,
        bias: bool = True,
        radial: bool = False,
        tilt: bool = True,
    ):
        super().__init__()
        self.linear = SO2Linear(lmax_in, c_in, lmax_out, c_out, m_max, bias=bias, radial=radial)
        self.frame_in = EdgeFrame(list(range(lmax_in + 1)), tilt=tilt)
        self.frame_out = EdgeFrame(list(range(lmax_out + 1)), tilt=tilt)

    @property
    def radial_dim(self) -> int:
        return self.linear.radial_dim

    def forward(self, x: torch.Tensor, vec: torch.Tensor, radial: torch.Tensor | None = None) -> torch.Tensor:
        big = self.frame_in if self.frame_in.layout.lmax >= self.frame_out.layout.lmax else self.frame_out
        frame = big.angles(vec)
        y = self.linear(self.frame_in.to_edge(x, frame), radial)
        return self.frame_out.from_edge(y, frame)


def edge_frame_path_coefficients(l1: int, l2: int, lo: int, m: int) -> tuple[float, float]:
    """(a, b) = (C[l1+m, l2, lo+m], C[l1+m, l2, lo-m]) of ``o3.wigner_3j(l1, l2, lo)`` (m2 at its centre).

    With Y^{l2} = delta_{m2,0} in the edge frame, a path l1 (x) l2 -> lo acts on the pair (-m, +m) as
    y_{+m} = a x_{+m} - b x_{-m}, y_{-m} = a x_{-m} + b x_{+m} (for m = 0 only a).
    """
    C = o3.wigner_3j(l1, l2, lo, dtype=torch.float64)
    a = float(C[l1 + m, l2, lo + m])
    b = float(C[l1 + m, l2, lo - m]) if m > 0 else 0.0
    return a, b



def edge_frame_path_terms(
    l1: int, l2: int, lo: int, centre_in: int, centre_out: int, scale: float
) -> list[tuple[int, int, float]]:
    """The sparse edge-frame map of one path l1 (x) l2 -> lo as (output row, input row, coefficient) triples.

    Rows are absolute indices of stacked coefficient blocks whose m = 0 entries sit at ``centre_in`` /
    ``centre_out``; coefficients are ``scale`` times (a, b) of ``edge_frame_path_coefficients``, for
    m = 0 .. min(l1, lo) in that order (zero couplings left out).
    """
    terms: list[tuple[int, int, float]] = []
    ci, co = centre_in, centre_out
    for m in range(min(l1, lo) + 1):
        a, b = edge_frame_path_coefficients(l1, l2, lo, m)
        if abs(a) > 1e-14:
            terms += [(co + m, ci + m, scale * a)] + ([(co - m, ci - m, scale * a)] if m else [])
        if m and abs(b) > 1e-14:
            terms += [(co + m, ci - m, -scale * b), (co - m, ci + m, scale * b)]
    return terms

def so2_weights_from_tensor_product(
    tp: o3.TensorProduct,
    weight: torch.Tensor,
    lmax_in: int,
    lmax_out: int,
    m_max: int | None = None,
    sh_values: dict[int, float] | None = None,
) -> dict[str, list[torch.Tensor]]:
    """Map the weights of an e3nn 'uvw' tensor product x (x) Y(u) to ``SO2Linear`` weights (W1_m, W2_m).

    ``tp`` has irreps_in1 = C_in x (l = 0..L_in, one irrep per l, any parity), irreps_in2 = spherical
    harmonics (one irrep per l2), irreps_out = C_out x (lo, parity) blocks; outputs of the same lo but
    different parity are summed (an SO(2) map does not see parity). ``weight`` is ``tp``'s flat weight
    vector. ``sh_values[l2]`` is Y^{l2}_{m=0}(e_y) in the normalisation of the spherical harmonics
    (default e3nn 'component', sqrt(2 l2 + 1)). Returns {"w1": [W1_0 .. W1_mmax], "w2": [W2_1 .. W2_mmax]}
    with shapes as in ``SO2Linear``.
    """
    m_max = min(lmax_in, lmax_out) if m_max is None else m_max
    ir1, ir2, iro = tp.irreps_in1, tp.irreps_in2, tp.irreps_out
    c_in, c_out = ir1[0].mul, iro[0].mul
    w1 = [
        torch.zeros(lmax_in - m + 1, c_in, lmax_out - m + 1, c_out, dtype=torch.float64)
        for m in range(m_max + 1)
    ]
    w2 = [torch.zeros_like(w1[m]) for m in range(m_max + 1)]
    offset = 0
    for ins in tp.instructions:
        if ins.connection_mode != "uvw":
            raise ConfigError("so2_weights_from_tensor_product maps 'uvw' tensor products only")
        n = math.prod(ins.path_shape)
        w = weight[offset : offset + n].reshape(ins.path_shape).to(torch.float64)  # [C_in, 1, C_out]
        offset += n
        l1, l2, lo = ir1[ins.i_in1].ir.l, ir2[ins.i_in2].ir.l, iro[ins.i_out].ir.l
        s = math.sqrt(2 * l2 + 1) if sh_values is None else sh_values[l2]
        for m in range(min(l1, lo, m_max) + 1):
            a, b = edge_frame_path_coefficients(l1, l2, lo, m)
            w1[m][l1 - m, :, lo - m, :] += ins.path_weight * s * a * w[:, 0, :]
            w2[m][l1 - m, :, lo - m, :] += ins.path_weight * s * b * w[:, 0, :]
    flat = lambda t: t.reshape(t.shape[0] * t.shape[1], -1)  # noqa: E731
    return {"w1": [flat(t) for t in w1], "w2": [flat(t) for t in w2[1:]]}


__all__ = [
    "SO2Linear",
    "SO2Convolution",
    "so2_weights_from_tensor_product",
    "edge_frame_path_coefficients",
    "edge_frame_path_terms",
    "m_indices",
]
