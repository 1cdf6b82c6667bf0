"""``molequi relax CKPT structure.xyz``: relax positions (and optionally the cell) with a trained model."""

from __future__ import annotations


def register(sub) -> None:
    from molequi.cli.md import add_device_arguments, add_dispersion_arguments

    p = sub.add_parser(
        "relax",
        help="relax a structure (positions, optionally the cell) with a trained model",
        description="Minimise the energy of a structure with an ASE optimiser until every force is below "
        "--fmax. With --cell the lattice relaxes too (ase.filters.FrechetCellFilter). "
        "Constraints stored in the structure file (e.g. FixAtoms from an ASE .traj) are honoured.",
        epilog="exit status: 0 converged; 1 error (bad input, unknown element, ...); 4 not converged within "
        "--steps (the last structure is still written to --out).",
    )
    p.usage = "molequi relax [options] CKPT [CKPT ...] STRUCTURE"
    p.add_argument(
        "inputs",
        nargs="+",
        metavar="FILE",
        help="checkpoint(s) (several = committee mean), then the structure file (last frame is used)",
    )
    p.add_argument(
        "--optimizer", choices=["bfgs", "fire", "lbfgs"], default="bfgs", help="ASE optimiser (default bfgs)"
    )
    p.add_argument(
        "--fmax", type=float, default=0.05, help="force convergence threshold in eV/Å (default 0.05)"
    )
    p.add_argument("--steps", type=int, default=1000, help="maximum optimiser steps (default 1000)")
    p.add_argument("--cell", action="store_true", help="also relax the cell (periodic structures)")
    p.add_argument(
        "--pressure", type=float, default=0.0, help="target pressure in GPa with --cell (default 0)"
    )
    p.add_argument(
        "--out",
        default="relaxed.xyz",
        help="relaxed structure, extended XYZ with energy, forces (and stress) (default relaxed.xyz)",
    )
    p.add_argument("--traj", default=None, help="optional extended-XYZ trajectory of every optimiser step")
    add_device_arguments(p)
    add_dispersion_arguments(p)
    p.add_argument("--quiet", action="store_true", help="no optimiser log on stdout")
    p.set_defaults(func=run)


def run(args) -> int:
    import io

    from ase.io import write

    from molequi.cli.md import load_inputs
    from molequi.io import atomic_write_text
    from molequi.simulate.relax import relax

    args.skin = 0.5
    calc, atoms = load_inputs(args)
    result = relax(
        atoms,
        calc,
        optimizer=args.optimizer,
        fmax=args.fmax,
        steps=args.steps,
        cell=args.cell,
        pressure=args.pressure,
        traj=args.traj,
        logfile=None if args.quiet else "-",
    )
    buf = io.StringIO()
    write(buf, atoms, format="extxyz")
    atomic_write_text(args.out, buf.getvalue())
    state = "converged" if result.converged else f"NOT converged after {result.steps} steps"
    print(
        f"molequi relax: {state}; energy {result.energy:.6f} eV, max force {result.fmax:.4g} eV/Å"
        + (f", stress (eV/Å^3) {[round(s, 6) for s in result.stress]}" if result.stress else "")
        + f"; wrote {args.out}"
    )
    return 0 if result.converged else 4
