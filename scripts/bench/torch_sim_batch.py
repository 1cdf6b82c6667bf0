"""torch-sim with a molequi MACE: 64 systems in one batch vs one at a time (issue 20 item 4).

    python scripts/bench/torch_sim_batch.py [--systems 64] [--repeats 5] [--md-steps 20]

Quickstart-size MACE (32x0e+32x1o, max_ell 2, correlation 3, 2 layers, r_max 5 Å; random weights, float64)
on 64 rattled 32-atom Cu boxes (2x2x2 cubic cells). Timed, interleaved in one invocation, medians of
``--repeats`` (wall and process CPU time):
- static: energy + forces + stress of all systems: one batched torch-sim call vs 64 calls of one system vs the
  ASE calculator (MolequiCalculator) structure by structure;
- MD: ``--md-steps`` NVE steps of all systems: one batched torch-sim state vs 64 single-system states.
Threads: torch's default unless OMP_NUM_THREADS is set (the table states it). Writes
bench_results/torch_sim_batch.json and prints a table.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, provenance, save, wall_cpu_times  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--systems", type=int, default=64, help="number of systems (default 64)")
    p.add_argument("--repeats", type=int, default=5, help="timed repetitions per variant (default 5)")
    p.add_argument("--md-steps", type=int, default=20, help="NVE steps per MD measurement (default 20)")
    p.add_argument("--name", default="torch_sim_batch", help="result name under bench_results/")
    args = p.parse_args(argv)

    import torch_sim as ts
    from ase.build import bulk

    from molequi.calculators import MolequiCalculator
    from molequi.data.statistics import Statistics
    from molequi.interop.torch_sim import MolequiTorchSimModel
    from molequi.models.mace import MACE

    torch.manual_seed(0)
    cfg = MACE.Config(r_max=5.0, num_bessel=8, num_polynomial_cutoff=5, max_ell=2, hidden_irreps="32x0e+32x1o",
                      correlation=3, num_interactions=2)
    model = MACE.from_config(cfg, Statistics(elements=[29], avg_num_neighbors=40.0)).double().eval()
    frames = []
    for i in range(args.systems):
        a = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((2, 2, 2))
        a.rattle(0.05, seed=i)
        frames.append(a)
    device, dtype = torch.device("cpu"), torch.float64
    wrapped = MolequiTorchSimModel(model, dtype=dtype)
    batched = ts.initialize_state(frames, device, dtype)
    singles = [ts.initialize_state([a], device, dtype) for a in frames]
    calc = MolequiCalculator(model, skin=0.0)

    def ase_loop():
        for a in frames:
            calc.calculate(a, ["energy", "forces", "stress"])

    def nve(states):
        dt = torch.tensor(0.001 * ts.units.MetalUnits.time, dtype=dtype)
        kT = torch.tensor(300 * ts.units.MetalUnits.temperature, dtype=dtype)
        for state in states:
            init_fn, step_fn = ts.nve(model=wrapped, dt=dt, kT=kT)
            md = init_fn(state, seed=0)
            for _ in range(args.md_steps):
                md = step_fn(md, dt=dt)

    # same numbers first: the batched call equals the single-system calls
    out = wrapped(batched)
    one = [wrapped(s) for s in singles[:4]]
    err = max(abs(float(out["energy"][b]) - float(o["energy"][0])) for b, o in enumerate(one))

    variants = {
        "static, one batch of all": lambda: wrapped(batched),
        "static, one system per call": lambda: [wrapped(s) for s in singles],
        "static, ASE calculator loop": ase_loop,
        f"NVE {args.md_steps} steps, one batch": lambda: nve([batched]),
        f"NVE {args.md_steps} steps, one system at a time": lambda: nve(singles),
    }
    results = {k: {"median_s": [], "median_cpu_s": []} for k in variants}
    for _ in range(args.repeats):  # interleaved: each round times every variant once
        for name, fn in variants.items():
            t = wall_cpu_times(fn, repeats=1, warmup=0)
            results[name]["median_s"].append(t["median_s"])
            results[name]["median_cpu_s"].append(t["median_cpu_s"])
    import statistics

    rows = []
    for name, r in results.items():
        rows.append({"variant": name, "wall_s": statistics.median(r["median_s"]),
                     "cpu_s": statistics.median(r["median_cpu_s"]), "walls": r["median_s"], "cpus": r["median_cpu_s"]})
    base = {r["variant"]: r for r in rows}
    for r in rows:
        ref = base["static, one batch of all"] if r["variant"].startswith("static") else base[
            f"NVE {args.md_steps} steps, one batch"]
        r["wall_vs_batched"] = r["wall_s"] / ref["wall_s"]
        r["cpu_vs_batched"] = r["cpu_s"] / ref["cpu_s"]
    print(f"{args.systems} Cu32 systems, quickstart-size MACE float64, torch threads {torch.get_num_threads()}; "
          f"batched vs single energies agree to {err:.2e} eV")
    print_table(rows, ["variant", "wall_s", "cpu_s", "wall_vs_batched", "cpu_vs_batched"])
    save(args.name, {"systems": args.systems, "atoms_per_system": 32, "repeats": args.repeats,
                     "md_steps": args.md_steps, "model": "MACE 32x0e+32x1o L2 corr3 2 layers r_max 5, float64",
                     "max_abs_energy_diff_batched_vs_single_eV": err, "rows": rows,
                     "command": "python scripts/bench/torch_sim_batch.py " + " ".join(argv or sys.argv[1:])},
         provenance(None, None, None, notes="torch-sim " + _ts_version() + " as the engine; no peer model"))
    return 0


def _ts_version() -> str:
    from importlib.metadata import version

    return version("torch-sim-atomistic")


if __name__ == "__main__":
    raise SystemExit(main())
