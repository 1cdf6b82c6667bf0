"""One table for MACE, molequi's EquiformerV2-style variant (equiformer_v2_molequi), frame averaging and EGNN on rMD17 ethanol and OC20-style slabs.

For each (dataset, model): parameters, training steps, CPU and wall seconds within a fixed training budget,
test energy MAE (meV per structure and meV/atom) and force MAE (meV/Å), inference time (ms per structure,
energy + forces, batch of 16, eval mode, best of 3; wall and CPU). Same loop, loss, optimiser and budget for
every model, float32, CPU threads as given.

Budget clock: ``--budget-clock cpu`` (default) stops training once the process has used ``--budget`` seconds
of CPU time (``time.process_time()``), so every model gets the same compute however loaded the machine is
(with ``--threads 1`` this is the time of the one compute thread); ``--budget-clock wall`` counts wall-clock
seconds instead (what earlier versions did: on a shared machine some models then got only ~20 steps). Both
clocks are reported either way.

Data
- rMD17 ethanol (``molequi/resources/rmd17``, the shipped copy; kcal/mol and kcal/mol/Å converted with
  ``molequi.units.KCAL_PER_MOL_TO_EV``): the first ``--n-train`` frames of split 01's training file, test on
  the first ``--n-test`` frames of its test file.
- Slabs: ``data/oc20/emt_slabs.extxyz`` (OC20 S2EF layout, CO/O/H on Cu/Pt/Au(111), EMT labels -- a toy
  stand-in for OC20, not DFT) when present, split by system (every 5th system is test); otherwise a small
  EMT slab set is generated here.

Loss: mean over structures of ((E - E_ref) / n_atoms)^2 + w_F mean over components of (F - F_ref)^2,
Adam, batch 8, lr 2e-3 (a minimal loop, not the Lightning trainer, so all models see exactly the same thing).
Small budgets give far-from-converged numbers: the table compares cost and early learning speed, not final
accuracy (the MACE paper's ethanol numbers need ~200k steps).

    python scripts/bench/models.py [--budget 150] [--budget-clock cpu] [--n-train 200] [--n-test 200]
                                   [--threads 1] [--models mace,equiformer_v2_molequi,frame_averaging,egnn,faenet]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, save  # noqa: E402

from molequi import keys as K  # noqa: E402
from molequi.data.records import atoms_to_data  # noqa: E402
from molequi.data.statistics import compute_statistics  # noqa: E402
from molequi.graph.neighbors import RadiusGraph  # noqa: E402
from molequi.models import get_model_class  # noqa: E402
from molequi.resources import shipped_path  # noqa: E402
from molequi.units import KCAL_PER_MOL_TO_EV  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]


def rmd17_ethanol(n_train: int, n_test: int):
    def load(split, n):
        d = np.load(shipped_path("rmd17", f"rmd17_ethanol_{split}_01.npz"))  # CC0, see its ORIGIN.md
        z = d["nuclear_charges"]
        out = []
        for i in range(min(n, len(d["energies"]))):
            out.append(
                (
                    Atoms(numbers=z, positions=d["coords"][i]),
                    float(d["energies"][i]) * KCAL_PER_MOL_TO_EV,
                    d["forces"][i] * KCAL_PER_MOL_TO_EV,
                )
            )
        return out

    source = {s: f"molequi/resources/rmd17/rmd17_ethanol_{s}_01.npz" for s in ("train", "test")}
    return load("train", n_train), load("test", n_test), source


def slabs(n_train: int, n_test: int):
    path = ROOT / "data" / "oc20" / "emt_slabs.extxyz"
    frames = []
    if path.exists():
        from ase.io import read

        txt = path.with_suffix(".txt")
        systems = [line.split(",")[0] for line in txt.read_text().split()] if txt.exists() else None
        for i, a in enumerate(read(path, ":")):
            frames.append(
                (
                    a,
                    float(a.get_potential_energy()),
                    a.get_forces(apply_constraint=False).copy(),
                    systems[i] if systems else str(i // 9),
                )
            )
        source = str(path.relative_to(ROOT))
    else:  # small EMT set built here
        from ase.build import add_adsorbate, fcc111
        from ase.calculators.emt import EMT

        rng = np.random.default_rng(0)
        for s, (metal, ads) in enumerate([(m, a) for m in ("Cu", "Pt", "Au") for a in ("O", "H", "C")]):
            base = fcc111(metal, size=(2, 2, 3), vacuum=6.0)
            add_adsorbate(base, ads, 1.6, "fcc")
            for _ in range(12):
                a = base.copy()
                a.positions += 0.08 * rng.normal(size=a.positions.shape)
                a.calc = EMT()
                forces = a.get_forces(apply_constraint=False).copy()
                frames.append((a, float(a.get_potential_energy()), forces, f"sys{s}"))
        source = "generated EMT slabs"
    order = sorted(set(f[3] for f in frames), key=lambda x: (len(x), x))
    test_sys = set(order[::5])
    train = [f[:3] for f in frames if f[3] not in test_sys][:n_train]
    test = [f[:3] for f in frames if f[3] in test_sys][:n_test]
    return train, test, source


def to_records(items, cutoff):
    graph = RadiusGraph(cutoff)
    return [
        graph(atoms_to_data(a, energy=e, forces=f, dtype=torch.float32, validate=False)) for a, e, f in items
    ]


def model_configs(dataset: str, r_max: float) -> dict:
    slab = dataset == "slabs"
    return {
        "mace": {
            "r_max": r_max,
            "hidden_irreps": "32x0e+32x1o",
            "max_ell": 2,
            "correlation": 2,
            "num_interactions": 2,
            "radial_MLP": [32, 32],
        },
        "equiformer_v2_molequi": {
            "r_max": r_max,
            "lmax": 2,
            "mmax": 2,
            "channels": 16,
            "num_layers": 2,
            "num_heads": 2,
            "hidden_channels": 16,
            "attn_channels": 8,
            "value_channels": 8,
            "ffn_channels": 16,
            "radial_hidden": 16,
            "element_channels": 8,
            "readout_hidden": 16,
        },
        "frame_averaging": {
            "r_max": r_max,
            "mode": "2d" if slab else "3d",
            "frames": "all",
            "frames_train": "random",
            "backbone": {"channels": 64, "num_layers": 3},
        },
        "egnn": {"r_max": r_max, "hidden_channels": 64, "num_layers": 4},
        # FAENet at its package's default sizes (--models ...,faenet): stochastic frames in training, all in eval
        "faenet": {"r_max": r_max, "frame_averaging": "2D" if slab else "3D"},
    }


def build(name: str, cfg: dict, stats):
    cls = get_model_class(name)
    return cls.from_config(cls.Config(**cfg), stats).float()


def run_one(name, cfg, train, test, stats, budget, force_weight, clock="cpu", seed=0):
    from torch_geometric.loader import DataLoader

    torch.manual_seed(seed)
    model = build(name, cfg, stats)
    n_params = sum(p.numel() for p in model.parameters())
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    loader = DataLoader(train, batch_size=8, shuffle=True)
    model.train()
    now = time.process_time if clock == "cpu" else time.perf_counter
    steps, t0, c0, done = 0, time.perf_counter(), time.process_time(), False
    start = now()
    while not done:
        for batch in loader:
            out = model(batch, compute_forces=True)
            n_atoms = torch.bincount(batch.batch).to(out[K.ENERGY].dtype)
            loss = (((out[K.ENERGY] - batch[K.ENERGY].view(-1)) / n_atoms) ** 2).mean() + force_weight * (
                (out[K.FORCES] - batch[K.FORCES]) ** 2
            ).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            steps += 1
            if now() - start > budget:
                done = True
                break
    train_s, train_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    model.eval()
    e_err, e_err_atom, f_err = [], [], []
    for batch in DataLoader(test, batch_size=16):
        out = model(batch, compute_forces=True)
        de = (out[K.ENERGY].detach() - batch[K.ENERGY].view(-1)).abs()
        e_err.append(de)
        e_err_atom.append(de / torch.bincount(batch.batch).to(de.dtype))
        f_err.append((out[K.FORCES].detach() - batch[K.FORCES]).abs().flatten())
    infer_batch = next(iter(DataLoader(test, batch_size=16)))
    best, best_cpu = float("inf"), float("inf")
    for _ in range(3):
        t, c = time.perf_counter(), time.process_time()
        model(infer_batch, compute_forces=True)
        best, best_cpu = min(best, time.perf_counter() - t), min(best_cpu, time.process_time() - c)
    return {
        "model": name,
        "params": n_params,
        "steps": steps,
        "train_cpu_s": train_cpu_s,
        "train_s": train_s,
        "E_MAE_meV": float(torch.cat(e_err).mean()) * 1000,
        "E_MAE_meV_per_atom": float(torch.cat(e_err_atom).mean()) * 1000,
        "F_MAE_meV/A": float(torch.cat(f_err).mean()) * 1000,
        "infer_ms_per_struct": best / infer_batch.num_graphs * 1000,
        "infer_cpu_ms_per_struct": best_cpu / infer_batch.num_graphs * 1000,
        "conservative": bool(getattr(model, "conservative", True)),
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--budget",
        type=float,
        default=60.0,
        help="training budget per model and dataset, seconds on the --budget-clock clock",
    )
    ap.add_argument(
        "--budget-clock",
        choices=("cpu", "wall"),
        default="cpu",
        help="cpu (default): process CPU time, the same compute for every model whatever the machine's load; "
        "wall: wall-clock seconds",
    )
    ap.add_argument("--n-train", type=int, default=200)
    ap.add_argument("--n-test", type=int, default=200)
    ap.add_argument(
        "--threads",
        type=int,
        default=1,
        help="1 by default: OpenMP threads on an oversubscribed machine slow training ~50x",
    )
    ap.add_argument("--force-weight", type=float, default=10.0)
    ap.add_argument("--r-max", type=float, default=5.0)
    ap.add_argument("--models", default="mace,equiformer_v2_molequi,frame_averaging,egnn")
    ap.add_argument("--datasets", default="rmd17_ethanol,slabs")
    ap.add_argument("--out", default="models", help="results name: bench_results/OUT.json (default models)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_start, wall_start = os.getloadavg(), time.perf_counter()
    rows, sources = [], {}
    for dataset in args.datasets.split(","):
        if dataset == "rmd17_ethanol":
            train_items, test_items, sources[dataset] = rmd17_ethanol(args.n_train, args.n_test)
        else:
            train_items, test_items, sources[dataset] = slabs(args.n_train, args.n_test)
        train, test = to_records(train_items, args.r_max), to_records(test_items, args.r_max)
        stats = compute_statistics(train)
        cfgs = model_configs(dataset, args.r_max)
        for name in args.models.split(","):
            row = {
                "dataset": dataset,
                "n_train": len(train),
                "n_test": len(test),
                **run_one(
                    name, cfgs[name], train, test, stats, args.budget, args.force_weight, args.budget_clock
                ),
            }
            rows.append(row)
            print(
                ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()),
                flush=True,
            )
    cols = [
        "dataset",
        "model",
        "params",
        "steps",
        "train_cpu_s",
        "train_s",
        "E_MAE_meV",
        "E_MAE_meV_per_atom",
        "F_MAE_meV/A",
        "infer_ms_per_struct",
    ]
    print_table(rows, cols)
    save(
        args.out,
        {
            "args": vars(args),
            "load_average_1_5_15_min": {"start": load_start, "end": os.getloadavg()},
            "total_wall_s": time.perf_counter() - wall_start,
            "sources": sources,
            "configs": {d: model_configs(d, args.r_max) for d in args.datasets.split(",")},
            "rows": rows,
        },
    )


if __name__ == "__main__":
    main()
