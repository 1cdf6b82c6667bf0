"""``molequi export CKPT --out model.pt2``: a trained force field as one file that runs with torch alone."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser(
        "export",
        help="export a trained force field (energy, forces, stress) as a self-contained torch.export file",
        description="Trace a checkpoint's energy, forces and stress into one torch.export graph with dynamic "
        "numbers of atoms and edges and save it with its weights (*.pt2). Loading it needs torch only "
        "(torch.export.load, same torch minor version); the neighbour list is an input, built by the caller. "
        "Input contract and a reference loader: molequi/interop/export.py (help(molequi.interop.export)).",
    )
    p.add_argument("checkpoint", metavar="CKPT", help="molequi model.pt or Lightning .ckpt of a force field")
    p.add_argument("--out", required=True, help="file to write (e.g. model.pt2)")
    p.add_argument("--dtype", choices=["float32", "float64"], default="float64",
                   help="precision of the exported graph (default float64)")
    p.add_argument("--example", default=None,
                   help="structure file used as the tracing example (default: a random periodic box of the "
                   "model's elements; any example works for any size afterwards)")
    p.add_argument("--no-ema", action="store_true", help="export the raw last weights instead of the EMA")
    p.set_defaults(func=run)


def run(args) -> int:
    import torch

    from molequi.interop.export import export_model

    atoms = None
    if args.example:
        from ase.io import read

        atoms = read(args.example, index=-1)
    meta = export_model(args.checkpoint, args.out, atoms=atoms, dtype=getattr(torch, args.dtype),
                        use_ema=not args.no_ema)
    print(f"wrote {args.out}: {meta['model']}, r_max {meta['r_max']} Å, elements {meta['elements']}, "
          f"{meta['dtype']}, exported in {meta['export_wall_s']} s wall / {meta['export_cpu_s']} s CPU")
    if meta["dispersion"]:
        print(f"note: the run subtracted a D3 correction from its labels ({meta['dispersion']}); the exported "
              "file does not add it back")
    return 0
