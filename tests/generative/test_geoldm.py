"""GeoLDM (``model.name: geoldm``): the autoencoder's symmetries, the latent KL against closed-form Gaussian KLs,
parity with GeoLDM's own code (github.com/MinkaiXu/GeoLDM @ 03ae203 at ../shared/peers/geoldm or
$MOLEQUI_GEOLDM_CODE), import of its run folders, refusal of bad ones, and ``molequi train`` / ``generate``."""

from __future__ import annotations

import argparse
import json
import math
import os
import pickle
import sys
from pathlib import Path

import pytest
import torch

from molequi.cli.main import main
from molequi.data.pickle_safe import UnsafePickleError
from molequi.errors import InputError
from molequi.interop.edm import MissingEDMWeightsError
from molequi.interop.geoldm import UnsupportedGeoLDMOptionError, import_geoldm_run
from molequi.models.generative.geoldm import GeoLDM, latent_kl
from molequi.models.generative.graph import fully_connected_edges, remove_mean

ROOT = Path(__file__).resolve().parents[2]
PEER = Path(os.environ.get("MOLEQUI_GEOLDM_CODE") or ROOT.parent / "shared" / "peers" / "geoldm")
needs_peer = pytest.mark.skipif(
    not (PEER / "equivariant_diffusion" / "en_diffusion.py").is_file(),
    reason=f"GeoLDM's source tree is not at {PEER}: clone github.com/MinkaiXu/GeoLDM at 03ae203 there or set "
           "MOLEQUI_GEOLDM_CODE")
TINY = {"nf": 16, "n_layers": 2, "latent_nf": 2}


def _parity():
    sys.path.insert(0, str(ROOT / "scripts" / "parity"))
    try:
        import geoldm as parity
    finally:
        sys.path.remove(str(ROOT / "scripts" / "parity"))
    return parity


def _orthogonal(gen, proper: bool):
    q, r = torch.linalg.qr(torch.randn(3, 3, generator=gen, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))
    return q if (torch.det(q) > 0) == proper else -q


def test_autoencoder_and_denoiser_equivariant_float64():
    """Rotations, reflections and translations of the input rotate / reflect the encoder's mu_x, the decoder's
    positions and the latent denoiser's eps_x, and leave every invariant output unchanged (1e-10)."""
    torch.manual_seed(0)
    model = GeoLDM(GeoLDM.Config(hidden=16, layers=2, timesteps=20, latent_nf=3)).double()
    gen = torch.Generator().manual_seed(1)
    sizes = torch.tensor([5, 7])
    batch = torch.repeat_interleave(torch.arange(2), sizes)
    edges = fully_connected_edges(batch, 2)
    x = remove_mean(1.5 * torch.randn(12, 3, generator=gen, dtype=torch.float64), batch, 2)
    h = torch.cat([torch.nn.functional.one_hot(torch.randint(0, 5, (12,), generator=gen), 5).double(),
                   torch.randint(1, 10, (12, 1), generator=gen).double()], -1)
    z_h = torch.randn(12, 3, generator=gen, dtype=torch.float64)
    t = torch.tensor([0.3, 0.8], dtype=torch.float64)
    ae = model.autoencoder
    with torch.no_grad():
        enc = ae.encode(x, h, batch, edges, 2)
        dec = ae.decode(x, z_h, batch, edges, 2)
        den = model.dynamics(x, z_h, t, batch, edges)
        for proper in (True, False):
            q = _orthogonal(gen, proper)
            shift = torch.randn(1, 3, generator=gen, dtype=torch.float64) * 3
            y = x @ q.T + shift
            enc2 = ae.encode(y, h, batch, edges, 2)
            dec2 = ae.decode(y, z_h, batch, edges, 2)
            den2 = model.dynamics(y, z_h, t, batch, edges)
            assert torch.allclose(enc2[0], enc[0] @ q.T, atol=1e-10, rtol=0)  # mu_x (centred)
            for a, b in zip(enc2[1:], enc[1:]):  # sigma_x, mu_h, sigma_h
                assert torch.allclose(a, b, atol=1e-10, rtol=0)
            assert torch.allclose(dec2[0], dec[0] @ q.T, atol=1e-10, rtol=0)
            assert torch.allclose(dec2[1], dec[1], atol=1e-10, rtol=0)
            assert torch.allclose(den2[0], den[0] @ q.T, atol=1e-10, rtol=0)
            assert torch.allclose(den2[1], den[1], atol=1e-10, rtol=0)
    # the outputs are not trivially zero or constant
    assert float(enc[0].abs().max()) > 0.1 and float(dec[1].std()) > 1e-3


def _subspace_kl(mu_x, sigma):
    """KL(N(mu, sigma^2 I) || N(0, I)) of a centred (n, 3) mean on the (n - 1) 3 dimensional zero-mean subspace,
    by torch.distributions in an orthonormal basis of that subspace."""
    n = mu_x.shape[0]
    # orthonormal basis of {v : sum v = 0}: the n - 1 left singular vectors of the centring projector with value 1
    u, _, _ = torch.linalg.svd(torch.eye(n, dtype=torch.float64) - 1.0 / n)
    basis = u[:, : n - 1]
    coords = (basis.T @ mu_x).reshape(-1)  # ((n - 1) 3,)
    d = coords.numel()
    q = torch.distributions.MultivariateNormal(coords, covariance_matrix=sigma ** 2 * torch.eye(d, dtype=torch.float64))
    p = torch.distributions.MultivariateNormal(torch.zeros(d, dtype=torch.float64),
                                               covariance_matrix=torch.eye(d, dtype=torch.float64))
    return torch.distributions.kl_divergence(q, p)


def test_latent_kl_matches_closed_form_gaussian_kl():
    """``latent_kl`` (GeoLDM's gaussian_KL / gaussian_KL_for_dimension) equals torch.distributions' KL of the
    diagonal Gaussian (h) plus the isotropic Gaussian on the zero-mean subspace (x), for sigma != 1 and for the
    sigma = 1 GeoLDM's loss uses; and the autoencoder-stage loss's KL is that of the encoder's mean."""
    gen = torch.Generator().manual_seed(3)
    sizes = torch.tensor([4, 6])
    batch = torch.repeat_interleave(torch.arange(2), sizes)
    mu_x = remove_mean(torch.randn(10, 3, generator=gen, dtype=torch.float64), batch, 2)
    mu_h = torch.randn(10, 2, generator=gen, dtype=torch.float64)
    for sig_x, sig_h in ((torch.tensor([0.7, 1.3], dtype=torch.float64), 0.4 + torch.rand(10, 2, generator=gen,
                                                                                         dtype=torch.float64)),
                         (torch.ones(2, dtype=torch.float64), torch.ones(10, 2, dtype=torch.float64))):
        ours = latent_kl(mu_x, mu_h, sig_x, sig_h, batch, 2)
        for k in range(2):
            sel = batch == k
            ref_h = torch.distributions.kl_divergence(torch.distributions.Normal(mu_h[sel], sig_h[sel]),
                                                      torch.distributions.Normal(0.0, 1.0)).sum()
            ref = ref_h + _subspace_kl(mu_x[sel], sig_x[k])
            # GeoLDM's 1e-8 guards in log(1 / (sigma + 1e-8) + 1e-8) shift each dimension by ~1e-8
            assert abs(float(ours[k] - ref)) < 1e-6 * (1 + float(ref))
    # the autoencoder stage: loss = reconstruction + kl_weight KL(N(mu, 1) || N(0, I)) of the encoder's mean
    from torch_geometric.data import Batch, Data

    torch.manual_seed(0)
    model = GeoLDM(GeoLDM.Config(hidden=8, layers=1, timesteps=10, latent_nf=2, train_diffusion=False,
                                 kl_weight=0.3)).double()
    mols = Batch.from_data_list([Data(numbers=torch.tensor([6, 1, 1, 8]), pos=torch.randn(4, 3, generator=gen,
                                                                                           dtype=torch.float64)),
                                 Data(numbers=torch.tensor([7, 1, 1, 1, 6, 1]),
                                      pos=torch.randn(6, 3, generator=gen, dtype=torch.float64))])
    terms = model.loss_terms(mols, generator=gen)
    b = mols.batch
    x, h = model.encode(mols.numbers, mols.pos, b, 2)
    with torch.no_grad():
        mu_x, _, mu_h, _ = model.autoencoder.encode(x, h, b, fully_connected_edges(b, 2), 2)
    for k in range(2):
        sel = b == k
        ref = torch.distributions.kl_divergence(torch.distributions.Normal(mu_h[sel], 1.0),
                                                torch.distributions.Normal(0.0, 1.0)).sum() \
            + _subspace_kl(mu_x[sel], torch.tensor(1.0, dtype=torch.float64))
        assert abs(float(terms["kl"][k] - ref)) < 1e-6 * (1 + float(ref))
    assert torch.allclose(terms["loss"], terms["recon"] + 0.3 * terms["kl"], atol=1e-12, rtol=0)
    assert float(terms["kl"].min()) > 1e-3


@needs_peer
@pytest.mark.parametrize("frozen_ae", [False, True])
def test_parity_with_geoldm_code(frozen_ae):
    """check.py geoldm at a tiny size, with the decoder trained along (trainable_ae) or frozen: encoder, decoder,
    denoiser equal to 1e-6 relative; NLL, training loss, autoencoder loss to 1e-4 nats (the script's own goals;
    float64)."""
    result = _parity().run(PEER, n_molecules=4, seed=2, frozen_ae=frozen_ae, **TINY)
    assert result["trainable_ae"] is not frozen_ae
    assert result["ok"], json.dumps({k: v for k, v in result.items() if not isinstance(v, list)})
    assert max(result[f"max_rel_err_{k}"] for k in ("encoder", "decoder", "denoiser")) < 1e-12
    assert result["max_abs_err_train_loss"] < 1e-10 and result["max_abs_err_ae_loss"] < 1e-10


def _peer_run_dir(tmp_path, options=None):
    """A GeoLDM run folder written as main_qm9.py does, from GeoLDM's own (tiny, seeded) model."""
    parity = _parity()
    opts = {**parity.README_QM9, **TINY, **(options or {})}
    peer, _, _ = parity.build_peer(PEER, opts, None, seed=5)
    run = tmp_path / "run"
    run.mkdir()
    with open(run / "args.pickle", "wb") as f:
        pickle.dump(argparse.Namespace(**opts), f)
    state = {k: v.float() for k, v in peer.state_dict().items()}
    torch.save(state, run / "generative_model_ema.npy")
    return run, state


@needs_peer
def test_import_round_trip_and_generate(tmp_path, capsys):
    """molequi import geoldm writes every GeoLDM weight into the checkpoint (spot checks through the mapping,
    including the split coordinate MLP); the checkpoint samples with molequi generate."""
    from molequi.checkpoint import load_model

    run, state = _peer_run_dir(tmp_path)
    out = tmp_path / "geoldm.pt"
    assert main(["import", "geoldm", str(run), "--out", str(out), "--geoldm-code", str(PEER)]) == 0
    assert "latent_nf 2" in capsys.readouterr().out
    model = load_model(out)
    ours = model.state_dict()
    H = TINY["nf"]
    assert torch.equal(ours["autoencoder.encoder_head.2.weight"], state["vae.encoder.final_mlp.2.weight"])
    assert torch.equal(ours["autoencoder.decoder.embedding_out.bias"], state["vae.decoder.egnn.embedding_out.bias"])
    w = state["dynamics.egnn.e_block_1.gcl_equiv.coord_mlp.0.weight"]
    assert torch.equal(ours["dynamics.blocks.1.coords.coord_in.lin_j.weight"], w[:, H:2 * H])
    assert torch.equal(ours["autoencoder.encoder.blocks.0.gcl.phi_att.0.weight"],
                       state["vae.encoder.egnn.e_block_0.gcl_0.att_mlp.0.weight"])
    assert float(model.size_counts[19]) > 0 and model.config.trainable_ae and model.config.latent_nf == 2
    mols = tmp_path / "mols.sdf"
    assert main(["generate", str(out), "--n", "3", "--steps", "4", "--out", str(mols)]) == 0
    assert mols.read_text().count("$$$$") == 3
    # molequi eval gives GeoLDM's bound on the NLL of molecules (here the generated ones)
    capsys.readouterr()
    assert main(["eval", str(out), str(mols.with_suffix(".xyz")), "--json"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert metrics["molecules"] == 3 and math.isfinite(metrics["nll"]) and metrics["bits_per_dim"] > 0


def _write_args(run: Path, **options):
    run.mkdir(exist_ok=True)
    base = {"nf": 16, "n_layers": 2, "diffusion_steps": 20, "normalize_factors": [1, 4, 10], "include_charges": True,
            "attention": True, "tanh": True, "latent_nf": 1, "train_diffusion": True, "trainable_ae": True,
            "kl_weight": 0.01, "dataset": "qm9", "remove_h": False, "model": "egnn_dynamics"}
    with open(run / "args.pickle", "wb") as f:
        pickle.dump(argparse.Namespace(**{**base, **options}), f)


def test_bad_run_dirs_named_errors(tmp_path):
    """Unknown options are refused by name, before the weights are read; so are autoencoder-only runs; a missing
    folder, missing weights and a pickle of anything but plain values give named errors."""
    with pytest.raises(UnsupportedGeoLDMOptionError, match="unknown option 'made_up_flag'"):
        _write_args(tmp_path / "a", made_up_flag=3)
        import_geoldm_run(tmp_path / "a", tmp_path / "a.pt")
    with pytest.raises(UnsupportedGeoLDMOptionError, match="sin_embedding=True"):
        _write_args(tmp_path / "s", sin_embedding=True)
        import_geoldm_run(tmp_path / "s", tmp_path / "s.pt")
    with pytest.raises(UnsupportedGeoLDMOptionError, match="train_diffusion=False"):
        _write_args(tmp_path / "b", train_diffusion=False)
        import_geoldm_run(tmp_path / "b", tmp_path / "b.pt")
    with pytest.raises(UnsupportedGeoLDMOptionError, match="latent_nf"):
        _write_args(tmp_path / "c", latent_nf=0)
        import_geoldm_run(tmp_path / "c", tmp_path / "c.pt")
    with pytest.raises(MissingEDMWeightsError, match="generative_model_ema.npy"):
        _write_args(tmp_path / "d")
        import_geoldm_run(tmp_path / "d", tmp_path / "d.pt")
    with pytest.raises(InputError, match="not a folder"):
        import_geoldm_run(tmp_path / "nowhere", tmp_path / "e.pt")
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "args.pickle").write_bytes(pickle.dumps(os.system))
    with pytest.raises(UnsafePickleError, match="refused to unpickle global"):
        import_geoldm_run(tmp_path / "f", tmp_path / "f.pt")
    assert not any(tmp_path.glob("*.pt"))
    # the CLI names the error and exits 1
    assert main(["import", "geoldm", str(tmp_path / "a"), "--out", str(tmp_path / "x.pt")]) == 1


def test_molequi_train_then_generate(tmp_path, capsys):
    """A tiny GeoLDM trained by molequi train from configs/geoldm_qm9.yaml for a few steps (the decoder learns,
    the encoder stays as initialised, as in GeoLDM) and sampled by molequi generate into SDF + XYZ."""
    from molequi.checkpoint import load_model

    run = tmp_path / "run"
    argv = ["train", str(ROOT / "configs" / "geoldm_qm9.yaml"), f"data.root={ROOT / 'data' / 'qm9' / 'crescendo'}",
            "data.options={split: [16, 4, null]}", "model.hidden=8", "model.layers=1", "model.timesteps=20",
            "model.latent_nf=2", "trainer.max_steps=4", "trainer.max_epochs=null", "trainer.batch_size=4",
            "task.sample_every=null", f"trainer.output={run}", "trainer.accelerator=cpu",
            "trainer.progress_bar=false", "optim.ema_decay=null", "optim.lr=1e-2"]
    torch.manual_seed(0)
    init = GeoLDM(GeoLDM.Config(hidden=8, layers=1, timesteps=20, latent_nf=2)).state_dict()
    assert main(argv) == 0
    model = load_model(run / "model.pt")
    assert model.config.name == "geoldm" and float(model.size_counts.sum()) > 0
    trained = model.state_dict()
    assert torch.equal(trained["autoencoder.encoder.embedding.weight"], init["autoencoder.encoder.embedding.weight"])
    assert not torch.equal(trained["autoencoder.decoder.embedding.weight"],
                           init["autoencoder.decoder.embedding.weight"])
    assert not torch.equal(trained["dynamics.embedding.weight"], init["dynamics.embedding.weight"])
    out = tmp_path / "mols.sdf"
    assert main(["generate", str(run / "model.pt"), "--n", "4", "--steps", "5", "--out", str(out)]) == 0
    assert out.read_text().count("$$$$") == 4
    assert int(out.with_suffix(".xyz").read_text().splitlines()[0]) >= 1


def test_two_stage_recipe_autoencoder_then_latent_diffusion(tmp_path):
    """GeoLDM's paper recipe through molequi train: the autoencoder alone (train_diffusion false: reconstruction +
    KL train encoder and decoder), then model.init_from its checkpoint with train_diffusion true and trainable_ae
    false (GeoLDM's --ae_path): the first stage stays frozen, the latent denoiser learns."""
    from molequi.checkpoint import load_model

    def train(out, *extra):
        argv = ["train", str(ROOT / "configs" / "geoldm_qm9.yaml"),
                f"data.root={ROOT / 'data' / 'qm9' / 'crescendo'}", "data.options={split: [16, 4, null]}",
                "model.hidden=8", "model.layers=1", "model.timesteps=20", "trainer.max_steps=2",
                "trainer.max_epochs=null", "trainer.batch_size=4", "task.sample_every=null", f"trainer.output={out}",
                "trainer.accelerator=cpu", "trainer.progress_bar=false", "optim.ema_decay=null", "optim.lr=1e-2",
                *extra]
        assert main(argv) == 0
        return load_model(out / "model.pt")

    torch.manual_seed(0)
    init = GeoLDM(GeoLDM.Config(hidden=8, layers=1, timesteps=20)).state_dict()
    first = train(tmp_path / "ae", "model.train_diffusion=false")
    second = train(tmp_path / "ldm", f"model.init_from={tmp_path / 'ae' / 'model.pt'}", "model.trainable_ae=false")
    assert not first.config.train_diffusion and second.config.train_diffusion and not second.config.trainable_ae
    s1, s2 = first.state_dict(), second.state_dict()
    enc = "autoencoder.encoder.embedding.weight"
    assert not torch.equal(s1[enc], init[enc])  # the encoder learns in the autoencoder stage
    assert torch.equal(s1["dynamics.embedding.weight"], init["dynamics.embedding.weight"])  # the denoiser does not
    assert all(torch.equal(s1[k], s2[k]) for k in s1 if k.startswith("autoencoder."))
    assert not torch.equal(s1["dynamics.embedding.weight"], s2["dynamics.embedding.weight"])
