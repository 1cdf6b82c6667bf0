"""MACE's many-body product basis by repeated Gaunt products (Luo, Chen, Zhang, ICLR 2024, section 3.3).

A drop-in for ``molequi.nn.symmetric_contraction.SymmetricContraction`` (same call, same output layout):
``forward(a (n, irreps_in.dim, c), element (n,)) -> (n, irreps_out.dim, c)``. The atomic basis A_i is read
as one spherical function per atom and channel, f_i(s) = sum_lm A_i[lm] Y_lm(s), and its powers are taken
pointwise on the sphere (the Gaunt product, channel-wise), each factor after a per-element, per-l, per-channel
reweighting::

    x^(t)_i[lm, c] = u_t[z_i, l, c] A_i[lm, c]                       t = 1..correlation
    P^(1)_i = x^(1)_i,     P^(nu)_i = trunc_Lh( P^(nu-1)_i (x)_Gaunt x^(nu)_i )
    B_i[LM, c] = sum_{nu=1..correlation} w_nu[z_i, L, c] P^(nu)_i[LM, c]        for each L of irreps_out

with (x)_Gaunt: out_k = (1/4pi) int Y_k f g dOmega (e3nn 'component' harmonics), and every power truncated
to degree Lh = max(lmax of A, lmax of irreps_out) (as the paper keeps a fixed L). Body order and parity are
those of the symmetric contraction: P^(nu) is a polynomial of degree nu in A, and B is O(3)-equivariant
because the pointwise product of functions on the sphere commutes with rotations and with the inversion.

What it spans, and what it does not: the symmetric contraction has one weight per independent coupling of
nu factors (every chain of intermediate irreps, including the antisymmetric / pseudo-tensor ones); the Gaunt
power keeps only the natural-parity couplings (l1 + l2 + l3 even at every step), weighted by the factor
reweightings u_t. So it has fewer parameters (correlation x num_elements x (L + 1 + Lo + 1) x c) and costs
O(L^3) per channel and product with ``backend`` "fft" / "dft" (``molequi.nn.gaunt_fft``) or O(L^4) with
"grid" (``molequi.nn.s2``'s exact quadrature), instead of the symmetric contraction's monomial count, which
grows like dim^nu. Inputs and outputs must have natural parity (0e, 1o, 2e, ...): a pseudo-tensor output
(1e, 0o, ...) is never reached by products of natural-parity functions, and is refused with ConfigError.
"""

from __future__ import annotations

import torch
from torch import nn

from molequi.errors import ConfigError
from molequi.nn.equivariant import ChannelIrreps, Constants
from molequi.nn.gaunt_fft import GauntFFT
from molequi.nn.s2 import S2Grid, _grid_matrices

BACKENDS = ("grid", "fft", "dft")


class _GridGaunt(nn.Module):
    """The exact-grid Gaunt product of ``molequi.nn.s2.GauntProduct``, with its matrices kept in float64 and
    handed out per dtype (a float32 model moved to float64 computes the float64 product exactly)."""

    def __init__(self, lmax1: int, lmax2: int, lmax_out: int):
        super().__init__()
        rb, ra = S2Grid.exact_for(lmax1 + lmax2 + lmax_out)
        to1, back = _grid_matrices(lmax1, lmax_out, rb, ra)
        to2, _ = _grid_matrices(lmax2, lmax_out, rb, ra)
        self.points = rb * ra
        self.constants = Constants()
        for name, value in (("to1", to1), ("to2", to2), ("back", back)):
            self.constants.add(name, value)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        get = self.constants.get
        f = torch.einsum("kg,nkc->ngc", get("to1", x), x) * torch.einsum("kg,nkc->ngc", get("to2", y), y)
        return torch.einsum("gk,ngc->nkc", get("back", f), f)


def _product(lmax1: int, lmax2: int, lmax_out: int, backend: str) -> nn.Module:
    if backend == "grid":
        return _GridGaunt(lmax1, lmax2, lmax_out)
    return GauntFFT(lmax1, lmax2, lmax_out, transform=backend)


class GauntManyBody(nn.Module):
    """B = sum_nu w_nu(z) . (Gaunt power nu of the reweighted A): (n, irreps_in.dim, c), element (n,) ->
    (n, irreps_out.dim, c); see the module docstring. ``backend``: "grid" | "fft" | "dft" (one function).

    Parameters: ``factor_weights`` (correlation, num_elements, L + 1, c), initialised to 1 (plain powers of
    A), and ``weights`` (correlation, num_elements, len(irreps_out), c), N(0, 1) / correlation.
    """

    def __init__(self, irreps_in: ChannelIrreps, irreps_out: ChannelIrreps, correlation: int,
                 num_elements: int, backend: str = "grid"):
        super().__init__()
        if correlation < 1:
            raise ConfigError(f"correlation must be >= 1, got {correlation}")
        if backend not in BACKENDS:
            raise ConfigError(f"unknown Gaunt backend '{backend}'; valid: {', '.join(BACKENDS)}")
        if irreps_in.channels != irreps_out.channels:
            raise ConfigError(f"the Gaunt many-body product keeps channels: {irreps_in} -> {irreps_out}")
        L = irreps_in.lmax
        if irreps_in.irreps != tuple((l, (-1) ** l) for l in range(L + 1)):
            raise ConfigError(f"the Gaunt many-body product needs the atomic basis 0e + 1o + 2e + ... (one "
                              f"spherical function per channel), got {irreps_in}")
        odd = [f"{l}{'e' if p == 1 else 'o'}" for l, p in irreps_out.irreps if p != (-1) ** l]
        if odd:
            raise ConfigError(
                f"the Gaunt many-body product has natural-parity outputs only (0e, 1o, 2e, ...): products of "
                f"spherical functions never reach {', '.join(odd)} (in {irreps_out}); use the symmetric "
                "contraction (product_basis 'symmetric_contraction') for pseudo-tensor features")
        c = irreps_in.channels
        self.irreps_in, self.irreps_out = irreps_in, irreps_out
        self.correlation, self.backend = correlation, backend
        self.lmax_in, self.lmax_hidden = L, max(L, irreps_out.lmax)
        self.products = nn.ModuleList(
            _product(L if nu == 2 else self.lmax_hidden, L, self.lmax_hidden, backend)
            for nu in range(2, correlation + 1)
        )
        self.factor_weights = nn.Parameter(torch.ones(correlation, num_elements, L + 1, c))
        self.weights = nn.Parameter(torch.randn(correlation, num_elements, len(irreps_out.irreps), c)
                                    / correlation)
        degree_in = [l for l in range(L + 1) for _ in range(2 * l + 1)]
        rows = [l * l + m for l, _ in irreps_out.irreps for m in range(2 * l + 1)]  # e3nn order, l^2 + l + m
        block = [i for i, (l, _) in enumerate(irreps_out.irreps) for _ in range(2 * l + 1)]
        self.register_buffer("degree_in", torch.tensor(degree_in), persistent=False)
        self.register_buffer("rows_out", torch.tensor(rows), persistent=False)
        self._max_row = max(rows)  # a Python int: no host read in forward (compiled code)
        self.register_buffer("block_out", torch.tensor(block), persistent=False)
        # numbers per atom and channel that a forward holds (MACE's chunking of the product basis)
        kh = (self.lmax_hidden + 1) ** 2
        points = sum(p.points if backend == "grid" else 2 * p.Pu * p.Pv for p in self.products)
        self.floats_per_channel = (correlation + 1) * (irreps_in.dim + kh) + 3 * points + irreps_out.dim

    def _power_rows(self, p: torch.Tensor, lmax: int) -> torch.Tensor:
        """Rows of ``rows_out`` from a power of degree ``lmax`` (zeros above it)."""
        k = (lmax + 1) ** 2
        if self._max_row < k:
            return p[:, self.rows_out]
        return torch.cat([p, p.new_zeros(p.shape[0], (self.lmax_hidden + 1) ** 2 - k, p.shape[2])],
                         dim=1)[:, self.rows_out]

    def forward(self, a: torch.Tensor, element: torch.Tensor) -> torch.Tensor:
        u = self.factor_weights[:, element][:, :, self.degree_in]  # (nu, n, dim_in, c)
        w = self.weights[:, element][:, :, self.block_out]  # (nu, n, dim_out, c)
        power, lmax = a * u[0], self.lmax_in
        out = w[0] * self._power_rows(power, lmax)
        for t, product in enumerate(self.products, start=1):
            power, lmax = product(power, a * u[t]), self.lmax_hidden
            out = out + w[t] * self._power_rows(power, lmax)
        return out


__all__ = ["GauntManyBody", "BACKENDS"]
