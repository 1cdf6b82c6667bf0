"""``molequi eval CKPT DATA [--json] [--out DIR]``: test a trained model on labelled structures."""

from __future__ import annotations

import argparse


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "eval", help="metrics, parity plot and per-structure errors of a checkpoint on labelled data",
        description="Evaluate a model checkpoint (model.pt or a training .ckpt) on labelled structures. "
                    "Prints energy and force MAE / RMSE (eV, eV/atom, eV/Å; component-wise force errors). "
                    "With --out, also writes parity.png, errors.csv (one row per structure) and "
                    "metrics.json. For an EDM or GeoLDM checkpoint (task diffusion or 'molequi import edm|geoldm'): "
                    "the model's variational bound on the NLL of the molecules in DATA (EDM's, GeoLDM's), "
                    "nats per molecule, and bits per dimension.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="example:\n  molequi eval runs/ethanol/model.pt "
               "molequi/resources/rmd17/rmd17_ethanol_test_01.npz --out eval_out")
    p.add_argument("checkpoint", help="model.pt or checkpoints/*.ckpt written by `molequi train`")
    p.add_argument("data", help="labelled structures: extended XYZ, ASE db / traj, or an rMD17 / MD17 .npz")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object (energy_mae, energy_rmse [eV], *_per_atom [eV/atom], "
                        "forces_mae, forces_rmse [eV/Å], ...) instead of a table")
    p.add_argument("--out", metavar="DIR", help="write parity.png, errors.csv and metrics.json into DIR")
    p.add_argument("--batch-size", type=int, default=32, help="structures per batch (default 32)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default cpu)")
    p.add_argument("--float64", action="store_true", help="evaluate in float64 (default: training precision)")
    p.add_argument("--no-ema", action="store_true",
                   help="use the raw last weights instead of the EMA weights")
    p.add_argument("--energy-key", help="key of the reference energy in the data file (default: energy, "
                                        "REF_energy, free_energy)")
    p.add_argument("--forces-key", help="key of the reference forces (default: forces, REF_forces)")
    p.set_defaults(func=run)


def run(args) -> int:
    import json
    from pathlib import Path

    import torch

    from molequi.io import atomic_write_text
    from molequi.checkpoint import load_model, read_checkpoint
    from molequi.train.evaluate import parity_plot, predict, read_eval_data

    payload = read_checkpoint(args.checkpoint)
    cutoff = payload["config"].get("model", {}).get("r_max")
    model = load_model(args.checkpoint, device=args.device, dtype=torch.float64 if args.float64 else None,
                       use_ema=not args.no_ema)
    metrics = None
    if payload["config"].get("task", {}).get("name") == "hamiltonian":  # Fock-matrix models: QHNet metrics
        from molequi.tasks.hamiltonian import evaluate_hamiltonian

        metrics = evaluate_hamiltonian(model, args.data, batch_size=args.batch_size)
    elif payload["config"].get("model", {}).get("name") in ("edm", "geoldm"):  # diffusion: the NLL bound, nats
        import ase.io

        frames = ase.io.read(args.data, index=":")
        metrics = model.dataset_nll([(a.numbers, a.positions) for a in frames], batch_size=args.batch_size,
                                    generator=torch.Generator(device=args.device).manual_seed(0))
    if metrics is not None:
        if args.out:
            atomic_write_text(Path(args.out) / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        print(json.dumps(metrics) if args.json else "\n".join(f"{k:>14s}  {v:.6g}" for k, v in metrics.items()))
        return 0
    records = read_eval_data(args.data, args.energy_key, args.forces_key)
    pred = predict(model, records, cutoff, batch_size=args.batch_size, device=args.device,
                   progress=not args.json)
    metrics = pred.metrics()
    if args.out:
        out = Path(args.out)
        atomic_write_text(out / "metrics.json", json.dumps(metrics, indent=2) + "\n")
        atomic_write_text(out / "errors.csv", pred.per_structure_csv())
        parity_plot(pred, out / "parity.png", title=f"{Path(args.checkpoint).name} on {Path(args.data).name}")
    if args.json:
        print(json.dumps(metrics))
    else:
        units = {"energy_mae": "eV", "energy_rmse": "eV", "energy_mae_per_atom": "eV/atom",
                 "energy_rmse_per_atom": "eV/atom"}
        for key, value in metrics.items():
            unit = units.get(key, "eV/Å" if key.startswith("forces") else "")
            print(f"{key:24s} {value:.6g} {unit}".rstrip())
        if args.out:
            print(f"wrote {Path(args.out) / 'parity.png'}, errors.csv and metrics.json")
    return 0
