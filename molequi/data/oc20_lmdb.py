"""Convert OC20 S2EF raw files (extxyz + txt, plain or ``.xz``) to one fairchem-layout LMDB.

    convert(["s2ef_train_200K/"], "train/data.0000.lmdb", workers=4)        # the library call
    molequi data to-lmdb s2ef_train_200K/ -o train/data.0000.lmdb --workers 4   # the same from the shell

Each input is an ``N.extxyz`` / ``N.extxyz.xz`` file (its ``N.txt`` / ``N.txt.xz`` is found beside it) or a
folder of them. Worker processes parse files in parallel and pickle fairchem-layout ``Data`` objects; the
main process writes them in input order under keys ``b"0"``, ``b"1"``, ... plus ``b"length"``, into a
temporary file renamed into place when complete (an interrupted run leaves no partial LMDB).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator, Sequence
from pathlib import Path

from molequi.errors import DatasetError


def _inputs(paths: Sequence[str | os.PathLike]) -> list[tuple[Path, Path | None]]:
    from molequi.data.oc20 import find_txt, s2ef_pairs_in

    pairs: list[tuple[Path, Path | None]] = []
    for p in map(Path, paths):
        if p.is_dir():
            pairs += s2ef_pairs_in(p)
        elif p.exists():
            pairs.append((p, find_txt(p)))
        else:
            raise DatasetError(f"input {p} does not exist")
    return pairs


def _convert_file(job: tuple[str, str | None, bool]) -> list[bytes]:
    """Worker: one extxyz + txt pair -> pickled fairchem ``Data`` per frame."""
    from molequi.data.oc20 import iter_s2ef_pairs, s2ef_to_fairchem

    extxyz, txt, subtract = job
    return [
        pickle.dumps(s2ef_to_fairchem(atoms, ref, subtract_reference=subtract), protocol=4)
        for _, atoms, ref in iter_s2ef_pairs(extxyz, txt)
    ]


def convert(
    inputs: Sequence[str | os.PathLike],
    output: str | os.PathLike,
    *,
    workers: int = 0,
    subtract_reference: bool = False,
    progress: bool = True,
    require_txt: bool = True,
) -> int:
    """Convert S2EF raw files to one LMDB at ``output``; returns the number of frames written."""
    from molequi.data.lmdb import write_lmdb

    pairs = _inputs(inputs)
    missing = [str(x) for x, t in pairs if t is None]
    if missing and (require_txt or subtract_reference):
        raise DatasetError(
            f"no txt beside {missing[0]}" + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
            hint="S2EF frames need N.txt (random<sid>,frame<fid>,<ref energy>) beside N.extxyz",
        )
    jobs = [(str(x), None if t is None else str(t), subtract_reference) for x, t in pairs]
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(jobs), unit="file", desc="to-lmdb")

    def frames() -> Iterator[bytes]:
        if workers and workers > 0 and len(jobs) > 1:
            import multiprocessing as mp

            with mp.get_context("spawn").Pool(min(workers, len(jobs))) as pool:
                for chunk in pool.imap(_convert_file, jobs):  # ordered: keys follow the input order
                    yield from chunk
                    if bar is not None:
                        bar.update(1)
        else:
            for job in jobs:
                yield from _convert_file(job)
                if bar is not None:
                    bar.update(1)

    try:
        n = write_lmdb(frames(), output)
    finally:
        if bar is not None:
            bar.close()
    return n


__all__ = ["convert"]
