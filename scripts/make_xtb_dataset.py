#!/usr/bin/env python
"""Label an MD trajectory of any molecule with GFN2-xTB and write it as extended XYZ (energy, forces).

    python scripts/make_xtb_dataset.py "CCO" -n 200 -o ethanol_xtb.xyz [--temperature 500] [--every 10]

1. ``molequi.qc.conformers.molecule_from_smiles``: RDKit builds the molecule from SMILES (explicit
   hydrogens), embeds a 3D geometry (ETKDG, seeded) and relaxes it with MMFF (UFF if MMFF lacks parameters).
2. Langevin MD with GFN2-xTB forces (``molequi.qc.xtb.xtb_calculator``, tblite) at ``--temperature`` K,
   time step ``--timestep`` fs; a frame is kept every ``--every`` steps after ``--equilibrate`` steps.
3. Each kept frame carries the xTB energy (eV) and forces (eV/Å) (ASE units; tblite converts from Hartree).
   Frames go to a temporary file beside the output, which replaces the output only when all are written,
   so an interrupted run never leaves a truncated dataset.

Output keys: ``energy`` and ``forces`` (``molequi train`` reads them with ``data.name: xyz``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def run(smiles: str, n_frames: int, output: Path, *, temperature: float = 500.0, timestep: float = 0.5,
        every: int = 10, equilibrate: int = 100, friction: float = 0.01, seed: int = 0,
        progress: bool = True) -> int:
    """Write ``n_frames`` labelled frames of a Langevin trajectory to ``output``; returns frames written."""
    import numpy as np
    from ase import units
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.constraints import FixCom
    from ase.io import write
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import Stationary, ZeroRotation, thermalize_momenta
    from tqdm.auto import tqdm

    from molequi.io import atomic_open
    from molequi.qc.conformers import molecule_from_smiles
    from molequi.qc.xtb import xtb_calculator

    atoms = molecule_from_smiles(smiles, seed, max_iters=500)
    atoms.calc = xtb_calculator(charge=atoms.info.pop("charge"))
    rng = np.random.default_rng(seed)
    thermalize_momenta(atoms, temperature_K=temperature, rng=rng)
    Stationary(atoms)
    ZeroRotation(atoms)
    atoms.set_constraint(FixCom())  # no drift of the molecule (Langevin's own fixcm is deprecated)
    dyn = Langevin(atoms, timestep * units.fs, temperature_K=temperature, friction=friction / units.fs,
                   rng=rng,
                   fixcm=False)

    written = 0
    bar = tqdm(total=equilibrate + n_frames * every, desc=f"GFN2-xTB MD of {smiles}", unit="step",
               disable=not progress)
    if equilibrate:
        dyn.run(equilibrate)
        bar.update(equilibrate)
    with atomic_open(output, "w") as fh:
        for _ in range(n_frames):
            dyn.run(every)
            bar.update(every)
            energy = atoms.get_potential_energy()  # eV
            forces = atoms.get_forces(apply_constraint=False)  # eV/Å, raw -dE/dr (no FixCom projection)
            frame = atoms.copy()
            frame.set_constraint()
            frame.calc = SinglePointCalculator(frame, energy=energy, forces=forces)
            frame.info.update(smiles=smiles, method="GFN2-xTB", temperature_K=temperature,
                              md_step=int(dyn.nsteps))
            write(fh, frame, format="extxyz")
            written += 1
    bar.close()
    return written


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("smiles", help="molecule as SMILES, e.g. O (water) or CCO (ethanol)")
    p.add_argument("-n", "--frames", type=int, default=100, help="frames to write (default 100)")
    p.add_argument("-o", "--output", type=Path, required=True, help="extended XYZ file to write")
    p.add_argument("--temperature", type=float, default=500.0, help="Langevin temperature, K (default 500)")
    p.add_argument("--timestep", type=float, default=0.5, help="MD time step, fs (default 0.5)")
    p.add_argument("--every", type=int, default=10, help="MD steps between written frames (default 10)")
    p.add_argument("--equilibrate", type=int, default=100,
                   help="MD steps before the first frame (default 100)")
    p.add_argument("--friction", type=float, default=0.01, help="Langevin friction, 1/fs (default 0.01)")
    p.add_argument("--seed", type=int, default=0, help="seed of the embedding and of the MD (default 0)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = p.parse_args(argv)
    if args.frames < 1 or args.every < 1 or args.equilibrate < 0:
        p.error("--frames and --every must be >= 1, --equilibrate >= 0")
    from molequi.errors import InputError

    try:
        n = run(args.smiles, args.frames, args.output, temperature=args.temperature, timestep=args.timestep,
                every=args.every, equilibrate=args.equilibrate, friction=args.friction, seed=args.seed,
                progress=not args.no_progress)
    except InputError as exc:
        raise SystemExit(f"error: {exc}") from None
    print(f"wrote {n} GFN2-xTB frames of {args.smiles} to {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
