"""QH9 reader check: molequi's ``read_qh9_lmdb`` on an LMDB written by QH9's own pipeline.

    python scripts/bench/hamiltonian_readers.py --qh9-code PATH [--out bench_results/hamiltonian_readers.json]

PATH is the folder ``OpenDFT/QHBench/QH9`` of https://github.com/divelab/AIRS (checked at commit
4a16c68a7da707c521019067dec51c227c10de45, the commit of ../shared/peers/qhnet). QH9 cannot be downloaded
here (Google Drive), so the file is made the way QH9 made its own:

1. ``dataset_generation_examples/QH9_stable.py``'s ``GenerateQH9Stable.get_mol`` runs PySCF B3LYP/def2-SVP
   on each molecule and inserts (id, N, Z, pos, Ham) blobs into QH9's SQLite database;
2. ``datasets.py``'s ``QH9Stable.process`` turns that database into ``QH9Stable.lmdb`` (pickled dicts under
   4-byte big-endian keys) and the random split;
3. molequi's ``read_qh9_lmdb`` reads the LMDB; its Fock matrices must equal the converged B3LYP Fock
   matrices PySCF gives here (``mf.get_fock()``, independent of both readers), its positions and atomic
   numbers the inputs; and QH9's own ``QH9Stable.get`` on the same LMDB must give the same diagonal block of
   the first atom as QH9's ``matrix_transform`` applied to molequi's matrix.

Shims (stated in the JSON): ``gdown`` (download only, never called) is replaced by an empty module when
absent; ``apsw`` (SQLite bindings with a compiled extension) by a thin wrapper over Python's ``sqlite3``
when absent. QM9 geometries are replaced by three small molecules built here; ``Z`` is stored as int32, as
in QM9's ``qm9_eV.npz`` that QH9 reads (QH9's ``get`` decodes it with ``np.int32``).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sqlite3
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common

MOLECULES = {  # Å
    "water": ([8, 1, 1], [[0.0, 0.0, 0.117], [0.0, 0.757, -0.469], [0.0, -0.757, -0.469]]),
    "ammonia": ([7, 1, 1, 1],
                [[0.0, 0.0, 0.11], [0.0, 0.94, -0.26], [0.81, -0.47, -0.26], [-0.81, -0.47, -0.26]]),
    "hydrogen fluoride": ([9, 1], [[0.0, 0.0, 0.0], [0.0, 0.0, 0.92]]),
}


def _install_shims() -> list[str]:
    shims = []
    try:
        import gdown  # noqa: F401
    except ImportError:
        sys.modules["gdown"] = types.ModuleType("gdown")
        shims.append("gdown: empty module (download only, not called)")
    try:
        import apsw  # noqa: F401
    except ImportError:
        mod = types.ModuleType("apsw")
        mod.SQLITE_OPEN_READWRITE, mod.SQLITE_OPEN_CREATE = 2, 4

        def connection(path, flags=6):
            if not flags & 4 and not os.path.exists(path):
                raise FileNotFoundError(path)
            return sqlite3.connect(path, isolation_level=None)  # explicit BEGIN / COMMIT as with apsw

        mod.Connection = connection
        sys.modules["apsw"] = mod
        shims.append("apsw: sqlite3 wrapper (Connection(path, flags), autocommit, explicit BEGIN/COMMIT)")
    return shims


def _load(path: Path, name: str):
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--qh9-code", type=Path, required=True, help="folder OpenDFT/QHBench/QH9 of divelab/AIRS")
    p.add_argument("--out", type=Path, default=ROOT / "bench_results" / "hamiltonian_readers.json")
    args = p.parse_args(argv)
    from pyscf import dft, gto

    from molequi.data.hamiltonian import read_qh9_lmdb
    from molequi.io import atomic_write_text

    shims = _install_shims()
    gen = _load(args.qh9_code / "dataset_generation_examples" / "QH9_stable.py", "qh9_generate")
    ds = _load(args.qh9_code / "datasets.py", "qh9_datasets")
    work = Path(tempfile.mkdtemp(prefix="qh9_check_"))
    names = list(MOLECULES)

    # 1. QH9's generator (without InMemoryDataset.__init__, which would try to download QM9)
    g = object.__new__(gen.GenerateQH9Stable)
    (work / "QH9Stable" / "raw").mkdir(parents=True)
    g.db_path = str(work / "QH9Stable" / "raw" / "QH9Stable.db")
    g.Z_qm9 = [np.asarray(MOLECULES[n][0], dtype=np.int32) for n in names]
    g.R_qm9 = [np.asarray(MOLECULES[n][1], dtype=np.float64) for n in names]
    g._open()
    g.cursor = gen.apsw.Connection(g.db_path, flags=gen.apsw.SQLITE_OPEN_READWRITE).cursor()
    g.cursor.execute("BEGIN")
    t0 = time.perf_counter()
    for i in range(len(names)):
        g.get_mol(i)
    g.cursor.execute("COMMIT")
    t_gen = time.perf_counter() - t0

    # 2. QH9's SQLite -> LMDB conversion and split, through its dataset class (process() runs because the
    # processed files are absent). Its torch.load of the split (numpy arrays, written just now by the same
    # code) needs the pre-2.6 default:
    os.environ["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    q = ds.QH9Stable(root=str(work), split="random")
    lmdb_path = Path(q.processed_dir) / "QH9Stable.lmdb"

    # 3. molequi's reader vs PySCF run here, and vs QH9's own reader
    records = list(read_qh9_lmdb(lmdb_path))
    rows = []
    for i, (name, rec) in enumerate(zip(names, records)):
        z, pos = MOLECULES[name]
        mol = gto.M(atom=[(a, tuple(r)) for a, r in zip(z, pos)], basis="def2svp", unit="ang", verbose=0)
        mf = dft.RKS(mol)
        mf.xc = "b3lyp"
        mf.kernel()
        fock = mf.get_fock()
        ref = ds.QH9Stable.get_mol(q, np.asarray(z), np.asarray(pos), rec.fock)
        qh9 = q.get(i)
        n0 = 14 if z[0] > 2 else 5
        rows.append({
            "molecule": name,
            "max_abs_fock_vs_pyscf_ha": float(np.abs(rec.fock - fock).max()),
            "fock_scale_ha": float(np.abs(fock).max()),
            "positions_equal": bool(np.array_equal(rec.pos, np.asarray(pos))),
            "numbers_equal": bool(np.array_equal(rec.numbers, z)),
            "max_abs_overlap_vs_pyscf": float(np.abs(rec.overlap - mf.get_ovlp()).max()),
            "max_abs_first_block_vs_qh9_get": float(
                (qh9.diagonal_hamiltonian[0][:n0, :n0] - ref.diagonal_hamiltonian[0][:n0, :n0]).abs().max()),
        })
    # the SCF of step 1 and of step 3 converge separately (PySCF default conv_tol 1e-9): Fock agreement ~1e-5
    ok = all(r["positions_equal"] and r["numbers_equal"] and r["max_abs_fock_vs_pyscf_ha"] < 1e-4
             and r["max_abs_overlap_vs_pyscf"] < 1e-12 and r["max_abs_first_block_vs_qh9_get"] == 0.0
             for r in rows)
    from _common import provenance

    command = " ".join(["scripts/bench/hamiltonian_readers.py", *(sys.argv[1:] if argv is None else argv)])
    res = {"ok": ok, "rows": rows, "shims": shims, "generation_s": t_gen,
           "provenance": provenance("QH9 (divelab/AIRS OpenDFT/QHBench/QH9)",
                                    "4a16c68a7da707c521019067dec51c227c10de45", True, command=command)}
    atomic_write_text(args.out, json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
