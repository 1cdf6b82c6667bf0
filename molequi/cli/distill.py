"""``molequi distill CKPT --data FILE``: progressive distillation of an EDM or GeoLDM checkpoint's DDIM sampler
into students of half the steps each (Salimans & Ho 2022; GeoLDM: in its latent space, AccGeoLDM), each
written as its own checkpoint."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "distill", help="distil an EDM or GeoLDM checkpoint into fewer-step students (progressive distillation)",
        description="Progressive distillation (Salimans & Ho 2022) of an EDM model's deterministic DDIM "
                    "sampler: a student of S steps learns to do in one DDIM step what its teacher does in "
                    "two on the --start-steps grid, then becomes the teacher of the next round (S/2). A GeoLDM "
                    "teacher is distilled in its latent space (AccGeoLDM): only the latent denoiser learns, "
                    "the encoder and decoder are the teacher's, frozen. Each "
                    "student is written to --out-dir as student_<S>.pt, a checkpoint that 'molequi generate' "
                    "samples with its own step count; a summary goes to --out-dir/distill.json. Files are "
                    "written atomically.",
        epilog="example: molequi distill runs/edm/model.pt --data data/qm9_geometries/qm9_geometries.extxyz "
               "--start-steps 512 --rounds 3 --out-dir students   (students of 256, 128 and 64 steps)")
    p.add_argument("checkpoint", metavar="CKPT", help="the teacher: an EDM or GeoLDM checkpoint of 'molequi "
                   "train' (task diffusion), 'molequi import', or an earlier student")
    p.add_argument("--data", required=True, metavar="FILE",
                   help="molecules to distil on (the teacher's training set or molecules like them): extxyz, "
                        "sdf or anything ase.io.read reads, or a tarball of QM9-style xyz files")
    p.add_argument("--limit", type=int, default=None, help="use only the first N molecules of --data")
    p.add_argument("--start-steps", type=int, default=None,
                   help="the teacher's DDIM step count; the first student gets half of it (default: an "
                        "earlier student's own step count, else min(512, T // 2 * 2): 512 for T = 1000)")
    p.add_argument("--rounds", type=int, default=3, help="halvings, one student each (default 3)")
    p.add_argument("--iterations", type=int, default=2000,
                   help="optimiser steps per round; the learning rate decays linearly to 0 over them "
                        "(default 2000)")
    p.add_argument("--minutes-per-round", type=float, default=None,
                   help="also stop a round after this many minutes (default: no limit)")
    p.add_argument("--batch-size", type=int, default=64, help="molecules per optimiser step (default 64)")
    p.add_argument("--lr", type=float, default=1e-4, help="initial learning rate, Adam (default 1e-4)")
    p.add_argument("--parameterisation", choices=["eps", "v", "x"], default=None,
                   help="what the students' denoiser predicts: eps, v = alpha eps - sigma x, or x (Salimans & "
                        "Ho recommend v or x); students start from the teacher's weights (default: v for a "
                        "GeoLDM teacher, else the teacher's own, eps for EDM)")
    p.add_argument("--weighting", choices=["snr", "truncated_snr"], default=None,
                   help="loss weighting: snr = the plain epsilon loss; truncated_snr = Salimans & Ho's "
                        "max(SNR, 1) on the x error (default: snr for eps students, truncated_snr for v and x; "
                        "see molequi.models.generative.distill)")
    p.add_argument("--ema", type=float, default=0.0,
                   help="keep an exponential moving average of each student's weights with this decay and "
                        "save it (default 0: the weights themselves)")
    p.add_argument("--seed", type=int, default=0, help="seed of batches, noise and student steps (default 0)")
    p.add_argument("--out-dir", default="students", help="where student_<S>.pt and distill.json go "
                   "(default students/)")
    p.add_argument("--device", default="cpu", help="torch device (default cpu)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    import time
    from pathlib import Path

    from molequi.data.molecules import GeometryDataset, read_molecules
    from molequi.errors import ConfigError, InputError
    from molequi.io import atomic_write_text
    from molequi.models.generative.distill import default_weighting, progressive_distillation
    from molequi.models.generative.edm import EDM
    from molequi.models.generative.geoldm import GeoLDM
    from molequi.models.generative.io import load_generative

    if args.rounds < 1 or args.iterations < 1 or args.batch_size < 1:
        raise ConfigError("--rounds, --iterations and --batch-size must be positive")
    if not 0.0 <= args.ema < 1.0:
        raise ConfigError(f"--ema must lie in [0, 1), got {args.ema}")
    teacher = load_generative(args.checkpoint, device=args.device)
    if not isinstance(teacher, EDM):
        raise ConfigError(f"{args.checkpoint} holds a {type(teacher).__name__}: progressive distillation "
                          "applies to EDM's DDIM sampler (model: edm or geoldm)")
    latent = isinstance(teacher, GeoLDM)
    parameterisation = args.parameterisation or ("v" if latent and not teacher.config.sampling_steps
                                                 else teacher.config.parameterisation)
    weighting = args.weighting or default_weighting(parameterisation)
    T = teacher.config.timesteps
    start = args.start_steps or teacher.config.sampling_steps or min(512, T // 2 * 2)
    if start % (2 ** args.rounds):
        k = 2 ** args.rounds
        raise ConfigError(f"--start-steps {start} cannot be halved {args.rounds} times exactly; give a "
                          f"multiple of {k} (e.g. {k * max(1, start // k)})")
    if start > T:
        raise ConfigError(f"--start-steps {start} exceeds the model's T = {T}")
    mols = read_molecules(args.data, limit=args.limit)
    known = set(teacher.config.elements)
    for i, a in enumerate(mols):
        unknown = sorted(set(int(z) for z in a.numbers) - known)
        if unknown:
            raise InputError(f"elements {unknown} are not among the teacher's elements "
                             f"{teacher.config.elements}", source=args.data, frame=i,
                             hint="distil on molecules like the teacher's training set")
    records = GeometryDataset(mols)
    if args.device != "cpu":
        records = [r.to(args.device) for r in records]
    out_dir = Path(args.out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    from tqdm import tqdm

    bar = tqdm(total=args.rounds * args.iterations, unit="it", dynamic_ncols=True)

    def on_step(steps, it, loss):
        if it == 0:
            bar.set_description(f"distill {2 * steps}->{steps}")
        bar.update(1)
        if it % 20 == 0:
            bar.set_postfix(loss=f"{loss:.3e}")

    t0 = time.perf_counter()
    try:
        paths = progressive_distillation(
            teacher, records, start, args.rounds, out_dir, iterations=args.iterations,
            batch_size=args.batch_size, lr=args.lr, seed=args.seed, weighting=weighting,
            parameterisation=parameterisation,
            ema=args.ema or None, log=None, on_step=on_step,
            max_seconds=None if args.minutes_per_round is None else 60 * args.minutes_per_round)
    finally:
        bar.close()
    seconds = time.perf_counter() - t0
    summary = {"teacher": str(args.checkpoint), "data": str(args.data), "molecules": len(mols),
               "start_steps": start, "students": [str(p) for p in paths], "seconds": seconds,
               "model": teacher.config.name, "space": "latent" if latent else "data",
               "parameterisation": parameterisation, "weighting": weighting,
               **{k: getattr(args, k) for k in ("rounds", "iterations", "minutes_per_round", "batch_size",
                                                "lr", "ema", "seed")}}
    atomic_write_text(out_dir / "distill.json", json.dumps(summary, indent=2) + "\n")
    print(f"molequi distill: {len(paths)} students in {seconds:.0f} s from {len(mols)} molecules: "
          + ", ".join(str(p) for p in paths))
    print(f"sample one with: molequi generate {paths[-1]} --n 100   (DDIM, eta 1 by default for students)")
    return 0
