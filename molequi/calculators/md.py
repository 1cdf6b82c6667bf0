"""Molecular dynamics with ASE integrators, guarded against blow-ups, with a CSV log and a trajectory.

    result = run_md(atoms, calc, ensemble="nvt", temperature=300, timestep=0.5, steps=2000,
                    traj="md.extxyz", log="md.csv", max_force=50.0, min_distance=0.5)

Ensembles (ASE integrators): ``nve`` velocity Verlet; ``nvt`` Langevin (``friction`` in 1/fs); ``npt``
isotropic MTK Nose-Hoover chains (``ase.md.nose_hoover_chain.IsotropicMTKNPT``, ``barostat="mtk"``, the
correct NPT ensemble) or Berendsen (``barostat="berendsen"``, fast relaxation of the volume, not a correct
ensemble). Units: temperature K, timestep fs, pressure bar, friction 1/fs, time constants fs.

Guard: after every step the run stops with ``SimulationBlowUp`` (``reason``, ``step``) when the energy,
forces or positions are not finite, a force exceeds ``max_force`` (eV/Å), two atoms come closer than
``min_distance`` (Å), or the committee force uncertainty (``forces_std_norm``, eV/Å) exceeds
``max_uncertainty``. The trajectory holds every frame written before the bad step: frames are written one
whole frame at a time (formatted in memory, then one write + flush), so the file is never left with a
truncated frame. ``run_md(..., raise_on_blowup=False)`` returns a result with ``stopped=True`` instead.

Log columns (every ``loginterval`` steps): step, time_fs, epot_eV, ekin_eV, etot_eV, temperature_K,
drift_eV_per_atom (= (E_tot - E_tot(0)) / n), max_force_eV_A, volume_A3, and energy_std_eV /
max_force_std_eV_A for committees.
``MDResult.drift_ev_per_atom_per_ps`` is the slope of a least-squares line through E_tot / n versus time (ps)
over the logged points: the standard NVE conservation measure (meaningless under a thermostat).
"""

from __future__ import annotations

import io
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from ase import units

from molequi.errors import ConfigError, ModelError, MolequiError, ValueRangeError
from molequi.graph.neighbors import NeighborOverflowError
from molequi.io import atomic_path, atomic_write_text

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


class BlowUpGuard:
    """Checks a state for the blow-up conditions of ``run_md``; ``check(atoms)`` returns a reason or None."""

    def __init__(
        self,
        max_force: float | None = None,
        min_distance: float | None = None,
        max_uncertainty: float | None = None,
    ):
        for name, v in (
            ("max_force", max_force),
            ("min_distance", min_distance),
            ("max_uncertainty", max_uncertainty),
        ):
            if v is not None and not v > 0:
                raise ConfigError(f"{name} must be positive, got {v}")
        self.max_force, self.min_distance, self.max_uncertainty = max_force, min_distance, max_uncertainty

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


class FrameWriter:
    """Appends whole extended-XYZ frames to ``path`` (format in memory, one write, flush)."""

    def __init__(self, path: str | Path, append: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "a" if append else "w")
        self.count = 0

    def write(self, atoms, extra_info: dict | None = None, extra_arrays: dict | None = None) -> None:
        from ase.calculators.singlepoint import SinglePointCalculator
        from ase.io import write

        snap = atoms.copy()  # keeps momenta and constraints
        res = getattr(atoms.calc, "results", {}) if atoms.calc is not None else {}
        standard = {k: res[k] for k in ("energy", "free_energy", "forces", "stress", "energies") if k in res}
        if standard:
            snap.calc = SinglePointCalculator(snap, **standard)
        snap.info.update(extra_info or {})
        for k, v in (extra_arrays or {}).items():
            snap.arrays[k] = np.asarray(v)
        buf = io.StringIO()
        write(buf, snap, format="extxyz")
        self.file.write(buf.getvalue())
        self.file.flush()
        self.count += 1

    def close(self) -> None:
        self.file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class CSVLog:
    """A CSV file written a line at a time with flush."""

    def __init__(self, path: str | Path, columns: list[str]):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(self.path, "w")
        self.columns = columns
        self.file.write(",".join(columns) + "\n")
        self.file.flush()

    def write(self, row: dict) -> None:
        self.file.write(",".join(_fmt(row.get(c)) for c in self.columns) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


def _fmt(v) -> str:
    if v is None:
        return ""
    if isinstance(v, (int, np.integer)):
        return str(int(v))
    return repr(float(v))


def drift_per_atom_per_ps(time_fs, etot, n_atoms: int) -> float | None:
    """Slope (eV/atom/ps) of a least-squares line through E_tot / n versus time; None with < 3 points."""
    t = np.asarray(time_fs, dtype=float) / 1000.0
    e = np.asarray(etot, dtype=float) / n_atoms
    if len(t) < 3 or np.ptp(t) == 0 or not np.all(np.isfinite(e)):
        return None
    return float(np.polyfit(t, e, 1)[0])


def make_integrator(
    atoms,
    ensemble: str,
    timestep: float,
    temperature: float,
    friction: float,
    pressure: float,
    barostat: str,
    taut: float,
    taup: float,
    compressibility: float,
    rng,
):
    """The ASE integrator for ``ensemble`` (units: fs, K, 1/fs, bar, 1/bar)."""
    dt = timestep * units.fs
    if ensemble == "nve":
        from ase.md.verlet import VelocityVerlet

        return VelocityVerlet(atoms, timestep=dt)
    if ensemble == "nvt":
        from ase.md.langevin import Langevin

        return Langevin(
            atoms, timestep=dt, temperature_K=temperature, friction=friction / units.fs, rng=rng, fixcm=False
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
                compressibility_au=compressibility / units.bar,
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
    *,
    ensemble: str = "nvt",
    temperature: float = 300.0,
    timestep: float = 0.5,
    steps: int = 1000,
    friction: float = 0.01,
    pressure: float = 1.01325,
    barostat: str = "mtk",
    taut: float | None = None,
    taup: float | None = None,
    compressibility: float = 4.57e-5,
    traj: str | Path | None = None,
    log: str | Path | None = None,
    loginterval: int = 1,
    seed: int | None = None,
    init_temperature: float | None = None,
    max_force: float | None = None,
    min_distance: float | None = None,
    max_uncertainty: float | None = None,
    allow_nonconservative: bool = False,
    progress: bool = False,
    raise_on_blowup: bool = True,
    append: bool = False,
) -> MDResult:
    """Run ``steps`` MD steps of ``atoms`` (modified in place) with ``calc`` (default: ``atoms.calc``).

    Velocities: if ``atoms`` has no momenta, they are drawn from Maxwell-Boltzmann at ``init_temperature``
    (default ``temperature``) with ``seed``. Time constants default to taut = 100 timesteps and
    taup = 1000 timesteps. ``traj`` / ``log`` get a frame / line at step 0 and every ``loginterval``
    steps. Returns an ``MDResult``; a blow-up raises ``SimulationBlowUp`` (its ``result`` attribute holds the
    ``MDResult`` up to the last good step) unless ``raise_on_blowup=False``.
    """
    ensemble = ensemble.lower()
    if ensemble not in ENSEMBLES:
        raise ConfigError(f"unknown ensemble '{ensemble}'; valid: {', '.join(ENSEMBLES)}")
    if timestep <= 0 or steps < 0 or loginterval < 1:
        raise ConfigError(
            f"need timestep > 0, steps >= 0, loginterval >= 1 (got {timestep}, {steps}, {loginterval})"
        )
    if ensemble != "nve" and temperature <= 0:
        raise ConfigError(f"{ensemble} needs a positive temperature, got {temperature} K")
    if calc is not None:
        atoms.calc = calc
    if atoms.calc is None:
        raise ConfigError("run_md needs a calculator (calc=... or atoms.calc)")
    if not getattr(atoms.calc, "conservative", True) and not allow_nonconservative:
        raise ModelError(
            "the model predicts forces directly (not as -dE/dx), so MD with it does not conserve "
            "energy; pass allow_nonconservative=True (--allow-nonconservative) to run anyway"
        )
    guard = BlowUpGuard(max_force, min_distance, max_uncertainty)
    if max_uncertainty is not None and not getattr(atoms.calc, "is_committee", False):
        raise ConfigError(
            "max_uncertainty needs a committee calculator (MolequiCalculator(models=[...]), "
            "or several checkpoints on the command line)"
        )
    rng = np.random.default_rng(seed)
    t_init = temperature if init_temperature is None else init_temperature
    if not np.any(atoms.get_momenta()) and t_init > 0:
        init_velocities(atoms, t_init, rng)
    taut = 100 * timestep if taut is None else taut
    taup = 1000 * timestep if taup is None else taup
    dyn = make_integrator(
        atoms, ensemble, timestep, temperature, friction, pressure, barostat, taut, taup, compressibility, rng
    )

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
    if result.stopped and raise_on_blowup:
        raise SimulationBlowUp(result.reason, step, result)
    return result


def _stop(result: MDResult, reason: str, step: int) -> None:
    result.stopped = True
    result.reason = reason


# ---------------------------------------------------------------------------------------------- quickstart
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
    max_force: float | None = 50.0,
    min_distance: float | None = 0.5,
) -> float:
    """NVT (Langevin) for ``nvt_ps`` then NVE for ``nve_ps``; returns the NVE drift in eV/atom/ps.

    ``model``: a molequi model, a list of models (committee), a ``MolequiCalculator`` or a checkpoint path.
    ``atoms`` is copied. Writes into ``out_dir``: ``md_nvt.extxyz``, ``md_nve.extxyz``, ``md_nvt.csv``,
    ``md_nve.csv``, ``md_energy.png`` (potential / kinetic / total energy versus time, NVE fit line) and
    ``md_summary.json`` (drift, steps/s, temperatures). A blow-up (NaN, a force above ``max_force`` eV/Å,
    atoms closer than ``min_distance`` Å) raises ``SimulationBlowUp``; the files hold every step before it.
    """
    import json

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
    n_nvt = int(round(nvt_ps * 1000 / timestep_fs))
    n_nve = int(round(nve_ps * 1000 / timestep_fs))
    nvt = run_md(
        atoms,
        ensemble="nvt",
        temperature=temperature,
        timestep=timestep_fs,
        steps=n_nvt,
        friction=friction,
        traj=out / "md_nvt.extxyz",
        log=out / "md_nvt.csv",
        loginterval=loginterval,
        seed=seed,
        progress=progress,
        max_force=max_force,
        min_distance=min_distance,
    )
    nve = run_md(
        atoms,
        ensemble="nve",
        temperature=temperature,
        timestep=timestep_fs,
        steps=n_nve,
        traj=out / "md_nve.extxyz",
        log=out / "md_nve.csv",
        loginterval=loginterval,
        seed=seed,
        progress=progress,
        max_force=max_force,
        min_distance=min_distance,
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


def plot_energies(nvt: MDResult | None, nve: MDResult, path: str | Path) -> None:
    """Energy-versus-time PNG (matplotlib Agg), written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(
        1, 2 if nvt is not None else 1, figsize=(11 if nvt is not None else 6, 4), squeeze=False
    )
    axes = axes[0]
    offset = 0.0
    panels = ([("NVT", nvt)] if nvt is not None else []) + [("NVE", nve)]
    for ax, (name, res) in zip(axes, panels):
        t = np.asarray(res.log["time_fs"], dtype=float) / 1000 + offset
        n = res.n_atoms
        for key, label in (("epot_eV", "potential"), ("ekin_eV", "kinetic"), ("etot_eV", "total")):
            y = np.asarray(res.log[key], dtype=float) / n
            ax.plot(t, y - (y[0] if len(y) else 0.0), label=label, lw=1)
        if name == "NVE" and res.drift_ev_per_atom_per_ps is not None and len(t) > 2:
            y = np.asarray(res.log["etot_eV"], dtype=float) / n
            fit = np.polyfit(t, y - y[0], 1)
            ax.plot(
                t,
                np.polyval(fit, t),
                "k--",
                lw=1,
                label=f"fit: {res.drift_ev_per_atom_per_ps:.2e} eV/atom/ps",
            )
        ax.set_xlabel("time (ps)")
        ax.set_ylabel("energy - initial (eV/atom)")
        ax.set_title(f"{name}: {res.steps} steps")
        ax.legend(fontsize=8)
        if nvt is not None and name == "NVT":
            offset = t[-1] if len(t) else 0.0
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, format="png")
    plt.close(fig)


__all__ = [
    "run_md",
    "MDResult",
    "SimulationBlowUp",
    "BlowUpGuard",
    "FrameWriter",
    "quickstart_md",
    "drift_per_atom_per_ps",
    "plot_energies",
    "ENSEMBLES",
]
