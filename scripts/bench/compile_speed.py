"""torch.compile on CPU (issue 20 item 1): a quickstart-size MACE, energy + forces of 32 rMD17 ethanol
molecules in one batch, eager vs ``EnergyModel.compile_energies`` (Inductor, dynamic shapes).

    python scripts/bench/compile_speed.py [--repeats 10] [--backend inductor]

Reports the first compiled call (tracing + code generation), then interleaved medians of ``--repeats`` calls
of each (wall and process CPU time), and the largest force difference between the two. Threads: torch's
default unless OMP_NUM_THREADS is set. JSON: bench_results/compile_speed.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ETHANOL_NPZ, print_table, provenance, save, wall_cpu_times  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=10, help="timed calls per variant (default 10)")
    p.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    p.add_argument("--dtype", default="float32", choices=["float32", "float64"], help="precision (default float32)")
    args = p.parse_args(argv)

    from ase import Atoms
    from torch_geometric.data import Batch

    from molequi import keys as K
    from molequi.data.records import atoms_to_data
    from molequi.data.statistics import Statistics
    from molequi.graph.neighbors import RadiusGraph
    from molequi.models.mace import MACE

    dtype = getattr(torch, args.dtype)
    d = np.load(ETHANOL_NPZ)
    frames = [Atoms(numbers=d["nuclear_charges"], positions=d["coords"][i]) for i in range(32)]
    graph = RadiusGraph(5.0)
    batch = Batch.from_data_list([graph(atoms_to_data(a, dtype=dtype)) for a in frames])
    cfg = MACE.Config(r_max=5.0, num_bessel=8, num_polynomial_cutoff=5, max_ell=2, hidden_irreps="32x0e+32x1o",
                      correlation=3, num_interactions=2)
    stats = Statistics(elements=[1, 6, 8], avg_num_neighbors=8.0)
    torch.manual_seed(0)
    eager = MACE.from_config(cfg, stats).to(dtype).eval()
    compiled = MACE.from_config(cfg, stats).to(dtype).eval()
    compiled.load_state_dict(eager.state_dict())
    compiled.compile_energies(backend=args.backend)

    def call(m):
        return m(batch, compute_forces=True)

    t0, c0 = time.perf_counter(), time.process_time()
    out_c = call(compiled)
    first = {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0}
    out_e = call(eager)
    diff = float((out_c[K.FORCES] - out_e[K.FORCES]).abs().max())
    times = {"eager": {"wall": [], "cpu": []}, "compiled": {"wall": [], "cpu": []}}
    for _ in range(args.repeats):
        for name, m in (("eager", eager), ("compiled", compiled)):
            t = wall_cpu_times(lambda m=m: call(m), repeats=1, warmup=0)
            times[name]["wall"].append(t["median_s"])
            times[name]["cpu"].append(t["median_cpu_s"])
    rows = [{"variant": name, "wall_s": statistics.median(v["wall"]), "cpu_s": statistics.median(v["cpu"]),
             "walls": v["wall"], "cpus": v["cpu"]} for name, v in times.items()]
    for r in rows:
        r["speedup_wall"] = rows[0]["wall_s"] / r["wall_s"]
        r["speedup_cpu"] = rows[0]["cpu_s"] / r["cpu_s"]
    print(f"32 ethanol, MACE 32x0e+32x1o L2 corr3 2 layers, {args.dtype}, threads {torch.get_num_threads()}; "
          f"first compiled call {first['wall_s']:.1f} s wall / {first['cpu_s']:.1f} s CPU; max |dF| {diff:.2e} eV/Å")
    print_table(rows, ["variant", "wall_s", "cpu_s", "speedup_wall", "speedup_cpu"])
    save("compile_speed", {"backend": args.backend, "dtype": args.dtype, "repeats": args.repeats,
                           "first_compiled_call": first, "max_abs_force_diff": diff, "rows": rows,
                           "command": "python scripts/bench/compile_speed.py " + " ".join(argv or sys.argv[1:])},
         provenance(None, None, None, notes="molequi eager vs molequi compiled; no peer"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
