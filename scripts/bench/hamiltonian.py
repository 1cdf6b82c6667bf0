"""Hamiltonian benchmark: the fast Hamiltonian model on PBE/def2-SVP water (QHNet's protocol), SCF starts.

Stages (``--stages``; results merged into ``bench_results/hamiltonian.json`` and ``hamiltonian.md``):

select  hyperparameter probes on the store's random split (``split.json`` written by
        scripts/make_hamiltonian_dataset.py): every lr of --select-lr x batch of --select-batch trained for
        --select-budget-min wall minutes, ranked by H MAE on the VALIDATION records. The test records are
        never read here.
train   the final model with the chosen lr / batch (or --lr / --batch-size), --budget-min wall minutes,
        cosine schedule to --min-lr over the budget; the validation records are the trainer's monitor set.
test    H MAE / eps MAE (micro-Hartree), psi (|cos| x 100), HOMO/LUMO/gap MAE (meV) on the TEST records.
        QHNet's published water numbers (MD17, other data, 200k steps): 10.79 / 33.76 / 99.99.
scf     SCF cycles on the first --n-scf test geometries from the predicted H vs PySCF's ``minao``, ``atom``
        and ``huckel`` guesses (RKS, --scf-conv-tol, grids level 3), energies against the label energies.
scf_md  consecutive MD frames (--md-data, 10 fs apart): each frame started from the previous frame's
        converged density, from the predicted H and from minao.
speed   the reference QHNet code (--peer-code: divelab/AIRS OpenDFT/QHNet at 4a16c68) and molequi's
        ``qhnet`` at the reference's MD17 size, plus ``hamiltonian_conv`` (--speed-channels x
        --speed-layers), timed in this invocation, interleaved, one thread: training step on 10 waters and on
        5 ethanols, inference on one ethanol (CPU and wall). Written to
        ``bench_results/hamiltonian_speed.json`` / ``.md`` alone.

Data: ``python scripts/make_hamiltonian_dataset.py --smiles O --n 500 --n-valid 50 --n-test 100
--workers 2 --out DIR`` (independent geometries: GFN2-xTB MD at 500 K, one frame per 100 fs; PySCF
PBE/def2-SVP labels; random split). ``data/hamiltonian/water_random_sample`` is a 40-record sample of it.
What produced the shipped results: see ``provenance.command`` in hamiltonian.json and hamiltonian.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common, qhnet_same_run
sys.path.insert(0, str(ROOT / "scripts" / "parity"))  # qhnet (the reference's import shims)

REFERENCE = {  # QHNet's paper (MD17 water, its own data, 200k steps): context only, never a ratio
    "qhnet_water": {"h_mae_uha": 10.79, "eps_mae_uha": 33.76, "psi_cos_x100": 99.99},
}


QHNET_PEER = "QHNet (divelab/AIRS OpenDFT/QHNet)"
QHNET_COMMIT = "4a16c68a7da707c521019067dec51c227c10de45"
QHNET_PEER_CODE = ROOT.parent / "shared" / "peers" / "qhnet"  # a copy of QHNET_PEER's folder at QHNET_COMMIT
SPEED_TASKS = (("water_b10_train_step", "water", 10, True), ("ethanol_b5_train_step", "ethanol", 5, True),
               ("ethanol_inference", "ethanol", 1, False))


def stage_speed(peer_code: Path, conv_channels: int, conv_layers: int, repeats: int = 5) -> dict:
    """The reference QHNet (its own class, models/ori_QHNet_with_bias.py, at the MD17 size of its get_model:
    hidden 128, bottleneck 32, 5 layers, lmax 4, 16 radial, cutoff 15 Å) and molequi's ``qhnet`` at the same
    size, plus molequi's ``hamiltonian_conv`` (``conv_channels`` x ``conv_layers``) as a separate row, timed
    in one process on one thread, float32, interleaved (scripts/bench/_common.interleaved): a training step
    (forward, train_wH.py's loss, backward, gradient clipping, AdamW step, as scripts/bench/qhnet_same_run.py
    trains) on 10 waters and on 5 ethanols, and inference (eval, no gradients) on one ethanol. The records are
    PySCF PBE/def2-SVP labels of data/hamiltonian/{water,ethanol}_random_sample; the reference gets them in
    its orbital layout (qhnet_same_run.Prepared), molequi in PySCF's."""
    from _common import interleaved
    from qhnet import SIZES, import_peer  # scripts/parity/qhnet.py: shims for torch_cluster / torch_scatter
    from qhnet_same_run import Prepared, loss_fn
    from torch_geometric.data import Batch

    from molequi.data.hamiltonian import HamiltonianStore, record_to_data
    from molequi.models.hamiltonian import HamiltonianConv, HamiltonianConvConfig, QHNet, QHNetConfig

    torch.set_num_threads(1)
    kw = SIZES["paper"]
    torch.manual_seed(0)
    ref = import_peer(Path(peer_code), "QHNet_w_bias")(**kw).float()
    ref.set("cpu")
    torch.manual_seed(0)
    ours = QHNet(QHNetConfig(hidden_size=kw["hidden_size"], bottle_hidden_size=kw["bottle_hidden_size"],
                             num_layers=kw["num_gnn_layers"], max_radius=float(kw["max_radius"]),
                             num_radial=kw["radius_embed_dim"])).float()
    torch.manual_seed(0)
    conv = HamiltonianConv(HamiltonianConvConfig(channels=conv_channels, num_layers=conv_layers)).float()
    q = ours.to_pyscf.double().numpy()
    records = {}
    for kind in ("water", "ethanol"):
        store = HamiltonianStore(ROOT / "data" / "hamiltonian" / f"{kind}_random_sample")
        records[kind] = [Prepared(record_to_data(store[i], dtype=torch.float32), ours.basis, q)
                         for i in range(min(10, len(store)))]
    models = {"reference QHNet": (ref, "hamiltonian", "ref"), "molequi qhnet": (ours, "fock", "ours"),
              "molequi hamiltonian_conv": (conv, "fock", "ours")}
    opts = {name: torch.optim.AdamW(m.parameters(), lr=5e-4, betas=(0.99, 0.999)) for name, (m, _, _) in
            models.items()}
    res = {"threads": 1, "dtype": "float32", "repeats": repeats,
           "reference_size": {k: v for k, v in kw.items()},
           "parameters": {name: sum(p.numel() for p in m.parameters()) for name, (m, _, _) in models.items()},
           "hamiltonian_conv": {"channels": conv_channels, "num_layers": conv_layers}}
    for task, kind, n, train in SPEED_TASKS:
        items = records[kind][:n]
        batches = {side: Batch.from_data_list([getattr(it, side) for it in items])
                   for side in ("ref", "ours")}

        def make(name, batches=batches, train=train):
            model, key, side = models[name]
            batch, opt = batches[side], opts[name]
            label = batch.hamiltonian if side == "ref" else batch.fock

            def train_step():
                loss = loss_fn(model(batch)[key], label)
                opt.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                opt.step()

            def infer():
                with torch.no_grad():
                    model(batch)

            return train_step if train else infer

        for m, _, _ in models.values():
            m.train(train)
        t = interleaved({name: make(name) for name in models}, repeats)
        a, b = t["reference QHNet"], t["molequi qhnet"]
        res[task] = {"molecules": n, "atoms": int(batches["ours"].num_nodes), "timings": t,
                     "reference_over_molequi_qhnet_cpu": a["median_cpu_s"] / b["median_cpu_s"],
                     "reference_over_molequi_qhnet_wall": a["median_wall_s"] / b["median_wall_s"],
                     "reference_over_hamiltonian_conv_cpu":
                         a["median_cpu_s"] / t["molequi hamiltonian_conv"]["median_cpu_s"],
                     "reference_over_hamiltonian_conv_wall":
                         a["median_wall_s"] / t["molequi hamiltonian_conv"]["median_wall_s"]}
        print(task, json.dumps({k: v for k, v in res[task].items() if k != "timings"}), flush=True)
    return res


def write_speed(res: dict, out: Path) -> None:
    """``hamiltonian_speed.json`` (with its provenance) and a markdown table beside it."""
    from _common import provenance

    from molequi.io import atomic_write_text

    res["provenance"] = provenance(
        QHNET_PEER, QHNET_COMMIT, True, peer_code=f"github.com/divelab/AIRS OpenDFT/QHNet @ {QHNET_COMMIT}",
        notes="the reference runs with scripts/parity/qhnet.py's shims for torch_cluster.radius_graph (a "
              "distance matrix) and torch_scatter.scatter (index_add); its times include them",
        command=res.pop("command"))
    atomic_write_text(out / "hamiltonian_speed.json", json.dumps(res, indent=1))
    names = list(res["parameters"])
    lines = ["# Hamiltonian speed: the reference QHNet code and molequi, same run, interleaved", "",
             f"One thread, float32, median of {res['repeats']} interleaved calls (quartiles in the JSON); "
             "CPU = process CPU seconds, wall = elapsed. Parameters: "
             + ", ".join(f"{n} {res['parameters'][n] / 1e6:.2f}M" for n in names) + ".", "",
             "| task | " + " | ".join(f"{n} CPU s (wall s)" for n in names)
             + " | reference / molequi qhnet CPU (wall) |", "|---" * (len(names) + 2) + "|"]
    for task, *_ in SPEED_TASKS:
        r = res[task]
        lines.append(f"| {task} | " + " | ".join(
            f"{r['timings'][n]['median_cpu_s']:.3f} ({r['timings'][n]['median_wall_s']:.3f})" for n in names)
            + f" | {r['reference_over_molequi_qhnet_cpu']:.2f}x "
            f"({r['reference_over_molequi_qhnet_wall']:.2f}x) |")
    prov = res["provenance"]
    lines += ["", f"Command: `{prov['command']}`; load average {prov['load_average']}.", ""]
    atomic_write_text(out / "hamiltonian_speed.md", "\n".join(lines))


def default_model_name() -> str:
    """The fast Hamiltonian model's registered name: ``hamiltonian_conv`` once the reference QHNet took
    the name ``qhnet``, ``qhnet`` before."""
    from molequi.models import MODELS

    return "hamiltonian_conv" if "hamiltonian_conv" in MODELS else "qhnet"


def _split(store_path: str) -> tuple:
    """The store's saved random split (``split.json``, written by scripts/make_hamiltonian_dataset.py):
    training records, validation records (the trainer's monitor set and the only data hyperparameters are
    chosen on) and the test indices (touched once, by the test and scf stages)."""
    from molequi.data.hamiltonian import HamiltonianStore, record_to_data

    store = HamiltonianStore(store_path)
    idx = store.split()
    if idx is None:
        raise SystemExit(
            f"{store_path} has no split.json: make the data with scripts/make_hamiltonian_dataset.py"
        )
    splits = {k: [record_to_data(store[i], dtype=torch.float32) for i in idx[k]] for k in ("train", "valid")}
    splits["test"] = []
    return store, splits, idx


def stage_train(args, *, lr: float, batch_size: int, budget_min: float, run_dir: str) -> dict:
    """Train on the split's training records for ``budget_min`` wall minutes; report the validation
    metrics of the exported model (the only numbers the selection stage looks at)."""
    from molequi.checkpoint import load_model
    from molequi.config import Config
    from molequi.tasks.hamiltonian import evaluate_hamiltonian
    from molequi.train.run import train

    store, splits, idx = _split(args.data)
    out = Path(run_dir)
    if out.exists():
        import shutil

        shutil.rmtree(out)
    cfg = Config.from_dict(
        {
            "model": {
                "name": args.model_name,
                "channels": args.channels,
                "num_layers": args.layers,
                "num_radial": 32,
                "radial_hidden": 64,
            },
            "data": {"name": "hamiltonian", "root": args.data},
            "task": {"name": "hamiltonian", "mse_weight": 1.0, "mae_weight": 1.0},
            "optim": {
                "lr": lr,
                "scheduler": args.scheduler,
                "plateau_factor": 0.5,
                "plateau_patience": 4,
                "min_lr": args.min_lr,
                "warmup_steps": args.warmup_steps,
                "ema_decay": args.ema_decay,
                "grad_clip": 10.0,
                "amsgrad": False,
            },
            "trainer": {
                "max_time": int(budget_min * 60),
                "batch_size": batch_size,
                "valid_batch_size": 25,
                "precision": "float32",
                "output": str(out),
                "progress_bar": False,
                "log_every": 10,
            },
        }
    )
    t0, c0 = time.perf_counter(), time.process_time()
    result = train(cfg, splits=splits)
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    n_params = sum(p.numel() for p in result.module.task.model.parameters())
    valid = evaluate_hamiltonian(load_model(result.model_path), store, indices=idx["valid"])
    return {
        "model_name": args.model_name,
        "split_sizes": {k: len(v) for k, v in idx.items()},
        "model_path": str(result.model_path),
        "params": n_params,
        "channels": args.channels,
        "num_layers": args.layers,
        "budget_min": budget_min,
        "wall_s": wall,
        "cpu_s": cpu,
        "global_step": result.global_step,
        "lr": lr,
        "scheduler": args.scheduler,
        "min_lr": args.min_lr,
        "warmup_steps": args.warmup_steps,
        "ema_decay": args.ema_decay,
        "batch_size": batch_size,
        "load_average_1min_at_end": os.getloadavg()[0],
        "epochs": result.global_step * batch_size / len(idx["train"]),
        "valid": valid,
    }


def stage_select(args) -> dict:
    """Hyperparameter probes (every lr x batch size of --select-lr / --select-batch, --select-budget-min
    each), ranked by validation H MAE; the test records are not read."""
    probes = []
    for bs in [int(b) for b in args.select_batch.split(",")]:
        for lr in [float(v) for v in args.select_lr.split(",")]:
            r = stage_train(
                args, lr=lr, batch_size=bs, budget_min=args.select_budget_min, run_dir=f"{args.run_dir}_probe"
            )
            probes.append({k: r[k] for k in ("lr", "batch_size", "global_step", "wall_s", "cpu_s", "valid")})
            print(
                f"probe lr {lr:g} batch {bs}: valid H MAE {r['valid']['h_mae_uha']:.1f} uHa "
                f"({r['global_step']} steps)",
                flush=True,
            )
    best = min(probes, key=lambda r: r["valid"]["h_mae_uha"])
    return {
        "criterion": "validation h_mae_uha",
        "budget_min": args.select_budget_min,
        "probes": probes,
        "chosen": {"lr": best["lr"], "batch_size": best["batch_size"]},
    }


def stage_test(args, model_path: str) -> dict:
    """QHNet metrics on the split's test records with ``evaluate_hamiltonian``."""
    from molequi.checkpoint import load_model
    from molequi.data.hamiltonian import HamiltonianStore
    from molequi.tasks.hamiltonian import evaluate_hamiltonian

    store = HamiltonianStore(args.data)
    ids = store.split()["test"]
    return {"n": len(ids), **evaluate_hamiltonian(load_model(model_path), store, indices=ids)}


BASELINES = ("minao", "atom", "huckel")


def _cycle_summary(rows: list[dict], guesses) -> dict:
    cyc = {g: np.array([r[g]["cycles"] for r in rows]) for g in guesses}
    return {
        g: {
            "median_cycles": float(np.median(cyc[g])),
            "mean_cycles": float(cyc[g].mean()),
            "median_scf_wall_s": float(np.median([r[g]["seconds"] for r in rows])),
            "max_abs_de_vs_label_ha": float(np.max([abs(r[g]["de_label_ha"]) for r in rows])),
            "all_converged": bool(all(r[g]["converged"] for r in rows)),
        }
        for g in guesses
    }


def _scf_row(rec, xc, basis, conv_tol, **guess) -> dict:
    from molequi.qc.scf import run_scf

    r = run_scf(rec.numbers, rec.pos, xc=xc, basis=basis, conv_tol=conv_tol, return_dm=True, **guess)
    r["de_label_ha"] = r["e_tot"] - rec.energy
    return r


def stage_scf(args, model_path: str, n: int) -> dict:
    """SCF cycles from the predicted H vs PySCF's minao / atom / huckel guesses on the first ``n`` test
    records (same settings: RKS, conv_tol --scf-conv-tol, grids level 3); energies against the labels."""
    from molequi.checkpoint import load_model
    from molequi.data.hamiltonian import HamiltonianStore
    from molequi.qc.scf import predict_fock

    model = load_model(model_path)
    store = HamiltonianStore(args.data)
    ids = store.split()["test"][:n]
    rows = []
    for i in ids:
        rec = store[i]
        t0 = time.perf_counter()
        fock = predict_fock(model, rec.numbers, rec.pos)
        row = {"index": i, "inference_s": time.perf_counter() - t0}
        row["predicted"] = _scf_row(rec, store.xc, store.basis, args.scf_conv_tol, fock=fock)
        for g in BASELINES:
            row[g] = _scf_row(rec, store.xc, store.basis, args.scf_conv_tol, init_guess=g)
        for g in ("predicted", *BASELINES):
            row[g].pop("dm")
        rows.append(row)
    return {
        "n": len(rows),
        "conv_tol": args.scf_conv_tol,
        "median_inference_s": float(np.median([r["inference_s"] for r in rows])),
        "guesses": _cycle_summary(rows, ("predicted", *BASELINES)),
        "rows": rows,
    }


def stage_scf_md(args, model_path: str, n: int) -> dict:
    """An MD-like sequence (``--md-data``: consecutive frames 10 fs apart): each frame from the previous
    frame's converged density, from the predicted H and from minao."""
    from molequi.checkpoint import load_model
    from molequi.data.hamiltonian import HamiltonianStore
    from molequi.qc.scf import predict_fock

    model = load_model(model_path)
    store = HamiltonianStore(args.md_data)
    first = store[0]
    dm_prev = _scf_row(first, store.xc, store.basis, args.scf_conv_tol, init_guess="minao")["dm"]
    rows = []
    for i in range(1, min(n + 1, len(store))):
        rec = store[i]
        row = {"index": i}
        row["previous_frame"] = _scf_row(rec, store.xc, store.basis, args.scf_conv_tol, dm0=dm_prev)
        row["predicted"] = _scf_row(
            rec, store.xc, store.basis, args.scf_conv_tol, fock=predict_fock(model, rec.numbers, rec.pos)
        )
        row["minao"] = _scf_row(rec, store.xc, store.basis, args.scf_conv_tol, init_guess="minao")
        dm_prev = row["previous_frame"]["dm"]
        for g in ("previous_frame", "predicted", "minao"):
            row[g].pop("dm")
        rows.append(row)
    return {
        "data": str(args.md_data),
        "n": len(rows),
        "conv_tol": args.scf_conv_tol,
        "frame_spacing_fs": store.meta.get("interval", 20) * 0.5,
        "guesses": _cycle_summary(rows, ("previous_frame", "predicted", "minao")),
        "rows": rows,
    }


def _scf_table(title: str, scf: dict) -> list[str]:
    lines = [
        title,
        "",
        "| initial guess | median cycles | mean cycles | median SCF wall s | max abs(E - E_label) Ha "
        "| all converged |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for g, v in scf["guesses"].items():
        lines.append(
            f"| {g} | {v['median_cycles']:g} | {v['mean_cycles']:.2f} | {v['median_scf_wall_s']:.2f} | "
            f"{v['max_abs_de_vs_label_ha']:.1e} | {v['all_converged']} |"
        )
    return lines + [""]


def write_table(res: dict, path: Path) -> None:
    lines = ["# Hamiltonian benchmark (water PBE/def2-SVP, this machine's CPU)", ""]
    if "select" in res:
        sel = res["select"]
        lines += [
            f"Hyperparameters chosen on the validation records only ({sel['budget_min']} min probes, "
            f"ranked by validation H MAE): chosen lr {sel['chosen']['lr']:g}, batch "
            f"{sel['chosen']['batch_size']}.",
            "",
            "| lr | batch | steps | valid H MAE (µHa) |",
            "| --- | --- | --- | --- |",
        ]
        for pr in sel["probes"]:
            lines.append(
                f"| {pr['lr']:g} | {pr['batch_size']} | {pr['global_step']} | "
                f"{pr['valid']['h_mae_uha']:.1f} |"
            )
        lines.append("")
    if "train" in res:
        t = res["train"]
        te = res.get("test", {})
        sz = t["split_sizes"]
        lines += [
            f"Training: model `{t['model_name']}`, {t['params'] / 1e6:.2f}M params (channels "
            f"{t['channels']}, {t['num_layers']} layers), float32, {t['budget_min']} min wall budget "
            f"({t['cpu_s'] / 60:.0f} CPU min) on a shared 2-core CPU, {t['global_step']} steps "
            f"(~{t['epochs']:.0f} epochs). Data: "
            f"independent geometries (GFN2-xTB MD at 500 K, one frame per 100 fs), random split "
            f"{sz['train']} train / {sz['valid']} valid / {sz['test']} test (`split.json` of the store). "
            f"Recipe: batch {t['batch_size']}, Adam, lr {t['lr']:g} {t['scheduler']}"
            f"{' to ' + format(t['min_lr'], 'g') if t['scheduler'] == 'cosine' else ''} over the budget, "
            f"EMA {t['ema_decay']}, loss MAE + MSE on H (Hartree); 1-min load average at the end "
            f"{t['load_average_1min_at_end']:.1f}.",
            "",
            "| metric | validation | test | QHNet paper (MD17 water, 500 train, 200k steps; other data) |",
            "| --- | --- | --- | --- |",
        ]
        va = t["valid"]
        for key, label, ref in (
            ("h_mae_uha", "H MAE (µHa)", "10.79"),
            ("eps_mae_uha", "ε occupied MAE (µHa)", "33.76"),
            ("psi_cos_x100", "ψ mean abs. cosine x100", "99.99"),
            ("homo_mae_mev", "HOMO MAE (meV)", "-"),
            ("gap_mae_mev", "gap MAE (meV)", "-"),
        ):
            fmt = ".5f" if key == "psi_cos_x100" else ".2f"
            lines.append(
                f"| {label} | {va.get(key, float('nan')):{fmt}} | {te.get(key, float('nan')):{fmt}} | {ref} |"
            )
        lines.append("")
    if "scf" in res:
        s = res["scf"]
        lines += _scf_table(
            f"SCF cycles on {s['n']} test geometries (PySCF RKS, conv_tol {s['conv_tol']:g}, "
            f"grids level 3; model inference {s['median_inference_s']:.3f} s, not included):",
            s,
        )
    if "scf_md" in res:
        s = res["scf_md"]
        lines += _scf_table(
            f"SCF cycles along an MD trajectory ({s['n']} consecutive frames "
            f"{s['frame_spacing_fs']:g} fs apart, `{Path(s['data']).name}`): previous frame's "
            "converged density vs the predicted H vs minao:",
            s,
        )
    lines.append("Speed against the reference QHNet code: `hamiltonian_speed.md` (`--stages speed`).")
    lines.append("")
    for note in res.get("notes", []):
        lines += [note, ""]
    lines.append(f"Load average when written: {os.getloadavg()[0]:.1f} (2 cores shared by several jobs).")
    tmp = path.with_suffix(".tmp")
    tmp.write_text("\n".join(lines) + "\n")
    os.replace(tmp, path)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--stages",
        default="select,train,test,scf,scf_md",
        help="comma-separated: speed, select, train, test, scf, scf_md",
    )
    p.add_argument(
        "--data",
        default=str(ROOT / "data/hamiltonian/water_random_sample"),
        help="store with split.json (scripts/make_hamiltonian_dataset.py)",
    )
    p.add_argument(
        "--md-data",
        default=str(ROOT / "data/hamiltonian/water"),
        help="store of consecutive MD frames for the previous-frame-density baseline",
    )
    p.add_argument(
        "--model-name", default=None, help="registered model (default: the fast Hamiltonian model)"
    )
    p.add_argument("--budget-min", type=float, default=20.0, help="final training wall-time budget, minutes")
    p.add_argument("--channels", type=int, default=64)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--lr", type=float, default=None, help="peak lr (default: the select stage's choice)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the select stage's choice")
    p.add_argument("--select-lr", default="1e-3,3e-3,6e-3", help="lr values probed by the select stage")
    p.add_argument("--select-batch", default="10", help="batch sizes probed by the select stage")
    p.add_argument("--select-budget-min", type=float, default=4.0, help="wall minutes per probe")
    p.add_argument(
        "--scheduler",
        default="cosine",
        choices=["cosine", "plateau", "none"],
        help="cosine: anneal lr to --min-lr over the wall-time budget; plateau: halve it when the "
        "validation set stalls for 4 epochs",
    )
    p.add_argument("--min-lr", type=float, default=1e-5, help="final (cosine) or lowest (plateau) lr")
    p.add_argument("--warmup-steps", type=int, default=0, help="linear lr warm-up, optimiser steps")
    p.add_argument("--ema-decay", type=float, default=0.99, help="EMA of the weights used for export")
    p.add_argument(
        "--speed-channels", type=int, default=160, help="channels of hamiltonian_conv in the speed stage"
    )
    p.add_argument(
        "--speed-layers", type=int, default=5, help="layers of hamiltonian_conv in the speed stage"
    )
    p.add_argument("--speed-repeats", type=int, default=5, help="interleaved timed calls per model and task")
    p.add_argument("--peer-code", default=str(QHNET_PEER_CODE), help="the reference's OpenDFT/QHNet folder "
                   f"(github.com/divelab/AIRS at {QHNET_COMMIT}) for the speed stage")
    p.add_argument("--n-scf", type=int, default=50, help="test geometries in the SCF comparison")
    p.add_argument("--n-scf-md", type=int, default=30, help="consecutive MD frames in the scf_md stage")
    p.add_argument("--scf-conv-tol", type=float, default=1e-9, help="PySCF energy convergence, Hartree")
    p.add_argument("--run-dir", default="/tmp/molequi_bench_hamiltonian")
    p.add_argument("--out", default=str(ROOT / "bench_results"))
    args = p.parse_args(argv)
    args.model_name = args.model_name or default_model_name()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    jpath = out / "hamiltonian.json"
    res = json.loads(jpath.read_text()) if jpath.exists() else {}
    res["reference"] = REFERENCE
    res.pop("speed", None)  # typed-in reference times of older runs; the speed stage writes its own file
    stages = args.stages.split(",")
    if "train" in stages:  # results of an older protocol must not sit beside the new ones
        for k in ("select", "train", "test", "scf", "scf_md", "notes", "previous_run"):
            if k != "select" or "select" in stages:
                res.pop(k, None)

    def save():
        from _common import provenance

        res["provenance"] = provenance(
            "QHNet",
            None,
            False,
            peer_version_note="accuracy: QHNet's paper numbers on MD17 water (other data), context only; "
            "the reference code trained on the same data in the same run: scripts/bench/qhnet_same_run.py; "
            "its speed in the same run: --stages speed (hamiltonian_speed.json)",
            scf_baseline="PySCF's minao, atom and huckel guesses; the previous MD frame's converged density",
            scf_baseline_measured_in_this_run=True,
            command=" ".join(["scripts/bench/hamiltonian.py", *(sys.argv[1:] if argv is None else argv)]),
            stages_run_last=stages,
        )
        tmp = jpath.with_suffix(".tmp")
        tmp.write_text(json.dumps(res, indent=1))
        os.replace(tmp, jpath)
        write_table(res, out / "hamiltonian.md")

    if "speed" in stages:
        sp = stage_speed(Path(args.peer_code), args.speed_channels, args.speed_layers, args.speed_repeats)
        given = sys.argv[1:] if argv is None else argv
        sp["command"] = " ".join(["python scripts/bench/hamiltonian.py", *given])
        write_speed(sp, out)
        stages = [s for s in stages if s != "speed"]
        if not stages:
            return 0
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    if "select" in stages:
        res["select"] = stage_select(args)
        save()
    if "train" in stages:
        chosen = res.get("select", {}).get("chosen", {})
        lr = args.lr if args.lr is not None else chosen.get("lr")
        bs = args.batch_size if args.batch_size is not None else chosen.get("batch_size")
        if lr is None or bs is None:
            raise SystemExit("give --lr and --batch-size or run the select stage first")
        res["train"] = stage_train(
            args, lr=lr, batch_size=bs, budget_min=args.budget_min, run_dir=args.run_dir
        )
        print(json.dumps(res["train"], indent=1), flush=True)
        save()
    model_path = res.get("train", {}).get("model_path")
    if any(k in stages for k in ("test", "scf", "scf_md")) and not (model_path and Path(model_path).exists()):
        raise SystemExit("the test / scf stages need a trained model: run the train stage first")
    if "test" in stages:
        res["test"] = stage_test(args, model_path)
        print(json.dumps(res["test"], indent=1), flush=True)
        save()
    if "scf" in stages:
        res["scf"] = stage_scf(args, model_path, args.n_scf)
        print(json.dumps(res["scf"]["guesses"], indent=1), flush=True)
        save()
    if "scf_md" in stages:
        res["scf_md"] = stage_scf_md(args, model_path, args.n_scf_md)
        print(json.dumps(res["scf_md"]["guesses"], indent=1), flush=True)
        save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
