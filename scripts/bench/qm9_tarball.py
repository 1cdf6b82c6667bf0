"""Read the full QM9 geometry tarball (streamed, never unpacked) and report counts and time.

    python scripts/bench/qm9_tarball.py PATH/TO/ppqm/xyz.tar.gz [--records]

Parses every ``dsgdb9nsd_*.xyz`` member with ``molequi.data.qm9.iter_qm9_xyz``; ``--records`` also builds the
graph records (``QM9Molecule.to_data``, with validation). Prints a table and writes
``bench_results/qm9_tarball.json``. The ppqm tarball holds 128,744 molecules and 2,330,532 atoms.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from _common import peak_rss_mb  # the script's folder is on sys.path

from molequi.data.qm9 import iter_qm9_xyz


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("tarball")
    ap.add_argument("--records", action="store_true", help="also build graph records (slower)")
    ap.add_argument("--out", default="bench_results/qm9_tarball.json")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    count = atoms = 0
    elements: set[int] = set()
    max_atoms = 0
    for mol in iter_qm9_xyz(args.tarball):
        count += 1
        n = len(mol.numbers)
        atoms += n
        max_atoms = max(max_atoms, n)
        elements.update(int(z) for z in set(mol.numbers.tolist()))
        if args.records:
            mol.to_data(source=args.tarball)
    dt = time.perf_counter() - t0
    result = {
        "tarball": str(args.tarball),
        "molecules": count,
        "atoms": atoms,
        "max_atoms": max_atoms,
        "elements": sorted(elements),
        "records_built": args.records,
        "seconds": round(dt, 2),
        "molecules_per_s": round(count / dt, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    print(f"{'molecules':>10} {'atoms':>10} {'seconds':>8} {'mol/s':>9} {'peak RSS MB':>11}")
    print(f"{count:>10} {atoms:>10} {dt:>8.1f} {count / dt:>9.0f} {result['peak_rss_mb']:>11}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
