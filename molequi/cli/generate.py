"""``molequi generate CKPT``: sample 3D molecules from a trained generative model, write SDF + extended XYZ,
print EDM's metrics (and, with ``--relax-with``, the same metrics after relaxing each molecule)."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "generate", help="sample molecules from a trained diffusion model (edm, eqgat_diff) and score them",
        description="Sample --n molecules from a generative checkpoint, write them as SDF (bonds from EDM's "
                    "distance rule, or the bonds the categorical model predicts) and extended XYZ, and print "
                    "atom / molecule stability, RDKit validity (EDM's largest-fragment and strict "
                    "single-fragment), uniqueness and, with --training-smiles, novelty. Files are written "
                    "atomically.")
    p.add_argument("checkpoint", metavar="CKPT", help="model.pt of 'molequi train' (task diffusion) or a "
                   "distilled student checkpoint")
    p.add_argument("--n", type=int, default=1000, help="number of molecules to generate (default 1000)")
    p.add_argument("--out", default="mols.sdf", help="SDF output; the extended XYZ goes next to it with the "
                   "suffix .xyz and the metrics with .metrics.json (default mols.sdf)")
    p.add_argument("--steps", type=int, default=None,
                   help="denoising steps (default: the model's T, or the step count a distilled student was "
                        "trained for); fewer steps sample faster")
    p.add_argument("--method", choices=["ancestral", "ddim"], default=None,
                   help="EDM sampler: ancestral (stochastic, EDM's) or ddim (the generalised DDIM step, needed by "
                        "distilled students); default ancestral, or ddim for a distilled student. Ignored by "
                        "the categorical models (eqgat_diff, egnn_categorical)")
    p.add_argument("--eta", type=float, default=None,
                   help="with --method ddim: the fraction (0..1) of the ancestral step's noise each DDIM step "
                        "adds (0: deterministic; 1: the ancestral step's mean and variance). Default 1 for a "
                        "distilled student (its most stable sampler in bench_results/generation.md), else 0. "
                        "Ignored by the categorical models")
    p.add_argument("--context", type=float, nargs="+", default=None, metavar="VALUE",
                   help="for a model trained with condition_on: the target value of each conditioning "
                        "property (in its own units, in condition_on's order), the same for every molecule")
    p.add_argument("--batch-size", type=int, default=64, help="molecules denoised together (default 64)")
    p.add_argument("--relax-with", default=None, metavar="FF.ckpt",
                   help="relax every generated molecule with this trained molequi potential (ASE calculator, "
                        "BFGS) and report the metrics before and after")
    p.add_argument("--relax-fmax", type=float, default=0.05, help="relaxation force threshold, eV/Å (0.05)")
    p.add_argument("--relax-steps", type=int, default=200, help="maximum optimiser steps per molecule (200)")
    p.add_argument("--training-smiles", default=None, metavar="CSV",
                   help="CSV with a 'smiles' column (e.g. the QM9 training SMILES) for novelty")
    p.add_argument("--training-geometries", default=None, metavar="FILE",
                   help="training geometries (extxyz, or a tarball of xyz files) whose distance-bond SMILES are "
                        "the novelty reference, as EDM computes it (used instead of --training-smiles)")
    p.add_argument("--seed", type=int, default=0, help="random seed of sizes and noise (default 0)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import time
    from pathlib import Path

    import torch

    from molequi.data.molecules import write_extxyz, write_sdf
    from molequi.errors import ConfigError, MolequiError
    from molequi.io import atomic_write_text
    from molequi.models.generative.edm import EDM
    from molequi.models.generative.io import load_generative
    from molequi.tasks.generation_metrics import format_report, load_training_smiles, molecule_report

    if args.n < 1 or args.batch_size < 1:
        raise ConfigError("--n and --batch-size must be positive")
    model = load_generative(args.checkpoint, device=args.device)
    gen = torch.Generator().manual_seed(args.seed)
    kw = {"steps": args.steps, "batch_size": args.batch_size, "generator": gen}
    if isinstance(model, EDM):
        student = bool(model.config.sampling_steps)
        kw["method"] = args.method or ("ddim" if student else "ancestral")
        if args.eta and kw["method"] != "ddim":
            raise ConfigError("--eta applies to the ddim sampler only: add --method ddim")
        kw["eta"] = args.eta if args.eta is not None else (1.0 if student and kw["method"] == "ddim" else 0.0)
        names = model.config.condition_on or [f"property {i}" for i in range(model.config.context_dim)]
        if model.config.context_dim and (args.context is None or len(args.context) != len(names)):
            raise ConfigError(f"this model is conditioned on {', '.join(names)}: give --context with "
                              f"{len(names)} value(s)")
        if args.context and not model.config.context_dim:
            raise ConfigError("--context: this model is not conditioned on any property")
        if args.context:
            kw["context"] = torch.tensor([args.context], dtype=torch.float64).repeat(args.n, 1)
    t0 = time.perf_counter()
    mols = model.sample(args.n, **kw)
    seconds = time.perf_counter() - t0
    train_smiles = load_training_smiles(args.training_smiles) if args.training_smiles else None
    if args.training_geometries:
        from molequi.data.molecules import read_molecules
        from molequi.tasks.generation_metrics import smiles_of_geometries

        train_smiles = smiles_of_geometries(read_molecules(args.training_geometries))
    out = Path(args.out)
    write_sdf(mols, out)
    write_extxyz(mols, out.with_suffix(".xyz"))
    report = molecule_report(mols, train_smiles)
    summary = {"checkpoint": str(args.checkpoint), "n": args.n, "sampling_seconds": seconds,
               "molecules_per_second": args.n / seconds,
               **{k: v for k, v in kw.items() if k not in ("generator", "context")},
               **({"context": args.context} if args.context else {}),
               "metrics": {k: v for k, v in report.items() if k != "smiles"}}
    print(f"molequi generate: {args.n} molecules in {seconds:.1f} s ({args.n / seconds:.2f} mol/s); wrote {out} "
          f"and {out.with_suffix('.xyz')}")
    print(format_report(report))
    has_bonds = any(m.bonds is not None for m in mols)
    if has_bonds:  # also EDM's distance-bond metrics, comparable with EDM and with the relaxed geometries
        from molequi.data.molecules import Molecule

        dist = molecule_report([Molecule(m.numbers, m.positions) for m in mols], train_smiles)
        print("with bonds from distances (EDM's rule) instead of the predicted ones:")
        print(format_report(dist))
        summary["metrics_distance_bonds"] = {k: v for k, v in dist.items() if k != "smiles"}

    if args.relax_with:
        import ase

        from molequi.calculators import MolequiCalculator
        from molequi.data.molecules import Molecule
        from molequi.simulate.relax import relax

        calc = MolequiCalculator.from_checkpoint(args.relax_with, device=args.device)
        relaxed, failed, converged = [], 0, 0
        t0 = time.perf_counter()
        for m in mols:
            atoms = ase.Atoms(numbers=m.numbers, positions=m.positions)
            try:
                res = relax(atoms, calc, fmax=args.relax_fmax, steps=args.relax_steps)
                converged += int(res.converged)
                relaxed.append(Molecule(m.numbers, atoms.positions.copy()))
            except MolequiError:
                failed += 1
                relaxed.append(Molecule(m.numbers, m.positions))
        after = molecule_report(relaxed, train_smiles)
        rel_out = out.with_name(out.stem + "_relaxed.sdf")
        write_sdf(relaxed, rel_out)
        write_extxyz(relaxed, rel_out.with_suffix(".xyz"))
        print("after relaxation (bonds from distances):" if has_bonds else "after relaxation:")
        print(f"relaxed with {args.relax_with}: {converged} converged, {failed} failed "
              f"({time.perf_counter() - t0:.1f} s); wrote {rel_out}")
        print(format_report(after))
        summary["relaxed"] = {"force_field": args.relax_with, "converged": converged, "failed": failed,
                              "metrics": {k: v for k, v in after.items() if k != "smiles"}}
    atomic_write_text(out.with_suffix(".metrics.json"), json.dumps(summary, indent=2) + "\n")
    return 0
