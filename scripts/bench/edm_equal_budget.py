"""Equal-budget comparison of molequi's EDM with EDM's own code on full QM9 (issue 16, item 5).

    python scripts/bench/edm_equal_budget.py run --peer-code PATH --tarball xyz.tar.gz [--quick]
        [--cpu-minutes 15] [--samples 1000] [--nll-molecules 2000] [--workdir runs/edm_equal_budget]
    python scripts/bench/edm_equal_budget.py report [--quick]      markdown + PNG again from the JSON
    python scripts/bench/edm_equal_budget.py samples {edm,molequi} --peer-code PATH --workdir W --part K
        --samples N [--batch 25]    N more samples of one side's trained model in another process (run
                                    beside the side's own sampling when the CPUs allow), merged by
    python scripts/bench/edm_equal_budget.py finish --peer-code PATH --workdir W [--note ...]
                                    metrics, JSON, markdown and PNG from what the sides saved

Each side saves its NLL and then every sampling batch as it finishes (``WORKDIR/{side}_side.json`` +
``{side}_samples.npz``, with ``complete`` and ``n_samples``), so a run stopped at a deadline still gives a
report (labelled partial, with the sample count of each side). Samples of extra processes are i.i.d. draws of
the same trained model (another seed); beyond ``--samples`` in all, the extra ones are dropped.

PATH is EDM's source tree (github.com/ehoogeboom/e3_diffusion_for_molecules, the commit in
../shared/peers/README.md); the tarball is the ppqm geometry copy of QM9 (128,744 molecules, C/H/N/O, no
properties; docs/formats.md). ``run`` does, in order:

1. **prepare**: reads the tarball once, takes EDM's split (``molequi.interop.edm.edm_qm9_split``: 100,000 /
   17,748 / 13,083 GDB-9 ids after QM9's 3,054 uncharacterised molecules) and drops the ids the tarball lacks
   (the F molecules and the others ppqm removed; counts in the JSON). Writes the splits in EDM's format,
   ``WORKDIR/edm_data/qm9/{train,valid,test}.npz`` (what EDM's ``qm9/data/prepare`` writes and
   ``qm9/data/utils.initialize_datasets`` loads: ``num_atoms``, ``charges`` (M, 29) zero-padded atomic
   numbers, ``positions`` (M, 29, 3) Å, ``index``), which molequi's side reads too, as its in-memory
   ``GeometryDataset`` records (the same molecules, in the same order).
2. **two sides in parallel** (two processes, one thread each, ``OMP_NUM_THREADS=1``), the budget being the
   **CPU time** of each process spent in its training loop (the 2-core machine is shared with other jobs,
   which makes wall time a measure of the load; wall is recorded too):
   - **EDM's code**: EDM's own data loaders (``qm9.dataset.retrieve_dataloaders`` on the npz above), model and
     optimiser (``qm9.models.get_model`` / ``get_optim``: AdamW, AMSGrad, weight decay 1e-12), EMA
     (``equivariant_diffusion.utils.EMA``), adaptive gradient clipping (``utils.gradient_clipping``) and
     training loop (``train_test.train_epoch``, epoch after epoch, as ``main_qm9.main`` calls it); the loader
     is wrapped so that the epoch ends when the CPU budget is spent. Then EDM's sampler
     (``qm9.sampling.sample``, sizes from ``DistributionNodes``) and EDM's test NLL (``train_test.test``: the
     EMA model's eval-mode forward minus log p(N)). ``main_qm9.py`` itself cannot be imported (it parses the
     command line and starts wandb at import), so its ``main`` is followed step by step here.
   - **molequi**: ``molequi.train.run.train`` with the YAML config written to ``WORKDIR/molequi.yaml`` (the
     options as EDM's args), the training split passed as records; a callback stops the run when the CPU
     budget is spent. Then ``EDM.sample`` (ancestral, all T steps, sizes from the training histogram) and
     ``EDM.dataset_nll`` (EDM's variational bound, one draw of t and noise per molecule).
   - **the free core**: when one side has ended and the other is still sampling, a ``samples`` helper
     process (another seed, batches of 25) draws more molecules of the other side's trained model on the
     core the finished side left; both are stopped once their saved molecules reach ``--samples``
     (``wait_with_helpers``; the extra ones are dropped). Sampling CPU s per molecule counts all processes.
3. **metrics from one code**: every sample of both sides goes through ``molequi.tasks.generation_metrics``
   (atom / molecule stability, validity, uniqueness as EDM defines them) and, as a check, through EDM's own
   ``qm9.analyze.check_stability`` and ``qm9.rdkit_functions.BasicMolecularMetrics``; the JSON holds both.

Identical hyperparameters on both sides (``HYPER``): EGNN 4 layers x 64 features, attention, tanh, norm
constant 1, T = 500 steps, polynomial_2 schedule with precision 1e-5, l2 loss, normalize factors [1, 4, 10],
charges included, batch 64, lr 1e-4, EMA 0.999, the atom types of the data (H, C, N, O: the tarball has no F,
so EDM's dataset_info is given EDM's QM9 decoder less F and the training split's size histogram). What is not
identical is listed in the JSON's ``differences``.

Shims: ``wandb`` and ``imageio`` are not installed in molequi's venv; EDM's training loop imports them
(logging and visualisation only), so stub modules whose functions do nothing are put in ``sys.modules`` before
EDM's code is imported. Nothing of EDM's numerics is replaced. Results: bench_results/edm_equal_budget.json
(``_quick`` with --quick), a markdown table and a PNG next to it.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import pickle
import subprocess
import sys
import time
import types
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import provenance, save  # noqa: E402

RESULTS = ROOT / "bench_results"
N_MAX = 29  # QM9's largest molecule; EDM pads every molecule of its npz to this
ELEMENTS = [1, 6, 7, 8]  # H C N O: the tarball's elements, in EDM's decoder order
SYMBOLS = ["H", "C", "N", "O"]
# identical on both sides (EDM option names; molequi's equivalents in molequi_yaml)
HYPER = {
    "n_layers": 4,
    "nf": 64,
    "diffusion_steps": 500,
    "diffusion_noise_schedule": "polynomial_2",
    "diffusion_noise_precision": 1e-5,
    "diffusion_loss_type": "l2",
    "batch_size": 64,
    "lr": 1e-4,
    "ema_decay": 0.999,
    "include_charges": True,
    "normalize_factors": [1, 4, 10],
    "attention": True,
    "tanh": True,
    "norm_constant": 1,
    "normalization_factor": 1,
    "aggregation_method": "sum",
    "inv_sublayers": 1,
    "sin_embedding": False,
    "condition_time": True,
    "clip_grad": True,
}
DIFFERENCES = [
    "EMA: EDM's code averages with a constant decay 0.999 from the first step; molequi's trainer warms the "
    "decay up (min(0.999, (1 + t) / (10 + t)), molequi.nn.ema), so its early EMA follows the weights closer.",
    "Size histogram: EDM's code is given the training split's histogram up front (dataset_info['n_nodes']); "
    "molequi's EDM counts the sizes of the molecules its training batches saw (a subset at this budget). "
    "Both "
    "enter log p(N) in the NLL and the sizes of the samples.",
    "Batching: EDM pads each batch to its largest molecule with dense N x N edges; molequi batches the "
    "molecules unpadded with per-molecule complete graphs (the same loss: molequi's loss_normalisation 'edm' "
    "divides by the padded size as EDM does).",
    "Gradient clipping: the same rule on both sides (1.5 x mean + 2 x std of the last 50 gradient norms): "
    "EDM's utils.gradient_clipping, molequi's optim.grad_clip: edm_adaptive (molequi.train.clipping). "
    "Runs before 2026-12-06 had molequi unclipped (its trainer had no such rule yet).",
    "Data order: each code shuffles the training split with its own generator (EDM: torch.randperm in its "
    "ProcessedDataset + DataLoader shuffle; molequi: Lightning's sampler), seed 0 on both sides.",
]


# ------------------------------------------------------------------------------------------------ prepare
def prepare(tarball: Path, workdir: Path) -> dict:
    """EDM's split of the tarball's molecules -> WORKDIR/edm_data/qm9/{train,valid,test}.npz; returns the
    counts."""
    from molequi.data.qm9 import iter_qm9_xyz
    from molequi.interop.edm import edm_qm9_split

    out = workdir / "edm_data" / "qm9"
    info_path = out / "prepare.json"
    if info_path.is_file():
        return json.loads(info_path.read_text())
    t0 = time.perf_counter()
    mols = {}
    for rec in iter_qm9_xyz(tarball):
        mols[int(rec.index)] = (
            np.asarray(rec.numbers, dtype=np.int64),
            np.asarray(rec.positions, np.float32),
        )
    read_s = time.perf_counter() - t0
    split = edm_qm9_split()
    counts = {"tarball_molecules": len(mols), "read_seconds": read_s}
    out.mkdir(parents=True, exist_ok=True)
    for name, ids in split.items():
        kept = [int(i) for i in ids if int(i) in mols]
        counts[name] = {
            "edm_split": int(len(ids)),
            "kept": len(kept),
            "dropped_absent": int(len(ids) - len(kept)),
        }
        M = len(kept)
        charges = np.zeros((M, N_MAX), dtype=np.int64)
        positions = np.zeros((M, N_MAX, 3), dtype=np.float32)
        num_atoms = np.zeros(M, dtype=np.int64)
        for k, i in enumerate(kept):
            z, x = mols[i]
            charges[k, : len(z)], positions[k, : len(z)], num_atoms[k] = z, x, len(z)
        tmp = out / f".{name}.tmp.npz"
        np.savez_compressed(
            tmp,
            num_atoms=num_atoms,
            charges=charges,
            positions=positions,
            index=np.asarray(kept, dtype=np.int64),
        )
        tmp.replace(out / f"{name}.npz")
    tmp = info_path.with_suffix(".tmp")
    tmp.write_text(json.dumps(counts, indent=2))
    tmp.replace(info_path)
    return counts


def load_split(workdir: Path, name: str, limit: int | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(numbers, positions) of a prepared split, in the npz's order (the first ``limit``)."""
    with np.load(workdir / "edm_data" / "qm9" / f"{name}.npz") as f:
        n, z, x = f["num_atoms"], f["charges"], f["positions"]
    m = len(n) if limit is None else min(limit, len(n))
    return [(z[i, : n[i]], x[i, : n[i]].astype(np.float64)) for i in range(m)]


def size_histogram(workdir: Path) -> dict[int, int]:
    with np.load(workdir / "edm_data" / "qm9" / "train.npz") as f:
        sizes, counts = np.unique(f["num_atoms"], return_counts=True)
    return {int(s): int(c) for s, c in zip(sizes, counts)}


# ------------------------------------------------------------------------------------------------ EDM side
def _stub_attribute(name: str):
    if name.startswith("__"):  # __file__, __path__, ...: absent, as on a module (inspect and import ask)
        raise AttributeError(name)
    return lambda *args, **kwargs: None


def _stub_modules() -> list[str]:
    """Modules EDM's training loop imports for logging / pictures only, stubbed when missing."""
    stubbed = []
    for name in ("wandb", "imageio"):
        try:
            __import__(name)
        except ImportError:
            mod = types.ModuleType(name)
            mod.__getattr__ = _stub_attribute  # wandb.log, .init, .save, imageio.imread, ...: do nothing
            sys.modules[name] = mod
            stubbed.append(name)
    return stubbed


def edm_dataset_info(workdir: Path) -> dict:
    """EDM's ``qm9_with_h`` info without F (the tarball has none) and with the training split's sizes."""
    from configs.datasets_config import get_dataset_info

    info = copy.deepcopy(get_dataset_info("qm9", False))
    info["atom_decoder"] = list(SYMBOLS)
    info["atom_encoder"] = {s: i for i, s in enumerate(SYMBOLS)}
    info["n_nodes"] = size_histogram(workdir)
    info["colors_dic"], info["radius_dic"] = info["colors_dic"][:4], info["radius_dic"][:4]
    return info


class BudgetLoader:
    """A data loader that ends the epoch once this process has spent ``budget`` CPU seconds since ``start``,
    and records (CPU s, wall s) at each batch it hands out."""

    def __init__(self, loader, start_cpu: float, start_wall: float, budget: float):
        self.loader, self.start_cpu, self.start_wall, self.budget = loader, start_cpu, start_wall, budget
        self.spent, self.batches, self.times = False, 0, []

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for data in self.loader:
            cpu = time.process_time() - self.start_cpu
            if cpu >= self.budget:
                self.spent = True
                return
            self.times.append((cpu, time.perf_counter() - self.start_wall))
            self.batches += 1
            yield data


def edm_options(workdir: Path, seed: int) -> argparse.Namespace:
    """main_qm9.py's argparse defaults with ``HYPER`` on top (``python main_qm9.py --nf 64 ...``)."""
    defaults = {
        "exp_name": "equal_budget",
        "model": "egnn_dynamics",
        "probabilistic_model": "diffusion",
        "n_epochs": 10**6,
        "brute_force": False,
        "actnorm": True,
        "break_train_epoch": False,
        "dp": False,
        "trace": "hutch",
        "ode_regularization": 1e-3,
        "dataset": "qm9",
        "datadir": str(workdir / "edm_data"),
        "filter_n_atoms": None,
        "dequantization": "argmax_variational",
        "n_report_steps": 100,
        "wandb_usr": None,
        "no_wandb": True,
        "online": False,
        "no_cuda": True,
        "save_model": True,
        "generate_epochs": 1,
        "num_workers": 0,
        "test_epochs": 10**9,
        "data_augmentation": False,
        "conditioning": [],
        "resume": None,
        "start_epoch": 0,
        "augment_noise": 0,
        "n_stability_samples": 0,
        "remove_h": False,
        "visualize_every_batch": 10**8,
        "cuda": False,
        "context_node_nf": 0,
        "seed": seed,
    }
    return argparse.Namespace(**{**defaults, **HYPER})


def run_edm_side(
    peer_code: Path, workdir: Path, budget: float, n_samples: int, n_nll: int, seed: int, save_partial
) -> dict:
    torch.set_num_threads(1)
    stubbed = _stub_modules()
    sys.path.insert(0, str(peer_code))
    with contextlib.redirect_stdout(sys.stderr):
        import train_test
        import utils as edm_utils
        from equivariant_diffusion import utils as flow_utils
        from qm9 import dataset as edm_dataset
        from qm9.models import get_model, get_optim
        args = edm_options(workdir, seed)
    info = edm_dataset_info(workdir)
    torch.manual_seed(seed)
    np.random.seed(seed)
    device, dtype = torch.device("cpu"), torch.float32
    with contextlib.redirect_stdout(sys.stderr):
        dataloaders, _ = edm_dataset.retrieve_dataloaders(args)
        model, nodes_dist, prop_dist = get_model(args, device, info, dataloaders["train"])
    optim = get_optim(args, model)
    gradnorm_queue = edm_utils.Queue()
    gradnorm_queue.add(3000)  # as main_qm9.py
    model_ema, ema = copy.deepcopy(model), flow_utils.EMA(args.ema_decay)

    losses = []  # (batch, training-mode loss) observed as train_epoch computes them; nothing changed
    real_loss = train_test.losses.compute_loss_and_nll

    def observed(*a, **k):
        out = real_loss(*a, **k)
        if torch.is_grad_enabled():
            losses.append(float(out[0].detach()))
        return out

    train_test.losses.compute_loss_and_nll = observed
    start_cpu, start_wall = time.process_time(), time.perf_counter()
    loader = BudgetLoader(dataloaders["train"], start_cpu, start_wall, budget)
    epoch = 0
    with contextlib.redirect_stdout(sys.stderr):
        while not loader.spent:
            train_test.train_epoch(
                args=args,
                loader=loader,
                epoch=epoch,
                model=model,
                model_dp=model,
                model_ema=model_ema,
                ema=ema,
                device=device,
                dtype=dtype,
                property_norms=None,
                nodes_dist=nodes_dist,
                dataset_info=info,
                gradnorm_queue=gradnorm_queue,
                optim=optim,
                prop_dist=prop_dist,
            )
            epoch += 1
    train_cpu, train_wall = time.process_time() - start_cpu, time.perf_counter() - start_wall
    train_test.losses.compute_loss_and_nll = real_loss
    run_dir = workdir / "edm_run"
    run_dir.mkdir(parents=True, exist_ok=True)
    edm_utils.save_model(model_ema, str(run_dir / "generative_model_ema.npy"))  # EDM's own checkpoint format
    edm_utils.save_model(model, str(run_dir / "generative_model.npy"))
    with open(run_dir / "args.pickle", "wb") as f:
        pickle.dump(args, f)

    model_ema.eval()
    # test NLL: EDM's test() on the first n_nll molecules of the test split (in the npz's order)
    test_set = dataloaders["test"].dataset
    test_set.perm = None
    subset = torch.utils.data.Subset(test_set, range(min(n_nll, len(test_set))))
    nll_loader = torch.utils.data.DataLoader(
        subset, batch_size=args.batch_size, shuffle=False, collate_fn=dataloaders["test"].collate_fn
    )
    nll_cpu = time.process_time()
    torch.manual_seed(seed + 2)
    with contextlib.redirect_stdout(sys.stderr):
        nll = train_test.test(
            args=args,
            loader=nll_loader,
            epoch=0,
            eval_model=model_ema,
            device=device,
            dtype=dtype,
            property_norms=None,
            nodes_dist=nodes_dist,
            partition="Test",
        )
    nll_cpu = time.process_time() - nll_cpu
    n_dims = sum(
        ((len(z) - 1) * 3 + len(z) * (len(ELEMENTS) + 1)) for z, _ in load_split(workdir, "test", n_nll)
    )
    out = {
        "code": "EDM",
        "train_cpu_s": train_cpu,
        "train_wall_s": train_wall,
        "iterations": loader.batches,
        "epochs_started": epoch,
        "molecules_seen": loader.batches * args.batch_size,
        "loss_curve": [[c, w, l] for (c, w), l in zip(loader.times, losses)],
        "params": sum(p.numel() for p in model.parameters()),
        "sample_cpu_s": 0.0,
        "sample_wall_s": 0.0,
        "n_samples": 0,
        "nll_nats": float(nll),
        "nll_molecules": len(subset),
        "bits_per_dim": float(nll) * len(subset) / (n_dims * np.log(2.0)),
        "nll_cpu_s": nll_cpu,
        "shimmed_modules": stubbed,
        "run_dir": str(run_dir),
    }
    save_partial(out, [])  # the NLL (cheap) before the samples (the long part)

    samples = edm_sample_loop(args, model_ema, info, nodes_dist, prop_dist, n_samples, seed + 1, out, save_partial)
    return out, samples


def edm_sample_loop(args, model_ema, info, nodes_dist, prop_dist, n_samples, seed, out, save_partial, batch=100):
    """EDM's analyze_and_save loop (batches of 100, sizes from DistributionNodes), ``out`` and the samples
    saved after each batch (a deadline leaves the batches done so far)."""
    from qm9.sampling import sample as edm_sample

    model_ema.eval()
    gen_cpu, gen_wall = time.process_time(), time.perf_counter()
    samples = []
    torch.manual_seed(seed)
    with torch.no_grad(), contextlib.redirect_stdout(sys.stderr):
        for start in range(0, n_samples, batch):
            nodes = nodes_dist.sample(min(batch, n_samples - start))
            one_hot, _, x, node_mask = edm_sample(
                args, torch.device("cpu"), model_ema, info, prop_dist, nodesxsample=nodes
            )
            for b in range(len(nodes)):
                k = int(node_mask[b].sum())
                types = one_hot[b, :k].argmax(-1).numpy()
                samples.append((np.asarray(ELEMENTS)[types], x[b, :k].double().numpy()))
            out["sample_cpu_s"] = time.process_time() - gen_cpu
            out["sample_wall_s"] = time.perf_counter() - gen_wall
            save_partial(out, samples)
    return samples


def edm_extra_samples(peer_code: Path, workdir: Path, part: int, n_samples: int, seed: int, batch: int) -> int:
    """More samples from EDM's trained EMA model in a second process (the two cores sample in parallel):
    EDM's own checkpoint ``WORKDIR/edm_run/generative_model_ema.npy`` loaded into EDM's ``get_model`` as its
    ``eval_analyze.py`` does, seed ``seed + 1000 + part``; saved per batch as ``edm_part{part}``, which
    ``finish`` adds to the EDM side's samples."""
    torch.set_num_threads(1)
    _stub_modules()
    sys.path.insert(0, str(peer_code))
    with contextlib.redirect_stdout(sys.stderr):
        from qm9.models import get_model
    args, info = edm_options(workdir, seed), edm_dataset_info(workdir)
    model, nodes_dist, prop_dist = get_model(args, torch.device("cpu"), info, None)
    state = torch.load(workdir / "edm_run" / "generative_model_ema.npy", map_location="cpu", weights_only=True)
    model.load_state_dict(state)
    out = {"code": "EDM", "part": part, "seed": seed + 1000 + part}

    def save_partial(o, samples):
        save_side(workdir, f"edm_part{part}", o, samples, complete=False)

    samples = edm_sample_loop(
        args, model, info, nodes_dist, prop_dist, n_samples, seed + 1000 + part, out, save_partial, batch
    )
    save_side(workdir, f"edm_part{part}", out, samples, complete=True)
    return 0


def molequi_extra_samples(
    workdir: Path, part: int, n_samples: int, seed: int, batch: int, side: str = "molequi"
) -> int:
    """More samples from a side's trained molequi model (``model_path`` of ``{side}_side.json``) in another
    process, seed ``seed + 1000 + part``, each batch saved as ``{side}_part{part}`` (added by ``finish``)."""
    from molequi.models.generative.io import load_generative

    torch.set_num_threads(1)
    info = json.loads((workdir / f"{side}_side.json").read_text())
    model = load_generative(info["model_path"]).eval()
    out = {"code": info["code"], "part": part, "seed": seed + 1000 + part}

    def save_partial(o, samples):
        save_side(workdir, f"{side}_part{part}", o, samples, complete=False)

    samples = molequi_sample_loop(model, n_samples, seed + 1000 + part, out, save_partial, batch)
    save_side(workdir, f"{side}_part{part}", out, samples, complete=True)
    return 0


def molequi_sample_loop(model, n_samples: int, seed: int, out: dict, save_partial, batch: int = 100) -> list:
    """``model.sample`` in batches (each saved when done, with its CPU and wall time in ``out``): (numbers,
    positions) per molecule, plus (charges, bond-order matrix) for models that predict them (EQGAT-diff)."""
    gen = torch.Generator().manual_seed(seed)
    gen_cpu, gen_wall = time.process_time(), time.perf_counter()
    samples = []
    for start in range(0, n_samples, batch):
        for m in model.sample(min(batch, n_samples - start), batch_size=batch, generator=gen):
            mol = (np.asarray(m.numbers), np.asarray(m.positions, dtype=np.float64))
            if m.bonds is not None:
                mol += (np.asarray(m.charges, dtype=np.int64), np.asarray(m.bonds, dtype=np.int64))
            samples.append(mol)
        out["sample_cpu_s"] = time.process_time() - gen_cpu
        out["sample_wall_s"] = time.perf_counter() - gen_wall
        save_partial(out, samples)
    return samples


# ---------------------------------------------------------------------------------------------- molequi side
def molequi_yaml(run_dir: Path, seed: int, model: dict | None = None) -> str:
    """The ``molequi train`` config with ``HYPER`` in molequi's names (the data come as records); ``model``
    replaces the EDM model section (generation_compare.py: GeoLDM, EQGAT-diff with the same optimiser and
    trainer)."""
    import yaml

    h = HYPER
    cfg = {
        "model": {
            "name": "edm",
            "elements": list(ELEMENTS),
            "hidden": h["nf"],
            "layers": h["n_layers"],
            "timesteps": h["diffusion_steps"],
            "schedule": h["diffusion_noise_schedule"],
            "precision": h["diffusion_noise_precision"],
            "include_charges": h["include_charges"],
            "norm_values": [float(v) for v in h["normalize_factors"]],
            "coords_range": 15.0,
            "coords_range_per_layer": 15.0,
            "normalization_factor": float(h["normalization_factor"]),
            "attention": h["attention"],
            "tanh": h["tanh"],
            "norm_constant": float(h["norm_constant"]),
            "loss_normalisation": "edm",
        },
        "task": {"name": "diffusion"},
        "optim": {
            "optimizer": "adamw",
            "lr": h["lr"],
            "amsgrad": True,
            "weight_decay": 1e-12,
            "scheduler": "none",
            "ema_decay": h["ema_decay"],
            "grad_clip": "edm_adaptive",
        },
        "trainer": {
            "max_steps": -1,
            "batch_size": h["batch_size"],
            "seed": seed,
            "accelerator": "cpu",
            "devices": 1,
            "output": str(run_dir),
            "progress_bar": False,
            "log_every": 20,
            "checkpoint_every": 1000,
        },
    }
    if model is not None:
        cfg["model"] = model
    return yaml.safe_dump(cfg, sort_keys=False)


def _budget_callback(budget: float, record: dict):
    from lightning.pytorch.callbacks import Callback

    class CPUBudget(Callback):
        """Stops the fit once this process has spent ``budget`` CPU seconds in it; records the times."""

        def on_train_start(self, trainer, pl_module):
            record["start_cpu"], record["start_wall"] = time.process_time(), time.perf_counter()
            record["times"] = []

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            cpu = time.process_time() - record["start_cpu"]
            record["times"].append((cpu, time.perf_counter() - record["start_wall"]))
            if cpu >= budget:
                trainer.should_stop = True

        def on_train_end(self, trainer, pl_module):
            record["cpu"] = time.process_time() - record["start_cpu"]
            record["wall"] = time.perf_counter() - record["start_wall"]

    return CPUBudget()


def run_molequi_side(
    workdir: Path, budget: float, n_samples: int, n_nll: int, seed: int, save_partial, side: str = "molequi",
    model_section: dict | None = None,
) -> dict:
    """molequi's model trained for ``budget`` CPU s by ``molequi.train.run.train`` (run folder
    ``WORKDIR/{side}_run``, config ``WORKDIR/{side}.yaml``; ``model_section`` replaces the EDM model), its
    test NLL when the model has a likelihood (``dataset_nll``), then ``n_samples`` samples."""
    import ase

    from molequi.config import load_config
    from molequi.data.molecules import GeometryDataset
    from molequi.errors import ModelError
    from molequi.models.generative.io import load_generative
    from molequi.train.evaluate import read_run_metrics
    from molequi.train.run import train

    torch.set_num_threads(1)
    run_dir = workdir / f"{side}_run"
    if run_dir.exists():  # a previous run's logs would mix into this run's loss curve
        import shutil

        shutil.rmtree(run_dir)
    yaml_path = workdir / f"{side}.yaml"
    yaml_path.write_text(molequi_yaml(run_dir, seed, model_section))
    cfg = load_config(yaml_path)
    records = GeometryDataset(
        [ase.Atoms(numbers=z, positions=x) for z, x in load_split(workdir, "train")]
    ).records
    record: dict = {}
    result = train(
        cfg,
        splits={"train": records, "valid": [], "test": []},
        callbacks=[_budget_callback(budget, record)],
        enable_summary=False,
    )
    steps = int(result.global_step)
    log = {int(r["step"]): r["train/loss_step"] for r in read_run_metrics(run_dir) if "train/loss_step" in r}
    times = record["times"]
    curve = [[times[s][0], times[s][1], v] for s, v in sorted(log.items()) if s < len(times)]
    model = load_generative(result.model_path).eval()
    nll_cpu = time.process_time()
    nll = {"nll": None, "nll_stderr": None, "molecules": 0, "bits_per_dim": None}  # no likelihood: EQGAT-diff
    nll_error = None
    if hasattr(model, "dataset_nll"):
        try:
            nll = model.dataset_nll(
                load_split(workdir, "test", n_nll),
                batch_size=HYPER["batch_size"],
                generator=torch.Generator().manual_seed(seed + 2),
            )
        except ModelError as err:  # a test size the training batches never showed: log p(N) = -inf
            nll_error = str(err)
    nll_cpu = time.process_time() - nll_cpu
    out = {
        "code": "molequi" if model_section is None else f"molequi {model_section['name']}",
        "train_cpu_s": record["cpu"],
        "train_wall_s": record["wall"],
        "iterations": steps,
        "molecules_seen": steps * HYPER["batch_size"],
        "loss_curve": curve,
        "params": sum(p.numel() for p in model.parameters()),
        "sample_cpu_s": 0.0,
        "sample_wall_s": 0.0,
        "n_samples": 0,
        "nll_nats": nll["nll"],
        "nll_stderr": nll["nll_stderr"],
        "nll_molecules": nll["molecules"],
        "bits_per_dim": nll["bits_per_dim"],
        "nll_cpu_s": nll_cpu,
        **({"nll_error": nll_error} if nll_error else {}),
        "config": str(yaml_path),
        "run_dir": str(run_dir),
        "model_path": str(result.model_path),
    }
    save_partial(out, [])  # the NLL (cheap) before the samples (the long part)
    # batches of 100 as EDM's side, each saved when done
    return out, molequi_sample_loop(model, n_samples, seed + 1, out, save_partial, 100)


# ------------------------------------------------------------------------------------------------ metrics
def molequi_metrics(samples) -> dict:
    from molequi.data.molecules import Molecule
    from molequi.tasks.generation_metrics import molecule_report

    r = molecule_report([Molecule(numbers=z, positions=x) for z, x in samples])
    r.pop("smiles")
    return r


def edm_metrics(peer_code: Path, samples) -> dict:
    """The same metrics with EDM's own qm9/analyze.py (check_stability) and rdkit_functions.py."""
    if str(peer_code) not in sys.path:
        sys.path.insert(0, str(peer_code))
    _stub_modules()
    with contextlib.redirect_stdout(sys.stderr):
        from configs.datasets_config import get_dataset_info
        from qm9.analyze import check_stability
        from qm9.rdkit_functions import BasicMolecularMetrics
    info = copy.deepcopy(get_dataset_info("qm9", False))  # decoder H C N O F: the samples use the first four
    atoms = stable_atoms = stable_mols = 0
    pairs = []
    for z, x in samples:
        types = np.array([ELEMENTS.index(int(v)) for v in z])
        ok, n_ok, n = check_stability(x, types, info)
        stable_mols, stable_atoms, atoms = stable_mols + int(ok), stable_atoms + int(n_ok), atoms + int(n)
        pairs.append((torch.as_tensor(x), torch.as_tensor(types)))
    with contextlib.redirect_stdout(sys.stderr):
        (validity, uniqueness, _), _ = BasicMolecularMetrics(info, dataset_smiles_list=[]).evaluate(pairs)
    n = len(samples)
    return {
        "atom_stability": 100.0 * stable_atoms / max(atoms, 1),
        "molecule_stability": 100.0 * stable_mols / n,
        "validity": 100.0 * validity,
        "uniqueness": 100.0 * uniqueness,
        "valid_x_unique": 100.0 * validity * uniqueness,
    }


METRICS = ["atom_stability", "molecule_stability", "validity", "uniqueness", "valid_x_unique"]


# ------------------------------------------------------------------------------------------------ driver
def save_side(workdir: Path, side: str, out: dict, samples, complete: bool) -> None:
    """``WORKDIR/{side}_samples.npz`` and ``{side}_side.json``, each written to a temporary file and renamed:
    called after the NLL and after every sampling batch, so that a run stopped at a deadline leaves what it
    finished (``complete`` false, ``n_samples`` the molecules sampled so far) for ``finish``."""
    out["n_samples"], out["complete"] = len(samples), complete
    tmp = workdir / f".{side}_samples.tmp.npz"
    np.savez_compressed(
        tmp,
        sizes=np.array([len(s[0]) for s in samples], dtype=np.int64),
        numbers=np.concatenate([s[0] for s in samples]) if samples else np.zeros(0, dtype=np.int64),
        positions=np.concatenate([s[1] for s in samples]) if samples else np.zeros((0, 3)),
        **(  # predicted charges and bond-order matrices (row-major, n_i^2 each), when the model has them
            {"charges": np.concatenate([s[2] for s in samples]),
             "bonds": np.concatenate([s[3].ravel() for s in samples])}
            if samples and len(samples[0]) == 4 else {}
        ),
    )
    tmp.replace(workdir / f"{side}_samples.npz")
    tmp = workdir / f".{side}_side.json"
    tmp.write_text(json.dumps(out, indent=1, default=float))
    tmp.replace(workdir / f"{side}_side.json")


def side_main(args) -> int:
    workdir = Path(args.workdir)
    budget = args.cpu_minutes * 60.0

    def save_partial(out, samples):
        out["cpu_budget_s"], out["samples_requested"] = budget, args.samples
        save_side(workdir, args.side, out, samples, complete=False)

    if args.side == "edm":
        out, samples = run_edm_side(
            Path(args.peer_code).resolve(), workdir, budget, args.samples, args.nll_molecules, args.seed,
            save_partial,
        )
    else:
        out, samples = run_molequi_side(
            workdir, budget, args.samples, args.nll_molecules, args.seed, save_partial
        )
    out["cpu_budget_s"], out["samples_requested"] = budget, args.samples
    save_side(workdir, args.side, out, samples, complete=True)
    return 0


def load_samples(path: Path):
    """(numbers, positions) per molecule, plus (charges, bond-order matrix) when the file has them."""
    with np.load(path) as f:
        sizes, z, x = f["sizes"], f["numbers"], f["positions"]
        q, b = (f["charges"], f["bonds"]) if "bonds" in f else (None, None)
    ends = np.cumsum(sizes)
    if q is None:
        return [(z[e - s : e], x[e - s : e]) for s, e in zip(sizes, ends)]
    b_ends = np.cumsum(sizes**2)
    return [
        (z[e - s : e], x[e - s : e], q[e - s : e], b[be - s * s : be].reshape(s, s))
        for s, e, be in zip(sizes, ends, b_ends)
    ]


def peer_commit(peer_code: Path) -> str | None:
    """The peer's commit: ``git rev-parse`` in its tree, else its row in peers/README.md next to the tree
    (``| `edm/` | owner/repo | <commit> | ...``), else None."""
    try:
        return (
            subprocess.run(
                ["git", "-C", str(peer_code), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.CalledProcessError):
        readme = peer_code.parent / "README.md"
        if readme.is_file():
            for line in readme.read_text().splitlines():
                cells = [c.strip().strip("`") for c in line.split("|")]
                if len(cells) > 3 and cells[1] == f"{peer_code.name}/":
                    return f"{cells[3]} ({cells[2]}, from {readme.parent.name}/README.md)"
        return None


def run_main(args) -> int:
    workdir = Path(args.workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    peer_code = Path(args.peer_code).resolve()
    t0 = time.perf_counter()
    counts = prepare(Path(args.tarball), workdir)
    print(f"prepared: {json.dumps(counts)} ({time.perf_counter() - t0:.0f} s)", flush=True)
    (workdir / "command.txt").write_text("python scripts/bench/edm_equal_budget.py " + " ".join(sys.argv[1:]))
    procs = {}
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    for side in ("edm", "molequi"):
        (workdir / f"{side}_side.json").unlink(missing_ok=True)
        cmd = [
            sys.executable,
            __file__,
            "side",
            side,
            "--peer-code",
            str(peer_code),
            "--workdir",
            str(workdir),
            "--cpu-minutes",
            str(args.cpu_minutes),
            "--samples",
            str(args.samples),
            "--nll-molecules",
            str(args.nll_molecules),
            "--seed",
            str(args.seed),
        ]
        log = open(workdir / f"{side}.log", "w")
        procs[side] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
        print(f"started {side}: pid {procs[side][0].pid}, log {workdir / f'{side}.log'}", flush=True)
    failed = wait_with_helpers(args, workdir, peer_code, procs, env)
    if failed:
        raise SystemExit("; ".join(failed))
    return finish(args, counts)


def saved_samples(workdir: Path, side: str) -> int:
    """Molecules saved so far by a side and its ``samples`` helpers (their ``*_side.json``)."""
    total = 0
    for path in [workdir / f"{side}_side.json", *sorted(workdir.glob(f"{side}_part*_side.json"))]:
        with contextlib.suppress(FileNotFoundError, json.JSONDecodeError):
            total += int(json.loads(path.read_text()).get("n_samples", 0))
    return total


def wait_with_helpers(args, workdir: Path, peer_code: Path, procs: dict, env: dict, poll_s: float = 10.0):
    """Waits for both sides; a core that one side leaves free samples for the other. When one side has ended
    and the other has trained (its ``{side}_side.json`` exists, written after its NLL), a ``samples`` helper
    process (batches of 25, another seed) draws more molecules of the other side's trained model; once the
    saved molecules of that side reach ``--samples``, its processes are stopped (each keeps the batches it
    saved; ``finish`` merges them and drops the extra ones). Returns the failures (a side or helper that
    exited non-zero without being stopped)."""
    running, stopped, failed, helped = dict(procs), set(), [], None
    while running:
        for name, (p, log) in list(running.items()):
            if p.poll() is None:
                continue
            log.close()
            del running[name]
            if p.returncode != 0 and name not in stopped:
                failed.append(f"{name} failed (exit {p.returncode}); see {workdir / f'{name}.log'}")
        if failed:  # stop the rest (reported as stopped, not as failures of their own)
            for name, (p, _) in running.items():
                stopped.add(name)
                p.terminate()
        elif helped is None and len(running) == 1 and args.samples > 0:
            other = next(iter(running))
            if (workdir / f"{other}_side.json").exists() and saved_samples(workdir, other) < args.samples:
                helped, name = other, f"{other}_part1"
                cmd = [sys.executable, __file__, "samples", other, "--peer-code", str(peer_code), "--workdir",
                       str(workdir), "--part", "1", "--samples", str(args.samples), "--batch", "25",
                       "--seed", str(args.seed)]
                log = open(workdir / f"{name}.log", "w")
                running[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env), log)
                done = next(iter(set(procs) - {other}))
                pid = running[name][0].pid
                print(f"{done} ended: started {name} (pid {pid}) on the free core", flush=True)
        elif helped is not None and saved_samples(workdir, helped) >= args.samples:
            # every process left is the helped side's (the other side had ended before its helper started)
            todo = [(name, p) for name, (p, _) in running.items() if name not in stopped]
            for name, p in todo:
                stopped.add(name)
                p.terminate()
            if todo:
                print(f"{helped}: {args.samples} molecules saved, its sampling processes stopped", flush=True)
        if running:
            time.sleep(poll_s)
    return failed


def _relative_paths(obj):
    """Paths under the repository made relative to it, and those beside it relative as ../ (results name no
    one's machine)."""
    text = json.dumps(obj, default=float)
    for prefix, repl in ((str(ROOT) + "/", ""), (str(ROOT.parent) + "/", "../")):
        text = text.replace(prefix, repl)
    return json.loads(text)


def gather_samples(workdir: Path, side: str, e: dict) -> list:
    """The side's samples (``{side}_samples.npz``) and those of its ``samples`` helper processes
    (``{side}_part*``), at most ``samples_requested``; the counts and CPU / wall times go into ``e``."""
    samples = load_samples(workdir / f"{side}_samples.npz")
    extra = {  # the `samples` helpers' processes: more samples of this side's model
        p.name.removesuffix("_side.json"): json.loads(p.read_text())
        for p in sorted(workdir.glob(f"{side}_part*_side.json"))
    }
    e["samples_generated"] = len(samples) + sum(v["n_samples"] for v in extra.values())
    if extra:
        e["sample_processes"] = [
            {"name": side, "n_samples": e["n_samples"], "sample_cpu_s": e["sample_cpu_s"],
             "sample_wall_s": e["sample_wall_s"], "complete": e["complete"]}
        ] + [{"name": k, **{x: v[x] for x in ("n_samples", "sample_cpu_s", "sample_wall_s", "complete",
                                               "seed")}} for k, v in extra.items()]
        for name in extra:
            samples += load_samples(workdir / f"{name}_samples.npz")
        if len(samples) > e["samples_requested"]:  # the processes' batches overshot: the first ones kept
            e["samples_discarded"] = len(samples) - e["samples_requested"]
            samples = samples[: e["samples_requested"]]
        e["n_samples"] = len(samples)
        e["sample_cpu_s"] = sum(p["sample_cpu_s"] for p in e["sample_processes"])
        e["sample_wall_s"] = max(p["sample_wall_s"] for p in e["sample_processes"])
        e["complete"] = e["n_samples"] >= e["samples_requested"]
    e["sample_cpu_s_per_molecule"] = e["sample_cpu_s"] / max(e["samples_generated"], 1)
    return samples


def thin_curve(curve: list, points: int = 400) -> tuple[list, int]:
    """A loss curve of ``[cpu_s, wall_s, loss]`` per step as at most ``points`` (400) means over blocks of
    consecutive steps (times: the block's last step), and the block length (1: unchanged). Keeps the JSON
    small: a 50-CPU-minute run logs ~17,000 steps."""
    if len(curve) <= points:
        return curve, 1
    k = -(-len(curve) // points)
    c = np.asarray(curve, dtype=float)
    starts = range(0, len(c), k)
    return [c[min(i + k, len(c)) - 1, :2].tolist() + [float(c[i : i + k, 2].mean())] for i in starts], k


def finish(args, counts: dict | None = None) -> int:
    """Metrics of both sides' saved samples with both metric codes, the JSON, markdown and PNG."""
    workdir, peer_code = Path(args.workdir).resolve(), Path(args.peer_code).resolve()
    if counts is None:
        counts = json.loads((workdir / "edm_data" / "qm9" / "prepare.json").read_text())
    sides = {s: json.loads((workdir / f"{s}_side.json").read_text()) for s in ("edm", "molequi")}
    for side in sides:
        sides[side]["loss_curve"], sides[side]["loss_curve_block"] = thin_curve(sides[side]["loss_curve"])
        samples = gather_samples(workdir, side, sides[side])
        sides[side]["metrics"] = molequi_metrics(samples)
        sides[side]["metrics_edm_analyze"] = edm_metrics(peer_code, samples)
    agree = max(
        abs(sides[s]["metrics"][k] - sides[s]["metrics_edm_analyze"][k]) for s in sides for k in METRICS
    )
    payload = {
        "quick": bool(args.quick),
        "cpu_budget_s_each": sides["edm"]["cpu_budget_s"],
        "budget_note": "CPU time of each process in its training loop (data loading included); both sides "
        "ran "
        "at the same time as two single-thread processes on the shared 2-core machine",
        "hyperparameters": HYPER,
        "data": counts,
        "differences": DIFFERENCES,
        "metrics_code": "molequi.tasks.generation_metrics.molecule_report (EDM's definitions); "
        "metrics_edm_analyze: EDM's qm9/analyze.py check_stability + rdkit_functions",
        "metrics_max_abs_disagreement_pct": agree,
        "note": args.note,
        "sides": sides,
        "command": (workdir / "command.txt").read_text() if (workdir / "command.txt").is_file() else None,
    }
    prov = provenance(
        "EDM (e3_diffusion_for_molecules)",
        peer_commit(peer_code),
        True,
        peer_repo="github.com/ehoogeboom/e3_diffusion_for_molecules",
        shimmed=sides["edm"].get("shimmed_modules", []),
        notes="both codes trained in this run, same data, same hyperparameters, same CPU budget",
    )
    name = "edm_equal_budget_quick" if args.quick else "edm_equal_budget"
    save(name, _relative_paths(payload), _relative_paths(prov))
    write_report(name)
    return 0


# ------------------------------------------------------------------------------------------------ report
def _winner(key: str, e: float, m: float) -> str:
    lower_better = key in ("nll_nats", "bits_per_dim")
    if e == m:
        return "tie"
    return "molequi" if (m < e) == lower_better else "EDM"


def _warm_ema_init_weight(decay: float, steps: int) -> float:
    """Weight of the initial parameters in molequi's warmed-up EMA after ``steps`` updates (molequi.nn.ema:
    d_t = min(decay, (1 + t) / (10 + t)), t = 0, 1, ...)."""
    return float(np.prod([min(decay, (1.0 + t) / (10.0 + t)) for t in range(steps)]))


def write_report(name: str) -> None:
    d = json.loads((RESULTS / f"{name}.json").read_text())
    e, m = d["sides"]["edm"], d["sides"]["molequi"]
    rows = [
        ("training CPU s", "train_cpu_s"),
        ("training wall s", "train_wall_s"),
        ("optimiser steps", "iterations"),
        ("molecules seen", "molecules_seen"),
    ]
    lines = [
        "# EDM on full QM9 at equal CPU budget: molequi vs EDM's own code"
        + (" (quick smoke run)" if d["quick"] else ""),
        "",
        *([f"**{d['note']}**", ""] if d.get("note") else []),
        *(
            [
                "**Partial run (stopped at the deadline): "
                + "; ".join(
                    f"{x['code']}: {x['n_samples']} of {x.get('samples_requested', '?')} samples"
                    for x in (e, m)
                )
                + ", metrics over the samples each side finished.**",
                "",
            ]
            if not (e.get("complete", True) and m.get("complete", True))
            else []
        ),
        f"`{d['command']}` (peer commit {d['provenance']['peer_version']}, measured in this run). "
        f"Budget: {d['cpu_budget_s_each'] / 60:.0f} CPU-minutes of training each, one thread, both runs at "
        "the same time on the shared 2-core machine. Hyperparameters identical: "
        + ", ".join(f"{k}={v}" for k, v in d["hyperparameters"].items())
        + ".",
        "",
        f"Data: EDM's split of the ppqm tarball: train {d['data']['train']['kept']} "
        f"(of {d['data']['train']['edm_split']}), valid {d['data']['valid']['kept']} "
        f"(of {d['data']['valid']['edm_split']}), test {d['data']['test']['kept']} "
        f"(of {d['data']['test']['edm_split']}); the rest are absent from the tarball (F molecules etc.).",
        "",
        "| | EDM's code | molequi | better |",
        "|---|---:|---:|---|",
    ]
    for label, key in rows:
        lines.append(f"| {label} | {e[key]:.0f} | {m[key]:.0f} | |")
    for k in METRICS:
        a, b = e["metrics"][k], m["metrics"][k]
        lines.append(
            f"| {k.replace('_', ' ')} % ({e['n_samples']} / {m['n_samples']} samples) | "
            f"{a:.1f} | {b:.1f} | {_winner(k, a, b)} |"
        )
    for k in METRICS:
        a, b = e["metrics_edm_analyze"][k], m["metrics_edm_analyze"][k]
        lines.append(
            f"| {k.replace('_', ' ')} %, EDM's analyze.py | {a:.1f} | {b:.1f} | {_winner(k, a, b)} |"
        )
    lines.append(
        f"| test NLL, nats/molecule ({e['nll_molecules']} test molecules) | {e['nll_nats']:.2f} | "
        f"{m['nll_nats']:.2f} ± {m['nll_stderr']:.2f} | {_winner('nll_nats', e['nll_nats'], m['nll_nats'])} |"
    )
    lines.append(
        f"| bits per dimension | {e['bits_per_dim']:.3f} | {m['bits_per_dim']:.3f} | "
        f"{_winner('bits_per_dim', e['bits_per_dim'], m['bits_per_dim'])} |"
    )
    lines.append(
        f"| sampling CPU s, all processes ({e.get('samples_generated', e['n_samples'])} / "
        f"{m.get('samples_generated', m['n_samples'])} molecules generated, "
        f"{d['hyperparameters']['diffusion_steps']} steps) | "
        f"{e['sample_cpu_s']:.0f} | {m['sample_cpu_s']:.0f} | |"
    )
    pe, pm = (x["sample_cpu_s"] / max(x.get("samples_generated", x["n_samples"]), 1) for x in (e, m))
    lines.append(f"| sampling CPU s per molecule | {pe:.2f} | {pm:.2f} | {_winner('nll_nats', pe, pm)} |")
    for x in (e, m):
        if x.get("sample_processes"):
            procs = ", ".join(
                f"{p['name']}: {p['n_samples']} in {p['sample_cpu_s']:.0f} CPU s / {p['sample_wall_s']:.0f} wall s"
                for p in x["sample_processes"]
            )
            lines.append("")
            lines.append(
                f"{x['code']}'s samples came from {len(x['sample_processes'])} processes at the same time "
                f"(i.i.d. draws of the same trained model, other seeds): {procs}"
                + (f"; the last {x['samples_discarded']} beyond the requested count dropped" if
                   x.get("samples_discarded") else "")
                + ". Sampling wall time is the longest process's."
            )
    lines += [
        "",
        f"Metrics: {d['metrics_code']}; the two codes' metrics differ by at most "
        f"{d['metrics_max_abs_disagreement_pct']:.2g} percentage points on these samples (they can differ in "
        "uniqueness: molequi folds explicit H atoms into their heavy atom before comparing SMILES, EDM's "
        "`mol2smiles` keeps them, so EDM counts e.g. `[H]C` and `[H]C[H]` (fragments of distance-bond "
        "molecules) as two molecules where molequi sees methane twice). NLL: each code's "
        "own variational bound (EDM: eval-mode forward minus log p(N), `train_test.test`; molequi: "
        "`EDM.dataset_nll`), one draw of t and noise per molecule, on the first test molecules.",
        "",
        "Not identical between the two runs:",
        "",
    ] + [f"- {x}" for x in d["differences"]]
    ema = d["hyperparameters"]["ema_decay"]
    lines.append(
        f"- At {e['iterations']} steps EDM's EMA model (the one it samples and evaluates) still holds "
        f"{ema ** e['iterations']:.0%} of its random initialisation ({ema} ** {e['iterations']}); molequi's "
        f"warmed-up EMA holds {_warm_ema_init_weight(ema, m['iterations']):.1e} of its own after "
        f"{m['iterations']} steps."
    )
    lines += [
        "",
        f"Shimmed: {', '.join(d['provenance']['shimmed']) or 'nothing'} (stub modules: EDM imports them for "
        "logging and pictures only).",
        "",
        f"![training loss and metrics]({name}.png)",
        "",
    ]
    from molequi.io import atomic_write_text

    atomic_write_text(RESULTS / f"{name}.md", "\n".join(lines))
    plot(d, RESULTS / f"{name}.png")
    print("\n".join(lines))


def plot(d: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    e, m = d["sides"]["edm"], d["sides"]["molequi"]
    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for side, colour in ((e, "C1"), (m, "C0")):
        c = np.asarray(side["loss_curve"], dtype=float)
        if len(c):
            k = max(1, len(c) // 200)  # running mean over k points, drawn where it is complete
            a.plot(
                c[k - 1 :, 0] / 60,
                np.convolve(c[:, 2], np.ones(k) / k, mode="valid"),
                color=colour,
                label=f"{side['code']} ({side['iterations']} steps)",
            )
    a.set_xlabel("training CPU minutes")
    a.set_ylabel("training objective, as each code logs it")
    a.set_yscale("log")
    a.legend()
    a.set_title("EDM's includes -log p(N) (~2.5 nats) and 1/2: compare trends, not levels", fontsize=9)
    x = np.arange(len(METRICS))
    b.bar(x - 0.2, [e["metrics"][k] for k in METRICS], 0.4, color="C1", label="EDM's code")
    b.bar(x + 0.2, [m["metrics"][k] for k in METRICS], 0.4, color="C0", label="molequi")
    b.set_xticks(x, [k.replace("_", "\n") for k in METRICS], fontsize=8)
    b.set_ylabel("%")
    b.set_title(f"samples ({e['n_samples']} each); test NLL {e['nll_nats']:.0f} vs {m['nll_nats']:.0f} nats")
    b.legend()
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(path)
    plt.close(fig)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = p.add_subparsers(dest="cmd", required=True)
    helps = {
        "run": "the whole comparison",
        "side": "one side (run starts these)",
        "finish": "metrics, JSON and report from the two sides' saved results (after run)",
        "samples": "more samples from one side's trained model in another process (added by finish)",
    }
    for name in ("run", "side", "finish", "samples"):
        s = sub.add_parser(name, help=helps[name])
        if name in ("side", "samples"):
            s.add_argument("side", choices=["edm", "molequi"])
        if name == "samples":
            s.add_argument("--part", type=int, default=1, help="names the output SIDE_part{PART}_*")
            s.add_argument("--batch", type=int, default=100, help="molecules per sampling batch (saved each)")
        s.add_argument("--peer-code", required=True, help="EDM's source tree (e3_diffusion_for_molecules)")
        s.add_argument(
            "--workdir",
            default=str(ROOT / "runs" / "edm_equal_budget"),
            help="prepared data, run folders, samples and logs (git-ignored runs/ by default)",
        )
        s.add_argument("--cpu-minutes", type=float, default=15.0, help="training CPU budget of each code")
        s.add_argument("--samples", type=int, default=1000, help="molecules sampled from each model")
        s.add_argument("--nll-molecules", type=int, default=2000, help="first test molecules for the NLL")
        s.add_argument("--seed", type=int, default=0)
        if name == "run":
            s.add_argument("--tarball", required=True, help="the ppqm QM9 geometry tarball xyz.tar.gz")
        if name in ("run", "finish"):
            s.add_argument(
                "--note",
                default=None,
                help="a sentence for the JSON and the report (e.g. why the "
                "budget or the sample count is smaller than the defaults)",
            )
            s.add_argument(
                "--quick",
                action="store_true",
                help="smoke run: 1 CPU-minute each, 50 samples, 200 NLL molecules",
            )
    r = sub.add_parser("report", help="markdown + PNG again from the saved JSON")
    r.add_argument("--quick", action="store_true")
    args = p.parse_args(argv)
    if args.cmd == "report":
        write_report("edm_equal_budget_quick" if args.quick else "edm_equal_budget")
        return 0
    if args.cmd == "side":
        return side_main(args)
    if args.cmd == "finish":
        return finish(args)
    if args.cmd == "samples" and args.side == "edm":
        return edm_extra_samples(
            Path(args.peer_code).resolve(), Path(args.workdir), args.part, args.samples, args.seed, args.batch
        )
    if args.cmd == "samples":
        return molequi_extra_samples(Path(args.workdir), args.part, args.samples, args.seed, args.batch)
    if args.quick:
        args.cpu_minutes, args.samples, args.nll_molecules = 1.0, 50, 200
    return run_main(args)


if __name__ == "__main__":
    sys.exit(main())
