"""Peak memory of MACE inference (energy + forces + stress) on large Cu cells: molequi unchunked, molequi with
edge chunks (``max_edges_per_chunk``, issue 23 item 1) and mace-torch, at the same hyperparameters.

    PY=$(bash scripts/bench/setup_peers.sh mace | tail -1)
    python scripts/bench/mace_scale.py --mace-python $PY        # table + bench_results/mace_scale.json

Model: the MACE of the molequi/mace-torch speed comparisons (``_common.MACE_HYPER``: 64x0e+64x1o, max_ell 3,
correlation 3, 2 layers, r_max 5 Å, radial MLP [64, 64, 64]; larger than the quickstart's 32x0e+32x1o, max_ell
2, which ``mace_scale_md.py`` runs in MD up to 100k atoms), element Cu, random weights, on both
sides (nothing copied: the weights do not change the memory). Structures: fcc Cu (a = 3.61 Å), primitive cell
repeated n^3 (``--sizes``, default 10^3 = 1000, 16^3 = 4096, 25^3 = 15625 atoms), rattled by 0.05 Å.

Every (implementation, size) runs in a fresh process (one thread) under an address-space limit
(``--mem-limit-gb``): it builds the graph and the model, records its resident set (``rss_setup_mb``,
VmRSS), makes one call with energy, forces and stress, and records the peak resident set of the process
(``peak_rss_mb``, VmHWM = getrusage's ru_maxrss), the call's wall and CPU time and the energy. A process that
runs out of the limit is recorded as such. molequi's configurations: ``unchunked``
(``max_edges_per_chunk: null``), ``auto`` (the default: chunks of about 1 GiB of per-edge intermediates per
layer in training, 8 MiB in inference on the neighbour table) and ``chunk=N``; ``edges_per_chunk`` is what each
layer uses (``MACE.chunk_rows``): slots of the neighbour table (``table_slots_per_atom`` k > 0, ``rows`` = k x
atoms, chunks of whole atoms) or edges of the edge list (k = 0), at most ``rows`` (one piece); ``train-unchunked`` / ``train-chunk=N`` measure one training step instead
(inference, then the backward of a loss on energy, forces and stress, which needs second derivatives). The
chunked and unchunked energies of one size are printed side by side (same seed, same weights: they agree to
round-off). ``--append`` adds sizes to an existing result file (each invocation is listed in it).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    MACE_HYPER,
    ROOT,
    address_space_limit,
    build_mace_torch,
    peak_rss_mb,
    print_table,
    provenance,
    save,
)

A_CU = 3.61


def cu_cell(n: int):
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=A_CU) * (n, n, n)
    atoms.rattle(0.05, seed=n)
    return atoms


def _status_mb(field: str) -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"/proc/self/status has no {field}")


def _timed(fn) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    energy = fn()
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "energy": energy}


def worker_molequi(n: int, dtype_name: str, chunk, train: bool = False) -> dict:
    import torch
    from torch_geometric.data import Batch

    from molequi.data.records import atoms_to_data
    from molequi.data.statistics import Statistics
    from molequi.graph.neighbors import RadiusGraph
    from molequi.models.mace import MACE

    dtype = getattr(torch, dtype_name)
    atoms = cu_cell(n)
    batch = Batch.from_data_list([RadiusGraph(MACE_HYPER["r_max"])(atoms_to_data(atoms, dtype=dtype,
                                                                                  validate=False))])
    n_edges = int(batch.edge_index.shape[1])
    torch.manual_seed(0)
    stats = Statistics(elements=[29], avg_num_neighbors=n_edges / len(atoms))
    # mace-torch's side (build_mace_torch) has a residual first block
    cfg = MACE.Config(**MACE_HYPER, first_interaction="residual", max_edges_per_chunk=chunk)
    model = MACE.from_config(cfg, stats).to(dtype).train(train)
    # what each layer's message computation runs on (neighbour table or edge list) and its chunk
    plan = model.chunk_rows(batch)

    def call():
        out = model(batch, compute_forces=True, compute_stress=True)
        if train:  # one training step's backward: the force and stress terms need second derivatives
            loss = out["energy"].pow(2).sum() + out["forces"].pow(2).sum() + out["stress"].pow(2).sum()
            loss.backward()
        return float(out["energy"].detach().sum())

    return {"n_atoms": len(atoms), "n_edges": n_edges, "table_slots_per_atom": plan[0]["k"],
            "rows": plan[0]["rows"], "edges_per_chunk": [p["rows_per_chunk"] for p in plan],
            "rss_setup_mb": _status_mb("VmRSS"), **_timed(call)}


def worker_mace(n: int, dtype_name: str) -> dict:
    import mace  # noqa: F401  (first: it makes e3nn 0.4.4 importable under torch >= 2.6)
    import torch
    from mace import data as mdata
    from mace.tools import torch_geometric, utils

    dtype = getattr(torch, dtype_name)
    torch.set_default_dtype(dtype)
    atoms = cu_cell(n)
    z_table = utils.AtomicNumberTable([29])
    graph = mdata.AtomicData.from_config(mdata.config_from_atoms(atoms), z_table=z_table,
                                         cutoff=MACE_HYPER["r_max"])
    batch = torch_geometric.Batch.from_data_list([graph])
    n_edges = int(batch.edge_index.shape[1])
    torch.manual_seed(0)
    model = build_mace_torch([29], n_edges / len(atoms), dtype)
    batch_dict = {k: (v.to(dtype) if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
                  for k, v in batch.to_dict().items()}

    def call():
        out = model(batch_dict, training=False, compute_force=True, compute_stress=True)
        return float(out["energy"].detach().sum())

    return {"n_atoms": len(atoms), "n_edges": n_edges, "impl": f"mace-torch {mace.__version__}",
            "rss_setup_mb": _status_mb("VmRSS"), **_timed(call)}


def worker(impl: str, n: int, dtype: str) -> dict:
    import torch

    torch.set_num_threads(1)
    try:
        if impl == "mace-torch":
            result = worker_mace(n, dtype)
        else:
            train = impl.startswith("train-")
            setting = impl.removeprefix("train-")
            chunk = {"unchunked": None, "auto": "auto"}[setting] if "=" not in setting else int(setting[6:])
            result = {"impl": f"molequi {impl}", **worker_molequi(n, dtype, chunk, train)}
    except (RuntimeError, MemoryError) as exc:  # the allocation that passed the address-space limit
        result = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"}
    result["peak_rss_mb"] = peak_rss_mb()
    result["vm_hwm_mb"] = _status_mb("VmHWM")
    return result


def run_one(python: str, impl: str, n: int, dtype: str, limit_gb: float, timeout: int) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    cmd = [python, __file__, "--worker", impl, "--n", str(n), "--dtype", dtype]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout,
                              preexec_fn=address_space_limit(limit_gb))
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    lines = [x for x in proc.stdout.splitlines() if x.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"rc {proc.returncode}: {tail[:300]}"}
    return json.loads(lines[-1])


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mace-python", help="python of the mace-torch venv (scripts/bench/setup_peers.sh mace)")
    ap.add_argument("--sizes", default="10,16,25", help="n of the n^3 primitive fcc cells (n^3 atoms)")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--impls", default="unchunked,auto,chunk=8192,mace-torch",
                    help="molequi configurations (unchunked, auto, chunk=N; with a train- prefix, a training "
                    "step instead: E+F+S, then backward of a loss on all three) and mace-torch")
    ap.add_argument("--mem-limit-gb", type=float, default=16.0, help="address-space limit of each process")
    ap.add_argument("--timeout", type=int, default=1800)
    ap.add_argument("--out", default="mace_scale", help="results name (no path): bench_results/NAME.json")
    ap.add_argument("--append", action="store_true",
                    help="add to bench_results/NAME.json (replacing rows of the same size and configuration)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if Path(args.out).name != args.out:
        ap.error("--out is a name (bench_results/NAME.json), not a path")
    if args.worker:
        print(json.dumps(worker(args.worker, args.n, args.dtype)))
        return 0
    impls = args.impls.split(",")
    if "mace-torch" in impls and not (args.mace_python and os.path.exists(args.mace_python)):
        sys.exit("mace-torch needs --mace-python (PY=$(bash scripts/bench/setup_peers.sh mace | tail -1))")
    rows, invocations = [], []
    previous = ROOT / "bench_results" / f"{args.out}.json"
    if args.append and previous.exists():
        old = json.loads(previous.read_text())
        invocations = old.get("invocations", [])
        for r in old["results"]:  # rows of a file written before rows recorded their limit
            r.setdefault("mem_limit_gb", old["mem_limit_gb"])
        done = {(n**3, c) for n in map(int, args.sizes.split(",")) for c in impls}
        rows = [r for r in old["results"] if (r["size"], r["config"]) not in done]
    invocations.append({"sizes": args.sizes, "impls": args.impls, "mem_limit_gb": args.mem_limit_gb,
                        "load_average": list(os.getloadavg()),
                        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())})
    for n in (int(s) for s in args.sizes.split(",")):
        for impl in impls:
            python = args.mace_python if impl == "mace-torch" else sys.executable
            r = run_one(python, impl, n, args.dtype, args.mem_limit_gb, args.timeout)
            r.update(size=n**3, config=impl, dtype=args.dtype, mem_limit_gb=args.mem_limit_gb)
            rows.append(r)
            print(f"  {n**3:6d} {impl:12s} "
                  + (f"peak {r['peak_rss_mb']:.0f} MB, {r['cpu_s']:.1f} cpu s" if "energy" in r
                     else r["error"]),
                  file=sys.stderr, flush=True)
    peer = {r["size"]: r for r in rows if r["config"] == "mace-torch" and "energy" in r}
    for r in rows:
        if "energy" in r and r["size"] in peer:
            r["peak_vs_mace_torch"] = r["peak_rss_mb"] / peer[r["size"]]["peak_rss_mb"]
            r["call_growth_vs_mace_torch"] = (r["peak_rss_mb"] - r["rss_setup_mb"]) / (
                peer[r["size"]]["peak_rss_mb"] - peer[r["size"]]["rss_setup_mb"])
    print_table(rows, ["size", "config", "n_edges", "edges_per_chunk", "rss_setup_mb", "peak_rss_mb",
                       "peak_vs_mace_torch", "call_growth_vs_mace_torch", "wall_s", "cpu_s", "energy",
                       "error"])
    version = next((r["impl"].split(" ", 1)[1] for r in rows if r["config"] == "mace-torch" and "impl" in r),
                   None)
    ran_peer = any(r["config"] == "mace-torch" for r in rows)  # this invocation or an appended one
    save(args.out, {
        "hyperparameters": MACE_HYPER, "dtype": args.dtype, "mem_limit_gb": args.mem_limit_gb,
        "structure": f"fcc Cu a={A_CU} Å, primitive cell n^3, rattled 0.05 Å",
        "measure": "one energy+forces+stress call per fresh process; peak_rss_mb = ru_maxrss (VmHWM), "
                   "rss_setup_mb = VmRSS after graph and model were built",
        "results": sorted(rows, key=lambda r: r["size"]), "invocations": invocations,
    }, provenance("mace-torch" if ran_peer else None, version if ran_peer else None,
                  True if ran_peer else None, threads=1,  # every worker's (the driver's own count did not run)
                  notes="each configuration in a fresh process, one after another; with --append the sizes "
                        "of several invocations (see 'invocations' for the configurations each ran)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
