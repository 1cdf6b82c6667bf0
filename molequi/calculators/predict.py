"""Batched prediction: many structures through a model in PyG batches, far faster than one ASE call each.

    results = predict(model, frames, batch_size=32)             # list of dicts, one per structure
    frames = predict("model.pt", frames, as_atoms=True)          # copies with a SinglePointCalculator

Each result dict holds ``energy`` / ``free_energy`` (eV), ``energies`` (n,) eV, ``forces`` (n, 3) eV/Å and,
when stress is computed, ``stress`` as ASE's Voigt 6-vector (eV/Å^3). ``compute_stress=None`` computes it
for every structure that is periodic with a full-rank cell (and gives none for the others).

``model_outputs`` is the one batched inference loop of the package: ``predict`` here, the trainer's
evaluation (``molequi eval``) and the symmetry checks of ``molequi.testing`` all run their models through it,
on records whose graphs come from ``build_records`` / ``molequi.graph.RadiusGraph``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

import ase
import torch

from molequi import keys as K
from molequi.calculators.calculator import (
    check_elements,
    has_stress,
    load_models,
    model_dtype,
    stress_to_voigt,
)
from molequi.errors import ValueRangeError
from molequi.response import frozen_parameters


def build_records(
    frames: Sequence[ase.Atoms], cutoff: float, dtype: torch.dtype, elements=None, validate: bool = True
) -> list:
    """Graph records (edges within ``cutoff``, ``molequi.graph.RadiusGraph``) for every frame; ``ModelError``
    names unknown elements."""
    from molequi.data.records import atoms_to_data
    from molequi.graph.neighbors import RadiusGraph

    graph = RadiusGraph(cutoff)
    records = []
    for idx, atoms in enumerate(frames):
        check_elements(atoms.numbers, elements, where=f"frame {idx}")
        records.append(graph(atoms_to_data(atoms, validate=validate, frame=idx, dtype=dtype)))
    return records


def model_outputs(
    model,
    records: Sequence,
    *,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
    compute_stress: bool | str = False,
    progress: bool = False,
    desc: str = "predict",
) -> Iterator[tuple]:
    """Run ``model`` over ``records`` (graphs already built) in order, ``batch_size`` structures at a time.

    Yields ``(batch, outputs, stress_computed)`` per PyG batch, where ``outputs`` is the model's dict
    (``energy`` (B,) eV, ``forces`` (n, 3) eV/Å, ...). ``dtype``: cast every floating tensor of a batch to it
    (None: as stored). ``compute_stress``: True / False for every batch, or ``"flagged"``: for the batches in
    which some record has a true ``stress_flag``. Forces need gradients, so they are on inside the loop.
    """
    from torch_geometric.loader import DataLoader
    from tqdm.auto import tqdm

    if batch_size < 1:
        raise ValueRangeError(f"batch_size must be >= 1, got {batch_size}")
    loader = DataLoader(records, batch_size=batch_size, shuffle=False)
    for batch in tqdm(loader, desc=desc, unit="batch", disable=not progress, leave=False):
        batch = batch.to(device)
        if dtype is not None:
            for key, value in batch.items():
                if isinstance(value, torch.Tensor) and value.is_floating_point():
                    batch[key] = value.to(dtype)
        flagged = compute_stress == "flagged"
        want_stress = bool(batch["stress_flag"].any()) if flagged else bool(compute_stress)
        # parameters frozen, as the calculators evaluate (autograd keeps less, and MACE runs its chunks with
        # one shared gradient buffer per input: models.mace._InferenceChunks)
        with torch.enable_grad(), frozen_parameters([model] if isinstance(model, torch.nn.Module) else []):
            out = model(batch, compute_forces=True, compute_stress=want_stress)
        yield batch, out, want_stress


def predict(
    model_or_ckpt,
    frames: Iterable[ase.Atoms],
    batch_size: int = 32,
    compute_stress: bool | None = None,
    device: str = "cpu",
    dtype: torch.dtype | None = None,
    as_atoms: bool = False,
    validate: bool = True,
    progress: bool = False,
    prefix: str | None = None,
) -> list:
    """Energies, forces (and stress) for ``frames`` in batches of ``batch_size`` structures.

    ``model_or_ckpt`` is a model or a checkpoint path. ``compute_stress``: ``None`` = for periodic frames,
    ``True`` = for periodic frames and raise if a frame is not periodic, ``False`` = never.
    Returns a list of result dicts, or (``as_atoms=True``) copies of the frames carrying a
    ``SinglePointCalculator`` with those results; with ``prefix`` (e.g. ``"MOLEQUI_"``) the copies keep the
    frames' own labels and carry the predictions as ``<prefix>energy`` / ``<prefix>forces`` / ... instead.
    """
    if isinstance(model_or_ckpt, (str, Path)):
        model = load_models(model_or_ckpt, device=device, dtype=dtype)[0]
    else:
        model = model_or_ckpt
    dtype = dtype or model_dtype(model)
    model = model.to(device=device, dtype=dtype).eval()
    frames = list(frames)
    if batch_size < 1:
        raise ValueRangeError(f"batch_size must be >= 1, got {batch_size}")
    periodic = [has_stress(a.cell[:], a.pbc) for a in frames]
    if compute_stress and not all(periodic):
        bad = [i for i, p in enumerate(periodic) if not p][:5]
        raise ValueRangeError(
            f"compute_stress=True but frames {bad} are not periodic with a full-rank cell",
            hint="use compute_stress=None to compute stress only where it is defined",
        )
    records = build_records(frames, float(model.r_max), dtype, model.elements, validate)
    for d, p in zip(records, periodic):
        d["stress_flag"] = torch.tensor([p and compute_stress is not False])
    results: list[dict] = []
    for batch, out, want_stress in model_outputs(model, records, batch_size=batch_size, device=device,
                                                 compute_stress="flagged", progress=progress):
        ptr = batch.ptr.cpu().numpy()
        energy = out[K.ENERGY].detach().to("cpu", torch.float64).numpy().reshape(-1)
        energies = out[K.ENERGIES].detach().to("cpu", torch.float64).numpy().reshape(-1)
        forces = out[K.FORCES].detach().to("cpu", torch.float64).numpy().reshape(-1, 3)
        stress = (
            out[K.STRESS].detach().to("cpu", torch.float64).numpy().reshape(-1, 3, 3) if want_stress else None
        )
        flags = batch["stress_flag"].cpu().numpy().reshape(-1)
        for g in range(len(energy)):
            a, b = ptr[g], ptr[g + 1]
            r = {
                "energy": float(energy[g]),
                "free_energy": float(energy[g]),
                "energies": energies[a:b].copy(),
                "forces": forces[a:b].copy(),
            }
            if stress is not None and flags[g]:
                r["stress"] = stress_to_voigt(stress[g])
            results.append(r)
    if not as_atoms:
        return results
    from ase.calculators.singlepoint import SinglePointCalculator

    out_frames = []
    for atoms, r in zip(frames, results):
        a = atoms.copy()
        if prefix is None:
            a.calc = SinglePointCalculator(a, **r)
        else:
            labels = getattr(atoms.calc, "results", None)
            if labels:  # the frame's own labels (energy=, forces= columns of an extxyz) stay as they were
                a.calc = SinglePointCalculator(a, **labels)
            attach_predictions(a, r, prefix)
        out_frames.append(a)
    return out_frames


def attach_predictions(atoms: ase.Atoms, result: dict, prefix: str) -> ase.Atoms:
    """Store one ``predict`` result in ``atoms.info`` / ``atoms.arrays`` under ``prefix`` (``MOLEQUI_energy``,
    ``MOLEQUI_forces``, ``MOLEQUI_energies``, ``MOLEQUI_stress``), as mace-torch's ``mace_eval_configs`` does
    with ``MACE_``, so that reference labels already in the file are kept beside the predictions."""
    if not prefix:
        raise ValueRangeError("the prediction prefix must not be empty (it would overwrite the labels)")
    for key, value in result.items():
        if key == "free_energy":
            continue
        if key in ("forces", "energies"):
            atoms.arrays[prefix + key] = value
        else:
            atoms.info[prefix + key] = value
    return atoms


__all__ = ["predict", "build_records", "model_outputs", "attach_predictions"]
