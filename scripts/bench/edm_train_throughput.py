"""Training throughput of EDM through ``molequi train`` against the former hand-written loop.

    python scripts/bench/edm_train_throughput.py [--rounds 3] [--steps 120] [--skip 20] [--hidden 64]
        [--layers 4] [--batch-size 64] [--threads 1] [--out bench_results/edm_train_throughput.json]

Both sides train the same EDM (``--hidden`` x ``--layers``, 1000 steps) on the same 2000 QM9 geometries
(``data/qm9_geometries``) with batch ``--batch-size``, each in a fresh process with ``--threads`` torch /
OpenMP threads; rounds alternate which side runs first (interleaved, so machine load hits both alike).

- ``hand``: the loop ``scripts/bench/generation.py train`` ran before it called the trainer (commit
  5d3a08c, ``cmd_train``): a seeded permutation, ``Batch.from_data_list``, ``training_loss``, backward,
  clip to norm 1, Adam (AMSGrad), and an EMA ``lerp_`` with warm-up after every step.
- ``trainer``: ``molequi.train.run.train`` with ``configs/edm_qm9.yaml``'s EDM settings (AdamW AMSGrad,
  EDM's adaptive clip, EMA without warm-up, no sampling), i.e. what ``molequi train`` runs: Lightning
  loop, DataLoader collation, logging every 50 steps, checkpoints every 500 steps (as the old loop and
  ``generation.py train`` save them; on full QM9 an epoch is 1538 steps, so epoch-end checkpoints are as rare).

Molecules per second are counted over steps ``--skip`` .. ``--steps`` (first steps excluded: allocator and
one-off set-up), as wall time and as CPU time of the process (the machine is shared, so CPU time is the
steadier of the two). Prints a table and writes the JSON (with ``provenance``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SUBSET = ROOT / "data" / "qm9_geometries" / "qm9_geometries.extxyz"


def _records():
    from molequi.data.molecules import GeometryDataset, read_molecules

    return GeometryDataset(read_molecules(str(SUBSET))).records


def run_hand(args) -> dict:
    """The loop of 5d3a08c's ``cmd_train`` (its checkpoint writes every 500 steps fall outside the window)."""
    import torch
    from torch_geometric.data import Batch

    from molequi.models.generative.edm import EDM

    ds = _records()
    torch.manual_seed(0)
    model = EDM(EDM.Config(hidden=args.hidden, layers=args.layers))
    ema = EDM(model.config)
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), 5e-4, amsgrad=True)
    g = torch.Generator().manual_seed(0)
    perm = torch.randperm(len(ds), generator=g)
    it = pos = 0
    marks = {}
    while it < args.steps:
        if it == args.skip:
            marks["start"] = (time.perf_counter(), time.process_time())
        if pos + args.batch_size > len(perm):
            perm, pos = torch.randperm(len(ds), generator=g), 0
        batch = Batch.from_data_list([ds[i] for i in perm[pos: pos + args.batch_size].tolist()])
        pos += args.batch_size
        model.train()
        loss, logs = model.training_loss(batch)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        with torch.no_grad():
            d = min(0.999, (1 + it) / (10 + it))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - d)
            ema.size_counts.copy_(model.size_counts)
        it += 1
        if it % 50 == 0:
            float(loss), {k: float(v) for k, v in logs.items()}  # the old loop's log line
    marks["end"] = (time.perf_counter(), time.process_time())
    return marks


def run_trainer(args) -> dict:
    from lightning.pytorch.callbacks import Callback

    from molequi.config import Config
    from molequi.train.run import train

    marks = {}

    class Clock(Callback):
        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == args.skip and "start" not in marks:
                marks["start"] = (time.perf_counter(), time.process_time())

        def on_train_end(self, trainer, pl_module):
            marks["end"] = (time.perf_counter(), time.process_time())

    records = _records()
    with tempfile.TemporaryDirectory(prefix="edm_tp_") as tmp:
        cfg = Config.from_dict({
            "model": {"name": "edm", "hidden": args.hidden, "layers": args.layers},
            "task": {"name": "diffusion"},
            "optim": {"optimizer": "adamw", "lr": 5e-4, "amsgrad": True, "weight_decay": 1e-12,
                      "scheduler": "none", "ema_decay": 0.999, "ema_warmup": False, "grad_clip": "edm_adaptive"},
            "trainer": {"max_steps": args.steps, "batch_size": args.batch_size, "seed": 0, "accelerator": "cpu",
                        "devices": 1, "output": tmp, "progress_bar": False, "log_every": 50,
                        "checkpoint_every": 500},
        })
        train(cfg, splits={"train": records, "valid": [], "test": []}, callbacks=[Clock()], enable_summary=False)
    return marks


def worker(args) -> None:
    import torch

    torch.set_num_threads(args.threads)
    marks = (run_hand if args.worker == "hand" else run_trainer)(args)
    (w0, c0), (w1, c1) = marks["start"], marks["end"]
    n = (args.steps - args.skip) * args.batch_size
    print("RESULT " + json.dumps({"side": args.worker, "molecules": n, "wall_s": w1 - w0, "cpu_s": c1 - c0,
                                  "mol_per_s_wall": n / (w1 - w0), "mol_per_s_cpu": n / (c1 - c0)}))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--skip", type=int, default=20)
    ap.add_argument("--hidden", type=int, default=64)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sides", nargs="+", default=["hand", "trainer"], choices=["hand", "trainer"])
    ap.add_argument("--out", default=str(ROOT / "bench_results" / "edm_train_throughput.json"))
    ap.add_argument("--worker", choices=["hand", "trainer"], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.skip >= args.steps:
        ap.error("--skip must be below --steps")
    if args.worker:
        worker(args)
        return 0
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), MKL_NUM_THREADS=str(args.threads))
    runs = []
    for r in range(args.rounds):
        order = args.sides if r % 2 == 0 else list(reversed(args.sides))
        for side in order:
            cmd = [sys.executable, __file__, "--worker", side, "--steps", str(args.steps), "--skip",
                   str(args.skip), "--hidden", str(args.hidden), "--layers", str(args.layers), "--batch-size",
                   str(args.batch_size), "--threads", str(args.threads)]
            out = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=ROOT)
            line = next((ln for ln in out.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if out.returncode != 0 or line is None:
                sys.stderr.write(out.stdout[-3000:] + out.stderr[-3000:])
                raise SystemExit(f"{side} worker failed (exit {out.returncode})")
            row = {"round": r, **json.loads(line[len("RESULT "):]), "load_average": list(os.getloadavg())}
            runs.append(row)
            print(f"round {r} {side:>8}: {row['mol_per_s_wall']:7.1f} mol/s wall, {row['mol_per_s_cpu']:7.1f} "
                  f"mol/s CPU", flush=True)
    summary = {}
    for side in args.sides:
        rows = [r for r in runs if r["side"] == side]
        summary[side] = {k: statistics.median(r[k] for r in rows) for k in ("mol_per_s_wall", "mol_per_s_cpu")}
    if len(args.sides) == 2:
        summary["trainer_over_hand"] = {k: summary["trainer"][k] / summary["hand"][k]
                                        for k in ("mol_per_s_wall", "mol_per_s_cpu")}
    print(f"\n{'side':>8} {'mol/s wall':>11} {'mol/s CPU':>10}  (medians of {args.rounds} rounds)")
    for side in args.sides:
        print(f"{side:>8} {summary[side]['mol_per_s_wall']:11.1f} {summary[side]['mol_per_s_cpu']:10.1f}")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    import torch
    from _common import provenance

    from molequi.io import atomic_write_text

    torch.set_num_threads(args.threads)
    result = {
        "provenance": provenance(None, None, None, script="scripts/bench/edm_train_throughput.py",
                                 command=" ".join([Path(sys.executable).name, *sys.argv])),
        "settings": {k: getattr(args, k) for k in ("rounds", "steps", "skip", "hidden", "layers", "batch_size",
                                                    "threads")},
        "data": "data/qm9_geometries/qm9_geometries.extxyz (2000 QM9 geometries)",
        "hand": "the training loop of scripts/bench/generation.py at commit 5d3a08c (cmd_train)",
        "trainer": "molequi.train.run.train, EDM settings of configs/edm_qm9.yaml (no sampling)",
        "summary": summary, "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
