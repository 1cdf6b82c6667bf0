"""``molequi predict CKPT many.xyz``: energies, forces (and stress) for many structures, in batches."""

from __future__ import annotations


def register(sub) -> None:
    from molequi.cli.md import add_device_arguments

    p = sub.add_parser(
        "predict",
        help="predict energies / forces / stress for many structures (batched)",
        description="Evaluate a trained model on every frame of a structure file, in batches "
        "(PyG DataLoader), "
        "and write the frames with the predictions (energy eV, forces eV/Å, per-atom energies, "
        "stress eV/Å^3 for periodic frames) as extended XYZ, under --prefix keys beside the frames' own labels.",
    )
    p.add_argument("checkpoint", help="model checkpoint")
    p.add_argument("structures", help="structure file with one or more frames (any ASE-readable format)")
    p.add_argument("--out", default="predicted.extxyz", help="output extended XYZ (default predicted.extxyz)")
    p.add_argument("--batch-size", type=int, default=32, help="structures per batch (default 32)")
    p.add_argument(
        "--stress",
        choices=["auto", "yes", "no"],
        default="auto",
        help="auto: stress for periodic frames; yes: require it (error on non-periodic frames); no",
    )
    p.add_argument(
        "--prefix",
        default="MOLEQUI_",
        help="write predictions as <prefix>energy, <prefix>forces, <prefix>energies, <prefix>stress so that "
        "the file's own labels are kept (default MOLEQUI_, as mace-torch's eval writes MACE_); '' writes the "
        "predictions as the frames' energy / forces / stress, replacing any labels",
    )
    add_device_arguments(p)
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=run)


def run(args) -> int:
    import io
    import time

    from ase.io import read, write

    from molequi.calculators.predict import predict
    from molequi.cli.md import dtype_of
    from molequi.errors import FormatError
    from molequi.io import atomic_write_text

    try:
        frames = read(args.structures, index=":")
    except FileNotFoundError:
        raise FormatError("file not found", source=args.structures) from None
    except Exception as exc:
        raise FormatError(f"cannot read structures: {exc}", source=args.structures) from None
    stress = {"auto": None, "yes": True, "no": False}[args.stress]
    t0 = time.perf_counter()
    out = predict(
        args.checkpoint,
        frames,
        batch_size=args.batch_size,
        compute_stress=stress,
        device=args.device,
        dtype=dtype_of(args),
        as_atoms=True,
        progress=not args.no_progress,
        prefix=args.prefix or None,
    )
    wall = time.perf_counter() - t0
    buf = io.StringIO()
    write(buf, out, format="extxyz")
    atomic_write_text(args.out, buf.getvalue())
    print(f"molequi predict: {len(out)} structures in {wall:.2f} s; wrote {args.out}")
    return 0
