#!/usr/bin/env python
"""molequi MACE vs mace-torch on rMD17 ethanol: same model, same normalisation, same schedule, several seeds.

    python scripts/bench/mace_accuracy.py --mace-python PY                 # the full protocol (below)
    python scripts/bench/mace_accuracy.py --render-only                     # Markdown + PNG from the JSON

``PY`` is the python of a mace-torch venv (``bash scripts/bench/setup_peers.sh mace`` prints it).

Data: rMD17 ethanol shipped in molequi/resources/rmd17: 200 train (``--n-train``) / 50 validation frames of
the train file (split by the seed), test on the 1000 frames of the test file, written once per seed as
extended XYZ in eV and eV/Å for both codes. Both codes train in their own process, one thread each, with:

- the same model: 32x0e+32x1o, max_ell 2, correlation 3, 2 interactions, r_max 5, 8 Bessel, p=5, radial MLP
  [32,32,32], MLP 16x0e, **non-residual first interaction** on both sides (mace-torch
  ``--interaction_first RealAgnosticInteractionBlock``, molequi's default), E0s ``average`` on both sides;
- the same output normalisation, in two variants run for both codes: ``default`` = mace-torch's default
  ``--model MACE`` (scale = RMS of the training forces, no shift) against molequi ``scaling: rms_forces,
  shift: none``; ``std`` = ``--model ScaleShiftMACE --scaling std_scaling`` against molequi ``scaling: std,
  shift: mean``;
- the same optimisation: Adam + AMSGrad, lr 0.01, **weight decay 0 on both** (mace-torch's default 5e-7 acts
  on some of its parameter groups only, so it is set to 0 rather than approximated), plateau 0.8 / 50, EMA
  0.99, gradient clip 10, loss weights E 1 / F 100, batch 5, float32, validation every epoch;
- **stage two on both sides** for the last 20%: energy weight 1000, force weight 100, lr 1e-3 (mace-torch's
  ``--stage_two`` defaults; molequi's ``optim.stage_two``).

Two budgets, each code with each normalisation and each seed:

- ``epochs``: the same number of epochs (``--epochs``); stage two from epoch round(0.8 x epochs)
  (mace-torch ``--start_stage_two``, molequi ``start_fraction 0.8``). Do the codes learn equally per step?
- ``cpu``: the same training CPU time of the process (``--cpu-seconds``, ``time.process_time`` from the
  first optimiser step, validation included); both switch to stage two at the first epoch boundary after
  80% of the budget (mace-torch can only switch between epochs; the drivers below apply the same rule to
  both), and stop after the budget.

Each code's model at the end is its last EMA weights (mace-torch's own run would keep its best stage-two
epoch; the driver saves the last one so that both export the same thing); both are evaluated on the test set
with the same metric code: energy MAE, RMSE and offset-removed MAE (the MAE of E_pred - E_ref minus its mean
over the test set), force component MAE and RMSE. Validation errors after every epoch give the learning
curves (PNG: against optimiser steps and training CPU seconds). The molequi and mace-torch runs of one (seed,
budget, normalisation) run side by side at the same time (``--parallel 2``), so they share the machine's
load; ``--pairs-at-once 2`` runs two such pairs at once.

Invocations that ran different seeds, budgets, budget sizes or normalisations (``--out`` names) are
combined by ``--merge``; each run keeps its budget size, so a 120 CPU-s budget added later sits beside the
30 CPU-s one.

Writes bench_results/mace_accuracy.json (after every pair, ``complete`` false until the end),
bench_results/mace_accuracy.md and bench_results/mace_accuracy_curves.png.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(Path(__file__).resolve().parent))
RESULTS = ROOT / "bench_results"
NAME = "mace_accuracy"

# hyperparameters of both codes (see the module docstring)
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
    "first_interaction": "nonresidual",
    "E0s": "average",
    "batch_size": 5,
    "valid_batch_size": 25,
    "lr": 0.01,
    "amsgrad": True,
    "weight_decay": 0.0,
    "ema_decay": 0.99,
    "grad_clip": 10.0,
    "energy_weight": 1.0,
    "forces_weight": 100.0,
    "plateau_factor": 0.8,
    "plateau_patience": 50,
    "stage_two_start_fraction": 0.8,
    "stage_two_energy_weight": 1000.0,
    "stage_two_forces_weight": 100.0,
    "stage_two_lr": 1.0e-3,
    "precision": "float32",
    "seed": 0,
}

# output normalisation variants: mace-torch arguments and molequi model keys
VARIANTS = {
    "default": {
        "mace": ["--model", "MACE"],
        "molequi": {"scaling": "rms_forces", "shift": "none"},
        "label": "scale = RMS force, no shift (mace-torch --model MACE, its default)",
    },
    "std": {
        "mace": ["--model", "ScaleShiftMACE", "--scaling", "std_scaling"],
        "molequi": {"scaling": "std", "shift": "mean"},
        "label": "scale = std of per-atom energy, shift = mean "
        "(--model ScaleShiftMACE --scaling std_scaling)",
    },
}

# runs inside the mace-torch venv: mace_run_train's own code and loop, with a CPU-time budget, the stage-two
# switch by CPU time (cpu budget), the validation errors of every epoch, and the last EMA weights exported
MACE_DRIVER = textwrap.dedent("""
    import json, sys, time
    from contextlib import nullcontext
    import mace  # first: mace restores torch.load's old default so e3nn 0.4.4 imports
    import mace.tools
    import mace.tools.train
    mt = sys.modules["mace.tools.train"]  # the package re-exports a function of the same name
    from mace.cli import run_train
    from mace.tools.checkpoint import CheckpointState

    budget, switch_at, stats_path = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
    state = {"t0": None, "w0": None, "steps": 0, "stopped": False, "curve": [], "stage_two_step": None,
             "stage_two_cpu_s": None, "swa": None, "epochs": 0}

    def cpu():
        return 0.0 if state["t0"] is None else time.process_time() - state["t0"]

    def wall():
        return 0.0 if state["w0"] is None else time.perf_counter() - state["w0"]

    class Budget(Exception):
        pass

    original_step = mt.take_step

    def take_step(*args, **kwargs):
        if state["t0"] is None:
            state["t0"], state["w0"] = time.process_time(), time.perf_counter()
        if budget > 0 and cpu() > budget:
            state["stopped"] = True
            raise Budget()
        state["steps"] += 1
        return original_step(*args, **kwargs)

    mt.take_step = take_step
    original_epoch = mt.train_one_epoch

    def train_one_epoch(*args, **kwargs):
        swa = state["swa"]
        if swa is not None and state["stage_two_step"] is None and kwargs["loss_fn"] is swa.loss_fn:
            state["stage_two_step"], state["stage_two_cpu_s"] = state["steps"], cpu()
        original_epoch(*args, **kwargs)
        state["epochs"] += 1
        # cpu budget: stage two from the next epoch once 80% of the budget is spent (checked after each
        # epoch's last step: the loop reads swa.start at the top of every epoch)
        if switch_at > 0 and swa is not None and cpu() >= switch_at and swa.start > kwargs["epoch"] + 1:
            swa.start = kwargs["epoch"] + 1

    mt.train_one_epoch = train_one_epoch
    original_log = mt.valid_err_log

    def valid_err_log(valid_loss, eval_metrics, *args, **kwargs):
        m = {k: eval_metrics.get(k) for k in ("mae_e", "rmse_e", "mae_f", "rmse_f")}
        state["curve"].append({"step": state["steps"], "cpu_s": cpu(), "wall_s": wall(),
                               "energy_mae_meV": 1e3 * float(m["mae_e"]),
                               "energy_rmse_meV": 1e3 * float(m["rmse_e"]),
                               "forces_mae_meV_A": 1e3 * float(m["mae_f"]),
                               "forces_rmse_meV_A": 1e3 * float(m["rmse_f"])})
        return original_log(valid_loss, eval_metrics, *args, **kwargs)

    mt.valid_err_log = valid_err_log
    original_train = mace.tools.train  # the function run_train calls as tools.train(...)

    def train(*args, **kwargs):
        state["swa"] = kwargs.get("swa")
        try:
            original_train(*args, **kwargs)
        except Budget:
            pass
        state["seconds"], state["wall_seconds"] = cpu(), wall()
        # the last EMA weights as the latest stage-two checkpoint (epoch 10**6 > --start_stage_two), which
        # run_train then restores, and writes as <name>_stagetwo.model as usual
        ema = kwargs.get("ema")
        with ema.average_parameters() if ema is not None else nullcontext():
            kwargs["checkpoint_handler"].save(
                state=CheckpointState(kwargs["model"], kwargs["optimizer"], kwargs["lr_scheduler"]),
                epochs=10**6, keep_last=True)

    mace.tools.train = train
    # not part of the comparison (and minutes of CPU): the closing error tables over the training and
    # validation sets, and the TorchScript copies of the model
    run_train.create_error_table = lambda *a, **k: "(skipped by scripts/bench/mace_accuracy.py)"

    class _NoJit:
        @staticmethod
        def compile(*a, **k):
            raise RuntimeError("TorchScript export skipped by scripts/bench/mace_accuracy.py")

    run_train.jit = _NoJit
    sys.argv = ["mace_run_train"] + sys.argv[4:]
    run_train.main()
    state.pop("swa")
    with open(stats_path, "w") as fh:
        json.dump(state, fh)
""")

# runs in molequi's venv: `molequi train CONFIG` with the same budget, switch rule and validation record
MOLEQUI_DRIVER = textwrap.dedent("""
    import json, sys, time
    import lightning as L
    from molequi.config import load_config
    from molequi.train.run import train

    budget, switch_at, config, stats_path = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4]
    state = {"t0": None, "w0": None, "steps": 0, "curve": [], "stage_two_step": None, "stage_two_cpu_s": None,
             "switch_due": False, "epochs": 0}

    def cpu():
        return 0.0 if state["t0"] is None else time.process_time() - state["t0"]

    def wall():
        return 0.0 if state["w0"] is None else time.perf_counter() - state["w0"]

    class Bench(L.Callback):
        def on_train_batch_start(self, trainer, module, batch, batch_idx):
            if state["t0"] is None:
                state["t0"], state["w0"] = time.process_time(), time.perf_counter()
            if state["switch_due"] and batch_idx == 0:
                module.start_stage_two()  # cpu budget: from the first epoch after 80% of it (as mace-torch)
            if module.stage_two_step is not None and state["stage_two_step"] is None:
                state["stage_two_step"], state["stage_two_cpu_s"] = module.stage_two_step, cpu()

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
            state["steps"] += 1
            if batch_idx == trainer.num_training_batches - 1:
                state["epochs"] += 1
                if switch_at > 0 and cpu() >= switch_at:
                    state["switch_due"] = True
            if budget > 0 and cpu() > budget:
                trainer.should_stop = True

        def on_validation_end(self, trainer, module):
            m = module.last_metrics.get("val", {})
            state["curve"].append({"step": int(trainer.global_step), "cpu_s": cpu(), "wall_s": wall(),
                                   **{k: float(m[k]) for k in ("energy_mae_meV", "energy_rmse_meV",
                                                               "forces_mae_meV_A", "forces_rmse_meV_A")}})

        def on_train_end(self, trainer, module):
            state["seconds"], state["wall_seconds"] = cpu(), wall()

    train(load_config(config), callbacks=[Bench()])
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
    """Test errors of one model (the same code for both): energies per structure, force components."""
    import numpy as np

    de = np.asarray(e_pred, float) - np.asarray(e_true, float)
    df = np.asarray(f_pred, float) - np.asarray(f_true, float)
    return {
        "energy_mae_meV": float(np.abs(de).mean() * 1e3),
        "energy_mae_meV_atom": float(np.abs(de / np.asarray(n)).mean() * 1e3),
        "energy_rmse_meV": float(np.sqrt((de**2).mean()) * 1e3),
        "energy_offset_meV": float(de.mean() * 1e3),
        "energy_mae_offset_removed_meV": float(np.abs(de - de.mean()).mean() * 1e3),
        "forces_mae_meV_A": float(np.abs(df).mean() * 1e3),
        "forces_rmse_meV_A": float(np.sqrt((df**2).mean()) * 1e3),
    }


def _stats_fields(st: dict, wall: float) -> dict:
    """Steps, epochs, training CPU / wall seconds, throughput, stage-two start and the validation curve."""
    return {
        "steps": st["steps"],
        "epochs_trained": st["epochs"],
        "train_cpu_seconds": st["seconds"],
        "train_wall_seconds": st["wall_seconds"],
        "structures_per_cpu_s": st["steps"] * HP["batch_size"] / st["seconds"],
        "process_wall_seconds": wall,
        "stage_two_step": st["stage_two_step"],
        "stage_two_cpu_s": st["stage_two_cpu_s"],
        "curve": st["curve"],
    }


def write_data(folder: Path, seed: int, n_test: int | None = None, n_train: int = 200) -> dict[str, Path]:
    """train.xyz (n_train), valid.xyz (50), trainval.xyz (both) + index files, test.xyz (1000); eV, eV/Å."""
    from ase.io import write

    from molequi.config import DataConfig
    from molequi.data.records import data_to_atoms
    from molequi.data.rmd17_npz import read_rmd17_npz
    from molequi.resources import rmd17_ethanol
    from molequi.train.data import split_records

    records = read_rmd17_npz(rmd17_ethanol("train"))
    train, valid = split_records(records, DataConfig(n_train=n_train, n_valid=50, seed=seed))
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

    folder.mkdir(parents=True, exist_ok=True)
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


def _env(threads: int, molequi: bool) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    if molequi:
        env["PYTHONPATH"] = str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")
    else:
        env.pop("PYTHONPATH", None)
    return env


def _budget_args(budget: str, args) -> tuple[float, float]:
    """(CPU budget, stage-two switch CPU time) of a driver; 0 = none (epoch-based run)."""
    if budget == "cpu":
        return args.cpu_seconds, HP["stage_two_start_fraction"] * args.cpu_seconds
    return 0.0, 0.0


def start_molequi(folder: Path, paths: dict, seed: int, budget: str, variant: str, args) -> tuple:
    import yaml

    keys = (
        "r_max",
        "num_bessel",
        "num_polynomial_cutoff",
        "max_ell",
        "hidden_irreps",
        "correlation",
        "num_interactions",
        "MLP_irreps",
        "radial_MLP",
        "first_interaction",
    )
    cfg = {
        "model": {"name": "mace", **{k: HP[k] for k in keys}, **VARIANTS[variant]["molequi"]},
        "data": {
            "name": "xyz",
            "root": str(paths["trainval"]),
            "energy_key": "REF_energy",
            "forces_key": "REF_forces",
            "train_indices": str(paths["train"].parent / "train_idx.txt"),
            "valid_indices": str(paths["train"].parent / "valid_idx.txt"),
            "seed": seed,
        },
        "task": {
            "name": "energy_forces",
            "weights": {"energy": HP["energy_weight"], "forces": HP["forces_weight"]},
            "E0s": HP["E0s"],
        },
        "optim": {
            "optimizer": "adam",
            "lr": HP["lr"],
            "amsgrad": HP["amsgrad"],
            "weight_decay": HP["weight_decay"],
            "scheduler": "plateau",
            "plateau_factor": HP["plateau_factor"],
            "plateau_patience": HP["plateau_patience"],
            "ema_decay": HP["ema_decay"],
            "grad_clip": HP["grad_clip"],
            "stage_two": {
                "start_fraction": HP["stage_two_start_fraction"],
                "energy_weight": HP["stage_two_energy_weight"],
                "forces_weight": HP["stage_two_forces_weight"],
                "lr": HP["stage_two_lr"],
            },
        },
        "trainer": {
            # cpu budget: an epoch count never reached (the driver stops the run and starts stage two)
            "max_epochs": args.epochs if budget == "epochs" else 10**6,
            "batch_size": HP["batch_size"],
            "valid_batch_size": HP["valid_batch_size"],
            "precision": HP["precision"],
            "accelerator": "cpu",
            "devices": 1,
            "seed": seed,
            "output": str(folder / "molequi_run"),
            "progress_bar": False,
            "log_every": 50,
        },
    }
    folder.mkdir(parents=True, exist_ok=True)
    cfg_path = folder / "molequi.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    (folder / "molequi_driver.py").write_text(MOLEQUI_DRIVER)
    stats = folder / "molequi_stats.json"
    cpu_budget, switch_at = _budget_args(budget, args)
    cmd = [
        *args.nice,
        sys.executable,
        str(folder / "molequi_driver.py"),
        str(cpu_budget),
        str(switch_at),
        str(cfg_path),
        str(stats),
    ]
    return _launch(cmd, _env(args.threads, True), ROOT, folder / "molequi.log")


def _launch(cmd: list[str], env: dict, cwd: Path, log_path: Path) -> tuple:
    log = open(log_path, "w")
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=log, stderr=subprocess.STDOUT)
    return proc, log, time.perf_counter()


def _wait(stats: Path, proc, log, t0: float) -> tuple[dict, float]:
    """The driver's stats and the process's wall seconds once it has ended (RuntimeError if it failed)."""
    rc = proc.wait()
    wall = time.perf_counter() - t0
    log.close()
    if rc != 0:
        raise RuntimeError(f"run failed ({rc}); see {log.name}")
    return json.loads(stats.read_text()), wall


def finish_molequi(folder: Path, paths: dict, proc, log, t0: float) -> dict:
    st, wall = _wait(folder / "molequi_stats.json", proc, log, t0)
    from molequi.checkpoint import load_model
    from molequi.data.readers import read_structures
    from molequi.train.evaluate import predict

    model = load_model(folder / "molequi_run" / "model.pt")
    test = read_structures(paths["test"], energy_key="REF_energy", forces_key="REF_forces")
    pred = predict(model, test, HP["r_max"], batch_size=50)
    m = metrics(pred.energy_true, pred.energy_pred, pred.forces_true, pred.forces_pred, pred.n_atoms)
    return {**m, **_stats_fields(st, wall), "n_params": int(sum(p.numel() for p in model.parameters()))}


def start_mace(folder: Path, paths: dict, seed: int, budget: str, variant: str, args) -> tuple:
    py = args.mace_python
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "mace_driver.py").write_text(MACE_DRIVER)
    (folder / "mace_eval.py").write_text(MACE_EVAL)
    epochs = args.epochs if budget == "epochs" else 100000
    start = round(HP["stage_two_start_fraction"] * epochs) if budget == "epochs" else epochs - 1
    cli = {
        "--name": "ethanol",
        "--work_dir": str(folder / "mace_run"),
        "--seed": seed,
        "--device": "cpu",
        "--default_dtype": HP["precision"],
        "--train_file": paths["train"],
        "--valid_file": paths["valid"],
        "--energy_key": "REF_energy",
        "--forces_key": "REF_forces",
        "--E0s": HP["E0s"],
        "--interaction_first": "RealAgnosticInteractionBlock",
        "--r_max": HP["r_max"],
        "--num_radial_basis": HP["num_bessel"],
        "--num_cutoff_basis": HP["num_polynomial_cutoff"],
        "--max_ell": HP["max_ell"],
        "--hidden_irreps": HP["hidden_irreps"],
        "--correlation": HP["correlation"],
        "--num_interactions": HP["num_interactions"],
        "--MLP_irreps": HP["MLP_irreps"],
        "--radial_MLP": json.dumps(HP["radial_MLP"]),
        "--batch_size": HP["batch_size"],
        "--valid_batch_size": HP["valid_batch_size"],
        "--lr": HP["lr"],
        "--optimizer": "adam",
        "--weight_decay": HP["weight_decay"],
        "--scheduler": "ReduceLROnPlateau",
        "--lr_factor": HP["plateau_factor"],
        "--scheduler_patience": HP["plateau_patience"],
        "--ema_decay": HP["ema_decay"],
        "--clip_grad": HP["grad_clip"],
        "--loss": "weighted",
        "--energy_weight": HP["energy_weight"],
        "--forces_weight": HP["forces_weight"],
        "--start_stage_two": start,
        "--stage_two_energy_weight": HP["stage_two_energy_weight"],
        "--stage_two_forces_weight": HP["stage_two_forces_weight"],
        "--stage_two_lr": HP["stage_two_lr"],
        "--max_num_epochs": epochs,
        "--eval_interval": 1,
        "--patience": 100000,
        "--error_table": "PerAtomMAE",
        "--plot": "False",
    }
    mace_args = [str(x) for kv in cli.items() for x in kv] + ["--amsgrad", "--ema", "--stage_two"]
    mace_args += VARIANTS[variant]["mace"]
    stats = folder / "mace_stats.json"
    cpu_budget, switch_at = _budget_args(budget, args)
    cmd = [
        *args.nice,
        str(py),
        str(folder / "mace_driver.py"),
        str(cpu_budget),
        str(switch_at),
        str(stats),
        *mace_args,
    ]
    return _launch(cmd, _env(args.threads, False), folder, folder / "mace.log")


def finish_mace(folder: Path, paths: dict, proc, log, t0: float, args) -> dict:
    st, wall = _wait(folder / "mace_stats.json", proc, log, t0)
    work = folder / "mace_run"
    model_file = next(p for p in sorted(work.glob("**/ethanol_stagetwo.model")))
    out = folder / "mace_pred.npz"
    subprocess.run(
        [
            *args.nice,
            str(args.mace_python),
            str(folder / "mace_eval.py"),
            str(model_file),
            str(paths["test"]),
            str(out),
            HP["precision"],
        ],
        check=True,
        env=_env(args.threads, False),
        cwd=folder,
        capture_output=True,
    )
    import numpy as np

    z = np.load(out)
    m = metrics(z["e_true"], z["e_pred"], z["f_true"], z["f_pred"], z["n"])
    return {**m, **_stats_fields(st, wall), "stopped_by_budget": st["stopped"]}


def mace_version(py: Path) -> str:
    out = subprocess.run(
        [str(py), "-c", "import importlib.metadata as m; print(m.version('mace-torch'))"],
        capture_output=True,
        text=True,
        env=_env(1, False),
    )
    return out.stdout.strip() or "unknown"


METRIC_KEYS = (
    "energy_mae_meV",
    "energy_rmse_meV",
    "energy_mae_offset_removed_meV",
    "forces_mae_meV_A",
    "forces_rmse_meV_A",
    "steps",
    "epochs_trained",
    "train_cpu_seconds",
    "train_wall_seconds",
    "structures_per_cpu_s",
)


def budget_size(r: dict, settings: dict) -> float:
    """The size of a run's budget: epochs, or training CPU seconds (runs saved before ``budget_size`` was
    recorded take it from their invocation's settings)."""
    if "budget_size" in r:
        return r["budget_size"]
    return settings["epochs"] if r["budget"] == "epochs" else settings["cpu_seconds"]


def budget_label(budget: str, size: float) -> str:
    return f"{size:.0f} epochs" if budget == "epochs" else f"{size:.0f} CPU s"


def sizes(d: dict) -> list[tuple[str, float]]:
    """The (budget, size) pairs of a result file's runs: equal CPU time first, then equal epochs, the larger
    budget first."""
    return sorted({(r["budget"], r["budget_size"]) for r in d["runs"]}, key=lambda b: (b[0] != "cpu", -b[1]))


def missing_cells(runs: list[dict], seeds=(0, 1, 2)) -> list[str]:
    """What the protocol asks for and the runs lack: both budgets, and for every budget size that was run,
    both normalisations x both codes x every seed."""
    have = {(r["budget"], r["budget_size"], r["variant"], r["code"], r["seed"]) for r in runs}
    out = [f"no {b} budget" for b in ("cpu", "epochs") if not any(h[0] == b for h in have)]
    for b, z in sorted({h[:2] for h in have}, key=lambda b: (b[0] != "cpu", -b[1])):
        for v in VARIANTS:
            lack = [s_ for s_ in seeds
                    if any((b, z, v, c, s_) not in have for c in ("molequi", "mace-torch"))]
            if lack:
                out.append(f"{budget_label(b, z)} {v} normalisation"
                           + ("" if len(lack) == len(seeds) else f" seed {', '.join(map(str, lack))}"))
    return out


def summarise(runs: list[dict]) -> list[dict]:
    """Median, min and max over seeds of every metric, per (budget, budget size, normalisation, code)."""
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["budget"], r["budget_size"], r["variant"], r["code"]), []).append(r)
    out = []
    for (budget, size, variant, code), rs in groups.items():
        row = {"budget": budget, "budget_size": size, "variant": variant, "code": code,
               "seeds": sorted(r["seed"] for r in rs)}
        for k in METRIC_KEYS:
            vals = [float(r[k]) for r in rs]
            row[k] = {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}
        out.append(row)
    return out


# -------------------------------------------------------------------------------------- Markdown and PNG
def _cell(s: dict, key: str, digits: int = 1) -> str:
    v = s[key]
    return f"{v['median']:.{digits}f} ({v['min']:.{digits}f}-{v['max']:.{digits}f})"


def render_markdown(d: dict, old: list[dict]) -> str:
    s = d["settings"]
    lines = [
        f"# molequi MACE vs mace-torch {d['provenance']['peer_version']}, rMD17 ethanol "
        "(scripts/bench/mace_accuracy.py)",
        "",
        "Generated by `python scripts/bench/mace_accuracy.py` (`--merge` / `--render-only`) from "
        "`mace_accuracy.json`; the "
        "protocol is the script's docstring. Same model (32x0e+32x1o, max_ell 2, correlation 3, 2 layers, "
        "non-residual first layer on both sides), E0s average, Adam+AMSGrad lr 0.01, weight decay 0 on both, "
        "plateau 0.8/50, EMA 0.99, clip 10, weights E 1 / F 100, batch 5, float32, stage two for the last "
        f"20% (E 1000 / F 100, lr 1e-3) on both sides; {s['n_train']} train / {s['n_valid']} valid frames "
        f"(split by the seed), {s['n_test']} test frames; 1 thread each, the two codes of a pair side by "
        "side at the same time.",
        "",
        "Budgets: "
        + ", ".join(f"**{budget_label(b, z)}**" for b, z in sizes(d))
        + f" of training each; seeds {', '.join(map(str, s['seeds']))}. Cells: median over seeds (min-max). "
        "Offset-removed MAE: MAE of the energy error after subtracting its mean over the test set. Load "
        f"average: {', '.join(f'{x:.1f}' for x in d['provenance']['load_average'])} (the highest at the end "
        "of a part); "
        + ("complete" if d.get("complete") else "**incomplete**: not measured: "
           + "; ".join(d.get("missing") or missing_cells(d["runs"])))
        + ".",
        "",
        *(
            f"- part `{part['name']}` (`{part.get('options', '')}`): saved "
            f"{part.get('date') or '(date not recorded)'}, load average at its end "
            f"{', '.join(f'{x:.1f}' for x in part['provenance']['load_average'])}"
            for part in d.get("parts", [])
        ),
        "",
        "Caution: every budget here is small (the runs had to finish on a shared 2-core machine, the "
        "training processes niced); errors are far from converged, so the rows compare the two codes at "
        "equal settings early in training, not final accuracy.",
        "",
        "| budget | normalisation | code | seeds | test E MAE (meV) | E RMSE (meV) "
        "| E MAE offset removed (meV) | F MAE (meV/Å) | F RMSE (meV/Å) | steps | epochs | train CPU s "
        "| structures / CPU s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {"epochs": 0, "cpu": 1, "default": 0, "std": 1, "molequi": 0, "mace-torch": 1}
    for r in sorted(d["summary"], key=lambda r: (order[r["budget"]], r["budget_size"], order[r["variant"]],
                                                 order[r["code"]])):
        budget = budget_label(r["budget"], r["budget_size"])
        lines.append(
            f"| {budget} | {r['variant']} | {r['code']} | {', '.join(map(str, r['seeds']))} | "
            f"{_cell(r, 'energy_mae_meV')} | "
            f"{_cell(r, 'energy_rmse_meV')} | {_cell(r, 'energy_mae_offset_removed_meV')} | "
            f"{_cell(r, 'forces_mae_meV_A')} | {_cell(r, 'forces_rmse_meV_A')} | "
            f"{r['steps']['median']:.0f} | {r['epochs_trained']['median']:.0f} | "
            f"{r['train_cpu_seconds']['median']:.0f} | {r['structures_per_cpu_s']['median']:.1f} |"
        )
    lines += [
        "",
        "Normalisations: " + "; ".join(f"`{k}` = {v['label']}" for k, v in VARIANTS.items()) + ".",
        "",
        "Per run (seed, budget, normalisation, code):",
        "",
        "| seed | budget | norm | code | E MAE | E RMSE | E MAE off. rem. | F MAE | F RMSE | steps | "
        "stage two from step | CPU s | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in d["runs"]:
        lines.append(
            f"| {r['seed']} | {budget_label(r['budget'], r['budget_size'])} | {r['variant']} | {r['code']} | "
            f"{r['energy_mae_meV']:.1f} | "
            f"{r['energy_rmse_meV']:.1f} | {r['energy_mae_offset_removed_meV']:.1f} | "
            f"{r['forces_mae_meV_A']:.1f} | {r['forces_rmse_meV_A']:.1f} | {r['steps']} | "
            f"{r['stage_two_step']} | {r['train_cpu_seconds']:.0f} | {r['train_wall_seconds']:.0f} |"
        )
    lines += [
        "",
        "Learning curves (validation errors after every epoch, against optimiser steps and training "
        "CPU seconds): `mace_accuracy_curves.png`.",
        "",
    ]
    if old:
        lines += [
            "## The earlier comparison (superseded: not the same model)",
            "",
            "Measured 2026-11-26 with the earlier protocol: 10 CPU min each, one process after the other, "
            "mace-torch as `--model MACE` with its defaults at the time (force-RMS output scaling against "
            "molequi's then energy-std scaling, non-residual first layer against molequi's then residual "
            "one, weight decay 5e-7 against 0, no stage two on either side). Files "
            "`mace_accuracy_v1.json`, `mace_accuracy_v1_seed1.json`.",
            "",
            "| seed | code | test E MAE (meV) | E RMSE (meV) | F MAE (meV/Å) | F RMSE (meV/Å) | "
            "structures / CPU s |",
            "|---|---|---|---|---|---|---|",
        ]
        for o in old:
            for r in o["results"]:
                lines.append(
                    f"| {o['hyperparameters']['seed']} | {r['code']} | {r['energy_mae_meV']:.1f} | "
                    f"{r['energy_rmse_meV']:.1f} | {r['forces_mae_meV_A']:.1f} | "
                    f"{r['forces_rmse_meV_A']:.1f} | {r['structures_per_cpu_s']:.1f} |"
                )
        lines.append("")
    return "\n".join(lines)


def render_png(d: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(11, 8))
    colours = {"molequi": "tab:blue", "mace-torch": "tab:red"}
    styles = {"default": "-", "std": "--"}
    shown = set()
    cpu_size = max(r["budget_size"] for r in d["runs"] if r["budget"] == "cpu")
    for r in d["runs"]:
        if r["budget"] != "cpu" or r["budget_size"] != cpu_size or not r["curve"]:
            continue
        label = f"{r['code']} {r['variant']}"
        for row, x in enumerate(("step", "cpu_s")):
            for col, y in enumerate(("energy_mae_meV", "forces_mae_meV_A")):
                pts = [c for c in r["curve"] if c[x] > 0]
                axes[row][col].plot(
                    [c[x] for c in pts],
                    [c[y] for c in pts],
                    styles[r["variant"]],
                    color=colours[r["code"]],
                    alpha=0.7,
                    lw=1,
                    label=None if label in shown else label,
                )
        shown.add(label)
        for row, x in enumerate(("step", "cpu_s")):
            at = r["stage_two_step"] if x == "step" else r["stage_two_cpu_s"]
            if at:
                for ax in axes[row]:
                    ax.axvline(at, color=colours[r["code"]], lw=0.5, ls=":")
    for row, xl in enumerate(("optimiser steps", "training CPU seconds (1 thread)")):
        for col, yl in enumerate(("validation energy MAE (meV)", "validation force MAE (meV/Å)")):
            ax = axes[row][col]
            ax.set_xlabel(xl)
            ax.set_ylabel(yl)
            ax.set_yscale("log")
            ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    s = d["settings"]
    fig.suptitle(
        f"rMD17 ethanol, {cpu_size:.0f} CPU s budget, seeds {s['seeds']}: molequi vs "
        f"mace-torch {d['provenance']['peer_version']} (dotted: start of stage two)",
        fontsize=10,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def render(d: dict) -> None:
    runs = [{**r, "budget_size": budget_size(r, d["settings"])} for r in d["runs"]]
    d = {**d, "runs": runs, "summary": summarise(runs)}
    old = [
        json.loads((RESULTS / f).read_text())
        for f in ("mace_accuracy_v1.json", "mace_accuracy_v1_seed1.json")
        if (RESULTS / f).exists()
    ]
    from molequi.io import atomic_write_text

    atomic_write_text(RESULTS / f"{NAME}.md", render_markdown(d, old))
    render_png(d, RESULTS / f"{NAME}_curves.png")
    print(f"wrote {RESULTS / f'{NAME}.md'} and {RESULTS / f'{NAME}_curves.png'}")


def keep_v1_files() -> None:
    """Before mace_accuracy.json is first written in the new format: the earlier protocol's files keep their
    figures under _v1 names (the Markdown quotes them)."""
    if (RESULTS / f"{NAME}.json").exists() and "runs" not in json.loads(
        (RESULTS / f"{NAME}.json").read_text()
    ):
        for old, new in ((NAME, "mace_accuracy_v1"), ("mace_accuracy_seed1", "mace_accuracy_v1_seed1")):
            if (RESULTS / f"{old}.json").exists():
                os.replace(RESULTS / f"{old}.json", RESULTS / f"{new}.json")


def _part_options(name: str, part: dict) -> str:
    """The options of the invocation that wrote a part (from what it saved)."""
    st, runs = part["settings"], part["runs"]
    budgets = sorted({r["budget"] for r in runs})
    sizes_ = (["--epochs", str(st["epochs"])] if "epochs" in budgets else []) + (
        ["--cpu-seconds", f"{st['cpu_seconds']:g}"] if "cpu" in budgets else [])
    return " ".join(["--budgets", *budgets, "--variants", *sorted({r["variant"] for r in runs}), *sizes_,
                     "--seeds", *map(str, sorted({r["seed"] for r in runs})), "--nice", str(st["nice"]),
                     "--out", name])


def merge(names: list[str]) -> dict:
    """bench_results/mace_accuracy.json from the runs of several invocations (``--out`` names) that ran the
    same protocol for different (seed, budget, budget size, normalisation) pairs, e.g. a larger budget added
    later; each run keeps its ``budget_size`` (epochs or CPU seconds). ``complete`` when both budgets ran and
    every budget size that ran covers 3 seeds x both normalisations (``missing`` lists what does not). Each
    part's provenance is kept under ``parts``."""
    from _common import save

    parts = [json.loads((RESULTS / f"{n}.json").read_text()) for n in names]
    keys = ("threads", "n_test", "n_train", "n_valid")
    for n, part in zip(names, parts):
        if any(part["settings"][k] != parts[0]["settings"][k] for k in keys):
            raise SystemExit(f"{n}: settings differ from {names[0]} ({keys})")
        if part["hyperparameters"] != parts[0]["hyperparameters"]:
            raise SystemExit(f"{n}: hyperparameters differ from {names[0]}")
    runs = sorted(
        ({**r, "budget_size": budget_size(r, part["settings"])} for part in parts for r in part["runs"]),
        key=lambda r: (r["seed"], r["budget"] != "epochs", r["budget_size"], r["variant"], r["code"]),
    )
    keys_ = [(r["seed"], r["budget"], r["budget_size"], r["variant"], r["code"]) for r in runs]
    twice = {k for k in keys_ if keys_.count(k) > 1}
    if twice:
        raise SystemExit(f"runs measured in more than one part: {sorted(twice)}")
    seeds = sorted({r["seed"] for r in runs})
    settings = {
        **parts[0]["settings"],
        "epochs": sorted({r["budget_size"] for r in runs if r["budget"] == "epochs"}),
        "cpu_seconds": sorted({r["budget_size"] for r in runs if r["budget"] == "cpu"}),
        "seeds": seeds,
        "budgets": sorted({r["budget"] for r in runs}),
        "pairs_at_once": "several invocations (see parts)",
    }
    missing = missing_cells(runs)
    payload = {k: parts[0][k] for k in ("hyperparameters", "variants")}
    payload.update(
        settings=settings,
        complete=not missing,
        missing=missing,
        runs=runs,
        summary=summarise(runs),
        parts=[
            {
                "name": n,
                "date": p.get("machine", {}).get("date"),
                "options": _part_options(n, p),
                "pairs": sorted({(r["seed"], r["budget"], budget_size(r, p["settings"]), r["variant"])
                                 for r in p["runs"]}),
                "provenance": p["provenance"],
            }
            for n, p in zip(names, parts)
        ],
    )
    loads = [p["provenance"]["load_average"] for p in parts]
    prov = {
        **parts[0]["provenance"],
        "load_average": max(loads, key=lambda la: la[0]),
        "notes": "both codes trained in these invocations, each pair side by side (same seed, budget and "
        "normalisation); the parts ran at different times (their dates and loads are under parts); load "
        "average: the highest of the parts' final readings",
    }
    keep_v1_files()
    save(NAME, payload, prov)
    return json.loads((RESULTS / f"{NAME}.json").read_text())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--mace-python",
        type=Path,
        default=Path.home() / ".cache/molequi/peers/mace/bin/python",
        help="python of the mace-torch venv (scripts/bench/setup_peers.sh mace)",
    )
    p.add_argument("--epochs", type=int, default=10, help="epochs of the equal-epochs budget (default 10)")
    p.add_argument(
        "--cpu-seconds",
        type=float,
        default=40.0,
        help="training CPU seconds of the equal-CPU-time budget (default 40)",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--budgets", nargs="+", choices=["epochs", "cpu"], default=["epochs", "cpu"])
    p.add_argument("--variants", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    p.add_argument("--threads", type=int, default=1, help="threads of each code (default 1)")
    p.add_argument(
        "--parallel",
        type=int,
        choices=[1, 2],
        default=2,
        help="2: the two codes of a pair run at the same time (default); 1: one after the other",
    )
    p.add_argument(
        "--pairs-at-once",
        type=int,
        default=1,
        help="pairs of runs at the same time (default 1; 2 on a loaded machine: 4 processes)",
    )
    p.add_argument("--nice", type=int, default=10, help="niceness of the training processes (default 10)")
    p.add_argument("--workdir", type=Path, help="keep the runs here (default: a temporary folder)")
    p.add_argument("--n-test", type=int, default=None, help="first N test frames only (smoke runs)")
    p.add_argument("--n-train", type=int, default=200, help="training frames (default 200)")
    p.add_argument("--out", default=NAME, help="result name under bench_results/ (default mace_accuracy)")
    p.add_argument("--render-only", action="store_true", help="rewrite the Markdown and PNG from the JSON")
    p.add_argument(
        "--merge",
        nargs="+",
        metavar="NAME",
        help="combine the results of several invocations (their --out names) into mace_accuracy.json",
    )
    args = p.parse_args(argv)
    if args.merge:
        render(merge(args.merge))
        return 0
    if args.render_only:
        render(json.loads((RESULTS / f"{NAME}.json").read_text()))
        return 0
    if not args.mace_python.exists():
        raise SystemExit(f"no mace-torch python at {args.mace_python}; run scripts/bench/setup_peers.sh mace")
    args.nice = ["nice", "-n", str(args.nice)] if args.nice else []
    from _common import print_table, provenance, save

    version = mace_version(args.mace_python)
    if args.out == NAME:
        keep_v1_files()
    # budget-major, then normalisation, then seed: on a loaded machine the first budget's pairs finish first
    plan = [
        (seed, budget, variant) for budget in args.budgets for variant in args.variants for seed in args.seeds
    ]
    print(f"{len(plan)} pairs: {plan}")
    runs: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="mace_accuracy_") as tmp:
        work = args.workdir or Path(tmp)
        data = {
            seed: write_data(work / f"data_seed{seed}", seed, args.n_test, args.n_train)
            for seed in args.seeds
        }
        lock = threading.Lock()
        done: list[int] = []

        def run_pair(i: int, seed: int, budget: str, variant: str) -> None:
            folder = work / f"seed{seed}_{budget}_{variant}"
            print(
                f"[{time.strftime('%H:%M:%S')}] pair {i + 1}/{len(plan)}: seed {seed}, {budget}, {variant}",
                flush=True,
            )
            # alternate which code starts first; with --parallel 2 both run at the same time
            order = ["molequi", "mace-torch"] if i % 2 == 0 else ["mace-torch", "molequi"]
            started, results = {}, {}
            for code in order:
                if code == "molequi":
                    started[code] = start_molequi(folder / "molequi", data[seed], seed, budget, variant, args)
                else:
                    started[code] = start_mace(folder / "mace", data[seed], seed, budget, variant, args)
                if args.parallel == 1:
                    started[code][0].wait()
            for code in order:
                if code == "molequi":
                    with lock:  # one in-process evaluation at a time
                        results[code] = finish_molequi(folder / "molequi", data[seed], *started[code])
                else:
                    results[code] = finish_mace(folder / "mace", data[seed], *started[code], args)
            with lock:
                for code in ("molequi", "mace-torch"):
                    size = args.epochs if budget == "epochs" else args.cpu_seconds
                    runs.append({"seed": seed, "budget": budget, "budget_size": size, "variant": variant,
                                 "code": code, **results[code]})
                done.append(i)
                print_table(
                    [r for r in runs[-2:]],
                    [
                        "code",
                        "energy_mae_meV",
                        "energy_rmse_meV",
                        "energy_mae_offset_removed_meV",
                        "forces_mae_meV_A",
                        "forces_rmse_meV_A",
                        "steps",
                        "train_cpu_seconds",
                        "stage_two_step",
                    ],
                )
                runs.sort(key=lambda r: (r["seed"], r["budget"] != "epochs", r["variant"], r["code"]))
                payload = {
                    "hyperparameters": {k: v for k, v in HP.items() if k != "seed"},
                    "variants": {
                        k: {"mace_torch_args": v["mace"], "molequi_model": v["molequi"], "label": v["label"]}
                        for k, v in VARIANTS.items()
                    },
                    "settings": {
                        "epochs": args.epochs,
                        "cpu_seconds": args.cpu_seconds,
                        "seeds": args.seeds,
                        "budgets": args.budgets,
                        "threads": args.threads,
                        "parallel": args.parallel,
                        "pairs_at_once": args.pairs_at_once,
                        "nice": int(args.nice[-1]) if args.nice else 0,
                        "n_test": args.n_test or 1000,
                        "n_train": args.n_train,
                        "n_valid": 50,
                    },
                    "complete": len(done) == len(plan),
                    "runs": runs,
                    "summary": summarise(runs),
                }
                prov = provenance(
                    "mace-torch",
                    version,
                    True,
                    threads=args.threads,
                    notes="both codes trained in this invocation, each pair side by side (same "
                    "seed, budget and normalisation); CPU time is the training process's "
                    "own; load average at the last save",
                )
                save(args.out, payload, prov)

        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(max_workers=args.pairs_at_once) as pool:
            futures = [pool.submit(run_pair, i, *job) for i, job in enumerate(plan)]
            for fut in futures:
                fut.result()
    d = json.loads((RESULTS / f"{args.out}.json").read_text())
    if args.out == NAME:
        render(d)
    return 0


if __name__ == "__main__":
    sys.exit(main())
