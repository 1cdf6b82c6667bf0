"""Energy + forces speed of molequi's MACE against mace-torch at identical hyperparameters (CPU).

    bash scripts/bench/setup_mace_torch.sh          # once: mace-torch in its own venv
    python scripts/bench/mace_speed.py              # table on stdout, JSON in bench_results/mace_speed.json

Both models: hidden 64x0e+64x1o, max_ell 3, correlation 3, 2 interactions, r_max 5 Å, 8 Bessel functions,
p = 5, radial MLP [64, 64, 64], MLP readout 16x0e, elements H C O Cu, random initialisation (nothing is
copied between them; weights do not change the cost). Systems: 32 rMD17 ethanol frames as one batch, a
periodic water box of 171 molecules (513 atoms, 1 g/cm^3) built with ase, and (``--systems ...,cu_4096``) a
periodic fcc Cu box of 4096 atoms (a = 3.61 Å, rattled by 0.05 Å; timed ``--repeats-large`` times). Graphs are
built before timing. ``--size foundation``: both sides at MACE-MP's size instead (128x0e+128x1o, r_max 6 Å).

Each (implementation, system, dtype) runs in a fresh subprocess - the mace-torch one with the python of
${MACE_VENV:-~/.cache/molequi/mace-venv} (mace-torch pins e3nn 0.4.4, which cannot share molequi's venv) -
with ``torch.set_num_threads(threads)``: one warm-up call, then the median of ``--repeats`` timed calls,
both wall-clock and process CPU time (the CPU time is the fairer number on a shared, loaded machine).
Training: the median of ``--repeats`` optimiser steps as a trainer takes them (forces with create_graph, an
energy + 100 x force MSE loss, backward, Adam with AMSGrad), as time per step and structures per CPU second.
Memory: growth of the process's peak resident set over the inference calls (energy + forces) and over the
training steps, divided by the number of atoms.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import mace_imported  # noqa: E402
from _common import (  # noqa: E402
    ETHANOL_NPZ,
    address_space_limit,
    build_mace_torch,
    peak_rss_mb,
    wall_cpu_times,
)
from _common import MACE_HYPER as HYPER  # noqa: E402

# --size: the model both sides build; foundation = MACE-MP's size (the `foundation` spec of
# scripts/parity/check.py: 128x0e+128x1o, max_ell 3, correlation 3, r_max 6 Å, radial MLP [64, 64, 64])
SIZES = {"small": HYPER, "foundation": dict(HYPER, r_max=6.0, hidden_irreps="128x0e+128x1o")}

ELEMENTS = [1, 6, 8, 29]  # H C O for ethanol and water, Cu for the metal box
LARGE = {"cu_4096"}  # timed --repeats-large times instead of --repeats


# ----------------------------------------------------------------------------------------------- structures
def make_structures(out_dir: Path, n_frames: int, npz: str) -> dict[str, str]:
    import ase.io
    import numpy as np
    from ase import Atoms
    from ase.build import molecule

    d = np.load(npz)
    z, coords = d["nuclear_charges"], d["coords"]
    frames = [Atoms(numbers=z, positions=coords[i]) for i in range(n_frames)]
    ethanol = out_dir / "ethanol.extxyz"
    ase.io.write(ethanol, frames)

    rng = np.random.default_rng(0)
    n_mol, grid = 171, 6
    length = (n_mol * 18.015 / 6.02214076e23 / 1.0) ** (1 / 3) * 1e8  # Å at 1 g/cm^3
    points = [(i, j, k) for i in range(grid) for j in range(grid) for k in range(grid)]
    chosen = rng.choice(len(points), n_mol, replace=False)
    water = Atoms(cell=[length] * 3, pbc=True)
    h2o = molecule("H2O")
    h2o.positions -= h2o.positions[0]  # O at the origin
    for idx in sorted(chosen):
        m = h2o.copy()
        m.rotate(rng.uniform(0, 360), rng.normal(size=3), center=(0, 0, 0))
        m.positions += (np.array(points[idx]) + 0.5) * length / grid
        water += m
    water.wrap()
    box = out_dir / "water.extxyz"
    ase.io.write(box, water)

    from ase.build import bulk

    cu = bulk("Cu", "fcc", a=3.61) * (16, 16, 16)  # primitive cell: 4096 atoms, 42 neighbours within 5 Å
    cu.rattle(0.05, seed=0)
    cu_path = out_dir / "cu.extxyz"
    ase.io.write(cu_path, cu)
    return {"ethanol_x32": str(ethanol), "water_513": str(box), "cu_4096": str(cu_path)}


# ----------------------------------------------------------------------------------------------- workers
def _train_timing(model, forward, n_atoms: int, repeats: int, base_mb: float, infer_mb: float,
                  n_structures: int) -> dict:
    """One optimiser step as training does it: forces with create_graph, weighted E + F loss, backward,
    Adam (AMSGrad). Returns the timing of a step (``train_*``), structures per CPU second and peak memory."""
    import torch

    opt = torch.optim.Adam(model.parameters(), lr=1e-3, amsgrad=True)
    f_ref = torch.randn(n_atoms, 3, generator=torch.Generator().manual_seed(0)).to(next(model.parameters()))

    def step():
        opt.zero_grad(set_to_none=True)
        out = forward()
        loss = (out["energy"] ** 2).mean() + 100.0 * ((out["forces"] - f_ref) ** 2).mean()
        loss.backward()
        opt.step()

    timing = wall_cpu_times(step, repeats)
    return {
        "train_median_s": timing["median_s"],
        "train_median_cpu_s": timing["median_cpu_s"],
        "train_structures_per_cpu_s": n_structures / timing["median_cpu_s"],
        "peak_mb_train": max(peak_rss_mb() - base_mb, infer_mb),
    }


def worker_molequi(path: str, dtype_name: str, repeats: int, threads: int, train: bool) -> dict:
    import ase.io
    import torch
    from torch_geometric.data import Batch

    from molequi.data.records import atoms_to_data
    from molequi.data.statistics import Statistics
    from molequi.graph.neighbors import RadiusGraph
    from molequi.models.mace import MACE

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dtype = getattr(torch, dtype_name)
    frames = ase.io.read(path, ":")
    graph = RadiusGraph(HYPER["r_max"])
    batch = Batch.from_data_list([graph(atoms_to_data(a, dtype=dtype, validate=False)) for a in frames])
    n_atoms = int(batch.num_nodes)
    avg = batch.edge_index.shape[1] / n_atoms
    stats = Statistics(elements=ELEMENTS, avg_num_neighbors=avg)
    # as the peer model (_common.mace_torch_model): residual first block, envelope on the radial basis
    model = MACE.from_config(MACE.Config(**HYPER, first_interaction="residual", envelope="basis"),
                             stats).to(dtype).eval()

    def infer():
        out = model(batch, compute_forces=True)
        return out["energy"].sum().item() + out["forces"].sum().item()

    base = peak_rss_mb()
    infer()
    infer_mb = peak_rss_mb() - base
    timing = wall_cpu_times(infer, repeats)
    result = dict(
        impl="molequi",
        n_atoms=n_atoms,
        n_edges=int(batch.edge_index.shape[1]),
        **timing,
        peak_mb_infer=infer_mb,
    )
    if train:
        model.train()
        result.update(_train_timing(model, lambda: model(batch, compute_forces=True), n_atoms, repeats, base,
                                    infer_mb, len(frames)))
    return result


def worker_mace(path: str, dtype_name: str, repeats: int, threads: int, train: bool) -> dict:
    import ase.io
    import mace  # noqa: F401  (first: it makes e3nn 0.4.4 importable under torch >= 2.6)
    import torch
    from mace import data as mdata
    from mace.tools import torch_geometric, utils

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dtype = getattr(torch, dtype_name)
    torch.set_default_dtype(dtype)
    frames = ase.io.read(path, ":")
    z_table = utils.AtomicNumberTable(ELEMENTS)
    dataset = [
        mdata.AtomicData.from_config(mdata.config_from_atoms(a), z_table=z_table, cutoff=HYPER["r_max"])
        for a in frames
    ]
    loader = torch_geometric.dataloader.DataLoader(dataset, batch_size=len(dataset), shuffle=False)
    batch = next(iter(loader))
    n_atoms = int(batch.num_nodes)
    avg = batch.edge_index.shape[1] / n_atoms
    model = build_mace_torch(ELEMENTS, avg, dtype, hyper=HYPER)
    batch_dict = batch.to_dict()
    for k, v in batch_dict.items():
        if isinstance(v, torch.Tensor) and v.is_floating_point():
            batch_dict[k] = v.to(dtype)

    def infer():
        out = model(batch_dict, training=False, compute_force=True)
        return out["energy"].sum().item() + out["forces"].sum().item()

    base = peak_rss_mb()
    infer()
    infer_mb = peak_rss_mb() - base
    timing = wall_cpu_times(infer, repeats)
    import mace as mace_pkg

    result = dict(
        impl=f"mace-torch {getattr(mace_pkg, '__version__', '?')}",
        n_atoms=n_atoms,
        n_edges=int(batch.edge_index.shape[1]),
        **timing,
        peak_mb_infer=infer_mb,
    )
    if train:
        model.train()
        def forward():
            return model(batch_dict, training=True, compute_force=True)

        result.update(_train_timing(model, forward, n_atoms, repeats, base, infer_mb, len(frames)))
    return result


# ----------------------------------------------------------------------------------------------- driver
def run_worker(python: str, impl: str, path: str, dtype: str, args, repeats: int) -> dict:
    cmd = [
        python,
        os.path.abspath(__file__),
        "--worker",
        impl,
        "--structure",
        path,
        "--dtype",
        dtype,
        "--repeats",
        str(repeats),
        "--threads",
        str(args.threads),
        "--size",
        args.size,
    ] + ([] if args.train else ["--no-train"])
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    if impl == "molequi":
        env["PYTHONPATH"] = str(Path(__file__).resolve().parents[2]) + os.pathsep + env.get("PYTHONPATH", "")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout,
                              preexec_fn=address_space_limit(args.mem_limit_gb))
    except subprocess.TimeoutExpired:
        return {"impl": impl, "error": f"did not finish within --timeout {args.timeout} s"}
    if proc.returncode != 0:
        return {
            "impl": impl,
            "error": proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else "failed",
        }
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--frames", type=int, default=32)
    parser.add_argument("--npz", default=ETHANOL_NPZ)
    parser.add_argument("--dtypes", default="float64,float32")
    parser.add_argument("--systems", default="ethanol_x32,water_513")
    parser.add_argument("--impls", default="molequi,mace-torch")
    parser.add_argument(
        "--no-train", dest="train", action="store_false", help="skip the training-step timing and memory"
    )
    parser.add_argument("--mace-python", default=None, help="python of the mace-torch venv")
    parser.add_argument("--out", default="bench_results/mace_speed.json")
    parser.add_argument("--timeout", type=int, default=1800)
    parser.add_argument("--size", choices=sorted(SIZES), default="small",
                        help="the model of both sides: small (64x0e+64x1o, r_max 5) or foundation (MACE-MP's "
                        "size: 128x0e+128x1o, r_max 6); JSON default "
                        "bench_results/mace_speed_foundation.json")
    parser.add_argument(
        "--imported", action="store_true",
        help="instead: a foundation-size mace-torch model imported into molequi vs mace-torch, Cu 64 / 512 / "
        "4096 atoms and 32 ethanol, 1 thread, interleaved (scripts/bench/mace_imported.py; JSON in "
        "bench_results/mace_imported.json)",
    )
    mace_imported.add_arguments(parser)
    parser.add_argument("--worker", choices=["molequi", "mace-torch"], help=argparse.SUPPRESS)
    parser.add_argument("--structure", help=argparse.SUPPRESS)
    parser.add_argument("--dtype", help=argparse.SUPPRESS)
    args = parser.parse_args()
    global HYPER
    HYPER = SIZES[args.size]
    if args.size != "small" and args.out == "bench_results/mace_speed.json":
        args.out = f"bench_results/mace_speed_{args.size}.json"

    if args.worker:
        fn = worker_molequi if args.worker == "molequi" else worker_mace
        print(json.dumps(fn(args.structure, args.dtype, args.repeats, args.threads, args.train)))
        return

    venv = os.environ.get("MACE_VENV", os.path.expanduser("~/.cache/molequi/mace-venv"))
    mace_python = args.mace_python or os.path.join(venv, "bin", "python")
    if args.imported:
        if not os.path.exists(mace_python):
            sys.exit(f"no mace-torch python at {mace_python}; pass --mace-python "
                     "(scripts/bench/setup_peers.sh mace)")
        args.mace_python = mace_python
        if args.out == "bench_results/mace_speed.json":
            args.out = "bench_results/mace_imported.json"
        if args.systems == "ethanol_x32,water_513":
            args.systems = "cu_64,cu_512,cu_4096,ethanol_x32"
        if args.impls == "molequi,mace-torch":
            args.impls = "mace-torch,molequi"
        sys.exit(mace_imported.run(args))
    impls = args.impls.split(",")
    if "mace-torch" in impls and not os.path.exists(mace_python):
        sys.exit(f"no mace-torch venv at {venv}; run scripts/bench/setup_mace_torch.sh (or set MACE_VENV)")
    rows = []
    out_path = Path(args.out)
    previous = json.loads(out_path.read_text()) if args.append and out_path.exists() else None
    with tempfile.TemporaryDirectory() as tmp:
        paths = make_structures(Path(tmp), args.frames, args.npz)
        for system in args.systems.split(","):
            for dtype in args.dtypes.split(","):
                for impl in impls:
                    python = sys.executable if impl == "molequi" else mace_python
                    repeats = args.repeats_large if system in LARGE else args.repeats
                    res = run_worker(python, impl, paths[system], dtype, args, repeats)
                    res.update(system=system, dtype=dtype, impl_key=impl)
                    rows.append(res)
                    print(
                        f"  {system:12s} {dtype:8s} {impl:11s} "
                        + (f"{res['median_s']:.3f} s" if "median_s" in res else res.get("error", "?")),
                        file=sys.stderr,
                        flush=True,
                    )
    print_table(rows)
    from _common import provenance, save

    meta = dict(
        hyperparameters=HYPER,
        threads=args.threads,
        repeats=args.repeats,
        repeats_large=args.repeats_large,
        mem_limit_gb=args.mem_limit_gb,
        machine=platform.node(),
        cpu_count=os.cpu_count(),
        load_average=os.getloadavg(),
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    )
    run = dict(systems=args.systems.split(","), dtypes=args.dtypes.split(","), date=meta["date"],
               load_average=list(meta["load_average"]), commit=mace_imported._commit())
    meta["runs"] = [run]
    if previous is not None:  # --append: keep the earlier rows of the (system, dtype) pairs not measured now
        if previous["meta"]["hyperparameters"] != HYPER:
            sys.exit(f"--append: {out_path} holds another model ({previous['meta']['hyperparameters']})")
        done = {(r["system"], r["dtype"]) for r in rows}
        rows = [r for r in previous["results"] if (r["system"], r["dtype"]) not in done] + rows
        meta["runs"] = previous["meta"].get("runs", [{"date": previous["meta"].get("date")}]) + [run]
    peer = next((r["impl"] for r in rows if r["impl_key"] == "mace-torch" and "impl" in r), None)
    prov = provenance(
        "mace-torch" if peer else None, peer.split(" ", 1)[-1] if peer else None, True if peer else None,
        notes="ScaleShiftMACE with the same hyperparameters on both sides (random weights), each "
              "(implementation, system, dtype) in a fresh process of this invocation; median of wall and of "
              "process CPU time",
        commit=mace_imported._commit(),
    )
    prov["threads"] = args.threads  # the workers' thread count (this driver process does not compute)
    save(Path(args.out).stem, {"meta": meta, "results": rows}, prov)


def print_table(rows: list[dict]) -> None:
    """Inference and training step: CPU-time medians, speed-up over mace-torch, wall time, memory per atom."""
    print(
        f"\n{'system':12s} {'dtype':8s} {'impl':18s} {'atoms':>5s} {'edges':>6s} {'wall s':>8s} "
        f"{'cpu s':>8s} {'x cpu':>6s} {'train cpu s':>11s} {'x':>6s} {'struct/cpu s':>12s} "
        f"{'MB/atom inf':>11s} {'MB/atom train':>13s}"
    )
    ref = {(r["system"], r["dtype"]): r for r in rows if r["impl_key"] == "mace-torch" and "median_s" in r}
    for r in rows:
        if "median_s" not in r:
            print(f"{r['system']:12s} {r['dtype']:8s} {r['impl_key']:18s} error: {r.get('error')}")
            continue
        base = ref.get((r["system"], r["dtype"]))
        cpu_x = f"{base['median_cpu_s'] / r['median_cpu_s']:.2f}" if base else "-"
        trained = "train_median_cpu_s" in r
        train_x = (f"{base['train_median_cpu_s'] / r['train_median_cpu_s']:.2f}"
                   if base and trained and "train_median_cpu_s" in base else "-")
        train = r.get("peak_mb_train")
        print(
            f"{r['system']:12s} {r['dtype']:8s} {r['impl'][:18]:18s} {r['n_atoms']:5d} {r['n_edges']:6d} "
            f"{r['median_s']:8.3f} {r['median_cpu_s']:8.3f} {cpu_x:>6s} "
            + (f"{r['train_median_cpu_s']:11.3f} {train_x:>6s} {r['train_structures_per_cpu_s']:12.2f} "
               if trained else f"{'-':>11s} {'-':>6s} {'-':>12s} ")
            + f"{r['peak_mb_infer'] / r['n_atoms']:11.3f} "
            + (f"{train / r['n_atoms']:13.3f}" if train is not None else f"{'-':>13s}")
        )

if __name__ == "__main__":
    main()
