"""Parity of molequi's GeoLDM with GeoLDM's own code (github.com/MinkaiXu/GeoLDM, commit 03ae203).

    python scripts/parity/check.py geoldm --peer-code PATH [--checkpoint RUN_DIR]
    python scripts/parity/geoldm.py --peer-code PATH [--checkpoint RUN_DIR]     (the same, directly)

1. Builds an ``EnLatentDiffusion`` with GeoLDM's ``qm9.models.get_latent_diffusion`` (imported from PATH) from
   the options of RUN_DIR/args.pickle and its ``generative_model_ema.npy`` weights, or, without --checkpoint,
   from the QM9 command of GeoLDM's README (nf 256, 9 layers, T 1000, latent_nf 1, --train_diffusion
   --trainable_ae; ``--nf`` / ``--n-layers`` / ``--latent-nf`` override, ``--frozen-ae``: trainable_ae false) with GeoLDM's random init plus seeded
   N(0, 0.005^2) noise on every parameter (so that no part sits at its near-zero init), rounded to float32 as
   a trained run's weights are.
2. Saves args.pickle and the state dict as GeoLDM's main_qm9.py does (``pickle.dump(args)``,
   ``torch.save(model.state_dict(), 'generative_model_ema.npy')``) into a temporary run folder, imports it with
   ``molequi.interop.geoldm.import_geoldm_run`` (size histogram from PATH/configs/datasets_config.py) and
   loads the checkpoint with ``molequi.checkpoint.load_model`` in float64.
3. Compares, in float64, on the same random molecules (QM9 elements and sizes; GeoLDM's padded layout on its
   side, molequi's unpadded batch on the other), as max |diff| / max |GeoLDM value| (goal 1e-6):
   - the encoder (``vae.encoder._forward``: mu_x, sigma_x, mu_h, sigma_h),
   - the decoder (``vae.decoder._forward`` on random latents: x, h),
   - the latent denoiser (``phi``) at several t;
   and, with the same t and noises (GeoLDM's draws replaced by pre-drawn values for the call), in nats per
   molecule (goal 1e-4):
   - the NLL: GeoLDM's eval-mode ``forward`` minus ``DistributionNodes.log_prob`` vs
     ``GeoLDM.likelihood_terms``,
   - the training loss: GeoLDM's train-mode ``forward`` (l2) vs ``GeoLDM.loss_terms`` (t = 0 included),
   - the autoencoder-stage loss (``EnHierarchicalVAE.compute_loss``, reconstruction + kl_weight KL) vs
     ``loss_terms`` with ``train_diffusion`` false.
GeoLDM's reconstruction cross-entropy also counts its padding nodes (zero logits against class 0, log K each,
K atom types): a constant without gradient that depends on how much a batch is padded. molequi leaves it out;
this script adds (N_max - N) log K (divided by (3 + F) N_max in the training losses) to molequi's values before
comparing, and reports its size (``geoldm_padding_ce``).
GeoLDM rounds the schedule (a float32 parameter) and the network's time input to float32: both are lifted to
float64 here as in ``scripts/parity/edm.py``. GeoLDM's ``print`` output goes to stderr. Prints one JSON object;
exit status 1 when a goal is missed.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import pickle
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[2]
for _p in (REPO, Path(__file__).resolve().parent):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from edm import QM9_DEFAULTS, molecule_inputs, padded_noise, set_weights  # noqa: E402  (scripts/parity/edm.py)

RTOL = 1e-6
NATS_ATOL = 1e-4
README_QM9 = {**QM9_DEFAULTS, "exp_name": "geoldm_parity", "normalize_factors": [1, 4, 10], "latent_nf": 1,
              "kl_weight": 0.01, "trainable_ae": True, "train_diffusion": True, "ae_path": None, "cuda": False,
              "ema_decay": 0.9999}
_PEER_MODULES = ("qm9", "egnn", "equivariant_diffusion", "configs", "utils")


def _forget_peer_modules() -> None:
    """EDM and GeoLDM share top-level module names (qm9, egnn, ...): drop whichever was imported before."""
    for name in [m for m in sys.modules if m.split(".")[0] in _PEER_MODULES]:
        del sys.modules[name]


def build_peer(peer_code: Path, options: dict, state: dict | None, seed: int):
    """GeoLDM's model and size distribution (float64, weights float32-exact) and its dataset info."""
    _forget_peer_modules()
    sys.path.insert(0, str(peer_code))
    try:
        with contextlib.redirect_stdout(sys.stderr):
            from configs.datasets_config import get_dataset_info
            from equivariant_diffusion import en_diffusion
            from qm9 import models as qm9_models
            args = argparse.Namespace(**{"normalization_factor": 1, "aggregation_method": "sum", **options,
                                         "conditioning": []})
            info = get_dataset_info(args.dataset, args.remove_h)
            torch.manual_seed(seed)  # GeoLDM's own init draws from the global generator
            model, nodes_dist, _ = qm9_models.get_latent_diffusion(args, torch.device("cpu"), info, None)
    finally:
        sys.path.remove(str(peer_code))
        _forget_peer_modules()
    set_weights(model, state, seed, float32_values=True)
    model = model.double()
    alphas2 = en_diffusion.polynomial_schedule(args.diffusion_steps, s=args.diffusion_noise_precision,
                                               power=float(args.diffusion_noise_schedule.split("_")[1]))
    model.gamma.gamma.data = torch.from_numpy(-(np.log(alphas2) - np.log(1 - alphas2))).double()
    return model, nodes_dist, info


@contextlib.contextmanager
def fixed_draws(peer, t_int, enc_noise, noises):
    """GeoLDM's compute_loss takes ``t_int`` (B, 1), its encoder sample ``enc_noise`` and the diffusion noises
    ``noises`` (in order); the time fed to the network is lifted from float32 to float64."""
    queue = list(noises)
    real_randint, phi = torch.randint, peer.phi

    def randint(low, high, size=None, **kw):
        assert int(t_int.min()) >= low and int(t_int.max()) < high and tuple(size) == tuple(t_int.shape)
        return t_int.clone()

    def phi64(z, t, node_mask, edge_mask, context):
        return phi(z, torch.round(t.double() * peer.T) / peer.T, node_mask, edge_mask, context)

    peer.sample_combined_position_feature_noise = lambda n_samples, n_nodes, node_mask: queue.pop(0)
    peer.vae.sample_combined_position_feature_noise = lambda n_samples, n_nodes, node_mask: enc_noise
    peer.phi = phi64
    torch.randint = randint
    try:
        yield
    finally:
        torch.randint = real_randint
        del peer.sample_combined_position_feature_noise, peer.phi, peer.vae.sample_combined_position_feature_noise
        assert not queue, "GeoLDM drew fewer noises than expected"


class _Err:
    """Largest |ours - ref| and |ref| of one compared quantity."""

    def __init__(self):
        self.abs, self.ref = 0.0, 0.0

    def add(self, ours, ref):
        self.abs = max(self.abs, float((ours - ref).abs().max()))
        self.ref = max(self.ref, float(ref.abs().max()))

    @property
    def rel(self):
        return self.abs / self.ref if self.ref > 0 else self.abs


def run(peer_code: str | Path, checkpoint: str | Path | None = None, *, n_molecules: int = 6, seed: int = 0,
        nf: int | None = None, n_layers: int | None = None, latent_nf: int | None = None,
        frozen_ae: bool = False) -> dict:
    """The parity check (module docstring)."""
    from molequi.checkpoint import load_model
    from molequi.interop.edm import find_weights, load_edm_state, read_edm_args
    from molequi.interop.geoldm import import_geoldm_run
    from molequi.models.generative.graph import fully_connected_edges

    peer_code = Path(peer_code).resolve()
    if checkpoint is not None:
        options = read_edm_args(Path(checkpoint) / "args.pickle")
        state = load_edm_state(find_weights(checkpoint))
    else:
        options, state = dict(README_QM9), None
        options.update({k: v for k, v in (("nf", nf), ("n_layers", n_layers), ("latent_nf", latent_nf)) if v})
        options["trainable_ae"] = not frozen_ae
    peer, nodes_dist, info = build_peer(peer_code, options, state, seed)

    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        run_dir.mkdir()
        with open(run_dir / "args.pickle", "wb") as f:  # main_qm9.py: pickle.dump(args, f)
            pickle.dump(argparse.Namespace(**options), f)
        torch.save({k: v.float() if k != "gamma.gamma" else v for k, v in peer.state_dict().items()},
                   run_dir / "generative_model_ema.npy")  # utils.save_model: torch.save(state_dict)
        import_geoldm_run(run_dir, Path(tmp) / "model.pt", geoldm_code=peer_code)
        model = load_model(Path(tmp) / "model.pt", dtype=torch.float64)

    L = int(options["latent_nf"])
    decoder, x, h, node_mask, edge_mask, mask, batch = molecule_inputs(info, n_molecules, seed,
                                                                       bool(options["include_charges"]))
    B, N, _ = x.shape
    b = batch.batch
    edges = fully_connected_edges(b, B)
    gen = torch.Generator().manual_seed(seed + 1)
    xh = torch.cat([x, h["categorical"], h["integer"]], 2)
    err = {k: _Err() for k in ("encoder", "decoder", "denoiser")}
    peer.eval()
    with torch.no_grad(), contextlib.redirect_stdout(sys.stderr):
        mu_x, sig_x, mu_h, sig_h = peer.vae.encoder._forward(xh, node_mask, edge_mask, None)
        ours = model.autoencoder.encode(xh[mask][:, :3], xh[mask][:, 3:], b, edges, B, None)
        for o, r in zip(ours, (mu_x[mask], sig_x[:, 0, 0], mu_h[mask], sig_h[mask])):
            err["encoder"].add(o, r)
        for scale in (0.5, 2.0):
            z = padded_noise(node_mask, L, gen) * scale
            rx, rh = peer.vae.decoder._forward(z, node_mask, edge_mask, None)
            ox, oh = model.autoencoder.decode(z[mask][:, :3], z[mask][:, 3:], b, edges, B, None)
            err["decoder"].add(ox, rx[mask])
            err["decoder"].add(oh, rh[mask])
        for t_val in (0.0, 0.013, 0.5, 1.0):
            z = padded_noise(node_mask, L, gen)
            t = torch.full((B, 1), t_val, dtype=torch.float64)
            ref = peer.phi(z, t, node_mask, edge_mask, None)[mask]
            vx, vh = model.dynamics(z[mask][:, :3], z[mask][:, 3:], t[:, 0], b, edges, None)
            err["denoiser"].add(torch.cat([vx, vh], -1), ref)

        def flat(noise):
            return noise[mask][:, :3], noise[mask][:, 3:]

        # the NLL (eval mode, t in 1..T)
        T = peer.T
        t_int = torch.randint(1, T + 1, (B, 1), generator=gen)
        t_int[0, 0], t_int[-1, 0] = 1, T
        enc, eps_t, eps_0 = (padded_noise(node_mask, L, gen) for _ in range(3))
        with fixed_draws(peer, t_int, enc, [eps_t, eps_0]):
            peer_nll = peer(x, h, node_mask, edge_mask, None)
        n_atoms = node_mask.squeeze(2).sum(1).long()
        peer_nll = peer_nll - nodes_dist.log_prob(n_atoms).double()
        terms = model.likelihood_terms(batch, t_int=t_int[:, 0], noise=flat(eps_t), noise0=flat(eps_0),
                                       noise_enc=flat(enc))
        # GeoLDM's cross-entropy on padding nodes (module docstring), summed and as its training losses divide it
        pad_ce = (N - n_atoms).double() * np.log(len(decoder)) * float(bool(options.get("trainable_ae")))
        pad_ce_train = pad_ce / ((3 + model.n_features) * N)
        nll_err = float((terms["nll"] + pad_ce - peer_nll).abs().max())
        # the training loss (train mode, l2, t in 0..T)
        peer.train()
        t_tr = torch.randint(0, T + 1, (B, 1), generator=gen)
        t_tr[0, 0], t_tr[-1, 0] = 0, T
        enc, eps_t = padded_noise(node_mask, L, gen), padded_noise(node_mask, L, gen)
        with fixed_draws(peer, t_tr, enc, [eps_t]):
            peer_loss = peer(x, h, node_mask, edge_mask, None)
        loss = model.loss_terms(batch, t_int=t_tr[:, 0], noise_enc=flat(enc), noise=flat(eps_t))["loss"]
        loss_err = float((loss + pad_ce_train - peer_loss).abs().max())
        # the autoencoder stage (EnHierarchicalVAE.compute_loss, train mode)
        enc = padded_noise(node_mask, L, gen)
        peer.vae.sample_combined_position_feature_noise = lambda n_samples, n_nodes, node_mask: enc
        peer.vae.training = True  # a frozen first stage (trainable_ae false) has its train() disabled
        try:
            peer_ae, peer_ae_logs = peer.vae.compute_loss(x, h, node_mask, edge_mask, None)
        finally:
            del peer.vae.sample_combined_position_feature_noise
        model.config = dataclasses.replace(model.config, train_diffusion=False)
        ae_terms = model.loss_terms(batch, noise_enc=flat(enc))
        pad_ce_ae = (N - n_atoms).double() * np.log(len(decoder)) / ((3 + model.n_features) * N)
        ae_err = float((ae_terms["loss"] + pad_ce_ae - peer_ae).abs().max())
        rec_err = float((ae_terms["recon"] + pad_ce_ae - peer_ae_logs["rec_error"]).abs().max())
    ok = all(e.rel <= RTOL for e in err.values()) and max(nll_err, loss_err, ae_err, rec_err) <= NATS_ATOL
    return {
        "peer": "geoldm", "peer_code": str(peer_code), "checkpoint": None if checkpoint is None else str(checkpoint),
        "weights": "run folder" if checkpoint is not None else "random (seeded, float32 values)",
        "nf": int(options["nf"]), "n_layers": int(options["n_layers"]), "latent_nf": L,
        "trainable_ae": bool(options.get("trainable_ae")), "n_molecules": B, "dtype": "float64",
        **{f"max_rel_err_{k}": e.rel for k, e in err.items()},
        **{f"max_abs_{k}": e.ref for k, e in err.items()},
        "max_abs_err_nll": nll_err, "max_abs_err_train_loss": loss_err, "max_abs_err_ae_loss": ae_err,
        "max_abs_err_ae_recon": rec_err, "geoldm_padding_ce": [float(v) for v in pad_ce],
        "nll_geoldm": [float(v) for v in peer_nll], "nll_molequi": [float(v) for v in terms["nll"]],
        "t": [int(v) for v in t_int[:, 0]],
        "train_loss_geoldm": [float(v) for v in peer_loss], "train_loss_molequi": [float(v) for v in loss],
        "t_train": [int(v) for v in t_tr[:, 0]],
        "tolerance": {"rel": RTOL, "nats": NATS_ATOL}, "ok": bool(ok),
    }


def build_argparser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    parser = parser or argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--peer-code", required=True,
                        help="root of GeoLDM's source tree (github.com/MinkaiXu/GeoLDM, commit 03ae203)")
    parser.add_argument("--checkpoint", default=None, help="a GeoLDM run folder (args.pickle + weights)")
    parser.add_argument("--molecules", type=int, default=6, help="number of random molecules (default 6)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--nf", type=int, default=None, help="override nf (random weights only)")
    parser.add_argument("--n-layers", type=int, default=None, help="override n_layers (random weights only)")
    parser.add_argument("--latent-nf", type=int, default=None, help="override latent_nf (random weights only)")
    parser.add_argument("--frozen-ae", action="store_true",
                        help="random weights with trainable_ae false (GeoLDM's frozen first stage)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_argparser().parse_args(argv)
    if args.checkpoint and (args.nf or args.n_layers or args.latent_nf or args.frozen_ae):
        raise SystemExit("--nf/--n-layers/--latent-nf/--frozen-ae only apply to random weights, not to --checkpoint")
    result = run(args.peer_code, args.checkpoint, n_molecules=args.molecules, seed=args.seed, nf=args.nf,
                 n_layers=args.n_layers, latent_nf=args.latent_nf, frozen_ae=args.frozen_ae)
    print(json.dumps(result))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
