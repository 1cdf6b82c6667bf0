"""Benchmarks of molequi's 3D generation (EDM without padding, DDIM, progressive distillation).

    python scripts/bench/generation.py speed            training throughput + time per denoising step
    python scripts/bench/generation.py train --minutes M  train EDM on all 128,744 QM9 geometries for M minutes
    python scripts/bench/generation.py sample CKPT      speed/quality table: 1000/250/50 steps, DDIM, students
    python scripts/bench/generation.py distill CKPT     progressive distillation 2S -> S -> ... (checkpoints)
    python scripts/bench/generation.py realdata         EDM metrics of 1000 random real QM9 molecules
    python scripts/bench/generation.py report           bench_results/generation.md from the JSON files

Results go to ``bench_results/generation_*.json`` (written atomically) and a markdown table. The reference
EDM numbers (its own code on this machine, from /work/shared/docs/targets.md) are quoted beside ours; the
"padded" rows re-run *our* network the way EDM batches (every molecule padded to 29 atoms, dense 29 x 29
edges including padding), in the same process and under the same load, to isolate what unpadded batching
buys.
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
import torch
from torch_geometric.data import Batch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from molequi.io import atomic_write_text  # noqa: E402
from molequi.models.generative.data import GeometryDataset, read_molecules, read_xyz_tarball  # noqa: E402
from molequi.models.generative.edm import EDM, count_parameters  # noqa: E402
from molequi.models.generative.graph import scatter_sum, sizes_to_batch  # noqa: E402
from molequi.models.generative.io import load_generative, save_checkpoint  # noqa: E402
from molequi.models.generative.metrics import Molecule, load_training_smiles, molecule_report  # noqa: E402

TARBALL = "/work/shared/data/real/ppqm__dataset-qm9/xyz.tar.gz"
SMILES_CSV = "/work/shared/data/real/valence-discovery__lapool/qm9.csv"
SUBSET = ROOT / "data" / "qm9_geometries" / "qm9_geometries.extxyz"
OUT = ROOT / "bench_results"
REFERENCE = {  # EDM's own code on this machine (targets.md), batch 64
    "paper_s_per_iter": 41.0, "small_s_per_iter": 8.4, "sample16_s_per_step": 1.0,
    "paper_mol_per_s": 64 / 41.0, "small_mol_per_s": 64 / 8.4,
}
EDM_ROWS = {  # published, % (atom stab, mol stab, valid, valid x unique)
    "data (EDM paper)": [99.0, 95.2, 97.7, 97.7], "EDM (paper, 3000 epochs on GPU)": [98.7, 82.0, 91.9, 90.7],
    "GeoLDM (paper)": [98.9, 89.4, 93.8, 92.7],
}


def hardware() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_average": os.getloadavg(), "note": "shared 2-core CPU (about 7 concurrent jobs)"}


def save_json(name: str, obj: dict) -> Path:
    path = OUT / f"generation_{name}.json"
    atomic_write_text(path, json.dumps(obj, indent=2, default=float) + "\n")
    return path


# ---------------------------------------------------------------- padded baseline (EDM's batching)
def padded_edges(num_graphs: int, n_max: int = 29) -> torch.Tensor:
    """EDM's dense batching: all n_max^2 pairs per molecule, padding nodes included (masked afterwards)."""
    loc = torch.arange(n_max)
    src = loc.repeat_interleave(n_max)
    dst = loc.repeat(n_max)
    offs = (torch.arange(num_graphs) * n_max).repeat_interleave(n_max * n_max)
    return torch.stack([src.repeat(num_graphs) + offs, dst.repeat(num_graphs) + offs])


def padded_loss(model: EDM, batch, n_max: int = 29) -> torch.Tensor:
    """EDM's loss with EDM's padded layout (same network): cost of B * 29^2 edges, as EDM pays it."""
    b = batch.batch
    B = int(batch.num_graphs)
    sizes = torch.bincount(b, minlength=B)
    local = torch.arange(b.numel()) - (torch.cumsum(sizes, 0) - sizes)[b]
    slot = b * n_max + local
    numbers = torch.ones(B * n_max, dtype=torch.long)
    pos = torch.zeros(B * n_max, 3)
    numbers[slot] = batch.numbers
    pos[slot] = batch.pos
    pb = sizes_to_batch(torch.full((B,), n_max))
    x, h = model.encode(numbers, pos, pb, B)
    t = torch.randint(0, model.config.timesteps + 1, (B,))
    z_x, z_h, ex, eh = model.noised(x, h, t, pb, B)
    ei = padded_edges(B, n_max)
    px, ph = model.dynamics(z_x, z_h, t.float() / model.config.timesteps, pb, ei)
    err = scatter_sum(((px - ex) ** 2).sum(-1) + ((ph - eh) ** 2).sum(-1), pb, B)
    return err.mean()


def time_it(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def cmd_speed(args) -> None:
    mols = read_molecules(str(SUBSET))
    ds = GeometryDataset(mols)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, len(ds), (64,), generator=g).tolist()
    batch = Batch.from_data_list([ds[i] for i in idx])
    results = {"hardware": hardware(), "reference": REFERENCE, "batch_atoms": int(batch.num_nodes),
               "training": {}, "sampling": {}}
    for name, hid, lay, reps in (("small", 64, 4, args.repeats_small), ("paper", 256, 9, args.repeats_paper)):
        torch.manual_seed(0)
        model = EDM(EDM.Config(hidden=hid, layers=lay))
        opt = torch.optim.Adam(model.parameters(), 1e-4)

        def step_ours():
            loss, _ = model.training_loss(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()

        def step_padded():
            loss = padded_loss(model, batch)
            opt.zero_grad()
            loss.backward()
            opt.step()

        step_ours()  # warm-up
        ours = time_it(step_ours, reps)
        padded = time_it(step_padded, reps)
        row = {"params": count_parameters(model), "s_per_iter": float(np.median(ours)),
               "s_per_iter_padded": float(np.median(padded)), "all_ours": ours, "all_padded": padded}
        row["mol_per_s"] = 64 / row["s_per_iter"]
        row["mol_per_s_padded"] = 64 / row["s_per_iter_padded"]
        row["speedup_vs_reference"] = REFERENCE[f"{name}_s_per_iter"] / row["s_per_iter"]
        row["speedup_vs_padded"] = row["s_per_iter_padded"] / row["s_per_iter"]
        results["training"][name] = row
        print(name, json.dumps(row), flush=True)
        if name == "paper":  # time per denoising step, 16 molecules, paper model
            model.eval()
            model.size_counts.zero_()
            for m in mols:
                model.size_counts[len(m)] += 1
            sizes = model.sample_sizes(16, torch.Generator().manual_seed(0))
            b16 = sizes_to_batch(sizes)
            from molequi.models.generative.graph import centred_gaussian, fully_connected_edges

            ei = fully_connected_edges(b16, 16)
            zx = centred_gaussian(b16, 16)
            zh = torch.randn(b16.numel(), model.n_features)
            with torch.no_grad():
                ours_s = time_it(lambda: model.step(zx, zh, 500, 499, b16, ei, 16), args.repeats_step)
                pb = sizes_to_batch(torch.full((16,), 29))
                pei = padded_edges(16)
                pzx, pzh = torch.randn(16 * 29, 3), torch.randn(16 * 29, model.n_features)
                pad_s = time_it(lambda: model.step(pzx, pzh, 500, 499, pb, pei, 16), args.repeats_step)
            results["sampling"]["paper_16_molecules"] = {
                "s_per_step": float(np.median(ours_s)), "s_per_step_padded": float(np.median(pad_s)),
                "speedup_vs_reference": REFERENCE["sample16_s_per_step"] / float(np.median(ours_s)),
                "atoms": int(b16.numel()), "all": ours_s, "all_padded": pad_s}
            print(json.dumps(results["sampling"]), flush=True)
    print("wrote", save_json("speed", results))


# ---------------------------------------------------------------- training on all of QM9
def cmd_train(args) -> None:
    t0 = time.perf_counter()
    mols = read_xyz_tarball(TARBALL) if not args.subset else read_molecules(str(SUBSET))
    ds = GeometryDataset(mols)
    read_s = time.perf_counter() - t0
    print(f"read {len(ds)} molecules in {read_s:.0f} s", flush=True)
    torch.manual_seed(args.seed)
    model = EDM(EDM.Config(hidden=args.hidden, layers=args.layers))
    ema = EDM(model.config)
    ema.load_state_dict(model.state_dict())
    opt = torch.optim.Adam(model.parameters(), args.lr, amsgrad=True)
    g = torch.Generator().manual_seed(args.seed)
    perm = torch.randperm(len(ds), generator=g)
    out = Path(args.out)
    start, it, seen, pos = time.perf_counter(), 0, 0, 0
    log = []
    while time.perf_counter() - start < args.minutes * 60:
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
            d = min(args.ema, (1 + it) / (10 + it))
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1 - d)
            ema.size_counts.copy_(model.size_counts)
        it += 1
        seen += args.batch_size
        if it % 50 == 0:
            el = time.perf_counter() - start
            log.append({"iter": it, "seconds": el, "loss": float(loss), **{k: float(v) for k, v in logs.items()}})
            print(f"it {it} {el:.0f} s loss {float(loss):.4f} ({seen / el:.1f} mol/s)", flush=True)
        if it % 500 == 0:
            save_checkpoint(ema, out, step=it)
    elapsed = time.perf_counter() - start
    save_checkpoint(ema, out, step=it)
    save_json("train", {"hardware": hardware(), "molecules": len(ds), "read_seconds": read_s,
                        "train_seconds": elapsed, "iterations": it, "molecules_seen": seen,
                        "epochs": seen / len(ds), "mol_per_s": seen / elapsed, "hidden": args.hidden,
                        "layers": args.layers, "batch_size": args.batch_size, "lr": args.lr, "ema": args.ema,
                        "params": count_parameters(model), "checkpoint": str(out), "log": log})
    print(f"done: {it} iterations, {seen} molecules ({seen / len(ds):.3f} epochs) in {elapsed:.0f} s")


# ---------------------------------------------------------------- sampling speed / quality
def evaluate(model, n, steps, method, batch_size, train_smiles, seed=0) -> dict:
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    mols = model.sample(n, steps=steps, method=method, batch_size=batch_size, generator=g)
    sec = time.perf_counter() - t0
    r = molecule_report(mols, train_smiles)
    r.pop("smiles")
    return {"steps": steps, "method": method, "n": n, "seconds": sec, "mol_per_s": n / sec, **r}


def cmd_sample(args) -> None:
    torch.set_grad_enabled(False)
    train_smiles = load_training_smiles(SMILES_CSV)
    model = load_generative(args.checkpoint)
    rows = []
    path = OUT / "generation_sample.json"
    if path.exists() and args.append:
        rows = json.loads(path.read_text())["rows"]
    for spec in args.configs:
        name, steps, method = spec.split(":")
        ckpt = args.checkpoint if name == "teacher" else name
        m = model if name == "teacher" else load_generative(ckpt)
        row = evaluate(m, args.n, int(steps), method, args.batch_size, train_smiles)
        row["model"] = "teacher" if name == "teacher" else Path(ckpt).name
        rows.append(row)
        print(json.dumps(row), flush=True)
        save_json("sample", {"hardware": hardware(), "checkpoint": args.checkpoint, "rows": rows})


def cmd_distill(args) -> None:
    from molequi.models.generative.distill import progressive_distillation

    mols = read_xyz_tarball(TARBALL, limit=args.molecules) if args.molecules else read_molecules(str(SUBSET))
    ds = GeometryDataset(mols)
    teacher = load_generative(args.checkpoint)
    t0 = time.perf_counter()
    paths = progressive_distillation(teacher, ds, args.start_steps, args.rounds, args.out_dir,
                                     iterations=args.iterations, batch_size=args.batch_size, lr=args.lr,
                                     max_seconds=args.minutes_per_round * 60)
    save_json("distill", {"hardware": hardware(), "teacher": args.checkpoint, "start_steps": args.start_steps,
                          "students": [str(p) for p in paths], "seconds": time.perf_counter() - t0,
                          "minutes_per_round": args.minutes_per_round, "batch_size": args.batch_size,
                          "lr": args.lr, "molecules": len(ds)})


def cmd_realdata(args) -> None:
    rng = np.random.default_rng(args.seed)
    idx = rng.choice(128744, args.n, replace=False)
    mols = read_xyz_tarball(TARBALL, indices=idx)
    r = molecule_report([Molecule(a.numbers, a.positions) for a in mols], load_training_smiles(SMILES_CSV))
    r.pop("smiles")
    res = {"n": args.n, "seed": args.seed, "ours": r,
           "edm_code_on_same_data": {"atom_stability": 99.53, "molecule_stability": 96.10, "validity": 98.2,
                                     "uniqueness": 100.0},
           "edm_paper_data_row": {"atom_stability": 99.0, "molecule_stability": 95.2, "validity": 97.7}}
    print(json.dumps(res, indent=1))
    save_json(f"realdata_seed{args.seed}", res)


def cmd_make_subset(args) -> None:
    n = 128744
    rng = np.random.default_rng(2026)
    idx = np.concatenate([np.arange(10), np.sort(rng.choice(np.arange(10, n), 1990, replace=False))])
    lines = []
    for a in read_xyz_tarball(TARBALL, indices=idx):
        lines += [str(len(a)), f'Properties=species:S:1:pos:R:3 name={a.info["name"][:-4]} pbc="F F F"']
        lines += [f"{s} {p[0]:.5f} {p[1]:.5f} {p[2]:.5f}" for s, p in zip(a.get_chemical_symbols(), a.positions)]
    atomic_write_text(SUBSET, "\n".join(lines) + "\n")


def cmd_toy(args) -> None:
    """Distillation where quality is measurable in a short CPU budget: EDM overfit on the ten smallest QM9
    molecules (ids 1-10), then 1000-step ancestral vs DDIM vs progressively distilled students."""
    from molequi.models.generative.distill import progressive_distillation
    from molequi.models.generative.metrics import canonical_smiles_set

    mols = read_molecules(str(SUBSET), limit=10)
    ds = GeometryDataset(mols)
    batch = Batch.from_data_list([ds[i] for i in range(10)] * 4)
    ckpt = OUT / "toy" / "teacher.pt"
    prev = _load("toy") or {}
    if args.reuse_teacher and ckpt.exists():
        model, train_s = load_generative(ckpt), prev.get("train_seconds", float("nan"))
    else:
        torch.manual_seed(0)
        model = EDM(EDM.Config(hidden=args.hidden, layers=args.layers, timesteps=1000))
        opt = torch.optim.Adam(model.parameters(), 3e-3)
        t0 = time.perf_counter()
        for _ in range(args.iterations):
            loss, _ = model.training_loss(batch)
            opt.zero_grad()
            loss.backward()
            opt.step()
        train_s = time.perf_counter() - t0
        model.eval()
        save_checkpoint(model, ckpt)
    known = canonical_smiles_set(["C", "N", "O", "C#C", "C#N", "C=O", "CC", "CO", "C#CC", "CC#N"])
    t0 = time.perf_counter()
    paths = progressive_distillation(model, [ds[i] for i in range(10)], args.start_steps, args.rounds,
                                     OUT / "toy", iterations=args.distill_iterations, batch_size=40,
                                     lr=args.distill_lr,
                                     log=None)
    distill_s = time.perf_counter() - t0
    rows = []
    torch.set_grad_enabled(False)
    specs = [(model, "teacher", 1000, "ancestral"), (model, "teacher", args.start_steps, "ddim")]
    for p in paths:
        st = load_generative(p)
        specs += [(model, "teacher", st.config.sampling_steps, "ddim"), (st, p.name, st.config.sampling_steps, "ddim")]
    for m, name, steps, method in specs:
        row = evaluate(m, args.n, steps, method, args.n, known)
        row["model"] = name
        row["novelty_is_fraction_outside_the_10"] = True
        rows.append(row)
        print(json.dumps(row), flush=True)
    save_json("toy", {"hardware": hardware(), "train_seconds": train_s, "train_iterations": args.iterations,
                      "hidden": args.hidden, "layers": args.layers, "distill_seconds": distill_s,
                      "distill_iterations_per_round": args.distill_iterations, "distill_lr": args.distill_lr,
                      "rows": rows})


def _load(name):
    path = OUT / f"generation_{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def cmd_report(args) -> None:
    lines = ["# 3D generation benchmarks (molequi EDM, unpadded)", "",
             "Machine: shared 2-core CPU (about 7 concurrent jobs; load averages recorded in the JSON files), "
             "torch CPU. Reference EDM numbers: EDM's own code on this machine "
             "(targets.md), measured under load. 'padded' = our network run with EDM's batching "
             "(29-atom padding, dense edges) in the same process.", ""]
    sp = _load("speed")
    if sp:
        hw = sp["hardware"]
        lines += ["## Training throughput (batch 64) and denoising step", "",
                  f"torch threads {hw['torch_threads']}, load average at the end {hw['load_average'][0]:.1f} "
                  f"(1 / 5 / 15 min: {', '.join(f'{v:.1f}' for v in hw['load_average'])}).", "",
                  "| model | params | ours s/iter | ours mol/s | padded s/iter | EDM code s/iter (ref) | "
                  "speed-up vs EDM code | vs padded |", "|---|---|---|---|---|---|---|---|"]
        for name, label in (("paper", "EGNN 9 x 256 (paper)"), ("small", "EGNN 4 x 64")):
            r = sp["training"].get(name)
            if r:
                lines.append(f"| {label} | {r['params']:,} | {r['s_per_iter']:.2f} | {r['mol_per_s']:.1f} | "
                             f"{r['s_per_iter_padded']:.2f} | {REFERENCE[name + '_s_per_iter']} | "
                             f"{r['speedup_vs_reference']:.1f}x | {r['speedup_vs_padded']:.1f}x |")
        r = sp["sampling"].get("paper_16_molecules")
        if r:
            lines += ["", f"Denoising step, 16 molecules ({r['atoms']} atoms), paper model: "
                          f"{r['s_per_step']:.3f} s (padded {r['s_per_step_padded']:.3f} s; EDM code ~1 s): "
                          f"{r['speedup_vs_reference']:.1f}x faster than EDM's code.", ""]
    sp1 = _load("speed_1thread_loaded")
    if sp1:
        a, b = sp1["training"]["paper"], sp1["training"]["small"]
        st = sp1["sampling"]["paper_16_molecules"]
        lines += [f"Earlier run, 1 thread under heavy load (load average {sp1['hardware']['load_average'][0]:.0f}): "
                  f"paper {a['s_per_iter']:.1f} s/iter (padded {a['s_per_iter_padded']:.1f}), small "
                  f"{b['s_per_iter']:.2f} s/iter (padded {b['s_per_iter_padded']:.2f}), step for 16 molecules "
                  f"{st['s_per_step']:.2f} s (padded {st['s_per_step_padded']:.2f}).", ""]
    sp2 = _load("speed_2thread_before_gather_fix")
    if sp2:
        a, b = sp2["training"]["paper"], sp2["training"]["small"]
        st = sp2["sampling"]["paper_16_molecules"]
        lines += [f"Run before gathers/scatters went through molequi.nn.scatter (2 threads, load "
                  f"{sp2['hardware']['load_average'][0]:.0f}): paper {a['s_per_iter']:.1f} s/iter (padded "
                  f"{a['s_per_iter_padded']:.1f}), small {b['s_per_iter']:.2f} s/iter (padded "
                  f"{b['s_per_iter_padded']:.2f}), step {st['s_per_step']:.2f} s (padded {st['s_per_step_padded']:.2f}). "
                  "Multithreaded CPU index_add_ (the backward of x[index]) was the bottleneck of training.", ""]
    tr = _load("train")
    if tr:
        lines += ["## Training on all QM9 geometries", "",
                  f"{tr['molecules']:,} molecules, EGNN {tr['layers']} x {tr['hidden']} ({tr['params']:,} "
                  f"parameters), batch {tr['batch_size']}, Adam(AMSGrad) lr {tr['lr']}, EMA {tr['ema']}: "
                  f"{tr['iterations']} iterations = {tr['epochs']:.3f} epochs in {tr['train_seconds'] / 60:.1f} "
                  f"min ({tr['mol_per_s']:.1f} mol/s) on the shared 2-core CPU. EDM: 3000 epochs on a GPU.", ""]
    sa = _load("sample")
    if sa:
        lines += ["## Speed / quality of samplers (EMA weights of the run above)", "",
                  "| model | sampler | steps | n | s | mol/s | wall-time speed-up vs 1000-step (step ratio) | atom stab | mol stab | "
                  "valid | valid strict | unique | valid x unique | novel |", "|---" * 14 + "|"]
        base = next((r for r in sa["rows"] if r["steps"] == 1000), None)
        for r in sa["rows"]:
            sp_up = (r["mol_per_s"] / base["mol_per_s"]) if base else float("nan")
            lines.append(f"| {r['model']} | {r['method']} | {r['steps']} | {r['n']} | {r['seconds']:.0f} | "
                         f"{r['mol_per_s']:.2f} | {sp_up:.1f}x ({1000 / r['steps']:.1f}x) | {r['atom_stability']:.1f} | "
                         f"{r['molecule_stability']:.1f} | {r['validity']:.1f} | {r['validity_strict']:.1f} | "
                         f"{r['uniqueness']:.1f} | {r['valid_x_unique']:.1f} | {r.get('novelty', float('nan')):.1f} |")
        lines += ["", "Wall times fluctuate with the other jobs on the machine; the step ratio is the speed-up an "
                      "unloaded machine gives (one network evaluation per step, plus one final x_0 prediction). "
                      "'novel' is against the lapool QM9 SMILES CSV, on which 23-24 % of *real* QM9 molecules already "
                      "count as novel (see below), so it is only a loose reference.", "", "Published rows (atom stab / mol stab / valid / valid x unique): " + "; ".join(
            f"{k} {' / '.join(str(v) for v in vals)}" for k, vals in EDM_ROWS.items()), ""]
    toy = _load("toy")
    if toy:
        lines += ["## Distillation where quality is measurable: EDM overfit on QM9 ids 1-10", "",
                  f"EGNN {toy['layers']} x {toy['hidden']}, T = 1000, {toy['train_iterations']} iterations "
                  f"({toy['train_seconds']:.0f} s); distillation {toy['distill_iterations_per_round']} iterations "
                  f"per round at lr {toy.get('distill_lr', 1e-3)} ({toy['distill_seconds']:.0f} s in all). 'novel' = fraction of unique valid SMILES that "
                  "are not one of the ten training molecules.", "",
                  "| model | sampler | steps | n | s | speed-up vs 1000-step | atom stab | mol stab | valid | "
                  "valid strict | unique | novel |", "|---" * 12 + "|"]
        base = toy["rows"][0]
        for r in toy["rows"]:
            lines.append(f"| {r['model']} | {r['method']} | {r['steps']} | {r['n']} | {r['seconds']:.1f} | "
                         f"{base['seconds'] / r['seconds']:.1f}x | {r['atom_stability']:.1f} | "
                         f"{r['molecule_stability']:.1f} | {r['validity']:.1f} | {r['validity_strict']:.1f} | "
                         f"{r['uniqueness']:.1f} | {r.get('novelty', float('nan')):.1f} |")
        lines.append("")
    for seed in range(5):
        rd = _load(f"realdata_seed{seed}")
        if rd:
            o = rd["ours"]
            lines += [f"Metrics on {rd['n']} random real QM9 molecules (seed {seed}): atom {o['atom_stability']:.2f}, "
                      f"molecule {o['molecule_stability']:.2f}, valid {o['validity']:.1f}, strict "
                      f"{o['validity_strict']:.1f}, unique {o['uniqueness']:.1f}, novel vs lapool CSV "
                      f"{o.get('novelty', float('nan')):.1f} (EDM's code on its 1000: 99.53 / 96.10 / 98.2 / 100).", ""]
    atomic_write_text(OUT / "generation.md", "\n".join(lines) + "\n")
    print("\n".join(lines))


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--repeats-small", type=int, default=5)
    s.add_argument("--repeats-paper", type=int, default=2)
    s.add_argument("--repeats-step", type=int, default=3)
    s.set_defaults(func=cmd_speed)
    s = sub.add_parser("train")
    s.add_argument("--minutes", type=float, default=30)
    s.add_argument("--hidden", type=int, default=64)
    s.add_argument("--layers", type=int, default=4)
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--lr", type=float, default=5e-4)
    s.add_argument("--ema", type=float, default=0.999)
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--subset", action="store_true", help="train on the shipped 2000-molecule subset")
    s.add_argument("--out", default=str(OUT / "edm_qm9.pt"))
    s.set_defaults(func=cmd_train)
    s = sub.add_parser("sample")
    s.add_argument("checkpoint")
    s.add_argument("--n", type=int, default=100)
    s.add_argument("--batch-size", type=int, default=100)
    s.add_argument("--append", action="store_true")
    s.add_argument("--configs", nargs="+", default=["teacher:1000:ancestral", "teacher:250:ancestral",
                                                  "teacher:50:ancestral", "teacher:250:ddim", "teacher:50:ddim"],
                   help="model:steps:method (model = teacher or a student checkpoint path)")
    s.set_defaults(func=cmd_sample)
    s = sub.add_parser("distill")
    s.add_argument("checkpoint")
    s.add_argument("--start-steps", type=int, default=256)
    s.add_argument("--rounds", type=int, default=2)
    s.add_argument("--iterations", type=int, default=100000)
    s.add_argument("--minutes-per-round", type=float, default=5)
    s.add_argument("--batch-size", type=int, default=32)
    s.add_argument("--lr", type=float, default=1e-4)
    s.add_argument("--molecules", type=int, default=0, help="first QM9 molecules of the tarball for distillation (0: the shipped 2000-molecule subset)")
    s.add_argument("--out-dir", default=str(OUT / "students"))
    s.set_defaults(func=cmd_distill)
    s = sub.add_parser("realdata")
    s.add_argument("--n", type=int, default=1000)
    s.add_argument("--seed", type=int, default=0)
    s.set_defaults(func=cmd_realdata)
    s = sub.add_parser("toy")
    s.add_argument("--hidden", type=int, default=32)
    s.add_argument("--layers", type=int, default=3)
    s.add_argument("--iterations", type=int, default=1500)
    s.add_argument("--start-steps", type=int, default=64)
    s.add_argument("--rounds", type=int, default=2)
    s.add_argument("--distill-iterations", type=int, default=300)
    s.add_argument("--distill-lr", type=float, default=1e-4)
    s.add_argument("--reuse-teacher", action="store_true", help="reuse bench_results/toy/teacher.pt")
    s.add_argument("--n", type=int, default=100)
    s.set_defaults(func=cmd_toy)
    s = sub.add_parser("report")
    s.set_defaults(func=cmd_report)
    s = sub.add_parser("make-subset")
    s.set_defaults(func=cmd_make_subset)
    args = p.parse_args(argv)
    args.func(args)


if __name__ == "__main__":
    main()
