"""Batched prediction (``molequi.calculators.predict``) against one ``MolequiCalculator`` call per structure.

    python scripts/bench/batched_predict.py                       # 1000 rMD17 ethanol frames, MACE, float32
    python scripts/bench/batched_predict.py --dtype float64 --batch-sizes 8,32,128

Model: MACE at the hyperparameters of ``mace_speed.py`` (64x0e+64x1o, max_ell 3, correlation 3, 2
interactions, r_max 5 Å), elements H C O, random initialisation (weights do not change the cost).
Timed, end to end from ``ase.Atoms``: (a) a loop that sets ``atoms.calc`` and calls ``get_forces`` for each
frame (neighbour list, record, model, conversion back - what a user gets with a calculator), (b) ``predict``
(graphs for all frames, PyG DataLoader batches, model, split back per frame) for each batch size.
Also checks that both give the same energies and forces. JSON in bench_results/batched_predict.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ETHANOL_NPZ  # noqa: E402
from _common import MACE_HYPER as HYPER  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--frames", type=int, default=1000)
    parser.add_argument("--npz", default=ETHANOL_NPZ)
    parser.add_argument("--batch-sizes", default="32", help="comma list, e.g. 8,32,128")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default=str(ROOT / "bench_results" / "batched_predict.json"))
    args = parser.parse_args()

    import torch
    from ase import Atoms

    from molequi.calculators import MolequiCalculator, predict
    from molequi.data.statistics import Statistics
    from molequi.models.mace import MACE

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    d = np.load(args.npz)
    z, coords = d["nuclear_charges"], d["coords"]
    n = min(args.frames, len(coords))
    frames = [Atoms(numbers=z, positions=coords[i]) for i in range(n)]
    dtype = getattr(torch, args.dtype)
    model = MACE.from_config(MACE.Config(**HYPER), Statistics(elements=[1, 6, 8], avg_num_neighbors=8.0))
    model = model.to(dtype).eval()

    calc = MolequiCalculator(model)
    frames[0].calc = calc
    frames[0].get_forces()  # warm-up
    frames[0].calc = None
    t0, c0 = time.perf_counter(), time.process_time()
    ref_e, ref_f = [], []
    for atoms in frames:
        atoms.calc = calc
        ref_f.append(atoms.get_forces())
        ref_e.append(atoms.get_potential_energy())
        atoms.calc = None
    per_call_s = time.perf_counter() - t0
    per_call_cpu = time.process_time() - c0
    print(
        f"one calculator call per structure: {n} frames in {per_call_s:.2f} s "
        f"({n / per_call_s:.1f} structures/s)",
        flush=True,
    )

    rows = [
        dict(
            method="calculator loop",
            batch_size=1,
            wall_s=per_call_s,
            structures_per_s=n / per_call_s,
            speedup=1.0,
            cpu_s=per_call_cpu,
            cpu_speedup=1.0,
        )
    ]
    for bs in (int(b) for b in args.batch_sizes.split(",")):
        predict(model, frames[:bs], batch_size=bs)  # warm-up
        t0, c0 = time.perf_counter(), time.process_time()
        res = predict(model, frames, batch_size=bs)
        wall = time.perf_counter() - t0
        cpu = time.process_time() - c0
        de = max(abs(r["energy"] - e) for r, e in zip(res, ref_e))
        df = max(float(np.abs(r["forces"] - f).max()) for r, f in zip(res, ref_f))
        rows.append(
            dict(
                method="predict",
                batch_size=bs,
                wall_s=wall,
                structures_per_s=n / wall,
                speedup=per_call_s / wall,
                cpu_s=cpu,
                cpu_speedup=per_call_cpu / cpu,
                max_abs_energy_diff_eV=de,
                max_abs_force_diff_eV_A=df,
            )
        )
        print(
            f"predict batch {bs}: {wall:.2f} s ({n / wall:.1f} structures/s), {per_call_s / wall:.2f}x; "
            f"max |dE| {de:.2e} eV, max |dF| {df:.2e} eV/Å",
            flush=True,
        )

    print(f"\n{'method':16s} {'batch':>5s} {'wall s':>8s} {'struct/s':>9s} {'speed-up':>8s}")
    for r in rows:
        print(
            f"{r['method']:16s} {r['batch_size']:5d} {r['wall_s']:8.2f} {r['structures_per_s']:9.1f} "
            f"{r['speedup']:7.2f}x"
        )
    meta = dict(
        frames=n,
        dtype=args.dtype,
        threads=args.threads,
        hyperparameters=HYPER,
        machine=platform.node(),
        cpu_count=os.cpu_count(),
        load_average=os.getloadavg(),
        torch=torch.__version__,
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    os.replace(tmp, out)
    print(f"\nsaved {out}")
    lines = [
        "| method | batch size | wall s | structures/s | speed-up (wall) | CPU s | speed-up (CPU) "
        "| max abs dE eV | max abs dF eV/Å |",
        "|" + " --- |" * 9,
    ]
    for r in rows:
        de, df = r.get("max_abs_energy_diff_eV"), r.get("max_abs_force_diff_eV_A")
        lines.append(
            f"| {r['method']} | {r['batch_size']} | {r['wall_s']:.2f} | {r['structures_per_s']:.1f} "
            f"| {r['speedup']:.2f}x | {r['cpu_s']:.2f} | {r['cpu_speedup']:.2f}x "
            f"| {'-' if de is None else f'{de:.1e}'} "
            f"| {'-' if df is None else f'{df:.1e}'} |"
        )
    md = out.with_suffix(".md")
    header = (
        f"# Batched prediction vs one calculator call per structure\n\n"
        f"`python scripts/bench/batched_predict.py {' '.join(sys.argv[1:])}`; {meta['date']}; {n} rMD17 "
        f"ethanol frames, MACE (random weights) in {args.dtype}, {args.threads} thread(s); load average "
        f"{meta['load_average'][0]:.1f} on {meta['cpu_count']} cores.\n\n"
    )
    tmp = md.with_name(f".{md.name}.tmp{os.getpid()}")
    tmp.write_text(header + "\n".join(lines) + "\n")
    os.replace(tmp, md)
    print(f"saved {md}")


if __name__ == "__main__":
    main()
