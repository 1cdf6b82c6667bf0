"""NVE energy drift (eV/atom/ps) of a model at 0.5 fs: NVT equilibration, then NVE, linear fit of E_tot(t).

    python scripts/bench/nve_drift.py --checkpoint runs/ethanol/model.pt           # rMD17 ethanol frame 0
    python scripts/bench/nve_drift.py --checkpoint model.pt --structure box.xyz --dtype float64
    python scripts/bench/nve_drift.py                                               # reference models only

It also measures (unless ``--no-reference``) the reference that needs no training: the shifted-force
Lennard-Jones argon crystal (fcc, 32 atoms, 40 K, float64). ``--untrained-mace`` adds a randomly initialised
MACE (hyperparameters of ``mace_speed.py``) on rMD17 ethanol in float64 and float32. Read that row with care:
a random MACE surface has its minimum far from the ethanol geometry and no short-range repulsion, so the
molecule heats up and falls apart, and atoms can collide; it tests the machinery, not a model. The drift is
the slope of a least-squares line through E_tot / n versus time over the NVE segment
(``molequi.simulate.md.drift_per_atom_per_ps``); the peak-to-peak fluctuation of E_tot / n and the mean
temperature are reported too. JSON in bench_results/nve_drift.json.
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


def ethanol():
    from ase import Atoms

    d = np.load(ETHANOL_NPZ)
    return Atoms(numbers=d["nuclear_charges"], positions=d["coords"][0])


def measure(
    name: str,
    calc,
    atoms,
    temperature: float,
    timestep: float,
    equil_ps: float,
    nve_ps: float,
    seed: int,
    loginterval: int,
) -> dict:
    from molequi.simulate.md import MDSettings, run_md

    nvt_steps = int(round(equil_ps * 1000 / timestep))
    nve_steps = int(round(nve_ps * 1000 / timestep))
    if nvt_steps:
        nvt = MDSettings(
            ensemble="nvt",
            temperature=temperature,
            timestep=timestep,
            steps=nvt_steps,
            seed=seed,
            friction=0.02,
            loginterval=max(nvt_steps, 1),
        )
        run_md(atoms, calc, nvt)
    nve = MDSettings(
        ensemble="nve",
        temperature=temperature,
        timestep=timestep,
        steps=nve_steps,
        seed=seed,
        loginterval=loginterval,
    )
    res = run_md(atoms, calc, nve)
    etot = np.asarray(res.log["etot_eV"]) / len(atoms)
    row = dict(
        model=name,
        n_atoms=len(atoms),
        timestep_fs=timestep,
        nvt_ps=equil_ps,
        nve_ps=nve_ps,
        nve_steps=res.steps,
        drift_eV_per_atom_per_ps=res.drift_ev_per_atom_per_ps,
        abs_drift_meV_per_atom_per_ps=abs(res.drift_ev_per_atom_per_ps) * 1000,
        etot_peak_to_peak_meV_per_atom=float(np.ptp(etot)) * 1000,
        mean_temperature_K=float(np.mean(res.log["temperature_K"])),
        steps_per_s=res.steps_per_s,
    )
    print(
        f"{name}: drift {row['drift_eV_per_atom_per_ps']:.3e} eV/atom/ps, E_tot peak-to-peak "
        f"{row['etot_peak_to_peak_meV_per_atom']:.3g} meV/atom, <T> {row['mean_temperature_K']:.0f} K, "
        f"{res.steps_per_s:.1f} steps/s",
        flush=True,
    )
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--checkpoint", nargs="*", default=None, help="checkpoint(s); several = committee mean"
    )
    parser.add_argument("--structure", default=None, help="structure file (default: rMD17 ethanol frame 0)")
    parser.add_argument("--temperature", type=float, default=300.0)
    parser.add_argument("--timestep", type=float, default=0.5, help="fs")
    parser.add_argument("--equil-ps", type=float, default=0.25, help="NVT equilibration before NVE (ps)")
    parser.add_argument("--nve-ps", type=float, default=1.0, help="NVE length (ps)")
    parser.add_argument(
        "--dtype",
        default=None,
        help="float64, float32 or both as 'float64,float32' (default: the checkpoint's)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-reference", action="store_true", help="skip the Lennard-Jones argon reference")
    parser.add_argument("--untrained-mace", action="store_true", help="also a random-weight MACE on ethanol")
    parser.add_argument("--loginterval", type=int, default=5)
    parser.add_argument("--out", default=str(ROOT / "bench_results" / "nve_drift.json"))
    args = parser.parse_args()

    import torch
    from ase.build import bulk
    from ase.io import read

    from molequi.calculators import MolequiCalculator

    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    dtypes = [getattr(torch, d) for d in args.dtype.split(",")] if args.dtype else [None]
    common = dict(
        temperature=args.temperature,
        timestep=args.timestep,
        equil_ps=args.equil_ps,
        nve_ps=args.nve_ps,
        seed=args.seed,
        loginterval=args.loginterval,
    )
    rows = []
    if args.checkpoint:
        atoms = read(args.structure, index=-1) if args.structure else ethanol()
        path = args.checkpoint[0] if len(args.checkpoint) == 1 else args.checkpoint
        names = ", ".join(Path(p).name for p in args.checkpoint)
        for dtype in dtypes:
            calc = MolequiCalculator.from_checkpoint(path, dtype=dtype)
            name = f"{names} ({str(calc.dtype).removeprefix('torch.')})"
            rows.append(measure(name, calc, atoms.copy(), **common))
    if not args.no_reference:
        from molequi.models.lj import LennardJones

        ar = bulk("Ar", "fcc", a=5.26, cubic=True).repeat(2)
        rows.append(
            measure(
                "lennard-jones Ar fcc (float64)",
                MolequiCalculator(LennardJones()),
                ar,
                **{**common, "temperature": 40.0},
            )
        )
    if args.untrained_mace:
        from molequi.data.statistics import Statistics
        from molequi.models.mace import MACE

        for dt in args.dtype.split(",") if args.dtype else ("float64", "float32"):
            torch.manual_seed(args.seed)
            model = MACE.from_config(
                MACE.Config(**HYPER), Statistics(elements=[1, 6, 8], avg_num_neighbors=8.0)
            )
            calc = MolequiCalculator(model.to(getattr(torch, dt)))
            rows.append(measure(f"untrained MACE ethanol ({dt})", calc, ethanol(), **common))
    meta = dict(
        threads=args.threads,
        machine=platform.node(),
        load_average=os.getloadavg(),
        torch=torch.__version__,
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps({"meta": meta, "results": rows}, indent=2) + "\n")
    os.replace(tmp, out)
    lines = [
        "| model | atoms | dt fs | NVE ps | drift eV/atom/ps | E_tot peak-to-peak meV/atom | <T> K "
        "| steps/s |",
        "|" + " --- |" * 8,
    ]
    for r in rows:
        lines.append(
            f"| {r['model']} | {r['n_atoms']} | {r['timestep_fs']:g} | {r['nve_ps']:g} "
            f"| {r['drift_eV_per_atom_per_ps']:.3e} | {r['etot_peak_to_peak_meV_per_atom']:.3g} "
            f"| {r['mean_temperature_K']:.0f} | {r['steps_per_s']:.1f} |"
        )
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    md = out.with_suffix(".md")
    header = (
        f"# NVE energy drift\n\n`python scripts/bench/nve_drift.py {' '.join(sys.argv[1:])}`; "
        f"{meta['date']}; NVT (Langevin) {args.equil_ps} ps then NVE {args.nve_ps} ps; drift = slope of a "
        "least-squares line through E_tot/n versus time.\n\n"
    )
    tmp = md.with_name(f".{md.name}.tmp{os.getpid()}")
    tmp.write_text(header + text)
    os.replace(tmp, md)
    print(f"saved {md}")
    print(f"\nsaved {out}")


if __name__ == "__main__":
    main()
