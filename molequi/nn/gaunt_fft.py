"""Gaunt tensor product through the 2D Fourier basis and the FFT (Luo, Chen, Zhang, ICLR 2024).

The same function as the grid ``molequi.nn.s2.GauntProduct`` (e3nn 'component' real harmonics, y-polar)::

    out_k = (1/4pi) int Y_k(s) f(s) g(s) dOmega,   f = sum_k x_k Y_k,  g = sum_k y_k Y_k

but evaluated in three O(L^3)-per-channel steps instead of dense O(L^4) grid projections:

1. *to Fourier*: with e3nn's angles (x, y, z) = (sin b sin a, cos b, sin b cos a) every harmonic of degree l
   is a trigonometric polynomial on the torus [0, 2pi)^2 of (b, a),
   Y_lm = sum_{|u|<=l, v=+-m} y_uv e^{i(ub+va)}, nonzero only at v = +-m. So the change of basis is
   block-sparse: for each v >= 0 a small dense
   (P_u, 2(L+1)) matrix acting on the (l, +-m) coefficients with |m| = v (one batched matmul, O(L^3)).
   The matrices come from an FFT of e3nn's own harmonics sampled on the torus (exact for trigonometric
   polynomials), so the convention is e3nn's by construction.
2. *product*: pointwise product of the two torus functions = 2D convolution of the coefficients, by
   ``irfft2`` / ``rfft2`` at sizes that do not alias the needed outputs (O(L^2 log L)).
3. *back to harmonics*: out_{l m} = (1/4pi) int_0^{2pi} int_0^pi Y_lm e^{i(ub+va)} sin b db da summed over the
   product's coefficients; the a-integral keeps v = -m, the b-integral of e^{inb} sin b is analytic, so the
   projection is again one block-sparse matrix per v (O(L^3)).

``GauntFFT(..., transform="dft")`` runs the same pipeline with both 1D DFTs as dense matrix products (the
u-direction folded into the block matrices of steps 1 and 3): O(L^3) too, and faster than torch.fft on CPUs
at these small sizes. Real functions have Hermitian spectra, so only v >= 0 is stored (``rfft``).
Coefficient matrices are built once per (L1, L2, Lo) in float64 and cached (``fft_plan``). Autograd goes
through ``torch.fft`` (or the matrix products).

Layout as in ``molequi.nn.s2``: (..., K, C) coefficient stacks, K = (L+1)^2 in e3nn order, channels last.
"""

from __future__ import annotations

import functools
import math

import torch
from e3nn import o3
from torch import nn

from molequi.errors import ConfigError

TRANSFORMS = ("fft", "dft")


def _sh_fourier(L: int, n: int) -> torch.Tensor:
    """Complex (K, n, n) 2D Fourier coefficients y[k, u mod n, v mod n] of e3nn 'component' harmonics up to L.

    Exact for n >= 2L + 1 (each Y_k is a trigonometric polynomial of degree <= L in b and in a).
    """
    t = torch.arange(n, dtype=torch.float64) * (2 * math.pi / n)
    B, A = torch.meshgrid(t, t, indexing="ij")  # b along dim 0, a along dim 1
    xyz = o3.angles_to_xyz(A, B).reshape(-1, 3)
    Y = o3.spherical_harmonics(list(range(L + 1)), xyz, normalize=False, normalization="component")
    Y = Y.T.reshape(-1, n, n)
    return torch.fft.fft2(Y, norm="forward")  # f = sum_{u,v} y_uv e^{i(u b + v a)}


def _sin_integral(n: torch.Tensor) -> torch.Tensor:
    """I(n) = int_0^pi e^{i n b} sin b db (complex, exact) for integer tensor n."""

    def J(m):  # int_0^pi e^{imb} db
        m = m.to(torch.float64)
        odd = torch.remainder(m, 2) == 1
        val = torch.where(odd, 2j / torch.where(m == 0, torch.ones_like(m), m), torch.zeros_like(m) + 0j)
        return torch.where(m == 0, torch.full_like(m, math.pi) + 0j, val)

    return (J(n + 1) - J(n - 1)) / 2j


def _lm_index(L: int) -> torch.Tensor:
    """(L+1, 2(L+1)) index into a K-stack padded with one zero row (index K): slot [v, 2l + s] holds the
    coefficient (l, m = +v) for s = 0 and (l, m = -v) for s = 1 (the zero row where |m| > l or m = -0)."""
    K = (L + 1) ** 2
    idx = torch.full((L + 1, 2 * (L + 1)), K, dtype=torch.long)
    for l in range(L + 1):
        for v in range(l + 1):
            idx[v, 2 * l] = l * l + l + v  # e3nn order: k = l^2 + l + m
            if v:
                idx[v, 2 * l + 1] = l * l + l - v
    return idx


class FFTPlan:
    """The float64 matrices of one (L1, L2, Lo) Gaunt product by FFT (see the module docstring)."""

    def __init__(self, L1: int, L2: int, Lo: int):
        self.L1, self.L2, self.Lo = L1, L2, Lo
        S = L1 + L2
        self.Pu = 2 * S + 1  # the product has |u| <= L1 + L2: no aliasing in u
        self.Pv = S + Lo + 1  # |v| <= L1 + L2 wraps to |v| > Lo: the needed v <= Lo are exact
        self.Vh = self.Pv // 2 + 1
        self.A1 = self._to_fourier(L1)  # (L1+1, 2 Pu, 2(L1+1)) real: [Re; Im] rows
        self.A2 = self._to_fourier(L2)
        self.Bo = self._from_fourier(Lo, S)  # (Lo+1, 2(Lo+1), 2 Pu) real: acts on [Re z; Im z]
        self.idx1, self.idx2, self.idxo = _lm_index(L1), _lm_index(L2), _lm_index(Lo)
        # inverse of idxo: for each k of the output, its flat slot in (Lo+1) x 2(Lo+1)
        inv = torch.empty((Lo + 1) ** 2, dtype=torch.long)
        flat = self.idxo.reshape(-1)
        for j, k in enumerate(flat.tolist()):
            if k < (Lo + 1) ** 2:
                inv[k] = j
        self.inv_o = inv
        # transform "dft": the u-direction DFT folded into the block matrices, the v-direction as real
        # matrices (the same Fourier pipeline, with matrix products in place of torch.fft)
        W = torch.exp(
            2j * math.pi * torch.outer(torch.arange(self.Pu), torch.arange(self.Pu)).double() / self.Pu
        )
        self.A1d, self.A2d = (self._fold_u(A, W) for A in (self.A1, self.A2))
        self.E1, self.E2 = self._synth_v(L1 + 1), self._synth_v(L2 + 1)
        k = (
            torch.arange(self.Pv, dtype=torch.float64)[:, None]
            * torch.arange(Lo + 1)
            * (2 * math.pi / self.Pv)
        )
        self.Eo = (
            torch.cat([torch.cos(k), -torch.sin(k)], dim=1) / self.Pv
        )  # (Pv, 2(Lo+1)): f -> [Re h; Im h]
        Bc = torch.complex(self.Bo[..., : self.Pu], -self.Bo[..., self.Pu :])  # out = Re(Bc z)
        Bc = torch.einsum("vlu,ju->vlj", Bc, W.conj()) / self.Pu  # z_u = (1/Pu) sum_j h(b_j) e^{-i u b_j}
        self.Bod = torch.cat([Bc.real, -Bc.imag], dim=2).contiguous()  # (Lo+1, 2(Lo+1), 2Pu) on [Re h; Im h]

    def _fold_u(self, A: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
        """[Re; Im] Fourier rows over u -> [Re; Im] of g_v(b_j) = sum_u z_uv e^{i u b_j}, b_j = 2pi j / Pu."""
        Ac = torch.einsum("ju,vul->vjl", W, torch.complex(A[:, : self.Pu], A[:, self.Pu :]))
        return torch.cat([Ac.real, Ac.imag], dim=1).contiguous()

    def _synth_v(self, V: int) -> torch.Tensor:
        """(2V, Pv): [Re g_v; Im g_v] (v < V) -> f(a_k) = sum_v c_v Re(g_v e^{i v a_k}), c_0 = 1, else 2."""
        ang = torch.arange(V, dtype=torch.float64)[:, None] * torch.arange(self.Pv) * (2 * math.pi / self.Pv)
        c = torch.where(torch.arange(V) == 0, 1.0, 2.0).double()[:, None]
        return torch.cat([c * torch.cos(ang), -c * torch.sin(ang)], dim=0)

    def _to_fourier(self, L: int) -> torch.Tensor:
        n = 2 * L + 1
        y = _sh_fourier(L, n)  # (K, n, n) complex
        idx = _lm_index(L)
        A = torch.zeros(L + 1, self.Pu, 2 * (L + 1), dtype=torch.complex128)
        us = list(range(-L, L + 1))
        for v in range(L + 1):
            for j, k in enumerate(idx[v].tolist()):
                if k == (L + 1) ** 2:
                    continue
                for u in us:
                    A[v, u % self.Pu, j] = y[k, u % n, v % n]
        return torch.cat([A.real, A.imag], dim=1).contiguous()

    def _from_fourier(self, Lo: int, S: int) -> torch.Tensor:
        """Bo[v, j, (re|im, u)] with out_k = sum_{u, v>=0} c_v Re(M_{k,uv} z_uv), c_0 = 1, c_{v>0} = 2,
        M_{k,uv} = (1/4pi) int Y_k e^{i(ub+va)} sin b = (1/2) sum_{u'} y^k_{u',-v} I(u + u')."""
        n = 2 * Lo + 1
        y = _sh_fourier(Lo, n)
        idx = _lm_index(Lo)
        up = torch.arange(-Lo, Lo + 1)
        us = torch.arange(-S, S + 1)
        Iuu = _sin_integral(us[:, None] + up[None, :])  # (U, U')
        B = torch.zeros(Lo + 1, 2 * (Lo + 1), 2 * self.Pu, dtype=torch.float64)
        for v in range(Lo + 1):
            c = 1.0 if v == 0 else 2.0
            for j, k in enumerate(idx[v].tolist()):
                if k == (Lo + 1) ** 2:
                    continue
                yk = y[k, up % n, (-v) % n]  # (U',)
                M = 0.5 * (Iuu * yk[None, :]).sum(1)  # (U,) complex
                rows = us % self.Pu
                B[v, j, rows] = c * M.real
                B[v, j, self.Pu + rows] = -c * M.imag
        return B


@functools.lru_cache(maxsize=64)
def fft_plan(L1: int, L2: int, Lo: int) -> FFTPlan:
    """The cached plan of one (L1, L2, Lo): built once per process."""
    return FFTPlan(L1, L2, Lo)


class GauntFFT(nn.Module):
    """``forward(x (..., (L1+1)^2, C), y (..., (L2+1)^2, C)) -> (..., (Lo+1)^2, C)``: Gaunt product by FFT.

    Equal to ``molequi.nn.s2.GauntProduct(L1, L2, Lo)`` (the grid version) to round-off.
    ``transform``: "fft" (torch.fft on the 2D coefficient arrays, the paper's route) or "dft" (the same
    pipeline with both 1D DFTs as dense matrix products, the u-direction folded into the precomputed
    change-of-basis blocks; still O(L^3) per channel, and BLAS-bound, so faster on CPUs at small L).
    """

    def __init__(self, lmax1: int, lmax2: int, lmax_out: int, transform: str = "fft"):
        super().__init__()
        if transform not in TRANSFORMS:
            raise ConfigError(f"unknown Gaunt transform '{transform}'; valid: {', '.join(TRANSFORMS)}")
        self.transform = transform
        if not 0 <= min(lmax1, lmax2, lmax_out) <= max(lmax1, lmax2, lmax_out) <= 12:
            raise ConfigError(
                f"GauntFFT({lmax1}, {lmax2}, {lmax_out}): degrees must be 0..12 (e3nn's spherical harmonics, "
                "from which the change of basis is built, stop at l = 12)"
            )
        plan = fft_plan(lmax1, lmax2, lmax_out)
        self.lmax1, self.lmax2, self.lmax_out = lmax1, lmax2, lmax_out
        self.Pu, self.Pv, self.Vh = plan.Pu, plan.Pv, plan.Vh
        self._plan = plan  # float64 masters: each (dtype, device) gets its copy from them (not from a
        self._mats: dict = {}  # float32 buffer cast up), so float64 stays exact after any .to()
        for name in ("idx1", "idx2", "inv_o"):
            self.register_buffer(name, getattr(plan, name), persistent=False)

    def matrices(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The transform's matrices in the dtype and on the device of ``like`` (once, from float64)."""
        key = (like.dtype, like.device)
        names = ("A1", "A2", "Bo") if self.transform == "fft" else ("A1d", "A2d", "Bod", "E1", "E2", "Eo")
        if key not in self._mats:
            self._mats[key] = tuple(getattr(self._plan, n).to(like.device, like.dtype) for n in names)
        return self._mats[key]

    def _to_torus_dft(
        self, x: torch.Tensor, A: torch.Tensor, E: torch.Tensor, idx: torch.Tensor
    ) -> torch.Tensor:
        """(M, K) -> torus values (M, Pu, Pv) by two matrix products (transform "dft")."""
        xp = torch.cat([x, x.new_zeros(x.shape[0], 1)], dim=1)[:, idx]  # (M, V, 2(L+1))
        g = torch.matmul(xp.transpose(0, 1), A.transpose(1, 2))  # (V, M, 2Pu): [Re; Im] g_v(b_j)
        V, M = g.shape[0], g.shape[1]
        g = g.reshape(V, M, 2, self.Pu).permute(1, 3, 2, 0).reshape(M * self.Pu, 2 * V)
        return (g @ E).reshape(M, self.Pu, self.Pv)

    def _forward_dft(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        A1, A2, Bo, E1, E2, Eo = self.matrices(x)
        f = self._to_torus_dft(x, A1, E1, self.idx1) * self._to_torus_dft(y, A2, E2, self.idx2)
        M, Vo = f.shape[0], self.lmax_out + 1
        h = (f @ Eo).reshape(M, self.Pu, 2, Vo).permute(3, 0, 2, 1).reshape(Vo, M, 2 * self.Pu)
        return torch.matmul(h, Bo.transpose(1, 2))  # (Vo, M, 2(Lo+1))

    def _to_torus(self, x: torch.Tensor, A: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """(M, K) coefficients (M = batch x channels) -> torus values (M, Pv, Pu)."""
        xp = torch.cat([x, x.new_zeros(x.shape[0], 1)], dim=1)[:, idx]  # (M, V, 2(L+1))
        z = torch.matmul(xp.transpose(0, 1), A.transpose(1, 2)).transpose(0, 1)  # (M, V, 2Pu)
        z = torch.complex(z[..., : self.Pu], z[..., self.Pu :])  # (M, V, Pu): Fourier coefficients
        z = nn.functional.pad(z, (0, 0, 0, self.Vh - z.shape[1]))
        return torch.fft.irfftn(z, s=(self.Pu, self.Pv), dim=(2, 1), norm="forward")

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        batch = torch.broadcast_shapes(x.shape[:-2], y.shape[:-2])
        C = max(x.shape[-1], y.shape[-1])

        def flat(t):  # (..., K, C) -> (N C, K)
            t = t.expand(*batch, t.shape[-2], C).reshape(-1, t.shape[-2], C)
            return t.transpose(1, 2).reshape(-1, t.shape[1])

        if self.transform == "dft":
            out = self._forward_dft(flat(x), flat(y.to(x.dtype)))
        else:
            A1, A2, Bo = self.matrices(x)
            f = self._to_torus(flat(x), A1, self.idx1) * self._to_torus(flat(y.to(x.dtype)), A2, self.idx2)
            z = torch.fft.rfftn(f, dim=(2, 1), norm="forward")[:, : self.lmax_out + 1]  # (M, Vo, Pu)
            zr = torch.cat([z.real, z.imag], dim=2).transpose(0, 1)  # (Vo, M, 2Pu)
            out = torch.matmul(zr, Bo.transpose(1, 2))  # (Vo, M, 2(Lo+1))
        out = out.transpose(0, 1).reshape(out.shape[1], -1)[:, self.inv_o]  # (M, Ko)
        return out.reshape(-1, C, out.shape[1]).transpose(1, 2).reshape(*batch, out.shape[1], C)


__all__ = ["GauntFFT", "FFTPlan", "fft_plan", "TRANSFORMS"]
