"""Writing and reading what the generative models produce: checkpoints, SDF (with bonds), extended XYZ.

Every file is written atomically (temporary file in the same folder, then ``os.replace``), so an
interrupted run never leaves a truncated SDF or checkpoint behind.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from molequi.errors import CheckpointError
from molequi.io import atomic_write_text
from molequi.models.generative.metrics import Molecule, build_rdkit_molecule

MODEL_NAMES = {"EDM": "edm", "CategoricalDiffusion": "eqgat_diff"}


def save_checkpoint(model: torch.nn.Module, path: str | Path, *, metrics: dict | None = None, step: int = 0,
                    extra_config: dict | None = None) -> None:
    """Write ``model`` as a molequi model payload (config + weights), loadable with
    ``molequi.checkpoint.load_model`` and ``molequi generate``."""
    from molequi.checkpoint import make_payload, save_model

    name = MODEL_NAMES.get(type(model).__name__)
    if name is None:
        raise CheckpointError(f"cannot save a {type(model).__name__} as a generative checkpoint")
    cfg = {"model": {"name": name, **dataclasses.asdict(model.config)}, **(extra_config or {})}
    dtype = next(model.parameters()).dtype
    payload = make_payload(config=cfg, statistics={"elements": list(model.config.elements)},
                           model_state=model.state_dict(), dtype=dtype, step=step, metrics=metrics)
    save_model(payload, path)


def load_generative(path: str | Path, device: str = "cpu") -> torch.nn.Module:
    """A generative model (EDM or categorical) from a checkpoint of ``molequi train`` or ``save_checkpoint``."""
    from molequi.checkpoint import load_model

    model = load_model(path, device=device)
    if not hasattr(model, "sample"):
        raise CheckpointError(f"{path} holds a {type(model).__name__}, not a generative model (edm, eqgat_diff)")
    return model


def to_rdkit(m: Molecule):
    """RDKit molecule with 3D conformer; bonds predicted (``m.bonds``) or from EDM's distance rule."""
    return build_rdkit_molecule(m.numbers, m.positions, bonds=m.bonds, charges=m.charges)


def write_sdf(molecules: Sequence[Molecule], path: str | Path, names: Sequence[str] | None = None) -> int:
    """Write all molecules to one SDF (V2000, 3D, bonds included), atomically. Molecules that RDKit cannot
    sanitise are still written (unsanitised) with the SD property ``valid = 0``. Returns the count written."""
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    blocks = []
    for k, m in enumerate(molecules):
        mol = to_rdkit(m)
        try:
            Chem.SanitizeMol(mol)
            valid = 1
        except (ValueError, RuntimeError):
            valid = 0
        mol.SetProp("_Name", names[k] if names else f"generated_{k}")
        block = Chem.MolToMolBlock(mol, kekulize=False)
        blocks.append(f"{block}>  <valid>\n{valid}\n\n$$$$\n")
    atomic_write_text(path, "".join(blocks))
    return len(blocks)


def write_extxyz(molecules: Sequence[Molecule], path: str | Path, info: Sequence[dict] | None = None) -> int:
    """Write the molecules as extended XYZ (one frame each; formal charges as ``initial_charges``)."""
    lines = []
    for k, m in enumerate(molecules):
        from ase.data import chemical_symbols

        props = "species:S:1:pos:R:3" + (":charges:I:1" if m.charges is not None else "")
        extra = " ".join(f"{a}={b}" for a, b in (info[k] if info else {}).items())
        lines.append(str(len(m.numbers)))
        lines.append(f'Properties={props} index={k} pbc="F F F" {extra}'.rstrip())
        for i, (z, p) in enumerate(zip(m.numbers, np.asarray(m.positions, dtype=float))):
            row = f"{chemical_symbols[int(z)]} {p[0]:.6f} {p[1]:.6f} {p[2]:.6f}"
            if m.charges is not None:
                row += f" {int(m.charges[i])}"
            lines.append(row)
    atomic_write_text(path, "\n".join(lines) + "\n")
    return len(molecules)


__all__ = ["save_checkpoint", "load_generative", "write_sdf", "write_extxyz", "to_rdkit"]
