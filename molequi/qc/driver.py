"""The labelling driver: PySCF labels of many geometries, in worker processes, into a sharded store.

    label_dataset(frames, "out/", xc="pbe", basis="def2-svp", workers=4)

Each worker runs ``molequi.qc.pyscf_labels.pyscf_label`` with one thread; records are appended to a
``molequi.data.hamiltonian.HamiltonianStoreWriter`` in input order, whatever order the workers finish in.
``index.json`` records ``seconds_per_geometry_median`` (the median wall time of one label).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from molequi.data.hamiltonian.record import HamiltonianRecord
from molequi.data.hamiltonian.store import HamiltonianStoreWriter
from molequi.qc.pyscf_labels import pyscf_label


def _label_one(args):
    i, numbers, pos, xc, basis, charge = args
    t = time.perf_counter()
    rec = pyscf_label(numbers, pos, xc=xc, basis=basis, charge=charge)
    return i, rec, time.perf_counter() - t


def _init_worker():
    os.environ["OMP_NUM_THREADS"] = "1"
    try:
        from pyscf import lib

        lib.num_threads(1)
    except Exception:  # pragma: no cover
        pass


def label_dataset(
    frames,
    out,
    *,
    xc: str = "pbe",
    basis: str = "def2-svp",
    charge: int = 0,
    workers: int = 1,
    shard_size: int = 100,
    overwrite: bool = False,
    progress: bool = True,
    extra_meta: dict | None = None,
) -> Path:
    """Label ``frames`` (list of ``ase.Atoms``) with PySCF and write a store at ``out``.

    ``workers`` processes run PySCF (one thread each); results are written in input order.
    """
    import multiprocessing as mp

    jobs = [(i, a.numbers.copy(), a.positions.copy(), xc, basis, charge) for i, a in enumerate(frames)]
    bar = None
    if progress:
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(jobs), desc=f"PySCF {xc}/{basis}", unit="geom")
        except ImportError:  # pragma: no cover
            bar = None
    done: dict[int, HamiltonianRecord] = {}
    next_i = 0
    times = []
    with HamiltonianStoreWriter(
        out, basis=basis, xc=xc, shard_size=shard_size, overwrite=overwrite, extra_meta=extra_meta
    ) as writer:

        def consume(res):
            nonlocal next_i
            i, rec, dt = res
            done[i] = rec
            times.append(dt)
            while next_i in done:
                writer.append(done.pop(next_i))
                next_i += 1
            if bar is not None:
                bar.update(1)

        if workers <= 1:
            _init_worker()
            for job in jobs:
                consume(_label_one(job))
        else:
            with mp.get_context("spawn").Pool(workers, initializer=_init_worker) as pool:
                for res in pool.imap_unordered(_label_one, jobs):
                    consume(res)
        writer.meta["seconds_per_geometry_median"] = float(np.median(times)) if times else None
    if bar is not None:
        bar.close()
    return Path(out)


__all__ = ["label_dataset"]
