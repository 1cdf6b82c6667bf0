"""The OC20 models trained through ``molequi train`` at an equal CPU-time budget on the shipped OC20 frames.

For each model: parameters, optimiser steps done within the budget, median step time (CPU and wall),
validation energy MAE (meV per structure and per atom) and force MAE (meV/Å, all atoms and free atoms only,
as OC20's S2EF evaluation), and the force head (direct = a separate output, not -dE/dx; gradient = -dE/dx).

Data: ``data/oc20/oc20_real.extxyz`` (37 real OC20 S2EF frames: 36 of system random1000156, 1 of random0;
DFT energies / forces; read by the OC20 S2EF reader ``molequi.data.oc20.read_s2ef``, the reader behind
``data.name: oc20_s2ef``, tags and fixed atoms kept), split by a fixed seed (``--seed``) into ``--n-valid``
validation frames and the rest for training. The frames are consecutive snapshots of one relaxation, so
the validation frames are close to training frames.

Training: the library's ``molequi.train.run.train`` (what ``molequi train`` runs), the same config for every
model except the model section: Adam lr ``--lr``, no scheduler, batch 4, loss weights energy 1 / forces 100
(OC20 configs' force coefficient), float32, 1 thread. Each model runs in its own process (``nice``,
address-space limit), all at once, and a callback stops training once that process's CPU time spent in
training (``time.process_time()`` since training started) reaches ``--budget`` seconds; the trainer's
``max_time`` is wall-clock and is not used. Validation runs after training on the final weights.

Model sizes: each model's OC20 configuration (molequi's defaults for escn / equiformer_v2 = fairchem's OC20
S2EF configs, faenet = the FAENet package's defaults, mace = molequi's MACE defaults; equiformer_v2_molequi
(molequi's EquiformerV2-style variant) and frame_averaging are molequi's own) scaled down by one rule: every
width (channels, hidden sizes, filters, irreps multiplicities) divided by 4, layer / interaction counts divided
by 4 rounded up (at least 2), maximum degree lmax halved rounded up (mmax capped at it); radial bases, cutoffs,
neighbour caps and sampling grids unchanged. See ``model_configs``.

This compares how fast each model starts learning on a tiny data set in a tiny time, not final accuracy.

    python scripts/bench/oc20_train.py [--budget 90] [--models escn,equiformer_v2,...] [--seed 0]
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

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import print_table, provenance, save  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
DATA = ROOT / "data" / "oc20" / "oc20_real.extxyz"
N_FRAMES = 37
MODELS = "scn,escn,equiformer_v2,faenet,mace,equiformer_v2_molequi,frame_averaging"
RULE = ("widths / 4, layers / 4 rounded up (>= 2), lmax / 2 rounded up (mmax <= lmax); radial bases, "
        "cutoffs, neighbour caps, grids unchanged")


# the force head each configuration uses (direct: a separate force output; gradient: -dE/dx)
FORCE_HEAD = {"scn": "direct", "escn": "direct", "equiformer_v2": "direct", "faenet": "direct", "mace": "gradient",
              "equiformer_v2_molequi": "gradient", "frame_averaging": "gradient (frame-averaged)"}


def _w(n: int) -> int:  # widths / 4
    return max(1, n // 4)


def _layers(n: int) -> int:
    return max(2, math.ceil(n / 4))


def _lmax(n: int) -> int:
    return math.ceil(n / 2)


def model_configs() -> dict:
    """Every model's OC20 / default configuration scaled down by ``RULE`` (the source sizes in comments)."""
    return {
        # fairchem SCN OC20 S2EF: 16 layers, lmax 6, mmax 1, 128 sphere (reduce) channels, 1024 hidden
        # (lmax 4, not 3: SCN's second resolution has lmax max(4, lmax - 2), so it needs lmax >= 4)
        "scn": {"num_layers": _layers(16), "lmax": max(4, _lmax(6)), "mmax": 1, "sphere_channels": _w(128),
                "sphere_channels_reduce": _w(128), "hidden_channels": _w(1024)},
        # fairchem eSCN OC20 S2EF: 12 layers, lmax 6, mmax 2, 128 sphere / 256 hidden / 128 edge channels
        "escn": {"num_layers": _layers(12), "lmax": _lmax(6), "mmax": 2, "sphere_channels": _w(128),
                 "hidden_channels": _w(256), "edge_channels": _w(128)},
        # fairchem EquiformerV2 OC20 S2EF: 8 layers, lmax 4, mmax 2, 128 sphere channels, 8 heads, ...
        "equiformer_v2": {"num_layers": _layers(8), "lmax": _lmax(4), "mmax": 2,
                          "sphere_channels": _w(128), "attn_hidden_channels": _w(64),
                          "num_heads": _w(8), "attn_alpha_channels": _w(64),
                          "attn_value_channels": _w(16), "ffn_hidden_channels": _w(128),
                          "edge_channels": _w(128)},
        # FAENet package defaults: 4 interactions, 128 hidden / filters, 32 tag / pg, 128 force decoder
        # (hidden 40, not 32: the package needs more than tag 8 + physics 14 + 2 x period / group 8 = 38)
        "faenet": {"num_interactions": _layers(4), "hidden_channels": 40, "num_filters": _w(128),
                   "tag_hidden_channels": _w(32), "pg_hidden_channels": _w(32),
                   "force_decoder_hidden": _w(128), "frame_averaging": "2D"},
        # MACE defaults: 64x0e+64x1o, max_ell 3, correlation 3, 2 interactions, radial MLP [64, 64, 64]
        "mace": {"hidden_irreps": f"{_w(64)}x0e+{_w(64)}x1o", "max_ell": _lmax(3), "num_interactions": 2,
                 "MLP_irreps": f"{_w(16)}x0e", "radial_MLP": [_w(64)] * 3},
        # molequi's EquiformerV2-style model defaults: 2 layers, lmax 4, 32 channels
        "equiformer_v2_molequi": {"num_layers": 2, "lmax": _lmax(4), "mmax": 2, "channels": _w(32),
                                  "num_heads": _w(4), "hidden_channels": _w(32), "attn_channels": _w(16),
                                  "value_channels": _w(8), "ffn_channels": _w(32), "radial_hidden": _w(32),
                                  "element_channels": _w(16), "readout_hidden": _w(32)},
        # molequi's frame averaging around an edge MLP (models.py's size 64 x 3 layers -> 16 x 2); 2D frames
        "frame_averaging": {"mode": "2d", "frames": "all", "frames_train": "random",
                            "backbone": {"channels": _w(64), "num_layers": 2}},
    }


def split(n: int, n_valid: int, seed: int) -> tuple[list[int], list[int]]:
    perm = np.random.default_rng(seed).permutation(n).tolist()
    return sorted(perm[n_valid:]), sorted(perm[:n_valid])


def worker(args) -> dict:
    import torch
    from lightning.pytorch.callbacks import Callback

    from molequi.config import Config
    from molequi.data.oc20 import read_s2ef
    from molequi.models import get_model_class
    from molequi.train.evaluate import predict
    from molequi.train.run import train

    torch.set_num_threads(1)
    records = read_s2ef(DATA)
    tr, va = split(len(records), args.n_valid, args.seed)
    train_set, valid = [records[i] for i in tr], [records[i] for i in va]

    class CpuBudget(Callback):
        """Stops training once the CPU time spent since training started reaches the budget."""

        def __init__(self, budget: float):
            self.budget, self.cpu, self.wall = budget, [], []

        def on_train_start(self, trainer, pl_module):
            self.c0, self.w0 = time.process_time(), time.perf_counter()

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            self._c, self._w = time.process_time(), time.perf_counter()

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            now = time.process_time()
            self.cpu.append(now - self._c)
            self.wall.append(time.perf_counter() - self._w)
            if now - self.c0 >= self.budget:
                trainer.should_stop = True

        def on_train_end(self, trainer, pl_module):
            self.train_cpu, self.train_wall = time.process_time() - self.c0, time.perf_counter() - self.w0

    name = args.worker
    model_cfg = model_configs()[name]
    out = Path(args.run_dir)
    cfg = Config.from_dict({
        "model": {"name": name, **model_cfg},
        "task": {"weights": {"energy": 1.0, "forces": 100.0}},
        "optim": {"lr": args.lr, "scheduler": "none"},
        "trainer": {"max_steps": 10**7, "batch_size": 4, "accelerator": "cpu", "devices": 1,
                    "precision": "float32", "seed": args.seed, "output": str(out), "progress_bar": False,
                    "log_every": 10**6},
    })
    budget = CpuBudget(args.budget)
    torch.manual_seed(args.seed)
    result = train(cfg, splits={"train": train_set, "valid": [], "test": []}, callbacks=[budget],
                   enable_summary=False)
    from molequi.checkpoint import load_model

    model = load_model(result.model_path)
    pred = predict(model, valid, model.r_max, batch_size=4)
    fixed = torch.cat([r.fixed.reshape(-1) for r in valid]).numpy().astype(bool)
    df = np.abs(pred.forces_pred - pred.forces_true)
    de = np.abs(pred.energy_pred - pred.energy_true)
    return {
        "model": name,
        "registered_as": get_model_class(name).__name__,
        "params": sum(p.numel() for p in model.parameters()),
        "force_head": FORCE_HEAD[name],
        "conservative": bool(getattr(model, "conservative", True)),
        "steps": result.global_step,
        "train_cpu_s": budget.train_cpu,
        "train_wall_s": budget.train_wall,
        "step_cpu_s_median": float(np.median(budget.cpu)),
        "step_wall_s_median": float(np.median(budget.wall)),
        "E_MAE_meV": float(de.mean()) * 1000,
        "E_MAE_meV_per_atom": float((de / pred.n_atoms).mean()) * 1000,
        "F_MAE_meV/A": float(df.mean()) * 1000,
        "F_MAE_free_meV/A": float(df[~fixed].mean()) * 1000,
        "n_train": len(train_set),
        "n_valid": len(valid),
        "config": model_cfg,
    }


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budget", type=float, default=60.0, help="training CPU seconds per model")
    ap.add_argument("--models", default=MODELS)
    ap.add_argument("--seed", type=int, default=0, help="split, weights and data-order seed")
    ap.add_argument("--n-valid", type=int, default=8)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--mem-gib", type=float, default=6.0, help="address-space limit per model process")
    ap.add_argument("--out", default="oc20_train", help="bench_results/OUT.json")
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    ap.add_argument("--run-dir", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker:
        row = worker(args)
        Path(args.result).write_text(json.dumps(row))
        return
    import torch

    torch.set_num_threads(1)  # as each model process (provenance's threads)
    load_start, wall_start = os.getloadavg(), time.perf_counter()
    names = args.models.split(",")
    tmp = Path(tempfile.mkdtemp(prefix="oc20_train_"))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    procs = {}
    for name in names:  # one process per model, all at once: each process's CPU clock is its own
        cmd = ["prlimit", f"--as={int(args.mem_gib * 2**30)}", "nice", "-n", "5", sys.executable, __file__,
               "--worker", name, "--run-dir", str(tmp / name), "--result", str(tmp / f"{name}.json"),
               "--budget", str(args.budget), "--seed", str(args.seed), "--n-valid", str(args.n_valid),
               "--lr", str(args.lr)]
        log = open(tmp / f"{name}.log", "w")
        procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
    rows, failed = [], {}
    for name, (p, log) in procs.items():
        rc = p.wait()
        log.close()
        res = tmp / f"{name}.json"
        if rc == 0 and res.exists():
            rows.append(json.loads(res.read_text()))
        else:
            failed[name] = f"exit {rc}: " + (tmp / f"{name}.log").read_text()[-1500:]
            print(f"{name} failed ({rc}); log {tmp / f'{name}.log'}", file=sys.stderr)
    cols = ["model", "params", "force_head", "steps", "train_cpu_s", "train_wall_s", "step_cpu_s_median",
            "step_wall_s_median", "E_MAE_meV", "E_MAE_meV_per_atom", "F_MAE_meV/A", "F_MAE_free_meV/A"]
    print_table(rows, cols)
    from molequi.data.oc20 import read_s2ef

    records = read_s2ef(DATA)
    valid = [records[i] for i in split(len(records), args.n_valid, args.seed)[1]]
    zero = float(np.abs(np.concatenate([r.forces.numpy() for r in valid])).mean())  # all atoms
    print(f"zero-force predictor on the validation frames: force MAE {zero * 1000:.1f} meV/A")
    load_end = os.getloadavg()
    save(args.out, {
        "args": {k: v for k, v in vars(args).items() if k not in ("worker", "run_dir", "result")},
        "data": str(DATA.relative_to(ROOT)),
        "split": dict(zip(("train_frames", "valid_frames"), split(N_FRAMES, args.n_valid, args.seed)),
                       seed=args.seed),
        "scaling_rule": RULE,
        "optimiser": {"optimizer": "adam", "lr": args.lr, "scheduler": "none", "batch_size": 4,
                      "weights": {"energy": 1.0, "forces": 100.0}, "precision": "float32"},
        "processes_at_once": len(names),
        "total_wall_s": time.perf_counter() - wall_start,
        "F_MAE_zero_predictor_meV/A": zero * 1000,
        "rows": rows,
        "failed": failed,
    }, provenance(None, None, None, threads_per_model_process=1,
                  load_average_start=list(load_start), load_average_end=list(load_end)))


if __name__ == "__main__":
    main()
