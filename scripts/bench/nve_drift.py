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

    python scripts/bench/nve_drift.py --systems ch4,benzene,cubic --equil-ps 0.1 --nve-ps 2
    python scripts/bench/nve_drift.py --systems benzene --perturbation 0.1 --equil-ps 0.1 --nve-ps 2 --append

``--systems`` (issue 19 item 3) measures frame averaging where its PCA frame is degenerate (CH4, benzene, a
cubic fcc Cu cell) beside a conservative model: the MD forces are those of a smooth reference (harmonic
springs between all atom pairs of the molecule at their start lengths; ASE EMT for Cu) plus a random-init
``frame_averaging`` (forces by autograd through the frames, all 8 frames) or ``mace``, scaled so that its
force RMS on rattled start geometries is ``--perturbation`` times the reference's (random weights alone would
blow the molecules apart; the reference keeps the dynamics physical, the model's part is what is tested).
Per row: the model's max |F - (-dE/dx)| by central differences at the symmetric start and at the first NVE
frame, drift, E_tot peak-to-peak, temperatures, and for frame averaging the smallest relative PCA eigenvalue
gap over the NVE calls. JSON and Markdown in bench_results/nve_drift_systems.json / .md.
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
    allow_nonconservative: bool = False,
    fd_first_nve=None,
) -> dict:
    """NVT for ``equil_ps``, then NVE for ``nve_ps``; ``fd_first_nve(atoms)`` (optional) is evaluated on the
    first NVE frame (its value lands in the row as ``fd_max_abs_err_first_nve_eV_A``)."""
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
            allow_nonconservative=allow_nonconservative,
        )
        run_md(atoms, calc, nvt)
    nve = MDSettings(
        ensemble="nve",
        temperature=temperature,
        timestep=timestep,
        steps=nve_steps,
        seed=seed,
        loginterval=loginterval,
        allow_nonconservative=allow_nonconservative,
        raise_on_blowup=fd_first_nve is None,  # --systems: a stopped run is a result (stopped, reason)
    )
    fd = fd_first_nve(atoms) if fd_first_nve is not None else None
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
    if fd is not None:
        row.update(
            fd_max_abs_err_first_nve_eV_A=fd,
            stopped=res.stopped,
            stop_reason=res.reason,
            max_temperature_K=float(np.max(res.log["temperature_K"])),
        )
    print(
        f"{name}: drift {row['drift_eV_per_atom_per_ps']:.3e} eV/atom/ps, E_tot peak-to-peak "
        f"{row['etot_peak_to_peak_meV_per_atom']:.3g} meV/atom, <T> {row['mean_temperature_K']:.0f} K, "
        f"{res.steps_per_s:.1f} steps/s",
        flush=True,
    )
    return row


# ------------------------------------------------- --systems: frame averaging vs a conservative model

SYSTEM_NAMES = ("ch4", "benzene", "cubic")


def elastic_network(atoms0, cutoff: float = 2.6):
    """ASE calculator for the molecules: harmonic springs between every pair of atoms closer than ``cutoff`` Å
    at the start geometry, at their start lengths (k = 30 eV/Å^2 below 1.2 Å, about a C-H stretch; 5 eV/Å^2
    otherwise): smooth, invariant, its minimum at the start geometry."""
    from ase.calculators.calculator import Calculator, all_changes

    d = atoms0.get_all_distances()
    i, j = np.triu_indices(len(atoms0), 1)
    keep = d[i, j] < cutoff
    i, j, r0 = i[keep], j[keep], d[i, j][keep]
    k = np.where(r0 < 1.2, 30.0, 5.0)

    class ElasticNetwork(Calculator):
        implemented_properties = ["energy", "forces"]

        def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
            super().calculate(atoms, properties, system_changes)
            v = self.atoms.positions[j] - self.atoms.positions[i]
            r = np.linalg.norm(v, axis=1)
            g = (k * (r - r0) / r)[:, None] * v  # dE/dx_j
            f = np.zeros_like(self.atoms.positions)
            np.add.at(f, i, g)
            np.add.at(f, j, -g)
            self.results = {"energy": float((0.5 * k * (r - r0) ** 2).sum()), "forces": f}

    return ElasticNetwork()


def system(name: str):
    """(start atoms, reference ASE calculator, its description) of a --systems entry."""
    from ase.build import bulk, molecule
    from ase.calculators.emt import EMT

    if name in ("ch4", "benzene"):
        atoms = molecule("CH4" if name == "ch4" else "C6H6")
        return (
            atoms,
            elastic_network(atoms),
            "harmonic springs between all pairs < 2.6 Å at the start lengths",
        )
    if name == "cubic":
        atoms = bulk("Cu", "fcc", a=3.59, cubic=True).repeat(2)  # near EMT's lattice constant; 32 atoms, PBC
        return atoms, EMT(), "ASE EMT (Cu)"
    raise SystemExit(f"unknown system '{name}'; valid: {', '.join(SYSTEM_NAMES)}")


def build_pair(elements, avg_num_neighbors: float, r_max: float):
    """(frame_averaging, mace) of the --systems comparison, float64, random init (seed set by the caller)."""
    import torch

    from molequi.data.statistics import Statistics
    from molequi.models.frame_averaging import FrameAveraging
    from molequi.models.mace import MACE

    stats = Statistics(elements=elements, avg_num_neighbors=avg_num_neighbors)
    fa = FrameAveraging(
        FrameAveraging.Config(
            r_max=r_max, frames="all", backbone=dict(channels=16, num_layers=2, num_bessel=6)
        ),
        stats,
    )
    mace = MACE.from_config(
        MACE.Config(
            r_max=r_max,
            num_bessel=6,
            max_ell=1,
            hidden_irreps="8x0e+8x1o",
            correlation=2,
            num_interactions=2,
            MLP_irreps="8x0e",
            radial_MLP=[16],
        ),
        stats,
    )
    return fa.to(torch.float64).eval(), mace.to(torch.float64).eval()


def force_rms(calc, frames) -> float:
    out = []
    for a in frames:
        a = a.copy()
        a.calc = calc
        out.append(a.get_forces())
    return float(np.sqrt(np.mean(np.concatenate(out) ** 2)))


def run_systems(args, common: dict) -> list[dict]:
    """For each system, MD on reference + model for model = frame_averaging and a conservative MACE, each
    random-init and scaled so that its force RMS on rattled start geometries is ``args.perturbation`` times
    the reference's (the reference keeps the dynamics physical; the model's part is what is tested): NVT, then
    NVE (``measure``); the model's forces vs finite differences of its energy at the symmetric start geometry
    and at the first NVE frame; for frame averaging the smallest relative PCA eigenvalue gap over NVE."""
    import warnings

    import torch
    from ase.calculators.mixing import SumCalculator
    from ase.neighborlist import neighbor_list

    from molequi.calculators import MolequiCalculator
    from molequi.testing import check_forces_fd

    warnings.filterwarnings("ignore", message="FrameAveraging: near-degenerate")
    rows = []
    for name in args.systems.split(","):
        start, reference, ref_text = system(name)
        rng = np.random.default_rng(args.seed)
        rattled = []
        for _ in range(8):
            a = start.copy()
            a.positions += rng.normal(0.0, args.scale_rattle, a.positions.shape)
            rattled.append(a)
        ref_rms = force_rms(reference, rattled)
        torch.manual_seed(args.seed)
        nb = max(1.0, len(neighbor_list("i", start, args.r_max)) / len(start))
        pair = build_pair(sorted(set(start.numbers.tolist())), nb, args.r_max)
        for label, model in zip(("frame_averaging", "mace"), pair):
            factor = args.perturbation * ref_rms / force_rms(MolequiCalculator(model), rattled)
            with torch.no_grad():  # forces are linear in the head's scale (E0 and shift are constants)
                model.head.scale.mul_(factor)
            model_rms = force_rms(MolequiCalculator(model), rattled)
            gaps = []
            if label == "frame_averaging":
                frames_fn = model.frames

                def recording(*a, _f=frames_fn, _m=model, _gaps=gaps, **k):
                    out = _f(*a, **k)
                    _gaps.append(_m.last_min_gap)
                    return out

                model.frames = recording
            fd_start = check_forces_fd(model, start, args.r_max, atol=1e9)

            def fd_then_reset(a, _model=model, _gaps=gaps):  # the gaps kept are those of the NVE calls
                err = check_forces_fd(_model, a, args.r_max, atol=1e9)
                _gaps.clear()
                return err

            calc = SumCalculator([reference, MolequiCalculator(model, dtype=torch.float64)])
            calc.conservative = bool(model.conservative)  # what run_md reads (refusal without allow_...)
            cpu = time.process_time()
            row = measure(
                f"{label} {name}",
                calc,
                start.copy(),
                **common,
                allow_nonconservative=True,
                fd_first_nve=fd_then_reset,
            )
            row.update(
                system=name,
                model_name=label,
                conservative=bool(model.conservative),
                reference=ref_text,
                md_cpu_s=time.process_time() - cpu,
                reference_force_rms_eV_A=ref_rms,
                model_force_rms_eV_A=model_rms,
                fd_max_abs_err_start_eV_A=fd_start,
                perturbation=args.perturbation,
                command="python scripts/bench/nve_drift.py " + " ".join(sys.argv[1:]),
            )
            if gaps:
                g = np.asarray(gaps)
                row.update(
                    min_rel_eigengap=float(g.min()),
                    median_rel_eigengap=float(np.median(g)),
                    frac_calls_below_tol=float((g < model.config.degeneracy_tol).mean()),
                    degeneracy_tol=model.config.degeneracy_tol,
                )
            rows.append(row)
    return rows


def save_systems(args, rows: list[dict]) -> None:
    """JSON (with its provenance block) and Markdown of the --systems rows."""
    import torch

    prov = dict(
        peer=None,
        peer_version=None,
        peer_measured_in_this_run=None,
        threads=args.threads,
        load_average=list(os.getloadavg()),
        notes="no peer; the conservative comparator is molequi's MACE, set up the same way",
    )
    meta = dict(
        command="python scripts/bench/nve_drift.py " + " ".join(sys.argv[1:]),
        torch=torch.__version__,
        date=time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        machine=platform.node(),
        temperature_K=args.temperature,
        timestep_fs=args.timestep,
        nvt_ps=args.equil_ps,
        nve_ps=args.nve_ps,
        perturbation=args.perturbation,
        scale_rattle_A=args.scale_rattle,
        r_max=args.r_max,
        seed=args.seed,
        dtype="float64",
        cpu_s_total=time.process_time(),
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    from molequi.io import atomic_write_text

    if args.append and out.exists():  # keep the other systems' rows (each row says its command)
        old = json.loads(out.read_text())
        for r in old["results"]:
            r.setdefault("perturbation", old["meta"]["perturbation"])
            r.setdefault("command", old["meta"]["command"])
        done = {(r["system"], r["perturbation"]) for r in rows}
        kept = [r for r in old["results"] if (r["system"], r["perturbation"]) not in done]
        rows = kept + rows
        prov["load_average"] = old["provenance"]["load_average"] if kept else prov["load_average"]
        prov["notes"] += "; rows from several invocations (each row's command), load of the first"

    atomic_write_text(out, json.dumps({"meta": meta, "results": rows, "provenance": prov}, indent=2) + "\n")
    lines = [
        "| system | model | atoms | model / ref. F RMS eV/Å (x) | FD err start eV/Å | FD err 1st NVE eV/Å "
        "| drift eV/atom/ps | E_tot p-p meV/atom | <T> / max T K | min rel. eigengap | stopped |",
        "|" + " --- |" * 11,
    ]
    for r in rows:
        gap = f"{r['min_rel_eigengap']:.1e}" if "min_rel_eigengap" in r else "-"
        drift = "-" if r["drift_eV_per_atom_per_ps"] is None else f"{r['drift_eV_per_atom_per_ps']:.2e}"
        lines.append(
            f"| {r['system']} | {r['model_name']} | {r['n_atoms']} "
            f"| {r['model_force_rms_eV_A']:.3f} / {r['reference_force_rms_eV_A']:.3f} "
            f"({r['perturbation']:g}) "
            f"| {r['fd_max_abs_err_start_eV_A']:.1e} | {r['fd_max_abs_err_first_nve_eV_A']:.1e} "
            f"| {drift} | {r['etot_peak_to_peak_meV_per_atom']:.3g} "
            f"| {r['mean_temperature_K']:.0f} / {r['max_temperature_K']:.0f} | {gap} "
            f"| {r['stop_reason'] or 'no'} |"
        )
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    header = (
        f"# NVE drift: frame averaging vs a conservative model\n\n`{meta['command']}`; {meta['date']}; "
        f"float64, {args.threads} thread(s), load {prov['load_average'][0]:.1f}. Forces in MD = reference "
        "(molecules: harmonic springs between all pairs < 2.6 Å at their start lengths; cubic: ASE EMT, "
        "fcc Cu a = 3.59 Å, 2x2x2 cubic cells, PBC) + model, the model random-init (seed "
        f"{args.seed}) with its energy scale set so that its force RMS on 8 start geometries rattled by "
        f"{args.scale_rattle} Å is x times the reference's (x: the row's --perturbation; rows of another "
        "invocation (--append) say their command in the JSON). Models: frame_averaging (EdgeMLP "
        "backbone, 16 channels, 2 layers, all 8 frames, forces by autograd through the frames) and "
        f"MACE (8x0e+8x1o, max_ell 1, 2 layers, conservative), r_max {args.r_max} Å. Langevin "
        f"{args.equil_ps} ps at {args.temperature:g} K, then NVE {args.nve_ps} ps at {args.timestep} fs. "
        "FD err: the model's max |F - (-dE/dx)| by central differences (1e-5 Å) over all atoms, at the "
        "symmetric start geometry and at the first NVE frame. Eigengap: smallest relative PCA eigenvalue "
        "gap of the frame-averaging model over the NVE calls.\n\n"
    )
    atomic_write_text(out.with_suffix(".md"), header + text)
    print(f"saved {out} and {out.with_suffix('.md')}")


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
    parser.add_argument(
        "--systems",
        default=None,
        help="comma list of ch4, benzene, cubic: MD on a reference (harmonic springs / EMT) plus a scaled "
        "random-init frame_averaging or conservative MACE, instead of the rows above",
    )
    parser.add_argument(
        "--perturbation",
        type=float,
        default=0.25,
        help="--systems: model force RMS / reference force RMS on rattled start geometries",
    )
    parser.add_argument("--scale-rattle", type=float, default=0.05, help="--systems: that rattle's sigma (Å)")
    parser.add_argument(
        "--append",
        action="store_true",
        help="--systems: keep the JSON's rows of other (system, perturbation)",
    )
    parser.add_argument("--r-max", type=float, default=4.0, help="--systems: cutoff of both models (Å)")
    parser.add_argument(
        "--out",
        default=None,
        help="JSON (default bench_results/nve_drift.json, nve_drift_systems.json with --systems)",
    )
    args = parser.parse_args()
    args.out = args.out or str(
        ROOT / "bench_results" / ("nve_drift_systems.json" if args.systems else "nve_drift.json")
    )

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
    if args.systems:
        return save_systems(args, run_systems(args, common))
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
