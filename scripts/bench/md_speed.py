"""MD throughput of MolequiCalculator against mace-torch's MACECalculator: same model weights, same run.

    PY=$(bash scripts/bench/setup_peers.sh mace | tail -1)
    nice -n 10 python scripts/bench/md_speed.py --mace-python $PY   # table, bench_results/md_speed.{json,md}
    python scripts/bench/md_speed.py --systems ethanol,cu_64 --steps 30 --dtype float64 --mace-python $PY

Model: one mace-torch ScaleShiftMACE (hidden 64x0e+64x1o, max_ell 3, correlation 3, 2 interactions, r_max 5 Å,
8 Bessel, p = 5, radial MLP [64, 64, 64], MLP readout 16x0e: ``_common.MACE_HYPER``; elements H C O Cu,
mace-torch's own initialisation, seed 0) built and saved in the mace-torch python; MACECalculator loads that
file and molequi imports it once (``molequi.interop.mace.import_mace_checkpoint``, float64 weights; every
molequi worker loads that checkpoint), so both sides compute the same function.
The energy and forces of the first structure are compared between the sides before anything is timed.

What is timed: ASE velocity Verlet (0.5 fs, Maxwell-Boltzmann 300 K from seed 0, the same ASE on both sides)
driving the calculator: one warm-up step, then ``steps`` timed steps (each = one energy + forces call, plus
stress for periodic cells: both calculators compute it). Per step, the wall time and the process CPU time are
recorded; the table gives medians (steps/s = 1 / median step time) and the spread (quartiles, min, max) is in
the JSON. Ratios are molequi's rate over mace-torch's (above 1: molequi faster).

Implementations: ``molequi-noreuse`` rebuilds the neighbour list every step, as MACECalculator does (the
like-for-like comparison); ``molequi`` reuses it with a 0.5 Å Verlet skin (reported separately);
``mace-torch``.

Interleaving: per system, every implementation runs in its own worker process (fresh per system, one torch
thread, ``--mem-limit-gb`` address-space limit); all workers of a system are started together and take turns
in blocks of ``--block`` steps (order reversed every round), so load changes on the shared machine hit every
implementation alike. Systems above ``--sequential-above`` atoms run their workers one after the other instead
(one alive at a time: both together would not fit in memory next to other jobs); the JSON records which.

Systems: ``ethanol`` (rMD17 frame, 9 atoms, no cell), ``cu_64`` / ``cu_512`` / ``cu_4096`` (fcc Cu primitive
cell 4^3 / 8^3 / 16^3, a = 3.61 Å), ``water_63`` / ``water_513`` / ``water_4095`` (periodic boxes at 1 g/cm^3,
molecules on a grid with random orientations). Timed steps: ``--steps`` for ethanol, fewer for bigger systems
(n^-0.75), never fewer than ``--min-steps`` (20).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ETHANOL_NPZ, address_space_limit, build_mace_torch, peak_rss_mb  # noqa: E402
from _common import MACE_HYPER as HYPER  # noqa: E402

ELEMENTS = [1, 6, 8, 29]
AVG_NEIGHBORS = 30.0  # one model for every system (the normalisation constant does not change the cost)
SYSTEMS = ["ethanol", "cu_64", "cu_512", "cu_4096", "water_63", "water_513", "water_4095"]
DEFAULT_SYSTEMS = "ethanol,cu_64,water_63,cu_512,water_513,cu_4096"
IMPLS = ("molequi-noreuse", "molequi", "mace-torch")
MARK = "@@json "  # prefix of the workers' answer lines (the libraries may print to stdout too)


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


def default_steps(n_atoms: int, base: int, floor: int) -> int:
    """Fewer steps for bigger systems: about base * (9 / n_atoms)^0.75, at least ``floor``."""
    return max(floor, int(base * (9 / n_atoms) ** 0.75))


def spread(values: list[float]) -> dict:
    """Median, quartiles, min and max of ``values``."""
    import numpy as np

    q = np.percentile(values, [0, 25, 50, 75, 100])
    return dict(min=float(q[0]), p25=float(q[1]), median=float(q[2]), p75=float(q[3]), max=float(q[4]))


# ----------------------------------------------------------------------------------------------- workers
def build_model_file(out: str, dtype_name: str) -> None:
    """mace-torch side: the ScaleShiftMACE of ``_common.build_mace_torch`` (mace-torch's initialisation,
    seed 0), saved with ``torch.save`` as mace_run_train saves a model."""
    import mace  # noqa: F401  (first: makes e3nn 0.4.4 importable under torch >= 2.6)
    import torch

    torch.manual_seed(0)
    dtype = getattr(torch, dtype_name)
    torch.set_default_dtype(dtype)
    torch.save(build_mace_torch(ELEMENTS, AVG_NEIGHBORS, dtype), out)


def make_calculator(impl: str, model_file: str, dtype_name: str, mace_python: str):

    if impl == "mace-torch":
        import mace  # noqa: F401
        from mace.calculators import MACECalculator

        return MACECalculator(model_paths=model_file, device="cpu", default_dtype=dtype_name), (
            f"mace-torch {mace.__version__}"
        )
    import torch

    from molequi.calculators import MolequiCalculator

    skin = 0.0 if impl == "molequi-noreuse" else 0.5
    calc = MolequiCalculator.from_checkpoint(molequi_checkpoint(model_file), dtype=getattr(torch, dtype_name),
                                             skin=skin, dispersion=None)
    return calc, f"molequi skin={skin}"


def molequi_checkpoint(model_file: str) -> str:
    """The molequi checkpoint of the imported mace-torch model (written once by the driver)."""
    return model_file + ".molequi.pt"


def serve(impl: str, structure: str, model_file: str, dtype_name: str, mace_python: str) -> None:
    """Worker: set up the calculator and the MD, then answer the driver's commands (one JSON a line on
    stdin): ``{"cmd": "run", "steps": k}`` runs k timed steps, ``{"cmd": "quit"}`` reports and exits."""
    import ase.io
    import numpy as np
    import torch
    from ase import units
    from ase.md.velocitydistribution import Stationary, thermalize_momenta
    from ase.md.verlet import VelocityVerlet

    def answer(obj):
        print(MARK + json.dumps(obj), flush=True)

    torch.set_num_threads(1)
    torch.manual_seed(0)
    if impl == "mace-torch":
        torch.set_default_dtype(getattr(torch, dtype_name))
    t0 = time.perf_counter()
    calc, label = make_calculator(impl, model_file, dtype_name, mace_python)
    atoms = ase.io.read(structure)
    atoms.calc = calc
    first = dict(energy=float(atoms.get_potential_energy()), forces=atoms.get_forces().reshape(-1).tolist())
    thermalize_momenta(atoms, temperature_K=300, rng=np.random.default_rng(0))
    Stationary(atoms)
    dyn = VelocityVerlet(atoms, timestep=0.5 * units.fs)
    dyn.run(1)  # warm-up: one step after the first force call
    answer(dict(ready=True, impl=label, setup_s=time.perf_counter() - t0, first=first))
    wall, cpu = [], []
    stamps = []

    def stamp():
        stamps.append((time.perf_counter(), time.process_time()))

    dyn.attach(stamp, interval=1)
    for line in sys.stdin:
        cmd = json.loads(line)
        if cmd["cmd"] == "quit":
            break
        stamps.clear()
        stamp()
        dyn.run(cmd["steps"])  # nsteps > 0: ASE calls the observer after each step
        for (w0, c0), (w1, c1) in zip(stamps, stamps[1:]):
            wall.append(w1 - w0)
            cpu.append(c1 - c0)
        answer(dict(done=len(wall)))
    neighbors = getattr(calc, "neighbors", None)
    answer(
        dict(
            impl=label,
            step_wall_s=wall,
            step_cpu_s=cpu,
            epot_final=float(atoms.get_potential_energy()),
            peak_rss_mb=peak_rss_mb(),
            nl_builds=neighbors.n_builds if neighbors is not None else None,
            nl_calls=neighbors.n_calls if neighbors is not None else None,
        )
    )


def available_gb() -> float:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return float("inf")


def watch_memory(min_gb: float) -> None:
    """Daemon thread: kill the live workers when the shared machine's available memory falls below
    ``min_gb`` (their address-space limit alone does not protect the other jobs on a full machine)."""
    import threading

    def loop():
        while True:
            if available_gb() < min_gb:
                for w in list(Worker.live):
                    if w.proc.poll() is None:
                        w.killed = f"killed by the driver: machine memory available below {min_gb} GB"
                        w.proc.kill()
            time.sleep(0.5)

    threading.Thread(target=loop, daemon=True).start()


class Worker:
    """One worker process (``serve``) under an address-space limit, and the driver's end of its pipes."""

    live: set = set()

    def __init__(self, python: str, impl: str, structure: str, model_file: str, args):
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
                   PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        cmd = [python, os.path.abspath(__file__), "--worker", impl, "--structure", structure,
               "--model-file", model_file, "--dtype", args.dtype, "--mace-python", args.mace_python]
        self.impl, self.killed = impl, None
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
                                     preexec_fn=address_space_limit(args.mem_limit_gb))
        Worker.live.add(self)
        self.ready = self.receive()

    def receive(self) -> dict:
        for line in self.proc.stdout:
            if line.startswith(MARK):
                return json.loads(line[len(MARK):])
        Worker.live.discard(self)
        return {"error": self.killed or f"worker {self.impl} exited (rc {self.proc.wait()}); see its stderr"}

    def ask(self, **cmd) -> dict:
        try:
            self.proc.stdin.write(json.dumps(cmd) + "\n")
            self.proc.stdin.flush()
        except BrokenPipeError:
            return {"error": self.killed or f"worker {self.impl} exited (rc {self.proc.wait()})"}
        return self.receive()

    def finish(self) -> dict:
        result = self.ask(cmd="quit")
        self.proc.wait(timeout=120)
        Worker.live.discard(self)
        return result


def run_system(system: str, n_atoms: int, path: str, model_file: str, steps: int, python: dict,
               args) -> list[dict]:
    """All implementations on one system: interleaved in blocks, or one after the other when large."""
    import numpy as np

    sequential = n_atoms > args.sequential_above
    blocks = [args.block] * (steps // args.block) + ([steps % args.block] if steps % args.block else [])
    results, ready = {}, {}

    def start(impl):
        w = Worker(python[impl], impl, path, model_file, args)
        ready[impl] = w.ready
        state = "ready" if "error" not in w.ready else w.ready["error"]
        print(f"  {system} {impl}: {state}", file=sys.stderr, flush=True)
        return w

    def drive(workers: dict, order_flip: bool):
        for k, n in enumerate(blocks):
            order = list(workers) if not (order_flip and k % 2) else list(workers)[::-1]
            for impl in order:
                if "error" in results.get(impl, {}):
                    continue
                got = workers[impl].ask(cmd="run", steps=n)
                if "error" in got:
                    results[impl] = got
        for impl, w in workers.items():
            if "error" not in results.get(impl, {}):
                results[impl] = w.finish()
            else:
                w.proc.kill()
                w.proc.wait()
                Worker.live.discard(w)

    impls = (args.impls_large if sequential else args.impls).split(",")
    if sequential:
        for impl in impls:
            w = start(impl)
            if "error" in w.ready:
                results[impl] = w.ready
                continue
            drive({impl: w}, False)
    else:
        workers = {impl: start(impl) for impl in impls}
        for impl, w in workers.items():
            if "error" in w.ready:
                results[impl] = w.ready
        drive({i: w for i, w in workers.items() if "error" not in w.ready}, True)

    ref = ready.get("mace-torch", {}).get("first")
    rows = []
    for impl in impls:
        r = dict(system=system, impl_key=impl, n_atoms=n_atoms, steps=steps, dtype=args.dtype,
                 schedule="sequential" if sequential else f"interleaved in blocks of {args.block} steps")
        res = results.get(impl, {})
        if "error" in res or "step_wall_s" not in res:
            r["error"] = res.get("error", "no result")
            rows.append(r)
            continue
        r.update(res)
        r["setup_s"] = ready[impl]["setup_s"]
        wall, cpu = spread(res["step_wall_s"]), spread(res["step_cpu_s"])
        r.update(step_wall=wall, step_cpu=cpu, steps_per_s=1 / wall["median"],
                 cpu_steps_per_s=1 / cpu["median"],
                 atom_steps_per_s=n_atoms / wall["median"], cpu_atom_steps_per_s=n_atoms / cpu["median"],
                 mean_steps_per_s=len(res["step_wall_s"]) / sum(res["step_wall_s"]))
        mine = ready[impl].get("first")
        if ref is not None and mine is not None and impl != "mace-torch":
            f, fr = np.array(mine["forces"]), np.array(ref["forces"])
            r["agreement_vs_mace_torch"] = dict(
                energy_abs=abs(mine["energy"] - ref["energy"]),
                energy_rel=abs(mine["energy"] - ref["energy"]) / max(abs(ref["energy"]), 1e-300),
                forces_max_abs=float(np.abs(f - fr).max()),
                forces_rel=float(np.abs(f - fr).max() / max(np.abs(fr).max(), 1e-300)),
            )
            final_ref = results.get("mace-torch", {}).get("epot_final")
            if final_ref is not None and len(res["step_wall_s"]) == len(results["mace-torch"]["step_wall_s"]):
                r["agreement_vs_mace_torch"]["epot_final_abs"] = abs(res["epot_final"] - final_ref)
        rows.append(r)
        print(f"  {system:10s} {impl:16s} {r['steps_per_s']:.4g} steps/s wall, "
              f"{r['cpu_steps_per_s']:.4g} CPU",
              file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------------------------- driver
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--systems", default=DEFAULT_SYSTEMS, help=f"comma list from {', '.join(SYSTEMS)}")
    parser.add_argument("--steps", type=int, default=60, help="timed MD steps for ethanol (bigger: fewer)")
    parser.add_argument("--min-steps", type=int, default=20, help="timed steps at least, every system")
    parser.add_argument("--block", type=int, default=5, help="steps per turn when interleaved")
    parser.add_argument("--sequential-above", type=int, default=2000,
                        help="atoms above which the implementations run one after the other (memory)")
    parser.add_argument("--dtype", default="float32", choices=["float32", "float64"])
    parser.add_argument("--impls", default=",".join(IMPLS))
    parser.add_argument("--impls-large", default="molequi-noreuse,mace-torch",
                        help="implementations above --sequential-above atoms (time: the like-for-like pair)")
    parser.add_argument("--min-available-gb", type=float, default=1.5,
                        help="kill the workers when the machine's available memory falls below this")
    parser.add_argument("--mace-python", default=None,
                        help="python of the mace-torch venv (default: scripts/bench/setup_peers.sh mace)")
    parser.add_argument("--mem-limit-gb", type=float, default=11.0, help="address-space limit per worker")
    parser.add_argument("--out", default=str(ROOT / "bench_results" / "md_speed.json"))
    parser.add_argument("--merge", nargs="+", metavar="JSON",
                        help="instead: merge result files of separate invocations into --out")
    parser.add_argument("--worker", choices=IMPLS, help=argparse.SUPPRESS)
    parser.add_argument("--structure", help=argparse.SUPPRESS)
    parser.add_argument("--model-file", help=argparse.SUPPRESS)
    parser.add_argument("--build-model", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.merge:
        merge(args.merge, args.out)
        return
    if args.build_model:
        build_model_file(args.build_model, args.dtype)
        return
    if args.worker:
        serve(args.worker, args.structure, args.model_file, args.dtype, args.mace_python)
        return
    if args.mace_python is None:
        setup = ROOT / "scripts" / "bench" / "setup_peers.sh"
        out = subprocess.run(["bash", str(setup), "mace"], capture_output=True, text=True, check=True)
        args.mace_python = out.stdout.strip().splitlines()[-1]
    python = {impl: args.mace_python if impl == "mace-torch" else sys.executable for impl in IMPLS}
    import ase.io

    version = subprocess.run([args.mace_python, "-c", "import mace; print(mace.__version__)"],
                             capture_output=True, text=True).stdout.strip() or None
    rows = []
    t_start = time.time()
    watch_memory(args.min_available_gb)
    with tempfile.TemporaryDirectory() as tmp:
        model_file = os.path.join(tmp, "mace.model")
        subprocess.run([args.mace_python, os.path.abspath(__file__), "--build-model", model_file,
                        "--dtype", "float64"], check=True, capture_output=True)
        from molequi.interop.mace import import_mace_checkpoint  # once, not in every worker

        import_mace_checkpoint(model_file, molequi_checkpoint(model_file), python=args.mace_python)
        for system in args.systems.split(","):
            atoms = make_structure(system)
            path = os.path.join(tmp, f"{system}.extxyz")
            ase.io.write(path, atoms)
            steps = default_steps(len(atoms), args.steps, args.min_steps)
            # rows remember their invocation: merged files pair implementations of the same run only
            rows += [{**r, "invocation": _started(t_start)}
                     for r in run_system(system, len(atoms), path, model_file, steps, python, args)]
            write_results(Path(args.out), rows, [run_meta(args, t_start)], version)
    print("\n" + write_results(Path(args.out), rows, [run_meta(args, t_start)], version))


def _started(t_start: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(t_start))


def run_meta(args, t_start: float) -> dict:
    """What one invocation ran: command, settings, load and duration (the JSON keeps one per invocation)."""
    return dict(command=f"python scripts/bench/md_speed.py {' '.join(sys.argv[1:])}", args=vars(args),
                started=_started(t_start),
                systems=args.systems.split(","), cpu_count=os.cpu_count(),
                load_average_at_end=list(os.getloadavg()), run_minutes=(time.time() - t_start) / 60,
                date=time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()))


def write_results(out: Path, rows: list[dict], runs: list[dict], version: str | None) -> str:
    """Ratios to mace-torch per system, then ``out`` (JSON) and its Markdown table (atomic); returns the
    table. Called after every system, so a run stopped early keeps what it measured."""
    import torch
    from _common import provenance

    from molequi.io import atomic_write_text

    # ratios against the mace-torch row of the same invocation only (rows saved before invocations were
    # recorded count as one)
    ref = {(r["system"], r.get("invocation")): r for r in rows
           if r["impl_key"] == "mace-torch" and "steps_per_s" in r}
    for r in rows:
        key = (r["system"], r.get("invocation"))
        if "steps_per_s" in r and key in ref:
            r["speedup_vs_mace_torch"] = r["steps_per_s"] / ref[key]["steps_per_s"]
            r["cpu_speedup_vs_mace_torch"] = r["cpu_steps_per_s"] / ref[key]["cpu_steps_per_s"]
    text = table(rows)
    dtype = runs[0]["args"]["dtype"]
    meta = dict(hyperparameters=HYPER, elements=ELEMENTS, avg_num_neighbors=AVG_NEIGHBORS, dtype=dtype,
                threads=1, timestep_fs=0.5, runs=runs, default_systems=DEFAULT_SYSTEMS.split(","),
                measured_systems=list(dict.fromkeys(r["system"] for r in rows if "steps_per_s" in r)),
                weights="mace-torch ScaleShiftMACE (mace-torch's initialisation, seed 0) saved as a .model "
                "file; MACECalculator loads it, molequi imports it (molequi.interop.mace.import_mace)")
    torch.set_num_threads(1)
    prov = provenance("mace-torch MACECalculator", version, True,
                      notes="same imported weights on both sides; neighbour list rebuilt every step by "
                      "MACECalculator and by molequi-noreuse; molequi reuses it with a 0.5 Å skin; "
                      "load_average: the highest 1-minute load at the end of the runs merged here")
    prov["load_average"] = max((r["load_average_at_end"] for r in runs), key=lambda la: la[0])
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, json.dumps({"meta": meta, "provenance": prov, "results": rows}, indent=2) + "\n")
    header = (
        "# MD throughput: MolequiCalculator vs mace-torch MACECalculator (same weights)\n\n"
        + "".join(f"`{r['command']}` ({', '.join(r['systems'])}): {r['date']}, {r['run_minutes']:.0f} min, "
                  f"load average at the end {r['load_average_at_end'][0]:.1f} on {r['cpu_count']} cores.\n"
                  for r in runs)
        + f"\ndtype {dtype}, 1 thread per process, velocity Verlet 0.5 fs; steps/s from the median time of "
        "one step (wall clock and process CPU time; quartiles in the JSON; shared machine: wall-clock rates "
        "are noisy, CPU-time rates less so). molequi-noreuse rebuilds the neighbour list every step, as "
        "MACECalculator does; molequi reuses it (skin 0.5 Å).\n\n"
    )
    atomic_write_text(out.with_suffix(".md"), header + text)
    print(f"saved {out} and {out.with_suffix('.md')}", file=sys.stderr)
    return text


def merge(paths: list[str], out: str) -> None:
    """One result file from several invocations (e.g. the largest system run beside the others)."""
    data = [json.loads(Path(p).read_text()) for p in paths]
    rows = [r for d in data for r in d["results"]]
    measured = {(r["system"], r["impl_key"]) for r in rows if "steps_per_s" in r}
    rows = [r for r in rows if "steps_per_s" in r or (r["system"], r["impl_key"]) not in measured]
    runs = [run for d in data for run in d["meta"]["runs"]]
    if len({(d["meta"]["dtype"], d["provenance"]["peer_version"]) for d in data}) != 1:
        raise SystemExit(f"md_speed.py --merge: {paths} differ in dtype or mace-torch version")
    print(write_results(Path(out), rows, runs, data[0]["provenance"]["peer_version"]))


def table(rows: list[dict]) -> str:
    """Markdown table: median rates from wall-clock and CPU time, quartiles of the step time, agreement."""
    head = ("| system | impl | atoms | timed steps | schedule | steps/s (wall) | wall step p25-p75 ms "
            "| vs mace-torch (wall) | steps/s (CPU) | CPU step p25-p75 ms | vs mace-torch (CPU) "
            "| NL builds/calls | max force diff vs mace-torch | peak MB |")
    lines = [head, "|" + " --- |" * 14]
    for r in rows:
        if "steps_per_s" not in r:
            lines.append(f"| {r['system']} | {r['impl_key']} | {r['n_atoms']} | {r['steps']} | "
                         f"error: {r.get('error')} |" + " |" * 9)
            continue
        wall = f"{r['speedup_vs_mace_torch']:.2f}x" if "speedup_vs_mace_torch" in r else "-"
        cpu = f"{r['cpu_speedup_vs_mace_torch']:.2f}x" if "cpu_speedup_vs_mace_torch" in r else "-"
        builds = f"{r['nl_builds']}/{r['nl_calls']}" if r.get("nl_builds") is not None else "-"
        agree = r.get("agreement_vs_mace_torch")
        agree = f"{agree['forces_max_abs']:.1e} eV/Å" if agree else "-"
        w, c = r["step_wall"], r["step_cpu"]
        lines.append(
            f"| {r['system']} | {r['impl_key']} | {r['n_atoms']} | {len(r['step_wall_s'])} | {r['schedule']}"
            + (f" (run started {r['invocation']})" if r.get("invocation") else "") + " "
            f"| {r['steps_per_s']:.4g} | {1e3 * w['p25']:.4g}-{1e3 * w['p75']:.4g} | {wall} "
            f"| {r['cpu_steps_per_s']:.4g} | {1e3 * c['p25']:.4g}-{1e3 * c['p75']:.4g} | {cpu} | {builds} "
            f"| {agree} | {r['peak_rss_mb']:.0f} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
