"""Benchmarks of molequi's 3D generation (EDM without padding, DDIM, progressive distillation).

    python scripts/bench/generation.py speed [--peer-code EDM]  training iteration + denoising step, EDM's code
                                                        and molequi's EDM in the same run, interleaved
    python scripts/bench/generation.py train --minutes M  train EDM on all 128,744 QM9 geometries for M minutes
    python scripts/bench/generation.py sample CKPT      speed/quality table: 1000/250/50 steps, DDIM, students
    python scripts/bench/generation.py distill CKPT     progressive distillation 2S -> S -> ... (checkpoints)
    python scripts/bench/generation.py realdata         EDM metrics of 1000 random real QM9 molecules
    python scripts/bench/generation.py report           bench_results/generation.md from the JSON files

Results go to ``bench_results/generation_*.json`` (written atomically) and a markdown table. ``speed`` runs
EDM's own code (github.com/ehoogeboom/e3_diffusion_for_molecules at the commit in EDM_COMMIT; --peer-code
points at a clone) next to molequi's EDM in the same process: the same 64 QM9 molecules, the same sizes
(EGNN 4 x 64 and the paper's 9 x 256), the same optimiser and threads, calls interleaved; EDM on its own
padded layout (its collate, its sampler's 29-atom padding), molequi on its unpadded batches.
"""

from __future__ import annotations

import argparse
import contextlib
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

from _common import interleaved  # noqa: E402

from molequi.data.molecules import GeometryDataset, Molecule, read_molecules, read_xyz_tarball  # noqa: E402
from molequi.io import atomic_path, atomic_write_text  # noqa: E402
from molequi.models.generative.edm import EDM, count_parameters  # noqa: E402
from molequi.models.generative.graph import sizes_to_batch  # noqa: E402
from molequi.models.generative.io import load_generative, save_checkpoint  # noqa: E402
from molequi.tasks.generation_metrics import load_training_smiles, molecule_report  # noqa: E402

# full QM9 (not shipped): the ppqm geometry tarball xyz.tar.gz and the lapool qm9.csv SMILES; point these at
# your copies (layouts in docs/formats.md)
TARBALL = os.environ.get("MOLEQUI_QM9_TARBALL", "qm9/xyz.tar.gz")
SMILES_CSV = os.environ.get("MOLEQUI_QM9_SMILES_CSV", "qm9/qm9.csv")
SUBSET = ROOT / "data" / "qm9_geometries" / "qm9_geometries.extxyz"
OUT = ROOT / "bench_results"
TOY_TEACHER = str(OUT / "toy" / "teacher.pt")  # git-ignored, as are the students under toy/<name>/
TOY_TEACHER_GEOLDM = str(OUT / "toy" / "geoldm_teacher.pt")  # toy --model geoldm
EDM_ROWS = {  # published, % (atom stab, mol stab, valid, valid x unique)
    "data (EDM paper)": [99.0, 95.2, 97.7, 97.7], "EDM (paper, 3000 epochs on GPU)": [98.7, 82.0, 91.9, 90.7],
    "GeoLDM (paper)": [98.9, 89.4, 93.8, 92.7],
}


def hardware() -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
            "load_average": os.getloadavg(), "note": "shared 2-core CPU; the load average shows the other jobs"}


def _repo_path(path) -> str:
    """``path`` relative to the repository when it lies inside it (results name no one's home directory)."""
    p = Path(path).resolve()
    return str(p.relative_to(ROOT)) if p.is_relative_to(ROOT) else str(path)


def save_json(name: str, obj: dict) -> Path:
    path = OUT / f"generation_{name}.json"
    atomic_write_text(path, json.dumps(obj, indent=2, default=float) + "\n")
    return path


# ---------------------------------------------------------------- speed against EDM's own code, same run
EDM_PEER = "EDM (ehoogeboom/e3_diffusion_for_molecules)"
EDM_COMMIT = "fce07d701a2d2340f3522df588832c2c0f7e044a"
EDM_PEER_CODE = ROOT.parent / "shared" / "peers" / "edm"  # a clone of EDM_PEER at EDM_COMMIT
SPEED_SIZES = {"small": (64, 4), "paper": (256, 9)}  # EGNN features, layers


def _edm_peer(peer_code: Path, hidden: int, layers: int, seed: int):
    """EDM's EnVariationalDiffusion built by its own ``qm9.models.get_model`` (QM9 options of its README, at
    ``hidden`` x ``layers``), float32, with its loss, optimiser, collate and centring functions."""
    sys.path.insert(0, str(ROOT / "scripts" / "parity"))
    from edm import QM9_DEFAULTS, _import_peer  # scripts/parity/edm.py

    get_dataset_info, en_diffusion, qm9_models = _import_peer(peer_code)
    from equivariant_diffusion.utils import remove_mean_with_mask
    from qm9 import losses
    from qm9.data.collate import PreprocessQM9

    options = argparse.Namespace(**{**QM9_DEFAULTS, "nf": hidden, "n_layers": layers, "lr": 1e-4})
    info = get_dataset_info("qm9", False)
    torch.manual_seed(seed)
    with contextlib.redirect_stdout(sys.stderr):
        model, nodes_dist, _ = qm9_models.get_model(options, torch.device("cpu"), info, None)
    return dict(model=model.float(), nodes_dist=nodes_dist, args=options, optim=qm9_models.get_optim(options, model),
                losses=losses, collate=PreprocessQM9(load_charges=True).collate_fn,
                remove_mean=remove_mean_with_mask, en_diffusion=en_diffusion)


def _edm_batch(peer: dict, mols) -> dict:
    """``mols`` as EDM's QM9 loader gives them: per-molecule dicts (positions, charges = Z, one_hot over its
    atom_decoder) through its ``PreprocessQM9.collate_fn`` (padded to the batch's largest molecule, dense
    N x N edge mask)."""
    species = torch.tensor([1, 6, 7, 8, 9])
    items = []
    for m in mols:
        z = torch.as_tensor(np.asarray(m.numbers), dtype=torch.long)
        items.append({"num_atoms": torch.tensor(len(z)), "charges": z,
                      "positions": torch.as_tensor(np.asarray(m.positions), dtype=torch.float32),
                      "one_hot": z.unsqueeze(-1) == species.unsqueeze(0)})
    data = peer["collate"](items)
    node_mask = data["atom_mask"].float().unsqueeze(2)
    return {"x": data["positions"].float(), "node_mask": node_mask, "edge_mask": data["edge_mask"].float(),
            "h": {"categorical": data["one_hot"].float(), "integer": data["charges"].float()}}


def speed_training(peer: dict, model: EDM, mols, batch, repeats: int) -> dict:
    """One training iteration (loss forward, backward, AdamW(AMSGrad) step, EDM's get_optim on both sides) of
    EDM's code on its padded batch and of molequi's EDM on the unpadded batch of the same 64 molecules."""
    eb = _edm_batch(peer, mols)
    edm, args, eopt = peer["model"].train(), peer["args"], peer["optim"]
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, amsgrad=True, weight_decay=1e-12)
    model.train()

    def step_edm():  # train_test.train_epoch's body, less EMA, gradient clipping and logging
        x = peer["remove_mean"](eb["x"], eb["node_mask"])
        eopt.zero_grad()
        nll, _, _ = peer["losses"].compute_loss_and_nll(args, edm, peer["nodes_dist"], x, eb["h"],
                                                        eb["node_mask"], eb["edge_mask"], None)
        nll.backward()
        eopt.step()

    def step_ours():
        loss, _ = model.training_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()

    t = interleaved({"edm": step_edm, "molequi": step_ours}, repeats)
    B, N = eb["x"].shape[:2]
    sizes = torch.bincount(batch.batch)
    return {"params_edm": count_parameters(edm), "params_molequi": count_parameters(model), "molecules": B,
            "atoms": int(batch.num_nodes), "edm_padded_nodes": B * N, "edm_dense_pairs": B * N * N,
            "molequi_edges": int((sizes * (sizes - 1)).sum()), "timings": t,
            "edm_over_molequi_cpu": t["edm"]["median_cpu_s"] / t["molequi"]["median_cpu_s"],
            "edm_over_molequi_wall": t["edm"]["median_wall_s"] / t["molequi"]["median_wall_s"]}


def speed_sampling(peer: dict, model: EDM, mols, repeats: int, n: int = 16, loop_steps: int = 10) -> dict:
    """One ancestral denoising step t = 500 -> 499 for ``n`` molecules (sizes drawn from the subset's
    histogram), in eval mode without gradients: EDM's ``sample_p_zs_given_zt`` on the layout its
    ``qm9.sampling.sample`` uses (every molecule padded to 29 atoms, dense edge mask), plainly and inside
    molequi.nn.heap.retained_heap (the allocator setting molequi's sampler uses, offered to EDM too);
    molequi's ``EDM.step`` on the unpadded batch, and a whole ``loop_steps``-step ``EDM.sample_batch`` per
    network evaluation (what molequi's sampler pays per step, retained_heap included)."""
    from molequi.models.generative.graph import centred_gaussian, fully_connected_edges
    from molequi.nn.heap import retained_heap

    model.eval()
    edm = peer["model"].eval()
    model.size_counts.zero_()
    for m in mols:
        model.size_counts[len(m)] += 1
    sizes = model.sample_sizes(n, torch.Generator().manual_seed(0))
    b = sizes_to_batch(sizes)
    ei = fully_connected_edges(b, n)
    g = torch.Generator().manual_seed(1)
    zx, zh = centred_gaussian(b, n, generator=g), torch.randn(b.numel(), model.n_features, generator=g)
    n_max = 29  # EDM's dataset_info['max_n_nodes']: qm9.sampling.sample pads every molecule to it
    node_mask = (torch.arange(n_max).unsqueeze(0) < sizes.unsqueeze(1)).float()
    edge_mask = node_mask.unsqueeze(1) * node_mask.unsqueeze(2)
    edge_mask = (edge_mask * ~torch.eye(n_max, dtype=torch.bool).unsqueeze(0)).view(n * n_max * n_max, 1)
    node_mask = node_mask.unsqueeze(2)
    torch.manual_seed(1)
    zt = edm.sample_combined_position_feature_noise(n, n_max, node_mask)
    s_arr, t_arr = torch.full((n, 1), 499 / edm.T), torch.full((n, 1), 500 / edm.T)

    def edm_step():
        edm.sample_p_zs_given_zt(s_arr, t_arr, zt, node_mask, edge_mask, None)

    def edm_step_heap():
        with retained_heap():
            edm_step()

    def ours_loop():
        model.sample_batch(sizes, steps=loop_steps, generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        t = interleaved({"edm": edm_step, "edm_retained_heap": edm_step_heap,
                         "molequi_step": lambda: model.step(zx, zh, 500, 499, b, ei, n),
                         "molequi_loop": ours_loop}, repeats)
    per = loop_steps + 1  # network evaluations of one sample_batch call
    for k in ("wall_s", "cpu_s"):
        t["molequi_loop"][k] = [v / per for v in t["molequi_loop"][k]]
    for k in ("median_wall_s", "median_cpu_s"):
        t["molequi_loop"][k] /= per
    for k in ("iqr_wall_s", "iqr_cpu_s"):
        t["molequi_loop"][k] = [v / per for v in t["molequi_loop"][k]]
    return {"molecules": n, "atoms": int(b.numel()), "molequi_edges": int(ei.shape[1]),
            "edm_padded_nodes": n * n_max, "edm_dense_pairs": n * n_max * n_max, "loop_steps": loop_steps,
            "timings": t,
            "edm_over_molequi_step_cpu": t["edm"]["median_cpu_s"] / t["molequi_step"]["median_cpu_s"],
            "edm_over_molequi_step_wall": t["edm"]["median_wall_s"] / t["molequi_step"]["median_wall_s"],
            "edm_over_molequi_loop_cpu": t["edm"]["median_cpu_s"] / t["molequi_loop"]["median_cpu_s"],
            "edm_over_molequi_loop_wall": t["edm"]["median_wall_s"] / t["molequi_loop"]["median_wall_s"]}


def _edm_commit(peer_code: Path) -> str | None:
    """The peer tree's git commit where it is a clone; None for a plain copy (then EDM_COMMIT is assumed)."""
    import subprocess

    try:
        top = subprocess.run(["git", "-C", str(peer_code), "rev-parse", "--show-toplevel", "HEAD"],
                             capture_output=True, text=True, timeout=10)
    except OSError:
        return None
    lines = top.stdout.split()
    if top.returncode != 0 or len(lines) != 2 or Path(lines[0]).resolve() != peer_code.resolve():
        return None  # not a clone of its own (a copy, or a folder inside another repository)
    return lines[1]


def cmd_speed(args) -> None:
    from _common import provenance

    torch.set_num_threads(args.threads)
    peer_code = Path(args.peer_code)
    if not (peer_code / "equivariant_diffusion" / "en_diffusion.py").exists():
        raise SystemExit(f"--peer-code {peer_code}: not EDM's source tree; clone "
                         f"github.com/ehoogeboom/e3_diffusion_for_molecules at {EDM_COMMIT}")
    mols = read_molecules(str(SUBSET))
    ds = GeometryDataset(mols)
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, len(ds), (64,), generator=g).tolist()
    batch = Batch.from_data_list([ds[i] for i in idx])
    chosen = [mols[i] for i in idx]
    results = {"hardware": hardware(), "batch_molecules": 64, "batch_atoms": int(batch.num_nodes),
               "repeats": {"training_small": args.repeats_small, "training_paper": args.repeats_paper,
                           "sampling": args.repeats_step}, "training": {}, "sampling": {}}
    for name in args.sizes:
        hid, lay = SPEED_SIZES[name]
        torch.manual_seed(0)
        model = EDM(EDM.Config(hidden=hid, layers=lay))
        peer = _edm_peer(peer_code, hid, lay, seed=0)
        reps = args.repeats_small if name == "small" else args.repeats_paper
        results["training"][name] = speed_training(peer, model, chosen, batch, reps)
        print(name, "training", json.dumps({k: v for k, v in results["training"][name].items() if k != "timings"}),
              flush=True)
        if name == "paper":
            results["sampling"]["paper_16_molecules"] = speed_sampling(peer, model, mols, args.repeats_step)
            print(name, "sampling", json.dumps({k: v for k, v in results["sampling"]["paper_16_molecules"].items()
                                               if k != "timings"}), flush=True)
    commit = _edm_commit(peer_code)
    results["provenance"] = provenance(
        EDM_PEER, commit or EDM_COMMIT, True, peer_code=f"github.com/ehoogeboom/e3_diffusion_for_molecules @ "
        f"{commit or EDM_COMMIT}" + ("" if commit else " (a copy without .git: the commit of its README)"),
        command=" ".join(["python scripts/bench/generation.py speed", *args.argv]),
        notes="EDM's own EGNN_dynamics_QM9 + EnVariationalDiffusion (qm9.models.get_model, its QM9 README "
              "options at the given size), its collate (padded to the batch's largest molecule) and loss "
              "(qm9.losses.compute_loss_and_nll), imported from --peer-code without shims; same molecules, "
              "same optimiser (AdamW AMSGrad lr 1e-4, EDM's get_optim), same thread count, interleaved calls. "
              "EDM's EMA and gradient clipping are left out on its side as molequi's are on its side.")
    print("wrote", save_json("speed", results))


# ---------------------------------------------------------------- training on all of QM9
def train_edm(records, *, hidden: int, layers: int, lr: float, amsgrad: bool, ema: float, batch_size: int,
              scheduler: str = "none", timesteps: int | None = None, max_steps: int = -1,
              max_time: float | None = None, seed: int = 0, run_dir: Path | None = None,
              model_keys: dict | None = None) -> tuple[EDM, int, list[dict]]:
    """EDM trained by molequi's trainer (``molequi.train.run.train``, task ``diffusion``): Adam (AMSGrad if
    ``amsgrad``), gradient norm clipped to 1, the exponential moving average of the weights with the
    trainer's warm-up (decay min(``ema``, (1 + t) / (10 + t)), ``molequi.nn.ema``) as the returned model,
    no validation split. Stops after ``max_steps`` optimiser steps or ``max_time`` seconds. The run
    folder (Lightning checkpoints every 500 steps, logs) is ``run_dir``, or a temporary one. ``model_keys``:
    more model keys (``{"name": "geoldm", "latent_nf": 1}`` trains GeoLDM, an EDM on latents, the same way).
    Returns (EMA model, optimiser steps, logged losses)."""
    import tempfile

    from molequi.config import Config
    from molequi.train.evaluate import read_run_metrics
    from molequi.train.run import train

    model = {"name": "edm", "hidden": hidden, "layers": layers, **(model_keys or {})}
    if timesteps is not None:
        model["timesteps"] = timesteps
    cfg = Config.from_dict({
        "model": model,
        "task": {"name": "diffusion"},
        "optim": {"lr": lr, "amsgrad": amsgrad, "scheduler": scheduler, "min_lr": 0.0, "ema_decay": ema,
                  "grad_clip": 1.0},
        "trainer": {"max_steps": max_steps, "max_time": max_time, "batch_size": batch_size, "seed": seed,
                    "accelerator": "cpu", "devices": 1, "output": "", "progress_bar": False, "log_every": 50,
                    "checkpoint_every": 500},
    })
    with tempfile.TemporaryDirectory(prefix="edm_run_") as tmp:
        cfg.trainer.output = str(run_dir or tmp)
        result = train(cfg, splits={"train": list(records), "valid": [], "test": []}, enable_summary=False)
        log = [{"iter": int(r["step"]), "loss": r["train/loss_step"]}
               for r in read_run_metrics(cfg.trainer.output) if "train/loss_step" in r]
        return load_generative(result.model_path), result.global_step, log


def cmd_train(args) -> None:
    t0 = time.perf_counter()
    mols = read_xyz_tarball(TARBALL) if not args.subset else read_molecules(str(SUBSET))
    ds = GeometryDataset(mols)
    read_s = time.perf_counter() - t0
    print(f"read {len(ds)} molecules in {read_s:.0f} s", flush=True)
    out = Path(args.out)
    start = time.perf_counter()
    model, it, log = train_edm(ds.records, hidden=args.hidden, layers=args.layers, lr=args.lr, amsgrad=True,
                               ema=args.ema, batch_size=args.batch_size, max_time=args.minutes * 60,
                               seed=args.seed, run_dir=out.with_suffix(".run"))
    elapsed = time.perf_counter() - start
    save_checkpoint(model, out, step=it)
    seen = it * args.batch_size
    save_json("train", {"hardware": hardware(), "molecules": len(ds), "read_seconds": read_s,
                        "train_seconds": elapsed, "iterations": it, "molecules_seen": seen,
                        "epochs": seen / len(ds), "mol_per_s": seen / elapsed, "hidden": args.hidden,
                        "layers": args.layers, "batch_size": args.batch_size, "lr": args.lr, "ema": args.ema,
                        "params": count_parameters(model), "checkpoint": _repo_path(out), "log": log})
    print(f"done: {it} iterations, {seen} molecules ({seen / len(ds):.3f} epochs) in {elapsed:.0f} s")


# ---------------------------------------------------------------- sampling speed / quality
def evaluate(model, n, steps, method, batch_size, train_smiles, seed=0, eta=0.0) -> dict:
    """Sample ``n`` molecules and score them; ``seconds`` / ``cpu_seconds`` time the sampling alone (wall,
    and CPU of this process), not the metrics."""
    g = torch.Generator().manual_seed(seed)
    t0, c0 = time.perf_counter(), time.process_time()
    mols = model.sample(n, steps=steps, method=method, batch_size=batch_size, generator=g, eta=eta)
    sec, cpu = time.perf_counter() - t0, time.process_time() - c0
    r = molecule_report(mols, train_smiles)
    r.pop("smiles")
    return {"steps": steps, "method": method, "eta": eta, "n": n, "seconds": sec, "cpu_seconds": cpu,
            "mol_per_s": n / sec, **r}


def cmd_sample(args) -> None:
    torch.set_grad_enabled(False)
    train_smiles = load_training_smiles(SMILES_CSV)
    model = load_generative(args.checkpoint)
    rows = []
    path = OUT / "generation_sample.json"
    if path.exists() and args.append:
        rows = json.loads(path.read_text())["rows"]
    for spec in args.configs:
        name, steps, method, *eta = spec.split(":")
        ckpt = args.checkpoint if name == "teacher" else name
        m = model if name == "teacher" else load_generative(ckpt)
        row = evaluate(m, args.n, int(steps), method, args.batch_size, train_smiles,
                       eta=float(eta[0]) if eta else 0.0)
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


def _round_ends(message: str) -> None:
    """The ``log`` of a distillation run: the lines of iteration 0 and of the last iteration of each round
    (rounds of a multiple of 100 iterations)."""
    if " it 0 " in message or "99 loss" in message:
        print(message, flush=True)


def cmd_toy(args) -> None:
    """Distillation where quality is measurable in a short CPU budget: EDM overfit on QM9 ids 1-10 (EMA
    teacher), then 1000-step ancestral vs DDIM vs progressively distilled DDIM students (start / 2, ...).
    ``--model geoldm``: the same with GeoLDM (latent_nf 1, trainable_ae) distilled in its latent space, v
    students by default (AccGeoLDM)."""
    from molequi.models.generative.distill import default_weighting, progressive_distillation

    torch.set_num_threads(1)
    mols = read_molecules(str(SUBSET), limit=10)
    ds = GeometryDataset(mols)
    records = [ds[i] for i in range(10)]
    latent = args.model == "geoldm"
    keys = {"model_keys": {"name": "geoldm", "latent_nf": 1, "trainable_ae": True}} if latent else {}
    ckpt = Path(args.teacher or (TOY_TEACHER_GEOLDM if latent else TOY_TEACHER))
    info_path = ckpt.with_suffix(".json")  # how the teacher was trained, for reruns with --reuse-teacher
    if args.reuse_teacher and ckpt.exists():
        model = load_generative(ckpt)
        teacher_info = json.loads(info_path.read_text()) if info_path.exists() else {}
        teacher_info["reused"] = str(ckpt)
    else:
        t0, c0 = time.perf_counter(), time.process_time()
        model, done, _ = train_edm(records * args.repeat, hidden=args.hidden, layers=args.layers,
                                   timesteps=1000, lr=args.lr, amsgrad=False, scheduler="cosine", ema=args.ema,
                                   batch_size=10 * args.repeat, max_steps=args.iterations, seed=0,
                                   max_time=None if args.max_minutes is None else 60 * args.max_minutes, **keys)
        teacher_info = {"model": args.model, **keys.get("model_keys", {}),
                        "hidden": args.hidden, "layers": args.layers, "params": count_parameters(model),
                        "iterations": args.iterations, "iterations_done": done, "batch": 10 * args.repeat,
                        "lr": args.lr,
                        "lr_schedule": "cosine to 0", "ema": args.ema, "grad_clip": 1.0,
                        "trainer": "molequi.train (task diffusion)",
                        "train_seconds": time.perf_counter() - t0,
                        "train_cpu_seconds": time.process_time() - c0}
        model.eval()
        save_checkpoint(model, ckpt)
        atomic_write_text(info_path, json.dumps(teacher_info, indent=1) + "\n")
    model.eval()
    par = args.parameterisation or ("v" if latent else "eps")
    weighting = args.weighting or default_weighting(par)
    t0, c0 = time.perf_counter(), time.process_time()
    paths = progressive_distillation(model, records, args.start_steps, args.rounds, OUT / "toy" / args.name,
                                     iterations=args.distill_iterations, batch_size=10 * args.repeat,
                                     lr=args.distill_lr, weighting=weighting, parameterisation=par,
                                     ema=args.distill_ema or None,
                                     log=_round_ends)
    distill = {"iterations_per_round": args.distill_iterations, "lr": args.distill_lr,
               "lr_schedule": "linear to 0",
               "batch": 10 * args.repeat, "weighting": weighting, "parameterisation": par,
               "space": "latent" if latent else "data", "ema": args.distill_ema or None,
               "start_steps": args.start_steps, "rounds": args.rounds,
               "seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}
    print(json.dumps(distill), flush=True)
    rows = toy_rows(model, paths, args.n, args.etas)
    from _common import provenance

    save_json(args.name, {"hardware": hardware(), "molecules": 10, "teacher": teacher_info,
                          "distill": distill, "rows": rows, "provenance": provenance(None, None, None)})


TOY_SMILES = ["C", "N", "O", "C#C", "C#N", "C=O", "CC", "CO", "C#CC", "CC#N"]  # QM9 ids 1-10


def toy_rows(teacher: EDM, students, n: int, etas=(0.0,)) -> list[dict]:
    """The speed/quality rows of a toy run: the 1000-step teacher (ancestral, DDIM), then for each student of
    S steps the teacher's own samplers at S steps (what distillation has to beat) and the student, with DDIM
    at each ``eta`` (0: deterministic, the sampler distilled; > 0: stochastic)."""
    from molequi.tasks.generation_metrics import canonical_smiles_set

    torch.set_grad_enabled(False)
    known = canonical_smiles_set(TOY_SMILES)
    specs = [(teacher, "teacher", 1000, "ancestral", 0.0), (teacher, "teacher", 1000, "ddim", 0.0)]
    for p in students:
        st = load_generative(p)
        k = st.config.sampling_steps
        specs += [(teacher, "teacher", k, "ancestral", 0.0), (teacher, "teacher", k, "ddim", 0.0)]
        specs += [(st, Path(p).name, k, "ddim", eta) for eta in etas]
    rows = []
    for m, name, steps, method, eta in specs:
        row = evaluate(m, n, steps, method, min(n, 200), known, eta=eta)  # batches of 200: same cost each
        row["model"] = name
        row["novelty_is_fraction_outside_the_10"] = True
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def cmd_toy_eval(args) -> None:
    """Re-sample the rows of an earlier ``toy`` run (its teacher and students, no training), e.g. with other
    DDIM etas; the rows of the run's JSON are replaced, its training records kept."""
    torch.set_num_threads(1)
    res = _load(args.name) or {}
    teacher = load_generative(args.teacher)
    students = sorted((OUT / "toy" / args.name).glob("student_*.pt"),
                      key=lambda p: -int(p.stem.split("_")[1]))
    res.update(hardware=hardware(), rows=toy_rows(teacher, students, args.n, args.etas))
    save_json(args.name, res)


def cmd_toy_timing(args) -> None:
    """CPU time of sampling ``--n`` molecules for every sampler row of a toy run: ``--repeats`` rounds, each
    round timing every row once (interleaved, so that a change of load on the shared machine reaches all
    rows alike); medians go to the run's JSON under ``timing`` and into the report's speed-up column."""
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    res = _load(args.name)
    res["timing"] = _interleaved_timing(args.teacher, OUT / "toy" / args.name, res["rows"], args.n,
                                        args.repeats)
    save_json(args.name, res)


def _interleaved_timing(teacher: str | Path, students: Path, rows: list[dict], n: int, repeats: int) -> dict:
    """CPU time of sampling ``n`` molecules (one batch, the same sizes) for every (model, steps, method, eta)
    of ``rows`` (model: "teacher", the checkpoint ``teacher``, or a student's file name in ``students``),
    ``repeats`` rounds each timing every row once (interleaved); the medians, as ``timing``."""
    models = {"teacher": load_generative(teacher)}
    for r in rows:
        if r["model"] not in models:
            models[r["model"]] = load_generative(students / r["model"])
    keys = sorted({(r["model"], r["steps"], r["method"], r.get("eta", 0.0)) for r in rows},
                  key=lambda k: (-k[1], k[0] != "teacher", k[2], k[3]))
    sizes = models["teacher"].sample_sizes(n, torch.Generator().manual_seed(0))
    times = {k: [] for k in keys}
    for rep in range(repeats):
        for k in keys:
            model, steps, method, eta = k
            g = torch.Generator().manual_seed(rep)
            c0 = time.process_time()
            models[model].sample(n, steps=steps, method=method, sizes=sizes, batch_size=n, generator=g,
                                 eta=eta)
            times[k].append(time.process_time() - c0)
        print(f"round {rep + 1}/{repeats} done", flush=True)
    return {"n": n, "repeats": repeats, "hardware": hardware(),
            "rows": [{"model": k[0], "steps": k[1], "method": k[2], "eta": k[3],
                      "cpu_seconds": float(np.median(times[k])), "all": times[k]} for k in keys]}


def cmd_toy_errors(args) -> None:
    """For each student of a ``toy`` run: its one-step error against its teacher's two steps along the
    teacher's DDIM trajectory (``distill.local_step_errors``), added to the run's JSON."""
    from molequi.models.generative.distill import local_step_errors

    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    res = _load(args.name)
    teacher = load_generative(args.teacher)
    sizes = teacher.sample_sizes(args.n, torch.Generator().manual_seed(0))
    out = {}
    for steps in sorted({r["steps"] for r in res["rows"] if r["model"] != "teacher"}, reverse=True):
        student = load_generative(OUT / "toy" / args.name / f"student_{steps}.pt")
        rows = local_step_errors(teacher, student, sizes, torch.Generator().manual_seed(0))
        out[f"student_{steps}.pt"] = rows
        first, rest = rows[0], rows[1:]
        print(f"student_{steps}: first step x {first['x_rms']:.2e} h {first['h_rms']:.2e} (c_eps "
              f"{first['c_eps']:.1f}); other steps median x {np.median([r['x_rms'] for r in rest]):.2e}",
              flush=True)
        teacher = student
    res["local_errors"] = {"n": args.n, "students": out}
    save_json(args.name, res)


def cmd_toy_seeds(args) -> None:
    """More seeds for the rows that judge issue 17's distillation goal: per student of <= ``--max-steps``
    steps, its eta = 1 sampler and the teacher's ancestral sampler at the same steps, ``--n`` molecules for
    each seed of ``--seeds`` (the run's own rows are seed 0; the sizes are drawn from each seed, as there).
    Stored under ``extra_seeds`` in the run's JSON (molecule stability per seed); report.py pools them."""
    from molequi.tasks.generation_metrics import canonical_smiles_set

    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    res = _load(args.name)
    teacher = load_generative(args.teacher)
    known = canonical_smiles_set(TOY_SMILES)
    rows = []
    for k in sorted({r["steps"] for r in res["rows"] if r["model"] != "teacher" and r["steps"] <= args.max_steps},
                    reverse=True):
        student = load_generative(OUT / "toy" / args.name / f"student_{k}.pt")
        for model, name, method, eta in ((teacher, "teacher", "ancestral", 0.0),
                                         (student, f"student_{k}.pt", "ddim", 1.0)):
            stab = [evaluate(model, args.n, k, method, min(args.n, 200), known, seed=s, eta=eta)["molecule_stability"]
                    for s in args.seeds]
            rows.append({"model": name, "steps": k, "method": method, "eta": eta, "n": args.n, "seeds": args.seeds,
                         "molecule_stability": stab})
            print(json.dumps(rows[-1]), flush=True)
    res["extra_seeds"] = rows
    save_json(args.name, res)


QM9_DISTILL_RUN = ROOT / "runs" / "edm_equal_budget_50"  # edm_equal_budget.py's 50-CPU-minute run


def _qm9_rows(specs, n: int, out: Path | None = None) -> list[dict]:
    """Sample and score ``specs`` = [(checkpoint, name, steps, method, eta)], ``n`` molecules each (seed 0,
    batches of 100); every finished row is written to ``out`` (a partial JSON, so that a stopped run keeps them)."""
    torch.set_grad_enabled(False)
    models, rows = {}, []
    for path, name, steps, method, eta in specs:
        if str(path) not in models:
            models[str(path)] = load_generative(path)
        row = evaluate(models[str(path)], n, steps, method, min(n, 100), None, eta=eta)
        row["model"] = name
        rows.append(row)
        print(json.dumps(row), flush=True)
        if out is not None:
            atomic_write_text(out, json.dumps({"rows": rows}, indent=1) + "\n")
    return rows


def _teacher_specs(teacher: Path, full_steps: int, student_steps) -> list:
    return [(teacher, "teacher", k, method, 0.0) for k in (full_steps, *student_steps)
            for method in ("ancestral", "ddim")]


def cmd_qm9_rows(args) -> None:
    """The teacher's rows of ``qm9-distill`` (its own samplers at T and at each student's steps); run by
    ``qm9-distill`` on the second core while the students train."""
    torch.set_num_threads(1)
    _qm9_rows(_teacher_specs(Path(args.teacher), args.full_steps, args.steps), args.n, Path(args.out))


def cmd_qm9_distill(args) -> None:
    """Progressive distillation of a model trained on full QM9 (default: molequi's side of
    ``edm_equal_budget.py``'s 50-CPU-minute run, EDM 4 x 64, T = 500), on the run's training split (EDM's
    split), then ``--n`` samples for every row: the teacher's ancestral and DDIM samplers at T and at each
    student's step count, and each student with DDIM at each ``--etas``. Unlike ``toy``, the teacher is far
    from its ceiling here, so atom stability and validity measure what distillation keeps even where
    molecule stability is near 0. The teacher's rows run in a second process (one thread) while the
    students train in this one."""
    import subprocess

    import ase
    from edm_equal_budget import load_split

    from molequi.models.generative.distill import default_weighting, progressive_distillation

    torch.set_num_threads(1)
    workdir = Path(args.workdir)
    teacher_path = Path(args.teacher) if args.teacher else workdir / "molequi_run" / "model.pt"
    if not teacher_path.is_file():
        raise SystemExit(f"no teacher checkpoint at {teacher_path}: run edm_equal_budget.py run (see its "
                         "--help) or give --teacher")
    teacher = load_generative(teacher_path)
    full = teacher.config.timesteps
    students = [args.start_steps // 2 ** r for r in range(1, args.rounds + 1)]
    out_dir = workdir / f"distill_{args.name}"
    out_dir.mkdir(parents=True, exist_ok=True)
    part = out_dir / "teacher_rows.json"
    helper = None
    if not args.no_helper:
        cmd = [sys.executable, str(Path(__file__).resolve()), "qm9-rows", "--teacher", str(teacher_path),
               "--full-steps", str(full), "--steps", *map(str, students), "--n", str(args.n),
               "--out", str(part)]
        log = open(out_dir / "teacher_rows.log", "w")  # noqa: SIM115 (closed after the helper exits)
        helper = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                  env={**os.environ, "OMP_NUM_THREADS": "1"})
    mols = [ase.Atoms(numbers=z, positions=x) for z, x in load_split(workdir, "train")]
    records = GeometryDataset(mols).records
    par = args.parameterisation or teacher.config.parameterisation
    weighting = args.weighting or default_weighting(par)
    t0, c0 = time.perf_counter(), time.process_time()
    paths = progressive_distillation(teacher, records, args.start_steps, args.rounds, out_dir,
                                     iterations=args.distill_iterations, batch_size=args.batch_size,
                                     lr=args.distill_lr, weighting=weighting, parameterisation=par,
                                     log=_round_ends)
    distill = {"iterations_per_round": args.distill_iterations, "lr": args.distill_lr,
               "lr_schedule": "linear to 0", "batch": args.batch_size, "weighting": weighting,
               "parameterisation": par, "space": "data", "start_steps": args.start_steps,
               "rounds": args.rounds, "molecules": len(records), "seconds": time.perf_counter() - t0,
               "cpu_seconds": time.process_time() - c0}
    print(json.dumps(distill), flush=True)
    specs = [(p, p.name, k, "ddim", eta) for p, k in zip(paths, students) for eta in args.etas]
    rows = _qm9_rows(specs, args.n, out_dir / "student_rows.json")
    if helper is not None:
        status = helper.wait()
        log.close()
        if status != 0:
            raise SystemExit(f"the teacher's rows failed: see {out_dir / 'teacher_rows.log'}")
        teacher_rows = json.loads(part.read_text())["rows"]
    else:
        teacher_rows = _qm9_rows(_teacher_specs(teacher_path, full, students), args.n)
    from _common import provenance

    info = {"checkpoint": _repo_path(teacher_path), "timesteps": full, "params": count_parameters(teacher),
            "trained": "edm_equal_budget.py's molequi side (molequi train), full QM9 in EDM's split"}
    save_json(args.name, {"hardware": hardware(), "teacher": info, "distill": distill,
                          "rows": teacher_rows + rows,
                          "command": " ".join(["python scripts/bench/generation.py qm9-distill", *args.argv]),
                          "provenance": provenance(None, None, None)})


def cmd_qm9_timing(args) -> None:
    """The speed-ups of a ``qm9-distill`` run on a quiet machine: its rows' CPU times were taken beside the
    students' training (the teacher's) or after it, so ``--repeats`` interleaved rounds of ``--n`` molecules
    per row replace them for the speed-up (``timing`` in the run's JSON, as ``toy-timing``)."""
    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    res = _load(args.name)
    students = Path(args.workdir) / f"distill_{args.name}"
    res["timing"] = _interleaved_timing(ROOT / res["teacher"]["checkpoint"], students, res["rows"], args.n,
                                        args.repeats)
    save_json(args.name, res)


TOY_FORMULAS = {3: {"H2O", "CHN"}, 4: {"H3N", "C2H2", "CH2O"}, 5: {"CH4"}, 6: {"CH4O", "C2H3N"}, 7: {"C3H4"},
                8: {"C2H6"}}  # of TOY_SMILES, by number of atoms


def _formula(numbers) -> str:
    from collections import Counter

    from ase.data import chemical_symbols

    c = Counter(int(z) for z in numbers)
    return "".join(f"{chemical_symbols[z]}{c[z] if c[z] > 1 else ''}" for z in (6, 1, 7, 8, 9) if c[z])


def _latent_type_gaps(model) -> dict | None:
    """GeoLDM: the frozen encoder's latent h (mean over the atoms of each element of the 10 molecules), the
    smallest gap between two elements, and the fraction of atom types its decoder keeps when Gaussian noise
    of each size is added to the latent h of the 10 molecules (None for a data-space model)."""
    from molequi import keys as K
    from molequi.models.generative.graph import fully_connected_edges

    if not hasattr(model, "autoencoder"):
        return None
    ds = GeometryDataset(read_molecules(str(SUBSET), limit=10))
    batch = Batch.from_data_list([ds[i] for i in range(10)])
    b, ng = model._batch_info(batch)
    x, h = model.encode(batch[K.NUMBERS], batch[K.POS], b, ng)
    ei = fully_connected_edges(b, ng)
    mu_x, _, mu_h, _ = model.autoencoder.encode(x, h, b, ei, ng, None)
    z = batch[K.NUMBERS]
    means = {int(e): float(mu_h[z == e, 0].mean()) for e in z.unique()}
    v = sorted(means.values())
    kept = {}
    for noise in (0.01, 0.03, 0.1):
        zh = mu_h + noise * torch.randn(mu_h.shape, generator=torch.Generator().manual_seed(0))
        numbers, _ = model.decode(*model.autoencoder.decode(mu_x, zh, b, ei, ng, None))
        kept[str(noise)] = float((numbers == z).double().mean())
    return {"latent_h_mean_by_element": means, "smallest_gap": min(hi - lo for lo, hi in zip(v, v[1:])),
            "types_kept_with_h_noise": kept}


def cmd_toy_diagnose(args) -> None:
    """Where the teacher's samples fail, per sampler: the fraction whose decoded formula is one of the ten
    training molecules' (of the same size; 'composition'), the molecule stability, and the stability of
    those with a right composition ('geometry'); for GeoLDM also how close its latent atom types lie
    (``_latent_type_gaps``). Saved under ``diagnosis`` in the run's JSON (keyed by checkpoint)."""
    from molequi.tasks.generation_metrics import atom_stability

    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    res = _load(args.name) or {}
    out = res.setdefault("diagnosis", {"n": args.n, "checkpoints": {}})
    for ckpt in args.checkpoints:
        model = load_generative(ckpt)
        rows = []
        for steps in args.steps:
            for method in ("ancestral", "ddim"):
                mols = model.sample(args.n, steps=steps, method=method, batch_size=min(args.n, 200),
                                    generator=torch.Generator().manual_seed(0))
                comp = [_formula(m.numbers) in TOY_FORMULAS.get(len(m.numbers), set()) for m in mols]
                stab = [bool(atom_stability(m.numbers, m.positions).all()) for m in mols]
                both = sum(c and s for c, s in zip(comp, stab))
                rows.append({"steps": steps, "method": method, "composition": 100 * float(np.mean(comp)),
                             "molecule_stability": 100 * float(np.mean(stab)),
                             "stable_given_composition": 100 * both / max(1, sum(comp))})
                print(ckpt, json.dumps(rows[-1]), flush=True)
        out["checkpoints"][_repo_path(ckpt)] = {"model": type(model).__name__, "rows": rows,
                                               "latent": _latent_type_gaps(model)}
        print(json.dumps(out["checkpoints"][_repo_path(ckpt)]["latent"]), flush=True)
    save_json(args.name, res)


@torch.no_grad()
def _renoise_batch(model: EDM, sizes: torch.Tensor, steps: int, generator: torch.Generator):
    """One batch of the stochastic sampler Meng et al. (2023, "On distillation of guided diffusion models",
    sec. 4) use for distilled students: on the S-step grid t_0 > ... > t_S, a deterministic DDIM step of twice
    the length (t_i -> t_{i+2}), then forward noise back to t_{i+1} (z = a_{t|s} z + sigma_{t|s} eps); the
    last step is plain DDIM. One network call per step, as the S-step samplers."""
    from molequi.models.generative.graph import centred_gaussian, fully_connected_edges

    p = next(model.parameters())
    num_graphs = len(sizes)
    batch = sizes_to_batch(sizes)
    edges = fully_connected_edges(batch, num_graphs)
    z_x = centred_gaussian(batch, num_graphs, dtype=p.dtype, device=p.device, generator=generator)
    z_h = torch.randn(batch.numel(), model.latent_features(), dtype=p.dtype, generator=generator)
    grid = model.time_grid(steps)
    for i in range(steps):
        if i == steps - 1:
            z_x, z_h = model.step(z_x, z_h, grid[i], grid[i + 1], batch, edges, num_graphs, method="ddim")
            break
        z_x, z_h = model.step(z_x, z_h, grid[i], grid[i + 2], batch, edges, num_graphs, method="ddim")
        a_ts, var = model.transition(model._coeffs(grid[i + 1], None, p.device)[0],
                                     model._coeffs(grid[i + 2], None, p.device)[0])
        a, sd = a_ts.to(p.dtype), var.sqrt().to(p.dtype)
        z_x = a * z_x + sd * centred_gaussian(batch, num_graphs, dtype=p.dtype, device=p.device,
                                               generator=generator)
        z_h = a * z_h + sd * torch.randn(z_h.shape, dtype=p.dtype, generator=generator)
    x, h = model.final_prediction(z_x, z_h, batch, edges, num_graphs)
    numbers, pos = model.decode_sample(x, h, batch, edges, num_graphs, None, generator)
    return numbers.numpy(), pos.double().numpy(), batch.numpy()


def _renoise_stability(model: EDM, n: int, steps: int, seed: int, batch_size: int = 200) -> dict:
    """``molecule_report`` of ``n`` molecules of ``_renoise_batch`` (seed ``seed``, as ``evaluate``)."""
    g = torch.Generator().manual_seed(seed)
    sizes = model.sample_sizes(n, g)
    mols = []
    for start in range(0, n, batch_size):
        numbers, pos, b = _renoise_batch(model, sizes[start: start + batch_size], steps, g)
        mols += [Molecule(numbers[b == k], pos[b == k]) for k in range(int(b.max()) + 1)]
    return molecule_report(mols, None)


def _probe_lines(name: str, res: dict | None) -> list[str]:
    """The ``toy-probe`` tables of run ``name``: molecule stability per sampler on the held-out seeds."""
    lines = []
    for probe in ((res or {}).get("probe") or {}).values():
        rows = probe["rows"]
        r0 = rows[0]
        seeds = ", ".join(map(str, r0["seeds"]))
        lines += [f"Samplers tried at {r0['steps']} steps, where the student ties the teacher "
                  f"(`generation.py toy-probe --name {name} --teacher {probe['teacher']} --steps "
                  f"{r0['steps']} --student {probe['student']}`; {r0['n']} molecules per seed, seeds "
                  f"{seeds}, which the rows above do not use). 'renoise': Meng et al.'s stochastic sampler "
                  "for distilled models (a DDIM step of twice the length, then noise back; one network call "
                  "per step).", "",
                  "| model | sampler | atom stability % per seed (mean) | molecule stability % per seed "
                  "(mean) |", "|---|---|---|---|"]

        def cell(values: list[float]) -> str:
            return f"{' / '.join(f'{v:.1f}' for v in values)} ({np.mean(values):.2f})"

        for r in rows:
            sampler = "renoise" if r["method"] == "renoise" else _sampler(r)
            lines.append(f"| {r['model']} | {sampler} | {cell(r['atom_stability'])} | "
                         f"{cell(r['molecule_stability'])} |")
        lines.append("")
    return lines


def cmd_toy_probe(args) -> None:
    """Samplers tried at one step count where a toy run's student only ties the teacher: the teacher's DDIM
    at several etas and its ancestral sampler, the student at the same etas, and both with Meng et al.'s
    stochastic sampler for distilled models (``_renoise_batch``); atom and molecule stability on seeds the
    run's rows do not use (held out: choosing a sampler on them does not bias the rows). ``--student``:
    another student (e.g. of a full-QM9 run, with ``--name qm9_distill``). Stored under ``probe`` in the
    run's JSON."""
    from molequi.tasks.generation_metrics import canonical_smiles_set

    torch.set_num_threads(1)
    torch.set_grad_enabled(False)
    res = _load(args.name)
    known = canonical_smiles_set(TOY_SMILES)
    k = args.steps
    teacher = load_generative(args.teacher)
    student_path = Path(args.student or OUT / "toy" / args.name / f"student_{k}.pt")
    student = load_generative(student_path)
    specs = [(teacher, "teacher", "ancestral", 0.0)] + [(teacher, "teacher", "ddim", e) for e in args.etas]
    specs += [(student, student_path.name, "ddim", e) for e in args.etas]
    rows = []
    for model, name, method, eta in specs + [(teacher, "teacher", "renoise", None),
                                             (student, student_path.name, "renoise", None)]:
        if method == "renoise":
            res_s = [_renoise_stability(model, args.n, k, s) for s in args.seeds]
        else:
            res_s = [evaluate(model, args.n, k, method, min(args.n, 200), known, seed=s, eta=eta)
                     for s in args.seeds]
        rows.append({"model": name, "steps": k, "method": method, "eta": eta, "n": args.n,
                     "seeds": args.seeds,
                     **{key: [r[key] for r in res_s] for key in ("atom_stability", "molecule_stability")}})
        print(json.dumps(rows[-1]), flush=True)
    res.setdefault("probe", {})[f"{k}:{student_path.name}" if args.student else str(k)] = {
        "teacher": _repo_path(args.teacher), "student": _repo_path(student_path), "rows": rows}
    save_json(args.name, res)


def _load(name):
    path = OUT / f"generation_{name}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _speed_lines(sp: dict) -> list[str]:
    """The same-run speed section of the report: EDM's code and molequi's EDM, interleaved."""
    prov = sp["provenance"]

    def cell(t: dict) -> str:
        return f"{t['median_cpu_s']:.3f} ({t['median_wall_s']:.3f})"

    out = ["## Speed against EDM's own code, same run", "",
           f"`{prov['command']}`: EDM's code at {prov['peer_version'][:7]} and molequi's EDM in one process, "
           f"{prov['threads']} thread(s), calls interleaved, load average {prov['load_average'][0]:.1f} at the "
           "end. Median process CPU seconds, wall seconds in brackets (the quartiles are in the JSON). "
           "Ratio = EDM / molequi (above 1: molequi faster). EDM's parameter count includes its noise schedule "
           "(T + 1 values stored as a parameter that is not trained).", "",
           "| what | params EDM / molequi | EDM code | molequi | ratio CPU (wall) |", "|---|---|---|---|---|"]
    for name, label in (("small", "training iteration, EGNN 4 x 64"), ("paper", "training iteration, EGNN 9 x 256")):
        r = sp["training"].get(name)
        if r:
            t = r["timings"]
            out.append(f"| {label}, batch {r['molecules']} ({r['atoms']} atoms; EDM padded to "
                       f"{r['edm_padded_nodes']}) | {r['params_edm']:,} / {r['params_molequi']:,} | {cell(t['edm'])} | "
                       f"{cell(t['molequi'])} | {r['edm_over_molequi_cpu']:.1f}x ({r['edm_over_molequi_wall']:.1f}x) |")
    st = sp["sampling"].get("paper_16_molecules")
    if st:
        t = st["timings"]
        out.append(f"| denoising step, 9 x 256, {st['molecules']} molecules ({st['atoms']} atoms; EDM padded to "
                   f"{st['edm_padded_nodes']}): EDM sample_p_zs_given_zt vs molequi EDM.step | | {cell(t['edm'])} | "
                   f"{cell(t['molequi_step'])} | {st['edm_over_molequi_step_cpu']:.1f}x "
                   f"({st['edm_over_molequi_step_wall']:.1f}x) |")
        out.append(f"| the same, molequi per step of a {st['loop_steps']}-step sample_batch; EDM inside "
                   f"retained_heap {cell(t['edm_retained_heap'])} | | {cell(t['edm'])} | {cell(t['molequi_loop'])} | "
                   f"{st['edm_over_molequi_loop_cpu']:.1f}x ({st['edm_over_molequi_loop_wall']:.1f}x) |")
    out += ["", prov["notes"], ""]
    return out


def _row(rows: list[dict], steps: int, method: str, *, student: bool = False,
         eta: float = 0.0) -> dict | None:
    """The row of a toy run for the teacher's (or, with ``student``, the student's) sampler at ``steps``."""
    return next((r for r in rows if r["steps"] == steps and r["method"] == method
                 and (r["model"] != "teacher") == student and r.get("eta", 0.0) == eta), None)


def _stab(r: dict | None) -> str:
    return f"{r['molecule_stability']:.1f}" if r else "-"


def _sampler(r: dict) -> str:
    eta = r.get("eta", 0.0)
    return r["method"] if r["method"] == "ancestral" or not eta else f"{r['method']} eta={eta:g}"


def _toy_lines(toy: dict | None, other: dict | None = None, *, full: bool = True,
               heading: str = "## Distillation where quality is measurable: EDM overfit on QM9 ids 1-10",
               name: str = "toy") -> list[str]:
    """The distillation section of the report for the ``toy`` run ``name`` (``other``: the same run with the
    other weighting); ``full``: with every sampler row, else the per-student summary only."""
    if not toy or "teacher" not in toy:
        return []
    te, di, rows = toy["teacher"], toy["distill"], toy["rows"]
    students = [r for r in rows if r["model"] != "teacher"]

    timing = {(r["model"], r["steps"], r["method"], r["eta"]): r["cpu_seconds"]
              for r in toy.get("timing", {}).get("rows", [])}

    def cpu(r):  # the median of toy-timing where it ran, else the row's own sampling time
        return timing.get((r["model"], r["steps"], r["method"], r.get("eta", 0.0)), r["cpu_seconds"])

    anc, ddim = _row(rows, 1000, "ancestral"), _row(rows, 1000, "ddim")
    student_steps = sorted({r["steps"] for r in students}, reverse=True)
    chain = " -> ".join(str(k) for k in [di["start_steps"], *student_steps])
    opts = f" --name {name} --teacher bench_results/toy/{Path(te.get('reused', 'teacher.pt')).name}"
    lines = [heading, "",
             f"`python scripts/bench/generation.py toy --iterations {te['iterations']} --rounds 0{opts}` "
             "(teacher), "
             f"then `toy{opts} --reuse-teacher --start-steps {di['start_steps']} --rounds {di['rounds']} "
             f"--distill-iterations {di['iterations_per_round']} --n {rows[0]['n']} --etas 0 0.5 1`, "
             f"`toy-timing{opts}` and `toy-errors{opts}`; 1 torch thread "
             f"throughout. Teacher: EDM, EGNN {te['layers']} x {te['hidden']} ({te['params']:,} parameters), "
             f"T = 1000, trained on the {toy['molecules']} molecules only (batch {te['batch']} = each "
             f"molecule {te['batch'] // toy['molecules']} times), Adam lr {te['lr']} ({te['lr_schedule']}), "
             f"gradient clip {te['grad_clip']}, EMA {te['ema']}, {te['iterations']:,} iterations: "
             f"{te['train_cpu_seconds'] / 60:.1f} min CPU. Progressive distillation of its DDIM sampler, "
             f"{chain} steps (each student "
             f"initialised from its teacher, a student step drawn per molecule, {di['weighting']} weighting, "
             f"{di['iterations_per_round']:,} iterations per round, batch {di['batch']}, lr {di['lr']} "
             f"{di['lr_schedule']}): {di['cpu_seconds'] / 60:.1f} min CPU. Each row samples {rows[0]['n']} "
             "molecules (seed 0, batches of 200). Sampler: ancestral (EDM's), ddim (deterministic, the "
             "sampler a student is distilled on) or 'ddim eta=e' (each DDIM step adds the fraction e of "
             "the ancestral step's noise; e = 1 has the ancestral step's mean and variance). Speed-up = CPU "
             "time of sampling with the 1000-step ancestral teacher / CPU time of sampling the row, metrics "
             "excluded"
             + (f" (medians of `toy-timing`: {toy['timing']['repeats']} interleaved rounds of "
                f"{toy['timing']['n']} molecules)" if timing else "")
             + "; the ratio of network evaluations (steps + 1) in brackets ('s' = wall seconds of the row). "
             "'novel' = fraction of unique valid SMILES that are not one of the ten training molecules; "
             "uniqueness is bounded by the ten.", "",
             "| model | sampler | steps | n | s | speed-up (evaluations) | atom stab | mol stab | valid | "
             "valid strict | unique | novel |", "|---" * 12 + "|"]
    if not full:
        lines = lines[:3]
    for r in rows if full else []:
        lines.append(f"| {r['model']} | {_sampler(r)} | {r['steps']} | {r['n']} | {r['seconds']:.1f} | "
                     f"{cpu(anc) / cpu(r):.1f}x "
                     f"({(anc['steps'] + 1) / (r['steps'] + 1):.1f}x) | {r['atom_stability']:.1f} | "
                     f"{r['molecule_stability']:.1f} | {r['validity']:.1f} | {r['validity_strict']:.1f} | "
                     f"{r['uniqueness']:.1f} | {r.get('novelty', float('nan')):.1f} |")
    lines.append("")
    if anc and ddim and students:
        lines += _goal_lines(rows, student_steps, anc, ddim, cpu)
    if other and other.get("rows"):
        lines += _weighting_lines(toy, other)
    return lines


def _goal_lines(rows, student_steps, anc, ddim, cpu) -> list[str]:
    """Per student: its deterministic and stochastic samplers beside the teacher's own samplers at the same
    step count, and the issue's goal, judged on the eta = 1 sampler (chosen beforehand, as the ancestral
    sampler's analogue, rather than the best of the rows)."""
    n = rows[0]["n"]
    a_stab = anc["molecule_stability"]

    se = 100 * (0.95 * 0.05 / n) ** 0.5
    out = [f"Molecule stability of the 1000-step teacher: {a_stab:.1f} (ancestral), "
           f"{ddim['molecule_stability']:.1f} (DDIM); one standard error of a rate near 95 % on {n} samples "
           f"is {se:.1f} points. Per student (mol stab): its deterministic sampler (the one distilled), "
           "eta = 0.5 and eta = 1, beside the teacher's own ancestral and DDIM samplers at the same "
           "number of steps (what fewer steps give without distillation). Goal: >= 7.5x the CPU speed of "
           "the 1000-step ancestral teacher with <= 5 points of molecule stability lost, judged on the "
           "student's eta = 1 sampler.", "",
           "| steps | student ddim | student eta=0.5 | student eta=1 | teacher ancestral | teacher ddim | "
           "speed-up (eta=1) | lost vs 1000-step ancestral | goal |", "|---" * 9 + "|"]
    spreads = []
    for k in student_steps:
        sp = [cpu(anc) / cpu(r) for r in rows if r["steps"] == k]
        spreads.append(f"{k} steps {min(sp):.1f}-{max(sp):.1f}x ({1001 / (k + 1):.1f}x fewer evaluations)")
        one = _row(rows, k, "ddim", student=True, eta=1.0)
        if one is None:
            continue
        speed, lost = cpu(anc) / cpu(one), a_stab - one["molecule_stability"]
        ok = "met" if speed >= 7.5 and lost <= 5 else "too slow" if speed < 7.5 else "too unstable"
        out.append(f"| {k} | {_stab(_row(rows, k, 'ddim', student=True))} | "
                   f"{_stab(_row(rows, k, 'ddim', student=True, eta=0.5))} | {_stab(one)} | "
                   f"{_stab(_row(rows, k, 'ancestral'))} | {_stab(_row(rows, k, 'ddim'))} | {speed:.1f}x | "
                   f"{lost:.1f} | {ok} |")
    out += ["", "Every row of one step count runs the same network as often, so the spread of their speed-ups is "
                "the timing noise of the shared machine: " + "; ".join(spreads) + "."]
    return out + [""]


def _weighting_lines(toy: dict, other: dict) -> list[str]:
    """Students of two ``toy`` runs that differ in the distillation weighting, side by side."""
    w1, w2 = toy["distill"]["weighting"], other["distill"]["weighting"]

    def stab(res, steps, student):  # the deterministic sampler
        return _stab(_row(res["rows"], steps, "ddim", student=student))

    def errs(res, steps):
        e = res.get("local_errors", {}).get("students", {}).get(f"student_{steps}.pt")
        if not e:
            return "-"
        return f"{e[0]['x_rms']:.1e} / {float(np.median([x['x_rms'] for x in e[1:]])):.1e}"

    steps = sorted({r["steps"] for r in toy["rows"] if r["model"] != "teacher"}, reverse=True)
    n1, n2 = toy["rows"][0]["n"], other["rows"][0]["n"]
    lines = [f"Distillation weighting (`toy --weighting {w2} --name toy_{w2}`, otherwise the same run): "
             f"molecule stability of the deterministic samplers ({n1} molecules for {w1}, {n2} for {w2}), "
             "and ('first / other') the RMS deviation of the positions after ONE student step from the "
             "teacher's own DDIM state against the teacher's two steps (`toy-errors`, "
             f"{toy.get('local_errors', {}).get('n', '-')} molecules): the first step T -> s, and the median "
             "of the other steps.", "",
             f"| steps | teacher DDIM | student, {w1} | student, {w2} | first / other, {w1} | "
             f"first / other, {w2} |", "|---|---|---|---|---|---|"]
    for n in steps:
        lines.append(f"| {n} | {stab(toy, n, False)} | {stab(toy, n, True)} | {stab(other, n, True)} | "
                     f"{errs(toy, n)} | {errs(other, n)} |")
    lines += ["", "The first step's deviation is the largest in every student and grows with |c_eps|: an "
                  "epsilon error at T reaches z_s multiplied by c_eps = sigma_s - alpha_s sigma_T / alpha_T "
                  "(-1.7 at 256 steps, -37 at 16) and EDM's schedule ends at alpha_T = 0.003, so an "
                  "epsilon-parameterised student cannot make its first step exact -- Salimans & Ho's reason "
                  "to distil x- or v-parameterised models. Only the first round (256 steps) compares both "
                  "weightings against the same teacher: there the truncated-SNR weight (1e5 times that of "
                  "the low-noise steps at the first step) left the first-step deviation as it was and made "
                  "the other steps 10x less accurate (see the 256 row). Later rows compare each student "
                  "with its own teacher (the previous student of its run).", ""]
    return lines


def plot_toy(toy: dict, path: Path, key: str = "molecule_stability", full_steps: int = 1000,
             title: str = "EDM overfit on 10 QM9 molecules") -> Path | None:
    """``key`` (molecule stability) against the number of sampling steps: the teacher's ancestral and DDIM
    samplers, the students' deterministic and eta = 1 samplers (a PNG for the report); ``full_steps``: the
    teacher's own step count, the reference of the goal's lines."""
    if not toy or not toy.get("rows"):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = {"teacher, ancestral": ("teacher", "ancestral", 0.0, "C0", "o-"),
              "teacher, DDIM": ("teacher", "ddim", 0.0, "C0", "s--"),
              "student, DDIM (distilled on)": ("student", "ddim", 0.0, "C3", "s--"),
              "student, DDIM eta = 1": ("student", "ddim", 1.0, "C3", "o-")}
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    for label, (who, method, eta, colour, style) in series.items():
        pts = sorted((r["steps"], r[key]) for r in toy["rows"]
                     if (r["model"] == "teacher") == (who == "teacher") and r["method"] == method
                     and r.get("eta", 0.0) == eta)
        if pts:
            ax.plot(*zip(*pts), style, color=colour, label=label, ms=4)
    anc = next((r for r in toy["rows"] if r["model"] == "teacher" and r["steps"] == full_steps
                and r["method"] == "ancestral"), None)
    if anc:
        ax.axhline(anc[key] - 5, color="grey", ls=":", lw=1,
                   label=f"goal: {full_steps}-step ancestral - 5 points")
        ax.axvline((full_steps + 1) / 7.5 - 1, color="grey", ls="-.", lw=1, label="7.5x fewer evaluations")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sampling steps (network evaluations - 1)")
    ax.set_ylabel(key.replace("_", " ") + " (%)")
    ax.set_title(f"{title}: {toy['rows'][0]['n']} samples per point", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return path


def cmd_report(args) -> None:
    lines = ["# 3D generation benchmarks (molequi EDM, unpadded)", "",
             "Machine: shared 2-core CPU (about 7 concurrent jobs; load averages recorded in the JSON files), "
             "torch CPU. EDM's code runs in the same process as molequi (the speed section); earlier runs "
             "below timed molequi's network with EDM's padded batching ('padded').", ""]
    sp = _load("speed")
    if sp:
        lines += _speed_lines(sp)
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
                  f"min ({tr['mol_per_s']:.1f} mol/s) on the 2-core CPU ({tr['hardware']['torch_threads']} torch "
                  f"threads, load average {tr['hardware']['load_average'][1]:.1f} over the last 5 min), "
                  f"`python scripts/bench/generation.py train --minutes {tr['train_seconds'] / 60:.0f}`. "
                  "EDM: 3000 epochs on a GPU.", ""]
    sa = _load("sample")
    if sa:
        lines += ["## Speed / quality of samplers (EMA weights of the run above)", "",
                  "| model | sampler | steps | n | s | mol/s | speed-up vs 1000-step, CPU per molecule (step "
                  "ratio) | atom stab | mol stab | valid | valid strict | unique | valid x unique | novel |",
                  "|---" * 14 + "|"]
        base = next((r for r in sa["rows"] if r["steps"] == 1000), None)

        def per_mol(r):  # CPU seconds per molecule where recorded, else wall
            return r.get("cpu_seconds", r["seconds"]) / r["n"]

        for r in sa["rows"]:
            sp_up = per_mol(base) / per_mol(r) if base else float("nan")
            lines.append(f"| {r['model']} | {_sampler(r)} | {r['steps']} | {r['n']} | {r['seconds']:.0f} | "
                         f"{r['mol_per_s']:.2f} | {sp_up:.1f}x ({1000 / r['steps']:.1f}x) | {r['atom_stability']:.1f} | "
                         f"{r['molecule_stability']:.1f} | {r['validity']:.1f} | {r['validity_strict']:.1f} | "
                         f"{r['uniqueness']:.1f} | {r['valid_x_unique']:.1f} | {r.get('novelty', float('nan')):.1f} |")
        lines += ["", (f"Run notes: {sa['note']}. " if sa.get("note") else "")
                  + "Times fluctuate with the other jobs on the machine; the step ratio is the speed-up an "
                      "unloaded machine gives (one network evaluation per step, plus one final x_0 prediction). "
                      "'novel' is against the lapool QM9 SMILES CSV, on which 23-24 % of *real* QM9 molecules already "
                      "count as novel (see below), so it is only a loose reference.", "", "Published rows (atom stab / mol stab / valid / valid x unique): " + "; ".join(
            f"{k} {' / '.join(str(v) for v in vals)}" for k, vals in EDM_ROWS.items()), ""]
    lines += _toy_lines(_load("toy60k"), name="toy60k")
    png = plot_toy(_load("toy60k"), OUT / "generation_distillation.png")
    if png:
        lines += [f"![molecule stability against sampling steps]({png.name})", ""]
    for name, key, full, title in (
            ("toy_geoldm_30k", "molecule_stability", 1000,
             "GeoLDM overfit on 10 QM9 molecules, latent eps students"),
            ("toy_geoldm_30k_8k", "molecule_stability", 1000,
             "the same GeoLDM teacher, rounds 4x longer"),
            ("qm9_distill", "atom_stability", 500, "EDM trained on full QM9 (50 CPU min), eps students")):
        run = _load(name)
        png = plot_toy(run, OUT / f"generation_distillation_{name}.png", key, full, title)
        if png:
            lines += [f"![{key.replace('_', ' ')} against sampling steps, {title}]({png.name})", ""]
        lines += _probe_lines(name, run)
    lines += _toy_lines(_load("toy"), _load("toy_truncated_snr"), full=False, heading="### The same with a "
                        "less converged teacher (the previous benchmark's: 20,000 iterations)")
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
    s = sub.add_parser("speed", help="EDM's own code and molequi's EDM timed in the same run, interleaved")
    s.add_argument("--peer-code", default=str(EDM_PEER_CODE), help="EDM's source tree "
                   f"(github.com/ehoogeboom/e3_diffusion_for_molecules at {EDM_COMMIT}; default {EDM_PEER_CODE})")
    s.add_argument("--sizes", nargs="+", choices=list(SPEED_SIZES), default=["small", "paper"])
    s.add_argument("--repeats-small", type=int, default=7)
    s.add_argument("--repeats-paper", type=int, default=3)
    s.add_argument("--repeats-step", type=int, default=7)
    s.add_argument("--threads", type=int, default=1, help="torch threads of both codes")
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
                   help="model:steps:method[:eta] (model = teacher or a student checkpoint path; eta: DDIM's "
                        "noise fraction, default 0)")
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
    s.add_argument("--hidden", type=int, default=64)
    s.add_argument("--layers", type=int, default=4)
    s.add_argument("--iterations", type=int, default=8000)
    s.add_argument("--lr", type=float, default=1e-3)
    s.add_argument("--ema", type=float, default=0.999)
    s.add_argument("--repeat", type=int, default=8, help="batch = the 10 molecules this many times")
    s.add_argument("--start-steps", type=int, default=1000)
    s.add_argument("--rounds", type=int, default=3)
    s.add_argument("--distill-iterations", type=int, default=1000)
    s.add_argument("--distill-lr", type=float, default=1e-4)
    s.add_argument("--distill-ema", type=float, default=0.0, help="EMA decay of the students (0: none)")
    s.add_argument("--weighting", choices=["snr", "truncated_snr"], default=None,
                   help="default: snr for eps students, truncated_snr for v / x")
    s.add_argument("--model", choices=["edm", "geoldm"], default="edm",
                   help="geoldm: distil GeoLDM in its latent space (AccGeoLDM)")
    s.add_argument("--parameterisation", choices=["eps", "v", "x"], default=None,
                   help="the students' (default: v for geoldm, eps for edm)")
    s.add_argument("--max-minutes", type=float, default=None, help="also stop the teacher's training here")
    s.add_argument("--teacher", default=None, help="the teacher's checkpoint: written after training, read "
                   f"with --reuse-teacher (default {TOY_TEACHER}, geoldm: {TOY_TEACHER_GEOLDM})")
    s.add_argument("--reuse-teacher", action="store_true", help="reuse the --teacher checkpoint")
    s.add_argument("--n", type=int, default=200)
    s.add_argument("--etas", type=float, nargs="+", default=[0.0], help="DDIM etas of the students' rows")
    s.add_argument("--name", default="toy", help="results go to bench_results/generation_<name>.json")
    s.set_defaults(func=cmd_toy)
    s = sub.add_parser("toy-eval", help="re-sample the rows of a toy run (no training)")
    s.add_argument("--name", default="toy")
    s.add_argument("--teacher", default=TOY_TEACHER)
    s.add_argument("--n", type=int, default=200)
    s.add_argument("--etas", type=float, nargs="+", default=[0.0, 0.5, 1.0])
    s.set_defaults(func=cmd_toy_eval)
    s = sub.add_parser("toy-timing", help="median CPU time of every sampler row of a toy run")
    s.add_argument("--name", default="toy")
    s.add_argument("--teacher", default=TOY_TEACHER)
    s.add_argument("--n", type=int, default=200)
    s.add_argument("--repeats", type=int, default=3)
    s.set_defaults(func=cmd_toy_timing)
    s = sub.add_parser("toy-errors")
    s.add_argument("--name", default="toy")
    s.add_argument("--teacher", default=TOY_TEACHER)
    s.add_argument("--n", type=int, default=200)
    s.set_defaults(func=cmd_toy_errors)
    s = sub.add_parser("toy-seeds", help="more seeds for the goal's rows of a toy run (<= --max-steps)")
    s.add_argument("--name", default="toy")
    s.add_argument("--teacher", default=TOY_TEACHER)
    s.add_argument("--max-steps", type=int, default=64)
    s.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4])
    s.add_argument("--n", type=int, default=1000)
    s.set_defaults(func=cmd_toy_seeds)
    s = sub.add_parser("toy-probe", help="samplers tried where a toy student ties (held-out seeds)")
    s.add_argument("--name", default="toy")
    s.add_argument("--teacher", default=TOY_TEACHER)
    s.add_argument("--student", default=None, help="default: the run's student of --steps steps")
    s.add_argument("--steps", type=int, default=64)
    s.add_argument("--etas", type=float, nargs="+", default=[0.5, 0.8, 1.0])
    s.add_argument("--seeds", type=int, nargs="+", default=[100, 101])
    s.add_argument("--n", type=int, default=1000)
    s.set_defaults(func=cmd_toy_probe)

    s = sub.add_parser("qm9-distill", help="progressive distillation of a full-QM9 model (cmd_qm9_distill)")
    s.add_argument("--workdir", default=str(QM9_DISTILL_RUN), help="an edm_equal_budget.py run folder (its "
                   "training split and, unless --teacher, its molequi model)")
    s.add_argument("--teacher", default=None, help="default: WORKDIR/molequi_run/model.pt")
    s.add_argument("--start-steps", type=int, default=256, help="the teacher's DDIM steps of the first round")
    s.add_argument("--rounds", type=int, default=5)
    s.add_argument("--distill-iterations", type=int, default=2000)
    s.add_argument("--distill-lr", type=float, default=1e-4)
    s.add_argument("--batch-size", type=int, default=64)
    s.add_argument("--weighting", choices=["snr", "truncated_snr"], default=None)
    s.add_argument("--parameterisation", choices=["eps", "v", "x"], default=None,
                   help="default: the teacher's")
    s.add_argument("--n", type=int, default=1000)
    s.add_argument("--etas", type=float, nargs="+", default=[0.0, 1.0])
    s.add_argument("--no-helper", action="store_true",
                   help="sample the teacher's rows here, after the students")
    s.add_argument("--name", default="qm9_distill", help="results go to bench_results/generation_<name>.json")
    s.set_defaults(func=cmd_qm9_distill)
    s = sub.add_parser("qm9-timing", help="interleaved CPU timing of a qm9-distill run's rows (speed-ups)")
    s.add_argument("--workdir", default=str(QM9_DISTILL_RUN))
    s.add_argument("--name", default="qm9_distill")
    s.add_argument("--n", type=int, default=100)
    s.add_argument("--repeats", type=int, default=3)
    s.set_defaults(func=cmd_qm9_timing)
    s = sub.add_parser("qm9-rows", help="the teacher's rows of qm9-distill (started by it)")
    s.add_argument("--teacher", required=True)
    s.add_argument("--full-steps", type=int, required=True)
    s.add_argument("--steps", type=int, nargs="+", required=True)
    s.add_argument("--n", type=int, default=1000)
    s.add_argument("--out", required=True)
    s.set_defaults(func=cmd_qm9_rows)
    s = sub.add_parser("toy-diagnose", help="composition vs geometry failures of teachers' samplers")
    s.add_argument("--name", default="toy")
    s.add_argument("checkpoints", nargs="+")
    s.add_argument("--steps", type=int, nargs="+", default=[256, 64])
    s.add_argument("--n", type=int, default=200)
    s.set_defaults(func=cmd_toy_diagnose)
    s = sub.add_parser("report")
    s.set_defaults(func=cmd_report)
    s = sub.add_parser("make-subset")
    s.set_defaults(func=cmd_make_subset)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[2:] if argv is None else argv[1:])
    args.func(args)


if __name__ == "__main__":
    main()
