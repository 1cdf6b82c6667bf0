"""The MD step of ``molequi quickstart``: NVT, then NVE with its energy drift, with files and a plot."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from molequi.io import atomic_write_text
from molequi.simulate.md import BlowUpGuard, MDSettings, run_md
from molequi.simulate.plots import plot_energies

QUICKSTART_GUARD = BlowUpGuard(max_force=50.0, min_distance=0.5)


def quickstart_md(
    model,
    atoms,
    out_dir: str | Path,
    nvt_ps: float = 1.0,
    nve_ps: float = 1.0,
    timestep_fs: float = 0.5,
    temperature: float = 300.0,
    seed: int = 0,
    loginterval: int = 10,
    friction: float = 0.01,
    progress: bool = True,
    guard: BlowUpGuard = QUICKSTART_GUARD,
) -> float:
    """NVT (Langevin) for ``nvt_ps`` then NVE for ``nve_ps``; returns the NVE drift in eV/atom/ps.

    ``model``: a molequi model, a list of models (committee), a ``MolequiCalculator`` or a checkpoint path.
    ``atoms`` is copied. Writes into ``out_dir``: ``md_nvt.extxyz``, ``md_nve.extxyz``, ``md_nvt.csv``,
    ``md_nve.csv``, ``md_energy.png`` (potential / kinetic / total energy versus time, NVE fit line) and
    ``md_summary.json`` (drift, steps/s, temperatures). A blow-up (by default NaN, a force above 50 eV/Å,
    atoms closer than 0.5 Å: ``QUICKSTART_GUARD``) raises ``SimulationBlowUp``; the files hold every step
    before it.
    """
    from molequi.calculators.calculator import MolequiCalculator

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(model, MolequiCalculator):
        calc = model
    elif isinstance(model, (str, Path)):
        calc = MolequiCalculator.from_checkpoint(model)
    elif isinstance(model, (list, tuple)):
        calc = MolequiCalculator(models=list(model))
    else:
        calc = MolequiCalculator(model)
    atoms = atoms.copy()
    atoms.calc = calc
    common = dict(
        temperature=temperature, timestep=timestep_fs, loginterval=loginterval, seed=seed, guard=guard
    )
    nvt_settings = MDSettings(
        ensemble="nvt", steps=int(round(nvt_ps * 1000 / timestep_fs)), friction=friction, **common
    )
    nve_settings = MDSettings(ensemble="nve", steps=int(round(nve_ps * 1000 / timestep_fs)), **common)
    nvt = run_md(
        atoms, settings=nvt_settings, traj=out / "md_nvt.extxyz", log=out / "md_nvt.csv", progress=progress
    )
    nve = run_md(
        atoms, settings=nve_settings, traj=out / "md_nve.extxyz", log=out / "md_nve.csv", progress=progress
    )
    drift = nve.drift_ev_per_atom_per_ps
    plot_energies(nvt, nve, out / "md_energy.png")
    summary = {
        "nvt": nvt.summary(),
        "nve": nve.summary(),
        "nve_drift_eV_per_atom_per_ps": drift,
        "timestep_fs": timestep_fs,
        "temperature_K": temperature,
        "nve_mean_temperature_K": float(np.mean(nve.log["temperature_K"]))
        if nve.log["temperature_K"]
        else None,
    }
    atomic_write_text(out / "md_summary.json", json.dumps(summary, indent=2) + "\n")
    return float("nan") if drift is None else drift


__all__ = ["quickstart_md", "QUICKSTART_GUARD"]
