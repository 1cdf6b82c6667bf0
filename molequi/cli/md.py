"""``molequi md CKPT structure.xyz``: molecular dynamics with a trained model (or a committee)."""

from __future__ import annotations

import argparse

EXIT_BLOWUP = 3

EPILOG = """\
exit status: 0 finished; 1 error (bad input, unknown element, ...); 3 the simulation blew up and was stopped
(the reason is printed; the trajectory and log hold every step up to the last good one).

examples:
  molequi md model.pt ethanol.xyz --ensemble nvt --temperature 300 --timestep 0.5 --steps 20000 \\
      --traj md.extxyz --log md.csv --max-force 20 --min-distance 0.6
  molequi md m1.pt m2.pt m3.pt water.xyz --ensemble npt --pressure 1 --max-uncertainty 0.5 --traj md.extxyz
"""


def register(sub) -> None:
    p = sub.add_parser(
        "md",
        help="run molecular dynamics (NVE / NVT / NPT) with a trained model",
        description="Run molecular dynamics with ASE integrators: velocity Verlet (nve), Langevin (nvt), "
        "isotropic MTK Nose-Hoover or Berendsen barostat (npt). Units: K, fs, bar, eV, Å. "
        "The run stops cleanly when the simulation blows up (NaN, a force above --max-force, "
        "atoms closer than --min-distance, committee uncertainty above --max-uncertainty).",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.usage = "molequi md [options] CKPT [CKPT ...] STRUCTURE"
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="FILE",
        help="one checkpoint (or several: a committee whose spread is logged), then the structure "
        "file (any ASE-readable format; the last frame is used)",
    )
    p.add_argument(
        "--ensemble",
        choices=["nve", "nvt", "npt"],
        default="nvt",
        help="nve: velocity Verlet; nvt: Langevin thermostat; npt: thermostat + barostat (default nvt)",
    )
    p.add_argument(
        "--temperature",
        type=float,
        default=300.0,
        help="target temperature in K; also the temperature of the initial Maxwell-Boltzmann "
        "velocities when the structure has none (default 300)",
    )
    p.add_argument("--timestep", type=float, default=0.5, help="timestep in fs (default 0.5)")
    p.add_argument("--steps", type=int, default=1000, help="number of MD steps (default 1000)")
    p.add_argument(
        "--traj",
        default="md.extxyz",
        help="output trajectory, extended XYZ, one whole frame appended per logged step (default md.extxyz)",
    )
    p.add_argument(
        "--log",
        default=None,
        help="CSV log: step, time_fs, potential/kinetic/total energy (eV), temperature (K), "
        "energy drift (eV/atom), max force, volume (and committee spread)",
    )
    p.add_argument(
        "--loginterval",
        type=int,
        default=10,
        help="write a trajectory frame and a log line every N steps (default 10)",
    )
    p.add_argument(
        "--friction",
        type=float,
        default=0.01,
        help="Langevin friction in 1/fs for nvt (default 0.01, i.e. 10/ps)",
    )
    p.add_argument(
        "--pressure", type=float, default=1.01325, help="target pressure in bar for npt (default 1 atm)"
    )
    p.add_argument(
        "--barostat",
        choices=["mtk", "berendsen"],
        default="mtk",
        help="npt integrator: mtk = isotropic MTK Nose-Hoover chains (correct ensemble, default); "
        "berendsen = Berendsen thermostat/barostat (robust equilibration, wrong fluctuations)",
    )
    p.add_argument(
        "--taut",
        type=float,
        default=None,
        help="thermostat time constant in fs for npt (default 100 timesteps)",
    )
    p.add_argument(
        "--taup",
        type=float,
        default=None,
        help="barostat time constant in fs for npt (default 1000 timesteps)",
    )
    p.add_argument(
        "--compressibility",
        type=float,
        default=4.57e-5,
        help="compressibility in 1/bar for the Berendsen barostat (default 4.57e-5, water)",
    )
    p.add_argument(
        "--seed", type=int, default=None, help="random seed for initial velocities and Langevin noise"
    )
    p.add_argument(
        "--max-force", type=float, default=None, help="stop when any atomic force exceeds this (eV/Å)"
    )
    p.add_argument(
        "--min-distance", type=float, default=None, help="stop when two atoms come closer than this (Å)"
    )
    p.add_argument(
        "--max-uncertainty",
        type=float,
        default=None,
        help="stop when the committee force spread of an atom (RMS over members of |F_m - mean F|, "
        "eV/Å) exceeds this; needs several checkpoints",
    )
    p.add_argument(
        "--allow-nonconservative",
        action="store_true",
        help="run even if the model predicts forces directly (they are not -dE/dx, so energy is "
        "not conserved)",
    )
    add_device_arguments(p)
    add_dispersion_arguments(p)
    p.add_argument(
        "--skin",
        type=float,
        default=0.5,
        help="Verlet skin of the reused neighbour list in Å; 0 rebuilds every step (default 0.5)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def add_device_arguments(p) -> None:
    """``--device`` and ``--dtype``, shared by the verbs that evaluate a checkpoint (md, relax, predict)."""
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.add_argument(
        "--dtype",
        choices=["float32", "float64"],
        default=None,
        help="evaluation precision (default: the checkpoint's)",
    )


def add_dispersion_arguments(p) -> None:
    """``--dispersion``, ``--functional`` and ``--three-body``, shared by md and relax."""
    p.add_argument("--dispersion", choices=["checkpoint", "none", "d3bj", "d3zero"], default="checkpoint",
                   help="DFT-D3 correction added to the model (molequi.calculators.dispersion): checkpoint "
                   "(default: what the training run subtracted from its labels, if anything), none, d3bj or "
                   "d3zero")
    p.add_argument("--functional", default="pbe",
                   help="functional whose D3 parameters --dispersion d3bj/d3zero uses (default pbe)")
    p.add_argument("--three-body", action="store_true",
                   help="add D3's Axilrod-Teller-Muto three-body term (off by default, as in DFT-D3)")


def dispersion_of(args):
    """The ``dispersion`` argument of ``MolequiCalculator.from_checkpoint`` asked for on the command line."""
    choice = getattr(args, "dispersion", "checkpoint")
    if choice in ("checkpoint", "none"):
        return None if choice == "none" else "checkpoint"
    return {"method": choice, "functional": args.functional, "three_body": args.three_body}


def dtype_of(args):
    """The torch dtype asked for by ``--dtype`` (None: the checkpoint's)."""
    from molequi.calculators.calculator import as_dtype

    return as_dtype(args.dtype)


def load_inputs(args):
    """(calculator, atoms) from ``args.inputs`` = checkpoints..., structure."""
    from ase.io import read

    from molequi.calculators import MolequiCalculator
    from molequi.errors import ConfigError, FormatError

    if len(args.inputs) < 2:
        raise ConfigError("give at least one checkpoint and a structure file: molequi md CKPT STRUCTURE")
    *ckpts, structure = args.inputs
    dtype = dtype_of(args)
    try:
        atoms = read(structure, index=-1)
    except FileNotFoundError:
        raise FormatError("file not found", source=structure) from None
    except Exception as exc:
        raise FormatError(f"cannot read structure: {exc}", source=structure) from None
    skin = getattr(args, "skin", 0.5)
    calc = MolequiCalculator.from_checkpoint(
        ckpts[0] if len(ckpts) == 1 else ckpts, device=args.device, dtype=dtype, skin=skin,
        dispersion=dispersion_of(args),
    )
    return calc, atoms


def run(args) -> int:
    import sys

    from molequi.simulate.md import BlowUpGuard, MDSettings, SimulationBlowUp, run_md

    settings = MDSettings(
        ensemble=args.ensemble,
        temperature=args.temperature,
        timestep=args.timestep,
        steps=args.steps,
        friction=args.friction,
        pressure=args.pressure,
        barostat=args.barostat,
        taut=args.taut,
        taup=args.taup,
        compressibility=args.compressibility,
        loginterval=args.loginterval,
        seed=args.seed,
        guard=BlowUpGuard(
            max_force=args.max_force, min_distance=args.min_distance, max_uncertainty=args.max_uncertainty
        ),
        allow_nonconservative=args.allow_nonconservative,
    )
    calc, atoms = load_inputs(args)
    try:
        result = run_md(
            atoms, calc, settings, traj=args.traj, log=args.log, progress=not args.no_progress
        )
    except SimulationBlowUp as exc:
        r = exc.result
        written = f"; {r.frames_written} frames in {args.traj}" if r is not None and args.traj else ""
        print(f"molequi md: stopped: SimulationBlowUp: {exc}{written}", file=sys.stderr)
        return EXIT_BLOWUP
    drift = result.drift_ev_per_atom_per_ps
    print(
        f"molequi md: {result.steps} steps ({result.time_fs / 1000:.4g} ps) in {result.wall_s:.1f} s, "
        f"{result.steps_per_s:.2f} steps/s; {result.frames_written} frames in {args.traj}"
        + (
            f"; total-energy drift {drift:.3g} eV/atom/ps"
            if drift is not None and args.ensemble == "nve"
            else ""
        )
    )
    return 0
