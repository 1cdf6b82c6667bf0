"""Helpers for tests/calculators: small argon structures and Lennard-Jones checkpoints."""

from __future__ import annotations

import numpy as np
import torch
from ase import Atoms
from ase.build import bulk

from molequi.models.lj import LennardJones


def ar_fcc(repeat: int = 2, a: float = 5.26, rattle: float = 0.0, seed: int = 0) -> Atoms:
    atoms = bulk("Ar", "fcc", a=a, cubic=True).repeat(repeat)  # 4 * repeat^3 atoms
    if rattle:
        atoms.rattle(rattle, seed=seed)
    return atoms


def ar_cluster(n: int = 13, seed: int = 0) -> Atoms:
    """A non-periodic argon cluster: an fcc fragment, rattled."""
    atoms = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(2)[:n]
    atoms.pbc = False
    atoms.cell = np.zeros((3, 3))
    atoms.rattle(0.05, seed=seed)
    return atoms


def lj_model(**kw) -> LennardJones:
    return LennardJones(**kw)


def save_lj_checkpoint(path, **cfg) -> str:
    from molequi.config import to_plain
    from molequi.checkpoint import make_payload, save_model

    model = LennardJones(**cfg)
    elements = model.elements
    payload = make_payload(
        config={"model": {"name": "lj", **to_plain(model.config)}},
        statistics={"elements": elements},
        model_state=model.state_dict(),
        dtype=torch.float64,
    )
    save_model(payload, path)
    return str(path)
