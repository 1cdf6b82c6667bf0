"""``molequi data info SOURCE``: what is in a dataset file."""

from __future__ import annotations

import json

UNITS = {"energy": "eV", "force": "eV/Å", "cutoff": "Å", "e0s": "eV"}


def register(actions) -> None:
    p = actions.add_parser(
        "info", help="count structures, elements, atoms and energy/force statistics of a dataset",
        description="Summarise any file or dataset molequi reads: number of structures, elements, atoms per "
                    "structure (min/max), energy statistics (eV) and force RMS (eV/Å), per-element reference "
                    "energies by least squares and the mean number of neighbours within --cutoff.")
    p.add_argument("source", help="a file or dataset folder (extended XYZ, ASE .db/.json/.traj, or a "
                                  "benchmark layout such as an rMD17 npz, QM9 xyz records, an OC20 LMDB)")
    p.add_argument("--format", default=None,
                   help="dataset or format name (xyz, db, traj, qm9, md17, rmd17, oc20_s2ef, oc20_is2re); "
                        "guessed from the file when omitted")
    p.add_argument("--cutoff", type=float, default=5.0, help="radius in Å for the mean number of neighbours")
    p.add_argument("--energy-key", default=None, help="key of the energy in an extxyz/db file "
                                                      "(default: energy, REF_energy, free_energy)")
    p.add_argument("--forces-key", default=None, help="key of the forces (default: forces, REF_forces)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    p.set_defaults(func=run)


def run(args) -> int:
    from molequi.data.info import dataset_info

    options = {}
    if args.energy_key:
        options["energy_key"] = args.energy_key
    if args.forces_key:
        options["forces_key"] = args.forces_key
    info = dataset_info(args.source, args.format, cutoff=args.cutoff, **options)
    if args.json:
        print(json.dumps(info))
        return 0
    width = max(len(k) for k in info)
    for key, value in info.items():
        if isinstance(value, float):
            value = f"{value:.6g}"
        elif isinstance(value, dict):
            value = ", ".join(f"{k}: {v:.6g}" for k, v in value.items())
        elif isinstance(value, list):
            value = " ".join(map(str, value))
        unit = next((u for k, u in UNITS.items() if key.startswith(k) and "per_atom" not in key), "")
        if "per_atom" in key:
            unit = "eV/atom"
        print(f"{key:<{width}}  {value} {unit}".rstrip())
    return 0
