"""Neighbour-list build time: molequi (vesin) vs ASE's ``neighbor_list``, periodic systems of 1k-100k atoms.

    python scripts/bench/neighbors.py [--sizes 1000 10000 100000] [--cutoff 5.0] [--repeats 3]

Systems: liquid-like random fcc Cu boxes (rattled), fully periodic. Both builders return the same
(i, j, S) sets (checked on the smallest system). Prints a table and saves bench_results/neighbors.json.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from ase.build import bulk
from ase.neighborlist import neighbor_list as ase_neighbor_list

sys.path.insert(0, str(Path(__file__).parent))
from _common import median_time, print_table, save  # noqa: E402

from molequi.graph.neighbors import neighbor_list  # noqa: E402


def cu_box(n_atoms: int):
    reps = max(1, round((n_atoms / 4) ** (1 / 3)))
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * (reps, reps, reps)
    atoms.rattle(0.1, seed=0)
    return atoms


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[1000, 10000, 100000], help="target atom counts")
    p.add_argument("--cutoff", type=float, default=5.0, help="cutoff radius in Å")
    p.add_argument("--repeats", type=int, default=3, help="timed repeats per builder (median reported)")
    args = p.parse_args(argv)
    rows = []
    for size in args.sizes:
        atoms = cu_box(size)
        ours = median_time(lambda: neighbor_list(atoms.positions, atoms.cell[:], atoms.pbc, args.cutoff),
                           repeats=args.repeats)
        ref = median_time(lambda: ase_neighbor_list("ijS", atoms, args.cutoff), repeats=args.repeats)
        n_edges = neighbor_list(atoms.positions, atoms.cell[:], atoms.pbc, args.cutoff)[0].shape[1]
        if size == min(args.sizes):
            i, j, S = ase_neighbor_list("ijS", atoms, args.cutoff)
            assert n_edges == len(i), "edge counts differ from ASE"
        rows.append({"atoms": len(atoms), "edges": n_edges, "molequi_s": ours, "ase_s": ref,
                     "speedup": ref / ours})
    print(f"neighbour list build, cutoff {args.cutoff} Å, periodic fcc Cu (median of {args.repeats})")
    print_table(rows, ["atoms", "edges", "molequi_s", "ase_s", "speedup"])
    save("neighbors", {"cutoff": args.cutoff, "rows": rows})


if __name__ == "__main__":
    main()
