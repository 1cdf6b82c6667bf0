"""Radial pieces of a message-passing force field: Bessel basis, smooth cutoff envelope, radial MLP.

All lengths are in Å. Shapes: E = edges.

- ``BesselBasis``:      b_n(r) = sqrt(2 / r_max) sin(n pi r / r_max) / r,  n = 1..num_basis   (MACE, DimeNet)
- ``PolynomialCutoff``: f(r) = 1 - (p+1)(p+2)/2 u^p + p(p+2) u^(p+1) - p(p+1)/2 u^(p+2),  u = r / r_max,
                        f = 0 for r >= r_max; f and its first two derivatives vanish at r_max (DimeNet eq. 8)
- ``RadialMLP``:        bias-free MLP with normalised SiLU, weights scaled by 1/sqrt(fan_in) in the forward
                        (e3nn's ``FullyConnectedNet`` convention, used by MACE for the tensor-product weights)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from molequi.errors import ConfigError


class BesselBasis(nn.Module):
    """Sine Bessel functions of the distance, (E,) or (E, 1) Å -> (E, num_basis) in 1/Å."""

    def __init__(self, r_max: float, num_basis: int = 8, trainable: bool = False):
        super().__init__()
        if r_max <= 0 or num_basis < 1:
            raise ConfigError(f"BesselBasis needs r_max > 0 and num_basis >= 1, got {r_max}, {num_basis}")
        self.r_max = float(r_max)
        freqs = math.pi / self.r_max * torch.arange(1, num_basis + 1, dtype=torch.get_default_dtype())
        if trainable:
            self.frequencies = nn.Parameter(freqs)
        else:
            self.register_buffer("frequencies", freqs)
        self.prefactor = math.sqrt(2.0 / self.r_max)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        r = r.reshape(-1, 1)  # [E, 1]
        return self.prefactor * torch.sin(self.frequencies * r) / r  # [E, num_basis]


class PolynomialCutoff(nn.Module):
    """Smooth envelope f(r) in [0, 1], (E,) or (E, 1) Å -> (E, 1); exactly 0 beyond ``r_max``."""

    def __init__(self, r_max: float, p: int = 5):
        super().__init__()
        if r_max <= 0 or p < 1:
            raise ConfigError(f"PolynomialCutoff needs r_max > 0 and p >= 1, got {r_max}, {p}")
        self.r_max = float(r_max)
        self.p = int(p)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        p = self.p
        u = r.reshape(-1, 1) / self.r_max  # [E, 1]
        up = u**p
        f = 1.0 - (p + 1) * (p + 2) / 2 * up + p * (p + 2) * up * u - p * (p + 1) / 2 * up * u * u
        return f * (u < 1.0).to(f.dtype)


def _normalised_silu_constant() -> float:
    """c such that E[(c silu(z))^2] = 1 for z ~ N(0, 1) (e3nn ``normalize2mom``), by Gauss-Hermite."""
    import numpy as np

    z, w = np.polynomial.hermite_e.hermegauss(200)
    silu = z / (1.0 + np.exp(-z))
    second_moment = float((w * silu**2).sum() / w.sum())
    return 1.0 / math.sqrt(second_moment)


SILU_NORM = _normalised_silu_constant()


class RadialMLP(nn.Module):
    """Bias-free MLP ``sizes[0] -> ... -> sizes[-1]``, SiLU between layers: (E, sizes[0]) -> (E, sizes[-1]).

    Weights are N(0, 1) and each layer divides by sqrt(fan_in), so activations keep unit second moment
    (e3nn ``nn.FullyConnectedNet``). No activation after the last layer.
    """

    def __init__(self, sizes: Sequence[int]):
        super().__init__()
        sizes = [int(s) for s in sizes]
        if len(sizes) < 2 or min(sizes) < 1:
            raise ConfigError(f"RadialMLP needs at least two positive sizes, got {sizes}")
        self.sizes = sizes
        self.weights = nn.ParameterList(
            [nn.Parameter(torch.randn(a, b)) for a, b in zip(sizes[:-1], sizes[1:])]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        last = len(self.weights) - 1
        for i, w in enumerate(self.weights):
            x = x @ (w / math.sqrt(w.shape[0]))
            if i < last:
                x = SILU_NORM * torch.nn.functional.silu(x)
        return x


__all__ = ["BesselBasis", "PolynomialCutoff", "RadialMLP", "SILU_NORM"]
