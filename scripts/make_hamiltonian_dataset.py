#!/usr/bin/env python
"""A Hamiltonian dataset on the SchNOrb / QHNet (MD17) protocol: independent geometries, PySCF labels,
random split.

    python scripts/make_hamiltonian_dataset.py --smiles O --n 500 --out /data/water_pbe \\
        [--interval 200] [--n-valid 50] [--n-test 100] [--workers 2] [--sample-out DIR --sample-n 40]

1. Geometries: GFN2-xTB (tblite) Langevin MD at 500 K (MD17's temperature), 0.5 fs steps, one frame
   kept every ``--interval`` steps after ``--equilibrate`` steps. MD rather than normal-mode sampling
   because MD17 (the source of SchNOrb's and QHNet's water / ethanol geometries) is MD: it samples the
   anharmonic, rotamer-crossing distribution (ethanol's OH and CH3 torsions), which harmonic normal-mode
   displacements around one minimum do not. The default interval (200 steps = 100 fs, several times the
   O-H / C-H vibrational periods and the Langevin velocity memory 1/friction = 50 fs) makes successive
   kept frames nearly independent: the script measures it and stores the mean lag-1 autocorrelation of
   the interatomic distances between kept frames in ``index.json`` (``lag1_distance_correlation``).
   ``--sampler normal-modes`` (Boltzmann displacements along xTB normal modes) gives exactly independent
   but harmonic samples.
2. Labels: PySCF RKS, ``--xc pbe --basis def2-svp`` by default (the level of SchNOrb's and QHNet's MD17
   Hamiltonians), converged Fock ``mf.get_fock()``, overlap, energy and forces, in worker processes
   (``molequi.qc.driver.label_dataset``; a progress bar per geometry).
3. Split: a random train / validation / test partition (``numpy.random.default_rng(--split-seed)``)
   saved as ``split.json`` in the store; ``HamiltonianStore(path).split()`` and the training dataset
   option ``data.options.split`` read it.
4. ``--sample-out``: a small copy (``--sample-n`` records drawn from the three parts in proportion,
   with their own ``split.json``) to ship with the repository.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def write_sample(store, split: dict, out: Path, n: int, seed: int) -> Path:
    """Copy ``n`` records of ``store`` to a new store at ``out`` with the corresponding ``split.json``:
    validation and test records in proportion to ``split`` (at least one each), the rest training."""
    from molequi.data.hamiltonian import write_split, write_store

    total = sum(len(v) for v in split.values())
    take = {k: max(1, round(n * len(split[k]) / total)) for k in ("valid", "test")}
    take["train"] = n - take["valid"] - take["test"]
    if take["train"] < 1:
        raise SystemExit(f"--sample-n {n} leaves no training record")
    picked, new_split = [], {}
    for k in ("train", "valid", "test"):
        new_split[k] = list(range(len(picked), len(picked) + take[k]))
        picked += split[k][: take[k]]
    meta = {
        k: v
        for k, v in store.meta.items()
        if k not in ("format", "basis", "xc", "shards", "n_records", "units", "ao_order")
    }
    meta.update(sample_of=str(store.root), sample_source_indices=picked)
    write_store(
        out,
        (store[i] for i in picked),
        basis=store.basis,
        xc=store.xc,
        shard_size=len(picked),
        overwrite=True,
        extra_meta=meta,
    )
    write_split(out, new_split, seed=seed, sample_of_split=True)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smiles", default="O", help="molecule as SMILES (O: water, CCO: ethanol)")
    p.add_argument("--n", type=int, required=True, help="geometries to sample and label")
    p.add_argument("--out", type=Path, required=True, help="output store directory")
    p.add_argument(
        "--sampler",
        choices=["xtb-md", "normal-modes"],
        default="xtb-md",
        help="xtb-md: GFN2-xTB Langevin MD; normal-modes: harmonic Boltzmann displacements",
    )
    p.add_argument("--temperature", type=float, default=500.0, help="sampling temperature, K (MD17: 500)")
    p.add_argument("--interval", type=int, default=200, help="MD steps (0.5 fs) between kept frames")
    p.add_argument("--equilibrate", type=int, default=2000, help="MD steps discarded before the first frame")
    p.add_argument("--friction", type=float, default=0.02, help="Langevin friction, 1/fs")
    p.add_argument("--seed", type=int, default=0, help="seed of the conformer and the sampler")
    p.add_argument("--xc", default="pbe", help="PySCF functional (SchNOrb / QHNet: PBE)")
    p.add_argument("--basis", default="def2-svp", help="PySCF basis (SchNOrb / QHNet: def2-SVP)")
    p.add_argument("--workers", type=int, default=1, help="PySCF worker processes, one thread each")
    p.add_argument("--shard-size", type=int, default=100, help="records per shard")
    p.add_argument("--n-valid", type=int, default=None, help="validation records (default 10%%)")
    p.add_argument("--n-test", type=int, default=None, help="test records (default 20%%)")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the random split")
    p.add_argument("--overwrite", action="store_true", help="replace an existing store at --out")
    p.add_argument("--sample-out", type=Path, default=None, help="also write a small copy here")
    p.add_argument("--sample-n", type=int, default=40, help="records in the --sample-out copy")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    args = p.parse_args(argv)
    if args.n < 3 or args.interval < 1 or args.equilibrate < 0:
        p.error("--n must be >= 3, --interval >= 1, --equilibrate >= 0")

    from molequi.data.hamiltonian import HamiltonianStore, random_split, write_split
    from molequi.qc.conformers import molecule_from_smiles
    from molequi.qc.driver import label_dataset
    from molequi.qc.xtb import sample_geometries

    atoms = molecule_from_smiles(args.smiles, seed=args.seed)
    atoms.info.pop("charge", None)
    frames, meta = sample_geometries(atoms, args.n, args.sampler, temperature=args.temperature,
                                     interval=args.interval, equilibration=args.equilibrate,
                                     friction=args.friction, seed=args.seed, progress=not args.no_progress)
    print(
        f"sampled {len(frames)} geometries in {meta['sampling_seconds']:.0f} s wall "
        f"({meta['sampling_cpu_seconds']:.0f} s CPU); mean lag-1 correlation of interatomic distances "
        f"between kept frames {meta['lag1_distance_correlation']:.3f}",
        flush=True,
    )
    meta.update(source=args.smiles, command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]))
    t1 = time.perf_counter()
    label_dataset(
        frames,
        args.out,
        xc=args.xc,
        basis=args.basis,
        workers=args.workers,
        shard_size=args.shard_size,
        overwrite=args.overwrite,
        progress=not args.no_progress,
        extra_meta=meta,
    )
    t_label = time.perf_counter() - t1
    n_valid = args.n_valid if args.n_valid is not None else max(1, args.n // 10)
    n_test = args.n_test if args.n_test is not None else max(1, args.n // 5)
    split = random_split(args.n, n_valid, n_test, seed=args.split_seed)
    write_split(args.out, split, seed=args.split_seed)
    store = HamiltonianStore(args.out)
    print(
        f"labelled {len(store)} geometries ({args.xc}/{args.basis}) in {t_label:.0f} s wall; split "
        f"{len(split['train'])} train / {len(split['valid'])} valid / {len(split['test'])} test -> {args.out}"
    )
    if args.sample_out is not None:
        write_sample(store, split, args.sample_out, args.sample_n, args.split_seed)
        print(f"sample of {len(HamiltonianStore(args.sample_out))} records -> {args.sample_out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
