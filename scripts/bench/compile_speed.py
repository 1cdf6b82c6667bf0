"""torch.compile on CPU (issue 20 item 1): eager vs compiled, energy + forces and a force-training step, of a
quickstart-size MACE (``molequi quickstart``'s model: 32x0e+32x1o, L=2, correlation 3, 2 layers, radial MLP
[32, 32, 32]) and a default-size equiformer_v2_molequi (molequi's EquiformerV2-style variant; EquiformerV2 as
fairchem defines it, ``equiformer_v2``, is refused by torch.compile: ``EnergyModel.compile_refusal``), on 32
rMD17 ethanol molecules in one batch.

    python scripts/bench/compile_speed.py [--models mace,equiformer_v2_molequi] [--repeats 5] [--backend inductor]

energy+forces: eval mode, ``EnergyModel.compile_energies`` (forces are the autograd of the compiled per-atom
energies, as ``MolequiCalculator(compile=True)`` runs them). training step: train mode, zero_grad + energy
and force MSE loss + backward + Adam step, eager (double backward) vs ``EnergyModel.compile_training``
(``trainer.compile``: forces by torch.func inside one compiled graph). Both models start from the same
weights; before timing, the compiled forces and the compiled training gradients are compared with eager ones
(same weights, same batch). The first compiled call (tracing and code generation; Inductor also compiles in
worker processes whose CPU time is not in this process's) is reported apart; then ``--repeats`` interleaved
calls of each after one warm-up call, medians of wall and process CPU time. A slowdown is reported as one
(speedup < 1). Threads: ``--threads`` (default 1). JSON: bench_results/compile_speed.json.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ETHANOL_NPZ, interleaved, print_table, provenance, save  # noqa: E402

RSS_LIMIT_GIB = 8.0
MODELS = {
    "mace": {"name": "mace", "r_max": 5.0, "num_bessel": 8, "num_polynomial_cutoff": 5, "max_ell": 2,
             "hidden_irreps": "32x0e+32x1o", "correlation": 3, "num_interactions": 2, "MLP_irreps": "16x0e",
             "radial_MLP": [32, 32, 32]},
    "equiformer_v2_molequi": {"name": "equiformer_v2_molequi", "r_max": 5.0},
}


def _watchdog(limit_gib: float) -> None:
    """Exit the process (code 3) when its resident memory passes ``limit_gib`` (shared machine)."""
    def watch():
        while True:
            with open("/proc/self/status") as fh:
                rss = next(int(line.split()[1]) for line in fh if line.startswith("VmRSS"))
            if rss > limit_gib * 2**20:
                print(f"compile_speed: resident memory {rss / 2**20:.1f} GiB > {limit_gib} GiB, stopping",
                      file=sys.stderr, flush=True)
                os._exit(3)
            time.sleep(0.5)

    threading.Thread(target=watch, daemon=True).start()


def _timed(fn) -> dict:
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}


def bench_model(name: str, batch, energy, forces, args, dtype) -> list[dict]:
    from molequi import keys as K
    from molequi.config import model_section_from_dict
    from molequi.data.statistics import Statistics
    from molequi.models import build_model

    stats = Statistics(elements=[1, 6, 8], avg_num_neighbors=8.0)

    def build():
        torch.manual_seed(0)
        return build_model(model_section_from_dict(dict(MODELS[name])), stats).to(dtype)

    rows = []
    # ---- energy + forces (inference)
    eager, compiled = build().eval(), build().eval()
    compiled.compile_energies(backend=args.backend)
    first = _timed(lambda: compiled(batch, compute_forces=True))
    diff = float((compiled(batch, compute_forces=True)[K.FORCES] - eager(batch, compute_forces=True)[K.FORCES])
                 .abs().max())
    t = interleaved({"eager": lambda: eager(batch, compute_forces=True),
                     "compiled": lambda: compiled(batch, compute_forces=True)}, args.repeats)
    rows.append({"model": name, "task": "energy+forces", "first_compiled_call": first,
                 "max_abs_force_diff": diff, "times": t})

    # ---- training step
    eager, compiled = build().train(), build().train()
    compiled.compile_training(backend=args.backend)

    def loss_of(m):
        out = m(batch, compute_forces=True)
        return ((out[K.ENERGY] - energy) ** 2).mean() + ((out[K.FORCES] - forces) ** 2).mean()

    def grads(m):
        m.zero_grad(set_to_none=True)
        loss_of(m).backward()
        return {n: p.grad.detach().clone() for n, p in m.named_parameters() if p.grad is not None}

    first = _timed(lambda: grads(compiled))
    g_c, g_e = grads(compiled), grads(eager)
    rel = max(float((g_c[k] - g_e[k]).abs().max() / g_e[k].abs().max().clamp_min(1e-30)) for k in g_e)
    same_keys = g_c.keys() == g_e.keys()
    opts = {id(m): torch.optim.Adam(m.parameters(), lr=1e-4) for m in (eager, compiled)}

    def step(m):
        opt = opts[id(m)]
        opt.zero_grad(set_to_none=True)
        loss_of(m).backward()
        opt.step()

    t = interleaved({"eager": lambda: step(eager), "compiled": lambda: step(compiled)}, args.repeats)
    rows.append({"model": name, "task": "training step", "first_compiled_call": first,
                 "max_rel_grad_diff": rel, "same_parameters_with_gradients": same_keys, "times": t})
    for r in rows:
        e, c = r["times"]["eager"], r["times"]["compiled"]
        r["speedup_wall"] = e["median_wall_s"] / c["median_wall_s"]
        r["speedup_cpu"] = e["median_cpu_s"] / c["median_cpu_s"]
        print(f"{name} {r['task']}: first compiled call {r['first_compiled_call']['wall_s']:.1f} s wall / "
              f"{r['first_compiled_call']['cpu_s']:.1f} s CPU; "
              + (f"max |dF| {r['max_abs_force_diff']:.2e} eV/A" if "max_abs_force_diff" in r
                 else f"max relative gradient difference {r['max_rel_grad_diff']:.2e}"), flush=True)
    return rows


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", default="mace,equiformer_v2_molequi", help=f"comma-separated, of {', '.join(MODELS)}")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per variant after one warm-up (default 5)")
    p.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="precision (default float32)")
    p.add_argument("--threads", type=int, default=1, help="torch intra-op threads (default 1)")
    p.add_argument("--out", default="compile_speed", help="JSON name in bench_results/ (default compile_speed)")
    args = p.parse_args(argv)
    _watchdog(RSS_LIMIT_GIB)
    torch.set_num_threads(args.threads)

    from ase import Atoms
    from torch_geometric.data import Batch

    from molequi.data.records import atoms_to_data
    from molequi.graph.neighbors import RadiusGraph

    dtype = getattr(torch, args.dtype)
    d = np.load(ETHANOL_NPZ)
    frames = [Atoms(numbers=d["nuclear_charges"], positions=d["coords"][i]) for i in range(32)]
    graph = RadiusGraph(5.0)
    batch = Batch.from_data_list([graph(atoms_to_data(a, dtype=dtype)) for a in frames])
    kcal = 0.0433641  # rMD17 labels are kcal/mol (/A): eV
    energy = torch.tensor((d["energies"][:32] - d["energies"][:32].mean()) * kcal, dtype=dtype)
    forces = torch.tensor(d["forces"][:32].reshape(-1, 3) * kcal, dtype=dtype)

    rows = []
    for name in args.models.split(","):
        rows += bench_model(name, batch, energy, forces, args, dtype)
    table = [{"model": r["model"], "task": r["task"],
              "eager_wall_s": r["times"]["eager"]["median_wall_s"],
              "compiled_wall_s": r["times"]["compiled"]["median_wall_s"],
              "eager_cpu_s": r["times"]["eager"]["median_cpu_s"],
              "compiled_cpu_s": r["times"]["compiled"]["median_cpu_s"],
              "speedup_wall": r["speedup_wall"], "speedup_cpu": r["speedup_cpu"],
              "first_call_wall_s": r["first_compiled_call"]["wall_s"]} for r in rows]
    print(f"32 ethanol (288 atoms), {args.dtype}, backend {args.backend}, threads {torch.get_num_threads()}, "
          f"median of {args.repeats} after 1 warm-up; speedup = eager / compiled (< 1: compiled is slower)")
    print_table(table, list(table[0]))
    save(args.out, {"backend": args.backend, "dtype": args.dtype, "repeats": args.repeats, "system": "32 rMD17 "
                    "ethanol molecules, one batch (288 atoms)", "models": {m: MODELS[m] for m in
                                                                            args.models.split(",")},
                    "rows": rows,
                    "command": "python scripts/bench/compile_speed.py " + " ".join(argv or sys.argv[1:])},
         provenance(None, None, None, notes="molequi eager vs molequi compiled; no peer"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
