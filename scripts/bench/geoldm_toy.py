"""GeoLDM where generation quality is measurable in a short CPU budget: GeoLDM overfit on QM9 ids 1-10 with the
recipe of EDM's toy teacher (``scripts/bench/generation.py toy``: 64 features, 4 layers, T = 1000, batch 80 =
the 10 molecules x 8, Adam lr 1e-3 cosine to 0, gradient norm clip 1, EMA 0.999), latent_nf 1 and
trainable_ae as GeoLDM's README; then molequi's EDM with the same recipe and iterations, in the same run. Both
sample n molecules with the 1000-step ancestral sampler (same seed) and are scored by
molequi.tasks.generation_metrics (EDM's stability, RDKit validity; novelty = fraction outside the 10).

    python scripts/bench/geoldm_toy.py [--iterations 6000] [--n 500]

Prints a table and saves bench_results/geoldm_toy.json (with a provenance block). 1 torch thread.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import generation as G  # noqa: E402  (scripts/bench/generation.py)
from _common import print_table, provenance, save  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--iterations", type=int, default=6000, help="optimiser steps (EDM's toy teacher: 20000)")
    p.add_argument("--n", type=int, default=500, help="molecules sampled per model")
    p.add_argument("--max-minutes", type=float, default=None, help="stop training after this wall time")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    from molequi.data.molecules import read_molecules
    from molequi.models.generative.edm import count_parameters
    from molequi.models.generative.io import save_checkpoint
    from molequi.tasks.generation_metrics import canonical_smiles_set

    mols = read_molecules(str(G.SUBSET), limit=10)
    ds = G.GeometryDataset(mols)
    records = [ds[i] for i in range(10)]
    known = canonical_smiles_set(G.TOY_SMILES)
    models, training, rows = {}, {}, []
    for name, keys in (("GeoLDM", {"name": "geoldm", "latent_nf": 1, "trainable_ae": True}), ("EDM", {"name": "edm"})):
        torch.set_grad_enabled(True)
        t0, c0 = time.perf_counter(), time.process_time()
        model, steps, log = G.train_edm(records * 8, hidden=64, layers=4, timesteps=1000, lr=1e-3, amsgrad=False,
                                        scheduler="cosine", ema=0.999, batch_size=80, max_steps=args.iterations,
                                        max_time=None if args.max_minutes is None else args.max_minutes * 60,
                                        seed=0, model_keys=keys)
        training[name] = {"hidden": 64, "layers": 4, "params": count_parameters(model), "iterations": steps,
                          "batch": 80, "lr": 1e-3, "lr_schedule": "cosine to 0 over --iterations", "ema": 0.999,
                          "grad_clip": 1.0, "train_seconds": time.perf_counter() - t0,
                          "train_cpu_seconds": time.process_time() - c0, "last_losses": log[-3:], **keys}
        print(json.dumps(training[name]), flush=True)
        models[name] = model.eval()
        save_checkpoint(model, G.OUT / "toy" / f"{keys['name']}_overfit.pt")  # git-ignored
    torch.set_grad_enabled(False)
    for name, model in models.items():
        row = G.evaluate(model, args.n, 1000, "ancestral", min(args.n, 200), known)
        rows.append({"model": name, "train_cpu_seconds": training[name]["train_cpu_seconds"], **row})
        print(json.dumps(rows[-1]), flush=True)
    print_table(rows, ["model", "n", "atom_stability", "molecule_stability", "validity", "novelty",
                       "train_cpu_seconds", "cpu_seconds"])
    save("geoldm_toy", {"molecules": 10, "training": training, "rows": rows},
         provenance(None, None, None, note="no peer code: molequi's GeoLDM and molequi's EDM, trained and "
                    "sampled in this run with the same recipe"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
