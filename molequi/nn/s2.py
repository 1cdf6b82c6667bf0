"""Functions on the sphere S2: projection of spherical-harmonic coefficients to a grid and back (e3nn
``ToS2Grid`` / ``FromS2Grid``), the S2 activations of EquiformerV2 and the Gaunt (grid) product.

Layout: coefficient stacks (..., K, C), K = (L+1)^2 in e3nn order, channels last; grids (..., G, C) with
G = res_beta * res_alpha points (flattened).

    f(s) = sum_k Y_k(s) x_k                         (to_grid, Y_k e3nn 'component'-normalised harmonics)
    x_k  = sum_g q_g Y_k(s_g) f(s_g) ~ (1/4pi) int Y_k f dOmega        (from_grid, quadrature weights q_g)

``from_grid(to_grid(x)) == x`` for band-limited x. The quadrature is exact for integrands of degree
< ``res_beta`` in beta and |m| < ``res_alpha`` in alpha, so a product of degree-L1 and degree-L2 functions
projected on degree <= Lo is exact with ``S2Grid.exact_for(L1 + L2 + Lo)``.
"""

from __future__ import annotations

import math

import torch
from e3nn import o3
from torch import nn

from molequi.errors import ConfigError


def _quadrature_weights(res_beta: int) -> torch.Tensor:
    """Weights (res_beta,) of e3nn's beta rings (``o3.FromS2Grid``, Kostelec & Rockmore), in float64."""
    b = res_beta // 2
    j = torch.arange(2 * b, dtype=torch.float64)[:, None]
    k = torch.arange(b, dtype=torch.float64)
    ring = torch.sin((2 * j + 1) * (2 * k + 1) * math.pi / (4 * b)) / (2 * k + 1)
    return (2 / b) * torch.sin(math.pi * (2 * j[:, 0] + 1) / (4 * b)) * ring.sum(1)


def _grid_matrices(lmax_to: int, lmax_from: int, res_beta: int, res_alpha: int):
    """(K_to, G) matrix Y_k(s_g) and (G, K_from) matrix q_g Y_k(s_g), float64, on e3nn's S2 grid.

    e3nn's ``ToS2Grid('component')`` scales degree l by 1 / sqrt((2l+1)(lmax+1)) (unit-variance grid values);
    we want the function itself, f = sum_k x_k Y_k with 'component' harmonics (mean of Y_k^2 = 1), so the
    matrices use ``o3.spherical_harmonics`` at the points of ``o3.s2_grid`` and the quadrature weights q_g
    (normalised to sum 1) of ``o3.FromS2Grid``, evaluated here in float64 (e3nn evaluates them in the
    default dtype, float32 for a model built as usual, which left the "exact" grid products off by ~1e-7
    relative in float64).
    """
    dt = torch.float64
    betas, alphas = o3.s2_grid(res_beta, res_alpha, dtype=dt)
    B, A = torch.meshgrid(betas, alphas, indexing="ij")
    xyz = o3.angles_to_xyz(A, B).reshape(-1, 3)  # [G, 3]
    lmax = max(lmax_to, lmax_from)
    Y = o3.spherical_harmonics(
        list(range(lmax + 1)), xyz, normalize=True, normalization="component"
    )  # [G, K]
    q = _quadrature_weights(res_beta)[:, None].expand(res_beta, res_alpha).reshape(-1)  # [G]
    q = q / q.sum()
    to_mat = Y[:, : (lmax_to + 1) ** 2].T.contiguous()  # [K_to, G]
    from_mat = q[:, None] * Y[:, : (lmax_from + 1) ** 2]  # [G, K_from]
    return to_mat, from_mat


class S2Grid(nn.Module):
    """Projection between coefficients up to ``lmax`` and a (res_beta x res_alpha) grid (two fixed matrices).

    ``to_grid(x (..., K, C)) -> (..., G, C)``; ``from_grid(f (..., G, C)) -> (..., K_out, C)`` with
    K_out = (lmax_out + 1)^2 (``lmax_out`` defaults to ``lmax``).

    The matrices are buffers in the module's dtype, and a float64 copy is kept beside them: a module built in
    float32 and moved to float64 (``.double()``, ``.to``) gets the exact float64 matrices back (``_apply``), and
    an input of another dtype than the buffers' is projected with the exact copy cast to its dtype.
    """

    def __init__(
        self,
        lmax: int,
        res_beta: int | None = None,
        res_alpha: int | None = None,
        lmax_out: int | None = None,
    ):
        super().__init__()
        lmax_out = lmax if lmax_out is None else lmax_out
        res_beta = res_beta or 2 * (lmax + 1)
        res_alpha = res_alpha or 2 * lmax + 2
        if res_beta % 2 or res_beta < 2 or res_alpha < max(lmax, lmax_out) + 1:
            raise ConfigError(
                f"S2Grid(lmax={lmax}): res_beta must be even and res_alpha > lmax, "
                f"got {res_beta}, {res_alpha}"
            )
        self.lmax, self.lmax_out, self.res = lmax, lmax_out, (res_beta, res_alpha)
        to_mat, from_mat = _grid_matrices(lmax, lmax_out, res_beta, res_alpha)
        dtype = torch.get_default_dtype()
        # float64 whatever the default dtype; not buffers, so module.to(float32) cannot round them
        self._exact = {"to_mat": to_mat.to(torch.float64), "from_mat": from_mat.to(torch.float64)}
        self.register_buffer("to_mat", to_mat.to(dtype), persistent=False)
        self.register_buffer("from_mat", from_mat.to(dtype), persistent=False)

    def _apply(self, fn, recurse=True):
        out = super()._apply(fn, recurse)
        for name, exact in self._exact.items():  # the buffers' new dtype and device, from the exact values
            now = self._buffers[name]
            if now.is_floating_point():
                self._buffers[name] = exact.to(device=now.device, dtype=now.dtype)
        return out

    def _matrix(self, name: str, like: torch.Tensor) -> torch.Tensor:
        mat = self._buffers[name]
        return mat if mat.dtype == like.dtype else self._exact[name].to(device=mat.device, dtype=like.dtype)

    @staticmethod
    def exact_for(degree: int) -> tuple[int, int]:
        """(res_beta, res_alpha) whose quadrature integrates band-limited integrands of ``degree`` exactly."""
        rb = degree + 2 + (degree % 2)  # even, > degree
        return rb, degree + 2

    def to_grid(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("kg,...kc->...gc", self._matrix("to_mat", x), x)

    def from_grid(self, f: torch.Tensor) -> torch.Tensor:
        return torch.einsum("gk,...gc->...kc", self._matrix("from_mat", f), f)


class S2Activation(nn.Module):
    """Pointwise nonlinearity on the sphere: x -> from_grid(act(to_grid(x))), (N, K, C) -> (N, K, C).

    Equivariant up to the grid's aliasing (exactly equivariant for rotations that map the grid to itself,
    approximately otherwise; the error falls quickly with the resolution).
    """

    def __init__(self, lmax: int, res: int | None = None, act: nn.Module | None = None):
        super().__init__()
        res = res or 2 * (lmax + 1)
        self.grid = S2Grid(lmax, res + (res % 2), max(res, 2 * lmax + 2))
        self.act = act or nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.grid.from_grid(self.act(self.grid.to_grid(x)))


class SeparableS2Activation(nn.Module):
    """EquiformerV2's separable S2 activation: l = 0 through SiLU, l > 0 through the S2 activation.

    x (N, K, C) -> (N, K, C):  y_0 = silu(x_0),  y_{l>0} = [from_grid(silu(to_grid(x)))]_{l>0}.
    """

    def __init__(self, lmax: int, res: int | None = None):
        super().__init__()
        self.s2 = S2Activation(lmax, res)
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.s2(x)
        return torch.cat([self.act(x[..., :1, :]), y[..., 1:, :]], dim=-2)


def gaunt_000(l1: int, l2: int, l3: int) -> float:
    """(1/4pi) int Y^{l1}_0 Y^{l2}_0 Y^{l3}_0 dOmega for e3nn 'component' harmonics (zonal about y).

    Y^l_0 = sqrt(2l+1) P_l(cos beta), so this is sqrt((2l1+1)(2l2+1)(2l3+1)) (1/2) int_{-1}^{1} P_l1 P_l2 P_l3
    dx, evaluated exactly by Gauss-Legendre quadrature (independent of any S2 grid).
    """
    import numpy as np
    from numpy.polynomial import legendre

    x, w = legendre.leggauss((l1 + l2 + l3) // 2 + 2)
    p = [legendre.legval(x, [0] * l + [1]) for l in (l1, l2, l3)]
    return float(math.sqrt((2 * l1 + 1) * (2 * l2 + 1) * (2 * l3 + 1)) * 0.5 * np.sum(w * p[0] * p[1] * p[2]))


def gaunt_path_weight(l1: int, l2: int, lo: int) -> float:
    """The CG path weight c that turns a Clebsch-Gordan path into the Gaunt product.

    The Gaunt product::

        out^{lo}_{mo} = sum (1/4pi) int Y^{lo}_{mo} Y^{l1}_{m1} Y^{l2}_{m2} x_{m1} y_{m2}

    (``GauntProduct`` with component normalisation) equals c * sum_{m1 m2} C_{m1 m2 mo} x_{m1} y_{m2} with
    C = ``o3.wigner_3j(l1, l2, lo)`` and c = gaunt_000 / C[l1, l2, lo] (centre entries), zero unless
    l1 + l2 + lo is even. This is the CG path weight that makes a CG product equal the Gaunt product.
    """
    if (l1 + l2 + lo) % 2 or not abs(l1 - l2) <= lo <= l1 + l2:
        return 0.0
    C = o3.wigner_3j(l1, l2, lo, dtype=torch.float64)
    return gaunt_000(l1, l2, lo) / float(C[l1, l2, lo])


class GauntProduct(nn.Module):
    """Channel-wise product of two spherical functions through a grid (Gaunt tensor product, Luo et al. 2024).

    forward(x (..., (L1+1)^2, C), y (..., (L2+1)^2, C)) -> (..., (Lo+1)^2, C)::

        out = from_grid(to_grid(x) * to_grid(y)),
        i.e. out^{lo} = sum_{l1,l2} gaunt_path_weight * CG(x^{l1}, y^{l2})

    over the parity-allowed paths (l1 + l2 + lo even) only. The grid is exact (no aliasing).
    Cost per channel O((K1 + K2 + Ko) G) with G ~ (L1 + L2 + Lo)^2 points: O(L^4) with dense projections.
    """

    def __init__(self, lmax1: int, lmax2: int, lmax_out: int):
        super().__init__()
        rb, ra = S2Grid.exact_for(lmax1 + lmax2 + lmax_out)
        self.g1 = S2Grid(lmax1, rb, ra, lmax_out=lmax_out)
        self.g2 = S2Grid(lmax2, rb, ra, lmax_out=lmax_out)
        self.lmax1, self.lmax2, self.lmax_out = lmax1, lmax2, lmax_out

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.g1.from_grid(self.g1.to_grid(x) * self.g2.to_grid(y))


__all__ = [
    "S2Grid",
    "S2Activation",
    "SeparableS2Activation",
    "GauntProduct",
    "gaunt_000",
    "gaunt_path_weight",
]
