#!/usr/bin/env python
"""Active learning against GFN2-xTB from a SMILES, compared with as many frames sampled from xTB MD.

    OMP_NUM_THREADS=1 python scripts/bench/active_learning.py                 # ethanol, 1 ps at 500 K
    OMP_NUM_THREADS=1 python scripts/bench/active_learning.py --smiles 'CC(=O)Oc1ccccc1C(=O)O'   # aspirin
    python scripts/bench/active_learning.py --quick                           # a smoke run, not measured

1. ``molequi.train.active.learn``: 20 rattled RDKit frames labelled by GFN2-xTB (tblite), a committee of 3
   small MACE models, rounds of committee Langevin NVT at 500 K until a run of ``--stable-fs`` stays below
   the committee force-spread threshold; N = the labelled frames it used.
2. Baseline: N frames sampled at random (every 20 steps after 200 steps of equilibration, seeded) from
   GFN2-xTB Langevin MD at 500 K from the same conformer.
3. Both sets train the same model from scratch with the same config and seed (member 0's); the loop's
   own final (fine-tuned) member 0 is reported too.
4. Test set: fresh GFN2-xTB MD at 500 K with another seed (frames every 20 steps). Force MAE on it, and
   the time each single model survives NVT MD at 500 K from the conformer (stopped at atoms closer than
   0.5 Å or a force above 20 eV/Å).

Writes bench_results/active_learning.json (with provenance), .md (the table) and .png (the loop's history).
CPU time (time.process_time) is reported beside wall time: the machine is shared.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import RESULTS, print_table, provenance, save  # noqa: E402

MODEL = {"name": "mace", "r_max": 5.0, "num_bessel": 8, "num_polynomial_cutoff": 5, "max_ell": 1,
         "hidden_irreps": "16x0e+16x1o", "correlation": 2, "num_interactions": 2, "MLP_irreps": "16x0e",
         "radial_MLP": [32, 32]}


def learn_config(args, out: Path) -> dict:
    epochs = 8 if args.quick else args.epochs
    return {
        "output": str(out / "loop"),
        "start": {"smiles": [args.smiles], "n_frames": args.start_frames, "rattle": 0.05, "seed": args.seed},
        "labeller": {"name": "xtb", "method": "GFN2-xTB", "workers": args.workers},
        "committee": {
            "size": 3,
            "seeds": [3 * args.seed, 3 * args.seed + 1, 3 * args.seed + 2],
            "train": {
                "model": MODEL,
                "task": {"name": "energy_forces", "weights": {"energy": 1.0, "forces": 100.0}},
                "optim": {"lr": 0.01, "scheduler": "cosine", "min_lr": 1e-4, "ema_decay": 0.99,
                          "warmup_steps": 10},
                "trainer": {"max_epochs": epochs, "batch_size": 5, "valid_batch_size": 20,
                            "precision": "float32", "accelerator": "cpu", "devices": 1, "log_every": 50},
            },
            "finetune_max_epochs": max(2, epochs // 2),
            "valid_fraction": 0.1,
        },
        "md": {"temperatures": [args.temperature], "time_fs": args.stable_fs, "timestep": 0.5,
               "friction": 0.01, "runs": 1, "stride": 10, "min_distance": 0.5, "max_force": 20.0},
        "select": {"threshold": args.threshold, "window": 100, "max_frames": args.max_frames},
        "stop": {"max_rounds": 2 if args.quick else args.max_rounds, "max_labelled": args.max_labelled},
        "seed": args.seed,
    }


def train_from_scratch(cfg_dict: dict, frames: list, out: Path):
    """Member 0's training config, from scratch, on ``frames`` (same validation rule as the loop)."""
    from molequi.train.active import learn_config_from_dict, train_member

    cfg = learn_config_from_dict({**cfg_dict, "output": str(out)})
    train_member(cfg, 0, frames, out / "model", None)
    return out / "model" / "model.pt"


def force_mae(model_path: Path, frames: list) -> float:
    """meV/Å over all force components of ``frames`` (info energy, arrays forces from xTB)."""
    from molequi.calculators import MolequiCalculator

    calc = MolequiCalculator.from_checkpoint(str(model_path))
    err = []
    for a in frames:
        b = a.copy()
        b.calc = calc
        err.append(np.abs(b.get_forces() - a.arrays["forces"]).ravel())
    return float(np.mean(np.concatenate(err)) * 1000.0)


def md_survival(model_path: Path, atoms, temperature: float, time_fs: float, seed: int) -> dict:
    """NVT MD of one model from ``atoms``: the time before a blow-up (closer than 0.5 Å, force > 20 eV/Å)."""
    from molequi.calculators import MolequiCalculator
    from molequi.simulate.md import BlowUpGuard, MDSettings, run_md

    settings = MDSettings(ensemble="nvt", temperature=temperature, timestep=0.5, steps=int(time_fs / 0.5),
                          friction=0.01, loginterval=50, seed=seed, raise_on_blowup=False,
                          guard=BlowUpGuard(max_force=20.0, min_distance=0.5))
    r = run_md(atoms.copy(), MolequiCalculator.from_checkpoint(str(model_path)), settings)
    return {"survived_fs": r.time_fs, "stopped": r.stopped, "reason": r.reason}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smiles", default="CCO", help="molecule (default ethanol; aspirin is "
                   "CC(=O)Oc1ccccc1C(=O)O)")
    p.add_argument("--out", default="runs/active_learning", help="run directory (resumable)")
    p.add_argument("--temperature", type=float, default=500.0, help="K")
    p.add_argument("--stable-fs", type=float, default=1000.0, help="MD time that must stay below the "
                   "threshold, fs")
    p.add_argument("--threshold", type=float, default=0.4, help="committee force spread, eV/Å")
    p.add_argument("--start-frames", type=int, default=20)
    p.add_argument("--max-frames", type=int, default=10, help="frames labelled per round")
    p.add_argument("--max-rounds", type=int, default=15)
    p.add_argument("--max-labelled", type=int, default=200)
    p.add_argument("--epochs", type=int, default=60, help="epochs of round 0 and of the comparison runs "
                   "(fine-tuning rounds: half)")
    p.add_argument("--test-frames", type=int, default=100)
    p.add_argument("--workers", type=int, default=1, help="labelling processes")
    p.add_argument("--seed", type=int, default=0, help="seed of the start frames, the loop's MD, the "
                   "committee (3 seed .. 3 seed + 2) and the random baseline's xTB MD; the test set is the "
                   "same for every seed")
    p.add_argument("--quick", action="store_true", help="tiny smoke run (not a measurement)")
    p.add_argument("--name", default="active_learning", help="bench_results/<name>.json/.md/.png")
    args = p.parse_args()
    if args.quick:
        args.stable_fs, args.test_frames, args.max_labelled = 50.0, 10, 40
    import torch

    torch.set_num_threads(1)
    import ase.io

    from molequi.qc.conformers import molecule_from_smiles
    from molequi.qc.xtb import sample_xtb_md
    from molequi.train.active import label_frames, learn, learn_config_from_dict

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    cfg_dict = learn_config(args, out)
    result = learn(cfg_dict)
    t_loop, c_loop = time.perf_counter() - t0, time.process_time() - c0
    lcfg = learn_config_from_dict(cfg_dict)
    from molequi.train.active import labelled_set

    al_frames = labelled_set(Path(lcfg.output), result.state["rounds_done"])
    n = len(al_frames)
    conformer = molecule_from_smiles(args.smiles, seed=0)

    # baseline and test frames: GFN2-xTB MD at the same temperature (labelled afterwards)
    def xtb_frames(name: str, count: int, seed: int) -> list:
        path = out / f"{name}.extxyz"
        if path.exists():
            from molequi.train.active import read_labelled

            return read_labelled(path)
        frames = sample_xtb_md(conformer, count, temperature=args.temperature, interval=20, equilibration=200,
                               seed=seed)
        labelled = label_frames(lcfg.labeller, frames)
        ase.io.write(path, labelled, format="extxyz")
        return labelled

    t1, c1 = time.perf_counter(), time.process_time()
    random_frames = xtb_frames(f"random_{n}", n, seed=1 + 10 * args.seed)
    test_frames = xtb_frames("test", args.test_frames, seed=2)
    models = {
        "active learning (loop's fine-tuned member 0)": result.model_paths[0],
        "active-learning frames, from scratch": train_from_scratch(cfg_dict, al_frames, out / "scratch_al"),
        "random xTB-MD frames, from scratch": train_from_scratch(cfg_dict, random_frames,
                                                                 out / "scratch_random"),
    }
    rows = []
    for label, path in models.items():
        surv = md_survival(path, conformer, args.temperature, args.stable_fs, seed=7)
        rows.append({"training set": label, "frames": n, "test_force_mae_meV_A": force_mae(path, test_frames),
                     "md_survived_fs": surv["survived_fs"], "md_stopped": surv["stopped"],
                     "md_reason": surv["reason"]})
    t_cmp, c_cmp = time.perf_counter() - t1, time.process_time() - c1
    print_table(rows, ["training set", "frames", "test_force_mae_meV_A", "md_survived_fs", "md_stopped"])
    history = [{k: v for k, v in e.items() if k != "members"} for e in result.state["history"]]
    payload = {
        "command": "OMP_NUM_THREADS=1 python scripts/bench/active_learning.py " + " ".join(sys.argv[1:]),
        "quick": args.quick,
        "smiles": args.smiles,
        "seed": args.seed,
        "n_atoms": len(conformer),
        "temperature_K": args.temperature,
        "stable_fs": args.stable_fs,
        "threshold_eV_A": args.threshold,
        "converged": result.converged,
        "stop_reason": result.state["stop_reason"],
        "rounds": result.state["rounds_done"],
        "n_labelled": n,
        "n_test": len(test_frames),
        "model": MODEL,
        "n_parameters": _n_params(result.model_paths[0]),
        "committee_size": 3,
        "epochs_round0_and_scratch": lcfg.committee.train["trainer"]["max_epochs"],
        "epochs_finetune": lcfg.committee.finetune_max_epochs,
        "rows": rows,
        "history": history,
        "loop_wall_s": t_loop, "loop_cpu_s": c_loop, "comparison_wall_s": t_cmp, "comparison_cpu_s": c_cmp,
        "children_cpu_s": resource.getrusage(resource.RUSAGE_CHILDREN).ru_utime,
    }
    prov = provenance(None, None, None, reference="GFN2-xTB (tblite "
                      f"{_version('tblite')}) labels, computed in this run",
                      notes="single seed; CPU shared with other jobs (see load_average)")
    save(args.name, payload, prov)
    import shutil

    shutil.copyfile(Path(lcfg.output) / "learn.png", RESULTS / f"{args.name}.png")
    (RESULTS / f"{args.name}.md").write_text(markdown(payload))
    print(json.dumps({k: payload[k] for k in ("converged", "stop_reason", "rounds", "n_labelled")}))
    return 0


def _n_params(path: Path) -> int:
    from molequi.checkpoint import load_model

    return int(sum(p.numel() for p in load_model(str(path)).parameters()))


def _version(name: str) -> str:
    from importlib.metadata import version

    return version(name)


def markdown(p: dict) -> str:
    lines = [f"# Active learning vs random xTB-MD frames ({p['smiles']}, {p['n_atoms']} atoms, "
             f"{p['temperature_K']:g} K)", "", f"Command: `{p['command']}`", "",
             f"Loop: {p['stop_reason']} after {p['rounds']} rounds with {p['n_labelled']} GFN2-xTB frames "
             f"(threshold {p['threshold_eV_A']} eV/Å, stable for {p['stable_fs']:g} fs). Model: MACE "
             f"{p['model']['hidden_irreps']}, {p['n_parameters']} parameters; committee of "
             f"{p['committee_size']}. Test: {p['n_test']} frames of fresh xTB MD.", "",
             "| training set | frames | test force MAE (meV/Å) | NVT MD survived (fs) |",
             "|---|---|---|---|"]
    for r in p["rows"]:
        lines.append(f"| {r['training set']} | {r['frames']} | {r['test_force_mae_meV_A']:.1f} | "
                     f"{r['md_survived_fs']:.0f}{' (stopped)' if r['md_stopped'] else ''} |")
    lines += ["", "The loop, per round (validation: every 10th labelled frame; disagreement: largest "
              "per-atom "
              "committee force spread over the round's MD):", "",
              "| round | frames added | labelled | valid force MAE (meV/Å) | max disagreement (eV/Å) | "
              "MD below threshold (fs) |", "|---|---|---|---|---|---|"]
    def cell(value, fmt: str) -> str:
        return "" if value is None else format(value, fmt)

    for h in p["history"]:
        lines.append(f"| {h['round']} | {h['n_new']} | {h['n_labelled']} | "
                     f"{cell(h.get('valid_forces_mae_meV_A'), '.1f')} | "
                     f"{cell(h.get('max_disagreement'), '.3f')} | "
                     f"{cell(h.get('survived_fs'), '.0f')} |")
    lines += ["", f"Seed {p.get('seed', 0)}. Time: loop {p['loop_wall_s'] / 60:.1f} min wall / "
              f"{p['loop_cpu_s'] / 60:.1f} min CPU, comparison {p['comparison_wall_s'] / 60:.1f} min wall / "
              f"{p['comparison_cpu_s'] / 60:.1f} min CPU (1 thread; machine load "
              f"{p['provenance']['load_average'][0]:.1f} on 2 cores). Energies are fitted with weight 1 "
              "against "
              "100 for forces: only forces are compared here."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    sys.exit(main())
