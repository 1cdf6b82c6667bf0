"""Parity of molequi's EDM with EDM's own code (github.com/ehoogeboom/e3_diffusion_for_molecules).

    python scripts/parity/check.py edm --peer-code PATH [--checkpoint RUN_DIR]
    python scripts/parity/edm.py --peer-code PATH [--checkpoint RUN_DIR]     (the same, directly)

1. Builds an ``EnVariationalDiffusion`` with EDM's ``qm9.models.get_model`` (imported from PATH) from the
   options of RUN_DIR/args.pickle and its ``generative_model_ema.npy`` weights, or, without --checkpoint,
   from EDM's own QM9 run options (PATH/outputs/edm_qm9/args.pickle, else EDM's QM9 defaults) with EDM's
   random init plus seeded N(0, 0.02^2) noise on every parameter, so that no part of the network (the
   coordinate MLP's last layer starts at gain 0.001) sits near zero.
2. Saves args.pickle and the state dict as EDM does (``torch.save(model.state_dict(), ...npy)``) into a
   temporary run folder, imports it with ``molequi.interop.edm.import_edm_run`` (size histogram from
   PATH/configs/datasets_config.py) and loads the written checkpoint with ``molequi.checkpoint.load_model``.
3. Compares, in float64, on the same random molecules (QM9 elements and sizes, EDM's padded layout on its
   side, molequi's unpadded batch on the other):
   - the denoiser eps_theta(z_t, t) at several t (EDM ``phi`` vs molequi ``EDM.dynamics``): max |diff| and
     max |diff| / max |EDM output| (goal 1e-6),
   - the per-molecule NLL, EDM's eval-mode ``forward`` minus ``DistributionNodes.log_prob`` (what EDM's
     ``compute_loss_and_nll`` reports) vs ``EDM.likelihood_terms``, with the same t and noise: EDM's
     ``torch.randint`` and ``sample_combined_position_feature_noise`` are replaced by pre-drawn values for
     the call (goal 1e-4 nats).

EDM rounds three things to float32 whatever the model's dtype: its noise schedule ``gamma`` (a float32
parameter: recomputed here with EDM's own ``polynomial_schedule`` in float64), the time fed to the network
(``t_int.float() / T``) and the features in ``normalize`` (``h.float()``: Z / 10 rounds); the script lifts
these to float64 (``fixed_draws``), so both sides compute with the same numbers (molequi computes the
schedule in float64 always). EDM's ``print`` output is sent to stderr. No shims are needed: EDM's model code
imports only torch and numpy. Prints one JSON object; exit status 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pickle
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

DENOISER_RTOL = 1e-6
NLL_ATOL = 1e-4  # nats per molecule
QM9_DEFAULTS = {  # EDM's README command for QM9 (main_qm9.py defaults otherwise)
    "exp_name": "parity", "model": "egnn_dynamics", "probabilistic_model": "diffusion", "diffusion_steps": 1000,
    "diffusion_noise_schedule": "polynomial_2", "diffusion_noise_precision": 1e-5, "diffusion_loss_type": "l2",
    "n_layers": 9, "inv_sublayers": 1, "nf": 256, "tanh": True, "attention": True, "norm_constant": 1,
    "sin_embedding": False, "dataset": "qm9", "conditioning": [], "normalize_factors": [1, 4, 10],
    "remove_h": False, "include_charges": True, "normalization_factor": 1, "aggregation_method": "sum",
    "condition_time": True, "context_node_nf": 0}


def _import_peer(peer_code: Path):
    if str(peer_code) not in sys.path:
        sys.path.insert(0, str(peer_code))
    with contextlib.redirect_stdout(sys.stderr):
        from configs.datasets_config import get_dataset_info
        from equivariant_diffusion import en_diffusion
        from qm9 import models as qm9_models
    return get_dataset_info, en_diffusion, qm9_models


def build_peer(peer_code: Path, options: dict, state: dict | None, seed: int):
    """EDM's model, size distribution and dataset info, in float64, eval mode."""
    get_dataset_info, en_diffusion, qm9_models = _import_peer(peer_code)
    # EDM's eval scripts fill the options older runs lack with these values (eval_analyze.py)
    options = {"normalization_factor": 1, "aggregation_method": "sum", **options}
    args = argparse.Namespace(**options)
    info = get_dataset_info(args.dataset, args.remove_h)
    built = argparse.Namespace(**{**options, "conditioning": []})  # DistributionProperty needs a dataloader
    torch.manual_seed(seed)  # EDM's own init draws from the global generator
    with contextlib.redirect_stdout(sys.stderr):
        model, nodes_dist, _ = qm9_models.get_model(built, torch.device("cpu"), info, None)
    set_weights(model, state, seed)
    model = model.double().eval()
    schedule = args.diffusion_noise_schedule
    if schedule.startswith("polynomial"):
        alphas2 = en_diffusion.polynomial_schedule(args.diffusion_steps, s=args.diffusion_noise_precision,
                                                   power=float(schedule.split("_")[1]))
        gamma = -(np.log(alphas2) - np.log(1 - alphas2))
        model.gamma.gamma.data = torch.from_numpy(gamma).double()
    return model, nodes_dist, info


def set_weights(model, state: dict | None, seed: int, *, float32_values: bool = False) -> None:
    """The peer's weights: the checkpoint's ``state``, or else its own init plus seeded N(0, 0.005^2) noise on
    every parameter but the noise schedule's ``gamma.gamma`` (``float32_values``: rounded to float32, as a
    trained run's weights are)."""
    if state is not None:
        model.load_state_dict(state)
        return
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name != "gamma.gamma":
                p.add_(torch.randn(p.shape, generator=gen) * 0.005)
                if float32_values:
                    p.copy_(p.float())


def random_molecules(info: dict, n: int, seed: int, include_charges: bool):
    """n molecules: sizes from the dataset histogram, types uniform over the decoder, positions ~ 1.2 Å
    Gaussian clouds. Returns (numbers list, positions list)."""
    from ase.data import atomic_numbers

    rng = np.random.default_rng(seed)
    sizes = np.array(list(info["n_nodes"].keys()))
    p = np.array(list(info["n_nodes"].values()), dtype=float)
    decoder = [atomic_numbers[s] for s in info["atom_decoder"]]
    chosen = rng.choice(sizes, size=n, p=p / p.sum())
    numbers = [np.array(rng.choice(decoder, size=int(k))) for k in chosen]
    positions = [rng.normal(scale=1.2, size=(int(k), 3)) for k in chosen]
    positions = [p - p.mean(0) for p in positions]  # centred: both codes then see the same floats
    return numbers, positions, decoder


def padded(numbers, positions, decoder, include_charges):
    """EDM's batch layout: x (B, N, 3) centred, one_hot (B, N, K), charges (B, N, 1), node/edge masks."""
    B, N = len(numbers), max(len(z) for z in numbers)
    x = torch.zeros(B, N, 3, dtype=torch.float64)
    one_hot = torch.zeros(B, N, len(decoder), dtype=torch.float64)
    charges = torch.zeros(B, N, 1, dtype=torch.float64)
    node_mask = torch.zeros(B, N, 1, dtype=torch.float64)
    for b, (z, pos) in enumerate(zip(numbers, positions)):
        k = len(z)
        x[b, :k] = torch.as_tensor(pos - pos.mean(0))
        one_hot[b, torch.arange(k), torch.as_tensor([decoder.index(int(v)) for v in z])] = 1.0
        charges[b, :k, 0] = torch.as_tensor(z, dtype=torch.float64)
        node_mask[b, :k] = 1.0
    edge_mask = node_mask.squeeze(2).unsqueeze(1) * node_mask.squeeze(2).unsqueeze(2)
    edge_mask = edge_mask * (~torch.eye(N, dtype=torch.bool)).unsqueeze(0)
    h = {"categorical": one_hot, "integer": charges if include_charges else torch.zeros(0, dtype=torch.float64)}
    return x, h, node_mask, edge_mask.view(B * N * N, 1)


def molecule_inputs(info: dict, n: int, seed: int, include_charges: bool):
    """``random_molecules`` in both layouts: (decoder, EDM's padded x, h, node_mask, edge_mask, the (B, N) bool
    mask of real atoms, molequi's unpadded PyG batch of the same molecules)."""
    from torch_geometric.data import Batch, Data

    numbers, positions, decoder = random_molecules(info, n, seed, include_charges)
    x, h, node_mask, edge_mask = padded(numbers, positions, decoder, include_charges)
    batch = Batch.from_data_list([Data(numbers=torch.as_tensor(z), pos=torch.as_tensor(p))
                                  for z, p in zip(numbers, positions)])
    return decoder, x, h, node_mask, edge_mask, node_mask.squeeze(2).bool(), batch


def padded_noise(node_mask, n_features, gen):
    """EDM's ``sample_combined_position_feature_noise``: zero-mean x noise and h noise, zero on padding."""
    B, N, _ = node_mask.shape
    zx = torch.randn(B, N, 3, generator=gen, dtype=torch.float64) * node_mask
    zx = zx - zx.sum(1, keepdim=True) / node_mask.sum(1, keepdim=True) * node_mask
    zh = torch.randn(B, N, n_features, generator=gen, dtype=torch.float64) * node_mask
    return torch.cat([zx, zh], 2)


@contextlib.contextmanager
def fixed_draws(peer, t_int, noises):
    """Make EDM's compute_loss take ``t_int`` (B, 1) and the noises in ``noises`` (in order), and lift the two
    float32 casts EDM makes of its inputs (the time t_int.float() / T fed to the network, and the features
    h in ``normalize``, where Z / 10 rounds) to float64, so that both codes see the same numbers."""
    queue = list(noises)
    real_randint = torch.randint

    def randint(low, high, size=None, **kw):
        assert 1 <= int(t_int.min()) and int(t_int.max()) < high and tuple(size) == tuple(t_int.shape)
        return t_int.clone().to(kw.get("device") or "cpu")

    phi = peer.phi

    def phi64(z, t, node_mask, edge_mask, context):  # EDM feeds t = t_int.float() / T: float32 rounding
        return phi(z, torch.round(t.double() * peer.T) / peer.T, node_mask, edge_mask, context)

    normalize = peer.normalize

    def normalize64(x, h, node_mask):  # EDM casts h to float32 (``h['categorical'].float()``): Z / 10 rounds
        x, _, delta_log_px = normalize(x, h, node_mask)
        h_cat = (h["categorical"].double() - peer.norm_biases[1]) / peer.norm_values[1] * node_mask
        h_int = (h["integer"].double() - peer.norm_biases[2]) / peer.norm_values[2]
        return x, {"categorical": h_cat, "integer": h_int * node_mask if peer.include_charges else h_int}, \
            delta_log_px

    peer.sample_combined_position_feature_noise = lambda n_samples, n_nodes, node_mask: queue.pop(0)
    peer.phi, peer.normalize = phi64, normalize64
    torch.randint = randint
    try:
        yield
    finally:
        torch.randint = real_randint
        del peer.sample_combined_position_feature_noise, peer.phi, peer.normalize
        assert not queue, "EDM drew fewer noises than expected"


def run(peer_code: str | Path, checkpoint: str | Path | None = None, *, n_molecules: int = 6, seed: int = 0,
        nf: int | None = None, n_layers: int | None = None, args_file: str | Path | None = None) -> dict:
    """The parity check (module docstring); ``args_file``: random weights with the options of this EDM
    args.pickle (default: PATH/outputs/edm_qm9/args.pickle); nf / n_layers override those options."""
    from molequi.checkpoint import load_model
    from molequi.interop.edm import import_edm_run, load_edm_state, read_edm_args

    peer_code = Path(peer_code).resolve()
    if checkpoint is not None:
        options = read_edm_args(Path(checkpoint) / "args.pickle")
        from molequi.interop.edm import find_weights

        state = load_edm_state(find_weights(checkpoint))
    else:
        ref = Path(args_file) if args_file else peer_code / "outputs" / "edm_qm9" / "args.pickle"
        options = read_edm_args(ref) if ref.is_file() else dict(QM9_DEFAULTS)
        state = None
    options = {**options, **({"nf": nf} if nf else {}), **({"n_layers": n_layers} if n_layers else {})}
    peer, nodes_dist, info = build_peer(peer_code, options, state, seed)
    conditioning = list(options.get("conditioning") or [])

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        with open(run_dir / "args.pickle", "wb") as f:
            pickle.dump(argparse.Namespace(**options), f)
        torch.save(peer.state_dict(), run_dir / "generative_model_ema.npy")  # EDM's utils.save_model
        norms = {k: (0.0, 1.0) for k in conditioning} or None  # the context below is given normalised
        import_edm_run(run_dir, Path(tmp) / "model.pt", edm_code=peer_code, context_norms=norms)
        model = load_model(Path(tmp) / "model.pt", dtype=torch.float64)

    include_charges = bool(options["include_charges"])
    decoder, x, h, node_mask, edge_mask, mask, batch = molecule_inputs(info, n_molecules, seed, include_charges)
    B, N, _ = x.shape
    b = batch.batch
    gen = torch.Generator().manual_seed(seed + 1)
    ctx = torch.randn(B, len(conditioning), generator=gen, dtype=torch.float64) if conditioning else None
    peer_ctx = None if ctx is None else ctx[:, None, :].expand(B, N, -1) * node_mask

    from molequi.models.generative.graph import fully_connected_edges

    edges = fully_connected_edges(b, B)
    F = peer.in_node_nf
    den_abs, den_ref = 0.0, 0.0
    with torch.no_grad():
        for t_val in (0.0, 0.013, 0.5, 1.0):
            z = padded_noise(node_mask, F, gen)
            z[:, :, :3] = z[:, :, :3] * 1.5
            t = torch.full((B, 1), t_val, dtype=torch.float64)
            ref = peer.phi(z, t, node_mask, edge_mask, peer_ctx)[mask]
            vx, vh = model.dynamics(z[mask][:, :3], z[mask][:, 3:], t[:, 0], b, edges, ctx)
            ours = torch.cat([vx, vh], -1)
            den_abs = max(den_abs, float((ours - ref).abs().max()))
            den_ref = max(den_ref, float(ref.abs().max()))

        T = peer.T
        t_int = torch.randint(1, T + 1, (B, 1), generator=gen)
        t_int[0, 0] = 1  # the smallest and largest steps always take part
        t_int[-1, 0] = T
        eps_t, eps_0 = padded_noise(node_mask, F, gen), padded_noise(node_mask, F, gen)
        with fixed_draws(peer, t_int, [eps_t, eps_0]):
            neg_log_pxh = peer(x, h, node_mask, edge_mask, peer_ctx)
        n_atoms = node_mask.squeeze(2).sum(1).long()
        peer_nll = neg_log_pxh - nodes_dist.log_prob(n_atoms).double()
        terms = model.likelihood_terms(batch,
                                       t_int=t_int[:, 0], noise=(eps_t[mask][:, :3], eps_t[mask][:, 3:]),
                                       noise0=(eps_0[mask][:, :3], eps_0[mask][:, 3:]), context=ctx)
    nll_err = float((terms["nll"] - peer_nll).abs().max())
    den_rel = den_abs / den_ref if den_ref > 0 else den_abs
    ok = den_rel <= DENOISER_RTOL and nll_err <= NLL_ATOL
    return {
        "peer": "edm", "peer_code": str(peer_code), "checkpoint": None if checkpoint is None else str(checkpoint),
        "weights": "run folder" if checkpoint is not None else "random (seeded)",
        "nf": int(options["nf"]), "n_layers": int(options["n_layers"]), "conditioning": conditioning,
        "n_molecules": B, "dtype": "float64",
        "max_abs_err_denoiser": den_abs, "max_rel_err_denoiser": den_rel, "max_abs_denoiser": den_ref,
        "max_abs_err_nll": nll_err, "nll_edm": [float(v) for v in peer_nll],
        "nll_molequi": [float(v) for v in terms["nll"]], "t": [int(v) for v in t_int[:, 0]],
        "tolerance": {"denoiser_rel": DENOISER_RTOL, "nll_nats": NLL_ATOL}, "ok": bool(ok),
    }


def build_argparser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer-code", required=True, help="root of EDM's source tree")
    parser.add_argument("--checkpoint", default=None, help="an EDM run folder (args.pickle + weights)")
    parser.add_argument("--molecules", type=int, default=6, help="number of random molecules (default 6)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--args", default=None, help="random weights with the options of this EDM args.pickle "
                        "(default: PATH/outputs/edm_qm9/args.pickle)")
    parser.add_argument("--nf", type=int, default=None, help="override nf (random weights only)")
    parser.add_argument("--n-layers", type=int, default=None, help="override n_layers (random weights only)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_argparser().parse_args(argv)
    if args.checkpoint and (args.nf or args.n_layers or args.args):
        raise SystemExit("--args/--nf/--n-layers only apply to random weights, not to --checkpoint")
    result = run(args.peer_code, args.checkpoint, n_molecules=args.molecules, seed=args.seed, nf=args.nf,
                 n_layers=args.n_layers, args_file=args.args)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
