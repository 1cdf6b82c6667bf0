"""``molequi scf-guess CKPT molecule.xyz``: start PySCF from a predicted Hamiltonian, compare with minao."""

from __future__ import annotations

import argparse


def cycles_change(predicted, reference) -> str:
    """Total SCF cycles of the predicted guess against the reference guess's, in words."""
    change = 100 * (1 - sum(predicted) / sum(reference))
    if round(change) == 0:
        return "the same in total"
    return f"{abs(change):.0f}% {'fewer' if change > 0 else 'more'} in total"


def register(sub) -> None:
    p = sub.add_parser(
        "scf-guess",
        help="start a PySCF SCF from a QHNet-predicted Fock matrix and count the cycles saved",
        description="Predict the Fock matrix of a molecule with a trained Hamiltonian model, build the "
        "initial "
        "density from it (diagonalise H C = S C e, occupy the n_elec/2 lowest orbitals) and run "
        "PySCF RKS from that density (mf.kernel(dm0=...)). Unless --no-compare is given, the same "
        "SCF is also run from PySCF's --reference-guess, and SCF cycles, wall times and energies "
        "of both are printed.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("checkpoint", help="model.pt or .ckpt written by `molequi train` with task 'hamiltonian'")
    p.add_argument(
        "structure",
        help="molecule file readable by ASE (xyz, ...; Å); every frame is run (use --index to pick some)",
    )
    p.add_argument("--index", default=":", help="ASE index of the frames to run, e.g. 0, -1 or 0:10")
    p.add_argument(
        "--xc", default="pbe", help="exchange-correlation functional (must match the training labels)"
    )
    p.add_argument("--basis", default="def2-svp", help="basis set (must match the model's basis)")
    p.add_argument("--charge", type=int, default=0, help="total charge")
    p.add_argument("--conv-tol", type=float, default=1e-9, help="PySCF energy convergence threshold, Hartree")
    p.add_argument(
        "--reference-guess",
        default="minao",
        choices=["minao", "1e", "atom", "huckel"],
        help="PySCF initial guess to compare against",
    )
    p.add_argument("--no-compare", action="store_true", help="run only the predicted-guess SCF")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    p.set_defaults(func=run)


def run(args) -> int:
    import json

    import ase.io
    import numpy as np

    from molequi.checkpoint import load_model
    from molequi.errors import ConfigError
    from molequi.io import atomic_write_text
    from molequi.qc.scf import predict_fock, run_scf

    model = load_model(args.checkpoint)
    # any Hamiltonian model (its orbital basis is an attribute), whatever its registered name
    if getattr(getattr(model, "basis", None), "name", None) is None:
        raise ConfigError(f"{args.checkpoint} is not a Hamiltonian model (it has no orbital basis; train one "
                          "with task 'hamiltonian')")
    if model.basis.name != args.basis.lower():
        raise ConfigError(f"the model predicts {model.basis.name} matrices, --basis is {args.basis}")
    frames = ase.io.read(args.structure, index=args.index)
    frames = frames if isinstance(frames, list) else [frames]
    rows = []
    for k, atoms in enumerate(frames):
        fock = predict_fock(model, atoms.numbers, atoms.positions)
        pred = run_scf(
            atoms.numbers,
            atoms.positions,
            xc=args.xc,
            basis=args.basis,
            fock=fock,
            conv_tol=args.conv_tol,
            charge=args.charge,
        )
        row = {"frame": k, "predicted": pred}
        if not args.no_compare:
            row["reference"] = run_scf(
                atoms.numbers,
                atoms.positions,
                xc=args.xc,
                basis=args.basis,
                init_guess=args.reference_guess,
                conv_tol=args.conv_tol,
                charge=args.charge,
            )
        rows.append(row)
        line = (
            f"frame {k}: predicted guess {pred['cycles']} cycles {pred['seconds']:.2f} s "
            f"E={pred['e_tot']:.8f} Ha"
        )
        if "reference" in row:
            ref = row["reference"]
            line += (
                f" | {args.reference_guess} {ref['cycles']} cycles {ref['seconds']:.2f} s "
                f"E={ref['e_tot']:.8f} Ha | dE={pred['e_tot'] - ref['e_tot']:.1e} Ha"
            )
        print(line)
    if len(rows) > 1 and not args.no_compare:
        p = [r["predicted"]["cycles"] for r in rows]
        r = [r["reference"]["cycles"] for r in rows]
        print(f"median cycles: predicted {np.median(p):g}, {args.reference_guess} {np.median(r):g} "
              f"({cycles_change(p, r)})")
    if args.json:
        from pathlib import Path

        atomic_write_text(Path(args.json), json.dumps(rows, indent=1))
    return 0
