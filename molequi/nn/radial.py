"""Radial pieces of a message-passing force field: Bessel basis, smooth cutoff envelope, radial MLP.

All lengths are in Å. Shapes: E = edges.

- ``BesselBasis``:      b_n(r) = sqrt(2 / r_max) sin(n pi r / r_max) / r,  n = 1..num_basis   (MACE, DimeNet)
- ``PolynomialCutoff``: f(r) = 1 - (p+1)(p+2)/2 u^p + p(p+2) u^(p+1) - p(p+1)/2 u^(p+2),  u = r / r_max,
                        f = 0 for r >= r_max; f and its first two derivatives vanish at r_max (DimeNet eq. 8)
- ``RadialMLP``:        bias-free MLP with normalised SiLU, weights scaled by 1/sqrt(fan_in) in the forward
                        (e3nn's ``FullyConnectedNet`` convention, used by MACE for the tensor-product weights)

Alternatives mace-torch offers (``radial_type``, ``distance_transform``, ``pair_repulsion``), same formulas:

- ``GaussianBasis``:    b_n(r) = exp(-(r - mu_n)^2 / (2 delta^2)),  mu_n = linspace(0, r_max, N), delta = r_max/(N-1)
- ``ChebyshevBasis``:   b_n(r) = T_n(r), n = 1..N (Chebyshev polynomials of the first kind of r in Å, unscaled,
                        as mace-torch evaluates them)
- ``AgnesiTransform``:  r -> 1 / (1 + a (r/r0)^q / (1 + (r/r0)^(q-p))),  r0 = (R_cov(z_i) + R_cov(z_j)) / 2
                        (ACEpotentials.jl; the basis is evaluated at the transformed distance)
- ``SoftTransform``:    r -> p0 + (r - p0) (1 + tanh(alpha (r - m) / (p1 - p0))) / 2,
                        p0 = 3/4 r0, p1 = 4/3 r0, m = (p0 + p1)/2, r0 = R_cov(z_i) + R_cov(z_j)
- ``ZBLRepulsion``:     per-atom E_i = 1/2 sum_j 14.3996 Z_i Z_j / r phi(r / a) f_p(r; R_cov(z_i) + R_cov(z_j)) eV,
                        a = 0.4543 * 0.529 / (Z_i^0.3 + Z_j^0.3) Å, phi the ZBL universal screening function
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

    def forward_blocks(self, x: torch.Tensor, size: int,
                       scale: torch.Tensor | None = None) -> list[torch.Tensor]:
        """``forward(x) * scale`` as a list of its column blocks of ``size``, each its own contiguous
        (E, size) product of the last layer (no (E, out) tensor to split, whose backward would copy it).
        ``scale`` (E, 1) multiplies the last hidden layer, which is the same by linearity."""
        x = self.hidden(x, scale)
        return [x @ block for block in self.last_weight().split(size, dim=1)]

    def hidden(self, x: torch.Tensor, scale: torch.Tensor | None = None) -> torch.Tensor:
        """The last hidden layer (E, sizes[-2]) times ``scale`` (E, 1): ``forward(x) * scale`` is this @
        ``last_weight()``."""
        for i in range(len(self.weights) - 1):  # not self.weights[:-1]: a sliced ParameterList re-wraps them
            w = self.weights[i]
            x = SILU_NORM * torch.nn.functional.silu(x @ (w / math.sqrt(w.shape[0])))
        return x if scale is None else x * scale

    def last_weight(self) -> torch.Tensor:
        """The last layer's normalised weight (sizes[-2], sizes[-1])."""
        w = self.weights[len(self.weights) - 1]
        return w / math.sqrt(w.shape[0])


def polynomial_envelope(u: torch.Tensor, p: int) -> torch.Tensor:
    """The polynomial cutoff of ``PolynomialCutoff`` at u = r / r_c (any shape), 0 for u >= 1.

    Evaluated term by term with ``torch.pow`` in mace-torch's order: close to u = 1 the terms cancel to
    (1 - u)^3, so the order decides the last bits of the ZBL term, whose cutoff sits near bond lengths
    (it then equals mace-torch's ``ZBLBasis`` bit for bit on the same lengths).
    """
    f = (1.0 - ((p + 1.0) * (p + 2.0) / 2.0) * torch.pow(u, p) + p * (p + 2.0) * torch.pow(u, p + 1)
         - (p * (p + 1.0) / 2) * torch.pow(u, p + 2))
    return f * (u < 1.0).to(f.dtype)


class GaussianBasis(nn.Module):
    """Gaussians centred on an even grid over [0, r_max], (E,) Å -> (E, num_basis) (mace-torch's)."""

    def __init__(self, r_max: float, num_basis: int = 8):
        super().__init__()
        if r_max <= 0 or num_basis < 2:
            raise ConfigError(f"GaussianBasis needs r_max > 0 and num_basis >= 2, got {r_max}, {num_basis}")
        self.register_buffer("centres", torch.linspace(0.0, float(r_max), num_basis,
                                                       dtype=torch.get_default_dtype()))
        self.coeff = -0.5 / (float(r_max) / (num_basis - 1)) ** 2

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        return torch.exp(self.coeff * (r.reshape(-1, 1) - self.centres) ** 2)


class ChebyshevBasis(nn.Module):
    """T_1(r) .. T_N(r) of the distance in Å, by the three-term recurrence: (E,) -> (E, num_basis)."""

    def __init__(self, r_max: float, num_basis: int = 8):
        super().__init__()
        if num_basis < 1:
            raise ConfigError(f"ChebyshevBasis needs num_basis >= 1, got {num_basis}")
        self.num_basis = int(num_basis)

    def forward(self, r: torch.Tensor) -> torch.Tensor:
        x = r.reshape(-1, 1)
        out, prev, cur = [], torch.ones_like(x), x
        for _ in range(self.num_basis):
            out.append(cur)
            prev, cur = cur, 2 * x * cur - prev
        return torch.cat(out, dim=1)


class _PairTransform(nn.Module):
    """Base of the element-pair distance transforms: per-element covalent radii (Å) as a buffer."""

    def __init__(self, elements: Sequence[int]):
        super().__init__()
        from ase.data import covalent_radii

        self.register_buffer("covalent_radii", torch.tensor([float(covalent_radii[int(z)]) for z in elements],
                                                            dtype=torch.get_default_dtype()))

    def pair_radius(self, element: torch.Tensor, sender: torch.Tensor, receiver: torch.Tensor) -> torch.Tensor:
        radii = self.covalent_radii[element]
        return (radii[sender] + radii[receiver]).unsqueeze(-1)  # [E, 1]


class AgnesiTransform(_PairTransform):
    """Agnesi distance transform (see the module docstring): (r (E,), element, sender, receiver) -> (E, 1)."""

    def __init__(self, elements: Sequence[int], q: float = 0.9183, p: float = 4.5791, a: float = 1.0805):
        super().__init__(elements)
        for name, value in (("q", q), ("p", p), ("a", a)):
            self.register_buffer(name, torch.tensor(float(value), dtype=torch.get_default_dtype()))

    def forward(self, r, element, sender, receiver):
        x = r.reshape(-1, 1) / (0.5 * self.pair_radius(element, sender, receiver))
        return 1.0 / (1.0 + self.a * x**self.q / (1.0 + x ** (self.q - self.p)))


class SoftTransform(_PairTransform):
    """Soft (tanh) distance transform (see the module docstring): -> (E, 1) Å."""

    def __init__(self, elements: Sequence[int], alpha: float = 4.0):
        super().__init__(elements)
        self.register_buffer("alpha", torch.tensor(float(alpha), dtype=torch.get_default_dtype()))

    def forward(self, r, element, sender, receiver):
        r0 = self.pair_radius(element, sender, receiver)
        p0, p1 = 0.75 * r0, (4.0 / 3.0) * r0
        x = r.reshape(-1, 1)
        s = 0.5 * (1.0 + torch.tanh(self.alpha / (p1 - p0) * (x - 0.5 * (p0 + p1))))
        return p0 + (x - p0) * s


class ZBLRepulsion(nn.Module):
    """ZBL screened nuclear repulsion per atom (eV), mace-torch's ``ZBLBasis``: -> (n,).

    forward(r (E,) Å, element (n,), sender (E,), receiver (E,), n). Half of each directed edge's pair energy
    goes to the receiver, so a symmetric edge list gives each pair energy once in the sum over atoms.
    """

    def __init__(self, elements: Sequence[int], p: int = 6):
        super().__init__()
        from ase.data import covalent_radii

        dtype = torch.get_default_dtype()
        self.p = int(p)
        self.register_buffer("numbers", torch.tensor([float(z) for z in elements], dtype=dtype))
        self.register_buffer("covalent_radii", torch.tensor([float(covalent_radii[int(z)]) for z in elements],
                                                            dtype=dtype))
        self.register_buffer("c", torch.tensor([0.1818, 0.5099, 0.2802, 0.02817], dtype=dtype))
        self.register_buffer("a_exp", torch.tensor(0.300, dtype=dtype))
        self.register_buffer("a_prefactor", torch.tensor(0.4543, dtype=dtype))

    def forward(self, r, element, sender, receiver, n: int) -> torch.Tensor:
        from molequi.nn.scatter import scatter_sum

        z = self.numbers[element]
        zu, zv = z[sender], z[receiver]
        a = self.a_prefactor * 0.529 / (zu**self.a_exp + zv**self.a_exp)
        x = r.reshape(-1) / a
        phi = (self.c[0] * torch.exp(-3.2 * x) + self.c[1] * torch.exp(-0.9423 * x)
               + self.c[2] * torch.exp(-0.4028 * x) + self.c[3] * torch.exp(-0.2016 * x))
        v = 14.3996 * zu * zv / r.reshape(-1) * phi
        radii = self.covalent_radii[element]
        rc = radii[sender] + radii[receiver]
        v = 0.5 * v * polynomial_envelope(r.reshape(-1) / rc, self.p)
        return scatter_sum(v, receiver, n)


__all__ = ["BesselBasis", "GaussianBasis", "ChebyshevBasis", "PolynomialCutoff", "RadialMLP", "SILU_NORM",
           "AgnesiTransform", "SoftTransform", "ZBLRepulsion", "polynomial_envelope"]
