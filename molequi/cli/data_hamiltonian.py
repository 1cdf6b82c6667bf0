"""``molequi data hamiltonian``: sample geometries and label them with PySCF (Fock, overlap, energy, forces).

Example (the water set shipped in ``data/hamiltonian/water``)::

    nice -n 10 molequi data hamiltonian --smiles O --n 500 --xc pbe --basis def2-svp \\
        --sampler xtb-md --out data/hamiltonian/water --workers 1
"""

from __future__ import annotations

import argparse


def register(sub) -> None:
    p = sub.add_parser(
        "hamiltonian",
        help="label geometries with PySCF Fock/overlap matrices",
        description="Sample geometries of one molecule (GFN2-xTB MD or normal-mode displacements) and run "
        "PySCF RKS on each; store the converged Fock matrix mf.get_fock() (Hartree, PySCF AO "
        "order), overlap, energy (Hartree), forces (Hartree/Bohr) and electron count in a "
        "sharded, memory-mapped store (DIR/index.json + DIR/shard_*/).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--smiles", help="molecule as SMILES (RDKit conformer with hydrogens)")
    src.add_argument("--xyz", help="starting geometry (any ASE-readable file, first frame; Å)")
    p.add_argument("--n", type=int, required=True, help="number of geometries to label")
    p.add_argument("--xc", default="pbe", help="PySCF exchange-correlation functional")
    p.add_argument("--basis", default="def2-svp", help="PySCF basis set name")
    p.add_argument("--charge", type=int, default=0, help="total charge")
    p.add_argument(
        "--sampler",
        choices=["xtb-md", "normal-modes"],
        default="xtb-md",
        help="xtb-md: GFN2-xTB Langevin MD (tblite); normal-modes: Boltzmann displacements along "
        "GFN2-xTB normal modes",
    )
    p.add_argument("--temperature", type=float, default=500.0, help="sampling temperature, K")
    p.add_argument("--interval", type=int, default=10, help="MD steps (0.5 fs) between kept frames")
    p.add_argument("--seed", type=int, default=0, help="random seed of the sampler")
    p.add_argument("--workers", type=int, default=1, help="PySCF worker processes (one thread each)")
    p.add_argument("--shard-size", type=int, default=100, help="records per shard")
    p.add_argument("--out", required=True, help="output directory of the store")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store in --out")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    import sys
    import time

    import ase.io

    from molequi.qc.conformers import molecule_from_smiles
    from molequi.qc.driver import label_dataset
    from molequi.qc.xtb import sample_geometries

    atoms = molecule_from_smiles(args.smiles, seed=args.seed) if args.smiles else ase.io.read(args.xyz, 0)
    t0 = time.perf_counter()
    frames, meta = sample_geometries(atoms, args.n, args.sampler, temperature=args.temperature,
                                     interval=args.interval, seed=args.seed)
    meta.update(source=args.smiles or str(args.xyz), command=" ".join(sys.argv))
    out = label_dataset(
        frames,
        args.out,
        xc=args.xc,
        basis=args.basis,
        charge=args.charge,
        workers=args.workers,
        shard_size=args.shard_size,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        extra_meta=meta,
    )
    print(f"wrote {len(frames)} labelled geometries to {out} ({time.perf_counter() - t0:.0f} s)")
    return 0
