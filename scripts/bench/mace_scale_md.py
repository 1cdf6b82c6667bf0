"""MD of large periodic systems with the quickstart-size MACE (issue 23 item 3): time per Velocity-Verlet step
and peak memory from 1k to 100k atoms, molequi (ASE calculator and the batched torch-sim path) beside
mace-torch's ``MACECalculator`` with the same weights.

    PY=$(bash scripts/bench/setup_peers.sh mace | tail -1)
    python scripts/bench/mace_scale_md.py --mace-python $PY --sizes 1k,4k  # -> bench_results/NAME.json
    python scripts/bench/mace_scale_md.py --mace-python $PY --sizes 64k --append

Model: the MACE of ``molequi quickstart`` (``molequi.cli.quickstart.quickstart_config``: 32x0e+32x1o,
max_ell 2, correlation 3, 2 residual interactions, r_max 5 Å, 8 Bessel functions, radial MLP [32, 32, 32]),
for H, O and Cu, **random weights** (the weights change neither the time nor the memory): mace-torch 0.3.16
builds it (``ScaleShiftMACE``, seed 0, avg_num_neighbors 40) and saves it, molequi imports that file
(``molequi.interop.mace.import_mace``), so both sides compute the same function; the energies of the first
call are recorded on both sides. float32 on both sides, one thread.

Systems: fcc Cu (a = 3.61 Å, primitive cell n^3, rattled 0.05 Å, 1 fs steps) and liquid-density water
(m^3 molecules on a cubic lattice at 0.997 g/cm^3, O-H 0.96 Å, H-O-H 104.5°, random orientations redrawn
until no two atoms of different molecules are closer than 1.6 Å; 0.5 fs steps), velocities at 300 K.

Implementations (each size in its own process, ``nice``-able, one thread):

- ``ase``: ``MolequiCalculator`` (Verlet skin 0.5 Å: the neighbour list is rebuilt only when an atom moved
  more than half the skin) with ``ase.md.VelocityVerlet``;
- ``batched``: ``MolequiTorchSimModel`` (the same skin) with torch-sim's NVE integrator;
- ``ase-chunk=N`` / ``batched-chunk=N``: the same with ``max_edges_per_chunk`` N instead of "auto";
- ``mace-torch``: ``mace.calculators.MACECalculator`` with ``ase.md.VelocityVerlet`` (its neighbour list
  is built every call).

Energy, forces and stress are computed every step on every side (both calculators compute stress for
periodic cells). Per step: wall and CPU time (``time.process_time``) after ``--warmup`` steps, medians over
``--steps`` timed steps; memory: ``rss_setup_mb`` (VmRSS once the structure, model and calculator exist)
and ``peak_rss_mb`` (VmHWM, the peak resident set of the whole process, the MD included). The driver
watches every worker: a worker whose resident set passes ``--mem-limit-gb`` is killed and recorded as
"out of memory at N atoms under a X GiB limit"; one is also stopped when the machine has less than
``--min-free-gb`` available (recorded as such, not as out of memory).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, peak_rss_mb, print_table, provenance, save  # noqa: E402
from mace_scale import A_CU, _status_mb, cu_cell  # noqa: E402

WATER_DENSITY = 0.997  # g/cm^3
OH, HOH = 0.96, 104.5  # Å, degrees
MIN_INTERMOLECULAR = 1.6  # Å
ELEMENTS = [1, 8, 29]
AVG_NUM_NEIGHBORS = 40.0
# size label -> (n of the n^3 primitive Cu cell, m of the m^3 water lattice)
SIZES = {"1k": (10, 7), "4k": (16, 11), "16k": (25, 17), "64k": (40, 28), "100k": (47, 33)}
TIMESTEP_FS = {"cu": 1.0, "water": 0.5}
MODEL_DIR = Path(os.environ.get("MOLEQUI_BENCH_CACHE", Path.home() / ".cache" / "molequi" / "bench"))


def quickstart_hyper() -> dict:
    """The hyperparameters of ``molequi quickstart``'s MACE, in the keys of ``_common.MACE_HYPER``."""
    from _common import MACE_HYPER

    from molequi.cli.quickstart import quickstart_config

    cfg = quickstart_config("unused", None).model.config
    return {k: getattr(cfg, k) for k in MACE_HYPER}


def water_box(m: int, seed: int = 0):
    """m^3 water molecules on a cubic lattice at liquid density, random orientations without overlaps."""
    from ase import Atoms
    from ase.units import _Nav
    from scipy.spatial.transform import Rotation

    from molequi.graph.neighbors import neighbor_list

    rng = np.random.default_rng(seed)
    spacing = (18.015 / (WATER_DENSITY * _Nav) * 1e24) ** (1 / 3)  # Å per molecule
    grid = np.stack(np.meshgrid(*[np.arange(m)] * 3, indexing="ij"), -1).reshape(-1, 3) * spacing
    half = np.radians(HOH) / 2
    local = np.array([[0, 0, 0], [OH * np.sin(half), 0, OH * np.cos(half)],
                      [-OH * np.sin(half), 0, OH * np.cos(half)]])
    n_mol = len(grid)
    rot = Rotation.random(n_mol, random_state=seed).as_matrix()
    cell = np.eye(3) * spacing * m
    molecule = np.repeat(np.arange(n_mol), 3)
    for _ in range(200):
        pos = (grid[:, None, :] + np.einsum("mij,aj->mai", rot, local)).reshape(-1, 3)
        (i, j), _, _ = neighbor_list(pos, cell, [True] * 3, MIN_INTERMOLECULAR)
        bad = np.unique(molecule[i[molecule[i] != molecule[j]]])
        if not len(bad):
            return Atoms("OH2" * n_mol, positions=pos, cell=cell, pbc=True)
        rot[bad] = Rotation.random(len(bad), random_state=rng.integers(2**31)).as_matrix()
    raise RuntimeError(f"water box of {m}^3 molecules: overlaps left after 200 rounds")


def structure_file(system: str, size: str) -> Path:
    """The structure with its 300 K velocities, built once by the driver (extxyz) and read by every worker."""
    path = MODEL_DIR / f"md_{system}_{size}.extxyz"
    if not path.exists():
        import ase.io
        from ase.md.velocitydistribution import MaxwellBoltzmannDistribution, Stationary

        n_cu, m_water = SIZES[size]
        atoms = cu_cell(n_cu) if system == "cu" else water_box(m_water)
        MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(1))
        Stationary(atoms)
        ase.io.write(str(path) + ".tmp.extxyz", atoms)
        os.replace(str(path) + ".tmp.extxyz", path)
    return path


def build_peer_model(mace_python: str, hyper: dict) -> Path:
    """mace-torch's model at ``hyper`` (random weights, seed 0), saved once to the bench cache."""
    MODEL_DIR.mkdir(parents=True, exist_ok=True)
    tag = json.dumps([hyper, ELEMENTS, AVG_NUM_NEIGHBORS], sort_keys=True)
    path = MODEL_DIR / f"mace_quickstart_HOCu_{hashlib.sha256(tag.encode()).hexdigest()[:12]}.model"
    if not path.exists():
        code = ("import sys, json, torch; sys.path.insert(0, sys.argv[1]); import mace; "
                "from _common import build_mace_torch; torch.set_default_dtype(torch.float64); "
                "torch.manual_seed(0); "
                "m = build_mace_torch(json.loads(sys.argv[2]), float(sys.argv[3]), torch.float64, "
                "hyper=json.loads(sys.argv[4])); torch.save(m, sys.argv[5] + '.tmp')")
        subprocess.run([mace_python, "-c", code, str(Path(__file__).parent), json.dumps(ELEMENTS),
                        str(AVG_NUM_NEIGHBORS), json.dumps(hyper), str(path)], check=True)
        os.replace(str(path) + ".tmp", path)
    return path


def _report(info: dict) -> None:
    """One JSON line with everything measured so far (the driver keeps the last one, also of a worker it had
    to stop)."""
    info["peak_rss_mb"] = peak_rss_mb()
    print(json.dumps(info), flush=True)


def _md_loop(step, steps: int, warmup: int, info: dict, counters) -> None:
    for _ in range(warmup):
        step()
    wall, cpu, energies = [], [], []
    for _ in range(steps):
        t0, c0 = time.perf_counter(), time.process_time()
        energies.append(step())
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
        info.update(step_wall_s=statistics.median(wall), step_cpu_s=statistics.median(cpu), wall_s=wall,
                    cpu_s=cpu, total_energy=energies, timed_steps=len(wall), **counters())
        _report(info)


def worker(impl: str, system: str, size: str, model_file: str, steps: int, warmup: int) -> dict:
    import torch

    torch.set_num_threads(1)
    dtype = torch.float32
    import ase.io

    atoms = ase.io.read(structure_file(system, size))
    dt = TIMESTEP_FS[system]
    info = {"n_atoms": len(atoms)}
    if impl == "mace-torch":
        import mace
        from mace.calculators import MACECalculator

        atoms.calc = MACECalculator(model_paths=model_file, device="cpu", default_dtype="float32")
        info["impl"] = f"mace-torch {mace.__version__}"
    else:
        from molequi.interop.mace import import_mace

        export = torch.load(model_file + ".export.pt", map_location="cpu", weights_only=True)
        model = import_mace(model_file, export=export, dtype=dtype)
        impl, _, chunk = impl.partition("-chunk=")  # e.g. ase-chunk=8192: max_edges_per_chunk 8192
        if chunk:
            model.set_max_edges_per_chunk(int(chunk))
        info["edges_per_chunk"] = model.config.max_edges_per_chunk
        if impl == "ase":
            from molequi.calculators.calculator import MolequiCalculator

            atoms.calc = calc = MolequiCalculator(model)
    if impl in ("ase", "mace-torch"):
        from ase import units
        from ase.md.verlet import VelocityVerlet

        dyn = VelocityVerlet(atoms, timestep=dt * units.fs)
        info["rss_setup_mb"] = _status_mb("VmRSS")
        t0, c0 = time.perf_counter(), time.process_time()
        info["first_energy"] = float(atoms.get_potential_energy())
        info["first_call_wall_s"] = time.perf_counter() - t0
        info["first_call_cpu_s"] = time.process_time() - c0

        def step():
            dyn.run(1)
            return float(atoms.get_total_energy())
    else:
        import torch_sim as ts

        from molequi.interop.torch_sim import MolequiTorchSimModel

        wrapped = MolequiTorchSimModel(model, dtype=dtype, compute_stress=True)
        state = ts.initialize_state([atoms], torch.device("cpu"), dtype)
        mu = ts.units.MetalUnits
        init_fn, step_fn = ts.nve(model=wrapped, dt=torch.tensor(dt * 1e-3 * mu.time),
                                  kT=torch.tensor(300 * mu.temperature))
        info["rss_setup_mb"] = _status_mb("VmRSS")
        t0, c0 = time.perf_counter(), time.process_time()
        md = init_fn(state, seed=0)
        md.momenta = torch.as_tensor(atoms.get_momenta(), dtype=dtype)  # the same velocities as ASE's
        info["first_energy"] = float(md.energy.sum())
        info["first_call_wall_s"] = time.perf_counter() - t0
        info["first_call_cpu_s"] = time.process_time() - c0
        holder = {"md": md}

        def step():
            holder["md"] = m = step_fn(holder["md"], dt=torch.tensor(dt * 1e-3 * mu.time))
            kinetic = ts.calc_kinetic_energy(masses=m.masses, momenta=m.momenta, system_idx=m.system_idx)
            return float(m.energy.sum() + kinetic.sum())
    cache = calc.neighbors if impl == "ase" else wrapped.neighbor_caches[0] if impl == "batched" else None

    def counters() -> dict:  # molequi's neighbour list: edges within r_max, builds (skin 0.5 Å) per call
        if cache is None:
            return {}
        return {"n_edges": int(cache.last_n_edges[0]), "neighbor_builds": cache.n_builds,
                "calls": cache.n_calls,
                "wrapped_atoms": cache.n_wraps}

    info.update(counters())
    _report(info)
    _md_loop(step, steps, warmup, info, counters)
    return info


def _mem_available_gb() -> float:
    with open("/proc/meminfo") as fh:
        for line in fh:
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    return float("inf")


def _rss_gb(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return 0.0


def run_one(python: str, args, impl: str, system: str, size: str, model_file: Path) -> dict:
    """One worker process, watched: killed past ``--mem-limit-gb`` of resident memory, or when the machine
    has less than ``--min-free-gb`` available, or after ``--timeout`` s."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    large = SIZES[size][0] >= 40
    steps, warmup = (args.steps_large, args.warmup_large) if large else (args.steps, args.warmup)
    need = args.start_free_gb.get(size, args.start_free_gb["default"])
    waited = time.time()
    while _mem_available_gb() < need:  # other jobs hold the memory: start when it is there
        if time.time() - waited > args.max_wait:
            return {"error": f"not run: under {need:g} GiB available for {args.max_wait} s (other jobs)"}
        time.sleep(5)
    waited = time.time() - waited
    cmd = ["nice", "-n", str(args.nice), python, __file__, "--worker", impl, "--system", system,
           "--size", size, "--model-file", str(model_file), "--steps", str(steps), "--warmup", str(warmup)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    t0, peak, stopped = time.time(), 0.0, None
    while proc.poll() is None:
        rss = _rss_gb(proc.pid)
        peak = max(peak, rss)
        if rss > args.mem_limit_gb:
            stopped = (f"out of memory at {size} atoms under a {args.mem_limit_gb:g} GiB limit "
                       f"(RSS {rss:.1f} GiB)")
        elif _mem_available_gb() < args.min_free_gb:
            stopped = (f"stopped at RSS {rss:.1f} GiB: the machine had under {args.min_free_gb:g} GiB "
                       "available (other jobs), not a limit of this run")
        elif time.time() - t0 > args.timeout:
            stopped = f"timed out after {args.timeout} s"
        elif args.deadline and time.time() > args.deadline:
            when = time.strftime("%H:%M UTC", time.gmtime(args.deadline))
            stopped = f"stopped at the run's deadline, {when}"
        if stopped:
            proc.kill()
            proc.wait()
            break
        time.sleep(0.25)
    out, err = proc.communicate()
    lines = [x for x in out.splitlines() if x.startswith("{")]
    if stopped:  # what it measured before (the first call, the steps done)
        return {**(json.loads(lines[-1]) if lines else {}), "error": stopped,
                "watched_peak_rss_mb": peak * 1024,
                "waited_for_memory_s": waited}
    if proc.returncode != 0 or not lines:
        tail = (err.strip().splitlines() or ["no output"])[-1]
        return {"error": f"rc {proc.returncode}: {tail[:300]}", "watched_peak_rss_mb": peak * 1024,
                "waited_for_memory_s": waited}
    return {**json.loads(lines[-1]), "watched_peak_rss_mb": peak * 1024, "waited_for_memory_s": waited}


def write_results(name: str, rows: list[dict], invocations: list[dict], hyper: dict, quiet: bool = False):
    """Ratios to mace-torch of the same system and size, then the JSON (rewritten after every row)."""
    invocations[-1]["load_average_end"] = list(os.getloadavg())
    peer = {(r["system"], r["size"]): r for r in rows if r["config"] == "mace-torch" and "error" not in r}
    for r in rows:
        p = peer.get((r["system"], r["size"]))
        if p is not None and "error" not in r:
            r["peak_vs_mace_torch"] = r["peak_rss_mb"] / p["peak_rss_mb"]
            r["step_cpu_speedup_vs_mace_torch"] = p["step_cpu_s"] / r["step_cpu_s"]
            r["step_wall_speedup_vs_mace_torch"] = p["step_wall_s"] / r["step_wall_s"]
    rows.sort(key=lambda r: (r["system"], list(SIZES).index(r["size"]), r["config"]))
    if not quiet:
        print_table(rows, ["system", "size", "config", "n_atoms", "n_edges", "neighbor_builds",
                           "rss_setup_mb", "peak_rss_mb", "peak_vs_mace_torch", "step_cpu_s", "step_wall_s",
                           "step_cpu_speedup_vs_mace_torch", "first_energy", "error"])
    version = next((r["impl"].split(" ", 1)[1] for r in rows if r["config"] == "mace-torch" and "impl" in r),
                   None)
    ran_peer = any(r["config"] == "mace-torch" for r in rows)
    save(name, {
        "hyperparameters": hyper, "elements": ELEMENTS, "avg_num_neighbors": AVG_NUM_NEIGHBORS,
        "weights": "random (mace-torch ScaleShiftMACE, seed 0), imported into molequi: the same function",
        "dtype": "float32", "timestep_fs": TIMESTEP_FS, "sizes": SIZES,
        "structures": {"cu": f"fcc Cu a={A_CU} Å, primitive cell n^3, rattled 0.05 Å, 300 K velocities",
                       "water": f"m^3 molecules on a cubic lattice at {WATER_DENSITY} g/cm^3, O-H {OH} Å, "
                                f"H-O-H {HOH}°, random orientations, no intermolecular pair under "
                                f"{MIN_INTERMOLECULAR} Å, 300 K velocities"},
        "measure": "Velocity Verlet steps (energy, forces, stress each); step_*_s medians over the timed "
                   "steps after the warm-up; peak_rss_mb = VmHWM of the worker process (setup and MD)",
        "results": rows, "invocations": invocations,
    }, provenance("mace-torch" if ran_peer else None, version if ran_peer else None,
                  True if ran_peer else None, threads=1,  # every worker's (the driver's own count did not run)
                  notes="each (system, size, implementation) in a fresh process, one after another, under "
                        "nice; with --append the rows of several invocations (see 'invocations')"))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mace-python",
                    help="python of the mace-torch venv (scripts/bench/setup_peers.sh mace); it builds the "
                    "model")
    ap.add_argument("--systems", default="cu,water")
    ap.add_argument("--sizes", default="1k,4k", help=f"comma-separated of {', '.join(SIZES)}")
    ap.add_argument("--impls", default="ase,batched,mace-torch")
    ap.add_argument("--steps", type=int, default=5, help="timed MD steps below 64k atoms")
    ap.add_argument("--steps-large", type=int, default=3, help="timed MD steps at 64k atoms and above")
    ap.add_argument("--warmup", type=int, default=1,
                    help="MD steps before the timed ones (after the first force call, which is never timed)")
    ap.add_argument("--warmup-large", type=int, default=0, help="--warmup at 64k atoms and above")
    ap.add_argument("--mem-limit-gb", type=float, default=16.0, help="resident-memory limit of each worker")
    ap.add_argument("--min-free-gb", type=float, default=1.0,
                    help="stop a worker when the machine has less memory available than this")
    ap.add_argument("--start-free-gb", default="default=3,16k=6,64k=14,100k=18",
                    help="memory the machine must have available before a worker of a size starts")
    ap.add_argument("--max-wait", type=int, default=1800, help="seconds to wait for that memory")
    ap.add_argument("--skip-after-oom", action="store_true",
                    help="skip an implementation at larger sizes once it ran out of memory")
    ap.add_argument("--nice", type=int, default=10)
    ap.add_argument("--timeout", type=int, default=3600)
    ap.add_argument("--deadline", help="HH:MM (UTC, today): stop the running worker then, start none after")
    ap.add_argument("--out", default="mace_scale_md", help="results name: bench_results/NAME.json")
    ap.add_argument("--append", action="store_true",
                    help="add to bench_results/NAME.json (replacing rows of the same system, size and impl)")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--system", help=argparse.SUPPRESS)
    ap.add_argument("--size", help=argparse.SUPPRESS)
    ap.add_argument("--model-file", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        _report(worker(args.worker, args.system, args.size, args.model_file, args.steps, args.warmup))
        return 0
    if not (args.mace_python and os.path.exists(args.mace_python)):
        ap.error("--mace-python: the python of the mace-torch venv (bash scripts/bench/setup_peers.sh mace)")
    if args.deadline:
        hh, mm = map(int, args.deadline.split(":"))
        now = time.gmtime()
        args.deadline = time.mktime((now.tm_year, now.tm_mon, now.tm_mday, hh, mm, 0, 0, 0, 0))
        args.deadline -= time.timezone  # mktime reads local time
    args.start_free_gb = {k: float(v) for k, v in (x.split("=") for x in args.start_free_gb.split(","))}
    if Path(args.out).name != args.out:
        ap.error("--out is a name (bench_results/NAME.json), not a path")
    unknown = set(args.sizes.split(",")) - set(SIZES)
    if unknown:
        ap.error(f"unknown sizes {sorted(unknown)}; known: {', '.join(SIZES)}")
    hyper = quickstart_hyper()
    model_file = build_peer_model(args.mace_python, hyper)
    export_file = Path(str(model_file) + ".export.pt")
    if not export_file.exists():
        import torch

        from molequi.interop.mace import export_mace

        export = export_mace(model_file, python=args.mace_python)
        torch.save(export, str(export_file) + ".tmp")
        os.replace(str(export_file) + ".tmp", export_file)
    rows, invocations = [], []
    previous = ROOT / "bench_results" / f"{args.out}.json"
    todo = [(s, z, i) for z in args.sizes.split(",") for s in args.systems.split(",")
            for i in args.impls.split(",")]
    if args.append and previous.exists():
        old = json.loads(previous.read_text())
        invocations = old["invocations"]
        rows = [r for r in old["results"] if (r["system"], r["size"], r["config"]) not in set(todo)]
    invocations.append({"systems": args.systems, "sizes": args.sizes, "impls": args.impls,
                        "mem_limit_gb": args.mem_limit_gb, "load_average_start": list(os.getloadavg()),
                        "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())})
    for system, size, _ in todo:
        structure_file(system, size)
    out_of_memory = set()
    for system, size, impl in todo:
        if args.skip_after_oom and (system, impl) in out_of_memory:
            continue
        if args.deadline and time.time() > args.deadline:
            break
        python = args.mace_python if impl == "mace-torch" else sys.executable
        load = list(os.getloadavg())
        r = run_one(python, args, impl, system, size, model_file)
        r.update(system=system, size=size, config=impl, dtype="float32", mem_limit_gb=args.mem_limit_gb,
                 load_average=load)
        if "out of memory" in r.get("error", ""):
            out_of_memory.add((system, impl))
        rows.append(r)
        print(f"  {system:5s} {size:5s} {impl:10s} "
              + (f"{r['n_atoms']} atoms: step {r['step_cpu_s']:.2f} cpu s / {r['step_wall_s']:.2f} wall s, "
                 f"peak {r['peak_rss_mb']:.0f} MB" if "step_cpu_s" in r else r["error"]),
              file=sys.stderr, flush=True)
        write_results(args.out, rows, invocations, hyper, quiet=True)
    write_results(args.out, rows, invocations, hyper)
    return 0


if __name__ == "__main__":
    sys.exit(main())
