"""GFN2-xTB (tblite) geometry samplers for labelling runs, in ASE units (eV, Å, fs, K).

Samplers (``SAMPLERS``): ``xtb-md`` (GFN2-xTB Langevin MD, 500 K like MD17) and ``normal-modes``
(random displacements along GFN2-xTB normal modes, Boltzmann-weighted at temperature T). The normal
modes come from a central finite-difference Hessian of the xTB forces,

    H_ij = -(F_j(x + δ e_i) - F_j(x - δ e_i)) / (2 δ),   symmetrised (H + H^T) / 2,  eV/Å^2.
"""

from __future__ import annotations

import numpy as np

from molequi.errors import InputError


def xtb_calculator(charge: int | None = None, accuracy: float = 1.0):
    """The tblite ASE calculator for GFN2-xTB.

    ``charge``: total charge (None: tblite's default, the sum of the atoms' initial charges);
    ``accuracy``: tblite's numerical accuracy factor (1 = its default).
    """
    try:
        from tblite.ase import TBLite
    except ImportError as exc:  # pragma: no cover - environment problem
        raise InputError("the xtb samplers need tblite (pip install tblite)") from exc
    return TBLite(method="GFN2-xTB", charge=charge, accuracy=accuracy, verbosity=0)


def sample_xtb_md(
    atoms,
    n: int,
    *,
    temperature: float = 500.0,
    timestep: float = 0.5,
    interval: int = 10,
    equilibration: int = 200,
    friction: float = 0.02,
    seed: int = 0,
    progress: bool = False,
):
    """``n`` snapshots of GFN2-xTB Langevin MD (ASE, tblite) at ``temperature`` K, every ``interval`` steps.

    timestep in fs; friction in 1/fs; the first ``equilibration`` steps are discarded. The centre of
    mass is held by ``FixCom`` (ASE's ``fixcm`` option of Langevin does not sample NVT exactly). Each
    snapshot's ``info`` holds ``md_step`` and ``xtb_energy_ev``. ``progress`` shows a tqdm bar over MD
    steps. Returns a list of ``ase.Atoms``.
    """
    from ase import units
    from ase.constraints import FixCom
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary, ZeroRotation

    atoms = atoms.copy()
    atoms.calc = xtb_calculator()
    rng = np.random.default_rng(seed)
    MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    atoms.set_constraint(FixCom())
    dyn = Langevin(atoms, timestep * units.fs, temperature_K=temperature, friction=friction / units.fs,
                   rng=rng, fixcm=False)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=equilibration + n * interval, desc=f"GFN2-xTB MD {temperature:g} K", unit="step")
    dyn.run(equilibration)
    if bar is not None:
        bar.update(equilibration)
    frames = []
    for _ in range(n):
        dyn.run(interval)
        if bar is not None:
            bar.update(interval)
        frame = atoms.copy()
        frame.set_constraint()
        frame.info.update(md_step=int(dyn.nsteps), xtb_energy_ev=float(atoms.get_potential_energy()))
        frame.calc = None
        frames.append(frame)
    if bar is not None:
        bar.close()
    return frames


def lag1_correlation(frames) -> float:
    """Mean lag-1 autocorrelation over consecutive ``frames`` of the interatomic distances (Pearson,
    averaged over the atom pairs): ~0 when successive samples are statistically independent, ~1 for
    frames closer together than the molecule's vibrational periods."""
    d = np.array([f.get_all_distances()[np.triu_indices(len(f), 1)] for f in frames])
    if len(d) < 3:
        raise InputError(f"{len(d)} frames: the lag-1 correlation needs at least 3")
    x, y = d[:-1] - d[:-1].mean(0), d[1:] - d[1:].mean(0)
    r = (x * y).sum(0) / np.sqrt((x * x).sum(0) * (y * y).sum(0))
    return float(np.mean(r))


def sample_normal_modes(atoms, n: int, *, temperature: float = 500.0, seed: int = 0):
    """``n`` geometries displaced along GFN2-xTB normal modes of the relaxed structure.

    Each mode i with force constant k_i gets a Gaussian amplitude of variance k_B T / k_i (classical
    harmonic Boltzmann distribution at ``temperature`` K). Returns a list of ``ase.Atoms``.
    """
    from ase import units
    from ase.optimize import BFGS
    from ase.vibrations import VibrationsData

    atoms = atoms.copy()
    atoms.calc = xtb_calculator()
    BFGS(atoms, logfile=None).run(fmax=1e-3, steps=500)
    hessian = finite_difference_hessian(atoms)
    vib = VibrationsData.from_2d(atoms, hessian)
    k, modes = np.linalg.eigh(vib.get_hessian_2d())  # eV/Å^2, mass-unweighted, ascending
    # drop the translations and rotations (the 6, or 5 for a linear molecule, softest modes; finite
    # differences leave them slightly positive, and sqrt(kT / k) would blow them up) and any soft mode
    n_rigid = 5 if _is_linear(atoms.positions) else 6
    k, modes = k[n_rigid:], modes[:, n_rigid:]
    keep = k > 0.05
    k, modes = k[keep], modes[:, keep]
    rng = np.random.default_rng(seed)
    base = atoms.positions.copy()
    frames = []
    for _ in range(n):
        amp = rng.normal(size=len(k)) * np.sqrt(units.kB * temperature / k)
        new = atoms.copy()
        new.calc = None
        new.positions = base + (modes @ amp).reshape(-1, 3)
        frames.append(new)
    return frames


def _is_linear(pos: np.ndarray) -> bool:
    centred = pos - pos.mean(0)
    return len(pos) < 3 or np.linalg.svd(centred, compute_uv=False)[1] < 1e-3


def finite_difference_hessian(atoms, delta: float = 5e-3) -> np.ndarray:
    """(3n, 3n) Hessian in eV/Å^2 by central differences of ``atoms.get_forces()`` with step ``delta`` Å.

    Row i is -(F(x + δ e_i) - F(x - δ e_i)) / (2 δ); the result is symmetrised. ``atoms`` needs a
    calculator; its positions are restored afterwards.
    """
    pos0 = atoms.positions.copy()
    n3 = pos0.size
    h = np.zeros((n3, n3))
    for i in range(n3):
        for sign in (1, -1):
            p = pos0.copy().reshape(-1)
            p[i] += sign * delta
            atoms.positions = p.reshape(-1, 3)
            h[i] -= sign * atoms.get_forces().reshape(-1) / (2 * delta)
    atoms.positions = pos0
    return 0.5 * (h + h.T)


SAMPLERS = {"xtb-md": sample_xtb_md, "normal-modes": sample_normal_modes}


def sample_geometries(atoms, n: int, sampler: str = "xtb-md", *, temperature: float = 500.0,
                      interval: int = 10, equilibration: int = 200, friction: float = 0.02, seed: int = 0,
                      progress: bool = False) -> tuple[list, dict]:
    """``n`` geometries from ``SAMPLERS[sampler]`` and the metadata a labelled store records about them
    (sampler settings, wall and CPU seconds, ``lag1_distance_correlation`` of the kept frames when there
    are at least 3). The one sampling step of ``molequi data hamiltonian`` and
    ``scripts/make_hamiltonian_dataset.py``."""
    import time

    if sampler not in SAMPLERS:
        raise InputError(f"unknown sampler {sampler!r}; valid samplers: {', '.join(SAMPLERS)}")
    t0, c0 = time.perf_counter(), time.process_time()
    if sampler == "xtb-md":
        frames = sample_xtb_md(atoms, n, temperature=temperature, interval=interval,
                               equilibration=equilibration, friction=friction, seed=seed, progress=progress)
    else:
        frames = sample_normal_modes(atoms, n, temperature=temperature, seed=seed)
    meta = {
        "sampler": sampler,
        "temperature_K": temperature,
        "timestep_fs": 0.5,
        "interval": interval,
        "equilibration_steps": equilibration,
        "friction_per_fs": friction,
        "seed": seed,
        "lag1_distance_correlation": lag1_correlation(frames) if len(frames) >= 3 else None,
        "sampling_seconds": time.perf_counter() - t0,
        "sampling_cpu_seconds": time.process_time() - c0,
    }
    return frames, meta


__all__ = [
    "xtb_calculator",
    "sample_xtb_md",
    "sample_normal_modes",
    "finite_difference_hessian",
    "lag1_correlation",
    "sample_geometries",
    "SAMPLERS",
]
