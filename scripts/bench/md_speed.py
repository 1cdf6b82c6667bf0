"""MD throughput of MolequiCalculator (MACE) against mace-torch's MACECalculator: same run, same settings.

    bash scripts/bench/setup_mace_torch.sh        # once (the script runs it itself if the venv is missing)
    python scripts/bench/md_speed.py              # table on stdout, JSON in bench_results/md_speed.json
    python scripts/bench/md_speed.py --systems ethanol,cu_64 --steps 20 --dtype float64

What is timed: ASE velocity Verlet (0.5 fs, Maxwell-Boltzmann 300 K, seed 0) driving the calculator: one
warm-up step, then ``steps`` timed steps (each = one energy + forces call, plus stress for periodic cells -
both calculators compute stress for periodic structures). Reported: steps/s and atom-steps/s
(= atoms x steps / s) from the median wall time of one step (robust to other processes stealing the CPU;
the mean rate is in the JSON too), the same from the process's CPU time (less sensitive to a shared machine),
and the ratios to mace-torch in the same run. A Markdown table goes next to the JSON.

Models: MACE with hidden 64x0e+64x1o, max_ell 3, correlation 3, 2 interactions, r_max 5 Å, 8 Bessel, p = 5,
radial MLP [64, 64, 64], MLP readout 16x0e (the hyperparameters of ``mace_speed.py``), elements H C O Cu,
random initialisation on both sides, avg_num_neighbors from the structure. molequi runs with the neighbour
list reused (Verlet skin 0.5 Å) and rebuilt every step (skin 0); MACECalculator rebuilds every step.

Systems: ``ethanol`` (rMD17 frame, 9 atoms, no cell), ``cu_64`` / ``cu_512`` / ``cu_4096`` (fcc Cu primitive
cell 4^3 / 8^3 / 16^3, a = 3.61 Å), ``water_63`` / ``water_513`` / ``water_4095`` (periodic boxes at 1 g/cm^3,
molecules on a grid with random orientations). Every (implementation, system) runs in a fresh subprocess
(mace-torch with the python of ${MACE_VENV:-~/.cache/molequi/mace-venv}) with ``torch.set_num_threads``.
Default step counts shrink with size (``--steps`` is for ethanol; larger systems get fewer, at least 2).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ETHANOL_NPZ, build_mace_torch  # noqa: E402
from _common import MACE_HYPER as HYPER  # noqa: E402

ELEMENTS = [1, 6, 8, 29]
SYSTEMS = ["ethanol", "cu_64", "cu_512", "cu_4096", "water_63", "water_513", "water_4095"]
DEFAULT_SYSTEMS = "ethanol,cu_64,water_63,cu_512,water_513,cu_4096"


# ----------------------------------------------------------------------------------------------- structures
def water_box(n_mol: int, seed: int = 0):
    import numpy as np
    from ase import Atoms
    from ase.build import molecule

    rng = np.random.default_rng(seed)
    length = (n_mol * 18.015 / 6.02214076e23) ** (1 / 3) * 1e8  # Å at 1 g/cm^3
    grid = math.ceil(n_mol ** (1 / 3))
    points = [(i, j, k) for i in range(grid) for j in range(grid) for k in range(grid)]
    chosen = rng.choice(len(points), n_mol, replace=False)
    water = Atoms(cell=[length] * 3, pbc=True)
    h2o = molecule("H2O")
    h2o.positions -= h2o.positions[0]
    for idx in sorted(chosen):
        m = h2o.copy()
        m.rotate(rng.uniform(0, 360), rng.normal(size=3), center=(0, 0, 0))
        m.positions += (np.array(points[idx]) + 0.5) * length / grid
        water += m
    water.wrap()
    return water


def make_structure(name: str, npz: str = ETHANOL_NPZ):
    import numpy as np
    from ase import Atoms
    from ase.build import bulk

    if name == "ethanol":
        d = np.load(npz)
        return Atoms(numbers=d["nuclear_charges"], positions=d["coords"][0])
    kind, n = name.split("_")
    n = int(n)
    if kind == "cu":
        k = round(n ** (1 / 3))
        return bulk("Cu", "fcc", a=3.61).repeat(k)
    if kind == "water":
        return water_box(n // 3)
    raise SystemExit(f"unknown system {name}; valid: {', '.join(SYSTEMS)}")


def default_steps(n_atoms: int, base: int) -> int:
    """Fewer steps for bigger systems: about base * 9 / n_atoms^0.75, at least 2."""
    return max(2, int(base * (9 / n_atoms) ** 0.75))


# ----------------------------------------------------------------------------------------------- workers
def _avg_neighbors(atoms) -> float:
    from ase.neighborlist import neighbor_list

    i = neighbor_list("i", atoms, HYPER["r_max"])
    return max(len(i) / len(atoms), 1.0)


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _run_md(atoms, calc, steps: int) -> dict:
    import numpy as np
    from ase import units
    from ase.md.velocitydistribution import Stationary
    from ase.md.verlet import VelocityVerlet

    try:
        from ase.md.velocitydistribution import thermalize_momenta as mb
    except ImportError:  # older ase in the mace-torch venv
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution as mb
    atoms.calc = calc
    mb(atoms, temperature_K=300, rng=np.random.default_rng(0))
    Stationary(atoms)
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    t0 = time.perf_counter()
    dyn.run(1)  # warm-up: first force call (graph, allocations) and one step
    warm = time.perf_counter() - t0
    stamps, cpu = [], []

    def stamp():
        stamps.append(time.perf_counter())
        cpu.append(time.process_time())

    dyn.attach(stamp, interval=1)
    t0 = time.perf_counter()
    stamp()
    dyn.run(steps)  # nsteps > 0 now, so ASE calls the observer only after each step
    wall = time.perf_counter() - t0
    median = float(np.median(np.diff(stamps)))
    median_cpu = float(np.median(np.diff(cpu)))
    n = len(atoms)
    return dict(
        n_atoms=n,
        steps=steps,
        wall_s=wall,
        warmup_s=warm,
        median_step_s=median,
        steps_per_s=1 / median,
        atom_steps_per_s=n / median,
        mean_steps_per_s=steps / wall,
        median_step_cpu_s=median_cpu,
        cpu_steps_per_s=1 / median_cpu,
        cpu_atom_steps_per_s=n / median_cpu,
        epot_final=float(atoms.get_potential_energy()),
        peak_rss_mb=_peak_rss_mb(),
    )


def worker_molequi(structure: str, dtype_name: str, steps: int, threads: int, skin: float) -> dict:
    import ase.io
    import torch

    from molequi.calculators import MolequiCalculator
    from molequi.data.statistics import Statistics
    from molequi.models.mace import MACE

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    atoms = ase.io.read(structure)
    stats = Statistics(elements=ELEMENTS, avg_num_neighbors=_avg_neighbors(atoms))
    model = MACE.from_config(MACE.Config(**HYPER), stats).to(getattr(torch, dtype_name)).eval()
    calc = MolequiCalculator(model, skin=skin)
    res = _run_md(atoms, calc, steps)
    res.update(
        impl=f"molequi skin={skin}", nl_builds=calc.neighbors.n_builds, nl_calls=calc.neighbors.n_calls
    )
    return res


def worker_mace(structure: str, dtype_name: str, steps: int, threads: int, skin: float) -> dict:
    import ase.io
    import mace  # noqa: F401  (first: makes e3nn 0.4.4 importable under torch >= 2.6)
    import torch
    from mace.calculators import MACECalculator

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    dtype = getattr(torch, dtype_name)
    torch.set_default_dtype(dtype)
    atoms = ase.io.read(structure)
    model = build_mace_torch(ELEMENTS, _avg_neighbors(atoms), dtype)
    calc = MACECalculator(models=model, device="cpu", default_dtype=dtype_name)
    res = _run_md(atoms, calc, steps)
    res.update(impl=f"mace-torch {getattr(mace, '__version__', '?')}")
    return res


# ----------------------------------------------------------------------------------------------- driver
def ensure_mace_venv(python: str) -> bool:
    if os.path.exists(python):
        return True
    setup = ROOT / "scripts" / "bench" / "setup_mace_torch.sh"
    print(f"no mace-torch venv at {python}; creating it with {setup}", file=sys.stderr)
    proc = subprocess.run(["bash", str(setup)], text=True)
    return proc.returncode == 0 and os.path.exists(python)


def run_worker(python: str, impl: str, path: str, dtype: str, steps: int, skin: float, args) -> dict:
    cmd = [
        python,
        os.path.abspath(__file__),
        "--worker",
        impl,
        "--structure",
        path,
        "--dtype",
        dtype,
        "--steps",
        str(steps),
        "--threads",
        str(args.threads),
        "--skin",
        str(skin),
    ]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    if impl == "molequi":
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {args.timeout} s"}
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        return {"error": lines[-1] if lines else f"exit {proc.returncode}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--systems", default=DEFAULT_SYSTEMS, help=f"comma list from {', '.join(SYSTEMS)}")
    parser.add_argument(
        "--steps",
        type=int,
        default=60,
        help="timed MD steps for ethanol; bigger systems get fewer (n^-0.75 scaling, >= 2)",
    )
    parser.add_argument("--fixed-steps", action="store_true", help="use --steps for every system")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads per worker (1: on a shared 2-core machine, 2 threads thrash)",
    )
    parser.add_argument("--impls", default="molequi,molequi-noreuse,mace-torch")
    parser.add_argument("--mace-python", default=None, help="python of the mace-torch venv")
    parser.add_argument("--out", default=str(ROOT / "bench_results" / "md_speed.json"))
    parser.add_argument("--timeout", type=int, default=1800, help="seconds per worker")
    parser.add_argument("--worker", choices=["molequi", "mace-torch"], help=argparse.SUPPRESS)
    parser.add_argument("--structure", help=argparse.SUPPRESS)
    parser.add_argument("--skin", type=float, default=0.5, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.worker:
        fn = worker_molequi if args.worker == "molequi" else worker_mace
        print(json.dumps(fn(args.structure, args.dtype, args.steps, args.threads, args.skin)))
        return

    venv = os.environ.get("MACE_VENV", os.path.expanduser("~/.cache/molequi/mace-venv"))
    mace_python = args.mace_python or os.path.join(venv, "bin", "python")
    impls = args.impls.split(",")
    if "mace-torch" in impls and not ensure_mace_venv(mace_python):
        print("mace-torch venv unavailable: measuring molequi only", file=sys.stderr)
        impls.remove("mace-torch")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for system in args.systems.split(","):
            import ase.io

            atoms = make_structure(system)
            path = os.path.join(tmp, f"{system}.extxyz")
            ase.io.write(path, atoms)
            steps = args.steps if args.fixed_steps else default_steps(len(atoms), args.steps)
            for impl in impls:
                python = mace_python if impl == "mace-torch" else sys.executable
                worker = "mace-torch" if impl == "mace-torch" else "molequi"
                skin = 0.0 if impl == "molequi-noreuse" else 0.5
                res = run_worker(python, worker, path, args.dtype, steps, skin, args)
                res.update(system=system, impl_key=impl, dtype=args.dtype, n_atoms=len(atoms), steps=steps)
                rows.append(res)
                print(
                    f"  {system:10s} {impl:16s} "
                    + (
                        f"{res['steps_per_s']:.3f} steps/s" if "steps_per_s" in res else res.get("error", "?")
                    ),
                    file=sys.stderr,
                    flush=True,
                )
    ref = {r["system"]: r for r in rows if r["impl_key"] == "mace-torch" and "steps_per_s" in r}
    for r in rows:
        if "steps_per_s" in r and r["system"] in ref:
            r["speedup_vs_mace_torch"] = r["steps_per_s"] / ref[r["system"]]["steps_per_s"]
            r["cpu_speedup_vs_mace_torch"] = r["cpu_steps_per_s"] / ref[r["system"]]["cpu_steps_per_s"]
    text = table(rows)
    print("\n" + text)
    meta = dict(
        hyperparameters=HYPER,
        elements=ELEMENTS,
        dtype=args.dtype,
        threads=args.threads,
        timestep_fs=0.5,
        machine=platform.node(),
        cpu_count=os.cpu_count(),
        load_average=os.getloadavg(),
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    )
    out = Path(args.out)
    write_json(out, {"meta": meta, "results": rows})
    md = out.with_suffix(".md")
    header = (
        f"# MD throughput: MolequiCalculator vs mace-torch MACECalculator\n\n"
        f"`python scripts/bench/md_speed.py {' '.join(sys.argv[1:])}`; {meta['date']}; dtype {args.dtype}, "
        f"{args.threads} thread(s) per process, velocity Verlet 0.5 fs, median time per step. "
        f"Load average when written: {meta['load_average'][0]:.1f} on {meta['cpu_count']} cores "
        f"(shared machine: wall-clock rates are noisy, CPU-time rates less so).\n\n"
    )
    tmp = md.with_name(f".{md.name}.tmp{os.getpid()}")
    tmp.write_text(header + text)
    os.replace(tmp, md)
    print(f"saved {md}")


def table(rows: list[dict]) -> str:
    """Markdown table: wall-clock rates and CPU-time rates (the latter robust to a shared machine)."""
    head = (
        "| system | impl | atoms | steps | steps/s (wall) | atom-steps/s (wall) | vs mace-torch (wall) "
        "| steps/s (CPU) | atom-steps/s (CPU) | vs mace-torch (CPU) | NL builds/calls | peak MB |"
    )
    lines = [head, "|" + " --- |" * 12]
    for r in rows:
        if "steps_per_s" not in r:
            lines.append(f"| {r['system']} | {r['impl_key']} | error: {r.get('error')} |" + " |" * 9)
            continue
        wall = f"{r['speedup_vs_mace_torch']:.2f}x" if "speedup_vs_mace_torch" in r else "-"
        cpu = f"{r['cpu_speedup_vs_mace_torch']:.2f}x" if "cpu_speedup_vs_mace_torch" in r else "-"
        builds = f"{r['nl_builds']}/{r['nl_calls']}" if "nl_builds" in r else "-"
        lines.append(
            f"| {r['system']} | {r['impl_key']} | {r['n_atoms']} | {r['steps']} | {r['steps_per_s']:.4g} "
            f"| {r['atom_steps_per_s']:.4g} | {wall} | {r['cpu_steps_per_s']:.4g} "
            f"| {r['cpu_atom_steps_per_s']:.4g} "
            f"| {cpu} | {builds} | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    print(f"\nsaved {path}")


if __name__ == "__main__":
    main()
