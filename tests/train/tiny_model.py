"""A tiny invariant pair-potential network with the ``molequi.models`` interface, for trainer tests.

An embedded-atom-like network: h_r = sum_{edges s->r} MLP(rbf(|r_sr|)) * emb[Z_s] * f_cut(|r_sr|),
E = sum_r (e0[Z_r] + scale * readout(h_r * emb'[Z_r])).
Forces by autograd through ``molequi.response.energy_response``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch_geometric.utils import scatter

from molequi import keys as K
from molequi.errors import ConfigError
from molequi.graph.neighbors import edge_vectors
from molequi.response import batch_vector, energy_response


class TinyModel(torch.nn.Module):
    @dataclass
    class Config:
        r_max: float = 4.0  # cutoff radius, Å
        hidden: int = 16  # width of the radial network
        num_basis: int = 8  # Gaussian radial basis functions

        def validate(self) -> None:
            if self.r_max <= 0 or self.hidden < 1 or self.num_basis < 1:
                raise ConfigError("tiny model: r_max, hidden and num_basis must be positive")

    conservative = True

    def __init__(self, cfg: Config, e0s: dict[int, float] | None = None, scale: float = 1.0,
                 elements=()):
        super().__init__()
        self.cfg = cfg
        self.r_max = float(cfg.r_max)
        self.elements = [int(z) for z in elements]
        table = torch.zeros(119)
        for z, v in (e0s or {}).items():
            table[int(z)] = v
        self.register_buffer("e0", table)
        self.scale = float(scale)
        self.embed = torch.nn.Embedding(119, cfg.hidden)
        self.radial = torch.nn.Sequential(torch.nn.Linear(cfg.num_basis, cfg.hidden), torch.nn.SiLU(),
                                          torch.nn.Linear(cfg.hidden, cfg.hidden))
        self.register_buffer("centers", torch.linspace(0.5, cfg.r_max, cfg.num_basis))
        self.embed_out = torch.nn.Embedding(119, cfg.hidden)
        self.readout = torch.nn.Sequential(torch.nn.Linear(cfg.hidden, cfg.hidden), torch.nn.SiLU(),
                                           torch.nn.Linear(cfg.hidden, 1))

    @classmethod
    def from_config(cls, cfg: Config, statistics) -> TinyModel:
        return cls(cfg, statistics.e0s, statistics.force_rms, statistics.elements)

    def _atomic(self, data, pos, cell):
        z = data[K.NUMBERS]
        vec = edge_vectors(pos, data[K.EDGE_INDEX], data[K.UNIT_SHIFTS], cell, batch_vector(data))
        r = vec.norm(dim=-1, keepdim=True)
        rbf = torch.exp(-((r - self.centers) ** 2) / 0.25)
        cut = 0.5 * (torch.cos(torch.pi * r / self.cfg.r_max) + 1.0)
        s, t = data[K.EDGE_INDEX]
        msg = self.radial(rbf) * self.embed(z[s]) * cut
        h = scatter(msg, t, dim=0, dim_size=z.shape[0], reduce="sum")
        e = self.readout(h * self.embed_out(z)).squeeze(-1) * self.scale
        return e + self.e0[z].to(e.dtype)

    def forward(self, data, compute_forces: bool = True, compute_stress: bool = False):
        return energy_response(self._atomic, data, compute_forces=compute_forces,
                               compute_stress=compute_stress, create_graph=self.training)


def register() -> None:
    """Make ``model.name: tiny`` available (tests and their subprocesses call this)."""
    from molequi.models import MODELS

    MODELS["tiny"] = "tiny_model:TinyModel"
