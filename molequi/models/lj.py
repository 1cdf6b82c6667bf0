"""A smooth Lennard-Jones pair potential behind molequi's model interface: the reference test potential.

For a pair at distance r < r_c with parameters (epsilon, sigma) (eV, Å)

    V(r)    = 4 epsilon [ (sigma/r)^12 - (sigma/r)^6 ]
    V_sf(r) = V(r) - V(r_c) - (r - r_c) V'(r_c)          (shifted force; Toxvaerd & Dyre, JCP 134, 081102)

and V_sf = 0 beyond r_c, so both the energy and the force go continuously to zero at the cutoff (the
second derivative jumps, which does not matter for energy conservation with velocity Verlet at sensible
timesteps). Each ordered edge carries half of its pair energy, so per-atom energies are
E_i = 1/2 sum_{j in N(i)} V_sf(r_ij) over the full neighbour list, and forces / stress come from
``molequi.response.energy_response`` like every other model.

Per-element (epsilon, sigma) are mixed by the Lorentz-Berthelot rules (epsilon_ij = sqrt(eps_i eps_j),
sigma_ij = (sigma_i + sigma_j)/2); explicit pair entries override the mix. The defaults are argon
(epsilon = 0.0104 eV, sigma = 3.40 Å, r_c = 2.5 sigma = 8.5 Å).

No training is needed; ``from_config(cfg, statistics)`` ignores ``statistics`` except to take its element
list when the config lists none.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn
from torch_geometric.utils import scatter

from molequi import keys as K
from molequi.errors import ConfigError
from molequi.graph.neighbors import edge_vectors
from molequi.response import energy_response

N_Z = 119  # parameter tables are indexed by atomic number 0..118


@dataclass
class LennardJonesConfig:
    """Parameters of ``LennardJones`` (eV, Å).

    - ``r_max``: cutoff r_c (Å).
    - ``epsilon`` / ``sigma``: parameters of every element not listed in ``per_element``.
    - ``per_element``: {Z: [epsilon, sigma]} for individual elements (mixed by Lorentz-Berthelot).
    - ``pairs``: [[Z1, Z2, epsilon, sigma], ...] explicit pair parameters that override the mixing.
    - ``elements``: atomic numbers the model accepts; ``None`` means every element (Z = 1..118).
    """

    r_max: float = 8.5  # cutoff r_c (Å); energy and force go to zero there (shifted force)
    epsilon: float = 0.0104  # well depth (eV) of every element not in per_element (argon)
    sigma: float = 3.40  # zero-crossing distance (Å) of every element not in per_element (argon)
    per_element: dict[int, list[float]] = field(default_factory=dict)  # {Z: [epsilon, sigma]}, mixed (L-B)
    pairs: list[list[float]] = field(default_factory=list)  # [[Z1, Z2, epsilon, sigma], ...] override mixing
    elements: list[int] | None = None  # atomic numbers accepted; null means every element

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        """ConfigError for an unusable value; normalises per_element / elements (idempotent)."""
        if self.r_max <= 0:
            raise ConfigError(f"LennardJones r_max must be positive, got {self.r_max}")
        if self.epsilon < 0 or self.sigma <= 0:
            raise ConfigError(
                f"LennardJones needs epsilon >= 0 and sigma > 0, got {self.epsilon}, {self.sigma}"
            )
        self.per_element = {int(z): [float(e), float(s)] for z, (e, s) in self.per_element.items()}
        for z, (e, s) in self.per_element.items():
            if not 1 <= z < N_Z or e < 0 or s <= 0:
                raise ConfigError(
                    f"LennardJones per_element entry Z={z}: epsilon={e}, sigma={s} is invalid "
                    "(need 1 <= Z <= 118, epsilon >= 0, sigma > 0)"
                )
        for p in self.pairs:
            if len(p) != 4:
                raise ConfigError(f"LennardJones pair entry {p} must be [Z1, Z2, epsilon, sigma]")
            if p[2] < 0 or p[3] <= 0:
                raise ConfigError(f"LennardJones pair entry {p}: need epsilon >= 0 and sigma > 0")
        if self.elements is not None:
            self.elements = sorted({int(z) for z in self.elements})
            if not self.elements or self.elements[0] < 1 or self.elements[-1] >= N_Z:
                raise ConfigError(f"LennardJones elements must be atomic numbers 1..118, got {self.elements}")

    def to_dict(self) -> dict:
        return asdict(self)


class LennardJones(nn.Module):
    """Shifted-force Lennard-Jones; ``forward(data, compute_forces, compute_stress)`` like any model.

    Attributes: ``r_max`` (Å), ``elements`` (list of Z), ``conservative = True``, ``config``.
    """

    Config = LennardJonesConfig
    conservative = True

    def __init__(self, config: LennardJonesConfig | None = None, **kwargs):
        super().__init__()
        if config is None:
            config = LennardJonesConfig(**kwargs)
        elif kwargs:
            raise ConfigError("give either a LennardJones.Config or keyword arguments, not both")
        self.config = config
        self.r_max = float(config.r_max)
        self.elements = list(config.elements) if config.elements is not None else list(range(1, N_Z))
        eps = torch.full((N_Z,), float(config.epsilon), dtype=torch.float64)
        sig = torch.full((N_Z,), float(config.sigma), dtype=torch.float64)
        for z, (e, s) in config.per_element.items():
            eps[z], sig[z] = e, s
        eps_ij = torch.sqrt(eps[:, None] * eps[None, :])  # (119, 119) Lorentz-Berthelot
        sig_ij = 0.5 * (sig[:, None] + sig[None, :])
        for z1, z2, e, s in config.pairs:
            z1, z2 = int(z1), int(z2)
            eps_ij[z1, z2] = eps_ij[z2, z1] = float(e)
            sig_ij[z1, z2] = sig_ij[z2, z1] = float(s)
        self.register_buffer("epsilon", eps_ij)
        self.register_buffer("sigma", sig_ij)

    @classmethod
    def from_config(cls, cfg: LennardJonesConfig | dict, statistics=None) -> LennardJones:
        if isinstance(cfg, dict):
            cfg = LennardJonesConfig(**cfg)
        if cfg.elements is None and statistics is not None and statistics.elements:
            cfg = LennardJonesConfig(**{**cfg.to_dict(), "elements": list(statistics.elements)})
        return cls(cfg)

    def pair_energy(self, r: torch.Tensor, eps: torch.Tensor, sig: torch.Tensor) -> torch.Tensor:
        """Shifted-force pair energy V_sf(r) (eV) for distances ``r`` (E,) Å; zero for r >= r_max."""
        rc = self.r_max
        inside = r < rc
        r_safe = torch.where(inside, r, torch.full_like(r, rc))
        sr6 = (sig / r_safe) ** 6
        src6 = (sig / rc) ** 6
        v = 4 * eps * (sr6 * sr6 - sr6)
        v_c = 4 * eps * (src6 * src6 - src6)
        dv_c = 4 * eps * (-12 * src6 * src6 + 6 * src6) / rc  # V'(r_c)
        v_sf = v - v_c - (r_safe - rc) * dv_c
        return torch.where(inside, v_sf, torch.zeros_like(v_sf))

    def atomic_energies(self, data, pos: torch.Tensor, cell: torch.Tensor) -> torch.Tensor:
        """Per-atom energies (n,) eV: half of each edge's pair energy goes to the receiver."""
        edge_index = data[K.EDGE_INDEX]
        unit_shifts = (
            data[K.UNIT_SHIFTS]
            if K.UNIT_SHIFTS in data
            else torch.zeros((edge_index.shape[1], 3), dtype=torch.long, device=pos.device)
        )
        vec = edge_vectors(pos, edge_index, unit_shifts, cell, getattr(data, K.BATCH, None))  # (E, 3)
        r = torch.linalg.norm(vec, dim=-1)  # (E,)
        z = data[K.NUMBERS]
        zs, zr = z[edge_index[0]], z[edge_index[1]]
        eps = self.epsilon.to(pos.dtype)[zs, zr]
        sig = self.sigma.to(pos.dtype)[zs, zr]
        e_edge = 0.5 * self.pair_energy(r, eps, sig)  # (E,)
        return scatter(e_edge, edge_index[1], dim=0, dim_size=pos.shape[0], reduce="sum")

    def forward(
        self, data, compute_forces: bool = True, compute_stress: bool = False, create_graph: bool = False
    ) -> dict[str, torch.Tensor]:
        return energy_response(
            self.atomic_energies,
            data,
            compute_forces=compute_forces,
            compute_stress=compute_stress,
            create_graph=create_graph,
        )

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"r_max={c.r_max}, epsilon={c.epsilon}, sigma={c.sigma}, per_element={c.per_element}, "
            f"pairs={c.pairs}"
        )


__all__ = ["LennardJones", "LennardJonesConfig"]
