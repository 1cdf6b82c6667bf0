"""``molequi data to-lmdb``: convert OC20 S2EF raw files (extxyz + txt, plain or ``.xz``) to an LMDB.

    molequi data to-lmdb s2ef_train_200K/ -o train/data.0000.lmdb --workers 4 [--subtract-reference]

The conversion itself is ``molequi.data.oc20_lmdb.convert``; this module only parses the command line.
"""

from __future__ import annotations

import os


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "to-lmdb",
        help="convert OC20 S2EF extxyz + txt files to an LMDB",
        description=__doc__.split("\n\n")[0],
    )
    p.add_argument("inputs", nargs="+", help="N.extxyz[.xz] files (txt beside them) or folders of them")
    p.add_argument("-o", "--output", required=True, help="output LMDB file, e.g. train/data.0000.lmdb")
    p.add_argument(
        "--workers",
        type=int,
        default=min(4, os.cpu_count() or 1),
        help="parser processes (0 = in this process)",
    )
    p.add_argument(
        "--subtract-reference",
        action="store_true",
        help="store energy - reference energy (the OC20 adsorption-energy target)",
    )
    p.add_argument(
        "--allow-missing-txt", action="store_true", help="convert extxyz files without a txt (no sid)"
    )
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args) -> int:
    from molequi.data.oc20_lmdb import convert

    n = convert(
        args.inputs,
        args.output,
        workers=args.workers,
        subtract_reference=args.subtract_reference,
        progress=not args.no_progress,
        require_txt=not args.allow_missing_txt,
    )
    print(f"wrote {n} frames to {args.output}")
    return 0


__all__ = ["register", "run"]
