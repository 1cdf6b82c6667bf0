"""Molecular dynamics with ASE integrators, guarded against blow-ups, with a CSV log and a trajectory::

    settings = MDSettings(ensemble="nvt", temperature=300, timestep=0.5, steps=2000,
                          guard=BlowUpGuard(max_force=50.0, min_distance=0.5))
    result = run_md(atoms, calc, settings, traj="md.extxyz", log="md.csv")

Ensembles (ASE integrators): ``nve`` velocity Verlet; ``nvt`` Langevin (``friction`` in 1/fs); ``npt``
isotropic MTK Nose-Hoover chains (``ase.md.nose_hoover_chain.IsotropicMTKNPT``, ``barostat="mtk"``, the
correct NPT ensemble) or Berendsen (``barostat="berendsen"``, fast relaxation of the volume, not a correct
ensemble). Units: temperature K, timestep fs, pressure bar, friction 1/fs, time constants fs.

Guard (``BlowUpGuard``, part of ``MDSettings``): after every step the run stops with ``SimulationBlowUp``
(``reason``, ``step``) when the energy, forces or positions are not finite, a force exceeds ``max_force``
(eV/Å), two atoms come closer than ``min_distance`` (Å), or the committee force uncertainty
(``forces_std_norm``, eV/Å) exceeds ``max_uncertainty``. The trajectory holds every frame written before
the bad step: frames are written one whole frame at a time (formatted in memory, then one write + flush),
so the file is never left with a truncated frame. ``MDSettings(raise_on_blowup=False)`` returns a result
with ``stopped=True`` instead.

Log columns (every ``loginterval`` steps): step, time_fs, epot_eV, ekin_eV, etot_eV, temperature_K,
drift_eV_per_atom (= (E_tot - E_tot(0)) / n), max_force_eV_A, volume_A3, and energy_std_eV /
max_force_std_eV_A for committees.
``MDResult.drift_ev_per_atom_per_ps`` is the slope of a least-squares line through E_tot / n versus time (ps)
over the logged points: the standard NVE conservation measure (meaningless under a thermostat).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from ase import units

from molequi.errors import ConfigError, ModelError, MolequiError, ValueRangeError
from molequi.graph.neighbors import NeighborOverflowError
from molequi.simulate.writers import CSVLog, FrameWriter

ENSEMBLES = ("nve", "nvt", "npt")
BAROSTATS = ("mtk", "berendsen")


class SimulationBlowUp(MolequiError, RuntimeError):
    """A simulation left the sensible region (NaN, huge force, overlapping atoms, high uncertainty)."""

    def __init__(self, reason: str, step: int, result: MDResult | None = None):
        self.reason, self.step, self.result = reason, step, result
        super().__init__(f"simulation stopped at step {step}: {reason}")


@dataclass
class MDResult:
    """What ``run_md`` did. ``log`` holds the logged columns as lists."""

    steps: int  # steps completed (the last good step)
    time_fs: float
    n_atoms: int
    stopped: bool = False
    reason: str | None = None
    wall_s: float = 0.0
    steps_per_s: float = 0.0
    drift_ev_per_atom_per_ps: float | None = None
    frames_written: int = 0
    log: dict[str, list[float]] = field(default_factory=dict)

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("log")
        return d


@dataclass(frozen=True)
class BlowUpGuard:
    """When ``run_md`` stops: a force above ``max_force`` (eV/Å), two atoms closer than ``min_distance``
    (Å), a committee force spread above ``max_uncertainty`` (eV/Å); None switches a check off. Non-finite
    positions, energies or forces always stop the run. ``check(atoms)`` returns the reason or None."""

    max_force: float | None = None
    min_distance: float | None = None
    max_uncertainty: float | None = None

    def __post_init__(self):
        for name in ("max_force", "min_distance", "max_uncertainty"):
            v = getattr(self, name)
            if v is not None and not v > 0:
                raise ConfigError(f"{name} must be positive, got {v}")

    def check(self, atoms) -> str | None:
        results = atoms.calc.results
        energy = results.get("energy")
        forces = np.asarray(results.get("forces"))
        if not np.all(np.isfinite(atoms.positions)):
            return "positions are NaN or inf"
        if energy is None or not math.isfinite(energy):
            return f"potential energy is not finite ({energy})"
        if not np.all(np.isfinite(forces)):
            return "forces contain NaN or inf"
        if self.max_force is not None:
            fmax = float(np.sqrt((forces**2).sum(1)).max(initial=0.0))
            if fmax > self.max_force:
                atom = int(np.argmax((forces**2).sum(1)))
                return f"force {fmax:.4g} eV/Å on atom {atom} exceeds max_force={self.max_force} eV/Å"
        if self.min_distance is not None and len(atoms) > 1:
            from molequi.graph.neighbors import minimum_distance

            dmin = minimum_distance(atoms, self.min_distance)
            if dmin < self.min_distance:
                return f"atoms {dmin:.4g} Å apart, closer than min_distance={self.min_distance} Å"
        if self.max_uncertainty is not None:
            std = results.get("forces_std_norm")
            if std is None:
                raise ConfigError(
                    "max_uncertainty needs a committee calculator (MolequiCalculator(models=[...]))"
                )
            smax = float(np.max(std, initial=0.0))
            if smax > self.max_uncertainty:
                return (
                    f"committee force uncertainty {smax:.4g} eV/Å on atom {int(np.argmax(std))} exceeds "
                    f"max_uncertainty={self.max_uncertainty} eV/Å"
                )
        return None


@dataclass
class MDSettings:
    """Everything ``run_md`` simulates (outputs aside). Units: K, fs, 1/fs, bar, 1/bar.

    ensemble           ``nve`` | ``nvt`` | ``npt``
    temperature        target temperature, K; also of the initial Maxwell-Boltzmann velocities
    timestep, steps    fs, number of steps
    friction           Langevin friction (nvt), 1/fs
    pressure, barostat npt target pressure (bar) and integrator (``mtk`` | ``berendsen``)
    taut, taup         thermostat / barostat time constants (npt), fs; None: 100 / 1000 timesteps
    compressibility    Berendsen barostat compressibility, 1/bar
    loginterval        a log line and a trajectory frame every N steps (and at step 0 and the last)
    seed               seed of the initial velocities and the Langevin noise
    init_temperature   temperature of the initial velocities when the atoms have none (None: temperature)
    guard              the blow-up checks (``BlowUpGuard``)
    allow_nonconservative  run a model whose forces are not -dE/dx (no energy conservation)
    raise_on_blowup    raise ``SimulationBlowUp`` (True) or return a result with ``stopped=True``
    """

    ensemble: str = "nvt"
    temperature: float = 300.0
    timestep: float = 0.5
    steps: int = 1000
    friction: float = 0.01
    pressure: float = 1.01325
    barostat: str = "mtk"
    taut: float | None = None
    taup: float | None = None
    compressibility: float = 4.57e-5
    loginterval: int = 1
    seed: int | None = None
    init_temperature: float | None = None
    guard: BlowUpGuard = field(default_factory=BlowUpGuard)
    allow_nonconservative: bool = False
    raise_on_blowup: bool = True

    def __post_init__(self):
        self.ensemble = self.ensemble.lower()
        if self.ensemble not in ENSEMBLES:
            raise ConfigError(f"unknown ensemble '{self.ensemble}'; valid: {', '.join(ENSEMBLES)}")
        if self.timestep <= 0 or self.steps < 0 or self.loginterval < 1:
            raise ConfigError(
                f"need timestep > 0, steps >= 0, loginterval >= 1 "
                f"(got {self.timestep}, {self.steps}, {self.loginterval})"
            )
        if self.ensemble != "nve" and self.temperature <= 0:
            raise ConfigError(f"{self.ensemble} needs a positive temperature, got {self.temperature} K")


def drift_per_atom_per_ps(time_fs, etot, n_atoms: int) -> float | None:
    """Slope (eV/atom/ps) of a least-squares line through E_tot / n versus time; None with < 3 points."""
    t = np.asarray(time_fs, dtype=float) / 1000.0
    e = np.asarray(etot, dtype=float) / n_atoms
    if len(t) < 3 or np.ptp(t) == 0 or not np.all(np.isfinite(e)):
        return None
    return float(np.polyfit(t, e, 1)[0])


def make_integrator(atoms, settings: MDSettings, rng):
    """The ASE integrator of ``settings.ensemble`` over ``atoms`` (units: fs, K, 1/fs, bar, 1/bar).

    Time constants left at None become taut = 100 timesteps and taup = 1000 timesteps.
    """
    s = settings
    ensemble, temperature, pressure, barostat = s.ensemble, s.temperature, s.pressure, s.barostat
    taut = 100 * s.timestep if s.taut is None else s.taut
    taup = 1000 * s.timestep if s.taup is None else s.taup
    dt = s.timestep * units.fs
    if ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, timestep=dt)
    if ensemble == "nvt":
        from ase.md.langevin import Langevin

        return Langevin(
            atoms,
            timestep=dt,
            temperature_K=temperature,
            friction=s.friction / units.fs,
            rng=rng,
            fixcm=False,
        )  # fixcm=True samples NVT inexactly (ASE >= 3.28)
    if ensemble == "npt":
        if not np.all(atoms.pbc):
            raise ConfigError("npt needs a structure periodic in all three directions")
        if barostat == "mtk":
            from ase.md.nose_hoover_chain import IsotropicMTKNPT

            return IsotropicMTKNPT(
                atoms,
                timestep=dt,
                temperature_K=temperature,
                pressure_au=pressure * units.bar,
                tdamp=taut * units.fs,
                pdamp=taup * units.fs,
            )
        if barostat == "berendsen":
            from ase.md.nptberendsen import NPTBerendsen

            return NPTBerendsen(
                atoms,
                timestep=dt,
                temperature_K=temperature,
                pressure_au=pressure * units.bar,
                taut=taut * units.fs,
                taup=taup * units.fs,
                compressibility_au=s.compressibility / units.bar,
            )
        raise ConfigError(f"unknown barostat '{barostat}'; valid: {', '.join(BAROSTATS)}")
    raise ConfigError(f"unknown ensemble '{ensemble}'; valid: {', '.join(ENSEMBLES)}")


def init_velocities(atoms, temperature: float, rng) -> None:
    """Maxwell-Boltzmann velocities at ``temperature`` K, zero total momentum (and rotation if molecular)."""
    from ase.md import velocitydistribution as vd

    if hasattr(vd, "thermalize_momenta"):  # ASE >= 3.29
        vd.thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
    else:
        vd.MaxwellBoltzmannDistribution(atoms, temperature_K=temperature, rng=rng)
    Stationary, ZeroRotation = vd.Stationary, vd.ZeroRotation
    Stationary(atoms)
    if not np.any(atoms.pbc) and len(atoms) > 2:
        ZeroRotation(atoms)


def run_md(
    atoms,
    calc=None,
    settings: MDSettings | None = None,
    *,
    traj: str | Path | None = None,
    log: str | Path | None = None,
    append: bool = False,
    progress: bool = False,
) -> MDResult:
    """Run ``settings.steps`` MD steps of ``atoms`` (modified in place) with ``calc`` (else ``atoms.calc``).

    ``settings`` (default ``MDSettings()``) holds the ensemble, its parameters and the blow-up guard.
    Velocities: if ``atoms`` has no momenta, they are drawn from Maxwell-Boltzmann at ``init_temperature``
    (default ``temperature``) with ``seed``. ``traj`` (extended XYZ, appended to with ``append``) / ``log``
    (CSV) get a frame / line at step 0 and every ``loginterval`` steps; ``progress`` shows a tqdm bar.
    Returns an ``MDResult``; a blow-up raises ``SimulationBlowUp`` (its ``result`` attribute holds the
    ``MDResult`` up to the last good step) unless ``settings.raise_on_blowup`` is False.
    """
    s = MDSettings() if settings is None else settings
    ensemble, timestep, steps, loginterval, guard = s.ensemble, s.timestep, s.steps, s.loginterval, s.guard
    if calc is not None:
        atoms.calc = calc
    if atoms.calc is None:
        raise ConfigError("run_md needs a calculator (calc=... or atoms.calc)")
    if not getattr(atoms.calc, "conservative", True) and not s.allow_nonconservative:
        raise ModelError(
            "the model predicts forces directly (not as -dE/dx), so MD with it does not conserve "
            "energy; pass MDSettings(allow_nonconservative=True) (--allow-nonconservative) to run anyway"
        )
    if guard.max_uncertainty is not None and not getattr(atoms.calc, "is_committee", False):
        raise ConfigError(
            "max_uncertainty needs a committee calculator (MolequiCalculator(models=[...]), "
            "or several checkpoints on the command line)"
        )
    rng = np.random.default_rng(s.seed)
    t_init = s.temperature if s.init_temperature is None else s.init_temperature
    if not np.any(atoms.get_momenta()) and t_init > 0:
        init_velocities(atoms, t_init, rng)
    dyn = make_integrator(atoms, s, rng)

    n = len(atoms)
    committee = bool(getattr(atoms.calc, "is_committee", False))
    columns = [
        "step",
        "time_fs",
        "epot_eV",
        "ekin_eV",
        "etot_eV",
        "temperature_K",
        "drift_eV_per_atom",
        "max_force_eV_A",
        "volume_A3",
    ]
    if committee:
        columns += ["energy_std_eV", "max_force_std_eV_A"]
    result = MDResult(steps=0, time_fs=0.0, n_atoms=n, log={c: [] for c in columns})
    writer = FrameWriter(traj, append=append) if traj is not None else None
    csv = CSVLog(log, columns) if log is not None else None
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=steps, unit="step", desc=f"md {ensemble}", dynamic_ncols=True)
    etot0 = None
    step = 0
    t0 = time.perf_counter()
    try:
        iterator = dyn.irun(steps)
        while True:
            try:
                next(iterator)
            except StopIteration:
                break
            except (
                ValueRangeError,
                NeighborOverflowError,
                FloatingPointError,
                OverflowError,
                np.linalg.LinAlgError,
            ) as exc:  # what an exploding state raises; ModelError etc. propagate
                reason = f"{type(exc).__name__}: {exc}"
                step = dyn.nsteps + 1
                _stop(result, reason, step)
                break
            step = dyn.nsteps
            reason = guard.check(atoms)
            if reason is not None:
                _stop(result, reason, step)
                break
            result.steps = step
            result.time_fs = step * timestep
            if step % loginterval == 0 or step == steps:
                res = atoms.calc.results
                epot = float(res["energy"])
                ekin = float(atoms.get_kinetic_energy())
                etot = epot + ekin
                etot0 = etot if etot0 is None else etot0
                forces = np.asarray(res["forces"])
                row = {
                    "step": step,
                    "time_fs": step * timestep,
                    "epot_eV": epot,
                    "ekin_eV": ekin,
                    "etot_eV": etot,
                    "temperature_K": atoms.get_temperature(),
                    "drift_eV_per_atom": (etot - etot0) / n,
                    "max_force_eV_A": float(np.sqrt((forces**2).sum(1)).max(initial=0.0)),
                    "volume_A3": float(atoms.get_volume()) if np.all(atoms.pbc) else None,
                }
                info = {}
                arrays = {}
                if committee:
                    row["energy_std_eV"] = res["energy_std"]
                    row["max_force_std_eV_A"] = float(np.max(res["forces_std_norm"], initial=0.0))
                    info["energy_std"] = res["energy_std"]
                    arrays["forces_std_norm"] = res["forces_std_norm"]
                for c in columns:
                    result.log[c].append(row.get(c))
                if csv is not None:
                    csv.write(row)
                if writer is not None:
                    info.update(md_step=step, md_time_fs=step * timestep)
                    writer.write(atoms, info, arrays)
                if bar is not None:
                    bar.set_postfix(T=f"{row['temperature_K']:.0f}K", Etot=f"{etot:.4f}", refresh=False)
            if bar is not None and step > 0:
                bar.update(1)
    finally:
        result.wall_s = time.perf_counter() - t0
        result.steps_per_s = result.steps / result.wall_s if result.wall_s > 0 else 0.0
        result.frames_written = writer.count if writer is not None else 0
        for closer in (writer, csv, bar):
            if closer is not None:
                closer.close()
    result.drift_ev_per_atom_per_ps = drift_per_atom_per_ps(result.log["time_fs"], result.log["etot_eV"], n)
    if result.stopped and s.raise_on_blowup:
        raise SimulationBlowUp(result.reason, step, result)
    return result


def _stop(result: MDResult, reason: str, step: int) -> None:
    result.stopped = True
    result.reason = reason


__all__ = [
    "run_md",
    "MDSettings",
    "MDResult",
    "SimulationBlowUp",
    "BlowUpGuard",
    "drift_per_atom_per_ps",
    "make_integrator",
    "init_velocities",
    "ENSEMBLES",
    "BAROSTATS",
]
