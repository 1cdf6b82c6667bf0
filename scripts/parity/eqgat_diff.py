"""Parity of molequi's ``eqgat_diff`` denoiser with the reference EQGAT-diff code (github.com/jule-c/eqgat_diff).

    python scripts/parity/check.py eqgat_diff --peer-code PATH [--checkpoint CKPT] [--size S] [--cross-product]
    python scripts/parity/eqgat_diff.py --peer-code PATH [...]               (the same, directly)

PATH is the reference repository (jule-c/eqgat_diff at commit 98dce2f9c13ed5bb4d57a58789397d394fd51104; its
code lives in PATH/eqgat_diff; here ../shared/peers/eqgat_diff).

1. Builds the reference denoiser ``e3moldiffusion.coordsatomsbonds.DenoisingEdgeNetwork`` in float64 with the
   arguments its ``experiments/diffusion_discrete.py`` Trainer passes, for QM9 with its 16-element atom
   encoder and 6 charge classes (``--size paper``: sdim 256, vdim 64, edim 32, 7 layers, the defaults of its
   ``hparams.py``; ``--size tiny``: 16 / 4 / 8, 3 layers), seeded random init plus seeded N(0, 0.05^2) noise
   on every parameter (its zero biases and unit norms would otherwise go untested). With ``--checkpoint`` the
   weights come from that file (a ``best_mol_stab.ckpt``) instead.
2. Saves them as the Trainer's Lightning checkpoint would be (``state_dict`` with the denoiser under
   ``model.``, the priors, its noise schedules and transition matrices built by its own classes, and
   ``hyper_parameters``), imports that file with ``molequi.interop.eqgat_diff.import_eqgat_diff``.
3. Runs both on one batch of noised QM9 molecules (``data/qm9_geometries``: bonds and charges perceived by
   RDKit, positions noised at a random t, atom types, charges and bonds resampled towards the priors as the
   forward process does) and compares x0 (n, 3), atom-type and charge logits (n, K) / (n, C) and bond logits
   (E, 5), edges matched by (sender, receiver): max |diff| / max |reference| per output, goal 1e-6.
4. Computes the training loss terms with the reference's ``experiments.losses.DiffusionLoss`` and molequi's
   ``reference_loss_terms`` on the same predictions and targets (per-molecule SNR weights): goal 1e-10.

``torch_scatter`` and ``torch_sparse`` (compiled extensions that do not build with torch 2.13) are replaced
in the reference's import by shims: ``scatter`` / ``scatter_mean`` / ``scatter_add`` by
``torch_geometric.utils.scatter`` and ``scatter_softmax`` by ``torch_geometric.utils.softmax`` (which adds
1e-16 to the denominator); ``torch_sparse.SparseTensor`` is only used by edge message passing, which is off. ``experiments/utils.py``
(openbabel, PyG 1.x paths) is replaced by a stand-in holding the one function the schedule module imports
(``zero_mean``, used only when sampling).
Prints one JSON object {"peer", "max_abs_err_*", "relative", "tolerance", "ok", ...}; exit 1 when missed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

PEER = "EQGAT-diff (jule-c/eqgat_diff @ 98dce2f)"
DEFAULT_PEER = REPO.parent / "shared" / "peers" / "eqgat_diff"
TOLERANCE = 1e-6
LOSS_TOLERANCE = 1e-10
SIZES = {"paper": dict(sdim=256, vdim=64, edim=32, num_layers=7),
         "tiny": dict(sdim=16, vdim=4, edim=8, num_layers=3)}
GEOMETRIES = REPO / "data" / "qm9_geometries" / "qm9_geometries.extxyz"
MOLECULES = (23, 57, 118, 260, 1011)  # QM9 indices in GEOMETRIES: 5 to 19 atoms, C N O F H


def peer_path(path=None) -> Path:
    """The reference repository: ``path``, else $MOLEQUI_EQGAT_DIFF_CODE, else ../shared/peers/eqgat_diff."""
    return Path(path or os.environ.get("MOLEQUI_EQGAT_DIFF_CODE") or DEFAULT_PEER)


def import_peer(peer_code: Path) -> types.SimpleNamespace:
    """The reference's modules, imported from ``peer_code/eqgat_diff`` with the shims installed."""
    from torch_geometric.utils import scatter as pyg_scatter
    from torch_geometric.utils import softmax as pyg_softmax

    def scatter(src, index, dim=0, out=None, dim_size=None, reduce="sum"):
        return pyg_scatter(src, index, dim=dim, dim_size=dim_size, reduce={"add": "sum"}.get(reduce, reduce))

    shim = types.ModuleType("torch_scatter")
    shim.scatter = scatter
    shim.scatter_mean = lambda src, index, dim=0, dim_size=None, **_: scatter(src, index, dim, None, dim_size, "mean")
    shim.scatter_add = lambda src, index, dim=0, dim_size=None, **_: scatter(src, index, dim, None, dim_size, "sum")
    composite = types.ModuleType("torch_scatter.composite")
    composite.scatter_softmax = lambda src, index, dim=0, dim_size=None, **_: pyg_softmax(
        src, index, num_nodes=dim_size, dim=dim)
    shim.composite = composite
    sparse = types.ModuleType("torch_sparse")
    sparse.SparseTensor = None  # only edge message passing (edge_mp, off) builds one
    # experiments/utils.py imports openbabel, yaml and PyG 1.x module paths; the schedule module takes only
    # zero_mean from it (for sampling, not used here): a one-function stand-in with its definition
    utils = types.ModuleType("experiments.utils")
    utils.zero_mean = lambda x, batch, dim_size, dim=0: x - scatter(x, batch, dim, None, dim_size, "mean")[batch]
    for name, module in (("torch_scatter", shim), ("torch_scatter.composite", composite),
                         ("torch_sparse", sparse), ("experiments.utils", utils)):
        sys.modules.setdefault(name, module)
    code = str(Path(peer_code) / "eqgat_diff")
    if not Path(code, "e3moldiffusion", "coordsatomsbonds.py").is_file():
        raise SystemExit(f"{peer_code} is not the EQGAT-diff repository (no eqgat_diff/e3moldiffusion); get "
                         "github.com/jule-c/eqgat_diff at 98dce2f9c13ed5bb4d57a58789397d394fd51104")
    if code not in sys.path:
        sys.path.insert(0, code)
    import importlib

    return types.SimpleNamespace(
        network=importlib.import_module("e3moldiffusion.coordsatomsbonds").DenoisingEdgeNetwork,
        loss=importlib.import_module("experiments.losses").DiffusionLoss,
        continuous=importlib.import_module("experiments.diffusion.continuous"),
        categorical=importlib.import_module("experiments.diffusion.categorical"))


def hparams(size: str, cross_product: bool, timesteps: int = 500) -> dict:
    """The hyperparameters the reference's Trainer reads (``experiments/hparams.py`` defaults)."""
    return dict(SIZES[size], use_cross_product=cross_product, cutoff_local=7.0, vector_aggr="mean",
                fully_connected=True, local_global_model=False, edge_mp=False, context_mapping=False,
                num_context_features=0, bond_prediction=False, property_prediction=False, continuous_param="data",
                timesteps=timesteps, noise_scheduler="cosine", beta_min=1e-4, beta_max=2e-2, eps_min=1e-3,
                lc_coords=3.0, lc_atoms=0.4, lc_bonds=2.0, lc_charges=1.0, num_charge_classes=6,
                num_bond_classes=5, loss_weighting="snr_t", dataset="qm9", remove_hs=False, ema_decay=0.9999)


def build_reference(peer, hp: dict, n_types: int, seed: int):
    """``DenoisingEdgeNetwork`` as the Trainer builds it, random weights plus seeded noise, float64."""
    torch.manual_seed(seed)
    model = peer.network(
        hn_dim=(hp["sdim"], hp["vdim"]), num_layers=hp["num_layers"], latent_dim=None,
        use_cross_product=hp["use_cross_product"], num_atom_features=n_types + hp["num_charge_classes"],
        num_bond_types=hp["num_bond_classes"], edge_dim=hp["edim"], cutoff_local=hp["cutoff_local"],
        vector_aggr=hp["vector_aggr"], fully_connected=hp["fully_connected"],
        local_global_model=hp["local_global_model"], recompute_edge_attributes=True, recompute_radius_graph=False,
        edge_mp=hp["edge_mp"], context_mapping=hp["context_mapping"],
        num_context_features=hp["num_context_features"], bond_prediction=hp["bond_prediction"],
        property_prediction=hp["property_prediction"], coords_param=hp["continuous_param"]).double()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return model.eval()


def priors(n_types: int, seed: int) -> dict[str, torch.Tensor]:
    """Marginal priors and the size distribution, as the Trainer registers them (QM9-like numbers)."""
    rng = np.random.default_rng(seed)
    atoms = np.zeros(n_types)
    atoms[[0, 2, 3, 4, 5]] = [0.51, 0.35, 0.06, 0.07, 0.01]  # H C N O F in the 16-element encoder
    sizes = np.zeros(30)
    sizes[3:30] = rng.dirichlet(np.ones(27))
    return {"atoms_prior": torch.tensor(atoms, dtype=torch.float32),
            "bonds_prior": torch.tensor([0.87, 0.11, 0.01, 0.005, 0.005], dtype=torch.float32),
            "charges_prior": torch.tensor([0.0, 0.001, 0.998, 0.001, 0.0, 0.0], dtype=torch.float32),
            "empirical_num_nodes": torch.tensor(sizes, dtype=torch.float32)}


def write_lightning_checkpoint(peer, model, hp: dict, prior: dict, path: Path) -> None:
    """The file the reference's Trainer writes (``trainer.save_checkpoint``): its state dict holds the denoiser
    under ``model.``, the priors and the schedule / transition buffers of its ``DiscreteDDPM`` and
    ``CategoricalDiffusionKernel`` modules (built here with the reference's classes)."""
    ddpm = peer.continuous.DiscreteDDPM
    kernel = peer.categorical.CategoricalDiffusionKernel
    T = hp["timesteps"]
    common = dict(beta_min=hp["beta_min"], beta_max=hp["beta_max"], scaled_reverse_posterior_sigma=True,
                  schedule=hp["noise_scheduler"], enforce_zero_terminal_snr=False)
    holder = torch.nn.Module()
    holder.model = model
    holder.sde_pos = ddpm(**common, nu=2.5, T=T, param=hp["continuous_param"])
    holder.sde_atom_charge = ddpm(**common, N=T, nu=1)
    holder.sde_bonds = ddpm(**common, N=T, nu=1.5)
    n_types = prior["atoms_prior"].numel()
    sizes = dict(num_atom_types=n_types, num_bond_types=5, num_charge_types=hp["num_charge_classes"])
    holder.cat_atoms = kernel(terminal_distribution=prior["atoms_prior"],
                              alphas=holder.sde_atom_charge.alphas.clone(), **sizes)
    holder.cat_bonds = kernel(terminal_distribution=prior["bonds_prior"], alphas=holder.sde_bonds.alphas.clone(),
                              **sizes)
    holder.cat_charges = kernel(terminal_distribution=prior["charges_prior"],
                                alphas=holder.sde_atom_charge.alphas.clone(), **sizes)
    state = {**{k: v for k, v in prior.items()}, **holder.state_dict()}
    import pytorch_lightning

    torch.save({"epoch": 0, "global_step": 0, "pytorch-lightning_version": pytorch_lightning.__version__,
                "state_dict": state, "loops": {}, "callbacks": {}, "optimizer_states": [], "lr_schedulers": [],
                "hyper_parameters": hp}, path)


def molecules(indices=MOLECULES):
    """QM9 molecules (numbers, positions Å, bond matrix, charges) from the shipped geometries."""
    import ase.io

    from molequi.data.molecules import perceive_bonds

    out = []
    for k in indices:
        atoms = ase.io.read(GEOMETRIES, index=k)
        z, pos = atoms.numbers, atoms.positions
        bi, bo, q = perceive_bonds(z, pos)
        mat = np.zeros((len(z), len(z)), dtype=int)
        mat[bi[0], bi[1]] = mat[bi[1], bi[0]] = bo
        out.append((z, pos - pos.mean(0), mat, q))
    return out


def noised_batch(mols, elements, charges, seed: int, timesteps: int = 500):
    """The denoiser's inputs for the molecules, noised at a random t per molecule (cosine schedule); the same
    tensors feed both programs. Returns a dict of tensors (float64)."""
    from molequi.models.generative.categorical import N_BOND_TYPES, edge_lookup
    from molequi.models.generative.graph import fully_connected_edges, remove_mean

    gen = torch.Generator().manual_seed(seed)
    sizes = torch.tensor([len(m[0]) for m in mols])
    batch = torch.repeat_interleave(torch.arange(len(mols)), sizes)
    n = int(sizes.sum())
    edge_index = fully_connected_edges(batch, len(mols))
    rev = edge_lookup(edge_index, n, edge_index.flip(0))
    x0 = torch.cat([torch.as_tensor(m[1]) for m in mols])
    types = torch.cat([torch.tensor([elements.index(int(v)) for v in m[0]]) for m in mols])
    q = torch.cat([torch.as_tensor(m[3]).long() - min(charges) for m in mols])
    offsets = torch.cumsum(sizes, 0) - sizes
    bond_mat = torch.zeros(n, n, dtype=torch.long)
    for o, m in zip(offsets.tolist(), mols):
        k = len(m[0])
        bond_mat[o:o + k, o:o + k] = torch.as_tensor(m[2])
    bonds = bond_mat[edge_index[1], edge_index[0]]
    t_int = torch.randint(1, timesteps + 1, (len(mols),), generator=gen)
    ab = torch.cos(0.5 * torch.pi * (t_int.double() / timesteps + 0.008) / 1.008) ** 2
    eps = remove_mean(torch.randn(n, 3, generator=gen, dtype=torch.float64), batch, len(mols))
    x_t = ab.sqrt()[batch, None] * x0 + (1 - ab).sqrt()[batch, None] * eps

    def resample(c, k, keep):  # keep the class with probability keep, else a uniform draw
        flip = torch.rand(c.shape, generator=gen, dtype=torch.float64) > keep
        return torch.where(flip, torch.randint(0, k, c.shape, generator=gen), c)

    a_t = resample(types, len(elements), ab[batch])
    q_t = resample(q, len(charges), ab[batch])
    b_t = resample(bonds, N_BOND_TYPES, ab[batch[edge_index[0]]])
    upper = edge_index[0] < edge_index[1]
    b_t[rev[upper]] = b_t[upper]  # symmetric, as the forward process keeps it
    onehot = torch.nn.functional.one_hot
    return {"x": x_t, "a": onehot(a_t, len(elements)).double(), "q": onehot(q_t, len(charges)).double(),
            "b": onehot(b_t, N_BOND_TYPES).double(), "t": t_int.double() / timesteps, "t_int": t_int,
            "batch": batch, "edge_index": edge_index, "rev": rev, "x0": x0, "types": types, "charges": q,
            "bonds": bonds, "ab": ab}


def reference_outputs(ref, inp) -> dict[str, torch.Tensor]:
    """The reference denoiser on ``inp``, bond logits re-ordered to molequi's edge order."""
    src, dst = inp["edge_index"]
    n = inp["x"].shape[0]
    # the reference's edge order: sorted by receiver (sort_edge_index(sort_by_row=False))
    order = torch.argsort(dst * n + src)
    ei = inp["edge_index"][:, order]
    with torch.no_grad():
        out = ref(x=torch.cat([inp["a"], inp["q"]], -1), t=inp["t"].clamp_min(1e-3).unsqueeze(-1), pos=inp["x"],
                  edge_index_local=None, edge_index_global=ei, edge_attr_global=inp["b"][order],
                  batch=inp["batch"], batch_edge_global=inp["batch"][ei[0]])
    bonds = torch.empty_like(out["bonds_pred"])
    bonds[order] = out["bonds_pred"]
    K = inp["a"].shape[1]
    return {"x0": out["coords_pred"], "types": out["atoms_pred"][:, :K], "charges": out["atoms_pred"][:, K:],
            "bonds": bonds}


def molequi_outputs(model, inp) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        x0, la, lq, lb = model.net(inp["x"], inp["a"], inp["q"], inp["b"], inp["t"], inp["batch"],
                                   inp["edge_index"], inp["rev"])
    return {"x0": x0, "types": la, "charges": lq, "bonds": lb}


def loss_terms(peer, out, inp) -> dict[str, tuple[float, float]]:
    """(reference, molequi) value of each weighted loss term summed over the batch, on ``out``'s predictions."""
    from molequi.models.generative.categorical import reference_loss_terms

    w = (inp["ab"] / (1 - inp["ab"])).clamp(0.05, 1.5)
    B = len(inp["ab"])
    # the reference aggregates bonds over edge_index_global[1] (receivers), as molequi's edge_index[1]
    ref = peer.loss(modalities=["coords", "atoms", "charges", "bonds"], param=["data"] * 4)(
        true_data={"coords": inp["x0"], "atoms": inp["types"], "charges": inp["charges"], "bonds": inp["bonds"]},
        pred_data={"coords": out["x0"], "atoms": out["types"], "charges": out["charges"], "bonds": out["bonds"]},
        batch=inp["batch"], bond_aggregation_index=inp["edge_index"][1], weights=w)
    ours = reference_loss_terms(out["x0"], inp["x0"], out["types"], inp["types"], out["charges"], inp["charges"],
                                out["bonds"], inp["bonds"], inp["batch"], inp["edge_index"], B)
    return {k: (float(ref[k]), float((w * o).sum())) for k, o in zip(("coords", "atoms", "charges", "bonds"), ours)}


def run(peer_code=None, checkpoint=None, *, size="tiny", cross_product=False, seed=0, work=None) -> dict:
    from molequi.interop.eqgat_diff import (
        REFERENCE_ELEMENTS,
        eqgat_config,
        import_eqgat_diff,
        read_eqgat_checkpoint,
    )

    peer = import_peer(peer_path(peer_code))
    previous = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        if checkpoint is not None:
            state, hp = read_eqgat_checkpoint(checkpoint)
            cfg = eqgat_config(state, hp, source=str(checkpoint))
            hp = {**hparams("tiny", cfg.cross_product), **hp, "sdim": cfg.hidden, "vdim": cfg.vectors,
                  "edim": cfg.edge_hidden, "num_layers": cfg.layers}
            ref = build_reference(peer, hp, len(cfg.elements), seed)
            ref.load_state_dict({k[len("model."):]: v for k, v in state.items() if k.startswith("model.")})
            ref = ref.double().eval()
            path = Path(checkpoint)
        else:
            hp = hparams(size, cross_product)
            ref = build_reference(peer, hp, len(REFERENCE_ELEMENTS), seed)
            path = Path(work) / "best_mol_stab.ckpt"
            write_lightning_checkpoint(peer, ref, hp, priors(len(REFERENCE_ELEMENTS), seed), path)
        model = import_eqgat_diff(path, dtype=torch.float64)
        inp = noised_batch(molecules(), model.config.elements, model.config.charges,
                           seed, model.config.timesteps)
        t0 = time.perf_counter()
        ref_out = reference_outputs(ref, inp)
        t_ref = time.perf_counter() - t0
        t0 = time.perf_counter()
        our_out = molequi_outputs(model, inp)
        t_ours = time.perf_counter() - t0
        losses = loss_terms(peer, our_out, inp)
    finally:
        torch.set_default_dtype(previous)
    err = {k: float((ref_out[k] - our_out[k]).abs().max()) for k in ref_out}
    scale = {k: float(ref_out[k].abs().max()) for k in ref_out}
    rel = {k: err[k] / max(scale[k], 1e-300) for k in err}
    loss_rel = {k: abs(r - o) / max(abs(r), 1e-300) for k, (r, o) in losses.items()}
    return {
        "peer": PEER, "size": "the checkpoint's" if checkpoint else size, "cross_product": model.config.cross_product,
        "checkpoint": str(checkpoint) if checkpoint else None, "dtype": "float64",
        **{f"max_abs_err_{k}": v for k, v in err.items()}, "max_abs_ref": scale, "relative": rel,
        "tolerance": TOLERANCE, "loss_terms": {k: {"reference": r, "molequi": o} for k, (r, o) in losses.items()},
        "loss_relative": loss_rel, "loss_tolerance": LOSS_TOLERANCE,
        "ok": all(v <= TOLERANCE for v in rel.values()) and all(v <= LOSS_TOLERANCE for v in loss_rel.values()),
        "molecules": [int(k) for k in MOLECULES], "atoms": int(inp["x"].shape[0]),
        "edges": int(inp["edge_index"].shape[1]), "t": inp["t_int"].tolist(),
        "parameters": sum(p.numel() for p in model.net.parameters()),
        "forward_s": {"reference": round(t_ref, 4), "molequi": round(t_ours, 4)},
        "written_checkpoint": None if checkpoint else str(path),
    }


def build_argparser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peer-code", default=None, help="the EQGAT-diff repository (default: $MOLEQUI_EQGAT_DIFF_CODE "
                   "or ../shared/peers/eqgat_diff; github.com/jule-c/eqgat_diff @ 98dce2f)")
    p.add_argument("--checkpoint", help="a reference best_mol_stab.ckpt to check instead of random weights")
    p.add_argument("--size", choices=sorted(SIZES), default="paper", help="sizes of the random reference model")
    p.add_argument("--cross-product", action="store_true", help="the reference's --use-cross-product")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workdir", help="keep the reference checkpoint written for the random model here")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_argparser().parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.workdir or tmp)
        work.mkdir(parents=True, exist_ok=True)
        res = run(args.peer_code, args.checkpoint, size=args.size, cross_product=args.cross_product,
                  seed=args.seed, work=work)
    print(json.dumps(res))
    return 0 if res["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
