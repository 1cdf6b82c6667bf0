"""Kill-and-resume, long version: a tiny MACE run SIGKILLed at 10 random points and resumed each time.

Each kill is one of: as soon as a checkpoint of step >= s exists; a random fraction of a second after that
(landing in a later step, its logging, a validation round or the next checkpoint write); inside the
checkpoint write of step s (bytes in the temporary file, before the rename); or inside the validation round
after step s. After every kill every
``*.ckpt`` must load with ``weights_only=True``; after the last relaunch the run must equal the same run
uninterrupted bit for bit (weights, EMA weights, optimiser and plateau-scheduler state, data position, every
logged metric). Deterministic CPU settings: one thread, ``torch.use_deterministic_algorithms(True)``.

    python scripts/bench/resume_faults.py [--kills 10] [--steps 70] [--seed 0] [--out resume_faults]

Prints the JSON report and writes ``bench_results/<out>.json``. Exit status 1 when a resume was not exact or
a checkpoint was unreadable. The harness is the one of ``tests/train/test_exact_resume.py``.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parents[1] / "tests" / "train"))

from _common import provenance, save  # noqa: E402
from conftest import morse_structures  # noqa: E402
from resume_harness import check_checkpoints, compare, mace_config, run_to_end, run_with_kills  # noqa: E402


def kill_plan(n: int, steps: int, seed: int) -> list[tuple]:
    """``n`` kill points spread over ``steps`` steps (one per window), kinds and delays drawn at random."""
    rng = random.Random(seed)
    window = (steps - 6) // n
    plan = []
    for k in range(n):
        step = 3 + k * window + rng.randrange(max(1, window - 2))
        kind = rng.choice(["after", "after_delay", "write", "val"])
        if kind == "val":  # validation rounds follow every 4th step (global steps 4, 8, ...)
            step = max(4, step - step % 4)
        if kind == "after_delay":
            plan.append(("after", step, round(rng.uniform(0.0, 0.2), 3)))
        else:
            plan.append((kind, step))
    return plan


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kills", type=int, default=10)
    ap.add_argument("--steps", type=int, default=70)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="resume_faults")
    args = ap.parse_args()
    from ase.io import write

    from molequi.data.records import data_to_atoms

    plan = kill_plan(args.kills, args.steps, args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "morse.xyz"
        write(data, [data_to_atoms(r) for r in morse_structures(10, seed=3)], format="extxyz")
        t0 = time.perf_counter()
        run_to_end(mace_config(tmp / "reference", data, args.steps))
        t_ref = time.perf_counter() - t0
        cfg = mace_config(tmp / "killed", data, args.steps)
        t0 = time.perf_counter()
        kills = run_with_kills(cfg, plan)
        t_killed = time.perf_counter() - t0
        diffs = compare(tmp / "reference" / "run", tmp / "killed" / "run")
        final_unreadable = check_checkpoints(tmp / "killed" / "run" / "checkpoints")
    unreadable = sum(len(k["unreadable"]) for k in kills) + len(final_unreadable)
    report = {
        "what": "tiny MACE (2 elements, 8x0e+8x1o, max_ell 1, 1 layer), EMA 0.9, plateau scheduler, "
                "8 training + 2 validation Morse H4O2 clusters, batch 3, checkpoint every step, validation "
                "every 4 steps; SIGKILL at each point then --resume auto",
        "steps": args.steps, "seed": args.seed, "kills": kills,
        "n_kills": len(kills), "exact": not diffs, "differences": diffs[:50],
        "unreadable_checkpoints": unreadable,
        "tolerance": "bitwise (torch.equal on every tensor, == on every logged metric)",
        "seconds": {"uninterrupted": round(t_ref, 1), "killed_and_resumed": round(t_killed, 1)},
    }
    print(json.dumps(report, indent=2))
    save(args.out, report, provenance(None, None, None))
    return 0 if not diffs and unreadable == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
