"""Benchmark: random access into a large synthetic S2EF LMDB with 0 and 2 loader workers; memory vs index.

    python scripts/bench/datasets.py --frames 1000000 [--atoms 12] [--window 4000] [--keep DIR]

Builds a synthetic fairchem S2EF LMDB (pickled PyG ``Data`` with tensor ``pos``, ``cell``, ``atomic_numbers``,
``energy``, ``forces``, ``tags``, ``fixed``, ``sid``, ``fid``, ``natoms``; ``--atoms`` atoms per frame; the
first ``--distinct`` frames are pickled, then cycled so that a million keys are written in minutes) in a
temporary folder (deleted afterwards unless ``--keep``), then for 0 and 2 DataLoader workers reads a window
of ``--window`` frames at several index positions (start, 25 %, 50 %, 75 %, end, plus a random sample over
the whole file) through ``molequi.data.lmdb.LmdbDataset`` (restricted unpickling, conversion to records,
batching by PyG's collate), and reports frames/s and memory of the main process plus its workers:

- ``anon_mb``: private (anonymous) resident memory, summed over processes (what would grow if the reader
  kept per-frame state; should be flat as the index grows);
- ``rss_mb``: total resident set, which also counts LMDB pages mapped from the page cache (file-backed,
  shared, reclaimable by the kernel);
- ``peak_rss_mb``: the main process's peak RSS (``ru_maxrss``).

Writes a table to stdout and JSON to ``bench_results/datasets.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import peak_rss_mb  # the script's folder is on sys.path


def _proc_mem(pid: int) -> tuple[float, float]:
    anon = rss = 0.0
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("RssAnon:"):
                    anon = float(line.split()[1]) / 1024
                elif line.startswith("VmRSS:"):
                    rss = float(line.split()[1]) / 1024
    except OSError:
        pass
    return anon, rss


def memory_mb() -> tuple[float, float]:
    """(anonymous, total) resident MB of this process and its children (DataLoader workers)."""
    import psutil

    me = psutil.Process()
    pids = [me.pid] + [c.pid for c in me.children(recursive=True)]
    anon = rss = 0.0
    for pid in pids:
        a, r = _proc_mem(pid)
        anon += a
        rss += r
    return anon, rss


def build(path: Path, frames: int, atoms: int, distinct: int, seed: int = 0) -> float:
    from torch_geometric.data import Data

    from molequi.data.lmdb import write_lmdb

    rng = np.random.default_rng(seed)
    base = rng.uniform(0, 8, size=(atoms, 3)).astype(np.float32)
    numbers = rng.choice([1, 6, 8, 29, 78], size=atoms).astype(np.float32)
    cell = torch.eye(3).reshape(1, 3, 3) * 10
    tags = torch.as_tensor(np.r_[np.zeros(atoms - 4), np.ones(2), np.full(2, 2)], dtype=torch.long)
    fixed = (tags == 0).float()
    t0 = time.perf_counter()

    def items():
        pool: list[bytes] = []
        for i in range(frames):
            if (
                len(pool) == distinct
            ):  # cycle through the distinct pickles: same bytes and layout, cheap to write
                yield pool[i % distinct]
                if i % 100000 == 0:
                    print(f"  wrote {i} frames ({time.perf_counter() - t0:.0f} s)", flush=True)
                continue
            pos = torch.from_numpy(base + rng.normal(0, 0.05, size=base.shape).astype(np.float32))
            d = Data(
                pos=pos,
                cell=cell,
                atomic_numbers=torch.from_numpy(numbers),
                natoms=atoms,
                tags=tags,
                fixed=fixed,
                energy=float(-3.0 * atoms + rng.normal()),
                forces=torch.from_numpy(rng.normal(0, 0.5, size=(atoms, 3)).astype(np.float32)),
                sid=i // 50,
                fid=i % 50,
            )
            pool.append(pickle.dumps(d, protocol=4))
            yield pool[-1]

    write_lmdb(items(), path)
    return time.perf_counter() - t0


def read_window(ds, index: np.ndarray, workers: int, batch_size: int) -> dict:
    from torch.utils.data import Subset
    from torch_geometric.loader import DataLoader

    loader = DataLoader(Subset(ds, index.tolist()), batch_size=batch_size, shuffle=False, num_workers=workers)
    t0 = time.perf_counter()
    n = 0
    peak_anon = peak_rss = 0.0
    for k, batch in enumerate(loader):
        n += batch.num_graphs
        if k % 20 == 0:
            a, r = memory_mb()
            peak_anon, peak_rss = max(peak_anon, a), max(peak_rss, r)
    dt = time.perf_counter() - t0
    a, r = memory_mb()
    return {
        "frames": n,
        "seconds": round(dt, 3),
        "frames_per_s": round(n / dt, 1),
        "anon_mb": round(max(peak_anon, a), 1),
        "rss_mb": round(max(peak_rss, r), 1),
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=1_000_000)
    ap.add_argument("--atoms", type=int, default=12)
    ap.add_argument(
        "--distinct",
        type=int,
        default=5000,
        help="distinct frames pickled; the file cycles through them (keys and sizes as a real file)",
    )
    ap.add_argument("--window", type=int, default=4000, help="frames read at each index position")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--keep", default=None, help="folder to build in and keep (default: a deleted temp dir)")
    ap.add_argument("--out", default="bench_results/datasets.json")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    from molequi.data.lmdb import LmdbDataset

    folder = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="molequi_bench_lmdb_"))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "data.0000.lmdb"
    result = {
        "frames": args.frames,
        "distinct_frames": min(args.distinct, args.frames),
        "atoms_per_frame": args.atoms,
        "window": args.window,
        "batch_size": args.batch_size,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpus": os.cpu_count(),
        "load_avg_start": os.getloadavg()[0],
    }
    try:
        if not path.exists():
            print(f"building {args.frames} frames in {path} ...", flush=True)
            result["build_seconds"] = round(build(path, args.frames, args.atoms, args.distinct), 1)
        result["file_mb"] = round(path.stat().st_size / 2**20, 1)
        a0, r0 = memory_mb()
        t0 = time.perf_counter()
        ds = LmdbDataset(path)
        result["open_seconds"] = round(time.perf_counter() - t0, 4)
        a1, r1 = memory_mb()
        result["mem_before_open"] = {"anon_mb": round(a0, 1), "rss_mb": round(r0, 1)}
        result["mem_after_open"] = {"anon_mb": round(a1, 1), "rss_mb": round(r1, 1)}
        n, w = len(ds), min(args.window, len(ds))
        positions = {"start": 0, "25%": n // 4, "50%": n // 2, "75%": 3 * n // 4, "end": n - w}
        rows = []
        for workers in args.workers:
            for label, start in positions.items():
                r = read_window(ds, np.arange(start, start + w), workers, args.batch_size)
                rows.append({"workers": workers, "position": label, "first_index": int(start), **r})
                print(rows[-1], flush=True)
            rand = np.sort(np.random.default_rng(1).choice(n, size=w, replace=False))
            r = read_window(ds, rand, workers, args.batch_size)
            rows.append({"workers": workers, "position": "random over all", "first_index": int(rand[0]), **r})
            print(rows[-1], flush=True)
        result["rows"] = rows
        result["peak_rss_main_mb"] = round(peak_rss_mb(), 1)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print()
    print(
        f"S2EF LMDB, {args.frames} frames x {args.atoms} atoms, {result.get('file_mb')} MB; "
        f"window {args.window} frames, batch {args.batch_size}"
    )
    print(f"{'workers':>7} {'position':>16} {'first idx':>10} {'frames/s':>9} {'anon MB':>8} {'RSS MB':>8}")
    for r in result["rows"]:
        print(
            f"{r['workers']:>7} {r['position']:>16} {r['first_index']:>10} {r['frames_per_s']:>9.0f} "
            f"{r['anon_mb']:>8.1f} {r['rss_mb']:>8.1f}"
        )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
