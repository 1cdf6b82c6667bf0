#!/usr/bin/env python
"""molequi MACE vs mace-torch: same data, same hyperparameters, same training CPU time, test errors.

    bash scripts/bench/setup_mace_torch.sh                  # once: the mace-torch venv
    python scripts/bench/mace_accuracy.py --minutes 5       # each code trains for 5 CPU minutes

Data: rMD17 ethanol shipped in molequi/resources/rmd17 (950 train / 50 validation frames of the train file,
seed 0; test on the 1000 frames of the test file), written once as extended XYZ in eV / eV/Å for both codes.

Both codes train in a fresh process with the same number of threads (``--threads``, default 1), one after the
other, with the same listed hyperparameters (r_max, Bessel functions, polynomial cutoff, max_ell, hidden irreps,
correlation, interactions, MLP irreps, radial MLP, batch size, Adam + AMSGrad, lr, plateau schedule with
the same factor and patience, EMA decay, gradient clipping, energy/force weights, precision) for the same
training CPU time of the process (``time.process_time``, counted from the first optimiser step; on a
shared machine the wall time of one thread depends on the other jobs, its CPU time much less): molequi's
``train`` with a Lightning callback that stops after the step that spends the budget; mace-torch
(``mace_run_train``, its own CLI and training loop) is stopped by a hook in its ``take_step`` once the time is
spent, after which mace-torch itself restores its best (EMA) checkpoint and writes its model. Both models are
then evaluated on the test set with the same metric code (component-wise force MAE; energy MAE over
structures).

Prints a table and saves bench_results/mace_accuracy.json. The training throughput is optimiser steps x
batch size / training CPU seconds (validation included in both, as each code runs it every epoch).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))

# hyperparameters passed to both codes (mace-torch keeps its own defaults for output scaling, first
# interaction, weight decay and SWA: not matched here)
HP = {
    "r_max": 5.0,
    "num_bessel": 8,
    "num_polynomial_cutoff": 5,
    "max_ell": 2,
    "hidden_irreps": "32x0e+32x1o",
    "correlation": 3,
    "num_interactions": 2,
    "MLP_irreps": "16x0e",
    "radial_MLP": [32, 32, 32],
    "batch_size": 5,
    "valid_batch_size": 25,
    "lr": 0.01,
    "amsgrad": True,
    "ema_decay": 0.99,
    "grad_clip": 10.0,
    "energy_weight": 1.0,
    "forces_weight": 100.0,
    "plateau_factor": 0.8,
    "plateau_patience": 50,
    "precision": "float32",
    "seed": 0,
}

# runs inside the mace-torch venv: train with mace_run_train's own code for a fixed time, then evaluate
MACE_DRIVER = textwrap.dedent("""
    import json, sys, time
    import mace  # first: mace restores torch.load's old default so e3nn 0.4.4 imports
    import mace.tools
    import mace.tools.train
    mt = sys.modules["mace.tools.train"]  # the package re-exports a function of the same name
    from mace.cli import run_train

    budget, stats_path = float(sys.argv[1]), sys.argv[2]
    state = {"t0": None, "steps": 0, "stopped": False}

    class Budget(Exception):
        pass

    original_step = mt.take_step

    def take_step(*args, **kwargs):
        if state["t0"] is None:
            state["t0"], state["w0"] = time.process_time(), time.perf_counter()
        if time.process_time() - state["t0"] > budget:
            state["stopped"] = True
            raise Budget()
        state["steps"] += 1
        return original_step(*args, **kwargs)

    mt.take_step = take_step
    original_train = mace.tools.train  # the function run_train calls as tools.train(...)

    def train(*args, **kwargs):
        try:
            original_train(*args, **kwargs)
        except Budget:
            # as molequi exports its last EMA weights, save mace-torch's last EMA weights as its latest
            # checkpoint; run_train then restores it, evaluates and writes the .model file as usual
            from contextlib import nullcontext
            from mace.tools.checkpoint import CheckpointState

            ema = kwargs.get("ema")
            with ema.average_parameters() if ema is not None else nullcontext():
                kwargs["checkpoint_handler"].save(
                    state=CheckpointState(kwargs["model"], kwargs["optimizer"], kwargs["lr_scheduler"]),
                    epochs=10**6, keep_last=True)
        state["seconds"] = time.process_time() - state["t0"]
        state["wall_seconds"] = time.perf_counter() - state["w0"]

    mace.tools.train = train
    # mace-torch's closing error tables over the training and validation sets are not part of the timed
    # comparison (and take minutes on a CPU); the test set is evaluated by mace_eval.py instead
    run_train.create_error_table = lambda *a, **k: "(skipped by scripts/bench/mace_accuracy.py)"
    sys.argv = ["mace_run_train"] + sys.argv[3:]
    run_train.main()
    with open(stats_path, "w") as fh:
        json.dump({"steps": state["steps"], "seconds": state.get("seconds"),
                   "wall_seconds": state.get("wall_seconds"), "stopped": state["stopped"]}, fh)
""")

# runs in molequi's venv: `molequi train CONFIG` with a callback that stops after the CPU-time budget
MOLEQUI_DRIVER = textwrap.dedent("""
    import json, sys, time
    import lightning as L
    from molequi.config import load_config
    from molequi.train.run import train

    budget, config, stats_path = float(sys.argv[1]), sys.argv[2], sys.argv[3]
    state = {"t0": None, "steps": 0}

    class CpuBudget(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            if state["t0"] is None:
                state["t0"], state["w0"] = time.process_time(), time.perf_counter()

        def on_train_batch_end(self, trainer, *args):
            state["steps"] += 1
            if time.process_time() - state["t0"] > budget:
                trainer.should_stop = True

        def on_train_end(self, trainer, *args):
            state["seconds"] = time.process_time() - state["t0"]
            state["wall_seconds"] = time.perf_counter() - state["w0"]

    train(load_config(config), callbacks=[CpuBudget()])
    with open(stats_path, "w") as fh:
        json.dump(state, fh)
""")

MACE_EVAL = textwrap.dedent("""
    # batched evaluation with mace-torch's own mace_eval_configs, then the arrays for the shared metrics
    import sys
    import mace  # noqa: F401  (before e3nn 0.4.4)
    import numpy as np
    from ase.io import read
    from mace.cli import eval_configs

    model, test, out, dtype = sys.argv[1:5]
    pred_xyz = out + ".xyz"
    sys.argv = ["mace_eval_configs", "--configs", test, "--model", model, "--output", pred_xyz,
                "--default_dtype", dtype, "--batch_size", "50", "--info_prefix", "MACE_"]
    eval_configs.main()
    ref, pred = read(test, ":"), read(pred_xyz, ":")
    np.savez(out, e_true=np.array([a.info["REF_energy"] for a in ref]),
             e_pred=np.array([a.info["MACE_energy"] for a in pred]),
             f_true=np.concatenate([a.arrays["REF_forces"] for a in ref]),
             f_pred=np.concatenate([a.arrays["MACE_forces"] for a in pred]),
             n=np.array([len(a) for a in ref]))
""")


def metrics(e_true, e_pred, f_true, f_pred, n) -> dict:
    import numpy as np

    de = np.asarray(e_pred, float) - np.asarray(e_true, float)
    df = np.asarray(f_pred, float) - np.asarray(f_true, float)
    return {
        "energy_mae_meV": float(np.abs(de).mean() * 1e3),
        "energy_mae_meV_atom": float(np.abs(de / np.asarray(n)).mean() * 1e3),
        "energy_rmse_meV": float(np.sqrt((de**2).mean()) * 1e3),
        "forces_mae_meV_A": float(np.abs(df).mean() * 1e3),
        "forces_rmse_meV_A": float(np.sqrt((df**2).mean()) * 1e3),
    }


def _throughput(st: dict, wall: float) -> dict:
    """Steps, training CPU and wall seconds and structures per CPU second from a driver's stats file."""
    return {
        "steps": st["steps"],
        "train_cpu_seconds": st["seconds"],
        "train_wall_seconds": st["wall_seconds"],
        "structures_per_cpu_s": st["steps"] * HP["batch_size"] / st["seconds"],
        "process_wall_seconds": wall,
    }


def write_data(folder: Path, n_test: int | None = None) -> dict[str, Path]:
    """train.xyz (950), valid.xyz (50), trainval.xyz (both) + index files, test.xyz (1000); eV and eV/Å."""
    from ase.io import write

    from molequi.config import DataConfig
    from molequi.data.records import data_to_atoms
    from molequi.data.rmd17_npz import read_rmd17_npz
    from molequi.resources import rmd17_ethanol
    from molequi.train.data import split_records

    records = read_rmd17_npz(rmd17_ethanol("train"))
    train, valid = split_records(records, DataConfig(n_train=950, n_valid=50, seed=HP["seed"]))
    test = read_rmd17_npz(rmd17_ethanol("test"))[:n_test]

    def frames(recs):
        out = []
        for r in recs:
            a = data_to_atoms(r)
            a.info["REF_energy"] = a.calc.results["energy"]
            a.arrays["REF_forces"] = a.calc.results["forces"]
            a.calc = None
            out.append(a)
        return out

    paths = {k: folder / f"{k}.xyz" for k in ("train", "valid", "trainval", "test")}
    write(paths["train"], frames(train), format="extxyz")
    write(paths["valid"], frames(valid), format="extxyz")
    write(paths["trainval"], frames(train) + frames(valid), format="extxyz")
    write(paths["test"], frames(test), format="extxyz")
    (folder / "train_idx.txt").write_text("\n".join(map(str, range(len(train)))) + "\n")
    (folder / "valid_idx.txt").write_text(
        "\n".join(map(str, range(len(train), len(train) + len(valid)))) + "\n"
    )
    return paths


def run_molequi(folder: Path, paths: dict, seconds: float, threads: int) -> dict:
    import yaml

    cfg = {
        "model": {
            "name": "mace",
            **{
                k: HP[k]
                for k in (
                    "r_max",
                    "num_bessel",
                    "num_polynomial_cutoff",
                    "max_ell",
                    "hidden_irreps",
                    "correlation",
                    "num_interactions",
                    "MLP_irreps",
                    "radial_MLP",
                )
            },
        },
        "data": {
            "name": "xyz",
            "root": str(paths["trainval"]),
            "energy_key": "REF_energy",
            "forces_key": "REF_forces",
            "train_indices": str(folder / "train_idx.txt"),
            "valid_indices": str(folder / "valid_idx.txt"),
            "seed": HP["seed"],
        },
        "task": {
            "name": "energy_forces",
            "weights": {"energy": HP["energy_weight"], "forces": HP["forces_weight"]},
        },
        "optim": {
            "optimizer": "adam",
            "lr": HP["lr"],
            "amsgrad": HP["amsgrad"],
            "scheduler": "plateau",
            "plateau_factor": HP["plateau_factor"],
            "plateau_patience": HP["plateau_patience"],
            "ema_decay": HP["ema_decay"],
            "grad_clip": HP["grad_clip"],
        },
        "trainer": {
            "batch_size": HP["batch_size"],
            "valid_batch_size": HP["valid_batch_size"],
            "precision": HP["precision"],
            "accelerator": "cpu",
            "devices": 1,
            "seed": HP["seed"],
            "output": str(folder / "molequi_run"),
            "progress_bar": False,
            "log_every": 50,
        },
    }
    cfg_path = folder / "molequi.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    (folder / "molequi_driver.py").write_text(MOLEQUI_DRIVER)
    env = {
        **os.environ,
        "OMP_NUM_THREADS": str(threads),
        "MKL_NUM_THREADS": str(threads),
        "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    stats = folder / "molequi_stats.json"
    t0 = time.perf_counter()
    driver = [sys.executable, str(folder / "molequi_driver.py"), str(seconds), str(cfg_path), str(stats)]
    subprocess.run(driver, check=True, env=env, cwd=ROOT)
    wall = time.perf_counter() - t0
    st = json.loads(stats.read_text())
    # evaluate with the same metric code as mace-torch
    import numpy as np

    from molequi.data.readers import read_structures
    from molequi.checkpoint import load_model
    from molequi.train.evaluate import predict

    model = load_model(folder / "molequi_run" / "model.pt")
    test = read_structures(paths["test"], energy_key="REF_energy", forces_key="REF_forces")
    pred = predict(model, test, HP["r_max"], batch_size=50)
    m = metrics(pred.energy_true, pred.energy_pred, pred.forces_true, pred.forces_pred, pred.n_atoms)
    return {
        **m,
        **_throughput(st, wall),
        "n_params": int(sum(p.numel() for p in model.parameters())),
        "_check": float(np.abs(pred.forces_pred).mean()),
    }


def run_mace_torch(folder: Path, paths: dict, seconds: float, threads: int, venv: Path) -> dict:
    py = venv / "bin" / "python"
    if not py.exists():
        raise SystemExit(f"mace-torch venv not found at {venv}; run scripts/bench/setup_mace_torch.sh")
    (folder / "mace_driver.py").write_text(MACE_DRIVER)
    (folder / "mace_eval.py").write_text(MACE_EVAL)
    work = folder / "mace_run"
    args = [
        "--name",
        "ethanol",
        "--work_dir",
        str(work),
        "--seed",
        str(HP["seed"]),
        "--device",
        "cpu",
        "--default_dtype",
        HP["precision"],
        "--model",
        "MACE",
        "--train_file",
        str(paths["train"]),
        "--valid_file",
        str(paths["valid"]),
        "--energy_key",
        "REF_energy",
        "--forces_key",
        "REF_forces",
        "--E0s",
        "average",
        "--r_max",
        str(HP["r_max"]),
        "--num_radial_basis",
        str(HP["num_bessel"]),
        "--num_cutoff_basis",
        str(HP["num_polynomial_cutoff"]),
        "--max_ell",
        str(HP["max_ell"]),
        "--hidden_irreps",
        HP["hidden_irreps"],
        "--correlation",
        str(HP["correlation"]),
        "--num_interactions",
        str(HP["num_interactions"]),
        "--MLP_irreps",
        HP["MLP_irreps"],
        "--radial_MLP",
        json.dumps(HP["radial_MLP"]),
        "--batch_size",
        str(HP["batch_size"]),
        "--valid_batch_size",
        str(HP["valid_batch_size"]),
        "--lr",
        str(HP["lr"]),
        "--amsgrad",
        "--optimizer",
        "adam",
        "--scheduler",
        "ReduceLROnPlateau",
        "--lr_factor",
        str(HP["plateau_factor"]),
        "--scheduler_patience",
        str(HP["plateau_patience"]),
        "--ema",
        "--ema_decay",
        str(HP["ema_decay"]),
        "--clip_grad",
        str(HP["grad_clip"]),
        "--loss",
        "weighted",
        "--energy_weight",
        str(HP["energy_weight"]),
        "--forces_weight",
        str(HP["forces_weight"]),
        "--max_num_epochs",
        "100000",
        "--eval_interval",
        "1",
        "--patience",
        "100000",
        "--error_table",
        "PerAtomMAE",
        "--plot",
        "False",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    env.pop("PYTHONPATH", None)
    stats = folder / "mace_stats.json"
    t0 = time.perf_counter()
    subprocess.run(
        [str(py), str(folder / "mace_driver.py"), str(seconds), str(stats), *args],
        check=True,
        env=env,
        cwd=folder,
    )
    wall = time.perf_counter() - t0
    st = json.loads(stats.read_text())
    candidates = sorted(work.glob("ethanol*.model")) + sorted(work.glob("checkpoints/ethanol*.model"))
    model_file = next(p for p in candidates if "compiled" not in p.name)
    out = folder / "mace_pred.npz"
    subprocess.run(
        [
            str(py),
            str(folder / "mace_eval.py"),
            str(model_file),
            str(paths["test"]),
            str(out),
            HP["precision"],
        ],
        check=True,
        env=env,
        cwd=folder,
    )
    import numpy as np

    z = np.load(out)
    m = metrics(z["e_true"], z["e_pred"], z["f_true"], z["f_pred"], z["n"])
    return {**m, **_throughput(st, wall), "stopped_by_budget": st["stopped"]}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=5.0, help="training CPU time of each code (default 5)")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="threads for each code (default 1: CPU time is then compute time)",
    )
    p.add_argument(
        "--mace-venv",
        type=Path,
        default=Path(os.environ.get("MACE_VENV", Path.home() / ".cache/molequi/mace-venv")),
    )
    p.add_argument("--only", choices=["molequi", "mace-torch"], help="run one side only")
    p.add_argument("--workdir", type=Path, help="keep the runs here (default: a temporary folder)")
    p.add_argument(
        "--n-test", type=int, default=None, help="test on the first N test frames only (smoke runs)"
    )
    p.add_argument(
        "--seed", type=int, default=HP["seed"], help="split and initialisation seed of both codes (default 0)"
    )
    args = p.parse_args(argv)
    from _common import print_table, save

    HP["seed"] = args.seed

    seconds = args.minutes * 60
    with tempfile.TemporaryDirectory(prefix="mace_accuracy_") as tmp:
        folder = args.workdir or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        paths = write_data(folder, args.n_test)
        rows = []
        if args.only in (None, "molequi"):
            rows.append({"code": "molequi", **run_molequi(folder, paths, seconds, args.threads)})
        if args.only in (None, "mace-torch"):
            rows.append(
                {"code": "mace-torch", **run_mace_torch(folder, paths, seconds, args.threads, args.mace_venv)}
            )
    print(
        f"\nrMD17 ethanol, 950 train / 50 valid / {args.n_test or 1000} test, {args.minutes:g} CPU min "
        f"training each, {args.threads} threads, {HP['precision']}"
    )
    print_table(
        rows,
        [
            "code",
            "energy_mae_meV",
            "energy_mae_meV_atom",
            "forces_mae_meV_A",
            "forces_rmse_meV_A",
            "steps",
            "train_cpu_seconds",
            "train_wall_seconds",
            "structures_per_cpu_s",
        ],
    )
    name = "mace_accuracy" if args.n_test is None else "mace_accuracy_smoke"
    save(
        name if args.seed == 0 else f"{name}_seed{args.seed}",
        {
            "hyperparameters": HP,
            "minutes": args.minutes,
            "threads": args.threads,
            "n_test": args.n_test or 1000,
            "results": rows,
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
