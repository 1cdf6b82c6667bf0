"""Speed of an imported foundation-size mace-torch model in molequi vs in mace-torch (issue 14).

    PY=$(bash scripts/bench/setup_peers.sh mace | tail -1)
    python scripts/bench/mace_speed.py --imported --mace-python $PY    # bench_results/mace_imported.json

The model: mace-torch's ScaleShiftMACE with MACE-MP-size hyperparameters (89 elements, 128x0e+128x1o,
max_ell 3, correlation 3, r_max 6 Å, 2 layers, non-residual first block, radial MLP [64, 64, 64]: the
``foundation`` spec of ``scripts/parity/check.py``) and random weights, built and saved as ``*.model`` in the
mace-torch python (``scripts/parity/_mace_peer.py build``), then imported into molequi with ``molequi.interop.mace``
(float64 weights, cast to float32 for the float32 rows on both sides). Systems: fcc Cu (a = 3.61 Å,
primitive cell repeated 4^3 / 8^3 / 16^3 = 64 / 512 / 4096 atoms, rattled by 0.05 Å; energy, forces and
stress) and 32 rMD17 ethanol frames as one batch (energy and forces).

Each side runs in one persistent worker process (molequi in this python, mace-torch in ``--mace-python``),
both alive for the whole run, one thread each. Per (system, dtype): each side builds its graph (outside the
timing) from the same structures, calls its model once (warm-up; those outputs are compared: max abs
difference of energy, forces and stress, printed and saved), then the two sides alternate call by call
(ABBA order) for ``--repeats`` timed calls each (``--repeats-large`` for systems above 1000 atoms, recorded
per row). Timed: the model called on the prebuilt batch as ``MACECalculator.calculate`` calls it
(``model(batch_dict, compute_stress=..., training=False)``; molequi: ``model(batch, compute_forces=True,
compute_stress=...)``), medians of wall-clock and process CPU time. The neighbour list is not timed on either
side. molequi runs with its default ``max_edges_per_chunk`` ("auto"); ``--impls`` can add
``molequi-unchunked`` (``max_edges_per_chunk: null``). Each worker runs under an address-space limit
(``--mem-limit-gb``), so a system that does not fit is recorded as an error instead of taking the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE))
from _common import ETHANOL_NPZ, address_space_limit, peak_rss_mb, wall_cpu_times  # noqa: E402

PEER_SCRIPT = ROOT / "scripts" / "parity" / "_mace_peer.py"
MARK = "@@json "  # prefix of the workers' answer lines (the peer's libraries print to stdout too)
SYSTEMS = {"cu_64": 4, "cu_512": 8, "cu_4096": 16, "ethanol_x32": None}


# ----------------------------------------------------------------------------------------------- structures
def make_structures(out_dir: Path, systems: list[str], n_frames: int = 32) -> dict[str, str]:
    import ase.io
    import numpy as np
    from ase import Atoms
    from ase.build import bulk

    paths = {}
    for name in systems:
        path = out_dir / f"{name}.extxyz"
        if SYSTEMS[name] is None:
            with np.load(ETHANOL_NPZ) as d:
                z, xyz = d["nuclear_charges"], d["coords"]
                frames = [Atoms(numbers=z, positions=xyz[i]) for i in range(n_frames)]
        else:
            n = SYSTEMS[name]
            cu = bulk("Cu", "fcc", a=3.61) * (n, n, n)
            cu.rattle(0.05, seed=n)
            frames = [cu]
        ase.io.write(path, frames, format="extxyz")
        paths[name] = str(path)
    return paths


# ----------------------------------------------------------------------------------------------- workers
def _outputs(energy, forces, stress) -> dict:
    out = {"energy": energy.detach().double().reshape(-1).tolist(),
           "forces": forces.detach().double().reshape(-1).tolist()}
    if stress is not None:
        out["stress"] = stress.detach().double().reshape(-1).tolist()
    return out


class MolequiSide:
    def __init__(self, model_file: str, peer_python: str, impl: str):
        from molequi.interop.mace import export_mace

        self.model_file, self.peer_python, self.impl = model_file, peer_python, impl
        self.export = export_mace(model_file, python=peer_python)
        self.models = {}

    def load(self, path: str, dtype_name: str):
        import ase.io
        import torch
        from torch_geometric.data import Batch

        from molequi.data.records import atoms_to_data
        from molequi.graph.neighbors import RadiusGraph
        from molequi.interop.mace import import_mace

        dtype = getattr(torch, dtype_name)
        if dtype_name not in self.models:
            model = import_mace(self.model_file, python=self.peer_python, dtype=dtype, export=self.export)
            if self.impl == "molequi-unchunked":
                model.set_max_edges_per_chunk(None)
            self.models[dtype_name] = model
        model = self.models[dtype_name]
        frames = ase.io.read(path, ":")
        graph = RadiusGraph(model.r_max)
        batch = Batch.from_data_list([graph(atoms_to_data(a, dtype=dtype, validate=False)) for a in frames])
        stress = bool(frames[0].pbc.all())
        self.fn = lambda: model(batch, compute_forces=True, compute_stress=stress)
        out = self.fn()
        return dict(impl=self.impl, n_atoms=int(batch.num_nodes), n_edges=int(batch.edge_index.shape[1]),
                    outputs=_outputs(out["energy"], out["forces"], out.get("stress") if stress else None))


class MaceSide:
    def __init__(self, model_file: str):
        import mace  # noqa: F401  (first: it makes e3nn 0.4.4 importable under torch >= 2.6)

        self.model_file, self.calcs = model_file, {}

    def load(self, path: str, dtype_name: str):
        import ase.io
        import mace
        from mace import data as mace_data
        from mace.calculators import MACECalculator
        from mace.tools import torch_geometric, torch_tools

        if dtype_name not in self.calcs:
            self.calcs[dtype_name] = MACECalculator(model_paths=self.model_file, device="cpu",
                                                    default_dtype=dtype_name)
        calc = self.calcs[dtype_name]
        frames = ase.io.read(path, ":")
        calc.arrays_keys.update({calc.charges_key: "charges"})  # as MACECalculator._atoms_to_batch
        keyspec = mace_data.KeySpecification(info_keys=calc.info_keys, arrays_keys=calc.arrays_keys)
        with torch_tools.default_dtype(calc.default_dtype):
            graphs = [mace_data.AtomicData.from_config(
                mace_data.config_from_atoms(a, key_specification=keyspec, head_name=calc.head),
                z_table=calc.z_table, cutoff=calc.r_max, heads=calc.available_heads) for a in frames]
        batch = torch_geometric.Batch.from_data_list(graphs)
        model = calc.models[0]
        dtype = next(model.parameters()).dtype
        for key in batch.keys:
            if batch[key].is_floating_point():
                batch[key] = batch[key].to(dtype)
        batch_dict = batch.to_dict()
        stress = bool(frames[0].pbc.all())
        self.fn = lambda: model(batch_dict, compute_stress=stress, training=False)
        out = self.fn()
        return dict(impl=f"mace-torch {mace.__version__}", n_atoms=int(batch.num_nodes),
                    n_edges=int(batch.edge_index.shape[1]),
                    outputs=_outputs(out["energy"], out["forces"], out["stress"] if stress else None))


def serve(side_name: str, model_file: str, peer_python: str | None) -> None:
    """Answer the driver's commands, one JSON object a line on stdin: load / time / quit."""
    import torch

    torch.set_num_threads(1)
    torch.manual_seed(0)
    if side_name == "mace-torch":
        side = MaceSide(model_file)
    else:
        side = MolequiSide(model_file, peer_python, side_name)
    print(MARK + json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        cmd = json.loads(line)
        try:
            if cmd["cmd"] == "quit":
                break
            if cmd["cmd"] == "load":
                t0 = time.perf_counter()
                answer = side.load(cmd["path"], cmd["dtype"])
                answer["load_s"] = time.perf_counter() - t0
            else:  # one timed call, no warm-up (load made it)
                answer = wall_cpu_times(side.fn, repeats=1, warmup=0)
            answer["peak_rss_mb"] = peak_rss_mb()
        except (RuntimeError, MemoryError) as exc:  # out of memory under the address-space limit
            side.fn = None
            answer = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
        print(MARK + json.dumps(answer), flush=True)


class Worker:
    """A worker process (``serve``) and the driver's end of its pipes."""

    def __init__(self, python: str, side: str, model_file: str, peer_python: str, mem_limit_gb: float):
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.side = side
        self.proc = subprocess.Popen(
            [python, __file__, "--serve", side, "--model-file", model_file, "--peer-python", peer_python],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
            preexec_fn=address_space_limit(mem_limit_gb),
        )
        self.receive()

    def receive(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])
        raise RuntimeError(f"worker {self.side} exited (rc {self.proc.wait()}); see its stderr above")

    def ask(self, **cmd) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        return self.receive()

    def close(self) -> None:
        try:
            self.ask(cmd="quit")
        except (BrokenPipeError, RuntimeError):
            pass
        self.proc.wait(timeout=60)


# ----------------------------------------------------------------------------------------------- driver
def max_abs_diff(a: dict, ref: dict) -> tuple[dict, dict]:
    """Max abs difference per quantity, and the same relative to the largest |reference value|."""
    import numpy as np

    diff = {k: float(np.abs(np.array(a[k]) - np.array(ref[k])).max()) for k in a if k in ref}
    return diff, {k: v / max(float(np.abs(np.array(ref[k])).max()), 1e-300) for k, v in diff.items()}


def run(args) -> int:
    import statistics

    sys.path.insert(0, str(ROOT / "scripts" / "parity"))
    from check import SPECS  # the parity check's foundation-size spec: one definition of "foundation"

    systems, dtypes, impls = args.systems.split(","), args.dtypes.split(","), args.impls.split(",")
    rows, agreement = [], []
    path = ROOT / "bench_results" / f"{Path(args.out).stem}.json"
    previous = json.loads(path.read_text()) if args.append and path.exists() else None
    with tempfile.TemporaryDirectory() as tmp:
        spec_file, model_file = Path(tmp) / "foundation.spec", Path(tmp) / "foundation.model"
        spec_file.write_text(json.dumps(dict(SPECS["foundation"])))
        subprocess.run([args.mace_python, str(PEER_SCRIPT), "build", str(spec_file), str(model_file)],
                       check=True, capture_output=True)
        paths = make_structures(Path(tmp), systems)
        workers = {impl: Worker(args.mace_python if impl == "mace-torch" else sys.executable, impl,
                                str(model_file), args.mace_python, args.mem_limit_gb) for impl in impls}
        try:
            for system in systems:
                for dtype in dtypes:
                    loaded = {impl: w.ask(cmd="load", path=paths[system], dtype=dtype)
                              for impl, w in workers.items()}
                    ok = [impl for impl, r in loaded.items() if "error" not in r]
                    ref = loaded.get("mace-torch")
                    for impl in ok:
                        if impl != "mace-torch" and "mace-torch" in ok:
                            diff, rel = max_abs_diff(loaded[impl]["outputs"], ref["outputs"])
                            agreement.append(dict(system=system, dtype=dtype, impl=impl, max_abs_diff=diff,
                                                  relative=rel))
                            print(f"  {system} {dtype} {impl} vs mace-torch: max abs diff {diff}, "
                                  f"relative {rel}", file=sys.stderr)
                    n_atoms = max((loaded[i]["n_atoms"] for i in ok), default=0)
                    repeats = args.repeats_large if n_atoms > 1000 else args.repeats
                    calls = {impl: [] for impl in ok}
                    for k in range(repeats):
                        order = ok if k % 2 == 0 else ok[::-1]
                        for impl in order:
                            answer = workers[impl].ask(cmd="time")
                            if "error" in answer:
                                loaded[impl]["error"] = answer["error"]
                                ok = [i for i in ok if i != impl]
                            else:
                                calls[impl].append(answer)
                    for impl, r in loaded.items():
                        row = dict(system=system, dtype=dtype, impl_key=impl, repeats=repeats,
                                   **{k: v for k, v in r.items() if k != "outputs"})
                        if "error" not in r and calls[impl]:
                            wall = [c["times_s"][0] for c in calls[impl]]
                            cpu = [c["cpu_s"][0] for c in calls[impl]]
                            row.update(median_s=statistics.median(wall), median_cpu_s=statistics.median(cpu),
                                       times_s=wall, cpu_s=cpu, peak_rss_mb=calls[impl][-1]["peak_rss_mb"])
                        rows.append(row)
                        print(f"  {system:12s} {dtype:8s} {impl:18s} "
                              + (f"{row['median_cpu_s']:.3f} cpu s" if "median_s" in row
                                 else row.get("error")),
                              file=sys.stderr, flush=True)
                    _save(args, rows, agreement, previous, complete=False)
        finally:
            for w in workers.values():
                w.close()
    print_table(rows, agreement)
    _save(args, rows, agreement, previous, complete=True)
    tolerance = {"float64": 1e-6, "float32": 1e-4}  # relative, as scripts/parity/check.py
    bad = [a for a in agreement if max(a["relative"].values()) > tolerance.get(a["dtype"], 1e-4)]
    for a in bad:
        print(f"DISAGREE: {a['system']} {a['dtype']} {a['impl']}: relative {a['relative']}", file=sys.stderr)
    return 1 if bad else 0


def _save(args, rows: list[dict], agreement: list[dict], previous: dict | None, complete: bool) -> None:
    """Write the JSON (after every (system, dtype) pair, so a stopped run keeps what it measured); with
    ``previous`` (``--append``: the file as it was when this invocation started) its rows for the pairs this
    invocation does not measure are kept and its runs listed."""
    from _common import provenance, save
    from check import SPECS  # scripts/parity (on the path since run)

    runs = [dict(systems=args.systems.split(","), dtypes=args.dtypes.split(","), impls=args.impls.split(","),
                 load_average=list(os.getloadavg()), date=time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 commit=_commit(), mem_limit_gb=args.mem_limit_gb, complete=complete)]
    if previous is not None:
        done = {(r["system"], r["dtype"]) for r in rows}
        rows = [r for r in previous["results"] if (r["system"], r["dtype"]) not in done] + rows
        agreement = [a for a in previous["agreement"] if (a["system"], a["dtype"]) not in done] + agreement
        runs = previous["provenance"].get("runs", []) + runs
    # the peer's version from any row that ran it, the kept rows of an --append included (a run whose
    # mace-torch workers all failed, e.g. out of memory, still names the version the file compares against)
    peer = next((r["impl"] for r in rows if r["impl_key"] == "mace-torch" and "impl" in r), "mace-torch ?")
    worst = {}
    for a in agreement:
        for k, v in a["max_abs_diff"].items():
            worst.setdefault(a["dtype"], {})[k] = max(worst.get(a["dtype"], {}).get(k, 0.0), v)
    save(Path(args.out).stem, {
        "hyperparameters": SPECS["foundation"], "repeats": args.repeats, "repeats_large": args.repeats_large,
        "timing": "model called on a prebuilt batch (neighbour list not timed), 1 thread, interleaved ABBA",
        "results": rows, "agreement": agreement, "max_abs_diff_by_dtype": worst,
        "relative_tolerance": {"float64": 1e-6, "float32": 1e-4},
    }, provenance(
        "mace-torch", peer.split(" ", 1)[-1], True,
        notes="foundation-size ScaleShiftMACE with random weights built in mace-torch and imported into "
              "molequi (same function); both sides in persistent workers of this invocation, calls "
              "interleaved; median of wall and of process CPU time",
        peak_rss_of_all_rows_so_far="peak_rss_mb is each worker's lifetime peak, not per system",
        runs=runs,
    ))


def _commit() -> str:
    proc = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True)
    return proc.stdout.strip() or "?"


def print_table(rows: list[dict], agreement: list[dict]) -> None:
    ref = {(r["system"], r["dtype"]): r for r in rows if r["impl_key"] == "mace-torch" and "median_s" in r}
    diff = {(a["system"], a["dtype"], a["impl"]): a["max_abs_diff"] for a in agreement}
    print(f"\n{'system':12s} {'dtype':8s} {'impl':18s} {'atoms':>5s} {'edges':>7s} {'calls':>5s} "
          f"{'wall s':>8s} "
          f"{'cpu s':>8s} {'x cpu':>6s} {'x wall':>6s}  max|dE| max|dF| max|dS|")
    for r in rows:
        if "median_s" not in r:
            print(f"{r['system']:12s} {r['dtype']:8s} {r['impl_key']:18s} error: {r.get('error')}")
            continue
        base = ref.get((r["system"], r["dtype"]))
        xc = f"{base['median_cpu_s'] / r['median_cpu_s']:.2f}" if base else "-"
        xw = f"{base['median_s'] / r['median_s']:.2f}" if base else "-"
        d = diff.get((r["system"], r["dtype"], r["impl_key"]), {})
        print(f"{r['system']:12s} {r['dtype']:8s} {r['impl'][:18]:18s} {r['n_atoms']:5d} {r['n_edges']:7d} "
              f"{r['repeats']:5d} {r['median_s']:8.3f} {r['median_cpu_s']:8.3f} {xc:>6s} {xw:>6s}  "
              + " ".join(f"{d[k]:.1e}" if k in d else "-" for k in ("energy", "forces", "stress")))


def add_arguments(parser) -> None:
    parser.add_argument("--repeats-large", type=int, default=5,
                        help="timed calls per side for systems above 1000 atoms (--imported; without "
                        "it: cu_4096)")
    parser.add_argument("--mem-limit-gb", type=float, default=16.0,
                        help="address-space limit of each worker process")
    parser.add_argument("--append", action="store_true",
                        help="keep the rows of the existing JSON for the (system, dtype) pairs this "
                        "invocation does not measure (each invocation is listed: with --imported in "
                        "provenance.runs, without it in meta.runs)")


if __name__ == "__main__":
    import argparse

    p = argparse.ArgumentParser()
    p.add_argument("--serve", required=True)
    p.add_argument("--model-file", required=True)
    p.add_argument("--peer-python", required=True)
    a = p.parse_args()
    serve(a.serve, a.model_file, a.peer_python)
